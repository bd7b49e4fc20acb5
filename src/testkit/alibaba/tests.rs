use std::collections::{BTreeMap, HashMap};
use std::io::Write;

use spanflow_operators::{AttrValue, CallType, Span, SpanId, SpanKind, Sym};

use super::*;
use crate::formats::{Decoded, RecordMeta, SpanDecoder};

const H2021: &str = "traceid,timestamp,rpcid,um,rpctype,dm,interface,rt\n";
const H2022: &str =
    "timestamp,traceid,service,rpc_id,rpctype,um,uminstanceid,interface,dm,dminstanceid,rt\n";

/// Converts `csv` and decodes every record; fails on any dead letter.
fn run(csv: &str, format: InputFormat) -> (Vec<Span>, ConvertStats) {
    let (records, stats) = convert(csv.as_bytes(), format, 3).unwrap();
    (decode(&records, format), stats)
}

fn decode(records: &[GeneratedRecord], format: InputFormat) -> Vec<Span> {
    let mut decoder = SpanDecoder::new();
    let mut out = Decoded::default();
    for (i, r) in records.iter().enumerate() {
        let meta = RecordMeta {
            topic: None,
            source: Sym::new("alibaba"),
            split: 0,
            offset: i as u64,
        };
        decoder.decode(format, &r.payload, &meta, &mut out);
    }
    assert!(
        out.dead_letters.is_empty(),
        "dead letters: {:?}",
        out.dead_letters
    );
    out.spans
}

fn attr(s: &Span, key: &str) -> Option<String> {
    s.attrs.get(key).map(|v| match v {
        AttrValue::Str(s) => s.to_owned(),
        other => format!("{other:?}"),
    })
}

/// The span of call `rpcid` with `kind`.
fn find<'a>(spans: &'a [Span], rpcid: &str, kind: SpanKind) -> &'a Span {
    let found: Vec<&Span> = spans
        .iter()
        .filter(|s| s.kind == kind && attr(s, "alibaba.rpc_id").as_deref() == Some(rpcid))
        .collect();
    assert_eq!(found.len(), 1, "{rpcid} {kind:?}: {found:#?}");
    found[0]
}

fn by_id(spans: &[Span]) -> HashMap<SpanId, &Span> {
    spans.iter().map(|s| (s.span_id, s)).collect()
}

const MS: u64 = 1_000_000;

const SHOP_2021: &str = "\
0b01,100,0,,http,gw,/home,-50
0b01,101,0.1,gw,rpc,orders,getOrder,20
0b01,101,0.1,gw,rpc,orders,getOrder,-18
0b01,102,0.1.1,orders,db,ordersdb,,3
0b01,102,0.1.2,orders,mc,cache1,,0
0b01,103,0.1.3,orders,mq,billing,,2
0b01,106,0.1.3.1,billing,db,billingdb,,1
";

