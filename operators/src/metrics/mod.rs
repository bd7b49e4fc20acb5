//! Shared machinery of the metric operators (`red_metrics`, `service_graph`): series
//! keys, histograms with exemplars, event-time tumbling intervals, the cross-shard
//! merge, quantiles from buckets and OpenMetrics rendering.
//!
//! Each shard pre-aggregates the traces it closes into per-interval partials; one
//! [`MetricsMerger`] combines the shards' partials and closes an interval once every
//! shard's (held-back) watermark has passed its end. Merging is associative and
//! commutative and the cardinality limit is applied at close time over the merged
//! series, so the rows do not depend on the number of shards.

pub mod cumulative;
mod merge;
pub mod normalize;
mod partial;

pub use merge::{MetricsMerge, MetricsReport, ServiceTotals};
pub use partial::TracePartial;

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::fmt::Write as _;

use ahash::AHashMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::{ConfigIssue, HumanDuration};
use crate::model::{CallType, SpanId, Sym, TraceId};
use crate::{EventTime, WATERMARK_END};

/// Which metric a series belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Every span of a service instance.
    ServiceNode,
    /// Entry spans (server, consumer) of a service: the endpoints it serves.
    ServiceServer,
    /// Outgoing calls (client, producer spans) by call type.
    ServiceCall(CallType),
    /// Outgoing calls that failed, by call type, with their status.
    ServiceCallError(CallType),
    /// Edges of the service graph: caller -> callee (or virtual node).
    ServiceRelation,
}

impl Metric {
    /// The metric name stored in outputs (`service_call_http`, `service_call_db_error`).
    pub fn name(self) -> &'static str {
        match self {
            Metric::ServiceNode => "service_node",
            Metric::ServiceServer => "service_server",
            Metric::ServiceRelation => "service_relation",
            Metric::ServiceCall(ct) => match ct {
                CallType::Http => "service_call_http",
                CallType::Rpc => "service_call_rpc",
                CallType::Db => "service_call_db",
                CallType::Cache => "service_call_cache",
                CallType::Mq => "service_call_mq",
                CallType::Local => "service_call_local",
            },
            Metric::ServiceCallError(ct) => match ct {
                CallType::Http => "service_call_http_error",
                CallType::Rpc => "service_call_rpc_error",
                CallType::Db => "service_call_db_error",
                CallType::Cache => "service_call_cache_error",
                CallType::Mq => "service_call_mq_error",
                CallType::Local => "service_call_local_error",
            },
        }
    }
}

/// How the two nodes of a service-graph edge are connected, as Tempo's metrics-generator
/// labels its edges (`connection_type`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionType {
    /// A call between two instrumented services (Tempo's empty label); also every
    /// series that is not an edge.
    #[default]
    Direct,
    /// A client calling a database (or cache) seen only through its client spans.
    Database,
    /// A producer and a consumer span of two services: the messaging system between them.
    MessagingSystem,
    /// One side has no spans of its own: the virtual client of root spans, a peer
    /// feeding a consumer, an uninstrumented peer or queue.
    VirtualNode,
}

impl ConnectionType {
    /// The label as Tempo writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionType::Direct => "",
            ConnectionType::Database => "database",
            ConnectionType::MessagingSystem => "messaging_system",
            ConnectionType::VirtualNode => "virtual_node",
        }
    }
}

/// What kind of node the target of a series is (for the service graph).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum NodeKind {
    /// An instrumented service (it has spans of its own).
    #[default]
    Service,
    /// A database seen only through its clients' spans.
    Database,
    /// A cache seen only through its clients' spans.
    Cache,
    /// A queue/topic with no consumer spans in the trace.
    Queue,
    /// An external or uninstrumented HTTP/RPC peer.
    External,
}

impl NodeKind {
    /// snake_case name as stored in outputs.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeKind::Service => "service",
            NodeKind::Database => "database",
            NodeKind::Cache => "cache",
            NodeKind::Queue => "queue",
            NodeKind::External => "external",
        }
    }
}

/// Identifies one series. Unused dimensions are empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SeriesKey {
    /// The metric.
    pub metric: Metric,
    /// Service (the caller, for relations).
    pub service: Sym,
    /// Service instance.
    pub instance: Sym,
    /// Normalized operation.
    pub operation: Sym,
    /// Call type.
    pub call_type: CallType,
    /// Peer / target (the callee, for relations).
    pub peer: Sym,
    /// Kind of the peer node.
    pub peer_kind: NodeKind,
    /// Status of failed calls (`_error` series): HTTP code or `error`.
    pub status: Sym,
    /// How source and target connect (relations).
    #[serde(default)]
    pub connection: ConnectionType,
    /// The tenant of the span's resource (the `tenant` dimension).
    #[serde(default)]
    pub tenant: Sym,
}

