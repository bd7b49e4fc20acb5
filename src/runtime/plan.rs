//! Turning a validated [`Job`] into the dataflow graph the runtime executes.
//!
//! Every operator node of the job becomes a [`PlanNode`]: its [`Shape`] (declared by the
//! operator kind), where each input comes from, and how its instances are built. Nodes
//! are in topological order. Each output stream that sinks read gets its
//! [`TableTarget`]s, named after the port (`traces`, `red_metrics`, a rollup's name), or
//! `<node>_<port>` when two streams of the job would otherwise share a table name (two
//! `tail_sampling` nodes, say).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use spanflow_operators::Operator;
use spanflow_operators::operator::{DataKind, PortSpec, Scope, Shape, Table};
use spanflow_operators::tail_sampling::TailSampler;

use crate::connectors::clickhouse::{ClickHouseTarget, SinkTable};
use crate::connectors::kafka::sink::KafkaTarget;
use crate::connectors::parquet::ParquetSinkConfig;
use crate::job::{Job, OperatorKind, RollupNode, SinkKind, SourceNode, StreamRef};

/// Errors planning a job (shapes this version cannot run).
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The DAG has a shape the runtime does not support.
    #[error("job `{job}`: {message}")]
    Unsupported {
        /// Job name.
        job: String,
        /// What is not supported, and what to do instead.
        message: String,
    },
}

/// Where rows of one output stream go.
#[derive(Debug, Clone)]
pub struct TableTarget {
    /// Node whose output this is (filters dead letters by source).
    pub node: String,
    /// Sink node name.
    pub sink: String,
    /// Table name: the output port's, or `<node>_<port>` when that name is taken.
    pub table: String,
    /// The kind of rows (their schema and ClickHouse layout).
    pub kind: Table,
    /// Directory of the Parquet sink.
    pub dir: PathBuf,
    /// Parquet settings.
    pub config: ParquetSinkConfig,
    /// Set when the sink is Kafka (then `dir` and `config` are unused).
    pub kafka: Option<KafkaTarget>,
    /// Set when the sink is ClickHouse (then `dir` and `config` are unused).
    pub clickhouse: Option<ClickHouseTarget>,
    /// Every topic of the target's Kafka sink (created together when asked).
    pub sink_topics: Vec<String>,
    /// Added to the shard number in Parquet part names (a resumed run continues after
    /// the parts it keeps).
    pub part_base: usize,
}

impl TableTarget {
    /// Whether the target writes Parquet files (not Kafka or ClickHouse).
    pub fn is_parquet(&self) -> bool {
        self.kafka.is_none() && self.clickhouse.is_none()
    }
}

/// Builds one instance of an operator for a run with the given number of shards.
pub type Build = Arc<dyn Fn(usize) -> Box<dyn Operator> + Send + Sync>;

/// How a node's instances are built.
#[derive(Clone)]
pub enum NodeBuild {
    /// One instance per shard.
    Shard(Build),
    /// A partial instance per shard and one merge instance.
    Merged {
        /// The per-shard side.
        partial: Build,
        /// The merge side.
        merge: Build,
    },
    /// A per-shard instance whose extra output (the port after the node's declared
    /// ones) goes to one merge instance, whose output comes back to every shard's
    /// instance as an extra input (after the node's `from:` inputs): a decision that
    /// needs all shards' view, such as a sampler's rate limits.
    Feedback {
        /// The per-shard side.
        partial: Build,
        /// The merge side.
        merge: Build,
    },
    /// One instance in the global stage: a rollup (its query is planned when the run
    /// starts).
    Rollup(RollupNode),
}

impl std::fmt::Debug for NodeBuild {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NodeBuild::Shard(_) => "Shard",
            NodeBuild::Merged { .. } => "Merged",
            NodeBuild::Feedback { .. } => "Feedback",
            NodeBuild::Rollup(_) => "Rollup",
        })
    }
}

/// Where one input of a node comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// The spans of source `i` (index into [`Plan::sources`]).
    Source(usize),
    /// Output `port` of node `node` (index into [`Plan::nodes`]).
    Node {
        /// Upstream node.
        node: usize,
        /// Its output port.
        port: usize,
    },
}

