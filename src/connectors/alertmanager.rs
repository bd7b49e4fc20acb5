//! The `alertmanager` sink: the events of an `alerts` table POSTed to Alertmanager's
//! `/api/v2/alerts`, in the shape Prometheus sends, so an existing Alertmanager routes
//! spanflow's alerts like any other.
//!
//! Delivery runs on a thread of its own with a bounded queue that keeps the latest event
//! of each alert (by its labels): a down Alertmanager is retried with backoff and never
//! stops the job. A firing alert is sent again every `resend_interval` until it
//! resolves, as Prometheus does (Alertmanager resolves an alert it has not heard of for
//! its `resolve_timeout`). At the end of a run the thread delivers what is queued,
//! waiting for Alertmanager up to `flush_timeout`; what it could not deliver, or had to
//! drop from a full queue, is counted and logged.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant, UNIX_EPOCH};

use arrow::array::{
    Array, AsArray, FixedSizeBinaryArray, Float64Array, ListArray, RecordBatch, StringArray,
    TimestampNanosecondArray, UInt64Array,
};
use arrow::datatypes::SchemaRef;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use spanflow_operators::{ConfigIssue, HumanDuration};

use crate::runtime::io::{ConnectorError, Sink, TableWriter};

/// Configuration of the `alertmanager` sink.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertmanagerSinkConfig {
    /// Alertmanager's URL, e.g. `http://127.0.0.1:9093` (alerts go to `/api/v2/alerts`).
    pub url: String,
    /// Alerts waiting for delivery at most; beyond it the oldest are dropped (counted).
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// How often a firing alert is sent again until it resolves.
    #[serde(default = "default_resend")]
    pub resend_interval: HumanDuration,
    /// Longest wait for Alertmanager at the end of a run before what is still queued
    /// is given up (counted).
    #[serde(default = "default_flush_timeout")]
    pub flush_timeout: HumanDuration,
    /// Longest time one POST may take.
    #[serde(default = "default_request_timeout")]
    pub request_timeout: HumanDuration,
    /// First wait after a failed POST; it doubles up to `max_backoff`.
    #[serde(default = "default_initial_backoff")]
    pub initial_backoff: HumanDuration,
    /// Longest wait between attempts.
    #[serde(default = "default_max_backoff")]
    pub max_backoff: HumanDuration,
    /// A link to a trace, the trace id appended, e.g. `http://127.0.0.1:16686/trace/`
    /// (Jaeger's UI): the first trace's link goes into the `trace_url` annotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_url: Option<String>,
}

fn default_queue() -> usize {
    10_000
}
fn default_resend() -> HumanDuration {
    HumanDuration::secs(60)
}
fn default_flush_timeout() -> HumanDuration {
    HumanDuration::secs(30)
}
fn default_request_timeout() -> HumanDuration {
    HumanDuration::secs(5)
}
fn default_initial_backoff() -> HumanDuration {
    HumanDuration(Duration::from_millis(100))
}
fn default_max_backoff() -> HumanDuration {
    HumanDuration::secs(10)
}

impl AlertmanagerSinkConfig {
    /// Checks the values serde cannot; returns every problem found.
    pub fn validate(&self) -> Vec<ConfigIssue> {
        let mut issues = Vec::new();
        match url::Url::parse(&self.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            Ok(u) => issues.push(ConfigIssue::new(
                "url",
                format!("must be http:// or https://, not {}://", u.scheme()),
            )),
            Err(e) => issues.push(ConfigIssue::new("url", format!("not a URL: {e}"))),
        }
        if self.queue == 0 {
            issues.push(ConfigIssue::new("queue", "must be at least 1"));
        }
        if self.resend_interval.0.is_zero() {
            issues.push(ConfigIssue::new("resend_interval", "must be more than 0"));
        }
        if self.initial_backoff.0 > self.max_backoff.0 {
            issues.push(ConfigIssue::new(
                "initial_backoff",
                "must not be longer than max_backoff",
            ));
        }
        issues
    }

    fn endpoint(&self) -> String {
        format!("{}/api/v2/alerts", self.url.trim_end_matches('/'))
    }
}

