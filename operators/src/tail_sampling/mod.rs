//! `tail_sampling`: decides per closed trace whether to keep it, which policy kept it
//! and how many traces it stands for.
//!
//! Semantics (see DESIGN.md, "Operators"):
//! - Policies are evaluated in config order; a trace is kept when any of them matches,
//!   and the first matching one is recorded in [`Decision::policy`] and counted in
//!   [`SamplingMetrics::kept_by_policy`].
//! - Decisions are a deterministic function of the config and the set of traces: no
//!   clock and no randomness other than [`TraceId::hash64`](crate::TraceId::hash64),
//!   so replay, restore, every parallelism and every instance agree. `probabilistic`
//!   keeps a trace iff its hash is below `percentage / 100 * 2^64`, so all shards and
//!   processes (and a downstream sampler using the same rule) keep the same trace ids.
//! - `endpoint_rate_limit` keeps, per `(root service, root operation)` and window of
//!   event time (by the trace's end), the `budget` traces of lowest rank: a hash of the
//!   trace id salted with the policy's key, so it picks a sample independent of
//!   `probabilistic` and of other rate limits (see [`limit`]). Rates of 1 and more use
//!   one-second windows and `round(rate)` traces; lower rates keep one trace per window
//!   of `round(1 / rate)` seconds. Which traces are lowest is known only once every
//!   shard has closed the window, so the runtime runs a sampler with rate limits in two
//!   stages: each shard's sampler offers its traces' ranks to the window, one
//!   [`RateLimitMerge`] answers with the window's verdict once the shards' watermarks
//!   passed it, and the shard holds the traces whose decision depends on it until then
//!   (holding back its watermark, so metric intervals wait for them). A trace a
//!   deterministic policy keeps ahead of every rate limit is decided at once.
//! - A top-level rate limit is offered every trace: it ranks traces that other policies
//!   keep too, so its behaviour does not depend on policy order or on the other
//!   policies. Inside `and`, a rate limit is offered the traces for which no member
//!   before it (other than a rate limit) certainly failed, so `and: [attribute ...,
//!   endpoint_rate_limit ...]` limits the matching traces only; put the rate limit
//!   last.
//!
//! Adjusted counts ([`Decision::adjusted_count`]) let rollups over sampled traces
//! re-weight them; 0 for dropped traces, otherwise:
//! - 1 whenever a deterministic policy (`error`, `slow_span`, `trace_duration`,
//!   `attribute`, and `and`/`not` of those) matched: the trace would be kept anyway.
//! - `100 / percentage` when only `probabilistic` policies matched (all of them cut the
//!   same hash, so several of them count as the widest).
//! - For `endpoint_rate_limit`, `offered / kept` of its window, exact: the verdict
//!   counts every trace offered to the window by every shard.
//! - `and` multiplies its members' counts and `not` inverts its policy's probability;
//!   when several non-deterministic top-level policies match, the count is
//!   `1 / (1 - Π(1 - 1/count_i))`, their union treated as independent. Independence is
//!   an approximation: probabilistic policies inside one `and` share the hash.
//!
//! `attribute` matches exact values, prefixes, suffixes and substrings, not regular
//! expressions: this crate has no regex dependency yet and exact string matching is
//! cheap and unambiguous.

pub mod limit;
mod policy;
mod state;

pub use limit::{LimitKey, LimitSpec, Rank, RateLimitMerge, RateOffers, RateVerdict};
pub use state::TailSamplerState;

use std::collections::{BTreeMap, HashMap};

use ahash::AHashMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::{ConfigIssue, HumanDuration};
use crate::model::{CallType, Sym};
use crate::operator::{
    Batch, Buffered, DataKind, DeferredState, Emitter, Operator, OperatorError, PortSpec, Report,
    Scope, Shape, Share, Table, TraceRef, decode_state, encode_state,
};
use crate::session_window::ClosedTrace;

use crate::{EventTime, WATERMARK_END};
use policy::{Ctx, Eval, Node};
use state::HeldState;

/// Deepest nesting of `and`/`not` that [`TailSamplingConfig::validate`] accepts.
pub const MAX_POLICY_DEPTH: usize = 16;

/// Configuration of `tail_sampling` in a job file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TailSamplingConfig {
    /// Ordered policies; a trace is kept when any matches, and the first match is
    /// recorded as the policy that kept it.
    pub policies: Vec<PolicyConfig>,
}

