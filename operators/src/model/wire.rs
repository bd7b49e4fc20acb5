//! Walking the top-level fields of protobuf bytes a span keeps in wire form (its
//! [`Attrs`](super::Attrs) and its resource's), for the sinks that render them.
//!
//! The decoders validate a record before any of it is kept, so a walk here only fails on
//! a buffer that was never decoded (a corrupt checkpoint); it then stops, and the
//! caller sees fewer fields, never garbage.

/// One field's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireField<'a> {
    /// Wire type 0.
    Varint(u64),
    /// Wire type 1.
    Fixed64(u64),
    /// Wire type 2: the body.
    Len(&'a [u8]),
    /// Wire type 5.
    Fixed32(u32),
}

/// A varint at the start of `b`, as `(value, bytes read)`.
#[inline]
pub(super) fn varint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, &x) in b.iter().enumerate().take(10) {
        v |= u64::from(x & 0x7f) << (7 * i);
        if x < 0x80 {
            return Some((v, i + 1));
        }
    }
    None
}

/// Iterator over the top-level fields of a message body: `(field number, value)`.
#[derive(Clone)]
pub struct WireFields<'a> {
    buf: &'a [u8],
    /// The walk met bytes that are not a field and stopped.
    pub failed: bool,
}

impl<'a> WireFields<'a> {
    /// Walks `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        WireFields { buf, failed: false }
    }

    /// The bytes not walked yet.
    pub fn rest(&self) -> &'a [u8] {
        self.buf
    }

    #[inline]
    fn read(&mut self) -> Option<(u32, WireField<'a>, usize)> {
        let b = self.buf;
        // Nearly every field of a span is length-delimited with a one-byte key and a
        // one-byte length (attributes, events, status).
        if let [key, len, rest @ ..] = b
            && *key < 0x80
            && *key & 7 == 2
            && *key >= 8
            && *len < 0x80
        {
            let n = usize::from(*len);
            return Some((u32::from(*key >> 3), WireField::Len(rest.get(..n)?), 2 + n));
        }
        self.read_general(b)
    }

    fn read_general(&self, b: &'a [u8]) -> Option<(u32, WireField<'a>, usize)> {
        let (key, n) = varint(b)?;
        let field = u32::try_from(key >> 3).ok().filter(|&f| f > 0)?;
        let rest = b.get(n..)?;
        let (value, used) = match key & 7 {
            0 => {
                let (v, m) = varint(rest)?;
                (WireField::Varint(v), m)
            }
            1 => (
                WireField::Fixed64(u64::from_le_bytes(rest.get(..8)?.try_into().ok()?)),
                8,
            ),
            2 => {
                let (len, m) = varint(rest)?;
                let end = m.checked_add(usize::try_from(len).ok()?)?;
                (WireField::Len(rest.get(m..end)?), end)
            }
            5 => (
                WireField::Fixed32(u32::from_le_bytes(rest.get(..4)?.try_into().ok()?)),
                4,
            ),
            _ => return None,
        };
        Some((field, value, n + used))
    }
}

impl<'a> Iterator for WireFields<'a> {
    type Item = (u32, WireField<'a>);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.is_empty() {
            return None;
        }
        match self.read() {
            Some((f, v, used)) => {
                self.buf = self.buf.get(used..).unwrap_or(&[]);
                Some((f, v))
            }
            None => {
                self.failed = true;
                self.buf = &[];
                None
            }
        }
    }
}

/// True when `b` is ASCII. Keys and values are nearly always short ASCII, and the
/// standard check is an out-of-line call (~45 instructions for a 20-byte entry, called
/// for every attribute decoded and every attribute of a kept span written out); this
/// checks up to 64 bytes inline, eight at a time, and leaves longer slices to it.
#[inline(always)]
pub fn is_ascii(b: &[u8]) -> bool {
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let word = |c: &[u8]| {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        u64::from_ne_bytes(w)
    };
    let n = b.len();
    if n > 64 {
        return b.is_ascii();
    }
    if n < 8 {
        return b.iter().all(|&x| x < 0x80);
    }
    let mut acc = word(&b[n - 8..]);
    for c in b.chunks_exact(8) {
        acc |= word(c);
    }
    acc & HIGH == 0
}

