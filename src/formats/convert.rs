//! Assembling [`Span`]s from decoded OTLP parts; shared by the fast protobuf decoder,
//! the prost reference decoder and the JSON decoder.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};
use prost::Message;
use spanflow_operators::classify::CallAttrs;
use spanflow_operators::model::{MAX_ATTR_KEY_LEN, MAX_ATTR_VALUE_LEN};
use spanflow_operators::{
    AttrArena, AttrValue, Attrs, AttrsBuilder, AttrsMap, Span, SpanId, SpanKind, StatusCode, Sym,
    TraceId,
};

use super::Decoded;
use super::dead_letter::{DeadLetter, DecodeError, RecordMeta};
use super::resource_cache::{Key as CacheKey, ResourceCache};

/// The service name OTel SDKs report when none is configured.
pub const UNKNOWN_SERVICE: &str = "unknown_service";

/// Per-resource facts, decoded once and shared by all its spans.
#[derive(Clone)]
pub(crate) struct Resource {
    pub service: Sym,
    pub instance: Sym,
    /// Remaining resource attributes, packed with the resource flag.
    pub extra: Attrs,
}

/// The fixed fields of a span as they come off the wire.
pub(crate) struct RawSpan<'a> {
    pub trace_id: &'a [u8],
    pub span_id: &'a [u8],
    pub parent_span_id: &'a [u8],
    pub name: &'a str,
    pub kind: i32,
    pub start: u64,
    pub end: u64,
    pub status_code: i32,
}

/// What to do with a span attribute read from the wire ([`SpanBuilder::span_attr_wire`]).
pub(crate) enum WireAttr {
    /// Keep its field bytes as they are: append them to the packed fields (after the
    /// fields before it). Attributes read into typed fields of the span are kept too, so
    /// that the span goes out as it came in.
    Copy,
    /// It must be truncated: hand it to [`SpanBuilder::push_span_attr`] instead.
    Reencode,
}

/// Span attribute chunks a decoder fills, per shard: ~23 spans of the demo fleet each.
/// A chunk is freed when the last of its spans goes, so a small one is held by fewer
/// traces, and the allocator reuses blocks of this size without new pages.
const DECODER_CHUNK: usize = 4 << 10;

/// Scratch state reused across spans.
#[derive(Default)]
pub(crate) struct SpanBuilder {
    attrs: AttrsBuilder,
    /// Where finished spans' attributes go: one arena per shard the spans are routed to
    /// (by trace id, as the runtime routes them), so that a chunk is only ever released
    /// by one shard's thread. Without any (a builder made without shards), each span's
    /// attributes get an allocation of their own.
    arenas: Vec<AttrArena>,
    resource_attrs: AttrsBuilder,
    resource_service: Option<Sym>,
    resource_instance: Option<Sym>,
    resource_host: Option<Sym>,
    call: CallAttrs,
    /// Scratch: the scope envelope being read (`otlp_proto`).
    pub(super) envelope: Vec<u8>,
    truncated: u64,
    /// `truncated` when the current resource began.
    truncated_at_resource: u64,
}

/// What the envelope part of a resource cache key holds (see
/// `otlp_proto::scoped_resource`). Each kind has a cache of its own: bytes of one kind
/// may equal bytes of the other that stand for another envelope.
#[derive(Debug, Clone, Copy)]
pub(crate) enum EnvelopeKey {
    /// The `ScopeSpans` fields before its first span, as they lie in the record.
    Head,
    /// The envelope built from all the `ScopeSpans` fields.
    Built,
}

type Resources = std::cell::RefCell<ResourceCache<(Resource, u64)>>;

thread_local! {
    /// Resources decoded on this thread, by the bytes of their `Resource` message and
    /// envelope, with the number of attributes truncated in them, one cache per
    /// [`EnvelopeKey`]. Decoding a resource (ten attributes, interning, packing, looking
    /// up its shared buffer) cost as much as ten spans, and each record repeats the
    /// resources of all its spans.
    static HEAD_RESOURCES: Resources = Resources::default();
    static BUILT_RESOURCES: Resources = Resources::default();
}

