//! `session_window`: groups spans into traces in event-time session windows keyed by
//! trace id, with a gap computed per trace by ordered rules.
//!
//! Semantics (see DESIGN.md, "Time" and "Operators"):
//! - A span's event time is its end time. A session's deadline is
//!   `min(last_event + gap(trace), first_event + max_duration)`; it closes when the
//!   watermark reaches the deadline. The gap is re-evaluated whenever the trace changes,
//!   so e.g. the arrival of the root span shortens it.
//! - Spans arrive in any order, so a trace can hold several open sessions. Two are one
//!   when the later-starting begins within the gap of the earlier one (the gap of the
//!   trace so far, as if the spans came in event-time order); a session that grows
//!   merges with every session it comes to overlap, and a span that lands before a
//!   session is measured by its own gap. Merges are never undone: a gap that shrinks
//!   later (a root span ending before some of its children) does not split a session.
//! - `max_spans_per_trace` closes a trace as soon as it holds that many spans;
//!   `max_open_traces` closes the trace nearest its deadline when a new one would exceed
//!   the limit. Every close records its [`CloseReason`].
//! - After a trace closes, its id is remembered for `closed_trace_retention` of event
//!   time. A span arriving for it is late (`late_spans`, reason `trace_closed`) when the
//!   trace ended by its gap; when a cap cut the trace short the span starts the next
//!   fragment instead (`fragment` counts them), so no span is lost to a cap.
//! - A span of an unknown trace whose own session would already be past its deadline is
//!   late (`window_closed`).
//! - The forwarded watermark is held back to just before the earliest event time still
//!   buffered, so downstream intervals close only when complete.

mod state;
mod timers;

pub use state::SessionWindowState;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::{ConfigIssue, HumanDuration};
use std::sync::Arc;

use crate::model::{AttrArena, Span, Sym, TraceId};
use crate::operator::{
    Batch, Buffered, DataKind, DeferredState, Emitter, Operator, OperatorError, PortSpec, Report,
    Scope, Shape, Share, Table, TraceRef, decode_state, encode_state,
};
use crate::span_index::SpanIndex;
use crate::{EventTime, WATERMARK_END};
use timers::TimerQueue;

/// Configuration of `session_window` in a job file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionWindowConfig {
    /// Gap of event-time inactivity that closes a trace when no rule in `gap_rules`
    /// matches.
    #[serde(default = "defaults::gap")]
    pub gap: HumanDuration,
    /// Ordered rules; the first whose `when` holds for the trace gives its gap.
    #[serde(default)]
    pub gap_rules: Vec<GapRule>,
    /// A trace is closed (reason `max_duration`) once the watermark is this far past its
    /// first span's event time.
    #[serde(default = "defaults::max_duration")]
    pub max_duration: HumanDuration,
    /// A trace is closed (reason `max_spans`) as soon as it holds this many spans.
    #[serde(default = "defaults::max_spans_per_trace")]
    pub max_spans_per_trace: u32,
    /// Open traces allowed per shard; beyond it, the trace nearest its deadline is
    /// closed (reason `max_open_traces`).
    #[serde(default = "defaults::max_open_traces")]
    pub max_open_traces: u64,
    /// How long (event time) a closed trace id is remembered to classify its stragglers.
    #[serde(default = "defaults::closed_trace_retention")]
    pub closed_trace_retention: HumanDuration,
}

mod defaults {
    use crate::config::HumanDuration;
    pub fn gap() -> HumanDuration {
        HumanDuration::secs(10)
    }
    pub fn max_duration() -> HumanDuration {
        HumanDuration::secs(300)
    }
    pub fn max_spans_per_trace() -> u32 {
        10_000
    }
    pub fn max_open_traces() -> u64 {
        1_000_000
    }
    pub fn closed_trace_retention() -> HumanDuration {
        HumanDuration::secs(120)
    }
}

impl Default for SessionWindowConfig {
    fn default() -> Self {
        SessionWindowConfig {
            gap: defaults::gap(),
            gap_rules: Vec::new(),
            max_duration: defaults::max_duration(),
            max_spans_per_trace: defaults::max_spans_per_trace(),
            max_open_traces: defaults::max_open_traces(),
            closed_trace_retention: defaults::closed_trace_retention(),
        }
    }
}

/// One gap rule: `when` all the given conditions hold, use `gap`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GapRule {
    /// Conditions on the trace so far; all given ones must hold.
    pub when: GapCondition,
    /// The gap to use.
    pub gap: HumanDuration,
}

