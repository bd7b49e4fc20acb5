//! A minimal, zero-copy protobuf wire-format reader for the hot decoding path.

use super::dead_letter::DecodeError;

/// Protobuf wire types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WireType {
    Varint,
    Fixed64,
    Len,
    Fixed32,
}

/// Validates UTF-8. Almost all OTLP strings are short ASCII, which a word-wise check
/// settles far faster than a full validator; the rest goes to simdutf8, which validates
/// long values (URLs, user agents, SQL) several times faster than std with the same
/// result.
#[inline(always)]
pub(crate) fn utf8(b: &[u8]) -> Result<&str, ()> {
    if spanflow_operators::model::wire::is_ascii(b) {
        // SAFETY: ASCII bytes are valid UTF-8.
        return Ok(unsafe { std::str::from_utf8_unchecked(b) });
    }
    simdutf8::basic::from_utf8(b).map_err(drop)
}

/// `b` as a string field's value read at offset `at` of the record: the error
/// [`Reader::str`] gives when it is not UTF-8.
#[inline(always)]
pub(crate) fn checked_str(b: &[u8], at: usize) -> Result<&str, DecodeError> {
    utf8(b).map_err(|()| err("invalid UTF-8 in a string field", at))
}

/// Reads fields of one message from a byte slice.
#[derive(Clone, Copy)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Offset of `buf` within the whole record, for error messages.
    base: usize,
}

// Errors are built out of line so the hot paths stay small (no formatting code, fewer
// saved registers).
#[cold]
#[inline(never)]
fn err(msg: &str, at: usize) -> DecodeError {
    DecodeError::Protobuf(format!("{msg} at byte {at}"))
}

#[cold]
#[inline(never)]
fn wire_type_err(w: u64, at: usize) -> DecodeError {
    err(&format!("unsupported wire type {w}"), at)
}

