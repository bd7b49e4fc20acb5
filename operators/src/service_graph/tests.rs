use super::*;
use crate::metrics::{ClosedInterval, SeriesAgg};
use crate::model::StatusCode;
use crate::session_window::{CloseReason, TraceSummary};
use crate::{EventTime, WATERMARK_END};

const MS: u64 = 1_000_000;
const SEC: u64 = 1_000 * MS;
/// 2026-01-01T00:00:00Z: a multiple of the 10 s interval, so intervals start at T0.
const T0: u64 = 1_767_225_600_000_000_000;
/// End of the first 10 s interval.
const END1: EventTime = T0 + 10 * SEC;

fn sid(id: u8) -> SpanId {
    SpanId([id, 0, 0, 0, 0, 0, 0, 1])
}

fn tid(t: u8) -> TraceId {
    TraceId([t; 16])
}

/// A span of trace 0 (`trace` sets the real id); `parent` 0 means root.
fn sp(
    id: u8,
    parent: u8,
    service: &str,
    kind: SpanKind,
    ct: CallType,
    start_ms: u64,
    dur_ms: u64,
) -> Span {
    Span {
        trace_id: tid(0),
        span_id: sid(id),
        parent_span_id: if parent == 0 {
            SpanId::default()
        } else {
            sid(parent)
        },
        start_ns: T0 + start_ms * MS,
        end_ns: T0 + (start_ms + dur_ms) * MS,
        service: Sym::new(service),
        instance: Sym::new(&format!("{service}-1")),
        name: Sym::new(&format!("{service} op {id}")),
        kind,
        call_type: ct,
        ..Default::default()
    }
}

fn with_peer(mut s: Span, peer: &str) -> Span {
    s.peer = Sym::new(peer);
    s
}

fn failed(mut s: Span) -> Span {
    s.status = StatusCode::Error;
    s
}

fn trace(t: u8, mut spans: Vec<Span>) -> ClosedTrace {
    for s in &mut spans {
        s.trace_id = tid(t);
    }
    let summary = TraceSummary {
        root_service: spans[0].service,
        root_operation: spans[0].name,
        has_root: spans.iter().any(Span::is_root),
        start_ns: spans.iter().map(|s| s.start_ns).min().unwrap(),
        end_ns: spans.iter().map(|s| s.end_ns).max().unwrap(),
        span_count: spans.len() as u32,
        error_count: spans.iter().filter(|s| s.is_error()).count() as u32,
        close_reason: CloseReason::Gap,
        fragment: 0,
        closes_at: spans.iter().map(|s| s.end_ns).max().unwrap(),
    };
    ClosedTrace::new(tid(t), spans, summary)
}

fn edges_of(t: &ClosedTrace, virtual_nodes: bool) -> Vec<Edge> {
    let config = ServiceGraphConfig {
        virtual_nodes,
        ..Default::default()
    };
    edges_by(t, &config)
}

fn edges_by(t: &ClosedTrace, config: &ServiceGraphConfig) -> Vec<Edge> {
    let mut index = SpanIndex::default();
    index.build(&t.spans);
    let mut linked = Vec::new();
    let mut out = Vec::new();
    trace_edges(t, &index, &EdgeRules::new(config), &mut linked, &mut out);
    out
}

/// The connection an edge to a `kind` node with `call_type` has, unless it comes from a
/// virtual node.
fn connection_of(kind: NodeKind, call_type: CallType) -> ConnectionType {
    match (kind, call_type) {
        (NodeKind::Service, CallType::Mq) => ConnectionType::MessagingSystem,
        (NodeKind::Service, _) => ConnectionType::Direct,
        (NodeKind::Database | NodeKind::Cache, _) => ConnectionType::Database,
        _ => ConnectionType::VirtualNode,
    }
}

/// An edge from a virtual node (the virtual client, a messaging system).
fn from_virtual(e: Edge) -> Edge {
    Edge {
        connection: ConnectionType::VirtualNode,
        ..e
    }
}

fn tempo() -> ServiceGraphConfig {
    ServiceGraphConfig {
        semantics: GraphSemantics::Tempo,
        ..Default::default()
    }
}

