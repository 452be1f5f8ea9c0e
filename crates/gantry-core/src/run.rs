//! Runs, jobs and steps as the store keeps them and the API shows them.

use serde::{Deserialize, Serialize};

use crate::{JobId, JobSpec, RunId, State, StatusCondition, Timestamp, Trigger};

/// Everything one trigger started for one pipeline file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    pub id: RunId,
    pub trigger: Trigger,
    /// The pipeline file, e.g. `.gantry.yaml` or `.gantry/release.yaml`.
    pub pipeline: String,
    pub state: State,
    pub created_at: Timestamp,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    pub jobs: Vec<Job>,
}

/// One attempt of one job of a run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub id: JobId,
    pub run_id: RunId,
    pub name: String,
    pub attempt: u32,
    /// Names of the jobs this one waits for.
    pub needs: Vec<String>,
    pub spec: JobSpec,
    /// How many more attempts a failure earns.
    pub retries_left: u32,
    pub allow_failure: bool,
    pub run_if: StatusCondition,
    pub state: State,
    /// Why it ended as it did, when the state alone does not say.
    pub reason: Option<String>,
    pub created_at: Timestamp,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    pub steps: Vec<Step>,
}

/// One step of a job attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub index: usize,
    pub name: String,
    pub state: State,
    pub exit_code: Option<i32>,
    pub reason: Option<String>,
    /// What the step produced (see [`crate::StepOutcome::summary`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
}
