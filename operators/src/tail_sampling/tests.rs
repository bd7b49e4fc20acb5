use super::*;
use crate::model::{AttrValue, AttrsBuilder, Span, SpanId, SpanKind, StatusCode, TraceId};
use crate::session_window::{CloseReason, TraceSummary};
use proptest::prelude::*;

const MS: u64 = 1_000_000;
const S: u64 = 1_000_000_000;
/// A realistic event-time origin, on a whole second.
const T0: u64 = 1_700_000_000 * S;

fn tid(n: u64) -> TraceId {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&n.to_le_bytes());
    b[15] = 1;
    TraceId(b)
}

/// splitmix64: a tiny seeded generator, so tests need no rand dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn trace_id(&mut self) -> TraceId {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.next().to_le_bytes());
        b[8..].copy_from_slice(&self.next().to_le_bytes());
        TraceId(b)
    }
}

/// A span of `dur_ns` ending at `end_ns`.
fn span(id: u8, parent: u8, end_ns: u64, dur_ns: u64, call_type: CallType) -> Span {
    Span {
        trace_id: tid(0),
        span_id: SpanId([id, 0, 0, 0, 0, 0, 0, 1]),
        parent_span_id: if parent == 0 {
            SpanId::default()
        } else {
            SpanId([parent, 0, 0, 0, 0, 0, 0, 1])
        },
        start_ns: end_ns - dur_ns,
        end_ns,
        service: Sym::new("frontend"),
        name: Sym::new(if parent == 0 { "GET /" } else { "child" }),
        kind: if parent == 0 {
            SpanKind::Server
        } else {
            SpanKind::Client
        },
        call_type,
        ..Default::default()
    }
}

/// A closed trace with a summary computed from its spans, as the session window does.
fn trace(id: TraceId, mut spans: Vec<Span>) -> ClosedTrace {
    for s in &mut spans {
        s.trace_id = id;
    }
    let root = spans.iter().find(|s| s.is_root()).or(spans.first());
    let summary = TraceSummary {
        root_service: root.map(|s| s.service).unwrap_or_default(),
        root_operation: root.map(|s| s.name).unwrap_or_default(),
        has_root: spans.iter().any(Span::is_root),
        start_ns: spans.iter().map(|s| s.start_ns).min().unwrap_or(0),
        end_ns: spans.iter().map(|s| s.end_ns).max().unwrap_or(0),
        span_count: spans.len() as u32,
        error_count: spans.iter().filter(|s| s.is_error()).count() as u32,
        close_reason: CloseReason::Gap,
        fragment: 0,
    };
    ClosedTrace {
        trace_id: id,
        spans,
        summary,
    }
}

/// A one-span trace of an endpoint, ending at `end_ns`.
fn endpoint_trace(id: u64, service: &str, op: &str, end_ns: u64) -> ClosedTrace {
    let mut s = span(1, 0, end_ns, 10 * MS, CallType::Http);
    s.service = Sym::new(service);
    s.name = Sym::new(op);
    trace(tid(id), vec![s])
}

/// An ordinary, fast, successful two-span trace.
fn ok_trace(id: u64) -> ClosedTrace {
    trace(
        tid(id),
        vec![
            span(1, 0, T0 + 50 * MS, 50 * MS, CallType::Http),
            span(2, 1, T0 + 40 * MS, 20 * MS, CallType::Db),
        ],
    )
}

fn error(name: &str) -> PolicyConfig {
    PolicyConfig::Error { name: name.into() }
}

fn slow_span(name: &str, call_type: Option<CallType>, threshold_ms: u64) -> PolicyConfig {
    PolicyConfig::SlowSpan {
        name: name.into(),
        call_type,
        threshold: HumanDuration::millis(threshold_ms),
    }
}

fn trace_duration(name: &str, threshold_ms: u64) -> PolicyConfig {
    PolicyConfig::TraceDuration {
        name: name.into(),
        threshold: HumanDuration::millis(threshold_ms),
    }
}

fn rate_limit(name: &str, traces_per_second: f64) -> PolicyConfig {
    PolicyConfig::EndpointRateLimit {
        name: name.into(),
        traces_per_second,
    }
}

fn probabilistic(name: &str, percentage: f64) -> PolicyConfig {
    PolicyConfig::Probabilistic {
        name: name.into(),
        percentage,
    }
}

fn attribute(name: &str, key: &str, values: &[&str]) -> PolicyConfig {
    PolicyConfig::Attribute {
        name: name.into(),
        key: key.into(),
        values: values.iter().map(|v| v.to_string()).collect(),
        prefixes: vec![],
        suffixes: vec![],
        contains: vec![],
    }
}

fn and(name: &str, policies: Vec<PolicyConfig>) -> PolicyConfig {
    PolicyConfig::And {
        name: name.into(),
        policies,
    }
}

fn not(name: &str, policy: PolicyConfig) -> PolicyConfig {
    PolicyConfig::Not {
        name: name.into(),
        policy: Box::new(policy),
    }
}

fn sampler(policies: Vec<PolicyConfig>) -> TailSampler {
    TailSampler::new(TailSamplingConfig { policies })
}

fn kept(s: &mut TailSampler, t: &ClosedTrace) -> bool {
    s.decide(t).sampled
}

/// A trace id whose hash puts it inside (or outside) the lowest `pct` percent.
fn id_with_hash(inside_pct: Option<f64>, outside_pct: Option<f64>) -> TraceId {
    let mut rng = Rng(42);
    loop {
        let id = rng.trace_id();
        let frac = id.hash64() as f64 / 18_446_744_073_709_551_616.0;
        if inside_pct.is_none_or(|p| frac < p / 100.0)
            && outside_pct.is_none_or(|p| frac >= p / 100.0)
        {
            return id;
        }
    }
}

