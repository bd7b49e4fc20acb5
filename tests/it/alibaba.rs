//! The Alibaba import on the real samples (`../shared/data/alibaba`): every span
//! decodes, the spans say what the CSV says (counted independently by
//! `expected_edges`), and `jobs/alibaba.yaml` closes one trace per traceid.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;

use spanflow::formats::{Decoded, InputFormat, RecordMeta, SpanDecoder};
use spanflow::job::run_job;
use spanflow::runtime::RunOptions;
use spanflow::testkit::alibaba::{self, ConvertStats, Edge, ExpectedCounts};
use spanflow::testkit::generator::write_records;
use spanflow_operators::{Span, SpanKind, Sym};

use crate::support::{column, read_table, root, sum};

const SAMPLES: [&str; 2] = [
    "callgraph-2021-sample.csv.gz",
    "callgraph-2022-sample.csv.gz",
];

fn sample(name: &str) -> PathBuf {
    // A copy of ../shared/data/alibaba, so the tests run from any clone.
    let p = root().join("tests/fixtures/alibaba").join(name);
    assert!(
        p.exists(),
        "{}: the Alibaba samples are missing",
        p.display()
    );
    p
}

fn decode_all(records: &[Vec<u8>], format: InputFormat) -> Decoded {
    let mut decoder = SpanDecoder::new();
    let mut out = Decoded::default();
    for (i, r) in records.iter().enumerate() {
        let meta = RecordMeta {
            topic: None,
            source: Sym::new("alibaba"),
            split: 0,
            offset: i as u64,
        };
        decoder.decode(format, r, &meta, &mut out);
    }
    out
}

/// (source service, target service, call type) per server/consumer span whose parent
/// is a client/producer span, found by span id. `cross_service_only` keeps the pairs
/// of two different services (what service_relation reports).
fn linked_edges(spans: &[Span], cross_service_only: bool) -> BTreeMap<Edge, u64> {
    let by_id: HashMap<_, &Span> = spans.iter().map(|s| ((s.trace_id, s.span_id), s)).collect();
    let mut out = BTreeMap::new();
    for s in spans {
        if !matches!(s.kind, SpanKind::Server | SpanKind::Consumer) || s.is_root() {
            continue;
        }
        let Some(parent) = by_id.get(&(s.trace_id, s.parent_span_id)) else {
            continue;
        };
        if !matches!(parent.kind, SpanKind::Client | SpanKind::Producer) {
            continue;
        }
        if cross_service_only && parent.service == s.service {
            continue;
        }
        *out.entry(Edge {
            source: parent.service.as_str().to_owned(),
            target: s.service.as_str().to_owned(),
            call_type: s.call_type.as_str().to_owned(),
        })
        .or_default() += 1;
    }
    out
}

