-- Error hot spots per minute: service-graph edges (caller -> callee, including virtual
-- nodes for databases, caches and external hosts) that failed, with their error rate
-- and p99 latency, worst first.
--
-- As a rollup:  from: graph, window: 1m.   Ad hoc: spanflow sql --file sql/error_hotspots_by_edge.sql
SELECT
  date_bin(INTERVAL '1 minute', interval_start) AS minute,
  source,
  target,
  target_kind,
  call_type,
  sum(requests) AS requests,
  sum(errors) AS errors,
  CAST(sum(errors) AS DOUBLE) / CAST(nullif(sum(requests), 0) AS DOUBLE) AS error_rate,
  quantile_from_buckets(first_value(bucket_bounds), sum_buckets(bucket_counts), 0.99) AS p99_seconds
FROM service_relation
GROUP BY 1, 2, 3, 4, 5
HAVING sum(errors) > 0
ORDER BY minute, errors DESC, source, target, target_kind, call_type
