//! Source watermarks: per split, the largest event time seen minus the allowed
//! disorder; the source watermark is the minimum over splits that are neither idle nor
//! finished. See DESIGN.md, "Time".

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use spanflow_operators::{EventTime, WATERMARK_END};

/// A source's watermark settings (the `watermark:` key of any source).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatermarkSettings {
    /// How far behind the largest event time seen in a split the watermark trails.
    pub max_out_of_order: Duration,
    /// A split with no data for this long (wall clock) stops holding the watermark
    /// back.
    pub idle_timeout: Duration,
    /// Watermark alignment: a split whose watermark runs more than this ahead of the
    /// slowest active split is paused until the others catch up. `None`: never.
    pub max_drift: Option<Duration>,
    /// Clock-skew guard: a span ending more than this ahead of its split's watermark
    /// (or of the wall clock) is a dead letter (`far_future`) instead of moving the
    /// watermark.
    pub max_ahead: Duration,
    /// A live source's bound: its splits' watermark is never further behind the wall
    /// clock than this, idle or not. `None`: event time alone.
    pub wall_clock_lag: Option<Duration>,
}

impl Default for WatermarkSettings {
    fn default() -> Self {
        WatermarkSettings {
            max_out_of_order: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            max_drift: Some(Duration::from_secs(10)),
            max_ahead: Duration::from_secs(3600),
            wall_clock_lag: None,
        }
    }
}

/// The wall clock, unix ns.
fn unix_now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, nanos)
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Identifies a split across all sources: (source index, split number).
pub type SplitKey = (usize, u32);

#[derive(Debug)]
struct Split {
    /// Largest event time seen, if any.
    max_event: Option<EventTime>,
    max_out_of_order: u64,
    idle_timeout: Duration,
    /// Alignment's bound (ns), `u64::MAX` without alignment.
    max_drift: u64,
    last_activity: Instant,
    /// A live split's lag behind the wall clock (ns), if it has one.
    wall_lag: Option<u64>,
    /// The source read everything there was (a Kafka partition at its end) and no
    /// data arrived since.
    caught_up: bool,
}

impl Split {
    /// The split's own watermark, once it has seen an event.
    fn watermark(&self) -> Option<EventTime> {
        self.max_event
            .map(|m| m.saturating_sub(self.max_out_of_order).saturating_sub(1))
    }

    fn idle(&self, now: Instant) -> bool {
        now.duration_since(self.last_activity) >= self.idle_timeout
    }
}

/// Tracks the watermark over all splits of all sources.
#[derive(Debug, Default)]
pub struct WatermarkTracker {
    splits: BTreeMap<SplitKey, Split>,
    /// Splits no longer read (finished, revoked): where their watermark got to.
    gone: BTreeMap<SplitKey, Option<EventTime>>,
    /// Sources that have not finished yet.
    open_sources: usize,
    current: EventTime,
    /// The largest watermark any split reached, finished and removed ones included.
    high: EventTime,
    /// The lowest watermark a split had once it saw its first event: where alignment
    /// places a split that is still waiting for its first one.
    floor: Option<EventTime>,
    /// The minimum `watermark` last found, while nothing that could raise it changed.
    memo: Option<Memo>,
}

/// The router asks for the watermark after every record, with one `now` for a whole
/// chunk of them; at 128 partitions the walk over every split per record cost more
/// than the rest of its work on the record. Only a record of the slowest split can
/// raise the minimum.
#[derive(Debug, Clone, Copy)]
struct Memo {
    now: Instant,
    /// The minimum over the splits that count (`None`: none did).
    min: Option<EventTime>,
}

impl WatermarkTracker {
    /// A tracker expecting `sources` sources to finish before the final watermark.
    pub fn new(sources: usize) -> Self {
        WatermarkTracker {
            splits: BTreeMap::new(),
            gone: BTreeMap::new(),
            open_sources: sources,
            current: 0,
            high: 0,
            floor: None,
            memo: None,
        }
    }

