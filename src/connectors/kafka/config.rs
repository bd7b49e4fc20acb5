//! Job-file settings of the Kafka source and sink.

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use spanflow_operators::ConfigIssue;

use crate::formats::InputFormat;
use crate::runtime::io::ConnectorError;

/// Configuration of the `kafka` source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceConfig {
    /// Bootstrap servers, `host:port[,host:port...]`.
    pub brokers: String,
    /// Topics to consume; every partition of each is one split with its own watermark.
    pub topics: Vec<String>,
    /// Consumer group. Offsets are committed to it when the run has processed them
    /// completely (at the end of a bounded run or at a stop), never before.
    pub group_id: String,
    /// Record format: `otlp_proto` (the Collector's Kafka exporter default), `otlp_json`
    /// or `avro` (schemas/avro/otlp_span_batch.avsc, single-object encoding).
    #[serde(default = "default_format")]
    pub format: InputFormat,
    /// Where to start in each partition: `committed` (the group's offsets, else
    /// `on_no_committed`), `earliest`, `latest`, or an RFC 3339 time such as
    /// `2026-11-21T10:00:00Z` (the first record whose Kafka timestamp is at or after it).
    #[serde(default = "default_start")]
    pub start: String,
    /// Where `start: committed` begins in a partition the group has no offset for:
    /// `earliest` or `latest`.
    #[serde(default = "default_on_no_committed")]
    pub on_no_committed: String,
    /// Optional end, which makes the run bounded: `latest` (the partitions' ends when the
    /// run starts) or an RFC 3339 time (stop before the first record at or after it).
    /// Without it the source runs until stopped.
    #[serde(default)]
    pub end: Option<String>,
    /// Optional end offsets (exclusive) per topic and partition, e.g.
    /// `{otlp_spans: {0: 1200, 1: 1180}}`; they make the run bounded and override `end`
    /// for the partitions they list (a partition not listed ends where `end` says, or
    /// at its end offset when the run started).
    #[serde(default)]
    pub end_offsets: BTreeMap<String, BTreeMap<i32, i64>>,
    /// Extra librdkafka consumer settings (`fetch.max.bytes`, `security.protocol`, ...).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// The topics are not partitioned by trace id: a job run as a group of instances
    /// (`--instance`) first re-keys the spans by trace id into an internal topic, which
    /// its analytics read (README "Running a group of instances").
    #[serde(default)]
    pub repartition: Option<RepartitionConfig>,
}

/// The repartition stage of a Kafka source whose topics are not partitioned by trace id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RepartitionConfig {
    /// The internal topic (created when missing); default `<group_id>.by-trace`.
    #[serde(default)]
    pub topic: Option<String>,
    /// Partitions of the internal topic when spanflow creates it; default: those of the
    /// first input topic.
    #[serde(default)]
    pub partitions: Option<u16>,
    /// The analytics stage's consumer group; default `<group_id>.analytics`.
    #[serde(default)]
    pub group_id: Option<String>,
}

impl KafkaSourceConfig {
    /// The internal topic of the repartition stage, if the source has one.
    pub fn repartition_topic(&self) -> Option<String> {
        let r = self.repartition.as_ref()?;
        Some(
            r.topic
                .clone()
                .unwrap_or_else(|| format!("{}.by-trace", self.group_id)),
        )
    }

    /// The source the analytics stage of a repartitioned source reads: the internal
    /// topic, in a consumer group of its own, from its start.
    pub fn analytics_source(&self) -> Option<KafkaSourceConfig> {
        let topic = self.repartition_topic()?;
        let r = self.repartition.as_ref()?;
        Some(KafkaSourceConfig {
            topics: vec![topic],
            group_id: r
                .group_id
                .clone()
                .unwrap_or_else(|| format!("{}.analytics", self.group_id)),
            format: InputFormat::OtlpProto,
            start: "committed".into(),
            on_no_committed: "earliest".into(),
            end: None,
            end_offsets: BTreeMap::new(),
            repartition: None,
            ..self.clone()
        })
    }
}

fn default_format() -> InputFormat {
    InputFormat::OtlpProto
}

fn default_start() -> String {
    "committed".into()
}

fn default_on_no_committed() -> String {
    "earliest".into()
}

/// Where a source starts reading a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartPosition {
    /// The group's committed offset, else earliest (`true`) or latest (`false`).
    Committed {
        /// Fallback when the group has no offset.
        earliest_fallback: bool,
    },
    /// The first offset still in the log.
    Earliest,
    /// The end of the log: only new records.
    Latest,
    /// The first record with a timestamp at or after this time (unix ms).
    Timestamp(i64),
}

/// Where a bounded source stops reading a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndPosition {
    /// The partition's end offset when the run started.
    Latest,
    /// Before the first record with a timestamp at or after this time (unix ms).
    Timestamp(i64),
}

