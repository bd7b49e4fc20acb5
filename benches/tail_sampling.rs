//! Placeholder until the tail_sampling bench lands.
fn main() {}
