//! The `kafka` source: a consumer-group member that reads its assigned partitions from
//! resolved start offsets (to optional end offsets), a record of each partition in
//! turn, and commits what the run has fully processed.
//!
//! Start and end offsets are resolved once, when the source starts (committed offsets,
//! offsets by time, partition ends), so a partition assigned late or re-assigned by a
//! rebalance starts exactly where it should: at the run's own position when it already
//! read from it, otherwise at its resolved start. Offsets are never committed while
//! consuming (`enable.auto.commit=false`): the runtime asks for a commit once every
//! output of the consumed records is written.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use spanflow_operators::Sym;

use super::config::{EndPosition, KafkaSourceConfig, StartPosition, format_time};
use crate::formats::InputFormat;
use crate::runtime::group::{Fence, PartitionKey};
use crate::runtime::io::{
    CheckpointHandle, ConnectorError, Finish, FinishSignal, Position, Records, Source,
    SourceOutput, SplitRun,
};

/// Timeout of the metadata and offset requests made at start and at commit.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// A chunk is sent when it holds this many records...
const CHUNK_RECORDS: usize = 64;
/// ... or this many payload bytes, or when the consumer has nothing more right now.
const CHUNK_BYTES: usize = 1 << 20;

/// What a fetch returns at most, over all partitions (librdkafka's `fetch.max.bytes`).
const FETCH_MAX_BYTES: usize = 64 << 20;

/// librdkafka's fetch and prefetch bounds per partition for a source reading
/// `partitions` partitions (each read from its own queue, which these bound one by
/// one): a fetch brings some of every partition rather than all of a few (the
/// partitions that got nothing would then hold the watermark while the others run
/// ahead), and what waits fetched stays about 64 MiB in all, as with one queue.
fn prefetch(partitions: usize) -> [(&'static str, usize); 4] {
    let n = partitions.max(1);
    [
        (
            "max.partition.fetch.bytes",
            (FETCH_MAX_BYTES / n).clamp(1 << 20, 16 << 20),
        ),
        ("queued.max.messages.kbytes", (65536 / n).clamp(1024, 65536)),
        ("queued.min.messages", (100_000 / n).clamp(1000, 100_000)),
        // A partition whose queue is at its bound is fetched again this much later
        // (librdkafka's default, 1 s, is for one queue of 64 MiB; a bound of a few MiB
        // is read in far less, and the partition would then hold the watermark).
        ("fetch.queue.backoff.ms", 20),
    ]
}

/// How long the poll loop waits when no partition had a record and alignment holds
/// some paused: their resumption does not wake it ([`Wake`]).
const POLL_WAIT: Duration = Duration::from_millis(5);

/// How long the poll loop waits at most when no partition had a record and none is
/// paused: records and events wake it at once, so this bounds only how late it sees
/// a stop or a checkpoint barrier of an idle source. Polling every [`POLL_WAIT`]
/// instead cost ~8 ms of CPU per second of waiting (a group join, a quiet topic;
/// BENCHMARKS.md, 2026-12-06, twenty-ninth session).
const IDLE_WAIT: Duration = Duration::from_millis(100);

/// The low and high watermark of partitions, by topic and partition.
pub type Watermarks = HashMap<(String, i32), (i64, i64)>;

/// The low and high watermark of every partition, in two requests per broker: asked a
/// partition at a time (`fetch_watermarks`), a topic of 128 partitions took 256 round
/// trips before the first record was read. A list-offsets lookup by the special
/// timestamps -2 (earliest) and -1 (latest) is the request those answers come from.
pub fn watermarks<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    partitions: &[(String, i32)],
) -> Result<Watermarks, ConnectorError> {
    let lookup = |at: Offset| -> Result<HashMap<(String, i32), i64>, ConnectorError> {
        list_offsets(consumer, partitions, at, || "read the offsets".to_owned())?
            .elements()
            .iter()
            .map(|e| {
                let cannot = |why: String| {
                    ConnectorError::external(format!(
                        "cannot read the offsets of {}/{}: {why}",
                        e.topic(),
                        e.partition()
                    ))
                };
                e.error().map_err(|err| cannot(err.to_string()))?;
                match e.offset() {
                    Offset::Offset(o) if o >= 0 => Ok(((e.topic().to_owned(), e.partition()), o)),
                    other => Err(cannot(format!("the broker answered {other:?}"))),
                }
            })
            .collect()
    };
    let low = lookup(Offset::Beginning)?;
    let high = lookup(Offset::End)?;
    partitions
        .iter()
        .map(|k| match (low.get(k), high.get(k)) {
            (Some(l), Some(h)) => Ok((k.clone(), (*l, *h))),
            _ => Err(ConnectorError::external(format!(
                "cannot read the offsets of {}/{}: the broker did not answer for it",
                k.0, k.1
            ))),
        })
        .collect()
}

/// Every partition's offset at `at` (a time in ms, or `Beginning`/`End` for its low and
/// high watermark), in one list-offsets request per broker. A failed request is
/// "cannot {what}: {error}".
fn list_offsets<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    partitions: &[(String, i32)],
    at: Offset,
    what: impl FnOnce() -> String,
) -> Result<TopicPartitionList, ConnectorError> {
    let mut tpl = TopicPartitionList::new();
    for (topic, p) in partitions {
        tpl.add_partition_offset(topic, *p, at)
            .map_err(|e| ConnectorError::internal(format!("{topic}/{p}: {e}")))?;
    }
    consumer
        .offsets_for_times(tpl, REQUEST_TIMEOUT)
        .map_err(|e| ConnectorError::external(format!("cannot {}: {e}", what())))
}

/// Wakes the poll loop when one of its queues (the consumer's, a partition's) gets
/// records or events: librdkafka calls [`Wake::notify`] from its own threads when a
/// queue turns non-empty.
#[derive(Default)]
struct Wake {
    woken: Mutex<bool>,
    cond: std::sync::Condvar,
}

impl Wake {
    fn notify(&self) {
        if let Ok(mut woken) = self.woken.lock() {
            *woken = true;
        }
        self.cond.notify_one();
    }

    /// Returns once notified (since the last return) or after `timeout`.
    fn wait(&self, timeout: Duration) {
        let Ok(mut woken) = self.woken.lock() else {
            return;
        };
        if !*woken {
            woken = match self.cond.wait_timeout(woken, timeout) {
                Ok((w, _)) => w,
                Err(_) => return,
            };
        }
        *woken = false;
    }

    /// A callback for [`BaseConsumer::set_nonempty_callback`] and its partition
    /// queues' counterpart.
    fn callback(self: &Arc<Self>) -> impl Fn() + Send + Sync + 'static {
        let wake = self.clone();
        move || wake.notify()
    }
}

/// Records all partitions together may have on their way to the router (read, not
/// yet handled by it), shared out evenly among the partitions read from their own
/// queues ([`in_flight_bound`]).
const IN_FLIGHT_RECORDS: usize = 256;

/// The records one of `partitions` partitions may have on their way to the router.
///
/// Watermark alignment pauses a partition once the router saw it run ahead, and what
/// was read of it meanwhile still arrives: chunks, the source channel and the
/// decoders hold several hundred records. While a few partitions deliver and the
/// others have not yet (the first seconds of a run), those few shared all of it, and
/// ran tens of seconds of event time past their bound. Per partition the overshoot is
/// now this many records: a record of one of n partitions carries about n times the
/// event time of a record of a single partition, so a share of a fixed total keeps it
/// about the same event time whatever the partition count.
pub(crate) fn in_flight_bound(partitions: usize) -> usize {
    (IN_FLIGHT_RECORDS / partitions.max(1)).max(2)
}

/// Payload bytes all partitions together may have on their way to the router, shared
/// out evenly like [`IN_FLIGHT_RECORDS`]; a partition may always have one record on its
/// way, however large.
///
/// A count of records bounds event time only while records are small. A topic not
/// keyed by trace id (the Collector Kafka exporter's default) holds whole requests, and
/// there the records' share at 64 partitions, four of one partition, spanned ~23 s of
/// its event time: the job buffered 2.6x the spans of the in-memory run, whatever the
/// alignment drift (BENCHMARKS.md, 2026-12-06, thirty-first session). Bytes follow
/// spans, and so event time, whatever the layout. Pieces of a topic keyed by trace id
/// stay under this (~13 MiB in all at 64 partitions).
pub(crate) const IN_FLIGHT_BYTES: usize = 16 << 20;

