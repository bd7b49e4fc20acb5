//! A shard: every shard-scoped node of the plan (and the partial side of every merged
//! node), run over the traces whose id hashes to this shard, and the table rows they
//! produce.
//!
//! The shard executes the graph in topological order. A batch from the router goes to
//! the nodes that read its source; what a node emits goes, in emission order, to the
//! nodes and sinks that read that port (the batch is shared by pointer where several
//! read it), and partials of merged nodes to the global stage. A watermark passes the
//! nodes in topological order: each one's input watermark is the minimum of what its
//! inputs forwarded, so a node has received every batch its upstream emitted before it
//! sees the watermark that follows them.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};
use spanflow_operators::metrics::{Buckets, ClosedInterval, render_openmetrics};
use spanflow_operators::operator::{Batch, Buffered, Emitter, Operator, Report, Share, Table};
use spanflow_operators::session_window::SessionWindow;
use spanflow_operators::{Span, WATERMARK_END};
use tokio::sync::mpsc;

use super::checkpoint::{FeedbackLog, Part, Pending, log_entry};
use super::io::{ConnectorError, TableWriter};
use super::plan::{Input, NodeBuild, Plan};
use super::{Progress, RunError, SavepointError, SinkError, TableTarget};
use crate::tables::{
    AlertRows, BatchRows, ExemplarRows, MetricRows, SpanRows, TableRows, TraceRows,
};

/// Messages from the router.
pub(crate) enum ShardMsg {
    /// Spans of source `source` (index into the plan's sources).
    Spans {
        source: usize,
        spans: Vec<Span>,
    },
    Watermark(u64),
    End,
    /// Everything before it belongs to checkpoint `id`. After the `last` one (a stop
    /// with a checkpoint directory) the shard stops without flushing.
    Barrier {
        id: u64,
        last: bool,
    },
}

/// Messages from shards to the global stage. A shard sends a node's partials before
/// the watermark that completed them, and one channel keeps that order.
pub(crate) enum GlobalMsg {
    Batch {
        node: usize,
        batch: Batch,
    },
    Watermark {
        shard: usize,
        node: usize,
        watermark: u64,
    },
    /// Everything one step of shard `shard` produced, in order: one message, one
    /// wake-up of the global stage and one watermark pass there.
    Step {
        shard: usize,
        msgs: Vec<GlobalMsg>,
    },
    /// Shard `shard` passed checkpoint `id`'s barrier: what follows belongs to the
    /// next checkpoint.
    Barrier {
        shard: usize,
        id: u64,
        last: bool,
    },
}

/// One node instance's state in a savepoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct NodeSnapshot {
    pub node: String,
    /// As one byte string: a plain `Vec<u8>` is a CBOR array of numbers, about twice
    /// the size.
    #[serde(with = "serde_bytes")]
    pub state: Vec<u8>,
    /// The node's input and forwarded watermarks.
    pub watermarks: (u64, u64),
}

/// A node instance's state as a checkpoint took it, to encode off the processing
/// thread (straight into the checkpoint's file).
pub(crate) struct DeferredNode {
    pub node: String,
    pub state: spanflow_operators::operator::DeferredState,
    /// The node's input and forwarded watermarks.
    pub watermarks: (u64, u64),
}

impl DeferredNode {
    /// Encodes the state into `w`; returns its length.
    pub fn write_to(self, w: &mut dyn std::io::Write) -> Result<u64, RunError> {
        self.state
            .write_to(w)
            .map_err(|e| node_error(&self.node, e))
    }
}

/// What a shard reports when it finishes.
pub(crate) struct ShardResult {
    /// Per plan node that runs in shards: its report.
    pub reports: Vec<(usize, Report)>,
    pub outputs: Vec<(TableTarget, u64)>,
    /// (spans, bytes) buffered at the moment the shard held the most spans.
    pub peak_buffered: (usize, usize),
}

/// One output stream: its rows and where they go.
pub(crate) struct Port<R> {
    pub rows: R,
    writers: Vec<(TableTarget, Box<dyn TableWriter>)>,
    flush_rows: usize,
}

impl<R: TableRows> Port<R> {
    pub fn new(
        rows: R,
        targets: &[TableTarget],
        part: usize,
        discard: bool,
    ) -> Result<Self, RunError> {
        let mut writers = Vec::new();
        let mut flush_rows = 1024;
        if !discard {
            for t in targets {
                flush_rows = flush_rows.min(t.out.batch_rows().max(1));
                writers.push((t.clone(), super::open_writer(t, part, rows.schema())?));
            }
        }
        Ok(Port {
            rows,
            writers,
            flush_rows,
        })
    }

