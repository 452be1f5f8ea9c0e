//! System tests: the real `gantry` binary, run as a user would, against real git repositories.

mod chart;
mod cli_lint;
mod cli_run;
mod delivery_chain;
mod dev;
mod examples;
mod faults;
mod getting_started;
mod injected;
mod node;
mod real_node;
mod real_node_examples;
mod replicas;
mod serve;
mod server;
mod soak;
mod support;
