use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, InstrumentationScope, KeyValue, any_value::Value,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span as PSpan, Status};
use proptest::prelude::*;
use prost::Message;
use spanflow_operators::{AttrValue, Attrs, CallType, SpanKind, StatusCode, Sym};

use super::*;

fn meta() -> RecordMeta {
    RecordMeta {
        topic: None,
        source: Sym::new("test"),
        split: 3,
        offset: 77,
    }
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

fn pspan(trace: u8, id: u8, parent: Option<u8>, attrs: Vec<KeyValue>) -> PSpan {
    PSpan {
        trace_id: vec![trace; 16],
        span_id: vec![id; 8],
        parent_span_id: parent.map(|p| vec![p; 8]).unwrap_or_default(),
        name: format!("op-{id}"),
        kind: 3,
        start_time_unix_nano: 1_700_000_000_000_000_000,
        end_time_unix_nano: 1_700_000_000_250_000_000,
        attributes: attrs,
        status: Some(Status {
            code: 2,
            message: "boom".into(),
        }),
        ..Default::default()
    }
}

fn request(spans: Vec<PSpan>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", s("checkout")),
                    kv("service.instance.id", s("checkout-1")),
                    kv("host.name", s("node-7")),
                    kv("k8s.namespace.name", s("shop")),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn decode_both(bytes: &[u8]) -> (Decoded, Decoded) {
    let mut fast = Decoded::default();
    let mut slow = Decoded::default();
    SpanDecoder::new().decode(InputFormat::OtlpProto, bytes, &meta(), &mut fast);
    SpanDecoder::new().decode_proto_reference(bytes, &meta(), &mut slow);
    (fast, slow)
}

#[test]
fn decodes_fields_and_classifies() {
    let req = request(vec![pspan(
        1,
        2,
        Some(9),
        vec![
            kv("db.system", s("redis")),
            kv("db.operation", s("GET")),
            kv("retries", Value::IntValue(3)),
            kv(
                "tags",
                Value::ArrayValue(ArrayValue {
                    values: vec![AnyValue {
                        value: Some(s("a")),
                    }],
                }),
            ),
        ],
    )]);
    let (fast, slow) = decode_both(&req.encode_to_vec());
    assert_eq!(fast.spans, slow.spans);
    let sp = &fast.spans[0];
    assert_eq!(sp.service.as_str(), "checkout");
    assert_eq!(sp.instance.as_str(), "checkout-1");
    assert_eq!(sp.call_type, CallType::Cache);
    assert_eq!(sp.db_system.as_str(), "redis");
    assert_eq!(sp.peer.as_str(), "redis");
    assert_eq!(sp.kind, SpanKind::Client);
    assert_eq!(sp.status, StatusCode::Error);
    assert_eq!(sp.duration_ns(), 250_000_000);
    assert!(sp.is_error());
    assert_eq!(sp.attrs.get("retries"), Some(AttrValue::Int(3)));
    assert_eq!(
        sp.attrs.get("tags").map(|v| v.to_string()).as_deref(),
        Some("[\"a\"]")
    );
    assert_eq!(
        sp.resource_attrs.get("k8s.namespace.name"),
        Some(AttrValue::Str("shop"))
    );
    assert_eq!(
        sp.attrs.get("db.system"),
        Some(AttrValue::Str("redis")),
        "read into a typed field, and kept as it came"
    );
}

#[test]
fn records_with_the_same_resource_share_its_buffer() {
    let bytes = request(vec![pspan(1, 1, None, vec![])]).encode_to_vec();
    let mut dec = SpanDecoder::new();
    let mut out = Decoded::default();
    dec.decode(InputFormat::OtlpProto, &bytes, &meta(), &mut out);
    dec.decode(InputFormat::OtlpProto, &bytes, &meta(), &mut out);
    assert_eq!(out.spans.len(), 2);
    let (a, b) = (&out.spans[0].resource_attrs, &out.spans[1].resource_attrs);
    assert!(!a.is_empty());
    assert!(a.same_buffer(b), "one buffer per distinct resource");
}

#[test]
fn truncated_record_is_one_dead_letter_and_no_spans() {
    let bytes = request(vec![
        pspan(1, 2, None, vec![]),
        pspan(1, 3, Some(2), vec![]),
    ])
    .encode_to_vec();
    for cut in [1, bytes.len() / 2, bytes.len() - 1] {
        let (fast, slow) = decode_both(&bytes[..cut]);
        assert!(fast.spans.is_empty(), "cut at {cut}");
        assert_eq!(fast.dead_letters.len(), 1);
        assert_eq!(slow.dead_letters.len(), 1);
        let dl = &fast.dead_letters[0];
        assert_eq!((dl.split, dl.offset, dl.span_index), (3, 77, None));
        assert_eq!(dl.kind, "malformed_protobuf");
        assert_eq!(dl.payload_len, cut as u64);
    }
}

#[test]
fn a_malformed_record_leaves_no_attributes_to_the_next_span() {
    let good = request(vec![pspan(1, 2, None, vec![kv("a", s("1"))])]).encode_to_vec();
    let broken = request(vec![pspan(
        1,
        3,
        None,
        vec![
            kv("leak", s("x")),
            kv("http.route", s("/r")),
            kv("more", s("y")),
        ],
    )])
    .encode_to_vec();
    let mut alone = Decoded::default();
    SpanDecoder::new().decode(InputFormat::OtlpProto, &good, &meta(), &mut alone);
    assert_eq!(alone.spans.len(), 1);
    for cut in 1..broken.len() {
        let mut dec = SpanDecoder::new();
        let mut out = Decoded::default();
        dec.decode(InputFormat::OtlpProto, &broken[..cut], &meta(), &mut out);
        let before = out.spans.len();
        dec.decode(InputFormat::OtlpProto, &good, &meta(), &mut out);
        assert_eq!(out.spans[before..], alone.spans[..], "cut at {cut}");
    }
}

/// A `scope_spans` that is not length-delimited makes the record a dead letter, with
/// or without another `ScopeSpans` beside it.
#[test]
fn a_scope_spans_of_the_wrong_wire_type_is_a_dead_letter() {
    let good = request(vec![pspan(1, 1, None, vec![])]).encode_to_vec();
    // The one `ResourceSpans` of `good`: its body follows the tag and a length.
    let body = {
        let mut r = &good[1..];
        let len = prost::encoding::decode_varint(&mut r).expect("length") as usize;
        r[..len].to_vec()
    };
    for extra in [&[0x10u8, 0x01][..], &[0x15, 0, 0, 0, 0]] {
        for keep_good_scope in [false, true] {
            let mut rs = if keep_good_scope {
                body.clone()
            } else {
                // Only the resource (field 1) of the body.
                let mut r = &body[1..];
                let len = prost::encoding::decode_varint(&mut r).expect("length") as usize;
                body[..body.len() - r.len() + len].to_vec()
            };
            rs.extend_from_slice(extra);
            let mut bytes = vec![0x0a];
            prost::encoding::encode_varint(rs.len() as u64, &mut bytes);
            bytes.extend_from_slice(&rs);
            let (fast, slow) = decode_both(&bytes);
            assert_eq!(fast.spans.len(), 0, "{extra:?} {keep_good_scope}");
            assert_eq!(slow.spans.len(), 0, "{extra:?} {keep_good_scope}");
            assert_eq!(fast.dead_letters.len(), 1, "{extra:?} {keep_good_scope}");
            assert_eq!(slow.dead_letters.len(), 1, "{extra:?} {keep_good_scope}");
        }
    }
}

/// A resource's schema URL is checked for UTF-8 where the resource is decoded, not
/// looked up: the record is a dead letter, as the reference has it, whether its resource
/// (under a good URL) is cached, and when no `ScopeSpans` follows to decode it for.
#[test]
fn a_resource_schema_url_that_is_not_utf8_is_a_dead_letter() {
    let mut req = request(vec![pspan(1, 1, None, vec![])]);
    req.resource_spans[0].schema_url = "https://x.io/s/a".into();
    let good = req.encode_to_vec();
    let invalid = |bytes: &[u8]| {
        let at = bytes
            .windows(16)
            .position(|w| w == b"https://x.io/s/a")
            .expect("the URL")
            + 15;
        let mut bad = bytes.to_vec();
        bad[at] = 0xff;
        bad
    };
    let bad = invalid(&good);
    req.resource_spans[0].scope_spans.clear();
    let bad_without_spans = invalid(&req.encode_to_vec());
    for bytes in [&bad, &bad_without_spans] {
        // The good record first, so that its resource is in this thread's cache.
        let (fast, _) = decode_both(&good);
        assert_eq!(fast.spans.len(), 1);
        let (fast, slow) = decode_both(bytes);
        assert_eq!((fast.spans.len(), slow.spans.len()), (0, 0));
        assert_eq!((fast.dead_letters.len(), slow.dead_letters.len()), (1, 1));
        assert!(
            fast.dead_letters[0].reason.contains("invalid UTF-8"),
            "{}",
            fast.dead_letters[0].reason
        );
    }
}

/// The resource cache keys a resource by the bytes of its envelope too: records that
/// repeat one resource under other scopes, scope schema URLs written before the spans
/// (allowed, if not what prost writes), resource schema URLs or unknown fields each get
/// the envelope the reference decodes, in the reference's field order. Decoded one after the other on one
/// thread, so that each record but the first finds its resource in the cache.
#[test]
fn a_cached_resource_keeps_each_records_envelope() {
    use prost::encoding::{bytes, message, string};
    let resource = Resource {
        attributes: vec![kv("service.name", s("cart"))],
        ..Default::default()
    };
    // `ScopeSpans` fields written in the order given, the spans last.
    let record = |scope: Option<&str>, scope_url: Option<&str>, unknown: bool, url: &str| {
        let mut ss = Vec::new();
        if let Some(url) = scope_url {
            string::encode(3, &url.to_string(), &mut ss);
        }
        if unknown {
            bytes::encode(9, &vec![7u8], &mut ss);
        }
        if let Some(name) = scope {
            let scope = InstrumentationScope {
                name: name.into(),
                ..Default::default()
            };
            message::encode(1, &scope, &mut ss);
        }
        message::encode(2, &pspan(4, 1, None, vec![]), &mut ss);
        let mut rs = Vec::new();
        message::encode(1, &resource, &mut rs);
        bytes::encode(2, &ss, &mut rs);
        string::encode(3, &url.to_string(), &mut rs);
        let mut req = Vec::new();
        bytes::encode(1, &rs, &mut req);
        req
    };
    let records = [
        record(Some("a"), None, false, ""),
        record(Some("b"), None, false, ""),
        record(Some("a"), Some("https://s/1"), false, ""),
        record(Some("a"), Some("https://s/2"), false, ""),
        record(Some("a"), None, true, ""),
        record(Some("a"), None, false, "https://r/1"),
        record(None, None, false, "https://r/1"),
        record(Some("a"), None, false, ""),
        // An empty schema URL on the wire is no schema URL.
        record(Some("a"), Some(""), false, ""),
    ];
    let mut seen = Vec::new();
    for (i, bytes) in records.iter().chain(&records).enumerate() {
        let (fast, slow) = decode_both(bytes);
        assert_eq!(fast.spans.len(), 1, "record {i}");
        assert_eq!(fast.spans, slow.spans, "record {i}");
        assert!(fast.dead_letters.is_empty());
        seen.push(fast.spans[0].resource_attrs.clone());
    }
    // Six distinct envelopes, twice over: the unknown field is not one of its parts, and
    // the last two records repeat the first.
    let distinct: std::collections::HashSet<_> = seen.iter().collect();
    assert_eq!(distinct.len(), 6);
}

#[test]
fn garbage_is_a_dead_letter() {
    let mut d = SpanDecoder::new();
    let mut out = Decoded::default();
    d.decode(
        InputFormat::OtlpProto,
        &[0xff, 0xff, 0xff, 0x07],
        &meta(),
        &mut out,
    );
    d.decode(
        InputFormat::OtlpJson,
        b"{\"resourceSpans\": 5}",
        &meta(),
        &mut out,
    );
    d.decode(InputFormat::OtlpJson, b"not json", &meta(), &mut out);
    assert!(out.spans.is_empty());
    assert_eq!(out.dead_letters.len(), 3);
    assert_eq!(out.dead_letters[1].kind, "malformed_json");
    assert_eq!(d.stats().bad_records, 3);
}

#[test]
fn bad_spans_are_rejected_one_by_one() {
    let mut zero = pspan(0, 2, None, vec![]);
    zero.trace_id = vec![0; 16];
    let mut short = pspan(1, 3, None, vec![]);
    short.span_id = vec![1, 2, 3];
    let mut inverted = pspan(1, 4, None, vec![]);
    inverted.end_time_unix_nano = inverted.start_time_unix_nano - 1;
    let mut no_time = pspan(1, 5, None, vec![]);
    no_time.start_time_unix_nano = 0;
    let good = pspan(1, 6, None, vec![]);
    let bytes = request(vec![zero, short, inverted, no_time, good]).encode_to_vec();
    let (fast, slow) = decode_both(&bytes);
    assert_eq!(fast.spans.len(), 1);
    assert_eq!(fast.spans, slow.spans);
    let kinds: Vec<_> = fast
        .dead_letters
        .iter()
        .map(|d| (d.span_index, d.kind))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (Some(0), "invalid_trace_id"),
            (Some(1), "invalid_span_id"),
            (Some(2), "end_before_start"),
            (Some(3), "missing_timestamp"),
        ]
    );
    assert_eq!(
        fast.dead_letters, slow.dead_letters,
        "same reasons and payloads"
    );
}

