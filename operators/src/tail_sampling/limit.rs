//! `endpoint_rate_limit` as a two-stage decision that does not depend on sharding.
//!
//! A rate limit keeps, per root endpoint and window of event time, the `budget` traces
//! of lowest *rank*: a hash of the trace id salted with the limiter's key (so two rate
//! limits, or a rate limit and `probabilistic`, pick independent samples), ties broken
//! by the trace id; a trace belongs to the window of the time its session closed
//! ([`TraceSummary::closes_at`](crate::session_window::TraceSummary::closes_at): its
//! last span's end plus its gap). The kept set is a function of the traces alone, not
//! of their order, of the watermarks or of which shard saw them:
//! - each shard's sampler sends, per (limiter, endpoint, window), how many traces it
//!   offered and its lowest ranks ([`RateOffers`]) to one [`RateLimitMerge`];
//! - when the minimum over the shards of the watermark their session windows have
//!   processed passes the window's end, every trace of the window has closed and been
//!   offered, so the merge answers every shard with the rank threshold and the total
//!   count ([`RateVerdict`]);
//! - the shards hold the traces whose decision depends on a rate limit until then:
//!   about one window of event time (keying by the trace's end instead would hold
//!   them for the largest session gap as well).
//!
//! A kept trace stands for `offered / kept` traces of its window (its adjusted count),
//! which is exact: the merge saw them all.

use ahash::AHashMap;
use serde::{Deserialize, Serialize};

use crate::model::{Sym, TraceId};
use crate::operator::{Batch, Emitter, Operator, OperatorError, decode_state, encode_state};
use crate::{EventTime, WATERMARK_END};

/// Nanoseconds per second.
const NS_PER_S: u64 = 1_000_000_000;

/// Verdicts stay this long (event time past their window) on both sides, for traces
/// that reach a window after it closed and for a restore to resend.
pub(super) const RETAIN_NS: u64 = 60 * NS_PER_S;

/// How one rate limit spends its budget: at most `budget` traces per endpoint and
/// window of `window_ns`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitSpec {
    /// Window length, ns.
    pub window_ns: u64,
    /// Traces kept per endpoint and window.
    pub budget: u64,
    /// Mixed into the rank hash: differs between limiters.
    pub salt: u64,
}

impl LimitSpec {
    /// The spec for `traces_per_second`: whole windows of one second and `round(rate)`
    /// traces for rates of 1 and more; below 1, one trace per window of
    /// `round(1 / rate)` seconds. Invalid rates (negative, NaN; rejected by
    /// `validate`) keep nothing.
    pub fn new(traces_per_second: f64, key: &str) -> Self {
        let salt = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        let r = traces_per_second;
        let (window_s, budget) = if r.is_nan() || r <= 0.0 {
            (1.0, 0.0)
        } else if r >= 1.0 {
            (1.0, r.round())
        } else {
            ((1.0 / r).round().max(1.0), 1.0)
        };
        LimitSpec {
            // `as` saturates: an infinite rate keeps everything.
            window_ns: (window_s * NS_PER_S as f64) as u64,
            budget: budget as u64,
            salt,
        }
    }

    /// The window of a trace whose session closed at `closes_at`.
    pub fn window(&self, closes_at: EventTime) -> u64 {
        closes_at / self.window_ns.max(1)
    }

    /// The rank of a trace: lower ranks are kept first.
    pub fn rank(&self, trace_id: TraceId) -> Rank {
        let mut x = trace_id.hash64() ^ self.salt;
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (x ^ (x >> 31), trace_id)
    }

    /// The end (exclusive) of window `w`.
    pub fn window_end(&self, w: u64) -> EventTime {
        w.saturating_add(1).saturating_mul(self.window_ns.max(1))
    }
}

/// A trace's rank for a rate limit: its salted hash, then its id.
pub type Rank = (u64, TraceId);

/// A window of one rate limit for one endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LimitKey {
    /// Index of the rate limit among the sampler's (config order, depth first).
    pub limiter: u32,
    /// Root service.
    pub service: Sym,
    /// Root operation.
    pub operation: Sym,
    /// Window index (`end / window_ns`).
    pub window: u64,
}

/// What one shard offered to one rate-limit window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RateOffers {
    /// The window.
    pub key: LimitKey,
    /// Traces offered.
    pub offered: u64,
    /// The lowest ranks offered (at most the budget), ascending.
    pub lowest: Vec<Rank>,
}

/// The outcome of one rate-limit window over all shards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RateVerdict {
    /// The window.
    pub key: LimitKey,
    /// Traces offered by all shards.
    pub offered: u64,
    /// Traces of rank up to this one are kept; `None` keeps none.
    pub threshold: Option<Rank>,
}

impl RateVerdict {
    /// Whether the trace of rank `rank` is kept, and the probability and weight of
    /// that (kept / offered and its inverse).
    pub fn judge(&self, rank: Rank, budget: u64) -> (bool, f64, f64) {
        let kept = self.threshold.is_some_and(|t| rank <= t);
        let k = budget.min(self.offered);
        if k == 0 || self.offered == 0 {
            return (false, 0.0, 1.0);
        }
        let p = k as f64 / self.offered as f64;
        (kept, p, self.offered as f64 / k as f64)
    }
}

/// Adds `r` to `lowest` (ascending, at most `budget` long).
pub(super) fn keep_lowest(lowest: &mut Vec<Rank>, r: Rank, budget: u64) {
    let budget = usize::try_from(budget).unwrap_or(usize::MAX);
    if budget == 0 {
        return;
    }
    if lowest.len() >= budget && lowest.last().is_some_and(|last| r >= *last) {
        return;
    }
    let at = lowest.partition_point(|x| *x < r);
    if lowest.get(at) == Some(&r) {
        return;
    }
    lowest.insert(at, r);
    lowest.truncate(budget);
}

