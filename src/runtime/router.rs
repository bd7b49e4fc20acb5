//! The router: decodes the sources' records in order, on the runtime's workers, keeps
//! the watermark of every split, and hands each shard its spans (by trace id) and the
//! same watermark sequence; dead letters go to their tables here.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use spanflow_operators::Sym;
use tokio::sync::mpsc;

use super::align::{self, Alignment, AlignmentStats};
use super::checkpoint::{Part, Pending};
use super::io::{ConnectorError, Position, Records, SourceEvent, SplitRun, TableWriter};
use super::shard::ShardMsg;
use super::watermark::{WatermarkSettings, WatermarkTracker};
use super::{Progress, RunError, SinkError, TableTarget};
use crate::formats::{DecodeStats, Decoded, RecordMeta, SpanDecoder};
use crate::tables::{DeadLetterRows, TableRows};

/// What the router needs.
pub(crate) struct RouteInput<'a> {
    pub src_rx: mpsc::Receiver<SourceEvent>,
    pub shard_txs: &'a [mpsc::Sender<ShardMsg>],
    /// Name and watermark settings of each source.
    pub split_settings: &'a [(Sym, WatermarkSettings)],
    pub dead_letter_targets: Vec<TableTarget>,
    /// Part number of the dead-letter writers.
    pub part: usize,
    pub parallelism: usize,
    pub resumed_watermark: u64,
    /// The highest watermark the restored run's splits had reached.
    pub resumed_high: u64,
    pub progress: &'a Arc<Progress>,
    pub spans_seen: Option<Arc<AtomicU64>>,
    /// Where checkpoint shares go.
    pub parts: mpsc::UnboundedSender<Part>,
    /// Where watermark alignment tells sources which splits to pause.
    pub pauses: Arc<super::io::PauseSignal>,
}

/// Where the router got to when every source had ended.
pub(crate) struct Routed {
    pub tracker: WatermarkTracker,
    /// The last watermark sent to the shards.
    pub last_wm: u64,
    /// Per source: the position it reported at its end.
    pub positions: Vec<Option<Position>>,
    pub decode_stats: DecodeStats,
    /// The first failure (a source's, or a bug's); the run ends with it.
    pub failure: Option<RunError>,
    pub dead_rows: DeadLetterRows,
    pub dead_writers: Vec<(TableTarget, Box<dyn TableWriter>)>,
    pub alignment: AlignmentStats,
    /// Spans the clock-skew guard took out (dead letters `far_future`).
    pub far_future: u64,
}

