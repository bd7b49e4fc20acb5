//! Kafka: the `kafka` source (consumer group, start/end positions, per-partition
//! splits), the `kafka` sink (Avro, JSON or OTLP protobuf records) and the producer
//! behind `spanflow gen --kafka`.

mod config;
pub mod encode;
pub mod produce;
pub mod repartition;
pub mod sink;
pub mod source;

pub use config::{
    EndPosition, KafkaSinkConfig, KafkaSourceConfig, OutputFormat, RepartitionConfig,
    StartPosition, parse_time,
};

use std::collections::BTreeMap;

use rdkafka::ClientConfig;

use crate::runtime::io::ConnectorError;

/// Logs librdkafka's client errors without flooding: while brokers are down it reports
/// the same few errors hundreds of times a second. Each distinct message is logged the
/// first time, then at most every 10 s with how many repeats were left out.
#[derive(Default)]
pub(crate) struct ErrorLog {
    seen: std::sync::Mutex<BTreeMap<String, (std::time::Instant, u64)>>,
}

impl ErrorLog {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(10);

    pub(crate) fn warn(&self, client: &str, error: &rdkafka::error::KafkaError, reason: &str) {
        let Ok(mut seen) = self.seen.lock() else {
            return;
        };
        if seen.len() > 64 {
            seen.clear();
        }
        let now = std::time::Instant::now();
        let text = format!("{error}: {reason}");
        match seen.get_mut(&text) {
            Some((at, repeats)) if at.elapsed() < Self::EVERY => *repeats += 1,
            Some((at, repeats)) => {
                tracing::warn!(%error, reason, repeats = *repeats, "kafka {client} (repeated)");
                (*at, *repeats) = (now, 0);
            }
            None => {
                tracing::warn!(%error, reason, "kafka {client}");
                seen.insert(text, (now, 0));
            }
        }
    }
}

/// A consumer-group member that leaves its group when dropped, waiting at most
/// [`GroupConsumer::CLOSE_TIMEOUT`] for it. librdkafka's close runs the rebalance
/// callback and waits for the group to acknowledge; when another member leaves at the
/// same moment, that wait has been seen never to end (a stopped instance of a group
/// hung after its last checkpoint; librdkafka issues #4041 and #4884 describe close
/// waiting forever on a callback's request). Past the timeout the close goes on in
/// the background and the group notices the member gone when its session times out.
pub(crate) struct GroupConsumer<C: rdkafka::consumer::ConsumerContext + 'static> {
    /// Shared with the partition queues split off it ([`GroupConsumer::shared`]),
    /// which must be dropped first: the member leaves its group when the last goes.
    consumer: Option<std::sync::Arc<rdkafka::consumer::BaseConsumer<C>>>,
    close_timeout: std::time::Duration,
    /// One clone per record payload still held where librdkafka fetched it
    /// ([`Fetched`]): the consumer is destroyed only once this is the last, as
    /// librdkafka requires its handle to be the last object destroyed.
    payloads: std::sync::Arc<()>,
}

impl<C: rdkafka::consumer::ConsumerContext + 'static> GroupConsumer<C> {
    /// How long a drop waits for the member to leave its group.
    pub(crate) const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

    pub(crate) fn new(consumer: rdkafka::consumer::BaseConsumer<C>) -> Self {
        GroupConsumer {
            consumer: Some(std::sync::Arc::new(consumer)),
            close_timeout: Self::CLOSE_TIMEOUT,
            payloads: std::sync::Arc::new(()),
        }
    }

    /// The consumer as librdkafka's partition queues take it.
    pub(crate) fn shared(&self) -> &std::sync::Arc<rdkafka::consumer::BaseConsumer<C>> {
        match &self.consumer {
            Some(c) => c,
            // Only `drop` takes it.
            None => unreachable!("a group consumer is used after its close"),
        }
    }

    /// The payload of a message polled from this consumer or its partition queues, as
    /// `Bytes` that keep the message where librdkafka fetched (and decompressed) it
    /// instead of copying it out. Copying took ~5% of a Kafka job's CPU, half of it in
    /// page faults on the fresh blocks (BENCHMARKS.md, 2026-12-05, twentieth session).
    pub(crate) fn payload(&self, message: rdkafka::message::BorrowedMessage<'_>) -> bytes::Bytes {
        // SAFETY: a message's memory belongs to its librdkafka event, which the message
        // holds a reference to; the borrow only stands for "the client handle is not
        // destroyed before the message". `Fetched` holds a clone of `payloads`, and the
        // handle is destroyed only after every clone is gone (`Drop` below).
        let message = unsafe {
            std::mem::transmute::<
                rdkafka::message::BorrowedMessage<'_>,
                rdkafka::message::BorrowedMessage<'static>,
            >(message)
        };
        bytes::Bytes::from_owner(Fetched {
            message,
            _consumer: std::sync::Arc::clone(&self.payloads),
        })
    }

    #[cfg(test)]
    pub(crate) fn with_close_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.close_timeout = timeout;
        self
    }
}

impl<C: rdkafka::consumer::ConsumerContext + 'static> std::ops::Deref for GroupConsumer<C> {
    type Target = rdkafka::consumer::BaseConsumer<C>;

    fn deref(&self) -> &Self::Target {
        self.shared()
    }
}

