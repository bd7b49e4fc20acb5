//! Fast OTLP protobuf decoding: walks the wire format of `ExportTraceServiceRequest`
//! directly, borrowing strings from the record instead of building the generated
//! message tree. About 3x faster than prost + conversion (see BENCHMARKS.md); the prost
//! path (`SpanDecoder::decode_proto_reference`) stays as the reference the tests compare
//! against.

use spanflow_operators::AttrValue;

use super::Decoded;
use super::convert::{RawSpan, Resource, SpanBuilder};
use super::dead_letter::{DeadLetter, DecodeError, RecordMeta};
use super::wire::{Reader, WireType};

/// Decodes one `ExportTraceServiceRequest`. On `Err` the caller discards whatever was
/// appended to `out`.
pub(crate) fn decode_request(
    b: &mut SpanBuilder,
    payload: &[u8],
    meta: &RecordMeta,
    out: &mut Decoded,
) -> Result<(), DecodeError> {
    let mut r = Reader::new(payload, 0);
    let mut index = 0u32;
    while let Some((field, wt)) = r.field()? {
        if field == 1 {
            r.expect(wt, WireType::Len, "resource_spans")?;
            let rs = r.message()?;
            resource_spans(b, rs, meta, out, &mut index)?;
        } else {
            r.skip(wt)?;
        }
    }
    Ok(())
}

fn resource_spans(
    b: &mut SpanBuilder,
    rs: Reader<'_>,
    meta: &RecordMeta,
    out: &mut Decoded,
    index: &mut u32,
) -> Result<(), DecodeError> {
    // The resource may follow its spans on the wire; read it first.
    b.begin_resource();
    let mut pass = Reader::new(rs.remaining(), rs.offset());
    while let Some((field, wt)) = pass.field()? {
        if field == 1 {
            pass.expect(wt, WireType::Len, "resource")?;
            let mut res = pass.message()?;
            while let Some((f, wt)) = res.field()? {
                if f == 1 {
                    res.expect(wt, WireType::Len, "resource.attributes")?;
                    let kv = res.message()?;
                    key_value(kv, |k, v| b.resource_attr(k, v))?;
                } else {
                    res.skip(wt)?;
                }
            }
        } else {
            pass.skip(wt)?;
        }
    }
    let resource = b.end_resource();
    let mut pass = Reader::new(rs.remaining(), rs.offset());
    while let Some((field, wt)) = pass.field()? {
        if field == 2 {
            pass.expect(wt, WireType::Len, "scope_spans")?;
            let mut ss = pass.message()?;
            while let Some((f, wt)) = ss.field()? {
                if f == 2 {
                    ss.expect(wt, WireType::Len, "spans")?;
                    let span = ss.message()?;
                    let span_bytes = span.remaining();
                    match decode_span(b, span, &resource)? {
                        Ok(s) => out.spans.push(s),
                        Err(e) => out
                            .dead_letters
                            .push(DeadLetter::span(meta, *index, e, span_bytes)),
                    }
                    *index += 1;
                } else {
                    ss.skip(wt)?;
                }
            }
        } else {
            pass.skip(wt)?;
        }
    }
    Ok(())
}

/// Outer `Err`: the record is malformed. Inner `Err`: this span is unusable.
fn decode_span(
    b: &mut SpanBuilder,
    mut r: Reader<'_>,
    res: &Resource,
) -> Result<Result<spanflow_operators::Span, DecodeError>, DecodeError> {
    let mut raw = RawSpan {
        trace_id: &[],
        span_id: &[],
        parent_span_id: &[],
        name: "",
        kind: 0,
        start: 0,
        end: 0,
        status_code: 0,
    };
    while let Some((field, wt)) = r.field()? {
        match field {
            1 => {
                r.expect(wt, WireType::Len, "trace_id")?;
                raw.trace_id = r.bytes()?;
            }
            2 => {
                r.expect(wt, WireType::Len, "span_id")?;
                raw.span_id = r.bytes()?;
            }
            4 => {
                r.expect(wt, WireType::Len, "parent_span_id")?;
                raw.parent_span_id = r.bytes()?;
            }
            5 => {
                r.expect(wt, WireType::Len, "name")?;
                raw.name = r.str()?;
            }
            6 => {
                r.expect(wt, WireType::Varint, "kind")?;
                raw.kind = r.varint()? as i32;
            }
            7 => {
                r.expect(wt, WireType::Fixed64, "start_time_unix_nano")?;
                raw.start = r.fixed64()?;
            }
            8 => {
                r.expect(wt, WireType::Fixed64, "end_time_unix_nano")?;
                raw.end = r.fixed64()?;
            }
            9 => {
                r.expect(wt, WireType::Len, "attributes")?;
                let kv = r.message()?;
                key_value(kv, |k, v| b.span_attr(k, v))?;
            }
            15 => {
                r.expect(wt, WireType::Len, "status")?;
                let mut st = r.message()?;
                while let Some((f, wt)) = st.field()? {
                    match f {
                        2 => {
                            st.expect(wt, WireType::Len, "status.message")?;
                            st.str()?;
                        }
                        3 => {
                            st.expect(wt, WireType::Varint, "status.code")?;
                            raw.status_code = st.varint()? as i32;
                        }
                        _ => st.skip(wt)?,
                    }
                }
            }
            3 => {
                r.expect(wt, WireType::Len, "trace_state")?;
                r.str()?;
            }
            _ => r.skip(wt)?,
        }
    }
    Ok(b.finish_span(&raw, res))
}

