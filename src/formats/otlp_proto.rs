//! Fast OTLP protobuf decoding: walks the wire format of `ExportTraceServiceRequest`
//! directly, borrowing strings from the record instead of building the generated
//! message tree. About 3x faster than prost + conversion (see BENCHMARKS.md); the prost
//! path (`SpanDecoder::decode_proto_reference`) stays as the reference the tests compare
//! against.

use spanflow_operators::AttrValue;

use super::Decoded;
use super::convert::{RawSpan, Resource, SpanBuilder, WireAttr};
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
    // Growing the span vector from empty copied each span several times; OTLP spans
    // take ~200-400 bytes on the wire, so this rarely needs to grow again.
    out.spans.reserve(payload.len() / 256);
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
    // The resource may follow its spans on the wire; read it first. Every record
    // repeats the resources of its spans, so a resource seen before on this thread (the
    // same bytes) is taken from the cache instead of decoded again.
    let mut only: Option<&[u8]> = None;
    let mut count = 0usize;
    let mut pass = Reader::new(rs.remaining(), rs.offset());
    while let Some((field, wt)) = pass.field()? {
        if field == 1 {
            pass.expect(wt, WireType::Len, "resource")?;
            only = Some(pass.message()?.remaining());
            count += 1;
        } else {
            pass.skip(wt)?;
        }
    }
    let cached = match only {
        Some(bytes) if count == 1 => b.cached_resource(bytes),
        _ => None,
    };
    let resource = match cached {
        Some(r) => r,
        None => {
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
            if let Some(bytes) = only.filter(|_| count == 1) {
                b.remember_resource(bytes, &resource);
            }
            resource
        }
    };
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
    // Kept attributes are copied into the span's packed attributes as they are on the
    // wire, a run of consecutive `attributes` fields at a time: `run` is the pending run
    // (positions in `bytes`), handed over when an attribute breaks it and at the end.
    let bytes = r.remaining();
    let base = r.offset();
    let mut run = 0..0;
    loop {
        // Attributes are most of a span's fields: take their one-byte tag (field 9,
        // length-delimited) directly. Everything else, and every error, goes through
        // the general field walk.
        if r.peek() == Some(0x4a) {
            let at = r.offset() - base;
            r.advance(1);
            let kv = r.message()?;
            let end = r.offset() - base;
            if let Some((k, v)) = canonical_key_value(kv.remaining()) {
                match b.span_attr_wire(k, v) {
                    WireAttr::Copy => {
                        if run.end != at {
                            b.push_encoded(bytes.get(run.clone()).unwrap_or_default());
                            run.start = at;
                        }
                        run.end = end;
                    }
                    WireAttr::Absorbed => {}
                    WireAttr::Reencode => {
                        b.push_encoded(bytes.get(run.clone()).unwrap_or_default());
                        run = 0..0;
                        b.push_span_attr(k, v);
                    }
                }
            } else {
                b.push_encoded(bytes.get(run.clone()).unwrap_or_default());
                run = 0..0;
                key_value_general(kv, |k, v| b.span_attr(k, v))?;
            }
            continue;
        }
        let Some((field, wt)) = r.field()? else { break };
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
                b.push_encoded(bytes.get(run.clone()).unwrap_or_default());
                run = 0..0;
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
    b.push_encoded(bytes.get(run).unwrap_or_default());
    Ok(b.finish_span(&raw, res))
}

/// Decodes a `KeyValue` and hands it to `f` (values that are unset are skipped, as the
/// prost path does).
#[inline]
fn key_value(r: Reader<'_>, f: impl FnOnce(&str, AttrValue<'_>)) -> Result<(), DecodeError> {
    // Attributes are most of a span's bytes and nearly all of them are a key and one
    // scalar value in canonical field order; read that shape directly and leave
    // everything else (and every error) to the general walk below.
    if let Some((k, v)) = canonical_key_value(r.remaining()) {
        f(k, v);
        return Ok(());
    }
    key_value_general(r, f)
}

