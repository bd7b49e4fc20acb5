//! Every operator through the harness: empty batches, watermarks that never go back,
//! snapshot/restore at every step, and each operator's late data.

use std::sync::Arc;

use super::harness::{Outcome, Step, check, run};
use super::*;
use crate::HumanDuration;
use crate::WATERMARK_END;
use crate::metrics::MetricsReport;
use crate::model::{CallType, SpanId, SpanKind, StatusCode, Sym, TraceId};
use crate::red_metrics::{RedMetrics, RedMetricsConfig};
use crate::service_graph::{ServiceGraph, ServiceGraphConfig};
use crate::session_window::{SessionWindow, SessionWindowConfig};
use crate::span_filter::{SpanFilter, SpanFilterConfig, SpanMatch};
use crate::tail_sampling::{PolicyConfig, TailSampler, TailSamplingConfig};

const MS: u64 = 1_000_000;
const SEC: u64 = 1_000 * MS;
const T0: u64 = 1_767_225_600_000_000_000;

#[allow(clippy::too_many_arguments)]
fn span(
    trace: u8,
    id: u8,
    parent: u8,
    service: &str,
    name: &str,
    kind: SpanKind,
    call_type: CallType,
    start_ms: u64,
    dur_ms: u64,
) -> Span {
    Span {
        trace_id: TraceId([trace; 16]),
        span_id: SpanId([id, trace, 0, 0, 0, 0, 0, 1]),
        parent_span_id: if parent == 0 {
            SpanId::default()
        } else {
            SpanId([parent, trace, 0, 0, 0, 0, 0, 1])
        },
        start_ns: T0 + start_ms * MS,
        end_ns: T0 + (start_ms + dur_ms) * MS,
        service: Sym::new(service),
        instance: Sym::new(&format!("{service}-1")),
        name: Sym::new(name),
        kind,
        call_type,
        peer: if call_type == CallType::Db {
            Sym::new("postgres")
        } else {
            Sym::empty()
        },
        ..Default::default()
    }
}

/// Trace `t` starting at `at_ms`: frontend -> backend over RPC, backend -> a database;
/// every third trace fails in the backend.
fn trace_spans(t: u8, at_ms: u64) -> Vec<Span> {
    let mut db = span(
        t,
        4,
        3,
        "backend",
        "SELECT",
        SpanKind::Client,
        CallType::Db,
        at_ms + 3,
        20 + u64::from(t) * 7,
    );
    if t.is_multiple_of(3) {
        db.status = StatusCode::Error;
    }
    vec![
        db,
        span(
            t,
            2,
            1,
            "frontend",
            "Get",
            SpanKind::Client,
            CallType::Rpc,
            at_ms + 1,
            60 + u64::from(t) * 9,
        ),
        span(
            t,
            3,
            2,
            "backend",
            "Get",
            SpanKind::Server,
            CallType::Rpc,
            at_ms + 2,
            50 + u64::from(t) * 8,
        ),
        span(
            t,
            1,
            0,
            "frontend",
            "GET /",
            SpanKind::Server,
            CallType::Http,
            at_ms,
            80 + u64::from(t) * 10,
        ),
    ]
}

/// Spans of eight traces, one every 1.5 s, in batches of two traces, each followed by
/// a watermark one second behind the batch's latest end; then a late span of the
/// first trace, and the end.
fn span_script() -> Vec<Step> {
    let mut steps = Vec::new();
    for pair in 0..4u8 {
        let mut batch = Vec::new();
        for t in [pair * 2 + 1, pair * 2 + 2] {
            batch.extend(trace_spans(t, u64::from(t) * 1500));
        }
        let latest = batch.iter().map(|s| s.end_ns).max().unwrap_or(0);
        steps.push(Step::Batch(Batch::Spans(batch)));
        steps.push(Step::Watermark(latest - SEC));
    }
    steps.push(Step::Watermark(T0 + 20 * SEC));
    steps.push(Step::Batch(Batch::Spans(vec![span(
        1,
        9,
        1,
        "frontend",
        "late",
        SpanKind::Internal,
        CallType::Local,
        1500,
        5,
    )])));
    steps.push(Step::End);
    steps
}

