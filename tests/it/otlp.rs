//! The `otlp` source: exporters sending over OTLP/HTTP (protobuf, JSON, gzip) and
//! OTLP/gRPC to a running job.

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use spanflow::connectors::otlp::ReceiverReport;
use spanflow::runtime::RunOptions;

use crate::support::{column, free_port, read_table, root};

/// Ten seconds ago, unix ns: a live receiver's watermark follows the wall clock (30 s
/// behind it by default), so spans are sent as an exporter sends them, soon after they
/// ended.
fn recently() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    u64::try_from(now.as_nanos()).unwrap() - 10_000_000_000
}

/// One trace of `n` spans (a root and its children) of service `svc-<t>`, ended
/// [`recently`]. Traces are at most 4 s apart, within the watermark's 5 s of disorder:
/// none is late, whatever order they arrive in.
fn request(t: u8, n: u8) -> ExportTraceServiceRequest {
    let at = recently() / 10_000_000_000 * 10_000_000_000 + u64::from(t % 4) * 1_000_000_000;
    let spans = (1..=n)
        .map(|i| Span {
            trace_id: vec![t; 16],
            span_id: vec![0, 0, 0, 0, 0, 0, t, i],
            parent_span_id: if i == 1 {
                Vec::new()
            } else {
                vec![0, 0, 0, 0, 0, 0, t, 1]
            },
            name: format!("op-{i}"),
            kind: 2,
            start_time_unix_nano: at + u64::from(i) * 1_000,
            end_time_unix_nano: at + 500_000,
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: Some(AnyValue {
                        value: Some(Value::StringValue(format!("svc-{t}"))),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            schema_url: String::new(),
        }],
    }
}

struct Running {
    http: String,
    grpc: String,
    stop: Arc<AtomicBool>,
    seen: Arc<AtomicU64>,
    handle:
        std::thread::JoinHandle<Result<spanflow::runtime::RunSummary, spanflow::runtime::RunError>>,
    out: tempfile::TempDir,
}

fn start(queue: usize) -> Running {
    let (http, grpc) = (free_port(), free_port());
    let text = format!(
        "sources:\n  rx:\n    type: otlp\n    http: 127.0.0.1:{http}\n    grpc: 127.0.0.1:{grpc}\n    \
         queue: {queue}\n    watermark: {{ max_out_of_order: 5s, idle_timeout: 1h }}\n\
         operators:\n  s: {{ type: session_window, from: rx, gap: 5s }}\n\
         sinks:\n  o: {{ type: parquet, from: [s, rx.dead_letters] }}\n"
    );
    launch("otlp.yaml", &text, http, grpc, Some(2))
}

/// Runs the job in `text` (named `name`) on another thread, writing to a temporary
/// directory, once its HTTP receiver on `http` answers.
fn launch(name: &str, text: &str, http: u16, grpc: u16, parallelism: Option<usize>) -> Running {
    let job = spanflow::job::load_str(&root().join(name), text).unwrap_or_else(|d| panic!("{d}"));
    let out = tempfile::tempdir().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(AtomicU64::new(0));
    let opts = RunOptions {
        output_dir: Some(out.path().to_owned()),
        parallelism,
        stop: Some(stop.clone()),
        spans_seen: Some(seen.clone()),
        ..Default::default()
    };
    let handle = std::thread::spawn(move || spanflow::job::run_job(&job, &opts));
    let http = format!("http://127.0.0.1:{http}");
    let started = Instant::now();
    while reqwest::blocking::get(format!("{http}/v1/traces")).is_err() {
        assert!(started.elapsed() < Duration::from_secs(30), "no receiver");
        std::thread::sleep(Duration::from_millis(20));
    }
    Running {
        http,
        grpc: format!("http://127.0.0.1:{grpc}"),
        stop,
        seen,
        handle,
        out,
    }
}

impl Running {
    /// Stops the job as Ctrl-C would; its summary and output directory.
    fn stop(self) -> (spanflow::runtime::RunSummary, tempfile::TempDir) {
        self.stop.store(true, Ordering::Relaxed);
        let summary = self
            .handle
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("{e}"));
        (summary, self.out)
    }

    /// Stops the job once it has decoded `spans` spans; its receiver's report.
    fn stop_after(self, spans: u64) -> (ReceiverReport, tempfile::TempDir) {
        let started = Instant::now();
        while self.seen.load(Ordering::Relaxed) < spans
            && started.elapsed() < Duration::from_secs(60)
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        let (summary, out) = self.stop();
        let report = summary
            .source_report::<ReceiverReport>()
            .expect("the receiver reports")
            .clone();
        (report, out)
    }
}