/// One sampling policy (`type:` selects the kind). `name` is required at the top level
/// (it is recorded on kept traces and must be unique); inside `and`/`not` it may be
/// omitted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum PolicyConfig {
    /// Keeps traces with an error span: status error or an HTTP status >= 500.
    Error {
        /// Name recorded on the traces this policy keeps.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        name: String,
    },
    /// Keeps traces with a span (of `call_type`, when given) longer than `threshold`.
    SlowSpan {
        /// Name recorded on the traces this policy keeps.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        name: String,
        /// Only spans of this call type count (`local`, `http`, `rpc`, `db`, `cache`,
        /// `mq`); any call type when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schemars(schema_with = "call_type_schema")]
        call_type: Option<CallType>,
        /// A span is slow when its duration is strictly greater than this.
        threshold: HumanDuration,
    },
    /// Keeps traces whose duration (latest end - earliest start) exceeds `threshold`.
    TraceDuration {
        /// Name recorded on the traces this policy keeps.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        name: String,
        /// A trace is kept when its duration is strictly greater than this.
        threshold: HumanDuration,
    },
    /// Keeps up to `traces_per_second` traces per (root service, root operation) and
    /// second of event time, so that low-traffic endpoints are not starved.
    EndpointRateLimit {
        /// Name recorded on the traces this policy keeps.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        name: String,
        /// Budget per endpoint and event-time second, over all shards; rounded to
        /// whole traces per second, or below 1 to one trace per `round(1 / rate)`
        /// seconds (0.1 keeps one trace every ten seconds).
        traces_per_second: f64,
    },
    /// Keeps traces with a span whose attribute `key` matches one of the patterns.
    ///
    /// Span and resource attributes are searched, and these keys read the span's own
    /// fields: `service.name`, `service.instance.id` (falls back to `host.name`),
    /// `span.name`, `span.kind`, `span.status` (`unset`/`ok`/`error`), `call_type`,
    /// `peer.service` (the derived peer), `db.system`/`db.system.name`,
    /// `messaging.destination`/`messaging.destination.name` and
    /// `http.status_code`/`http.response.status_code` (as text, e.g. `503`). Non-string
    /// values compare by their text (`true`, `42`). Matching is case-sensitive.
    Attribute {
        /// Name recorded on the traces this policy keeps.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        name: String,
        /// The attribute key.
        key: String,
        /// Values that match exactly.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        values: Vec<String>,
        /// A value starting with one of these matches.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        prefixes: Vec<String>,
        /// A value ending with one of these matches.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        suffixes: Vec<String>,
        /// A value containing one of these matches.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        contains: Vec<String>,
    },
    /// Keeps `percentage` % of traces, chosen by the hash of the trace id so every
    /// instance agrees.
    Probabilistic {
        /// Name recorded on the traces this policy keeps.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        name: String,
        /// Share of traces to keep, 0 to 100.
        percentage: f64,
    },
    /// Matches when every nested policy matches.
    And {
        /// Name recorded on the traces this policy keeps.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        name: String,
        /// The nested policies, evaluated in order.
        policies: Vec<PolicyConfig>,
    },
    /// Matches when the nested policy does not.
    Not {
        /// Name recorded on the traces this policy keeps.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        name: String,
        /// The negated policy.
        policy: Box<PolicyConfig>,
    },
}

/// `CallType` lives in the model, which does not depend on schemars derives; describe
/// its job-file spelling here.
fn call_type_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let names: Vec<&str> = CallType::ALL.iter().map(|c| c.as_str()).collect();
    schemars::json_schema!({
        "type": "string",
        "enum": names,
        "description": "Only spans of this call type count; any call type when absent."
    })
}

impl PolicyConfig {
    /// The policy's name (empty when omitted).
    pub fn name(&self) -> &str {
        match self {
            PolicyConfig::Error { name }
            | PolicyConfig::SlowSpan { name, .. }
            | PolicyConfig::TraceDuration { name, .. }
            | PolicyConfig::EndpointRateLimit { name, .. }
            | PolicyConfig::Attribute { name, .. }
            | PolicyConfig::Probabilistic { name, .. }
            | PolicyConfig::And { name, .. }
            | PolicyConfig::Not { name, .. } => name,
        }
    }

