//! Fast tests of the Kafka connector logic against librdkafka's in-process mock
//! cluster (the end-to-end tests against a real broker are in tests/it/kafka.rs).

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;

use rdkafka::mocking::MockCluster;

use super::produce::{KafkaProducer, split_request};
use super::source::{KafkaEvent, KafkaReader};
use super::*;
use crate::runtime::io::{Fault, Finish, FinishSignal};
use crate::testkit::generator::{Generator, GeneratorConfig};

fn source_config(brokers: &str, topic: &str, group: &str) -> KafkaSourceConfig {
    KafkaSourceConfig {
        brokers: brokers.into(),
        topics: vec![topic.into()],
        group_id: group.into(),
        format: crate::formats::InputFormat::OtlpProto,
        start: "earliest".into(),
        on_no_committed: "earliest".into(),
        end: Some("latest".into()),
        end_offsets: BTreeMap::new(),
        properties: BTreeMap::new(),
        repartition: None,
    }
}

/// Reads a bounded source to its end; returns its events and the finish channel's
/// sender (to commit or abort).
fn read_all(config: &KafkaSourceConfig, finish: Finish) -> Vec<KafkaEvent> {
    let t0 = std::time::Instant::now();
    let mut reader = KafkaReader::connect(config, &[]).expect("connect");
    eprintln!("connect {:?}", t0.elapsed());
    let stop = AtomicBool::new(false);
    let mut events = Vec::new();
    let stats = reader
        .run(
            &stop,
            &mut |e| {
                events.push(e.detach());
                true
            },
            Some(FinishSignal::ready(finish)),
            &(),
        )
        .expect("run");
    eprintln!("run {:?}", t0.elapsed());
    assert!(stats.finished);
    events
}

fn records_by_partition(events: &[KafkaEvent]) -> BTreeMap<i32, Vec<u64>> {
    let mut out: BTreeMap<i32, Vec<u64>> = BTreeMap::new();
    for e in events {
        if let KafkaEvent::Records { runs, offsets, .. } = e {
            let mut offsets = offsets.iter().copied();
            for run in runs {
                out.entry(run.split.partition)
                    .or_default()
                    .extend(offsets.by_ref().take(run.len));
            }
        }
    }
    out
}

fn produce(brokers: &str, topic: &str, per_partition: &[usize]) {
    let p = KafkaProducer::new(brokers, &BTreeMap::new()).unwrap();
    for (part, n) in per_partition.iter().enumerate() {
        for i in 0..*n {
            p.send(topic, Some(part as i32), None, format!("r{i}").as_bytes())
                .unwrap();
        }
    }
    p.flush().unwrap();
}

