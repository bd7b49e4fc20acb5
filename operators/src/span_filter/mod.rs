//! `span_filter`: drops spans by service or name regex before windowing (filter
//! push-down), counting what it drops per rule.

use ahash::AHashMap;
use regex::Regex;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::ConfigIssue;
use crate::model::{Span, Sym};
use crate::operator::{
    Batch, DataKind, Emitter, Operator, OperatorError, PortSpec, Report, Scope, Shape, Table,
    decode_state, encode_state,
};

/// Configuration of `span_filter` in a job file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SpanFilterConfig {
    /// A span matching any rule is dropped.
    pub drop: Vec<SpanMatch>,
}

/// One rule; every pattern given must match (regexes, unanchored unless you anchor
/// them with `^...$`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SpanMatch {
    /// Regex on the service name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Regex on the span name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl SpanFilterConfig {
    /// Checks the values serde cannot; returns every problem found.
    pub fn validate(&self) -> Vec<ConfigIssue> {
        let mut issues = Vec::new();
        if self.drop.is_empty() {
            issues.push(ConfigIssue::new("drop", "must list at least one rule"));
        }
        for (i, rule) in self.drop.iter().enumerate() {
            if rule.service.is_none() && rule.name.is_none() {
                issues.push(ConfigIssue::new(
                    &format!("drop.{i}"),
                    "a rule needs `service` or `name` (an empty rule would drop every span)",
                ));
            }
            for (key, pattern) in [("service", &rule.service), ("name", &rule.name)] {
                if let Some(p) = pattern
                    && let Err(e) = Regex::new(p)
                {
                    let msg = e
                        .to_string()
                        .lines()
                        .last()
                        .unwrap_or("invalid")
                        .trim()
                        .to_owned();
                    issues.push(ConfigIssue::new(
                        &format!("drop.{i}.{key}"),
                        format!("invalid regex `{p}`: {msg}"),
                    ));
                }
            }
        }
        issues
    }
}

/// Counters of a span filter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpanFilterMetrics {
    /// Spans seen.
    pub spans_in: u64,
    /// Spans dropped, per rule (in config order).
    pub dropped_by_rule: Vec<u64>,
}

impl SpanFilterMetrics {
    /// Spans dropped by any rule.
    pub fn dropped(&self) -> u64 {
        self.dropped_by_rule.iter().sum()
    }

    /// Adds another instance's counters.
    pub fn merge(&mut self, o: &SpanFilterMetrics) {
        self.spans_in += o.spans_in;
        if self.dropped_by_rule.len() < o.dropped_by_rule.len() {
            self.dropped_by_rule.resize(o.dropped_by_rule.len(), 0);
        }
        for (a, b) in self.dropped_by_rule.iter_mut().zip(&o.dropped_by_rule) {
            *a += b;
        }
    }
}

/// The running filter.
#[derive(Debug)]
pub struct SpanFilter {
    /// Compiled rules; `None` for a rule with a pattern that does not compile.
    rules: Vec<Option<(Option<Regex>, Option<Regex>)>>,
    /// Decision per (service, name): the rule that drops it, if any. Names repeat, so
    /// the regexes run once per distinct pair.
    cache: AHashMap<(Sym, Sym), Option<usize>>,
    metrics: SpanFilterMetrics,
}

/// Distinct (service, name) pairs remembered.
const CACHE_LIMIT: usize = 1 << 16;

impl SpanFilter {
    /// Builds the filter; a rule with a pattern that does not compile (which `validate`
    /// reports) never matches.
    pub fn new(config: &SpanFilterConfig) -> Self {
        let compile = |p: &Option<String>| -> Result<Option<Regex>, regex::Error> {
            p.as_ref().map(|p| Regex::new(p)).transpose()
        };
        let rules: Vec<_> = config
            .drop
            .iter()
            .map(|r| Some((compile(&r.service).ok()?, compile(&r.name).ok()?)))
            .collect();
        SpanFilter {
            metrics: SpanFilterMetrics {
                spans_in: 0,
                dropped_by_rule: vec![0; rules.len()],
            },
            rules,
            cache: AHashMap::new(),
        }
    }

    /// Counters so far.
    pub fn metrics(&self) -> &SpanFilterMetrics {
        &self.metrics
    }

