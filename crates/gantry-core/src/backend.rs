//! The seam between the engine and where jobs execute.

use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::{JobId, JobSpec, LogLine, PullRequest, RepoRef, RunId, State, Timestamp};

/// Exactly what to check out into a job's workspace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkout {
    pub repo: RepoRef,
    /// The full ref the commit was reached by (`refs/heads/main`).
    pub git_ref: String,
    pub sha: String,
}

/// A secret value. It never prints: `Debug` and `Display` show `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself, for the few places that must hand it on (an environment, a mask).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// One attempt of one job, handed to a backend.
#[derive(Clone, Debug)]
pub struct JobRequest {
    pub run_id: RunId,
    pub job_id: JobId,
    /// 1 for the first attempt, 2 for the first retry, …
    pub attempt: u32,
    pub checkout: Checkout,
    /// The pull request the run is for, if any: backends decide from it whether the code comes
    /// from a fork (which never gets secrets).
    pub pull_request: Option<PullRequest>,
    pub spec: JobSpec,
    /// Values for the job's granted secrets, by environment variable name. Backends that read
    /// secrets themselves (Kubernetes, through `secretKeyRef`) ignore it.
    pub secret_values: BTreeMap<String, Secret>,
}

impl JobRequest {
    /// The commit message of a `gitops` step that gives none: what it sets, from which commit
    /// of which repository, and the run (its page when Gantry has a public URL).
    pub fn gitops_message(&self, step: &crate::GitopsStep) -> String {
        let run = self
            .spec
            .env
            .get("GANTRY_RUN_URL")
            .filter(|u| !u.is_empty())
            .map_or_else(|| format!("gantry run {}", self.run_id), |u| u.clone());
        let sha = &self.checkout.sha;
        format!(
            "Set {}:{}\n\nFrom {}@{} ({run}).",
            step.image,
            step.tag,
            self.checkout.repo.full_name,
            &sha[..sha.len().min(12)],
        )
    }
}

/// What the store holds of an attempt that a restarted Gantry hands back to its backend
/// (`gantry_engine::Reattach`): the backend reports only what is missing from it, so that no
/// transition is lost and no log line is stored twice.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resume {
    /// The attempt's [`JobEventKind::Started`] is stored (the job is running, not pending).
    pub started: bool,
    /// Each step, by index.
    pub steps: Vec<StepResume>,
}

/// What the store holds of one step of a re-attached attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepResume {
    /// `Queued`/`Pending`: its start is not stored; `Running`: its start is; a final state: its
    /// end is (with `exit_code` and `reason`).
    pub state: State,
    pub exit_code: Option<i32>,
    pub reason: Option<String>,
    /// What is stored of its log. Counted only for steps whose end is not stored (the log of a
    /// step that ended is complete).
    pub log: StoredLog,
}

impl StepResume {
    /// A step of which nothing is stored.
    pub fn queued() -> Self {
        Self {
            state: State::Queued,
            exit_code: None,
            reason: None,
            log: StoredLog::default(),
        }
    }
}

/// How much of a step's log is stored, in the backend's own units: [`LogLine`]s as it sent them
/// (the store may keep a long line as several).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoredLog {
    /// Lines of the step's own output (streams stdout and stderr): the backend skips this many
    /// of them and sends the rest.
    pub output_lines: u64,
    /// Lines Gantry itself wrote into the step's log (stream system).
    pub system_lines: u64,
    /// The time of the last output line stored (to the microsecond, as the store keeps it).
    pub last_output_at: Option<Timestamp>,
}

/// How a step ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepOutcome {
    pub state: State,
    pub exit_code: Option<i32>,
    /// Why, when the exit code does not say it all ("timed out after 5m", "OOMKilled").
    pub reason: Option<String>,
    /// What the step produced, in a line or a few, shown with the step: the digest a `kaniko`
    /// step pushed, the findings of a `trivy` scan, the commit a `gitops` step pushed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
}

impl StepOutcome {
    /// Why the job failed, when this step (named `step`) failed it: what a backend reports as
    /// the job's reason.
    pub fn failure_reason(&self, step: &str) -> String {
        match (&self.reason, self.exit_code) {
            (Some(reason), _) => format!("step {step:?} failed: {reason}"),
            (None, Some(code)) => format!("step {step:?} failed with exit code {code}"),
            (None, None) => format!("step {step:?} failed"),
        }
    }
}

/// Something that happened to a job attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobEvent {
    pub job_id: JobId,
    pub attempt: u32,
    pub at: Timestamp,
    pub kind: JobEventKind,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum JobEventKind {
    /// The job's workspace is ready and its first step is about to start.
    Started,
    StepStarted {
        step: usize,
    },
    Log(LogLine),
    StepFinished {
        step: usize,
        outcome: StepOutcome,
    },
    /// The last event of an attempt: success, failure, cancelled or error.
    Finished {
        state: State,
        reason: Option<String>,
    },
}

/// Where a backend sends the events of the jobs it runs. Bounded, so a slow consumer slows the
/// producer instead of filling memory.
pub type EventSender = tokio::sync::mpsc::Sender<JobEvent>;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The job could not be started at all (bad spec for this backend, no workspace, …).
    #[error("cannot start job: {0}")]
    Start(String),
    #[error("no such job attempt: {0}")]
    UnknownJob(String),
    #[error("backend unavailable: {message}")]
    Unavailable {
        message: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

/// Where jobs execute: Kubernetes pods, or local child processes.
///
/// `start` returns once the attempt is under way; from then on its progress arrives as
/// [`JobEvent`]s, ending with exactly one [`JobEventKind::Finished`].
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// A short name for logs and the API: `kubernetes`, `local`.
    fn name(&self) -> &'static str;

    async fn start(&self, job: JobRequest, events: EventSender) -> Result<(), BackendError>;

    /// Stops an attempt. Its `Finished { state: Cancelled }` event follows. Cancelling an
    /// attempt that already ended is not an error.
    async fn cancel(&self, job_id: JobId, attempt: u32) -> Result<(), BackendError>;
}
