//! Rollups inside a job, as an operator of the global stage: a rollup collects the
//! closed metric intervals of its inputs per window of event time and, once the
//! watermark has passed the window's end (the rule that closes the intervals
//! themselves), runs its query over the window's rows and emits the result.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use spanflow_operators::EventTime;
use spanflow_operators::metrics::ClosedInterval;
use spanflow_operators::operator::{
    Batch, Emitter, Operator, OperatorError, Report, Table, decode_state, encode_state,
};

use super::RunError;
use crate::sql::rollup::{QueryPool, RollupQuery};
use crate::tables::{ExemplarRows, MetricRows, TableRows};

/// What the runtime needs of a rollup.
#[derive(Debug, Clone)]
pub struct RollupSpec {
    /// Its name, which is also its output's.
    pub name: String,
    /// The table name the query reads each input as (`red_metrics`, ...), in input
    /// order.
    pub tables: Vec<String>,
    /// The SQL text.
    pub query: String,
    /// Rows of upstream intervals that start in one window are queried together.
    pub window_ns: u64,
    /// The query planned once for the job's runs; a run plans its own when it is empty.
    pub planned: QueryPool,
}

/// A rollup's open windows and its inputs' bucket bounds, kept in a savepoint.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct RollupState {
    /// By window start (unix ns): the closed intervals of each input.
    windows: BTreeMap<u64, Vec<Vec<ClosedInterval>>>,
    /// Bucket bounds (seconds) of each input, once seen.
    bounds: Vec<Vec<f64>>,
    /// Windows whose query ran.
    windows_run: u64,
}

/// A rollup.
pub(crate) struct RollupOp {
    name: String,
    /// Always `Some` until the operator is dropped and gives it back to `pool`.
    query: Option<RollupQuery>,
    pool: QueryPool,
    schema: arrow::datatypes::SchemaRef,
    /// The table each input is seen as.
    inputs: Vec<Table>,
    window_ns: u64,
    state: RollupState,
    /// Runs the query (DataFusion is async); the global stage runs on a blocking
    /// thread of this runtime.
    handle: tokio::runtime::Handle,
}

impl RollupOp {
    /// Takes the rollup's planned query from the job, or plans it (it was planned when
    /// the job was loaded, so this does not fail for a validated job); `inputs` are the
    /// tables of its `from:` entries.
    pub async fn new(node: &RollupSpec, inputs: Vec<Table>) -> Result<Self, RunError> {
        let query = match node.planned.take() {
            Some(q) => q,
            None => Self::plan(node, &inputs).await?,
        };
        let n = inputs.len();
        Ok(RollupOp {
            name: node.name.clone(),
            schema: query.schema(),
            query: Some(query),
            pool: node.planned.clone(),
            inputs,
            window_ns: node.window_ns.max(1),
            state: RollupState {
                bounds: vec![Vec::new(); n],
                ..RollupState::default()
            },
            handle: tokio::runtime::Handle::current(),
        })
    }

    async fn plan(node: &RollupSpec, inputs: &[Table]) -> Result<RollupQuery, RunError> {
        let mut tables = Vec::new();
        for (name, kind) in node.tables.iter().zip(inputs) {
            let schema = kind
                .builtin_name()
                .and_then(crate::tables::schema)
                .ok_or_else(|| RunError::Internal(format!("no schema for `{name}`")))?;
            tables.push((name.clone(), schema));
        }
        RollupQuery::plan(&node.query, &tables)
            .await
            .map_err(|e| RunError::Rollup {
                name: node.name.clone(),
                message: e.to_string(),
            })
    }

    /// The schema of its result rows.
    pub fn schema(&self) -> arrow::datatypes::SchemaRef {
        self.schema.clone()
    }

    fn run(
        &mut self,
        window: &[Vec<ClosedInterval>],
        out: &mut Emitter,
    ) -> Result<(), OperatorError> {
        let mut tables = Vec::with_capacity(self.inputs.len());
        for (i, kind) in self.inputs.iter().enumerate() {
            let intervals = window.get(i).map_or(&[][..], Vec::as_slice);
            let bounds = self.state.bounds.get(i).map_or(&[][..], Vec::as_slice);
            let batch = match kind {
                Table::RedMetrics => rows_of(
                    MetricRows::red_metrics(),
                    MetricRows::push_interval,
                    intervals,
                    bounds,
                ),
                Table::ServiceRelation => rows_of(
                    MetricRows::service_relation(),
                    MetricRows::push_interval,
                    intervals,
                    bounds,
                ),
                Table::Exemplars => rows_of(
                    ExemplarRows::default(),
                    ExemplarRows::push_interval,
                    intervals,
                    bounds,
                ),
                other => {
                    return Err(OperatorError::Internal(format!(
                        "rollup `{}` reads {other:?}",
                        self.name
                    )));
                }
            };
            tables.push(vec![batch]);
        }
        let Some(query) = &self.query else {
            return Err(OperatorError::Internal(format!(
                "rollup `{}` has no query",
                self.name
            )));
        };
        let result = self
            .handle
            .block_on(query.run(tables))
            .map_err(|e| OperatorError::Execution(e.to_string()))?;
        self.state.windows_run += 1;
        for b in result {
            out.emit(0, Batch::Other(Arc::new(b)));
        }
        Ok(())
    }
}

impl Drop for RollupOp {
    fn drop(&mut self) {
        if let Some(q) = self.query.take() {
            self.pool.put_back(q);
        }
    }
}

impl Operator for RollupOp {
    fn process(
        &mut self,
        input: usize,
        batch: Batch,
        _out: &mut Emitter,
    ) -> Result<(), OperatorError> {
        let Batch::Intervals(b) = batch else {
            return Err(OperatorError::unexpected("rollup", input, &batch));
        };
        let n = self.inputs.len();
        if let Some(bounds) = self.state.bounds.get_mut(input)
            && bounds.is_empty()
        {
            *bounds = b.buckets.bounds_seconds();
        }
        for ci in b.intervals {
            let start = ci.start_ns - ci.start_ns % self.window_ns;
            let w = self
                .state
                .windows
                .entry(start)
                .or_insert_with(|| vec![Vec::new(); n]);
            if let Some(v) = w.get_mut(input) {
                v.push(Arc::unwrap_or_clone(ci));
            }
        }
        Ok(())
    }

    fn on_watermark(
        &mut self,
        watermark: EventTime,
        out: &mut Emitter,
    ) -> Result<EventTime, OperatorError> {
        while let Some((&start, _)) = self.state.windows.first_key_value() {
            let end = start.saturating_add(self.window_ns);
            if end > watermark.saturating_add(1) {
                break;
            }
            let Some((_, window)) = self.state.windows.pop_first() else {
                break;
            };
            self.run(&window, out)?;
        }
        Ok(watermark)
    }

    fn snapshot(&self) -> Result<Vec<u8>, OperatorError> {
        encode_state(&self.state)
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), OperatorError> {
        self.state = decode_state(state)?;
        Ok(())
    }

    fn report(&self) -> Report {
        Report::Windows(self.state.windows_run)
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
