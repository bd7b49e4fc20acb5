//! Savepoints and their store.
//!
//! A run stopped on request (`spanflow run` + Ctrl-C, or
//! [`RunOptions::stop`](super::RunOptions)) with a checkpoint directory keeps its open
//! state (traces still in session windows, the sampler's held traces and rate-limit
//! offers, metric intervals not yet closed, the watermark), where each source got to
//! (its opaque [`Position`]) and what each sink needs to undo later writes (Parquet:
//! the parts written so far). The next run of the same job with the same directory
//! restores all of it, so the two runs' outputs together equal one uninterrupted run:
//! no trace is lost, split or written twice.
//!
//! On disk, each one is a directory `<dir>/chk-<id>/` holding `state.cbor` and a
//! `MANIFEST.json` written last (temp file, fsync, rename, fsync of the directory)
//! that names the state's size and checksum: a directory without a manifest, or whose
//! state does not match it (a crash while writing, a damaged disk), is skipped with a
//! warning and the one before it is used. The newest [`KEEP`] are kept.
//!
//! A run that ends normally (bounded input consumed) removes them: nothing is left
//! open.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Plan;
use super::io::Position;
use super::shard::NodeSnapshot;

/// Bumped when the layout of the state changes; an older one is refused with a clear
/// message.
pub(crate) const VERSION: u32 = 7;

/// Savepoints kept in a directory (the newest first).
pub(crate) const KEEP: usize = 3;

const MANIFEST: &str = "MANIFEST.json";
/// Written once every sink has committed what the checkpoint pre-committed.
const COMMITTED: &str = "COMMITTED";
const STATE: &str = "state.cbor";
const PREFIX: &str = "chk-";

/// What a stopped run leaves for the next one.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Savepoint {
    pub version: u32,
    /// Job name and a fingerprint of its operators and sinks: state is only restored
    /// into the same computation.
    pub job: String,
    pub fingerprint: u64,
    /// Shards (state is partitioned by trace id over them).
    pub parallelism: usize,
    /// The router's watermark when the run stopped.
    pub watermark: u64,
    /// Per shard, the state of each node instance it runs.
    pub shards: Vec<Vec<NodeSnapshot>>,
    /// Per shard, the feedback it received after its snapshot that the global stage
    /// sent before its own: delivered again to a restored shard.
    pub feedback: Vec<super::checkpoint::FeedbackLog>,
    /// The global stage's node instances (metric merges, rollups).
    pub global: Option<Vec<NodeSnapshot>>,
    /// Per source (by index): where it got to, as the source encoded it.
    pub positions: Vec<Option<Position>>,
    /// Per sink table (`<sink>/<table>`): what it committed (a restored run removes
    /// later writes) and what it pre-committed for this checkpoint (a restored run
    /// publishes it).
    pub sinks: Vec<(String, super::io::SinkCheckpoint)>,
    /// Part numbers the next run starts from, so it never overwrites kept parts.
    pub next_part: usize,
}

/// What `MANIFEST.json` says about a savepoint: enough to check its state file before
/// trusting it, and to see at a glance whose it is.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Manifest {
    version: u32,
    id: u64,
    job: String,
    fingerprint: u64,
    parallelism: usize,
    watermark: u64,
    state_bytes: u64,
    state_crc32: u32,
}