fn check_sample(name: &str, format: InputFormat) -> (ConvertStats, ExpectedCounts) {
    let path = sample(name);
    let expected = alibaba::expected_edges_file(&path).unwrap();
    let (records, stats) = alibaba::convert_file(&path, format, 64).unwrap();
    let payloads: Vec<Vec<u8>> = records.into_iter().map(|r| r.payload).collect();
    let decoded = decode_all(&payloads, format);

    // (a) Every span decodes.
    assert!(
        decoded.dead_letters.is_empty(),
        "{name}: {} dead letters, first: {:?}",
        decoded.dead_letters.len(),
        decoded.dead_letters.first()
    );
    let spans = decoded.spans;
    assert_eq!(spans.len() as u64, stats.spans, "{name}");
    assert_eq!(
        stats.rows,
        stats.calls + stats.duplicate_rows + stats.merged_rows + stats.skipped_rows,
        "{name}: every row is accounted for"
    );
    let ids: BTreeSet<_> = spans.iter().map(|s| (s.trace_id, s.span_id)).collect();
    assert_eq!(ids.len(), spans.len(), "{name}: span ids are unique");
    let traces: BTreeSet<_> = spans.iter().map(|s| s.trace_id).collect();
    assert_eq!(traces.len() as u64, expected.traces, "{name}");

    // (b) Spans per call type, as the classifier derives it, equal the CSV's counts.
    let mut by_type: BTreeMap<String, u64> = BTreeMap::new();
    for s in &spans {
        *by_type.entry(s.call_type.as_str().to_owned()).or_default() += 1;
    }
    assert_eq!(
        by_type, expected.spans_by_type,
        "{name}: spans per call type"
    );
    assert_eq!(stats.calls_by_type, expected.calls_by_type, "{name}");

    // (c) Server/consumer spans linked to their client/producer parent give the CSV's
    // (um, dm) pairs: all of them, and the cross-service ones service_relation reports.
    let all_pairs: BTreeMap<Edge, u64> = expected
        .calls
        .iter()
        .filter(|(e, _)| matches!(e.call_type.as_str(), "http" | "rpc" | "mq"))
        .map(|(e, n)| (e.clone(), *n))
        .collect();
    assert_eq!(linked_edges(&spans, false), all_pairs, "{name}: all pairs");
    let relations = expected.relations();
    assert!(!relations.is_empty(), "{name}");
    assert_eq!(
        linked_edges(&spans, true),
        relations,
        "{name}: cross-service edges"
    );
    // Shape: a caller's span hangs under a span its service runs in (server, consumer,
    // internal), never under a client span; a server/consumer span hangs under the
    // client/producer span of its own call, or (caller unknown) under a span of an
    // ancestor call. Spans whose parent call is missing altogether dangle.
    let by_id: HashMap<_, &Span> = spans.iter().map(|s| ((s.trace_id, s.span_id), s)).collect();
    let runs_in = |k: SpanKind| {
        matches!(
            k,
            SpanKind::Server | SpanKind::Consumer | SpanKind::Internal
        )
    };
    let mut dangling = 0u64;
    for s in spans.iter().filter(|s| !s.is_root()) {
        let Some(p) = by_id.get(&(s.trace_id, s.parent_span_id)) else {
            dangling += 1;
            continue;
        };
        let same_call = s.attrs.get("alibaba.rpc_id") == p.attrs.get("alibaba.rpc_id");
        match s.kind {
            SpanKind::Server | SpanKind::Consumer => assert!(
                (matches!(p.kind, SpanKind::Client | SpanKind::Producer) && same_call)
                    || runs_in(p.kind),
                "{name}: {s:?} under {p:?}"
            ),
            _ => assert!(runs_in(p.kind), "{name}: {s:?} under {p:?}"),
        }
    }
    assert_eq!(
        Some(&dangling),
        stats.links.get("missing_parent"),
        "{name}: dangling parents"
    );
    (stats, expected)
}

#[test]
fn samples_convert_to_spans_that_say_what_the_csv_says() {
    for name in SAMPLES {
        let (proto, expected) = check_sample(name, InputFormat::OtlpProto);
        let (json, _) = check_sample(name, InputFormat::OtlpJson);
        assert_eq!(proto, json, "{name}: the format does not change the stats");
        eprintln!(
            "{name}: {}\n  expected: {} traces, calls {:?}, {} relations",
            proto.render().replace('\n', "\n  "),
            expected.traces,
            expected.calls_by_type,
            expected.relations().len()
        );
    }
}

/// The numbers the conversion promises for the two samples (docs/alibaba.md quotes
/// them); a change in the rules shows up here first.
#[test]
fn sample_numbers() {
    let stats = |name: &str| {
        alibaba::convert_file(&sample(name), InputFormat::OtlpProto, 512)
            .unwrap()
            .1
    };
    let s = stats(SAMPLES[0]);
    assert_eq!(
        (s.rows, s.calls, s.traces, s.spans, s.skipped_rows),
        (967, 818, 17, 1182, 50)
    );
    assert_eq!(
        s.skipped_by_reason,
        BTreeMap::from([("unknown_dm".to_owned(), 50)])
    );
    let s = stats(SAMPLES[1]);
    assert_eq!(
        (s.rows, s.calls, s.traces, s.spans, s.skipped_rows),
        (1000, 815, 196, 1005, 50)
    );
    assert_eq!(
        s.skipped_by_reason,
        BTreeMap::from([
            ("unknown_dm".to_owned(), 44),
            ("unknown_rpctype".to_owned(), 6)
        ])
    );
}

