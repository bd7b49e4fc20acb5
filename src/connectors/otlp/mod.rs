//! The `otlp` source: an OTLP receiver, what SDKs and Collectors export to. OTLP/gRPC
//! (`opentelemetry.proto.collector.trace.v1.TraceService/Export`) and OTLP/HTTP
//! (`POST /v1/traces`, protobuf or JSON, optionally gzip) on the addresses configured.
//!
//! Requests wait in a bounded queue for the pipeline. When it is full the receiver
//! answers with OTLP's retryable status (gRPC `UNAVAILABLE`, HTTP 503 with
//! `Retry-After`), so the exporter retries instead of the receiver buffering without
//! bound: a span is either queued (and then processed or dead-lettered) or its exporter
//! was told to retry. A request that is not an `ExportTraceServiceRequest` is answered
//! with 400 (gRPC `INVALID_ARGUMENT`) and still handed on, so that `dead_letters`
//! records it.
//!
//! A receiver is not replayable: what it queued before a crash is gone, and a
//! checkpoint restore continues with what the exporters send next. A job that needs
//! exactly-once puts Kafka in front (exporters -> Collector -> Kafka -> spanflow).

mod grpc;
mod http;
mod tenants;

pub use grpc::RawCodec;
use tenants::{Refusal, Tenants};
pub use tenants::{Secret, TenantConfig};

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::formats::InputFormat;
use crate::runtime::io::{ConnectorError, Records, Source, SourceOutput, SourceReport};

/// Configuration of the `otlp` source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OtlpSourceConfig {
    /// OTLP/gRPC address (`127.0.0.1:4317`); no gRPC receiver without it.
    #[serde(default)]
    pub grpc: Option<SocketAddr>,
    /// OTLP/HTTP address (`127.0.0.1:4318`); no HTTP receiver without it.
    #[serde(default)]
    pub http: Option<SocketAddr>,
    /// Requests received and not yet taken by the pipeline; beyond it, exporters are
    /// told to retry.
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// Largest request accepted, in bytes once decompressed (413 / `RESOURCE_EXHAUSTED`
    /// beyond it).
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: usize,
    /// Tenants and their API keys; with any, a request without a known key is 401
    /// (`UNAUTHENTICATED`).
    #[serde(default)]
    pub tenants: Vec<TenantConfig>,
}

fn default_queue() -> usize {
    64
}

fn default_max_request_bytes() -> usize {
    16 << 20
}

impl OtlpSourceConfig {
    /// Checks the values serde cannot; returns every problem found.
    pub fn validate(&self) -> Vec<spanflow_operators::ConfigIssue> {
        let mut issues = Vec::new();
        if self.grpc.is_none() && self.http.is_none() {
            issues.push(spanflow_operators::ConfigIssue::new(
                "grpc",
                "set `grpc`, `http` or both (e.g. grpc: 127.0.0.1:4317)",
            ));
        }
        if self.queue == 0 {
            issues.push(spanflow_operators::ConfigIssue::new(
                "queue",
                "must be at least 1",
            ));
        }
        for (i, t) in self.tenants.iter().enumerate() {
            issues.extend(t.validate(i));
            if self.tenants[..i].iter().any(|o| o.name == t.name) {
                issues.push(spanflow_operators::ConfigIssue::new(
                    &format!("tenants.{i}.name"),
                    format!("tenant `{}` is listed twice", t.name),
                ));
            }
        }
        if self.max_request_bytes == 0 {
            issues.push(spanflow_operators::ConfigIssue::new(
                "max_request_bytes",
                "must be at least 1",
            ));
        }
        issues
    }
}

