-- The totals of `service_relation` for a job run as a group of instances
-- (`spanflow run --instance`): each instance's partial rows of an edge and interval
-- added up, as sql/group/red_metrics.sql does for the RED series.
--   spanflow sql --output-dir <dir> --file sql/group/service_relation.sql
SELECT
    interval_start,
    interval_end,
    source,
    target,
    target_kind,
    call_type,
    connection_type,
    sum(requests) AS requests,
    sum(errors) AS errors,
    sum(slow) AS slow,
    sum(duration_sum_ns) AS duration_sum_ns,
    min(duration_min_ns) AS duration_min_ns,
    max(duration_max_ns) AS duration_max_ns,
    first_value(bucket_bounds) AS bucket_bounds,
    sum_buckets(bucket_counts) AS bucket_counts
FROM service_relation
GROUP BY interval_start, interval_end, source, target, target_kind, call_type, connection_type
ORDER BY interval_start, source, target, target_kind, call_type, connection_type
