-- spanflow output `exemplars`: one exemplar per series, interval and histogram bucket.
-- Rendered for ClickHouse 18.16 (Debian's package) and other servers before 19.3 by spanflow (the sink creates it when `create_tables: true`);
-- ReplacingMergeTree on the natural key: query with FINAL or argMax(..., version).
-- Regenerate: UPDATE_SCHEMA=1 cargo test --lib clickhouse::
CREATE TABLE IF NOT EXISTS `spanflow`.`exemplars`
(
    `interval_start` UInt64,
    `metric` String,
    `service` String,
    `instance` String,
    `operation` String,
    `call_type` String,
    `peer` String,
    `status` String,
    `tenant` String,
    `bucket_le` Float64,
    `trace_id` FixedString(16),
    `span_id` FixedString(8),
    `value_seconds` Float64,
    `timestamp` UInt64,
    `error` UInt8,
    `sampled` UInt8,
    `version` UInt64
)
ENGINE = ReplacingMergeTree(`version`)
PARTITION BY toDate(toDateTime(intDiv(`interval_start`, 1000000000)))
ORDER BY (`service`, `metric`, `interval_start`, `operation`, `call_type`, `peer`, `status`, `instance`, `tenant`, `bucket_le`);
