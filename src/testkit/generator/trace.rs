//! Generation of one trace: the call tree, its timing, its errors and its async tail.
//!
//! Spans are produced in a compact form ([`GenSpan`]: attribute keys are static
//! strings, repeated values shared `Arc<str>`s) that the encoder turns into OTLP
//! protobuf or JSON once a record is complete.

use std::fmt::Write as _;
use std::sync::Arc;

use rand::{Rng, RngCore};
use rand_chacha::ChaCha8Rng;
use spanflow_operators::CallType;

use super::fleet::{
    CONSUMER_LAYER, Call, Fleet, GATEWAY, PathPart, Protocol, Semconv, SqlPart, Step, Target, pick,
    push_uuid,
};
use super::rand_util::{between, chance, log_between};

const US: u64 = 1_000;
const MS: u64 = 1_000_000;
const SEC: u64 = 1_000_000_000;

/// OTLP span kinds.
pub(super) const KIND_INTERNAL: i32 = 1;
pub(super) const KIND_SERVER: i32 = 2;
pub(super) const KIND_CLIENT: i32 = 3;
pub(super) const KIND_PRODUCER: i32 = 4;
pub(super) const KIND_CONSUMER: i32 = 5;

/// Trace-level facts, carried by the root span so ground truth counts a trace when its
/// root is emitted.
pub(super) const FACT_ERROR: u8 = 1;
pub(super) const FACT_ASYNC: u8 = 2;
pub(super) const FACT_LONG: u8 = 4;

/// Probability that a span whose child failed fails too (errors propagate upward, but
/// callers sometimes recover with a fallback).
const PROPAGATE: f64 = 0.8;

/// Probability of a 404 on a GET by id that did not fail (4xx is not an error).
const NOT_FOUND: f64 = 0.005;

/// Batch jobs stop scheduling work this long before their planned end, which leaves
/// room for the last unit (slow queries included) and the async tail: a long trace
/// never exceeds three minutes.
const BATCH_MARGIN: u64 = 20 * SEC;

/// Value of an attribute.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Val {
    Static(&'static str),
    Shared(Arc<str>),
    Owned(String),
    Int(i64),
}

impl Val {
    /// The text of a string value.
    pub(super) fn as_str(&self) -> Option<&str> {
        match self {
            Val::Static(s) => Some(s),
            Val::Shared(s) => Some(s),
            Val::Owned(s) => Some(s),
            Val::Int(_) => None,
        }
    }
}

/// A span waiting to be exported.
#[derive(Debug, Clone)]
pub(super) struct GenSpan {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// All zero for the root.
    pub parent: [u8; 8],
    pub start: u64,
    pub end: u64,
    /// When the exporter delivers it (set by the emitter).
    pub arrival: u64,
    /// Tie-breaker that keeps equal arrivals in generation order.
    pub seq: u64,
    pub name: Arc<str>,
    pub kind: i32,
    /// Global instance index (resource).
    pub instance: u32,
    pub call_type: CallType,
    /// HTTP response status, 0 for non-HTTP spans.
    pub http_status: u16,
    /// Status ERROR.
    pub error: bool,
    pub status_message: &'static str,
    /// Delivered `late_delay` after its end.
    pub late: bool,
    /// `FACT_*` bits, on the root only.
    pub facts: u8,
    pub attrs: Vec<(&'static str, Val)>,
}

impl GenSpan {
    /// The error rule of `spanflow_operators::Span::is_error`.
    pub(super) fn is_error(&self) -> bool {
        self.error || self.http_status >= 500
    }

