//! Producing to Kafka: the idempotent producer shared by the sink and
//! `spanflow gen --kafka`, and the splitting of generated requests by partition.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use spanflow_operators::TraceId;

use crate::formats::otlp_split::split_by_trace;

use crate::runtime::io::ConnectorError;

/// How long `flush` waits for outstanding deliveries at the end.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(120);

/// Counts deliveries and keeps the first failure: librdkafka retries a failed send
/// itself (up to `message.timeout.ms`), so a failure reported here is final and must
/// fail the run rather than be dropped.
#[derive(Default)]
pub(crate) struct DeliveryCtx {
    delivered: AtomicU64,
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
    errors: super::ErrorLog,
}

impl ClientContext for DeliveryCtx {
    fn error(&self, error: KafkaError, reason: &str) {
        self.errors.warn("producer", &error, reason);
    }
}

impl ProducerContext for DeliveryCtx {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: Self::DeliveryOpaque) {
        match result {
            Ok(_) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, m)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut first) = self.first_error.lock()
                    && first.is_none()
                {
                    use rdkafka::message::Message;
                    *first = Some(format!(
                        "delivery to {}/{} failed: {e}",
                        m.topic(),
                        m.partition()
                    ));
                }
            }
        }
    }
}

/// An idempotent producer (ordering per partition kept across librdkafka's retries).
pub struct KafkaProducer {
    inner: ThreadedProducer<DeliveryCtx>,
    brokers: String,
    /// One transaction at a time (tables of a sink share the producer).
    txn: Mutex<()>,
}

impl std::fmt::Debug for KafkaProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaProducer")
            .field("brokers", &self.brokers)
            .finish_non_exhaustive()
    }
}

impl KafkaProducer {
    /// Creates the producer; `properties` may tune batching (`linger.ms`, ...).
    pub fn new(
        brokers: &str,
        properties: &BTreeMap<String, String>,
    ) -> Result<Self, ConnectorError> {
        let mut cc = super::client_config(brokers, &BTreeMap::new());
        cc.set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("compression.type", "lz4")
            .set("message.max.bytes", "16777216");
        for (k, v) in properties {
            cc.set(k, v);
        }
        let inner: ThreadedProducer<DeliveryCtx> = cc
            .create_with_context(DeliveryCtx::default())
            .map_err(|e| {
            ConnectorError::user(format!("cannot create a Kafka producer for {brokers}: {e}"))
        })?;
        Ok(KafkaProducer {
            inner,
            brokers: brokers.to_owned(),
            txn: Mutex::new(()),
        })
    }

    /// A transactional producer (`transactional.id` = `id`): creating it aborts any
    /// transaction a previous process with the same id left open.
    pub fn transactional(
        brokers: &str,
        properties: &BTreeMap<String, String>,
        id: &str,
    ) -> Result<Self, ConnectorError> {
        let mut props = properties.clone();
        props.insert("transactional.id".into(), id.to_owned());
        let p = Self::new(brokers, &props)?;
        p.inner.init_transactions(FLUSH_TIMEOUT).map_err(|e| {
            ConnectorError::external(format!(
                "initializing transactions of `{id}` on {brokers}: {e}"
            ))
        })?;
        Ok(p)
    }

    /// Produces `records` (topic, key, value) in one transaction: all of them become
    /// visible to `read_committed` consumers together, or none.
    pub fn send_in_transaction<'a>(
        &self,
        records: impl IntoIterator<Item = (&'a str, &'a [u8], &'a [u8])>,
    ) -> Result<(), ConnectorError> {
        let fail = |what: &str, e: KafkaError| {
            ConnectorError::external(format!("{what} a transaction on {}: {e}", self.brokers))
        };
        let _one = self
            .txn
            .lock()
            .map_err(|_| ConnectorError::internal("poisoned lock"))?;
        self.inner
            .begin_transaction()
            .map_err(|e| fail("beginning", e))?;
        let sent = records
            .into_iter()
            .try_for_each(|(topic, key, value)| self.send(topic, None, Some(key), value));
        if let Err(e) = sent {
            let _ = self.inner.abort_transaction(FLUSH_TIMEOUT);
            return Err(e);
        }
        // Commit flushes first; a failed delivery fails the commit.
        self.inner
            .commit_transaction(FLUSH_TIMEOUT)
            .map_err(|e| fail("committing", e))?;
        self.check()
    }

