//! Source tasks. Each runs on a blocking thread and sends chunks of raw records, in
//! order, to the decode stage.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use spanflow_operators::Sym;
use tokio::sync::mpsc;

use super::{RECORDS_PER_CHUNK, RunError};
pub(crate) use crate::connectors::kafka::source::Finish;
use crate::connectors::kafka::source::{KafkaEvent, KafkaReader};
use crate::formats::InputFormat;
use crate::job::{SourceKind, SourceNode};
use crate::testkit::generator::{Generator, GroundTruth, read_records};

/// Pre-encoded records held in memory: what `spanflow bench` feeds the pipeline so that
/// generation is not part of the measurement.
#[derive(Debug)]
pub struct MemoryInput {
    /// Source name used in dead letters.
    pub name: String,
    /// Record encoding.
    pub format: InputFormat,
    /// The records, in order (one split).
    pub records: Vec<Bytes>,
}

/// What sources send downstream.
pub(crate) enum SourceEvent {
    /// A chunk of consecutive records of one split.
    Records {
        source: usize,
        name: Sym,
        /// The watermark tracker's split key.
        split: u32,
        /// Where the records came from, for dead letters: Kafka topic and partition
        /// (else `None` and the split).
        topic: Option<Sym>,
        partition: u32,
        first_offset: u64,
        /// Per-record offsets when they are not `first_offset + i` (Kafka).
        offsets: Option<Vec<u64>>,
        format: InputFormat,
        records: Vec<Bytes>,
    },
    /// Splits (Kafka partitions) now read by the source; they hold the watermark.
    SplitsAdded { source: usize, splits: Vec<u32> },
    /// Splits no longer read (revoked, or finished in a bounded run).
    SplitsRemoved { source: usize, splits: Vec<u32> },
    /// The source is exhausted (or stopped). A Kafka source reports where it got to.
    Done {
        source: usize,
        positions: Option<Vec<(String, i32, i64)>>,
    },
    /// The source failed; it sends nothing more.
    Failed { source: usize, message: String },
}

/// A runnable source.
pub(crate) enum SourceTask {
    Generator {
        name: String,
        config: crate::testkit::generator::GeneratorConfig,
    },
    File {
        name: String,
        config: crate::connectors::file::FileSourceConfig,
    },
    Memory(Arc<MemoryInput>),
    Kafka {
        name: String,
        config: crate::connectors::kafka::KafkaSourceConfig,
        format: InputFormat,
        /// Positions to resume from (a savepoint's).
        resume: Vec<(String, i32, i64)>,
    },
}

impl SourceTask {
    pub fn from_node(node: &SourceNode) -> Result<Self, RunError> {
        Ok(match &node.kind {
            SourceKind::Generator(c) => SourceTask::Generator {
                name: node.name.clone(),
                config: c.clone(),
            },
            SourceKind::File(c) => SourceTask::File {
                name: node.name.clone(),
                config: c.clone(),
            },
            SourceKind::Kafka(c) => SourceTask::Kafka {
                name: node.name.clone(),
                format: c.format,
                config: c.clone(),
                resume: Vec::new(),
            },
        })
    }

    /// Sets where a resumed run continues (a savepoint's positions).
    pub fn resume_from(&mut self, positions: Vec<(String, i32, i64)>) {
        if let SourceTask::Kafka { resume, .. } = self {
            *resume = positions;
        }
    }

    /// True when the source can continue where a stopped run left off.
    pub fn resumable(&self) -> bool {
        matches!(self, SourceTask::Kafka { .. })
    }

