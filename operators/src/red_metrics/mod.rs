//! `red_metrics`: rate, errors and duration (with histograms and exemplars) per series,
//! in event-time tumbling intervals, over closed traces.
//!
//! Series (see [`Metric`]):
//! - `service_node` (service, instance): every span;
//! - `service_server` (service, operation, call type): entry spans (server, consumer);
//! - `service_call_<type>` (service, operation, call type, peer): outgoing calls
//!   (client, producer spans); a client span wrapping another client span of the same
//!   service and call type (an HTTP client library span around its transport span) is
//!   not counted, so a call is counted once;
//! - `service_call_<type>_error`: the failed calls, with their status.
//!
//! Each observation lands in the interval of its span's event time (end), whenever its
//! trace closes: the session window holds the watermark back until then.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::{ConfigIssue, HumanDuration};
use crate::metrics::normalize::OperationNormalizer;
use crate::metrics::{
    Buckets, Exemplar, IntervalAggregator, Metric, MetricsMerge, MetricsMerger, Partial, SeriesKey,
    SlowThresholds, TracePartial, default_buckets, validate_metric_settings,
};
use crate::model::{CallType, SpanKind, Sym};
use crate::operator::{DataKind, PortSpec, Scope, Shape, Table};
use crate::session_window::ClosedTrace;
use crate::span_index::SpanIndex;

/// Optional dimensions of the series (`service` is always kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Dimension {
    /// Service instance (on `service_node`).
    Instance,
    /// Normalized operation (on `service_server` and `service_call_*`).
    Operation,
    /// The called peer (on `service_call_*`).
    Peer,
    /// The failure status (on `service_call_*_error`).
    Status,
    /// The resource attribute `tenant` (which the `otlp` source's tenants set), on
    /// every metric. Not kept unless listed.
    Tenant,
}

/// Configuration of `red_metrics` in a job file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedMetricsConfig {
    /// Length of the event-time tumbling intervals.
    #[serde(default = "default_interval")]
    pub interval: HumanDuration,
    /// Histogram bucket upper bounds (`le`), ascending; `+Inf` is implicit.
    #[serde(default = "default_buckets")]
    pub buckets: Vec<HumanDuration>,
    /// A call slower than its call type's threshold counts as slow.
    #[serde(default)]
    pub slow_thresholds: SlowThresholds,
    /// Optional dimensions to keep; drop some to cut cardinality.
    #[serde(default = "default_dimensions")]
    pub dimensions: Vec<Dimension>,
    /// Series per interval; beyond it the quietest fold into an `__overflow__` series
    /// per metric (and are counted).
    #[serde(default = "default_max_series")]
    pub max_series: usize,
    /// Replace ids in URL paths by `{id}` and SQL literals by `?` before grouping.
    #[serde(default = "default_true")]
    pub normalize_operations: bool,
}

fn default_interval() -> HumanDuration {
    HumanDuration::secs(10)
}

fn default_dimensions() -> Vec<Dimension> {
    vec![
        Dimension::Instance,
        Dimension::Operation,
        Dimension::Peer,
        Dimension::Status,
    ]
}

fn default_max_series() -> usize {
    10_000
}

fn default_true() -> bool {
    true
}

impl Default for RedMetricsConfig {
    fn default() -> Self {
        RedMetricsConfig {
            interval: default_interval(),
            buckets: default_buckets(),
            slow_thresholds: SlowThresholds::default(),
            dimensions: default_dimensions(),
            max_series: default_max_series(),
            normalize_operations: true,
        }
    }
}

impl RedMetricsConfig {
    /// Checks the values serde cannot; returns every problem found.
    pub fn validate(&self) -> Vec<ConfigIssue> {
        validate_metric_settings(self.interval, &self.buckets, self.max_series)
    }
}

