//! Call-type classification from OpenTelemetry semantic-convention attributes.
//!
//! Both the old (`http.method`, `db.system`, `net.peer.name`) and the current
//! (`http.request.method`, `db.system.name`, `server.address`) attribute names are
//! recognized, because fleets run SDKs of every age.

use crate::model::{AttrValue, CallType, SpanKind, Sym};

/// Accumulates the attributes of one span (resource attributes excluded) that decide
/// its call type and the typed fields of [`crate::Span`].
#[derive(Default, Debug)]
pub struct CallAttrs {
    http: bool,
    rpc: bool,
    messaging: bool,
    http_status: u16,
    db_system: Option<Sym>,
    peer_service: Option<Sym>,
    server_address: Option<Sym>,
    messaging_destination: Option<Sym>,
}

/// What [`CallAttrs::finish`] derives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Classified {
    /// The call type.
    pub call_type: CallType,
    /// HTTP response status, 0 when absent.
    pub http_status: u16,
    /// The remote side (see [`crate::Span::peer`]).
    pub peer: Sym,
    /// Database / cache system.
    pub db_system: Sym,
    /// Messaging destination.
    pub messaging_destination: Sym,
}

/// True for an attribute [`CallAttrs::observe`] reads into a typed field of the span
/// (HTTP status, db system, messaging destination, `peer.service`): the span tables
/// show it in that column rather than again among the attributes.
pub fn is_lifted(key: &str, value: AttrValue<'_>) -> bool {
    match key {
        "http.status_code" | "http.response.status_code" => true,
        "db.system"
        | "db.system.name"
        | "messaging.destination"
        | "messaging.destination.name"
        | "peer.service" => matches!(value, AttrValue::Str(_)),
        _ => false,
    }
}

/// Cache systems among `db.system` values.
pub fn is_cache_system(system: &str) -> bool {
    matches!(
        system,
        "redis" | "memcached" | "valkey" | "hazelcast" | "coherence" | "geode" | "ignite"
    )
}

impl CallAttrs {
    /// Observes one attribute. Returns true when it was read into a typed field (see
    /// [`is_lifted`]).
    pub fn observe(&mut self, key: &str, value: AttrValue<'_>) -> bool {
        match key {
            "http.method"
            | "http.request.method"
            | "http.url"
            | "url.full"
            | "http.route"
            | "http.target" => {
                self.http = true;
                false
            }
            "http.status_code" | "http.response.status_code" => {
                self.http = true;
                let code = match value {
                    AttrValue::Int(i) => i,
                    AttrValue::Str(s) => s.trim().parse().unwrap_or(0),
                    AttrValue::Double(d) => d as i64,
                    _ => 0,
                };
                self.http_status = u16::try_from(code).unwrap_or(0);
                true
            }
            "rpc.system" | "rpc.service" | "rpc.method" => {
                self.rpc = true;
                false
            }
            "db.system" | "db.system.name" => match value {
                AttrValue::Str(s) => {
                    self.db_system = Some(Sym::new(s));
                    true
                }
                _ => false,
            },
            "messaging.system" | "messaging.operation" | "messaging.operation.type" => {
                self.messaging = true;
                false
            }
            "messaging.destination" | "messaging.destination.name" => match value {
                AttrValue::Str(s) => {
                    self.messaging = true;
                    self.messaging_destination = Some(Sym::new(s));
                    true
                }
                _ => false,
            },
            "peer.service" => match value {
                AttrValue::Str(s) => {
                    self.peer_service = Some(Sym::new(s));
                    true
                }
                _ => false,
            },
            "server.address" | "net.peer.name" => {
                if let AttrValue::Str(s) = value
                    && self.server_address.is_none()
                {
                    self.server_address = Some(Sym::new(s));
                }
                false
            }
            _ => false,
        }
    }

    /// Derives the call type and typed fields. `kind` matters for messaging: a producer
    /// or consumer span is a queue call even when only `messaging.system` is set.
    pub fn finish(self, kind: SpanKind) -> Classified {
        let call_type = if self.messaging {
            CallType::Mq
        } else if let Some(sys) = self.db_system {
            if is_cache_system(sys.as_str()) {
                CallType::Cache
            } else {
                CallType::Db
            }
        } else if self.rpc {
            CallType::Rpc
        } else if self.http {
            CallType::Http
        } else {
            let _ = kind;
            CallType::Local
        };
        let empty = Sym::empty();
        let peer = self
            .peer_service
            .or(self.server_address)
            .or(match call_type {
                CallType::Db | CallType::Cache => self.db_system,
                CallType::Mq => self.messaging_destination,
                _ => None,
            })
            .unwrap_or(empty);
        Classified {
            call_type,
            http_status: self.http_status,
            peer,
            db_system: self.db_system.unwrap_or(empty),
            messaging_destination: self.messaging_destination.unwrap_or(empty),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify(attrs: &[(&str, AttrValue<'_>)]) -> Classified {
        let mut c = CallAttrs::default();
        for (k, v) in attrs {
            c.observe(k, *v);
        }
        c.finish(SpanKind::Client)
    }

    #[test]
    fn old_and_new_names() {
        assert_eq!(
            classify(&[("http.method", AttrValue::Str("GET"))]).call_type,
            CallType::Http
        );
        assert_eq!(
            classify(&[("http.request.method", AttrValue::Str("GET"))]).call_type,
            CallType::Http
        );
        assert_eq!(
            classify(&[("db.system", AttrValue::Str("mysql"))]).call_type,
            CallType::Db
        );
        assert_eq!(
            classify(&[("db.system.name", AttrValue::Str("postgresql"))]).call_type,
            CallType::Db
        );
        assert_eq!(
            classify(&[("db.system", AttrValue::Str("redis"))]).call_type,
            CallType::Cache
        );
        assert_eq!(
            classify(&[("db.system.name", AttrValue::Str("memcached"))]).call_type,
            CallType::Cache
        );
        assert_eq!(
            classify(&[("rpc.system", AttrValue::Str("grpc"))]).call_type,
            CallType::Rpc
        );
        assert_eq!(
            classify(&[("messaging.system", AttrValue::Str("kafka"))]).call_type,
            CallType::Mq
        );
        assert_eq!(classify(&[]).call_type, CallType::Local);
    }

    #[test]
    fn status_and_peer() {
        let c = classify(&[
            ("http.method", AttrValue::Str("GET")),
            ("http.status_code", AttrValue::Str("503")),
            ("server.address", AttrValue::Str("api.example.com")),
        ]);
        assert_eq!(c.http_status, 503);
        assert_eq!(c.peer.as_str(), "api.example.com");
        let c = classify(&[
            ("db.system", AttrValue::Str("mysql")),
            ("peer.service", AttrValue::Str("orders-db")),
            ("server.address", AttrValue::Str("10.0.0.1")),
        ]);
        assert_eq!(c.peer.as_str(), "orders-db");
        let c = classify(&[("db.system", AttrValue::Str("redis"))]);
        assert_eq!(c.peer.as_str(), "redis");
        let c = classify(&[
            ("messaging.system", AttrValue::Str("kafka")),
            ("messaging.destination.name", AttrValue::Str("orders")),
        ]);
        assert_eq!(c.peer.as_str(), "orders");
        assert_eq!(c.messaging_destination.as_str(), "orders");
    }

    #[test]
    fn bad_status_is_zero_not_panic() {
        let c = classify(&[("http.response.status_code", AttrValue::Int(-1))]);
        assert_eq!(c.http_status, 0);
        let c = classify(&[("http.response.status_code", AttrValue::Int(1 << 40))]);
        assert_eq!(c.http_status, 0);
    }
}
