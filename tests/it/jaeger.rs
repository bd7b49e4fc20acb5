//! Jaeger's remote-storage API v2 over a job's kept traces: a generated job writes its
//! kept spans, exemplars and service graph to Parquet (and ClickHouse 18.16), and the
//! API's answers, read with a gRPC client generated from proto/jaeger, must match what
//! the tables hold.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use opentelemetry_proto::tonic::trace::v1::TracesData;
use spanflow::jaeger::proto::storage_v2 as pb;
use spanflow::jaeger::proto::storage_v2::capabilities_client::CapabilitiesClient;
use spanflow::jaeger::proto::storage_v2::dependency_reader_client::DependencyReaderClient;
use spanflow::jaeger::proto::storage_v2::trace_reader_client::TraceReaderClient;
use spanflow::job::{Job, run_job};
use spanflow::runtime::RunOptions;
use tonic::transport::Channel;

use crate::clickhouse::Server;
use crate::support::{column, read_table, root};

/// A generated job whose kept spans, exemplars and service graph go to Parquet under
/// `dir`, and to ClickHouse too when `clickhouse` has the server's URL.
fn job(dir: &std::path::Path, clickhouse: Option<&str>) -> Job {
    let outputs = "[sampler, sampler.spans, metrics, metrics.exemplars, graph]";
    let warehouse = clickhouse
        .map(|url| {
            format!(
                "  warehouse:\n    type: clickhouse\n    from: {outputs}\n    url: {url}\n    \
                 database: jaeger\n    create_tables: true\n"
            )
        })
        .unwrap_or_default();
    let text = format!(
        r#"
name: jaeger_test
sources:
  in:
    type: generator
    seed: 11
    traces: 400
    traces_per_second: 50
operators:
  sessions:
    type: session_window
    from: [in]
    gap: 10s
    gap_rules:
      - when: {{ root_ended: true }}
        gap: 3s
  sampler:
    type: tail_sampling
    from: sessions
    policies:
      - {{ name: errors, type: error }}
      - {{ name: slow-db, type: slow_span, call_type: db, threshold: 200ms }}
      - {{ name: baseline, type: probabilistic, percentage: 20 }}
  metrics:
    type: red_metrics
    from: sampler
    interval: 10s
  graph:
    type: service_graph
    from: sampler
    interval: 10s
sinks:
  local:
    type: parquet
    from: {outputs}
    path: {path}
{warehouse}"#,
        path = dir.display()
    );
    let job = spanflow::job::load_str(&root().join("jobs/jaeger_test.yaml"), &text)
        .unwrap_or_else(|e| panic!("{e:?}"));
    run_job(
        &job,
        &RunOptions {
            parallelism: Some(2),
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    job
}

/// One kept span, as the Parquet `spans` table has it.
#[derive(Debug, Clone)]
struct Kept {
    trace: String,
    span: String,
    service: String,
    name: String,
    kind: String,
    duration_ns: u64,
}

/// What the tables hold, to compare the API's answers with.
struct Expected {
    spans: Vec<Kept>,
    exemplar_traces: Vec<String>,
    edges: BTreeMap<(String, String), u64>,
}

impl Expected {
    fn read(dir: &std::path::Path) -> Expected {
        let spans = read_table(dir, "spans");
        let col = |n: &str| column(&spans, n);
        let (trace, span, service, name, kind, duration) = (
            col("trace_id"),
            col("span_id"),
            col("service"),
            col("name"),
            col("kind"),
            col("duration_ns"),
        );
        let spans = (0..trace.len())
            .map(|i| Kept {
                trace: trace[i].clone(),
                span: span[i].clone(),
                service: service[i].clone(),
                name: name[i].clone(),
                kind: kind[i].clone(),
                duration_ns: duration[i].parse().unwrap(),
            })
            .collect();
        let exemplars = read_table(dir, "exemplars");
        let exemplar_traces = column(&exemplars, "trace_id");
        let graph = read_table(dir, "service_relation");
        let (s, t, r) = (
            column(&graph, "source"),
            column(&graph, "target"),
            column(&graph, "requests"),
        );
        let mut edges = BTreeMap::new();
        for i in 0..s.len() {
            *edges.entry((s[i].clone(), t[i].clone())).or_insert(0) += r[i].parse::<u64>().unwrap();
        }
        Expected {
            spans,
            exemplar_traces,
            edges,
        }
    }

    fn span_ids(&self, trace: &str) -> BTreeSet<String> {
        self.spans
            .iter()
            .filter(|s| s.trace == trace)
            .map(|s| s.span.clone())
            .collect()
    }
}

/// The API served on a port of its own until dropped.
struct Api {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Api {
    fn start(job: &Job, sink: &str) -> Api {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (job, sink) = (job.clone(), sink.to_owned());
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            runtime().block_on(async move {
                let store = spanflow::jaeger::open_store(&job, Some(&sink), None)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                ready_tx.send(()).unwrap();
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                spanflow::jaeger::serve(store, listener, None, async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
            });
        });
        ready.recv().expect("the store opens");
        Api {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// (trace id, span ids, services) of every trace in a stream of chunks, checking that a
/// chunk holds one trace and a trace's chunks are consecutive.
fn traces_of(chunks: &[TracesData]) -> Vec<(String, BTreeSet<String>, BTreeSet<String>)> {
    let mut out: Vec<(String, BTreeSet<String>, BTreeSet<String>)> = Vec::new();
    for c in chunks {
        let mut ids = BTreeSet::new();
        let mut spans = BTreeSet::new();
        let mut services = BTreeSet::new();
        for rs in &c.resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                .and_then(|a| a.value.as_ref())
                .map(|v| format!("{v:?}"))
                .unwrap_or_default();
            for ss in &rs.scope_spans {
                for s in &ss.spans {
                    ids.insert(hex::encode(&s.trace_id));
                    spans.insert(hex::encode(&s.span_id));
                    services.insert(service.clone());
                }
            }
        }
        assert_eq!(
            ids.len(),
            1,
            "a chunk holds the spans of one trace: {ids:?}"
        );
        let id = ids.into_iter().next().unwrap();
        match out.last_mut() {
            Some(last) if last.0 == id => {
                last.1.extend(spans);
                last.2.extend(services);
            }
            _ => {
                assert!(
                    out.iter().all(|t| t.0 != id),
                    "trace {id} comes in consecutive chunks"
                );
                out.push((id, spans, services));
            }
        }
    }
    out
}

/// A channel to the API at `addr`.
async fn connect(addr: &dyn std::fmt::Display) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn collect(
    mut s: tonic::codec::Streaming<TracesData>,
) -> Result<Vec<TracesData>, tonic::Status> {
    let mut out = Vec::new();
    while let Some(c) = s.message().await? {
        out.push(c);
    }
    Ok(out)
}

fn query(service: &str, min: std::time::Duration, depth: i32) -> pb::TraceQueryParameters {
    pb::TraceQueryParameters {
        service_name: service.to_owned(),
        duration_min: Some(prost_types::Duration {
            seconds: min.as_secs() as i64,
            nanos: min.subsec_nanos() as i32,
        }),
        search_depth: depth,
        ..Default::default()
    }
}

/// Everything the Done-when asks of the API, against the tables' contents.
async fn check(addr: SocketAddr, want: &Expected) {
    let channel = connect(&addr).await;
    let mut traces = TraceReaderClient::new(channel.clone());
    let mut deps = DependencyReaderClient::new(channel.clone());

    // GetServices: every service with a kept span.
    let services = traces
        .get_services(pb::GetServicesRequest {})
        .await
        .unwrap()
        .into_inner()
        .services;
    let expected: BTreeSet<String> = want.spans.iter().map(|s| s.service.clone()).collect();
    assert_eq!(services, expected.iter().cloned().collect::<Vec<_>>());

    // GetOperations: the service's (name, kind) pairs, and only server spans when asked.
    let busiest = {
        let mut n: BTreeMap<&str, usize> = BTreeMap::new();
        for s in &want.spans {
            *n.entry(&s.service).or_default() += 1;
        }
        n.into_iter().max_by_key(|(_, c)| *c).unwrap().0.to_owned()
    };
    let ops = |kind: &str| {
        want.spans
            .iter()
            .filter(|s| s.service == busiest && (kind.is_empty() || s.kind == kind))
            .map(|s| (s.name.clone(), s.kind.clone()))
            .collect::<BTreeSet<_>>()
    };
    for (asked, kind) in [("", ""), ("SPAN_KIND_SERVER", "server")] {
        let got: BTreeSet<(String, String)> = traces
            .get_operations(pb::GetOperationsRequest {
                service: busiest.clone(),
                span_kind: asked.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .operations
            .into_iter()
            .map(|o| (o.name, o.span_kind))
            .collect();
        assert_eq!(got, ops(kind), "operations of {busiest} ({asked:?})");
        assert!(!got.is_empty());
    }

    // FindTraceIDs by service and minimum duration: exactly the traces with such a span.
    let mut durations: Vec<u64> = want
        .spans
        .iter()
        .filter(|s| s.service == busiest)
        .map(|s| s.duration_ns)
        .collect();
    durations.sort_unstable();
    let min = std::time::Duration::from_nanos(durations[durations.len() / 2]);
    let matching: BTreeSet<String> = want
        .spans
        .iter()
        .filter(|s| s.service == busiest && s.duration_ns >= min.as_nanos() as u64)
        .map(|s| s.trace.clone())
        .collect();
    assert!(matching.len() > 5, "{} traces match", matching.len());
    let ids: BTreeSet<String> = traces
        .find_trace_i_ds(pb::FindTraceIDsRequest {
            query: Some(query(&busiest, min, 10_000)),
        })
        .await
        .unwrap()
        .into_inner()
        .trace_ids
        .into_iter()
        .map(|t| hex::encode(t.trace_id))
        .collect();
    assert_eq!(ids, matching, "FindTraceIDs({busiest}, >= {min:?})");

    // FindTraces: at most search_depth traces, each of them whole.
    let found = collect(
        traces
            .find_traces(pb::FindTracesRequest {
                query: Some(query(&busiest, min, 5)),
            })
            .await
            .unwrap()
            .into_inner(),
    )
    .await
    .unwrap();
    let found = traces_of(&found);
    assert_eq!(found.len(), 5);
    for (id, spans, _) in &found {
        assert!(matching.contains(id), "{id} does not match the search");
        assert_eq!(*spans, want.span_ids(id), "trace {id} is whole");
    }

    // GetTraces of an exemplar's trace id: all of its spans.
    let exemplar = want
        .exemplar_traces
        .first()
        .expect("the job wrote exemplars");
    let got = collect(
        traces
            .get_traces(pb::GetTracesRequest {
                query: vec![pb::GetTraceParams {
                    trace_id: hex::decode(exemplar).unwrap(),
                    ..Default::default()
                }],
            })
            .await
            .unwrap()
            .into_inner(),
    )
    .await
    .unwrap();
    let got = traces_of(&got);
    assert_eq!(got.len(), 1, "one trace for exemplar {exemplar}");
    assert_eq!(got[0].0, *exemplar);
    assert_eq!(got[0].1, want.span_ids(exemplar));
    assert!(!got[0].1.is_empty());
    // Every exemplar's trace was kept.
    for t in &want.exemplar_traces {
        assert!(
            !want.span_ids(t).is_empty(),
            "exemplar trace {t} is in spans"
        );
    }

    // A trace id that is not 16 bytes is the caller's mistake.
    let bad = traces
        .get_traces(pb::GetTracesRequest {
            query: vec![pb::GetTraceParams {
                trace_id: vec![1, 2, 3],
                ..Default::default()
            }],
        })
        .await
        .expect_err("a 3-byte trace id is refused");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument, "{bad:?}");

    // GetDependencies: the service graph's requests per edge.
    let got: BTreeMap<(String, String), u64> = deps
        .get_dependencies(pb::GetDependenciesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .dependencies
        .into_iter()
        .map(|d| ((d.parent, d.child), d.call_count))
        .collect();
    assert_eq!(got, want.edges);
    assert!(!got.is_empty());

    let caps = CapabilitiesClient::new(channel)
        .get_capabilities(pb::GetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(caps.search.is_some_and(|s| s.without_service_name));
}

#[test]
fn jaeger_api_serves_the_kept_traces_of_parquet_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    let job = job(tmp.path(), None);
    let want = Expected::read(tmp.path());
    let api = Api::start(&job, "local");
    runtime().block_on(check(api.addr, &want));
}

#[test]
fn jaeger_api_serves_the_kept_traces_of_clickhouse_tables() {
    let server = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let job = job(tmp.path(), Some(&server.url));
    let want = Expected::read(tmp.path());
    let api = Api::start(&job, "warehouse");
    runtime().block_on(check(api.addr, &want));
}

/// OTLP's .proto files, which Jaeger's import: the copy in the source of the
/// opentelemetry-proto version Cargo.lock pins, which the build unpacked into cargo's
/// registry (found without cargo, which would want every platform's packages offline).
fn otlp_proto_dir() -> std::path::PathBuf {
    let lock = std::fs::read_to_string(root().join("Cargo.lock")).unwrap();
    let version = lock
        .split("[[package]]")
        .find(|p| p.contains("name = \"opentelemetry-proto\"\n"))
        .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = ")))
        .map(|v| v.trim_matches('"').to_owned())
        .expect("opentelemetry-proto in Cargo.lock");
    let home = std::env::var_os("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cargo")
        });
    std::fs::read_dir(home.join("registry/src"))
        .unwrap()
        .filter_map(|d| {
            let dir = d.ok()?.path().join(format!(
                "opentelemetry-proto-{version}/src/proto/opentelemetry-proto"
            ));
            dir.join("opentelemetry/proto/trace/v1/trace.proto")
                .is_file()
                .then_some(dir)
        })
        .next()
        .expect("opentelemetry-proto's .proto files in cargo's registry")
}

/// A client that grpcio-tools generates from proto/jaeger (Python, its own gRPC and
/// protobuf stacks) reads the same answers.
#[test]
fn a_client_generated_by_grpcio_tools_reads_the_api() {
    let python = crate::support::otel_python();
    let tmp = tempfile::tempdir().unwrap();
    let job = job(tmp.path(), None);
    let want = Expected::read(tmp.path());
    let api = Api::start(&job, "local");
    let service = want.spans[0].service.clone();
    let min = 1_000_000u64;
    let exemplar = want.exemplar_traces[0].clone();
    let out = std::process::Command::new(&python)
        .arg(root().join("tests/fixtures/jaeger_client.py"))
        .arg(api.addr.to_string())
        .arg(root().join("proto"))
        .arg(otlp_proto_dir())
        .args([&service, &min.to_string(), &exemplar])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    let services: BTreeSet<&str> = want.spans.iter().map(|s| s.service.as_str()).collect();
    assert_eq!(got["services"], serde_json::json!(services));
    let ops: BTreeSet<(&str, &str)> = want
        .spans
        .iter()
        .filter(|s| s.service == service)
        .map(|s| (s.name.as_str(), s.kind.as_str()))
        .collect();
    assert_eq!(got["operations"], serde_json::json!(ops));
    let found: BTreeSet<&str> = want
        .spans
        .iter()
        .filter(|s| s.service == service && s.duration_ns >= min)
        .map(|s| s.trace.as_str())
        .collect();
    assert!(!found.is_empty());
    assert_eq!(got["found"], serde_json::json!(found));
    let three = got["find_traces"].as_object().unwrap();
    assert_eq!(three.len(), 3.min(found.len()));
    for (trace, spans) in three {
        assert!(found.contains(trace.as_str()));
        assert_eq!(*spans, serde_json::json!(want.span_ids(trace)));
    }
    assert_eq!(got["trace"], serde_json::json!(want.span_ids(&exemplar)));
    let deps: Vec<(&String, &String, &u64)> =
        want.edges.iter().map(|((p, c), n)| (p, c, n)).collect();
    assert_eq!(got["dependencies"], serde_json::json!(deps));
}

/// `spanflow server --jaeger`: the API over the kept traces of the server's jobs, behind
/// the server's token.
#[test]
fn the_servers_jaeger_api_reads_its_jobs_kept_traces() {
    use crate::server::{Server as JobServer, TOKEN, submit, write_job};
    let state = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let server = JobServer::start_with(state.path(), &["--jaeger", "127.0.0.1:0"]);
    let addr = server
        .jaeger
        .clone()
        .expect("the server announces its Jaeger API");
    let job = write_job(work.path(), 300);
    submit(&server, work.path(), &job, true);
    let spans = read_table(&work.path().join("out"), "spans");
    let (services, traces) = (column(&spans, "service"), column(&spans, "trace_id"));
    let service = services[0].clone();
    let want: BTreeSet<String> = services
        .iter()
        .zip(&traces)
        .filter(|(s, _)| **s == service)
        .map(|(_, t)| t.clone())
        .collect();
    runtime().block_on(async {
        let channel = connect(&addr).await;
        let denied = TraceReaderClient::new(channel.clone())
            .get_services(pb::GetServicesRequest {})
            .await
            .expect_err("a call without the token is refused");
        assert_eq!(denied.code(), tonic::Code::Unauthenticated);
        let bearer: tonic::metadata::MetadataValue<_> = format!("Bearer {TOKEN}").parse().unwrap();
        let mut client =
            TraceReaderClient::with_interceptor(channel, move |mut r: tonic::Request<()>| {
                r.metadata_mut().insert("authorization", bearer.clone());
                Ok(r)
            });
        let got = client
            .get_services(pb::GetServicesRequest {})
            .await
            .unwrap()
            .into_inner()
            .services;
        let all: BTreeSet<String> = services.iter().cloned().collect();
        assert_eq!(got, all.into_iter().collect::<Vec<_>>());
        let found: BTreeSet<String> = client
            .find_trace_i_ds(pb::FindTraceIDsRequest {
                query: Some(pb::TraceQueryParameters {
                    service_name: service.clone(),
                    search_depth: 10_000,
                    ..Default::default()
                }),
            })
            .await
            .unwrap()
            .into_inner()
            .trace_ids
            .into_iter()
            .map(|t| hex::encode(t.trace_id))
            .collect();
        assert_eq!(found, want);
    });
    server.terminate();
}

/// `spanflow jaeger JOB` as a user runs it: it says where it serves what, answers, and
/// refuses a job with nothing to serve.
#[test]
fn spanflow_jaeger_serves_a_jobs_outputs_and_explains_a_job_without_kept_spans() {
    use std::io::BufRead;
    let tmp = tempfile::tempdir().unwrap();
    let job_dir = tmp.path().join("jobs");
    std::fs::create_dir_all(&job_dir).unwrap();
    let out = tmp.path().join("out");
    job(&out, None);
    let job_file = job_dir.join("j.yaml");
    std::fs::write(
        &job_file,
        "sources: { g: { type: generator, traces: 10 } }\n\
         operators:\n  s: { type: session_window, from: g, gap: 5s }\n  \
         t: { type: tail_sampling, from: s, policies: [{ name: all, type: probabilistic, percentage: 100 }] }\n\
         sinks: { o: { type: parquet, from: [t, t.spans], path: elsewhere } }\n",
    )
    .unwrap();
    let mut child = std::process::Command::new(crate::support::bin())
        .args([
            "jaeger",
            job_file.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .arg("--output-dir")
        .arg(&out)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("Parquet tables `spans`"), "{line}");
    let addr = line
        .split("(gRPC) on ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("{line}"))
        .to_owned();
    let services = runtime().block_on(async {
        let channel = connect(&addr).await;
        TraceReaderClient::new(channel)
            .get_services(pb::GetServicesRequest {})
            .await
            .unwrap()
            .into_inner()
            .services
    });
    let _ = child.kill();
    let _ = child.wait();
    let want: BTreeSet<String> = column(&read_table(&out, "spans"), "service")
        .into_iter()
        .collect();
    assert_eq!(services, want.into_iter().collect::<Vec<_>>());

    // A job whose sinks keep no spans has nothing to serve.
    std::fs::write(
        &job_file,
        "sources: { g: { type: generator, traces: 10 } }\n\
         operators:\n  s: { type: session_window, from: g, gap: 5s }\n  \
         t: { type: tail_sampling, from: s, policies: [{ name: all, type: probabilistic, percentage: 100 }] }\n\
         sinks: { o: { type: parquet, from: [t], path: elsewhere } }\n",
    )
    .unwrap();
    let refused = std::process::Command::new(crate::support::bin())
        .args([
            "jaeger",
            job_file.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("add `<sampler>.spans` to a sink's `from`"),
        "{err}"
    );
}
