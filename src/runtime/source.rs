//! Source tasks. Each runs on a blocking thread and sends chunks of raw records, in
//! order, to the decode stage.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use spanflow_operators::Sym;
use tokio::sync::mpsc;

use super::{RECORDS_PER_CHUNK, RunError};
use crate::connectors::generator::{Generator, GroundTruth, read_records};
use crate::formats::InputFormat;
use crate::job::{SourceKind, SourceNode};

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
        split: u32,
        first_offset: u64,
        format: InputFormat,
        records: Vec<Bytes>,
    },
    /// The source is exhausted.
    Done { source: usize },
    /// The source failed; it sends nothing more.
    Failed { source: usize, message: String },
}

/// A runnable source.
pub(crate) enum SourceTask {
    Generator {
        name: String,
        config: crate::connectors::generator::GeneratorConfig,
    },
    File {
        name: String,
        config: crate::connectors::file::FileSourceConfig,
    },
    Memory(Arc<MemoryInput>),
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
        })
    }

    /// Runs to the end, sending chunks; blocks on backpressure.
    pub fn run(
        self,
        source: usize,
        tx: mpsc::Sender<SourceEvent>,
        truth: Arc<Mutex<Option<GroundTruth>>>,
    ) {
        let send = |ev: SourceEvent| tx.blocking_send(ev).is_ok();

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
                        return;
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
                            first_offset: offset,
                            format,
                            records,
                        }) {
                            return;
                        }
                        offset += n;
                    }
                    if end {
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
                            return;
                        }
                    };
                    for chunk in records.chunks(RECORDS_PER_CHUNK) {
                        let n = chunk.len() as u64;
                        let ev = SourceEvent::Records {
                            source,
                            name: sym,
                            split: 0,
                            first_offset: offset,
                            format: config.format,
                            records: chunk.to_vec(),
                        };
                        if !send(ev) {
                            return;
                        }
                        offset += n;
                    }
                }
            }
            SourceTask::Memory(mem) => {
                let sym = Sym::new(&mem.name);
                for (i, chunk) in mem.records.chunks(RECORDS_PER_CHUNK).enumerate() {
                    let ev = SourceEvent::Records {
                        source,
                        name: sym,
                        split: 0,
                        first_offset: (i * RECORDS_PER_CHUNK) as u64,
                        format: mem.format,
                        records: chunk.to_vec(),
                    };
                    if !send(ev) {
                        return;
                    }
                }
            }
        }
        send(SourceEvent::Done { source });
    }
}
