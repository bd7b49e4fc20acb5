//! `alerts`: rules over the metric series of closed intervals (a `red_metrics` or
//! `service_graph` output), evaluated in event time when an interval closes, so a replay
//! raises the same alerts as the live run did. An alert fires once its condition has
//! held for `for` (consecutive intervals) and resolves once it has not held for
//! `keep_firing_for`; its events carry the trace ids of the offending buckets'
//! exemplars of kept traces (errors first, then the slowest), the traces to open.
//!
//! The operator runs once, in the global stage, downstream of the metric operator's
//! merge side: it sees every series of an interval at once, whatever the parallelism.

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::EventTime;
use crate::config::{ConfigIssue, HumanDuration};
use crate::metrics::{
    ClosedInterval, ConnectionType, Metric, NodeKind, SeriesAgg, SeriesKey, quantile_from_buckets,
};
use crate::model::{CallType, Sym, TraceId};
use crate::operator::{
    Batch, DataKind, Emitter, Operator, OperatorError, PortSpec, Report, Scope, Shape, Table,
    decode_state, encode_state,
};

/// Configuration of `alerts` in a job file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    /// The rules; each is evaluated on every closed interval.
    pub rules: Vec<AlertRule>,
    /// Trace ids an alert event carries at most.
    #[serde(default = "default_max_traces")]
    pub max_traces: usize,
}

fn default_max_traces() -> usize {
    5
}

/// One alerting rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertRule {
    /// The rule's name (Alertmanager's `alertname`).
    pub name: String,
    /// The metric whose series the rule reads: `service_server` (entry operations),
    /// `service_call_db` (database calls), `service_node`, `service_relation`, ...
    pub metric: String,
    /// What is compared with the threshold (or give `query`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<AlertValue>,
    /// A SQL condition, for what the built-in values cannot say: one `SELECT` over the
    /// rows of each closed interval (the table `red_metrics`, or `service_relation` for
    /// a `service_relation` rule, as the sinks write them). Each result row is one
    /// group: its `value` column (a number) is compared with the threshold, its other
    /// columns are the group's labels and must be named as labels (`service`,
    /// `operation`, ...). The alert carries the exemplars of the rule's `metric` series
    /// with those labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// The condition holds when the value is above this: a number for rates and
    /// counts (`0.05` for 5%), a duration for latency quantiles (`500ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub above: Option<Threshold>,
    /// The condition holds when the value is below this (instead of `above`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub below: Option<Threshold>,
    /// How long the condition must hold, over consecutive intervals, before the alert
    /// fires (0: at the first interval where it holds).
    #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
    pub for_: Option<HumanDuration>,
    /// How long a firing alert stays firing once the condition no longer holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_firing_for: Option<HumanDuration>,
    /// An interval in which a group has fewer requests does not hold the condition, so
    /// idle series do not flap (default 1; 0 for a `query` rule, whose groups need not
    /// be series of `metric`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_requests: Option<u64>,
    /// Only series whose labels have these values, e.g. `{ call_type: http }`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub filter: BTreeMap<Label, String>,
    /// The labels an alert is per; series that differ only in other labels are summed.
    /// Without it, each series is its own group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_by: Option<Vec<Label>>,
    /// Labels added to every alert of the rule (e.g. `severity: page`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl AlertRule {
    /// What the rule compares: its `value`, or `sql` for a `query` rule.
    pub fn kind(&self) -> AlertValue {
        match (&self.query, self.value) {
            (Some(_), _) => AlertValue::Sql,
            (None, Some(v)) => v,
            // Refused by validation; the error rate is a harmless stand-in.
            (None, None) => AlertValue::ErrorRate,
        }
    }
}

/// A rule's SQL condition, run over the rows of each closed interval. This crate has
/// no SQL engine: the job's runtime plans the query and hands it to [`Alerts`].
pub trait Condition: Send + std::fmt::Debug {
    /// The labels of the groups the result rows are, in the order [`Condition::evaluate`]
    /// gives their values.
    fn labels(&self) -> &[Label];

    /// The result over one interval: per row, its label values and its `value` (NaN
    /// for NULL: such a row is no group).
    fn evaluate(
        &mut self,
        interval: &ClosedInterval,
        bounds: &[f64],
    ) -> Result<Vec<(Vec<String>, f64)>, OperatorError>;
}

