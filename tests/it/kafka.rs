//! The Kafka source and sink against a real Kafka-protocol broker (tansu, started on
//! 127.0.0.1 by scripts/kafka.sh; one broker per test, so tests share no topics or
//! groups). Set SPANFLOW_KAFKA_BROKERS to use an already running broker instead.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use spanflow::connectors::kafka::{self, produce};
use spanflow::job::run_job;
use spanflow::runtime::{RunOptions, RunSummary};
use spanflow::testkit::generator::{GeneratedRecord, Generator, GeneratorConfig, write_records};

use crate::support::{Service, read_table, root, rows, run_and_stop_after, sum};

/// A broker for one test; stopped (by the PID the script recorded) on drop.
pub(crate) struct Broker {
    pub(crate) brokers: String,
    _service: Option<Service>,
}

impl Broker {
    pub(crate) fn start() -> Broker {
        if let Ok(b) = std::env::var("SPANFLOW_KAFKA_BROKERS") {
            return Broker {
                brokers: b,
                _service: None,
            };
        }
        let service = Service::start("kafka.sh", "SPANFLOW_KAFKA_DIR");
        Broker {
            brokers: service.var("SPANFLOW_KAFKA_BROKERS"),
            _service: Some(service),
        }
    }
}

pub(crate) fn generate(
    config: GeneratorConfig,
) -> (
    Vec<GeneratedRecord>,
    spanflow::testkit::generator::GroundTruth,
) {
    let mut g = Generator::new(config).unwrap();
    let records: Vec<GeneratedRecord> = g.by_ref().collect();
    (records, g.ground_truth().clone())
}

pub(crate) fn produce_records(
    broker: &Broker,
    topic: &str,
    partitions: i32,
    records: &[GeneratedRecord],
) {
    let props = BTreeMap::new();
    kafka::create_topics(&broker.brokers, &props, &[topic.to_owned()], partitions).unwrap();
    let p = produce::KafkaProducer::new(&broker.brokers, &props).unwrap();
    produce::produce_generated(&p, topic, partitions, records.iter().cloned(), None, |_| {})
        .unwrap();
}

/// Produces more of `records` to an existing `topic` (see [`produce_records`]).
pub(crate) fn produce_more(
    broker: &Broker,
    topic: &str,
    partitions: i32,
    records: &[GeneratedRecord],
) {
    let p = produce::KafkaProducer::new(&broker.brokers, &BTreeMap::new()).unwrap();
    produce::produce_generated(&p, topic, partitions, records.iter().cloned(), None, |_| {})
        .unwrap();
}

/// The end offset of every partition of `topic`.
pub(crate) fn end_offsets(broker: &Broker, topic: &str, partitions: i32) -> Vec<i64> {
    let c = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &broker.brokers)
        .create::<BaseConsumer>()
        .unwrap();
    (0..partitions)
        .map(|p| {
            c.fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap()
                .1
        })
        .collect()
}

/// The committed offset of `group` on every partition of `topic` (-1: none).
pub(crate) fn committed_offsets_of(
    broker: &Broker,
    topic: &str,
    partitions: i32,
    group: &str,
) -> Vec<i64> {
    let c = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &broker.brokers)
        .set("group.id", group)
        .create::<BaseConsumer>()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_range(topic, 0, partitions - 1);
    let got = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    (0..partitions)
        .map(|p| {
            got.find_partition(topic, p)
                .and_then(|e| e.offset().to_raw())
                .unwrap_or(-1)
        })
        .collect()
}

/// The analytics of jobs/demo.yaml (with one of its rollups), reading `source`.
fn analytics_job(source: &str, sinks: &str) -> spanflow::job::Job {
    spanflow::job::load_str(
        &root().join("jobs/kafka_test.yaml"),
        &job_yaml(source, sinks),
    )
    .unwrap_or_else(|d| panic!("{d}"))
}

/// The text of [`analytics_job`] (its rollup's SQL file named by absolute path, so
/// the text can be written anywhere).
pub(crate) fn job_yaml(source: &str, sinks: &str) -> String {
    let sql = root().join("sql/red_per_service_1m.sql");
    let sql = sql.display();
    format!(
        r#"
name: kafka_test
sources:
{source}
operators:
  sessions:
    type: session_window
    from: [in]
    gap: 10s
    gap_rules:
      - when: {{ has_async: true }}
        gap: 30s
      - when: {{ root_ended: true }}
        gap: 3s
  sampler:
    type: tail_sampling
    from: sessions
    policies:
      - {{ name: errors, type: error }}
      - {{ name: slow-db, type: slow_span, call_type: db, threshold: 200ms }}
      - {{ name: per-endpoint, type: endpoint_rate_limit, traces_per_second: 1 }}
      - {{ name: baseline, type: probabilistic, percentage: 10 }}
  metrics:
    type: red_metrics
    from: sampler
    interval: 10s
  graph:
    type: service_graph
    from: sampler
    interval: 10s
  alerts:
    type: alerts
    from: metrics
    rules:
      - {{ name: errors, metric: service_server, value: error_rate, above: 0.02, min_requests: 5, group_by: [service] }}
      - {{ name: slow-db, metric: service_call_db, value: p99, above: 150ms, group_by: [service] }}
sinks:
{sinks}
rollups:
  per_service_1m:
    from: metrics
    sql: "{sql}"
    window: 1m
"#
    )
}

const PARQUET_SINK: &str = r#"  out:
    type: parquet
    from: [sampler, sampler.spans, sessions.late_spans, in.dead_letters, metrics, metrics.exemplars, graph, per_service_1m, alerts]
"#;