/// Runs until every source has reported its end.
pub(crate) async fn route(input: RouteInput<'_>) -> Result<Routed, RunError> {
    let RouteInput {
        src_rx,
        shard_txs,
        split_settings,
        dead_letter_targets,
        part,
        parallelism,
        resumed_watermark,
        resumed_high,
        progress,
        spans_seen,
        parts,
        pauses,
    } = input;
    let n_sources = split_settings.len();
    let dead_rows = DeadLetterRows::default();
    let mut dead_writers = Vec::new();
    for t in &dead_letter_targets {
        let w = super::open_writer(t, part, dead_rows.schema())?;
        dead_writers.push((t.clone(), w));
    }
    let mut tracker = WatermarkTracker::new(n_sources);
    // Every source's split holds the watermark from the start, so a source that is slow
    // to deliver its first records does not find the watermark already past them.
    let start = Instant::now();
    for (i, (_, wm)) in split_settings.iter().enumerate() {
        tracker.add_split((i, 0), wm, start);
    }
    tracker.resume_at(resumed_watermark);
    tracker.resume_high(resumed_high);
    let decoded = tokio_stream_from(src_rx)
        .map(|ev| async move {
            match ev {
                SourceEvent::Records {
                    source,
                    name,
                    format,
                    records:
                        Records {
                            runs,
                            first_offset,
                            offsets,
                            records,
                        },
                } => {
                    // Decoding runs as a task on the runtime's workers (one per core, shared
                    // with the shards), not on the blocking pool: a chunk is two records,
                    // about a millisecond of work, and extra decoding threads only made
                    // the OS preempt the shards (twice the context switches, and each
                    // switch cost the shard its cache; 10% more CPU per span, measured).
                    let res = tokio::spawn(async move {
                        let mut dec = SpanDecoder::with_shards(parallelism);
                        let mut out = Decoded::default();
                        // Sized for the whole chunk: growing it copied every span again.
                        out.spans
                            .reserve(records.iter().map(|r| r.len()).sum::<usize>() / 256);
                        let mut ends = Vec::with_capacity(records.len());
                        // Records past the runs' lengths (a source that miscounted) keep
                        // the last run's split rather than being cut off by the zip.
                        let last = runs.last().copied().unwrap_or(SplitRun {
                            split: 0,
                            topic: None,
                            partition: 0,
                            len: 0,
                        });
                        let each_run = runs
                            .iter()
                            .flat_map(|run| std::iter::repeat_n(*run, run.len))
                            .chain(std::iter::repeat(last));
                        for (i, (r, run)) in records.iter().zip(each_run).enumerate() {
                            let meta = RecordMeta {
                                topic: run.topic,
                                source: name,
                                split: run.partition,
                                offset: offsets
                                    .as_ref()
                                    .and_then(|o| o.get(i).copied())
                                    .unwrap_or(first_offset + i as u64),
                            };
                            dec.decode(format, r, &meta, &mut out);
                            ends.push((out.spans.len(), run.split, meta));
                        }
                        let chunk = route_records(out.spans, &ends, parallelism);
                        (out.dead_letters, chunk, *dec.stats())
                    })
                    .await;
                    match res {
                        Ok((dead_letters, chunk, stats)) => Event::Decoded {
                            source,
                            dead_letters,
                            chunk,
                            stats,
                        },
                        Err(e) => Event::Failed(format!("decoder task failed: {e}")),
                    }
                }

                SourceEvent::Done { source, position } => Event::Done { source, position },
                SourceEvent::SplitsAdded { source, splits } => {
                    Event::SplitsAdded { source, splits }
                }
                SourceEvent::SplitsRemoved { source, splits } => {
                    Event::SplitsRemoved { source, splits }
                }
                SourceEvent::SplitsCaughtUp { source, splits } => {
                    Event::SplitsCaughtUp { source, splits }
                }
                SourceEvent::Failed { source, error } => Event::SourceFailed { source, error },
                SourceEvent::Barrier {
                    source,
                    id,
                    position,
                } => Event::Barrier {
                    source,
                    id,
                    position,
                },
            }
        })
        .buffered(parallelism + 1);
    tokio::pin!(decoded);

    let mut r = Router {
        shard_txs,
        split_settings,
        parts,
        progress,
        spans_seen,
        tracker,
        last_wm: resumed_watermark,
        positions: vec![None; n_sources],
        ended: vec![false; n_sources],
        decode_stats: DecodeStats::default(),
        failure: None,
        dead_rows,
        dead_writers,
        aligning: None,
        alignment: Alignment::new(pauses, n_sources),
        far_future: 0,
        resumed_watermark,
        published: None,
    };
    let idle_check = Duration::from_millis(500);
    let mut queue: VecDeque<Event> = VecDeque::new();
    loop {
        let next = tokio::time::timeout(idle_check, decoded.next()).await;
        let now = Instant::now();
        match next {
            Ok(Some(ev)) => queue.push_back(ev),
            Ok(None) => break,
            Err(_) => {}
        }
        while let Some(ev) = queue.pop_front() {
            // What sources sent after a barrier that is now complete comes next.
            for held in r.handle(ev, now).await?.into_iter().rev() {
                queue.push_front(held);
            }
        }
        // Sources that wait to commit keep their channel open: the loop ends when
        // every source has reported its end, not when the channel closes.
        if r.ended.iter().all(|e| *e) {
            break;
        }
        // Splits go idle with time alone.
        r.alignment.update(&mut r.tracker, now);
        r.publish(now);
        let wm = r.tracker.watermark(now);
        if wm > r.last_wm && wm != spanflow_operators::WATERMARK_END {
            r.last_wm = wm;
            r.progress.watermark.store(wm, Ordering::Relaxed);
            for tx in r.shard_txs {
                let _ = tx.send(ShardMsg::Watermark(wm)).await;
            }
        }
    }
    let end = Instant::now();
    r.alignment.release(end);
    Ok(Routed {
        alignment: r.alignment.stats(end),
        far_future: r.far_future,
        tracker: r.tracker,
        last_wm: r.last_wm,
        positions: r.positions,
        decode_stats: r.decode_stats,
        failure: r.failure,
        dead_rows: r.dead_rows,
        dead_writers: r.dead_writers,
    })
}

