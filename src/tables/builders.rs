//! Arrow builders for each output table.

use std::sync::{Arc, LazyLock};

use arrow::array::BooleanBufferBuilder;
use arrow::array::{
    ArrayBuilder, ArrayRef, BinaryBuilder, BooleanBuilder, FixedSizeBinaryBuilder, Float64Builder,
    StringBuilder, TimestampNanosecondBuilder, UInt32Builder, UInt64Builder,
};
use arrow::datatypes::{
    DataType, Field, Schema, SchemaRef, TimeUnit, TimestampNanosecondType, UInt16Type, UInt64Type,
};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use spanflow_operators::Span;
use spanflow_operators::session_window::{ClosedTrace, LateSpan};
use spanflow_operators::tail_sampling::Decision;

use super::TableRows;
use super::attr_map::{AttrMaps, MapSizes, map_type};
use super::columns::{Fixed, Text, booleans, primitive};
use super::span_detail::SpanDetail;
use crate::formats::DeadLetter;
use crate::formats::otlp_out::SpanExtras;

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Nanosecond, Some("+00:00".into()))
}

fn batch(schema: &SchemaRef, cols: Vec<ArrayRef>) -> RecordBatch {
    // The builders and the schema are defined side by side below; a mismatch is a bug
    // that the table tests catch, so fall back to an empty batch instead of panicking.
    RecordBatch::try_new(schema.clone(), cols).unwrap_or_else(|e| {
        tracing::error!(error = %e, "internal error building a record batch; this is a bug");
        RecordBatch::new_empty(schema.clone())
    })
}

/// Schema of `traces`: one row per closed trace (fragment).
pub static TRACES_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("trace_id", DataType::FixedSizeBinary(16), false),
        Field::new("fragment", DataType::UInt32, false),
        Field::new("root_service", DataType::Utf8, false),
        Field::new("root_operation", DataType::Utf8, false),
        Field::new("has_root", DataType::Boolean, false),
        Field::new("start_time", ts(), false),
        Field::new("end_time", ts(), false),
        Field::new("duration_ns", DataType::UInt64, false),
        Field::new("span_count", DataType::UInt32, false),
        Field::new("error_count", DataType::UInt32, false),
        Field::new("service_count", DataType::UInt32, false),
        Field::new("close_reason", DataType::Utf8, false),
        Field::new("sampled", DataType::Boolean, false),
        Field::new("sampling_policy", DataType::Utf8, false),
        Field::new("adjusted_count", DataType::Float64, false),
    ]))
});

/// Rows of `traces`.
pub struct TraceRows {
    trace_id: FixedSizeBinaryBuilder,
    fragment: UInt32Builder,
    root_service: StringBuilder,
    root_operation: StringBuilder,
    has_root: BooleanBuilder,
    start: TimestampNanosecondBuilder,
    end: TimestampNanosecondBuilder,
    duration: UInt64Builder,
    span_count: UInt32Builder,
    error_count: UInt32Builder,
    service_count: UInt32Builder,
    close_reason: StringBuilder,
    sampled: BooleanBuilder,
    policy: StringBuilder,
    adjusted: Float64Builder,
    services_scratch: Vec<spanflow_operators::Sym>,
}

impl Default for TraceRows {
    fn default() -> Self {
        TraceRows {
            trace_id: FixedSizeBinaryBuilder::new(16),
            fragment: UInt32Builder::new(),
            root_service: StringBuilder::new(),
            root_operation: StringBuilder::new(),
            has_root: BooleanBuilder::new(),
            start: TimestampNanosecondBuilder::new().with_timezone("+00:00"),
            end: TimestampNanosecondBuilder::new().with_timezone("+00:00"),
            duration: UInt64Builder::new(),
            span_count: UInt32Builder::new(),
            error_count: UInt32Builder::new(),
            service_count: UInt32Builder::new(),
            close_reason: StringBuilder::new(),
            sampled: BooleanBuilder::new(),
            policy: StringBuilder::new(),
            adjusted: Float64Builder::new(),
            services_scratch: Vec::new(),
        }
    }
}

