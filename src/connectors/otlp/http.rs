//! The receiver's servers: OTLP/HTTP (axum) and OTLP/gRPC (tonic), both answering what
//! [`Intake::offer`] decides.

use std::io::Read as _;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::grpc::{Grpc, TraceServiceServer};
use super::{Intake, OtlpSourceConfig, Verdict};
use crate::runtime::io::ConnectorError;

/// Binds the configured addresses and serves until `stop` turns true; the handles end
/// once each server has answered the requests it was handling.
pub(super) async fn serve(
    config: &OtlpSourceConfig,
    intake: Intake,
    stop: watch::Receiver<bool>,
) -> Result<Vec<JoinHandle<()>>, ConnectorError> {
    let bind = |addr, what: &'static str| async move {
        tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            ConnectorError::user(format!(
                "otlp source: cannot listen for {what} on {addr}: {e}"
            ))
        })
    };
    let stopped = |mut stop: watch::Receiver<bool>| async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    let mut servers = Vec::new();
    if let Some(addr) = config.http {
        let listener = bind(addr, "OTLP/HTTP").await?;
        tracing::info!(address = %local(&listener), "OTLP/HTTP receiver listening");
        let app = axum::Router::new()
            .route("/v1/traces", axum::routing::post(export_http))
            // The limit applies to the body as sent; a decompressed body is checked
            // against the same limit in the handler.
            .layer(DefaultBodyLimit::max(intake.max_request_bytes()))
            .with_state(intake.clone());
        let stop = stop.clone();
        servers.push(tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(stopped(stop))
                .await
            {
                tracing::error!(error = %e, "the OTLP/HTTP receiver failed");
            }
        }));
    }
    if let Some(addr) = config.grpc {
        let listener = bind(addr, "OTLP/gRPC").await?;
        tracing::info!(address = %local(&listener), "OTLP/gRPC receiver listening");
        let service = TraceServiceServer::new(Grpc(intake.clone()))
            .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
            .max_decoding_message_size(intake.max_request_bytes());
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        servers.push(tokio::spawn(async move {
            if let Err(e) = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, stopped(stop))
                .await
            {
                tracing::error!(error = %e, "the OTLP/gRPC receiver failed");
            }
        }));
    }
    Ok(servers)
}

fn local(l: &tokio::net::TcpListener) -> String {
    l.local_addr()
        .map_or_else(|e| e.to_string(), |a| a.to_string())
}

/// `google.rpc.Status` codes OTLP/HTTP answers carry.
const INVALID_ARGUMENT: i32 = 3;
const RESOURCE_EXHAUSTED: i32 = 8;
const UNAVAILABLE: i32 = 14;
const UNAUTHENTICATED: i32 = 16;

/// An OTLP/HTTP answer: `body` is protobuf or JSON, as the request was.
fn answer(status: StatusCode, json: bool, proto: Vec<u8>, json_body: String) -> Response {
    let (content_type, body) = if json {
        ("application/json", Bytes::from(json_body))
    } else {
        ("application/x-protobuf", Bytes::from(proto))
    };
    let mut r = (status, body).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// A failed request's answer: a `google.rpc.Status` with `code` and `message`.
fn failure(status: StatusCode, json: bool, code: i32, message: &str) -> Response {
    let mut proto = Vec::new();
    prost::encoding::int32::encode(1, &code, &mut proto);
    prost::encoding::string::encode(2, &message.to_owned(), &mut proto);
    let json_body = serde_json::json!({ "code": code, "message": message }).to_string();
    answer(status, json, proto, json_body)
}

/// A retryable failure: [`failure`] with `Retry-After: 1`.
fn retry_later(status: StatusCode, json: bool, code: i32, message: &str) -> Response {
    let mut r = failure(status, json, code, message);
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

async fn export_http(State(intake): State<Intake>, headers: HeaderMap, body: Bytes) -> Response {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase()
    };
    let content_type = text(header::CONTENT_TYPE);
    let raw = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let key = super::tenants::key_of(
        raw(header::AUTHORIZATION),
        headers.get("x-api-key").and_then(|v| v.to_str().ok()),
    );
    let json = content_type.starts_with("application/json");
    if !json && !content_type.starts_with("application/x-protobuf") {
        return failure(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            false,
            INVALID_ARGUMENT,
            "Content-Type must be application/x-protobuf or application/json",
        );
    }
    let limit = intake.max_request_bytes();
    let body = match text(header::CONTENT_ENCODING).as_str() {
        "" | "identity" => body,
        "gzip" => {
            let mut out = Vec::new();
            let read = flate2::read::GzDecoder::new(&body[..])
                .take(limit as u64 + 1)
                .read_to_end(&mut out);
            match read {
                Ok(_) if out.len() > limit => {
                    intake.too_large();
                    return failure(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        json,
                        RESOURCE_EXHAUSTED,
                        &format!("the request is larger than {limit} bytes decompressed"),
                    );
                }
                Ok(_) => Bytes::from(out),
                Err(e) => {
                    return failure(
                        StatusCode::BAD_REQUEST,
                        json,
                        INVALID_ARGUMENT,
                        &format!("the gzip body cannot be read: {e}"),
                    );
                }
            }
        }
        other => {
            return failure(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                json,
                INVALID_ARGUMENT,
                &format!("Content-Encoding {other} is not supported (gzip is)"),
            );
        }
    };
    // The pipeline reads protobuf: JSON is converted here. JSON that is not a request
    // is handed on as it is, for `dead_letters`.
    let (body, json_error) = if json {
        match serde_json::from_slice::<ExportTraceServiceRequest>(&body) {
            Ok(r) => (Bytes::from(r.encode_to_vec()), None),
            Err(e) => (body, Some(e.to_string())),
        }
    } else {
        (body, None)
    };
    let verdict = match json_error {
        Some(_) if !intake.authorized(key) => Verdict::Unauthorized,
        Some(_) => {
            // Not a request, whatever its bytes look like as protobuf.
            let _ = intake.offer_invalid(body);
            Verdict::Invalid
        }
        None => intake.offer(body, key),
    };
    match verdict {
        Verdict::Accepted { rejected, reason } => {
            let ok = super::grpc::accepted(rejected, reason);
            let json_body = match &ok.partial_success {
                None => "{}".to_owned(),
                // OTLP/JSON: int64 as a string, camelCase names.
                Some(p) => serde_json::json!({ "partialSuccess": {
                    "rejectedSpans": p.rejected_spans.to_string(),
                    "errorMessage": p.error_message,
                } })
                .to_string(),
            };
            answer(StatusCode::OK, json, ok.encode_to_vec(), json_body)
        }
        Verdict::Retry => retry_later(
            StatusCode::SERVICE_UNAVAILABLE,
            json,
            UNAVAILABLE,
            "the pipeline is behind; retry later",
        ),
        Verdict::Unauthorized => failure(
            StatusCode::UNAUTHORIZED,
            json,
            UNAUTHENTICATED,
            "no known API key (Authorization: Bearer <key>, or x-api-key)",
        ),
        Verdict::Throttled => retry_later(
            StatusCode::TOO_MANY_REQUESTS,
            json,
            RESOURCE_EXHAUSTED,
            "over the tenant's rate limit; retry later",
        ),
        Verdict::Invalid => failure(
            StatusCode::BAD_REQUEST,
            json,
            INVALID_ARGUMENT,
            &json_error.unwrap_or_else(|| "not an ExportTraceServiceRequest".to_owned()),
        ),
    }
}
