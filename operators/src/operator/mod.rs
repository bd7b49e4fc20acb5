//! The operator frame: one trait every operator implements, the batches that flow on
//! its ports, and the declaration of its ports and their tables.
//!
//! In the spirit of Arroyo's `ArrowOperator` and Flink's `StreamOperator`: the runtime
//! hands an operator batches ([`Operator::process`]) and watermarks
//! ([`Operator::on_watermark`]), the operator emits batches to numbered output ports
//! through an [`Emitter`], and returns the watermark it forwards: its input watermark
//! held back to what it still buffers. Keyed routing, channels, sinks and checkpoint
//! storage belong to the runtime; an operator sees only its shard's keys and stays a
//! deterministic function of its inputs (no clock, no I/O), which is what lets
//! [`harness`] run it from a script.
//!
//! An operator that aggregates across shards (`red_metrics`, `service_graph`) is two
//! operators: a *partial* one in every shard that emits [`Batch::Partials`] on its one
//! port, and a *merge* one the runtime runs once, fed by every shard's partials, whose
//! input watermark is the minimum of the shards' (the runtime aligns them). Its
//! [`Shape::scope`] says so.
//!
//! Each operator kind declares its [`Shape`] once (`SessionWindow::SHAPE`, ...): the
//! data it reads, its output ports, what each carries and the table a sink writes from
//! it. The job loader, the planner and the sinks read these declarations.

pub mod harness;

use std::any::Any;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::EventTime;
use crate::metrics::{Buckets, ClosedInterval, Partial};
use crate::model::Span;
use crate::session_window::{ClosedTrace, LateSpan, SessionMetrics};
use crate::span_filter::SpanFilterMetrics;
use crate::tail_sampling::{Decision, SamplingMetrics};

/// What flows on a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataKind {
    /// [`Batch::Spans`].
    Spans,
    /// [`Batch::Traces`].
    Traces,
    /// [`Batch::LateSpans`].
    LateSpans,
    /// [`Batch::Partials`].
    Partials,
    /// [`Batch::Intervals`].
    Intervals,
    /// [`Batch::Other`]: rows the runtime produced itself (a rollup's query result).
    Rows,
    /// Records a source could not decode (the runtime's dead-letter rows).
    DeadLetters,
    /// [`Batch::RateOffers`].
    RateOffers,
    /// [`Batch::RateVerdicts`].
    RateVerdicts,
    /// [`Batch::Alerts`].
    Alerts,
}

impl DataKind {
    /// Name used in diagnostics.
    pub fn as_str(self) -> &'static str {
        match self {
            DataKind::Spans => "spans",
            DataKind::Traces => "traces",
            DataKind::LateSpans => "late spans",
            DataKind::Partials => "metric partials",
            DataKind::Intervals => "metric intervals",
            DataKind::Rows => "rollup rows",
            DataKind::DeadLetters => "dead letters",
            DataKind::RateOffers => "rate-limit offers",
            DataKind::RateVerdicts => "rate-limit verdicts",
            DataKind::Alerts => "alert events",
        }
    }
}

/// The table a sink writes from a port: one of the built-in tables (their columns are
/// defined once, by the `spanflow` crate's `tables` module), or a table whose schema
/// the planner knows (a rollup's query result).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    /// `traces`: one row per trace of a [`Batch::Traces`].
    Traces,
    /// `spans`: every span of every trace of a [`Batch::Traces`], or of a
    /// [`Batch::Spans`].
    Spans,
    /// `late_spans`.
    LateSpans,
    /// `dead_letters`.
    DeadLetters,
    /// `red_metrics`: one row per series of each closed interval.
    RedMetrics,
    /// `exemplars`: one row per exemplar of each closed interval.
    Exemplars,
    /// `service_relation`: one row per edge of each closed interval.
    ServiceRelation,
    /// `alerts`: one row per alert event.
    Alerts,
    /// Rows with a schema planned at load time (a rollup's result).
    Query,
}

impl Table {
    /// The built-in table's name (`traces`, ...); `None` for [`Table::Query`].
    pub fn builtin_name(self) -> Option<&'static str> {
        Some(match self {
            Table::Traces => "traces",
            Table::Spans => "spans",
            Table::LateSpans => "late_spans",
            Table::DeadLetters => "dead_letters",
            Table::RedMetrics => "red_metrics",
            Table::Exemplars => "exemplars",
            Table::ServiceRelation => "service_relation",
            Table::Alerts => "alerts",
            Table::Query => return None,
        })
    }
}