/// A checkpoint barrier the router is aligning.
struct Aligning {
    id: u64,
    /// Per source: its barrier arrived (or it ended).
    passed: Vec<bool>,
    /// Per source: the position its barrier carried.
    positions: Vec<Option<Position>>,
    /// What sources sent after their barrier, in arrival order.
    held: Vec<Event>,
}

struct Router<'a> {
    shard_txs: &'a [mpsc::Sender<ShardMsg>],
    split_settings: &'a [(Sym, WatermarkSettings)],
    parts: mpsc::UnboundedSender<Part>,
    progress: &'a Arc<Progress>,
    spans_seen: Option<Arc<AtomicU64>>,
    tracker: WatermarkTracker,
    last_wm: u64,
    positions: Vec<Option<Position>>,
    ended: Vec<bool>,
    decode_stats: DecodeStats,
    failure: Option<RunError>,
    dead_rows: DeadLetterRows,
    dead_writers: Vec<(TableTarget, Box<dyn TableWriter>)>,
    aligning: Option<Aligning>,
    alignment: Alignment,
    far_future: u64,
    resumed_watermark: u64,
    /// When the live split figures were last published.
    published: Option<Instant>,
}

impl Router<'_> {
    /// Publishes the splits' watermarks and the decode counters for watchers of the
    /// run, at most once a second (they take locks and allocate).
    fn publish(&mut self, now: Instant) {
        if self
            .published
            .is_some_and(|at| now.duration_since(at) < Duration::from_secs(1))
        {
            return;
        }
        self.published = Some(now);
        let stats = super::event_time_stats(
            &self.tracker,
            &self.alignment.stats(now),
            self.far_future,
            self.split_settings,
        );
        if let Ok(mut s) = self.progress.splits.lock() {
            *s = stats.splits;
        }
        if let Ok(mut d) = self.progress.decode.lock() {
            *d = self.decode_stats;
        }
        self.progress
            .far_future
            .store(self.far_future, Ordering::Relaxed);
    }

    /// Handles one event; returns the events a completed barrier released.
    async fn handle(&mut self, ev: Event, now: Instant) -> Result<Vec<Event>, RunError> {
        if let Some(a) = self.aligning.as_mut()
            && let Some(source) = ev.source()
            && a.passed.get(source).copied().unwrap_or(false)
        {
            a.held.push(ev);
            return Ok(Vec::new());
        }
        match ev {
            Event::Decoded {
                source,
                dead_letters,
                mut chunk,
                stats,
            } => {
                self.decode_stats.merge(&stats);
                self.progress
                    .spans
                    .fetch_add(stats.spans, Ordering::Relaxed);
                self.progress
                    .records
                    .fetch_add(chunk.records.len() as u64, Ordering::Relaxed);
                if let Some(seen) = &self.spans_seen {
                    seen.fetch_add(stats.spans, Ordering::Relaxed);
                }
                for d in &dead_letters {
                    self.dead_rows.push(d);
                }
                if self.dead_rows.len() >= 4096 {
                    flush_dead(&mut self.dead_rows, &mut self.dead_writers)?;
                }
                // The watermark may advance after every record (as a Kafka source's
                // would), never in the middle of one: spans before it reach the shards
                // first.
                let max_ahead = self
                    .split_settings
                    .get(source)
                    .map_or(Duration::MAX, |s| s.1.max_ahead);
                let wall = align::wall_clock_ns();
                // Whether the record's split had gone idle before it: the clock-skew
                // guard then bounds its spans by the wall clock alone.
                let mut run: Option<(u32, bool)> = None;
                for r in 0..chunk.records.len() {
                    let Some(&RoutedRecord { split, max_end, .. }) = chunk.records.get(r) else {
                        break;
                    };
                    let mut max_end = max_end;
                    let was_idle = match run {
                        Some((s, idle)) if s == split => idle,
                        _ => {
                            let idle = self.tracker.idle((source, split), now);
                            self.tracker.touch((source, split), now);
                            run = Some((split, idle));
                            idle
                        }
                    };
                    if let Some(t) = max_end {
                        let bound = align::far_future_bound(
                            &self.tracker,
                            (source, split),
                            max_ahead,
                            self.resumed_watermark,
                            wall,
                            was_idle,
                        );
                        if t > bound {
                            let mut dead = Vec::new();
                            let (n, left) = chunk.reject_far_future(r, bound, max_ahead, &mut dead);
                            self.far_future += n;
                            for d in &dead {
                                self.dead_rows.push(d);
                            }
                            max_end = left;
                        }
                    }
                    if let Some(t) = max_end {
                        self.tracker.observe((source, split), t);
                    }
                    let wm = self.tracker.watermark(now);
                    if wm > self.last_wm && wm != spanflow_operators::WATERMARK_END {
                        self.last_wm = wm;
                        self.progress.watermark.store(wm, Ordering::Relaxed);
                        let through = chunk.take_through(r);
                        self.send_spans(source, through).await;
                        for tx in self.shard_txs {
                            let _ = tx.send(ShardMsg::Watermark(wm)).await;
                        }
                    }
                }
                let records = chunk.records.len() as u64;
                self.send_spans(source, chunk.per_shard).await;
                self.alignment.update(&mut self.tracker, now);
                self.alignment.count_routed(source, records);
            }
            Event::Done { source, position } => {
                if let Some(slot) = self.positions.get_mut(source) {
                    *slot = position.clone();
                }
                self.tracker.finish_source(source);
                self.end_source(source);
                return self.passed(source, position).await;
            }
            Event::Barrier {
                source,
                id,
                position,
            } => {
                let a = self.aligning.get_or_insert_with(|| Aligning {
                    id,
                    passed: self.ended.clone(),
                    positions: self.positions.clone(),
                    held: Vec::new(),
                });
                if a.id != id {
                    return Err(RunError::Internal(format!(
                        "a source sent barrier {id} while barrier {} was aligning",
                        a.id
                    )));
                }
                return self.passed(source, position).await;
            }
            Event::SplitsAdded { source, splits } => {
                // The placeholder split held the watermark until the source knew its
                // real splits.
                self.tracker.remove_split((source, 0));
                if let Some((_, wm)) = self.split_settings.get(source) {
                    for s in splits {
                        self.tracker.add_split((source, s), wm, now);
                    }
                }
            }
            Event::SplitsRemoved { source, splits } => {
                for s in splits {
                    self.tracker.remove_split((source, s));
                }
                // The slowest split may be gone: others may read on.
                self.alignment.update(&mut self.tracker, now);
            }
            Event::SplitsCaughtUp { source, splits } => {
                for s in splits {
                    self.tracker.caught_up((source, s));
                }
                self.alignment.update(&mut self.tracker, now);
            }
            Event::SourceFailed { source, error } => {
                let name = self
                    .split_settings
                    .get(source)
                    .map_or("?", |s| s.0.as_str())
                    .to_owned();
                self.failure.get_or_insert(RunError::Source {
                    source_name: name,
                    error,
                });
                self.tracker.finish_source(source);
                self.end_source(source);
                return self.passed(source, None).await;
            }
            Event::Failed(msg) => {
                self.failure.get_or_insert(RunError::Internal(msg));
            }
        }
        Ok(Vec::new())
    }

    fn end_source(&mut self, source: usize) {
        if let Some(e) = self.ended.get_mut(source) {
            *e = true;
        }
    }

    /// Source `source` passed the barrier being aligned (sent it, or ended) at
    /// `position`; when it was the last one, the barrier goes on to the shards.
    async fn passed(
        &mut self,
        source: usize,
        position: Option<Position>,
    ) -> Result<Vec<Event>, RunError> {
        let Some(a) = self.aligning.as_mut() else {
            return Ok(Vec::new());
        };
        if let Some(p) = a.passed.get_mut(source) {
            *p = true;
        }
        if let Some(p) = a.positions.get_mut(source) {
            *p = position;
        }
        if !a.passed.iter().all(|p| *p) {
            return Ok(Vec::new());
        }
        let Some(a) = self.aligning.take() else {
            return Ok(Vec::new());
        };
        self.barrier(a.id, false, a.positions).await?;
        Ok(a.held)
    }

    /// Sends barrier `id` to every shard and the router's share of the checkpoint
    /// (source positions, watermark, dead letters pre-committed) to the coordinator.
    pub async fn barrier(
        &mut self,
        id: u64,
        last: bool,
        positions: Vec<Option<Position>>,
    ) -> Result<(), RunError> {
        let pending = precommit_dead(&mut self.dead_rows, &mut self.dead_writers)?;
        for tx in self.shard_txs {
            let _ = tx.send(ShardMsg::Barrier { id, last }).await;
        }
        let _ = self.parts.send(Part::Router {
            id,
            positions,
            watermark: self.last_wm,
            high: self.tracker.end_of_input_watermark(),
            pending,
        });
        Ok(())
    }

    /// Sends each shard its spans (`per_shard[i]` to shard `i`).
    async fn send_spans(&mut self, source: usize, per_shard: Vec<Vec<spanflow_operators::Span>>) {
        for (tx, spans) in self.shard_txs.iter().zip(per_shard) {
            if !spans.is_empty() && tx.send(ShardMsg::Spans { source, spans }).await.is_err() {
                self.failure
                    .get_or_insert(RunError::Internal("a shard stopped early".into()));
            }
        }
    }
}

