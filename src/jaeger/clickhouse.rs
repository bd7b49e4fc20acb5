//! The Jaeger API over a ClickHouse sink's tables. Trace lookups select by `trace_id`,
//! the `spans` table's sort key, and run with `force_primary_key = 1`: the server
//! refuses such a query rather than scan the table. Rows are ReplacingMergeTree rows, so
//! a span written twice (a replay) is read once, in its newest version.

use async_trait::async_trait;
use serde::Deserialize;

use super::sql::{Dialect, conditions, hex_ids};
use super::{
    Dependency, FoundTrace, KeptTables, StoredSpan, StoredTrace, TraceLookup, TraceQuery,
    TraceStore,
};
use crate::connectors::clickhouse::ClickHouseSinkConfig;
use crate::connectors::clickhouse::ddl::quote;
use crate::connectors::clickhouse::sink::{client_of, retriable};
use crate::runtime::io::ConnectorError;

/// Kept traces in a ClickHouse database.
pub struct ClickHouseStore {
    client: clickhouse::Client,
    config: ClickHouseSinkConfig,
    tables: KeptTables,
    /// `db`.`spans`, quoted.
    spans: String,
    /// `db`.`service_relation`, quoted.
    service_relation: Option<String>,
}

#[derive(clickhouse::Row, Deserialize)]
struct Name {
    name: String,
}

#[derive(clickhouse::Row, Deserialize)]
struct NameKind {
    name: String,
    kind: String,
}

#[derive(clickhouse::Row, Deserialize)]
struct Found {
    trace_id: [u8; 16],
    start_ns: u64,
    end_ns: u64,
}

#[derive(clickhouse::Row, Deserialize)]
struct SpanRow {
    trace_id: [u8; 16],
    start_time: u64,
    #[serde(with = "serde_bytes")]
    otlp_resource: Vec<u8>,
    #[serde(with = "serde_bytes")]
    otlp: Vec<u8>,
}

#[derive(clickhouse::Row, Deserialize)]
struct Edge {
    source: String,
    target: String,
    calls: u64,
}

impl ClickHouseStore {
    /// A store over the tables `tables` names in `config`'s database; asks the server
    /// for its version, so a wrong address or credentials show at once.
    pub async fn open(
        config: &ClickHouseSinkConfig,
        tables: &KeptTables,
    ) -> Result<ClickHouseStore, ConnectorError> {
        let client = client_of(config)?;
        let db = quote(&config.database);
        let name = |t: &str| format!("{db}.{}", quote(&config.table_of(t)));
        let store = ClickHouseStore {
            spans: name(&tables.spans),
            service_relation: tables.service_relation.as_deref().map(name),
            client,
            config: config.clone(),
            tables: tables.clone(),
        };
        store
            .fetch::<Name>("SELECT version() AS name", false)
            .await?;
        Ok(store)
    }

    async fn fetch<T>(&self, sql: &str, by_key: bool) -> Result<Vec<T>, ConnectorError>
    where
        T: clickhouse::RowOwned + clickhouse::RowRead,
    {
        let mut q = self.client.query_raw(sql);
        if by_key {
            q = q.with_setting("force_primary_key", "1");
        }
        let timeout = self.config.request_timeout.0;
        match tokio::time::timeout(timeout, q.fetch_all::<T>()).await {
            Err(_) => Err(ConnectorError::external(format!(
                "{}: no answer within {timeout:?} (request_timeout) to `{sql}`",
                self.config.display_url()
            ))),
            Ok(Err(e)) if retriable(&e) => Err(ConnectorError::external(format!(
                "{}: {e}",
                self.config.display_url()
            ))),
            Ok(Err(e)) => Err(ConnectorError::user(format!(
                "{}: `{sql}`: {e}",
                self.config.display_url()
            ))),
            Ok(Ok(rows)) => Ok(rows),
        }
    }
}

#[async_trait]
impl TraceStore for ClickHouseStore {
    fn describe(&self) -> String {
        format!(
            "ClickHouse tables {}{} at {} (sink `{}`)",
            self.spans,
            self.service_relation
                .as_ref()
                .map(|t| format!(" and {t}"))
                .unwrap_or_default(),
            self.config.display_url(),
            self.tables.sink
        )
    }

    async fn services(&self) -> Result<Vec<String>, ConnectorError> {
        let sql = format!(
            "SELECT DISTINCT service AS name FROM {} ORDER BY name",
            self.spans
        );
        Ok(self
            .fetch::<Name>(&sql, false)
            .await?
            .into_iter()
            .map(|n| n.name)
            .collect())
    }

