//! Writing kept spans back out as OTLP: each span's `Span` message and its envelope
//! (`ResourceSpans` with its `ScopeSpans`), from the fields a span keeps in wire form
//! (see [`spanflow_operators::Attrs`]). A span decoded from OTLP goes out as the same
//! message it came in as; a span made another way (the generator, the Alibaba loader)
//! gets the attributes its typed fields stand for.

use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::trace::v1::span::{Event, Link};
use prost::Message;
use spanflow_operators::model::Entry;
use spanflow_operators::model::wire::{WireField, WireFields, put_len_field};
use spanflow_operators::{AttrValue, Attrs, AttrsBuilder, Span, StatusCode};

use super::{RESOURCE_SCHEMA_URL, SCOPE, SCOPE_SCHEMA_URL};

/// `Span.status`.
const STATUS: u32 = 15;

/// Appends the span's OTLP `Span` message body to `out`.
pub fn encode_span(s: &Span, out: &mut Vec<u8>) {
    encode_span_with(s, &SpanExtras::of(s), out);
}

/// [`encode_span`] with the span's [`SpanExtras`] at hand (one walk of its packed fields
/// serves both the columns and the message).
pub fn encode_span_with(s: &Span, x: &SpanExtras, out: &mut Vec<u8>) {
    let name = s.name.as_str().as_bytes();
    out.reserve(64 + name.len() + s.attrs.as_bytes().len());
    // The ids' fields (tag, length, bytes: all one-byte varints), written as one block.
    let mut ids = [0u8; 38];
    ids[0] = (1 << 3) | 2;
    ids[1] = 16;
    ids[2..18].copy_from_slice(&s.trace_id.0);
    ids[18] = (2 << 3) | 2;
    ids[19] = 8;
    ids[20..28].copy_from_slice(&s.span_id.0);
    let ids_len = if s.is_root() {
        28
    } else {
        ids[28] = (4 << 3) | 2;
        ids[29] = 8;
        ids[30..38].copy_from_slice(&s.parent_span_id.0);
        38
    };
    out.extend_from_slice(&ids[..ids_len]);
    match u8::try_from(name.len()) {
        Ok(0) => {}
        // A one-byte length: tag and length as one write.
        Ok(n @ 1..0x80) => {
            out.extend_from_slice(&[(5 << 3) | 2, n]);
            out.extend_from_slice(name);
        }
        _ => put_len_field(out, 5, name),
    }
    if s.kind as i32 != 0 {
        // Span kinds are 1-5: a one-byte varint.
        out.extend_from_slice(&[6 << 3, s.kind as u8]);
    }
    // Start (7) and end (8) as fixed64 fields.
    let mut times = [0u8; 18];
    times[0] = (7 << 3) | 1;
    times[1..9].copy_from_slice(&s.start_ns.to_le_bytes());
    times[9] = (8 << 3) | 1;
    times[10..18].copy_from_slice(&s.end_ns.to_le_bytes());
    out.extend_from_slice(&times);
    out.extend_from_slice(s.attrs.as_bytes());
    if !x.has_status && s.status != StatusCode::Unset {
        put_len_field(out, STATUS, &[3 << 3, s.status as u8]);
    }
    if x.missing != 0 {
        out.extend_from_slice(implied_attrs(s, x.missing).as_bytes());
    }
}

/// Typed facts that stand for an attribute (bits of [`SpanExtras::missing`]).
const HTTP: u8 = 1;
const PEER: u8 = 2;
const DB: u8 = 4;
const DEST: u8 = 8;

/// The facts the span's typed fields hold. `peer` falls back to the db system and the
/// destination, which have keys of their own, so a derived peer is not one.
fn facts(s: &Span) -> u8 {
    let derived = s.peer == s.db_system || s.peer == s.messaging_destination;
    let mut f = 0;
    if s.http_status > 0 {
        f |= HTTP;
    }
    if !s.peer.as_str().is_empty() && !derived {
        f |= PEER;
    }
    if !s.db_system.as_str().is_empty() {
        f |= DB;
    }
    if !s.messaging_destination.as_str().is_empty() {
        f |= DEST;
    }
    f
}

