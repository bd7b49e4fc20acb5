//! Serializable state of `tail_sampling`, for checkpoints: the rate limiters' per-endpoint
//! buckets and the counters.

use ahash::AHashMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::SamplingMetrics;
use crate::model::Sym;

/// Nanoseconds per event-time second: the rate limiter's bucket width.
pub(super) const NS_PER_S: u64 = 1_000_000_000;

/// One token of the token bucket, in the nanotokens the bucket counts in. Integer
/// arithmetic makes a restored bucket continue bit for bit (a float restored from JSON
/// may differ in its last bit, which could flip a decision).
pub(super) const TOKEN: u64 = 1_000_000_000;

/// An endpoint entry is evicted once the newest event-time second a limiter has seen
/// is more than this many seconds past the entry's last bucket. It then holds no
/// budget information worth keeping (a fixed window has long reset and a token bucket
/// of any rate >= 1/60 per second has refilled), so state stays bounded by the
/// endpoints active in the last minute of event time.
pub(super) const EVICT_AFTER_S: u64 = 60;

/// `(root service, root operation)` of a trace.
pub(super) type Endpoint = (Sym, Sym);

/// Everything `tail_sampling` holds between calls. Restoring it into a new sampler with
/// the same config continues exactly where the snapshot was taken.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TailSamplerState {
    /// One entry per `endpoint_rate_limit` policy, in config order.
    pub(super) limiters: Vec<LimiterState>,
    pub(super) metrics: SamplingMetrics,
}

/// State of one `endpoint_rate_limit` policy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct LimiterState {
    /// Where the policy sits in the config (`<top-level name>` or
    /// `<top-level name>.policies.1`...). Restore matches limiters by this key rather
    /// than by position, so a restore after a policy was added or moved does not hand
    /// one limiter another's buckets.
    pub(super) key: String,
    /// Newest event-time second seen by this limiter.
    pub(super) newest_second: u64,
    /// Number of endpoints right after the last sweep (drives size-triggered sweeps).
    pub(super) swept_len: usize,
    #[serde(
        serialize_with = "serialize_endpoints",
        deserialize_with = "deserialize_endpoints"
    )]
    pub(super) endpoints: AHashMap<Endpoint, EndpointState>,
}

/// Budget of one endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct EndpointState {
    /// Newest event-time second seen for this endpoint: the current bucket.
    pub(super) second: u64,
    /// Traces the limiter kept in `second` (fixed windows).
    pub(super) kept: u64,
    /// Nanotokens available (token bucket, fractional rates).
    pub(super) tokens: u64,
    /// Event time the tokens were last accrued to.
    pub(super) last_ns: u64,
    /// Traces of this endpoint that were dropped (by every policy) since the limiter's
    /// last keep that set a trace's adjusted count.
    pub(super) pending: u64,
}

/// How a limiter spends its budget, fixed at build time from `traces_per_second`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum LimiterMode {
    /// Whole rates: at most this many traces per endpoint and event-time second.
    Fixed(u64),
    /// Fractional rates: nanotokens accrue at `rate` per second of event time up to
    /// `capacity`; keeping a trace costs one [`TOKEN`].
    TokenBucket {
        /// Nanotokens per second.
        rate: u64,
        /// Bucket capacity in nanotokens: `max(1, traces_per_second)` tokens.
        capacity: u64,
    },
}

impl LimiterMode {
    /// The mode for `traces_per_second`. Invalid rates (negative, NaN; rejected by
    /// `validate`) keep nothing rather than panic.
    pub(super) fn new(traces_per_second: f64) -> Self {
        let rate = if traces_per_second.is_nan() || traces_per_second < 0.0 {
            0.0
        } else {
            traces_per_second
        };
        if rate.fract() == 0.0 || rate.is_infinite() {
            // `as` saturates: +inf becomes u64::MAX, i.e. no limit.
            LimiterMode::Fixed(rate as u64)
        } else {
            LimiterMode::TokenBucket {
                rate: (rate * TOKEN as f64).round() as u64,
                capacity: (rate.max(1.0) * TOKEN as f64).round() as u64,
            }
        }
    }
}

