//! What the runtime asks of the systems it reads from and writes to. Connectors (Kafka,
//! files, Parquet, ClickHouse) and tools (the span generator) implement [`Source`] and
//! [`Sink`]; the runtime never names a concrete one.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use spanflow_operators::Sym;
use tokio::sync::mpsc;

use crate::formats::InputFormat;

/// Whose fault an error is, which decides what to do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Fault {
    /// The job or its input is wrong (a missing file, a table that does not exist, a
    /// record that cannot be encoded): retrying cannot help; the user must act.
    User,
    /// An external system failed (broker or server down, a timeout): retry with
    /// backoff.
    External,
    /// A bug in spanflow.
    Internal,
}

impl Fault {
    /// The word used in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::User => "user",
            Fault::External => "external",
            Fault::Internal => "internal",
        }
    }
}

/// An error of a source or a sink.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}{}", if *.fault == Fault::Internal { " (this is a bug)" } else { "" })]
pub struct ConnectorError {
    /// Whose fault it is.
    pub fault: Fault,
    /// What went wrong, for a person.
    pub message: String,
}

impl ConnectorError {
    /// The job or its input is wrong.
    pub fn user(message: impl Into<String>) -> Self {
        ConnectorError {
            fault: Fault::User,
            message: message.into(),
        }
    }

    /// An external system failed.
    pub fn external(message: impl Into<String>) -> Self {
        ConnectorError {
            fault: Fault::External,
            message: message.into(),
        }
    }

    /// A bug.
    pub fn internal(message: impl Into<String>) -> Self {
        ConnectorError {
            fault: Fault::Internal,
            message: message.into(),
        }
    }

    /// The same error with `context` in front of its message.
    pub fn context(mut self, context: impl std::fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }

    /// A local file operation failed: the user's (a path), unless the disk is full or
    /// the OS ran out of something, which may pass.
    pub fn io(path: &std::path::Path, e: &std::io::Error) -> Self {
        use std::io::ErrorKind;
        let message = format!("{}: {e}", path.display());
        match e.kind() {
            ErrorKind::StorageFull | ErrorKind::Interrupted | ErrorKind::OutOfMemory => {
                ConnectorError::external(message)
            }
            _ => ConnectorError::user(message),
        }
    }
}

/// Where a source got to: opaque to the runtime, which keeps it in savepoints and
/// hands it back to the same source to resume from. Each source encodes its own
/// (Kafka: the next offset of every partition).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Position(ciborium::Value);

impl Position {
    /// Encodes a source's position.
    pub fn encode<T: Serialize>(value: &T) -> Result<Self, ConnectorError> {
        ciborium::Value::serialized(value)
            .map(Position)
            .map_err(|e| ConnectorError::internal(format!("cannot encode a position: {e}")))
    }

    /// Decodes what [`Position::encode`] made.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, ConnectorError> {
        self.0.deserialized().map_err(|e| {
            ConnectorError::user(format!(
                "the saved position does not fit this source ({e}); remove the savepoint to \
                 start fresh"
            ))
        })
    }
}

/// What a source reports about its run (the generator's ground truth), shown in the
/// run's summary and readable by tests through [`RunSummary::source_report`](super::RunSummary::source_report).
pub trait SourceReport: std::fmt::Display + std::fmt::Debug + Send + Sync + 'static {
    /// The summary line's label (`generator`).
    fn label(&self) -> &'static str;
    /// For downcasting to the concrete report.
    fn as_any(&self) -> &dyn std::any::Any;
}

/// A source of records. It runs on its own blocking thread, reads in order and hands
/// the records, by split, to [`SourceOutput`]; the runtime decodes them.
pub trait Source: Send {
    /// How its records are encoded.
    fn format(&self) -> InputFormat;

    /// Whether a stopped run can continue where this source left off (then a stop with
    /// a checkpoint directory keeps a savepoint).
    fn resumable(&self) -> bool {
        false
    }

    /// Continues from `position` (what it passed to [`SourceOutput::end`] in a stopped
    /// run). Called before [`Source::run`].
    fn resume_from(&mut self, _position: &Position) -> Result<(), ConnectorError> {
        Ok(())
    }