/// Conditions a [`GapRule`] tests. Unset conditions are not tested.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GapCondition {
    /// The root span (no parent) has arrived, i.e. the entry request has finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_ended: Option<bool>,
    /// The trace has producer/consumer or messaging spans, whose work may arrive much
    /// later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub has_async: Option<bool>,
    /// The trace has an error span.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub has_error: Option<bool>,
    /// The trace holds at least this many spans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_spans: Option<u32>,
}

impl GapCondition {
    fn is_empty(&self) -> bool {
        self.root_ended.is_none()
            && self.has_async.is_none()
            && self.has_error.is_none()
            && self.min_spans.is_none()
    }

    fn matches(&self, f: Facts) -> bool {
        self.root_ended.is_none_or(|v| v == f.root_ended)
            && self.has_async.is_none_or(|v| v == f.has_async)
            && self.has_error.is_none_or(|v| v == f.has_error)
            && self.min_spans.is_none_or(|n| f.spans >= u64::from(n))
    }
}

/// What the gap rules test of a trace (or of one span, as a trace of its own).
#[derive(Debug, Clone, Copy)]
struct Facts {
    root_ended: bool,
    has_async: bool,
    has_error: bool,
    spans: u64,
}

impl Facts {
    fn of_span(span: &Span) -> Self {
        Facts {
            root_ended: span.is_root(),
            has_async: span.is_async(),
            has_error: span.is_error(),
            spans: 1,
        }
    }
}

impl SessionWindowConfig {
    /// Checks the values serde cannot; returns every problem found.
    pub fn validate(&self) -> Vec<ConfigIssue> {
        let mut issues = Vec::new();
        if self.gap.0.is_zero() {
            issues.push(ConfigIssue::new(
                "gap",
                "must be greater than zero, found `0s`",
            ));
        }
        if self.max_duration.0.is_zero() {
            issues.push(ConfigIssue::new(
                "max_duration",
                "must be greater than zero, found `0s`",
            ));
        }
        if self.max_spans_per_trace == 0 {
            issues.push(ConfigIssue::new(
                "max_spans_per_trace",
                "must be at least 1, found 0",
            ));
        }
        if self.max_open_traces == 0 {
            issues.push(ConfigIssue::new(
                "max_open_traces",
                "must be at least 1, found 0",
            ));
        }
        for (i, rule) in self.gap_rules.iter().enumerate() {
            if rule.gap.0.is_zero() {
                issues.push(ConfigIssue::new(
                    &format!("gap_rules.{i}.gap"),
                    "must be greater than zero, found `0s`",
                ));
            }
            if rule.when.is_empty() && i + 1 < self.gap_rules.len() {
                issues.push(ConfigIssue::new(
                    &format!("gap_rules.{i}.when"),
                    "an empty condition matches every trace, so the rules after it never apply; \
                     move it last or use `gap`",
                ));
            }
        }
        issues
    }
}

/// Why a trace was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CloseReason {
    /// The gap passed with no new span: the normal case.
    Gap,
    /// The trace lasted longer than `max_duration`.
    MaxDuration,
    /// The trace reached `max_spans_per_trace`.
    MaxSpans,
    /// Too many traces were open; this one was nearest its deadline.
    MaxOpenTraces,
    /// The bounded input ended (final watermark) before the gap passed.
    EndOfInput,
}

impl CloseReason {
    /// Every reason, in a fixed order (for counters).
    pub const ALL: [CloseReason; 5] = [
        CloseReason::Gap,
        CloseReason::MaxDuration,
        CloseReason::MaxSpans,
        CloseReason::MaxOpenTraces,
        CloseReason::EndOfInput,
    ];

    /// snake_case name as stored in outputs.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Gap => "gap",
            CloseReason::MaxDuration => "max_duration",
            CloseReason::MaxSpans => "max_spans",
            CloseReason::MaxOpenTraces => "max_open_traces",
            CloseReason::EndOfInput => "end_of_input",
        }
    }

    /// True for the caps, after which a straggler starts a new fragment.
    pub fn is_cap(self) -> bool {
        matches!(
            self,
            CloseReason::MaxDuration | CloseReason::MaxSpans | CloseReason::MaxOpenTraces
        )
    }
}

/// Why a span went to `late_spans`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LateReason {
    /// Its trace had already closed by its gap.
    TraceClosed,
    /// Its trace was unknown and its own session would already have closed.
    WindowClosed,
}

impl LateReason {
    /// Every reason, in a fixed order (for counters).
    pub const ALL: [LateReason; 2] = [LateReason::TraceClosed, LateReason::WindowClosed];

    /// snake_case name as stored in outputs.
    pub fn as_str(self) -> &'static str {
        match self {
            LateReason::TraceClosed => "trace_closed",
            LateReason::WindowClosed => "window_closed",
        }
    }
}