#[test]
fn otlp_json_official_mapping() {
    // Hex ids, int64 as strings or numbers, enums as ints, as the OTLP/JSON spec says.
    let json = r#"{"resourceSpans":[{"resource":{"attributes":[
        {"key":"service.name","value":{"stringValue":"frontend"}}]},
      "scopeSpans":[{"scope":{"name":"x"},"spans":[
        {"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174",
         "parentSpanId":"","name":"GET /","kind":2,
         "startTimeUnixNano":"1544712660000000000","endTimeUnixNano":1544712661000000000,
         "attributes":[{"key":"http.request.method","value":{"stringValue":"GET"}},
                       {"key":"http.response.status_code","value":{"intValue":"503"}}],
         "status":{"code":2}}]}]}]}"#;
    let mut out = Decoded::default();
    SpanDecoder::new().decode(InputFormat::OtlpJson, json.as_bytes(), &meta(), &mut out);
    assert!(out.dead_letters.is_empty(), "{:?}", out.dead_letters);
    let sp = &out.spans[0];
    assert_eq!(sp.trace_id.to_hex(), "5b8efff798038103d269b633813fc60c");
    assert_eq!(sp.span_id.to_hex(), "eee19b7ec3c1b174");
    assert!(sp.is_root());
    assert_eq!(sp.kind, SpanKind::Server);
    assert_eq!(sp.call_type, CallType::Http);
    assert_eq!(sp.http_status, 503);
    assert_eq!(sp.duration_ns(), 1_000_000_000);
    assert_eq!(sp.status, StatusCode::Error);
}