    /// Declares a split (or refreshes its settings).
    pub fn add_split(&mut self, key: SplitKey, settings: &WatermarkSettings, now: Instant) {
        self.memo = None;
        self.splits.entry(key).or_insert(Split {
            max_event: None,
            max_out_of_order: nanos(settings.max_out_of_order),
            idle_timeout: settings.idle_timeout,
            max_drift: settings.max_drift.map_or(u64::MAX, nanos),
            last_activity: now,
            wall_lag: settings.wall_clock_lag.map(nanos),
            caught_up: false,
        });
    }

    /// Whether a split has had no data for its idle timeout (wall clock).
    pub fn idle(&self, key: SplitKey, now: Instant) -> bool {
        self.splits.get(&key).is_some_and(|s| s.idle(now))
    }

    /// A split's own watermark, once it has seen an event.
    pub fn split_watermark(&self, key: SplitKey) -> Option<EventTime> {
        self.splits.get(&key).and_then(Split::watermark)
    }

    /// Watermark alignment: the splits whose watermark is more than their
    /// `max_drift` ahead of the slowest split that is reading (not idle and not caught
    /// up with its input), into `out` (cleared first).
    ///
    /// A split that has seen nothing yet counts as standing where the lowest split
    /// started (`floor`): it holds the job's watermark there, so the others reading on
    /// would only buffer (a consumer's first fetches serve some partitions of a
    /// 64-partition topic and not others, which left the rest reading ~80 s ahead
    /// while the watermark waited). Until it delivers, the others get a quarter of
    /// their drift: at 128 partitions the whole drift read before the last first
    /// record was the run's peak of buffered spans. An empty Kafka partition is caught
    /// up at once (partition EOF), and any other empty split stops counting once it is
    /// idle.
    ///
    /// A slowest split that read all there was would otherwise keep the others paused
    /// until it goes idle, with their records waiting unread (a long span can put a
    /// split's watermark far ahead near the end of a backlog). One in `paused` stays
    /// named until it is within half its drift (so that a split near the bound is not
    /// paused and resumed on every record: a Kafka consumer drops what it prefetched
    /// for a partition it pauses). A paused split goes idle, as it reads nothing, and
    /// so stops counting as the slowest, but stays paused while it is ahead.
    pub fn ahead(&self, now: Instant, paused: impl Fn(&SplitKey) -> bool, out: &mut Vec<SplitKey>) {
        out.clear();
        let mut waiting = false;
        let slowest = self
            .splits
            .values()
            .filter(|s| !s.idle(now) && !s.caught_up)
            .filter_map(|s| {
                waiting |= s.max_event.is_none();
                s.watermark().or(self.floor)
            })
            .min();
        let Some(slowest) = slowest else {
            return;
        };
        for (key, s) in &self.splits {
            // Until every split has delivered the job has no watermark and nothing
            // closes: whatever the others read meanwhile is only buffered, so they
            // keep closer to where the lowest one started.
            let bound = if waiting {
                s.max_drift / 4
            } else {
                s.max_drift
            };
            let drift = if paused(key) { bound / 2 } else { bound };
            if let Some(w) = s.watermark()
                && w > slowest.saturating_add(drift)
            {
                out.push(*key);
            }
        }
    }

    /// Every split's watermark (`None`: nothing seen yet), those no longer read
    /// included (where they got to), for the summary.
    pub fn split_watermarks(&self) -> Vec<(SplitKey, Option<EventTime>)> {
        let mut all: BTreeMap<SplitKey, Option<EventTime>> = self.gone.clone();
        for (k, s) in &self.splits {
            all.insert(*k, s.watermark());
        }
        all.into_iter().collect()
    }

    /// The watermark the job has reached (without computing a new one).
    pub fn current(&self) -> EventTime {
        self.current
    }

