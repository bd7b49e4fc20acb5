//! The span model and the pure, I/O-free operators of spanflow.
//!
//! Operators here are deterministic functions of their input batches and watermarks:
//! no clocks, no threads, no network. That is what makes replay, checkpoint/restore and
//! the tests exact. The `spanflow` crate wires them into a runtime.

#![warn(missing_docs)]

pub mod alerts;
pub mod classify;
pub mod config;
pub mod metrics;
pub mod model;
pub mod operator;
pub mod red_metrics;
pub mod service_graph;
pub mod session_window;
pub mod span_filter;
pub mod span_index;
pub mod tail_sampling;

pub use config::{ConfigIssue, HumanDuration};
pub use model::{
    AttrArena, AttrValue, Attrs, AttrsBuilder, AttrsMap, CallType, Span, SpanId, SpanKind,
    StatusCode, Sym, TraceId,
};
pub use operator::{Batch, Emitter, Operator, OperatorError, Shape, Share};

/// Event time in unix nanoseconds.
pub type EventTime = u64;

/// The watermark a bounded input ends with: every window closes.
pub const WATERMARK_END: EventTime = u64::MAX;