#[test]
fn json_and_proto_agree() {
    let req = request(vec![pspan(
        4,
        5,
        Some(6),
        vec![
            kv("http.method", s("POST")),
            kv("x", Value::DoubleValue(1.5)),
        ],
    )]);
    let mut a = Decoded::default();
    let mut b = Decoded::default();
    let mut d = SpanDecoder::new();
    d.decode(
        InputFormat::OtlpProto,
        &req.encode_to_vec(),
        &meta(),
        &mut a,
    );
    d.decode(
        InputFormat::OtlpJson,
        &serde_json::to_vec(&req).unwrap(),
        &meta(),
        &mut b,
    );
    assert_eq!(a.spans, b.spans);
}

fn arb_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        "[a-z0-9./ ]{0,12}".prop_map(Value::StringValue),
        // Non-ASCII text and values whose lengths take two or three varint bytes.
        "\\PC{0,3}(x{120,130}|y{16380,16390})?\\PC{0,3}".prop_map(Value::StringValue),
        any::<bool>().prop_map(Value::BoolValue),
        any::<i64>().prop_map(Value::IntValue),
        (-1e9f64..1e9).prop_map(Value::DoubleValue),
        prop::collection::vec(any::<u8>(), 0..4).prop_map(Value::BytesValue),
    ]
}