    /// Queues one record; blocks while librdkafka's queue is full (backpressure).
    pub fn send(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: Option<&[u8]>,
        payload: &[u8],
    ) -> Result<(), ConnectorError> {
        self.check()?;
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).payload(payload);
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(p) = partition {
            record = record.partition(p);
        }
        loop {
            match self.inner.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(2));
                    self.check()?;
                }
                Err((e, _)) => {
                    return Err(ConnectorError::external(format!(
                        "producing to `{topic}`: {e}"
                    )));
                }
            }
        }
    }

    /// Fails when a delivery has failed.
    fn check(&self) -> Result<(), ConnectorError> {
        let ctx = self.inner.context();
        if ctx.failed.load(Ordering::Relaxed) > 0 {
            let first = ctx
                .first_error
                .lock()
                .ok()
                .and_then(|f| f.clone())
                .unwrap_or_default();
            return Err(ConnectorError::external(format!(
                "{} record(s) could not be delivered to {}: {first}",
                ctx.failed.load(Ordering::Relaxed),
                self.brokers
            )));
        }
        Ok(())
    }

    /// Waits until every queued record is delivered; fails if any was not.
    pub fn flush(&self) -> Result<u64, ConnectorError> {
        self.inner
            .flush(FLUSH_TIMEOUT)
            .map_err(|e| ConnectorError::external(format!("flushing to {}: {e}", self.brokers)))?;
        self.check()?;
        Ok(self.inner.context().delivered.load(Ordering::Relaxed))
    }
}

/// The partition of a trace: the same hash the router shards by, so a partition's
/// traces land on few shards.
pub fn partition_of(trace_id: &[u8], partitions: i32) -> i32 {
    let mut id = [0u8; 16];
    let n = trace_id.len().min(16);
    id[..n].copy_from_slice(&trace_id[..n]);
    (TraceId(id).hash64() % partitions.max(1) as u64) as i32
}

/// Splits an OTLP protobuf request into one request per partition (by trace id), each
/// keeping its spans' resource and scope. A record that does not decode is returned
/// whole for partition `fallback` (garbage stays garbage, for dead-letter tests).
pub fn split_request(payload: &[u8], partitions: i32, fallback: i32) -> Vec<(i32, Vec<u8>)> {
    try_split(payload, partitions).unwrap_or_else(|| vec![(fallback, payload.to_vec())])
}

/// [`split_request`], or None when the record does not decode. The framing is read
/// without decoding ([`split_by_trace`]); what that refuses (a group field, say) goes
/// through prost, which also settles whether the record decodes at all.
pub(crate) fn try_split(payload: &[u8], partitions: i32) -> Option<Vec<(i32, Vec<u8>)>> {
    split_by_trace(payload, |id| partition_of(id, partitions))
        .ok()
        .or_else(|| try_split_prost(payload, partitions))
}

/// The reference for [`try_split`]: the request decoded into prost structs, grouped and
/// encoded again.
pub fn try_split_prost(payload: &[u8], partitions: i32) -> Option<Vec<(i32, Vec<u8>)>> {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};
    use prost::Message;

    let req = ExportTraceServiceRequest::decode(payload).ok()?;
    let mut parts: BTreeMap<i32, ExportTraceServiceRequest> = BTreeMap::new();
    for rs in req.resource_spans {
        let mut per: BTreeMap<i32, ResourceSpans> = BTreeMap::new();
        for ss in rs.scope_spans {
            let mut per_scope: BTreeMap<i32, ScopeSpans> = BTreeMap::new();
            for span in ss.spans {
                let p = partition_of(&span.trace_id, partitions);
                per_scope
                    .entry(p)
                    .or_insert_with(|| ScopeSpans {
                        scope: ss.scope.clone(),
                        spans: Vec::new(),
                        schema_url: ss.schema_url.clone(),
                    })
                    .spans
                    .push(span);
            }
            for (p, s) in per_scope {
                per.entry(p)
                    .or_insert_with(|| ResourceSpans {
                        resource: rs.resource.clone(),
                        scope_spans: Vec::new(),
                        schema_url: rs.schema_url.clone(),
                    })
                    .scope_spans
                    .push(s);
            }
        }
        for (p, r) in per {
            parts.entry(p).or_default().resource_spans.push(r);
        }
    }
    Some(
        parts
            .into_iter()
            .map(|(p, r)| (p, r.encode_to_vec()))
            .collect(),
    )
}

/// What `produce_generated` did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProduceStats {
    /// Generator records consumed.
    pub records: u64,
    /// Kafka messages delivered.
    pub messages: u64,
    /// Payload bytes produced.
    pub bytes: u64,
    /// Wall seconds, flush included.
    pub seconds: f64,
}

/// Target size of one produced message. Like the Collector's batch processor feeding
/// its Kafka exporter, each message carries many spans (about 2,500 here), so the
/// broker's per-message cost does not dominate.
pub const MESSAGE_BYTES: usize = 1 << 20;

