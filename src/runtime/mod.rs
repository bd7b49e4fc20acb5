//! The runtime: tokio tasks connected by bounded channels that carry batches.
//!
//! ```text
//! sources ──records──▶ ordered parallel decode ──▶ router ──spans by trace_id──▶ shard 0..P
//!  (io::Source: Kafka,    (runtime tasks,           (watermarks per split,       (the plan's graph of
//!   files, generator)      order preserved)          dead letters)                 operators, io::Sink)
//!                                                                                    │ partials, offers
//!                                                                                    ▼    ▲ verdicts
//!                                                                          global stage (metric merges,
//!                                                                          rate-limit merges, rollups)
//! ```
//!
//! Each shard runs every operator node of the [`Plan`] through the
//! [`Operator`](spanflow_operators::Operator) trait (`shard.rs`); nodes that aggregate
//! across shards run their merge side once, in the global stage, at the minimum of the
//! shards' watermarks (`global.rs`).
//!
//! Determinism: decoding preserves record order and the router broadcasts the same
//! watermark sequence to every shard, so each trace sees the same spans and watermarks
//! in the same order whatever the parallelism; cross-shard decisions (metric intervals,
//! rate limits) are made over all shards' data; outputs differ only in row order.

mod align;
mod checkpoint;
mod global;
pub mod group;
pub mod io;
mod plan;
mod rollup;
mod router;
mod savepoint;
mod shard;
mod source;
mod summary;
pub mod watermark;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use spanflow_operators::Sym;
use spanflow_operators::metrics::cumulative::Cumulative;
use spanflow_operators::operator::{IntervalBatch, Report};
use tokio::sync::mpsc;

pub use checkpoint::CheckpointStats;
pub use plan::{
    Input, NodeBuild, OpenSource, Plan, PlanError, PlanNode, PlanSource, ROLLUP_SHAPE, TableTarget,
};
pub use rollup::RollupSpec;
pub use savepoint::SavepointError;
pub use source::{MemoryInput, MemorySource};
pub use summary::ServiceSummary;
pub use summary::{
    EventTimeStats, GroupSummary, OutputTable, RepartitionSummary, RunSummary, SplitStats,
};

use io::Position;
use io::{ConnectorError, Fault, Finish, SourceEvent, SourceOutput};
use shard::{GlobalMsg, NodeSnapshot, ShardMsg, ShardRestore, ShardResult, Taken};

/// Errors of a run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The job cannot be planned.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// A source failed (unreadable file, bad generator config, broker down).
    #[error("source `{source_name}`: {error}")]
    Source {
        /// Source node name.
        source_name: String,
        /// What went wrong, and whose fault it is.
        error: ConnectorError,
    },
    /// A sink failed.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// A savepoint cannot be read, does not fit the job, or cannot be written.
    #[error("savepoint: {0}")]
    Savepoint(#[from] SavepointError),
    /// A rollup's query failed on a window's rows.
    #[error("rollup `{name}`: {message}")]
    Rollup {
        /// Rollup name.
        name: String,
        /// What failed.
        message: String,
    },
    /// A task died; this is a bug.
    #[error("internal error: {0} (this is a bug)")]
    Internal(String),
}

impl RunError {
    /// Whose fault the failure is: the user's (fix the job or input; retrying cannot
    /// help), an external system's (retry later), or a bug.
    pub fn fault(&self) -> Fault {
        match self {
            RunError::Plan(_) | RunError::Rollup { .. } => Fault::User,
            RunError::Savepoint(SavepointError::Refused(_)) => Fault::User,
            RunError::Savepoint(SavepointError::Io { .. }) => Fault::External,
            RunError::Source { error, .. } => error.fault,
            RunError::Sink(e) => e.error.fault,
            RunError::Internal(_) => Fault::Internal,
        }
    }
}

/// A sink failed writing a table.
#[derive(Debug, thiserror::Error)]
#[error("sink `{sink}`, table `{table}`: {error}")]
pub struct SinkError {
    /// Sink node name.
    pub sink: String,
    /// Table written.
    pub table: String,
    /// What went wrong, and whose fault it is.
    pub error: ConnectorError,
}

