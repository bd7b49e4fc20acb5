//! The simulated fleet: services, their instances, endpoints and call plans.
//!
//! The fleet is built once from the seed, so the topology (who calls whom, which
//! service speaks HTTP or gRPC, which one still uses the old semantic-convention
//! attribute names) is the same for every trace of a run and for every run with the
//! same seed. Everything a span needs that does not vary per trace (names, attribute
//! values, the encoded resource) is computed here, so the per-span work is mostly
//! copying reference-counted strings.

use std::ops::Range;
use std::sync::Arc;

use opentelemetry_proto::tonic::common::v1::{
    AnyValue, InstrumentationScope, KeyValue, any_value::Value,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use rand::{Rng, RngCore};
use rand_chacha::ChaCha8Rng;

use super::rand_util::chance;

/// How a service is called.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Protocol {
    /// HTTP/JSON; client spans named by method, server spans by route.
    Http,
    /// gRPC; spans named `package.Service/Method`.
    Grpc,
}

/// Which generation of semantic-convention attribute names a service's SDK emits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Semconv {
    /// `http.method`, `http.status_code`, `net.peer.name`, `db.statement`, ...
    Old,
    /// `http.request.method`, `http.response.status_code`, `server.address`, ...
    New,
}

/// The language (and so SDK, instrumentation scope and HTTP client) of a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Lang {
    Java,
    Go,
    Python,
    Node,
    DotNet,
    Ruby,
}

const LANGS: [Lang; 6] = [
    Lang::Java,
    Lang::Go,
    Lang::Python,
    Lang::Node,
    Lang::DotNet,
    Lang::Ruby,
];

impl Lang {
    fn sdk_language(self) -> &'static str {
        match self {
            Lang::Java => "java",
            Lang::Go => "go",
            Lang::Python => "python",
            Lang::Node => "nodejs",
            Lang::DotNet => "dotnet",
            Lang::Ruby => "ruby",
        }
    }

    fn sdk_version(self) -> &'static str {
        match self {
            Lang::Java => "1.45.0",
            Lang::Go => "1.33.0",
            Lang::Python => "1.29.0",
            Lang::Node => "1.30.0",
            Lang::DotNet => "1.10.0",
            Lang::Ruby => "1.6.0",
        }
    }

    /// Instrumentation scope (name, version) of the service's server/client spans.
    fn scope(self) -> (&'static str, &'static str) {
        match self {
            Lang::Java => ("io.opentelemetry.java", "2.10.0"),
            Lang::Go => (
                "go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp",
                "0.58.0",
            ),
            Lang::Python => ("opentelemetry.instrumentation.flask", "0.50b0"),
            Lang::Node => ("@opentelemetry/instrumentation-http", "0.57.1"),
            Lang::DotNet => ("OpenTelemetry.Instrumentation.AspNetCore", "1.10.1"),
            Lang::Ruby => ("OpenTelemetry::Instrumentation::Rack", "0.25.0"),
        }
    }

    /// `User-Agent` of the service's outgoing HTTP calls.
    pub(super) fn user_agent(self) -> &'static str {
        match self {
            Lang::Java => "Java-http-client/21.0.5",
            Lang::Go => "Go-http-client/1.1",
            Lang::Python => "python-requests/2.32.3",
            Lang::Node => "axios/1.7.9",
            Lang::DotNet => "dotnet-httpclient/8.0",
            Lang::Ruby => "Faraday v2.12.2",
        }
    }
}

/// A piece of an HTTP path template.
#[derive(Debug)]
pub(super) enum PathPart {
    /// Literal text.
    Lit(Arc<str>),
    /// `{id}`: a numeric id such as `81723`.
    Id,
    /// `{ref}`: a UUID.
    Uuid,
}

/// A piece of a SQL statement template.
#[derive(Debug)]
pub(super) enum SqlPart {
    /// Literal text.
    Lit(Arc<str>),
    /// A numeric literal.
    Num,
    /// A quoted code literal such as `'KX-48213'`.
    Code,
}

/// A database a service owns.
#[derive(Debug)]
pub(super) struct Database {
    /// `mysql` or `postgresql`.
    pub system: &'static str,
    /// Database name (`db.name` / `db.namespace`).
    pub namespace: Arc<str>,
    /// Host name (`net.peer.name` / `server.address`).
    pub host: Arc<str>,
    pub port: i64,
    pub queries: Vec<Query>,
}

/// One SQL statement shape a service runs.
#[derive(Debug)]
pub(super) struct Query {
    /// Span name: `SELECT orders` (new conventions) or `SELECT orders_db.orders` (old).
    pub name: Arc<str>,
    pub operation: &'static str,
    pub table: Arc<str>,
    pub text: Vec<SqlPart>,
}

/// A Redis cache a service uses.
#[derive(Debug)]
pub(super) struct Cache {
    pub host: Arc<str>,
    pub ops: Vec<CacheOp>,
}

/// One Redis command shape.
#[derive(Debug)]
pub(super) struct CacheOp {
    /// The command.
    pub op: &'static str,
    /// Span name (the command).
    pub name: Arc<str>,
    /// Key prefix such as `product:`.
    pub key_prefix: Arc<str>,
    /// True for commands that change the cache (`SET`, `DEL`).
    pub write: bool,
}

/// What one step of a call plan calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Target {
    /// An endpoint of another service (HTTP or gRPC per the callee's protocol).
    Service { svc: u32, ep: u32 },
    /// A query (index into the caller's `Database::queries`).
    Db(u32),
    /// A cache command (index into the caller's `Cache::ops`).
    Cache(u32),
    /// In-process work (index into `Service::locals`).
    Local(u32),
}

