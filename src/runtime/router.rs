//! The router: decodes the sources' records in order, on the runtime's workers, keeps
//! the watermark of every split, and hands each shard its spans (by trace id) and the
//! same watermark sequence; dead letters go to their tables here.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use spanflow_operators::Sym;
use tokio::sync::mpsc;

use super::io::{ConnectorError, Position, Records, SourceEvent, TableWriter};
use super::shard::ShardMsg;
use super::watermark::{WatermarkSettings, WatermarkTracker};
use super::{Progress, RunError, SinkError, TableTarget};
use crate::formats::{DecodeStats, Decoded, RecordMeta, SpanDecoder};
use crate::tables::{DeadLetterRows, TableRows};

/// What the router needs.
pub(crate) struct RouteInput<'a> {
    pub src_rx: mpsc::Receiver<SourceEvent>,
    pub shard_txs: &'a [mpsc::Sender<ShardMsg>],
    /// Name and watermark settings of each source.
    pub split_settings: &'a [(Sym, WatermarkSettings)],
    pub dead_letter_targets: Vec<TableTarget>,
    /// Part number of the dead-letter writers.
    pub part: usize,
    pub parallelism: usize,
    pub resumed_watermark: u64,
    pub progress: &'a Arc<Progress>,
    pub spans_seen: Option<Arc<AtomicU64>>,
}

/// Where the router got to when every source had ended.
pub(crate) struct Routed {
    pub tracker: WatermarkTracker,
    /// The last watermark sent to the shards.
    pub last_wm: u64,
    /// Per source: the position it reported at its end.
    pub positions: Vec<Option<Position>>,
    pub decode_stats: DecodeStats,
    /// The first failure (a source's, or a bug's); the run ends with it.
    pub failure: Option<RunError>,
    pub dead_rows: DeadLetterRows,
    pub dead_writers: Vec<(TableTarget, Box<dyn TableWriter>)>,
}