/// One output port of an operator kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortSpec {
    /// Name in `from:` lists (`node.name`); the first port is the node's default.
    pub name: &'static str,
    /// What the port carries.
    pub data: DataKind,
    /// What a sink writes from it; `None` when no sink may read it.
    pub table: Option<Table>,
    /// One line for the docs and diagnostics.
    pub doc: &'static str,
}

/// Where an operator kind runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// One instance per shard, on that shard's keys.
    Shard,
    /// A partial instance per shard and one merge instance over all of them; the
    /// node's output ports are the merge instance's.
    Merged,
    /// One instance, downstream of merged operators (rollups).
    Global,
}

/// The declaration of an operator kind: what it reads, where it runs, what it writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// The kind's name in job files (`session_window`, ...).
    pub kind: &'static str,
    /// What every input must carry.
    pub input: DataKind,
    /// Where it runs.
    pub scope: Scope,
    /// Output ports, the default first.
    pub outputs: &'static [PortSpec],
}

impl Shape {
    /// The output port called `name`, with its index.
    pub fn port(&self, name: &str) -> Option<(usize, &'static PortSpec)> {
        self.outputs
            .iter()
            .enumerate()
            .find(|(_, p)| p.name == name)
    }

    /// The default (first) output port.
    pub fn default_port(&self) -> Option<&'static PortSpec> {
        self.outputs.first()
    }
}

/// A closed trace on its way between operators. The trace is shared (fan-out to two
/// samplers or to `red_metrics` and `service_graph` copies a pointer, not the spans);
/// the decision belongs to the edge it travels on.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceRef {
    /// The trace.
    pub trace: Arc<ClosedTrace>,
    /// The decision of the `tail_sampling` that emitted it; `None` before any sampler.
    pub decision: Option<Decision>,
}

impl TraceRef {
    /// True unless a sampler dropped the trace.
    #[inline]
    pub fn kept(&self) -> bool {
        self.decision.as_ref().is_none_or(|d| d.sampled)
    }
}

/// Closed metric intervals with the histogram buckets their counts refer to.
#[derive(Debug, Clone, PartialEq)]
pub struct IntervalBatch {
    /// The operator's histogram buckets.
    pub buckets: Arc<Buckets>,
    /// Closed intervals, ascending by start.
    pub intervals: Vec<Arc<ClosedInterval>>,
    /// The operator's cardinality limit (series per interval).
    pub max_series: usize,
}

/// A batch on a port.
#[derive(Debug, Clone)]
pub enum Batch {
    /// Spans, in arrival order.
    Spans(Vec<Span>),
    /// Closed traces.
    Traces(Vec<TraceRef>),
    /// Spans that arrived after their trace or window closed.
    LateSpans(Vec<LateSpan>),
    /// One shard's pre-aggregated metric intervals, for a merge operator.
    Partials(Vec<Partial>),
    /// Metric intervals closed by a merge operator.
    Intervals(IntervalBatch),
    /// A sampler's offers to its rate-limit windows, for their merge stage.
    RateOffers(Vec<crate::tail_sampling::RateOffers>),
    /// The merge stage's verdicts on rate-limit windows, for every shard's sampler.
    RateVerdicts(Vec<crate::tail_sampling::RateVerdict>),
    /// Alerts firing or resolving.
    Alerts(Vec<crate::alerts::AlertEvent>),
    /// Data the runtime defines (query rows, dead letters); operators of this crate
    /// never read it.
    Other(Arc<dyn Any + Send + Sync>),
}

impl Batch {
    /// What the batch carries.
    pub fn kind(&self) -> DataKind {
        match self {
            Batch::Spans(_) => DataKind::Spans,
            Batch::Traces(_) => DataKind::Traces,
            Batch::LateSpans(_) => DataKind::LateSpans,
            Batch::Partials(_) => DataKind::Partials,
            Batch::Intervals(_) => DataKind::Intervals,
            Batch::RateOffers(_) => DataKind::RateOffers,
            Batch::RateVerdicts(_) => DataKind::RateVerdicts,
            Batch::Alerts(_) => DataKind::Alerts,
            Batch::Other(_) => DataKind::Rows,
        }
    }

    /// Items in the batch (0 for [`Batch::Other`]).
    pub fn len(&self) -> usize {
        match self {
            Batch::Spans(v) => v.len(),
            Batch::Traces(v) => v.len(),
            Batch::LateSpans(v) => v.len(),
            Batch::Partials(v) => v.len(),
            Batch::Intervals(b) => b.intervals.len(),
            Batch::RateOffers(v) => v.len(),
            Batch::RateVerdicts(v) => v.len(),
            Batch::Alerts(v) => v.len(),
            Batch::Other(_) => 0,
        }
    }

