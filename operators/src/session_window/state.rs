//! Serializable state of `session_window`, for checkpoints.

use ahash::AHashMap;
use serde::{Deserialize, Serialize};

use super::timers::TimerQueue;
use super::{Session, SessionMetrics, Tombstone};
use crate::EventTime;
use crate::model::TraceId;

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
