//! Event time on real inputs: watermark alignment (pausing splits that run ahead) and
//! the clock-skew guard (spans far in the future do not move the watermark). Both run
//! on the router, in the order its records arrive, so what they decide depends on
//! each split's data, not on timing (alignment only changes what is read when).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use spanflow_operators::{EventTime, Span};

use super::io::PauseSignal;
use super::watermark::{SplitKey, WatermarkTracker};
use crate::formats::{DeadLetter, RecordMeta};

/// Pauses splits that run more than their source's `max_drift` ahead of the slowest
/// one, and resumes them once it catches up (Flink's watermark alignment, per split).
pub(crate) struct Alignment {
    signal: Arc<PauseSignal>,
    sources: usize,
    /// The splits last published as paused, and since when.
    since: BTreeMap<SplitKey, Instant>,
    /// Per split: time spent paused, the current pause included once it ends.
    total: BTreeMap<SplitKey, Duration>,
    pauses: u64,
    scratch: Vec<SplitKey>,
}

impl Alignment {
    pub fn new(signal: Arc<PauseSignal>, sources: usize) -> Self {
        Alignment {
            signal,
            sources,
            since: BTreeMap::new(),
            total: BTreeMap::new(),
            pauses: 0,
            scratch: Vec::new(),
        }
    }

    /// Pauses and resumes splits after the tracker saw new event times. A resumed
    /// split counts as active from now: it read nothing while paused, but was not
    /// idle. One that had read all its input stays caught up.
    pub fn update(&mut self, tracker: &mut WatermarkTracker, now: Instant) {
        tracker.ahead(now, |k| self.since.contains_key(k), &mut self.scratch);
        let same = self.scratch.len() == self.since.len()
            && self.scratch.iter().all(|k| self.since.contains_key(k));
        if same {
            return;
        }
        let next: BTreeSet<SplitKey> = self.scratch.iter().copied().collect();
        let resumed: Vec<SplitKey> = self
            .since
            .keys()
            .filter(|k| !next.contains(k))
            .copied()
            .collect();
        for k in resumed {
            if let Some(at) = self.since.remove(&k) {
                *self.total.entry(k).or_default() += now.duration_since(at);
            }
            tracker.resumed(k, now);
        }
        for k in &next {
            if !self.since.contains_key(k) {
                self.since.insert(*k, now);
                self.pauses += 1;
            }
        }
        let mut per_source = vec![BTreeSet::new(); self.sources];
        for (source, split) in &next {
            if let Some(s) = per_source.get_mut(*source) {
                s.insert(*split);
            }
        }
        tracing::trace!(paused = next.len(), "watermark alignment");
        self.signal.set(per_source);
    }

    /// Resumes everything (every source ended, or the run stops): a source waiting
    /// to send must see its end.
    pub fn release(&mut self, now: Instant) {
        if !self.since.is_empty() {
            for (k, at) in std::mem::take(&mut self.since) {
                *self.total.entry(k).or_default() += now.duration_since(at);
            }
            self.signal.set(vec![BTreeSet::new(); self.sources]);
        }
    }

    /// Tells source `source` that the router handled `records` more of its records,
    /// and so has paused whichever of their splits ran ahead.
    pub fn count_routed(&self, source: usize, records: u64) {
        self.signal.count_routed(source, records);
    }

    /// What alignment did, for the summary.
    pub fn stats(&self, now: Instant) -> AlignmentStats {
        let mut paused = self.total.clone();
        for (k, at) in &self.since {
            *paused.entry(*k).or_default() += now.duration_since(*at);
        }
        AlignmentStats {
            pauses: self.pauses,
            paused_seconds: paused
                .into_iter()
                .map(|(k, d)| (k, d.as_secs_f64()))
                .collect(),
        }
    }
}

impl Drop for Alignment {
    /// A source that waits for the router to handle its records must not wait for
    /// a router that has stopped (failed, or every source ended).
    fn drop(&mut self) {
        self.signal.route_ended();
    }
}

/// What watermark alignment did in a run.
#[derive(Debug, Clone, Default)]
pub struct AlignmentStats {
    /// Times a split was paused.
    pub pauses: u64,
    /// Per split that was ever paused: seconds (wall clock) it spent paused.
    pub paused_seconds: BTreeMap<SplitKey, f64>,
}

/// The latest end time a span of split `key` may have and still move the watermark:
/// never more than `max_ahead` past the wall clock (nothing has ended in the future),
/// and, while the split is reading (`idle` is false), `max_ahead` past its watermark
/// (or, before the split has seen anything, the watermark the run resumed at). After
/// a quiet spell longer than the idle timeout (a live partition overnight) the next
/// spans may legitimately be hours ahead of where the split stopped, so only the wall
/// clock bounds them.
pub(crate) fn far_future_bound(
    tracker: &WatermarkTracker,
    key: SplitKey,
    max_ahead: Duration,
    resumed: EventTime,
    wall_clock_ns: u64,
    idle: bool,
) -> EventTime {
    let ahead = u64::try_from(max_ahead.as_nanos()).unwrap_or(u64::MAX);
    let wall = wall_clock_ns.saturating_add(ahead);
    if idle {
        return wall;
    }
    match tracker.split_watermark(key) {
        Some(w) => w.saturating_add(ahead).min(wall),
        None if resumed > 0 => resumed.saturating_add(ahead).min(wall),
        None => wall,
    }
}

