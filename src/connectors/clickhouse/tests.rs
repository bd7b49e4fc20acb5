//! Unit tests of the ClickHouse DDL, encoding plans and config; the sink itself is tested
//! against a real server in tests/it/clickhouse.rs.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, FixedSizeBinaryArray, ListBuilder, MapBuilder, StringArray,
    StringBuilder, TimestampNanosecondArray, UInt32Array, UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::record_batch::RecordBatch;

use super::config::ClickHouseSinkConfig;
use super::ddl::{self, Features, ServerVersion, TABLES};
use super::encode::{ServerColumn, TablePlan};
use super::sink::error_code;

fn manifest(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn schema_of(table: &str) -> arrow::datatypes::SchemaRef {
    crate::tables::schema(table).unwrap()
}

#[test]
fn shipped_ddl_files_are_current() {
    let update = std::env::var_os("UPDATE_SCHEMA").is_some();
    let mut stale = Vec::new();
    for (dir, f, server) in [
        (
            "schemas/clickhouse",
            Features::current(),
            "current ClickHouse (22.1 and later)",
        ),
        (
            "schemas/clickhouse/18.16",
            Features::legacy(),
            "ClickHouse 18.16 (Debian's package) and other servers before 19.3",
        ),
    ] {
        for (name, schema) in crate::tables::all_schemas() {
            let layout = ddl::layout(name).expect("every output has a layout");
            let text = ddl::schema_file(&layout, &schema, f, server);
            let path = manifest(&format!("{dir}/{name}.sql"));
            if update {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, &text).unwrap();
            } else if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
                stale.push(path.display().to_string());
            }
        }
    }
    assert!(
        stale.is_empty(),
        "stale DDL files (regenerate with UPDATE_SCHEMA=1 cargo test --lib clickhouse::): {stale:?}"
    );
}

#[test]
fn every_output_has_a_layout_whose_keys_are_columns() {
    let schemas = crate::tables::all_schemas();
    assert_eq!(schemas.len(), TABLES.len());
    for (name, schema) in &schemas {
        let layout = ddl::layout(name).unwrap();
        for k in layout
            .order_by
            .iter()
            .chain(&layout.low_cardinality)
            .chain(layout.time_column.iter())
        {
            assert!(
                schema.field_with_name(k).is_ok(),
                "{name}: `{k}` is not a column"
            );
        }
    }
}

#[test]
fn ddl_uses_only_what_the_server_has() {
    let schema = schema_of("spans");
    let layout = ddl::layout("spans").unwrap();
    let ttl = Some(std::time::Duration::from_secs(86_400));
    let old = ddl::create_table(&layout, &schema, "db", "spans", ttl, Features::legacy());
    for absent in [
        "DateTime64",
        "Map(",
        "LowCardinality",
        "TTL",
        "Bool",
        "INDEX",
    ] {
        assert!(!old.contains(absent), "18.16 DDL uses {absent}:\n{old}");
    }
    assert!(
        old.contains("`attributes` Nested(key String, value String)"),
        "{old}"
    );
    assert!(old.contains("`start_time` UInt64"), "{old}");
    assert!(
        old.contains("PARTITION BY toDate(toDateTime(intDiv(`start_time`, 1000000000)))"),
        "{old}"
    );
    let new = ddl::create_table(&layout, &schema, "db", "spans", ttl, Features::current());
    for present in [
        "DateTime64(9, 'UTC')",
        "Map(LowCardinality(String), String)",
        "LowCardinality(String)",
        "TTL toDateTime(`start_time`) + INTERVAL 86400 SECOND",
        "`is_error` Bool",
        "ENGINE = ReplacingMergeTree(`version`)",
        "ORDER BY (`trace_id`, `span_id`)",
    ] {
        assert!(new.contains(present), "current DDL lacks {present}:\n{new}");
    }
    // Nullable key columns are keyed through ifNull on every server.
    let dl = schema_of("dead_letters");
    let sql = ddl::create_table(
        &ddl::layout("dead_letters").unwrap(),
        &dl,
        "db",
        "dead_letters",
        ttl,
        Features::legacy(),
    );
    assert!(sql.contains("ifNull(`topic`, '')"), "{sql}");
    assert!(!sql.contains("PARTITION BY"), "{sql}");
}

