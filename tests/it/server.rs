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

const TOKEN: &str = "s3cret-token-for-tests";

/// A `spanflow server` process on a free loopback port; killed when dropped.
struct Server {
    child: Child,
    url: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn start(state: &Path) -> Server {
        let mut child = Command::new(bin())
            .args([
                "server",
                "--listen",
                "127.0.0.1:0",
                "--checkpoint-interval",
                "100ms",
            ])
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
        Server { child, url, log }
    }

    fn get(&self, path: &str) -> reqwest::blocking::Response {
        reqwest::blocking::Client::new()
            .get(format!("{}{path}", self.url))
            .bearer_auth(TOKEN)
            .send()
            .unwrap()
    }

    fn job(&self, id: &str) -> Value {
        let resp = self.get(&format!("/api/v1/jobs/{id}"));
        assert_eq!(resp.status(), 200);
        resp.json().unwrap()
    }

    /// Polls the job until `done` says so (at most 3 minutes); returns it then.
    fn wait_for(&self, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
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
    fn terminate(mut self) {
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
fn cli(server: &Server, cwd: &Path, args: &[&str]) -> std::process::Output {
    Command::new(bin())
        .args(args)
        .args(["--server", &server.url])
        .current_dir(cwd)
        .env("SPANFLOW_TOKEN", TOKEN)
        .output()
        .unwrap()
}

/// The checkpoint tests' generator job, with its outputs at the relative path `out`
/// and a rollup whose query is in a file next to it.
fn write_job(dir: &Path, traces: u64) -> PathBuf {
    let text = crate::checkpoint::job_text(traces)
        .replace(
            "  o: { type: parquet, from: [t, t.spans, s.late_spans, gen.dead_letters, m, m.exemplars, g] }",
            "  o: { type: parquet, from: [t, t.spans, s.late_spans, gen.dead_letters, m, m.exemplars, g, per_service], path: out }",
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
    let out = cli(
        &server,
        &client_dir,
        &["submit", job_path.to_str().unwrap(), "--wait"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8(out.stdout).unwrap().trim().to_owned();
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
        "spanflow_spans_in_total{{job=\"{id}\",job_name=\"checkpointed\"}} {}",
        summary.decode.spans
    );
    assert!(text.contains(&line), "no `{line}` in\n{text}");
    assert!(text.contains(&format!(
        "spanflow_dead_letters_total{{job=\"{id}\",job_name=\"checkpointed\",reason=\"bad_record\"}} {}",
        summary.decode.bad_records
    )));
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
    let out = cli(&server, &project, &["submit", job_path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let first = server.wait_for(&id, "checkpoint", |j| !j["last_checkpoint"].is_null());
    assert_eq!(
        first["state"], "running",
        "the job ended before the restart: {first:#}"
    );

    // A second job (writing elsewhere), cancelled: its state goes, it stays cancelled.
    let elsewhere = tmp.path().join("other");
    let other_job = write_job(&elsewhere, 12_000);
    let other = cli(
        &server,
        &elsewhere,
        &["submit", other_job.to_str().unwrap()],
    );
    let other_id = String::from_utf8(other.stdout).unwrap().trim().to_owned();
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
