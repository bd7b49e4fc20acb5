//! Fast OTLP protobuf decoding: walks the wire format of `ExportTraceServiceRequest`
//! directly, borrowing strings from the record instead of building the generated
//! message tree. About 3x faster than prost + conversion (see BENCHMARKS.md); the prost
//! path (`SpanDecoder::decode_proto_reference`) stays as the reference the tests compare
//! against.

use spanflow_operators::AttrValue;

use super::Decoded;
use super::convert::{EnvelopeKey, RawSpan, Resource, SpanBuilder, WireAttr};
use super::dead_letter::{DeadLetter, DecodeError, RecordMeta};
use super::resource_cache::Key as CacheKey;
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

/// A `ResourceSpans`' schema URL as read, its UTF-8 not yet checked.
#[derive(Clone, Copy, Default)]
struct SchemaUrl<'a> {
    bytes: &'a [u8],
    /// Where its length is in the record, for the error.
    at: usize,
}

impl SchemaUrl<'_> {
    fn check(&self) -> Result<(), DecodeError> {
        super::wire::checked_str(self.bytes, self.at).map(drop)
    }
}

fn resource_spans(
    b: &mut SpanBuilder,
    rs: Reader<'_>,
    meta: &RecordMeta,
    out: &mut Decoded,
    index: &mut u32,
) -> Result<(), DecodeError> {
    // The resource and the schema URL may follow the spans on the wire; read them first.
    let mut only: Option<&[u8]> = None;
    let mut count = 0usize;
    // Its UTF-8 is checked where the resource is decoded, not here: a cached resource's
    // key holds the URL's bytes, checked when it was remembered.
    let mut schema_url = SchemaUrl::default();
    // The `ScopeSpans`, when there is exactly one (the usual case, and nearly every
    // piece of a topic split by trace id): it is then decoded without walking the
    // `ResourceSpans` a second time. Several, or one of the wrong wire type (which the
    // walk reports), take the walk.
    let mut one_scope = None;
    let mut walk = false;
    let mut pass = Reader::new(rs.remaining(), rs.offset());
    while let Some((field, wt)) = pass.field()? {
        match field {
            1 => {
                pass.expect(wt, WireType::Len, "resource")?;
                only = Some(pass.message()?.remaining());
                count += 1;
            }
            2 => {
                walk |= one_scope.is_some() || wt != WireType::Len;
                if wt == WireType::Len {
                    one_scope = Some(pass.message()?);
                } else {
                    pass.skip(wt)?;
                }
            }
            3 => {
                pass.expect(wt, WireType::Len, "schema_url")?;
                let at = pass.offset();
                schema_url = SchemaUrl {
                    bytes: pass.bytes()?,
                    at,
                };
            }
            _ => pass.skip(wt)?,
        }
    }
    if one_scope.is_none() {
        // No resource is decoded for it, and the record must still fail.
        schema_url.check()?;
    }
    let only = only.filter(|_| count == 1);
    if let Some(ss) = one_scope.filter(|_| !walk) {
        return scope_spans(b, rs, only, schema_url, ss, meta, out, index);
    }
    let mut pass = Reader::new(rs.remaining(), rs.offset());
    while let Some((field, wt)) = pass.field()? {
        if field == 2 {
            pass.expect(wt, WireType::Len, "scope_spans")?;
            let ss = pass.message()?;
            scope_spans(b, rs, only, schema_url, ss, meta, out, index)?;
        } else {
            pass.skip(wt)?;
        }
    }
    Ok(())
}

/// The spans of one `ScopeSpans` of `rs`, with `only` and `schema_url` as
/// [`scoped_resource`] takes them.
///
/// Inlined into its two callers, as the loop it was: out of line, each span was copied
/// once more on its way into `out` (callgrind: ~58 instructions per span).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn scope_spans(
    b: &mut SpanBuilder,
    rs: Reader<'_>,
    only: Option<&[u8]>,
    schema_url: SchemaUrl<'_>,
    ss: Reader<'_>,
    meta: &RecordMeta,
    out: &mut Decoded,
    index: &mut u32,
) -> Result<(), DecodeError> {
    let head = scope_head(ss)?;
    let resource = scoped_resource(b, rs, only, schema_url, ss, Some(head))?;
    let first = out.spans.len();
    let whole_ss = ss;
    // Envelope fields after the spans (encoders write them in field order, so
    // the scope's schema URL comes last); the resource read before the spans
    // lacks them.
    let mut late = false;
    let mut spans_seen = false;
    let mut ss = ss;
    // From the first span: the fields before it are the head, read already.
    ss.advance(head.len());
    while let Some((f, wt)) = ss.field()? {
        if f == 2 {
            spans_seen = true;
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
            late |= spans_seen && (f == 1 || f == 3);
            ss.skip(wt)?;
        }
    }
    if late {
        // The same resource again: its truncated attributes are counted once.
        let whole = b.uncounted(|b| scoped_resource(b, rs, only, schema_url, whole_ss, None))?;
        for s in out.spans.get_mut(first..).unwrap_or_default() {
            s.resource_attrs = whole.extra.clone();
        }
    }
    Ok(())
}

