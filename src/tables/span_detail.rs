//! The span tables' columns of what a span carries beyond its typed fields: status
//! message, trace state, flags, scope, events, links, dropped counts, and the span and
//! its envelope as OTLP (`otlp`, `otlp_resource`), from which the Kafka sink's OTLP
//! output and the Jaeger API rebuild the span exactly as it came in.
//!
//! Events and links are parallel lists, one item per event or link (the layout of a
//! ClickHouse `Nested` column, which every server version reads); their attributes are
//! a JSON object per item.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, FixedSizeBinaryBuilder, ListBuilder, StringBuilder,
    TimestampNanosecondBuilder, UInt32Builder,
};
use arrow::datatypes::{DataType, Field};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use spanflow_operators::Span;
use spanflow_operators::model::FastMap;

use crate::formats::otlp_out::{self, SpanExtras};

fn list(item: DataType) -> DataType {
    DataType::List(Arc::new(Field::new_list_field(item, true)))
}

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

/// Builders of the columns of [`fields`].
pub(crate) struct SpanDetail {
    status_message: StringBuilder,
    trace_state: StringBuilder,
    flags: UInt32Builder,
    scope_name: StringBuilder,
    scope_version: StringBuilder,
    event_times: ListBuilder<TimestampNanosecondBuilder>,
    event_names: ListBuilder<StringBuilder>,
    event_attributes: ListBuilder<StringBuilder>,
    link_trace_ids: ListBuilder<FixedSizeBinaryBuilder>,
    link_span_ids: ListBuilder<FixedSizeBinaryBuilder>,
    link_trace_states: ListBuilder<StringBuilder>,
    link_attributes: ListBuilder<StringBuilder>,
    dropped: [UInt32Builder; 3],
    otlp: BinaryBuilder,
    otlp_resource: BinaryBuilder,
    /// Resources rendered in this batch, by buffer address (spans of one resource
    /// share its buffer; the buffers outlive the batch's rows).
    resources: FastMap<usize, Rendered>,
    scratch: Vec<u8>,
}

impl SpanDetail {
    pub fn with_capacity(rows: usize) -> Self {
        SpanDetail {
            status_message: StringBuilder::with_capacity(rows, 0),
            trace_state: StringBuilder::with_capacity(rows, 0),
            flags: UInt32Builder::with_capacity(rows),
            scope_name: StringBuilder::with_capacity(rows, rows * 8),
            scope_version: StringBuilder::with_capacity(rows, rows * 4),
            event_times: ListBuilder::new(
                TimestampNanosecondBuilder::new().with_timezone("+00:00"),
            ),
            event_names: ListBuilder::new(StringBuilder::new()),
            event_attributes: ListBuilder::new(StringBuilder::new()),
            link_trace_ids: ListBuilder::new(FixedSizeBinaryBuilder::new(16)),
            link_span_ids: ListBuilder::new(FixedSizeBinaryBuilder::new(8)),
            link_trace_states: ListBuilder::new(StringBuilder::new()),
            link_attributes: ListBuilder::new(StringBuilder::new()),
            dropped: std::array::from_fn(|_| UInt32Builder::with_capacity(rows)),
            otlp: BinaryBuilder::with_capacity(rows, rows * 256),
            otlp_resource: BinaryBuilder::with_capacity(rows, rows * 64),
            resources: FastMap::default(),
            scratch: Vec::new(),
        }
    }

    /// Appends one span's row.
    pub fn push(&mut self, s: &Span) {
        let x = SpanExtras::of(s);
        self.status_message.append_value(&x.status_message);
        self.trace_state.append_value(&x.trace_state);
        self.flags.append_value(x.flags);
        for e in &x.events {
            self.event_times
                .values()
                .append_value(i64::try_from(e.time_unix_nano).unwrap_or(i64::MAX));
            self.event_names.values().append_value(&e.name);
            self.event_attributes
                .values()
                .append_value(attributes_json(&e.attributes));
        }
        self.event_times.append(true);
        self.event_names.append(true);
        self.event_attributes.append(true);
        for l in &x.links {
            let mut id = [0u8; 16];
            if let Some(src) = l.trace_id.get(..16) {
                id.copy_from_slice(src);
            }
            let _ = self.link_trace_ids.values().append_value(id);
            let mut id = [0u8; 8];
            if let Some(src) = l.span_id.get(..8) {
                id.copy_from_slice(src);
            }
            let _ = self.link_span_ids.values().append_value(id);
            self.link_trace_states.values().append_value(&l.trace_state);
            self.link_attributes
                .values()
                .append_value(attributes_json(&l.attributes));
        }
        self.link_trace_ids.append(true);
        self.link_span_ids.append(true);
        self.link_trace_states.append(true);
        self.link_attributes.append(true);
        for (b, n) in self.dropped.iter_mut().zip(x.dropped) {
            b.append_value(n);
        }
        self.scratch.clear();
        otlp_out::encode_span(s, &mut self.scratch);
        self.otlp.append_value(&self.scratch);
        let r = self
            .resources
            .entry(s.resource_attrs.buffer_address())
            .or_insert_with(|| {
                let mut envelope = Vec::new();
                otlp_out::encode_envelope(s, &mut envelope);
                let (scope_name, scope_version) = otlp_out::scope(s);
                Rendered {
                    envelope,
                    scope_name,
                    scope_version,
                }
            });
        self.otlp_resource.append_value(&r.envelope);
        self.scope_name.append_value(&r.scope_name);
        self.scope_version.append_value(&r.scope_version);
    }

    /// The columns, in [`fields`] order.
    pub fn finish(mut self) -> Vec<ArrayRef> {
        let [d0, d1, d2] = &mut self.dropped;
        vec![
            Arc::new(self.status_message.finish()),
            Arc::new(self.trace_state.finish()),
            Arc::new(self.flags.finish()),
            Arc::new(self.scope_name.finish()),
            Arc::new(self.scope_version.finish()),
            Arc::new(self.event_times.finish()),
            Arc::new(self.event_names.finish()),
            Arc::new(self.event_attributes.finish()),
            Arc::new(self.link_trace_ids.finish()),
            Arc::new(self.link_span_ids.finish()),
            Arc::new(self.link_trace_states.finish()),
            Arc::new(self.link_attributes.finish()),
            Arc::new(d0.finish()),
            Arc::new(d1.finish()),
            Arc::new(d2.finish()),
            Arc::new(self.otlp.finish()),
            Arc::new(self.otlp_resource.finish()),
        ]
    }
}

/// An event's or link's attributes as a JSON object (values as the attribute columns
/// show them).
fn attributes_json(attrs: &[KeyValue]) -> String {
    let mut map = serde_json::Map::new();
    for kv in attrs {
        let mut text = String::new();
        crate::formats::attr_text(kv.value.as_ref(), &mut text);
        map.insert(kv.key.clone(), serde_json::Value::String(text));
    }
    serde_json::Value::Object(map).to_string()
}