/// Writes the buffered dead letters and pre-commits their writers for a checkpoint.
pub(crate) fn precommit_dead(
    rows: &mut DeadLetterRows,
    writers: &mut [(TableTarget, Box<dyn TableWriter>)],
) -> Result<Pending, RunError> {
    flush_dead(rows, writers)?;
    let mut pending = Vec::new();
    for (t, w) in writers.iter_mut() {
        if let Some(p) = w.precommit().map_err(|e| SinkError::of(t, e))? {
            pending.push((t.key(), p));
        }
    }
    Ok(pending)
}

enum Event {
    Decoded {
        source: usize,
        dead_letters: Vec<crate::formats::DeadLetter>,
        chunk: RoutedChunk,
        stats: DecodeStats,
    },

    Done {
        source: usize,
        position: Option<Position>,
    },
    SplitsAdded {
        source: usize,
        splits: Vec<u32>,
    },
    SplitsRemoved {
        source: usize,
        splits: Vec<u32>,
    },
    SplitsCaughtUp {
        source: usize,
        splits: Vec<u32>,
    },
    SourceFailed {
        source: usize,
        error: ConnectorError,
    },
    Barrier {
        source: usize,
        id: u64,
        position: Option<Position>,
    },
    Failed(String),
}

impl Event {
    /// The source that sent it (a decoder's failure has none).
    fn source(&self) -> Option<usize> {
        match self {
            Event::Decoded { source, .. }
            | Event::Done { source, .. }
            | Event::SplitsAdded { source, .. }
            | Event::SplitsRemoved { source, .. }
            | Event::SplitsCaughtUp { source, .. }
            | Event::SourceFailed { source, .. }
            | Event::Barrier { source, .. } => Some(*source),
            Event::Failed(_) => None,
        }
    }
}

