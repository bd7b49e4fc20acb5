//! The built-in span generator: a seeded, deterministic microservice fleet that emits
//! OTLP `ExportTraceServiceRequest` records, together with the ground truth of what it
//! emitted so tests can check what the pipeline computes.
//!
//! - `fleet`: the services (a gateway, a BFF, layers of HTTP and gRPC services with
//!   databases and caches, queue consumers), built once from the seed.
//! - `trace`: one trace at a time: call tree, timing, errors that propagate upward,
//!   slow queries, async tails through Kafka, batch jobs lasting minutes.
//! - this module: export timing (SDK batching delay, late spans), ordering records by
//!   arrival, garbage records, ground truth.
//! - `encode`: protobuf / JSON encoding and garbage.
//!
//! Generation streams: only spans not yet exported are held (a heap ordered by
//! arrival), so memory depends on the rate and the delays, not on the number of traces.

mod config;
mod encode;
mod fleet;
mod rand_util;
mod source;
mod trace;

#[cfg(test)]
mod tests;

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use spanflow_operators::{CallType, ConfigIssue};

pub use crate::formats::framing::{read_records, write_records};
pub use config::GeneratorConfig;
pub use source::GeneratorSource;

use encode::Grouper;
use fleet::Fleet;
use rand_util::{between, chance};
use trace::{FACT_ASYNC, FACT_ERROR, FACT_LONG, GenSpan, TraceParams};

/// A record closes once its spans' arrivals span more than this.
const RECORD_WINDOW_NS: u64 = 1_000_000_000;

/// Seeds of the independent random streams, mixed with the configured seed. Garbage
/// has its own stream so that turning it on, or switching the format, does not change
/// the traces.
const FLEET_STREAM: u64 = 0x666c_6565_7421_0001;
const TRACE_STREAM: u64 = 0x7472_6163_6521_0002;
const GARBAGE_STREAM: u64 = 0x6761_7262_6167_0003;

/// Errors building a generator (bad config values that [`GeneratorConfig::validate`]
/// also reports).
#[derive(Debug, thiserror::Error)]
pub enum GeneratorError {
    /// The configuration has values `validate()` rejects; every problem is listed.
    #[error("invalid generator config: {}", describe(.issues))]
    InvalidConfig {
        /// The problems, as `validate()` reports them.
        issues: Vec<ConfigIssue>,
    },
}

fn describe(issues: &[ConfigIssue]) -> String {
    issues
        .iter()
        .map(|i| format!("`{}` {}", i.path.join("."), i.message))
        .collect::<Vec<_>>()
        .join("; ")
}

/// One generated record, in arrival order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedRecord {
    /// Encoded request (protobuf or JSON per config.format), or garbage bytes.
    pub payload: Vec<u8>,
    /// Arrival (export) time of the newest span in the record, unix ns.
    pub arrival_ns: u64,
    /// True for a deliberately undecodable record.
    pub garbage: bool,
    /// Number of spans in the record (0 for garbage).
    pub spans: usize,
}

impl AsRef<[u8]> for GeneratedRecord {
    fn as_ref(&self) -> &[u8] {
        &self.payload
    }
}

/// What the generator emitted, counted as it was emitted. Garbage records count in
/// `records` and `garbage_records` only. Trace-level counts (`traces`,
/// `traces_with_errors`, `async_traces`, `long_traces`) count a trace when its root
/// span is emitted; spans are counted by the record that carries them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GroundTruth {
    /// Distinct traces.
    pub traces: u64,
    /// Spans in decodable records.
    pub spans: u64,
    /// Spans with status ERROR or an HTTP status >= 500 (`Span::is_error`).
    pub error_spans: u64,
    /// Traces with at least one error span (their async tail included).
    pub traces_with_errors: u64,
    /// Spans without a parent (one per trace).
    pub root_spans: u64,
    /// Traces with a producer span (their consumer spans arrive seconds later).
    pub async_traces: u64,
    /// Batch-job traces lasting minutes with hundreds of spans.
    pub long_traces: u64,
    /// Spans delivered `late_delay` after their end.
    pub late_spans: u64,
    /// Late spans that are errors.
    pub late_error_spans: u64,
    /// Undecodable records.
    pub garbage_records: u64,
    /// All records, garbage included.
    pub records: u64,
    /// Smallest span end time (event time), unix ns; 0 before any span.
    pub first_event_ns: u64,
    /// Largest span end time, unix ns.
    pub last_event_ns: u64,
    /// Spans per `service.name`.
    pub spans_by_service: BTreeMap<String, u64>,
    /// Spans per call type (`local`, `http`, `rpc`, `db`, `cache`, `mq`).
    pub spans_by_call_type: BTreeMap<String, u64>,
}

/// A span in the export heap, ordered by (arrival, sequence), earliest first.
struct Pending(GenSpan);

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Pending {}

impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Pending {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reversed: `BinaryHeap` is a max-heap.
        (other.0.arrival, other.0.seq).cmp(&(self.0.arrival, self.0.seq))
    }
}

/// The span generator. Iterate it (or call [`Generator::next_record`]) to get records
/// in arrival order; [`Generator::ground_truth`] tells what was emitted.
pub struct Generator {
    config: GeneratorConfig,
    params: TraceParams,
    fleet: Fleet,
    rng: ChaCha8Rng,
    garbage_rng: ChaCha8Rng,
    start_ns: u64,
    period_ns: f64,
    late_delay_ns: u64,
    export_delay_ns: u64,
    /// Index and start time of the next trace to generate.
    next_trace: u64,
    next_start: u64,
    seq: u64,
    heap: BinaryHeap<Pending>,
    /// Spans of the record being filled, in arrival order.
    open: Vec<GenSpan>,
    ready: VecDeque<GeneratedRecord>,
    trace_buf: Vec<GenSpan>,
    grouper: Grouper,
    truth: GroundTruth,
    /// Per-record scratch counts, merged into `truth` when the record closes.
    by_service: Vec<u64>,
    by_call_type: [u64; 6],
    /// Most spans held at once, for the memory-bound test.
    #[cfg(test)]
    peak_pending: usize,
}

impl std::fmt::Debug for Generator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generator")
            .field("config", &self.config)
            .field("next_trace", &self.next_trace)
            .field("pending_spans", &self.heap.len())
            .finish_non_exhaustive()
    }
}

impl Generator {
    /// Builds the fleet for `config`; fails when `config.validate()` reports problems.
    pub fn new(config: GeneratorConfig) -> Result<Generator, GeneratorError> {
        let issues = config.validate();
        if !issues.is_empty() {
            return Err(GeneratorError::InvalidConfig { issues });
        }
        let Some(start_ns) = config::start_time_ns(&config.start_time) else {
            return Err(GeneratorError::InvalidConfig {
                issues: vec![ConfigIssue::new(
                    "start_time",
                    format!("cannot be used: `{}`", config.start_time),
                )],
            });
        };
        let mut fleet_rng = ChaCha8Rng::seed_from_u64(config.seed ^ FLEET_STREAM);
        let fleet = Fleet::build(&mut fleet_rng, config.services as usize);
        let mut truth = GroundTruth::default();
        for ct in CallType::ALL {
            truth.spans_by_call_type.insert(ct.as_str().to_owned(), 0);
        }
        let mut generator = Generator {
            params: TraceParams {
                error_rate: config.error_rate,
                slow_db_rate: config.slow_db_rate,
                async_fraction: config.async_fraction,
                long_trace_fraction: config.long_trace_fraction,
            },
            rng: ChaCha8Rng::seed_from_u64(config.seed ^ TRACE_STREAM),
            garbage_rng: ChaCha8Rng::seed_from_u64(config.seed ^ GARBAGE_STREAM),
            start_ns,
            period_ns: 1e9 / config.traces_per_second,
            late_delay_ns: config.late_delay.as_nanos(),
            export_delay_ns: config.export_delay.as_nanos(),
            next_trace: 0,
            next_start: start_ns,
            seq: 0,
            heap: BinaryHeap::new(),
            open: Vec::new(),
            ready: VecDeque::new(),
            trace_buf: Vec::new(),
            grouper: Grouper::default(),
            truth,
            by_service: vec![0; fleet.services.len()],
            by_call_type: [0; 6],
            fleet,
            config,
            #[cfg(test)]
            peak_pending: 0,
        };
        generator.next_start = generator.trace_start(0, start_ns);
        Ok(generator)
    }

    /// Next record in arrival order; None when all traces were emitted.
    pub fn next_record(&mut self) -> Option<GeneratedRecord> {
        loop {
            if let Some(record) = self.ready.pop_front() {
                self.truth.records += 1;
                if record.garbage {
                    self.truth.garbage_records += 1;
                }
                return Some(record);
            }
            // Spans arriving before the next trace starts can no longer be overtaken:
            // every later span ends, and so arrives, after that start.
            let more_traces = self.next_trace < self.config.traces;
            while self.ready.is_empty() {
                match self.heap.peek() {
                    Some(p) if !more_traces || p.0.arrival < self.next_start => {}
                    _ => break,
                }
                let Some(Pending(span)) = self.heap.pop() else {
                    break;
                };
                if let Some(first) = self.open.first()
                    && span.arrival > first.arrival.saturating_add(RECORD_WINDOW_NS)
                {
                    self.close_record();
                }
                self.open.push(span);
                if self.open.len() >= self.config.spans_per_record {
                    self.close_record();
                }
            }
            if !self.ready.is_empty() {
                continue;
            }
            if more_traces {
                self.generate_trace();
                continue;
            }
            if !self.open.is_empty() {
                self.close_record();
                continue;
            }
            return None;
        }
    }

