//! The end-of-run summary and the progress bar.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use spanflow_operators::alerts::AlertsMetrics;
use spanflow_operators::session_window::{CloseReason, LateReason, SessionMetrics};

use spanflow_operators::span_filter::SpanFilterMetrics;
use spanflow_operators::tail_sampling::SamplingMetrics;

use spanflow_operators::metrics::MetricsReport;
use spanflow_operators::operator::Report;

use super::io::SourceReport;
use super::{Progress, TableTarget};
use crate::formats::DecodeStats;

/// What an instance of a job run as a consumer group owned.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupSummary {
    /// The instance's name.
    pub instance: String,
    /// The partitions it owned last.
    pub partitions: Vec<(String, i32)>,
    /// Times the group moved partitions and the instance restarted from checkpoints.
    pub rebalances: u64,
    /// Seconds it read nothing because of those rebalances (from each revoke until
    /// the next run restored its partitions and read again).
    pub paused_seconds: f64,
    /// Its repartition stage, when the input is not partitioned by trace id.
    pub repartition: Option<RepartitionSummary>,
}

/// What the repartition stage of an instance did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RepartitionSummary {
    /// The internal topic.
    pub topic: String,
    /// Its partitions.
    pub partitions: i32,
    /// Input records read.
    pub records: u64,
    /// Their bytes.
    pub bytes_in: u64,
    /// Records produced to the internal topic (one per trace partition per input
    /// record).
    pub messages: u64,
    /// Their bytes.
    pub bytes_out: u64,
    /// Input records that did not decode, forwarded whole.
    pub undecodable: u64,
    /// Times the group took partitions from this instance's stage.
    pub revokes: u64,
    /// Times the stage paused an input partition whose spans ran ahead of the
    /// slowest partition's in event time (the stage's own watermark alignment).
    pub pauses: u64,
}

/// Requests, errors and latency of one service's entry spans over the whole run.

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceSummary {
    /// Service.
    pub service: String,
    /// Entry spans (server, consumer).
    pub requests: u64,
    /// Failed entry spans.
    pub errors: u64,
    /// Median latency from the histogram, seconds.
    pub p50_seconds: Option<f64>,
    /// 99th percentile latency from the histogram, seconds.
    pub p99_seconds: Option<f64>,
}

/// The summary's counters, added up from the nodes' reports.
#[derive(Debug, Default)]
pub(crate) struct Totals {
    pub sessions: SessionMetrics,
    pub span_filter: Option<SpanFilterMetrics>,
    pub sampling: Option<SamplingMetrics>,
    pub samplers: Vec<(String, SamplingMetrics)>,
    pub services: Vec<ServiceSummary>,
    pub metric_intervals: u64,
    pub rollup_windows: Vec<(String, u64)>,
    pub alerts: Vec<(String, AlertsMetrics)>,
    pub folded_series: u64,
    pub late_metric_observations: u64,
}

impl Totals {
    /// Adds up `(node, kind, report)` of every node (each already merged over its
    /// instances). Several nodes of one kind add up; services come from the first
    /// `red_metrics` node.
    pub fn from_reports(reports: &[(&str, &str, Report)]) -> Self {
        let mut t = Totals::default();
        let mut red: Option<&MetricsReport> = None;
        for (name, kind, report) in reports {
            match report {
                Report::None => {}
                Report::Sessions(m) => t.sessions.merge(m),
                Report::Filter(m) => t.span_filter.get_or_insert_with(Default::default).merge(m),
                Report::Sampling(m) => {
                    t.sampling.get_or_insert_with(Default::default).merge(m);
                    t.samplers.push(((*name).to_owned(), m.clone()));
                }
                Report::Metrics(m) => {
                    t.folded_series += m.folded_series;
                    t.late_metric_observations += m.late_observations;
                    if *kind == "red_metrics" {
                        t.metric_intervals += m.intervals;
                        red.get_or_insert(m);
                    }
                }
                Report::Windows(n) => t.rollup_windows.push(((*name).to_owned(), *n)),
                Report::Alerts(m) => t.alerts.push(((*name).to_owned(), m.clone())),
            }
        }
        if let Some(m) = red {
            let mut services: Vec<ServiceSummary> = m
                .services
                .iter()
                .map(|(service, acc)| ServiceSummary {
                    service: service.clone(),
                    requests: acc.requests,
                    errors: acc.errors,
                    p50_seconds: m.service_quantile(service, 0.5),
                    p99_seconds: m.service_quantile(service, 0.99),
                })
                .collect();
            services.sort_by(|a, b| {
                b.requests
                    .cmp(&a.requests)
                    .then_with(|| a.service.cmp(&b.service))
            });
            t.services = services;
        }
        t
    }
}