    /// Continues from a watermark a stopped run reached (it never goes back).
    pub fn resume_at(&mut self, watermark: EventTime) {
        self.current = self.current.max(watermark);
    }

    /// Continues from the highest watermark a stopped run's splits had reached.
    pub fn resume_high(&mut self, high: EventTime) {
        self.high = self.high.max(high);
    }

    /// Forgets a split (a revoked or finished Kafka partition): it no longer holds the
    /// watermark back.
    pub fn remove_split(&mut self, key: SplitKey) {
        self.memo = None;
        // One that never saw a span (the placeholder a Kafka source holds until its
        // partitions are known) has nothing to report.
        if let Some(w) = self.splits.remove(&key).and_then(|s| s.watermark()) {
            self.gone.insert(key, Some(w));
        }
    }

    /// Records an event time seen on a split.
    #[inline]
    pub fn observe(&mut self, key: SplitKey, event_time: EventTime) {
        if let Some(s) = self.splits.get_mut(&key) {
            if let Some(m) = self.memo
                && m.min.is_none_or(|min| s.watermark().unwrap_or(0) <= min)
            {
                self.memo = None;
            }
            let first = s.max_event.is_none();
            s.max_event = Some(s.max_event.map_or(event_time, |m| m.max(event_time)));
            if first && let Some(w) = s.watermark() {
                self.floor = Some(self.floor.map_or(w, |f| f.min(w)));
            }
            self.high = self.high.max(
                event_time
                    .saturating_sub(s.max_out_of_order)
                    .saturating_sub(1),
            );
        }
    }

    /// The watermark to pass before the final one when every source ended: the largest
    /// any split reached. With all input read no span can be late any more, and this is
    /// where one reader of all the input in event-time order would stand, so which
    /// traces close on their gap (rather than at the end of input) depends on the data
    /// alone, not on which Kafka partition happened to finish last.
    pub fn end_of_input_watermark(&self) -> EventTime {
        self.high.max(self.current)
    }

    /// Marks a split active (data arrived) at `now`.
    pub fn touch(&mut self, key: SplitKey, now: Instant) {
        self.activity(key, now, true);
    }

    /// Marks a split that alignment resumed as reading again at `now`: it went idle
    /// while paused, not for want of data. One that had read all there was stays
    /// caught up until data arrives: its source told its end once, before the pause,
    /// and will not again, so counting it as reading would hold the others back at
    /// its watermark for good.
    pub fn resumed(&mut self, key: SplitKey, now: Instant) {
        self.activity(key, now, false);
    }

    fn activity(&mut self, key: SplitKey, now: Instant, data: bool) {
        if let Some(s) = self.splits.get_mut(&key) {
            let idle_before = self.memo.map(|m| s.idle(m.now));
            s.last_activity = now;
            if data {
                s.caught_up = false;
            }
            if let Some(m) = self.memo
                && idle_before != Some(s.idle(m.now))
            {
                self.memo = None;
            }
        }
    }

    /// A split's source read all it had (its Kafka partition's end): until data
    /// arrives again it still holds the watermark, but pausing other splits cannot
    /// help it catch up, so alignment does not measure them against it.
    pub fn caught_up(&mut self, key: SplitKey) {
        if let Some(s) = self.splits.get_mut(&key) {
            s.caught_up = true;
        }
    }

    /// A source finished: all its splits are done.
    pub fn finish_source(&mut self, source: usize) {
        let finished: Vec<SplitKey> = self
            .splits
            .keys()
            .filter(|(s, _)| *s == source)
            .copied()
            .collect();
        for key in finished {
            self.remove_split(key);
        }
        self.open_sources = self.open_sources.saturating_sub(1);
    }