fn post(
    client: &reqwest::blocking::Client,
    url: &str,
    content_type: &str,
    gzip: bool,
    body: Vec<u8>,
) -> reqwest::blocking::Response {
    let mut req = client
        .post(format!("{url}/v1/traces"))
        .header("content-type", content_type);
    let body = if gzip {
        req = req.header("content-encoding", "gzip");
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&body).unwrap();
        e.finish().unwrap()
    } else {
        body
    };
    req.body(body).send().unwrap()
}

/// Span counts per trace in the `traces` table, by service.
fn traces(dir: &std::path::Path) -> Vec<(String, u64)> {
    let t = read_table(dir, "traces");
    let mut rows: Vec<(String, u64)> = column(&t, "root_service")
        .into_iter()
        .zip(column(&t, "span_count"))
        .map(|(s, n)| (s, n.parse().unwrap()))
        .collect();
    rows.sort();
    rows
}

#[test]
fn spans_sent_over_http_and_grpc_arrive_in_their_traces() {
    let rx = start(64);
    let client = reqwest::blocking::Client::new();
    // OTLP/HTTP: protobuf, protobuf gzipped, JSON, JSON gzipped.
    for (t, content_type, gzip) in [
        (1, "application/x-protobuf", false),
        (2, "application/x-protobuf", true),
        (3, "application/json", false),
        (4, "application/json", true),
    ] {
        let req = request(t, 3);
        let body = if content_type == "application/json" {
            serde_json::to_vec(&req).unwrap()
        } else {
            req.encode_to_vec()
        };
        let r = post(&client, &rx.http, content_type, gzip, body);
        assert_eq!(r.status(), 200, "{content_type} gzip={gzip}");
        assert_eq!(
            r.headers()["content-type"],
            content_type,
            "answered in the request's encoding"
        );
    }
    // OTLP/gRPC.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = TraceServiceClient::connect(rx.grpc.clone()).await.unwrap();
        for t in 5..=6 {
            c.export(request(t, 4)).await.unwrap();
        }
    });
    // Not a request: 400, and a dead letter.
    let r = post(
        &client,
        &rx.http,
        "application/x-protobuf",
        false,
        b"\xff\xff not protobuf".to_vec(),
    );
    assert_eq!(r.status(), 400);
    let r = post(&client, &rx.http, "text/plain", false, b"hi".to_vec());
    assert_eq!(r.status(), 415);

    let (report, out) = rx.stop_after(4 * 3 + 2 * 4);
    assert_eq!(report.accepted, 6, "{report}");
    assert_eq!(report.accepted_spans, 20, "{report}");
    assert_eq!(report.invalid, 1, "{report}");
    assert_eq!(
        traces(out.path()),
        vec![
            ("svc-1".to_owned(), 3),
            ("svc-2".to_owned(), 3),
            ("svc-3".to_owned(), 3),
            ("svc-4".to_owned(), 3),
            ("svc-5".to_owned(), 4),
            ("svc-6".to_owned(), 4),
        ]
    );
    let dead = read_table(out.path(), "dead_letters");
    assert_eq!(column(&dead, "kind"), vec!["malformed_protobuf"]);
}

