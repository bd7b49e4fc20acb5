use super::*;
use crate::metrics::{Buckets, Exemplar};
use crate::model::SpanId;
use crate::operator::IntervalBatch;

const S: u64 = 1_000_000_000;
const T0: u64 = 1_767_225_600 * S;
/// The intervals' length.
const G: u64 = 10 * S;

fn buckets() -> Arc<Buckets> {
    Arc::new(Buckets::new(&[
        HumanDuration(std::time::Duration::from_millis(100)),
        HumanDuration(std::time::Duration::from_millis(500)),
        HumanDuration(std::time::Duration::from_secs(2)),
    ]))
}

fn key(service: &str, operation: &str) -> SeriesKey {
    SeriesKey {
        service: Sym::new(service),
        operation: Sym::new(operation),
        call_type: CallType::Http,
        metric: Metric::ServiceServer,
        ..SeriesKey::new(Metric::ServiceServer)
    }
}

/// A series with `requests` requests, `errors` of them failed; every request in
/// bucket `bucket`, whose exemplar is trace `trace` (kept unless `trace` is 0).
fn agg(requests: u64, errors: u64, bucket: usize, trace: u8) -> SeriesAgg {
    let mut a = SeriesAgg::new(4);
    a.requests = requests;
    a.errors = errors;
    a.counts[bucket] = requests;
    if trace != 0 {
        a.exemplars[bucket] = Some(Exemplar {
            trace_id: TraceId([trace; 16]),
            span_id: SpanId([trace; 8]),
            value_ns: (bucket as u64 + 1) * 100_000_000,
            timestamp_ns: T0,
            error: errors > 0,
            sampled: true,
        });
    }
    a
}

fn interval(i: u64, series: Vec<(SeriesKey, SeriesAgg)>) -> Arc<ClosedInterval> {
    let mut series = series;
    series.sort_by_key(|s| s.0);
    Arc::new(ClosedInterval {
        start_ns: T0 + i * G,
        end_ns: T0 + (i + 1) * G,
        series,
        folded_series: 0,
    })
}

fn rule(name: &str) -> AlertRule {
    AlertRule {
        name: name.into(),
        metric: "service_server".into(),
        value: Some(AlertValue::ErrorRate),
        query: None,
        above: Some(Threshold::Number(0.1)),
        below: None,
        for_: None,
        keep_firing_for: None,
        min_requests: None,
        filter: BTreeMap::new(),
        group_by: None,
        labels: BTreeMap::new(),
    }
}

fn secs(s: u64) -> Option<HumanDuration> {
    Some(HumanDuration(std::time::Duration::from_secs(s)))
}

/// Runs the operator over intervals, one batch each followed by the watermark at its
/// end; the events, in order.
fn run(config: &AlertsConfig, intervals: Vec<Arc<ClosedInterval>>) -> Vec<AlertEvent> {
    run_op(Alerts::new(config), intervals)
}

fn run_op(mut op: Alerts, intervals: Vec<Arc<ClosedInterval>>) -> Vec<AlertEvent> {
    let mut out = Emitter::new(1);
    let mut events = Vec::new();
    let mut take = |out: &mut Emitter| {
        for b in out.take(0) {
            let Batch::Alerts(v) = b else { panic!("{b:?}") };
            events.extend(v);
        }
    };
    for ci in intervals {
        let end = ci.end_ns;
        let batch = Batch::Intervals(IntervalBatch {
            buckets: buckets(),
            intervals: vec![ci],
            max_series: 100,
        });
        op.process(0, batch, &mut out).unwrap();
        take(&mut out);
        op.on_watermark(end - 1, &mut out).unwrap();
        take(&mut out);
    }
    events
}

fn summary(events: &[AlertEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            format!(
                "{} {} {} at={} start={} end={:?}",
                e.rule,
                e.state.as_str(),
                e.key.operation,
                (e.at_ns - T0) / S,
                (e.starts_at_ns - T0) / S,
                e.ends_at_ns.map(|t| (t - T0) / S)
            )
        })
        .collect()
}

fn config(rules: Vec<AlertRule>) -> AlertsConfig {
    AlertsConfig {
        rules,
        max_traces: 5,
    }
}

