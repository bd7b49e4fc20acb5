//! Tools that feed the engine rather than systems it connects to: the built-in span
//! generator (the embedded demo's source, benchmarks and tests, with its ground truth)
//! and the importer of Alibaba's production call graphs. Production data comes in
//! through [`crate::connectors`].

pub mod alibaba;
pub mod generator;