/// What a rule compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AlertValue {
    /// Failed requests / requests (0..1).
    ErrorRate,
    /// Requests slower than the call type's slow threshold / requests (0..1).
    SlowRate,
    /// Requests per second over the interval.
    RequestRate,
    /// Requests in the interval.
    Requests,
    /// Failed requests in the interval.
    Errors,
    /// Median latency, from the histogram.
    P50,
    /// 90th percentile latency.
    P90,
    /// 95th percentile latency.
    P95,
    /// 99th percentile latency.
    P99,
    /// The `value` column of a rule's `query` (not written in job files: give `query`).
    #[serde(skip_deserializing)]
    #[schemars(skip)]
    Sql,
}

impl AlertValue {
    /// Name in job files and outputs.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertValue::ErrorRate => "error_rate",
            AlertValue::SlowRate => "slow_rate",
            AlertValue::RequestRate => "request_rate",
            AlertValue::Requests => "requests",
            AlertValue::Errors => "errors",
            AlertValue::P50 => "p50",
            AlertValue::P90 => "p90",
            AlertValue::P95 => "p95",
            AlertValue::P99 => "p99",
            AlertValue::Sql => "sql",
        }
    }

    /// The quantile of a latency value.
    fn quantile(self) -> Option<f64> {
        match self {
            AlertValue::P50 => Some(0.5),
            AlertValue::P90 => Some(0.9),
            AlertValue::P95 => Some(0.95),
            AlertValue::P99 => Some(0.99),
            _ => None,
        }
    }
}

/// A threshold: a number, or a duration (for latency quantiles).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Threshold {
    /// A rate (0..1), a count, or requests per second.
    Number(f64),
    /// A latency, e.g. `500ms`.
    Duration(HumanDuration),
}

/// A series label a rule filters or groups by. For `service_relation` series,
/// `service` is the edge's source and `peer` its target.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Label {
    /// The service (the caller, for edges).
    Service,
    /// The service instance.
    Instance,
    /// The normalized operation.
    Operation,
    /// The call type (`http`, `db`, ...).
    CallType,
    /// The called peer (the callee, for edges).
    Peer,
    /// The failure status of `_error` series.
    Status,
    /// The tenant (`red_metrics` with the `tenant` dimension).
    Tenant,
}

impl Label {
    /// Every label, in output order.
    pub const ALL: [Label; 7] = [
        Label::Service,
        Label::Instance,
        Label::Operation,
        Label::CallType,
        Label::Peer,
        Label::Status,
        Label::Tenant,
    ];

    /// Name in job files and outputs.
    pub fn as_str(self) -> &'static str {
        match self {
            Label::Service => "service",
            Label::Instance => "instance",
            Label::Operation => "operation",
            Label::CallType => "call_type",
            Label::Peer => "peer",
            Label::Status => "status",
            Label::Tenant => "tenant",
        }
    }

    /// The label's value in a series key (`""` when it has none).
    pub fn of(self, k: &SeriesKey) -> &'static str {
        match self {
            Label::Service => k.service.as_str(),
            Label::Instance => k.instance.as_str(),
            Label::Operation => k.operation.as_str(),
            Label::CallType => k.call_type.as_str(),
            Label::Peer => k.peer.as_str(),
            Label::Status => k.status.as_str(),
            Label::Tenant => k.tenant.as_str(),
        }
    }
}

/// The metric called `name`.
fn metric_by_name(name: &str) -> Option<Metric> {
    let mut all = vec![
        Metric::ServiceNode,
        Metric::ServiceServer,
        Metric::ServiceRelation,
    ];
    for ct in CallType::ALL {
        all.push(Metric::ServiceCall(ct));
        all.push(Metric::ServiceCallError(ct));
    }
    all.into_iter().find(|m| m.name() == name)
}

/// Every metric name series can have.
pub fn metric_names() -> Vec<&'static str> {
    let mut out = vec![
        Metric::ServiceNode.name(),
        Metric::ServiceServer.name(),
        Metric::ServiceRelation.name(),
    ];
    for ct in CallType::ALL {
        out.push(Metric::ServiceCall(ct).name());
        out.push(Metric::ServiceCallError(ct).name());
    }
    out
}

