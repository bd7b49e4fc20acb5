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
//! On disk, each one is a directory `<dir>/chk-<id>/` holding `state.bin` and a
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
use super::shard::{DeferredNode, NodeSnapshot};

/// Bumped when the layout of the state changes; an older one is refused with a clear
/// message.
pub(crate) const VERSION: u32 = 11;

/// Savepoints kept in a directory (the newest first).
pub(crate) const KEEP: usize = 3;

const MANIFEST: &str = "MANIFEST.json";
/// Written once every sink has committed what the checkpoint pre-committed.
const COMMITTED: &str = "COMMITTED";
const STATE: &str = "state.bin";
const PREFIX: &str = "chk-";

/// What a stopped run leaves for the next one. `N` is a node instance's state: in
/// memory after a read ([`NodeSnapshot`]), still to encode when written
/// ([`DeferredNode`]), a reference to its bytes in the file ([`NodeRef`]).
///
/// `state.bin` is every node's encoded state, one after the other (shards in order,
/// then the global stage), then this struct as CBOR with [`NodeRef`]s, then the CBOR's
/// length (u64 LE): the states are streamed into the file as they are encoded, so a
/// checkpoint never holds a second, encoded copy of the buffered spans in memory.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Savepoint<N = NodeSnapshot> {
    pub version: u32,
    /// Job name and a fingerprint of its operators and sinks: state is only restored
    /// into the same computation.
    pub job: String,
    pub fingerprint: u64,
    /// Shards (state is partitioned by trace id over them).
    pub parallelism: usize,
    /// The router's watermark when the run stopped.
    pub watermark: u64,
    /// The highest watermark any split had reached: a restored run that reads nothing
    /// more passes it before its final watermark, as the run would have.
    #[serde(default)]
    pub high: u64,
    /// Per shard, the state of each node instance it runs.
    pub shards: Vec<Vec<N>>,
    /// Per shard, the feedback it received after its snapshot that the global stage
    /// sent before its own: delivered again to a restored shard.
    pub feedback: Vec<super::checkpoint::FeedbackLog>,
    /// The global stage's node instances (metric merges, rollups).
    pub global: Option<Vec<N>>,
    /// Per source (by index): where it got to, as the source encoded it.
    pub positions: Vec<Option<Position>>,
    /// Per sink table (`<sink>/<table>`): what it committed (a restored run removes
    /// later writes) and what it pre-committed for this checkpoint (a restored run
    /// publishes it).
    pub sinks: Vec<(String, super::io::SinkCheckpoint)>,
    /// Part numbers the next run starts from, so it never overwrites kept parts.
    pub next_part: usize,
}

/// Where a node instance's state is in `state.bin`: the next `len` bytes after the
/// previous node's.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct NodeRef {
    node: String,
    len: u64,
    watermarks: (u64, u64),
}

impl<N> Savepoint<N> {
    /// The same savepoint with each node's state turned by `f` (shards in order, then
    /// the global stage: the order of the states in `state.bin`).
    fn try_map<M, E>(self, mut f: impl FnMut(N) -> Result<M, E>) -> Result<Savepoint<M>, E> {
        let shards = self
            .shards
            .into_iter()
            .map(|nodes| nodes.into_iter().map(&mut f).collect())
            .collect::<Result<_, E>>()?;
        let global = self
            .global
            .map(|nodes| nodes.into_iter().map(&mut f).collect())
            .transpose()?;
        Ok(Savepoint {
            version: self.version,
            job: self.job,
            fingerprint: self.fingerprint,
            parallelism: self.parallelism,
            watermark: self.watermark,
            high: self.high,
            shards,
            feedback: self.feedback,
            global,
            positions: self.positions,
            sinks: self.sinks,
            next_part: self.next_part,
        })
    }
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