/// Payloads are handed over where librdkafka fetched them, not copied: the reader's
/// consumer must then outlive them (librdkafka destroys its handle last). Dropping the
/// reader while they are held waits for them, and they stay intact meanwhile.
#[test]
fn payloads_held_past_the_reader_stay_intact_and_hold_its_close() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("t", 2, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    produce(&brokers, "t", &[50, 50]);
    let config = source_config(&brokers, "t", "held");
    let mut reader = KafkaReader::connect(&config, &[]).expect("connect");
    let stop = AtomicBool::new(false);
    let mut held: Vec<(Vec<u64>, Vec<bytes::Bytes>)> = Vec::new();
    reader
        .run(
            &stop,
            &mut |e| {
                if let KafkaEvent::Records {
                    offsets, records, ..
                } = e
                {
                    held.push((offsets, records));
                }
                true
            },
            Some(FinishSignal::ready(Finish::Abort)),
            &(),
        )
        .expect("run");
    let t0 = std::time::Instant::now();
    let closing = std::thread::spawn(move || {
        drop(reader);
        t0.elapsed()
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        !closing.is_finished(),
        "the reader went while its payloads were held"
    );
    let mut seen = 0;
    for (offsets, records) in &held {
        for (o, r) in offsets.iter().zip(records) {
            assert_eq!(r.as_ref(), format!("r{o}").as_bytes());
            seen += 1;
        }
    }
    assert_eq!(seen, 100);
    drop(held);
    let took = closing.join().expect("drop");
    assert!(
        took < super::GroupConsumer::<rdkafka::consumer::DefaultConsumerContext>::CLOSE_TIMEOUT,
        "the close went on once the payloads were dropped ({took:?})"
    );
}

/// Partitions are read a record each in turn, from their own queues: a fetch that
/// brings many records of every partition does not hand them over partition by
/// partition (that read each partition tens of seconds of event time ahead of the
/// next, and alignment could only pause them after the fact). Runs within a chunk
/// keep each partition's records in order.
#[test]
fn partitions_are_read_in_turn_and_in_order() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("t", 4, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    produce(&brokers, "t", &[1000, 1000, 1000, 1000]);
    let events = read_all(&source_config(&brokers, "t", "turns"), Finish::Abort);
    let mut order = Vec::new();
    let mut chunks_mixing = 0;
    for e in &events {
        if let KafkaEvent::Records {
            runs,
            offsets,
            records,
        } = e
        {
            assert_eq!(runs.iter().map(|r| r.len).sum::<usize>(), records.len());
            assert_eq!(offsets.len(), records.len());
            let mut at = 0;
            for run in runs {
                assert!(run.len > 0, "no empty run");
                for i in at..at + run.len {
                    // The payload says which record of its partition it is.
                    assert_eq!(records[i], format!("r{}", offsets[i]).as_bytes());
                    order.push((run.split.partition, offsets[i]));
                }
                at += run.len;
            }
            chunks_mixing += usize::from(runs.len() > 1);
        }
    }
    assert!(
        chunks_mixing > 0,
        "chunks hold records of several partitions"
    );
    let mut next = [0u64; 4];
    for (p, o) in &order {
        let p = usize::try_from(*p).unwrap();
        assert_eq!(*o, next[p], "partition {p} in order, once each");
        next[p] += 1;
    }
    assert_eq!(next, [1000; 4]);
    // Read a fetch at a time, partition after partition, the order would switch
    // partitions a handful of times; in turn, it switches at nearly every record of
    // the partitions fetched so far (a partition whose records have not arrived yet
    // cannot take its turn, so not at every one).
    let switches = order.windows(2).filter(|w| w[0].0 != w[1].0).count();
    assert!(
        switches >= 1000,
        "read in turn: {switches} switches in 4000 records"
    );
}

/// A partition read to its current end is reported caught up only after its last
/// records: records after the report would make it look as if it were reading again,
/// and alignment would then measure the others against a partition that has nothing
/// left to read.
#[test]
fn a_partition_is_caught_up_after_its_last_records() {
    use std::sync::atomic::Ordering;

    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("t", 3, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    produce(&brokers, "t", &[300, 200, 100]);
    let mut live = source_config(&brokers, "t", "eof");
    live.end = None;
    let mut reader = KafkaReader::connect(&live, &[]).expect("connect");
    let stop = AtomicBool::new(false);
    let mut events = Vec::new();
    let mut read = [0usize; 3];
    let mut caught_up = [false; 3];
    let started = std::time::Instant::now();
    reader
        .run(
            &stop,
            &mut |e| {
                match &e {
                    KafkaEvent::Records { runs, .. } => {
                        for run in runs {
                            read[usize::try_from(run.split.partition).unwrap()] += run.len;
                        }
                    }
                    KafkaEvent::CaughtUp(splits) => {
                        for s in splits {
                            let p = usize::try_from(s.partition).unwrap();
                            assert_eq!(
                                read[p],
                                [300, 200, 100][p],
                                "partition {p} caught up after all its records"
                            );
                            caught_up[p] = true;
                        }
                    }
                    _ => {}
                }
                events.push(e.detach());
                if caught_up.iter().all(|c| *c) || started.elapsed().as_secs() > 60 {
                    stop.store(true, Ordering::Relaxed);
                }
                true
            },
            Some(FinishSignal::ready(Finish::Abort)),
            &(),
        )
        .expect("run");
    assert_eq!(caught_up, [true; 3], "every partition reached its end");
}

/// The watermarks of all partitions asked at once equal librdkafka's answer for each
/// partition on its own (empty partitions, one whose oldest records are gone, a second
/// topic).
#[test]
fn all_watermarks_at_once_equal_each_partitions_own() {
    use rdkafka::consumer::{BaseConsumer, Consumer};

    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("a", 4, 1).unwrap();
    cluster.create_topic("b", 2, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    produce(&brokers, "a", &[0, 3, 10, 1]);
    produce(&brokers, "b", &[7, 0]);
    let consumer: BaseConsumer = super::client_config(&brokers, &BTreeMap::new())
        .set("group.id", "marks")
        .create()
        .unwrap();
    // Past the mock's 5 MiB per partition, the oldest records of a/2 go, as retention
    // would take them: its low watermark moves.
    let p = KafkaProducer::new(&brokers, &BTreeMap::new()).unwrap();
    // Bytes lz4 cannot shrink.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let noise: Vec<u8> = (0..600_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    for _ in 0..12 {
        p.send("a", Some(2), None, &noise).unwrap();
    }
    p.flush().unwrap();
    let partitions: Vec<(String, i32)> =
        [("a", 0), ("a", 1), ("a", 2), ("a", 3), ("b", 0), ("b", 1)]
            .iter()
            .map(|(t, p)| ((*t).to_owned(), *p))
            .collect();
    let marks = super::source::watermarks(&consumer, &partitions).expect("watermarks");
    assert_eq!(marks.len(), partitions.len());
    for (t, p) in &partitions {
        let own = consumer
            .fetch_watermarks(t, *p, std::time::Duration::from_secs(10))
            .unwrap();
        assert_eq!(marks[&(t.clone(), *p)], own, "{t}/{p}");
    }
    let (low, high) = marks[&("a".to_owned(), 2)];
    assert!(low > 0 && high == 22, "a/2 from {low} to {high}");
    assert_eq!(marks[&("b".to_owned(), 1)], (0, 0));
}

/// The CPU time the calling thread has used.
fn thread_cpu() -> std::time::Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    std::time::Duration::new(
        u64::try_from(ts.tv_sec).unwrap(),
        u32::try_from(ts.tv_nsec).unwrap(),
    )
}

/// A live reader with nothing left to read sleeps until librdkafka has something for
/// it, rather than polling its queues every few milliseconds: that cost ~8 ms of CPU
/// per idle second in a release build (a group join, a quiet topic), as much as 5% of
/// a short run.
#[test]
fn an_idle_reader_sleeps_and_still_sees_new_records() {
    use std::sync::atomic::Ordering;
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("t", 4, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    produce(&brokers, "t", &[10, 10, 10, 10]);
    let mut live = source_config(&brokers, "t", "idle");
    live.end = None;
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let reader = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut reader = KafkaReader::connect(&live, &[]).expect("connect");
            let mut read = 0;
            let mut idle_since = None;
            reader
                .run(
                    &stop,
                    &mut |e| {
                        if let KafkaEvent::Records { records, .. } = &e {
                            read += records.len();
                            tx.send(read).unwrap();
                        }
                        if read == 45 && idle_since.is_none() {
                            idle_since = Some(thread_cpu());
                        }
                        true
                    },
                    Some(FinishSignal::ready(Finish::Abort)),
                    &(),
                )
                .expect("run");
            thread_cpu() - idle_since.expect("every record read")
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let wait_for = |n: usize| {
        while let Ok(read) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            if read >= n {
                return;
            }
        }
        panic!("{n} records not read in time");
    };
    wait_for(40);
    // Asleep, it still reads what arrives.
    std::thread::sleep(Duration::from_millis(300));
    produce(&brokers, "t", &[0, 0, 5, 0]);
    wait_for(45);
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let idle_cpu = reader.join().unwrap();
    // About 2.6 ms in a test build (mostly the Lag report and the run's end); polling
    // every 5 ms took 15-20 ms here.
    assert!(
        idle_cpu < Duration::from_millis(8),
        "the reader used {idle_cpu:?} of CPU in ~1 s with nothing to read"
    );
}

/// A router that handles what the reader sends a chunk at a time, slowly.
struct SlowRouter {
    routed: std::sync::atomic::AtomicU64,
}

impl super::source::CheckpointHooks for SlowRouter {
    fn barrier_due(&self) -> Option<u64> {
        None
    }
    fn durable(&self) -> u64 {
        0
    }
    fn routed(&self) -> u64 {
        self.routed.load(std::sync::atomic::Ordering::SeqCst)
    }
    fn wait_routed(&self, _seen: u64, _timeout: std::time::Duration) {
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
}

/// A [`SlowRouter`] with its thread, for a topic of 4 partitions: it handles the runs
/// sent to it 2 ms apart.
struct RouterThread {
    hooks: std::sync::Arc<SlowRouter>,
    /// Per partition, records handled; updated before `routed` says so.
    handled: std::sync::Arc<std::sync::Mutex<[usize; 4]>>,
    tx: std::sync::mpsc::Sender<Vec<(usize, usize)>>,
    thread: std::thread::JoinHandle<()>,
}

impl RouterThread {
    fn start() -> Self {
        let hooks = std::sync::Arc::new(SlowRouter {
            routed: Default::default(),
        });
        let handled = std::sync::Arc::new(std::sync::Mutex::new([0usize; 4]));
        let (tx, rx) = std::sync::mpsc::channel::<Vec<(usize, usize)>>();
        let thread = {
            let (hooks, handled) = (hooks.clone(), handled.clone());
            std::thread::spawn(move || {
                for runs in rx {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                    let mut h = handled.lock().unwrap();
                    for (p, n) in &runs {
                        h[*p] += n;
                    }
                    let n: usize = runs.iter().map(|(_, n)| n).sum();
                    hooks
                        .routed
                        .fetch_add(n as u64, std::sync::atomic::Ordering::SeqCst);
                }
            })
        };
        RouterThread {
            hooks,
            handled,
            tx,
            thread,
        }
    }

    /// A chunk's runs as (partition, records).
    fn runs(runs: &[super::source::Run]) -> Vec<(usize, usize)> {
        runs.iter()
            .map(|r| (usize::try_from(r.split.partition).unwrap(), r.len))
            .collect()
    }

    fn handled(&self) -> [usize; 4] {
        *self.handled.lock().unwrap()
    }

    fn send(&self, runs: Vec<(usize, usize)>) {
        self.tx.send(runs).unwrap();
    }

    /// Waits until it handled everything sent.
    fn join(self) {
        drop(self.tx);
        self.thread.join().unwrap();
    }
}

/// A partition has at most its share of the in-flight bound read and not yet handled by
/// the router: alignment's pause reaches it after that many records, however fast the
/// reader. Waiting for the router loses nothing and keeps each partition in order.
#[test]
fn a_partition_reads_ahead_of_the_router_by_a_bounded_number_of_records() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("t", 4, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    produce(&brokers, "t", &[500; 4]);
    let mut reader =
        KafkaReader::connect(&source_config(&brokers, "t", "inflight"), &[]).expect("connect");
    let router = RouterThread::start();
    let bound = super::source::in_flight_bound(4);
    let stop = AtomicBool::new(false);
    let mut sent = [0usize; 4];
    let mut most_ahead = 0;
    // The most a partition ran ahead beyond the bound of the moment: once a partition
    // has read all its records, the others share its part of the bound.
    let mut beyond = 0isize;
    let mut events = Vec::new();
    reader
        .run(
            &stop,
            &mut |e| {
                if let KafkaEvent::Records { runs, .. } = &e {
                    let runs = RouterThread::runs(runs);
                    for (p, n) in &runs {
                        sent[*p] += n;
                    }
                    let h = router.handled();
                    let reading = sent.iter().filter(|n| **n < 500).count().max(1);
                    let share = super::source::in_flight_bound(reading);
                    for p in 0..4 {
                        most_ahead = most_ahead.max(sent[p] - h[p]);
                        beyond = beyond.max((sent[p] - h[p]) as isize - share as isize);
                    }
                    router.send(runs);
                }
                events.push(e.detach());
                true
            },
            Some(FinishSignal::ready(Finish::Abort)),
            &*router.hooks,
        )
        .expect("run");
    router.join();
    // The first poll, before the partitions' own queues exist, may bring one record
    // from the consumer's queue.
    assert!(
        beyond <= 1,
        "a partition ran {beyond} records ahead of the router beyond its share of the bound"
    );
    assert!(
        most_ahead >= bound / 2,
        "the reader should have waited for the slow router ({most_ahead} ahead)"
    );
    let by_partition = records_by_partition(&events);
    for p in 0..4 {
        let want: Vec<u64> = (0..500).collect();
        assert_eq!(by_partition.get(&p), Some(&want), "partition {p}");
    }
}

/// Large records are bounded by their bytes too: a partition has at most its share of
/// the in-flight bytes (plus the record that crossed it) read and not yet handled by the
/// router. Whole requests, as a topic not keyed by trace id holds them, would otherwise
/// run tens of seconds of a partition's event time ahead within the record bound.
#[test]
fn a_partition_reads_ahead_of_the_router_by_a_bounded_number_of_bytes() {
    const RECORD: usize = 10 << 10;
    const TOTAL: usize = 16 * RECORD;
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("t", 4, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let p = KafkaProducer::new(&brokers, &BTreeMap::new()).unwrap();
    for part in 0..4 {
        for _ in 0..100 {
            p.send("t", Some(part), None, &[b'x'; RECORD]).unwrap();
        }
    }
    p.flush().unwrap();
    // The record bound alone would let a partition run at least four times its share
    // of the bytes ahead.
    assert!(super::source::in_flight_bound(4) * RECORD >= 4 * (TOTAL / 4));
    let mut reader = KafkaReader::connect(&source_config(&brokers, "t", "inflight-bytes"), &[])
        .expect("connect")
        .with_in_flight_bytes(TOTAL);
    let router = RouterThread::start();
    let stop = AtomicBool::new(false);
    let mut sent = [0usize; 4];
    let (mut most_ahead, mut beyond) = (0usize, 0isize);
    let mut seen = [0usize; 4];
    reader
        .run(
            &stop,
            &mut |e| {
                if let KafkaEvent::Records { runs, records, .. } = &e {
                    let runs = RouterThread::runs(runs);
                    let mut records = records.iter();
                    for (p, n) in &runs {
                        sent[*p] += n;
                        for r in records.by_ref().take(*n) {
                            assert_eq!(r.len(), RECORD);
                            seen[*p] += 1;
                        }
                    }
                    let h = router.handled();
                    let reading = sent.iter().filter(|n| **n < 100).count().max(1);
                    // In records of RECORD bytes: the share, and the one that crosses it.
                    let share = (TOTAL / reading).div_ceil(RECORD);
                    for p in 0..4 {
                        most_ahead = most_ahead.max(sent[p] - h[p]);
                        beyond = beyond.max((sent[p] - h[p]) as isize - share as isize);
                    }
                    router.send(runs);
                }
                true
            },
            Some(FinishSignal::ready(Finish::Abort)),
            &*router.hooks,
        )
        .expect("run");
    router.join();
    assert_eq!(seen, [100; 4], "every record, once");
    // The first poll, before the partitions' own queues exist, may bring one record
    // from the consumer's queue.
    assert!(
        beyond <= 1,
        "a partition ran {beyond} records of {RECORD} bytes ahead of the router beyond its \
         share of {TOTAL} bytes"
    );
    assert!(
        most_ahead >= TOTAL / 4 / RECORD / 2,
        "the reader should have waited for the slow router ({most_ahead} ahead)"
    );
}

/// A bounded run of one instance assigns itself every partition: it does not wait for
/// the group's first rebalance (the mock cluster, like a broker, delays it 3 s), and it
/// still commits to the group.
#[test]
fn a_bounded_run_alone_reads_without_waiting_for_the_group() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("t", 3, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    produce(&brokers, "t", &[5, 0, 7]);
    let config = source_config(&brokers, "t", "alone");
    let started = std::time::Instant::now();
    let events = read_all(&config, Finish::Commit);
    let took = started.elapsed();
    assert!(
        took < std::time::Duration::from_millis(2500),
        "the bounded run took {took:?}, as if it had joined the group"
    );
    let by_part = records_by_partition(&events);
    assert_eq!(by_part.get(&0), Some(&(0..5).collect::<Vec<u64>>()));
    assert_eq!(by_part.get(&2), Some(&(0..7).collect::<Vec<u64>>()));
    // The next run from the group's commits starts at the end.
    let mut again = config.clone();
    again.start = "committed".into();
    assert!(records_by_partition(&read_all(&again, Finish::Abort)).is_empty());
}

#[test]
fn bounded_read_sees_every_record_once_in_order_and_commits() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("t", 3, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    produce(&brokers, "t", &[5, 0, 7]);

    let config = source_config(&brokers, "t", "g1");
    // Explicit end offsets stop each listed partition there.
    let mut upto = source_config(&brokers, "t", "g0");
    upto.end = None;
    upto.end_offsets = BTreeMap::from([("t".to_owned(), BTreeMap::from([(0, 2), (2, 4)]))]);
    let by_part = records_by_partition(&read_all(&upto, Finish::Abort));
    assert_eq!(by_part.get(&0), Some(&vec![0, 1]));
    assert_eq!(by_part.get(&2), Some(&vec![0, 1, 2, 3]));

    let events = read_all(&config, Finish::Commit);
    // Assignment precedes the records of a partition, and the reader ends with
    // EndOfInput.
    let first_assign = events
        .iter()
        .position(|e| matches!(e, KafkaEvent::Assigned(_)))
        .expect("an assignment");
    let first_records = events
        .iter()
        .position(|e| matches!(e, KafkaEvent::Records { .. }))
        .expect("records");
    assert!(first_assign < first_records);
    let Some(KafkaEvent::EndOfInput(positions)) = events.last() else {
        panic!("ends with EndOfInput")
    };
    assert_eq!(
        positions,
        &vec![
            ("t".to_owned(), 0, 5),
            ("t".to_owned(), 1, 0),
            ("t".to_owned(), 2, 7)
        ]
    );
    let by_part = records_by_partition(&events);
    assert_eq!(by_part.get(&0), Some(&(0..5).collect::<Vec<u64>>()));
    assert_eq!(by_part.get(&1), None, "an empty partition yields nothing");
    assert_eq!(by_part.get(&2), Some(&(0..7).collect::<Vec<u64>>()));
    // Every partition is reported finished (revoked) so it stops holding the watermark.
    let revoked: Vec<i32> = events
        .iter()
        .filter_map(|e| match e {
            KafkaEvent::Revoked(s) => Some(s.iter().map(|s| s.partition).collect::<Vec<_>>()),
            _ => None,
        })
        .flatten()
        .collect();
    let mut revoked_sorted = revoked.clone();
    revoked_sorted.sort();
    assert_eq!(revoked_sorted, vec![0, 1, 2]);

    // The group's committed offsets are the next offsets to read. (The mock cluster
    // ignores LeaveGroup, so a second member of the same group would wait out the
    // session timeout: resuming a group is tested against the real broker, in
    // tests/it/kafka.rs.)
    assert_eq!(committed(&brokers, "t", "g1", 3), vec![5, 0, 7]);

    // Abort commits nothing.
    let _ = read_all(&source_config(&brokers, "t", "g2"), Finish::Abort);
    assert_eq!(
        committed(&brokers, "t", "g2", 3),
        vec![-1001; 3],
        "none committed"
    );
}

/// Committed offsets of `group` per partition (-1001, librdkafka's "invalid": none).
fn committed(brokers: &str, topic: &str, group: &str, partitions: i32) -> Vec<i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = client_config(brokers, &BTreeMap::new())
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_range(topic, 0, partitions - 1);
    let got = c
        .committed_offsets(tpl, std::time::Duration::from_secs(10))
        .unwrap();
    got.elements()
        .iter()
        .map(|e| e.offset().to_raw().unwrap_or(-1001))
        .collect()
}

#[test]
fn latest_start_and_missing_topic() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("t", 2, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    produce(&brokers, "t", &[3, 3]);
    let mut config = source_config(&brokers, "t", "g2");
    config.start = "latest".into();
    let events = read_all(&config, Finish::Abort);
    assert!(records_by_partition(&events).is_empty());

    let missing = source_config(&brokers, "nope", "g3");
    let err = KafkaReader::connect(&missing, &[]).err().expect("an error");
    assert!(err.message.contains("nope"), "{err}");
    assert_eq!(
        err.fault,
        Fault::User,
        "a missing topic is the job's to fix"
    );
}

#[test]
fn config_validation_names_each_problem() {
    let mut c = source_config("127.0.0.1:1", "ok.topic", "g");
    assert!(c.validate().is_empty());
    c.topics = vec!["bad topic".into()];
    c.start = "yesterday".into();
    c.end = Some("2020-01-01T00:00:00Z".into());
    c.on_no_committed = "never".into();
    c.properties.insert("group.id".into(), "x".into());
    let issues = c.validate();
    let paths: Vec<String> = issues.iter().map(|i| i.path.join(".")).collect();
    assert_eq!(
        paths,
        vec![
            "topics.0",
            "start",
            "on_no_committed",
            "properties.group.id"
        ]
    );
    c.start = "2021-01-01T00:00:00Z".into();
    let issues = c.validate();
    assert!(
        issues
            .iter()
            .any(|i| i.path == ["end"] && i.message.contains("after")),
        "{issues:?}"
    );

    let sink = KafkaSinkConfig {
        brokers: "127.0.0.1:1".into(),
        topic_prefix: "p.".into(),
        topics: BTreeMap::from([("red_metrics".into(), "metrics".into())]),
        format: OutputFormat::Avro,
        formats: BTreeMap::from([
            ("spans".into(), OutputFormat::OtlpProto),
            ("traces".into(), OutputFormat::OtlpProto),
        ]),
        create_topics_partitions: 0,
        properties: BTreeMap::from([("transactional.id".into(), "x".into())]),
        transactional_id: Some(" ".into()),
    };
    let issues = sink.validate();
    let paths: Vec<String> = issues.iter().map(|i| i.path.join(".")).collect();
    assert_eq!(
        paths,
        [
            "formats.traces",
            "properties.transactional.id",
            "transactional_id"
        ],
        "{issues:?}"
    );
    assert_eq!(sink.topic_of("red_metrics"), "metrics");
    assert_eq!(sink.topic_of("traces"), "p.traces");
    assert_eq!(sink.format_of("spans"), OutputFormat::OtlpProto);
    assert_eq!(sink.format_of("red_metrics"), OutputFormat::Avro);
}

#[test]
fn split_request_keeps_every_span_and_groups_by_trace() {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;

    let mut g = Generator::new(GeneratorConfig {
        traces: 50,
        garbage_fraction: 0.0,
        ..Default::default()
    })
    .unwrap();
    let mut total = 0;
    let mut seen: BTreeMap<Vec<u8>, i32> = BTreeMap::new();
    while let Some(r) = g.next_record() {
        let parts = split_request(&r.payload, 4, 0);
        for (p, bytes) in parts {
            let req = ExportTraceServiceRequest::decode(bytes.as_slice()).unwrap();
            for rs in &req.resource_spans {
                assert!(rs.resource.is_some(), "resources are kept");
                for ss in &rs.scope_spans {
                    for s in &ss.spans {
                        total += 1;
                        let prev = seen.insert(s.trace_id.clone(), p);
                        assert!(
                            prev.is_none_or(|q| q == p),
                            "a trace stays in one partition"
                        );
                    }
                }
            }
        }
    }
    assert_eq!(total, g.ground_truth().spans);
    // Garbage is passed through whole, to the fallback partition.
    assert_eq!(
        split_request(b"\xff\xff", 4, 3),
        vec![(3, b"\xff\xff".to_vec())]
    );
}

/// schemas/avro/<table>.avsc are generated from the tables' Arrow schemas; this fails
/// when they drift (regenerate with `UPDATE_SCHEMA=1 cargo test --lib kafka::`).
#[test]
fn shipped_avro_schemas_are_current() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/avro");
    let update = std::env::var_os("UPDATE_SCHEMA").is_some();
    if update {
        std::fs::create_dir_all(&dir).unwrap();
    }
    for (table, json) in encode::shipped_avro_schemas() {
        let path = dir.join(format!("{table}.avsc"));
        let text = serde_json::to_string_pretty(&json).unwrap() + "\n";
        if update {
            std::fs::write(&path, &text).unwrap();
        }
        let shipped = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_SCHEMA=1 writes it)", path.display()));
        assert_eq!(
            shipped,
            text,
            "{} is stale: regenerate with UPDATE_SCHEMA=1 cargo test --lib kafka::",
            path.display()
        );
        // And it is a valid Avro schema.
        encode::parse_avro_schema(&shipped).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

/// Every table's rows encode as Avro and decode back with the shipped schema; JSON
/// carries the same values, ids as hex.
#[test]
fn rows_round_trip_through_avro_and_json() {
    use apache_avro::types::Value as Avro;
    use arrow::array::RecordBatch;

    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/avro");
    let job_text = r#"
sources:
  gen: { type: generator, traces: 60, seed: 3, traces_per_second: 2, spans_per_record: 16, garbage_fraction: 0.1, late_fraction: 0.1 }
operators:
  sessions: { type: session_window, from: gen, gap: 5s }
  sampler:
    type: tail_sampling
    from: sessions
    policies: [{ name: all, type: probabilistic, percentage: 100 }]
  metrics: { type: red_metrics, from: sampler, interval: 10s }
  graph: { type: service_graph, from: sampler, interval: 10s }
  alerts:
    type: alerts
    from: metrics
    rules: [{ name: busy, metric: service_node, value: requests, above: 0 }]
sinks:
  out:
    type: parquet
    from: [sampler, sampler.spans, sessions.late_spans, gen.dead_letters, metrics, metrics.exemplars, graph, alerts]
"#;
    let tmp = tempfile::tempdir().unwrap();
    let job = crate::job::load_str(&tmp.path().join("j.yaml"), job_text).unwrap();
    crate::job::run_job(
        &job,
        &crate::runtime::RunOptions {
            output_dir: Some(tmp.path().to_path_buf()),
            parallelism: Some(1),
            ..Default::default()
        },
    )
    .unwrap();
    for (table, schema) in crate::tables::all_schemas() {
        let mut batches: Vec<RecordBatch> = Vec::new();
        let tdir = tmp.path().join(table);
        for e in std::fs::read_dir(&tdir).unwrap() {
            let f = std::fs::File::open(e.unwrap().path()).unwrap();
            let r = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
                .unwrap()
                .build()
                .unwrap();
            batches.extend(r.map(Result::unwrap));
        }
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        assert!(rows > 0, "{table} has rows to test with");
        let avsc = std::fs::read_to_string(dir.join(format!("{table}.avsc"))).unwrap();
        let avro_schema = encode::parse_avro_schema(&avsc).unwrap();
        let reader = apache_avro::GenericSingleObjectReader::builder()
            .schema(avro_schema)
            .build()
            .unwrap();
        let mut avro = encode::RowEncoder::new(table, &schema, OutputFormat::Avro).unwrap();
        let mut json = encode::RowEncoder::new(table, &schema, OutputFormat::Json).unwrap();
        let mut decoded = 0;
        for b in &batches {
            let mut values = Vec::new();
            avro.encode(b, &mut |_, v| {
                values.push(
                    reader
                        .read_value(&mut &v[..])
                        .map_err(|e| crate::runtime::io::ConnectorError::internal(e.to_string()))?,
                );
                Ok(())
            })
            .unwrap();
            let mut jsons = Vec::new();
            json.encode(b, &mut |k, v| {
                jsons.push((
                    k.to_owned(),
                    serde_json::from_slice::<serde_json::Value>(v).unwrap(),
                ));
                Ok(())
            })
            .unwrap();
            assert_eq!(values.len(), b.num_rows());
            assert_eq!(jsons.len(), b.num_rows());
            for (row, (v, (key, j))) in values.iter().zip(&jsons).enumerate() {
                let Avro::Record(fields) = v else {
                    panic!("{table}: not a record: {v:?}")
                };
                assert_eq!(fields.len(), schema.fields().len());
                assert_eq!(key, &avro.key(b, row));
                // Same field names in both, ids as hex in JSON.
                for (name, value) in fields {
                    let jv = &j[name.as_str()];
                    match value {
                        Avro::Fixed(_, bytes) => {
                            assert_eq!(jv, &serde_json::json!(hex::encode(bytes)))
                        }
                        Avro::Long(l) => assert_eq!(jv.as_i64(), Some(*l), "{table}.{name}"),
                        Avro::TimestampNanos(l) => assert_eq!(jv.as_i64(), Some(*l)),
                        Avro::String(s) => assert_eq!(jv.as_str(), Some(s.as_str())),
                        Avro::Boolean(x) => assert_eq!(jv.as_bool(), Some(*x)),
                        _ => {}
                    }
                }
            }
            decoded += values.len();
        }
        assert_eq!(decoded, rows);
    }
}

/// A record that cannot be delivered (no broker) fails the flush with a message naming
/// the destination, instead of being dropped.
#[test]
fn undeliverable_records_fail_the_flush() {
    // A port nothing listens on (bound, then closed).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let p = KafkaProducer::new(
        &format!("127.0.0.1:{port}"),
        &BTreeMap::from([("message.timeout.ms".to_owned(), "1500".to_owned())]),
    )
    .unwrap();
    p.send("nowhere", Some(0), Some(b"k"), b"v").unwrap();
    let err = p.flush().expect_err("delivery must fail");
    assert!(err.message.contains("could not be delivered"), "{err}");
    assert!(err.message.contains("nowhere"), "{err}");
    assert_eq!(
        err.fault,
        Fault::External,
        "an unreachable broker may come back"
    );
}

/// Every record of `topic` (all partitions, from the start), as (key, value).
fn consume(brokers: &str, topic: &str, partitions: i32) -> Vec<(Vec<u8>, Vec<u8>)> {
    use rdkafka::Message;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "reader")
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let mut at_end = 0;
    let t0 = std::time::Instant::now();
    while at_end < partitions && t0.elapsed() < std::time::Duration::from_secs(20) {
        match c.poll(std::time::Duration::from_millis(100)) {
            Some(Ok(m)) => out.push((
                m.key().unwrap_or_default().to_vec(),
                m.payload().unwrap_or_default().to_vec(),
            )),
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => at_end += 1,
            _ => {}
        }
    }
    out
}

