//! The gRPC services of Jaeger's remote-storage API v2 over a [`TraceStore`].

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use opentelemetry_proto::tonic::trace::v1::TracesData;
use prost::Message;
use tonic::codec::CompressionEncoding;
use tonic::{Request, Response, Status};

use super::proto::storage_v2 as pb;
use super::proto::storage_v2::capabilities_server::{Capabilities, CapabilitiesServer};
use super::proto::storage_v2::dependency_reader_server::{
    DependencyReader, DependencyReaderServer,
};
use super::proto::storage_v2::trace_reader_server::{TraceReader, TraceReaderServer};
use super::{
    AttrMatch, DEFAULT_SEARCH_DEPTH, DEPENDENCY_SOURCE, MAX_SEARCH_DEPTH, StoredTrace, TraceLookup,
    TraceQuery, TraceStore, span_kind_name,
};
use crate::runtime::io::{ConnectorError, Fault};

/// Span bytes per `TracesData` chunk: a large trace goes out in several consecutive
/// chunks, each well under gRPC clients' usual 4 MiB message limit.
const CHUNK_BYTES: usize = 1 << 20;

/// Serves the API on `listener` until `shutdown` resolves. With a `token`, every call
/// must carry `authorization: Bearer <token>` (Jaeger's gRPC client sends it as a
/// configured header); others are answered UNAUTHENTICATED.
pub async fn serve(
    store: Arc<dyn TraceStore>,
    listener: tokio::net::TcpListener,
    token: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ConnectorError> {
    let api = Api { store };
    let check = Bearer(token.map(|t| Arc::from(format!("Bearer {t}"))));
    let traces = TraceReaderServer::new(api.clone())
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Gzip);
    let deps = DependencyReaderServer::new(api.clone())
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Gzip);
    use tonic::service::interceptor::InterceptedService;
    tonic::transport::Server::builder()
        .add_service(InterceptedService::new(traces, check.clone()))
        .add_service(InterceptedService::new(deps, check.clone()))
        .add_service(CapabilitiesServer::with_interceptor(api, check))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown,
        )
        .await
        .map_err(|e| ConnectorError::external(format!("jaeger API server: {e}")))
}

/// Checks a call's bearer token, when the API has one.
#[derive(Clone)]
struct Bearer(Option<Arc<str>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, r: Request<()>) -> Result<Request<()>, Status> {
        let Some(want) = &self.0 else {
            return Ok(r);
        };
        let got = r.metadata().get("authorization").map(|v| v.as_bytes());
        // Compared in full whatever the first difference, so the time taken says
        // nothing about the token.
        let ok = got.is_some_and(|g| {
            g.len() == want.len()
                && g.iter()
                    .zip(want.as_bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        });
        if ok {
            Ok(r)
        } else {
            Err(Status::unauthenticated(
                "this Jaeger API needs `authorization: Bearer <token>`",
            ))
        }
    }
}

#[derive(Clone)]
struct Api {
    store: Arc<dyn TraceStore>,
}

type TraceStream = Pin<Box<dyn Stream<Item = Result<TracesData, Status>> + Send>>;

fn status(e: ConnectorError) -> Status {
    match e.fault {
        Fault::User => Status::failed_precondition(e.message),
        Fault::External => Status::unavailable(e.message),
        Fault::Internal => Status::internal(e.message),
    }
}

/// A time as ns since the epoch; unset, zero or before 1970 (Go's zero time arrives as
/// year 1) is no bound.
fn time_ns(t: Option<&prost_types::Timestamp>) -> Option<u64> {
    t.filter(|t| t.seconds > 0)
        .and_then(|t| ns(t.seconds, t.nanos))
}

/// A positive duration in ns; zero or negative is no bound.
fn duration_ns(d: Option<&prost_types::Duration>) -> Option<u64> {
    d.and_then(|d| ns(d.seconds, d.nanos)).filter(|n| *n > 0)
}

fn ns(seconds: i64, nanos: i32) -> Option<u64> {
    let s = u64::try_from(seconds).ok()?;
    Some(
        s.saturating_mul(1_000_000_000)
            .saturating_add(u64::try_from(nanos).unwrap_or(0)),
    )
}

fn timestamp(ns: u64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: (ns / 1_000_000_000) as i64,
        nanos: (ns % 1_000_000_000) as i32,
    }
}

fn trace_id(bytes: &[u8]) -> Result<[u8; 16], Status> {
    bytes.try_into().map_err(|_| {
        Status::invalid_argument(format!(
            "a trace id is 16 bytes, got {} ({})",
            bytes.len(),
            hex::encode(bytes)
        ))
    })
}

