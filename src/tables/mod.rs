//! The output tables: Arrow schemas and row builders shared by every sink.
//!
//! Column names and types are the contract with users' SQL (`spanflow sql`), with the
//! ClickHouse DDL and with the Avro schemas, so they change only deliberately.

mod attr_map;
mod builders;
mod metrics;

pub use builders::{DeadLetterRows, SpanRows, TraceRows};
pub use metrics::{ExemplarRows, MetricRows};

use arrow::record_batch::RecordBatch;

/// A buffer of rows for one table that turns into Arrow record batches.
pub trait TableRows: Send {
    /// Table name (`traces`, `late_spans`, `dead_letters`, ...).
    fn table(&self) -> &'static str;
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
    ]
}
