//! The job definition as the runtime sees it, after parsing and validation.
//!
//! A job is a DAG of named sources, operators and sinks. Edges are written as `from:`
//! lists on operators and sinks; each entry names a node (its default output) or
//! `node.output` for another output port:
//!
//! | node kind        | outputs (first = default)      | carries          |
//! |------------------|--------------------------------|------------------|
//! | any source       | `spans`, `dead_letters`        | spans / records  |
//! | `span_filter`    | `spans`                        | spans            |
//! | `session_window` | `traces`, `late_spans`         | traces / spans   |
//! | `tail_sampling`  | `traces`, `spans`, `kept`      | traces           |
//! | `red_metrics`    | `red_metrics`, `exemplars`     | metric rows      |
//! | `service_graph`  | `service_relation`             | metric rows      |
//!
//! A sink writes each stream it reads to a table named after the output port
//! (`traces`, `late_spans`, `dead_letters`, ...), or `<node>_<port>` when streams of
//! two nodes share the port's name ([`table_names`]). The operators' rows of this
//! table are their kinds' [`Shape`]s ([`OperatorKind::SHAPES`]).

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

use spanflow_operators::HumanDuration;
use spanflow_operators::alerts::{Alerts, AlertsConfig};
use spanflow_operators::operator::Shape;
use spanflow_operators::red_metrics::{RedMetrics, RedMetricsConfig};
use spanflow_operators::service_graph::{ServiceGraph, ServiceGraphConfig};
use spanflow_operators::session_window::{SessionWindow, SessionWindowConfig};
use spanflow_operators::span_filter::{SpanFilter, SpanFilterConfig};
use spanflow_operators::tail_sampling::{TailSampler, TailSamplingConfig};

use crate::connectors::clickhouse::ClickHouseSinkConfig;
use crate::connectors::file::FileSourceConfig;
use crate::connectors::kafka::{KafkaSinkConfig, KafkaSourceConfig};
use crate::connectors::otlp::OtlpSourceConfig;
use crate::connectors::parquet::ParquetSinkConfig;
use crate::runtime::NodeBuild;
use crate::testkit::generator::GeneratorConfig;

/// A validated job.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// Job name (`name:` or the file stem).
    pub name: String,
    /// The file it was loaded from.
    pub path: PathBuf,
    /// Shards; `None` means one per core.
    pub parallelism: Option<usize>,
    /// Sources, in file order.
    pub sources: Vec<SourceNode>,
    /// Operators, in file order.
    pub operators: Vec<OperatorNode>,
    /// Sinks, in file order.
    pub sinks: Vec<SinkNode>,
    /// SQL rollups over metric outputs, in file order.
    pub rollups: Vec<RollupNode>,
    /// Periodic checkpoints (`checkpoint:`), if configured.
    pub checkpoint: Option<CheckpointConfig>,
}

/// Periodic checkpoints (the `checkpoint:` key of a job): the job's state, source
/// positions and pending outputs are saved this often, and a run restarted after a
/// crash resumes from the newest complete one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckpointConfig {
    /// Time between checkpoints; `spanflow run --checkpoint-interval` overrides it.
    #[serde(default = "default_checkpoint_interval")]
    pub interval: HumanDuration,
    /// Directory holding them (relative paths are resolved against the working
    /// directory); `spanflow run --checkpoint-dir` overrides it.
    pub dir: PathBuf,
    /// How many complete checkpoints are kept, newest first.
    #[serde(default = "default_checkpoint_keep")]
    #[schemars(range(min = 1))]
    pub keep: usize,
}

fn default_checkpoint_interval() -> HumanDuration {
    HumanDuration::secs(10)
}

fn default_checkpoint_keep() -> usize {
    3
}

impl CheckpointConfig {
    /// Checks the values serde cannot; returns every problem found.
    pub fn validate(&self) -> Vec<spanflow_operators::ConfigIssue> {
        let mut issues = Vec::new();
        if self.interval.0 < std::time::Duration::from_millis(10) {
            issues.push(spanflow_operators::ConfigIssue::new(
                "interval",
                format!("must be at least 10ms, found {}", self.interval),
            ));
        }
        if self.keep == 0 {
            issues.push(spanflow_operators::ConfigIssue::new(
                "keep",
                "must be at least 1, found 0",
            ));
        }
        issues
    }
}

