//! Sources and sinks of the systems spanflow connects to (Kafka, files, ClickHouse,
//! Parquet). The generator and the Alibaba importer are in [`crate::testkit`].

pub mod clickhouse;
pub mod file;
pub mod kafka;
pub mod parquet;

use std::path::{Path, PathBuf};

/// Errors of sinks.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Reading or writing a local file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A Kafka sink failed (connection, encoding or delivery).
    #[error("kafka sink `{sink}`, table `{table}`: {message}")]
    Kafka {
        /// Sink node name.
        sink: String,
        /// Table written.
        table: String,
        /// What failed.
        message: String,
    },
    /// A ClickHouse sink failed (connection, schema or insert).
    #[error("clickhouse sink `{sink}`, table `{table}`: {message}")]
    ClickHouse {
        /// Sink node name.
        sink: String,
        /// Output written.
        table: String,
        /// What failed.
        message: String,
    },
    /// The Parquet writer failed.
    #[error("{path}: parquet: {source}")]
    Parquet {
        /// The file being written.
        path: PathBuf,
        /// The writer's error.
        source: ::parquet::errors::ParquetError,
    },
}

impl SinkError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        SinkError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn parquet(path: &Path, source: ::parquet::errors::ParquetError) -> Self {
        SinkError::Parquet {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// A writer of one table for one sink.
pub enum TableWriter {
    /// `<dir>/<table>/part-N.parquet`.
    Parquet(parquet::ParquetTableWriter),
    /// A Kafka topic.
    Kafka {
        /// Sink node name, for errors.
        sink: String,
        /// Table name, for errors.
        table: String,
        /// The writer.
        writer: kafka::sink::KafkaTableWriter,
    },
    /// A ClickHouse table.
    ClickHouse {
        /// Sink node name, for errors.
        sink: String,
        /// Output name, for errors.
        table: String,
        /// The writer.
        writer: clickhouse::ClickHouseTableWriter,
    },
}

impl TableWriter {
    /// Opens the writer of `target` for shard `part`.
    pub fn create(
        target: &crate::runtime::TableTarget,
        part: usize,
        schema: arrow::datatypes::SchemaRef,
    ) -> Result<Self, SinkError> {
        if let Some(c) = &target.clickhouse {
            let writer = clickhouse::ClickHouseTableWriter::create(c).map_err(|message| {
                SinkError::ClickHouse {
                    sink: target.sink.clone(),
                    table: target.table.clone(),
                    message,
                }
            })?;
            return Ok(TableWriter::ClickHouse {
                sink: target.sink.clone(),
                table: target.table.clone(),
                writer,
            });
        }
        match &target.kafka {
            Some(k) => {
                let writer = kafka::sink::KafkaTableWriter::create(
                    k,
                    &target.sink_topics,
                    // Rows are keyed and encoded by their kind, whatever the table's name.
                    target.kind.builtin_name().unwrap_or(&target.table),
                    &schema,
                )
                .map_err(|message| SinkError::Kafka {
                    sink: target.sink.clone(),
                    table: target.table.clone(),
                    message,
                })?;
                Ok(TableWriter::Kafka {
                    sink: target.sink.clone(),
                    table: target.table.clone(),
                    writer,
                })
            }
            None => Ok(TableWriter::Parquet(parquet::ParquetTableWriter::create(
                &target.dir,
                &target.table,
                target.part_base + part,
                schema,
                &target.config,
            )?)),
        }
    }

    /// Writes one batch.
    pub fn write(&mut self, batch: &arrow::record_batch::RecordBatch) -> Result<(), SinkError> {
        match self {
            TableWriter::Parquet(w) => w.write(batch),
            TableWriter::Kafka {
                sink,
                table,
                writer,
            } => writer.write(batch).map_err(|message| SinkError::Kafka {
                sink: sink.clone(),
                table: table.clone(),
                message,
            }),
            TableWriter::ClickHouse {
                sink,
                table,
                writer,
            } => writer
                .write(batch)
                .map_err(|message| SinkError::ClickHouse {
                    sink: sink.clone(),
                    table: table.clone(),
                    message,
                }),
        }
    }

    /// Finishes the output; returns the rows written.
    pub fn close(self) -> Result<u64, SinkError> {
        match self {
            TableWriter::Parquet(w) => w.close(),
            TableWriter::Kafka {
                sink,
                table,
                writer,
            } => writer.close().map_err(|message| SinkError::Kafka {
                sink,
                table,
                message,
            }),
            TableWriter::ClickHouse {
                sink,
                table,
                writer,
            } => writer.close().map_err(|message| SinkError::ClickHouse {
                sink,
                table,
                message,
            }),
        }
    }
}
