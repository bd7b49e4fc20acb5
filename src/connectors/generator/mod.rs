//! The built-in span generator.

mod config;

pub use config::GeneratorConfig;
