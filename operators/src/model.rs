//! The compact span model every operator works on.
//!
//! A span is decoded once (see the `formats` module of the `spanflow` crate) into
//! [`Span`]: fixed-size ids, interned strings, the handful of attributes operators read
//! as typed fields, and everything else packed into one [`Attrs`] buffer for the sinks.

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
fn front_slot(b: &[u8]) -> usize {
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
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Sym {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Ok(Sym::new(&s))
    }
}

macro_rules! hex_id {
    ($name:ident, $len:expr, $doc:expr) => {
        #[doc = $doc]
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
        pub struct $name(pub [u8; $len]);

        /// Hashed as whole words rather than a length and a byte slice: ids are keys of
        /// the per-trace maps every span goes through. Consistent with `Eq` (the words
        /// are the bytes).
        impl std::hash::Hash for $name {
            #[inline]
            fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
                for w in self.0.chunks_exact(8) {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(w);
                    state.write_u64(u64::from_le_bytes(b));
                }
            }
        }

        impl $name {
            /// Byte length of the id.
            pub const LEN: usize = $len;

            /// The id from a byte slice of exactly [`Self::LEN`] bytes.
            pub fn from_slice(b: &[u8]) -> Option<Self> {
                <[u8; $len]>::try_from(b).ok().map($name)
            }

            /// True when every byte is zero (the OTLP "invalid id").
            pub fn is_zero(&self) -> bool {
                self.0.iter().all(|b| *b == 0)
            }

            /// Lower-case hex, as OTLP JSON and every tracing UI shows it.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }

            /// Parses lower- or upper-case hex of the right length.
            pub fn from_hex(s: &str) -> Option<Self> {
                let mut out = [0u8; $len];
                hex::decode_to_slice(s, &mut out).ok()?;
                Some($name(out))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_hex())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                $name::from_hex(&s)
                    .ok_or_else(|| serde::de::Error::custom(concat!("invalid ", stringify!($name))))
            }
        }
    };
}

hex_id!(TraceId, 16, "A 16-byte trace id.");
hex_id!(
    SpanId,
    8,
    "An 8-byte span id; all zeros means \"no parent\"."
);

impl TraceId {
    /// A well-mixed 64-bit hash of the id, used for shard routing and the
    /// probabilistic sampler. Trace ids are random already, but some SDKs and converters
    /// (e.g. the Alibaba traces) produce structured ids, so we mix anyway.
    pub fn hash64(&self) -> u64 {
        let hi = u64::from_le_bytes(self.0[..8].try_into().unwrap_or_default());
        let lo = u64::from_le_bytes(self.0[8..].try_into().unwrap_or_default());
        let mut x = hi ^ lo.rotate_left(29) ^ 0x9e37_79b9_7f4a_7c15;
        // splitmix64 finalizer
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^ (x >> 31)
    }

    /// The shard of `shards` this trace goes to (0 when there are none or one). The
    /// router and the decoders' per-shard attribute arenas must agree on it.
    #[inline]
    pub fn shard(&self, shards: usize) -> usize {
        if shards <= 1 {
            0
        } else {
            (self.hash64() % shards as u64) as usize
        }
    }
}

/// OTLP span kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum SpanKind {
    /// SPAN_KIND_UNSPECIFIED
    #[default]
    Unspecified = 0,
    /// SPAN_KIND_INTERNAL
    Internal = 1,
    /// SPAN_KIND_SERVER
    Server = 2,
    /// SPAN_KIND_CLIENT
    Client = 3,
    /// SPAN_KIND_PRODUCER
    Producer = 4,
    /// SPAN_KIND_CONSUMER
    Consumer = 5,
}

impl SpanKind {
    /// From the OTLP enum number; unknown numbers map to `Unspecified`.
    pub fn from_i32(v: i32) -> Self {
        match v {
            1 => SpanKind::Internal,
            2 => SpanKind::Server,
            3 => SpanKind::Client,
            4 => SpanKind::Producer,
            5 => SpanKind::Consumer,
            _ => SpanKind::Unspecified,
        }
    }

    /// Lower-case name as stored in outputs.
    pub fn as_str(self) -> &'static str {
        match self {
            SpanKind::Unspecified => "unspecified",
            SpanKind::Internal => "internal",
            SpanKind::Server => "server",
            SpanKind::Client => "client",
            SpanKind::Producer => "producer",
            SpanKind::Consumer => "consumer",
        }
    }
}

/// OTLP status code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum StatusCode {
    /// STATUS_CODE_UNSET
    #[default]
    Unset = 0,
    /// STATUS_CODE_OK
    Ok = 1,
    /// STATUS_CODE_ERROR
    Error = 2,
}