/// An attribute value as the tables write it.
fn value_text(v: Option<&pb::AnyValue>) -> String {
    use pb::any_value::Value;
    match v.and_then(|v| v.value.as_ref()) {
        None => String::new(),
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(_) => v
            .map(|v| v.encode_to_vec())
            .and_then(|b| spanflow_operators::model::wire::any_value_json(&b))
            .map(|j| j.to_string())
            .unwrap_or_default(),
    }
}

/// A search attribute as a condition: Jaeger's `error` and `span.kind` tags and the
/// OpenTelemetry status (`otel.status_code`) are the span's own fields here.
fn attr_match(kv: &pb::KeyValue) -> Result<AttrMatch, Status> {
    let text = value_text(kv.value.as_ref());
    Ok(match kv.key.as_str() {
        "error" => AttrMatch::Error(match text.to_ascii_lowercase().as_str() {
            "true" | "1" => true,
            "false" | "0" => false,
            _ => {
                return Err(Status::invalid_argument(format!(
                    "attribute `error` is true or false, got `{text}`"
                )));
            }
        }),
        "otel.status_code" => {
            let s = text.to_ascii_lowercase();
            AttrMatch::Status(s.strip_prefix("status_code_").unwrap_or(&s).to_owned())
        }
        "span.kind" => AttrMatch::Kind(
            span_kind_name(&text)
                .ok_or_else(|| Status::invalid_argument(format!("unknown span kind `{text}`")))?
                .to_owned(),
        ),
        _ => AttrMatch::Attribute {
            key: kv.key.clone(),
            value: text,
        },
    })
}

/// The store's query for Jaeger's parameters.
pub(super) fn query_of(p: Option<pb::TraceQueryParameters>) -> Result<TraceQuery, Status> {
    let p = p.ok_or_else(|| Status::invalid_argument("the request has no `query`"))?;
    let nonempty = |s: String| (!s.is_empty()).then_some(s);
    let limit = match p.search_depth {
        d if d < 0 => {
            return Err(Status::invalid_argument(format!(
                "search_depth is {d}; it is at least 0"
            )));
        }
        0 => DEFAULT_SEARCH_DEPTH,
        d => (d as usize).min(MAX_SEARCH_DEPTH),
    };
    let q = TraceQuery {
        service: nonempty(p.service_name),
        operation: nonempty(p.operation_name),
        attributes: p
            .attributes
            .iter()
            .map(attr_match)
            .collect::<Result<_, _>>()?,
        start_min_ns: time_ns(p.start_time_min.as_ref()),
        start_max_ns: time_ns(p.start_time_max.as_ref()),
        duration_min_ns: duration_ns(p.duration_min.as_ref()),
        duration_max_ns: duration_ns(p.duration_max.as_ref()),
        limit,
    };
    if let (Some(a), Some(b)) = (q.start_min_ns, q.start_max_ns)
        && a > b
    {
        return Err(Status::invalid_argument(
            "start_time_min is after start_time_max",
        ));
    }
    if let (Some(a), Some(b)) = (q.duration_min_ns, q.duration_max_ns)
        && a > b
    {
        return Err(Status::invalid_argument(
            "duration_min is longer than duration_max",
        ));
    }
    Ok(q)
}

/// The chunks of one trace: consecutive `TracesData` messages of at most about
/// [`CHUNK_BYTES`] of spans each.
pub(super) fn chunks(t: &StoredTrace) -> Result<Vec<TracesData>, Status> {
    let mut out = Vec::new();
    let mut from = 0;
    while from < t.spans.len() {
        let mut to = from;
        let mut bytes = 0;
        while to < t.spans.len() && (to == from || bytes < CHUNK_BYTES) {
            bytes += t.spans[to].span.len() + t.spans[to].envelope.len();
            to += 1;
        }
        let wire = crate::formats::otlp_out::request(
            t.spans[from..to]
                .iter()
                .map(|s| (s.envelope.as_slice(), s.span.as_slice())),
        );
        // `ExportTraceServiceRequest` and `TracesData` are the same message on the wire.
        out.push(TracesData::decode(wire.as_slice()).map_err(|e| {
            Status::internal(format!(
                "trace {}: a stored span is not OTLP ({e})",
                hex::encode(t.trace_id)
            ))
        })?);
        from = to;
    }
    Ok(out)
}