/// One operator node of the graph.
#[derive(Debug, Clone)]
pub struct PlanNode {
    /// Node name in the job.
    pub name: String,
    /// The kind's declaration.
    pub shape: Shape,
    /// Output port names, in port order (a rollup's one port is named after it).
    pub ports: Vec<String>,
    /// Inputs, in `from:` order.
    pub inputs: Vec<Input>,
    /// How to build its instances.
    pub build: NodeBuild,
    /// How far behind the source watermark a closed trace reaching this node can end
    /// (the largest gap of the session windows upstream): a feedback node's merge
    /// side completes windows of trace ends at the source watermark less this.
    pub trace_lag: u64,
}

impl PlanNode {
    /// Runs in every shard (its own instances, or the partial side of a merged node).
    pub fn in_shards(&self) -> bool {
        matches!(
            self.build,
            NodeBuild::Shard(_) | NodeBuild::Merged { .. } | NodeBuild::Feedback { .. }
        )
    }

    /// Has an instance in the global stage (a merge side or a rollup).
    pub fn in_global(&self) -> bool {
        matches!(
            self.build,
            NodeBuild::Merged { .. } | NodeBuild::Feedback { .. } | NodeBuild::Rollup(_)
        )
    }

    /// Its outputs are the global stage's (rollups read only those).
    pub fn outputs_global(&self) -> bool {
        matches!(self.build, NodeBuild::Merged { .. } | NodeBuild::Rollup(_))
    }
}

/// The shape of a rollup node: metric intervals in, query rows out.
pub const ROLLUP_SHAPE: Shape = Shape {
    kind: "rollup",
    input: DataKind::Intervals,
    scope: Scope::Global,
    outputs: &[PortSpec {
        name: "",
        data: DataKind::Rows,
        table: Some(Table::Query),
        doc: "the query's result over each closed window (named after the rollup)",
    }],
};

/// The executable graph of a job.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Job name.
    pub job: String,
    /// Sources.
    pub sources: Vec<SourceNode>,
    /// Operator and rollup nodes, in topological order.
    pub nodes: Vec<PlanNode>,
    /// Shards the job runs with (set by the runtime).
    pub shards: usize,
    /// Sink targets per output stream.
    pub targets: BTreeMap<StreamRef, Vec<TableTarget>>,
}