    /// True when the batch holds nothing (a [`Batch::Other`] is never empty).
    pub fn is_empty(&self) -> bool {
        !matches!(self, Batch::Other(_)) && self.len() == 0
    }
}

impl PartialEq for Batch {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Batch::Spans(a), Batch::Spans(b)) => a == b,
            (Batch::Traces(a), Batch::Traces(b)) => a == b,
            (Batch::LateSpans(a), Batch::LateSpans(b)) => a == b,
            (Batch::Partials(a), Batch::Partials(b)) => a == b,
            (Batch::Intervals(a), Batch::Intervals(b)) => a == b,
            (Batch::RateOffers(a), Batch::RateOffers(b)) => a == b,
            (Batch::RateVerdicts(a), Batch::RateVerdicts(b)) => a == b,
            (Batch::Alerts(a), Batch::Alerts(b)) => a == b,
            (Batch::Other(a), Batch::Other(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

/// Collects what an operator emits during one call, per output port.
#[derive(Debug, Default)]
pub struct Emitter {
    ports: Vec<Vec<Batch>>,
    connected: Vec<bool>,
}

impl Emitter {
    /// An emitter for `ports` output ports, every one of them read by someone.
    pub fn new(ports: usize) -> Self {
        Emitter::with_connected(vec![true; ports])
    }

    /// An emitter whose port `i` is read by someone iff `connected[i]`: batches for
    /// other ports are dropped, and operators skip building them.
    pub fn with_connected(connected: Vec<bool>) -> Self {
        Emitter {
            ports: connected.iter().map(|_| Vec::new()).collect(),
            connected,
        }
    }

    /// Whether anyone reads `port` (operators skip work for ports nobody reads).
    #[inline]
    pub fn is_connected(&self, port: usize) -> bool {
        self.connected.get(port).copied().unwrap_or(false)
    }

    /// Emits `batch` on `port`; empty batches and batches for ports nobody reads are
    /// dropped.
    #[inline]
    pub fn emit(&mut self, port: usize, batch: Batch) {
        if batch.is_empty() || !self.is_connected(port) {
            return;
        }
        if let Some(p) = self.ports.get_mut(port) {
            p.push(batch);
        }
    }

    /// Number of output ports.
    pub fn ports(&self) -> usize {
        self.ports.len()
    }

    /// Takes what was emitted on `port`, in emission order.
    pub fn take(&mut self, port: usize) -> Vec<Batch> {
        self.ports
            .get_mut(port)
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Drains what was emitted on `port`, in emission order, keeping the buffer for
    /// the next call (the runtime's path: no allocation per call).
    pub fn drain(&mut self, port: usize) -> impl Iterator<Item = Batch> + '_ {
        self.ports
            .get_mut(port)
            .into_iter()
            .flat_map(|p| p.drain(..))
    }

    /// True when nothing waits on any port.
    pub fn is_empty(&self) -> bool {
        self.ports.iter().all(Vec::is_empty)
    }
}

/// Errors of operators. Operators validate their configs before they are built, and
/// decide about bad data themselves (late spans, caps), so what is left is state that
/// does not fit and wiring mistakes.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// A snapshot could not be encoded or a saved state not decoded (a checkpoint of
    /// another version or of another operator).
    #[error("operator state: {0}")]
    State(String),
    /// The operator's computation failed on its input (a rollup's query on a window's
    /// rows).
    #[error("{0}")]
    Execution(String),
    /// The runtime delivered a batch the operator does not read; this is a bug.
    #[error("internal error: {0} (this is a bug)")]
    Internal(String),
}

impl OperatorError {
    /// The error for a batch of the wrong kind on `input`.
    pub fn unexpected(operator: &str, input: usize, batch: &Batch) -> Self {
        OperatorError::Internal(format!(
            "`{operator}` received {} on input {input}",
            batch.kind().as_str()
        ))
    }
}

/// Encodes an operator's state for a snapshot ([`crate::model::codec`]: bincode with
/// each string and shared attribute buffer once). Not self-describing: a change of a
/// state's layout bumps the savepoint version.
pub fn encode_state<T: Serialize>(state: &T) -> Result<Vec<u8>, OperatorError> {
    crate::model::codec::encode(state).map_err(|e| OperatorError::State(e.to_string()))
}

/// A state snapshot, encoded or still to encode (see
/// [`Operator::snapshot_deferred`]).
pub struct DeferredState(DeferredInner);

type WriteState = dyn FnOnce(&mut dyn std::io::Write) -> Result<u64, OperatorError> + Send;

enum DeferredInner {
    Ready(Vec<u8>),
    Later(Box<WriteState>),
}

impl DeferredState {
    /// A state already encoded.
    pub fn ready(bytes: Vec<u8>) -> Self {
        DeferredState(DeferredInner::Ready(bytes))
    }

    /// A copy of a state, encoded with [`encode_state`]'s codec when it is written.
    pub fn later<T: Serialize + Send + 'static>(state: T) -> Self {
        DeferredState(DeferredInner::Later(Box::new(move |w| {
            crate::model::codec::encode_into(&state, w)
                .map_err(|e| OperatorError::State(e.to_string()))
        })))
    }

    /// Writes the encoded state to `w` (the checkpoint's file: a large state is never
    /// held in memory a second time, encoded); returns its length.
    pub fn write_to(self, w: &mut dyn std::io::Write) -> Result<u64, OperatorError> {
        match self.0 {
            DeferredInner::Ready(b) => {
                w.write_all(&b)
                    .map_err(|e| OperatorError::State(e.to_string()))?;
                Ok(b.len() as u64)
            }
            DeferredInner::Later(f) => f(w),
        }
    }
}