impl AlertsConfig {
    /// Checks the values serde cannot; returns every problem found.
    pub fn validate(&self) -> Vec<ConfigIssue> {
        let mut issues = Vec::new();
        if self.rules.is_empty() {
            issues.push(ConfigIssue::new("rules", "must list at least one rule"));
        }
        if self.max_traces == 0 {
            issues.push(ConfigIssue::new(
                "max_traces",
                "must be at least 1: an alert should carry a trace to open",
            ));
        }
        let metrics = metric_names();
        let mut names = std::collections::BTreeSet::new();
        for (i, r) in self.rules.iter().enumerate() {
            let at = |key: &str| format!("rules.{i}.{key}");
            if r.name.trim().is_empty() {
                issues.push(ConfigIssue::new(&at("name"), "must not be empty"));
            } else if !names.insert(r.name.as_str()) {
                issues.push(ConfigIssue::new(
                    &at("name"),
                    format!("two rules are called `{}`", r.name),
                ));
            }
            if !metrics.contains(&r.metric.as_str()) {
                issues.push(ConfigIssue::new(
                    &at("metric"),
                    format!(
                        "unknown metric `{}`; one of: {}",
                        r.metric,
                        metrics.join(", ")
                    ),
                ));
            }
            let kind = match (r.value, &r.query) {
                (Some(v), None) => v,
                (None, Some(q)) => {
                    if q.trim().is_empty() {
                        issues.push(ConfigIssue::new(&at("query"), "must not be empty"));
                    }
                    if r.group_by.is_some() {
                        issues.push(ConfigIssue::new(
                            &at("group_by"),
                            "a `query` rule's groups are its result's label columns; \
                             drop `group_by` and GROUP BY in the query",
                        ));
                    }
                    AlertValue::Sql
                }
                (Some(_), Some(_)) => {
                    issues.push(ConfigIssue::new(
                        &at("query"),
                        "give `value` or `query`, not both",
                    ));
                    continue;
                }
                (None, None) => {
                    issues.push(ConfigIssue::new(
                        &at("value"),
                        "a rule needs `value` (error_rate, slow_rate, request_rate, requests, \
                         errors, p50, p90, p95, p99) or a SQL `query`",
                    ));
                    continue;
                }
            };
            let (key, threshold) = match (&r.above, &r.below) {
                (Some(t), None) => ("above", t),
                (None, Some(t)) => ("below", t),
                (Some(_), Some(_)) => {
                    issues.push(ConfigIssue::new(
                        &at("below"),
                        "give `above` or `below`, not both",
                    ));
                    continue;
                }
                (None, None) => {
                    issues.push(ConfigIssue::new(
                        &at(if kind == AlertValue::Sql {
                            "query"
                        } else {
                            "value"
                        }),
                        format!(
                            "a rule needs a threshold: `above:` or `below:` (the {} it compares)",
                            if kind == AlertValue::Sql {
                                "query's `value` column"
                            } else {
                                kind.as_str()
                            }
                        ),
                    ));
                    continue;
                }
            };
            match (kind.quantile(), threshold) {
                _ if kind == AlertValue::Sql => {
                    if let Threshold::Number(n) = threshold
                        && !n.is_finite()
                    {
                        issues.push(ConfigIssue::new(
                            &at(key),
                            format!("must be a finite number, got {n}"),
                        ));
                    }
                }
                (Some(_), Threshold::Number(n)) => issues.push(ConfigIssue::new(
                    &at(key),
                    format!(
                        "{} is a latency: give a duration such as `500ms`, not `{n}`",
                        kind.as_str()
                    ),
                )),
                (None, Threshold::Duration(d)) => issues.push(ConfigIssue::new(
                    &at(key),
                    format!(
                        "{} is not a latency: give a number, not the duration `{}`",
                        kind.as_str(),
                        humantime::format_duration(d.0)
                    ),
                )),
                (None, Threshold::Number(n)) => {
                    let rate = matches!(kind, AlertValue::ErrorRate | AlertValue::SlowRate);
                    if !n.is_finite() || *n < 0.0 || (rate && *n > 1.0) {
                        issues.push(ConfigIssue::new(
                            &at(key),
                            if rate {
                                format!(
                                    "{} is a fraction between 0 and 1 (0.05 for 5%), got {n}",
                                    kind.as_str()
                                )
                            } else {
                                format!("must be a number of at least 0, got {n}")
                            },
                        ));
                    }
                }
                (Some(_), Threshold::Duration(_)) => {}
            }
            for l in r.labels.keys() {
                if l == "alertname" || Label::ALL.iter().any(|x| x.as_str() == l) {
                    issues.push(ConfigIssue::new(
                        &format!("rules.{i}.labels.{l}"),
                        format!("`{l}` is set by the alert itself"),
                    ));
                }
            }
        }
        issues
    }
}

/// Whether an alert event starts or ends an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AlertState {
    /// The condition has held for the rule's `for`.
    Firing,
    /// The condition has not held for the rule's `keep_firing_for`.
    Resolved,
}

impl AlertState {
    /// Name in outputs.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
        }
    }
}