    pub fn maybe_flush(&mut self, force: bool) -> Result<(), RunError> {
        if self.rows.is_empty() || (!force && self.rows.len() < self.flush_rows) {
            return Ok(());
        }
        let batch = self.rows.finish();
        for (t, w) in &mut self.writers {
            w.write(&batch).map_err(|e| SinkError::of(t, e))?;
            t.rows_written
                .fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Writes the buffered rows and pre-commits every writer for a checkpoint.
    pub fn precommit(&mut self, pending: &mut Pending) -> Result<(), RunError> {
        self.maybe_flush(true)?;
        for (t, w) in &mut self.writers {
            if let Some(p) = w.precommit().map_err(|e| SinkError::of(t, e))? {
                pending.push((t.key(), p));
            }
        }
        Ok(())
    }

    pub fn close(mut self, outputs: &mut Vec<(TableTarget, u64)>) -> Result<(), RunError> {
        self.maybe_flush(true)?;
        for (t, w) in self.writers {
            let rows = w.close().map_err(|e| SinkError::of(&t, e))?;
            outputs.push((t, rows));
        }
        Ok(())
    }
}

/// Whether reports are due for publishing: at most once a second (watchers clone maps),
/// and always at the `last` one; notes the time when they are.
pub(crate) fn due(reported: &mut Option<std::time::Instant>, last: bool) -> bool {
    let now = std::time::Instant::now();
    if !last
        && reported.is_some_and(|at| now.duration_since(at) < std::time::Duration::from_secs(1))
    {
        return false;
    }
    *reported = Some(now);
    true
}

/// The rows of one output stream, by the kind of table it is written as.
pub(crate) enum TableSink {
    Traces(Port<TraceRows>),
    Spans(Port<SpanRows>),
    Late(Port<SpanRows>),
    Red(Port<MetricRows>, OpenMetricsText),
    Relation(Port<MetricRows>),
    Exemplars(Port<ExemplarRows>),
    Alerts(Port<AlertRows>),
    Rows(Port<BatchRows>),
}

impl TableSink {
    /// Opens the writers of `targets` (one stream, all of kind `kind`); `query` is the
    /// schema of a [`Table::Query`] stream.
    pub fn new(
        kind: Table,
        targets: &[TableTarget],
        part: usize,
        discard: bool,
        query: Option<(&str, arrow::datatypes::SchemaRef)>,
    ) -> Result<Self, RunError> {
        Ok(match kind {
            Table::Traces => {
                TableSink::Traces(Port::new(TraceRows::default(), targets, part, discard)?)
            }
            Table::Spans => TableSink::Spans(Port::new(SpanRows::spans(), targets, part, discard)?),
            Table::LateSpans => {
                TableSink::Late(Port::new(SpanRows::late(), targets, part, discard)?)
            }
            Table::RedMetrics => TableSink::Red(
                Port::new(MetricRows::red_metrics(), targets, part, discard)?,
                OpenMetricsText {
                    files: if discard {
                        Vec::new()
                    } else {
                        targets
                            .iter()
                            .filter_map(|t| Some((t.clone(), t.out.openmetrics_file()?)))
                            .collect()
                    },
                    last: None,
                },
            ),
            Table::ServiceRelation => TableSink::Relation(Port::new(
                MetricRows::service_relation(),
                targets,
                part,
                discard,
            )?),
            Table::Exemplars => {
                TableSink::Exemplars(Port::new(ExemplarRows::default(), targets, part, discard)?)
            }
            Table::Alerts => {
                TableSink::Alerts(Port::new(AlertRows::default(), targets, part, discard)?)
            }
            Table::Query => {
                let (name, schema) = query
                    .ok_or_else(|| RunError::Internal("a query table without a schema".into()))?;
                TableSink::Rows(Port::new(
                    BatchRows::new(name, schema),
                    targets,
                    part,
                    discard,
                )?)
            }
            Table::DeadLetters => {
                return Err(RunError::Internal(
                    "dead letters are written by the router, not by an operator".into(),
                ));
            }
        })
    }

    /// Buffers the rows of `batch` and writes full batches.
    pub fn write(&mut self, batch: &Batch) -> Result<(), RunError> {
        match (self, batch) {
            (TableSink::Traces(p), Batch::Traces(traces)) => {
                for t in traces {
                    p.rows.push(&t.trace, t.decision.as_ref());
                }
                p.maybe_flush(false)
            }
            (TableSink::Spans(p), Batch::Traces(traces)) => {
                p.rows.extend(
                    traces
                        .iter()
                        .filter(|t| t.kept())
                        .flat_map(|t| &t.trace.spans),
                );
                p.maybe_flush(false)
            }
            (TableSink::Spans(p), Batch::Spans(spans)) => {
                p.rows.extend(spans.iter());
                p.maybe_flush(false)
            }
            (TableSink::Late(p), Batch::LateSpans(late)) => {
                for l in late {
                    p.rows.push_late(l);
                }
                p.maybe_flush(false)
            }
            (TableSink::Red(p, text), Batch::Intervals(b)) => {
                let bounds = b.buckets.bounds_seconds();
                for ci in &b.intervals {
                    p.rows.push_interval(ci, &bounds);
                }
                if let Some(ci) = b.intervals.last() {
                    text.last = Some((ci.clone(), b.buckets.clone()));
                }
                p.maybe_flush(false)
            }
            (TableSink::Relation(p), Batch::Intervals(b)) => {
                let bounds = b.buckets.bounds_seconds();
                for ci in &b.intervals {
                    p.rows.push_interval(ci, &bounds);
                }
                p.maybe_flush(false)
            }
            (TableSink::Exemplars(p), Batch::Intervals(b)) => {
                let bounds = b.buckets.bounds_seconds();
                for ci in &b.intervals {
                    p.rows.push_interval(ci, &bounds);
                }
                p.maybe_flush(false)
            }
            (TableSink::Alerts(p), Batch::Alerts(events)) => {
                for e in events {
                    p.rows.push(e);
                }
                // Alerts are few and wanted now: each interval's events are written (and
                // posted to Alertmanager) as they come, not once a batch fills.
                p.maybe_flush(true)
            }
            (TableSink::Rows(p), Batch::Other(any)) => {
                let Some(rb) = any.downcast_ref::<arrow::record_batch::RecordBatch>() else {
                    return Err(RunError::Internal("query rows of an unknown type".into()));
                };
                p.rows.push(rb.clone());
                p.maybe_flush(false)
            }
            (_, b) => Err(RunError::Internal(format!(
                "a table sink received {}",
                b.kind().as_str()
            ))),
        }
    }

    pub fn precommit(&mut self, pending: &mut Pending) -> Result<(), RunError> {
        match self {
            TableSink::Traces(p) => p.precommit(pending),
            TableSink::Spans(p) | TableSink::Late(p) => p.precommit(pending),
            TableSink::Red(p, _) | TableSink::Relation(p) => p.precommit(pending),
            TableSink::Exemplars(p) => p.precommit(pending),
            TableSink::Alerts(p) => p.precommit(pending),
            TableSink::Rows(p) => p.precommit(pending),
        }
    }

    pub fn close(self, outputs: &mut Vec<(TableTarget, u64)>) -> Result<(), RunError> {
        match self {
            TableSink::Traces(p) => p.close(outputs),
            TableSink::Spans(p) | TableSink::Late(p) => p.close(outputs),
            TableSink::Red(p, text) => {
                if let Some((ci, buckets)) = &text.last {
                    let body = render_openmetrics(ci, buckets, "spanflow_");
                    for (t, f) in &text.files {
                        std::fs::write(f, &body)
                            .map_err(|e| SinkError::of(t, ConnectorError::io(f, &e)))?;
                    }
                }
                p.close(outputs)
            }
            TableSink::Relation(p) => p.close(outputs),
            TableSink::Exemplars(p) => p.close(outputs),
            TableSink::Alerts(p) => p.close(outputs),
            TableSink::Rows(p) => p.close(outputs),
        }
    }
}

/// The latest closed interval of a `red_metrics` table, written as OpenMetrics text
/// (with exemplars) next to its Parquet parts when the run ends.
pub(crate) struct OpenMetricsText {
    files: Vec<(TableTarget, std::path::PathBuf)>,
    last: Option<(Arc<ClosedInterval>, Arc<Buckets>)>,
}

/// Where an emitted batch goes.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target {
    /// Input `input` of executor node `node`.
    Node { node: usize, input: usize },
    /// Table sink `i` of the executor.
    Table(usize),
    /// The global stage's instance of plan node `node`.
    Global { node: usize },
    /// Every shard's instance of plan node `node` (from the global stage).
    Broadcast { node: usize },
}

/// Where a node's input comes from, inside one executor.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Upstream {
    /// The router's spans of a source (their watermark is the router's).
    Source(usize),
    /// Another executor node.
    Node(usize),
    /// Every shard's partials of a merged node (the global stage aligns them).
    Shards,
}