/// The resource of the spans of one `ScopeSpans`: the `Resource` message's fields and
/// the envelope's scope and schema URLs (see [`super::SCOPE`]). With the `head` of `ss`
/// ([`scope_head`]), only the envelope fields before the first span are read; without,
/// all of them.
///
/// Every record repeats the resources and scopes of its spans, so one seen before on
/// this thread is taken from the cache instead of decoded again; `only` is the
/// resource's bytes when it is the one resource of `rs` (else nothing is cached). With a
/// head, the key is bytes as they lie in the record: the resource, its schema URL and
/// the head. Building the envelope first and keying by it cost a third of the lookup
/// (BENCHMARKS.md, 2026-12-05, twenty-fourth session). Without (a scope schema URL after
/// the spans, as prost and the Go SDK write it), it is the resource and the envelope
/// built from all the fields, in a cache of its own: head bytes could equal an envelope
/// built for another scope.
fn scoped_resource(
    b: &mut SpanBuilder,
    rs: Reader<'_>,
    only: Option<&[u8]>,
    schema_url: SchemaUrl<'_>,
    ss: Reader<'_>,
    head: Option<&[u8]>,
) -> Result<Resource, DecodeError> {
    let head_key = match (only, head) {
        (Some(bytes), Some(head)) => Some([bytes, schema_url.bytes, head]),
        _ => None,
    };
    if let Some(key) = head_key
        && let Some(r) = b.cached_resource(EnvelopeKey::Head, key)
    {
        return Ok(r);
    }
    schema_url.check()?;
    let schema_url = schema_url.bytes;
    let mut envelope = std::mem::take(&mut b.envelope);
    let res = envelope_of(&mut envelope, schema_url, ss, head.is_none()).and_then(|scope| {
        let built_key = match (only, head) {
            (Some(bytes), None) => Some([bytes, &envelope[..], &[][..]]),
            _ => None,
        };
        if let Some(key) = built_key
            && let Some(r) = b.cached_resource(EnvelopeKey::Built, key)
        {
            return Ok(r);
        }
        // The scope is checked only when the resource is not cached: the key holds its
        // bytes, and bytes seen before were checked then.
        if let Some((scope, at)) = scope {
            validate::<opentelemetry_proto::tonic::common::v1::InstrumentationScope>(
                scope, "scope",
            )
            .map_err(|e| DecodeError::Protobuf(format!("{e} at byte {at}")))?;
        }
        let key = (head_key.map(|k| (EnvelopeKey::Head, k)))
            .or(built_key.map(|k| (EnvelopeKey::Built, k)));
        scoped_resource_of(b, rs, &envelope, key)
    });
    b.envelope = envelope;
    res
}

/// The fields of `ss` before its first span (the scope, its schema URL, unknown fields)
/// as they lie in the record: a part of the cache's key. Their wire types are checked as
/// [`envelope_of`] checks them, so that a record fails the same way whether its
/// resource is cached or not; the scope message and the schema URL's UTF-8 are left to
/// [`envelope_of`], as a key found in the cache was checked when it was remembered.
fn scope_head<'a>(ss: Reader<'a>) -> Result<&'a [u8], DecodeError> {
    let all = ss.remaining();
    // What SDKs and the Collector write: the scope with a one-byte length, then the
    // first span. The walk below reads it to the same head, in several times the
    // instructions, and the head is looked up for every piece of a split topic.
    if let [0x0a, len, ..] = *all
        && len < 0x80
        && let end = 2 + usize::from(len)
        && all.get(end) == Some(&0x12)
    {
        return Ok(all.get(..end).unwrap_or(all));
    }
    let mut pass = Reader::new(all, ss.offset());
    loop {
        let head = pass.offset() - ss.offset();
        match pass.field()? {
            None | Some((2, _)) => return Ok(all.get(..head).unwrap_or(all)),
            Some((1, wt)) => {
                pass.expect(wt, WireType::Len, "scope")?;
                pass.bytes()?;
            }
            Some((3, wt)) => {
                pass.expect(wt, WireType::Len, "schema_url")?;
                pass.bytes()?;
            }
            Some((_, wt)) => pass.skip(wt)?,
        }
    }
}