/// An alert firing or resolving.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertEvent {
    /// The rule's name.
    pub rule: String,
    /// Firing or resolved.
    pub state: AlertState,
    /// The group's labels (a series key with the labels not grouped by left empty).
    pub key: SeriesKey,
    /// The labels the alert is per (every label without `group_by`).
    pub group: Vec<Label>,
    /// The rule's own labels.
    pub labels: Vec<(String, String)>,
    /// What the rule compares (`error_rate`, `p99`, ...).
    pub value_kind: AlertValue,
    /// Its value in the interval that decided the event (seconds for latencies).
    pub value: f64,
    /// The threshold (seconds for latencies).
    pub threshold: f64,
    /// `>` (above) or `<` (below).
    pub above: bool,
    /// Requests of the group in that interval.
    pub requests: u64,
    /// When the condition started to hold (start of the first interval), unix ns.
    pub starts_at_ns: EventTime,
    /// When a resolved alert ended, unix ns.
    pub ends_at_ns: Option<EventTime>,
    /// End of the interval that decided the event, unix ns.
    pub at_ns: EventTime,
    /// Traces that explain it (kept traces): the exemplars of the offending buckets,
    /// errors first, then the slowest.
    pub trace_ids: Vec<TraceId>,
}

impl AlertEvent {
    /// The value of label `l` (empty when the alert is not per `l`).
    pub fn label(&self, l: Label) -> &'static str {
        if self.group.contains(&l) {
            l.of(&self.key)
        } else {
            ""
        }
    }
}

/// Per-rule counts: alerts fired, and fired with at least one kept trace (the share of
/// alerts one can open a trace for).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertsMetrics {
    /// Per rule, in config order: (name, fired, fired with a trace, resolved).
    pub rules: Vec<RuleCounts>,
}

/// One rule's counts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleCounts {
    /// The rule's name.
    pub name: String,
    /// Alerts fired.
    pub fired: u64,
    /// Of those, alerts that carried at least one trace id.
    pub fired_with_trace: u64,
    /// Alerts resolved.
    pub resolved: u64,
}

impl AlertsMetrics {
    /// Alerts fired, over all rules.
    pub fn fired(&self) -> u64 {
        self.rules.iter().map(|r| r.fired).sum()
    }

    /// Alerts fired with a trace, over all rules.
    pub fn fired_with_trace(&self) -> u64 {
        self.rules.iter().map(|r| r.fired_with_trace).sum()
    }

    /// Adds another instance's counts (one instance runs; kept for the frame).
    pub fn merge(&mut self, o: &AlertsMetrics) {
        if self.rules.is_empty() {
            self.rules = o.rules.clone();
            return;
        }
        for (a, b) in self.rules.iter_mut().zip(&o.rules) {
            a.fired += b.fired;
            a.fired_with_trace += b.fired_with_trace;
            a.resolved += b.resolved;
        }
    }
}

/// A trace id candidate: errors first, then the slowest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
struct Candidate {
    error: bool,
    value_ns: u64,
    /// Ties go to the lower id, so the choice does not depend on arrival order.
    id: std::cmp::Reverse<TraceId>,
}

/// Where one group of one rule is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct GroupState {
    /// Start of the first of the consecutive intervals in which the condition held.
    since: EventTime,
    /// End of the last interval in which it held.
    last_held_end: EventTime,
    /// End of the last interval in which the group had requests.
    last_seen_end: EventTime,
    /// Firing (else pending).
    firing: bool,
    /// The value and requests of the last interval seen.
    value: f64,
    requests: u64,
    /// The best trace candidates so far, best first.
    traces: Vec<Candidate>,
}

/// What a snapshot keeps.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct State {
    groups: BTreeMap<(usize, SeriesKey), GroupState>,
    metrics: AlertsMetrics,
    /// Length of the input's intervals (learned from the first one).
    grain: EventTime,
}

/// A rule, compiled.
#[derive(Debug)]
struct Rule {
    config: AlertRule,
    kind: AlertValue,
    /// A `query` rule's condition, once the runtime gave it.
    condition: Option<Box<dyn Condition>>,
    min_requests: u64,
    filter: Vec<(Label, Sym)>,
    group: Option<Vec<Label>>,
    threshold: f64,
    above: bool,
    for_ns: EventTime,
    keep_ns: EventTime,
    labels: Vec<(String, String)>,
}

