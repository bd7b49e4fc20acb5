use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value::Value};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use spanflow_operators::classify::CallAttrs;
use spanflow_operators::{AttrValue, HumanDuration, SpanKind};

use super::*;
use crate::formats::InputFormat;

const SEC: u64 = 1_000_000_000;

fn config(traces: u64) -> GeneratorConfig {
    GeneratorConfig {
        traces,
        ..GeneratorConfig::default()
    }
}

fn run(config: GeneratorConfig) -> (Vec<GeneratedRecord>, GroundTruth) {
    let mut g = Generator::new(config).unwrap();
    let records: Vec<_> = g.by_ref().collect();
    (records, g.ground_truth().clone())
}

fn decode(r: &GeneratedRecord, format: InputFormat) -> ExportTraceServiceRequest {
    match format {
        InputFormat::OtlpProto => ExportTraceServiceRequest::decode(&r.payload[..]).unwrap(),
        InputFormat::OtlpJson => serde_json::from_slice(&r.payload).unwrap(),
        InputFormat::Avro => crate::formats::avro::decode_request(&r.payload).unwrap(),
    }
}

/// A decoded span with what the tests need from its record and resource.
struct Flat {
    span: Span,
    service: String,
    record_arrival: u64,
}

fn flatten(records: &[GeneratedRecord], format: InputFormat) -> Vec<Flat> {
    let mut out = Vec::new();
    for r in records.iter().filter(|r| !r.garbage) {
        let req = decode(r, format);
        let mut n = 0;
        for rs in req.resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|res| attr(&res.attributes, "service.name"))
                .and_then(|v| str_of(v).map(str::to_owned))
                .unwrap();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    n += 1;
                    out.push(Flat {
                        span,
                        service: service.clone(),
                        record_arrival: r.arrival_ns,
                    });
                }
            }
        }
        assert_eq!(n, r.spans);
    }
    out
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn str_of(v: &Value) -> Option<&str> {
    match v {
        Value::StringValue(s) => Some(s),
        _ => None,
    }
}

fn int_attr(span: &Span, keys: &[&str]) -> Option<i64> {
    keys.iter().find_map(|k| match attr(&span.attributes, k) {
        Some(Value::IntValue(i)) => Some(*i),
        _ => None,
    })
}

fn http_status(span: &Span) -> i64 {
    int_attr(span, &["http.response.status_code", "http.status_code"]).unwrap_or(0)
}

fn is_error(span: &Span) -> bool {
    span.status.as_ref().is_some_and(|s| s.code == 2) || http_status(span) >= 500
}

fn call_type(span: &Span) -> CallType {
    let mut c = CallAttrs::default();
    for kv in &span.attributes {
        let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
            Some(Value::StringValue(s)) => AttrValue::Str(s),
            Some(Value::IntValue(i)) => AttrValue::Int(*i),
            Some(Value::BoolValue(b)) => AttrValue::Bool(*b),
            Some(Value::DoubleValue(d)) => AttrValue::Double(*d),
            _ => continue,
        };
        c.observe(&kv.key, v);
    }
    c.finish(SpanKind::from_i32(span.kind)).call_type
}

fn rich() -> GeneratorConfig {
    GeneratorConfig {
        traces: 3000,
        error_rate: 0.02,
        late_fraction: 0.02,
        garbage_fraction: 0.05,
        long_trace_fraction: 0.002,
        spans_per_record: 200,
        ..GeneratorConfig::default()
    }
}

#[test]
fn same_config_same_bytes_other_seed_other_bytes() {
    let a = run(rich()).0;
    let b = run(rich()).0;
    assert!(!a.is_empty());
    assert_eq!(a, b);
    let c = run(GeneratorConfig { seed: 7, ..rich() }).0;
    assert_ne!(
        a.iter().map(|r| &r.payload).collect::<Vec<_>>(),
        c.iter().map(|r| &r.payload).collect::<Vec<_>>()
    );
}

