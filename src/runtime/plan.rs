//! The dataflow graph the runtime executes, as the job's planner (`job/plan.rs`) builds
//! it: sources, operator nodes in topological order (each with its [`Shape`], where each
//! input comes from and how its instances are built), and per output stream the
//! [`TableTarget`]s its sinks write.

use std::collections::BTreeMap;
use std::sync::Arc;

use spanflow_operators::Operator;
use spanflow_operators::operator::{DataKind, PortSpec, Scope, Shape, Table};

use super::io::{Sink, Source};
use super::rollup::RollupSpec;
use super::watermark::WatermarkSettings;

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
    /// The sink's table.
    pub out: Arc<dyn Sink>,
    /// Rows handed to its writers so far (all shards), for live figures.
    pub rows_written: Arc<std::sync::atomic::AtomicU64>,
}

impl TableTarget {
    /// Key of its state in a savepoint.
    pub(crate) fn key(&self) -> String {
        format!("{}/{}", self.sink, self.table)
    }
}

/// Opens a source for one run.
pub type OpenSource = Arc<dyn Fn() -> Box<dyn Source> + Send + Sync>;

/// A source of the plan.
#[derive(Clone)]
pub struct PlanSource {
    /// Node name (dead letters name it).
    pub name: String,
    /// Its splits' watermark settings.
    pub watermark: WatermarkSettings,
    /// Makes the source (once per run).
    pub open: OpenSource,
}

impl std::fmt::Debug for PlanSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlanSource")
            .field("name", &self.name)
            .field("watermark", &self.watermark)
            .finish_non_exhaustive()
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
        /// The merge side only acts when the watermark reaches `k * grain - 1` (its
        /// windows end at multiples of `grain` ns): shards send it no other
        /// watermark, so the global stage wakes once per grain, not per batch.
        grain: u64,
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
        /// As for [`NodeBuild::Merged`].
        grain: u64,
    },
    /// One instance in the global stage: a rollup (its query is planned when the run
    /// starts).
    Rollup(RollupSpec),
    /// One instance in the global stage, downstream of merged nodes (`alerts`).
    Global(Build),
}

impl std::fmt::Debug for NodeBuild {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NodeBuild::Shard(_) => "Shard",
            NodeBuild::Merged { .. } => "Merged",
            NodeBuild::Feedback { .. } => "Feedback",
            NodeBuild::Rollup(_) => "Rollup",
            NodeBuild::Global(_) => "Global",
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
            NodeBuild::Merged { .. }
                | NodeBuild::Feedback { .. }
                | NodeBuild::Rollup(_)
                | NodeBuild::Global(_)
        )
    }

    /// Its outputs are the global stage's (rollups read only those).
    pub fn outputs_global(&self) -> bool {
        matches!(
            self.build,
            NodeBuild::Merged { .. } | NodeBuild::Rollup(_) | NodeBuild::Global(_)
        )
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
    /// A fingerprint of what the job computes and where it writes: a savepoint is only
    /// restored into the same computation.
    pub fingerprint: u64,
    /// The job's parallelism, when it sets one.
    pub parallelism: Option<usize>,
    /// Sources.
    pub sources: Vec<PlanSource>,
    /// Operator and rollup nodes, in topological order.
    pub nodes: Vec<PlanNode>,
    /// Shards the job runs with (set by the runtime).
    pub shards: usize,
    /// Sink targets per output stream, by (node, port).
    pub targets: BTreeMap<(String, String), Vec<TableTarget>>,
    /// Added to the shard number in part names (a resumed run continues after the
    /// parts it keeps; set by the runtime).
    pub part_base: usize,
}

impl Plan {
    /// Targets of `node.port` (empty when nothing reads it).
    pub fn targets_of(&self, node: &str, port: &str) -> &[TableTarget] {
        self.targets
            .get(&(node.to_owned(), port.to_owned()))
            .map_or(&[], Vec::as_slice)
    }

    /// Every target.
    pub fn all_targets(&self) -> impl Iterator<Item = &TableTarget> {
        self.targets.values().flatten()
    }

    /// Dead-letter targets of any source.
    pub fn dead_letter_targets(&self) -> Vec<TableTarget> {
        self.targets
            .iter()
            .filter(|((node, port), _)| {
                port == "dead_letters" && self.sources.iter().any(|s| s.name == *node)
            })
            .flat_map(|(_, v)| v.clone())
            .collect()
    }
}
