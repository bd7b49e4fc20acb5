//! A job run as a group of instances sharing a Kafka consumer group and a checkpoint
//! root (`spanflow run --instance`), against a real Kafka-protocol broker: the union of
//! the instances' outputs (metrics added up as documented) is what one instance
//! computes from the same input.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;
use spanflow::testkit::generator::GeneratorConfig;

use spanflow::testkit::generator::GeneratedRecord;

use crate::kafka::{Broker, generate, job_yaml, kafka_source, produce_more, produce_records};
use crate::support::{bin, read_table, rows};

/// The analytics of [`job_yaml`] without its per-instance parts (the endpoint rate
/// limit and the rollup, see README "Running a group of instances"), writing Parquet
/// under `out`.
fn group_job(source: &str, out: &Path) -> String {
    let sinks = format!(
        "  out:\n    type: parquet\n    path: \"{}\"\n    \
         from: [sampler, sampler.spans, sessions.late_spans, metrics, graph]\n",
        out.display()
    );
    let text = job_yaml(source, &sinks);
    let text = text.split("rollups:").next().unwrap_or_default();
    let limit = "      - { name: per-endpoint, type: endpoint_rate_limit, traces_per_second: 1 }\n";
    assert!(text.contains(limit));
    // Alerts are refused in a member (they need every series of an interval).
    let alerts = text
        .find("  alerts:\n")
        .zip(text.find("sinks:\n"))
        .map(|(a, b)| text[a..b].to_owned())
        .expect("job_yaml has an alerts node");
    text.replace(limit, "").replace(&alerts, "")
}

/// A running instance. Killed if the test drops it still running: a failed assertion
/// must not leave instances behind, reading from a broker that is gone.
struct Instance(Option<Child>);

impl Instance {
    /// Its process id (never 0, which `kill` would take for the whole process group).
    fn id(&self) -> u32 {
        self.0.as_ref().expect("an instance not finished").id()
    }

