//! The ClickHouse tables of spanflow's outputs: their natural keys, partitioning and
//! column types, rendered as DDL for the server at hand.
//!
//! Column types follow the Arrow schemas of `crate::tables`, so the tables cannot drift
//! from what the runtime produces. Features an old server lacks are replaced by portable
//! types: Debian's 18.16 gets unix-nanosecond `UInt64` timestamps, `Nested(key, value)`
//! parallel arrays for attribute maps, plain `String`s and `UInt8` booleans, and no TTL;
//! current servers get `DateTime64(9)`, `Map`, `LowCardinality`, `Bool`, TTL and a bloom
//! filter index on trace ids. schemas/clickhouse holds the DDL rendered for both.

use std::fmt::Write as _;
use std::time::Duration;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::runtime::io::ConnectorError;

/// Where one of spanflow's built-in outputs lands in ClickHouse (see [`TableLayout`]).
#[derive(Debug, Clone, Copy)]
pub struct Builtin {
    /// Output (and default table) name.
    pub name: &'static str,
    /// What a row is, for the DDL's comment.
    pub about: &'static str,
    /// Event-time column: partitions are its days, and the TTL counts from it.
    pub time_column: Option<&'static str>,
    /// The natural key, which is also the sort order (ReplacingMergeTree collapses rows
    /// with equal keys). Chosen for the table's common query.
    pub order_by: &'static [&'static str],
    /// String columns with few distinct values (`LowCardinality` where supported).
    pub low_cardinality: &'static [&'static str],
    /// Add a bloom-filter index on `trace_id` (servers with data-skipping indexes).
    pub trace_id_index: bool,
}

/// The series dimensions of the metric tables with few distinct values.
const SERIES_LOW_CARDINALITY: &[&str] = &[
    "metric",
    "service",
    "instance",
    "call_type",
    "peer",
    "status",
    "tenant",
];

/// Every built-in output table, in the order of `crate::tables::all_schemas`.
pub const TABLES: &[Builtin] = &[
    Builtin {
        name: "traces",
        about: "one row per closed trace (fragment); searched by root service and time",
        time_column: Some("start_time"),
        order_by: &["root_service", "start_time", "trace_id", "fragment"],
        low_cardinality: &[
            "root_service",
            "root_operation",
            "close_reason",
            "sampling_policy",
        ],
        trace_id_index: true,
    },
    Builtin {
        name: "spans",
        about: "every span of the traces the sampler kept; looked up by trace id",
        time_column: Some("start_time"),
        order_by: &["trace_id", "span_id"],
        low_cardinality: &[
            "service",
            "instance",
            "kind",
            "status",
            "call_type",
            "peer",
            "db_system",
            "messaging_destination",
        ],
        trace_id_index: false,
    },
    Builtin {
        name: "late_spans",
        about: "spans that arrived after their trace's window closed",
        time_column: Some("start_time"),
        order_by: &["trace_id", "span_id"],
        low_cardinality: &[
            "service",
            "instance",
            "kind",
            "status",
            "call_type",
            "peer",
            "db_system",
            "messaging_destination",
            "late_reason",
        ],
        trace_id_index: false,
    },
    Builtin {
        name: "dead_letters",
        about: "input that could not be decoded, with where it came from and why",
        time_column: None,
        order_by: &["source", "topic", "split", "offset", "span_index"],
        low_cardinality: &["source", "kind"],
        trace_id_index: false,
    },
    Builtin {
        name: "red_metrics",
        about: "RED series per interval; queried by service, metric and time",
        time_column: Some("interval_start"),
        order_by: &[
            "service",
            "metric",
            "interval_start",
            "operation",
            "call_type",
            "peer",
            "status",
            "instance",
            "tenant",
        ],
        low_cardinality: SERIES_LOW_CARDINALITY,
        trace_id_index: false,
    },
    Builtin {
        name: "exemplars",
        about: "one exemplar per series, interval and histogram bucket",
        time_column: Some("interval_start"),
        order_by: &[
            "service",
            "metric",
            "interval_start",
            "operation",
            "call_type",
            "peer",
            "status",
            "instance",
            "tenant",
            "bucket_le",
        ],
        low_cardinality: SERIES_LOW_CARDINALITY,
        trace_id_index: false,
    },
    Builtin {
        name: "service_relation",
        about: "service graph edges per interval; queried by source service and time",
        time_column: Some("interval_start"),
        order_by: &[
            "source",
            "interval_start",
            "target",
            "call_type",
            "target_kind",
            "connection_type",
        ],
        low_cardinality: &[
            "source",
            "target",
            "target_kind",
            "call_type",
            "connection_type",
        ],
        trace_id_index: false,
    },
    Builtin {
        name: "alerts",
        about: "alert events (firing, resolved) with the trace ids of kept traces; queried by rule and time",
        time_column: Some("at"),
        order_by: &[
            "rule",
            "starts_at",
            "state",
            "metric",
            "service",
            "instance",
            "operation",
            "call_type",
            "peer",
            "status",
            "tenant",
        ],
        low_cardinality: &[
            "rule",
            "state",
            "metric",
            "service",
            "call_type",
            "status",
            "tenant",
            "value_kind",
            "comparison",
        ],
        trace_id_index: false,
    },
];