/// One call in a plan, made with probability `p`, `times` times in a row (N+1 queries).
#[derive(Debug, Clone)]
pub(super) struct Call {
    pub p: f64,
    pub times: (u32, u32),
    pub target: Target,
}

/// A step of an endpoint's work: one call, or several in parallel (fan-out).
#[derive(Debug, Clone)]
pub(super) enum Step {
    One(Call),
    Parallel(Vec<Call>),
}

/// An operation a service serves.
#[derive(Debug)]
pub(super) struct Endpoint {
    /// Server span name: `GET /api/orders/{id}` or `shop.v1.CartService/GetCart`.
    pub server_name: Arc<str>,
    /// Client span name: `GET` or the gRPC full method name.
    pub client_name: Arc<str>,
    /// HTTP method (empty for gRPC).
    pub method: &'static str,
    /// HTTP route template (empty for gRPC).
    pub route: Arc<str>,
    /// HTTP path template.
    pub path: Vec<PathPart>,
    /// Static query string of list endpoints.
    pub query: Option<&'static str>,
    /// True when the route has a numeric id, so a 404 is plausible.
    pub has_id: bool,
    /// gRPC `rpc.service`.
    pub rpc_service: Arc<str>,
    /// gRPC `rpc.method`.
    pub rpc_method: Arc<str>,
    pub plan: Vec<Step>,
}

/// A service of the fleet.
#[derive(Debug)]
pub(super) struct Service {
    pub name: Arc<str>,
    /// 0 = the gateway, 1 = the BFF, deeper layers only call deeper layers (so the call
    /// graph is acyclic). `CONSUMER_LAYER` for services reached only through the queue.
    pub layer: u8,
    pub protocol: Protocol,
    pub semconv: Semconv,
    pub lang: Lang,
    pub port: i64,
    /// `http://catalog-service:8080`, prefix of `url.full` for calls to this service.
    pub url_prefix: Arc<str>,
    /// Global instance indexes.
    pub instances: Range<u32>,
    pub endpoints: Vec<Endpoint>,
    pub db: Option<Database>,
    pub cache: Option<Cache>,
    /// Names of in-process operations (`CatalogService.validate`).
    pub locals: Vec<Arc<str>>,
    /// Encoded `ScopeSpans.scope` field (tag, length and message).
    pub scope_field: Vec<u8>,
    pub scope: InstrumentationScope,
    pub schema_url: &'static str,
}

/// One running copy of a service: a resource.
#[derive(Debug)]
pub(super) struct Instance {
    pub service: u32,
    /// Pod IP, `client.address` of the calls it makes.
    pub ip: Arc<str>,
    pub resource: Resource,
    /// Encoded `ResourceSpans.resource` field (tag, length and message).
    pub resource_field: Vec<u8>,
}

/// A Kafka topic and the service consuming it.
#[derive(Debug)]
pub(super) struct Topic {
    pub name: Arc<str>,
    pub consumer: u32,
    /// Producer span name `orders.placed publish`.
    pub publish_name: Arc<str>,
    /// Consumer span name `orders.placed process`.
    pub process_name: Arc<str>,
}

/// The whole fleet.
#[derive(Debug)]
pub(super) struct Fleet {
    pub services: Vec<Service>,
    pub instances: Vec<Instance>,
    pub topics: Vec<Topic>,
    /// Gateway endpoints regular traffic hits, with cumulative weights.
    pub routes: Vec<(u32, u32)>,
    /// The gateway endpoint of batch jobs (very long traces).
    pub batch_endpoint: u32,
    /// Endpoints a batch job calls, one after another.
    pub batch_targets: Vec<(u32, u32)>,
    /// Client addresses of end users.
    pub external_ips: Vec<Arc<str>>,
    /// Host the gateway is reached at from outside.
    pub public_host: Arc<str>,
    pub kafka_host: Arc<str>,
}

/// Layer of services reached only through the message queue.
pub(super) const CONSUMER_LAYER: u8 = u8::MAX;

/// The gateway is always service 0.
pub(super) const GATEWAY: u32 = 0;

/// Static description of a named service.
struct Named {
    name: &'static str,
    layer: u8,
    protocol: Protocol,
    lang: Lang,
    /// Resource noun in paths and method names.
    plural: &'static str,
    /// gRPC methods; empty for the generic Get/List/Create/Update set.
    methods: &'static [&'static str],
    /// (system, database name, tables).
    db: Option<(&'static str, &'static str, &'static [&'static str])>,
    cache: bool,
    /// Services it may call (only deeper layers are kept).
    calls: &'static [&'static str],
}

// A table row: positional arguments read better than nine field names per row.
#[allow(clippy::too_many_arguments)]
const fn named(
    name: &'static str,
    layer: u8,
    protocol: Protocol,
    lang: Lang,
    plural: &'static str,
    methods: &'static [&'static str],
    db: Option<(&'static str, &'static str, &'static [&'static str])>,
    cache: bool,
    calls: &'static [&'static str],
) -> Named {
    Named {
        name,
        layer,
        protocol,
        lang,
        plural,
        methods,
        db,
        cache,
        calls,
    }
}

use Lang::*;
use Protocol::{Grpc, Http};

const MYSQL: &str = "mysql";
const PG: &str = "postgresql";