impl std::fmt::Debug for DeferredState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            DeferredInner::Ready(b) => write!(f, "DeferredState::Ready({} bytes)", b.len()),
            DeferredInner::Later(_) => f.write_str("DeferredState::Later"),
        }
    }
}

/// Decodes a state written by [`encode_state`].
pub fn decode_state<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, OperatorError> {
    crate::model::codec::decode(bytes).map_err(|e| OperatorError::State(e.to_string()))
}

/// What an operator reports for the run summary and the server's metrics; instances
/// of one node (its shards) are merged with [`Report::merge`].
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Report {
    /// Nothing to report.
    #[default]
    None,
    /// A `session_window`'s counters.
    Sessions(SessionMetrics),
    /// A `span_filter`'s counters.
    Filter(SpanFilterMetrics),
    /// A `tail_sampling`'s counters.
    Sampling(SamplingMetrics),
    /// A metric operator's counters (merge or partial side).
    Metrics(crate::metrics::MetricsReport),
    /// Windows of event time an operator computed a result for (a rollup's query runs).
    Windows(u64),
    /// An `alerts` node's counts.
    Alerts(crate::alerts::AlertsMetrics),
}

impl Report {
    /// Adds another instance's report of the same node.
    pub fn merge(&mut self, other: &Report) {
        match (self, other) {
            (_, Report::None) => {}
            (me @ Report::None, o) => *me = o.clone(),
            (Report::Sessions(a), Report::Sessions(b)) => a.merge(b),
            (Report::Filter(a), Report::Filter(b)) => a.merge(b),
            (Report::Sampling(a), Report::Sampling(b)) => a.merge(b),
            (Report::Metrics(a), Report::Metrics(b)) => a.merge(b),
            (Report::Windows(a), Report::Windows(b)) => *a += b,
            (Report::Alerts(a), Report::Alerts(b)) => a.merge(b),
            // Instances of one node report alike; a mismatch keeps the first.
            _ => {}
        }
    }
}

/// Spans and bytes an operator holds, for memory figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Buffered {
    /// Spans held.
    pub spans: usize,
    /// Approximate bytes held by them.
    pub bytes: usize,
    /// Traces open in a session window (other operators hold none open).
    pub open_traces: usize,
}

/// Which part of a checkpoint's state one new instance takes
/// ([`Operator::restore_share`]): instance `index` of `count` owns the traces the router
/// sends it, of the input partitions `origins` (all when `None`), and the state that
/// belongs to no trace when `unkeyed` (and it is instance 0).
///
/// A checkpoint restored at another parallelism gives every state the same share. A
/// member of a consumer group restores each input partition it was assigned from the
/// checkpoint that holds that partition's newest state: it gives each checkpoint's
/// states a share limited to those partitions, and takes the unkeyed state only of the
/// checkpoints that carry it (see `runtime::group`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    /// This instance's index.
    pub index: usize,
    /// Instances of the node in the restored run.
    pub count: usize,
    /// Input partitions whose traces this share takes; `None`: every trace.
    pub origins: Option<std::sync::Arc<std::collections::BTreeSet<u16>>>,
    /// Whether the state of no trace (counters, partial aggregates) is taken here.
    pub unkeyed: bool,
}

impl Share {
    /// Instance `index` of `count`, taking every trace it owns and, if it is the
    /// first, the unkeyed state.
    pub fn new(index: usize, count: usize) -> Self {
        Share {
            index,
            count,
            origins: None,
            unkeyed: true,
        }
    }

