//! Tenants of a receiver, as Erda's OTLP gateway has them: each sends with its own API
//! key (`Authorization: Bearer <key>` or `x-api-key: <key>`, on HTTP and as gRPC
//! metadata), its spans carry its name as the resource attribute `tenant`, and it may
//! have a rate limit in spans per second (a token bucket). Keys are never logged: they
//! print as `***`.

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use spanflow_operators::model::wire::{WireField, WireFields, put_len_field};

use crate::runtime::io::ConnectorError;

/// A secret that prints as `***` (in `Debug`, logs and serialized configs).
#[derive(Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("***")
    }
}

/// One tenant of a receiver.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// The tenant's name: the `tenant` resource attribute of its spans.
    pub name: String,
    /// Its API key, in the job file.
    #[serde(default)]
    pub key: Option<Secret>,
    /// A file holding its API key (surrounding whitespace ignored), relative to the job
    /// file's directory.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Spans per second it may send; more is answered with 429 / `RESOURCE_EXHAUSTED`.
    /// No limit without it.
    #[serde(default)]
    pub spans_per_second: Option<f64>,
    /// Spans it may send at once after a quiet time (default: one second's worth).
    #[serde(default)]
    pub burst: Option<f64>,
}

impl TenantConfig {
    /// Checks the values serde cannot.
    pub fn validate(&self, at: usize) -> Vec<spanflow_operators::ConfigIssue> {
        let path = |f: &str| format!("tenants.{at}.{f}");
        let mut issues = Vec::new();
        if self.name.is_empty() {
            issues.push(spanflow_operators::ConfigIssue::new(
                &path("name"),
                "must not be empty",
            ));
        }
        if self.key.is_some() == self.key_file.is_some() {
            issues.push(spanflow_operators::ConfigIssue::new(
                &path("key"),
                "set exactly one of `key` and `key_file`",
            ));
        }
        for (f, v) in [
            ("spans_per_second", self.spans_per_second),
            ("burst", self.burst),
        ] {
            if v.is_some_and(|v| !(v.is_finite() && v > 0.0)) {
                issues.push(spanflow_operators::ConfigIssue::new(
                    &path(f),
                    "must be a positive number",
                ));
            }
        }
        issues
    }
}

/// A token bucket of spans: `(spans per second, burst, (tokens, refilled at))`.
type Bucket = (f64, f64, Mutex<(f64, Instant)>);

/// A tenant at run time.
#[derive(Debug)]
pub(crate) struct Tenant {
    pub name: String,
    key: String,
    /// The token bucket, when limited.
    bucket: Option<Bucket>,
    /// Spans accepted, requests and spans throttled.
    pub accepted_spans: AtomicU64,
    pub throttled: AtomicU64,
    pub throttled_spans: AtomicU64,
}

impl Tenant {
    /// Takes `spans` tokens if the bucket has them.
    fn admit(&self, spans: u64) -> bool {
        let Some((rate, burst, state)) = &self.bucket else {
            return true;
        };
        let Ok(mut s) = state.lock() else {
            return true;
        };
        let now = Instant::now();
        let (tokens, at) = *s;
        let tokens = (tokens + now.duration_since(at).as_secs_f64() * rate).min(*burst);
        let want = spans as f64;
        if want <= tokens {
            *s = (tokens - want, now);
            true
        } else {
            *s = (tokens, now);
            false
        }
    }
}

/// The tenants of a receiver (none: every request is accepted as it is).
#[derive(Debug, Default)]
pub(crate) struct Tenants(pub Vec<Tenant>);

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// No key, or one no tenant has.
    Unauthorized,
    /// Over the tenant's rate limit.
    Throttled,
}

impl Tenants {
    /// Reads the keys.
    pub fn load(configs: &[TenantConfig]) -> Result<Tenants, ConnectorError> {
        let mut out = Vec::new();
        for c in configs {
            let key = match (&c.key, &c.key_file) {
                (Some(k), _) => k.0.clone(),
                (None, Some(path)) => std::fs::read_to_string(path)
                    .map_err(|e| ConnectorError::io(path, &e))?
                    .trim()
                    .to_owned(),
                (None, None) => String::new(),
            };
            if key.is_empty() {
                return Err(ConnectorError::user(format!(
                    "otlp source: tenant `{}` has an empty key",
                    c.name
                )));
            }
            let bucket = c.spans_per_second.map(|rate| {
                let burst = c.burst.unwrap_or(rate);
                (rate, burst, Mutex::new((burst, Instant::now())))
            });
            out.push(Tenant {
                name: c.name.clone(),
                key,
                bucket,
                accepted_spans: AtomicU64::new(0),
                throttled: AtomicU64::new(0),
                throttled_spans: AtomicU64::new(0),
            });
        }
        Ok(Tenants(out))
    }