impl TraceRows {
    /// Appends one closed trace with the sampler's decision (`None` when no sampler
    /// runs: every trace counts as kept).
    pub fn push(&mut self, t: &ClosedTrace, decision: Option<&Decision>) {
        self.sampled
            .append_value(decision.is_none_or(|d| d.sampled));
        self.policy
            .append_value(decision.and_then(|d| d.policy).map_or("", |p| p.as_str()));
        self.adjusted
            .append_value(decision.map_or(1.0, |d| d.adjusted_count));
        let s = &t.summary;
        // Infallible: the id is always 16 bytes.
        let _ = self.trace_id.append_value(t.trace_id.0);
        self.fragment.append_value(s.fragment);
        self.root_service.append_value(s.root_service.as_str());
        self.root_operation.append_value(s.root_operation.as_str());
        self.has_root.append_value(s.has_root);
        self.start.append_value(s.start_ns as i64);
        self.end.append_value(s.end_ns as i64);
        self.duration.append_value(s.duration_ns());
        self.span_count.append_value(s.span_count);
        self.error_count.append_value(s.error_count);
        self.services_scratch.clear();
        self.services_scratch
            .extend(t.spans.iter().map(|s| s.service));
        self.services_scratch.sort_unstable_by_key(|s| s.id());
        self.services_scratch.dedup();
        self.service_count
            .append_value(self.services_scratch.len() as u32);
        self.close_reason.append_value(s.close_reason.as_str());
    }
}

impl TableRows for TraceRows {
    fn table(&self) -> &'static str {
        "traces"
    }
    fn len(&self) -> usize {
        self.fragment.len()
    }
    fn schema(&self) -> SchemaRef {
        TRACES_SCHEMA.clone()
    }
    fn finish(&mut self) -> RecordBatch {
        let cols: Vec<ArrayRef> = vec![
            Arc::new(self.trace_id.finish()),
            Arc::new(self.fragment.finish()),
            Arc::new(self.root_service.finish()),
            Arc::new(self.root_operation.finish()),
            Arc::new(self.has_root.finish()),
            Arc::new(self.start.finish()),
            Arc::new(self.end.finish()),
            Arc::new(self.duration.finish()),
            Arc::new(self.span_count.finish()),
            Arc::new(self.error_count.finish()),
            Arc::new(self.service_count.finish()),
            Arc::new(self.close_reason.finish()),
            Arc::new(self.sampled.finish()),
            Arc::new(self.policy.finish()),
            Arc::new(self.adjusted.finish()),
        ];
        batch(&TRACES_SCHEMA, cols)
    }
}

fn span_fields() -> Vec<Field> {
    vec![
        Field::new("trace_id", DataType::FixedSizeBinary(16), false),
        Field::new("span_id", DataType::FixedSizeBinary(8), false),
        Field::new("parent_span_id", DataType::FixedSizeBinary(8), true),
        Field::new("service", DataType::Utf8, false),
        Field::new("instance", DataType::Utf8, false),
        Field::new("name", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("start_time", ts(), false),
        Field::new("end_time", ts(), false),
        Field::new("duration_ns", DataType::UInt64, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("is_error", DataType::Boolean, false),
        Field::new("call_type", DataType::Utf8, false),
        Field::new("http_status", DataType::UInt16, false),
        Field::new("peer", DataType::Utf8, false),
        Field::new("db_system", DataType::Utf8, false),
        Field::new("messaging_destination", DataType::Utf8, false),
        Field::new("attributes", map_type(), false),
        Field::new("resource_attributes", map_type(), false),
    ]
    .into_iter()
    .chain(super::span_detail::fields(ts()))
    .collect()
}

/// Schema of `late_spans`: the span columns plus why and when it was late.
pub static LATE_SPANS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let mut f = span_fields();
    f.push(Field::new("late_reason", DataType::Utf8, false));
    f.push(Field::new("watermark", ts(), false));
    Arc::new(Schema::new(f))
});

/// Schema of `spans`: one row per span.
pub static SPANS_SCHEMA: LazyLock<SchemaRef> =
    LazyLock::new(|| Arc::new(Schema::new(span_fields())));

/// Rows of a span table (`spans`, or `late_spans` when built with [`SpanRows::late`]).
pub struct SpanRows {
    late: bool,
    trace_id: Fixed<16>,
    span_id: Fixed<8>,
    parent: Fixed<8>,
    service: Text,
    instance: Text,
    name: Text,
    kind: Text,
    start: Vec<i64>,
    end: Vec<i64>,
    duration: Vec<u64>,
    status: Text,
    is_error: BooleanBufferBuilder,
    call_type: Text,
    http_status: Vec<u16>,
    peer: Text,
    db_system: Text,
    destination: Text,
    /// `attributes` and `resource_attributes`.
    attr_maps: AttrMaps,
    /// Status message to `otlp_resource`.
    detail: SpanDetail,
    late_reason: Text,
    watermark: Vec<i64>,
    /// The row being written's extras, reused from row to row.
    extras: SpanExtras,
}

