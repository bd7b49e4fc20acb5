//! Golden tests: `tests/golden/<case>/{job.yaml, input...}` run through the real engine;
//! every output table is compared with `expected/<table>.txt` (sorted rows).
//! `UPDATE_GOLDEN=1` rewrites the expected files; review the diff before committing.

use std::path::Path;

use spanflow::job::run_job;
use spanflow::runtime::RunOptions;

use crate::support::{read_table, root, rows};

fn check_case(case: &str, tables: &[&str], parallelism: usize) {
    let dir = root().join("tests/golden").join(case);
    let job = spanflow::job::load(&dir.join("job.yaml")).unwrap_or_else(|d| panic!("{d}"));
    let out = tempfile::tempdir().unwrap();
    let opts = RunOptions {
        output_dir: Some(out.path().to_path_buf()),
        parallelism: Some(parallelism),
        ..Default::default()
    };
    run_job(&job, &opts).unwrap();
    for table in tables {
        // Payload bytes are opaque (a dead letter's length and reason are compared
        // instead), and so is a span's OTLP (its tests decode it).
        let opaque = ["payload", "otlp", "otlp_resource"];
        let got = rows(&read_table(out.path(), table), &opaque).join("\n") + "\n";
        let expected_path = dir.join("expected").join(format!("{table}.txt"));
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::create_dir_all(expected_path.parent().unwrap()).unwrap();
            std::fs::write(&expected_path, &got).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (run with UPDATE_GOLDEN=1)",
                expected_path.display()
            )
        });
        assert_eq!(
            got,
            expected,
            "{case}/{table} differs from {} (parallelism {parallelism})",
            show(&expected_path)
        );
    }
}

fn show(p: &Path) -> String {
    p.strip_prefix(root()).unwrap_or(p).display().to_string()
}

#[test]
fn sessions_basic() {
    for p in [1, 2, 3] {
        check_case(
            "sessions_basic",
            &["traces", "late_spans", "dead_letters"],
            p,
        );
    }
}

#[test]
fn analytics_basic() {
    for p in [1, 2] {
        check_case(
            "analytics_basic",
            &[
                "traces",
                "spans",
                "red_metrics",
                "exemplars",
                "service_relation",
            ],
            p,
        );
    }
}

/// The shipped rollups (sql/*.sql) run inside a job on a fixed generated input.
#[test]
fn rollups_basic() {
    for p in [1, 2] {
        check_case(
            "rollups_basic",
            &[
                "red_per_service_1m",
                "top_slow_operations_1m",
                "error_hotspots_1m",
                "slowest_exemplars_1m",
            ],
            p,
        );
    }
}

/// One session window feeding two samplers with different policies, RED metrics over
/// all traces and over one sampler's kept traces, and the service graph: every output
/// lands in its own table (`<node>_<port>` where two nodes share a port name), the
/// same at every parallelism.
#[test]
fn graph_fanout() {
    for p in [1, 2, 3] {
        check_case(
            "graph_fanout",
            &[
                "errors_traces",
                "slow_traces",
                "spans",
                "red_all_red_metrics",
                "red_all_exemplars",
                "red_kept_red_metrics",
                "red_kept_exemplars",
                "service_relation",
            ],
            p,
        );
    }
}

/// Alerts over RED metrics: an error burst and slow database calls each fire once after
/// their `for` and resolve after they end, the same at every parallelism, and every
/// trace id an alert carries is a kept trace (in `spans`). A rule's SQL condition that
/// says what a built-in rule says raises the same events.
#[test]
fn alerts_burst() {
    for p in [1, 2, 3] {
        check_case("alerts_burst", &["alerts"], p);
    }
    let dir = root().join("tests/golden/alerts_burst");
    let job = spanflow::job::load(&dir.join("job.yaml")).unwrap_or_else(|d| panic!("{d}"));
    let out = tempfile::tempdir().unwrap();
    let summary = run_job(
        &job,
        &RunOptions {
            output_dir: Some(out.path().to_path_buf()),
            ..Default::default()
        },
    )
    .unwrap();
    let alerts = read_table(out.path(), "alerts");
    let kept: std::collections::BTreeSet<String> =
        crate::support::column(&read_table(out.path(), "spans"), "trace_id")
            .into_iter()
            .collect();
    let ids = crate::support::column(&alerts, "trace_ids");
    let states = crate::support::column(&alerts, "state");
    assert!(
        states.iter().filter(|s| *s == "firing").count() >= 2,
        "{states:?}"
    );
    for (state, list) in states.iter().zip(&ids) {
        let list = crate::support::list_items(list);
        assert!(!list.is_empty(), "a {state} alert without a trace");
        for t in list {
            assert!(kept.contains(t), "alert trace {t} is not in spans");
        }
    }
    // A rule's SQL condition that says what a built-in rule says raises its events.
    let rules = crate::support::column(&alerts, "rule");
    let of_rule = |rule: &str| -> Vec<String> {
        let cols: Vec<Vec<String>> = [
            "at",
            "state",
            "service",
            "operation",
            "value",
            "requests",
            "starts_at",
            "ends_at",
            "trace_ids",
        ]
        .iter()
        .map(|c| crate::support::column(&alerts, c))
        .collect();
        (0..rules.len())
            .filter(|&i| rules[i] == rule)
            .map(|i| {
                cols.iter()
                    .map(|c| c[i].as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect()
    };
    assert_eq!(of_rule("entry-errors").len(), 2);
    assert_eq!(of_rule("entry-errors-sql"), of_rule("entry-errors"));
    let (_, m) = &summary.alerts[0];
    assert_eq!(m.fired(), m.fired_with_trace());
    assert!(
        summary.render().contains("with a kept trace (100%)"),
        "{}",
        summary.render()
    );
}
