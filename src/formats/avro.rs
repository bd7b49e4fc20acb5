//! The `avro` input format: one `spanflow.otlp.SpanBatch` per record, in Avro
//! single-object encoding, with the schema shipped as
//! schemas/avro/otlp_span_batch.avsc. A batch is turned into the OTLP request it
//! describes and goes through the same conversion as OTLP JSON.

use std::collections::HashMap;
use std::sync::LazyLock;

use apache_avro::types::Value;
use apache_avro::{GenericSingleObjectReader, GenericSingleObjectWriter, Schema};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};

use super::dead_letter::DecodeError;

/// The shipped input schema.
pub const SPAN_BATCH_SCHEMA: &str = include_str!("../../schemas/avro/otlp_span_batch.avsc");

static SCHEMA: LazyLock<Result<Schema, String>> =
    LazyLock::new(|| Schema::parse_str(SPAN_BATCH_SCHEMA).map_err(|e| e.to_string()));

static READER: LazyLock<Result<GenericSingleObjectReader, String>> = LazyLock::new(|| {
    let schema = SCHEMA.as_ref().map_err(Clone::clone)?;
    GenericSingleObjectReader::builder()
        .schema(schema.clone())
        .build()
        .map_err(|e| e.to_string())
});

fn bad(msg: impl Into<String>) -> DecodeError {
    DecodeError::Avro(msg.into())
}

/// Decodes one record into the OTLP request it carries.
pub(crate) fn decode_request(payload: &[u8]) -> Result<ExportTraceServiceRequest, DecodeError> {
    let reader = READER
        .as_ref()
        .map_err(|e| bad(format!("the shipped schema does not parse: {e}")))?;
    let value = reader
        .read_value(&mut &payload[..])
        .map_err(|e| bad(e.to_string()))?;
    let batch = fields(&value, "SpanBatch")?;
    let mut req = ExportTraceServiceRequest::default();
    for rs in array(field(batch, "resource_spans")?)? {
        let rs = fields(rs, "ResourceSpans")?;
        let mut spans = Vec::new();
        for s in array(field(rs, "spans")?)? {
            let s = fields(s, "Span")?;
            spans.push(Span {
                trace_id: bytes(field(s, "trace_id")?)?,
                span_id: bytes(field(s, "span_id")?)?,
                parent_span_id: bytes(field(s, "parent_span_id")?)?,
                name: string(field(s, "name")?)?,
                kind: int(field(s, "kind")?)?,
                start_time_unix_nano: nanos(field(s, "start_time_unix_nano")?)?,
                end_time_unix_nano: nanos(field(s, "end_time_unix_nano")?)?,
                status: Some(Status {
                    code: int(field(s, "status_code")?)?,
                    message: string(field(s, "status_message")?)?,
                }),
                attributes: attributes(field(s, "attributes")?)?,
                ..Default::default()
            });
        }
        req.resource_spans.push(ResourceSpans {
            resource: Some(Resource {
                attributes: attributes(field(rs, "resource_attributes")?)?,
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            schema_url: String::new(),
        });
    }
    Ok(req)
}

fn fields<'a>(v: &'a Value, what: &str) -> Result<&'a [(String, Value)], DecodeError> {
    match v {
        Value::Record(f) => Ok(f),
        _ => Err(bad(format!("{what} is not a record"))),
    }
}

fn field<'a>(f: &'a [(String, Value)], name: &str) -> Result<&'a Value, DecodeError> {
    f.iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v)
        .ok_or_else(|| bad(format!("missing field `{name}`")))
}

fn array(v: &Value) -> Result<&[Value], DecodeError> {
    match v {
        Value::Array(a) => Ok(a),
        _ => Err(bad("expected an array")),
    }
}

fn bytes(v: &Value) -> Result<Vec<u8>, DecodeError> {
    match v {
        Value::Bytes(b) | Value::Fixed(_, b) => Ok(b.clone()),
        _ => Err(bad("expected bytes")),
    }
}

fn string(v: &Value) -> Result<String, DecodeError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        _ => Err(bad("expected a string")),
    }
}

fn int(v: &Value) -> Result<i32, DecodeError> {
    match v {
        Value::Int(i) => Ok(*i),
        _ => Err(bad("expected an int")),
    }
}

