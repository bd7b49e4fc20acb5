//! From calls to OTLP: spans per call, parent links through the rpcid path, times, and
//! records of `ExportTraceServiceRequest`.

use std::collections::{BTreeMap, HashMap, HashSet};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, InstrumentationScope, KeyValue, any_value::Value,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, span::SpanKind};

use super::calls::{Call, TraceCalls};
use super::rows::{Party, RpcType};
use super::{AlibabaError, EPOCH_UNIX_NS, LinkKind};
use crate::formats::InputFormat;
use crate::testkit::generator::GeneratedRecord;

/// Shortest span: a call with rt 0 still lasts 1 µs, so it has a duration.
const MIN_DURATION_NS: u64 = 1_000;

/// A child that starts at most this long before its parent is moved to the parent's
/// start: millisecond timestamps from different hosts disagree by about that much.
/// Beyond it the data is inconsistent and is left as it is.
const MAX_SHIFT_NS: u64 = 1_000_000_000;

/// Instrumentation scope of every span.
const SCOPE_NAME: &str = "spanflow.import_alibaba";

/// One span to emit.
#[derive(Debug, Clone)]
pub(super) struct OutSpan {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// All zeros for a root span.
    pub parent: [u8; 8],
    pub service: String,
    pub instance: Option<String>,
    pub name: String,
    pub kind: SpanKind,
    pub start: u64,
    pub end: u64,
    pub attrs: Vec<(&'static str, String)>,
    /// spanflow call type name the attributes make the classifier derive.
    pub call_type: &'static str,
}

/// Counters of span building.
#[derive(Debug, Default)]
pub(super) struct BuildStats {
    pub spans_by_call_type: BTreeMap<String, u64>,
    pub spans_by_kind: BTreeMap<String, u64>,
    pub links: BTreeMap<LinkKind, u64>,
    pub shifted_into_parent: u64,
    pub starts_before_parent: u64,
    pub ends_after_parent: u64,
}

/// 16-byte trace id of an Alibaba traceid. A traceid of 1 to 32 hex digits after an
/// optional `T_` prefix (both releases: `0b0127...` and `T_10000326734`) is kept
/// readable, left-padded with zeros; anything else, or all zeros, is hashed.
pub(super) fn trace_id(traceid: &str) -> [u8; 16] {
    let digits = traceid.strip_prefix("T_").unwrap_or(traceid);
    if (1..=32).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        let padded = format!("{digits:0>32}");
        let mut out = [0u8; 16];
        if hex::decode_to_slice(&padded, &mut out).is_ok() && out.iter().any(|b| *b != 0) {
            return out;
        }
    }
    let mut h = fnv128(traceid.as_bytes()).to_be_bytes();
    if h.iter().all(|b| *b == 0) {
        h[15] = 1;
    }
    h
}

/// FNV-1a, 128 bits: stable across Rust and crate versions, unlike std's hasher.
fn fnv128(bytes: &[u8]) -> u128 {
    const OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;
    bytes
        .iter()
        .fold(OFFSET, |h, b| (h ^ u128::from(*b)).wrapping_mul(PRIME))
}

