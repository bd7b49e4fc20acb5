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

/// A source reading a [`MemoryInput`].
#[derive(Debug)]
pub struct MemorySource(pub Arc<MemoryInput>);

impl Source for MemorySource {
    fn format(&self) -> InputFormat {
        self.0.format
    }

    fn run(&mut self, out: &mut SourceOutput) -> Result<(), ConnectorError> {
        for r in &self.0.records {
            if !out.send_in_order(r.clone()) {
                break;
            }
        }
        Ok(())
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
