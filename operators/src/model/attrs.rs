//! Span and resource attributes, packed in their OTLP wire encoding.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::wire::put_varint;

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
    /// An array, kvlist or bytes value: its OTLP `AnyValue` message body as it came
    /// off the wire (so that it goes out as it came in); `Display` renders it as JSON.
    Any(&'a [u8]),
}

impl fmt::Display for AttrValue<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttrValue::Str(s) => f.write_str(s),
            AttrValue::Any(b) => match super::wire::any_value_json(b) {
                Some(j) => write!(f, "{j}"),
                None => Ok(()),
            },
            AttrValue::Bool(b) => write!(f, "{b}"),
            AttrValue::Int(i) => write!(f, "{i}"),
            AttrValue::Double(d) => write!(f, "{d}"),
        }
    }
}

/// Entry tag of a span attribute: the field tag of `Span.attributes` (9, length-delimited).
pub(super) const ENTRY_SPAN: u8 = 0x4a;
/// Entry tag of a resource attribute: the field tag of `Resource.attributes` (1,
/// length-delimited).
pub(super) const ENTRY_RESOURCE: u8 = 0x0a;
/// `AnyValue` field tags: string (1), bool (2), int (3), double (4).
pub(super) const VALUE_STR: u8 = 0x0a;
const VALUE_BOOL: u8 = 0x10;
pub(super) const VALUE_INT: u8 = 0x18;
const VALUE_DOUBLE: u8 = 0x21;

/// A span's attributes and its other OTLP fields that no typed field of [`Span`]
/// holds, packed into one shared buffer in the OTLP wire format, as they arrived: the
/// `Span` message's fields other than ids, name, kind and times — every `attributes`
/// entry (tag [`ENTRY_SPAN`]: length, `KeyValue`), and events, links, status,
/// trace_state, flags and dropped counts. For a resource, the `Resource` message's
/// fields (attributes with tag [`ENTRY_RESOURCE`]) and the span's scope (see
/// `Span::resource_attrs`). The wire format lets the protobuf decoder copy a span's
/// fields run by run instead of re-encoding them (most spans are dropped by sampling and
/// their attributes never read), keeps what a kept trace's spans carried for the sinks
/// to write out whole, and costs one allocation per span instead of two per attribute;
/// a resource is one buffer shared by all its spans. Operators never read it, only the
/// span sinks and sampling rules on attributes do ([`Attrs::iter`] yields the
/// attributes and skips the other fields).
///
/// A span's attributes are a slice of a larger reference-counted chunk written by an
/// [`AttrArena`]: the chunk a decoder filled for the span's shard, or, once its session
/// outlived its first deadline, the session's own (see [`AttrArena`] for why).
///
/// [`Span`]: super::Span
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Attrs(pub(super) bytes::Bytes);

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

    /// Iterates the attributes, as `(key, value, is_resource_attribute)`; entries whose
    /// value is unset are skipped.
    pub fn iter(&self) -> AttrIter<'_> {
        AttrIter {
            buf: &self.0,
            failed: false,
        }
    }

    /// Every entry in buffer order: the attributes as [`iter`](Self::iter) reads them
    /// (and those without a value) and the other fields, in one walk (span sinks need
    /// both).
    pub fn entries(&self) -> Entries<'_> {
        Entries(self.iter())
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

    /// The buffer's top-level fields in wire form, attributes and the rest (for sinks
    /// that write a span out whole).
    pub fn fields(&self) -> super::wire::WireFields<'_> {
        super::wire::WireFields::new(&self.0)
    }

    /// Asks the CPU to start loading the buffer's first two cache lines, for a sink
    /// about to read it: the buffer was written when the span was decoded, seconds
    /// before its trace closed, and is no longer in any cache, so the first read of each
    /// span's attributes waited on memory (perf put a third of building a span row on
    /// that one load). A hint only: nothing changes if it is ignored.
    #[inline(always)]
    pub fn prefetch(&self) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            let p = self.0.as_ptr();
            // SAFETY: a prefetch never faults and changes no state a program can
            // observe, whatever the address; both are within or just past the buffer.
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(p.cast());
                if self.0.len() > 64 {
                    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(64).cast());
                }
            }
        }
    }

    /// The packed bytes (fields in OTLP wire form).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
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
}

