//! A rollup's query (and an alert rule's, `alert.rs`): planned once, when the job is loaded, against empty tables with
//! its inputs' schemas; run once per closed window over that window's rows.
//!
//! The tables read their rows from slots filled before each run (`window_table.rs`),
//! so the physical plan is made and optimized once, when the rollup is planned, and
//! each window only executes it (planning costs far more than running one window).

use std::sync::Arc;

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
