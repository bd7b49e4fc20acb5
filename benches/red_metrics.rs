//! `red_metrics`, `service_graph` and exemplar selection over closed traces of the
//! generated fleet. Traces are built (decode + session_window) outside the timed loop.

mod common;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use spanflow::testkit::generator::GeneratorConfig;
use spanflow_operators::WATERMARK_END;
use spanflow_operators::metrics::{Exemplar, SeriesAgg};
use spanflow_operators::red_metrics::{RedMetrics, RedMetricsConfig};
use spanflow_operators::service_graph::{ServiceGraph, ServiceGraphConfig};
use spanflow_operators::session_window::{
    ClosedTrace, SessionOutput, SessionWindow, SessionWindowConfig,
};

fn traces(n: u64) -> (Vec<ClosedTrace>, u64) {
    let input = common::generated_spans(GeneratorConfig {
        traces: n,
        ..Default::default()
    });
    let spans = input.len() as u64;
    let mut w = SessionWindow::new(SessionWindowConfig::default());
    let mut so = SessionOutput::default();
    w.process(input, &mut so);
    w.on_watermark(WATERMARK_END, &mut so);
    (so.closed, spans)
}

fn bench_metrics(c: &mut Criterion) {
    let (input, spans) = traces(5_000);
    let mut group = c.benchmark_group("analytics");
    group.throughput(Throughput::Elements(spans));
    for max_series in [100, 10_000] {
        group.bench_with_input(
            BenchmarkId::new("red_metrics", max_series),
            &input,
            |b, input| {
                b.iter(|| {
                    let cfg = RedMetricsConfig {
                        max_series,
                        ..Default::default()
                    };
                    let mut op = RedMetrics::new(cfg);
                    let mut merger = op.merger(1, false);
                    for t in input {
                        op.add_trace(t, true);
                    }
                    let mut parts = Vec::new();
                    op.flush(WATERMARK_END, &mut parts);
                    parts.into_iter().for_each(|p| merger.add(p));
                    merger.on_watermark(0, WATERMARK_END)
                })
            },
        );
    }
    group.bench_with_input(BenchmarkId::new("service_graph", 0), &input, |b, input| {
        b.iter(|| {
            let mut op = ServiceGraph::new(ServiceGraphConfig::default());
            for t in input {
                op.add_trace(t, true);
            }
            let mut parts = Vec::new();
            op.flush(WATERMARK_END, &mut parts);
            parts
        })
    });
    group.finish();

    // Exemplar selection alone: one observation per span into one series.
    let mut group = c.benchmark_group("exemplars");
    group.throughput(Throughput::Elements(spans));
    let obs: Vec<(usize, Exemplar)> = input
        .iter()
        .flat_map(|t| {
            t.spans.iter().map(|s| {
                let e = Exemplar {
                    trace_id: t.trace_id,
                    span_id: s.span_id,
                    value_ns: s.duration_ns(),
                    timestamp_ns: s.end_ns,
                    error: s.is_error(),
                    sampled: s.trace_id.hash64() % 10 == 0,
                };
                ((s.duration_ns() / 1_000_000).min(14) as usize, e)
            })
        })
        .collect();
    group.bench_function("observe", |b| {
        b.iter(|| {
            let mut agg = SeriesAgg::new(15);
            for (bucket, e) in &obs {
                agg.observe(*bucket, e.value_ns, false, *e);
            }
            agg
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = bench_metrics
}
criterion_main!(benches);