#[test]
fn features_follow_the_server_version() {
    let v = |s| Features::of(ServerVersion::parse(s).unwrap());
    assert_eq!(v("18.16.1"), Features::legacy());
    let f = v("19.8.3.8");
    assert!(f.low_cardinality && f.ttl && !f.datetime64 && !f.map);
    let f = v("21.8.15.7");
    assert!(f.datetime64 && f.skip_index && !f.map && !f.bool_type);
    assert_eq!(v("24.8.4.13"), Features::current());
    assert_eq!(ServerVersion::parse("nonsense"), None);
}

/// One row of every column kind the tables use, in a custom schema.
fn sample_batch() -> RecordBatch {
    let ts = DataType::Timestamp(TimeUnit::Nanosecond, Some("+00:00".into()));
    let mut map = MapBuilder::new(
        Some(arrow::array::MapFieldNames {
            entry: "entries".into(),
            key: "keys".into(),
            value: "values".into(),
        }),
        StringBuilder::new(),
        StringBuilder::new(),
    );
    map.keys().append_value("k");
    map.values().append_value("v");
    map.append(true).unwrap();
    map.append(true).unwrap();
    let map = map.finish();
    let mut list = ListBuilder::new(UInt64Builder::new());
    list.values().append_value(7);
    list.values().append_value(8);
    list.append(true);
    list.append(true);
    let list = list.finish();
    let fields = vec![
        Field::new("id", DataType::FixedSizeBinary(2), false),
        Field::new("n", DataType::UInt32, true),
        Field::new("s", DataType::Utf8, false),
        Field::new("b", DataType::Boolean, false),
        Field::new("t", ts.clone(), false),
        Field::new("l", list.data_type().clone(), false),
        Field::new("m", map.data_type().clone(), false),
    ];
    let cols: Vec<ArrayRef> = vec![
        Arc::new(FixedSizeBinaryArray::try_from_iter([[1u8, 2], [3, 4]].into_iter()).unwrap()),
        Arc::new(UInt32Array::from(vec![Some(5), None])),
        Arc::new(StringArray::from(vec!["ab", ""])),
        Arc::new(BooleanArray::from(vec![true, false])),
        Arc::new(
            TimestampNanosecondArray::from(vec![1_500_000_000, 2_000_000_001])
                .with_timezone("+00:00"),
        ),
        Arc::new(list),
        Arc::new(map),
    ];
    RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap()
}

fn cols(list: &[(&str, &str)]) -> Vec<ServerColumn> {
    list.iter()
        .map(|(n, t)| ServerColumn {
            name: (*n).into(),
            ty: (*t).into(),
        })
        .collect()
}

