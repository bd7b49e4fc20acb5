//! Job-file settings of the ClickHouse sink.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use spanflow_operators::{ConfigIssue, HumanDuration};

use crate::runtime::io::ConnectorError;

/// Environment variable read for the server URL when the job file gives none.
pub const URL_ENV: &str = "SPANFLOW_CLICKHOUSE_URL";
/// Environment variable read for the user when the job file gives none.
pub const USER_ENV: &str = "SPANFLOW_CLICKHOUSE_USER";
/// Environment variable read for the password when the job file gives none.
pub const PASSWORD_ENV: &str = "SPANFLOW_CLICKHOUSE_PASSWORD";

/// Configuration of the `clickhouse` sink.
#[derive(Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClickHouseSinkConfig {
    /// HTTP endpoint, e.g. `http://127.0.0.1:8123`. Without it the sink reads
    /// `SPANFLOW_CLICKHOUSE_URL`, else uses `http://127.0.0.1:8123`.
    #[serde(default)]
    pub url: Option<String>,
    /// Database of the tables (created with the tables when `create_tables` is on).
    #[serde(default = "default_database")]
    pub database: String,
    /// User. Without it the sink reads the variable named by `user_env`, else
    /// `SPANFLOW_CLICKHOUSE_USER`, else the server's `default` user.
    #[serde(default)]
    pub user: Option<String>,
    /// Environment variable holding the user.
    #[serde(default)]
    pub user_env: Option<String>,
    /// Password (prefer `password_env`: a job file is often checked in). Never logged.
    #[serde(default)]
    pub password: Option<String>,
    /// Environment variable holding the password; without `password` and
    /// `password_env` the sink reads `SPANFLOW_CLICKHOUSE_PASSWORD`.
    #[serde(default)]
    pub password_env: Option<String>,
    /// Create the database and missing tables at start, with the DDL of
    /// schemas/clickhouse rendered for the server's version.
    #[serde(default)]
    pub create_tables: bool,
    /// Name of each table not listed in `tables`: `<table_prefix><table>`.
    #[serde(default)]
    pub table_prefix: String,
    /// Table name per output, e.g. `{spans: otel_spans}`.
    #[serde(default)]
    pub tables: BTreeMap<String, String>,
    /// Written to every row's `version` column. Tables are ReplacingMergeTree on each
    /// row's natural key with this version: a replay of the same input collapses to the
    /// same rows; raise it when recomputing with changed rules (a backfill) so the new
    /// rows win whatever order the inserts land in.
    #[serde(default = "default_version")]
    pub version: u64,
    /// Time to live of every table with a time column (created tables only; servers
    /// before 19.6 have no TTL and keep rows forever, with a warning).
    #[serde(default)]
    pub ttl: Option<HumanDuration>,
    /// Time to live per table, overriding `ttl`, e.g. `{spans: 3d}`.
    #[serde(default)]
    pub table_ttl: BTreeMap<String, HumanDuration>,
    /// When an insert is sent.
    #[serde(default)]
    pub batch: BatchConfig,
    /// Compression of the inserted data: `lz4` or `none`.
    #[serde(default)]
    pub compression: Compression,
    /// Longest time one request (an insert, a query) may take before it counts as
    /// failed and is retried: a stopped server or a dead connection is noticed.
    #[serde(default = "default_request_timeout")]
    pub request_timeout: HumanDuration,
    /// How failed inserts are retried.
    #[serde(default)]
    pub retry: RetryConfig,
    /// Extra ClickHouse settings sent with every query (`max_insert_block_size`, ...).
    /// The server rejects settings it does not know.
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
}

// Hand-written so that a password never reaches a log line or an error message.
impl fmt::Debug for ClickHouseSinkConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClickHouseSinkConfig")
            .field("url", &self.url.as_ref().map(|_| self.display_url()))
            .field("database", &self.database)
            .field("user", &self.user)
            .field("user_env", &self.user_env)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("password_env", &self.password_env)
            .field("create_tables", &self.create_tables)
            .field("table_prefix", &self.table_prefix)
            .field("tables", &self.tables)
            .field("version", &self.version)
            .field("ttl", &self.ttl)
            .field("table_ttl", &self.table_ttl)
            .field("batch", &self.batch)
            .field("compression", &self.compression)
            .field("request_timeout", &self.request_timeout)
            .field("retry", &self.retry)
            .field("settings", &self.settings)
            .finish()
    }
}

