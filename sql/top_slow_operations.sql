-- The ten slowest entry operations per minute, by p99 latency merged from the
-- red_metrics histograms, with their traffic and errors.
--
-- As a rollup:  from: metrics, window: 1m.   Ad hoc: spanflow sql --file sql/top_slow_operations.sql
WITH ops AS (
  SELECT
    date_bin(INTERVAL '1 minute', interval_start) AS minute,
    service,
    operation,
    sum(requests) AS requests,
    sum(errors) AS errors,
    quantile_from_buckets(first_value(bucket_bounds), sum_buckets(bucket_counts), 0.99) AS p99_seconds,
    CAST(max(duration_max_ns) AS DOUBLE) / 1e9 AS max_seconds
  FROM red_metrics
  WHERE metric = 'service_server'
  GROUP BY 1, 2, 3
),
ranked AS (
  SELECT
    *,
    row_number() OVER (PARTITION BY minute ORDER BY p99_seconds DESC, service, operation) AS slow_rank
  FROM ops
)
SELECT minute, slow_rank, service, operation, requests, errors, p99_seconds, max_seconds
FROM ranked
WHERE slow_rank <= 10
ORDER BY minute, slow_rank