/// A reference to one output of a node: `node` or `node.port`, resolved.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamRef {
    /// Node name.
    pub node: String,
    /// Output port name (the default port filled in when omitted).
    pub port: String,
}

impl std::fmt::Display for StreamRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.node, self.port)
    }
}

/// A named source.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceNode {
    /// Its name in `sources:`.
    pub name: String,
    /// What it reads.
    pub kind: SourceKind,
    /// Event-time watermark settings.
    pub watermark: WatermarkConfig,
}

/// The source kinds (`type:` in the job file).
#[derive(Debug, Clone, PartialEq)]
pub enum SourceKind {
    /// `type: generator`: the built-in span generator.
    Generator(GeneratorConfig),
    /// `type: file`: OTLP files (protobuf length-delimited or JSON lines).
    File(FileSourceConfig),
    /// `type: kafka`: a consumer group reading OTLP (or Avro) records.
    Kafka(KafkaSourceConfig),
    /// `type: otlp`: an OTLP receiver (gRPC and HTTP) that exporters send to.
    Otlp(OtlpSourceConfig),
}

/// A named operator.
#[derive(Debug, Clone, PartialEq)]
pub struct OperatorNode {
    /// Its name in `operators:`.
    pub name: String,
    /// Input streams.
    pub from: Vec<StreamRef>,
    /// What it computes.
    pub kind: OperatorKind,
}

/// Input streams: `node`, `node.port`, or a list of them.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum FromFile {
    /// One stream.
    One(StreamName),
    /// Several streams.
    Many(Vec<StreamName>),
}

/// `node` (its default output) or `node.port`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct StreamName(
    #[schemars(regex(pattern = r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_]+)?$"))] pub String,
);

