//! Prometheus-style cumulative series (counters since the run started) built from the
//! closed intervals of a metric operator, for a live `/metrics` endpoint.
//!
//! Intervals are deltas; a scraper wants totals that only grow. Each series adds every
//! interval's counts; its exemplar per bucket is the newest one whose trace was kept,
//! so a link from a dashboard opens a trace that exists. The operator's cardinality
//! limit holds over the whole run: series beyond it are added to the metric's overflow
//! series.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::{
    Buckets, ClosedInterval, Exemplar, Metric, SeriesAgg, SeriesKey, format_float, labels,
};

/// Totals of one metric operator's series since the run started.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Cumulative {
    bounds: Vec<f64>,
    max_series: usize,
    series: BTreeMap<SeriesKey, SeriesAgg>,
    /// Intervals added.
    pub intervals: u64,
    /// Times a series beyond the limit was added to its overflow series.
    pub folded: u64,
}

impl Cumulative {
    /// Empty, for an operator with these buckets and cardinality limit.
    pub fn new(buckets: &Buckets, max_series: usize) -> Self {
        Cumulative {
            bounds: buckets.bounds_seconds(),
            max_series: max_series.max(1),
            series: BTreeMap::new(),
            intervals: 0,
            folded: 0,
        }
    }

    /// Series held.
    pub fn len(&self) -> usize {
        self.series.len()
    }

    /// No series yet.
    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    /// Every series and its totals, by key.
    pub fn series(&self) -> impl Iterator<Item = (&SeriesKey, &SeriesAgg)> {
        self.series.iter()
    }

    /// The histograms' bucket bounds in seconds (`+Inf` implicit).
    pub fn bounds(&self) -> &[f64] {
        &self.bounds
    }

    /// Adds a closed interval's series.
    pub fn add(&mut self, interval: &ClosedInterval) {
        self.intervals += 1;
        let n = self.bounds.len() + 1;
        for (key, agg) in &interval.series {
            let key = if self.series.contains_key(key) || self.series.len() < self.max_series {
                *key
            } else {
                self.folded += 1;
                SeriesKey::overflow(key.metric)
            };
            let total = self.series.entry(key).or_insert_with(|| SeriesAgg::new(n));
            add(total, agg);
        }
    }

    /// Appends the series' sample lines to `families` (family name -> lines), every
    /// sample labelled with `prefix_labels` (e.g. `job="a"`) first. Histograms are
    /// `<prefix><metric>_duration_seconds` with exemplars when `exemplars`;
    /// `<prefix><metric>_errors_total` counts failed calls.
    pub fn render(
        &self,
        prefix: &str,
        prefix_labels: &str,
        exemplars: bool,
        families: &mut BTreeMap<String, Family>,
    ) {
        for (key, agg) in &self.series {
            let mut l = String::from(prefix_labels);
            let mut own = String::new();
            labels(key, &mut own);
            if !own.is_empty() {
                if !l.is_empty() {
                    l.push(',');
                }
                l.push_str(&own);
            }
            let sep = if l.is_empty() { "" } else { "," };
            let name = format!("{prefix}{}_duration_seconds", key.metric.name());
            let f = families.entry(name.clone()).or_insert_with(|| Family {
                kind: FamilyKind::Histogram,
                help: help(key.metric),
                lines: String::new(),
            });
            let mut cum = 0u64;
            for (i, c) in agg.counts.iter().enumerate() {
                cum += c;
                let le = self
                    .bounds
                    .get(i)
                    .map_or_else(|| "+Inf".to_owned(), |b| format_float(*b));
                let _ = write!(f.lines, "{name}_bucket{{{l}{sep}le=\"{le}\"}} {cum}");
                if exemplars && let Some(Some(e)) = agg.exemplars.get(i) {
                    let _ = write!(
                        f.lines,
                        " # {{trace_id=\"{}\",span_id=\"{}\"}} {} {}",
                        e.trace_id,
                        e.span_id,
                        format_float(e.value_ns as f64 / 1e9),
                        format_float(e.timestamp_ns as f64 / 1e9)
                    );
                }
                f.lines.push('\n');
            }
            let braces = if l.is_empty() {
                String::new()
            } else {
                format!("{{{l}}}")
            };
            let _ = writeln!(f.lines, "{name}_count{braces} {}", agg.requests);
            let _ = writeln!(
                f.lines,
                "{name}_sum{braces} {}",
                format_float(agg.sum_ns as f64 / 1e9)
            );
            // `_error` series count failed calls only: their errors are their count.
            if key.metric.name().ends_with("_error") {
                continue;
            }
            let errors = format!("{prefix}{}_errors_total", key.metric.name());
            let f = families.entry(errors.clone()).or_insert_with(|| Family {
                kind: FamilyKind::Counter,
                help: format!("Failed calls counted in {name}."),
                lines: String::new(),
            });
            let _ = writeln!(f.lines, "{errors}{braces} {}", agg.errors);
        }
    }
}