/// One alert as Alertmanager's API v2 takes it (`postableAlert`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PostableAlert {
    /// `alertname` (the rule), the group's labels and the rule's own.
    pub labels: BTreeMap<String, String>,
    /// `summary`, `value`, `threshold`, `trace_ids` (and `trace_url`).
    pub annotations: BTreeMap<String, String>,
    /// When the condition started to hold (RFC 3339).
    pub starts_at: String,
    /// When a resolved alert ended (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ends_at: Option<String>,
}

fn rfc3339(ns: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_nanos(u64::try_from(ns).unwrap_or(0));
    humantime::format_rfc3339_millis(t).to_string()
}

/// The alerts of a batch of `alerts` rows.
pub fn alerts_of(
    batch: &RecordBatch,
    trace_url: Option<&str>,
) -> Result<Vec<PostableAlert>, ConnectorError> {
    let col = |name: &str| {
        batch
            .column_by_name(name)
            .ok_or_else(|| ConnectorError::internal(format!("alerts rows have no `{name}`")))
    };
    let strings = |name: &str| -> Result<&StringArray, ConnectorError> {
        col(name)?
            .as_string_opt::<i32>()
            .ok_or_else(|| ConnectorError::internal(format!("`{name}` is not text")))
    };
    let times = |name: &str| -> Result<&TimestampNanosecondArray, ConnectorError> {
        col(name)?
            .as_any()
            .downcast_ref::<TimestampNanosecondArray>()
            .ok_or_else(|| ConnectorError::internal(format!("`{name}` is not a timestamp")))
    };
    let floats = |name: &str| -> Result<&Float64Array, ConnectorError> {
        col(name)?
            .as_any()
            .downcast_ref::<Float64Array>()
            .ok_or_else(|| ConnectorError::internal(format!("`{name}` is not a number")))
    };
    let (rule, state, metric) = (strings("rule")?, strings("state")?, strings("metric")?);
    let label_names = spanflow_operators::alerts::Label::ALL;
    let label_cols = label_names
        .iter()
        .map(|l| strings(l.as_str()))
        .collect::<Result<Vec<_>, _>>()?;
    let (extra, kind, cmp) = (
        strings("labels")?,
        strings("value_kind")?,
        strings("comparison")?,
    );
    let (value, threshold) = (floats("value")?, floats("threshold")?);
    let requests = col("requests")?
        .as_any()
        .downcast_ref::<UInt64Array>()
        .ok_or_else(|| ConnectorError::internal("`requests` is not a count"))?;
    let (starts, ends) = (times("starts_at")?, times("ends_at")?);
    let traces = col("trace_ids")?
        .as_any()
        .downcast_ref::<ListArray>()
        .ok_or_else(|| ConnectorError::internal("`trace_ids` is not a list"))?;
    let mut out = Vec::with_capacity(batch.num_rows());
    for r in 0..batch.num_rows() {
        let mut labels = BTreeMap::new();
        labels.insert("alertname".to_owned(), rule.value(r).to_owned());
        labels.insert("metric".to_owned(), metric.value(r).to_owned());
        for (l, c) in label_names.iter().zip(&label_cols) {
            if !c.value(r).is_empty() {
                labels.insert(l.as_str().to_owned(), c.value(r).to_owned());
            }
        }
        if let Ok(serde_json::Value::Object(m)) = serde_json::from_str(extra.value(r)) {
            for (k, v) in m {
                if let serde_json::Value::String(v) = v {
                    labels.entry(k).or_insert(v);
                }
            }
        }
        let ids: Vec<String> = traces
            .value(r)
            .as_any()
            .downcast_ref::<FixedSizeBinaryArray>()
            .map(|a| (0..a.len()).map(|i| hex::encode(a.value(i))).collect())
            .unwrap_or_default();
        let mut annotations = BTreeMap::new();
        annotations.insert(
            "summary".to_owned(),
            format!(
                "{} {} {} {} ({} requests)",
                kind.value(r),
                value.value(r),
                cmp.value(r),
                threshold.value(r),
                requests.value(r)
            ),
        );
        annotations.insert("value".to_owned(), value.value(r).to_string());
        annotations.insert("threshold".to_owned(), threshold.value(r).to_string());
        annotations.insert("trace_ids".to_owned(), ids.join(","));
        if let (Some(base), Some(first)) = (trace_url, ids.first()) {
            annotations.insert("trace_url".to_owned(), format!("{base}{first}"));
        }
        out.push(PostableAlert {
            labels,
            annotations,
            starts_at: rfc3339(starts.value(r)),
            ends_at: (state.value(r) == "resolved" && !ends.is_null(r))
                .then(|| rfc3339(ends.value(r))),
        });
    }
    Ok(out)
}

