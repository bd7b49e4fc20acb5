//! The `attributes` / `resource_attributes` columns (`Map<Utf8, Utf8>`) of the span
//! tables, built from plain vectors.
//!
//! Building the span rows of kept traces was the largest cost of a shard after the
//! operators themselves: two Arrow `StringBuilder` appends per attribute, a re-parse of
//! the packed buffer for every span, and the resource's attributes (about half of every
//! row) rendered again for each of its spans. Here an entry is two vector appends, and a
//! resource's entries are rendered once and copied as a block.

use std::sync::Arc;

use arrow::array::{ArrayRef, MapArray, StringArray, StructArray};
use arrow::buffer::{Buffer, OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{DataType, Field, Fields};
use arrow::error::ArrowError;
use spanflow_operators::classify::is_lifted;
use spanflow_operators::model::FastMap;
use spanflow_operators::{AttrValue, Attrs, AttrsMap};

/// The `entries` struct fields, as `MapBuilder` names them.
fn entry_fields() -> Fields {
    vec![
        Field::new("keys", DataType::Utf8, false),
        Field::new("values", DataType::Utf8, true),
    ]
    .into()
}

/// The column's data type; the same as `MapBuilder` with these field names produces.
pub(crate) fn map_type() -> DataType {
    DataType::Map(
        Arc::new(Field::new(
            "entries",
            DataType::Struct(entry_fields()),
            false,
        )),
        false,
    )
}

/// Appends the text of a non-string value as `Display` writes it.
fn render(value: AttrValue<'_>, out: &mut Vec<u8>) {
    match value {
        AttrValue::Str(t) => out.extend_from_slice(t.as_bytes()),
        AttrValue::Any(b) => {
            if let Some(j) = spanflow_operators::model::wire::any_value_json(b) {
                use std::io::Write;
                // Writing into a Vec cannot fail.
                let _ = write!(out, "{j}");
            }
        }
        AttrValue::Bool(b) => out.extend_from_slice(if b { b"true" } else { b"false" }),
        AttrValue::Int(i) => push_int(i, out),
        AttrValue::Double(d) => {
            use std::io::Write;
            // Writing into a Vec cannot fail.
            let _ = write!(out, "{d}");
        }
    }
}

/// Decimal text of `i`, the same as `Display` (ints are the common non-string values:
/// status codes, ports, sizes).
fn push_int(i: i64, out: &mut Vec<u8>) {
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
        out.push(b'-');
    }
    out.extend_from_slice(&buf[at..]);
}

/// Strings of one Arrow `Utf8` column: bytes and end offsets.
#[derive(Default)]
struct Text {
    bytes: Vec<u8>,
    /// Starts with 0; one more than the number of strings.
    offsets: Vec<i32>,
    /// A byte offset did not fit an `i32`: the column cannot be built.
    overflow: bool,
}

impl Text {
    fn with_capacity(items: usize, bytes: usize) -> Self {
        let mut offsets = Vec::with_capacity(items + 1);
        offsets.push(0);
        Text {
            bytes: Vec::with_capacity(bytes),
            offsets,
            overflow: false,
        }
    }

    #[inline]
    fn end(&mut self) {
        match i32::try_from(self.bytes.len()) {
            Ok(o) => self.offsets.push(o),
            Err(_) => {
                self.overflow = true;
                self.offsets.push(i32::MAX);
            }
        }
    }

    #[inline]
    fn push(&mut self, s: &str) {
        self.bytes.extend_from_slice(s.as_bytes());
        self.end();
    }

    #[inline]
    fn push_value(&mut self, v: AttrValue<'_>) {
        render(v, &mut self.bytes);
        self.end();
    }

    /// Appends every string of a block.
    fn extend(&mut self, b: &BlockText) {
        let base = self.bytes.len();
        self.bytes.extend_from_slice(&b.bytes);
        for &e in &b.ends {
            match i32::try_from(base + e) {
                Ok(o) => self.offsets.push(o),
                Err(_) => {
                    self.overflow = true;
                    self.offsets.push(i32::MAX);
                }
            }
        }
    }

    fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    fn finish(self) -> Result<StringArray, ArrowError> {
        if self.overflow {
            return Err(ArrowError::InvalidArgumentError(
                "attribute text exceeds the 2 GiB of an Arrow string column".into(),
            ));
        }
        if self
            .offsets
            .last()
            .is_some_and(|&end| end as usize != self.bytes.len())
        {
            return Err(ArrowError::InvalidArgumentError(
                "attribute text offsets do not match its bytes".into(),
            ));
        }
        // SAFETY: `offsets` starts with 0 (`with_capacity`) and every other entry is the
        // length of `bytes` after an append (`end`, `extend`), which never shrinks, so
        // they are non-negative and ascending; the overflow case returned above.
        // `OffsetBuffer::new` checked that again for every entry, ~7% of building the
        // span rows.
        let offsets = unsafe { OffsetBuffer::new_unchecked(ScalarBuffer::from(self.offsets)) };
        // SAFETY: `bytes` is a concatenation of `&str`s (`push`, `extend` of blocks
        // built the same way, `render` of numbers as ASCII) and `offsets` holds 0 and the
        // end of each one, so it is monotonic, within `bytes`, and every slice is valid
        // UTF-8. Re-validating cost more than building the column.
        Ok(unsafe { StringArray::new_unchecked(offsets, Buffer::from_vec(self.bytes), None) })
    }
}

/// Strings rendered once and appended many times.
#[derive(Default)]
struct BlockText {
    bytes: Vec<u8>,
    /// End of each string in `bytes`.
    ends: Vec<usize>,
}

/// The map entries one packed buffer contributes to each of the two columns: entries
/// flagged as resource attributes go to `resource_attributes`, the others to
/// `attributes`.
#[derive(Default)]
struct Block {
    keys: [BlockText; 2],
    values: [BlockText; 2],
}

impl Block {
    fn render(attrs: &Attrs) -> Self {
        let mut b = Block::default();
        for (k, v, resource) in attrs.iter() {
            if resource && SHOWN_RESOURCE.contains(&k) && matches!(v, AttrValue::Str(_)) {
                continue;
            }
            let m = usize::from(resource);
            b.keys[m].bytes.extend_from_slice(k.as_bytes());
            b.keys[m].ends.push(b.keys[m].bytes.len());
            render(v, &mut b.values[m].bytes);
            b.values[m].ends.push(b.values[m].bytes.len());
        }
        b
    }
}

/// Resource attributes the `service` and `instance` columns show.
const SHOWN_RESOURCE: &[&str] = &["service.name", "service.instance.id"];

/// Resources rendered so far, by content: each decoding thread shares one buffer per
/// resource among the spans it read, so a resource can arrive in several buffers, but a
/// fleet has few distinct resources. Kept from batch to batch; cleared when it grows
/// past this.
const RESOURCE_CACHE: usize = 4096;

/// One `Map<Utf8, Utf8>` column.
struct MapColumn {
    /// Entry offsets per row; starts with 0.
    rows: Vec<i32>,
    keys: Text,
    values: Text,
}

impl MapColumn {
    fn with_capacity(s: &MapSizes) -> Self {
        // Batches are cut after whole traces, so the next one is rarely exactly the size
        // of the last: leave room for an eighth more rather than grow (and copy) the
        // vectors near the end of nearly every batch.
        let more = |n: usize| n + n / 8 + 16;
        let mut rows = Vec::with_capacity(more(s.rows) + 1);
        rows.push(0);
        MapColumn {
            rows,
            keys: Text::with_capacity(more(s.entries), more(s.key_bytes)),
            values: Text::with_capacity(more(s.entries), more(s.value_bytes)),
        }
    }

    #[inline]
    fn end_row(&mut self) {
        // Entries are bounded by the byte offsets, which are checked.
        self.rows
            .push(i32::try_from(self.keys.len()).unwrap_or(i32::MAX));
    }

    fn sizes(&self) -> MapSizes {
        MapSizes {
            rows: self.rows.len() - 1,
            entries: self.keys.len(),
            key_bytes: self.keys.bytes.len(),
            value_bytes: self.values.bytes.len(),
        }
    }