/// Errors of the savepoint store.
#[derive(Debug, thiserror::Error)]
pub enum SavepointError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A savepoint that cannot be used for this run.
    #[error("{0}")]
    Refused(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SavepointError + '_ {
    move |source| SavepointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The savepoints of one directory.
pub(crate) struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn new(dir: &Path) -> Self {
        Store {
            dir: dir.to_path_buf(),
        }
    }

    /// Savepoint directories by id, newest first.
    fn ids(&self) -> Result<Vec<(u64, PathBuf)>, SavepointError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&self.dir)(e)),
        };
        let mut ids: Vec<(u64, PathBuf)> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name();
                let id = name.to_str()?.strip_prefix(PREFIX)?.parse().ok()?;
                Some((id, e.path()))
            })
            .collect();
        ids.sort_by_key(|(id, _)| std::cmp::Reverse(*id));
        Ok(ids)
    }

    /// The newest complete savepoint, skipping (with a warning) any that is partial or
    /// damaged.
    pub fn latest(&self) -> Result<Option<(PathBuf, Savepoint)>, SavepointError> {
        let old = self.dir.join("savepoint.cbor");
        if old.exists() {
            return Err(SavepointError::Refused(format!(
                "{} was written by an older spanflow; remove it to start fresh",
                old.display()
            )));
        }
        for (_, path) in self.ids()? {
            match read(&path) {
                Ok(sp) => return Ok(Some((path, sp))),
                Err(Skip::Damaged(why)) => {
                    tracing::warn!("skipping savepoint {}: {why}", path.display());
                    eprintln!(
                        "warning: skipping savepoint {}: {why}; using the one before it",
                        path.display()
                    );
                }
                Err(Skip::Refused(e)) => return Err(e),
            }
        }
        Ok(None)
    }

    /// Writes `sp` as the newest savepoint and drops all but the newest `keep`; returns
    /// its directory and the size of its state.
    pub fn write(&self, sp: &Savepoint, keep: usize) -> Result<(PathBuf, u64), SavepointError> {
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let ids = self.ids()?;
        let id = ids.first().map_or(1, |(id, _)| id + 1);
        let path = self.dir.join(format!("{PREFIX}{id:08}"));
        std::fs::create_dir_all(&path).map_err(io(&path))?;
        // Streamed into the file: a copy of the whole state in memory would cost as
        // much again in fresh pages.
        let (state_bytes, state_crc32) = write_durably_with(&path.join(STATE), |w| {
            ciborium::into_writer(sp, w).map_err(|e| match e {
                ciborium::ser::Error::Io(e) => e,
                e => std::io::Error::other(format!("cannot encode the savepoint (a bug): {e}")),
            })
        })?;
        let manifest = Manifest {
            version: VERSION,
            id,
            job: sp.job.clone(),
            fingerprint: sp.fingerprint,
            parallelism: sp.parallelism,
            watermark: sp.watermark,
            state_bytes,
            state_crc32,
        };
        let text = serde_json::to_vec_pretty(&manifest).map_err(|e| {
            SavepointError::Refused(format!("cannot encode the manifest (a bug): {e}"))
        })?;
        // Last: a savepoint exists once its manifest does.
        write_durably(&path.join(MANIFEST), &text)?;
        sync_dir(&self.dir)?;
        for (_, old) in ids.iter().skip(keep.max(1) - 1) {
            std::fs::remove_dir_all(old).map_err(io(old))?;
        }
        Ok((path, state_bytes))
    }

    /// Records that the sinks committed what the savepoint at `path` pre-committed, so
    /// that a restore does not commit it again.
    pub fn mark_committed(&self, path: &Path) -> Result<(), SavepointError> {
        write_durably(&path.join(COMMITTED), b"")
    }

    /// Removes every savepoint (the run finished; nothing is left open).
    pub fn clear(&self) -> Result<(), SavepointError> {
        for (_, path) in self.ids()? {
            std::fs::remove_dir_all(&path).map_err(io(&path))?;
        }
        Ok(())
    }
}

enum Skip {
    /// Not usable, but an older one may be.
    Damaged(String),
    /// Usable by no run of this spanflow.
    Refused(SavepointError),
}

fn read(path: &Path) -> Result<Savepoint, Skip> {
    let mpath = path.join(MANIFEST);
    let text = std::fs::read(&mpath)
        .map_err(|e| Skip::Damaged(format!("no readable {MANIFEST} ({e}): written partially")))?;
    let m: Manifest = serde_json::from_slice(&text)
        .map_err(|e| Skip::Damaged(format!("{MANIFEST} is not valid ({e})")))?;
    if m.version != VERSION {
        return Err(Skip::Refused(SavepointError::Refused(format!(
            "{}: savepoint version {} is not supported by this spanflow (version {VERSION}); \
             remove it to start fresh",
            path.display(),
            m.version
        ))));
    }
    let spath = path.join(STATE);
    let state = std::fs::read(&spath).map_err(|e| Skip::Damaged(format!("{STATE}: {e}")))?;
    if state.len() as u64 != m.state_bytes || crc32fast::hash(&state) != m.state_crc32 {
        return Err(Skip::Damaged(format!(
            "{STATE} does not match its manifest ({} bytes, {} expected, or another checksum)",
            state.len(),
            m.state_bytes
        )));
    }
    let mut sp: Savepoint = ciborium::from_reader(state.as_slice())
        .map_err(|e| Skip::Damaged(format!("{STATE} cannot be decoded ({e})")))?;
    let published = path.join(COMMITTED).exists();
    for (_, s) in &mut sp.sinks {
        s.published = published;
    }
    if sp.version != VERSION {
        return Err(Skip::Damaged(format!(
            "{STATE} has version {}, its manifest {VERSION}",
            sp.version
        )));
    }
    Ok(sp)
}

/// Writes `bytes` to `dest` atomically: a temp file, fsync, then rename over `dest`.
fn write_durably(dest: &Path, bytes: &[u8]) -> Result<(), SavepointError> {
    let tmp = dest.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, dest).map_err(io(dest))?;
    if let Some(parent) = dest.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

/// Passes writes on, counting their bytes and their CRC-32 (for the manifest).
struct Checksummed<W> {
    inner: W,
    crc: crc32fast::Hasher,
    len: u64,
}

impl<W: std::io::Write> std::io::Write for Checksummed<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        let done = buf.get(..n).unwrap_or(buf);
        self.crc.update(done);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Like [`write_durably`], with the content written by `fill`; returns its size and
