//! The `gantry` command line: `run`, `lint`, `schema` (and `serve` as the engine grows).

mod cli;
mod commands;
mod git;
mod output;
mod walk;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::Cli::parse_and_run()
}
