//! The span tables' columns of what a span carries beyond its typed fields: status
//! message, trace state, flags, scope, events, links, dropped counts, and the span and
//! its envelope as OTLP (`otlp`, `otlp_resource`), from which the Kafka sink's OTLP
//! output and the Jaeger API rebuild the span exactly as it came in.
//!
//! Events and links are parallel lists, one item per event or link (the layout of a
//! ClickHouse `Nested` column, which every server version reads); their attributes are
//! a JSON object per item.

use std::sync::Arc;

use arrow::array::ArrayRef;
use arrow::datatypes::{DataType, Field, TimestampNanosecondType, UInt32Type};
use arrow::error::ArrowError;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use spanflow_operators::model::FastMap;
use spanflow_operators::{Attrs, Span};

use super::columns::{Bytes, Fixed, ListOffsets, Text, list, primitive};
use crate::formats::otlp_out::{self, SpanExtras};

/// The columns, in order (`ts` is the tables' timestamp type).
pub(crate) fn fields(ts: DataType) -> Vec<Field> {
    vec![
        Field::new("status_message", DataType::Utf8, false),
        Field::new("trace_state", DataType::Utf8, false),
        Field::new("flags", DataType::UInt32, false),
        Field::new("scope_name", DataType::Utf8, false),
        Field::new("scope_version", DataType::Utf8, false),
        Field::new("event_times", list(ts), false),
        Field::new("event_names", list(DataType::Utf8), false),
        Field::new("event_attributes", list(DataType::Utf8), false),
        Field::new("link_trace_ids", list(DataType::FixedSizeBinary(16)), false),
        Field::new("link_span_ids", list(DataType::FixedSizeBinary(8)), false),
        Field::new("link_trace_states", list(DataType::Utf8), false),
        Field::new("link_attributes", list(DataType::Utf8), false),
        Field::new("dropped_attributes_count", DataType::UInt32, false),
        Field::new("dropped_events_count", DataType::UInt32, false),
        Field::new("dropped_links_count", DataType::UInt32, false),
        Field::new("otlp", DataType::Binary, false),
        Field::new("otlp_resource", DataType::Binary, false),
    ]
}

/// A resource's rendered parts: its envelope and scope.
struct Rendered {
    envelope: Vec<u8>,
    scope_name: String,
    scope_version: String,
}

/// Buffers of the columns of [`fields`].
pub(crate) struct SpanDetail {
    status_message: Text,
    trace_state: Text,
    flags: Vec<u32>,
    scope_name: Text,
    scope_version: Text,
    /// One list per row of each event column.
    events: ListOffsets,
    event_times: Vec<i64>,
    event_names: Text,
    event_attributes: Text,
    /// One list per row of each link column.
    links: ListOffsets,
    link_trace_ids: Fixed<16>,
    link_span_ids: Fixed<8>,
    link_trace_states: Text,
    link_attributes: Text,
    dropped: [Vec<u32>; 3],
    otlp: Bytes,
    otlp_resource: Bytes,
    /// Resources rendered, by buffer address (spans of one resource share its buffer)
    /// and the service and instance (an envelope names them when the buffer does not,
    /// and every span without resource fields has the empty buffer). Kept from batch to
    /// batch; the map holds the buffer, so an address is not reused while it is a key.
    resources: FastMap<(usize, u32, u32), (Attrs, Rendered)>,
}

