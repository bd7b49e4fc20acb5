//! Jaeger's remote-storage API v2 over a job's kept traces: `spanflow jaeger JOB` serves
//! `jaeger.storage.v2.TraceReader`, `DependencyReader` and `Capabilities` (gRPC) from the
//! tables a job's sink wrote, so Jaeger (its `grpc` storage backend) and the Jaeger UI
//! browse the traces the sampler kept, and an exemplar's trace id opens there.
//!
//! A [`TraceStore`] answers the queries: [`ParquetStore`] over a Parquet sink's
//! directory (DataFusion), [`ClickHouseStore`] over a ClickHouse sink's tables, whose
//! trace lookups go through the `spans` sort key (`trace_id`). Spans go out as they came
//! in: each row's `otlp` and `otlp_resource` columns are the span's OTLP message and its
//! envelope (see [`crate::tables`]).

mod clickhouse;
mod grpc;
mod parquet;
pub mod proto;
mod sql;
#[cfg(test)]
mod tests;
mod union;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;

pub use self::clickhouse::ClickHouseStore;
pub use self::grpc::serve;
pub use self::parquet::ParquetStore;
pub use self::union::{StoreSet, Union};
use crate::job::{Job, OperatorKind, SinkKind, table_names};
use crate::runtime::io::ConnectorError;

/// Traces a search returns when the query does not say (`search_depth` 0), as Jaeger's
/// UI asks by default.
pub const DEFAULT_SEARCH_DEPTH: usize = 20;
/// The most traces one search returns.
pub const MAX_SEARCH_DEPTH: usize = 10_000;
/// How far outside a lookup's time hint a trace's spans are still read: the hint comes
/// from a search or a user and may not cover every span of the trace.
pub const LOOKUP_SLACK_NS: u64 = 3_600 * 1_000_000_000;
/// Where the dependencies `GetDependencies` returns come from (its `source` field).
pub const DEPENDENCY_SOURCE: &str = "spanflow service_graph";

/// A trace search (Jaeger's `TraceQueryParameters`): a trace matches when one of its
/// spans satisfies every condition given.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TraceQuery {
    /// The span's service (`service.name`).
    pub service: Option<String>,
    /// The span's name.
    pub operation: Option<String>,
    /// Conditions on the span's attributes, resource attributes or status.
    pub attributes: Vec<AttrMatch>,
    /// Earliest span start, ns since the epoch.
    pub start_min_ns: Option<u64>,
    /// Latest span start, ns since the epoch.
    pub start_max_ns: Option<u64>,
    /// Shortest span duration, ns.
    pub duration_min_ns: Option<u64>,
    /// Longest span duration, ns.
    pub duration_max_ns: Option<u64>,
    /// At most this many traces, the most recent first.
    pub limit: usize,
}

/// One attribute condition of a search, with the value as the tables write it (`42`,
/// `true`, `0.5`, JSON for lists and maps).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttrMatch {
    /// A span or resource attribute equal to the value.
    Attribute {
        /// Attribute key.
        key: String,
        /// Value as text.
        value: String,
    },
    /// Jaeger's `error` tag: whether the span failed.
    Error(bool),
    /// The span's status (`ok`, `error`, `unset`; OTLP's `STATUS_CODE_` names too).
    Status(String),
    /// The span's kind (`server`, `client`, ...).
    Kind(String),
}

/// A trace a search found, with the time its spans cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FoundTrace {
    /// Trace id.
    pub trace_id: [u8; 16],
    /// Earliest span start, ns.
    pub start_ns: u64,
    /// Latest span end, ns.
    pub end_ns: u64,
}

/// A trace to read, optionally with when it happened (narrows the lookup; spans up to
/// [`LOOKUP_SLACK_NS`] outside it are still read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceLookup {
    /// Trace id.
    pub trace_id: [u8; 16],
    /// Start of the time hint, ns.
    pub start_ns: Option<u64>,
    /// End of the time hint, ns.
    pub end_ns: Option<u64>,
}

impl TraceLookup {
    /// The range of span start times read for a set of lookups: the union of their
    /// hints widened by [`LOOKUP_SLACK_NS`], or unbounded when any lookup has no hint.
    pub fn start_range(lookups: &[TraceLookup]) -> (Option<u64>, Option<u64>) {
        let lo = lookups
            .iter()
            .map(|l| l.start_ns)
            .try_fold(u64::MAX, |m, s| s.map(|s| m.min(s)));
        let hi = lookups
            .iter()
            .map(|l| l.end_ns)
            .try_fold(0u64, |m, e| e.map(|e| m.max(e)));
        (
            lo.map(|s| s.saturating_sub(LOOKUP_SLACK_NS)),
            hi.map(|e| e.saturating_add(LOOKUP_SLACK_NS)),
        )
    }
}

