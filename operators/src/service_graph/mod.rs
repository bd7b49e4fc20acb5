//! `service_graph`: edges between services found inside each closed trace, with
//! request/error counts and a latency histogram per edge and interval.
//!
//! - A server (consumer) span whose parent is a client (producer) span of another
//!   service is an edge caller -> callee. Its latency is the client span's duration as
//!   the caller saw it (for queues, the consumer span's duration); it failed when the
//!   client span did (for queues, when the consumer did).
//! - A client or producer span with a call type but no such child is a call to a peer
//!   without spans of its own: a virtual node named after `peer` (database by
//!   `peer.service`/`server.address`/`db.system`, cache, external HTTP/RPC host, queue
//!   topic), flagged by its [`NodeKind`].
//! - With `semantics: tempo`, the graph follows Grafana Tempo's metrics-generator and
//!   the OpenTelemetry Collector's servicegraph connector, so Grafana's service graph
//!   reads it as it reads Tempo's: a root server or consumer span (no parent) is called
//!   by a virtual client node (`virtual_client`, `user` by default); a consumer span
//!   with a peer and no producer span is fed by that peer; a database is named by the
//!   first of `database_name_attributes` the client span has (`server.address` with
//!   `:server.port` when there is one).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::{ConfigIssue, HumanDuration};
use crate::metrics::{
    Buckets, ConnectionType, Exemplar, IntervalAggregator, Metric, MetricsMerge, MetricsMerger,
    NodeKind, Partial, SeriesKey, SlowThresholds, TracePartial, default_buckets,
    validate_metric_settings,
};
use crate::model::{AttrValue, CallType, Span, SpanId, SpanKind, Sym, TraceId};
use crate::operator::{DataKind, PortSpec, Scope, Shape, Table};
use crate::session_window::ClosedTrace;
use crate::span_index::SpanIndex;

/// Configuration of `service_graph` in a job file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceGraphConfig {
    /// Length of the event-time tumbling intervals.
    #[serde(default = "default_interval")]
    pub interval: HumanDuration,
    /// Histogram bucket upper bounds (`le`), ascending.
    #[serde(default = "default_buckets")]
    pub buckets: Vec<HumanDuration>,
    /// A call slower than its call type's threshold counts as slow.
    #[serde(default)]
    pub slow_thresholds: SlowThresholds,
    /// Add edges to virtual nodes for peers without spans (databases, caches, external
    /// hosts, queues without consumers).
    #[serde(default = "default_true")]
    pub virtual_nodes: bool,
    /// Edges per interval; beyond it the quietest fold into `__overflow__`.
    #[serde(default = "default_max_series")]
    pub max_series: usize,
    /// Whose rules find the edges: `spanflow` (only calls seen from both sides, and
    /// calls to peers without spans) or `tempo` (also the virtual client of root spans
    /// and the peer feeding a consumer, databases named as Tempo names them).
    #[serde(default)]
    pub semantics: GraphSemantics,
    /// With `semantics: tempo`: the node that calls root server and consumer spans.
    #[serde(default = "default_virtual_client")]
    pub virtual_client: String,
    /// With `semantics: tempo`: the attributes naming a database, first present wins.
    #[serde(default = "default_database_name_attributes")]
    pub database_name_attributes: Vec<String>,
}

/// Whose rules [`trace_edges`] follows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum GraphSemantics {
    /// spanflow's own rules (see the module docs).
    #[default]
    Spanflow,
    /// Grafana Tempo's metrics-generator and the Collector's servicegraph connector.
    Tempo,
}

fn default_virtual_client() -> String {
    "user".into()
}

/// Tempo's precedence: the database's own name, then how its clients address it, then
/// its kind.
fn default_database_name_attributes() -> Vec<String> {
    [
        "db.namespace",
        "db.name",
        "peer.service",
        "server.address",
        "db.system.name",
        "db.system",
    ]
    .map(String::from)
    .to_vec()
}

/// The rules of one `service_graph` operator, ready for [`trace_edges`].
#[derive(Debug, Clone)]
pub struct EdgeRules {
    /// Edges to peers without spans of their own.
    pub virtual_nodes: bool,
    /// Whose rules.
    pub semantics: GraphSemantics,
    /// The virtual caller of root spans (Tempo).
    pub virtual_client: Sym,
    /// Attributes naming a database (Tempo).
    pub database_name_attributes: Vec<String>,
}

impl EdgeRules {
    /// The rules `config` sets.
    pub fn new(config: &ServiceGraphConfig) -> Self {
        EdgeRules {
            virtual_nodes: config.virtual_nodes,
            semantics: config.semantics,
            virtual_client: Sym::new(&config.virtual_client),
            database_name_attributes: config.database_name_attributes.clone(),
        }
    }