/// Hashes the key as four words: every span is observed into two or three series, and
/// the derived hash (one round per field) was most of the cost of finding its series.
/// Consistent with `Eq`: equal keys have equal words. Symbol ids differ between runs,
/// which only changes the order of hash maps, never what is emitted (rows are sorted).
impl std::hash::Hash for SeriesKey {
    #[inline]
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        for w in self.words() {
            state.write_u64(w);
        }
    }
}

impl SeriesKey {
    /// The key as four words: equal keys have equal words and different keys different
    /// ones (every field has its own bits), so the words identify the series.
    #[inline]
    pub fn words(&self) -> [u64; 4] {
        let metric: u64 = match self.metric {
            Metric::ServiceNode => 0,
            Metric::ServiceServer => 1,
            Metric::ServiceRelation => 2,
            Metric::ServiceCall(c) => 16 + c as u64,
            Metric::ServiceCallError(c) => 32 + c as u64,
        };
        let pair = |a: Sym, b: Sym| (u64::from(a.id()) << 32) | u64::from(b.id());
        [
            pair(self.service, self.instance),
            pair(self.operation, self.peer),
            u64::from(self.status.id())
                | (self.call_type as u64) << 32
                | (self.peer_kind as u64) << 40
                | metric << 48
                | (self.connection as u64) << 56,
            u64::from(self.tenant.id()),
        ]
    }

    /// A key with only the metric set.
    #[inline]
    pub fn new(metric: Metric) -> Self {
        SeriesKey {
            metric,
            service: Sym::empty(),
            instance: Sym::empty(),
            operation: Sym::empty(),
            call_type: CallType::Local,
            peer: Sym::empty(),
            peer_kind: NodeKind::Service,
            status: Sym::empty(),
            connection: ConnectionType::Direct,
            tenant: Sym::empty(),
        }
    }

    /// The series that absorbs what exceeds the cardinality limit.
    pub fn overflow(metric: Metric) -> Self {
        let o = Sym::new(OVERFLOW);
        SeriesKey {
            service: o,
            operation: o,
            peer: o,
            ..SeriesKey::new(metric)
        }
    }
}

/// Dimension value of the overflow series.
pub const OVERFLOW: &str = "__overflow__";

/// A sample linking a histogram bucket to a span.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exemplar {
    /// Trace of the span.
    pub trace_id: TraceId,
    /// The span.
    pub span_id: SpanId,
    /// Its duration, ns.
    pub value_ns: u64,
    /// Its end, unix ns.
    pub timestamp_ns: u64,
    /// It failed.
    pub error: bool,
    /// Its trace was kept by the sampler (or no sampler runs).
    pub sampled: bool,
}

impl Exemplar {
    /// Preference order: kept traces first (so the link resolves), then errors, then the
    /// slowest; ids and then the time break ties, so the choice never depends on
    /// arrival order (a span id seen twice, at two times, is two exemplars).
    fn rank(
        &self,
    ) -> (
        bool,
        bool,
        u64,
        Reverse<TraceId>,
        Reverse<SpanId>,
        Reverse<u64>,
    ) {
        (
            self.sampled,
            self.error,
            self.value_ns,
            Reverse(self.trace_id),
            Reverse(self.span_id),
            Reverse(self.timestamp_ns),
        )
    }

    /// True when `self` should replace `other`.
    pub fn beats(&self, other: &Exemplar) -> bool {
        self.rank() > other.rank()
    }
}

/// Requests, errors, slow calls, durations and a histogram with one exemplar per bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeriesAgg {
    /// Observations.
    pub requests: u64,
    /// Failed observations.
    pub errors: u64,
    /// Observations slower than the call type's threshold.
    pub slow: u64,
    /// Sum of durations, ns.
    pub sum_ns: u64,
    /// Smallest duration, ns.
    pub min_ns: u64,
    /// Largest duration, ns.
    pub max_ns: u64,
    /// Non-cumulative bucket counts; the last is `+Inf`.
    pub counts: Vec<u64>,
    /// One exemplar per bucket.
    pub exemplars: Vec<Option<Exemplar>>,
}

impl SeriesAgg {
    /// Empty, with `buckets` buckets (bounds + 1).
    pub fn new(buckets: usize) -> Self {
        SeriesAgg {
            requests: 0,
            errors: 0,
            slow: 0,
            sum_ns: 0,
            min_ns: u64::MAX,
            max_ns: 0,
            counts: vec![0; buckets],
            exemplars: vec![None; buckets],
        }
    }

