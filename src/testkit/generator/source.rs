//! The generator as a source of a job (`type: generator`): it feeds the engine like any
//! source and reports its ground truth in the run's summary.

use std::sync::Arc;

use bytes::Bytes;

use super::{Generator, GeneratorConfig, GroundTruth};
use crate::formats::InputFormat;
use crate::runtime::io::{ConnectorError, Position, Source, SourceOutput, SourceReport};

/// A generator feeding a job.
#[derive(Debug)]
pub struct GeneratorSource {
    config: GeneratorConfig,
    truth: Option<Arc<GroundTruth>>,
    /// Records a stopped run already read (generated again and skipped: the generator
    /// is deterministic).
    skip: u64,
}

impl GeneratorSource {
    /// A source generating what `config` describes.
    pub fn new(config: GeneratorConfig) -> Self {
        GeneratorSource {
            config,
            truth: None,
            skip: 0,
        }
    }
}

impl Source for GeneratorSource {
    fn format(&self) -> InputFormat {
        self.config.format
    }

    fn resumable(&self) -> bool {
        true
    }

    fn resume_from(&mut self, position: &Position) -> Result<(), ConnectorError> {
        self.skip = position.decode()?;
        Ok(())
    }

    fn run(&mut self, out: &mut SourceOutput) -> Result<(), ConnectorError> {
        let mut generator =
            Generator::new(self.config.clone()).map_err(|e| ConnectorError::user(e.to_string()))?;
        // The generator is deterministic: a resumed run generates the records a stopped
        // one read again and skips them.
        let mut skipped = 0;
        while skipped < self.skip && generator.next_record().is_some() {
            skipped += 1;
        }
        out.resume_offsets_at(skipped);
        while !out.stopped() {
            let Some(r) = generator.next_record() else {
                break;
            };
            if !out.send_in_order(Bytes::from(r.payload)) {
                return Ok(());
            }
        }
        self.truth = Some(Arc::new(generator.ground_truth().clone()));
        out.end_in_order()
    }

    fn report(&self) -> Option<Arc<dyn SourceReport>> {
        self.truth.clone().map(|t| t as Arc<dyn SourceReport>)
    }
}

impl std::fmt::Display for GroundTruth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} traces, {} spans, {} error spans, {} late spans, {} garbage records",
            self.traces, self.spans, self.error_spans, self.late_spans, self.garbage_records
        )
    }
}

impl SourceReport for GroundTruth {
    fn label(&self) -> &'static str {
        "generator"
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