/// The named services, in the order they join the fleet: the first 20 (the minimum
/// fleet) contain every role (gateway, BFF, all layers, two queue consumers).
const NAMED: &[Named] = &[
    named(
        "frontend-gateway",
        0,
        Http,
        Go,
        "api",
        &[],
        None,
        false,
        &[],
    ),
    named("web-bff", 1, Http, Node, "pages", &[], None, true, &[]),
    named(
        "auth-service",
        2,
        Grpc,
        Go,
        "tokens",
        &["ValidateToken", "IssueToken", "RevokeToken"],
        Some((PG, "auth", &["sessions", "api_keys"])),
        true,
        &["session-service"],
    ),
    named(
        "user-service",
        2,
        Http,
        Java,
        "users",
        &[],
        Some((PG, "users", &["users", "addresses"])),
        false,
        &["loyalty-service"],
    ),
    named(
        "catalog-service",
        2,
        Http,
        Java,
        "products",
        &[],
        Some((MYSQL, "catalog", &["products", "categories"])),
        true,
        &["pricing-service", "inventory-service", "currency-service"],
    ),
    named(
        "search-service",
        2,
        Http,
        Python,
        "queries",
        &[],
        Some((PG, "search", &["synonyms"])),
        true,
        &["inventory-service"],
    ),
    named(
        "cart-service",
        2,
        Grpc,
        DotNet,
        "carts",
        &["GetCart", "AddItem", "EmptyCart"],
        None,
        true,
        &["pricing-service", "inventory-service"],
    ),
    named(
        "checkout-service",
        2,
        Grpc,
        Go,
        "orders",
        &["PlaceOrder", "GetOrder", "ListOrders"],
        Some((PG, "orders", &["orders", "order_items"])),
        false,
        &[
            "payment-service",
            "shipping-service",
            "inventory-service",
            "pricing-service",
            "tax-service",
            "loyalty-service",
        ],
    ),
    named(
        "payment-service",
        3,
        Grpc,
        Node,
        "payments",
        &["Charge", "Refund", "GetPayment"],
        Some((PG, "payments", &["payments", "transactions"])),
        false,
        &["fraud-service", "ledger-service", "currency-service"],
    ),
    named(
        "pricing-service",
        3,
        Grpc,
        Java,
        "prices",
        &["GetPrice", "ListPrices", "Quote"],
        Some((MYSQL, "pricing", &["price_rules"])),
        true,
        &["currency-service", "tax-service"],
    ),
    named(
        "inventory-service",
        3,
        Http,
        Java,
        "stock",
        &[],
        Some((MYSQL, "inventory", &["stock_levels", "reservations"])),
        false,
        &[],
    ),
    named(
        "shipping-service",
        3,
        Http,
        Python,
        "shipments",
        &[],
        Some((PG, "shipping", &["shipments", "rates"])),
        false,
        &["tax-service", "currency-service"],
    ),
    named(
        "notification-service",
        CONSUMER_LAYER,
        Http,
        Java,
        "notifications",
        &[],
        Some((PG, "notifications", &["notifications"])),
        true,
        &[],
    ),
    named(
        "recommendation-service",
        2,
        Grpc,
        Python,
        "recommendations",
        &["ListRecommendations", "GetRecommendation", "RecordFeedback"],
        None,
        true,
        &["inventory-service"],
    ),
    named(
        "review-service",
        2,
        Http,
        Python,
        "reviews",
        &[],
        Some((MYSQL, "reviews", &["reviews", "ratings"])),
        false,
        &[],
    ),
    named(
        "fraud-service",
        4,
        Grpc,
        Python,
        "assessments",
        &["Assess", "GetAssessment", "Report"],
        Some((PG, "fraud", &["signals"])),
        false,
        &[],
    ),
    named(
        "ledger-service",
        4,
        Grpc,
        Java,
        "entries",
        &["PostEntry", "GetEntry", "ListEntries"],
        Some((PG, "ledger", &["journal_entries", "accounts"])),
        false,
        &[],
    ),
    named(
        "email-service",
        CONSUMER_LAYER,
        Http,
        Ruby,
        "emails",
        &[],
        Some((PG, "mail", &["outbox"])),
        true,
        &[],
    ),
    named(
        "currency-service",
        4,
        Grpc,
        Node,
        "rates",
        &["Convert", "GetSupportedCurrencies", "GetRate"],
        None,
        true,
        &[],
    ),
    named(
        "ad-service",
        2,
        Grpc,
        Java,
        "ads",
        &["GetAds", "ListAds", "RecordImpression"],
        Some((MYSQL, "ads", &["campaigns"])),
        false,
        &[],
    ),
    named(
        "session-service",
        3,
        Grpc,
        Go,
        "sessions",
        &["GetSession", "TouchSession", "CreateSession"],
        None,
        true,
        &[],
    ),
    named(
        "tax-service",
        4,
        Http,
        Go,
        "taxes",
        &[],
        Some((PG, "tax", &["tax_rates"])),
        false,
        &[],
    ),
    named(
        "loyalty-service",
        3,
        Http,
        Java,
        "members",
        &[],
        Some((MYSQL, "loyalty", &["members", "points"])),
        false,
        &["ledger-service"],
    ),
    named(
        "analytics-worker",
        CONSUMER_LAYER,
        Http,
        Python,
        "events",
        &[],
        Some((PG, "analytics", &["events"])),
        false,
        &[],
    ),
];

/// Nouns of the services added beyond the named list.
const EXTRA: &[&str] = &[
    "warehouse",
    "returns",
    "wishlist",
    "promotion",
    "subscription",
    "billing",
    "audit",
    "geo",
    "media",
    "feature-flag",
    "invoice",
    "coupon",
    "gift-card",
    "tracking",
    "support",
    "locale",
    "bundle",
    "quote",
    "address",
    "vendor",
];

/// Topics and their consumers.
const TOPICS: &[(&str, &str)] = &[
    ("orders.placed", "notification-service"),
    ("emails.outbound", "email-service"),
    ("analytics.events", "analytics-worker"),
];