    pub(super) fn is_root(&self) -> bool {
        self.parent == [0; 8]
    }
}

/// The probabilities that shape traces.
#[derive(Debug, Clone)]
pub(super) struct TraceParams {
    pub error_rate: f64,
    pub slow_db_rate: f64,
    pub async_fraction: f64,
    pub long_trace_fraction: f64,
}

/// Generates one trace starting at `start` into `out` (which the caller cleared).
/// The root span ends up in `out[0]`; its `facts` describe the trace.
pub(super) fn generate(
    fleet: &Fleet,
    params: &TraceParams,
    rng: &mut ChaCha8Rng,
    start: u64,
    out: &mut Vec<GenSpan>,
) {
    let long = chance(rng, params.long_trace_fraction);
    let publish = if !fleet.topics.is_empty() && chance(rng, params.async_fraction) {
        Publish::Pending
    } else {
        Publish::Off
    };
    let mut trace_id = [0u8; 16];
    while trace_id == [0; 16] {
        rng.fill_bytes(&mut trace_id);
    }
    let mut g = TraceGen {
        fleet,
        params,
        rng,
        out,
        trace_id,
        publish,
    };
    let ip = pick(g.rng, &fleet.external_ips)
        .cloned()
        .unwrap_or_else(|| Arc::from("203.0.113.7"));
    let user_agent = BROWSERS[g.rng.random_range(0..BROWSERS.len())];
    let inst = fleet.pick_instance(g.rng, GATEWAY);
    if long {
        g.long_root(inst, start, ip, user_agent);
    } else {
        let route = fleet.pick_route(g.rng);
        let path = g.render_path(GATEWAY, route);
        g.server(
            GATEWAY,
            route,
            inst,
            [0; 8],
            start,
            &Caller::External { ip, user_agent },
            &path,
            u8::MAX,
        );
    }
    if let Publish::Done { producer, topic } = g.publish {
        let root_end = g.out.iter().rfind(|s| s.is_root()).map_or(start, |r| r.end);
        g.consume(producer, topic, root_end);
    }
    // Children are pushed before their parents, so the root comes after the main tree;
    // move it to the front where the emitter looks for it.
    if let Some(root_pos) = g.out.iter().position(GenSpan::is_root) {
        g.out.swap(0, root_pos);
    }
    let mut facts = 0;
    if long {
        facts |= FACT_LONG;
    }
    if !matches!(g.publish, Publish::Off) {
        facts |= FACT_ASYNC;
    }
    if g.out.iter().any(GenSpan::is_error) {
        facts |= FACT_ERROR;
    }
    if let Some(root) = g.out.first_mut() {
        root.facts = facts;
    }
}

const BROWSERS: &[&str] = &[
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_7_1) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "shop-android/5.12.0 (Linux; Android 14; Pixel 8)",
];

/// Who sent a request to a server span.
enum Caller {
    /// An end user through the internet.
    External {
        ip: Arc<str>,
        user_agent: &'static str,
    },
    /// Another instance of the fleet.
    Instance(u32),
}

/// Whether this trace hands work to the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Publish {
    Off,
    /// Chosen but not placed yet: the first server span of layer 2+ to finish (or else
    /// the root) publishes.
    Pending,
    /// `producer` indexes `out`; read its end only after batch jobs shifted their units.
    Done {
        producer: usize,
        topic: usize,
    },
    /// The publish call failed: no consumer.
    Failed,
}

/// What a call returned to its caller.
#[derive(Debug, Clone, Copy)]
struct Outcome {
    end: u64,
    failed: bool,
    /// True when the work was an outbound call (as opposed to local work).
    call: bool,
}

struct TraceGen<'a> {
    fleet: &'a Fleet,
    params: &'a TraceParams,
    rng: &'a mut ChaCha8Rng,
    out: &'a mut Vec<GenSpan>,
    trace_id: [u8; 16],
    publish: Publish,
}