    /// Adds one observation in bucket `bucket`.
    #[inline]
    pub fn observe(&mut self, bucket: usize, value_ns: u64, slow: bool, exemplar: Exemplar) {
        self.observe_totals(value_ns, slow, exemplar.error);
        if let Some(c) = self.counts.get_mut(bucket) {
            *c += 1;
        }
        if let Some(slot) = self.exemplars.get_mut(bucket) {
            match slot {
                Some(cur) if !exemplar.beats(cur) => {}
                _ => *slot = Some(exemplar),
            }
        }
    }

    /// Adds one observation to the totals only (not to a bucket).
    #[inline]
    fn observe_totals(&mut self, value_ns: u64, slow: bool, error: bool) {
        self.requests += 1;
        self.errors += u64::from(error);
        self.slow += u64::from(slow);
        self.sum_ns = self.sum_ns.saturating_add(value_ns);
        self.min_ns = self.min_ns.min(value_ns);
        self.max_ns = self.max_ns.max(value_ns);
    }

    /// Adds another aggregate of the same series (same buckets).
    pub fn merge(&mut self, o: &SeriesAgg) {
        self.add_counts(o);
        for (a, b) in self.exemplars.iter_mut().zip(&o.exemplars) {
            match (a.as_ref(), b) {
                (_, None) => {}
                (Some(cur), Some(new)) if !new.beats(cur) => {}
                (_, Some(new)) => *a = Some(*new),
            }
        }
    }

    /// Adds another aggregate's counts, sums and extremes (not its exemplars).
    pub fn add_counts(&mut self, o: &SeriesAgg) {
        self.requests += o.requests;
        self.errors += o.errors;
        self.slow += o.slow;
        self.sum_ns = self.sum_ns.saturating_add(o.sum_ns);
        self.min_ns = self.min_ns.min(o.min_ns);
        self.max_ns = self.max_ns.max(o.max_ns);
        for (a, b) in self.counts.iter_mut().zip(&o.counts) {
            *a += b;
        }
    }

    /// Drops exemplars whose trace the sampler did not keep (when sampling is on).
    pub fn keep_sampled_exemplars(&mut self) {
        for e in &mut self.exemplars {
            if e.is_some_and(|x| !x.sampled) {
                *e = None;
            }
        }
    }
}

/// Explicit histogram bucket bounds (`le`), ascending, in ns; `+Inf` is implicit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Buckets {
    bounds_ns: Vec<u64>,
}

impl Buckets {
    /// From ascending bounds.
    pub fn new(bounds: &[HumanDuration]) -> Self {
        let mut bounds_ns: Vec<u64> = bounds.iter().map(|d| d.as_nanos()).collect();
        bounds_ns.sort_unstable();
        bounds_ns.dedup();
        Buckets { bounds_ns }
    }

    /// Bucket of a value: the first whose bound is >= it (`le` semantics).
    #[inline]
    pub fn index(&self, value_ns: u64) -> usize {
        self.bounds_ns.partition_point(|b| *b < value_ns)
    }

    /// Number of buckets, `+Inf` included.
    pub fn len(&self) -> usize {
        self.bounds_ns.len() + 1
    }

    /// True when there are no explicit bounds (one `+Inf` bucket).
    pub fn is_empty(&self) -> bool {
        self.bounds_ns.is_empty()
    }

    /// Bounds in ns.
    pub fn bounds_ns(&self) -> &[u64] {
        &self.bounds_ns
    }

    /// Bounds in seconds, as OpenMetrics and the outputs show them.
    pub fn bounds_seconds(&self) -> Vec<f64> {
        self.bounds_ns.iter().map(|b| *b as f64 / 1e9).collect()
    }
}

/// The default buckets: 1 ms to 30 s.
pub fn default_buckets() -> Vec<HumanDuration> {
    [
        1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000,
    ]
    .map(HumanDuration::millis)
    .to_vec()
}

/// Per-call-type slow thresholds: a call is slow when its duration is strictly greater.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SlowThresholds {
    /// HTTP calls.
    #[serde(default = "slow::http")]
    pub http: HumanDuration,
    /// RPC calls.
    #[serde(default = "slow::rpc")]
    pub rpc: HumanDuration,
    /// Database calls.
    #[serde(default = "slow::db")]
    pub db: HumanDuration,
    /// Cache calls.
    #[serde(default = "slow::cache")]
    pub cache: HumanDuration,
    /// Queue calls.
    #[serde(default = "slow::mq")]
    pub mq: HumanDuration,
    /// In-process spans.
    #[serde(default = "slow::local")]
    pub local: HumanDuration,
}

