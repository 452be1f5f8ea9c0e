use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The life of a run, a job or a step:
/// `queued → pending → running → success | failure | cancelled | error`, or `skipped` when a
/// `when` rule or an earlier failure means it never runs.
///
/// `failure` is the work's own fault (a step exited non-zero, a timeout); `error` is the
/// infrastructure's (a pod vanished, the server died under a local process, an image could not be
/// pulled).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Queued,
    Pending,
    Running,
    Success,
    Failure,
    Cancelled,
    Error,
    Skipped,
}

/// Steps use the same states as jobs and runs.
pub type StepState = State;

impl State {
    pub const ALL: [State; 8] = [
        State::Queued,
        State::Pending,
        State::Running,
        State::Success,
        State::Failure,
        State::Cancelled,
        State::Error,
        State::Skipped,
    ];

    /// A final state never changes again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            State::Success | State::Failure | State::Cancelled | State::Error | State::Skipped
        )
    }

    /// Did it end in a way that lets work that depends on it go on?
    pub fn is_success(self) -> bool {
        matches!(self, State::Success | State::Skipped)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Queued => "queued",
            State::Pending => "pending",
            State::Running => "running",
            State::Success => "success",
            State::Failure => "failure",
            State::Cancelled => "cancelled",
            State::Error => "error",
            State::Skipped => "skipped",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The text was not one of the states.
#[derive(Debug, thiserror::Error)]
#[error(
    "unknown state {0:?}: expected one of queued, pending, running, success, failure, cancelled, error, skipped"
)]
pub struct UnknownState(pub String);

impl FromStr for State {
    type Err = UnknownState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        State::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_through_text() {
        for state in State::ALL {
            assert_eq!(state.as_str().parse::<State>().unwrap(), state);
        }
        assert!("done".parse::<State>().is_err());
    }

    #[test]
    fn only_end_states_are_final() {
        assert!(!State::Queued.is_final());
        assert!(!State::Running.is_final());
        assert!(State::Error.is_final());
        assert!(State::Skipped.is_success());
        assert!(!State::Failure.is_success());
    }
}