/// Longest stretch of arrival time one produced message covers: a Collector's batch
/// processor sends at least every 200 ms (its default timeout), so a partition that
/// gets few spans still gets a message about that often, and its messages do not
/// jump its watermark by half a minute each (with many partitions, a message of
/// [`MESSAGE_BYTES`] would cover that long).
pub const MESSAGE_WINDOW_NS: u64 = 1_000_000_000;

/// Produces generated OTLP protobuf records to `topic`, split by trace id over its
/// `partitions` and batched per partition into messages of about [`MESSAGE_BYTES`] or
/// [`MESSAGE_WINDOW_NS`] of the records' arrival times, whichever comes first
/// (concatenated protobuf messages merge: the result is one request with all their
/// resource spans), at most `spans_per_second` (None: as fast as possible). A record
/// that does not decode is sent alone, as it is. `on_record` sees each record's span
/// count (for a progress bar).
pub fn produce_generated(
    producer: &KafkaProducer,
    topic: &str,
    partitions: i32,
    records: impl Iterator<Item = crate::testkit::generator::GeneratedRecord>,
    spans_per_second: Option<f64>,
    on_record: impl FnMut(usize),
) -> Result<ProduceStats, ConnectorError> {
    produce(
        producer,
        (topic, partitions),
        true,
        records,
        spans_per_second,
        on_record,
    )
}

/// [`produce_generated`] without splitting by trace id: each record goes whole to the
/// next partition in turn, as producers that do not key by trace id write (a trace's
/// spans end up in several partitions; the repartition stage's input).
pub fn produce_generated_unkeyed(
    producer: &KafkaProducer,
    topic: &str,
    partitions: i32,
    records: impl Iterator<Item = crate::testkit::generator::GeneratedRecord>,
    spans_per_second: Option<f64>,
    on_record: impl FnMut(usize),
) -> Result<ProduceStats, ConnectorError> {
    produce(
        producer,
        (topic, partitions),
        false,
        records,
        spans_per_second,
        on_record,
    )
}

fn produce(
    producer: &KafkaProducer,
    (topic, partitions): (&str, i32),
    by_trace: bool,
    records: impl Iterator<Item = crate::testkit::generator::GeneratedRecord>,
    spans_per_second: Option<f64>,
    mut on_record: impl FnMut(usize),
) -> Result<ProduceStats, ConnectorError> {
    let t0 = Instant::now();
    let mut stats = ProduceStats::default();
    let mut spans_sent = 0u64;
    // Per partition: the batch and the arrival time of its first record.
    let mut pending: BTreeMap<i32, (Vec<u8>, u64)> = BTreeMap::new();
    let send = |p: i32, bytes: &[u8], stats: &mut ProduceStats| -> Result<(), ConnectorError> {
        producer.send(topic, Some(p), None, bytes)?;
        stats.messages += 1;
        stats.bytes += bytes.len() as u64;
        Ok(())
    };
    for (i, r) in records.enumerate() {
        let fallback = (i as i64 % i64::from(partitions.max(1))) as i32;
        // An undecodable record must not be merged into a batch: it goes alone.
        let split = if r.garbage {
            None
        } else if by_trace {
            try_split(&r.payload, partitions)
        } else {
            Some(vec![(fallback, r.payload.clone())])
        };
        if let Some(parts) = split {
            for (p, (buf, since)) in pending.iter_mut() {
                if !buf.is_empty() && r.arrival_ns.saturating_sub(*since) >= MESSAGE_WINDOW_NS {
                    let full = std::mem::take(buf);
                    send(*p, &full, &mut stats)?;
                }
            }
            for (p, bytes) in parts {
                let (buf, since) = pending.entry(p).or_default();
                if buf.is_empty() {
                    *since = r.arrival_ns;
                }
                buf.extend_from_slice(&bytes);
                if buf.len() >= MESSAGE_BYTES {
                    let full = std::mem::take(buf);
                    send(p, &full, &mut stats)?;
                }
            }
        } else {
            send(fallback, &r.payload, &mut stats)?;
        }
        stats.records += 1;
        spans_sent += r.spans as u64;
        on_record(r.spans);
        if let Some(rate) = spans_per_second.filter(|r| *r > 0.0) {
            let due = Duration::from_secs_f64(spans_sent as f64 / rate);
            if let Some(wait) = due.checked_sub(t0.elapsed()) {
                // Pacing: what is buffered goes out before waiting.
                for (p, (buf, _)) in pending.iter_mut().filter(|(_, (b, _))| !b.is_empty()) {
                    let full = std::mem::take(buf);
                    send(*p, &full, &mut stats)?;
                }
                std::thread::sleep(wait);
            }
        }
    }
    for (p, (buf, _)) in pending {
        if !buf.is_empty() {
            send(p, &buf, &mut stats)?;
        }
    }
    producer.flush()?;
    stats.seconds = t0.elapsed().as_secs_f64();
    Ok(stats)
}
