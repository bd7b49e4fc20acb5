//! CLI tests: run the built binary in a temp dir and check its output and exit code.

use std::process::Command;

use crate::support::{bin, read_table, root};

#[test]
fn validate_accepts_the_demo_job() {
    let out = Command::new(bin())
        .args(["validate"])
        .arg(root().join("jobs/demo.yaml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));
}

#[test]
fn validate_reports_every_problem_with_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("bad.yaml");
    std::fs::write(
        &job,
        "name: bad\nsources:\n  gen:\n    type: generator\n    traces: many\noperators:\n  s:\n    type: session_window\n    from: gen\n    gapp: 10s\nsinks:\n  out:\n    type: parquet\n    from: [sesions]\n",
    )
    .unwrap();
    let out = Command::new(bin())
        .arg("validate")
        .arg(&job)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.yaml:5:13"), "bad value position:\n{err}");
    assert!(
        err.contains("bad.yaml:10:5"),
        "unknown key position:\n{err}"
    );
    assert!(err.contains("`gap`"), "typo suggestion:\n{err}");
    assert!(
        err.contains("bad.yaml:14:12"),
        "unknown reference position:\n{err}"
    );

    let out = Command::new(bin())
        .args(["validate", "--format", "json"])
        .arg(&job)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().map(Vec::len), Some(3));
}

#[test]
fn run_prints_a_summary_and_writes_tables() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin())
        .args(["run", "--no-progress", "--parallelism", "2", "--output-dir"])
        .arg(dir.path())
        .arg(root().join("tests/golden/sessions_basic/job.yaml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("7 closed"), "{text}");
    assert!(text.contains("late spans  1"), "{text}");
    assert_eq!(
        read_table(dir.path(), "traces")
            .iter()
            .map(|b| b.num_rows())
            .sum::<usize>(),
        7
    );
}

#[test]
fn gen_writes_records_and_ground_truth() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("spans.otlp");
    let out = Command::new(bin())
        .args(["gen", "--traces", "50", "--seed", "7", "--out"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let truth: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("spans.otlp.truth.json")).unwrap())
            .unwrap();
    assert_eq!(truth["traces"], 50);
    // The file reads back through a `file` source with the same totals.
    let job = dir.path().join("job.yaml");
    std::fs::write(
        &job,
        "sources:\n  f:\n    type: file\n    paths: [spans.otlp]\n    format: otlp_proto\noperators:\n  s:\n    type: session_window\n    from: f\nsinks:\n  o:\n    type: parquet\n    from: [s]\n",
    )
    .unwrap();
    let out = Command::new(bin())
        .args(["run", "--json", "--output-dir"])
        .arg(dir.path().join("out"))
        .arg(&job)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["decode"]["spans"], truth["spans"]);
}

#[test]
fn bench_json_has_the_promised_fields() {
    let out = Command::new(bin())
        .args(["bench", "--json", "--spans", "20000", "--runs", "3"])
        .arg(root().join("jobs/demo.yaml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in [
        "spans",
        "wall_seconds",
        "cpu_seconds",
        "spans_per_second",
        "spans_per_cpu_second",
        "peak_rss_bytes",
        "page_faults",
    ] {
        assert!(
            v.get(key).is_some_and(|x| x.is_number()),
            "missing {key} in {v}"
        );
    }
    assert!(v["spans"].as_u64().unwrap() >= 20000);
    // Three runs of the same input; the top level is the median one.
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 3);
    let mut per_cpu: Vec<f64> = runs
        .iter()
        .map(|r| r["spans_per_cpu_second"].as_f64().unwrap())
        .collect();
    per_cpu.sort_by(f64::total_cmp);
    assert_eq!(v["spans_per_cpu_second"].as_f64().unwrap(), per_cpu[1]);
}

/// librdkafka's mock cluster keeps 5 MiB per partition: this input would lose most of
/// its messages on 4 partitions, so the bench must grow the topic, and it fails rather
/// than report figures for part of the input.
#[test]
fn kafka_mock_bench_reads_every_generated_span() {
    let out = Command::new(bin())
        .args(["bench", "--json", "--kafka-mock", "--spans", "200000"])
        .arg(root().join("jobs/demo.yaml"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let spans = v["spans"].as_u64().unwrap();
    assert!(spans >= 200_000, "{v}");
    // The same generator settings, without Kafka: the same number of spans.
    let direct = Command::new(bin())
        .args(["bench", "--json", "--spans", "200000"])
        .arg(root().join("jobs/demo.yaml"))
        .output()
        .unwrap();
    assert!(direct.status.success());
    let d: serde_json::Value = serde_json::from_slice(&direct.stdout).unwrap();
    assert_eq!(d["spans"].as_u64(), Some(spans));
}

#[test]
fn every_command_has_help() {
    for cmd in [
        vec!["--help"],
        vec!["run", "--help"],
        vec!["validate", "--help"],
        vec!["gen", "--help"],
        vec!["bench", "--help"],
        vec!["replay", "--help"],
        vec!["sql", "--help"],
        vec!["jaeger", "--help"],
        vec!["server", "--help"],
    ] {
        let out = Command::new(bin()).args(&cmd).output().unwrap();
        assert!(out.status.success(), "{cmd:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage"),
            "{cmd:?}"
        );
    }
}

/// A failed run says whose fault it is in its exit code: 1 for the job or its input
/// (a file that does not exist), 75 for a system that is down (a broker nobody
/// listens for), so a supervisor knows whether restarting can help.
#[test]
fn run_exit_codes_say_whose_fault_a_failure_is() {
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str, source: &str| {
        let job = dir.path().join(format!("{name}.yaml"));
        std::fs::write(
            &job,
            format!(
                "sources:\n  src:\n{source}operators:\n  s: {{ type: session_window, from: src }}\n\
                 sinks:\n  out: {{ type: parquet, from: [s], path: {} }}\n",
                dir.path().join("out").display()
            ),
        )
        .unwrap();
        let out = Command::new(bin())
            .args(["run", "--no-progress"])
            .arg(&job)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(
        "missing",
        "    type: file\n    format: otlp_json\n    paths: [does-not-exist.jsonl]\n",
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("source `src`") && err.contains("does-not-exist.jsonl"),
        "{err}"
    );

    // A port nothing listens on (bound, then closed).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (code, err) = run(
        "down",
        &format!(
            "    type: kafka\n    brokers: 127.0.0.1:{port}\n    topics: [spans]\n    \
             group_id: g\n    start: earliest\n    end: latest\n"
        ),
    );
    assert_eq!(code, Some(75), "{err}");
    assert!(err.contains("retrying later may succeed"), "{err}");
}