impl LimiterState {
    /// Offers a trace of `endpoint` that ended at `end_ns`; returns whether the limiter
    /// keeps it and the endpoint's `pending` count before this trace.
    pub(super) fn offer(
        &mut self,
        mode: LimiterMode,
        endpoint: Endpoint,
        end_ns: u64,
    ) -> (bool, u64) {
        let second = end_ns / NS_PER_S;
        if second > self.newest_second {
            self.newest_second = second;
            self.sweep();
        } else if self.endpoints.len() > 2 * self.swept_len + 1024 {
            // Time is not advancing (or a far-future trace pushed `newest_second`
            // ahead): sweep on growth too, so the map stays bounded either way.
            self.sweep();
        }
        let e = self
            .endpoints
            .entry(endpoint)
            .or_insert_with(|| EndpointState {
                second,
                kept: 0,
                tokens: match mode {
                    LimiterMode::Fixed(_) => 0,
                    // A new endpoint starts with a full bucket, so its first trace is kept.
                    LimiterMode::TokenBucket { capacity, .. } => capacity,
                },
                last_ns: end_ns,
                pending: 0,
            });
        // A trace older than the endpoint's current bucket (closed traces leave the
        // session window roughly, not strictly, in end-time order) is charged to the
        // current bucket: only the newest bucket is kept per endpoint.
        if second > e.second {
            e.second = second;
            e.kept = 0;
        }
        let kept = match mode {
            LimiterMode::Fixed(limit) => e.kept < limit,
            LimiterMode::TokenBucket { rate, capacity } => {
                if end_ns > e.last_ns {
                    let accrued =
                        u128::from(end_ns - e.last_ns) * u128::from(rate) / u128::from(NS_PER_S);
                    let tokens = u128::from(e.tokens).saturating_add(accrued);
                    e.tokens = u64::try_from(tokens.min(u128::from(capacity))).unwrap_or(capacity);
                    e.last_ns = end_ns;
                }
                if e.tokens >= TOKEN {
                    e.tokens -= TOKEN;
                    true
                } else {
                    false
                }
            }
        };
        e.kept += u64::from(kept);
        (kept, e.pending)
    }

    /// After the decision: the trace was dropped by every policy.
    pub(super) fn count_dropped(&mut self, endpoint: &Endpoint) {
        if let Some(e) = self.endpoints.get_mut(endpoint) {
            e.pending += 1;
        }
    }

    /// After the decision: a trace this limiter kept carries the pending count in its
    /// adjusted count.
    pub(super) fn clear_pending(&mut self, endpoint: &Endpoint) {
        if let Some(e) = self.endpoints.get_mut(endpoint) {
            e.pending = 0;
        }
    }

    fn sweep(&mut self) {
        let newest = self.newest_second;
        self.endpoints
            .retain(|_, e| newest.saturating_sub(e.second) <= EVICT_AFTER_S);
        self.swept_len = self.endpoints.len();
    }
}

/// One endpoint as written in a checkpoint.
#[derive(Serialize, Deserialize)]
struct EndpointEntry {
    service: Sym,
    operation: Sym,
    state: EndpointState,
}

/// Writes the endpoints sorted by text, so equal states give equal checkpoints (map
/// order and interning order differ between runs). JSON maps need string keys, hence a
/// list.
fn serialize_endpoints<S: Serializer>(
    map: &AHashMap<Endpoint, EndpointState>,
    s: S,
) -> Result<S::Ok, S::Error> {
    let mut entries: Vec<EndpointEntry> = map
        .iter()
        .map(|(&(service, operation), &state)| EndpointEntry {
            service,
            operation,
            state,
        })
        .collect();
    entries.sort_by_key(|e| (e.service, e.operation));
    entries.serialize(s)
}

fn deserialize_endpoints<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<AHashMap<Endpoint, EndpointState>, D::Error> {
    let entries = Vec::<EndpointEntry>::deserialize(d)?;
    Ok(entries
        .into_iter()
        .map(|e| ((e.service, e.operation), e.state))
        .collect())
}
