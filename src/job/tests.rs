//! Job loading: a valid job round trip, one test per kind of problem (each asserting the
//! exact `line:column`, key and hint), rendering, the demo job and the schema file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use spanflow_operators::HumanDuration;
use spanflow_operators::session_window::{GapCondition, GapRule, SessionWindowConfig};

use super::*;
use crate::connectors::parquet::{ParquetCompression, ParquetSinkConfig};
use crate::formats::InputFormat;
use crate::testkit::generator::GeneratorConfig;

const FILE: &str = "jobs/t.yaml";

fn manifest_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Loads `text`, expecting failure.
fn errors(text: &str) -> Diagnostics {
    match load_str(Path::new(FILE), text) {
        Ok(job) => panic!("expected problems, loaded {job:#?}"),
        Err(d) => d,
    }
}

/// Loads `text`, expecting exactly one problem.
fn one_error(text: &str) -> Diagnostic {
    let d = errors(text);
    assert_eq!(d.items.len(), 1, "expected one problem, got:\n{d}");
    d.items.into_iter().next().unwrap()
}

/// `(line, column, key, hint)` of a diagnostic.
fn spot(d: &Diagnostic) -> (usize, usize, &str, Option<&str>) {
    (d.line, d.column, d.key.as_str(), d.hint.as_deref())
}

/// A small valid job whose line 9 (after `from: gen` of `sessions`) can be varied.
fn with_session_line(line: &str) -> String {
    format!(
        "name: t
sources:
  gen:
    type: generator
operators:
  sessions:
    type: session_window
    from: gen
{line}
sinks:
  out:
    type: parquet
    from: [sessions]
"
    )
}

fn stream(node: &str, port: &str) -> StreamRef {
    StreamRef {
        node: node.into(),
        port: port.into(),
    }
}

#[test]
fn valid_job_round_trip() {
    let text = "\
name: round-trip
parallelism: 4
sources:
  gen:
    type: generator
    seed: 7
    traces: 100
    late_fraction: 0.25
    watermark:
      max_out_of_order: 2s
  files:
    type: file
    paths: [a.otlp, /abs/b.otlp]
    format: otlp_json
operators:
  sessions:
    type: session_window
    from: gen
    gap: 15s
    gap_rules:
      - when: { root_ended: true, min_spans: 3 }
        gap: 2s
  more:
    type: session_window
    from: [files]
sinks:
  out:
    type: parquet
    from: [sessions, more.late_spans, gen.dead_letters]
    compression: snappy
";
    let job = load_str(Path::new("jobs/x/rt.yaml"), text).unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(job.name, "round-trip");
    assert_eq!(job.path, Path::new("jobs/x/rt.yaml"));
    assert_eq!(job.parallelism, Some(4));

    assert_eq!(job.sources.len(), 2);
    let gen_node = &job.sources[0];
    assert_eq!(gen_node.name, "gen");
    let expected_gen = GeneratorConfig {
        seed: 7,
        traces: 100,
        late_fraction: 0.25,
        ..GeneratorConfig::default()
    };
    assert_eq!(gen_node.kind, SourceKind::Generator(expected_gen));
    assert_eq!(
        gen_node.watermark,
        WatermarkConfig {
            max_out_of_order: HumanDuration::secs(2),
            idle_timeout: HumanDuration::secs(30),
            ..WatermarkConfig::default()
        }
    );
    let files = &job.sources[1];
    let SourceKind::File(fc) = &files.kind else {
        panic!("not a file source: {:?}", files.kind)
    };
    // Relative to the job file's directory; absolute paths stay.
    assert_eq!(
        fc.paths,
        [PathBuf::from("jobs/x/a.otlp"), PathBuf::from("/abs/b.otlp")]
    );
    assert_eq!(fc.format, InputFormat::OtlpJson);
    assert_eq!(files.watermark, WatermarkConfig::default());

    assert_eq!(job.operators.len(), 2);
    let sessions = &job.operators[0];
    assert_eq!(sessions.from, [stream("gen", "spans")]);
    assert_eq!(
        sessions.kind,
        OperatorKind::SessionWindow(SessionWindowConfig {
            gap: HumanDuration::secs(15),
            gap_rules: vec![GapRule {
                when: GapCondition {
                    root_ended: Some(true),
                    min_spans: Some(3),
                    ..GapCondition::default()
                },
                gap: HumanDuration::secs(2),
            }],
            ..SessionWindowConfig::default()
        })
    );
    let more = &job.operators[1];
    assert_eq!(more.from, [stream("files", "spans")]);
    assert_eq!(
        more.kind,
        OperatorKind::SessionWindow(SessionWindowConfig::default())
    );

    assert_eq!(job.sinks.len(), 1);
    let out = &job.sinks[0];
    assert_eq!(
        out.from,
        [
            stream("sessions", "traces"),
            stream("more", "late_spans"),
            stream("gen", "dead_letters")
        ]
    );
    assert_eq!(
        out.kind,
        SinkKind::Parquet(ParquetSinkConfig {
            path: PathBuf::from("out"),
            row_group_rows: 64 * 1024,
            compression: ParquetCompression::Snappy,
        })
    );
}

#[test]
fn name_defaults_to_file_stem_and_operators_are_optional() {
    let text = "\
sources:
  gen: { type: generator }
sinks:
  out: { type: parquet, from: gen }
";
    let job = load_str(Path::new("jobs/my-job.yaml"), text).unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(job.name, "my-job");
    assert_eq!(job.parallelism, None);
    assert!(job.operators.is_empty());
    assert_eq!(job.sinks[0].from, [stream("gen", "spans")]);
    assert_eq!(
        job.sinks[0].kind,
        SinkKind::Parquet(ParquetSinkConfig {
            path: PathBuf::from("out"),
            row_group_rows: 64 * 1024,
            compression: ParquetCompression::Zstd,
        })
    );
    let job = load_str(Path::new("-"), text).unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(job.name, "job");
}