/// What the receiver counted, for the run's summary.
#[derive(Debug, Default)]
pub struct ReceiverStats {
    /// Requests queued for the pipeline.
    pub accepted: AtomicU64,
    /// Spans in them.
    pub accepted_spans: AtomicU64,
    /// Of those, spans answered as rejected (OTLP partial success): their ids or times
    /// are unusable, and they land in `dead_letters`.
    pub rejected_spans: AtomicU64,
    /// Requests answered with a retryable error because the queue was full.
    pub retried: AtomicU64,
    /// Spans in them.
    pub retried_spans: AtomicU64,
    /// Requests answered 400 / `INVALID_ARGUMENT`.
    pub invalid: AtomicU64,
    /// Requests answered 413 / `RESOURCE_EXHAUSTED` for their size.
    pub too_large: AtomicU64,
    /// Requests answered 401 / `UNAUTHENTICATED`.
    pub unauthorized: AtomicU64,
}

/// The run's report: the counts of [`ReceiverStats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReceiverReport {
    /// Requests queued for the pipeline.
    pub accepted: u64,
    /// Spans in them.
    pub accepted_spans: u64,
    /// Of those, spans answered as rejected (partial success; in `dead_letters`).
    pub rejected_spans: u64,
    /// Requests told to retry (queue full).
    pub retried: u64,
    /// Spans in them.
    pub retried_spans: u64,
    /// Requests rejected as malformed.
    pub invalid: u64,
    /// Requests rejected for their size.
    pub too_large: u64,
    /// Requests without a known key.
    pub unauthorized: u64,
    /// Per tenant: its name, spans accepted, requests and spans throttled.
    pub tenants: Vec<TenantReport>,
}

/// One tenant's counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantReport {
    /// Its name.
    pub name: String,
    /// Spans accepted from it.
    pub accepted_spans: u64,
    /// Its requests answered 429 / `RESOURCE_EXHAUSTED` (over its rate limit).
    pub throttled: u64,
    /// Spans in them.
    pub throttled_spans: u64,
}

impl std::fmt::Display for ReceiverReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} requests ({} spans) received, {} spans rejected, {} ({} spans) told to retry, \
             {} malformed, {} too large",
            self.accepted,
            self.accepted_spans,
            self.rejected_spans,
            self.retried,
            self.retried_spans,
            self.invalid,
            self.too_large
        )?;
        if self.unauthorized > 0 {
            write!(f, ", {} without a known key", self.unauthorized)?;
        }
        for t in &self.tenants {
            write!(
                f,
                "; tenant {}: {} spans, {} requests ({} spans) over its limit",
                t.name, t.accepted_spans, t.throttled, t.throttled_spans
            )?;
        }
        Ok(())
    }
}

impl SourceReport for ReceiverReport {
    fn label(&self) -> &'static str {
        "otlp receiver"
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// Where the handlers put what they accepted.
#[derive(Clone)]
pub(crate) struct Intake {
    tx: std::sync::mpsc::SyncSender<Bytes>,
    stats: Arc<ReceiverStats>,
    tenants: Arc<Tenants>,
    max_request_bytes: usize,
}

/// What became of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Queued; `rejected` of its spans are unusable (OTLP partial success), the first
    /// of them for `reason`.
    Accepted {
        /// Spans the decoder will send to `dead_letters`.
        rejected: u64,
        /// Why the first of them is unusable.
        reason: Option<String>,
    },
    /// The queue is full (or the run is ending): the exporter should retry.
    Retry,
    /// Not an `ExportTraceServiceRequest` (queued anyway for `dead_letters`).
    Invalid,
    /// Tenants are configured and the request has no known key.
    Unauthorized,
    /// Its tenant is over its rate limit: the exporter should retry later.
    Throttled,
}

