//! Turning a validated [`Job`] into the dataflow the runtime can execute.

use std::path::PathBuf;

use spanflow_operators::session_window::SessionWindowConfig;

use crate::connectors::parquet::ParquetSinkConfig;
use crate::job::{Job, OperatorKind, SinkKind, SourceNode};

/// Errors planning a job (shapes this version cannot run yet).
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The DAG has a shape the runtime does not support yet.
    #[error("job `{job}`: {message}")]
    Unsupported {
        /// Job name.
        job: String,
        /// What is not supported, and what to do instead.
        message: String,
    },
}

/// Where rows of one output stream go.
#[derive(Debug, Clone)]
pub struct TableTarget {
    /// Node whose output this is (filters dead letters by source).
    pub node: String,
    /// Sink node name.
    pub sink: String,
    /// Table name (the output port).
    pub table: String,
    /// Directory of the Parquet sink.
    pub dir: PathBuf,
    /// Parquet settings.
    pub config: ParquetSinkConfig,
}

/// The executable shape: sources -> one session_window -> sinks.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Job name.
    pub job: String,
    /// Sources feeding the session window.
    pub sources: Vec<SourceNode>,
    /// Name of the session_window operator.
    pub session_window: String,
    /// Its config.
    pub session_config: SessionWindowConfig,
    /// Targets of `<session_window>.traces`.
    pub traces: Vec<TableTarget>,
    /// Targets of `<session_window>.late_spans`.
    pub late_spans: Vec<TableTarget>,
    /// Targets of `<source>.dead_letters` (any source).
    pub dead_letters: Vec<TableTarget>,
}

impl Plan {
    /// Plans `job`; `output_dir` overrides every Parquet sink's directory.
    pub fn new(job: &Job, output_dir: Option<&std::path::Path>) -> Result<Plan, PlanError> {
        let unsupported = |message: String| PlanError::Unsupported {
            job: job.name.clone(),
            message,
        };
        let [op] = job.operators.as_slice() else {
            return Err(unsupported(format!(
                "this version runs jobs with exactly one `session_window` operator; found {}",
                job.operators.len()
            )));
        };
        let OperatorKind::SessionWindow(session_config) = &op.kind;
        for input in &op.from {
            if !job.sources.iter().any(|s| s.name == input.node) || input.port != "spans" {
                return Err(unsupported(format!(
                    "`{}` must read the `spans` output of sources; found `{input}`",
                    op.name
                )));
            }
        }
        let sources: Vec<SourceNode> = job
            .sources
            .iter()
            .filter(|s| op.from.iter().any(|f| f.node == s.name))
            .cloned()
            .collect();
        let mut plan = Plan {
            job: job.name.clone(),
            sources,
            session_window: op.name.clone(),
            session_config: session_config.clone(),
            traces: Vec::new(),
            late_spans: Vec::new(),
            dead_letters: Vec::new(),
        };
        for sink in &job.sinks {
            let SinkKind::Parquet(cfg) = &sink.kind;
            for input in &sink.from {
                let target = TableTarget {
                    node: input.node.clone(),
                    sink: sink.name.clone(),
                    table: input.port.clone(),
                    dir: cfg.dir(output_dir),
                    config: cfg.clone(),
                };
                let list = if input.node == op.name && input.port == "traces" {
                    &mut plan.traces
                } else if input.node == op.name && input.port == "late_spans" {
                    &mut plan.late_spans
                } else if input.port == "dead_letters"
                    && job.sources.iter().any(|s| s.name == input.node)
                {
                    &mut plan.dead_letters
                } else {
                    return Err(unsupported(format!(
                        "sink `{sink}` reads `{input}`, which this version cannot write yet (supported: \
                         `{op}.traces`, `{op}.late_spans`, `<source>.dead_letters`)",
                        sink = sink.name,
                        op = op.name
                    )));
                };
                list.push(target);
            }
        }
        Ok(plan)
    }
}