fn with_attrs(mut s: Span, attrs: &[(&str, crate::model::AttrValue<'_>)]) -> Span {
    let mut b = crate::model::AttrsBuilder::default();
    for (k, v) in attrs {
        b.push(k, *v, false);
    }
    s.attrs = b.finish();
    s
}

/// The edge measured on span `span` (of trace `t`), connected as its target and call
/// type suggest: a queue edge between services, a direct call, a database or virtual
/// node. Edges from a virtual node say so themselves.
fn edge(
    source: &str,
    target: &str,
    target_kind: NodeKind,
    call_type: CallType,
    t: u8,
    span: &Span,
) -> Edge {
    let connection = connection_of(target_kind, call_type);
    Edge {
        source: Sym::new(source),
        target: Sym::new(target),
        target_kind,
        connection,
        call_type,
        duration_ns: span.duration_ns(),
        error: span.is_error(),
        end_ns: span.end_ns,
        trace_id: tid(t),
        span_id: span.span_id,
    }
}

// ---------------------------------------------------------------------------------------
// trace_edges
// ---------------------------------------------------------------------------------------

#[test]
fn client_to_server_of_another_service_is_one_edge_measured_on_the_client() {
    use CallType::*;
    use SpanKind::*;
    let root = sp(1, 0, "frontend", Server, Http, 0, 400);
    // The client saw 60 ms and failed; the server saw 40 ms and succeeded.
    let client = failed(with_peer(
        sp(2, 1, "frontend", Client, Http, 10, 60),
        "backend:8080",
    ));
    let server = sp(3, 2, "backend", Server, Http, 20, 40);
    let t = trace(1, vec![root, client, server]);

    let got = edges_of(&t, true);
    assert_eq!(
        got,
        vec![Edge {
            source: Sym::new("frontend"),
            target: Sym::new("backend"),
            target_kind: NodeKind::Service,
            connection: ConnectionType::Direct,
            call_type: Http,
            duration_ns: 60 * MS,
            error: true,
            end_ns: T0 + 70 * MS,
            trace_id: tid(1),
            span_id: sid(2),
        }],
        "exactly one edge, no virtual edge for the answered client span"
    );
}

#[test]
fn sync_edge_error_is_the_clients_not_the_servers() {
    use CallType::*;
    use SpanKind::*;
    let t = trace(
        2,
        vec![
            sp(1, 0, "frontend", Server, Http, 0, 400),
            sp(2, 1, "frontend", Client, Http, 10, 60),
            failed(sp(3, 2, "backend", Server, Http, 20, 40)),
        ],
    );
    let got = edges_of(&t, true);
    assert_eq!(got.len(), 1);
    assert!(
        !got[0].error,
        "the server failed but the client did not: the call did not fail"
    );
    assert_eq!(got[0].duration_ns, 60 * MS);
    assert_eq!(got[0].span_id, sid(2));
}

#[test]
fn sync_edge_call_type_falls_back_to_the_callees() {
    use SpanKind::*;
    let t = trace(
        3,
        vec![
            sp(1, 0, "frontend", Server, CallType::Http, 0, 400),
            sp(2, 1, "frontend", Client, CallType::Local, 10, 60),
            sp(3, 2, "backend", Server, CallType::Rpc, 20, 40),
        ],
    );
    let got = edges_of(&t, true);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].call_type, CallType::Rpc);
    assert_eq!(got[0].target, Sym::new("backend"));

    // Both known: the caller's wins.
    let t = trace(
        4,
        vec![
            sp(1, 0, "frontend", Server, CallType::Http, 0, 400),
            sp(2, 1, "frontend", Client, CallType::Http, 10, 60),
            sp(3, 2, "backend", Server, CallType::Rpc, 20, 40),
        ],
    );
    assert_eq!(edges_of(&t, true)[0].call_type, CallType::Http);
}

#[test]
fn producer_to_consumer_edge_is_measured_on_the_consumer() {
    use CallType::*;
    use SpanKind::*;
    let producer = with_peer(sp(2, 1, "orders", Producer, Mq, 100, 5), "orders-topic");
    // The consumer runs 3 s later, takes 50 ms and fails; the producer succeeded.
    let consumer = failed(sp(3, 2, "billing", Consumer, Mq, 3000, 50));
    let t = trace(
        5,
        vec![sp(1, 0, "orders", Server, Http, 0, 300), producer, consumer],
    );
    assert_eq!(
        edges_of(&t, true),
        vec![Edge {
            source: Sym::new("orders"),
            target: Sym::new("billing"),
            target_kind: NodeKind::Service,
            connection: ConnectionType::MessagingSystem,
            call_type: Mq,
            duration_ns: 50 * MS,
            error: true,
            end_ns: T0 + 3050 * MS,
            trace_id: tid(5),
            span_id: sid(3),
        }],
        "no virtual queue edge: the producer's message was consumed"
    );

    // The producer failed, the consumer did not: the edge did not fail.
    let t = trace(
        6,
        vec![
            sp(1, 0, "orders", Server, Http, 0, 300),
            failed(sp(2, 1, "orders", Producer, Mq, 100, 5)),
            sp(3, 2, "billing", Consumer, Mq, 3000, 50),
        ],
    );
    let got = edges_of(&t, true);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(!got[0].error);
    assert_eq!(got[0].span_id, sid(3));
}

#[test]
fn mixed_queue_pairs_are_measured_on_the_entry_span() {
    use CallType::*;
    use SpanKind::*;
    // Producer -> Server and Client -> Consumer are queue hops too.
    let t = trace(
        7,
        vec![
            sp(1, 0, "a", Server, Http, 0, 1000),
            sp(2, 1, "a", Producer, Mq, 10, 5),
            sp(3, 2, "b", Server, Mq, 500, 30),
            sp(4, 1, "a", Client, Mq, 20, 5),
            sp(5, 4, "c", Consumer, Mq, 600, 70),
        ],
    );
    let s = &t.spans;
    assert_eq!(
        edges_of(&t, true),
        vec![
            edge("a", "b", NodeKind::Service, Mq, 7, &s[2]),
            edge("a", "c", NodeKind::Service, Mq, 7, &s[4]),
        ]
    );
}

