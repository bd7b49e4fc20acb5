-- spanflow output `alerts`: alert events (firing, resolved) with the trace ids of kept traces; queried by rule and time.
-- Rendered for ClickHouse 18.16 (Debian's package) and other servers before 19.3 by spanflow (the sink creates it when `create_tables: true`);
-- ReplacingMergeTree on the natural key: query with FINAL or argMax(..., version).
-- Regenerate: UPDATE_SCHEMA=1 cargo test --lib clickhouse::
CREATE TABLE IF NOT EXISTS `spanflow`.`alerts`
(
    `at` UInt64,
    `rule` String,
    `state` String,
    `metric` String,
    `service` String,
    `instance` String,
    `operation` String,
    `call_type` String,
    `peer` String,
    `status` String,
    `tenant` String,
    `labels` String,
    `value_kind` String,
    `comparison` String,
    `value` Float64,
    `threshold` Float64,
    `requests` UInt64,
    `starts_at` UInt64,
    `ends_at` Nullable(UInt64),
    `trace_ids` Array(FixedString(16)),
    `version` UInt64
)
ENGINE = ReplacingMergeTree(`version`)
PARTITION BY toDate(toDateTime(intDiv(`at`, 1000000000)))
ORDER BY (`rule`, `starts_at`, `state`, `metric`, `service`, `instance`, `operation`, `call_type`, `peer`, `status`, `tenant`);