/// Reads an OTLP `KeyValue` message body of the canonical shape — `key` (1), then
/// `value` (2) holding one string, bool, int or double and nothing else — as the key's
/// bytes and the value; `None` for any other shape. The caller validates the text (each
/// crate with its own fast path, inlined).
///
/// The protobuf decoder reads span attributes with this and copies the bytes it
/// accepted into [`Attrs`] unchanged, so that [`AttrIter`], reading them back with the
/// same function, yields exactly what the decoder saw.
#[inline(always)]
pub fn canonical_key_value(kv: &[u8]) -> Option<(&[u8], WireValue<'_>)> {
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
        _ => return None,
    };
    Some((key, value))
}

/// Reads any `KeyValue` body as protobuf decoders do (fields in any order, the last
/// value of the `AnyValue` oneof wins): the key and `None` for an entry whose value is
/// unset (decoders skip those), `None` for bytes that are not a `KeyValue`.
fn general_key_value(kv: &[u8]) -> Option<(&str, Option<AttrValue<'_>>)> {
    use super::wire::{WireField, WireFields};
    let (key, body) = super::wire::key_value(kv)?;
    let Some(body) = body else {
        return Some((key, None));
    };
    let mut value = None;
    let mut fields = WireFields::new(body);
    for (f, v) in fields.by_ref() {
        value = match (f, v) {
            (1, WireField::Len(t)) => Some(AttrValue::Str(utf8(t)?)),
            (2, WireField::Varint(b)) => Some(AttrValue::Bool(b != 0)),
            (3, WireField::Varint(i)) => Some(AttrValue::Int(i as i64)),
            (4, WireField::Fixed64(d)) => Some(AttrValue::Double(f64::from_bits(d))),
            (5..=7, WireField::Len(_)) => Some(AttrValue::Any(body)),
            (8, WireField::Varint(_)) => None,
            (1..=8, _) => return None,
            _ => value,
        };
    }
    if fields.failed {
        return None;
    }
    Some((key, value))
}

/// Validated text: short ASCII (nearly every key and value) by a word-wise check, the
/// rest by the standard validator, which costs ~100 instructions even for a short
/// string.
#[inline(always)]
fn utf8(b: &[u8]) -> Option<&str> {
    if super::wire::is_ascii(b) {
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
                if super::wire::is_ascii(entry) {
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

impl<'a> AttrIter<'a> {
    /// The next top-level entry: an attribute, or one of the message's other fields.
    #[inline(always)]
    fn next_entry(&mut self) -> Option<Entry<'a>> {
        if let Some((k, v, resource)) = self.next_short() {
            return Some(Entry::Attr(k, Some(v), resource));
        }
        let (&tag, _) = self.buf.split_first()?;
        if tag != ENTRY_SPAN && tag != ENTRY_RESOURCE {
            // One of the span's (or resource's) other fields kept in wire form:
            // events, links, status, scope. Not an attribute.
            let mut fields = super::wire::WireFields::new(self.buf);
            let Some((f, v)) = fields.next() else {
                self.failed = true;
                self.buf = &[];
                return None;
            };
            self.buf = fields.rest();
            return Some(Entry::Field(f, v));
        }
        // Text is validated again here (cheap for the ASCII that nearly all
        // attributes are), so the buffer needs no trusted constructor: only the
        // spans of kept traces are ever read back.
        let entry = len_field(self.buf, 0, tag).and_then(|(body, next)| {
            if let Some((k, v)) = canonical_key_value(body) {
                let v = match v {
                    WireValue::Str(t) => AttrValue::Str(utf8(t)?),
                    WireValue::Bool(b) => AttrValue::Bool(b),
                    WireValue::Int(i) => AttrValue::Int(i),
                    WireValue::Double(d) => AttrValue::Double(d),
                };
                return Some(((utf8(k)?, Some(v)), next));
            }
            Some((general_key_value(body)?, next))
        });
        match entry {
            Some(((k, v), next)) => {
                self.buf = self.buf.get(next..).unwrap_or(&[]);
                Some(Entry::Attr(k, v, tag == ENTRY_RESOURCE))
            }
            None => {
                self.failed = true;
                self.buf = &[];
                None
            }
        }
    }
}

impl<'a> Iterator for AttrIter<'a> {
    type Item = (&'a str, AttrValue<'a>, bool);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Entry::Attr(k, Some(v), resource) = self.next_entry()? {
                return Some((k, v, resource));
            }
        }
    }
}

