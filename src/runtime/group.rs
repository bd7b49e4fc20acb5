//! One job run as several instances that share a Kafka consumer group: the state of
//! each input partition is checkpointed with it and restored by whichever instance
//! the group gives the partition to (Kafka Streams' answer to the same problem; Kafka
//! is the only coordinator).
//!
//! Layout of the checkpoint root every instance can reach:
//!
//! - `members/<instance>/chk-N/`: each instance's checkpoints, as a single run writes
//!   them ([`Store`]); a member's source position lists only the partitions it owned.
//! - `partitions/<topic>/<partition>.json`: the partition's pointer, the checkpoints
//!   that may hold its newest state, oldest first. A checkpoint writes the pointers of
//!   every partition it holds *before* its manifest, listing itself after the newest
//!   complete checkpoint the pointer had; a restore takes the newest listed checkpoint
//!   that is complete. So a member killed between the two leaves every pointer on its
//!   previous checkpoint, and one killed after leaves every pointer on this one: all
//!   partitions of a checkpoint move together or not at all.
//!
//! A checkpoint's state that belongs to no trace (metric partials, the merge stage,
//! counters) travels with its lowest partition (the *anchor*): whoever restores that
//! partition from it takes that state too, so it is restored exactly once.
//!
//! When the group takes partitions from a member, the member's source records them in
//! the [`Fence`] from the rebalance callback, before the partitions are released: a
//! checkpoint of the member that still holds one of them is not completed after that
//! (it fails and the member restarts), and the pointers stay where the new owner will
//! read them. The member then restarts from its checkpoints with its new assignment,
//! and writes after its last checkpoint are rolled back, as after a crash.
//!
//! Operations on the root are few and whole-file (read a pointer, replace a pointer,
//! list pointers, write and read a checkpoint), so an object store with atomic puts
//! can replace the directory.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use super::io::Position;
use super::savepoint::{self, Savepoint, SavepointError, Store};
use super::shard::Taken;
use super::{Plan, Restore};

/// An input partition: topic and partition number.
pub type PartitionKey = (String, i32);

/// Partitions taken from a member since its run started, shared by its source (which
/// records them when the group revokes them) and its checkpoints (which refuse to
/// complete while holding one).
#[derive(Debug, Default)]
pub struct Fence {
    revoked: Mutex<BTreeSet<PartitionKey>>,
}

impl Fence {
    /// Records partitions the group takes away. Waits for a checkpoint being
    /// completed: once this returns, no checkpoint of this member holding them will
    /// be.
    pub fn revoke(&self, partitions: impl IntoIterator<Item = PartitionKey>) {
        let mut r = self.lock();
        r.extend(partitions);
    }

    /// Whether any partition was revoked since [`Fence::clear`].
    pub fn any(&self) -> bool {
        !self.lock().is_empty()
    }