#[test]
fn an_error_burst_fires_once_after_for_and_resolves_after_it_ends() {
    let mut r = rule("checkout-errors");
    r.for_ = secs(20);
    let healthy = |i| interval(i, vec![(key("shop", "POST /checkout"), agg(100, 1, 0, 0))]);
    let burst = |i, t| interval(i, vec![(key("shop", "POST /checkout"), agg(100, 30, 1, t))]);
    let events = run(
        &config(vec![r]),
        vec![
            healthy(0),
            burst(1, 7),
            burst(2, 8),
            burst(3, 9),
            burst(4, 9),
            healthy(5),
            healthy(6),
        ],
    );
    assert_eq!(
        summary(&events),
        [
            "checkout-errors firing POST /checkout at=30 start=10 end=None",
            "checkout-errors resolved POST /checkout at=60 start=10 end=Some(60)",
        ]
    );
    let fired = &events[0];
    assert!((fired.value - 0.3).abs() < 1e-9, "{}", fired.value);
    assert_eq!(fired.threshold, 0.1);
    assert_eq!(
        fired.trace_ids,
        [TraceId([7; 16]), TraceId([8; 16])],
        "the exemplars of the intervals it held in, best first"
    );
    assert_eq!(events[1].trace_ids.len(), 3);
}

#[test]
fn a_flapping_series_does_not_flap_alerts() {
    let mut r = rule("flappy");
    r.for_ = secs(20);
    r.keep_firing_for = secs(20);
    let ok = |i| interval(i, vec![(key("shop", "GET /"), agg(100, 0, 0, 0))]);
    let bad = |i| interval(i, vec![(key("shop", "GET /"), agg(100, 50, 0, 3))]);
    // Holds every other interval: never 20 s in a row.
    let flapping: Vec<_> = (0..10)
        .map(|i| if i % 2 == 0 { bad(i) } else { ok(i) })
        .collect();
    assert_eq!(
        summary(&run(&config(vec![r.clone()]), flapping)),
        Vec::<String>::new()
    );
    // Once firing, single good intervals do not resolve it (keep_firing_for: 20 s).
    let mut seq = vec![bad(0), bad(1)];
    seq.extend((2..10).map(|i| if i % 2 == 0 { ok(i) } else { bad(i) }));
    seq.extend([ok(10), ok(11), ok(12)]);
    assert_eq!(
        summary(&run(&config(vec![r]), seq)),
        [
            "flappy firing GET / at=20 start=0 end=None",
            "flappy resolved GET / at=120 start=0 end=Some(120)",
        ]
    );
}

#[test]
fn idle_series_below_min_requests_do_not_fire() {
    let mut r = rule("errors");
    r.min_requests = Some(20);
    let one_failed = |i| interval(i, vec![(key("shop", "GET /rare"), agg(1, 1, 0, 4))]);
    assert!(run(&config(vec![r.clone()]), vec![one_failed(0), one_failed(1)]).is_empty());
    let busy = interval(2, vec![(key("shop", "GET /rare"), agg(40, 20, 0, 4))]);
    assert_eq!(run(&config(vec![r]), vec![one_failed(0), busy]).len(), 1);
}

#[test]
fn an_alert_resolves_on_the_watermark_when_no_interval_comes() {
    let r = rule("errors");
    let mut op = Alerts::new(&config(vec![r]));
    let mut out = Emitter::new(1);
    let bad = interval(0, vec![(key("shop", "GET /"), agg(10, 5, 0, 2))]);
    op.process(
        0,
        Batch::Intervals(IntervalBatch {
            buckets: buckets(),
            intervals: vec![bad],
            max_series: 100,
        }),
        &mut out,
    )
    .unwrap();
    assert_eq!(out.take(0).len(), 1, "fired");
    // Nothing arrives; once the watermark passes the next interval's end, it resolves
    // as it would have on an interval without the series.
    op.on_watermark(T0 + 2 * G - 1, &mut out).unwrap();
    assert!(out.take(0).is_empty());
    op.on_watermark(T0 + 2 * G, &mut out).unwrap();
    let Some(Batch::Alerts(v)) = out.take(0).into_iter().next() else {
        panic!("resolved")
    };
    assert_eq!(v[0].state, AlertState::Resolved);
    assert_eq!(v[0].ends_at_ns, Some(T0 + 2 * G));
    let via_interval = run(
        &config(vec![rule("errors")]),
        vec![
            interval(0, vec![(key("shop", "GET /"), agg(10, 5, 0, 2))]),
            interval(1, vec![(key("shop", "other"), agg(10, 0, 0, 0))]),
        ],
    );
    assert_eq!(via_interval[1], v[0]);
}