#[test]
fn layout_2021_call_types_kinds_and_parents() {
    let (spans, stats) = run(&format!("{H2021}{SHOP_2021}"), InputFormat::OtlpProto);
    assert_eq!(stats.layout, Some(CsvLayout::Y2021));
    assert_eq!(stats.rows, 7);
    assert_eq!(stats.calls, 6);
    assert_eq!(stats.duplicate_rows, 1);
    assert_eq!(stats.skipped_rows, 0);
    assert_eq!(stats.traces, 1);
    assert_eq!(spans.len(), 8);
    assert_eq!(stats.spans, 8);

    // The traceid is hex: kept readable, left-padded.
    for s in &spans {
        assert_eq!(s.trace_id.to_hex(), format!("{:0>32}", "0b01"));
    }
    // Entry call from nobody: only the server span, the root.
    let root = find(&spans, "0", SpanKind::Server);
    assert!(root.is_root());
    assert_eq!(root.service.as_str(), "gw");
    assert_eq!(root.call_type, CallType::Http);
    assert_eq!(attr(root, "http.route").as_deref(), Some("/home"));
    assert_eq!(root.start_ns, EPOCH_UNIX_NS + 100 * MS);
    assert_eq!(root.duration_ns(), 50 * MS);

    // rpc: client in gw under gw's server span, server in orders under the client;
    // the two records are one call: client = caller's rt, server = callee's, centered.
    let client = find(&spans, "0.1", SpanKind::Client);
    let server = find(&spans, "0.1", SpanKind::Server);
    assert_eq!(client.service.as_str(), "gw");
    assert_eq!(client.parent_span_id, root.span_id);
    assert_eq!(client.call_type, CallType::Rpc);
    assert_eq!(client.peer.as_str(), "orders");
    assert_eq!(attr(client, "rpc.system").as_deref(), Some("alibaba"));
    assert_eq!(attr(client, "rpc.method").as_deref(), Some("getOrder"));
    assert_eq!(server.service.as_str(), "orders");
    assert_eq!(server.parent_span_id, client.span_id);
    assert_eq!(server.call_type, CallType::Rpc);
    assert_eq!(client.duration_ns(), 20 * MS);
    assert_eq!(server.duration_ns(), 18 * MS);
    assert_eq!(server.start_ns, client.start_ns + MS);

    let db = find(&spans, "0.1.1", SpanKind::Client);
    assert_eq!(db.call_type, CallType::Db);
    assert_eq!(db.db_system.as_str(), "mysql");
    assert_eq!(db.peer.as_str(), "ordersdb");
    assert_eq!(db.name.as_str(), "mysql");
    assert_eq!(db.parent_span_id, server.span_id);

    let mc = find(&spans, "0.1.2", SpanKind::Client);
    assert_eq!(mc.call_type, CallType::Cache);
    assert_eq!(mc.db_system.as_str(), "memcached");
    assert_eq!(mc.peer.as_str(), "cache1");
    assert_eq!(mc.duration_ns(), 1_000, "rt 0 lasts 1 µs");

    let producer = find(&spans, "0.1.3", SpanKind::Producer);
    let consumer = find(&spans, "0.1.3", SpanKind::Consumer);
    assert_eq!(producer.service.as_str(), "orders");
    assert_eq!(producer.call_type, CallType::Mq);
    assert_eq!(producer.messaging_destination.as_str(), "billing");
    assert_eq!(producer.parent_span_id, server.span_id);
    assert_eq!(consumer.service.as_str(), "billing");
    assert_eq!(consumer.call_type, CallType::Mq);
    assert_eq!(consumer.parent_span_id, producer.span_id);
    // Work the consumer does hangs under the consumer span.
    let billing_db = find(&spans, "0.1.3.1", SpanKind::Client);
    assert_eq!(billing_db.parent_span_id, consumer.span_id);

    assert_eq!(
        stats.spans_by_call_type,
        BTreeMap::from([
            ("http".into(), 1),
            ("rpc".into(), 2),
            ("db".into(), 2),
            ("cache".into(), 1),
            ("mq".into(), 2),
        ])
    );
    assert_eq!(stats.links.get("parent_call"), Some(&5));
    assert_eq!(stats.links.get("root"), Some(&1));
}

const SHOP_2022: &str = "\
1000,T_42,S_1,0,http,USER,USER,home,MS_1,MS_1_POD_1,5.0
1001,T_42,S_1,0.1,rpc,MS_1,MS_1_POD_1,get,MS_2,MS_2_POD_3,2.0
1001,T_42,S_1,0.1,rpc,MS_1,MS_1_POD_1,get,UNKNOWN,UNAVAILABLE,2.0
1001,T_42,S_1,0.1,rpc,UNKNOWN,UNAVAILABLE,get,MS_2,MS_2_POD_3,1.0
1002,T_42,S_1,0.1.1,mc,MS_2,MS_2_POD_3,get,MS_9,MS_9_POD_0,0.0
1003,T_42,S_1,0.2,UNKNOWN,MS_1,MS_1_POD_1,x,MS_3,?,1.0
";