/// One running node instance.
pub(crate) struct ExecNode {
    /// Index into the plan's nodes.
    pub plan_index: usize,
    pub name: String,
    pub kind: &'static str,
    pub op: Box<dyn Operator>,
    pub inputs: Vec<Upstream>,
    /// Per output port, who reads it.
    pub consumers: Vec<Vec<Target>>,
    pub emitter: Emitter,
    pub in_wm: u64,
    pub out_wm: u64,
    /// Partial side of a merged node: its forwarded watermark goes to the global stage.
    pub partial: bool,
    /// Shard side of a feedback node: its input watermark goes to the global stage
    /// (its forwarded one waits for the global stage's answers).
    pub feedback: bool,
    /// The last watermark sent to the global stage.
    pub sent_wm: u64,
    /// See [`NodeBuild::Merged`]'s `grain`.
    pub grain: u64,
}

impl ExecNode {
    /// An instance of plan node `pi`, neither partial nor feedback, watermarks at 0.
    pub fn new(
        plan: &Plan,
        pi: usize,
        op: Box<dyn Operator>,
        inputs: Vec<Upstream>,
        consumers: Vec<Vec<Target>>,
    ) -> Self {
        let pn = &plan.nodes[pi];
        ExecNode {
            plan_index: pi,
            name: pn.name.clone(),
            kind: pn.shape.kind,
            op,
            inputs,
            consumers,
            emitter: Emitter::default(),
            in_wm: 0,
            out_wm: 0,
            partial: false,
            feedback: false,
            sent_wm: 0,
            grain: 1,
        }
    }
}

/// The watermark a merge side whose windows end at multiples of `grain` acts on as it
/// would on `wm`: the last `k * grain - 1` at or before it (windows close when the
/// watermark reaches their end less one).
fn coarse(wm: u64, grain: u64) -> u64 {
    if wm == WATERMARK_END || grain <= 1 {
        return wm;
    }
    ((wm.saturating_add(1) / grain) * grain).saturating_sub(1)
}

