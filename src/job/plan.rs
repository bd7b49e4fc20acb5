//! Turning a validated [`Job`] into the runtime's [`Plan`]: every operator node becomes a
//! [`PlanNode`] (its [`Shape`], declared by the operator kind, where each input comes
//! from and how its instances are built), in topological order; each source and each
//! sink's table is built here, by one `match` each, from the connectors. Each output
//! stream that sinks read gets its [`TableTarget`]s, named after the port (`traces`,
//! `red_metrics`, a rollup's name), or `<node>_<port>` when two streams of the job would
//! otherwise share a table name (two `tail_sampling` nodes, say).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use spanflow_operators::operator::{DataKind, Table};
use spanflow_operators::tail_sampling::TailSampler;

use super::{Job, OperatorKind, RollupNode, SinkKind, SourceKind, SourceNode, StreamRef};
use crate::connectors::clickhouse::{ClickHouseTarget, SinkTable};
use crate::connectors::file::FileSource;
use crate::connectors::kafka::KafkaSourceConfig;
use crate::connectors::kafka::sink::{KafkaTable, KafkaTarget};
use crate::connectors::kafka::source::KafkaSource;
use crate::connectors::otlp::OtlpSource;
use crate::connectors::parquet::ParquetTable;
use crate::runtime::io::{Sink, Source};
use crate::runtime::watermark::WatermarkSettings;
use crate::runtime::{
    Input, NodeBuild, Plan, PlanError, PlanNode, PlanSource, ROLLUP_SHAPE, RollupSpec, RunError,
    RunOptions, RunSummary, TableTarget,
};
use crate::testkit::generator::GeneratorSource;

/// Plans `job` and runs it to completion (bounded sources); `opts.output_dir` overrides
/// every Parquet sink's directory.
pub fn run_job(job: &Job, opts: &RunOptions) -> Result<RunSummary, RunError> {
    let plan = plan(job, opts.output_dir.as_deref())?;
    crate::runtime::run(plan, &with_job_checkpoint(job, opts))
}

/// `opts` with the job's `checkpoint:` key where the command line leaves a field unset
/// (the command line overrides it field by field).
fn with_job_checkpoint(job: &Job, opts: &RunOptions) -> RunOptions {
    let mut opts = opts.clone();
    if let Some(c) = &job.checkpoint {
        opts.checkpoint_dir = opts.checkpoint_dir.or_else(|| Some(c.dir.clone()));
        opts.checkpoint_interval = opts.checkpoint_interval.or(Some(c.interval.0));
        if opts.checkpoint_keep == 0 {
            opts.checkpoint_keep = c.keep;
        }
    }
    opts
}

/// Runs `job` as instance `instance` of a group of instances sharing its Kafka
/// consumer group and the checkpoint root (`opts.checkpoint_dir` or the job's
/// `checkpoint.dir`): each run restores the partitions the group assigned it from their
/// newest checkpoints, and when the group moves partitions the run stops (writes since
/// its last checkpoint rolled back) and the next one starts on the new assignment.
pub fn run_group(job: &Job, opts: &RunOptions, instance: &str) -> Result<RunSummary, RunError> {
    use crate::connectors::kafka::repartition::Repartitioner;
    let input = group_source(job, instance)?;
    let mut opts = with_job_checkpoint(job, opts);
    let Some(root) = opts.checkpoint_dir.clone() else {
        return Err(RunError::Plan(PlanError::Unsupported {
            job: job.name.clone(),
            message: "a job run as a group (--instance) needs a checkpoint directory shared by \
                      the instances (--checkpoint-dir or the job's `checkpoint.dir`)"
                .into(),
        }));
    };
    // Without periodic checkpoints a rebalance would send every member back to the
    // start of its partitions.
    opts.checkpoint_interval = opts.checkpoint_interval.or(Some(GROUP_CHECKPOINT_INTERVAL));
    let stop = opts.stop.clone().unwrap_or_default();
    opts.stop = Some(stop.clone());
    // An input not partitioned by trace id: this instance's repartition stage re-keys
    // its share into the internal topic, and the analytics below read that as a group
    // of their own.
    let (config, job, repartition) = match input.analytics_source() {
        Some(analytics) => {
            let watermark = plan_source(&job.sources[0]).watermark;
            let r = Repartitioner::start(&input, &watermark, instance, stop.clone()).map_err(
                |error| RunError::Source {
                    source_name: job.sources[0].name.clone(),
                    error,
                },
            )?;
            let mut j = job.clone();
            j.sources[0].kind = SourceKind::Kafka(analytics.clone());
            (analytics, std::borrow::Cow::Owned(j), Some(r))
        }
        None => (input, std::borrow::Cow::Borrowed(job), None),
    };
    let job = job.as_ref();
    let result = run_members(
        job,
        opts,
        instance,
        root,
        &config,
        &stop,
        repartition.as_ref(),
    );
    // The analytics stopped (or failed); the stage stops after them, committing what it
    // split.
    let stage = repartition.map(Repartitioner::stop).transpose();
    match (result, stage) {
        (Ok(mut s), Ok(r)) => {
            if let Some(g) = &mut s.group {
                g.repartition = r;
            }
            Ok(s)
        }
        (Err(e), _) => Err(e),
        (Ok(_), Err(error)) => Err(RunError::Source {
            source_name: job.sources[0].name.clone(),
            error,
        }),
    }
}

