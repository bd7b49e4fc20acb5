//! The output tables: Arrow schemas and row builders shared by every sink.
//!
//! Column names and types are the contract with users' SQL (`spanflow sql`), with the
//! ClickHouse DDL and with the Avro schemas, so they change only deliberately.

mod alerts;
mod attr_map;
mod builders;
mod columns;
mod metrics;
mod span_detail;

pub use alerts::AlertRows;
pub use builders::{DeadLetterRows, SpanRows, TraceRows};
pub use metrics::{ExemplarRows, MetricRows};
#[cfg(test)]
pub(crate) use span_detail::attributes_json as attributes_json_for_tests;

use arrow::datatypes::SchemaRef;

use arrow::record_batch::RecordBatch;

/// A buffer of rows for one table that turns into Arrow record batches.
pub trait TableRows: Send {
    /// Table name (`traces`, `late_spans`, `dead_letters`, ...).
    fn table(&self) -> &str;
    /// Rows buffered.
    fn len(&self) -> usize;
    /// True when no rows are buffered.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Takes the buffered rows as one batch.
    fn finish(&mut self) -> RecordBatch;
    /// The table's schema.
    fn schema(&self) -> arrow::datatypes::SchemaRef;
}

/// The schema of the built-in table `name` (`red_metrics`, `spans`, ...).
pub fn schema(name: &str) -> Option<arrow::datatypes::SchemaRef> {
    all_schemas()
        .into_iter()
        .find(|(t, _)| *t == name)
        .map(|(_, s)| s)
}

/// Every output table's name and schema, in a stable order (for the Avro schemas in
/// schemas/avro and the ClickHouse DDL).
pub fn all_schemas() -> Vec<(&'static str, arrow::datatypes::SchemaRef)> {
    vec![
        ("traces", builders::TRACES_SCHEMA.clone()),
        ("spans", builders::SPANS_SCHEMA.clone()),
        ("late_spans", builders::LATE_SPANS_SCHEMA.clone()),
        ("dead_letters", builders::DEAD_LETTERS_SCHEMA.clone()),
        ("red_metrics", metrics::RED_METRICS_SCHEMA.clone()),
        ("exemplars", metrics::EXEMPLARS_SCHEMA.clone()),
        ("service_relation", metrics::SERVICE_RELATION_SCHEMA.clone()),
        ("alerts", alerts::ALERTS_SCHEMA.clone()),
    ]
}

/// Rows that arrive as record batches (a rollup's query results), for a table whose
/// schema is known only at run time.
pub struct BatchRows {
    table: String,
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
    rows: usize,
}

impl BatchRows {
    /// Rows of `table` with `schema`.
    pub fn new(table: &str, schema: SchemaRef) -> Self {
        BatchRows {
            table: table.to_owned(),
            schema,
            batches: Vec::new(),
            rows: 0,
        }
    }

    /// Buffers a batch (it must have the table's schema).
    pub fn push(&mut self, batch: RecordBatch) {
        self.rows += batch.num_rows();
        self.batches.push(batch);
    }
}

impl TableRows for BatchRows {
    fn table(&self) -> &str {
        &self.table
    }
    fn len(&self) -> usize {
        self.rows
    }
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
    fn finish(&mut self) -> RecordBatch {
        let batches = std::mem::take(&mut self.batches);
        self.rows = 0;
        arrow::compute::concat_batches(&self.schema, &batches).unwrap_or_else(|e| {
            tracing::error!(table = %self.table, error = %e, "internal error joining result batches; this is a bug");
            RecordBatch::new_empty(self.schema.clone())
        })
    }
}
