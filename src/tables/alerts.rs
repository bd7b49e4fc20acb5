//! The `alerts` table: one row per alert event (firing, resolved).

use std::sync::{Arc, LazyLock};

use arrow::array::{
    ArrayBuilder, ArrayRef, FixedSizeBinaryBuilder, Float64Builder, ListBuilder, StringBuilder,
    TimestampNanosecondBuilder, UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use spanflow_operators::alerts::{AlertEvent, Label};

use super::TableRows;

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Nanosecond, Some("+00:00".into()))
}

/// Schema of `alerts`.
pub static ALERTS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let mut f = vec![
        Field::new("at", ts(), false),
        Field::new("rule", DataType::Utf8, false),
        Field::new("state", DataType::Utf8, false),
        Field::new("metric", DataType::Utf8, false),
    ];
    for l in Label::ALL {
        f.push(Field::new(l.as_str(), DataType::Utf8, false));
    }
    f.extend([
        Field::new("labels", DataType::Utf8, false),
        Field::new("value_kind", DataType::Utf8, false),
        Field::new("comparison", DataType::Utf8, false),
        Field::new("value", DataType::Float64, false),
        Field::new("threshold", DataType::Float64, false),
        Field::new("requests", DataType::UInt64, false),
        Field::new("starts_at", ts(), false),
        Field::new("ends_at", ts(), true),
        Field::new(
            "trace_ids",
            DataType::List(Arc::new(Field::new_list_field(
                DataType::FixedSizeBinary(16),
                true,
            ))),
            false,
        ),
    ]);
    Arc::new(Schema::new(f))
});

/// Rows of `alerts`.
pub struct AlertRows {
    at: TimestampNanosecondBuilder,
    rule: StringBuilder,
    state: StringBuilder,
    metric: StringBuilder,
    labels: Vec<StringBuilder>,
    extra: StringBuilder,
    value_kind: StringBuilder,
    comparison: StringBuilder,
    value: Float64Builder,
    threshold: Float64Builder,
    requests: UInt64Builder,
    starts_at: TimestampNanosecondBuilder,
    ends_at: TimestampNanosecondBuilder,
    trace_ids: ListBuilder<FixedSizeBinaryBuilder>,
}

fn timestamps() -> TimestampNanosecondBuilder {
    TimestampNanosecondBuilder::new().with_timezone("+00:00")
}

fn ns(t: u64) -> i64 {
    i64::try_from(t).unwrap_or(i64::MAX)
}

impl Default for AlertRows {
    fn default() -> Self {
        AlertRows {
            at: timestamps(),
            rule: StringBuilder::new(),
            state: StringBuilder::new(),
            metric: StringBuilder::new(),
            labels: Label::ALL.iter().map(|_| StringBuilder::new()).collect(),
            extra: StringBuilder::new(),
            value_kind: StringBuilder::new(),
            comparison: StringBuilder::new(),
            value: Float64Builder::new(),
            threshold: Float64Builder::new(),
            requests: UInt64Builder::new(),
            starts_at: timestamps(),
            ends_at: timestamps(),
            trace_ids: ListBuilder::new(FixedSizeBinaryBuilder::new(16)),
        }
    }
}

impl AlertRows {
    /// Appends one event.
    pub fn push(&mut self, e: &AlertEvent) {
        self.at.append_value(ns(e.at_ns));
        self.rule.append_value(&e.rule);
        self.state.append_value(e.state.as_str());
        self.metric.append_value(e.key.metric.name());
        for (b, l) in self.labels.iter_mut().zip(Label::ALL) {
            b.append_value(e.label(l));
        }
        let extra: serde_json::Map<String, serde_json::Value> = e
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        self.extra
            .append_value(serde_json::Value::Object(extra).to_string());
        self.value_kind.append_value(e.value_kind.as_str());
        self.comparison
            .append_value(if e.above { ">" } else { "<" });
        self.value.append_value(e.value);
        self.threshold.append_value(e.threshold);
        self.requests.append_value(e.requests);
        self.starts_at.append_value(ns(e.starts_at_ns));
        self.ends_at.append_option(e.ends_at_ns.map(ns));
        for t in &e.trace_ids {
            // 16 bytes into a 16-byte column cannot fail.
            let _ = self.trace_ids.values().append_value(t.0);
        }
        self.trace_ids.append(true);
    }
}

impl TableRows for AlertRows {
    fn table(&self) -> &str {
        "alerts"
    }
    fn len(&self) -> usize {
        self.at.len()
    }
    fn schema(&self) -> SchemaRef {
        ALERTS_SCHEMA.clone()
    }
    fn finish(&mut self) -> RecordBatch {
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(self.at.finish()),
            Arc::new(self.rule.finish()),
            Arc::new(self.state.finish()),
            Arc::new(self.metric.finish()),
        ];
        for b in &mut self.labels {
            cols.push(Arc::new(b.finish()));
        }
        cols.push(Arc::new(self.extra.finish()));
        cols.push(Arc::new(self.value_kind.finish()));
        cols.push(Arc::new(self.comparison.finish()));
        cols.push(Arc::new(self.value.finish()));
        cols.push(Arc::new(self.threshold.finish()));
        cols.push(Arc::new(self.requests.finish()));
        cols.push(Arc::new(self.starts_at.finish()));
        cols.push(Arc::new(self.ends_at.finish()));
        cols.push(Arc::new(self.trace_ids.finish()));
        RecordBatch::try_new(ALERTS_SCHEMA.clone(), cols).unwrap_or_else(|e| {
            tracing::error!(error = %e, "internal error building an alerts batch; this is a bug");
            RecordBatch::new_empty(ALERTS_SCHEMA.clone())
        })
    }
}