/// `KeyValue { key (1), value (2): AnyValue { one string, bool, int or double } }`
/// with nothing else, or `None` to take the general path. Returns what the general path
/// would hand on for the same bytes.
#[inline(always)]
fn canonical_key_value(kv: &[u8]) -> Option<(&str, AttrValue<'_>)> {
    use spanflow_operators::model::WireValue;
    let (key, value) = spanflow_operators::model::canonical_key_value(kv, false)?;
    // The entry's tags are ASCII, and so are its lengths below 128: when the whole entry
    // is ASCII, so are the key and a string value, and one check validates both (most
    // attributes are short ASCII strings).
    if let WireValue::Str(t) = value
        && kv.is_ascii()
    {
        // SAFETY: `key` and `t` are parts of `kv`, which is ASCII, hence valid UTF-8.
        let (k, t) = unsafe {
            (
                std::str::from_utf8_unchecked(key),
                std::str::from_utf8_unchecked(t),
            )
        };
        return Some((k, AttrValue::Str(t)));
    }
    let value = match value {
        WireValue::Str(t) => AttrValue::Str(utf8(t)?),
        WireValue::Bool(b) => AttrValue::Bool(b),
        WireValue::Int(i) => AttrValue::Int(i),
        WireValue::Double(d) => AttrValue::Double(d),
        // Not accepted from the wire (`json` false).
        WireValue::Json(_) => return None,
    };
    Some((utf8(key)?, value))
}

/// Validated text; `None` leaves the error (and its message) to the general path.
#[inline(always)]
fn utf8(b: &[u8]) -> Option<&str> {
    super::wire::utf8(b).ok()
}

fn key_value_general(
    mut r: Reader<'_>,
    f: impl FnOnce(&str, AttrValue<'_>),
) -> Result<(), DecodeError> {
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn general(kv: &[u8]) -> Result<Option<(String, String)>, DecodeError> {
        let mut got = None;
        key_value_general(Reader::new(kv, 0), |k, v| {
            got = Some((k.to_owned(), format!("{v:?}")));
        })?;
        Ok(got)
    }

    /// Bytes shaped like a `KeyValue`: field tags, lengths and values drawn so that the
    /// canonical shape, its near misses and invalid UTF-8 all come up.
    fn arb_kv() -> impl Strategy<Value = Vec<u8>> {
        let text = prop_oneof![
            "[a-z.]{0,8}".prop_map(String::into_bytes),
            "\\PC{0,4}".prop_map(String::into_bytes),
            prop::collection::vec(any::<u8>(), 0..6),
            (120usize..140).prop_map(|n| vec![b'v'; n]),
        ];
        let value = prop_oneof![
            text.clone().prop_map(|t| {
                let mut v = vec![0x0a];
                push_len(&mut v, t.len());
                v.extend(t);
                v
            }),
            (prop_oneof![Just(0x10u8), Just(0x18)], any::<u64>()).prop_map(|(tag, x)| {
                let mut v = vec![tag];
                push_len(&mut v, x as usize);
                v
            }),
            any::<f64>().prop_map(|d| {
                let mut v = vec![0x21];
                v.extend(d.to_bits().to_le_bytes());
                v
            }),
            prop::collection::vec(any::<u8>(), 0..12),
        ];
        (
            text,
            value,
            prop::collection::vec(any::<u8>(), 0..3),
            any::<bool>(),
        )
            .prop_map(|(key, value, tail, swap)| {
                let mut k = vec![0x0a];
                push_len(&mut k, key.len());
                k.extend(key);
                let mut v = vec![0x12];
                push_len(&mut v, value.len());
                v.extend(value);
                let mut out = if swap {
                    [v, k].concat()
                } else {
                    [k, v].concat()
                };
                out.extend(tail);
                out
            })
    }

    fn push_len(v: &mut Vec<u8>, mut n: usize) {
        while n >= 0x80 {
            v.push((n as u8) | 0x80);
            n >>= 7;
        }
        v.push(n as u8);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Whenever the shortcut reads a `KeyValue`, the general walk reads the same.
        #[test]
        fn canonical_key_value_agrees_with_the_general_walk(kv in arb_kv()) {
            if let Some((k, v)) = canonical_key_value(&kv) {
                let g = general(&kv);
                prop_assert!(g.is_ok(), "general path failed: {g:?}");
                prop_assert_eq!(g.ok().flatten(), Some((k.to_owned(), format!("{v:?}"))));
            }
        }
    }
}