    /// Writes `sp` as the newest savepoint, encoding each node's state straight into
    /// the file, and drops all but the newest `keep`; returns its directory and the
    /// size of its state.
    pub fn write(
        &self,
        sp: Savepoint<DeferredNode>,
        keep: usize,
    ) -> Result<(PathBuf, u64), SavepointError> {
        self.write_with(sp, keep, |_| Ok(()), |_| false)
    }

    /// Whether savepoint `id` is complete (its manifest exists).
    pub fn is_complete(&self, id: u64) -> bool {
        self.dir
            .join(format!("{PREFIX}{id:08}"))
            .join(MANIFEST)
            .exists()
    }

    /// Savepoint `id`, which must be complete and readable.
    pub fn read_id(&self, id: u64) -> Result<(PathBuf, Savepoint), SavepointError> {
        let path = self.dir.join(format!("{PREFIX}{id:08}"));
        match read(&path) {
            Ok(sp) => Ok((path, sp)),
            Err(Skip::Damaged(why)) => Err(SavepointError::Refused(format!(
                "checkpoint {} cannot be read: {why}",
                path.display()
            ))),
            Err(Skip::Refused(e)) => Err(e),
        }
    }

    /// [`Store::write`], calling `before_manifest` with the new id once the state is
    /// durable and before the manifest makes the savepoint exist, and keeping older
    /// savepoints that are `pinned` besides the newest `keep`.
    pub fn write_with(
        &self,
        sp: Savepoint<DeferredNode>,
        keep: usize,
        before_manifest: impl FnOnce(u64) -> Result<(), SavepointError>,
        pinned: impl Fn(u64) -> bool,
    ) -> Result<(PathBuf, u64), SavepointError> {
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let ids = self.ids()?;
        let id = ids.first().map_or(1, |(id, _)| id + 1);
        let path = self.dir.join(format!("{PREFIX}{id:08}"));
        std::fs::create_dir_all(&path).map_err(io(&path))?;
        let (job, fingerprint, parallelism, watermark) =
            (sp.job.clone(), sp.fingerprint, sp.parallelism, sp.watermark);
        let spath = path.join(STATE);
        let (state_bytes, state_crc32) = write_durably_with(&spath, |w| {
            let header = sp.try_map(|n| {
                let (node, watermarks) = (n.node.clone(), n.watermarks);
                let len = n.write_to(w).map_err(|e| match w.get_mut().error.take() {
                    // The file failed, not the encoding.
                    Some(io) => Fail::Io(io),
                    None => Fail::Encode(e.to_string()),
                })?;
                Ok::<_, Fail>(NodeRef {
                    node,
                    len,
                    watermarks,
                })
            })?;
            let mut cbor = Vec::new();
            ciborium::into_writer(&header, &mut cbor)
                .map_err(|e| Fail::Encode(format!("cannot encode the savepoint (a bug): {e}")))?;
            w.write_all(&cbor).map_err(Fail::Io)?;
            w.write_all(&(cbor.len() as u64).to_le_bytes())
                .map_err(Fail::Io)
        })
        .map_err(|e| match e {
            Fail::Io(source) => SavepointError::Io {
                path: spath.clone(),
                source,
            },
            Fail::Encode(m) => SavepointError::Refused(m),
        })?;
        let manifest = Manifest {
            version: VERSION,
            id,
            job,
            fingerprint,
            parallelism,
            watermark,
            state_bytes,
            state_crc32,
        };
        let text = serde_json::to_vec_pretty(&manifest).map_err(|e| {
            SavepointError::Refused(format!("cannot encode the manifest (a bug): {e}"))
        })?;
        before_manifest(id)?;
        // Last: a savepoint exists once its manifest does.
        write_durably(&path.join(MANIFEST), &text)?;
        sync_dir(&self.dir).map_err(io(&self.dir))?;
        for (old_id, old) in ids.iter().skip(keep.max(1) - 1) {
            if !pinned(*old_id) {
                std::fs::remove_dir_all(old).map_err(io(old))?;
            }
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
    let mut sp = split(&state).map_err(|why| Skip::Damaged(format!("{STATE} {why}")))?;
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

/// The savepoint in `state` (see [`Savepoint`] for the layout), each node's state
/// copied out of it.
fn split(state: &[u8]) -> Result<Savepoint, String> {
    let n = state.len();
    let (rest, len) = state
        .split_at_checked(n.saturating_sub(8))
        .filter(|_| n >= 8)
        .ok_or("is too short")?;
    let len = u64::from_le_bytes(len.try_into().map_err(|_| "is too short")?);
    let at = usize::try_from(len)
        .ok()
        .and_then(|l| rest.len().checked_sub(l))
        .ok_or("has a header longer than itself")?;
    let (mut states, header) = rest.split_at(at);
    let sp: Savepoint<NodeRef> =
        ciborium::from_reader(header).map_err(|e| format!("cannot be decoded ({e})"))?;
    let sp = sp.try_map(|r| {
        let len = usize::try_from(r.len).unwrap_or(usize::MAX);
        let (state, rest) = states
            .split_at_checked(len)
            .ok_or_else(|| format!("ends inside the state of `{}`", r.node))?;
        states = rest;
        Ok::<_, String>(NodeSnapshot {
            node: r.node,
            state: state.to_vec(),
            watermarks: r.watermarks,
        })
    })?;
    if !states.is_empty() {
        return Err(format!(
            "has {} bytes of state no node claims",
            states.len()
        ));
    }
    Ok(sp)
}

/// Writes `bytes` to `dest` atomically: a temp file, fsync, then rename over `dest`.
pub(crate) fn write_durably(dest: &Path, bytes: &[u8]) -> Result<(), SavepointError> {
    let tmp = dest.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, dest).map_err(io(dest))?;
    if let Some(parent) = dest.parent() {
        sync_dir(parent).map_err(io(parent))?;
    }
    Ok(())
}

/// Why writing a state file failed.
enum Fail {
    Io(std::io::Error),
    /// A state or the header could not be encoded.
    Encode(String),
}

/// Passes writes on, counting their bytes and their CRC-32 (for the manifest), and
/// keeping the first error of the file (so that a failed state encoding can tell a
/// full disk from a bug).
struct Checksummed<W> {
    inner: W,
    crc: crc32fast::Hasher,
    len: u64,
    error: Option<std::io::Error>,
}

impl<W: std::io::Write> std::io::Write for Checksummed<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = match self.inner.write(buf) {
            Ok(n) => n,
            Err(e) => {
                if self.error.is_none() {
                    self.error = Some(std::io::Error::new(e.kind(), e.to_string()));
                }
                return Err(e);
            }
        };
        let done = buf.get(..n).unwrap_or(buf);
        self.crc.update(done);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The writer a state file is filled through: buffered in front of the checksum, so
/// the CRC runs over large chunks however small the encoder's writes are.
type StateWriter = std::io::BufWriter<Checksummed<std::fs::File>>;

/// Like [`write_durably`], with the content written by `fill`; returns its size and
/// CRC-32.
fn write_durably_with(
    dest: &Path,
    fill: impl FnOnce(&mut StateWriter) -> Result<(), Fail>,
) -> Result<(u64, u32), Fail> {
    let tmp = dest.with_extension("tmp");
    let f = std::fs::File::create(&tmp).map_err(Fail::Io)?;
    let mut w = std::io::BufWriter::with_capacity(
        1 << 20,
        Checksummed {
            inner: f,
            crc: crc32fast::Hasher::new(),
            len: 0,
            error: None,
        },
    );
    fill(&mut w)?;
    let c = w.into_inner().map_err(|e| Fail::Io(e.into_error()))?;
    let (len, crc) = (c.len, c.crc.finalize());
    c.inner.sync_all().map_err(Fail::Io)?;
    std::fs::rename(&tmp, dest).map_err(Fail::Io)?;
    if let Some(parent) = dest.parent() {
        sync_dir(parent).map_err(Fail::Io)?;
    }
    Ok((len, crc))
}

/// Makes a directory's entries (a rename) durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir).and_then(|d| d.sync_all())
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

    fn savepoint<N>(watermark: u64) -> Savepoint<N> {
        Savepoint {
            version: VERSION,
            job: "j".into(),
            fingerprint: 7,
            parallelism: 2,
            watermark,
            high: watermark,
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
        let (path, _) = store.write(sp, KEEP).unwrap();
        let published = |store: &Store| store.latest().unwrap().unwrap().1.sinks[0].1.published;
        assert!(!published(&store));
        store.mark_committed(&path).unwrap();
        assert!(published(&store));
    }

    /// Every node's state comes back from the one file, in its shard and in order,
    /// whether it was encoded already or encoded while written.
    #[test]
    fn node_states_are_streamed_into_the_file_and_read_back_in_place() {
        use spanflow_operators::operator::{DeferredState, decode_state, encode_state};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let node = |name: &str, state: DeferredState, wm: u64| DeferredNode {
            node: name.into(),
            state,
            watermarks: (wm, wm - 1),
        };
        let later: Vec<String> = (0..1000).map(|i| format!("span {i}")).collect();
        let mut sp = savepoint(9);
        sp.shards = vec![
            vec![
                node("a", DeferredState::later(later.clone()), 10),
                node("b", DeferredState::ready(Vec::new()), 11),
            ],
            vec![
                node(
                    "a",
                    DeferredState::ready(encode_state(&vec![7u32]).unwrap()),
                    12,
                ),
                node("b", DeferredState::ready(vec![1, 2, 3]), 13),
            ],
        ];
        sp.global = Some(vec![node("m", DeferredState::later(42u64), 14)]);
        let (_, bytes) = store.write(sp, KEEP).unwrap();
        let (_, back) = store.latest().unwrap().unwrap();
        assert_eq!(
            bytes,
            std::fs::metadata(dir.path().join("chk-00000001").join(STATE))
                .unwrap()
                .len()
        );
        let names: Vec<Vec<(&str, (u64, u64))>> = back
            .shards
            .iter()
            .map(|s| s.iter().map(|n| (n.node.as_str(), n.watermarks)).collect())
            .collect();
        assert_eq!(
            names,
            [
                [("a", (10, 9)), ("b", (11, 10))],
                [("a", (12, 11)), ("b", (13, 12))]
            ]
        );
        assert_eq!(
            decode_state::<Vec<String>>(&back.shards[0][0].state).unwrap(),
            later
        );
        assert!(back.shards[0][1].state.is_empty());
        assert_eq!(
            decode_state::<Vec<u32>>(&back.shards[1][0].state).unwrap(),
            [7]
        );
        assert_eq!(back.shards[1][1].state, [1, 2, 3]);
        let global = back.global.unwrap();
        assert_eq!(global[0].node, "m");
        assert_eq!(decode_state::<u64>(&global[0].state).unwrap(), 42);
    }

    #[test]
    fn the_newest_complete_savepoint_wins_and_only_the_last_ones_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        assert!(store.latest().unwrap().is_none());
        for wm in 1..=5 {
            store.write(savepoint(wm), KEEP).unwrap();
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
        store.write(savepoint(1), KEEP).unwrap();
        let second = store.write(savepoint(2), KEEP).unwrap().0;
        // One bit flipped in the state.
        let state = second.join(STATE);
        let mut bytes = std::fs::read(&state).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&state, bytes).unwrap();
        assert_eq!(store.latest().unwrap().unwrap().1.watermark, 1);
        // A crash before the manifest: a newer directory with a state only.
        let third = store.write(savepoint(3), KEEP).unwrap().0;
        std::fs::remove_file(third.join(MANIFEST)).unwrap();
        assert_eq!(store.latest().unwrap().unwrap().1.watermark, 1);
    }

    #[test]
    fn another_version_or_the_old_single_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let path = store.write(savepoint(1), KEEP).unwrap().0;
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