/// Opens the table sinks of plan node `pi`'s output ports that sinks read (appended to
/// `tables`) and adds them to `consumers`, port by port.
pub(crate) fn table_consumers(
    plan: &Plan,
    pi: usize,
    part: usize,
    discard: bool,
    query: Option<&arrow::datatypes::SchemaRef>,
    tables: &mut Vec<TableSink>,
    consumers: &mut [Vec<Target>],
) -> Result<(), RunError> {
    let pn = &plan.nodes[pi];
    for (port, name) in pn.ports.iter().enumerate() {
        let targets = plan.targets_of(&pn.name, name);
        let kind = pn.shape.outputs.get(port).and_then(|p| p.table);
        let (Some(kind), Some(c)) = (kind, consumers.get_mut(port)) else {
            continue;
        };
        if targets.is_empty() {
            continue;
        }
        let q = query.map(|s| (pn.name.as_str(), s.clone()));
        tables.push(TableSink::new(
            kind,
            targets,
            plan.part_base + part,
            discard,
            q,
        )?);
        c.push(Target::Table(tables.len() - 1));
    }
    Ok(())
}

/// Runs nodes, routes what they emit and writes tables; shared by the shards and the
/// global stage.
pub(crate) struct Executor {
    pub nodes: Vec<ExecNode>,
    pub tables: Vec<TableSink>,
    queue: VecDeque<(usize, usize, Batch)>,
    /// Messages for the global stage, sent after each step (shards only).
    pub to_global: Vec<GlobalMsg>,
    /// Batches for every shard's instance of a plan node (global stage only).
    pub to_shards: Vec<(usize, Batch)>,
    /// Traces the session windows closed (progress bar).
    pub traces_closed: u64,
    /// Where metric nodes' closed intervals are added up for a live `/metrics`
    /// (global stage only, when the run is watched).
    pub live: Option<Arc<Progress>>,
}

impl Executor {
    /// An executor of `nodes` (topological order, consumers wired); each node's
    /// emitter skips the ports nobody reads.
    pub fn new(mut nodes: Vec<ExecNode>, tables: Vec<TableSink>) -> Self {
        for n in &mut nodes {
            n.emitter =
                Emitter::with_connected(n.consumers.iter().map(|c| !c.is_empty()).collect());
        }
        Executor {
            nodes,
            tables,
            queue: VecDeque::new(),
            to_global: Vec::new(),
            to_shards: Vec::new(),
            traces_closed: 0,
            live: None,
        }
    }

    /// Adds every metric node's closed intervals (port 0) to `live`'s watched series,
    /// whether or not a sink reads them.
    pub fn watch_metrics(&mut self, live: Arc<Progress>) {
        let metric_kinds = [
            spanflow_operators::red_metrics::RedMetrics::SHAPE.kind,
            spanflow_operators::service_graph::ServiceGraph::SHAPE.kind,
        ];
        for n in &mut self.nodes {
            if !metric_kinds.contains(&n.kind) {
                continue;
            }
            let mut connected: Vec<bool> = n.consumers.iter().map(|c| !c.is_empty()).collect();
            if let Some(first) = connected.first_mut() {
                *first = true;
            }
            n.emitter = Emitter::with_connected(connected);
        }
        self.live = Some(live);
    }

    /// Delivers a batch of the global stage to the instance of plan node `node` (its
    /// input after the others).
    pub fn feedback(&mut self, node: usize, batch: Batch) -> Result<(), RunError> {
        let Some(i) = self.nodes.iter().position(|n| n.plan_index == node) else {
            return Err(RunError::Internal(format!("no shard node for {node}")));
        };
        let input = self.nodes[i].inputs.len();
        self.deliver(i, input, batch)
    }

    /// Delivers `batch` to input `input` of node `node` and runs everything it causes.
    pub fn deliver(&mut self, node: usize, input: usize, batch: Batch) -> Result<(), RunError> {
        self.queue.push_back((node, input, batch));
        self.run_queue()
    }

    fn run_queue(&mut self) -> Result<(), RunError> {
        while let Some((node, input, batch)) = self.queue.pop_front() {
            let Some(n) = self.nodes.get_mut(node) else {
                return Err(RunError::Internal(format!("no node {node}")));
            };
            n.op.process(input, batch, &mut n.emitter)
                .map_err(|e| node_error(&n.name, e))?;
            self.route(node)?;
        }
        Ok(())
    }

    /// Hands what node `node` emitted to its consumers.
    fn route(&mut self, node: usize) -> Result<(), RunError> {
        let Executor {
            nodes,
            tables,
            queue,
            to_global,
            to_shards,
            traces_closed,
            live,
        } = self;
        let Some(ExecNode {
            name,
            kind,
            consumers,
            emitter,
            ..
        }) = nodes.get_mut(node)
        else {
            return Ok(());
        };
        if emitter.is_empty() {
            return Ok(());
        }
        for (port, consumers) in consumers.iter().enumerate() {
            // Nodes and the other stages get the batch by value (shared pointers
            // inside), the last of them without a copy; tables read it in place.
            let movers = consumers
                .iter()
                .filter(|t| !matches!(t, Target::Table(_)))
                .count();
            for batch in emitter.drain(port) {
                if port == 0
                    && let (Some(live), Batch::Intervals(b)) = (&live, &batch)
                {
                    live.add_intervals(name, b);
                }
                if port == 0 && *kind == SessionWindow::SHAPE.kind {
                    *traces_closed += batch.len() as u64;
                }
                let mut batch = Some(batch);
                let mut moved = 0;
                for t in consumers {
                    let b = match *t {
                        Target::Table(i) => {
                            if let (Some(sink), Some(b)) = (tables.get_mut(i), &batch) {
                                sink.write(b)?;
                            }
                            continue;
                        }
                        _ => {
                            moved += 1;
                            if moved == movers {
                                batch.take()
                            } else {
                                batch.clone()
                            }
                        }
                    };
                    let Some(b) = b else { continue };
                    match *t {
                        Target::Node { node, input } => queue.push_back((node, input, b)),
                        Target::Global { node } => {
                            to_global.push(GlobalMsg::Batch { node, batch: b })
                        }
                        Target::Broadcast { node } => to_shards.push((node, b)),
                        Target::Table(_) => {}
                    }
                }
            }
        }
        Ok(())
    }

