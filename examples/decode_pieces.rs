//! Decodes the generator's OTLP requests, whole or cut by trace id into one piece per
//! partition as `spanflow bench --kafka-mock` writes its topic, a fixed number of times.
//!
//! `cargo bench --bench decode` times the same work, but on a shared VM its timings swing
//! by tens of percent. This runs a fixed amount of work, so its instruction count under
//! callgrind is the same on every run and shows what a decoder change saves:
//!
//! ```text
//! cargo build --release --example decode_pieces
//! valgrind --tool=callgrind --toggle-collect='spanflow::formats::SpanDecoder::decode' \
//!     target/release/examples/decode_pieces 64 2
//! ```
//!
//! Arguments: partitions (1: whole requests; default 1) and rounds (default 30).

use prost::Message;
use spanflow::formats::otlp_split::split_by_trace;
use spanflow::formats::{Decoded, InputFormat, RecordMeta, SpanDecoder};
use spanflow::testkit::generator::{Generator, GeneratorConfig};
use spanflow_operators::Sym;

/// As in the `spanflow` binary: the decoder's allocations cost what they cost there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let partitions: i32 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(1);
    let rounds: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(30);
    // The criterion bench's input: 2,000 traces, 512 spans per request.
    let config = GeneratorConfig {
        traces: 2_000,
        format: InputFormat::OtlpProto,
        spans_per_record: 512,
        ..Default::default()
    };
    let requests: Vec<Vec<u8>> = Generator::new(config)?.map(|r| r.payload).collect();
    let mut records = Vec::new();
    for r in &requests {
        if partitions <= 1 {
            records.push(r.clone());
            continue;
        }
        let pieces = split_by_trace(r, |t| {
            i32::from(t.first().copied().unwrap_or(0)) % partitions
        })
        .map_err(|e| anyhow::anyhow!("splitting a generated request: {e}"))?;
        records.extend(pieces.into_iter().map(|(_, piece)| piece));
    }
    // What the decoder has to walk: each `ScopeSpans` repeats its resource and scope.
    let (mut resource_spans, mut scope_spans, mut spans) = (0usize, 0usize, 0usize);
    for r in &records {
        let req =
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest::decode(
                r.as_slice(),
            )?;
        for rs in &req.resource_spans {
            resource_spans += 1;
            scope_spans += rs.scope_spans.len();
            spans += rs.scope_spans.iter().map(|s| s.spans.len()).sum::<usize>();
        }
    }
    let meta = RecordMeta {
        topic: None,
        source: Sym::new("example"),
        split: 0,
        offset: 0,
    };
    let started = std::time::Instant::now();
    let mut decoded = 0usize;
    for _ in 0..rounds {
        let mut decoder = SpanDecoder::with_shards(2);
        let mut out = Decoded {
            spans: Vec::with_capacity(spans),
            dead_letters: Vec::new(),
        };
        for r in &records {
            decoder.decode(InputFormat::OtlpProto, r, &meta, &mut out);
        }
        decoded += out.spans.len();
    }
    let elapsed = started.elapsed();
    println!(
        "{} records, {resource_spans} ResourceSpans, {scope_spans} ScopeSpans, {spans} spans \
         ({:.1} per ScopeSpans); {rounds} rounds: {decoded} spans in {:.3} s, {:.0} ns per span",
        records.len(),
        spans as f64 / scope_spans.max(1) as f64,
        elapsed.as_secs_f64(),
        elapsed.as_nanos() as f64 / decoded.max(1) as f64
    );
    Ok(())
}