    /// Reads to the end of bounded input, or until [`SourceOutput::stopped`]. Ends by
    /// calling [`SourceOutput::end`] (the runtime does when it returns without);
    /// afterwards it may wait for [`FinishSignal::wait`] and commit what it read. An
    /// error returned after `end` is reported when the run joins the source.
    fn run(&mut self, out: &mut SourceOutput) -> Result<(), ConnectorError>;

    /// What it reports about its run, once it ran.
    fn report(&self) -> Option<Arc<dyn SourceReport>> {
        None
    }
}

/// What the runtime tells a source that has ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// Every output of the records it read is written: commit its positions.
    Commit,
    /// The run failed or was cancelled without a complete output: commit nothing.
    Abort,
}

/// The runtime's answer to an ended source, once every output is written.
#[derive(Debug)]
pub struct FinishSignal(std::sync::mpsc::Receiver<Finish>);

impl FinishSignal {
    /// An answer already given (a source run outside the runtime, in tests or tools).
    pub fn ready(finish: Finish) -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        let _ = tx.send(finish);
        FinishSignal(rx)
    }

    /// Blocks until the runtime answers (`Abort` when it is gone).
    pub fn wait(self) -> Finish {
        self.0.recv().unwrap_or(Finish::Abort)
    }

    /// The answer, if it comes within `timeout` (`Abort` when the runtime is gone).
    pub fn wait_for(&self, timeout: std::time::Duration) -> Option<Finish> {
        match self.0.recv_timeout(timeout) {
            Ok(f) => Some(f),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => None,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Some(Finish::Abort),
        }
    }
}

/// A chunk of records, in order: consecutive records of one split, or (a Kafka source
/// reading many partitions) runs of consecutive records of several, interleaved so
/// that the partitions advance together.
#[derive(Debug)]
pub struct Records {
    /// Whose records these are: runs in order, their lengths summing to the number of
    /// records.
    pub runs: Vec<SplitRun>,
    /// Offset of the first record.
    pub first_offset: u64,
    /// Per-record offsets, when they are not `first_offset + i`.
    pub offsets: Option<Vec<u64>>,
    /// Payloads.
    pub records: Vec<Bytes>,
}

/// Consecutive records of one split within a [`Records`] chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitRun {
    /// The split (partition) key, unique within the source; it has its own watermark.
    /// Single-split sources use 0.
    pub split: u32,
    /// Kafka topic, for dead letters.
    pub topic: Option<Sym>,
    /// Partition number, for dead letters.
    pub partition: u32,
    /// Records in the run.
    pub len: usize,
}

impl Records {
    /// Records of split 0 of a single-split source (no topic, no partition), numbered
    /// from `first_offset`.
    pub fn of_single_split(first_offset: u64, records: Vec<Bytes>) -> Self {
        Records {
            runs: vec![SplitRun {
                split: 0,
                topic: None,
                partition: 0,
                len: records.len(),
            }],
            first_offset,
            offsets: None,
            records,
        }
    }
}

/// What sources send the router.
pub(crate) enum SourceEvent {
    /// A chunk of consecutive records of one split.
    Records {
        source: usize,
        name: Sym,
        format: InputFormat,
        records: Records,
    },
    /// Splits (Kafka partitions) now read by the source; they hold the watermark.
    SplitsAdded { source: usize, splits: Vec<u32> },
    /// Splits no longer read (revoked, or finished in a bounded run).
    SplitsRemoved { source: usize, splits: Vec<u32> },
    /// Splits whose input was read to its current end (see
    /// [`SourceOutput::splits_caught_up`]).
    SplitsCaughtUp { source: usize, splits: Vec<u32> },
    /// The source is exhausted (or stopped), and where it got to.
    Done {
        source: usize,
        position: Option<Position>,
    },
    /// Everything sent before it belongs to checkpoint `id`; `position` is where a
    /// run restored from that checkpoint continues.
    Barrier {
        source: usize,
        id: u64,
        position: Option<Position>,
    },
    /// The source failed; it sends nothing more.
    Failed {
        source: usize,
        error: ConnectorError,
    },
}

/// Records per chunk of a single-split source: chunks are cut by record count so that
/// chunking (and thus the watermark sequence) never depends on timing.
pub(crate) const RECORDS_PER_CHUNK: usize = 2;

/// Checkpoints the runtime asked for and those it made durable, shared with every
/// source.
#[derive(Debug, Default)]
pub(crate) struct CheckpointSignal {
    /// The newest checkpoint asked for (0: none yet).
    pub requested: AtomicU64,
    /// The newest checkpoint written durably (0: none yet).
    pub durable: AtomicU64,
}

