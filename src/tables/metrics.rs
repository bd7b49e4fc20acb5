//! Arrow builders for the metric tables: `red_metrics`, `service_relation`,
//! `exemplars`.

use std::sync::{Arc, LazyLock};

use arrow::array::{
    ArrayBuilder, ArrayRef, BooleanBuilder, FixedSizeBinaryBuilder, Float64Builder, ListBuilder,
    StringBuilder, TimestampNanosecondBuilder, UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use spanflow_operators::metrics::{ClosedInterval, SeriesAgg, SeriesKey};

use super::TableRows;

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Nanosecond, Some("+00:00".into()))
}

fn list(item: DataType) -> DataType {
    DataType::List(Arc::new(Field::new("item", item, true)))
}

fn stats_fields() -> Vec<Field> {
    vec![
        Field::new("requests", DataType::UInt64, false),
        Field::new("errors", DataType::UInt64, false),
        Field::new("slow", DataType::UInt64, false),
        Field::new("duration_sum_ns", DataType::UInt64, false),
        Field::new("duration_min_ns", DataType::UInt64, false),
        Field::new("duration_max_ns", DataType::UInt64, false),
        Field::new("bucket_bounds", list(DataType::Float64), false),
        Field::new("bucket_counts", list(DataType::UInt64), false),
    ]
}

/// Schema of `red_metrics`: one row per series and interval.
pub static RED_METRICS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let mut f = vec![
        Field::new("interval_start", ts(), false),
        Field::new("interval_end", ts(), false),
        Field::new("metric", DataType::Utf8, false),
        Field::new("service", DataType::Utf8, false),
        Field::new("instance", DataType::Utf8, false),
        Field::new("operation", DataType::Utf8, false),
        Field::new("call_type", DataType::Utf8, false),
        Field::new("peer", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("tenant", DataType::Utf8, false),
    ];
    f.extend(stats_fields());
    Arc::new(Schema::new(f))
});

/// Schema of `service_relation`: one row per edge and interval.
pub static SERVICE_RELATION_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let mut f = vec![
        Field::new("interval_start", ts(), false),
        Field::new("interval_end", ts(), false),
        Field::new("source", DataType::Utf8, false),
        Field::new("target", DataType::Utf8, false),
        Field::new("target_kind", DataType::Utf8, false),
        Field::new("call_type", DataType::Utf8, false),
        Field::new("connection_type", DataType::Utf8, false),
    ];
    f.extend(stats_fields());
    Arc::new(Schema::new(f))
});

/// Schema of `exemplars`: one row per series, interval and bucket that has one.
pub static EXEMPLARS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("interval_start", ts(), false),
        Field::new("metric", DataType::Utf8, false),
        Field::new("service", DataType::Utf8, false),
        Field::new("instance", DataType::Utf8, false),
        Field::new("operation", DataType::Utf8, false),
        Field::new("call_type", DataType::Utf8, false),
        Field::new("peer", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("tenant", DataType::Utf8, false),
        Field::new("bucket_le", DataType::Float64, false),
        Field::new("trace_id", DataType::FixedSizeBinary(16), false),
        Field::new("span_id", DataType::FixedSizeBinary(8), false),
        Field::new("value_seconds", DataType::Float64, false),
        Field::new("timestamp", ts(), false),
        Field::new("error", DataType::Boolean, false),
        Field::new("sampled", DataType::Boolean, false),
    ]))
});

#[derive(Default)]
struct Stats {
    requests: UInt64Builder,
    errors: UInt64Builder,
    slow: UInt64Builder,
    sum: UInt64Builder,
    min: UInt64Builder,
    max: UInt64Builder,
    bounds: ListBuilder<Float64Builder>,
    counts: ListBuilder<UInt64Builder>,
}

impl Stats {
    fn push(&mut self, a: &SeriesAgg, bounds: &[f64]) {
        self.requests.append_value(a.requests);
        self.errors.append_value(a.errors);
        self.slow.append_value(a.slow);
        self.sum.append_value(a.sum_ns);
        self.min
            .append_value(if a.requests == 0 { 0 } else { a.min_ns });
        self.max.append_value(a.max_ns);
        self.bounds.values().append_slice(bounds);
        self.bounds.append(true);
        self.counts.values().append_slice(&a.counts);
        self.counts.append(true);
    }

    fn finish(&mut self, cols: &mut Vec<ArrayRef>) {
        cols.push(Arc::new(self.requests.finish()));
        cols.push(Arc::new(self.errors.finish()));
        cols.push(Arc::new(self.slow.finish()));
        cols.push(Arc::new(self.sum.finish()));
        cols.push(Arc::new(self.min.finish()));
        cols.push(Arc::new(self.max.finish()));
        cols.push(Arc::new(self.bounds.finish()));
        cols.push(Arc::new(self.counts.finish()));
    }
}

fn batch(schema: &SchemaRef, cols: Vec<ArrayRef>) -> RecordBatch {
    RecordBatch::try_new(schema.clone(), cols).unwrap_or_else(|e| {
        tracing::error!(error = %e, "internal error building a metric batch; this is a bug");
        RecordBatch::new_empty(schema.clone())
    })
}

/// Rows of `red_metrics` or `service_relation` (the same statistics, different keys).
pub struct MetricRows {
    relation: bool,
    start: TimestampNanosecondBuilder,
    end: TimestampNanosecondBuilder,
    dims: Vec<StringBuilder>,
    stats: Stats,
}

impl MetricRows {
    fn new(relation: bool) -> Self {
        let n = if relation { 5 } else { 8 };
        MetricRows {
            relation,
            start: TimestampNanosecondBuilder::new().with_timezone("+00:00"),
            end: TimestampNanosecondBuilder::new().with_timezone("+00:00"),
            dims: (0..n).map(|_| StringBuilder::new()).collect(),
            stats: Stats::default(),
        }
    }