    /// The name of the database `client` calls, by the first attribute present.
    fn database_name(&self, client: &Span) -> Option<Sym> {
        let text = |v: AttrValue<'_>| -> Option<String> {
            match v {
                AttrValue::Str(s) if !s.is_empty() => Some(s.to_owned()),
                AttrValue::Int(i) => Some(i.to_string()),
                _ => None,
            }
        };
        for key in &self.database_name_attributes {
            // Old and new spellings of the same thing.
            let found = client.attrs.get(key).and_then(text).or_else(|| {
                (key == "server.address")
                    .then(|| client.attrs.get("net.peer.name").and_then(text))
                    .flatten()
            });
            let Some(mut name) = found else {
                continue;
            };
            if key == "server.address"
                && let Some(port) = client
                    .attrs
                    .get("server.port")
                    .or_else(|| client.attrs.get("net.peer.port"))
                    .and_then(text)
            {
                name = format!("{name}:{port}");
            }
            return Some(Sym::new(&name));
        }
        None
    }
}

fn default_interval() -> HumanDuration {
    HumanDuration::secs(10)
}

fn default_true() -> bool {
    true
}

fn default_max_series() -> usize {
    10_000
}

impl Default for ServiceGraphConfig {
    fn default() -> Self {
        ServiceGraphConfig {
            interval: default_interval(),
            buckets: default_buckets(),
            slow_thresholds: SlowThresholds::default(),
            virtual_nodes: true,
            max_series: default_max_series(),
            semantics: GraphSemantics::default(),
            virtual_client: default_virtual_client(),
            database_name_attributes: default_database_name_attributes(),
        }
    }
}

impl ServiceGraphConfig {
    /// Checks the values serde cannot; returns every problem found.
    pub fn validate(&self) -> Vec<ConfigIssue> {
        let mut issues = validate_metric_settings(self.interval, &self.buckets, self.max_series);
        if self.virtual_client.is_empty() {
            issues.push(ConfigIssue::new(
                "virtual_client",
                "must name the node that calls root spans",
            ));
        }
        issues
    }
}

/// One call between two nodes inside a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edge {
    /// Calling service.
    pub source: Sym,
    /// Called service or virtual node.
    pub target: Sym,
    /// What the target is.
    pub target_kind: NodeKind,
    /// How source and target connect.
    pub connection: ConnectionType,
    /// Call type.
    pub call_type: CallType,
    /// Latency, ns.
    pub duration_ns: u64,
    /// The call failed.
    pub error: bool,
    /// Event time of the observation (end of the span measured).
    pub end_ns: u64,
    /// Trace.
    pub trace_id: TraceId,
    /// The span measured.
    pub span_id: SpanId,
}

/// How a client connects to a peer without spans: databases and caches (both named by
/// `db.system`, as Tempo tells databases apart) are `database`, the rest virtual nodes.
fn virtual_connection(kind: NodeKind) -> ConnectionType {
    match kind {
        NodeKind::Database | NodeKind::Cache => ConnectionType::Database,
        _ => ConnectionType::VirtualNode,
    }
}

fn virtual_kind(s: &Span) -> NodeKind {
    match s.call_type {
        CallType::Db => NodeKind::Database,
        CallType::Cache => NodeKind::Cache,
        CallType::Mq => NodeKind::Queue,
        _ => NodeKind::External,
    }
}

/// Appends the edges of one trace to `out`. `index` is the trace's [`SpanIndex`];
/// `linked` is scratch space (per canonical span position: a span of another service
/// answered the call).
pub fn trace_edges(
    trace: &ClosedTrace,
    index: &SpanIndex,
    rules: &EdgeRules,
    linked: &mut Vec<bool>,
    out: &mut Vec<Edge>,
) {
    linked.clear();
    linked.resize(trace.spans.len(), false);
    let tempo = rules.semantics == GraphSemantics::Tempo;
    for (i, s) in trace.spans.iter().enumerate() {
        let entry = matches!(s.kind, SpanKind::Server | SpanKind::Consumer);
        if !entry {
            continue;
        }
        // The instrumented caller: the parent, when it is a client or producer span of
        // another service.
        let caller = index
            .parent(i)
            .and_then(|pi| Some((pi, trace.spans.get(pi)?)))
            .filter(|(_, p)| {
                p.service != s.service && matches!(p.kind, SpanKind::Client | SpanKind::Producer)
            });
        let Some((pi, p)) = caller else {
            if !tempo {
                continue;
            }
            // Tempo: a consumer without a producer span was fed by the messaging
            // system it names; a root span without one, by the virtual client.
            let (source, call_type) = if s.kind == SpanKind::Consumer && !s.peer.is_empty() {
                (s.peer, CallType::Mq)
            } else if s.is_root() {
                (rules.virtual_client, s.call_type)
            } else {
                continue;
            };
            out.push(Edge {
                source,
                target: s.service,
                target_kind: NodeKind::Service,
                connection: ConnectionType::VirtualNode,
                call_type,
                duration_ns: s.duration_ns(),
                error: s.is_error(),
                end_ns: s.end_ns,
                trace_id: trace.trace_id,
                span_id: s.span_id,
            });
            continue;
        };
        if let Some(l) = linked.get_mut(pi) {
            *l = true;
        }
        let queue = p.kind == SpanKind::Producer || s.kind == SpanKind::Consumer;
        let measured = if queue { s } else { p };
        let call_type = if p.call_type != CallType::Local {
            p.call_type
        } else {
            s.call_type
        };
        out.push(Edge {
            source: p.service,
            target: s.service,
            target_kind: NodeKind::Service,
            connection: if queue {
                ConnectionType::MessagingSystem
            } else {
                ConnectionType::Direct
            },
            call_type,
            duration_ns: measured.duration_ns(),
            error: measured.is_error(),
            end_ns: measured.end_ns,
            trace_id: trace.trace_id,
            span_id: measured.span_id,
        });
    }
    if !rules.virtual_nodes {
        return;
    }
    for (i, p) in trace.spans.iter().enumerate() {
        if !matches!(p.kind, SpanKind::Client | SpanKind::Producer)
            || p.call_type == CallType::Local
            || linked.get(index.canonical(i)).copied().unwrap_or(false)
        {
            continue;
        }
        let named = match (tempo, p.call_type) {
            (true, CallType::Db) => rules.database_name(p),
            _ => None,
        };
        let target = if let Some(name) = named {
            name
        } else if !p.peer.is_empty() {
            p.peer
        } else if !p.db_system.is_empty() {
            p.db_system
        } else {
            Sym::new("unknown")
        };
        let target_kind = virtual_kind(p);
        out.push(Edge {
            source: p.service,
            target,
            target_kind,
            connection: virtual_connection(target_kind),
            call_type: p.call_type,
            duration_ns: p.duration_ns(),
            error: p.is_error(),
            end_ns: p.end_ns,
            trace_id: trace.trace_id,
            span_id: p.span_id,
        });
    }
}

