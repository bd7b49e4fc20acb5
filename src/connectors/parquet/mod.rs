//! `parquet` sink: one directory per table under an output directory.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Configuration of the `parquet` sink.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ParquetSinkConfig {
    /// Output directory; tables go to `<path>/<table>/part-<shard>.parquet` (and, with
    /// checkpoints, one more `part-<shard>-<n>.parquet` per checkpoint). Relative
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

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;
use std::sync::{Arc, Mutex};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::runtime::io::{ConnectorError, Position, Sink, SinkCheckpoint, TableWriter};

impl ParquetSinkConfig {
    /// The output directory, unless the command line overrides it.
    pub fn dir(&self, override_dir: Option<&Path>) -> PathBuf {
        override_dir.map_or_else(|| self.path.clone(), Path::to_path_buf)
    }
}

/// One part file: writer `part`'s file number `seq` (a writer starts a new file after
/// every checkpoint).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
struct PartFile {
    part: usize,
    seq: u64,
}

impl PartFile {
    /// `part-007.parquet` for a writer's first file (all a run without checkpoints
    /// writes), `part-007-00003.parquet` after.
    fn name(self) -> String {
        if self.seq == 0 {
            format!("part-{:03}.parquet", self.part)
        } else {
            format!("part-{:03}-{:05}.parquet", self.part, self.seq)
        }
    }

    /// Where it is written, hidden until it is committed.
    fn hidden(self) -> String {
        format!(".part-{:03}-{:05}.parquet.tmp", self.part, self.seq)
    }

    fn parse(name: &str) -> Option<Self> {
        let stem = name.strip_prefix("part-")?.strip_suffix(".parquet")?;
        let (part, seq) = match stem.split_once('-') {
            Some((p, s)) => (p.parse().ok()?, s.parse().ok()?),
            None => (stem.parse().ok()?, 0),
        };
        Some(PartFile { part, seq })
    }
}

/// One table of a `parquet` sink: `<dir>/<table>/part-<part>[-<n>].parquet`, one part
/// per shard (and per resumed run), one file per checkpoint.
#[derive(Debug, Clone)]
pub struct ParquetTable {
    dir: PathBuf,
    table: String,
    config: ParquetSinkConfig,
    /// Per part: the newest file committed by a checkpoint (a restore removes later
    /// ones).
    committed: Arc<Mutex<BTreeMap<usize, u64>>>,
    /// The member of a consumer group whose files these are (in a directory of its
    /// own in the table's).
    member: Option<String>,
}

impl ParquetTable {
    /// Table `table` of a sink writing under `dir`.
    pub fn new(dir: PathBuf, table: &str, config: ParquetSinkConfig) -> Self {
        ParquetTable {
            dir,
            table: table.to_owned(),
            config,
            committed: Arc::default(),
            member: None,
        }
    }

    /// The files of group member `member`, under `<table>/<member>/`.
    pub fn of_member(mut self, member: &str) -> Self {
        self.member = Some(member.to_owned());
        self
    }

    fn table_dir(&self) -> PathBuf {
        let t = self.dir.join(&self.table);
        match &self.member {
            Some(m) => t.join(m),
            None => t,
        }
    }