impl Rule {
    fn new(config: &AlertRule) -> Rule {
        let (threshold, above) = match (&config.above, &config.below) {
            (Some(t), _) => (t, true),
            (None, Some(t)) => (t, false),
            (None, None) => (&Threshold::Number(f64::INFINITY), true),
        };
        let threshold = match threshold {
            Threshold::Number(n) => *n,
            Threshold::Duration(d) => d.0.as_secs_f64(),
        };
        let kind = config.kind();
        Rule {
            kind,
            condition: None,
            // A query's groups need not be series of the rule's metric.
            min_requests: config
                .min_requests
                .unwrap_or(u64::from(kind != AlertValue::Sql)),
            filter: config
                .filter
                .iter()
                .map(|(l, v)| (*l, Sym::new(v)))
                .collect(),
            group: config.group_by.clone(),
            threshold,
            above,
            for_ns: config.for_.map_or(0, |d| d.as_nanos()),
            keep_ns: config.keep_firing_for.map_or(0, |d| d.as_nanos()),
            labels: config
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            config: config.clone(),
        }
    }

    fn matches(&self, k: &SeriesKey) -> bool {
        k.metric.name() == self.config.metric
            && self.filter.iter().all(|(l, v)| l.of(k) == v.as_str())
    }

    /// The group a series belongs to: its key with the labels not grouped by emptied.
    fn group_of(&self, k: &SeriesKey) -> SeriesKey {
        let Some(by) = &self.group else {
            return *k;
        };
        let keep = |l: Label| by.contains(&l);
        let empty = Sym::empty();
        SeriesKey {
            service: if keep(Label::Service) {
                k.service
            } else {
                empty
            },
            instance: if keep(Label::Instance) {
                k.instance
            } else {
                empty
            },
            operation: if keep(Label::Operation) {
                k.operation
            } else {
                empty
            },
            call_type: if keep(Label::CallType) {
                k.call_type
            } else {
                CallType::Local
            },
            peer: if keep(Label::Peer) { k.peer } else { empty },
            status: if keep(Label::Status) { k.status } else { empty },
            tenant: if keep(Label::Tenant) { k.tenant } else { empty },
            ..*k
        }
    }

    /// The group of a query's result row with label values `values`.
    fn row_key(&self, labels: &[Label], values: &[String]) -> Result<SeriesKey, OperatorError> {
        let metric = metric_by_name(&self.config.metric).unwrap_or(Metric::ServiceServer);
        let mut k = SeriesKey::new(metric);
        for (l, v) in labels.iter().zip(values) {
            match l {
                Label::Service => k.service = Sym::new(v),
                Label::Instance => k.instance = Sym::new(v),
                Label::Operation => k.operation = Sym::new(v),
                Label::Peer => k.peer = Sym::new(v),
                Label::Status => k.status = Sym::new(v),
                Label::Tenant => k.tenant = Sym::new(v),
                Label::CallType => {
                    k.call_type = CallType::ALL
                        .into_iter()
                        .find(|c| c.as_str() == v)
                        .ok_or_else(|| {
                            OperatorError::Execution(format!(
                                "alert rule `{}`: its query's call_type `{v}` is none of {}",
                                self.config.name,
                                CallType::ALL.map(CallType::as_str).join(", ")
                            ))
                        })?;
                }
            }
        }
        Ok(k)
    }

    /// The group of a query rule that series `k` belongs to (as [`Rule::row_key`]
    /// builds it: the labels not in the result, and what is no label, are empty).
    fn query_group_of(&self, k: &SeriesKey) -> SeriesKey {
        SeriesKey {
            peer_kind: NodeKind::default(),
            connection: ConnectionType::default(),
            ..self.group_of(k)
        }
    }

    fn holds(&self, value: f64, requests: u64) -> bool {
        requests >= self.min_requests
            && if self.above {
                value > self.threshold
            } else {
                value < self.threshold
            }
    }
}

/// A group's sums over one interval.
#[derive(Debug, Default)]
struct Sums {
    requests: u64,
    errors: u64,
    slow: u64,
    counts: Vec<u64>,
    traces: Vec<Candidate>,
}

/// The running operator (one instance, in the global stage).
#[derive(Debug)]
pub struct Alerts {
    rules: Vec<Rule>,
    max_traces: usize,
    state: State,
    /// Histogram bucket bounds of the input, seconds.
    bounds: Arc<Vec<f64>>,
}

impl Alerts {
    /// Ports and tables of `alerts` nodes.
    pub const SHAPE: Shape = Shape {
        kind: "alerts",
        input: DataKind::Intervals,
        scope: Scope::Global,
        outputs: &[PortSpec {
            name: "alerts",
            data: DataKind::Alerts,
            table: Some(Table::Alerts),
            doc: "alert events (firing, resolved) with the trace ids of kept traces",
        }],
    };

