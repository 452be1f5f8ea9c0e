use serde::{Deserialize, Serialize};

use crate::Timestamp;

/// Where a log line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    Stdout,
    Stderr,
    /// Written by Gantry itself (e.g. "step timed out after 5m").
    System,
}

/// One line of a step's output, without its line ending.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// 0-based index of the step within its job.
    pub step: usize,
    /// 1-based line number within the step's log.
    pub number: u64,
    pub at: Timestamp,
    pub stream: Stream,
    pub text: String,
}