/// A receiver whose queue holds one request, sent to from several threads at once:
/// every request is either answered with success, and its spans are in the output, or
/// told to retry (HTTP 503 with `Retry-After`, gRPC `UNAVAILABLE`); none is lost.
#[test]
fn a_full_queue_answers_retry_and_loses_nothing() {
    let rx = start(1);
    let (ok, retried) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    std::thread::scope(|scope| {
        for worker in 0..6u8 {
            let (ok, retried, url) = (ok.clone(), retried.clone(), rx.http.clone());
            scope.spawn(move || {
                let client = reqwest::blocking::Client::new();
                for i in 0..20u8 {
                    let body = request(worker * 20 + i + 1, 2).encode_to_vec();
                    let r = post(&client, &url, "application/x-protobuf", false, body);
                    match r.status().as_u16() {
                        200 => ok.fetch_add(1, Ordering::Relaxed),
                        503 => {
                            assert_eq!(r.headers()["retry-after"], "1");
                            retried.fetch_add(1, Ordering::Relaxed)
                        }
                        s => panic!("status {s}"),
                    };
                }
            });
        }
    });
    let (ok, retried) = (ok.load(Ordering::Relaxed), retried.load(Ordering::Relaxed));
    assert_eq!(ok + retried, 120);
    let (report, out) = rx.stop_after(2 * ok);
    assert_eq!((report.accepted, report.retried), (ok, retried), "{report}");
    eprintln!("receiver: {report}");
    let spans: u64 = traces(out.path()).iter().map(|(_, n)| n).sum();
    assert_eq!(spans, 2 * ok, "every accepted span is in the output");
}

/// Traces made by the OpenTelemetry Python SDK (1.45.2, `scripts/otel-python.sh`) and
/// sent by its OTLP/gRPC and OTLP/HTTP exporters, as an instrumented service sends
/// them: every span arrives, in its trace, with its exception event.
#[test]
fn the_python_sdk_exports_over_grpc_and_http() {
    let python = crate::support::otel_python();
    let (http, grpc) = (free_port(), free_port());
    let text = format!(
        "sources:\n  rx:\n    type: otlp\n    http: 127.0.0.1:{http}\n    grpc: 127.0.0.1:{grpc}\n    \
         watermark: {{ max_out_of_order: 5s, idle_timeout: 1h }}\n\
         operators:\n  s: {{ type: session_window, from: rx, gap: 5s }}\n  \
         t:\n    type: tail_sampling\n    from: s\n    \
         policies: [{{ name: all, type: probabilistic, percentage: 100 }}]\n\
         sinks:\n  o: {{ type: parquet, from: [t, t.spans, rx.dead_letters] }}\n"
    );
    let rx = launch("otlp_sdk.yaml", &text, http, grpc, None);
    let url = rx.http.clone();
    const TRACES: usize = 50;
    let sdk = std::process::Command::new(&python)
        .arg(root().join("tests/fixtures/otel_sdk_export.py"))
        .arg(format!("http://127.0.0.1:{grpc}"))
        .arg(&url)
        .arg(TRACES.to_string())
        .output()
        .unwrap();
    assert!(
        sdk.status.success(),
        "{}{}",
        String::from_utf8_lossy(&sdk.stdout),
        String::from_utf8_lossy(&sdk.stderr)
    );
    let (summary, out) = rx.stop();
    let report = summary.source_report::<ReceiverReport>().unwrap();
    eprintln!("receiver: {report}");
    assert_eq!(report.accepted_spans, 2 * 3 * TRACES as u64, "{report}");
    let got = traces(out.path());
    assert_eq!(got.len(), 2 * TRACES, "{got:?}");
    for service in ["py-grpc", "py-http"] {
        let mine: Vec<_> = got.iter().filter(|(s, _)| s == service).collect();
        assert_eq!(mine.len(), TRACES, "{service}");
        assert!(mine.iter().all(|(_, n)| *n == 3), "{service}: {mine:?}");
    }
    let spans = read_table(out.path(), "spans");
    let events = column(&spans, "event_names");
    assert_eq!(
        events.iter().filter(|e| e.contains("exception")).count(),
        2 * TRACES,
        "one exception event per trace"
    );
    let status = column(&spans, "status_message");
    assert_eq!(
        status.iter().filter(|m| *m == "no price").count(),
        2 * TRACES
    );
    let dead = out.path().join("dead_letters");
    assert!(
        !dead.exists() || column(&read_table(out.path(), "dead_letters"), "kind").is_empty(),
        "no dead letters"
    );
}