/// The splits the router asks sources not to read for now (watermark alignment),
/// shared with every source.
#[derive(Debug)]
pub(crate) struct PauseSignal {
    /// Bumped on every change: a source learns that nothing changed from one atomic
    /// load.
    version: AtomicU64,
    /// Per source, its paused splits.
    paused: std::sync::Mutex<Vec<std::collections::BTreeSet<u32>>>,
    /// Per source, the records of its chunks the router has handled (their event
    /// times seen, alignment updated); `u64::MAX` once the router is gone.
    routed: Box<[AtomicU64]>,
    /// Sources waiting for the router to handle their records, woken by `routed`.
    waiting: std::sync::atomic::AtomicUsize,
    wake: (std::sync::Mutex<()>, std::sync::Condvar),
}

impl PauseSignal {
    /// A signal for `sources` sources.
    pub fn new(sources: usize) -> Self {
        PauseSignal {
            version: AtomicU64::new(0),
            paused: std::sync::Mutex::new(Vec::new()),
            routed: (0..sources).map(|_| AtomicU64::new(0)).collect(),
            waiting: std::sync::atomic::AtomicUsize::new(0),
            wake: Default::default(),
        }
    }

    /// Counts `records` more records of source `source` as handled by the router.
    pub fn count_routed(&self, source: usize, records: u64) {
        if let Some(r) = self.routed.get(source) {
            r.fetch_add(records, Ordering::SeqCst);
            self.wake_waiting();
        }
    }

    /// The router is gone: nothing a source sends is waited for any longer.
    pub fn route_ended(&self) {
        for r in &self.routed {
            r.store(u64::MAX, Ordering::SeqCst);
        }
        self.wake_waiting();
    }

    fn wake_waiting(&self) {
        // Most chunks find no source waiting: a load, no lock.
        if self.waiting.load(Ordering::SeqCst) > 0 {
            let _guard = self.wake.0.lock();
            self.wake.1.notify_all();
        }
    }

    /// Records of source `source` the router has handled (`u64::MAX` for a source it
    /// does not know).
    fn routed_of(&self, source: usize) -> u64 {
        self.routed
            .get(source)
            .map_or(u64::MAX, |r| r.load(Ordering::SeqCst))
    }

    /// Waits until the router handled more of source `source`'s records than
    /// `seen`, or `timeout` passed.
    fn wait_routed(&self, source: usize, seen: u64, timeout: std::time::Duration) {
        let Some(r) = self.routed.get(source) else {
            return;
        };
        let Ok(guard) = self.wake.0.lock() else {
            return;
        };
        // Registered before the check, under the lock the router notifies under: a
        // count it adds after the check finds this source waiting.
        self.waiting.fetch_add(1, Ordering::SeqCst);
        if r.load(Ordering::SeqCst) == seen {
            let _ = self.wake.1.wait_timeout(guard, timeout);
        }
        self.waiting.fetch_sub(1, Ordering::SeqCst);
    }

    /// Publishes the paused splits of every source.
    pub fn set(&self, paused: Vec<std::collections::BTreeSet<u32>>) {
        if let Ok(mut p) = self.paused.lock() {
            *p = paused;
        }
        self.version.fetch_add(1, Ordering::AcqRel);
    }

    /// Source `source`'s paused splits, if they may have changed since `seen` (which
    /// is updated).
    fn of(&self, source: usize, seen: &mut u64) -> Option<std::collections::BTreeSet<u32>> {
        let v = self.version.load(Ordering::Acquire);
        if v == *seen {
            return None;
        }
        *seen = v;
        let p = self.paused.lock().ok()?;
        Some(p.get(source).cloned().unwrap_or_default())
    }
}

/// A source's view of the runtime's checkpoints and of the splits it is asked to
/// pause.
#[derive(Debug, Clone)]
pub struct CheckpointHandle {
    signal: Arc<CheckpointSignal>,
    /// The last checkpoint the source sent a barrier for.
    sent: Arc<AtomicU64>,
    pauses: Arc<PauseSignal>,
    source: usize,
}