/// A partition's records on their way to the router: for each, its sequence number
/// (records read before it) and its payload's size.
#[derive(Default)]
struct InFlight {
    records: VecDeque<(u64, usize)>,
    bytes: usize,
}

impl InFlight {
    /// Forgets the records the router has handled (`routed`: how many it has).
    fn handled(&mut self, routed: u64) {
        while let Some(&(seq, len)) = self.records.front()
            && seq < routed
        {
            self.records.pop_front();
            self.bytes -= len;
        }
    }

    fn push(&mut self, seq: u64, len: usize) {
        self.records.push_back((seq, len));
        self.bytes += len;
    }

    /// Whether the partition has its share of records or bytes on their way.
    fn full(&self, records: usize, bytes: usize) -> bool {
        self.records.len() >= records || (!self.records.is_empty() && self.bytes >= bytes)
    }
}

/// How long the poll loop waits at most for the router when every partition it could
/// read waits for it (it is woken as soon as the router handled a chunk).
const IN_FLIGHT_WAIT: Duration = Duration::from_millis(5);

/// What the consumer reports to the runtime, in order.
#[derive(Debug)]
pub enum KafkaEvent {
    /// Partitions now read by this member; each is a split with its own watermark.
    Assigned(Vec<Split>),
    /// Partitions taken away by a rebalance (or finished, in a bounded run).
    Revoked(Vec<Split>),
    /// Records, as runs of consecutive records of one partition (the partitions read
    /// take turns, a record each).
    Records {
        /// Whose records they are, in order.
        runs: Vec<Run>,
        /// Offsets, one per record.
        offsets: Vec<u64>,
        /// Payloads (an empty payload for a null record), where librdkafka fetched
        /// them: the reader's consumer is closed only once they are all dropped (see
        /// [`KafkaEvent::detach`]).
        records: Vec<Bytes>,
    },
    /// Reading ended (end offsets reached, or stopped); the reader now waits for
    /// [`Finish`]. Carries the next offset of every partition read (what a commit
    /// would store), for savepoints.
    EndOfInput(Vec<(String, i32, i64)>),
    /// Every record of checkpoint `id` was emitted before this; carries the next
    /// offset of every partition read, as [`KafkaEvent::EndOfInput`] does.
    Barrier {
        /// The checkpoint.
        id: u64,
        /// Next offset per partition.
        positions: Vec<(String, i32, i64)>,
    },
    /// Records between this member's position and the end of each partition it reads
    /// (from librdkafka's statistics, about once a second).
    Lag(Vec<(Split, i64)>),
    /// Partitions read to their current end: every record they had went out before
    /// this (librdkafka's partition EOF; sources of one topic only, as its event names
    /// no topic).
    CaughtUp(Vec<Split>),
}

impl KafkaEvent {
    /// The event with its payloads copied out of librdkafka's buffers, for keeping
    /// after the reader is dropped (which otherwise waits for them, up to its close
    /// timeout, before it leaves the group).
    pub fn detach(self) -> Self {
        match self {
            KafkaEvent::Records {
                runs,
                offsets,
                records,
            } => KafkaEvent::Records {
                runs,
                offsets,
                records: records.iter().map(|r| Bytes::copy_from_slice(r)).collect(),
            },
            other => other,
        }
    }
}

/// Consecutive records of one partition within [`KafkaEvent::Records`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// The partition.
    pub split: Split,
    /// The split whose watermark they move: the partition's key, or with origin
    /// splits ([`origin_key`]) that of the input partition they were re-keyed from.
    pub watermark: u32,
    /// Records in the run.
    pub len: usize,
}

/// The next offset of every partition: (topic, partition, offset).
pub type Offsets = Vec<(String, i32, i64)>;

/// How the reader takes part in the runtime's checkpoints.
pub trait CheckpointHooks {
    /// The checkpoint a barrier is due for, if any.
    fn barrier_due(&self) -> Option<u64>;
    /// The newest checkpoint that is durable.
    fn durable(&self) -> u64;
    /// The splits watermark alignment pauses now, if they may have changed since
    /// `seen` (a version the reader keeps).
    fn paused_splits(&self, seen: &mut u64) -> Option<BTreeSet<u32>> {
        let _ = seen;
        None
    }
    /// How many of the records sent the runtime has handled (`u64::MAX`: the reader
    /// need not wait for it).
    fn routed(&self) -> u64 {
        u64::MAX
    }
    /// Waits until [`CheckpointHooks::routed`] is past `seen`, or `timeout` passed. The
    /// default returns at once, as the default `routed` never holds the reader back.
    fn wait_routed(&self, seen: u64, timeout: Duration) {
        let _ = (seen, timeout);
    }
}

impl CheckpointHooks for CheckpointHandle {
    fn barrier_due(&self) -> Option<u64> {
        CheckpointHandle::barrier_due(self)
    }
    fn durable(&self) -> u64 {
        CheckpointHandle::durable(self)
    }
    fn paused_splits(&self, seen: &mut u64) -> Option<BTreeSet<u32>> {
        CheckpointHandle::paused_splits(self, seen)
    }
    fn routed(&self) -> u64 {
        CheckpointHandle::routed(self)
    }
    fn wait_routed(&self, seen: u64, timeout: Duration) {
        CheckpointHandle::wait_routed(self, seen, timeout);
    }
}

/// No checkpoints (tools that read a topic outside a run).
impl CheckpointHooks for () {
    fn barrier_due(&self) -> Option<u64> {
        None
    }
    fn durable(&self) -> u64 {
        0
    }
}

/// One partition of one topic, with the split key the runtime tracks it by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// Split key, unique within the source (1, 2, ...; 0 is the runtime's placeholder).
    pub key: u32,
    /// Topic name.
    pub topic: Arc<str>,
    /// Partition number.
    pub partition: i32,
}

/// State shared between the poll loop and the rebalance callback.
#[derive(Default)]
struct Shared {
    /// Resolved start offset per partition.
    start: HashMap<(Arc<str>, i32), i64>,
    /// Next offset to read per partition, once the run has read from it.
    position: HashMap<(Arc<str>, i32), i64>,
    /// End offset (exclusive) per partition in a bounded run.
    end: HashMap<(Arc<str>, i32), i64>,
    /// Rebalance events not yet handled by the poll loop.
    pending: Vec<KafkaEvent>,
    /// Split keys by partition.
    keys: HashMap<(Arc<str>, i32), u32>,
    /// Topic names as given, for cheap `Arc<str>` reuse.
    topics: Vec<Arc<str>>,
    /// Partitions currently assigned.
    assigned: BTreeMap<u32, Split>,
    /// At least one assignment arrived.
    ever_assigned: bool,
    /// Errors reported by librdkafka's callbacks.
    errors: Vec<String>,
    /// Consumer lag per partition from the newest statistics, not yet handed on.
    lag: Option<Vec<((String, i32), i64)>>,
    /// As a member of a group of instances of one job: the fence revoked partitions
    /// go to before they are released (see `runtime::group`).
    fence: Option<Arc<Fence>>,
    /// The group's assignment changed since the run started: the run restarts.
    rebalanced: bool,
    /// Partitions were revoked and the group has not assigned any since (a
    /// rebalance in progress).
    awaiting_assign: bool,
    /// When a group member's partitions were last revoked, until it reads again.
    revoked_at: Option<Instant>,
    /// Time a group member spent between a revoke and reading again, summed.
    paused: Duration,
}

impl Shared {
    fn topic_arc(&mut self, topic: &str) -> Arc<str> {
        if let Some(t) = self.topics.iter().find(|t| &***t == topic) {
            return t.clone();
        }
        let t: Arc<str> = Arc::from(topic);
        self.topics.push(t.clone());
        t
    }

    fn split(&mut self, topic: &str, partition: i32) -> Split {
        let topic = self.topic_arc(topic);
        let next = self.keys.len() as u32 + 1;
        let key = *self.keys.entry((topic.clone(), partition)).or_insert(next);
        Split {
            key,
            topic,
            partition,
        }
    }
}

/// The consumer context: positions newly assigned partitions and queues the
/// assignment changes for the poll loop.
struct Ctx {
    shared: Arc<Mutex<Shared>>,
    errors: super::ErrorLog,
    /// The group assigns incrementally (`cooperative-sticky`), as configured: asking
    /// librdkafka (`rebalance_protocol()`) from the callback can wait forever while
    /// the consumer closes (librdkafka issue #4041).
    cooperative: bool,
}

