//! Integration tests: one binary, a module per area.

mod alertmanager;
mod alibaba;
mod checkpoint;
mod cli;
mod clickhouse;
mod demo;
mod event_time;
mod golden;
mod group;
mod jaeger;
mod kafka;
mod otlp;
mod runtime;
mod server;
mod sql;
mod support;
