use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::metrics::{ClosedInterval, MetricsMerger};
use crate::model::{Span, SpanId, StatusCode, TraceId};
use crate::session_window::{CloseReason, TraceSummary};
use crate::{EventTime, WATERMARK_END};

const MS: u64 = 1_000_000;
const T0: u64 = 1_767_225_600_000_000_000;

#[allow(clippy::too_many_arguments)]
fn sp(
    id: u8,
    parent: u8,
    service: &str,
    name: &str,
    kind: SpanKind,
    ct: CallType,
    start_ms: u64,
    dur_ms: u64,
) -> Span {
    Span {
        trace_id: TraceId([7; 16]),
        span_id: SpanId([id, 0, 0, 0, 0, 0, 0, 1]),
        parent_span_id: if parent == 0 {
            SpanId::default()
        } else {
            SpanId([parent, 0, 0, 0, 0, 0, 0, 1])
        },
        start_ns: T0 + start_ms * MS,
        end_ns: T0 + (start_ms + dur_ms) * MS,
        service: Sym::new(service),
        instance: Sym::new(&format!("{service}-1")),
        name: Sym::new(name),
        kind,
        call_type: ct,
        ..Default::default()
    }
}

fn trace(spans: Vec<Span>) -> ClosedTrace {
    let summary = TraceSummary {
        root_service: spans[0].service,
        root_operation: spans[0].name,
        has_root: true,
        start_ns: spans.iter().map(|s| s.start_ns).min().unwrap(),
        end_ns: spans.iter().map(|s| s.end_ns).max().unwrap(),
        span_count: spans.len() as u32,
        error_count: spans.iter().filter(|s| s.is_error()).count() as u32,
        close_reason: CloseReason::Gap,
        fragment: 0,
        closes_at: spans.iter().map(|s| s.end_ns).max().unwrap(),
    };
    ClosedTrace::new(spans[0].trace_id, spans, summary)
}

fn run(config: RedMetricsConfig, traces: &[ClosedTrace]) -> Vec<ClosedInterval> {
    let mut op = RedMetrics::new(config);
    let mut merger: MetricsMerger = op.merger(1, false);
    for t in traces {
        op.add_trace(t, true);
    }
    let mut parts = Vec::new();
    op.flush(WATERMARK_END, &mut parts);
    for p in parts {
        merger.add(p);
    }
    merger.on_watermark(0, WATERMARK_END)
}

/// `metric service operation peer status -> (requests, errors, slow)` over all intervals.
fn table(closed: &[ClosedInterval]) -> BTreeMap<String, (u64, u64, u64)> {
    let mut out = BTreeMap::new();
    for ci in closed {
        for (k, a) in &ci.series {
            let name = format!(
                "{} {} {} {} {}",
                k.metric.name(),
                k.service,
                k.operation,
                k.peer,
                k.status
            );
            let e = out.entry(name.trim_end().to_owned()).or_insert((0, 0, 0));
            e.0 += a.requests;
            e.1 += a.errors;
            e.2 += a.slow;
        }
    }
    out
}

fn rows(t: &BTreeMap<String, (u64, u64, u64)>) -> Vec<String> {
    t.iter().map(|(k, v)| format!("{k} = {v:?}")).collect()
}

#[test]
fn golden_async_producer_consumer() {
    use CallType::*;
    use SpanKind::*;
    let mut producer = sp(3, 1, "orders", "orders publish", Producer, Mq, 100, 5);
    producer.peer = Sym::new("orders-topic");
    let t = trace(vec![
        sp(1, 0, "orders", "POST /orders/{id}", Server, Http, 0, 300),
        sp(
            2,
            1,
            "orders",
            "INSERT orders",
            SpanKind::Client,
            Db,
            10,
            20,
        ),
        producer,
        sp(
            4,
            3,
            "billing",
            "orders-topic process",
            Consumer,
            Mq,
            3000,
            50,
        ),
    ]);
    let got = rows(&table(&run(RedMetricsConfig::default(), &[t])));
    assert_eq!(
        got,
        vec![
            "service_call_db orders INSERT orders = (1, 0, 0)",
            "service_call_mq orders orders publish orders-topic = (1, 0, 0)",
            "service_node billing = (1, 0, 0)",
            "service_node orders = (3, 0, 0)",
            "service_server billing orders-topic process = (1, 0, 0)",
            "service_server orders POST /orders/{id} = (1, 0, 0)",
        ]
    );
}

