//! `tail_sampling` on generated closed traces (~25 spans each) with a typical policy
//! set: errors, slow db calls, slow traces, a per-endpoint rate limit, a span
//! attribute and a probabilistic baseline, both stages: the shard's sampler (decides,
//! offers to the rate-limit windows, holds) and the merge (verdicts), then the held
//! traces released. Sweeps the number of distinct root endpoints, which is what the
//! rate limits' windows grow with (with 5,000 most traces are alone in their endpoint's
//! second and the rate limit keeps them).
//!
//! Input comes from a small seeded generator built on the public model types, so the
//! bench measures the operator only (no decoding, no session window).

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use spanflow_operators::session_window::{CloseReason, ClosedTrace, TraceSummary};
use std::sync::Arc;

use spanflow_operators::operator::{Batch, Emitter, Operator, TraceRef};
use spanflow_operators::tail_sampling::{PolicyConfig, TailSampler, TailSamplingConfig};
use spanflow_operators::{
    AttrValue, AttrsBuilder, CallType, HumanDuration, Span, SpanId, SpanKind, StatusCode, Sym,
    TraceId,
};

const MS: u64 = 1_000_000;
const S: u64 = 1_000_000_000;
const TRACES: usize = 10_000;
/// Traces per second of event time in the generated stream.
const TRACES_PER_S: u64 = 500;

/// splitmix64: deterministic, dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// A long-tailed duration: mostly around `typical`, sometimes ten times more.
    fn duration(&mut self, typical: u64) -> u64 {
        let base = typical / 2 + self.below(typical);
        if self.below(50) == 0 { base * 10 } else { base }
    }
}

const CHILD_TYPES: [CallType; 6] = [
    CallType::Http,
    CallType::Rpc,
    CallType::Db,
    CallType::Cache,
    CallType::Mq,
    CallType::Local,
];

/// `n` closed traces over `endpoints` distinct (service, operation) roots.
fn traces(n: usize, endpoints: u64, seed: u64) -> Vec<ClosedTrace> {
    let mut rng = Rng(seed);
    let services: Vec<Sym> = (0..40).map(|i| Sym::new(&format!("svc-{i}"))).collect();
    let mut attrs = AttrsBuilder::default();
    // One resource attribute buffer per service, shared by its spans as decoded spans do.
    let resources: Vec<_> = (0..services.len())
        .map(|i| {
            attrs.push("deployment.environment", AttrValue::Str("prod"), true);
            attrs.push("host.name", AttrValue::Str(&format!("node-{i}")), true);
            attrs.finish()
        })
        .collect();
    let t0 = 1_700_000_000 * S;
    (0..n)
        .map(|i| {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&rng.next().to_le_bytes());
            id[8..].copy_from_slice(&rng.next().to_le_bytes());
            let trace_id = TraceId(id);
            let endpoint = rng.below(endpoints);
            let root_service = (endpoint % services.len() as u64) as usize;
            let root_op = Sym::new(&format!("GET /api/{endpoint}"));
            let start = t0 + i as u64 * S / TRACES_PER_S;
            let root_dur = rng.duration(80 * MS);
            let span_count = 20 + rng.below(11) as usize;
            let mut spans = Vec::with_capacity(span_count);
            let mut root = Span {
                trace_id,
                span_id: SpanId([1, 0, 0, 0, 0, 0, 0, 1]),
                start_ns: start,
                end_ns: start + root_dur,
                service: services[root_service],
                name: root_op,
                kind: SpanKind::Server,
                call_type: CallType::Http,
                http_status: 200,
                resource_attrs: resources[root_service].clone(),
                ..Default::default()
            };
            if rng.below(100) < 2 {
                root.http_status = 503;
            }
            // A request attribute the `vip` policy looks for; gold is rare.
            let tier = match rng.below(100) {
                0..3 => "gold",
                3..30 => "silver",
                _ => "bronze",
            };
            attrs.push("tenant.tier", AttrValue::Str(tier), false);
            attrs.push("http.route", AttrValue::Str("/api/{id}"), false);
            root.attrs = attrs.finish();
            spans.push(root);
            for c in 1..span_count {
                let svc = rng.below(services.len() as u64) as usize;
                let call_type = CHILD_TYPES[rng.below(CHILD_TYPES.len() as u64) as usize];
                let dur = rng.duration(match call_type {
                    CallType::Db => 30 * MS,
                    CallType::Cache => MS,
                    _ => 10 * MS,
                });
                let offset = rng.below(root_dur.max(1));
                attrs.push("http.route", AttrValue::Str("/api/{id}"), false);
                spans.push(Span {
                    trace_id,
                    span_id: SpanId([c as u8, (c >> 8) as u8, 0, 0, 0, 0, 0, 2]),
                    parent_span_id: SpanId([1, 0, 0, 0, 0, 0, 0, 1]),
                    start_ns: start + offset,
                    end_ns: start + offset + dur,
                    service: services[svc],
                    name: Sym::new("child"),
                    kind: SpanKind::Client,
                    status: if rng.below(500) == 0 {
                        StatusCode::Error
                    } else {
                        StatusCode::Unset
                    },
                    call_type,
                    attrs: attrs.finish(),
                    resource_attrs: resources[svc].clone(),
                    ..Default::default()
                });
            }
            let summary = TraceSummary {
                root_service: services[root_service],
                root_operation: root_op,
                has_root: true,
                start_ns: spans.iter().map(|s| s.start_ns).min().unwrap_or(start),
                end_ns: spans.iter().map(|s| s.end_ns).max().unwrap_or(start),
                span_count: spans.len() as u32,
                error_count: spans.iter().filter(|s| s.is_error()).count() as u32,
                close_reason: CloseReason::Gap,
                fragment: 0,
                closes_at: spans.iter().map(|s| s.end_ns).max().unwrap_or(start),
            };
            ClosedTrace::new(trace_id, spans, summary)
        })
        .collect()
}