/// Rows written to one table by one sink.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutputTable {
    /// Sink node name.
    pub sink: String,
    /// Table name.
    pub table: String,
    /// Where the rows went: the directory of the table's part files, or
    /// `kafka:<topic>`, or `clickhouse:<database>.<table>`.
    pub path: PathBuf,
    /// Rows written.
    pub rows: u64,
    /// Of those, rows the sink could not deliver (an Alertmanager that stayed down).
    #[serde(skip_serializing_if = "is_zero")]
    pub undelivered: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

pub(crate) fn add_output(outputs: &mut Vec<OutputTable>, t: &TableTarget, rows: u64) {
    let path = t.out.location();
    if let Some(o) = outputs
        .iter_mut()
        .find(|o| o.sink == t.sink && o.table == t.table)
    {
        o.rows += rows;
    } else {
        outputs.push(OutputTable {
            sink: t.sink.clone(),
            table: t.table.clone(),
            path,
            rows,
            undelivered: t.out.undelivered(),
        });
    }
}

/// Source reports in JSON: each source's name and its report's text.
fn reports_as_text<S: serde::Serializer>(
    reports: &[(String, Arc<dyn SourceReport>)],
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut m = s.serialize_map(Some(reports.len()))?;
    for (name, r) in reports {
        m.serialize_entry(name, &r.to_string())?;
    }
    m.end()
}

/// What a run did.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    /// Job name.
    pub job: String,
    /// Shards used.
    pub parallelism: usize,
    /// Decoding counters.
    pub decode: DecodeStats,
    /// Session window counters (all shards).
    pub sessions: SessionMetrics,
    /// Span filter counters, when the job filters spans.
    pub span_filter: Option<SpanFilterMetrics>,
    /// Tail sampling counters, when the job samples (all samplers added up).
    pub sampling: Option<SamplingMetrics>,
    /// Each sampler's counters, by node name.
    pub samplers: Vec<(String, SamplingMetrics)>,
    /// Per service: entry-span requests, errors and latency quantiles, busiest first
    /// (when the job computes RED metrics).
    pub services: Vec<ServiceSummary>,
    /// Metric intervals closed.
    pub metric_intervals: u64,
    /// Per rollup, the windows its query ran on.
    pub rollup_windows: Vec<(String, u64)>,
    /// Per `alerts` node: alerts fired, fired with a kept trace and resolved, per rule.
    pub alerts: Vec<(String, AlertsMetrics)>,
    /// Series folded into overflow series by cardinality limits.
    pub folded_series: u64,
    /// Metric observations that arrived after their interval closed.
    pub late_metric_observations: u64,
    /// Rows written per sink and table.
    pub outputs: Vec<OutputTable>,
    /// What sources reported about their run (the generator's ground truth), by
    /// source name.
    #[serde(serialize_with = "reports_as_text")]
    pub source_reports: Vec<(String, Arc<dyn SourceReport>)>,
    /// Most spans buffered at once (sum of per-shard peaks).
    pub peak_buffered_spans: u64,
    /// Accounted bytes per buffered span at those peaks.
    pub bytes_per_buffered_span: f64,
    /// Wall-clock seconds.
    pub wall_seconds: f64,
    /// CPU seconds (user + system) of the process during the run.
    pub cpu_seconds: f64,
    /// Peak resident memory of the process.
    pub peak_rss_bytes: u64,
    /// Page faults the process took during the run (the kernel zeroing fresh pages
    /// shows up here, not as the job's own work).
    pub page_faults: u64,
    /// The run resumed from a savepoint.
    pub restored: bool,
    /// The savepoint it resumed from.
    pub restored_from: Option<std::path::PathBuf>,
    /// The parallelism of the run that wrote that savepoint, when it was another
    /// (its state was split over this run's shards).
    pub rescaled_from: Option<usize>,
    /// The run was an instance of a job run as a consumer group.
    pub group: Option<GroupSummary>,
    /// The run stopped and kept its open state here (resume by running again).
    pub savepoint: Option<std::path::PathBuf>,
    /// What the run's checkpoints came to.
    pub checkpoints: super::CheckpointStats,
    /// Event time: the clock-skew guard, watermark alignment, each split's watermark.
    pub event_time: EventTimeStats,
}

