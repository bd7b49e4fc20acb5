//! Input formats: decoding OTLP (protobuf and JSON) into [`Span`]s.
//!
//! [`Span`]: spanflow_operators::Span

pub mod avro;
pub(crate) mod convert;
mod dead_letter;
pub mod framing;
pub mod otlp_out;
pub mod otlp_proto;
pub mod otlp_split;
mod resource_cache;
mod wire;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use spanflow_operators::Span;

pub use dead_letter::{DeadLetter, DecodeError, RecordMeta};

/// Field number under which a span's resource buffer (`Span::resource_attrs`, the
/// `Resource` message's fields) also keeps its `ResourceSpans.schema_url`: one buffer
/// per resource and scope holds everything a span's OTLP envelope said. Past any field
/// number `Resource` defines.
pub const RESOURCE_SCHEMA_URL: u32 = 1001;
/// Field number of the span's `InstrumentationScope` in its resource buffer (see
/// [`RESOURCE_SCHEMA_URL`]).
pub const SCOPE: u32 = 1002;
/// Field number of the span's `ScopeSpans.schema_url` in its resource buffer (see
/// [`RESOURCE_SCHEMA_URL`]).
pub const SCOPE_SCHEMA_URL: u32 = 1003;

/// Appends the text an attribute value is shown as (in the attribute columns): strings
/// as they are, numbers and bools as written, arrays, kvlists and bytes as JSON; nothing
/// for an unset value.
pub fn attr_text(
    value: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>,
    out: &mut String,
) {
    convert::with_value(value, |v| {
        if let Some(v) = v {
            use std::fmt::Write;
            let _ = write!(out, "{v}");
        }
    });
}

/// Encoding of input records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum InputFormat {
    /// Protobuf `ExportTraceServiceRequest` (the Collector's `otlp_proto`).
    OtlpProto,
    /// OTLP JSON `ExportTraceServiceRequest` (the Collector's `otlp_json`).
    OtlpJson,
    /// Avro single-object encoding of schemas/avro/otlp_span_batch.avsc.
    Avro,
}

impl InputFormat {
    /// snake_case name, as in job files.
    pub fn as_str(self) -> &'static str {
        match self {
            InputFormat::OtlpProto => "otlp_proto",
            InputFormat::OtlpJson => "otlp_json",
            InputFormat::Avro => "avro",
        }
    }
}

/// Counters of a decoder.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecodeStats {
    /// Records seen.
    pub records: u64,
    /// Spans decoded successfully.
    pub spans: u64,
    /// Records that failed to decode as a whole (all their spans are in the dead letter).
    pub bad_records: u64,
    /// Single spans rejected (bad ids, missing or inverted timestamps).
    pub bad_spans: u64,
    /// Attribute keys or values truncated to the size limits.
    pub truncated_attributes: u64,
}

impl DecodeStats {
    /// Adds another decoder's counters.
    pub fn merge(&mut self, o: &DecodeStats) {
        self.records += o.records;
        self.spans += o.spans;
        self.bad_records += o.bad_records;
        self.bad_spans += o.bad_spans;
        self.truncated_attributes += o.truncated_attributes;
    }

    /// Dead letters produced.
    pub fn dead_letters(&self) -> u64 {
        self.bad_records + self.bad_spans
    }
}

/// What decoding a batch of records produced.
#[derive(Debug, Default)]
pub struct Decoded {
    /// Good spans, in record order.
    pub spans: Vec<Span>,
    /// Records or spans that could not be used, with the reason.
    pub dead_letters: Vec<DeadLetter>,
}

/// Decodes OTLP records into spans. Keeps scratch buffers between calls, so use one per
/// decoding thread.
#[derive(Default)]
pub struct SpanDecoder {
    builder: convert::SpanBuilder,
    stats: DecodeStats,
}

impl SpanDecoder {
    /// A fresh decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// A decoder whose spans go to `shards` shards, routed by `TraceId::shard`: each
    /// shard's spans keep their attributes in chunks of their own, which only that
    /// shard then releases.
    pub fn with_shards(shards: usize) -> Self {
        SpanDecoder {
            builder: convert::SpanBuilder::with_shards(shards),
            stats: DecodeStats::default(),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> &DecodeStats {
        &self.stats
    }

    /// Decodes one record, appending spans and dead letters to `out`. Never fails: a
    /// record that does not decode becomes one dead letter and none of its spans are
    /// kept (as a protobuf decoder would reject it whole).
    pub fn decode(
        &mut self,
        format: InputFormat,
        payload: &[u8],
        meta: &RecordMeta,
        out: &mut Decoded,
    ) {
        self.stats.records += 1;
        let spans_before = out.spans.len();
        let dl_before = out.dead_letters.len();
        let result = match format {
            InputFormat::OtlpProto => {
                otlp_proto::decode_request(&mut self.builder, payload, meta, out)
            }
            InputFormat::OtlpJson => self.decode_json(payload, meta, out),
            InputFormat::Avro => avro::decode_request(payload)
                .map(|req| convert::convert_request(&mut self.builder, &req, meta, out)),
        };
        if let Err(e) = result {
            self.builder.discard_span();
            out.spans.truncate(spans_before);
            out.dead_letters.truncate(dl_before);
            self.stats.bad_records += 1;
            out.dead_letters.push(DeadLetter::record(meta, e, payload));
        } else {
            self.stats.spans += (out.spans.len() - spans_before) as u64;
            self.stats.bad_spans += (out.dead_letters.len() - dl_before) as u64;
        }
        self.stats.truncated_attributes += self.builder.take_truncated();
    }

    fn decode_json(
        &mut self,
        payload: &[u8],
        meta: &RecordMeta,
        out: &mut Decoded,
    ) -> Result<(), DecodeError> {
        let req: opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest =
            serde_json::from_slice(payload).map_err(|e| DecodeError::Json(e.to_string()))?;
        convert::convert_request(&mut self.builder, &req, meta, out);
        Ok(())
    }

    /// The reference protobuf path: prost decodes the generated types, then the same
    /// conversion as JSON. The fast path in [`otlp_proto`] is tested against it.
    pub fn decode_proto_reference(&mut self, payload: &[u8], meta: &RecordMeta, out: &mut Decoded) {
        use prost::Message;
        self.stats.records += 1;
        match opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest::decode(
            payload,
        ) {
            Ok(req) => {
                let s = out.spans.len();
                let d = out.dead_letters.len();
                convert::convert_request(&mut self.builder, &req, meta, out);
                self.stats.spans += (out.spans.len() - s) as u64;
                self.stats.bad_spans += (out.dead_letters.len() - d) as u64;
            }
            Err(e) => {
                self.stats.bad_records += 1;
                out.dead_letters.push(DeadLetter::record(
                    meta,
                    DecodeError::Protobuf(e.to_string()),
                    payload,
                ));
            }
        }
        self.stats.truncated_attributes += self.builder.take_truncated();
    }
}

#[cfg(test)]
mod tests;