#[test]
fn error_policy_matches_status_error_and_http_5xx_with_unset_status() {
    let mut s = sampler(vec![error("errors")]);
    assert!(!kept(&mut s, &ok_trace(1)));

    let mut t = ok_trace(2);
    t.spans[1].status = StatusCode::Error;
    assert!(kept(&mut s, &t));

    let mut t = ok_trace(3);
    t.spans[0].http_status = 503;
    assert_eq!(t.spans[0].status, StatusCode::Unset);
    assert!(kept(&mut s, &t), "http 5xx with unset status is an error");

    let mut t = ok_trace(4);
    t.spans[0].http_status = 499;
    assert!(!kept(&mut s, &t), "4xx is not a server error");

    let mut t = ok_trace(5);
    t.spans[0].http_status = 500;
    assert!(kept(&mut s, &t));
}

#[test]
fn slow_span_threshold_is_strict_and_filters_call_type() {
    let mut s = sampler(vec![slow_span("slow-db", Some(CallType::Db), 200)]);
    let db = |id: u64, dur: u64| {
        trace(
            tid(id),
            vec![
                span(1, 0, T0 + S, S, CallType::Http),
                span(2, 1, T0 + S / 2, dur, CallType::Db),
            ],
        )
    };
    assert!(
        !kept(&mut s, &db(1, 200 * MS)),
        "exactly the threshold is not slow"
    );
    assert!(kept(&mut s, &db(2, 200 * MS + 1)), "one nanosecond over is");
    assert!(!kept(&mut s, &db(3, 10 * MS)));
    // The 1 s http root span does not count for a db policy.
    assert!(!kept(&mut s, &db(4, 199 * MS)));

    let mut any = sampler(vec![slow_span("slow-any", None, 200)]);
    assert!(kept(&mut any, &db(5, 10 * MS)), "the 1 s http span counts");
    let fast = trace(tid(6), vec![span(1, 0, T0 + S, 200 * MS, CallType::Local)]);
    assert!(!kept(&mut any, &fast));
}

#[test]
fn trace_duration_threshold_is_strict() {
    let mut s = sampler(vec![trace_duration("slow-traces", 1_000)]);
    // Two spans that together cover exactly one second, neither alone.
    let exact = trace(
        tid(1),
        vec![
            span(1, 0, T0 + 600 * MS, 600 * MS, CallType::Http),
            span(2, 1, T0 + S, 400 * MS, CallType::Db),
        ],
    );
    assert_eq!(exact.summary.duration_ns(), S);
    assert!(!kept(&mut s, &exact));
    let over = trace(
        tid(2),
        vec![
            span(1, 0, T0 + 600 * MS, 600 * MS, CallType::Http),
            span(2, 1, T0 + S + 1, 400 * MS + 1, CallType::Db),
        ],
    );
    assert!(kept(&mut s, &over));
}

#[test]
fn attribute_matches_packed_resource_and_typed_fields() {
    let mut b = AttrsBuilder::default();
    b.push("http.route", AttrValue::Str("/api/v1/orders"), false);
    b.push("retries", AttrValue::Int(3), false);
    b.push("cache.hit", AttrValue::Bool(true), false);
    let attrs = b.finish();
    b.push("tenant.tier", AttrValue::Str("gold"), true);
    b.push("deployment.environment", AttrValue::Str("prod-eu-1"), true);
    let resource = b.finish();

    let mut root = span(1, 0, T0 + S, 100 * MS, CallType::Http);
    root.http_status = 404;
    root.resource_attrs = resource.clone();
    let mut child = span(2, 1, T0 + S / 2, 10 * MS, CallType::Db);
    child.attrs = attrs;
    child.resource_attrs = resource;
    child.db_system = Sym::new("postgresql");
    child.peer = Sym::new("orders-db");
    let t = trace(tid(1), vec![root, child]);

    let check = |policy: PolicyConfig, want: bool| {
        let what = format!("{policy:?}");
        let mut s = sampler(vec![policy]);
        assert_eq!(kept(&mut s, &t), want, "{what}");
    };
    // Exact values on packed span and resource attributes.
    check(attribute("a", "tenant.tier", &["gold"]), true);
    check(attribute("a", "tenant.tier", &["silver", "gold"]), true);
    check(attribute("a", "tenant.tier", &["Gold"]), false);
    check(attribute("a", "tenant.tier", &["gol"]), false);
    check(attribute("a", "http.route", &["/api/v1/orders"]), true);
    check(attribute("a", "missing", &["gold"]), false);
    // Non-string values compare by their text.
    check(attribute("a", "retries", &["3"]), true);
    check(attribute("a", "cache.hit", &["true"]), true);
    // Typed fields.
    check(attribute("a", "service.name", &["frontend"]), true);
    check(attribute("a", "span.name", &["child"]), true);
    check(attribute("a", "span.kind", &["client"]), true);
    check(attribute("a", "http.status_code", &["404"]), true);
    check(attribute("a", "http.response.status_code", &["500"]), false);
    check(attribute("a", "db.system", &["postgresql"]), true);
    check(attribute("a", "peer.service", &["orders-db"]), true);
    check(attribute("a", "call_type", &["db"]), true);
    check(attribute("a", "call_type", &["mq"]), false);
    check(attribute("a", "messaging.destination.name", &[""]), false);
    // Prefix / suffix / substring alternatives.
    let pattern =
        |prefixes: &[&str], suffixes: &[&str], contains: &[&str]| PolicyConfig::Attribute {
            name: "p".into(),
            key: "deployment.environment".into(),
            values: vec![],
            prefixes: prefixes.iter().map(|s| s.to_string()).collect(),
            suffixes: suffixes.iter().map(|s| s.to_string()).collect(),
            contains: contains.iter().map(|s| s.to_string()).collect(),
        };
    check(pattern(&["prod-"], &[], &[]), true);
    check(pattern(&["staging-"], &[], &[]), false);
    check(pattern(&[], &["-1"], &[]), true);
    check(pattern(&[], &["-2"], &[]), false);
    check(pattern(&[], &[], &["-eu-"]), true);
    check(pattern(&[], &[], &["-us-"]), false);
    check(pattern(&["x"], &["y"], &["eu"]), true);
}

