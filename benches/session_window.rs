//! `session_window` on generated spans: batches of spans followed by a watermark, as the
//! runtime feeds it. Sweeps batch size and trace rate (open-trace cardinality).

mod common;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use spanflow::testkit::generator::GeneratorConfig;
use spanflow_operators::session_window::{
    GapCondition, GapRule, SessionOutput, SessionWindow, SessionWindowConfig,
};
use spanflow_operators::{HumanDuration, Span, WATERMARK_END};

fn spans(traces_per_second: f64) -> Vec<Span> {
    common::generated_spans(GeneratorConfig {
        traces: 10_000,
        traces_per_second,
        ..Default::default()
    })
}

fn config() -> SessionWindowConfig {
    SessionWindowConfig {
        gap: HumanDuration::secs(10),
        gap_rules: vec![
            GapRule {
                when: GapCondition {
                    has_async: Some(true),
                    ..Default::default()
                },
                gap: HumanDuration::secs(30),
            },
            GapRule {
                when: GapCondition {
                    root_ended: Some(true),
                    ..Default::default()
                },
                gap: HumanDuration::secs(3),
            },
        ],
        ..Default::default()
    }
}

/// Returns the outputs so that criterion drops them outside the measurement: freeing
/// closed traces is the downstream consumer's cost, not the window's.
fn run(batches: Vec<Vec<Span>>) -> SessionOutput {
    let mut w = SessionWindow::new(config());
    let mut out = SessionOutput::default();
    let mut max_seen = 0u64;
    for chunk in batches {
        for s in &chunk {
            max_seen = max_seen.max(s.end_ns);
        }
        w.process(chunk, &mut out);
        w.on_watermark(max_seen.saturating_sub(5_000_000_001), &mut out);
    }
    w.on_watermark(WATERMARK_END, &mut out);
    out
}

fn bench_session_window(c: &mut Criterion) {
    let mut group = c.benchmark_group("session_window");
    for tps in [200.0, 5_000.0] {
        let input = spans(tps);
        group.throughput(Throughput::Elements(input.len() as u64));
        for batch in [512, 4096] {
            let id = BenchmarkId::new(format!("traces_per_s_{tps}"), batch);
            group.bench_with_input(id, &input, |b, input| {
                b.iter_batched(
                    || {
                        input
                            .chunks(batch)
                            .map(<[Span]>::to_vec)
                            .collect::<Vec<_>>()
                    },
                    run,
                    criterion::BatchSize::LargeInput,
                )
            });
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = bench_session_window
}
criterion_main!(benches);
