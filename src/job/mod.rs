//! Job definitions: the YAML format, its validation and its JSON schema.
//!
//! [`load`] reads a job file into a [`Job`] or returns [`Diagnostics`]: every problem in
//! the file, each at `file:line:column` with the dotted key, the rule broken, the value
//! found and, for typos, the nearest valid name. [`json_schema`] describes the format
//! (published as `schemas/job.schema.json`).

mod de;
mod diagnostics;
pub mod file;
mod load;
mod plan;
mod portable;
pub mod replay;
pub mod spec;
mod yaml;

pub use diagnostics::{Diagnostic, Diagnostics};
pub use file::json_schema;
pub use load::{Override, load, load_str, load_str_with, load_with};
pub use plan::{group_source, plan, plan_member, run_group, run_job};
pub use portable::self_contained;
pub use spec::*;

#[cfg(test)]
mod tests;