/// The running `service_graph` operator of one shard.
#[derive(Debug)]
pub struct ServiceGraph {
    config: ServiceGraphConfig,
    agg: IntervalAggregator,
    slow_ns: [u64; 6],
    /// Scratch index for [`ServiceGraph::add_trace`].
    index: SpanIndex,
    linked: Vec<bool>,
    edges: Vec<Edge>,
    rules: EdgeRules,
}

impl ServiceGraph {
    /// Builds the operator.
    pub fn new(config: ServiceGraphConfig) -> Self {
        ServiceGraph {
            agg: IntervalAggregator::new(config.interval, Buckets::new(&config.buckets)),
            slow_ns: config.slow_thresholds.nanos(),
            rules: EdgeRules::new(&config),
            config,
            index: SpanIndex::default(),
            linked: Vec::new(),
            edges: Vec::new(),
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

    /// Adds the edges of a closed trace.
    pub fn add_trace(&mut self, trace: &ClosedTrace, sampled: bool) {
        let mut index = std::mem::take(&mut self.index);
        index.build(&trace.spans);
        self.add_indexed_trace(trace, &index, sampled);
        self.index = index;
    }

    /// [`ServiceGraph::add_trace`] with the trace's [`SpanIndex`] already built (shared
    /// with `red_metrics`).
    pub fn add_indexed_trace(&mut self, trace: &ClosedTrace, index: &SpanIndex, sampled: bool) {
        self.edges.clear();
        trace_edges(trace, index, &self.rules, &mut self.linked, &mut self.edges);
        let blank = SeriesKey::new(Metric::ServiceRelation);
        for e in &self.edges {
            let key = SeriesKey {
                service: e.source,
                peer: e.target,
                peer_kind: e.target_kind,
                call_type: e.call_type,
                connection: e.connection,
                ..blank
            };
            let ex = Exemplar {
                trace_id: e.trace_id,
                span_id: e.span_id,
                value_ns: e.duration_ns,
                timestamp_ns: e.end_ns,
                error: e.error,
                sampled,
            };
            self.agg.observe(
                key,
                e.duration_ns,
                e.duration_ns > self.slow_ns[e.call_type as usize],
                ex,
            );
        }
    }

    /// Hands over the intervals complete at `watermark`.
    pub fn flush(&mut self, watermark: u64, out: &mut Vec<Partial>) {
        self.agg.flush(watermark, out);
    }
}

impl ServiceGraph {
    /// Ports and tables of `service_graph` nodes.
    pub const SHAPE: Shape = Shape {
        kind: "service_graph",
        input: DataKind::Traces,
        scope: Scope::Merged,
        outputs: &[PortSpec {
            name: "service_relation",
            data: DataKind::Intervals,
            table: Some(Table::ServiceRelation),
            doc: "calls, errors and a latency histogram per edge and interval",
        }],
    };

    /// The merge stage over every shard's partials. `keep_sampled_only` (the input
    /// comes from a sampler) drops exemplars of traces it did not keep.
    pub fn merge_operator(&self, keep_sampled_only: bool) -> MetricsMerge {
        MetricsMerge::new(
            self.merger(1, keep_sampled_only),
            self.buckets().clone(),
            Self::SHAPE.outputs.len(),
            false,
        )
    }
}

/// The partial side (see [`TracePartial`]).
impl TracePartial for ServiceGraph {
    const KIND: &'static str = "service_graph";

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