/// Rows and text bytes of a batch, to size the next one like it.
#[derive(Default)]
struct SpanSizes {
    rows: usize,
    /// Bytes of the string columns, in [`SpanRows::text_columns`] order.
    text: [usize; 10],
    maps: [MapSizes; 2],
    /// Bytes of the text and binary columns of [`SpanDetail`].
    detail: [usize; 6],
}

impl SpanRows {
    fn new(late: bool) -> Self {
        Self::with_capacity(late, &SpanSizes::default())
    }

    /// Buffers pre-sized for a batch like the previous one: growing them from empty
    /// for every batch cost more (reallocations, fresh pages) than filling them.
    fn with_capacity(late: bool, sizes: &SpanSizes) -> Self {
        // A quarter more than the last batch, for every column: batches are cut after
        // whole traces and vary, and a column that outgrows its buffer copies it whole
        // (about half the batches did, for every column without this room).
        let more = |n: usize| n + n / 4;
        let rows = more(sizes.rows);
        let [
            service,
            instance,
            name,
            kind,
            status,
            call_type,
            peer,
            db_system,
            destination,
            late_reason,
        ] = sizes
            .text
            .map(|bytes| Text::with_capacity(rows, more(bytes)));
        SpanRows {
            late,
            trace_id: Fixed::with_capacity(rows),
            span_id: Fixed::with_capacity(rows),
            parent: Fixed::with_capacity(rows),
            service,
            instance,
            name,
            kind,
            start: Vec::with_capacity(rows),
            end: Vec::with_capacity(rows),
            duration: Vec::with_capacity(rows),
            status,
            is_error: BooleanBufferBuilder::new(rows),
            call_type,
            http_status: Vec::with_capacity(rows),
            peer,
            db_system,
            destination,
            attr_maps: AttrMaps::with_capacity(sizes.maps),
            detail: SpanDetail::with_capacity(rows, sizes.detail.map(more)),
            late_reason,
            watermark: Vec::with_capacity(if late { rows } else { 0 }),
            extras: SpanExtras::default(),
        }
    }

    fn text_columns(&self) -> [&Text; 10] {
        [
            &self.service,
            &self.instance,
            &self.name,
            &self.kind,
            &self.status,
            &self.call_type,
            &self.peer,
            &self.db_system,
            &self.destination,
            &self.late_reason,
        ]
    }

    fn sizes(&self) -> SpanSizes {
        SpanSizes {
            rows: self.len(),
            text: self.text_columns().map(Text::byte_len),
            maps: self.attr_maps.sizes(),
            detail: self.detail.sizes(),
        }
    }

    /// Rows for the `spans` table.
    pub fn spans() -> Self {
        Self::new(false)
    }

    /// Rows for the `late_spans` table.
    pub fn late() -> Self {
        Self::new(true)
    }

    /// Appends one span (for `spans`).
    pub fn push(&mut self, s: &Span) {
        self.trace_id.push(&s.trace_id.0);
        self.span_id.push(&s.span_id.0);
        if s.is_root() {
            self.parent.push_null();
        } else {
            self.parent.push(&s.parent_span_id.0);
        }
        self.service.push(s.service.as_str());
        self.instance.push(s.instance.as_str());
        self.name.push(s.name.as_str());
        self.kind.push(s.kind.as_str());
        self.start.push(s.start_ns as i64);
        self.end.push(s.end_ns as i64);
        self.duration.push(s.duration_ns());
        self.status.push(s.status.as_str());
        self.is_error.append(s.is_error());
        self.call_type.push(s.call_type.as_str());
        self.http_status.push(s.http_status);
        self.peer.push(s.peer.as_str());
        self.db_system.push(s.db_system.as_str());
        self.destination.push(s.messaging_destination.as_str());
        // One walk of the packed fields fills the maps and finds the detail columns'
        // fields.
        let x = &mut self.extras;
        x.reset(s);
        self.attr_maps
            .push_seeing(&s.attrs, &s.resource_attrs, |e| x.observe(e));
        self.detail.push(s, &self.extras);
    }