#[cold]
#[inline(never)]
fn length_err(len: u64, at: usize) -> DecodeError {
    err(
        &format!("length {len} runs past the end of the message"),
        at,
    )
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8], base: usize) -> Self {
        Reader { buf, pos: 0, base }
    }

    /// The unread rest of the message.
    pub fn remaining(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }

    /// The next byte, if any, without consuming it.
    #[inline(always)]
    pub fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    /// Skips `n` bytes already inspected with [`peek`](Self::peek).
    #[inline(always)]
    pub fn advance(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.buf.len());
    }

    /// Absolute offset of the next byte.
    pub fn offset(&self) -> usize {
        self.base + self.pos
    }

    #[inline(always)]
    pub fn varint(&mut self) -> Result<u64, DecodeError> {
        // Tags, lengths and enums are almost always one byte.
        if let Some(&b) = self.buf.get(self.pos)
            && b < 0x80
        {
            self.pos += 1;
            return Ok(u64::from(b));
        }
        self.varint_two()
    }

    /// A varint of two bytes (the length of a span, a resource or an envelope: 128
    /// bytes to 16 KiB), else the general loop.
    #[inline]
    fn varint_two(&mut self) -> Result<u64, DecodeError> {
        if let Some(&[lo, hi]) = self
            .buf
            .get(self.pos..self.pos + 2)
            .and_then(|b| b.first_chunk())
            && hi < 0x80
        {
            self.pos += 2;
            return Ok(u64::from(lo & 0x7f) | u64::from(hi) << 7);
        }
        self.varint_slow()
    }

    #[inline(never)]
    fn varint_slow(&mut self) -> Result<u64, DecodeError> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(err("truncated varint", self.offset()));
            };
            self.pos += 1;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(err("varint longer than 10 bytes", self.offset()))
    }

    /// Next field header, or `None` at the end of the message.
    #[inline(always)]
    pub fn field(&mut self) -> Result<Option<(u32, WireType)>, DecodeError> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let at = self.pos;
        let key = self.varint()?;
        let wt = match key & 7 {
            0 => WireType::Varint,
            1 => WireType::Fixed64,
            2 => WireType::Len,
            5 => WireType::Fixed32,
            w => return Err(wire_type_err(w, self.base + at)),
        };
        let Ok(field) = u32::try_from(key >> 3) else {
            return Err(err("field number out of range", self.base + at));
        };
        if field == 0 {
            return Err(err("field number 0", self.base + at));
        }
        Ok(Some((field, wt)))
    }

    #[inline(always)]
    pub fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let at = self.pos;
        let len = self.varint()?;
        let Ok(n) = usize::try_from(len) else {
            return Err(err("length out of range", self.base + at));
        };
        let rest = &self.buf[self.pos..];
        if n > rest.len() {
            return Err(length_err(len, self.base + at));
        }
        let (s, _) = rest.split_at(n);
        self.pos += n;
        Ok(s)
    }

    /// A length-delimited field as a nested reader.
    #[inline]
    pub fn message(&mut self) -> Result<Reader<'a>, DecodeError> {
        let b = self.bytes()?;
        // The payload ends where the reader now stands.
        let start = self.offset() - b.len();
        Ok(Reader::new(b, start))
    }

    #[inline]
    pub fn str(&mut self) -> Result<&'a str, DecodeError> {
        let at = self.offset();
        let b = self.bytes()?;
        checked_str(b, at)
    }

    #[inline]
    pub fn fixed64(&mut self) -> Result<u64, DecodeError> {
        let end = self.pos + 8;
        let Some(b) = self.buf.get(self.pos..end) else {
            return Err(err("truncated fixed64", self.offset()));
        };
        self.pos = end;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    #[inline]
    pub fn fixed32(&mut self) -> Result<u32, DecodeError> {
        let end = self.pos + 4;
        let Some(b) = self.buf.get(self.pos..end) else {
            return Err(err("truncated fixed32", self.offset()));
        };
        self.pos = end;
        let mut a = [0u8; 4];
        a.copy_from_slice(b);
        Ok(u32::from_le_bytes(a))
    }

    /// Skips a field's value.
    #[inline]
    pub fn skip(&mut self, wt: WireType) -> Result<(), DecodeError> {
        match wt {
            WireType::Varint => self.varint().map(drop),
            WireType::Fixed64 => self.fixed64().map(drop),
            WireType::Fixed32 => self.fixed32().map(drop),
            WireType::Len => self.bytes().map(drop),
        }
    }

    /// Checks that a field has the wire type its schema says.
    #[inline]
    pub fn expect(&self, got: WireType, want: WireType, field: &str) -> Result<(), DecodeError> {
        if got == want {
            Ok(())
        } else {
            Err(err(
                &format!("field `{field}` has wire type {got:?}, expected {want:?}"),
                self.offset(),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Every varint, canonical or padded with continuation bytes, and every cut of
        /// one, reads as prost reads it.
        #[test]
        fn varints_read_as_prost_reads_them(v in prop_oneof![0u64..128, 128u64..16384, any::<u64>()], pad in 0usize..3, cut in 0usize..12) {
            let mut bytes = Vec::new();
            prost::encoding::encode_varint(v, &mut bytes);
            if pad > 0 && bytes.len() + pad <= 10 {
                // The same value with zero groups after it: "0x85 0x80 0x00" for 5.
                if let Some(last) = bytes.last_mut() {
                    *last |= 0x80;
                }
                bytes.extend(std::iter::repeat_n(0x80, pad - 1));
                bytes.push(0);
            }
            bytes.push(0x2a);
            let cut = cut.min(bytes.len());
            for input in [&bytes[..], &bytes[..cut]] {
                let mut r = Reader::new(input, 0);
                let mut reference = input;
                let want = prost::encoding::decode_varint(&mut reference);
                match (r.varint(), want) {
                    (Ok(got), Ok(want)) => {
                        prop_assert_eq!(got, want);
                        prop_assert_eq!(r.remaining(), reference);
                    }
                    (Err(_), Err(_)) => {}
                    (got, want) => prop_assert!(false, "{:?} against prost's {:?} for {:?}", got, want, input),
                }
            }
        }
    }
}