/// Two tenants with their own keys: each one's spans carry its name, the one over its
/// rate limit is answered 429 / `RESOURCE_EXHAUSTED` (and counted) while the other is
/// not, and a wrong or missing key is 401 / `UNAUTHENTICATED`.
#[test]
fn tenants_are_named_throttled_and_authenticated_by_key() {
    let (http, grpc) = (free_port(), free_port());
    let keys = tempfile::tempdir().unwrap();
    std::fs::write(keys.path().join("fast.key"), "fast-key\n").unwrap();
    let text = format!(
        "sources:\n  rx:\n    type: otlp\n    http: 127.0.0.1:{http}\n    grpc: 127.0.0.1:{grpc}\n    \
         tenants:\n      - {{ name: fast, key_file: {} }}\n      \
         - {{ name: slow, key: slow-key, spans_per_second: 1, burst: 3 }}\n    \
         watermark: {{ max_out_of_order: 5s, idle_timeout: 1h }}\n\
         operators:\n  s: {{ type: session_window, from: rx, gap: 5s }}\n  \
         t:\n    type: tail_sampling\n    from: s\n    \
         policies: [{{ name: all, type: probabilistic, percentage: 100 }}]\n  \
         m: {{ type: red_metrics, from: t, dimensions: [operation, tenant] }}\n\
         sinks:\n  o: {{ type: parquet, from: [t, t.spans, m] }}\n",
        keys.path().join("fast.key").display()
    );
    let rx = launch("otlp_tenants.yaml", &text, http, grpc, None);
    let url = rx.http.clone();
    let client = reqwest::blocking::Client::new();
    let send = |t: u8, auth: Option<(&str, &str)>| {
        let mut req = client
            .post(format!("{url}/v1/traces"))
            .header("content-type", "application/x-protobuf");
        if let Some((h, v)) = auth {
            req = req.header(h, v);
        }
        req.body(request(t, 3).encode_to_vec()).send().unwrap()
    };
    assert_eq!(send(1, None).status(), 401, "no key");
    assert_eq!(
        send(1, Some(("authorization", "Bearer nope"))).status(),
        401
    );
    for t in 1..=4 {
        let r = send(t, Some(("authorization", "Bearer fast-key")));
        assert_eq!(r.status(), 200, "fast has no limit");
    }
    assert_eq!(send(5, Some(("x-api-key", "slow-key"))).status(), 200);
    let r = send(6, Some(("x-api-key", "slow-key")));
    assert_eq!(r.status(), 429, "slow spent its burst of 3 spans");
    assert_eq!(r.headers()["retry-after"], "1");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = TraceServiceClient::connect(format!("http://127.0.0.1:{grpc}"))
            .await
            .unwrap();
        let with_key = |t: u8, key: &str| {
            let mut r = tonic::Request::new(request(t, 3));
            r.metadata_mut()
                .insert("authorization", format!("Bearer {key}").parse().unwrap());
            r
        };
        let e = c.export(with_key(7, "slow-key")).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        use tonic_types::StatusExt;
        assert_eq!(
            e.get_details_retry_info().and_then(|r| r.retry_delay),
            Some(Duration::from_secs(1)),
            "RetryInfo says when: OTLP clients retry only then"
        );
        let e = c.export(with_key(7, "wrong")).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        c.export(with_key(7, "fast-key")).await.unwrap();
    });
    std::thread::sleep(Duration::from_millis(300));
    let (summary, out) = rx.stop();
    let report = summary.source_report::<ReceiverReport>().unwrap();
    eprintln!("receiver: {report}");
    assert_eq!(report.unauthorized, 3, "{report}");
    let by_name = |n: &str| report.tenants.iter().find(|t| t.name == n).unwrap().clone();
    let (fast, slow) = (by_name("fast"), by_name("slow"));
    assert_eq!((fast.accepted_spans, fast.throttled), (15, 0), "{report}");
    assert_eq!(
        (slow.accepted_spans, slow.throttled, slow.throttled_spans),
        (3, 2, 6),
        "{report}"
    );
    // Every span carries its tenant: fast sent traces 1-4 and 7, slow trace 5.
    let spans = read_table(out.path(), "spans");
    let services = column(&spans, "service");
    let resources = column(&spans, "resource_attributes");
    assert_eq!(services.len(), 18);
    for (service, resource) in services.iter().zip(&resources) {
        let want = if service == "svc-5" { "slow" } else { "fast" };
        assert!(
            resource.contains(&format!("tenant: {want}")),
            "{service}: {resource}"
        );
    }
    // The tenant is a metric dimension: spans per tenant in `service_node`.
    let red = read_table(out.path(), "red_metrics");
    let (metric, tenant, requests) = (
        column(&red, "metric"),
        column(&red, "tenant"),
        column(&red, "requests"),
    );
    let mut per_tenant = std::collections::BTreeMap::<&str, u64>::new();
    for i in 0..metric.len() {
        if metric[i] == "service_node" {
            *per_tenant.entry(tenant[i].as_str()).or_default() +=
                requests[i].parse::<u64>().unwrap();
        }
    }
    assert_eq!(
        per_tenant,
        [("fast", 15), ("slow", 3)].into_iter().collect()
    );
    assert!(
        !format!("{:?}", summary).contains("slow-key"),
        "keys never show in the summary"
    );
}