#[test]
fn unanswered_calls_become_virtual_nodes_named_after_the_peer() {
    use CallType::*;
    use SpanKind::*;
    let db_peer = with_peer(sp(2, 1, "shop", Client, Db, 10, 30), "orders-db");
    let mut db_system = sp(3, 1, "shop", Client, Db, 50, 7);
    db_system.db_system = Sym::new("postgresql");
    let db_unknown = failed(sp(4, 1, "shop", Client, Db, 60, 3));
    let mut cache = with_peer(sp(5, 1, "shop", Client, Cache, 70, 1), "sessions");
    cache.db_system = Sym::new("redis"); // peer wins over db_system
    let queue = with_peer(sp(6, 1, "shop", Producer, Mq, 80, 2), "orders-topic");
    let http = with_peer(sp(7, 1, "shop", Client, Http, 90, 200), "api.stripe.com");
    let rpc = with_peer(sp(8, 1, "shop", Client, Rpc, 300, 20), "geo");
    // No call type: in-process work, never a node.
    let local = with_peer(sp(9, 1, "shop", Client, Local, 330, 20), "nowhere");
    // Internal span with a call type: not an outgoing call.
    let internal = with_peer(sp(10, 1, "shop", Internal, Db, 360, 20), "not-a-call");
    let t = trace(
        8,
        vec![
            sp(1, 0, "shop", Server, Http, 0, 1000),
            db_peer,
            db_system,
            db_unknown,
            cache,
            queue,
            http,
            rpc,
            local,
            internal,
        ],
    );
    let s = &t.spans;
    let got = edges_of(&t, true);
    assert_eq!(
        got,
        vec![
            edge("shop", "orders-db", NodeKind::Database, Db, 8, &s[1]),
            edge("shop", "postgresql", NodeKind::Database, Db, 8, &s[2]),
            edge("shop", "unknown", NodeKind::Database, Db, 8, &s[3]),
            edge("shop", "sessions", NodeKind::Cache, Cache, 8, &s[4]),
            edge("shop", "orders-topic", NodeKind::Queue, Mq, 8, &s[5]),
            edge("shop", "api.stripe.com", NodeKind::External, Http, 8, &s[6]),
            edge("shop", "geo", NodeKind::External, Rpc, 8, &s[7]),
        ]
    );
    // Spot-check the helper's arithmetic against literal values.
    assert_eq!(got[0].duration_ns, 30 * MS);
    assert_eq!(got[0].end_ns, T0 + 40 * MS);
    assert!(got[2].error);
    assert!(!got[1].error);

    assert_eq!(
        edges_of(&t, false),
        vec![],
        "virtual_nodes: false leaves no virtual edges"
    );
}

#[test]
fn virtual_nodes_off_keeps_service_edges() {
    use CallType::*;
    use SpanKind::*;
    let t = trace(
        9,
        vec![
            sp(1, 0, "frontend", Server, Http, 0, 400),
            sp(2, 1, "frontend", Client, Http, 10, 60),
            sp(3, 2, "backend", Server, Http, 20, 40),
            with_peer(sp(4, 3, "backend", Client, Db, 25, 10), "db"),
        ],
    );
    let s = &t.spans;
    assert_eq!(
        edges_of(&t, false),
        vec![edge(
            "frontend",
            "backend",
            NodeKind::Service,
            Http,
            9,
            &s[1]
        )]
    );
    assert_eq!(
        edges_of(&t, true),
        vec![
            edge("frontend", "backend", NodeKind::Service, Http, 9, &s[1]),
            edge("backend", "db", NodeKind::Database, Db, 9, &s[3]),
        ]
    );
}

#[test]
fn no_edge_within_a_service_between_servers_or_to_a_missing_parent() {
    use CallType::*;
    use SpanKind::*;
    // Client -> server inside one service (virtual nodes off: only service edges count).
    let same = trace(
        10,
        vec![
            sp(1, 0, "a", Server, Http, 0, 400),
            sp(2, 1, "a", Client, Http, 10, 60),
            sp(3, 2, "a", Server, Http, 20, 40),
        ],
    );
    assert_eq!(edges_of(&same, false), vec![]);
    // Same with an in-process (Local) client: nothing even with virtual nodes.
    let same_local = trace(
        11,
        vec![
            sp(1, 0, "a", Server, Http, 0, 400),
            sp(2, 1, "a", Client, Local, 10, 60),
            sp(3, 2, "a", Server, Local, 20, 40),
        ],
    );
    assert_eq!(edges_of(&same_local, true), vec![]);
    // Server whose parent is a server (of another service): no client side, no edge.
    let server_server = trace(
        12,
        vec![
            sp(1, 0, "a", Server, Http, 0, 400),
            sp(2, 1, "b", Server, Http, 20, 40),
            sp(3, 2, "c", Consumer, Mq, 30, 5),
        ],
    );
    assert_eq!(edges_of(&server_server, true), vec![]);
    // Server whose parent is an internal span of another service.
    let internal_parent = trace(
        13,
        vec![
            sp(1, 0, "a", Server, Http, 0, 400),
            sp(2, 1, "a", Internal, Local, 10, 60),
            sp(3, 2, "b", Server, Http, 20, 40),
        ],
    );
    assert_eq!(edges_of(&internal_parent, true), vec![]);
    // Server whose parent never arrived (and a root server).
    let missing = trace(
        14,
        vec![
            sp(3, 0, "a", Server, Http, 0, 400),
            sp(4, 99, "b", Server, Http, 20, 40),
            sp(5, 98, "c", Consumer, Mq, 30, 5),
        ],
    );
    assert_eq!(edges_of(&missing, true), vec![]);
}