/// Parses an RFC 3339 time (`2026-11-21T10:00:00Z`, fractions allowed) into unix ms.
pub fn parse_time(s: &str) -> Result<i64, ConnectorError> {
    let t = humantime::parse_rfc3339_weak(s).map_err(|e| {
        ConnectorError::user(format!(
            "`{s}` is not an RFC 3339 time such as 2026-11-21T10:00:00Z ({e})"
        ))
    })?;
    let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    i64::try_from(d.as_millis())
        .map_err(|_| ConnectorError::user(format!("`{s}` is too far in the future")))
}

/// Renders unix ms as RFC 3339, for messages.
pub(crate) fn format_time(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(t).to_string()
}

impl KafkaSourceConfig {
    /// Checks the values serde cannot; returns every problem found.
    pub fn validate(&self) -> Vec<ConfigIssue> {
        let mut issues = Vec::new();
        if self.brokers.trim().is_empty() {
            issues.push(ConfigIssue::new("brokers", "must name at least one broker"));
        }
        if self.topics.is_empty() {
            issues.push(ConfigIssue::new("topics", "must list at least one topic"));
        }
        for (i, t) in self.topics.iter().enumerate() {
            if let Err(e) = check_topic_name(t) {
                issues.push(ConfigIssue::new(&format!("topics.{i}"), e));
            }
        }
        if self.group_id.trim().is_empty() {
            issues.push(ConfigIssue::new("group_id", "must not be empty"));
        }
        if let Err(e) = self.start_position() {
            issues.push(ConfigIssue::new("start", e.message));
        }
        if !matches!(self.on_no_committed.as_str(), "earliest" | "latest") {
            issues.push(ConfigIssue::new(
                "on_no_committed",
                format!(
                    "must be `earliest` or `latest`, found `{}`",
                    self.on_no_committed
                ),
            ));
        }
        match self.end_position() {
            Err(e) => issues.push(ConfigIssue::new("end", e.message)),
            Ok(Some(EndPosition::Timestamp(end))) => {
                if let Ok(StartPosition::Timestamp(start)) = self.start_position()
                    && start >= end
                {
                    issues.push(ConfigIssue::new(
                        "end",
                        format!(
                            "must be after `start` ({} is not after {})",
                            format_time(end),
                            format_time(start)
                        ),
                    ));
                }
            }
            Ok(_) => {}
        }
        for (topic, parts) in &self.end_offsets {
            if !self.topics.contains(topic) {
                issues.push(ConfigIssue::new(
                    &format!("end_offsets.{topic}"),
                    format!("names a topic not in `topics` ({})", self.topics.join(", ")),
                ));
            }
            for (p, o) in parts {
                if *p < 0 || *o < 0 {
                    issues.push(ConfigIssue::new(
                        &format!("end_offsets.{topic}.{p}"),
                        format!("partitions and offsets are 0 or more, found {p}: {o}"),
                    ));
                }
            }
        }
        if let Some(r) = &self.repartition {
            if self.format != InputFormat::OtlpProto {
                issues.push(ConfigIssue::new(
                    "repartition",
                    "re-keys OTLP protobuf records (`format: otlp_proto`) only",
                ));
            }
            if self.end.is_some() || !self.end_offsets.is_empty() {
                issues.push(ConfigIssue::new(
                    "repartition",
                    "runs on an unbounded source only (no `end` or `end_offsets`): to finish \
                     a repartitioned job, run it bounded on the internal topic",
                ));
            }
            if matches!(self.start_position(), Ok(StartPosition::Timestamp(_))) {
                issues.push(ConfigIssue::new(
                    "repartition",
                    "starts from `committed`, `earliest` or `latest`, not from a time",
                ));
            }
            if let Some(t) = &r.topic
                && let Err(e) = check_topic_name(t)
            {
                issues.push(ConfigIssue::new("repartition.topic", e));
            }
            if let Some(t) = self.repartition_topic()
                && self.topics.contains(&t)
            {
                issues.push(ConfigIssue::new(
                    "repartition.topic",
                    format!("`{t}` is one of the source's own topics"),
                ));
            }
            if r.partitions == Some(0) {
                issues.push(ConfigIssue::new(
                    "repartition.partitions",
                    "must be at least 1",
                ));
            }
        }
        for key in self.properties.keys() {
            if RESERVED_CONSUMER_KEYS.contains(&key.as_str()) {
                issues.push(ConfigIssue::new(
                    &format!("properties.{key}"),
                    "is set by spanflow (use the source's own keys: brokers, group_id, start)",
                ));
            }
        }
        issues
    }

    /// The parsed `start`.
    pub fn start_position(&self) -> Result<StartPosition, ConnectorError> {
        Ok(match self.start.as_str() {
            "committed" => StartPosition::Committed {
                earliest_fallback: self.on_no_committed != "latest",
            },
            "earliest" => StartPosition::Earliest,
            "latest" => StartPosition::Latest,
            other => StartPosition::Timestamp(parse_time(other).map_err(|e| {
                e.context("must be committed, earliest, latest or an RFC 3339 time")
            })?),
        })
    }

    /// The parsed `end`, if any.
    pub fn end_position(&self) -> Result<Option<EndPosition>, ConnectorError> {
        Ok(match self.end.as_deref() {
            None => None,
            Some("latest") => Some(EndPosition::Latest),
            Some(other) => {
                Some(EndPosition::Timestamp(parse_time(other).map_err(|e| {
                    e.context("must be `latest` or an RFC 3339 time")
                })?))
            }
        })
    }
}

