//! Running sources: each on its own blocking thread, sending chunks of raw records, in
//! order, to the decode stage.

use std::sync::Arc;

use bytes::Bytes;

use super::io::{ConnectorError, Source, SourceOutput, SourceReport};
use crate::formats::InputFormat;

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

/// A source reading a [`MemoryInput`]; its position is the number of records read.
#[derive(Debug)]
pub struct MemorySource {
    input: Arc<MemoryInput>,
    skip: u64,
}

impl MemorySource {
    /// Reads `input` from its first record.
    pub fn new(input: Arc<MemoryInput>) -> Self {
        MemorySource { input, skip: 0 }
    }
}

impl Source for MemorySource {
    fn format(&self) -> InputFormat {
        self.input.format
    }

    fn resumable(&self) -> bool {
        true
    }

    fn resume_from(&mut self, position: &super::io::Position) -> Result<(), ConnectorError> {
        self.skip = position.decode()?;
        Ok(())
    }

    fn run(&mut self, out: &mut SourceOutput) -> Result<(), ConnectorError> {
        let skip = usize::try_from(self.skip).unwrap_or(usize::MAX);
        out.resume_offsets_at(self.skip);
        for r in self.input.records.iter().skip(skip) {
            if out.stopped() || !out.send_in_order(r.clone()) {
                break;
            }
        }
        out.end_in_order()
    }
}

/// What a source left when its thread ended.
pub(crate) struct SourceEnd {
    /// An error that happened after the source reported its end (a failed offset
    /// commit), reported when the run joins the source.
    pub late_error: Option<ConnectorError>,
    pub report: Option<Arc<dyn SourceReport>>,
}

/// Runs `source` to its end on the current (blocking) thread.
pub(crate) fn run_source(mut source: Box<dyn Source>, mut out: SourceOutput) -> SourceEnd {
    let result = source.run(&mut out);
    let late_error = match result {
        Ok(()) => {
            out.end(None);
            None
        }
        Err(e) if out.has_ended() => Some(e),
        Err(e) => {
            out.fail(e);
            None
        }
    };
    SourceEnd {
        late_error,
        report: source.report(),
    }
}
