//! Periodic checkpoints: the coordinator that asks for them, gathers every stage's
//! share and writes them, then lets sinks and sources commit.
//!
//! A checkpoint is an aligned barrier (Flink's asynchronous barrier snapshots). The
//! coordinator raises the requested id; each source puts a barrier after its next
//! consistent position; the router waits for every source's barrier (holding back the
//! records of those that sent theirs), then sends the barrier to every shard after the
//! last spans and watermark before it; each shard snapshots its operators, pre-commits
//! its writers and passes the barrier to the global stage, which waits for every
//! shard's, snapshots, pre-commits and sends a marker back down the feedback channels.
//! A shard records the feedback (rate-limit verdicts) that reaches it between its
//! snapshot and that marker: it was sent before the global stage's snapshot and
//! received after the shard's, so it is the channel's state and a restored shard
//! receives it again. When every share has arrived the checkpoint is written (see
//! `savepoint.rs`) and only then are the sinks' pre-commits published and the sources
//! told (Kafka commits its offsets).
//!
//! Stopping with a checkpoint directory takes a last checkpoint the same way, after
//! every source has ended, and the stages then stop without flushing.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use spanflow_operators::operator::Batch;
use spanflow_operators::tail_sampling::RateVerdict;
use tokio::sync::{mpsc, oneshot};

use super::io::{CheckpointSignal, Position, SinkCheckpoint};
use super::savepoint::{Savepoint, SavepointError, Store, VERSION};
use super::shard::DeferredNode;
use super::{RunError, SinkError, TableTarget};

/// What a sink's writers pre-committed, by table key (`<sink>/<table>`).
pub(crate) type Pending = Vec<(String, Position)>;

/// Feedback a shard received between its snapshot and the global stage's marker: per
/// message, the plan node it was for and its verdicts.
pub(crate) type FeedbackLog = Vec<(usize, Vec<RateVerdict>)>;

/// One log from several shards' (a checkpoint restored at another parallelism): every
/// verdict any shard recorded, once each. The global stage sent each verdict to every
/// shard, and a shard ignores one it already has.
pub(crate) fn merge_feedback(logs: Vec<FeedbackLog>) -> FeedbackLog {
    let mut seen = std::collections::BTreeSet::new();
    let mut merged: FeedbackLog = Vec::new();
    for (node, verdicts) in logs.into_iter().flatten() {
        let fresh: Vec<RateVerdict> = verdicts
            .into_iter()
            .filter(|v| seen.insert((node, v.key)))
            .collect();
        if !fresh.is_empty() {
            merged.push((node, fresh));
        }
    }
    merged
}

/// Turns a feedback batch into what a checkpoint can hold.
pub(crate) fn log_entry(node: usize, batch: &Batch) -> Result<(usize, Vec<RateVerdict>), RunError> {
    match batch {
        Batch::RateVerdicts(v) => Ok((node, v.clone())),
        other => Err(RunError::Internal(format!(
            "feedback of kind {} cannot be checkpointed",
            other.kind().as_str()
        ))),
    }
}

/// One stage's share of checkpoint `id`.
pub(crate) enum Part {
    Router {
        id: u64,
        /// Per source: where a restored run continues.
        positions: Vec<Option<Position>>,
        watermark: u64,
        /// The highest watermark any split reached (see
        /// [`WatermarkTracker::end_of_input_watermark`](super::watermark::WatermarkTracker::end_of_input_watermark)).
        high: u64,
        pending: Pending,
    },
    Shard {
        id: u64,
        shard: usize,
        states: Vec<DeferredNode>,
        pending: Pending,
        feedback: FeedbackLog,
        /// How long the snapshot held the shard up.
        stall: Duration,
    },
    Global {
        id: u64,
        states: Vec<DeferredNode>,
        pending: Pending,
        stall: Duration,
    },
}

/// How a run ended, told to the coordinator once every stage is done.
#[derive(Debug, Default)]
pub(crate) struct RunEnd {
    /// The input ended normally: no stop was asked for and nothing failed.
    pub finished: bool,
    /// A consumer group member's end of input: written as its last checkpoint.
    pub last: Option<LastPosition>,
}

/// Where a finished run's router ended.
#[derive(Debug)]
pub(crate) struct LastPosition {
    /// Every source's position.
    pub positions: Vec<Option<Position>>,
    /// The end-of-input watermark (what the input's event time got to; not `+inf`, so a
    /// run that reads on from here sees its spans as in time).
    pub watermark: u64,
    /// The router's high watermark.
    pub high: u64,
}

/// What the run's checkpoints came to, for the summary and the benchmarks.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CheckpointStats {
    /// Checkpoints written.
    pub completed: u64,
    /// The newest one written.
    pub last: Option<PathBuf>,
    /// Bytes of the newest one's state.
    pub last_bytes: u64,
    /// The longest time from a checkpoint's request to its manifest being durable.
    pub max_duration_ms: f64,
    /// The longest time a stage stopped processing to snapshot its state.
    pub max_stall_ms: f64,
    /// The newest one's time from request to durable manifest.
    pub last_duration_ms: f64,
    /// When the newest one became durable (unix ms).
    pub last_completed_unix_ms: u64,
}