    /// Builds the operator (validate the config first).
    pub fn new(config: &AlertsConfig) -> Self {
        Alerts {
            rules: config.rules.iter().map(Rule::new).collect(),
            max_traces: config.max_traces.max(1),
            state: State {
                metrics: AlertsMetrics {
                    rules: config
                        .rules
                        .iter()
                        .map(|r| RuleCounts {
                            name: r.name.clone(),
                            ..Default::default()
                        })
                        .collect(),
                },
                ..Default::default()
            },
            bounds: Arc::new(Vec::new()),
        }
    }

    /// Gives each `query` rule its condition, planned by `plan` (a failed plan is a
    /// condition whose evaluation fails: the job was validated, so it is a bug).
    pub fn with_conditions(
        mut self,
        mut plan: impl FnMut(&AlertRule) -> Box<dyn Condition>,
    ) -> Self {
        for r in &mut self.rules {
            if r.kind == AlertValue::Sql {
                let c = plan(&r.config);
                r.group = Some(c.labels().to_vec());
                r.condition = Some(c);
            }
        }
        self
    }

    /// Counts so far.
    pub fn metrics(&self) -> &AlertsMetrics {
        &self.state.metrics
    }

    /// The value a rule compares, from a group's sums over an interval of `len_ns`.
    fn value(&self, rule: &Rule, s: &Sums, len_ns: EventTime) -> f64 {
        let per = |n: u64| {
            if s.requests == 0 {
                0.0
            } else {
                n as f64 / s.requests as f64
            }
        };
        match rule.kind {
            AlertValue::ErrorRate => per(s.errors),
            AlertValue::SlowRate => per(s.slow),
            AlertValue::Requests => s.requests as f64,
            AlertValue::Errors => s.errors as f64,
            AlertValue::RequestRate => s.requests as f64 / (len_ns.max(1) as f64 / 1e9),
            v => v
                .quantile()
                .and_then(|q| quantile_from_buckets(&self.bounds, &s.counts, q))
                .unwrap_or(0.0),
        }
    }

    /// Evaluates every rule on one closed interval.
    fn interval(
        &mut self,
        ci: &ClosedInterval,
        out: &mut Vec<AlertEvent>,
    ) -> Result<(), OperatorError> {
        let len = ci.end_ns.saturating_sub(ci.start_ns);
        if self.state.grain == 0 {
            self.state.grain = len;
        }
        // Alerts whose resolution time passed before this interval: no interval in
        // between held their condition.
        self.resolve_until(ci.start_ns, out);
        for ri in 0..self.rules.len() {
            let groups = if self.rules[ri].kind == AlertValue::Sql {
                self.query_groups(ri, ci)?
            } else {
                let rule = &self.rules[ri];
                let mut sums: BTreeMap<SeriesKey, Sums> = BTreeMap::new();
                for (k, a) in &ci.series {
                    if rule.matches(k) {
                        add(sums.entry(rule.group_of(k)).or_default(), a);
                    }
                }
                sums.into_iter()
                    .map(|(k, s)| (k, (self.value(rule, &s, len), s)))
                    .collect()
            };
            // Groups with a state but no series in this interval did not hold.
            let idle: Vec<SeriesKey> = self
                .state
                .groups
                .keys()
                .filter(|(r, _)| *r == ri)
                .map(|(_, k)| *k)
                .filter(|k| !groups.contains_key(k))
                .collect();
            for (key, (value, sums)) in groups {
                let holds = self.rules[ri].holds(value, sums.requests);
                self.step(ri, key, ci, holds, value, sums, out);
            }
            for key in idle {
                self.step(ri, key, ci, false, 0.0, Sums::default(), out);
            }
        }
        Ok(())
    }

    /// A `query` rule's groups in interval `ci`: one per result row, with the sums of
    /// the rule's series that have its labels (their requests and exemplars).
    fn query_groups(
        &mut self,
        ri: usize,
        ci: &ClosedInterval,
    ) -> Result<BTreeMap<SeriesKey, (f64, Sums)>, OperatorError> {
        let rule = &mut self.rules[ri];
        let Some(condition) = rule.condition.as_mut() else {
            return Err(OperatorError::Internal(format!(
                "alert rule `{}` has a query but no SQL engine to run it",
                rule.config.name
            )));
        };
        let rows = condition.evaluate(ci, &self.bounds)?;
        let labels = condition.labels().to_vec();
        let rule = &self.rules[ri];
        let mut groups: BTreeMap<SeriesKey, (f64, Sums)> = BTreeMap::new();
        for (values, value) in rows {
            if value.is_nan() {
                continue;
            }
            let key = rule.row_key(&labels, &values)?;
            // Two rows for one group: the one further past the threshold, whatever
            // order the query returned them in.
            let g = groups.entry(key).or_insert((value, Sums::default()));
            g.0 = if rule.above {
                g.0.max(value)
            } else {
                g.0.min(value)
            };
        }
        for (k, a) in &ci.series {
            if rule.matches(k)
                && let Some(g) = groups.get_mut(&rule.query_group_of(k))
            {
                add(&mut g.1, a);
            }
        }
        Ok(groups)
    }

