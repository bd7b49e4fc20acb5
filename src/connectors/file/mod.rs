//! `file` source: OTLP requests from files on disk.

use std::path::PathBuf;

use bytes::Bytes;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::formats::InputFormat;
use crate::runtime::io::{ConnectorError, Position, Source, SourceOutput};

/// Configuration of the `file` source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSourceConfig {
    /// Files to read, in order; relative paths are resolved against the job file's
    /// directory. The files are read one after the other as one split with one
    /// watermark, so list them in event-time order.
    pub paths: Vec<PathBuf>,
    /// Record format. `otlp_proto`: 4-byte big-endian length + `ExportTraceServiceRequest`
    /// per record (as the OpenTelemetry Collector's file exporter writes);
    /// `otlp_json`: one OTLP JSON request per line.
    pub format: InputFormat,
}

impl FileSourceConfig {
    /// Checks the values serde cannot; returns every problem found.
    pub fn validate(&self) -> Vec<spanflow_operators::ConfigIssue> {
        let mut issues = Vec::new();
        if self.paths.is_empty() {
            issues.push(spanflow_operators::ConfigIssue::new(
                "paths",
                "must list at least one file",
            ));
        }
        issues
    }
}

/// The `file` source: reads its files in the order listed, as one split, so a later
/// file does not hold the watermark back while an earlier one is read.
#[derive(Debug)]
pub struct FileSource {
    config: FileSourceConfig,
    /// Records a stopped run already read.
    skip: u64,
}

impl FileSource {
    /// A source reading what `config` lists.
    pub fn new(config: FileSourceConfig) -> Self {
        FileSource { config, skip: 0 }
    }
}

impl Source for FileSource {
    fn format(&self) -> InputFormat {
        self.config.format
    }

    fn resumable(&self) -> bool {
        true
    }

    fn resume_from(&mut self, position: &Position) -> Result<(), ConnectorError> {
        self.skip = position.decode()?;
        Ok(())
    }

    /// Its position is the number of records read, over the files in order.
    fn run(&mut self, out: &mut SourceOutput) -> Result<(), ConnectorError> {
        let mut index = 0u64;
        out.resume_offsets_at(self.skip);
        'files: for path in &self.config.paths {
            let records = crate::formats::framing::read_records(path, self.config.format)
                .map_err(|e| ConnectorError::io(path, &e))?;
            for r in records {
                index += 1;
                if index <= self.skip {
                    continue;
                }
                if out.stopped() {
                    break 'files;
                }
                if !out.send_in_order(Bytes::from(r)) {
                    return Ok(());
                }
            }
        }
        out.end_in_order()
    }
}