    /// Rows for `red_metrics`.
    pub fn red_metrics() -> Self {
        Self::new(false)
    }

    /// Rows for `service_relation`.
    pub fn service_relation() -> Self {
        Self::new(true)
    }

    /// Appends every series of a closed interval.
    pub fn push_interval(&mut self, ci: &ClosedInterval, bounds: &[f64]) {
        for (k, a) in &ci.series {
            self.push(ci, k, a, bounds);
        }
    }

    fn push(&mut self, ci: &ClosedInterval, k: &SeriesKey, a: &SeriesAgg, bounds: &[f64]) {
        self.start.append_value(ci.start_ns as i64);
        self.end.append_value(ci.end_ns.min(i64::MAX as u64) as i64);
        let values: Vec<&str> = if self.relation {
            vec![
                k.service.as_str(),
                k.peer.as_str(),
                k.peer_kind.as_str(),
                k.call_type.as_str(),
                k.connection.as_str(),
            ]
        } else {
            vec![
                k.metric.name(),
                k.service.as_str(),
                k.instance.as_str(),
                k.operation.as_str(),
                k.call_type.as_str(),
                k.peer.as_str(),
                k.status.as_str(),
                k.tenant.as_str(),
            ]
        };
        for (b, v) in self.dims.iter_mut().zip(values) {
            b.append_value(v);
        }
        self.stats.push(a, bounds);
    }
}

impl TableRows for MetricRows {
    fn table(&self) -> &'static str {
        if self.relation {
            "service_relation"
        } else {
            "red_metrics"
        }
    }
    fn len(&self) -> usize {
        self.start.len()
    }
    fn schema(&self) -> SchemaRef {
        if self.relation {
            SERVICE_RELATION_SCHEMA.clone()
        } else {
            RED_METRICS_SCHEMA.clone()
        }
    }
    fn finish(&mut self) -> RecordBatch {
        let mut cols: Vec<ArrayRef> =
            vec![Arc::new(self.start.finish()), Arc::new(self.end.finish())];
        for b in &mut self.dims {
            cols.push(Arc::new(b.finish()));
        }
        self.stats.finish(&mut cols);
        batch(&self.schema(), cols)
    }
}

/// Rows of `exemplars`.
pub struct ExemplarRows {
    start: TimestampNanosecondBuilder,
    dims: Vec<StringBuilder>,
    le: Float64Builder,
    trace_id: FixedSizeBinaryBuilder,
    span_id: FixedSizeBinaryBuilder,
    value: Float64Builder,
    timestamp: TimestampNanosecondBuilder,
    error: BooleanBuilder,
    sampled: BooleanBuilder,
}

impl Default for ExemplarRows {
    fn default() -> Self {
        ExemplarRows {
            start: TimestampNanosecondBuilder::new().with_timezone("+00:00"),
            dims: (0..8).map(|_| StringBuilder::new()).collect(),
            le: Float64Builder::new(),
            trace_id: FixedSizeBinaryBuilder::new(16),
            span_id: FixedSizeBinaryBuilder::new(8),
            value: Float64Builder::new(),
            timestamp: TimestampNanosecondBuilder::new().with_timezone("+00:00"),
            error: BooleanBuilder::new(),
            sampled: BooleanBuilder::new(),
        }
    }
}

impl ExemplarRows {
    /// Appends the exemplars of every series of a closed interval.
    pub fn push_interval(&mut self, ci: &ClosedInterval, bounds: &[f64]) {
        for (k, a) in &ci.series {
            for (i, e) in a.exemplars.iter().enumerate() {
                let Some(e) = e else { continue };
                self.start.append_value(ci.start_ns as i64);
                let values = [
                    k.metric.name(),
                    k.service.as_str(),
                    k.instance.as_str(),
                    k.operation.as_str(),
                    k.call_type.as_str(),
                    k.peer.as_str(),
                    k.status.as_str(),
                    k.tenant.as_str(),
                ];
                for (b, v) in self.dims.iter_mut().zip(values) {
                    b.append_value(v);
                }
                self.le
                    .append_value(bounds.get(i).copied().unwrap_or(f64::INFINITY));
                let _ = self.trace_id.append_value(e.trace_id.0);
                let _ = self.span_id.append_value(e.span_id.0);
                self.value.append_value(e.value_ns as f64 / 1e9);
                self.timestamp.append_value(e.timestamp_ns as i64);
                self.error.append_value(e.error);
                self.sampled.append_value(e.sampled);
            }
        }
    }
}

impl TableRows for ExemplarRows {
    fn table(&self) -> &'static str {
        "exemplars"
    }
    fn len(&self) -> usize {
        self.start.len()
    }
    fn schema(&self) -> SchemaRef {
        EXEMPLARS_SCHEMA.clone()
    }
    fn finish(&mut self) -> RecordBatch {
        let mut cols: Vec<ArrayRef> = vec![Arc::new(self.start.finish())];
        for b in &mut self.dims {
            cols.push(Arc::new(b.finish()));
        }
        cols.push(Arc::new(self.le.finish()));
        cols.push(Arc::new(self.trace_id.finish()));
        cols.push(Arc::new(self.span_id.finish()));
        cols.push(Arc::new(self.value.finish()));
        cols.push(Arc::new(self.timestamp.finish()));
        cols.push(Arc::new(self.error.finish()));
        cols.push(Arc::new(self.sampled.finish()));
        batch(&EXEMPLARS_SCHEMA, cols)
    }
}