/// What the gateway and the BFF serve: (method, route, query, traffic weight, BFF plan).
/// A BFF plan is a list of steps; a step of several calls runs them in parallel. Calls
/// name (service, endpoint index); calls to services missing from a small fleet are
/// dropped.
type RouteDef = (
    &'static str,
    &'static str,
    Option<&'static str>,
    u32,
    &'static [&'static [(&'static str, u32)]],
);

const ROUTES: &[RouteDef] = &[
    (
        "GET",
        "/api/products/{id}",
        None,
        30,
        &[
            &[("catalog-service", 0)],
            &[
                ("review-service", 1),
                ("recommendation-service", 0),
                ("ad-service", 0),
                ("pricing-service", 0),
            ],
        ],
    ),
    (
        "GET",
        "/api/products",
        Some("category=shoes&page=2"),
        15,
        &[
            &[("catalog-service", 1)],
            &[("ad-service", 1), ("recommendation-service", 0)],
        ],
    ),
    (
        "GET",
        "/api/search",
        Some("q=trail+running+shoes"),
        12,
        &[&[("search-service", 1)], &[("catalog-service", 1)]],
    ),
    (
        "GET",
        "/api/cart",
        None,
        10,
        &[
            &[("cart-service", 0)],
            &[("pricing-service", 1), ("currency-service", 0)],
        ],
    ),
    (
        "POST",
        "/api/cart/items",
        None,
        8,
        &[&[("catalog-service", 0)], &[("cart-service", 1)]],
    ),
    (
        "POST",
        "/api/checkout",
        None,
        5,
        &[
            &[("cart-service", 0)],
            &[("checkout-service", 0)],
            &[("cart-service", 2)],
        ],
    ),
    (
        "GET",
        "/api/orders/{id}",
        None,
        6,
        &[
            &[("checkout-service", 1)],
            &[("shipping-service", 0), ("loyalty-service", 0)],
        ],
    ),
    (
        "GET",
        "/api/users/{id}/orders",
        None,
        4,
        &[&[("user-service", 0), ("checkout-service", 2)]],
    ),
    (
        "GET",
        "/api/recommendations",
        None,
        5,
        &[
            &[("session-service", 0)],
            &[("recommendation-service", 0), ("ad-service", 1)],
        ],
    ),
    (
        "POST",
        "/api/login",
        None,
        3,
        &[
            &[("user-service", 1)],
            &[("auth-service", 1)],
            &[("session-service", 2)],
        ],
    ),
    (
        "PUT",
        "/api/users/{id}/addresses/{ref}",
        None,
        2,
        &[&[("user-service", 3)]],
    ),
];

/// Gateway route of batch jobs (very long traces only).
const BATCH_ROUTE: &str = "/api/admin/jobs/{id}/run";

/// Statement shapes: (operation, template). `$t` is the table, `#` a number, `@` a
/// quoted code.
const SQL: &[(&str, &str)] = &[
    ("SELECT", "SELECT * FROM $t WHERE id = #"),
    (
        "SELECT",
        "SELECT id, status, amount, updated_at FROM $t WHERE customer_id = # ORDER BY updated_at DESC LIMIT 20",
    ),
    (
        "SELECT",
        "SELECT COUNT(*) FROM $t WHERE status = 'open' AND region_id = #",
    ),
    (
        "UPDATE",
        "UPDATE $t SET status = 'processed', version = version + 1 WHERE id = #",
    ),
    (
        "INSERT",
        "INSERT INTO $t (id, code, amount) VALUES (#, @, #)",
    ),
    ("DELETE", "DELETE FROM $t WHERE id = # AND tenant_id = #"),
];

/// Redis commands: (command, writes).
const REDIS: &[(&str, bool)] = &[
    ("GET", false),
    ("HGETALL", false),
    ("MGET", false),
    ("SET", true),
    ("DEL", true),
];

const LOCAL_VERBS: &[&str] = &[
    "validate",
    "serialize",
    "render",
    "computeTotals",
    "applyRules",
    "mapResponse",
];

/// Schema URLs of the two semantic-convention generations.
const SCHEMA_OLD: &str = "https://opentelemetry.io/schemas/1.17.0";
const SCHEMA_NEW: &str = "https://opentelemetry.io/schemas/1.26.0";

/// Probability with which the gateway validates the caller's token first.
const AUTH_P: f64 = 0.8;

/// `catalog-service` -> `CatalogService`.
fn pascal(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for part in s.split(['-', '_', '.']) {
        let mut chars = part.chars();
        if let Some(c) = chars.next() {
            out.extend(c.to_uppercase());
            out.push_str(chars.as_str());
        }
    }
    out
}

/// `products` -> `Product`, good enough for method names.
fn singular(plural: &str) -> String {
    let s = plural
        .strip_suffix("ies")
        .map(|s| format!("{s}y"))
        .or_else(|| plural.strip_suffix("ses").map(|s| format!("{s}s")))
        .or_else(|| plural.strip_suffix('s').map(str::to_owned))
        .unwrap_or_else(|| plural.to_owned());
    pascal(&s)
}

fn parse_path(route: &str) -> (Vec<PathPart>, bool) {
    let mut parts = Vec::new();
    let mut has_id = false;
    let mut rest = route;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(PathPart::Lit(Arc::from(&rest[..open])));
        }
        let close = rest[open..].find('}').map_or(rest.len(), |c| open + c);
        if &rest[open..(close + 1).min(rest.len())] == "{ref}" {
            parts.push(PathPart::Uuid);
        } else {
            has_id = true;
            parts.push(PathPart::Id);
        }
        rest = rest.get(close + 1..).unwrap_or("");
    }
    if !rest.is_empty() {
        parts.push(PathPart::Lit(Arc::from(rest)));
    }
    (parts, has_id)
}