mod slow {
    use crate::config::HumanDuration;
    pub fn http() -> HumanDuration {
        HumanDuration::millis(500)
    }
    pub fn rpc() -> HumanDuration {
        HumanDuration::millis(500)
    }
    pub fn db() -> HumanDuration {
        HumanDuration::millis(200)
    }
    pub fn cache() -> HumanDuration {
        HumanDuration::millis(50)
    }
    pub fn mq() -> HumanDuration {
        HumanDuration::millis(1000)
    }
    pub fn local() -> HumanDuration {
        HumanDuration::millis(1000)
    }
}

impl Default for SlowThresholds {
    fn default() -> Self {
        SlowThresholds {
            http: slow::http(),
            rpc: slow::rpc(),
            db: slow::db(),
            cache: slow::cache(),
            mq: slow::mq(),
            local: slow::local(),
        }
    }
}

impl SlowThresholds {
    /// Thresholds in ns indexed by `CallType as usize`.
    pub fn nanos(&self) -> [u64; 6] {
        let mut out = [0u64; 6];
        for ct in CallType::ALL {
            out[ct as usize] = match ct {
                CallType::Http => self.http,
                CallType::Rpc => self.rpc,
                CallType::Db => self.db,
                CallType::Cache => self.cache,
                CallType::Mq => self.mq,
                CallType::Local => self.local,
            }
            .as_nanos();
        }
        out
    }
}

/// Checks the interval, bucket and cardinality settings shared by the metric operators.
pub fn validate_metric_settings(
    interval: HumanDuration,
    buckets: &[HumanDuration],
    max_series: usize,
) -> Vec<ConfigIssue> {
    let mut issues = Vec::new();
    if max_series == 0 {
        issues.push(ConfigIssue::new(
            "max_series",
            "must be at least 1, found 0",
        ));
    }
    if interval.0.is_zero() {
        issues.push(ConfigIssue::new(
            "interval",
            "must be greater than zero, found `0s`",
        ));
    }
    if buckets.windows(2).any(|w| w[0] >= w[1]) {
        issues.push(ConfigIssue::new("buckets", "must be strictly ascending"));
    }
    if buckets.iter().any(|b| b.0.is_zero()) {
        issues.push(ConfigIssue::new(
            "buckets",
            "bounds must be greater than zero",
        ));
    }
    issues
}

/// The series of one interval of one shard, not yet merged.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Partial {
    /// Interval start, unix ns.
    pub start_ns: EventTime,
    /// Its series.
    pub series: Vec<(SeriesKey, SeriesAgg)>,
}

/// One histogram bucket of one series while its interval is open: the count and the
/// bucket's exemplar side by side (one place to touch per observation instead of two
/// vectors). The exemplar is meaningful only once `count > 0`.
#[derive(Debug, Clone, Copy)]
struct Cell {
    count: u64,
    exemplar: Exemplar,
}

const NO_EXEMPLAR: Exemplar = Exemplar {
    trace_id: TraceId([0; 16]),
    span_id: SpanId([0; 8]),
    value_ns: 0,
    timestamp_ns: 0,
    error: false,
    sampled: false,
};

/// The series of one open interval: series `i` has its key and totals in `heads[i]`
/// (a `SeriesAgg` whose bucket vectors stay empty) and its buckets in
/// `cells[i * buckets..(i + 1) * buckets]`, found by its key's words. No allocation per
/// series: observing was the largest cost of the metric operators, most of it finding
/// the series and touching its three separately allocated parts.
#[derive(Debug, Clone)]
struct OpenInterval {
    start: EventTime,
    index: AHashMap<[u64; 4], u32>,
    heads: Vec<(SeriesKey, SeriesAgg)>,
    cells: Vec<Cell>,
}

impl OpenInterval {
    fn new(start: EventTime, series: usize, buckets: usize) -> Self {
        OpenInterval {
            start,
            index: AHashMap::with_capacity(series),
            heads: Vec::with_capacity(series),
            cells: Vec::with_capacity(series * buckets),
        }
    }

    /// Opens a series (out of line: most observations find theirs).
    #[inline(never)]
    fn add_series(&mut self, key: SeriesKey, words: [u64; 4], buckets: usize) -> usize {
        let at = self.heads.len();
        // More series than a u32 counts would be far past any cardinality limit.
        self.index
            .insert(words, u32::try_from(at).unwrap_or(u32::MAX));
        self.heads.push((key, SeriesAgg::new(0)));
        self.cells.extend(std::iter::repeat_n(
            Cell {
                count: 0,
                exemplar: NO_EXEMPLAR,
            },
            buckets,
        ));
        at
    }

