//! The embedded demo's promises: outputs equal the generator's ground truth, and the
//! same input gives the same rows across runs and parallelism.

use std::collections::BTreeSet;
use std::path::Path;

use spanflow::job::run_job;
use spanflow::runtime::{RunOptions, RunSummary};

use crate::support::{column, read_table, root, rows, sum};

/// jobs/demo.yaml, scaled down so the debug-build test stays fast.
fn demo_job(traces: u64) -> spanflow::job::Job {
    let text = std::fs::read_to_string(root().join("jobs/demo.yaml")).unwrap();
    let text = text.replace("traces: 20000", &format!("traces: {traces}"));
    let text = text.replace("late_fraction: 0.0005", "late_fraction: 0.002");
    let text = text.replace("garbage_fraction: 0.002", "garbage_fraction: 0.01");
    // Fifteen seconds of traffic: alerts fire at once and on fewer requests.
    let text = text
        .replace("for: 20s", "for: 0s")
        .replace("min_requests: 20", "min_requests: 5");
    assert!(
        text.contains("type: endpoint_rate_limit"),
        "the demo rate-limits per endpoint (its decisions must not depend on shards)"
    );
    spanflow::job::load_str(&root().join("jobs/demo.yaml"), &text).unwrap_or_else(|d| panic!("{d}"))
}

fn run(job: &spanflow::job::Job, dir: &Path, parallelism: usize) -> RunSummary {
    let opts = RunOptions {
        output_dir: Some(dir.to_path_buf()),
        parallelism: Some(parallelism),
        ..Default::default()
    };
    run_job(job, &opts).unwrap()
}