    fn committed(&self) -> std::sync::MutexGuard<'_, BTreeMap<usize, u64>> {
        // A writer that panicked holding it left a map that is still whole.
        self.committed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Renames the pre-committed files `pending` names to their visible names; those
    /// already renamed are skipped.
    fn publish(&self, pending: &[Position]) -> Result<(), ConnectorError> {
        let tdir = self.table_dir();
        let mut renamed = false;
        for p in pending {
            let file: PartFile = p.decode()?;
            let hidden = tdir.join(file.hidden());
            if hidden.exists() {
                let visible = tdir.join(file.name());
                match std::fs::rename(&hidden, &visible) {
                    Ok(()) => renamed = true,
                    // Published at the same moment by another member of the group.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound && visible.exists() => {}
                    Err(e) => return Err(ConnectorError::io(&visible, &e)),
                }
            }
            note_committed(&self.committed, file);
        }
        if renamed {
            File::open(&tdir)
                .and_then(|d| d.sync_all())
                .map_err(|e| ConnectorError::io(&tdir, &e))?;
        }
        Ok(())
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

    /// A fresh run removes the `part-*.parquet` files a previous run left (so a run
    /// with fewer shards leaves no stale parts behind); a restored one publishes the
    /// checkpoint's pending files and removes those written after it. Hidden
    /// unfinished files go too; other files are left alone.
    fn prepare(&self, restored: Option<&SinkCheckpoint>) -> Result<(), ConnectorError> {
        let tdir = self.table_dir();
        std::fs::create_dir_all(&tdir).map_err(|e| ConnectorError::io(&tdir, &e))?;
        *self.committed() = match restored.and_then(|r| r.committed.as_ref()) {
            Some(p) => p.decode()?,
            None => BTreeMap::new(),
        };
        if let Some(r) = restored {
            self.publish(&r.pending)?;
        }
        let committed = self.committed().clone();
        let entries = std::fs::read_dir(&tdir).map_err(|e| ConnectorError::io(&tdir, &e))?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let stale = if name.starts_with(".part-") && name.ends_with(".parquet.tmp") {
                true
            } else if let Some(f) = PartFile::parse(&name) {
                committed.get(&f.part).is_none_or(|&seq| f.seq > seq)
            } else {
                false
            };
            if stale {
                std::fs::remove_file(entry.path())
                    .map_err(|e| ConnectorError::io(&entry.path(), &e))?;
            }
        }
        Ok(())
    }

    fn open(&self, part: usize, schema: SchemaRef) -> Result<Box<dyn TableWriter>, ConnectorError> {
        let tdir = self.table_dir();
        std::fs::create_dir_all(&tdir).map_err(|e| ConnectorError::io(&tdir, &e))?;
        let mut w = ParquetTableWriter {
            tdir,
            file: PartFile { part, seq: 0 },
            open: None,
            schema,
            props: writer_properties(&self.config),
            rows: 0,
            committed: self.committed.clone(),
        };
        // The first file exists even if nothing is written: an empty table still has
        // its schema on disk.
        w.start()?;
        Ok(Box::new(w))
    }

    fn commit(&self, pending: &[Position]) -> Result<(), ConnectorError> {
        self.publish(pending)
    }

    fn commit_for(&self, member: &str, pending: &[Position]) -> Result<(), ConnectorError> {
        match &self.member {
            // A table of its own for the other member, so this one's committed files
            // are left alone.
            Some(_) => ParquetTable::new(self.dir.clone(), &self.table, self.config.clone())
                .of_member(member)
                .publish(pending),
            None => Ok(()),
        }
    }

    /// The newest committed file of every part: a restored run removes later ones
    /// (written after the checkpoint by a run that then crashed).
    fn checkpoint(&self) -> Result<Option<Position>, ConnectorError> {
        Position::encode(&*self.committed()).map(Some)
    }

    fn openmetrics_file(&self) -> Option<PathBuf> {
        Some(match &self.member {
            Some(m) => self.dir.join(format!("{}.{m}.openmetrics.txt", self.table)),
            None => self.dir.join(format!("{}.openmetrics.txt", self.table)),
        })
    }
}

/// Records `file` as its part's newest committed file, unless a newer one is.
fn note_committed(committed: &Mutex<BTreeMap<usize, u64>>, file: PartFile) {
    // A writer that panicked holding it left a map that is still whole.
    let mut committed = committed
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let seq = committed.entry(file.part).or_insert(file.seq);
    *seq = (*seq).max(file.seq);
}