/// Summary of a closed trace: what the `traces` output stores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceSummary {
    /// Service of the root span (or of the earliest span when the root is missing).
    pub root_service: Sym,
    /// Name of the root span (or of the earliest span when the root is missing).
    pub root_operation: Sym,
    /// True when the trace holds a span without parent.
    pub has_root: bool,
    /// Earliest span start, unix ns.
    pub start_ns: u64,
    /// Latest span end, unix ns.
    pub end_ns: u64,
    /// Number of spans.
    pub span_count: u32,
    /// Number of error spans ([`Span::is_error`]).
    pub error_count: u32,
    /// Why the trace closed.
    pub close_reason: CloseReason,
    /// 0 for the first session of a trace id; n for the n-th continuation after a cap.
    pub fragment: u32,
    /// The session's deadline when it closed (its last span's end plus its gap, or the
    /// duration cap): the event time the watermark reached to close it, or, for a trace
    /// closed early (span cap, open-trace cap, end of input), the one it would have.
    /// Once a shard's watermark passes `T`, every trace with `closes_at < T` has left
    /// its window, whatever the parallelism: decisions over all shards' traces (rate
    /// limits) are made per window of `closes_at`.
    pub closes_at: EventTime,
}

impl TraceSummary {
    /// `end - start` in nanoseconds.
    pub fn duration_ns(&self) -> u64 {
        self.end_ns.saturating_sub(self.start_ns)
    }
}

/// A closed trace: its spans, sorted by start time, and its summary.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClosedTrace {
    /// The trace id.
    pub trace_id: TraceId,
    /// Spans ordered by (start, span id).
    pub spans: Vec<Span>,
    /// The summary.
    pub summary: TraceSummary,
    /// Parent links of the spans, built on first use by whichever operator walks them
    /// first (`red_metrics`, `service_graph`) and shared with the others: the trace
    /// travels between operators behind one pointer. Change `spans` only before.
    #[serde(skip)]
    index: std::sync::OnceLock<SpanIndex>,
}

impl ClosedTrace {
    /// A closed trace of `spans` (ordered by start, span id) with its summary.
    pub fn new(trace_id: TraceId, spans: Vec<Span>, summary: TraceSummary) -> Self {
        ClosedTrace {
            trace_id,
            spans,
            summary,
            index: std::sync::OnceLock::new(),
        }
    }

    /// The spans' parent links (built once).
    pub fn index(&self) -> &SpanIndex {
        self.index.get_or_init(|| SpanIndex::of(&self.spans))
    }
}

impl PartialEq for ClosedTrace {
    fn eq(&self, other: &Self) -> bool {
        self.trace_id == other.trace_id
            && self.spans == other.spans
            && self.summary == other.summary
    }
}

/// A span routed to `late_spans`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LateSpan {
    /// The span.
    pub span: Span,
    /// Why it is late.
    pub reason: LateReason,
    /// The operator's input watermark when it arrived.
    pub watermark: EventTime,
}

/// What the operator emitted during one call.
#[derive(Debug, Default)]
pub struct SessionOutput {
    /// Traces that closed.
    pub closed: Vec<ClosedTrace>,
    /// Spans that arrived too late.
    pub late: Vec<LateSpan>,
}

impl SessionOutput {
    /// True when nothing was emitted.
    pub fn is_empty(&self) -> bool {
        self.closed.is_empty() && self.late.is_empty()
    }
}

/// Counters of one `session_window` instance.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionMetrics {
    /// Spans received.
    pub spans_in: u64,
    /// Traces closed, indexed like [`CloseReason::ALL`].
    pub closed_by_reason: [u64; 5],
    /// Late spans, indexed like [`LateReason::ALL`].
    pub late_by_reason: [u64; 2],
    /// Spans emitted inside closed traces.
    pub spans_closed: u64,
    /// Closed traces that continue an earlier session of the same trace id
    /// (`fragment > 0`): after a cap, or when spans more than a gap apart opened a
    /// second session before the first closed.
    pub continued: u64,
}

impl SessionMetrics {
    /// Adds another instance's counters (shards are summed for the run summary).
    pub fn merge(&mut self, o: &SessionMetrics) {
        self.spans_in += o.spans_in;
        self.spans_closed += o.spans_closed;
        self.continued += o.continued;
        for (a, b) in self.closed_by_reason.iter_mut().zip(o.closed_by_reason) {
            *a += b;
        }
        for (a, b) in self.late_by_reason.iter_mut().zip(o.late_by_reason) {
            *a += b;
        }
    }

    /// Traces closed for any reason.
    pub fn traces_closed(&self) -> u64 {
        self.closed_by_reason.iter().sum()
    }

    /// Late spans for any reason.
    pub fn late_spans(&self) -> u64 {
        self.late_by_reason.iter().sum()
    }
}