    /// One group of rule `ri` in interval `ci`.
    #[allow(clippy::too_many_arguments)]
    fn step(
        &mut self,
        ri: usize,
        key: SeriesKey,
        ci: &ClosedInterval,
        holds: bool,
        value: f64,
        sums: Sums,
        out: &mut Vec<AlertEvent>,
    ) {
        let max_traces = self.max_traces;
        let (for_ns, keep_ns) = (self.rules[ri].for_ns, self.rules[ri].keep_ns);
        let grain = self.state.grain.max(1);
        let entry = self.state.groups.get_mut(&(ri, key));
        match (entry, holds) {
            (None, false) => {}
            (None, true) => {
                let mut g = GroupState {
                    since: ci.start_ns,
                    last_held_end: ci.end_ns,
                    last_seen_end: ci.end_ns,
                    firing: false,
                    value,
                    requests: sums.requests,
                    traces: Vec::new(),
                };
                merge_traces(&mut g.traces, &sums.traces, max_traces);
                let fire = ci.end_ns.saturating_sub(g.since) >= for_ns;
                self.state.groups.insert((ri, key), g);
                if fire {
                    self.fire(ri, key, ci.end_ns, out);
                }
            }
            (Some(g), true) => {
                if !g.firing && g.last_held_end != ci.start_ns {
                    // Not consecutive: pending starts again.
                    g.since = ci.start_ns;
                    g.traces.clear();
                }
                g.last_held_end = ci.end_ns;
                g.last_seen_end = ci.end_ns;
                g.value = value;
                g.requests = sums.requests;
                merge_traces(&mut g.traces, &sums.traces, max_traces);
                if !g.firing && ci.end_ns.saturating_sub(g.since) >= for_ns {
                    self.fire(ri, key, ci.end_ns, out);
                }
            }
            (Some(g), false) => {
                g.value = value;
                g.requests = sums.requests;
                if sums.requests > 0 {
                    g.last_seen_end = ci.end_ns;
                }
                if !g.firing {
                    self.state.groups.remove(&(ri, key));
                } else if resolve_at(g.last_held_end, keep_ns, grain) <= ci.end_ns {
                    let at = resolve_at(g.last_held_end, keep_ns, grain);
                    self.resolve(ri, key, at, out);
                }
            }
        }
    }

    fn fire(&mut self, ri: usize, key: SeriesKey, at: EventTime, out: &mut Vec<AlertEvent>) {
        let Some(g) = self.state.groups.get_mut(&(ri, key)) else {
            return;
        };
        g.firing = true;
        let rule = &self.rules[ri];
        let e = event(rule, key, g, AlertState::Firing, at, None);
        if let Some(c) = self.state.metrics.rules.get_mut(ri) {
            c.fired += 1;
            c.fired_with_trace += u64::from(!e.trace_ids.is_empty());
        }
        out.push(e);
    }

    fn resolve(&mut self, ri: usize, key: SeriesKey, at: EventTime, out: &mut Vec<AlertEvent>) {
        let Some(g) = self.state.groups.remove(&(ri, key)) else {
            return;
        };
        let rule = &self.rules[ri];
        out.push(event(rule, key, &g, AlertState::Resolved, at, Some(at)));
        if let Some(c) = self.state.metrics.rules.get_mut(ri) {
            c.resolved += 1;
        }
    }

    /// Resolves the firing alerts whose resolution time is at or before `t` (no
    /// interval ending by then can still arrive, or the next one starts after it).
    fn resolve_until(&mut self, t: EventTime, out: &mut Vec<AlertEvent>) {
        let grain = self.state.grain.max(1);
        let due: Vec<((usize, SeriesKey), EventTime)> = self
            .state
            .groups
            .iter()
            .filter(|(_, g)| g.firing)
            .filter_map(|(&(ri, k), g)| {
                let keep = self.rules.get(ri).map_or(0, |r| r.keep_ns);
                let at = resolve_at(g.last_held_end, keep, grain);
                (at <= t).then_some(((ri, k), at))
            })
            .collect();
        // Pending alerts that saw no interval since are no longer consecutive; they
        // restart when they next hold (see `step`).
        for ((ri, k), at) in due {
            // No requests since it last held: the resolved value is that of no data,
            // as it is when an interval without the group comes.
            if let Some(g) = self.state.groups.get_mut(&(ri, k))
                && g.last_seen_end <= g.last_held_end
            {
                g.value = 0.0;
                g.requests = 0;
            }
            self.resolve(ri, k, at, out);
        }
    }
}