/// The fact an attribute key stands for (the keys the decoders read them from).
#[inline]
fn fact_of(key: &[u8]) -> u8 {
    match key {
        b"http.response.status_code" | b"http.status_code" => HTTP,
        b"peer.service" | b"server.address" | b"net.peer.name" => PEER,
        b"db.system" | b"db.system.name" => DB,
        b"messaging.destination.name" | b"messaging.destination" => DEST,
        _ => 0,
    }
}

/// The attributes for the `missing` facts: a span decoded from OTLP keeps every
/// attribute its typed fields were read from, one made another way (the generator's
/// model, the Alibaba loader) keeps those facts only in the typed fields.
fn implied_attrs(s: &Span, missing: u8) -> Attrs {
    let mut b = AttrsBuilder::default();
    if missing & HTTP != 0 {
        b.push(
            "http.response.status_code",
            AttrValue::Int(i64::from(s.http_status)),
            false,
        );
    }
    if missing & PEER != 0 {
        b.push("peer.service", AttrValue::Str(s.peer.as_str()), false);
    }
    if missing & DB != 0 {
        b.push("db.system", AttrValue::Str(s.db_system.as_str()), false);
    }
    if missing & DEST != 0 {
        b.push(
            "messaging.destination.name",
            AttrValue::Str(s.messaging_destination.as_str()),
            false,
        );
    }
    b.finish()
}

/// Appends the OTLP `ResourceSpans` message body of the span's resource and scope, with
/// one `ScopeSpans` that holds no spans: the envelope a span's `Span` goes into.
pub fn encode_envelope(s: &Span, out: &mut Vec<u8>) {
    let mut resource = Vec::new();
    let (mut service, mut instance) = (false, false);
    let mut scope_spans = Vec::new();
    let mut schema_url: &[u8] = &[];
    for (f, v) in s.resource_attrs.fields() {
        match (f, v) {
            (RESOURCE_SCHEMA_URL, WireField::Len(u)) => schema_url = u,
            (SCOPE, WireField::Len(scope)) => put_len_field(&mut scope_spans, 1, scope),
            (SCOPE_SCHEMA_URL, WireField::Len(u)) => put_len_field(&mut scope_spans, 3, u),
            _ => {}
        }
    }
    for (k, v, _) in s.resource_attrs.iter() {
        service |= k == "service.name" && matches!(v, AttrValue::Str(_));
        instance |= k == "service.instance.id" && matches!(v, AttrValue::Str(_));
    }
    // The resource's own fields, as they came (attributes, dropped count, entity refs).
    let mut rest = s.resource_attrs.fields();
    let mut at = s.resource_attrs.as_bytes();
    while let Some((f, _)) = rest.next() {
        let used = at.len() - rest.rest().len();
        if f < RESOURCE_SCHEMA_URL {
            resource.extend_from_slice(&at[..used]);
        }
        at = rest.rest();
    }
    let mut implied = AttrsBuilder::default();
    if !service {
        implied.push("service.name", AttrValue::Str(s.service.as_str()), true);
    }
    if !instance && !s.instance.as_str().is_empty() {
        implied.push(
            "service.instance.id",
            AttrValue::Str(s.instance.as_str()),
            true,
        );
    }
    resource.extend_from_slice(implied.finish().as_bytes());
    put_len_field(out, 1, &resource);
    put_len_field(out, 2, &scope_spans);
    if !schema_url.is_empty() {
        put_len_field(out, 3, schema_url);
    }
}

/// The span's instrumentation scope's name and version (empty when it has none).
pub fn scope(s: &Span) -> (String, String) {
    for (f, v) in s.resource_attrs.fields() {
        if let (SCOPE, WireField::Len(b)) = (f, v)
            && let Ok(sc) = InstrumentationScope::decode(b)
        {
            return (sc.name, sc.version);
        }
    }
    (String::new(), String::new())
}

/// The fields of a span's OTLP message no typed field holds, decoded for the span
/// tables' columns, and what [`encode_span_with`] must add to the packed fields.
#[derive(Debug, Default)]
pub struct SpanExtras {
    /// `status.message`.
    pub status_message: String,
    /// W3C trace state.
    pub trace_state: String,
    /// `flags` (W3C trace flags and the remote-parent bits).
    pub flags: u32,
    /// Span events, in order.
    pub events: Vec<Event>,
    /// Span links, in order.
    pub links: Vec<Link>,
    /// `dropped_attributes_count`, `dropped_events_count`, `dropped_links_count`.
    pub dropped: [u32; 3],
    /// The packed fields hold a `status`.
    has_status: bool,
    /// Typed facts (`HTTP`, `PEER`, ...) no packed attribute stands for.
    missing: u8,
}