    fn finish(self) -> Result<MapArray, ArrowError> {
        let keys = self.keys.finish()?;
        let values = self.values.finish()?;
        let cols: Vec<ArrayRef> = vec![Arc::new(keys), Arc::new(values)];
        let entries = StructArray::try_new(entry_fields(), cols, None)?;
        let field = Arc::new(Field::new(
            "entries",
            DataType::Struct(entry_fields()),
            false,
        ));
        let offsets = OffsetBuffer::new(ScalarBuffer::from(self.rows));
        MapArray::try_new(field, offsets, entries, None, false)
    }
}

/// How much a batch held, to size the next one like it.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct MapSizes {
    rows: usize,
    entries: usize,
    key_bytes: usize,
    value_bytes: usize,
}

/// The `attributes` and `resource_attributes` columns of a span table.
pub(crate) struct AttrMaps {
    /// `[attributes, resource_attributes]`.
    maps: [MapColumn; 2],
    /// Rendered resources and where each is in `blocks`, by content.
    cache: AttrsMap<usize>,
    blocks: Vec<Block>,
    /// The buffers rendered (kept alive so their addresses stay unique) and their
    /// blocks, by buffer address: each decoding thread shares one buffer per resource
    /// among all the spans it reads (see `formats::convert`), so looking a resource up
    /// by its address saves hashing its bytes, which another thread wrote long ago. (A
    /// ring of the last 32 buffers missed on more than half of the spans.)
    by_buffer: FastMap<usize, (Attrs, usize)>,
}

impl AttrMaps {
    /// Columns pre-sized like a previous batch (`[attributes, resource_attributes]`).
    pub fn with_capacity(sizes: [MapSizes; 2]) -> Self {
        AttrMaps {
            maps: [
                MapColumn::with_capacity(&sizes[0]),
                MapColumn::with_capacity(&sizes[1]),
            ],
            cache: AttrsMap::default(),
            blocks: Vec::new(),
            by_buffer: FastMap::default(),
        }
    }

    /// Appends one span's row: its own attributes, then its resource's, each to the
    /// column its resource flag selects, in buffer order. Attributes the span's other
    /// columns show (see [`is_lifted`] and [`SHOWN_RESOURCE`]) are left out.
    pub fn push(&mut self, attrs: &Attrs, resource: &Attrs) {
        for (k, v, is_resource) in attrs.iter() {
            if is_lifted(k, v) {
                continue;
            }
            let m = &mut self.maps[usize::from(is_resource)];
            m.keys.push(k);
            m.values.push_value(v);
        }
        if !resource.is_empty() {
            let at = self.render_resource(resource);
            if let Some(block) = self.blocks.get(at) {
                for (m, i) in self.maps.iter_mut().zip(0..) {
                    m.keys.extend(&block.keys[i]);
                    m.values.extend(&block.values[i]);
                }
            }
        }
        for m in &mut self.maps {
            m.end_row();
        }
    }

    /// The block of `resource`, rendered if it is new.
    fn render_resource(&mut self, resource: &Attrs) -> usize {
        let address = resource.buffer_address();
        if let Some((_, at)) = self.by_buffer.get(&address) {
            return *at;
        }
        let at = match self.cache.get(resource) {
            Some(&at) => at,
            None => {
                if self.blocks.len() >= RESOURCE_CACHE {
                    self.cache.clear();
                    self.blocks.clear();
                    self.by_buffer.clear();
                }
                self.blocks.push(Block::render(resource));
                self.cache.insert(resource.clone(), self.blocks.len() - 1);
                self.blocks.len() - 1
            }
        };
        // Several buffers per resource (one per decoding thread that read it).
        if self.by_buffer.len() >= 4 * RESOURCE_CACHE {
            self.by_buffer.clear();
        }
        self.by_buffer.insert(address, (resource.clone(), at));
        at
    }

    /// Takes over the resources `prev` rendered, so that a new batch does not render
    /// and hash them again (a fleet's resources recur in every batch).
    pub fn keep_resources_of(&mut self, prev: &mut AttrMaps) {
        self.cache = std::mem::take(&mut prev.cache);
        self.blocks = std::mem::take(&mut prev.blocks);
        self.by_buffer = std::mem::take(&mut prev.by_buffer);
    }

