//! An alert rule's SQL condition: one `SELECT` over the rows of each closed interval,
//! planned once (as a rollup's query is) and run by the `alerts` operator on every
//! interval. Its result has one row per group: a numeric `value` and label columns.

use arrow::array::{Array, AsArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type};
use arrow::record_batch::RecordBatch;
use spanflow_operators::alerts::{AlertRule, Condition, Label};
use spanflow_operators::metrics::ClosedInterval;
use spanflow_operators::operator::OperatorError;

use super::SqlError;
use super::rollup::RollupQuery;
use crate::tables::{MetricRows, TableRows};

/// The table a rule's query reads: the rows of the rule's metric, as the sinks write
/// them.
pub fn table_of(metric: &str) -> &'static str {
    if metric == "service_relation" {
        "service_relation"
    } else {
        "red_metrics"
    }
}

/// A planned alert condition.
#[derive(Debug)]
pub struct AlertQuery {
    query: RollupQuery,
    /// The label of each label column, and its index in the result.
    labels: Vec<Label>,
    label_columns: Vec<usize>,
    value_column: usize,
    relation: bool,
}

fn is_number(t: &DataType) -> bool {
    t.is_numeric() || matches!(t, DataType::Null)
}

fn is_text(t: &DataType) -> bool {
    match t {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => true,
        DataType::Dictionary(_, v) => is_text(v),
        _ => false,
    }
}

impl AlertQuery {
    /// Plans rule `query` over the table of `metric` ([`table_of`]); its result must
    /// have a numeric `value` column, and every other column must be a label's, text.
    pub async fn plan(query: &str, metric: &str) -> Result<Self, SqlError> {
        let table = table_of(metric);
        let schema = crate::tables::schema(table)
            .ok_or_else(|| SqlError::plain(format!("no schema for `{table}` (this is a bug)")))?;
        let planned = RollupQuery::plan(query, &[(table.to_owned(), schema)]).await?;
        let result = planned.schema();
        let mut value_column = None;
        let mut labels = Vec::new();
        let mut label_columns = Vec::new();
        for (i, f) in result.fields().iter().enumerate() {
            if f.name() == "value" {
                if !is_number(f.data_type()) {
                    return Err(SqlError::plain(format!(
                        "the query's `value` column is {}; it must be a number",
                        f.data_type()
                    )));
                }
                value_column = Some(i);
                continue;
            }
            let Some(label) = Label::ALL.into_iter().find(|l| l.as_str() == f.name()) else {
                return Err(SqlError::plain(format!(
                    "the query returns a column `{}`: besides `value`, its columns are the \
                     alert's labels, named as one of {} (rename it with AS, or drop it)",
                    f.name(),
                    Label::ALL.map(Label::as_str).join(", ")
                )));
            };
            if !is_text(f.data_type()) {
                return Err(SqlError::plain(format!(
                    "the query's label column `{}` is {}; labels are text",
                    f.name(),
                    f.data_type()
                )));
            }
            labels.push(label);
            label_columns.push(i);
        }
        let value_column = value_column.ok_or_else(|| {
            SqlError::plain(
                "the query has no `value` column: return the number the threshold is \
                 compared with as `value` (e.g. `sum(errors) / sum(requests) AS value`)"
                    .into(),
            )
        })?;
        Ok(AlertQuery {
            query: planned,
            labels,
            label_columns,
            value_column,
            relation: table == "service_relation",
        })
    }

    /// Runs the query over one interval's rows.
    pub async fn run(
        &self,
        interval: &ClosedInterval,
        bounds: &[f64],
    ) -> Result<Vec<(Vec<String>, f64)>, SqlError> {
        let mut rows = if self.relation {
            MetricRows::service_relation()
        } else {
            MetricRows::red_metrics()
        };
        rows.push_interval(interval, bounds);
        let result = self.query.run(vec![vec![rows.finish()]]).await?;
        let mut out = Vec::new();
        for b in &result {
            self.rows_of(b, &mut out)?;
        }
        Ok(out)
    }

    fn rows_of(&self, b: &RecordBatch, out: &mut Vec<(Vec<String>, f64)>) -> Result<(), SqlError> {
        let as_error =
            |e: arrow::error::ArrowError| SqlError::plain(format!("the query's result: {e}"));
        let value = cast(b.column(self.value_column), &DataType::Float64).map_err(as_error)?;
        let value = value.as_primitive::<Float64Type>();
        let mut labels = Vec::with_capacity(self.label_columns.len());
        for &c in &self.label_columns {
            labels.push(cast(b.column(c), &DataType::Utf8).map_err(as_error)?);
        }
        for r in 0..b.num_rows() {
            let v = if value.is_null(r) {
                f64::NAN
            } else {
                value.value(r)
            };
            let values = labels
                .iter()
                .map(|a| {
                    let a = a.as_string::<i32>();
                    if a.is_null(r) {
                        String::new()
                    } else {
                        a.value(r).to_owned()
                    }
                })
                .collect();
            out.push((values, v));
        }
        Ok(())
    }
}

/// [`AlertQuery`] as the operator's [`Condition`]: the global stage runs on a blocking
/// thread of the job's runtime, whose handle runs the (async) query.
#[derive(Debug)]
struct Running {
    rule: String,
    query: Result<AlertQuery, String>,
    handle: Option<tokio::runtime::Handle>,
}

impl Condition for Running {
    fn labels(&self) -> &[Label] {
        self.query.as_ref().map_or(&[], |q| &q.labels)
    }

    fn evaluate(
        &mut self,
        interval: &ClosedInterval,
        bounds: &[f64],
    ) -> Result<Vec<(Vec<String>, f64)>, OperatorError> {
        let query = self.query.as_ref().map_err(|e| {
            OperatorError::Internal(format!("alert rule `{}`: its query: {e}", self.rule))
        })?;
        let Some(handle) = &self.handle else {
            return Err(OperatorError::Internal(format!(
                "alert rule `{}`: no runtime to run its query on",
                self.rule
            )));
        };
        handle
            .block_on(query.run(interval, bounds))
            .map_err(|e| OperatorError::Execution(format!("alert rule `{}`: {e}", self.rule)))
    }
}

/// The condition of a `query` rule, for [`spanflow_operators::alerts::Alerts::with_conditions`].
/// Planning cannot fail for a job that was validated; if it does, evaluating says why.
pub fn condition(rule: &AlertRule) -> Box<dyn Condition> {
    let query = futures::executor::block_on(AlertQuery::plan(
        rule.query.as_deref().unwrap_or_default(),
        &rule.metric,
    ))
    .map_err(|e| e.message);
    Box::new(Running {
        rule: rule.name.clone(),
        query,
        handle: tokio::runtime::Handle::try_current().ok(),
    })
}