impl SpanDetail {
    /// Buffers for `rows` rows whose text and binary columns take `bytes` (in
    /// [`sizes`](Self::sizes) order; the caller leaves room above the last batch): a
    /// span's message is a few hundred bytes, and growing those buffers by doubling
    /// copied more than the rest of the row.
    pub fn with_capacity(rows: usize, bytes: [usize; 6]) -> Self {
        let [
            status_message,
            trace_state,
            scope_name,
            scope_version,
            otlp,
            otlp_resource,
        ] = bytes;
        SpanDetail {
            status_message: Text::with_capacity(rows, status_message),
            trace_state: Text::with_capacity(rows, trace_state),
            flags: Vec::with_capacity(rows),
            scope_name: Text::with_capacity(rows, scope_name),
            scope_version: Text::with_capacity(rows, scope_version),
            events: ListOffsets::with_capacity(rows),
            event_times: Vec::new(),
            event_names: Text::default(),
            event_attributes: Text::default(),
            links: ListOffsets::with_capacity(rows),
            link_trace_ids: Fixed::with_capacity(0),
            link_span_ids: Fixed::with_capacity(0),
            link_trace_states: Text::default(),
            link_attributes: Text::default(),
            dropped: std::array::from_fn(|_| Vec::with_capacity(rows)),
            otlp: Bytes::with_capacity(rows, otlp),
            otlp_resource: Bytes::with_capacity(rows, otlp_resource),
            resources: FastMap::default(),
        }
    }

    /// Bytes of the text and binary columns so far, in [`with_capacity`] order.
    ///
    /// [`with_capacity`]: Self::with_capacity
    pub fn sizes(&self) -> [usize; 6] {
        [
            self.status_message.byte_len(),
            self.trace_state.byte_len(),
            self.scope_name.byte_len(),
            self.scope_version.byte_len(),
            self.otlp.byte_len(),
            self.otlp_resource.byte_len(),
        ]
    }

    /// Takes over the resources `prev` rendered (a fleet's resources recur in every
    /// batch).
    pub fn keep_resources_of(&mut self, prev: &mut SpanDetail) {
        self.resources = std::mem::take(&mut prev.resources);
    }

    /// Appends one span's row; `x` are its extras (the attribute maps' walk of its
    /// packed fields saw them).
    pub fn push(&mut self, s: &Span, x: &SpanExtras) {
        self.status_message.push(&x.status_message);
        self.trace_state.push(&x.trace_state);
        self.flags.push(x.flags);
        for e in &x.events {
            self.event_times
                .push(i64::try_from(e.time_unix_nano).unwrap_or(i64::MAX));
            self.event_names.push(&e.name);
            self.event_attributes.push(&attributes_json(&e.attributes));
        }
        self.events.end_row(x.events.len());
        for l in &x.links {
            let mut id = [0u8; 16];
            if let Some(src) = l.trace_id.get(..16) {
                id.copy_from_slice(src);
            }
            self.link_trace_ids.push(&id);
            let mut id = [0u8; 8];
            if let Some(src) = l.span_id.get(..8) {
                id.copy_from_slice(src);
            }
            self.link_span_ids.push(&id);
            self.link_trace_states.push(&l.trace_state);
            self.link_attributes.push(&attributes_json(&l.attributes));
        }
        self.links.end_row(x.links.len());
        for (b, n) in self.dropped.iter_mut().zip(x.dropped) {
            b.push(n);
        }
        self.otlp
            .push_with(|out| otlp_out::encode_span_with(s, x, out));
        /// Resources remembered; a fleet has far fewer (several buffers each, one per
        /// decoding thread that read it).
        const RESOURCES: usize = 4096;
        let key = (
            s.resource_attrs.buffer_address(),
            s.service.id(),
            s.instance.id(),
        );
        if self.resources.len() >= RESOURCES && !self.resources.contains_key(&key) {
            self.resources.clear();
        }
        let (_, r) = self.resources.entry(key).or_insert_with(|| {
            let mut envelope = Vec::new();
            otlp_out::encode_envelope(s, &mut envelope);
            let (scope_name, scope_version) = otlp_out::scope(s);
            let rendered = Rendered {
                envelope,
                scope_name,
                scope_version,
            };
            (s.resource_attrs.clone(), rendered)
        });
        self.otlp_resource.push(&r.envelope);
        self.scope_name.push(&r.scope_name);
        self.scope_version.push(&r.scope_version);
    }

