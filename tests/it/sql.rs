//! SQL: rollups inside a job give the same rows as their query run ad hoc over the
//! job's Parquet outputs; `spanflow sql` prints results and locates errors.

use std::path::Path;
use std::process::Command;

use spanflow::job::run_job;
use spanflow::runtime::RunOptions;
use spanflow::sql::{OutputCatalog, run, session};

use crate::support::{bin, read_table, root, rows};

/// Runs the rollups_basic golden job into `out`.
fn run_rollups_job(
    out: &Path,
    parallelism: usize,
) -> (spanflow::job::Job, spanflow::runtime::RunSummary) {
    let job = spanflow::job::load(&root().join("tests/golden/rollups_basic/job.yaml"))
        .unwrap_or_else(|d| panic!("{d}"));
    let opts = RunOptions {
        output_dir: Some(out.to_path_buf()),
        parallelism: Some(parallelism),
        ..Default::default()
    };
    let summary = run_job(&job, &opts).unwrap();
    // Three minutes of event time, every rollup ran per closed minute.
    assert_eq!(summary.rollup_windows.len(), 4);
    for (name, windows) in &summary.rollup_windows {
        assert!(*windows >= 3, "{name} ran on {windows} windows");
    }
    (job, summary)
}

#[test]
fn rollup_outputs_equal_the_same_query_over_the_parquet_outputs() {
    let out = tempfile::tempdir().unwrap();
    let (job, summary) = run_rollups_job(out.path(), 2);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ctx = session();
        let catalog = OutputCatalog::register(&ctx, out.path()).await.unwrap();
        assert!(catalog.tables.contains(&"red_metrics".to_owned()));
        for r in &job.rollups {
            let in_job = rows(&read_table(out.path(), &r.name), &[]);
            assert!(!in_job.is_empty(), "{} wrote no rows", r.name);
            let ad_hoc = run(&ctx, &r.query)
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", r.name));
            assert_eq!(
                rows(&ad_hoc.batches, &[]),
                in_job,
                "rollup `{}` differs from its query over the Parquet outputs",
                r.name
            );
        }
        // The per-service rollup adds up to red_metrics' entry spans.
        let total = run(
            &ctx,
            "SELECT (SELECT sum(requests) FROM red_per_service_1m) AS rolled, \
             (SELECT sum(requests) FROM red_metrics WHERE metric = 'service_server') AS raw",
        )
        .await
        .unwrap();
        let line = rows(&total.batches, &[]);
        let (rolled, raw) = line[0].split_once(' ').unwrap();
        assert_eq!(
            rolled.trim_start_matches("rolled="),
            raw.trim_start_matches("raw=")
        );
        // quantile_from_buckets over merged histograms is the run summary's p99.
        let top = &summary.services[0];
        let q = format!(
            "SELECT quantile_from_buckets(first_value(bucket_bounds), sum_buckets(bucket_counts), 0.99) AS p99 \
             FROM red_metrics WHERE metric = 'service_server' AND service = '{}'",
            top.service
        );
        let r = run(&ctx, &q).await.unwrap();
        let p99 = r.batches[0]
            .column(0)
            .as_any()
            .downcast_ref::<arrow::array::Float64Array>()
            .unwrap()
            .value(0);
        assert_eq!(Some(p99), top.p99_seconds, "{}", top.service);
    });
}

#[test]
fn spanflow_sql_prints_rows_and_locates_errors() {
    let out = tempfile::tempdir().unwrap();
    let _ = run_rollups_job(out.path(), 1);
    let traces = read_table(out.path(), "traces")
        .iter()
        .map(|b| b.num_rows())
        .sum::<usize>();
    let sql = |args: &[&str]| {
        Command::new(bin())
            .arg("sql")
            .arg("--output-dir")
            .arg(out.path())
            .args(args)
            .output()
            .unwrap()
    };
    let o = sql(&["--format", "csv", "SELECT count(*) AS n FROM traces"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout), format!("n\n{traces}\n"));

    // The table format, a UDF and the id helpers.
    let o = sql(&["SELECT hex(trace_id) AS id, length(hex(trace_id)) AS len FROM spans LIMIT 1"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("| 32  |") && text.contains("(1 row)"),
        "{text}"
    );

    let o = sql(&[
        "--format",
        "json",
        "SELECT service, p99_seconds FROM red_per_service_1m ORDER BY minute, service LIMIT 2",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v.as_array().map(Vec::len), Some(2));
    assert!(v[0]["p99_seconds"].as_f64().is_some());

    // A file of statements, and an unknown column located at line:column.
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("q.sql");
    std::fs::write(&f, "SELECT trace_id,\n       nope\nFROM traces;\n").unwrap();
    let o = sql(&["--file", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("q.sql:2:8"), "{err}");
    assert!(err.contains("nope"), "{err}");

    // Piped statements at the interactive prompt.
    let mut child = Command::new(bin())
        .arg("sql")
        .arg("--output-dir")
        .arg(out.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let stdin = child.stdin.as_mut().unwrap();
        stdin
            .write_all(b"\\d\nSELECT count(*)\n  AS n FROM traces;\n")
            .unwrap();
    }
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("| red_per_service_1m "), "{text}");
    assert!(text.contains("| table_name "), "{text}");
    assert!(text.contains(&format!("| {traces} |")), "{text}");

    // A directory without tables.
    let o = Command::new(bin())
        .args(["sql", "--output-dir"])
        .arg(dir.path())
        .arg("SELECT 1")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no tables"));
}
