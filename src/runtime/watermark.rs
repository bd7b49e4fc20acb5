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
}

impl Default for WatermarkSettings {
    fn default() -> Self {
        WatermarkSettings {
            max_out_of_order: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
        }
    }
}

/// Identifies a split across all sources: (source index, split number).
pub type SplitKey = (usize, u32);

#[derive(Debug)]
struct Split {
    /// Largest event time seen, if any.
    max_event: Option<EventTime>,
    max_out_of_order: u64,
    idle_timeout: Duration,
    last_activity: Instant,
}

/// Tracks the watermark over all splits of all sources.
#[derive(Debug, Default)]
pub struct WatermarkTracker {
    splits: BTreeMap<SplitKey, Split>,
    /// Sources that have not finished yet.
    open_sources: usize,
    current: EventTime,
    /// The largest watermark any split reached, finished and removed ones included.
    high: EventTime,
}

impl WatermarkTracker {
    /// A tracker expecting `sources` sources to finish before the final watermark.
    pub fn new(sources: usize) -> Self {
        WatermarkTracker {
            splits: BTreeMap::new(),
            open_sources: sources,
            current: 0,
            high: 0,
        }
    }

    /// Declares a split (or refreshes its settings).
    pub fn add_split(
        &mut self,
        key: SplitKey,
        max_out_of_order: Duration,
        idle_timeout: Duration,
        now: Instant,
    ) {
        self.splits.entry(key).or_insert(Split {
            max_event: None,
            max_out_of_order: u64::try_from(max_out_of_order.as_nanos()).unwrap_or(u64::MAX),
            idle_timeout,
            last_activity: now,
        });
    }

    /// Continues from a watermark a stopped run reached (it never goes back).
    pub fn resume_at(&mut self, watermark: EventTime) {
        self.current = self.current.max(watermark);
    }

    /// Forgets a split (a revoked or finished Kafka partition): it no longer holds the
    /// watermark back.
    pub fn remove_split(&mut self, key: SplitKey) {
        self.splits.remove(&key);
    }

    /// Records an event time seen on a split.
    #[inline]
    pub fn observe(&mut self, key: SplitKey, event_time: EventTime) {
        if let Some(s) = self.splits.get_mut(&key) {
            s.max_event = Some(s.max_event.map_or(event_time, |m| m.max(event_time)));
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
        if let Some(s) = self.splits.get_mut(&key) {
            s.last_activity = now;
        }
    }

    /// A source finished: all its splits are done.
    pub fn finish_source(&mut self, source: usize) {
        self.splits.retain(|(s, _), _| *s != source);
        self.open_sources = self.open_sources.saturating_sub(1);
    }

    /// The watermark now, never lower than before. `+inf` once every source finished.
    pub fn watermark(&mut self, now: Instant) -> EventTime {
        if self.open_sources == 0 {
            self.current = WATERMARK_END;
            return self.current;
        }
        let mut min: Option<EventTime> = None;
        for s in self.splits.values() {
            if now.duration_since(s.last_activity) >= s.idle_timeout {
                continue;
            }
            // A split that has seen nothing yet holds the watermark at its start.
            let w = s.max_event.map_or(0, |m| {
                m.saturating_sub(s.max_out_of_order).saturating_sub(1)
            });
            min = Some(min.map_or(w, |x| x.min(w)));
        }
        if let Some(m) = min {
            self.current = self.current.max(m);
        }
        self.current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_over_active_splits_and_idleness() {
        let t0 = Instant::now();
        let mut w = WatermarkTracker::new(1);
        let ooo = Duration::from_nanos(10);
        let idle = Duration::from_secs(30);
        w.add_split((0, 0), ooo, idle, t0);
        w.add_split((0, 1), ooo, idle, t0);
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
        let idle = Duration::from_secs(30);
        w.add_split((0, 0), Duration::from_nanos(10), idle, t0);
        w.add_split((0, 1), Duration::from_nanos(10), idle, t0);
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
}