/// FNV-1a, 64 bits, over `parts` separated by a 0 byte, then mixed (splitmix64
/// finalizer) so nearby inputs give unrelated ids.
fn fnv64(parts: &[&[u8]]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    for part in parts {
        for b in *part {
            h = (h ^ u64::from(*b)).wrapping_mul(PRIME);
        }
        // The separator byte (0): XOR with it is a no-op, the multiply is not.
        h = h.wrapping_mul(PRIME);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

fn ms_to_ns(ms: f64) -> u64 {
    // Inputs are validated finite and bounded (rows.rs), so this neither saturates
    // nor loses anything but sub-nanosecond fractions.
    (ms * 1e6).round() as u64
}

/// Which end of a call a span records (part of its id).
#[derive(Clone, Copy)]
enum Side {
    Caller,
    Callee,
}

/// Builds the spans of one trace.
struct TraceBuilder<'a> {
    traceid: &'a str,
    trace_id: [u8; 16],
    spans: Vec<OutSpan>,
    used_ids: HashSet<[u8; 8]>,
    /// Per rpcid: spans in which the call's callee does its work (server, consumer,
    /// or the internal span of a userDefined call), as span indexes.
    entries: HashMap<&'a str, Vec<usize>>,
}

impl<'a> TraceBuilder<'a> {
    fn span_id(&mut self, call: &Call, side: Side) -> [u8; 8] {
        let caller = match &call.caller {
            Party::Service(s) => s.as_str(),
            Party::User => "\u{1}user",
            Party::Unknown => "\u{1}unknown",
        };
        let side = match side {
            Side::Caller => b"caller".as_slice(),
            Side::Callee => b"callee".as_slice(),
        };
        let mut salt = 0u32;
        loop {
            let id = fnv64(&[
                self.traceid.as_bytes(),
                call.rpcid.as_bytes(),
                caller.as_bytes(),
                call.callee.as_bytes(),
                call.rpctype.as_str().as_bytes(),
                side,
                &salt.to_le_bytes(),
            ])
            .to_be_bytes();
            if id != [0; 8] && self.used_ids.insert(id) {
                return id;
            }
            salt += 1;
        }
    }

    /// The id a missing parent call would have had, so that calls under the same
    /// missing call share a (dangling) parent, as in a real trace with a lost span.
    fn missing_parent_id(&self, rpcid: &str) -> [u8; 8] {
        let id = fnv64(&[self.traceid.as_bytes(), rpcid.as_bytes(), b"missing"]).to_be_bytes();
        if id == [0; 8] {
            [0, 0, 0, 0, 0, 0, 0, 1]
        } else {
            id
        }
    }

    /// Parent of the first span of a call whose first span lives in `service` (None:
    /// the caller is unknown) and starts at `start`. See docs/alibaba.md.
    fn find_parent(&self, rpcid: &str, service: Option<&str>, start: u64) -> (LinkKind, Parent) {
        let mut fallback: Option<usize> = None;
        let mut level = 0usize;
        let mut rest = rpcid;
        let mut direct_parent: Option<&str> = None;
        while let Some(dot) = rest.rfind('.') {
            rest = &rest[..dot];
            level += 1;
            if direct_parent.is_none() {
                direct_parent = Some(rest);
            }
            let Some(cands) = self.entries.get(rest) else {
                continue;
            };
            if let Some(want) = service
                && let Some(i) = self.pick(
                    cands
                        .iter()
                        .copied()
                        .filter(|&i| self.spans[i].service == want),
                    start,
                )
            {
                let kind = if level == 1 {
                    LinkKind::ParentCall
                } else {
                    LinkKind::AncestorCall
                };
                return (kind, Parent::Span(i));
            }
            if fallback.is_none() {
                fallback = self.pick(cands.iter().copied(), start);
                if service.is_none() {
                    break;
                }
            }
        }
        match (fallback, direct_parent) {
            (Some(i), _) if service.is_none() => (LinkKind::UnknownCaller, Parent::Span(i)),
            (Some(i), _) => (LinkKind::OtherService, Parent::Span(i)),
            (None, Some(p)) => (LinkKind::Missing, Parent::Id(self.missing_parent_id(p))),
            (None, None) => (LinkKind::Root, Parent::None),
        }
    }

    /// Of candidate parent spans, the one whose interval holds `start`, else the one
    /// starting nearest to it; ties by span id.
    fn pick(&self, cands: impl Iterator<Item = usize>, start: u64) -> Option<usize> {
        cands.min_by_key(|&i| {
            let s = &self.spans[i];
            let holds = s.start <= start && start <= s.end;
            (!holds, s.start.abs_diff(start), s.span_id)
        })
    }

    fn push(&mut self, span: OutSpan) -> usize {
        self.spans.push(span);
        self.spans.len() - 1
    }

    fn add_call(&mut self, call: &'a Call, stats: &mut BuildStats) {
        let base = EPOCH_UNIX_NS + ms_to_ns(call.timestamp_ms);
        let caller_dur = ms_to_ns(call.rt_max_ms).max(MIN_DURATION_NS);
        let callee_dur = ms_to_ns(call.rt_min_ms).max(MIN_DURATION_NS);
        let caller_service = call.caller_service();
        let has_caller_span = caller_service.is_some();
        let has_callee_span = call.rpctype.has_callee_side();

        let first_service = if has_caller_span {
            caller_service
        } else {
            Some(call.callee.as_str())
        };
        let (link, parent) = self.find_parent(
            &call.rpcid,
            if has_caller_span { first_service } else { None },
            base,
        );
        *stats.links.entry(link).or_default() += 1;

        // Times: the caller's span from the earliest timestamp for the largest |rt|;
        // the callee's span, for the smallest |rt|, centered in it.
        let mut start = base;
        let parent_id = match parent {
            Parent::Span(p) => {
                let ps = &self.spans[p];
                if ps.start > start {
                    if ps.start - start <= MAX_SHIFT_NS {
                        stats.shifted_into_parent += 1;
                        start = ps.start;
                    } else {
                        stats.starts_before_parent += 1;
                    }
                }
                let end = start
                    + if has_caller_span {
                        caller_dur
                    } else {
                        callee_dur
                    };
                if end > ps.end {
                    stats.ends_after_parent += 1;
                }
                ps.span_id
            }
            Parent::Id(id) => id,
            Parent::None => [0; 8],
        };

        let iface = call.interface.as_str();
        let rt = call.rpctype;
        let mut caller_idx = None;
        if let Some(service) = caller_service {
            let span_id = self.span_id(call, Side::Caller);
            let (kind, name, attrs) = caller_shape(call, iface);
            let idx = self.push(OutSpan {
                trace_id: self.trace_id,
                span_id,
                parent: parent_id,
                service: service.to_owned(),
                instance: call.caller_instance.clone(),
                name,
                kind,
                start,
                end: start + caller_dur,
                attrs,
                call_type: rt.call_type(),
            });
            caller_idx = Some(idx);
            if rt == RpcType::UserDefined {
                self.entries.entry(&call.rpcid).or_default().push(idx);
            }
        }
        if has_callee_span {
            let (callee_start, parent) = match caller_idx {
                Some(c) => (
                    start + (caller_dur.saturating_sub(callee_dur)) / 2,
                    self.spans[c].span_id,
                ),
                None => (start, parent_id),
            };
            let span_id = self.span_id(call, Side::Callee);
            let (kind, name, attrs) = callee_shape(call, iface);
            let idx = self.push(OutSpan {
                trace_id: self.trace_id,
                span_id,
                parent,
                service: call.callee.clone(),
                instance: call.callee_instance.clone(),
                name,
                kind,
                start: callee_start,
                end: callee_start + callee_dur,
                attrs,
                call_type: rt.call_type(),
            });
            self.entries.entry(&call.rpcid).or_default().push(idx);
        }
    }
}

enum Parent {
    Span(usize),
    Id([u8; 8]),
    None,
}

fn common_attrs(call: &Call) -> Vec<(&'static str, String)> {
    vec![
        ("alibaba.rpc_id", call.rpcid.clone()),
        ("alibaba.rpc_type", call.rpctype.as_str().to_owned()),
    ]
}

fn name_or(iface: &str, default: impl FnOnce() -> String) -> String {
    if iface.is_empty() {
        default()
    } else {
        iface.to_owned()
    }
}

/// Kind, name and attributes of the caller's span.
fn caller_shape(call: &Call, iface: &str) -> (SpanKind, String, Vec<(&'static str, String)>) {
    let mut attrs = common_attrs(call);
    let peer = call.callee.clone();
    match call.rpctype {
        RpcType::Http => {
            http_attrs(&mut attrs, iface);
            attrs.push(("peer.service", peer));
            (SpanKind::Client, name_or(iface, || "HTTP".into()), attrs)
        }
        RpcType::Rpc => {
            rpc_attrs(&mut attrs, iface);
            attrs.push(("peer.service", peer));
            (SpanKind::Client, name_or(iface, || "RPC".into()), attrs)
        }
        RpcType::Db => {
            attrs.push(("db.system", "mysql".into()));
            attrs.push(("peer.service", peer));
            (SpanKind::Client, name_or(iface, || "mysql".into()), attrs)
        }
        RpcType::Mc => {
            attrs.push(("db.system", "memcached".into()));
            attrs.push(("peer.service", peer));
            (
                SpanKind::Client,
                name_or(iface, || "memcached".into()),
                attrs,
            )
        }
        RpcType::Mq => {
            mq_attrs(&mut attrs, &call.callee, "send");
            attrs.push(("peer.service", peer));
            let name = name_or(iface, || format!("send {}", call.callee));
            (SpanKind::Producer, name, attrs)
        }
        RpcType::UserDefined => (
            SpanKind::Internal,
            name_or(iface, || "userDefined".into()),
            attrs,
        ),
    }
}

/// Kind, name and attributes of the callee's span (http, rpc, mq only).
fn callee_shape(call: &Call, iface: &str) -> (SpanKind, String, Vec<(&'static str, String)>) {
    let mut attrs = common_attrs(call);
    match call.rpctype {
        RpcType::Mq => {
            mq_attrs(&mut attrs, &call.callee, "process");
            let name = name_or(iface, || format!("process {}", call.callee));
            (SpanKind::Consumer, name, attrs)
        }
        RpcType::Rpc => {
            rpc_attrs(&mut attrs, iface);
            (SpanKind::Server, name_or(iface, || "RPC".into()), attrs)
        }
        _ => {
            http_attrs(&mut attrs, iface);
            (SpanKind::Server, name_or(iface, || "HTTP".into()), attrs)
        }
    }
}

fn http_attrs(attrs: &mut Vec<(&'static str, String)>, iface: &str) {
    // The CSV has no method; `_OTHER` is the semantic conventions' "unknown method".
    attrs.push(("http.request.method", "_OTHER".into()));
    if !iface.is_empty() {
        attrs.push(("http.route", iface.to_owned()));
    }
}

fn rpc_attrs(attrs: &mut Vec<(&'static str, String)>, iface: &str) {
    attrs.push(("rpc.system", "alibaba".into()));
    if !iface.is_empty() {
        attrs.push(("rpc.method", iface.to_owned()));
    }
}

fn mq_attrs(attrs: &mut Vec<(&'static str, String)>, destination: &str, op: &str) {
    attrs.push(("messaging.system", "kafka".into()));
    attrs.push(("messaging.destination.name", destination.to_owned()));
    attrs.push(("messaging.operation.type", op.to_owned()));
}

/// Spans of every trace, in no particular order.
pub(super) fn build_spans(traces: &[TraceCalls], stats: &mut BuildStats) -> Vec<OutSpan> {
    let mut out = Vec::new();
    for tc in traces {
        let mut b = TraceBuilder {
            traceid: &tc.traceid,
            trace_id: trace_id(&tc.traceid),
            spans: Vec::with_capacity(tc.calls.len() * 2),
            used_ids: HashSet::new(),
            entries: HashMap::new(),
        };
        // Calls are sorted by depth, so every ancestor is placed before its
        // descendants look for it.
        for call in &tc.calls {
            b.add_call(call, stats);
        }
        out.append(&mut b.spans);
    }
    for s in &out {
        *stats
            .spans_by_call_type
            .entry(s.call_type.to_owned())
            .or_default() += 1;
        *stats
            .spans_by_kind
            .entry(kind_name(s.kind).to_owned())
            .or_default() += 1;
    }
    out
}

fn kind_name(k: SpanKind) -> &'static str {
    match k {
        SpanKind::Unspecified => "unspecified",
        SpanKind::Internal => "internal",
        SpanKind::Server => "server",
        SpanKind::Client => "client",
        SpanKind::Producer => "producer",
        SpanKind::Consumer => "consumer",
    }
}

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(value.to_owned())),
        }),
        ..Default::default()
    }
}