    /// Passes watermarks through the nodes in topological order: `source_wm` for
    /// inputs from the router, `shards_wm(node)` for the global stage's merged inputs.
    /// Returns, per plan node, the watermark to send to the global stage when it
    /// advanced (a partial's forwarded one, a feedback node's input one).
    pub fn advance(
        &mut self,
        source_wm: u64,
        shards_wm: &dyn Fn(usize) -> u64,
    ) -> Result<Vec<(usize, u64)>, RunError> {
        let mut advanced = Vec::new();
        for i in 0..self.nodes.len() {
            let input = self.nodes[i]
                .inputs
                .iter()
                .map(|u| match *u {
                    Upstream::Source(_) => source_wm,
                    Upstream::Node(j) => self.nodes.get(j).map_or(0, |n| n.out_wm),
                    Upstream::Shards => shards_wm(self.nodes[i].plan_index),
                })
                .min()
                .unwrap_or(source_wm);
            let n = &mut self.nodes[i];
            // The same watermark again lets an operator forward more (a trace closed by
            // a cap released its hold); an older one is never delivered.
            if input < n.in_wm {
                continue;
            }
            n.in_wm = input;
            let f =
                n.op.on_watermark(input, &mut n.emitter)
                    .map_err(|e| node_error(&n.name, e))?;
            self.route(i)?;
            self.run_queue()?;
            let n = &mut self.nodes[i];
            let f = f.min(input);
            if f > n.out_wm {
                n.out_wm = f;
            }
            // A feedback node's merge side decides about windows of the times traces
            // closed: once the shard has run source watermark W through its session
            // windows, every trace that closes before W was offered (before this
            // message, on the same channel).
            let send = if n.feedback {
                source_wm
            } else if n.partial {
                n.out_wm
            } else {
                0
            };
            let send = coarse(send, n.grain);
            if (n.partial || n.feedback) && send > n.sent_wm {
                n.sent_wm = send;
                advanced.push((n.plan_index, send));
            }
        }
        Ok(advanced)
    }

    /// Ends the input: `on_end` on every node, in order.
    pub fn end(&mut self) -> Result<(), RunError> {
        for i in 0..self.nodes.len() {
            let n = &mut self.nodes[i];
            n.op.on_end(&mut n.emitter)
                .map_err(|e| node_error(&n.name, e))?;
            self.route(i)?;
            self.run_queue()?;
        }
        Ok(())
    }

    /// Every node's state, copied now and encoded later ([`DeferredNode::encode`]).
    pub fn snapshot(&self) -> Result<Vec<DeferredNode>, RunError> {
        self.nodes
            .iter()
            .map(|n| {
                Ok(DeferredNode {
                    node: n.name.clone(),
                    state: n
                        .op
                        .snapshot_deferred()
                        .map_err(|e| node_error(&n.name, e))?,
                    watermarks: (n.in_wm, n.out_wm),
                })
            })
            .collect()
    }

    /// Restores every node from a snapshot of the same plan.
    pub fn restore(&mut self, states: Vec<NodeSnapshot>) -> Result<(), RunError> {
        for s in states {
            let Some(n) = self.nodes.iter_mut().find(|n| n.name == s.node) else {
                return Err(RunError::Savepoint(SavepointError::Refused(format!(
                    "it holds state of `{}`, which this job does not have",
                    s.node
                ))));
            };
            n.op.restore(&s.state).map_err(|e| {
                RunError::Savepoint(SavepointError::Refused(format!("`{}`: {e}", s.node)))
            })?;
            (n.in_wm, n.out_wm) = s.watermarks;
        }
        Ok(())
    }

    /// Restores every node's share, as instance `index` of `count`, of the snapshots of
    /// all saved shards (`all[i]` = a saved shard's node states and the part of them
    /// taken).
    pub fn restore_share(
        &mut self,
        all: &[(Vec<NodeSnapshot>, Taken)],
        index: usize,
        count: usize,
    ) -> Result<(), RunError> {
        let refused = |msg: String| RunError::Savepoint(SavepointError::Refused(msg));
        for (s, _) in all.iter().flat_map(|(s, t)| s.iter().map(move |s| (s, t))) {
            if !self.nodes.iter().any(|n| n.name == s.node) {
                return Err(refused(format!(
                    "it holds state of `{}`, which this job does not have",
                    s.node
                )));
            }
        }
        for n in &mut self.nodes {
            let mine: Vec<(&NodeSnapshot, &Taken)> = all
                .iter()
                .flat_map(|(s, t)| s.iter().map(move |s| (s, t)))
                .filter(|(s, _)| s.node == n.name)
                .collect();
            if mine.is_empty() {
                continue;
            }
            let states: Vec<(&[u8], Share)> = mine
                .iter()
                .map(|(s, t)| (s.state.as_slice(), t.share(index, count)))
                .collect();
            n.op.restore_share(&states)
                .map_err(|e| refused(format!("`{}`: {e}", n.name)))?;
            let mine: Vec<&NodeSnapshot> = mine.into_iter().map(|(s, _)| s).collect();
            // Every shard saw the same input watermark at the barrier; what they
            // forwarded differs by what each held back, and the new instance may hold
            // back any of it.
            n.in_wm = mine.iter().map(|s| s.watermarks.0).min().unwrap_or(0);
            n.out_wm = mine.iter().map(|s| s.watermarks.1).min().unwrap_or(0);
        }
        Ok(())
    }