/// One open window of the merge.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Open {
    offered: u64,
    lowest: Vec<Rank>,
}

/// State of a [`RateLimitMerge`] in a snapshot.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct MergeState {
    open: Vec<(LimitKey, Open)>,
    recent: Vec<RateVerdict>,
    watermark: EventTime,
}

/// The merge stage of a sampler's rate limits (see the module docs).
#[derive(Debug)]
pub struct RateLimitMerge {
    specs: Vec<LimitSpec>,
    open: AHashMap<LimitKey, Open>,
    /// Verdicts given, kept for [`RETAIN_NS`] to resend after a restore.
    recent: Vec<RateVerdict>,
    watermark: EventTime,
    /// The watermark windows were last closed at (offers since then may complete
    /// windows only when it advances).
    finalized: EventTime,
    /// An offer came for a window already complete: close it at the next watermark.
    rescan: bool,
    /// Restored: resend `recent` with the next watermark (shards may have stopped
    /// before they received them).
    resend: bool,
}

impl RateLimitMerge {
    /// The merge for rate limits `specs` (indexed like [`LimitKey::limiter`]).
    pub fn new(specs: Vec<LimitSpec>) -> Self {
        RateLimitMerge {
            specs,
            open: AHashMap::new(),
            recent: Vec::new(),
            watermark: 0,
            finalized: 0,
            rescan: false,
            resend: false,
        }
    }

    fn spec(&self, key: &LimitKey) -> Option<&LimitSpec> {
        self.specs.get(key.limiter as usize)
    }

    /// Whether the window of `key` is complete at `watermark`.
    fn complete(&self, key: &LimitKey, watermark: EventTime) -> bool {
        self.spec(key)
            .is_some_and(|s| s.window_end(key.window) <= watermark.saturating_add(1))
    }
}

impl Operator for RateLimitMerge {
    fn process(
        &mut self,
        input: usize,
        batch: Batch,
        _out: &mut Emitter,
    ) -> Result<(), OperatorError> {
        let Batch::RateOffers(offers) = batch else {
            return Err(OperatorError::unexpected(
                "tail_sampling merge",
                input,
                &batch,
            ));
        };
        for o in offers {
            // A shard offers a trace before it reports the watermark the trace closed
            // at, so a window is never offered after its verdict. Should it be, it
            // gets a second verdict (the shards wait for one).
            if self.watermark > 0 && self.complete(&o.key, self.watermark) {
                self.rescan = true;
            }
            let budget = self.spec(&o.key).map_or(0, |s| s.budget);
            let w = self.open.entry(o.key).or_default();
            w.offered += o.offered;
            for r in o.lowest {
                keep_lowest(&mut w.lowest, r, budget);
            }
        }
        Ok(())
    }

    fn on_watermark(
        &mut self,
        watermark: EventTime,
        out: &mut Emitter,
    ) -> Result<EventTime, OperatorError> {
        let swept = self.watermark / 1_000_000_000 != watermark / 1_000_000_000;
        self.watermark = self.watermark.max(watermark);
        let mut verdicts = Vec::new();
        if self.resend {
            self.resend = false;
            verdicts.extend(self.recent.iter().cloned());
        }
        let done: Vec<LimitKey> = if watermark > self.finalized || self.rescan {
            self.open
                .keys()
                .filter(|k| self.complete(k, watermark))
                .copied()
                .collect()
        } else {
            Vec::new()
        };
        self.finalized = self.finalized.max(watermark);
        self.rescan = false;
        let mut fresh = Vec::with_capacity(done.len());
        for key in done {
            let Some(w) = self.open.remove(&key) else {
                continue;
            };
            let budget = self.spec(&key).map_or(0, |s| s.budget);
            let threshold = if budget == 0 {
                None
            } else if w.offered <= budget {
                Some((u64::MAX, TraceId([0xff; 16])))
            } else {
                w.lowest.last().copied()
            };
            fresh.push(RateVerdict {
                key,
                offered: w.offered,
                threshold,
            });
        }
        // Map order is not deterministic; the verdicts' order is (for equal runs).
        fresh.sort_by_key(|a| a.key);
        self.recent.extend(fresh.iter().cloned());
        verdicts.extend(fresh);
        let specs = &self.specs;
        // By whole seconds: this runs for every watermark message of every shard.
        if swept && watermark != WATERMARK_END {
            self.recent.retain(|v| {
                specs.get(v.key.limiter as usize).is_none_or(|s| {
                    s.window_end(v.key.window).saturating_add(RETAIN_NS) > watermark
                })
            });
        }
        out.emit(0, Batch::RateVerdicts(verdicts));
        Ok(watermark)
    }

    fn snapshot(&self) -> Result<Vec<u8>, OperatorError> {
        let mut open: Vec<(LimitKey, Open)> =
            self.open.iter().map(|(k, v)| (*k, v.clone())).collect();
        open.sort_by_key(|a| a.0);
        encode_state(&MergeState {
            open,
            recent: self.recent.clone(),
            watermark: self.watermark,
        })
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), OperatorError> {
        let s: MergeState = decode_state(state)?;
        self.open = s.open.into_iter().collect();
        self.recent = s.recent;
        self.watermark = s.watermark;
        self.resend = true;
        Ok(())
    }
}