/// Where one output lands in ClickHouse: a built-in table's layout, or one derived from a
/// rollup's result ([`TableLayout::of_rollup`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableLayout {
    /// Output (and default table) name.
    pub name: String,
    /// What a row is, for the DDL's comment.
    pub about: String,
    /// Event-time column: partitions are its days, and the TTL counts from it.
    pub time_column: Option<String>,
    /// The natural key, which is also the sort order (ReplacingMergeTree collapses rows
    /// with equal keys).
    pub order_by: Vec<String>,
    /// String columns with few distinct values (`LowCardinality` where supported).
    pub low_cardinality: Vec<String>,
    /// Add a bloom-filter index on `trace_id` (servers with data-skipping indexes).
    pub trace_id_index: bool,
}

impl From<&Builtin> for TableLayout {
    fn from(b: &Builtin) -> Self {
        let owned = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect();
        TableLayout {
            name: b.name.to_owned(),
            about: b.about.to_owned(),
            time_column: b.time_column.map(str::to_owned),
            order_by: owned(b.order_by),
            low_cardinality: owned(b.low_cardinality),
            trace_id_index: b.trace_id_index,
        }
    }
}

/// The layout of a built-in output, if `output` is one.
pub fn layout(output: &str) -> Option<TableLayout> {
    TABLES
        .iter()
        .find(|t| t.name == output)
        .map(TableLayout::from)
}

/// Whether the sink can write a column of type `t` (what `encode.rs` encodes), or what
/// to do instead.
fn writable(t: &DataType) -> Result<(), String> {
    match t {
        DataType::Boolean
        | DataType::Utf8
        | DataType::Binary
        | DataType::FixedSizeBinary(_)
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64
        | DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::Float32
        | DataType::Float64
        | DataType::Timestamp(TimeUnit::Nanosecond, _) => Ok(()),
        DataType::List(item) if super::encode::writable_list_item(item.data_type()) => Ok(()),
        DataType::Timestamp(..) | DataType::Date32 | DataType::Date64 => {
            Err("cast it to a nanosecond timestamp: `CAST(... AS TIMESTAMP)`".into())
        }
        DataType::Utf8View | DataType::LargeUtf8 | DataType::Dictionary(..) => {
            Err("cast it to text: `CAST(... AS VARCHAR)`".into())
        }
        DataType::Decimal32(..)
        | DataType::Decimal64(..)
        | DataType::Decimal128(..)
        | DataType::Decimal256(..)
        | DataType::Float16 => Err("cast it to `DOUBLE`".into()),
        DataType::Null => Err(
            "it is always NULL: cast it to the type it stands for, e.g. \
                               `CAST(NULL AS DOUBLE)`"
                .into(),
        ),
        _ => Err("select numbers, text, booleans, timestamps or arrays of numbers".into()),
    }
}

