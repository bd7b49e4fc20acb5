//! Encoding records: OTLP protobuf (written directly), OTLP JSON (through the
//! `opentelemetry-proto` types) and deliberately undecodable garbage.
//!
//! The protobuf writer emits exactly what prost would for the same message (fields in
//! declaration order, defaults omitted); a test checks that byte for byte. Writing it
//! directly skips building ~25 heap objects per span, which is most of the cost of a
//! generator that should outrun the pipeline it feeds.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use rand::{Rng, RngCore};
use rand_chacha::ChaCha8Rng;

use super::fleet::Fleet;
use super::trace::{GenSpan, Val};
use crate::formats::InputFormat;

const WIRE_VARINT: u32 = 0;
const WIRE_FIXED64: u32 = 1;
const WIRE_LEN: u32 = 2;

/// Appends `v` as a protobuf varint.
#[inline]
pub(super) fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// Bytes of `v` as a varint.
#[inline]
fn varint_len(v: u64) -> usize {
    // 1 byte per started group of 7 bits; 0 still takes one byte.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

#[inline]
fn put_key(buf: &mut Vec<u8>, field: u32, wire: u32) {
    put_varint(buf, u64::from(field << 3 | wire));
}

#[inline]
fn key_len(field: u32) -> usize {
    varint_len(u64::from(field << 3))
}

/// Size of a length-delimited field with a body of `len` bytes.
#[inline]
fn len_field(field: u32, len: usize) -> usize {
    key_len(field) + varint_len(len as u64) + len
}

#[inline]
fn put_len_field(buf: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_key(buf, field, WIRE_LEN);
    put_varint(buf, bytes.len() as u64);
    buf.extend_from_slice(bytes);
}

/// Body size of the `AnyValue` holding `v`.
#[inline]
fn any_value_len(v: &Val) -> usize {
    match v {
        Val::Int(i) => 1 + varint_len(*i as u64),
        _ => len_field(1, v.as_str().map_or(0, str::len)),
    }
}

/// Body size of a `KeyValue`.
#[inline]
fn key_value_len(key: &str, v: &Val) -> usize {
    len_field(1, key.len()) + len_field(2, any_value_len(v))
}

fn status_len(s: &GenSpan) -> usize {
    let message = if s.status_message.is_empty() {
        0
    } else {
        len_field(2, s.status_message.len())
    };
    message + 2
}

/// Body size of a `Span`.
fn span_len(s: &GenSpan) -> usize {
    let mut n = len_field(1, 16) + len_field(2, 8);
    if !s.is_root() {
        n += len_field(4, 8);
    }
    n += len_field(5, s.name.len());
    n += 1 + varint_len(s.kind as u64);
    if s.start != 0 {
        n += 9;
    }
    if s.end != 0 {
        n += 9;
    }
    for (k, v) in &s.attrs {
        n += len_field(9, key_value_len(k, v));
    }
    if s.error {
        n += len_field(15, status_len(s));
    }
    n
}

fn put_span(buf: &mut Vec<u8>, s: &GenSpan, len: usize) {
    put_key(buf, 2, WIRE_LEN);
    put_varint(buf, len as u64);
    let start = buf.len();
    put_len_field(buf, 1, &s.trace_id);
    put_len_field(buf, 2, &s.span_id);
    if !s.is_root() {
        put_len_field(buf, 4, &s.parent);
    }
    put_len_field(buf, 5, s.name.as_bytes());
    put_key(buf, 6, WIRE_VARINT);
    put_varint(buf, s.kind as u64);
    for (field, t) in [(7, s.start), (8, s.end)] {
        if t != 0 {
            put_key(buf, field, WIRE_FIXED64);
            buf.extend_from_slice(&t.to_le_bytes());
        }
    }
    for (k, v) in &s.attrs {
        put_key(buf, 9, WIRE_LEN);
        put_varint(buf, key_value_len(k, v) as u64);
        put_len_field(buf, 1, k.as_bytes());
        put_key(buf, 2, WIRE_LEN);
        put_varint(buf, any_value_len(v) as u64);
        match v {
            Val::Int(i) => {
                put_key(buf, 3, WIRE_VARINT);
                put_varint(buf, *i as u64);
            }
            _ => put_len_field(buf, 1, v.as_str().unwrap_or("").as_bytes()),
        }
    }
    if s.error {
        put_key(buf, 15, WIRE_LEN);
        put_varint(buf, status_len(s) as u64);
        if !s.status_message.is_empty() {
            put_len_field(buf, 2, s.status_message.as_bytes());
        }
        put_key(buf, 3, WIRE_VARINT);
        put_varint(buf, 2);
    }
    debug_assert_eq!(buf.len() - start, len);
}

/// Groups a record's spans by resource, in order of first appearance, reusing buffers.
#[derive(Debug, Default)]
pub(super) struct Grouper {
    /// Group index per global instance, `u32::MAX` when the instance has no group yet.
    group_of: Vec<u32>,
    /// (instance, span indexes) per group.
    groups: Vec<(u32, Vec<u32>)>,
    used: usize,
    span_lens: Vec<usize>,
}

impl Grouper {
    fn group(&mut self, instances: usize, spans: &[GenSpan]) {
        if self.group_of.len() != instances {
            self.group_of = vec![u32::MAX; instances];
        }
        for (inst, _) in &self.groups[..self.used] {
            self.group_of[*inst as usize] = u32::MAX;
        }
        self.used = 0;
        for (i, s) in spans.iter().enumerate() {
            let slot = &mut self.group_of[s.instance as usize];
            if *slot == u32::MAX {
                *slot = self.used as u32;
                if self.used == self.groups.len() {
                    self.groups.push((s.instance, Vec::new()));
                }
                let g = &mut self.groups[self.used];
                g.0 = s.instance;
                g.1.clear();
                self.used += 1;
            }
            self.groups[*slot as usize].1.push(i as u32);
        }
    }

    /// Encodes `spans` as one `ExportTraceServiceRequest` in `format`.
    pub(super) fn encode(
        &mut self,
        fleet: &Fleet,
        format: InputFormat,
        spans: &[GenSpan],
    ) -> Vec<u8> {
        self.group(fleet.instances.len(), spans);
        match format {
            InputFormat::OtlpProto => self.proto(fleet, spans),
            InputFormat::OtlpJson => {
                let request = self.request(fleet, spans);
                // Serializing plain structs of strings and numbers cannot fail; an
                // empty payload would surface as a decode error, never a panic.
                serde_json::to_vec(&request).unwrap_or_default()
            }
            InputFormat::Avro => {
                let request = self.request(fleet, spans);
                // Encoding against the shipped schema cannot fail for these values; an
                // empty payload would surface as a decode error, never a panic.
                crate::formats::avro::encode_request(&request).unwrap_or_default()
            }
        }
    }

    fn proto(&mut self, fleet: &Fleet, spans: &[GenSpan]) -> Vec<u8> {
        self.span_lens.clear();
        self.span_lens.extend(spans.iter().map(span_len));
        // (scope_spans body, resource_spans body) per group.
        let mut sizes = Vec::with_capacity(self.used);
        let mut total = 0;
        for (inst, members) in &self.groups[..self.used] {
            let instance = &fleet.instances[*inst as usize];
            let svc = &fleet.services[instance.service as usize];
            let mut ss = svc.scope_field.len();
            for &i in members {
                ss += len_field(2, self.span_lens[i as usize]);
            }
            let rs = instance.resource_field.len()
                + len_field(2, ss)
                + len_field(3, svc.schema_url.len());
            total += len_field(1, rs);
            sizes.push((ss, rs));
        }
        let mut buf = Vec::with_capacity(total);
        for ((inst, members), (ss, rs)) in self.groups[..self.used].iter().zip(sizes) {
            let instance = &fleet.instances[*inst as usize];
            let svc = &fleet.services[instance.service as usize];
            put_key(&mut buf, 1, WIRE_LEN);
            put_varint(&mut buf, rs as u64);
            buf.extend_from_slice(&instance.resource_field);
            put_key(&mut buf, 2, WIRE_LEN);
            put_varint(&mut buf, ss as u64);
            buf.extend_from_slice(&svc.scope_field);
            for &i in members {
                put_span(&mut buf, &spans[i as usize], self.span_lens[i as usize]);
            }
            put_len_field(&mut buf, 3, svc.schema_url.as_bytes());
        }
        debug_assert_eq!(buf.len(), total);
        buf
    }

    /// The same record as `opentelemetry-proto` types (for JSON, and for tests).
    pub(super) fn request(
        &mut self,
        fleet: &Fleet,
        spans: &[GenSpan],
    ) -> ExportTraceServiceRequest {
        let resource_spans = self.groups[..self.used]
            .iter()
            .map(|(inst, members)| {
                let instance = &fleet.instances[*inst as usize];
                let svc = &fleet.services[instance.service as usize];
                ResourceSpans {
                    resource: Some(instance.resource.clone()),
                    scope_spans: vec![ScopeSpans {
                        scope: Some(svc.scope.clone()),
                        spans: members
                            .iter()
                            .map(|&i| to_proto(&spans[i as usize]))
                            .collect(),
                        schema_url: String::new(),
                    }],
                    schema_url: svc.schema_url.to_owned(),
                }
            })
            .collect();
        ExportTraceServiceRequest { resource_spans }
    }
}

fn to_proto(s: &GenSpan) -> Span {
    Span {
        trace_id: s.trace_id.to_vec(),
        span_id: s.span_id.to_vec(),
        parent_span_id: if s.is_root() {
            Vec::new()
        } else {
            s.parent.to_vec()
        },
        name: s.name.to_string(),
        kind: s.kind,
        start_time_unix_nano: s.start,
        end_time_unix_nano: s.end,
        attributes: s
            .attrs
            .iter()
            .map(|(k, v)| KeyValue {
                key: (*k).to_owned(),
                value: Some(AnyValue {
                    value: Some(match v {
                        Val::Int(i) => Value::IntValue(*i),
                        _ => Value::StringValue(v.as_str().unwrap_or("").to_owned()),
                    }),
                }),
                ..Default::default()
            })
            .collect(),
        status: s.error.then(|| Status {
            message: s.status_message.to_owned(),
            code: 2,
        }),
        ..Default::default()
    }
}

/// Plausible non-OTLP text a misconfigured producer might put on the topic. No
/// newlines: JSON files frame one record per line.
const NOT_JSON: &[&str] = &[
    "upstream connect error or disconnect/reset before headers. reset reason: overflow",
    "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>",
    "resourceSpans=[service.name=checkout-service]",
];

/// Valid JSON of the wrong shape.
const WRONG_SHAPE: &[&str] = &[
    r#"{"resourceSpans": 5}"#,
    r#"{"resourceSpans":[{"scopeSpans":{"spans":"none"}}]}"#,
    r#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"startTimeUnixNano":true}]}]}]}"#,
    r#"[1,2,3]"#,
];

/// An undecodable stand-in for record `real` (never empty for a real record).
pub(super) fn garbage(rng: &mut ChaCha8Rng, format: InputFormat, real: &[u8]) -> Vec<u8> {
    match format {
        InputFormat::OtlpProto => match rng.random_range(0..3u8) {
            0 => truncated_proto(rng, real),
            1 => {
                // Field 1 with wire type 7, which does not exist, then noise.
                let mut out = vec![1 << 3 | 7];
                let mut noise = [0u8; 24];
                rng.fill_bytes(&mut noise);
                out.extend_from_slice(&noise);
                out
            }
            _ => {
                // A length prefix promising more than follows.
                let mut out = vec![1 << 3 | 2];
                put_varint(&mut out, 1 << 20);
                let mut noise = [0u8; 32];
                rng.fill_bytes(&mut noise);
                out.extend_from_slice(&noise);
                out
            }
        },
        InputFormat::OtlpJson => match rng.random_range(0..3u8) {
            0 if real.len() > 1 => real[..rng.random_range(1..real.len())].to_vec(),
            1 => NOT_JSON[rng.random_range(0..NOT_JSON.len())]
                .as_bytes()
                .to_vec(),
            _ => WRONG_SHAPE[rng.random_range(0..WRONG_SHAPE.len())]
                .as_bytes()
                .to_vec(),
        },
        InputFormat::Avro => {
            // Cut inside the datum, or a header with an unknown schema fingerprint.
            if rng.random_range(0..2u8) == 0 && real.len() > 12 {
                real[..rng.random_range(11..real.len())].to_vec()
            } else {
                let mut out = vec![0xc3, 0x01];
                let mut noise = [0u8; 24];
                rng.fill_bytes(&mut noise);
                out.extend_from_slice(&noise);
                out
            }
        }
    }
}

/// `real` cut strictly inside its first top-level field, so a decoder runs out of
/// bytes inside that field.
fn truncated_proto(rng: &mut ChaCha8Rng, real: &[u8]) -> Vec<u8> {
    let mut len: u64 = 0;
    let mut header = 1;
    for (i, b) in real.iter().enumerate().skip(1).take(10) {
        len |= u64::from(b & 0x7f) << (7 * (i - 1));
        if b & 0x80 == 0 {
            header = i + 1;
            break;
        }
    }
    let field_end = (header as u64).saturating_add(len).min(real.len() as u64) as usize;
    if field_end < 2 {
        return vec![1 << 3 | 2];
    }
    real[..rng.random_range(1..field_end)].to_vec()
}