#[test]
fn golden_error_through_three_services() {
    use CallType::*;
    use SpanKind::*;
    let mut gw = sp(1, 0, "gateway", "GET /api/pay", Server, Http, 0, 600);
    gw.http_status = 502;
    gw.status = StatusCode::Error;
    let mut call = sp(
        2,
        1,
        "gateway",
        "Payment/Charge",
        SpanKind::Client,
        Rpc,
        10,
        500,
    );
    call.status = StatusCode::Error;
    call.peer = Sym::new("payment");
    let mut srv = sp(3, 2, "payment", "Payment/Charge", Server, Rpc, 20, 480);
    srv.status = StatusCode::Error;
    let mut db = sp(
        4,
        3,
        "payment",
        "INSERT ledger VALUES (42, 'x')",
        SpanKind::Client,
        Db,
        30,
        400,
    );
    db.status = StatusCode::Error;
    db.peer = Sym::new("ledger-db");
    let got = rows(&table(&run(
        RedMetricsConfig::default(),
        &[trace(vec![gw, call, srv, db])],
    )));
    assert_eq!(
        got,
        vec![
            "service_call_db payment INSERT ledger VALUES (?) ledger-db = (1, 1, 1)",
            "service_call_db_error payment INSERT ledger VALUES (?) ledger-db error = (1, 1, 1)",
            "service_call_rpc gateway Payment/Charge payment = (1, 1, 0)",
            "service_call_rpc_error gateway Payment/Charge payment error = (1, 1, 0)",
            "service_node gateway = (2, 2, 1)",
            "service_node payment = (2, 2, 1)",
            "service_server gateway GET /api/pay = (1, 1, 1)",
            "service_server payment Payment/Charge = (1, 1, 0)",
        ]
    );
}

#[test]
fn golden_db_call_at_exactly_the_slow_threshold() {
    use CallType::*;
    let at = sp(2, 1, "svc", "SELECT 1", SpanKind::Client, Db, 0, 200);
    let mut over = sp(3, 1, "svc", "SELECT 1", SpanKind::Client, Db, 0, 200);
    over.end_ns += 1;
    let t = trace(vec![
        sp(1, 0, "svc", "GET /", SpanKind::Server, Http, 0, 400),
        at,
        over,
    ]);
    let got = table(&run(RedMetricsConfig::default(), &[t]));
    assert_eq!(
        got["service_call_db svc SELECT ?"],
        (2, 0, 1),
        "200ms is not slow, 200ms + 1ns is"
    );
}

#[test]
fn wrapper_client_spans_are_not_double_counted() {
    use CallType::*;
    use SpanKind::*;
    let t = trace(vec![
        sp(1, 0, "a", "GET /", Server, Http, 0, 100),
        sp(2, 1, "a", "GET", SpanKind::Client, Http, 5, 90),
        sp(3, 2, "a", "GET", SpanKind::Client, Http, 6, 80),
    ]);
    let got = table(&run(RedMetricsConfig::default(), &[t]));
    assert_eq!(got["service_call_http a GET"], (1, 0, 0));
}

#[test]
fn http_status_on_error_series_and_dimension_dropping() {
    use CallType::*;
    let mut c = sp(2, 1, "a", "GET", SpanKind::Client, Http, 0, 10);
    c.http_status = 503;
    let t = trace(vec![
        sp(1, 0, "a", "GET /", SpanKind::Server, Http, 0, 20),
        c,
    ]);
    let got = table(&run(RedMetricsConfig::default(), std::slice::from_ref(&t)));
    assert_eq!(got["service_call_http_error a GET  503"], (1, 1, 0));
    let cfg = RedMetricsConfig {
        dimensions: vec![],
        ..Default::default()
    };
    let got = table(&run(cfg, &[t]));
    assert!(got.contains_key("service_call_http_error a"), "{got:?}");
}

