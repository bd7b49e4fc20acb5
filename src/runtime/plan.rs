//! Turning a validated [`Job`] into the dataflow the runtime can execute.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use spanflow_operators::red_metrics::RedMetricsConfig;
use spanflow_operators::service_graph::ServiceGraphConfig;
use spanflow_operators::session_window::SessionWindowConfig;
use spanflow_operators::span_filter::SpanFilterConfig;
use spanflow_operators::tail_sampling::TailSamplingConfig;

use crate::connectors::clickhouse::{ClickHouseTarget, SinkTable};
use crate::connectors::kafka::sink::KafkaTarget;
use crate::connectors::parquet::ParquetSinkConfig;
use crate::job::{Job, OperatorKind, OperatorNode, RollupNode, SinkKind, SourceNode, StreamRef};

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
    /// Set when the sink is Kafka (then `dir` and `config` are unused).
    pub kafka: Option<KafkaTarget>,
    /// Set when the sink is ClickHouse (then `dir` and `config` are unused).
    pub clickhouse: Option<ClickHouseTarget>,
    /// Every topic of the target's Kafka sink (created together when asked).
    pub sink_topics: Vec<String>,
    /// Added to the shard number in Parquet part names (a resumed run continues after
    /// the parts it keeps).
    pub part_base: usize,
}

impl TableTarget {
    /// Whether the target writes Parquet files (not Kafka or ClickHouse).
    pub fn is_parquet(&self) -> bool {
        self.kafka.is_none() && self.clickhouse.is_none()
    }
}

/// The executable shape, one chain per shard:
/// sources -> [span_filter] -> session_window -> [red_metrics] [service_graph],
/// with the metric operators' shard partials merged by one task.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Job name.
    pub job: String,
    /// Sources feeding the chain.
    pub sources: Vec<SourceNode>,
    /// The span filter, if any.
    pub span_filter: Option<(String, SpanFilterConfig)>,
    /// Name of the session_window operator.
    pub session_window: String,
    /// Its config.
    pub session_config: SessionWindowConfig,
    /// The tail sampler, if any.
    pub tail_sampling: Option<(String, TailSamplingConfig)>,
    /// The RED metrics operator, if any.
    pub red_metrics: Option<(String, RedMetricsConfig)>,
    /// The service graph operator, if any.
    pub service_graph: Option<(String, ServiceGraphConfig)>,
    /// Shards the job runs with (set by the runtime).
    pub shards: usize,
    /// SQL rollups over the metric outputs, run by the metric merge task.
    pub rollups: Vec<RollupNode>,
    /// Sink targets per output stream.
    pub targets: BTreeMap<StreamRef, Vec<TableTarget>>,
}