/// When the sink sends an insert of a table: whichever limit is reached first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Rows per insert.
    #[serde(default = "default_max_rows")]
    pub max_rows: usize,
    /// Encoded (uncompressed RowBinary) bytes per insert.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: usize,
    /// Longest time a row waits for its insert.
    #[serde(default = "default_max_delay")]
    pub max_delay: HumanDuration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_rows: default_max_rows(),
            max_bytes: default_max_bytes(),
            max_delay: default_max_delay(),
        }
    }
}

/// Retries of an insert that failed for a reason that can pass (connection refused or
/// reset, timeouts, HTTP 5xx without a ClickHouse error code, server overload codes).
/// Other errors (a type mismatch, a missing table) fail the run at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// First wait; each further wait doubles, up to `max_backoff`.
    #[serde(default = "default_initial_backoff")]
    pub initial_backoff: HumanDuration,
    /// Longest wait between two attempts.
    #[serde(default = "default_max_backoff")]
    pub max_backoff: HumanDuration,
    /// Give up (and fail the run) when one insert has failed for this long. Without it
    /// the sink waits for the server as long as it takes, holding the job back.
    #[serde(default)]
    pub max_elapsed: Option<HumanDuration>,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            initial_backoff: default_initial_backoff(),
            max_backoff: default_max_backoff(),
            max_elapsed: None,
        }
    }
}

/// Compression of inserted data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// ClickHouse's native LZ4 framing.
    #[default]
    Lz4,
    /// Plain RowBinary.
    None,
}

fn default_request_timeout() -> HumanDuration {
    HumanDuration::secs(120)
}
fn default_database() -> String {
    "spanflow".into()
}
fn default_version() -> u64 {
    1
}
fn default_max_rows() -> usize {
    200_000
}
fn default_max_bytes() -> usize {
    32 << 20
}
fn default_max_delay() -> HumanDuration {
    HumanDuration::secs(1)
}
fn default_initial_backoff() -> HumanDuration {
    HumanDuration(Duration::from_millis(100))
}
fn default_max_backoff() -> HumanDuration {
    HumanDuration::secs(5)
}

impl Default for ClickHouseSinkConfig {
    fn default() -> Self {
        ClickHouseSinkConfig {
            url: None,
            database: default_database(),
            user: None,
            user_env: None,
            password: None,
            password_env: None,
            create_tables: false,
            table_prefix: String::new(),
            tables: BTreeMap::new(),
            version: default_version(),
            ttl: None,
            table_ttl: BTreeMap::new(),
            batch: BatchConfig::default(),
            compression: Compression::default(),
            request_timeout: default_request_timeout(),
            retry: RetryConfig::default(),
            settings: BTreeMap::new(),
        }
    }
}

/// A ClickHouse identifier spanflow writes unquoted-safe (it is always quoted anyway).
fn check_identifier(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!(
            "`{s}` may only contain ASCII letters, digits and `_`"
        ));
    }
    if s.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(format!("`{s}` must not start with a digit"));
    }
    Ok(())
}