#[test]
fn ground_truth_matches_an_independent_recount() {
    let cfg = rich();
    let export_delay = cfg.export_delay.as_nanos();
    let (records, truth) = run(cfg.clone());
    let spans = flatten(&records, InputFormat::OtlpProto);

    let mut traces = HashSet::new();
    let mut error_traces = HashSet::new();
    let mut async_traces = HashSet::new();
    let mut long_traces = HashSet::new();
    let mut by_service: BTreeMap<String, u64> = BTreeMap::new();
    let mut by_call_type: BTreeMap<String, u64> = CallType::ALL
        .iter()
        .map(|c| (c.as_str().to_owned(), 0))
        .collect();
    let (mut errors, mut roots, mut late, mut late_errors) = (0, 0, 0, 0);
    let (mut first, mut last) = (u64::MAX, 0);
    for f in &spans {
        let s = &f.span;
        traces.insert(s.trace_id.clone());
        let error = is_error(s);
        if error {
            errors += 1;
            error_traces.insert(s.trace_id.clone());
        }
        if s.parent_span_id.is_empty() {
            roots += 1;
            if s.name == "POST /api/admin/jobs/{id}/run" {
                long_traces.insert(s.trace_id.clone());
            }
        }
        if s.kind == 4 {
            async_traces.insert(s.trace_id.clone());
        }
        // Records span at most 1 s of arrivals, so an on-time span ended at most
        // export_delay + 1 s before its record's arrival; late ones 600 s.
        if f.record_arrival - s.end_time_unix_nano > export_delay + SEC {
            late += 1;
            if error {
                late_errors += 1;
            }
        }
        first = first.min(s.end_time_unix_nano);
        last = last.max(s.end_time_unix_nano);
        *by_service.entry(f.service.clone()).or_default() += 1;
        *by_call_type
            .entry(call_type(s).as_str().to_owned())
            .or_default() += 1;
    }
    let garbage = records.iter().filter(|r| r.garbage).count() as u64;
    let expected = GroundTruth {
        traces: traces.len() as u64,
        spans: spans.len() as u64,
        error_spans: errors,
        traces_with_errors: error_traces.len() as u64,
        root_spans: roots,
        async_traces: async_traces.len() as u64,
        long_traces: long_traces.len() as u64,
        late_spans: late,
        late_error_spans: late_errors,
        garbage_records: garbage,
        records: records.len() as u64,
        first_event_ns: first,
        last_event_ns: last,
        spans_by_service: by_service,
        spans_by_call_type: by_call_type,
    };
    assert_eq!(truth, expected);
    assert_eq!(truth.traces, 3000);
    assert_eq!(truth.root_spans, 3000);
    assert!(truth.late_spans > 0 && truth.late_error_spans <= truth.late_spans);
    assert!(truth.garbage_records > 0);
    assert!(truth.error_spans > 0 && truth.traces_with_errors > 0);
    assert!(truth.async_traces > 0);
}

#[test]
fn records_are_in_arrival_order_and_spans_arrive_after_they_end() {
    let (records, _) = run(rich());
    for w in records.windows(2) {
        assert!(w[0].arrival_ns <= w[1].arrival_ns);
    }
    for w in records.windows(2) {
        if w[1].garbage {
            assert_eq!(w[0].arrival_ns, w[1].arrival_ns);
            assert!(!w[0].garbage);
        }
    }
    for r in records.iter().filter(|r| !r.garbage) {
        assert!(r.spans >= 1 && r.spans <= 200);
    }
    for f in flatten(&records, InputFormat::OtlpProto) {
        assert!(f.record_arrival >= f.span.end_time_unix_nano);
    }
}