/// Documents current behaviour: a service calling itself with a call type is "not
/// answered" (only another service's span links a call), so with virtual nodes on it
/// becomes an edge to a virtual node named after the peer.
#[test]
fn self_call_with_call_type_is_a_virtual_edge() {
    use CallType::*;
    use SpanKind::*;
    let t = trace(
        15,
        vec![
            sp(1, 0, "a", Server, Http, 0, 400),
            with_peer(sp(2, 1, "a", Client, Http, 10, 60), "a.internal"),
            sp(3, 2, "a", Server, Http, 20, 40),
        ],
    );
    let s = &t.spans;
    assert_eq!(
        edges_of(&t, true),
        vec![edge("a", "a.internal", NodeKind::External, Http, 15, &s[1])]
    );
}

#[test]
fn answered_calls_are_not_also_virtual_edges() {
    use CallType::*;
    use SpanKind::*;
    // A db-typed client answered by an instrumented db proxy, and an answered producer.
    let t = trace(
        16,
        vec![
            sp(1, 0, "a", Server, Http, 0, 400),
            with_peer(sp(2, 1, "a", Client, Db, 10, 60), "db-proxy"),
            sp(3, 2, "proxy", Server, Db, 20, 40),
            with_peer(sp(4, 1, "a", Producer, Mq, 100, 5), "topic"),
            sp(5, 4, "worker", Consumer, Mq, 200, 15),
        ],
    );
    let s = &t.spans;
    assert_eq!(
        edges_of(&t, true),
        vec![
            edge("a", "proxy", NodeKind::Service, Db, 16, &s[1]),
            edge("a", "worker", NodeKind::Service, Mq, 16, &s[4]),
        ]
    );
}

#[test]
fn a_repeated_client_span_id_answered_once_is_not_a_virtual_edge() {
    use CallType::*;
    use SpanKind::*;
    // The client span was delivered twice (same id); its answer links the id, so
    // neither copy is an unanswered call.
    let client = with_peer(sp(2, 1, "a", Client, Http, 10, 60), "b-host");
    let t = trace(
        17,
        vec![
            sp(1, 0, "a", Server, Http, 0, 400),
            client.clone(),
            client,
            sp(3, 2, "b", Server, Http, 20, 40),
        ],
    );
    let s = &t.spans;
    assert_eq!(
        edges_of(&t, true),
        vec![edge("a", "b", NodeKind::Service, Http, 17, &s[2])]
    );
}

#[test]
fn scratch_is_reset_between_traces_and_edges_are_appended() {
    use CallType::*;
    use SpanKind::*;
    let answered = trace(
        18,
        vec![
            sp(1, 0, "a", Server, Http, 0, 400),
            with_peer(sp(2, 1, "a", Client, Http, 10, 60), "b-host"),
            sp(3, 2, "b", Server, Http, 20, 40),
        ],
    );
    let unanswered = trace(
        19,
        vec![
            sp(1, 0, "a", Server, Http, 0, 400),
            with_peer(sp(2, 1, "a", Client, Http, 10, 60), "b-host"),
        ],
    );
    let mut index = SpanIndex::default();
    let mut linked = Vec::new();
    let mut out = Vec::new();
    let rules = EdgeRules::new(&ServiceGraphConfig::default());
    index.build(&answered.spans);
    trace_edges(&answered, &index, &rules, &mut linked, &mut out);
    index.build(&unanswered.spans);
    trace_edges(&unanswered, &index, &rules, &mut linked, &mut out);
    assert_eq!(
        out,
        vec![
            edge("a", "b", NodeKind::Service, Http, 18, &answered.spans[1]),
            edge(
                "a",
                "b-host",
                NodeKind::External,
                Http,
                19,
                &unanswered.spans[1]
            ),
        ],
        "the second trace's client at the same position is unanswered"
    );
}

// ---------------------------------------------------------------------------------------
// ServiceGraph: aggregation, flush, merge
// ---------------------------------------------------------------------------------------

/// Buckets le 50 ms, 100 ms, 500 ms, +Inf; http slow above 100 ms, db above 20 ms.
fn config() -> ServiceGraphConfig {
    ServiceGraphConfig {
        interval: HumanDuration::secs(10),
        buckets: vec![
            HumanDuration::millis(50),
            HumanDuration::millis(100),
            HumanDuration::millis(500),
        ],
        slow_thresholds: SlowThresholds {
            http: HumanDuration::millis(100),
            db: HumanDuration::millis(20),
            ..SlowThresholds::default()
        },
        virtual_nodes: true,
        max_series: 100,
        ..ServiceGraphConfig::default()
    }
}

fn relation(source: &str, target: &str, kind: NodeKind, ct: CallType) -> SeriesKey {
    SeriesKey {
        service: Sym::new(source),
        peer: Sym::new(target),
        peer_kind: kind,
        call_type: ct,
        connection: connection_of(kind, ct),
        ..SeriesKey::new(Metric::ServiceRelation)
    }
}

fn exemplar(t: u8, span: &Span, sampled: bool) -> Exemplar {
    Exemplar {
        trace_id: tid(t),
        span_id: span.span_id,
        value_ns: span.duration_ns(),
        timestamp_ns: span.end_ns,
        error: span.is_error(),
        sampled,
    }
}

