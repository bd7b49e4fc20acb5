//! The global stage: the merge side of every merged node (fed by all shards' partials,
//! its watermark the minimum of the shards') and everything downstream of them
//! (rollups), with the tables they write.

use spanflow_operators::WATERMARK_END;
use spanflow_operators::operator::{Report, Table};
use tokio::sync::mpsc;

use super::plan::{Input, NodeBuild, Plan};
use super::rollup::RollupOp;
use super::shard::{
    ExecNode, Executor, Feedback, GlobalMsg, NodeSnapshot, TableSink, Target, Upstream,
    table_consumers,
};
use super::{RunError, TableTarget};

/// What the global stage reports.
pub(crate) struct GlobalResult {
    pub reports: Vec<(usize, Report)>,
    pub outputs: Vec<(TableTarget, u64)>,
    /// Set when the run stopped for a savepoint.
    pub snapshot: Option<Vec<NodeSnapshot>>,
}

pub(crate) struct Global {
    exec: Executor,
    /// To every shard, for feedback nodes' answers.
    feedback: Vec<mpsc::UnboundedSender<Feedback>>,
    /// Per plan node: each shard's forwarded watermark (merged nodes only).
    shard_wms: Vec<Vec<u64>>,
    /// Executor node of each plan node.
    exec_of_plan: Vec<Option<usize>>,
}

impl Global {
    /// Builds the stage, or `None` when the job has no merged node.
    pub async fn new(
        plan: &Plan,
        discard: bool,
        restore: Option<Vec<NodeSnapshot>>,
    ) -> Result<Option<Self>, RunError> {
        if !plan.nodes.iter().any(|n| n.in_global()) {
            return Ok(None);
        }
        let mut exec_of_plan: Vec<Option<usize>> = vec![None; plan.nodes.len()];
        let mut nodes: Vec<ExecNode> = Vec::new();
        let mut tables: Vec<TableSink> = Vec::new();
        for (pi, pn) in plan.nodes.iter().enumerate() {
            let (op, inputs, query): (Box<dyn spanflow_operators::Operator>, _, _) = match &pn.build
            {
                NodeBuild::Shard(_) => continue,
                NodeBuild::Merged { merge, .. } | NodeBuild::Feedback { merge, .. } => {
                    (merge(plan.shards), vec![Upstream::Shards], None)
                }
                NodeBuild::Rollup(node) => {
                    let mut ups = Vec::new();
                    let mut kinds = Vec::new();
                    for (k, input) in pn.inputs.iter().enumerate() {
                        let Input::Node { node: up, port } = *input else {
                            return Err(RunError::Internal(format!(
                                "rollup `{}` reads a source",
                                pn.name
                            )));
                        };
                        let Some(e) = exec_of_plan[up] else {
                            return Err(RunError::Internal(format!(
                                "rollup `{}` reads a shard node",
                                pn.name
                            )));
                        };
                        let kind = plan.nodes[up]
                            .shape
                            .outputs
                            .get(port)
                            .and_then(|p| p.table)
                            .unwrap_or(Table::Query);
                        kinds.push(kind);
                        ups.push(Upstream::Node(e));
                        let me = nodes.len();
                        nodes[e].consumers[port].push(Target::Node { node: me, input: k });
                    }
                    let op = RollupOp::new(node, kinds).await?;
                    let schema = op.schema();
                    (
                        Box::new(op) as Box<dyn spanflow_operators::Operator>,
                        ups,
                        Some(schema),
                    )
                }
            };
            let consumers = if let NodeBuild::Feedback { .. } = pn.build {
                // The merge side's one output goes back to every shard.
                vec![vec![Target::Broadcast { node: pi }]]
            } else {
                let mut consumers: Vec<Vec<Target>> = vec![Vec::new(); pn.ports.len()];
                table_consumers(
                    plan,
                    pi,
                    0,
                    discard,
                    query.as_ref(),
                    &mut tables,
                    &mut consumers,
                )?;
                consumers
            };
            exec_of_plan[pi] = Some(nodes.len());
            nodes.push(ExecNode::new(plan, pi, op, inputs, consumers));
        }
        let mut exec = Executor::new(nodes, tables);
        if let Some(states) = restore {
            exec.restore(states)?;
        }
        Ok(Some(Global {
            exec,
            feedback: Vec::new(),
            shard_wms: vec![vec![0; plan.shards.max(1)]; plan.nodes.len()],
            exec_of_plan,
        }))
    }

    /// A channel to each of `shards` shards for the answers of feedback nodes; the
    /// receivers go to the shards.
    pub fn connect(&mut self, shards: usize) -> Vec<mpsc::UnboundedReceiver<Feedback>> {
        (0..shards)
            .map(|_| {
                let (tx, rx) = mpsc::unbounded_channel();
                self.feedback.push(tx);
                rx
            })
            .collect()
    }

    /// Sends what feedback nodes emitted to every shard. The channels are unbounded so
    /// that this stage never waits for a shard that waits for it; what they carry is
    /// small (one verdict per rate-limit window and endpoint).
    fn broadcast(&mut self) {
        for (node, batch) in std::mem::take(&mut self.exec.to_shards) {
            for tx in &self.feedback {
                // A shard that stopped (for a savepoint) no longer listens.
                let _ = tx.send(Feedback {
                    node,
                    batch: batch.clone(),
                });
            }
        }
    }

    /// Runs until every shard has hung up; blocking (a rollup's query runs on the
    /// runtime from here).
    pub fn run(mut self, mut rx: mpsc::Receiver<GlobalMsg>) -> Result<GlobalResult, RunError> {
        while let Some(msg) = rx.blocking_recv() {
            let msgs = match msg {
                GlobalMsg::Step(msgs) => msgs,
                one => vec![one],
            };
            let mut advanced = false;
            for msg in msgs {
                match msg {
                    GlobalMsg::Batch { node, batch } => {
                        let Some(Some(e)) = self.exec_of_plan.get(node).copied() else {
                            return Err(RunError::Internal(format!("no global node for {node}")));
                        };
                        self.exec.deliver(e, 0, batch)?;
                    }
                    GlobalMsg::Watermark {
                        shard,
                        node,
                        watermark,
                    } => {
                        if let Some(w) = self.shard_wms.get_mut(node).and_then(|v| v.get_mut(shard))
                        {
                            *w = (*w).max(watermark);
                            advanced = true;
                        }
                    }
                    GlobalMsg::Step(_) => {
                        return Err(RunError::Internal("a nested step message".into()));
                    }
                }
            }
            // One pass per shard step, whatever it carried.
            if advanced {
                let wms = &self.shard_wms;
                self.exec.advance(0, &|pi| {
                    wms.get(pi)
                        .and_then(|v| v.iter().copied().min())
                        .unwrap_or(0)
                })?;
            }
            self.broadcast();
        }
        self.feedback.clear();
        let ended = self.exec.nodes.iter().all(|n| n.in_wm == WATERMARK_END);
        let snapshot = if ended {
            self.exec.end()?;
            None
        } else {
            Some(self.exec.snapshot()?)
        };
        let reports = self.exec.reports();
        let mut outputs = Vec::new();
        self.exec.close(&mut outputs)?;
        Ok(GlobalResult {
            reports,
            outputs,
            snapshot,
        })
    }
}