/// `f` on this thread's cache of `kind`.
fn with_resources<R>(kind: EnvelopeKey, f: impl FnOnce(&Resources) -> R) -> R {
    match kind {
        EnvelopeKey::Head => HEAD_RESOURCES.with(f),
        EnvelopeKey::Built => BUILT_RESOURCES.with(f),
    }
}

impl SpanBuilder {
    /// A builder for spans that go to `shards` shards, routed by
    /// [`TraceId::shard`].
    pub fn with_shards(shards: usize) -> Self {
        SpanBuilder {
            arenas: (0..shards.max(1))
                .map(|_| AttrArena::new(DECODER_CHUNK, DECODER_CHUNK))
                .collect(),
            ..SpanBuilder::default()
        }
    }

    /// Runs `f` without counting the attributes it truncates (for a resource decoded a
    /// second time).
    pub fn uncounted<T>(&mut self, f: impl FnOnce(&mut Self) -> T) -> T {
        let truncated = self.truncated;
        let r = f(self);
        self.truncated = truncated;
        r
    }

    /// Returns and resets the count of truncated attributes.
    pub fn take_truncated(&mut self) -> u64 {
        std::mem::take(&mut self.truncated)
    }

    /// The resource decoded before on this thread under the same key (the bytes of its
    /// `Resource` message and of its envelope, as `otlp_proto` reads them), counting its
    /// truncated attributes again as decoding it would.
    pub fn cached_resource(&mut self, kind: EnvelopeKey, key: CacheKey<'_>) -> Option<Resource> {
        with_resources(kind, |c| {
            let c = c.try_borrow().ok()?;
            let (res, truncated) = c.get(key)?;
            self.truncated += truncated;
            Some(res.clone())
        })
    }

    /// Remembers the resource just finished ([`end_resource`](Self::end_resource))
    /// under `key`, for [`cached_resource`](Self::cached_resource).
    pub fn remember_resource(&mut self, kind: EnvelopeKey, key: CacheKey<'_>, res: &Resource) {
        let truncated = self.truncated.saturating_sub(self.truncated_at_resource);
        with_resources(kind, |c| {
            if let Ok(mut c) = c.try_borrow_mut() {
                c.insert(key, (res.clone(), truncated));
            }
        });
    }

    /// Forgets the attributes and classification of a span that was not finished (its
    /// record turned out malformed), so they do not end up in the next span decoded.
    pub fn discard_span(&mut self) {
        self.attrs.finish();
        self.call = CallAttrs::default();
    }

    /// Starts collecting a resource's attributes.
    pub fn begin_resource(&mut self) {
        self.truncated_at_resource = self.truncated;
        self.resource_service = None;
        self.resource_instance = None;
        self.resource_host = None;
        self.resource_attrs.finish();
    }

    /// One resource attribute, re-encoded (truncated to the limits when it must be).
    pub fn resource_attr(&mut self, key: &str, value: AttrValue<'_>) {
        self.lift_resource_attr(key, value);
        self.truncated += u64::from(self.resource_attrs.push(key, value, true));
    }

    /// Notes one resource attribute read from the OTLP wire, whose field bytes the
    /// caller holds: [`WireAttr::Copy`] to keep them with
    /// [`push_resource_encoded`](Self::push_resource_encoded), else hand it to
    /// [`resource_attr`](Self::resource_attr).
    pub fn resource_attr_wire(&mut self, key: &str, value: AttrValue<'_>) -> WireAttr {
        if too_long(key, value) {
            return WireAttr::Reencode;
        }
        self.lift_resource_attr(key, value);
        WireAttr::Copy
    }

    /// Appends fields of the `Resource` message (or of the span's scope, see
    /// [`SCOPE`]) as they are on the wire.
    pub fn push_resource_encoded(&mut self, fields: &[u8]) {
        self.resource_attrs.push_encoded(fields);
    }

    /// The resource attributes read into the span's typed fields. They stay among the
    /// resource's attributes too, so that the resource goes out as it came in.
    fn lift_resource_attr(&mut self, key: &str, value: AttrValue<'_>) {
        match (key, value) {
            ("service.name", AttrValue::Str(s)) => self.resource_service = Some(Sym::new(s)),
            ("service.instance.id", AttrValue::Str(s)) => {
                self.resource_instance = Some(Sym::new(s))
            }
            ("host.name", AttrValue::Str(s)) => self.resource_host = Some(Sym::new(s)),
            _ => {}
        }
    }