fn window() -> Box<dyn Operator> {
    Box::new(SessionWindow::new(SessionWindowConfig {
        gap: HumanDuration::secs(2),
        ..SessionWindowConfig::default()
    }))
}

fn traces_of(o: &Outcome, port: usize) -> Vec<TraceRef> {
    o.outputs[port]
        .iter()
        .flat_map(|b| match b {
            Batch::Traces(t) => t.clone(),
            _ => Vec::new(),
        })
        .collect()
}

/// The closed traces of the span script, as a script of trace batches with the
/// window's forwarded watermarks, plus a trace that ends far behind them (late for the
/// metric operators) before the end.
fn trace_script() -> Vec<Step> {
    let w = run(&window, 2, &span_script()).unwrap();
    let traces = traces_of(&w, 0);
    let mut steps = Vec::new();
    for (i, chunk) in traces.chunks(3).enumerate() {
        steps.push(Step::Batch(Batch::Traces(chunk.to_vec())));
        let end = chunk
            .iter()
            .map(|t| t.trace.summary.end_ns)
            .max()
            .unwrap_or(0);
        steps.push(Step::Watermark(end + (i as u64 + 1) * SEC));
    }
    steps.push(Step::Watermark(T0 + 40 * SEC));
    let mut late = (*traces[0].trace).clone();
    late.trace_id = TraceId([99; 16]);
    for s in &mut late.spans {
        s.trace_id = late.trace_id;
    }
    steps.push(Step::Batch(Batch::Traces(vec![TraceRef {
        trace: Arc::new(late),
        decision: None,
    }])));
    steps.push(Step::End);
    steps
}

#[test]
fn session_window_passes_the_harness() {
    let o = check("session_window", &window, 2, &span_script());
    let traces = traces_of(&o, SessionWindow::TRACES);
    assert_eq!(traces.len(), 8, "one trace per generated trace id");
    assert!(traces.iter().all(|t| t.trace.spans.len() == 4));
    // The late span met a closed trace: it goes to `late_spans`, not into a trace.
    assert_eq!(o.items(SessionWindow::LATE_SPANS), 1);
    let Report::Sessions(m) = &o.report else {
        panic!("session_window reports its counters")
    };
    assert_eq!(m.late_spans(), 1);
    assert_eq!(m.traces_closed(), 8);
    // The window holds the watermark back while it buffers spans.
    assert!(o.forwarded.iter().any(|(input, f)| f < input));
}

#[test]
fn span_filter_passes_the_harness() {
    let make = || -> Box<dyn Operator> {
        Box::new(SpanFilter::new(&SpanFilterConfig {
            drop: vec![SpanMatch {
                service: Some("^backend$".into()),
                name: None,
            }],
        }))
    };
    let o = check("span_filter", &make, 1, &span_script());
    // 8 traces x 2 frontend spans, and the late frontend span.
    assert_eq!(o.items(0), 17);
    let Report::Filter(m) = &o.report else {
        panic!("span_filter reports its counters")
    };
    assert_eq!(m.dropped(), 16);
}

fn sampler() -> Box<dyn Operator> {
    Box::new(TailSampler::new(TailSamplingConfig {
        policies: vec![
            PolicyConfig::Error {
                name: "errors".into(),
            },
            // Rate limits run in two stages: tail_sampling's own tests cover them.
            PolicyConfig::Probabilistic {
                name: "baseline".into(),
                percentage: 50.0,
            },
        ],
    }))
}