#[test]
fn and_requires_every_member_and_not_negates() {
    let slow_and_error = and(
        "slow-and-error",
        vec![error(""), slow_span("", Some(CallType::Db), 200)],
    );
    let mut s = sampler(vec![slow_and_error]);
    let mut slow = ok_trace(1);
    slow.spans[1].start_ns -= 300 * MS;
    let mut err = ok_trace(2);
    err.spans[0].status = StatusCode::Error;
    let mut both = slow.clone();
    both.trace_id = tid(3);
    both.spans[0].status = StatusCode::Error;
    assert!(!kept(&mut s, &slow));
    assert!(!kept(&mut s, &err));
    assert!(kept(&mut s, &both));

    let not_health = not("not-health", attribute("", "span.name", &["GET /health"]));
    let mut s = sampler(vec![not_health]);
    let mut health = ok_trace(4);
    health.spans[0].name = Sym::new("GET /health");
    assert!(!kept(&mut s, &health));
    assert!(kept(&mut s, &ok_trace(5)));

    // Errors except on the health endpoint.
    let mut s = sampler(vec![and(
        "errors-not-health",
        vec![
            error(""),
            not("", attribute("", "span.name", &["GET /health"])),
        ],
    )]);
    let mut health_err = health.clone();
    health_err.spans[0].http_status = 503;
    assert!(!kept(&mut s, &health_err));
    assert!(kept(&mut s, &err));
    assert!(!kept(&mut s, &ok_trace(6)));
}

#[test]
fn first_matching_policy_is_recorded_and_counted() {
    let mut s = sampler(vec![
        error("errors"),
        slow_span("slow-db", Some(CallType::Db), 200),
        trace_duration("slow-traces", 1_000),
    ]);
    let mut slow_err = ok_trace(1);
    slow_err.spans[1].start_ns -= 300 * MS;
    slow_err.spans[1].status = StatusCode::Error;
    let d = s.decide(&slow_err);
    assert_eq!(d.policy, Some(Sym::new("errors")), "first in config order");
    let mut slow = ok_trace(2);
    slow.spans[1].start_ns -= 300 * MS;
    slow.summary.start_ns = slow.spans[1].start_ns;
    assert_eq!(s.decide(&slow).policy, Some(Sym::new("slow-db")));
    let d = s.decide(&ok_trace(3));
    assert_eq!(
        d,
        Decision {
            sampled: false,
            policy: None,
            adjusted_count: 0.0
        }
    );

    let m = s.metrics();
    assert_eq!((m.traces_seen, m.traces_kept, m.traces_dropped), (3, 2, 1));
    let by: Vec<(&str, u64)> = m
        .kept_by_policy
        .iter()
        .map(|(k, v)| (k.as_str(), *v))
        .collect();
    assert_eq!(by, vec![("errors", 1), ("slow-db", 1), ("slow-traces", 0)]);
}

#[test]
fn adjusted_counts() {
    let inside_5 = id_with_hash(Some(5.0), None);
    let outside_10 = id_with_hash(None, Some(10.0));
    let with_id = |id: TraceId| {
        let mut t = ok_trace(0);
        t.trace_id = id;
        t
    };
    let with_error = |id: TraceId| {
        let mut t = with_id(id);
        t.spans[0].status = StatusCode::Error;
        t
    };

    // Probabilistic only: 100 / percentage.
    let mut s = sampler(vec![error("errors"), probabilistic("baseline", 5.0)]);
    let d = s.decide(&with_id(inside_5));
    assert_eq!(d.policy, Some(Sym::new("baseline")));
    assert_eq!(d.adjusted_count, 20.0);
    // Deterministic: 1.
    let d = s.decide(&with_error(outside_10));
    assert_eq!(
        (d.policy, d.adjusted_count),
        (Some(Sym::new("errors")), 1.0)
    );
    // Dropped: 0.
    assert_eq!(s.decide(&with_id(outside_10)).adjusted_count, 0.0);

    // Probabilistic first, but a deterministic policy matched too: 1.
    let mut s = sampler(vec![probabilistic("baseline", 5.0), error("errors")]);
    let d = s.decide(&with_error(inside_5));
    assert_eq!(d.policy, Some(Sym::new("baseline")));
    assert_eq!(d.adjusted_count, 1.0);

    // Nested probabilistic policies cut the same hash: the widest counts.
    let mut s = sampler(vec![probabilistic("p5", 5.0), probabilistic("p10", 10.0)]);
    let d = s.decide(&with_id(inside_5));
    assert_eq!((d.policy, d.adjusted_count), (Some(Sym::new("p5")), 10.0));

    // and(deterministic, probabilistic): 100 / percentage among matching traces.
    let mut s = sampler(vec![and(
        "errors-5",
        vec![error(""), probabilistic("", 5.0)],
    )]);
    assert_eq!(s.decide(&with_error(inside_5)).adjusted_count, 20.0);
    assert!(!s.decide(&with_id(inside_5)).sampled);

    // not(probabilistic 10): keeps 90 %, each standing for 100/90.
    let mut s = sampler(vec![not("not-10", probabilistic("", 10.0))]);
    let d = s.decide(&with_id(outside_10));
    assert!((d.adjusted_count - 100.0 / 90.0).abs() < 1e-12);
    assert!(!s.decide(&with_id(inside_5)).sampled);

    // Probabilistic 100 keeps everything at weight 1.
    let mut s = sampler(vec![probabilistic("all", 100.0)]);
    assert_eq!(s.decide(&with_id(outside_10)).adjusted_count, 1.0);

    // A trace kept by a rate limit and, independently, by the hash: the union.
    let mut s = sampler(vec![
        rate_limit("per-endpoint", 1.0),
        probabilistic("p5", 5.0),
    ]);
    let mut rng = Rng(5);
    for i in 0..3 {
        let id = loop {
            let id = rng.trace_id();
            if id.hash64() as f64 / 18_446_744_073_709_551_616.0 >= 0.05 {
                break id;
            }
        };
        assert_eq!(s.decide(&with_id(id)).sampled, i == 0);
    }
    // The first trace took the second's budget; the rest were dropped. Next second:
    let mut t = with_id(inside_5);
    t.summary.end_ns += 2 * S;
    let d = s.decide(&t);
    let (p_rl, p_prob) = (1.0 / 3.0, 0.05);
    let want = 1.0 / (1.0 - (1.0 - p_rl) * (1.0 - p_prob));
    assert_eq!(d.policy, Some(Sym::new("per-endpoint")));
    assert!(
        (d.adjusted_count - want).abs() < 1e-12,
        "{}",
        d.adjusted_count
    );
}