impl TableLayout {
    /// The layout of a rollup's table: ordered (and so de-duplicated on replay) by the
    /// result's natural `key` (its GROUP BY columns, when the query has them; else every
    /// column but floats and arrays), always including a timestamp column, so the rows of
    /// different windows never replace each other; partitioned by the day of the first
    /// timestamp column. Fails, saying why, for a result the sink cannot write.
    pub fn of_rollup(
        name: &str,
        schema: &Schema,
        key: &[String],
    ) -> Result<TableLayout, ConnectorError> {
        Self::rollup_layout(name, schema, key).map_err(ConnectorError::user)
    }

    fn rollup_layout(name: &str, schema: &Schema, key: &[String]) -> Result<TableLayout, String> {
        for f in schema.fields() {
            if let Err(hint) = writable(f.data_type()) {
                return Err(format!(
                    "result column `{}` is {}, which the ClickHouse sink cannot write; {hint}",
                    f.name(),
                    f.data_type()
                ));
            }
        }
        let time = schema
            .fields()
            .iter()
            .find(|f| matches!(f.data_type(), DataType::Timestamp(..)))
            .ok_or_else(|| {
                "its result has no timestamp column, so the rows of successive windows would \
                 replace each other in the table (a ReplacingMergeTree on the result's key); \
                 select the window's time, e.g. \
                 `date_bin(INTERVAL '1 minute', interval_start) AS minute`"
                    .to_owned()
            })?
            .name()
            .clone();
        let keyable = |f: &Field| {
            !matches!(
                f.data_type(),
                DataType::List(_) | DataType::Float32 | DataType::Float64
            )
        };
        let mut order_by: Vec<String> = if key.is_empty() {
            schema
                .fields()
                .iter()
                .filter(|f| keyable(f))
                .map(|f| f.name().clone())
                .collect()
        } else {
            key.to_vec()
        };
        if !order_by.contains(&time) {
            order_by.push(time.clone());
        }
        // Text dimensions repeat (services, operations); ids do not.
        let low_cardinality = order_by
            .iter()
            .filter(|k| {
                !k.ends_with("_id")
                    && schema
                        .field_with_name(k)
                        .is_ok_and(|f| f.data_type() == &DataType::Utf8)
            })
            .cloned()
            .collect();
        Ok(TableLayout {
            name: name.to_owned(),
            about: format!("the rows of rollup `{name}`, per window"),
            time_column: Some(time),
            order_by,
            low_cardinality,
            trace_id_index: false,
        })
    }
}

/// Name of the column every table carries for ReplacingMergeTree.
pub const VERSION_COLUMN: &str = "version";

/// A server version, from `SELECT version()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServerVersion {
    /// Year-based major (18, 24, ...).
    pub major: u32,
    /// Minor (release of the year).
    pub minor: u32,
}

impl ServerVersion {
    /// Parses `18.16.1` or `24.8.4.13`.
    pub fn parse(s: &str) -> Option<ServerVersion> {
        let mut it = s.trim().split('.');
        let major = it.next()?.parse().ok()?;
        let minor = it.next()?.parse().ok()?;
        Some(ServerVersion { major, minor })
    }
}

impl std::fmt::Display for ServerVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// What the server's types and DDL support.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    /// `DateTime64(9, 'UTC')` (20.1).
    pub datetime64: bool,
    /// `Map(K, V)` without experimental settings (22.1).
    pub map: bool,
    /// `LowCardinality` without experimental settings (19.3).
    pub low_cardinality: bool,
    /// Table TTL (19.6).
    pub ttl: bool,
    /// `Bool` (22.1).
    pub bool_type: bool,
    /// Data-skipping indexes without experimental settings (20.3).
    pub skip_index: bool,
}

impl Features {
    /// What `version` supports.
    pub fn of(version: ServerVersion) -> Features {
        let at = |major, minor| version >= ServerVersion { major, minor };
        Features {
            datetime64: at(20, 1),
            map: at(22, 1),
            low_cardinality: at(19, 3),
            ttl: at(19, 6),
            bool_type: at(22, 1),
            skip_index: at(20, 3),
        }
    }