impl ClientContext for Ctx {
    fn error(&self, error: KafkaError, reason: &str) {
        // A partition's end is news for the poll loop (`enable.partition.eof`), not an
        // error.
        if error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF) {
            return;
        }
        self.errors.warn("consumer", &error, reason);
    }

    /// Keeps each assigned partition's consumer lag (librdkafka reports -1 until it
    /// knows both ends; partition -1 is its internal queue).
    fn stats(&self, statistics: rdkafka::Statistics) {
        let lag: Vec<((String, i32), i64)> = statistics
            .topics
            .iter()
            .flat_map(|(t, topic)| {
                topic
                    .partitions
                    .values()
                    .filter(|p| p.partition >= 0 && p.consumer_lag >= 0)
                    .map(move |p| ((t.clone(), p.partition), p.consumer_lag))
            })
            .collect();
        if let Ok(mut s) = self.shared.lock() {
            s.lag = Some(lag);
        }
    }
}

/// Takes partitions the group assigned (or a standalone run assigns itself): positions
/// each where the run starts it, assigns them to `consumer` and queues the assignment
/// for the poll loop.
fn assign_partitions(
    shared: &mut Shared,
    consumer: &BaseConsumer<Ctx>,
    tpl: &mut TopicPartitionList,
    cooperative: bool,
) {
    let mut splits = Vec::new();
    for e in tpl.elements() {
        splits.push(shared.split(e.topic(), e.partition()));
    }
    for s in &splits {
        let k = (s.topic.clone(), s.partition);
        let at = shared
            .position
            .get(&k)
            .or_else(|| shared.start.get(&k))
            .copied();
        let offset = at.map_or(Offset::Stored, Offset::Offset);
        // A partition assigned but never read still commits where it
        // started, so the group resumes there and not at its fallback.
        if let Some(o) = at {
            shared.position.entry(k).or_insert(o);
        }
        if let Err(e) = tpl.set_partition_offset(&s.topic, s.partition, offset) {
            shared
                .errors
                .push(format!("cannot position {}/{}: {e}", s.topic, s.partition));
        }
    }
    let r = if cooperative {
        consumer.incremental_assign(tpl)
    } else {
        consumer.assign(tpl)
    };
    if let Err(e) = r {
        shared.errors.push(format!("assigning partitions: {e}"));
    }
    shared.ever_assigned = true;
    tracing::info!(
        partitions = ?splits.iter().map(|s| s.partition).collect::<Vec<_>>(),
        "kafka partitions assigned"
    );
    for s in &splits {
        shared.assigned.insert(s.key, s.clone());
    }
    shared.awaiting_assign = false;
    if shared.fence.is_some() {
        // Read from where the restarted run says, once it restored them.
        if let Err(e) = consumer.pause(tpl) {
            shared
                .errors
                .push(format!("pausing assigned partitions: {e}"));
        }
        shared.rebalanced = true;
    }
    shared.pending.push(KafkaEvent::Assigned(splits));
}

impl ConsumerContext for Ctx {
    /// Asynchronous commits report here: a failed one is retried by the next
    /// checkpoint's, but a group that keeps refusing them must not look like lag.
    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        offsets: &TopicPartitionList,
    ) {
        if let Err(e) = result {
            tracing::warn!(
                error = %e,
                partitions = ?offsets.elements().iter().map(|e| e.partition()).collect::<Vec<_>>(),
                "committing offsets failed"
            );
        }
    }

    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let Ok(mut shared) = self.shared.lock() else {
            return;
        };
        let cooperative = self.cooperative;
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                assign_partitions(&mut shared, consumer, tpl, cooperative);
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let mut splits = Vec::new();
                for e in tpl.elements() {
                    let s = shared.split(e.topic(), e.partition());
                    if shared.assigned.remove(&s.key).is_some() {
                        splits.push(s);
                    }
                }
                if let Some(fence) = &shared.fence {
                    // Before the partitions are released: no checkpoint of this member
                    // that holds them completes after this.
                    fence.revoke(splits.iter().map(|s| (s.topic.to_string(), s.partition)));
                    shared.rebalanced = true;
                    shared.awaiting_assign = true;
                    shared.revoked_at.get_or_insert_with(Instant::now);
                }
                let r = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(e) = r {
                    shared.errors.push(format!("revoking partitions: {e}"));
                }
                tracing::info!(
                    partitions = ?splits.iter().map(|s| s.partition).collect::<Vec<_>>(),
                    "kafka partitions revoked"
                );
                shared.pending.push(KafkaEvent::Revoked(splits));
            }
            other => {
                shared.errors.push(format!("rebalance failed: {other:?}"));
            }
        }
    }
}

/// A Kafka source ready to run on a blocking thread.
pub struct KafkaReader {
    config: KafkaSourceConfig,
    consumer: super::GroupConsumer<Ctx>,
    shared: Arc<Mutex<Shared>>,
    bounded: bool,
    /// Partitions a restored run must read before it ends (bounded), and that hold
    /// the watermark until they are read (or idle): those of the checkpoint, even
    /// while the group still gives them to the member the crash left behind.
    owed: Vec<(Arc<str>, i32)>,
    /// Records between the start and end offsets of every partition (bounded runs):
    /// what the progress bar counts towards. With other members in the group this
    /// member reads only its share.
    pub backlog: Option<u64>,
    /// With origin splits: the input partitions of a repartition stage whose pieces
    /// this topic holds (0: off; see [`origin_key`]).
    pub origins: u32,
    /// Notified by the consumer's queue and the partitions' own queues.
    wake: Arc<Wake>,
    /// [`IN_FLIGHT_BYTES`], but for tests.
    in_flight_bytes: usize,
}

/// The watermark split of records of partition `split` that came from input partition
/// `origin` of a repartition stage. A partition of the internal topic mixes every input
/// partition, each read by some instance's stage at its own pace: one watermark per
/// origin keeps a stage that lags from making the others' spans late (Flink's
/// watermark per input channel).
pub fn origin_key(split: u32, origin: u32) -> u32 {
    (split << 12) | (origin & 0xfff)
}

/// The most input partitions origin splits tell apart.
pub const MAX_ORIGINS: u32 = 0x1000;

/// The Kafka timestamp (ms) of the record at `offset` of a partition, read with
/// `reader`, a consumer that joins no group; `None` when it has none.
fn record_timestamp(
    reader: &BaseConsumer,
    topic: &str,
    partition: i32,
    offset: i64,
) -> Result<Option<i64>, ConnectorError> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(offset))
        .map_err(|e| ConnectorError::internal(format!("{topic}/{partition}: {e}")))?;
    reader
        .assign(&tpl)
        .map_err(|e| ConnectorError::external(format!("cannot read {topic}/{partition}: {e}")))?;
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    while Instant::now() < deadline {
        match reader.poll(Duration::from_millis(100)) {
            Some(Ok(m))
                if m.topic() == topic && m.partition() == partition && m.offset() == offset =>
            {
                return Ok(m.timestamp().to_millis());
            }
            Some(Err(e)) => {
                return Err(ConnectorError::external(format!(
                    "cannot read {topic}/{partition} at {offset}: {e}"
                )));
            }
            _ => {}
        }
    }
    Err(ConnectorError::external(format!(
        "cannot read {topic}/{partition} at {offset}: no record within {REQUEST_TIMEOUT:?}"
    )))
}

/// The input partition a repartitioned record came from: a repartition stage keys
/// each piece with it (4 bytes, big-endian; the partition itself is chosen by trace
/// id). 0 for a record keyed otherwise.
fn origin_of(m: &BorrowedMessage<'_>) -> u32 {
    m.key()
        .and_then(|k| <[u8; 4]>::try_from(k).ok())
        .map_or(0, u32::from_be_bytes)
}

/// The partitions of `splits`, as librdkafka takes them.
fn partition_list(splits: &[Split]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for s in splits {
        tpl.add_partition(&s.topic, s.partition);
    }
    tpl
}

impl KafkaReader {
    /// Connects, resolves start (and end) offsets of every partition of the topics and
    /// subscribes; a bounded run assigns itself every partition instead, and only
    /// commits to the group. `resume` (from a savepoint) overrides the start of the
    /// partitions it lists. Fails when a broker is unreachable or a topic does not exist.
    pub fn connect(
        config: &KafkaSourceConfig,
        resume: &[(String, i32, i64)],
    ) -> Result<Self, ConnectorError> {
        Self::open(config, resume, false)
    }