/// An idle receiver's watermark follows the wall clock: a trace closes on its gap while
/// nothing else arrives, not only when the job stops.
#[test]
fn an_idle_receiver_closes_traces_by_the_wall_clock() {
    let http = free_port();
    let text = format!(
        "sources:\n  rx:\n    type: otlp\n    http: 127.0.0.1:{http}\n    \
         watermark: {{ max_out_of_order: 1s, idle_timeout: 1h, wall_clock_lag: 2s }}\n\
         operators:\n  s: {{ type: session_window, from: rx, gap: 1s }}\n\
         sinks:\n  o: {{ type: parquet, from: [s, s.late_spans] }}\n"
    );
    let rx = launch("otlp_wall.yaml", &text, http, free_port(), None);
    let url = rx.http.clone();
    // A trace that ended just now, then nothing for 5 s: the wall clock (2 s lag) and
    // the gap (1 s) close it meanwhile.
    let mut req = request(1, 3);
    let now = recently() + 10_000_000_000;
    for s in &mut req.resource_spans[0].scope_spans[0].spans {
        s.start_time_unix_nano = now - 200_000_000;
        s.end_time_unix_nano = now - 100_000_000;
    }
    let client = reqwest::blocking::Client::new();
    let r = post(
        &client,
        &url,
        "application/x-protobuf",
        false,
        req.encode_to_vec(),
    );
    assert_eq!(r.status(), 200);
    std::thread::sleep(Duration::from_secs(5));
    let (_, out) = rx.stop();
    let t = read_table(out.path(), "traces");
    assert_eq!(
        column(&t, "close_reason"),
        vec!["gap"],
        "closed before the stop"
    );
    assert_eq!(column(&t, "span_count"), vec!["3"]);
}

/// Sends `body` as the message of a `TraceService/Export` call, whatever its bytes: a
/// client that does not encode (as a broken exporter might send).
struct RawBytes;

impl tonic::codec::Encoder for RawBytes {
    type Item = bytes::Bytes;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: bytes::Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Codec for RawBytes {
    type Encode = bytes::Bytes;
    type Decode = opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
    type Encoder = RawBytes;
    type Decoder = tonic_prost::ProstDecoder<Self::Decode>;
    fn encoder(&mut self) -> RawBytes {
        RawBytes
    }
    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstCodec::<(), Self::Decode>::default().decoder()
    }
}