fn arb_key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("http.method".to_owned()),
        Just("http.response.status_code".to_owned()),
        Just("db.system".to_owned()),
        Just("messaging.system".to_owned()),
        Just("peer.service".to_owned()),
        Just("rpc.system".to_owned()),
        "[a-z]{1,6}(\\.[a-z]{1,6})?",
    ]
}

fn arb_span() -> impl Strategy<Value = PSpan> {
    (
        prop::collection::vec(any::<u8>(), 15..=17),
        prop::collection::vec(any::<u8>(), 7..=9),
        prop::option::of(prop::collection::vec(any::<u8>(), 8)),
        0i32..7,
        1u64..1_000_000,
        0u64..1_000_000,
        prop::collection::vec((arb_key(), arb_value()), 0..14),
        0i32..3,
    )
        .prop_map(|(t, sid, parent, kind, start, dur, attrs, code)| PSpan {
            trace_id: t,
            span_id: sid,
            parent_span_id: parent.unwrap_or_default(),
            name: "op".into(),
            kind,
            start_time_unix_nano: start,
            end_time_unix_nano: start + dur,
            attributes: attrs.into_iter().map(|(k, v)| kv(&k, v)).collect(),
            status: Some(Status {
                code,
                message: String::new(),
            }),
            ..Default::default()
        })
}