/// An open session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Session {
    spans: Vec<Span>,
    /// Where the spans' attributes move when the session outlives its first deadline
    /// (see [`Session::settle_attrs`]); a restored session starts a new one.
    #[serde(skip, default = "session_arena")]
    arena: AttrArena,
    /// `spans[..settled]` keep their attributes in `arena`.
    #[serde(skip)]
    settled: usize,
    /// Smallest event time held.
    first_event: EventTime,
    /// Largest event time held.
    last_event: EventTime,
    /// Event time of the first span to arrive: `max_duration` counts from here.
    opened_at: EventTime,
    root_ended: bool,
    has_async: bool,
    errors: u32,
    bytes: usize,
    fragment: u32,
    /// Deadline of this session's live entry in the timer heap.
    timer: EventTime,
}

/// What is remembered of a closed trace.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) struct Tombstone {
    reason: CloseReason,
    fragment: u32,
    expires: EventTime,
    /// The input partition of the closed trace's spans, so the tombstone moves with
    /// it (see [`Share`]).
    origin: u16,
}

/// The running `session_window` operator of one shard.
#[derive(Debug)]
pub struct SessionWindow {
    config: SessionWindowConfig,
    gaps: Gaps,
    retention_ns: u64,
    state: SessionWindowState,
    /// Reused between calls of the [`Operator`] methods.
    scratch: SessionOutput,
}

/// The gap rules and the duration cap in nanoseconds, apart from the state so that a
/// session can be updated and its deadline computed under one map lookup.
#[derive(Debug)]
struct Gaps {
    rules: Vec<(GapCondition, u64)>,
    default_ns: u64,
    max_duration_ns: u64,
}

impl Gaps {
    fn gap_for(&self, s: &Session) -> u64 {
        self.gap_of(s.facts())
    }

    fn gap_of(&self, facts: Facts) -> u64 {
        for (when, gap) in &self.rules {
            if when.matches(facts) {
                return *gap;
            }
        }
        self.default_ns
    }

    /// Whether sessions `a` and `b` of one trace are one: the later-starting one
    /// begins within the gap of the earlier one, as when the spans come in event-time
    /// order and each is measured against the trace so far. The gap of the earlier
    /// one decides, not that of the later: a session holding only the root span (a
    /// short gap) is still joined by children that ended a few seconds before it,
    /// whatever order they arrive in.
    fn overlap(&self, a: &Session, b: &Session) -> bool {
        let (early, late) = if a.first_event <= b.first_event {
            (a, b)
        } else {
            (b, a)
        };
        late.first_event < early.last_event.saturating_add(self.gap_for(early))
    }

    fn deadline(&self, s: &Session) -> (EventTime, CloseReason) {
        let by_gap = s.last_event.saturating_add(self.gap_for(s));
        let by_cap = s.opened_at.saturating_add(self.max_duration_ns);
        if by_cap < by_gap {
            (by_cap, CloseReason::MaxDuration)
        } else {
            (by_gap, CloseReason::Gap)
        }
    }
}

impl SessionWindow {
    /// Builds the operator. The config should have passed [`SessionWindowConfig::validate`];
    /// zero values are clamped to 1 ns rather than causing a panic.
    pub fn new(config: SessionWindowConfig) -> Self {
        Self::with_state(config, SessionWindowState::default())
    }

    /// Builds the operator around restored state.
    pub fn with_state(config: SessionWindowConfig, state: SessionWindowState) -> Self {
        SessionWindow {
            gaps: Gaps {
                rules: config
                    .gap_rules
                    .iter()
                    .map(|r| (r.when.clone(), r.gap.as_nanos().max(1)))
                    .collect(),
                default_ns: config.gap.as_nanos().max(1),
                max_duration_ns: config.max_duration.as_nanos().max(1),
            },
            retention_ns: config.closed_trace_retention.as_nanos(),
            config,
            state,
            scratch: SessionOutput::default(),
        }
    }

    /// The operator's state, for a checkpoint.
    pub fn snapshot(&self) -> &SessionWindowState {
        &self.state
    }

    /// Counters so far.
    pub fn metrics(&self) -> &SessionMetrics {
        &self.state.metrics
    }

    /// Open sessions.
    pub fn open_traces(&self) -> usize {
        self.state.open_sessions
    }

    /// Spans buffered in open sessions.
    pub fn buffered_spans(&self) -> usize {
        self.state.buffered_spans
    }

    /// Approximate bytes held by buffered spans.
    pub fn buffered_bytes(&self) -> usize {
        self.state.buffered_bytes
    }

    /// The last input watermark.
    pub fn input_watermark(&self) -> EventTime {
        self.state.watermark
    }

