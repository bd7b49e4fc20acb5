-- spanflow output `traces`: one row per closed trace (fragment); searched by root service and time.
-- Rendered for ClickHouse 18.16 (Debian's package) and other servers before 19.3 by spanflow (the sink creates it when `create_tables: true`);
-- ReplacingMergeTree on the natural key: query with FINAL or argMax(..., version).
-- Regenerate: UPDATE_SCHEMA=1 cargo test --lib clickhouse::
CREATE TABLE IF NOT EXISTS `spanflow`.`traces`
(
    `trace_id` FixedString(16),
    `fragment` UInt32,
    `root_service` String,
    `root_operation` String,
    `has_root` UInt8,
    `start_time` UInt64,
    `end_time` UInt64,
    `duration_ns` UInt64,
    `span_count` UInt32,
    `error_count` UInt32,
    `service_count` UInt32,
    `close_reason` String,
    `sampled` UInt8,
    `sampling_policy` String,
    `adjusted_count` Float64,
    `version` UInt64
)
ENGINE = ReplacingMergeTree(`version`)
PARTITION BY toDate(toDateTime(intDiv(`start_time`, 1000000000)))
ORDER BY (`root_service`, `start_time`, `trace_id`, `fragment`);
