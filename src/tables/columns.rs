//! Column buffers for the span tables, built from plain vectors.
//!
//! A kept span is one row of about forty columns. Arrow's builders check and grow
//! each value on its own (an `append_value` cost ~60 instructions before any copy, and
//! a list column's `append` ~30), which made the builders the largest part of writing a
//! span row. These hold a column's values in vectors sized from the last batch and hand
//! them to Arrow as they are. Arrow's builders stay the reference the table tests
//! compare with.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryArray, BooleanArray, FixedSizeBinaryArray, ListArray, PrimitiveArray,
    StringArray,
};
use arrow::buffer::{Buffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{ArrowPrimitiveType, DataType, Field};
use arrow::error::ArrowError;

/// Values of one variable-length column (`Utf8` or `Binary`): bytes and end offsets.
struct Var {
    bytes: Vec<u8>,
    /// Starts with 0; one more than the number of values.
    offsets: Vec<i32>,
    /// A byte offset did not fit an `i32`: the column cannot be built.
    overflow: bool,
}

impl Default for Var {
    fn default() -> Self {
        Var::with_capacity(0, 0)
    }
}

impl Var {
    fn with_capacity(items: usize, bytes: usize) -> Self {
        let mut offsets = Vec::with_capacity(items + 1);
        offsets.push(0);
        Var {
            bytes: Vec::with_capacity(bytes),
            offsets,
            overflow: false,
        }
    }

    /// Ends a value at byte `end`.
    #[inline]
    fn push_offset(&mut self, end: usize) {
        match i32::try_from(end) {
            Ok(o) => self.offsets.push(o),
            Err(_) => {
                self.overflow = true;
                self.offsets.push(i32::MAX);
            }
        }
    }

    /// Ends the value written to `bytes` since the last end.
    #[inline]
    fn end(&mut self) {
        self.push_offset(self.bytes.len());
    }

    /// Appends values rendered elsewhere: `bytes` holds them back to back, `ends` the end
    /// of each in `bytes`.
    fn extend(&mut self, bytes: &[u8], ends: &[usize]) {
        let base = self.bytes.len();
        self.bytes.extend_from_slice(bytes);
        for &e in ends {
            self.push_offset(base + e);
        }
    }

    fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    /// The offsets and bytes, checked.
    fn parts(self) -> Result<(OffsetBuffer<i32>, Buffer), ArrowError> {
        if self.overflow {
            return Err(ArrowError::InvalidArgumentError(
                "a column's text exceeds the 2 GiB of an Arrow string column".into(),
            ));
        }
        if self
            .offsets
            .last()
            .is_some_and(|&end| end as usize != self.bytes.len())
        {
            return Err(ArrowError::InvalidArgumentError(
                "a column's offsets do not match its bytes".into(),
            ));
        }
        // SAFETY: `offsets` starts with 0 (`with_capacity`) and every other entry is the
        // length of `bytes` after an append (`end`, `extend`), which never shrinks, so
        // they are non-negative and ascending; the overflow case returned above.
        // `OffsetBuffer::new` checked that again for every entry, ~7% of building the
        // span rows.
        let offsets = unsafe { OffsetBuffer::new_unchecked(ScalarBuffer::from(self.offsets)) };
        Ok((offsets, Buffer::from_vec(self.bytes)))
    }
}

/// A `Utf8` column.
#[derive(Default)]
pub(crate) struct Text(Var);

impl Text {
    /// Room for `items` strings of `bytes` in all.
    pub fn with_capacity(items: usize, bytes: usize) -> Self {
        Text(Var::with_capacity(items, bytes))
    }

    /// Appends a string.
    #[inline]
    pub fn push(&mut self, s: &str) {
        self.0.bytes.extend_from_slice(s.as_bytes());
        self.0.end();
    }

    /// Appends a string that `write` appends to the buffer it is given.
    #[inline]
    pub fn push_with(&mut self, write: impl FnOnce(&mut TextBuf<'_>)) {
        write(&mut TextBuf(&mut self.0.bytes));
        self.0.end();
    }

    /// Appends the strings of a block (see [`TextBlock`]).
    pub fn extend(&mut self, b: &TextBlock) {
        self.0.extend(&b.bytes, &b.ends);
    }

    /// Strings so far.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Bytes so far.
    pub fn byte_len(&self) -> usize {
        self.0.bytes.len()
    }

    /// The column.
    pub fn finish(self) -> Result<StringArray, ArrowError> {
        let (offsets, bytes) = self.0.parts()?;
        // SAFETY: the bytes are a concatenation of `&str`s (`push`, `extend` of blocks
        // built the same way, `TextBuf` writes of `&str`s and ASCII) and the offsets
        // hold 0 and the end of each one, so every slice is valid UTF-8. Re-validating
        // cost more than building the column.
        Ok(unsafe { StringArray::new_unchecked(offsets, bytes, None) })
    }
}

/// The end of a [`Text`] column's bytes, which takes only text.
pub(crate) struct TextBuf<'a>(&'a mut Vec<u8>);

impl TextBuf<'_> {
    /// Appends `s`.
    #[inline]
    pub fn push_str(&mut self, s: &str) {
        self.0.extend_from_slice(s.as_bytes());
    }

    /// Appends the decimal text of `i`, the same as `Display` (ints are the common
    /// non-string values: status codes, ports, sizes).
    pub fn push_int(&mut self, i: i64) {
        let mut buf = [0u8; 20];
        let mut n = i.unsigned_abs();
        let mut at = buf.len();
        loop {
            at -= 1;
            buf[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        if i < 0 {
            self.0.push(b'-');
        }
        // Digits and a sign only: ASCII, so the column stays valid UTF-8.
        self.0.extend_from_slice(&buf[at..]);
    }
}

impl std::fmt::Write for TextBuf<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.push_str(s);
        Ok(())
    }
}