    /// Processes one batch of spans (all belonging to this shard).
    pub fn process(&mut self, spans: impl IntoIterator<Item = Span>, out: &mut SessionOutput) {
        for span in spans {
            self.process_one(span, out);
        }
    }

    fn process_one(&mut self, span: Span, out: &mut SessionOutput) {
        self.state.metrics.spans_in += 1;
        let tid = span.trace_id;
        let t = span.event_time();
        let wm = self.state.watermark;

        // Which open sessions of this trace does the span's window touch? As in Flink,
        // the span's window overlaps a session when it falls within a gap of it.
        let mut hits: [usize; 2] = [usize::MAX; 2];
        let mut n_hits = 0usize;
        let mut next_fragment = 0u32;
        let st = &mut self.state;
        if let Some(list) = st.sessions.get_mut(&tid) {
            // The span, as a session of its own, and each open session are one when
            // they overlap (see `Gaps::overlap`).
            let mut own_gap = None;
            for (i, s) in list.iter().enumerate() {
                let touches = if t >= s.first_event {
                    t < s.last_event.saturating_add(self.gaps.gap_for(s))
                } else {
                    let g = *own_gap.get_or_insert_with(|| self.gaps.gap_of(Facts::of_span(&span)));
                    s.first_event < t.saturating_add(g)
                };
                if touches {
                    if n_hits < 2 {
                        hits[n_hits] = i;
                    }
                    n_hits += 1;
                }
                next_fragment = next_fragment.max(s.fragment + 1);
            }
            // The common case, a span of an open trace: add it under this one lookup.
            if n_hits == 1
                && let Some(session) = list.get_mut(hits[0])
            {
                let bytes = span.heap_bytes();
                st.buffered_spans += 1;
                st.buffered_bytes += bytes;
                let full = add_span(
                    &self.gaps,
                    self.config.max_spans_per_trace,
                    session,
                    span,
                    bytes,
                    &mut st.timers,
                    &mut st.holds,
                );
                let several = list.len() > 1;
                if full {
                    self.close(tid, hits[0], CloseReason::MaxSpans, out);
                } else if several {
                    self.merge_overlapping(tid, hits[0], out);
                }
                return;
            }
        }

        let idx = if n_hits == 0 {
            let has_open = self.state.sessions.contains_key(&tid);
            if !has_open && let Some(tomb) = self.state.tombstones.get(&tid).copied() {
                if tomb.reason.is_cap() {
                    next_fragment = tomb.fragment + 1;
                } else {
                    self.late(span, LateReason::TraceClosed, out);
                    return;
                }
            }
            let probe = Session::new(&span, next_fragment);
            let (deadline, _) = self.gaps.deadline(&probe);
            if deadline <= wm {
                self.late(span, LateReason::WindowClosed, out);
                return;
            }
            if !has_open {
                self.state.tombstones.remove(&tid);
            }
            let list = self.state.sessions.entry(tid).or_default();
            list.push(probe);
            self.state.open_sessions += 1;
            self.state.holds.push(t, tid);
            list.len() - 1
        } else {
            // Touching several: joins the first, and the sessions it now overlaps
            // merge below.
            hits[0]
        };

        let bytes = span.heap_bytes();
        self.state.buffered_spans += 1;
        self.state.buffered_bytes += bytes;
        // A new or merged session.
        let st = &mut self.state;
        let Some(session) = st.sessions.get_mut(&tid).and_then(|l| l.get_mut(idx)) else {
            return;
        };
        let full = add_span(
            &self.gaps,
            self.config.max_spans_per_trace,
            session,
            span,
            bytes,
            &mut st.timers,
            &mut st.holds,
        );
        let several = st.sessions.get(&tid).is_some_and(|l| l.len() > 1);
        if full {
            self.close(tid, idx, CloseReason::MaxSpans, out);
            return;
        }
        if several {
            self.merge_overlapping(tid, idx, out);
        }
        if n_hits == 0 && self.state.open_sessions as u64 > self.config.max_open_traces {
            self.evict_one(out);
        }
    }