    fn rule_for(&mut self, s: &Span) -> Option<usize> {
        if let Some(r) = self.cache.get(&(s.service, s.name)) {
            return *r;
        }
        let hit = self.rules.iter().position(|rule| {
            let Some((svc, name)) = rule else {
                return false;
            };
            (svc.is_some() || name.is_some())
                && svc
                    .as_ref()
                    .is_none_or(|re| re.is_match(s.service.as_str()))
                && name.as_ref().is_none_or(|re| re.is_match(s.name.as_str()))
        });
        if self.cache.len() < CACHE_LIMIT {
            self.cache.insert((s.service, s.name), hit);
        }
        hit
    }

    /// Removes the spans a rule drops.
    pub fn apply(&mut self, spans: &mut Vec<Span>) {
        self.metrics.spans_in += spans.len() as u64;
        let mut keep = Vec::with_capacity(spans.len());
        for s in spans.drain(..) {
            match self.rule_for(&s) {
                Some(r) => self.metrics.dropped_by_rule[r] += 1,
                None => keep.push(s),
            }
        }
        *spans = keep;
    }
}

impl SpanFilter {
    /// Ports and tables of `span_filter` nodes.
    pub const SHAPE: Shape = Shape {
        kind: "span_filter",
        input: DataKind::Spans,
        scope: Scope::Shard,
        outputs: &[PortSpec {
            name: "spans",
            data: DataKind::Spans,
            table: Some(Table::Spans),
            doc: "the spans no rule dropped",
        }],
    };
}

impl Operator for SpanFilter {
    fn process(
        &mut self,
        input: usize,
        batch: Batch,
        out: &mut Emitter,
    ) -> Result<(), OperatorError> {
        let Batch::Spans(mut spans) = batch else {
            return Err(OperatorError::unexpected("span_filter", input, &batch));
        };
        self.apply(&mut spans);
        out.emit(0, Batch::Spans(spans));
        Ok(())
    }

    fn snapshot(&self) -> Result<Vec<u8>, OperatorError> {
        encode_state(&self.metrics)
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), OperatorError> {
        let m: SpanFilterMetrics = decode_state(state)?;
        if m.dropped_by_rule.len() != self.metrics.dropped_by_rule.len() {
            return Err(OperatorError::State(format!(
                "the checkpoint counts {} rules, the job has {}",
                m.dropped_by_rule.len(),
                self.metrics.dropped_by_rule.len()
            )));
        }
        self.metrics = m;
        Ok(())
    }

    fn report(&self) -> Report {
        Report::Filter(self.metrics.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(service: &str, name: &str) -> Span {
        Span {
            service: Sym::new(service),
            name: Sym::new(name),
            ..Default::default()
        }
    }

    #[test]
    fn drops_by_service_and_name_and_counts_per_rule() {
        let cfg = SpanFilterConfig {
            drop: vec![
                SpanMatch {
                    service: Some("^healthcheck$".into()),
                    name: None,
                },
                SpanMatch {
                    service: None,
                    name: Some("^GET /health".into()),
                },
                SpanMatch {
                    service: Some("^db-proxy$".into()),
                    name: Some("PING".into()),
                },
            ],
        };
        assert!(cfg.validate().is_empty());
        let mut f = SpanFilter::new(&cfg);
        let mut spans = vec![
            span("healthcheck", "x"),
            span("gateway", "GET /health/live"),
            span("gateway", "GET /api"),
            span("db-proxy", "PING"),
            span("db-proxy", "SELECT"),
            span("gateway", "GET /health/live"),
        ];
        f.apply(&mut spans);
        let left: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(left, vec!["GET /api", "SELECT"]);
        assert_eq!(f.metrics().dropped_by_rule, vec![1, 2, 1]);
        assert_eq!(f.metrics().spans_in, 6);
    }

    #[test]
    fn validate_reports_bad_regex_and_empty_rules() {
        let cfg = SpanFilterConfig {
            drop: vec![
                SpanMatch::default(),
                SpanMatch {
                    service: Some("(".into()),
                    name: None,
                },
            ],
        };
        let paths: Vec<String> = cfg.validate().iter().map(|i| i.path.join(".")).collect();
        assert_eq!(paths, vec!["drop.0", "drop.1.service"]);
        let mut f = SpanFilter::new(&cfg);
        let mut spans = vec![span("a", "b")];
        f.apply(&mut spans);
        assert_eq!(spans.len(), 1, "invalid patterns never match");
    }
}
