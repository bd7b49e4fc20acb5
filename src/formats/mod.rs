//! Input formats: decoding OTLP (protobuf and JSON) into [`Span`]s.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Encoding of input records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum InputFormat {
    /// Protobuf `ExportTraceServiceRequest` (the Collector's `otlp_proto`).
    OtlpProto,
    /// OTLP JSON `ExportTraceServiceRequest` (the Collector's `otlp_json`).
    OtlpJson,
}