#[test]
fn trace_shape_timing_and_ids() {
    let cfg = GeneratorConfig {
        traces: 2000,
        long_trace_fraction: 0.005,
        async_fraction: 0.3,
        ..config(0)
    };
    let (records, truth) = run(cfg);
    let spans = flatten(&records, InputFormat::OtlpProto);
    let mut by_trace: HashMap<Vec<u8>, Vec<&Span>> = HashMap::new();
    let mut span_ids = HashSet::new();
    for f in &spans {
        assert_eq!(f.span.trace_id.len(), 16);
        assert_eq!(f.span.span_id.len(), 8);
        assert!(f.span.trace_id.iter().any(|&b| b != 0));
        assert!(f.span.span_id.iter().any(|&b| b != 0));
        assert!(f.span.start_time_unix_nano < f.span.end_time_unix_nano);
        assert!(span_ids.insert(f.span.span_id.clone()), "duplicate span id");
        by_trace
            .entry(f.span.trace_id.clone())
            .or_default()
            .push(&f.span);
    }
    assert_eq!(by_trace.len(), 2000);
    let mut root_starts = Vec::new();
    let mut long = 0;
    let mut consumers = 0;
    let mut lags = Vec::new();
    for spans in by_trace.values() {
        let by_id: HashMap<&[u8], &Span> = spans.iter().map(|s| (&s.span_id[..], *s)).collect();
        let roots: Vec<_> = spans
            .iter()
            .filter(|s| s.parent_span_id.is_empty())
            .collect();
        assert_eq!(roots.len(), 1);
        let root = roots[0];
        root_starts.push(root.start_time_unix_nano);
        assert_eq!(root.kind, 2);
        for s in spans {
            if s.parent_span_id.is_empty() {
                continue;
            }
            let parent = by_id[&s.parent_span_id[..]];
            if s.kind == 5 {
                consumers += 1;
                assert_eq!(parent.kind, 4, "consumer's parent is the producer");
                let gap = s.start_time_unix_nano - parent.end_time_unix_nano;
                assert!(gap >= SEC);
                assert!(
                    gap <= 5 * SEC
                        || s.start_time_unix_nano <= root.end_time_unix_nano + 100_000_000
                );
                assert!(s.start_time_unix_nano > root.end_time_unix_nano);
                lags.push(gap);
            } else {
                assert!(
                    s.start_time_unix_nano > parent.start_time_unix_nano,
                    "{} in {}",
                    s.name,
                    parent.name
                );
                assert!(
                    s.end_time_unix_nano < parent.end_time_unix_nano,
                    "{} in {}",
                    s.name,
                    parent.name
                );
            }
        }
        let begin = spans.iter().map(|s| s.start_time_unix_nano).min().unwrap();
        let end = spans.iter().map(|s| s.end_time_unix_nano).max().unwrap();
        if root.name == "POST /api/admin/jobs/{id}/run" {
            long += 1;
            assert!((100..=400).contains(&spans.len()), "{} spans", spans.len());
            assert!(root.end_time_unix_nano - root.start_time_unix_nano >= 60 * SEC);
            assert!(end - begin <= 180 * SEC);
        } else {
            assert!(spans.len() < 100);
            assert!(end - begin < 20 * SEC);
        }
    }
    assert_eq!(long, truth.long_traces);
    assert!(long > 0);
    assert!(consumers > 0);
    // Queue lag is 1-5 s but for the rare root that outlives its publish by seconds.
    assert!(lags.iter().filter(|&&l| l > 5 * SEC).count() * 20 < lags.len());
    // Trace i starts at start_time + i / rate, jittered but never out of order.
    root_starts.sort_unstable();
    let start = config::start_time_ns("2026-01-01T00:00:00Z").unwrap();
    assert!(root_starts[0] >= start && root_starts[0] < start + SEC / 200);
    let last = root_starts[root_starts.len() - 1];
    assert!(last >= start + 1999 * SEC / 200 && last < start + 2000 * SEC / 200);
}

#[test]
fn trace_starts_are_non_decreasing_in_generation_order() {
    let mut g = Generator::new(GeneratorConfig {
        traces: 500,
        traces_per_second: 1e6,
        ..config(0)
    })
    .unwrap();
    let mut previous = 0;
    for _ in 0..500 {
        let start = g.next_start;
        assert!(start >= previous);
        previous = start;
        g.generate_trace();
    }
}