/// When a firing alert whose condition last held until `last_held_end` resolves if it
/// does not hold again: `keep_firing_for` later, on the interval grid, at least one
/// interval later.
fn resolve_at(last_held_end: EventTime, keep_ns: EventTime, grain: EventTime) -> EventTime {
    let intervals = keep_ns.div_ceil(grain).max(1);
    last_held_end.saturating_add(intervals.saturating_mul(grain))
}

fn add(g: &mut Sums, a: &SeriesAgg) {
    g.requests += a.requests;
    g.errors += a.errors;
    g.slow += a.slow;
    if g.counts.len() < a.counts.len() {
        g.counts.resize(a.counts.len(), 0);
    }
    for (c, n) in g.counts.iter_mut().zip(&a.counts) {
        *c += n;
    }
    for e in a.exemplars.iter().flatten() {
        // Only traces the sampler kept can be opened.
        if e.sampled {
            g.traces.push(Candidate {
                error: e.error,
                value_ns: e.value_ns,
                id: std::cmp::Reverse(e.trace_id),
            });
        }
    }
}

/// Keeps the best `max` distinct traces of `have` and `new`, best first.
fn merge_traces(have: &mut Vec<Candidate>, new: &[Candidate], max: usize) {
    have.extend_from_slice(new);
    have.sort_unstable_by(|a, b| b.cmp(a));
    let mut seen = std::collections::HashSet::new();
    have.retain(|c| seen.insert(c.id.0));
    have.truncate(max);
}

fn event(
    rule: &Rule,
    key: SeriesKey,
    g: &GroupState,
    state: AlertState,
    at: EventTime,
    ends_at: Option<EventTime>,
) -> AlertEvent {
    AlertEvent {
        rule: rule.config.name.clone(),
        state,
        key,
        group: rule.group.clone().unwrap_or_else(|| Label::ALL.to_vec()),
        labels: rule.labels.clone(),
        value_kind: rule.kind,
        value: g.value,
        threshold: rule.threshold,
        above: rule.above,
        requests: g.requests,
        starts_at_ns: g.since,
        ends_at_ns: ends_at,
        at_ns: at,
        trace_ids: g.traces.iter().map(|c| c.id.0).collect(),
    }
}

impl Operator for Alerts {
    fn process(
        &mut self,
        input: usize,
        batch: Batch,
        out: &mut Emitter,
    ) -> Result<(), OperatorError> {
        let Batch::Intervals(b) = batch else {
            return Err(OperatorError::unexpected("alerts", input, &batch));
        };
        if self.bounds.is_empty() {
            self.bounds = Arc::new(b.buckets.bounds_seconds());
        }
        let mut events = Vec::new();
        for ci in &b.intervals {
            self.interval(ci, &mut events)?;
        }
        out.emit(0, Batch::Alerts(events));
        Ok(())
    }

    fn on_watermark(
        &mut self,
        watermark: EventTime,
        out: &mut Emitter,
    ) -> Result<EventTime, OperatorError> {
        // Every interval ending at or before the watermark has arrived: an alert due
        // to resolve by then resolves now, even when no later interval comes.
        let mut events = Vec::new();
        if watermark != crate::WATERMARK_END {
            self.resolve_until(watermark, &mut events);
        }
        out.emit(0, Batch::Alerts(events));
        Ok(watermark)
    }

    fn snapshot(&self) -> Result<Vec<u8>, OperatorError> {
        encode_state(&(&self.state, self.bounds.as_ref()))
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), OperatorError> {
        let (s, bounds): (State, Vec<f64>) = decode_state(state)?;
        if s.metrics.rules.len() != self.rules.len() {
            return Err(OperatorError::State(format!(
                "the checkpoint has {} alert rules, the job {}",
                s.metrics.rules.len(),
                self.rules.len()
            )));
        }
        self.state = s;
        self.bounds = Arc::new(bounds);
        Ok(())
    }

    fn report(&self) -> Report {
        Report::Alerts(self.state.metrics.clone())
    }
}
