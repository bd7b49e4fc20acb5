-- spanflow output `traces`: one row per closed trace (fragment); searched by root service and time.
-- Rendered for current ClickHouse (22.1 and later) by spanflow (the sink creates it when `create_tables: true`);
-- ReplacingMergeTree on the natural key: query with FINAL or argMax(..., version).
-- Regenerate: UPDATE_SCHEMA=1 cargo test --lib clickhouse::
CREATE TABLE IF NOT EXISTS `spanflow`.`traces`
(
    `trace_id` FixedString(16),
    `fragment` UInt32,
    `root_service` LowCardinality(String),
    `root_operation` LowCardinality(String),
    `has_root` Bool,
    `start_time` DateTime64(9, 'UTC'),
    `end_time` DateTime64(9, 'UTC'),
    `duration_ns` UInt64,
    `span_count` UInt32,
    `error_count` UInt32,
    `service_count` UInt32,
    `close_reason` LowCardinality(String),
    `sampled` Bool,
    `sampling_policy` LowCardinality(String),
    `adjusted_count` Float64,
    `version` UInt64,
    INDEX trace_id_bloom `trace_id` TYPE bloom_filter(0.01) GRANULARITY 1
)
ENGINE = ReplacingMergeTree(`version`)
PARTITION BY toDate(`start_time`)
ORDER BY (`root_service`, `start_time`, `trace_id`, `fragment`);