#[test]
fn tail_sampling_passes_the_harness() {
    let o = check("tail_sampling", &sampler, 3, &trace_script());
    let all = traces_of(&o, TailSampler::TRACES);
    assert_eq!(all.len(), 9);
    assert!(all.iter().all(|t| t.decision.is_some()));
    let kept = traces_of(&o, TailSampler::KEPT);
    assert_eq!(kept, traces_of(&o, TailSampler::SPANS));
    assert!(kept.iter().all(TraceRef::kept));
    // Traces 3 and 6 fail; the baseline keeps some of the others, not all.
    assert!(
        kept.len() >= 2 && kept.len() < all.len(),
        "kept {}",
        kept.len()
    );
    let Report::Sampling(m) = &o.report else {
        panic!("tail_sampling reports its counters")
    };
    assert_eq!(m.traces_seen, 9);
    assert_eq!(m.traces_kept, kept.len() as u64);
}

#[test]
fn tail_sampling_skips_ports_nobody_reads() {
    let mut op = sampler();
    let mut out = Emitter::with_connected(vec![true, false, false]);
    let traces = traces_of(&run(&window, 2, &span_script()).unwrap(), 0);
    op.process(0, Batch::Traces(traces), &mut out).unwrap();
    assert_eq!(out.take(0).len(), 1);
    assert!(out.take(1).is_empty() && out.take(2).is_empty());
}

fn red() -> Box<dyn Operator> {
    Box::new(RedMetrics::new(RedMetricsConfig {
        interval: HumanDuration::secs(5),
        ..RedMetricsConfig::default()
    }))
}

fn graph() -> Box<dyn Operator> {
    Box::new(ServiceGraph::new(ServiceGraphConfig {
        interval: HumanDuration::secs(5),
        ..ServiceGraphConfig::default()
    }))
}

fn partials(o: &Outcome) -> Vec<crate::metrics::Partial> {
    o.outputs[0]
        .iter()
        .flat_map(|b| match b {
            Batch::Partials(p) => p.clone(),
            _ => Vec::new(),
        })
        .collect()
}

#[test]
fn metric_partials_pass_the_harness() {
    for (name, make) in [
        ("red_metrics", red as Make),
        ("service_graph", graph as Make),
    ] {
        let o = check(name, &make, 1, &trace_script());
        let parts = partials(&o);
        // Traces span T0+1.5s .. T0+12s: intervals of 5 s starting at T0, T0+5, T0+10.
        let starts: Vec<u64> = parts.iter().map(|p| (p.start_ns - T0) / SEC).collect();
        assert_eq!(starts, vec![0, 5, 10], "{name}");
        // Partials leave only once the watermark passed their interval's end.
        let Report::Metrics(m) = &o.report else {
            panic!("{name} reports metric counters")
        };
        // The late trace landed in a flushed interval: counted, not merged.
        assert!(m.late_observations > 0, "{name}: {m:?}");
    }
}

type Make = fn() -> Box<dyn Operator>;

#[test]
fn metrics_merge_passes_the_harness() {
    let red_run = run(&red, 1, &trace_script()).unwrap();
    let parts = partials(&red_run);
    // Two "shards": the partials split in two batches, the watermark after both.
    let mut script = Vec::new();
    for p in &parts {
        let (a, b) = p.series.split_at(p.series.len() / 2);
        for half in [a, b] {
            script.push(Step::Batch(Batch::Partials(vec![
                crate::metrics::Partial {
                    start_ns: p.start_ns,
                    series: half.to_vec(),
                },
            ])));
        }
        script.push(Step::Watermark(p.start_ns + 5 * SEC));
    }
    // A partial for an interval that already closed.
    script.push(Step::Batch(Batch::Partials(vec![parts[0].clone()])));
    script.push(Step::End);
    let make = || -> Box<dyn Operator> {
        let r = RedMetrics::new(RedMetricsConfig {
            interval: HumanDuration::secs(5),
            ..RedMetricsConfig::default()
        });
        Box::new(r.merge_operator(false))
    };
    let o = check("metrics merge", &make, 2, &script);
    let intervals: Vec<Arc<crate::metrics::ClosedInterval>> = o.outputs[0]
        .iter()
        .flat_map(|b| match b {
            Batch::Intervals(i) => i.intervals.clone(),
            _ => Vec::new(),
        })
        .collect();
    assert_eq!(intervals.len(), 3);
    // Both ports see the same intervals.
    assert_eq!(o.outputs[0], o.outputs[1]);
    let Report::Metrics(MetricsReport {
        intervals: n,
        late_observations,
        services,
        ..
    }) = &o.report
    else {
        panic!("the merge reports metric counters")
    };
    assert_eq!(*n, 3);
    assert!(*late_observations > 0);
    // 8 traces reached the frontend once each before the late partial.
    assert_eq!(services.get("frontend").map(|t| t.requests), Some(8));
}