#[test]
fn layout_2022_instances_and_merges() {
    let (spans, stats) = run(&format!("{H2022}{SHOP_2022}"), InputFormat::OtlpProto);
    assert_eq!(stats.layout, Some(CsvLayout::Y2022));
    assert_eq!(stats.rows, 6);
    assert_eq!(stats.calls, 3);
    assert_eq!(stats.merged_rows, 2);
    assert_eq!(
        stats.merged_by_reason,
        BTreeMap::from([("callee_unknown".into(), 1), ("caller_unknown".into(), 1)])
    );
    assert_eq!(
        stats.skipped_by_reason,
        BTreeMap::from([("unknown_rpctype".into(), 1)])
    );
    assert_eq!(stats.first_skipped_line.get("unknown_rpctype"), Some(&7));
    assert_eq!(
        stats.calls_without_caller,
        BTreeMap::from([("user".into(), 1)])
    );
    assert_eq!(spans.len(), 4);
    for s in &spans {
        assert_eq!(s.trace_id.to_hex(), format!("{:0>32}", "42"));
    }
    let root = find(&spans, "0", SpanKind::Server);
    assert!(root.is_root());
    assert_eq!(root.instance.as_str(), "MS_1_POD_1");
    let client = find(&spans, "0.1", SpanKind::Client);
    let server = find(&spans, "0.1", SpanKind::Server);
    assert_eq!(client.instance.as_str(), "MS_1_POD_1");
    assert_eq!(server.instance.as_str(), "MS_2_POD_3");
    assert_eq!(client.parent_span_id, root.span_id);
    assert_eq!(server.parent_span_id, client.span_id);
    // The callee's record (rt 1 ms) merged in: the server span is the shorter one.
    assert_eq!(client.duration_ns(), 2 * MS);
    assert_eq!(server.duration_ns(), MS);
    let mc = find(&spans, "0.1.1", SpanKind::Client);
    assert_eq!(mc.parent_span_id, server.span_id);
    assert_eq!(mc.call_type, CallType::Cache);
    assert_eq!(mc.name.as_str(), "get");
}