    /// The watermark now, never lower than before. `+inf` once every source finished.
    pub fn watermark(&mut self, now: Instant) -> EventTime {
        if self.open_sources == 0 {
            self.current = WATERMARK_END;
            return self.current;
        }
        if self.memo.is_some_and(|m| m.now == now) {
            return self.current;
        }
        let mut min: Option<EventTime> = None;
        let mut wall = None;
        for s in self.splits.values() {
            let w = match s.wall_lag {
                // A live split follows the wall clock when its data does not: idle, it
                // still holds the watermark, at the clock less its lag.
                Some(lag) => {
                    let wall = *wall.get_or_insert_with(unix_now_ns);
                    s.watermark().unwrap_or(0).max(wall.saturating_sub(lag))
                }
                None if s.idle(now) => continue,
                // A split that has seen nothing yet holds the watermark at its start.
                None => s.watermark().unwrap_or(0),
            };
            min = Some(min.map_or(w, |x| x.min(w)));
        }
        if let Some(m) = min {
            self.current = self.current.max(m);
        }
        // A live split's bound moves with the wall clock, not with `now`.
        self.memo = wall.is_none().then_some(Memo { now, min });
        self.current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(max_out_of_order_ns: u64, idle_s: u64) -> WatermarkSettings {
        WatermarkSettings {
            max_out_of_order: Duration::from_nanos(max_out_of_order_ns),
            idle_timeout: Duration::from_secs(idle_s),
            max_drift: Some(Duration::from_nanos(100)),
            ..WatermarkSettings::default()
        }
    }

    /// A tracker of one source with `splits` splits of `settings(10, idle_s)`.
    fn tracker(splits: u32, idle_s: u64, t0: Instant) -> WatermarkTracker {
        let mut w = WatermarkTracker::new(1);
        for p in 0..splits {
            w.add_split((0, p), &settings(10, idle_s), t0);
        }
        w
    }

    /// A live split's watermark is at least the wall clock less its lag, idle or not,
    /// and its events move it past that; it still holds back another source's split.
    #[test]
    fn a_live_split_follows_the_wall_clock() {
        let t0 = Instant::now();
        let lag = Duration::from_secs(60);
        let live = WatermarkSettings {
            wall_clock_lag: Some(lag),
            ..settings(10, 1)
        };
        let mut w = WatermarkTracker::new(1);
        w.add_split((0, 0), &live, t0);
        let before = unix_now_ns() - nanos(lag);
        let first = w.watermark(t0);
        assert!(
            first >= before && first <= unix_now_ns(),
            "{first} vs {before}"
        );
        let later = t0 + Duration::from_secs(5);
        assert!(w.idle((0, 0), later));
        assert!(
            w.watermark(later) >= first,
            "idle, it still follows the clock"
        );
        let ahead = unix_now_ns() + 1_000_000_000;
        w.observe((0, 0), ahead);
        assert_eq!(w.watermark(later), ahead - 11, "its events lead when ahead");

        let mut w = WatermarkTracker::new(2);
        w.add_split((0, 0), &live, t0);
        w.add_split((1, 0), &settings(10, 3600), t0);
        w.observe((1, 0), 1_000);
        assert_eq!(
            w.watermark(t0),
            989,
            "the other source's split holds it back"
        );
    }

    /// A slowest split that read everything there was does not hold the others
    /// paused (nothing it could catch up with); its next data makes it count again,
    /// and all along it holds the watermark.
    #[test]
    fn alignment_ignores_a_slowest_split_that_caught_up() {
        let t0 = Instant::now();
        let mut w = tracker(2, 3600, t0);
        let mut out = Vec::new();
        w.observe((0, 0), 1_000);
        w.observe((0, 1), 1_500);
        w.ahead(t0, |_| false, &mut out);
        assert_eq!(out, [(0, 1)]);
        w.caught_up((0, 0));
        w.ahead(t0, |k| *k == (0, 1), &mut out);
        assert!(out.is_empty(), "split 0 has nothing left to read");
        assert_eq!(w.watermark(t0), 989, "it still holds the watermark");
        w.touch((0, 0), t0);
        w.observe((0, 0), 1_010);
        w.ahead(t0, |k| *k == (0, 1), &mut out);
        assert_eq!(out, [(0, 1)], "data again: split 1 waits for it");
    }

    /// Splits more than the drift ahead of the slowest reading split are named; an
    /// idle split does not count as the slowest, a paused (idle) one stays named while
    /// it is ahead.
    #[test]
    fn alignment_names_the_splits_ahead_of_the_slowest_reading_one() {
        let t0 = Instant::now();
        let mut w = tracker(4, 30, t0);
        let mut out = Vec::new();
        let mut paused = std::collections::BTreeSet::new();
        w.ahead(t0, |k| paused.contains(k), &mut out);
        assert!(out.is_empty(), "nothing seen yet");
        w.observe((0, 0), 1_000);
        w.observe((0, 1), 1_050);
        w.observe((0, 2), 1_200);
        // Split 3 has seen nothing yet: it counts where split 0 started (989), and
        // the others get a quarter of their drift until it delivers.
        w.ahead(t0, |k| paused.contains(k), &mut out);
        assert_eq!(out, [(0, 1), (0, 2)], "1039 and 1189 > 989 + 25");
        // Follow split 2 from here.
        paused.insert((0, 2));
        assert_eq!(w.watermark(t0), 0);
        // Split 2, paused, goes idle; so does split 0: split 1 is the slowest now.
        let later = t0 + Duration::from_secs(31);
        w.touch((0, 1), later);
        w.ahead(later, |k| paused.contains(k), &mut out);
        assert_eq!(out, [(0, 2)], "1189 > 1039 + 100 still");
        w.observe((0, 1), 1_100);
        w.ahead(later, |k| paused.contains(k), &mut out);
        assert_eq!(
            out,
            [(0, 2)],
            "paused: 1189 > 1089 + 50, resumed only within half"
        );
        w.observe((0, 1), 1_150);
        w.ahead(later, |k| paused.contains(k), &mut out);
        assert!(out.is_empty(), "1189 <= 1139 + 50");
        // Without alignment nothing is ever named.
        let mut v = WatermarkTracker::new(1);
        let off = WatermarkSettings {
            max_drift: None,
            ..settings(10, 30)
        };
        v.add_split((0, 0), &off, t0);
        v.add_split((0, 1), &off, t0);
        v.observe((0, 0), 1);
        v.observe((0, 1), u64::MAX / 2);
        v.ahead(t0, |_| false, &mut out);
        assert!(out.is_empty());
    }

    /// A split that has not delivered yet holds the others where the lowest one
    /// started, until it delivers, catches up (an empty partition) or goes idle.
    #[test]
    fn alignment_holds_splits_for_one_that_has_seen_nothing_yet() {
        let t0 = Instant::now();
        let mut w = tracker(3, 30, t0);
        let mut out = Vec::new();
        w.observe((0, 0), 1_000);
        w.observe((0, 1), 1_020);
        w.ahead(t0, |_| false, &mut out);
        assert!(
            out.is_empty(),
            "both within 25 (a quarter of the drift while split 2 has seen nothing) of where split 0 started (989)"
        );
        w.observe((0, 1), 1_030);
        w.ahead(t0, |_| false, &mut out);
        assert_eq!(out, [(0, 1)], "1019 > 989 + 25");
        // Read in lockstep with each other, and far ahead of split 2.
        w.observe((0, 0), 1_300);
        w.observe((0, 1), 1_300);
        w.ahead(t0, |_| false, &mut out);
        assert_eq!(out, [(0, 0), (0, 1)], "split 2 stands at 989");
        assert_eq!(w.watermark(t0), 0, "and holds the watermark");
        w.observe((0, 2), 1_250);
        w.ahead(t0, |_| true, &mut out);
        assert!(out.is_empty(), "1289 <= 1239 + 50");
        // An empty partition (caught up at once) holds nothing back.
        let mut v = tracker(2, 30, t0);
        v.observe((0, 0), 1_000);
        v.observe((0, 0), 1_300);
        v.caught_up((0, 1));
        v.ahead(t0, |_| false, &mut out);
        assert!(out.is_empty(), "the other split is empty");
        // Nor does one that stayed silent past its idle timeout.
        v.touch((0, 1), t0);
        v.ahead(t0, |_| false, &mut out);
        assert_eq!(out, [(0, 0)]);
        v.touch((0, 0), t0 + Duration::from_secs(31));
        v.ahead(t0 + Duration::from_secs(31), |_| false, &mut out);
        assert!(out.is_empty(), "split 1 is idle");
    }

    #[test]
    fn min_over_active_splits_and_idleness() {
        let t0 = Instant::now();
        let mut w = WatermarkTracker::new(1);
        let settings = settings(10, 30);
        w.add_split((0, 0), &settings, t0);
        w.add_split((0, 1), &settings, t0);
        w.observe((0, 0), 100);
        assert_eq!(w.watermark(t0), 0, "split 1 has seen nothing yet");
        w.observe((0, 1), 50);
        assert_eq!(w.watermark(t0), 39, "min(100, 50) - 10 - 1");
        // Split 1 goes idle; split 0 stays active.
        w.touch((0, 0), t0 + Duration::from_secs(31));
        assert_eq!(w.watermark(t0 + Duration::from_secs(31)), 89);
        // Never moves backwards.
        w.touch((0, 1), t0 + Duration::from_secs(32));
        assert_eq!(w.watermark(t0 + Duration::from_secs(32)), 89);
        w.finish_source(0);
        assert_eq!(w.end_of_input_watermark(), 89);
        assert_eq!(w.watermark(t0), WATERMARK_END);
    }

    #[test]
    fn end_of_input_watermark_remembers_finished_splits() {
        let t0 = Instant::now();
        let mut w = WatermarkTracker::new(1);
        w.add_split((0, 0), &settings(10, 30), t0);
        w.add_split((0, 1), &settings(10, 30), t0);
        w.observe((0, 0), 500);
        w.observe((0, 1), 100);
        // Split 0 finishes first: split 1 alone holds the running watermark back...
        w.remove_split((0, 0));
        assert_eq!(w.watermark(t0), 89);
        // ...but the end-of-input watermark is where split 0 got to.
        assert_eq!(w.end_of_input_watermark(), 489);
        w.finish_source(0);
        assert_eq!(w.end_of_input_watermark(), 489);
    }

    proptest::proptest! {
        /// The remembered minimum gives the watermark a walk over every split gives, for
        /// any order of records, activity and split changes (idle timeouts of 1 s, with
        /// `now` among a few instants seconds apart).
        #[test]
        fn the_remembered_minimum_agrees_with_a_full_walk(
            ops in proptest::collection::vec((0u8..6, 0u32..4, 0u64..1_000, 0u64..4), 0..120),
        ) {
            let t0 = Instant::now();
            let at = |k: u64| t0 + Duration::from_millis(700 * k);
            let mut fast = tracker(3, 1, t0);
            let mut full = tracker(3, 1, t0);
            for (op, split, value, when) in ops {
                let key = (0, split);
                match op {
                    0 | 1 => {
                        fast.observe(key, value);
                        full.observe(key, value);
                    }
                    2 => {
                        fast.touch(key, at(when));
                        full.touch(key, at(when));
                    }
                    3 => {
                        fast.add_split(key, &settings(10, 1), at(when));
                        full.add_split(key, &settings(10, 1), at(when));
                    }
                    4 => {
                        fast.remove_split(key);
                        full.remove_split(key);
                    }
                    _ => {
                        fast.caught_up(key);
                        full.caught_up(key);
                    }
                }
                full.memo = None;
                proptest::prop_assert_eq!(fast.watermark(at(when)), full.watermark(at(when)));
            }
        }
    }
}