#[test]
fn fleet_looks_like_a_fleet() {
    let (records, truth) = run(GeneratorConfig {
        traces: 2000,
        slow_db_rate: 0.01,
        error_rate: 0.001,
        ..config(0)
    });
    let spans = flatten(&records, InputFormat::OtlpProto);
    assert!(
        truth.spans_by_service.len() >= 20,
        "{:?}",
        truth.spans_by_service.keys()
    );
    assert!(truth.spans_by_service.contains_key("frontend-gateway"));
    let keys: HashSet<&str> = spans
        .iter()
        .flat_map(|f| f.span.attributes.iter().map(|kv| kv.key.as_str()))
        .collect();
    for k in [
        "http.method",
        "http.request.method",
        "http.status_code",
        "http.response.status_code",
        "http.url",
        "url.full",
        "http.target",
        "url.path",
        "net.peer.name",
        "server.address",
        "db.system",
        "db.system.name",
        "db.statement",
        "db.query.text",
        "rpc.grpc.status_code",
        "messaging.destination.name",
    ] {
        assert!(keys.contains(k), "no span has `{k}`");
    }
    // Each service sticks to one naming generation.
    let mut style: HashMap<&str, HashSet<bool>> = HashMap::new();
    for f in &spans {
        for kv in &f.span.attributes {
            match kv.key.as_str() {
                "http.method" | "http.status_code" | "db.statement" => {
                    style.entry(&f.service).or_default().insert(true);
                }
                "http.request.method" | "http.response.status_code" | "db.query.text" => {
                    style.entry(&f.service).or_default().insert(false);
                }
                _ => {}
            }
        }
    }
    assert!(style.values().all(|s| s.len() == 1), "{style:?}");
    assert!(
        style.values().any(|s| s.contains(&true)) && style.values().any(|s| s.contains(&false))
    );

    let kinds: HashSet<i32> = spans.iter().map(|f| f.span.kind).collect();
    assert!(kinds.is_superset(&HashSet::from([1, 2, 3, 4, 5])));
    let slow_db = spans
        .iter()
        .filter(|f| call_type(&f.span) == CallType::Db)
        .filter(|f| f.span.end_time_unix_nano - f.span.start_time_unix_nano >= 200_000_000)
        .count();
    assert!(slow_db > 0);
    // Server spans: route names, ids in paths, ~11 attributes.
    let servers: Vec<&Span> = spans
        .iter()
        .map(|f| &f.span)
        .filter(|s| s.kind == 2 && call_type(s) == CallType::Http)
        .collect();
    let avg =
        servers.iter().map(|s| s.attributes.len()).sum::<usize>() as f64 / servers.len() as f64;
    assert!((10.5..=12.0).contains(&avg), "{avg}");
    assert!(servers.iter().any(|s| s.name == "GET /api/products/{id}"));
    assert!(servers.iter().any(|s| {
        let p = attr(&s.attributes, "url.path").or(attr(&s.attributes, "http.target"));
        p.and_then(str_of)
            .is_some_and(|p| p.starts_with("/api/products/") && p[14..].parse::<u64>().is_ok())
    }));
    let clients: Vec<&Span> = spans
        .iter()
        .map(|f| &f.span)
        .filter(|s| s.kind == 3 && call_type(s) == CallType::Http)
        .collect();
    assert!(
        clients
            .iter()
            .all(|s| ["GET", "POST", "PUT"].contains(&s.name.as_str()))
    );
    let statements: Vec<&str> = spans
        .iter()
        .filter_map(|f| {
            attr(&f.span.attributes, "db.statement").or(attr(&f.span.attributes, "db.query.text"))
        })
        .filter_map(str_of)
        .collect();
    assert!(
        statements
            .iter()
            .any(|s| s.starts_with("SELECT * FROM ") && s.contains(" WHERE id = "))
    );
    // Fan-out: some span has several overlapping children.
    let mut children: HashMap<&[u8], Vec<&Span>> = HashMap::new();
    for f in &spans {
        children
            .entry(&f.span.parent_span_id)
            .or_default()
            .push(&f.span);
    }
    let fan_out = children.values().any(|c| {
        c.iter().any(|a| {
            c.iter().any(|b| {
                a.span_id != b.span_id
                    && a.start_time_unix_nano < b.end_time_unix_nano
                    && b.start_time_unix_nano < a.end_time_unix_nano
            })
        })
    });
    assert!(fan_out);
    // Every resource has the expected attributes and 1-3 instances per service.
    let mut instances: HashMap<String, HashSet<String>> = HashMap::new();
    for r in records.iter().filter(|r| !r.garbage).take(50) {
        for rs in decode(r, InputFormat::OtlpProto).resource_spans {
            let res = rs.resource.unwrap();
            for k in [
                "service.instance.id",
                "host.name",
                "telemetry.sdk.language",
                "service.version",
                "deployment.environment",
            ] {
                assert!(attr(&res.attributes, k).is_some(), "resource lacks {k}");
            }
            let name = str_of(attr(&res.attributes, "service.name").unwrap())
                .unwrap()
                .to_owned();
            let inst = str_of(attr(&res.attributes, "service.instance.id").unwrap())
                .unwrap()
                .to_owned();
            instances.entry(name).or_default().insert(inst);
            assert_eq!(rs.scope_spans.len(), 1);
        }
    }
    assert!(instances.values().all(|i| (1..=3).contains(&i.len())));
}

