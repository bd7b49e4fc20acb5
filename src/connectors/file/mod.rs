//! `file` source: OTLP requests from files on disk.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::formats::InputFormat;

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