    /// Merges into session `idx` of `tid`, which just grew, every other open session
    /// of the trace it now overlaps (and those the merged one overlaps in turn); the
    /// merged session keeps the lowest fragment number. Sessions that grow toward each
    /// other merge whichever of their spans came last, so arrival order does not cut
    /// a trace in two (spans re-keyed from an unkeyed topic arrive far less in order).
    fn merge_overlapping(&mut self, tid: TraceId, mut idx: usize, out: &mut SessionOutput) {
        let st = &mut self.state;
        let Some(list) = st.sessions.get_mut(&tid) else {
            return;
        };
        let mut merged = false;
        loop {
            let Some(grown) = list.get(idx) else {
                return;
            };
            let Some(other) = (0..list.len())
                .find(|&j| j != idx && list.get(j).is_some_and(|o| self.gaps.overlap(grown, o)))
            else {
                break;
            };
            let (keep, gone) = match (list.get(other), list.get(idx)) {
                (Some(o), Some(g)) if o.fragment < g.fragment => (other, idx),
                _ => (idx, other),
            };
            let absorbed = list.swap_remove(gone);
            // `swap_remove` moved the last session into `gone`.
            idx = if keep == list.len() { gone } else { keep };
            let Some(target) = list.get_mut(idx) else {
                return;
            };
            target.absorb(absorbed);
            st.open_sessions -= 1;
            st.holds.push(target.first_event, tid);
            merged = true;
        }
        if !merged {
            return;
        }
        let Some(target) = list.get_mut(idx) else {
            return;
        };
        if target.spans.len() as u64 >= u64::from(self.config.max_spans_per_trace) {
            self.close(tid, idx, CloseReason::MaxSpans, out);
            return;
        }
        // The absorbed sessions' timers go stale (no session holds their deadlines).
        let (deadline, _) = self.gaps.deadline(target);
        target.timer = deadline;
        st.timers.push(deadline, tid);
    }

    fn late(&mut self, span: Span, reason: LateReason, out: &mut SessionOutput) {
        let idx = LateReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.state.metrics.late_by_reason[idx] += 1;
        out.late.push(LateSpan {
            span,
            reason,
            watermark: self.state.watermark,
        });
    }

    fn find_timer(&self, tid: &TraceId, deadline: EventTime) -> Option<usize> {
        self.state
            .sessions
            .get(tid)?
            .iter()
            .position(|s| s.timer == deadline)
    }

    /// Closes the session with the earliest live timer.
    fn evict_one(&mut self, out: &mut SessionOutput) {
        while let Some((deadline, tid)) = self.state.timers.pop() {
            if let Some(idx) = self.find_timer(&tid, deadline) {
                self.close(tid, idx, CloseReason::MaxOpenTraces, out);
                return;
            }
        }
    }

    /// Advances the input watermark, closing every session whose deadline it reaches.
    /// [`WATERMARK_END`] closes everything (reason `end_of_input` for sessions whose
    /// deadline had not been reached by the previous watermark).
    pub fn on_watermark(&mut self, wm: EventTime, out: &mut SessionOutput) {
        if wm <= self.state.watermark {
            return;
        }
        let previous = self.state.watermark;
        self.state.watermark = wm;
        while let Some((deadline, tid)) = self.state.timers.peek() {
            if deadline > wm {
                break;
            }
            let st = &mut self.state;
            st.timers.pop();
            // One lookup finds the session the timer is for and re-arms it (each lookup
            // of a trace whose timer fires is a cache miss).
            let Some(list) = st.sessions.get_mut(&tid) else {
                continue;
            };
            let Some((idx, session)) = list
                .iter_mut()
                .enumerate()
                .find(|(_, s)| s.timer == deadline)
            else {
                continue;
            };
            let (current, reason) = self.gaps.deadline(session);
            if current <= wm {
                let reason = if wm == WATERMARK_END && current > previous {
                    CloseReason::EndOfInput
                } else {
                    reason
                };
                self.close(tid, idx, reason, out);
            } else {
                session.timer = current;
                session.settle_attrs();
                st.timers.push(current, tid);
            }
        }
        while let Some((expires, tid)) = self.state.expiry.peek() {
            if expires > wm {
                break;
            }
            self.state.expiry.pop();
            if self
                .state
                .tombstones
                .get(&tid)
                .is_some_and(|t| t.expires == expires)
            {
                self.state.tombstones.remove(&tid);
            }
        }
        self.drop_stale_holds();
    }

    fn drop_stale_holds(&mut self) {
        while let Some((first, tid)) = self.state.holds.peek() {
            let live = self
                .state
                .sessions
                .get(&tid)
                .is_some_and(|l| l.iter().any(|s| s.first_event == first));
            if live {
                break;
            }
            self.state.holds.pop();
        }
    }

    /// The watermark this operator forwards: its input watermark, held back to just
    /// before the earliest event time still buffered. Never moves backwards (a span
    /// that arrives behind the input watermark is already late downstream).
    pub fn output_watermark(&mut self) -> EventTime {
        self.drop_stale_holds();
        let wm = self.state.watermark;
        let held = match self.state.holds.peek() {
            Some((first, _)) => wm.min(first.saturating_sub(1)),
            None => wm,
        };
        self.state.forwarded = self.state.forwarded.max(held);
        self.state.forwarded
    }