/// The runs of a group member's analytics on `config`, one per assignment, until
/// `stop` (see [`run_group`]).
fn run_members(
    job: &Job,
    mut opts: RunOptions,
    instance: &str,
    root: std::path::PathBuf,
    config: &KafkaSourceConfig,
    stop: &Arc<std::sync::atomic::AtomicBool>,
    repartition: Option<&crate::connectors::kafka::repartition::Repartitioner>,
) -> Result<RunSummary, RunError> {
    use crate::connectors::kafka::source::KafkaMember;
    use crate::runtime::group::{Fence, GroupRun};
    let fence = Arc::new(Fence::default());
    let member = Arc::new(
        KafkaMember::connect(config, fence.clone()).map_err(|error| RunError::Source {
            source_name: job.sources[0].name.clone(),
            error,
        })?,
    );
    let group = Arc::new(GroupRun::new(instance, &root, 0, fence));
    opts.group = Some(group.clone());
    if opts.stop_on_ctrl_c {
        // One handler for every run: Ctrl-C between two runs (while the group
        // settles) must stop the instance too, not be lost with the run's.
        opts.stop_on_ctrl_c = false;
        stop_on_ctrl_c(stop.clone());
    }
    let mut rebalances = 0u64;
    let summary = |partitions: Vec<(String, i32)>, rebalances: u64| crate::runtime::GroupSummary {
        instance: instance.to_owned(),
        partitions,
        rebalances,
        paused_seconds: member.paused().as_secs_f64(),
        repartition: repartition.map(|r| r.summary()),
    };
    loop {
        let assigned = member
            .wait_assignment(stop)
            .map_err(|error| RunError::Source {
                source_name: job.sources[0].name.clone(),
                error,
            })?;
        tracing::info!(instance, partitions = ?assigned, "consumer group assignment");
        if let Some(live) = &opts.live
            && let Ok(mut g) = live.group.lock()
        {
            *g = Some(summary(assigned.clone(), rebalances));
        }
        group.set_assigned(assigned);
        let mut plan = plan_member(job, opts.output_dir.as_deref(), Some(instance))?;
        let (c, m) = (config.clone(), member.clone());
        let origins = repartition.map_or(0, |r| r.origins());
        plan.sources[0].open = Arc::new(move || -> Box<dyn Source> {
            Box::new(KafkaSource::with_member(c.clone(), m.clone()).with_origins(origins))
        });
        let result = crate::runtime::run(plan, &opts);
        // Stopped while the group moved partitions: the next run restores and stops at
        // once with a last checkpoint.
        let stopping = stop.load(std::sync::atomic::Ordering::Relaxed);
        if member.rebalanced() && (result.is_err() || !stopping) {
            rebalances += 1;
            tracing::info!(
                instance,
                rebalances,
                "consumer group rebalanced; restarting from the checkpoints"
            );
            continue;
        }
        return result.map(|mut s| {
            s.group = Some(summary(group.assigned(), rebalances));
            s
        });
    }
}