    /// Starts a run: nothing is revoked from it yet.
    pub fn clear(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> MutexGuard<'_, BTreeSet<PartitionKey>> {
        // A panic while holding it left a set that is still whole.
        self.revoked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What a run needs to take part in a group.
#[derive(Debug)]
pub struct GroupRun {
    /// This member's name, unique in the group.
    pub instance: String,
    /// The checkpoint root shared by the members.
    pub root: PathBuf,
    /// Index of the group's (Kafka) source in the plan.
    pub source: usize,
    /// Partitions revoked while the run goes on.
    pub fence: Arc<Fence>,
    /// The partitions the group assigned this member for the next run.
    assigned: Mutex<Vec<PartitionKey>>,
}

impl GroupRun {
    /// A member `instance` of a group whose checkpoints are under `root`, reading the
    /// group's partitions with the plan's source `source`.
    pub fn new(instance: &str, root: &Path, source: usize, fence: Arc<Fence>) -> Self {
        GroupRun {
            instance: instance.to_owned(),
            root: root.to_path_buf(),
            source,
            fence,
            assigned: Mutex::new(Vec::new()),
        }
    }

    /// Sets the partitions the next run reads (the group's assignment).
    pub fn set_assigned(&self, mut partitions: Vec<PartitionKey>) {
        partitions.sort();
        partitions.dedup();
        *self
            .assigned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = partitions;
    }

    /// The partitions of the next run.
    pub fn assigned(&self) -> Vec<PartitionKey> {
        self.assigned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// This member's own checkpoints.
    pub(crate) fn store(&self) -> Store {
        Store::new(&member_dir(&self.root, &self.instance))
    }

    fn index(&self) -> PartitionIndex {
        PartitionIndex {
            dir: self.root.join("partitions"),
        }
    }
}

/// Where member `instance` keeps its checkpoints.
pub fn member_dir(root: &Path, instance: &str) -> PathBuf {
    root.join("members").join(instance)
}

/// The checkpoints that may hold a partition's newest state, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Pointer {
    candidates: Vec<Candidate>,
}

/// One member's checkpoint of a partition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Candidate {
    member: String,
    checkpoint: u64,
    /// This partition carries the checkpoint's state of no trace.
    anchor: bool,
}

/// The pointers of a group's partitions.
struct PartitionIndex {
    dir: PathBuf,
}

impl PartitionIndex {
    fn path(&self, p: &PartitionKey) -> PathBuf {
        self.dir.join(sanitize(&p.0)).join(format!("{}.json", p.1))
    }

    fn read(&self, p: &PartitionKey) -> Result<Pointer, SavepointError> {
        let path = self.path(p);
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                SavepointError::Refused(format!("{} is damaged: {e}", path.display()))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Pointer::default()),
            Err(e) => Err(SavepointError::Io { path, source: e }),
        }
    }

    fn write(&self, p: &PartitionKey, pointer: &Pointer) -> Result<(), SavepointError> {
        let path = self.path(p);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| SavepointError::Io {
                path: dir.to_path_buf(),
                source: e,
            })?;
        }
        let text = serde_json::to_vec_pretty(pointer)
            .map_err(|e| SavepointError::Refused(format!("cannot encode a pointer: {e}")))?;
        savepoint::write_durably(&path, &text)
    }

    /// Checkpoint ids of `member` that some pointer lists.
    fn referenced(&self, member: &str) -> Result<BTreeSet<u64>, SavepointError> {
        let mut ids = BTreeSet::new();
        let topics = match std::fs::read_dir(&self.dir) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ids),
            Err(e) => {
                return Err(SavepointError::Io {
                    path: self.dir.clone(),
                    source: e,
                });
            }
        };
        for t in topics.flatten() {
            let Ok(files) = std::fs::read_dir(t.path()) else {
                continue;
            };
            for f in files.flatten() {
                let Ok(b) = std::fs::read(f.path()) else {
                    continue;
                };
                if let Ok(p) = serde_json::from_slice::<Pointer>(&b) {
                    ids.extend(
                        p.candidates
                            .iter()
                            .filter(|c| c.member == member)
                            .map(|c| c.checkpoint),
                    );
                }
            }
        }
        Ok(ids)
    }
}

