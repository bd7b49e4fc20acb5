//! Assembling [`Span`]s from decoded OTLP parts; shared by the fast protobuf decoder,
//! the prost reference decoder and the JSON decoder.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value};
use prost::Message;
use spanflow_operators::classify::CallAttrs;
use spanflow_operators::model::{BytesMap, MAX_ATTR_KEY_LEN, MAX_ATTR_VALUE_LEN};
use spanflow_operators::{
    AttrArena, AttrValue, Attrs, AttrsBuilder, AttrsMap, Span, SpanId, SpanKind, StatusCode, Sym,
    TraceId,
};

use super::Decoded;
use super::dead_letter::{DeadLetter, DecodeError, RecordMeta};

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
    /// Keep its field bytes as they are: append them to the packed attributes (after
    /// the attributes before it).
    Copy,
    /// It went into a typed field of the span; it is not kept.
    Absorbed,
    /// It must be truncated: hand it to [`SpanBuilder::span_attr`] instead.
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
    truncated: u64,
    /// `truncated` when the current resource began.
    truncated_at_resource: u64,
}

thread_local! {
    /// Resources decoded on this thread, by the bytes of their `Resource` message, with
    /// the number of attributes truncated in them. Decoding a resource (ten attributes,
    /// interning, packing, looking up its shared buffer) cost as much as ten spans, and
    /// each record repeats the resources of all its spans.
    static RESOURCES: std::cell::RefCell<BytesMap<(Resource, u64)>> =
        std::cell::RefCell::new(BytesMap::default());
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

    /// Returns and resets the count of truncated attributes.
    pub fn take_truncated(&mut self) -> u64 {
        std::mem::take(&mut self.truncated)
    }

    /// The resource decoded before on this thread from the same `Resource` message
    /// bytes, counting its truncated attributes again as decoding it would.
    pub fn cached_resource(&mut self, bytes: &[u8]) -> Option<Resource> {
        RESOURCES.with(|c| {
            let c = c.try_borrow().ok()?;
            let (res, truncated) = c.get(bytes)?;
            self.truncated += truncated;
            Some(res.clone())
        })
    }

    /// Remembers the resource just finished ([`end_resource`](Self::end_resource))
    /// under its message bytes, for [`cached_resource`](Self::cached_resource).
    pub fn remember_resource(&mut self, bytes: &[u8], res: &Resource) {
        /// Distinct resources remembered per thread; a fleet has far fewer.
        const LIMIT: usize = 4096;
        let truncated = self.truncated.saturating_sub(self.truncated_at_resource);
        RESOURCES.with(|c| {
            let Ok(mut c) = c.try_borrow_mut() else {
                return;
            };
            if c.len() >= LIMIT {
                c.clear();
            }
            c.insert(bytes.into(), (res.clone(), truncated));
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

    /// One resource attribute.
    pub fn resource_attr(&mut self, key: &str, value: AttrValue<'_>) {
        match (key, value) {
            ("service.name", AttrValue::Str(s)) => self.resource_service = Some(Sym::new(s)),
            ("service.instance.id", AttrValue::Str(s)) => {
                self.resource_instance = Some(Sym::new(s))
            }
            ("host.name", AttrValue::Str(s)) => {
                self.resource_host = Some(Sym::new(s));
                self.truncated += u64::from(self.resource_attrs.push(key, value, true));
            }
            _ => self.truncated += u64::from(self.resource_attrs.push(key, value, true)),
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

    /// One span attribute (call before [`finish_span`](Self::finish_span)).
    #[inline]
    pub fn span_attr(&mut self, key: &str, value: AttrValue<'_>) {
        if !self.call.observe(key, value) {
            self.truncated += u64::from(self.attrs.push(key, value, false));
        }
    }

    /// Classifies one span attribute read from the OTLP wire in the canonical shape,
    /// whose field bytes the caller holds (see [`WireAttr`]).
    #[inline]
    pub fn span_attr_wire(&mut self, key: &str, value: AttrValue<'_>) -> WireAttr {
        if self.call.observe(key, value) {
            return WireAttr::Absorbed;
        }
        let long = key.len() > MAX_ATTR_KEY_LEN
            || matches!(value, AttrValue::Str(s) if s.len() > MAX_ATTR_VALUE_LEN);
        if long {
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

fn check(raw: &RawSpan<'_>) -> Result<(TraceId, SpanId, SpanId), DecodeError> {
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

/// Renders array, kvlist and bytes values as JSON text for the packed attributes.
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

/// Calls `f` with the borrowed form of a prost `AnyValue`; `None` values are skipped.
fn with_value(v: Option<&AnyValue>, f: impl FnOnce(AttrValue<'_>)) {
    let Some(av) = v else { return };
    match &av.value {
        None | Some(any_value::Value::StringValueStrindex(_)) => {}
        Some(any_value::Value::StringValue(s)) => f(AttrValue::Str(s)),
        Some(any_value::Value::BoolValue(b)) => f(AttrValue::Bool(*b)),
        Some(any_value::Value::IntValue(i)) => f(AttrValue::Int(*i)),
        Some(any_value::Value::DoubleValue(d)) => f(AttrValue::Double(*d)),
        Some(_) => {
            let text = any_value_json(av).to_string();
            f(AttrValue::Json(&text))
        }
    }
}

/// Converts a decoded request (prost or JSON) into spans and per-span dead letters.
pub(crate) fn convert_request(
    b: &mut SpanBuilder,
    req: &ExportTraceServiceRequest,
    meta: &RecordMeta,
    out: &mut Decoded,
) {
    let mut index = 0u32;
    for rs in &req.resource_spans {
        b.begin_resource();
        if let Some(r) = &rs.resource {
            for kv in &r.attributes {
                with_value(kv.value.as_ref(), |v| b.resource_attr(&kv.key, v));
            }
        }
        let res = b.end_resource();
        for ss in &rs.scope_spans {
            for s in &ss.spans {
                for kv in &s.attributes {
                    with_value(kv.value.as_ref(), |v| b.span_attr(&kv.key, v));
                }
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