impl StatusCode {
    /// From the OTLP enum number; unknown numbers map to `Unset`.
    pub fn from_i32(v: i32) -> Self {
        match v {
            1 => StatusCode::Ok,
            2 => StatusCode::Error,
            _ => StatusCode::Unset,
        }
    }

    /// Lower-case name as stored in outputs.
    pub fn as_str(self) -> &'static str {
        match self {
            StatusCode::Unset => "unset",
            StatusCode::Ok => "ok",
            StatusCode::Error => "error",
        }
    }
}

/// What kind of call a span represents, derived from semantic-convention attributes
/// (see [`crate::classify`]).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum CallType {
    /// No call attributes: in-process work.
    #[default]
    Local = 0,
    /// `http.*`
    Http = 1,
    /// `rpc.*`
    Rpc = 2,
    /// `db.system` other than a cache.
    Db = 3,
    /// `db.system` redis or memcached.
    Cache = 4,
    /// `messaging.*`
    Mq = 5,
}

impl CallType {
    /// All call types, in a fixed order.
    pub const ALL: [CallType; 6] = [
        CallType::Local,
        CallType::Http,
        CallType::Rpc,
        CallType::Db,
        CallType::Cache,
        CallType::Mq,
    ];

    /// Lower-case name as stored in outputs and used in job files.
    pub fn as_str(self) -> &'static str {
        match self {
            CallType::Local => "local",
            CallType::Http => "http",
            CallType::Rpc => "rpc",
            CallType::Db => "db",
            CallType::Cache => "cache",
            CallType::Mq => "mq",
        }
    }
}

/// One decoded span. About 100 bytes plus its packed extra attributes.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
pub struct Span {
    /// Trace id; never all-zero (decoders reject that).
    pub trace_id: TraceId,
    /// Span id; never all-zero.
    pub span_id: SpanId,
    /// Parent span id; all-zero for a root span.
    pub parent_span_id: SpanId,
    /// Start, unix nanoseconds.
    pub start_ns: u64,
    /// End, unix nanoseconds. This is the span's event time.
    pub end_ns: u64,
    /// `service.name` of the resource.
    pub service: Sym,
    /// `service.instance.id` (or `host.name`) of the resource.
    pub instance: Sym,
    /// Span name (the operation).
    pub name: Sym,
    /// Span kind.
    pub kind: SpanKind,
    /// Status code.
    pub status: StatusCode,
    /// Call type derived from attributes.
    pub call_type: CallType,
    /// `http.response.status_code` / `http.status_code`, 0 when absent.
    pub http_status: u16,
    /// The remote side: `peer.service`, else `server.address`/`net.peer.name`, else the
    /// db/cache system or messaging destination; empty when unknown.
    pub peer: Sym,
    /// `db.system` / `db.system.name` (also for caches), empty when absent.
    pub db_system: Sym,
    /// `messaging.destination.name` / `messaging.destination`, empty when absent.
    pub messaging_destination: Sym,
    /// All other span attributes, packed.
    pub attrs: Attrs,
    /// The resource's attributes other than service name and instance, shared by every
    /// span of that resource.
    pub resource_attrs: Attrs,
}

impl Span {
    /// Event time: the end of the span.
    #[inline]
    pub fn event_time(&self) -> u64 {
        self.end_ns
    }

    /// Duration in nanoseconds (0 if the clock went backwards).
    #[inline]
    pub fn duration_ns(&self) -> u64 {
        self.end_ns.saturating_sub(self.start_ns)
    }

    /// True for a span without a parent.
    #[inline]
    pub fn is_root(&self) -> bool {
        self.parent_span_id.is_zero()
    }

    /// True when the span counts as an error: status error or an HTTP 5xx response.
    #[inline]
    pub fn is_error(&self) -> bool {
        self.status == StatusCode::Error || self.http_status >= 500
    }

    /// True for spans that hand work to a queue or take it from one.
    #[inline]
    pub fn is_async(&self) -> bool {
        matches!(self.kind, SpanKind::Producer | SpanKind::Consumer)
            || self.call_type == CallType::Mq
    }

    /// Approximate memory held by this span, for byte caps and bench figures (shared
    /// resource attributes are not counted per span).
    pub fn heap_bytes(&self) -> usize {
        std::mem::size_of::<Span>() + self.attrs.heap_bytes()
    }
}

/// A borrowed attribute value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum AttrValue<'a> {
    /// A string.
    Str(&'a str),
    /// A bool.
    Bool(bool),
    /// An int64.
    Int(i64),
    /// A double.
    Double(f64),
    /// An array, kvlist or bytes value, rendered as JSON text.
    Json(&'a str),
}

impl fmt::Display for AttrValue<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttrValue::Str(s) | AttrValue::Json(s) => f.write_str(s),
            AttrValue::Bool(b) => write!(f, "{b}"),
            AttrValue::Int(i) => write!(f, "{i}"),
            AttrValue::Double(d) => write!(f, "{d}"),
        }
    }
}