    /// The `type:` of the policy.
    pub fn kind(&self) -> &'static str {
        match self {
            PolicyConfig::Error { .. } => "error",
            PolicyConfig::SlowSpan { .. } => "slow_span",
            PolicyConfig::TraceDuration { .. } => "trace_duration",
            PolicyConfig::EndpointRateLimit { .. } => "endpoint_rate_limit",
            PolicyConfig::Attribute { .. } => "attribute",
            PolicyConfig::Probabilistic { .. } => "probabilistic",
            PolicyConfig::And { .. } => "and",
            PolicyConfig::Not { .. } => "not",
        }
    }

    fn validate_at(&self, path: &str, depth: usize, under_not: bool, out: &mut Vec<ConfigIssue>) {
        if depth > MAX_POLICY_DEPTH {
            out.push(ConfigIssue::new(
                path,
                format!("policies nest deeper than {MAX_POLICY_DEPTH} levels of `and`/`not`"),
            ));
            return;
        }
        match self {
            PolicyConfig::Error { .. } => {}
            PolicyConfig::SlowSpan { threshold, .. }
            | PolicyConfig::TraceDuration { threshold, .. } => {
                if threshold.0.is_zero() {
                    out.push(ConfigIssue::new(
                        &format!("{path}.threshold"),
                        format!("must be greater than zero, found `{threshold}`"),
                    ));
                }
            }
            PolicyConfig::EndpointRateLimit {
                traces_per_second, ..
            } => {
                if !traces_per_second.is_finite() || *traces_per_second < 0.0 {
                    out.push(ConfigIssue::new(
                        &format!("{path}.traces_per_second"),
                        format!("must be a finite number >= 0, found {traces_per_second}"),
                    ));
                }
                if under_not {
                    out.push(ConfigIssue::new(
                        path,
                        "an `endpoint_rate_limit` under `not` would keep exactly the traces \
                         over the budget; use it outside `not`",
                    ));
                }
            }
            PolicyConfig::Attribute {
                key,
                values,
                prefixes,
                suffixes,
                contains,
                ..
            } => {
                if key.is_empty() {
                    out.push(ConfigIssue::new(
                        &format!("{path}.key"),
                        "must not be empty",
                    ));
                }
                if values.is_empty()
                    && prefixes.is_empty()
                    && suffixes.is_empty()
                    && contains.is_empty()
                {
                    out.push(ConfigIssue::new(
                        &format!("{path}.values"),
                        "give at least one of `values`, `prefixes`, `suffixes` or `contains`; \
                         with none the policy never matches",
                    ));
                }
            }
            PolicyConfig::Probabilistic { percentage, .. } => {
                if !(0.0..=100.0).contains(percentage) {
                    out.push(ConfigIssue::new(
                        &format!("{path}.percentage"),
                        format!("must be between 0 and 100, found {percentage}"),
                    ));
                }
            }
            PolicyConfig::And { policies, .. } => {
                if policies.is_empty() {
                    out.push(ConfigIssue::new(
                        &format!("{path}.policies"),
                        "an `and` needs at least one policy",
                    ));
                }
                for (j, p) in policies.iter().enumerate() {
                    p.validate_at(&format!("{path}.policies.{j}"), depth + 1, under_not, out);
                }
            }
            PolicyConfig::Not { policy, .. } => {
                policy.validate_at(&format!("{path}.policy"), depth + 1, true, out);
            }
        }
    }
}

impl TailSamplingConfig {
    /// Checks the values serde cannot; returns every problem found, with key paths
    /// relative to the operator (`policies.2.threshold`).
    pub fn validate(&self) -> Vec<ConfigIssue> {
        let mut issues = Vec::new();
        if self.policies.is_empty() {
            issues.push(ConfigIssue::new(
                "policies",
                "at least one policy is required; with none every trace is dropped",
            ));
        }
        let mut names: HashMap<&str, usize> = HashMap::new();
        for (i, p) in self.policies.iter().enumerate() {
            let path = format!("policies.{i}");
            let name = p.name();
            if name.trim().is_empty() {
                issues.push(ConfigIssue::new(
                    &format!("{path}.name"),
                    "a top-level policy needs a non-empty `name`: it is recorded on the \
                     traces the policy keeps",
                ));
            } else if let Some(first) = names.get(name) {
                issues.push(ConfigIssue::new(
                    &format!("{path}.name"),
                    format!(
                        "duplicate policy name `{name}` (also `policies.{first}.name`); names \
                         must be unique so kept traces and counters say which policy kept them"
                    ),
                ));
            } else {
                names.insert(name, i);
            }
            p.validate_at(&path, 0, false, &mut issues);
        }
        issues
    }
}

/// The verdict on one trace.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// Keep the trace.
    pub sampled: bool,
    /// Name of the first top-level policy (in config order) that matched; `None` when
    /// the trace is dropped.
    pub policy: Option<Sym>,
    /// How many traces this one stands for when rollups re-weight sampled traces (see
    /// the module docs); 0 for a dropped trace, >= 1 for a kept one.
    pub adjusted_count: f64,
}

/// Counters of one `tail_sampling` instance.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamplingMetrics {
    /// Traces decided.
    pub traces_seen: u64,
    /// Traces kept.
    pub traces_kept: u64,
    /// Traces dropped.
    pub traces_dropped: u64,
    /// Kept traces by the top-level policy recorded on them (the first that matched),
    /// so the values sum to `traces_kept`. Every policy is listed, with 0 until it
    /// keeps a trace.
    pub kept_by_policy: BTreeMap<String, u64>,
}

