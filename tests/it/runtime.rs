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

/// A generator job stopped mid-run with a checkpoint directory keeps a savepoint (the
/// generator resumes from its record count); the resumed run reads only the rest, and
/// the two runs' outputs together equal one uninterrupted run, rate limits included.
#[test]
fn a_stopped_generator_run_resumes_and_equals_an_uninterrupted_one() {
    use crate::support::{read_table, rows, run_and_stop_after};
    use spanflow::testkit::generator::GroundTruth;

    let text = "\
sources:
  gen: { type: generator, seed: 9, traces: 4000, traces_per_second: 100, late_fraction: 0.001, garbage_fraction: 0.002 }
operators:
  s: { type: session_window, from: gen, gap: 5s }
  t:
    type: tail_sampling
    from: s
    policies:
      - { name: errors, type: error }
      - { name: rl, type: endpoint_rate_limit, traces_per_second: 1 }
  m: { type: red_metrics, from: t, interval: 10s }
  g: { type: service_graph, from: t, interval: 10s }
sinks:
  o: { type: parquet, from: [t, t.spans, s.late_spans, gen.dead_letters, m, m.exemplars, g] }
";
    let job = spanflow::job::load_str(&root().join("resume.yaml"), text)
        .unwrap_or_else(|d| panic!("{d}"));
    let tmp = tempfile::tempdir().unwrap();
    let reference = tmp.path().join("reference");
    let whole = run_job(
        &job,
        &RunOptions {
            output_dir: Some(reference.clone()),
            parallelism: Some(2),
            ..Default::default()
        },
    )
    .unwrap();
    let total = whole.source_report::<GroundTruth>().unwrap().spans;

    let out = tmp.path().join("resumed");
    let opts = RunOptions {
        output_dir: Some(out.clone()),
        parallelism: Some(2),
        checkpoint_dir: Some(tmp.path().join("checkpoints")),
        ..Default::default()
    };
    let first = run_and_stop_after(&job, &opts, total * 2 / 5);
    assert!(
        first.savepoint.is_some(),
        "the stopped run kept a savepoint"
    );

    let second = run_job(&job, &opts).unwrap();
    assert!(second.restored && second.savepoint.is_none());
    assert_eq!(
        second.restored_from, first.savepoint,
        "it says which savepoint"
    );
    assert!(second.render().contains("resumed     from"));
    assert_eq!(
        first.decode.spans + second.decode.spans,
        total,
        "each span read once: the resumed run read only the rest"
    );
    for table in [
        "traces",
        "spans",
        "late_spans",
        "dead_letters",
        "red_metrics",
        "exemplars",
        "service_relation",
    ] {
        let a = rows(&read_table(&reference, table), &[]);
        let b = rows(&read_table(&out, table), &[]);
        assert_eq!(a.len(), b.len(), "{table}: row counts differ");
        assert!(a == b, "{table}: rows differ");
    }
}

/// The `file` source resumes after the records a stopped run read, across its files.
#[test]
fn a_stopped_file_run_resumes_after_the_records_it_read() {
    use crate::support::{read_table, rows, run_and_stop_after};
    use spanflow::formats::InputFormat;
    use spanflow::testkit::generator::{Generator, GeneratorConfig, write_records};

    let tmp = tempfile::tempdir().unwrap();
    let mut g = Generator::new(GeneratorConfig {
        traces: 2000,
        seed: 4,
        traces_per_second: 100.0,
        ..Default::default()
    })
    .unwrap();
    let records: Vec<_> = std::iter::from_fn(|| g.next_record()).collect();
    let total = g.ground_truth().spans;
    let (a, b) = records.split_at(records.len() / 3);
    write_records(
        &tmp.path().join("a.otlp"),
        InputFormat::OtlpProto,
        a.to_vec(),
    )
    .unwrap();
    write_records(
        &tmp.path().join("b.otlp"),
        InputFormat::OtlpProto,
        b.to_vec(),
    )
    .unwrap();
    let text = format!(
        "sources:\n  f: {{ type: file, format: otlp_proto, paths: [{}, {}] }}\n\
         operators:\n  s: {{ type: session_window, from: f, gap: 5s }}\n\
         sinks:\n  o: {{ type: parquet, from: [s, s.late_spans] }}\n",
        tmp.path().join("a.otlp").display(),
        tmp.path().join("b.otlp").display()
    );
    let job =
        spanflow::job::load_str(&root().join("file.yaml"), &text).unwrap_or_else(|d| panic!("{d}"));
    let reference = tmp.path().join("reference");
    run_job(
        &job,
        &RunOptions {
            output_dir: Some(reference.clone()),
            ..Default::default()
        },
    )
    .unwrap();

    let out = tmp.path().join("resumed");
    let opts = RunOptions {
        output_dir: Some(out.clone()),
        checkpoint_dir: Some(tmp.path().join("checkpoints")),
        ..Default::default()
    };
    // Stop in the second file.
    let first = run_and_stop_after(&job, &opts, total / 2);
    assert!(first.savepoint.is_some() && first.decode.spans < total);
    let second = run_job(&job, &opts).unwrap();
    assert_eq!(first.decode.spans + second.decode.spans, total);
    for table in ["traces", "late_spans"] {
        let a = rows(&read_table(&reference, table), &[]);
        let b = rows(&read_table(&out, table), &[]);
        assert!(a == b, "{table}: rows differ");
    }
}