    async fn operations(
        &self,
        service: &str,
        kind: Option<&str>,
    ) -> Result<Vec<(String, String)>, ConnectorError> {
        let d = Dialect::ClickHouse;
        let mut sql = format!(
            "SELECT DISTINCT name, kind FROM {} WHERE service = {}",
            self.spans,
            d.string(service)
        );
        if let Some(k) = kind {
            sql += &format!(" AND kind = {}", d.string(k));
        }
        sql += " ORDER BY name, kind";
        Ok(self
            .fetch::<NameKind>(&sql, false)
            .await?
            .into_iter()
            .map(|r| (r.name, r.kind))
            .collect())
    }

    async fn find(&self, q: &TraceQuery) -> Result<Vec<FoundTrace>, ConnectorError> {
        let conds = conditions(q, Dialect::ClickHouse);
        let filter = if conds.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conds.join(" AND "))
        };
        // The matching spans pick the traces (a scan of the time range's partitions);
        // their times come from all their spans, looked up by the sort key.
        let sql = format!(
            "SELECT trace_id, min(start_time) AS start_ns, max(end_time) AS end_ns FROM {t} \
             WHERE trace_id IN (SELECT trace_id FROM {t} {filter} GROUP BY trace_id \
             ORDER BY max(start_time) DESC, trace_id LIMIT {limit}) \
             GROUP BY trace_id ORDER BY max(start_time) DESC, trace_id",
            t = self.spans,
            limit = q.limit
        );
        let mut found: Vec<Found> = self.fetch(&sql, false).await?;
        // The outer order is by all spans' latest start; the search's is by the
        // matching spans', which the inner query kept: the same for one matching span
        // per trace, close enough otherwise, and stable.
        found.truncate(q.limit);
        Ok(found
            .into_iter()
            .map(|f| FoundTrace {
                trace_id: f.trace_id,
                start_ns: f.start_ns,
                end_ns: f.end_ns,
            })
            .collect())
    }

    async fn traces(&self, lookups: &[TraceLookup]) -> Result<Vec<StoredTrace>, ConnectorError> {
        if lookups.is_empty() {
            return Ok(Vec::new());
        }
        let d = Dialect::ClickHouse;
        let mut sql = format!(
            "SELECT trace_id, start_time, otlp_resource, otlp FROM {} WHERE trace_id IN ({})",
            self.spans,
            hex_ids(lookups.iter().map(|l| &l.trace_id), d)
        );
        let (lo, hi) = TraceLookup::start_range(lookups);
        if let Some(lo) = lo {
            sql += &format!(" AND start_time >= {}", d.time(lo));
        }
        if let Some(hi) = hi {
            sql += &format!(" AND start_time <= {}", d.time(hi));
        }
        sql += " ORDER BY trace_id, span_id, version DESC LIMIT 1 BY trace_id, span_id";
        let rows: Vec<SpanRow> = self.fetch(&sql, true).await?;
        Ok(super::group_by_trace(
            lookups,
            rows.into_iter()
                .map(|r| {
                    (
                        r.trace_id,
                        StoredSpan {
                            start_ns: r.start_time,
                            envelope: r.otlp_resource,
                            span: r.otlp,
                        },
                    )
                })
                .collect(),
        ))
    }

    async fn dependencies(
        &self,
        from_ns: Option<u64>,
        to_ns: Option<u64>,
    ) -> Result<Vec<Dependency>, ConnectorError> {
        let Some(t) = &self.service_relation else {
            return Err(ConnectorError::user(format!(
                "sink `{}` does not write a service_graph node's `service_relation`",
                self.tables.sink
            )));
        };
        let mut conds = Vec::new();
        if let Some(from) = from_ns {
            conds.push(format!("interval_end > {from}"));
        }
        if let Some(to) = to_ns {
            conds.push(format!("interval_start < {to}"));
        }
        let filter = if conds.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conds.join(" AND "))
        };
        // One row per edge and interval (its newest version), then summed per pair.
        let sql = format!(
            "SELECT source, target, sum(r) AS calls FROM (SELECT source, target, \
             argMax(requests, version) AS r FROM {t} {filter} GROUP BY source, target, \
             interval_start, call_type, target_kind, connection_type) \
             GROUP BY source, target ORDER BY source, target"
        );
        Ok(self
            .fetch::<Edge>(&sql, false)
            .await?
            .into_iter()
            .map(|e| Dependency {
                parent: e.source,
                child: e.target,
                calls: e.calls,
            })
            .collect())
    }
}