impl SamplingMetrics {
    /// Adds another instance's counters (shards are summed for the run summary).
    pub fn merge(&mut self, o: &SamplingMetrics) {
        self.traces_seen += o.traces_seen;
        self.traces_kept += o.traces_kept;
        self.traces_dropped += o.traces_dropped;
        for (name, n) in &o.kept_by_policy {
            *self.kept_by_policy.entry(name.clone()).or_insert(0) += n;
        }
    }
}

/// A top-level policy, compiled.
#[derive(Debug)]
struct TopPolicy {
    /// Recorded on kept traces: the name, or `policies.<i>` when it has none.
    name: Sym,
    node: Node,
    /// Holds a rate limit: decided only with its windows' verdicts.
    limited: bool,
    /// A bare `probabilistic`: such policies cut the same hash, so they nest.
    probabilistic: bool,
}

/// A trace waiting for the verdicts of the rate-limit windows it was offered to.
#[derive(Debug, Clone)]
struct Held {
    trace: TraceRef,
    /// Per offer: limiter, window and the trace's rank.
    offers: Vec<(usize, LimitKey, Rank)>,
    /// Leading policies known not to match it (evaluated when it was held): its
    /// decision starts after them.
    skip: usize,
}

/// The running `tail_sampling` operator of one shard.
///
/// Without rate limits it decides each trace when it arrives. With rate limits it is
/// the per-shard side of a two-stage operator (see [`limit`]): it decides at once
/// the traces that a deterministic policy keeps ahead of every rate limit, offers
/// every trace to its rate-limit windows ([`TailSampler::OFFERS`], for
/// [`TailSampler::merge_operator`]), and holds the others until the verdicts of
/// their windows come back (as a [`Batch::RateVerdicts`] on the input after the
/// node's `from:` inputs).
#[derive(Debug)]
pub struct TailSampler {
    policies: Vec<TopPolicy>,
    limits: Vec<LimitSpec>,
    metrics: SamplingMetrics,
    /// In arrival order, which is the order of the traces' close watermarks and so of
    /// their windows: verdicts release them from the front.
    held: std::collections::VecDeque<Held>,
    /// Spans of the held traces, and the earliest start among them.
    held_spans: usize,
    held_start: Option<EventTime>,
    /// Verdicts received, kept for [`limit::RETAIN_NS`] past their window.
    verdicts: AHashMap<LimitKey, RateVerdict>,
    /// The last input watermark.
    watermark: EventTime,
    /// Offers of the current batch, per window.
    offers: AHashMap<LimitKey, RateOffers>,
    /// Per window still without a verdict: the lowest ranks (at most the budget) this
    /// shard has offered. A held trace ranked above a full list cannot be among the
    /// window's kept traces whatever the other shards offer, so its decision need not
    /// wait for the verdict.
    local: AHashMap<LimitKey, Vec<Rank>>,
    /// Windows in which a held trace may have been outranked since the last
    /// release: look past the front of `held` for traces offered to them.
    outranked: Vec<LimitKey>,
    /// Scratch buffers reused across traces.
    rate: Vec<Option<Eval>>,
    offered: Vec<usize>,
    /// What the last `decide` that held its trace found: leading policies that did
    /// not match.
    skip: usize,
    scratch: String,
}

impl TailSampler {
    /// A copy of everything the sampler holds between calls.
    /// Replaces the held traces, verdicts and counters with a checkpoint's.
    fn restore_state(&mut self, s: TailSamplerState) {
        let mut metrics = s.metrics;
        for p in &self.policies {
            metrics
                .kept_by_policy
                .entry(p.name.as_str().to_owned())
                .or_insert(0);
        }
        self.metrics = metrics;
        self.held = s
            .held
            .into_iter()
            .map(|h| Held {
                trace: TraceRef {
                    trace: std::sync::Arc::new(h.trace),
                    decision: None,
                },
                offers: h.offers,
                // Not kept in checkpoints: evaluating every policy decides the same.
                skip: 0,
            })
            .collect();
        self.held_spans = self.held.iter().map(|h| h.trace.trace.spans.len()).sum();
        self.held_start = self
            .held
            .iter()
            .map(|h| h.trace.trace.summary.start_ns)
            .min();
        self.verdicts = s.verdicts.into_iter().map(|v| (v.key, v)).collect();
        self.watermark = s.watermark;
        // The lists, and the held traces' ranks (checkpoints of older versions have
        // no lists: the ranks of the held traces are a subset of what was offered, so
        // lists of them alone never release early what should wait).
        self.local.clear();
        let held_ranks = self
            .held
            .iter()
            .flat_map(|h| h.offers.iter().map(|(_, k, r)| (*k, *r)));
        let listed = s
            .local
            .into_iter()
            .flat_map(|(k, ranks)| ranks.into_iter().map(move |r| (k, r)));
        for (k, rank) in listed.chain(held_ranks.collect::<Vec<_>>()) {
            if self.verdicts.contains_key(&k) {
                continue;
            }
            let budget = self.limits.get(k.limiter as usize).map_or(0, |s| s.budget);
            limit::keep_lowest(self.local.entry(k).or_default(), rank, budget);
        }
        self.outranked.clear();
    }

