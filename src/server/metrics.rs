//! `GET /metrics`: the server's and its jobs' own telemetry, in the Prometheus text
//! format or, when the scraper asks for it, OpenMetrics.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use spanflow_operators::metrics::cumulative::FamilyKind;
use spanflow_operators::operator::Report;
use spanflow_operators::session_window::{CloseReason, LateReason};

use super::jobs::{JobState, Jobs};

/// The exposition format a scrape asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4.
    Prometheus,
    /// OpenMetrics 1.0 text.
    OpenMetrics,
}

impl Format {
    /// What an `Accept` header asks for: OpenMetrics when it names it (Prometheus
    /// sends it first when exemplar storage or native scraping is on).
    pub fn from_accept(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Prometheus,
        }
    }

    /// The response's `Content-Type`.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// Writes metric families: the `# HELP`/`# TYPE` header once per family, samples
/// under it, counters named `<family>_total` in both formats.
struct Writer {
    out: String,
    format: Format,
}

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Writer {
    fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        // OpenMetrics names a counter family without its `_total` suffix.
        let family = match (self.format, kind) {
            (Format::OpenMetrics, "counter") => name.strip_suffix("_total").unwrap_or(name),
            _ => name,
        };
        let _ = writeln!(self.out, "# HELP {family} {help}");
        let _ = writeln!(self.out, "# TYPE {family} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", number(value));
    }

    fn finish(mut self) -> String {
        if self.format == Format::OpenMetrics {
            self.out.push_str("# EOF\n");
        }
        self.out
    }
}

/// A label value with `\`, `"` and newlines escaped.
fn escape(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

fn number(v: f64) -> String {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        format!("{v}")
    }
}

/// One job's figures at the scrape.
struct Row {
    job: String,
    name: String,
    records: u64,
    spans: u64,
    decode: crate::formats::DecodeStats,
    far_future: u64,
    open_traces: u64,
    buffered: u64,
    watermark_ns: u64,
    splits: Vec<crate::runtime::SplitStats>,
    checkpoints: crate::runtime::CheckpointStats,
    running: bool,
    group: Option<crate::runtime::GroupSummary>,
}

