//! A shard: the operator chain for the traces whose id hashes to it
//! ([span_filter] -> session_window -> [red_metrics] [service_graph]) and the table rows
//! it produces.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use spanflow_operators::Span;
use spanflow_operators::WATERMARK_END;
use spanflow_operators::metrics::Partial;
use spanflow_operators::red_metrics::RedMetrics;
use spanflow_operators::service_graph::ServiceGraph;
use spanflow_operators::session_window::{SessionMetrics, SessionOutput, SessionWindow};
use spanflow_operators::span_filter::{SpanFilter, SpanFilterMetrics};
use spanflow_operators::span_index::SpanIndex;
use spanflow_operators::tail_sampling::{SamplingMetrics, TailSampler};
use tokio::sync::mpsc;

use super::metrics::{MergeMsg, MetricOp};
use super::{Plan, Progress, RunError, TableTarget};
use crate::connectors::TableWriter;
use crate::tables::{SpanRows, TableRows, TraceRows};

/// Messages from the router.
pub(crate) enum ShardMsg {
    Spans(Vec<Span>),
    Watermark(u64),
    End,
    /// Stop without flushing: hand the open state to a savepoint.
    Savepoint,
}

/// A shard's state in a savepoint.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct ShardSnapshot {
    pub window: spanflow_operators::session_window::SessionWindowState,
    pub sampler: Option<spanflow_operators::tail_sampling::TailSamplerState>,
    pub forwarded: u64,
}

/// What a shard reports when it finishes.
pub(crate) struct ShardResult {
    pub metrics: SessionMetrics,
    pub filter: Option<SpanFilterMetrics>,
    pub sampling: Option<SamplingMetrics>,
    pub outputs: Vec<(TableTarget, u64)>,
    /// (spans, bytes) buffered at the moment the shard held the most spans.
    pub peak_buffered: (usize, usize),
    pub late_metric_observations: u64,
    /// Set when the shard stopped for a savepoint.
    pub snapshot: Option<ShardSnapshot>,
}

/// One output stream: its rows and where they go.
pub(crate) struct Port<R> {
    pub rows: R,
    writers: Vec<(TableTarget, TableWriter)>,
    flush_rows: usize,
    /// Some sink reads this stream (in a benchmark the rows are built but not written).
    pub active: bool,
}

impl<R: TableRows> Port<R> {
    pub fn new(
        rows: R,
        targets: &[TableTarget],
        part: usize,
        discard: bool,
    ) -> Result<Self, RunError> {
        let mut writers = Vec::new();
        // Small batches keep the builders' buffers in cache and reused; the Parquet
        // writer still forms row groups of `row_group_rows`.
        let mut flush_rows = 1024;
        if !discard {
            for t in targets {
                flush_rows = flush_rows.min(t.config.row_group_rows.max(1));
                writers.push((t.clone(), TableWriter::create(t, part, rows.schema())?));
            }
        }
        Ok(Port {
            rows,
            writers,
            flush_rows,
            active: !targets.is_empty(),
        })
    }

    pub fn maybe_flush(&mut self, force: bool) -> Result<(), RunError> {
        if self.rows.is_empty() || (!force && self.rows.len() < self.flush_rows) {
            return Ok(());
        }
        let batch = self.rows.finish();
        for (_, w) in &mut self.writers {
            w.write(&batch)?;
        }
        Ok(())
    }

    pub fn close(mut self, outputs: &mut Vec<(TableTarget, u64)>) -> Result<(), RunError> {
        self.maybe_flush(true)?;
        for (t, w) in self.writers {
            outputs.push((t, w.close()?));
        }
        Ok(())
    }
}

pub(crate) struct Shard {
    index: usize,
    filter: Option<SpanFilter>,
    window: SessionWindow,
    sampler: Option<TailSampler>,
    red: Option<RedMetrics>,
    graph: Option<ServiceGraph>,
    /// Parent links of the trace being handed to `red` and `graph`, built once for both.
    span_index: SpanIndex,
    merge_tx: Option<mpsc::Sender<MergeMsg>>,
    forwarded: u64,
    out: SessionOutput,
    traces: Port<TraceRows>,
    late: Port<SpanRows>,
    spans: Port<SpanRows>,
    progress: Arc<Progress>,
    peak_buffered: (usize, usize),
}

