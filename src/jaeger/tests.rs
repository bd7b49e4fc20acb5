use super::grpc::{chunks, query_of};
use super::proto::storage_v2 as pb;
use super::sql::{Dialect, conditions};
use super::*;

fn ts(seconds: i64, nanos: i32) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds, nanos })
}

fn kv(key: &str, v: pb::any_value::Value) -> pb::KeyValue {
    pb::KeyValue {
        key: key.into(),
        value: Some(pb::AnyValue { value: Some(v) }),
    }
}

#[test]
fn a_search_reads_jaegers_parameters() {
    use pb::any_value::Value;
    let q = query_of(Some(pb::TraceQueryParameters {
        service_name: "checkout".into(),
        operation_name: String::new(),
        attributes: vec![
            kv("http.response.status_code", Value::IntValue(500)),
            kv("error", Value::StringValue("true".into())),
            kv("span.kind", Value::StringValue("SPAN_KIND_CLIENT".into())),
            kv(
                "otel.status_code",
                Value::StringValue("STATUS_CODE_ERROR".into()),
            ),
            kv("ratio", Value::DoubleValue(0.5)),
        ],
        // Go's zero time.Time, as Jaeger sends an unset bound.
        start_time_min: ts(-62_135_596_800, 0),
        start_time_max: ts(1_700_000_000, 5),
        duration_min: Some(prost_types::Duration {
            seconds: 1,
            nanos: 500,
        }),
        duration_max: None,
        search_depth: 0,
    }))
    .unwrap();
    assert_eq!(
        q,
        TraceQuery {
            service: Some("checkout".into()),
            operation: None,
            attributes: vec![
                AttrMatch::Attribute {
                    key: "http.response.status_code".into(),
                    value: "500".into()
                },
                AttrMatch::Error(true),
                AttrMatch::Kind("client".into()),
                AttrMatch::Status("error".into()),
                AttrMatch::Attribute {
                    key: "ratio".into(),
                    value: "0.5".into()
                },
            ],
            start_min_ns: None,
            start_max_ns: Some(1_700_000_000_000_000_005),
            duration_min_ns: Some(1_000_000_500),
            duration_max_ns: None,
            limit: DEFAULT_SEARCH_DEPTH,
        }
    );
}

#[test]
fn a_search_that_cannot_match_is_refused() {
    use pb::any_value::Value;
    let refused = |p: pb::TraceQueryParameters| query_of(Some(p)).unwrap_err().code();
    assert_eq!(
        refused(pb::TraceQueryParameters {
            search_depth: -1,
            ..Default::default()
        }),
        tonic::Code::InvalidArgument
    );
    assert_eq!(
        refused(pb::TraceQueryParameters {
            start_time_min: ts(20, 0),
            start_time_max: ts(10, 0),
            ..Default::default()
        }),
        tonic::Code::InvalidArgument
    );
    assert_eq!(
        refused(pb::TraceQueryParameters {
            attributes: vec![kv("error", Value::StringValue("maybe".into()))],
            ..Default::default()
        }),
        tonic::Code::InvalidArgument
    );
    assert_eq!(
        query_of(None).unwrap_err().code(),
        tonic::Code::InvalidArgument
    );
    let deep = query_of(Some(pb::TraceQueryParameters {
        search_depth: i32::MAX,
        ..Default::default()
    }))
    .unwrap();
    assert_eq!(deep.limit, MAX_SEARCH_DEPTH);
}