/// A chunk's spans split by shard, each shard's in record order, with where each
/// record's share ends.
struct RoutedChunk {
    /// Spans for shard `i`.
    per_shard: Vec<Vec<spanflow_operators::Span>>,
    /// `ends[r * shards + i]`: where record `r`'s spans end in `per_shard[i]`.
    ends: Vec<usize>,
    records: Vec<RoutedRecord>,
}

/// One record of a chunk.
struct RoutedRecord {
    /// The split it was read from (its watermark moves with the record's spans).
    split: u32,
    /// Latest end time among the spans (their event times), `None` without spans.
    max_end: Option<u64>,
    /// Where the record came from (dead letters of the clock-skew guard).
    meta: RecordMeta,
}

impl RoutedChunk {
    fn shards(&self) -> usize {
        self.per_shard.len()
    }

    /// Record `r`'s spans in shard `i`'s vector.
    fn range(&self, r: usize, i: usize) -> std::ops::Range<usize> {
        let n = self.shards();
        let start = match r.checked_sub(1) {
            Some(prev) => self.ends.get(prev * n + i).copied().unwrap_or(0),
            None => 0,
        };
        start..self.ends.get(r * n + i).copied().unwrap_or(start)
    }

    /// Takes record `r`'s spans that end after `bound` out into dead letters
    /// (`far_future`); returns how many, and the latest end among those left.
    fn reject_far_future(
        &mut self,
        r: usize,
        bound: u64,
        max_ahead: Duration,
        dead: &mut Vec<crate::formats::DeadLetter>,
    ) -> (u64, Option<u64>) {
        let n = self.shards();
        let Some(meta) = self.records.get(r).map(|rec| rec.meta) else {
            return (0, None);
        };
        let mut rejected = 0;
        let mut max_end = None;
        for i in 0..n {
            let range = self.range(r, i);
            let Some(spans) = self.per_shard.get_mut(i) else {
                continue;
            };
            let (gone, max) = align::reject_far_future(spans, range, bound, &meta, max_ahead, dead);
            rejected += gone as u64;
            max_end = max_end.max(max);
            // The later records' spans moved up by as many.
            for e in self.ends.iter_mut().skip(r * n + i).step_by(n) {
                *e -= gone;
            }
        }
        (rejected, max_end)
    }