#[test]
fn fixture_file_source_paths_resolve_against_the_job_directory() {
    let path = manifest_path("tests/fixtures/jobs/file_source.yaml");
    let job = load(&path).unwrap_or_else(|d| panic!("{d}"));
    let SourceKind::File(fc) = &job.sources[0].kind else {
        panic!("not a file source")
    };
    assert_eq!(
        fc.paths,
        [
            manifest_path("tests/fixtures/jobs/input/spans.otlp"),
            PathBuf::from("/var/data/more.otlp")
        ]
    );
    assert_eq!(
        job.sources[0].watermark.idle_timeout,
        HumanDuration::secs(60)
    );
    assert_eq!(job.name, "file_source");
    // The sink's path stays relative to the working directory.
    let SinkKind::Parquet(pc) = &job.sinks[0].kind else {
        panic!("a parquet sink")
    };
    assert_eq!(pc.path, PathBuf::from("out/files"));
}

#[test]
fn demo_job_loads() {
    let job = load(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/jobs/demo.yaml"
    )))
    .unwrap_or_else(|d| panic!("{}", d.render_human(false)));
    assert_eq!(job.name, "demo");
    assert_eq!(job.sources.len(), 1);
    assert_eq!(job.operators.len(), 5);
    assert_eq!(job.sinks.len(), 1);
    assert_eq!(
        job.sinks[0].from,
        [
            stream("sampler", "traces"),
            stream("sampler", "spans"),
            stream("sessions", "late_spans"),
            stream("gen", "dead_letters"),
            stream("metrics", "red_metrics"),
            stream("metrics", "exemplars"),
            stream("graph", "service_relation"),
            stream("alerts", "alerts"),
            stream("red_per_service_1m", "red_per_service_1m"),
            stream("top_slow_operations_1m", "top_slow_operations_1m"),
            stream("error_hotspots_1m", "error_hotspots_1m"),
            stream("slowest_exemplars_1m", "slowest_exemplars_1m"),
        ]
    );
    let names: Vec<&str> = job.rollups.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "red_per_service_1m",
            "top_slow_operations_1m",
            "error_hotspots_1m",
            "slowest_exemplars_1m"
        ]
    );
    assert!(
        job.rollups
            .iter()
            .all(|r| r.window == HumanDuration::secs(60))
    );
}

/// A job with a metrics operator, a graph and `rollups` (its text from line 21 on).
fn with_rollups(rollups: &str) -> String {
    format!(
        "sources:
  gen: {{ type: generator }}
operators:
  sessions: {{ type: session_window, from: gen }}
  metrics: {{ type: red_metrics, from: sessions, interval: 10s }}
  graph: {{ type: service_graph, from: sessions, interval: 30s }}
sinks:
  out:
    type: parquet
    from: [metrics, per_service]
    path: out
rollups:
  per_service:
    from: metrics
    window: 1m
    query: |
      SELECT service,
             sum(requests) AS requests
      FROM red_metrics
      GROUP BY service
{rollups}"
    )
}

#[test]
fn rollups_plan_their_query_and_become_outputs() {
    let text = with_rollups(
        "  edges:\n    from: [graph]\n    query: SELECT source, target FROM service_relation\n",
    );
    let job = load_str(Path::new(FILE), &text).unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(job.rollups.len(), 2);
    let r = &job.rollups[0];
    assert_eq!(r.name, "per_service");
    assert_eq!(r.from, [stream("metrics", "red_metrics")]);
    assert_eq!(r.window, HumanDuration::secs(60));
    assert_eq!(r.query_file, None);
    let cols: Vec<&str> = r
        .schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect();
    assert_eq!(cols, ["service", "requests"]);
    // Without `window`, the input's interval.
    assert_eq!(job.rollups[1].window, HumanDuration::secs(30));
    assert_eq!(
        job.sinks[0].from,
        [
            stream("metrics", "red_metrics"),
            stream("per_service", "per_service")
        ]
    );
}

#[test]
fn an_invalid_inline_rollup_query_is_located_in_the_job_file() {
    let text = with_rollups("").replace("sum(requests)", "sum(requestz)");
    let d = one_error(&text);
    // Line 18 is `             sum(requestz) AS requests`, `requestz` at column 18.
    assert_eq!(
        (d.line, d.column, d.key.as_str()),
        (18, 18, "rollups.per_service.query")
    );
    assert!(
        d.message.starts_with("rollup `per_service`: "),
        "{}",
        d.message
    );
    assert!(d.message.contains("requestz"), "{}", d.message);
    assert_eq!(
        d.source_line.as_deref(),
        Some("             sum(requestz) AS requests")
    );
    // A one-line query: the column counts from the start of the line.
    let text = with_rollups(
        "  edges:\n    from: graph\n    query: SELECT source, targt FROM service_relation\n",
    );
    let d = one_error(&text);
    assert_eq!((d.line, d.column), (23, 27), "{}", d.message);
    assert!(d.message.contains("targt"), "{}", d.message);
}

