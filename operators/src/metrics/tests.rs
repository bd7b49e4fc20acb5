use super::*;

const MS: u64 = 1_000_000;

fn ex(trace: u8, span: u8, value_ns: u64, t: u64, error: bool, sampled: bool) -> Exemplar {
    Exemplar {
        trace_id: TraceId([trace; 16]),
        span_id: SpanId([span; 8]),
        value_ns,
        timestamp_ns: t,
        error,
        sampled,
    }
}

fn buckets() -> Buckets {
    Buckets::new(&[
        HumanDuration::millis(10),
        HumanDuration::millis(100),
        HumanDuration::millis(1000),
    ])
}

#[test]
fn bucket_index_uses_le_semantics() {
    let b = buckets();
    assert_eq!(
        b.index(10 * MS),
        0,
        "a value equal to a bound is in that bucket"
    );
    assert_eq!(b.index(10 * MS + 1), 1);
    assert_eq!(b.index(5 * 1000 * MS), 3, "+Inf");
    assert_eq!(b.len(), 4);
}

#[test]
fn exemplar_preference_sampled_then_error_then_slowest() {
    let mut a = SeriesAgg::new(1);
    a.observe(0, 5, false, ex(1, 1, 5, 10, false, false));
    a.observe(0, 9, false, ex(2, 1, 9, 10, false, false));
    assert_eq!(a.exemplars[0].map(|e| e.trace_id.0[0]), Some(2), "slowest");
    a.observe(0, 1, false, ex(3, 1, 1, 10, true, false));
    assert_eq!(
        a.exemplars[0].map(|e| e.trace_id.0[0]),
        Some(3),
        "error beats slow"
    );
    a.observe(0, 1, false, ex(4, 1, 1, 10, false, true));
    assert_eq!(
        a.exemplars[0].map(|e| e.trace_id.0[0]),
        Some(4),
        "sampled beats error"
    );
    assert_eq!(
        (a.requests, a.errors, a.min_ns, a.max_ns, a.sum_ns),
        (4, 1, 1, 9, 16)
    );
}

#[test]
fn merge_is_order_independent() {
    let obs = [
        (0usize, 5u64, ex(1, 1, 5, 1, false, true)),
        (1, 50, ex(2, 2, 50, 2, true, true)),
        (0, 7, ex(3, 3, 7, 3, false, false)),
    ];
    let mut whole = SeriesAgg::new(2);
    for (b, v, e) in obs {
        whole.observe(b, v, false, e);
    }
    for split in 0..=obs.len() {
        let (l, r) = obs.split_at(split);
        let mut a = SeriesAgg::new(2);
        let mut b = SeriesAgg::new(2);
        l.iter()
            .for_each(|(bk, v, e)| a.observe(*bk, *v, false, *e));
        r.iter()
            .for_each(|(bk, v, e)| b.observe(*bk, *v, false, *e));
        let mut ab = a.clone();
        ab.merge(&b);
        let mut ba = b.clone();
        ba.merge(&a);
        assert_eq!(ab, whole);
        assert_eq!(ba, whole);
    }
}

#[test]
fn intervals_flush_and_merge_across_shards() {
    let interval = HumanDuration::secs(10);
    let s = 1_000_000_000u64;
    let key = SeriesKey {
        service: Sym::new("a"),
        ..SeriesKey::new(Metric::ServiceNode)
    };
    let mut s0 = IntervalAggregator::new(interval, buckets());
    let mut s1 = IntervalAggregator::new(interval, buckets());
    s0.observe(key, 5 * MS, false, ex(1, 1, 5 * MS, 3 * s, false, true));
    s1.observe(key, 50 * MS, false, ex(2, 1, 50 * MS, 9 * s, false, true));
    s1.observe(key, 50 * MS, false, ex(3, 1, 50 * MS, 12 * s, false, true));
    let mut m = MetricsMerger::new(2, interval, 4, 100, true);
    let mut parts = Vec::new();
    s0.flush(10 * s - 1, &mut parts);
    assert_eq!(
        parts.len(),
        1,
        "[0,10s) is complete once the watermark is 10s - 1ns"
    );
    for p in parts.drain(..) {
        m.add(p);
    }
    assert!(
        m.on_watermark(0, 10 * s - 1).is_empty(),
        "shard 1 still holds it back"
    );
    s1.flush(15 * s, &mut parts);
    for p in parts.drain(..) {
        m.add(p);
    }
    let closed = m.on_watermark(1, 15 * s);
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0].start_ns, 0);
    assert_eq!(closed[0].series[0].1.requests, 2);
    assert_eq!(closed[0].series[0].1.counts, vec![1, 1, 0, 0]);
    // Late observation for a flushed interval is counted, not merged.
    s1.observe(key, 1, false, ex(9, 9, 1, 2 * s, false, true));
    assert_eq!(s1.late_observations, 1);
    s0.flush(WATERMARK_END, &mut parts);
    s1.flush(WATERMARK_END, &mut parts);
    for p in parts.drain(..) {
        m.add(p);
    }
    m.on_watermark(0, WATERMARK_END);
    let last = m.on_watermark(1, WATERMARK_END);
    assert_eq!(last.len(), 1);
    assert_eq!(last[0].start_ns, 10 * s);
}

