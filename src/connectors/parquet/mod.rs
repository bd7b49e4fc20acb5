//! `parquet` sink: one directory per table under an output directory.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Configuration of the `parquet` sink.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ParquetSinkConfig {
    /// Output directory; tables go to `<path>/<table>/part-<shard>.parquet`. Relative
    /// paths are resolved against the working directory; `spanflow run --output-dir`
    /// overrides it.
    #[serde(default = "default_path")]
    pub path: PathBuf,
    /// Rows per row group.
    #[serde(default = "default_row_group_rows")]
    pub row_group_rows: usize,
    /// Compression codec.
    #[serde(default)]
    pub compression: ParquetCompression,
}

fn default_path() -> PathBuf {
    PathBuf::from("out")
}

fn default_row_group_rows() -> usize {
    64 * 1024
}

/// Parquet compression codecs offered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ParquetCompression {
    /// No compression.
    None,
    /// Snappy: fast, the Parquet default.
    Snappy,
    /// Zstandard level 3: smaller files.
    #[default]
    Zstd,
}

impl ParquetSinkConfig {
    /// Checks the values serde cannot; returns every problem found.
    pub fn validate(&self) -> Vec<spanflow_operators::ConfigIssue> {
        let mut issues = Vec::new();
        if self.row_group_rows == 0 {
            issues.push(spanflow_operators::ConfigIssue::new("row_group_rows", "must be at least 1, found 0"));
        }
        issues
    }
}
