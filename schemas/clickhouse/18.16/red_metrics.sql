-- spanflow output `red_metrics`: RED series per interval; queried by service, metric and time.
-- Rendered for ClickHouse 18.16 (Debian's package) and other servers before 19.3 by spanflow (the sink creates it when `create_tables: true`);
-- ReplacingMergeTree on the natural key: query with FINAL or argMax(..., version).
-- Regenerate: UPDATE_SCHEMA=1 cargo test --lib clickhouse::
CREATE TABLE IF NOT EXISTS `spanflow`.`red_metrics`
(
    `interval_start` UInt64,
    `interval_end` UInt64,
    `metric` String,
    `service` String,
    `instance` String,
    `operation` String,
    `call_type` String,
    `peer` String,
    `status` String,
    `tenant` String,
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
PARTITION BY toDate(toDateTime(intDiv(`interval_start`, 1000000000)))
ORDER BY (`service`, `metric`, `interval_start`, `operation`, `call_type`, `peer`, `status`, `instance`, `tenant`);