#[test]
fn cardinality_limit_folds_the_quietest_series() {
    let interval = HumanDuration::secs(10);
    let mut agg = IntervalAggregator::new(interval, buckets());
    for (i, n) in [(1u8, 5), (2, 1), (3, 3)] {
        let key = SeriesKey {
            service: Sym::new(&format!("s{i}")),
            ..SeriesKey::new(Metric::ServiceNode)
        };
        for j in 0..n {
            agg.observe(key, MS, false, ex(i, j, MS, 1, false, true));
        }
    }
    let mut parts = Vec::new();
    agg.flush(WATERMARK_END, &mut parts);
    let mut m = MetricsMerger::new(1, interval, 4, 2, false);
    for p in parts {
        m.add(p);
    }
    let closed = m.on_watermark(0, WATERMARK_END);
    let names: Vec<(&str, u64)> = closed[0]
        .series
        .iter()
        .map(|(k, a)| (k.service.as_str(), a.requests))
        .collect();
    assert_eq!(names, vec![("__overflow__", 1), ("s1", 5), ("s3", 3)]);
    assert_eq!(closed[0].folded_series, 1);
    let total: u64 = closed[0].series.iter().map(|(_, a)| a.requests).sum();
    assert_eq!(total, 9, "nothing is lost by folding");
}

#[test]
fn unsampled_exemplars_dropped_when_sampling_is_on() {
    let mut a = SeriesAgg::new(1);
    a.observe(0, 5, false, ex(1, 1, 5, 1, true, false));
    a.keep_sampled_exemplars();
    assert_eq!(a.exemplars[0], None);
}

#[test]
fn quantiles_interpolate_like_prometheus() {
    let bounds = [0.1, 0.2, 0.4];
    let counts = [10, 10, 0, 0];
    assert_eq!(quantile_from_buckets(&bounds, &counts, 0.5), Some(0.1));
    let q = quantile_from_buckets(&bounds, &counts, 0.75).unwrap();
    assert!((q - 0.15).abs() < 1e-9, "{q}");
    assert_eq!(
        quantile_from_buckets(&bounds, &[0, 0, 0, 4], 0.99),
        Some(0.4)
    );
    assert_eq!(quantile_from_buckets(&bounds, &[0, 0, 0, 0], 0.5), None);
}

#[test]
fn openmetrics_text_with_exemplars() {
    let b = buckets();
    let key = SeriesKey {
        service: Sym::new("checkout"),
        operation: Sym::new("GET /cart/{id}"),
        ..SeriesKey::new(Metric::ServiceServer)
    };
    let mut a = SeriesAgg::new(b.len());
    let e = ex(0xab, 0xcd, 213 * MS, 1_700_000_000_123_000_000, false, true);
    a.observe(b.index(213 * MS), 213 * MS, false, e);
    let ci = ClosedInterval {
        start_ns: 0,
        end_ns: 10,
        series: vec![(key, a)],
        folded_series: 0,
    };
    let text = render_openmetrics(&ci, &b, "spanflow_");
    assert!(
        text.contains("# TYPE spanflow_service_server_duration_seconds histogram"),
        "{text}"
    );
    assert!(text.contains(
        "spanflow_service_server_duration_seconds_bucket{service=\"checkout\",operation=\"GET /cart/{id}\",le=\"1.0\"} 1 # {trace_id=\"abababababababababababababababab\",span_id=\"cdcdcdcdcdcdcdcd\"} 0.213 1700000000.123"
    ), "{text}");
    assert!(text.contains("le=\"+Inf\"} 1\n"), "{text}");
    assert!(text.ends_with("# EOF\n"));
}

