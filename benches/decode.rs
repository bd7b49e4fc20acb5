//! Decoding OTLP records into spans: the fast protobuf path, the prost reference path
//! and OTLP JSON. Inputs come from the seeded generator (~11 attributes per HTTP span).

use criterion::measurement::WallTime;
use criterion::{
    BenchmarkGroup, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main,
};
use spanflow::formats::otlp_split::split_by_trace;
use spanflow::formats::{Decoded, InputFormat, RecordMeta, SpanDecoder};
use spanflow::testkit::generator::{Generator, GeneratorConfig};
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

/// One decode bench: `decode` is called once per record into a pre-sized output.
fn run(
    group: &mut BenchmarkGroup<'_, WallTime>,
    id: BenchmarkId,
    recs: &[Vec<u8>],
    spans: u64,
    decode: fn(&mut SpanDecoder, &[u8], &RecordMeta, &mut Decoded),
) {
    let meta = RecordMeta {
        topic: None,
        source: Sym::new("bench"),
        split: 0,
        offset: 0,
    };
    group.throughput(Throughput::Elements(spans));
    group.bench_function(id, |b| {
        let mut dec = SpanDecoder::new();
        b.iter_batched_ref(
            || Decoded {
                spans: Vec::with_capacity(spans as usize),
                dead_letters: Vec::new(),
            },
            |out| {
                for r in recs {
                    decode(&mut dec, r, &meta, out);
                }
            },
            criterion::BatchSize::LargeInput,
        );
    });
}

fn bench_decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    for n in [64, 512] {
        let (recs, spans) = records(InputFormat::OtlpProto, n);
        run(
            &mut group,
            BenchmarkId::new("otlp_proto_fast", n),
            &recs,
            spans,
            |d, r, m, o| d.decode(InputFormat::OtlpProto, r, m, o),
        );
        run(
            &mut group,
            BenchmarkId::new("otlp_proto_prost", n),
            &recs,
            spans,
            |d, r, m, o| d.decode_proto_reference(r, m, o),
        );
    }
    // As `spanflow bench --kafka-mock` and a Collector exporting by trace id write a
    // topic: each request cut into one piece per partition, every piece repeating the
    // resources and scopes of its spans.
    let (recs, spans) = records(InputFormat::OtlpProto, 512);
    let pieces: Vec<Vec<u8>> = recs
        .iter()
        .flat_map(|r| {
            split_by_trace(r, |t| i32::from(t.first().copied().unwrap_or(0) % 64))
                .expect("generated requests split")
        })
        .map(|(_, piece)| piece)
        .collect();
    run(
        &mut group,
        BenchmarkId::new("otlp_proto_fast_by_trace", 64),
        &pieces,
        spans,
        |d, r, m, o| d.decode(InputFormat::OtlpProto, r, m, o),
    );
    let (recs, spans) = records(InputFormat::OtlpJson, 512);
    run(
        &mut group,
        BenchmarkId::new("otlp_json", 512),
        &recs,
        spans,
        |d, r, m, o| d.decode(InputFormat::OtlpJson, r, m, o),
    );
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench_decode
}
criterion_main!(benches);
