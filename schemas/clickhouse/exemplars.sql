-- spanflow output `exemplars`: one exemplar per series, interval and histogram bucket.
-- Rendered for current ClickHouse (22.1 and later) by spanflow (the sink creates it when `create_tables: true`);
-- ReplacingMergeTree on the natural key: query with FINAL or argMax(..., version).
-- Regenerate: UPDATE_SCHEMA=1 cargo test --lib clickhouse::
CREATE TABLE IF NOT EXISTS `spanflow`.`exemplars`
(
    `interval_start` DateTime64(9, 'UTC'),
    `metric` LowCardinality(String),
    `service` LowCardinality(String),
    `instance` LowCardinality(String),
    `operation` String,
    `call_type` LowCardinality(String),
    `peer` LowCardinality(String),
    `status` LowCardinality(String),
    `tenant` LowCardinality(String),
    `bucket_le` Float64,
    `trace_id` FixedString(16),
    `span_id` FixedString(8),
    `value_seconds` Float64,
    `timestamp` DateTime64(9, 'UTC'),
    `error` Bool,
    `sampled` Bool,
    `version` UInt64
)
ENGINE = ReplacingMergeTree(`version`)
PARTITION BY toDate(`interval_start`)
ORDER BY (`service`, `metric`, `interval_start`, `operation`, `call_type`, `peer`, `status`, `instance`, `tenant`, `bucket_le`);
