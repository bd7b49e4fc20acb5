//! The command-line side of the job server: `spanflow submit`, `jobs`, `stop`,
//! `cancel`.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use reqwest::StatusCode;
use reqwest::blocking::{Client as Http, RequestBuilder, Response};

/// The default server address (`--server`, `SPANFLOW_SERVER`).
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

/// A server's API.
pub struct Client {
    http: Http,
    base: String,
    token: Option<String>,
}

/// What a submission answered.
#[derive(Debug, serde::Deserialize)]
pub struct Submitted {
    /// The new job's id.
    pub id: String,
    /// Its name.
    pub name: String,
}

impl Client {
    /// A client of the server at `base` (e.g. `http://127.0.0.1:8080`).
    pub fn new(base: &str, token: Option<String>) -> Result<Client> {
        let http = Http::builder()
            .connect_timeout(Duration::from_secs(5))
            // A stop waits for the job's last checkpoint.
            .timeout(Duration::from_secs(300))
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Client {
            http,
            base: base.trim_end_matches('/').to_owned(),
            token,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.base)
    }

    fn send(&self, req: RequestBuilder, what: &str) -> Result<Response> {
        let req = match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let resp = req
            .send()
            .with_context(|| format!("{what}: cannot reach the server at {}", self.base))?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            bail!("{what}: the server refused the token (pass --token or set SPANFLOW_TOKEN)");
        }
        Ok(resp)
    }

    /// Submits a self-contained job definition, to run as consumer-group member
    /// `instance` when one is given; an invalid one comes back with the server's
    /// diagnostics in the error.
    pub fn submit(&self, definition: &str, instance: Option<&str>) -> Result<Submitted> {
        let mut req = self
            .http
            .post(self.url("/jobs"))
            .header("content-type", "application/yaml")
            .body(definition.to_owned());
        if let Some(name) = instance {
            req = req.query(&[("instance", name)]);
        }
        let resp = self.send(req, "submitting")?;
        let status = resp.status();
        let body: serde_json::Value = resp.json().context("reading the server's answer")?;
        if status == StatusCode::CREATED {
            return serde_json::from_value(body).context("reading the server's answer");
        }
        let mut message = body["error"].as_str().unwrap_or("refused").to_owned();
        if let Some(items) = body["diagnostics"].as_array() {
            for d in items {
                message.push_str(&format!(
                    "\n  {}:{}:{}: {}",
                    d["file"].as_str().unwrap_or("job"),
                    d["line"],
                    d["column"],
                    d["message"].as_str().unwrap_or("")
                ));
            }
        }
        bail!("submitting: {status}: {message}")
    }

    /// Every job, as the API shows them.
    pub fn jobs(&self) -> Result<Vec<serde_json::Value>> {
        let resp = self.send(self.http.get(self.url("/jobs")), "listing jobs")?;
        let body = answer(resp, "listing jobs")?;
        Ok(body["jobs"].as_array().cloned().unwrap_or_default())
    }

    /// One job.
    pub fn job(&self, id: &str) -> Result<serde_json::Value> {
        let what = format!("reading job `{id}`");
        answer(
            self.send(self.http.get(self.url(&format!("/jobs/{id}"))), &what)?,
            &what,
        )
    }

    /// Stops a job with a last checkpoint; returns it as it ended.
    pub fn stop(&self, id: &str) -> Result<serde_json::Value> {
        let what = format!("stopping job `{id}`");
        answer(
            self.send(self.http.post(self.url(&format!("/jobs/{id}/stop"))), &what)?,
            &what,
        )
    }

    /// Cancels a job; returns it as it ended.
    pub fn cancel(&self, id: &str) -> Result<serde_json::Value> {
        let what = format!("cancelling job `{id}`");
        answer(
            self.send(self.http.delete(self.url(&format!("/jobs/{id}"))), &what)?,
            &what,
        )
    }
}

fn answer(resp: Response, what: &str) -> Result<serde_json::Value> {
    let status = resp.status();
    let body: serde_json::Value = resp
        .json()
        .with_context(|| format!("{what}: reading the server's answer"))?;
    if !status.is_success() {
        bail!(
            "{what}: {status}: {}",
            body["error"].as_str().unwrap_or("refused")
        );
    }
    Ok(body)
}

/// One line per job for `spanflow jobs`.
pub fn render_jobs(jobs: &[serde_json::Value]) -> String {
    let mut out = format!(
        "{:<24} {:<10} {:>12} {:>10} {:>10}  {}\n",
        "ID", "STATE", "SPANS", "SPANS/S", "OPEN", "STARTED"
    );
    for j in jobs {
        out.push_str(&format!(
            "{:<24} {:<10} {:>12} {:>10.0} {:>10}  {}\n",
            j["id"].as_str().unwrap_or("?"),
            j["state"].as_str().unwrap_or("?"),
            j["spans"].as_u64().unwrap_or(0),
            j["spans_per_second"].as_f64().unwrap_or(0.0),
            j["open_traces"].as_u64().unwrap_or(0),
            j["started_at"].as_str().unwrap_or(""),
        ));
        if let Some(e) = j["error"].as_str() {
            out.push_str(&format!("    error: {e}\n"));
        }
    }
    out
}