    /// Takes the spans of the records up to `r` (included) out of the chunk, one
    /// vector per shard.
    fn take_through(&mut self, r: usize) -> Vec<Vec<spanflow_operators::Span>> {
        let n = self.shards();
        let mut taken = Vec::with_capacity(n);
        for i in 0..n {
            let end = self.range(r, i).end;
            let Some(spans) = self.per_shard.get_mut(i) else {
                continue;
            };
            // Copies the rest once; a watermark moves a few times a chunk at most.
            let rest = spans.split_off(end.min(spans.len()));
            taken.push(std::mem::replace(spans, rest));
            for e in self.ends.iter_mut().skip(i).step_by(n) {
                *e = e.saturating_sub(end);
            }
        }
        taken
    }
}

/// Splits decoded spans by record (`ends[i]` is the end of record i's spans, with its
/// split) and by shard (trace id hash), on the decoding thread: the spans are still in
/// its cache there, and the router (one thread for the whole job) only hands vectors
/// on, copying spans only when a watermark comes in the middle of a chunk.
fn route_records(
    spans: Vec<spanflow_operators::Span>,
    ends: &[(usize, u32, RecordMeta)],
    parallelism: usize,
) -> RoutedChunk {
    let shards = parallelism.max(1);
    let total = spans.len();
    // Trace ids hash evenly: room for a fair share and some slack.
    let mut per_shard: Vec<Vec<spanflow_operators::Span>> = (0..shards)
        .map(|_| Vec::with_capacity(total / shards + total / (4 * shards) + 4))
        .collect();
    let mut bounds = Vec::with_capacity(ends.len() * shards);
    let mut records = Vec::with_capacity(ends.len());
    let mut spans = spans.into_iter();
    let mut start = 0;
    for &(end, split, meta) in ends {
        let n = end.saturating_sub(start);
        start = end;
        let mut max_end = None;
        // A group member hands a trace's state over with the partition it came from.
        let origin = u16::try_from(meta.split).unwrap_or(u16::MAX);
        for mut span in spans.by_ref().take(n) {
            span.origin = origin;
            max_end = Some(max_end.map_or(span.end_ns, |m: u64| m.max(span.end_ns)));
            let shard = span.trace_id.shard(shards);
            if let Some(v) = per_shard.get_mut(shard) {
                v.push(span);
            }
        }
        bounds.extend(per_shard.iter().map(Vec::len));
        records.push(RoutedRecord {
            split,
            max_end,
            meta,
        });
    }
    RoutedChunk {
        per_shard,
        ends: bounds,
        records,
    }
}

pub(crate) fn flush_dead(
    rows: &mut DeadLetterRows,
    writers: &mut [(TableTarget, Box<dyn TableWriter>)],
) -> Result<(), RunError> {
    if rows.is_empty() {
        return Ok(());
    }
    let batch = rows.finish();
    for (t, w) in writers.iter_mut() {
        // Each target only takes the dead letters of the source it names.
        let mask: Vec<bool> = batch_sources(&batch).map(|s| s == t.node).collect();
        let filtered = arrow::compute::filter_record_batch(&batch, &mask.into())
            .map_err(|e| RunError::Internal(format!("filtering dead letters: {e}")))?;
        w.write(&filtered).map_err(|e| SinkError::of(t, e))?;
        t.rows_written
            .fetch_add(filtered.num_rows() as u64, Ordering::Relaxed);
    }
    Ok(())
}