#[test]
fn observations_land_in_their_span_interval() {
    use CallType::*;
    let t = trace(vec![
        sp(1, 0, "a", "GET /", SpanKind::Server, Http, 0, 100),
        sp(2, 1, "a", "slow", SpanKind::Internal, Local, 0, 25_000),
    ]);
    let closed = run(RedMetricsConfig::default(), &[t]);
    let starts: Vec<EventTime> = closed.iter().map(|c| c.start_ns - T0).collect();
    assert_eq!(
        starts,
        vec![0, 20_000 * MS],
        "10s intervals; the 25s span ends in [20s, 30s)"
    );
}

// ------------------------------------------------------------------------------------
// Property test: counts equal a naive scan over all spans.

fn arb_trace(n: u8) -> impl Strategy<Value = ClosedTrace> {
    let kinds = prop_oneof![
        Just(SpanKind::Server),
        Just(SpanKind::Client),
        Just(SpanKind::Internal),
        Just(SpanKind::Producer),
        Just(SpanKind::Consumer),
    ];
    let cts = prop_oneof![
        Just(CallType::Http),
        Just(CallType::Rpc),
        Just(CallType::Db),
        Just(CallType::Cache),
        Just(CallType::Mq),
        Just(CallType::Local),
    ];
    prop::collection::vec(
        (
            kinds,
            cts,
            0usize..4,
            0u64..40_000,
            0u64..3_000,
            any::<bool>(),
            0u8..3,
        ),
        1..12,
    )
    .prop_map(move |raw| {
        let services = ["a", "b", "c", "d"];
        let spans: Vec<Span> = raw
            .iter()
            .enumerate()
            .map(|(i, (kind, ct, svc, start, dur, err, name))| {
                let parent = if i == 0 { 0 } else { (i as u8).div_ceil(2) };
                let mut s = sp(
                    i as u8 + 1,
                    parent,
                    services[*svc],
                    ["x", "y/1", "y/2"][*name as usize],
                    *kind,
                    *ct,
                    *start,
                    *dur,
                );
                s.trace_id = TraceId([n; 16]);
                if *err {
                    s.status = StatusCode::Error;
                }
                s
            })
            .collect();
        trace(spans)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn counts_equal_a_naive_scan(traces in prop::collection::vec(arb_trace(1), 1..6)) {
        let closed = run(RedMetricsConfig::default(), &traces);
        let mut node = 0u64;
        let mut node_err = 0u64;
        let mut server = 0u64;
        let mut calls = 0u64;
        let mut call_errors = 0u64;
        for t in &traces {
            for s in &t.spans {
                node += 1;
                node_err += u64::from(s.is_error());
                if matches!(s.kind, SpanKind::Server | SpanKind::Consumer) {
                    server += 1;
                }
                let wrapper = t.spans.iter().any(|c| {
                    c.parent_span_id == s.span_id && c.kind == SpanKind::Client && s.kind == SpanKind::Client
                        && c.service == s.service && c.call_type == s.call_type && !c.is_root()
                });
                if matches!(s.kind, SpanKind::Client | SpanKind::Producer) && s.call_type != CallType::Local && !wrapper {
                    calls += 1;
                    call_errors += u64::from(s.is_error());
                }
            }
        }
        let sum = |f: &dyn Fn(Metric) -> bool, errors: bool| -> u64 {
            closed.iter().flat_map(|c| &c.series).filter(|(k, _)| f(k.metric)).map(|(_, a)| if errors { a.errors } else { a.requests }).sum()
        };
        prop_assert_eq!(sum(&|m| m == Metric::ServiceNode, false), node);
        prop_assert_eq!(sum(&|m| m == Metric::ServiceNode, true), node_err);
        prop_assert_eq!(sum(&|m| m == Metric::ServiceServer, false), server);
        prop_assert_eq!(sum(&|m| matches!(m, Metric::ServiceCall(_)), false), calls);
        prop_assert_eq!(sum(&|m| matches!(m, Metric::ServiceCallError(_)), false), call_errors);
        for c in &closed {
            for (_, a) in &c.series {
                prop_assert_eq!(a.counts.iter().sum::<u64>(), a.requests, "bucket counts sum to requests");
                prop_assert!(a.min_ns <= a.max_ns);
            }
        }
    }

    #[test]
    fn exemplars_link_only_to_kept_traces_when_sampling(
        traces in prop::collection::vec((arb_trace(3), any::<bool>()), 1..8),
    ) {
        // Give each trace its own id so "kept" is per trace.
        let traces: Vec<(ClosedTrace, bool)> = traces
            .into_iter()
            .enumerate()
            .map(|(i, (mut t, kept))| {
                let id = TraceId([i as u8 + 1; 16]);
                t.trace_id = id;
                t.spans.iter_mut().for_each(|s| s.trace_id = id);
                (t, kept)
            })
            .collect();
        let mut op = RedMetrics::new(RedMetricsConfig::default());
        let mut merger = op.merger(1, true);
        for (t, kept) in &traces {
            op.add_trace(t, *kept);
        }
        let mut parts = Vec::new();
        op.flush(WATERMARK_END, &mut parts);
        parts.into_iter().for_each(|p| merger.add(p));
        let kept: std::collections::BTreeSet<TraceId> =
            traces.iter().filter(|(_, k)| *k).map(|(t, _)| t.trace_id).collect();
        for c in merger.on_watermark(0, WATERMARK_END) {
            for (_, a) in &c.series {
                for e in a.exemplars.iter().flatten() {
                    prop_assert!(kept.contains(&e.trace_id), "exemplar of a dropped trace");
                }
                // At most one exemplar per non-empty bucket.
                prop_assert!(a.exemplars.iter().flatten().count() <= a.counts.iter().filter(|c| **c > 0).count());
            }
        }
    }

    #[test]
    fn sharded_merge_equals_single_shard(traces in prop::collection::vec(arb_trace(2), 1..8), shards in 1usize..4) {
        let single = run(RedMetricsConfig::default(), &traces);
        let mut ops: Vec<RedMetrics> = (0..shards).map(|_| RedMetrics::new(RedMetricsConfig::default())).collect();
        let mut merger = ops[0].merger(shards, false);
        for (i, t) in traces.iter().enumerate() {
            ops[i % shards].add_trace(t, true);
        }
        let mut closed = Vec::new();
        for (i, op) in ops.iter_mut().enumerate() {
            let mut parts = Vec::new();
            op.flush(WATERMARK_END, &mut parts);
            for p in parts { merger.add(p); }
            closed.extend(merger.on_watermark(i, WATERMARK_END));
        }
        prop_assert_eq!(closed, single);
    }
}

/// `service tenant -> requests` of the `service_server` series.
fn by_tenant(closed: &[ClosedInterval]) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for ci in closed {
        for (k, a) in &ci.series {
            if k.metric == Metric::ServiceServer {
                *out.entry(format!("{} {}", k.service, k.tenant))
                    .or_default() += a.requests;
            }
        }
    }
    out
}

#[test]
fn the_tenant_dimension_splits_series_by_the_resources_tenant() {
    use CallType::*;
    let resource = |tenant: Option<&str>| {
        let mut b = crate::AttrsBuilder::default();
        b.push("service.name", crate::AttrValue::Str("a"), true);
        if let Some(t) = tenant {
            b.push("tenant", crate::AttrValue::Str(t), true);
        }
        b.finish()
    };
    let (team_a, team_b, none) = (
        resource(Some("team-a")),
        resource(Some("team-b")),
        resource(None),
    );
    let traces: Vec<ClosedTrace> = [&team_a, &team_b, &team_a, &none]
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut s = sp(1, 0, "a", "GET /", SpanKind::Server, Http, i as u64 * 10, 5);
            s.trace_id = TraceId([i as u8 + 1; 16]);
            s.resource_attrs = (*r).clone();
            trace(vec![s])
        })
        .collect();
    let with = RedMetricsConfig {
        dimensions: vec![Dimension::Operation, Dimension::Tenant],
        ..Default::default()
    };
    let got = by_tenant(&run(with, &traces));
    let want: BTreeMap<String, u64> = [("a ", 1), ("a team-a", 2), ("a team-b", 1)]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    assert_eq!(got, want);
    // Not a dimension unless listed: the defaults keep one series.
    let got = by_tenant(&run(RedMetricsConfig::default(), &traces));
    assert_eq!(got.into_iter().collect::<Vec<_>>(), [("a ".to_owned(), 4)]);
}
