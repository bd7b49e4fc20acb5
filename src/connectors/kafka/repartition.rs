//! The repartition stage of a job run as a group whose input topics are not
//! partitioned by trace id (Kafka Streams' repartition topic): each instance consumes
//! its share of the input in the job's consumer group, splits every OTLP request by
//! trace id ([`super::produce::split_request`]: every field of the request kept) and
//! produces the pieces to the partition of an internal topic their trace id hashes to.
//! The job's analytics read the internal topic as a group of their own, where every
//! trace belongs to one partition, and checkpoint it as any keyed input. Each piece is
//! keyed with its input partition: the analytics keep a watermark per input partition
//! in every internal partition ([`super::source::origin_key`]), since the stages of
//! several instances read their shares of the input at their own pace.
//!
//! Offsets of the input are committed only for records whose pieces the broker has
//! acknowledged: every second, and before the group takes partitions away (the
//! rebalance callback flushes the producer and commits what was read of them), so a
//! rebalance or a stop repeats and loses nothing. An instance killed between producing
//! and committing leaves its last uncommitted input (at most about a second) to be
//! split again by the next owner: those pieces reach the internal topic twice.
//!
//! The stage paces its input partitions by event time, as watermark alignment paces a
//! source's splits: a partition whose spans run more than the job's `max_drift` ahead
//! of the slowest partition still being read is paused until that one catches up.
//! The analytics cannot do it for the stage (every internal partition carries every
//! input partition, so none of them is ever ahead as a whole), and without it a stage
//! catching up on a backlog read its input partitions one after the other: measured,
//! 845 K of 1.03 M spans open at once in the session window, waiting for the input
//! partitions not read yet.
//!
//! A record that does not decode goes to the internal topic whole (to the partition of
//! its input partition), where the analytics' decoder sends it to `dead_letters` with
//! its reason.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::config::{KafkaSourceConfig, StartPosition};
use super::produce::{KafkaProducer, partition_of, try_split_prost};
use crate::formats::otlp_split::split_by_trace_timed;
use crate::runtime::RepartitionSummary;
use crate::runtime::io::ConnectorError;
use crate::runtime::watermark::WatermarkSettings;

/// How often read input is committed (after its pieces were acknowledged).
const COMMIT_EVERY: Duration = Duration::from_secs(1);

/// How often the stage re-decides which input partitions to pause.
const PACE_EVERY: Duration = Duration::from_millis(100);

/// An input partition: (topic, partition).
type InputPartition = (String, i32);

/// Event-time pacing of the stage's input partitions (module docs). Pure logic: the
/// stage feeds it what it reads and applies what [`Pacing::decide`] says.
#[derive(Debug)]
pub(crate) struct Pacing {
    max_drift: u64,
    idle_timeout: Duration,
    max_ahead: Duration,
    parts: BTreeMap<InputPartition, Part>,
}

#[derive(Debug)]
struct Part {
    /// The latest span end read (Unix ns), `None` before the first record.
    position: Option<u64>,
    /// Read to its end (until its next record).
    at_end: bool,
    /// When it last delivered a record or was resumed.
    last: Instant,
    paused: bool,
    /// Since when it is paused.
    paused_at: Option<Instant>,
    /// Resumed to keep its spans' watermark alive: not paused again before its next
    /// record.
    owes_record: bool,
}

impl Pacing {
    /// Pacing by the job's watermark settings; `None` without alignment (`align:
    /// false`).
    pub(crate) fn new(settings: &WatermarkSettings) -> Option<Self> {
        let drift = settings.max_drift?;
        Some(Pacing {
            max_drift: u64::try_from(drift.as_nanos()).unwrap_or(u64::MAX),
            idle_timeout: settings.idle_timeout,
            max_ahead: settings.max_ahead,
            parts: BTreeMap::new(),
        })
    }