impl ClickHouseSinkConfig {
    /// Checks the values serde cannot; returns every problem found.
    pub fn validate(&self) -> Vec<ConfigIssue> {
        let mut issues = Vec::new();
        if let Some(url) = &self.url {
            if url.starts_with("https://") {
                issues.push(ConfigIssue::new(
                    "url",
                    "https is not supported by this build (no TLS); use http:// to a local \
                     endpoint or a TLS-terminating proxy",
                ));
            } else if !url.starts_with("http://") || url::Url::parse(url).is_err() {
                // The value is not shown: it may hold credentials.
                issues.push(ConfigIssue::new(
                    "url",
                    "must be an http:// URL such as http://127.0.0.1:8123",
                ));
            }
        }
        if let Err(e) = check_identifier(&self.database) {
            issues.push(ConfigIssue::new("database", e));
        }
        if !self.table_prefix.is_empty()
            && let Err(e) = check_identifier(&self.table_prefix)
        {
            issues.push(ConfigIssue::new("table_prefix", e));
        }
        // Whether they name outputs the sink writes is checked with its `from`
        // (rollups are outputs too).
        for (output, name) in &self.tables {
            if let Err(e) = check_identifier(name) {
                issues.push(ConfigIssue::new(&format!("tables.{output}"), e));
            }
        }
        for (what, ttl) in self.ttl.iter().map(|t| ("ttl".to_owned(), t)).chain(
            self.table_ttl
                .iter()
                .map(|(k, t)| (format!("table_ttl.{k}"), t)),
        ) {
            if ttl.0 < Duration::from_secs(1) {
                issues.push(ConfigIssue::new(&what, "must be at least 1s"));
            }
            // TTL arithmetic is in DateTime, which ends in 2106: a longer TTL would wrap
            // around and drop rows at once.
            if ttl.0 > Duration::from_secs(50 * 365 * 86_400) {
                issues.push(ConfigIssue::new(
                    &what,
                    format!(
                        "must be at most 50 years (ClickHouse's DateTime ends in 2106), found {ttl}"
                    ),
                ));
            }
        }
        if self.batch.max_rows == 0 {
            issues.push(ConfigIssue::new("batch.max_rows", "must be at least 1"));
        }
        if self.batch.max_bytes < 1024 {
            issues.push(ConfigIssue::new(
                "batch.max_bytes",
                format!("must be at least 1024, found {}", self.batch.max_bytes),
            ));
        }
        if self.batch.max_delay.0.is_zero() {
            issues.push(ConfigIssue::new("batch.max_delay", "must be more than 0s"));
        }
        if self.request_timeout.0 < Duration::from_secs(1) {
            issues.push(ConfigIssue::new("request_timeout", "must be at least 1s"));
        }
        if self.retry.initial_backoff.0.is_zero() {
            issues.push(ConfigIssue::new(
                "retry.initial_backoff",
                "must be more than 0s",
            ));
        }
        if self.retry.max_backoff.0 < self.retry.initial_backoff.0 {
            issues.push(ConfigIssue::new(
                "retry.max_backoff",
                "must be at least `initial_backoff`",
            ));
        }
        for key in self.settings.keys() {
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                issues.push(ConfigIssue::new(
                    &format!("settings.{key}"),
                    "is not a ClickHouse setting name",
                ));
            }
        }
        issues
    }

    /// The server URL: the job file's, else `SPANFLOW_CLICKHOUSE_URL`, else the local
    /// default.
    pub fn resolved_url(&self) -> String {
        self.url
            .clone()
            .or_else(|| std::env::var(URL_ENV).ok().filter(|u| !u.is_empty()))
            .unwrap_or_else(|| "http://127.0.0.1:8123".into())
    }

    /// The server URL for messages: without user, password or query (which may carry
    /// credentials).
    pub fn display_url(&self) -> String {
        match url::Url::parse(&self.resolved_url()) {
            Ok(mut u) => {
                let _ = u.set_username("");
                let _ = u.set_password(None);
                u.set_query(None);
                u.to_string()
            }
            Err(_) => "<an invalid URL>".into(),
        }
    }

    /// The user, if any is configured; an error when `user_env` names a variable that
    /// is not set (rather than connecting as another user).
    pub fn resolved_user(&self) -> Result<Option<String>, ConnectorError> {
        if let Some(u) = &self.user {
            return Ok(Some(u.clone()));
        }
        named_env(self.user_env.as_deref(), USER_ENV, "user_env")
    }

    /// The password, if any is configured; an error when `password_env` names a variable
    /// that is not set.
    pub fn resolved_password(&self) -> Result<Option<String>, ConnectorError> {
        if let Some(p) = &self.password {
            return Ok(Some(p.clone()));
        }
        named_env(self.password_env.as_deref(), PASSWORD_ENV, "password_env")
    }

    /// The table an output is written to (without the database).
    pub fn table_of(&self, output: &str) -> String {
        self.tables
            .get(output)
            .cloned()
            .unwrap_or_else(|| format!("{}{output}", self.table_prefix))
    }

    /// Time to live of an output's table, if any.
    pub fn ttl_of(&self, output: &str) -> Option<Duration> {
        self.table_ttl
            .get(output)
            .or(self.ttl.as_ref())
            .map(|t| t.0)
    }
}

/// The value of the variable `named` (which must be set) or else of `fallback` (if set).
fn named_env(
    named: Option<&str>,
    fallback: &str,
    key: &str,
) -> Result<Option<String>, ConnectorError> {
    match named {
        Some(var) => std::env::var(var)
            .map(Some)
            .map_err(|_| ConnectorError::user(format!("`{key}` names `{var}`, which is not set"))),
        None => Ok(std::env::var(fallback).ok().filter(|v| !v.is_empty())),
    }
}