#[test]
fn errors_propagate_upward_and_5xx_is_status_error() {
    let (records, _) = run(GeneratorConfig {
        traces: 2000,
        error_rate: 0.05,
        ..config(0)
    });
    let spans = flatten(&records, InputFormat::OtlpProto);
    let mut errors = 0;
    for f in &spans {
        if http_status(&f.span) >= 500 {
            assert_eq!(f.span.status.as_ref().map(|s| s.code), Some(2));
        }
        if is_error(&f.span) {
            errors += 1;
        }
    }
    // Failing roots: leaf failures must have reached the gateway.
    let failed_roots = spans
        .iter()
        .filter(|f| f.span.parent_span_id.is_empty() && is_error(&f.span))
        .count();
    assert!(failed_roots > 0);
    let codes: HashSet<i64> = spans.iter().map(|f| http_status(&f.span)).collect();
    assert!(codes.contains(&500) && codes.contains(&502) && codes.contains(&503));
    assert!(errors > 0);
}

#[test]
fn garbage_never_decodes() {
    for format in [InputFormat::OtlpProto, InputFormat::OtlpJson] {
        let (records, truth) = run(GeneratorConfig {
            traces: 1500,
            garbage_fraction: 0.5,
            spans_per_record: 20,
            format,
            ..config(0)
        });
        let garbage: Vec<_> = records.iter().filter(|r| r.garbage).collect();
        assert!(garbage.len() > 50);
        assert_eq!(truth.garbage_records, garbage.len() as u64);
        for r in &garbage {
            assert_eq!(r.spans, 0);
            assert!(!r.payload.is_empty());
            assert!(
                ExportTraceServiceRequest::decode(&r.payload[..]).is_err()
                    || format == InputFormat::OtlpJson
            );
            assert!(serde_json::from_slice::<ExportTraceServiceRequest>(&r.payload).is_err());
            if format == InputFormat::OtlpJson {
                assert!(!r.payload.contains(&b'\n'));
            }
        }
        // Every kind shows up.
        let distinct: HashSet<&[u8]> = garbage
            .iter()
            .map(|r| &r.payload[..r.payload.len().min(2)])
            .collect();
        assert!(distinct.len() >= 3, "{format:?}: {distinct:?}");
    }
}

