//! The global stage: the merge side of every merged node (fed by all shards' partials,
//! its watermark the minimum of the shards') and everything downstream of them
//! (rollups), with the tables they write.

use spanflow_operators::WATERMARK_END;
use spanflow_operators::operator::{Report, Table};
use tokio::sync::mpsc;

use super::checkpoint::Part;
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
}

/// A checkpoint barrier the global stage is aligning: it has the barrier of the
/// shards marked, and holds back what those shards sent after it.
struct Aligning {
    id: u64,
    last: bool,
    passed: Vec<bool>,
    held: Vec<GlobalMsg>,
}

pub(crate) struct Global {
    exec: Executor,
    /// To every shard, for feedback nodes' answers.
    feedback: Vec<mpsc::UnboundedSender<Feedback>>,
    /// Per plan node: each shard's forwarded watermark (merged nodes only).
    shard_wms: Vec<Vec<u64>>,
    /// Executor node of each plan node.
    exec_of_plan: Vec<Option<usize>>,
    shards: usize,
    parts: mpsc::UnboundedSender<Part>,
    /// Where watchers of the run read the nodes' reports (alerts' counts).
    progress: std::sync::Arc<super::Progress>,
    reported: Option<std::time::Instant>,
}

impl Global {
    /// Builds the stage, or `None` when the job has no merged node.
    pub async fn new(
        plan: &Plan,
        progress: std::sync::Arc<super::Progress>,
        discard: bool,
        restore: Vec<(Vec<NodeSnapshot>, super::shard::Taken)>,
        parts: mpsc::UnboundedSender<Part>,
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
                NodeBuild::Rollup(_) | NodeBuild::Global(_) => {
                    let mut ups = Vec::new();
                    let mut kinds = Vec::new();
                    for (k, input) in pn.inputs.iter().enumerate() {
                        let Input::Node { node: up, port } = *input else {
                            return Err(RunError::Internal(format!(
                                "`{}` reads a source in the global stage",
                                pn.name
                            )));
                        };
                        let Some(e) = exec_of_plan[up] else {
                            return Err(RunError::Internal(format!(
                                "`{}` reads a shard node",
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
                    match &pn.build {
                        NodeBuild::Rollup(node) => {
                            let op = RollupOp::new(node, kinds).await?;
                            let schema = op.schema();
                            (
                                Box::new(op) as Box<dyn spanflow_operators::Operator>,
                                ups,
                                Some(schema),
                            )
                        }
                        NodeBuild::Global(build) => (build(1), ups, None),
                        _ => {
                            return Err(RunError::Internal(format!(
                                "`{}` is not a global node",
                                pn.name
                            )));
                        }
                    }
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
        if progress.metrics.lock().is_ok_and(|m| m.is_some()) {
            exec.watch_metrics(progress.clone());
        }
        match restore.len() {
            0 => {}
            // One stage's state, all of it: as it was.
            1 if restore[0].1.is_whole() => {
                if let Some((states, _)) = restore.into_iter().next() {
                    exec.restore(states)?;
                }
            }
            _ => exec.restore_share(&restore, 0, 1)?,
        }
        Ok(Some(Global {
            exec,
            feedback: Vec::new(),
            shard_wms: vec![vec![0; plan.shards.max(1)]; plan.nodes.len()],
            exec_of_plan,
            shards: plan.shards.max(1),
            parts,
            progress,
            reported: None,
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
                let _ = tx.send(Feedback::Batch {
                    node,
                    batch: batch.clone(),
                });
            }
        }
    }

    /// Runs until every shard has hung up; blocking (a rollup's query runs on the
    /// runtime from here).
    pub fn run(mut self, mut rx: mpsc::Receiver<GlobalMsg>) -> Result<GlobalResult, RunError> {
        let mut aligning: Option<Aligning> = None;
        let mut stopped = false;
        let mut queue = std::collections::VecDeque::new();
        while let Some(msg) = rx.blocking_recv() {
            queue.push_back(msg);
            while let Some(msg) = queue.pop_front() {
                if stopped {
                    queue.clear();
                    break;
                }
                let shard = match &msg {
                    GlobalMsg::Step { shard, .. }
                    | GlobalMsg::Watermark { shard, .. }
                    | GlobalMsg::Barrier { shard, .. } => *shard,
                    GlobalMsg::Batch { .. } => {
                        return Err(RunError::Internal("a batch outside a step".into()));
                    }
                };
                if let Some(a) = aligning.as_mut()
                    && a.passed.get(shard).copied().unwrap_or(false)
                {
                    a.held.push(msg);
                    continue;
                }
                let GlobalMsg::Barrier { id, last, .. } = msg else {
                    self.step(msg)?;
                    self.publish_reports(false);
                    continue;
                };
                let a = aligning.get_or_insert_with(|| Aligning {
                    id,
                    last,
                    passed: vec![false; self.shards],
                    held: Vec::new(),
                });
                if a.id != id {
                    return Err(RunError::Internal(format!(
                        "barrier {id} arrived while aligning {}",
                        a.id
                    )));
                }
                if let Some(p) = a.passed.get_mut(shard) {
                    *p = true;
                }
                if a.passed.iter().all(|p| *p)
                    && let Some(a) = aligning.take()
                {
                    self.checkpoint(a.id)?;
                    stopped = a.last;
                    // What the shards sent after the barrier, before what is queued.
                    for held in a.held.into_iter().rev() {
                        queue.push_front(held);
                    }
                }
            }
        }
        self.feedback.clear();
        let ended = self.exec.nodes.iter().all(|n| n.in_wm == WATERMARK_END);
        if ended && !stopped {
            self.exec.end()?;
        }
        self.publish_reports(true);
        let reports = self.exec.reports();
        let mut outputs = Vec::new();
        self.exec.close(&mut outputs)?;
        Ok(GlobalResult { reports, outputs })
    }

    /// Publishes the reports only this stage has (alerts' counts; merged nodes report
    /// from the shards) for watchers of the run, at most once a second and at the end.
    fn publish_reports(&mut self, last: bool) {
        if !super::shard::due(&mut self.reported, last) {
            return;
        }
        let Ok(mut r) = self.progress.reports.lock() else {
            return;
        };
        for n in &self.exec.nodes {
            let report = n.op.report();
            if matches!(report, Report::Alerts(_)) {
                // Keyed past every shard's index: the stage is one instance.
                r.insert((usize::MAX, n.name.clone()), report);
            }
        }
    }

    /// Snapshots the stage for checkpoint `id`, pre-commits its writers and tells
    /// every shard (the marker ends the feedback they record for it).
    fn checkpoint(&mut self, id: u64) -> Result<(), RunError> {
        let t0 = std::time::Instant::now();
        let states = self.exec.snapshot()?;
        let pending = self.exec.precommit()?;
        let stall = t0.elapsed();
        let _ = self.parts.send(Part::Global {
            id,
            states,
            pending,
            stall,
        });
        for tx in &self.feedback {
            let _ = tx.send(Feedback::Marker(id));
        }
        Ok(())
    }

    /// Handles one message of a shard: its batches go to the merge sides, and one
    /// watermark pass follows a step whatever it carried.
    fn step(&mut self, msg: GlobalMsg) -> Result<(), RunError> {
        let msgs = match msg {
            GlobalMsg::Step { msgs, .. } => msgs,
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
                    if let Some(w) = self.shard_wms.get_mut(node).and_then(|v| v.get_mut(shard)) {
                        *w = (*w).max(watermark);
                        advanced = true;
                    }
                }
                GlobalMsg::Step { .. } | GlobalMsg::Barrier { .. } => {
                    return Err(RunError::Internal("a nested step message".into()));
                }
            }
        }
        if advanced {
            let wms = &self.shard_wms;
            self.exec.advance(0, &|pi| {
                wms.get(pi)
                    .and_then(|v| v.iter().copied().min())
                    .unwrap_or(0)
            })?;
        }
        self.broadcast();
        Ok(())
    }
}
