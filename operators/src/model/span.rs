//! The span and its typed fields.

use serde::{Deserialize, Serialize};

use super::{Attrs, SpanId, Sym, TraceId};

/// OTLP span kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum SpanKind {
    /// SPAN_KIND_UNSPECIFIED
    #[default]
    Unspecified = 0,
    /// SPAN_KIND_INTERNAL
    Internal = 1,
    /// SPAN_KIND_SERVER
    Server = 2,
    /// SPAN_KIND_CLIENT
    Client = 3,
    /// SPAN_KIND_PRODUCER
    Producer = 4,
    /// SPAN_KIND_CONSUMER
    Consumer = 5,
}

impl SpanKind {
    /// From the OTLP enum number; unknown numbers map to `Unspecified`.
    pub fn from_i32(v: i32) -> Self {
        match v {
            1 => SpanKind::Internal,
            2 => SpanKind::Server,
            3 => SpanKind::Client,
            4 => SpanKind::Producer,
            5 => SpanKind::Consumer,
            _ => SpanKind::Unspecified,
        }
    }

    /// Lower-case name as stored in outputs.
    pub fn as_str(self) -> &'static str {
        match self {
            SpanKind::Unspecified => "unspecified",
            SpanKind::Internal => "internal",
            SpanKind::Server => "server",
            SpanKind::Client => "client",
            SpanKind::Producer => "producer",
            SpanKind::Consumer => "consumer",
        }
    }
}

/// OTLP status code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum StatusCode {
    /// STATUS_CODE_UNSET
    #[default]
    Unset = 0,
    /// STATUS_CODE_OK
    Ok = 1,
    /// STATUS_CODE_ERROR
    Error = 2,
}

impl StatusCode {
    /// From the OTLP enum number; unknown numbers map to `Unset`.
    pub fn from_i32(v: i32) -> Self {
        match v {
            1 => StatusCode::Ok,
            2 => StatusCode::Error,
            _ => StatusCode::Unset,
        }
    }

    /// Lower-case name as stored in outputs.
    pub fn as_str(self) -> &'static str {
        match self {
            StatusCode::Unset => "unset",
            StatusCode::Ok => "ok",
            StatusCode::Error => "error",
        }
    }
}

/// What kind of call a span represents, derived from semantic-convention attributes
/// (see [`crate::classify`]).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum CallType {
    /// No call attributes: in-process work.
    #[default]
    Local = 0,
    /// `http.*`
    Http = 1,
    /// `rpc.*`
    Rpc = 2,
    /// `db.system` other than a cache.
    Db = 3,
    /// `db.system` redis or memcached.
    Cache = 4,
    /// `messaging.*`
    Mq = 5,
}

impl CallType {
    /// All call types, in a fixed order.
    pub const ALL: [CallType; 6] = [
        CallType::Local,
        CallType::Http,
        CallType::Rpc,
        CallType::Db,
        CallType::Cache,
        CallType::Mq,
    ];

    /// Lower-case name as stored in outputs and used in job files.
    pub fn as_str(self) -> &'static str {
        match self {
            CallType::Local => "local",
            CallType::Http => "http",
            CallType::Rpc => "rpc",
            CallType::Db => "db",
            CallType::Cache => "cache",
            CallType::Mq => "mq",
        }
    }
}

/// One decoded span. About 100 bytes plus its packed extra attributes.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
pub struct Span {
    /// Trace id; never all-zero (decoders reject that).
    pub trace_id: TraceId,
    /// Span id; never all-zero.
    pub span_id: SpanId,
    /// Parent span id; all-zero for a root span.
    pub parent_span_id: SpanId,
    /// Start, unix nanoseconds.
    pub start_ns: u64,
    /// End, unix nanoseconds. This is the span's event time.
    pub end_ns: u64,
    /// `service.name` of the resource.
    pub service: Sym,
    /// `service.instance.id` (or `host.name`) of the resource.
    pub instance: Sym,
    /// Span name (the operation).
    pub name: Sym,
    /// Span kind.
    pub kind: SpanKind,
    /// Status code.
    pub status: StatusCode,
    /// Call type derived from attributes.
    pub call_type: CallType,
    /// `http.response.status_code` / `http.status_code`, 0 when absent.
    pub http_status: u16,
    /// The input partition the span was read from (Kafka partition; 0 for other
    /// inputs): a trace's state moves with the partition its spans come from when a
    /// consumer group rebalances. Not an output column.
    pub origin: u16,
    /// The remote side: `peer.service`, else `server.address`/`net.peer.name`, else the
    /// db/cache system or messaging destination; empty when unknown.
    pub peer: Sym,
    /// `db.system` / `db.system.name` (also for caches), empty when absent.
    pub db_system: Sym,
    /// `messaging.destination.name` / `messaging.destination`, empty when absent.
    pub messaging_destination: Sym,
    /// All other span attributes, packed.
    #[serde(with = "super::attrs::inline")]
    pub attrs: Attrs,
    /// The resource's attributes other than service name and instance, shared by every
    /// span of that resource.
    pub resource_attrs: Attrs,
}

impl Span {
    /// Event time: the end of the span.
    #[inline]
    pub fn event_time(&self) -> u64 {
        self.end_ns
    }

    /// Duration in nanoseconds (0 if the clock went backwards).
    #[inline]
    pub fn duration_ns(&self) -> u64 {
        self.end_ns.saturating_sub(self.start_ns)
    }

    /// True for a span without a parent.
    #[inline]
    pub fn is_root(&self) -> bool {
        self.parent_span_id.is_zero()
    }

    /// True when the span counts as an error: status error or an HTTP 5xx response.
    #[inline]
    pub fn is_error(&self) -> bool {
        self.status == StatusCode::Error || self.http_status >= 500
    }

    /// True for spans that hand work to a queue or take it from one.
    #[inline]
    pub fn is_async(&self) -> bool {
        matches!(self.kind, SpanKind::Producer | SpanKind::Consumer)
            || self.call_type == CallType::Mq
    }

    /// Approximate memory held by this span, for byte caps and bench figures (shared
    /// resource attributes are not counted per span).
    pub fn heap_bytes(&self) -> usize {
        std::mem::size_of::<Span>() + self.attrs.heap_bytes()
    }
}
