//! gantry-kube's integration tests: one binary.

mod backend;
mod fake;
mod golden;
