//! Serializable state of `tail_sampling`, for checkpoints: the traces waiting for
//! rate-limit verdicts, the verdicts received and the counters.

use serde::{Deserialize, Serialize};

use super::SamplingMetrics;
use super::limit::{LimitKey, Rank, RateVerdict};
use crate::session_window::ClosedTrace;

/// Everything `tail_sampling` holds between calls. Restoring it into a new sampler with
/// the same config continues exactly where the snapshot was taken.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TailSamplerState {
    pub(super) metrics: SamplingMetrics,
    pub(super) held: Vec<HeldState>,
    pub(super) verdicts: Vec<RateVerdict>,
    pub(super) watermark: u64,
}

/// A held trace in a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct HeldState {
    pub(super) trace: ClosedTrace,
    pub(super) offers: Vec<(usize, LimitKey, Rank)>,
}
