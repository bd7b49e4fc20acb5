//! The per-shard side of a metric operator as an [`Operator`]: closed traces in, the
//! shard's intervals out (port 0, as [`Batch::Partials`]) once the watermark
//! completes them, for the merge side ([`super::MetricsMerge`]).

use super::{AggregatorState, IntervalAggregator, MetricsReport};
use crate::EventTime;
use crate::operator::{
    Batch, Emitter, Operator, OperatorError, Report, Share, decode_state, encode_state,
};
use crate::session_window::ClosedTrace;
use crate::span_index::SpanIndex;

/// What a metric operator adds to the shared per-shard machinery.
pub trait TracePartial: Send {
    /// The kind's name, for errors.
    const KIND: &'static str;
    /// Adds a closed trace; `index` is its span index (built once per trace for every
    /// operator that reads it), `kept`: no sampler dropped it.
    fn add(&mut self, trace: &ClosedTrace, index: &SpanIndex, kept: bool);
    /// Its interval aggregator.
    fn aggregator(&self) -> &IntervalAggregator;
    /// Its interval aggregator, to flush or restore.
    fn aggregator_mut(&mut self) -> &mut IntervalAggregator;
}

impl<T: TracePartial> Operator for T {
    fn process(
        &mut self,
        input: usize,
        batch: Batch,
        _out: &mut Emitter,
    ) -> Result<(), OperatorError> {
        let Batch::Traces(traces) = batch else {
            return Err(OperatorError::unexpected(T::KIND, input, &batch));
        };
        for t in &traces {
            self.add(&t.trace, t.trace.index(), t.kept());
        }
        Ok(())
    }

    fn on_watermark(
        &mut self,
        watermark: EventTime,
        out: &mut Emitter,
    ) -> Result<EventTime, OperatorError> {
        let mut parts = Vec::new();
        self.aggregator_mut().flush(watermark, &mut parts);
        out.emit(0, Batch::Partials(parts));
        Ok(watermark)
    }

    fn snapshot(&self) -> Result<Vec<u8>, OperatorError> {
        encode_state(&self.aggregator().state())
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), OperatorError> {
        self.aggregator_mut().restore(decode_state(state)?);
        Ok(())
    }

    /// Partial aggregates belong to no trace: the share that takes them gets every
    /// instance's intervals summed (the merge side sums them anyway), the others none.
    fn restore_share(&mut self, states: &[(&[u8], Share)]) -> Result<(), OperatorError> {
        let states = states
            .iter()
            .map(|(b, share)| Ok((decode_state(b)?, share.takes_unkeyed())))
            .collect::<Result<Vec<(AggregatorState, bool)>, OperatorError>>()?;
        let buckets = self.aggregator().buckets().len();
        self.aggregator_mut()
            .restore(AggregatorState::combine(states, buckets));
        Ok(())
    }

    fn report(&self) -> Report {
        Report::Metrics(MetricsReport {
            late_observations: self.aggregator().late_observations,
            ..MetricsReport::default()
        })
    }
}