    /// The latest span end that counts now: later ones (a skewed clock) would pause
    /// their partition for good, as they would hold a watermark.
    pub(crate) fn not_after(&self) -> u64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            + self.max_ahead;
        u64::try_from(now.as_nanos()).unwrap_or(u64::MAX)
    }

    /// A record of `tp` was read; its latest span end, if it had spans.
    pub(crate) fn record(&mut self, tp: (&str, i32), max_end: Option<u64>, now: Instant) {
        let part = match self.parts.get_mut(&(tp.0.to_owned(), tp.1)) {
            Some(p) => p,
            None => return,
        };
        part.at_end = false;
        part.last = now;
        part.owes_record = false;
        if let Some(t) = max_end {
            part.position = Some(part.position.map_or(t, |p| p.max(t)));
        }
    }

    /// Whether `tp` is a partition it paces (assigned when last asked).
    pub(crate) fn knows(&self, tp: &InputPartition) -> bool {
        self.parts.contains_key(tp)
    }

    /// Partition `partition` (of any input topic: librdkafka's end-of-partition event
    /// does not name it) was read to its end.
    pub(crate) fn at_end(&mut self, partition: i32) {
        for ((_, p), part) in self.parts.iter_mut() {
            if *p == partition {
                part.at_end = true;
            }
        }
    }

    /// Which of the `assigned` partitions to pause and which to resume now. The
    /// slowest is the least position among the partitions still being read (not at
    /// their end, not idle); one that has read nothing yet counts as the slowest of
    /// all, so the others wait for its first record. A paused partition resumes once
    /// it is within half the drift (so that it does not flap), or after half the idle
    /// timeout for one record: the analytics count a split that gets nothing for the
    /// idle timeout as idle and let the watermark pass it, and the spans this partition
    /// sends after a longer pause could then be late or open a second session of their
    /// trace.
    pub(crate) fn decide(
        &mut self,
        assigned: &BTreeSet<InputPartition>,
        now: Instant,
    ) -> (Vec<InputPartition>, Vec<InputPartition>) {
        self.parts.retain(|tp, _| assigned.contains(tp));
        for tp in assigned {
            self.parts.entry(tp.clone()).or_insert(Part {
                position: None,
                at_end: false,
                last: now,
                paused: false,
                paused_at: None,
                owes_record: false,
            });
        }
        let idle = self.idle_timeout;
        let active =
            |p: &Part| !p.at_end && (p.paused || now.saturating_duration_since(p.last) < idle);
        let slowest = self
            .parts
            .values()
            .filter(|p| active(p))
            .map(|p| p.position.unwrap_or(0))
            .min();
        let (mut pause, mut resume) = (Vec::new(), Vec::new());
        let keepalive = idle / 2;
        for (tp, part) in self.parts.iter_mut() {
            if part.paused
                && part
                    .paused_at
                    .is_some_and(|at| now.saturating_duration_since(at) >= keepalive)
            {
                part.owes_record = true;
            }
            let ahead = match (slowest, part.position) {
                (Some(slowest), Some(at)) if active(part) && !part.owes_record => {
                    let drift = if part.paused {
                        self.max_drift / 2
                    } else {
                        self.max_drift
                    };
                    at > slowest.saturating_add(drift)
                }
                _ => false,
            };
            if ahead && !part.paused {
                part.paused = true;
                part.paused_at = Some(now);
                pause.push(tp.clone());
            } else if !ahead && part.paused {
                part.paused = false;
                part.paused_at = None;
                part.last = now;
                resume.push(tp.clone());
            }
        }
        (pause, resume)
    }
}

#[derive(Default)]
struct Counters {
    records: AtomicU64,
    bytes_in: AtomicU64,
    messages: AtomicU64,
    bytes_out: AtomicU64,
    undecodable: AtomicU64,
    revokes: AtomicU64,
    pauses: AtomicU64,
}

/// Read but uncommitted input: the next offset of each partition, and the producer
/// whose acknowledgements they wait for. Shared with the rebalance callback.
struct Pending {
    producer: Arc<KafkaProducer>,
    next: Mutex<BTreeMap<(String, i32), i64>>,
    /// The first failure of a commit made in the rebalance callback.
    failed: Mutex<Option<String>>,
    counters: Arc<Counters>,
}