/// Strings rendered once and appended many times (a resource's attributes).
#[derive(Default)]
pub(crate) struct TextBlock {
    bytes: Vec<u8>,
    /// End of each string in `bytes`.
    ends: Vec<usize>,
}

impl TextBlock {
    /// Appends a string that `write` writes.
    pub fn push_with(&mut self, write: impl FnOnce(&mut TextBuf<'_>)) {
        write(&mut TextBuf(&mut self.bytes));
        self.ends.push(self.bytes.len());
    }
}

/// A `Binary` column.
#[derive(Default)]
pub(crate) struct Bytes(Var);

impl Bytes {
    /// Room for `items` values of `bytes` in all.
    pub fn with_capacity(items: usize, bytes: usize) -> Self {
        Bytes(Var::with_capacity(items, bytes))
    }

    /// Appends a value.
    #[inline]
    pub fn push(&mut self, b: &[u8]) {
        self.0.bytes.extend_from_slice(b);
        self.0.end();
    }

    /// Appends the value `write` appends to the column's bytes (written in place, not
    /// copied from a scratch buffer). `write` must only append.
    #[inline]
    pub fn push_with(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        let at = self.0.bytes.len();
        write(&mut self.0.bytes);
        debug_assert!(self.0.bytes.len() >= at, "a value's writer only appends");
        self.0.end();
    }

    /// Bytes so far.
    pub fn byte_len(&self) -> usize {
        self.0.bytes.len()
    }

    /// The column.
    pub fn finish(self) -> Result<BinaryArray, ArrowError> {
        let (offsets, bytes) = self.0.parts()?;
        BinaryArray::try_new(offsets, bytes, None)
    }
}

/// A `FixedSizeBinary(N)` column (ids), nullable or not.
pub(crate) struct Fixed<const N: usize> {
    bytes: Vec<u8>,
    /// Validity, when the column has had a null.
    valid: Option<arrow::array::BooleanBufferBuilder>,
}

impl<const N: usize> Fixed<N> {
    /// Room for `items` values.
    pub fn with_capacity(items: usize) -> Self {
        Fixed {
            bytes: Vec::with_capacity(items * N),
            valid: None,
        }
    }

    /// Appends a value.
    #[inline(always)]
    pub fn push(&mut self, v: &[u8; N]) {
        self.bytes.extend_from_slice(v);
        if let Some(b) = &mut self.valid {
            b.append(true);
        }
    }

    /// Appends a null (zeros, as Arrow's builder writes them).
    pub fn push_null(&mut self) {
        let (len, capacity) = (self.bytes.len() / N, self.bytes.capacity() / N);
        self.valid
            .get_or_insert_with(|| {
                let mut b = arrow::array::BooleanBufferBuilder::new(capacity);
                b.append_n(len, true);
                b
            })
            .append(false);
        self.bytes.extend_from_slice(&[0; N]);
    }

    /// The column.
    pub fn finish(self) -> Result<FixedSizeBinaryArray, ArrowError> {
        let nulls = self.valid.map(|mut b| NullBuffer::new(b.finish()));
        FixedSizeBinaryArray::try_new(N as i32, Buffer::from_vec(self.bytes), nulls)
    }
}

/// A primitive column without nulls.
pub(crate) fn primitive<T: ArrowPrimitiveType>(values: Vec<T::Native>) -> PrimitiveArray<T> {
    PrimitiveArray::new(ScalarBuffer::from(values), None)
}

/// A `Boolean` column without nulls.
pub(crate) fn booleans(mut values: arrow::array::BooleanBufferBuilder) -> BooleanArray {
    BooleanArray::new(values.finish(), None)
}

/// Offsets of list columns that share them (events' times, names and attributes have
/// one list per row each, of the same length).
pub(crate) struct ListOffsets {
    offsets: Vec<i32>,
    items: usize,
}

impl ListOffsets {
    /// Room for `rows` lists.
    pub fn with_capacity(rows: usize) -> Self {
        let mut offsets = Vec::with_capacity(rows + 1);
        offsets.push(0);
        ListOffsets { offsets, items: 0 }
    }

    /// Ends a row's list after `items` more items.
    #[inline]
    pub fn end_row(&mut self, items: usize) {
        self.items += items;
        // The item columns' own offsets (i32) are checked; a list of more than 2^31
        // items cannot get here.
        self.offsets
            .push(i32::try_from(self.items).unwrap_or(i32::MAX));
    }

    /// A list column per item column, sharing these offsets; `items` must hold
    /// [`end_row`](Self::end_row)'s total.
    pub fn finish(self, items: Vec<ArrayRef>) -> Result<Vec<ListArray>, ArrowError> {
        if i32::try_from(self.items).is_err() {
            return Err(ArrowError::InvalidArgumentError(
                "a list column exceeds 2^31 items".into(),
            ));
        }
        let offsets = OffsetBuffer::new(ScalarBuffer::from(self.offsets));
        items
            .into_iter()
            .map(|values| {
                let field = Arc::new(Field::new_list_field(values.data_type().clone(), true));
                ListArray::try_new(field, offsets.clone(), values, None)
            })
            .collect()
    }
}

/// The data type of a list column of `item` (as [`ListOffsets::finish`] makes it).
pub(crate) fn list(item: DataType) -> DataType {
    DataType::List(Arc::new(Field::new_list_field(item, true)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ints_render_like_display() {
        for i in [0, 7, -7, 10, 200, -1000, i64::MAX, i64::MIN] {
            let mut t = Text::default();
            t.push_with(|b| b.push_int(i));
            let a = t.finish().unwrap();
            assert_eq!(a.value(0), i.to_string());
        }
    }
}