/// A `kafka` source named `in`; `end: None` leaves the run unbounded.
pub(crate) fn kafka_source(
    broker: &Broker,
    topic: &str,
    group: &str,
    start: &str,
    end: Option<&str>,
) -> String {
    let end = end.map_or(String::new(), |e| format!("    end: \"{e}\"\n"));
    format!(
        r#"  in:
    type: kafka
    brokers: "{}"
    topics: [{topic}]
    group_id: {group}
    start: "{start}"
{end}    watermark: {{ max_out_of_order: 5s, idle_timeout: 1h }}
"#,
        broker.brokers
    )
}

/// A `file` source named `in` reading OTLP protobuf from `path`.
fn file_source(path: &Path) -> String {
    format!(
        "  in:\n    type: file\n    paths: [\"{}\"]\n    format: otlp_proto\n",
        path.display()
    )
}

fn run(job: &spanflow::job::Job, dir: &Path) -> RunSummary {
    run_job(
        job,
        &RunOptions {
            output_dir: Some(dir.to_path_buf()),
            parallelism: Some(2),
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

const COMPARED: &[&str] = &[
    "traces",
    "spans",
    "late_spans",
    "red_metrics",
    "exemplars",
    "service_relation",
    "per_service_1m",
    "alerts",
];

#[test]
fn kafka_input_gives_the_same_outputs_as_the_same_spans_from_a_file() {
    let broker = Broker::start();
    let (records, truth) = generate(GeneratorConfig {
        traces: 1500,
        seed: 11,
        traces_per_second: 50.0,
        spans_per_record: 64,
        late_fraction: 0.0,
        garbage_fraction: 0.0,
        ..Default::default()
    });
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("spans.otlp");
    write_records(
        &file,
        spanflow::formats::InputFormat::OtlpProto,
        records.clone(),
    )
    .unwrap();
    produce_records(&broker, "spans", 4, &records);

    let file_job = analytics_job(&file_source(&file), PARQUET_SINK);
    let kafka_job = analytics_job(
        &kafka_source(&broker, "spans", "same-outputs", "earliest", Some("latest")),
        PARQUET_SINK,
    );
    let from_file = run(&file_job, &tmp.path().join("file"));
    let from_kafka = run(&kafka_job, &tmp.path().join("kafka"));
    assert_eq!(from_kafka.decode.spans, truth.spans);
    assert_eq!(from_file.decode.spans, truth.spans);
    assert_eq!(from_kafka.sessions.traces_closed(), truth.traces);
    for table in COMPARED {
        let a = rows(&read_table(&tmp.path().join("file"), table), &[]);
        let b = rows(&read_table(&tmp.path().join("kafka"), table), &[]);
        assert_eq!(a.len(), b.len(), "{table}: row counts differ");
        assert!(a == b, "{table}: rows differ");
    }
    assert!(
        !read_table(&tmp.path().join("kafka"), "red_metrics").is_empty(),
        "metrics were computed"
    );
}

#[test]
fn garbage_records_become_dead_letters_with_their_offsets() {
    let broker = Broker::start();
    let (good, truth) = generate(GeneratorConfig {
        traces: 30,
        seed: 5,
        spans_per_record: 32,
        garbage_fraction: 0.0,
        ..Default::default()
    });
    // One partition: good, garbage, good, garbage, ... so offsets are known.
    let props = BTreeMap::new();
    kafka::create_topics(&broker.brokers, &props, &["mixed".to_owned()], 1).unwrap();
    let p = produce::KafkaProducer::new(&broker.brokers, &props).unwrap();
    let mut bad_offsets = BTreeSet::new();
    let mut offset = 0u64;
    for r in &good {
        p.send("mixed", Some(0), None, &r.payload).unwrap();
        offset += 1;
        p.send("mixed", Some(0), None, b"\x0a\xff\xff\xff garbage")
            .unwrap();
        bad_offsets.insert(offset);
        offset += 1;
    }
    p.flush().unwrap();

    let job = analytics_job(
        &kafka_source(&broker, "mixed", "dead-letters", "earliest", Some("latest")),
        PARQUET_SINK,
    );
    let tmp = tempfile::tempdir().unwrap();
    let s = run(&job, tmp.path());
    assert_eq!(s.decode.spans, truth.spans, "every good span was processed");
    assert_eq!(s.decode.bad_records, good.len() as u64);
    assert_eq!(s.sessions.traces_closed(), truth.traces);
    let dead = read_table(tmp.path(), "dead_letters");
    let offsets: BTreeSet<u64> = crate::support::column(&dead, "offset")
        .iter()
        .map(|o| o.parse().unwrap())
        .collect();
    assert_eq!(offsets, bad_offsets);
    let topics: BTreeSet<String> = crate::support::column(&dead, "topic").into_iter().collect();
    assert_eq!(topics, BTreeSet::from(["mixed".to_owned()]));
    let kinds: BTreeSet<String> = crate::support::column(&dead, "kind").into_iter().collect();
    assert_eq!(kinds, BTreeSet::from(["malformed_protobuf".to_owned()]));
}

#[test]
fn reading_from_a_timestamp_starts_at_the_first_record_at_or_after_it() {
    use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
    let broker = Broker::start();
    let (records, _) = generate(GeneratorConfig {
        traces: 40,
        seed: 9,
        spans_per_record: 16,
        ..Default::default()
    });
    assert!(records.len() >= 20);
    kafka::create_topics(&broker.brokers, &BTreeMap::new(), &["timed".to_owned()], 2).unwrap();
    let p: ThreadedProducer<_> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &broker.brokers)
        .create()
        .unwrap();
    // Record i has Kafka timestamp base + i seconds, partitions alternate.
    let base = 1_763_700_000_000i64;
    for (i, r) in records.iter().enumerate() {
        let rec: BaseRecord<'_, (), [u8]> = BaseRecord::to("timed")
            .partition((i % 2) as i32)
            .timestamp(base + i as i64 * 1000)
            .payload(&r.payload);
        p.send(rec).map_err(|(e, _)| e).unwrap();
    }
    p.flush(Duration::from_secs(30)).unwrap();
    let from = 12usize;
    let start = humantime::format_rfc3339_millis(
        std::time::UNIX_EPOCH + Duration::from_millis((base + from as i64 * 1000) as u64),
    )
    .to_string();
    let job = analytics_job(
        &kafka_source(&broker, "timed", "by-time", &start, Some("latest")),
        PARQUET_SINK,
    );
    let tmp = tempfile::tempdir().unwrap();
    let s = run(&job, tmp.path());
    let expected_spans: usize = records[from..].iter().map(|r| r.spans).sum();
    assert_eq!(s.decode.records, (records.len() - from) as u64);
    assert_eq!(s.decode.spans, expected_spans as u64);
}

/// Reads every record of `topic` (all partitions, from the start).
fn consume_all(brokers: &str, topic: &str) -> Vec<(Option<Vec<u8>>, Vec<u8>)> {
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("reader-{topic}"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let n = kafka::topic_partitions(brokers, &BTreeMap::new(), topic).unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    let mut remaining = 0i64;
    for p in 0..n {
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)
            .unwrap();
        let (lo, hi) = c
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .unwrap();
        remaining += hi - lo;
    }
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while remaining > 0 && std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            out.push((
                m.key().map(<[u8]>::to_vec),
                m.payload().unwrap_or(&[]).to_vec(),
            ));
            remaining -= 1;
        }
    }
    assert_eq!(remaining, 0, "read every record of {topic}");
    out
}