#[test]
fn an_invalid_rollup_sql_file_is_located_in_that_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sql = dir.path().join("bad.sql");
    std::fs::write(
        &sql,
        "-- per service\nSELECT service\nFROM red_metrics\nGROUP BY servic\n",
    )
    .expect("write");
    let job_path = dir.path().join("job.yaml");
    let text = with_rollups("  from_file:\n    from: metrics\n    sql: bad.sql\n");
    let d = match load_str(&job_path, &text) {
        Ok(_) => panic!("loaded"),
        Err(d) => d,
    };
    assert_eq!(d.items.len(), 1, "{d}");
    let d = &d.items[0];
    assert_eq!(d.file, sql);
    assert_eq!((d.line, d.column), (4, 10), "{}", d.message);
    assert_eq!(d.source_line.as_deref(), Some("GROUP BY servic"));
    assert_eq!(d.key, "rollups.from_file.sql");
    assert!(
        d.hint.as_deref().is_some_and(|h| h.contains("job.yaml:23")),
        "{:?}",
        d.hint
    );
    // A missing file is reported at `sql:` in the job.
    let text = with_rollups("  from_file:\n    from: metrics\n    sql: missing.sql\n");
    let d = match load_str(&job_path, &text) {
        Ok(_) => panic!("loaded"),
        Err(d) => d.items.into_iter().next().expect("one"),
    };
    assert_eq!((d.line, d.column), (23, 10));
    assert!(d.message.contains("missing.sql"), "{}", d.message);
}

#[test]
fn rollup_graph_and_window_problems() {
    // Reads spans.
    let d = one_error(&with_rollups(
        "  r2:\n    from: gen\n    query: SELECT 1 AS one\n",
    ));
    assert_eq!((d.line, d.column), (22, 11));
    assert!(
        d.message.contains("rollup reads metric streams"),
        "{}",
        d.message
    );
    // Reads another rollup.
    let d = one_error(&with_rollups(
        "  r2:\n    from: per_service\n    query: SELECT 1 AS one\n",
    ));
    assert!(d.message.contains("carries rollup rows"), "{}", d.message);
    // A window that is not a multiple of the interval.
    let d = one_error(&with_rollups(
        "  r2:\n    from: graph\n    window: 45s\n    query: SELECT 1 AS one\n",
    ));
    assert_eq!(
        (d.line, d.column, d.key.as_str()),
        (23, 13, "rollups.r2.window")
    );
    assert!(d.message.contains("multiple"), "{}", d.message);
    // Inputs with different intervals need a window.
    let d = one_error(&with_rollups(
        "  r2:\n    from: [metrics, graph]\n    query: SELECT 1 AS one\n",
    ));
    assert!(d.message.contains("common multiple"), "{}", d.message);
    // Neither sql nor query; and an unknown key.
    let d = errors(&with_rollups("  r2:\n    from: graph\n    type: sql\n"));
    let messages: Vec<&str> = d.items.iter().map(|i| i.message.as_str()).collect();
    assert!(
        messages.iter().any(|m| m.contains("unknown key `type`")),
        "{messages:?}"
    );
    assert!(
        messages.iter().any(|m| m.contains("needs `sql")),
        "{messages:?}"
    );
}

/// A ClickHouse sink writes rollups whose result has a time column, and its `tables`
/// and `table_ttl` name outputs it writes.
#[test]
fn clickhouse_sinks_of_rollups() {
    let with_sink = |rollup_query: &str, settings: &str| {
        with_rollups("").replace("GROUP BY service", rollup_query).replace(
            "rollups:\n",
            &format!(
                "  ch:\n    type: clickhouse\n    from: [metrics, per_service]\n{settings}rollups:\n"
            ),
        )
    };
    // Line 20 is `      SELECT service,`; a time column makes it writable.
    let ok = with_sink(
        "GROUP BY service",
        "    tables: { per_service: svc_rollup }\n    table_ttl: { red_metrics: 3d }\n",
    )
    .replace(
        "      SELECT service,",
        "      SELECT date_bin(INTERVAL '1 minute', interval_start) AS minute, service,",
    )
    .replace("GROUP BY service", "GROUP BY 1, 2");
    let job = load_str(Path::new(FILE), &ok).unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(job.rollups[0].key, ["minute", "service"]);
    // A group member's partial metric rows would replace another member's there.
    assert!(super::plan(&job, None).is_ok());
    let refused = super::plan_member(&job, None, Some("a"))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        refused.contains("cannot write `red_metrics` from group member `a`"),
        "{refused}"
    );
    // Without one, rows of successive windows would replace each other.
    let d = one_error(&with_sink("GROUP BY service", ""));
    assert_eq!(
        (d.line, d.column, d.key.as_str()),
        (14, 21, "sinks.ch.from.1")
    );
    assert!(
        d.message
            .starts_with("clickhouse sink `ch` cannot write rollup `per_service`: ")
            && d.message.contains("no timestamp column"),
        "{}",
        d.message
    );
    // A table named for an output the sink does not write.
    let d = one_error(&ok.replace(
        "table_ttl: { red_metrics: 3d }",
        "table_ttl: { exemplars: 3d }",
    ));
    assert_eq!(
        (d.line, d.column, d.key.as_str()),
        (16, 18, "sinks.ch.table_ttl.exemplars")
    );
    assert!(
        d.message.contains("does not write `exemplars`"),
        "{}",
        d.message
    );
    let d = one_error(&ok.replace("tables: { per_service:", "tables: { per_servic:"));
    assert_eq!(d.hint.as_deref(), Some("did you mean `per_service`?"));
}

#[test]
fn unknown_top_level_key() {
    let text =
        "name: t\nparalelism: 2\n".to_owned() + &with_session_line("").replace("name: t\n", "");
    let d = one_error(&text);
    assert_eq!(
        spot(&d),
        (2, 1, "paralelism", Some("did you mean `parallelism`?"))
    );
    assert!(
        d.message.contains("unknown top-level key `paralelism`"),
        "{}",
        d.message
    );
}

#[test]
fn unknown_field_typo_in_session_window() {
    let d = one_error(&with_session_line("    gapp: 10s"));
    assert_eq!(
        spot(&d),
        (9, 5, "operators.sessions.gapp", Some("did you mean `gap`?"))
    );
    assert_eq!(
        d.message,
        "unknown key `gapp` in session_window operator `sessions`"
    );
    assert_eq!(d.width, 4);
}