#[test]
fn rowbinary_of_each_column_kind() {
    let batch = sample_batch();
    // 18.16 types: unix nanos, UInt8 booleans, Nested map.
    let old = cols(&[
        ("id", "FixedString(2)"),
        ("n", "Nullable(UInt32)"),
        ("s", "String"),
        ("b", "UInt8"),
        ("t", "UInt64"),
        ("l", "Array(UInt64)"),
        ("m.key", "Array(String)"),
        ("m.value", "Array(String)"),
        ("version", "UInt64"),
    ]);
    let plan = TablePlan::new("db.t", &batch.schema(), &old, 9).unwrap();
    assert_eq!(
        plan.insert_columns,
        ["id", "n", "s", "b", "t", "l", "m.key", "m.value", "version"]
    );
    let mut out = Vec::new();
    plan.encode(&batch, &mut out).unwrap();
    let mut want: Vec<u8> = Vec::new();
    // Row 1.
    want.extend([1, 2]);
    want.extend([0, 5, 0, 0, 0]);
    want.extend([2, b'a', b'b']);
    want.push(1);
    want.extend(1_500_000_000u64.to_le_bytes());
    want.push(2);
    want.extend(7u64.to_le_bytes());
    want.extend(8u64.to_le_bytes());
    want.extend([1, 1, b'k']);
    want.extend([1, 1, b'v']);
    want.extend(9u64.to_le_bytes());
    // Row 2: null UInt32, empty string, empty list and map.
    want.extend([3, 4]);
    want.push(1);
    want.push(0);
    want.push(0);
    want.extend(2_000_000_001u64.to_le_bytes());
    want.push(0);
    want.extend([0, 0]);
    want.extend(9u64.to_le_bytes());
    assert_eq!(out, want);

    // A slice starting past row 0 (offsets of lists, maps and strings, the null bitmap).
    let mut second = Vec::new();
    plan.encode(&batch.slice(1, 1), &mut second).unwrap();
    let first_len = out.len() - second.len();
    assert_eq!(second, out[first_len..], "row 2 alone");

    // Current types: DateTime64(3) scales, Map pairs, Bool, LowCardinality.
    let new = cols(&[
        ("id", "FixedString(2)"),
        ("n", "Nullable(UInt32)"),
        ("s", "LowCardinality(String)"),
        ("b", "Bool"),
        ("t", "DateTime64(3, 'UTC')"),
        ("l", "Array(UInt64)"),
        ("m", "Map(LowCardinality(String), String)"),
        ("version", "UInt64"),
        ("extra", "String"),
    ]);
    let plan = TablePlan::new("db.t", &batch.schema(), &new, 9).unwrap();
    let mut out = Vec::new();
    plan.encode(&batch.slice(0, 1), &mut out).unwrap();
    let mut want: Vec<u8> = vec![1, 2, 0, 5, 0, 0, 0, 2, b'a', b'b', 1];
    want.extend(1_500i64.to_le_bytes());
    want.push(2);
    want.extend(7u64.to_le_bytes());
    want.extend(8u64.to_le_bytes());
    want.extend([1, 1, b'k', 1, b'v']);
    want.extend(9u64.to_le_bytes());
    assert_eq!(out, want);
}

#[test]
fn a_mismatched_table_names_the_table_and_column() {
    let batch = sample_batch();
    let good = [
        ("id", "FixedString(2)"),
        ("n", "Nullable(UInt32)"),
        ("s", "String"),
        ("b", "UInt8"),
        ("t", "UInt64"),
        ("l", "Array(UInt64)"),
        ("m", "Map(String, String)"),
        ("version", "UInt64"),
    ];
    let with = |name: &str, ty: Option<&str>| {
        let list: Vec<(&str, &str)> = good
            .iter()
            .filter_map(|(n, t)| {
                if *n == name {
                    ty.map(|ty| (*n, ty))
                } else {
                    Some((*n, *t))
                }
            })
            .collect();
        TablePlan::new("spanflow.t", &batch.schema(), &cols(&list), 1)
            .err()
            .map(|e| {
                assert_eq!(e.fault, crate::runtime::io::Fault::User, "{e}");
                e.message
            })
            .unwrap_or_default()
    };
    let e = with("s", Some("UInt64"));
    assert!(
        e.contains("`spanflow.t`") && e.contains("`s` is UInt64") && e.contains("String"),
        "{e}"
    );
    let e = with("t", Some("String"));
    assert!(
        e.contains("`t` is String") && e.contains("DateTime64(9)"),
        "{e}"
    );
    let e = with("n", Some("UInt32"));
    assert!(
        e.contains("`n` is UInt32") && e.contains("Nullable(UInt32)"),
        "{e}"
    );
    let e = with("id", Some("FixedString(16)"));
    assert!(e.contains("FixedString(2)"), "{e}");
    let e = with("l", None);
    assert!(e.contains("has no column `l`"), "{e}");
    let e = with("m", None);
    assert!(e.contains("has no column `m`"), "{e}");
    let e = with("version", None);
    assert!(e.contains("has no column `version`"), "{e}");
    let e = with("m", Some("Map(String, UInt64)"));
    assert!(e.contains("column `m`"), "{e}");
}