/// What the aggregator must hand over: per (interval start, series), the `SeriesAgg` of
/// every observation not late at its arrival; an observation is late when its interval
/// started before the last flush's boundary.
mod reference {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Observe {
            series: u8,
            t: u64,
            value_ns: u64,
            slow: bool,
            error: bool,
            sampled: bool,
            id: u8,
        },
        Flush(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => (0u8..6, 1u64..50, any::<bool>(), 0u64..2_000, any::<bool>(), any::<bool>(), any::<bool>(), any::<u8>())
                .prop_map(|(series, t, edge, value, slow, error, sampled, id)| Op::Observe {
                    series,
                    t: t * 100 * MS - u64::from(edge),
                    value_ns: value * MS,
                    slow,
                    error,
                    sampled,
                    id,
                }),
            // Watermarks on and one before interval boundaries.
            1 => (1u64..60, any::<bool>()).prop_map(|(t, edge)| Op::Flush(t * 100 * MS - u64::from(edge))),
        ]
    }

    fn key(series: u8) -> SeriesKey {
        let metric = match series % 3 {
            0 => Metric::ServiceNode,
            1 => Metric::ServiceServer,
            _ => Metric::ServiceCall(CallType::Db),
        };
        SeriesKey {
            service: Sym::new(if series < 3 { "checkout" } else { "cart" }),
            ..SeriesKey::new(metric)
        }
    }

    fn sorted(mut parts: Vec<Partial>) -> Vec<(u64, Vec<(SeriesKey, SeriesAgg)>)> {
        parts.sort_by_key(|p| p.start_ns);
        parts
            .into_iter()
            .map(|mut p| {
                p.series.sort_by_key(|(k, _)| *k);
                (p.start_ns, p.series)
            })
            .collect()
    }

    proptest! {
        #[test]
        fn aggregator_matches_naive_model(ops in proptest::collection::vec(op(), 1..200)) {
            let interval = HumanDuration::millis(1000);
            let mut agg = IntervalAggregator::new(interval, buckets());
            let mut got = Vec::new();
            // The model: every interval's series in a sorted map, flushed the same way.
            let mut model: BTreeMap<u64, BTreeMap<SeriesKey, SeriesAgg>> = BTreeMap::new();
            let mut want = Vec::new();
            let mut boundary = 0u64;
            let mut late = 0u64;
            let n = buckets().len();
            for op in ops {
                match op {
                    Op::Observe { series, t, value_ns, slow, error, sampled, id } => {
                        let e = ex(id, series, value_ns, t, error, sampled);
                        agg.observe(key(series), value_ns, slow, e);
                        let start = t - t % (1000 * MS);
                        if start < boundary {
                            late += 1;
                            continue;
                        }
                        model
                            .entry(start)
                            .or_default()
                            .entry(key(series))
                            .or_insert_with(|| SeriesAgg::new(n))
                            .observe(buckets().index(value_ns), value_ns, slow, e);
                    }
                    Op::Flush(w) => {
                        agg.flush(w, &mut got);
                        let done: Vec<u64> = model
                            .keys()
                            .copied()
                            .filter(|s| s + 1000 * MS <= w + 1)
                            .collect();
                        for s in done {
                            if let Some(series) = model.remove(&s) {
                                want.push(Partial { start_ns: s, series: series.into_iter().collect() });
                            }
                        }
                        let b = w + 1;
                        boundary = boundary.max(b - b % (1000 * MS));
                    }
                }
            }
            agg.flush(WATERMARK_END, &mut got);
            for (s, series) in std::mem::take(&mut model) {
                want.push(Partial { start_ns: s, series: series.into_iter().collect() });
            }
            prop_assert_eq!(agg.late_observations, late);
            prop_assert_eq!(sorted(got), sorted(want));
        }
    }
}