impl Plan {
    /// Plans `job`; `output_dir` overrides every Parquet sink's directory.
    pub fn new(job: &Job, output_dir: Option<&std::path::Path>) -> Result<Plan, PlanError> {
        let unsupported = |message: String| PlanError::Unsupported {
            job: job.name.clone(),
            message,
        };
        let is_source = |name: &str| job.sources.iter().any(|s| s.name == name);
        let mut filter: Option<&OperatorNode> = None;
        let mut session: Option<&OperatorNode> = None;
        let mut sampler = None;
        let mut red = None;
        let mut graph = None;
        for op in &job.operators {
            let slot = match &op.kind {
                OperatorKind::SpanFilter(_) => &mut filter,
                OperatorKind::SessionWindow(_) => &mut session,
                OperatorKind::TailSampling(_) => &mut sampler,
                OperatorKind::RedMetrics(_) => &mut red,
                OperatorKind::ServiceGraph(_) => &mut graph,
            };
            if let Some(other) = slot {
                return Err(unsupported(format!(
                    "this version runs one operator of each type; `{}` and `{}` have the same type",
                    other.name, op.name
                )));
            }
            *slot = Some(op);
        }
        let Some(session) = session else {
            return Err(unsupported(
                "this version needs a `session_window` operator".into(),
            ));
        };
        let OperatorKind::SessionWindow(session_config) = &session.kind else {
            return Err(unsupported(
                "internal: session_window slot holds another type (this is a bug)".into(),
            ));
        };
        let mut span_filter = None;
        let source_names: Vec<&str>;
        if let Some(f) = filter {
            let OperatorKind::SpanFilter(cfg) = &f.kind else {
                return Err(unsupported(
                    "internal: span_filter slot (this is a bug)".into(),
                ));
            };
            for input in &f.from {
                if !is_source(&input.node) || input.port != "spans" {
                    return Err(unsupported(format!(
                        "`{}` must read sources' `spans`; found `{input}`",
                        f.name
                    )));
                }
            }
            if session.from.len() != 1 || session.from[0].node != f.name {
                return Err(unsupported(format!(
                    "with a span_filter, `{}` must read exactly `{}`",
                    session.name, f.name
                )));
            }
            source_names = f.from.iter().map(|r| r.node.as_str()).collect();
            span_filter = Some((f.name.clone(), cfg.clone()));
        } else {
            for input in &session.from {
                if !is_source(&input.node) || input.port != "spans" {
                    return Err(unsupported(format!(
                        "`{}` must read sources' `spans` (or a span_filter); found `{input}`",
                        session.name
                    )));
                }
            }
            source_names = session.from.iter().map(|r| r.node.as_str()).collect();
        }
        let sources: Vec<SourceNode> = job
            .sources
            .iter()
            .filter(|s| source_names.contains(&s.name.as_str()))
            .cloned()
            .collect();
        let traces_of_session = StreamRef {
            node: session.name.clone(),
            port: "traces".into(),
        };
        let tail_sampling = match sampler {
            Some(op) => {
                if op.from.len() != 1 || op.from[0] != traces_of_session {
                    return Err(unsupported(format!(
                        "`{}` must read `{traces_of_session}`",
                        op.name
                    )));
                }
                match &op.kind {
                    OperatorKind::TailSampling(c) => Some((op.name.clone(), c.clone())),
                    _ => None,
                }
            }
            None => None,
        };
        let traces_of_sampler = tail_sampling.as_ref().map(|(n, _)| StreamRef {
            node: n.clone(),
            port: "traces".into(),
        });
        let metric_op =
            |node: Option<&OperatorNode>| -> Result<Option<(String, OperatorKind)>, PlanError> {
                let Some(op) = node else { return Ok(None) };
                let ok = op.from.len() == 1
                    && (op.from[0] == traces_of_session
                        || Some(&op.from[0]) == traces_of_sampler.as_ref());
                if !ok {
                    return Err(unsupported(format!(
                        "`{}` must read `{traces_of_session}` (or a tail_sampling's `traces`)",
                        op.name
                    )));
                }
                Ok(Some((op.name.clone(), op.kind.clone())))
            };
        let red_metrics = match metric_op(red)? {
            Some((name, OperatorKind::RedMetrics(c))) => Some((name, c)),
            _ => None,
        };
        let service_graph = match metric_op(graph)? {
            Some((name, OperatorKind::ServiceGraph(c))) => Some((name, c)),
            _ => None,
        };

        let mut producible: Vec<StreamRef> = vec![
            traces_of_session.clone(),
            StreamRef {
                node: session.name.clone(),
                port: "late_spans".into(),
            },
        ];
        for s in &sources {
            producible.push(StreamRef {
                node: s.name.clone(),
                port: "dead_letters".into(),
            });
        }
        if let Some((n, _)) = &tail_sampling {
            producible.push(StreamRef {
                node: n.clone(),
                port: "traces".into(),
            });
            producible.push(StreamRef {
                node: n.clone(),
                port: "spans".into(),
            });
        }
        if let Some((n, _)) = &red_metrics {
            producible.push(StreamRef {
                node: n.clone(),
                port: "red_metrics".into(),
            });
            producible.push(StreamRef {
                node: n.clone(),
                port: "exemplars".into(),
            });
        }
        if let Some((n, _)) = &service_graph {
            producible.push(StreamRef {
                node: n.clone(),
                port: "service_relation".into(),
            });
        }
        for r in &job.rollups {
            if let Some(input) = r.from.iter().find(|i| !producible.contains(i)) {
                return Err(unsupported(format!(
                    "rollup `{}` reads `{input}`, which this job does not compute",
                    r.name
                )));
            }
        }
        let rollup_outputs: Vec<StreamRef> = job
            .rollups
            .iter()
            .map(|r| StreamRef {
                node: r.name.clone(),
                port: r.name.clone(),
            })
            .collect();
        producible.extend(rollup_outputs.iter().cloned());
        let mut targets: BTreeMap<StreamRef, Vec<TableTarget>> = BTreeMap::new();
        for sink in &job.sinks {
            if let Some(input) = sink.from.iter().find(|i| !producible.contains(i)) {
                let list: Vec<String> = producible.iter().map(ToString::to_string).collect();
                return Err(unsupported(format!(
                    "sink `{}` reads `{input}`, which this version cannot write yet (it can write: {})",
                    sink.name,
                    list.join(", ")
                )));
            }
            let kafka = match &sink.kind {
                SinkKind::Kafka(k) => Some((
                    Arc::new(k.clone()),
                    Arc::new(Mutex::new(None)),
                    sink.from
                        .iter()
                        .map(|i| k.topic_of(&i.port))
                        .collect::<Vec<_>>(),
                )),
                SinkKind::Parquet(_) | SinkKind::ClickHouse(_) => None,
            };
            let clickhouse = match &sink.kind {
                SinkKind::ClickHouse(c) => {
                    let mut tables = Vec::with_capacity(sink.from.len());
                    for input in &sink.from {
                        // A rollup's one output is named after it.
                        let rollup = job
                            .rollups
                            .iter()
                            .find(|r| r.name == input.node && r.name == input.port);
                        let table = match rollup {
                            Some(r) => SinkTable::rollup(&r.name, &r.schema, &r.key).map_err(|e| {
                                format!(
                                    "sink `{}` cannot write rollup `{}`: {e}",
                                    sink.name, r.name
                                )
                            }),
                            None => SinkTable::builtin(&input.port)
                                .map_err(|e| format!("sink `{}`: {e}", sink.name)),
                        };
                        tables.push(table.map_err(unsupported)?);
                    }
                    Some((
                        Arc::new(c.as_ref().clone()),
                        ClickHouseTarget::new_shared(),
                        Arc::new(tables),
                    ))
                }
                SinkKind::Parquet(_) | SinkKind::Kafka(_) => None,
            };
            let parquet = match &sink.kind {
                SinkKind::Parquet(cfg) => cfg.clone(),
                SinkKind::Kafka(_) | SinkKind::ClickHouse(_) => ParquetSinkConfig::default(),
            };
            for input in &sink.from {
                targets.entry(input.clone()).or_default().push(TableTarget {
                    node: input.node.clone(),
                    sink: sink.name.clone(),
                    table: input.port.clone(),
                    dir: if kafka.is_some() || clickhouse.is_some() {
                        PathBuf::new()
                    } else {
                        parquet.dir(output_dir)
                    },
                    config: parquet.clone(),
                    kafka: kafka
                        .as_ref()
                        .map(|(c, p, _)| KafkaTarget::new(c.clone(), &input.port, p.clone())),
                    clickhouse: clickhouse.as_ref().map(|(c, shared, outputs)| {
                        ClickHouseTarget::new(
                            c.clone(),
                            &sink.name,
                            &input.port,
                            outputs.clone(),
                            shared.clone(),
                        )
                    }),
                    sink_topics: kafka.as_ref().map(|k| k.2.clone()).unwrap_or_default(),
                    part_base: 0,
                });
            }
        }
        let mut seen: BTreeMap<(PathBuf, String), &str> = BTreeMap::new();
        for t in targets.values().flatten().filter(|t| t.is_parquet()) {
            if let Some(other) = seen.insert((t.dir.clone(), t.table.clone()), &t.sink)
                && other != t.sink
            {
                return Err(unsupported(format!(
                    "sinks `{other}` and `{}` both write table `{}` under `{}`; give them different `path`s \
                     (or do not pass --output-dir)",
                    t.sink,
                    t.table,
                    t.dir.display()
                )));
            }
        }
        Ok(Plan {
            job: job.name.clone(),
            sources,
            span_filter,
            session_window: session.name.clone(),
            session_config: session_config.clone(),
            tail_sampling,
            red_metrics,
            service_graph,
            rollups: job.rollups.clone(),
            shards: 1,
            targets,
        })
    }

    /// Targets of `node.port` (empty when nothing reads it).
    pub fn targets_of(&self, node: &str, port: &str) -> &[TableTarget] {
        self.targets
            .get(&StreamRef {
                node: node.to_owned(),
                port: port.to_owned(),
            })
            .map_or(&[], Vec::as_slice)
    }

    /// Numbers this run's Parquet parts from `base`.
    pub fn set_part_base(&mut self, base: usize) {
        for t in self.targets.values_mut().flatten() {
            t.part_base = base;
        }
    }

    /// Every target, for preparing directories.
    pub fn all_targets(&self) -> impl Iterator<Item = &TableTarget> {
        self.targets.values().flatten()
    }

    /// Dead-letter targets of any source.
    pub fn dead_letter_targets(&self) -> Vec<TableTarget> {
        self.targets
            .iter()
            .filter(|(k, _)| k.port == "dead_letters")
            .flat_map(|(_, v)| v.clone())
            .collect()
    }
}
