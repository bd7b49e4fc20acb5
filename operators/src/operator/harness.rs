//! Runs one operator over a script of batches, watermarks and snapshot/restore points,
//! and checks what every operator must do whatever it computes.
//!
//! [`run`] plays a script the way the runtime would (watermarks that do not advance are
//! not delivered, `on_watermark(WATERMARK_END)` then `on_end` at [`Step::End`]) and
//! returns what was emitted on each port, the watermarks forwarded and the final
//! report. [`check`] runs a script several ways and fails when:
//! - a forwarded watermark goes backwards or passes the input watermark;
//! - an empty batch emits anything, or changes what the run emits;
//! - a snapshot restored into a fresh instance, at any point of the script, changes what
//!   the run emits from there or its final report.
//!
//! What an operator computes (late data to its late port, intervals closed by the
//! watermark) is for its own tests, which use [`run`] and look at the outputs.

use super::{Batch, Emitter, IntervalBatch, Operator, OperatorError, Report};
use crate::{EventTime, WATERMARK_END};

/// One step of a script.
#[derive(Debug, Clone)]
pub enum Step {
    /// A batch on input `0`.
    Batch(Batch),
    /// A batch on another input.
    BatchOn(usize, Batch),
    /// The input watermark advances (ignored unless it is larger than the last one).
    Watermark(EventTime),
    /// Snapshot the operator, build a fresh one and restore the snapshot into it.
    SnapshotRestore,
    /// The input ends: `on_watermark(WATERMARK_END)` then `on_end`.
    End,
}

/// What a scripted run produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// Batches emitted on each output port, in order.
    pub outputs: Vec<Vec<Batch>>,
    /// Each watermark the operator returned, with the input watermark it was given.
    pub forwarded: Vec<(EventTime, EventTime)>,
    /// The report after the last step.
    pub report: Report,
}

impl Outcome {
    /// Items emitted on `port` (spans, traces, intervals, ...), over all batches.
    pub fn items(&self, port: usize) -> usize {
        self.outputs
            .get(port)
            .map_or(0, |b| b.iter().map(Batch::len).sum())
    }
}

/// Builds a fresh instance of the operator under test.
pub type Make<'a> = &'a dyn Fn() -> Box<dyn Operator>;

/// Plays `script` on an instance from `make` with `ports` output ports.
pub fn run(make: Make<'_>, ports: usize, script: &[Step]) -> Result<Outcome, OperatorError> {
    let mut op = make();
    let mut out = Emitter::new(ports);
    let mut outputs: Vec<Vec<Batch>> = vec![Vec::new(); ports];
    let mut forwarded = Vec::new();
    let mut input_wm: EventTime = 0;
    let collect = |out: &mut Emitter, outputs: &mut Vec<Vec<Batch>>| {
        for (p, o) in outputs.iter_mut().enumerate() {
            o.extend(out.take(p));
        }
    };
    for step in script {
        match step {
            Step::Batch(b) => op.process(0, b.clone(), &mut out)?,
            Step::BatchOn(i, b) => op.process(*i, b.clone(), &mut out)?,
            Step::Watermark(w) => {
                if *w > input_wm {
                    input_wm = *w;
                    let f = op.on_watermark(*w, &mut out)?;
                    forwarded.push((*w, f));
                }
            }
            Step::SnapshotRestore => {
                let state = op.snapshot()?;
                let mut fresh = make();
                fresh.restore(&state)?;
                op = fresh;
            }
            Step::End => {
                if input_wm < WATERMARK_END {
                    input_wm = WATERMARK_END;
                    let f = op.on_watermark(WATERMARK_END, &mut out)?;
                    forwarded.push((WATERMARK_END, f));
                }
                op.on_end(&mut out)?;
            }
        }
        collect(&mut out, &mut outputs);
    }
    Ok(Outcome {
        outputs,
        forwarded,
        report: op.report(),
    })
}

/// An empty batch of the kind `script` feeds (spans when it feeds none).
fn empty_like(script: &[Step]) -> Batch {
    let first = script.iter().find_map(|s| match s {
        Step::Batch(b) | Step::BatchOn(_, b) => Some(b),
        _ => None,
    });
    match first {
        Some(Batch::Traces(_)) => Batch::Traces(Vec::new()),
        Some(Batch::LateSpans(_)) => Batch::LateSpans(Vec::new()),
        Some(Batch::Partials(_)) => Batch::Partials(Vec::new()),
        Some(Batch::RateOffers(_)) => Batch::RateOffers(Vec::new()),
        Some(Batch::RateVerdicts(_)) => Batch::RateVerdicts(Vec::new()),
        Some(Batch::Intervals(b)) => Batch::Intervals(IntervalBatch {
            intervals: Vec::new(),
            ..b.clone()
        }),
        Some(Batch::Alerts(_)) => Batch::Alerts(Vec::new()),
        _ => Batch::Spans(Vec::new()),
    }
}

/// Runs the checks every operator passes (see the module docs) and returns the plain
/// run's outcome, for the caller's own assertions. Panics with a description of the
/// first check that fails.
pub fn check(name: &str, make: Make<'_>, ports: usize, script: &[Step]) -> Outcome {
    let plain = run(make, ports, script).unwrap_or_else(|e| panic!("{name}: {e}"));

    // Watermarks: monotone, never past the input.
    let mut last = 0;
    for (input, f) in &plain.forwarded {
        assert!(
            f <= input,
            "{name}: forwarded watermark {f} is past its input watermark {input}"
        );
        assert!(
            *f >= last,
            "{name}: forwarded watermark went backwards from {last} to {f}"
        );
        last = *f;
    }

    // An empty batch alone emits nothing...
    let empty = empty_like(script);
    let alone = run(make, ports, &[Step::Batch(empty.clone())])
        .unwrap_or_else(|e| panic!("{name} (empty batch): {e}"));
    assert!(
        alone.outputs.iter().all(Vec::is_empty),
        "{name}: an empty batch emitted {:?}",
        alone.outputs
    );
    // ... and changes nothing anywhere in a script.
    let mut padded = Vec::with_capacity(script.len() * 2 + 1);
    for s in script {
        padded.push(Step::Batch(empty.clone()));
        padded.push(s.clone());
    }
    padded.push(Step::Batch(empty));
    let with_empty = run(make, ports, &padded).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(
        with_empty.outputs, plain.outputs,
        "{name}: empty batches changed the outputs"
    );

    // Restoring a snapshot at any point changes nothing.
    for at in 0..=script.len() {
        let mut s = script.to_vec();
        s.insert(at, Step::SnapshotRestore);
        let restored = run(make, ports, &s)
            .unwrap_or_else(|e| panic!("{name} (restored before step {at}): {e}"));
        assert_eq!(
            restored.outputs, plain.outputs,
            "{name}: restoring a snapshot before step {at} changed the outputs"
        );
        assert_eq!(
            restored.forwarded, plain.forwarded,
            "{name}: restoring a snapshot before step {at} changed the forwarded watermarks"
        );
        assert_eq!(
            restored.report, plain.report,
            "{name}: restoring a snapshot before step {at} changed the report"
        );
    }
    plain
}