    /// An open interval again from the partial [`OpenInterval::into_partial`] made of
    /// it (restoring a snapshot).
    fn from_partial(p: Partial, buckets: usize) -> Self {
        let mut open = OpenInterval::new(p.start_ns, p.series.len(), buckets);
        for (key, agg) in p.series {
            let at = open.add_series(key, key.words(), buckets);
            let base = at * buckets;
            for (b, count) in agg.counts.iter().enumerate().take(buckets) {
                if let Some(c) = open.cells.get_mut(base + b) {
                    c.count = *count;
                    if let Some(Some(e)) = agg.exemplars.get(b) {
                        c.exemplar = *e;
                    }
                }
            }
            if let Some((_, head)) = open.heads.get_mut(at) {
                *head = SeriesAgg {
                    counts: Vec::new(),
                    exemplars: Vec::new(),
                    ..agg
                };
            }
        }
        open
    }

    /// The series as the merger takes them.
    fn into_partial(self, buckets: usize) -> Partial {
        let series = self
            .heads
            .into_iter()
            .zip(self.cells.chunks_exact(buckets.max(1)))
            .map(|((key, mut agg), cells)| {
                agg.counts = cells.iter().map(|c| c.count).collect();
                agg.exemplars = cells
                    .iter()
                    .map(|c| (c.count > 0).then_some(c.exemplar))
                    .collect();
                (key, agg)
            })
            .collect();
        Partial {
            start_ns: self.start,
            series,
        }
    }
}

/// What [`IntervalAggregator::state`] saves: the open intervals as partials.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AggregatorState {
    /// Open intervals, ascending by start.
    pub open: Vec<Partial>,
    /// Intervals before this start were flushed.
    pub flushed_until: EventTime,
    /// Observations that arrived for an interval already flushed.
    pub late_observations: u64,
}

impl AggregatorState {
    /// One state from several instances' (rescaling a checkpoint): the open intervals
    /// of those marked to be taken merged series by series; their counters likewise.
    /// Intervals are flushed from the lowest point any instance had reached, so none
    /// that an instance still held is taken for late.
    pub fn combine(states: Vec<(AggregatorState, bool)>, buckets: usize) -> Self {
        let flushed_until = states
            .iter()
            .map(|(s, _)| s.flushed_until)
            .min()
            .unwrap_or(0);
        let states: Vec<AggregatorState> = states
            .into_iter()
            .filter_map(|(s, take)| take.then_some(s))
            .collect();
        let late_observations = states.iter().map(|s| s.late_observations).sum();
        let mut by_start: BTreeMap<EventTime, BTreeMap<SeriesKey, SeriesAgg>> = BTreeMap::new();
        for p in states.into_iter().flat_map(|s| s.open) {
            let slot = by_start.entry(p.start_ns).or_default();
            for (k, a) in p.series {
                slot.entry(k)
                    .or_insert_with(|| SeriesAgg::new(buckets))
                    .merge(&a);
            }
        }
        AggregatorState {
            open: by_start
                .into_iter()
                .map(|(start_ns, series)| Partial {
                    start_ns,
                    series: series.into_iter().collect(),
                })
                .collect(),
            flushed_until,
            late_observations,
        }
    }
}

/// Per-shard pre-aggregation into event-time tumbling intervals.
#[derive(Debug, Clone)]
pub struct IntervalAggregator {
    interval_ns: u64,
    buckets: Buckets,
    /// Open intervals, ascending by start (a few: the session window holds the
    /// watermark back only as far as its open traces reach).
    open: Vec<OpenInterval>,
    /// The interval the last observation went to (an index into `open`): consecutive
    /// spans nearly always fall into the same one.
    last: usize,
    /// Series in the last flushed interval: new intervals start with that capacity.
    last_series: usize,
    /// Intervals before this start were flushed.
    flushed_until: EventTime,
    /// Observations that arrived for an interval already flushed (never merged into
    /// closed results).
    pub late_observations: u64,
}

impl IntervalAggregator {
    /// An aggregator with the given interval and buckets.
    pub fn new(interval: HumanDuration, buckets: Buckets) -> Self {
        IntervalAggregator {
            interval_ns: interval.as_nanos().max(1),
            buckets,
            open: Vec::new(),
            last: 0,
            last_series: 0,
            flushed_until: 0,
            late_observations: 0,
        }
    }

    /// Start of the interval holding `t`.
    #[inline]
    pub fn interval_start(&self, t: EventTime) -> EventTime {
        t - t % self.interval_ns
    }

    /// The buckets.
    pub fn buckets(&self) -> &Buckets {
        &self.buckets
    }