fn config() -> TailSamplingConfig {
    TailSamplingConfig {
        policies: vec![
            PolicyConfig::Error {
                name: "errors".into(),
            },
            PolicyConfig::SlowSpan {
                name: "slow-db".into(),
                call_type: Some(CallType::Db),
                threshold: HumanDuration::millis(200),
            },
            PolicyConfig::TraceDuration {
                name: "slow-traces".into(),
                threshold: HumanDuration::secs(1),
            },
            PolicyConfig::EndpointRateLimit {
                name: "per-endpoint".into(),
                traces_per_second: 1.0,
            },
            PolicyConfig::Attribute {
                name: "vip".into(),
                key: "tenant.tier".into(),
                values: vec!["gold".into()],
                prefixes: vec![],
                suffixes: vec![],
                contains: vec![],
            },
            PolicyConfig::Probabilistic {
                name: "baseline".into(),
                percentage: 5.0,
            },
        ],
    }
}

/// Returns the decided traces so criterion drops them outside the measurement.
fn run(mut sampler: TailSampler, input: Vec<TraceRef>) -> Vec<Batch> {
    let mut merge = sampler.merge_operator();
    let mut out = Emitter::new(4);
    let mut none = Emitter::new(1);
    let mut verdicts = Emitter::new(1);
    let ok = sampler.process(0, Batch::Traces(input), &mut out).is_ok()
        && out
            .take(TailSampler::OFFERS)
            .into_iter()
            .all(|b| merge.process(0, b, &mut none).is_ok())
        && merge
            .on_watermark(spanflow_operators::WATERMARK_END, &mut verdicts)
            .is_ok()
        && verdicts
            .take(0)
            .into_iter()
            .all(|b| sampler.process(1, b, &mut out).is_ok());
    assert!(ok, "the sampler runs");
    out.take(TailSampler::TRACES)
}

fn bench_tail_sampling(c: &mut Criterion) {
    let mut group = c.benchmark_group("tail_sampling");
    for endpoints in [20u64, 5_000] {
        let input: Vec<Arc<ClosedTrace>> = traces(TRACES, endpoints, 7)
            .into_iter()
            .map(Arc::new)
            .collect();
        let spans: usize = input.iter().map(|t| t.spans.len()).sum();
        group.throughput(Throughput::Elements(spans as u64));
        group.bench_with_input(
            BenchmarkId::new("endpoints", endpoints),
            &input,
            |b, input| {
                b.iter_batched(
                    || {
                        let refs: Vec<TraceRef> = input
                            .iter()
                            .map(|t| TraceRef {
                                trace: t.clone(),
                                decision: None,
                            })
                            .collect();
                        (TailSampler::new(config()), refs)
                    },
                    |(sampler, refs)| run(sampler, refs),
                    BatchSize::SmallInput,
                )
            },
        );
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = bench_tail_sampling
}
criterion_main!(benches);