    /// Appends spans (for `spans`), loading each one's attributes while the one before
    /// it is written (see [`Attrs::prefetch`](spanflow_operators::Attrs::prefetch)).
    pub fn extend<'a>(&mut self, spans: impl IntoIterator<Item = &'a Span>) {
        let mut spans = spans.into_iter().peekable();
        while let Some(s) = spans.next() {
            if let Some(next) = spans.peek() {
                next.attrs.prefetch();
            }
            self.push(s);
        }
    }

    /// Appends one late span (for `late_spans`).
    pub fn push_late(&mut self, l: &LateSpan) {
        self.push(&l.span);
        self.late_reason.push(l.reason.as_str());
        self.watermark.push(l.watermark.min(i64::MAX as u64) as i64);
    }
}

impl TableRows for SpanRows {
    fn table(&self) -> &'static str {
        if self.late { "late_spans" } else { "spans" }
    }
    fn len(&self) -> usize {
        self.duration.len()
    }
    fn schema(&self) -> SchemaRef {
        if self.late {
            LATE_SPANS_SCHEMA.clone()
        } else {
            SPANS_SCHEMA.clone()
        }
    }
    fn finish(&mut self) -> RecordBatch {
        let mut next = SpanRows::with_capacity(self.late, &self.sizes());
        next.attr_maps.keep_resources_of(&mut self.attr_maps);
        next.detail.keep_resources_of(&mut self.detail);
        let schema = self.schema();
        std::mem::replace(self, next)
            .finish_columns()
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "cannot build the span columns; batch dropped");
                RecordBatch::new_empty(schema)
            })
    }
}

impl SpanRows {
    fn finish_columns(self) -> Result<RecordBatch, ArrowError> {
        let ts = |v: Vec<i64>| -> ArrayRef {
            Arc::new(primitive::<TimestampNanosecondType>(v).with_timezone("+00:00"))
        };
        let [attributes, resource_attributes] = self.attr_maps.finish()?;
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(self.trace_id.finish()?),
            Arc::new(self.span_id.finish()?),
            Arc::new(self.parent.finish()?),
            Arc::new(self.service.finish()?),
            Arc::new(self.instance.finish()?),
            Arc::new(self.name.finish()?),
            Arc::new(self.kind.finish()?),
            ts(self.start),
            ts(self.end),
            Arc::new(primitive::<UInt64Type>(self.duration)),
            Arc::new(self.status.finish()?),
            Arc::new(booleans(self.is_error)),
            Arc::new(self.call_type.finish()?),
            Arc::new(primitive::<UInt16Type>(self.http_status)),
            Arc::new(self.peer.finish()?),
            Arc::new(self.db_system.finish()?),
            Arc::new(self.destination.finish()?),
            Arc::new(attributes),
            Arc::new(resource_attributes),
        ];
        cols.extend(self.detail.finish()?);
        let schema = if self.late {
            cols.push(Arc::new(self.late_reason.finish()?));
            cols.push(ts(self.watermark));
            &LATE_SPANS_SCHEMA
        } else {
            &SPANS_SCHEMA
        };
        RecordBatch::try_new((*schema).clone(), cols)
    }
}

/// Schema of `dead_letters`.
pub static DEAD_LETTERS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("source", DataType::Utf8, false),
        Field::new("topic", DataType::Utf8, true),
        Field::new("split", DataType::UInt32, false),
        Field::new("offset", DataType::UInt64, false),
        Field::new("span_index", DataType::UInt32, true),
        Field::new("kind", DataType::Utf8, false),
        Field::new("reason", DataType::Utf8, false),
        Field::new("payload_len", DataType::UInt64, false),
        Field::new("payload", DataType::Binary, false),
    ]))
});

/// Rows of `dead_letters`.
pub struct DeadLetterRows {
    source: StringBuilder,
    topic: StringBuilder,
    split: UInt32Builder,
    offset: UInt64Builder,
    span_index: UInt32Builder,
    kind: StringBuilder,
    reason: StringBuilder,
    payload_len: UInt64Builder,
    payload: BinaryBuilder,
}

impl Default for DeadLetterRows {
    fn default() -> Self {
        DeadLetterRows {
            source: StringBuilder::new(),
            topic: StringBuilder::new(),
            split: UInt32Builder::new(),
            offset: UInt64Builder::new(),
            span_index: UInt32Builder::new(),
            kind: StringBuilder::new(),
            reason: StringBuilder::new(),
            payload_len: UInt64Builder::new(),
            payload: BinaryBuilder::new(),
        }
    }
}