/// The running `red_metrics` operator of one shard.
#[derive(Debug)]
pub struct RedMetrics {
    config: RedMetricsConfig,
    agg: IntervalAggregator,
    norm: OperationNormalizer,
    slow_ns: [u64; 6],
    keep: [bool; 5],
    /// The last resource buffer's tenant: a trace's spans share few resources.
    tenant_of: (usize, Sym),
    /// Scratch index for [`RedMetrics::add_trace`] (callers holding one use
    /// [`RedMetrics::add_indexed_trace`]).
    index: SpanIndex,
    /// Per span position (canonical, see [`SpanIndex::canonical`]): a client span
    /// wrapping another client span of the same service and call type.
    wrappers: Vec<bool>,
}

/// The HTTP status of a failed call, else `error`.
pub fn failure_status(http_status: u16) -> Sym {
    if http_status >= 400 {
        Sym::new(itoa_status(http_status))
    } else {
        Sym::new("error")
    }
}

fn itoa_status(code: u16) -> &'static str {
    // Status codes are few; intern them once as static strings.
    static CODES: std::sync::LazyLock<Vec<String>> =
        std::sync::LazyLock::new(|| (0..1000u16).map(|c| c.to_string()).collect());
    CODES.get(usize::from(code)).map_or("error", String::as_str)
}

impl RedMetrics {
    /// Builds the operator (validate the config first; invalid values are clamped).
    pub fn new(config: RedMetricsConfig) -> Self {
        let agg = IntervalAggregator::new(config.interval, Buckets::new(&config.buckets));
        let has = |d: Dimension| config.dimensions.contains(&d);
        let keep = [
            has(Dimension::Instance),
            has(Dimension::Operation),
            has(Dimension::Peer),
            has(Dimension::Status),
            has(Dimension::Tenant),
        ];
        RedMetrics {
            slow_ns: config.slow_thresholds.nanos(),
            keep,
            tenant_of: (0, Sym::empty()),
            agg,
            norm: OperationNormalizer::default(),
            config,
            index: SpanIndex::default(),
            wrappers: Vec::new(),
        }
    }

    /// The merger that combines all shards' partials of this operator.
    pub fn merger(&self, shards: usize, keep_sampled_only: bool) -> MetricsMerger {
        self.agg
            .merger(shards, self.config.max_series, keep_sampled_only)
    }

    /// Histogram buckets.
    pub fn buckets(&self) -> &Buckets {
        self.agg.buckets()
    }

    /// Adds every span of a closed trace. `sampled`: the tail sampler kept it (pass
    /// `true` when no sampler runs).
    pub fn add_trace(&mut self, trace: &ClosedTrace, sampled: bool) {
        let mut index = std::mem::take(&mut self.index);
        index.build(&trace.spans);
        self.add_indexed_trace(trace, &index, sampled);
        self.index = index;
    }

