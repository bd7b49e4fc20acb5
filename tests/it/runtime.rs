//! Runtime behaviour across sources and sinks.

use spanflow::job::run_job;
use spanflow::runtime::RunOptions;

use crate::support::root;

/// Two generator sources with the same clock: neither may find the watermark already
/// past its first spans because the other started first.
#[test]
fn two_sources_share_the_watermark_from_the_start() {
    let text = "\
sources:
  a: { type: generator, seed: 1, traces: 300 }
  b: { type: generator, seed: 2, traces: 300 }
operators:
  s: { type: session_window, from: [a, b], gap: 10s }
sinks:
  o: { type: parquet, from: [s, s.late_spans] }
";
    let job =
        spanflow::job::load_str(&root().join("two.yaml"), text).unwrap_or_else(|d| panic!("{d}"));
    for _ in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        let opts = RunOptions {
            output_dir: Some(dir.path().to_path_buf()),
            parallelism: Some(2),
            ..Default::default()
        };
        let s = run_job(&job, &opts).unwrap();
        assert_eq!(
            s.sessions.late_spans(),
            0,
            "no span is late when both sources start together"
        );
        assert_eq!(s.sessions.spans_closed, s.decode.spans);
    }
}

#[test]
fn two_sinks_writing_one_table_in_one_directory_is_a_clear_error() {
    let text = "\
sources:
  g: { type: generator, traces: 10 }
operators:
  s: { type: session_window, from: g }
sinks:
  one: { type: parquet, from: [s], path: out/x }
  two: { type: parquet, from: [s], path: out/y }
";
    let job =
        spanflow::job::load_str(&root().join("dup.yaml"), text).unwrap_or_else(|d| panic!("{d}"));
    let dir = tempfile::tempdir().unwrap();
    let opts = RunOptions {
        output_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    };
    let err = run_job(&job, &opts).unwrap_err().to_string();
    assert!(
        err.contains("`one` and `two` both write table `traces`"),
        "{err}"
    );
}

/// A rate-limited sampler reading another's output would see its traces only after
/// its own windows closed: refused when the job is loaded, at the `from:` entry,
/// naming both nodes.
#[test]
fn chained_rate_limited_samplers_are_refused_with_both_names() {
    let text = "\
sources:
  gen: { type: generator, traces: 50 }
operators:
  s: { type: session_window, from: gen }
  a:
    type: tail_sampling
    from: s
    policies: [{ name: rl, type: endpoint_rate_limit, traces_per_second: 1 }]
  b:
    type: tail_sampling
    from: a.kept
    policies: [{ name: rl2, type: endpoint_rate_limit, traces_per_second: 1 }]
sinks:
  o: { type: parquet, from: [b] }
";
    let err = spanflow::job::load_str(&root().join("chain.yaml"), text)
        .expect_err("refused")
        .to_string();
    assert!(
        err.contains("chain.yaml:11:11")
            && err.contains("`b` rate-limits traces that `a` already held"),
        "{err}"
    );
}