#[test]
fn probabilistic_is_deterministic_across_instances() {
    let config = TailSamplingConfig {
        policies: vec![probabilistic("baseline", 30.0)],
    };
    let mut a = TailSampler::new(config.clone());
    let mut b = TailSampler::new(config.clone());
    let mut c = TailSampler::new_sharded(config, 8);
    let mut rng = Rng(7);
    for _ in 0..2_000 {
        let mut t = ok_trace(0);
        t.trace_id = rng.trace_id();
        let da = a.decide(&t);
        assert_eq!(da, b.decide(&t));
        assert_eq!(da, c.decide(&t), "sharding does not affect probabilistic");
        // Deciding the same trace again gives the same answer.
        assert_eq!(da, a.decide(&t));
    }
}

#[test]
fn probabilistic_extremes() {
    let mut none = sampler(vec![probabilistic("none", 0.0)]);
    let mut all = sampler(vec![probabilistic("all", 100.0)]);
    let mut rng = Rng(9);
    let mut ids: Vec<TraceId> = (0..2_000).map(|_| rng.trace_id()).collect();
    ids.push(TraceId([0xff; 16]));
    ids.push(TraceId([0; 16]));
    for id in ids {
        let mut t = ok_trace(0);
        t.trace_id = id;
        assert!(!none.decide(&t).sampled);
        let d = all.decide(&t);
        assert!(d.sampled);
        assert_eq!(d.adjusted_count, 1.0);
    }
}

#[test]
fn probabilistic_keeps_the_target_fraction() {
    let kept_share = |pct: f64, ids: &[TraceId]| {
        let mut s = sampler(vec![probabilistic("p", pct)]);
        let mut t = ok_trace(0);
        let kept = ids
            .iter()
            .filter(|id| {
                t.trace_id = **id;
                s.decide(&t).sampled
            })
            .count();
        kept as f64 * 100.0 / ids.len() as f64
    };
    // 10,000 ids: one percentage point is about two standard deviations at 50 %, so
    // the seed is fixed (the test is deterministic); the larger sample below is the
    // seed-independent check.
    let mut rng = Rng(2024);
    let ids: Vec<TraceId> = (0..10_000).map(|_| rng.trace_id()).collect();
    for pct in [1.0, 5.0, 12.5, 50.0, 90.0] {
        let got = kept_share(pct, &ids);
        assert!((got - pct).abs() <= 1.0, "target {pct} %, kept {got} %");
    }
    let ids: Vec<TraceId> = (0..200_000).map(|_| rng.trace_id()).collect();
    let got = kept_share(50.0, &ids);
    assert!(
        (got - 50.0).abs() <= 0.5,
        "target 50 %, kept {got} % of 200k"
    );
}

#[test]
fn rate_limit_keeps_budget_per_endpoint_and_second() {
    let mut s = sampler(vec![rate_limit("per-endpoint", 2.0)]);
    let second = |s: &mut TailSampler, base: u64, start: u64| -> Vec<Decision> {
        (0..10)
            .map(|i| {
                s.decide(&endpoint_trace(
                    base + i,
                    "api",
                    "GET /a",
                    start + i * 90 * MS,
                ))
            })
            .collect()
    };
    let first = second(&mut s, 0, T0);
    let kept: Vec<usize> = (0..10).filter(|&i| first[i].sampled).collect();
    assert_eq!(kept, vec![0, 1], "exactly two, the first two");
    assert!(first[0].adjusted_count == 1.0 && first[1].adjusted_count == 1.0);
    assert!(first[2..].iter().all(|d| d.adjusted_count == 0.0));

    // The next second has a fresh budget. Its first kept trace also stands for the
    // eight dropped in the previous second.
    let next = second(&mut s, 100, T0 + S);
    let kept: Vec<usize> = (0..10).filter(|&i| next[i].sampled).collect();
    assert_eq!(kept, vec![0, 1]);
    assert_eq!(next[0].adjusted_count, 9.0);
    assert_eq!(next[1].adjusted_count, 1.0);
    let m = s.metrics();
    assert_eq!((m.traces_kept, m.traces_dropped), (4, 16));
    assert_eq!(m.kept_by_policy.get("per-endpoint"), Some(&4));
}

#[test]
fn rate_limit_does_not_starve_low_traffic_endpoints() {
    let mut s = sampler(vec![rate_limit("per-endpoint", 1.0)]);
    let mut id = 0;
    let mut cold_kept = 0;
    for sec in 0..20u64 {
        for i in 0..500u64 {
            id += 1;
            s.decide(&endpoint_trace(
                id,
                "api",
                "GET /hot",
                T0 + sec * S + i * MS,
            ));
            if i == 250 && sec % 5 == 0 {
                id += 1;
                let d = s.decide(&endpoint_trace(
                    id,
                    "api",
                    "POST /cold",
                    T0 + sec * S + i * MS,
                ));
                cold_kept += usize::from(d.sampled);
                assert_eq!(d.adjusted_count, 1.0);
            }
        }
    }
    assert_eq!(cold_kept, 4, "every trace of the quiet endpoint is kept");
    // The hot endpoint got exactly its budget.
    assert_eq!(s.metrics().traces_kept, 20 + 4);
}

