//! The `kafka` sink: each table it reads goes to its own topic, one record per row (or
//! per trace for OTLP protobuf), keyed deterministically, through one idempotent
//! producer per sink shared by every shard.
//!
//! With `transactional_id`, the writers hold their records instead, hand them over at
//! each checkpoint barrier (they are part of the checkpoint) and the sink produces them
//! in one transaction per table once the checkpoint is durable. A run restored from a
//! checkpoint whose commit had not finished produces them again: librdkafka cannot
//! resume another process's open transaction (Flink's Java client does it through the
//! client's internals), and creating the producer aborts it. The checkpoint directory
//! records when a checkpoint's commits finished, so a restore does not repeat them;
//! only a crash between a transaction's commit and that record repeats one.

use std::sync::{Arc, Mutex};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;

use super::config::{KafkaSinkConfig, OutputFormat};
use super::encode::RowEncoder;
use super::produce::KafkaProducer;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::runtime::io::{ConnectorError, Position, Sink, SinkCheckpoint, TableWriter};

/// A Kafka sink's table as the planner resolved it; the producer is created on first
/// use, so planning (and `spanflow validate`) never connects.
#[derive(Debug, Clone)]
pub struct KafkaTarget {
    /// The sink's settings.
    pub config: Arc<KafkaSinkConfig>,
    /// Topic of this table.
    pub topic: String,
    /// Record format of this table.
    pub format: OutputFormat,
    producer: Arc<Mutex<Option<Arc<KafkaProducer>>>>,
}

impl KafkaTarget {
    /// A target for `table` of the sink `config`; `producer` is shared by the sink's
    /// targets.
    pub fn new(
        config: Arc<KafkaSinkConfig>,
        table: &str,
        producer: Arc<Mutex<Option<Arc<KafkaProducer>>>>,
    ) -> Self {
        KafkaTarget {
            topic: config.topic_of(table),
            format: config.format_of(table),
            config,
            producer,
        }
    }

    /// Whether the sink produces in transactions.
    pub fn transactional(&self) -> bool {
        self.config.transactional_id.is_some()
    }

    /// The sink's producer, created (and its topics created, when asked) on first use.
    pub fn producer(&self, topics: &[String]) -> Result<Arc<KafkaProducer>, ConnectorError> {
        let mut slot = self
            .producer
            .lock()
            .map_err(|_| ConnectorError::internal("poisoned lock"))?;
        if let Some(p) = slot.as_ref() {
            return Ok(p.clone());
        }
        if self.config.create_topics_partitions > 0 {
            super::create_topics(
                &self.config.brokers,
                &self.config.properties,
                topics,
                self.config.create_topics_partitions,
            )?;
        }
        let p = Arc::new(match &self.config.transactional_id {
            Some(id) => {
                KafkaProducer::transactional(&self.config.brokers, &self.config.properties, id)?
            }
            None => KafkaProducer::new(&self.config.brokers, &self.config.properties)?,
        });
        *slot = Some(p.clone());
        Ok(p)
    }
}

/// One table of a `kafka` sink.
#[derive(Debug, Clone)]
pub struct KafkaTable {
    target: KafkaTarget,
    /// Every topic of the sink, created together on first use when the sink asks.
    all_topics: Arc<Vec<String>>,
    /// How rows are keyed and encoded: the table's kind (`traces`, ...), whatever its
    /// name.
    kind: String,
}

impl KafkaTable {
    /// Table `target` of a sink whose topics are `all_topics`, holding `kind` rows.
    pub fn new(target: KafkaTarget, all_topics: Arc<Vec<String>>, kind: &str) -> Self {
        KafkaTable {
            target,
            all_topics,
            kind: kind.to_owned(),
        }
    }
}

/// The records one writer held between two barriers (a transactional sink's pending
/// commit, kept in the checkpoint).
#[derive(Debug, Default, Serialize, Deserialize)]
struct Held {
    topic: String,
    records: Vec<(ByteBuf, ByteBuf)>,
}

impl Held {
    fn records(&self) -> impl Iterator<Item = (&str, &[u8], &[u8])> {
        self.records
            .iter()
            .map(|(k, v)| (self.topic.as_str(), k.as_slice(), v.as_slice()))
    }
}

impl Sink for KafkaTable {
    fn location(&self) -> std::path::PathBuf {
        std::path::PathBuf::from(format!("kafka:{}", self.target.topic))
    }

    /// A transactional sink creates its producer now, which aborts what a crashed run
    /// left open, and produces the restored checkpoint's records unless its commits
    /// had finished.
    fn prepare(&self, restored: Option<&SinkCheckpoint>) -> Result<(), ConnectorError> {
        if !self.target.transactional() {
            return Ok(());
        }
        self.target.producer(&self.all_topics)?;
        match restored {
            Some(r) if !r.published => self.commit(&r.pending),
            _ => Ok(()),
        }
    }