/// frontend -> backend (http) at `start_ms`, the client taking `dur_ms`.
fn call(t: u8, start_ms: u64, dur_ms: u64, client_error: bool) -> ClosedTrace {
    use CallType::*;
    use SpanKind::*;
    let mut client = sp(2, 1, "frontend", Client, Http, start_ms + 10, dur_ms);
    if client_error {
        client = failed(client);
    }
    trace(
        t,
        vec![
            sp(1, 0, "frontend", Server, Http, start_ms, dur_ms + 100),
            client,
            sp(
                3,
                2,
                "backend",
                Server,
                Http,
                start_ms + 11,
                dur_ms.saturating_sub(2),
            ),
        ],
    )
}

#[test]
fn end_to_end_intervals_counts_slow_buckets_and_exemplars() {
    use CallType::*;
    use SpanKind::*;
    // Interval 1 [T0, T0+10s):
    //   t1: frontend -> backend 100 ms (== http threshold: not slow; bucket le 100 ms),
    //       frontend -> db 30 ms failed (> db threshold 20 ms: slow; bucket le 50 ms).
    //   t2: frontend -> backend 201 ms failed (slow; bucket le 500 ms).
    // Interval 2 [T0+10s, T0+20s):
    //   t3: frontend -> backend 40 ms (bucket le 50 ms).
    let t1 = trace(
        1,
        vec![
            sp(1, 0, "frontend", Server, Http, 0, 400),
            sp(2, 1, "frontend", Client, Http, 10, 100),
            sp(3, 2, "backend", Server, Http, 20, 80),
            failed(with_peer(sp(4, 1, "frontend", Client, Db, 200, 30), "db")),
        ],
    );
    let t2 = call(2, 1000, 201, true);
    let t3 = call(3, 12_000, 40, false);

    let mut sg = ServiceGraph::new(config());
    assert_eq!(sg.buckets().len(), 4);
    let mut merger = sg.merger(1, false);
    sg.add_trace(&t1, true);
    sg.add_trace(&t2, true);
    sg.add_trace(&t3, true);

    let mut parts: Vec<Partial> = Vec::new();
    sg.flush(END1 - 2, &mut parts);
    assert_eq!(
        parts,
        vec![],
        "interval 1's last instant is not yet covered"
    );
    sg.flush(END1 - 1, &mut parts);
    assert_eq!(
        parts.iter().map(|p| p.start_ns).collect::<Vec<_>>(),
        vec![T0],
        "only interval 1 is complete at its last instant"
    );

    assert_eq!(merger.on_watermark(0, END1 - 2), vec![]);
    for p in parts.drain(..) {
        merger.add(p);
    }
    let closed = merger.on_watermark(0, END1 - 1);

    let http = SeriesAgg {
        requests: 2,
        errors: 1,
        slow: 1,
        sum_ns: 301 * MS,
        min_ns: 100 * MS,
        max_ns: 201 * MS,
        counts: vec![0, 1, 1, 0],
        exemplars: vec![
            None,
            Some(exemplar(1, &t1.spans[1], true)),
            Some(exemplar(2, &t2.spans[1], true)),
            None,
        ],
    };
    let db = SeriesAgg {
        requests: 1,
        errors: 1,
        slow: 1,
        sum_ns: 30 * MS,
        min_ns: 30 * MS,
        max_ns: 30 * MS,
        counts: vec![1, 0, 0, 0],
        exemplars: vec![Some(exemplar(1, &t1.spans[3], true)), None, None, None],
    };
    assert_eq!(
        closed,
        vec![ClosedInterval {
            start_ns: T0,
            end_ns: END1,
            series: vec![
                (
                    relation("frontend", "backend", NodeKind::Service, Http),
                    http
                ),
                (relation("frontend", "db", NodeKind::Database, Db), db),
            ],
            folded_series: 0,
        }]
    );
    // Literal check of one exemplar (not through the helper).
    let e = closed[0].series[0].1.exemplars[2].unwrap();
    assert_eq!(
        (e.trace_id, e.span_id, e.value_ns, e.timestamp_ns, e.error),
        (tid(2), sid(2), 201 * MS, T0 + 1211 * MS, true)
    );

    sg.flush(WATERMARK_END, &mut parts);
    assert_eq!(parts.len(), 1);
    assert_eq!(parts[0].start_ns, END1);
    for p in parts.drain(..) {
        merger.add(p);
    }
    let closed = merger.on_watermark(0, WATERMARK_END);
    assert_eq!(
        closed,
        vec![ClosedInterval {
            start_ns: END1,
            end_ns: END1 + 10 * SEC,
            series: vec![(
                relation("frontend", "backend", NodeKind::Service, Http),
                SeriesAgg {
                    requests: 1,
                    errors: 0,
                    slow: 0,
                    sum_ns: 40 * MS,
                    min_ns: 40 * MS,
                    max_ns: 40 * MS,
                    counts: vec![1, 0, 0, 0],
                    exemplars: vec![Some(exemplar(3, &t3.spans[1], true)), None, None, None],
                },
            )],
            folded_series: 0,
        }]
    );
    assert_eq!(merger.folded_series, 0);
    assert_eq!(merger.late_observations, 0);
}