/// A request whose spans are partly unusable is accepted with OTLP's partial success
/// (how many were rejected and why), the rejected spans land in `dead_letters` and the
/// others in their traces; a gRPC body that is not a request is `INVALID_ARGUMENT` and
/// lands in `dead_letters` too.
#[test]
fn partly_unusable_requests_get_partial_success_and_bad_bodies_dead_letters() {
    let (http, grpc) = (free_port(), free_port());
    let text = format!(
        "sources:\n  rx:\n    type: otlp\n    http: 127.0.0.1:{http}\n    grpc: 127.0.0.1:{grpc}\n    \
         watermark: {{ max_out_of_order: 5s, idle_timeout: 1h }}\n\
         operators:\n  s: {{ type: session_window, from: rx, gap: 5s }}\n  \
         t:\n    type: tail_sampling\n    from: s\n    \
         policies: [{{ name: all, type: probabilistic, percentage: 100 }}]\n\
         sinks:\n  o: {{ type: parquet, from: [t, t.spans, rx.dead_letters] }}\n"
    );
    let rx = launch("otlp_partial.yaml", &text, http, grpc, None);
    // Trace t's three spans, the second with a 3-byte trace id.
    let partly = |t: u8| {
        let mut r = request(t, 3);
        r.resource_spans[0].scope_spans[0].spans[1].trace_id = vec![t; 3];
        r
    };
    let client = reqwest::blocking::Client::new();
    let resp = post(
        &client,
        &rx.http,
        "application/x-protobuf",
        false,
        partly(1).encode_to_vec(),
    );
    assert_eq!(resp.status(), 200);
    let answer =
        opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse::decode(
            resp.bytes().unwrap(),
        )
        .unwrap();
    let p = answer.partial_success.expect("partial success");
    assert_eq!(p.rejected_spans, 1);
    assert!(
        p.error_message.contains("3 bytes, expected 16"),
        "{}",
        p.error_message
    );
    let json = serde_json::to_vec(&partly(2)).unwrap();
    let resp = post(&client, &rx.http, "application/json", false, json);
    assert_eq!(resp.status(), 200);
    let answer: serde_json::Value = resp.json().unwrap();
    assert_eq!(answer["partialSuccess"]["rejectedSpans"], "1", "{answer}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = TraceServiceClient::connect(rx.grpc.clone()).await.unwrap();
        let answer = c.export(partly(3)).await.unwrap().into_inner();
        assert_eq!(answer.partial_success.map(|p| p.rejected_spans), Some(1));
        // A whole good request gets no partial success.
        let answer = c.export(request(4, 2)).await.unwrap().into_inner();
        assert_eq!(answer.partial_success, None);
        let channel = tonic::transport::Channel::from_shared(rx.grpc.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut raw = tonic::client::Grpc::new(channel);
        raw.ready().await.unwrap();
        let e = raw
            .unary(
                tonic::Request::new(bytes::Bytes::from_static(b"\xff\xff\xff")),
                "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
                    .parse()
                    .unwrap(),
                RawBytes,
            )
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    });
    let (report, out) = rx.stop_after(3 * 2 + 2);
    assert_eq!(
        (report.accepted_spans, report.rejected_spans, report.invalid),
        (11, 3, 1),
        "{report}"
    );
    let got = traces(out.path());
    assert_eq!(
        got,
        [
            ("svc-1".to_owned(), 2),
            ("svc-2".to_owned(), 2),
            ("svc-3".to_owned(), 2),
            ("svc-4".to_owned(), 2)
        ]
    );
    let dead = read_table(out.path(), "dead_letters");
    let reasons = column(&dead, "reason");
    assert_eq!(reasons.len(), 4, "{reasons:?}");
    assert_eq!(
        reasons
            .iter()
            .filter(|r| r.contains("3 bytes, expected 16"))
            .count(),
        3,
        "{reasons:?}"
    );
}