/// A transactional `kafka` sink in a checkpointed job (librdkafka's mock cluster, which
/// runs the transaction protocol): every row reaches its topic exactly once, through one
/// transaction per table and checkpoint. The mock cannot show that `read_committed`
/// consumers miss uncommitted records (it does not implement the isolation), and the
/// test broker (tansu) has no transactions: that part is not proven here.
#[test]
fn a_transactional_sink_produces_every_row_once_per_checkpoint() {
    let cluster = MockCluster::new(1).unwrap();
    for t in ["tx.traces", "tx.red_metrics"] {
        cluster.create_topic(t, 2, 1).unwrap();
    }
    let brokers = cluster.bootstrap_servers();
    let job_text = format!(
        r#"
sources:
  gen: {{ type: generator, traces: 1500, seed: 5, traces_per_second: 40 }}
operators:
  sessions: {{ type: session_window, from: gen, gap: 5s }}
  sampler:
    type: tail_sampling
    from: sessions
    policies: [{{ name: some, type: probabilistic, percentage: 50 }}]
  metrics: {{ type: red_metrics, from: sampler, interval: 10s }}
sinks:
  out: {{ type: parquet, from: [sampler, metrics] }}
  bus:
    type: kafka
    from: [sampler, metrics]
    brokers: "{brokers}"
    topic_prefix: "tx."
    format: json
    transactional_id: spanflow-test
"#
    );
    let tmp = tempfile::tempdir().unwrap();
    let job = crate::job::load_str(&tmp.path().join("j.yaml"), &job_text).unwrap();
    let s = crate::job::run_job(
        &job,
        &crate::runtime::RunOptions {
            output_dir: Some(tmp.path().join("out")),
            parallelism: Some(2),
            checkpoint_dir: Some(tmp.path().join("chk")),
            checkpoint_interval: Some(std::time::Duration::from_millis(10)),
            ..Default::default()
        },
    )
    .unwrap();
    // At least one checkpoint's transactions, and the last rows' at the end.
    assert!(s.checkpoints.completed >= 1, "{:?}", s.checkpoints);
    for table in ["traces", "red_metrics"] {
        let records = consume(&brokers, &format!("tx.{table}"), 2);
        let rows = s
            .outputs
            .iter()
            .find(|o| o.table == table && o.sink == "bus")
            .map(|o| o.rows)
            .unwrap();
        assert!(rows > 0, "{table}");
        assert_eq!(records.len() as u64, rows, "{table}: each row once");
        let distinct: std::collections::BTreeSet<_> = records.iter().collect();
        assert_eq!(distinct.len(), records.len(), "{table}: no record twice");
    }
}