#[test]
fn avro_json_and_otlp_outputs_decode_against_the_shipped_schemas() {
    let broker = Broker::start();
    let (records, truth) = generate(GeneratorConfig {
        traces: 300,
        seed: 21,
        traces_per_second: 20.0,
        ..Default::default()
    });
    produce_records(&broker, "in_spans", 2, &records);
    let sinks = format!(
        r#"{PARQUET_SINK}  bus:
    type: kafka
    from: [sampler, sampler.spans, metrics, metrics.exemplars, graph]
    brokers: "{}"
    topic_prefix: "out."
    format: avro
    formats: {{ spans: otlp_proto, service_relation: json }}
    create_topics_partitions: 2
"#,
        broker.brokers
    );
    let job = analytics_job(
        &kafka_source(&broker, "in_spans", "outputs", "earliest", Some("latest")),
        &sinks,
    );
    let tmp = tempfile::tempdir().unwrap();
    let s = run(&job, tmp.path());
    assert_eq!(s.decode.spans, truth.spans);

    // Avro tables: every record decodes with schemas/avro/<table>.avsc and the values
    // match the Parquet rows.
    for (table, measure) in [
        ("traces", "span_count"),
        ("red_metrics", "requests"),
        ("exemplars", ""),
    ] {
        let text =
            std::fs::read_to_string(root().join(format!("schemas/avro/{table}.avsc"))).unwrap();
        let schema = apache_avro::Schema::parse_str(&text).unwrap();
        let reader = apache_avro::GenericSingleObjectReader::builder()
            .schema(schema)
            .build()
            .unwrap();
        let msgs = consume_all(&broker.brokers, &format!("out.{table}"));
        let parquet = read_table(tmp.path(), table);
        let parquet_rows: usize = parquet.iter().map(|b| b.num_rows()).sum();
        assert_eq!(msgs.len(), parquet_rows, "{table}: one record per row");
        let mut total = 0i64;
        for (key, value) in &msgs {
            assert!(
                key.as_ref().is_some_and(|k| !k.is_empty()),
                "{table}: keyed"
            );
            let v = reader
                .read_value(&mut value.as_slice())
                .unwrap_or_else(|e| panic!("{table}: {e}"));
            let apache_avro::types::Value::Record(fields) = v else {
                panic!("{table}: not a record")
            };
            if let Some((_, apache_avro::types::Value::Long(n))) =
                fields.iter().find(|(n, _)| n == measure)
            {
                total += n;
            }
        }
        if !measure.is_empty() {
            assert_eq!(total as u64, sum(&parquet, measure), "{table}.{measure}");
        }
    }

    // JSON: one object per row.
    let msgs = consume_all(&broker.brokers, "out.service_relation");
    let parquet = read_table(tmp.path(), "service_relation");
    let mut requests = 0u64;
    for (_, v) in &msgs {
        let j: serde_json::Value = serde_json::from_slice(v).unwrap();
        requests += j["requests"].as_u64().unwrap();
    }
    assert_eq!(requests, sum(&parquet, "requests"));

    // OTLP protobuf: one request per kept trace, keyed by its trace id, every kept span.
    use prost::Message as _;
    let msgs = consume_all(&broker.brokers, "out.spans");
    let mut spans = 0usize;
    let mut traces = BTreeSet::new();
    for (key, v) in &msgs {
        let req =
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest::decode(
                v.as_slice(),
            )
            .unwrap();
        for rs in &req.resource_spans {
            for ss in &rs.scope_spans {
                for sp in &ss.spans {
                    assert_eq!(
                        key.as_deref(),
                        Some(hex::encode(&sp.trace_id).as_bytes()),
                        "keyed by trace id"
                    );
                    traces.insert(sp.trace_id.clone());
                    spans += 1;
                }
            }
        }
    }
    let kept: usize = read_table(tmp.path(), "spans")
        .iter()
        .map(|b| b.num_rows())
        .sum();
    assert_eq!(spans, kept);
    assert!(traces.len() > 10);
}