#[test]
fn fractional_rate_uses_an_event_time_token_bucket() {
    let mut s = sampler(vec![rate_limit("per-endpoint", 0.5)]);
    let decisions: Vec<Decision> = (0..100u64)
        .map(|i| s.decide(&endpoint_trace(i, "api", "GET /a", T0 + i * 100 * MS)))
        .collect();
    let kept_at: Vec<u64> = (0..100u64)
        .filter(|&i| decisions[i as usize].sampled)
        .collect();
    // A full bucket (1 token) keeps the first; then one token every 2 s of event time.
    assert_eq!(kept_at, vec![0, 20, 40, 60, 80]);
    assert_eq!(decisions[0].adjusted_count, 1.0);
    for i in [20, 40, 60, 80] {
        assert_eq!(decisions[i].adjusted_count, 20.0, "19 dropped + itself");
    }

    // Capacity max(1, rate): 2.5 per second keeps at most 2 of a sudden burst.
    let mut s = sampler(vec![rate_limit("per-endpoint", 2.5)]);
    let burst = (0..10)
        .filter(|&i| kept(&mut s, &endpoint_trace(i, "api", "GET /a", T0)))
        .count();
    assert_eq!(burst, 2);
    // 2.5 tokens accrue over the next second, 2 of them usable right away.
    let later = (10..20)
        .filter(|&i| kept(&mut s, &endpoint_trace(i, "api", "GET /a", T0 + S)))
        .count();
    assert_eq!(later, 2);
}

#[test]
fn zero_rate_keeps_nothing() {
    let mut s = sampler(vec![rate_limit("off", 0.0)]);
    for i in 0..10 {
        assert!(!kept(
            &mut s,
            &endpoint_trace(i, "api", "GET /a", T0 + i * S)
        ));
    }
}

#[test]
fn sharded_sampler_divides_rate_budgets() {
    let config = TailSamplingConfig {
        policies: vec![rate_limit("per-endpoint", 2.0), error("errors")],
    };
    let mut shard = TailSampler::new_sharded(config.clone(), 2);
    let kept_in_second = (0..10)
        .filter(|&i| kept(&mut shard, &endpoint_trace(i, "api", "GET /a", T0 + i * MS)))
        .count();
    assert_eq!(
        kept_in_second, 1,
        "2 per second over 2 shards is 1 per shard"
    );

    // 3 over 2 shards: 1.5 per second, a token bucket; over 10 s about 15 per shard.
    let config = TailSamplingConfig {
        policies: vec![rate_limit("per-endpoint", 3.0)],
    };
    let mut shard = TailSampler::new_sharded(config, 2);
    let kept_total = (0..1_000u64)
        .filter(|&i| {
            kept(
                &mut shard,
                &endpoint_trace(i, "api", "GET /a", T0 + i * 10 * MS),
            )
        })
        .count();
    assert!((15..=16).contains(&kept_total), "{kept_total}");

    // Zero shards is treated as one rather than dividing by zero.
    let config = TailSamplingConfig {
        policies: vec![rate_limit("per-endpoint", 2.0)],
    };
    let mut s = TailSampler::new_sharded(config, 0);
    let kept_in_second = (0..10)
        .filter(|&i| kept(&mut s, &endpoint_trace(i, "api", "GET /a", T0 + i * MS)))
        .count();
    assert_eq!(kept_in_second, 2);
}

#[test]
fn rate_limit_state_is_bounded_by_event_time_eviction() {
    let mut s = sampler(vec![rate_limit("per-endpoint", 1.0)]);
    for i in 0..100 {
        s.decide(&endpoint_trace(
            i,
            "api",
            &format!("GET /{i}"),
            T0 + 500 * MS,
        ));
    }
    assert_eq!(s.tracked_endpoints(), 100);
    s.decide(&endpoint_trace(1000, "api", "GET /new", T0 + 60 * S));
    assert_eq!(s.tracked_endpoints(), 101, "60 s behind the newest is kept");
    s.decide(&endpoint_trace(1001, "api", "GET /new", T0 + 61 * S));
    assert_eq!(
        s.tracked_endpoints(),
        1,
        "older than 60 s behind is evicted"
    );
    // An evicted endpoint comes back with a fresh budget.
    assert!(kept(
        &mut s,
        &endpoint_trace(1002, "api", "GET /1", T0 + 61 * S)
    ));
}

#[test]
fn out_of_order_trace_is_charged_to_the_current_bucket() {
    let mut s = sampler(vec![rate_limit("per-endpoint", 1.0)]);
    assert!(kept(
        &mut s,
        &endpoint_trace(1, "api", "GET /a", T0 + 10 * S)
    ));
    assert!(
        !kept(&mut s, &endpoint_trace(2, "api", "GET /a", T0 + 5 * S)),
        "an older trace does not reopen its second's budget"
    );
    assert!(kept(
        &mut s,
        &endpoint_trace(3, "api", "GET /a", T0 + 11 * S)
    ));
}