/// Writes the envelope fields of `ss` (see [`super::SCOPE`]) and the resource's
/// `schema_url` into `envelope`: those before the first span, or with `whole` all of
/// them. Returns the scope message, unchecked, with its offset.
fn envelope_of<'a>(
    envelope: &mut Vec<u8>,
    schema_url: &[u8],
    ss: Reader<'a>,
    whole: bool,
) -> Result<Option<(&'a [u8], usize)>, DecodeError> {
    use spanflow_operators::model::wire::put_len_field;
    envelope.clear();
    if !schema_url.is_empty() {
        put_len_field(envelope, super::RESOURCE_SCHEMA_URL, schema_url);
    }
    let mut scope_at = None;
    let mut scope_schema_url: &[u8] = &[];
    let mut pass = Reader::new(ss.remaining(), ss.offset());
    while let Some((f, wt)) = pass.field()? {
        match f {
            // Walking the spans here would read every span's bytes twice; unless told
            // to, stop at the first (the caller notes envelope fields after them).
            2 if !whole => break,
            1 => {
                pass.expect(wt, WireType::Len, "scope")?;
                let at = pass.offset();
                let scope = pass.bytes()?;
                scope_at = Some((scope, at));
                put_len_field(envelope, super::SCOPE, scope);
            }
            3 => {
                pass.expect(wt, WireType::Len, "schema_url")?;
                scope_schema_url = pass.str()?.as_bytes();
            }
            _ => pass.skip(wt)?,
        }
    }
    // In the reference's order, whatever the record's: the same envelope makes the same
    // resource. The last schema URL counts, as protobuf takes the last of a string.
    if !scope_schema_url.is_empty() {
        put_len_field(envelope, super::SCOPE_SCHEMA_URL, scope_schema_url);
    }
    Ok(scope_at)
}

/// Decodes the resource of `rs` with `envelope`, and remembers it under `key`.
fn scoped_resource_of(
    b: &mut SpanBuilder,
    rs: Reader<'_>,
    envelope: &[u8],
    key: Option<(EnvelopeKey, CacheKey<'_>)>,
) -> Result<Resource, DecodeError> {
    b.begin_resource();
    let mut pass = Reader::new(rs.remaining(), rs.offset());
    while let Some((field, wt)) = pass.field()? {
        if field != 1 {
            pass.skip(wt)?;
            continue;
        }
        pass.expect(wt, WireType::Len, "resource")?;
        let mut res = pass.message()?;
        let bytes = res.remaining();
        let base = res.offset();
        loop {
            let at = res.offset() - base;
            let Some((f, wt)) = res.field()? else { break };
            if f == 1 {
                res.expect(wt, WireType::Len, "resource.attributes")?;
                let kv = res.message()?;
                let again = kv;
                let mut wire = WireAttr::Copy;
                key_value(kv, |k, v| wire = b.resource_attr_wire(k, v))?;
                if let WireAttr::Reencode = wire {
                    key_value(again, |k, v| b.resource_attr(k, v))?;
                    continue;
                }
            } else {
                res.skip(wt)?;
            }
            b.push_resource_encoded(bytes.get(at..res.offset() - base).unwrap_or_default());
        }
    }
    b.push_resource_encoded(envelope);
    let resource = b.end_resource();
    if let Some((kind, key)) = key {
        b.remember_resource(kind, key, &resource);
    }
    Ok(resource)
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
    // Every field but the typed ones (ids, name, kind, times) is copied into the span's
    // packed fields as it is on the wire, a run of consecutive fields at a time: `run`
    // is the pending run (positions in `bytes`), handed over when a typed field or an
    // attribute that must be truncated breaks it, and at the end.
    let bytes = r.remaining();
    let base = r.offset();
    let mut run = 0..0;
    let keep = |b: &mut SpanBuilder, run: &mut std::ops::Range<usize>, at: usize, end| {
        if run.end != at {
            b.push_encoded(bytes.get(run.clone()).unwrap_or_default());
            run.start = at;
        }
        run.end = end;
    };
    loop {
        // Attributes are most of a span's fields: take their one-byte tag (field 9,
        // length-delimited) directly. Everything else, and every error, goes through
        // the general field walk.
        if r.peek() == Some(0x4a) {
            let at = r.offset() - base;
            r.advance(1);
            let kv = r.message()?;
            let end = r.offset() - base;
            let again = kv;
            let wire = match canonical_key_value(kv.remaining()) {
                Some((k, v)) => b.span_attr_wire(k, v),
                None => {
                    let mut wire = WireAttr::Copy;
                    key_value_general(kv, |k, v| wire = b.span_attr_wire(k, v))?;
                    wire
                }
            };
            match wire {
                WireAttr::Copy => keep(b, &mut run, at, end),
                WireAttr::Reencode => {
                    b.push_encoded(bytes.get(run.clone()).unwrap_or_default());
                    run = 0..0;
                    key_value(again, |k, v| b.push_span_attr(k, v))?;
                }
            }
            continue;
        }
        let at = r.offset() - base;
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
                // Not the one-byte tag above: a wire type attributes do not have.
                r.expect(wt, WireType::Len, "attributes")?;
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
                keep(b, &mut run, at, r.offset() - base);
            }
            3 => {
                r.expect(wt, WireType::Len, "trace_state")?;
                r.str()?;
                keep(b, &mut run, at, r.offset() - base);
            }
            11 => {
                r.expect(wt, WireType::Len, "events")?;
                let body = r.bytes()?;
                validate::<opentelemetry_proto::tonic::trace::v1::span::Event>(body, "event")?;
                keep(b, &mut run, at, r.offset() - base);
            }
            13 => {
                r.expect(wt, WireType::Len, "links")?;
                let body = r.bytes()?;
                validate::<opentelemetry_proto::tonic::trace::v1::span::Link>(body, "link")?;
                keep(b, &mut run, at, r.offset() - base);
            }
            _ => {
                // trace_state's siblings: dropped counts, flags, and fields a newer
                // OTLP defines, all kept as they came.
                r.skip(wt)?;
                keep(b, &mut run, at, r.offset() - base);
            }
        }
    }
    b.push_encoded(bytes.get(run).unwrap_or_default());
    Ok(b.finish_span(&raw, res))
}