fn parse_sql(template: &str, table: &str) -> Vec<SqlPart> {
    let text = template.replace("$t", table);
    let mut parts = Vec::new();
    let mut lit = String::new();
    for c in text.chars() {
        match c {
            '#' | '@' => {
                if !lit.is_empty() {
                    parts.push(SqlPart::Lit(Arc::from(std::mem::take(&mut lit))));
                }
                parts.push(if c == '#' {
                    SqlPart::Num
                } else {
                    SqlPart::Code
                });
            }
            _ => lit.push(c),
        }
    }
    if !lit.is_empty() {
        parts.push(SqlPart::Lit(Arc::from(lit)));
    }
    parts
}

fn http_endpoint(method: &'static str, route: &str, query: Option<&'static str>) -> Endpoint {
    let (path, has_id) = parse_path(route);
    Endpoint {
        server_name: Arc::from(format!("{method} {route}")),
        client_name: Arc::from(method),
        method,
        route: Arc::from(route),
        path,
        query,
        has_id,
        rpc_service: Arc::from(""),
        rpc_method: Arc::from(""),
        plan: Vec::new(),
    }
}

fn grpc_endpoint(rpc_service: &Arc<str>, method: &str) -> Endpoint {
    Endpoint {
        server_name: Arc::from(format!("{rpc_service}/{method}")),
        client_name: Arc::from(format!("{rpc_service}/{method}")),
        method: "",
        route: Arc::from(""),
        path: Vec::new(),
        query: None,
        has_id: false,
        rpc_service: rpc_service.clone(),
        rpc_method: Arc::from(method),
        plan: Vec::new(),
    }
}

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn s(v: &str) -> Value {
    Value::StringValue(v.to_owned())
}

/// Encodes `message` as field `field` of its parent: tag, length, bytes.
fn field_bytes(field: u32, message: &impl Message) -> Vec<u8> {
    let body = message.encode_to_vec();
    let mut out = Vec::with_capacity(body.len() + 6);
    super::encode::put_varint(&mut out, u64::from(field << 3 | 2));
    super::encode::put_varint(&mut out, body.len() as u64);
    out.extend_from_slice(&body);
    out
}

const POD_CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

fn pod_suffix(rng: &mut ChaCha8Rng, len: usize) -> String {
    (0..len)
        .map(|_| char::from(POD_CHARS[rng.random_range(0..POD_CHARS.len())]))
        .collect()
}

/// Description of one service before it is built.
struct Spec {
    name: String,
    layer: u8,
    protocol: Protocol,
    lang: Lang,
    plural: String,
    methods: Vec<String>,
    db: Option<(&'static str, String, Vec<String>)>,
    cache: bool,
    calls: Vec<String>,
}

fn specs(rng: &mut ChaCha8Rng, count: usize) -> Vec<Spec> {
    let mut out: Vec<Spec> = NAMED
        .iter()
        .take(count)
        .map(|n| Spec {
            name: n.name.to_owned(),
            layer: n.layer,
            protocol: n.protocol,
            lang: n.lang,
            plural: n.plural.to_owned(),
            methods: n.methods.iter().map(|m| (*m).to_owned()).collect(),
            db: n.db.map(|(sys, ns, tables)| {
                (
                    sys,
                    ns.to_owned(),
                    tables.iter().map(|t| (*t).to_owned()).collect(),
                )
            }),
            cache: n.cache,
            calls: n.calls.iter().map(|c| (*c).to_owned()).collect(),
        })
        .collect();
    let mut k = 0;
    while out.len() < count {
        let noun = EXTRA[k % EXTRA.len()];
        let round = k / EXTRA.len();
        let name = if round == 0 {
            format!("{noun}-service")
        } else {
            format!("{noun}-service-{}", round + 1)
        };
        let plural = if noun.ends_with('s') {
            noun.to_owned()
        } else {
            format!("{noun}s")
        };
        let table = plural.replace('-', "_");
        let db = chance(rng, 0.75).then(|| {
            let sys = if chance(rng, 0.5) { MYSQL } else { PG };
            (sys, noun.replace('-', "_"), vec![table])
        });
        out.push(Spec {
            name,
            layer: if chance(rng, 0.5) { 3 } else { 4 },
            protocol: if k % 2 == 0 { Http } else { Grpc },
            lang: LANGS[rng.random_range(0..LANGS.len())],
            plural,
            methods: Vec::new(),
            db,
            cache: chance(rng, 0.3),
            calls: Vec::new(),
        });
        k += 1;
    }
    out
}

impl Fleet {
    /// Builds a fleet of `count` (>= 20) services from `rng`.
    pub(super) fn build(rng: &mut ChaCha8Rng, count: usize) -> Fleet {
        let specs = specs(rng, count);
        let mut services = Vec::with_capacity(specs.len());
        let mut instances = Vec::new();
        for (i, spec) in specs.iter().enumerate() {
            let (svc, insts) = build_service(rng, i, spec, instances.len());
            services.push(svc);
            instances.extend(insts);
        }
        let names: Vec<Arc<str>> = services.iter().map(|s: &Service| s.name.clone()).collect();
        let index = |name: &str| names.iter().position(|n| &**n == name).map(|i| i as u32);

        // Who may call whom: the named preferences, kept only towards deeper layers.
        let mut callees: Vec<Vec<u32>> = specs
            .iter()
            .map(|spec| {
                spec.calls
                    .iter()
                    .filter_map(|c| index(c))
                    .filter(|&c| {
                        services[c as usize].layer > spec.layer
                            && services[c as usize].layer != CONSUMER_LAYER
                    })
                    .collect()
            })
            .collect();
        // Extra services join as callees of a shallower layer, so they see traffic.
        for (i, svc) in services.iter().enumerate().skip(NAMED.len()) {
            let callers: Vec<usize> = services
                .iter()
                .enumerate()
                .filter(|(_, c)| c.layer >= 2 && c.layer < svc.layer)
                .map(|(j, _)| j)
                .collect();
            if !callers.is_empty() {
                let caller = callers[rng.random_range(0..callers.len())];
                callees[caller].push(i as u32);
            }
        }

        let mut plans: Vec<Vec<Vec<Step>>> = Vec::with_capacity(services.len());
        for (i, svc) in services.iter().enumerate() {
            let plans_of = if i == GATEWAY as usize {
                gateway_plans(&services, &index)
            } else if svc.layer == 1 {
                bff_plans(rng, &services, svc, &index)
            } else {
                (0..svc.endpoints.len())
                    .map(|_| procedural_plan(rng, &services, svc, &callees[i]))
                    .collect()
            };
            plans.push(plans_of);
        }
        ensure_called(rng, &services, &mut plans);
        for (svc, svc_plans) in services.iter_mut().zip(plans) {
            for (ep, plan) in svc.endpoints.iter_mut().zip(svc_plans) {
                ep.plan = plan;
            }
        }

        let topics = TOPICS
            .iter()
            .filter_map(|(name, consumer)| {
                index(consumer).map(|c| Topic {
                    name: Arc::from(*name),
                    consumer: c,
                    publish_name: Arc::from(format!("{name} publish")),
                    process_name: Arc::from(format!("{name} process")),
                })
            })
            .collect();

        let mut routes = Vec::new();
        let mut total = 0;
        for (i, r) in ROUTES.iter().enumerate() {
            total += r.3;
            routes.push((i as u32, total));
        }
        let batch_targets = services
            .iter()
            .enumerate()
            .filter(|(_, s)| s.layer >= 2 && s.layer != CONSUMER_LAYER)
            .flat_map(|(i, s)| (0..s.endpoints.len()).map(move |e| (i as u32, e as u32)))
            .collect();
        let external_ips = (0..64)
            .map(|_| {
                Arc::from(format!(
                    "{}.{}.{}.{}",
                    rng.random_range(23..=223u8),
                    rng.random::<u8>(),
                    rng.random::<u8>(),
                    rng.random_range(1..=254u8)
                ))
            })
            .collect();
        Fleet {
            services,
            instances,
            topics,
            routes,
            batch_endpoint: ROUTES.len() as u32,
            batch_targets,
            external_ips,
            public_host: Arc::from("shop.example.com"),
            kafka_host: Arc::from("kafka-0.kafka-headless"),
        }
    }