    /// Sizes of what is buffered.
    pub fn sizes(&self) -> [MapSizes; 2] {
        [self.maps[0].sizes(), self.maps[1].sizes()]
    }

    /// Builds `[attributes, resource_attributes]`.
    pub fn finish(self) -> Result<[MapArray; 2], ArrowError> {
        let [a, r] = self.maps;
        Ok([a.finish()?, r.finish()?])
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Array, MapBuilder, MapFieldNames, StringBuilder};
    use proptest::prelude::*;
    use spanflow_operators::AttrsBuilder;

    use super::*;

    /// What the columns were built with before: Arrow's `MapBuilder` and `Display`.
    fn reference(rows: &[(Attrs, Attrs)]) -> [MapArray; 2] {
        let names = || MapFieldNames {
            entry: "entries".into(),
            key: "keys".into(),
            value: "values".into(),
        };
        let mut maps = [
            MapBuilder::new(Some(names()), StringBuilder::new(), StringBuilder::new()),
            MapBuilder::new(Some(names()), StringBuilder::new(), StringBuilder::new()),
        ];
        for (a, r) in rows {
            for (k, v, res) in a.iter().chain(r.iter()) {
                let m = &mut maps[usize::from(res)];
                m.keys().append_value(k);
                m.values().append_value(v.to_string());
            }
            for m in &mut maps {
                m.append(true).unwrap();
            }
        }
        let [mut a, mut r] = maps;
        [a.finish(), r.finish()]
    }

    /// Text, a type selector, an int and a double: enough to build any value.
    type RawValue = (String, u8, i64, f64);

    fn arb_value() -> impl Strategy<Value = RawValue> {
        ("\\PC{0,6}", 0u8..5, any::<i64>(), any::<f64>())
    }

    fn pack(entries: &[(String, RawValue, bool)]) -> Attrs {
        let mut b = AttrsBuilder::default();
        for (k, (s, tag, i, d), res) in entries {
            // `AnyValue { bytes_value: s }`
            let bytes = [&[0x3a, s.len() as u8][..], s.as_bytes()].concat();
            let v = match tag {
                0 => AttrValue::Str(s),
                1 => AttrValue::Any(&bytes),
                2 => AttrValue::Bool(*i % 2 == 0),
                3 => AttrValue::Int(*i),
                _ => AttrValue::Double(*d),
            };
            b.push(k, v, *res);
        }
        b.finish()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Same arrays as `MapBuilder` for any mix of flagged entries, shared resource
        /// buffers (cache hits) and fresh ones (evictions).
        #[test]
        fn matches_map_builder(
            resources in prop::collection::vec(
                prop::collection::vec(("[a-z.]{1,8}", arb_value(), any::<bool>()), 0..5),
                1..12,
            ),
            rows in prop::collection::vec(
                (prop::collection::vec(("[a-z.]{1,8}", arb_value(), any::<bool>()), 0..5),
                 any::<prop::sample::Index>()),
                0..40,
            ),
        ) {
            let resources: Vec<Attrs> = resources.iter().map(|r| pack(r)).collect();
            let rows: Vec<(Attrs, Attrs)> = rows
                .iter()
                .map(|(a, i)| (pack(a), resources[i.index(resources.len())].clone()))
                .collect();
            let mut maps = AttrMaps::with_capacity([MapSizes::default(); 2]);
            for (a, r) in &rows {
                maps.push(a, r);
            }
            let got = maps.finish().unwrap();
            let want = reference(&rows);
            for (g, w) in got.iter().zip(&want) {
                prop_assert_eq!(g.data_type(), w.data_type());
                prop_assert_eq!(g.to_data(), w.to_data());
            }
        }
    }

    #[test]
    fn ints_render_like_display() {
        for i in [0, 7, -7, 10, 200, -1000, i64::MAX, i64::MIN] {
            let mut out = Vec::new();
            push_int(i, &mut out);
            assert_eq!(String::from_utf8(out).unwrap(), i.to_string());
        }
    }
}