/// Appends a varint.
pub fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// Appends a length-delimited field: its key, the length and `body`.
pub fn put_len_field(buf: &mut Vec<u8>, field: u32, body: &[u8]) {
    put_varint(buf, (u64::from(field) << 3) | 2);
    put_varint(buf, body.len() as u64);
    buf.extend_from_slice(body);
}

/// Renders an OTLP `AnyValue` message body as JSON: strings, bools, numbers as they
/// are, arrays and kvlists nested, bytes as hex (what the attribute columns show for a
/// value that is not a scalar). `None` for a body that is not an `AnyValue`.
pub fn any_value_json(body: &[u8]) -> Option<serde_json::Value> {
    use serde_json::Value as J;
    let mut out = J::Null;
    let mut fields = WireFields::new(body);
    // A oneof: the last value on the wire wins, as protobuf decoders read it.
    for (f, v) in fields.by_ref() {
        out = match (f, v) {
            (1, WireField::Len(t)) => J::String(std::str::from_utf8(t).ok()?.to_owned()),
            (2, WireField::Varint(b)) => J::Bool(b != 0),
            (3, WireField::Varint(i)) => J::from(i as i64),
            (4, WireField::Fixed64(d)) => J::from(f64::from_bits(d)),
            (5, WireField::Len(a)) => {
                let mut items = Vec::new();
                for (f, v) in WireFields::new(a) {
                    if let (1, WireField::Len(item)) = (f, v) {
                        items.push(any_value_json(item)?);
                    }
                }
                J::Array(items)
            }
            (6, WireField::Len(kvs)) => {
                let mut map = serde_json::Map::new();
                for (f, v) in WireFields::new(kvs) {
                    if let (1, WireField::Len(kv)) = (f, v) {
                        let (k, value) = key_value(kv)?;
                        map.insert(k.to_owned(), value.map_or(Some(J::Null), any_value_json)?);
                    }
                }
                J::Object(map)
            }
            (7, WireField::Len(b)) => J::String(hex::encode(b)),
            (8, WireField::Varint(_)) => J::Null,
            (1..=8, _) => return None,
            _ => out,
        };
    }
    (!fields.failed).then_some(out)
}

/// A `KeyValue` body as its key and its value's `AnyValue` body (`None` when unset).
pub fn key_value(kv: &[u8]) -> Option<(&str, Option<&[u8]>)> {
    let mut key = "";
    let mut value = None;
    let mut fields = WireFields::new(kv);
    for (f, v) in fields.by_ref() {
        match (f, v) {
            (1, WireField::Len(k)) => key = std::str::from_utf8(k).ok()?,
            (2, WireField::Len(b)) => value = Some(b),
            (1 | 2, _) => return None,
            _ => {}
        }
    }
    (!fields.failed).then_some((key, value))
}

/// The key of a `KeyValue` body, read without its value when the key comes first (as
/// every encoder writes it); `None` for bytes that are not a `KeyValue`.
#[inline]
pub fn key_of(kv: &[u8]) -> Option<&[u8]> {
    if let Some((&0x0a, rest)) = kv.split_first()
        && let Some((len, n)) = varint(rest)
    {
        let end = n.checked_add(usize::try_from(len).ok()?)?;
        return rest.get(n..end);
    }
    key_value(kv).map(|(k, _)| k.as_bytes())
}

#[cfg(test)]
mod ascii_tests {
    use proptest::prelude::*;

    proptest! {
        /// The same answer as the standard check, for every length around the cut-offs.
        #[test]
        fn is_ascii_matches_std(b in prop::collection::vec(any::<u8>(), 0..80), high in any::<bool>()) {
            let b: Vec<u8> = if high { b } else { b.into_iter().map(|x| x & 0x7f).collect() };
            prop_assert_eq!(super::is_ascii(&b), b.is_ascii());
        }
    }
}