/// A repartition stage is refused where it cannot run (a bounded source, another
/// format, its own input as the internal topic, no partitions), and its defaults name
/// the internal topic and the analytics' group after the source's group.
#[test]
fn a_repartition_stage_is_validated_and_named_after_the_group() {
    let paths = |c: &KafkaSourceConfig| -> Vec<(String, String)> {
        c.validate()
            .into_iter()
            .map(|i| (i.path.join("."), i.message))
            .collect()
    };
    let mut c = source_config("127.0.0.1:9", "spans", "g");
    assert!(paths(&c).is_empty());
    c.repartition = Some(RepartitionConfig {
        topic: None,
        partitions: Some(0),
        group_id: None,
    });
    let found = paths(&c);
    assert!(
        found
            .iter()
            .any(|(p, m)| p == "repartition" && m.contains("unbounded"))
    );
    assert!(found.iter().any(|(p, _)| p == "repartition.partitions"));
    c.end = None;
    c.format = crate::formats::InputFormat::OtlpJson;
    if let Some(r) = &mut c.repartition {
        r.partitions = None;
        r.topic = Some("spans".into());
    }
    let found = paths(&c);
    assert!(
        found
            .iter()
            .any(|(p, m)| p == "repartition" && m.contains("otlp_proto"))
    );
    assert!(
        found
            .iter()
            .any(|(p, m)| p == "repartition.topic" && m.contains("own topics"))
    );
    assert_eq!(found.len(), 2, "{found:?}");
    c.format = crate::formats::InputFormat::OtlpProto;
    if let Some(r) = &mut c.repartition {
        r.topic = None;
    }
    assert!(paths(&c).is_empty());
    assert_eq!(c.repartition_topic().as_deref(), Some("g.by-trace"));
    let a = c.analytics_source().unwrap();
    assert_eq!(
        (a.topics, a.group_id, a.repartition),
        (
            vec!["g.by-trace".to_owned()],
            "g.analytics".to_owned(),
            None
        )
    );
}