#[test]
fn proto_garbage_kinds_fail_prost() {
    let (records, _) = run(GeneratorConfig {
        traces: 1000,
        garbage_fraction: 1.0,
        ..config(0)
    });
    let mut firsts = HashSet::new();
    for r in records.iter().filter(|r| r.garbage) {
        firsts.insert(r.payload[0]);
        assert!(ExportTraceServiceRequest::decode(&r.payload[..]).is_err());
    }
    // Truncated real record / length overrun (0x0a), invalid wire type (0x0f).
    assert!(firsts.contains(&0x0a) && firsts.contains(&0x0f));
}

#[test]
fn json_and_proto_describe_the_same_spans() {
    let proto = run(GeneratorConfig {
        garbage_fraction: 0.1,
        ..rich()
    });
    let json = run(GeneratorConfig {
        garbage_fraction: 0.1,
        format: InputFormat::OtlpJson,
        ..rich()
    });
    assert_eq!(proto.1, json.1);
    assert_eq!(proto.0.len(), json.0.len());
    for (p, j) in proto.0.iter().zip(&json.0) {
        assert_eq!(
            (p.arrival_ns, p.garbage, p.spans),
            (j.arrival_ns, j.garbage, j.spans)
        );
        if !p.garbage {
            assert_eq!(
                decode(p, InputFormat::OtlpProto),
                decode(j, InputFormat::OtlpJson)
            );
        }
    }
}

#[test]
fn proto_encoding_is_what_prost_writes() {
    let mut g = Generator::new(rich()).unwrap();
    for r in g.by_ref().filter(|r| !r.garbage).take(40) {
        let decoded = ExportTraceServiceRequest::decode(&r.payload[..]).unwrap();
        assert_eq!(decoded.encode_to_vec(), r.payload);
    }
    // The JSON view of the same spans agrees with the protobuf bytes.
    let mut g = Generator::new(config(50)).unwrap();
    g.generate_trace();
    let spans: Vec<GenSpan> = g.heap.drain().map(|p| p.0).collect();
    let bytes = g.grouper.encode(&g.fleet, InputFormat::OtlpProto, &spans);
    let request = g.grouper.request(&g.fleet, &spans);
    assert_eq!(request.encode_to_vec(), bytes);
}