/// Runs until every source has reported its end.
pub(crate) async fn route(input: RouteInput<'_>) -> Result<Routed, RunError> {
    let RouteInput {
        src_rx,
        shard_txs,
        split_settings,
        dead_letter_targets,
        part,
        parallelism,
        resumed_watermark,
        progress,
        spans_seen,
    } = input;
    let n_sources = split_settings.len();
    let mut dead_rows = DeadLetterRows::default();
    let mut dead_writers = Vec::new();
    for t in &dead_letter_targets {
        let w = super::open_writer(t, part, dead_rows.schema())?;
        dead_writers.push((t.clone(), w));
    }
    let mut tracker = WatermarkTracker::new(n_sources);
    // Every source's split holds the watermark from the start, so a source that is slow
    // to deliver its first records does not find the watermark already past them.
    let start = Instant::now();
    for (i, (_, wm)) in split_settings.iter().enumerate() {
        tracker.add_split((i, 0), wm.max_out_of_order, wm.idle_timeout, start);
    }
    tracker.resume_at(resumed_watermark);
    let mut positions: Vec<Option<Position>> = vec![None; n_sources];
    let mut decode_stats = DecodeStats::default();
    let decoded = tokio_stream_from(src_rx)
        .map(|ev| async move {
            match ev {
                SourceEvent::Records {
                    source,
                    name,
                    format,
                    records:
                        Records {
                            split,
                            topic,
                            partition,
                            first_offset,
                            offsets,
                            records,
                        },
                } => {
                    // Decoding runs as a task on the runtime's workers (one per core, shared
                    // with the shards), not on the blocking pool: a chunk is two records,
                    // about a millisecond of work, and extra decoding threads only made
                    // the OS preempt the shards (twice the context switches, and each
                    // switch cost the shard its cache; 10% more CPU per span, measured).
                    let res = tokio::spawn(async move {
                        let mut dec = SpanDecoder::with_shards(parallelism);
                        let mut out = Decoded::default();
                        // Sized for the whole chunk: growing it copied every span again.
                        out.spans
                            .reserve(records.iter().map(|r| r.len()).sum::<usize>() / 256);
                        let mut ends = Vec::with_capacity(records.len());
                        for (i, r) in records.iter().enumerate() {
                            let meta = RecordMeta {
                                topic,
                                source: name,
                                split: partition,
                                offset: offsets
                                    .as_ref()
                                    .and_then(|o| o.get(i).copied())
                                    .unwrap_or(first_offset + i as u64),
                            };
                            dec.decode(format, r, &meta, &mut out);
                            ends.push(out.spans.len());
                        }
                        let records = route_records(out.spans, &ends, parallelism);
                        (out.dead_letters, records, *dec.stats())
                    })
                    .await;
                    match res {
                        Ok((dead_letters, records, stats)) => Event::Decoded {
                            source,
                            split,
                            dead_letters,
                            records,
                            stats,
                        },
                        Err(e) => Event::Failed(format!("decoder task failed: {e}")),
                    }
                }

                SourceEvent::Done { source, position } => Event::Done { source, position },
                SourceEvent::SplitsAdded { source, splits } => {
                    Event::SplitsAdded { source, splits }
                }
                SourceEvent::SplitsRemoved { source, splits } => {
                    Event::SplitsRemoved { source, splits }
                }
                SourceEvent::Failed { source, error } => Event::SourceFailed { source, error },
            }
        })
        .buffered(parallelism + 1);
    tokio::pin!(decoded);

    let mut per_shard: Vec<Vec<spanflow_operators::Span>> =
        (0..parallelism).map(|_| Vec::new()).collect();
    let mut last_wm = resumed_watermark;
    let mut ended_sources = 0usize;
    let mut failure: Option<RunError> = None;
    let idle_check = Duration::from_millis(500);
    loop {
        let next = tokio::time::timeout(idle_check, decoded.next()).await;
        let now = Instant::now();
        let item = match next {
            Ok(Some(item)) => Some(item),
            Ok(None) => break,
            Err(_) => None,
        };
        match item {
            Some(Event::Decoded {
                source,
                split,
                dead_letters,
                records,
                stats,
            }) => {
                decode_stats.merge(&stats);
                tracker.touch((source, split), now);

                progress.spans.fetch_add(stats.spans, Ordering::Relaxed);
                if let Some(seen) = &spans_seen {
                    seen.fetch_add(stats.spans, Ordering::Relaxed);
                }
                for d in &dead_letters {
                    dead_rows.push(d);
                }
                if dead_rows.len() >= 4096 {
                    flush_dead(&mut dead_rows, &mut dead_writers)?;
                }
                // The watermark may advance after every record (as a Kafka source's
                // would), never in the middle of one: spans before it reach the shards
                // first.
                for record in records {
                    if let Some(t) = record.max_end {
                        tracker.observe((source, split), t);
                    }
                    for (pending, spans) in per_shard.iter_mut().zip(record.per_shard) {
                        if pending.is_empty() {
                            *pending = spans;
                        } else {
                            pending.extend(spans);
                        }
                    }
                    let wm = tracker.watermark(now);
                    if wm > last_wm && wm != spanflow_operators::WATERMARK_END {
                        last_wm = wm;
                        send_spans(source, &mut per_shard, shard_txs, &mut failure).await;
                        for tx in shard_txs {
                            let _ = tx.send(ShardMsg::Watermark(wm)).await;
                        }
                    }
                }
                send_spans(source, &mut per_shard, shard_txs, &mut failure).await;
            }
            Some(Event::Done { source, position }) => {
                if let Some(slot) = positions.get_mut(source) {
                    *slot = position;
                }
                tracker.finish_source(source);
                ended_sources += 1;
            }
            Some(Event::SplitsAdded { source, splits }) => {
                // The placeholder split held the watermark until the source knew its
                // real splits.
                tracker.remove_split((source, 0));
                if let Some((_, wm)) = split_settings.get(source) {
                    for s in splits {
                        tracker.add_split((source, s), wm.max_out_of_order, wm.idle_timeout, now);
                    }
                }
            }
            Some(Event::SplitsRemoved { source, splits }) => {
                for s in splits {
                    tracker.remove_split((source, s));
                }
            }
            Some(Event::SourceFailed { source, error }) => {
                ended_sources += 1;
                let name = split_settings
                    .get(source)
                    .map_or("?", |s| s.0.as_str())
                    .to_owned();
                failure.get_or_insert(RunError::Source {
                    source_name: name,
                    error,
                });
                tracker.finish_source(source);
            }
            Some(Event::Failed(msg)) => {
                failure.get_or_insert(RunError::Internal(msg));
            }
            None => {}
        }
        // Sources that wait to commit keep their channel open: the loop ends when
        // every source has reported its end, not when the channel closes.
        if ended_sources >= n_sources {
            break;
        }
        let wm = tracker.watermark(now);
        if wm > last_wm && wm != spanflow_operators::WATERMARK_END {
            last_wm = wm;
            for tx in shard_txs {
                let _ = tx.send(ShardMsg::Watermark(wm)).await;
            }
        }
    }
    Ok(Routed {
        tracker,
        last_wm,
        positions,
        decode_stats,
        failure,
        dead_rows,
        dead_writers,
    })
}