    /// Picks a gateway route for a regular trace, weighted by traffic.
    pub(super) fn pick_route(&self, rng: &mut ChaCha8Rng) -> u32 {
        let total = self.routes.last().map_or(1, |r| r.1);
        let x = rng.random_range(0..total);
        self.routes.iter().find(|r| x < r.1).map_or(0, |r| r.0)
    }

    /// Picks an instance of service `svc`.
    pub(super) fn pick_instance(&self, rng: &mut ChaCha8Rng, svc: u32) -> u32 {
        let r = &self.services[svc as usize].instances;
        if r.end > r.start + 1 {
            rng.random_range(r.clone())
        } else {
            r.start
        }
    }
}

fn build_service(
    rng: &mut ChaCha8Rng,
    i: usize,
    spec: &Spec,
    first_instance: usize,
) -> (Service, Vec<Instance>) {
    let name: Arc<str> = Arc::from(spec.name.as_str());
    // A third of the fleet runs SDKs old enough to emit the old attribute names; the
    // BFF (index 1) is among them, so old-style HTTP client spans are frequent.
    let semconv = if i % 3 == 1 {
        Semconv::Old
    } else {
        Semconv::New
    };
    let port = match spec.protocol {
        Http => 8080,
        Grpc => 50051,
    };
    let pascal_name = pascal(&spec.name);
    let endpoints = if i == GATEWAY as usize || spec.layer == 1 {
        let mut eps: Vec<Endpoint> = ROUTES
            .iter()
            .map(|r| http_endpoint(r.0, r.1, r.2))
            .collect();
        if i == GATEWAY as usize {
            eps.push(http_endpoint("POST", BATCH_ROUTE, None));
        }
        eps
    } else if spec.layer == CONSUMER_LAYER {
        // Consumers serve no requests; their one "endpoint" holds the plan of the work
        // done per message.
        vec![http_endpoint(
            "POST",
            &format!("/internal/{}", spec.plural),
            None,
        )]
    } else {
        match spec.protocol {
            Http => {
                let p = &spec.plural;
                vec![
                    http_endpoint("GET", &format!("/api/{p}/{{id}}"), None),
                    http_endpoint("GET", &format!("/api/{p}"), Some("page=2&size=20")),
                    http_endpoint("POST", &format!("/api/{p}"), None),
                    http_endpoint("PUT", &format!("/api/{p}/{{id}}/items/{{ref}}"), None),
                ]
            }
            Grpc => {
                let rpc_service: Arc<str> = Arc::from(format!("shop.v1.{pascal_name}"));
                let methods: Vec<String> = if spec.methods.is_empty() {
                    let one = singular(&spec.plural);
                    let many = pascal(&spec.plural);
                    vec![
                        format!("Get{one}"),
                        format!("List{many}"),
                        format!("Create{one}"),
                        format!("Update{one}"),
                    ]
                } else {
                    spec.methods.clone()
                };
                methods
                    .iter()
                    .map(|m| grpc_endpoint(&rpc_service, m))
                    .collect()
            }
        }
    };
    let db = spec.db.as_ref().map(|(system, ns, tables)| {
        let short = if *system == MYSQL {
            "mysql"
        } else {
            "postgres"
        };
        let mut queries = Vec::new();
        for table in tables {
            // Two statement shapes per table, different per service.
            let a = rng.random_range(0..SQL.len());
            let b = (a + rng.random_range(1..SQL.len())) % SQL.len();
            for (op, template) in [SQL[a], SQL[b]] {
                let name = match semconv {
                    Semconv::New => format!("{op} {table}"),
                    Semconv::Old => format!("{op} {ns}.{table}"),
                };
                queries.push(Query {
                    name: Arc::from(name),
                    operation: op,
                    table: Arc::from(table.as_str()),
                    text: parse_sql(template, table),
                });
            }
        }
        Database {
            system,
            namespace: Arc::from(ns.as_str()),
            host: Arc::from(format!("{}-{short}", ns.replace('_', "-"))),
            port: if *system == MYSQL { 3306 } else { 5432 },
            queries,
        }
    });
    let cache = spec.cache.then(|| {
        let prefix: Arc<str> = Arc::from(format!("{}:", singular(&spec.plural).to_lowercase()));
        let svc_short = spec.name.split('-').next().unwrap_or("app");
        Cache {
            host: Arc::from(format!("{svc_short}-redis")),
            ops: REDIS
                .iter()
                .map(|(op, write)| CacheOp {
                    op,
                    name: Arc::from(*op),
                    key_prefix: prefix.clone(),
                    write: *write,
                })
                .collect(),
        }
    });
    let locals = (0..2)
        .map(|_| {
            Arc::from(format!(
                "{pascal_name}.{}",
                LOCAL_VERBS[rng.random_range(0..LOCAL_VERBS.len())]
            ))
        })
        .collect();
    let (scope_name, scope_version) = spec.lang.scope();
    let scope = InstrumentationScope {
        name: scope_name.to_owned(),
        version: scope_version.to_owned(),
        ..Default::default()
    };
    let n_instances = if i == GATEWAY as usize {
        3
    } else {
        rng.random_range(1..=3u32)
    };
    let version = format!(
        "1.{}.{}",
        rng.random_range(0..12u32),
        rng.random_range(0..20u32)
    );
    let replica_set = pod_suffix(rng, 9);
    let mut insts = Vec::new();
    for _ in 0..n_instances {
        let pod = format!("{}-{replica_set}-{}", spec.name, pod_suffix(rng, 5));
        let ip = format!(
            "10.{}.{}.{}",
            rng.random_range(0..4u8),
            rng.random::<u8>(),
            rng.random_range(2..=254u8)
        );
        let node = format!(
            "ip-10-0-{}-{}.ec2.internal",
            rng.random_range(0..32u8),
            rng.random_range(2..=254u8)
        );
        let resource = Resource {
            attributes: vec![
                kv("service.name", s(&spec.name)),
                kv("service.namespace", s("shop")),
                kv("service.version", s(&version)),
                kv("service.instance.id", s(&pod)),
                kv("host.name", s(&node)),
                kv("k8s.pod.name", s(&pod)),
                kv("telemetry.sdk.name", s("opentelemetry")),
                kv("telemetry.sdk.language", s(spec.lang.sdk_language())),
                kv("telemetry.sdk.version", s(spec.lang.sdk_version())),
                kv("deployment.environment", s("production")),
            ],
            ..Default::default()
        };
        insts.push(Instance {
            service: i as u32,
            ip: Arc::from(ip),
            resource_field: field_bytes(1, &resource),
            resource,
        });
    }
    let start = first_instance as u32;
    let svc = Service {
        name,
        layer: spec.layer,
        protocol: spec.protocol,
        semconv,
        lang: spec.lang,
        port,
        url_prefix: Arc::from(format!("http://{}:{port}", spec.name)),
        instances: start..start + n_instances,
        endpoints,
        db,
        cache,
        locals,
        scope_field: field_bytes(1, &scope),
        scope,
        schema_url: match semconv {
            Semconv::Old => SCHEMA_OLD,
            Semconv::New => SCHEMA_NEW,
        },
    };
    (svc, insts)
}

fn one(p: f64, target: Target) -> Step {
    Step::One(Call {
        p,
        times: (1, 1),
        target,
    })
}

/// The gateway validates the token (usually), then forwards to the BFF route of the
/// same path.
fn gateway_plans(services: &[Service], index: &dyn Fn(&str) -> Option<u32>) -> Vec<Vec<Step>> {
    let auth = index("auth-service");
    let bff = index("web-bff");
    let mut plans: Vec<Vec<Step>> = (0..ROUTES.len())
        .map(|r| {
            let mut plan = Vec::new();
            if let Some(a) = auth {
                plan.push(one(AUTH_P, Target::Service { svc: a, ep: 0 }));
            }
            if let Some(b) = bff {
                plan.push(one(
                    1.0,
                    Target::Service {
                        svc: b,
                        ep: r as u32,
                    },
                ));
            }
            plan
        })
        .collect();
    // The batch endpoint's work is generated separately (see `trace::long_root`).
    plans.push(Vec::new());
    debug_assert_eq!(plans.len(), services[GATEWAY as usize].endpoints.len());
    plans
}

fn bff_plans(
    rng: &mut ChaCha8Rng,
    services: &[Service],
    svc: &Service,
    index: &dyn Fn(&str) -> Option<u32>,
) -> Vec<Vec<Step>> {
    ROUTES
        .iter()
        .map(|route| {
            let mut plan = Vec::new();
            if svc.cache.is_some() {
                plan.push(one(0.5, Target::Cache(0)));
            }
            for step in route.4 {
                let calls: Vec<Call> = step
                    .iter()
                    .filter_map(|(name, ep)| {
                        let callee = index(name)?;
                        let n = services[callee as usize].endpoints.len() as u32;
                        Some(Call {
                            p: if step.len() > 1 { 0.85 } else { 1.0 },
                            times: (1, 1),
                            target: Target::Service {
                                svc: callee,
                                ep: ep % n,
                            },
                        })
                    })
                    .collect();
                match calls.len() {
                    0 => {}
                    1 => plan.extend(calls.into_iter().map(Step::One)),
                    _ => plan.push(Step::Parallel(calls)),
                }
            }
            if chance(rng, 0.7) {
                plan.push(one(0.6, Target::Local(0)));
            }
            plan
        })
        .collect()
}

/// A plausible plan for one endpoint of a layer-2+ service or queue consumer: maybe a
/// cache lookup, one or two queries (sometimes repeated: N+1), calls to some of its
/// callees (in parallel when several), maybe local work and a cache write.
fn procedural_plan(
    rng: &mut ChaCha8Rng,
    services: &[Service],
    svc: &Service,
    callees: &[u32],
) -> Vec<Step> {
    let consumer = svc.layer == CONSUMER_LAYER;
    let mut plan = Vec::new();
    if let Some(cache) = &svc.cache
        && chance(rng, 0.6)
    {
        let reads: Vec<u32> = (0..cache.ops.len() as u32)
            .filter(|&i| !cache.ops[i as usize].write)
            .collect();
        plan.push(one(
            0.85,
            Target::Cache(reads[rng.random_range(0..reads.len())]),
        ));
    }
    if let Some(db) = &svc.db {
        // Consumers run at most three queries: their work comes after the trace's
        // root ended and must keep even batch-job traces under three minutes.
        let steps = if consumer { 1 } else { rng.random_range(1..=2) };
        for _ in 0..steps {
            let times = if chance(rng, 0.25) {
                (1, if consumer { 2 } else { 3 })
            } else {
                (1, 1)
            };
            let q = rng.random_range(0..db.queries.len()) as u32;
            plan.push(Step::One(Call {
                p: 0.9,
                times,
                target: Target::Db(q),
            }));
        }
        if consumer {
            let q = rng.random_range(0..db.queries.len()) as u32;
            plan.push(one(0.5, Target::Db(q)));
        }
    }
    if !consumer && !callees.is_empty() {
        let max = if svc.layer <= 2 {
            3.min(callees.len())
        } else {
            1
        };
        let k = rng.random_range(0..=max);
        let mut pool = callees.to_vec();
        let mut calls = Vec::new();
        for _ in 0..k {
            let callee = pool.swap_remove(rng.random_range(0..pool.len()));
            let n = services[callee as usize].endpoints.len();
            calls.push(Call {
                p: 0.6 + 0.4 * rng.random::<f64>(),
                times: (1, 1),
                target: Target::Service {
                    svc: callee,
                    ep: rng.random_range(0..n) as u32,
                },
            });
        }
        if calls.len() >= 2 && chance(rng, 0.5) {
            plan.push(Step::Parallel(calls));
        } else {
            plan.extend(calls.into_iter().map(Step::One));
        }
    }
    if chance(rng, 0.3) {
        plan.push(one(
            0.8,
            Target::Local(rng.random_range(0..svc.locals.len()) as u32),
        ));
    }
    if let Some(cache) = &svc.cache
        && chance(rng, 0.3)
    {
        let writes: Vec<u32> = (0..cache.ops.len() as u32)
            .filter(|&i| cache.ops[i as usize].write)
            .collect();
        plan.push(one(
            0.5,
            Target::Cache(writes[rng.random_range(0..writes.len())]),
        ));
    }
    plan
}

/// Every service of layer 2 and deeper gets at least one caller from a shallower layer
/// (walking layers top-down, so the caller itself is reachable from the gateway).
fn ensure_called(rng: &mut ChaCha8Rng, services: &[Service], plans: &mut [Vec<Vec<Step>>]) {
    let mut order: Vec<usize> = (0..services.len())
        .filter(|&i| services[i].layer >= 2 && services[i].layer != CONSUMER_LAYER)
        .collect();
    order.sort_by_key(|&i| services[i].layer);
    for target in order {
        let called = plans.iter().flatten().flatten().any(|step| match step {
            Step::One(c) => {
                matches!(c.target, Target::Service { svc, .. } if svc as usize == target)
            }
            Step::Parallel(cs) => cs
                .iter()
                .any(|c| matches!(c.target, Target::Service { svc, .. } if svc as usize == target)),
        });
        if called {
            continue;
        }
        let layer = services[target].layer;
        let callers: Vec<usize> = (0..services.len())
            .filter(|&i| services[i].layer >= 1 && services[i].layer < layer)
            .collect();
        if callers.is_empty() {
            continue;
        }
        let caller = callers[rng.random_range(0..callers.len())];
        let ep = rng.random_range(0..plans[caller].len());
        let n = services[target].endpoints.len();
        plans[caller][ep].push(one(
            0.7,
            Target::Service {
                svc: target as u32,
                ep: rng.random_range(0..n) as u32,
            },
        ));
    }
}

/// Fills `out` with 16 random bytes as a UUID string (version 4 layout).
pub(super) fn push_uuid(rng: &mut ChaCha8Rng, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut b = [0u8; 16];
    rng.fill_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
}

/// A uniformly chosen element, `None` when `items` is empty.
pub(super) fn pick<'a, T>(rng: &mut ChaCha8Rng, items: &'a [T]) -> Option<&'a T> {
    if items.is_empty() {
        None
    } else {
        items.get(rng.random_range(0..items.len()))
    }
}