/// Checkpoint interval of a group member whose job and command line set none.
pub const GROUP_CHECKPOINT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// The one Kafka source of a job run as group member `instance`, or why the job
/// cannot run so.
pub fn group_source(job: &Job, instance: &str) -> Result<KafkaSourceConfig, RunError> {
    let refused = |message: String| {
        RunError::Plan(PlanError::Unsupported {
            job: job.name.clone(),
            message,
        })
    };
    if instance.is_empty()
        || !instance
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(refused(format!(
            "instance name `{instance}` must be letters, digits, `-`, `_` or `.`"
        )));
    }
    let config = match job.sources.as_slice() {
        [s] => match &s.kind {
            SourceKind::Kafka(c) if c.topics.len() == 1 => c.clone(),
            _ => {
                return Err(refused(
                    "a job run as a group (--instance) reads one kafka source with one topic"
                        .into(),
                ));
            }
        },
        _ => {
            return Err(refused(
                "a job run as a group (--instance) has exactly one source, a kafka one".into(),
            ));
        }
    };
    Ok(config)
}

/// Sets `stop` on Ctrl-C (the run then ends with a last checkpoint); a second Ctrl-C
/// exits at once.
fn stop_on_ctrl_c(stop: Arc<std::sync::atomic::AtomicBool>) {
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("stopping: last checkpoint (Ctrl-C again to abort)");
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
                if tokio::signal::ctrl_c().await.is_ok() {
                    std::process::exit(130);
                }
            }
        });
    });
}

/// How one source is opened: the one place that maps source kinds to connectors.
fn plan_source(node: &SourceNode) -> PlanSource {
    let kind = node.kind.clone();
    PlanSource {
        name: node.name.clone(),
        watermark: WatermarkSettings {
            max_out_of_order: node.watermark.max_out_of_order.0,
            idle_timeout: node.watermark.idle_timeout.0,
            max_drift: node.watermark.align.then_some(node.watermark.max_drift.0),
            max_ahead: node.watermark.max_ahead.0,
            wall_clock_lag: node.watermark.wall_clock_lag.map(|d| d.0).or(matches!(
                node.kind,
                SourceKind::Otlp(_)
            )
            .then(|| std::time::Duration::from_secs(30))),
        },
        open: Arc::new(move || -> Box<dyn Source> {
            match &kind {
                SourceKind::Generator(c) => Box::new(GeneratorSource::new(c.clone())),
                SourceKind::File(c) => Box::new(FileSource::new(c.clone())),
                SourceKind::Kafka(c) => Box::new(KafkaSource::new(c.clone())),
                SourceKind::Otlp(c) => Box::new(OtlpSource::new(c.clone())),
            }
        }),
    }
}