/// Entry tag of a span attribute: the field tag of `Span.attributes` (9, length-delimited).
const ENTRY_SPAN: u8 = 0x4a;
/// Entry tag of a resource attribute: the field tag of `Resource.attributes` (1,
/// length-delimited).
const ENTRY_RESOURCE: u8 = 0x0a;
/// `AnyValue` field tags: string (1), bool (2), int (3), double (4), and a field number
/// OTLP does not use (15, length-delimited) for arrays, kvlists and bytes rendered as
/// JSON text. Only buffers built here carry it; a decoder never accepts it from the wire.
const VALUE_STR: u8 = 0x0a;
const VALUE_BOOL: u8 = 0x10;
const VALUE_INT: u8 = 0x18;
const VALUE_DOUBLE: u8 = 0x21;
const VALUE_JSON: u8 = 0x7a;

/// Attributes packed into one shared buffer, in the OTLP wire format: each entry is a
/// `KeyValue` field (tag [`ENTRY_SPAN`] or [`ENTRY_RESOURCE`], length, then the key and
/// one scalar value in canonical order). The wire format lets the protobuf decoder copy
/// a span's attributes as they arrived, run by run, instead of re-encoding each one
/// (most spans are dropped by sampling and their attributes never read). One allocation
/// per span instead of two per attribute, and a resource's attributes are one buffer
/// shared by all its spans; operators never read it, only the span sinks do.
///
/// A span's attributes are a slice of a larger reference-counted chunk written by an
/// [`AttrArena`]: the chunk a decoder filled for the span's shard, or, once its session
/// outlived its first deadline, the session's own (see [`AttrArena`] for why).
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Attrs(bytes::Bytes);

/// A map keyed by attribute content (equal packed bytes, equal attributes), for sinks
/// that render each distinct resource once.
pub type AttrsMap<V> = ahash::AHashMap<Attrs, V>;

/// A map keyed by encoded bytes, with the hasher the operators use: decoders recognize
/// repeated encoded parts (a resource every record repeats) by it.
pub type BytesMap<V> = FastMap<Box<[u8]>, V>;

/// A hash map with the fast (not DoS-resistant) hasher the operators use, for crates
/// that do not depend on one.
pub type FastMap<K, V> = ahash::AHashMap<K, V>;

impl Attrs {
    /// No attributes.
    pub fn empty() -> Self {
        Attrs(bytes::Bytes::new())
    }

    /// Heap bytes used (the packed bytes; a chunk's unused tail is not counted).
    pub fn heap_bytes(&self) -> usize {
        self.0.len()
    }

    /// True when there are no attributes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The same attributes in `arena`'s current chunk (this handle's chunk is released
    /// when its last handle goes).
    pub fn moved_to(self, arena: &mut AttrArena) -> Attrs {
        if self.is_empty() {
            return self;
        }
        arena.store(&self.0)
    }

    /// Iterates `(key, value, is_resource_attribute)`.
    pub fn iter(&self) -> AttrIter<'_> {
        AttrIter {
            buf: &self.0,
            failed: false,
        }
    }

    /// True when both are the same buffer (not merely equal bytes): spans of one
    /// resource share it, so sinks can render it once.
    pub fn same_buffer(&self, other: &Attrs) -> bool {
        match (self.is_empty(), other.is_empty()) {
            (false, false) => self.0.as_ptr() == other.0.as_ptr() && self.0.len() == other.0.len(),
            (true, true) => true,
            _ => false,
        }
    }

    /// The address of the buffer (0 when empty): the same for attributes that share a
    /// buffer ([`same_buffer`](Self::same_buffer)), and unique among buffers alive at
    /// once.
    pub fn buffer_address(&self) -> usize {
        if self.is_empty() {
            0
        } else {
            self.0.as_ptr() as usize
        }
    }

    /// Looks one key up (linear; for tests and sinks, not hot paths).
    pub fn get(&self, key: &str) -> Option<AttrValue<'_>> {
        self.iter().find(|(k, _, _)| *k == key).map(|(_, v, _)| v)
    }
}

impl fmt::Debug for Attrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// A varint length at `at` of `b` (at most five bytes), as `(value, next)`.
#[inline(always)]
fn len_varint(b: &[u8], at: usize) -> Option<(usize, usize)> {
    let b0 = *b.get(at)?;
    if b0 < 0x80 {
        return Some((usize::from(b0), at + 1));
    }
    let mut v = u64::from(b0 & 0x7f);
    for i in 1..5 {
        let x = *b.get(at + i)?;
        v |= u64::from(x & 0x7f) << (7 * i);
        if x < 0x80 {
            return Some((usize::try_from(v).ok()?, at + i + 1));
        }
    }
    None
}