fn batch_sources(batch: &arrow::record_batch::RecordBatch) -> impl Iterator<Item = &str> {
    let col = batch
        .column(0)
        .as_any()
        .downcast_ref::<arrow::array::StringArray>();
    (0..batch.num_rows()).map(move |i| col.map_or("", |c| c.value(i)))
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use spanflow_operators::{Span, SpanId, TraceId};

    /// Span `id` of a trace picked by `trace`, ending at `end`.
    fn span(id: u64, trace: u8, end: u64) -> Span {
        Span {
            trace_id: TraceId([trace.max(1); 16]),
            span_id: SpanId(id.to_le_bytes()),
            end_ns: end,
            ..Span::default()
        }
    }

    fn ids(spans: &[Span]) -> Vec<u64> {
        spans
            .iter()
            .map(|s| u64::from_le_bytes(s.span_id.0))
            .collect()
    }

    proptest! {
        /// Against a model that keeps each record's spans per shard: what the guard
        /// takes out and what goes to the shards when a watermark comes after a record,
        /// in order, with nothing lost or repeated.
        #[test]
        fn a_chunk_hands_over_whole_records_in_order(
            records in proptest::collection::vec(
                (proptest::collection::vec((any::<u8>(), 0u64..100), 0..8),
                 proptest::option::of(0u64..100),
                 any::<bool>()),
                0..12,
            ),
            shards in 1usize..4,
        ) {
            let mut spans = Vec::new();
            let mut ends = Vec::new();
            // model[r][i]: record r's span ids for shard i, with their ends.
            let mut model: Vec<Vec<Vec<(u64, u64)>>> = Vec::new();
            for (r, (rec, _, _)) in records.iter().enumerate() {
                let mut per_shard = vec![Vec::new(); shards];
                for &(trace, end) in rec {
                    let s = span(spans.len() as u64, trace, end);
                    per_shard[s.trace_id.shard(shards)].push((spans.len() as u64, end));
                    spans.push(s);
                }
                model.push(per_shard);
                let meta = RecordMeta {
                    topic: None,
                    source: Sym::new("src"),
                    split: r as u32,
                    offset: r as u64,
                };
                ends.push((spans.len(), r as u32, meta));
            }
            let mut chunk = route_records(spans, &ends, shards);
            prop_assert_eq!(chunk.records.len(), records.len());
            let mut sent: Vec<Vec<u64>> = vec![Vec::new(); shards];
            let mut expected: Vec<Vec<u64>> = vec![Vec::new(); shards];
            let mut taken_up_to = 0;
            for (r, (_, bound, take)) in records.iter().enumerate() {
                if let Some(bound) = *bound {
                    let mut dead = Vec::new();
                    let (n, max) =
                        chunk.reject_far_future(r, bound, Duration::from_secs(1), &mut dead);
                    let mut gone = 0;
                    for shard in &mut model[r] {
                        gone += shard.iter().filter(|(_, e)| *e > bound).count();
                        shard.retain(|(_, e)| *e <= bound);
                    }
                    let left = model[r].iter().flatten().map(|(_, e)| *e).max();
                    prop_assert_eq!((n, max), (gone as u64, left));
                    prop_assert_eq!(dead.len(), gone);
                }
                if *take {
                    for (i, v) in chunk.take_through(r).into_iter().enumerate() {
                        sent[i].extend(ids(&v));
                    }
                    for rec in &model[taken_up_to..=r] {
                        for (i, shard) in rec.iter().enumerate() {
                            expected[i].extend(shard.iter().map(|(id, _)| *id));
                        }
                    }
                    taken_up_to = r + 1;
                    prop_assert_eq!(&sent, &expected);
                }
            }
            for rec in &model[taken_up_to..] {
                for (i, shard) in rec.iter().enumerate() {
                    expected[i].extend(shard.iter().map(|(id, _)| *id));
                }
            }
            for (i, v) in chunk.per_shard.iter().enumerate() {
                sent[i].extend(ids(v));
            }
            prop_assert_eq!(sent, expected);
        }
    }
}
