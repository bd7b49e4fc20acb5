//! Integration tests: one binary, a module per area.

mod cli;
mod demo;
mod golden;
mod support;