#[test]
fn groups_sum_their_series_and_latency_rules_read_the_histogram() {
    let mut r = rule("slow-db");
    r.metric = "service_server".into();
    r.value = Some(AlertValue::P99);
    r.above = Some(Threshold::Duration(HumanDuration(
        std::time::Duration::from_millis(400),
    )));
    r.group_by = Some(vec![Label::Service]);
    r.labels = [("severity".to_owned(), "page".to_owned())].into();
    // One operation fast, one slow: p99 of the service's sum is in the slow bucket.
    let ci = interval(
        0,
        vec![
            (key("db-api", "fast"), agg(90, 0, 0, 0)),
            (key("db-api", "slow"), agg(10, 0, 2, 5)),
        ],
    );
    let events = run(&config(vec![r]), vec![ci]);
    assert_eq!(
        events.len(),
        1,
        "one alert for the service, not per operation"
    );
    let e = &events[0];
    assert_eq!(e.key.service.as_str(), "db-api");
    assert_eq!(e.key.operation.as_str(), "", "not grouped by operation");
    assert_eq!(e.requests, 100);
    assert!(e.value > 0.4 && e.value <= 2.0, "{}", e.value);
    assert_eq!(e.threshold, 0.4);
    assert_eq!(e.trace_ids, [TraceId([5; 16])]);
    assert_eq!(e.labels, [("severity".to_owned(), "page".to_owned())]);
}

#[test]
fn trace_ids_are_kept_traces_errors_first_then_the_slowest() {
    let mut a = agg(100, 20, 0, 1);
    // A slower bucket with a kept error-free trace, a slowest one not kept.
    a.counts[2] = 5;
    a.exemplars[2] = Some(Exemplar {
        trace_id: TraceId([2; 16]),
        span_id: SpanId([2; 8]),
        value_ns: 1_500_000_000,
        timestamp_ns: T0,
        error: false,
        sampled: true,
    });
    a.counts[3] = 1;
    a.exemplars[3] = Some(Exemplar {
        trace_id: TraceId([3; 16]),
        span_id: SpanId([3; 8]),
        value_ns: 9_000_000_000,
        timestamp_ns: T0,
        error: true,
        sampled: false,
    });
    let events = run(
        &config(vec![rule("errors")]),
        vec![interval(0, vec![(key("shop", "GET /"), a)])],
    );
    assert_eq!(events[0].trace_ids, [TraceId([1; 16]), TraceId([2; 16])]);
}

#[test]
fn filters_and_metrics_pick_the_series() {
    let mut r = rule("only-checkout");
    r.filter = [(Label::Operation, "POST /checkout".to_owned())].into();
    let bad = |op: &str| (key("shop", op), agg(10, 9, 0, 1));
    let events = run(
        &config(vec![r]),
        vec![interval(0, vec![bad("POST /checkout"), bad("GET /")])],
    );
    assert_eq!(
        summary(&events),
        ["only-checkout firing POST /checkout at=10 start=0 end=None"]
    );
    let mut db = rule("db");
    db.metric = "service_call_db".into();
    assert!(run(&config(vec![db]), vec![interval(0, vec![bad("GET /")])]).is_empty());
}

#[test]
fn a_restored_operator_goes_on_as_the_stopped_one_would() {
    let mut r = rule("errors");
    r.for_ = secs(10);
    let cfg = config(vec![r]);
    let bad = |i| interval(i, vec![(key("shop", "GET /"), agg(10, 5, 0, 2))]);
    let ok = |i| interval(i, vec![(key("shop", "GET /"), agg(10, 0, 0, 0))]);
    let all = run(&cfg, vec![bad(0), bad(1), ok(2)]);
    let mut first = Alerts::new(&cfg);
    let mut out = Emitter::new(1);
    first
        .process(
            0,
            Batch::Intervals(IntervalBatch {
                buckets: buckets(),
                intervals: vec![bad(0)],
                max_series: 100,
            }),
            &mut out,
        )
        .unwrap();
    let state = first.snapshot().unwrap();
    let mut second = Alerts::new(&cfg);
    second.restore(&state).unwrap();
    let mut rest = Vec::new();
    for ci in [bad(1), ok(2)] {
        second
            .process(
                0,
                Batch::Intervals(IntervalBatch {
                    buckets: buckets(),
                    intervals: vec![ci],
                    max_series: 100,
                }),
                &mut out,
            )
            .unwrap();
        for b in out.take(0) {
            let Batch::Alerts(v) = b else { panic!() };
            rest.extend(v);
        }
    }
    assert_eq!(rest, all);
    assert_eq!(second.metrics().fired(), 1);
    assert_eq!(second.metrics().fired_with_trace(), 1);
}