    /// Runs to the end, sending chunks; blocks on backpressure. Returns an error that
    /// happened after the source reported its end (a failed offset commit), which the
    /// runtime reports when it joins the source.
    pub fn run(
        self,
        source: usize,
        tx: mpsc::Sender<SourceEvent>,
        truth: Arc<Mutex<Option<GroundTruth>>>,
        control: SourceControl,
    ) -> Option<String> {
        let send = |ev: SourceEvent| tx.blocking_send(ev).is_ok();
        let stopped = || control.stop.load(Ordering::Relaxed);

        match self {
            SourceTask::Generator { name, config } => {
                let format = config.format;
                let sym = Sym::new(&name);
                let mut generator = match Generator::new(config) {
                    Ok(g) => g,
                    Err(e) => {
                        send(SourceEvent::Failed {
                            source,
                            message: e.to_string(),
                        });
                        return None;
                    }
                };
                let mut offset = 0u64;
                let mut chunk = Vec::with_capacity(RECORDS_PER_CHUNK);
                loop {
                    let next = generator.next_record();
                    let end = next.is_none();
                    if let Some(r) = next {
                        chunk.push(Bytes::from(r.payload));
                    }
                    if chunk.len() >= RECORDS_PER_CHUNK || (end && !chunk.is_empty()) {
                        let n = chunk.len() as u64;
                        let records =
                            std::mem::replace(&mut chunk, Vec::with_capacity(RECORDS_PER_CHUNK));
                        if !send(SourceEvent::Records {
                            source,
                            name: sym,
                            split: 0,
                            topic: None,
                            partition: 0,
                            first_offset: offset,
                            offsets: None,
                            format,
                            records,
                        }) {
                            return None;
                        }
                        offset += n;
                    }
                    if end || stopped() {
                        break;
                    }
                }
                if let Ok(mut t) = truth.lock() {
                    *t = Some(generator.ground_truth().clone());
                }
            }
            SourceTask::File { name, config } => {
                let sym = Sym::new(&name);
                // Files are read in the order listed, as one split: a later file does not
                // hold the watermark back while an earlier one is read.
                let mut offset = 0u64;
                for path in &config.paths {
                    let records: Vec<Bytes> = match read_records(path, config.format) {
                        Ok(r) => r.into_iter().map(Bytes::from).collect(),
                        Err(e) => {
                            send(SourceEvent::Failed {
                                source,
                                message: format!("{}: {e}", path.display()),
                            });
                            return None;
                        }
                    };
                    for chunk in records.chunks(RECORDS_PER_CHUNK) {
                        if stopped() {
                            break;
                        }
                        let n = chunk.len() as u64;
                        let ev = SourceEvent::Records {
                            source,
                            name: sym,
                            split: 0,
                            topic: None,
                            partition: 0,
                            first_offset: offset,
                            offsets: None,
                            format: config.format,
                            records: chunk.to_vec(),
                        };
                        if !send(ev) {
                            return None;
                        }
                        offset += n;
                    }
                }
            }
            SourceTask::Kafka {
                name,
                config,
                format,
                resume,
            } => {
                // The Kafka source reports its own end (before it waits for the commit).
                return run_kafka(source, &name, &config, format, &resume, &send, control);
            }
            SourceTask::Memory(mem) => {
                let sym = Sym::new(&mem.name);
                for (i, chunk) in mem.records.chunks(RECORDS_PER_CHUNK).enumerate() {
                    let ev = SourceEvent::Records {
                        source,
                        name: sym,
                        split: 0,
                        topic: None,
                        partition: 0,
                        first_offset: (i * RECORDS_PER_CHUNK) as u64,
                        offsets: None,
                        format: mem.format,
                        records: chunk.to_vec(),
                    };
                    if !send(ev) {
                        return None;
                    }
                }
            }
        }
        send(SourceEvent::Done {
            source,
            positions: None,
        });
        None
    }
}

/// How the runtime steers a running source.
pub(crate) struct SourceControl {
    /// Set to stop reading (an unbounded source then ends like a bounded one).
    pub stop: Arc<AtomicBool>,
    /// After the source ended: whether to commit what it read (Kafka).
    pub finish: std::sync::mpsc::Receiver<Finish>,
}

/// Runs a Kafka source to its end (or failure), sending `Done` (or `Failed`) itself.
fn run_kafka(
    source: usize,
    name: &str,
    config: &crate::connectors::kafka::KafkaSourceConfig,
    format: InputFormat,
    resume: &[(String, i32, i64)],
    send: &dyn Fn(SourceEvent) -> bool,
    control: SourceControl,
) -> Option<String> {
    let sym = Sym::new(name);
    let reader = match KafkaReader::connect(config, resume) {
        Ok(r) => r,
        Err(message) => {
            send(SourceEvent::Failed { source, message });
            return None;
        }
    };
    let ended = std::cell::Cell::new(false);
    let mut topics: Vec<(Arc<str>, Sym)> = Vec::new();
    let mut emit = |ev: KafkaEvent| -> bool {
        match ev {
            KafkaEvent::Assigned(splits) => send(SourceEvent::SplitsAdded {
                source,
                splits: splits.iter().map(|s| s.key).collect(),
            }),
            KafkaEvent::Revoked(splits) => send(SourceEvent::SplitsRemoved {
                source,
                splits: splits.iter().map(|s| s.key).collect(),
            }),
            KafkaEvent::EndOfInput(positions) => {
                ended.set(true);
                send(SourceEvent::Done {
                    source,
                    positions: Some(positions),
                })
            }
            KafkaEvent::Records {
                split,
                offsets,
                records,
            } => {
                let topic = match topics.iter().find(|(t, _)| Arc::ptr_eq(t, &split.topic)) {
                    Some((_, s)) => *s,
                    None => {
                        let s = Sym::new(&split.topic);
                        topics.push((split.topic.clone(), s));
                        s
                    }
                };
                send(SourceEvent::Records {
                    source,
                    name: sym,
                    split: split.key,
                    topic: Some(topic),
                    partition: u32::try_from(split.partition).unwrap_or(0),
                    first_offset: offsets.first().copied().unwrap_or(0),
                    offsets: Some(offsets),
                    format,
                    records,
                })
            }
        }
    };
    match reader.run(&control.stop, &mut emit, control.finish) {
        Ok(stats) => {
            tracing::debug!(?stats, source = name, "kafka source finished");
            None
        }
        Err(e) if ended.get() => Some(e),
        Err(message) => {
            send(SourceEvent::Failed { source, message });
            None
        }
    }
}