#[test]
fn typo_of_a_node_key_is_suggested_too() {
    // `form` instead of `from`: one problem (no extra "missing `from`").
    let text = with_session_line("").replace("    from: gen\n", "    form: gen\n");
    let d = one_error(&text);
    assert_eq!(
        spot(&d),
        (
            8,
            5,
            "operators.sessions.form",
            Some("did you mean `from`?")
        )
    );
}

#[test]
fn wrong_value_type() {
    let d = one_error(&with_session_line("    max_spans_per_trace: lots"));
    assert_eq!(
        spot(&d),
        (9, 26, "operators.sessions.max_spans_per_trace", None)
    );
    assert_eq!(
        d.message,
        "`max_spans_per_trace` must be a non-negative integer, found `lots`"
    );
}

#[test]
fn bad_duration() {
    let d = one_error(&with_session_line("    gap: 10 parsecs"));
    assert_eq!(spot(&d), (9, 10, "operators.sessions.gap", None));
    assert!(
        d.message
            .starts_with("`gap`: invalid duration `10 parsecs`"),
        "{}",
        d.message
    );
}

#[test]
fn unknown_type() {
    let text = with_session_line("").replace("type: session_window", "type: sesion_window");
    let d = one_error(&text);
    assert_eq!(
        spot(&d),
        (
            7,
            11,
            "operators.sessions.type",
            Some("did you mean `session_window`?")
        )
    );
    assert_eq!(d.message, "unknown operator type `sesion_window` in `type`");
}

#[test]
fn unknown_variant_value() {
    let d = one_error(&with_session_line("").replace(
        "    type: parquet\n",
        "    type: parquet\n    compression: snapy\n",
    ));
    assert_eq!(
        spot(&d),
        (
            13,
            18,
            "sinks.out.compression",
            Some("did you mean `snappy`?")
        )
    );
    assert_eq!(
        d.message,
        "`compression` must be one of `none`, `snappy` or `zstd`, found `snapy`"
    );
}

#[test]
fn unknown_from_node() {
    let text = with_session_line("").replace("from: [sessions]", "from: [sesions]");
    let d = one_error(&text);
    assert_eq!(
        spot(&d),
        (13, 12, "sinks.out.from.0", Some("did you mean `sessions`?"))
    );
    assert_eq!(d.message, "`from` refers to unknown node `sesions`");
}

#[test]
fn unknown_port() {
    let text = with_session_line("").replace("from: [sessions]", "from: [sessions.late]");
    let d = one_error(&text);
    assert_eq!(
        spot(&d),
        (
            13,
            12,
            "sinks.out.from.0",
            Some(
                "did you mean `late_spans`? outputs of `sessions`: `traces` (default), `late_spans`"
            )
        )
    );
    let text = with_session_line("").replace("from: gen", "from: gen.foo");
    let d = one_error(&text);
    assert_eq!(
        spot(&d),
        (
            8,
            11,
            "operators.sessions.from",
            Some("outputs of `gen`: `spans` (default), `dead_letters`")
        )
    );
    assert_eq!(
        d.message,
        "generator source `gen` has no output `foo` (in `from: gen.foo`)"
    );
}

#[test]
fn stream_kind_mismatch() {
    let text = with_session_line("").replace("from: gen", "from: gen.dead_letters");
    let d = one_error(&text);
    assert_eq!(spot(&d).0, 8);
    assert_eq!(spot(&d).1, 11);
    assert_eq!(
        d.message,
        "session_window reads span streams, but `gen.dead_letters` carries dead letters"
    );
}

#[test]
fn duplicate_names_across_sections() {
    let text = with_session_line("").replace("  out:\n", "  gen:\n");
    let d = one_error(&text);
    assert_eq!(spot(&d), (11, 3, "sinks.gen", Some("rename one of them")));
    assert!(
        d.message.contains("node name `gen` is used twice"),
        "{}",
        d.message
    );
}

#[test]
fn duplicate_names_within_a_section() {
    let text =
        with_session_line("").replace("operators:\n", "  gen:\n    type: generator\noperators:\n");
    let d = one_error(&text);
    assert_eq!((d.line, d.column, d.key.as_str()), (5, 3, "sources.gen"));
    assert!(
        d.message.starts_with("duplicate key `gen`"),
        "{}",
        d.message
    );
}

#[test]
fn invalid_node_name() {
    let text = with_session_line("").replace("  out:\n", "  out put:\n");
    let d = one_error(&text);
    assert_eq!(
        spot(&d),
        (11, 3, "sinks.out put", Some("rename it, e.g. `out_put`"))
    );
}

#[test]
fn cycle() {
    let text = "\
sources:
  gen:
    type: generator
operators:
  a:
    type: span_filter
    from: [gen, b]
    drop: [{ name: x }]
  b:
    type: span_filter
    from: a
    drop: [{ name: x }]
sinks:
  out:
    type: parquet
    from: [a]
";
    let d = one_error(text);
    assert_eq!(
        spot(&d),
        (
            7,
            17,
            "operators.a.from.1",
            Some("remove one of the `from` entries along the cycle")
        )
    );
    assert!(
        d.message
            .starts_with("`from` makes a cycle: `a` -> `b` -> `a`"),
        "{}",
        d.message
    );

    let self_loop = text.replace("from: [gen, b]", "from: [gen, a]");
    let d = one_error(&self_loop);
    assert_eq!((d.line, d.column), (7, 17));
    assert!(
        d.message.starts_with("`from` makes a cycle: `a` -> `a`"),
        "{}",
        d.message
    );
}

#[test]
fn validate_issue_at_value() {
    let d = one_error(&with_session_line("    gap: 0s"));
    assert_eq!(spot(&d), (9, 10, "operators.sessions.gap", None));
    assert_eq!(d.message, "`gap` must be greater than zero, found `0s`");
}