    /// [`KafkaReader::connect`], as one member of a group of instances (`member`) or
    /// alone. A bounded run alone reads every partition of its topics and assigns them
    /// itself: joining the group would only make it wait for the group's first
    /// rebalance (the broker's `group.initial.rebalance.delay.ms`, 3 s by default)
    /// before reading anything. It still commits its positions to the group. A run
    /// that is not bounded subscribes, so that it reads partitions added later.
    fn open(
        config: &KafkaSourceConfig,
        resume: &[(String, i32, i64)],
        member: bool,
    ) -> Result<Self, ConnectorError> {
        let shared = Arc::new(Mutex::new(Shared::default()));
        // Bigger fetches than librdkafka's defaults: OTLP batches are large messages
        // (about 1 MiB), and one message per partition per round trip starves the
        // pipeline (the fetch per partition is sized once the partitions are known,
        // see `prefetch`). `properties` still override these.
        let mut defaults = BTreeMap::from([
            ("fetch.max.bytes".to_owned(), FETCH_MAX_BYTES.to_string()),
            ("fetch.wait.max.ms".to_owned(), "100".to_owned()),
            // Consumer lag for the job server's /metrics (served on the poll thread).
            ("statistics.interval.ms".to_owned(), "1000".to_owned()),
            // Watermark alignment must know when a partition has nothing left to read.
            ("enable.partition.eof".to_owned(), "true".to_owned()),
        ]);
        defaults.extend(config.properties.clone());
        // librdkafka's only incremental assignor.
        let cooperative = defaults
            .get("partition.assignment.strategy")
            .is_some_and(|s| s.contains("cooperative-sticky"));
        let mut cc = super::client_config(&config.brokers, &defaults);
        cc.set("group.id", &config.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set(
                "auto.offset.reset",
                if config.on_no_committed == "latest" {
                    "latest"
                } else {
                    "earliest"
                },
            );
        let cannot_create = |e: KafkaError| {
            ConnectorError::user(format!(
                "cannot create a Kafka consumer for {}: {e}",
                config.brokers
            ))
        };
        // Offsets are looked up before the group member is made: how much it fetches
        // and keeps per partition depends on how many partitions there are.
        let consumer: BaseConsumer = cc.create().map_err(cannot_create)?;
        let start = config.start_position()?;
        let end = config.end_position()?;
        let mut partitions = Vec::new();
        for topic in &config.topics {
            let md = consumer
                .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
                .map_err(|e| {
                    ConnectorError::external(format!(
                        "cannot read metadata of topic `{topic}` from {}: {e}",
                        config.brokers
                    ))
                })?;
            let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
                return Err(ConnectorError::user(format!(
                    "topic `{topic}` does not exist on {}",
                    config.brokers
                )));
            };
            if let Some(err) = t.error() {
                return Err(ConnectorError::user(format!(
                    "topic `{topic}` is not readable on {}: {:?}",
                    config.brokers, err
                )));
            }
            if t.partitions().is_empty() {
                return Err(ConnectorError::user(format!(
                    "topic `{topic}` has no partitions"
                )));
            }
            for p in t.partitions() {
                partitions.push((topic.clone(), p.id()));
            }
        }
        let mut starts = HashMap::new();
        let mut ends = HashMap::new();
        let marks = watermarks(&consumer, &partitions)?;
        let by_time = |ms: i64| -> Result<HashMap<(String, i32), i64>, ConnectorError> {
            let found = list_offsets(&consumer, &partitions, Offset::Offset(ms), || {
                format!("look up offsets at {}", format_time(ms))
            })?;
            let mut out = HashMap::new();
            // Reads the records that check a lookup (below), made once if needed.
            let mut reader: Option<BaseConsumer> = None;
            for e in found.elements() {
                let key = (e.topic().to_owned(), e.partition());
                let (low, high) = marks.get(&key).copied().unwrap_or((0, 0));
                // No record at or after the time: the partition's end.
                let mut o = match e.offset() {
                    Offset::Offset(o) if o >= 0 => o,
                    _ => high,
                };
                // Some brokers (tansu 0.6) answer "none" with the log's first offset
                // instead of -1: believe that answer only if that record is at or
                // after the time.
                if o == low && low < high {
                    if reader.is_none() {
                        reader = Some(cc.create::<BaseConsumer>().map_err(|e| {
                            ConnectorError::external(format!("cannot create a Kafka consumer: {e}"))
                        })?);
                    }
                    if let Some(r) = &reader
                        && record_timestamp(r, &key.0, key.1, low)?.is_some_and(|t| t < ms)
                    {
                        o = high;
                    }
                }
                out.insert(key, o);
            }
            Ok(out)
        };
        match start {
            StartPosition::Earliest => {
                for (k, (low, _)) in &marks {
                    starts.insert(k.clone(), *low);
                }
            }
            StartPosition::Latest => {
                for (k, (_, high)) in &marks {
                    starts.insert(k.clone(), *high);
                }
            }
            StartPosition::Timestamp(ms) => starts = by_time(ms)?,
            StartPosition::Committed { earliest_fallback } => {
                let mut tpl = TopicPartitionList::new();
                for (topic, p) in &partitions {
                    tpl.add_partition(topic, *p);
                }
                let committed = consumer
                    .committed_offsets(tpl, REQUEST_TIMEOUT)
                    .map_err(|e| {
                        ConnectorError::external(format!(
                            "cannot read the committed offsets of group `{}`: {e}",
                            config.group_id
                        ))
                    })?;
                for e in committed.elements() {
                    let key = (e.topic().to_owned(), e.partition());
                    let (low, high) = marks.get(&key).copied().unwrap_or((0, 0));
                    let o = match e.offset() {
                        Offset::Offset(o) if o >= 0 => o.clamp(low, high.max(low)),
                        _ if earliest_fallback => low,
                        _ => high,
                    };
                    starts.insert(key, o);
                }
            }
        }
        // Explicit end offsets alone still make the run bounded: unlisted partitions
        // end where they are now.
        let end = match end {
            None if !config.end_offsets.is_empty() => Some(EndPosition::Latest),
            e => e,
        };
        match end {
            None => {}
            Some(EndPosition::Latest) => {
                for (k, (_, high)) in &marks {
                    ends.insert(k.clone(), *high);
                }
            }
            Some(EndPosition::Timestamp(ms)) => ends = by_time(ms)?,
        }
        tracing::debug!(?starts, ?ends, ?marks, "kafka source offsets");
        for (topic, parts) in &config.end_offsets {
            for (p, o) in parts {
                ends.insert((topic.clone(), *p), *o);
            }
        }
        for (topic, p, o) in resume {
            starts.insert((topic.clone(), *p), *o);
        }
        let backlog = end.is_some().then(|| {
            ends.iter()
                .map(|(k, e)| {
                    let s = starts.get(k).copied().unwrap_or(*e);
                    u64::try_from(e - s).unwrap_or(0)
                })
                .sum()
        });
        let mut owed = Vec::new();
        {
            let mut s = shared
                .lock()
                .map_err(|_| ConnectorError::internal("poisoned lock"))?;
            for (topic, p, o) in resume {
                let at_end = ends.get(&(topic.clone(), *p)).is_some_and(|e| o >= e);
                if !at_end {
                    owed.push((s.topic_arc(topic), *p));
                }
            }
            for ((topic, p), o) in starts {
                let t = s.topic_arc(&topic);
                s.start.insert((t, p), o);
            }
            for ((topic, p), o) in ends {
                let t = s.topic_arc(&topic);
                s.end.insert((t, p), o);
            }
        }
        drop(consumer);
        for (k, v) in prefetch(partitions.len()) {
            if !config.properties.contains_key(k) {
                cc.set(k, v.to_string());
            }
        }
        let mut consumer: BaseConsumer<Ctx> = cc
            .create_with_context(Ctx {
                shared: shared.clone(),
                errors: super::ErrorLog::default(),
                cooperative,
            })
            .map_err(cannot_create)?;
        let wake = Arc::new(Wake::default());
        consumer.set_nonempty_callback(wake.callback());
        if end.is_some() && !member {
            let mut tpl = TopicPartitionList::new();
            for (topic, p) in &partitions {
                tpl.add_partition(topic, *p);
            }
            let mut s = shared
                .lock()
                .map_err(|_| ConnectorError::internal("poisoned lock"))?;
            assign_partitions(&mut s, &consumer, &mut tpl, false);
            if let Some(e) = s.errors.pop() {
                return Err(ConnectorError::external(e));
            }
        } else {
            let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
            consumer.subscribe(&topics).map_err(|e| {
                ConnectorError::external(format!(
                    "cannot subscribe to {}: {e}",
                    config.topics.join(", ")
                ))
            })?;
        }
        Ok(KafkaReader {
            config: config.clone(),
            consumer: super::GroupConsumer::new(consumer),
            shared,
            bounded: end.is_some(),
            owed,
            backlog,
            origins: 0,
            wake,
            in_flight_bytes: IN_FLIGHT_BYTES,
        })
    }