    /// Pre-commits every table's writers for a checkpoint.
    pub fn precommit(&mut self) -> Result<Pending, RunError> {
        let mut pending = Vec::new();
        for t in &mut self.tables {
            t.precommit(&mut pending)?;
        }
        Ok(pending)
    }

    pub fn buffered(&self) -> Buffered {
        let mut b = Buffered::default();
        for n in &self.nodes {
            let x = n.op.buffered();
            b.spans += x.spans;
            b.bytes += x.bytes;
            b.open_traces += x.open_traces;
        }
        b
    }

    pub fn reports(&self) -> Vec<(usize, Report)> {
        self.nodes
            .iter()
            .map(|n| (n.plan_index, n.op.report()))
            .collect()
    }

    pub fn close(self, outputs: &mut Vec<(TableTarget, u64)>) -> Result<(), RunError> {
        for t in self.tables {
            t.close(outputs)?;
        }
        Ok(())
    }
}

/// Moves this shard's share of a gauge summed over shards from `was` to `now`; adds
/// before subtracting, so the sum never wraps below zero.
fn move_gauge(gauge: &std::sync::atomic::AtomicU64, was: usize, now: usize) {
    gauge.fetch_add(now as u64, Ordering::Relaxed);
    gauge.fetch_sub(was as u64, Ordering::Relaxed);
}

pub(crate) fn node_error(node: &str, e: spanflow_operators::OperatorError) -> RunError {
    match e {
        spanflow_operators::OperatorError::State(m) => {
            RunError::Savepoint(SavepointError::Refused(format!("operator `{node}`: {m}")))
        }
        spanflow_operators::OperatorError::Internal(m) => {
            RunError::Internal(format!("operator `{node}`: {m}"))
        }
        spanflow_operators::OperatorError::Execution(message) => RunError::Rollup {
            name: node.to_owned(),
            message,
        },
    }
}

/// Builds shard `index`'s executor: the plan's shard nodes (partials for merged ones)
/// and the tables they write.
pub(crate) fn shard_executor(
    plan: &Plan,
    index: usize,
    discard: bool,
) -> Result<Executor, RunError> {
    let mut exec_of_plan: Vec<Option<usize>> = vec![None; plan.nodes.len()];
    let mut nodes: Vec<ExecNode> = Vec::new();
    let mut tables: Vec<TableSink> = Vec::new();
    for (pi, pn) in plan.nodes.iter().enumerate() {
        let (op, partial, feedback, grain) = match &pn.build {
            NodeBuild::Shard(b) => (b(plan.shards), false, false, 1),
            NodeBuild::Merged { partial, grain, .. } => (partial(plan.shards), true, false, *grain),
            NodeBuild::Feedback { partial, grain, .. } => {
                (partial(plan.shards), false, true, *grain)
            }
            NodeBuild::Rollup(_) | NodeBuild::Global(_) => continue,
        };
        let mut inputs = Vec::with_capacity(pn.inputs.len());
        for (k, input) in pn.inputs.iter().enumerate() {
            match *input {
                Input::Source(s) => inputs.push(Upstream::Source(s)),
                Input::Node { node, port } => {
                    let Some(up) = exec_of_plan[node] else {
                        return Err(RunError::Internal(format!(
                            "`{}` reads a node outside the shards",
                            pn.name
                        )));
                    };
                    inputs.push(Upstream::Node(up));
                    let me = nodes.len();
                    nodes[up].consumers[port].push(Target::Node { node: me, input: k });
                }
            }
        }
        let ports = if partial {
            1
        } else {
            pn.ports.len() + usize::from(feedback)
        };
        let mut consumers: Vec<Vec<Target>> = vec![Vec::new(); ports];
        if feedback && let Some(last) = consumers.last_mut() {
            last.push(Target::Global { node: pi });
        }
        if partial {
            consumers[0].push(Target::Global { node: pi });
        } else {
            table_consumers(plan, pi, index, discard, None, &mut tables, &mut consumers)?;
        }
        exec_of_plan[pi] = Some(nodes.len());
        nodes.push(ExecNode {
            partial,
            feedback,
            grain,
            ..ExecNode::new(plan, pi, op, inputs, consumers)
        });
    }
    Ok(Executor::new(nodes, tables))
}

/// The source inputs of the shard executor: for each source, the (node, input) pairs
/// that read its spans.
fn source_readers(exec: &Executor, sources: usize) -> Vec<Vec<(usize, usize)>> {
    let mut readers = vec![Vec::new(); sources];
    for (i, n) in exec.nodes.iter().enumerate() {
        for (k, u) in n.inputs.iter().enumerate() {
            if let Upstream::Source(s) = *u
                && let Some(r) = readers.get_mut(s)
            {
                r.push((i, k));
            }
        }
    }
    readers
}