/// Each piece decoded, for comparing splits by what they mean rather than their bytes
/// (the wire splitter writes a resource's fields before its scopes, prost in field order).
fn decoded_pieces(
    pieces: &[(i32, Vec<u8>)],
) -> Vec<(
    i32,
    opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest,
)> {
    use prost::Message;
    pieces
        .iter()
        .map(|(p, b)| {
            let req = opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest::decode(
                b.as_slice(),
            )
            .expect("a piece decodes");
            (*p, req)
        })
        .collect()
}

#[test]
fn the_wire_splitter_matches_prost_on_generated_requests() {
    use super::produce::{try_split, try_split_prost};
    use crate::formats::otlp_split::split_by_trace;

    for spans_per_record in [1, 64, 512] {
        let mut g = Generator::new(GeneratorConfig {
            traces: 200,
            spans_per_record,
            garbage_fraction: 0.0,
            ..Default::default()
        })
        .unwrap();
        while let Some(r) = g.next_record() {
            for partitions in [1, 3, 8, 64] {
                let reference = try_split_prost(&r.payload, partitions).expect("decodes");
                let wire = split_by_trace(&r.payload, |id| {
                    super::produce::partition_of(id, partitions)
                })
                .expect("the generator's requests are well formed");
                assert_eq!(decoded_pieces(&wire), decoded_pieces(&reference));
                assert_eq!(try_split(&r.payload, partitions), Some(wire));
            }
            // The latest span end, as the analytics' watermark sees it, and none past
            // the bound.
            let ends: Vec<u64> = decoded_pieces(&try_split_prost(&r.payload, 1).unwrap())
                .iter()
                .flat_map(|(_, req)| req.resource_spans.iter())
                .flat_map(|rs| rs.scope_spans.iter())
                .flat_map(|ss| ss.spans.iter())
                .map(|s| s.end_time_unix_nano)
                .collect();
            let max = ends.iter().copied().max();
            let timed = |bound| {
                crate::formats::otlp_split::split_by_trace_timed(&r.payload, |_| 0, bound)
                    .unwrap()
                    .max_end_ns
            };
            assert_eq!(timed(u64::MAX), max);
            assert_eq!(timed(0), None, "0: no bound, nothing counted");
            if let Some(m) = max {
                let below = ends.iter().copied().filter(|e| *e < m).max();
                assert_eq!(timed(m - 1), below);
            }
        }
    }
}