/// What happened to event time in a run (Flink's source metrics, at the end).
#[derive(Debug, Clone, Default, Serialize)]
pub struct EventTimeStats {
    /// Spans the clock-skew guard sent to dead letters (`far_future`) instead of
    /// letting them move their split's watermark.
    pub far_future_spans: u64,
    /// Times watermark alignment paused a split.
    pub pauses: u64,
    /// Per split the run read.
    pub splits: Vec<SplitStats>,
}

/// One split (Kafka partition; the one split of other sources) at the end of a run.
#[derive(Debug, Clone, Serialize)]
pub struct SplitStats {
    /// Source node name.
    pub source: String,
    /// Split key within the source.
    pub split: u32,
    /// Its watermark (unix ms) when it was last read, if it saw any span.
    pub watermark_ms: Option<u64>,
    /// Wall clock minus that watermark, in seconds (Flink's watermark lag): how far
    /// behind real time the split's data is.
    pub watermark_lag_s: Option<f64>,
    /// Wall-clock seconds watermark alignment kept it paused.
    pub paused_s: f64,
}

impl RunSummary {
    /// The first report of type `T` a source made (the generator's `GroundTruth`).
    pub fn source_report<T: 'static>(&self) -> Option<&T> {
        self.source_reports
            .iter()
            .find_map(|(_, r)| r.as_any().downcast_ref::<T>())
    }

    /// Spans per wall-clock second.
    pub fn spans_per_second(&self) -> f64 {
        self.decode.spans as f64 / self.wall_seconds.max(1e-9)
    }

    /// Spans per CPU second.
    pub fn spans_per_cpu_second(&self) -> f64 {
        self.decode.spans as f64 / self.cpu_seconds.max(1e-9)
    }

    /// Rows written to `table` by any sink (the largest count, as several sinks may
    /// write the same table).
    pub fn rows(&self, table: &str) -> u64 {
        self.outputs
            .iter()
            .filter(|o| o.table == table)
            .map(|o| o.rows)
            .max()
            .unwrap_or(0)
    }

    /// The human-readable summary printed at the end of `spanflow run`.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let d = &self.decode;
        let m = &self.sessions;
        let _ = writeln!(
            s,
            "job `{}` {} in {:.2}s ({} shards){}",
            self.job,
            if self.savepoint.is_some() {
                "stopped"
            } else {
                "finished"
            },
            self.wall_seconds,
            self.parallelism,
            if self.restored {
                ", resumed from a savepoint"
            } else {
                ""
            }
        );
        if let Some(p) = &self.restored_from {
            let _ = writeln!(s, "  resumed     from {}", p.display());
        }
        if let Some(g) = &self.group {
            let parts: Vec<String> = g
                .partitions
                .iter()
                .map(|(t, p)| format!("{t}/{p}"))
                .collect();
            let _ = writeln!(
                s,
                "  group       instance {} owns {} partition(s) [{}]; {} rebalance(s) restarted \
                 it from the group's checkpoints, pausing it {:.2} s",
                g.instance,
                parts.len(),
                parts.join(", "),
                g.rebalances,
                g.paused_seconds
            );
            if let Some(r) = &g.repartition {
                let _ = writeln!(
                    s,
                    "  repartition {} records ({:.1} MB) re-keyed by trace id into {} messages \
                     ({:.1} MB) on `{}` ({} partitions){}{}",
                    r.records,
                    r.bytes_in as f64 / 1e6,
                    r.messages,
                    r.bytes_out as f64 / 1e6,
                    r.topic,
                    r.partitions,
                    if r.undecodable > 0 {
                        format!("; {} undecodable, forwarded whole", r.undecodable)
                    } else {
                        String::new()
                    },
                    if r.pauses > 0 {
                        format!("; input partitions paused {} times (ahead)", r.pauses)
                    } else {
                        String::new()
                    }
                );
            }
        }
        if let Some(n) = self.rescaled_from {
            let _ = writeln!(
                s,
                "  rescaled    state of {n} shards split over {}",
                self.parallelism
            );
        }
        if let Some(p) = &self.savepoint {
            let _ = writeln!(
                s,
                "  savepoint   open traces, metric intervals and Kafka positions kept in {}; \
                 run the job again to resume",
                p.display()
            );
        }
        let c = &self.checkpoints;
        if c.completed > 0 {
            let _ = writeln!(
                s,
                "  checkpoints {} taken (longest {:.0} ms, processing stopped {:.1} ms at most), \
                 last {:.1} MiB",
                c.completed,
                c.max_duration_ms,
                c.max_stall_ms,
                c.last_bytes as f64 / (1024.0 * 1024.0)
            );
        }
        let e = &self.event_time;
        if e.far_future_spans > 0 || e.pauses > 0 {
            let paused: f64 = e.splits.iter().map(|x| x.paused_s).sum();
            let _ = writeln!(
                s,
                "  event time  {} splits; alignment paused splits {} times ({paused:.1} s in all); \
                 {} far-future spans to dead letters",
                e.splits.len(),
                e.pauses,
                e.far_future_spans
            );
        }
        let _ = writeln!(
            s,
            "  input       {} records, {} spans decoded, {} dead letters ({} bad records, {} bad spans)",
            d.records,
            d.spans,
            d.dead_letters(),
            d.bad_records,
            d.bad_spans
        );
        let reasons: Vec<String> = CloseReason::ALL
            .iter()
            .zip(m.closed_by_reason)
            .filter(|(_, n)| *n > 0)
            .map(|(r, n)| format!("{} {n}", r.as_str()))
            .collect();
        let _ = writeln!(
            s,
            "  traces      {} closed ({}), {} spans in closed traces",
            m.traces_closed(),
            if reasons.is_empty() {
                "none".to_owned()
            } else {
                reasons.join(", ")
            },
            m.spans_closed
        );
        if m.continued > 0 {
            let _ = writeln!(
                s,
                "              {} of them continue an earlier session of their trace id (fragment > 0)",
                m.continued
            );
        }
        let late: Vec<String> = LateReason::ALL
            .iter()
            .zip(m.late_by_reason)
            .filter(|(_, n)| *n > 0)
            .map(|(r, n)| format!("{} {n}", r.as_str()))
            .collect();
        let _ = writeln!(
            s,
            "  late spans  {}{}",
            m.late_spans(),
            if late.is_empty() {
                String::new()
            } else {
                format!(" ({})", late.join(", "))
            }
        );
        let _ = writeln!(
            s,
            "  throughput  {:.0} spans/s, {:.0} spans per CPU-second ({:.2} CPU-s), peak RSS {:.1} MiB",
            self.spans_per_second(),
            self.spans_per_cpu_second(),
            self.cpu_seconds,
            self.peak_rss_bytes as f64 / (1024.0 * 1024.0)
        );
        let _ = writeln!(
            s,
            "  buffering   peak {} spans buffered, {:.0} bytes per buffered span",
            self.peak_buffered_spans, self.bytes_per_buffered_span
        );
        if let Some(f) = &self.span_filter {
            let _ = writeln!(
                s,
                "  span_filter {} of {} spans dropped {:?} (per rule)",
                f.dropped(),
                f.spans_in,
                f.dropped_by_rule
            );
        }
        let line = |s: &mut String, label: &str, m: &SamplingMetrics| {
            let per: Vec<String> = m
                .kept_by_policy
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            let _ = writeln!(
                s,
                "  sampling    {label}{} of {} traces kept ({:.1}%): {}",
                m.traces_kept,
                m.traces_seen,
                100.0 * m.traces_kept as f64 / m.traces_seen.max(1) as f64,
                if per.is_empty() {
                    "none".to_owned()
                } else {
                    per.join(", ")
                }
            );
        };
        if self.samplers.len() > 1 {
            for (name, m) in &self.samplers {
                line(&mut s, &format!("`{name}`: "), m);
            }
        } else if let Some(m) = &self.sampling {
            line(&mut s, "", m);
        }
        if !self.services.is_empty() {
            let _ = writeln!(
                s,
                "  services    {} metric intervals closed{}; busiest services (entry spans):",
                self.metric_intervals,
                if self.folded_series > 0 {
                    format!(
                        ", {} series folded by the cardinality limit",
                        self.folded_series
                    )
                } else {
                    String::new()
                }
            );
            let _ = writeln!(
                s,
                "    {:<26} {:>9} {:>8} {:>10} {:>10}",
                "service", "requests", "errors", "p50", "p99"
            );
            let ms =
                |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |x| format!("{:.1}ms", x * 1e3));
            for svc in self.services.iter().take(10) {
                let _ = writeln!(
                    s,
                    "    {:<26} {:>9} {:>7.2}% {:>10} {:>10}",
                    svc.service,
                    svc.requests,
                    100.0 * svc.errors as f64 / svc.requests.max(1) as f64,
                    ms(svc.p50_seconds),
                    ms(svc.p99_seconds)
                );
            }
        }
        for (name, windows) in &self.rollup_windows {
            let _ = writeln!(
                s,
                "  rollup      `{name}`: query ran on {windows} closed window{}, {} rows",
                if *windows == 1 { "" } else { "s" },
                self.rows(name)
            );
        }
        for (name, m) in &self.alerts {
            let (fired, with) = (m.fired(), m.fired_with_trace());
            let share = if fired == 0 {
                "-".to_owned()
            } else {
                format!("{:.0}%", 100.0 * with as f64 / fired as f64)
            };
            let _ = writeln!(
                s,
                "  alerts      `{name}`: {fired} fired, {with} with a kept trace ({share}), {} resolved",
                m.rules.iter().map(|r| r.resolved).sum::<u64>()
            );
            for r in &m.rules {
                let _ = writeln!(
                    s,
                    "    {:<26} {:>4} fired {:>4} with a trace {:>4} resolved",
                    r.name, r.fired, r.fired_with_trace, r.resolved
                );
            }
        }
        for (_, r) in &self.source_reports {
            let _ = writeln!(s, "  {:<11} {r}", r.label());
        }
        if !self.outputs.is_empty() {
            let _ = writeln!(s, "  outputs");
            let width = self
                .outputs
                .iter()
                .map(|o| o.table.len())
                .max()
                .unwrap_or(0)
                .max(14);
            for o in &self.outputs {
                let _ = write!(
                    s,
                    "    {:<width$} {:>10} rows  {}",
                    o.table,
                    o.rows,
                    o.path.display()
                );
                let _ = if o.undelivered > 0 {
                    writeln!(s, "  ({} not delivered)", o.undelivered)
                } else {
                    writeln!(s)
                };
            }
        }
        s
    }
}