    /// Another bound on the payload bytes on their way to the router, in all.
    #[cfg(test)]
    pub(crate) fn with_in_flight_bytes(mut self, bytes: usize) -> Self {
        self.in_flight_bytes = bytes;
        self
    }

    /// Reads until the end offsets (bounded) or until `stop` is set, handing events to
    /// `emit` (which returns false when the runtime is gone). Then waits for `finish`
    /// and commits the positions when told to. Returns a description of what failed.
    pub fn run(
        &mut self,
        stop: &AtomicBool,
        emit: &mut dyn FnMut(KafkaEvent) -> bool,
        finish: Option<FinishSignal>,
        hooks: &dyn CheckpointHooks,
    ) -> Result<KafkaRunStats, ConnectorError> {
        let mut stats = KafkaRunStats::default();
        // Positions of checkpoints sent but not yet durable, oldest first.
        let mut uncommitted: Vec<(u64, Offsets)> = Vec::new();
        let mut last_barrier = 0;
        let mut chunk = Chunk::default();
        let mut done: BTreeMap<u32, Split> = BTreeMap::new();
        let mut last_flush = Instant::now();
        // `done.len()` when the loop last dropped the queues of the partitions done.
        let mut done_seen = 0;
        // Each assigned partition's own queue of fetched records, read in turn a record
        // at a time, so that the partitions advance together whatever the batches a
        // fetch returns: one queue for all delivers a fetch partition by partition, up
        // to `max.partition.fetch.bytes` (tens of seconds of a partition's spans) at a
        // time, and watermark alignment could only act on that scale.
        let mut queues: BTreeMap<u32, (Split, PartitionQueue<Ctx>)> = BTreeMap::new();
        let mut split_queues = true;
        let mut read_any = false;
        let started = Instant::now();
        let member = self.shared.lock().is_ok_and(|s| s.fence.is_some());
        if member {
            let splits: Vec<Split> = match self.shared.lock() {
                Ok(s) => s.assigned.values().cloned().collect(),
                Err(_) => return Err(ConnectorError::internal("poisoned lock")),
            };
            if !emit(KafkaEvent::Assigned(splits)) {
                return Ok(stats);
            }
        } else if !self.owed.is_empty() {
            let splits: Vec<Split> = match self.shared.lock() {
                Ok(mut s) => self.owed.iter().map(|(t, p)| s.split(t, *p)).collect(),
                Err(_) => return Err(ConnectorError::internal("poisoned lock")),
            };
            if !emit(KafkaEvent::Assigned(splits)) {
                return Ok(stats);
            }
        }
        let mut next_wait_warning = Duration::from_secs(30);
        // Watermark alignment: the partitions the runtime asks to pause. Their queues
        // are not read meanwhile; librdkafka's pause would drop what it fetched for
        // them, to fetch (and decompress) it again on resume, and their prefetch
        // bound ([`prefetch`]) stops their fetching anyway.
        let mut pause_seen = 0;
        let mut paused: BTreeSet<u32> = BTreeSet::new();
        // Per partition read from its own queue, its records the router may not have
        // handled yet: their sequence numbers (records read before each) and sizes.
        let mut in_flight: BTreeMap<u32, InFlight> = BTreeMap::new();
        let mut waits_for_router = false;
        let mut routed = 0;
        loop {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            if let Some(w) = hooks.paused_splits(&mut pause_seen) {
                paused = self.partitions_to_pause(w);
            }
            // A group that never assigns anything (all partitions held by other members,
            // a stuck rebalance) would otherwise look like a silent hang. Checked while
            // nothing is read, so that a busy loop does not read the clock for it.
            if !read_any && started.elapsed() >= next_wait_warning {
                next_wait_warning += Duration::from_secs(30);
                // Also when a restored run still waits for its checkpoint's partitions
                // (a group may settle with nothing assigned to it).
                let assigned = self.shared.lock().map_or(true, |s| !s.assigned.is_empty());
                if !assigned {
                    tracing::warn!(
                        group = %self.config.group_id,
                        topics = %self.config.topics.join(","),
                        waited_s = started.elapsed().as_secs(),
                        "no partition assigned yet; waiting for the consumer group"
                    );
                }
            }
            if !read_any && !waits_for_router {
                self.wake.wait(if paused.is_empty() {
                    IDLE_WAIT
                } else {
                    POLL_WAIT
                });
            }
            let msg = self.consumer.poll(Duration::ZERO);
            // Rebalance events first: records of a new partition must follow its
            // assignment, and a revoked partition's pending records go out before the
            // revocation. One lock for all the callbacks left, taken once per round.
            let (lag, pending, errors, rebalanced) = match self.shared.lock() {
                Ok(mut s) => {
                    let lag = s.lag.take().map(|lag| {
                        lag.into_iter()
                            .map(|((t, p), l)| (s.split(&t, p), l))
                            .collect::<Vec<_>>()
                    });
                    (
                        lag,
                        std::mem::take(&mut s.pending),
                        std::mem::take(&mut s.errors),
                        s.rebalanced,
                    )
                }
                Err(_) => return Err(ConnectorError::internal("poisoned lock")),
            };
            if let Some(lag) = lag
                && !emit(KafkaEvent::Lag(lag))
            {
                break;
            }
            if let Some(e) = errors.into_iter().next() {
                return Err(ConnectorError::external(e));
            }
            if member && rebalanced {
                // Writes since the last checkpoint are rolled back; every partition
                // continues from its newest checkpoint, wherever it is now.
                return Err(ConnectorError::external(format!(
                    "the consumer group `{}` rebalanced",
                    self.config.group_id
                )));
            }
            let mut check_done = !pending.is_empty();
            for ev in pending {
                if let KafkaEvent::Assigned(_) = &ev {
                    // An assignment ends the partitions' own queues.
                    split_queues = true;
                }
                if let KafkaEvent::Revoked(splits) = &ev {
                    for s in splits {
                        queues.remove(&s.key);
                    }
                    if !chunk.send(emit) {
                        return Ok(stats);
                    }
                }
                if !emit(ev) {
                    return Ok(stats);
                }
            }
            if split_queues {
                split_queues = false;
                self.split_queues(&mut queues, &done)?;
            }
            let mut caught_up = Vec::new();
            let mut read = Read {
                chunk: &mut chunk,
                done: &mut done,
                caught_up: &mut caught_up,
                stats: &mut stats,
            };
            read_any = match msg {
                Some(m) => {
                    if !self.take(m, &mut read, emit)? {
                        return Ok(stats);
                    }
                    true
                }
                // Nothing waits in the consumer's queue, which partitions used before
                // their own queues were split off: their older records are all read.
                None => {
                    let mut any = false;
                    waits_for_router = false;
                    routed = hooks.routed();
                    let bound = in_flight_bound(queues.len());
                    let byte_bound = self.in_flight_bytes / queues.len().max(1);
                    for (key, (_, queue)) in &queues {
                        if paused.contains(key) || read.done.contains_key(key) {
                            continue;
                        }
                        let sent = in_flight.entry(*key).or_default();
                        sent.handled(routed);
                        if sent.full(bound, byte_bound) {
                            waits_for_router = true;
                            continue;
                        }
                        if let Some(m) = queue.poll(Duration::ZERO) {
                            any = true;
                            let seq = read.stats.records;
                            let len = m.as_ref().map_or(0, |m| m.payload_len());
                            if !self.take(m, &mut read, emit)? {
                                return Ok(stats);
                            }
                            if read.stats.records > seq {
                                sent.push(seq, len);
                            }
                        }
                    }
                    any
                }
            };
            if done.len() != done_seen {
                done_seen = done.len();
                check_done = true;
                queues.retain(|k, _| !done.contains_key(k));
                in_flight.retain(|k, _| queues.contains_key(k));
            }
            // A partition's end goes out after its last records (which may still be in
            // the chunk): reported first, the records that follow would make it look
            // as if it were reading again.
            let tick = !read_any
                || !caught_up.is_empty()
                || last_flush.elapsed() >= Duration::from_millis(20);
            if tick {
                last_flush = Instant::now();
                if !chunk.send(emit) {
                    return Ok(stats);
                }
            }
            if !caught_up.is_empty() && !emit(KafkaEvent::CaughtUp(caught_up)) {
                return Ok(stats);
            }
            // Partitions reach their end offset in `take`, one at a time; the run looks
            // for its end when one did, and what else ends it (partitions assigned at
            // their end, an assignment, an idle consumer) on the flush's tick: a look
            // locks the shared state and walks every assigned partition, which a round
            // that read records does not need every time.
            if self.bounded && (check_done || tick) && self.all_done(&mut done, &mut chunk, emit)? {
                break;
            }
            if let Some(id) = hooks.barrier_due() {
                // Everything read so far goes out first: the positions cover exactly
                // the records before the barrier.
                if !chunk.send(emit) {
                    return Ok(stats);
                }
                let positions = self.positions()?;
                uncommitted.push((id, positions.clone()));
                last_barrier = id;
                if !emit(KafkaEvent::Barrier { id, positions }) {
                    return Ok(stats);
                }
            }
            self.commit_durable(&mut uncommitted, hooks, &mut stats);
            if waits_for_router && !read_any {
                hooks.wait_routed(routed, IN_FLIGHT_WAIT);
            }
        }
        drop(queues);
        if !chunk.send(emit) {
            return Ok(stats);
        }
        stats.finished = true;
        let positions = self.positions()?;
        // Every checkpoint after the last barrier holds this source as finished, at
        // these positions: once one is durable the group sees them, while the rest of
        // the job may still take long to finish.
        uncommitted.push((last_barrier + 1, positions.clone()));
        emit(KafkaEvent::EndOfInput(positions));
        let answer = finish.map(|f| {
            loop {
                if let Some(answer) = f.wait_for(Duration::from_millis(50)) {
                    break answer;
                }
                self.commit_durable(&mut uncommitted, hooks, &mut stats);
            }
        });
        if answer == Some(Finish::Commit) {
            // A group member restarts from its checkpoints, not from these offsets (they
            // show its lag); and a synchronous commit may wait for a rebalance that
            // only this consumer's next poll lets finish (another member leaving as
            // this one stops).
            stats.committed = self.commit(if member {
                CommitMode::Async
            } else {
                CommitMode::Sync
            })?;
        }
        Ok(stats)
    }