    /// Totals of everything emitted so far (final once next_record returned None).
    pub fn ground_truth(&self) -> &GroundTruth {
        &self.truth
    }

    /// Start of trace `i`: evenly paced, jittered by up to half a period, never before
    /// the previous start.
    fn trace_start(&mut self, i: u64, previous: u64) -> u64 {
        let base = self
            .start_ns
            .saturating_add((i as f64 * self.period_ns) as u64);
        let jitter = (rand::Rng::random::<f64>(&mut self.rng) * self.period_ns * 0.5) as u64;
        base.saturating_add(jitter).max(previous)
    }

    fn generate_trace(&mut self) {
        let start = self.next_start;
        let mut spans = std::mem::take(&mut self.trace_buf);
        spans.clear();
        trace::generate(&self.fleet, &self.params, &mut self.rng, start, &mut spans);
        let long = spans
            .first()
            .is_some_and(|root| root.facts & FACT_LONG != 0);
        let may_be_late = !long && spans.len() >= 2;
        for mut span in spans.drain(..) {
            span.late =
                may_be_late && !span.is_root() && chance(&mut self.rng, self.config.late_fraction);
            span.arrival = if span.late {
                span.end.saturating_add(self.late_delay_ns)
            } else {
                span.end
                    .saturating_add(between(&mut self.rng, 0, self.export_delay_ns))
            };
            span.seq = self.seq;
            self.seq += 1;
            self.heap.push(Pending(span));
        }
        self.trace_buf = spans;
        #[cfg(test)]
        {
            self.peak_pending = self.peak_pending.max(self.heap.len() + self.open.len());
        }
        self.next_trace += 1;
        if self.next_trace < self.config.traces {
            self.next_start = self.trace_start(self.next_trace, start);
        }
    }

    fn close_record(&mut self) {
        let spans = std::mem::take(&mut self.open);
        let Some(last) = spans.last() else { return };
        let arrival_ns = last.arrival;
        self.count(&spans);
        let payload = self.grouper.encode(&self.fleet, self.config.format, &spans);
        // One draw per record decides, a derived stream shapes the garbage: the two
        // formats need different numbers of draws, yet must pick the same records.
        let garbage = chance(&mut self.garbage_rng, self.config.garbage_fraction).then(|| {
            let mut shape =
                ChaCha8Rng::seed_from_u64(rand::RngCore::next_u64(&mut self.garbage_rng));
            encode::garbage(&mut shape, self.config.format, &payload)
        });
        self.ready.push_back(GeneratedRecord {
            payload,
            arrival_ns,
            garbage: false,
            spans: spans.len(),
        });
        if let Some(payload) = garbage {
            self.ready.push_back(GeneratedRecord {
                payload,
                arrival_ns,
                garbage: true,
                spans: 0,
            });
        }
        // Reuse the allocation for the next record.
        self.open = spans;
        self.open.clear();
    }

    fn count(&mut self, spans: &[GenSpan]) {
        let t = &mut self.truth;
        for s in spans {
            t.spans += 1;
            let error = s.is_error();
            if error {
                t.error_spans += 1;
            }
            if s.late {
                t.late_spans += 1;
                if error {
                    t.late_error_spans += 1;
                }
            }
            if s.is_root() {
                t.root_spans += 1;
                t.traces += 1;
                if s.facts & FACT_ERROR != 0 {
                    t.traces_with_errors += 1;
                }
                if s.facts & FACT_ASYNC != 0 {
                    t.async_traces += 1;
                }
                if s.facts & FACT_LONG != 0 {
                    t.long_traces += 1;
                }
            }
            t.first_event_ns = if t.first_event_ns == 0 {
                s.end
            } else {
                t.first_event_ns.min(s.end)
            };
            t.last_event_ns = t.last_event_ns.max(s.end);
            let service = self.fleet.instances[s.instance as usize].service;
            self.by_service[service as usize] += 1;
            self.by_call_type[s.call_type as usize] += 1;
        }
        // Merge per record, not per span: string-keyed map updates are the slow part.
        for (i, n) in self.by_service.iter_mut().enumerate() {
            if *n > 0 {
                let name = &*self.fleet.services[i].name;
                match t.spans_by_service.get_mut(name) {
                    Some(v) => *v += *n,
                    None => {
                        t.spans_by_service.insert(name.to_owned(), *n);
                    }
                }
                *n = 0;
            }
        }
        for ct in CallType::ALL {
            let n = std::mem::take(&mut self.by_call_type[ct as usize]);
            if n > 0 {
                *t.spans_by_call_type
                    .entry(ct.as_str().to_owned())
                    .or_default() += n;
            }
        }
    }
}

impl Iterator for Generator {
    type Item = GeneratedRecord;

    fn next(&mut self) -> Option<GeneratedRecord> {
        self.next_record()
    }
}

/// Once exhausted, a generator stays exhausted.
impl std::iter::FusedIterator for Generator {}