#[test]
fn bad_rows_are_skipped_with_reasons() {
    let csv = format!(
        "{H2021}\
         ,1,0,a,http,b,i,1\n\
         t,1,,a,http,b,i,1\n\
         t,1,0.x,a,http,b,i,1\n\
         t,1,0..1,a,http,b,i,1\n\
         t,abc,0,a,http,b,i,1\n\
         t,-5,0,a,http,b,i,1\n\
         t,1,0,a,http,b,i,\n\
         t,1,0,a,http,b,i,NaN\n\
         t,1,0,a,local,b,i,1\n\
         t,1,0,a,http,(?),i,1\n\
         t,1,0,a,http,,i,1\n\
         t,1,0,UNKNOWN,db,b,,1\n\
         t,1,0,?,mc,b,,1\n\
         t,1,0,a,http\n\
         t,1,0.1,a,rpc,b,i,1\n"
    );
    let (spans, stats) = run(&csv, InputFormat::OtlpProto);
    let expected: BTreeMap<String, u64> = [
        ("missing_traceid", 1),
        ("missing_rpcid", 1),
        ("invalid_rpcid", 2),
        ("invalid_timestamp", 2),
        ("invalid_rt", 2),
        ("unknown_rpctype", 1),
        ("unknown_dm", 2),
        ("unknown_um", 2),
        ("malformed_row", 1),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    assert_eq!(stats.skipped_by_reason, expected);
    assert_eq!(stats.skipped_rows, 14);
    assert_eq!(stats.first_skipped_line.get("missing_traceid"), Some(&2));
    assert_eq!(stats.first_skipped_line.get("malformed_row"), Some(&15));
    assert_eq!(stats.calls, 1);
    assert_eq!(spans.len(), 2);
    assert_eq!(
        stats.rows,
        stats.calls + stats.duplicate_rows + stats.merged_rows + stats.skipped_rows
    );
}

#[test]
fn non_utf8_and_empty_inputs() {
    let mut csv = H2021.as_bytes().to_vec();
    csv.extend_from_slice(b"t,1,0,a\xff,http,b,i,1\nt,1,0,a,http,b,i,1\n");
    let (_, stats) = convert(csv.as_slice(), InputFormat::OtlpProto, 10).unwrap();
    assert_eq!(stats.skipped_by_reason.get("invalid_utf8"), Some(&1));
    assert_eq!(stats.calls, 1);

    // A header and nothing else: nothing to do, not an error.
    let (records, stats) = convert(H2022.as_bytes(), InputFormat::OtlpProto, 10).unwrap();
    assert!(records.is_empty());
    assert_eq!(stats.rows, 0);

    for bad in ["", "a,b,c\n1,2,3\n", "traceid,timestamp,rpcid\n"] {
        let e = convert(bad.as_bytes(), InputFormat::OtlpProto, 10).unwrap_err();
        assert!(matches!(e, AlibabaError::UnknownHeader(_)), "{bad:?}: {e}");
        assert!(e.to_string().contains("rpc_id"), "{e}");
    }
    assert!(matches!(
        convert(H2021.as_bytes(), InputFormat::OtlpProto, 0),
        Err(AlibabaError::InvalidSpansPerRecord)
    ));
}

#[test]
fn parents_through_missing_levels_other_services_and_dangling() {
    let csv = format!(
        "{H2021}\
         t,100,0,,http,gw,/,10\n\
         t,101,0.1.1,gw,rpc,a,m,5\n\
         t,101,0.1.2,zz,rpc,b,m,5\n\
         t,102,0.1.1.1,a,userDefined,a,,3\n\
         t,102,0.1.1.1.1,a,mc,c,,1\n\
         u,100,0.3.1,x,rpc,y,m,1\n\
         u,100,0.3.2,x,rpc,y,n,1\n\
         u,100,0.4.1,(?),http,y,m,1\n"
    );
    let (spans, stats) = run(&csv, InputFormat::OtlpProto);
    let root = find(&spans, "0", SpanKind::Server);
    // 0.1 is missing: gw's call hangs under the root, two levels up.
    let c11 = find(&spans, "0.1.1", SpanKind::Client);
    assert_eq!(c11.parent_span_id, root.span_id);
    // `zz` never received a call: under the nearest ancestor's span, in another
    // service, so the trace stays one tree.
    let c12 = find(&spans, "0.1.2", SpanKind::Client);
    assert_eq!(c12.parent_span_id, root.span_id);
    // userDefined: an internal span in `a`, the parent of what `a` does inside it.
    let internal = find(&spans, "0.1.1.1", SpanKind::Internal);
    assert_eq!(internal.call_type, CallType::Local);
    assert_eq!(internal.service.as_str(), "a");
    assert_eq!(
        internal.parent_span_id,
        find(&spans, "0.1.1", SpanKind::Server).span_id
    );
    let mc = find(&spans, "0.1.1.1.1", SpanKind::Client);
    assert_eq!(mc.parent_span_id, internal.span_id);
    // No ancestor at all: siblings share the id of their missing parent call, which
    // no span has.
    let ids = by_id(&spans);
    let u1 = find(&spans, "0.3.1", SpanKind::Client);
    let u2 = find(&spans, "0.3.2", SpanKind::Client);
    assert!(!u1.is_root());
    assert_eq!(u1.parent_span_id, u2.parent_span_id);
    assert!(!ids.contains_key(&u1.parent_span_id));
    // A callee-only call without ancestors dangles under its own missing parent.
    let u4 = find(&spans, "0.4.1", SpanKind::Server);
    assert!(!u4.is_root());
    assert_ne!(u4.parent_span_id, u1.parent_span_id);
    assert_eq!(
        stats.links,
        [
            ("root", 1),
            ("ancestor_call", 1),
            ("other_service", 1),
            ("parent_call", 2),
            ("missing_parent", 3),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect::<BTreeMap<_, _>>()
    );
    // Every span id is unique.
    assert_eq!(ids.len(), spans.len());
}

#[test]
fn unknown_caller_hangs_under_the_ancestor_and_children_shift_into_parents() {
    let csv = format!(
        "{H2021}\
         t,100,0,,http,gw,/,10\n\
         t,99,0.1,(?),http,a,/a,4\n\
         t,100,0.1.1,a,rpc,b,m,2\n"
    );
    let (spans, stats) = run(&csv, InputFormat::OtlpProto);
    let root = find(&spans, "0", SpanKind::Server);
    let a = find(&spans, "0.1", SpanKind::Server);
    // The CSV does not say who called `a`: no client span, so no gw -> a edge, but the
    // span still belongs to the tree.
    assert_eq!(a.parent_span_id, root.span_id);
    assert!(
        spans
            .iter()
            .all(|s| s.kind != SpanKind::Client
                || attr(s, "alibaba.rpc_id").as_deref() != Some("0.1"))
    );
    // It started 1 ms before its parent (clocks of two hosts): moved to the parent's
    // start.
    assert_eq!(a.start_ns, root.start_ns);
    assert_eq!(a.duration_ns(), 4 * MS);
    assert_eq!(stats.shifted_into_parent, 1);
    assert_eq!(stats.links.get("unknown_caller"), Some(&1));
    let c = find(&spans, "0.1.1", SpanKind::Client);
    assert_eq!(c.parent_span_id, a.span_id);
}

#[test]
fn hashed_names_are_shortened() {
    let svc_a = "95a6f7f8345e2eca31ee74ddc19d547e7fc0f5c8e65772d7b08a68eb5214dc44";
    let svc_b = "B79B88DF9430EC384ED84C4E800B13952BA3B9EB71A96C7DD8E78F6954DA4A3F";
    let iface = "6184be0ba70baacff49730440a616c7521abb9d09bf4d663af75505b2f91fa39";
    let trace = "0b01271815919582432199000ef9a6";
    let csv = format!("{H2021}{trace},1,0.1,{svc_a},rpc,{svc_b},{iface},1\n");
    let (spans, _) = run(&csv, InputFormat::OtlpProto);
    let client = find(&spans, "0.1", SpanKind::Client);
    let server = find(&spans, "0.1", SpanKind::Server);
    assert_eq!(client.service.as_str(), "svc-95a6f7f8");
    assert_eq!(client.peer.as_str(), "svc-b79b88df");
    assert_eq!(server.service.as_str(), "svc-b79b88df");
    assert_eq!(server.name.as_str(), "op-6184be0b");
    assert_eq!(client.trace_id.to_hex(), format!("00{trace}"));
    // Not hex: hashed, deterministic, never zero.
    assert_eq!(build::trace_id("T_x"), build::trace_id("T_x"));
    assert_ne!(build::trace_id("T_x"), build::trace_id("T_y"));
    assert_ne!(build::trace_id("0000"), [0; 16]);
    assert_ne!(build::trace_id(""), [0; 16]);
}

#[test]
fn json_and_proto_carry_the_same_spans() {
    let csv = format!("{H2021}{SHOP_2021}");
    let (mut proto, _) = run(&csv, InputFormat::OtlpProto);
    let (mut json, _) = run(&csv, InputFormat::OtlpJson);
    proto.sort_by_key(|s| s.span_id);
    json.sort_by_key(|s| s.span_id);
    assert_eq!(proto, json);
}

#[test]
fn row_order_does_not_change_the_output() {
    let lines: Vec<&str> = SHOP_2021.lines().collect();
    let forward = format!("{H2021}{}\n", lines.join("\n"));
    let mut rev = lines.clone();
    rev.reverse();
    let backward = format!("{H2021}{}\n", rev.join("\n"));
    let (a, _) = convert(forward.as_bytes(), InputFormat::OtlpProto, 4).unwrap();
    let (b, _) = convert(backward.as_bytes(), InputFormat::OtlpProto, 4).unwrap();
    assert_eq!(a, b);
}

#[test]
fn records_are_in_end_time_order_and_sized() {
    let csv = format!("{H2021}{SHOP_2021}");
    let (records, stats) = convert(csv.as_bytes(), InputFormat::OtlpProto, 1).unwrap();
    assert_eq!(records.len() as u64, stats.spans);
    assert_eq!(stats.records, stats.spans);
    assert!(records.iter().all(|r| r.spans == 1 && !r.garbage));
    assert!(
        records
            .windows(2)
            .all(|w| w[0].arrival_ns <= w[1].arrival_ns)
    );
    let spans = decode(&records, InputFormat::OtlpProto);
    for (r, s) in records.iter().zip(&spans) {
        assert_eq!(r.arrival_ns, s.end_ns);
    }
}

#[test]
fn expected_edges_agree_with_the_spans() {
    for csv in [format!("{H2021}{SHOP_2021}"), format!("{H2022}{SHOP_2022}")] {
        let expected = expected_edges(csv.as_bytes()).unwrap();
        let (spans, stats) = run(&csv, InputFormat::OtlpProto);
        assert_eq!(expected.traces, stats.traces);
        assert_eq!(expected.calls_by_type, stats.calls_by_type);
        let mut by_type: BTreeMap<String, u64> = BTreeMap::new();
        for s in &spans {
            *by_type.entry(s.call_type.as_str().to_owned()).or_default() += 1;
        }
        assert_eq!(expected.spans_by_type, by_type);
    }
    let e = expected_edges(format!("{H2021}{SHOP_2021}").as_bytes()).unwrap();
    let edge = |s: &str, t: &str, c: &str| Edge {
        source: s.into(),
        target: t.into(),
        call_type: c.into(),
    };
    assert_eq!(
        e.calls,
        BTreeMap::from([
            (edge("gw", "orders", "rpc"), 1),
            (edge("orders", "ordersdb", "db"), 1),
            (edge("orders", "cache1", "cache"), 1),
            (edge("orders", "billing", "mq"), 1),
            (edge("billing", "billingdb", "db"), 1),
        ])
    );
    assert_eq!(
        e.relations(),
        BTreeMap::from([
            (edge("gw", "orders", "rpc"), 1),
            (edge("orders", "billing", "mq"), 1),
        ])
    );
}

#[test]
fn gzip_and_plain_files() {
    let dir = tempfile::tempdir().unwrap();
    let csv = format!("{H2021}{SHOP_2021}");
    let plain = dir.path().join("a.csv");
    std::fs::write(&plain, &csv).unwrap();
    // The name says nothing: gzip is told by its magic bytes.
    let gz = dir.path().join("b.csv");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(csv.as_bytes()).unwrap();
    std::fs::write(&gz, enc.finish().unwrap()).unwrap();
    let (a, sa) = convert_file(&plain, InputFormat::OtlpProto, 8).unwrap();
    let (b, sb) = convert_file(&gz, InputFormat::OtlpProto, 8).unwrap();
    assert_eq!(a, b);
    assert_eq!(sa, sb);
    assert_eq!(
        expected_edges_file(&gz).unwrap(),
        expected_edges(csv.as_bytes()).unwrap()
    );

    let missing = dir.path().join("none.csv");
    let e = convert_file(&missing, InputFormat::OtlpProto, 8).unwrap_err();
    assert!(matches!(e, AlibabaError::Open { .. }), "{e}");
    let truncated = dir.path().join("c.csv.gz");
    let bytes = std::fs::read(&gz).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let e = convert_file(&truncated, InputFormat::OtlpProto, 8).unwrap_err();
    assert!(e.to_string().contains("c.csv.gz"), "{e}");

    // import writes the file source's framing, creating the directory.
    let out = dir.path().join("sub/dir/x.otlp");
    let stats = import(&gz, &out, InputFormat::OtlpJson).unwrap();
    let records = crate::testkit::generator::read_records(&out, InputFormat::OtlpJson).unwrap();
    assert_eq!(records.len() as u64, stats.records);
    assert!(stats.render().contains("1 traces, 8 spans"));
}
