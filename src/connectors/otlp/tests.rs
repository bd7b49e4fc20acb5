use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;

use super::*;

/// A usable span (ids and times set).
fn good_span() -> Span {
    Span {
        trace_id: vec![1; 16],
        span_id: vec![2; 8],
        start_time_unix_nano: 10,
        end_time_unix_nano: 20,
        ..Default::default()
    }
}

fn request(spans_per_scope: &[usize]) -> Vec<u8> {
    request_of(spans_per_scope, good_span())
}

fn request_of(spans_per_scope: &[usize], span: Span) -> Vec<u8> {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: spans_per_scope
                .iter()
                .map(|&n| ScopeSpans {
                    spans: vec![span.clone(); n],
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

fn count_spans(body: &[u8]) -> Option<u64> {
    survey(body).map(|s| s.spans)
}

const OK: Verdict = Verdict::Accepted {
    rejected: 0,
    reason: None,
};

/// The spans the decoder would send to `dead_letters` are found when the request
/// comes, so the answer can say so (OTLP partial success), with the decoder's reason.
#[test]
fn unusable_spans_are_counted_as_the_decoder_would_reject_them() {
    let bad = |f: fn(&mut Span)| {
        let mut s = good_span();
        f(&mut s);
        survey(&request_of(&[2], s)).unwrap()
    };
    assert_eq!(bad(|_| {}).rejected, 0);
    let short = bad(|s| s.trace_id = vec![1; 3]);
    assert_eq!((short.spans, short.rejected), (2, 2));
    assert!(
        short
            .first_reason
            .as_deref()
            .unwrap()
            .contains("3 bytes, expected 16"),
        "{short:?}"
    );
    assert_eq!(bad(|s| s.span_id = vec![0; 8]).rejected, 2);
    assert_eq!(bad(|s| s.parent_span_id = vec![1; 4]).rejected, 2);
    assert_eq!(bad(|s| s.end_time_unix_nano = 5).rejected, 2);
    assert_eq!(bad(|s| s.start_time_unix_nano = 0).rejected, 2);
    // What the decoder says of the same spans.
    let mut out = crate::formats::Decoded::default();
    let meta = crate::formats::RecordMeta {
        topic: None,
        source: spanflow_operators::Sym::new("rx"),
        split: 0,
        offset: 0,
    };
    crate::formats::SpanDecoder::new().decode(
        InputFormat::OtlpProto,
        &request_of(
            &[2],
            Span {
                trace_id: vec![1; 3],
                ..good_span()
            },
        ),
        &meta,
        &mut out,
    );
    assert_eq!((out.spans.len(), out.dead_letters.len()), (0, 2));
}

#[test]
fn spans_are_counted_from_the_requests_structure() {
    assert_eq!(count_spans(&request(&[3, 0, 2])), Some(5));
    assert_eq!(count_spans(&[]), Some(0), "an empty request is a request");
    assert_eq!(count_spans(b"\xff\xff\xff"), None);
    // A resource_spans field that is not length-delimited.
    assert_eq!(count_spans(&[0x08, 0x01]), None);
    // Cut short inside a span.
    let whole = request(&[1]);
    let mut cut = request(&[2]);
    cut.truncate(cut.len() - 1);
    assert_eq!(count_spans(&cut), None);
    assert_eq!(count_spans(&whole), Some(1));
}

#[test]
fn a_full_queue_tells_the_exporter_to_retry() {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let intake = Intake {
        tx,
        stats: Arc::default(),
        tenants: Arc::default(),
        max_request_bytes: 1 << 20,
    };
    let one = Bytes::from(request(&[2]));
    assert_eq!(intake.offer(one.clone(), None), OK);
    assert_eq!(intake.offer(one.clone(), None), Verdict::Retry);
    assert_eq!(
        intake.offer(Bytes::from_static(b"\xff"), None),
        Verdict::Invalid,
        "invalid even when there is no room for its dead letter"
    );
    assert_eq!(rx.recv().unwrap(), one);
    assert_eq!(
        intake.offer(Bytes::from_static(b"\xff"), None),
        Verdict::Invalid
    );
    assert_eq!(&rx.recv().unwrap()[..], b"\xff", "queued for dead_letters");
    let s = &intake.stats;
    assert_eq!(s.accepted.load(Ordering::Relaxed), 1);
    assert_eq!(s.accepted_spans.load(Ordering::Relaxed), 2);
    assert_eq!(s.retried.load(Ordering::Relaxed), 1);
    assert_eq!(s.retried_spans.load(Ordering::Relaxed), 2);
    assert_eq!(s.invalid.load(Ordering::Relaxed), 2);
}

#[test]
fn a_receiver_without_an_address_is_a_config_error() {
    let c = OtlpSourceConfig {
        grpc: None,
        http: None,
        queue: 0,
        max_request_bytes: 1,
        tenants: Vec::new(),
    };
    let issues = c.validate();
    assert_eq!(issues.len(), 2, "{issues:?}");
}

fn tenant(name: &str, key: &str, rate: Option<f64>) -> TenantConfig {
    serde_json::from_value(serde_json::json!({
        "name": name, "key": key, "spans_per_second": rate,
    }))
    .unwrap()
}

#[test]
fn the_tenant_goes_into_every_resource_and_replaces_the_senders() {
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    let kv = |k: &str, v: &str| KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(v.into())),
        }),
        ..Default::default()
    };
    let req = ExportTraceServiceRequest {
        resource_spans: vec![
            ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", "a"), kv("tenant", "spoofed")],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans::default()],
                schema_url: "s".into(),
            },
            ResourceSpans::default(),
        ],
    };
    let out = tenants::with_tenant(&req.encode_to_vec(), "team-a").unwrap();
    let got = ExportTraceServiceRequest::decode(&out[..]).unwrap();
    let attrs = |i: usize| got.resource_spans[i].resource.clone().unwrap().attributes;
    assert_eq!(
        attrs(0),
        vec![kv("service.name", "a"), kv("tenant", "team-a")]
    );
    assert_eq!(
        attrs(1),
        vec![kv("tenant", "team-a")],
        "a resource is added"
    );
    assert_eq!(got.resource_spans[0].schema_url, "s");
    assert_eq!(got.resource_spans[0].scope_spans.len(), 1);
    assert!(tenants::with_tenant(b"\xff\xff", "x").is_none());
}

