-- Exemplar lookup for the slowest bucket: per minute and service, the exemplar of the
-- highest histogram bucket that has one among the service's entry spans (errors and
-- sampled traces were preferred when it was chosen), with its trace id to open in a
-- trace viewer or to look up in `spans`.
--
-- As a rollup:  from: metrics.exemplars, window: 1m.
-- Ad hoc:       spanflow sql --file sql/slowest_bucket_exemplars.sql
WITH ranked AS (
  SELECT
    date_bin(INTERVAL '1 minute', interval_start) AS minute,
    service,
    operation,
    bucket_le,
    value_seconds,
    hex(trace_id) AS trace_id,
    hex(span_id) AS span_id,
    "timestamp",
    error,
    sampled,
    row_number() OVER (
      PARTITION BY date_bin(INTERVAL '1 minute', interval_start), service
      ORDER BY bucket_le DESC, value_seconds DESC, hex(trace_id), hex(span_id)
    ) AS n
  FROM exemplars
  WHERE metric = 'service_server'
)
SELECT minute, service, operation, bucket_le, value_seconds, trace_id, span_id, "timestamp", error, sampled
FROM ranked
WHERE n = 1
ORDER BY minute, service