/// The kind of a metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FamilyKind {
    /// A histogram in seconds.
    Histogram,
    /// A counter (samples named `<family>_total`).
    Counter,
}

/// One family's help text and sample lines.
#[derive(Debug, Clone)]
pub struct Family {
    /// Its kind.
    pub kind: FamilyKind,
    /// `# HELP` text.
    pub help: String,
    /// Sample lines, each ending with a newline.
    pub lines: String,
}

fn help(metric: Metric) -> String {
    format!(
        "Duration of {} calls since the job started, with exemplars of kept traces.",
        metric.name().replace('_', " ")
    )
}

/// Adds `delta` to `total`: counts, sums, extremes; a bucket's exemplar becomes the
/// delta's when that one's trace was kept (the newest kept trace is the one most
/// likely to still be stored).
fn add(total: &mut SeriesAgg, delta: &SeriesAgg) {
    total.add_counts(delta);
    for (a, b) in total.exemplars.iter_mut().zip(&delta.exemplars) {
        if let Some(e) = b.filter(|e: &Exemplar| e.sampled) {
            *a = Some(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{SpanId, TraceId};

    fn interval(start: u64, series: Vec<(SeriesKey, SeriesAgg)>) -> ClosedInterval {
        ClosedInterval {
            start_ns: start,
            end_ns: start + 10,
            series,
            folded_series: 0,
        }
    }

    fn agg(counts: &[u64], exemplar: Option<(u8, bool)>) -> SeriesAgg {
        let mut a = SeriesAgg::new(counts.len());
        a.counts = counts.to_vec();
        a.requests = counts.iter().sum();
        a.errors = 1;
        a.sum_ns = 1_000_000_000;
        if let Some((id, sampled)) = exemplar {
            a.exemplars[0] = Some(Exemplar {
                trace_id: TraceId([id; 16]),
                span_id: SpanId([id; 8]),
                value_ns: 1_000,
                timestamp_ns: 2_000_000_000,
                error: false,
                sampled,
            });
        }
        a
    }

    #[test]
    fn totals_add_up_and_exemplars_point_at_the_newest_kept_trace() {
        let buckets = Buckets::new(&[crate::HumanDuration(std::time::Duration::from_millis(1))]);
        let mut c = Cumulative::new(&buckets, 10);
        let k = SeriesKey::new(Metric::ServiceServer);
        c.add(&interval(0, vec![(k, agg(&[1, 2], Some((1, true))))]));
        c.add(&interval(10, vec![(k, agg(&[3, 0], Some((2, false))))]));
        let mut f = BTreeMap::new();
        c.render("x_", "job=\"j\"", true, &mut f);
        let h = &f["x_service_server_duration_seconds"].lines;
        assert!(
            h.contains("x_service_server_duration_seconds_bucket{job=\"j\",le=\"0.001\"} 4 # {trace_id=\"01010101010101010101010101010101\""),
            "{h}"
        );
        assert!(h.contains("le=\"+Inf\"} 6\n"), "{h}");
        assert!(
            h.contains("x_service_server_duration_seconds_count{job=\"j\"} 6\n"),
            "{h}"
        );
        assert!(
            h.contains("x_service_server_duration_seconds_sum{job=\"j\"} 2.0\n"),
            "{h}"
        );
        assert_eq!(
            f["x_service_server_errors_total"].lines,
            "x_service_server_errors_total{job=\"j\"} 2\n"
        );
        let mut plain = BTreeMap::new();
        c.render("x_", "", false, &mut plain);
        assert!(
            !plain["x_service_server_duration_seconds"]
                .lines
                .contains('#')
        );
    }

    #[test]
    fn series_beyond_the_limit_over_the_run_go_to_the_overflow_series() {
        let buckets = Buckets::new(&[crate::HumanDuration(std::time::Duration::from_millis(1))]);
        let mut c = Cumulative::new(&buckets, 1);
        let mut a = SeriesKey::new(Metric::ServiceServer);
        a.service = crate::Sym::new("a");
        let mut b = a;
        b.service = crate::Sym::new("b");
        c.add(&interval(0, vec![(a, agg(&[1, 0], None))]));
        c.add(&interval(10, vec![(b, agg(&[1, 0], None))]));
        c.add(&interval(20, vec![(a, agg(&[1, 0], None))]));
        assert_eq!((c.len(), c.folded), (2, 1));
        assert_eq!(c.series[&a].requests, 2);
        assert_eq!(
            c.series[&SeriesKey::overflow(Metric::ServiceServer)].requests,
            1
        );
    }
}