    /// Whether state keyed by `trace`, whose spans were read from input partition
    /// `origin`, belongs to this instance.
    #[inline]
    pub fn owns(&self, trace: &crate::TraceId, origin: u16) -> bool {
        trace.shard(self.count) == self.index
            && self.origins.as_ref().is_none_or(|o| o.contains(&origin))
    }

    /// Whether this instance takes the state that belongs to no trace (counters,
    /// partial aggregates): exactly one instance does.
    pub fn takes_unkeyed(&self) -> bool {
        self.unkeyed && self.index == 0
    }
}

/// A streaming operator.
///
/// The runtime calls, for each instance, in this order: any number of
/// [`process`](Operator::process) and [`on_watermark`](Operator::on_watermark) calls
/// (watermarks strictly increasing), then either `on_watermark(WATERMARK_END)` and
/// [`on_end`](Operator::on_end) when the input ends, or
/// [`snapshot`](Operator::snapshot) when the run stops to resume later. A new instance
/// given that snapshot through [`restore`](Operator::restore) goes on exactly as the
/// stopped one would have.
pub trait Operator: Send {
    /// Processes one batch that arrived on input `input` (the index of the stream in
    /// the node's `from:` list) and emits what it produced.
    fn process(
        &mut self,
        input: usize,
        batch: Batch,
        out: &mut Emitter,
    ) -> Result<(), OperatorError>;

    /// The input watermark advanced to `watermark`: no more input at or before it.
    /// Emits what that completes and returns the watermark to forward, which is at
    /// most `watermark` and holds back to the earliest event time the operator still
    /// buffers; the runtime never lets a forwarded watermark go backwards.
    fn on_watermark(
        &mut self,
        watermark: EventTime,
        out: &mut Emitter,
    ) -> Result<EventTime, OperatorError> {
        let _ = out;
        Ok(watermark)
    }

    /// The input ended (after `on_watermark(WATERMARK_END)`): emit anything left.
    fn on_end(&mut self, out: &mut Emitter) -> Result<(), OperatorError> {
        let _ = out;
        Ok(())
    }

    /// The operator's state, to resume from (see [`encode_state`]). Empty for
    /// stateless operators.
    fn snapshot(&self) -> Result<Vec<u8>, OperatorError> {
        Ok(Vec::new())
    }

    /// The same state as [`snapshot`](Operator::snapshot), as a copy whose encoding
    /// the runtime runs later on another thread: a checkpoint then holds up
    /// processing only while the copy is taken. Operators that buffer much (spans)
    /// override it; the default encodes right away.
    fn snapshot_deferred(&self) -> Result<DeferredState, OperatorError> {
        self.snapshot().map(DeferredState::ready)
    }

    /// Replaces the state of a freshly built instance with a snapshot of an instance
    /// built from the same config.
    fn restore(&mut self, state: &[u8]) -> Result<(), OperatorError> {
        if state.is_empty() {
            Ok(())
        } else {
            Err(OperatorError::State(
                "this operator keeps no state, but the checkpoint has some for it".into(),
            ))
        }
    }

    /// Replaces the state of a freshly built instance with its [`Share`] of each of
    /// `states`: the snapshots of every instance of a run at another parallelism (a job
    /// rescaled by stopping it and restoring its checkpoint with another
    /// `--parallelism`), or of several checkpoints of a consumer group's members. State
    /// keyed by trace goes where [`Share::owns`] says; state of the instance as a
    /// whole (counters, partial aggregates) is combined into the share that
    /// [`Share::takes_unkeyed`]. The default takes the one state marked so; operators
    /// whose states cannot be combined refuse several.
    fn restore_share(&mut self, states: &[(&[u8], Share)]) -> Result<(), OperatorError> {
        // By default the state is the instance's as a whole: one instance takes it,
        // and only if there is one to take.
        let taken: Vec<&[u8]> = states
            .iter()
            .filter(|(s, share)| share.takes_unkeyed() && !s.is_empty())
            .map(|(s, _)| *s)
            .collect();
        match taken.as_slice() {
            [] => Ok(()),
            [one] => self.restore(one),
            _ => Err(OperatorError::State(
                "this operator's state cannot be combined from several checkpoints".into(),
            )),
        }
    }

    /// Counters for the run summary.
    fn report(&self) -> Report {
        Report::None
    }

    /// What the operator holds in memory now.
    fn buffered(&self) -> Buffered {
        Buffered::default()
    }
}

#[cfg(test)]
mod tests;
