//! gantry-kube's integration tests: one binary.

mod golden;
