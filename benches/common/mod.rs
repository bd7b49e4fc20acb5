//! Inputs shared by the benches: the seeded generator's spans, decoded.

use spanflow::formats::{Decoded, RecordMeta, SpanDecoder};
use spanflow::testkit::generator::{Generator, GeneratorConfig};
use spanflow_operators::{Span, Sym};

/// Every span the generator produces for `config`, decoded, in arrival order.
pub fn generated_spans(config: GeneratorConfig) -> Vec<Span> {
    let format = config.format;
    let g = Generator::new(config).expect("valid generator config");
    let meta = meta();
    let mut dec = SpanDecoder::new();
    let mut out = Decoded::default();
    for r in g {
        dec.decode(format, &r.payload, &meta, &mut out);
    }
    out.spans
}

/// The record metadata the benches decode with.
pub fn meta() -> RecordMeta {
    RecordMeta {
        topic: None,
        source: Sym::new("bench"),
        split: 0,
        offset: 0,
    }
}