/// One top-level entry of an [`Attrs`] buffer (see [`Attrs::entries`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Entry<'a> {
    /// An attribute: its key, its value (`None` when unset: [`Attrs::iter`] skips
    /// those) and whether it is flagged as a resource attribute.
    Attr(&'a str, Option<AttrValue<'a>>, bool),
    /// Another field of the message in wire form (events, links, status, ...).
    Field(u32, super::wire::WireField<'a>),
}

/// Iterator over every top-level entry of [`Attrs`], attributes and other fields.
pub struct Entries<'a>(AttrIter<'a>);

impl<'a> Iterator for Entries<'a> {
    type Item = Entry<'a>;

    #[inline]
    fn next(&mut self) -> Option<Entry<'a>> {
        self.0.next_entry()
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

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

impl AttrsBuilder {
    /// Appends one attribute. Returns true when a value had to be truncated (an
    /// [`AttrValue::Any`] is kept whole).
    pub fn push(&mut self, key: &str, value: AttrValue<'_>, resource: bool) -> bool {
        let mut truncated = key.len() > MAX_ATTR_KEY_LEN;
        let key = truncate_str(key, MAX_ATTR_KEY_LEN);
        // The `AnyValue` body: its tag and payload (none for `Any`, whose body is whole).
        let (tag, text, scalar) = match value {
            AttrValue::Str(s) => {
                truncated |= s.len() > MAX_ATTR_VALUE_LEN;
                (VALUE_STR, truncate_str(s, MAX_ATTR_VALUE_LEN).as_bytes(), 0)
            }
            AttrValue::Any(body) => (0, body, 0),
            AttrValue::Bool(b) => (VALUE_BOOL, &[][..], u64::from(b)),
            AttrValue::Int(i) => (VALUE_INT, &[][..], i as u64),
            AttrValue::Double(d) => (VALUE_DOUBLE, &[][..], d.to_bits()),
        };
        let any_len = match tag {
            0 => text.len(),
            VALUE_STR => 1 + varint_len(text.len() as u64) + text.len(),
            VALUE_DOUBLE => 9,
            _ => 1 + varint_len(scalar),
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
        match tag {
            0 => b.extend_from_slice(text),
            VALUE_STR => {
                b.push(tag);
                put_varint(b, text.len() as u64);
                b.extend_from_slice(text);
            }
            VALUE_DOUBLE => {
                b.push(tag);
                b.extend_from_slice(&scalar.to_le_bytes());
            }
            _ => {
                b.push(tag);
                put_varint(b, scalar);
            }
        }
        truncated
    }

    /// Appends fields already in wire form: whole OTLP `Span` fields (tag, length,
    /// body) as the protobuf decoder copies them from the record, a run at a time:
    /// attributes (each a `KeyValue` whose key and text are within
    /// [`MAX_ATTR_KEY_LEN`] and [`MAX_ATTR_VALUE_LEN`]) and the span's other fields no
    /// typed field holds. Not checked here (the iterator validates what it reads back).
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
        match super::codec::attrs_index(self) {
            Some(i) => s.serialize_u32(i),
            None => s.serialize_bytes(&self.0),
        }
    }
}

impl<'de> Deserialize<'de> for Attrs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if super::codec::decoding() {
            // Validated when the table was decoded.
            let i = u32::deserialize(d)?;
            return super::codec::attrs_at(i).ok_or_else(|| {
                serde::de::Error::custom(format!("no attributes {i} in the state"))
            });
        }
        inline::deserialize(d)
    }
}

/// Serde of a buffer held by one span only (its own attributes): written in place,
/// never through the state's table of shared buffers, which only pays for a buffer
/// many spans share (a resource's).
pub(crate) mod inline {
    use super::{Attrs, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(a: &Attrs, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&a.0)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Attrs, D::Error> {
        let v: serde_bytes::ByteBuf = serde::de::Deserialize::deserialize(d)?;
        let v = v.into_vec();
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