/// Counts of a sink's delivery, for the summary and logs.
#[derive(Debug, Default)]
pub struct DeliveryStats {
    /// Alerts posted (each post of each alert).
    pub posted: AtomicU64,
    /// Failed POSTs (retried).
    pub failed: AtomicU64,
    /// Alerts dropped from a full queue.
    pub dropped: AtomicU64,
    /// Alerts still queued when the run ended and Alertmanager did not answer.
    pub undelivered: AtomicU64,
    /// Alerts waiting for delivery now.
    pub queued: AtomicU64,
}

enum Msg {
    Alerts(Vec<PostableAlert>),
    Finish(mpsc::Sender<()>),
}

/// The `alertmanager` sink of one `alerts` table.
#[derive(Debug)]
pub struct AlertmanagerSink {
    config: AlertmanagerSinkConfig,
    stats: Arc<DeliveryStats>,
}

impl AlertmanagerSink {
    /// A sink posting to `config.url`.
    pub fn new(config: AlertmanagerSinkConfig) -> Self {
        AlertmanagerSink {
            config,
            stats: Arc::default(),
        }
    }

    /// Its delivery counts.
    pub fn stats(&self) -> Arc<DeliveryStats> {
        self.stats.clone()
    }
}

impl Sink for AlertmanagerSink {
    fn location(&self) -> PathBuf {
        PathBuf::from(format!("alertmanager:{}", self.config.url))
    }

    fn failed_attempts(&self) -> u64 {
        self.stats.failed.load(Ordering::Relaxed)
    }

    fn undelivered(&self) -> u64 {
        self.stats.undelivered.load(Ordering::Relaxed) + self.stats.dropped.load(Ordering::Relaxed)
    }

    fn queued(&self) -> u64 {
        self.stats.queued.load(Ordering::Relaxed)
    }

    fn open(
        &self,
        _part: usize,
        _schema: SchemaRef,
    ) -> Result<Box<dyn TableWriter>, ConnectorError> {
        let (tx, rx) = mpsc::channel();
        let config = self.config.clone();
        let stats = self.stats.clone();
        // The blocking client runs a runtime of its own: it is made, and dropped, on
        // the delivery thread, never on the job's async threads.
        let thread = std::thread::Builder::new()
            .name("alertmanager-sink".into())
            .spawn(move || {
                match reqwest::blocking::Client::builder()
                    .timeout(config.request_timeout.0)
                    .build()
                {
                    Ok(client) => Delivery::new(config, client, stats).run(&rx),
                    Err(e) => {
                        tracing::error!(error = %e, "alertmanager sink: no HTTP client");
                        // Answer the writer's Finish so the run does not wait.
                        while let Ok(m) = rx.recv() {
                            if let Msg::Finish(done) = m {
                                let _ = done.send(());
                            }
                        }
                    }
                }
            })
            .map_err(|e| ConnectorError::internal(format!("alertmanager sink thread: {e}")))?;
        Ok(Box::new(AlertmanagerWriter {
            tx,
            thread: Mutex::new(Some(thread)),
            rows: 0,
            trace_url: self.config.trace_url.clone(),
            stats: self.stats.clone(),
            url: self.config.url.clone(),
        }))
    }
}

/// The writer: hands alerts to the delivery thread.
struct AlertmanagerWriter {
    tx: mpsc::Sender<Msg>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    rows: u64,
    trace_url: Option<String>,
    stats: Arc<DeliveryStats>,
    url: String,
}