/// A length-delimited field of `b` at `at` with tag byte `tag`, as `(body, next)`.
#[inline(always)]
fn len_field(b: &[u8], at: usize, tag: u8) -> Option<(&[u8], usize)> {
    if *b.get(at)? != tag {
        return None;
    }
    let (len, start) = len_varint(b, at + 1)?;
    let end = start.checked_add(len)?;
    Some((b.get(start..end)?, end))
}

/// A whole varint that must end exactly at the end of `b`.
#[inline(always)]
fn varint_to_end(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 10 {
        return None;
    }
    let mut v = 0u64;
    for (i, &x) in b.iter().enumerate() {
        v |= u64::from(x & 0x7f) << (7 * i);
        if x < 0x80 {
            return (i + 1 == b.len()).then_some(v);
        }
    }
    None
}

/// A value read by [`canonical_key_value`], text not yet validated as UTF-8.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum WireValue<'a> {
    /// A string value's bytes.
    Str(&'a [u8]),
    /// A bool.
    Bool(bool),
    /// An int64.
    Int(i64),
    /// A double.
    Double(f64),
    /// JSON text's bytes (only in buffers [`AttrsBuilder`] wrote).
    Json(&'a [u8]),
}

/// Reads an OTLP `KeyValue` message body of the canonical shape — `key` (1), then
/// `value` (2) holding one string, bool, int or double and nothing else — as the key's
/// bytes and the value; `None` for any other shape. With `json`, also reads the JSON
/// text value only [`AttrsBuilder`] writes. The caller validates the text (each crate
/// with its own fast path, inlined).
///
/// The protobuf decoder reads span attributes with this (`json` false) and copies the
/// bytes it accepted into [`Attrs`] unchanged, so that [`AttrIter`], reading them back
/// with the same function, yields exactly what the decoder saw.
#[inline(always)]
pub fn canonical_key_value(kv: &[u8], json: bool) -> Option<(&[u8], WireValue<'_>)> {
    let (key, next) = len_field(kv, 0, 0x0a)?;
    let (value, end) = len_field(kv, next, 0x12)?;
    if end != kv.len() {
        return None;
    }
    let (&tag, rest) = value.split_first()?;
    let value = match tag {
        VALUE_STR => {
            let (text, end) = len_field(value, 0, VALUE_STR)?;
            if end != value.len() {
                return None;
            }
            WireValue::Str(text)
        }
        VALUE_BOOL => WireValue::Bool(varint_to_end(rest)? != 0),
        VALUE_INT => WireValue::Int(varint_to_end(rest)? as i64),
        VALUE_DOUBLE => {
            WireValue::Double(f64::from_bits(u64::from_le_bytes(rest.try_into().ok()?)))
        }
        VALUE_JSON if json => {
            let (text, end) = len_field(value, 0, VALUE_JSON)?;
            if end != value.len() {
                return None;
            }
            WireValue::Json(text)
        }
        _ => return None,
    };
    Some((key, value))
}

/// Validated text: short ASCII (nearly every key and value) by a word-wise check, the
/// rest by the standard validator, which costs ~100 instructions even for a short
/// string.
#[inline(always)]
fn utf8(b: &[u8]) -> Option<&str> {
    if b.is_ascii() {
        // SAFETY: ASCII bytes are valid UTF-8.
        return Some(unsafe { std::str::from_utf8_unchecked(b) });
    }
    std::str::from_utf8(b).ok()
}

/// Iterator over [`Attrs`].
pub struct AttrIter<'a> {
    buf: &'a [u8],
    failed: bool,
}