/// A stable fingerprint of what a job computes and where it writes.
fn fingerprint(job: &Job) -> u64 {
    let mut text = format!("{:?}|{:?}", job.operators, job.sinks);
    // Only with rollups, so jobs without them keep their fingerprint.
    for r in &job.rollups {
        text.push_str(&format!(
            "|{}:{:?}:{:?}:{}",
            r.name, r.from, r.window, r.query
        ));
    }
    // FNV-1a: stable across builds and platforms, unlike the std hasher.
    text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Plans `job`: its graph, its sources and its sinks' tables; `output_dir` overrides
/// every Parquet sink's directory.
pub fn plan(job: &Job, output_dir: Option<&std::path::Path>) -> Result<Plan, PlanError> {
    plan_member(job, output_dir, None)
}

/// [`plan`] for instance `member` of a job run as a consumer group: its Parquet files
/// go to a directory of its own in each table's (`<table>/<member>/`), which readers
/// of the table see with the other members'.
pub fn plan_member(
    job: &Job,
    output_dir: Option<&std::path::Path>,
    member: Option<&str>,
) -> Result<Plan, PlanError> {
    let unsupported = |message: String| PlanError::Unsupported {
        job: job.name.clone(),
        message,
    };
    let source_index = |name: &str| job.sources.iter().position(|s| s.name == name);
    // A member sees only the traces of its partitions: alerts on its partial series
    // would fire on a fraction of the traffic and differ from member to member.
    if let Some(m) = member
        && let Some(a) = job
            .operators
            .iter()
            .find(|o| matches!(o.kind, OperatorKind::Alerts(_)))
    {
        return Err(unsupported(format!(
            "`{}` (alerts) cannot run in group member `{m}`: a member's metric series \
             hold only the traces of its partitions; evaluate alerts in a job of their own \
             over the whole input (README \"Running a group of instances\")",
            a.name
        )));
    }

    // Every node with its `from:` list, operators then rollups.
    struct Raw<'j> {
        name: &'j str,
        from: &'j [StreamRef],
        kind: Option<&'j OperatorKind>,
        rollup: Option<&'j RollupNode>,
    }
    let mut raw: Vec<Raw<'_>> = job
        .operators
        .iter()
        .map(|o| Raw {
            name: &o.name,
            from: &o.from,
            kind: Some(&o.kind),
            rollup: None,
        })
        .collect();
    raw.extend(job.rollups.iter().map(|r| Raw {
        name: &r.name,
        from: &r.from,
        kind: None,
        rollup: Some(r),
    }));
    let by_name: BTreeMap<&str, usize> = raw.iter().enumerate().map(|(i, r)| (r.name, i)).collect();

    // Topological order (the loader reports cycles with their place in the file).
    let mut order: Vec<usize> = Vec::with_capacity(raw.len());
    let mut placed = vec![false; raw.len()];
    while order.len() < raw.len() {
        let before = order.len();
        for (i, r) in raw.iter().enumerate() {
            if placed[i] {
                continue;
            }
            let ready = r.from.iter().all(|f| {
                source_index(&f.node).is_some()
                    || by_name.get(f.node.as_str()).is_none_or(|&u| placed[u])
            });
            if ready {
                placed[i] = true;
                order.push(i);
            }
        }
        if order.len() == before {
            return Err(unsupported(
                "the operators' `from` lists make a cycle".into(),
            ));
        }
    }
    let position: BTreeMap<usize, usize> = order.iter().enumerate().map(|(p, &i)| (i, p)).collect();

    let mut nodes: Vec<PlanNode> = Vec::with_capacity(raw.len());
    for &i in &order {
        let r = &raw[i];
        let mut inputs = Vec::with_capacity(r.from.len());
        let mut sampled_input = false;
        for f in r.from {
            if let Some(s) = source_index(&f.node) {
                if f.port != "spans" {
                    return Err(unsupported(format!(
                        "`{}` reads `{f}`; operators read a source's `spans`",
                        r.name
                    )));
                }
                inputs.push(Input::Source(s));
                continue;
            }
            let Some(&u) = by_name.get(f.node.as_str()) else {
                return Err(unsupported(format!("`{}` reads unknown `{f}`", r.name)));
            };
            let Some(&up) = position.get(&u) else {
                return Err(unsupported(format!("`{}` reads unknown `{f}`", r.name)));
            };
            let upstream: &PlanNode = &nodes[up];
            let Some(port) = upstream.ports.iter().position(|p| *p == f.port) else {
                return Err(unsupported(format!(
                    "`{}` reads `{f}`, but `{}` has no output `{}` (it has: {})",
                    r.name,
                    f.node,
                    f.port,
                    upstream.ports.join(", ")
                )));
            };
            sampled_input |= upstream.shape.kind == TailSampler::SHAPE.kind;
            inputs.push(Input::Node { node: up, port });
        }
        let (shape, build, ports) = match (r.kind, r.rollup) {
            (Some(kind), _) => {
                let (shape, build) = kind.build(sampled_input);
                let ports = shape.outputs.iter().map(|p| p.name.to_owned()).collect();
                (shape, build, ports)
            }
            (None, Some(rollup)) => (
                ROLLUP_SHAPE,
                NodeBuild::Rollup(RollupSpec {
                    name: rollup.name.clone(),
                    tables: rollup.from.iter().map(|f| f.port.clone()).collect(),
                    query: rollup.query.clone(),
                    window_ns: rollup.window.as_nanos(),
                    planned: rollup.planned.clone(),
                }),
                vec![rollup.name.clone()],
            ),
            (None, None) => {
                return Err(unsupported(format!(
                    "internal: node `{}` has no kind (this is a bug)",
                    r.name
                )));
            }
        };
        // What each input carries must be what the node reads, and a node reads
        // from where it can run: shard nodes from sources and shard nodes, the
        // global stage from merged nodes.
        for (input, f) in inputs.iter().zip(r.from) {
            let (data, upstream_global) = match *input {
                Input::Source(_) => (DataKind::Spans, false),
                Input::Node { node, port } => {
                    let u = &nodes[node];
                    let data = u.shape.outputs.get(port).map(|p| p.data);
                    (data.unwrap_or(DataKind::Rows), u.outputs_global())
                }
            };
            if data != shape.input {
                return Err(unsupported(format!(
                    "`{}` ({}) reads {}, but `{f}` carries {}",
                    r.name,
                    shape.kind,
                    shape.input.as_str(),
                    data.as_str()
                )));
            }
            let global = matches!(build, NodeBuild::Rollup(_) | NodeBuild::Global(_));
            if upstream_global != global {
                return Err(unsupported(format!(
                    "`{}` cannot read `{f}`: {}",
                    r.name,
                    if global {
                        "rollups and alerts read metric operators' outputs"
                    } else {
                        "only rollups and alerts read metric operators' outputs"
                    }
                )));
            }
        }
        // A rate-limited sampler downstream of another holds traces the first one
        // releases only after its verdicts, so its windows would close before its
        // traces arrive: not supported (yet).
        if matches!(build, NodeBuild::Feedback { .. })
            && let Some(up) = feedback_upstream(&nodes, &inputs)
        {
            return Err(unsupported(format!(
                "`{}` rate-limits traces that `{up}` already held for its own rate limit; \
                 read the session window's `traces` instead, or move the rate limits into \
                 one tail_sampling",
                r.name
            )));
        }
        nodes.push(PlanNode {
            name: r.name.to_owned(),
            shape,
            ports,
            inputs,
            build,
        });
    }

    let targets = plan_targets(job, &nodes, output_dir, member).map_err(unsupported)?;
    Ok(Plan {
        job: job.name.clone(),
        fingerprint: fingerprint(job),
        parallelism: job.parallelism,
        sources: job.sources.iter().map(plan_source).collect(),
        nodes,
        shards: 1,
        targets,
        part_base: 0,
    })
}