impl TableWriter for AlertmanagerWriter {
    fn write(&mut self, batch: &RecordBatch) -> Result<(), ConnectorError> {
        let alerts = alerts_of(batch, self.trace_url.as_deref())?;
        self.rows += alerts.len() as u64;
        self.tx
            .send(Msg::Alerts(alerts))
            .map_err(|_| ConnectorError::internal("the alertmanager sink's thread stopped"))
    }

    fn close(self: Box<Self>) -> Result<u64, ConnectorError> {
        let (done, wait) = mpsc::channel();
        if self.tx.send(Msg::Finish(done)).is_ok() {
            let _ = wait.recv();
        }
        if let Ok(mut t) = self.thread.lock()
            && let Some(t) = t.take()
        {
            let _ = t.join();
        }
        let (undelivered, dropped) = (
            self.stats.undelivered.load(Ordering::Relaxed),
            self.stats.dropped.load(Ordering::Relaxed),
        );
        if undelivered + dropped > 0 {
            // The job's results stand; the alerts it could not deliver are reported.
            tracing::warn!(
                "alertmanager sink {}: {undelivered} alerts not delivered by the end of the \
                 run, {dropped} dropped from a full queue",
                self.url
            );
        }
        Ok(self.rows)
    }
}

/// The delivery thread's state.
struct Delivery {
    config: AlertmanagerSinkConfig,
    client: reqwest::blocking::Client,
    stats: Arc<DeliveryStats>,
    /// Latest event per alert (by labels) not yet delivered, with its arrival order.
    pending: BTreeMap<Vec<(String, String)>, (u64, PostableAlert)>,
    /// Firing alerts, to send again every `resend_interval`.
    firing: BTreeMap<Vec<(String, String)>, PostableAlert>,
    seq: u64,
    backoff: Duration,
    next_attempt: Instant,
    next_resend: Instant,
}

impl Delivery {
    fn new(
        config: AlertmanagerSinkConfig,
        client: reqwest::blocking::Client,
        stats: Arc<DeliveryStats>,
    ) -> Self {
        let now = Instant::now();
        Delivery {
            backoff: config.initial_backoff.0,
            next_resend: now + config.resend_interval.0,
            config,
            client,
            stats,
            pending: BTreeMap::new(),
            firing: BTreeMap::new(),
            seq: 0,
            next_attempt: now,
        }
    }