    fn close(&mut self, tid: TraceId, idx: usize, reason: CloseReason, out: &mut SessionOutput) {
        let Some(list) = self.state.sessions.get_mut(&tid) else {
            return;
        };
        if idx >= list.len() {
            return;
        }
        let mut session = list.swap_remove(idx);
        if list.is_empty() {
            self.state.sessions.remove(&tid);
        }
        let st = &mut self.state;
        st.open_sessions -= 1;
        st.buffered_spans -= session.spans.len();
        st.buffered_bytes -= session.bytes;
        let ridx = CloseReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        st.metrics.closed_by_reason[ridx] += 1;
        st.metrics.spans_closed += session.spans.len() as u64;
        st.metrics.continued += u64::from(session.fragment > 0);
        let expires = session.last_event.saturating_add(self.retention_ns);
        let prior = st.tombstones.get(&tid).map_or(0, |t| t.fragment);
        let fragment = session.fragment.max(prior);
        st.tombstones.insert(
            tid,
            Tombstone {
                reason,
                fragment,
                expires,
                origin: session.origin(),
            },
        );
        st.expiry.push(expires, tid);
        session
            .spans
            .sort_unstable_by_key(|s| (s.start_ns, s.span_id));
        let (closes_at, _) = self.gaps.deadline(&session);
        let summary = session.summary(reason, closes_at);
        out.closed
            .push(ClosedTrace::new(tid, session.spans, summary));
    }
}

impl SessionWindow {
    /// Ports and tables of `session_window` nodes.
    pub const SHAPE: Shape = Shape {
        kind: "session_window",
        input: DataKind::Spans,
        scope: Scope::Shard,
        outputs: &[
            PortSpec {
                name: "traces",
                data: DataKind::Traces,
                table: Some(Table::Traces),
                doc: "one closed trace per session",
            },
            PortSpec {
                name: "late_spans",
                data: DataKind::LateSpans,
                table: Some(Table::LateSpans),
                doc: "spans that arrived after their trace or window closed",
            },
        ],
    };

    /// Output port of the closed traces.
    pub const TRACES: usize = 0;

    /// Output port of the late spans.
    pub const LATE_SPANS: usize = 1;

    fn emit(out: &mut Emitter, so: &mut SessionOutput) {
        if !so.closed.is_empty() {
            let traces = so
                .closed
                .drain(..)
                .map(|t| TraceRef {
                    trace: Arc::new(t),
                    decision: None,
                })
                .collect();
            out.emit(Self::TRACES, Batch::Traces(traces));
        }
        if !so.late.is_empty() {
            out.emit(
                Self::LATE_SPANS,
                Batch::LateSpans(std::mem::take(&mut so.late)),
            );
        }
    }
}

impl Operator for SessionWindow {
    fn process(
        &mut self,
        input: usize,
        batch: Batch,
        out: &mut Emitter,
    ) -> Result<(), OperatorError> {
        let Batch::Spans(spans) = batch else {
            return Err(OperatorError::unexpected("session_window", input, &batch));
        };
        let mut so = std::mem::take(&mut self.scratch);
        SessionWindow::process(self, spans, &mut so);
        Self::emit(out, &mut so);
        self.scratch = so;
        Ok(())
    }

    fn on_watermark(
        &mut self,
        watermark: EventTime,
        out: &mut Emitter,
    ) -> Result<EventTime, OperatorError> {
        let mut so = std::mem::take(&mut self.scratch);
        SessionWindow::on_watermark(self, watermark, &mut so);
        Self::emit(out, &mut so);
        self.scratch = so;
        Ok(self.output_watermark())
    }

    fn snapshot(&self) -> Result<Vec<u8>, OperatorError> {
        encode_state(&self.state)
    }

    /// A copy of the sessions (a memory copy of the buffered spans, several times
    /// faster than encoding them), encoded later.
    fn snapshot_deferred(&self) -> Result<DeferredState, OperatorError> {
        Ok(DeferredState::later(self.state.clone()))
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), OperatorError> {
        self.state = decode_state(state)?;
        Ok(())
    }

    fn restore_share(&mut self, states: &[(&[u8], Share)]) -> Result<(), OperatorError> {
        let mut merged = SessionWindowState::default();
        let mut first = true;
        for (bytes, share) in states {
            let s: SessionWindowState = decode_state(bytes)?;
            merged.take_share(s, share, first);
            first = false;
        }
        self.state = merged;
        Ok(())
    }

    fn report(&self) -> Report {
        Report::Sessions(self.state.metrics.clone())
    }

    fn buffered(&self) -> Buffered {
        Buffered {
            spans: self.state.buffered_spans,
            bytes: self.state.buffered_bytes,
            open_traces: self.open_traces(),
        }
    }
}

