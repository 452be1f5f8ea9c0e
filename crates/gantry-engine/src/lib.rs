//! Gantry's scheduler. A [`Trigger`](gantry_core::Trigger) and the pipeline files at its commit
//! become runs ([`Engine::submit`]); their jobs go through a durable FIFO queue, start on the
//! [`Backend`](gantry_core::Backend) as global and per-repository limits allow, and move along
//! the `needs` DAG as they finish. Timeouts, retries, `allow_failure`, `when: status`, cancel
//! (by hand or by a newer push), recovery after a restart and the delivery of commit statuses
//! (the reporter) live here too.
//!
//! Every state change is one store transaction that also writes the commit statuses it causes.
//! All changes go through one lock, so the rules below never race each other:
//!
//! - a job whose needs are final is queued when its `when: status` admits how they went, and
//!   skipped otherwise; a job skipped because a need failed passes that failure on;
//! - `allow_failure` jobs never block their dependents nor fail the run;
//! - a failed or errored attempt with retries left gets a new attempt (the old one and its logs
//!   stay);
//! - a run ends when every job's latest attempt has: cancelled if it was cancelled, else failure,
//!   error, cancelled or success by its counting jobs, in that order.

mod config;
mod engine;
mod grants;
mod logs;
mod machine;
mod observe;
mod reporter;
mod status;
mod timeouts;

pub use config::{EngineConfig, RepoSupersede, ReporterConfig, SupersedePolicy};
pub use engine::{Engine, Reattach};
pub use gantry_logs::Logs;
pub use gantry_store::{Page, RunFilter, RunRecord};
pub use grants::{
    EnvSecretValues, PullRequestOrigin, Requester, SecretGrant, SecretGrants, SecretPolicy,
    SecretValues,
};
pub use logs::LogSink;
pub use machine::{RESTART_REASON, SKIP_NOTHING_FAILED, SKIP_UPSTREAM_FAILED};
pub use observe::{NoObserver, Observer};
pub use timeouts::{DEFAULT_JOB_TIMEOUT, DEFAULT_MAX_JOB_TIMEOUT, JobTimeouts, TimeoutTooLong};

use gantry_core::{JobId, RunId};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] gantry_store::Error),
    #[error("no run {0}")]
    NoSuchRun(RunId),
    #[error("no job {0}")]
    NoSuchJob(JobId),
    #[error("run {0} has not finished: only a finished run can be retried")]
    RunNotFinished(RunId),
    #[error("job {0} has not finished: only a finished job can be retried")]
    JobNotFinished(JobId),
    #[error("the engine is shutting down")]
    ShuttingDown,
    #[error("the engine was already started")]
    AlreadyStarted,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