#[test]
fn slow_is_strictly_above_the_call_types_threshold() {
    use CallType::*;
    use SpanKind::*;
    let at_threshold = call(1, 0, 100, false);
    let mut just_above = call(2, 1000, 100, false);
    just_above.spans[1].end_ns += 1;
    // 30 ms db call: slow for db (20 ms), would not be for http (100 ms).
    let db = trace(
        3,
        vec![
            sp(1, 0, "frontend", Server, Http, 2000, 100),
            with_peer(sp(2, 1, "frontend", Client, Db, 2010, 30), "db"),
        ],
    );
    // 21 ms http call: not slow for http, would be for db.
    let fast_http = call(4, 3000, 21, false);

    let mut sg = ServiceGraph::new(config());
    let mut merger = sg.merger(1, false);
    for t in [&at_threshold, &just_above, &db, &fast_http] {
        sg.add_trace(t, true);
    }
    let mut parts = Vec::new();
    sg.flush(WATERMARK_END, &mut parts);
    for p in parts {
        merger.add(p);
    }
    let closed = merger.on_watermark(0, WATERMARK_END);
    assert_eq!(closed.len(), 1);
    let got: Vec<(Sym, u64, u64)> = closed[0]
        .series
        .iter()
        .map(|(k, a)| (k.peer, a.requests, a.slow))
        .collect();
    assert_eq!(
        got,
        vec![(Sym::new("backend"), 3, 1), (Sym::new("db"), 1, 1)],
        "only the 100 ms + 1 ns http call and the 30 ms db call are slow"
    );
}

#[test]
fn two_shards_close_an_interval_only_after_both_watermarks_pass() {
    let mut shard0 = ServiceGraph::new(config());
    let mut shard1 = ServiceGraph::new(config());
    let mut merger = shard0.merger(2, false);
    let t1 = call(1, 0, 30, false);
    let t2 = call(2, 5000, 300, true);
    shard0.add_trace(&t1, true);
    shard1.add_trace(&t2, true);

    let mut p0 = Vec::new();
    shard0.flush(END1 - 1, &mut p0);
    assert_eq!(p0.len(), 1);
    for p in p0 {
        merger.add(p);
    }
    assert_eq!(
        merger.on_watermark(0, END1 - 1),
        vec![],
        "shard 1 has not passed the interval yet"
    );
    assert_eq!(
        merger.on_watermark(0, WATERMARK_END),
        vec![],
        "shard 0 alone never closes it"
    );

    let mut p1 = Vec::new();
    shard1.flush(END1 - 1, &mut p1);
    assert_eq!(p1.len(), 1);
    for p in p1 {
        merger.add(p);
    }
    assert_eq!(merger.on_watermark(1, END1 - 2), vec![]);
    let closed = merger.on_watermark(1, END1 - 1);
    assert_eq!(
        closed,
        vec![ClosedInterval {
            start_ns: T0,
            end_ns: END1,
            series: vec![(
                relation("frontend", "backend", NodeKind::Service, CallType::Http),
                SeriesAgg {
                    requests: 2,
                    errors: 1,
                    slow: 1,
                    sum_ns: 330 * MS,
                    min_ns: 30 * MS,
                    max_ns: 300 * MS,
                    counts: vec![1, 0, 1, 0],
                    exemplars: vec![
                        Some(exemplar(1, &t1.spans[1], true)),
                        None,
                        Some(exemplar(2, &t2.spans[1], true)),
                        None,
                    ],
                },
            )],
            folded_series: 0,
        }]
    );
}

#[test]
fn max_series_folds_the_quietest_edges_into_overflow() {
    use CallType::*;
    use SpanKind::*;
    let mut cfg = config();
    cfg.max_series = 1;
    let mut sg = ServiceGraph::new(cfg);
    let mut merger = sg.merger(1, false);
    let t1 = call(1, 0, 30, false);
    let t2 = call(2, 1000, 60, false);
    let t3 = trace(
        3,
        vec![
            sp(1, 0, "frontend", Server, Http, 2000, 100),
            failed(with_peer(sp(2, 1, "frontend", Client, Db, 2010, 30), "db")),
        ],
    );
    for t in [&t1, &t2, &t3] {
        sg.add_trace(t, true);
    }
    let mut parts = Vec::new();
    sg.flush(END1 - 1, &mut parts);
    for p in parts {
        merger.add(p);
    }
    let closed = merger.on_watermark(0, END1 - 1);
    assert_eq!(closed.len(), 1);
    let ci = &closed[0];
    assert_eq!(ci.folded_series, 1);
    assert_eq!(merger.folded_series, 1);
    let got: Vec<(SeriesKey, u64, u64, u64)> = ci
        .series
        .iter()
        .map(|(k, a)| (*k, a.requests, a.errors, a.sum_ns))
        .collect();
    // Sorted by key: "__overflow__" < "frontend".
    assert_eq!(
        got,
        vec![
            (SeriesKey::overflow(Metric::ServiceRelation), 1, 1, 30 * MS),
            (
                relation("frontend", "backend", NodeKind::Service, Http),
                2,
                0,
                90 * MS
            ),
        ]
    );
    assert_eq!(ci.series[0].1.counts, vec![1, 0, 0, 0]);
    assert_eq!(
        ci.series[0].1.exemplars[0],
        Some(exemplar(3, &t3.spans[1], true)),
        "the folded edge's exemplar survives in the overflow series"
    );
}