fn nanos(v: &Value) -> Result<u64, DecodeError> {
    match v {
        Value::Long(l) => u64::try_from(*l).map_err(|_| bad(format!("negative time {l}"))),
        _ => Err(bad("expected a long")),
    }
}

/// Map entries in key order, so a record always decodes to the same span.
fn attributes(v: &Value) -> Result<Vec<KeyValue>, DecodeError> {
    let Value::Map(m) = v else {
        return Err(bad("expected a map"));
    };
    let mut keys: Vec<&String> = m.keys().collect();
    keys.sort();
    keys.into_iter()
        .map(|k| {
            let inner = match &m[k] {
                Value::Union(_, b) => b.as_ref(),
                other => other,
            };
            let value = match inner {
                Value::String(s) => any_value::Value::StringValue(s.clone()),
                Value::Long(l) => any_value::Value::IntValue(*l),
                Value::Double(d) => any_value::Value::DoubleValue(*d),
                Value::Boolean(b) => any_value::Value::BoolValue(*b),
                _ => return Err(bad(format!("attribute `{k}` has an unsupported type"))),
            };
            Ok(KeyValue {
                key: k.clone(),
                value: Some(AnyValue { value: Some(value) }),
                ..Default::default()
            })
        })
        .collect()
}

/// Encodes an OTLP request as a `SpanBatch` record (scopes are flattened; attribute
/// values other than string, int, double and bool are written as their text).
pub fn encode_request(req: &ExportTraceServiceRequest) -> Result<Vec<u8>, String> {
    let schema = SCHEMA.as_ref().map_err(Clone::clone)?;
    let attrs = |kvs: &[KeyValue]| -> Value {
        let mut m = HashMap::with_capacity(kvs.len());
        for kv in kvs {
            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => {
                    Value::Union(0, Box::new(Value::String(s.clone())))
                }
                Some(any_value::Value::IntValue(i)) => Value::Union(1, Box::new(Value::Long(*i))),
                Some(any_value::Value::DoubleValue(d)) => {
                    Value::Union(2, Box::new(Value::Double(*d)))
                }
                Some(any_value::Value::BoolValue(b)) => {
                    Value::Union(3, Box::new(Value::Boolean(*b)))
                }
                Some(other) => Value::Union(0, Box::new(Value::String(format!("{other:?}")))),
                None => Value::Union(0, Box::new(Value::String(String::new()))),
            };
            m.insert(kv.key.clone(), v);
        }
        Value::Map(m)
    };
    let long = |n: u64| Value::Long(i64::try_from(n).unwrap_or(i64::MAX));
    let resource_spans: Vec<Value> = req
        .resource_spans
        .iter()
        .map(|rs| {
            let spans: Vec<Value> = rs
                .scope_spans
                .iter()
                .flat_map(|ss| &ss.spans)
                .map(|s| {
                    let status = s.status.clone().unwrap_or_default();
                    Value::Record(vec![
                        ("trace_id".into(), Value::Bytes(s.trace_id.clone())),
                        ("span_id".into(), Value::Bytes(s.span_id.clone())),
                        (
                            "parent_span_id".into(),
                            Value::Bytes(s.parent_span_id.clone()),
                        ),
                        ("name".into(), Value::String(s.name.clone())),
                        ("kind".into(), Value::Int(s.kind)),
                        ("start_time_unix_nano".into(), long(s.start_time_unix_nano)),
                        ("end_time_unix_nano".into(), long(s.end_time_unix_nano)),
                        ("status_code".into(), Value::Int(status.code)),
                        ("status_message".into(), Value::String(status.message)),
                        ("attributes".into(), attrs(&s.attributes)),
                    ])
                })
                .collect();
            let res = rs
                .resource
                .as_ref()
                .map_or_else(|| attrs(&[]), |r| attrs(&r.attributes));
            Value::Record(vec![
                ("resource_attributes".into(), res),
                ("spans".into(), Value::Array(spans)),
            ])
        })
        .collect();
    let value = Value::Record(vec![(
        "resource_spans".into(),
        Value::Array(resource_spans),
    )]);
    let mut w =
        GenericSingleObjectWriter::new_with_capacity(schema, 4096).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    w.write_value(value, &mut out).map_err(|e| e.to_string())?;
    Ok(out)
}