fn stream(traces: Vec<StoredTrace>) -> Result<Response<TraceStream>, Status> {
    let mut items = Vec::new();
    for t in &traces {
        items.extend(chunks(t)?.into_iter().map(Ok));
    }
    Ok(Response::new(Box::pin(futures::stream::iter(items))))
}

#[tonic::async_trait]
impl TraceReader for Api {
    type GetTracesStream = TraceStream;
    type FindTracesStream = TraceStream;

    async fn get_traces(
        &self,
        request: Request<pb::GetTracesRequest>,
    ) -> Result<Response<TraceStream>, Status> {
        let lookups = request
            .into_inner()
            .query
            .iter()
            .map(|q| {
                Ok(TraceLookup {
                    trace_id: trace_id(&q.trace_id)?,
                    start_ns: time_ns(q.start_time.as_ref()),
                    end_ns: time_ns(q.end_time.as_ref()),
                })
            })
            .collect::<Result<Vec<_>, Status>>()?;
        stream(self.store.traces(&lookups).await.map_err(status)?)
    }

    async fn get_services(
        &self,
        _request: Request<pb::GetServicesRequest>,
    ) -> Result<Response<pb::GetServicesResponse>, Status> {
        Ok(Response::new(pb::GetServicesResponse {
            services: self.store.services().await.map_err(status)?,
        }))
    }

    async fn get_operations(
        &self,
        request: Request<pb::GetOperationsRequest>,
    ) -> Result<Response<pb::GetOperationsResponse>, Status> {
        let r = request.into_inner();
        if r.service.is_empty() {
            return Err(Status::invalid_argument("GetOperations needs a `service`"));
        }
        let kind = match r.span_kind.as_str() {
            "" => None,
            k => Some(
                span_kind_name(k)
                    .ok_or_else(|| Status::invalid_argument(format!("unknown span kind `{k}`")))?,
            ),
        };
        let ops = self
            .store
            .operations(&r.service, kind)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::GetOperationsResponse {
            operations: ops
                .into_iter()
                .map(|(name, span_kind)| pb::Operation { name, span_kind })
                .collect(),
        }))
    }

    async fn find_traces(
        &self,
        request: Request<pb::FindTracesRequest>,
    ) -> Result<Response<TraceStream>, Status> {
        let q = query_of(request.into_inner().query)?;
        let found = self.store.find(&q).await.map_err(status)?;
        let lookups: Vec<TraceLookup> = found
            .iter()
            .map(|f| TraceLookup {
                trace_id: f.trace_id,
                start_ns: Some(f.start_ns),
                end_ns: Some(f.end_ns),
            })
            .collect();
        stream(self.store.traces(&lookups).await.map_err(status)?)
    }

    async fn find_trace_i_ds(
        &self,
        request: Request<pb::FindTraceIDsRequest>,
    ) -> Result<Response<pb::FindTraceIDsResponse>, Status> {
        let q = query_of(request.into_inner().query)?;
        let found = self.store.find(&q).await.map_err(status)?;
        Ok(Response::new(pb::FindTraceIDsResponse {
            trace_ids: found
                .into_iter()
                .map(|f| pb::FoundTraceId {
                    trace_id: f.trace_id.to_vec(),
                    start: Some(timestamp(f.start_ns)),
                    end: Some(timestamp(f.end_ns)),
                })
                .collect(),
        }))
    }
}

#[tonic::async_trait]
impl DependencyReader for Api {
    async fn get_dependencies(
        &self,
        request: Request<pb::GetDependenciesRequest>,
    ) -> Result<Response<pb::GetDependenciesResponse>, Status> {
        let r = request.into_inner();
        let deps = self
            .store
            .dependencies(time_ns(r.start_time.as_ref()), time_ns(r.end_time.as_ref()))
            .await
            .map_err(status)?;
        Ok(Response::new(pb::GetDependenciesResponse {
            dependencies: deps
                .into_iter()
                .map(|d| pb::Dependency {
                    parent: d.parent,
                    child: d.child,
                    call_count: d.calls,
                    source: DEPENDENCY_SOURCE.to_owned(),
                })
                .collect(),
        }))
    }
}

#[tonic::async_trait]
impl Capabilities for Api {
    async fn get_capabilities(
        &self,
        _request: Request<pb::GetCapabilitiesRequest>,
    ) -> Result<Response<pb::GetCapabilitiesResponse>, Status> {
        // Every condition of a search is one span row's; no condition needs a service.
        Ok(Response::new(pb::GetCapabilitiesResponse {
            search: Some(pb::SearchCapabilities {
                without_service_name: true,
                same_span_conjunction: true,
            }),
        }))
    }
}
