//! The `kafka` sink: each table it reads goes to its own topic, one record per row (or
//! per trace for OTLP protobuf), keyed deterministically, through one idempotent
//! producer per sink shared by every shard.

use std::sync::{Arc, Mutex};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;

use super::config::{KafkaSinkConfig, OutputFormat};
use super::encode::RowEncoder;
use super::produce::KafkaProducer;
use crate::runtime::io::{ConnectorError, Position, Sink, TableWriter};

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
        let p = Arc::new(KafkaProducer::new(
            &self.config.brokers,
            &self.config.properties,
        )?);
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

impl Sink for KafkaTable {
    fn location(&self) -> std::path::PathBuf {
        std::path::PathBuf::from(format!("kafka:{}", self.target.topic))
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
        }))
    }
}

/// Writes one table's batches to its topic.
pub struct KafkaTableWriter {
    producer: Arc<KafkaProducer>,
    topic: String,
    encoder: RowEncoder,
    rows: u64,
}

impl TableWriter for KafkaTableWriter {
    /// Queues every row of `batch`; blocks while the producer's queue is full.
    fn write(&mut self, batch: &RecordBatch) -> Result<(), ConnectorError> {
        let producer = &self.producer;
        let topic = &self.topic;
        self.encoder.encode(batch, &mut |key, value| {
            producer.send(topic, None, Some(key.as_bytes()), value)
        })?;
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    /// Waits for every queued record to be delivered: a checkpoint never covers a
    /// record that could still be lost (a replay after a crash re-sends the same keys).
    fn precommit(&mut self) -> Result<Option<Position>, ConnectorError> {
        self.producer.flush()?;
        Ok(None)
    }

    /// Waits for every queued record of the sink to be delivered.
    fn close(self: Box<Self>) -> Result<u64, ConnectorError> {
        self.producer.flush()?;
        Ok(self.rows)
    }
}