/// What the global stage sends every shard.
pub(crate) enum Feedback {
    /// A batch for the shard's instance of plan node `node`.
    Batch { node: usize, batch: Batch },
    /// The global stage took its snapshot of checkpoint `id`: feedback sent before
    /// this belongs to it.
    Marker(u64),
}

/// A checkpoint a shard has snapshotted and waits to send: the global stage's marker
/// ends the feedback it records.
struct Awaiting {
    id: u64,
    states: Vec<DeferredNode>,
    pending: Pending,
    feedback: FeedbackLog,
    stall: std::time::Duration,
}

pub(crate) struct Shard {
    index: usize,
    exec: Executor,
    readers: Vec<Vec<(usize, usize)>>,
    global_tx: Option<mpsc::Sender<GlobalMsg>>,
    feedback_rx: Option<mpsc::UnboundedReceiver<Feedback>>,
    parts: mpsc::UnboundedSender<Part>,
    progress: Arc<Progress>,
    peak_buffered: (usize, usize),
    /// What this shard last added to the run's live buffered figures.
    published: Buffered,
    /// When its reports were last published.
    reported: Option<std::time::Instant>,
    source_wm: u64,
}

/// How shard `index` starts.
/// What a shard of a restored run starts from.
pub(crate) enum ShardRestore {
    /// Its node states and recorded feedback: the checkpoint's run had as many shards.
    Own(Vec<NodeSnapshot>, FeedbackLog),
    /// Every saved shard's node states with the part of them this run takes (of
    /// which each shard takes the traces it owns now), and every shard's recorded
    /// feedback: the checkpoint's run had another number of shards, or several
    /// checkpoints are combined.
    Share(Arc<Vec<(Vec<NodeSnapshot>, Taken)>>, FeedbackLog),
}

/// The part of a saved stage's states a restored run takes: the traces of some input
/// partitions (all when `origins` is `None`), and the state of no trace if `unkeyed`.
#[derive(Debug, Clone)]
pub(crate) struct Taken {
    pub origins: Option<Arc<std::collections::BTreeSet<u16>>>,
    pub unkeyed: bool,
}

impl Default for Taken {
    fn default() -> Self {
        Taken {
            origins: None,
            unkeyed: true,
        }
    }
}

impl Taken {
    /// All of it.
    pub fn is_whole(&self) -> bool {
        self.origins.is_none() && self.unkeyed
    }

    /// Instance `index` of `count`'s share of it.
    pub fn share(&self, index: usize, count: usize) -> Share {
        Share {
            origins: self.origins.clone(),
            unkeyed: self.unkeyed,
            ..Share::new(index, count)
        }
    }
}

pub(crate) struct ShardInit {
    pub index: usize,
    pub discard: bool,
    pub progress: Arc<Progress>,
    pub global_tx: Option<mpsc::Sender<GlobalMsg>>,
    pub feedback_rx: Option<mpsc::UnboundedReceiver<Feedback>>,
    pub parts: mpsc::UnboundedSender<Part>,
    /// What a restored checkpoint holds for this shard.
    pub restore: Option<ShardRestore>,
    pub resumed_watermark: u64,
}

impl Shard {
    pub fn new(plan: &Plan, init: ShardInit) -> Result<Self, RunError> {
        let ShardInit {
            index,
            discard,
            progress,
            global_tx,
            feedback_rx,
            parts,
            restore,
            resumed_watermark,
        } = init;
        let mut exec = shard_executor(plan, index, discard)?;
        if let Some(restore) = restore {
            let feedback = match restore {
                ShardRestore::Own(states, feedback) => {
                    exec.restore(states)?;
                    feedback
                }
                ShardRestore::Share(all, feedback) => {
                    exec.restore_share(&all, index, plan.shards.max(1))?;
                    feedback
                }
            };
            // What the global stage had sent, and the checkpoint recorded, arrives
            // again.
            for (node, verdicts) in feedback {
                exec.feedback(node, Batch::RateVerdicts(verdicts))?;
            }
        }
        let readers = source_readers(&exec, plan.sources.len());
        Ok(Shard {
            index,
            exec,
            readers,
            global_tx,
            feedback_rx,
            parts,
            progress,
            peak_buffered: (0, 0),
            published: Buffered::default(),
            reported: None,
            source_wm: resumed_watermark,
        })
    }

    /// Publishes the operators' reports for watchers of the run, at most once a second
    /// (they clone maps), and at the end.
    fn publish_reports(&mut self, last: bool) {
        if !due(&mut self.reported, last) {
            return;
        }
        let Ok(mut r) = self.progress.reports.lock() else {
            return;
        };
        for n in &self.exec.nodes {
            r.insert((self.index, n.name.clone()), n.op.report());
        }
    }

