//! Splitting OTLP requests by trace id (the repartition stage and `spanflow gen
//! --kafka`): the wire-level splitter against the prost reference it replaced. Inputs
//! come from the seeded generator, written whole as an unkeyed producer writes them.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use spanflow::connectors::kafka::produce::{partition_of, try_split_prost};
use spanflow::formats::otlp_split::split_by_trace;
use spanflow::testkit::generator::{Generator, GeneratorConfig};

fn bench_split(c: &mut Criterion) {
    let mut g = Generator::new(GeneratorConfig {
        traces: 2_000,
        spans_per_record: 512,
        garbage_fraction: 0.0,
        ..Default::default()
    })
    .expect("valid generator config");
    let recs: Vec<Vec<u8>> = g.by_ref().map(|r| r.payload).collect();
    let spans = g.ground_truth().spans;
    let mut group = c.benchmark_group("split");
    group.throughput(Throughput::Elements(spans));
    for partitions in [8, 64] {
        group.bench_function(BenchmarkId::new("prost", partitions), |b| {
            b.iter(|| {
                for r in &recs {
                    std::hint::black_box(try_split_prost(r, partitions));
                }
            })
        });
        group.bench_function(BenchmarkId::new("wire", partitions), |b| {
            b.iter(|| {
                for r in &recs {
                    std::hint::black_box(split_by_trace(r, |id| partition_of(id, partitions)).ok());
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_split);
criterion_main!(benches);