/// Decodes a `KeyValue` and hands it to `f` (values that are unset are skipped, as the
/// prost path does).
fn key_value(mut r: Reader<'_>, f: impl FnOnce(&str, AttrValue<'_>)) -> Result<(), DecodeError> {
    let mut key = "";
    let mut value: Option<Reader<'_>> = None;
    while let Some((field, wt)) = r.field()? {
        match field {
            1 => {
                r.expect(wt, WireType::Len, "key")?;
                key = r.str()?;
            }
            2 => {
                r.expect(wt, WireType::Len, "value")?;
                value = Some(r.message()?);
            }
            _ => r.skip(wt)?,
        }
    }
    let Some(v) = value else { return Ok(()) };
    match any_value(v)? {
        Some(Decodedvalue::Simple(v)) => f(key, v),
        Some(Decodedvalue::Json(text)) => f(key, AttrValue::Json(&text)),
        None => {}
    }
    Ok(())
}

enum Decodedvalue<'a> {
    Simple(AttrValue<'a>),
    Json(String),
}

fn any_value<'a>(mut r: Reader<'a>) -> Result<Option<Decodedvalue<'a>>, DecodeError> {
    let mut out = None;
    while let Some((field, wt)) = r.field()? {
        out = match field {
            1 => {
                r.expect(wt, WireType::Len, "string_value")?;
                Some(Decodedvalue::Simple(AttrValue::Str(r.str()?)))
            }
            2 => {
                r.expect(wt, WireType::Varint, "bool_value")?;
                Some(Decodedvalue::Simple(AttrValue::Bool(r.varint()? != 0)))
            }
            3 => {
                r.expect(wt, WireType::Varint, "int_value")?;
                Some(Decodedvalue::Simple(AttrValue::Int(r.varint()? as i64)))
            }
            4 => {
                r.expect(wt, WireType::Fixed64, "double_value")?;
                Some(Decodedvalue::Simple(AttrValue::Double(f64::from_bits(
                    r.fixed64()?,
                ))))
            }
            5..=7 => {
                // Arrays, kvlists and bytes are rare: decode them with prost into the
                // generated type and render JSON like the reference path does.
                r.expect(wt, WireType::Len, "any_value")?;
                let start = r.offset();
                let body = r.bytes()?;
                let av = nested_any_value(field, body, start)?;
                Some(Decodedvalue::Json(
                    super::convert::any_value_json(&av).to_string(),
                ))
            }
            _ => {
                r.skip(wt)?;
                out
            }
        };
    }
    Ok(out)
}

fn nested_any_value(
    field: u32,
    body: &[u8],
    at: usize,
) -> Result<opentelemetry_proto::tonic::common::v1::AnyValue, DecodeError> {
    use opentelemetry_proto::tonic::common::v1::{
        AnyValue, ArrayValue, KeyValueList, any_value::Value,
    };
    use prost::Message;
    let bad = |e: prost::DecodeError| {
        DecodeError::Protobuf(format!("{e} in attribute value at byte {at}"))
    };
    let value = match field {
        5 => Value::ArrayValue(ArrayValue::decode(body).map_err(bad)?),
        6 => Value::KvlistValue(KeyValueList::decode(body).map_err(bad)?),
        _ => Value::BytesValue(body.to_vec()),
    };
    Ok(AnyValue { value: Some(value) })
}