    fn add(&mut self, a: PostableAlert) {
        let key: Vec<(String, String)> = a
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if a.ends_at.is_none() {
            self.firing.insert(key.clone(), a.clone());
        } else {
            self.firing.remove(&key);
        }
        self.seq += 1;
        self.pending.insert(key, (self.seq, a));
        while self.pending.len() > self.config.queue {
            let oldest = self
                .pending
                .iter()
                .min_by_key(|(_, (s, _))| *s)
                .map(|(k, _)| k.clone());
            let Some(k) = oldest else { break };
            self.pending.remove(&k);
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// One POST of everything pending; true when Alertmanager took it.
    fn post(&mut self) -> bool {
        let mut batch: Vec<(u64, PostableAlert)> = self.pending.values().cloned().collect();
        batch.sort_by_key(|(s, _)| *s);
        let body: Vec<&PostableAlert> = batch.iter().map(|(_, a)| a).collect();
        let ok = self
            .client
            .post(self.config.endpoint())
            .json(&body)
            .send()
            .is_ok_and(|r| r.status().is_success());
        if ok {
            self.stats
                .posted
                .fetch_add(body.len() as u64, Ordering::Relaxed);
            // Alerts arrive on this same thread, between posts: all of `pending` went.
            self.pending.clear();
            self.backoff = self.config.initial_backoff.0;
        } else {
            if self
                .stats
                .failed
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(10)
            {
                tracing::warn!(
                    "alertmanager sink: {} does not take alerts; retrying (backoff up to {:?})",
                    self.config.endpoint(),
                    self.config.max_backoff.0
                );
            }
            self.next_attempt = Instant::now() + self.backoff;
            self.backoff = (self.backoff * 2).min(self.config.max_backoff.0);
        }
        ok
    }

    fn run(mut self, rx: &mpsc::Receiver<Msg>) {
        // Whom to tell once done (none when the writer is gone), and the deadline.
        let mut finish: Option<(Option<mpsc::Sender<()>>, Instant)> = None;
        loop {
            let wait = if self.pending.is_empty() {
                self.next_resend
                    .saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(200))
            } else {
                self.next_attempt
                    .saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(200))
            };
            match rx.recv_timeout(wait) {
                Ok(Msg::Alerts(v)) => {
                    for a in v {
                        self.add(a);
                    }
                }
                Ok(Msg::Finish(done)) => {
                    finish = Some((Some(done), Instant::now() + self.config.flush_timeout.0));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    if finish.is_none() {
                        finish = Some((None, Instant::now()));
                    }
                }
            }
            let now = Instant::now();
            if finish.is_none() && now >= self.next_resend {
                let again: Vec<PostableAlert> = self.firing.values().cloned().collect();
                for a in again {
                    self.add(a);
                }
                self.next_resend = now + self.config.resend_interval.0;
            }
            if !self.pending.is_empty() && now >= self.next_attempt {
                self.post();
            }
            self.stats
                .queued
                .store(self.pending.len() as u64, Ordering::Relaxed);
            if let Some((done, deadline)) = &finish
                && (self.pending.is_empty() || Instant::now() >= *deadline)
            {
                self.stats
                    .undelivered
                    .fetch_add(self.pending.len() as u64, Ordering::Relaxed);
                self.stats.queued.store(0, Ordering::Relaxed);
                if let Some(done) = done {
                    let _ = done.send(());
                }
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(queue: usize) -> AlertmanagerSinkConfig {
        AlertmanagerSinkConfig {
            url: "http://127.0.0.1:9".into(),
            queue,
            resend_interval: default_resend(),
            flush_timeout: default_flush_timeout(),
            request_timeout: default_request_timeout(),
            initial_backoff: default_initial_backoff(),
            max_backoff: default_max_backoff(),
            trace_url: None,
        }
    }

    fn alert(name: &str, resolved: bool) -> PostableAlert {
        PostableAlert {
            labels: [("alertname".to_owned(), name.to_owned())].into(),
            annotations: BTreeMap::new(),
            starts_at: rfc3339(0),
            ends_at: resolved.then(|| rfc3339(1)),
        }
    }

    fn delivery(queue: usize) -> Delivery {
        Delivery::new(
            config(queue),
            reqwest::blocking::Client::new(),
            Arc::default(),
        )
    }

    /// The queue keeps each alert's latest event, and only firing alerts are sent
    /// again; a full queue drops the oldest, counted.
    #[test]
    fn the_queue_keeps_each_alerts_latest_event_and_is_bounded() {
        let mut d = delivery(2);
        d.add(alert("a", false));
        assert_eq!(d.firing.len(), 1);
        d.add(alert("a", true));
        assert_eq!(d.pending.len(), 1);
        assert!(d.firing.is_empty(), "a resolved alert is not sent again");
        assert!(d.pending.values().all(|(_, a)| a.ends_at.is_some()));
        d.add(alert("b", false));
        d.add(alert("c", false));
        assert_eq!(d.pending.len(), 2);
        assert_eq!(d.stats.dropped.load(Ordering::Relaxed), 1);
        let left: Vec<&str> = d
            .pending
            .values()
            .map(|(_, a)| a.labels["alertname"].as_str())
            .collect();
        assert_eq!(left, ["b", "c"], "the oldest went");
    }

    #[test]
    fn a_config_that_cannot_work_is_refused() {
        assert!(config(1).validate().is_empty());
        let mut c = config(0);
        c.url = "ftp://x".into();
        c.initial_backoff = HumanDuration::secs(60);
        let paths: Vec<String> = c.validate().iter().map(|i| i.path.join(".")).collect();
        assert_eq!(paths, ["url", "queue", "initial_backoff"]);
    }
}
