use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;

use super::*;

fn request(spans_per_scope: &[usize]) -> Vec<u8> {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: spans_per_scope
                .iter()
                .map(|&n| ScopeSpans {
                    spans: vec![Span::default(); n],
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }],
    }
    .encode_to_vec()
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
        max_request_bytes: 1 << 20,
    };
    let one = Bytes::from(request(&[2]));
    assert_eq!(intake.offer(one.clone()), Verdict::Accepted);
    assert_eq!(intake.offer(one.clone()), Verdict::Retry);
    assert_eq!(
        intake.offer(Bytes::from_static(b"\xff")),
        Verdict::Invalid,
        "invalid even when there is no room for its dead letter"
    );
    assert_eq!(rx.recv().unwrap(), one);
    assert_eq!(intake.offer(Bytes::from_static(b"\xff")), Verdict::Invalid);
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
    };
    let issues = c.validate();
    assert_eq!(issues.len(), 2, "{issues:?}");
}