/// One span as stored: its OTLP `Span` message and its envelope (`ResourceSpans` with
/// the resource and scope, without spans).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSpan {
    /// Span start, ns (the order spans go out in).
    pub start_ns: u64,
    /// `otlp_resource`.
    pub envelope: Vec<u8>,
    /// `otlp`.
    pub span: Vec<u8>,
}

/// The stored spans of one trace, in start order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredTrace {
    /// Trace id.
    pub trace_id: [u8; 16],
    /// Its spans.
    pub spans: Vec<StoredSpan>,
}

/// Calls from one service to another.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dependency {
    /// Calling service (or virtual node).
    pub parent: String,
    /// Called service (or virtual node, database, queue).
    pub child: String,
    /// Requests in the time range.
    pub calls: u64,
}

/// What the Jaeger API reads: a job's kept traces and service graph, wherever a sink
/// wrote them.
#[async_trait]
pub trait TraceStore: Send + Sync + 'static {
    /// Where the store reads from, for people.
    fn describe(&self) -> String;
    /// Services of the kept spans, sorted.
    async fn services(&self) -> Result<Vec<String>, ConnectorError>;
    /// (operation, span kind) of a service's kept spans, sorted; only spans of `kind`
    /// when given.
    async fn operations(
        &self,
        service: &str,
        kind: Option<&str>,
    ) -> Result<Vec<(String, String)>, ConnectorError>;
    /// Traces matching `q`, the most recent first.
    async fn find(&self, q: &TraceQuery) -> Result<Vec<FoundTrace>, ConnectorError>;
    /// Every stored span of the traces asked for (traces without spans are left out),
    /// each trace once, in the order asked.
    async fn traces(&self, lookups: &[TraceLookup]) -> Result<Vec<StoredTrace>, ConnectorError>;
    /// Service graph edges over the intervals that overlap `[from, to)`, ns.
    async fn dependencies(
        &self,
        from_ns: Option<u64>,
        to_ns: Option<u64>,
    ) -> Result<Vec<Dependency>, ConnectorError>;
}

/// The tables one sink wrote that the Jaeger API reads.
#[derive(Debug, Clone, PartialEq)]
pub struct KeptTables {
    /// The sink's name.
    pub sink: String,
    /// Table of a `tail_sampling` node's `spans`.
    pub spans: String,
    /// Table of a `service_graph` node's `service_relation`, when the same sink writes
    /// one.
    pub service_relation: Option<String>,
}

/// The sinks of `job` that write kept spans, with their table names.
pub fn kept_tables(job: &Job) -> Vec<(KeptTables, &SinkKind)> {
    let names = table_names(job.sinks.iter().flat_map(|s| &s.from));
    let kind_of = |node: &str| {
        job.operators
            .iter()
            .find(|o| o.name == node)
            .map(|o| &o.kind)
    };
    let mut out = Vec::new();
    for sink in &job.sinks {
        let table = |want: fn(&OperatorKind) -> bool, port: &str| {
            sink.from.iter().find_map(|s| {
                (s.port == port && kind_of(&s.node).is_some_and(want))
                    .then(|| names.get(s).cloned().unwrap_or_else(|| s.port.clone()))
            })
        };
        let Some(spans) = table(|k| matches!(k, OperatorKind::TailSampling(_)), "spans") else {
            continue;
        };
        let service_relation = table(
            |k| matches!(k, OperatorKind::ServiceGraph(_)),
            "service_relation",
        );
        out.push((
            KeptTables {
                sink: sink.name.clone(),
                spans,
                service_relation,
            },
            &sink.kind,
        ));
    }
    out
}

/// The sinks of `job` the Jaeger API can read (Parquet and ClickHouse sinks writing a
/// sampler's `spans`), in file order.
fn readable(job: &Job) -> Vec<(KeptTables, &SinkKind)> {
    kept_tables(job)
        .into_iter()
        .filter(|(_, k)| matches!(k, SinkKind::Parquet(_) | SinkKind::ClickHouse(_)))
        .collect()
}

async fn open(
    tables: &KeptTables,
    kind: &SinkKind,
    output_dir: Option<&Path>,
) -> Result<Arc<dyn TraceStore>, ConnectorError> {
    Ok(match kind {
        SinkKind::Parquet(cfg) => Arc::new(ParquetStore::open(&cfg.dir(output_dir), tables)?),
        SinkKind::ClickHouse(cfg) => Arc::new(ClickHouseStore::open(cfg, tables).await?),
        SinkKind::Kafka(_) | SinkKind::Alertmanager(_) => {
            return Err(ConnectorError::user(format!(
                "sink `{}` is not one the Jaeger API can read (Parquet or ClickHouse)",
                tables.sink
            )));
        }
    })
}