#[test]
fn outputs_match_ground_truth_and_are_deterministic() {
    let job = demo_job(3000);
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let c = tempfile::tempdir().unwrap();
    let d = tempfile::tempdir().unwrap();
    let sa = run(&job, a.path(), 1);
    let sb = run(&job, b.path(), 2);
    let sc = run(&job, c.path(), 2);
    let sd = run(&job, d.path(), 3);
    let gt = sa
        .source_report::<spanflow::testkit::generator::GroundTruth>()
        .cloned()
        .expect("generator ground truth");
    assert!(
        gt.late_spans > 0 && gt.garbage_records > 0,
        "the scenario exercises late data and garbage"
    );

    let traces = read_table(a.path(), "traces");
    let late = read_table(a.path(), "late_spans");
    let dead = read_table(a.path(), "dead_letters");

    // Every generated trace is there (fragments of capped traces share their id).
    let ids: BTreeSet<String> = column(&traces, "trace_id").into_iter().collect();
    assert_eq!(ids.len() as u64, gt.traces);
    // Every span is in a trace or in late_spans; likewise every error span.
    let late_rows = late.iter().map(|b| b.num_rows() as u64).sum::<u64>();
    assert_eq!(sum(&traces, "span_count") + late_rows, gt.spans);
    let late_errors = column(&late, "is_error")
        .iter()
        .filter(|v| *v == "true")
        .count() as u64;
    assert_eq!(sum(&traces, "error_count") + late_errors, gt.error_spans);
    assert_eq!(
        late_rows, gt.late_spans,
        "exactly the spans the generator delayed are late"
    );
    assert_eq!(late_errors, gt.late_error_spans);
    // Every garbage record is a dead letter.
    let dead_rows = dead.iter().map(|b| b.num_rows() as u64).sum::<u64>();
    assert_eq!(dead_rows, gt.garbage_records);
    assert_eq!(sa.decode.bad_records, gt.garbage_records);
    // The summary agrees with the tables.
    assert_eq!(sa.rows("traces"), sa.sessions.traces_closed());
    assert_eq!(sa.decode.spans, gt.spans);
    // Roots: every trace without a root lost its root to lateness.
    let rootless = column(&traces, "has_root")
        .iter()
        .filter(|v| *v == "false")
        .count();
    assert!(rootless as u64 <= gt.late_spans);

    // Metrics account for every span of every closed trace, exactly once per series kind.
    let red = read_table(a.path(), "red_metrics");
    let metric = column(&red, "metric");
    let requests = column(&red, "requests");
    let errors = column(&red, "errors");
    let node_sum = |col: &[String]| -> u64 {
        metric
            .iter()
            .zip(col)
            .filter(|(m, _)| *m == "service_node")
            .map(|(_, v)| v.parse::<u64>().unwrap())
            .sum()
    };
    assert_eq!(node_sum(&requests), sum(&traces, "span_count"));
    assert_eq!(node_sum(&errors), sum(&traces, "error_count"));
    // Bucket counts sum to the request count of every series.
    let counts = column(&red, "bucket_counts");
    for (c, r) in counts.iter().zip(&requests) {
        let total: u64 = c
            .trim_matches(['[', ']'])
            .split(", ")
            .map(|x| x.parse::<u64>().unwrap())
            .sum();
        assert_eq!(total.to_string(), *r);
    }
    // Every exemplar links to a trace whose spans are stored.
    let spans = read_table(a.path(), "spans");
    let stored: BTreeSet<String> = column(&spans, "trace_id").into_iter().collect();
    let exemplar_ids: BTreeSet<String> = column(&read_table(a.path(), "exemplars"), "trace_id")
        .into_iter()
        .collect();
    assert!(!exemplar_ids.is_empty());
    assert!(
        exemplar_ids.is_subset(&stored),
        "an exemplar links to a trace that was not kept"
    );
    // `spans` holds exactly the spans of the kept traces.
    let sampled = column(&traces, "sampled");
    let counts = column(&traces, "span_count");
    let kept_spans: u64 = sampled
        .iter()
        .zip(&counts)
        .filter(|(s, _)| *s == "true")
        .map(|(_, c)| c.parse::<u64>().unwrap())
        .sum();
    assert_eq!(
        spans.iter().map(|b| b.num_rows() as u64).sum::<u64>(),
        kept_spans
    );
    let kept = sampled.iter().filter(|s| *s == "true").count();
    assert!(
        kept > 0 && kept < sampled.len(),
        "the sampler keeps some traces, not all"
    );
    // Every error trace is kept (the `errors` policy).
    let errors = column(&traces, "error_count");
    assert!(
        errors
            .iter()
            .zip(&sampled)
            .all(|(e, s)| e == "0" || s == "true")
    );
    assert!(
        sa.services
            .first()
            .is_some_and(|s| s.service == "frontend-gateway")
    );

    // Every table is the same whatever the parallelism (sampling included: rate limits
    // decide over all shards' traces), and across runs.
    let tables: Vec<&str> = sa.outputs.iter().map(|o| o.table.as_str()).collect();
    assert_eq!(tables.len(), 12, "every output of the demo: {tables:?}");
    // Every alert carries trace ids, and every one is a kept trace: the share of alerts
    // with a trace to open is 100% by construction, and the summary says so.
    let alerts = read_table(a.path(), "alerts");
    let with_traces = column(&alerts, "trace_ids");
    assert!(!with_traces.is_empty(), "the demo raises alerts");
    for list in &with_traces {
        let ids = crate::support::list_items(list);
        assert!(!ids.is_empty(), "an alert without a trace");
        for t in ids {
            assert!(stored.contains(t), "alert trace {t} is not in spans");
        }
    }
    let (_, m) = &sa.alerts[0];
    assert!(m.fired() > 0 && m.fired() == m.fired_with_trace());
    assert!(sa.render().contains("with a kept trace (100%)"));
    assert!(sa.sampling.as_ref().unwrap().kept_by_policy["per-endpoint"] > 0);
    for table in tables {
        let ra = rows(&read_table(a.path(), table), &[]);
        assert!(!ra.is_empty(), "{table} has rows");
        let rb = rows(&read_table(b.path(), table), &[]);
        let rc = rows(&read_table(c.path(), table), &[]);
        let rd = rows(&read_table(d.path(), table), &[]);
        assert_eq!(ra, rb, "{table}: parallelism 1 vs 2");
        assert_eq!(rb, rc, "{table}: two runs");
        assert_eq!(ra, rd, "{table}: parallelism 1 vs 3");
    }
    assert_eq!(sb.sessions, sc.sessions);
    assert_eq!(sa.sampling, sd.sampling);
}

#[test]
fn a_rerun_with_fewer_shards_leaves_no_stale_parts() {
    let job = demo_job(200);
    let d = tempfile::tempdir().unwrap();
    run(&job, d.path(), 3);
    let s = run(&job, d.path(), 1);
    let traces = read_table(d.path(), "traces");
    assert_eq!(
        traces.iter().map(|b| b.num_rows() as u64).sum::<u64>(),
        s.sessions.traces_closed()
    );
}