#[test]
fn validate_issue_in_gap_rules() {
    let rules = "    gap_rules:
      - when: {}
        gap: 2s
      - when: { has_async: true }
        gap: 0s";
    let d = errors(&with_session_line(rules));
    let found: Vec<_> = d
        .items
        .iter()
        .map(|d| (d.line, d.column, d.key.as_str(), d.message.as_str()))
        .collect();
    assert_eq!(
        found,
        [
            (
                10,
                15,
                "operators.sessions.gap_rules.0.when",
                "`gap_rules[0].when`: an empty condition matches every trace, so the rules after \
                 it never apply; move it last or use `gap`"
            ),
            (
                13,
                14,
                "operators.sessions.gap_rules.1.gap",
                "`gap_rules[1].gap` must be greater than zero, found `0s`"
            ),
        ]
    );
}

#[test]
fn issue_paths_locate_list_items_and_fall_back_to_the_deepest_key() {
    let text =
        "gap_rules:\n  - when: {}\n    gap: 2s\n  - when: { has_async: true }\n    gap: 0s\n";
    let doc = yaml::parse(text).unwrap();
    let root = doc.root.unwrap();
    let path = |p: &str| -> Vec<String> { p.split('.').map(str::to_owned).collect() };
    let pos = |p: &str| load::locate(&root, &path(p)).map(|p| (p.line, p.column));
    // The second list item starts at its first key.
    assert_eq!(pos("gap_rules.1"), Some((4, 5)));
    assert_eq!(pos("gap_rules.1.when.has_async"), Some((4, 24)));
    // A defaulted key: its closest ancestor in the file.
    assert_eq!(pos("gap_rules.1.when.min_spans"), Some((4, 11)));
    assert_eq!(pos("max_duration"), None);
}

#[test]
fn missing_required_field() {
    let text = "\
sources:
  files:
    type: file
    format: otlp_json
sinks:
  out: { type: parquet, from: files }
";
    let d = one_error(text);
    assert_eq!(
        spot(&d),
        (2, 3, "sources.files.paths", Some("add `paths: ...`"))
    );
    assert_eq!(
        d.message,
        "missing required key `paths` in file source `files`"
    );
}

#[test]
fn missing_type_and_from() {
    let text = "\
sources:
  gen: { seed: 1 }
sinks:
  out:
    type: parquet
";
    let d = errors(text);
    let found: Vec<_> = d
        .items
        .iter()
        .map(|d| (d.line, d.column, d.key.as_str()))
        .collect();
    assert_eq!(
        found,
        [(2, 3, "sources.gen.type"), (4, 3, "sinks.out.from")]
    );
}

#[test]
fn missing_sections() {
    let d = one_error("sources:\n  gen: { type: generator }\n");
    assert_eq!((d.line, d.column, d.key.as_str()), (1, 1, "sinks"));
    assert_eq!(
        d.message,
        "missing key `sinks`: a job needs at least one sink"
    );
    let d = errors("sources: {}\nsinks:\n");
    let found: Vec<_> = d
        .items
        .iter()
        .map(|d| (d.line, d.column, d.key.as_str()))
        .collect();
    assert_eq!(found, [(1, 1, "sources"), (2, 1, "sinks")]);
    let d = one_error("");
    assert_eq!((d.line, d.column), (1, 1));
}

#[test]
fn streams_sharing_a_port_name_get_tables_named_after_their_node() {
    let text = "\
sources:
  a: { type: generator }
  b: { type: generator }
  c: { type: generator }
sinks:
  out:
    type: parquet
    from: [a.dead_letters, b.dead_letters]
  other:
    type: parquet
    path: elsewhere
    from: [c.dead_letters]
";
    let job = load_str(Path::new("jobs/t.yaml"), text).unwrap_or_else(|d| panic!("{d}"));
    let names = crate::job::table_names(job.sinks.iter().flat_map(|s| &s.from));
    let got: Vec<&str> = names.values().map(String::as_str).collect();
    assert_eq!(got, ["a_dead_letters", "b_dead_letters", "c_dead_letters"]);
    // One stream per port name keeps the port's name.
    let one = crate::job::table_names(job.sinks[1].from.iter());
    assert_eq!(one.values().collect::<Vec<_>>(), ["dead_letters"]);
}

#[test]
fn sink_reads_a_stream_twice() {
    let text =
        with_session_line("").replace("from: [sessions]", "from: [sessions, sessions.traces]");
    let d = one_error(&text);
    assert_eq!(
        (d.line, d.column, d.key.as_str()),
        (13, 22, "sinks.out.from.1")
    );
    assert_eq!(
        d.message,
        "sink `out` reads `sessions.traces` twice (`sessions` and `sessions.traces`)"
    );
}

#[test]
fn watermark_errors() {
    let text = with_session_line("").replace(
        "    type: generator\n",
        "    type: generator\n    watermark:\n      max_out_of_ordr: 1s\n",
    );
    let d = one_error(&text);
    assert_eq!(
        spot(&d),
        (
            6,
            7,
            "sources.gen.watermark.max_out_of_ordr",
            Some("did you mean `max_out_of_order`?")
        )
    );
}

#[test]
fn several_errors_are_all_reported() {
    let path = manifest_path("tests/fixtures/jobs/many_errors.yaml");
    let d = load(&path).unwrap_err();
    let found: Vec<_> = d
        .items
        .iter()
        .map(|d| (d.line, d.column, d.key.as_str()))
        .collect();
    assert_eq!(
        found,
        [
            (6, 11, "sources.gen.seed"),
            (7, 5, "sources.gen.traces_per_sec"),
            (8, 3, "sources.bad name"),
            (13, 17, "operators.sessions.from.1"),
            (14, 10, "operators.sessions.gap"),
            (15, 19, "operators.sessions.max_duration"),
            (19, 22, "sinks.out.from.1"),
            (20, 21, "sinks.out.row_group_rows"),
        ],
        "{d}"
    );
    assert_eq!(
        d.items[1].hint.as_deref(),
        Some("did you mean `traces_per_second`?")
    );
    assert!(d.items.iter().all(|i| i.file == path));
}