#[test]
fn rate_limit_counts_only_fully_dropped_traces_as_pending() {
    let mut s = sampler(vec![error("errors"), rate_limit("per-endpoint", 1.0)]);
    let at = |id: u64, ms: u64, is_error: bool| {
        let mut t = endpoint_trace(id, "api", "GET /a", T0 + ms * MS);
        if is_error {
            t.spans[0].status = StatusCode::Error;
        }
        t
    };
    let d = s.decide(&at(1, 0, false));
    assert_eq!(
        (d.policy, d.adjusted_count),
        (Some(Sym::new("per-endpoint")), 1.0)
    );
    // Errors are kept by `errors` (weight 1) and spend no further limiter budget.
    for i in 2..6 {
        let d = s.decide(&at(i, i * 10, true));
        assert_eq!(
            (d.policy, d.adjusted_count),
            (Some(Sym::new("errors")), 1.0)
        );
    }
    // Three ordinary traces over the budget are dropped...
    for i in 6..9 {
        assert!(!s.decide(&at(i, i * 10, false)).sampled);
    }
    // ...and the next trace the limiter keeps stands for them and itself.
    let d = s.decide(&at(9, 1_000, false));
    assert_eq!(
        (d.policy, d.adjusted_count),
        (Some(Sym::new("per-endpoint")), 4.0)
    );
    // An error kept in a later second uses the limiter's token but keeps weight 1,
    // and the pending count is not consumed by it.
    assert!(!s.decide(&at(10, 1_100, false)).sampled);
    let d = s.decide(&at(11, 2_000, true));
    assert_eq!(
        (d.policy, d.adjusted_count),
        (Some(Sym::new("errors")), 1.0)
    );
    assert!(!s.decide(&at(12, 2_100, false)).sampled);
    let d = s.decide(&at(13, 3_000, false));
    assert_eq!(d.adjusted_count, 3.0, "two pending drops + itself");
}

#[test]
fn rate_limit_inside_and_only_counts_matching_traces() {
    let mut s = sampler(vec![and(
        "vip-limited",
        vec![attribute("", "service.name", &["vip"]), rate_limit("", 1.0)],
    )]);
    // Non-vip traces never reach the limiter, so they do not spend its budget.
    for i in 0..5 {
        assert!(!kept(
            &mut s,
            &endpoint_trace(i, "api", "GET /a", T0 + i * MS)
        ));
    }
    assert_eq!(s.tracked_endpoints(), 0);
    assert!(kept(
        &mut s,
        &endpoint_trace(10, "vip", "GET /a", T0 + 10 * MS)
    ));
    assert!(!kept(
        &mut s,
        &endpoint_trace(11, "vip", "GET /a", T0 + 20 * MS)
    ));
}

/// A mixed stream: several endpoints, some errors and slow spans, random ids.
fn mixed_stream(n: u64, seed: u64) -> Vec<ClosedTrace> {
    let mut rng = Rng(seed);
    let ops = ["GET /a", "GET /b", "POST /c", "GET /health"];
    (0..n)
        .map(|i| {
            let end = T0 + i * 37 * MS + rng.next() % (500 * MS);
            let op = ops[(rng.next() % ops.len() as u64) as usize];
            let mut t = endpoint_trace(0, "api", op, end);
            let db_dur = rng.next() % (400 * MS);
            t.spans
                .push(span(2, 1, end - MS, db_dur.min(end - T0), CallType::Db));
            if rng.next().is_multiple_of(10) {
                t.spans[1].status = StatusCode::Error;
            }
            trace(rng.trace_id(), t.spans)
        })
        .collect()
}

fn mixed_config() -> TailSamplingConfig {
    TailSamplingConfig {
        policies: vec![
            error("errors"),
            slow_span("slow-db", Some(CallType::Db), 300),
            rate_limit("per-endpoint", 1.0),
            and(
                "health-limited",
                vec![
                    attribute("", "span.name", &["GET /health"]),
                    rate_limit("", 0.3),
                ],
            ),
            probabilistic("baseline", 10.0),
        ],
    }
}

#[test]
fn snapshot_and_restore_give_the_same_decisions() {
    let traces = mixed_stream(600, 3);
    let mut whole = TailSampler::new(mixed_config());
    let expected: Vec<Decision> = traces.iter().map(|t| whole.decide(t)).collect();
    assert!(
        expected
            .iter()
            .any(|d| d.policy == Some(Sym::new("health-limited")))
    );

    for cut in [0, 1, 250, 599, 600] {
        let mut first = TailSampler::new(mixed_config());
        let mut got: Vec<Decision> = traces[..cut].iter().map(|t| first.decide(t)).collect();
        let json = serde_json::to_string(first.snapshot()).unwrap();
        drop(first);
        let state: TailSamplerState = serde_json::from_str(&json).unwrap();
        let mut restored = TailSampler::with_state(mixed_config(), state);
        got.extend(traces[cut..].iter().map(|t| restored.decide(t)));
        assert_eq!(got, expected, "cut at {cut}");
        assert_eq!(restored.metrics(), whole.metrics());
        assert_eq!(
            serde_json::to_string(restored.snapshot()).unwrap(),
            serde_json::to_string(whole.snapshot()).unwrap(),
            "equal states give equal checkpoints"
        );
    }
}

#[test]
fn restore_matches_limiters_by_key_not_position() {
    let mut before = sampler(vec![rate_limit("per-endpoint", 1.0)]);
    assert!(kept(&mut before, &endpoint_trace(1, "api", "GET /a", T0)));
    let state = before.snapshot().clone();
    // A limiter was added in front: the old one still finds its buckets.
    let config = TailSamplingConfig {
        policies: vec![
            rate_limit("new-limit", 0.0),
            rate_limit("per-endpoint", 1.0),
        ],
    };
    let mut after = TailSampler::with_state(config, state);
    assert!(
        !kept(
            &mut after,
            &endpoint_trace(2, "api", "GET /a", T0 + 10 * MS)
        ),
        "per-endpoint's budget for this second was spent before the restore"
    );
    assert!(kept(
        &mut after,
        &endpoint_trace(3, "api", "GET /a", T0 + S)
    ));
    assert_eq!(after.metrics().kept_by_policy.get("per-endpoint"), Some(&2));
}

#[test]
fn process_matches_decide() {
    let traces = mixed_stream(200, 5);
    let mut a = TailSampler::new(mixed_config());
    let mut b = TailSampler::new(mixed_config());
    let mut out = Vec::new();
    a.process(&traces, &mut out);
    let one_by_one: Vec<Decision> = traces.iter().map(|t| b.decide(t)).collect();
    assert_eq!(out, one_by_one);
}

