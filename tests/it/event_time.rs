//! Event time on awkward input: clients with skewed clocks, splits read at different
//! speeds.

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use spanflow::formats::InputFormat;
use spanflow::job::run_job;
use spanflow::runtime::RunOptions;
use spanflow::testkit::generator::{Generator, GeneratorConfig, write_records};

use crate::support::{column, read_table, root};

/// About three years, in nanoseconds: a client whose clock (or unit) is badly off.
const SKEW_NS: u64 = 3 * 365 * 86_400 * 1_000_000_000;

/// A corpus of OTLP requests in which a few come from a client whose clock runs years
/// ahead: per trace id, how many of its spans are good; and how many are skewed.
fn skewed_corpus(path: &std::path::Path) -> (BTreeMap<String, u64>, u64, usize) {
    let mut g = Generator::new(GeneratorConfig {
        traces: 250,
        seed: 11,
        traces_per_second: 4.0,
        late_fraction: 0.0,
        garbage_fraction: 0.0,
        ..Default::default()
    })
    .unwrap();
    let mut records: Vec<_> = std::iter::from_fn(|| g.next_record()).collect();
    let n = records.len();
    assert!(
        n >= 40,
        "{n} records: too few for a few skewed ones among them"
    );
    let skewed: Vec<usize> = (1..=4).map(|i| i * n / 5).collect();
    let mut good: BTreeMap<String, u64> = BTreeMap::new();
    let mut bad = 0;
    for (i, r) in records.iter_mut().enumerate() {
        let mut req = ExportTraceServiceRequest::decode(&r.payload[..]).unwrap();
        for span in req
            .resource_spans
            .iter_mut()
            .flat_map(|rs| rs.scope_spans.iter_mut())
            .flat_map(|ss| ss.spans.iter_mut())
        {
            if skewed.contains(&i) {
                span.start_time_unix_nano += SKEW_NS;
                span.end_time_unix_nano += SKEW_NS;
                bad += 1;
            } else {
                *good.entry(hex::encode(&span.trace_id)).or_default() += 1;
            }
        }
        if skewed.contains(&i) {
            r.payload = req.encode_to_vec();
        }
    }
    write_records(path, InputFormat::OtlpProto, records).unwrap();
    (good, bad, n)
}

fn job(path: &std::path::Path, max_ahead: &str) -> spanflow::job::Job {
    let text = format!(
        "sources:\n  f:\n    type: file\n    format: otlp_proto\n    paths: [{}]\n    \
         watermark: {{ max_out_of_order: 2s, max_ahead: {max_ahead} }}\n\
         operators:\n  s: {{ type: session_window, from: f, gap: 5s }}\n\
         sinks:\n  o: {{ type: parquet, from: [s, s.late_spans, f.dead_letters] }}\n",
        path.display()
    );
    spanflow::job::load_str(&root().join("skew.yaml"), &text).unwrap_or_else(|d| panic!("{d}"))
}