impl Plan {
    /// Plans `job`; `output_dir` overrides every Parquet sink's directory.
    pub fn new(job: &Job, output_dir: Option<&std::path::Path>) -> Result<Plan, PlanError> {
        let unsupported = |message: String| PlanError::Unsupported {
            job: job.name.clone(),
            message,
        };
        let source_index = |name: &str| job.sources.iter().position(|s| s.name == name);

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
        let by_name: BTreeMap<&str, usize> =
            raw.iter().enumerate().map(|(i, r)| (r.name, i)).collect();

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
        let position: BTreeMap<usize, usize> =
            order.iter().enumerate().map(|(p, &i)| (i, p)).collect();

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
                    NodeBuild::Rollup(rollup.clone()),
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
                let global = matches!(build, NodeBuild::Rollup(_));
                if upstream_global != global {
                    return Err(unsupported(format!(
                        "`{}` cannot read `{f}`: {}",
                        r.name,
                        if global {
                            "rollups read metric operators' outputs"
                        } else {
                            "only rollups read metric operators' outputs"
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
            let trace_lag = match r.kind {
                Some(OperatorKind::SessionWindow(c)) => {
                    spanflow_operators::session_window::SessionWindow::trace_end_lag(c)
                }
                _ => inputs
                    .iter()
                    .map(|i| match *i {
                        Input::Source(_) => 0,
                        Input::Node { node, .. } => nodes[node].trace_lag,
                    })
                    .max()
                    .unwrap_or(0),
            };
            nodes.push(PlanNode {
                name: r.name.to_owned(),
                shape,
                ports,
                inputs,
                build,
                trace_lag,
            });
        }

        let targets = plan_targets(job, &nodes, output_dir).map_err(unsupported)?;
        Ok(Plan {
            job: job.name.clone(),
            sources: job.sources.clone(),
            nodes,
            shards: 1,
            targets,
        })
    }

    /// Targets of `node.port` (empty when nothing reads it).
    pub fn targets_of(&self, node: &str, port: &str) -> &[TableTarget] {
        self.targets
            .get(&StreamRef {
                node: node.to_owned(),
                port: port.to_owned(),
            })
            .map_or(&[], Vec::as_slice)
    }

    /// Numbers this run's Parquet parts from `base`.
    pub fn set_part_base(&mut self, base: usize) {
        for t in self.targets.values_mut().flatten() {
            t.part_base = base;
        }
    }

    /// Every target, for preparing directories.
    pub fn all_targets(&self) -> impl Iterator<Item = &TableTarget> {
        self.targets.values().flatten()
    }

    /// Dead-letter targets of any source.
    pub fn dead_letter_targets(&self) -> Vec<TableTarget> {
        self.targets
            .iter()
            .filter(|(k, _)| {
                k.port == "dead_letters" && self.sources.iter().any(|s| s.name == k.node)
            })
            .flat_map(|(_, v)| v.clone())
            .collect()
    }
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
) -> Result<BTreeMap<StreamRef, Vec<TableTarget>>, String> {
    let names = crate::job::table_names(job.sinks.iter().flat_map(|s| &s.from));
    let table_name =
        |s: &StreamRef| -> String { names.get(s).cloned().unwrap_or_else(|| s.port.clone()) };
    let mut targets: BTreeMap<StreamRef, Vec<TableTarget>> = BTreeMap::new();
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
        let kafka = match &sink.kind {
            SinkKind::Kafka(k) => Some((
                Arc::new(k.clone()),
                Arc::new(Mutex::new(None)),
                sink.from
                    .iter()
                    .map(|i| k.topic_of(&table_name(i)))
                    .collect::<Vec<_>>(),
            )),
            SinkKind::Parquet(_) | SinkKind::ClickHouse(_) => None,
        };
        let clickhouse = match &sink.kind {
            SinkKind::ClickHouse(c) => {
                let mut tables = Vec::with_capacity(sink.from.len());
                for (input, kind) in sink.from.iter().zip(&kinds) {
                    let name = table_name(input);
                    let table = match kind.builtin_name() {
                        None => {
                            let r = job
                                .rollups
                                .iter()
                                .find(|r| r.name == input.node)
                                .ok_or_else(|| {
                                    format!("internal: no rollup `{}` (this is a bug)", input.node)
                                })?;
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
                    tables.push(table);
                }
                Some((
                    Arc::new(c.as_ref().clone()),
                    ClickHouseTarget::new_shared(),
                    Arc::new(tables),
                ))
            }
            SinkKind::Parquet(_) | SinkKind::Kafka(_) => None,
        };
        let parquet = match &sink.kind {
            SinkKind::Parquet(cfg) => cfg.clone(),
            SinkKind::Kafka(_) | SinkKind::ClickHouse(_) => ParquetSinkConfig::default(),
        };
        for (input, kind) in sink.from.iter().zip(kinds) {
            let table = table_name(input);
            targets.entry(input.clone()).or_default().push(TableTarget {
                node: input.node.clone(),
                sink: sink.name.clone(),
                kind,
                dir: if kafka.is_some() || clickhouse.is_some() {
                    PathBuf::new()
                } else {
                    parquet.dir(output_dir)
                },
                config: parquet.clone(),
                kafka: kafka
                    .as_ref()
                    .map(|(c, p, _)| KafkaTarget::new(c.clone(), &table, p.clone())),
                clickhouse: clickhouse.as_ref().map(|(c, shared, outputs)| {
                    ClickHouseTarget::new(
                        c.clone(),
                        &sink.name,
                        &table,
                        outputs.clone(),
                        shared.clone(),
                    )
                }),
                sink_topics: kafka.as_ref().map(|k| k.2.clone()).unwrap_or_default(),
                part_base: 0,
                table,
            });
        }
    }
    let mut seen: BTreeMap<(PathBuf, String), &str> = BTreeMap::new();
    for t in targets.values().flatten().filter(|t| t.is_parquet()) {
        if let Some(other) = seen.insert((t.dir.clone(), t.table.clone()), &t.sink)
            && other != t.sink
        {
            return Err(format!(
                "sinks `{other}` and `{}` both write table `{}` under `{}`; give them different `path`s \
                 (or do not pass --output-dir)",
                t.sink,
                t.table,
                t.dir.display()
            ));
        }
    }
    Ok(targets)
}