/// Stop a consuming run mid-stream (traces still open), resume it: the two runs'
/// outputs together equal one uninterrupted run over the same spans.
#[test]
fn a_stopped_run_resumes_from_its_savepoint_without_losing_or_repeating_a_trace() {
    let broker = Broker::start();
    let (records, truth) = generate(GeneratorConfig {
        traces: 1200,
        seed: 31,
        traces_per_second: 40.0,
        spans_per_record: 64,
        late_fraction: 0.0,
        garbage_fraction: 0.0,
        ..Default::default()
    });
    let half = records.len() / 2;
    let first_spans: u64 = records[..half].iter().map(|r| r.spans as u64).sum();
    let tmp = tempfile::tempdir().unwrap();

    // Reference: every record from a file, one run.
    let file = tmp.path().join("spans.otlp");
    write_records(
        &file,
        spanflow::formats::InputFormat::OtlpProto,
        records.clone(),
    )
    .unwrap();
    let file_job = analytics_job(&file_source(&file), PARQUET_SINK);
    run(&file_job, &tmp.path().join("reference"));

    // Run 1: unbounded, consumes the first half, is stopped with traces open.
    produce_records(&broker, "live", 4, &records[..half]);
    let unbounded = analytics_job(
        &kafka_source(&broker, "live", "resumable", "earliest", None),
        PARQUET_SINK,
    );
    let out = tmp.path().join("resumed");
    let checkpoints = tmp.path().join("checkpoints");
    let opts = RunOptions {
        output_dir: Some(out.clone()),
        parallelism: Some(2),
        checkpoint_dir: Some(checkpoints.clone()),
        ..Default::default()
    };
    let s1 = run_and_stop_after(&unbounded, &opts, first_spans);
    assert!(s1.savepoint.is_some(), "run 1 left a savepoint");
    assert!(
        s1.sessions.traces_closed() < truth.traces,
        "run 1 stopped with traces still open"
    );
    let kept = s1.savepoint.clone().expect("its directory");
    assert!(
        kept.starts_with(&checkpoints) && kept.join("MANIFEST.json").exists(),
        "{}",
        kept.display()
    );
    // Run 1 committed the end of what it read: the first half, every partition.
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &broker.brokers)
        .set("group.id", "resumable")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_range("live", 0, 3);
    let committed = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    for e in committed.elements() {
        let (_, high) = c
            .fetch_watermarks("live", e.partition(), Duration::from_secs(10))
            .unwrap();
        assert_eq!(
            e.offset(),
            rdkafka::Offset::Offset(high),
            "partition {}",
            e.partition()
        );
    }

    // Run 2: the rest arrives; the run resumes and ends at the topic's end.
    produce_records(&broker, "live", 4, &records[half..]);
    let bounded = analytics_job(
        &kafka_source(&broker, "live", "resumable", "committed", Some("latest")),
        PARQUET_SINK,
    );
    // The same computation: only the source's bounds differ.
    let s2 = run_job(&bounded, &opts).unwrap_or_else(|e| panic!("{e}"));
    assert!(s2.restored, "run 2 resumed from the savepoint");
    assert!(s2.savepoint.is_none());
    assert!(!kept.exists(), "finished: nothing left open");
    assert_eq!(
        s1.decode.spans + s2.decode.spans,
        truth.spans,
        "each span read exactly once"
    );
    for table in COMPARED {
        let a = rows(&read_table(&tmp.path().join("reference"), table), &[]);
        let b = rows(&read_table(&out, table), &[]);
        assert_eq!(a.len(), b.len(), "{table}: row counts differ");
        assert!(a == b, "{table}: rows differ");
    }
}