impl TraceGen<'_> {
    fn span_id(&mut self) -> [u8; 8] {
        loop {
            let v = self.rng.next_u64();
            if v != 0 {
                return v.to_le_bytes();
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        span_id: [u8; 8],
        parent: [u8; 8],
        (start, end): (u64, u64),
        name: Arc<str>,
        kind: i32,
        instance: u32,
        call_type: CallType,
        (http_status, error, status_message): (u16, bool, &'static str),
        attrs: Vec<(&'static str, Val)>,
    ) {
        self.out.push(GenSpan {
            trace_id: self.trace_id,
            span_id,
            parent,
            start,
            end,
            arrival: 0,
            seq: 0,
            name,
            kind,
            instance,
            call_type,
            http_status,
            // Every 5xx is also status ERROR, so both halves of the error rule agree.
            error: error || http_status >= 500,
            status_message,
            late: false,
            facts: 0,
            attrs,
        });
    }

    fn render_path(&mut self, svc: u32, ep: u32) -> String {
        let endpoint = &self.fleet.services[svc as usize].endpoints[ep as usize];
        let mut path = String::with_capacity(48);
        for part in &endpoint.path {
            match part {
                PathPart::Lit(s) => path.push_str(s),
                PathPart::Id => {
                    let _ = write!(path, "{}", self.rng.random_range(1..1_000_000u32));
                }
                PathPart::Uuid => push_uuid(self.rng, &mut path),
            }
        }
        path
    }

    /// A server span of `svc`/`ep` on instance `inst` and the work under it.
    #[allow(clippy::too_many_arguments)]
    fn server(
        &mut self,
        svc_i: u32,
        ep_i: u32,
        inst: u32,
        parent: [u8; 8],
        start: u64,
        caller: &Caller,
        path: &str,
        depth: u8,
    ) -> (u64, bool, u16, i64) {
        let fleet = self.fleet;
        let svc = &fleet.services[svc_i as usize];
        let ep = &svc.endpoints[ep_i as usize];
        let id = self.span_id();
        let cursor = start + between(self.rng, 30 * US, 2 * MS);
        let run = self.run_plan(svc_i, &ep.plan, inst, id, cursor, depth);
        let (mut cursor, mut child_failed, mut calls) = (run.end, run.failed, run.call);
        if self.publish == Publish::Pending && (svc.layer >= 2 || parent == [0; 8]) {
            let at = cursor + between(self.rng, 10 * US, 200 * US);
            let o = self.produce(svc_i, inst, id, at);
            cursor = o.end;
            child_failed |= o.failed;
            calls = true;
        }
        let end = cursor + between(self.rng, 20 * US, MS);
        let failed = if child_failed {
            chance(self.rng, PROPAGATE)
        } else {
            // Only a leaf fails on its own; inner services fail because of a child.
            !calls && chance(self.rng, self.params.error_rate)
        };
        let old = svc.semconv == Semconv::Old;
        let (peer_ip, user_agent) = match caller {
            Caller::External { ip, user_agent } => (ip.clone(), *user_agent),
            Caller::Instance(i) => {
                let c = &fleet.instances[*i as usize];
                (
                    c.ip.clone(),
                    fleet.services[c.service as usize].lang.user_agent(),
                )
            }
        };
        match svc.protocol {
            Protocol::Http => {
                let status: u16 = if failed {
                    let codes: [u16; 2] = if calls { [500, 502] } else { [500, 503] };
                    codes[self.rng.random_range(0..2)]
                } else if ep.method == "GET" && ep.has_id && chance(self.rng, NOT_FOUND) {
                    404
                } else {
                    match ep.method {
                        "POST" => 201,
                        _ => 200,
                    }
                };
                let root = parent == [0; 8];
                let (scheme, host, port) = if root {
                    ("https", fleet.public_host.clone(), 443)
                } else {
                    ("http", svc.name.clone(), svc.port)
                };
                let version = if root { "2" } else { "1.1" };
                let peer_port = Val::Int(self.rng.random_range(32768..61000));
                let mut a = Vec::with_capacity(13);
                if old {
                    let target = match ep.query {
                        Some(q) => format!("{path}?{q}"),
                        None => path.to_owned(),
                    };
                    a.push(("http.method", Val::Static(ep.method)));
                    a.push(("http.route", Val::Shared(ep.route.clone())));
                    a.push(("http.target", Val::Owned(target)));
                    a.push(("http.scheme", Val::Static(scheme)));
                    a.push(("http.status_code", Val::Int(i64::from(status))));
                    a.push(("http.user_agent", Val::Static(user_agent)));
                    a.push(("http.client_ip", Val::Shared(peer_ip.clone())));
                    a.push(("http.flavor", Val::Static(version)));
                    a.push(("net.host.name", Val::Shared(host)));
                    a.push(("net.host.port", Val::Int(port)));
                    a.push(("net.sock.peer.addr", Val::Shared(peer_ip)));
                } else {
                    a.push(("http.request.method", Val::Static(ep.method)));
                    a.push(("http.route", Val::Shared(ep.route.clone())));
                    a.push(("url.path", Val::Owned(path.to_owned())));
                    a.push(("url.scheme", Val::Static(scheme)));
                    if let Some(q) = ep.query {
                        a.push(("url.query", Val::Static(q)));
                    }
                    a.push(("http.response.status_code", Val::Int(i64::from(status))));
                    a.push(("user_agent.original", Val::Static(user_agent)));
                    a.push(("client.address", Val::Shared(peer_ip)));
                    a.push(("network.protocol.version", Val::Static(version)));
                    a.push(("server.address", Val::Shared(host)));
                    a.push(("server.port", Val::Int(port)));
                    a.push(("network.peer.port", peer_port));
                    if status >= 500 {
                        a.push(("error.type", Val::Static(status_text(status))));
                    }
                }
                self.push(
                    id,
                    parent,
                    (start, end),
                    ep.server_name.clone(),
                    KIND_SERVER,
                    inst,
                    CallType::Http,
                    (status, failed, ""),
                    a,
                );
                (end, failed, status, 0)
            }
            Protocol::Grpc => {
                let code: i64 = if failed {
                    if calls {
                        [13, 2][self.rng.random_range(0..2)]
                    } else {
                        [14, 4][self.rng.random_range(0..2)]
                    }
                } else {
                    0
                };
                let mut a = Vec::with_capacity(7);
                a.push(("rpc.system", Val::Static("grpc")));
                a.push(("rpc.service", Val::Shared(ep.rpc_service.clone())));
                a.push(("rpc.method", Val::Shared(ep.rpc_method.clone())));
                a.push(("rpc.grpc.status_code", Val::Int(code)));
                if old {
                    a.push(("net.sock.peer.addr", Val::Shared(peer_ip)));
                    a.push(("net.host.name", Val::Shared(svc.name.clone())));
                } else {
                    a.push(("client.address", Val::Shared(peer_ip)));
                    a.push(("server.address", Val::Shared(svc.name.clone())));
                }
                self.push(
                    id,
                    parent,
                    (start, end),
                    ep.server_name.clone(),
                    KIND_SERVER,
                    inst,
                    CallType::Rpc,
                    (0, failed, grpc_message(code)),
                    a,
                );
                (end, failed, 0, code)
            }
        }
    }

    /// Runs a plan under span `parent` from `cursor`; returns the end of the last step,
    /// whether a call failed, and whether any outbound call was made.
    fn run_plan(
        &mut self,
        svc: u32,
        plan: &[Step],
        inst: u32,
        parent: [u8; 8],
        mut cursor: u64,
        depth: u8,
    ) -> Outcome {
        let mut failed = false;
        let mut calls = false;
        for step in plan {
            match step {
                Step::One(call) => {
                    if !chance(self.rng, call.p) {
                        continue;
                    }
                    let times = between(self.rng, u64::from(call.times.0), u64::from(call.times.1));
                    for _ in 0..times {
                        let at = cursor + between(self.rng, 10 * US, 200 * US);
                        if let Some(o) = self.call(svc, inst, parent, call, at, depth) {
                            cursor = o.end;
                            failed |= o.failed;
                            calls |= o.call;
                        }
                    }
                }
                Step::Parallel(group) => {
                    let base = cursor + between(self.rng, 10 * US, 200 * US);
                    let mut end = cursor;
                    for call in group {
                        if !chance(self.rng, call.p) {
                            continue;
                        }
                        let at = base + between(self.rng, 0, 80 * US);
                        if let Some(o) = self.call(svc, inst, parent, call, at, depth) {
                            end = end.max(o.end);
                            failed |= o.failed;
                            calls |= o.call;
                        }
                    }
                    cursor = end;
                }
            }
        }
        Outcome {
            end: cursor,
            failed,
            call: calls,
        }
    }

    fn call(
        &mut self,
        svc: u32,
        inst: u32,
        parent: [u8; 8],
        call: &Call,
        at: u64,
        depth: u8,
    ) -> Option<Outcome> {
        match call.target {
            Target::Service { svc: callee, ep } => {
                (depth > 0).then(|| self.remote_call(svc, inst, parent, callee, ep, at, depth - 1))
            }
            Target::Db(q) => self.db_call(svc, inst, parent, q, at),
            Target::Cache(op) => self.cache_call(svc, inst, parent, op, at),
            Target::Local(l) => Some(self.local(svc, inst, parent, l, at)),
        }
    }

    /// A client span in the caller and the server span (with its subtree) in the callee;
    /// `depth` is how many further levels of service calls the callee may make.
    #[allow(clippy::too_many_arguments)]
    fn remote_call(
        &mut self,
        caller_svc: u32,
        caller_inst: u32,
        parent: [u8; 8],
        callee: u32,
        ep_i: u32,
        start: u64,
        depth: u8,
    ) -> Outcome {
        let fleet = self.fleet;
        let caller = &fleet.services[caller_svc as usize];
        let target = &fleet.services[callee as usize];
        let ep = &target.endpoints[ep_i as usize];
        let id = self.span_id();
        let callee_inst = fleet.pick_instance(self.rng, callee);
        let path = match target.protocol {
            Protocol::Http => self.render_path(callee, ep_i),
            Protocol::Grpc => String::new(),
        };
        let server_start = start + between(self.rng, 150 * US, 1200 * US);
        let (server_end, failed, status, code) = self.server(
            callee,
            ep_i,
            callee_inst,
            id,
            server_start,
            &Caller::Instance(caller_inst),
            &path,
            depth,
        );
        let end = server_end + between(self.rng, 100 * US, MS);
        let old = caller.semconv == Semconv::Old;
        let (host_key, port_key) = if old {
            ("net.peer.name", "net.peer.port")
        } else {
            ("server.address", "server.port")
        };
        match target.protocol {
            Protocol::Http => {
                let mut url = String::with_capacity(target.url_prefix.len() + path.len() + 24);
                url.push_str(&target.url_prefix);
                url.push_str(&path);
                if let Some(q) = ep.query {
                    url.push('?');
                    url.push_str(q);
                }
                let mut a = Vec::with_capacity(7);
                a.push((
                    if old {
                        "http.method"
                    } else {
                        "http.request.method"
                    },
                    Val::Static(ep.method),
                ));
                a.push((if old { "http.url" } else { "url.full" }, Val::Owned(url)));
                a.push((host_key, Val::Shared(target.name.clone())));
                a.push((port_key, Val::Int(target.port)));
                a.push((
                    if old {
                        "http.status_code"
                    } else {
                        "http.response.status_code"
                    },
                    Val::Int(i64::from(status)),
                ));
                a.push((
                    if old {
                        "http.flavor"
                    } else {
                        "network.protocol.version"
                    },
                    Val::Static("1.1"),
                ));
                if !old && status >= 500 {
                    a.push(("error.type", Val::Static(status_text(status))));
                }
                self.push(
                    id,
                    parent,
                    (start, end),
                    ep.client_name.clone(),
                    KIND_CLIENT,
                    caller_inst,
                    CallType::Http,
                    (status, failed, ""),
                    a,
                );
            }
            Protocol::Grpc => {
                let a = vec![
                    ("rpc.system", Val::Static("grpc")),
                    ("rpc.service", Val::Shared(ep.rpc_service.clone())),
                    ("rpc.method", Val::Shared(ep.rpc_method.clone())),
                    (host_key, Val::Shared(target.name.clone())),
                    (port_key, Val::Int(target.port)),
                    ("rpc.grpc.status_code", Val::Int(code)),
                ];
                self.push(
                    id,
                    parent,
                    (start, end),
                    ep.client_name.clone(),
                    KIND_CLIENT,
                    caller_inst,
                    CallType::Rpc,
                    (0, failed, grpc_message(code)),
                    a,
                );
            }
        }
        Outcome {
            end,
            failed,
            call: true,
        }
    }

    fn db_call(
        &mut self,
        svc_i: u32,
        inst: u32,
        parent: [u8; 8],
        q: u32,
        start: u64,
    ) -> Option<Outcome> {
        let svc = &self.fleet.services[svc_i as usize];
        let db = svc.db.as_ref()?;
        let query = db.queries.get(q as usize)?;
        let duration = if chance(self.rng, self.params.slow_db_rate) {
            log_between(self.rng, 200 * MS, 2 * SEC)
        } else {
            log_between(self.rng, 300 * US, 20 * MS)
        };
        let end = start + duration;
        let failed = chance(self.rng, self.params.error_rate);
        let mut text = String::with_capacity(96);
        for part in &query.text {
            match part {
                SqlPart::Lit(s) => text.push_str(s),
                SqlPart::Num => {
                    let _ = write!(text, "{}", self.rng.random_range(1..100_000u32));
                }
                SqlPart::Code => {
                    let a = char::from(b'A' + self.rng.random_range(0..26u8));
                    let b = char::from(b'A' + self.rng.random_range(0..26u8));
                    let _ = write!(
                        text,
                        "'{a}{b}-{}'",
                        self.rng.random_range(10_000..100_000u32)
                    );
                }
            }
        }
        let old = svc.semconv == Semconv::Old;
        let mut a = Vec::with_capacity(8);
        if old {
            a.push(("db.system", Val::Static(db.system)));
            a.push(("db.name", Val::Shared(db.namespace.clone())));
            a.push(("db.statement", Val::Owned(text)));
            a.push(("db.operation", Val::Static(query.operation)));
            a.push(("db.sql.table", Val::Shared(query.table.clone())));
            a.push(("net.peer.name", Val::Shared(db.host.clone())));
            a.push(("net.peer.port", Val::Int(db.port)));
        } else {
            a.push(("db.system.name", Val::Static(db.system)));
            a.push(("db.namespace", Val::Shared(db.namespace.clone())));
            a.push(("db.query.text", Val::Owned(text)));
            a.push(("db.operation.name", Val::Static(query.operation)));
            a.push(("db.collection.name", Val::Shared(query.table.clone())));
            a.push(("server.address", Val::Shared(db.host.clone())));
            a.push(("server.port", Val::Int(db.port)));
            if failed {
                a.push((
                    "error.type",
                    Val::Static(if db.system == "mysql" {
                        "1205"
                    } else {
                        "57014"
                    }),
                ));
            }
        }
        let message = if !failed {
            ""
        } else if db.system == "mysql" {
            "Lock wait timeout exceeded; try restarting transaction"
        } else {
            "canceling statement due to statement timeout"
        };
        let id = self.span_id();
        self.push(
            id,
            parent,
            (start, end),
            query.name.clone(),
            KIND_CLIENT,
            inst,
            CallType::Db,
            (0, failed, message),
            a,
        );
        Some(Outcome {
            end,
            failed,
            call: true,
        })
    }

    fn cache_call(
        &mut self,
        svc_i: u32,
        inst: u32,
        parent: [u8; 8],
        op: u32,
        start: u64,
    ) -> Option<Outcome> {
        let svc = &self.fleet.services[svc_i as usize];
        let cache = svc.cache.as_ref()?;
        let op = cache.ops.get(op as usize)?;
        let end = start + log_between(self.rng, 100 * US, 2 * MS);
        let failed = chance(self.rng, self.params.error_rate);
        let mut text = String::with_capacity(32);
        let _ = write!(
            text,
            "{} {}{}",
            op.op,
            op.key_prefix,
            self.rng.random_range(1..1_000_000u32)
        );
        if op.write && op.op == "SET" {
            text.push_str(" ?");
        }
        let old = svc.semconv == Semconv::Old;
        let a = if old {
            vec![
                ("db.system", Val::Static("redis")),
                ("db.operation", Val::Static(op.op)),
                ("db.statement", Val::Owned(text)),
                ("db.redis.database_index", Val::Int(0)),
                ("net.peer.name", Val::Shared(cache.host.clone())),
                ("net.peer.port", Val::Int(6379)),
            ]
        } else {
            vec![
                ("db.system.name", Val::Static("redis")),
                ("db.operation.name", Val::Static(op.op)),
                ("db.query.text", Val::Owned(text)),
                ("db.namespace", Val::Static("0")),
                ("server.address", Val::Shared(cache.host.clone())),
                ("server.port", Val::Int(6379)),
            ]
        };
        let id = self.span_id();
        self.push(
            id,
            parent,
            (start, end),
            op.name.clone(),
            KIND_CLIENT,
            inst,
            CallType::Cache,
            (
                0,
                failed,
                if failed {
                    "READONLY You can't write against a read only replica."
                } else {
                    ""
                },
            ),
            a,
        );
        Some(Outcome {
            end,
            failed,
            call: true,
        })
    }

    fn local(&mut self, svc_i: u32, inst: u32, parent: [u8; 8], l: u32, start: u64) -> Outcome {
        let svc = &self.fleet.services[svc_i as usize];
        let name = svc
            .locals
            .get(l as usize)
            .or(svc.locals.first())
            .cloned()
            .unwrap_or_else(|| Arc::from("work"));
        let end = start + log_between(self.rng, 50 * US, 5 * MS);
        let id = self.span_id();
        let a = vec![("code.function", Val::Shared(name.clone()))];
        self.push(
            id,
            parent,
            (start, end),
            name,
            KIND_INTERNAL,
            inst,
            CallType::Local,
            (0, false, ""),
            a,
        );
        Outcome {
            end,
            failed: false,
            call: false,
        }
    }

    /// The producer span that hands the trace to the queue.
    fn produce(&mut self, svc_i: u32, inst: u32, parent: [u8; 8], start: u64) -> Outcome {
        let fleet = self.fleet;
        let t = self.rng.random_range(0..fleet.topics.len());
        let topic = &fleet.topics[t];
        let end = start + log_between(self.rng, 500 * US, 4 * MS);
        let failed = chance(self.rng, self.params.error_rate);
        let old = fleet.services[svc_i as usize].semconv == Semconv::Old;
        let a = vec![
            ("messaging.system", Val::Static("kafka")),
            (
                "messaging.destination.name",
                Val::Shared(topic.name.clone()),
            ),
            ("messaging.operation", Val::Static("publish")),
            (
                "messaging.kafka.destination.partition",
                Val::Int(self.rng.random_range(0..12)),
            ),
            (
                if old {
                    "net.peer.name"
                } else {
                    "server.address"
                },
                Val::Shared(fleet.kafka_host.clone()),
            ),
        ];
        let id = self.span_id();
        self.publish = if failed {
            Publish::Failed
        } else {
            Publish::Done {
                producer: self.out.len(),
                topic: t,
            }
        };
        self.push(
            id,
            parent,
            (start, end),
            topic.publish_name.clone(),
            KIND_PRODUCER,
            inst,
            CallType::Mq,
            (
                0,
                failed,
                if failed {
                    "TimeoutException: Expiring 1 record(s) after 30000 ms"
                } else {
                    ""
                },
            ),
            a,
        );
        Outcome {
            end,
            failed,
            call: true,
        }
    }

    /// The consumer span, 1-5 s after the producer, and its own queries. It never
    /// starts before the root ended: the message is handled after the request that
    /// sent it returned (rarely, when the root ends more than a second after the
    /// publish, that makes the queue lag exceed 5 s).
    fn consume(&mut self, producer: usize, t: usize, root_end: u64) {
        let fleet = self.fleet;
        let Some(prod) = self.out.get(producer) else {
            return;
        };
        let (parent, produced) = (prod.span_id, prod.end);
        let topic = &fleet.topics[t];
        let svc_i = topic.consumer;
        let svc = &fleet.services[svc_i as usize];
        debug_assert_eq!(svc.layer, CONSUMER_LAYER);
        let inst = fleet.pick_instance(self.rng, svc_i);
        let id = self.span_id();
        let start = (produced + between(self.rng, SEC, 5 * SEC))
            .max(root_end + between(self.rng, MS, 100 * MS));
        let cursor = start + between(self.rng, 50 * US, MS);
        let plan = svc.endpoints.first().map_or(&[][..], |e| &e.plan[..]);
        let run = self.run_plan(svc_i, plan, inst, id, cursor, 0);
        let end = run.end + between(self.rng, 20 * US, 500 * US);
        let failed = if run.failed {
            chance(self.rng, PROPAGATE)
        } else {
            !run.call && chance(self.rng, self.params.error_rate)
        };
        let a = vec![
            ("messaging.system", Val::Static("kafka")),
            (
                "messaging.destination.name",
                Val::Shared(topic.name.clone()),
            ),
            ("messaging.operation", Val::Static("process")),
            (
                "messaging.kafka.consumer.group",
                Val::Shared(svc.name.clone()),
            ),
            (
                "messaging.kafka.message.offset",
                Val::Int(self.rng.random_range(0..50_000_000)),
            ),
        ];
        self.push(
            id,
            parent,
            (start, end),
            topic.process_name.clone(),
            KIND_CONSUMER,
            inst,
            CallType::Mq,
            (
                0,
                failed,
                if failed { "message handler failed" } else { "" },
            ),
            a,
        );
    }

    /// A batch job: the gateway's batch endpoint calls service after service for one to
    /// three minutes, 100-400 spans in all.
    fn long_root(&mut self, inst: u32, start: u64, ip: Arc<str>, user_agent: &'static str) {
        let fleet = self.fleet;
        let duration = between(self.rng, 60 * SEC, 160 * SEC);
        // Leave room for the async tail (at most ~7 spans) under the 400-span cap.
        let target = between(self.rng, 100, 360) as usize;
        let id = self.span_id();
        let first = self.out.len();
        let mut cursor = start + between(self.rng, 100 * US, 2 * MS);
        let mut units: Vec<(usize, usize)> = Vec::new();
        let mut failed = false;
        while self.out.len() - first < target && cursor + BATCH_MARGIN < start + duration {
            let Some(&(svc, ep)) = pick(self.rng, &fleet.batch_targets) else {
                break;
            };
            let from = self.out.len();
            // Depth 0: the callee runs its own queries but calls no further services,
            // which keeps each unit small and the span count in range.
            let at = cursor + between(self.rng, 10 * US, 100 * US);
            let o = self.remote_call(GATEWAY, inst, id, svc, ep, at, 0);
            failed |= o.failed;
            cursor = o.end;
            units.push((from, self.out.len()));
        }
        // Units ran back to back; spread them over the job's duration, the way a batch
        // job paces itself.
        let busy = cursor - start;
        let idle = (start + duration).saturating_sub(cursor + MS);
        let gap = if units.is_empty() {
            0
        } else {
            idle / units.len() as u64
        };
        for (j, &(from, to)) in units.iter().enumerate() {
            let shift = gap * j as u64;
            for s in &mut self.out[from..to] {
                s.start += shift;
                s.end += shift;
            }
        }
        let last = self.out[first..]
            .iter()
            .map(|s| s.end)
            .max()
            .unwrap_or(start + busy);
        let mut end = (start + duration).max(last + between(self.rng, 50 * US, MS));
        let mut child_failed = failed;
        if self.publish == Publish::Pending {
            let o = self.produce(GATEWAY, inst, id, end);
            child_failed |= o.failed;
            end = o.end + between(self.rng, 20 * US, 500 * US);
        }
        let failed = child_failed && chance(self.rng, PROPAGATE);
        let status: u16 = if failed { 500 } else { 200 };
        let ep = &fleet.services[GATEWAY as usize].endpoints[fleet.batch_endpoint as usize];
        let mut path = String::from("/api/admin/jobs/");
        let _ = write!(path, "{}/run", self.rng.random_range(1..100_000u32));
        let a = vec![
            ("http.request.method", Val::Static("POST")),
            ("http.route", Val::Shared(ep.route.clone())),
            ("url.path", Val::Owned(path)),
            ("url.scheme", Val::Static("https")),
            ("http.response.status_code", Val::Int(i64::from(status))),
            ("user_agent.original", Val::Static(user_agent)),
            ("client.address", Val::Shared(ip)),
            ("network.protocol.version", Val::Static("2")),
            ("server.address", Val::Shared(fleet.public_host.clone())),
            ("server.port", Val::Int(443)),
            (
                "network.peer.port",
                Val::Int(self.rng.random_range(32768..61000)),
            ),
        ];
        self.push(
            id,
            [0; 8],
            (start, end),
            ep.server_name.clone(),
            KIND_SERVER,
            inst,
            CallType::Http,
            (status, failed, ""),
            a,
        );
    }
}

fn status_text(code: u16) -> &'static str {
    match code {
        500 => "500",
        502 => "502",
        503 => "503",
        _ => "_OTHER",
    }
}

fn grpc_message(code: i64) -> &'static str {
    match code {
        2 => "rpc error: code = Unknown",
        4 => "rpc error: code = DeadlineExceeded desc = context deadline exceeded",
        13 => "rpc error: code = Internal",
        14 => "rpc error: code = Unavailable desc = connection refused",
        _ => "",
    }
}
