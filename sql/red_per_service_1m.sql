-- Per-service RED per minute: requests, errors, error rate, slow calls, mean and
-- p50/p99 latency of each service's entry spans (server and consumer spans), merged
-- from the red_metrics intervals (10 s in jobs/demo.yaml) with their histograms.
--
-- As a rollup:  rollups: { red_per_service_1m: { from: metrics, sql: ../sql/red_per_service_1m.sql, window: 1m } }
-- Ad hoc:       spanflow sql --file sql/red_per_service_1m.sql
SELECT
  date_bin(INTERVAL '1 minute', interval_start) AS minute,
  service,
  sum(requests) AS requests,
  sum(errors) AS errors,
  CAST(sum(errors) AS DOUBLE) / CAST(nullif(sum(requests), 0) AS DOUBLE) AS error_rate,
  sum(slow) AS slow,
  CAST(sum(duration_sum_ns) AS DOUBLE) / CAST(nullif(sum(requests), 0) AS DOUBLE) / 1e9 AS mean_seconds,
  quantile_from_buckets(first_value(bucket_bounds), sum_buckets(bucket_counts), 0.5) AS p50_seconds,
  quantile_from_buckets(first_value(bucket_bounds), sum_buckets(bucket_counts), 0.99) AS p99_seconds
FROM red_metrics
WHERE metric = 'service_server'
GROUP BY 1, 2
ORDER BY minute, service