#[test]
fn metrics_merge_sums_shards() {
    let traces = mixed_stream(300, 11);
    let mut a = TailSampler::new_sharded(mixed_config(), 2);
    let mut b = TailSampler::new_sharded(mixed_config(), 2);
    for t in &traces {
        if t.trace_id.hash64() % 2 == 0 {
            a.decide(t);
        } else {
            b.decide(t);
        }
    }
    let mut sum = a.metrics().clone();
    sum.merge(b.metrics());
    assert_eq!(sum.traces_seen, 300);
    assert_eq!(sum.traces_kept + sum.traces_dropped, 300);
    assert_eq!(sum.kept_by_policy.values().sum::<u64>(), sum.traces_kept);
}

#[test]
fn config_parses_the_job_shape_and_rejects_unknown_keys() {
    let json = r#"{
        "policies": [
            {"name": "errors", "type": "error"},
            {"name": "slow-db", "type": "slow_span", "call_type": "db", "threshold": "200ms"},
            {"name": "slow-traces", "type": "trace_duration", "threshold": "1s"},
            {"name": "per-endpoint", "type": "endpoint_rate_limit", "traces_per_second": 1},
            {"name": "vip", "type": "attribute", "key": "tenant.tier", "values": ["gold"],
             "prefixes": ["plat"]},
            {"name": "baseline", "type": "probabilistic", "percentage": 5},
            {"name": "slow-and-error", "type": "and", "policies": [
                {"type": "error"},
                {"type": "slow_span", "threshold": "500ms"}
            ]},
            {"name": "not-health", "type": "not",
             "policy": {"type": "attribute", "key": "span.name", "values": ["GET /health"]}}
        ]
    }"#;
    let config: TailSamplingConfig = serde_json::from_str(json).unwrap();
    assert!(config.validate().is_empty(), "{:?}", config.validate());
    assert_eq!(config.policies.len(), 8);
    assert_eq!(
        config.policies[1],
        slow_span("slow-db", Some(CallType::Db), 200)
    );
    assert_eq!(config.policies[3], rate_limit("per-endpoint", 1.0));
    assert_eq!(config.policies[7].kind(), "not");
    // Round trip.
    let back: TailSamplingConfig =
        serde_json::from_str(&serde_json::to_string(&config).unwrap()).unwrap();
    assert_eq!(back, config);

    let typo = r#"{"policies": [{"name": "e", "type": "error", "nmae": "x"}]}"#;
    let err = serde_json::from_str::<TailSamplingConfig>(typo).unwrap_err();
    assert!(err.to_string().contains("nmae"), "{err}");
    let nested_typo = r#"{"policies": [{"name": "a", "type": "and",
        "policies": [{"type": "slow_span", "treshold": "1s"}]}]}"#;
    assert!(serde_json::from_str::<TailSamplingConfig>(nested_typo).is_err());
    let bad_kind = r#"{"policies": [{"name": "a", "type": "regex"}]}"#;
    assert!(serde_json::from_str::<TailSamplingConfig>(bad_kind).is_err());
    let bad_call_type = r#"{"policies": [{"name": "a", "type": "slow_span",
        "call_type": "grpc", "threshold": "1s"}]}"#;
    assert!(serde_json::from_str::<TailSamplingConfig>(bad_call_type).is_err());
}

#[test]
fn json_schema_describes_every_policy() {
    let schema = schemars::schema_for!(TailSamplingConfig);
    let text = serde_json::to_string(&schema).unwrap();
    for kind in [
        "error",
        "slow_span",
        "trace_duration",
        "endpoint_rate_limit",
        "attribute",
        "probabilistic",
        "and",
        "not",
    ] {
        assert!(text.contains(&format!("\"{kind}\"")), "{kind} missing");
    }
    assert!(text.contains("\"cache\""), "call types listed");
    assert!(text.contains("additionalProperties"));
}

#[test]
fn validate_reports_every_issue_with_its_path() {
    assert_eq!(
        TailSamplingConfig { policies: vec![] }.validate(),
        vec![ConfigIssue::new(
            "policies",
            "at least one policy is required; with none every trace is dropped"
        )]
    );

    let config = TailSamplingConfig {
        policies: vec![
            error("errors"),
            slow_span("slow", None, 0),
            trace_duration("errors", 0),
            rate_limit("rl", -1.0),
            rate_limit("rl-nan", f64::NAN),
            probabilistic("", 150.0),
            probabilistic("neg", -0.5),
            and("empty-and", vec![]),
            and(
                "nested",
                vec![error(""), slow_span("", None, 0), probabilistic("", 101.0)],
            ),
            not("not-rl", rate_limit("", 1.0)),
            attribute("no-patterns", "", &[]),
            rate_limit("inf", f64::INFINITY),
        ],
    };
    let issues = config.validate();
    let paths: Vec<String> = issues.iter().map(|i| i.path.join(".")).collect();
    assert_eq!(
        paths,
        vec![
            "policies.1.threshold",
            "policies.2.name",
            "policies.2.threshold",
            "policies.3.traces_per_second",
            "policies.4.traces_per_second",
            "policies.5.name",
            "policies.5.percentage",
            "policies.6.percentage",
            "policies.7.policies",
            "policies.8.policies.1.threshold",
            "policies.8.policies.2.percentage",
            "policies.9.policy",
            "policies.10.key",
            "policies.10.values",
            "policies.11.traces_per_second",
        ]
    );
    assert!(issues[1].message.contains("duplicate policy name `errors`"));
    assert!(issues[1].message.contains("policies.0.name"));
    assert!(issues[6].message.contains("found 150"));
    assert!(issues[0].message.contains("found `0s`"));

    // Deep nesting is reported once, at the level that is too deep.
    let mut deep = error("");
    for _ in 0..=MAX_POLICY_DEPTH {
        deep = not("", deep);
    }
    let issues = TailSamplingConfig {
        policies: vec![not("deep", deep)],
    }
    .validate();
    assert_eq!(issues.len(), 1);
    assert!(issues[0].message.contains("deeper"));
}