mod split_props {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{
        AnyValue, InstrumentationScope, KeyValue, any_value,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use proptest::prelude::*;
    use prost::Message;

    use super::super::produce::{try_split, try_split_prost};
    use super::decoded_pieces;

    fn kv() -> impl Strategy<Value = KeyValue> {
        ("[a-z.]{0,8}", "[a-zé]{0,8}").prop_map(|(k, v)| KeyValue {
            key: k,
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(v)),
            }),
            ..Default::default()
        })
    }

    fn span() -> impl Strategy<Value = Span> {
        // Few distinct trace ids, so traces have several spans; some empty or of odd
        // length, which must still go to one partition.
        (
            prop_oneof![
                (0u8..6).prop_map(|t| vec![t; 16]),
                Just(Vec::new()),
                (0u8..3).prop_map(|t| vec![t; 5]),
            ],
            "[a-z]{0,6}",
            prop::collection::vec(kv(), 0..3),
        )
            .prop_map(|(trace_id, name, attributes)| Span {
                trace_id,
                span_id: vec![7; 8],
                name,
                attributes,
                ..Default::default()
            })
    }

    fn scope_spans() -> impl Strategy<Value = ScopeSpans> {
        (
            prop::option::of("[a-z]{0,5}".prop_map(|name| InstrumentationScope {
                name,
                version: "1.2.3".into(),
                ..Default::default()
            })),
            prop::collection::vec(span(), 0..12),
            "[a-z]{0,4}",
        )
            .prop_map(|(scope, spans, schema_url)| ScopeSpans {
                scope,
                spans,
                schema_url,
            })
    }

    fn request() -> impl Strategy<Value = ExportTraceServiceRequest> {
        prop::collection::vec(
            (
                prop::option::of(prop::collection::vec(kv(), 0..4).prop_map(|attributes| {
                    Resource {
                        attributes,
                        ..Default::default()
                    }
                })),
                prop::collection::vec(scope_spans(), 0..4),
                "[a-z]{0,4}",
            )
                .prop_map(|(resource, scope_spans, schema_url)| ResourceSpans {
                    resource,
                    scope_spans,
                    schema_url,
                }),
            0..4,
        )
        .prop_map(|resource_spans| ExportTraceServiceRequest { resource_spans })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Whatever prost splits, the wire splitter splits the same way.
        #[test]
        fn the_wire_splitter_agrees_with_prost(req in request(), partitions in 1i32..12) {
            let bytes = req.encode_to_vec();
            let reference = try_split_prost(&bytes, partitions).expect("decodes");
            let got = try_split(&bytes, partitions).expect("splits");
            prop_assert_eq!(decoded_pieces(&got), decoded_pieces(&reference));
        }

        /// Damaged records: where prost still decodes one, the split is prost's.
        #[test]
        fn damaged_records_split_as_prost_splits_them(
            req in request(),
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut bytes = req.encode_to_vec();
            if bytes.is_empty() {
                return Ok(());
            }
            for (at, b) in flips {
                let i = at.index(bytes.len());
                bytes[i] = b;
            }
            bytes.truncate(cut.index(bytes.len() + 1));
            if let Some(reference) = try_split_prost(&bytes, 5) {
                let got = try_split(&bytes, 5).expect("prost decodes it, so it splits");
                prop_assert_eq!(decoded_pieces(&got), decoded_pieces(&reference));
            }
        }
    }
}

