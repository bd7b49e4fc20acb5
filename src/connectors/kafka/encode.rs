//! Encoding output rows as Kafka records: Avro (schemas derived from the tables' Arrow
//! schemas and shipped as schemas/avro/*.avsc), JSON, and OTLP protobuf for span tables.
//!
//! The encoders read the same Arrow batches the Parquet sink writes, so every output
//! has one definition of its columns.

use apache_avro::types::Value as Avro;
use arrow::array::{Array, ArrayRef, AsArray, StringArray};
use arrow::datatypes::{
    DataType, Float64Type, Schema, TimeUnit, TimestampNanosecondType, UInt16Type, UInt32Type,
    UInt64Type,
};
use arrow::record_batch::RecordBatch;
use serde_json::{Value as Json, json};

use crate::runtime::io::ConnectorError;

/// The Avro schema (as JSON) of a table with this Arrow schema. Record name
/// `spanflow.<TableInCamelCase>`; ids are `fixed`, timestamps `long` with
/// `timestamp-nanos`, unsigned integers `long`, maps `map<string>`, nullable columns a
/// union with `null` first.
pub fn avro_schema_json(table: &str, schema: &Schema) -> Json {
    let mut named = Vec::new();
    let fields: Vec<Json> = schema
        .fields()
        .iter()
        .map(|f| {
            let t = avro_type(f.data_type(), f.name(), &mut named);
            if f.is_nullable() {
                json!({"name": f.name(), "type": ["null", t], "default": null})
            } else {
                json!({"name": f.name(), "type": t})
            }
        })
        .collect();
    json!({
        "type": "record",
        "name": camel(table),
        "namespace": "spanflow",
        "doc": format!("One row of the `{table}` output (generated from the Arrow schema; see README)."),
        "fields": fields,
    })
}