#[test]
fn json_uses_the_otlp_mapping() {
    let mut g = Generator::new(GeneratorConfig {
        format: InputFormat::OtlpJson,
        ..config(20)
    })
    .unwrap();
    let r = g.next_record().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
    let span = &v["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
    // Ids as hex, times as strings, enums as numbers.
    assert_eq!(span["traceId"].as_str().unwrap().len(), 32);
    assert_eq!(span["spanId"].as_str().unwrap().len(), 16);
    assert!(
        span["endTimeUnixNano"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .is_ok()
    );
    assert!(span["kind"].is_number());
}

#[test]
fn file_round_trip_and_truncation() {
    let dir = tempfile::tempdir().unwrap();
    for format in [InputFormat::OtlpProto, InputFormat::OtlpJson] {
        let records = run(GeneratorConfig {
            traces: 200,
            garbage_fraction: 0.2,
            spans_per_record: 50,
            format,
            ..config(0)
        })
        .0;
        let path = dir.path().join("records");
        write_records(&path, format, records.clone()).unwrap();
        let back = read_records(&path, format).unwrap();
        assert_eq!(
            back,
            records
                .iter()
                .map(|r| r.payload.clone())
                .collect::<Vec<_>>()
        );

        let bytes = std::fs::read(&path).unwrap();
        let cut = match format {
            // Inside the second record's body.
            InputFormat::OtlpProto | InputFormat::Avro => 4 + records[0].payload.len() + 4 + 10,
            // Inside the last line, which then has no newline.
            InputFormat::OtlpJson => bytes.len() - 10,
        };
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let err = read_records(&path, format).unwrap_err();
        let offset = match format {
            InputFormat::OtlpProto | InputFormat::Avro => 4 + records[0].payload.len(),
            InputFormat::OtlpJson => {
                bytes[..bytes.len() - 1]
                    .iter()
                    .rposition(|&b| b == b'\n')
                    .unwrap()
                    + 1
            }
        };
        assert!(
            err.to_string().contains(&format!("byte offset {offset}")),
            "{err}"
        );
        // A cut inside the 4-byte length prefix.
        if format == InputFormat::OtlpProto {
            std::fs::write(&path, &bytes[..4 + records[0].payload.len() + 2]).unwrap();
            let err = read_records(&path, format).unwrap_err();
            assert!(
                err.to_string().contains(&format!("byte offset {offset}")),
                "{err}"
            );
        }
    }
    // A JSON file without a final newline is fine when the last line is complete.
    let path = dir.path().join("one.json");
    std::fs::write(&path, b"{\"resourceSpans\":[]}\n\n{\"resourceSpans\":[]}").unwrap();
    assert_eq!(read_records(&path, InputFormat::OtlpJson).unwrap().len(), 2);
}

#[test]
fn invalid_config_is_rejected_with_every_issue() {
    let bad = GeneratorConfig {
        services: 3,
        error_rate: 2.0,
        start_time: "yesterday".into(),
        spans_per_record: 0,
        ..GeneratorConfig::default()
    };
    let err = Generator::new(bad).unwrap_err();
    let GeneratorError::InvalidConfig { issues } = &err;
    assert_eq!(issues.len(), 4, "{issues:?}");
    let text = err.to_string();
    assert!(
        text.contains("`services`") && text.contains("`error_rate`"),
        "{text}"
    );
    for start in ["1969-12-31T23:59:59Z", "2300-01-01T00:00:00Z"] {
        let cfg = GeneratorConfig {
            start_time: start.into(),
            ..GeneratorConfig::default()
        };
        assert_eq!(cfg.validate().len(), 1, "{start}");
    }
    let cfg = GeneratorConfig {
        traces_per_second: f64::INFINITY,
        ..GeneratorConfig::default()
    };
    assert_eq!(cfg.validate().len(), 1);
    let cfg = GeneratorConfig {
        traces_per_second: 1e-9,
        ..GeneratorConfig::default()
    };
    assert_eq!(cfg.validate().len(), 1);
    assert!(GeneratorConfig::default().validate().is_empty());
}

#[test]
fn bigger_fleets_get_generated_names_and_all_see_traffic() {
    let (_, truth) = run(GeneratorConfig {
        services: 40,
        traces: 3000,
        ..config(0)
    });
    assert_eq!(
        truth.spans_by_service.len(),
        40,
        "{:?}",
        truth.spans_by_service.keys()
    );
    assert!(truth.spans_by_service.contains_key("warehouse-service"));
    let (_, truth) = run(GeneratorConfig {
        services: 20,
        traces: 1000,
        ..config(0)
    });
    assert_eq!(
        truth.spans_by_service.len(),
        20,
        "{:?}",
        truth.spans_by_service.keys()
    );
}

#[test]
fn generator_can_move_to_another_thread() {
    fn assert_send<T: Send + 'static>() {}
    assert_send::<Generator>();
    let handle = std::thread::spawn(move || Generator::new(config(3)).unwrap().count());
    assert!(handle.join().unwrap() >= 1);
}

#[test]
fn memory_stays_bounded() {
    let mut g = Generator::new(GeneratorConfig {
        traces: 6000,
        ..config(0)
    })
    .unwrap();
    let mut spans = 0;
    for r in g.by_ref() {
        spans += r.spans;
    }
    assert!(spans > 100_000);
    // About rate x (export delay + trace duration) spans wait at any time.
    assert!(g.peak_pending < 25_000, "peak {}", g.peak_pending);
}

#[test]
fn zero_export_delay_and_tiny_records() {
    let cfg = GeneratorConfig {
        traces: 100,
        export_delay: HumanDuration::millis(0),
        spans_per_record: 1,
        ..config(0)
    };
    let (records, truth) = run(cfg);
    assert!(records.iter().all(|r| r.spans == 1));
    assert_eq!(truth.spans, records.len() as u64);
    let empty = run(config(0));
    assert!(empty.0.is_empty());
    assert_eq!(empty.1.records, 0);
}

/// Prints the shape of the default fleet and the generation speed:
/// `cargo test --lib testkit::generator::tests::report -- --ignored --nocapture`.
#[test]
#[ignore]
fn report() {
    let cfg = GeneratorConfig::default();
    let t = Instant::now();
    let mut g = Generator::new(cfg.clone()).unwrap();
    let mut bytes = 0;
    for r in g.by_ref() {
        bytes += r.payload.len();
    }
    let elapsed = t.elapsed();
    let truth = g.ground_truth().clone();
    println!(
        "{} traces, {} spans ({:.1}/trace), {:.2}% error spans, {} traces with errors, {} async, {} long, {} records, {} MB",
        truth.traces,
        truth.spans,
        truth.spans as f64 / truth.traces as f64,
        100.0 * truth.error_spans as f64 / truth.spans as f64,
        truth.traces_with_errors,
        truth.async_traces,
        truth.long_traces,
        truth.records,
        bytes / 1_000_000
    );
    for (k, v) in &truth.spans_by_call_type {
        println!("  {k}: {:.1}%", 100.0 * *v as f64 / truth.spans as f64);
    }
    println!(
        "generated+encoded {:.0} spans/s (proto)",
        truth.spans as f64 / elapsed.as_secs_f64()
    );
    let t = Instant::now();
    let mut g = Generator::new(GeneratorConfig {
        format: InputFormat::OtlpJson,
        ..cfg
    })
    .unwrap();
    for _ in g.by_ref() {}
    println!(
        "generated+encoded {:.0} spans/s (json)",
        truth.spans as f64 / t.elapsed().as_secs_f64()
    );
    println!("peak pending spans {}", g.peak_pending);
}

#[test]
fn avro_describes_the_same_spans_and_its_garbage_never_decodes() {
    let proto = run(GeneratorConfig {
        garbage_fraction: 0.1,
        ..rich()
    });
    let avro = run(GeneratorConfig {
        garbage_fraction: 0.1,
        format: InputFormat::Avro,
        ..rich()
    });
    assert_eq!(proto.1, avro.1);
    assert_eq!(proto.0.len(), avro.0.len());
    // Spans as comparable text: ids, times, names and attributes in key order (Avro
    // maps have no order; scopes are flattened).
    let flat = |req: ExportTraceServiceRequest| -> Vec<String> {
        let mut out = Vec::new();
        for rs in req.resource_spans {
            for ss in rs.scope_spans {
                for s in ss.spans {
                    let mut attrs: Vec<String> =
                        s.attributes.iter().map(|kv| format!("{kv:?}")).collect();
                    attrs.sort();
                    out.push(format!(
                        "{:?} {:?} {:?} {} {} {} {} {} {attrs:?}",
                        s.trace_id,
                        s.span_id,
                        s.parent_span_id,
                        s.name,
                        s.kind,
                        s.start_time_unix_nano,
                        s.end_time_unix_nano,
                        s.status.map_or(0, |st| st.code)
                    ));
                }
            }
        }
        out.sort();
        out
    };
    let mut garbage = 0;
    for (p, a) in proto.0.iter().zip(&avro.0) {
        assert_eq!(
            (p.arrival_ns, p.garbage, p.spans),
            (a.arrival_ns, a.garbage, a.spans)
        );
        if p.garbage {
            garbage += 1;
            assert!(crate::formats::avro::decode_request(&a.payload).is_err());
        } else {
            assert_eq!(
                flat(decode(p, InputFormat::OtlpProto)),
                flat(decode(a, InputFormat::Avro))
            );
        }
    }
    assert!(garbage > 0);
}
