-- spanflow output `alerts`: alert events (firing, resolved) with the trace ids of kept traces; queried by rule and time.
-- Rendered for current ClickHouse (22.1 and later) by spanflow (the sink creates it when `create_tables: true`);
-- ReplacingMergeTree on the natural key: query with FINAL or argMax(..., version).
-- Regenerate: UPDATE_SCHEMA=1 cargo test --lib clickhouse::
CREATE TABLE IF NOT EXISTS `spanflow`.`alerts`
(
    `at` DateTime64(9, 'UTC'),
    `rule` LowCardinality(String),
    `state` LowCardinality(String),
    `metric` LowCardinality(String),
    `service` LowCardinality(String),
    `instance` String,
    `operation` String,
    `call_type` LowCardinality(String),
    `peer` String,
    `status` LowCardinality(String),
    `tenant` LowCardinality(String),
    `labels` String,
    `value_kind` LowCardinality(String),
    `comparison` LowCardinality(String),
    `value` Float64,
    `threshold` Float64,
    `requests` UInt64,
    `starts_at` DateTime64(9, 'UTC'),
    `ends_at` Nullable(DateTime64(9, 'UTC')),
    `trace_ids` Array(FixedString(16)),
    `version` UInt64
)
ENGINE = ReplacingMergeTree(`version`)
PARTITION BY toDate(`at`)
ORDER BY (`rule`, `starts_at`, `state`, `metric`, `service`, `instance`, `operation`, `call_type`, `peer`, `status`, `tenant`);
