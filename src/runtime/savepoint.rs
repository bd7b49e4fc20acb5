//! Savepoints: a run stopped on request (`spanflow run` + Ctrl-C, or
//! [`RunOptions::stop`](super::RunOptions)) with a checkpoint directory keeps its open
//! state (traces still in session windows, the sampler's rate limiters, metric
//! intervals not yet closed, the watermark), the Kafka positions it read up to and the
//! list of Parquet parts it wrote, in `<dir>/savepoint.cbor`, written atomically.
//! The next run of the same job with the same directory restores all of it and reads
//! Kafka from the saved positions, so the two runs' outputs together equal one
//! uninterrupted run: no trace is lost, split or written twice.
//!
//! A run that ends normally (bounded input consumed) removes the savepoint: nothing is
//! left open.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Plan;
use super::io::Position;
use super::shard::NodeSnapshot;

/// Bumped when the layout changes; an older savepoint is refused with a clear message.
pub(crate) const VERSION: u32 = 4;

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
    /// The global stage's node instances (metric merges, rollups).
    pub global: Option<Vec<NodeSnapshot>>,
    /// Per source (by index): where it got to, as the source encoded it.
    pub positions: Vec<Option<Position>>,
    /// Per sink table (`<sink>/<table>`): what it keeps to undo writes made after the
    /// savepoint (Parquet: the part files written so far).
    pub sinks: Vec<(String, Position)>,
    /// Part numbers the next run starts from, so it never overwrites kept parts.
    pub next_part: usize,
}

/// The savepoint file in `dir`.
pub(crate) fn path(dir: &Path) -> PathBuf {
    dir.join("savepoint.cbor")
}

/// Loads the savepoint in `dir`, if any.
pub(crate) fn load(dir: &Path) -> Result<Option<Savepoint>, String> {
    let p = path(dir);
    let file = match std::fs::File::open(&p) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", p.display())),
    };
    let sp: Savepoint = ciborium::from_reader(std::io::BufReader::new(file))
        .map_err(|e| format!("{}: not a readable savepoint ({e})", p.display()))?;
    if sp.version != VERSION {
        return Err(format!(
            "{}: savepoint version {} is not supported by this spanflow (version {VERSION})",
            p.display(),
            sp.version
        ));
    }
    Ok(Some(sp))
}

/// Checks that `sp` belongs to this job and parallelism.
pub(crate) fn check(
    sp: &Savepoint,
    plan: &Plan,
    parallelism: usize,
    dir: &Path,
) -> Result<(), String> {
    if sp.job != plan.job || sp.fingerprint != plan.fingerprint {
        return Err(format!(
            "{} was written by a different job or job version (`{}`); restoring it into `{}` \
             would mix state of different computations. Remove the file to start fresh.",
            path(dir).display(),
            sp.job,
            plan.job
        ));
    }
    if sp.parallelism != parallelism {
        return Err(format!(
            "{} holds state for {} shards; run with --parallelism {} (or remove it to start fresh)",
            path(dir).display(),
            sp.parallelism,
            sp.parallelism
        ));
    }
    Ok(())
}

/// Writes `sp` atomically: a temp file, fsync, then rename over the old one.
pub(crate) fn write(dir: &Path, sp: &Savepoint) -> Result<(), String> {
    use std::io::Write;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let tmp = dir.join(".savepoint.cbor.tmp");
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?,
    );
    ciborium::into_writer(sp, &mut f).map_err(|e| format!("{}: {e}", tmp.display()))?;
    f.flush().map_err(|e| format!("{}: {e}", tmp.display()))?;
    f.get_ref()
        .sync_all()
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    let dest = path(dir);
    std::fs::rename(&tmp, &dest).map_err(|e| format!("{}: {e}", dest.display()))
}

/// Removes the savepoint of `dir` (the run finished; nothing is left open).
pub(crate) fn remove(dir: &Path) -> Result<(), String> {
    match std::fs::remove_file(path(dir)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("{}: {e}", path(dir).display())),
    }
}