/// Opens the store of `job`'s kept traces: the sink named `sink`, or the job's only
/// Parquet or ClickHouse sink writing a sampler's `spans`. `output_dir` replaces a
/// Parquet sink's `path`, as it does for `spanflow run`.
pub async fn open_store(
    job: &Job,
    sink: Option<&str>,
    output_dir: Option<&Path>,
) -> Result<Arc<dyn TraceStore>, ConnectorError> {
    let candidates = readable(job);
    let (tables, kind) = match sink {
        Some(name) => candidates
            .into_iter()
            .find(|(t, _)| t.sink == name)
            .ok_or_else(|| {
                ConnectorError::user(format!(
                    "job `{}` has no Parquet or ClickHouse sink `{name}` writing a \
                     tail_sampling node's `spans`",
                    job.name
                ))
            })?,
        None => {
            if candidates.len() > 1 {
                let names: Vec<_> = candidates.iter().map(|(t, _)| t.sink.as_str()).collect();
                return Err(ConnectorError::user(format!(
                    "job `{}` writes kept spans with several sinks ({}); choose one with --sink",
                    job.name,
                    names.join(", ")
                )));
            }
            candidates
                .into_iter()
                .next()
                .ok_or_else(|| no_kept_spans(job))?
        }
    };
    open(&tables, kind, output_dir).await
}

/// Opens the store of `job`'s first Parquet or ClickHouse sink writing kept spans.
pub async fn open_first_store(job: &Job) -> Result<Arc<dyn TraceStore>, ConnectorError> {
    let (tables, kind) = readable(job)
        .into_iter()
        .next()
        .ok_or_else(|| no_kept_spans(job))?;
    open(&tables, kind, None).await
}

fn no_kept_spans(job: &Job) -> ConnectorError {
    ConnectorError::user(format!(
        "job `{}` has no Parquet or ClickHouse sink writing a tail_sampling node's `spans` \
         (add `<sampler>.spans` to a sink's `from`)",
        job.name
    ))
}

/// Serves the Jaeger API for `job` on `addr` until `shutdown` resolves; with a
/// `token`, calls must carry it (see [`serve`]).
pub async fn serve_job(
    job: &Job,
    sink: Option<&str>,
    output_dir: Option<&Path>,
    addr: SocketAddr,
    token: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ConnectorError> {
    let store = open_store(job, sink, output_dir).await?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| ConnectorError::user(format!("jaeger API: cannot listen on {addr}: {e}")))?;
    let bound = listener.local_addr().unwrap_or(addr);
    eprintln!(
        "serving Jaeger's remote-storage API v2 (gRPC) on {bound} over {}",
        store.describe()
    );
    serve(store, listener, token, shutdown).await
}

/// Span kinds as Jaeger names them (`server`, ...) from any of the spellings clients
/// use (`SERVER`, `SPAN_KIND_SERVER`, `Server`); `None` for an unknown one.
pub fn span_kind_name(kind: &str) -> Option<&'static str> {
    let k = kind.trim().to_ascii_lowercase();
    let k = k.strip_prefix("span_kind_").unwrap_or(&k);
    Some(match k {
        "server" => "server",
        "client" => "client",
        "producer" => "producer",
        "consumer" => "consumer",
        "internal" => "internal",
        "unspecified" | "" => "unspecified",
        _ => return None,
    })
}

/// Groups span rows by trace, in the order `lookups` asks for the traces, each trace's
/// spans in start order; a trace asked for twice comes out once.
fn group_by_trace(lookups: &[TraceLookup], rows: Vec<([u8; 16], StoredSpan)>) -> Vec<StoredTrace> {
    let mut by_id: std::collections::HashMap<[u8; 16], Vec<StoredSpan>> =
        std::collections::HashMap::new();
    for (id, s) in rows {
        by_id.entry(id).or_default().push(s);
    }
    let mut out = Vec::with_capacity(by_id.len());
    for l in lookups {
        if let Some(mut spans) = by_id.remove(&l.trace_id) {
            spans.sort_by(|a, b| {
                a.start_ns
                    .cmp(&b.start_ns)
                    .then_with(|| a.span.cmp(&b.span))
            });
            out.push(StoredTrace {
                trace_id: l.trace_id,
                spans,
            });
        }
    }
    out
}