/// What the process has used so far, from one `getrusage`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// CPU seconds, user + system.
    pub cpu_seconds: f64,
    /// Minor and major page faults.
    pub page_faults: u64,
    /// Peak resident set size, bytes.
    pub peak_rss_bytes: u64,
}

impl Usage {
    /// The process's usage now (all zero if the kernel refuses).
    pub fn now() -> Self {
        // SAFETY: getrusage writes into the zeroed struct we pass and has no other effects.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
        if rc != 0 {
            return Usage::default();
        }
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        Usage {
            cpu_seconds: tv(ru.ru_utime) + tv(ru.ru_stime),
            page_faults: ru.ru_minflt.max(0) as u64 + ru.ru_majflt.max(0) as u64,
            // Linux reports kilobytes.
            peak_rss_bytes: (ru.ru_maxrss.max(0) as u64) * 1024,
        }
    }
}

/// A spinner with spans, traces and buffered spans; when the sources know how many
/// records they will read (a bounded Kafka run, a replay), a bar over those records
/// with its ETA, and with `until` (unix ms) the watermark's way to that event time.
pub(crate) fn progress_bar(progress: Arc<Progress>, until: Option<i64>) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let b = bar.clone();
    std::thread::spawn(move || {
        let mut sized = false;
        while !b.is_finished() {
            let spans = progress.spans.load(Ordering::Relaxed);
            let traces = progress.traces_closed.load(Ordering::Relaxed);
            let buffered = progress.buffered_spans.load(Ordering::Relaxed);
            let expected = progress.records_expected.load(Ordering::Relaxed);
            let elapsed = b.elapsed().as_secs_f64().max(1e-3);
            if expected > 0 && !sized {
                sized = true;
                b.set_length(expected);
                b.set_style(
                    ProgressStyle::with_template(
                        "{elapsed_precise} [{wide_bar}] {human_pos}/{human_len} records, \
                         ETA {eta}\n{msg}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
            }
            if sized {
                b.set_position(progress.records.load(Ordering::Relaxed).min(expected));
            }
            let at = |ns: u64| {
                humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_nanos(ns))
            };
            let event_time = match (progress.watermark.load(Ordering::Relaxed), until) {
                (0, _) => String::new(),
                (wm, Some(ms)) => format!(
                    ", event time {} of {}",
                    at(wm),
                    at(u64::try_from(ms).unwrap_or(0).saturating_mul(1_000_000))
                ),
                (wm, None) => format!(", event time {}", at(wm)),
            };
            b.set_message(format!(
                "{spans} spans ({:.0}/s), {traces} traces closed, {buffered} spans \
                 buffered{event_time}",
                spans as f64 / elapsed
            ));
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    bar
}