/// A topic name as a directory name.
fn sanitize(topic: &str) -> String {
    topic
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The newest complete checkpoint a pointer lists.
fn newest_complete(root: &Path, pointer: &Pointer) -> Option<Candidate> {
    pointer
        .candidates
        .iter()
        .rev()
        .find(|c| Store::new(&member_dir(root, &c.member)).is_complete(c.checkpoint))
        .cloned()
}

/// The partitions a member's checkpoint holds: its source's position.
pub(crate) fn owned(sp_positions: &[Option<Position>], source: usize) -> Vec<(String, i32, i64)> {
    sp_positions
        .get(source)
        .and_then(Option::as_ref)
        .and_then(|p| p.decode::<Vec<(String, i32, i64)>>().ok())
        .unwrap_or_default()
}

/// Writes `sp` as this member's newest checkpoint: the pointers of the partitions it
/// holds first, then its manifest (see the module docs). Refused when the group took
/// one of those partitions since the run started. Keeps every older checkpoint a
/// pointer still lists.
pub(crate) fn write_checkpoint(
    group: &GroupRun,
    store: &Store,
    sp: Savepoint<super::shard::DeferredNode>,
    keep: usize,
) -> Result<(PathBuf, u64), SavepointError> {
    let parts: Vec<PartitionKey> = owned(&sp.positions, group.source)
        .into_iter()
        .map(|(t, p, _)| (t, p))
        .collect();
    // Held until the manifest is written: a revoke waits for this checkpoint, or this
    // checkpoint sees the revoke.
    let revoked = group.fence.lock();
    if let Some(p) = parts.iter().find(|p| revoked.contains(p)) {
        return Err(SavepointError::Refused(format!(
            "partition {}/{} moved to another member of the group; this member restarts \
             from its checkpoints",
            p.0, p.1
        )));
    }
    let index = group.index();
    let anchor = parts.iter().min().cloned();
    let pinned = index.referenced(&group.instance)?;
    let root = group.root.clone();
    store.write_with(
        sp,
        keep,
        |id| {
            for p in &parts {
                let old = index.read(p)?;
                let mut candidates: Vec<Candidate> =
                    newest_complete(&root, &old).into_iter().collect();
                candidates.push(Candidate {
                    member: group.instance.clone(),
                    checkpoint: id,
                    anchor: Some(p) == anchor.as_ref(),
                });
                index.write(p, &Pointer { candidates })?;
            }
            Ok(())
        },
        |id| pinned.contains(&id),
    )
}

/// A member, its checkpoint's directory and that checkpoint's sink commits.
pub(crate) type Unpublished = (String, PathBuf, Vec<(String, super::io::SinkCheckpoint)>);

/// Where a group member's run starts: for every partition assigned to it, the newest
/// checkpoint holding that partition, whichever member wrote it.
pub struct GroupRestore {
    pub(crate) restore: Option<Restore>,
    /// Checkpoints of other members restored here whose sinks' pre-commits were not
    /// published (the member died between its manifest and its commits): this member
    /// publishes them, by member, checkpoint directory and sink commits.
    pub(crate) unpublished: Vec<Unpublished>,
    /// Partitions restored, by the member and checkpoint they came from.
    pub from: BTreeMap<PartitionKey, (String, u64)>,
    /// Part numbers this member's writers start from.
    pub(crate) next_part: usize,
}

/// Builds the restore of `group`'s next run (its assigned partitions) for `plan`.
pub(crate) fn restore(plan: &Plan, group: &GroupRun) -> Result<GroupRestore, SavepointError> {
    let index = group.index();
    let assigned = group.assigned();
    // The member's own newest checkpoint: its sinks' commits and part numbers.
    let own = group.store().latest()?;
    let mut by_checkpoint: BTreeMap<(String, u64), (Vec<PartitionKey>, bool)> = BTreeMap::new();
    let mut from = BTreeMap::new();
    for p in &assigned {
        let pointer = index.read(p)?;
        if let Some(c) = newest_complete(&group.root, &pointer) {
            let e = by_checkpoint
                .entry((c.member.clone(), c.checkpoint))
                .or_default();
            e.0.push(p.clone());
            e.1 |= c.anchor;
            from.insert(p.clone(), (c.member, c.checkpoint));
        }
    }
    let next_part = own.as_ref().map_or(0, |(_, sp)| sp.next_part);
    if by_checkpoint.is_empty() && own.is_none() {
        return Ok(GroupRestore {
            restore: None,
            unpublished: Vec::new(),
            from,
            next_part,
        });
    }
    let mut r = Restore {
        shards: Vec::new(),
        feedback: Vec::new(),
        globals: Vec::new(),
        watermark: u64::MAX,
        high: 0,
        positions: vec![None; plan.sources.len()],
        sinks: own.map(|(_, sp)| sp.sinks).unwrap_or_default(),
    };
    let mut offsets: Vec<(String, i32, i64)> = Vec::new();
    let mut unpublished = Vec::new();
    for ((member, id), (parts, unkeyed)) in by_checkpoint {
        let store = Store::new(&member_dir(&group.root, &member));
        let (at, sp) = store.read_id(id)?;
        savepoint::check(&sp, &at, plan)?;
        if member != group.instance && sp.sinks.iter().any(|(_, s)| !s.published) {
            unpublished.push((member.clone(), at.clone(), sp.sinks.clone()));
        }
        let origins: BTreeSet<u16> = parts
            .iter()
            .map(|(_, p)| u16::try_from(*p).unwrap_or(u16::MAX))
            .collect();
        let taken = Taken {
            origins: Some(Arc::new(origins)),
            unkeyed,
        };
        let held = owned(&sp.positions, group.source);
        offsets.extend(
            held.into_iter()
                .filter(|(t, p, _)| parts.iter().any(|(pt, pp)| pt == t && pp == p)),
        );
        r.watermark = r.watermark.min(sp.watermark);
        r.high = r.high.max(sp.high);
        r.shards
            .extend(sp.shards.into_iter().map(|s| (s, taken.clone())));
        r.feedback.extend(sp.feedback);
        if unkeyed && let Some(g) = sp.global {
            r.globals.push((g, taken.clone()));
        }
    }
    // A partition no checkpoint holds starts from its beginning: the run's watermark
    // starts where nothing of it is late yet.
    if r.watermark == u64::MAX || assigned.iter().any(|p| !from.contains_key(p)) {
        r.watermark = 0;
    }
    if let Some(slot) = r.positions.get_mut(group.source) {
        *slot = Some(Position::encode(&offsets).map_err(|e| SavepointError::Refused(e.message))?);
    }
    Ok(GroupRestore {
        restore: Some(r),
        unpublished,
        from,
        next_part,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A complete checkpoint `id` of `member` (only its manifest matters here).
    fn complete(root: &Path, member: &str, id: u64) {
        let dir = member_dir(root, member).join(format!("chk-{id:08}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("MANIFEST.json"), b"{}").unwrap();
    }

    fn candidate(member: &str, checkpoint: u64) -> Candidate {
        Candidate {
            member: member.into(),
            checkpoint,
            anchor: false,
        }
    }

    #[test]
    fn a_pointer_resolves_to_its_newest_complete_checkpoint() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        complete(root, "a", 3);
        let pointer = Pointer {
            candidates: vec![candidate("a", 3), candidate("b", 1)],
        };
        // b's checkpoint 1 wrote the pointer but died before its manifest.
        assert_eq!(newest_complete(root, &pointer), Some(candidate("a", 3)));
        complete(root, "b", 1);
        assert_eq!(newest_complete(root, &pointer), Some(candidate("b", 1)));
        assert_eq!(newest_complete(root, &Pointer::default()), None);
    }

    #[test]
    fn pointers_round_trip_and_pin_the_checkpoints_they_list() {
        let tmp = tempfile::tempdir().unwrap();
        let index = PartitionIndex {
            dir: tmp.path().join("partitions"),
        };
        let p = ("spans/v1".to_owned(), 3);
        assert_eq!(index.read(&p).unwrap(), Pointer::default());
        let pointer = Pointer {
            candidates: vec![candidate("a", 7), candidate("b", 2)],
        };
        index.write(&p, &pointer).unwrap();
        index
            .write(
                &("spans/v1".to_owned(), 4),
                &Pointer {
                    candidates: vec![candidate("a", 9)],
                },
            )
            .unwrap();
        assert_eq!(index.read(&p).unwrap(), pointer);
        assert_eq!(
            index.referenced("a").unwrap(),
            BTreeSet::from([7, 9]),
            "every checkpoint of a that a pointer lists"
        );
        assert_eq!(index.referenced("c").unwrap(), BTreeSet::new());
    }

    #[test]
    fn a_revoke_is_seen_until_the_next_run() {
        let fence = Fence::default();
        assert!(!fence.any());
        fence.revoke([("t".to_owned(), 1)]);
        assert!(fence.any());
        assert!(fence.lock().contains(&("t".to_owned(), 1)));
        fence.clear();
        assert!(!fence.any());
    }
}