#[test]
fn yaml_syntax_error_has_a_position() {
    let text = "sources:\n  gen:\n    type: generator\n    seed: 42: x\n";
    let d = one_error(text);
    assert_eq!((d.line, d.column, d.key.as_str()), (4, 13, ""));
    assert!(d.message.starts_with("invalid YAML: "), "{}", d.message);
}

#[test]
fn unreadable_file() {
    let d = load(Path::new("/nonexistent/job.yaml")).unwrap_err();
    assert_eq!(d.items.len(), 1);
    assert_eq!((d.items[0].line, d.items[0].column), (0, 0));
    assert!(d.render_human(false).contains("cannot read job file"));
}

#[test]
fn render_human_points_at_the_problem() {
    let d = errors(&with_session_line("    gapp: 10s"));
    let text = d.render_human(false);
    let expected = "\
error: unknown key `gapp` in session_window operator `sessions`
 --> jobs/t.yaml:9:5
  |
9 |     gapp: 10s
  |     ^^^^
  = help: did you mean `gap`?

error: 1 problem in job file `jobs/t.yaml`
";
    assert_eq!(text, expected);
    assert_eq!(d.to_string(), expected.trim_end());
    let colored = d.render_human(true);
    assert!(colored.contains("\x1b["), "{colored}");
    assert!(colored.contains("jobs/t.yaml:9:5"));
    assert!(colored.contains("did you mean `gap`?"));
}

#[test]
fn render_json_parses() {
    let path = manifest_path("tests/fixtures/jobs/many_errors.yaml");
    let d = load(&path).unwrap_err();
    let v: serde_json::Value = serde_json::from_str(&d.render_json()).unwrap();
    let items = v.as_array().unwrap();
    assert_eq!(items.len(), d.items.len());
    assert_eq!(items[1]["line"], 7);
    assert_eq!(items[1]["column"], 5);
    assert_eq!(items[1]["key"], "sources.gen.traces_per_sec");
    assert_eq!(items[1]["hint"], "did you mean `traces_per_second`?");
    assert_eq!(items[0]["hint"], serde_json::Value::Null);
    assert_eq!(items[0]["file"], path.display().to_string());
    assert!(items[0]["message"].as_str().unwrap().contains("`seed`"));
}

/// The published schema (`schemas/job.schema.json`) is `json_schema()`.
#[test]
fn schema_file_is_current() {
    let path = manifest_path("schemas/job.schema.json");
    let expected = serde_json::to_string_pretty(&json_schema()).unwrap() + "\n";
    if std::env::var_os("UPDATE_SCHEMA").is_some() {
        std::fs::write(&path, &expected).unwrap();
        return;
    }
    let found = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        found == expected,
        "{} is stale: regenerate it with `UPDATE_SCHEMA=1 cargo test --lib job::`",
        path.display()
    );
}

/// The schema types accept what the loader accepts (they describe the same format).
#[test]
fn schema_types_read_the_demo_job() {
    let text = std::fs::read_to_string(manifest_path("jobs/demo.yaml")).unwrap();
    let file: file::JobFile = serde_saphyr::from_str(&text).unwrap();
    assert_eq!(file.sources.len(), 1);
    let schema = json_schema();
    assert_eq!(schema["title"], "spanflow job");
    assert_eq!(schema["required"], serde_json::json!(["sources", "sinks"]));
    let types = |def: &str| -> Vec<String> {
        schema["$defs"][def]["oneOf"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| {
                v["properties"]["type"]["const"]
                    .as_str()
                    .unwrap_or("?")
                    .to_owned()
            })
            .collect()
    };
    assert_eq!(types("SourceFile"), ["generator", "file", "kafka", "otlp"]);
    assert_eq!(
        types("SinkFile"),
        ["parquet", "kafka", "clickhouse", "alertmanager"]
    );
}

#[test]
fn durations_in_the_demo_are_parsed() {
    let job = load(&manifest_path("jobs/demo.yaml")).unwrap();
    let c = job
        .operators
        .iter()
        .find_map(|o| match &o.kind {
            OperatorKind::SessionWindow(c) => Some(c),
            _ => None,
        })
        .expect("the demo has a session window");
    assert_eq!(c.max_duration, HumanDuration(Duration::from_secs(300)));
    assert_eq!(c.gap_rules.len(), 2);
}

#[test]
fn anchors_and_merge_keys() {
    let text = "\
sources:
  a:
    type: generator
    watermark: &wm { max_out_of_order: 1s, idle_timeout: 9s }
  b:
    type: generator
    watermark:
      <<: *wm
      idle_timeout: 5s
sinks:
  out: { type: parquet, from: [a, b.dead_letters] }
";
    let job = load_str(Path::new(FILE), text).unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(
        job.sources[0].watermark.idle_timeout,
        HumanDuration::secs(9)
    );
    assert_eq!(
        job.sources[1].watermark,
        WatermarkConfig {
            max_out_of_order: HumanDuration::secs(1),
            idle_timeout: HumanDuration::secs(5),
            ..WatermarkConfig::default()
        }
    );
}

#[test]
fn a_metric_operator_reading_two_session_windows_is_refused() {
    let text = "\
sources:
  gen: { type: generator }
operators:
  a: { type: session_window, from: gen }
  b: { type: session_window, from: gen }
  red:
    type: red_metrics
    from: [a, b]
sinks:
  out: { type: parquet, from: [red] }
";
    let d = one_error(text);
    assert_eq!(
        spot(&d),
        (
            8,
            15,
            "operators.red.from.1",
            Some("give each window its own red_metrics")
        )
    );
    assert!(
        d.message.contains("two session windows, `a` and `b`"),
        "{}",
        d.message
    );
}

