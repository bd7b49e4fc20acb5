//! The `spanflow` command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use spanflow::formats::InputFormat;
use spanflow::job::run_job;
use spanflow::job::{self, Job, SourceKind};
use spanflow::runtime::io::Fault;
use spanflow::runtime::{MemoryInput, RunOptions};
use spanflow::testkit::generator::{Generator, GeneratorConfig, write_records};

/// spanflow: a Flink-style stream processor for distributed-tracing analytics.
///
/// It groups OpenTelemetry spans into traces in event-time session windows and writes
/// what it computes to Parquet (and, in later versions, ClickHouse and Kafka).
#[derive(Parser, Debug)]
#[command(name = "spanflow", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a job to completion and print a summary of what it computed.
    Run {
        /// The job file (YAML).
        job: PathBuf,
        /// Change a value of the job file, e.g. `--set sinks.ch.database=test`
        /// (a dotted key path, a YAML value); repeatable.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<job::Override>,
        /// Write every Parquet table under this directory instead of the sinks' `path`.
        #[arg(long)]
        output_dir: Option<PathBuf>,
        /// Shards (default: the job's `parallelism`, else one per core).
        #[arg(long)]
        parallelism: Option<usize>,
        /// Print the summary as JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Do not show the progress bar.
        #[arg(long)]
        no_progress: bool,
        /// Keep checkpoints here (overrides the job's `checkpoint.dir`): the run
        /// resumes from the newest complete one, and Ctrl-C takes a last one instead
        /// of flushing every open window.
        #[arg(long, value_name = "DIR")]
        checkpoint_dir: Option<PathBuf>,
        /// Take a checkpoint this often, e.g. `10s`, `500ms` (overrides the job's
        /// `checkpoint.interval`; needs a checkpoint directory).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        checkpoint_interval: Option<std::time::Duration>,
        /// Run as instance NAME of a group of instances of this job that share its
        /// Kafka consumer group and checkpoint directory: each reads the partitions
        /// the group assigns it, restores their state from whichever instance
        /// checkpointed them last, and writes its Parquet files under
        /// `<table>/<NAME>/`. Needs one kafka source (one topic, keyed by trace id)
        /// and a checkpoint directory all instances reach.
        #[arg(long, value_name = "NAME")]
        instance: Option<String>,
    },
    /// Re-read a time range of a job's Kafka topics (a backfill): every partition from
    /// the first record at or after --from to the last before --to, under a consumer
    /// group of its own (the live job's committed offsets never move), with the live
    /// job's event-time semantics (what is open at the end is flushed). Outputs are
    /// redirected with --output-dir and --set; checkpoints are taken on the way, and the
    /// same command run again resumes an interrupted replay.
    Replay {
        /// The job file (YAML); every source must be a kafka source.
        job: PathBuf,
        /// Start of the range (Kafka record timestamps), RFC 3339, e.g.
        /// `2026-11-21T10:00:00Z`.
        #[arg(long, value_name = "TIME")]
        from: String,
        /// End of the range (exclusive), RFC 3339.
        #[arg(long, value_name = "TIME")]
        to: String,
        /// Change a value of the job file, e.g. `--set sinks.ch.database=backfill`
        /// (a dotted key path, a YAML value); repeatable.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<job::Override>,
        /// Write every Parquet table under this directory instead of the sinks' `path`.
        #[arg(long)]
        output_dir: Option<PathBuf>,
        /// The replay's consumer group (default: the live group's name with
        /// `.replay.<from>-<to>`).
        #[arg(long)]
        group: Option<String>,
        /// Keep the replay's checkpoints here (default: `replay-<from>-<to>` under the
        /// job's checkpoint directory, else `.spanflow/replay/<job>/<from>-<to>`).
        #[arg(long, value_name = "DIR")]
        checkpoint_dir: Option<PathBuf>,
        /// Take a checkpoint this often (default: the job's interval, else 30s).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        checkpoint_interval: Option<std::time::Duration>,
        /// Shards (default: the job's `parallelism`, else one per core).
        #[arg(long)]
        parallelism: Option<usize>,
        /// Print the summary as JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Do not show the progress bar.
        #[arg(long)]
        no_progress: bool,
    },
    /// Check a job file; exit 1 and print `file:line:column` diagnostics if invalid.
    Validate {
        /// The job file (YAML).
        job: PathBuf,
        /// Diagnostics format.
        #[arg(long, value_enum, default_value_t = DiagFormat::Human)]
        format: DiagFormat,
    },
    /// Generate spans with the built-in generator and write them to a file (plus the
    /// ground truth next to it, as `<FILE>.truth.json`), or produce them to Kafka
    /// (the ground truth goes to stdout).
    Gen {
        /// Number of traces.
        #[arg(long, default_value_t = 1000)]
        traces: u64,
        /// Seed.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Trace starts per second of event time.
        #[arg(long, default_value_t = 200.0)]
        traces_per_second: f64,
        /// Fraction of spans delivered late.
        #[arg(long, default_value_t = 0.0)]
        late_fraction: f64,
        /// Fraction of garbage (undecodable) records.
        #[arg(long, default_value_t = 0.0)]
        garbage_fraction: f64,
        /// Record encoding.
        #[arg(long, value_enum, default_value_t = GenFormat::OtlpProto)]
        format: GenFormat,
        /// Output file (protobuf: 4-byte big-endian length per record; JSON: one
        /// request per line).
        #[arg(long, required_unless_present = "kafka", conflicts_with = "kafka")]
        out: Option<PathBuf>,
        /// Produce to Kafka instead, `BROKERS/TOPIC` (e.g. `127.0.0.1:9092/otlp_spans`):
        /// OTLP protobuf requests split by trace id over the topic's partitions.
        #[arg(long, value_name = "BROKERS/TOPIC")]
        kafka: Option<String>,
        /// With --kafka: create the topic with this many partitions if it is missing.
        #[arg(long, default_value_t = 4)]
        partitions: i32,
        /// With --kafka: at most this many spans per second (default: as fast as
        /// possible).
        #[arg(long)]
        rate: Option<f64>,
        /// With --kafka: send each request whole to the next partition in turn instead
        /// of splitting it by trace id (a topic for the repartition stage).
        #[arg(long, requires = "kafka")]
        unkeyed: bool,
    },
    /// Convert an Alibaba microservice call-graph CSV (2021 or 2022 layout, plain or
    /// gzip) to OTLP spans in a file the `file` source reads; print what was kept.
    ImportAlibaba {
        /// The CSV file (`.csv` or `.csv.gz`).
        #[arg(long)]
        input: PathBuf,
        /// Output file (protobuf: 4-byte big-endian length per record; JSON: one
        /// request per line).
        #[arg(long)]
        out: PathBuf,
        /// Record encoding.
        #[arg(long, value_enum, default_value_t = GenFormat::OtlpProto)]
        format: GenFormat,
    },
    /// Run a job on generated spans fully in memory and report throughput.
    Bench {
        /// The job file (YAML); its generator source's settings shape the spans.
        job: PathBuf,
        /// About how many spans to process.
        #[arg(long, default_value_t = 2_000_000)]
        spans: u64,
        /// Shards (default: the job's `parallelism`, else one per core).
        #[arg(long)]
        parallelism: Option<usize>,
        /// Print one JSON object on stdout instead of text.
        #[arg(long)]
        json: bool,
        /// Read the spans through Kafka: they are first produced (untimed) to a topic of
        /// librdkafka's in-process mock cluster, then the job consumes them with a
        /// `kafka` source (consumer, decode, routing: all measured). The mock keeps only
        /// 5 MiB per partition, so large inputs get more partitions than asked for;
        /// each partition is a split with its own watermark (watermark alignment keeps
        /// them within the source's `max_drift` of each other).
        #[arg(long)]
        kafka_mock: bool,
        /// With --kafka-mock: partitions of the topic (at least; more when the mock
        /// could not hold the input otherwise).
        #[arg(long, default_value_t = 4, value_name = "N", requires = "kafka_mock",
              value_parser = clap::value_parser!(i32).range(1..=1024))]
        partitions: i32,
        /// With --kafka-mock: the producer's compression of the topic's messages
        /// (librdkafka's `compression.type`). lz4 by default, as spanflow's own producer
        /// (`spanflow gen --kafka`, the Kafka sink); `none` is the OpenTelemetry
        /// Collector Kafka exporter's default, but the mock, which keeps 5 MiB per
        /// partition, then needs about four times the partitions.
        #[arg(long, default_value = "lz4", value_name = "CODEC", requires = "kafka_mock",
              value_parser = ["none", "lz4", "zstd", "snappy", "gzip"])]
        compression: String,
        /// With --kafka-mock: produce each generated request whole to the next partition
        /// in turn (the records of the in-memory bench, byte for byte) instead of split
        /// by trace id, where every piece repeats its spans' resources and scopes.
        #[arg(long, requires = "kafka_mock")]
        unkeyed: bool,
        /// Run the job this many times on the same generated spans and report the
        /// median run (and every run): the first run of a process also pays for the
        /// memory it touches for the first time, which a long-running job does not.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
        runs: u32,
        /// Take checkpoints this often (into a temporary directory, removed after) and
        /// report their duration, size and the longest stall they caused.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        checkpoint_interval: Option<std::time::Duration>,
    },
    /// Query a job's Parquet outputs with SQL (DataFusion): each table directory under
    /// the output directory is a table (`traces`, `spans`, `red_metrics`, `exemplars`,
    /// `service_relation`, rollups, ...). Without a query or --file, an interactive
    /// prompt. Extra functions: quantile_from_buckets(bucket_bounds, bucket_counts, q),
    /// sum_buckets(bucket_counts), hex(trace_id), unhex('<hex>').
    Sql {
        /// The query; several statements separated by `;` print the last one's rows.
        query: Option<String>,
        /// Read the statements from this file instead.
        #[arg(long, conflicts_with = "query")]
        file: Option<PathBuf>,
        /// The job's Parquet output directory (a parquet sink's `path`).
        #[arg(long, default_value = "out/demo")]
        output_dir: PathBuf,
        /// How to print rows.
        #[arg(long, value_enum, default_value_t = spanflow::sql::cli::Format::Table)]
        format: spanflow::sql::cli::Format,
    },
    /// Serve Jaeger's remote-storage API v2 (gRPC: TraceReader, DependencyReader,
    /// Capabilities) over the traces a job kept and its service graph, read from the
    /// job's Parquet or ClickHouse sink, so Jaeger and its UI browse them. Point Jaeger
    /// v2's `grpc` storage backend at the address (see README, "Jaeger API").
    Jaeger {
        /// The job file (YAML) whose outputs to serve.
        job: PathBuf,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:17271")]
        listen: std::net::SocketAddr,
        /// The sink to read, when several write a sampler's `spans`.
        #[arg(long, value_name = "NAME")]
        sink: Option<String>,
        /// Read a Parquet sink's tables from this directory instead of its `path` (as
        /// `spanflow run --output-dir` wrote them).
        #[arg(long, value_name = "DIR")]
        output_dir: Option<PathBuf>,
        /// Every call must carry `authorization: Bearer <TOKEN>` (required to listen
        /// on anything but loopback).
        #[arg(long, env = "SPANFLOW_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Run the job server: a REST API under /api/v1 to submit, watch, stop and cancel
    /// jobs (see `spanflow submit`), and their telemetry at /metrics. Jobs and their
    /// checkpoints live under --state-dir; Ctrl-C or SIGTERM stops every job with a
    /// last checkpoint, and a server started again on that directory resumes them.
    Server {
        /// Address to listen on; anything but loopback needs --token.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Where jobs, their status and checkpoints are kept.
        #[arg(long, value_name = "DIR", default_value = ".spanflow/server")]
        state_dir: PathBuf,
        /// Every API call must carry `Authorization: Bearer <TOKEN>`.
        #[arg(long, env = "SPANFLOW_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Checkpoint interval of jobs whose definition sets none.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "10s")]
        checkpoint_interval: std::time::Duration,
        /// Also serve Jaeger's remote-storage API v2 (gRPC) on this address, over the
        /// kept traces of every job (as `spanflow jaeger` does for one job), e.g.
        /// 127.0.0.1:17271.
        #[arg(long, value_name = "ADDR")]
        jaeger: Option<std::net::SocketAddr>,
    },
    /// Submit a job to a server: validated here first, its rollup SQL files inlined and
    /// its relative paths made absolute, so the server runs exactly this job. Prints
    /// the job's id.
    Submit {
        /// The job file (YAML).
        job: PathBuf,
        #[command(flatten)]
        server: ServerArgs,
        /// Wait until the job has ended, then print it (exits non-zero if it failed).
        #[arg(long)]
        wait: bool,
        /// Run the job as this member of its Kafka consumer group, as `spanflow run
        /// --instance` does (the job must set `checkpoint.dir` to a directory every
        /// instance reaches).
        #[arg(long, value_name = "NAME")]
        instance: Option<String>,
    },
    /// List a server's jobs (or show one as JSON).
    Jobs {
        /// Show this job, as JSON.
        id: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
        /// Print the list as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop a server's job with a last checkpoint (its open traces are kept).
    Stop {
        /// Job id (see `spanflow jobs`).
        id: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Cancel a server's job: its sources stop and its state is dropped.
    Cancel {
        /// Job id (see `spanflow jobs`).
        id: String,
        #[command(flatten)]
        server: ServerArgs,
    },
}

/// Where the job server is.
#[derive(clap::Args, Debug)]
struct ServerArgs {
    /// The server's URL.
    #[arg(long = "server", env = "SPANFLOW_SERVER", default_value = spanflow::server::client::DEFAULT_SERVER)]
    url: String,
    /// The server's bearer token.
    #[arg(long, env = "SPANFLOW_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

impl ServerArgs {
    fn client(&self) -> Result<spanflow::server::client::Client> {
        spanflow::server::client::Client::new(&self.url, self.token.clone())
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum DiagFormat {
    Human,
    Json,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum GenFormat {
    OtlpProto,
    OtlpJson,
    /// Avro single-object encoding of schemas/avro/otlp_span_batch.avsc.
    Avro,
}

impl From<GenFormat> for InputFormat {
    fn from(f: GenFormat) -> Self {
        match f {
            GenFormat::OtlpProto => InputFormat::OtlpProto,
            GenFormat::OtlpJson => InputFormat::OtlpJson,
            GenFormat::Avro => InputFormat::Avro,
        }
    }
}

/// mimalloc: spans, their attribute buffers and batches are allocated and freed at
/// millions per second across threads, where glibc malloc measurably lags.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Turns transparent huge pages off for this process (unless `SPANFLOW_THP=1`).
///
/// The allocator asks for huge pages, and the kernel then backs each partly used 2 MiB
/// range with a whole zeroed huge page, compacting memory to find one. A job's memory is
/// many small, short-lived buffers: measured on `spanflow bench` (BENCHMARKS.md,
/// 2026-11-22), huge pages held ~150 MiB more at peak for the same CPU time, and the
/// zeroing showed up as 12% of the pipeline's profile samples. Databases with the same
/// allocation pattern advise the same.
fn disable_transparent_huge_pages() {
    if std::env::var_os("SPANFLOW_THP").is_some_and(|v| v == "1") {
        return;
    }
    // SAFETY: PR_SET_THP_DISABLE only sets a flag of this process; no memory is passed.
    let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if rc != 0 {
        // Old kernels: a performance setting, not a correctness one.
        tracing::debug!("PR_SET_THP_DISABLE: {}", std::io::Error::last_os_error());
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SPANFLOW_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    disable_transparent_huge_pages();
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            // Whose fault a failed run is decides what a supervisor should do: fix the
            // job (1), restart later (75, EX_TEMPFAIL), or report a bug (70,
            // EX_SOFTWARE).
            match e
                .chain()
                .find_map(|c| c.downcast_ref::<spanflow::runtime::RunError>())
                .map(spanflow::runtime::RunError::fault)
            {
                Some(Fault::External) => {
                    eprintln!("  an external system failed: retrying later may succeed");
                    ExitCode::from(75)
                }
                Some(Fault::Internal) => {
                    eprintln!("  this is a bug in spanflow; please report it");
                    ExitCode::from(70)
                }
                Some(Fault::User) | None => ExitCode::FAILURE,
            }
        }
    }
}

fn load_job(path: &Path) -> Result<Job> {
    load_job_with(path, &[])
}

/// [`load_job`] with `--set` overrides.
fn load_job_with(path: &Path, overrides: &[job::Override]) -> Result<Job> {
    job::load_with(path, overrides).map_err(|d| {
        eprint!(
            "{}",
            d.render_human(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        );
        anyhow::anyhow!(
            "{}: invalid job ({} problems)",
            path.display(),
            d.items.len()
        )
    })
}

/// Whether `run` and `replay` draw a progress bar: on a terminal, unless told not to
/// or printing JSON.
fn show_progress(no_progress: bool, json: bool) -> bool {
    !no_progress && !json && std::io::IsTerminal::is_terminal(&std::io::stderr())
}

/// Runs `job` and prints its summary (text, or JSON with `json`); `doing` names the
/// command in errors ("running job `demo`").
fn run_and_print(job: &Job, opts: &RunOptions, json: bool, doing: &str) -> Result<ExitCode> {
    let summary = run_job(job, opts).with_context(|| format!("{doing} job `{}`", job.name))?;
    print_summary(&summary, json)
}

/// Runs `job` as instance `name` of a consumer group of instances.
fn run_group_and_print(job: &Job, opts: &RunOptions, json: bool, name: &str) -> Result<ExitCode> {
    let summary = spanflow::job::run_group(job, opts, name)
        .with_context(|| format!("running job `{}` as instance `{name}`", job.name))?;
    print_summary(&summary, json)
}

fn print_summary(summary: &spanflow::runtime::RunSummary, json: bool) -> Result<ExitCode> {
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!("{}", summary.render());
    }
    Ok(ExitCode::SUCCESS)
}

/// A duration on the command line, written as in job files (`250ms`, `10s`).
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if d >= std::time::Duration::from_millis(10) => Ok(d),
        Ok(_) => Err("must be at least 10ms".into()),
        Err(e) => Err(format!("{e} (write e.g. `500ms`, `10s`, `5m`)")),
    }
}

fn dispatch(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Run {
            job,
            set,
            output_dir,
            parallelism,
            json,
            no_progress,
            checkpoint_dir,
            checkpoint_interval,
            instance,
        } => {
            let job = load_job_with(&job, &set)?;
            let opts = RunOptions {
                output_dir,
                parallelism,
                progress: show_progress(no_progress, json),
                stop_on_ctrl_c: true,
                checkpoint_dir,
                checkpoint_interval,
                ..Default::default()
            };
            match instance {
                Some(name) => run_group_and_print(&job, &opts, json, &name),
                None => run_and_print(&job, &opts, json, "running"),
            }
        }
        Command::Replay {
            job,
            from,
            to,
            set,
            output_dir,
            group,
            checkpoint_dir,
            checkpoint_interval,
            parallelism,
            json,
            no_progress,
        } => {
            let mut job = load_job_with(&job, &set)?;
            let replay = job::replay::prepare(
                &mut job,
                &from,
                &to,
                group.as_deref(),
                checkpoint_dir.as_deref(),
            )
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            if !json {
                for (source, live, group) in &replay.groups {
                    eprintln!(
                        "replaying `{}` source `{source}` from {from} to {to} as group \
                         `{group}` (the live group `{live}` is not touched)",
                        job.name
                    );
                }
                eprintln!(
                    "checkpoints in {} (run the same command again to resume)",
                    replay.checkpoint_dir.display()
                );
            }
            let opts = RunOptions {
                output_dir,
                parallelism,
                progress: show_progress(no_progress, json),
                stop_on_ctrl_c: true,
                checkpoint_interval,
                progress_until: Some(replay.to_ms),
                ..Default::default()
            };
            run_and_print(&job, &opts, json, "replaying")
        }
        Command::Validate { job, format } => match job::load(&job) {
            Ok(j) => {
                if matches!(format, DiagFormat::Json) {
                    println!("[]");
                } else {
                    let rollups = match j.rollups.len() {
                        0 => String::new(),
                        n => format!(", {n} rollups"),
                    };
                    println!(
                        "{}: ok (job `{}`: {} sources, {} operators, {} sinks{rollups})",
                        job.display(),
                        j.name,
                        j.sources.len(),
                        j.operators.len(),
                        j.sinks.len()
                    );
                }
                Ok(ExitCode::SUCCESS)
            }
            Err(d) => {
                match format {
                    DiagFormat::Human => {
                        eprint!(
                            "{}",
                            d.render_human(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                        )
                    }
                    DiagFormat::Json => println!("{}", d.render_json()),
                }
                Ok(ExitCode::from(1))
            }
        },
        Command::Gen {
            traces,
            seed,
            traces_per_second,
            late_fraction,
            garbage_fraction,
            format,
            out,
            kafka,
            partitions,
            rate,
            unkeyed,
        } => {
            let config = GeneratorConfig {
                traces,
                seed,
                traces_per_second,
                late_fraction,
                garbage_fraction,
                format: format.into(),
                ..Default::default()
            };
            let issues = config.validate();
            if let Some(i) = issues.first() {
                bail!(
                    "invalid generator setting `{}`: {}",
                    i.path.join("."),
                    i.message
                );
            }
            let mut generator = Generator::new(config.clone())?;
            if let Some(target) = kafka {
                return gen_kafka(generator, &config, &target, (partitions, unkeyed), rate);
            }
            let Some(out) = out else {
                bail!("give --out FILE or --kafka BROKERS/TOPIC");
            };
            let records: Vec<_> = generator.by_ref().collect();
            write_records(&out, config.format, records)
                .with_context(|| format!("writing {}", out.display()))?;
            let truth_path = truth_path(&out);
            let truth = generator.ground_truth();
            std::fs::write(&truth_path, serde_json::to_vec_pretty(truth)?)
                .with_context(|| format!("writing {}", truth_path.display()))?;
            eprintln!(
                "wrote {} records ({} traces, {} spans, {} error spans) to {}; ground truth in {}",
                truth.records,
                truth.traces,
                truth.spans,
                truth.error_spans,
                out.display(),
                truth_path.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::ImportAlibaba { input, out, format } => {
            let stats = spanflow::testkit::alibaba::import(&input, &out, format.into())?;
            print!("{}", stats.render());
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            job,
            spans,
            parallelism,
            json,
            kafka_mock,
            partitions,
            compression,
            unkeyed,
            runs,
            checkpoint_interval,
        } => {
            let job = load_job(&job)?;
            let b = BenchOptions {
                spans,
                parallelism,
                json,
                kafka_mock: kafka_mock.then_some(MockTopic {
                    partitions,
                    compression,
                    unkeyed,
                }),
                runs,
                checkpoint_interval,
            };
            bench(&job, &b)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Sql {
            query,
            file,
            output_dir,
            format,
        } => {
            let ok = spanflow::sql::cli::main(&spanflow::sql::cli::SqlCommand {
                output_dir,
                query,
                file,
                format,
            })?;
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Jaeger {
            job,
            listen,
            sink,
            output_dir,
            token,
        } => {
            if !listen.ip().is_loopback() && token.is_none() {
                anyhow::bail!(
                    "refusing to listen on {listen} without --token: anyone who can reach it \
                     could read every kept trace (listen on 127.0.0.1, or set a token)"
                );
            }
            let job = load_job(&job)?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(spanflow::jaeger::serve_job(
                &job,
                sink.as_deref(),
                output_dir.as_deref(),
                listen,
                token,
                async {
                    let _ = tokio::signal::ctrl_c().await;
                },
            ))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Server {
            listen,
            state_dir,
            token,
            checkpoint_interval,
            jaeger,
        } => {
            if let Some(addr) = jaeger
                && !addr.ip().is_loopback()
                && token.is_none()
            {
                anyhow::bail!(
                    "refusing to serve the Jaeger API on {addr} without --token: anyone who \
                     can reach it could read every kept trace (listen on 127.0.0.1, or set a \
                     token)"
                );
            }
            spanflow::server::serve(spanflow::server::ServerConfig {
                listen,
                state_dir,
                token,
                checkpoint_interval,
                jaeger,
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Submit {
            job,
            server,
            wait,
            instance,
        } => {
            let definition = job::self_contained(&job).map_err(|d| {
                eprint!(
                    "{}",
                    d.render_human(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                );
                anyhow::anyhow!(
                    "{}: invalid job ({} problems)",
                    job.display(),
                    d.items.len()
                )
            })?;
            let client = server.client()?;
            let submitted = client.submit(&definition, instance.as_deref())?;
            println!("{}", submitted.id);
            if !wait {
                return Ok(ExitCode::SUCCESS);
            }
            loop {
                let j = client.job(&submitted.id)?;
                match j["state"].as_str() {
                    Some("running") => std::thread::sleep(std::time::Duration::from_millis(200)),
                    state => {
                        eprint!(
                            "{}",
                            spanflow::server::client::render_jobs(std::slice::from_ref(&j))
                        );
                        return Ok(if state == Some("failed") {
                            ExitCode::FAILURE
                        } else {
                            ExitCode::SUCCESS
                        });
                    }
                }
            }
        }
        Command::Jobs { id, server, json } => {
            let client = server.client()?;
            match id {
                Some(id) => println!("{}", serde_json::to_string_pretty(&client.job(&id)?)?),
                None => {
                    let jobs = client.jobs()?;
                    if json {
                        println!("{}", serde_json::to_string_pretty(&jobs)?);
                    } else {
                        print!("{}", spanflow::server::client::render_jobs(&jobs));
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Stop { id, server } => {
            let j = server.client()?.stop(&id)?;
            print!("{}", spanflow::server::client::render_jobs(&[j]));
            Ok(ExitCode::SUCCESS)
        }
        Command::Cancel { id, server } => {
            let j = server.client()?.cancel(&id)?;
            print!("{}", spanflow::server::client::render_jobs(&[j]));
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn gen_kafka(
    mut generator: Generator,
    config: &GeneratorConfig,
    target: &str,
    (partitions, unkeyed): (i32, bool),
    rate: Option<f64>,
) -> Result<ExitCode> {
    use spanflow::connectors::kafka::{self, produce};
    if config.format != InputFormat::OtlpProto {
        bail!("--kafka produces OTLP protobuf; drop --format otlp-json");
    }
    let Some((brokers, topic)) = target.rsplit_once('/') else {
        bail!("--kafka takes BROKERS/TOPIC, e.g. 127.0.0.1:9092/otlp_spans; found `{target}`");
    };
    let props = std::collections::BTreeMap::new();
    kafka::create_topics(brokers, &props, &[topic.to_owned()], partitions)
        .map_err(anyhow::Error::msg)?;
    let partitions = kafka::topic_partitions(brokers, &props, topic).map_err(anyhow::Error::msg)?;
    let producer = produce::KafkaProducer::new(brokers, &props).map_err(anyhow::Error::msg)?;
    let bar = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
        let b = indicatif::ProgressBar::new_spinner();
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} producing to {prefix}: {pos} records, {msg} [{elapsed}]",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        b.set_prefix(topic.to_owned());
        b
    });
    let records = std::iter::from_fn(|| generator.next_record());
    let mut spans = 0u64;
    let progress = |n: usize| {
        spans += n as u64;
        if let Some(b) = &bar {
            b.inc(1);
            b.set_message(format!("{spans} spans"));
        }
    };
    let stats = if unkeyed {
        produce::produce_generated_unkeyed(&producer, topic, partitions, records, rate, progress)
    } else {
        produce::produce_generated(&producer, topic, partitions, records, rate, progress)
    }
    .map_err(anyhow::Error::msg)?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let truth = generator.ground_truth();
    eprintln!(
        "produced {} records ({} traces, {} spans, {} error spans) as {} messages, {:.1} MiB, to {topic} ({partitions} partitions) in {:.2}s: {:.0} spans/s",
        truth.records,
        truth.traces,
        truth.spans,
        truth.error_spans,
        stats.messages,
        stats.bytes as f64 / 1048576.0,
        stats.seconds,
        truth.spans as f64 / stats.seconds.max(1e-9)
    );
    println!("{}", serde_json::to_string(truth)?);
    Ok(ExitCode::SUCCESS)
}

/// What librdkafka's mock cluster keeps of a partition: at most 5 MiB of message sets
/// (`rd_kafka_mock_partition_init`, not configurable); older ones are dropped as new
/// ones arrive, and producing is done before the job reads, so the topic needs enough
/// partitions to hold the whole input.
const MOCK_PARTITION_BYTES: u64 = 5 << 20;

/// Most partitions `--kafka-mock` gives its topic (each one a split of the source).
const MOCK_MAX_PARTITIONS: i32 = 1024;

/// Produces `records` to a topic of an in-process mock Kafka cluster and returns the
/// cluster with `job` reading that topic instead of its sources. The topic gets at least
/// 4 partitions, and more when the mock would otherwise drop the oldest messages (see
/// [`MOCK_PARTITION_BYTES`]): it is produced again with more until the partitions'
/// start offsets show that nothing was dropped.
fn mock_kafka_job(
    job: &Job,
    name: &str,
    records: &[bytes::Bytes],
    arrivals: &[u64],
    format: InputFormat,
    topic: &MockTopic,
    quiet: bool,
) -> Result<(
    rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    Job,
)> {
    use spanflow::connectors::kafka::{KafkaSourceConfig, produce};
    let mut partitions = topic.partitions;
    let (cluster, brokers) = loop {
        let cluster = rdkafka::mocking::MockCluster::new(1)?;
        cluster.create_topic("bench", partitions, 1)?;
        let brokers = cluster.bootstrap_servers();
        let properties = [("compression.type".to_owned(), topic.compression.clone())].into();
        let producer =
            produce::KafkaProducer::new(&brokers, &properties).map_err(anyhow::Error::msg)?;
        if !quiet {
            eprintln!(
                "producing {} records to {partitions} partitions of the mock cluster",
                records.len()
            );
        }
        let generated = records
            .iter()
            .zip(arrivals.iter().chain(std::iter::repeat(&0)))
            .map(
                |(r, &arrival_ns)| spanflow::testkit::generator::GeneratedRecord {
                    payload: r.to_vec(),
                    arrival_ns,
                    garbage: false,
                    spans: 0,
                },
            );
        let stats = if topic.unkeyed {
            produce::produce_generated_unkeyed(
                &producer,
                "bench",
                partitions,
                generated,
                None,
                |_| {},
            )
        } else {
            produce::produce_generated(&producer, "bench", partitions, generated, None, |_| {})
        }
        .map_err(anyhow::Error::msg)?;
        drop(producer);
        if !quiet {
            eprintln!(
                "produced {} messages ({:.1} MiB) in {:.1}s",
                stats.messages,
                stats.bytes as f64 / 1048576.0,
                stats.seconds
            );
        }
        let (dropped, total) = mock_dropped_messages(&brokers, "bench", partitions)?;
        if dropped == 0 {
            break (cluster, brokers);
        }
        if partitions >= MOCK_MAX_PARTITIONS {
            bail!(
                "the mock Kafka cluster dropped {dropped} of {total} messages even with \
                 {partitions} partitions (it keeps {} MiB per partition); use fewer --spans, \
                 or scripts/bench-kafka.sh for a real broker",
                MOCK_PARTITION_BYTES >> 20
            );
        }
        let kept = total.saturating_sub(dropped).max(1);
        let grown = (f64::from(partitions) * total as f64 / kept as f64 * 1.25).ceil();
        let next = (grown as i32)
            .max(partitions.saturating_mul(2))
            .min(MOCK_MAX_PARTITIONS);
        if !quiet {
            eprintln!(
                "the mock cluster dropped {dropped} of {total} messages (it keeps {} MiB per \
                 partition); producing again to {next} partitions",
                MOCK_PARTITION_BYTES >> 20
            );
        }
        partitions = next;
    };
    let watermark = job
        .sources
        .first()
        .map(|s| s.watermark.clone())
        .unwrap_or_default();
    let mut kafka_job = job.clone();
    kafka_job.sources = vec![spanflow::job::SourceNode {
        name: name.to_owned(),
        kind: SourceKind::Kafka(KafkaSourceConfig {
            brokers,
            topics: vec!["bench".into()],
            group_id: "bench".into(),
            format,
            start: "earliest".into(),
            on_no_committed: "earliest".into(),
            end: Some("latest".into()),
            end_offsets: Default::default(),
            properties: Default::default(),
            repartition: None,
        }),
        watermark,
    }];
    Ok((cluster, kafka_job))
}

/// Messages the mock cluster dropped from `topic` (the sum of its partitions' start
/// offsets, as everything was produced from offset 0) and all it was given.
fn mock_dropped_messages(brokers: &str, topic: &str, partitions: i32) -> Result<(u64, u64)> {
    let consumer: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let all: Vec<(String, i32)> = (0..partitions).map(|p| (topic.to_owned(), p)).collect();
    let marks = spanflow::connectors::kafka::source::watermarks(&consumer, &all)?;
    Ok(marks
        .values()
        .fold((0, 0), |(dropped, total), &(low, high)| {
            (
                dropped + u64::try_from(low).unwrap_or(0),
                total + u64::try_from(high).unwrap_or(0),
            )
        }))
}

fn truth_path(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".truth.json");
    PathBuf::from(s)
}

/// CPU time (user and system, seconds) so far of this process's threads whose name
/// starts with `prefix` (Linux; 0 elsewhere or when /proc is not readable).
fn threads_cpu_seconds(prefix: &str) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks <= 0 {
        return 0.0;
    }
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    let mut total = 0u64;
    for t in tasks.flatten() {
        let dir = t.path();
        let named = std::fs::read_to_string(dir.join("comm"))
            .is_ok_and(|c| c.trim_end().starts_with(prefix));
        if !named {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(dir.join("stat")) else {
            continue;
        };
        // Fields after the parenthesised name: state is field 3, utime 14, stime 15.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |i: usize| fields.get(i - 3).and_then(|f| f.parse::<u64>().ok());
        total += field(14).unwrap_or(0) + field(15).unwrap_or(0);
    }
    total as f64 / ticks as f64
}

/// What `spanflow bench` was asked for.
struct BenchOptions {
    spans: u64,
    parallelism: Option<usize>,
    json: bool,
    /// Read through the mock Kafka cluster.
    kafka_mock: Option<MockTopic>,
    runs: u32,
    checkpoint_interval: Option<std::time::Duration>,
}

/// The topic `spanflow bench --kafka-mock` reads.
struct MockTopic {
    /// At least this many partitions.
    partitions: i32,
    /// The producer's `compression.type`.
    compression: String,
    /// Requests go whole to partitions in turn rather than split by trace id.
    unkeyed: bool,
}

fn bench(job: &Job, b: &BenchOptions) -> Result<()> {
    let BenchOptions {
        spans,
        parallelism,
        json,
        ref kafka_mock,
        runs,
        checkpoint_interval,
    } = *b;
    let (name, base) = job
        .sources
        .iter()
        .find_map(|s| match &s.kind {
            SourceKind::Generator(g) => Some((s.name.clone(), g.clone())),
            SourceKind::File(_) | SourceKind::Kafka(_) | SourceKind::Otlp(_) => None,
        })
        .unwrap_or_else(|| ("bench".to_owned(), GeneratorConfig::default()));
    // Size the run: measure spans per trace on a sample, then generate enough traces.
    let sample = GeneratorConfig {
        traces: 500,
        ..base.clone()
    };
    let mut g = Generator::new(sample)?;
    g.by_ref().for_each(drop);
    let per_trace = (g.ground_truth().spans as f64 / 500.0).max(1.0);
    let traces = ((spans as f64 / per_trace).ceil() as u64).max(1);
    let config = GeneratorConfig { traces, ..base };
    let bar = (!json).then(|| {
        let b = indicatif::ProgressBar::new(traces);
        b.set_style(
            indicatif::ProgressStyle::with_template("generating {bar:30} {pos}/{len} traces")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    let mut generator = Generator::new(config.clone())?;
    let mut records = Vec::new();
    // Arrival times, for batching the records into Kafka messages as a Collector would.
    let mut arrivals = Vec::new();
    let mut input_bytes = 0u64;
    while let Some(r) = generator.next_record() {
        input_bytes += r.payload.len() as u64;
        records.push(bytes::Bytes::from(r.payload));
        if kafka_mock.is_some() {
            arrivals.push(r.arrival_ns);
        }
        if let Some(b) = &bar {
            b.set_position(generator.ground_truth().traces);
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let generated_spans = generator.ground_truth().spans;
    let input = kafka_mock.is_none().then(|| {
        Arc::new(MemoryInput {
            name: name.clone(),
            format: config.format,
            // Only the Kafka path reads `records` again.
            records: std::mem::take(&mut records),
        })
    });
    let mut results = Vec::new();
    // CPU of the in-process mock broker's threads during each run: part of the
    // process's, but a real broker runs elsewhere.
    let mut broker_cpu = Vec::new();
    for run in 1..=runs {
        // A fresh cluster per run: each run consumes the whole topic.
        let mut _cluster = None;
        let job = if let Some(topic) = kafka_mock {
            let (cluster, kafka_job) =
                mock_kafka_job(job, &name, &records, &arrivals, config.format, topic, json)?;
            _cluster = Some(cluster);
            kafka_job
        } else {
            job.clone()
        };
        let checkpoint_dir = checkpoint_interval.map(|_| {
            std::env::temp_dir().join(format!("spanflow-bench-{}-{run}", std::process::id()))
        });
        let opts = RunOptions {
            parallelism,
            progress: !json && std::io::IsTerminal::is_terminal(&std::io::stderr()),
            memory_input: input.clone(),
            discard_outputs: true,
            checkpoint_dir: checkpoint_dir.clone(),
            checkpoint_interval,
            ..Default::default()
        };
        let broker_before = threads_cpu_seconds("rdk:mock");
        let s = run_job(&job, &opts);
        broker_cpu.push(threads_cpu_seconds("rdk:mock") - broker_before);
        if let Some(d) = &checkpoint_dir {
            let _ = std::fs::remove_dir_all(d);
        }
        let s = s?;
        // Figures over part of the input would look like a faster pipeline.
        let read = s.decode.spans + s.decode.bad_spans;
        if read != generated_spans {
            bail!(
                "run {run} read {read} spans of the {generated_spans} generated, so its figures \
                 would not describe the input{}",
                if kafka_mock.is_some() {
                    " (the mock Kafka cluster lost or repeated messages)"
                } else {
                    ""
                }
            );
        }
        if !json && runs > 1 {
            eprintln!(
                "run {run}/{runs}: {:.0} spans/s, {:.0} spans per CPU-second ({:.2} CPU-s), {} page faults",
                s.spans_per_second(),
                s.spans_per_cpu_second(),
                s.cpu_seconds,
                s.page_faults
            );
        }
        results.push(s);
    }
    let per_cpu: Vec<f64> = results.iter().map(|s| s.spans_per_cpu_second()).collect();
    let mut order: Vec<usize> = (0..results.len()).collect();
    order.sort_by(|&a, &b| per_cpu[a].total_cmp(&per_cpu[b]));
    // The lower median for an even count: a real run's figures, not an average of two.
    let median = order[(order.len() - 1) / 2];
    let s = &results[median];
    let broker = broker_cpu.get(median).copied().unwrap_or(0.0);
    let without_broker = |s: &spanflow::runtime::RunSummary, broker: f64| {
        s.decode.spans as f64 / (s.cpu_seconds - broker).max(1e-9)
    };
    let (lo, hi) = (per_cpu[order[0]], per_cpu[order[order.len() - 1]]);
    if json {
        let each: Vec<_> = results
            .iter()
            .zip(&broker_cpu)
            .map(|(s, broker)| {
                serde_json::json!({
                    "wall_seconds": s.wall_seconds,
                    "cpu_seconds": s.cpu_seconds,
                    "broker_cpu_seconds": broker,
                    "spans_per_second": s.spans_per_second(),
                    "spans_per_cpu_second": s.spans_per_cpu_second(),
                    "page_faults": s.page_faults,
                })
            })
            .collect();
        let v = serde_json::json!({
            "job": s.job,
            "spans": s.decode.spans,
            "traces": s.sessions.traces_closed(),
            "parallelism": s.parallelism,
            "wall_seconds": s.wall_seconds,
            "cpu_seconds": s.cpu_seconds,
            "spans_per_second": s.spans_per_second(),
            "spans_per_cpu_second": s.spans_per_cpu_second(),
            "peak_rss_bytes": s.peak_rss_bytes,
            "page_faults": s.page_faults,
            "input_bytes": input_bytes,
            "peak_buffered_spans": s.peak_buffered_spans,
            "bytes_per_buffered_span": s.bytes_per_buffered_span,
            "checkpoints": s.checkpoints,
            "splits": s.event_time.splits.len(),
            "alignment_pauses": s.event_time.pauses,
            "paused_seconds": s.event_time.splits.iter().map(|x| x.paused_s).sum::<f64>(),
            "far_future_spans": s.event_time.far_future_spans,
            "broker_cpu_seconds": broker,
            "spans_per_cpu_second_without_broker": without_broker(s, broker),
            "runs": each,
        });
        println!("{v}");
    } else {
        let which = if runs > 1 {
            format!("\n  median of {runs} runs; spans per CPU-second ranged {lo:.0} - {hi:.0}")
        } else {
            String::new()
        };
        println!(
            "bench `{}`: {} spans ({} traces) in {:.2}s on {} shards\n  {:.0} spans/s, {:.0} spans per CPU-second ({:.2} CPU-s, {} page faults){which}\n  peak RSS {:.1} MiB (input held in memory: {:.1} MiB)\n  peak {} spans buffered, {:.0} bytes per buffered span",
            s.job,
            s.decode.spans,
            s.sessions.traces_closed(),
            s.wall_seconds,
            s.parallelism,
            s.spans_per_second(),
            s.spans_per_cpu_second(),
            s.cpu_seconds,
            s.page_faults,
            s.peak_rss_bytes as f64 / 1048576.0,
            input_bytes as f64 / 1048576.0,
            s.peak_buffered_spans,
            s.bytes_per_buffered_span
        );
        if kafka_mock.is_some() {
            println!(
                "  of the CPU time, {broker:.2} CPU-s were the in-process mock broker's: {:.0} \
                 spans per CPU-second without it",
                without_broker(s, broker)
            );
        }
        if s.event_time.pauses > 0 {
            println!(
                "  {} splits; watermark alignment paused splits {} times ({:.1} s in all)",
                s.event_time.splits.len(),
                s.event_time.pauses,
                s.event_time.splits.iter().map(|x| x.paused_s).sum::<f64>()
            );
        }
        if checkpoint_interval.is_some() {
            let c = &s.checkpoints;
            println!(
                "  {} checkpoints: longest {:.0} ms from barrier to durable, longest stall {:.1} \
                 ms, last {:.1} MiB",
                c.completed,
                c.max_duration_ms,
                c.max_stall_ms,
                c.last_bytes as f64 / 1048576.0
            );
        }
    }
    Ok(())
}
