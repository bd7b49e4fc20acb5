//! Dead letters: input that could not be used, kept with the reason.

use serde::Serialize;
use spanflow_operators::Sym;

/// Where a record came from, for dead letters and diagnostics.
#[derive(Debug, Clone, Copy)]
pub struct RecordMeta {
    /// Source node name.
    pub source: Sym,
    /// Kafka topic, for records read from Kafka.
    pub topic: Option<Sym>,
    /// Split: Kafka partition, file index, generator stream.
    pub split: u32,
    /// Offset within the split: Kafka offset, record index in a file.
    pub offset: u64,
}

/// Why input was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The protobuf bytes are malformed (truncated, bad wire type, bad UTF-8, ...).
    #[error("malformed protobuf: {0}")]
    Protobuf(String),
    /// The JSON is malformed or not an OTLP request.
    #[error("malformed OTLP JSON: {0}")]
    Json(String),
    /// The Avro record is malformed or does not match the SpanBatch schema.
    #[error("malformed Avro: {0}")]
    Avro(String),
    /// A span's trace id is missing, not 16 bytes, or all zeros.
    #[error("invalid trace_id ({0})")]
    TraceId(String),
    /// A span's id is missing, not 8 bytes, or all zeros.
    #[error("invalid span_id ({0})")]
    SpanId(String),
    /// A span's parent id is neither empty nor 8 bytes.
    #[error("invalid parent_span_id ({0})")]
    ParentSpanId(String),
    /// A span has no start or end time.
    #[error("missing timestamp: start={start} end={end}")]
    MissingTime {
        /// Start, unix ns.
        start: u64,
        /// End, unix ns.
        end: u64,
    },
    /// A span ends before it starts.
    #[error("end before start: start={start} end={end}")]
    EndBeforeStart {
        /// Start, unix ns.
        start: u64,
        /// End, unix ns.
        end: u64,
    },
}

impl DecodeError {
    /// A short machine-friendly category, stored next to the human reason.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::Protobuf(_) => "malformed_protobuf",
            DecodeError::Json(_) => "malformed_json",
            DecodeError::Avro(_) => "malformed_avro",
            DecodeError::TraceId(_) => "invalid_trace_id",
            DecodeError::SpanId(_) => "invalid_span_id",
            DecodeError::ParentSpanId(_) => "invalid_parent_span_id",
            DecodeError::MissingTime { .. } => "missing_timestamp",
            DecodeError::EndBeforeStart { .. } => "end_before_start",
        }
    }
}

/// Largest payload kept in a dead letter; the rest is cut (the length is kept).
pub const MAX_DEAD_LETTER_PAYLOAD: usize = 1 << 20;

/// A record, or one span of it, that could not be used.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeadLetter {
    /// Source node name.
    pub source: Sym,
    /// Kafka topic, for records read from Kafka.
    pub topic: Option<Sym>,
    /// Split (partition, file index).
    pub split: u32,
    /// Offset within the split.
    pub offset: u64,
    /// Index of the span within the record when only that span was rejected while
    /// decoding (a `far_future` span, rejected later, is named by its payload).
    pub span_index: Option<u32>,
    /// Category (see [`DecodeError::kind`]).
    pub kind: &'static str,
    /// Human-readable reason.
    pub reason: String,
    /// Length of the rejected bytes.
    pub payload_len: u64,
    /// The rejected bytes (at most [`MAX_DEAD_LETTER_PAYLOAD`]).
    pub payload: Vec<u8>,
}

impl DeadLetter {
    /// A whole record rejected.
    pub fn record(meta: &RecordMeta, e: DecodeError, payload: &[u8]) -> Self {
        Self::new(meta, None, e, payload)
    }

    /// One span rejected; `payload` is that span's encoding.
    pub fn span(meta: &RecordMeta, index: u32, e: DecodeError, payload: &[u8]) -> Self {
        Self::new(meta, Some(index), e, payload)
    }

    /// A decoded span that ends after `bound`, the latest end time that may move the
    /// watermark: a client with a skewed clock. Its payload is the span as decoded
    /// (JSON), which names it by trace and span id: the record's span order is not
    /// known any more where this is decided.
    pub fn far_future(
        meta: &RecordMeta,
        span: &spanflow_operators::Span,
        bound: u64,
        max_ahead: std::time::Duration,
    ) -> Self {
        let at = |ns: u64| {
            humantime::format_rfc3339_nanos(
                std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns),
            )
        };
        let payload = serde_json::to_vec(span).unwrap_or_default();
        DeadLetter {
            source: meta.source,
            topic: meta.topic,
            split: meta.split,
            offset: meta.offset,
            span_index: None,
            kind: "far_future",
            reason: format!(
                "span ends at {}, more than {} ahead of its split's watermark or of the \
                 clock (the latest end that moves the watermark is {})",
                at(span.end_ns),
                humantime::format_duration(max_ahead),
                at(bound)
            ),
            payload_len: payload.len() as u64,
            payload,
        }
    }

    fn new(meta: &RecordMeta, span_index: Option<u32>, e: DecodeError, payload: &[u8]) -> Self {
        DeadLetter {
            source: meta.source,
            topic: meta.topic,
            split: meta.split,
            offset: meta.offset,
            span_index,
            kind: e.kind(),
            reason: e.to_string(),
            payload_len: payload.len() as u64,
            payload: payload[..payload.len().min(MAX_DEAD_LETTER_PAYLOAD)].to_vec(),
        }
    }
}