#[test]
fn keys_come_from_bearer_or_api_key_headers() {
    use tenants::key_of;
    assert_eq!(key_of(Some("Bearer abc"), None), Some("abc"));
    assert_eq!(key_of(Some("bearer  abc "), Some("x")), Some("abc"));
    assert_eq!(key_of(Some("Basic abc"), Some("k")), Some("k"));
    assert_eq!(key_of(None, Some(" k ")), Some("k"));
    assert_eq!(key_of(None, None), None);
    let secret = tenant("a", "hunter2", None);
    assert!(
        !format!("{secret:?}").contains("hunter2"),
        "keys never print"
    );
    assert!(!serde_json::to_string(&secret).unwrap().contains("hunter2"));
}

#[test]
fn tenants_are_told_apart_by_key_and_throttled_by_their_own_bucket() {
    let t = Tenants::load(&[tenant("a", "ka", Some(10.0)), tenant("b", "kb", None)]).unwrap();
    assert_eq!(t.of(Some("nope")).unwrap_err(), Refusal::Unauthorized);
    assert_eq!(t.of(None).unwrap_err(), Refusal::Unauthorized);
    let a = t.of(Some("ka")).unwrap().unwrap();
    let b = t.of(Some("kb")).unwrap().unwrap();
    assert_eq!((a.name.as_str(), b.name.as_str()), ("a", "b"));
    // A burst of 10 (one second's worth), then nothing until it refills.
    assert!(a.take(8).is_ok());
    assert_eq!(a.take(8), Err(Refusal::Throttled));
    assert!(a.take(2).is_ok());
    a.give_back(2);
    assert!(a.take(2).is_ok(), "what was given back can be taken again");
    for _ in 0..100 {
        assert!(b.take(1000).is_ok(), "b has no limit");
    }
    assert_eq!(a.throttled.load(Ordering::Relaxed), 1);
    assert_eq!(a.throttled_spans.load(Ordering::Relaxed), 8);
    assert_eq!(
        a.accepted_spans.load(Ordering::Relaxed),
        10,
        "8 + 2, given back, + 2"
    );
    assert!(
        Tenants::default().of(None).unwrap().is_none(),
        "open without tenants"
    );
}
