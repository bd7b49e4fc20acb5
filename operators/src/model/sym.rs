//! Interned strings: [`Sym`].

use std::fmt;
use std::sync::{LazyLock, OnceLock};

use lasso::{Spur, ThreadedRodeo};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Process-wide string interner. Service, instance and operation names repeat across
/// millions of spans; interning makes them a `u32` in the span and a pointer compare in
/// grouping, and lets [`Sym::as_str`] hand out `&'static str`.
static INTERNER: LazyLock<ThreadedRodeo<Spur, ahash::RandomState>> = LazyLock::new(|| {
    let rodeo = ThreadedRodeo::with_hasher(ahash::RandomState::new());
    rodeo.get_or_intern_static("");
    rodeo
});

/// Symbols per chunk of [`RESOLVED`].
const RESOLVED_CHUNK: usize = 4096;

/// The text of every symbol resolved so far, by symbol id, in chunks allocated on first
/// use (the first 4 M symbols; later ones are resolved through the interner each time).
static RESOLVED: [OnceLock<Box<[OnceLock<&'static str>]>>; 1024] =
    [const { OnceLock::new() }; 1024];

/// Slots of [`Sym::new`]'s direct-mapped front cache (a power of two).
const FRONT_SLOTS: usize = 1024;

/// [`Sym::new`]'s front cache: each slot holds the text of the symbol last looked up
/// there (`None` until then).
type FrontCache = [(&'static str, Option<Sym>); FRONT_SLOTS];

/// The front cache slot of a string: its length mixed with its first and last (up to)
/// eight bytes. Names that differ only in the middle share a slot and evict each other,
/// which costs a second-level lookup, never a wrong symbol (the slot keeps the text).
#[inline(always)]
pub(super) fn front_slot(b: &[u8]) -> usize {
    let word = |b: &[u8]| {
        let mut w = [0u8; 8];
        w[..b.len()].copy_from_slice(b);
        u64::from_le_bytes(w)
    };
    let n = b.len();
    let (head, tail) = if n >= 8 {
        (word(&b[..8]), word(&b[n - 8..]))
    } else {
        (word(b), 0)
    };
    let x = (head ^ tail.rotate_left(29) ^ n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (x >> (64 - FRONT_SLOTS.trailing_zeros())) as usize
}

/// An interned string. Serializes as the string itself, so checkpoints and outputs do
/// not depend on interning order (which differs between runs and thread schedules).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sym(Spur);

impl Sym {
    /// Interns `s`, returning the existing symbol when it was seen before.
    pub fn new(s: &str) -> Self {
        // Two per-thread front caches: decoders intern several strings per span (name,
        // peer, db system), and the shared interner's sharded locks cost more than a
        // private lookup. The first level is direct-mapped by a cheap hash of the
        // string's length and end words, so a repeated name costs one compare; the
        // second is a hash map of everything this thread interned.
        thread_local! {
            static FRONT: std::cell::RefCell<Box<FrontCache>> =
                std::cell::RefCell::new(Box::new([("", None); FRONT_SLOTS]));
            static CACHE: std::cell::RefCell<ahash::AHashMap<Box<str>, Sym>> =
                std::cell::RefCell::new(ahash::AHashMap::new());
        }
        const CACHE_LIMIT: usize = 1 << 16;
        let slot = front_slot(s.as_bytes());
        let hit = FRONT.with(|f| {
            let f = f.try_borrow().ok()?;
            let (text, sym) = f[slot];
            if text == s { sym } else { None }
        });
        if let Some(sym) = hit {
            return sym;
        }
        let sym = CACHE.with(|c| {
            let Ok(mut cache) = c.try_borrow_mut() else {
                return Sym(INTERNER.get_or_intern(s));
            };
            if let Some(sym) = cache.get(s) {
                return *sym;
            }
            let sym = Sym(INTERNER.get_or_intern(s));
            if cache.len() < CACHE_LIMIT {
                cache.insert(s.into(), sym);
            }
            sym
        });
        let text = sym.as_str();
        FRONT.with(|f| {
            if let Ok(mut f) = f.try_borrow_mut() {
                f[slot] = (text, Some(sym));
            }
        });
        sym
    }

    /// A number identifying the symbol within this process (interning order): cheap to
    /// sort or hash by, but not stable across runs, so never output it.
    #[inline]
    pub fn id(self) -> u32 {
        self.0.into_inner().get()
    }

    /// The empty string, used for "absent" (no peer, no db system, ...).
    #[inline]
    pub fn empty() -> Self {
        static EMPTY: LazyLock<Sym> = LazyLock::new(|| Sym::new(""));
        *EMPTY
    }

    /// The interned text.
    #[inline]
    pub fn as_str(self) -> &'static str {
        // The interner resolves through a sharded map with locks; sinks resolve several
        // symbols per span, so resolved texts go into a process-wide table indexed by
        // the symbol: two atomic loads on a hit, no lock and no thread-local access
        // (which cost ~50 instructions per call).
        let id = self.0.into_inner().get() as usize;
        let hit = RESOLVED
            .get(id / RESOLVED_CHUNK)
            .and_then(OnceLock::get)
            .and_then(|chunk| chunk.get(id % RESOLVED_CHUNK))
            .and_then(OnceLock::get);
        match hit {
            Some(s) => s,
            None => self.resolve_and_remember(id),
        }
    }

    #[cold]
    #[inline(never)]
    fn resolve_and_remember(self, id: usize) -> &'static str {
        let s = Self::resolve(self.0);
        if let Some(chunk) = RESOLVED.get(id / RESOLVED_CHUNK) {
            let chunk =
                chunk.get_or_init(|| (0..RESOLVED_CHUNK).map(|_| OnceLock::new()).collect());
            if let Some(slot) = chunk.get(id % RESOLVED_CHUNK) {
                // Another thread may have set it first, to the same text.
                let _ = slot.set(s);
            }
        }
        s
    }

    fn resolve(spur: Spur) -> &'static str {
        // The interner is a static that is never dropped, so its strings live forever.
        let rodeo: &'static ThreadedRodeo<Spur, ahash::RandomState> = &INTERNER;
        rodeo.resolve(&spur)
    }

    /// True for the empty string.
    pub fn is_empty(self) -> bool {
        self == Sym::empty()
    }
}

impl Default for Sym {
    fn default() -> Self {
        Sym::empty()
    }
}

impl fmt::Debug for Sym {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Sym {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialOrd for Sym {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Sym {
    /// Orders by text, not by interning order, so sorted outputs are deterministic.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        if self == other {
            std::cmp::Ordering::Equal
        } else {
            self.as_str().cmp(other.as_str())
        }
    }
}

impl Serialize for Sym {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match super::codec::sym_index(*self) {
            Some(i) => s.serialize_u32(i),
            None => s.serialize_str(self.as_str()),
        }
    }
}

impl<'de> Deserialize<'de> for Sym {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if super::codec::decoding() {
            let i = u32::deserialize(d)?;
            return super::codec::sym_at(i)
                .ok_or_else(|| serde::de::Error::custom(format!("no string {i} in the state")));
        }
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Ok(Sym::new(&s))
    }
}
