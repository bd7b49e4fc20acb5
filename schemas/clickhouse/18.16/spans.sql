-- spanflow output `spans`: every span of the traces the sampler kept; looked up by trace id.
-- Rendered for ClickHouse 18.16 (Debian's package) and other servers before 19.3 by spanflow (the sink creates it when `create_tables: true`);
-- ReplacingMergeTree on the natural key: query with FINAL or argMax(..., version).
-- Regenerate: UPDATE_SCHEMA=1 cargo test --lib clickhouse::
CREATE TABLE IF NOT EXISTS `spanflow`.`spans`
(
    `trace_id` FixedString(16),
    `span_id` FixedString(8),
    `parent_span_id` Nullable(FixedString(8)),
    `service` String,
    `instance` String,
    `name` String,
    `kind` String,
    `start_time` UInt64,
    `end_time` UInt64,
    `duration_ns` UInt64,
    `status` String,
    `is_error` UInt8,
    `call_type` String,
    `http_status` UInt16,
    `peer` String,
    `db_system` String,
    `messaging_destination` String,
    `attributes` Nested(key String, value String),
    `resource_attributes` Nested(key String, value String),
    `status_message` String,
    `trace_state` String,
    `flags` UInt32,
    `scope_name` String,
    `scope_version` String,
    `event_times` Array(UInt64),
    `event_names` Array(String),
    `event_attributes` Array(String),
    `link_trace_ids` Array(FixedString(16)),
    `link_span_ids` Array(FixedString(8)),
    `link_trace_states` Array(String),
    `link_attributes` Array(String),
    `dropped_attributes_count` UInt32,
    `dropped_events_count` UInt32,
    `dropped_links_count` UInt32,
    `otlp` String,
    `otlp_resource` String,
    `version` UInt64
)
ENGINE = ReplacingMergeTree(`version`)
PARTITION BY toDate(toDateTime(intDiv(`start_time`, 1000000000)))
ORDER BY (`trace_id`, `span_id`);