/// Checks that `body` decodes as a `M` (events and links: rare, and kept in wire form,
/// so a bad one must be caught here rather than by whoever reads the kept trace).
fn validate<M: prost::Message + Default>(body: &[u8], what: &str) -> Result<(), DecodeError> {
    M::decode(body)
        .map(drop)
        .map_err(|e| DecodeError::Protobuf(format!("{e} in a span's {what}")))
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
    let (key, value) = spanflow_operators::model::canonical_key_value(kv)?;
    // The entry's tags are ASCII, and so are its lengths below 128: when the whole entry
    // is ASCII, so are the key and a string value, and one check validates both (most
    // attributes are short ASCII strings).
    if let WireValue::Str(t) = value
        && spanflow_operators::model::wire::is_ascii(kv)
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
    if let Some(v) = any_value(v)? {
        f(key, v);
    }
    Ok(())
}

/// An `AnyValue`: a scalar, or the whole body for an array, kvlist or bytes value
/// (validated here, kept in wire form); `None` when unset.
fn any_value(mut r: Reader<'_>) -> Result<Option<AttrValue<'_>>, DecodeError> {
    let body = r.remaining();
    let mut out = None;
    while let Some((field, wt)) = r.field()? {
        out = match field {
            1 => {
                r.expect(wt, WireType::Len, "string_value")?;
                Some(AttrValue::Str(r.str()?))
            }
            2 => {
                r.expect(wt, WireType::Varint, "bool_value")?;
                Some(AttrValue::Bool(r.varint()? != 0))
            }
            3 => {
                r.expect(wt, WireType::Varint, "int_value")?;
                Some(AttrValue::Int(r.varint()? as i64))
            }
            4 => {
                r.expect(wt, WireType::Fixed64, "double_value")?;
                Some(AttrValue::Double(f64::from_bits(r.fixed64()?)))
            }
            5..=7 => {
                // Arrays, kvlists and bytes are rare: prost checks them.
                r.expect(wt, WireType::Len, "any_value")?;
                let start = r.offset();
                r.bytes()?;
                use prost::Message;
                opentelemetry_proto::tonic::common::v1::AnyValue::decode(body).map_err(|e| {
                    DecodeError::Protobuf(format!("{e} in attribute value at byte {start}"))
                })?;
                Some(AttrValue::Any(body))
            }
            8 => {
                r.expect(wt, WireType::Varint, "string_value_strindex")?;
                r.varint()?;
                None
            }
            _ => {
                r.skip(wt)?;
                out
            }
        };
    }
    Ok(out)
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