#[test]
fn keep_sampled_only_drops_exemplars_of_unsampled_traces() {
    let mut sg = ServiceGraph::new(config());
    let mut keep_sampled = sg.merger(1, true);
    let mut keep_all = sg.merger(1, false);
    // Bucket le 50 ms: only an unsampled trace. Bucket le 500 ms: an unsampled (slower,
    // failed) and a sampled trace.
    let t1 = call(1, 0, 30, false);
    let t2 = call(2, 1000, 400, true);
    let t3 = call(3, 2000, 200, false);
    sg.add_trace(&t1, false);
    sg.add_trace(&t2, false);
    sg.add_trace(&t3, true);
    let mut parts = Vec::new();
    sg.flush(END1 - 1, &mut parts);
    for p in parts {
        keep_sampled.add(p.clone());
        keep_all.add(p);
    }

    let closed = keep_sampled.on_watermark(0, END1 - 1);
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0].series.len(), 1);
    let agg = &closed[0].series[0].1;
    assert_eq!(
        (agg.requests, agg.errors),
        (3, 1),
        "counts keep every trace"
    );
    assert_eq!(agg.counts, vec![1, 0, 2, 0]);
    assert_eq!(
        agg.exemplars,
        vec![None, None, Some(exemplar(3, &t3.spans[1], true)), None]
    );

    let closed = keep_all.on_watermark(0, END1 - 1);
    let agg = &closed[0].series[0].1;
    assert_eq!(
        agg.exemplars,
        vec![
            Some(exemplar(1, &t1.spans[1], false)),
            None,
            Some(exemplar(3, &t3.spans[1], true)),
            None,
        ],
        "without the option the unsampled exemplar stays; sampled still wins its bucket"
    );
}

#[test]
fn traces_for_a_flushed_interval_are_not_handed_over_again() {
    let mut sg = ServiceGraph::new(config());
    let mut parts = Vec::new();
    sg.add_trace(&call(1, 0, 30, false), true);
    sg.flush(END1 - 1, &mut parts);
    assert_eq!(parts.len(), 1);
    parts.clear();
    // Late: its interval was already handed over.
    sg.add_trace(&call(2, 500, 30, false), true);
    // On time: next interval.
    sg.add_trace(&call(3, 10_000, 30, false), true);
    sg.flush(WATERMARK_END, &mut parts);
    assert_eq!(
        parts
            .iter()
            .map(|p| (p.start_ns, p.series.len(), p.series[0].1.requests))
            .collect::<Vec<_>>(),
        vec![(END1, 1, 1)]
    );
}

// ---------------------------------------------------------------------------------------
// semantics: tempo (Grafana Tempo's metrics-generator, the Collector's servicegraph
// connector)
// ---------------------------------------------------------------------------------------

#[test]
fn tempo_a_root_server_span_is_called_by_the_virtual_client() {
    use CallType::*;
    use SpanKind::*;
    let root = failed(sp(1, 0, "frontend", Server, Http, 0, 400));
    let child = sp(2, 1, "frontend", Internal, Local, 10, 20);
    let t = trace(1, vec![root.clone(), child]);
    assert_eq!(
        edges_by(&t, &tempo()),
        vec![from_virtual(edge(
            "user",
            "frontend",
            NodeKind::Service,
            Http,
            1,
            &root
        ))]
    );
    assert!(
        edges_of(&t, true).is_empty(),
        "spanflow's rules have no such edge"
    );
    let renamed = ServiceGraphConfig {
        virtual_client: "browser".into(),
        ..tempo()
    };
    let e = edges_by(&t, &renamed);
    assert_eq!(e[0].source.as_str(), "browser");
    assert!(e[0].error, "the failed root span is a failed request");
}

#[test]
fn tempo_a_server_span_under_a_missing_parent_has_no_virtual_caller() {
    use CallType::*;
    use SpanKind::*;
    // Parent 9 is not in the trace: not a root, so not called by the virtual client.
    let orphan = sp(1, 9, "orders", Server, Http, 0, 50);
    let t = trace(2, vec![orphan]);
    assert!(edges_by(&t, &tempo()).is_empty());
}

#[test]
fn tempo_a_client_with_a_peer_and_no_server_span_calls_a_virtual_node() {
    use CallType::*;
    use SpanKind::*;
    let root = sp(1, 0, "checkout", Server, Http, 0, 400);
    let call = failed(with_peer(
        sp(2, 1, "checkout", Client, Http, 10, 90),
        "payments-api",
    ));
    let t = trace(3, vec![root.clone(), call.clone()]);
    assert_eq!(
        edges_by(&t, &tempo()),
        vec![
            from_virtual(edge("user", "checkout", NodeKind::Service, Http, 3, &root)),
            edge(
                "checkout",
                "payments-api",
                NodeKind::External,
                Http,
                3,
                &call
            ),
        ]
    );
    assert!(edges_by(&t, &tempo())[1].error);
}