impl SinkError {
    pub(crate) fn of(t: &TableTarget, error: ConnectorError) -> Self {
        SinkError {
            sink: t.sink.clone(),
            table: t.table.clone(),
            error,
        }
    }
}

/// How to run a job.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Overrides every Parquet sink's directory (when the job is planned by
    /// [`crate::job::run_job`]).
    pub output_dir: Option<PathBuf>,
    /// Shards; `None` = the job's `parallelism`, else one per core.
    pub parallelism: Option<usize>,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// Replace the job's sources with pre-encoded records (benchmarks).
    pub memory_input: Option<Arc<MemoryInput>>,
    /// Build output batches but write nothing (benchmarks).
    pub discard_outputs: bool,
    /// Set to stop the sources: the run then ends as if they were bounded there
    /// (windows flushed by the final watermark, outputs closed, Kafka offsets
    /// committed).
    pub stop: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// Stop on Ctrl-C (SIGINT) as `stop` does.
    pub stop_on_ctrl_c: bool,
    /// Where checkpoints are kept and the next run resumes from the newest: periodic
    /// ones with `checkpoint_interval`, and a last one when the run is stopped.
    /// Without it a stop flushes every open window, like the end of input.
    pub checkpoint_dir: Option<PathBuf>,
    /// Take a checkpoint this often (needs `checkpoint_dir`).
    pub checkpoint_interval: Option<std::time::Duration>,
    /// Checkpoints kept (0: the default, 3).
    pub checkpoint_keep: usize,
    /// Counts the spans decoded so far (for callers that watch a running job).
    pub spans_seen: Option<Arc<AtomicU64>>,
    /// The event time (unix ms) the run is expected to reach (a replay's end): the
    /// progress bar shows the watermark's way there.
    pub progress_until: Option<i64>,
    /// Where the run publishes its live figures (a watcher keeps the other end).
    pub live: Option<Arc<Progress>>,
    /// The run is one member of a consumer group: it restores the partitions the
    /// group assigned it from the group's checkpoint root, and checkpoints there (its
    /// `checkpoint_dir` is its own directory under that root).
    pub group: Option<Arc<group::GroupRun>>,
}

/// A running job's live figures, shared with the progress bar and with whoever
/// watches the run ([`RunOptions::live`]: the job server's API and `/metrics`).
#[derive(Debug, Default)]
pub struct Progress {
    /// Spans decoded.
    pub spans: AtomicU64,
    /// Source records decoded.
    pub records: AtomicU64,
    /// Records bounded sources said they will read (0: unknown).
    pub records_expected: AtomicU64,
    /// The job's watermark (event time, unix ns; 0 before the first).
    pub watermark: AtomicU64,
    /// Traces the session windows closed.
    pub traces_closed: AtomicU64,
    /// Spans buffered in open traces now (all shards).
    pub buffered_spans: AtomicU64,
    /// Traces open in session windows now (all shards).
    pub open_traces: AtomicU64,
    /// Each split's watermark and lag, refreshed about once a second.
    pub splits: std::sync::Mutex<Vec<SplitStats>>,
    /// The checkpoints written so far.
    pub checkpoints: std::sync::Mutex<CheckpointStats>,
    /// Decoding counters (records, spans, dead letters), refreshed about once a second.
    pub decode: std::sync::Mutex<crate::formats::DecodeStats>,
    /// Spans the clock-skew guard sent to dead letters, refreshed with `decode`.
    pub far_future: AtomicU64,
    /// Per metric node (`red_metrics`, `service_graph`), its series since the run
    /// started, kept only once [`Progress::watch_metrics`] was called.
    pub metrics: std::sync::Mutex<Option<std::collections::BTreeMap<String, Cumulative>>>,
    /// Every shard's operator reports (late spans and closed traces by reason, kept
    /// traces by policy), by (shard, node name), refreshed about once a second.
    pub reports: std::sync::Mutex<std::collections::BTreeMap<(usize, String), Report>>,
    /// The run's output tables, with the rows written to each so far.
    pub tables: std::sync::Mutex<Vec<TableTarget>>,
    /// Records behind the end of each partition a Kafka source reads, by (source,
    /// topic, partition), refreshed about once a second.
    pub consumer_lag: std::sync::Mutex<std::collections::BTreeMap<(String, String, i32), i64>>,
    /// A job run as a group member: the partitions the group assigned it last and how
    /// often it restarted on a rebalance (set at each assignment).
    pub group: std::sync::Mutex<Option<GroupSummary>>,
}

