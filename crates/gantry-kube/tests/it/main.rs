//! gantry-kube's integration tests: one binary.

mod backend;
mod cluster;
mod fake;
mod golden;