impl CheckpointHandle {
    /// The splits of this source that watermark alignment pauses now, if they may
    /// have changed since `seen` (a version the caller keeps, starting at 0). A paused
    /// split should not be read until it is resumed; what was fetched already may
    /// still be sent.
    pub fn paused_splits(&self, seen: &mut u64) -> Option<std::collections::BTreeSet<u32>> {
        self.pauses.of(self.source, seen)
    }

    /// How many of the records this source sent the router has handled: what it
    /// decided from them (pausing splits that ran ahead) is published by then.
    pub fn routed(&self) -> u64 {
        self.pauses.routed_of(self.source)
    }

    /// Waits until [`CheckpointHandle::routed`] is past `seen`, or `timeout` passed.
    pub fn wait_routed(&self, seen: u64, timeout: std::time::Duration) {
        self.pauses.wait_routed(self.source, seen, timeout);
    }

    /// The checkpoint a barrier is due for, if the source has not sent it yet.
    pub fn barrier_due(&self) -> Option<u64> {
        let requested = self.signal.requested.load(Ordering::Acquire);
        (requested > self.sent.load(Ordering::Acquire)).then_some(requested)
    }

    /// The newest checkpoint written durably.
    pub fn durable(&self) -> u64 {
        self.signal.durable.load(Ordering::Acquire)
    }
}

/// A running source's way to the runtime.
pub struct SourceOutput {
    source: usize,
    name: Sym,
    format: InputFormat,
    tx: mpsc::Sender<SourceEvent>,
    stop: Arc<AtomicBool>,
    checkpoints: CheckpointHandle,
    finish: Option<FinishSignal>,
    ended: bool,
    /// Next offset of split 0, for [`SourceOutput::send_in_order`].
    next_offset: u64,
    chunk: Vec<Bytes>,
    /// Version of the pause signal last seen, and whether split 0 is paused.
    pause_seen: u64,
    paused: bool,
    progress: Arc<super::Progress>,
}