/// `alerts` over the merge's intervals, checked by the harness (snapshot and restore
/// at every step, watermarks, empty batches).
#[test]
fn alerts_pass_the_harness() {
    use crate::alerts::{AlertRule, AlertValue, Alerts, AlertsConfig, Threshold};
    let merged = {
        let red_run = run(&red, 1, &trace_script()).unwrap();
        let mut merge = RedMetrics::new(RedMetricsConfig {
            interval: HumanDuration::secs(5),
            ..RedMetricsConfig::default()
        })
        .merge_operator(false);
        let mut out = Emitter::new(2);
        let mut script = Vec::new();
        for p in partials(&red_run) {
            let end = p.start_ns + 5 * SEC;
            merge
                .process(0, Batch::Partials(vec![p]), &mut out)
                .unwrap();
            merge.on_watermark(end, &mut out).unwrap();
            script.extend(out.take(0).into_iter().map(Step::Batch));
            out.take(1);
            script.push(Step::Watermark(end));
        }
        script.push(Step::End);
        script
    };
    let make = || -> Box<dyn Operator> {
        Box::new(Alerts::new(&AlertsConfig {
            rules: vec![AlertRule {
                name: "busy".into(),
                metric: "service_node".into(),
                value: Some(AlertValue::Requests),
                query: None,
                above: Some(Threshold::Number(0.0)),
                below: None,
                for_: None,
                keep_firing_for: None,
                min_requests: None,
                filter: Default::default(),
                group_by: None,
                labels: Default::default(),
            }],
            max_traces: 3,
        }))
    };
    let o = check("alerts", &make, 1, &merged);
    let events = o.outputs[0].iter().map(Batch::len).sum::<usize>();
    assert!(events > 0, "the rule fires");
    let Report::Alerts(m) = &o.report else {
        panic!("alerts report their counts")
    };
    assert!(m.fired() > 0);
}

#[test]
fn operators_refuse_batches_they_do_not_read() {
    let mut out = Emitter::new(3);
    for mut op in [window(), sampler(), red(), graph()] {
        let e = op.process(0, Batch::Partials(Vec::new()), &mut out);
        assert!(matches!(e, Err(OperatorError::Internal(_))), "{e:?}");
    }
}

#[test]
fn a_stateless_operator_refuses_state() {
    struct Noop;
    impl Operator for Noop {
        fn process(&mut self, _: usize, _: Batch, _: &mut Emitter) -> Result<(), OperatorError> {
            Ok(())
        }
    }
    assert!(Noop.restore(&[]).is_ok());
    assert!(matches!(Noop.restore(&[1]), Err(OperatorError::State(_))));
}

#[test]
fn restoring_garbage_is_an_error_not_a_panic() {
    for mut op in [window(), sampler(), red(), graph()] {
        assert!(matches!(
            op.restore(&[0xff, 0x00, 0x13]),
            Err(OperatorError::State(_))
        ));
    }
}

#[test]
fn shapes_name_their_ports_once() {
    for shape in [
        SessionWindow::SHAPE,
        SpanFilter::SHAPE,
        TailSampler::SHAPE,
        RedMetrics::SHAPE,
        ServiceGraph::SHAPE,
        crate::alerts::Alerts::SHAPE,
    ] {
        let mut names: Vec<_> = shape.outputs.iter().map(|p| p.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), shape.outputs.len(), "{}", shape.kind);
        assert!(shape.default_port().is_some());
    }
    assert_eq!(
        TailSampler::SHAPE.port("kept").map(|(i, _)| i),
        Some(TailSampler::KEPT)
    );
    assert_eq!(WATERMARK_END, u64::MAX);
}
