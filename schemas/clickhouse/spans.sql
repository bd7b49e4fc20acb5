-- spanflow output `spans`: every span of the traces the sampler kept; looked up by trace id.
-- Rendered for current ClickHouse (22.1 and later) by spanflow (the sink creates it when `create_tables: true`);
-- ReplacingMergeTree on the natural key: query with FINAL or argMax(..., version).
-- Regenerate: UPDATE_SCHEMA=1 cargo test --lib clickhouse::
CREATE TABLE IF NOT EXISTS `spanflow`.`spans`
(
    `trace_id` FixedString(16),
    `span_id` FixedString(8),
    `parent_span_id` Nullable(FixedString(8)),
    `service` LowCardinality(String),
    `instance` LowCardinality(String),
    `name` String,
    `kind` LowCardinality(String),
    `start_time` DateTime64(9, 'UTC'),
    `end_time` DateTime64(9, 'UTC'),
    `duration_ns` UInt64,
    `status` LowCardinality(String),
    `is_error` Bool,
    `call_type` LowCardinality(String),
    `http_status` UInt16,
    `peer` LowCardinality(String),
    `db_system` LowCardinality(String),
    `messaging_destination` LowCardinality(String),
    `attributes` Map(LowCardinality(String), String),
    `resource_attributes` Map(LowCardinality(String), String),
    `status_message` String,
    `trace_state` String,
    `flags` UInt32,
    `scope_name` String,
    `scope_version` String,
    `event_times` Array(DateTime64(9, 'UTC')),
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
PARTITION BY toDate(`start_time`)
ORDER BY (`trace_id`, `span_id`);