impl SourceOutput {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        source: usize,
        name: Sym,
        format: InputFormat,
        tx: mpsc::Sender<SourceEvent>,
        stop: Arc<AtomicBool>,
        checkpoints: Arc<CheckpointSignal>,
        pauses: Arc<PauseSignal>,
        finish: std::sync::mpsc::Receiver<Finish>,
        progress: Arc<super::Progress>,
    ) -> Self {
        SourceOutput {
            source,
            name,
            format,
            tx,
            stop,
            checkpoints: CheckpointHandle {
                signal: checkpoints,
                sent: Arc::default(),
                pauses,
                source,
            },
            finish: Some(FinishSignal(finish)),
            ended: false,
            next_offset: 0,
            chunk: Vec::with_capacity(RECORDS_PER_CHUNK),
            pause_seen: 0,
            paused: false,
            progress,
        }
    }

    /// Publishes this source's consumer lag per (topic, partition), replacing what it
    /// said before, for watchers of the run (the job server's `/metrics`).
    pub fn consumer_lag(&self, lag: Vec<(String, i32, i64)>) {
        if let Ok(mut m) = self.progress.consumer_lag.lock() {
            let name = self.name.as_str().to_owned();
            m.retain(|(source, _, _), _| *source != name);
            for (topic, partition, l) in lag {
                m.insert((name.clone(), topic, partition), l);
            }
        }
    }

    /// Tells the progress bar how many records this bounded source will read in all
    /// (a Kafka source knows once it looked its end offsets up).
    pub fn expect_records(&self, records: u64) {
        self.progress
            .records_expected
            .fetch_add(records, Ordering::Relaxed);
    }

    /// Waits while watermark alignment pauses this single-split source, answering
    /// checkpoint barriers meanwhile (at the position of what was sent, which the
    /// waiting chunk is not yet part of: the router waits for every source's barrier,
    /// and the split it waits for to catch up may be behind that barrier). False when
    /// the runtime is gone.
    fn wait_while_paused(&mut self) -> bool {
        loop {
            if let Some(p) = self.checkpoints.paused_splits(&mut self.pause_seen) {
                self.paused = p.contains(&0);
            }
            if !self.paused || self.stopped() {
                return true;
            }
            if let Some(id) = self.barrier_due() {
                let position = Position::encode(&self.next_offset).ok();
                if !self.barrier(id, position) {
                    return false;
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }

    fn send(&self, ev: SourceEvent) -> bool {
        self.tx.blocking_send(ev).is_ok()
    }

    /// Sends a chunk of records; blocks on backpressure. False when the runtime is
    /// gone (stop reading).
    pub fn records(&mut self, records: Records) -> bool {
        self.send(SourceEvent::Records {
            source: self.source,
            name: self.name,
            format: self.format,
            records,
        })
    }

    /// Queues one record of the source's only split (split 0, offsets counted from 0),
    /// sending fixed-size chunks. False when the runtime is gone.
    pub fn send_in_order(&mut self, record: Bytes) -> bool {
        self.chunk.push(record);
        if self.chunk.len() >= RECORDS_PER_CHUNK {
            return self.flush_in_order();
        }
        true
    }

    fn flush_in_order(&mut self) -> bool {
        if self.chunk.is_empty() {
            return true;
        }
        if !self.wait_while_paused() {
            return false;
        }
        let records = std::mem::replace(&mut self.chunk, Vec::with_capacity(RECORDS_PER_CHUNK));
        let first_offset = self.next_offset;
        self.next_offset += records.len() as u64;
        let sent = self.records(Records::of_single_split(first_offset, records));
        // Barriers go between chunks, which are cut by record count: where a checkpoint
        // falls never changes what the chunks hold.
        if sent && let Some(id) = self.barrier_due() {
            let position = Position::encode(&self.next_offset).ok();
            return self.barrier(id, position);
        }
        sent
    }

    /// The checkpoint the runtime asks a barrier for, if this source has not sent it
    /// yet. Sources that send with [`SourceOutput::records`] check it between records
    /// and answer with [`SourceOutput::barrier`]; [`SourceOutput::send_in_order`] does
    /// both itself.
    pub fn barrier_due(&self) -> Option<u64> {
        self.checkpoints.barrier_due()
    }

    /// A handle answering [`SourceOutput::barrier_due`] and
    /// [`SourceOutput::durable_checkpoint`], for a source loop that lends the output
    /// to a callback.
    pub fn checkpoint_handle(&self) -> CheckpointHandle {
        self.checkpoints.clone()
    }

    /// Marks everything sent so far as part of checkpoint `id`; `position` is where a
    /// run restored from it continues (what [`Source::resume_from`] gets). False when
    /// the runtime is gone.
    pub fn barrier(&mut self, id: u64, position: Option<Position>) -> bool {
        self.checkpoints.sent.fetch_max(id, Ordering::AcqRel);
        self.send(SourceEvent::Barrier {
            source: self.source,
            id,
            position,
        })
    }

    /// The newest checkpoint that is durable: a source that commits its position
    /// elsewhere (Kafka offsets) commits the position of this barrier's checkpoint.
    pub fn durable_checkpoint(&self) -> u64 {
        self.checkpoints.durable()
    }

    /// Numbers the records [`SourceOutput::send_in_order`] sends from `next` on (a
    /// resumed source that skipped the records a stopped run read).
    pub fn resume_offsets_at(&mut self, next: u64) {
        self.next_offset = next;
    }

    /// Ends a source that sent its records with [`SourceOutput::send_in_order`]; its
    /// position is the number of records sent, those a resumed run skipped included
    /// (what the next run skips: decode it as a `u64` in [`Source::resume_from`]).
    pub fn end_in_order(&mut self) -> Result<(), ConnectorError> {
        let read = self.next_offset + self.chunk.len() as u64;
        self.end(Some(Position::encode(&read)?));
        Ok(())
    }

    /// Splits now read; each holds the watermark until it is removed or idle.
    pub fn splits_added(&mut self, splits: Vec<u32>) -> bool {
        self.send(SourceEvent::SplitsAdded {
            source: self.source,
            splits,
        })
    }

    /// Splits no longer read.
    pub fn splits_removed(&mut self, splits: Vec<u32>) -> bool {
        self.send(SourceEvent::SplitsRemoved {
            source: self.source,
            splits,
        })
    }

    /// Splits read to the current end of their input (records sent before this were
    /// all there was); the next records of a split end that. Watermark alignment does
    /// not hold other splits back for one that has nothing left to read.
    pub fn splits_caught_up(&mut self, splits: Vec<u32>) -> bool {
        self.send(SourceEvent::SplitsCaughtUp {
            source: self.source,
            splits,
        })
    }

    /// The source has read everything it will (bounded input consumed, or stopped);
    /// `position` is where a resumed run continues. Records queued with
    /// [`SourceOutput::send_in_order`] are sent first.
    pub fn end(&mut self, position: Option<Position>) -> bool {
        if self.ended {
            return true;
        }
        let sent = self.flush_in_order();
        self.ended = true;
        sent && self.send(SourceEvent::Done {
            source: self.source,
            position,
        })
    }

    /// Whether [`SourceOutput::end`] was called.
    pub fn has_ended(&self) -> bool {
        self.ended
    }

    /// True once the run asks its sources to stop: an unbounded source then ends like
    /// a bounded one.
    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// The stop flag, for sources that poll it from their own loop.
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// The runtime's answer after [`SourceOutput::end`] (taken once).
    pub fn take_finish(&mut self) -> Option<FinishSignal> {
        self.finish.take()
    }

    pub(crate) fn fail(&mut self, error: ConnectorError) {
        self.ended = true;
        self.send(SourceEvent::Failed {
            source: self.source,
            error,
        });
    }
}

/// One table of one sink node: where a stream's rows go. Every shard opens its own
/// writer.
pub trait Sink: Send + Sync + std::fmt::Debug {
    /// Where the rows go, for the summary: a directory, `kafka:<topic>`,
    /// `clickhouse:<database>.<table>`.
    fn location(&self) -> PathBuf;

    /// Rows per batch handed to a writer.
    fn batch_rows(&self) -> usize {
        1024
    }

    /// Gets the table ready before anything is written: a fresh run (`restored` is
    /// `None`) starts it empty where that is the sink's contract (Parquet); a run
    /// restored from a checkpoint first completes the checkpoint's pending commits
    /// (some may be done already) and then removes what was written after it.
    fn prepare(&self, _restored: Option<&SinkCheckpoint>) -> Result<(), ConnectorError> {
        Ok(())
    }

    /// Writes to the sink's system that failed and were tried again so far (all its
    /// writers; a sink that does not retry reports none).
    fn failed_attempts(&self) -> u64 {
        0
    }

    /// Rows the sink accepted but could not deliver by the end of the run (a queue it
    /// gave up on, or dropped from when full); a sink whose writes fail the run has none.
    fn undelivered(&self) -> u64 {
        0
    }

    /// Rows accepted and waiting for delivery now (a sink that delivers on its own
    /// thread, such as Alertmanager's); 0 for a sink whose writes complete in place.
    fn queued(&self) -> u64 {
        0
    }

    /// Opens a writer; `part` is unique per shard and grows across resumed runs.
    fn open(&self, part: usize, schema: SchemaRef) -> Result<Box<dyn TableWriter>, ConnectorError>;

    /// Makes visible what the writers pre-committed for a checkpoint, once the
    /// checkpoint is durable (what [`TableWriter::precommit`] returned, from every
    /// writer). Must be idempotent: a restored run repeats it.
    fn commit(&self, _pending: &[Position]) -> Result<(), ConnectorError> {
        Ok(())
    }

    /// Makes visible what another member of the job's consumer group pre-committed for
    /// a checkpoint that member did not live to publish (its checkpoint is restored by
    /// this member). Idempotent, like [`Sink::commit`]; sinks whose writes carry no
    /// member do nothing.
    fn commit_for(&self, _member: &str, _pending: &[Position]) -> Result<(), ConnectorError> {
        Ok(())
    }

    /// What a checkpoint keeps so that a restored run can undo writes made after it
    /// (Parquet: the part files committed so far).
    fn checkpoint(&self) -> Result<Option<Position>, ConnectorError> {
        Ok(None)
    }

    /// Where the latest closed metric interval is also written as OpenMetrics text when
    /// the run ends (file sinks).
    fn openmetrics_file(&self) -> Option<PathBuf> {
        None
    }
}

/// What a checkpoint holds for one sink table.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SinkCheckpoint {
    /// What [`Sink::checkpoint`] returned.
    pub committed: Option<Position>,
    /// What the writers pre-committed for the checkpoint, to commit when it is
    /// restored.
    pub pending: Vec<Position>,
    /// The checkpoint's commits had all finished (its directory says so): sinks whose
    /// commit is not idempotent (Kafka transactions) skip `pending`.
    #[serde(skip)]
    pub published: bool,
}

/// A writer of one table, opened by one shard.
pub trait TableWriter: Send {
    /// Writes one batch.
    fn write(&mut self, batch: &RecordBatch) -> Result<(), ConnectorError>;

    /// Makes everything written so far durable for a checkpoint, invisible until
    /// [`Sink::commit`] gets what this returns (two-phase commit). Sinks whose replays
    /// collapse (Kafka keys, ClickHouse versions) only flush and return `None`.
    fn precommit(&mut self) -> Result<Option<Position>, ConnectorError> {
        Ok(None)
    }

    /// Finishes (flushes, waits for delivery); returns the rows written.
    fn close(self: Box<Self>) -> Result<u64, ConnectorError>;
}

/// Runs `f` again while it fails with an external fault, with exponential backoff,
/// `attempts` times at most.
pub(crate) fn retry<T>(
    attempts: u32,
    what: &str,
    mut f: impl FnMut() -> Result<T, ConnectorError>,
) -> Result<T, ConnectorError> {
    let mut delay = std::time::Duration::from_millis(100);
    let mut attempt = 1;
    loop {
        match f() {
            Err(e) if e.fault == Fault::External && attempt < attempts => {
                tracing::warn!(attempt, error = %e, "{what} failed; retrying in {delay:?}");
                std::thread::sleep(delay);
                delay *= 2;
                attempt += 1;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A source waiting for the router wakes when its records are handled (long before
    /// its timeout), not for another source's, and never waits once the router is gone.
    #[test]
    fn a_source_waiting_for_the_router_wakes_when_its_records_are_handled() {
        use std::time::{Duration, Instant};
        let signal = Arc::new(PauseSignal::new(2));
        let handle = |source| CheckpointHandle {
            signal: Arc::default(),
            sent: Arc::default(),
            pauses: signal.clone(),
            source,
        };
        let (first, second) = (handle(0), handle(1));
        let router = {
            let signal = signal.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                signal.count_routed(1, 5);
                std::thread::sleep(Duration::from_millis(50));
                signal.count_routed(0, 3);
            })
        };
        let t0 = Instant::now();
        second.wait_routed(0, Duration::from_secs(30));
        assert_eq!(second.routed(), 5);
        first.wait_routed(0, Duration::from_secs(30));
        assert_eq!(first.routed(), 3);
        assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
        router.join().unwrap();
        // Already past what it saw: no wait at all.
        let t1 = Instant::now();
        first.wait_routed(0, Duration::from_secs(30));
        assert!(t1.elapsed() < Duration::from_secs(10));
        signal.route_ended();
        assert_eq!(first.routed(), u64::MAX);
        let t2 = Instant::now();
        second.wait_routed(5, Duration::from_secs(30));
        assert!(t2.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn retry_repeats_only_external_faults() {
        let mut calls = 0;
        let r: Result<(), _> = retry(3, "x", || {
            calls += 1;
            Err(ConnectorError::external("down"))
        });
        assert_eq!(calls, 3);
        assert_eq!(r.unwrap_err().fault, Fault::External);

        let mut calls = 0;
        let r: Result<(), _> = retry(3, "x", || {
            calls += 1;
            Err(ConnectorError::user("no such table"))
        });
        assert_eq!(calls, 1);
        assert_eq!(r.unwrap_err().fault, Fault::User);

        let mut calls = 0;
        let r = retry(3, "x", || {
            calls += 1;
            if calls < 2 {
                Err(ConnectorError::external("down"))
            } else {
                Ok(7)
            }
        });
        assert_eq!(r, Ok(7));
    }

    #[test]
    fn positions_round_trip_and_refuse_another_shape() {
        let p = Position::encode(&vec![("t".to_owned(), 0i32, 42i64)]).unwrap();
        let back: Vec<(String, i32, i64)> = p.decode().unwrap();
        assert_eq!(back, vec![("t".to_owned(), 0, 42)]);
        let e = p.decode::<u64>().unwrap_err();
        assert_eq!(e.fault, Fault::User);
        let bytes = {
            let mut b = Vec::new();
            ciborium::into_writer(&p, &mut b).unwrap();
            b
        };
        let again: Position = ciborium::from_reader(bytes.as_slice()).unwrap();
        assert_eq!(again, p);
    }

    #[test]
    fn internal_errors_say_so() {
        assert_eq!(
            ConnectorError::internal("x").to_string(),
            "x (this is a bug)"
        );
        assert_eq!(ConnectorError::user("x").context("f").to_string(), "f: x");
    }
}