fn overridden(text: &str, sets: &[&str]) -> Result<Job, Diagnostics> {
    let overrides: Vec<Override> = sets.iter().map(|s| s.parse().unwrap()).collect();
    load_str_with(Path::new(FILE), text, &overrides)
}

#[test]
fn overrides_replace_add_and_are_validated_like_the_file() {
    let text =
        with_session_line("    gap: 10s\n    gap_rules: [{ when: { root_ended: true }, gap: 3s }]");
    let job = overridden(
        &text,
        &[
            "operators.sessions.gap=20s",
            "operators.sessions.gap_rules.0.gap=1s",
            "operators.sessions.max_duration=2m",
            "sinks.out.from=[sessions, sessions.late_spans]",
            "sources.gen.seed=7",
        ],
    )
    .unwrap_or_else(|d| panic!("{d}"));
    let OperatorKind::SessionWindow(c) = &job.operators[0].kind else {
        panic!("not a session window")
    };
    assert_eq!(c.gap, HumanDuration::secs(20));
    assert_eq!(c.gap_rules[0].gap, HumanDuration::secs(1));
    assert_eq!(c.max_duration, HumanDuration(Duration::from_secs(120)));
    assert_eq!(job.sinks[0].from.len(), 2);
    let SourceKind::Generator(g) = &job.sources[0].kind else {
        panic!("not a generator")
    };
    assert_eq!(g.seed, 7);

    // A bad value is reported at the override, with the file's other problems.
    let d = overridden(&text, &["operators.sessions.gapp=3s", "sources.gen.seed=x"]).unwrap_err();
    assert_eq!(d.items.len(), 2, "{d}");
    assert_eq!(d.items[0].file, Path::new("--set"));
    assert_eq!(
        spot(&d.items[0]),
        (
            1,
            25,
            "operators.sessions.gapp",
            Some("did you mean `gap`?")
        )
    );
    assert_eq!((d.items[1].line, d.items[1].column), (2, 18));
    let rendered = d.render_human(false);
    assert!(rendered.contains("--> --set:1:25"), "{rendered}");
    assert!(
        rendered.contains("2 problems in the `--set` overrides"),
        "{rendered}"
    );

    // Paths that cannot be followed.
    let d = overridden(&text, &["name.x=1", "sinks.out.from.5=a"]).unwrap_err();
    assert!(
        d.items[0].message.contains("is the value `t`, not a map"),
        "{d}"
    );
    assert!(d.items[1].message.contains("list of 1 items"), "{d}");
    assert!("=1".parse::<Override>().is_err());
    assert!("no-equals".parse::<Override>().is_err());
}

#[test]
fn replay_rewrites_kafka_sources_and_leaves_the_live_group_alone() {
    let text = "name: live
sources:
  in:
    type: kafka
    brokers: 127.0.0.1:9092
    topics: [spans]
    group_id: live
    start: committed
    end_offsets: { spans: { 0: 10 } }
operators:
  sessions:
    type: session_window
    from: in
sinks:
  out:
    type: parquet
    from: [sessions]
";
    let mut job = load_str(Path::new(FILE), text).unwrap_or_else(|d| panic!("{d}"));
    let r = replay::prepare(
        &mut job,
        "2026-11-21T10:00:00Z",
        "2026-11-21T11:00:00Z",
        None,
        None,
    )
    .unwrap();
    let SourceKind::Kafka(c) = &job.sources[0].kind else {
        panic!("not kafka")
    };
    assert_eq!(c.group_id, "live.replay.20261121T100000Z-20261121T110000Z");
    assert_eq!(c.start, "2026-11-21T10:00:00Z");
    assert_eq!(c.end.as_deref(), Some("2026-11-21T11:00:00Z"));
    assert!(c.end_offsets.is_empty());
    assert_eq!(r.groups[0].1, "live");
    assert_eq!((r.from_ms, r.to_ms), (1_795_255_200_000, 1_795_258_800_000));
    assert_eq!(
        r.checkpoint_dir,
        Path::new(".spanflow/replay/live/20261121T100000Z-20261121T110000Z")
    );
    assert_eq!(
        job.checkpoint.as_ref().map(|c| &c.dir),
        Some(&r.checkpoint_dir)
    );

    let fresh = || load_str(Path::new(FILE), text).unwrap();
    let err = |from: &str, to: &str, group: Option<&str>| {
        replay::prepare(&mut fresh(), from, to, group, None).unwrap_err()
    };
    assert!(err("2026-11-21T11:00:00Z", "2026-11-21T10:00:00Z", None).contains("must be before"));
    assert!(err("yesterday", "2026-11-21T10:00:00Z", None).contains("--from"));
    assert!(
        err("2026-11-21T10:00:00Z", "2026-11-21T11:00:00Z", Some("live"))
            .contains("must not be the live job's")
    );
    let mut generated = load_str(Path::new(FILE), &with_session_line("")).unwrap();
    let e = replay::prepare(
        &mut generated,
        "2026-11-21T10:00:00Z",
        "2026-11-21T11:00:00Z",
        None,
        None,
    )
    .unwrap_err();
    assert!(
        e.contains("`gen`") && e.contains("not a kafka source"),
        "{e}"
    );
}