#[test]
fn invalid_values_do_not_panic() {
    let config = TailSamplingConfig {
        policies: vec![
            probabilistic("nan", f64::NAN),
            probabilistic("big", 1e9),
            rate_limit("neg", -3.0),
            rate_limit("inf", f64::INFINITY),
            and("", vec![]),
            slow_span("zero", None, 0),
        ],
    };
    let mut s = TailSampler::new(config);
    for t in mixed_stream(50, 1) {
        let d = s.decide(&t);
        assert!(d.sampled);
        assert!(d.adjusted_count >= 1.0 && d.adjusted_count.is_finite());
    }
    // An unnamed top-level policy is recorded by its position.
    let mut s = sampler(vec![error("")]);
    let mut t = ok_trace(1);
    t.spans[0].status = StatusCode::Error;
    assert_eq!(s.decide(&t).policy, Some(Sym::new("policies.0")));
}

// ---- property test against a naive reference for the stateless policies ----

#[derive(Debug, Clone)]
enum RefPolicy {
    Error,
    Slow(Option<CallType>, u64),
    Duration(u64),
    Prob(u8),
}

fn ref_policy() -> impl Strategy<Value = RefPolicy> {
    prop_oneof![
        Just(RefPolicy::Error),
        (
            prop::option::of(prop::sample::select(CallType::ALL.to_vec())),
            1u64..500
        )
            .prop_map(|(c, ms)| RefPolicy::Slow(c, ms * MS)),
        (1u64..1_500).prop_map(|ms| RefPolicy::Duration(ms * MS)),
        (0u8..=100).prop_map(RefPolicy::Prob),
    ]
}

fn ref_span() -> impl Strategy<Value = (u64, u64, CallType, bool, u16)> {
    (
        0u64..1_000,
        0u64..600,
        prop::sample::select(CallType::ALL.to_vec()),
        prop::bool::weighted(0.1),
        prop::sample::select(vec![0u16, 200, 404, 499, 500, 503]),
    )
}

fn ref_trace() -> impl Strategy<Value = ClosedTrace> {
    (any::<[u8; 16]>(), prop::collection::vec(ref_span(), 1..8)).prop_map(|(id, spans)| {
        let spans = spans
            .into_iter()
            .enumerate()
            .map(|(i, (end_ms, dur_ms, ct, err, http))| {
                // Durations land on and around the millisecond thresholds.
                let dur = dur_ms * MS + (end_ms % 3);
                let mut s = span(i as u8 + 1, u8::from(i > 0), T0 + S + end_ms * MS, dur, ct);
                s.status = if err {
                    StatusCode::Error
                } else {
                    StatusCode::Unset
                };
                s.http_status = http;
                s
            })
            .collect();
        trace(TraceId(id), spans)
    })
}

fn naive_matches(p: &RefPolicy, t: &ClosedTrace) -> bool {
    match p {
        RefPolicy::Error => t
            .spans
            .iter()
            .any(|s| s.status == StatusCode::Error || s.http_status >= 500),
        RefPolicy::Slow(ct, thr) => t
            .spans
            .iter()
            .any(|s| (ct.is_none() || Some(s.call_type) == *ct) && s.end_ns - s.start_ns > *thr),
        RefPolicy::Duration(thr) => {
            let start = t.spans.iter().map(|s| s.start_ns).min().unwrap();
            let end = t.spans.iter().map(|s| s.end_ns).max().unwrap();
            end - start > *thr
        }
        RefPolicy::Prob(pct) => (t.trace_id.hash64() as u128) * 100 < u128::from(*pct) << 64,
    }
}

fn to_config(i: usize, p: &RefPolicy) -> PolicyConfig {
    let name = format!("p{i}");
    match p {
        RefPolicy::Error => error(&name),
        RefPolicy::Slow(ct, thr) => PolicyConfig::SlowSpan {
            name,
            call_type: *ct,
            threshold: HumanDuration(std::time::Duration::from_nanos(*thr)),
        },
        RefPolicy::Duration(thr) => PolicyConfig::TraceDuration {
            name,
            threshold: HumanDuration(std::time::Duration::from_nanos(*thr)),
        },
        RefPolicy::Prob(pct) => probabilistic(&name, f64::from(*pct)),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn matches_naive_reference(
        policies in prop::collection::vec(ref_policy(), 1..5),
        traces in prop::collection::vec(ref_trace(), 1..20),
    ) {
        let config = TailSamplingConfig {
            policies: policies.iter().enumerate().map(|(i, p)| to_config(i, p)).collect(),
        };
        prop_assert!(config.validate().is_empty());
        let mut s = TailSampler::new(config);
        for t in &traces {
            let d = s.decide(t);
            let matches: Vec<bool> = policies.iter().map(|p| naive_matches(p, t)).collect();
            let first = matches.iter().position(|m| *m);
            prop_assert_eq!(d.sampled, first.is_some());
            prop_assert_eq!(d.policy, first.map(|i| Sym::new(&format!("p{i}"))));
            let deterministic = policies
                .iter()
                .zip(&matches)
                .any(|(p, m)| *m && !matches!(p, RefPolicy::Prob(pct) if *pct < 100));
            let widest = policies
                .iter()
                .zip(&matches)
                .filter_map(|(p, m)| match p {
                    RefPolicy::Prob(pct) if *m => Some(*pct),
                    _ => None,
                })
                .max();
            let want = match (first, deterministic, widest) {
                (None, _, _) => 0.0,
                (Some(_), true, _) => 1.0,
                (Some(_), false, Some(pct)) => 100.0 / f64::from(pct),
                (Some(_), false, None) => unreachable!(),
            };
            prop_assert_eq!(d.adjusted_count, want);
        }
        let m = s.metrics();
        prop_assert_eq!(m.traces_seen, traces.len() as u64);
    }
}