/// Avro carries what OTLP protobuf carries (attributes in key order, as the Avro
/// decoder sorts map keys), and every cut of a record is one dead letter.
#[test]
fn avro_and_proto_agree_and_cuts_are_dead_letters() {
    let mut root = pspan(
        4,
        5,
        None,
        vec![
            kv("a.bool", Value::BoolValue(true)),
            kv("http.request.method", s("GET")),
            kv("http.response.status_code", Value::IntValue(503)),
            kv("url.path", s("/cart/17")),
            kv("x.ratio", Value::DoubleValue(0.25)),
        ],
    );
    root.kind = 2;
    let child = pspan(4, 6, Some(5), vec![kv("db.system", s("postgresql"))]);
    let req = request(vec![root, child]);
    let avro = avro::encode_request(&req).unwrap();
    let mut a = Decoded::default();
    let mut b = Decoded::default();
    let mut d = SpanDecoder::new();
    d.decode(
        InputFormat::OtlpProto,
        &req.encode_to_vec(),
        &meta(),
        &mut a,
    );
    d.decode(InputFormat::Avro, &avro, &meta(), &mut b);
    assert_eq!(b.spans.len(), 2);
    // The resource's attributes are an Avro map: the same set, in key order.
    let sorted = |a: &Attrs| {
        let mut v: Vec<String> = a.iter().map(|e| format!("{e:?}")).collect();
        v.sort();
        v
    };
    for (x, y) in a.spans.iter_mut().zip(&mut b.spans) {
        assert_eq!(sorted(&x.resource_attrs), sorted(&y.resource_attrs));
        x.resource_attrs = Attrs::empty();
        y.resource_attrs = Attrs::empty();
    }
    assert_eq!(a.spans, b.spans);
    assert!(b.dead_letters.is_empty());
    for cut in 0..avro.len() {
        let mut out = Decoded::default();
        d.decode(InputFormat::Avro, &avro[..cut], &meta(), &mut out);
        assert!(out.spans.is_empty(), "cut at {cut}");
        assert_eq!(out.dead_letters.len(), 1, "cut at {cut}");
        assert_eq!(out.dead_letters[0].kind, "malformed_avro");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// The fast decoder agrees with prost + conversion on every request, valid or not,
    /// and on every truncation of it.
    #[test]
    fn fast_decoder_matches_prost_reference(spans in prop::collection::vec(arb_span(), 0..6), cut in any::<prop::sample::Index>()) {
        let bytes = request(spans).encode_to_vec();
        let (fast, slow) = decode_both(&bytes);
        prop_assert_eq!(&fast.spans, &slow.spans);
        prop_assert_eq!(&fast.dead_letters, &slow.dead_letters);
        let cut = cut.index(bytes.len().max(1));
        let (fast, slow) = decode_both(&bytes[..cut]);
        prop_assert_eq!(fast.spans.len(), slow.spans.len());
        prop_assert_eq!(fast.dead_letters.len(), slow.dead_letters.len());
    }

    /// The same with several resources and scopes per request: a `ResourceSpans` with
    /// one `ScopeSpans` is decoded on one walk, one with several on two.
    #[test]
    fn fast_decoder_matches_prost_reference_across_scopes(
        resources in prop::collection::vec(
            (
                prop::collection::vec((prop::collection::vec(arb_span(), 0..3), 0u8..3), 0..4),
                prop::option::of("[a-z/:.0-9]{0,12}"),
            ),
            1..4,
        ),
    ) {
        let resource_spans = resources
            .into_iter()
            .enumerate()
            .map(|(i, (scopes, schema_url))| ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", s(&format!("svc-{i}")))],
                    ..Default::default()
                }),
                scope_spans: scopes
                    .into_iter()
                    .map(|(spans, scope)| ScopeSpans {
                        scope: (scope > 0).then(|| InstrumentationScope {
                            name: format!("scope-{scope}"),
                            ..Default::default()
                        }),
                        spans,
                        schema_url: if scope == 2 { "https://opentelemetry.io/schemas/1.21.0".into() } else { String::new() },
                    })
                    .collect(),
                schema_url: schema_url.unwrap_or_default(),
            })
            .collect();
        let bytes = ExportTraceServiceRequest { resource_spans }.encode_to_vec();
        let (fast, slow) = decode_both(&bytes);
        prop_assert_eq!(&fast.spans, &slow.spans);
        prop_assert_eq!(&fast.dead_letters, &slow.dead_letters);
    }

    /// Arbitrary bytes never panic and always account for the record.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let mut out = Decoded::default();
        let mut d = SpanDecoder::new();
        d.decode(InputFormat::OtlpProto, &bytes, &meta(), &mut out);
        d.decode(InputFormat::OtlpJson, &bytes, &meta(), &mut out);
        d.decode(InputFormat::Avro, &bytes, &meta(), &mut out);
        prop_assert_eq!(d.stats().records, 3);
    }
}

