//! The ClickHouse sink against a real server (Debian's clickhouse-server, started on
//! 127.0.0.1 by scripts/clickhouse.sh; one server per test, so tests share no tables and
//! the outage test can stop its own).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use spanflow::job::run_job;
use spanflow::runtime::{RunOptions, RunSummary};

use crate::support::{Service, read_table, root, sum};

/// Every output of the analytics job, as `node.port`.
const ALL_OUTPUTS: &str = "[sampler, sampler.spans, sessions.late_spans, in.dead_letters, metrics, metrics.exemplars, graph, alerts]";

/// Runs a future of the clickhouse client to completion.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// A ClickHouse server of its own, on loopback.
pub(crate) struct Server {
    pub url: String,
    service: Service,
}

impl Server {
    pub fn start() -> Server {
        let service = Service::start("clickhouse.sh", "SPANFLOW_CLICKHOUSE_DIR");
        Server {
            url: service.var("SPANFLOW_CLICKHOUSE_URL"),
            service,
        }
    }

    fn client(&self) -> clickhouse::Client {
        clickhouse::Client::default()
            .with_url(&self.url)
            .with_validation(false)
    }

    /// Runs `sql` and returns its TabSeparated output.
    fn query(&self, sql: &str) -> String {
        block_on(async {
            let bytes = self
                .client()
                .query(sql)
                .fetch_bytes("TabSeparated")
                .unwrap()
                .collect()
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
            // Trace ids are raw bytes.
            String::from_utf8_lossy(&bytes).into_owned()
        })
    }

