//! A table whose rows are whatever a rollup's current window put in its slot, read when
//! the plan is executed rather than when it is planned. A rollup's physical plan is then
//! made (and optimized) once and re-executed for every window: planning a query costs
//! far more than running it over one window's rows.

use std::fmt;
use std::sync::{Arc, Mutex};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{Result, Statistics, internal_err};
use datafusion::datasource::TableType;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::{EquivalenceProperties, Partitioning, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::memory::MemoryStream;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};

/// The rows of the window being queried.
pub(crate) type Slot = Arc<Mutex<Vec<RecordBatch>>>;

/// A table reading its rows from a [`Slot`] at execution time.
#[derive(Debug)]
pub(crate) struct WindowTable {
    schema: SchemaRef,
    slot: Slot,
}

impl WindowTable {
    /// An empty table with `schema`, and the slot to fill it through.
    pub(crate) fn new(schema: SchemaRef) -> (Self, Slot) {
        let slot = Slot::default();
        (
            WindowTable {
                schema,
                slot: slot.clone(),
            },
            slot,
        )
    }
}

#[async_trait]
impl TableProvider for WindowTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let schema = match projection {
            Some(p) => Arc::new(self.schema.project(p)?),
            None => self.schema.clone(),
        };
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(Arc::new(WindowScanExec {
            slot: self.slot.clone(),
            projection: projection.cloned(),
            schema,
            properties: Arc::new(properties),
        }))
    }
}

/// Scans a [`WindowTable`]'s slot as it is when executed. Its statistics are unknown,
/// so the optimizer never bakes the planning-time rows (none) into the plan.
#[derive(Debug)]
struct WindowScanExec {
    slot: Slot,
    projection: Option<Vec<usize>>,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
}

impl DisplayAs for WindowScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WindowScanExec: projection={:?}", self.projection)
    }
}

impl ExecutionPlan for WindowScanExec {
    fn name(&self) -> &str {
        "WindowScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if children.is_empty() {
            Ok(self)
        } else {
            internal_err!("WindowScanExec has no children")
        }
    }

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return internal_err!("WindowScanExec has one partition, asked for {partition}");
        }
        let batches = match self.slot.lock() {
            Ok(b) => b.clone(),
            Err(_) => return internal_err!("a rollup's window slot is poisoned"),
        };
        let batches = match &self.projection {
            Some(p) => batches
                .iter()
                .map(|b| b.project(p))
                .collect::<Result<Vec<_>, _>>()?,
            None => batches,
        };
        Ok(Box::pin(MemoryStream::try_new(
            batches,
            self.schema.clone(),
            None,
        )?))
    }

    fn partition_statistics(&self, _partition: Option<usize>) -> Result<Arc<Statistics>> {
        Ok(Arc::new(Statistics::new_unknown(&self.schema)))
    }
}
