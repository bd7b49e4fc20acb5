//! Policies compiled for evaluation, and how each one matches a trace.

use std::fmt::Write as _;

use super::PolicyConfig;
use super::limit::LimitSpec;
use crate::model::{AttrValue, Attrs, CallType, Span};
use crate::session_window::ClosedTrace;

/// Outcome of one policy on one trace.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Eval {
    /// The policy keeps the trace.
    pub(super) matched: bool,
    /// Estimated probability that the policy matches this trace, over the hash of the
    /// trace id (probabilistic parts) and the rate limits' budgets, given everything
    /// else about the trace: exactly 1 or 0 for deterministic policies.
    pub(super) p: f64,
    /// `1 / p` when matched, computed where it is exact (`100 / percentage`,
    /// `offered / kept`), so the common single-policy adjusted counts are exact.
    pub(super) w: f64,
}

impl Eval {
    pub(super) fn certain(matched: bool) -> Self {
        Eval {
            matched,
            p: if matched { 1.0 } else { 0.0 },
            w: 1.0,
        }
    }
}

/// A policy ready to evaluate: thresholds in nanoseconds, the probabilistic cut as a
/// hash threshold, rate limits as an index into the limiter state.
#[derive(Debug, Clone)]
pub(super) enum Node {
    Error,
    SlowSpan {
        call_type: Option<CallType>,
        threshold_ns: u64,
    },
    TraceDuration {
        threshold_ns: u64,
    },
    Attribute(AttrMatcher),
    Probabilistic(Probabilistic),
    RateLimit(usize),
    And(Vec<Node>),
    Not(Box<Node>),
}

/// `probabilistic`: keep iff `hash64(trace_id) < threshold`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Probabilistic {
    /// `percentage / 100 * 2^64`; a u128 so that 100 % (2^64) keeps every hash.
    threshold: u128,
    p: f64,
    w: f64,
}

impl Probabilistic {
    fn new(percentage: f64) -> Self {
        // Out-of-range values are rejected by `validate`; clamp rather than panic.
        let pct = if percentage.is_nan() {
            0.0
        } else {
            percentage.clamp(0.0, 100.0)
        };
        // `as` saturates, so 100 % gives exactly 2^64 and tiny percentages round down.
        let threshold = (pct / 100.0 * 18_446_744_073_709_551_616.0) as u128;
        Probabilistic {
            threshold,
            p: pct / 100.0,
            w: if pct > 0.0 {
                100.0 / pct
            } else {
                f64::INFINITY
            },
        }
    }
}

/// Everything a policy evaluation reads.
pub(super) struct Ctx<'a> {
    pub(super) trace: &'a ClosedTrace,
    pub(super) hash: u64,
    /// The outcome of each rate limit for this trace, by limiter index (`None` for a
    /// limiter the trace was not offered to).
    pub(super) rate: &'a [Option<Eval>],
    pub(super) scratch: &'a mut String,
}

impl Node {
    /// Compiles `config`; `key` names it (and salts a rate limit's ranks).
    pub(super) fn compile(
        config: &PolicyConfig,
        key: &str,
        limiters: &mut Vec<(String, LimitSpec)>,
    ) -> Node {
        match config {
            PolicyConfig::Error { .. } => Node::Error,
            PolicyConfig::SlowSpan {
                call_type,
                threshold,
                ..
            } => Node::SlowSpan {
                call_type: *call_type,
                threshold_ns: threshold.as_nanos(),
            },
            PolicyConfig::TraceDuration { threshold, .. } => Node::TraceDuration {
                threshold_ns: threshold.as_nanos(),
            },
            PolicyConfig::EndpointRateLimit {
                traces_per_second, ..
            } => {
                let mut unique = key.to_owned();
                let mut n = 1;
                // Keys are unique when top-level names are (validated); stay correct
                // for an unvalidated config too.
                while limiters.iter().any(|(k, _)| *k == unique) {
                    n += 1;
                    unique = format!("{key}#{n}");
                }
                let spec = LimitSpec::new(*traces_per_second, &unique);
                limiters.push((unique, spec));
                Node::RateLimit(limiters.len() - 1)
            }
            PolicyConfig::Attribute {
                key: attr,
                values,
                prefixes,
                suffixes,
                contains,
                ..
            } => Node::Attribute(AttrMatcher {
                field: AttrField::for_key(attr),
                values: values.clone(),
                prefixes: prefixes.clone(),
                suffixes: suffixes.clone(),
                contains: contains.clone(),
            }),
            PolicyConfig::Probabilistic { percentage, .. } => {
                Node::Probabilistic(Probabilistic::new(*percentage))
            }
            PolicyConfig::And { policies, .. } => Node::And(
                policies
                    .iter()
                    .enumerate()
                    .map(|(j, p)| Node::compile(p, &format!("{key}.policies.{j}"), limiters))
                    .collect(),
            ),
            PolicyConfig::Not { policy, .. } => Node::Not(Box::new(Node::compile(
                policy,
                &format!("{key}.policy"),
                limiters,
            ))),
        }
    }

