//! The Jaeger API over a Parquet sink's directory: DataFusion queries over the
//! `spans` and `service_relation` part files, read as they are when each query runs
//! (a running job's new part files included).

use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Int64Type, UInt64Type};
use async_trait::async_trait;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use tokio::sync::Mutex;

use super::sql::{Dialect, conditions, hex_ids};
use super::{
    Dependency, FoundTrace, KeptTables, StoredSpan, StoredTrace, TraceLookup, TraceQuery,
    TraceStore,
};
use crate::runtime::io::ConnectorError;

/// Kept traces in a Parquet output directory.
pub struct ParquetStore {
    dir: PathBuf,
    tables: KeptTables,
    /// The session, with the tables registered once their directories hold files.
    ctx: Mutex<SessionContext>,
}

impl ParquetStore {
    /// A store over `dir` (the sink's `path`); the tables are looked for when queried.
    pub fn open(dir: &Path, tables: &KeptTables) -> Result<ParquetStore, ConnectorError> {
        if !dir.is_dir() {
            return Err(ConnectorError::user(format!(
                "{}: no such directory; run the job first (its sink `{}` writes there)",
                dir.display(),
                tables.sink
            )));
        }
        Ok(ParquetStore {
            dir: dir.to_owned(),
            tables: tables.clone(),
            ctx: Mutex::new(session()),
        })
    }

    /// The session with `table` registered, or a user error when the job has not
    /// written it yet.
    async fn with_table(&self, table: &str) -> Result<SessionContext, ConnectorError> {
        let ctx = self.ctx.lock().await;
        if !ctx.table_exist(table).unwrap_or(false) {
            let path = self.dir.join(table);
            if !crate::sql::has_parquet(&path) {
                return Err(ConnectorError::user(format!(
                    "{}: no Parquet files yet; the job writes its `{table}` table there",
                    path.display()
                )));
            }
            let url = path.to_string_lossy().into_owned() + "/";
            ctx.register_parquet(table, &url, ParquetReadOptions::default())
                .await
                .map_err(|e| {
                    ConnectorError::user(format!("{}: {}", path.display(), e.strip_backtrace()))
                })?;
        }
        Ok(ctx.clone())
    }

    async fn query(&self, table: &str, sql: &str) -> Result<Vec<RecordBatch>, ConnectorError> {
        let ctx = self.with_table(table).await?;
        let df = ctx.sql(sql).await.map_err(|e| {
            ConnectorError::internal(format!("jaeger query `{sql}`: {}", e.strip_backtrace()))
        })?;
        df.collect().await.map_err(|e| {
            ConnectorError::external(format!(
                "{}: reading `{table}`: {}",
                self.dir.display(),
                e.strip_backtrace()
            ))
        })
    }
}

/// A session for lookups: filters are applied while decoding, so a trace lookup decodes
/// the span columns of the matching rows only.
fn session() -> SessionContext {
    let ctx = crate::sql::session();
    {
        let state = ctx.state_ref();
        let mut state = state.write();
        let parquet = &mut state.config_mut().options_mut().execution.parquet;
        parquet.pushdown_filters = true;
        parquet.reorder_filters = true;
    }
    ctx
}

fn column(b: &RecordBatch, i: usize) -> &dyn Array {
    b.column(i).as_ref()
}

fn strings(batches: &[RecordBatch], i: usize) -> Vec<String> {
    let mut out = Vec::new();
    for b in batches {
        let c = column(b, i).as_string::<i32>();
        out.extend(c.iter().map(|v| v.unwrap_or_default().to_owned()));
    }
    out
}

fn trace_id(b: &RecordBatch, i: usize, row: usize) -> Result<[u8; 16], ConnectorError> {
    column(b, i)
        .as_fixed_size_binary_opt()
        .and_then(|c| c.value(row).try_into().ok())
        .ok_or_else(|| ConnectorError::user("`trace_id` is not 16 bytes".to_owned()))
}

#[async_trait]
impl TraceStore for ParquetStore {
    fn describe(&self) -> String {
        format!(
            "Parquet tables `{}`{} in {} (sink `{}`)",
            self.tables.spans,
            self.tables
                .service_relation
                .as_ref()
                .map(|t| format!(" and `{t}`"))
                .unwrap_or_default(),
            self.dir.display(),
            self.tables.sink
        )
    }

    async fn services(&self) -> Result<Vec<String>, ConnectorError> {
        let t = &self.tables.spans;
        let sql = format!("SELECT DISTINCT service FROM \"{t}\" ORDER BY service");
        Ok(strings(&self.query(t, &sql).await?, 0))
    }