    /// Finishes the resource.
    pub fn end_resource(&mut self) -> Resource {
        Resource {
            service: self
                .resource_service
                .unwrap_or_else(|| Sym::new(UNKNOWN_SERVICE)),
            instance: self
                .resource_instance
                .or(self.resource_host)
                .unwrap_or_default(),
            extra: shared_resource(self.resource_attrs.finish()),
        }
    }

    /// Classifies one span attribute read from the OTLP wire, whose field bytes the
    /// caller holds (see [`WireAttr`]).
    #[inline]
    pub fn span_attr_wire(&mut self, key: &str, value: AttrValue<'_>) -> WireAttr {
        self.call.observe(key, value);
        if too_long(key, value) {
            WireAttr::Reencode
        } else {
            WireAttr::Copy
        }
    }

    /// Packs one span attribute that [`span_attr_wire`](Self::span_attr_wire) already
    /// classified as [`WireAttr::Reencode`].
    pub fn push_span_attr(&mut self, key: &str, value: AttrValue<'_>) {
        self.truncated += u64::from(self.attrs.push(key, value, false));
    }

    /// Appends span attribute fields copied from the wire (see
    /// [`AttrsBuilder::push_encoded`]).
    #[inline]
    pub fn push_encoded(&mut self, fields: &[u8]) {
        self.attrs.push_encoded(fields);
    }

    /// Validates the fixed fields and builds the span; attributes observed since the
    /// last call belong to it. On error the attributes are discarded.
    pub fn finish_span(&mut self, raw: &RawSpan<'_>, res: &Resource) -> Result<Span, DecodeError> {
        let call = std::mem::take(&mut self.call);
        let (trace_id, span_id, parent_span_id) = match check(raw) {
            Ok(ids) => ids,
            Err(e) => {
                self.attrs.finish();
                return Err(e);
            }
        };
        let kind = SpanKind::from_i32(raw.kind);
        let c = call.finish(kind);
        Ok(Span {
            trace_id,
            span_id,
            parent_span_id,
            start_ns: raw.start,
            end_ns: raw.end,
            service: res.service,
            instance: res.instance,
            name: Sym::new(raw.name),
            kind,
            status: StatusCode::from_i32(raw.status_code),
            call_type: c.call_type,
            http_status: c.http_status,
            // Set by the router, which knows the record's partition.
            origin: 0,
            peer: c.peer,
            db_system: c.db_system,
            messaging_destination: c.messaging_destination,
            attrs: self.finish_attrs(&trace_id),
            resource_attrs: res.extra.clone(),
        })
    }
}

/// True when an attribute must be truncated to be kept.
#[inline]
fn too_long(key: &str, value: AttrValue<'_>) -> bool {
    key.len() > MAX_ATTR_KEY_LEN
        || matches!(value, AttrValue::Str(s) if s.len() > MAX_ATTR_VALUE_LEN)
}

impl SpanBuilder {
    /// The span attributes pushed since the last span, in the arena of the span's shard.
    #[inline]
    fn finish_attrs(&mut self, trace_id: &TraceId) -> Attrs {
        let shard = trace_id.shard(self.arenas.len());
        match self.arenas.get_mut(shard) {
            Some(arena) => self.attrs.finish_in(arena),
            None => self.attrs.finish(),
        }
    }
}

/// The buffer this thread decoded before with the same content as `extra`, else
/// `extra`. Every record carries its own copy of each resource's attributes, and a
/// trace's spans come from many records: sharing one buffer per distinct resource lets
/// the span sinks recognize a resource by a pointer compare instead of hashing its
/// bytes again for nearly every span (and keeps one copy in memory instead of one per
/// record).
fn shared_resource(extra: Attrs) -> Attrs {
    /// Distinct resources remembered per thread; a fleet has far fewer.
    const LIMIT: usize = 4096;
    thread_local! {
        static SEEN: std::cell::RefCell<AttrsMap<()>> = std::cell::RefCell::new(AttrsMap::default());
    }
    if extra.is_empty() {
        return extra;
    }
    SEEN.with(|seen| {
        let Ok(mut seen) = seen.try_borrow_mut() else {
            return extra;
        };
        if let Some((known, _)) = seen.get_key_value(&extra) {
            return known.clone();
        }
        if seen.len() >= LIMIT {
            seen.clear();
        }
        seen.insert(extra.clone(), ());
        extra
    })
}