/// Declares the operator kinds, one line each: the variant, its config type, its
/// `type:` name and its [`Shape`], with the doc the job file's JSON schema shows. This
/// generates [`OperatorKind`], the job file's [`OperatorFile`], config parsing and
/// [`OperatorKind::SHAPES`]; [`OperatorKind::build`] says how the runtime runs each.
macro_rules! operator_kinds {
    ($( $(#[doc = $doc:literal])* $variant:ident($config:ty) = $name:literal, $shape:expr; )*) => {
        /// The operator kinds (`type:` in the job file).
        #[derive(Debug, Clone, PartialEq)]
        pub enum OperatorKind {
            $( #[doc = concat!("`type: ", $name, "`.")] $variant($config), )*
        }

        /// An operator.
        #[derive(Debug, Clone, Deserialize, JsonSchema)]
        #[serde(tag = "type")]
        pub enum OperatorFile {
            $(
                $(#[doc = $doc])*
                #[schemars(extend("additionalProperties" = false))]
                #[serde(rename = $name)]
                $variant {
                    /// Input streams.
                    from: FromFile,
                    /// The operator's settings.
                    #[serde(flatten)]
                    config: $config,
                },
            )*
        }

        impl OperatorKind {
            /// Parses the config of an operator of kind `type_name` (`None` for a name
            /// that is no operator kind; `Some(None)` when the config had problems,
            /// which `reader` reported).
            pub(crate) fn parse(
                type_name: &str,
                reader: &mut impl ConfigReader,
            ) -> Option<Option<OperatorKind>> {
                Some(match type_name {
                    $( $name => reader.read(<$config>::validate).map(OperatorKind::$variant), )*
                    _ => return None,
                })
            }

            /// Every operator kind's declaration (its `type:` name, what it reads, its
            /// output ports and their tables), read by the loader, the planner and the
            /// sinks.
            pub const SHAPES: &'static [Shape] = &[ $( $shape, )* ];

            /// Its `type:` name in the job file.
            pub fn type_name(&self) -> &'static str {
                match self {
                    $( OperatorKind::$variant(_) => $name, )*
                }
            }
        }
    };
}

operator_kinds! {
    /// Groups spans into traces. Reads span streams; outputs `traces` (default) and
    /// `late_spans`.
    SessionWindow(SessionWindowConfig) = "session_window", SessionWindow::SHAPE;
    /// Drops spans by service/name regex before windowing. Reads span streams; outputs
    /// `spans`.
    SpanFilter(SpanFilterConfig) = "span_filter", SpanFilter::SHAPE;
    /// Tail sampling on complete traces. Reads traces; outputs `traces` (all of them,
    /// marked `sampled`), `spans` (the spans of kept traces) and `kept` (the kept
    /// traces).
    TailSampling(TailSamplingConfig) = "tail_sampling", TailSampler::SHAPE;
    /// RED metrics with histograms and exemplars. Reads traces; outputs `red_metrics`
    /// (default) and `exemplars`.
    RedMetrics(RedMetricsConfig) = "red_metrics", RedMetrics::SHAPE;
    /// Service graph edges. Reads traces; outputs `service_relation`.
    ServiceGraph(ServiceGraphConfig) = "service_graph", ServiceGraph::SHAPE;
    /// Alerts on metric series, evaluated in event time. Reads a `red_metrics` or
    /// `service_graph` output; outputs `alerts` (firing and resolved events with the
    /// trace ids of kept traces).
    Alerts(AlertsConfig) = "alerts", Alerts::SHAPE;
}

/// The table each stream written by a sink lands in: named after its output port
/// (`traces`, `red_metrics`, a rollup's name), or `<node>_<port>` when several streams
/// written by the job's sinks share that port name (two `tail_sampling` nodes, say), so
/// that tables of two nodes of one kind never collide.
pub fn table_names<'a>(
    written: impl IntoIterator<Item = &'a StreamRef>,
) -> std::collections::BTreeMap<StreamRef, String> {
    let streams: std::collections::BTreeSet<&StreamRef> = written.into_iter().collect();
    let mut uses: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for s in &streams {
        *uses.entry(s.port.as_str()).or_default() += 1;
    }
    streams
        .into_iter()
        .map(|s| {
            let name = if uses.get(s.port.as_str()).copied().unwrap_or(0) > 1 {
                format!("{}_{}", s.node, s.port)
            } else {
                s.port.clone()
            };
            (s.clone(), name)
        })
        .collect()
}

/// Reads a component's config from the job file, reporting every problem with its
/// place (the loader implements it).
pub(crate) trait ConfigReader {
    /// The config, when it deserialized and `validate` found nothing wrong.
    fn read<T: serde::de::DeserializeOwned>(
        &mut self,
        validate: fn(&T) -> Vec<spanflow_operators::ConfigIssue>,
    ) -> Option<T>;
}

impl OperatorKind {
    /// Whether its merge side answers the shards (a sampler's rate limits): such a node
    /// holds traces back until the answer comes.
    pub fn answers_shards(&self) -> bool {
        matches!(self.build(false).1, NodeBuild::Feedback { .. })
    }

    /// The interval of an operator whose merge side closes windows of event time (the
    /// metric operators, whose outputs rollups read), ns.
    pub fn merged_interval(&self) -> Option<u64> {
        match self.build(false).1 {
            NodeBuild::Merged { grain, .. } => Some(grain),
            _ => None,
        }
    }

    /// The declaration of the kind named `type_name` in job files.
    pub fn shape_of(type_name: &str) -> Option<&'static Shape> {
        Self::SHAPES.iter().find(|s| s.kind == type_name)
    }

    /// The running operator of this kind: its shape and how the runtime builds its
    /// instances. `sampled_input`: the node reads a sampler's output (metric operators
    /// then keep exemplars of kept traces only).
    pub fn build(&self, sampled_input: bool) -> (Shape, NodeBuild) {
        match self {
            OperatorKind::SpanFilter(c) => {
                let c = c.clone();
                (
                    SpanFilter::SHAPE,
                    NodeBuild::Shard(Arc::new(move |_| Box::new(SpanFilter::new(&c)))),
                )
            }
            OperatorKind::SessionWindow(c) => {
                let c = c.clone();
                (
                    SessionWindow::SHAPE,
                    NodeBuild::Shard(Arc::new(move |_| Box::new(SessionWindow::new(c.clone())))),
                )
            }
            OperatorKind::TailSampling(c) => {
                let (p, m) = (c.clone(), c.clone());
                let probe = TailSampler::new(c.clone());
                let build = if probe.has_rate_limits() {
                    // Rate limits decide over all shards' traces (see `tail_sampling::limit`).
                    NodeBuild::Feedback {
                        grain: probe.rate_limit_grain(),
                        partial: Arc::new(move |_| Box::new(TailSampler::new(p.clone()))),
                        merge: Arc::new(move |_| {
                            Box::new(TailSampler::new(m.clone()).merge_operator())
                        }),
                    }
                } else {
                    NodeBuild::Shard(Arc::new(move |_| Box::new(TailSampler::new(p.clone()))))
                };
                (TailSampler::SHAPE, build)
            }
            OperatorKind::RedMetrics(c) => {
                let (p, m) = (c.clone(), c.clone());
                (
                    RedMetrics::SHAPE,
                    NodeBuild::Merged {
                        grain: c.interval.as_nanos(),
                        partial: Arc::new(move |_| Box::new(RedMetrics::new(p.clone()))),
                        merge: Arc::new(move |_| {
                            Box::new(RedMetrics::new(m.clone()).merge_operator(sampled_input))
                        }),
                    },
                )
            }
            OperatorKind::Alerts(c) => {
                let c = c.clone();
                (
                    Alerts::SHAPE,
                    NodeBuild::Global(Arc::new(move |_| {
                        Box::new(Alerts::new(&c).with_conditions(crate::sql::alert::condition))
                    })),
                )
            }
            OperatorKind::ServiceGraph(c) => {
                let (p, m) = (c.clone(), c.clone());
                (
                    ServiceGraph::SHAPE,
                    NodeBuild::Merged {
                        grain: c.interval.as_nanos(),
                        partial: Arc::new(move |_| Box::new(ServiceGraph::new(p.clone()))),
                        merge: Arc::new(move |_| {
                            Box::new(ServiceGraph::new(m.clone()).merge_operator(sampled_input))
                        }),
                    },
                )
            }
        }
    }
}

/// A named sink.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkNode {
    /// Its name in `sinks:`.
    pub name: String,
    /// Input streams; each becomes a table named after its port.
    pub from: Vec<StreamRef>,
    /// Where it writes.
    pub kind: SinkKind,
}