impl Pending {
    /// Waits for every piece produced so far, then commits the read offsets of the
    /// partitions `only` names (all when `None`).
    fn flush_and_commit(
        &self,
        consumer: &BaseConsumer<Ctx>,
        only: Option<&TopicPartitionList>,
    ) -> Result<(), ConnectorError> {
        let offsets: Vec<((String, i32), i64)> = {
            let mut next = self
                .next
                .lock()
                .map_err(|_| ConnectorError::internal("poisoned lock"))?;
            let keys: Vec<(String, i32)> = next
                .keys()
                .filter(|(t, p)| only.is_none_or(|l| l.find_partition(t, *p).is_some()))
                .cloned()
                .collect();
            keys.into_iter()
                .filter_map(|k| next.remove(&k).map(|o| (k, o)))
                .collect()
        };
        if offsets.is_empty() {
            return Ok(());
        }
        self.producer.flush()?;
        let mut tpl = TopicPartitionList::new();
        for ((t, p), o) in &offsets {
            tpl.add_partition_offset(t, *p, Offset::Offset(*o))
                .map_err(|e| ConnectorError::internal(format!("offset list: {e}")))?;
        }
        consumer.commit(&tpl, CommitMode::Sync).map_err(|e| {
            ConnectorError::external(format!("committing the repartitioned input: {e}"))
        })
    }
}

struct Ctx {
    pending: Arc<Pending>,
    errors: super::ErrorLog,
}

impl ClientContext for Ctx {
    fn error(&self, error: KafkaError, reason: &str) {
        self.errors.warn("repartition consumer", &error, reason);
    }
}

impl ConsumerContext for Ctx {
    /// Before partitions go to another instance: everything read of them is produced
    /// and committed, so their new owner starts right after it.
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            self.pending
                .counters
                .revokes
                .fetch_add(1, Ordering::Relaxed);
            if let Err(e) = self.pending.flush_and_commit(consumer, Some(tpl))
                && let Ok(mut f) = self.pending.failed.lock()
            {
                f.get_or_insert(e.message);
            }
        }
    }
}

/// A running repartition stage (a thread of its own).
pub struct Repartitioner {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Result<(), ConnectorError>>>,
    counters: Arc<Counters>,
    topic: String,
    partitions: i32,
    origins: u32,
}

impl Repartitioner {
    /// Partitions of the input: each gets a watermark of its own in the analytics
    /// ([`super::source::origin_key`]).
    pub fn origins(&self) -> u32 {
        self.origins
    }