/// The checks of a span's ids and times that make it unusable (a dead letter) when
/// they fail.
pub(crate) fn check(raw: &RawSpan<'_>) -> Result<(TraceId, SpanId, SpanId), DecodeError> {
    let trace_id = TraceId::from_slice(raw.trace_id)
        .filter(|t| !t.is_zero())
        .ok_or_else(|| DecodeError::TraceId(describe_id(raw.trace_id, 16)))?;
    let span_id = SpanId::from_slice(raw.span_id)
        .filter(|t| !t.is_zero())
        .ok_or_else(|| DecodeError::SpanId(describe_id(raw.span_id, 8)))?;
    let parent_span_id = if raw.parent_span_id.is_empty() {
        SpanId::default()
    } else {
        SpanId::from_slice(raw.parent_span_id)
            .ok_or_else(|| DecodeError::ParentSpanId(describe_id(raw.parent_span_id, 8)))?
    };
    if raw.start == 0 || raw.end == 0 {
        return Err(DecodeError::MissingTime {
            start: raw.start,
            end: raw.end,
        });
    }
    if raw.end < raw.start {
        return Err(DecodeError::EndBeforeStart {
            start: raw.start,
            end: raw.end,
        });
    }
    Ok((trace_id, span_id, parent_span_id))
}

fn describe_id(b: &[u8], want: usize) -> String {
    if b.is_empty() {
        "missing".to_owned()
    } else if b.len() != want {
        format!("{} bytes, expected {want}", b.len())
    } else {
        "all zeros".to_owned()
    }
}

/// Renders array, kvlist and bytes values as JSON text: the reference the attribute
/// columns' rendering of values kept in wire form
/// (`spanflow_operators::model::wire::any_value_json`) is tested against.
#[cfg(test)]
pub(crate) fn any_value_json(v: &AnyValue) -> serde_json::Value {
    use serde_json::Value as J;
    match &v.value {
        None => J::Null,
        Some(any_value::Value::StringValue(s)) => J::String(s.clone()),
        Some(any_value::Value::BoolValue(b)) => J::Bool(*b),
        Some(any_value::Value::IntValue(i)) => J::from(*i),
        Some(any_value::Value::DoubleValue(d)) => J::from(*d),
        Some(any_value::Value::BytesValue(b)) => J::String(hex::encode(b)),
        Some(any_value::Value::ArrayValue(a)) => {
            J::Array(a.values.iter().map(any_value_json).collect())
        }
        Some(any_value::Value::KvlistValue(kv)) => J::Object(
            kv.values
                .iter()
                .map(|kv| {
                    (
                        kv.key.clone(),
                        kv.value.as_ref().map_or(J::Null, any_value_json),
                    )
                })
                .collect(),
        ),
        Some(any_value::Value::StringValueStrindex(_)) => J::Null,
    }
}

/// Calls `f` with the borrowed form of a prost `AnyValue` (`None` when unset); arrays,
/// kvlists and bytes as their encoded `AnyValue` body.
pub(crate) fn with_value(v: Option<&AnyValue>, f: impl FnOnce(Option<AttrValue<'_>>)) {
    let Some(av) = v else { return f(None) };
    match &av.value {
        None | Some(any_value::Value::StringValueStrindex(_)) => f(None),
        Some(any_value::Value::StringValue(s)) => f(Some(AttrValue::Str(s))),
        Some(any_value::Value::BoolValue(b)) => f(Some(AttrValue::Bool(*b))),
        Some(any_value::Value::IntValue(i)) => f(Some(AttrValue::Int(*i))),
        Some(any_value::Value::DoubleValue(d)) => f(Some(AttrValue::Double(*d))),
        Some(_) => f(Some(AttrValue::Any(&av.encode_to_vec()))),
    }
}

/// Appends field `tag` holding `kv` to `scratch` (cleared first).
fn encode_kv<'a>(tag: u32, kv: &KeyValue, scratch: &'a mut Vec<u8>) -> &'a [u8] {
    scratch.clear();
    prost::encoding::message::encode(tag, kv, scratch);
    scratch
}