/// librdkafka settings the source manages itself.
const RESERVED_CONSUMER_KEYS: &[&str] = &[
    "bootstrap.servers",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
];

fn check_topic_name(t: &str) -> Result<(), String> {
    let ok = !t.is_empty()
        && t.len() <= 249
        && t != "."
        && t != ".."
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{t}` is not a valid topic name (1-249 of [A-Za-z0-9._-], not `.` or `..`)"
        ))
    }
}

/// Record format of a Kafka sink table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OutputFormat {
    /// Avro single-object encoding with the table's schema from schemas/avro.
    Avro,
    /// One JSON object per record (ids as lowercase hex).
    Json,
    /// `ExportTraceServiceRequest` protobuf, one per trace (only `spans` and
    /// `late_spans`).
    OtlpProto,
}

impl OutputFormat {
    /// snake_case name, as in job files.
    pub fn as_str(self) -> &'static str {
        match self {
            OutputFormat::Avro => "avro",
            OutputFormat::Json => "json",
            OutputFormat::OtlpProto => "otlp_proto",
        }
    }
}

/// Configuration of the `kafka` sink.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
    /// Bootstrap servers, `host:port[,host:port...]`.
    pub brokers: String,
    /// Topic of each table not listed in `topics`: `<topic_prefix><table>`.
    #[serde(default = "default_topic_prefix")]
    pub topic_prefix: String,
    /// Topic per table, e.g. `{red_metrics: metrics.red}`.
    #[serde(default)]
    pub topics: BTreeMap<String, String>,
    /// Record format of every table not listed in `formats`.
    #[serde(default = "default_output_format")]
    pub format: OutputFormat,
    /// Record format per table, e.g. `{spans: otlp_proto}`.
    #[serde(default)]
    pub formats: BTreeMap<String, OutputFormat>,
    /// Create missing topics at start with this many partitions (0: do not create).
    #[serde(default)]
    pub create_topics_partitions: i32,
    /// Extra librdkafka producer settings (`linger.ms`, `compression.type`, ...).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// Exactly-once for `read_committed` consumers: the sink's `transactional.id`.
    /// Rows are then held by the job until the checkpoint that covers them is durable,
    /// and produced in one transaction per table and checkpoint (without checkpoints,
    /// in one transaction at the end of the run). Needs a broker with transactions.
    #[serde(default)]
    pub transactional_id: Option<String>,
}

fn default_topic_prefix() -> String {
    "spanflow.".into()
}

fn default_output_format() -> OutputFormat {
    OutputFormat::Avro
}

/// librdkafka settings the sink manages itself.
const RESERVED_PRODUCER_KEYS: &[&str] = &[
    "bootstrap.servers",
    "enable.idempotence",
    "transactional.id",
];

impl KafkaSinkConfig {
    /// Checks the values serde cannot; returns every problem found.
    pub fn validate(&self) -> Vec<ConfigIssue> {
        let mut issues = Vec::new();
        if self.brokers.trim().is_empty() {
            issues.push(ConfigIssue::new("brokers", "must name at least one broker"));
        }
        for (table, topic) in &self.topics {
            if let Err(e) = check_topic_name(topic) {
                issues.push(ConfigIssue::new(&format!("topics.{table}"), e));
            }
        }
        if self.create_topics_partitions < 0 {
            issues.push(ConfigIssue::new(
                "create_topics_partitions",
                format!("must be 0 or more, found {}", self.create_topics_partitions),
            ));
        }
        for (table, f) in &self.formats {
            if *f == OutputFormat::OtlpProto && !matches!(table.as_str(), "spans" | "late_spans") {
                issues.push(ConfigIssue::new(
                    &format!("formats.{table}"),
                    "otlp_proto is only for span tables (`spans`, `late_spans`)",
                ));
            }
        }
        if self.format == OutputFormat::OtlpProto {
            issues.push(ConfigIssue::new(
                "format",
                "otlp_proto is only for span tables: set it per table in `formats`",
            ));
        }
        for key in self.properties.keys() {
            if RESERVED_PRODUCER_KEYS.contains(&key.as_str()) {
                issues.push(ConfigIssue::new(
                    &format!("properties.{key}"),
                    "is set by spanflow (the producer is always idempotent; set \
                     `transactional_id` for transactions)",
                ));
            }
        }
        if self
            .transactional_id
            .as_ref()
            .is_some_and(|t| t.trim().is_empty())
        {
            issues.push(ConfigIssue::new(
                "transactional_id",
                "must not be empty (leave it out for an idempotent producer)",
            ));
        }
        issues
    }

    /// The topic of `table`.
    pub fn topic_of(&self, table: &str) -> String {
        self.topics
            .get(table)
            .cloned()
            .unwrap_or_else(|| format!("{}{table}", self.topic_prefix))
    }

    /// The record format of `table`.
    pub fn format_of(&self, table: &str) -> OutputFormat {
        self.formats.get(table).copied().unwrap_or(self.format)
    }
}