impl<'a> AttrIter<'a> {
    /// The next entry when it is a short string or an int attribute (every length a
    /// one-byte varint), which most are; `None` leaves it to the general parse. Reads the
    /// same as [`canonical_key_value`] for those bytes, with a quarter of the checks.
    #[inline(always)]
    fn next_short(&mut self) -> Option<(&'a str, AttrValue<'a>, bool)> {
        let b = self.buf;
        let [tag, len, 0x0a, klen, ..] = *b else {
            return None;
        };
        if (tag != ENTRY_SPAN && tag != ENTRY_RESOURCE) || (len | klen) >= 0x80 {
            return None;
        }
        let end = 2 + usize::from(len);
        let key_end = 4 + usize::from(klen);
        let entry = b.get(..end)?;
        // The value field (tag, length) must end exactly at the end of the entry, and
        // hold a string (tag, length, text) or an int (tag, varint).
        let [0x12, vlen, vtag] = *entry.get(key_end..key_end + 3)? else {
            return None;
        };
        if vlen >= 0x80 || key_end + 2 + usize::from(vlen) != end {
            return None;
        }
        let key = entry.get(4..key_end)?;
        // Every tag and length of the entry is below 0x80 (checked above), so a string
        // entry is ASCII exactly when its key and text are: one check for both.
        let (key, value) = match vtag {
            VALUE_STR => {
                let tlen = *entry.get(key_end + 3)?;
                if tlen >= 0x80 || usize::from(tlen) + 2 != usize::from(vlen) {
                    return None;
                }
                let text = entry.get(key_end + 4..)?;
                if entry.is_ascii() {
                    // SAFETY: `key` and `text` are parts of `entry`, which is ASCII,
                    // hence valid UTF-8.
                    unsafe {
                        (
                            std::str::from_utf8_unchecked(key),
                            AttrValue::Str(std::str::from_utf8_unchecked(text)),
                        )
                    }
                } else {
                    (utf8(key)?, AttrValue::Str(utf8(text)?))
                }
            }
            VALUE_INT => (
                utf8(key)?,
                AttrValue::Int(varint_to_end(entry.get(key_end + 3..)?)? as i64),
            ),
            _ => return None,
        };
        self.buf = b.get(end..)?;
        Some((key, value, tag == ENTRY_RESOURCE))
    }
}

impl<'a> Iterator for AttrIter<'a> {
    type Item = (&'a str, AttrValue<'a>, bool);

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(fast) = self.next_short() {
            return Some(fast);
        }
        let (&tag, _) = self.buf.split_first()?;
        let entry = (tag == ENTRY_SPAN || tag == ENTRY_RESOURCE)
            .then(|| len_field(self.buf, 0, tag))
            .flatten()
            .and_then(|(body, next)| {
                // Text is validated again here (cheap for the ASCII that nearly all
                // attributes are), so the buffer needs no trusted constructor: only the
                // spans of kept traces are ever read back.
                let (k, v) = canonical_key_value(body, true)?;
                let v = match v {
                    WireValue::Str(t) => AttrValue::Str(utf8(t)?),
                    WireValue::Json(t) => AttrValue::Json(utf8(t)?),
                    WireValue::Bool(b) => AttrValue::Bool(b),
                    WireValue::Int(i) => AttrValue::Int(i),
                    WireValue::Double(d) => AttrValue::Double(d),
                };
                Some((utf8(k)?, v, next))
            });
        match entry {
            Some((k, v, next)) => {
                self.buf = self.buf.get(next..).unwrap_or(&[]);
                Some((k, v, tag == ENTRY_RESOURCE))
            }
            None => {
                self.failed = true;
                self.buf = &[];
                None
            }
        }
    }
}

/// Storage for [`Attrs`]: chunks of packed attribute bytes shared by many spans' handles,
/// each chunk freed when its last handle goes.
///
/// One allocation per span's attributes, made on a decoding thread and freed on a
/// shard, made the allocator the largest single cost of the pipeline: an allocation on
/// the decoder found its block in the other core's cache, collecting the blocks shards
/// had freed walked cold memory, and dropping a closed trace touched one cold reference
/// count per span. Now a decoder keeps one arena per shard, so a chunk's reference
/// count is only ever touched by the shard it goes to, in the order it reads the spans
/// (a hot cache line), and freeing is one call per chunk. A session that stays open
/// past its first deadline moves its spans' attributes into an arena of its own, so
/// that it does not keep the decoder's chunks (and the other traces' attributes in
/// them) alive.
pub struct AttrArena {
    chunk: bytes::BytesMut,
    /// Capacity of the next chunk, doubled after each up to `max`.
    next: usize,
    max: usize,
}

impl AttrArena {
    /// Chunks of `first` bytes, doubling up to `max` (a larger entry gets a chunk of
    /// its own size).
    pub fn new(first: usize, max: usize) -> Self {
        AttrArena {
            chunk: bytes::BytesMut::new(),
            next: first.max(1),
            max: max.max(first).max(1),
        }
    }

    /// Copies `packed` (a whole [`Attrs`] buffer) into the current chunk.
    #[inline]
    pub(crate) fn store(&mut self, packed: &[u8]) -> Attrs {
        if self.chunk.capacity() - self.chunk.len() < packed.len() {
            self.new_chunk(packed.len());
        }
        self.chunk.extend_from_slice(packed);
        Attrs(self.chunk.split().freeze())
    }

    #[cold]
    fn new_chunk(&mut self, need: usize) {
        self.chunk = bytes::BytesMut::with_capacity(self.next.max(need));
        self.next = self.next.saturating_mul(2).min(self.max);
    }
}

/// A clone starts with no chunk of its own (chunks are never shared between writers).
impl Clone for AttrArena {
    fn clone(&self) -> Self {
        AttrArena {
            chunk: bytes::BytesMut::new(),
            next: self.next,
            max: self.max,
        }
    }
}