    /// The tenant whose key `key` is; `Ok(None)` when there are no tenants.
    pub fn of(&self, key: Option<&str>) -> Result<Option<&Tenant>, Refusal> {
        if self.0.is_empty() {
            return Ok(None);
        }
        let key = key.ok_or(Refusal::Unauthorized)?;
        self.0
            .iter()
            .find(|t| constant_time_eq(t.key.as_bytes(), key.as_bytes()))
            .map(Some)
            .ok_or(Refusal::Unauthorized)
    }
}

impl Tenant {
    /// Whether it may send `spans` spans now (counted either way).
    pub fn take(&self, spans: u64) -> Result<(), Refusal> {
        if self.admit(spans) {
            self.accepted_spans.fetch_add(spans, Ordering::Relaxed);
            Ok(())
        } else {
            self.throttled.fetch_add(1, Ordering::Relaxed);
            self.throttled_spans.fetch_add(spans, Ordering::Relaxed);
            Err(Refusal::Throttled)
        }
    }

    /// Gives back what [`take`](Self::take) took for spans that were not queued after
    /// all (the queue was full: the exporter retries them).
    pub fn give_back(&self, spans: u64) {
        self.accepted_spans.fetch_sub(spans, Ordering::Relaxed);
        if let Some((_, burst, state)) = &self.bucket
            && let Ok(mut s) = state.lock()
        {
            s.0 = (s.0 + spans as f64).min(*burst);
        }
    }
}

/// Compares without stopping at the first difference (the time a comparison takes says
/// nothing about how much of a guessed key was right).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// The key a request carries: `Authorization: Bearer <key>`, else `x-api-key`.
pub(crate) fn key_of<'a>(
    authorization: Option<&'a str>,
    api_key: Option<&'a str>,
) -> Option<&'a str> {
    authorization
        .and_then(|a| {
            let (scheme, key) = a.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(key.trim())
        })
        .or(api_key.map(str::trim))
}

/// Each field of a message body: number, value and its bytes as they are.
fn raw_fields(body: &[u8]) -> impl Iterator<Item = Option<(u32, WireField<'_>, &[u8])>> {
    let mut fields = WireFields::new(body);
    std::iter::from_fn(move || {
        let before = fields.rest();
        match fields.next() {
            Some((f, v)) => {
                let raw = before.get(..before.len() - fields.rest().len())?;
                Some(Some((f, v, raw)))
            }
            None if fields.failed => {
                fields.failed = false;
                Some(None)
            }
            None => None,
        }
    })
}

/// The request with `tenant = name` as a resource attribute of every `ResourceSpans`
/// (replacing one the sender set; a resource is added where there is none). `None`
/// for bytes that are not a request.
pub(crate) fn with_tenant(body: &[u8], name: &str) -> Option<Vec<u8>> {
    let mut kv = Vec::new();
    put_len_field(&mut kv, 1, b"tenant");
    let mut value = Vec::new();
    put_len_field(&mut value, 1, name.as_bytes());
    put_len_field(&mut kv, 2, &value);
    let mut out = Vec::with_capacity(body.len() + 64);
    for field in raw_fields(body) {
        let (f, v, raw) = field?;
        let (1, WireField::Len(rs)) = (f, v) else {
            out.extend_from_slice(raw);
            continue;
        };
        let mut new_rs = Vec::with_capacity(rs.len() + 32);
        let mut resource = None::<Vec<u8>>;
        for field in raw_fields(rs) {
            let (f, v, raw) = field?;
            match (f, v) {
                (1, WireField::Len(res)) => {
                    // Protobuf merges repeated occurrences of a message field.
                    let r = resource.get_or_insert_with(Vec::new);
                    for field in raw_fields(res) {
                        let (f, v, raw) = field?;
                        let theirs = matches!((f, v), (1, WireField::Len(a))
                            if spanflow_operators::model::wire::key_of(a) == Some(&b"tenant"[..]));
                        if !theirs {
                            r.extend_from_slice(raw);
                        }
                    }
                }
                _ => new_rs.extend_from_slice(raw),
            }
        }
        let mut r = resource.unwrap_or_default();
        put_len_field(&mut r, 1, &kv);
        let mut whole = Vec::with_capacity(new_rs.len() + r.len() + 8);
        put_len_field(&mut whole, 1, &r);
        whole.extend_from_slice(&new_rs);
        put_len_field(&mut out, 1, &whole);
    }
    Some(out)
}
