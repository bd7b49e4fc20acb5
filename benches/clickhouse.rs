//! The ClickHouse sink: RowBinary encoding of output batches (no server), and, when
//! `SPANFLOW_CLICKHOUSE_URL` points at a server (scripts/bench-clickhouse.sh starts one),
//! rows per second through the whole sink (encode, queue, batch, LZ4, HTTP insert).

use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use spanflow::connectors::clickhouse::config::ClickHouseSinkConfig;
use spanflow::connectors::clickhouse::ddl::{self, Features};
use spanflow::connectors::clickhouse::encode::TablePlan;
use spanflow::connectors::clickhouse::{ClickHouseTarget, SinkTable};
use spanflow::job::run_job;
use spanflow::runtime::RunOptions;
use spanflow::runtime::io::Sink;

/// The demo job's analytics on a small generated input, written to Parquet; returns
/// the batches of `spans` and `red_metrics`.
fn outputs() -> (Vec<RecordBatch>, Vec<RecordBatch>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("jobs/demo.yaml"))
        .expect("jobs/demo.yaml")
        .replace("traces: 20000", "traces: 4000");
    let job = spanflow::job::load_str(&root.join("jobs/demo.yaml"), &text).expect("demo job");
    run_job(
        &job,
        &RunOptions {
            output_dir: Some(dir.path().to_path_buf()),
            progress: false,
            ..Default::default()
        },
    )
    .expect("demo run");
    let read = |table: &str| -> Vec<RecordBatch> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir.path().join(table)).expect("table dir") {
            let f = std::fs::File::open(e.expect("entry").path()).expect("part");
            for b in ParquetRecordBatchReaderBuilder::try_new(f)
                .expect("parquet")
                .build()
                .expect("reader")
            {
                out.push(b.expect("batch"));
            }
        }
        out
    };
    (read("spans"), read("red_metrics"))
}

fn plan(table: &str, batches: &[RecordBatch], f: Features) -> TablePlan {
    let schema = batches[0].schema();
    let layout = ddl::layout(table).expect("layout");
    TablePlan::new(table, &schema, &ddl::server_columns(&schema, &layout, f), 1).expect("plan")
}

fn bench(c: &mut Criterion) {
    let (spans, red) = outputs();
    let rows = |b: &[RecordBatch]| b.iter().map(RecordBatch::num_rows).sum::<usize>() as u64;
    let mut g = c.benchmark_group("clickhouse_encode");
    for (name, batches) in [("spans", &spans), ("red_metrics", &red)] {
        for (server, f) in [
            ("18.16", Features::legacy()),
            ("current", Features::current()),
        ] {
            let p = plan(name, batches, f);
            let mut out = Vec::new();
            g.throughput(Throughput::Elements(rows(batches)));
            g.bench_function(format!("{name}/{server}"), |b| {
                b.iter(|| {
                    out.clear();
                    for batch in batches.iter() {
                        p.encode(batch, &mut out).expect("encode");
                    }
                    out.len()
                })
            });
        }
    }
    g.finish();

    let Ok(url) = std::env::var("SPANFLOW_CLICKHOUSE_URL") else {
        eprintln!("SPANFLOW_CLICKHOUSE_URL is not set: skipping the insert benches");
        return;
    };
    let mut g = c.benchmark_group("clickhouse_insert");
    g.sample_size(10);
    for (name, batches, repeat) in [("spans", &spans, 4), ("red_metrics", &red, 100)] {
        let config = Arc::new(ClickHouseSinkConfig {
            url: Some(url.clone()),
            database: "spanflow_bench".into(),
            create_tables: true,
            ..Default::default()
        });
        let outputs = Arc::new(vec![SinkTable::builtin(name).expect("built-in output")]);
        g.throughput(Throughput::Elements(rows(batches) * repeat));
        g.bench_function(name, |b| {
            b.iter(|| {
                // A new sink per iteration: the time includes its start (version
                // query, CREATE ... IF NOT EXISTS, schema check) and its final flush.
                let target = ClickHouseTarget::new(
                    config.clone(),
                    "bench",
                    name,
                    outputs.clone(),
                    ClickHouseTarget::new_shared(),
                );
                let mut w = target.open(0, batches[0].schema()).expect("sink");
                for _ in 0..repeat {
                    for batch in batches.iter() {
                        w.write(batch).expect("write");
                    }
                }
                w.close().expect("close")
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