    /// True when the policy holds a rate limit: its outcome is known only once the
    /// rate limit's window has its verdict.
    pub(super) fn is_stateful(&self) -> bool {
        match self {
            Node::RateLimit(_) => true,
            Node::And(members) => members.iter().any(Node::is_stateful),
            Node::Not(inner) => inner.is_stateful(),
            _ => false,
        }
    }

    /// The rate limits the trace is offered to (their indexes, appended to `out`):
    /// every rate limit in the policy, except inside an `and` after a member without
    /// rate limits that certainly fails. A superset of the rate limits
    /// [`Node::eval`] consults, whatever their verdicts. Returns false when the policy
    /// certainly fails whatever the rate limits decide.
    pub(super) fn offers(&self, cx: &mut Ctx<'_>, out: &mut Vec<usize>) -> bool {
        match self {
            Node::RateLimit(i) => {
                out.push(*i);
                true
            }
            Node::And(members) => {
                for m in members {
                    if m.is_stateful() {
                        if !m.offers(cx, out) {
                            return false;
                        }
                    } else {
                        let e = m.eval(cx);
                        if !e.matched && e.p <= 0.0 {
                            return false;
                        }
                    }
                }
                true
            }
            Node::Not(inner) => {
                inner.offers(cx, out);
                true
            }
            _ => true,
        }
    }

    /// Evaluates the policy on the context's trace.
    pub(super) fn eval(&self, cx: &mut Ctx<'_>) -> Eval {
        match self {
            Node::Error => Eval::certain(cx.trace.spans.iter().any(Span::is_error)),
            Node::SlowSpan {
                call_type,
                threshold_ns,
            } => Eval::certain(cx.trace.spans.iter().any(|s| {
                call_type.is_none_or(|c| s.call_type == c) && s.duration_ns() > *threshold_ns
            })),
            Node::TraceDuration { threshold_ns } => {
                Eval::certain(cx.trace.summary.duration_ns() > *threshold_ns)
            }
            Node::Attribute(m) => Eval::certain(m.matches(&cx.trace.spans, cx.scratch)),
            Node::Probabilistic(p) => Eval {
                matched: u128::from(cx.hash) < p.threshold,
                p: p.p,
                w: p.w,
            },
            Node::RateLimit(i) => cx
                .rate
                .get(*i)
                .copied()
                .flatten()
                .unwrap_or(Eval::certain(false)),
            Node::And(members) => {
                let (mut all, mut p, mut w) = (true, 1.0, 1.0);
                for m in members {
                    // Once the `and` has failed, its rate limits are not consulted;
                    // stateless members still run so that `p` is right for an
                    // enclosing `not`.
                    if !all && m.is_stateful() {
                        continue;
                    }
                    let e = m.eval(cx);
                    if !e.matched {
                        if e.p <= 0.0 {
                            // A certain miss: nothing after it can change the outcome.
                            return Eval::certain(false);
                        }
                        all = false;
                    }
                    // Members are treated as independent (see the module docs).
                    p *= e.p;
                    w *= e.w;
                }
                Eval { matched: all, p, w }
            }
            Node::Not(inner) => {
                let e = inner.eval(cx);
                let p = 1.0 - e.p;
                Eval {
                    matched: !e.matched,
                    p,
                    w: if p >= 1.0 || p <= 0.0 { 1.0 } else { 1.0 / p },
                }
            }
        }
    }
}