impl Shard {
    pub fn new(
        index: usize,
        plan: &Plan,
        discard: bool,
        progress: Arc<Progress>,
        merge_tx: Option<mpsc::Sender<MergeMsg>>,
        restore: Option<ShardSnapshot>,
    ) -> Result<Self, RunError> {
        let sw = &plan.session_window;
        let shards = plan.shards.max(1);
        // With a sampler, `<session>.traces` and `<sampler>.traces` carry the same rows,
        // marked with the decision.
        let mut trace_targets = plan.targets_of(sw, "traces").to_vec();
        let mut span_targets = Vec::new();
        if let Some((name, _)) = &plan.tail_sampling {
            trace_targets.extend_from_slice(plan.targets_of(name, "traces"));
            span_targets.extend_from_slice(plan.targets_of(name, "spans"));
        }
        let (window, sampler, forwarded) = match restore {
            Some(snap) => (
                SessionWindow::with_state(plan.session_config.clone(), snap.window),
                match (&plan.tail_sampling, snap.sampler) {
                    (Some((_, c)), Some(state)) => {
                        Some(TailSampler::with_state_sharded(c.clone(), shards, state))
                    }
                    (Some((_, c)), None) => Some(TailSampler::new_sharded(c.clone(), shards)),
                    (None, _) => None,
                },
                snap.forwarded,
            ),
            None => (
                SessionWindow::new(plan.session_config.clone()),
                plan.tail_sampling
                    .as_ref()
                    .map(|(_, c)| TailSampler::new_sharded(c.clone(), shards)),
                0,
            ),
        };
        Ok(Shard {
            index,
            filter: plan.span_filter.as_ref().map(|(_, c)| SpanFilter::new(c)),
            window,
            sampler,
            red: plan
                .red_metrics
                .as_ref()
                .map(|(_, c)| RedMetrics::new(c.clone())),
            graph: plan
                .service_graph
                .as_ref()
                .map(|(_, c)| ServiceGraph::new(c.clone())),
            span_index: SpanIndex::default(),
            merge_tx,
            forwarded,
            out: SessionOutput::default(),
            traces: Port::new(TraceRows::default(), &trace_targets, index, discard)?,
            spans: Port::new(SpanRows::spans(), &span_targets, index, discard)?,
            late: Port::new(
                SpanRows::late(),
                plan.targets_of(sw, "late_spans"),
                index,
                discard,
            )?,
            progress,
            peak_buffered: (0, 0),
        })
    }

    pub async fn run(mut self, mut rx: mpsc::Receiver<ShardMsg>) -> Result<ShardResult, RunError> {
        let mut snapshot = None;
        while let Some(msg) = rx.recv().await {
            let before = self.window.buffered_spans();
            let end = match msg {
                ShardMsg::Spans(mut spans) => {
                    if let Some(f) = &mut self.filter {
                        f.apply(&mut spans);
                    }
                    self.window.process(spans, &mut self.out);
                    let after = self.window.buffered_spans();
                    if after > self.peak_buffered.0 {
                        self.peak_buffered = (after, self.window.buffered_bytes());
                    }
                    false
                }
                ShardMsg::Watermark(wm) => {
                    self.window.on_watermark(wm, &mut self.out);
                    false
                }
                ShardMsg::End => {
                    self.window.on_watermark(WATERMARK_END, &mut self.out);
                    true
                }
                ShardMsg::Savepoint => {
                    self.drain()?;
                    self.hand_over_partials().await;
                    snapshot = Some(ShardSnapshot {
                        window: self.window.snapshot().clone(),
                        sampler: self.sampler.as_ref().map(|s| s.snapshot().clone()),
                        forwarded: self.forwarded,
                    });
                    break;
                }
            };
            let after = self.window.buffered_spans();
            self.progress
                .buffered_spans
                .fetch_add(after as u64, Ordering::Relaxed);
            self.progress
                .buffered_spans
                .fetch_sub(before as u64, Ordering::Relaxed);
            self.drain()?;
            self.forward_watermark(end).await;
            if end {
                break;
            }
        }
        let mut outputs = Vec::new();
        self.traces.close(&mut outputs)?;
        self.late.close(&mut outputs)?;
        self.spans.close(&mut outputs)?;
        let late_metric_observations = self.red.as_ref().map_or(0, |r| r.late_observations());
        Ok(ShardResult {
            metrics: self.window.metrics().clone(),
            filter: self.filter.as_ref().map(|f| f.metrics().clone()),
            sampling: self.sampler.as_ref().map(|s| s.metrics().clone()),
            outputs,
            peak_buffered: self.peak_buffered,
            late_metric_observations,
            snapshot,
        })
    }