    pub async fn run(mut self, mut rx: mpsc::Receiver<ShardMsg>) -> Result<ShardResult, RunError> {
        let mut ended = false;
        // Set after the last barrier: the shard only waits for the global stage's
        // marker, then stops without flushing.
        let mut stopping = false;
        // Checkpoints snapshotted whose marker has not come yet, oldest first.
        let mut awaiting: VecDeque<Awaiting> = VecDeque::new();
        let mut feedback_rx = self.feedback_rx.take();
        loop {
            // Answers of the global stage first: they release held traces.
            let msg = tokio::select! {
                biased;
                f = async {
                    match feedback_rx.as_mut() {
                        Some(r) => r.recv().await,
                        None => std::future::pending().await,
                    }
                } => match f {
                    Some(f) => Err(f),
                    None => {
                        feedback_rx = None;
                        if !awaiting.is_empty() || ended {
                            return Err(RunError::Internal(
                                "the global stage ended before it answered".into(),
                            ));
                        }
                        continue;
                    }
                },
                m = rx.recv(), if !ended && !stopping => match m {
                    Some(m) => Ok(m),
                    None => break,
                },
            };
            let closed_before = self.exec.traces_closed;
            match msg {
                Err(Feedback::Batch { node, batch }) => {
                    if !awaiting.is_empty() {
                        let entry = log_entry(node, &batch)?;
                        for a in &mut awaiting {
                            a.feedback.push(entry.clone());
                        }
                    }
                    if stopping {
                        // Past the last snapshot: a restored run does this work.
                        continue;
                    }
                    self.exec.feedback(node, batch)?;
                }
                Err(Feedback::Marker(id)) => {
                    if awaiting.front().is_some_and(|a| a.id == id) {
                        self.send_part(awaiting.pop_front());
                        if stopping && awaiting.is_empty() {
                            break;
                        }
                    }
                    continue;
                }
                Ok(ShardMsg::Spans { source, spans }) => {
                    let readers = self.readers.get(source).map_or(&[][..], Vec::as_slice);
                    let mut batch = Some(Batch::Spans(spans));
                    for (k, (node, input)) in readers.iter().enumerate() {
                        let b = if k + 1 == readers.len() {
                            batch.take()
                        } else {
                            batch.clone()
                        };
                        if let Some(b) = b {
                            self.exec.deliver(*node, *input, b)?;
                        }
                    }
                    let b = self.exec.buffered();
                    if b.spans > self.peak_buffered.0 {
                        self.peak_buffered = (b.spans, b.bytes);
                    }
                }
                Ok(ShardMsg::Watermark(wm)) => {
                    self.source_wm = self.source_wm.max(wm);
                }
                Ok(ShardMsg::End) => {
                    self.source_wm = WATERMARK_END;
                    ended = true;
                }
                Ok(ShardMsg::Barrier { id, last }) => {
                    let t0 = std::time::Instant::now();
                    let states = self.exec.snapshot()?;
                    let pending = self.exec.precommit()?;
                    let a = Awaiting {
                        id,
                        states,
                        pending,
                        feedback: Vec::new(),
                        stall: t0.elapsed(),
                    };
                    stopping = last;
                    self.send_global(true).await;
                    if let Some(tx) = &self.global_tx {
                        let _ = tx
                            .send(GlobalMsg::Barrier {
                                shard: self.index,
                                id,
                                last,
                            })
                            .await;
                    }
                    // With feedback, the share waits for the global stage's marker.
                    if feedback_rx.is_some() {
                        awaiting.push_back(a);
                    } else {
                        self.send_part(Some(a));
                    }
                    if stopping && awaiting.is_empty() {
                        break;
                    }
                    continue;
                }
            }
            // After spans too: a trace closed by a cap may have released the hold.
            let advanced = self.exec.advance(self.source_wm, &|_| 0)?;
            for (node, watermark) in advanced {
                self.exec.to_global.push(GlobalMsg::Watermark {
                    shard: self.index,
                    node,
                    watermark,
                });
            }
            // The input ended and every node forwarded it (none waits for the global
            // stage's answers any more).
            let done = ended && self.exec.nodes.iter().all(|n| n.out_wm == WATERMARK_END);
            if done {
                self.exec.end()?;
            }
            self.send_global(done).await;
            self.publish_reports(done);
            let now = self.exec.buffered();
            let was = std::mem::replace(&mut self.published, now);
            move_gauge(&self.progress.buffered_spans, was.spans, now.spans);
            move_gauge(&self.progress.open_traces, was.open_traces, now.open_traces);
            self.progress
                .traces_closed
                .fetch_add(self.exec.traces_closed - closed_before, Ordering::Relaxed);
            if done {
                if !awaiting.is_empty() {
                    // A checkpoint's share still waits for the global stage's marker.
                    stopping = true;
                    continue;
                }
                break;
            }
        }
        let reports = self.exec.reports();
        let mut outputs = Vec::new();
        self.exec.close(&mut outputs)?;
        Ok(ShardResult {
            reports,
            outputs,
            peak_buffered: self.peak_buffered,
        })
    }

    fn send_part(&self, a: Option<Awaiting>) {
        if let Some(a) = a {
            let _ = self.parts.send(Part::Shard {
                id: a.id,
                shard: self.index,
                states: a.states,
                pending: a.pending,
                feedback: a.feedback,
                stall: a.stall,
            });
        }
    }

    /// Sends what the nodes have for the global stage. Batches alone wait for the next
    /// watermark (the merge sides act only on watermarks; waking the global stage per
    /// batch cost a context switch each), unless many are pending or `force`.
    async fn send_global(&mut self, force: bool) {
        let msgs = &self.exec.to_global;
        let due = force
            || msgs.len() >= 256
            || msgs
                .iter()
                .any(|m| matches!(m, GlobalMsg::Watermark { .. }));
        if !due || msgs.is_empty() {
            return;
        }
        let msgs = std::mem::take(&mut self.exec.to_global);
        if let Some(tx) = &self.global_tx {
            let _ = tx
                .send(GlobalMsg::Step {
                    shard: self.index,
                    msgs,
                })
                .await;
        }
    }
}
