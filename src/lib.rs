//! spanflow: a Flink-style stream processor for distributed-tracing analytics.
//!
//! The library half of the `spanflow` binary: job definitions ([`job`]), input formats
//! ([`formats`]), sources and sinks ([`connectors`]) and the runtime ([`runtime`]) that
//! drives the pure operators of [`spanflow_operators`].

pub mod connectors;
pub mod formats;
pub mod jaeger;
pub mod job;
pub mod runtime;
pub mod server;
pub mod sql;
pub mod tables;
pub mod testkit;