/// A few requests stamped years ahead among good ones: their spans go to dead letters
/// (`far_future`) and every good span stays in its trace, none late. Without the guard
/// (a bound of 10 years) the same input makes most good spans late.
#[test]
fn far_future_spans_do_not_make_the_good_ones_late() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("skewed.otlp");
    let (good, bad, records) = skewed_corpus(&input);
    let good_spans: u64 = good.values().sum();
    assert!(
        bad > 0 && good_spans > 10 * bad,
        "{bad} skewed, {good_spans} good"
    );

    let out = tmp.path().join("guarded");
    let s = run_job(
        &job(&input, "1h"),
        &RunOptions {
            output_dir: Some(out.clone()),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(s.event_time.far_future_spans, bad);
    assert_eq!(s.sessions.late_spans(), 0, "{}", s.render());
    assert_eq!(s.sessions.spans_closed, good_spans);
    let traces = read_table(&out, "traces");
    let ids = column(&traces, "trace_id");
    let counts = column(&traces, "span_count");
    let mut got: BTreeMap<String, u64> = BTreeMap::new();
    for (id, n) in ids.iter().zip(&counts) {
        *got.entry(id.clone()).or_default() += n.parse::<u64>().unwrap();
    }
    assert_eq!(got, good, "every good span in its trace");
    assert_eq!(ids.len(), good.len(), "one session per trace");
    let dead = read_table(&out, "dead_letters");
    let kinds = column(&dead, "kind");
    assert_eq!(kinds.len() as u64, bad);
    assert!(kinds.iter().all(|k| k == "far_future"), "{kinds:?}");
    assert!(
        column(&dead, "reason")[0].contains("ahead of its split's watermark"),
        "{:?}",
        column(&dead, "reason")
    );
    assert!(s.render().contains("far-future spans to dead letters"));

    // The same input, the guard's bound beyond the skew.
    let unguarded = run_job(
        &job(&input, "3650d"),
        &RunOptions {
            output_dir: Some(tmp.path().join("unguarded")),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(unguarded.event_time.far_future_spans, 0);
    assert!(
        unguarded.sessions.late_spans() > good_spans / 2,
        "{} of {good_spans} good spans late without the guard ({records} records)",
        unguarded.sessions.late_spans()
    );
}

/// Two sources, one ten minutes of event time ahead of the other: without alignment
/// everything the one ahead reads waits in the session windows for the other; with
/// it, the one ahead is paused until the other has caught up (here: ended), so far
/// fewer spans are buffered at once, and the outputs are the same.
#[test]
fn alignment_pauses_a_source_running_ahead_and_changes_no_output() {
    let run = |align: bool| {
        let text = format!(
            "sources:\n\
             \x20 a: {{ type: generator, seed: 1, traces: 1500, traces_per_second: 30, \
                start_time: '2026-01-01T00:00:00Z', late_fraction: 0, \
                watermark: {{ align: {align} }} }}\n\
             \x20 b: {{ type: generator, seed: 2, traces: 1500, traces_per_second: 30, \
                start_time: '2026-01-01T00:10:00Z', late_fraction: 0, \
                watermark: {{ align: {align} }} }}\n\
             operators:\n  s: {{ type: session_window, from: [a, b], gap: 5s }}\n\
             sinks:\n  o: {{ type: parquet, from: [s, s.late_spans] }}\n"
        );
        let job = spanflow::job::load_str(&root().join("ahead.yaml"), &text)
            .unwrap_or_else(|d| panic!("{d}"));
        let dir = tempfile::tempdir().unwrap();
        let s = run_job(
            &job,
            &RunOptions {
                output_dir: Some(dir.path().to_path_buf()),
                ..Default::default()
            },
        )
        .unwrap();
        let rows = crate::support::rows(&read_table(dir.path(), "traces"), &[]);
        (s, rows, dir)
    };
    let (free, free_rows, _d1) = run(false);
    let (aligned, aligned_rows, _d2) = run(true);
    assert_eq!(free.event_time.pauses, 0);
    assert!(aligned.event_time.pauses > 0, "{}", aligned.render());
    assert_eq!(aligned.sessions.late_spans(), 0);
    assert_eq!(free.sessions.late_spans(), 0);
    assert!(aligned_rows == free_rows, "the same traces either way");
    assert!(
        aligned.peak_buffered_spans * 3 < free.peak_buffered_spans,
        "peak buffered spans: {} aligned, {} not",
        aligned.peak_buffered_spans,
        free.peak_buffered_spans
    );
}

/// A live Kafka topic whose partition 1 holds only the first seconds of event time,
/// read to its end before partition 0 receives the rest: partition 1 stays the slowest
/// split (and holds the watermark), but with nothing left to read it cannot catch up,
/// so watermark alignment must not pause partition 0 for it (it used to, until
/// partition 1 went idle: an hour here), and every span is read.
#[test]
fn alignment_reads_on_when_the_slowest_partition_has_caught_up() {
    use spanflow::connectors::kafka::{self, produce};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::time::{Duration, Instant};

    let broker = crate::kafka::Broker::start();
    let topic = "caught_up";
    kafka::create_topics(&broker.brokers, &BTreeMap::new(), &[topic.to_owned()], 2).unwrap();
    let records: Vec<_> = Generator::new(GeneratorConfig {
        traces: 1_200,
        seed: 5,
        traces_per_second: 10.0,
        late_fraction: 0.0,
        garbage_fraction: 0.0,
        ..Default::default()
    })
    .unwrap()
    .collect();
    // Partition 1: the first 10 s; partition 0: the remaining ~110 s.
    let first = records[0].arrival_ns;
    let (slow, rest): (Vec<_>, Vec<_>) = records
        .iter()
        .partition(|r| r.arrival_ns < first + 10_000_000_000);
    assert!(slow.len() >= 5 && slow.len() < records.len() / 4);
    let count = |rs: &[&spanflow::testkit::generator::GeneratedRecord]| {
        rs.iter().map(|r| r.spans as u64).sum::<u64>()
    };
    let spans = count(&slow) + count(&rest);
    let p = produce::KafkaProducer::new(&broker.brokers, &BTreeMap::new()).unwrap();
    for r in &slow {
        p.send(topic, Some(1), None, &r.payload).unwrap();
    }
    p.flush().unwrap();

    // Small fetches and prefetch: partition 0 is read as it arrives, not in one go.
    let text = format!(
        "sources:\n  k:\n    type: kafka\n    brokers: \"{}\"\n    topics: [{topic}]\n    \
         group_id: {topic}\n    start: earliest\n    \
         properties: {{ max.partition.fetch.bytes: \"65536\", queued.min.messages: \"1\", \
         queued.max.messages.kbytes: \"64\" }}\n    \
         watermark: {{ max_out_of_order: 5s, idle_timeout: 1h, max_drift: 30s }}\n\
         operators:\n  s: {{ type: session_window, from: k, gap: 5s }}\n\
         sinks:\n  o: {{ type: parquet, from: [s] }}\n",
        broker.brokers
    );
    let job = spanflow::job::load_str(&root().join("caught_up.yaml"), &text)
        .unwrap_or_else(|d| panic!("{d}"));
    let tmp = tempfile::tempdir().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(AtomicU64::new(0));
    let opts = RunOptions {
        output_dir: Some(tmp.path().to_owned()),
        stop: Some(stop.clone()),
        spans_seen: Some(seen.clone()),
        ..Default::default()
    };
    let handle = std::thread::spawn(move || run_job(&job, &opts));
    let wait = |n: u64, within: Duration| {
        let started = Instant::now();
        while seen.load(Ordering::Relaxed) < n
            && started.elapsed() < within
            && !handle.is_finished()
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait(count(&slow), Duration::from_secs(30));
    assert_eq!(
        seen.load(Ordering::Relaxed),
        count(&slow),
        "partition 1 read"
    );
    // Its end reached (librdkafka reports it right after the last record).
    std::thread::sleep(Duration::from_millis(500));
    for r in &rest {
        p.send(topic, Some(0), None, &r.payload).unwrap();
        p.flush().unwrap();
    }
    wait(spans, Duration::from_secs(60));
    stop.store(true, Ordering::Relaxed);
    let s = handle.join().unwrap().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        seen.load(Ordering::Relaxed),
        spans,
        "every span read within 60 s\n{}",
        s.render()
    );
}