mod pacing {
    use std::collections::BTreeSet;
    use std::time::{Duration, Instant};

    use super::super::repartition::Pacing;
    use crate::runtime::watermark::WatermarkSettings;

    const S: u64 = 1_000_000_000;

    fn pacing() -> Pacing {
        Pacing::new(&WatermarkSettings {
            max_out_of_order: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            max_drift: Some(Duration::from_secs(30)),
            max_ahead: Duration::from_secs(3600),
            wall_clock_lag: None,
        })
        .expect("alignment is on")
    }

    fn parts(ps: &[i32]) -> BTreeSet<(String, i32)> {
        ps.iter().map(|p| ("in".to_owned(), *p)).collect()
    }

    fn names(v: &[(String, i32)]) -> Vec<i32> {
        v.iter().map(|(_, p)| *p).collect()
    }

    #[test]
    fn a_partition_ahead_by_more_than_the_drift_waits_for_the_slowest() {
        let mut p = pacing();
        let t0 = Instant::now();
        let all = parts(&[0, 1, 2]);
        assert_eq!(p.decide(&all, t0), (vec![], vec![]));
        p.record(("in", 0), Some(100 * S), t0);
        p.record(("in", 1), Some(110 * S), t0);
        // Partition 2 has read nothing: it is the slowest of all, so both wait for it.
        let (pause, resume) = p.decide(&all, t0);
        assert_eq!((names(&pause), names(&resume)), (vec![0, 1], vec![]));
        p.record(("in", 2), Some(95 * S), t0);
        let (pause, resume) = p.decide(&all, t0);
        assert_eq!((names(&pause), names(&resume)), (vec![], vec![0, 1]));
        // 1 runs 31 s ahead of 2: paused; it resumes only within half the drift of
        // the slowest (0 at 100 s, then 2 at 105 s).
        p.record(("in", 1), Some(126 * S), t0);
        assert_eq!(names(&p.decide(&all, t0).0), vec![1]);
        p.record(("in", 2), Some(105 * S), t0);
        assert_eq!(
            p.decide(&all, t0),
            (vec![], vec![]),
            "21 s behind is not enough"
        );
        p.record(("in", 0), Some(112 * S), t0);
        p.record(("in", 2), Some(112 * S), t0);
        assert_eq!(names(&p.decide(&all, t0).1), vec![1]);
    }