    fn state(&self) -> TailSamplerState {
        let mut verdicts: Vec<RateVerdict> = self.verdicts.values().cloned().collect();
        verdicts.sort_by_key(|a| a.key);
        TailSamplerState {
            metrics: self.metrics.clone(),
            held: self
                .held
                .iter()
                .map(|h| HeldState {
                    trace: (*h.trace.trace).clone(),
                    offers: h.offers.clone(),
                })
                .collect(),
            verdicts,
            watermark: self.watermark,
            local: {
                let mut local: Vec<(LimitKey, Vec<Rank>)> =
                    self.local.iter().map(|(k, r)| (*k, r.clone())).collect();
                local.sort_by_key(|(k, _)| *k);
                local
            },
        }
    }

    /// Builds the sampler. The config should have passed [`TailSamplingConfig::validate`];
    /// invalid values are clamped (a negative rate or percentage keeps nothing) rather
    /// than causing a panic.
    pub fn new(config: TailSamplingConfig) -> Self {
        let mut specs: Vec<(String, LimitSpec)> = Vec::new();
        let policies: Vec<TopPolicy> = config
            .policies
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let key = if p.name().is_empty() {
                    format!("policies.{i}")
                } else {
                    p.name().to_owned()
                };
                let node = Node::compile(p, &key, &mut specs);
                TopPolicy {
                    name: Sym::new(&key),
                    limited: node.is_stateful(),
                    probabilistic: matches!(node, Node::Probabilistic(_)),
                    node,
                }
            })
            .collect();
        let mut metrics = SamplingMetrics::default();
        for p in &policies {
            metrics.kept_by_policy.insert(p.name.as_str().to_owned(), 0);
        }
        TailSampler {
            rate: vec![None; specs.len()],
            limits: specs.into_iter().map(|(_, s)| s).collect(),
            policies,
            metrics,
            held: std::collections::VecDeque::new(),
            held_spans: 0,
            held_start: None,
            verdicts: AHashMap::new(),
            watermark: 0,
            offers: AHashMap::new(),
            local: AHashMap::new(),
            outranked: Vec::new(),
            offered: Vec::new(),
            skip: 0,
            scratch: String::new(),
        }
    }

    /// True when a policy holds a rate limit: the sampler then runs in two stages and
    /// needs its [`TailSampler::merge_operator`].
    pub fn has_rate_limits(&self) -> bool {
        !self.limits.is_empty()
    }

    /// The rate limits' windows all end at multiples of this (ns): their merge stage
    /// decides only when the watermark reaches one.
    pub fn rate_limit_grain(&self) -> u64 {
        self.limits
            .iter()
            .map(|l| l.window_ns.max(1))
            .reduce(gcd)
            .unwrap_or(1)
    }

    /// The merge stage of the rate limits.
    pub fn merge_operator(&self) -> RateLimitMerge {
        RateLimitMerge::new(self.limits.clone())
    }

    /// Counters so far.
    pub fn metrics(&self) -> &SamplingMetrics {
        &self.metrics
    }

    /// Traces waiting for rate-limit verdicts.
    pub fn held_traces(&self) -> usize {
        self.held.len()
    }

    /// Decides a trace that no rate limit is offered, or whose outcome no rate limit
    /// can change; `None` when it must wait for verdicts.
    pub fn decide(&mut self, trace: &ClosedTrace) -> Option<Decision> {
        self.offered.clear();
        let hash = trace.trace_id.hash64();
        let mut cx = Ctx {
            trace,
            hash,
            rate: &[],
            scratch: &mut self.scratch,
        };
        for p in &self.policies {
            if p.limited {
                p.node.offers(&mut cx, &mut self.offered);
            }
        }
        if self.offered.is_empty() {
            return Some(self.evaluate(trace, hash, 0));
        }
        // A certain match ahead of every rate limit fixes the outcome.
        let mut cx = Ctx {
            trace,
            hash,
            rate: &[],
            scratch: &mut self.scratch,
        };
        let mut unmatched = true;
        for (i, p) in self.policies.iter().enumerate() {
            if p.limited {
                // Its decision, once the verdicts are in, need not evaluate these
                // again when none of them matched.
                self.skip = if unmatched { i } else { 0 };
                return None;
            }
            let e = p.node.eval(&mut cx);
            unmatched &= !e.matched;
            if e.matched && e.p >= 1.0 {
                let d = Decision {
                    sampled: true,
                    policy: Some(p.name),
                    adjusted_count: 1.0,
                };
                self.count(&d);
                return Some(d);
            }
        }
        None
    }

    /// The decision with `self.rate` holding the rate limits' outcomes.
    /// Policies before `skip` are known not to match.
    fn evaluate(&mut self, trace: &ClosedTrace, hash: u64, skip: usize) -> Decision {
        let mut cx = Ctx {
            trace,
            hash,
            rate: &self.rate,
            scratch: &mut self.scratch,
        };
        let mut first: Option<usize> = None;
        let mut certain = false;
        // Non-deterministic matches: bare probabilistic policies nest (same hash), so
        // only the widest counts; the others combine as independent.
        let mut widest: Option<Eval> = None;
        let mut others = 0usize;
        let mut other_w = 1.0;
        let mut miss = 1.0;
        let mut min_w = f64::INFINITY;
        for (i, pol) in self.policies.iter().enumerate().skip(skip) {
            if certain {
                break;
            }
            let e = pol.node.eval(&mut cx);
            if !e.matched {
                continue;
            }
            first.get_or_insert(i);
            if e.p >= 1.0 {
                certain = true;
                continue;
            }
            min_w = min_w.min(e.w);
            if pol.probabilistic {
                if widest.is_none_or(|w| e.p > w.p) {
                    widest = Some(e);
                }
            } else {
                others += 1;
                other_w = e.w;
                miss *= 1.0 - e.p;
            }
        }
        let sampled = first.is_some();
        let adjusted_count = if !sampled {
            0.0
        } else if certain {
            1.0
        } else {
            match (widest, others) {
                (Some(w), 0) => w.w,
                (None, 1) => other_w,
                (w, _) => {
                    let union = 1.0 - miss * w.map_or(1.0, |w| 1.0 - w.p);
                    // The union is at least as likely as its likeliest member; the
                    // bound also covers a union that rounded to 0.
                    if union > 0.0 {
                        (1.0 / union).min(min_w)
                    } else {
                        min_w
                    }
                }
            }
        };
        let d = Decision {
            sampled,
            policy: first.and_then(|i| self.policies.get(i)).map(|p| p.name),
            adjusted_count,
        };
        self.count(&d);
        d
    }

    fn count(&mut self, d: &Decision) {
        let m = &mut self.metrics;
        m.traces_seen += 1;
        match d.policy.filter(|_| d.sampled) {
            Some(name) => {
                m.traces_kept += 1;
                *m.kept_by_policy
                    .entry(name.as_str().to_owned())
                    .or_insert(0) += 1;
            }
            None => m.traces_dropped += 1,
        }
    }

    /// Takes a trace: decides it, or records its offers and holds it.
    fn take(&mut self, t: TraceRef, out: &mut Vec<TraceRef>) {
        if let Some(d) = self.decide(&t.trace) {
            // Its offers still count (a rate limit ranks every trace it is offered).
            self.record_offers(&t.trace, None, out);
            out.push(TraceRef {
                decision: Some(d),
                ..t
            });
            return;
        }
        // Held: nothing else can be released before the batch ends (verdicts come
        // between batches; an outranking is acted on by `process` at its end).
        self.record_offers(&t.trace, Some(t.clone()), out);
    }

    /// Offers `trace` to its windows (by the time its session closed); with `hold`,
    /// keeps it until their verdicts.
    fn record_offers(
        &mut self,
        trace: &ClosedTrace,
        hold: Option<TraceRef>,
        out: &mut Vec<TraceRef>,
    ) {
        // Only a held trace keeps its offers.
        let mut offers = Vec::with_capacity(if hold.is_some() {
            self.offered.len()
        } else {
            0
        });
        let (service, operation) = (trace.summary.root_service, trace.summary.root_operation);
        for &l in &self.offered {
            let Some(spec) = self.limits.get(l) else {
                continue;
            };
            let key = LimitKey {
                limiter: u32::try_from(l).unwrap_or(u32::MAX),
                service,
                operation,
                window: spec.window(trace.summary.closes_at),
            };
            let rank = spec.rank(trace.trace_id);
            if hold.is_some() {
                offers.push((l, key, rank));
            }
            let o = self.offers.entry(key).or_insert_with(|| RateOffers {
                key,
                offered: 0,
                lowest: Vec::new(),
            });
            o.offered += 1;
            limit::keep_lowest(&mut o.lowest, rank, spec.budget);
            if !self.verdicts.contains_key(&key) {
                let lowest = self.local.entry(key).or_default();
                let full = lowest.len() as u64 >= spec.budget;
                limit::keep_lowest(lowest, rank, spec.budget);
                // A full list that took this rank pushed another out: its trace, if
                // held, is now outranked.
                if full && lowest.binary_search(&rank).is_ok() && !self.outranked.contains(&key) {
                    self.outranked.push(key);
                }
            }
        }
        if let Some(trace) = hold {
            let held = Held {
                trace,
                offers,
                skip: self.skip,
            };
            if self.determined(&held) {
                // Outranked at once in every window it was offered to.
                let t = self.decide_held(held);
                out.push(t);
                return;
            }
            let Held { trace, offers, .. } = held;
            self.held_spans += trace.trace.spans.len();
            let start = trace.trace.summary.start_ns;
            self.held_start = Some(self.held_start.map_or(start, |s| s.min(start)));
            self.held.push_back(Held {
                trace,
                offers,
                skip: self.skip,
            });
        }
    }

    /// The outcome of a held trace's offer when it is known: from the window's
    /// verdict, or "not kept" when the trace is outranked on this shard alone.
    fn offer_outcome(&self, l: usize, k: &LimitKey, rank: Rank) -> Option<Eval> {
        let budget = self.limits.get(l).map_or(0, |s| s.budget);
        if let Some(v) = self.verdicts.get(k) {
            let (matched, p, w) = v.judge(rank, budget);
            return Some(Eval { matched, p, w });
        }
        let lowest = self.local.get(k)?;
        let outranked = lowest.len() as u64 >= budget && lowest.last().is_some_and(|x| rank > *x);
        outranked.then(|| Eval::certain(false))
    }

    /// Whether every offer of `h` has a known outcome.
    fn determined(&self, h: &Held) -> bool {
        h.offers
            .iter()
            .all(|(l, k, rank)| self.offer_outcome(*l, k, *rank).is_some())
    }

    /// Decides a [`determined`](Self::determined) trace (the held count must no
    /// longer include it).
    fn decide_held(&mut self, h: Held) -> TraceRef {
        self.rate.iter_mut().for_each(|r| *r = None);
        for (l, k, rank) in &h.offers {
            let e = self
                .offer_outcome(*l, k, *rank)
                .unwrap_or(Eval::certain(false));
            if let Some(slot) = self.rate.get_mut(*l) {
                *slot = Some(e);
            }
        }
        let hash = h.trace.trace.trace_id.hash64();
        let d = self.evaluate(&h.trace.trace, hash, h.skip);
        TraceRef {
            decision: Some(d),
            ..h.trace
        }
    }

    /// Decides the held traces whose offers all have known outcomes: from the front
    /// (verdicts come in window order), and anywhere after an outranking.
    fn release(&mut self, out: &mut Vec<TraceRef>) {
        let mut released = false;
        if !self.outranked.is_empty() {
            let keys = std::mem::take(&mut self.outranked);
            let ready: Vec<usize> = self
                .held
                .iter()
                .enumerate()
                .filter(|(_, h)| {
                    h.offers.iter().any(|(_, k, _)| keys.contains(k)) && self.determined(h)
                })
                .map(|(i, _)| i)
                .collect();
            // From the back, so the indexes stay valid; then in arrival order.
            let mut taken: Vec<Held> = ready
                .iter()
                .rev()
                .filter_map(|&i| self.held.remove(i))
                .collect();
            taken.reverse();
            for h in taken {
                released = true;
                self.held_spans -= h.trace.trace.spans.len();
                let t = self.decide_held(h);
                out.push(t);
            }
            self.outranked = keys;
            self.outranked.clear();
        }
        while let Some(front) = self.held.front() {
            if !self.determined(front) {
                break;
            }
            let Some(h) = self.held.pop_front() else {
                break;
            };
            released = true;
            self.held_spans -= h.trace.trace.spans.len();
            let t = self.decide_held(h);
            out.push(t);
        }
        if released {
            self.held_start = self
                .held
                .iter()
                .map(|h| h.trace.trace.summary.start_ns)
                .min();
        }
    }

    /// Emits decided traces on the ports that are read.
    fn emit(out: &mut Emitter, traces: Vec<TraceRef>) {
        if traces.is_empty() {
            return;
        }
        // `spans` and `kept` carry the same kept traces (written as spans or as
        // traces); the emitter drops a port nobody reads.
        if out.is_connected(Self::SPANS) || out.is_connected(Self::KEPT) {
            let kept: Vec<TraceRef> = traces.iter().filter(|t| t.kept()).cloned().collect();
            if !out.is_connected(Self::KEPT) {
                out.emit(Self::SPANS, Batch::Traces(kept));
            } else {
                if out.is_connected(Self::SPANS) {
                    out.emit(Self::SPANS, Batch::Traces(kept.clone()));
                }
                out.emit(Self::KEPT, Batch::Traces(kept));
            }
        }
        out.emit(Self::TRACES, Batch::Traces(traces));
    }

    fn emit_offers(&mut self, out: &mut Emitter) {
        if self.offers.is_empty() {
            return;
        }
        let mut offers: Vec<RateOffers> = self.offers.drain().map(|(_, o)| o).collect();
        offers.sort_by_key(|a| a.key);
        out.emit(Self::OFFERS, Batch::RateOffers(offers));
    }
}