    /// The merger that combines all shards' partials of aggregators configured like
    /// this one.
    pub fn merger(
        &self,
        shards: usize,
        max_series: usize,
        keep_sampled_only: bool,
    ) -> MetricsMerger {
        MetricsMerger::new(
            shards,
            HumanDuration(std::time::Duration::from_nanos(self.interval_ns)),
            self.buckets.len(),
            max_series,
            keep_sampled_only,
        )
    }

    /// The open interval holding `t`, opened if new; `None` when it was flushed.
    #[inline]
    fn interval_of(&mut self, t: EventTime) -> Option<&mut OpenInterval> {
        if let Some(i) = self.open.get(self.last)
            && t >= i.start
            && t - i.start < self.interval_ns
        {
            return self.open.get_mut(self.last);
        }
        let start = self.interval_start(t);
        if start < self.flushed_until {
            return None;
        }
        let at = self.open.partition_point(|i| i.start < start);
        if self.open.get(at).is_none_or(|i| i.start != start) {
            let fresh = OpenInterval::new(start, self.last_series, self.buckets.len());
            self.open.insert(at, fresh);
        }
        self.last = at;
        self.open.get_mut(at)
    }

    /// Adds one observation at event time `exemplar.timestamp_ns`.
    #[inline]
    pub fn observe(&mut self, key: SeriesKey, value_ns: u64, slow: bool, exemplar: Exemplar) {
        let bucket = self.buckets.index(value_ns);
        let n = self.buckets.len();
        let Some(interval) = self.interval_of(exemplar.timestamp_ns) else {
            self.late_observations += 1;
            return;
        };
        let words = key.words();
        let series = match interval.index.get(&words) {
            Some(&i) => i as usize,
            None => interval.add_series(key, words, n),
        };
        let Some((_, totals)) = interval.heads.get_mut(series) else {
            return;
        };
        totals.observe_totals(value_ns, slow, exemplar.error);
        if let Some(c) = interval.cells.get_mut(series * n + bucket) {
            if c.count == 0 || exemplar.beats(&c.exemplar) {
                c.exemplar = exemplar;
            }
            c.count += 1;
        }
    }

    /// The open intervals and counters, for a snapshot; flushing is unaffected.
    pub fn state(&self) -> AggregatorState {
        let n = self.buckets.len();
        AggregatorState {
            open: self
                .open
                .iter()
                .cloned()
                .map(|i| i.into_partial(n))
                .collect(),
            flushed_until: self.flushed_until,
            late_observations: self.late_observations,
        }
    }

    /// Replaces the open intervals and counters with a snapshot's.
    pub fn restore(&mut self, state: AggregatorState) {
        let n = self.buckets.len();
        self.open = state
            .open
            .into_iter()
            .map(|p| OpenInterval::from_partial(p, n))
            .collect();
        self.open.sort_by_key(|i| i.start);
        self.last = 0;
        self.flushed_until = state.flushed_until;
        self.late_observations = state.late_observations;
    }

    /// Hands over every interval that ends at or before `watermark`.
    pub fn flush(&mut self, watermark: EventTime, out: &mut Vec<Partial>) {
        // Watermark W promises no more events at or before W, so an interval whose last
        // instant (end - 1) is at or before W is complete.
        let done = self.open.partition_point(|i| {
            i.start.saturating_add(self.interval_ns) <= watermark.saturating_add(1)
        });
        if done > 0 {
            let n = self.buckets.len();
            for i in self.open.drain(..done) {
                self.last_series = i.heads.len();
                out.push(i.into_partial(n));
            }
            self.last = 0;
        }
        if watermark == WATERMARK_END {
            self.flushed_until = WATERMARK_END;
        } else {
            self.flushed_until = self
                .flushed_until
                .max(self.interval_start(watermark.saturating_add(1)));
        }
    }
}

/// A closed interval: merged over shards, cardinality-limited, sorted by key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClosedInterval {
    /// Start, unix ns.
    pub start_ns: EventTime,
    /// End (exclusive), unix ns.
    pub end_ns: EventTime,
    /// Series sorted by key.
    pub series: Vec<(SeriesKey, SeriesAgg)>,
    /// Series folded into an overflow series by the cardinality limit.
    pub folded_series: u64,
}

/// Merges the shards' partials and closes intervals when every shard's watermark has
/// passed their end. Serializable, for savepoints: a stopped run keeps its pending
/// intervals and the next run continues them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MetricsMerger {
    interval_ns: u64,
    buckets: usize,
    max_series: usize,
    keep_sampled_only: bool,
    shard_watermarks: Vec<EventTime>,
    pending: BTreeMap<EventTime, AHashMap<SeriesKey, SeriesAgg>>,
    /// Intervals before this start were emitted.
    closed_until: EventTime,
    /// Observations that arrived for an interval already emitted.
    pub late_observations: u64,
    /// Series folded by the cardinality limit, over the run.
    pub folded_series: u64,
}

