//! The job file as written, for its JSON schema (`schemas/job.schema.json`).
//!
//! These types mirror the YAML shape (`type:`-tagged nodes, `from:` as a string or a
//! list) and embed the components' config structs, so the schema is generated from the
//! same types the loader deserializes and cannot drift from them. The loader itself does
//! not deserialize into these types, because serde loses positions inside tagged enums;
//! see [`load`](super::load()).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;

use super::spec::{FromFile, OperatorFile, RollupConfig, WatermarkConfig};
use crate::connectors::clickhouse::ClickHouseSinkConfig;
use crate::connectors::file::FileSourceConfig;
use crate::connectors::kafka::{KafkaSinkConfig, KafkaSourceConfig};
use crate::connectors::otlp::OtlpSourceConfig;
use crate::connectors::parquet::ParquetSinkConfig;
use crate::testkit::generator::GeneratorConfig;

/// A spanflow job: named sources, operators and sinks forming a DAG through `from:`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "spanflow job")]
pub struct JobFile {
    /// Job name; defaults to the file name without extension.
    #[serde(default)]
    pub name: Option<String>,
    /// Number of shards (one per core when absent).
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub parallelism: Option<usize>,
    /// Sources by name (names match `[A-Za-z0-9_-]+` and are unique across the job).
    #[schemars(extend("propertyNames" = { "pattern": "^[A-Za-z0-9_-]+$" }, "minProperties" = 1))]
    pub sources: BTreeMap<String, SourceFile>,
    /// Operators by name.
    #[serde(default)]
    #[schemars(extend("propertyNames" = { "pattern": "^[A-Za-z0-9_-]+$" }))]
    pub operators: Option<BTreeMap<String, OperatorFile>>,
    /// Sinks by name.
    #[schemars(extend("propertyNames" = { "pattern": "^[A-Za-z0-9_-]+$" }, "minProperties" = 1))]
    pub sinks: BTreeMap<String, SinkFile>,
    /// SQL rollups by name; each is an output named after itself that sinks can read.
    #[serde(default)]
    #[schemars(extend("propertyNames" = { "pattern": "^[A-Za-z0-9_-]+$" }))]
    pub rollups: Option<BTreeMap<String, RollupFile>>,
    /// Periodic checkpoints.
    #[serde(default)]
    pub checkpoint: Option<super::spec::CheckpointConfig>,
}

/// A rollup: one SQL `SELECT` over the rows of each closed window of metric streams
/// (`red_metrics`, `exemplars`, `service_relation`), read as tables named after their
/// ports. Its output is named after the rollup.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RollupFile {
    /// Input metric streams.
    pub from: FromFile,
    /// The query and its window.
    #[serde(flatten)]
    pub config: RollupConfig,
}

/// A source. Outputs: `spans` (default) and `dead_letters`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SourceFile {
    /// The built-in, deterministic span generator.
    #[schemars(extend("additionalProperties" = false))]
    Generator {
        /// The generator's settings.
        #[serde(flatten)]
        config: GeneratorConfig,
        /// Event-time watermark settings.
        #[serde(default)]
        watermark: Option<WatermarkConfig>,
    },
    /// OTLP files on disk.
    #[schemars(extend("additionalProperties" = false))]
    File {
        /// The files and their format.
        #[serde(flatten)]
        config: FileSourceConfig,
        /// Event-time watermark settings.
        #[serde(default)]
        watermark: Option<WatermarkConfig>,
    },
    /// A Kafka consumer group; each partition is a split with its own watermark.
    #[schemars(extend("additionalProperties" = false))]
    Kafka {
        /// Brokers, topics, group, positions and format.
        #[serde(flatten)]
        config: KafkaSourceConfig,
        /// Event-time watermark settings.
        #[serde(default)]
        watermark: Option<WatermarkConfig>,
    },
    /// An OTLP receiver: OTLP/gRPC and OTLP/HTTP, what SDKs and Collectors export to.
    #[schemars(extend("additionalProperties" = false))]
    Otlp {
        /// Listen addresses and the queue.
        #[serde(flatten)]
        config: OtlpSourceConfig,
        /// Event-time watermark settings.
        #[serde(default)]
        watermark: Option<WatermarkConfig>,
    },
}

/// A sink. Each input stream becomes a table named after its output port.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SinkFile {
    /// Parquet files, one directory per table.
    #[schemars(extend("additionalProperties" = false))]
    Parquet {
        /// Input streams.
        from: FromFile,
        /// The sink's settings.
        #[serde(flatten)]
        config: ParquetSinkConfig,
    },
    /// Kafka topics, one per table (Avro, JSON, or OTLP protobuf for spans).
    #[schemars(extend("additionalProperties" = false))]
    Kafka {
        /// Input streams.
        from: FromFile,
        /// The sink's settings.
        #[serde(flatten)]
        config: KafkaSinkConfig,
    },
    /// ClickHouse tables, one per output (ReplacingMergeTree, DDL in schemas/clickhouse).
    #[schemars(extend("additionalProperties" = false))]
    Clickhouse {
        /// Input streams.
        from: FromFile,
        /// The sink's settings.
        #[serde(flatten)]
        config: Box<ClickHouseSinkConfig>,
    },
    /// An `alerts` node's events, POSTed to Alertmanager's `/api/v2/alerts`.
    #[schemars(extend("additionalProperties" = false))]
    Alertmanager {
        /// Input streams (`alerts` outputs).
        from: FromFile,
        /// The sink's settings.
        #[serde(flatten)]
        config: crate::connectors::alertmanager::AlertmanagerSinkConfig,
    },
}

/// The JSON schema of the job file format, generated from the types with schemars.
pub fn json_schema() -> serde_json::Value {
    schemars::schema_for!(JobFile).to_value()
}
