-- The totals of `red_metrics` for a job run as a group of instances
-- (`spanflow run --instance`): each instance writes its own partial rows of an interval
-- (the traces it closed), and adding them up by interval and series gives what one
-- instance reading every partition writes. One instance's rows come out unchanged.
--   spanflow sql --output-dir <dir> --file sql/group/red_metrics.sql
SELECT
    interval_start,
    interval_end,
    metric,
    service,
    instance,
    operation,
    call_type,
    peer,
    status,
    tenant,
    sum(requests) AS requests,
    sum(errors) AS errors,
    sum(slow) AS slow,
    sum(duration_sum_ns) AS duration_sum_ns,
    min(duration_min_ns) AS duration_min_ns,
    max(duration_max_ns) AS duration_max_ns,
    first_value(bucket_bounds) AS bucket_bounds,
    sum_buckets(bucket_counts) AS bucket_counts
FROM red_metrics
GROUP BY interval_start, interval_end, metric, service, instance, operation, call_type, peer, status, tenant
ORDER BY interval_start, metric, service, instance, operation, call_type, peer, status, tenant
