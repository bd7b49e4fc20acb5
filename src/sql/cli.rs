//! `spanflow sql`: one query, a file of queries, or an interactive prompt over a job's
//! Parquet outputs.

use std::io::Write;
use std::path::{Path, PathBuf};

use arrow::error::ArrowError;
use datafusion::prelude::SessionContext;

use super::{OutputCatalog, QueryResult, SqlError, run, session};

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A boxed table with a row count.
    Table,
    /// CSV with a header line.
    Csv,
    /// One JSON array of objects (ids as hex, timestamps as RFC 3339).
    Json,
}

/// Renders a result in `format`.
pub fn render(result: &QueryResult, format: Format) -> Result<String, ArrowError> {
    let mut out = Vec::new();
    match format {
        Format::Table => {
            let table = arrow::util::pretty::pretty_format_batches_with_schema(
                result.schema.clone(),
                &result.batches,
            )?;
            let n = result.rows();
            writeln!(out, "{table}")?;
            writeln!(out, "({n} row{})", if n == 1 { "" } else { "s" })?;
        }
        Format::Csv => {
            let mut w = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut out);
            if result.batches.is_empty() {
                w.write(&arrow::record_batch::RecordBatch::new_empty(
                    result.schema.clone(),
                ))?;
            }
            for b in &result.batches {
                w.write(b)?;
            }
        }
        Format::Json => {
            let mut w = arrow::json::ArrayWriter::new(&mut out);
            for b in &result.batches {
                w.write(b)?;
            }
            w.finish()?;
            if result.rows() == 0 {
                out.clear();
                out.extend_from_slice(b"[]");
            }
            out.push(b'\n');
        }
    }
    String::from_utf8(out).map_err(|e| ArrowError::ExternalError(Box::new(e)))
}

/// Where `spanflow sql` reads and what it runs.
#[derive(Debug, Clone)]
pub struct SqlCommand {
    /// The job's Parquet output directory.
    pub output_dir: PathBuf,
    /// The query text (`None` with `file` unset: interactive).
    pub query: Option<String>,
    /// A file of statements.
    pub file: Option<PathBuf>,
    /// Output format.
    pub format: Format,
}

/// Runs `spanflow sql`; returns whether every statement succeeded.
pub fn main(cmd: &SqlCommand) -> anyhow::Result<bool> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let ctx = session();
        let catalog = OutputCatalog::register(&ctx, &cmd.output_dir).await?;
        let (text, origin) = match (&cmd.query, &cmd.file) {
            (Some(q), _) => (q.clone(), "query".to_owned()),
            (None, Some(f)) => (
                std::fs::read_to_string(f).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?,
                f.display().to_string(),
            ),
            (None, None) => return interactive(&ctx, &catalog, cmd.format).await,
        };
        match run(&ctx, &text).await {
            Ok(result) => {
                print!("{}", render(&result, cmd.format)?);
                Ok(true)
            }
            Err(e) => {
                eprintln!("{}", describe_error(&origin, &text, &e));
                Ok(false)
            }
        }
    })
}

/// `origin:line:column: message` and the offending line with a caret.
pub fn describe_error(origin: &str, text: &str, e: &SqlError) -> String {
    match (e.line, e.column) {
        (Some(l), Some(c)) => {
            let src = text.lines().nth(l - 1).unwrap_or("");
            format!(
                "error: {origin}:{l}:{c}: {}\n  | {src}\n  | {}^",
                e.message,
                " ".repeat(c.saturating_sub(1))
            )
        }
        _ => format!("error: {origin}: {}", e.message),
    }
}

const HELP: &str = "\
Statements end with `;` and may span lines. Commands:
  \\d          list tables
  \\d TABLE    describe a table
  \\q          quit (also Ctrl-D)
Functions: quantile_from_buckets(bucket_bounds, bucket_counts, 0.99), sum_buckets(bucket_counts),
hex(trace_id), unhex('...'), date_bin(INTERVAL '1 minute', interval_start), ...";

async fn interactive(
    ctx: &SessionContext,
    catalog: &OutputCatalog,
    format: Format,
) -> anyhow::Result<bool> {
    let mut rl = rustyline::DefaultEditor::new()?;
    let history = history_path();
    if let Some(h) = &history {
        let _ = rl.load_history(h);
    }
    println!(
        "spanflow sql over {} ({} tables: {}). \\? for help, \\q to quit.",
        catalog.dir.display(),
        catalog.tables.len(),
        catalog.tables.join(", ")
    );
    let mut buf = String::new();
    let mut ok = true;
    loop {
        let prompt = if buf.is_empty() {
            "spanflow> "
        } else {
            "       -> "
        };
        let line = match rl.readline(prompt) {
            Ok(l) => l,
            Err(rustyline::error::ReadlineError::Interrupted) => {
                buf.clear();
                continue;
            }
            Err(rustyline::error::ReadlineError::Eof) => break,
            Err(e) => return Err(e.into()),
        };
        let trimmed = line.trim();
        if buf.is_empty() && trimmed.starts_with('\\') {
            let _ = rl.add_history_entry(trimmed);
            let mut parts = trimmed.split_whitespace();
            let sql = match (parts.next(), parts.next()) {
                (Some("\\q"), _) => break,
                (Some("\\?" | "\\h"), _) => {
                    println!("{HELP}");
                    continue;
                }
                (Some("\\d"), None) => {
                    "SELECT table_name, table_type FROM information_schema.tables \
                                          WHERE table_schema = 'public' ORDER BY table_name"
                        .to_owned()
                }
                (Some("\\d"), Some(t)) => format!("DESCRIBE {t}"),
                _ => {
                    println!("unknown command `{trimmed}`; \\? for help");
                    continue;
                }
            };
            ok &= run_and_print(ctx, &sql, format).await;
            continue;
        }
        if trimmed.is_empty() && buf.is_empty() {
            continue;
        }
        buf.push_str(&line);
        buf.push('\n');
        if trimmed.ends_with(';') {
            let _ = rl.add_history_entry(buf.trim());
            ok &= run_and_print(ctx, &buf, format).await;
            buf.clear();
        }
    }
    if let Some(h) = &history {
        if let Some(parent) = h.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let _ = rl.save_history(h);
    }
    Ok(ok)
}

async fn run_and_print(ctx: &SessionContext, sql: &str, format: Format) -> bool {
    let started = std::time::Instant::now();
    match run(ctx, sql).await {
        Ok(r) => match render(&r, format) {
            Ok(text) => {
                print!("{text}");
                if format == Format::Table {
                    println!("({:.3}s)", started.elapsed().as_secs_f64());
                }
                true
            }
            Err(e) => {
                eprintln!("error: {e}");
                false
            }
        },
        Err(e) => {
            eprintln!("{}", describe_error("query", sql, &e));
            false
        }
    }
}

fn history_path() -> Option<PathBuf> {
    let home = std::env::var_os("HOME")?;
    Some(Path::new(&home).join(".cache/spanflow/sql_history"))
}