    /// Creates the internal topic when missing, joins the source's consumer group and
    /// starts splitting, pacing the input partitions by `watermark` (the source's
    /// settings). Fails when the broker or the input topic is not there.
    /// `on_failure` is set when the stage fails (the instance then stops its
    /// analytics too, and [`Repartitioner::stop`] says why).
    pub fn start(
        config: &KafkaSourceConfig,
        watermark: &WatermarkSettings,
        instance: &str,
        on_failure: Arc<AtomicBool>,
    ) -> Result<Self, ConnectorError> {
        let Some(topic) = config.repartition_topic() else {
            return Err(ConnectorError::internal(
                "the source has no repartition stage",
            ));
        };
        let first = config
            .topics
            .first()
            .ok_or_else(|| ConnectorError::user("the source lists no topic"))?;
        let origins = super::topic_partitions(&config.brokers, &config.properties, first)?;
        let wanted = match config.repartition.as_ref().and_then(|r| r.partitions) {
            Some(n) => i32::from(n),
            None => origins,
        };
        super::create_topics(
            &config.brokers,
            &config.properties,
            std::slice::from_ref(&topic),
            wanted,
        )?;
        // An existing topic keeps its partitions; the pieces follow them.
        let partitions = super::topic_partitions(&config.brokers, &config.properties, &topic)?;
        let producer = Arc::new(KafkaProducer::new(
            &config.brokers,
            &producer_properties(config),
        )?);
        let counters = Arc::new(Counters::default());
        let pending = Arc::new(Pending {
            producer: producer.clone(),
            next: Mutex::default(),
            failed: Mutex::default(),
            counters: counters.clone(),
        });
        // librdkafka's default fetch sizes: pacing, not small fetches, keeps the input
        // partitions together in event time (fetches of one record per partition
        // capped the stage at ~40 records/s on the test broker, and held more open).
        let mut cc = super::client_config(&config.brokers, &config.properties);
        // The stage always resumes at its group's committed offsets; `start` says
        // where it begins in a partition without one.
        let reset = match config.start_position()? {
            StartPosition::Latest
            | StartPosition::Committed {
                earliest_fallback: false,
            } => "latest",
            _ => "earliest",
        };
        cc.set("group.id", &config.group_id)
            .set("client.id", format!("spanflow-repartition-{instance}"))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", reset);
        let consumer: BaseConsumer<Ctx> = cc
            .create_with_context(Ctx {
                pending: pending.clone(),
                errors: super::ErrorLog::default(),
            })
            .map_err(|e| {
                ConnectorError::user(format!(
                    "cannot create a Kafka consumer for {}: {e}",
                    config.brokers
                ))
            })?;
        let names: Vec<&str> = config.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&names).map_err(|e| {
            ConnectorError::external(format!("subscribing to {}: {e}", names.join(", ")))
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let run = Run {
            consumer: super::GroupConsumer::new(consumer),
            pending,
            topic: topic.clone(),
            partitions,
            stop: stop.clone(),
            pacing: Pacing::new(watermark),
        };
        let handle = std::thread::Builder::new()
            .name("repartition".into())
            .spawn(move || {
                let r = run.run();
                if let Err(e) = &r {
                    tracing::error!(error = %e.message, "the repartition stage failed");
                    on_failure.store(true, Ordering::Relaxed);
                }
                r
            })
            .map_err(|e| ConnectorError::internal(format!("cannot start a thread: {e}")))?;
        tracing::info!(%topic, partitions, "repartition stage started");
        Ok(Repartitioner {
            stop,
            handle: Some(handle),
            counters,
            topic,
            partitions,
            origins: u32::try_from(origins).unwrap_or(0),
        })
    }

    /// What the stage did so far.
    pub fn summary(&self) -> RepartitionSummary {
        let c = &self.counters;
        RepartitionSummary {
            topic: self.topic.clone(),
            partitions: self.partitions,
            records: c.records.load(Ordering::Relaxed),
            bytes_in: c.bytes_in.load(Ordering::Relaxed),
            messages: c.messages.load(Ordering::Relaxed),
            bytes_out: c.bytes_out.load(Ordering::Relaxed),
            undecodable: c.undecodable.load(Ordering::Relaxed),
            revokes: c.revokes.load(Ordering::Relaxed),
            pauses: c.pauses.load(Ordering::Relaxed),
        }
    }

    /// Stops the stage: what it read is produced and committed, and it leaves the
    /// group.
    pub fn stop(mut self) -> Result<RepartitionSummary, ConnectorError> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.join()
                .map_err(|_| ConnectorError::internal("the repartition stage panicked"))??;
        }
        Ok(self.summary())
    }
}

