//! RowBinary encoding of output batches, planned against the table's real columns.
//!
//! The `clickhouse` crate encodes serde structs; spanflow's rows are Arrow batches whose
//! ClickHouse column types depend on the server (a timestamp is `DateTime64(9)` or
//! `UInt64`, a map `Map` or `Nested` arrays). Converting each Arrow row into an owned
//! struct per table and server kind would allocate per row, so batches are encoded here
//! column type by column type, and the crate sends the bytes (`insert_formatted_with`,
//! with its compression and HTTP handling). The plan is made from `system.columns`, so
//! a table whose types do not fit fails at start naming the table and column (the
//! crate's own validation needs a newer server), and a table created by hand or by an
//! older spanflow is written in its own types. Tests compare the encoding with the
//! crate's serde encoding of the same rows (`tests.rs`).

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BooleanArray, FixedSizeBinaryArray, ListArray, MapArray,
    StringArray,
};
use arrow::datatypes::{
    DataType, Field, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type,
    SchemaRef, TimestampNanosecondType, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use arrow::record_batch::RecordBatch;

use super::ddl::VERSION_COLUMN;
use crate::runtime::io::ConnectorError;

/// A column as `system.columns` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerColumn {
    /// Column name (`attributes.key` for a `Nested` member).
    pub name: String,
    /// Type as the server prints it.
    pub ty: String,
}

/// Fixed-width primitive kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Prim {
    U8,
    U16,
    U32,
    U64,
    I8,
    I16,
    I32,
    I64,
    F32,
    F64,
}

impl Prim {
    fn of(t: &DataType) -> Option<(Prim, &'static str)> {
        Some(match t {
            DataType::UInt8 => (Prim::U8, "UInt8"),
            DataType::UInt16 => (Prim::U16, "UInt16"),
            DataType::UInt32 => (Prim::U32, "UInt32"),
            DataType::UInt64 => (Prim::U64, "UInt64"),
            DataType::Int8 => (Prim::I8, "Int8"),
            DataType::Int16 => (Prim::I16, "Int16"),
            DataType::Int32 => (Prim::I32, "Int32"),
            DataType::Int64 => (Prim::I64, "Int64"),
            DataType::Float32 => (Prim::F32, "Float32"),
            DataType::Float64 => (Prim::F64, "Float64"),
            _ => return None,
        })
    }
}

/// Whether a list of `item`s can be written (as `Array(...)` of a number, a string, a
/// fixed-size binary or a nanosecond timestamp).
pub(crate) fn writable_list_item(item: &DataType) -> bool {
    Prim::of(item).is_some()
        || matches!(
            item,
            DataType::Utf8
                | DataType::Binary
                | DataType::FixedSizeBinary(_)
                | DataType::Timestamp(arrow::datatypes::TimeUnit::Nanosecond, _)
        )
}

/// How one Arrow column becomes RowBinary.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Enc {
    /// A primitive, little-endian, same width.
    Prim(Prim),
    /// `UInt8` or `Bool`.
    Bool,
    /// UTF-8 or binary as `String`.
    Str,
    /// `FixedString(n)`.
    Fixed(usize),
    /// Nanosecond timestamp as an 8-byte integer in units of `10^-precision` s
    /// (`DateTime64(p)`, or unix nanos in `UInt64`/`Int64`).
    Time64 { divisor: i64 },
    /// Nanosecond timestamp as `DateTime` (u32 seconds).
    Time32,
    /// `Array(prim)`.
    List(Prim),
    /// `Array(T)` of another item encoding (strings, fixed strings, timestamps).
    ListOf(Box<Enc>),
    /// `Map(String, String)`: count, then key/value pairs.
    Map,
    /// `Nested(key, value)`: the keys array, then the values array.
    Nested,
}

/// One written column: which Arrow column, how, and whether it is `Nullable`.
#[derive(Debug, Clone)]
struct PlannedColumn {
    arrow: usize,
    enc: Enc,
    nullable: bool,
}

/// How a table's batches are encoded; made once per table at start.
#[derive(Debug, Clone)]
pub struct TablePlan {
    columns: Vec<PlannedColumn>,
    /// The `INSERT` column list, in encoding order (the version column last).
    pub insert_columns: Vec<String>,
    version: u64,
}

/// `T` without a `LowCardinality(...)` wrapper (same RowBinary).
fn strip_low_cardinality(t: &str) -> &str {
    t.strip_prefix("LowCardinality(")
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or(t)
}