#[test]
fn the_job_closes_one_trace_per_traceid() {
    let job_text = std::fs::read_to_string(root().join("jobs/alibaba.yaml")).unwrap();
    for name in SAMPLES {
        let dir = tempfile::tempdir().unwrap();
        // The job reads `../out/alibaba/callgraph.otlp` relative to itself.
        let job_path = dir.path().join("jobs/alibaba.yaml");
        std::fs::create_dir_all(job_path.parent().unwrap()).unwrap();
        std::fs::write(&job_path, &job_text).unwrap();
        let input = dir.path().join("out/alibaba/callgraph.otlp");
        std::fs::create_dir_all(input.parent().unwrap()).unwrap();
        let (records, stats) =
            alibaba::convert_file(&sample(name), InputFormat::OtlpProto, 512).unwrap();
        write_records(&input, InputFormat::OtlpProto, records).unwrap();
        let expected = alibaba::expected_edges_file(&sample(name)).unwrap();

        let job = spanflow::job::load_str(&job_path, &job_text).unwrap_or_else(|d| panic!("{d}"));
        let out = dir.path().join("result");
        let opts = RunOptions {
            output_dir: Some(out.clone()),
            parallelism: Some(2),
            ..Default::default()
        };
        let summary = run_job(&job, &opts).unwrap();
        assert_eq!(summary.decode.spans, stats.spans, "{name}");
        assert_eq!(summary.decode.dead_letters(), 0, "{name}");
        assert_eq!(summary.sessions.late_spans(), 0, "{name}");
        assert_eq!(
            summary.sessions.traces_closed(),
            expected.traces,
            "{name}: one trace per traceid"
        );
        let traces = read_table(&out, "traces");
        let ids: BTreeSet<String> = column(&traces, "trace_id").into_iter().collect();
        assert_eq!(ids.len() as u64, expected.traces, "{name}");
        assert_eq!(
            traces.iter().map(|b| b.num_rows() as u64).sum::<u64>(),
            expected.traces,
            "{name}"
        );
        assert_eq!(sum(&traces, "span_count"), stats.spans, "{name}");

        // service_relation: the edges between services equal the CSV's calls between
        // two named services (http, rpc, mq).
        let rel = read_table(&out, "service_relation");
        let (src, dst, kind, ct, req) = (
            column(&rel, "source"),
            column(&rel, "target"),
            column(&rel, "target_kind"),
            column(&rel, "call_type"),
            column(&rel, "requests"),
        );
        let mut got: BTreeMap<(String, String, String), u64> = BTreeMap::new();
        for i in 0..src.len() {
            if kind[i] == "service" {
                *got.entry((src[i].clone(), dst[i].clone(), ct[i].clone()))
                    .or_default() += req[i].parse::<u64>().unwrap();
            }
        }
        let want: BTreeMap<(String, String, String), u64> = expected
            .relations()
            .into_iter()
            .map(|(e, n)| ((e.source, e.target, e.call_type), n))
            .collect();
        assert_eq!(got, want, "{name}: service_relation edges vs the CSV");

        // red_metrics: outgoing calls per call type equal the CSV's calls with a named
        // caller, per type.
        let red = read_table(&out, "red_metrics");
        let (metric, req) = (column(&red, "metric"), column(&red, "requests"));
        let mut got: BTreeMap<String, u64> = BTreeMap::new();
        for (m, r) in metric.iter().zip(&req) {
            if let Some(t) = m
                .strip_prefix("service_call_")
                .filter(|t| !t.ends_with("_error"))
            {
                *got.entry(t.to_owned()).or_default() += r.parse::<u64>().unwrap();
            }
        }
        let mut want: BTreeMap<String, u64> = BTreeMap::new();
        for (e, n) in &expected.calls {
            if e.call_type != "local" {
                *want.entry(e.call_type.clone()).or_default() += n;
            }
        }
        assert_eq!(
            got, want,
            "{name}: service_call_* requests per call type vs the CSV"
        );
    }
}
