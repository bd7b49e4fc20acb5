//! `file` source: OTLP requests from files on disk.

use std::path::PathBuf;

use bytes::Bytes;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::formats::InputFormat;
use crate::runtime::io::{ConnectorError, Source, SourceOutput};

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
}

impl FileSource {
    /// A source reading what `config` lists.
    pub fn new(config: FileSourceConfig) -> Self {
        FileSource { config }
    }
}

impl Source for FileSource {
    fn format(&self) -> InputFormat {
        self.config.format
    }

    fn run(&mut self, out: &mut SourceOutput) -> Result<(), ConnectorError> {
        for path in &self.config.paths {
            let records = crate::formats::framing::read_records(path, self.config.format)
                .map_err(|e| ConnectorError::io(path, &e))?;
            for r in records {
                if out.stopped() || !out.send_in_order(Bytes::from(r)) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}