impl TailSampler {
    /// Ports and tables of `tail_sampling` nodes.
    pub const SHAPE: Shape = Shape {
        kind: "tail_sampling",
        input: DataKind::Traces,
        scope: Scope::Shard,
        outputs: &[
            PortSpec {
                name: "traces",
                data: DataKind::Traces,
                table: Some(Table::Traces),
                doc: "every trace, marked with the decision",
            },
            PortSpec {
                name: "spans",
                data: DataKind::Traces,
                table: Some(Table::Spans),
                doc: "the spans of the kept traces",
            },
            PortSpec {
                name: "kept",
                data: DataKind::Traces,
                table: Some(Table::Traces),
                doc: "the kept traces only",
            },
        ],
    };

    /// Output port of every trace with its decision.
    pub const TRACES: usize = 0;
    /// Output port of the kept traces, written as their spans.
    pub const SPANS: usize = 1;
    /// Output port of the kept traces.
    pub const KEPT: usize = 2;
    /// Output port of the rate-limit offers, for the merge stage (not a port of the
    /// node: the runtime connects it to [`TailSampler::merge_operator`], whose one
    /// output, the verdicts, it delivers back to every shard's sampler).
    pub const OFFERS: usize = 3;

    /// The forwarded watermark: held back to before the earliest held trace.
    fn forwarded(&self, watermark: EventTime) -> EventTime {
        self.held_start
            .map_or(watermark, |s| s.saturating_sub(1).min(watermark))
    }
}

