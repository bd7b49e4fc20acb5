//! Rollups inside a job: the merge task hands each rollup the metric intervals it
//! closes; a rollup collects them per window of event time and, once the watermark has
//! passed the window's end (the rule that closes the intervals themselves), runs its
//! query over the window's rows and writes the result to its sinks.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use spanflow_operators::metrics::ClosedInterval;

use super::metrics::MetricOp;
use super::shard::Port;
use super::{RunError, TableTarget};
use crate::job::RollupNode;
use crate::sql::rollup::RollupQuery;
use crate::tables::{BatchRows, ExemplarRows, MetricRows, TableRows};

/// One input table of a rollup's query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Input {
    RedMetrics,
    Exemplars,
    ServiceRelation,
}

impl Input {
    fn op(self) -> MetricOp {
        match self {
            Input::RedMetrics | Input::Exemplars => MetricOp::Red,
            Input::ServiceRelation => MetricOp::Graph,
        }
    }
}

/// The closed intervals of one window, per metric operator.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Window {
    red: Vec<ClosedInterval>,
    graph: Vec<ClosedInterval>,
}

/// A rollup's open windows, kept in a savepoint.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub(crate) struct RollupState {
    /// By window start (unix ns).
    windows: BTreeMap<u64, Window>,
}

/// Histogram bounds of the metric operators, for turning intervals into rows.
pub(crate) struct Bounds<'a> {
    pub red: &'a [f64],
    pub graph: &'a [f64],
}

pub(crate) struct RollupSide {
    pub name: String,
    query: RollupQuery,
    inputs: Vec<Input>,
    window_ns: u64,
    state: RollupState,
    port: Port<BatchRows>,
    /// Windows whose query ran.
    pub windows_run: u64,
}

impl RollupSide {
    /// Plans the rollup's query (it planned when the job was loaded, so this does not
    /// fail for a validated job) and opens its sinks.
    pub async fn new(
        node: &RollupNode,
        targets: &[TableTarget],
        discard: bool,
        restored: Option<RollupState>,
    ) -> Result<Self, RunError> {
        let mut inputs = Vec::new();
        let mut tables = Vec::new();
        for s in &node.from {
            let input = match s.port.as_str() {
                "red_metrics" => Input::RedMetrics,
                "exemplars" => Input::Exemplars,
                "service_relation" => Input::ServiceRelation,
                other => {
                    return Err(RunError::Internal(format!(
                        "rollup `{}` reads `{other}`, which is not a metric table",
                        node.name
                    )));
                }
            };
            let schema = crate::tables::schema(&s.port)
                .ok_or_else(|| RunError::Internal(format!("no schema for `{}`", s.port)))?;
            inputs.push(input);
            tables.push((s.port.clone(), schema));
        }
        let query = RollupQuery::plan(&node.query, &tables)
            .await
            .map_err(|e| rollup_error(&node.name, &e.to_string()))?;
        let port = Port::new(
            BatchRows::new(&node.name, query.schema()),
            targets,
            0,
            discard,
        )?;
        Ok(RollupSide {
            name: node.name.clone(),
            query,
            inputs,
            window_ns: node.window.as_nanos().max(1),
            state: restored.unwrap_or_default(),
            port,
            windows_run: 0,
        })
    }

    /// Takes a closed interval of `op` if the query reads that operator's tables.
    pub fn add(&mut self, op: MetricOp, ci: &ClosedInterval) {
        if !self.inputs.iter().any(|i| i.op() == op) {
            return;
        }
        let start = ci.start_ns - ci.start_ns % self.window_ns;
        let w = self.state.windows.entry(start).or_default();
        match op {
            MetricOp::Red => w.red.push(ci.clone()),
            MetricOp::Graph => w.graph.push(ci.clone()),
        }
    }

    /// Runs the query of every window the watermark `wm` (the minimum over shards) has
    /// passed.
    pub async fn on_watermark(&mut self, wm: u64, bounds: &Bounds<'_>) -> Result<(), RunError> {
        while let Some((&start, _)) = self.state.windows.first_key_value() {
            let end = start.saturating_add(self.window_ns);
            if end > wm.saturating_add(1) {
                break;
            }
            let Some((_, window)) = self.state.windows.pop_first() else {
                break;
            };
            self.run(&window, bounds).await?;
        }
        Ok(())
    }

    async fn run(&mut self, window: &Window, bounds: &Bounds<'_>) -> Result<(), RunError> {
        let mut tables = Vec::with_capacity(self.inputs.len());
        for input in &self.inputs {
            let batch = match input {
                Input::RedMetrics => rows_of(
                    MetricRows::red_metrics(),
                    MetricRows::push_interval,
                    &window.red,
                    bounds.red,
                ),
                Input::Exemplars => rows_of(
                    ExemplarRows::default(),
                    ExemplarRows::push_interval,
                    &window.red,
                    bounds.red,
                ),
                Input::ServiceRelation => rows_of(
                    MetricRows::service_relation(),
                    MetricRows::push_interval,
                    &window.graph,
                    bounds.graph,
                ),
            };
            tables.push(vec![batch]);
        }
        let out = self
            .query
            .run(tables)
            .await
            .map_err(|e| rollup_error(&self.name, &e.to_string()))?;
        self.windows_run += 1;
        for b in out {
            self.port.rows.push(b);
        }
        self.port.maybe_flush(false)
    }

    /// Closes the sinks; returns the windows still open (for a savepoint).
    pub fn close(self, outputs: &mut Vec<(TableTarget, u64)>) -> Result<RollupState, RunError> {
        self.port.close(outputs)?;
        Ok(self.state)
    }
}

/// The rows of `intervals` as one batch of `rows`' table.
fn rows_of<R: TableRows>(
    mut rows: R,
    push: fn(&mut R, &ClosedInterval, &[f64]),
    intervals: &[ClosedInterval],
    bounds: &[f64],
) -> arrow::record_batch::RecordBatch {
    for ci in intervals {
        push(&mut rows, ci, bounds);
    }
    rows.finish()
}

fn rollup_error(name: &str, message: &str) -> RunError {
    RunError::Rollup {
        name: name.to_owned(),
        message: message.to_owned(),
    }
}