fn to_proto(s: &OutSpan) -> Span {
    Span {
        trace_id: s.trace_id.to_vec(),
        span_id: s.span_id.to_vec(),
        parent_span_id: if s.parent == [0; 8] {
            Vec::new()
        } else {
            s.parent.to_vec()
        },
        name: s.name.clone(),
        kind: s.kind as i32,
        start_time_unix_nano: s.start,
        end_time_unix_nano: s.end,
        attributes: s.attrs.iter().map(|(k, v)| kv(k, v)).collect(),
        ..Default::default()
    }
}

/// Orders spans by end time (event time, as a collector would export them) and packs
/// them into records of at most `spans_per_record` spans, grouped by resource.
pub(super) fn encode_records(
    mut spans: Vec<OutSpan>,
    format: InputFormat,
    spans_per_record: usize,
) -> Result<Vec<GeneratedRecord>, AlibabaError> {
    spans.sort_by(|a, b| {
        (a.end, a.trace_id, a.start, a.span_id).cmp(&(b.end, b.trace_id, b.start, b.span_id))
    });
    let scope = InstrumentationScope {
        name: SCOPE_NAME.to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        ..Default::default()
    };
    let mut records = Vec::with_capacity(spans.len().div_ceil(spans_per_record.max(1)));
    for chunk in spans.chunks(spans_per_record.max(1)) {
        let mut groups: Vec<ResourceSpans> = Vec::new();
        let mut group_of: HashMap<(&str, Option<&str>), usize> = HashMap::new();
        for s in chunk {
            let key = (s.service.as_str(), s.instance.as_deref());
            let g = *group_of.entry(key).or_insert_with(|| {
                let mut attributes = vec![kv("service.name", &s.service)];
                if let Some(i) = &s.instance {
                    attributes.push(kv("service.instance.id", i));
                }
                groups.push(ResourceSpans {
                    resource: Some(Resource {
                        attributes,
                        ..Default::default()
                    }),
                    scope_spans: vec![ScopeSpans {
                        scope: Some(scope.clone()),
                        spans: Vec::new(),
                        schema_url: String::new(),
                    }],
                    schema_url: String::new(),
                });
                groups.len() - 1
            });
            if let Some(ss) = groups[g].scope_spans.first_mut() {
                ss.spans.push(to_proto(s));
            }
        }
        let request = ExportTraceServiceRequest {
            resource_spans: groups,
        };
        let payload = match format {
            InputFormat::OtlpProto => prost::Message::encode_to_vec(&request),
            InputFormat::OtlpJson => serde_json::to_vec(&request)
                .map_err(|e| AlibabaError::Internal(format!("cannot encode OTLP JSON: {e}")))?,
            InputFormat::Avro => crate::formats::avro::encode_request(&request)
                .map_err(|e| AlibabaError::Internal(format!("cannot encode Avro: {e}")))?,
        };
        records.push(GeneratedRecord {
            payload,
            arrival_ns: chunk.iter().map(|s| s.end).max().unwrap_or(0),
            garbage: false,
            spans: chunk.len(),
        });
    }
    Ok(records)
}