#[test]
fn search_conditions_quote_what_the_user_typed() {
    let q = TraceQuery {
        service: Some("o'brien\\".into()),
        attributes: vec![AttrMatch::Attribute {
            key: "k'?".into(),
            value: "v".into(),
        }],
        start_min_ns: Some(7),
        ..Default::default()
    };
    assert_eq!(
        conditions(&q, Dialect::DataFusion),
        [
            "service = 'o''brien\\'",
            "start_time >= to_timestamp_nanos(7)",
            "(attributes['k''?'] = 'v' OR resource_attributes['k''?'] = 'v')",
        ]
    );
    assert_eq!(
        conditions(&q, Dialect::ClickHouse),
        [
            "service = 'o\\'brien\\\\'",
            "start_time >= 7",
            "((has(attributes.key, 'k\\'?') AND attributes.value[indexOf(attributes.key, \
             'k\\'?')] = 'v') OR (has(resource_attributes.key, 'k\\'?') AND \
             resource_attributes.value[indexOf(resource_attributes.key, 'k\\'?')] = 'v'))",
        ]
    );
}

#[test]
fn a_lookups_time_hint_is_widened_and_dropped_when_one_lookup_has_none() {
    let l = |s: Option<u64>, e: Option<u64>| TraceLookup {
        trace_id: [0; 16],
        start_ns: s,
        end_ns: e,
    };
    let hour = LOOKUP_SLACK_NS;
    assert_eq!(
        TraceLookup::start_range(&[
            l(Some(5 * hour), Some(6 * hour)),
            l(Some(2 * hour), Some(3 * hour))
        ]),
        (Some(hour), Some(7 * hour))
    );
    assert_eq!(
        TraceLookup::start_range(&[l(Some(5 * hour), Some(6 * hour)), l(None, None)]),
        (None, None)
    );
}

/// A span message and envelope as the tables keep them.
fn stored(trace: u8, span: u8, payload: usize) -> StoredSpan {
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use prost::Message;
    let s = Span {
        trace_id: vec![trace; 16],
        span_id: vec![span; 8],
        name: "x".repeat(payload),
        ..Default::default()
    };
    let envelope = ResourceSpans {
        scope_spans: vec![ScopeSpans::default()],
        ..Default::default()
    };
    StoredSpan {
        start_ns: u64::from(span),
        envelope: envelope.encode_to_vec(),
        span: s.encode_to_vec(),
    }
}

#[test]
fn a_large_trace_goes_out_in_chunks_of_its_own_spans() {
    let t = StoredTrace {
        trace_id: [9; 16],
        spans: (0..5).map(|i| stored(9, i, 400_000)).collect(),
    };
    let out = chunks(&t).unwrap();
    assert_eq!(out.len(), 2, "about 1 MiB each");
    let ids: Vec<Vec<u8>> = out
        .iter()
        .flat_map(|c| &c.resource_spans)
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans)
        .map(|s| s.span_id.clone())
        .collect();
    assert_eq!(ids, (0..5u8).map(|i| vec![i; 8]).collect::<Vec<_>>());
    let small = StoredTrace {
        trace_id: [9; 16],
        spans: (0..5).map(|i| stored(9, i, 10)).collect(),
    };
    assert_eq!(chunks(&small).unwrap().len(), 1);
}

#[test]
fn spans_are_grouped_by_trace_in_the_order_asked() {
    let l = |t: u8| TraceLookup {
        trace_id: [t; 16],
        start_ns: None,
        end_ns: None,
    };
    let rows = vec![
        ([1; 16], stored(1, 3, 1)),
        ([2; 16], stored(2, 1, 1)),
        ([1; 16], stored(1, 2, 1)),
    ];
    let out = group_by_trace(&[l(2), l(3), l(1), l(2)], rows);
    let got: Vec<(u8, Vec<u64>)> = out
        .iter()
        .map(|t| (t.trace_id[0], t.spans.iter().map(|s| s.start_ns).collect()))
        .collect();
    assert_eq!(got, [(2, vec![1]), (1, vec![2, 3])]);
}

#[test]
fn span_kinds_are_read_in_every_spelling() {
    for k in ["server", "SERVER", "SPAN_KIND_SERVER", "Server"] {
        assert_eq!(span_kind_name(k), Some("server"));
    }
    assert_eq!(span_kind_name("sideways"), None);
}