fn writer_properties(config: &ParquetSinkConfig) -> WriterProperties {
    let compression = match config.compression {
        ParquetCompression::None => Compression::UNCOMPRESSED,
        ParquetCompression::Snappy => Compression::SNAPPY,
        ParquetCompression::Zstd => Compression::ZSTD(ZstdLevel::default()),
    };
    WriterProperties::builder()
        .set_compression(compression)
        .set_max_row_group_row_count(Some(config.row_group_rows.max(1)))
        .build()
}

fn parquet_error(path: &Path, e: &parquet::errors::ParquetError) -> ConnectorError {
    let message = format!("{}: parquet: {e}", path.display());
    match e {
        parquet::errors::ParquetError::External(_) => ConnectorError::external(message),
        _ => ConnectorError::internal(message),
    }
}

/// Writes the part files of one table for one shard. A file is written under a hidden
/// name and appears under its final name when the run ends ([`TableWriter::close`]) or
/// when the checkpoint it was pre-committed for is durable ([`Sink::commit`]).
pub struct ParquetTableWriter {
    tdir: PathBuf,
    /// The file being written, or the next one.
    file: PartFile,
    open: Option<ArrowWriter<File>>,
    schema: SchemaRef,
    props: WriterProperties,
    rows: u64,
    /// The table's committed files: a file made visible at close is one (a group
    /// member's last checkpoint, taken after its run closed its writers, lists it).
    committed: Arc<Mutex<BTreeMap<usize, u64>>>,
}

impl ParquetTableWriter {
    fn start(&mut self) -> Result<&mut ArrowWriter<File>, ConnectorError> {
        let w = match self.open.take() {
            Some(w) => w,
            None => {
                let tmp = self.tdir.join(self.file.hidden());
                let f = File::create(&tmp).map_err(|e| ConnectorError::io(&tmp, &e))?;
                ArrowWriter::try_new(f, self.schema.clone(), Some(self.props.clone()))
                    .map_err(|e| parquet_error(&tmp, &e))?
            }
        };
        Ok(self.open.insert(w))
    }

    /// Finishes the open file (footer written, data on disk) under its hidden name.
    fn finish(&mut self) -> Result<Option<PartFile>, ConnectorError> {
        let Some(w) = self.open.take() else {
            return Ok(None);
        };
        let tmp = self.tdir.join(self.file.hidden());
        let f = w.into_inner().map_err(|e| parquet_error(&tmp, &e))?;
        f.sync_all().map_err(|e| ConnectorError::io(&tmp, &e))?;
        let done = self.file;
        self.file.seq += 1;
        Ok(Some(done))
    }
}

impl TableWriter for ParquetTableWriter {
    fn write(&mut self, batch: &RecordBatch) -> Result<(), ConnectorError> {
        self.rows += batch.num_rows() as u64;
        let tmp = self.tdir.join(self.file.hidden());
        self.start()?
            .write(batch)
            .map_err(|e| parquet_error(&tmp, &e))
    }

    /// Finishes the open file; a new one starts at the next write.
    fn precommit(&mut self) -> Result<Option<Position>, ConnectorError> {
        match self.finish()? {
            Some(f) => Position::encode(&f).map(Some),
            None => Ok(None),
        }
    }

    /// Finishes the open file and moves it to its final name.
    fn close(mut self: Box<Self>) -> Result<u64, ConnectorError> {
        if let Some(f) = self.finish()? {
            let path = self.tdir.join(f.name());
            std::fs::rename(self.tdir.join(f.hidden()), &path)
                .map_err(|e| ConnectorError::io(&path, &e))?;
            note_committed(&self.committed, f);
        }
        Ok(self.rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_file_names_round_trip() {
        for f in [PartFile { part: 3, seq: 0 }, PartFile { part: 12, seq: 41 }] {
            assert_eq!(PartFile::parse(&f.name()), Some(f));
        }
        assert_eq!(PartFile::parse("part-003.parquet.tmp"), None);
        assert_eq!(PartFile::parse("notes.parquet"), None);
    }
}
