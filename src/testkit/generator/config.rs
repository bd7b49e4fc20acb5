//! Configuration of the built-in span generator.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use spanflow_operators::HumanDuration;

use crate::formats::InputFormat;

/// Configuration of the `generator` source and of `spanflow gen`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GeneratorConfig {
    /// Seed; the same seed and config always produce the same records, byte for byte.
    #[serde(default = "defaults::seed")]
    pub seed: u64,
    /// Number of traces to generate (the run is bounded).
    #[serde(default = "defaults::traces")]
    pub traces: u64,
    /// Trace starts per second of event time.
    #[serde(default = "defaults::traces_per_second")]
    pub traces_per_second: f64,
    /// Event time of the first trace, RFC 3339 (`2026-01-01T00:00:00Z`).
    #[serde(default = "defaults::start_time")]
    pub start_time: String,
    /// Number of services in the fleet (at least 20).
    #[serde(default = "defaults::services")]
    pub services: u32,
    /// Probability that a leaf call fails (the error propagates to its callers).
    #[serde(default = "defaults::error_rate")]
    pub error_rate: f64,
    /// Probability that a database call is slow (hundreds of ms).
    #[serde(default = "defaults::slow_db_rate")]
    pub slow_db_rate: f64,
    /// Fraction of traces that publish to the message queue (consumer spans arrive
    /// seconds later).
    #[serde(default = "defaults::async_fraction")]
    pub async_fraction: f64,
    /// Fraction of traces that are very long (minutes, hundreds of spans).
    #[serde(default = "defaults::long_trace_fraction")]
    pub long_trace_fraction: f64,
    /// Fraction of spans delivered `late_delay` after they ended (late data).
    #[serde(default)]
    pub late_fraction: f64,
    /// Delivery delay of late spans.
    #[serde(default = "defaults::late_delay")]
    pub late_delay: HumanDuration,
    /// Fraction of records replaced by undecodable bytes (dead-letter demo).
    #[serde(default)]
    pub garbage_fraction: f64,
    /// Largest number of spans per OTLP request (record).
    #[serde(default = "defaults::spans_per_record")]
    pub spans_per_record: usize,
    /// Longest delay between a span's end and its export (SDK batching).
    #[serde(default = "defaults::export_delay")]
    pub export_delay: HumanDuration,
    /// Encoding of the records.
    #[serde(default = "defaults::format")]
    pub format: InputFormat,
}

mod defaults {
    use super::*;
    pub fn seed() -> u64 {
        42
    }
    pub fn traces() -> u64 {
        20_000
    }
    pub fn traces_per_second() -> f64 {
        200.0
    }
    pub fn start_time() -> String {
        "2026-01-01T00:00:00Z".to_owned()
    }
    pub fn services() -> u32 {
        24
    }
    pub fn error_rate() -> f64 {
        0.01
    }
    pub fn slow_db_rate() -> f64 {
        0.01
    }
    pub fn async_fraction() -> f64 {
        0.15
    }
    pub fn long_trace_fraction() -> f64 {
        0.001
    }
    pub fn late_delay() -> HumanDuration {
        HumanDuration::secs(600)
    }
    pub fn spans_per_record() -> usize {
        512
    }
    pub fn export_delay() -> HumanDuration {
        HumanDuration::secs(2)
    }
    pub fn format() -> crate::formats::InputFormat {
        crate::formats::InputFormat::OtlpProto
    }
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        GeneratorConfig {
            seed: defaults::seed(),
            traces: defaults::traces(),
            traces_per_second: defaults::traces_per_second(),
            start_time: defaults::start_time(),
            services: defaults::services(),
            error_rate: defaults::error_rate(),
            slow_db_rate: defaults::slow_db_rate(),
            async_fraction: defaults::async_fraction(),
            long_trace_fraction: defaults::long_trace_fraction(),
            late_fraction: 0.0,
            late_delay: defaults::late_delay(),
            garbage_fraction: 0.0,
            spans_per_record: defaults::spans_per_record(),
            export_delay: defaults::export_delay(),
            format: defaults::format(),
        }
    }
}

