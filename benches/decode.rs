//! Decoding OTLP records into spans: the fast protobuf path, the prost reference path
//! and OTLP JSON. Inputs come from the seeded generator (~11 attributes per HTTP span).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use spanflow::connectors::generator::{Generator, GeneratorConfig};
use spanflow::formats::{Decoded, InputFormat, RecordMeta, SpanDecoder};
use spanflow_operators::Sym;

fn records(format: InputFormat, spans_per_record: usize) -> (Vec<Vec<u8>>, u64) {
    let config = GeneratorConfig {
        traces: 2_000,
        format,
        spans_per_record,
        ..Default::default()
    };
    let mut g = Generator::new(config).expect("valid generator config");
    let recs: Vec<Vec<u8>> = g.by_ref().map(|r| r.payload).collect();
    (recs, g.ground_truth().spans)
}

fn bench_decode(c: &mut Criterion) {
    let meta = RecordMeta {
        source: Sym::new("bench"),
        split: 0,
        offset: 0,
    };
    let mut group = c.benchmark_group("decode");
    for spans_per_record in [64, 512] {
        let (recs, spans) = records(InputFormat::OtlpProto, spans_per_record);
        group.throughput(Throughput::Elements(spans));
        group.bench_with_input(
            BenchmarkId::new("otlp_proto_fast", spans_per_record),
            &recs,
            |b, recs| {
                let mut dec = SpanDecoder::new();
                b.iter_batched_ref(
                    || Decoded {
                        spans: Vec::with_capacity(spans as usize),
                        dead_letters: Vec::new(),
                    },
                    |out| {
                        for r in recs {
                            dec.decode(InputFormat::OtlpProto, r, &meta, out);
                        }
                    },
                    criterion::BatchSize::LargeInput,
                );
            },
        );
        group.bench_with_input(
            BenchmarkId::new("otlp_proto_prost", spans_per_record),
            &recs,
            |b, recs| {
                let mut dec = SpanDecoder::new();
                b.iter_batched_ref(
                    || Decoded {
                        spans: Vec::with_capacity(spans as usize),
                        dead_letters: Vec::new(),
                    },
                    |out| {
                        for r in recs {
                            dec.decode_proto_reference(r, &meta, out);
                        }
                    },
                    criterion::BatchSize::LargeInput,
                );
            },
        );
    }
    let (recs, spans) = records(InputFormat::OtlpJson, 512);
    group.throughput(Throughput::Elements(spans));
    group.bench_with_input(BenchmarkId::new("otlp_json", 512), &recs, |b, recs| {
        let mut dec = SpanDecoder::new();
        b.iter_batched_ref(
            || Decoded {
                spans: Vec::with_capacity(spans as usize),
                dead_letters: Vec::new(),
            },
            |out| {
                for r in recs {
                    dec.decode(InputFormat::OtlpJson, r, &meta, out);
                }
            },
            criterion::BatchSize::LargeInput,
        );
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench_decode
}
criterion_main!(benches);