    /// Commits the newest of `uncommitted` (checkpoint id, positions) whose checkpoint
    /// is durable, and forgets it and older ones. Offsets reach the group only then: a
    /// restart without the checkpoint resumes from there, and lag is real.
    fn commit_durable(
        &self,
        uncommitted: &mut Vec<(u64, Offsets)>,
        hooks: &dyn CheckpointHooks,
        stats: &mut KafkaRunStats,
    ) {
        let durable = hooks.durable();
        if let Some(i) = uncommitted.iter().rposition(|(id, _)| *id <= durable) {
            let (_, positions) = uncommitted.swap_remove(i);
            uncommitted.retain(|(id, _)| *id > durable);
            match self.commit_positions(&positions, CommitMode::Async) {
                Ok(n) => stats.committed = n,
                Err(e) => tracing::warn!(error = %e, "committing a checkpoint's offsets"),
            }
        }
    }

    /// In a bounded run: true once some assignment arrived and every assigned partition
    /// reached its end (partitions already at their end when assigned finish here).
    fn all_done(
        &self,
        done: &mut BTreeMap<u32, Split>,
        chunk: &mut Chunk,
        emit: &mut dyn FnMut(KafkaEvent) -> bool,
    ) -> Result<bool, ConnectorError> {
        let (ever, assigned, at_end): (bool, Vec<Split>, Vec<Split>) = {
            let s = self
                .shared
                .lock()
                .map_err(|_| ConnectorError::internal("poisoned lock"))?;
            let at_end = s
                .assigned
                .values()
                .filter(|sp| !done.contains_key(&sp.key))
                .filter(|sp| {
                    let k = (sp.topic.clone(), sp.partition);
                    let pos = s.position.get(&k).or_else(|| s.start.get(&k)).copied();
                    matches!((pos, s.end.get(&k)), (Some(p), Some(e)) if p >= *e)
                })
                .cloned()
                .collect();
            (
                s.ever_assigned,
                s.assigned.values().cloned().collect(),
                at_end,
            )
        };
        if !at_end.is_empty() {
            self.pause(&at_end);
            for sp in &at_end {
                done.insert(sp.key, sp.clone());
            }
            if !chunk.send(emit) || !emit(KafkaEvent::Revoked(at_end)) {
                return Ok(true);
            }
        }
        let owed_done = {
            let mut s = self
                .shared
                .lock()
                .map_err(|_| ConnectorError::internal("poisoned lock"))?;
            self.owed
                .iter()
                .all(|(t, p)| done.contains_key(&s.split(t, *p).key))
        };
        Ok(ever && owed_done && assigned.iter().all(|s| done.contains_key(&s.key)))
    }

    /// A partition read to its end offset (bounded run): what was read of it goes
    /// out, then its revocation. False when the runtime is gone.
    fn finish_partition(
        &self,
        split: &Split,
        chunk: &mut Chunk,
        done: &mut BTreeMap<u32, Split>,
        emit: &mut dyn FnMut(KafkaEvent) -> bool,
    ) -> bool {
        if done.contains_key(&split.key) {
            return true;
        }
        self.pause(std::slice::from_ref(split));
        done.insert(split.key, split.clone());
        chunk.send(emit) && emit(KafkaEvent::Revoked(vec![split.clone()]))
    }

    /// Handles what a poll returned: a record joins the chunk (sent once full), a
    /// partition's end is noted in `read.caught_up`. False when the runtime is gone.
    fn take(
        &self,
        polled: rdkafka::error::KafkaResult<BorrowedMessage<'_>>,
        read: &mut Read<'_>,
        emit: &mut dyn FnMut(KafkaEvent) -> bool,
    ) -> Result<bool, ConnectorError> {
        let m = match polled {
            Ok(m) => m,
            Err(KafkaError::PartitionEOF(p)) => {
                if self.config.topics.len() == 1
                    && let Ok(s) = self.shared.lock()
                {
                    read.caught_up.extend(
                        s.assigned
                            .values()
                            .filter(|sp| sp.partition == p && !read.done.contains_key(&sp.key))
                            .cloned(),
                    );
                }
                return Ok(true);
            }
            Err(e) => {
                // Broker and network errors are retried by librdkafka; report them and
                // keep polling.
                tracing::warn!(error = %e, "kafka consumer");
                read.stats.errors += 1;
                return Ok(true);
            }
        };
        let mut s = self
            .shared
            .lock()
            .map_err(|_| ConnectorError::internal("poisoned lock"))?;
        let split = s.split(m.topic(), m.partition());
        if read.done.contains_key(&split.key) {
            // A paused partition can still deliver what was prefetched.
            return Ok(true);
        }
        let k = (split.topic.clone(), split.partition);
        let end = s.end.get(&k).copied();
        if end.is_some_and(|e| m.offset() >= e) {
            drop(s);
            return Ok(self.finish_partition(&split, read.chunk, read.done, emit));
        }
        s.position.insert(k, m.offset() + 1);
        drop(s);
        let watermark = match self.origins {
            0 => split.key,
            _ => origin_key(split.key, origin_of(&m) % self.origins),
        };
        let offset = m.offset();
        let payload = self.consumer.payload(m);
        read.stats.records += 1;
        read.stats.bytes += payload.len() as u64;
        read.chunk.push(
            &split,
            watermark,
            u64::try_from(offset).unwrap_or(0),
            payload,
        );
        if read.chunk.full() && !read.chunk.send(emit) {
            return Ok(false);
        }
        if end.is_some_and(|e| offset + 1 >= e) {
            return Ok(self.finish_partition(&split, read.chunk, read.done, emit));
        }
        Ok(true)
    }