/// Which value of a span an `attribute` policy reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum AttrField {
    /// A packed span or resource attribute.
    Packed(String),
    Service,
    Instance,
    SpanName,
    SpanKind,
    SpanStatus,
    CallType,
    Peer,
    DbSystem,
    MessagingDestination,
    HttpStatus,
}

impl AttrField {
    /// Keys the decoder absorbs into typed fields of [`Span`] are no longer among the
    /// packed attributes, so they are read from those fields instead; `span.*` and
    /// `call_type` name the span's own fields.
    pub(super) fn for_key(key: &str) -> Self {
        match key {
            "service.name" => AttrField::Service,
            "service.instance.id" => AttrField::Instance,
            "span.name" => AttrField::SpanName,
            "span.kind" => AttrField::SpanKind,
            "span.status" => AttrField::SpanStatus,
            "call_type" => AttrField::CallType,
            "peer.service" => AttrField::Peer,
            "db.system" | "db.system.name" => AttrField::DbSystem,
            "messaging.destination" | "messaging.destination.name" => {
                AttrField::MessagingDestination
            }
            "http.status_code" | "http.response.status_code" => AttrField::HttpStatus,
            other => AttrField::Packed(other.to_owned()),
        }
    }
}

/// `attribute`: some span has the key with a value matching one of the patterns.
#[derive(Debug, Clone)]
pub(super) struct AttrMatcher {
    field: AttrField,
    values: Vec<String>,
    prefixes: Vec<String>,
    suffixes: Vec<String>,
    contains: Vec<String>,
}

impl AttrMatcher {
    fn text_matches(&self, s: &str) -> bool {
        self.values.iter().any(|v| v == s)
            || self.prefixes.iter().any(|p| s.starts_with(p.as_str()))
            || self.suffixes.iter().any(|p| s.ends_with(p.as_str()))
            || self.contains.iter().any(|p| s.contains(p.as_str()))
    }

    fn value_matches(&self, v: AttrValue<'_>, scratch: &mut String) -> bool {
        match v {
            AttrValue::Str(s) => self.text_matches(s),
            other => {
                // Numbers and bools compare by their text, as a job file writes them;
                // arrays, kvlists and bytes by their JSON text.
                scratch.clear();
                let _ = write!(scratch, "{other}");
                self.text_matches(scratch)
            }
        }
    }

    fn packed_matches(&self, key: &str, attrs: &Attrs, scratch: &mut String) -> bool {
        attrs
            .iter()
            .any(|(k, v, _)| k == key && self.value_matches(v, scratch))
    }

    fn typed_matches(&self, span: &Span, scratch: &mut String) -> bool {
        let sym = match &self.field {
            AttrField::Service => span.service,
            AttrField::Instance => span.instance,
            AttrField::SpanName => span.name,
            AttrField::Peer => span.peer,
            AttrField::DbSystem => span.db_system,
            AttrField::MessagingDestination => span.messaging_destination,
            AttrField::SpanKind => return self.text_matches(span.kind.as_str()),
            AttrField::SpanStatus => return self.text_matches(span.status.as_str()),
            AttrField::CallType => return self.text_matches(span.call_type.as_str()),
            AttrField::HttpStatus => {
                // 0 means the span had no status code: the key is absent.
                if span.http_status == 0 {
                    return false;
                }
                scratch.clear();
                let _ = write!(scratch, "{}", span.http_status);
                return self.text_matches(scratch);
            }
            AttrField::Packed(_) => return false,
        };
        // The empty symbol means "absent", which no pattern should match.
        !sym.is_empty() && self.text_matches(sym.as_str())
    }

    pub(super) fn matches(&self, spans: &[Span], scratch: &mut String) -> bool {
        let AttrField::Packed(key) = &self.field else {
            return spans.iter().any(|s| self.typed_matches(s, scratch));
        };
        // Spans of one resource share its attribute buffer: scan it once per run of
        // spans (the comparison is a pointer compare when the buffer is shared).
        let mut last_resource: Option<&Attrs> = None;
        for s in spans {
            if self.packed_matches(key, &s.attrs, scratch) {
                return true;
            }
            if last_resource != Some(&s.resource_attrs) {
                if self.packed_matches(key, &s.resource_attrs, scratch) {
                    return true;
                }
                last_resource = Some(&s.resource_attrs);
            }
        }
        false
    }
}
