//! Job definitions: the YAML format, its validation and its JSON schema.

pub mod spec;

pub use spec::*;