    async fn operations(
        &self,
        service: &str,
        kind: Option<&str>,
    ) -> Result<Vec<(String, String)>, ConnectorError> {
        let t = &self.tables.spans;
        let d = Dialect::DataFusion;
        let mut sql = format!(
            "SELECT DISTINCT name, kind FROM \"{t}\" WHERE service = {}",
            d.string(service)
        );
        if let Some(k) = kind {
            sql += &format!(" AND kind = {}", d.string(k));
        }
        sql += " ORDER BY name, kind";
        let b = self.query(t, &sql).await?;
        Ok(strings(&b, 0).into_iter().zip(strings(&b, 1)).collect())
    }

    async fn find(&self, q: &TraceQuery) -> Result<Vec<FoundTrace>, ConnectorError> {
        let t = &self.tables.spans;
        let conds = conditions(q, Dialect::DataFusion);
        let filter = if conds.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conds.join(" AND "))
        };
        // The matching spans pick the traces; all of each trace's spans give its times.
        let sql = format!(
            "WITH hits AS (SELECT trace_id, max(start_time) AS latest FROM \"{t}\" {filter} \
             GROUP BY trace_id ORDER BY latest DESC, trace_id LIMIT {limit}) \
             SELECT s.trace_id, CAST(min(s.start_time) AS BIGINT), \
             CAST(max(s.end_time) AS BIGINT), max(h.latest) AS latest \
             FROM \"{t}\" s JOIN hits h ON s.trace_id = h.trace_id \
             GROUP BY s.trace_id ORDER BY latest DESC, s.trace_id",
            limit = q.limit
        );
        let mut out = Vec::new();
        for b in self.query(t, &sql).await? {
            let (start, end) = (
                column(&b, 1).as_primitive::<Int64Type>(),
                column(&b, 2).as_primitive::<Int64Type>(),
            );
            for r in 0..b.num_rows() {
                out.push(FoundTrace {
                    trace_id: trace_id(&b, 0, r)?,
                    start_ns: u64::try_from(start.value(r)).unwrap_or(0),
                    end_ns: u64::try_from(end.value(r)).unwrap_or(0),
                });
            }
        }
        Ok(out)
    }

    async fn traces(&self, lookups: &[TraceLookup]) -> Result<Vec<StoredTrace>, ConnectorError> {
        if lookups.is_empty() {
            return Ok(Vec::new());
        }
        let t = &self.tables.spans;
        let mut sql = format!(
            "SELECT trace_id, CAST(start_time AS BIGINT), otlp_resource, otlp FROM \"{t}\" \
             WHERE trace_id IN ({})",
            hex_ids(lookups.iter().map(|l| &l.trace_id), Dialect::DataFusion)
        );
        let (lo, hi) = TraceLookup::start_range(lookups);
        if let Some(lo) = lo {
            sql += &format!(" AND start_time >= to_timestamp_nanos({lo})");
        }
        if let Some(hi) = hi {
            sql += &format!(" AND start_time <= to_timestamp_nanos({hi})");
        }
        let mut rows = Vec::new();
        for b in self.query(t, &sql).await? {
            let start = column(&b, 1).as_primitive::<Int64Type>();
            let (envelope, span) = (
                column(&b, 2).as_binary::<i32>(),
                column(&b, 3).as_binary::<i32>(),
            );
            for r in 0..b.num_rows() {
                rows.push((
                    trace_id(&b, 0, r)?,
                    StoredSpan {
                        start_ns: u64::try_from(start.value(r)).unwrap_or(0),
                        envelope: envelope.value(r).to_vec(),
                        span: span.value(r).to_vec(),
                    },
                ));
            }
        }
        Ok(super::group_by_trace(lookups, rows))
    }

    async fn dependencies(
        &self,
        from_ns: Option<u64>,
        to_ns: Option<u64>,
    ) -> Result<Vec<Dependency>, ConnectorError> {
        let Some(t) = &self.tables.service_relation else {
            return Err(ConnectorError::user(format!(
                "sink `{}` does not write a service_graph node's `service_relation`",
                self.tables.sink
            )));
        };
        let mut conds = Vec::new();
        if let Some(from) = from_ns {
            conds.push(format!("interval_end > to_timestamp_nanos({from})"));
        }
        if let Some(to) = to_ns {
            conds.push(format!("interval_start < to_timestamp_nanos({to})"));
        }
        let filter = if conds.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conds.join(" AND "))
        };
        let sql = format!(
            "SELECT source, target, CAST(sum(requests) AS BIGINT UNSIGNED) FROM \"{t}\" {filter} \
             GROUP BY source, target ORDER BY source, target"
        );
        let mut out = Vec::new();
        for b in self.query(t, &sql).await? {
            let (p, c) = (
                column(&b, 0).as_string::<i32>(),
                column(&b, 1).as_string::<i32>(),
            );
            let n = column(&b, 2).as_primitive::<UInt64Type>();
            for r in 0..b.num_rows() {
                out.push(Dependency {
                    parent: p.value(r).to_owned(),
                    child: c.value(r).to_owned(),
                    calls: n.value(r),
                });
            }
        }
        Ok(out)
    }
}