enum Event {
    Decoded {
        source: usize,
        split: u32,
        dead_letters: Vec<crate::formats::DeadLetter>,
        /// In record order.
        records: Vec<RoutedRecord>,
        stats: DecodeStats,
    },

    Done {
        source: usize,
        position: Option<Position>,
    },
    SplitsAdded {
        source: usize,
        splits: Vec<u32>,
    },
    SplitsRemoved {
        source: usize,
        splits: Vec<u32>,
    },
    SourceFailed {
        source: usize,
        error: ConnectorError,
    },
    Failed(String),
}

/// One record's spans, split by shard.
struct RoutedRecord {
    /// Latest end time among the spans (their event times), `None` without spans.
    max_end: Option<u64>,
    /// Spans for shard `i`, in record order.
    per_shard: Vec<Vec<spanflow_operators::Span>>,
}

/// Splits decoded spans by record (`ends[i]` is the end of record i's spans) and by
/// shard (trace id hash), on the decoding thread: the spans are still in its cache
/// there, and the router (one thread for the whole job) only hands vectors on.
fn route_records(
    spans: Vec<spanflow_operators::Span>,
    ends: &[usize],
    parallelism: usize,
) -> Vec<RoutedRecord> {
    let shards = parallelism.max(1);
    let mut spans = spans.into_iter();
    let mut start = 0;
    let mut records = Vec::with_capacity(ends.len());
    for &end in ends {
        let n = end.saturating_sub(start);
        start = end;
        // Trace ids hash evenly: room for a fair share and some slack.
        let mut per_shard: Vec<Vec<spanflow_operators::Span>> = (0..shards)
            .map(|_| Vec::with_capacity(n / shards + n / (4 * shards) + 4))
            .collect();
        let mut max_end = None;
        for span in spans.by_ref().take(n) {
            max_end = Some(max_end.map_or(span.end_ns, |m: u64| m.max(span.end_ns)));
            let shard = span.trace_id.shard(shards);
            if let Some(v) = per_shard.get_mut(shard) {
                v.push(span);
            }
        }
        records.push(RoutedRecord { max_end, per_shard });
    }
    records
}

async fn send_spans(
    source: usize,
    per_shard: &mut [Vec<spanflow_operators::Span>],
    txs: &[mpsc::Sender<ShardMsg>],
    failure: &mut Option<RunError>,
) {
    for (i, batch) in per_shard.iter_mut().enumerate() {
        if !batch.is_empty() {
            // The next batch usually arrives as a whole vector from a decoding thread.
            let b = std::mem::take(batch);
            if txs[i]
                .send(ShardMsg::Spans { source, spans: b })
                .await
                .is_err()
            {
                failure.get_or_insert(RunError::Internal("a shard stopped early".into()));
            }
        }
    }
}

pub(crate) fn flush_dead(
    rows: &mut DeadLetterRows,
    writers: &mut [(TableTarget, Box<dyn TableWriter>)],
) -> Result<(), RunError> {
    if rows.is_empty() {
        return Ok(());
    }
    let batch = rows.finish();
    for (t, w) in writers.iter_mut() {
        // Each target only takes the dead letters of the source it names.
        let mask: Vec<bool> = batch_sources(&batch).map(|s| s == t.node).collect();
        let filtered = arrow::compute::filter_record_batch(&batch, &mask.into())
            .map_err(|e| RunError::Internal(format!("filtering dead letters: {e}")))?;
        w.write(&filtered).map_err(|e| SinkError::of(t, e))?;
    }
    Ok(())
}

fn batch_sources(batch: &arrow::record_batch::RecordBatch) -> impl Iterator<Item = &str> {
    let col = batch
        .column(0)
        .as_any()
        .downcast_ref::<arrow::array::StringArray>();
    (0..batch.num_rows()).map(move |i| col.map_or("", |c| c.value(i)))
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