impl Drop for Repartitioner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The source's `properties` less the consumer-only ones (librdkafka warns about
/// each), for the stage's producer, over a bounded send queue: the stage reads faster
/// than a broker takes the pieces when it catches up, and librdkafka's default queue
/// (1 GiB) then filled (peak RSS 1.2 GiB against 0.4 GiB reading a keyed topic; `send`
/// waits while the queue is full).
fn producer_properties(config: &KafkaSourceConfig) -> BTreeMap<String, String> {
    const CONSUMER_ONLY: &[&str] = &[
        "fetch.max.bytes",
        "fetch.min.bytes",
        "fetch.wait.max.ms",
        "max.partition.fetch.bytes",
        "session.timeout.ms",
        "heartbeat.interval.ms",
        "max.poll.interval.ms",
        "group.instance.id",
        "partition.assignment.strategy",
        "isolation.level",
        "queued.max.messages.kbytes",
        "queued.min.messages",
    ];
    let mut props = BTreeMap::from([("queue.buffering.max.kbytes".to_owned(), "65536".to_owned())]);
    props.extend(
        config
            .properties
            .iter()
            .filter(|(k, _)| !CONSUMER_ONLY.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    props
}

struct Run {
    consumer: super::GroupConsumer<Ctx>,
    pending: Arc<Pending>,
    topic: String,
    partitions: i32,
    stop: Arc<AtomicBool>,
    pacing: Option<Pacing>,
}

impl Run {
    fn run(mut self) -> Result<(), ConnectorError> {
        let result = self.split_until_stopped();
        // Even after a failure: what was acknowledged is committed, so nothing is
        // split twice needlessly.
        let last = self.pending.flush_and_commit(&self.consumer, None);
        self.consumer.unsubscribe();
        result.and(last)
    }

    fn split_until_stopped(&mut self) -> Result<(), ConnectorError> {
        let counters = self.pending.counters.clone();
        let mut last_commit = Instant::now();
        let mut last_pace = Instant::now();
        while !self.stop.load(Ordering::Relaxed) {
            if last_pace.elapsed() >= PACE_EVERY {
                self.pace();
                last_pace = Instant::now();
            }
            if let Some(m) = self.consumer.poll(Duration::from_millis(100)) {
                match m {
                    Ok(m) => {
                        let payload = m.payload().unwrap_or_default();
                        let partitions = self.partitions;
                        let not_after = self.pacing.as_ref().map_or(0, Pacing::not_after);
                        let split = split_by_trace_timed(
                            payload,
                            |id| partition_of(id, partitions),
                            not_after,
                        );
                        let (pieces, max_end) = match split {
                            Ok(s) => (s.pieces, s.max_end_ns),
                            // What the wire splitter refuses, prost may still read.
                            Err(_) => match try_split_prost(payload, partitions) {
                                Some(pieces) => (pieces, None),
                                None => {
                                    counters.undecodable.fetch_add(1, Ordering::Relaxed);
                                    let p = m.partition().rem_euclid(partitions.max(1));
                                    (vec![(p, payload.to_vec())], None)
                                }
                            },
                        };
                        if let Some(pacing) = &mut self.pacing {
                            pacing.record((m.topic(), m.partition()), max_end, Instant::now());
                        }
                        // The key names the input partition: the analytics keep a
                        // watermark per input partition.
                        let origin = u32::try_from(m.partition()).unwrap_or(0).to_be_bytes();
                        for (p, bytes) in &pieces {
                            self.pending.producer.send(
                                &self.topic,
                                Some(*p),
                                Some(&origin),
                                bytes,
                            )?;
                            counters.messages.fetch_add(1, Ordering::Relaxed);
                            counters
                                .bytes_out
                                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                        }
                        counters.records.fetch_add(1, Ordering::Relaxed);
                        counters
                            .bytes_in
                            .fetch_add(payload.len() as u64, Ordering::Relaxed);
                        if let Ok(mut next) = self.pending.next.lock() {
                            next.insert((m.topic().to_owned(), m.partition()), m.offset() + 1);
                        }
                    }
                    Err(KafkaError::PartitionEOF(p)) => {
                        if let Some(pacing) = &mut self.pacing {
                            pacing.at_end(p);
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "repartition stage: reading the input"),
                }
            }
            if let Ok(mut f) = self.pending.failed.lock()
                && let Some(e) = f.take()
            {
                return Err(ConnectorError::external(e));
            }
            if last_commit.elapsed() >= COMMIT_EVERY {
                self.pending.flush_and_commit(&self.consumer, None)?;
                last_commit = Instant::now();
            }
        }
        Ok(())
    }

    /// Applies [`Pacing::decide`] to the current assignment.
    fn pace(&mut self) {
        let Some(pacing) = &mut self.pacing else {
            return;
        };
        let Ok(assignment) = self.consumer.assignment() else {
            return;
        };
        let assigned: BTreeSet<InputPartition> = assignment
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition()))
            .collect();
        // librdkafka keeps a partition paused across a revoke and a new assignment of
        // it, which pacing has forgotten: resume every newly assigned one once.
        let fresh: Vec<InputPartition> = assigned
            .iter()
            .filter(|tp| !pacing.knows(tp))
            .cloned()
            .collect();
        let (pause, mut resume) = pacing.decide(&assigned, Instant::now());
        resume.extend(fresh.into_iter().filter(|tp| !pause.contains(tp)));
        let list = |tps: &[InputPartition]| {
            let mut tpl = TopicPartitionList::new();
            for (t, p) in tps {
                tpl.add_partition(t, *p);
            }
            tpl
        };
        if !pause.is_empty() {
            self.pending
                .counters
                .pauses
                .fetch_add(pause.len() as u64, Ordering::Relaxed);
            if let Err(e) = self.consumer.pause(&list(&pause)) {
                tracing::warn!(error = %e, "repartition stage: pausing input partitions");
            }
        }
        if !resume.is_empty()
            && let Err(e) = self.consumer.resume(&list(&resume))
        {
            tracing::warn!(error = %e, "repartition stage: resuming input partitions");
        }
    }
}