#[test]
fn rules_that_cannot_work_are_reported_where_they_are() {
    let mut unknown = rule("a");
    unknown.metric = "service_call_dbx".into();
    let mut latency_number = rule("b");
    latency_number.value = Some(AlertValue::P99);
    let mut rate_duration = rule("c");
    rate_duration.above = Some(Threshold::Duration(HumanDuration(
        std::time::Duration::from_millis(5),
    )));
    let mut too_big = rule("d");
    too_big.above = Some(Threshold::Number(5.0));
    let mut none = rule("e");
    none.above = None;
    let mut own_label = rule("a");
    own_label.labels = [("service".to_owned(), "x".to_owned())].into();
    let issues = config(vec![
        unknown,
        latency_number,
        rate_duration,
        too_big,
        none,
        own_label,
    ])
    .validate();
    let got: Vec<(String, &str)> = issues
        .iter()
        .map(|i| (i.path.join("."), i.message.split(':').next().unwrap_or("")))
        .collect();
    assert_eq!(
        got.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>(),
        [
            "rules.0.metric",
            "rules.1.above",
            "rules.2.above",
            "rules.3.above",
            "rules.4.value",
            "rules.5.name",
            "rules.5.labels.service",
        ],
        "{issues:?}"
    );
    assert!(
        issues[0].message.contains("service_call_db,"),
        "{}",
        issues[0].message
    );
    assert!(
        issues[1].message.contains("latency"),
        "{}",
        issues[1].message
    );
    assert!(config(vec![rule("ok")]).validate().is_empty());
}

/// A query rule's condition as a closure over the interval's series (what the runtime's
/// SQL computes over their rows).
#[derive(Debug)]
struct Model {
    labels: Vec<Label>,
    #[allow(clippy::type_complexity)]
    rows: fn(&ClosedInterval) -> Vec<(Vec<String>, f64)>,
}

impl Condition for Model {
    fn labels(&self) -> &[Label] {
        &self.labels
    }
    fn evaluate(
        &mut self,
        interval: &ClosedInterval,
        _bounds: &[f64],
    ) -> Result<Vec<(Vec<String>, f64)>, OperatorError> {
        Ok((self.rows)(interval))
    }
}

/// `SELECT service, sum(errors) / sum(requests) AS value ... GROUP BY service`.
fn error_rate_per_service(ci: &ClosedInterval) -> Vec<(Vec<String>, f64)> {
    let mut by: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for (k, a) in &ci.series {
        if k.metric == Metric::ServiceServer {
            let e = by.entry(k.service.as_str().to_owned()).or_default();
            e.0 += a.requests;
            e.1 += a.errors;
        }
    }
    by.into_iter()
        .map(|(s, (r, e))| (vec![s], e as f64 / r as f64))
        .collect()
}

fn query_rule(name: &str) -> AlertRule {
    AlertRule {
        value: None,
        query: Some("SELECT service, sum(errors) / sum(requests) AS value ...".into()),
        ..rule(name)
    }
}

#[test]
fn a_query_rule_alerts_as_the_same_built_in_rule_does() {
    let mut built_in = rule("per-service");
    built_in.group_by = Some(vec![Label::Service]);
    built_in.for_ = secs(10);
    let mut by_query = query_rule("per-service");
    by_query.for_ = secs(10);
    let series = |i: u64, errors: u64, t: u8| {
        interval(
            i,
            vec![
                (key("shop", "GET /"), agg(50, errors, 0, t)),
                (key("shop", "POST /pay"), agg(50, errors, 1, t + 1)),
                (key("cart", "GET /"), agg(10, 0, 0, 40)),
            ],
        )
    };
    let input = || {
        vec![
            series(0, 0, 1),
            series(1, 20, 10),
            series(2, 20, 12),
            series(3, 20, 14),
            series(4, 0, 0),
            series(5, 0, 0),
        ]
    };
    let expected = run(&config(vec![built_in]), input());
    let op = Alerts::new(&config(vec![by_query])).with_conditions(|_| {
        Box::new(Model {
            labels: vec![Label::Service],
            rows: error_rate_per_service,
        })
    });
    let got = run_op(op, input());
    assert_eq!(summary(&got), summary(&expected));
    assert_eq!(got.len(), 2, "{:?}", summary(&got));
    for (g, e) in got.iter().zip(&expected) {
        assert_eq!(g.value_kind, AlertValue::Sql);
        assert_eq!(g.key.service.as_str(), "shop");
        assert_eq!(g.group, [Label::Service]);
        assert_eq!((g.value, g.requests), (e.value, e.requests));
        assert_eq!(g.trace_ids, e.trace_ids, "the exemplars of `shop`'s series");
        assert!(!g.trace_ids.contains(&TraceId([40; 16])), "not `cart`'s");
    }
}