/// The sink kinds (`type:` in the job file).
#[derive(Debug, Clone, PartialEq)]
pub enum SinkKind {
    /// `type: parquet`.
    Parquet(ParquetSinkConfig),
    /// `type: kafka`: one topic per table.
    Kafka(KafkaSinkConfig),
    /// `type: clickhouse`: one table per output.
    ClickHouse(Box<ClickHouseSinkConfig>),
    /// `type: alertmanager`: an `alerts` node's events, POSTed to Alertmanager.
    Alertmanager(crate::connectors::alertmanager::AlertmanagerSinkConfig),
}

/// A rollup (`rollups:` in the job file): a SQL query run over the rows of each closed
/// window of its input metric streams; its result is an output named after it.
#[derive(Debug, Clone, PartialEq)]
pub struct RollupNode {
    /// Its name in `rollups:`, which is also its output's (and table's) name.
    pub name: String,
    /// Input metric streams; the query reads each as a table named after its port
    /// (`red_metrics`, `exemplars`, `service_relation`).
    pub from: Vec<StreamRef>,
    /// The SQL text.
    pub query: String,
    /// The file it came from (`sql:`), or `None` when inline (`query:`).
    pub query_file: Option<PathBuf>,
    /// Rows of upstream intervals that start in one window are queried together.
    pub window: HumanDuration,
    /// The result's schema, from planning the query at load time.
    pub schema: arrow::datatypes::SchemaRef,
    /// The result's natural key (its GROUP BY columns), when the plan shows one; keyed
    /// sinks (ClickHouse) order and de-duplicate by it.
    pub key: Vec<String>,
    /// The query as planned at load time, for the job's runs to take.
    pub planned: crate::sql::rollup::QueryPool,
}