    /// Debian's clickhouse-server (18.16): none of the newer features.
    pub fn legacy() -> Features {
        Features::of(ServerVersion {
            major: 18,
            minor: 16,
        })
    }

    /// A current release: every feature.
    pub fn current() -> Features {
        Features::of(ServerVersion {
            major: 25,
            minor: 8,
        })
    }
}

/// The ClickHouse type of an Arrow column (for maps on servers without `Map`, the
/// `Nested` type whose two columns hold keys and values).
pub fn column_type(field: &Field, low_cardinality: bool, f: Features) -> String {
    let base = match field.data_type() {
        DataType::Utf8 | DataType::LargeUtf8 if low_cardinality && f.low_cardinality => {
            if field.is_nullable() {
                return "LowCardinality(Nullable(String))".into();
            }
            "LowCardinality(String)".to_owned()
        }
        DataType::Map(..) => {
            return if f.map {
                "Map(LowCardinality(String), String)".into()
            } else {
                "Nested(key String, value String)".into()
            };
        }
        other => scalar_type(other, f),
    };
    if field.is_nullable() {
        format!("Nullable({base})")
    } else {
        base
    }
}

fn scalar_type(t: &DataType, f: Features) -> String {
    match t {
        DataType::Boolean if f.bool_type => "Bool".into(),
        DataType::Boolean | DataType::UInt8 => "UInt8".into(),
        DataType::UInt16 => "UInt16".into(),
        DataType::UInt32 => "UInt32".into(),
        DataType::UInt64 => "UInt64".into(),
        DataType::Int8 => "Int8".into(),
        DataType::Int16 => "Int16".into(),
        DataType::Int32 => "Int32".into(),
        DataType::Int64 => "Int64".into(),
        DataType::Float32 => "Float32".into(),
        DataType::Float64 => "Float64".into(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Binary | DataType::LargeBinary => {
            "String".into()
        }
        DataType::FixedSizeBinary(n) => format!("FixedString({n})"),
        DataType::Timestamp(..) if f.datetime64 => "DateTime64(9, 'UTC')".into(),
        // Unix nanoseconds: the portable form of a nanosecond timestamp.
        DataType::Timestamp(..) => "UInt64".into(),
        DataType::List(item) | DataType::LargeList(item) => {
            format!("Array({})", scalar_type(item.data_type(), f))
        }
        other => format!("String /* unsupported Arrow type {other} */"),
    }
}

/// Quotes an identifier.
pub fn quote(name: &str) -> String {
    format!("`{}`", name.replace('`', "\\`"))
}

/// An expression of the time in `column` that is never NULL (a NULL is the epoch), in
/// nanoseconds (a `UInt64` on old servers) or as a `DateTime64`.
fn time_expr(field: Option<&Field>, column: &str, f: Features) -> String {
    let q = quote(column);
    match (field.is_some_and(|f| f.is_nullable()), f.datetime64) {
        (false, _) => q,
        (true, true) => format!("ifNull({q}, toDateTime64(0, 9, 'UTC'))"),
        (true, false) => format!("ifNull({q}, 0)"),
    }
}

/// `time` (from [`time_expr`]) in whole seconds, as `DateTime`.
fn to_datetime(time: &str, f: Features) -> String {
    if f.datetime64 {
        format!("toDateTime({time})")
    } else {
        format!("toDateTime(intDiv({time}, 1000000000))")
    }
}

/// Sort-key expression of a column: `Nullable` columns cannot be keys on every server,
/// so they are keyed through `ifNull` (nulls sort after every unsigned value and the
/// empty string, and as zero otherwise).
fn key_expr(field: &Field, f: Features) -> String {
    let q = quote(field.name());
    if !field.is_nullable() {
        return q;
    }
    match field.data_type() {
        DataType::UInt32 => format!("ifNull({q}, 4294967295)"),
        DataType::UInt64 => format!("ifNull({q}, 18446744073709551615)"),
        DataType::Timestamp(..) => time_expr(Some(field), field.name(), f),
        DataType::Boolean if f.bool_type => format!("ifNull({q}, false)"),
        DataType::FixedSizeBinary(n) => format!("ifNull({q}, toFixedString('', {n}))"),
        t if t.is_numeric() || *t == DataType::Boolean => format!("ifNull({q}, 0)"),
        _ => format!("ifNull({q}, '')"),
    }
}

/// The `CREATE TABLE` of `layout` (whose rows have `schema`) as `database.table`.
pub fn create_table(
    layout: &TableLayout,
    schema: &SchemaRef,
    database: &str,
    table: &str,
    ttl: Option<Duration>,
    f: Features,
) -> String {
    let mut sql = String::new();
    let _ = writeln!(
        sql,
        "CREATE TABLE IF NOT EXISTS {}.{}\n(",
        quote(database),
        quote(table)
    );
    for field in schema.fields() {
        let lc = layout.low_cardinality.contains(field.name());
        let _ = writeln!(
            sql,
            "    {} {},",
            quote(field.name()),
            column_type(field, lc, f)
        );
    }
    let _ = write!(sql, "    {} UInt64", quote(VERSION_COLUMN));
    if layout.trace_id_index && f.skip_index {
        let _ = write!(
            sql,
            ",\n    INDEX trace_id_bloom {} TYPE bloom_filter(0.01) GRANULARITY 1",
            quote("trace_id")
        );
    }
    let _ = writeln!(sql, "\n)");
    let _ = writeln!(
        sql,
        "ENGINE = ReplacingMergeTree({})",
        quote(VERSION_COLUMN)
    );
    let time = layout
        .time_column
        .as_deref()
        .map(|tc| time_expr(schema.field_with_name(tc).ok(), tc, f));
    if let Some(time) = &time {
        let day = if f.datetime64 {
            time.clone()
        } else {
            to_datetime(time, f)
        };
        let _ = writeln!(sql, "PARTITION BY toDate({day})");
    }
    let keys: Vec<String> = layout
        .order_by
        .iter()
        .map(|k| match schema.field_with_name(k) {
            Ok(field) => key_expr(field, f),
            Err(_) => quote(k),
        })
        .collect();
    let _ = write!(sql, "ORDER BY ({})", keys.join(", "));
    if let (Some(time), Some(ttl), true) = (&time, ttl, f.ttl) {
        let _ = write!(
            sql,
            "\nTTL {} + INTERVAL {} SECOND",
            to_datetime(time, f),
            ttl.as_secs()
        );
    }
    sql
}

/// The DDL file of schemas/clickhouse for `layout`: a comment and the `CREATE TABLE` in
/// database `spanflow`.
pub fn schema_file(layout: &TableLayout, schema: &SchemaRef, f: Features, server: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "-- spanflow output `{}`: {}.\n-- Rendered for {server} by spanflow (the sink creates it when `create_tables: true`);\n\
         -- ReplacingMergeTree on the natural key: query with FINAL or argMax(..., version).\n\
         -- Regenerate: UPDATE_SCHEMA=1 cargo test --lib clickhouse::",
        layout.name, layout.about
    );
    out.push_str(&create_table(
        layout,
        schema,
        "spanflow",
        &layout.name,
        None,
        f,
    ));
    out.push_str(";\n");
    out
}

/// The columns a server lists for a table created with [`create_table`] (a `Nested`
/// column is listed as its two arrays), for planning without a server.
pub fn server_columns(
    schema: &SchemaRef,
    layout: &TableLayout,
    f: Features,
) -> Vec<super::encode::ServerColumn> {
    use super::encode::ServerColumn;
    let mut out = Vec::new();
    for field in schema.fields() {
        let lc = layout.low_cardinality.contains(field.name());
        let ty = column_type(field, lc, f);
        if ty.starts_with("Nested(") {
            for part in ["key", "value"] {
                out.push(ServerColumn {
                    name: format!("{}.{part}", field.name()),
                    ty: "Array(String)".into(),
                });
            }
        } else {
            out.push(ServerColumn {
                name: field.name().clone(),
                ty,
            });
        }
    }
    out.push(ServerColumn {
        name: VERSION_COLUMN.into(),
        ty: "UInt64".into(),
    });
    out
}
