//! The job server, driven the way users drive it: `spanflow server` as a process,
//! `spanflow submit` from another directory, the REST API over HTTP.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::checkpoint::{TABLES, assert_same_tables, uninterrupted};
use crate::support::bin;

pub(crate) const TOKEN: &str = "s3cret-token-for-tests";

/// A `spanflow server` process on a free loopback port; killed when dropped.
pub(crate) struct Server {
    child: Child,
    pub url: String,
    /// The Jaeger API's address, when started with `--jaeger`.
    pub jaeger: Option<String>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    pub fn start(state: &Path) -> Server {
        Server::start_with(state, &[])
    }

    /// [`Server::start`] with more command-line arguments.
    pub fn start_with(state: &Path, args: &[&str]) -> Server {
        let mut child = Command::new(bin())
            .args([
                "server",
                "--listen",
                "127.0.0.1:0",
                "--checkpoint-interval",
                "100ms",
            ])
            .args(args)
            .arg("--state-dir")
            .arg(state)
            .env("SPANFLOW_TOKEN", TOKEN)
            .env("SPANFLOW_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_owned());
                }
                lines.lock().unwrap().push(line);
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("the server did not start: {:?}", log.lock().unwrap()));
        // Printed before the line announcing the REST API.
        let jaeger = log
            .lock()
            .unwrap()
            .iter()
            .find_map(|l| l.split("(gRPC) on ").nth(1).map(|a| a.trim().to_owned()));
        Server {
            child,
            url,
            jaeger,
            log,
        }
    }

    fn get(&self, path: &str) -> reqwest::blocking::Response {
        reqwest::blocking::Client::new()
            .get(format!("{}{path}", self.url))
            .bearer_auth(TOKEN)
            .send()
            .unwrap()
    }

    pub fn job(&self, id: &str) -> Value {
        let resp = self.get(&format!("/api/v1/jobs/{id}"));
        assert_eq!(resp.status(), 200);
        resp.json().unwrap()
    }

    /// Polls the job until `done` says so (at most 3 minutes); returns it then.
    pub fn wait_for(&self, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let j = self.job(id);
            if done(&j) {
                return j;
            }
            assert!(Instant::now() < deadline, "job {id}: no {what}: {j:#}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then waits for the process to exit (it stops its jobs first).
    pub fn terminate(mut self) {
        // SAFETY: kill(2) on the PID of a child this test started and has not reaped.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let status = self.child.wait().unwrap();
        assert!(status.success(), "the server exited with {status}");
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `spanflow <args> --server URL` run in `cwd` with the test token.
pub(crate) fn cli(server: &Server, cwd: &Path, args: &[&str]) -> std::process::Output {
    Command::new(bin())
        .args(args)
        .args(["--server", &server.url])
        .current_dir(cwd)
        .env("SPANFLOW_TOKEN", TOKEN)
        .output()
        .unwrap()
}

/// `spanflow submit JOB` (with `--wait`: until it ended) from `cwd`; the job's id.
pub(crate) fn submit(server: &Server, cwd: &Path, job: &Path, wait: bool) -> String {
    let job = job.to_str().unwrap();
    let args: &[&str] = if wait {
        &["submit", job, "--wait"]
    } else {
        &["submit", job]
    };
    submit_with(server, cwd, args)
}

/// `spanflow <args>` (a `submit` command) from `cwd`, which must succeed; the job's id.
pub(crate) fn submit_with(server: &Server, cwd: &Path, args: &[&str]) -> String {
    let out = cli(server, cwd, args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// What `bash scripts/<script> <arg>` prints (it installs what is missing first).
fn script_output(script: &str, arg: &str) -> String {
    let out = Command::new("bash")
        .arg(crate::support::root().join("scripts").join(script))
        .arg(arg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// The checkpoint tests' generator job, with its outputs at the relative path `out`
/// and a rollup whose query is in a file next to it.
pub(crate) fn write_job(dir: &Path, traces: u64) -> PathBuf {
    let text = crate::checkpoint::job_text(traces)
        .replace(
            "  o: { type: parquet, from: [t, t.spans, s.late_spans, gen.dead_letters, m, m.exemplars, g, a] }",
            "  o: { type: parquet, from: [t, t.spans, s.late_spans, gen.dead_letters, m, m.exemplars, g, a, per_service], path: out }",
        )
        + "rollups:\n  per_service: { from: m, sql: sql/per_service.sql, window: 10s }\n";
    assert!(text.contains("path: out"));
    std::fs::create_dir_all(dir.join("sql")).unwrap();
    std::fs::write(
        dir.join("sql/per_service.sql"),
        "SELECT service, sum(requests) AS requests\nFROM red_metrics\nGROUP BY service\n",
    )
    .unwrap();
    let path = dir.join("job.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Checks `value` against a schema of `openapi.json` (the subset it uses: type,
/// required, properties with no others, items, enum, oneOf, $ref).
fn conforms(doc: &Value, schema: &Value, value: &Value, at: &str) {
    if let Err(e) = check(doc, schema, value, at) {
        panic!("{e}");
    }
}

fn check(doc: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    if let Some(r) = schema["$ref"].as_str() {
        let target = doc
            .pointer(r.trim_start_matches('#'))
            .ok_or(format!("{at}: `{r}` does not resolve"))?;
        return check(doc, target, value, at);
    }
    if let Some(options) = schema["oneOf"].as_array() {
        let fits = options
            .iter()
            .filter(|o| check(doc, o, value, at).is_ok())
            .count();
        return if fits == 1 {
            Ok(())
        } else {
            Err(format!("{at}: {value} fits {fits} of {schema}, not one"))
        };
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(|t| t.as_str()).collect(),
        _ => return Ok(()),
    };
    let kind = match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_u64() || n.is_i64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    if !(types.contains(&kind) || (kind == "integer" && types.contains(&"number"))) {
        return Err(format!("{at}: {kind} where the schema says {types:?}"));
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        return Err(format!("{at}: {value} not in {allowed:?}"));
    }
    match value {
        Value::Object(map) if schema["properties"].is_object() => {
            let props = schema["properties"].as_object().unwrap();
            for r in schema["required"].as_array().into_iter().flatten() {
                let r = r.as_str().unwrap();
                if !map.contains_key(r) {
                    return Err(format!("{at}: `{r}` missing"));
                }
            }
            for (k, v) in map {
                let s = props
                    .get(k)
                    .ok_or(format!("{at}: `{k}` is not in the document"))?;
                check(doc, s, v, &format!("{at}.{k}"))?;
            }
        }
        Value::Array(items) if schema["items"].is_object() => {
            for (i, v) in items.iter().enumerate() {
                check(doc, &schema["items"], v, &format!("{at}[{i}]"))?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// A job submitted with `spanflow submit` from another directory writes what
/// `spanflow run` writes; the API answers as its OpenAPI document says; tokens,
/// invalid jobs and /metrics behave.
#[test]
fn a_submitted_job_writes_what_spanflow_run_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let project = tmp.path().join("project");
    let job_path = write_job(&project, 1500);
    let client_dir = tmp.path().join("elsewhere");
    std::fs::create_dir_all(&client_dir).unwrap();
    let server = Server::start(&tmp.path().join("state"));

    // Submitted from another directory: the rollup's SQL file travels inline, the
    // outputs go where `spanflow run` in that directory would put them.
    let id = submit(&server, &client_dir, &job_path, true);
    assert_eq!(id, "checkpointed-1");
    let doc: Value = server.get("/api/v1/openapi.json").json().unwrap();
    assert_eq!(
        doc,
        serde_json::from_str::<Value>(spanflow::server::OPENAPI).unwrap()
    );
    let job = server.job(&id);
    conforms(&doc, &doc["components"]["schemas"]["Job"], &job, "job");
    assert_eq!(job["state"], "finished", "{job:#}");
    assert_eq!(job["runs"], 1);
    let list: Value = server.get("/api/v1/jobs").json().unwrap();
    assert_eq!(list["jobs"].as_array().unwrap().len(), 1);

    let reference = tmp.path().join("reference");
    let loaded = spanflow::job::load(&job_path).unwrap();
    let summary = uninterrupted(&loaded, &reference);
    assert_same_tables(&reference, &client_dir.join("out"));
    let a = crate::support::rows(&crate::support::read_table(&reference, "per_service"), &[]);
    let b = crate::support::rows(
        &crate::support::read_table(&client_dir.join("out"), "per_service"),
        &[],
    );
    assert!(!a.is_empty() && a == b, "the rollup's rows differ");
    assert_eq!(job["spans"], summary.decode.spans);

    // The job's own telemetry, in both formats.
    let m = reqwest::blocking::Client::new()
        .get(format!("{}/metrics", server.url))
        .header("accept", "application/openmetrics-text; version=1.0.0")
        .send()
        .unwrap();
    assert!(
        m.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = m.text().unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert!(text.contains("# TYPE spanflow_spans_in counter"), "{text}");
    let line = format!(
        "spanflow_spans_in_total{{job_id=\"{id}\",job_name=\"checkpointed\"}} {}",
        summary.decode.spans
    );
    assert!(text.contains(&line), "no `{line}` in\n{text}");
    assert!(text.contains(&format!(
        "spanflow_dead_letters_total{{job_id=\"{id}\",job_name=\"checkpointed\",reason=\"bad_record\"}} {}",
        summary.decode.bad_records
    )));
    // Rows per table, late spans and closed traces by reason, kept traces by policy:
    // the same figures as the run's summary.
    for o in &summary.outputs {
        let line = format!(
            "spanflow_sink_rows_written_total{{job_id=\"{id}\",job_name=\"checkpointed\",sink=\"{}\",table=\"{}\"}} {}",
            o.sink, o.table, o.rows
        );
        assert!(text.contains(&line), "no `{line}`");
    }
    // A Parquet sink delivers in place: nothing queued, nothing given up.
    let sink = &summary.outputs[0].sink;
    for family in [
        "spanflow_sink_queued_rows",
        "spanflow_sink_undelivered_rows_total",
    ] {
        let line =
            format!("{family}{{job_id=\"{id}\",job_name=\"checkpointed\",sink=\"{sink}\"}} 0");
        assert!(text.contains(&line), "no `{line}`");
    }
    let closed: u64 = summary.sessions.closed_by_reason.iter().sum();
    assert!(closed > 0);
    assert!(text.contains(&format!(
        "spanflow_traces_closed_total{{job_id=\"{id}\",job_name=\"checkpointed\",node=\"s\",reason=\"gap\"}} {}",
        summary.sessions.closed_by_reason[0]
    )));
    let sampling = summary.sampling.as_ref().unwrap();
    for (policy, n) in &sampling.kept_by_policy {
        let line = format!(
            "spanflow_sampled_traces_total{{job_id=\"{id}\",job_name=\"checkpointed\",node=\"t\",policy=\"{policy}\"}} {n}"
        );
        assert!(text.contains(&line), "no `{line}`");
    }
    assert!(text.contains("spanflow_late_spans_total{"));
    // The alerts' counts, the share with a trace among them.
    let (_, alerts) = &summary.alerts[0];
    let rule = &alerts.rules[0];
    assert!(rule.fired > 0, "the job's alert rule fires");
    for (family, n) in [
        ("spanflow_alerts_fired_total", rule.fired),
        (
            "spanflow_alerts_fired_with_trace_total",
            rule.fired_with_trace,
        ),
        ("spanflow_alerts_resolved_total", rule.resolved),
    ] {
        let line = format!(
            "{family}{{job_id=\"{id}\",job_name=\"checkpointed\",node=\"a\",rule=\"errors\"}} {n}"
        );
        assert!(text.contains(&line), "no `{line}`");
    }
    let prom = server.get("/metrics");
    assert!(
        prom.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    assert!(
        prom.text()
            .unwrap()
            .contains("# TYPE spanflow_spans_in_total counter")
    );

    // A finished job cannot be stopped.
    let stop = cli(&server, &client_dir, &["stop", &id]);
    assert!(!stop.status.success());
    assert!(String::from_utf8_lossy(&stop.stderr).contains("409"));

    // A wrong token, and none: 401, logged without what was sent.
    let wrong = reqwest::blocking::Client::new()
        .get(format!("{}/api/v1/jobs", server.url))
        .bearer_auth("not-the-token")
        .send()
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let none = reqwest::blocking::get(format!("{}/api/v1/jobs", server.url)).unwrap();
    assert_eq!(none.status(), 401);
    let listed = Command::new(bin())
        .args(["jobs", "--server", &server.url, "--token", "wrong"])
        .env_remove("SPANFLOW_TOKEN")
        .output()
        .unwrap();
    assert!(!listed.status.success());
    assert!(String::from_utf8_lossy(&listed.stderr).contains("refused the token"));
    let log = server.log();
    assert!(log.contains("refused: wrong bearer token"), "{log}");
    assert!(log.contains("refused: no bearer token"), "{log}");
    assert!(
        !log.contains("not-the-token") && !log.contains(TOKEN),
        "{log}"
    );
    // Health needs no token.
    assert_eq!(
        reqwest::blocking::get(format!("{}/healthz", server.url))
            .unwrap()
            .status(),
        200
    );

    // An invalid job: 400 with each problem at its line and column, nothing started.
    let bad = "name: bad\nsources:\n  gen: { type: generator, traces: 10 }\noperators:\n  s: { type: session_window, from: gen, gap: 5 parsecs }\nsinks:\n  o: { type: parquet, from: [s] }\n";
    let resp = reqwest::blocking::Client::new()
        .post(format!("{}/api/v1/jobs", server.url))
        .bearer_auth(TOKEN)
        .body(bad)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().unwrap();
    conforms(&doc, &doc["components"]["schemas"]["Error"], &body, "error");
    let d = &body["diagnostics"][0];
    assert_eq!(
        (d["line"].as_u64(), d["key"].as_str()),
        (Some(5), Some("operators.s.gap")),
        "{body:#}"
    );
    assert!(d["column"].as_u64().unwrap() > 1);
    let list: Value = server.get("/api/v1/jobs").json().unwrap();
    assert_eq!(list["jobs"].as_array().unwrap().len(), 1);
}

/// A server stopped with SIGTERM stops its running job with a last checkpoint; one
/// killed with SIGKILL loses what came after its newest periodic checkpoint. Started
/// again on the same directory, each time it resumes the job, which ends with the
/// outputs of one uninterrupted run. A cancelled job is not resumed.
#[test]
fn a_restarted_server_resumes_its_jobs_from_their_checkpoints() {
    let tmp = tempfile::tempdir().unwrap();
    let project = tmp.path().join("project");
    let job_path = write_job(&project, 12_000);
    let state = tmp.path().join("state");
    let server = Server::start(&state);
    let id = submit(&server, &project, &job_path, false);
    let first = server.wait_for(&id, "checkpoint", |j| !j["last_checkpoint"].is_null());
    assert_eq!(
        first["state"], "running",
        "the job ended before the restart: {first:#}"
    );

    // A second job (writing elsewhere), cancelled: its state goes, it stays cancelled.
    let elsewhere = tmp.path().join("other");
    let other_job = write_job(&elsewhere, 12_000);
    let other_id = submit(&server, &elsewhere, &other_job, false);
    assert_eq!(other_id, "checkpointed-2");
    let cancelled = cli(&server, &project, &["cancel", &other_id]);
    assert!(
        cancelled.status.success(),
        "{}",
        String::from_utf8_lossy(&cancelled.stderr)
    );
    assert_eq!(server.job(&other_id)["state"], "cancelled");
    assert!(
        !state
            .join("jobs")
            .join(&other_id)
            .join("checkpoints")
            .exists()
    );

    server.terminate();
    let status: Value = serde_json::from_str(
        &std::fs::read_to_string(state.join("jobs").join(&id).join("status.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(status["state"], "running", "{status:#}");

    // Resumed; then killed without warning after a checkpoint of its own.
    let server = Server::start(&state);
    let resumed = server.job(&id);
    assert_eq!(
        (resumed["state"].as_str(), resumed["runs"].as_u64()),
        (Some("running"), Some(2))
    );
    assert_eq!(server.job(&other_id)["state"], "cancelled");
    let second = server.wait_for(&id, "checkpoint", |j| {
        !j["last_checkpoint"].is_null() || j["state"] != "running"
    });
    drop(server);
    let _ = second;

    let server = Server::start(&state);
    let done = server.wait_for(&id, "end", |j| j["state"] != "running");
    assert_eq!(done["state"], "finished", "{done:#}");
    assert_eq!(done["runs"], 3);
    // The last run started from a checkpoint, not from the beginning.
    assert_eq!(done["summary"]["restored"], true, "{done:#}");
    assert!(done["summary"]["restored_from"].is_string());
    // An ended job's series outlive the server that ran it.
    let red = format!("spanflow_service_server_duration_seconds_count{{job_id=\"{id}\"");
    let scrape = |s: &Server| s.get("/metrics").text().unwrap();
    let before = scrape(&server);
    assert!(before.contains(&red), "no RED series for {id}");
    drop(server);
    let server = Server::start(&state);
    assert_eq!(server.job(&id)["state"], "finished");
    let after = scrape(&server);
    let lines = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|l| {
                l.starts_with("spanflow_service_") && l.contains(&format!("job_id=\"{id}\""))
            })
            .map(str::to_owned)
            .collect()
    };
    assert!(!lines(&before).is_empty());
    assert_eq!(lines(&before), lines(&after));

    let reference = tmp.path().join("reference");
    let loaded = spanflow::job::load(&job_path).unwrap();
    let whole = uninterrupted(&loaded, &reference);
    let last_run = done["spans"].as_u64().unwrap();
    assert!(
        last_run < whole.decode.spans,
        "the last run read {last_run} spans of {}",
        whole.decode.spans
    );
    assert_same_tables(&reference, &project.join("out"));
    assert!(TABLES.contains(&"traces"));
}

/// A `prometheus` (Debian's 2.42) on a free loopback port scraping `target` every
/// second, with exemplar storage; killed when dropped.
struct Prometheus {
    child: Child,
    url: String,
}

impl Prometheus {
    fn start(dir: &Path, target: &str) -> Prometheus {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: spanflow\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--enable-feature=exemplar-storage")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .expect("prometheus (scripts/prometheus.sh install)");
        Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    /// `GET /api/v1/<path>` until `ok` accepts the `data` (at most a minute).
    fn poll(&self, path: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let answer = reqwest::blocking::get(format!("{}/api/v1/{path}", self.url))
                .ok()
                .and_then(|r| r.json::<Value>().ok());
            if let Some(a) = &answer
                && a["status"] == "success"
                && ok(&a["data"])
            {
                return a["data"].clone();
            }
            assert!(Instant::now() < deadline, "prometheus: {path}: {answer:?}");
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `jobs/demo.yaml` submitted to a server: its `/metrics` parses with the official
/// Prometheus client's OpenMetrics parser (own families, RED histograms with trace
/// exemplars), and a real Prometheus scraping the server returns the RED series and,
/// from `query_exemplars`, trace ids of traces the job kept in `spans`.
#[test]
fn prometheus_scrapes_red_histograms_with_exemplars_of_kept_traces() {
    let python = script_output("prometheus.sh", "python");

    let tmp = tempfile::tempdir().unwrap();
    let root = crate::support::root();
    let job = root.join("jobs/demo.yaml");
    let client = tmp.path().join("client");
    std::fs::create_dir_all(&client).unwrap();
    let server = Server::start(&tmp.path().join("state"));
    submit(&server, &client, &job, true);
    let spans = crate::support::read_table(&client.join("out/demo"), "spans");
    let kept: std::collections::BTreeSet<String> = crate::support::column(&spans, "trace_id")
        .into_iter()
        .collect();
    assert!(!kept.is_empty());

    let text = reqwest::blocking::Client::new()
        .get(format!("{}/metrics", server.url))
        .header("accept", "application/openmetrics-text; version=1.0.0")
        .send()
        .unwrap()
        .text()
        .unwrap();
    let mut parse = Command::new(&python)
        .arg(root.join("scripts/openmetrics_check.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut parse.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let parsed = parse.wait_with_output().unwrap();
    assert!(
        parsed.status.success(),
        "the OpenMetrics parser refused it: {}",
        String::from_utf8_lossy(&parsed.stderr)
    );
    let parsed: Value = serde_json::from_slice(&parsed.stdout).unwrap();
    let types: std::collections::BTreeMap<&str, &str> = parsed["families"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["name"].as_str().unwrap(), f["type"].as_str().unwrap()))
        .collect();
    for (family, kind) in [
        ("spanflow_spans_in", "counter"),
        ("spanflow_dead_letters", "counter"),
        ("spanflow_open_traces", "gauge"),
        ("spanflow_service_server_duration_seconds", "histogram"),
        ("spanflow_service_relation_duration_seconds", "histogram"),
        ("spanflow_service_server_errors", "counter"),
        ("spanflow_traces_closed", "counter"),
        ("spanflow_late_spans", "counter"),
        ("spanflow_sampled_traces", "counter"),
        ("spanflow_sampling_decisions", "counter"),
        ("spanflow_sink_rows_written", "counter"),
        ("spanflow_watermark_lag_seconds", "gauge"),
    ] {
        assert_eq!(types.get(family), Some(&kind), "{family} in {types:?}");
    }
    let exemplars = parsed["exemplars"].as_array().unwrap();
    assert!(exemplars.len() > 10, "{} exemplars", exemplars.len());
    for e in exemplars {
        let id = e["trace_id"].as_str().unwrap();
        assert!(kept.contains(id), "exemplar trace {id} is not a kept trace");
    }

    let target = server.url.trim_start_matches("http://").to_owned();
    let prometheus = Prometheus::start(tmp.path(), &target);
    let series = prometheus.poll(
        "query?query=spanflow_service_server_duration_seconds_count%7Bjob_name%3D%22demo%22%7D",
        |d| d["result"].as_array().is_some_and(|r| !r.is_empty()),
    );
    let total: f64 = series["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["value"][1].as_str().unwrap().parse::<f64>().unwrap())
        .sum();
    assert!(total > 1000.0, "{series:#}");
    let end = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 60;
    let found = prometheus.poll(
        &format!(
            "query_exemplars?query=spanflow_service_server_duration_seconds_bucket&start=0&end={end}"
        ),
        |d| d.as_array().is_some_and(|r| !r.is_empty()),
    );
    let mut ids = 0;
    for s in found.as_array().unwrap() {
        for e in s["exemplars"].as_array().unwrap() {
            let id = e["labels"]["trace_id"].as_str().unwrap();
            assert!(
                kept.contains(id),
                "Prometheus' exemplar {id} is not a kept trace"
            );
            ids += 1;
        }
    }
    assert!(ids > 0);
}

/// Headless Chromium on `url`: the DOM after load (`dump`), or a screenshot into
/// `shot`. Each call gets a fresh profile under `dir`.
fn chromium(chrome: &str, dir: &Path, url: &str, shot: Option<&Path>) -> String {
    let profile = tempfile::tempdir_in(dir).unwrap();
    let mut cmd = Command::new(chrome);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--window-size=1280,1800",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()));
    match shot {
        Some(p) => cmd.arg(format!("--screenshot={}", p.display())),
        None => cmd.arg("--dump-dom"),
    };
    let out = cmd.arg(url).stderr(Stdio::null()).output().unwrap();
    assert!(out.status.success(), "chromium failed on {url}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The web page in a real browser: the job list, a job's page (its DAG, service map and
/// RED table), an exemplar link followed to the trace's waterfall, a screenshot. The
/// token reaches the pages once as `?token=` and stays in a cookie.
#[test]
fn the_web_page_shows_a_jobs_graph_red_table_and_an_exemplars_waterfall() {
    let chrome = script_output("chromium.sh", "path");
    let tmp = tempfile::tempdir().unwrap();
    let job_path = write_job(&tmp.path().join("project"), 1500);
    let server = Server::start(&tmp.path().join("state"));
    let id = submit(&server, tmp.path(), &job_path, true);
    let page = |path: &str| {
        chromium(
            &chrome,
            tmp.path(),
            &format!("{}{path}?token={TOKEN}", server.url),
            None,
        )
    };

    // Without the token: refused.
    let refused = chromium(&chrome, tmp.path(), &format!("{}/", server.url), None);
    assert!(!refused.contains("id=\"jobs\""), "{refused}");

    let list = page("/");
    assert!(list.contains("<table id=\"jobs\">"), "{list}");
    assert!(
        list.contains(&format!("<a href=\"/jobs/{id}\">{id}</a>")),
        "{list}"
    );
    assert!(list.contains("class=\"state-finished\">finished"), "{list}");

    let job = page(&format!("/jobs/{id}"));
    for node in ["gen", "s", "t", "m", "g", "o", "per_service"] {
        assert!(
            job.contains(&format!(">{node}</text>")),
            "DAG lacks `{node}`"
        );
    }
    assert!(job.contains("<svg id=\"map\""), "no service map");
    assert!(
        job.matches("class=\"edge\"").count() > 5,
        "service map without edges"
    );
    let red = &job[job.find("<table id=\"red\">").expect("RED table")..];
    assert!(red.matches("<tr>").count() > 5, "{red}");
    let href = red
        .split("class=\"exemplar\" href=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("an exemplar link");
    let trace_id = href.rsplit('/').next().unwrap().to_owned();

    let waterfall = page(href);
    assert!(waterfall.contains("id=\"waterfall\""), "{waterfall}");
    let rows = waterfall.matches("class=\"span\"").count();
    let kept = crate::support::read_table(&tmp.path().join("out"), "spans");
    let spans_of_trace = crate::support::column(&kept, "trace_id")
        .iter()
        .filter(|t| **t == trace_id)
        .count();
    assert!(spans_of_trace > 0, "the exemplar's trace is not in `spans`");
    assert_eq!(
        rows, spans_of_trace,
        "the waterfall shows every span of the trace"
    );

    let shot = tmp.path().join("job.png");
    chromium(
        &chrome,
        tmp.path(),
        &format!("{}/jobs/{id}?token={TOKEN}", server.url),
        Some(&shot),
    );
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "{} bytes",
        png.len()
    );
}
