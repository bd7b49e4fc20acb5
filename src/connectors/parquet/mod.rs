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

impl Default for ParquetSinkConfig {
    fn default() -> Self {
        ParquetSinkConfig {
            path: default_path(),
            row_group_rows: default_row_group_rows(),
            compression: ParquetCompression::default(),
        }
    }
}

impl ParquetSinkConfig {
    /// Checks the values serde cannot; returns every problem found.
    pub fn validate(&self) -> Vec<spanflow_operators::ConfigIssue> {
        let mut issues = Vec::new();
        if self.row_group_rows == 0 {
            issues.push(spanflow_operators::ConfigIssue::new(
                "row_group_rows",
                "must be at least 1, found 0",
            ));
        }
        issues
    }
}

use std::fs::File;
use std::path::Path;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::connectors::SinkError;

impl ParquetSinkConfig {
    /// The output directory, unless the command line overrides it.
    pub fn dir(&self, override_dir: Option<&Path>) -> PathBuf {
        override_dir.map_or_else(|| self.path.clone(), Path::to_path_buf)
    }
}

/// Removes the `part-*.parquet` files a previous run left in `<dir>/<table>/`, so a run
/// with fewer shards does not leave stale parts behind, except those in `keep` (the
/// parts a savepoint vouches for, when a run resumes). Other files are left alone.
pub fn prepare_table_dir(dir: &Path, table: &str, keep: &[String]) -> Result<PathBuf, SinkError> {
    let tdir = dir.join(table);
    std::fs::create_dir_all(&tdir).map_err(|e| SinkError::io(&tdir, e))?;
    let entries = std::fs::read_dir(&tdir).map_err(|e| SinkError::io(&tdir, e))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("part-")
            && name.ends_with(".parquet")
            && !keep.iter().any(|k| *k == name)
        {
            std::fs::remove_file(entry.path()).map_err(|e| SinkError::io(&entry.path(), e))?;
        }
    }
    Ok(tdir)
}

/// Writes one part file of one table. The file appears under its final name only when
/// [`ParquetTableWriter::close`] succeeds.
pub struct ParquetTableWriter {
    writer: ArrowWriter<File>,
    tmp: PathBuf,
    path: PathBuf,
    rows: u64,
}

impl ParquetTableWriter {
    /// Opens `<dir>/<table>/part-<part>.parquet` (written as a hidden temp file first).
    pub fn create(
        dir: &Path,
        table: &str,
        part: usize,
        schema: SchemaRef,
        config: &ParquetSinkConfig,
    ) -> Result<Self, SinkError> {
        let tdir = dir.join(table);
        std::fs::create_dir_all(&tdir).map_err(|e| SinkError::io(&tdir, e))?;
        let path = tdir.join(format!("part-{part:03}.parquet"));
        let tmp = tdir.join(format!(".part-{part:03}.parquet.tmp"));
        let file = File::create(&tmp).map_err(|e| SinkError::io(&tmp, e))?;
        let compression = match config.compression {
            ParquetCompression::None => Compression::UNCOMPRESSED,
            ParquetCompression::Snappy => Compression::SNAPPY,
            ParquetCompression::Zstd => Compression::ZSTD(ZstdLevel::default()),
        };
        let props = WriterProperties::builder()
            .set_compression(compression)
            .set_max_row_group_row_count(Some(config.row_group_rows.max(1)))
            .build();
        let writer = ArrowWriter::try_new(file, schema, Some(props))
            .map_err(|e| SinkError::parquet(&tmp, e))?;
        Ok(ParquetTableWriter {
            writer,
            tmp,
            path,
            rows: 0,
        })
    }

    /// Appends a batch.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), SinkError> {
        self.rows += batch.num_rows() as u64;
        self.writer
            .write(batch)
            .map_err(|e| SinkError::parquet(&self.tmp, e))
    }

    /// Finishes the file and moves it to its final name; returns the rows written.
    pub fn close(self) -> Result<u64, SinkError> {
        self.writer
            .close()
            .map_err(|e| SinkError::parquet(&self.tmp, e))?;
        std::fs::rename(&self.tmp, &self.path).map_err(|e| SinkError::io(&self.path, e))?;
        Ok(self.rows)
    }
}