impl GeneratorConfig {
    /// Checks the values serde cannot; returns every problem found.
    pub fn validate(&self) -> Vec<spanflow_operators::ConfigIssue> {
        use spanflow_operators::ConfigIssue;
        let mut issues = Vec::new();
        if self.traces_per_second.is_nan() || self.traces_per_second <= 0.0 {
            issues.push(ConfigIssue::new(
                "traces_per_second",
                format!(
                    "must be greater than zero, found {}",
                    self.traces_per_second
                ),
            ));
        }
        if self.services < 20 {
            issues.push(ConfigIssue::new(
                "services",
                format!("must be at least 20, found {}", self.services),
            ));
        }
        if humantime::parse_rfc3339(&self.start_time).is_err() {
            issues.push(ConfigIssue::new(
                "start_time",
                format!(
                    "must be an RFC 3339 time like `2026-01-01T00:00:00Z`, found `{}`",
                    self.start_time
                ),
            ));
        }
        for (key, v) in [
            ("error_rate", self.error_rate),
            ("slow_db_rate", self.slow_db_rate),
            ("async_fraction", self.async_fraction),
            ("long_trace_fraction", self.long_trace_fraction),
            ("late_fraction", self.late_fraction),
            ("garbage_fraction", self.garbage_fraction),
        ] {
            if !(0.0..=1.0).contains(&v) {
                issues.push(ConfigIssue::new(
                    key,
                    format!("must be between 0 and 1, found {v}"),
                ));
            }
        }
        if self.spans_per_record == 0 {
            issues.push(ConfigIssue::new(
                "spans_per_record",
                "must be at least 1, found 0",
            ));
        }
        if self.traces_per_second.is_infinite() {
            issues.push(ConfigIssue::new(
                "traces_per_second",
                "must be finite, found infinity",
            ));
        } else if self.traces_per_second > 0.0
            && self.traces as f64 / self.traces_per_second > MAX_RUN_SECS
        {
            issues.push(ConfigIssue::new(
                "traces",
                format!(
                    "{} traces at {} per second would span more than 100 years of event time",
                    self.traces, self.traces_per_second
                ),
            ));
        }
        if self.services > MAX_SERVICES {
            issues.push(ConfigIssue::new(
                "services",
                format!("must be at most {MAX_SERVICES}, found {}", self.services),
            ));
        }
        if humantime::parse_rfc3339(&self.start_time).is_ok()
            && start_time_ns(&self.start_time).is_none()
        {
            issues.push(ConfigIssue::new(
                "start_time",
                format!(
                    "must be between 1970-01-01T00:00:00Z and 2200-01-01T00:00:00Z (unix nanoseconds must fit 64 bits), found `{}`",
                    self.start_time
                ),
            ));
        }
        issues
    }
}

/// Largest fleet: the topology is built eagerly and each service gets its own
/// resources, so an absurd value would only burn memory.
pub(super) const MAX_SERVICES: u32 = 10_000;

/// Longest run in event time (100 years): with the latest start it keeps every
/// timestamp inside a u64 of unix nanoseconds.
const MAX_RUN_SECS: f64 = 100.0 * 365.25 * 86_400.0;

/// Latest accepted start (2200-01-01T00:00:00Z) in unix seconds: later times plus
/// hours of generated traffic and delays would overflow unix nanoseconds in a u64.
const LATEST_START_SECS: u64 = 7_258_118_400;

/// `start_time` in unix nanoseconds; `None` when it does not parse or is outside
/// 1970..2200.
pub(super) fn start_time_ns(start_time: &str) -> Option<u64> {
    let t = humantime::parse_rfc3339(start_time).ok()?;
    let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
    if d.as_secs() >= LATEST_START_SECS {
        return None;
    }
    u64::try_from(d.as_nanos()).ok()
}