/// A second member joining the group takes partitions away from the first: the first
/// sees them revoked (so they stop holding its watermark) and keeps the rest; between
/// them the two members read every partition.
#[test]
fn rebalance_moves_partitions_between_members() {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    use spanflow::connectors::kafka::KafkaSourceConfig;
    use spanflow::connectors::kafka::source::{KafkaEvent, KafkaReader};
    use spanflow::runtime::io::{Finish, FinishSignal};
    use std::sync::atomic::AtomicBool;

    // (librdkafka's mock cluster never completes this rebalance, so it runs here.)
    let broker = Broker::start();
    let brokers = broker.brokers.clone();
    let props = BTreeMap::new();
    kafka::create_topics(&brokers, &props, &["shared".to_owned()], 4).unwrap();
    let p = produce::KafkaProducer::new(&brokers, &props).unwrap();
    for part in 0..4 {
        for i in 0..3 {
            p.send("shared", Some(part), None, format!("r{i}").as_bytes())
                .unwrap();
        }
    }
    p.flush().unwrap();
    let config = KafkaSourceConfig {
        brokers: brokers.clone(),
        topics: vec!["shared".into()],
        group_id: "two-members".into(),
        format: spanflow::formats::InputFormat::OtlpProto,
        start: "earliest".into(),
        on_no_committed: "earliest".into(),
        end: None,
        end_offsets: BTreeMap::new(),
        properties: BTreeMap::new(),
        repartition: None,
    };

    let spawn = |config: KafkaSourceConfig, stop: Arc<AtomicBool>| {
        std::thread::spawn(move || {
            let mut reader = KafkaReader::connect(&config, &[]).expect("connect");
            let mut events = Vec::new();
            reader
                .run(
                    &stop,
                    &mut |e| {
                        events.push(e.detach());
                        true
                    },
                    Some(FinishSignal::ready(Finish::Abort)),
                    &(),
                )
                .expect("run");
            events
        })
    };
    let assigned = |events: &[KafkaEvent]| -> std::collections::BTreeSet<i32> {
        let mut now = std::collections::BTreeSet::new();
        for e in events {
            match e {
                KafkaEvent::Assigned(s) => now.extend(s.iter().map(|s| s.partition)),
                KafkaEvent::Revoked(s) => {
                    for sp in s {
                        now.remove(&sp.partition);
                    }
                }
                _ => {}
            }
        }
        now
    };
    let stop_a = Arc::new(AtomicBool::new(false));
    let a = spawn(config.clone(), stop_a.clone());
    // Let A join alone and read, then B joins.
    std::thread::sleep(Duration::from_secs(4));
    let stop_b = Arc::new(AtomicBool::new(false));
    let b = spawn(config, stop_b.clone());
    std::thread::sleep(Duration::from_secs(10));
    stop_a.store(true, Ordering::Relaxed);
    stop_b.store(true, Ordering::Relaxed);
    let (ea, eb) = (a.join().unwrap(), b.join().unwrap());
    let first_a = ea.iter().find_map(|e| match e {
        KafkaEvent::Assigned(s) => Some(s.len()),
        _ => None,
    });
    assert_eq!(first_a, Some(4), "A alone gets every partition");
    assert!(
        ea.iter()
            .any(|e| matches!(e, KafkaEvent::Revoked(s) if !s.is_empty())),
        "A saw partitions revoked"
    );
    let brief = |ev: &[KafkaEvent]| -> Vec<String> {
        ev.iter()
            .filter_map(|e| match e {
                KafkaEvent::Assigned(s) => Some(format!(
                    "+{:?}",
                    s.iter().map(|s| s.partition).collect::<Vec<_>>()
                )),
                KafkaEvent::Revoked(s) => Some(format!(
                    "-{:?}",
                    s.iter().map(|s| s.partition).collect::<Vec<_>>()
                )),
                _ => None,
            })
            .collect()
    };
    eprintln!("A {:?}\nB {:?}", brief(&ea), brief(&eb));
    let (now_a, now_b) = (assigned(&ea), assigned(&eb));
    assert!(
        !now_a.is_empty() && !now_b.is_empty(),
        "{now_a:?} {now_b:?}"
    );
    assert!(now_a.is_disjoint(&now_b));
    let all: std::collections::BTreeSet<i32> = now_a.union(&now_b).copied().collect();
    assert_eq!(all, (0..4).collect());
}