impl fmt::Debug for AttrArena {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttrArena")
            .field("free", &(self.chunk.capacity() - self.chunk.len()))
            .field("next", &self.next)
            .finish()
    }
}

/// Builds [`Attrs`]; reuse one builder (via [`AttrsBuilder::finish`]) across spans so
/// its scratch buffer is allocated once.
#[derive(Default)]
pub struct AttrsBuilder {
    buf: Vec<u8>,
}

/// Longest key kept; longer keys are truncated (attribute limits, as in the OTel SDKs).
pub const MAX_ATTR_KEY_LEN: usize = 1024;
/// Longest string value kept; longer values are truncated at a char boundary.
pub const MAX_ATTR_VALUE_LEN: usize = 64 * 1024;

fn truncate_str(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

impl AttrsBuilder {
    /// Appends one attribute. Returns true when a value had to be truncated.
    pub fn push(&mut self, key: &str, value: AttrValue<'_>, resource: bool) -> bool {
        let mut truncated = key.len() > MAX_ATTR_KEY_LEN;
        let key = truncate_str(key, MAX_ATTR_KEY_LEN);
        // The `AnyValue` body: its tag and payload.
        let (tag, text, scalar) = match value {
            AttrValue::Str(s) => {
                truncated |= s.len() > MAX_ATTR_VALUE_LEN;
                (VALUE_STR, truncate_str(s, MAX_ATTR_VALUE_LEN), 0)
            }
            AttrValue::Json(s) => {
                truncated |= s.len() > MAX_ATTR_VALUE_LEN;
                (VALUE_JSON, truncate_str(s, MAX_ATTR_VALUE_LEN), 0)
            }
            AttrValue::Bool(b) => (VALUE_BOOL, "", u64::from(b)),
            AttrValue::Int(i) => (VALUE_INT, "", i as u64),
            AttrValue::Double(d) => (VALUE_DOUBLE, "", d.to_bits()),
        };
        let any_len = 1 + match tag {
            VALUE_STR | VALUE_JSON => varint_len(text.len() as u64) + text.len(),
            VALUE_DOUBLE => 8,
            _ => varint_len(scalar),
        };
        let body_len =
            1 + varint_len(key.len() as u64) + key.len() + 1 + varint_len(any_len as u64) + any_len;
        let b = &mut self.buf;
        b.push(if resource { ENTRY_RESOURCE } else { ENTRY_SPAN });
        put_varint(b, body_len as u64);
        b.push(0x0a);
        put_varint(b, key.len() as u64);
        b.extend_from_slice(key.as_bytes());
        b.push(0x12);
        put_varint(b, any_len as u64);
        b.push(tag);
        match tag {
            VALUE_STR | VALUE_JSON => {
                put_varint(b, text.len() as u64);
                b.extend_from_slice(text.as_bytes());
            }
            VALUE_DOUBLE => b.extend_from_slice(&scalar.to_le_bytes()),
            _ => put_varint(b, scalar),
        }
        truncated
    }

    /// Appends span attributes already in the packed form: whole OTLP `Span.attributes`
    /// fields (tag, length, `KeyValue`) each of which [`canonical_key_value`] reads
    /// (`json` false) with keys and text within [`MAX_ATTR_KEY_LEN`] and
    /// [`MAX_ATTR_VALUE_LEN`]. The protobuf decoder hands over runs of consecutive fields
    /// straight from the record; entries are not checked here (the iterator validates
    /// what it reads back).
    #[inline]
    pub fn push_encoded(&mut self, fields: &[u8]) {
        self.buf.extend_from_slice(fields);
    }

    /// Copies everything pushed since the last call into a fresh [`Attrs`] and clears
    /// the scratch buffer.
    pub fn finish(&mut self) -> Attrs {
        if self.buf.is_empty() {
            return Attrs::empty();
        }
        let a = Attrs(bytes::Bytes::copy_from_slice(&self.buf));
        self.buf.clear();
        a
    }

    /// Like [`finish`](Self::finish), but the bytes go into `arena`'s current chunk
    /// instead of an allocation of their own.
    pub fn finish_in(&mut self, arena: &mut AttrArena) -> Attrs {
        if self.buf.is_empty() {
            return Attrs::empty();
        }
        let a = arena.store(&self.buf);
        self.buf.clear();
        a
    }

    /// Number of bytes pushed since the last [`finish`](Self::finish).
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// True when nothing was pushed since the last [`finish`](Self::finish).
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

/// Serialized as the packed bytes: checkpoints are read back by the same version.
impl Serialize for Attrs {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Attrs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v: Vec<u8> = serde::de::Deserialize::deserialize(d)?;
        // Validate by walking it: a corrupt checkpoint must not yield garbage later.
        let a = if v.is_empty() {
            Attrs::empty()
        } else {
            Attrs(v.into())
        };
        let mut it = a.iter();
        while it.next().is_some() {}
        if it.failed {
            return Err(serde::de::Error::custom("corrupt packed attributes"));
        }
        Ok(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_text() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            "[a-z.]{0,8}".prop_map(String::into_bytes),
            "\\PC{0,4}".prop_map(String::into_bytes),
            prop::collection::vec(any::<u8>(), 0..6),
        ]
    }

    proptest! {
        /// The short-entry fast path of `AttrIter` reads exactly what the general parse
        /// (and the standard UTF-8 validator) reads, for valid and invalid text alike.
        #[test]
        fn short_entries_read_like_the_general_parse(
            key in arb_text(),
            text in arb_text(),
            int in prop::option::of(any::<i64>()),
            resource in any::<bool>(),
        ) {
            let value = match int {
                Some(i) => {
                    let mut v = vec![VALUE_INT];
                    let mut x = i as u64;
                    while x >= 0x80 {
                        v.push((x as u8) | 0x80);
                        x >>= 7;
                    }
                    v.push(x as u8);
                    v
                }
                None => [vec![VALUE_STR, text.len() as u8], text.clone()].concat(),
            };
            let body = [
                vec![0x0a, key.len() as u8],
                key.clone(),
                vec![0x12, value.len() as u8],
                value,
            ]
            .concat();
            let tag = if resource { ENTRY_RESOURCE } else { ENTRY_SPAN };
            let buf = [vec![tag, body.len() as u8], body.clone()].concat();
            let attrs = Attrs(buf.into());
            let got: Vec<_> = attrs.iter().collect();
            let want = canonical_key_value(&body, true).and_then(|(k, v)| {
                let v = match v {
                    WireValue::Str(t) => AttrValue::Str(std::str::from_utf8(t).ok()?),
                    WireValue::Int(i) => AttrValue::Int(i),
                    _ => return None,
                };
                Some((std::str::from_utf8(k).ok()?, v, resource))
            });
            prop_assert_eq!(got, want.into_iter().collect::<Vec<_>>());
        }
    }

    proptest! {
        /// Attributes stored in an arena read exactly as their own buffers do, whatever
        /// the chunk size, and stay valid after the arena and every other handle to
        /// their chunk are gone; distinct ones never look like the same buffer.
        #[test]
        fn arena_attrs_read_like_their_own_buffers(
            spans in prop::collection::vec(
                prop::collection::vec(("[a-z.]{1,12}", "\\PC{0,24}", any::<bool>()), 0..6),
                1..40,
            ),
            first in 1usize..300,
            max in 1usize..600,
        ) {
            let mut arena = AttrArena::new(first, max);
            let mut b = AttrsBuilder::default();
            let mut stored = Vec::new();
            for entries in &spans {
                for (k, v, res) in entries {
                    b.push(k, AttrValue::Str(v), *res);
                }
                let own = {
                    let mut c = AttrsBuilder::default();
                    for (k, v, res) in entries {
                        c.push(k, AttrValue::Str(v), *res);
                    }
                    c.finish()
                };
                stored.push((b.finish_in(&mut arena), own));
            }
            drop(arena);
            // Every other handle of a chunk goes before the ones checked last.
            let keep: Vec<_> = stored.into_iter().rev().step_by(2).collect();
            for (i, (a, own)) in keep.iter().enumerate() {
                prop_assert_eq!(a, own);
                prop_assert_eq!(a.iter().collect::<Vec<_>>(), own.iter().collect::<Vec<_>>());
                prop_assert!(a.same_buffer(&a.clone()));
                for (b, _) in keep.iter().skip(i + 1) {
                    if !a.is_empty() && !b.is_empty() {
                        prop_assert!(!a.same_buffer(b));
                        prop_assert_ne!(a.buffer_address(), b.buffer_address());
                    }
                }
                let moved = a.clone().moved_to(&mut AttrArena::new(first, max));
                prop_assert_eq!(&moved, own);
            }
        }
    }

    #[test]
    fn sym_roundtrip_and_order() {
        let a = Sym::new("checkout");
        let b = Sym::new("api-gateway");
        assert_eq!(a, Sym::new("checkout"));
        assert_eq!(a.as_str(), "checkout");
        assert!(b < a, "orders by text");
        assert!(Sym::empty().is_empty());
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(json, "\"checkout\"");
        let back: Sym = serde_json::from_str(&json).unwrap();
        assert_eq!(back, a);
    }

    #[test]
    fn sym_front_cache_slot_collisions_keep_the_right_text() {
        // Same length, first and last eight bytes: the same front-cache slot.
        let a = "GET /api/v1/aaaa/orders/{id}";
        let b = "GET /api/v1/bbbb/orders/{id}";
        assert_eq!(front_slot(a.as_bytes()), front_slot(b.as_bytes()));
        for _ in 0..3 {
            assert_eq!(Sym::new(a).as_str(), a);
            assert_eq!(Sym::new(b).as_str(), b);
        }
        assert_ne!(Sym::new(a), Sym::new(b));
        assert_eq!(Sym::new("ab").as_str(), "ab");
        assert_eq!(Sym::new("").as_str(), "");
    }

    #[test]
    fn ids_hex() {
        let t = TraceId::from_hex("0102030405060708090a0b0c0d0e0f10").unwrap();
        assert_eq!(t.0[0], 1);
        assert_eq!(t.to_hex(), "0102030405060708090a0b0c0d0e0f10");
        assert!(TraceId::from_hex("zz").is_none());
        assert!(SpanId::default().is_zero());
    }

    #[test]
    fn corrupt_checkpoint_attrs_are_rejected() {
        // tag str, key length 1, key 0xff (not UTF-8), value length 0
        let bad = serde_json::to_string(&[0u8, 1, 0, 0xff, 0, 0, 0, 0]).unwrap();
        assert!(serde_json::from_str::<Attrs>(&bad).is_err());
        let truncated = serde_json::to_string(&[0u8, 5, 0, b'a']).unwrap();
        assert!(serde_json::from_str::<Attrs>(&truncated).is_err());
        // KeyValue { key: "k", value: { string_value: "v" } } with a non-UTF-8 key
        let bad_key =
            serde_json::to_string(&[0x4au8, 8, 0x0a, 1, 0xff, 0x12, 3, 0x0a, 1, b'v']).unwrap();
        assert!(serde_json::from_str::<Attrs>(&bad_key).is_err());
        let good =
            serde_json::to_string(&[0x4au8, 8, 0x0a, 1, b'k', 0x12, 3, 0x0a, 1, b'v']).unwrap();
        let a: Attrs = serde_json::from_str(&good).unwrap();
        assert_eq!(a.get("k"), Some(AttrValue::Str("v")));
    }

    #[test]
    fn attrs_pack_unpack() {
        let mut b = AttrsBuilder::default();
        b.push("http.route", AttrValue::Str("/a/{id}"), false);
        b.push("retries", AttrValue::Int(-3), false);
        b.push("ok", AttrValue::Bool(true), false);
        b.push("ratio", AttrValue::Double(0.5), true);
        b.push("list", AttrValue::Json("[1,2]"), false);
        let a = b.finish();
        assert!(b.is_empty());
        let all: Vec<_> = a.iter().collect();
        assert_eq!(all.len(), 5);
        assert_eq!(a.get("retries"), Some(AttrValue::Int(-3)));
        assert_eq!(all[3], ("ratio", AttrValue::Double(0.5), true));
        let json = serde_json::to_string(&a).unwrap();
        let back: Attrs = serde_json::from_str(&json).unwrap();
        assert_eq!(back, a);
    }

    #[test]
    fn attrs_read_back_as_pushed_and_as_copied_from_the_wire() {
        let long = "é".repeat(200);
        let values = [
            AttrValue::Str("GET"),
            AttrValue::Str(&long),
            AttrValue::Str(""),
            AttrValue::Int(-7),
            AttrValue::Int(200),
            AttrValue::Bool(false),
            AttrValue::Double(-0.25),
            AttrValue::Json("{\"a\":1}"),
        ];
        let mut b = AttrsBuilder::default();
        for (i, v) in values.iter().enumerate() {
            b.push(&format!("k{i}"), *v, i % 3 == 0);
        }
        let a = b.finish();
        let got: Vec<_> = a.iter().collect();
        assert_eq!(got.len(), values.len());
        for (i, (k, v, resource)) in got.into_iter().enumerate() {
            assert_eq!(k, format!("k{i}"));
            assert_eq!(v, values[i]);
            assert_eq!(resource, i % 3 == 0);
        }
        // The same bytes handed over as encoded fields, as the protobuf decoder does.
        let bytes: Vec<u8> = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
        let mut c = AttrsBuilder::default();
        c.push_encoded(&bytes[..5]);
        c.push_encoded(&bytes[5..]);
        assert_eq!(c.finish(), a);
    }

    #[test]
    fn attrs_truncate_long_values_at_char_boundary() {
        let mut b = AttrsBuilder::default();
        let long = "é".repeat(MAX_ATTR_VALUE_LEN);
        assert!(b.push("k", AttrValue::Str(&long), false));
        let a = b.finish();
        match a.get("k") {
            Some(AttrValue::Str(s)) => assert!(s.len() <= MAX_ATTR_VALUE_LEN && !s.is_empty()),
            other => panic!("unexpected {other:?}"),
        }
    }
}
