-- spanflow output `dead_letters`: input that could not be decoded, with where it came from and why.
-- Rendered for ClickHouse 18.16 (Debian's package) and other servers before 19.3 by spanflow (the sink creates it when `create_tables: true`);
-- ReplacingMergeTree on the natural key: query with FINAL or argMax(..., version).
-- Regenerate: UPDATE_SCHEMA=1 cargo test --lib clickhouse::
CREATE TABLE IF NOT EXISTS `spanflow`.`dead_letters`
(
    `source` String,
    `topic` Nullable(String),
    `split` UInt32,
    `offset` UInt64,
    `span_index` Nullable(UInt32),
    `kind` String,
    `reason` String,
    `payload_len` UInt64,
    `payload` String,
    `version` UInt64
)
ENGINE = ReplacingMergeTree(`version`)
ORDER BY (`source`, ifNull(`topic`, ''), `split`, `offset`, ifNull(`span_index`, 4294967295));