/// Adds `span` to `session`, re-evaluates its gap and moves its timer earlier if needed
/// (timers only ever move earlier here; later deadlines are found lazily when the old
/// timer fires). Returns true when the session reached `max_spans` and must close now
/// (its timer is then left alone).
fn add_span(
    gaps: &Gaps,
    max_spans: u32,
    session: &mut Session,
    span: Span,
    bytes: usize,
    timers: &mut TimerQueue,
    holds: &mut TimerQueue,
) -> bool {
    let tid = span.trace_id;
    let t = span.event_time();
    let lowered_first = t < session.first_event;
    session.add(span, bytes);
    let span_count = session.spans.len() as u64;
    let (deadline, _) = gaps.deadline(session);
    let rearm = session.timer == 0 || deadline < session.timer;
    if lowered_first {
        holds.push(t, tid);
    }
    if span_count >= u64::from(max_spans) {
        return true;
    }
    if rearm {
        session.timer = deadline;
        timers.push(deadline, tid);
    }
    false
}

impl Session {
    /// The input partition of the trace: that of its first span (a trace keyed input
    /// sends all of a trace's spans through one partition).
    fn origin(&self) -> u16 {
        self.spans.first().map_or(0, |s| s.origin)
    }

    /// An empty session whose flags already reflect `span`, so its deadline can be
    /// computed before deciding to keep the span (see [`Session::add`]).
    fn new(span: &Span, fragment: u32) -> Self {
        let t = span.event_time();
        Session {
            // Most traces hold tens of spans (26 on average in the demo job); skip the
            // first few doublings, each of which copies every span.
            spans: Vec::with_capacity(32),
            first_event: t,
            last_event: t,
            opened_at: t,
            root_ended: span.is_root(),
            has_async: span.is_async(),
            errors: 0,
            bytes: 0,
            fragment,
            timer: 0,
            arena: session_arena(),
            settled: 0,
        }
    }

    fn add(&mut self, span: Span, bytes: usize) {
        let t = span.event_time();
        self.first_event = self.first_event.min(t);
        self.last_event = self.last_event.max(t);
        self.root_ended |= span.is_root();
        self.has_async |= span.is_async();
        self.errors += u32::from(span.is_error());
        self.bytes += bytes;
        self.spans.push(span);
    }

    /// Moves the attributes of the spans added since the last call out of the chunks
    /// they arrived in (a decoder's, shared with spans of other traces) into this
    /// session's own.
    ///
    /// Spans arrive with their attributes in chunks a decoder filled for this shard, and
    /// most traces close a few seconds later, releasing their share of those chunks
    /// with no copy. A chunk is freed when its last span goes, though, so a session that
    /// stays open would keep the chunks of everything that arrived with it alive:
    /// sessions that outlive their first deadline move their spans' attributes out
    /// (copying every span's attributes on arrival cost as much CPU as it saved).
    fn settle_attrs(&mut self) {
        for span in self.spans.iter_mut().skip(self.settled) {
            span.attrs = std::mem::take(&mut span.attrs).moved_to(&mut self.arena);
        }
        self.settled = self.spans.len();
    }

    fn facts(&self) -> Facts {
        Facts {
            root_ended: self.root_ended,
            has_async: self.has_async,
            has_error: self.errors > 0,
            spans: self.spans.len() as u64,
        }
    }

    fn absorb(&mut self, other: Session) {
        self.first_event = self.first_event.min(other.first_event);
        self.last_event = self.last_event.max(other.last_event);
        self.opened_at = self.opened_at.min(other.opened_at);
        self.root_ended |= other.root_ended;
        self.has_async |= other.has_async;
        self.errors += other.errors;
        self.bytes += other.bytes;
        self.spans.extend(other.spans);
    }

    fn summary(&self, reason: CloseReason, closes_at: EventTime) -> TraceSummary {
        let root = self.spans.iter().find(|s| s.is_root());
        let head = root.or_else(|| self.spans.first());
        TraceSummary {
            root_service: head.map(|s| s.service).unwrap_or_default(),
            root_operation: head.map(|s| s.name).unwrap_or_default(),
            has_root: root.is_some(),
            start_ns: self.spans.iter().map(|s| s.start_ns).min().unwrap_or(0),
            end_ns: self.spans.iter().map(|s| s.end_ns).max().unwrap_or(0),
            span_count: self.spans.len() as u32,
            error_count: self.errors,
            close_reason: reason,
            fragment: self.fragment,
            closes_at,
        }
    }
}

/// A settled session's attribute chunks: the demo fleet's traces carry ~4.5 KiB of
/// span attributes (26 spans), so two chunks hold most of them.
fn session_arena() -> AttrArena {
    AttrArena::new(2 << 10, 16 << 10)
}

#[cfg(test)]
mod tests;
