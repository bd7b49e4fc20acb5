//! The generator as a source of a job (`type: generator`): it feeds the engine like any
//! source and reports its ground truth in the run's summary.

use std::sync::Arc;

use bytes::Bytes;

use super::{Generator, GeneratorConfig, GroundTruth};
use crate::formats::InputFormat;
use crate::runtime::io::{ConnectorError, Source, SourceOutput, SourceReport};

/// A generator feeding a job.
#[derive(Debug)]
pub struct GeneratorSource {
    config: GeneratorConfig,
    truth: Option<Arc<GroundTruth>>,
}

impl GeneratorSource {
    /// A source generating what `config` describes.
    pub fn new(config: GeneratorConfig) -> Self {
        GeneratorSource {
            config,
            truth: None,
        }
    }
}

impl Source for GeneratorSource {
    fn format(&self) -> InputFormat {
        self.config.format
    }

    fn run(&mut self, out: &mut SourceOutput) -> Result<(), ConnectorError> {
        let mut generator =
            Generator::new(self.config.clone()).map_err(|e| ConnectorError::user(e.to_string()))?;
        while let Some(r) = generator.next_record() {
            if !out.send_in_order(Bytes::from(r.payload)) || out.stopped() {
                break;
            }
        }
        self.truth = Some(Arc::new(generator.ground_truth().clone()));
        Ok(())
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