    /// Gives every assigned partition still read its own queue (anew after an
    /// assignment, which ends them), and forgets the queues of the others.
    fn split_queues(
        &self,
        queues: &mut BTreeMap<u32, (Split, PartitionQueue<Ctx>)>,
        done: &BTreeMap<u32, Split>,
    ) -> Result<(), ConnectorError> {
        let assigned: Vec<Split> = self
            .shared
            .lock()
            .map_err(|_| ConnectorError::internal("poisoned lock"))?
            .assigned
            .values()
            .filter(|sp| !done.contains_key(&sp.key))
            .cloned()
            .collect();
        queues.clear();
        if assigned.is_empty() {
            return Ok(());
        }
        // What the first fetches brought went to the consumer's queue, a partition
        // after another: paused, a partition drops what was not read yet, and on resume
        // it is fetched again from where reading got to, into the partition's queue.
        let list = partition_list(&assigned);
        if let Err(e) = self.consumer.pause(&list) {
            tracing::warn!(error = %e, "pausing partitions to split their queues");
        }
        let consumer = self.consumer.shared();
        for sp in assigned {
            // librdkafka makes the partition's state when it has none yet
            // (`rd_kafka_queue_get_partition` creates on a miss), so this fails only
            // for a topic name holding a NUL byte, which no broker accepts; the
            // partition would then come through the consumer's queue.
            if let Some(mut q) = consumer.split_partition_queue(&sp.topic, sp.partition) {
                q.set_nonempty_callback(self.wake.callback());
                queues.insert(sp.key, (sp, q));
            }
        }
        if let Err(e) = self.consumer.resume(&list) {
            tracing::warn!(error = %e, "resuming partitions after splitting their queues");
        }
        Ok(())
    }

    /// The partitions alignment pauses: with origin splits, those of which every
    /// origin is ahead (pausing one that an origin still lags on would hold back
    /// the slowest).
    fn partitions_to_pause(&self, wanted: BTreeSet<u32>) -> BTreeSet<u32> {
        if self.origins == 0 {
            return wanted;
        }
        let parents: BTreeSet<u32> = wanted.iter().map(|k| k >> 12).collect();
        parents
            .into_iter()
            .filter(|p| (0..self.origins).all(|o| wanted.contains(&origin_key(*p, o))))
            .collect()
    }

    fn pause(&self, splits: &[Split]) {
        if let Err(e) = self.consumer.pause(&partition_list(splits)) {
            tracing::warn!(error = %e, "pausing partitions");
        }
    }

    /// The next offset of every partition: where the run got to in those it read,
    /// where it was to start in the others (a checkpoint taken before the group
    /// assigned anything must still hold the position it was restored from).
    fn positions(&self) -> Result<Vec<(String, i32, i64)>, ConnectorError> {
        let s = self
            .shared
            .lock()
            .map_err(|_| ConnectorError::internal("poisoned lock"))?;
        let mut p: BTreeMap<(String, i32), i64> = s
            .start
            .iter()
            .map(|((t, p), o)| ((t.to_string(), *p), *o))
            .collect();
        for ((t, part), o) in &s.position {
            p.insert((t.to_string(), *part), *o);
        }
        if s.fence.is_some() {
            // A group member's checkpoint holds exactly the partitions it owns.
            let owned: BTreeSet<(String, i32)> = s
                .assigned
                .values()
                .map(|sp| (sp.topic.to_string(), sp.partition))
                .collect();
            p.retain(|k, _| owned.contains(k));
        }
        Ok(p.into_iter().map(|((t, part), o)| (t, part, o)).collect())
    }

    /// Commits the next offset of every partition the run read from. Returns how many
    /// partitions were committed.
    fn commit(&self, mode: CommitMode) -> Result<usize, ConnectorError> {
        let positions = self.positions()?;
        self.commit_positions(&positions, mode)
    }

    fn commit_positions(
        &self,
        positions: &[(String, i32, i64)],
        mode: CommitMode,
    ) -> Result<usize, ConnectorError> {
        if positions.is_empty() {
            return Ok(0);
        }
        let mut tpl = TopicPartitionList::new();
        for (topic, p, o) in positions {
            tpl.add_partition_offset(topic, *p, Offset::Offset(*o))
                .map_err(|e| ConnectorError::internal(format!("{topic}/{p}: {e}")))?;
        }
        self.consumer.commit(&tpl, mode).map_err(|e| {
            ConnectorError::external(format!(
                "committing offsets of group `{}` failed: {e}",
                self.config.group_id
            ))
        })?;
        Ok(positions.len())
    }
}

/// A consumer-group member kept across the runs of one instance of a job run as a
/// group (`spanflow run --instance`): a run ends when the group moves partitions,
/// and the next one goes on with the same member, so the group sees one member that
/// stays, not one that leaves and joins again (which would rebalance every other
/// member too).
pub struct KafkaMember {
    reader: Mutex<Option<KafkaReader>>,
    shared: Arc<Mutex<Shared>>,
    fence: Arc<Fence>,
}

impl std::fmt::Debug for KafkaMember {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaMember").finish_non_exhaustive()
    }
}

/// How long the group's assignment must stay unchanged before a run starts on it.
const SETTLE: Duration = Duration::from_millis(300);

impl KafkaMember {
    /// Connects and subscribes (see [`KafkaReader::connect`]); revoked partitions go to
    /// `fence` before they are released.
    pub fn connect(config: &KafkaSourceConfig, fence: Arc<Fence>) -> Result<Self, ConnectorError> {
        let reader = KafkaReader::open(config, &[], true)?;
        let shared = reader.shared.clone();
        if let Ok(mut s) = shared.lock() {
            s.fence = Some(fence.clone());
        }
        Ok(KafkaMember {
            reader: Mutex::new(Some(reader)),
            shared,
            fence,
        })
    }

    /// Time this member read nothing because of rebalances: from each revoke until
    /// the next run restored its partitions and read again.
    pub fn paused(&self) -> Duration {
        self.shared.lock().map_or(Duration::ZERO, |s| s.paused)
    }

    /// Whether the group's assignment changed since the current run started.
    pub fn rebalanced(&self) -> bool {
        self.shared.lock().is_ok_and(|s| s.rebalanced)
    }

    /// Polls the group until it assigned this member its partitions and the
    /// assignment stayed unchanged for a moment (or `stop` is set); returns them. The
    /// next run starts on them: nothing is revoked from it yet.
    pub fn wait_assignment(&self, stop: &AtomicBool) -> Result<Vec<PartitionKey>, ConnectorError> {
        let guard = self
            .reader
            .lock()
            .map_err(|_| ConnectorError::internal("poisoned lock"))?;
        let Some(reader) = guard.as_ref() else {
            return Err(ConnectorError::internal("the group member is in use"));
        };
        let started = Instant::now();
        let mut last_change = Instant::now();
        let mut warned = false;
        loop {
            // Records of partitions kept from the last run are read again from where
            // the next run restores them: drop what arrives meanwhile.
            let _ = reader.consumer.poll(Duration::from_millis(50));
            let mut s = self
                .shared
                .lock()
                .map_err(|_| ConnectorError::internal("poisoned lock"))?;
            if let Some(e) = s.errors.drain(..).next() {
                return Err(ConnectorError::external(e));
            }
            if !s.pending.is_empty() {
                s.pending.clear();
                last_change = Instant::now();
            }
            // After a revoke the group assigns again (possibly nothing) once the
            // rebalance completes; a group that never does is not waited for forever.
            let settled = s.ever_assigned
                && last_change.elapsed() >= SETTLE
                && (!s.awaiting_assign || last_change.elapsed() >= Duration::from_secs(30));
            if settled || stop.load(Ordering::Relaxed) {
                s.rebalanced = false;
                self.fence.clear();
                return Ok(s
                    .assigned
                    .values()
                    .map(|sp| (sp.topic.to_string(), sp.partition))
                    .collect());
            }
            if !warned && started.elapsed() >= Duration::from_secs(30) {
                warned = true;
                tracing::warn!("no partition assigned yet; waiting for the consumer group");
            }
        }
    }

    fn take(&self) -> Result<KafkaReader, ConnectorError> {
        self.reader
            .lock()
            .map_err(|_| ConnectorError::internal("poisoned lock"))?
            .take()
            .ok_or_else(|| ConnectorError::internal("the group member is in use"))
    }

    fn put_back(&self, reader: KafkaReader) {
        if let Ok(mut r) = self.reader.lock() {
            *r = Some(reader);
        }
    }
}

