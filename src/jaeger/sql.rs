//! The SQL both stores run, in the dialect of each engine.

use super::{AttrMatch, TraceQuery};

/// The engine a query is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dialect {
    /// DataFusion over Parquet: times are timestamps, attributes are maps.
    DataFusion,
    /// ClickHouse: times are ns in UInt64, attributes are `Nested(key, value)`.
    ClickHouse,
}

impl Dialect {
    /// A string literal.
    pub(super) fn string(self, s: &str) -> String {
        match self {
            Dialect::DataFusion => format!("'{}'", s.replace('\'', "''")),
            Dialect::ClickHouse => crate::connectors::clickhouse::sink::literal(s),
        }
    }

    /// A point in time comparable with the tables' time columns.
    pub(super) fn time(self, ns: u64) -> String {
        match self {
            Dialect::DataFusion => format!("to_timestamp_nanos({ns})"),
            Dialect::ClickHouse => ns.to_string(),
        }
    }

    /// A 16-byte id comparable with `trace_id`.
    fn id(self, id: &[u8; 16]) -> String {
        match self {
            Dialect::DataFusion => format!("X'{}'", hex::encode(id)),
            Dialect::ClickHouse => format!("unhex('{}')", hex::encode(id)),
        }
    }

    /// `map[key] = value` over a map column (`attributes`, `resource_attributes`).
    fn attribute(self, map: &str, key: &str, value: &str) -> String {
        let (k, v) = (self.string(key), self.string(value));
        match self {
            Dialect::DataFusion => format!("{map}[{k}] = {v}"),
            Dialect::ClickHouse => {
                format!("(has({map}.key, {k}) AND {map}.value[indexOf({map}.key, {k})] = {v})")
            }
        }
    }

    fn boolean(self, b: bool) -> &'static str {
        match (self, b) {
            (Dialect::DataFusion, true) => "true",
            (Dialect::DataFusion, false) => "false",
            (Dialect::ClickHouse, true) => "1",
            (Dialect::ClickHouse, false) => "0",
        }
    }
}

/// The ids as a list for `IN (...)`.
pub(super) fn hex_ids<'a>(ids: impl Iterator<Item = &'a [u8; 16]>, d: Dialect) -> String {
    ids.map(|id| d.id(id)).collect::<Vec<_>>().join(", ")
}

/// The conditions on one span row that `q` asks for, to be joined with AND.
pub(super) fn conditions(q: &TraceQuery, d: Dialect) -> Vec<String> {
    let mut c = Vec::new();
    if let Some(s) = &q.service {
        c.push(format!("service = {}", d.string(s)));
    }
    if let Some(o) = &q.operation {
        c.push(format!("name = {}", d.string(o)));
    }
    if let Some(t) = q.start_min_ns {
        c.push(format!("start_time >= {}", d.time(t)));
    }
    if let Some(t) = q.start_max_ns {
        c.push(format!("start_time <= {}", d.time(t)));
    }
    if let Some(n) = q.duration_min_ns {
        c.push(format!("duration_ns >= {n}"));
    }
    if let Some(n) = q.duration_max_ns {
        c.push(format!("duration_ns <= {n}"));
    }
    for a in &q.attributes {
        c.push(match a {
            AttrMatch::Attribute { key, value } => format!(
                "({} OR {})",
                d.attribute("attributes", key, value),
                d.attribute("resource_attributes", key, value)
            ),
            AttrMatch::Error(b) => format!("is_error = {}", d.boolean(*b)),
            AttrMatch::Status(s) => format!("status = {}", d.string(s)),
            AttrMatch::Kind(k) => format!("kind = {}", d.string(k)),
        });
    }
    c
}