impl DeadLetterRows {
    /// Appends one dead letter.
    pub fn push(&mut self, d: &DeadLetter) {
        self.source.append_value(d.source.as_str());
        self.topic.append_option(d.topic.map(|t| t.as_str()));
        self.split.append_value(d.split);
        self.offset.append_value(d.offset);
        self.span_index.append_option(d.span_index);
        self.kind.append_value(d.kind);
        self.reason.append_value(&d.reason);
        self.payload_len.append_value(d.payload_len);
        self.payload.append_value(&d.payload);
    }
}

impl TableRows for DeadLetterRows {
    fn table(&self) -> &'static str {
        "dead_letters"
    }
    fn len(&self) -> usize {
        self.split.len()
    }
    fn schema(&self) -> SchemaRef {
        DEAD_LETTERS_SCHEMA.clone()
    }
    fn finish(&mut self) -> RecordBatch {
        let cols: Vec<ArrayRef> = vec![
            Arc::new(self.source.finish()),
            Arc::new(self.topic.finish()),
            Arc::new(self.split.finish()),
            Arc::new(self.offset.finish()),
            Arc::new(self.span_index.finish()),
            Arc::new(self.kind.finish()),
            Arc::new(self.reason.finish()),
            Arc::new(self.payload_len.finish()),
            Arc::new(self.payload.finish()),
        ];
        batch(&DEAD_LETTERS_SCHEMA, cols)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spanflow_operators::session_window::{CloseReason, LateReason, TraceSummary};
    use spanflow_operators::{AttrValue, AttrsBuilder, SpanId, Sym, TraceId};

    fn span() -> Span {
        let mut b = AttrsBuilder::default();
        b.push("http.route", AttrValue::Str("/x"), false);
        b.push("k8s.pod", AttrValue::Str("p-1"), true);
        Span {
            trace_id: TraceId([1; 16]),
            span_id: SpanId([2; 8]),
            start_ns: 10,
            end_ns: 30,
            service: Sym::new("a"),
            attrs: b.finish(),
            ..Default::default()
        }
    }

    #[test]
    fn every_table_builds_batches_matching_its_schema() {
        let mut t = TraceRows::default();
        t.push(
            &ClosedTrace::new(
                TraceId([1; 16]),
                vec![span(), span()],
                TraceSummary {
                    root_service: Sym::new("a"),
                    root_operation: Sym::new("op"),
                    has_root: true,
                    start_ns: 10,
                    end_ns: 30,
                    span_count: 2,
                    error_count: 0,
                    close_reason: CloseReason::Gap,
                    fragment: 0,
                    closes_at: 30,
                },
            ),
            None,
        );
        let b = t.finish();
        assert_eq!(b.num_rows(), 1);
        assert_eq!(b.schema(), *TRACES_SCHEMA);
        assert_eq!(t.len(), 0, "finish drains");

        let mut l = SpanRows::late();
        l.push_late(&LateSpan {
            span: span(),
            reason: LateReason::TraceClosed,
            watermark: 99,
        });
        let b = l.finish();
        assert_eq!(b.num_rows(), 1);
        assert_eq!(b.schema(), *LATE_SPANS_SCHEMA);

        let mut s = SpanRows::spans();
        let mut sp = span();
        let mut rb = AttrsBuilder::default();
        rb.push("host.name", AttrValue::Str("node-1"), true);
        sp.resource_attrs = rb.finish();
        s.push(&sp);
        let b = s.finish();
        assert_eq!(b.schema(), *SPANS_SCHEMA);
        let maps = |name: &str| {
            let col = b.column_by_name(name).unwrap();
            let m = col
                .as_any()
                .downcast_ref::<arrow::array::MapArray>()
                .unwrap();
            arrow::array::Array::len(&m.value(0))
        };
        assert_eq!(maps("attributes"), 1, "http.route");
        assert_eq!(
            maps("resource_attributes"),
            2,
            "k8s.pod (flagged) and the shared host.name"
        );

        let mut d = DeadLetterRows::default();
        d.push(&DeadLetter {
            source: Sym::new("gen"),
            topic: None,
            split: 0,
            offset: 5,
            span_index: None,
            kind: "malformed_protobuf",
            reason: "x".into(),
            payload_len: 3,
            payload: vec![1, 2, 3],
        });
        assert_eq!(d.finish().num_rows(), 1);
    }
}
