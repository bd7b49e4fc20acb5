//! Serializable state of `session_window`, for checkpoints.

use ahash::AHashMap;
use serde::{Deserialize, Serialize};

use super::timers::TimerQueue;
use super::{Session, SessionMetrics, Tombstone};
use crate::EventTime;
use crate::model::TraceId;
use crate::operator::Share;

/// Everything `session_window` holds between calls. Restoring it into a new operator
/// with the same config continues exactly where the snapshot was taken.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SessionWindowState {
    /// Open sessions per trace; almost always one, several only when spans of a trace
    /// arrive more than a gap apart before the first session closes.
    pub(super) sessions: AHashMap<TraceId, Vec<Session>>,
    pub(super) open_sessions: usize,
    pub(super) tombstones: AHashMap<TraceId, Tombstone>,
    /// Timer entries `(deadline, trace)`; an entry is live when it equals the session's
    /// `timer` (stale entries are skipped when popped).
    pub(super) timers: TimerQueue,
    /// Tombstone expiry entries.
    pub(super) expiry: TimerQueue,
    /// Watermark hold entries `(first_event, trace)`, live when equal to the session's.
    pub(super) holds: TimerQueue,
    pub(super) watermark: EventTime,
    /// Last watermark forwarded downstream.
    pub(super) forwarded: EventTime,
    pub(super) buffered_spans: usize,
    pub(super) buffered_bytes: usize,
    pub(super) metrics: SessionMetrics,
}

impl SessionWindowState {
    /// Adds the part of `other` (one instance's state of a run at another parallelism)
    /// that `share` owns: its traces' sessions, tombstones and queue entries; the
    /// counters too when the share takes them. `first`: `self` is still empty, so the
    /// watermarks are `other`'s rather than the lower of both (instances at one
    /// checkpoint saw the same input watermark, but forwarded their own).
    pub(super) fn take_share(&mut self, other: SessionWindowState, share: &Share, first: bool) {
        let mut taken: ahash::AHashSet<TraceId> = ahash::AHashSet::new();
        for (tid, list) in other.sessions {
            let origin = list.first().map_or(0, Session::origin);
            if share.owns(&tid, origin) {
                self.open_sessions += list.len();
                for s in &list {
                    self.buffered_spans += s.spans.len();
                    self.buffered_bytes += s.bytes;
                }
                taken.insert(tid);
                self.sessions.insert(tid, list);
            }
        }
        for (tid, t) in other.tombstones {
            if share.owns(&tid, t.origin) {
                taken.insert(tid);
                self.tombstones.insert(tid, t);
            }
        }
        let owned = |t: &TraceId| taken.contains(t);
        self.timers.extend_owned(&other.timers, owned);
        self.expiry.extend_owned(&other.expiry, owned);
        self.holds.extend_owned(&other.holds, owned);
        if first {
            self.watermark = other.watermark;
            self.forwarded = other.forwarded;
        } else {
            self.watermark = self.watermark.min(other.watermark);
            self.forwarded = self.forwarded.min(other.forwarded);
        }
        if share.takes_unkeyed() {
            self.metrics.merge(&other.metrics);
        }
    }
}
