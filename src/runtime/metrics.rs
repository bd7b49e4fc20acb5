//! The metric merge task: combines the shards' per-interval partials of `red_metrics`
//! and `service_graph`, closes intervals when every shard's watermark has passed them,
//! and writes `red_metrics`, `exemplars` and `service_relation` rows.

use std::collections::BTreeMap;

use serde::Serialize;
use spanflow_operators::metrics::{
    Buckets, ClosedInterval, Metric, MetricsMerger, Partial, quantile_from_buckets,
    render_openmetrics,
};
use tokio::sync::mpsc;

use super::rollup::{Bounds, RollupSide, RollupState};
use super::shard::Port;
use super::{RunError, TableTarget};
use crate::tables::{ExemplarRows, MetricRows};

/// Which metric operator a partial belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MetricOp {
    Red,
    Graph,
}

/// Messages from shards to the merge task. A shard sends its partials before the
/// watermark that completed them, and one channel keeps that order.
pub(crate) enum MergeMsg {
    Partials { op: MetricOp, parts: Vec<Partial> },
    Watermark { shard: usize, watermark: u64 },
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

/// What the merge task reports.
#[derive(Debug, Default)]
pub(crate) struct MergeResult {
    pub outputs: Vec<(TableTarget, u64)>,
    pub services: Vec<ServiceSummary>,
    pub intervals: u64,
    pub folded_series: u64,
    pub late_observations: u64,
    /// The mergers' final state: intervals still open when the run stopped for a
    /// savepoint.
    pub red_merger: Option<MetricsMerger>,
    pub graph_merger: Option<MetricsMerger>,
    /// Rollups' open windows, by rollup name.
    pub rollups: Vec<(String, RollupState)>,
    /// Windows each rollup ran its query on, by rollup name.
    pub rollup_windows: Vec<(String, u64)>,
}

pub(crate) struct RedSide {
    pub merger: MetricsMerger,
    pub buckets: Buckets,
    pub rows: Port<MetricRows>,
    pub exemplars: Port<ExemplarRows>,
    /// Where to write the OpenMetrics text of the last closed interval.
    pub openmetrics_dirs: Vec<std::path::PathBuf>,
}

pub(crate) struct GraphSide {
    pub merger: MetricsMerger,
    pub buckets: Buckets,
    pub rows: Port<MetricRows>,
}

#[derive(Default)]
struct ServiceAcc {
    requests: u64,
    errors: u64,
    counts: Vec<u64>,
}

pub(crate) async fn run_merger(
    mut rx: mpsc::Receiver<MergeMsg>,
    mut red: Option<RedSide>,
    mut graph: Option<GraphSide>,
    mut rollups: Vec<RollupSide>,
    shards: usize,
) -> Result<MergeResult, RunError> {
    let mut result = MergeResult::default();
    // The same minimum the mergers close intervals at, for the rollups' windows.
    let mut shard_watermarks = vec![0u64; shards.max(1)];
    let red_bounds = red
        .as_ref()
        .map(|r| r.buckets.bounds_seconds())
        .unwrap_or_default();
    let graph_bounds = graph
        .as_ref()
        .map(|g| g.buckets.bounds_seconds())
        .unwrap_or_default();
    let mut per_service: BTreeMap<String, ServiceAcc> = BTreeMap::new();
    let mut last_red: Option<ClosedInterval> = None;
    while let Some(msg) = rx.recv().await {
        match msg {
            MergeMsg::Partials {
                op: MetricOp::Red,
                parts,
            } => {
                if let Some(r) = &mut red {
                    parts.into_iter().for_each(|p| r.merger.add(p));
                }
            }
            MergeMsg::Partials {
                op: MetricOp::Graph,
                parts,
            } => {
                if let Some(g) = &mut graph {
                    parts.into_iter().for_each(|p| g.merger.add(p));
                }
            }
            MergeMsg::Watermark { shard, watermark } => {
                if let Some(r) = &mut red {
                    let bounds = r.buckets.bounds_seconds();
                    for ci in r.merger.on_watermark(shard, watermark) {
                        result.intervals += 1;
                        for (k, a) in &ci.series {
                            if k.metric == Metric::ServiceServer {
                                let acc = per_service
                                    .entry(k.service.as_str().to_owned())
                                    .or_default();
                                acc.requests += a.requests;
                                acc.errors += a.errors;
                                if acc.counts.len() < a.counts.len() {
                                    acc.counts.resize(a.counts.len(), 0);
                                }
                                for (x, y) in acc.counts.iter_mut().zip(&a.counts) {
                                    *x += y;
                                }
                            }
                        }
                        r.rows.rows.push_interval(&ci, &bounds);
                        r.exemplars.rows.push_interval(&ci, &bounds);
                        r.rows.maybe_flush(false)?;
                        r.exemplars.maybe_flush(false)?;
                        for ru in &mut rollups {
                            ru.add(MetricOp::Red, &ci);
                        }
                        last_red = Some(ci);
                    }
                }
                if let Some(g) = &mut graph {
                    let bounds = g.buckets.bounds_seconds();
                    for ci in g.merger.on_watermark(shard, watermark) {
                        g.rows.rows.push_interval(&ci, &bounds);
                        g.rows.maybe_flush(false)?;
                        for ru in &mut rollups {
                            ru.add(MetricOp::Graph, &ci);
                        }
                    }
                }
                if !rollups.is_empty() {
                    if let Some(w) = shard_watermarks.get_mut(shard) {
                        *w = (*w).max(watermark);
                    }
                    let min = shard_watermarks.iter().copied().min().unwrap_or(0);
                    let bounds = Bounds {
                        red: &red_bounds,
                        graph: &graph_bounds,
                    };
                    for ru in &mut rollups {
                        ru.on_watermark(min, &bounds).await?;
                    }
                }
            }
        }
    }
    if let Some(r) = red {
        result.folded_series += r.merger.folded_series;
        result.late_observations += r.merger.late_observations;
        let bounds = r.buckets.bounds_seconds();
        if let Some(ci) = &last_red {
            let text = render_openmetrics(ci, &r.buckets, "spanflow_");
            for dir in &r.openmetrics_dirs {
                let path = dir.join("red_metrics.openmetrics.txt");
                std::fs::write(&path, &text)
                    .map_err(|e| crate::connectors::SinkError::io(&path, e))?;
            }
        }
        r.rows.close(&mut result.outputs)?;
        r.exemplars.close(&mut result.outputs)?;
        let mut services: Vec<ServiceSummary> = per_service
            .into_iter()
            .map(|(service, acc)| ServiceSummary {
                service,
                requests: acc.requests,
                errors: acc.errors,
                p50_seconds: quantile_from_buckets(&bounds, &acc.counts, 0.5),
                p99_seconds: quantile_from_buckets(&bounds, &acc.counts, 0.99),
            })
            .collect();
        services.sort_by(|a, b| {
            b.requests
                .cmp(&a.requests)
                .then_with(|| a.service.cmp(&b.service))
        });
        result.services = services;
        result.red_merger = Some(r.merger);
    }
    for ru in rollups {
        result
            .rollup_windows
            .push((ru.name.clone(), ru.windows_run));
        let name = ru.name.clone();
        let state = ru.close(&mut result.outputs)?;
        result.rollups.push((name, state));
    }
    if let Some(g) = graph {
        result.folded_series += g.merger.folded_series;
        result.late_observations += g.merger.late_observations;
        g.rows.close(&mut result.outputs)?;
        result.graph_merger = Some(g.merger);
    }
    Ok(result)
}
