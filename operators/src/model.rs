//! The compact span model every operator works on.
//!
//! A span is decoded once (see the `formats` module of the `spanflow` crate) into
//! [`Span`]: fixed-size ids, interned strings, the handful of attributes operators read
//! as typed fields, and everything else packed into one [`Attrs`] buffer for the sinks.

use std::fmt;
use std::sync::LazyLock;

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
    pub fn as_str(self) -> &'static str {
        // The interner resolves through a sharded map with locks; sinks resolve several
        // symbols per span, so each thread keeps an index of what it resolved before.
        thread_local! {
            static RESOLVED: std::cell::RefCell<Vec<Option<&'static str>>> =
                const { std::cell::RefCell::new(Vec::new()) };
        }
        let id = self.0.into_inner().get() as usize;
        RESOLVED.with(|r| {
            let Ok(mut cache) = r.try_borrow_mut() else {
                return Self::resolve(self.0);
            };
            if let Some(Some(s)) = cache.get(id) {
                return *s;
            }
            let s = Self::resolve(self.0);
            if cache.len() <= id {
                cache.resize(id + 1, None);
            }
            cache[id] = Some(s);
            s
        })
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

const TAG_STR: u8 = 0;
const TAG_BOOL: u8 = 1;
const TAG_INT: u8 = 2;
const TAG_DOUBLE: u8 = 3;
const TAG_JSON: u8 = 4;
const FLAG_RESOURCE: u8 = 0x80;

/// Attributes packed into one shared buffer: per entry a tag byte (type, plus a flag for
/// resource attributes), the key (u16 length + bytes) and the value (u32 length + bytes
/// for text, 1 or 8 bytes otherwise). One allocation per span instead of two per
/// attribute, and a resource's attributes are one buffer shared by all its spans;
/// operators never read it, only the span sinks do.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Attrs(Option<std::sync::Arc<[u8]>>);

/// A map keyed by attribute content (equal packed bytes, equal attributes), for sinks
/// that render each distinct resource once.
pub type AttrsMap<V> = ahash::AHashMap<Attrs, V>;

impl Attrs {
    /// No attributes.
    pub fn empty() -> Self {
        Attrs(None)
    }

    /// Heap bytes used.
    pub fn heap_bytes(&self) -> usize {
        self.0.as_ref().map_or(0, |b| b.len())
    }

    /// True when there are no attributes.
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// Iterates `(key, value, is_resource_attribute)`.
    pub fn iter(&self) -> AttrIter<'_> {
        AttrIter {
            buf: self.0.as_deref().unwrap_or(&[]),
            failed: false,
            checked: false,
        }
    }

    /// True when both are the same buffer (not merely equal bytes): spans of one
    /// resource share it, so sinks can render it once.
    pub fn same_buffer(&self, other: &Attrs) -> bool {
        match (&self.0, &other.0) {
            (Some(a), Some(b)) => std::sync::Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
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

/// Iterator over [`Attrs`].
pub struct AttrIter<'a> {
    buf: &'a [u8],
    failed: bool,
    /// Validate UTF-8 (only when walking bytes from outside, i.e. a checkpoint).
    checked: bool,
}

impl<'a> AttrIter<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.buf.len() < n {
            self.buf = &[];
            self.failed = true;
            return None;
        }
        let (h, t) = self.buf.split_at(n);
        self.buf = t;
        Some(h)
    }

    fn take_str(&mut self, len_bytes: usize) -> Option<&'a str> {
        let lb = self.take(len_bytes)?;
        let len = if len_bytes == 2 {
            u16::from_le_bytes([lb[0], lb[1]]) as usize
        } else {
            u32::from_le_bytes([lb[0], lb[1], lb[2], lb[3]]) as usize
        };
        let bytes = self.take(len)?;
        if self.checked {
            return match std::str::from_utf8(bytes) {
                Ok(s) => Some(s),
                Err(_) => {
                    self.failed = true;
                    None
                }
            };
        }
        // SAFETY: an `Attrs` buffer is built only by `AttrsBuilder`, which copies whole
        // `&str`s (truncated at char boundaries) between length prefixes, or by
        // `Deserialize`, which walks it with a checked iterator and rejects it unless
        // every key and text value is valid UTF-8. So these bytes are a `&str`'s bytes.
        // Re-validating here cost ~10% of the span sink's time.
        Some(unsafe { std::str::from_utf8_unchecked(bytes) })
    }
}