#[derive(Default)]
struct Building {
    router: Option<(Vec<Option<Position>>, u64, u64)>,
    shards: Vec<Option<(Vec<DeferredNode>, FeedbackLog)>>,
    global: Option<Vec<DeferredNode>>,
    pending: Pending,
}

/// Asks for checkpoints, gathers their parts and writes them.
pub(crate) struct Coordinator {
    pub store: Store,
    pub keep: usize,
    pub job: String,
    pub fingerprint: u64,
    pub parallelism: usize,
    pub next_part: usize,
    pub has_global: bool,
    pub targets: Vec<TableTarget>,
    pub signal: Arc<CheckpointSignal>,
    /// Checkpoints asked for whose shares are still coming in, by id.
    building: BTreeMap<u64, (Instant, Building)>,
    /// The newest checkpoint written: parts of older ones are stale.
    written: u64,
    stats: CheckpointStats,
    /// Where each checkpoint's figures are published as it completes.
    pub live: Option<Arc<super::Progress>>,
    /// The consumer group the run is a member of: checkpoints also move the pointers
    /// of its partitions.
    pub group: Option<Arc<super::group::GroupRun>>,
}

impl Coordinator {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Store,
        keep: usize,
        job: String,
        fingerprint: u64,
        parallelism: usize,
        next_part: usize,
        has_global: bool,
        targets: Vec<TableTarget>,
        signal: Arc<CheckpointSignal>,
    ) -> Self {
        Coordinator {
            store,
            keep,
            job,
            fingerprint,
            parallelism,
            next_part,
            has_global,
            targets,
            signal,
            building: BTreeMap::new(),
            written: 0,
            stats: CheckpointStats::default(),
            live: None,
            group: None,
        }
    }

    /// Runs until every stage has hung up; asks for a checkpoint `interval` (when set)
    /// after the last one completed, unless the run is stopping. Then waits for how the
    /// run ended (`end`; a dropped sender is a failed run): when its input ended
    /// normally, what incomplete checkpoints pre-committed is published too (it is all
    /// output of a run that needs no restore), and a group member writes its last
    /// checkpoint ([`RunEnd::last`]).
    pub async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Part>,
        interval: Option<Duration>,
        stop: Arc<AtomicBool>,
        end: oneshot::Receiver<RunEnd>,
    ) -> Result<CheckpointStats, RunError> {
        let mut next = interval.map(|i| tokio::time::Instant::now() + i);
        loop {
            let due = next.filter(|_| self.building.is_empty() && !stop.load(Ordering::Relaxed));
            tokio::select! {
                part = rx.recv() => match part {
                    Some(p) => {
                        let before = self.written;
                        self.add(p)?;
                        // The interval runs from the end of the last checkpoint (Flink's
                        // minimum pause): a checkpoint slower than the interval never
                        // keeps the coordinator busy all the time.
                        if self.written != before {
                            next = interval.map(|i| tokio::time::Instant::now() + i);
                        }
                    }
                    None => break,
                },
                _ = async {
                    match due {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => {
                    let id = self.signal.requested.fetch_add(1, Ordering::AcqRel) + 1;
                    self.building.insert(id, (Instant::now(), self.empty()));
                }
            }
        }
        let end = end.await.unwrap_or_default();
        if end.finished {
            for (_, (_, b)) in std::mem::take(&mut self.building) {
                self.commit(&b.pending)?;
            }
            if let Some(last) = end.last {
                self.write_last(last)?;
            }
        }
        Ok(self.stats)
    }

    /// A group member's last checkpoint after its input ended: no open state (every
    /// window was flushed), the positions it ended at and every file it wrote, so that
    /// whoever the group gives its partitions to next starts where it ended instead of
    /// reading them again, and its own next run does not undo its last files.
    fn write_last(&mut self, last: LastPosition) -> Result<(), RunError> {
        let Some(group) = self.group.clone() else {
            return Ok(());
        };
        let started = Instant::now();
        let mut sinks: Vec<(String, SinkCheckpoint)> = Vec::new();
        for t in &self.targets {
            let committed = t.out.checkpoint().map_err(|e| SinkError::of(t, e))?;
            sinks.push((
                t.key(),
                SinkCheckpoint {
                    committed,
                    pending: Vec::new(),
                    published: true,
                },
            ));
        }
        let sp = Savepoint {
            version: VERSION,
            job: self.job.clone(),
            fingerprint: self.fingerprint,
            parallelism: self.parallelism,
            watermark: last.watermark,
            high: last.high,
            shards: (0..self.parallelism).map(|_| Vec::new()).collect(),
            feedback: (0..self.parallelism).map(|_| Vec::new()).collect(),
            global: None,
            positions: last.positions,
            sinks,
            next_part: self.next_part,
        };
        let written = tokio::task::block_in_place(|| {
            super::group::write_checkpoint(&group, &self.store, sp, self.keep)
        });
        let (path, bytes) = match written {
            Ok(w) => w,
            // The group took a partition while the run was closing: its new owner
            // restores the previous checkpoint and reads on from there.
            Err(SavepointError::Refused(why)) => {
                tracing::warn!("no last checkpoint for this member: {why}");
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        tokio::task::block_in_place(|| self.store.mark_committed(&path))?;
        self.stats.completed += 1;
        self.stats.last = Some(path);
        self.stats.last_bytes = bytes;
        self.stats.last_duration_ms = ms(started.elapsed());
        self.stats.last_completed_unix_ms = super::align::wall_clock_ns() / 1_000_000;
        Ok(())
    }

    fn empty(&self) -> Building {
        Building {
            shards: (0..self.parallelism).map(|_| None).collect(),
            ..Building::default()
        }
    }

    fn add(&mut self, part: Part) -> Result<(), RunError> {
        let id = match &part {
            Part::Router { id, .. } | Part::Shard { id, .. } | Part::Global { id, .. } => *id,
        };
        if id <= self.written {
            return Ok(());
        }
        if !self.building.contains_key(&id) {
            // The last checkpoint of a stopped run is asked for by the router.
            let b = self.empty();
            self.building.insert(id, (Instant::now(), b));
        }
        let Some((_, b)) = self.building.get_mut(&id) else {
            return Ok(());
        };
        match part {
            Part::Router {
                positions,
                watermark,
                high,
                pending,
                ..
            } => {
                b.router = Some((positions, watermark, high));
                b.pending.extend(pending);
            }
            Part::Shard {
                shard,
                states,
                pending,
                feedback,
                stall,
                ..
            } => {
                if let Some(slot) = b.shards.get_mut(shard) {
                    *slot = Some((states, feedback));
                }
                b.pending.extend(pending);
                self.stats.max_stall_ms = self.stats.max_stall_ms.max(ms(stall));
            }
            Part::Global {
                states,
                pending,
                stall,
                ..
            } => {
                b.global = Some(states);
                b.pending.extend(pending);
                self.stats.max_stall_ms = self.stats.max_stall_ms.max(ms(stall));
            }
        }
        let complete = b.router.is_some()
            && b.shards.iter().all(Option::is_some)
            && (b.global.is_some() || !self.has_global);
        if complete && let Some((started, b)) = self.building.remove(&id) {
            self.complete(id, started, b)?;
        }
        Ok(())
    }

    fn complete(&mut self, id: u64, started: Instant, b: Building) -> Result<(), RunError> {
        let Building {
            router,
            shards,
            global,
            pending,
        } = b;
        let (positions, watermark, high) = router.unwrap_or_default();
        let (shards, feedback): (Vec<_>, Vec<_>) = shards.into_iter().flatten().unzip();
        let mut sinks: Vec<(String, SinkCheckpoint)> = Vec::new();
        for t in &self.targets {
            let committed = t.out.checkpoint().map_err(|e| SinkError::of(t, e))?;
            let key = t.key();
            let pending = of_table(&pending, &key);
            sinks.push((
                key,
                SinkCheckpoint {
                    committed,
                    pending,
                    published: false,
                },
            ));
        }
        let sp = Savepoint {
            version: VERSION,
            job: self.job.clone(),
            fingerprint: self.fingerprint,
            parallelism: self.parallelism,
            watermark,
            high,
            shards,
            feedback,
            global,
            positions,
            sinks,
            next_part: self.next_part,
        };
        // Encoding the copies the stages took (the slow part) happens here, as the
        // file is written, and not on the stages.
        let (path, bytes) = tokio::task::block_in_place(|| match &self.group {
            Some(g) => super::group::write_checkpoint(g, &self.store, sp, self.keep),
            None => self.store.write(sp, self.keep),
        })?;
        // Older checkpoints still in progress can never complete now.
        self.building.retain(|&k, _| k > id);
        self.written = id;
        self.commit(&pending)?;
        if !pending.is_empty() {
            tokio::task::block_in_place(|| self.store.mark_committed(&path))?;
        }
        self.signal.durable.fetch_max(id, Ordering::AcqRel);
        self.stats.completed += 1;
        self.stats.last = Some(path);
        self.stats.last_bytes = bytes;
        let took = ms(started.elapsed());
        self.stats.max_duration_ms = self.stats.max_duration_ms.max(took);
        self.stats.last_duration_ms = took;
        self.stats.last_completed_unix_ms = super::align::wall_clock_ns() / 1_000_000;
        if let Some(live) = &self.live
            && let Ok(mut s) = live.checkpoints.lock()
        {
            *s = self.stats.clone();
        }
        Ok(())
    }

    /// Publishes what the writers pre-committed.
    fn commit(&self, pending: &Pending) -> Result<(), RunError> {
        for t in &self.targets {
            let mine = of_table(pending, &t.key());
            if !mine.is_empty() {
                tokio::task::block_in_place(|| t.out.commit(&mine))
                    .map_err(|e| SinkError::of(t, e))?;
            }
        }
        Ok(())
    }
}

/// What the writers of table `key` pre-committed.
fn of_table(pending: &Pending, key: &str) -> Vec<Position> {
    pending
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, p)| p.clone())
        .collect()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