/// CRC-32.
fn write_durably_with(
    dest: &Path,
    fill: impl FnOnce(&mut Checksummed<std::io::BufWriter<std::fs::File>>) -> std::io::Result<()>,
) -> Result<(u64, u32), SavepointError> {
    let tmp = dest.with_extension("tmp");
    let f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    let mut w = Checksummed {
        inner: std::io::BufWriter::with_capacity(1 << 20, f),
        crc: crc32fast::Hasher::new(),
        len: 0,
    };
    fill(&mut w).map_err(io(&tmp))?;
    let (len, crc) = (w.len, w.crc.finalize());
    let f = w.inner.into_inner().map_err(|e| SavepointError::Io {
        path: tmp.clone(),
        source: e.into_error(),
    })?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, dest).map_err(io(dest))?;
    if let Some(parent) = dest.parent() {
        sync_dir(parent)?;
    }
    Ok((len, crc))
}

/// Makes a directory's entries (a rename) durable.
fn sync_dir(dir: &Path) -> Result<(), SavepointError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

/// Checks that `sp` belongs to this job. Another parallelism is fine: its state is
/// split by trace over this run's shards.
pub(crate) fn check(sp: &Savepoint, at: &Path, plan: &Plan) -> Result<(), SavepointError> {
    if sp.job != plan.job || sp.fingerprint != plan.fingerprint {
        return Err(SavepointError::Refused(format!(
            "{} was written by a different job or job version (`{}`); restoring it into `{}` \
             would mix state of different computations. Remove it to start fresh.",
            at.display(),
            sp.job,
            plan.job
        )));
    }
    if sp.shards.len() != sp.parallelism || sp.parallelism == 0 {
        return Err(SavepointError::Refused(format!(
            "{} claims {} shards but holds the state of {}",
            at.display(),
            sp.parallelism,
            sp.shards.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn savepoint(watermark: u64) -> Savepoint {
        Savepoint {
            version: VERSION,
            job: "j".into(),
            fingerprint: 7,
            parallelism: 2,
            watermark,
            shards: vec![Vec::new(), Vec::new()],
            feedback: vec![Vec::new(), Vec::new()],
            global: None,
            positions: vec![None],
            sinks: Vec::new(),
            next_part: 2,
        }
    }

    /// A checkpoint whose commits finished says so to the run that restores it.
    #[test]
    fn a_committed_checkpoint_is_restored_as_published() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let mut sp = savepoint(1);
        sp.sinks = vec![(
            "out/traces".into(),
            super::super::io::SinkCheckpoint::default(),
        )];
        let (path, _) = store.write(&sp, KEEP).unwrap();
        let published = |store: &Store| store.latest().unwrap().unwrap().1.sinks[0].1.published;
        assert!(!published(&store));
        store.mark_committed(&path).unwrap();
        assert!(published(&store));
    }

    #[test]
    fn the_newest_complete_savepoint_wins_and_only_the_last_ones_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        assert!(store.latest().unwrap().is_none());
        for wm in 1..=5 {
            store.write(&savepoint(wm), KEEP).unwrap();
        }
        let (path, sp) = store.latest().unwrap().unwrap();
        assert_eq!(sp.watermark, 5);
        assert!(path.ends_with("chk-00000005"), "{}", path.display());
        assert_eq!(store.ids().unwrap().len(), KEEP);
        store.clear().unwrap();
        assert!(store.latest().unwrap().is_none());
    }

    #[test]
    fn a_partial_or_damaged_savepoint_is_skipped_for_the_one_before() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        store.write(&savepoint(1), KEEP).unwrap();
        let second = store.write(&savepoint(2), KEEP).unwrap().0;
        // One bit flipped in the state.
        let state = second.join(STATE);
        let mut bytes = std::fs::read(&state).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&state, bytes).unwrap();
        assert_eq!(store.latest().unwrap().unwrap().1.watermark, 1);
        // A crash before the manifest: a newer directory with a state only.
        let third = store.write(&savepoint(3), KEEP).unwrap().0;
        std::fs::remove_file(third.join(MANIFEST)).unwrap();
        assert_eq!(store.latest().unwrap().unwrap().1.watermark, 1);
    }

    #[test]
    fn another_version_or_the_old_single_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let path = store.write(&savepoint(1), KEEP).unwrap().0;
        let m = path.join(MANIFEST);
        let text = std::fs::read_to_string(&m).unwrap();
        std::fs::write(
            &m,
            text.replace(&format!("\"version\": {VERSION}"), "\"version\": 1"),
        )
        .unwrap();
        let e = store.latest().unwrap_err().to_string();
        assert!(e.contains("version 1 is not supported"), "{e}");

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("savepoint.cbor"), b"x").unwrap();
        let e = Store::new(dir.path()).latest().unwrap_err().to_string();
        assert!(e.contains("older spanflow"), "{e}");
    }
}