impl<'a> Iterator for AttrIter<'a> {
    type Item = (&'a str, AttrValue<'a>, bool);

    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.is_empty() {
            return None;
        }
        let tag = *self.take(1)?.first()?;
        let key = self.take_str(2)?;
        let value = match tag & !FLAG_RESOURCE {
            TAG_STR => AttrValue::Str(self.take_str(4)?),
            TAG_JSON => AttrValue::Json(self.take_str(4)?),
            TAG_BOOL => AttrValue::Bool(self.take(1)?[0] != 0),
            TAG_INT => AttrValue::Int(i64::from_le_bytes(self.take(8)?.try_into().ok()?)),
            TAG_DOUBLE => AttrValue::Double(f64::from_le_bytes(self.take(8)?.try_into().ok()?)),
            _ => {
                self.failed = true;
                self.buf = &[];
                return None;
            }
        };
        Some((key, value, tag & FLAG_RESOURCE != 0))
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

impl AttrsBuilder {
    fn key(&mut self, tag: u8, resource: bool, key: &str) {
        let key = truncate_str(key, MAX_ATTR_KEY_LEN);
        self.buf
            .push(tag | if resource { FLAG_RESOURCE } else { 0 });
        self.buf
            .extend_from_slice(&(key.len() as u16).to_le_bytes());
        self.buf.extend_from_slice(key.as_bytes());
    }

    fn text(&mut self, s: &str) {
        let s = truncate_str(s, MAX_ATTR_VALUE_LEN);
        self.buf.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(s.as_bytes());
    }

    /// Appends one attribute. Returns true when a value had to be truncated.
    pub fn push(&mut self, key: &str, value: AttrValue<'_>, resource: bool) -> bool {
        let mut truncated = key.len() > MAX_ATTR_KEY_LEN;
        match value {
            AttrValue::Str(s) => {
                truncated |= s.len() > MAX_ATTR_VALUE_LEN;
                self.key(TAG_STR, resource, key);
                self.text(s);
            }
            AttrValue::Json(s) => {
                truncated |= s.len() > MAX_ATTR_VALUE_LEN;
                self.key(TAG_JSON, resource, key);
                self.text(s);
            }
            AttrValue::Bool(b) => {
                self.key(TAG_BOOL, resource, key);
                self.buf.push(b as u8);
            }
            AttrValue::Int(i) => {
                self.key(TAG_INT, resource, key);
                self.buf.extend_from_slice(&i.to_le_bytes());
            }
            AttrValue::Double(d) => {
                self.key(TAG_DOUBLE, resource, key);
                self.buf.extend_from_slice(&d.to_le_bytes());
            }
        }
        truncated
    }

    /// Copies everything pushed since the last call into a fresh [`Attrs`] and clears
    /// the scratch buffer.
    pub fn finish(&mut self) -> Attrs {
        if self.buf.is_empty() {
            return Attrs::empty();
        }
        let a = Attrs(Some(self.buf.as_slice().into()));
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
        match &self.0 {
            Some(b) => s.serialize_bytes(b),
            None => s.serialize_bytes(&[]),
        }
    }
}

impl<'de> Deserialize<'de> for Attrs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v: Vec<u8> = serde::de::Deserialize::deserialize(d)?;
        // Validate by walking it: a corrupt checkpoint must not yield garbage later.
        let a = if v.is_empty() {
            Attrs::empty()
        } else {
            Attrs(Some(v.into()))
        };
        let mut it = a.iter();
        it.checked = true;
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
        let good = serde_json::to_string(&[0u8, 1, 0, b'k', 1, 0, 0, 0, b'v']).unwrap();
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