#[test]
fn a_query_rules_duplicate_and_null_rows_do_not_depend_on_their_order() {
    fn rows(_: &ClosedInterval) -> Vec<(Vec<String>, f64)> {
        vec![
            (vec!["shop".into()], 0.5),
            (vec!["shop".into()], 0.9),
            (vec!["shop".into()], 0.2),
            (vec!["cart".into()], f64::NAN),
        ]
    }
    let op = Alerts::new(&config(vec![query_rule("q")])).with_conditions(|_| {
        Box::new(Model {
            labels: vec![Label::Service],
            rows,
        })
    });
    let events = run_op(
        op,
        vec![interval(0, vec![(key("cart", "GET /"), agg(10, 0, 0, 2))])],
    );
    assert_eq!(events.len(), 1, "{:?}", summary(&events));
    assert_eq!(events[0].value, 0.9, "the row furthest above the threshold");
    assert_eq!(events[0].requests, 0, "no `shop` series in the interval");
    assert!(events[0].trace_ids.is_empty());
}

#[test]
fn a_query_rule_without_its_engine_or_with_a_bad_call_type_fails_the_step() {
    let batch = || {
        Batch::Intervals(IntervalBatch {
            buckets: buckets(),
            intervals: vec![interval(0, vec![(key("shop", "GET /"), agg(1, 1, 0, 0))])],
            max_series: 100,
        })
    };
    let mut op = Alerts::new(&config(vec![query_rule("q")]));
    let err = op.process(0, batch(), &mut Emitter::new(1)).unwrap_err();
    assert!(err.to_string().contains("no SQL engine"), "{err}");
    fn rows(_: &ClosedInterval) -> Vec<(Vec<String>, f64)> {
        vec![(vec!["carrier-pigeon".into()], 1.0)]
    }
    let mut op = Alerts::new(&config(vec![query_rule("q")])).with_conditions(|_| {
        Box::new(Model {
            labels: vec![Label::CallType],
            rows,
        })
    });
    let err = op.process(0, batch(), &mut Emitter::new(1)).unwrap_err();
    assert!(err.to_string().contains("carrier-pigeon"), "{err}");
}

#[test]
fn query_rules_that_cannot_work_are_reported_where_they_are() {
    let mut both = query_rule("a");
    both.value = Some(AlertValue::ErrorRate);
    let mut neither = rule("b");
    neither.value = None;
    let mut grouped = query_rule("c");
    grouped.group_by = Some(vec![Label::Service]);
    let mut no_threshold = query_rule("d");
    no_threshold.above = None;
    let mut empty = query_rule("e");
    empty.query = Some("  ".into());
    let mut infinite = query_rule("f");
    infinite.above = Some(Threshold::Number(f64::INFINITY));
    let mut latency = query_rule("g");
    latency.above = Some(Threshold::Duration(HumanDuration(
        std::time::Duration::from_millis(250),
    )));
    let issues = config(vec![
        both,
        neither,
        grouped,
        no_threshold,
        empty,
        infinite,
        latency,
    ])
    .validate();
    let got: Vec<String> = issues.iter().map(|i| i.path.join(".")).collect();
    assert_eq!(
        got,
        [
            "rules.0.query",
            "rules.1.value",
            "rules.2.group_by",
            "rules.3.query",
            "rules.4.query",
            "rules.5.above",
        ],
        "{issues:?}"
    );
    assert!(
        issues[3].message.contains("threshold"),
        "{}",
        issues[3].message
    );
}