    /// For a savepoint: every metric partial goes to the merge task (which keeps the
    /// intervals open in its own state), without advancing this shard's watermark.
    async fn hand_over_partials(&mut self) {
        self.send_partials(WATERMARK_END).await;
    }

    /// Hands complete metric intervals to the merge task when the window's (held-back)
    /// watermark advanced.
    async fn forward_watermark(&mut self, end: bool) {
        if self.merge_tx.is_none() {
            return;
        }
        let wm = if end {
            WATERMARK_END
        } else {
            self.window.output_watermark()
        };
        if wm <= self.forwarded && !end {
            return;
        }
        self.forwarded = wm;
        self.send_partials(wm).await;
        if let Some(tx) = &self.merge_tx {
            let _ = tx
                .send(MergeMsg::Watermark {
                    shard: self.index,
                    watermark: wm,
                })
                .await;
        }
    }

    /// Sends the metric operators' partials of the intervals that end by `until`.
    async fn send_partials(&mut self, until: u64) {
        let Some(tx) = &self.merge_tx else { return };
        let mut parts: Vec<Partial> = Vec::new();
        if let Some(r) = &mut self.red {
            r.flush(until, &mut parts);
            if !parts.is_empty() {
                let _ = tx
                    .send(MergeMsg::Partials {
                        op: MetricOp::Red,
                        parts: std::mem::take(&mut parts),
                    })
                    .await;
            }
        }
        if let Some(g) = &mut self.graph {
            g.flush(until, &mut parts);
            if !parts.is_empty() {
                let _ = tx
                    .send(MergeMsg::Partials {
                        op: MetricOp::Graph,
                        parts,
                    })
                    .await;
            }
        }
    }

    fn drain(&mut self) -> Result<(), RunError> {
        if self.out.is_empty() {
            return Ok(());
        }
        self.progress
            .traces_closed
            .fetch_add(self.out.closed.len() as u64, Ordering::Relaxed);
        for t in self.out.closed.drain(..) {
            let decision = self.sampler.as_mut().map(|s| s.decide(&t));
            let kept = decision.as_ref().is_none_or(|d| d.sampled);
            // Both metric operators follow parent links: index the trace once for both.
            if self.red.is_some() || self.graph.is_some() {
                self.span_index.build(&t.spans);
            }
            if let Some(r) = &mut self.red {
                r.add_indexed_trace(&t, &self.span_index, kept);
            }
            if let Some(g) = &mut self.graph {
                g.add_indexed_trace(&t, &self.span_index, kept);
            }
            if self.traces.active {
                self.traces.rows.push(&t, decision.as_ref());
            }
            if kept && decision.is_some() && self.spans.active {
                for s in &t.spans {
                    self.spans.rows.push(s);
                }
            }
        }
        for l in self.out.late.drain(..) {
            if self.late.active {
                self.late.rows.push_late(&l);
            }
        }
        self.traces.maybe_flush(false)?;
        self.late.maybe_flush(false)?;
        self.spans.maybe_flush(false)?;
        Ok(())
    }
}