    /// Kills it (SIGKILL) and waits for its end.
    fn kill(&mut self) {
        if let Some(c) = &mut self.0 {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `spanflow run --instance NAME` of `job`, checkpointing every 500 ms under `chk`.
fn spawn_instance(job: &Path, chk: &Path, name: &str) -> Instance {
    let child = Command::new(bin())
        .args(["run", "--json", "--no-progress", "--parallelism", "2"])
        .args(["--checkpoint-interval", "500ms", "--instance", name])
        .arg("--checkpoint-dir")
        .arg(chk)
        .arg(job)
        .env(
            "SPANFLOW_LOG",
            std::env::var("SPANFLOW_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    Instance(Some(child))
}

/// Waits for `instance` to end successfully and returns its `--json` summary.
fn finish(mut instance: Instance, within: Duration) -> serde_json::Value {
    let started = Instant::now();
    loop {
        let child = instance.0.as_mut().expect("an instance not killed");
        if child.try_wait().unwrap().is_some() {
            let child = instance.0.take().expect("an instance not killed");
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "an instance failed: {}", out.status);
            return serde_json::from_slice(&out.stdout).unwrap();
        }
        if started.elapsed() > within {
            crate::support::print_stacks(child.id());
            panic!("an instance did not end in {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Stops an instance as Ctrl-C does: a last checkpoint, nothing flushed.
fn interrupt(instance: &Instance) {
    let status = Command::new("kill")
        .args(["-INT", &instance.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Whether member `name` completed a checkpoint.
fn checkpointed(chk: &Path, name: &str) -> bool {
    std::fs::read_dir(chk.join("members").join(name))
        .map(|d| d.flatten().any(|e| e.path().join("MANIFEST.json").exists()))
        .unwrap_or(false)
}

fn wait_for(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let started = Instant::now();
    while !cond() {
        assert!(started.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every member's files of `table` under `out` (`<table>/<member>/part-*.parquet`).
fn read_group_table(out: &Path, table: &str) -> Vec<RecordBatch> {
    let tdir = out.join(table);
    let mut members: Vec<PathBuf> = std::fs::read_dir(&tdir)
        .unwrap_or_else(|e| panic!("{}: {e}", tdir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    members.sort();
    members
        .iter()
        .flat_map(|m| {
            read_table(
                m.parent().unwrap(),
                m.file_name().unwrap().to_str().unwrap(),
            )
        })
        .collect()
}

/// A metric table's totals by interval and series: the shipped merge query
/// (`sql/group/<table>.sql`) over the Parquet outputs under `dir`, as JSON.
fn merged_metrics(dir: &Path, table: &str) -> serde_json::Value {
    let out = Command::new(bin())
        .args(["sql", "--format", "json", "--output-dir"])
        .arg(dir)
        .arg("--file")
        .arg(crate::support::root().join(format!("sql/group/{table}.sql")))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A group's live job and its checkpoint and output directories, on `topic` of 8
/// partitions (consumer group = topic name).
struct Setup<'b> {
    broker: &'b Broker,
    topic: &'static str,
    /// The topic the analytics read and their consumer group: `topic` itself, or the
    /// internal topic of the repartition stage.
    read: (String, String),
    tmp: tempfile::TempDir,
    out: PathBuf,
    chk: PathBuf,
    live: PathBuf,
}

impl<'b> Setup<'b> {
    fn new(broker: &'b Broker, topic: &'static str) -> Self {
        Self::with_end(broker, topic, None)
    }

    /// The same with a live job that ends at `end` (`latest`: a bounded group).
    fn with_end(broker: &'b Broker, topic: &'static str, end: Option<&str>) -> Self {
        Self::with(broker, topic, end, false)
    }

    /// A live job whose input is not partitioned by trace id: its repartition stage
    /// re-keys it into `<topic>.by-trace` (8 partitions).
    fn repartitioned(broker: &'b Broker, topic: &'static str) -> Self {
        Self::with(broker, topic, None, true)
    }

    fn with(broker: &'b Broker, topic: &'static str, end: Option<&str>, repartition: bool) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        let chk = tmp.path().join("chk");
        let live = tmp.path().join("live.yaml");
        let read = match repartition {
            true => (format!("{topic}.by-trace"), format!("{topic}.analytics")),
            false => (topic.to_owned(), topic.to_owned()),
        };
        let s = Setup {
            broker,
            topic,
            read,
            tmp,
            out,
            chk,
            live,
        };
        let mut source = s.source(topic, topic, end);
        if repartition {
            source = source.replace(
                "    watermark:",
                "    repartition: { partitions: 8 }\n    watermark:",
            );
        }
        std::fs::write(&s.live, group_job(&source, &s.out)).unwrap();
        s
    }

    /// The kafka source of `topic` (bounded with `end`) in consumer group `group`.
    fn source(&self, topic: &str, group: &str, end: Option<&str>) -> String {
        kafka_source(self.broker, topic, group, "earliest", end).replace(
            "    watermark:",
            "    properties: { session.timeout.ms: \"6000\", heartbeat.interval.ms: \"500\" }\n    \
             watermark:",
        )
    }

    fn spawn(&self, name: &str) -> Instance {
        spawn_instance(&self.live, &self.chk, name)
    }

    fn checkpointed(&self, name: &str) -> bool {
        checkpointed(&self.chk, name)
    }

    /// The id of member `name`'s newest complete checkpoint (0: none).
    fn newest_checkpoint(&self, name: &str) -> u64 {
        std::fs::read_dir(self.chk.join("members").join(name))
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().join("MANIFEST.json").exists())
                    .filter_map(|e| e.file_name().to_str()?.strip_prefix("chk-")?.parse().ok())
                    .max()
                    .unwrap_or(0)
            })
            .unwrap_or(0)
    }

    /// Waits until the group committed the end of every partition: its members read
    /// everything and checkpointed it (with a repartition stage: it split everything,
    /// then the analytics read and checkpointed all it produced).
    fn wait_read_to_end(&self) {
        self.wait_committed(self.topic, self.topic);
        if self.read.0 != self.topic {
            self.wait_committed(&self.read.0, &self.read.1);
        }
    }

    fn wait_committed(&self, topic: &str, group: &str) {
        let ends = crate::kafka::end_offsets(self.broker, topic, 8);
        let mut last = Vec::new();
        let started = Instant::now();
        while last != ends {
            last = crate::kafka::committed_offsets_of(self.broker, topic, 8, group);
            assert!(
                started.elapsed() < Duration::from_secs(180),
                "the group did not read to the end in 180 s: committed {last:?} of {ends:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs a bounded instance that restores every partition and flushes what is
    /// still open, then compares the union of every member's outputs with one
    /// instance's run over the whole topic. The instance reads in a consumer group of
    /// its own (its positions come from the checkpoints): the stopped members are static
    /// members of the live group, whose partitions the group keeps for them.
    ///
    /// The drained group is then run bounded again, by the same member and by a new
    /// one, as when a member of a bounded group finishes first and the group hands its
    /// partitions to another: both start where the finished run ended (its last
    /// checkpoint), read nothing, and leave every output as it was.
    ///
    /// With `reason_at_end`, a trace still open when the input ended may carry
    /// `close_reason=end_of_input` in the group's outputs where one instance says `gap`
    /// (README "Running a group of instances": a bounded member that finishes first
    /// closes its traces at the end of its own partitions); every other column is
    /// compared as it is.
    fn drain_and_compare(&self, reason_at_end: bool) {
        let drain = self.tmp.path().join("drain.yaml");
        let group = format!("{}-drain", self.topic);
        std::fs::write(
            &drain,
            group_job(
                &self.source(&self.read.0, &group, Some("latest")),
                &self.out,
            ),
        )
        .unwrap();
        let sd = finish(
            spawn_instance(&drain, &self.chk, "drain"),
            Duration::from_secs(120),
        );
        assert_eq!(
            sd["group"]["partitions"].as_array().unwrap().len(),
            8,
            "the draining instance restored every partition"
        );
        for name in ["drain", "drain-again"] {
            let again = finish(
                spawn_instance(&drain, &self.chk, name),
                Duration::from_secs(120),
            );
            assert_eq!(
                again["group"]["partitions"].as_array().unwrap().len(),
                8,
                "{name}: every partition"
            );
            assert_eq!(
                again["decode"]["spans"].as_u64(),
                Some(0),
                "{name}: a finished group's partitions are read again"
            );
        }
        let reference = self.tmp.path().join("reference");
        let one = self.tmp.path().join("one.yaml");
        std::fs::write(
            &one,
            group_job(
                &kafka_source(
                    self.broker,
                    self.topic,
                    "reference",
                    "earliest",
                    Some("latest"),
                ),
                &reference,
            ),
        )
        .unwrap();
        let status = Command::new(bin())
            .args(["run", "--json", "--no-progress", "--parallelism", "2"])
            .arg(&one)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        let counts: Vec<String> = ["traces", "spans", "late_spans"]
            .iter()
            .map(|t| {
                let one: usize = read_table(&reference, t).iter().map(|b| b.num_rows()).sum();
                let group: usize = read_group_table(&self.out, t)
                    .iter()
                    .map(|b| b.num_rows())
                    .sum();
                format!("{t}: {group} rows (one instance: {one})")
            })
            .collect();
        for table in ["traces", "spans", "late_spans"] {
            let normal = |rows: Vec<String>| -> Vec<String> {
                let mut rows: Vec<String> = rows
                    .into_iter()
                    .map(|r| match reason_at_end {
                        true => r.replace("close_reason=end_of_input", "close_reason=gap"),
                        false => r,
                    })
                    .collect();
                rows.sort();
                rows
            };
            let a = normal(rows(&read_table(&reference, table), &[]));
            let b = normal(rows(&read_group_table(&self.out, table), &[]));
            if a != b {
                let only_a: Vec<&String> = a.iter().filter(|r| !b.contains(r)).take(3).collect();
                let only_b: Vec<&String> = b.iter().filter(|r| !a.contains(r)).take(3).collect();
                panic!(
                    "{table}: {} rows against one instance's {} ({}); only in one instance's: \
                     {only_a:#?}; only in the group's: {only_b:#?}",
                    b.len(),
                    a.len(),
                    counts.join(", ")
                );
            }
        }
        let traces = read_table(&reference, "traces");
        assert!(traces.iter().map(|b| b.num_rows()).sum::<usize>() > 3_000);
        for table in ["red_metrics", "service_relation"] {
            let a = merged_metrics(&reference, table);
            let b = merged_metrics(&self.out, table);
            let rows = a.as_array().unwrap().len();
            assert!(rows > 0, "{table}: empty");
            assert_eq!(rows, b.as_array().unwrap().len(), "{table}: series differ");
            assert!(a == b, "{table}: merged values differ");
        }
    }
}

fn owned(summary: &serde_json::Value) -> usize {
    summary["group"]["partitions"].as_array().unwrap().len()
}

fn input(traces: u64, seed: u64) -> Vec<spanflow::testkit::generator::GeneratedRecord> {
    generate(GeneratorConfig {
        traces,
        seed,
        traces_per_second: 40.0,
        spans_per_record: 8,
        late_fraction: 0.0,
        garbage_fraction: 0.0,
        ..Default::default()
    })
    .0
}

/// The second instance of a job joins the first while it has traces open: the group
/// rebalances, each instance restores the partitions it now owns from their newest
/// checkpoints, and no trace is split into fragments one instance would not make. The
/// instances then stop with a last checkpoint each, and a bounded instance drains
/// what is left: the union of their outputs is one instance's.
#[test]
fn an_instance_joining_a_running_one_splits_no_trace() {
    let broker = Broker::start();
    let records = input(4_000, 41);
    let half = records.len() / 2;
    let g = Setup::new(&broker, "joined");
    produce_records(&broker, g.topic, 8, &records[..half]);
    let a = g.spawn("a");
    wait_for("instance a checkpoints", Duration::from_secs(60), || {
        g.checkpointed("a")
    });
    let b = g.spawn("b");
    wait_for("instance b checkpoints", Duration::from_secs(60), || {
        g.checkpointed("b")
    });
    produce_more(&broker, g.topic, 8, &records[half..]);
    g.wait_read_to_end();
    interrupt(&a);
    let sa = finish(a, Duration::from_secs(60));
    interrupt(&b);
    let sb = finish(b, Duration::from_secs(60));
    assert!(
        sa["group"]["rebalances"].as_u64().unwrap() >= 1,
        "instance a restarted when b joined"
    );
    // b may take a's partitions as a leaves, before its own stop: a's share is what
    // it owned beside b.
    assert!(
        owned(&sa) > 0 && owned(&sa) < 8 && owned(&sb) > 0,
        "a and b shared the partitions"
    );
    g.drain_and_compare(false);
}

/// Two instances read a topic fed while they run; one is killed with SIGKILL at a
/// random moment after one of its checkpoints, and a third joins later: every
/// partition goes on from its newest checkpoint, whoever wrote it, and the union of all
/// instances' outputs is one instance's.
#[test]
fn a_killed_instance_and_a_joining_one_change_nothing_in_the_group_outputs() {
    use crate::checkpoint::{Xorshift, kill_seed};
    let broker = Broker::start();
    let records = input(4_500, 43);
    let third = records.len() / 3;
    let g = Setup::new(&broker, "killed_member");
    produce_records(&broker, g.topic, 8, &records[..third]);
    let mut a = g.spawn("a");
    let b = g.spawn("b");
    wait_for("a and b checkpoint", Duration::from_secs(60), || {
        g.checkpointed("a") && g.checkpointed("b")
    });
    produce_more(&broker, g.topic, 8, &records[third..2 * third]);
    // Killed at a random moment up to 1 s after a checkpoint of a that follows the
    // second part of the input.
    let newest = |name: &str| g.newest_checkpoint(name);
    let before = newest("a");
    wait_for("a checkpoints again", Duration::from_secs(60), || {
        newest("a") > before
    });
    let mut rng = Xorshift(kill_seed());
    std::thread::sleep(Duration::from_secs_f64(rng.next_f64()));
    a.kill();
    // The third joins once the group's session timeout (6 s) has passed, so the group
    // hands a's partitions over in that rebalance.
    std::thread::sleep(Duration::from_secs(8));
    let c = g.spawn("c");
    wait_for("c checkpoints", Duration::from_secs(60), || {
        g.checkpointed("c")
    });
    produce_more(&broker, g.topic, 8, &records[2 * third..]);
    g.wait_read_to_end();
    interrupt(&b);
    let sb = finish(b, Duration::from_secs(60));
    interrupt(&c);
    let sc = finish(c, Duration::from_secs(60));
    assert!(
        sb["group"]["rebalances"].as_u64().unwrap() >= 1,
        "b restarted when a died and c joined"
    );
    assert!(owned(&sc) > 0, "c read partitions");
    g.drain_and_compare(false);
}

/// Two members of a bounded group (`end: latest`) read a topic written before they
/// start, the second joining a moment after the first: whichever finishes its
/// partitions first leaves the group with a last checkpoint at its end, and the one
/// the group hands them to starts there instead of reading them again. The union of
/// their outputs is one instance's.
#[test]
fn bounded_members_read_every_partition_once_whoever_finishes_first() {
    let broker = Broker::start();
    let records = input(3_500, 47);
    let g = Setup::with_end(&broker, "bounded_group", Some("latest"));
    produce_records(&broker, g.topic, 8, &records);
    let a = g.spawn("a");
    std::thread::sleep(Duration::from_millis(500));
    let b = g.spawn("b");
    let sa = finish(a, Duration::from_secs(120));
    let sb = finish(b, Duration::from_secs(120));
    let read = |s: &serde_json::Value| s["decode"]["spans"].as_u64().unwrap();
    assert!(read(&sa) + read(&sb) > 0);
    g.drain_and_compare(true);
}

/// Produces `records` whole, round-robin over the partitions of `topic` (created with
/// 8): a topic not partitioned by trace id, where a trace's spans are spread over
/// several partitions.
fn produce_unkeyed(broker: &Broker, topic: &str, records: &[GeneratedRecord]) {
    use spanflow::connectors::kafka::{create_topics, produce::KafkaProducer};
    let props = std::collections::BTreeMap::new();
    create_topics(&broker.brokers, &props, &[topic.to_owned()], 8).unwrap();
    let p = KafkaProducer::new(&broker.brokers, &props).unwrap();
    for (i, r) in records.iter().enumerate() {
        p.send(topic, Some((i % 8) as i32), None, &r.payload)
            .unwrap();
    }
    p.flush().unwrap();
}

/// A job over a topic not partitioned by trace id, run as two instances with a
/// repartition stage: the second joins while traces are open and more input arrives.
/// Each instance's stage re-keys its share of the input into the internal topic by
/// trace id, and the analytics read that as a group: the union of their outputs is what
/// one instance reading the original topic computes.
#[test]
fn an_input_not_keyed_by_trace_id_is_repartitioned_and_splits_no_trace() {
    let broker = Broker::start();
    let records = input(3_500, 53);
    let half = records.len() / 2;
    let g = Setup::repartitioned(&broker, "unkeyed");
    produce_unkeyed(&broker, g.topic, &records[..half]);
    let a = g.spawn("a");
    wait_for("instance a checkpoints", Duration::from_secs(60), || {
        g.checkpointed("a")
    });
    let b = g.spawn("b");
    wait_for("instance b checkpoints", Duration::from_secs(60), || {
        g.checkpointed("b")
    });
    produce_unkeyed(&broker, g.topic, &records[half..]);
    g.wait_read_to_end();
    interrupt(&a);
    let sa = finish(a, Duration::from_secs(60));
    // b restarts on every partition as a leaves: stopped once it checkpointed after
    // that, not in the middle of the group's rebalance.
    let before = g.newest_checkpoint("b");
    wait_for(
        "b checkpoints after a left",
        Duration::from_secs(60),
        || g.newest_checkpoint("b") > before,
    );
    interrupt(&b);
    let sb = finish(b, Duration::from_secs(60));
    let stage = |s: &serde_json::Value, key: &str| s["group"]["repartition"][key].as_u64().unwrap();
    assert_eq!(
        stage(&sa, "records") + stage(&sb, "records"),
        records.len() as u64,
        "every input record split once"
    );
    assert!(
        stage(&sa, "messages") > stage(&sa, "records"),
        "records were split"
    );
    assert_eq!(stage(&sa, "undecodable") + stage(&sb, "undecodable"), 0);
    g.drain_and_compare(false);
}

/// Two job servers each run the job as one member of its group (`spanflow submit
/// --instance`): each server's `/metrics` and job view say which partitions its member
/// owns, and together they own every partition once. A job without a shared checkpoint
/// directory is refused as a member.
#[test]
fn servers_running_a_job_as_members_show_the_partitions_they_own() {
    use crate::server::{Server, cli, submit_with};
    let broker = Broker::start();
    let g = Setup::new(&broker, "served");
    produce_records(&broker, g.topic, 8, &input(400, 45));
    let shared = g.tmp.path().join("job.yaml");
    let text = std::fs::read_to_string(&g.live).unwrap();
    std::fs::write(
        &shared,
        format!(
            "{text}\ncheckpoint: {{ dir: \"{}\", interval: 500ms }}\n",
            g.chk.display()
        ),
    )
    .unwrap();
    let servers = [
        Server::start(&g.tmp.path().join("state-a")),
        Server::start(&g.tmp.path().join("state-b")),
    ];
    let refused = cli(
        &servers[0],
        g.tmp.path(),
        &["submit", g.live.to_str().unwrap(), "--instance", "a"],
    );
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("needs `checkpoint.dir`"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let ids: Vec<String> = servers
        .iter()
        .zip(["a", "b"])
        .map(|(s, name)| {
            submit_with(
                s,
                g.tmp.path(),
                &["submit", shared.to_str().unwrap(), "--instance", name],
            )
        })
        .collect();
    // Owned partitions per member, from /metrics.
    let owned = |s: &Server| -> Vec<(String, String)> {
        let text = reqwest::blocking::get(format!("{}/metrics", s.url))
            .unwrap()
            .text()
            .unwrap();
        text.lines()
            .filter(|l| l.starts_with("spanflow_group_partition_owned{"))
            .map(|l| {
                let label = |k: &str| {
                    l.split(&format!("{k}=\""))
                        .nth(1)
                        .and_then(|r| r.split('"').next())
                        .unwrap_or_default()
                        .to_owned()
                };
                assert!(l.ends_with(" 1"), "{l}");
                (label("member"), label("partition"))
            })
            .collect()
    };
    wait_for(
        "both members own partitions, every one once",
        Duration::from_secs(120),
        || {
            let a = owned(&servers[0]);
            let b = owned(&servers[1]);
            let mut all: Vec<&String> = a.iter().chain(&b).map(|(_, p)| p).collect();
            all.sort();
            all.dedup();
            a.iter().all(|(m, _)| m == "a")
                && b.iter().all(|(m, _)| m == "b")
                && !a.is_empty()
                && !b.is_empty()
                && a.len() + b.len() == 8
                && all.len() == 8
        },
    );
    for (s, (id, name)) in servers.iter().zip(ids.iter().zip(["a", "b"])) {
        let view = s.job(id);
        assert_eq!(view["group"]["instance"], name, "{view:#}");
        assert_eq!(
            view["group"]["partitions"].as_array().unwrap().len(),
            owned(s).len(),
            "{view:#}"
        );
    }
    for s in servers {
        s.terminate();
    }
}