fn strip_nullable(t: &str) -> (&str, bool) {
    match t
        .strip_prefix("Nullable(")
        .and_then(|r| r.strip_suffix(')'))
    {
        Some(inner) => (inner, true),
        None => (t, false),
    }
}

/// The server type without spaces or `LowCardinality`.
fn normalize(t: &str) -> String {
    let t: String = t.chars().filter(|c| !c.is_whitespace()).collect();
    let (inner, nullable) = {
        let lc = strip_low_cardinality(&t);
        let (inner, n) = strip_nullable(lc);
        (strip_low_cardinality(inner).to_owned(), n)
    };
    if nullable {
        format!("Nullable({inner})")
    } else {
        inner
    }
}

fn is_string_type(t: &str) -> bool {
    strip_low_cardinality(t) == "String"
}

/// The encoding of a scalar Arrow type into the (normalized, non-Nullable) server type,
/// or what the server type should have been.
fn scalar_enc(t: &DataType, server: &str) -> Result<Enc, String> {
    match t {
        DataType::Boolean => match server {
            "UInt8" | "Bool" => Ok(Enc::Bool),
            _ => Err("UInt8 or Bool".into()),
        },
        DataType::Utf8 | DataType::Binary => match server {
            "String" => Ok(Enc::Str),
            _ => Err("String or LowCardinality(String)".into()),
        },
        DataType::FixedSizeBinary(n) => {
            let want = format!("FixedString({n})");
            if server == want {
                usize::try_from(*n)
                    .map(Enc::Fixed)
                    .map_err(|_| want.clone())
            } else {
                Err(want)
            }
        }
        DataType::Timestamp(..) => {
            if server == "UInt64" || server == "Int64" {
                return Ok(Enc::Time64 { divisor: 1 });
            }
            if server == "DateTime" || server.starts_with("DateTime('") {
                return Ok(Enc::Time32);
            }
            if let Some(args) = server
                .strip_prefix("DateTime64(")
                .and_then(|r| r.strip_suffix(')'))
            {
                let precision: u32 = args
                    .split(',')
                    .next()
                    .and_then(|p| p.parse().ok())
                    .filter(|p| *p <= 9)
                    .ok_or_else(|| "DateTime64(9) or UInt64 (unix nanoseconds)".to_owned())?;
                return Ok(Enc::Time64 {
                    divisor: 10i64.pow(9 - precision),
                });
            }
            Err("DateTime64(9) or UInt64 (unix nanoseconds)".into())
        }
        DataType::List(item) => {
            if let Some((p, name)) = Prim::of(item.data_type()) {
                return if server == format!("Array({name})") {
                    Ok(Enc::List(p))
                } else {
                    Err(format!("Array({name})"))
                };
            }
            if !writable_list_item(item.data_type()) {
                return Err(format!("a type spanflow can write (Arrow {t})"));
            }
            let inner = server
                .strip_prefix("Array(")
                .and_then(|r| r.strip_suffix(')'))
                .map(normalize);
            match inner {
                Some(i) => scalar_enc(item.data_type(), &i)
                    .map(|e| Enc::ListOf(Box::new(e)))
                    .map_err(|want| format!("Array({want})")),
                None => Err(format!(
                    "Array({})",
                    scalar_enc(item.data_type(), "").err().unwrap_or_default()
                )),
            }
        }
        other => {
            let (p, name) =
                Prim::of(other).ok_or_else(|| format!("a type spanflow can write (Arrow {t})"))?;
            if server == name {
                Ok(Enc::Prim(p))
            } else {
                Err(name.to_owned())
            }
        }
    }
}