/// A Kafka-fed job with 1 s checkpoints writing Parquet, ClickHouse and Kafka is killed
/// with SIGKILL at five random moments and restarted each time: the Parquet outputs
/// equal an uninterrupted run's, ClickHouse's after `FINAL`, Kafka's after dropping
/// repeated records (a replay re-sends the same records with the same keys); the last
/// run read less than the whole topic, and the consumer group's committed offsets end
/// where the uninterrupted run's do.
///
/// The consumer is a static member (`group.instance.id`): a restarted process takes the
/// killed one's place and its partitions at once. A dynamic member has to wait for the
/// killed one's session to time out, and tansu 0.6 can leave a group with no
/// assignment at all when a member dies during a rebalance.
#[test]
fn sigkill_at_random_moments_of_a_kafka_run_changes_nothing_in_the_outputs() {
    use crate::checkpoint::{Xorshift, kill_seed, run_cli, run_cli_until};

    let broker = Broker::start();
    let ch = crate::clickhouse::Server::start();
    let (records, _) = generate(GeneratorConfig {
        traces: 15_000,
        seed: 37,
        traces_per_second: 60.0,
        // Small records: the source reads only as fast as the job processes, so the
        // group's offsets move checkpoint by checkpoint through the run.
        spans_per_record: 8,
        late_fraction: 0.0,
        garbage_fraction: 0.001,
        ..Default::default()
    });
    produce_records(&broker, "killed", 4, &records);
    let tmp = tempfile::tempdir().unwrap();
    let source = |group: &str| {
        kafka_source(&broker, "killed", group, "earliest", Some("latest")).replace(
            "    watermark:",
            &format!(
                "    properties: {{ group.instance.id: \"{group}-member\", \
                 session.timeout.ms: \"20000\", heartbeat.interval.ms: \"500\" }}\n    \
                 watermark:"
            ),
        )
    };
    let sinks = |name: &str| {
        format!(
            r#"{PARQUET_SINK}  warehouse:
    type: clickhouse
    from: [sampler, metrics, metrics.exemplars, graph]
    url: {url}
    database: {name}
    create_tables: true
  bus:
    type: kafka
    from: [sampler, metrics, metrics.exemplars, graph]
    brokers: "{brokers}"
    topic_prefix: "{name}."
    format: json
    create_topics_partitions: 2
"#,
            url = ch.url,
            brokers = broker.brokers
        )
    };
    let reference = tmp.path().join("reference");
    let t0 = std::time::Instant::now();
    let whole = run(
        &analytics_job(&source("whole"), &sinks("whole")),
        &reference,
    );
    eprintln!("uninterrupted run: {:?}", t0.elapsed());

    let yaml = tmp.path().join("job.yaml");
    std::fs::write(&yaml, job_yaml(&source("killed"), &sinks("killed"))).unwrap();
    let out = tmp.path().join("out");
    let chk = tmp.path().join("chk");
    // A run is killed at a random moment up to 1 s after its first checkpoint that
    // holds progress (the group's committed offsets moved: a restarted run joins the
    // group first, which takes tansu about 6 s).
    let progress = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &broker.brokers)
        .set("group.id", "killed")
        .create::<BaseConsumer>()
        .unwrap();
    let offsets = || -> i64 {
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition_range("killed", 0, 3);
        let got = progress
            .committed_offsets(tpl, Duration::from_secs(10))
            .unwrap();
        got.elements()
            .iter()
            .filter_map(|e| e.offset().to_raw())
            .filter(|&o| o > 0)
            .sum()
    };
    let mut rng = Xorshift(kill_seed());
    for _ in 0..5 {
        let at = Duration::from_secs_f64(rng.next_f64());
        let before = offsets();
        let moved = || offsets() > before;
        eprintln!("killing {at:?} after the run's first checkpoint with progress");
        run_cli_until(2, &yaml, &out, &chk, "500ms", Some((at, &moved)));
    }
    let summary = run_cli(&yaml, &out, &chk, "500ms", None).unwrap();
    let v: serde_json::Value = serde_json::from_str(&summary).unwrap();
    assert_eq!(v["restored"], true, "the last run restored a checkpoint");
    let read = v["decode"]["spans"].as_u64().unwrap();
    assert!(
        read < whole.decode.spans,
        "the last run read {read} spans of {}: it should have resumed",
        whole.decode.spans
    );
    for table in COMPARED.iter().chain(&["dead_letters"]) {
        let a = rows(&read_table(&reference, table), &[]);
        let b = rows(&read_table(&out, table), &[]);
        assert_eq!(a.len(), b.len(), "{table}: row counts differ");
        assert!(a == b, "{table}: rows differ");
    }
    for table in ["traces", "red_metrics", "exemplars", "service_relation"] {
        let a = ch.snapshot(&format!("whole.{table}"));
        let b = ch.snapshot(&format!("killed.{table}"));
        assert!(!a.is_empty(), "ClickHouse {table}: empty");
        assert_eq!(
            a.len(),
            b.len(),
            "ClickHouse {table} FINAL: row counts differ"
        );
        assert!(a == b, "ClickHouse {table} FINAL: rows differ");
    }
    for table in ["traces", "red_metrics", "exemplars", "service_relation"] {
        let a = consume_all(&broker.brokers, &format!("whole.{table}"));
        let b = consume_all(&broker.brokers, &format!("killed.{table}"));
        assert!(
            b.len() >= a.len(),
            "Kafka {table}: fewer records than once each"
        );
        let distinct = |v: Vec<(Option<Vec<u8>>, Vec<u8>)>| -> std::collections::BTreeSet<_> {
            v.into_iter().collect()
        };
        let (na, a) = (a.len(), distinct(a));
        assert_eq!(
            na,
            a.len(),
            "Kafka {table}: the uninterrupted run repeats a record"
        );
        assert!(
            a == distinct(b),
            "Kafka {table}: other records than the uninterrupted run's"
        );
    }
    // The group's offsets end where the uninterrupted run's do: at the topic's end.
    assert_eq!(
        committed_offsets(&broker, "killed", 4, "killed"),
        committed_offsets(&broker, "killed", 4, "whole")
    );
}

/// The committed offsets of `group` on the partitions of `topic`.
fn committed_offsets(
    broker: &Broker,
    topic: &str,
    partitions: i32,
    group: &str,
) -> Vec<(i32, rdkafka::Offset)> {
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &broker.brokers)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_range(topic, 0, partitions - 1);
    let got = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    got.elements()
        .iter()
        .map(|e| (e.partition(), e.offset()))
        .collect()
}