fn camel(table: &str) -> String {
    table
        .split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

fn avro_type(t: &DataType, field: &str, named: &mut Vec<String>) -> Json {
    match t {
        DataType::Utf8 => json!("string"),
        DataType::Boolean => json!("boolean"),
        DataType::UInt16 | DataType::UInt32 | DataType::UInt64 | DataType::Int64 => json!("long"),
        DataType::Float64 => json!("double"),
        DataType::Binary => json!("bytes"),
        DataType::Timestamp(TimeUnit::Nanosecond, _) => {
            json!({"type": "long", "logicalType": "timestamp-nanos"})
        }
        DataType::FixedSizeBinary(n) => {
            let name = match (*n, field) {
                (16, _) => "TraceId".to_owned(),
                (8, _) => "SpanId".to_owned(),
                (_, f) => camel(f),
            };
            if named.contains(&name) {
                json!(format!("spanflow.{name}"))
            } else {
                named.push(name.clone());
                json!({"type": "fixed", "name": name, "namespace": "spanflow", "size": n})
            }
        }
        DataType::List(item) => {
            json!({"type": "array", "items": avro_type(item.data_type(), field, named)})
        }
        DataType::Map(_, _) => json!({"type": "map", "values": "string"}),
        other => json!(format!("unsupported:{other}")),
    }
}

/// One cell, borrowed from its column.
enum Cell<'a> {
    Null,
    Bool(bool),
    U64(u64),
    F64(f64),
    Str(&'a str),
    Bytes(&'a [u8]),
    Ts(i64),
    List(Vec<Cell<'a>>),
    Map(Vec<(&'a str, &'a str)>),
    Unsupported,
}

fn cell(col: &ArrayRef, row: usize) -> Cell<'_> {
    if col.is_null(row) {
        return Cell::Null;
    }
    // The `as_*` casts below cannot fail: each arm matched the column's type first.
    match col.data_type() {
        DataType::Utf8 => Cell::Str(col.as_string::<i32>().value(row)),
        DataType::Boolean => Cell::Bool(col.as_boolean().value(row)),
        DataType::UInt16 => Cell::U64(u64::from(col.as_primitive::<UInt16Type>().value(row))),
        DataType::UInt32 => Cell::U64(u64::from(col.as_primitive::<UInt32Type>().value(row))),
        DataType::UInt64 => Cell::U64(col.as_primitive::<UInt64Type>().value(row)),
        DataType::Float64 => Cell::F64(col.as_primitive::<Float64Type>().value(row)),
        DataType::Binary => Cell::Bytes(col.as_binary::<i32>().value(row)),
        DataType::FixedSizeBinary(_) => Cell::Bytes(col.as_fixed_size_binary().value(row)),
        DataType::Timestamp(TimeUnit::Nanosecond, _) => {
            Cell::Ts(col.as_primitive::<TimestampNanosecondType>().value(row))
        }
        DataType::List(_) => {
            let list = col.as_list::<i32>();
            let offsets = list.value_offsets();
            let (start, end) = (offsets[row] as usize, offsets[row + 1] as usize);
            Cell::List((start..end).map(|i| cell(list.values(), i)).collect())
        }
        DataType::Map(_, _) => {
            let m = col.as_map();
            let offsets = m.value_offsets();
            let (start, end) = (offsets[row] as usize, offsets[row + 1] as usize);
            let keys = m.keys().as_any().downcast_ref::<StringArray>();
            let vals = m.values().as_any().downcast_ref::<StringArray>();
            match (keys, vals) {
                (Some(k), Some(v)) => Cell::Map(
                    (start..end)
                        .map(|i| (k.value(i), if v.is_null(i) { "" } else { v.value(i) }))
                        .collect(),
                ),
                _ => Cell::Unsupported,
            }
        }
        _ => Cell::Unsupported,
    }
}

fn to_avro(c: Cell<'_>, nullable: bool) -> Result<Avro, String> {
    let v = match c {
        Cell::Null => return Ok(Avro::Union(0, Box::new(Avro::Null))),
        Cell::Bool(b) => Avro::Boolean(b),
        Cell::U64(u) => {
            Avro::Long(i64::try_from(u).map_err(|_| format!("{u} does not fit an Avro long"))?)
        }
        Cell::F64(f) => Avro::Double(f),
        Cell::Str(s) => Avro::String(s.to_owned()),
        Cell::Bytes(b) => Avro::Bytes(b.to_vec()),
        Cell::Ts(t) => Avro::TimestampNanos(t),
        Cell::List(v) => Avro::Array(
            v.into_iter()
                .map(|c| to_avro(c, false))
                .collect::<Result<_, _>>()?,
        ),
        Cell::Map(kv) => Avro::Map(
            kv.into_iter()
                .map(|(k, v)| (k.to_owned(), Avro::String(v.to_owned())))
                .collect(),
        ),
        Cell::Unsupported => return Err("a column type without an Avro mapping".into()),
    };
    Ok(if nullable {
        Avro::Union(1, Box::new(v))
    } else {
        v
    })
}

fn to_json(c: Cell<'_>) -> Json {
    match c {
        Cell::Null | Cell::Unsupported => Json::Null,
        Cell::Bool(b) => json!(b),
        Cell::U64(u) => json!(u),
        Cell::F64(f) => json!(f),
        Cell::Str(s) => json!(s),
        Cell::Bytes(b) => json!(hex::encode(b)),
        Cell::Ts(t) => json!(t),
        Cell::List(v) => Json::Array(v.into_iter().map(to_json).collect()),
        Cell::Map(kv) => Json::Object(
            kv.into_iter()
                .map(|(k, v)| (k.to_owned(), json!(v)))
                .collect(),
        ),
    }
}

/// Receives each encoded record as (key, value); an error stops the encoding.
pub type RecordSink<'a> = dyn FnMut(&str, &[u8]) -> Result<(), ConnectorError> + 'a;

/// Turns rows of one table into (key, value) records.
pub struct RowEncoder {
    table: String,
    format: super::OutputFormat,
    avro: Option<(apache_avro::Schema, apache_avro::GenericSingleObjectWriter)>,
    key_columns: Vec<usize>,
    key_is_trace: bool,
}

impl RowEncoder {
    /// An encoder for `table` rows with `schema` in `format`.
    pub fn new(
        table: &str,
        schema: &Schema,
        format: super::OutputFormat,
    ) -> Result<Self, ConnectorError> {
        let avro = if format == super::OutputFormat::Avro {
            let json = avro_schema_json(table, schema);
            let s = apache_avro::Schema::parse(&json)
                .map_err(|e| ConnectorError::internal(format!("Avro schema of `{table}`: {e}")))?;
            let w = apache_avro::GenericSingleObjectWriter::new_with_capacity(&s, 1024)
                .map_err(|e| ConnectorError::internal(format!("Avro writer of `{table}`: {e}")))?;
            Some((s, w))
        } else {
            None
        };
        let key_is_trace = matches!(table, "spans" | "late_spans" | "traces");
        let key_names: &[&str] = match table {
            "spans" | "late_spans" | "traces" => &["trace_id"],
            "red_metrics" => &[
                "metric",
                "service",
                "instance",
                "operation",
                "call_type",
                "peer",
                "status",
                "tenant",
            ],
            "exemplars" => &[
                "metric",
                "service",
                "instance",
                "operation",
                "call_type",
                "peer",
                "status",
                "tenant",
                "bucket_le",
            ],
            "service_relation" => &[
                "source",
                "target",
                "target_kind",
                "call_type",
                "connection_type",
            ],
            "dead_letters" => &["source", "split"],
            "alerts" => &[
                "rule",
                "metric",
                "service",
                "instance",
                "operation",
                "call_type",
                "peer",
                "status",
                "tenant",
            ],
            _ => &[],
        };
        let key_columns = key_names
            .iter()
            .filter_map(|n| schema.index_of(n).ok())
            .collect();
        Ok(RowEncoder {
            table: table.to_owned(),
            format,
            avro,
            key_columns,
            key_is_trace,
        })
    }

    /// The record key of a row: the trace id (hex) for trace and span tables, the
    /// series (its dimensions joined by `|`) for metric tables. Deterministic, so a
    /// replay produces the same keys.
    pub fn key(&self, batch: &RecordBatch, row: usize) -> String {
        let mut key = String::new();
        for (i, &c) in self.key_columns.iter().enumerate() {
            if i > 0 {
                key.push('|');
            }
            match cell(batch.column(c), row) {
                Cell::Str(s) => key.push_str(s),
                Cell::Bytes(b) => key.push_str(&hex::encode(b)),
                Cell::U64(u) => key.push_str(&u.to_string()),
                Cell::F64(f) => key.push_str(&f.to_string()),
                _ => {}
            }
        }
        key
    }

    /// Encodes every row of `batch`, calling `out(key, value)` per record. OTLP
    /// protobuf produces one record per trace (consecutive rows of one trace id).
    pub fn encode(
        &mut self,
        batch: &RecordBatch,
        out: &mut RecordSink<'_>,
    ) -> Result<(), ConnectorError> {
        match self.format {
            super::OutputFormat::Avro => {
                let schema = batch.schema();
                let mut buf = Vec::with_capacity(512);
                for row in 0..batch.num_rows() {
                    let mut fields = Vec::with_capacity(schema.fields().len());
                    for (f, col) in schema.fields().iter().zip(batch.columns()) {
                        let v = to_avro(cell(col, row), f.is_nullable()).map_err(|e| {
                            ConnectorError::user(format!("`{}`.{}: {e}", self.table, f.name()))
                        })?;
                        fields.push((f.name().clone(), v));
                    }
                    buf.clear();
                    let Some((_, w)) = self.avro.as_mut() else {
                        return Err(ConnectorError::internal("Avro writer missing"));
                    };
                    w.write_value(Avro::Record(fields), &mut buf).map_err(|e| {
                        ConnectorError::internal(format!(
                            "encoding a `{}` row as Avro: {e}",
                            self.table
                        ))
                    })?;
                    out(&self.key(batch, row), &buf)?;
                }
            }
            super::OutputFormat::Json => {
                let schema = batch.schema();
                for row in 0..batch.num_rows() {
                    let mut obj = serde_json::Map::with_capacity(schema.fields().len());
                    for (f, col) in schema.fields().iter().zip(batch.columns()) {
                        obj.insert(f.name().clone(), to_json(cell(col, row)));
                    }
                    let bytes = serde_json::to_vec(&Json::Object(obj)).map_err(|e| {
                        ConnectorError::internal(format!(
                            "encoding a `{}` row as JSON: {e}",
                            self.table
                        ))
                    })?;
                    out(&self.key(batch, row), &bytes)?;
                }
            }
            super::OutputFormat::OtlpProto => {
                let mut start = 0;
                while start < batch.num_rows() {
                    let key = self.key(batch, start);
                    let mut end = start + 1;
                    while end < batch.num_rows() && self.key(batch, end) == key {
                        end += 1;
                    }
                    let bytes = otlp_request(batch, start..end)?;
                    out(&key, &bytes)?;
                    start = end;
                }
            }
        }
        Ok(())
    }

    /// True when records are keyed by trace id.
    pub fn keyed_by_trace(&self) -> bool {
        self.key_is_trace
    }
}

/// Builds an OTLP `ExportTraceServiceRequest` from span rows: each row's `otlp` (the
/// span's `Span` message) under its `otlp_resource` (its resource and scope), so a span
/// decoded from OTLP goes out as the message it came in as.
fn otlp_request(
    batch: &RecordBatch,
    rows: std::ops::Range<usize>,
) -> Result<Vec<u8>, ConnectorError> {
    let col = |name: &str| -> Result<&arrow::array::BinaryArray, ConnectorError> {
        batch
            .schema()
            .index_of(name)
            .ok()
            .and_then(|i| batch.column(i).as_binary_opt::<i32>())
            .ok_or_else(|| ConnectorError::internal(format!("span rows have no `{name}` column")))
    };
    let (span, envelope) = (col("otlp")?, col("otlp_resource")?);
    Ok(crate::formats::otlp_out::request(
        rows.map(|r| (envelope.value(r), span.value(r))),
    ))
}

/// Avro schemas of every output table, as shipped in schemas/avro (file name
/// `<table>.avsc`).
pub fn shipped_avro_schemas() -> Vec<(&'static str, Json)> {
    crate::tables::all_schemas()
        .into_iter()
        .map(|(table, schema)| (table, avro_schema_json(table, &schema)))
        .collect()
}

/// Parses one shipped schema file's text.
pub fn parse_avro_schema(text: &str) -> Result<apache_avro::Schema, ConnectorError> {
    apache_avro::Schema::parse_str(text).map_err(|e| ConnectorError::user(e.to_string()))
}
