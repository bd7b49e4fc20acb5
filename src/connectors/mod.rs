//! Sources and sinks.

pub mod file;
pub mod generator;
pub mod parquet;
