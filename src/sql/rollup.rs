//! A rollup's query (and an alert rule's, `alert.rs`): planned once, when the job is loaded, against empty tables with
//! its inputs' schemas; run once per closed window over that window's rows.
//!
//! The tables read their rows from slots filled before each run (`window_table.rs`),
//! so the physical plan is made and optimized once, when the rollup is planned, and
//! each window only executes it (planning costs far more than running one window).

use std::sync::{Arc, Mutex};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::common::Dependency;
use datafusion::execution::context::SQLOptions;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::execution_plan::reset_plan_states;
use datafusion::physical_plan::{ExecutionPlan, collect};
use datafusion::prelude::SessionContext;

use super::window_table::{Slot, WindowTable};
use super::{SqlError, plan_statements, session_with_partitions};

/// A planned rollup query.
pub struct RollupQuery {
    ctx: SessionContext,
    slots: Vec<Slot>,
    plan: LogicalPlan,
    physical: Arc<dyn ExecutionPlan>,
    schema: SchemaRef,
}

impl std::fmt::Debug for RollupQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RollupQuery")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

/// Planned queries of one rollup kept between the runs of its job.
///
/// Planning a query costs far more than running it over one window (DataFusion builds a
/// session, optimizes and plans: about 23 M instructions for one of the demo's rollups),
/// and a job runs many times from one load: every `spanflow bench` run, each restart of a
/// consumer-group member after a rebalance, the server's resubmits. A run takes a planned
/// query from here (or plans its own when the pool is empty, e.g. while another run of
/// the same job holds it) and gives it back when it ends. A query's window slots are
/// empty between windows and each window runs a fresh copy of the plan's state, so a
/// query given back is as good as a new one. Clones share the pool.
#[derive(Clone, Default)]
pub struct QueryPool(Arc<Mutex<Vec<RollupQuery>>>);

/// At most this many idle planned queries per rollup: one per run of the job that ran
/// at the same time as another.
const POOL_MAX: usize = 4;

impl QueryPool {
    /// A pool holding `query`.
    pub fn with(query: RollupQuery) -> Self {
        QueryPool(Arc::new(Mutex::new(vec![query])))
    }

    /// An idle planned query, if the pool has one.
    pub fn take(&self) -> Option<RollupQuery> {
        self.0.lock().ok().and_then(|mut q| q.pop())
    }

    /// Gives `query` back for the next run.
    pub fn put_back(&self, query: RollupQuery) {
        if let Ok(mut q) = self.0.lock()
            && q.len() < POOL_MAX
        {
            q.push(query);
        }
    }
}

impl std::fmt::Debug for QueryPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let idle = self.0.lock().map_or(0, |q| q.len());
        f.debug_struct("QueryPool").field("idle", &idle).finish()
    }
}

/// Pools compare equal: they are a cache of the query text the job already compares.
impl PartialEq for QueryPool {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// Column names a sink can use as they are (Parquet, Kafka, ClickHouse).
fn plain_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl RollupQuery {
    /// Plans `sql` (exactly one `SELECT`) over tables named as `inputs`.
    pub async fn plan(sql: &str, inputs: &[(String, SchemaRef)]) -> Result<Self, SqlError> {
        // One partition: a window's rows are few, and a plan without repartitioning
        // runs its operators in one task, in a stable order.
        let ctx = session_with_partitions(1);
        let mut slots = Vec::new();
        for (name, schema) in inputs {
            let (table, slot) = WindowTable::new(schema.clone());
            ctx.register_table(name.as_str(), Arc::new(table))?;
            slots.push(slot);
        }
        let mut plans = plan_statements(&ctx, sql).await?;
        let plan = match (plans.pop(), plans.is_empty()) {
            (Some(p), true) => p,
            (None, _) => return Err(SqlError::plain("the query has no SQL statement".into())),
            (Some(_), false) => {
                return Err(SqlError::plain(
                    "the query must be one SELECT statement; found several (separated by `;`)"
                        .into(),
                ));
            }
        };
        SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false)
            .verify_plan(&plan)
            .map_err(|e| {
                SqlError::plain(format!(
                    "the query must be a SELECT: {}",
                    e.strip_backtrace()
                ))
            })?;
        let schema = Arc::new(plan.schema().as_arrow().clone());
        for f in schema.fields() {
            if !plain_name(f.name()) {
                return Err(SqlError::plain(format!(
                    "result column `{}` needs a plain name (letters, digits, `_`) for the \
                     output table: add `AS <name>`",
                    f.name()
                )));
            }
        }
        if let Some(dup) = schema
            .fields()
            .iter()
            .enumerate()
            .find(|(i, f)| schema.fields()[..*i].iter().any(|g| g.name() == f.name()))
        {
            return Err(SqlError::plain(format!(
                "result column `{}` appears twice; give each column its own name",
                dup.1.name()
            )));
        }
        let physical = ctx.state().create_physical_plan(&plan).await?;
        Ok(RollupQuery {
            ctx,
            slots,
            plan,
            physical,
            schema,
        })
    }

    /// The result's schema (the output table's).
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// The result's natural key: the smallest set of columns that the plan shows to be
    /// unique per row (a GROUP BY's columns, as DataFusion's functional dependencies
    /// carry them through projections, sorts and filters), in column order; empty when
    /// the plan shows none (a query without GROUP BY, or one that drops a group column).
    pub fn key(&self) -> Vec<String> {
        let schema = self.plan.schema();
        let all = schema.fields().len();
        let mut best: Option<Vec<usize>> = None;
        for d in schema.functional_dependencies().iter() {
            if d.mode != Dependency::Single || d.target_indices.len() < all {
                continue;
            }
            if best
                .as_ref()
                .is_none_or(|b| d.source_indices.len() < b.len())
            {
                best = Some(d.source_indices.clone());
            }
        }
        let mut key = best.unwrap_or_default();
        key.sort_unstable();
        key.iter()
            .filter_map(|&i| self.schema.fields().get(i).map(|f| f.name().clone()))
            .collect()
    }

    /// Runs the query over one window: `inputs[i]` are the rows of the `i`-th input.
    pub async fn run(&self, inputs: Vec<Vec<RecordBatch>>) -> Result<Vec<RecordBatch>, SqlError> {
        let fill = |slot: &Slot, batches: Vec<RecordBatch>| match slot.lock() {
            Ok(mut s) => {
                *s = batches;
                Ok(())
            }
            Err(_) => Err(SqlError::plain("a query's window slot is poisoned".into())),
        };
        for (slot, batches) in self.slots.iter().zip(inputs) {
            fill(slot, batches)?;
        }
        // A fresh copy of the plan's operator state (hash tables, sorts) for this run.
        let result = match reset_plan_states(self.physical.clone()) {
            Ok(plan) => collect(plan, self.ctx.task_ctx()).await,
            Err(e) => Err(e),
        };
        for slot in &self.slots {
            fill(slot, Vec::new())?;
        }
        let mut out = Vec::new();
        for b in result? {
            // The planned schema is the table's; executed batches may differ in field
            // metadata only.
            let b =
                RecordBatch::try_new(self.schema.clone(), b.columns().to_vec()).map_err(|e| {
                    SqlError::plain(format!("the query's result does not fit its schema: {e}"))
                })?;
            if b.num_rows() > 0 {
                out.push(b);
            }
        }
        Ok(out)
    }
}
