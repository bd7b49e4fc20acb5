//! The `attributes` / `resource_attributes` columns (`Map<Utf8, Utf8>`) of the span
//! tables, built from plain vectors.
//!
//! Building the span rows of kept traces was the largest cost of a shard after the
//! operators themselves: two Arrow `StringBuilder` appends per attribute, a re-parse of
//! the packed buffer for every span, and the resource's attributes (about half of every
//! row) rendered again for each of its spans. Here an entry is two vector appends, and a
//! resource's entries are rendered once and copied as a block.

use std::sync::Arc;

use arrow::array::{ArrayRef, MapArray, StructArray};
use arrow::buffer::{OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{DataType, Field, Fields};
use arrow::error::ArrowError;
use spanflow_operators::classify::is_lifted;
use spanflow_operators::model::{Entry, FastMap};

use super::columns::{Text, TextBlock, TextBuf};
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

/// Appends the text of a value as `Display` writes it.
fn render(value: AttrValue<'_>, out: &mut TextBuf<'_>) {
    use std::fmt::Write;
    match value {
        AttrValue::Str(t) => out.push_str(t),
        AttrValue::Any(b) => {
            if let Some(j) = spanflow_operators::model::wire::any_value_json(b) {
                // Writing into a Vec cannot fail.
                let _ = write!(out, "{j}");
            }
        }
        AttrValue::Bool(b) => out.push_str(if b { "true" } else { "false" }),
        AttrValue::Int(i) => out.push_int(i),
        AttrValue::Double(d) => {
            // Writing into a Vec cannot fail.
            let _ = write!(out, "{d}");
        }
    }
}

/// The map entries one packed buffer contributes to each of the two columns: entries
/// flagged as resource attributes go to `resource_attributes`, the others to
/// `attributes`.
#[derive(Default)]
struct Block {
    keys: [TextBlock; 2],
    values: [TextBlock; 2],
}

impl Block {
    fn render(attrs: &Attrs) -> Self {
        let mut b = Block::default();
        for (k, v, resource) in attrs.iter() {
            if resource && SHOWN_RESOURCE.contains(&k) && matches!(v, AttrValue::Str(_)) {
                continue;
            }
            let m = usize::from(resource);
            b.keys[m].push_with(|t| t.push_str(k));
            b.values[m].push_with(|t| render(v, t));
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
            key_bytes: self.keys.byte_len(),
            value_bytes: self.values.byte_len(),
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
    #[cfg(test)]
    pub fn push(&mut self, attrs: &Attrs, resource: &Attrs) {
        self.push_seeing(attrs, resource, |_| {});
    }

    /// [`push`](Self::push), showing `seen` every entry of `attrs` (its other fields
    /// too): the span-detail columns need them, and one walk of the packed buffer serves
    /// both.
    #[inline]
    pub fn push_seeing(
        &mut self,
        attrs: &Attrs,
        resource: &Attrs,
        mut seen: impl FnMut(Entry<'_>),
    ) {
        for e in attrs.entries() {
            seen(e);
            if let Entry::Attr(k, Some(v), is_resource) = e
                && !is_lifted(k, v)
            {
                let m = &mut self.maps[usize::from(is_resource)];
                m.keys.push(k);
                // Most values are strings: no call for those.
                match v {
                    AttrValue::Str(t) => m.values.push(t),
                    v => m.values.push_with(|t| render(v, t)),
                }
            }
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
}