fn rfc3339(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// `spanflow replay` of a job file; its summary.
fn replay_cli(job: &Path, from: &str, to: &str, extra: &[&str]) -> serde_json::Value {
    let out = std::process::Command::new(crate::support::bin())
        .args([
            "replay",
            &job.display().to_string(),
            "--from",
            from,
            "--to",
            to,
            "--json",
        ])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "replay failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_replay_of_a_live_jobs_time_range_writes_the_same_rows_and_leaves_its_group_alone() {
    let broker = Broker::start();
    let (records, truth) = generate(GeneratorConfig {
        traces: 600,
        seed: 23,
        traces_per_second: 40.0,
        spans_per_record: 48,
        late_fraction: 0.0,
        garbage_fraction: 0.02,
        ..Default::default()
    });
    let (topic, partitions) = ("otlp_live", 4);
    kafka::create_topics(
        &broker.brokers,
        &BTreeMap::new(),
        &[topic.to_owned()],
        partitions,
    )
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let job_file = tmp.path().join("live.yaml");
    std::fs::write(
        &job_file,
        job_yaml(
            &kafka_source(&broker, topic, "live", "committed", None),
            PARQUET_SINK,
        ),
    )
    .unwrap();
    let live_job = spanflow::job::load(&job_file).unwrap_or_else(|d| panic!("{d}"));

    // The live job runs while the topic is written in three parts, a second apart
    // (Kafka timestamps are the produce times), and is stopped once it read them all.
    let before = std::time::SystemTime::now();
    let third = records.len() / 3;
    let parts = [
        &records[..third],
        &records[third..2 * third],
        &records[2 * third..],
    ];
    let brokers = broker.brokers.clone();
    let (marks_tx, marks_rx) = std::sync::mpsc::channel();
    let parts_owned: Vec<Vec<GeneratedRecord>> = parts.iter().map(|p| p.to_vec()).collect();
    let producer = std::thread::spawn(move || {
        let p = produce::KafkaProducer::new(&brokers, &BTreeMap::new()).unwrap();
        for part in parts_owned {
            std::thread::sleep(Duration::from_millis(1100));
            marks_tx.send(std::time::SystemTime::now()).unwrap();
            produce::produce_generated(&p, topic, partitions, part.into_iter(), None, |_| {})
                .unwrap();
        }
        std::thread::sleep(Duration::from_millis(1100));
        marks_tx.send(std::time::SystemTime::now()).unwrap();
    });
    let live_dir = tmp.path().join("live");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let opts = RunOptions {
        output_dir: Some(live_dir.clone()),
        parallelism: Some(2),
        stop: Some(stop.clone()),
        spans_seen: Some(seen.clone()),
        ..Default::default()
    };
    let live = std::thread::spawn(move || run_job(&live_job, &opts));
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while seen.load(std::sync::atomic::Ordering::Relaxed) < truth.spans || !producer.is_finished() {
        assert!(
            std::time::Instant::now() < deadline,
            "the live job did not read every span"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Garbage records travel alone: give the last of them time to arrive too.
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let live = live.join().unwrap().unwrap_or_else(|e| panic!("{e}"));
    producer.join().unwrap();
    let marks: Vec<std::time::SystemTime> = marks_rx.iter().collect();
    let after = std::time::SystemTime::now();
    assert_eq!(live.decode.spans, truth.spans);
    assert!(truth.garbage_records > 0);
    assert_eq!(live.decode.bad_records, truth.garbage_records);
    let live_offsets = committed_offsets(&broker, topic, partitions, "live");
    assert!(
        live_offsets
            .iter()
            .all(|(_, o)| matches!(o, rdkafka::Offset::Offset(n) if *n > 0)),
        "the live run committed its offsets: {live_offsets:?}"
    );

    // The whole range, into a fresh output: the same rows in every table.
    let replay_dir = tmp.path().join("replay");
    let checkpoints = tmp.path().join("replay-checkpoints");
    let summary = replay_cli(
        &job_file,
        &rfc3339(before),
        &rfc3339(after),
        &[
            "--output-dir",
            &replay_dir.display().to_string(),
            "--parallelism",
            "3",
            "--checkpoint-dir",
            &checkpoints.display().to_string(),
            "--checkpoint-interval",
            "200ms",
        ],
    );
    assert_eq!(summary["decode"]["records"], live.decode.records);
    assert_eq!(summary["decode"]["spans"], truth.spans);
    let mut tables: Vec<&str> = COMPARED.to_vec();
    tables.push("dead_letters");
    for table in tables {
        let a = rows(&read_table(&live_dir, table), &[]);
        let b = rows(&read_table(&replay_dir, table), &[]);
        assert!(!a.is_empty() || table == "late_spans", "{table} is empty");
        assert_eq!(a.len(), b.len(), "{table}: row counts differ");
        assert!(a == b, "{table}: rows differ");
    }
    // The live group's offsets did not move; the replay committed under its own group;
    // its checkpoints are gone once it completed.
    assert_eq!(
        committed_offsets(&broker, topic, partitions, "live"),
        live_offsets
    );
    assert!(
        std::fs::read_dir(&checkpoints)
            .map(|d| d.count() == 0)
            .unwrap_or(true),
        "a completed replay leaves no checkpoint to resume from"
    );

    // A replay stopped half-way keeps a checkpoint; the same replay started again
    // resumes from it and ends with the same rows.
    // Small fetches, so the stop is likely to come in the middle.
    let slow: spanflow::job::Override =
        "sources.in.properties={max.partition.fetch.bytes: '1', queued.max.messages.kbytes: '1'}"
            .parse()
            .unwrap();
    let mut job = spanflow::job::load_with(&job_file, &[slow]).unwrap_or_else(|d| panic!("{d}"));
    let resumed_checkpoints = tmp.path().join("resumed-checkpoints");
    spanflow::job::replay::prepare(
        &mut job,
        &rfc3339(before),
        &rfc3339(after),
        None,
        Some(&resumed_checkpoints),
    )
    .unwrap();
    let resumed_dir = tmp.path().join("resumed");
    let opts = RunOptions {
        output_dir: Some(resumed_dir.clone()),
        parallelism: Some(2),
        ..Default::default()
    };
    let first = run_and_stop_after(&job, &opts, truth.spans / 3);
    assert!(
        first.savepoint.is_some(),
        "the stopped replay kept a checkpoint"
    );
    // (Where it stopped depends on timing: tansu hands out whole partitions per fetch,
    // so the stop may also come after the last record; the rows must match either way.)
    let second = run_job(&job, &opts).unwrap_or_else(|e| panic!("{e}"));
    assert!(second.restored_from.is_some(), "the second replay resumed");
    assert_eq!(first.decode.spans + second.decode.spans, truth.spans);
    for table in COMPARED {
        let a = rows(&read_table(&live_dir, table), &[]);
        let b = rows(&read_table(&resumed_dir, table), &[]);
        assert!(a == b, "{table}: the resumed replay's rows differ");
    }
    assert_eq!(
        committed_offsets(&broker, topic, partitions, "live"),
        live_offsets
    );

    // The middle part alone: exactly its records.
    let middle = replay_cli(
        &job_file,
        &rfc3339(marks[1]),
        &rfc3339(marks[2]),
        &[
            "--output-dir",
            &tmp.path().join("middle").display().to_string(),
        ],
    );
    let middle_spans: usize = parts[1].iter().map(|r| r.spans).sum();
    assert_eq!(middle["decode"]["spans"], middle_spans as u64);
    let middle_garbage = parts[1].iter().filter(|r| r.garbage).count();
    assert_eq!(middle["decode"]["bad_records"], middle_garbage as u64);
}

/// An unbounded Kafka job on the job server: stopped with the server (SIGTERM) while
/// records keep arriving, resumed by the next server from its checkpoint; once a few
/// late-arriving traces far ahead in event time close every trace before them, its
/// outputs are those of one bounded run over the same records: no trace lost, none
/// written twice.
#[test]
fn an_unbounded_kafka_job_survives_a_server_restart_without_losing_a_trace() {
    use crate::server::{Server, cli, submit};

    let broker = Broker::start();
    let (records, _) = generate(GeneratorConfig {
        traces: 4_000,
        seed: 41,
        traces_per_second: 50.0,
        spans_per_record: 16,
        late_fraction: 0.0,
        garbage_fraction: 0.001,
        ..Default::default()
    });
    let half = records.len() / 2;
    produce_records(&broker, "served", 4, &records[..half]);
    let tmp = tempfile::tempdir().unwrap();
    let yaml = tmp.path().join("job.yaml");
    std::fs::write(
        &yaml,
        job_yaml(
            &kafka_source(&broker, "served", "served", "earliest", None),
            &PARQUET_SINK.replace("    from:", "    path: out\n    from:"),
        ),
    )
    .unwrap();
    let state = tmp.path().join("state");
    let server = Server::start(&state);
    let id = submit(&server, tmp.path(), &yaml, false);
    let first = server.wait_for(&id, "progress", |j| {
        j["spans"].as_u64() > Some(0) && !j["last_checkpoint"].is_null()
    });
    assert_eq!(first["state"], "running");
    server.terminate();

    // While no server runs, the rest arrives; then traces half an hour later in event
    // time (within the clock-skew guard's hour) on every partition, which move the
    // watermark past every trace before them.
    let props = BTreeMap::new();
    let p = produce::KafkaProducer::new(&broker.brokers, &props).unwrap();
    produce::produce_generated(
        &p,
        "served",
        4,
        records[half..].iter().cloned(),
        None,
        |_| {},
    )
    .unwrap();
    let (later, _) = generate(GeneratorConfig {
        traces: 40,
        seed: 43,
        start_time: "2026-01-01T00:30:00Z".into(),
        spans_per_record: 1,
        // Short traces: none of them closes, no interval of theirs closes.
        long_trace_fraction: 0.0,
        async_fraction: 0.0,
        late_fraction: 0.0,
        garbage_fraction: 0.0,
        ..Default::default()
    });
    let later_spans: u64 = later.iter().map(|r| r.spans as u64).sum();
    produce::produce_generated(&p, "served", 4, later.into_iter(), None, |_| {}).unwrap();

    let server = Server::start(&state);
    let resumed = server.job(&id);
    assert_eq!(
        (resumed["state"].as_str(), resumed["runs"].as_u64()),
        (Some("running"), Some(2))
    );
    // 00:29:00: past every trace of the first records (the generator's first trace
    // starts at 00:00, 4,000 of them at 50/s take 80 s), before the later ones.
    // Then every trace before them is out: the spans still held are theirs (a trace
    // the rate limit holds waits for the global stage's verdict after the watermark).
    server.wait_for(&id, "watermark", |j| {
        j["watermark"]
            .as_str()
            .is_some_and(|w| w > "2026-01-01T00:29:00")
            && j["buffered_spans"].as_u64() == Some(later_spans)
    });
    // Everything read: the consumer lag /metrics reports is 0 on every partition.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text = reqwest::blocking::get(format!("{}/metrics", server.url))
            .unwrap()
            .text()
            .unwrap();
        let caught_up = (0..4).all(|p| {
            text.contains(&format!(
                "spanflow_consumer_lag_records{{job_id=\"{id}\",job_name=\"kafka_test\",source=\"in\",topic=\"served\",partition=\"{p}\"}} 0\n"
            ))
        });
        if caught_up {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no consumer lag of 0 on every partition:\n{}",
            text.lines()
                .filter(|l| l.contains("consumer_lag"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let stop = cli(&server, tmp.path(), &["stop", &id]);
    assert!(
        stop.status.success(),
        "{}",
        String::from_utf8_lossy(&stop.stderr)
    );
    let stopped = server.job(&id);
    assert_eq!(stopped["state"], "stopped", "{stopped:#}");
    assert_eq!(stopped["summary"]["restored"], true);

    let reference = tmp.path().join("reference");
    produce_records(&broker, "bounded", 4, &records);
    run(
        &analytics_job(
            &kafka_source(&broker, "bounded", "reference", "earliest", Some("latest")),
            PARQUET_SINK,
        ),
        &reference,
    );
    for table in COMPARED.iter().chain(&["dead_letters"]) {
        // The bounded run closes its last traces at the end of its input, the served
        // one by their gap, as the later traces' watermark passes them; the served
        // topic was written in two parts, so its messages (and offsets) are cut
        // elsewhere.
        let skip: &[&str] = match *table {
            "dead_letters" => &["topic", "split", "offset"],
            "traces" => &["close_reason"],
            _ => &[],
        };
        let a = rows(&read_table(&reference, table), skip);
        let b = rows(&read_table(&tmp.path().join("out"), table), skip);
        assert!(
            !a.is_empty() || matches!(*table, "dead_letters" | "late_spans"),
            "{table}: empty"
        );
        assert_eq!(a.len(), b.len(), "{table}: row counts differ");
        let first = a.iter().zip(&b).find(|(x, y)| x != y);
        assert!(a == b, "{table}: rows differ, first {first:#?}");
    }
}
