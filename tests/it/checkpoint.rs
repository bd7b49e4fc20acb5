//! Periodic checkpoints: they change nothing in the outputs, and a run killed with
//! SIGKILL and restarted ends with the outputs of one uninterrupted run.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use spanflow::job::run_job;
use spanflow::runtime::RunOptions;

use crate::support::{bin, read_table, root, rows};

/// Every table the checkpoint jobs write.
pub(crate) const TABLES: &[&str] = &[
    "traces",
    "spans",
    "late_spans",
    "dead_letters",
    "red_metrics",
    "exemplars",
    "service_relation",
    "alerts",
];

/// A generator job with every kind of state: sessions, held traces and rate-limit
/// windows of the sampler (feedback from the global stage), metric intervals, late
/// spans and dead letters.
pub(crate) fn job_text(traces: u64) -> String {
    format!(
        "\
name: checkpointed
sources:
  gen: {{ type: generator, seed: 11, traces: {traces}, traces_per_second: 100, late_fraction: 0.001, garbage_fraction: 0.002 }}
operators:
  s: {{ type: session_window, from: gen, gap: 5s }}
  t:
    type: tail_sampling
    from: s
    policies:
      - {{ name: errors, type: error }}
      - {{ name: rl, type: endpoint_rate_limit, traces_per_second: 1 }}
  m: {{ type: red_metrics, from: t, interval: 10s }}
  g: {{ type: service_graph, from: t, interval: 10s }}
  a:
    type: alerts
    from: m
    rules:
      - {{ name: errors, metric: service_server, value: error_rate, above: 0.03, min_requests: 5, group_by: [service] }}
sinks:
  o: {{ type: parquet, from: [t, t.spans, s.late_spans, gen.dead_letters, m, m.exemplars, g, a] }}
"
    )
}

/// The reference: `job` at parallelism 2 without checkpoints, into `out`.
pub(crate) fn uninterrupted(job: &spanflow::job::Job, out: &Path) -> spanflow::runtime::RunSummary {
    run_job(
        job,
        &RunOptions {
            output_dir: Some(out.to_path_buf()),
            parallelism: Some(2),
            ..Default::default()
        },
    )
    .unwrap()
}

pub(crate) fn assert_same_tables(reference: &Path, out: &Path) {
    for table in TABLES {
        let a = rows(&read_table(reference, table), &[]);
        let b = rows(&read_table(out, table), &[]);
        assert!(
            !a.is_empty() || matches!(*table, "late_spans" | "dead_letters"),
            "{table}: empty"
        );
        assert_eq!(a.len(), b.len(), "{table}: row counts differ");
        assert!(a == b, "{table}: rows differ");
    }
    let hidden: Vec<PathBuf> = TABLES
        .iter()
        .flat_map(|t| std::fs::read_dir(out.join(t)).unwrap())
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    assert!(hidden.is_empty(), "unpublished files left: {hidden:?}");
}