    /// The columns, in [`fields`] order.
    pub fn finish(self) -> Result<Vec<ArrayRef>, ArrowError> {
        let times: ArrayRef = Arc::new(
            primitive::<TimestampNanosecondType>(self.event_times).with_timezone("+00:00"),
        );
        let events = self.events.finish(vec![
            times,
            Arc::new(self.event_names.finish()?),
            Arc::new(self.event_attributes.finish()?),
        ])?;
        let links = self.links.finish(vec![
            Arc::new(self.link_trace_ids.finish()?),
            Arc::new(self.link_span_ids.finish()?),
            Arc::new(self.link_trace_states.finish()?),
            Arc::new(self.link_attributes.finish()?),
        ])?;
        let u32s = |v: Vec<u32>| -> ArrayRef { Arc::new(primitive::<UInt32Type>(v)) };
        let [d0, d1, d2] = self.dropped;
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(self.status_message.finish()?),
            Arc::new(self.trace_state.finish()?),
            u32s(self.flags),
            Arc::new(self.scope_name.finish()?),
            Arc::new(self.scope_version.finish()?),
        ];
        cols.extend(events.into_iter().map(|a| Arc::new(a) as ArrayRef));
        cols.extend(links.into_iter().map(|a| Arc::new(a) as ArrayRef));
        cols.extend([u32s(d0), u32s(d1), u32s(d2)]);
        cols.push(Arc::new(self.otlp.finish()?));
        cols.push(Arc::new(self.otlp_resource.finish()?));
        Ok(cols)
    }
}

/// An event's or link's attributes as a JSON object (values as the attribute columns
/// show them).
pub(crate) fn attributes_json(attrs: &[KeyValue]) -> String {
    let mut map = serde_json::Map::new();
    for kv in attrs {
        let mut text = String::new();
        crate::formats::attr_text(kv.value.as_ref(), &mut text);
        map.insert(kv.key.clone(), serde_json::Value::String(text));
    }
    serde_json::Value::Object(map).to_string()
}

#[cfg(test)]
mod tests {
    use arrow::array::{Array, BinaryArray};
    use opentelemetry_proto::tonic::trace::v1::ResourceSpans;
    use prost::Message;
    use spanflow_operators::{AttrValue, AttrsBuilder, SpanId, Sym, TraceId};

    use super::*;
    use crate::tables::{SpanRows, TableRows};

    fn span(service: &str, resource: &Attrs) -> Span {
        Span {
            trace_id: TraceId([1; 16]),
            span_id: SpanId([2; 8]),
            start_ns: 10,
            end_ns: 30,
            service: Sym::new(service),
            resource_attrs: resource.clone(),
            ..Default::default()
        }
    }

    /// The service names in a batch's `otlp_resource` column, row by row.
    fn services(rows: &mut SpanRows) -> Vec<String> {
        let b = rows.finish();
        let col = b.column_by_name("otlp_resource").unwrap();
        let col = col.as_any().downcast_ref::<BinaryArray>().unwrap();
        (0..col.len())
            .map(|i| {
                let rs = ResourceSpans::decode(col.value(i)).unwrap();
                let attrs = rs.resource.unwrap().attributes;
                let kv = attrs.iter().find(|kv| kv.key == "service.name").unwrap();
                format!("{:?}", kv.value.as_ref().unwrap().value.as_ref().unwrap())
            })
            .collect()
    }

    #[test]
    fn envelopes_name_each_spans_service_across_batches() {
        let mut shared = AttrsBuilder::default();
        shared.push("host.name", AttrValue::Str("node-1"), true);
        let shared = shared.finish();
        let none = Attrs::empty();
        let mut rows = SpanRows::spans();
        for service in ["a", "b", "a"] {
            rows.push(&span(service, &none));
        }
        rows.push(&span("c", &shared));
        let first = services(&mut rows);
        assert_eq!(first.len(), 4);
        assert!(first[0].contains("\"a\"") && first[2].contains("\"a\""));
        assert!(first[1].contains("\"b\""), "{first:?}");
        assert!(first[3].contains("\"c\""), "{first:?}");
        // The next batch takes the rendered envelopes over; they still match.
        rows.push(&span("b", &none));
        rows.push(&span("c", &shared));
        let second = services(&mut rows);
        assert!(second[0].contains("\"b\"") && second[1].contains("\"c\""));
    }
}
