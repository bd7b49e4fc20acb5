//! Tests of the SQL functions, error positions and rollup planning.

use std::sync::Arc;

use arrow::array::{Array, AsArray, ListBuilder, RecordBatch, UInt64Builder};
use arrow::datatypes::{Float64Type, UInt64Type};
use spanflow_operators::metrics::quantile_from_buckets;

use super::rollup::RollupQuery;
use super::{SqlError, run, session};

/// DataFusion runs multi-partition plans on tokio tasks.
fn block<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

fn query(sql: &str) -> Result<Vec<RecordBatch>, SqlError> {
    block(async { run(&session(), sql).await.map(|r| r.batches) })
}

fn single_f64(sql: &str) -> Option<f64> {
    let batches = query(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    let col = batches[0].column(0).as_primitive::<Float64Type>().clone();
    (!col.is_null(0)).then(|| col.value(0))
}

#[test]
fn quantile_from_buckets_matches_the_operators_function() {
    let bounds = [0.1, 0.5, 1.0];
    let counts = [3u64, 5, 1, 1];
    for q in [0.0, 0.25, 0.5, 0.9, 0.99, 1.0] {
        let sql = format!("SELECT quantile_from_buckets([0.1, 0.5, 1.0], [3, 5, 1, 1], {q}) AS v");
        assert_eq!(
            single_f64(&sql),
            quantile_from_buckets(&bounds, &counts, q),
            "q = {q}"
        );
    }
    // Empty histogram and q out of range: NULL, as the function returns None.
    assert_eq!(
        single_f64("SELECT quantile_from_buckets([0.1], [0, 0], 0.5) AS v"),
        None
    );
    assert_eq!(
        single_f64("SELECT quantile_from_buckets([0.1], [1, 0], 1.5) AS v"),
        None
    );
}

#[test]
fn sum_buckets_adds_histograms_element_wise_per_group() {
    let batches = query(
        "SELECT k, sum_buckets(c) AS s FROM (VALUES ('a', [1, 2, 3]), ('a', [10, 0, 1]), \
         ('b', [5, 5, 5]), ('c', NULL)) AS t(k, c) GROUP BY k ORDER BY k",
    )
    .expect("query");
    let b = &batches[0];
    let lists = b.column(1).as_list::<i32>();
    let row = |i: usize| -> Vec<u64> {
        lists
            .value(i)
            .as_primitive::<UInt64Type>()
            .values()
            .to_vec()
    };
    assert_eq!(row(0), vec![11, 2, 4]);
    assert_eq!(row(1), vec![5, 5, 5]);
    assert!(lists.is_null(2) || row(2).is_empty(), "all-NULL group");
}

#[test]
fn sum_buckets_merges_partial_aggregates() {
    // Several partitions force the partial/final split (state + merge_batch).
    let ctx = session();
    let mut b = ListBuilder::new(UInt64Builder::new());
    let mut keys = Vec::new();
    for i in 0..1000u64 {
        b.values().append_slice(&[1, i % 3, 0]);
        b.append(true);
        keys.push((i % 7) as i64);
    }
    let batch = RecordBatch::try_from_iter([
        (
            "k",
            Arc::new(arrow::array::Int64Array::from(keys)) as arrow::array::ArrayRef,
        ),
        ("c", Arc::new(b.finish()) as arrow::array::ArrayRef),
    ])
    .expect("batch");
    let parts: Vec<Vec<RecordBatch>> = (0..4).map(|p| vec![batch.slice(p * 250, 250)]).collect();
    let table = datafusion::catalog::MemTable::try_new(batch.schema(), parts).expect("table");
    ctx.register_table("t", Arc::new(table)).expect("register");
    let out = block(run(
        &ctx,
        "SELECT sum_buckets(c) AS s, count(*) AS n FROM t",
    ))
    .expect("query");
    let lists = out.batches[0].column(0).as_list::<i32>();
    let sums = lists
        .value(0)
        .as_primitive::<UInt64Type>()
        .values()
        .to_vec();
    let expected_mid: u64 = (0..1000u64).map(|i| i % 3).sum();
    assert_eq!(sums, vec![1000, expected_mid, 0]);
}

#[test]
fn hex_and_unhex_round_trip_and_match_fixed_size_ids() {
    let batches = query(
        "SELECT hex(unhex('00ff10AB')) AS h, \
         arrow_cast(unhex('0102030405060708090a0b0c0d0e0f10'), 'FixedSizeBinary(16)') \
           = unhex('0102030405060708090a0b0c0d0e0f10') AS eq",
    )
    .expect("query");
    let b = &batches[0];
    assert_eq!(b.column(0).as_string::<i32>().value(0), "00ff10ab");
    assert!(b.column(1).as_boolean().value(0));
    let err = query("SELECT unhex('zz') AS x").expect_err("not hex");
    assert!(err.message.contains("not hex"), "{err}");
}

#[test]
fn parse_errors_carry_line_and_column() {
    // `FROMM` reads as an alias of `1`; the parser stops at `t`.
    let e = query("SELECT 1\nFROMM t").expect_err("bad SQL");
    assert_eq!((e.line, e.column), (Some(2), Some(7)), "{e:?}");
    assert!(e.message.contains("found: t"), "{e:?}");
    assert!(!e.message.contains("Line:"), "{e:?}");
}

#[test]
fn unknown_columns_carry_line_and_column() {
    let red = crate::tables::schema("red_metrics").expect("schema");
    let e = block(RollupQuery::plan(
        "SELECT service,\n       sum(requestz) AS r\nFROM red_metrics GROUP BY service",
        &[("red_metrics".into(), red)],
    ))
    .expect_err("unknown column");
    assert_eq!((e.line, e.column), (Some(2), Some(12)), "{e:?}");
    assert!(e.message.contains("requestz"), "{e:?}");
}

#[test]
fn rollups_must_be_one_select_with_named_columns() {
    let red = crate::tables::schema("red_metrics").expect("schema");
    let inputs = [("red_metrics".to_owned(), red)];
    let plan = |sql: &str| block(RollupQuery::plan(sql, &inputs));
    let e = plan("SELECT service, sum(requests) FROM red_metrics GROUP BY service")
        .expect_err("unnamed");
    assert!(e.message.contains("AS <name>"), "{e}");
    let e = plan("SELECT 1 AS a; SELECT 2 AS b").expect_err("two statements");
    assert!(e.message.contains("one SELECT"), "{e}");
    let e = plan("CREATE TABLE x AS SELECT 1 AS a").expect_err("DDL");
    assert!(e.message.contains("must be a SELECT"), "{e}");
    let q = plan("SELECT service, sum(requests) AS requests FROM red_metrics GROUP BY service")
        .expect("plans");
    assert_eq!(q.schema().field(1).name(), "requests");
}

#[test]
fn a_planned_rollup_runs_on_each_window_alone() {
    use crate::tables::{MetricRows, TableRows};
    use spanflow_operators::metrics::{ClosedInterval, Metric, SeriesAgg, SeriesKey};
    let red = crate::tables::schema("red_metrics").expect("schema");
    let q = block(RollupQuery::plan(
        "SELECT service, sum(requests) AS requests FROM red_metrics GROUP BY service ORDER BY service",
        &[("red_metrics".into(), red)],
    ))
    .expect("plans");
    let interval = |requests: u64| {
        let mut key = SeriesKey::overflow(Metric::ServiceServer);
        key.service = spanflow_operators::Sym::new("checkout");
        let mut agg = SeriesAgg::new(2);
        agg.requests = requests;
        ClosedInterval {
            start_ns: 0,
            end_ns: 10,
            series: vec![(key, agg)],
            folded_series: 0,
        }
    };
    for requests in [3u64, 5] {
        let mut rows = MetricRows::red_metrics();
        rows.push_interval(&interval(requests), &[0.1]);
        let out = block(q.run(vec![vec![rows.finish()]])).expect("runs");
        assert_eq!(out.len(), 1);
        let col = out[0].column(1).as_primitive::<UInt64Type>();
        // Only this window's rows: the table is replaced, not appended to.
        assert_eq!(col.value(0), requests);
    }
    let empty = block(q.run(vec![vec![]])).expect("runs on no rows");
    assert!(empty.is_empty());

    // The physical plan is made once: a count (which an optimizer may answer from the
    // table's statistics), a sort with a limit and a window function still see each
    // window's own rows.
    let red = crate::tables::schema("red_metrics").expect("schema");
    let q = block(RollupQuery::plan(
        "SELECT count(*) AS n, max(requests) AS top, max(rn) AS ranked FROM \
         (SELECT requests, row_number() OVER (ORDER BY requests) AS rn FROM red_metrics)",
        &[("red_metrics".into(), red)],
    ))
    .expect("plans");
    for windows in [1usize, 3, 2] {
        let mut rows = MetricRows::red_metrics();
        for w in 0..windows {
            rows.push_interval(&interval(10 + w as u64), &[0.1]);
        }
        let out = block(q.run(vec![vec![rows.finish()]])).expect("runs");
        let n = out[0]
            .column(0)
            .as_primitive::<arrow::datatypes::Int64Type>();
        let top = out[0].column(1).as_primitive::<UInt64Type>();
        let ranked = out[0].column(2).as_primitive::<UInt64Type>();
        assert_eq!(
            (n.value(0), top.value(0), ranked.value(0)),
            (windows as i64, 9 + windows as u64, windows as u64)
        );
    }
}

/// The shipped rollups' keys are their GROUP BY columns; a query without one has none.
#[test]
fn a_rollups_key_is_its_group_by() {
    let input = |t: &str| (t.to_owned(), crate::tables::schema(t).expect("schema"));
    let key = |file: &str, table: &str| {
        let sql = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("sql")
                .join(file),
        )
        .expect("sql file");
        block(RollupQuery::plan(&sql, &[input(table)]))
            .expect("plans")
            .key()
    };
    assert_eq!(
        key("red_per_service_1m.sql", "red_metrics"),
        ["minute", "service"]
    );
    // Through a window function and a filter on its rank.
    assert_eq!(
        key("top_slow_operations.sql", "red_metrics"),
        ["minute", "service", "operation"]
    );
    assert_eq!(
        key("error_hotspots_by_edge.sql", "service_relation"),
        ["minute", "source", "target", "target_kind", "call_type"]
    );
    assert!(key("slowest_bucket_exemplars.sql", "exemplars").is_empty());
    // A group column left out of the result leaves no key.
    let red = [input("red_metrics")];
    let q = block(RollupQuery::plan(
        "SELECT sum(requests) AS r FROM red_metrics GROUP BY service",
        &red,
    ))
    .expect("plans");
    assert!(q.key().is_empty(), "{:?}", q.key());
}