impl SpanExtras {
    /// Reads them from the span's packed fields in one walk (the decoders checked
    /// them). Strings, events and links are allocated only when the span has them.
    pub fn of(s: &Span) -> SpanExtras {
        let mut x = SpanExtras::default();
        x.reset(s);
        for e in s.attrs.entries() {
            x.observe(e);
        }
        x
    }

    /// Readies it for another span's entries ([`observe`](Self::observe)), keeping the
    /// buffers: a sink that walks the entries anyway (the attribute map columns) reuses
    /// one for every row it writes, so that one walk serves both.
    #[inline]
    pub fn reset(&mut self, s: &Span) {
        self.status_message.clear();
        self.trace_state.clear();
        self.flags = 0;
        self.events.clear();
        self.links.clear();
        self.dropped = [0; 3];
        self.has_status = false;
        self.missing = facts(s);
    }

    /// Takes in one entry of the span's packed fields ([`Attrs::entries`]).
    #[inline(always)]
    pub fn observe(&mut self, e: Entry<'_>) {
        match e {
            Entry::Attr(key, _, false) if self.missing != 0 => {
                self.missing &= !fact_of(key.as_bytes());
            }
            Entry::Attr(..) => {}
            Entry::Field(f, v) => self.field(f, v),
        }
    }

    /// A field other than an attribute (most spans have none or a status).
    fn field(&mut self, f: u32, v: WireField<'_>) {
        match (f, v) {
            (3, WireField::Len(t)) => {
                self.trace_state.clear();
                self.trace_state.push_str(&String::from_utf8_lossy(t));
            }
            (10, WireField::Varint(n)) => self.dropped[0] = n as u32,
            (11, WireField::Len(b)) => self.events.extend(Event::decode(b).ok()),
            (12, WireField::Varint(n)) => self.dropped[1] = n as u32,
            (13, WireField::Len(b)) => self.links.extend(Link::decode(b).ok()),
            (14, WireField::Varint(n)) => self.dropped[2] = n as u32,
            (STATUS, WireField::Len(b)) => {
                self.has_status = true;
                // `Status.message` (2); the last one on the wire wins.
                for (f, v) in WireFields::new(b) {
                    if let (2, WireField::Len(m)) = (f, v) {
                        self.status_message.clear();
                        self.status_message.push_str(&String::from_utf8_lossy(m));
                    }
                }
            }
            (16, WireField::Fixed32(n)) => self.flags = n,
            _ => {}
        }
    }
}