fn plan_map(
    table: &str,
    field: &Field,
    find: &dyn Fn(&str) -> Option<String>,
) -> Result<(Enc, Vec<String>), String> {
    let name = field.name();
    if let Some(ty) = find(name) {
        let t: String = ty.chars().filter(|c| !c.is_whitespace()).collect();
        let ok = t
            .strip_prefix("Map(")
            .and_then(|r| r.strip_suffix(')'))
            .and_then(|kv| kv.rsplit_once(','))
            .is_some_and(|(k, v)| is_string_type(k) && is_string_type(v));
        if ok {
            return Ok((Enc::Map, vec![name.clone()]));
        }
        return Err(format!(
            "table `{table}` column `{name}` is {ty}; spanflow writes Map(String, String) \
             here (or Nested(key String, value String) as `{name}.key`/`{name}.value`)"
        ));
    }
    let (k, v) = (format!("{name}.key"), format!("{name}.value"));
    match (find(&k), find(&v)) {
        (Some(kt), Some(vt)) => {
            let arr = |t: &str| {
                let t: String = t.chars().filter(|c| !c.is_whitespace()).collect();
                t.strip_prefix("Array(")
                    .and_then(|r| r.strip_suffix(')'))
                    .is_some_and(is_string_type)
            };
            if arr(&kt) && arr(&vt) {
                Ok((Enc::Nested, vec![k, v]))
            } else {
                Err(format!(
                    "table `{table}` columns `{k}` ({kt}) and `{v}` ({vt}) must both be Array(String)"
                ))
            }
        }
        _ => Err(format!(
            "table `{table}` has no column `{name}` (spanflow writes Map(String, String), or \
             Nested(key String, value String) on servers without Map)"
        )),
    }
}

impl TablePlan {
    /// Plans the encoding of batches with `schema` into `table` (`db.table`, for
    /// messages), whose columns are `server`; `version` goes into the version column.
    /// Fails (the user's to fix: the table's definition) when a column is missing or of
    /// another type.
    pub fn new(
        table: &str,
        schema: &SchemaRef,
        server: &[ServerColumn],
        version: u64,
    ) -> Result<TablePlan, ConnectorError> {
        Self::plan(table, schema, server, version).map_err(ConnectorError::user)
    }

    fn plan(
        table: &str,
        schema: &SchemaRef,
        server: &[ServerColumn],
        version: u64,
    ) -> Result<TablePlan, String> {
        let find = |name: &str| server.iter().find(|c| c.name == name).map(|c| c.ty.clone());
        let mut columns = Vec::with_capacity(schema.fields().len());
        let mut insert_columns = Vec::new();
        for (i, field) in schema.fields().iter().enumerate() {
            if matches!(field.data_type(), DataType::Map(..)) {
                let (enc, names) = plan_map(table, field, &find)?;
                columns.push(PlannedColumn {
                    arrow: i,
                    enc,
                    nullable: false,
                });
                insert_columns.extend(names);
                continue;
            }
            let Some(ty) = find(field.name()) else {
                let want = super::ddl::column_type(field, false, super::ddl::Features::legacy());
                return Err(format!(
                    "table `{table}` has no column `{}` (spanflow writes {want} there)",
                    field.name()
                ));
            };
            let norm = normalize(&ty);
            let (inner, nullable) = strip_nullable(&norm);
            let enc = if nullable != field.is_nullable() {
                Err(if field.is_nullable() {
                    format!("Nullable({})", scalar_expected(field.data_type(), inner))
                } else {
                    format!(
                        "a type that is not Nullable ({})",
                        scalar_expected(field.data_type(), inner)
                    )
                })
            } else {
                scalar_enc(field.data_type(), inner)
            };
            match enc {
                Ok(enc) => {
                    columns.push(PlannedColumn {
                        arrow: i,
                        enc,
                        nullable,
                    });
                    insert_columns.push(field.name().clone());
                }
                Err(want) => {
                    return Err(format!(
                        "table `{table}` column `{}` is {ty}, but spanflow writes {want} there \
                         (drop the table to let `create_tables: true` recreate it, or fix the \
                         column type)",
                        field.name()
                    ));
                }
            }
        }
        match find(VERSION_COLUMN) {
            Some(ty) if normalize(&ty) == "UInt64" => {}
            Some(ty) => {
                return Err(format!(
                    "table `{table}` column `{VERSION_COLUMN}` is {ty}, but spanflow writes UInt64 there"
                ));
            }
            None => {
                return Err(format!(
                    "table `{table}` has no column `{VERSION_COLUMN}` (UInt64, the \
                     ReplacingMergeTree version spanflow writes)"
                ));
            }
        }
        insert_columns.push(VERSION_COLUMN.to_owned());
        Ok(TablePlan {
            columns,
            insert_columns,
            version,
        })
    }

    /// Appends every row of `batch` to `out`.
    pub fn encode(&self, batch: &RecordBatch, out: &mut Vec<u8>) -> Result<(), ConnectorError> {
        // The plan was checked against the batch's schema: a mismatch here is a bug.
        self.encode_rows(batch, out)
            .map_err(ConnectorError::internal)
    }