/// Now, in unix nanoseconds.
pub(crate) fn wall_clock_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(u64::MAX, |d| {
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
        })
}

/// Takes the spans of `range` in `spans` (one record's, for one shard) that end after
/// `bound` out into dead letters (`far_future`), keeping the order of the others;
/// returns how many, and the latest end among the spans of `range` left.
pub(crate) fn reject_far_future(
    spans: &mut Vec<Span>,
    range: std::ops::Range<usize>,
    bound: EventTime,
    meta: &RecordMeta,
    max_ahead: Duration,
    dead: &mut Vec<DeadLetter>,
) -> (usize, Option<EventTime>) {
    let end = range.end.min(spans.len());
    let start = range.start.min(end);
    let mut kept = start;
    let mut max_end: Option<EventTime> = None;
    for i in start..end {
        let Some(s) = spans.get(i) else { break };
        if s.end_ns <= bound {
            max_end = Some(max_end.map_or(s.end_ns, |m| m.max(s.end_ns)));
            spans.swap(kept, i);
            kept += 1;
        } else {
            dead.push(DeadLetter::far_future(meta, s, bound, max_ahead));
        }
    }
    spans.drain(kept..end);
    (end - kept, max_end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::watermark::WatermarkSettings;

    fn span(end_ns: u64) -> Span {
        Span {
            trace_id: spanflow_operators::TraceId([1; 16]),
            span_id: spanflow_operators::SpanId([2; 8]),
            start_ns: end_ns.saturating_sub(10),
            end_ns,
            ..Span::default()
        }
    }

    /// The bound follows the split's own watermark, the resumed watermark before the
    /// split saw anything, and the wall clock always.
    #[test]
    fn the_far_future_bound_follows_the_split_and_the_wall_clock() {
        let t0 = Instant::now();
        let mut t = WatermarkTracker::new(1);
        let settings = WatermarkSettings {
            max_out_of_order: Duration::from_nanos(0),
            ..WatermarkSettings::default()
        };
        t.add_split((0, 0), &settings, t0);
        let hour = Duration::from_secs(3600);
        let now = wall_clock_ns();
        let h = 3_600_000_000_000u64;
        assert_eq!(far_future_bound(&t, (0, 0), hour, 0, now, false), now + h);
        assert_eq!(
            far_future_bound(&t, (0, 0), hour, 1_000, now, false),
            1_000 + h
        );
        t.observe((0, 0), 5_000);
        assert_eq!(
            far_future_bound(&t, (0, 0), hour, 1_000, now, false),
            4_999 + h
        );
        // After a quiet spell only the wall clock bounds the split.
        assert_eq!(
            far_future_bound(&t, (0, 0), hour, 1_000, now, true),
            now + h
        );
        // The wall clock caps a split whose watermark ran ahead of it.
        t.observe((0, 0), now + 2 * h);
        assert_eq!(far_future_bound(&t, (0, 0), hour, 0, now, false), now + h);
    }

    /// Settings of splits that event time alone moves (no disorder allowed, an idle
    /// timeout no test reaches), aligned within `drift` ns.
    fn aligned(drift: u64) -> WatermarkSettings {
        WatermarkSettings {
            max_out_of_order: Duration::from_nanos(0),
            idle_timeout: Duration::from_secs(3600),
            max_drift: Some(Duration::from_nanos(drift)),
            ..WatermarkSettings::default()
        }
    }

    /// A split that read to its end, ran ahead and was paused, then resumed, holds
    /// nothing back: its source told its end before the pause and will not again. It
    /// used to count as reading from its resume on, and with a long idle timeout kept
    /// the split that overtook it paused for good (a consumer-group test stuck with a
    /// partition unread).
    #[test]
    fn a_resumed_split_that_read_all_its_input_holds_nothing_back() {
        let t0 = Instant::now();
        let drift = 1_000u64;
        let settings = aligned(drift);
        let mut t = WatermarkTracker::new(1);
        t.add_split((0, 0), &settings, t0);
        t.add_split((0, 1), &settings, t0);
        let mut a = Alignment::new(Arc::new(PauseSignal::new(1)), 1);
        let paused = |a: &Alignment| a.since.keys().copied().collect::<Vec<_>>();
        // Split 1 reads its little input far ahead, to its end.
        t.observe((0, 0), 10_000);
        t.observe((0, 1), 10_000 + 3 * drift);
        t.caught_up((0, 1));
        a.update(&mut t, t0);
        assert_eq!(paused(&a), [(0, 1)], "ahead, caught up or not");
        t.observe((0, 0), 10_000 + 3 * drift);
        a.update(&mut t, t0);
        assert!(paused(&a).is_empty(), "split 0 caught up with it");
        // Split 0 reads on; split 1 has nothing more.
        t.observe((0, 0), 10_000 + 6 * drift);
        a.update(&mut t, t0);
        assert!(
            paused(&a).is_empty(),
            "split 1 is still at its end, where it stood before its pause"
        );
        // Data for split 1 makes it count again.
        t.touch((0, 1), t0);
        a.update(&mut t, t0);
        assert_eq!(paused(&a), [(0, 0)]);
    }

    /// One split as a Kafka partition delivers it: bursts of records, each followed
    /// by the partition's end, told once, in the same queue (a paused partition's end
    /// waits there with its records).
    #[derive(Debug, Clone)]
    struct SimSplit {
        /// Per burst: the step it arrives at and its records' event times.
        bursts: Vec<(u32, Vec<u64>)>,
    }

    fn sim_split() -> impl proptest::strategy::Strategy<Value = SimSplit> {
        use proptest::prelude::*;
        proptest::collection::vec(
            (0u32..60, proptest::collection::vec(1u64..400, 0..12)),
            1..5,
        )
        .prop_map(|bursts| {
            let mut t = 10_000u64;
            let bursts = bursts
                .into_iter()
                .map(|(at, steps)| {
                    let times = steps
                        .into_iter()
                        .map(|d| {
                            t += d;
                            t
                        })
                        .collect();
                    (at, times)
                })
                .collect();
            SimSplit { bursts }
        })
    }

    enum Item {
        Record(u64),
        End,
    }

    proptest::proptest! {
        /// Alignment never stalls a reader: splits read as Kafka partitions are read
        /// (a paused one reads nothing, its end included; its end is told once per
        /// burst), with an idle timeout no run reaches, always deliver every record.
        /// A split that alignment resumed after it had read all its input once counted
        /// as reading, and held the split that overtook it paused for good.
        #[test]
        fn alignment_lets_every_split_read_all_its_input(
            splits in proptest::collection::vec(sim_split(), 2..6),
            drift in 50u64..800,
        ) {
            let t0 = Instant::now();
            let settings = aligned(drift);
            let n = splits.len();
            let mut t = WatermarkTracker::new(1);
            let mut a = Alignment::new(Arc::new(PauseSignal::new(1)), 1);
            for k in 0..n {
                t.add_split((0, k as u32), &settings, t0);
            }
            let mut queues: Vec<std::collections::VecDeque<Item>> =
                (0..n).map(|_| Default::default()).collect();
            let total: usize = splits
                .iter()
                .flat_map(|s| &s.bursts)
                .map(|b| b.1.len())
                .sum();
            let mut read = 0;
            let mut paused = BTreeSet::new();
            let last_burst = splits
                .iter()
                .flat_map(|s| &s.bursts)
                .map(|b| b.0)
                .max()
                .unwrap_or(0);
            // Enough steps to read everything one record a step after the last burst.
            let steps = last_burst + 2 * (total as u32 + n as u32) + 10;
            for step in 0..steps {
                for (k, s) in splits.iter().enumerate() {
                    for (_, times) in s.bursts.iter().filter(|b| b.0 == step) {
                        queues[k].extend(times.iter().map(|t| Item::Record(*t)));
                        queues[k].push_back(Item::End);
                    }
                }
                // The reader: one item per split it may read.
                for (k, q) in queues.iter_mut().enumerate() {
                    let key = k as u32;
                    if paused.contains(&key) {
                        continue;
                    }
                    match q.pop_front() {
                        Some(Item::Record(time)) => {
                            t.touch((0, key), t0);
                            t.observe((0, key), time);
                            read += 1;
                        }
                        Some(Item::End) => t.caught_up((0, key)),
                        None => {}
                    }
                }
                // The router, after the records.
                a.update(&mut t, t0);
                paused = a.since.keys().map(|k| k.1).collect();
            }
            proptest::prop_assert_eq!(
                read, total,
                "stalled with {:?} paused and {} records unread",
                paused, total - read
            );
        }
    }

    #[test]
    fn far_future_spans_become_dead_letters_and_leave_the_others() {
        let meta = RecordMeta {
            source: spanflow_operators::Sym::new("src"),
            topic: None,
            split: 3,
            offset: 17,
        };
        // The record's spans are the shard's 1..6; the others are not looked at.
        let mut spans = vec![
            span(7_000),
            span(100),
            span(5_000),
            span(900),
            span(6_000),
            span(200),
            span(8_000),
        ];
        let mut dead = Vec::new();
        let (n, max) = reject_far_future(
            &mut spans,
            1..6,
            1_000,
            &meta,
            Duration::from_secs(1),
            &mut dead,
        );
        assert_eq!((n, max), (2, Some(900)));
        let ends: Vec<u64> = spans.iter().map(|s| s.end_ns).collect();
        assert_eq!(ends, [7_000, 100, 900, 200, 8_000]);
        assert_eq!(dead.len(), 2);
        assert_eq!(dead[0].kind, "far_future");
        assert_eq!((dead[0].split, dead[0].offset), (3, 17));
        assert!(dead[0].reason.contains("ahead"), "{}", dead[0].reason);
        let payload: serde_json::Value = serde_json::from_slice(&dead[0].payload).unwrap();
        assert_eq!(payload["end_ns"], 5_000);
    }
}