impl<C: rdkafka::consumer::ConsumerContext + 'static> Drop for GroupConsumer<C> {
    fn drop(&mut self) {
        let Some(consumer) = self.consumer.take() else {
            return;
        };
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let closing = Closing {
            consumer: Some(consumer),
            payloads: std::mem::take(&mut self.payloads),
        };
        let closing = std::thread::Builder::new()
            .name("kafka-close".into())
            .spawn(move || {
                drop(closing);
                let _ = done_tx.send(());
            });
        if closing.is_err() {
            // No thread to spare: the failed spawn closed the consumer here, unbounded.
            tracing::warn!("cannot start a thread to leave the consumer group");
            return;
        }
        if done_rx.recv_timeout(self.close_timeout).is_err() {
            tracing::warn!(
                waited_s = self.close_timeout.as_secs_f64(),
                "the consumer did not leave its group in time; the group drops it when \
                 its session times out"
            );
        }
    }
}

/// Longest wait between two checks of a closing consumer's held payloads.
const CLOSE_POLL_MAX: std::time::Duration = std::time::Duration::from_millis(100);

/// How long a closing consumer waits for held payloads before it says so.
const CLOSE_WARN_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

/// A consumer being dropped: it waits for the payloads still held
/// ([`GroupConsumer::payload`]; at the end of a run there are none) before the consumer
/// goes, on whichever thread drops it.
struct Closing<C: rdkafka::consumer::ConsumerContext + 'static> {
    consumer: Option<std::sync::Arc<rdkafka::consumer::BaseConsumer<C>>>,
    payloads: std::sync::Arc<()>,
}

impl<C: rdkafka::consumer::ConsumerContext + 'static> Drop for Closing<C> {
    fn drop(&mut self) {
        // Payloads go within milliseconds of a run's end, so the first waits are short;
        // one held for good (a bug) must not keep this thread waking at 1 kHz.
        let start = std::time::Instant::now();
        let mut wait = std::time::Duration::from_millis(1);
        let mut warned = false;
        while std::sync::Arc::strong_count(&self.payloads) > 1 {
            std::thread::sleep(wait);
            wait = (wait * 2).min(CLOSE_POLL_MAX);
            if !warned && start.elapsed() >= CLOSE_WARN_AFTER {
                warned = true;
                tracing::warn!(
                    held = std::sync::Arc::strong_count(&self.payloads) - 1,
                    "a closed Kafka consumer waits for message payloads still held"
                );
            }
        }
        drop(self.consumer.take());
    }
}

/// A message polled from a [`GroupConsumer`], kept for its payload
/// ([`GroupConsumer::payload`]).
struct Fetched {
    message: rdkafka::message::BorrowedMessage<'static>,
    /// Dropped after `message` (fields drop in order): the consumer outlives it.
    _consumer: std::sync::Arc<()>,
}

impl AsRef<[u8]> for Fetched {
    fn as_ref(&self) -> &[u8] {
        use rdkafka::Message;
        self.message.payload().unwrap_or_default()
    }
}

/// Client settings shared by consumers and producers: brokers, then the user's
/// `properties` (which win, so any librdkafka setting can be overridden).
pub(crate) fn client_config(brokers: &str, properties: &BTreeMap<String, String>) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    // librdkafka logs through its own callback; keep it to warnings and worse.
    c.set("log_level", "4");
    for (k, v) in properties {
        c.set(k, v);
    }
    c
}

/// Creates `topics` with `partitions` partitions each when they do not exist yet
/// (an existing topic is left as it is).
pub fn create_topics(
    brokers: &str,
    properties: &BTreeMap<String, String>,
    topics: &[String],
    partitions: i32,
) -> Result<(), ConnectorError> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::types::RDKafkaErrorCode;

    let admin: AdminClient<DefaultClientContext> =
        client_config(brokers, properties).create().map_err(|e| {
            ConnectorError::user(format!(
                "cannot create a Kafka admin client for {brokers}: {e}"
            ))
        })?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(std::time::Duration::from_secs(10)));
    // The admin API is async; run it on a thread of its own so that this works both
    // from plain code and from inside the runtime's tasks.
    let results = std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| {
                    ConnectorError::internal(format!(
                        "cannot start a runtime for the admin client: {e}"
                    ))
                })?;
            rt.block_on(admin.create_topics(&new, &opts))
                .map_err(|e| ConnectorError::external(format!("creating topics on {brokers}: {e}")))
        })
        .join()
        .map_err(|_| ConnectorError::internal("the admin client thread panicked"))?
    })?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(ConnectorError::external(format!(
                    "creating topic `{topic}`: {code}"
                )));
            }
        }
    }
    Ok(())
}

/// Number of partitions of `topic`.
pub fn topic_partitions(
    brokers: &str,
    properties: &BTreeMap<String, String>,
    topic: &str,
) -> Result<i32, ConnectorError> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = client_config(brokers, properties)
        .create()
        .map_err(|e| ConnectorError::user(format!("cannot connect to {brokers}: {e}")))?;
    let md = c
        .fetch_metadata(Some(topic), std::time::Duration::from_secs(15))
        .map_err(|e| {
            ConnectorError::external(format!(
                "cannot read metadata of `{topic}` from {brokers}: {e}"
            ))
        })?;
    md.topics()
        .iter()
        .find(|t| t.name() == topic)
        .map(|t| t.partitions().len() as i32)
        .filter(|n| *n > 0)
        .ok_or_else(|| ConnectorError::user(format!("topic `{topic}` does not exist on {brokers}")))
}

#[cfg(test)]
mod tests;