/// The attribute columns render array, kvlist and bytes values kept in wire form as the
/// reference rendering of prost's decoded value does.
#[test]
fn wire_values_render_as_the_prost_reference() {
    use opentelemetry_proto::tonic::common::v1::KeyValueList;
    let any = |v: Value| AnyValue { value: Some(v) };
    let values = vec![
        Value::ArrayValue(ArrayValue {
            values: vec![
                any(s("x\"y")),
                any(Value::IntValue(-3)),
                any(Value::DoubleValue(0.1)),
                any(Value::BoolValue(false)),
                AnyValue { value: None },
            ],
        }),
        Value::KvlistValue(KeyValueList {
            values: vec![
                kv("b", Value::IntValue(1)),
                kv("a", Value::ArrayValue(ArrayValue::default())),
                kv("b", s("again")),
                KeyValue {
                    key: "none".into(),
                    value: None,
                    ..Default::default()
                },
            ],
        }),
        Value::BytesValue(vec![0xde, 0xad, 0xbe, 0xef]),
        Value::ArrayValue(ArrayValue {
            values: vec![any(Value::KvlistValue(KeyValueList {
                values: vec![kv("deep", Value::BytesValue(vec![]))],
            }))],
        }),
    ];
    for v in values {
        let av = any(v);
        let want = super::convert::any_value_json(&av);
        let got = spanflow_operators::model::wire::any_value_json(&av.encode_to_vec());
        assert_eq!(got, Some(want), "{av:?}");
    }
}