impl KafkaReader {
    /// Starts a group member's run: every assigned partition is read from `resume`
    /// (where its newest checkpoint got to) or, never checkpointed, from its resolved
    /// start.
    fn reposition(&mut self, resume: &[(String, i32, i64)]) -> Result<(), ConnectorError> {
        let mut seek = TopicPartitionList::new();
        let mut all = TopicPartitionList::new();
        {
            let mut s = self
                .shared
                .lock()
                .map_err(|_| ConnectorError::internal("poisoned lock"))?;
            s.pending.clear();
            let assigned: Vec<Split> = s.assigned.values().cloned().collect();
            for sp in assigned {
                let k = (sp.topic.clone(), sp.partition);
                let at = resume
                    .iter()
                    .find(|(t, p, _)| **t == *sp.topic && *p == sp.partition)
                    .map(|(_, _, o)| *o)
                    .or_else(|| s.start.get(&k).copied());
                all.add_partition(&sp.topic, sp.partition);
                if let Some(o) = at {
                    seek.add_partition_offset(&sp.topic, sp.partition, Offset::Offset(o))
                        .map_err(|e| ConnectorError::internal(format!("{}: {e}", sp.topic)))?;
                    s.position.insert(k, o);
                } else {
                    s.position.remove(&k);
                }
            }
        }
        if seek.count() > 0 {
            let done = self
                .consumer
                .seek_partitions(seek, REQUEST_TIMEOUT)
                .map_err(|e| {
                    ConnectorError::external(format!("cannot position partitions: {e}"))
                })?;
            for e in done.elements() {
                if let Err(err) = e.error() {
                    return Err(ConnectorError::external(format!(
                        "cannot position {}/{}: {err}",
                        e.topic(),
                        e.partition()
                    )));
                }
            }
        }
        if all.count() > 0 {
            self.consumer
                .resume(&all)
                .map_err(|e| ConnectorError::external(format!("cannot resume partitions: {e}")))?;
        }
        if let Ok(mut s) = self.shared.lock()
            && let Some(at) = s.revoked_at.take()
        {
            let pause = at.elapsed();
            s.paused += pause;
            tracing::info!(
                pause_ms = pause.as_millis() as u64,
                partitions = all.count(),
                "reading again after the rebalance"
            );
        }
        Ok(())
    }
}

/// Counters of a finished Kafka source.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KafkaRunStats {
    /// Records read.
    pub records: u64,
    /// Payload bytes read.
    pub bytes: u64,
    /// Consumer errors reported (and retried by librdkafka).
    pub errors: u64,
    /// The reader ended normally (end offsets reached or stopped).
    pub finished: bool,
    /// Partitions whose offsets were committed.
    pub committed: usize,
}

/// What the poll loop's reading changes.
struct Read<'a> {
    chunk: &'a mut Chunk,
    done: &'a mut BTreeMap<u32, Split>,
    caught_up: &'a mut Vec<Split>,
    stats: &'a mut KafkaRunStats,
}

/// Records read and not yet sent, of any partitions.
#[derive(Default)]
struct Chunk {
    runs: Vec<Run>,
    offsets: Vec<u64>,
    /// Payloads where librdkafka fetched them ([`super::GroupConsumer::payload`]).
    records: Vec<Bytes>,
    bytes: usize,
}

impl Chunk {
    fn push(&mut self, split: &Split, watermark: u32, offset: u64, payload: Bytes) {
        match self.runs.last_mut() {
            Some(r) if r.watermark == watermark && r.split.key == split.key => r.len += 1,
            _ => self.runs.push(Run {
                split: split.clone(),
                watermark,
                len: 1,
            }),
        }
        if self.records.capacity() == 0 {
            self.records.reserve(CHUNK_RECORDS);
            self.offsets.reserve(CHUNK_RECORDS);
        }
        self.offsets.push(offset);
        self.bytes += payload.len();
        self.records.push(payload);
    }

    fn full(&self) -> bool {
        self.records.len() >= CHUNK_RECORDS || self.bytes >= CHUNK_BYTES
    }

    /// Sends what it holds, if anything. False when the runtime is gone.
    fn send(&mut self, emit: &mut dyn FnMut(KafkaEvent) -> bool) -> bool {
        if self.records.is_empty() {
            return true;
        }
        self.bytes = 0;
        emit(KafkaEvent::Records {
            runs: std::mem::take(&mut self.runs),
            offsets: std::mem::take(&mut self.offsets),
            records: std::mem::take(&mut self.records),
        })
    }
}

/// The `kafka` source as the runtime runs it.
#[derive(Debug)]
pub struct KafkaSource {
    config: KafkaSourceConfig,
    /// (topic, partition, next offset) to resume from: a savepoint's.
    resume: Vec<(String, i32, i64)>,
    /// The group member it reads with, kept across runs (a job run as a group).
    member: Option<Arc<KafkaMember>>,
    /// Origin splits: the input partitions of the repartition stage feeding the topic.
    origins: u32,
}

impl KafkaSource {
    /// A source reading what `config` describes.
    pub fn new(config: KafkaSourceConfig) -> Self {
        KafkaSource {
            config,
            resume: Vec::new(),
            member: None,
            origins: 0,
        }
    }

    /// Gives each of the topic's `origins` input partitions of a repartition stage a
    /// watermark of its own in every partition ([`origin_key`]).
    pub fn with_origins(mut self, origins: u32) -> Self {
        self.origins = origins.min(MAX_ORIGINS);
        self
    }

    /// A source reading with `member`, one run of an instance of a group.
    pub fn with_member(config: KafkaSourceConfig, member: Arc<KafkaMember>) -> Self {
        KafkaSource {
            member: Some(member),
            ..KafkaSource::new(config)
        }
    }
}

impl Source for KafkaSource {
    fn format(&self) -> InputFormat {
        self.config.format
    }

    fn resumable(&self) -> bool {
        true
    }

    fn resume_from(&mut self, position: &Position) -> Result<(), ConnectorError> {
        self.resume = position.decode()?;
        Ok(())
    }

    fn run(&mut self, out: &mut SourceOutput) -> Result<(), ConnectorError> {
        let mut reader = match &self.member {
            Some(m) => {
                let mut r = m.take()?;
                if let Err(e) = r.reposition(&self.resume) {
                    m.put_back(r);
                    return Err(e);
                }
                r
            }
            None => KafkaReader::connect(&self.config, &self.resume)?,
        };
        if let Some(n) = reader.backlog {
            out.expect_records(n);
        }
        reader.origins = self.origins;
        let origins = self.origins;
        // The watermark splits of partitions: themselves, or one per origin.
        let keys = move |splits: &[Split]| -> Vec<u32> {
            match origins {
                0 => splits.iter().map(|s| s.key).collect(),
                n => splits
                    .iter()
                    .flat_map(|s| (0..n).map(move |o| origin_key(s.key, o)))
                    .collect(),
            }
        };
        let mut topics: Vec<(Arc<str>, Sym)> = Vec::new();
        let stop = out.stop_flag();
        let finish = out.take_finish();
        let hooks = out.checkpoint_handle();
        let mut position_error = None;
        let mut emit = |ev: KafkaEvent| -> bool {
            match ev {
                KafkaEvent::Assigned(splits) => out.splits_added(keys(&splits)),
                KafkaEvent::Revoked(splits) => out.splits_removed(keys(&splits)),
                KafkaEvent::CaughtUp(splits) => out.splits_caught_up(keys(&splits)),
                KafkaEvent::Lag(lag) => {
                    out.consumer_lag(
                        lag.iter()
                            .map(|(s, l)| (s.topic.to_string(), s.partition, *l))
                            .collect(),
                    );
                    true
                }
                KafkaEvent::EndOfInput(positions) => match Position::encode(&positions) {
                    Ok(p) => out.end(Some(p)),
                    Err(e) => {
                        position_error = Some(e);
                        false
                    }
                },
                KafkaEvent::Barrier { id, positions } => match Position::encode(&positions) {
                    Ok(p) => out.barrier(id, Some(p)),
                    Err(e) => {
                        position_error = Some(e);
                        false
                    }
                },
                KafkaEvent::Records {
                    runs,
                    offsets,
                    records,
                } => {
                    let runs = runs
                        .into_iter()
                        .map(|run| {
                            let topic = match topics
                                .iter()
                                .find(|(t, _)| Arc::ptr_eq(t, &run.split.topic))
                            {
                                Some((_, s)) => *s,
                                None => {
                                    let s = Sym::new(&run.split.topic);
                                    topics.push((run.split.topic.clone(), s));
                                    s
                                }
                            };
                            SplitRun {
                                split: run.watermark,
                                topic: Some(topic),
                                partition: u32::try_from(run.split.partition).unwrap_or(0),
                                len: run.len,
                            }
                        })
                        .collect();
                    out.records(Records {
                        runs,
                        first_offset: offsets.first().copied().unwrap_or(0),
                        offsets: Some(offsets),
                        records,
                    })
                }
            }
        };
        let result = reader.run(&stop, &mut emit, finish, &hooks);
        if let Some(m) = &self.member {
            m.put_back(reader);
        }
        if let Some(e) = position_error {
            return Err(e);
        }
        let stats = result?;
        tracing::debug!(?stats, "kafka source finished");
        Ok(())
    }
}
