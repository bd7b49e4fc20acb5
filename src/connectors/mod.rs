//! Sources and sinks of the systems spanflow connects to (Kafka, files, OTLP exporters,
//! ClickHouse, Parquet), implementing the runtime's [`Source`](crate::runtime::io::Source) and
//! [`Sink`](crate::runtime::io::Sink). The job's planner builds them
//! (`job/plan.rs`); the generator and the Alibaba importer are in [`crate::testkit`].

pub mod alertmanager;
pub mod clickhouse;
pub mod file;
pub mod kafka;
pub mod otlp;
pub mod parquet;