#[test]
fn every_table_plans_against_its_own_ddl_on_both_servers() {
    for f in [Features::legacy(), Features::current()] {
        for (name, schema) in crate::tables::all_schemas() {
            let layout = ddl::layout(name).unwrap();
            let server = ddl::server_columns(&schema, &layout, f);
            let plan = TablePlan::new(name, &schema, &server, 1);
            assert!(plan.is_ok(), "{name} on {f:?}: {:?}", plan.err());
        }
    }
}

#[test]
fn error_codes_and_retries() {
    use clickhouse::error::Error;
    assert_eq!(
        error_code("Code: 53, e.displayText() = DB::Exception: Type mismatch"),
        Some(53)
    );
    assert_eq!(
        error_code("Code: 252. DB::Exception: Too many parts"),
        Some(252)
    );
    assert_eq!(error_code("241"), Some(241));
    assert_eq!(error_code("no code"), None);
    let bad = |m: &str| super::sink::retriable(&Error::BadResponse(m.into()));
    assert!(bad("Code: 252. DB::Exception: Too many parts (300)"));
    assert!(bad(
        "Code: 241, e.displayText() = DB::Exception: Memory limit"
    ));
    assert!(!bad(
        "Code: 53, e.displayText() = DB::Exception: Type mismatch"
    ));
    assert!(!bad("Code: 60. DB::Exception: Table x doesn't exist"));
    assert!(bad("503 Service Unavailable"));
    assert!(bad("<html><body>502 Bad Gateway</body></html>"));
    assert!(!bad("404 Not Found"));
    assert!(!bad(
        "Code: 252. DB::Exception: Too many partitions for single INSERT block (more than 100)"
    ));
    assert!(!bad(
        "Code: 164. DB::Exception: default: Cannot execute query in readonly mode"
    ));
    assert!(super::sink::retriable(&Error::TimedOut));
    assert!(!super::sink::retriable(&Error::NotEnoughData));
}

#[test]
fn config_checks_and_never_shows_the_password() {
    let mut c = ClickHouseSinkConfig {
        url: Some("127.0.0.1:8123".into()),
        database: "bad-name".into(),
        password: Some("hunter2".into()),
        ..Default::default()
    };
    c.tables.insert("spans".into(), "otel-spans".into());
    c.batch.max_rows = 0;
    c.ttl = Some(spanflow_operators::HumanDuration::secs(100 * 365 * 86_400));
    let issues: Vec<String> = c.validate().iter().map(|i| format!("{i:?}")).collect();
    let all = issues.join("\n");
    for what in ["url", "database", "otel-spans", "max_rows", "2106"] {
        assert!(all.contains(what), "no issue about {what}: {all}");
    }
    let with_userinfo = ClickHouseSinkConfig {
        url: Some("http://bob:hunter2@db.local:8123/x".into()),
        ..Default::default()
    };
    assert_eq!(with_userinfo.display_url(), "http://db.local:8123/x");
    assert!(!format!("{with_userinfo:?}").contains("hunter2"));
    let shown = format!("{c:?}");
    assert!(
        !shown.contains("hunter2") && shown.contains("<redacted>"),
        "{shown}"
    );
    let missing = ClickHouseSinkConfig {
        password_env: Some("SPANFLOW_TEST_SURELY_UNSET_VARIABLE".into()),
        ..Default::default()
    };
    let e = missing.resolved_password().unwrap_err().message;
    assert!(e.contains("SPANFLOW_TEST_SURELY_UNSET_VARIABLE"), "{e}");
    let ok = ClickHouseSinkConfig::default();
    assert!(ok.validate().is_empty(), "{:?}", ok.validate());
    assert_eq!(ok.table_of("spans"), "spans");
    let c = ClickHouseSinkConfig {
        table_prefix: "otel_".into(),
        ..Default::default()
    };
    assert_eq!(c.table_of("red_metrics"), "otel_red_metrics");
}

