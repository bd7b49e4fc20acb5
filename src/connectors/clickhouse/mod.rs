//! The `clickhouse` sink: every output table into ClickHouse over HTTP (RowBinary,
//! batched, compressed, retried), with DDL for the server's version
//! (schemas/clickhouse) and ReplacingMergeTree tables so that replays are idempotent.

pub mod config;
pub mod ddl;
pub mod encode;
pub mod sink;

#[cfg(test)]
mod tests;

pub use config::ClickHouseSinkConfig;
pub use sink::{ClickHouseTableWriter, ClickHouseTarget, SinkTable};