impl Operator for TailSampler {
    fn process(
        &mut self,
        input: usize,
        batch: Batch,
        out: &mut Emitter,
    ) -> Result<(), OperatorError> {
        let mut decided = Vec::new();
        match batch {
            Batch::Traces(traces) => {
                decided.reserve(traces.len());
                for t in traces {
                    self.take(t, &mut decided);
                }
                // Held traces the batch outranked.
                self.release(&mut decided);
            }
            Batch::RateVerdicts(verdicts) => {
                for v in verdicts {
                    self.local.remove(&v.key);
                    self.verdicts.insert(v.key, v);
                }
                self.release(&mut decided);
            }
            other => return Err(OperatorError::unexpected("tail_sampling", input, &other)),
        }
        Self::emit(out, decided);
        self.emit_offers(out);
        Ok(())
    }

    fn on_watermark(
        &mut self,
        watermark: EventTime,
        out: &mut Emitter,
    ) -> Result<EventTime, OperatorError> {
        // Verdicts expire by whole seconds: the runtime asks for the watermark after
        // every batch, and a sweep of the map each time would cost more than the rest.
        let swept = self.watermark / 1_000_000_000 != watermark / 1_000_000_000;
        self.watermark = self.watermark.max(watermark);
        if swept && watermark != WATERMARK_END && !self.verdicts.is_empty() {
            let limits = &self.limits;
            let live = |k: &LimitKey| {
                limits.get(k.limiter as usize).is_none_or(|s| {
                    s.window_end(k.window).saturating_add(limit::RETAIN_NS) > watermark
                })
            };
            self.verdicts.retain(|k, _| live(k));
            // Windows offered to after their verdict came (late traces) get a list too.
            self.local.retain(|k, _| live(k));
        }
        let mut decided = Vec::new();
        self.release(&mut decided);
        Self::emit(out, decided);
        Ok(self.forwarded(watermark))
    }

    fn snapshot(&self) -> Result<Vec<u8>, OperatorError> {
        encode_state(&self.state())
    }

    fn snapshot_deferred(&self) -> Result<DeferredState, OperatorError> {
        Ok(DeferredState::later(self.state()))
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), OperatorError> {
        let s: TailSamplerState = decode_state(state)?;
        self.restore_state(s);
        Ok(())
    }

    fn restore_share(&mut self, states: &[(&[u8], Share)]) -> Result<(), OperatorError> {
        let mut merged = TailSamplerState::default();
        for (i, (bytes, share)) in states.iter().enumerate() {
            let s: TailSamplerState = decode_state(bytes)?;
            merged.take_share(s, share, i == 0);
        }
        self.restore_state(merged);
        Ok(())
    }

    fn report(&self) -> Report {
        Report::Sampling(self.metrics.clone())
    }

    fn buffered(&self) -> Buffered {
        Buffered {
            spans: self.held_spans,
            bytes: self.held_spans * std::mem::size_of::<crate::model::Span>(),
            open_traces: 0,
        }
    }
}

#[cfg(test)]
mod tests;

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}
