//! Helpers shared by the integration tests.

use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The built `spanflow` binary.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_spanflow"))
}

/// A port nobody listens on now, on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

/// The items of a list column's text (`[a, b]`, as [`column`] formats it).
pub fn list_items(text: &str) -> Vec<&str> {
    text.trim_matches(|c| c == '[' || c == ']')
        .split(", ")
        .filter(|t| !t.is_empty())
        .collect()
}

/// The python of the OpenTelemetry SDK's cached venv (`scripts/otel-python.sh`, which
/// installs it when missing; it has grpcio-tools too).
pub fn otel_python() -> String {
    let out = std::process::Command::new("bash")
        .arg(root().join("scripts/otel-python.sh"))
        .arg("python")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Reads every part file of `<dir>/<table>/`.
pub fn read_table(dir: &Path, table: &str) -> Vec<RecordBatch> {
    let tdir = dir.join(table);
    let mut parts: Vec<PathBuf> = std::fs::read_dir(&tdir)
        .unwrap_or_else(|e| panic!("{}: {e}", tdir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
        .collect();
    parts.sort();
    let mut out = Vec::new();
    for p in parts {
        let f = std::fs::File::open(&p).unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(f)
            .unwrap()
            .build()
            .unwrap();
        for b in reader {
            out.push(b.unwrap());
        }
    }
    out
}

/// Every row as `col=value` text, sorted, so outputs compare regardless of row order.
pub fn rows(batches: &[RecordBatch], skip: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    let opts = FormatOptions::default();
    for b in batches {
        let schema = b.schema();
        let cols: Vec<(String, ArrayFormatter<'_>)> = b
            .columns()
            .iter()
            .zip(schema.fields())
            .filter(|(_, f)| !skip.contains(&f.name().as_str()))
            .map(|(c, f)| {
                (
                    f.name().clone(),
                    ArrayFormatter::try_new(c.as_ref(), &opts).unwrap(),
                )
            })
            .collect();
        for i in 0..b.num_rows() {
            let line: Vec<String> = cols
                .iter()
                .map(|(n, f)| format!("{n}={}", f.value(i)))
                .collect();
            out.push(line.join(" "));
        }
    }
    out.sort();
    out
}

/// Values of one column as text, in file order.
pub fn column(batches: &[RecordBatch], name: &str) -> Vec<String> {
    let opts = FormatOptions::default();
    let mut out = Vec::new();
    for b in batches {
        let idx = b.schema().index_of(name).unwrap();
        let f = ArrayFormatter::try_new(b.column(idx).as_ref(), &opts).unwrap();
        for i in 0..b.num_rows() {
            out.push(f.value(i).to_string());
        }
    }
    out
}

/// Sum of a numeric column.
pub fn sum(batches: &[RecordBatch], name: &str) -> u64 {
    column(batches, name)
        .iter()
        .map(|v| v.parse::<u64>().unwrap())
        .sum()
}

/// A server started by one of the scripts/ service scripts for one test, stopped (by the
/// PID the script recorded) on drop.
pub struct Service {
    script: &'static str,
    vars: Vec<(String, String)>,
    dir: String,
}

impl Service {
    /// Runs `scripts/<script> start` and keeps the variables it exports; `dir_var` names
    /// the one holding the server's directory.
    pub fn start(script: &'static str, dir_var: &str) -> Service {
        let out = std::process::Command::new("bash")
            .arg(root().join("scripts").join(script))
            .arg("start")
            .output()
            .unwrap_or_else(|e| panic!("running scripts/{script}: {e}"));
        assert!(
            out.status.success(),
            "scripts/{script} start failed (run `scripts/{script} install` once): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let vars: Vec<(String, String)> = text
            .lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let dir = vars
            .iter()
            .find(|(k, _)| k == dir_var)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no {dir_var} in: {text}"));
        Service { script, vars, dir }
    }

    /// A variable the script exported.
    pub fn var(&self, name: &str) -> String {
        self.vars
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("scripts/{} exported no {name}", self.script))
    }

    /// The server's directory.
    pub fn dir(&self) -> &str {
        &self.dir
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = std::process::Command::new("bash")
            .arg(root().join("scripts").join(self.script))
            .arg("stop")
            .arg(&self.dir)
            .status();
    }
}

/// Prints where every thread of process `pid` is (with gdb, when installed): what a
/// test records before it gives up on a process that does not end.
pub fn print_stacks(pid: u32) {
    let _ = std::process::Command::new("gdb")
        .args(["-batch", "-ex", "thread apply all bt", "-p"])
        .arg(pid.to_string())
        .status();
}

/// Runs `job` on another thread and stops it (as Ctrl-C would) once it has decoded
/// at least `spans` spans, or when it ended by itself first; returns its summary.
/// `opts` gets its own stop flag and span counter.
pub fn run_and_stop_after(
    job: &spanflow::job::Job,
    opts: &spanflow::runtime::RunOptions,
    spans: u64,
) -> spanflow::runtime::RunSummary {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(AtomicU64::new(0));
    let opts = spanflow::runtime::RunOptions {
        stop: Some(stop.clone()),
        spans_seen: Some(seen.clone()),
        ..opts.clone()
    };
    let job = job.clone();
    let handle = std::thread::spawn(move || spanflow::job::run_job(&job, &opts));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while seen.load(Ordering::Relaxed) < spans && !handle.is_finished() {
        assert!(
            std::time::Instant::now() < deadline,
            "the run did not read {spans} spans in 2 minutes"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    stop.store(true, Ordering::Relaxed);
    handle.join().unwrap().unwrap_or_else(|e| panic!("{e}"))
}
