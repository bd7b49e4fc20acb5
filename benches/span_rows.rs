//! Building the `spans` table from kept spans (`SpanRows`): every column of a span row,
//! the attribute maps, the span-detail columns and the OTLP message, in batches of 1,024
//! rows as the runtime's table ports cut them. Inputs are the seeded generator's spans
//! (made by the generator's model, so the message gets the attributes its typed fields
//! imply) and the same spans as the OTLP decoder reads them back from a span's own
//! `otlp` column (every fact in the packed attributes).

mod common;

use arrow::array::{Array, BinaryArray};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use spanflow::formats::{Decoded, InputFormat, SpanDecoder};
use spanflow::tables::{SpanRows, TableRows};
use spanflow::testkit::generator::GeneratorConfig;
use spanflow_operators::Span;

/// Rows per batch, as the runtime flushes a table port.
const BATCH: usize = 1024;

fn build(spans: &[Span]) -> usize {
    let mut rows = SpanRows::spans();
    let mut n = 0;
    for chunk in spans.chunks(BATCH) {
        rows.extend(chunk);
        n += rows.finish().num_rows();
    }
    n
}

/// The spans again, decoded from an OTLP request made of their `otlp` and
/// `otlp_resource` columns.
fn round_tripped(spans: &[Span]) -> Vec<Span> {
    let mut rows = SpanRows::spans();
    for s in spans {
        rows.push(s);
    }
    let batch = rows.finish();
    let col = |name: &str| {
        batch
            .column_by_name(name)
            .and_then(|c| c.as_any().downcast_ref::<BinaryArray>().cloned())
            .expect("binary column")
    };
    let (otlp, envelopes) = (col("otlp"), col("otlp_resource"));
    let request = spanflow::formats::otlp_out::request(
        (0..otlp.len()).map(|i| (envelopes.value(i), otlp.value(i))),
    );
    let mut out = Decoded::default();
    SpanDecoder::new().decode(InputFormat::OtlpProto, &request, &common::meta(), &mut out);
    out.spans
}

fn bench_span_rows(c: &mut Criterion) {
    let generated = common::generated_spans(GeneratorConfig {
        traces: 2_000,
        ..Default::default()
    });
    let decoded = round_tripped(&generated);
    assert_eq!(decoded.len(), generated.len(), "every span reads back");
    let mut group = c.benchmark_group("span_rows");
    for (name, spans) in [("generated", &generated), ("otlp", &decoded)] {
        group.throughput(Throughput::Elements(spans.len() as u64));
        group.bench_function(name, |b| b.iter(|| build(spans)));
    }
    group.finish();
}

criterion_group!(benches, bench_span_rows);
criterion_main!(benches);