    #[test]
    fn partitions_at_their_end_idle_or_taken_away_hold_nobody_back() {
        let mut p = pacing();
        let t0 = Instant::now();
        let all = parts(&[0, 1]);
        p.decide(&all, t0);
        p.record(("in", 0), Some(500 * S), t0);
        p.record(("in", 1), Some(100 * S), t0);
        assert_eq!(names(&p.decide(&all, t0).0), vec![0]);
        // 1 reaches its end: 0 goes on.
        p.at_end(1);
        assert_eq!(names(&p.decide(&all, t0).1), vec![0]);
        // 1 gets a record again (behind): 0 waits again.
        p.record(("in", 1), Some(101 * S), t0);
        assert_eq!(names(&p.decide(&all, t0).0), vec![0]);
        // 1 delivers nothing for the idle timeout: 0 goes on.
        let later = t0 + Duration::from_secs(31);
        assert_eq!(names(&p.decide(&all, later).1), vec![0]);
        // The group takes 1 away: forgotten, 0 is the only one. (0 was let through
        // for a record after its long pause: paused again only after it.)
        p.record(("in", 1), Some(102 * S), later);
        assert_eq!(p.decide(&all, later), (vec![], vec![]));
        p.record(("in", 0), Some(501 * S), later);
        assert_eq!(names(&p.decide(&all, later).0), vec![0]);
        assert_eq!(names(&p.decide(&parts(&[0]), later).1), vec![0]);
    }

    #[test]
    fn spans_past_the_wall_clock_bound_do_not_count() {
        let p = pacing();
        let now_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let bound = p.not_after();
        assert!(bound >= now_ns + 3599 * S && bound <= now_ns + 3700 * S);
    }
}

mod pacing_keepalive {
    use std::time::{Duration, Instant};

    use super::super::repartition::Pacing;
    use crate::runtime::watermark::WatermarkSettings;

    const S: u64 = 1_000_000_000;

    /// A partition paused for half the idle timeout reads one record (its splits in
    /// the analytics must not go idle), and may be paused again only after it.
    #[test]
    fn a_long_pause_lets_one_record_through() {
        let mut p = Pacing::new(&WatermarkSettings {
            max_out_of_order: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            max_drift: Some(Duration::from_secs(30)),
            max_ahead: Duration::from_secs(3600),
            wall_clock_lag: None,
        })
        .unwrap();
        let all = [("in".to_owned(), 0), ("in".to_owned(), 1)]
            .into_iter()
            .collect();
        let t0 = Instant::now();
        p.decide(&all, t0);
        p.record(("in", 0), Some(500 * S), t0);
        p.record(("in", 1), Some(100 * S), t0);
        assert_eq!(p.decide(&all, t0).0.len(), 1, "0 is ahead");
        // 1 keeps reading, slowly: 0 stays paused for 14 s...
        let t14 = t0 + Duration::from_secs(14);
        p.record(("in", 1), Some(110 * S), t14);
        assert_eq!(p.decide(&all, t14), (vec![], vec![]));
        // ...and is let through at 15 s, not paused again before its next record.
        let t15 = t0 + Duration::from_secs(15);
        p.record(("in", 1), Some(111 * S), t15);
        let (pause, resume) = p.decide(&all, t15);
        assert_eq!((pause.len(), resume), (0, vec![("in".to_owned(), 0)]));
        let t16 = t0 + Duration::from_secs(16);
        p.record(("in", 1), Some(112 * S), t16);
        assert_eq!(p.decide(&all, t16), (vec![], vec![]));
        p.record(("in", 0), Some(501 * S), t16);
        assert_eq!(p.decide(&all, t16), (vec![("in".to_owned(), 0)], vec![]));
    }
}

/// A member whose close never ends (its rebalance callback waits forever on the
/// revoke, as librdkafka's close has been seen to) is let go after the close timeout
/// instead of hanging the instance that stops it.
#[test]
fn a_consumer_close_that_never_ends_is_not_waited_for() {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};

    use rdkafka::ClientContext;
    use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
    use rdkafka::topic_partition_list::TopicPartitionList;
    use rdkafka::types::RDKafkaRespErr;

    struct Stuck {
        assigned: Arc<AtomicBool>,
        closing: Arc<AtomicBool>,
    }
    impl ClientContext for Stuck {}
    impl ConsumerContext for Stuck {
        fn rebalance(
            &self,
            consumer: &BaseConsumer<Self>,
            err: RDKafkaRespErr,
            tpl: &mut TopicPartitionList,
        ) {
            if err == RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS {
                let _ = consumer.assign(tpl);
                self.assigned.store(true, Ordering::Relaxed);
                return;
            }
            while self.closing.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = consumer.unassign();
        }
    }

    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("t", 2, 1).unwrap();
    let (assigned, closing) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let mut cc = client_config(&cluster.bootstrap_servers(), &BTreeMap::new());
    cc.set("group.id", "stuck");
    let consumer: BaseConsumer<Stuck> = cc
        .create_with_context(Stuck {
            assigned: assigned.clone(),
            closing: closing.clone(),
        })
        .unwrap();
    consumer.subscribe(&["t"]).unwrap();
    let started = Instant::now();
    while !assigned.load(Ordering::Relaxed) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "never assigned"
        );
        let _ = consumer.poll(Duration::from_millis(50));
    }
    closing.store(true, Ordering::Relaxed);
    let member = GroupConsumer::new(consumer).with_close_timeout(Duration::from_secs(1));
    let started = Instant::now();
    drop(member);
    let took = started.elapsed();
    // Let the close end, so the cluster outlives it.
    closing.store(false, Ordering::Relaxed);
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(5),
        "the drop waited {took:?}"
    );
}