/// `spanflow submit`'s self-contained job: the demo's rollup files are inlined, its
/// relative output made absolute, every comment kept, and it loads to the same job.
#[test]
fn a_self_contained_job_inlines_rollup_files_and_keeps_the_rest() {
    let path = manifest_path("jobs/demo.yaml");
    let text = self_contained(&path).unwrap();
    let original = std::fs::read_to_string(&path).unwrap();
    for line in original.lines().filter(|l| l.trim_start().starts_with('#')) {
        assert!(text.contains(line), "comment `{line}` lost");
    }
    assert!(
        !text.lines().any(|l| l.trim_start().starts_with("sql:")),
        "{text}"
    );
    let elsewhere = Path::new("/nowhere/job.yaml");
    let a = load(&path).unwrap();
    let b = load_str(elsewhere, &text).unwrap();
    assert_eq!(a.rollups.len(), b.rollups.len());
    for (x, y) in a.rollups.iter().zip(&b.rollups) {
        assert_eq!(
            (x.name.as_str(), x.query.as_str()),
            (y.name.as_str(), y.query.as_str())
        );
        assert!(x.query_file.is_some() && y.query_file.is_none());
    }
    let out = |j: &Job| match &j.sinks[0].kind {
        SinkKind::Parquet(c) => c.path.clone(),
        _ => unreachable!("the demo writes Parquet"),
    };
    assert_eq!(out(&b), std::env::current_dir().unwrap().join("out/demo"));
    assert_eq!(a.operators, b.operators);
}

/// An alert rule naming a metric that does not exist, or with a threshold of the wrong
/// kind, is reported at its place in the job file.
#[test]
fn alert_rules_that_cannot_work_are_located_in_the_job_file() {
    let text = "\
sources: { g: { type: generator } }
operators:
  s: { type: session_window, from: g }
  m: { type: red_metrics, from: s }
  a:
    type: alerts
    from: m
    rules:
      - { name: x, metric: service_call_dbx, value: error_rate, above: 0.1 }
      - { name: y, metric: service_server, value: p99, above: 0.5 }
sinks: { o: { type: parquet, from: [a] } }
";
    let d = errors(text);
    let spots: Vec<(usize, usize, &str)> = d
        .items
        .iter()
        .map(|i| (i.line, i.column, i.key.as_str()))
        .collect();
    assert_eq!(
        spots,
        [
            (9, 28, "operators.a.rules.0.metric"),
            (10, 63, "operators.a.rules.1.above"),
        ],
        "{d}"
    );
    assert!(d.items[0].message.contains("unknown metric"), "{d}");
    assert!(d.items[1].message.contains("is a latency"), "{d}");
    // Alerts read metric streams, not traces.
    let d = one_error(
        "sources: { g: { type: generator } }\noperators:\n  s: { type: session_window, from: g }\n  \
         a: { type: alerts, from: s, rules: [{ name: x, metric: service_server, value: errors, above: 1 }] }\n\
         sinks: { o: { type: parquet, from: [a] } }\n",
    );
    assert!(
        d.message.contains("alerts reads metric streams"),
        "{}",
        d.message
    );
}

/// An alert rule's SQL condition is planned when the job loads: a query that does not
/// plan, or whose result is not labels and a `value`, is an error at its place.
#[test]
fn alert_rule_queries_are_planned_and_located_in_the_job_file() {
    let job = |query: &str| {
        format!(
            "\
sources: {{ g: {{ type: generator }} }}
operators:
  s: {{ type: session_window, from: g }}
  m: {{ type: red_metrics, from: s }}
  a:
    type: alerts
    from: m
    rules:
      - name: db-share
        metric: service_server
        above: 0.9
        query: |
{query}
sinks: {{ o: {{ type: parquet, from: [a] }} }}
"
        )
    };
    let good = "          SELECT service, CAST(sum(duration_sum_ns) AS DOUBLE) AS value\n          \
                FROM red_metrics GROUP BY service";
    let loaded = load_str(Path::new(FILE), &job(good)).unwrap_or_else(|d| panic!("{d}"));
    let OperatorKind::Alerts(c) = &loaded.operators[2].kind else {
        panic!("{:?}", loaded.operators[2].kind)
    };
    assert!(
        c.rules[0]
            .query
            .as_deref()
            .unwrap_or("")
            .contains("GROUP BY")
    );
    // A column that does not exist: at its line and column (line 13, `durationz` at column 36).
    let d = one_error(&job(&good.replace("duration_sum_ns", "durationz")));
    assert_eq!(
        (d.line, d.column, d.key.as_str()),
        (13, 36, "operators.a.rules.0.query"),
        "{}",
        d.message
    );
    assert!(d.message.contains("durationz"), "{}", d.message);
    assert!(
        d.message.starts_with("alert rule `db-share` of `a`: "),
        "{}",
        d.message
    );
    for (query, says) in [
        (
            "          SELECT service, 1.0 AS score FROM red_metrics",
            "column `score`",
        ),
        (
            "          SELECT service FROM red_metrics",
            "no `value` column",
        ),
        (
            "          SELECT service, 'x' AS value FROM red_metrics",
            "must be a number",
        ),
        (
            "          SELECT requests AS service, 1 AS value FROM red_metrics",
            "labels are text",
        ),
        ("          DELETE FROM red_metrics", ""),
    ] {
        let d = one_error(&job(query));
        assert_eq!(d.key, "operators.a.rules.0.query", "{}", d.message);
        assert!(d.message.contains(says), "{query}: {}", d.message);
    }
}

/// A group member sees a part of the traces: an alerts node is refused there, with why.
#[test]
fn alerts_are_refused_in_a_group_member() {
    let text = "\
sources: { g: { type: generator } }
operators:
  s: { type: session_window, from: g }
  m: { type: red_metrics, from: s }
  a: { type: alerts, from: m, rules: [{ name: x, metric: service_server, value: errors, above: 1 }] }
sinks: { o: { type: parquet, from: [a] } }
";
    let job = load_str(Path::new(FILE), text).unwrap_or_else(|d| panic!("{d}"));
    assert!(plan(&job, None).is_ok());
    let e = plan_member(&job, None, Some("one")).expect_err("refused");
    assert!(
        e.to_string().contains("cannot run in group member `one`"),
        "{e}"
    );
}