/// The nearest feedback node (a rate-limited sampler) upstream of `inputs`, if any.
fn feedback_upstream<'n>(nodes: &'n [PlanNode], inputs: &[Input]) -> Option<&'n str> {
    for i in inputs {
        let Input::Node { node, .. } = *i else {
            continue;
        };
        let n = nodes.get(node)?;
        if matches!(n.build, NodeBuild::Feedback { .. }) {
            return Some(&n.name);
        }
        if let Some(up) = feedback_upstream(nodes, &n.inputs) {
            return Some(up);
        }
    }
    None
}

/// The table kind a stream is written as.
fn table_of(job: &Job, nodes: &[PlanNode], s: &StreamRef) -> Option<Table> {
    if job.sources.iter().any(|src| src.name == s.node) {
        return match s.port.as_str() {
            "spans" => Some(Table::Spans),
            "dead_letters" => Some(Table::DeadLetters),
            _ => None,
        };
    }
    let node = nodes.iter().find(|n| n.name == s.node)?;
    let port = node.ports.iter().position(|p| *p == s.port)?;
    node.shape.outputs.get(port).and_then(|p| p.table)
}

fn plan_targets(
    job: &Job,
    nodes: &[PlanNode],
    output_dir: Option<&std::path::Path>,
    member: Option<&str>,
) -> Result<BTreeMap<(String, String), Vec<TableTarget>>, String> {
    let names = super::table_names(job.sinks.iter().flat_map(|s| &s.from));
    let table_name =
        |s: &StreamRef| -> String { names.get(s).cloned().unwrap_or_else(|| s.port.clone()) };
    let mut targets: BTreeMap<(String, String), Vec<TableTarget>> = BTreeMap::new();
    // Parquet tables by (directory, table), to refuse two sinks writing one.
    let mut files: BTreeMap<(PathBuf, String), &str> = BTreeMap::new();
    for sink in &job.sinks {
        let mut kinds = Vec::with_capacity(sink.from.len());
        for input in &sink.from {
            let kind = table_of(job, nodes, input)
                .ok_or_else(|| format!("sink `{}` cannot write `{input}`", sink.name))?;
            if kind == Table::Spans && job.sources.iter().any(|s| s.name == input.node) {
                return Err(format!(
                    "sink `{}` reads `{input}`: a source's spans are written after a \
                     session window or sampler (read `<sampler>.spans`)",
                    sink.name
                ));
            }
            kinds.push(kind);
        }
        let tables: Vec<Arc<dyn Sink>> = match &sink.kind {
            SinkKind::Parquet(cfg) => {
                let dir = cfg.dir(output_dir);
                let mut out: Vec<Arc<dyn Sink>> = Vec::with_capacity(sink.from.len());
                for input in &sink.from {
                    let table = table_name(input);
                    if let Some(other) = files.insert((dir.clone(), table.clone()), &sink.name)
                        && other != sink.name
                    {
                        return Err(format!(
                            "sinks `{other}` and `{}` both write table `{table}` under `{}`; \
                             give them different `path`s (or do not pass --output-dir)",
                            sink.name,
                            dir.display()
                        ));
                    }
                    let mut t = ParquetTable::new(dir.clone(), &table, cfg.clone());
                    if let Some(m) = member {
                        t = t.of_member(m);
                    }
                    out.push(Arc::new(t));
                }
                out
            }
            SinkKind::Kafka(k) => {
                let config = Arc::new(k.clone());
                let producer = Arc::new(Mutex::new(None));
                let topics: Arc<Vec<String>> = Arc::new(
                    sink.from
                        .iter()
                        .map(|i| k.topic_of(&table_name(i)))
                        .collect(),
                );
                sink.from
                    .iter()
                    .zip(&kinds)
                    .map(|(input, kind)| -> Arc<dyn Sink> {
                        let table = table_name(input);
                        let target = KafkaTarget::new(config.clone(), &table, producer.clone());
                        // Rows are keyed and encoded by their kind, whatever the table's
                        // name.
                        let kind = kind.builtin_name().unwrap_or(&table);
                        Arc::new(KafkaTable::new(target, topics.clone(), kind))
                    })
                    .collect()
            }
            SinkKind::ClickHouse(c) => {
                let mut layouts = Vec::with_capacity(sink.from.len());
                for (input, kind) in sink.from.iter().zip(&kinds) {
                    let name = table_name(input);
                    // Each member writes partial rows of an interval's series; the
                    // tables' ReplacingMergeTree key has no member, so one member's row
                    // would replace another's instead of adding up.
                    let partial = !matches!(
                        kind.builtin_name(),
                        Some("traces" | "spans" | "late_spans" | "dead_letters" | "exemplars")
                    );
                    if let Some(m) = member
                        && partial
                    {
                        return Err(format!(
                            "sink `{}` cannot write `{name}` from group member `{m}`: its \
                             ClickHouse table keeps one row per series and interval, and the \
                             members' partial rows would replace each other; write the \
                             metric tables to Parquet or Kafka (README \"Running a group of \
                             instances\")",
                            sink.name
                        ));
                    }
                    let table = match kind.builtin_name() {
                        None => {
                            let r = rollup_of(job, &input.node)?;
                            SinkTable::rollup(&name, &r.schema, &r.key).map_err(|e| {
                                format!(
                                    "sink `{}` cannot write rollup `{}`: {e}",
                                    sink.name, r.name
                                )
                            })?
                        }
                        Some(builtin) => SinkTable::builtin_as(builtin, &name)
                            .map_err(|e| format!("sink `{}`: {e}", sink.name))?,
                    };
                    layouts.push(table);
                }
                let config = Arc::new(c.as_ref().clone());
                let layouts = Arc::new(layouts);
                let shared = ClickHouseTarget::new_shared();
                sink.from
                    .iter()
                    .map(|input| -> Arc<dyn Sink> {
                        Arc::new(ClickHouseTarget::new(
                            config.clone(),
                            &sink.name,
                            &table_name(input),
                            layouts.clone(),
                            shared.clone(),
                        ))
                    })
                    .collect()
            }
            SinkKind::Alertmanager(c) => {
                if let Some((input, _)) = sink
                    .from
                    .iter()
                    .zip(&kinds)
                    .find(|(_, k)| **k != Table::Alerts)
                {
                    return Err(format!(
                        "sink `{}` (alertmanager) posts alert events; `{input}` is not an \
                         `alerts` node's output",
                        sink.name
                    ));
                }
                sink.from
                    .iter()
                    .map(|_| -> Arc<dyn Sink> {
                        Arc::new(crate::connectors::alertmanager::AlertmanagerSink::new(
                            c.clone(),
                        ))
                    })
                    .collect()
            }
        };
        for ((input, kind), out) in sink.from.iter().zip(kinds).zip(tables) {
            targets
                .entry((input.node.clone(), input.port.clone()))
                .or_default()
                .push(TableTarget {
                    node: input.node.clone(),
                    sink: sink.name.clone(),
                    table: table_name(input),
                    kind,
                    out,
                    rows_written: Default::default(),
                });
        }
    }
    Ok(targets)
}

fn rollup_of<'j>(job: &'j Job, name: &str) -> Result<&'j RollupNode, String> {
    job.rollups
        .iter()
        .find(|r| r.name == name)
        .ok_or_else(|| format!("internal: no rollup `{name}` (this is a bug)"))
}