impl Intake {
    /// Queues one request's protobuf bytes, sent with API key `key`: checks the key
    /// (with tenants), the structure and the tenant's rate, and adds the tenant to the
    /// spans' resources.
    pub(crate) fn offer(&self, body: Bytes, key: Option<&str>) -> Verdict {
        let tenant = match self.tenants.of(key) {
            Ok(t) => t,
            Err(_) => {
                self.stats.unauthorized.fetch_add(1, Ordering::Relaxed);
                return Verdict::Unauthorized;
            }
        };
        let Some(survey) = survey(&body) else {
            self.offer_invalid(body);
            return Verdict::Invalid;
        };
        let spans = survey.spans;
        let body = match tenant {
            None => body,
            Some(t) => {
                if let Err(Refusal::Throttled | Refusal::Unauthorized) = t.take(spans) {
                    return Verdict::Throttled;
                }
                match tenants::with_tenant(&body, &t.name) {
                    Some(b) => Bytes::from(b),
                    None => {
                        t.give_back(spans);
                        self.offer_invalid(body);
                        return Verdict::Invalid;
                    }
                }
            }
        };
        match self.tx.try_send(body) {
            Ok(()) => {
                self.stats.accepted.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .accepted_spans
                    .fetch_add(spans, Ordering::Relaxed);
                self.stats
                    .rejected_spans
                    .fetch_add(survey.rejected, Ordering::Relaxed);
                Verdict::Accepted {
                    rejected: survey.rejected,
                    reason: survey.first_reason,
                }
            }
            Err(_) => {
                if let Some(t) = tenant {
                    t.give_back(spans);
                }
                self.stats.retried.fetch_add(1, Ordering::Relaxed);
                self.stats.retried_spans.fetch_add(spans, Ordering::Relaxed);
                Verdict::Retry
            }
        }
    }