    /// [`RedMetrics::add_trace`] with the trace's [`SpanIndex`] already built (shared
    /// with `service_graph`).
    pub fn add_indexed_trace(&mut self, trace: &ClosedTrace, index: &SpanIndex, sampled: bool) {
        self.wrappers.clear();
        self.wrappers.resize(trace.spans.len(), false);
        for (i, s) in trace.spans.iter().enumerate() {
            if s.kind != SpanKind::Client {
                continue;
            }
            if let Some(pi) = index.parent(i)
                && let Some(p) = trace.spans.get(pi)
                && p.kind == SpanKind::Client
                && p.service == s.service
                && p.call_type == s.call_type
                && let Some(w) = self.wrappers.get_mut(pi)
            {
                *w = true;
            }
        }
        let [
            keep_instance,
            keep_operation,
            keep_peer,
            keep_status,
            keep_tenant,
        ] = self.keep;
        let empty = Sym::empty();
        // Built once: `SeriesKey::new` resolves the empty symbol for each dimension.
        let no_tenant = SeriesKey::new(Metric::ServiceNode);
        // Addresses are unique among the buffers of this trace only.
        self.tenant_of = (0, empty);
        for (i, s) in trace.spans.iter().enumerate() {
            let blank = if keep_tenant {
                SeriesKey {
                    tenant: self.tenant(&s.resource_attrs),
                    ..no_tenant
                }
            } else {
                no_tenant
            };
            let d = s.duration_ns();
            let error = s.is_error();
            let slow = d > self.slow_ns[s.call_type as usize];
            let ex = Exemplar {
                trace_id: trace.trace_id,
                span_id: s.span_id,
                value_ns: d,
                timestamp_ns: s.end_ns,
                error,
                sampled,
            };
            let node = SeriesKey {
                service: s.service,
                instance: if keep_instance { s.instance } else { empty },
                ..blank
            };
            self.agg.observe(node, d, slow, ex);
            let entry = matches!(s.kind, SpanKind::Server | SpanKind::Consumer);
            let call = matches!(s.kind, SpanKind::Client | SpanKind::Producer)
                && s.call_type != CallType::Local
                && !self
                    .wrappers
                    .get(index.canonical(i))
                    .copied()
                    .unwrap_or(false);
            if !entry && !call {
                continue;
            }
            let operation = if !keep_operation {
                empty
            } else if self.config.normalize_operations {
                self.norm.normalize(s.name, s.call_type)
            } else {
                s.name
            };
            if entry {
                let key = SeriesKey {
                    service: s.service,
                    operation,
                    call_type: s.call_type,
                    metric: Metric::ServiceServer,
                    ..blank
                };
                self.agg.observe(key, d, slow, ex);
            } else {
                let key = SeriesKey {
                    service: s.service,
                    operation,
                    call_type: s.call_type,
                    peer: if keep_peer { s.peer } else { empty },
                    metric: Metric::ServiceCall(s.call_type),
                    ..blank
                };
                self.agg.observe(key, d, slow, ex);
                if error {
                    let key = SeriesKey {
                        metric: Metric::ServiceCallError(s.call_type),
                        status: if keep_status {
                            failure_status(s.http_status)
                        } else {
                            empty
                        },
                        ..key
                    };
                    self.agg.observe(key, d, slow, ex);
                }
            }
        }
    }

    /// Hands over the intervals complete at `watermark` (this shard's forwarded
    /// watermark).
    pub fn flush(&mut self, watermark: u64, out: &mut Vec<Partial>) {
        self.agg.flush(watermark, out);
    }

    /// The `tenant` resource attribute (a string), or empty.
    fn tenant(&mut self, resource: &crate::Attrs) -> Sym {
        let at = resource.buffer_address();
        if at != 0 && self.tenant_of.0 == at {
            return self.tenant_of.1;
        }
        let t = match resource.get("tenant") {
            Some(crate::AttrValue::Str(t)) => Sym::new(t),
            _ => Sym::empty(),
        };
        self.tenant_of = (at, t);
        t
    }
}

impl RedMetrics {
    /// Ports and tables of `red_metrics` nodes.
    pub const SHAPE: Shape = Shape {
        kind: "red_metrics",
        input: DataKind::Traces,
        scope: Scope::Merged,
        outputs: &[
            PortSpec {
                name: "red_metrics",
                data: DataKind::Intervals,
                table: Some(Table::RedMetrics),
                doc: "requests, errors, slow calls and a histogram per series and interval",
            },
            PortSpec {
                name: "exemplars",
                data: DataKind::Intervals,
                table: Some(Table::Exemplars),
                doc: "one span per series, interval and histogram bucket",
            },
        ],
    };

    /// The merge stage over every shard's partials. `keep_sampled_only` (the input
    /// comes from a sampler) drops exemplars of traces it did not keep.
    pub fn merge_operator(&self, keep_sampled_only: bool) -> MetricsMerge {
        MetricsMerge::new(
            self.merger(1, keep_sampled_only),
            self.buckets().clone(),
            Self::SHAPE.outputs.len(),
            true,
        )
    }
}

/// The partial side (see [`TracePartial`]).
impl TracePartial for RedMetrics {
    const KIND: &'static str = "red_metrics";

    fn add(&mut self, trace: &ClosedTrace, index: &SpanIndex, kept: bool) {
        self.add_indexed_trace(trace, index, kept);
    }

    fn aggregator(&self) -> &IntervalAggregator {
        &self.agg
    }

    fn aggregator_mut(&mut self) -> &mut IntervalAggregator {
        &mut self.agg
    }
}

#[cfg(test)]
mod tests;