impl MetricsMerger {
    /// A merger for `shards` shards. `keep_sampled_only` drops exemplars of traces the
    /// sampler did not keep, so every exemplar links to a stored trace.
    pub fn new(
        shards: usize,
        interval: HumanDuration,
        buckets: usize,
        max_series: usize,
        keep_sampled_only: bool,
    ) -> Self {
        MetricsMerger {
            interval_ns: interval.as_nanos().max(1),
            buckets,
            max_series: max_series.max(1),
            keep_sampled_only,
            shard_watermarks: vec![0; shards.max(1)],
            pending: BTreeMap::new(),
            closed_until: 0,
            late_observations: 0,
            folded_series: 0,
        }
    }

    /// Adds a shard's partial.
    pub fn add(&mut self, partial: Partial) {
        if partial.start_ns < self.closed_until {
            self.late_observations += partial.series.iter().map(|(_, a)| a.requests).sum::<u64>();
            return;
        }
        let n = self.buckets;
        let slot = self.pending.entry(partial.start_ns).or_default();
        for (k, a) in partial.series {
            slot.entry(k).or_insert_with(|| SeriesAgg::new(n)).merge(&a);
        }
    }

    /// Adds another merger's pending intervals and counters (a consumer group member
    /// restoring the state of several members' checkpoints). Intervals are emitted
    /// from the lower of both points, so none the other still held is taken for late;
    /// one it had emitted already may be emitted again with what this one holds for
    /// it, which the downstream merge of a group's outputs adds up.
    pub fn absorb(&mut self, other: MetricsMerger) {
        self.closed_until = self.closed_until.min(other.closed_until);
        self.late_observations += other.late_observations;
        self.folded_series += other.folded_series;
        let n = self.buckets;
        for (start, series) in other.pending {
            let slot = self.pending.entry(start).or_default();
            for (k, a) in series {
                slot.entry(k).or_insert_with(|| SeriesAgg::new(n)).merge(&a);
            }
        }
    }

    /// The cardinality limit: series per interval.
    pub fn max_series(&self) -> usize {
        self.max_series
    }

    /// Records a shard's watermark; returns the intervals that closed.
    pub fn on_watermark(&mut self, shard: usize, watermark: EventTime) -> Vec<ClosedInterval> {
        if let Some(w) = self.shard_watermarks.get_mut(shard) {
            *w = (*w).max(watermark);
        }
        let min = self.shard_watermarks.iter().copied().min().unwrap_or(0);
        let mut out = Vec::new();
        while let Some((&start, _)) = self.pending.first_key_value() {
            let end = start.saturating_add(self.interval_ns);
            if end > min.saturating_add(1) {
                break;
            }
            if let Some((start, series)) = self.pending.pop_first() {
                out.push(self.close(start, series));
            }
        }
        if min == WATERMARK_END {
            self.closed_until = WATERMARK_END;
        } else {
            let next = min.saturating_add(1);
            self.closed_until = self.closed_until.max(next - next % self.interval_ns);
        }
        out
    }

    fn close(
        &mut self,
        start: EventTime,
        series: AHashMap<SeriesKey, SeriesAgg>,
    ) -> ClosedInterval {
        let mut v: Vec<(SeriesKey, SeriesAgg)> = series.into_iter().collect();
        if self.keep_sampled_only {
            for (_, a) in &mut v {
                a.keep_sampled_exemplars();
            }
        }
        let mut folded = 0u64;
        if v.len() > self.max_series {
            // Keep the busiest series; ties by key, so the choice is deterministic.
            v.sort_by(|a, b| b.1.requests.cmp(&a.1.requests).then_with(|| a.0.cmp(&b.0)));
            let excess = v.split_off(self.max_series);
            folded = excess.len() as u64;
            let mut overflow: BTreeMap<Metric, SeriesAgg> = BTreeMap::new();
            for (k, a) in excess {
                overflow
                    .entry(k.metric)
                    .or_insert_with(|| SeriesAgg::new(self.buckets))
                    .merge(&a);
            }
            for (m, a) in overflow {
                let key = SeriesKey::overflow(m);
                if let Some((_, existing)) = v.iter_mut().find(|(k, _)| *k == key) {
                    existing.merge(&a);
                } else {
                    v.push((key, a));
                }
            }
        }
        v.sort_by_key(|a| a.0);
        self.folded_series += folded;
        ClosedInterval {
            start_ns: start,
            end_ns: start.saturating_add(self.interval_ns),
            series: v,
            folded_series: folded,
        }
    }
}

