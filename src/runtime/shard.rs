//! A shard: one `session_window` instance and the table rows it produces.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use spanflow_operators::Span;
use spanflow_operators::session_window::{SessionMetrics, SessionOutput, SessionWindow};
use tokio::sync::mpsc;

use super::{Plan, Progress, RunError, TableTarget};
use crate::connectors::parquet::ParquetTableWriter;
use crate::tables::{SpanRows, TableRows, TraceRows};

/// Messages from the router.
pub(crate) enum ShardMsg {
    Spans(Vec<Span>),
    Watermark(u64),
    End,
}

/// What a shard reports when it finishes.
pub(crate) struct ShardResult {
    pub metrics: SessionMetrics,
    pub outputs: Vec<(TableTarget, u64)>,
    /// (spans, bytes) buffered at the moment the shard held the most spans.
    pub peak_buffered: (usize, usize),
}

/// One output port: its rows and where they go.
struct Port<R> {
    rows: R,
    writers: Vec<(TableTarget, ParquetTableWriter)>,
    flush_rows: usize,
}

impl<R: TableRows> Port<R> {
    fn new(rows: R, targets: &[TableTarget], part: usize, discard: bool) -> Result<Self, RunError> {
        let mut writers = Vec::new();
        let mut flush_rows = 64 * 1024;
        if !discard {
            for t in targets {
                flush_rows = flush_rows.min(t.config.row_group_rows.max(1));
                writers.push((
                    t.clone(),
                    ParquetTableWriter::create(&t.dir, &t.table, part, rows.schema(), &t.config)?,
                ));
            }
        }
        Ok(Port {
            rows,
            writers,
            flush_rows,
        })
    }

    fn maybe_flush(&mut self, force: bool) -> Result<(), RunError> {
        if self.rows.is_empty() || (!force && self.rows.len() < self.flush_rows) {
            return Ok(());
        }
        let batch = self.rows.finish();
        for (_, w) in &mut self.writers {
            w.write(&batch)?;
        }
        Ok(())
    }

    fn close(mut self, outputs: &mut Vec<(TableTarget, u64)>) -> Result<(), RunError> {
        self.maybe_flush(true)?;
        for (t, w) in self.writers {
            outputs.push((t, w.close()?));
        }
        Ok(())
    }
}

pub(crate) struct Shard {
    window: SessionWindow,
    out: SessionOutput,
    traces: Port<TraceRows>,
    late: Port<SpanRows>,
    progress: Arc<Progress>,
    peak_buffered: (usize, usize),
}

impl Shard {
    pub fn new(
        index: usize,
        plan: &Plan,
        discard: bool,
        progress: Arc<Progress>,
    ) -> Result<Self, RunError> {
        Ok(Shard {
            window: SessionWindow::new(plan.session_config.clone()),
            out: SessionOutput::default(),
            traces: Port::new(TraceRows::default(), &plan.traces, index, discard)?,
            late: Port::new(SpanRows::late(), &plan.late_spans, index, discard)?,
            progress,
            peak_buffered: (0, 0),
        })
    }

    pub async fn run(mut self, mut rx: mpsc::Receiver<ShardMsg>) -> Result<ShardResult, RunError> {
        while let Some(msg) = rx.recv().await {
            match msg {
                ShardMsg::Spans(spans) => {
                    let before = self.window.buffered_spans();
                    self.window.process(spans, &mut self.out);
                    let after = self.window.buffered_spans();
                    if after > self.peak_buffered.0 {
                        self.peak_buffered = (after, self.window.buffered_bytes());
                    }
                    self.progress
                        .buffered_spans
                        .fetch_add(after as u64, Ordering::Relaxed);
                    self.progress
                        .buffered_spans
                        .fetch_sub(before as u64, Ordering::Relaxed);
                }
                ShardMsg::Watermark(wm) => {
                    let before = self.window.buffered_spans();
                    self.window.on_watermark(wm, &mut self.out);
                    let after = self.window.buffered_spans();
                    self.progress
                        .buffered_spans
                        .fetch_add(after as u64, Ordering::Relaxed);
                    self.progress
                        .buffered_spans
                        .fetch_sub(before as u64, Ordering::Relaxed);
                }
                ShardMsg::End => {
                    let before = self.window.buffered_spans();
                    self.window
                        .on_watermark(spanflow_operators::WATERMARK_END, &mut self.out);
                    self.progress
                        .buffered_spans
                        .fetch_sub(before as u64, Ordering::Relaxed);
                    self.drain()?;
                    break;
                }
            }
            self.drain()?;
        }
        let mut outputs = Vec::new();
        self.traces.close(&mut outputs)?;
        self.late.close(&mut outputs)?;
        Ok(ShardResult {
            metrics: self.window.metrics().clone(),
            outputs,
            peak_buffered: self.peak_buffered,
        })
    }

    fn drain(&mut self) -> Result<(), RunError> {
        if self.out.is_empty() {
            return Ok(());
        }
        self.progress
            .traces_closed
            .fetch_add(self.out.closed.len() as u64, Ordering::Relaxed);
        for t in self.out.closed.drain(..) {
            self.traces.rows.push(&t);
        }
        for l in self.out.late.drain(..) {
            self.late.rows.push_late(&l);
        }
        self.traces.maybe_flush(false)?;
        self.late.maybe_flush(false)?;
        Ok(())
    }
}