/// Checkpoints every 20 ms, at two parallelisms: the outputs are those of a run
/// without checkpoints, several checkpoints completed, and a run that ends normally
/// leaves none behind.
#[test]
fn periodic_checkpoints_change_nothing_in_the_outputs() {
    let job = spanflow::job::load_str(&root().join("ck.yaml"), &job_text(1500))
        .unwrap_or_else(|d| panic!("{d}"));
    let tmp = tempfile::tempdir().unwrap();
    let reference = tmp.path().join("reference");
    uninterrupted(&job, &reference);
    for parallelism in [1, 3] {
        let out = tmp.path().join(format!("p{parallelism}"));
        let dir = tmp.path().join(format!("chk{parallelism}"));
        let s = run_job(
            &job,
            &RunOptions {
                output_dir: Some(out.clone()),
                parallelism: Some(parallelism),
                checkpoint_dir: Some(dir.clone()),
                checkpoint_interval: Some(Duration::from_millis(20)),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(
            s.checkpoints.completed >= 2,
            "only {} checkpoints",
            s.checkpoints.completed
        );
        assert!(s.savepoint.is_none());
        let text = s.render();
        assert!(
            text.contains(&format!("checkpoints {} taken", s.checkpoints.completed)),
            "{text}"
        );
        assert_same_tables(&reference, &out);
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert!(left.is_empty(), "a finished run keeps no checkpoint");
    }
}

/// A small deterministic generator for kill times; the seed is printed so that a
/// failure can be replayed with `SPANFLOW_KILL_SEED`.
pub(crate) struct Xorshift(pub u64);

impl Xorshift {
    pub fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The newest complete checkpoint in `chk` (its directory name), if any.
fn newest_checkpoint(chk: &Path) -> Option<String> {
    let mut ids: Vec<String> = std::fs::read_dir(chk)
        .ok()?
        .flatten()
        .filter(|e| e.path().join("MANIFEST.json").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    ids.sort();
    ids.pop()
}

/// The seed of the kill times: `SPANFLOW_KILL_SEED`, else the clock; printed so that
/// a failure can be replayed.
pub(crate) fn kill_seed() -> u64 {
    let seed = std::env::var("SPANFLOW_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    eprintln!("kill seed {seed} (SPANFLOW_KILL_SEED={seed} replays it)");
    seed
}

/// Runs `spanflow run` on `job` at parallelism 2 with checkpoints every `interval`
/// ([`run_cli_at`]).
pub(crate) fn run_cli(
    job: &Path,
    out: &Path,
    chk: &Path,
    interval: &str,
    kill_after: Option<Duration>,
) -> Option<String> {
    run_cli_at(2, job, out, chk, interval, kill_after)
}

/// Runs `spanflow run` on `job` with `parallelism` shards and checkpoints every
/// `interval`. With `kill_after`, waits for
/// the run to complete a checkpoint of its own, then for `kill_after` more, and kills
/// it with SIGKILL; otherwise lets it finish and returns its `--json` summary.
pub(crate) fn run_cli_at(
    parallelism: usize,
    job: &Path,
    out: &Path,
    chk: &Path,
    interval: &str,
    kill_after: Option<Duration>,
) -> Option<String> {
    let before = newest_checkpoint(chk);
    let ready = || newest_checkpoint(chk) != before;
    run_cli_until(
        parallelism,
        job,
        out,
        chk,
        interval,
        kill_after.map(|d| (d, &ready as &dyn Fn() -> bool)),
    )
}

/// Like [`run_cli_at`], killing the run `kill.0` after `kill.1` first says it is
/// ready (instead of after its first checkpoint).
pub(crate) fn run_cli_until(
    parallelism: usize,
    job: &Path,
    out: &Path,
    chk: &Path,
    interval: &str,
    kill: Option<(Duration, &dyn Fn() -> bool)>,
) -> Option<String> {
    let mut child = Command::new(bin())
        .args(["run", "--json", "--parallelism"])
        .arg(parallelism.to_string())
        .args(["--checkpoint-interval", interval])
        .arg("--output-dir")
        .arg(out)
        .arg("--checkpoint-dir")
        .arg(chk)
        .arg(job)
        .env(
            "SPANFLOW_LOG",
            std::env::var("SPANFLOW_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::piped())
        // The last run's log shows in the test's output (it is the one that may hang).
        .stderr(if kill.is_some() {
            Stdio::piped()
        } else {
            Stdio::inherit()
        })
        .spawn()
        .unwrap();
    let started = Instant::now();
    let Some((extra, ready)) = kill else {
        let mut stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut stdout, &mut s).map(|_| s)
        });
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > Duration::from_secs(150) {
                crate::support::print_stacks(child.id());
                child.kill().unwrap();
                panic!("the last run did not end in 150 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        eprintln!("last run: {:?}", started.elapsed());
        assert!(status.success(), "the last run failed: {status}");
        return Some(reader.join().unwrap().unwrap());
    };
    let mut kill_at = None;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            panic!(
                "the run ended ({status}) before it was killed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if started.elapsed() >= Duration::from_secs(60) {
            // Not left running after the test.
            let _ = child.kill();
            let _ = child.wait();
            panic!("not ready to be killed in a minute");
        }
        if kill_at.is_none() && ready() {
            kill_at = Some(Instant::now() + extra);
        }
        if kill_at.is_some_and(|t| Instant::now() >= t) {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    // SIGKILL: no handler runs, nothing is flushed.
    eprintln!("killed after {:?}", started.elapsed());
    child.kill().unwrap();
    child.wait().unwrap();
    None
}

/// A generator job of `traces` traces written to a temp dir, and its uninterrupted
/// run's outputs there, for runs killed and resumed to be compared with.
struct Killed {
    tmp: tempfile::TempDir,
    job_path: PathBuf,
    reference: PathBuf,
    /// Spans the uninterrupted run read.
    total: u64,
}

impl Killed {
    fn new(traces: u64) -> Killed {
        let tmp = tempfile::tempdir().unwrap();
        let job_path = tmp.path().join("job.yaml");
        let text = job_text(traces);
        std::fs::write(&job_path, &text).unwrap();
        let job = spanflow::job::load_str(&job_path, &text).unwrap_or_else(|d| panic!("{d}"));
        let reference = tmp.path().join("reference");
        let t0 = Instant::now();
        let total = uninterrupted(&job, &reference).decode.spans;
        eprintln!("uninterrupted run {:?}", t0.elapsed());
        Killed {
            tmp,
            job_path,
            reference,
            total,
        }
    }

    fn out(&self) -> PathBuf {
        self.tmp.path().join("out")
    }

    fn chk(&self) -> PathBuf {
        self.tmp.path().join("chk")
    }

    /// Checks the last run's `--json` summary (it restored a checkpoint and read less
    /// than the whole input) and that the outputs equal the uninterrupted run's;
    /// returns the summary.
    fn assert_resumed(&self, summary: &str) -> serde_json::Value {
        let v: serde_json::Value = serde_json::from_str(summary).unwrap();
        assert_eq!(v["restored"], true, "the last run restored a checkpoint");
        let read = v["decode"]["spans"].as_u64().unwrap();
        assert!(
            read < self.total,
            "the last run read {read} spans of {}: it should have resumed",
            self.total
        );
        assert_same_tables(&self.reference, &self.out());
        v
    }
}

/// Three SIGKILLs at random moments of a generator job with 500 ms checkpoints, then a
/// run to the end: the Parquet outputs equal one uninterrupted run's, and the last run
/// read only what the checkpoint it restored had not.
#[test]
fn sigkill_at_random_moments_changes_nothing_in_the_outputs() {
    let k = Killed::new(12_000);
    let mut rng = Xorshift(kill_seed());
    // Each run is killed at a random moment up to 700 ms after its first checkpoint
    // (so each one makes progress, and kills land while checkpoints are being
    // taken, written or published), well before the job could finish.
    for _ in 0..3 {
        let at = Duration::from_secs_f64(rng.next_f64() * 0.7);
        eprintln!("killing {at:?} after the run's first checkpoint");
        run_cli(&k.job_path, &k.out(), &k.chk(), "500ms", Some(at));
    }
    let summary = run_cli(&k.job_path, &k.out(), &k.chk(), "500ms", None).unwrap();
    k.assert_resumed(&summary);
}

/// Rescaling: a run at parallelism 2 killed after a checkpoint, its restore at
/// parallelism 3 killed too, then a run at parallelism 1 to the end: the outputs equal
/// one uninterrupted run's. Session windows, held traces, rate-limit verdicts and metric
/// intervals are split by trace (or combined) over the new shards.
#[test]
fn a_checkpoint_restores_at_another_parallelism() {
    let k = Killed::new(8_000);
    let mut rng = Xorshift(kill_seed());
    for parallelism in [2, 3] {
        let at = Duration::from_secs_f64(rng.next_f64() * 0.3);
        eprintln!("parallelism {parallelism}: killing {at:?} after its first checkpoint");
        run_cli_at(
            parallelism,
            &k.job_path,
            &k.out(),
            &k.chk(),
            "300ms",
            Some(at),
        );
    }
    let summary = run_cli_at(1, &k.job_path, &k.out(), &k.chk(), "300ms", None).unwrap();
    let v = k.assert_resumed(&summary);
    assert_eq!(v["rescaled_from"], 3, "it was written at parallelism 3");
}