/// The parts of a span's envelope its resource buffer keeps (see [`super::SCOPE`]).
pub(crate) fn encode_envelope(rs: &ResourceSpans, ss: &ScopeSpans, out: &mut Vec<u8>) {
    use prost::encoding::{message, string};
    if !rs.schema_url.is_empty() {
        string::encode(super::RESOURCE_SCHEMA_URL, &rs.schema_url, out);
    }
    if let Some(scope) = &ss.scope {
        message::encode(super::SCOPE, scope, out);
    }
    if !ss.schema_url.is_empty() {
        string::encode(super::SCOPE_SCHEMA_URL, &ss.schema_url, out);
    }
}

/// Converts a decoded request (prost or JSON) into spans and per-span dead letters;
/// every field of the spans, their resources and scopes is kept.
pub(crate) fn convert_request(
    b: &mut SpanBuilder,
    req: &ExportTraceServiceRequest,
    meta: &RecordMeta,
    out: &mut Decoded,
) {
    use prost::encoding::{fixed32, message, string, uint32};
    let mut index = 0u32;
    let mut scratch = Vec::new();
    for rs in &req.resource_spans {
        for ss in &rs.scope_spans {
            b.begin_resource();
            if let Some(r) = &rs.resource {
                for kv in &r.attributes {
                    with_value(kv.value.as_ref(), |v| {
                        match v.map(|v| (v, b.resource_attr_wire(&kv.key, v))) {
                            Some((v, WireAttr::Reencode)) => b.resource_attr(&kv.key, v),
                            _ => b.push_resource_encoded(encode_kv(1, kv, &mut scratch)),
                        }
                    });
                }
                scratch.clear();
                if r.dropped_attributes_count != 0 {
                    uint32::encode(2, &r.dropped_attributes_count, &mut scratch);
                }
                for e in &r.entity_refs {
                    message::encode(3, e, &mut scratch);
                }
                b.push_resource_encoded(&scratch);
            }
            scratch.clear();
            encode_envelope(rs, ss, &mut scratch);
            b.push_resource_encoded(&scratch);
            let res = b.end_resource();
            for s in &ss.spans {
                for kv in &s.attributes {
                    with_value(kv.value.as_ref(), |v| {
                        match v.map(|v| (v, b.span_attr_wire(&kv.key, v))) {
                            Some((v, WireAttr::Reencode)) => b.push_span_attr(&kv.key, v),
                            _ => b.push_encoded(encode_kv(9, kv, &mut scratch)),
                        }
                    });
                }
                scratch.clear();
                if !s.trace_state.is_empty() {
                    string::encode(3, &s.trace_state, &mut scratch);
                }
                if s.dropped_attributes_count != 0 {
                    uint32::encode(10, &s.dropped_attributes_count, &mut scratch);
                }
                for e in &s.events {
                    message::encode(11, e, &mut scratch);
                }
                if s.dropped_events_count != 0 {
                    uint32::encode(12, &s.dropped_events_count, &mut scratch);
                }
                for l in &s.links {
                    message::encode(13, l, &mut scratch);
                }
                if s.dropped_links_count != 0 {
                    uint32::encode(14, &s.dropped_links_count, &mut scratch);
                }
                if let Some(st) = &s.status {
                    message::encode(15, st, &mut scratch);
                }
                if s.flags != 0 {
                    fixed32::encode(16, &s.flags, &mut scratch);
                }
                b.push_encoded(&scratch);
                let status = s.status.as_ref().map_or(0, |st| st.code);
                let raw = RawSpan {
                    trace_id: &s.trace_id,
                    span_id: &s.span_id,
                    parent_span_id: &s.parent_span_id,
                    name: &s.name,
                    kind: s.kind,
                    start: s.start_time_unix_nano,
                    end: s.end_time_unix_nano,
                    status_code: status,
                };
                match b.finish_span(&raw, &res) {
                    Ok(span) => out.spans.push(span),
                    Err(e) => {
                        out.dead_letters
                            .push(DeadLetter::span(meta, index, e, &s.encode_to_vec()))
                    }
                }
                index += 1;
            }
        }
    }
}