/// The `q`-quantile (0..=1) of a histogram, interpolating linearly inside the bucket as
/// Prometheus' `histogram_quantile` does. `bounds` are the finite upper bounds;
/// `counts` are non-cumulative with one more entry (`+Inf`). Values in the `+Inf` bucket
/// are reported as the largest finite bound.
pub fn quantile_from_buckets(bounds: &[f64], counts: &[u64], q: f64) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 || !(0.0..=1.0).contains(&q) || counts.len() != bounds.len() + 1 {
        return None;
    }
    let rank = q * total as f64;
    let mut cum = 0u64;
    for (i, c) in counts.iter().enumerate() {
        let prev = cum;
        cum += c;
        if (cum as f64) >= rank && *c > 0 {
            if i == bounds.len() {
                return bounds.last().copied();
            }
            let lower = if i == 0 { 0.0 } else { bounds[i - 1] };
            let upper = bounds[i];
            let frac = (rank - prev as f64) / *c as f64;
            return Some(lower + (upper - lower) * frac);
        }
    }
    bounds.last().copied()
}

fn escape_label(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn labels(key: &SeriesKey, out: &mut String) {
    let mut first = true;
    let mut put = |name: &str, v: &str, out: &mut String| {
        if v.is_empty() {
            return;
        }
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(name);
        out.push_str("=\"");
        escape_label(v, out);
        out.push('"');
    };
    put("service", key.service.as_str(), out);
    put("instance", key.instance.as_str(), out);
    put("operation", key.operation.as_str(), out);
    if key.call_type != CallType::Local || key.metric == Metric::ServiceCall(CallType::Local) {
        put("call_type", key.call_type.as_str(), out);
    }
    put("peer", key.peer.as_str(), out);
    if key.metric == Metric::ServiceRelation {
        put("peer_kind", key.peer_kind.as_str(), out);
    }
    put("status", key.status.as_str(), out);
    put("tenant", key.tenant.as_str(), out);
}

/// Renders a closed interval's histograms in OpenMetrics text, with exemplars
/// (`name_bucket{...,le="0.25"} 12 # {trace_id="..",span_id=".."} 0.213 1700000000.123`).
/// Metric families are prefixed with `prefix` (e.g. `spanflow_`) and suffixed with
/// `_duration_seconds`.
pub fn render_openmetrics(interval: &ClosedInterval, buckets: &Buckets, prefix: &str) -> String {
    let mut out = String::new();
    let bounds = buckets.bounds_seconds();
    let mut by_family: BTreeMap<&'static str, Vec<&(SeriesKey, SeriesAgg)>> = BTreeMap::new();
    for s in &interval.series {
        by_family.entry(s.0.metric.name()).or_default().push(s);
    }
    for (family, series) in by_family {
        let name = format!("{prefix}{family}_duration_seconds");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let _ = writeln!(out, "# UNIT {name} seconds");
        for (key, agg) in series {
            let mut l = String::new();
            labels(key, &mut l);
            let sep = if l.is_empty() { "" } else { "," };
            let mut cum = 0u64;
            for (i, c) in agg.counts.iter().enumerate() {
                cum += c;
                let le = bounds
                    .get(i)
                    .map_or_else(|| "+Inf".to_owned(), |b| format_float(*b));
                let _ = write!(out, "{name}_bucket{{{l}{sep}le=\"{le}\"}} {cum}");
                if let Some(Some(e)) = agg.exemplars.get(i) {
                    let _ = write!(
                        out,
                        " # {{trace_id=\"{}\",span_id=\"{}\"}} {} {}",
                        e.trace_id,
                        e.span_id,
                        format_float(e.value_ns as f64 / 1e9),
                        format_float(e.timestamp_ns as f64 / 1e9)
                    );
                }
                out.push('\n');
            }
            let braces = if l.is_empty() {
                String::new()
            } else {
                format!("{{{l}}}")
            };
            let _ = writeln!(out, "{name}_count{braces} {}", agg.requests);
            let _ = writeln!(
                out,
                "{name}_sum{braces} {}",
                format_float(agg.sum_ns as f64 / 1e9)
            );
        }
    }
    out.push_str("# EOF\n");
    out
}

fn format_float(v: f64) -> String {
    let s = format!("{v}");
    if s.contains('.') || s.contains('e') || s.contains("inf") || s.contains("NaN") {
        s
    } else {
        format!("{s}.0")
    }
}

#[cfg(test)]
mod tests;