/// An OTLP `ExportTraceServiceRequest` from spans' envelopes and `Span` messages (as
/// [`encode_envelope`] and [`encode_span`] write them): one `ResourceSpans` per
/// distinct envelope, in first-seen order, its spans in the order given.
pub fn request<'a>(rows: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> Vec<u8> {
    let mut groups: Vec<(&[u8], Vec<u8>)> = Vec::new();
    for (envelope, span) in rows {
        let at = match groups.iter().position(|(e, _)| *e == envelope) {
            Some(i) => i,
            None => {
                groups.push((envelope, Vec::new()));
                groups.len() - 1
            }
        };
        if let Some((_, spans)) = groups.get_mut(at) {
            put_len_field(spans, 2, span);
        }
    }
    let mut out = Vec::new();
    for (envelope, spans) in groups {
        // The envelope's `ScopeSpans` (field 2) gets the spans; its other fields are
        // copied.
        let mut rs = Vec::new();
        for (f, v) in WireFields::new(envelope) {
            match (f, v) {
                (2, WireField::Len(ss)) => {
                    let mut body = ss.to_vec();
                    body.extend_from_slice(&spans);
                    put_len_field(&mut rs, 2, &body);
                }
                (f, WireField::Len(b)) => put_len_field(&mut rs, f, b),
                _ => {}
            }
        }
        put_len_field(&mut out, 1, &rs);
    }
    out
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{
        AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList, any_value::Value,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::span::{Event, Link};
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span as PSpan, Status};
    use prost::Message;

    use spanflow_operators::Sym;

    use crate::formats::{Decoded, InputFormat, RecordMeta, SpanDecoder};

    fn meta() -> RecordMeta {
        RecordMeta {
            topic: None,
            source: Sym::new("test"),
            split: 0,
            offset: 0,
        }
    }
    use crate::tables::{SpanRows, TableRows};

    /// Every span of a request with what it came under: resource, its schema URL, scope,
    /// the scope's schema URL. Sorted by span id: the comparison of two requests that
    /// group the same spans differently.
    type Flat = (
        Resource,
        String,
        Option<InstrumentationScope>,
        String,
        PSpan,
    );

    fn flatten(req: &ExportTraceServiceRequest) -> Vec<Flat> {
        let mut out = Vec::new();
        for rs in &req.resource_spans {
            for ss in &rs.scope_spans {
                for s in &ss.spans {
                    out.push((
                        rs.resource.clone().unwrap_or_default(),
                        rs.schema_url.clone(),
                        ss.scope.clone(),
                        ss.schema_url.clone(),
                        s.clone(),
                    ));
                }
            }
        }
        out.sort_by(|a, b| a.4.span_id.cmp(&b.4.span_id));
        out
    }

    /// Decodes `payload` in `format`, builds the `spans` rows, and rebuilds the OTLP
    /// request from their `otlp` columns, as the Kafka sink does.
    fn through_the_tables(format: InputFormat, payload: &[u8]) -> ExportTraceServiceRequest {
        let mut out = Decoded::default();
        let meta = meta();
        SpanDecoder::with_shards(2).decode(format, payload, &meta, &mut out);
        assert!(out.dead_letters.is_empty(), "{:?}", out.dead_letters);
        let mut rows = SpanRows::spans();
        for s in &out.spans {
            rows.push(s);
        }
        let batch = rows.finish();
        let col = |n: &str| {
            batch
                .column(batch.schema().index_of(n).unwrap())
                .as_any()
                .downcast_ref::<arrow::array::BinaryArray>()
                .unwrap()
                .clone()
        };
        let (span, envelope) = (col("otlp"), col("otlp_resource"));
        let bytes =
            super::request((0..batch.num_rows()).map(|r| (envelope.value(r), span.value(r))));
        ExportTraceServiceRequest::decode(&bytes[..]).unwrap()
    }

    fn kv(k: &str, v: Value) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue { value: Some(v) }),
            ..Default::default()
        }
    }

    fn s(v: &str) -> Value {
        Value::StringValue(v.into())
    }

    /// A request using every field OTLP defines for a span, its resource and scope.
    fn everything() -> ExportTraceServiceRequest {
        let array = Value::ArrayValue(ArrayValue {
            values: vec![
                AnyValue {
                    value: Some(s("a")),
                },
                AnyValue {
                    value: Some(Value::IntValue(2)),
                },
            ],
        });
        let kvlist = Value::KvlistValue(KeyValueList {
            values: vec![kv("inner", Value::DoubleValue(1.5))],
        });
        let root = PSpan {
            trace_id: vec![7; 16],
            span_id: vec![1; 8],
            trace_state: "vendor=x".into(),
            flags: 0x301,
            name: "GET /checkout".into(),
            kind: 2,
            start_time_unix_nano: 1_700_000_000_000_000_000,
            end_time_unix_nano: 1_700_000_000_500_000_000,
            attributes: vec![
                kv("http.request.method", s("GET")),
                kv("http.response.status_code", Value::IntValue(500)),
                kv("tags", array.clone()),
                kv("nested", kvlist),
                kv("raw", Value::BytesValue(vec![0, 1, 255])),
                KeyValue {
                    key: "unset".into(),
                    value: None,
                    ..Default::default()
                },
                kv("peer.service", s("payments")),
                kv("ratio", Value::DoubleValue(0.25)),
                kv("ok", Value::BoolValue(true)),
            ],
            dropped_attributes_count: 3,
            events: vec![
                Event {
                    time_unix_nano: 1_700_000_000_100_000_000,
                    name: "exception".into(),
                    attributes: vec![
                        kv("exception.type", s("ValueError")),
                        kv("exception.message", s("card declined")),
                        kv("exception.stacktrace", s("Traceback ...")),
                        kv("list", array),
                    ],
                    dropped_attributes_count: 1,
                },
                Event {
                    time_unix_nano: 1_700_000_000_200_000_000,
                    name: "retry".into(),
                    ..Default::default()
                },
            ],
            dropped_events_count: 4,
            links: vec![Link {
                trace_id: vec![9; 16],
                span_id: vec![9; 8],
                trace_state: "other=y".into(),
                attributes: vec![kv("messaging.operation", s("process"))],
                dropped_attributes_count: 2,
                flags: 0x100,
            }],
            dropped_links_count: 5,
            status: Some(Status {
                message: "card declined".into(),
                code: 2,
            }),
            ..Default::default()
        };
        let child = PSpan {
            trace_id: vec![7; 16],
            span_id: vec![2; 8],
            parent_span_id: vec![1; 8],
            name: "SELECT orders".into(),
            kind: 3,
            start_time_unix_nano: 1_700_000_000_100_000_000,
            end_time_unix_nano: 1_700_000_000_300_000_000,
            attributes: vec![
                kv("db.system.name", s("postgresql")),
                kv("db.namespace", s("orders")),
                kv("server.port", Value::IntValue(5432)),
            ],
            ..Default::default()
        };
        // No status at all, no attributes.
        let bare = PSpan {
            trace_id: vec![8; 16],
            span_id: vec![3; 8],
            name: "bare".into(),
            start_time_unix_nano: 1_700_000_000_000_000_000,
            end_time_unix_nano: 1_700_000_000_000_000_001,
            ..Default::default()
        };
        let resource = Resource {
            attributes: vec![
                kv("telemetry.sdk.language", s("python")),
                kv("service.name", s("checkout")),
                kv("service.instance.id", s("checkout-1")),
                kv(
                    "process.command_args",
                    Value::ArrayValue(ArrayValue::default()),
                ),
            ],
            dropped_attributes_count: 6,
            ..Default::default()
        };
        ExportTraceServiceRequest {
            resource_spans: vec![
                ResourceSpans {
                    resource: Some(resource),
                    scope_spans: vec![
                        ScopeSpans {
                            scope: Some(InstrumentationScope {
                                name: "lib".into(),
                                version: "1.2.3".into(),
                                attributes: vec![kv("lib.flavor", s("test"))],
                                dropped_attributes_count: 1,
                            }),
                            spans: vec![root, child],
                            schema_url: "https://opentelemetry.io/schemas/1.26.0".into(),
                        },
                        ScopeSpans {
                            scope: None,
                            spans: vec![bare],
                            schema_url: String::new(),
                        },
                    ],
                    schema_url: "https://opentelemetry.io/schemas/1.21.0".into(),
                },
                // A resource without attributes (the service is `unknown_service`).
                ResourceSpans {
                    resource: None,
                    scope_spans: vec![ScopeSpans {
                        scope: Some(InstrumentationScope {
                            name: "other".into(),
                            ..Default::default()
                        }),
                        spans: vec![PSpan {
                            trace_id: vec![8; 16],
                            span_id: vec![4; 8],
                            parent_span_id: vec![3; 8],
                            name: "no resource".into(),
                            kind: 1,
                            start_time_unix_nano: 1_700_000_000_000_000_000,
                            end_time_unix_nano: 1_700_000_000_000_000_002,
                            status: Some(Status::default()),
                            ..Default::default()
                        }],
                        schema_url: String::new(),
                    }],
                    schema_url: String::new(),
                },
            ],
        }
    }

    /// What goes out for a span of the resourceless request: the service the span was
    /// given, as a resource attribute.
    fn with_implied_service(mut flat: Vec<Flat>) -> Vec<Flat> {
        for f in &mut flat {
            if f.0.attributes.is_empty() {
                f.0.attributes
                    .push(kv("service.name", s("unknown_service")));
            }
        }
        flat
    }

    #[test]
    fn a_span_goes_out_as_the_message_it_came_in_as() {
        let req = everything();
        let want = with_implied_service(flatten(&req));
        for (format, payload) in [
            (InputFormat::OtlpProto, req.encode_to_vec()),
            (InputFormat::OtlpJson, serde_json::to_vec(&req).unwrap()),
        ] {
            let got = flatten(&through_the_tables(format, &payload));
            assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(g, w, "{format:?}");
            }
        }
    }

    /// `ScopeSpans` with its scope and schema URL written after its spans (protobuf
    /// allows any field order; the decoder reads the envelope before the spans only up
    /// to the first span).
    #[test]
    fn an_envelope_written_after_the_spans_still_goes_with_them() {
        use spanflow_operators::model::wire::{WireField, WireFields, put_len_field};
        let req = everything();
        let want = with_implied_service(flatten(&req));
        let reorder = |ss: &ScopeSpans| {
            let body = ss.encode_to_vec();
            let mut out = Vec::new();
            for last in [false, true] {
                for (f, v) in WireFields::new(&body) {
                    if let WireField::Len(b) = v
                        && (f != 2) == last
                    {
                        put_len_field(&mut out, f, b);
                    }
                }
            }
            out
        };
        let mut payload = Vec::new();
        for rs in &req.resource_spans {
            let mut body = Vec::new();
            for ss in &rs.scope_spans {
                put_len_field(&mut body, 2, &reorder(ss));
            }
            let rest = ResourceSpans {
                scope_spans: Vec::new(),
                ..rs.clone()
            };
            body.extend_from_slice(&rest.encode_to_vec());
            put_len_field(&mut payload, 1, &body);
        }
        let got = flatten(&through_the_tables(InputFormat::OtlpProto, &payload));
        assert_eq!(got, want);
    }

    /// Spans the OpenTelemetry Python SDK made (`tests/fixtures/otel_sdk_spans.py`, run
    /// with the venv of `scripts/otel-python.sh`): an exception event, an error status
    /// with a message, a link, two scopes, a trace state, array attributes.
    #[test]
    fn spans_the_python_sdk_made_go_out_whole() {
        let payload = std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/otel_sdk_spans.pb"),
        )
        .unwrap();
        let req = ExportTraceServiceRequest::decode(&payload[..]).unwrap();
        let want = flatten(&req);
        assert_eq!(want.len(), 5);
        let charge = want.iter().find(|f| f.4.name == "charge").unwrap();
        assert_eq!(charge.4.events.len(), 2);
        assert_eq!(
            charge.4.status.as_ref().map(|s| s.message.as_str()),
            Some("card declined")
        );
        assert!(want.iter().any(|f| !f.4.links.is_empty()));
        assert!(want.iter().any(|f| !f.4.trace_state.is_empty()));
        let got = flatten(&through_the_tables(InputFormat::OtlpProto, &payload));
        assert_eq!(got, want);
    }

    /// The readable columns show what the span carried.
    #[test]
    fn the_span_table_shows_events_links_status_message_and_scope() {
        let req = everything();
        let mut out = Decoded::default();
        let meta = meta();
        SpanDecoder::new().decode(
            InputFormat::OtlpProto,
            &req.encode_to_vec(),
            &meta,
            &mut out,
        );
        let mut rows = SpanRows::spans();
        rows.push(&out.spans[0]);
        let batch = rows.finish();
        let opts = arrow::util::display::FormatOptions::default();
        let show = |n: &str| {
            let c = batch.column(batch.schema().index_of(n).unwrap());
            arrow::util::display::ArrayFormatter::try_new(c.as_ref(), &opts)
                .unwrap()
                .value(0)
                .to_string()
        };
        assert_eq!(show("status_message"), "card declined");
        assert_eq!(show("trace_state"), "vendor=x");
        assert_eq!(show("flags"), "769");
        assert_eq!(show("scope_name"), "lib");
        assert_eq!(show("scope_version"), "1.2.3");
        assert_eq!(show("event_names"), "[exception, retry]");
        assert!(
            show("event_attributes").contains(r#""exception.type":"ValueError""#),
            "{}",
            show("event_attributes")
        );
        assert!(show("event_attributes").contains(r#""list":"[\"a\",2]""#));
        assert_eq!(show("link_trace_ids"), format!("[{}]", "09".repeat(16)));
        assert_eq!(show("link_trace_states"), "[other=y]");
        assert_eq!(show("dropped_attributes_count"), "3");
        assert_eq!(show("dropped_events_count"), "4");
        assert_eq!(show("dropped_links_count"), "5");
        // Attributes the typed columns show are not repeated in the map.
        let attrs = show("attributes");
        assert!(!attrs.contains("http.response.status_code"), "{attrs}");
        assert!(attrs.contains(r#"tags: ["a",2]"#), "{attrs}");
        assert!(attrs.contains(r#"raw: "0001ff""#), "{attrs}");
        let res = show("resource_attributes");
        assert!(!res.contains("service.name"), "{res}");
        assert!(res.contains("telemetry.sdk.language: python"), "{res}");
    }

    /// The span table's columns built with Arrow's own builders, row by row, as
    /// `SpanRows` built them before it had column buffers of its own (all but the
    /// attribute maps, which `tables::attr_map` tests against `MapBuilder`).
    fn reference_columns(
        spans: &[spanflow_operators::Span],
    ) -> Vec<(String, arrow::array::ArrayRef)> {
        use std::sync::Arc;

        use arrow::array::{
            ArrayBuilder, BinaryBuilder, BooleanBuilder, FixedSizeBinaryBuilder, ListBuilder,
            StringBuilder, TimestampNanosecondBuilder, UInt16Builder, UInt32Builder, UInt64Builder,
        };

        let ts = || TimestampNanosecondBuilder::new().with_timezone("+00:00");
        let text = StringBuilder::new;
        let mut trace_id = FixedSizeBinaryBuilder::new(16);
        let mut span_id = FixedSizeBinaryBuilder::new(8);
        let mut parent = FixedSizeBinaryBuilder::new(8);
        let [
            mut service,
            mut instance,
            mut name,
            mut kind,
            mut status,
            mut call_type,
        ] = std::array::from_fn(|_| text());
        let [mut peer, mut db_system, mut destination] = std::array::from_fn(|_| text());
        let [
            mut status_message,
            mut trace_state,
            mut scope_name,
            mut scope_version,
        ] = std::array::from_fn(|_| text());
        let (mut start, mut end) = (ts(), ts());
        let mut duration = UInt64Builder::new();
        let mut is_error = BooleanBuilder::new();
        let mut http_status = UInt16Builder::new();
        let mut flags = UInt32Builder::new();
        let mut dropped: [UInt32Builder; 3] = std::array::from_fn(|_| UInt32Builder::new());
        let mut event_times = ListBuilder::new(ts());
        let mut event_names = ListBuilder::new(text());
        let mut event_attributes = ListBuilder::new(text());
        let mut link_trace_ids = ListBuilder::new(FixedSizeBinaryBuilder::new(16));
        let mut link_span_ids = ListBuilder::new(FixedSizeBinaryBuilder::new(8));
        let mut link_trace_states = ListBuilder::new(text());
        let mut link_attributes = ListBuilder::new(text());
        let (mut otlp, mut otlp_resource) = (BinaryBuilder::new(), BinaryBuilder::new());
        let json = crate::tables::attributes_json_for_tests;
        for s in spans {
            trace_id.append_value(s.trace_id.0).unwrap();
            span_id.append_value(s.span_id.0).unwrap();
            if s.is_root() {
                parent.append_null();
            } else {
                parent.append_value(s.parent_span_id.0).unwrap();
            }
            for (b, v) in [
                (&mut service, s.service.as_str()),
                (&mut instance, s.instance.as_str()),
                (&mut name, s.name.as_str()),
                (&mut kind, s.kind.as_str()),
                (&mut status, s.status.as_str()),
                (&mut call_type, s.call_type.as_str()),
                (&mut peer, s.peer.as_str()),
                (&mut db_system, s.db_system.as_str()),
                (&mut destination, s.messaging_destination.as_str()),
            ] {
                b.append_value(v);
            }
            start.append_value(s.start_ns as i64);
            end.append_value(s.end_ns as i64);
            duration.append_value(s.duration_ns());
            is_error.append_value(s.is_error());
            http_status.append_value(s.http_status);
            let x = super::SpanExtras::of(s);
            status_message.append_value(&x.status_message);
            trace_state.append_value(&x.trace_state);
            flags.append_value(x.flags);
            for e in &x.events {
                event_times.values().append_value(e.time_unix_nano as i64);
                event_names.values().append_value(&e.name);
                event_attributes.values().append_value(json(&e.attributes));
            }
            event_times.append(true);
            event_names.append(true);
            event_attributes.append(true);
            for l in &x.links {
                link_trace_ids.values().append_value(&l.trace_id).unwrap();
                link_span_ids.values().append_value(&l.span_id).unwrap();
                link_trace_states.values().append_value(&l.trace_state);
                link_attributes.values().append_value(json(&l.attributes));
            }
            link_trace_ids.append(true);
            link_span_ids.append(true);
            link_trace_states.append(true);
            link_attributes.append(true);
            for (b, n) in dropped.iter_mut().zip(x.dropped) {
                b.append_value(n);
            }
            let mut m = Vec::new();
            super::encode_span(s, &mut m);
            otlp.append_value(&m);
            let mut m = Vec::new();
            super::encode_envelope(s, &mut m);
            otlp_resource.append_value(&m);
            let (n, v) = super::scope(s);
            scope_name.append_value(n);
            scope_version.append_value(v);
        }
        let [d0, d1, d2] = &mut dropped;
        let cols: Vec<(&str, &mut dyn ArrayBuilder)> = vec![
            ("trace_id", &mut trace_id),
            ("span_id", &mut span_id),
            ("parent_span_id", &mut parent),
            ("service", &mut service),
            ("instance", &mut instance),
            ("name", &mut name),
            ("kind", &mut kind),
            ("start_time", &mut start),
            ("end_time", &mut end),
            ("duration_ns", &mut duration),
            ("status", &mut status),
            ("is_error", &mut is_error),
            ("call_type", &mut call_type),
            ("http_status", &mut http_status),
            ("peer", &mut peer),
            ("db_system", &mut db_system),
            ("messaging_destination", &mut destination),
            ("status_message", &mut status_message),
            ("trace_state", &mut trace_state),
            ("flags", &mut flags),
            ("scope_name", &mut scope_name),
            ("scope_version", &mut scope_version),
            ("event_times", &mut event_times),
            ("event_names", &mut event_names),
            ("event_attributes", &mut event_attributes),
            ("link_trace_ids", &mut link_trace_ids),
            ("link_span_ids", &mut link_span_ids),
            ("link_trace_states", &mut link_trace_states),
            ("link_attributes", &mut link_attributes),
            ("dropped_attributes_count", d0),
            ("dropped_events_count", d1),
            ("dropped_links_count", d2),
            ("otlp", &mut otlp),
            ("otlp_resource", &mut otlp_resource),
        ];
        cols.into_iter()
            .map(|(n, b)| (n.to_owned(), Arc::new(b.finish()) as arrow::array::ArrayRef))
            .map(|(n, a)| (n, a as arrow::array::ArrayRef))
            .collect()
    }

    /// `SpanRows`' column buffers give the arrays Arrow's builders give, for spans with
    /// every OTLP field, spans the generator made, and a batch that takes over the last
    /// one's rendered resources.
    #[test]
    fn span_rows_match_arrow_builders() {
        use crate::testkit::generator::{Generator, GeneratorConfig};

        let mut out = Decoded::default();
        let meta = meta();
        let mut dec = SpanDecoder::with_shards(2);
        dec.decode(
            InputFormat::OtlpProto,
            &everything().encode_to_vec(),
            &meta,
            &mut out,
        );
        let config = GeneratorConfig {
            traces: 30,
            ..Default::default()
        };
        for r in Generator::new(config).unwrap() {
            dec.decode(InputFormat::OtlpProto, &r.payload, &meta, &mut out);
        }
        assert!(out.spans.len() > 300, "{}", out.spans.len());
        let mut rows = SpanRows::spans();
        let (first, second) = out.spans.split_at(out.spans.len() / 2);
        for part in [first, second] {
            for s in part {
                rows.push(s);
            }
            let batch = rows.finish();
            assert_eq!(batch.num_rows(), part.len());
            for (name, want) in reference_columns(part) {
                let got = batch.column_by_name(&name).unwrap();
                assert_eq!(got.data_type(), want.data_type(), "{name}");
                assert_eq!(got.to_data(), want.to_data(), "{name}");
            }
        }
    }
}
