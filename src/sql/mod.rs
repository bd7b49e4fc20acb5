//! DataFusion SQL over spanflow's tables: `spanflow sql` over a job's Parquet outputs
//! ([`OutputCatalog`]), and rollups that run a query over each closed window of a
//! job's metric outputs ([`rollup`]).
//!
//! Both use [`session`], so a query means the same thing in a rollup and ad hoc: the
//! same functions (see [`udf`]), the same types (strings stay `Utf8`, as the tables
//! write them) and the same column names.

pub mod alert;
pub mod cli;
pub mod rollup;
pub mod udf;
mod window_table;

use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use arrow::record_batch::RecordBatch;
use datafusion::common::DataFusionError;
use datafusion::execution::context::SessionConfig;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use datafusion::sql::parser::{DFParserBuilder, Statement};
use datafusion::sql::sqlparser::dialect::GenericDialect;

/// A SQL error with the position in the query it refers to, when DataFusion knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct SqlError {
    /// What is wrong, as DataFusion says it (without its backtrace).
    pub message: String,
    /// 1-based line in the query text.
    pub line: Option<usize>,
    /// 1-based column in that line.
    pub column: Option<usize>,
}

impl std::fmt::Display for SqlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "{} (line {l}, column {c})", self.message),
            _ => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for SqlError {}

impl SqlError {
    /// An error without a place in the query text.
    pub fn plain(message: String) -> Self {
        SqlError {
            message,
            line: None,
            column: None,
        }
    }
}

static LINE_COLUMN: LazyLock<regex::Regex> = LazyLock::new(|| {
    regex::Regex::new(r"\s*at Line: (\d+), Column: (\d+)").unwrap_or_else(|_| unreachable!())
});

impl From<DataFusionError> for SqlError {
    fn from(e: DataFusionError) -> Self {
        // Planning errors carry a diagnostic with a span when spans are collected;
        // parser errors name the position in their text.
        let span = e.diagnostic().and_then(|d| d.span);
        let mut message = e.strip_backtrace();
        for prefix in ["SQL error: ParserError(\"", "sql parser error: "] {
            if let Some(rest) = message.strip_prefix(prefix) {
                message = rest.trim_end_matches("\")").to_owned();
            }
        }
        let mut line = span.map(|s| s.start.line as usize);
        let mut column = span.map(|s| s.start.column as usize);
        if let Some(c) = LINE_COLUMN.captures(&message) {
            if line.is_none() {
                line = c[1].parse().ok();
                column = c[2].parse().ok();
            }
            message = LINE_COLUMN.replace(&message, "").into_owned();
        }
        SqlError {
            message,
            line: line.filter(|l| *l > 0),
            column: column.filter(|c| *c > 0),
        }
    }
}