/// A family of operator counters: name, help, and a node's samples from its report
/// (label, label value, count).
type ReportFamily = (
    &'static str,
    &'static str,
    fn(&Report) -> Vec<(&'static str, String, u64)>,
);

/// A family: name, help, and its value for a job (none: no sample).
type Family<T> = (&'static str, &'static str, fn(&Row) -> T);

/// Renders every family for the jobs the server knows.
pub fn render(jobs: &Jobs, format: Format) -> String {
    let mut w = Writer {
        out: String::new(),
        format,
    };
    let all = jobs.list();
    w.family(
        "spanflow_jobs",
        Kind::Gauge,
        "Jobs the server knows, by state.",
    );
    for state in JobState::ALL {
        let n = all.iter().filter(|h| h.record().state == state).count();
        w.sample("spanflow_jobs", &[("state", state.as_str())], n as f64);
    }
    let rows: Vec<Row> = all
        .iter()
        .map(|h| {
            let r = h.record();
            let live = &h.live;
            Row {
                job: r.id,
                name: r.name,
                records: live.records.load(Ordering::Relaxed),
                spans: live.spans.load(Ordering::Relaxed),
                decode: live.decode(),
                far_future: live.far_future.load(Ordering::Relaxed),
                open_traces: live.open_traces.load(Ordering::Relaxed),
                buffered: live.buffered_spans.load(Ordering::Relaxed),
                watermark_ns: live.watermark.load(Ordering::Relaxed),
                splits: live.splits(),
                checkpoints: live.checkpoints(),
                running: r.state == JobState::Running,
                group: live.group.lock().ok().and_then(|g| g.clone()),
            }
        })
        .collect();
    // Not `job`: Prometheus sets that to the scrape job's name.
    let labels = |r: &Row| [("job_id", r.job.clone()), ("job_name", r.name.clone())];
    let counters: [Family<f64>; 3] = [
        (
            "spanflow_records_in_total",
            "Source records (Kafka messages, file records) decoded.",
            |r| r.records as f64,
        ),
        (
            "spanflow_spans_in_total",
            "Spans decoded from the job's sources.",
            |r| r.spans as f64,
        ),
        (
            "spanflow_checkpoints_total",
            "Checkpoints completed by the job's current run.",
            |r| r.checkpoints.completed as f64,
        ),
    ];
    for (name, help, value) in counters {
        w.family(name, Kind::Counter, help);
        for r in &rows {
            let l = labels(r);
            w.sample(name, &pairs(&l), value(r));
        }
    }
    w.family(
        "spanflow_dead_letters_total",
        Kind::Counter,
        "Records and spans written to dead letters, by reason.",
    );
    for r in &rows {
        let l = labels(r);
        for (reason, n) in [
            ("bad_record", r.decode.bad_records),
            ("bad_span", r.decode.bad_spans),
            ("far_future", r.far_future),
        ] {
            let mut p = pairs(&l);
            p.push(("reason", reason));
            w.sample("spanflow_dead_letters_total", &p, n as f64);
        }
    }
    let gauges: [Family<Option<f64>>; 6] = [
        (
            "spanflow_open_traces",
            "Traces open in the job's session windows.",
            |r| Some(r.open_traces as f64),
        ),
        (
            "spanflow_buffered_spans",
            "Spans the job holds in open traces and undecided samples.",
            |r| Some(r.buffered as f64),
        ),
        (
            "spanflow_watermark_seconds",
            "The job's event-time watermark (unix seconds).",
            |r| (r.watermark_ns > 0).then_some(r.watermark_ns as f64 / 1e9),
        ),
        (
            "spanflow_job_running",
            "1 while the job runs, else 0.",
            |r| Some(if r.running { 1.0 } else { 0.0 }),
        ),
        (
            "spanflow_checkpoint_duration_seconds",
            "Time from request to durable manifest of the newest checkpoint.",
            |r| (r.checkpoints.completed > 0).then_some(r.checkpoints.last_duration_ms / 1e3),
        ),
        (
            "spanflow_checkpoint_size_bytes",
            "Bytes of the newest checkpoint's state.",
            |r| (r.checkpoints.completed > 0).then_some(r.checkpoints.last_bytes as f64),
        ),
    ];
    for (name, help, value) in gauges {
        w.family(name, Kind::Gauge, help);
        for r in &rows {
            if let Some(v) = value(r) {
                let l = labels(r);
                w.sample(name, &pairs(&l), v);
            }
        }
    }
    if rows.iter().any(|r| r.group.is_some()) {
        w.family(
            "spanflow_group_partition_owned",
            Kind::Gauge,
            "1 for each input partition a job run as a consumer-group member owns now.",
        );
        for r in &rows {
            let Some(g) = &r.group else { continue };
            for (topic, partition) in &g.partitions {
                let partition = partition.to_string();
                let l = labels(r);
                let mut p = pairs(&l);
                p.push(("member", &g.instance));
                p.push(("topic", topic));
                p.push(("partition", &partition));
                w.sample("spanflow_group_partition_owned", &p, 1.0);
            }
        }
        w.family(
            "spanflow_group_rebalances_total",
            Kind::Counter,
            "Rebalances that restarted a consumer-group member from the group's checkpoints.",
        );
        for r in &rows {
            let Some(g) = &r.group else { continue };
            let l = labels(r);
            let mut p = pairs(&l);
            p.push(("member", &g.instance));
            w.sample("spanflow_group_rebalances_total", &p, g.rebalances as f64);
        }
    }
    w.family(
        "spanflow_watermark_lag_seconds",
        Kind::Gauge,
        "Wall clock minus each split's watermark (Flink's watermark lag).",
    );
    for r in &rows {
        let l = labels(r);
        for s in &r.splits {
            if let Some(lag) = s.watermark_lag_s {
                let split = s.split.to_string();
                let mut p = pairs(&l);
                p.push(("source", &s.source));
                p.push(("split", &split));
                w.sample("spanflow_watermark_lag_seconds", &p, lag);
            }
        }
    }
    // The operators' own counters, by node.
    let reports: Vec<(String, String, std::collections::BTreeMap<String, Report>)> = all
        .iter()
        .map(|h| {
            let r = h.record();
            (r.id, r.name, h.live.node_reports())
        })
        .collect();
    let node_labels = |id: &str, name: &str, node: &str| {
        vec![
            ("job_id", id.to_owned()),
            ("job_name", name.to_owned()),
            ("node", node.to_owned()),
        ]
    };
    let operator_families: [ReportFamily; 7] = [
        (
            "spanflow_traces_closed_total",
            "Traces a session window closed, by why.",
            |r| match r {
                Report::Sessions(s) => CloseReason::ALL
                    .iter()
                    .zip(s.closed_by_reason)
                    .map(|(c, n)| ("reason", c.as_str().to_owned(), n))
                    .collect(),
                _ => Vec::new(),
            },
        ),
        (
            "spanflow_late_spans_total",
            "Spans that arrived after their trace or window closed, by why.",
            |r| match r {
                Report::Sessions(s) => LateReason::ALL
                    .iter()
                    .zip(s.late_by_reason)
                    .map(|(c, n)| ("reason", c.as_str().to_owned(), n))
                    .collect(),
                _ => Vec::new(),
            },
        ),
        (
            "spanflow_sampled_traces_total",
            "Traces a tail sampler kept, by the first policy that kept them.",
            |r| match r {
                Report::Sampling(s) => s
                    .kept_by_policy
                    .iter()
                    .map(|(p, n)| ("policy", p.clone(), *n))
                    .collect(),
                _ => Vec::new(),
            },
        ),
        (
            "spanflow_sampling_decisions_total",
            "Traces a tail sampler decided, kept or dropped.",
            |r| match r {
                Report::Sampling(s) => vec![
                    ("decision", "kept".to_owned(), s.traces_kept),
                    ("decision", "dropped".to_owned(), s.traces_dropped),
                ],
                _ => Vec::new(),
            },
        ),
        (
            "spanflow_alerts_fired_total",
            "Alerts an alerts node fired, by rule.",
            |r| match r {
                Report::Alerts(a) => a
                    .rules
                    .iter()
                    .map(|c| ("rule", c.name.clone(), c.fired))
                    .collect(),
                _ => Vec::new(),
            },
        ),
        (
            "spanflow_alerts_fired_with_trace_total",
            "Alerts fired that carried at least one kept trace id, by rule (the SLO: \
             alerts with a trace to open / alerts fired).",
            |r| match r {
                Report::Alerts(a) => a
                    .rules
                    .iter()
                    .map(|c| ("rule", c.name.clone(), c.fired_with_trace))
                    .collect(),
                _ => Vec::new(),
            },
        ),
        (
            "spanflow_alerts_resolved_total",
            "Alerts an alerts node resolved, by rule.",
            |r| match r {
                Report::Alerts(a) => a
                    .rules
                    .iter()
                    .map(|c| ("rule", c.name.clone(), c.resolved))
                    .collect(),
                _ => Vec::new(),
            },
        ),
    ];
    for (family, help, samples) in operator_families {
        w.family(family, Kind::Counter, help);
        for (id, name, nodes) in &reports {
            for (node, report) in nodes {
                for (label, value, n) in samples(report) {
                    let mut l = node_labels(id, name, node);
                    l.push((label, value));
                    w.sample(family, &pairs(&l), n as f64);
                }
            }
        }
    }
    w.family(
        "spanflow_sink_rows_written_total",
        Kind::Counter,
        "Rows handed to each sink's table (committed at the next checkpoint).",
    );
    for h in &all {
        let r = h.record();
        for (sink, table, n) in h.live.rows_written() {
            let l = vec![
                ("job_id", r.id.clone()),
                ("job_name", r.name.clone()),
                ("sink", sink),
                ("table", table),
            ];
            w.sample("spanflow_sink_rows_written_total", &pairs(&l), n as f64);
        }
    }

    w.family(
        "spanflow_sink_errors_total",
        Kind::Counter,
        "Writes to a sink's system that failed and were retried (the job waits meanwhile).",
    );
    for h in &all {
        let r = h.record();
        for (sink, n) in h.live.sink_errors() {
            let l = vec![
                ("job_id", r.id.clone()),
                ("job_name", r.name.clone()),
                ("sink", sink),
            ];
            w.sample("spanflow_sink_errors_total", &pairs(&l), n as f64);
        }
    }
    w.family(
        "spanflow_sink_queued_rows",
        Kind::Gauge,
        "Rows a sink that delivers on its own thread (alertmanager) holds for delivery now: \
         its system is slow or down, the job goes on.",
    );
    // (labels, queued, undelivered) per job and sink.
    let delivery: Vec<_> = all
        .iter()
        .flat_map(|h| {
            let r = h.record();
            h.live
                .sink_delivery()
                .into_iter()
                .map(move |(sink, queued, undelivered)| {
                    let l = vec![
                        ("job_id", r.id.clone()),
                        ("job_name", r.name.clone()),
                        ("sink", sink),
                    ];
                    (l, queued, undelivered)
                })
        })
        .collect();
    for (l, queued, _) in &delivery {
        w.sample("spanflow_sink_queued_rows", &pairs(l), *queued as f64);
    }
    w.family(
        "spanflow_sink_undelivered_rows_total",
        Kind::Counter,
        "Rows such a sink gave up on: dropped from its full queue, or still queued when \
         the run ended.",
    );
    for (l, _, undelivered) in &delivery {
        w.sample(
            "spanflow_sink_undelivered_rows_total",
            &pairs(l),
            *undelivered as f64,
        );
    }
    w.family(
        "spanflow_consumer_lag_records",
        Kind::Gauge,
        "Records between a Kafka source's position and the end of each partition.",
    );
    for h in &all {
        let r = h.record();
        let Ok(lag) = h.live.consumer_lag.lock() else {
            continue;
        };
        for ((source, topic, partition), n) in lag.iter() {
            let partition = partition.to_string();
            let l = vec![
                ("job_id", r.id.clone()),
                ("job_name", r.name.clone()),
                ("source", source.clone()),
                ("topic", topic.clone()),
                ("partition", partition),
            ];
            w.sample("spanflow_consumer_lag_records", &pairs(&l), *n as f64);
        }
    }

    // Each job's RED and service-graph series since it started, one family across
    // jobs (a family's samples must be contiguous).
    let mut families = std::collections::BTreeMap::new();
    for h in &all {
        let r = h.record();
        let Ok(m) = h.live.metrics.lock() else {
            continue;
        };
        for (node, c) in m.iter().flatten() {
            let labels = format!(
                "job_id=\"{}\",job_name=\"{}\",node=\"{}\"",
                escape(&r.id),
                escape(&r.name),
                escape(node)
            );
            c.render(
                "spanflow_",
                &labels,
                format == Format::OpenMetrics,
                &mut families,
            );
        }
    }
    for (name, f) in families {
        match f.kind {
            FamilyKind::Histogram => {
                w.family(&name, Kind::Histogram, &f.help);
                if format == Format::OpenMetrics {
                    let _ = writeln!(w.out, "# UNIT {name} seconds");
                }
            }
            FamilyKind::Counter => w.family(&name, Kind::Counter, &f.help),
        }
        w.out.push_str(&f.lines);
    }
    w.finish()
}

fn pairs<'a>(l: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    l.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped_and_numbers_are_prometheus_numbers() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(number(3.0), "3");
        assert_eq!(number(0.25), "0.25");
        assert_eq!(number(f64::INFINITY), "+Inf");
        assert_eq!(number(f64::NAN), "NaN");
    }

    #[test]
    fn openmetrics_names_counter_families_without_total_and_ends_with_eof() {
        let mut w = Writer {
            out: String::new(),
            format: Format::OpenMetrics,
        };
        w.family("x_total", Kind::Counter, "X.");
        w.sample("x_total", &[("job_id", "a")], 2.0);
        assert_eq!(
            w.finish(),
            "# HELP x X.\n# TYPE x counter\nx_total{job_id=\"a\"} 2\n# EOF\n"
        );
        let mut w = Writer {
            out: String::new(),
            format: Format::Prometheus,
        };
        w.family("x_total", Kind::Counter, "X.");
        assert_eq!(w.finish(), "# HELP x_total X.\n# TYPE x_total counter\n");
        assert_eq!(
            Format::from_accept(Some(
                "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"
            )),
            Format::OpenMetrics
        );
        assert_eq!(Format::from_accept(None), Format::Prometheus);
    }
}