    /// Produces the writers' held records of a durable checkpoint in one transaction.
    fn commit(&self, pending: &[Position]) -> Result<(), ConnectorError> {
        if !self.target.transactional() || pending.is_empty() {
            return Ok(());
        }
        let held = pending
            .iter()
            .map(Position::decode::<Held>)
            .collect::<Result<Vec<_>, _>>()?;
        self.target
            .producer(&self.all_topics)?
            .send_in_transaction(held.iter().flat_map(Held::records))
    }

    fn open(
        &self,
        _part: usize,
        schema: SchemaRef,
    ) -> Result<Box<dyn TableWriter>, ConnectorError> {
        Ok(Box::new(KafkaTableWriter {
            producer: self.target.producer(&self.all_topics)?,
            topic: self.target.topic.clone(),
            encoder: RowEncoder::new(&self.kind, &schema, self.target.format)?,
            rows: 0,
            held: self.target.transactional().then(Vec::new),
        }))
    }
}

/// Writes one table's batches to its topic.
pub struct KafkaTableWriter {
    producer: Arc<KafkaProducer>,
    topic: String,
    encoder: RowEncoder,
    rows: u64,
    /// A transactional sink's records since the last barrier.
    held: Option<Vec<(ByteBuf, ByteBuf)>>,
}

impl TableWriter for KafkaTableWriter {
    /// Queues every row of `batch` (blocks while the producer's queue is full), or, in
    /// a transactional sink, holds them for the next checkpoint.
    fn write(&mut self, batch: &RecordBatch) -> Result<(), ConnectorError> {
        let producer = &self.producer;
        let topic = &self.topic;
        match &mut self.held {
            Some(held) => self.encoder.encode(batch, &mut |key, value| {
                held.push((
                    ByteBuf::from(key.as_bytes().to_vec()),
                    ByteBuf::from(value.to_vec()),
                ));
                Ok(())
            })?,
            None => self.encoder.encode(batch, &mut |key, value| {
                producer.send(topic, None, Some(key.as_bytes()), value)
            })?,
        }
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    /// Waits for every queued record to be delivered: a checkpoint never covers a
    /// record that could still be lost (a replay after a crash re-sends the same keys).
    /// A transactional sink's held records go into the checkpoint instead, produced
    /// when it is durable.
    fn precommit(&mut self) -> Result<Option<Position>, ConnectorError> {
        match &mut self.held {
            Some(held) if held.is_empty() => Ok(None),
            Some(held) => Position::encode(&Held {
                topic: self.topic.clone(),
                records: std::mem::take(held),
            })
            .map(Some),
            None => {
                self.producer.flush()?;
                Ok(None)
            }
        }
    }

    /// Waits for every queued record of the sink to be delivered; a transactional sink
    /// produces what it still holds (the run ended) in one transaction.
    fn close(self: Box<Self>) -> Result<u64, ConnectorError> {
        let KafkaTableWriter {
            producer,
            topic,
            rows,
            held,
            ..
        } = *self;
        match held {
            Some(records) if !records.is_empty() => {
                producer.send_in_transaction(Held { topic, records }.records())?;
            }
            Some(_) => {}
            None => {
                producer.flush()?;
            }
        }
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rdkafka::mocking::MockCluster;

    use super::*;

    /// A restored run produces its checkpoint's held records again unless the
    /// checkpoint's commits had finished; a commit is one transaction of every writer's
    /// records.
    #[test]
    fn a_restore_produces_pending_records_only_when_they_were_not_committed() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("tx.traces", 1, 1).unwrap();
        let brokers = cluster.bootstrap_servers();
        let config = Arc::new(KafkaSinkConfig {
            brokers: brokers.clone(),
            topic_prefix: "tx.".into(),
            topics: BTreeMap::new(),
            format: OutputFormat::Json,
            formats: BTreeMap::new(),
            create_topics_partitions: 0,
            properties: BTreeMap::new(),
            transactional_id: Some("restore-test".into()),
        });
        let table = || {
            let target = KafkaTarget::new(config.clone(), "traces", Arc::default());
            KafkaTable::new(target, Arc::new(vec!["tx.traces".into()]), "traces")
        };
        let held = |n: u8| {
            Position::encode(&Held {
                topic: "tx.traces".into(),
                records: (0..n)
                    .map(|i| (ByteBuf::from(vec![i]), ByteBuf::from(vec![i, i])))
                    .collect(),
            })
            .unwrap()
        };
        let count = || {
            let c: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .set("group.id", "count")
                .create()
                .unwrap();
            let (low, high) = rdkafka::consumer::Consumer::fetch_watermarks(
                &c,
                "tx.traces",
                0,
                std::time::Duration::from_secs(5),
            )
            .unwrap();
            // Transaction markers take an offset each.
            high - low
        };
        let t = table();
        t.commit(&[held(3), held(2)]).unwrap();
        let after_one = count();
        assert!(after_one >= 5, "{after_one}");
        let restored = |published| SinkCheckpoint {
            committed: None,
            pending: vec![held(3), held(2)],
            published,
        };
        table().prepare(Some(&restored(true))).unwrap();
        assert_eq!(count(), after_one, "committed already: nothing again");
        table().prepare(Some(&restored(false))).unwrap();
        assert_eq!(
            count(),
            2 * after_one,
            "not known to be committed: produced again"
        );
    }
}