static NO_FIELD: LazyLock<regex::Regex> = LazyLock::new(|| {
    regex::Regex::new(r#"No field named "?([^\s"]+?)"?\.? "#).unwrap_or_else(|_| unreachable!())
});

impl SqlError {
    /// Fills in a missing position from the message: DataFusion names an unknown column
    /// without a span in some clauses (GROUP BY, ORDER BY), so its first use as a whole
    /// word in `text` is the place to show.
    fn locate_in(mut self, text: &str) -> Self {
        if self.line.is_some() {
            return self;
        }
        let Some(name) = NO_FIELD.captures(&self.message).map(|c| {
            c[1].rsplit('.')
                .next()
                .unwrap_or("")
                .trim_matches('"')
                .to_owned()
        }) else {
            return self;
        };
        if name.is_empty() {
            return self;
        }
        let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
        for (i, line) in text.lines().enumerate() {
            let bytes = line.as_bytes();
            let mut from = 0;
            while let Some(k) = line[from..].find(name.as_str()).map(|k| k + from) {
                let end = k + name.len();
                let before_ok = k == 0 || !word(bytes[k - 1]);
                let after_ok = end >= bytes.len() || !word(bytes[end]);
                if before_ok && after_ok && !line[..k].contains("--") {
                    self.line = Some(i + 1);
                    self.column = Some(line[..k].chars().count() + 1);
                    return self;
                }
                from = end;
            }
        }
        self
    }
}

/// A DataFusion session configured for spanflow's tables, with its functions.
pub fn session() -> SessionContext {
    // Few, small partitions: the tables are modest and results come back in a stable
    // order for queries without ORDER BY over one file.
    session_with_partitions(
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(4),
    )
}

/// [`session`] with `partitions` target partitions.
pub(crate) fn session_with_partitions(partitions: usize) -> SessionContext {
    let mut config = SessionConfig::new()
        .with_information_schema(true)
        .with_target_partitions(partitions.max(1));
    let options = config.options_mut();
    // The tables write Utf8; Utf8View results would not round-trip into sinks that
    // expect the tables' own types.
    options.sql_parser.map_string_types_to_utf8view = false;
    options.execution.parquet.schema_force_view_types = false;
    // Positions in planning errors (unknown column, ...).
    options.sql_parser.collect_spans = true;
    // A table of a job run as a group of instances is one directory per instance.
    options.execution.listing_table_ignore_subdirectory = false;
    let ctx = SessionContext::new_with_config(config);
    udf::register(&ctx);
    ctx
}

/// Splits `sql` into statements and plans each (without running it).
pub async fn plan_statements(
    ctx: &SessionContext,
    sql: &str,
) -> Result<Vec<LogicalPlan>, SqlError> {
    let dialect = GenericDialect {};
    let statements = DFParserBuilder::new(sql)
        .with_dialect(&dialect)
        .build()
        .and_then(|mut p| p.parse_statements())
        .map_err(SqlError::from)?;
    let mut plans = Vec::new();
    for s in statements {
        plans.push(plan_statement(ctx, s).await.map_err(|e| e.locate_in(sql))?);
    }
    Ok(plans)
}

async fn plan_statement(ctx: &SessionContext, s: Statement) -> Result<LogicalPlan, SqlError> {
    Ok(ctx.state().statement_to_plan(s).await?)
}

/// Runs every statement of `sql` and returns the last one's rows (with its schema).
pub async fn run(ctx: &SessionContext, sql: &str) -> Result<QueryResult, SqlError> {
    let plans = plan_statements(ctx, sql).await?;
    let mut last = None;
    for p in plans {
        let df = ctx.execute_logical_plan(p).await?;
        let schema = Arc::new(df.schema().as_arrow().clone());
        let batches = df.collect().await?;
        last = Some(QueryResult { schema, batches });
    }
    last.ok_or_else(|| SqlError {
        message: "no SQL statement found".into(),
        line: None,
        column: None,
    })
}

/// Rows of a query.
#[derive(Debug, Clone)]
pub struct QueryResult {
    /// Result schema (also for no rows).
    pub schema: arrow::datatypes::SchemaRef,
    /// The rows.
    pub batches: Vec<RecordBatch>,
}

impl QueryResult {
    /// Rows in all batches.
    pub fn rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }
}

/// The tables of a job's Parquet output directory, registered by name
/// (`<dir>/<table>/part-*.parquet` -> `<table>`; a job run as a group of instances
/// writes `<dir>/<table>/<instance>/part-*.parquet`, all of them the table's rows).
#[derive(Debug, Clone)]
pub struct OutputCatalog {
    /// The directory.
    pub dir: PathBuf,
    /// Table names, sorted.
    pub tables: Vec<String>,
}

impl OutputCatalog {
    /// Registers every table directory under `dir` that holds Parquet files.
    pub async fn register(ctx: &SessionContext, dir: &Path) -> Result<OutputCatalog, SqlError> {
        let entries = std::fs::read_dir(dir).map_err(|e| {
            SqlError::plain(format!(
                "{}: {e}; run a job first (e.g. `spanflow run jobs/demo.yaml`) or pass \
                 --output-dir",
                dir.display()
            ))
        })?;
        let mut tables = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| SqlError::plain(format!("{}: {e}", dir.display())))?;
            let path = entry.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if !path.is_dir() || !has_parquet(&path) {
                continue;
            }
            let url = path.to_string_lossy().into_owned() + "/";
            ctx.register_parquet(name, &url, ParquetReadOptions::default())
                .await
                .map_err(|e| {
                    SqlError::plain(format!("{}: {}", path.display(), e.strip_backtrace()))
                })?;
            tables.push(name.to_owned());
        }
        if tables.is_empty() {
            return Err(SqlError::plain(format!(
                "{}: no tables (no <table>/*.parquet); run a job that writes Parquet there first",
                dir.display()
            )));
        }
        tables.sort();
        Ok(OutputCatalog {
            dir: dir.to_owned(),
            tables,
        })
    }
}

/// Whether `dir` holds Parquet files, directly or in the directories of a consumer
/// group's instances (`<table>/<instance>/part-*.parquet`, read as one table).
pub(crate) fn has_parquet(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|rd| {
        rd.flatten().any(|e| {
            let p = e.path();
            p.extension().is_some_and(|x| x == "parquet")
                || (p.is_dir()
                    && std::fs::read_dir(&p).is_ok_and(|m| {
                        m.flatten()
                            .any(|f| f.path().extension().is_some_and(|x| x == "parquet"))
                    }))
        })
    })
}

#[cfg(test)]
mod tests;