    fn execute(&self, sql: &str) {
        block_on(self.client().query(sql).execute()).unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    fn count(&self, table: &str, final_: bool) -> u64 {
        let f = if final_ { " FINAL" } else { "" };
        self.query(&format!("SELECT count() FROM {table}{f}"))
            .trim()
            .parse()
            .unwrap()
    }

    /// Every row of `table` (after FINAL) as sorted TabSeparated lines.
    pub fn snapshot(&self, table: &str) -> Vec<String> {
        let mut lines: Vec<String> = self
            .query(&format!("SELECT * FROM {table} FINAL"))
            .lines()
            .map(str::to_owned)
            .collect();
        lines.sort();
        lines
    }
}

/// The analytics of jobs/demo.yaml on a small generated input, writing `outputs` to the
/// ClickHouse database `db` with `settings` (YAML lines of the sink), plus `parquet`
/// outputs under `dir`.
fn job(
    db: &str,
    traces: u64,
    outputs: &str,
    settings: &str,
    url: &str,
    dir: &std::path::Path,
) -> spanflow::job::Job {
    load(&job_text(db, traces, outputs, settings, url, dir))
}

fn load(text: &str) -> spanflow::job::Job {
    spanflow::job::load_str(&root().join("jobs/clickhouse_test.yaml"), text)
        .unwrap_or_else(|e| panic!("{e:?}"))
}

/// The text of [`job`].
fn job_text(
    db: &str,
    traces: u64,
    outputs: &str,
    settings: &str,
    url: &str,
    dir: &std::path::Path,
) -> String {
    format!(
        r#"
name: clickhouse_test
sources:
  in:
    type: generator
    seed: 7
    traces: {traces}
    traces_per_second: 50
    late_fraction: 0.01
    garbage_fraction: 0.01
operators:
  sessions:
    type: session_window
    from: [in]
    gap: 10s
    gap_rules:
      - when: {{ root_ended: true }}
        gap: 3s
  sampler:
    type: tail_sampling
    from: sessions
    policies:
      - {{ name: errors, type: error }}
      - {{ name: slow-db, type: slow_span, call_type: db, threshold: 200ms }}
      - {{ name: baseline, type: probabilistic, percentage: 10 }}
  metrics:
    type: red_metrics
    from: sampler
    interval: 10s
  graph:
    type: service_graph
    from: sampler
    interval: 10s
  alerts:
    type: alerts
    from: metrics
    rules:
      - {{ name: busy, metric: service_node, value: requests, above: 0, group_by: [service] }}
sinks:
  warehouse:
    type: clickhouse
    from: {outputs}
    url: {url}
    database: {db}
{settings}
  local:
    type: parquet
    from: [sampler, metrics, graph]
    path: {path}
"#,
        path = dir.display()
    )
}

fn run(job: &spanflow::job::Job) -> RunSummary {
    run_job(
        job,
        &RunOptions {
            parallelism: Some(2),
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Rows per output table written to ClickHouse, from the run's summary.
fn summary_rows(s: &RunSummary) -> BTreeMap<String, u64> {
    s.outputs
        .iter()
        .filter(|o| o.path.to_string_lossy().starts_with("clickhouse:"))
        .map(|o| (o.table.clone(), o.rows))
        .collect()
}

const TABLES: [&str; 8] = [
    "traces",
    "spans",
    "late_spans",
    "dead_letters",
    "red_metrics",
    "exemplars",
    "service_relation",
    "alerts",
];

#[test]
fn a_generated_run_creates_every_table_and_lands_the_summarys_rows() {
    let server = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let job = job(
        "sf",
        600,
        ALL_OUTPUTS,
        "    create_tables: true",
        &server.url,
        tmp.path(),
    );
    let s = run(&job);
    let tables =
        server.query("SELECT name, engine FROM system.tables WHERE database = 'sf' ORDER BY name");
    let mut want: Vec<String> = TABLES
        .iter()
        .map(|t| format!("{t}\tReplacingMergeTree"))
        .collect();
    want.sort();
    assert_eq!(tables.lines().collect::<Vec<_>>(), want);
    let rows = summary_rows(&s);
    assert_eq!(rows.len(), 8, "{rows:?}");
    for t in TABLES {
        let n = rows[t];
        assert!(
            n > 0,
            "the run wrote no `{t}` rows; the test input must produce some"
        );
        assert_eq!(server.count(&format!("sf.{t}"), true), n, "rows of `{t}`");
    }
    // The same values as the Parquet outputs of the same run.
    let red = read_table(tmp.path(), "red_metrics");
    let ch = |sql: &str| server.query(sql).trim().parse::<u64>().unwrap();
    assert_eq!(
        ch("SELECT sum(requests) FROM sf.red_metrics FINAL"),
        sum(&red, "requests")
    );
    assert_eq!(
        ch("SELECT sum(arraySum(bucket_counts)) FROM sf.red_metrics FINAL"),
        sum(&red, "requests")
    );
    let traces = read_table(tmp.path(), "traces");
    assert_eq!(
        ch("SELECT sum(span_count) FROM sf.traces FINAL"),
        sum(&traces, "span_count")
    );
    assert!(
        ch("SELECT count() FROM sf.spans WHERE has(attributes.key, 'http.request.method')") > 0,
        "span attributes are stored"
    );
    assert_eq!(
        ch("SELECT sum(span_count) FROM sf.traces FINAL WHERE sampled = 1"),
        server.count("sf.spans", true),
        "every span of every kept trace is in `spans`"
    );
}

#[test]
fn replaying_the_same_input_leaves_the_same_rows() {
    let server = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let job = job(
        "sf",
        300,
        ALL_OUTPUTS,
        "    create_tables: true",
        &server.url,
        tmp.path(),
    );
    let first_rows = summary_rows(&run(&job));
    let first: Vec<(u64, Vec<String>)> = TABLES
        .iter()
        .map(|t| {
            let t = format!("sf.{t}");
            (server.count(&t, false), server.snapshot(&t))
        })
        .collect();
    assert_eq!(
        summary_rows(&run(&job)),
        first_rows,
        "the replay writes every row again"
    );
    for (t, (n, snapshot)) in TABLES.iter().zip(&first) {
        let t = format!("sf.{t}");
        // Two copies until ClickHouse merges them (or FINAL collapses them).
        assert!(server.count(&t, false) >= *n, "{t}");
        assert_eq!(server.count(&t, true), *n, "{t} with FINAL");
        server.execute(&format!("OPTIMIZE TABLE {t} FINAL"));
        assert_eq!(server.count(&t, false), *n, "{t} after OPTIMIZE FINAL");
        assert_eq!(&server.snapshot(&t), snapshot, "{t}");
    }
}

/// SQL rollups (the shipped queries: two keyed by their GROUP BY, one without a key)
/// land in tables derived from their results, with the rows of the Parquet sink, and a
/// replay collapses onto them.
#[test]
fn rollups_land_in_their_own_tables_and_replays_collapse() {
    const ROLLUPS: [&str; 3] = ["red_per_service", "error_hotspots", "slowest_exemplars"];
    let server = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let text = job_text(
        "sf",
        600,
        "[metrics, red_per_service, error_hotspots, slowest_exemplars]",
        "    create_tables: true\n    tables: { red_per_service: red_per_service_1m }",
        &server.url,
        tmp.path(),
    )
    .replace(
        "from: [sampler, metrics, graph]",
        "from: [metrics, red_per_service, error_hotspots, slowest_exemplars]",
    ) + "rollups:
  red_per_service: { from: metrics, sql: ../sql/red_per_service_1m.sql, window: 1m }
  error_hotspots: { from: graph, sql: ../sql/error_hotspots_by_edge.sql, window: 1m }
  slowest_exemplars: { from: metrics.exemplars, sql: ../sql/slowest_bucket_exemplars.sql, window: 1m }
";
    let job = load(&text);
    let first = summary_rows(&run(&job));
    let table = |r: &str| {
        if r == "red_per_service" {
            "sf.red_per_service_1m".to_owned()
        } else {
            format!("sf.{r}")
        }
    };
    // Keyed by the GROUP BY (a NULL minute as the epoch), a partition per day.
    let ddl = server.query("SHOW CREATE TABLE sf.red_per_service_1m");
    assert!(
        ddl.contains("ENGINE = ReplacingMergeTree(version) PARTITION BY toDate(toDateTime(intDiv(ifNull(minute, 0), 1000000000))) ORDER BY (ifNull(minute, 0), service)"),
        "{ddl}"
    );
    let mut snapshots = Vec::new();
    for r in ROLLUPS {
        let parquet = read_table(tmp.path(), r);
        let rows: usize = parquet.iter().map(|b| b.num_rows()).sum();
        assert!(rows > 0, "the run computed no `{r}` rows");
        assert_eq!(first[r], rows as u64, "summary rows of `{r}`");
        assert_eq!(server.count(&table(r), true), rows as u64, "rows of `{r}`");
        snapshots.push(server.snapshot(&table(r)));
    }
    let red = read_table(tmp.path(), "red_per_service");
    assert_eq!(
        server
            .query("SELECT sum(requests) FROM sf.red_per_service_1m FINAL")
            .trim()
            .parse::<u64>()
            .unwrap(),
        sum(&red, "requests")
    );
    assert_eq!(
        server
            .query("SELECT count() FROM sf.error_hotspots FINAL WHERE errors = 0")
            .trim(),
        "0",
        "HAVING sum(errors) > 0"
    );
    // The replay writes every row again; the tables' keys collapse the copies.
    assert_eq!(summary_rows(&run(&job)), first);
    for (r, snapshot) in ROLLUPS.iter().zip(&snapshots) {
        let t = table(r);
        assert!(server.count(&t, false) >= first[*r], "{t} before merging");
        server.execute(&format!("OPTIMIZE TABLE {t} FINAL"));
        assert_eq!(
            server.count(&t, false),
            first[*r],
            "{t} after OPTIMIZE FINAL"
        );
        assert_eq!(&server.snapshot(&t), snapshot, "{t}");
    }
}

#[test]
fn a_server_outage_mid_run_delays_the_job_and_loses_nothing() {
    let server = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let settings = "    create_tables: true
    batch: { max_rows: 300, max_delay: 50ms }
    retry: { initial_backoff: 50ms, max_backoff: 400ms }";
    let job = job("sf", 5000, ALL_OUTPUTS, settings, &server.url, tmp.path());
    // Watched like the job server watches its jobs: the retries show as sink errors.
    let live = std::sync::Arc::new(spanflow::runtime::Progress::default());
    let opts = RunOptions {
        parallelism: Some(2),
        live: Some(live.clone()),
        ..Default::default()
    };
    let handle = std::thread::spawn(move || run_job(&job, &opts).unwrap_or_else(|e| panic!("{e}")));
    let deadline = Instant::now() + Duration::from_secs(120);
    // Kill the server once the first rows have landed, while the run goes on.
    loop {
        let landed = server
            .query("SELECT count() FROM system.tables WHERE database = 'sf' AND name = 'traces'")
            .trim()
            == "1"
            && server.count("sf.traces", false) > 0;
        if landed {
            break;
        }
        assert!(Instant::now() < deadline, "no rows landed within 120 s");
        assert!(!handle.is_finished(), "the run ended before any row landed");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !handle.is_finished(),
        "the run ended before the outage; give it more traces"
    );
    let down = Instant::now();
    let status = std::process::Command::new("bash")
        .arg(root().join("scripts/clickhouse.sh"))
        .args(["restart", server.service.dir(), "4"])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(down.elapsed() >= Duration::from_secs(4));
    let s = handle.join().expect("the run panicked");
    // The run was still going when the server went down, so it waited out the outage.
    assert!(
        s.wall_seconds >= 4.0,
        "the run took {:.1} s: it did not overlap the 4 s outage",
        s.wall_seconds
    );
    for (t, n) in summary_rows(&s) {
        assert_eq!(server.count(&format!("sf.{t}"), true), n, "rows of `{t}`");
    }
    let errors = live.sink_errors();
    assert!(
        errors.iter().any(|(sink, n)| sink == "warehouse" && *n > 0),
        "no retried inserts counted: {errors:?}"
    );
    assert!(
        errors
            .iter()
            .all(|(sink, n)| sink == "warehouse" || *n == 0)
    );
    let red = read_table(tmp.path(), "red_metrics");
    assert_eq!(
        server
            .query("SELECT sum(requests) FROM sf.red_metrics FINAL")
            .trim()
            .parse::<u64>()
            .unwrap(),
        sum(&red, "requests")
    );
}

#[test]
fn a_wrong_column_type_or_a_missing_table_fails_at_start() {
    let server = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    server.execute("CREATE DATABASE sf");
    let ddl = std::fs::read_to_string(root().join("schemas/clickhouse/18.16/spans.sql"))
        .unwrap()
        .replace("`spanflow`.", "`sf`.")
        .replace("`duration_ns` UInt64", "`duration_ns` String");
    let ddl: String = ddl
        .lines()
        .filter(|l| !l.starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    server.execute(ddl.trim_end_matches(';'));
    let job = job(
        "sf",
        20,
        "[sampler.spans]",
        "    create_tables: true",
        &server.url,
        tmp.path(),
    );
    let err = run_job(&job, &RunOptions::default())
        .expect_err("a String duration must fail")
        .to_string();
    for part in ["`sf.spans`", "`duration_ns` is String", "UInt64"] {
        assert!(err.contains(part), "error lacks {part}: {err}");
    }
    let job = job_without_create(&server.url, tmp.path());
    let err = run_job(&job, &RunOptions::default())
        .expect_err("a missing table must fail")
        .to_string();
    assert!(
        err.contains("`sf.traces` does not exist") && err.contains("create_tables"),
        "{err}"
    );
    // A rollup's missing table: the error holds the DDL for this server, which works.
    let text = job_text(
        "sf",
        20,
        "[per_minute]",
        "    create_tables: false",
        &server.url,
        tmp.path(),
    ) + "rollups:
  per_minute:
    from: metrics
    window: 1m
    query: SELECT date_bin(INTERVAL '1 minute', interval_start) AS minute, service, sum(requests) AS requests FROM red_metrics GROUP BY 1, 2
";
    let job = load(&text);
    let err = run_job(&job, &RunOptions::default())
        .expect_err("a missing rollup table must fail")
        .to_string();
    let create = err
        .find("CREATE TABLE")
        .map(|i| err[i..].trim_end().trim_end_matches(';').to_owned())
        .unwrap_or_else(|| panic!("no DDL in: {err}"));
    assert!(err.contains("`sf.per_minute` does not exist"), "{err}");
    server.execute(&create);
    let s = run(&job);
    assert!(summary_rows(&s)["per_minute"] > 0, "{:?}", summary_rows(&s));
    assert_eq!(
        server.count("sf.per_minute", true),
        summary_rows(&s)["per_minute"]
    );
}

fn job_without_create(url: &str, dir: &std::path::Path) -> spanflow::job::Job {
    job("sf", 20, "[sampler]", "    create_tables: false", url, dir)
}

/// The crate's own typed insert of the same rows is the reference for the encoder.
#[derive(clickhouse::Row, serde::Serialize)]
struct RedRow {
    interval_start: u64,
    interval_end: u64,
    metric: String,
    service: String,
    instance: String,
    operation: String,
    call_type: String,
    peer: String,
    status: String,
    requests: u64,
    errors: u64,
    slow: u64,
    duration_sum_ns: u64,
    duration_min_ns: u64,
    duration_max_ns: u64,
    bucket_bounds: Vec<f64>,
    bucket_counts: Vec<u64>,
    version: u64,
}

#[test]
fn encoded_rows_equal_the_crates_typed_insert_of_the_same_rows() {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Float64Type, TimestampNanosecondType, UInt64Type};

    let server = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let job = job(
        "sf",
        200,
        "[metrics]",
        "    create_tables: true",
        &server.url,
        tmp.path(),
    );
    run(&job);
    let ddl = std::fs::read_to_string(root().join("schemas/clickhouse/18.16/red_metrics.sql"))
        .unwrap()
        .replace("`spanflow`.`red_metrics`", "`sf`.`reference`");
    let ddl: String = ddl
        .lines()
        .filter(|l| !l.starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    server.execute(ddl.trim_end_matches(';'));
    let mut rows = Vec::new();
    for b in read_table(tmp.path(), "red_metrics") {
        let ts = |n: &str| {
            b.column_by_name(n)
                .unwrap()
                .as_primitive::<TimestampNanosecondType>()
                .clone()
        };
        let st = |n: &str| b.column_by_name(n).unwrap().as_string::<i32>().clone();
        let u = |n: &str| {
            b.column_by_name(n)
                .unwrap()
                .as_primitive::<UInt64Type>()
                .clone()
        };
        let (start, end) = (ts("interval_start"), ts("interval_end"));
        let (metric, service, instance, operation, call_type, peer, status) = (
            st("metric"),
            st("service"),
            st("instance"),
            st("operation"),
            st("call_type"),
            st("peer"),
            st("status"),
        );
        let (requests, errors, slow, dsum, dmin, dmax) = (
            u("requests"),
            u("errors"),
            u("slow"),
            u("duration_sum_ns"),
            u("duration_min_ns"),
            u("duration_max_ns"),
        );
        let bounds = b
            .column_by_name("bucket_bounds")
            .unwrap()
            .as_list::<i32>()
            .clone();
        let counts = b
            .column_by_name("bucket_counts")
            .unwrap()
            .as_list::<i32>()
            .clone();
        for i in 0..b.num_rows() {
            rows.push(RedRow {
                interval_start: start.value(i) as u64,
                interval_end: end.value(i) as u64,
                metric: metric.value(i).into(),
                service: service.value(i).into(),
                instance: instance.value(i).into(),
                operation: operation.value(i).into(),
                call_type: call_type.value(i).into(),
                peer: peer.value(i).into(),
                status: status.value(i).into(),
                requests: requests.value(i),
                errors: errors.value(i),
                slow: slow.value(i),
                duration_sum_ns: dsum.value(i),
                duration_min_ns: dmin.value(i),
                duration_max_ns: dmax.value(i),
                bucket_bounds: bounds
                    .value(i)
                    .as_primitive::<Float64Type>()
                    .values()
                    .to_vec(),
                bucket_counts: counts
                    .value(i)
                    .as_primitive::<UInt64Type>()
                    .values()
                    .to_vec(),
                version: 1,
            });
            assert!(!bounds.is_null(i));
        }
    }
    assert!(!rows.is_empty());
    block_on(async {
        let client = server.client().with_database("sf");
        let mut insert = client.insert::<RedRow>("reference").await.unwrap();
        for r in &rows {
            insert.write(r).await.unwrap();
        }
        insert.end().await.unwrap();
    });
    assert_eq!(
        server.snapshot("sf.red_metrics"),
        server.snapshot("sf.reference")
    );
}

/// The sum of integer columns, each cast to `T` first, as text.
fn sum_as<T>(cols: &[&arrow::array::ArrayRef]) -> String
where
    T: arrow::datatypes::ArrowPrimitiveType,
    T::Native: std::iter::Sum + std::ops::Add<Output = T::Native> + std::fmt::Display,
{
    use arrow::array::AsArray;
    cols.iter()
        .map(|c| {
            let c = arrow::compute::cast(c, &T::DATA_TYPE).unwrap();
            arrow::compute::sum(c.as_primitive::<T>()).unwrap_or_default()
        })
        .sum::<T::Native>()
        .to_string()
}

/// One check expression per column and the value the Arrow rows give for it.
fn column_checks(batches: &[arrow::record_batch::RecordBatch]) -> Vec<(String, String)> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{DataType, Float64Type, TimestampNanosecondType};
    let schema = batches[0].schema();
    let mut checks = vec![(
        "count()".to_owned(),
        batches
            .iter()
            .map(|b| b.num_rows())
            .sum::<usize>()
            .to_string(),
    )];
    for (i, field) in schema.fields().iter().enumerate() {
        let q = format!("`{}`", field.name());
        let cols: Vec<&arrow::array::ArrayRef> = batches.iter().map(|b| b.column(i)).collect();
        let nulls: usize = cols.iter().map(|c| c.null_count()).sum();
        if field.is_nullable() {
            checks.push((format!("countIf({q} IS NULL)"), nulls.to_string()));
        }
        match field.data_type() {
            DataType::UInt16 | DataType::UInt32 | DataType::UInt64 => {
                let total = sum_as::<arrow::datatypes::UInt64Type>(&cols);
                checks.push((format!("sum(ifNull({q}, 0))"), total));
            }
            DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => {
                let total = sum_as::<arrow::datatypes::Int64Type>(&cols);
                checks.push((format!("sum(ifNull({q}, 0))"), total));
            }
            DataType::Float64 => {
                let vals: Vec<f64> = cols
                    .iter()
                    .flat_map(|c| {
                        c.as_primitive::<Float64Type>()
                            .iter()
                            .flatten()
                            .collect::<Vec<_>>()
                    })
                    .collect();
                let min = vals.iter().copied().fold(f64::INFINITY, f64::min);
                let max = vals.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                checks.push((format!("min({q})"), format!("{min}")));
                checks.push((format!("max({q})"), format!("{max}")));
            }
            DataType::Timestamp(..) => {
                let vals: Vec<i64> = cols
                    .iter()
                    .flat_map(|c| {
                        c.as_primitive::<TimestampNanosecondType>()
                            .iter()
                            .flatten()
                            .collect::<Vec<_>>()
                    })
                    .collect();
                let e = format!("toUnixTimestamp64Nano({q})");
                checks.push((format!("min({e})"), vals.iter().min().unwrap().to_string()));
                checks.push((format!("max({e})"), vals.iter().max().unwrap().to_string()));
            }
            DataType::Boolean => {
                let n: usize = cols.iter().map(|c| c.as_boolean().true_count()).sum();
                checks.push((format!("countIf({q})"), n.to_string()));
            }
            DataType::Utf8 => {
                let n: usize = cols
                    .iter()
                    .flat_map(|c| {
                        c.as_string::<i32>()
                            .iter()
                            .flatten()
                            .map(str::len)
                            .collect::<Vec<_>>()
                    })
                    .sum();
                checks.push((format!("sum(length(ifNull({q}, '')))"), n.to_string()));
            }
            DataType::Binary => {
                let n: usize = cols
                    .iter()
                    .flat_map(|c| {
                        c.as_binary::<i32>()
                            .iter()
                            .flatten()
                            .map(<[u8]>::len)
                            .collect::<Vec<_>>()
                    })
                    .sum();
                checks.push((format!("sum(length({q}))"), n.to_string()));
            }
            DataType::FixedSizeBinary(_) => {
                let distinct: std::collections::BTreeSet<Vec<u8>> = cols
                    .iter()
                    .flat_map(|c| {
                        c.as_fixed_size_binary()
                            .iter()
                            .flatten()
                            .map(<[u8]>::to_vec)
                            .collect::<Vec<_>>()
                    })
                    .collect();
                checks.push((format!("uniqExact({q})"), distinct.len().to_string()));
            }
            DataType::List(_) => {
                let n: usize = cols.iter().map(|c| c.as_list::<i32>().values().len()).sum();
                checks.push((format!("sum(length({q}))"), n.to_string()));
            }
            DataType::Map(..) => {
                let (mut entries, mut bytes) = (0usize, 0usize);
                for c in &cols {
                    let m = c.as_map();
                    entries += m.keys().len();
                    bytes += m
                        .values()
                        .as_string::<i32>()
                        .iter()
                        .flatten()
                        .map(str::len)
                        .sum::<usize>();
                }
                checks.push((format!("sum(length({q}))"), entries.to_string()));
                checks.push((
                    format!("sum(arraySum(arrayMap(v -> length(v), mapValues({q}))))"),
                    bytes.to_string(),
                ));
            }
            other => panic!("no check for Arrow type {other}"),
        }
    }
    checks
}

/// The other dialect: every table created from the DDL spanflow renders for current
/// servers, filled with the RowBinary it encodes for them, on a current engine (chdb,
/// ClickHouse 26.9 in-process), holds exactly the rows of the Parquet outputs.
#[test]
fn a_current_release_runs_the_ddl_and_reads_the_encoded_rows() {
    use spanflow::connectors::clickhouse::ddl::{self, Features};
    use spanflow::connectors::clickhouse::encode::TablePlan;

    let out = std::process::Command::new("bash")
        .arg(root().join("scripts/clickhouse.sh"))
        .arg("current-python")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "scripts/clickhouse.sh current-python: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let python = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let tmp = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(root().join("jobs/demo.yaml"))
        .unwrap()
        .replace("traces: 20000", "traces: 400")
        .replace("late_fraction: 0.0005", "late_fraction: 0.02")
        .replace("garbage_fraction: 0.002", "garbage_fraction: 0.02")
        // Two seconds of traffic: alerts fire at once.
        .replace("for: 20s", "for: 0s")
        .replace("min_requests: 20", "min_requests: 1");
    let job = spanflow::job::load_str(&root().join("jobs/demo.yaml"), &text).unwrap();
    run_job(
        &job,
        &RunOptions {
            output_dir: Some(tmp.path().join("parquet")),
            ..Default::default()
        },
    )
    .unwrap();
    let mut manifest = Vec::new();
    let mut expected = BTreeMap::new();
    // The built-in tables, and the demo's rollups in tables derived from their results.
    let layouts = TABLES
        .iter()
        .map(|t| ddl::layout(t).unwrap())
        .chain(job.rollups.iter().map(|r| {
            ddl::TableLayout::of_rollup(&r.name, &r.schema, &r.key)
                .unwrap_or_else(|e| panic!("{}: {e}", r.name))
        }));
    for layout in layouts {
        let t = layout.name.as_str();
        let batches = read_table(&tmp.path().join("parquet"), t);
        assert!(
            !batches.is_empty() && batches.iter().any(|b| b.num_rows() > 0),
            "{t}"
        );
        let schema = batches[0].schema();
        let columns = ddl::server_columns(&schema, &layout, Features::current());
        let plan = TablePlan::new(t, &schema, &columns, 1).unwrap();
        let mut data = Vec::new();
        for b in &batches {
            plan.encode(b, &mut data).unwrap();
        }
        std::fs::write(tmp.path().join(format!("{t}.bin")), &data).unwrap();
        let checks = column_checks(&batches);
        let exprs: Vec<&str> = checks.iter().map(|(e, _)| e.as_str()).collect();
        manifest.push(serde_json::json!({
            "table": t,
            "ddl": ddl::create_table(
                &layout,
                &schema,
                "spanflow",
                t,
                // The generated traces are from 2026-01-01: a short TTL would drop them
                // at once. A long one still checks the TTL clause.
                Some(Duration::from_secs(10 * 365 * 86_400)),
                Features::current(),
            ),
            "insert": plan.insert_columns.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", "),
            "file": format!("{t}.bin"),
            "structure": columns
                .iter()
                .map(|c| format!("`{}` {}", c.name, c.ty))
                .collect::<Vec<_>>()
                .join(", ")
                .replace('\'', "\\'"),
            "check": format!("SELECT {} FROM spanflow.`{t}`", exprs.join(", ")),
        }));
        expected.insert(t.to_owned(), checks);
    }
    std::fs::write(
        tmp.path().join("manifest.json"),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();
    let out = std::process::Command::new(&python)
        .arg(root().join("scripts/chdb_check.py"))
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "chdb_check.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut seen = 0;
    for line in text.lines() {
        let mut parts = line.split('\t');
        let table = parts.next().unwrap();
        let got: Vec<&str> = parts.collect();
        let checks = &expected[table];
        assert_eq!(got.len(), checks.len(), "{table}: {line}");
        for ((expr, want), got) in checks.iter().zip(got) {
            let same = want == got
                || matches!((want.parse::<f64>(), got.parse::<f64>()), (Ok(a), Ok(b)) if a == b);
            assert!(
                same,
                "{table}: {expr} is {got} on the current engine, {want} in Parquet"
            );
        }
        seen += 1;
    }
    assert_eq!(seen, TABLES.len() + job.rollups.len(), "{text}");
}