    /// Whether `key` may send (any key when there are no tenants).
    pub(crate) fn authorized(&self, key: Option<&str>) -> bool {
        let ok = self.tenants.of(key).is_ok();
        if !ok {
            self.stats.unauthorized.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    /// Queues a request known not to be one (JSON that does not parse), for
    /// `dead_letters`; false when the queue had no room.
    pub(crate) fn offer_invalid(&self, body: Bytes) -> bool {
        self.stats.invalid.fetch_add(1, Ordering::Relaxed);
        self.tx.try_send(body).is_ok()
    }

    pub(crate) fn too_large(&self) {
        self.stats.too_large.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn max_request_bytes(&self) -> usize {
        self.max_request_bytes
    }
}

/// What a walk of a request's structure found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Survey {
    /// Spans in the request.
    pub spans: u64,
    /// Spans the decoder will reject (to `dead_letters`): ids or times unusable.
    pub rejected: u64,
    /// Why the first rejected span is.
    pub first_reason: Option<String>,
}

/// The spans of an `ExportTraceServiceRequest`, from a walk of its structure (resource
/// spans, scope spans, spans: tags and lengths) and of each span's ids and times, which
/// are checked as the decoder checks them; `None` when the bytes are not a request.
pub(crate) fn survey(body: &[u8]) -> Option<Survey> {
    use spanflow_operators::model::wire::{WireField, WireFields};
    fn nested<'a>(
        body: &'a [u8],
        field: u32,
        mut each: impl FnMut(&'a [u8]) -> Option<()>,
    ) -> Option<()> {
        let mut fields = WireFields::new(body);
        for (f, v) in fields.by_ref() {
            match (f, v) {
                (f2, WireField::Len(b)) if f2 == field => each(b)?,
                (f2, _) if f2 == field => return None,
                _ => {}
            }
        }
        (!fields.failed).then_some(())
    }
    let mut out = Survey::default();
    nested(body, 1, |rs| {
        nested(rs, 2, |ss| {
            nested(ss, 2, |span| {
                out.spans += 1;
                if let Err(e) = check_span(span) {
                    out.rejected += 1;
                    out.first_reason.get_or_insert_with(|| e.to_string());
                }
                Some(())
            })
        })
    })?;
    Some(out)
}

/// The decoder's checks of one `Span` message's ids and times. A span whose fields do
/// not parse is the decoder's to report (the whole request goes to `dead_letters`).
fn check_span(span: &[u8]) -> Result<(), crate::formats::DecodeError> {
    use spanflow_operators::model::wire::{WireField, WireFields};
    let mut raw = crate::formats::convert::RawSpan {
        trace_id: &[],
        span_id: &[],
        parent_span_id: &[],
        name: "",
        kind: 0,
        start: 0,
        end: 0,
        status_code: 0,
    };
    // Encoders write fields in number order: once the ids and times are read, the
    // attributes, events and links after them need no walk.
    let mut seen = 0u8;
    for (f, v) in WireFields::new(span) {
        match (f, v) {
            (1, WireField::Len(b)) => raw.trace_id = b,
            (2, WireField::Len(b)) => raw.span_id = b,
            (4, WireField::Len(b)) => raw.parent_span_id = b,
            (7, WireField::Fixed64(t)) => raw.start = t,
            (8, WireField::Fixed64(t)) => raw.end = t,
            _ if f > 8 && seen == 0b1111 => break,
            _ => continue,
        }
        seen |= match f {
            1 => 1,
            2 => 2,
            7 => 4,
            8 => 8,
            _ => 0,
        };
    }
    crate::formats::convert::check(&raw).map(|_| ())
}

/// The `otlp` source.
#[derive(Debug)]
pub struct OtlpSource {
    config: OtlpSourceConfig,
    stats: Arc<ReceiverStats>,
    tenants: Arc<Tenants>,
}

impl OtlpSource {
    /// A receiver listening where `config` says once it runs.
    pub fn new(config: OtlpSourceConfig) -> Self {
        OtlpSource {
            config,
            stats: Arc::default(),
            tenants: Arc::default(),
        }
    }
}

impl Source for OtlpSource {
    fn format(&self) -> InputFormat {
        InputFormat::OtlpProto
    }

    fn run(&mut self, out: &mut SourceOutput) -> Result<(), ConnectorError> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Bytes>(self.config.queue);
        let tenants = Arc::new(Tenants::load(&self.config.tenants)?);
        self.tenants = tenants.clone();
        let intake = Intake {
            tx,
            stats: self.stats.clone(),
            tenants,
            max_request_bytes: self.config.max_request_bytes,
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("otlp-receiver")
            .enable_all()
            .build()
            .map_err(|e| ConnectorError::internal(format!("cannot start the receiver: {e}")))?;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let servers = rt.block_on(http::serve(&self.config, intake, stop_rx))?;
        let mut offset = 0u64;
        let mut sent = true;
        while sent && !out.stopped() {
            match rx.recv_timeout(Duration::from_millis(20)) {
                Ok(body) => sent = send(out, &mut offset, body),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            }
            if sent && let Some(id) = out.barrier_due() {
                sent = out.barrier(id, None);
            }
        }
        // Stop listening, then hand on what was queued: every request answered with
        // success reaches the pipeline.
        let _ = stop_tx.send(true);
        rt.block_on(async {
            for s in servers {
                let _ = s.await;
            }
        });
        while sent && let Ok(body) = rx.try_recv() {
            sent = send(out, &mut offset, body);
        }
        out.end(None);
        Ok(())
    }

    fn report(&self) -> Option<Arc<dyn SourceReport>> {
        let s = &self.stats;
        Some(Arc::new(ReceiverReport {
            accepted: s.accepted.load(Ordering::Relaxed),
            accepted_spans: s.accepted_spans.load(Ordering::Relaxed),
            rejected_spans: s.rejected_spans.load(Ordering::Relaxed),
            retried: s.retried.load(Ordering::Relaxed),
            retried_spans: s.retried_spans.load(Ordering::Relaxed),
            invalid: s.invalid.load(Ordering::Relaxed),
            too_large: s.too_large.load(Ordering::Relaxed),
            unauthorized: s.unauthorized.load(Ordering::Relaxed),
            tenants: self
                .tenants
                .0
                .iter()
                .map(|t| TenantReport {
                    name: t.name.clone(),
                    accepted_spans: t.accepted_spans.load(Ordering::Relaxed),
                    throttled: t.throttled.load(Ordering::Relaxed),
                    throttled_spans: t.throttled_spans.load(Ordering::Relaxed),
                })
                .collect(),
        }))
    }
}

/// Hands one request to the pipeline as a record of the source's one split (each as
/// soon as it came: a request may be all there is for a while).
fn send(out: &mut SourceOutput, offset: &mut u64, body: Bytes) -> bool {
    let first_offset = *offset;
    *offset += 1;
    out.records(Records::of_single_split(first_offset, vec![body]))
}

#[cfg(test)]
mod tests;
