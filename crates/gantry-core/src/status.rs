use serde::{Deserialize, Serialize};

use crate::State;

/// The state of a commit status as forges know it (the union of GitHub's, GitLab's and Gitea's).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommitState {
    Pending,
    Running,
    Success,
    Failure,
    Error,
    Cancelled,
}

impl From<State> for CommitState {
    fn from(state: State) -> Self {
        match state {
            State::Queued | State::Pending => CommitState::Pending,
            State::Running => CommitState::Running,
            State::Success | State::Skipped => CommitState::Success,
            State::Failure => CommitState::Failure,
            State::Cancelled => CommitState::Cancelled,
            State::Error => CommitState::Error,
        }
    }
}

/// One status report for one commit and context, e.g. `gantry/ci/test`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitStatus {
    pub sha: String,
    pub context: String,
    pub state: CommitState,
    pub description: String,
    /// A link to the run or job in the web viewer.
    pub target_url: Option<String>,
}
