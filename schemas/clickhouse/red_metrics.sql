-- spanflow output `red_metrics`: RED series per interval; queried by service, metric and time.
-- Rendered for current ClickHouse (22.1 and later) by spanflow (the sink creates it when `create_tables: true`);
-- ReplacingMergeTree on the natural key: query with FINAL or argMax(..., version).
-- Regenerate: UPDATE_SCHEMA=1 cargo test --lib clickhouse::
CREATE TABLE IF NOT EXISTS `spanflow`.`red_metrics`
(
    `interval_start` DateTime64(9, 'UTC'),
    `interval_end` DateTime64(9, 'UTC'),
    `metric` LowCardinality(String),
    `service` LowCardinality(String),
    `instance` LowCardinality(String),
    `operation` String,
    `call_type` LowCardinality(String),
    `peer` LowCardinality(String),
    `status` LowCardinality(String),
    `tenant` LowCardinality(String),
    `requests` UInt64,
    `errors` UInt64,
    `slow` UInt64,
    `duration_sum_ns` UInt64,
    `duration_min_ns` UInt64,
    `duration_max_ns` UInt64,
    `bucket_bounds` Array(Float64),
    `bucket_counts` Array(UInt64),
    `version` UInt64
)
ENGINE = ReplacingMergeTree(`version`)
PARTITION BY toDate(`interval_start`)
ORDER BY (`service`, `metric`, `interval_start`, `operation`, `call_type`, `peer`, `status`, `instance`, `tenant`);
