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

use crate::runtime::io::{ConnectorError, Position, Sink, TableWriter};

impl ParquetSinkConfig {
    /// The output directory, unless the command line overrides it.
    pub fn dir(&self, override_dir: Option<&Path>) -> PathBuf {
        override_dir.map_or_else(|| self.path.clone(), Path::to_path_buf)
    }
}

/// One table of a `parquet` sink: `<dir>/<table>/part-<part>.parquet`, one part per
/// shard (and per resumed run).
#[derive(Debug, Clone)]
pub struct ParquetTable {
    dir: PathBuf,
    table: String,
    config: ParquetSinkConfig,
}

impl ParquetTable {
    /// Table `table` of a sink writing under `dir`.
    pub fn new(dir: PathBuf, table: &str, config: ParquetSinkConfig) -> Self {
        ParquetTable {
            dir,
            table: table.to_owned(),
            config,
        }
    }

    fn table_dir(&self) -> PathBuf {
        self.dir.join(&self.table)
    }

    /// The part files now in the table's directory.
    fn parts(&self) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(self.table_dir())
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("part-") && n.ends_with(".parquet"))
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }
}

impl Sink for ParquetTable {
    fn location(&self) -> PathBuf {
        self.table_dir()
    }

    fn batch_rows(&self) -> usize {
        // Small batches keep the builders' buffers in cache and reused; the writer
        // still forms row groups of `row_group_rows`.
        self.config.row_group_rows.clamp(1, 1024)
    }

    /// Removes the `part-*.parquet` files a previous run left, so a run with fewer
    /// shards does not leave stale parts behind, except those a savepoint vouches for
    /// when a run resumes. Other files are left alone.
    fn prepare(&self, restored: Option<&Position>) -> Result<(), ConnectorError> {
        let keep: Vec<String> = match restored {
            Some(p) => p.decode()?,
            None => Vec::new(),
        };
        let tdir = self.table_dir();
        std::fs::create_dir_all(&tdir).map_err(|e| ConnectorError::io(&tdir, &e))?;
        let entries = std::fs::read_dir(&tdir).map_err(|e| ConnectorError::io(&tdir, &e))?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("part-")
                && name.ends_with(".parquet")
                && !keep.iter().any(|k| *k == name)
            {
                std::fs::remove_file(entry.path())
                    .map_err(|e| ConnectorError::io(&entry.path(), &e))?;
            }
        }
        Ok(())
    }

    fn open(&self, part: usize, schema: SchemaRef) -> Result<Box<dyn TableWriter>, ConnectorError> {
        Ok(Box::new(ParquetTableWriter::create(
            &self.dir,
            &self.table,
            part,
            schema,
            &self.config,
        )?))
    }

    /// The parts written so far: a resumed run removes any other (written after the
    /// savepoint by a run that then crashed).
    fn savepoint(&self) -> Result<Option<Position>, ConnectorError> {
        Position::encode(&self.parts()).map(Some)
    }

    fn openmetrics_file(&self) -> Option<PathBuf> {
        Some(self.dir.join(format!("{}.openmetrics.txt", self.table)))
    }
}

fn parquet_error(path: &Path, e: &parquet::errors::ParquetError) -> ConnectorError {
    let message = format!("{}: parquet: {e}", path.display());
    match e {
        parquet::errors::ParquetError::External(_) => ConnectorError::external(message),
        _ => ConnectorError::internal(message),
    }
}

/// Writes one part file of one table. The file appears under its final name only when
/// [`TableWriter::close`] succeeds.
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
    ) -> Result<Self, ConnectorError> {
        let tdir = dir.join(table);
        std::fs::create_dir_all(&tdir).map_err(|e| ConnectorError::io(&tdir, &e))?;
        let path = tdir.join(format!("part-{part:03}.parquet"));
        let tmp = tdir.join(format!(".part-{part:03}.parquet.tmp"));
        let file = File::create(&tmp).map_err(|e| ConnectorError::io(&tmp, &e))?;
        let compression = match config.compression {
            ParquetCompression::None => Compression::UNCOMPRESSED,
            ParquetCompression::Snappy => Compression::SNAPPY,
            ParquetCompression::Zstd => Compression::ZSTD(ZstdLevel::default()),
        };
        let props = WriterProperties::builder()
            .set_compression(compression)
            .set_max_row_group_row_count(Some(config.row_group_rows.max(1)))
            .build();
        let writer =
            ArrowWriter::try_new(file, schema, Some(props)).map_err(|e| parquet_error(&tmp, &e))?;
        Ok(ParquetTableWriter {
            writer,
            tmp,
            path,
            rows: 0,
        })
    }
}

impl TableWriter for ParquetTableWriter {
    fn write(&mut self, batch: &RecordBatch) -> Result<(), ConnectorError> {
        self.rows += batch.num_rows() as u64;
        self.writer
            .write(batch)
            .map_err(|e| parquet_error(&self.tmp, &e))
    }

    /// Finishes the file and moves it to its final name.
    fn close(self: Box<Self>) -> Result<u64, ConnectorError> {
        let ParquetTableWriter {
            writer,
            tmp,
            path,
            rows,
        } = *self;
        writer.close().map_err(|e| parquet_error(&tmp, &e))?;
        std::fs::rename(&tmp, &path).map_err(|e| ConnectorError::io(&path, &e))?;
        Ok(rows)
    }
}