#[test]
fn rollup_tables_are_keyed_by_the_result_key_and_a_time_column() {
    let ts = DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()));
    let schema = Schema::new(vec![
        Field::new("minute", ts.clone(), true),
        Field::new("service", DataType::Utf8, false),
        Field::new("trace_id", DataType::Utf8, true),
        Field::new("requests", DataType::Int64, true),
        Field::new("error_rate", DataType::Float64, true),
    ]);
    let key = ["minute".to_owned(), "service".to_owned()];
    let layout = ddl::TableLayout::of_rollup("per_minute", &schema, &key).unwrap();
    assert_eq!(layout.order_by, key);
    assert_eq!(layout.time_column.as_deref(), Some("minute"));
    assert_eq!(layout.low_cardinality, ["service"]);
    let schema = Arc::new(schema);
    let ttl = Some(std::time::Duration::from_secs(86_400));
    let old = ddl::create_table(&layout, &schema, "db", "t", ttl, Features::legacy());
    // A NULL time is the epoch, in the key and in the partition.
    assert!(
        old.contains("PARTITION BY toDate(toDateTime(intDiv(ifNull(`minute`, 0), 1000000000)))"),
        "{old}"
    );
    assert!(
        old.contains("ORDER BY (ifNull(`minute`, 0), `service`)"),
        "{old}"
    );
    assert!(old.contains("`requests` Nullable(Int64)"), "{old}");
    let new = ddl::create_table(&layout, &schema, "db", "t", ttl, Features::current());
    let epoch = "ifNull(`minute`, toDateTime64(0, 9, 'UTC'))";
    assert!(
        new.contains(&format!("PARTITION BY toDate({epoch})"))
            && new.contains(&format!("ORDER BY ({epoch}, `service`)"))
            && new.contains(&format!("TTL toDateTime({epoch}) + INTERVAL 86400 SECOND"))
            && new.contains("`service` LowCardinality(String)")
            && new.contains("`trace_id` Nullable(String)"),
        "{new}"
    );

    // Without a key: every column but floats, plus the time column if it was not one.
    let fallback = ddl::TableLayout::of_rollup("x", &schema, &[]).unwrap();
    assert_eq!(
        fallback.order_by,
        ["minute", "service", "trace_id", "requests"]
    );
    let only_service = ddl::TableLayout::of_rollup("x", &schema, &key[1..]).unwrap();
    assert_eq!(only_service.order_by, ["service", "minute"]);

    let no_time = Schema::new(vec![Field::new("service", DataType::Utf8, false)]);
    let e = ddl::TableLayout::of_rollup("x", &no_time, &[])
        .unwrap_err()
        .message;
    assert!(
        e.contains("no timestamp column") && e.contains("date_bin"),
        "{e}"
    );
    let decimal = Schema::new(vec![
        Field::new("minute", ts, false),
        Field::new("avg", DataType::Decimal128(38, 4), true),
    ]);
    let e = ddl::TableLayout::of_rollup("x", &decimal, &[])
        .unwrap_err()
        .message;
    assert!(e.contains("`avg`") && e.contains("DOUBLE"), "{e}");
    // Lists are arrays of numbers, text, fixed binaries and timestamps, as the encoder
    // writes them; not of booleans.
    let names = Schema::new(vec![
        Field::new(
            "minute",
            DataType::Timestamp(TimeUnit::Nanosecond, None),
            false,
        ),
        Field::new_list(
            "names",
            Field::new_list_field(DataType::Boolean, true),
            true,
        ),
    ]);
    let e = ddl::TableLayout::of_rollup("x", &names, &[])
        .unwrap_err()
        .message;
    assert!(e.contains("`names`"), "{e}");
}
