//! The merge side of the metric operators as an [`Operator`]: the runtime runs one
//! instance per `red_metrics` or `service_graph` node, feeds it every shard's
//! partials and the minimum of the shards' watermarks, and it emits the intervals that
//! closed on each of its output ports.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{Buckets, ClosedInterval, Metric, MetricsMerger, quantile_from_buckets};
use crate::EventTime;
use crate::operator::{
    Batch, Emitter, IntervalBatch, Operator, OperatorError, Report, Share, decode_state,
    encode_state,
};

/// Requests, errors and the latency histogram of one service's entry spans
/// (`service_server` series) over the run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceTotals {
    /// Entry spans.
    pub requests: u64,
    /// Failed entry spans.
    pub errors: u64,
    /// Non-cumulative bucket counts.
    pub counts: Vec<u64>,
}

/// What a metric operator reports.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricsReport {
    /// Intervals closed.
    pub intervals: u64,
    /// Series folded into overflow series by the cardinality limit.
    pub folded_series: u64,
    /// Observations that arrived for an interval already closed.
    pub late_observations: u64,
    /// Totals per service (`red_metrics` only), by service name.
    pub services: BTreeMap<String, ServiceTotals>,
    /// Bucket upper bounds in seconds, for quantiles of `services`.
    pub bounds_seconds: Vec<f64>,
}

impl MetricsReport {
    /// Adds another instance's counters (the partials of other shards).
    pub fn merge(&mut self, o: &MetricsReport) {
        self.intervals += o.intervals;
        self.folded_series += o.folded_series;
        self.late_observations += o.late_observations;
        for (name, t) in &o.services {
            let acc = self.services.entry(name.clone()).or_default();
            add_totals(acc, t.requests, t.errors, &t.counts);
        }
        if self.bounds_seconds.is_empty() {
            self.bounds_seconds.clone_from(&o.bounds_seconds);
        }
    }

    /// The `q`-quantile of a service's entry-span latency, seconds.
    pub fn service_quantile(&self, service: &str, q: f64) -> Option<f64> {
        let t = self.services.get(service)?;
        quantile_from_buckets(&self.bounds_seconds, &t.counts, q)
    }
}

fn add_totals(acc: &mut ServiceTotals, requests: u64, errors: u64, counts: &[u64]) {
    acc.requests += requests;
    acc.errors += errors;
    if acc.counts.len() < counts.len() {
        acc.counts.resize(counts.len(), 0);
    }
    for (x, y) in acc.counts.iter_mut().zip(counts) {
        *x += y;
    }
}

/// State of a [`MetricsMerge`] in a snapshot.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct MergeState {
    merger: MetricsMerger,
    report: MetricsReport,
}

/// The merge stage of a metric operator.
#[derive(Debug)]
pub struct MetricsMerge {
    merger: MetricsMerger,
    buckets: Arc<Buckets>,
    /// Output ports, each emitting every closed interval.
    ports: usize,
    /// Keep per-service totals of `service_server` series (for the run summary).
    service_totals: bool,
    report: MetricsReport,
}

impl MetricsMerge {
    /// A merge stage around `merger` (its interval, cardinality limit and whether it
    /// keeps only sampled traces' exemplars), emitting each closed interval, with
    /// `buckets`, on each of `ports` output ports; `service_totals` keeps per-service
    /// totals for the run summary (`red_metrics`).
    pub fn new(
        merger: MetricsMerger,
        buckets: Buckets,
        ports: usize,
        service_totals: bool,
    ) -> Self {
        let bounds_seconds = buckets.bounds_seconds();
        MetricsMerge {
            merger,
            buckets: Arc::new(buckets),
            ports,
            service_totals,
            report: MetricsReport {
                bounds_seconds,
                ..MetricsReport::default()
            },
        }
    }

    /// The histogram buckets of the intervals it emits.
    pub fn buckets(&self) -> &Arc<Buckets> {
        &self.buckets
    }

    fn count(&mut self, ci: &ClosedInterval) {
        self.report.intervals += 1;
        if !self.service_totals {
            return;
        }
        for (k, a) in &ci.series {
            if k.metric == Metric::ServiceServer {
                let acc = self
                    .report
                    .services
                    .entry(k.service.as_str().to_owned())
                    .or_default();
                add_totals(acc, a.requests, a.errors, &a.counts);
            }
        }
    }
}

impl Operator for MetricsMerge {
    fn process(
        &mut self,
        input: usize,
        batch: Batch,
        _out: &mut Emitter,
    ) -> Result<(), OperatorError> {
        match batch {
            Batch::Partials(parts) => {
                for p in parts {
                    self.merger.add(p);
                }
                Ok(())
            }
            other => Err(OperatorError::unexpected("metrics merge", input, &other)),
        }
    }

    fn on_watermark(
        &mut self,
        watermark: EventTime,
        out: &mut Emitter,
    ) -> Result<EventTime, OperatorError> {
        // The runtime passes the minimum over the shards: one logical input.
        let closed = self.merger.on_watermark(0, watermark);
        if closed.is_empty() {
            return Ok(watermark);
        }
        let mut intervals = Vec::with_capacity(closed.len());
        for ci in closed {
            self.count(&ci);
            intervals.push(Arc::new(ci));
        }
        let batch = IntervalBatch {
            buckets: self.buckets.clone(),
            intervals,
            max_series: self.merger.max_series(),
        };
        for port in 0..self.ports {
            out.emit(port, Batch::Intervals(batch.clone()));
        }
        Ok(watermark)
    }

    fn snapshot(&self) -> Result<Vec<u8>, OperatorError> {
        encode_state(&MergeState {
            merger: self.merger.clone(),
            report: self.report.clone(),
        })
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), OperatorError> {
        let s: MergeState = decode_state(state)?;
        self.merger = s.merger;
        self.report = s.report;
        Ok(())
    }

    /// The merge side belongs to no trace: the states marked unkeyed are added up.
    fn restore_share(&mut self, states: &[(&[u8], Share)]) -> Result<(), OperatorError> {
        let mut first = true;
        for (bytes, share) in states {
            if !share.takes_unkeyed() {
                continue;
            }
            let s: MergeState = decode_state(bytes)?;
            if first {
                self.merger = s.merger;
                self.report = s.report;
                first = false;
            } else {
                self.merger.absorb(s.merger);
                self.report.merge(&s.report);
            }
        }
        Ok(())
    }

    fn report(&self) -> Report {
        Report::Metrics(MetricsReport {
            folded_series: self.merger.folded_series,
            late_observations: self.merger.late_observations,
            ..self.report.clone()
        })
    }
}