#[test]
fn tempo_a_consumer_without_a_producer_is_fed_by_its_messaging_system() {
    use CallType::*;
    use SpanKind::*;
    // The edge queue -> consumer, measured on consumer span `s` of trace `t`.
    let fed =
        |t: u8, s: &Span| from_virtual(edge("invoices", "billing", NodeKind::Service, Mq, t, s));
    // The consumer's trace starts at the consumer: the producer was not instrumented.
    let consume = with_peer(sp(1, 0, "billing", Consumer, Mq, 0, 30), "invoices");
    let t = trace(4, vec![consume.clone()]);
    assert_eq!(edges_by(&t, &tempo()), vec![fed(4, &consume)]);
    // A consumer under a span of its own service, not a producer: fed the same way.
    let poll = sp(1, 0, "billing", Internal, Local, 0, 100);
    let inner = with_peer(sp(2, 1, "billing", Consumer, Mq, 10, 30), "invoices");
    let t = trace(5, vec![poll, inner.clone()]);
    assert_eq!(edges_by(&t, &tempo()), vec![fed(5, &inner)]);
    // With its producer in the trace it is an ordinary edge between the services.
    let root = sp(1, 0, "orders", Server, Http, 0, 400);
    let produce = with_peer(sp(2, 1, "orders", Producer, Mq, 10, 5), "invoices");
    let consume = with_peer(sp(3, 2, "billing", Consumer, Mq, 50, 30), "invoices");
    let t = trace(6, vec![root.clone(), produce, consume.clone()]);
    assert_eq!(
        edges_by(&t, &tempo()),
        vec![
            from_virtual(edge("user", "orders", NodeKind::Service, Http, 6, &root)),
            edge("orders", "billing", NodeKind::Service, Mq, 6, &consume),
        ]
    );
}

#[test]
fn tempo_databases_are_named_by_the_first_attribute_present() {
    use crate::model::AttrValue::{Int, Str};
    use CallType::*;
    use SpanKind::*;
    let root = sp(1, 0, "orders", Server, Http, 0, 400);
    let db = |attrs: &[(&str, crate::model::AttrValue<'_>)]| {
        let s = failed(with_peer(
            sp(2, 1, "orders", Client, Db, 10, 250),
            "orders-db",
        ));
        with_attrs(s, attrs)
    };
    let name = |client: Span, config: &ServiceGraphConfig| -> String {
        let t = trace(7, vec![root.clone(), client]);
        let e = edges_by(&t, config);
        let d = e
            .iter()
            .find(|e| e.call_type == Db)
            .expect("a database edge");
        assert_eq!(d.target_kind, NodeKind::Database);
        assert!(d.error, "the failed query is a failed request");
        d.target.as_str().to_owned()
    };
    let all = [
        ("db.system.name", Str("postgresql")),
        ("server.address", Str("10.0.0.7")),
        ("server.port", Int(5432)),
        ("peer.service", Str("orders-db")),
        ("db.name", Str("orders_old")),
        ("db.namespace", Str("orders")),
    ];
    assert_eq!(name(db(&all), &tempo()), "orders");
    assert_eq!(name(db(&all[..5]), &tempo()), "orders_old");
    assert_eq!(name(db(&all[..4]), &tempo()), "orders-db");
    assert_eq!(name(db(&all[..3]), &tempo()), "10.0.0.7:5432");
    assert_eq!(name(db(&all[..2]), &tempo()), "10.0.0.7");
    assert_eq!(name(db(&all[..1]), &tempo()), "postgresql");
    assert_eq!(name(db(&[("db.system", Str("mysql"))]), &tempo()), "mysql");
    // The precedence is configurable.
    let system_first = ServiceGraphConfig {
        database_name_attributes: vec!["db.system.name".into(), "db.namespace".into()],
        ..tempo()
    };
    assert_eq!(name(db(&all), &system_first), "postgresql");
    // spanflow's rules name it by its peer.
    assert_eq!(name(db(&all), &ServiceGraphConfig::default()), "orders-db");
}

#[test]
fn edges_carry_tempos_connection_type() {
    use CallType::*;
    use SpanKind::*;
    // user -> shop (virtual client), shop -> cart (direct), shop -> orders-db (database),
    // shop -> sessions (cache: database), shop -> billing (producer/consumer), shop ->
    // payments-api (uninstrumented: virtual node), and a consumer fed by `invoices`.
    let spans = vec![
        sp(1, 0, "shop", Server, Http, 0, 900),
        sp(2, 1, "shop", Client, Http, 10, 50),
        sp(3, 2, "cart", Server, Http, 20, 30),
        with_peer(sp(4, 1, "shop", Client, Db, 100, 20), "orders-db"),
        with_peer(sp(5, 1, "shop", Client, Cache, 130, 2), "sessions"),
        with_peer(sp(6, 1, "shop", Producer, Mq, 140, 3), "orders-topic"),
        sp(7, 6, "billing", Consumer, Mq, 400, 30),
        with_peer(sp(8, 1, "shop", Client, Http, 500, 80), "payments-api"),
    ];
    let t = trace(40, spans);
    let got: Vec<(&str, &str, ConnectionType)> = edges_by(&t, &tempo())
        .iter()
        .map(|e| (e.source.as_str(), e.target.as_str(), e.connection))
        .collect();
    use ConnectionType::*;
    assert_eq!(
        got,
        vec![
            ("user", "shop", VirtualNode),
            ("shop", "cart", Direct),
            ("shop", "billing", MessagingSystem),
            ("shop", "orders-db", Database),
            ("shop", "sessions", Database),
            ("shop", "payments-api", VirtualNode),
        ]
    );
    let fed = with_peer(sp(1, 0, "billing", Consumer, Mq, 0, 30), "invoices");
    let t = trace(41, vec![fed]);
    assert_eq!(edges_by(&t, &tempo())[0].connection, VirtualNode);
    // The label is the series' too: the same pair over two connections is two series.
    let key = |c| SeriesKey {
        connection: c,
        ..relation("shop", "billing", NodeKind::Service, Mq)
    };
    assert_ne!(key(MessagingSystem).words(), key(VirtualNode).words());
    assert_eq!(Database.as_str(), "database");
    assert_eq!(Direct.as_str(), "");
}
