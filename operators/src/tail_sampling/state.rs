//! Serializable state of `tail_sampling`, for checkpoints: the traces waiting for
//! rate-limit verdicts, the verdicts received and the counters.

use serde::{Deserialize, Serialize};

use super::SamplingMetrics;
use super::limit::{LimitKey, Rank, RateVerdict};
use crate::operator::Share;
use crate::session_window::ClosedTrace;

/// Everything `tail_sampling` holds between calls. Restoring it into a new sampler with
/// the same config continues exactly where the snapshot was taken.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TailSamplerState {
    pub(super) metrics: SamplingMetrics,
    pub(super) held: Vec<HeldState>,
    pub(super) verdicts: Vec<RateVerdict>,
    pub(super) watermark: u64,
    /// Per window without a verdict, the lowest ranks offered (see
    /// `TailSampler::local`); absent in checkpoints of older versions.
    #[serde(default)]
    pub(super) local: Vec<(LimitKey, Vec<Rank>)>,
}

/// A held trace in a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct HeldState {
    pub(super) trace: ClosedTrace,
    pub(super) offers: Vec<(usize, LimitKey, Rank)>,
}

impl TailSamplerState {
    /// Adds the part of `other` (one instance's state of a run at another parallelism)
    /// that `share` owns: its held traces, every verdict (verdicts are sent to all
    /// instances, and one that came twice changes nothing), and the counters when the
    /// share takes them. `first`: `self` is still empty.
    pub(super) fn take_share(&mut self, other: TailSamplerState, share: &Share, first: bool) {
        self.held.extend(other.held.into_iter().filter(|h| {
            let origin = h.trace.spans.first().map_or(0, |s| s.origin);
            share.owns(&h.trace.trace_id, origin)
        }));
        let mut verdicts: std::collections::BTreeMap<LimitKey, RateVerdict> =
            std::mem::take(&mut self.verdicts)
                .into_iter()
                .map(|v| (v.key, v))
                .collect();
        for v in other.verdicts {
            verdicts.entry(v.key).or_insert(v);
        }
        self.verdicts = verdicts.into_values().collect();
        self.watermark = if first {
            other.watermark
        } else {
            self.watermark.min(other.watermark)
        };
        if share.takes_unkeyed() {
            self.metrics.merge(&other.metrics);
        }
        // Every instance's lists: any ranks that were offered bound a window's
        // threshold from above, whichever instance offered them (the restore keeps
        // the lowest of each window's).
        self.local.extend(other.local);
    }
}