/// The settings of a rollup as written in the job file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RollupConfig {
    /// A file holding the query (one `SELECT`), relative to the job file; e.g.
    /// `../sql/red_per_service_1m.sql`.
    #[serde(default)]
    pub sql: Option<PathBuf>,
    /// The query inline, instead of `sql`.
    #[serde(default)]
    pub query: Option<String>,
    /// How much event time one run of the query covers: every upstream interval that
    /// starts in the window is in its input. A multiple of the inputs' intervals;
    /// default: their interval (one run per closed interval).
    #[serde(default)]
    pub window: Option<HumanDuration>,
}

impl RollupConfig {
    /// Checks what does not need the query or the graph.
    pub fn validate(&self) -> Vec<spanflow_operators::ConfigIssue> {
        let mut issues = Vec::new();
        match (&self.sql, &self.query) {
            (Some(_), Some(_)) => issues.push(spanflow_operators::ConfigIssue {
                path: vec!["query".into()],
                message: "set either `sql` (a file) or `query` (inline), not both".into(),
            }),
            (None, None) => issues.push(spanflow_operators::ConfigIssue {
                path: vec![],
                message: "needs `sql: <file.sql>` or `query: <SELECT ...>`".into(),
            }),
            _ => {}
        }
        if self.window.is_some_and(|w| w.as_nanos() == 0) {
            issues.push(spanflow_operators::ConfigIssue {
                path: vec!["window".into()],
                message: "must be longer than 0s".into(),
            });
        }
        issues
    }
}

/// Event-time watermark settings of a source (`watermark:` key of any source).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WatermarkConfig {
    /// How far behind the largest event time seen in a split the watermark trails:
    /// spans up to this much out of order are not late.
    #[serde(default = "default_max_out_of_order")]
    pub max_out_of_order: HumanDuration,
    /// A split (partition, file) with no data for this long (wall clock) stops holding
    /// the watermark back.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: HumanDuration,
    /// Watermark alignment: a split (partition) whose watermark runs more than
    /// `max_drift` ahead of the slowest split still reading is paused until that one
    /// catches up, so that reading many partitions at different speeds does not
    /// buffer what the fast ones read while the watermark waits for the slow one.
    /// `false` reads every split as fast as it comes.
    #[serde(default = "default_align")]
    pub align: bool,
    /// How far ahead of the slowest split a split may run before alignment pauses it.
    /// Memory grows with it (about the input's event-time rate times this); a small
    /// one pauses and resumes partitions more often (cheap for a Kafka source, which
    /// then only stops reading the partition's queue of fetched records).
    #[serde(default = "default_max_drift")]
    pub max_drift: HumanDuration,
    /// Clock-skew guard: a span ending more than this ahead of its split's watermark,
    /// or of the wall clock, goes to the source's dead letters (`far_future`) instead
    /// of moving the watermark (which would make every later span of its split late).
    #[serde(default = "default_max_ahead")]
    pub max_ahead: HumanDuration,
    /// For a live source: the watermark is never further behind the wall clock than
    /// this, so windows close while no data arrives, and a span that ended longer ago
    /// is late. Default: 30 s for an `otlp` receiver (exporters send within seconds of
    /// a span's end), none for other sources, which may replay the past.
    #[serde(default)]
    pub wall_clock_lag: Option<HumanDuration>,
}

fn default_max_out_of_order() -> HumanDuration {
    HumanDuration::secs(5)
}

fn default_idle_timeout() -> HumanDuration {
    HumanDuration::secs(30)
}

fn default_align() -> bool {
    true
}

fn default_max_drift() -> HumanDuration {
    HumanDuration::secs(10)
}

fn default_max_ahead() -> HumanDuration {
    HumanDuration::secs(3600)
}

impl Default for WatermarkConfig {
    fn default() -> Self {
        WatermarkConfig {
            max_out_of_order: default_max_out_of_order(),
            idle_timeout: default_idle_timeout(),
            align: default_align(),
            max_drift: default_max_drift(),
            max_ahead: default_max_ahead(),
            wall_clock_lag: None,
        }
    }
}