impl Progress {
    /// Keeps every metric node's series since the run started (for a live
    /// `/metrics`); without it closed intervals only go to the job's sinks.
    pub fn watch_metrics(&self) {
        if let Ok(mut m) = self.metrics.lock() {
            m.get_or_insert_with(Default::default);
        }
    }

    /// Adds a metric node's closed intervals, when watched.
    pub(crate) fn add_intervals(&self, node: &str, batch: &IntervalBatch) {
        let Ok(mut m) = self.metrics.lock() else {
            return;
        };
        let Some(m) = m.as_mut() else { return };
        let c = m
            .entry(node.to_owned())
            .or_insert_with(|| Cumulative::new(&batch.buckets, batch.max_series));
        for ci in &batch.intervals {
            c.add(ci);
        }
    }

    /// Each split's watermark and lag as last published.
    pub fn splits(&self) -> Vec<SplitStats> {
        self.splits.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Every node's report, the shards' added up, by node name.
    pub fn node_reports(&self) -> std::collections::BTreeMap<String, Report> {
        let mut out: std::collections::BTreeMap<String, Report> = Default::default();
        if let Ok(r) = self.reports.lock() {
            for ((_, node), report) in r.iter() {
                match out.get_mut(node) {
                    Some(slot) => slot.merge(report),
                    None => {
                        out.insert(node.clone(), report.clone());
                    }
                }
            }
        }
        out
    }

    /// Failed and retried writes so far, per sink.
    pub fn sink_errors(&self) -> Vec<(String, u64)> {
        let mut out: std::collections::BTreeMap<String, u64> = Default::default();
        if let Ok(t) = self.tables.lock() {
            for t in t.iter() {
                // Every table of a sink reports the sink's count.
                let n = t.out.failed_attempts();
                let slot = out.entry(t.sink.clone()).or_default();
                *slot = (*slot).max(n);
            }
        }
        out.into_iter().collect()
    }

    /// Per sink: rows waiting for delivery now, and rows it gave up on or dropped so far
    /// (sinks that deliver on their own thread; others report zeros).
    pub fn sink_delivery(&self) -> Vec<(String, u64, u64)> {
        let mut out: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
        if let Ok(t) = self.tables.lock() {
            for t in t.iter() {
                // Every table of a sink reports the sink's figures.
                let slot = out.entry(t.sink.clone()).or_default();
                slot.0 = slot.0.max(t.out.queued());
                slot.1 = slot.1.max(t.out.undelivered());
            }
        }
        out.into_iter().map(|(s, (q, u))| (s, q, u)).collect()
    }

    /// Rows written so far, per (sink, table).
    pub fn rows_written(&self) -> Vec<(String, String, u64)> {
        self.tables
            .lock()
            .map(|t| {
                t.iter()
                    .map(|t| {
                        (
                            t.sink.clone(),
                            t.table.clone(),
                            t.rows_written.load(Ordering::Relaxed),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Decoding counters as last published.
    pub fn decode(&self) -> crate::formats::DecodeStats {
        self.decode.lock().map(|d| *d).unwrap_or_default()
    }

    /// The checkpoints written so far.
    pub fn checkpoints(&self) -> CheckpointStats {
        self.checkpoints
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }
}

/// Attempts at opening a sink's writer while its system is down.
const OPEN_ATTEMPTS: u32 = 4;

/// Opens `t`'s writer for part `part`, retrying while its system is down.
pub(crate) fn open_writer(
    t: &TableTarget,
    part: usize,
    schema: arrow::datatypes::SchemaRef,
) -> Result<Box<dyn io::TableWriter>, RunError> {
    let what = format!("opening sink `{}`, table `{}`", t.sink, t.table);
    io::retry(OPEN_ATTEMPTS, &what, || t.out.open(part, schema.clone()))
        .map_err(|e| SinkError::of(t, e).into())
}

/// Runs a plan to completion (bounded sources, or until stopped) and returns its
/// summary. [`crate::job::run_job`] plans a job and runs it.
pub fn run(mut plan: Plan, opts: &RunOptions) -> Result<RunSummary, RunError> {
    let parallelism = opts
        .parallelism
        .or(plan.parallelism)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    plan.shards = parallelism;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(parallelism.max(2))
        .thread_name("spanflow")
        .enable_time()
        .enable_io()
        .build()
        .map_err(|e| RunError::Internal(format!("cannot start the tokio runtime: {e}")))?;
    let mut restored_from = None;
    let mut rescaled_from = None;
    let mut opts = opts.clone();
    let restore = if let Some(g) = &opts.group {
        let gr = group::restore(&plan, g)?;
        plan.part_base = gr.next_part;
        for (member, at, sinks) in &gr.unpublished {
            for t in plan.all_targets() {
                if let Some((_, c)) = sinks.iter().find(|(k, _)| *k == t.key())
                    && !c.pending.is_empty()
                {
                    t.out
                        .commit_for(member, &c.pending)
                        .map_err(|e| SinkError::of(t, e))?;
                }
            }
            if let Some(dir) = at.parent() {
                savepoint::Store::new(dir).mark_committed(at)?;
            }
        }
        opts.checkpoint_dir = Some(group::member_dir(&g.root, &g.instance));
        if let Some((_, (member, id))) = gr.from.iter().next() {
            restored_from = Some(group::member_dir(&g.root, member).join(format!("chk-{id:08}")));
        }
        gr.restore
    } else {
        match &opts.checkpoint_dir {
            Some(dir) => match savepoint::Store::new(dir).latest()? {
                Some((at, sp)) => {
                    savepoint::check(&sp, &at, &plan)?;
                    plan.part_base = sp.next_part;
                    restored_from = Some(at);
                    rescaled_from = (sp.parallelism != parallelism).then_some(sp.parallelism);
                    Some(Restore::whole(sp))
                }
                None => None,
            },
            None => None,
        }
    };
    let opts = &opts;
    if let Some(mem) = &opts.memory_input {
        let mem = mem.clone();
        let source = PlanSource {
            name: mem.name.clone(),
            watermark: plan
                .sources
                .first()
                .map(|s| s.watermark)
                .unwrap_or_default(),
            open: Arc::new(move || Box::new(MemorySource::new(mem.clone()))),
        };
        plan.sources = vec![source];
    }
    let before = summary::Usage::now();
    let t0 = Instant::now();
    let result = rt.block_on(run_plan(plan, parallelism, opts.clone(), restore));
    let mut summary = result?;
    summary.restored_from = restored_from;
    summary.rescaled_from = rescaled_from;
    summary.wall_seconds = t0.elapsed().as_secs_f64();
    let after = summary::Usage::now();
    summary.cpu_seconds = after.cpu_seconds - before.cpu_seconds;
    summary.page_faults = after.page_faults.saturating_sub(before.page_faults);
    summary.peak_rss_bytes = after.peak_rss_bytes;
    Ok(summary)
}

/// What a restored run starts from: one savepoint of its own, or the parts of several
/// that a consumer group member takes (see [`group`]).
pub(crate) struct Restore {
    /// Every saved shard's node states, with the part of them this run takes.
    shards: Vec<(Vec<NodeSnapshot>, Taken)>,
    /// Per saved shard, the feedback it had recorded.
    feedback: Vec<checkpoint::FeedbackLog>,
    /// The saved global stages' node states, with whether this run takes them.
    globals: Vec<(Vec<NodeSnapshot>, Taken)>,
    /// The lowest router watermark of the savepoints.
    watermark: u64,
    /// The highest watermark any of their splits had reached.
    high: u64,
    /// Per source: where it continues.
    positions: Vec<Option<Position>>,
    /// Per sink table: the commits of the run's own newest checkpoint.
    sinks: Vec<(String, io::SinkCheckpoint)>,
}

impl Restore {
    /// All of one savepoint.
    fn whole(sp: savepoint::Savepoint) -> Self {
        Restore {
            shards: sp
                .shards
                .into_iter()
                .map(|s| (s, Taken::default()))
                .collect(),
            feedback: sp.feedback,
            globals: sp
                .global
                .into_iter()
                .map(|g| (g, Taken::default()))
                .collect(),
            watermark: sp.watermark,
            high: sp.high,
            positions: sp.positions,
            sinks: sp.sinks,
        }
    }

    /// What each shard of the restored run starts from: its own part of the savepoint,
    /// or, when the savepoint was written at another parallelism (or several are
    /// combined), its share of every saved shard's state and every feedback any shard
    /// had recorded.
    fn shard_restores(&mut self, parallelism: usize) -> Vec<Option<ShardRestore>> {
        let mut feedback = std::mem::take(&mut self.feedback);
        feedback.resize_with(self.shards.len(), Vec::new);
        let shards = std::mem::take(&mut self.shards);
        let whole = shards.iter().all(|(_, t)| t.is_whole());
        if whole && shards.len() == parallelism {
            return shards
                .into_iter()
                .zip(feedback)
                .map(|((states, _), feedback)| Some(ShardRestore::Own(states, feedback)))
                .collect();
        }
        let feedback = checkpoint::merge_feedback(feedback);
        let shards = Arc::new(shards);
        (0..parallelism)
            .map(|_| Some(ShardRestore::Share(shards.clone(), feedback.clone())))
            .collect()
    }
}

async fn run_plan(
    plan: Plan,
    parallelism: usize,
    opts: RunOptions,
    mut restore: Option<Restore>,
) -> Result<RunSummary, RunError> {
    let progress = opts.live.clone().unwrap_or_default();
    if let Ok(mut t) = progress.tables.lock() {
        *t = plan.all_targets().cloned().collect();
    }
    let restored = restore.is_some();
    if !opts.discard_outputs {
        for t in plan.all_targets() {
            let kept = restore.as_ref().map(|sp| {
                sp.sinks
                    .iter()
                    .find(|(k, _)| *k == t.key())
                    .map(|(_, p)| p.clone())
                    .unwrap_or_default()
            });
            t.out
                .prepare(kept.as_ref())
                .map_err(|e| SinkError::of(t, e))?;
        }
    }

    // Checkpoints: the coordinator gathers every stage's share.
    let signal = Arc::new(io::CheckpointSignal::default());
    let (parts_tx, parts_rx) = mpsc::unbounded_channel();
    let stop = opts.stop.clone().unwrap_or_default();
    let (end_tx, end_rx) = tokio::sync::oneshot::channel::<checkpoint::RunEnd>();
    let has_global = plan.nodes.iter().any(|n| n.in_global());
    let coordinator = opts.checkpoint_dir.as_ref().map(|dir| {
        let mut c = checkpoint::Coordinator::new(
            savepoint::Store::new(dir),
            if opts.checkpoint_keep == 0 {
                savepoint::KEEP
            } else {
                opts.checkpoint_keep
            },
            plan.job.clone(),
            plan.fingerprint,
            parallelism,
            plan.part_base + parallelism,
            has_global,
            if opts.discard_outputs {
                Vec::new()
            } else {
                plan.all_targets().cloned().collect()
            },
            signal.clone(),
        );
        c.live = Some(progress.clone());
        c.group = opts.group.clone();
        tokio::spawn(c.run(parts_rx, opts.checkpoint_interval, stop.clone(), end_rx))
    });

    // The global stage (merge sides of the metric operators, rollups), when the job
    // has one: one blocking thread, as a rollup's query runs on this runtime from it.
    let discard = opts.discard_outputs;
    let mut global = global::Global::new(
        &plan,
        progress.clone(),
        discard,
        restore
            .as_mut()
            .map(|r| std::mem::take(&mut r.globals))
            .unwrap_or_default(),
        parts_tx.clone(),
    )
    .await?;
    let mut feedback_rxs: Vec<Option<_>> = match global.as_mut() {
        Some(g) => g.connect(parallelism).into_iter().map(Some).collect(),
        None => Vec::new(),
    };
    feedback_rxs.resize_with(parallelism, || None);
    let (global_tx, global_handle) = match global {
        Some(g) => {
            let (tx, rx) = mpsc::channel::<GlobalMsg>(64 * parallelism);
            (
                Some(tx),
                Some(tokio::task::spawn_blocking(move || g.run(rx))),
            )
        }
        None => (None, None),
    };

    // Shards.
    let resumed_watermark = restore.as_ref().map_or(0, |sp| sp.watermark);
    let mut shard_txs = Vec::with_capacity(parallelism);
    let mut shard_handles = Vec::with_capacity(parallelism);
    let mut shard_states: Vec<Option<ShardRestore>> = restore
        .as_mut()
        .map(|r| r.shard_restores(parallelism))
        .unwrap_or_default();
    shard_states.resize_with(parallelism, || None);
    for ((index, state), feedback_rx) in shard_states.into_iter().enumerate().zip(feedback_rxs) {
        let (tx, rx) = mpsc::channel::<ShardMsg>(16);
        let shard = shard::Shard::new(
            &plan,
            shard::ShardInit {
                index,
                discard,
                progress: progress.clone(),
                global_tx: global_tx.clone(),
                feedback_rx,
                parts: parts_tx.clone(),
                restore: state,
                resumed_watermark,
            },
        )?;
        shard_txs.push(tx);
        shard_handles.push(tokio::spawn(shard.run(rx)));
    }
    drop(global_tx);

    // Sources.
    let (src_tx, src_rx) = mpsc::channel::<SourceEvent>(4 * parallelism);
    let mut sources = Vec::with_capacity(plan.sources.len());
    for (i, s) in plan.sources.iter().enumerate() {
        let mut source = (s.open)();
        if let Some(position) = restore
            .as_ref()
            .and_then(|sp| sp.positions.get(i))
            .and_then(Option::as_ref)
        {
            source
                .resume_from(position)
                .map_err(|error| RunError::Source {
                    source_name: s.name.clone(),
                    error,
                })?;
        }
        sources.push(source);
    }
    let split_settings: Vec<(Sym, watermark::WatermarkSettings)> = plan
        .sources
        .iter()
        .map(|s| (Sym::new(&s.name), s.watermark))
        .collect();
    // Only a run whose every source can resume where it stopped can checkpoint.
    let resumable = sources.iter().all(|s| s.resumable());
    if opts.checkpoint_interval.is_some() && opts.checkpoint_dir.is_some() && !resumable {
        return Err(RunError::Savepoint(SavepointError::Refused(
            "periodic checkpoints need sources that can resume where a checkpoint was taken; \
             this job has one that cannot"
                .into(),
        )));
    }
    let mut source_handles = Vec::new();
    let mut finish_txs = Vec::new();
    let pauses = Arc::new(io::PauseSignal::new(sources.len()));
    if opts.stop_on_ctrl_c {
        let stop = stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("stopping: writing outputs (Ctrl-C again to abort)");
                stop.store(true, Ordering::Relaxed);
                if tokio::signal::ctrl_c().await.is_ok() {
                    std::process::exit(130);
                }
            }
        });
    }
    for (i, source) in sources.into_iter().enumerate() {
        let (finish_tx, finish_rx) = std::sync::mpsc::channel();
        finish_txs.push(finish_tx);
        let out = SourceOutput::new(
            i,
            split_settings[i].0,
            source.format(),
            src_tx.clone(),
            stop.clone(),
            signal.clone(),
            pauses.clone(),
            finish_rx,
            progress.clone(),
        );
        source_handles.push(tokio::task::spawn_blocking(move || {
            source::run_source(source, out)
        }));
    }
    drop(src_tx);

    // Progress bar.
    let bar = opts
        .progress
        .then(|| summary::progress_bar(progress.clone(), opts.progress_until));

    // Decode (ordered, parallel) and route.
    let routed = router::route(router::RouteInput {
        src_rx,
        shard_txs: &shard_txs,
        split_settings: &split_settings,
        dead_letter_targets: if opts.discard_outputs {
            Vec::new()
        } else {
            plan.dead_letter_targets()
        },
        part: plan.part_base,
        parallelism,
        resumed_watermark,
        resumed_high: restore.as_ref().map_or(0, |r| r.high),
        progress: &progress,
        spans_seen: opts.spans_seen.clone(),
        parts: parts_tx.clone(),
        pauses: pauses.clone(),
    })
    .await?;
    let router::Routed {
        tracker,
        last_wm,
        positions,
        decode_stats,
        mut failure,
        mut dead_rows,
        mut dead_writers,
        alignment,
        far_future,
    } = routed;
    let event_time = event_time_stats(&tracker, &alignment, far_future, &split_settings);
    // A requested stop with a checkpoint directory takes a last checkpoint instead of
    // flushing the open state.
    let stop_with_checkpoint = opts.checkpoint_dir.is_some()
        && stop.load(Ordering::Relaxed)
        && resumable
        && failure.is_none();
    // A group member's end of input, for its last checkpoint.
    let mut last = None;
    if stop_with_checkpoint {
        let id = signal.requested.fetch_add(1, Ordering::AcqRel) + 1;
        let pending = router::precommit_dead(&mut dead_rows, &mut dead_writers)?;
        for tx in &shard_txs {
            let _ = tx.send(ShardMsg::Barrier { id, last: true }).await;
        }
        let _ = parts_tx.send(checkpoint::Part::Router {
            id,
            positions: positions.clone(),
            watermark: last_wm,
            high: tracker.end_of_input_watermark(),
            pending,
        });
    } else {
        let wm = tracker.end_of_input_watermark();
        if opts.group.is_some() {
            last = Some(checkpoint::LastPosition {
                positions: positions.clone(),
                watermark: wm.max(last_wm),
                high: wm,
            });
        }
        if wm > last_wm {
            for tx in &shard_txs {
                let _ = tx.send(ShardMsg::Watermark(wm)).await;
            }
        }
        for tx in &shard_txs {
            let _ = tx.send(ShardMsg::End).await;
        }
    }
    drop(shard_txs);
    drop(parts_tx);
    router::flush_dead(&mut dead_rows, &mut dead_writers)?;
    let mut outputs: Vec<OutputTable> = Vec::new();
    for (t, w) in dead_writers {
        let rows = w.close().map_err(|e| SinkError::of(&t, e))?;
        summary::add_output(&mut outputs, &t, rows);
    }

    let mut reports: Vec<Report> = vec![Report::None; plan.nodes.len()];
    let mut peak_buffered = (0usize, 0usize);
    for h in shard_handles {
        let r: Result<ShardResult, RunError> = h
            .await
            .map_err(|e| RunError::Internal(format!("shard task failed: {e}")))?;
        let r = r?;
        for (node, report) in &r.reports {
            if let Some(slot) = reports.get_mut(*node) {
                slot.merge(report);
            }
        }
        for (t, rows) in r.outputs {
            summary::add_output(&mut outputs, &t, rows);
        }
        peak_buffered.0 += r.peak_buffered.0;
        peak_buffered.1 += r.peak_buffered.1;
    }
    if let Some(h) = global_handle {
        let g = h
            .await
            .map_err(|e| RunError::Internal(format!("global stage failed: {e}")))??;
        for (t, rows) in g.outputs {
            summary::add_output(&mut outputs, &t, rows);
        }
        for (node, report) in &g.reports {
            if let Some(slot) = reports.get_mut(*node) {
                slot.merge(report);
            }
        }
    }
    // Every output is written. The checkpoints in progress complete; when the run
    // finished, what they pre-committed is published and the store emptied (nothing
    // is left open) or, for a group member, its last checkpoint written; then Kafka
    // sources may commit what they read.
    let finished = failure.is_none() && !stop_with_checkpoint;
    let _ = end_tx.send(checkpoint::RunEnd {
        finished,
        last: last.filter(|_| finished),
    });
    let mut checkpoints = CheckpointStats::default();
    if let Some(c) = coordinator {
        checkpoints = c
            .await
            .map_err(|e| RunError::Internal(format!("checkpoint coordinator failed: {e}")))??;
    }
    let mut savepoint_written = None;
    if failure.is_none() {
        if stop_with_checkpoint {
            let Some(last) = checkpoints.last.clone() else {
                return Err(RunError::Internal(
                    "the run stopped without writing its last checkpoint".into(),
                ));
            };
            savepoint_written = Some(last);
        } else if let Some(dir) = &opts.checkpoint_dir
            && !opts.discard_outputs
            && opts.group.is_none()
        {
            savepoint::Store::new(dir).clear()?;
        }
    }
    let node_reports: Vec<(&str, &str, Report)> = plan
        .nodes
        .iter()
        .zip(reports)
        .map(|(n, r)| (n.name.as_str(), n.shape.kind, r))
        .collect();
    let totals = summary::Totals::from_reports(&node_reports);
    for tx in finish_txs {
        let _ = tx.send(if failure.is_none() {
            Finish::Commit
        } else {
            Finish::Abort
        });
    }
    let mut source_reports = Vec::new();
    for (i, h) in source_handles.into_iter().enumerate() {
        let end = h
            .await
            .map_err(|e| RunError::Internal(format!("source task failed: {e}")))?;
        let name = split_settings
            .get(i)
            .map_or("?", |s| s.0.as_str())
            .to_owned();
        if let Some(error) = end.late_error {
            failure.get_or_insert(RunError::Source {
                source_name: name.clone(),
                error,
            });
        }
        if let Some(r) = end.report {
            source_reports.push((name, r));
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(RunSummary {
        job: plan.job.clone(),
        parallelism,
        decode: decode_stats,
        sessions: totals.sessions,
        span_filter: totals.span_filter,
        sampling: totals.sampling,
        samplers: totals.samplers,
        services: totals.services,
        metric_intervals: totals.metric_intervals,
        rollup_windows: totals.rollup_windows,
        alerts: totals.alerts,
        folded_series: totals.folded_series,
        late_metric_observations: totals.late_metric_observations,
        outputs,
        source_reports,
        peak_buffered_spans: peak_buffered.0 as u64,
        bytes_per_buffered_span: if peak_buffered.0 > 0 {
            peak_buffered.1 as f64 / peak_buffered.0 as f64
        } else {
            0.0
        },
        wall_seconds: 0.0,
        cpu_seconds: 0.0,
        peak_rss_bytes: 0,
        page_faults: 0,
        restored,
        restored_from: None,
        rescaled_from: None,
        group: None,
        savepoint: savepoint_written,
        checkpoints,
        event_time,
    })
}

/// The summary's view of event time: every split the tracker knew, its watermark and
/// lag, and how long alignment paused it.
fn event_time_stats(
    tracker: &watermark::WatermarkTracker,
    alignment: &align::AlignmentStats,
    far_future: u64,
    split_settings: &[(Sym, watermark::WatermarkSettings)],
) -> summary::EventTimeStats {
    let now_ms = align::wall_clock_ns() / 1_000_000;
    let splits = tracker
        .split_watermarks()
        .into_iter()
        .map(|((source, split), wm)| {
            let watermark_ms = wm.map(|w| w / 1_000_000);
            summary::SplitStats {
                source: split_settings
                    .get(source)
                    .map_or_else(String::new, |s| s.0.as_str().to_owned()),
                split,
                watermark_ms,
                watermark_lag_s: watermark_ms.map(|w| (now_ms as f64 - w as f64) / 1000.0),
                paused_s: alignment
                    .paused_seconds
                    .get(&(source, split))
                    .copied()
                    .unwrap_or(0.0),
            }
        })
        .collect();
    summary::EventTimeStats {
        far_future_spans: far_future,
        pauses: alignment.pauses,
        splits,
    }
}