    fn encode_rows(&self, batch: &RecordBatch, out: &mut Vec<u8>) -> Result<(), String> {
        let bound: Vec<(Bound<'_>, bool)> = self
            .columns
            .iter()
            .map(|c| Ok((Bound::new(batch.column(c.arrow), &c.enc)?, c.nullable)))
            .collect::<Result<_, String>>()?;
        let version = self.version.to_le_bytes();
        for row in 0..batch.num_rows() {
            for (b, nullable) in &bound {
                if *nullable {
                    if b.is_null(row) {
                        out.push(1);
                        continue;
                    }
                    out.push(0);
                }
                b.write(row, out);
            }
            out.extend_from_slice(&version);
        }
        Ok(())
    }
}

/// What to tell the user a column should be, given the scalar it has now.
fn scalar_expected(t: &DataType, inner: &str) -> String {
    scalar_enc(t, inner)
        .map(|_| inner.to_owned())
        .unwrap_or_else(|want| want)
}

/// A column of one batch, downcast once.
enum Bound<'a> {
    Prim(&'a dyn Array, PrimSlice<'a>),
    Bool(&'a BooleanArray),
    Str(&'a StringArray),
    Bin(&'a BinaryArray),
    Fixed(&'a FixedSizeBinaryArray),
    Time64(&'a [i64], &'a dyn Array, i64),
    Time32(&'a [i64], &'a dyn Array),
    List(&'a ListArray, PrimSlice<'a>),
    ListOf(&'a ListArray, Box<Bound<'a>>),
    Map(&'a MapArray, &'a StringArray, &'a StringArray, bool),
}

#[derive(Clone, Copy)]
enum PrimSlice<'a> {
    U8(&'a [u8]),
    U16(&'a [u16]),
    U32(&'a [u32]),
    U64(&'a [u64]),
    I8(&'a [i8]),
    I16(&'a [i16]),
    I32(&'a [i32]),
    I64(&'a [i64]),
    F32(&'a [f32]),
    F64(&'a [f64]),
}

impl<'a> PrimSlice<'a> {
    fn of(a: &'a ArrayRef, p: Prim) -> Option<PrimSlice<'a>> {
        Some(match p {
            Prim::U8 => PrimSlice::U8(a.as_primitive_opt::<UInt8Type>()?.values()),
            Prim::U16 => PrimSlice::U16(a.as_primitive_opt::<UInt16Type>()?.values()),
            Prim::U32 => PrimSlice::U32(a.as_primitive_opt::<UInt32Type>()?.values()),
            Prim::U64 => PrimSlice::U64(a.as_primitive_opt::<UInt64Type>()?.values()),
            Prim::I8 => PrimSlice::I8(a.as_primitive_opt::<Int8Type>()?.values()),
            Prim::I16 => PrimSlice::I16(a.as_primitive_opt::<Int16Type>()?.values()),
            Prim::I32 => PrimSlice::I32(a.as_primitive_opt::<Int32Type>()?.values()),
            Prim::I64 => PrimSlice::I64(a.as_primitive_opt::<Int64Type>()?.values()),
            Prim::F32 => PrimSlice::F32(a.as_primitive_opt::<Float32Type>()?.values()),
            Prim::F64 => PrimSlice::F64(a.as_primitive_opt::<Float64Type>()?.values()),
        })
    }

    /// Writes items `range` (indexes into the slice).
    fn write(self, range: std::ops::Range<usize>, out: &mut Vec<u8>) {
        macro_rules! put {
            ($s:expr) => {
                for v in &$s[range] {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            };
        }
        match self {
            PrimSlice::U8(s) => out.extend_from_slice(&s[range]),
            PrimSlice::U16(s) => put!(s),
            PrimSlice::U32(s) => put!(s),
            PrimSlice::U64(s) => put!(s),
            PrimSlice::I8(s) => put!(s),
            PrimSlice::I16(s) => put!(s),
            PrimSlice::I32(s) => put!(s),
            PrimSlice::I64(s) => put!(s),
            PrimSlice::F32(s) => put!(s),
            PrimSlice::F64(s) => put!(s),
        }
    }
}

fn mismatch(a: &ArrayRef) -> String {
    format!(
        "internal error: column of Arrow type {} does not match its plan (this is a bug)",
        a.data_type()
    )
}

impl<'a> Bound<'a> {
    fn new(a: &'a ArrayRef, enc: &Enc) -> Result<Bound<'a>, String> {
        let b = match enc {
            Enc::Prim(p) => PrimSlice::of(a, *p).map(|s| Bound::Prim(a.as_ref(), s)),
            Enc::Bool => a.as_boolean_opt().map(Bound::Bool),
            Enc::Str => match a.data_type() {
                DataType::Binary => a.as_binary_opt::<i32>().map(Bound::Bin),
                _ => a.as_string_opt::<i32>().map(Bound::Str),
            },
            Enc::Fixed(_) => a.as_fixed_size_binary_opt().map(Bound::Fixed),
            Enc::Time64 { divisor } => a
                .as_primitive_opt::<TimestampNanosecondType>()
                .map(|t| Bound::Time64(t.values(), a.as_ref(), *divisor)),
            Enc::Time32 => a
                .as_primitive_opt::<TimestampNanosecondType>()
                .map(|t| Bound::Time32(t.values(), a.as_ref())),
            Enc::List(p) => a
                .as_list_opt::<i32>()
                .and_then(|l| PrimSlice::of(l.values(), *p).map(|s| Bound::List(l, s))),
            Enc::ListOf(inner) => match a.as_list_opt::<i32>() {
                Some(l) => Some(Bound::ListOf(l, Box::new(Bound::new(l.values(), inner)?))),
                None => None,
            },
            Enc::Map | Enc::Nested => a.as_map_opt().and_then(|m| {
                let keys = m.keys().as_string_opt::<i32>()?;
                let values = m.values().as_string_opt::<i32>()?;
                Some(Bound::Map(m, keys, values, *enc == Enc::Nested))
            }),
        };
        b.ok_or_else(|| mismatch(a))
    }

    fn is_null(&self, row: usize) -> bool {
        match self {
            Bound::Prim(a, _) | Bound::Time64(_, a, _) | Bound::Time32(_, a) => a.is_null(row),
            Bound::Bool(a) => a.is_null(row),
            Bound::Str(a) => a.is_null(row),
            Bound::Bin(a) => a.is_null(row),
            Bound::Fixed(a) => a.is_null(row),
            Bound::List(a, _) | Bound::ListOf(a, _) => a.is_null(row),
            Bound::Map(a, ..) => a.is_null(row),
        }
    }

    fn write(&self, row: usize, out: &mut Vec<u8>) {
        match self {
            Bound::Prim(_, s) => s.write(row..row + 1, out),
            Bound::Bool(a) => out.push(u8::from(a.value(row))),
            Bound::Str(a) => put_bytes(a.value(row).as_bytes(), out),
            Bound::Bin(a) => put_bytes(a.value(row), out),
            Bound::Fixed(a) => out.extend_from_slice(a.value(row)),
            Bound::Time64(v, _, div) => {
                out.extend_from_slice(&v[row].div_euclid(*div).to_le_bytes());
            }
            Bound::Time32(v, _) => {
                let secs = u32::try_from(v[row].div_euclid(1_000_000_000)).unwrap_or(0);
                out.extend_from_slice(&secs.to_le_bytes());
            }
            Bound::List(a, s) => {
                let offs = a.value_offsets();
                let (from, to) = (offs[row] as usize, offs[row + 1] as usize);
                put_varint((to - from) as u64, out);
                s.write(from..to, out);
            }
            Bound::ListOf(a, items) => {
                let offs = a.value_offsets();
                let (from, to) = (offs[row] as usize, offs[row + 1] as usize);
                put_varint((to - from) as u64, out);
                for i in from..to {
                    items.write(i, out);
                }
            }
            Bound::Map(a, keys, values, nested) => {
                let offs = a.value_offsets();
                let (from, to) = (offs[row] as usize, offs[row + 1] as usize);
                put_varint((to - from) as u64, out);
                // A null value (never produced today) is written as an empty string.
                let val = |i: usize| {
                    if values.is_null(i) {
                        &b""[..]
                    } else {
                        values.value(i).as_bytes()
                    }
                };
                if *nested {
                    for i in from..to {
                        put_bytes(keys.value(i).as_bytes(), out);
                    }
                    put_varint((to - from) as u64, out);
                    for i in from..to {
                        put_bytes(val(i), out);
                    }
                } else {
                    for i in from..to {
                        put_bytes(keys.value(i).as_bytes(), out);
                        put_bytes(val(i), out);
                    }
                }
            }
        }
    }
}

/// LEB128, as RowBinary prefixes strings and arrays.
fn put_varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes(b: &[u8], out: &mut Vec<u8>) {
    put_varint(b.len() as u64, out);
    out.extend_from_slice(b);
}
