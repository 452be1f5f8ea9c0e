//! Gantry's domain: what a run, a job and a step are, what starts them, and the two seams
//! through which the rest of the system touches the outside world — [`Backend`] (where jobs
//! execute: Kubernetes pods or local processes) and [`Forge`] (where code lives and statuses go).
//!
//! This crate does no I/O. Fakes of both seams, and real faults for tests ([`faults`]), live
//! behind the `test-util` feature.

mod backend;
mod forge;
mod ids;
pub mod inject;
mod log;
mod run;
mod spec;
mod state;
mod status;
mod trigger;
pub mod trivy;

#[cfg(feature = "test-util")]
pub mod fake;
#[cfg(feature = "test-util")]
pub mod faults;

pub use backend::{
    Backend, BackendError, Checkout, EventSender, JobEvent, JobEventKind, JobRequest, Resume,
    Secret, StepOutcome, StepResume, StoredLog,
};
pub use forge::{Forge, ForgeError, GitCredentials};
pub use ids::{JobId, RunId, StepId};
pub use log::{LogLine, Stream};
pub use run::{Job, Run, Step};
pub use spec::{
    GitopsStep, JobSpec, KanikoStep, Resources, SecretRef, ServiceSpec, Severity, StatusCondition,
    StepKind, StepSpec, Toleration, TrivyStep, cache_repo_for,
};
pub use state::{State, StepState, UnknownState};
pub use status::{CommitState, CommitStatus};
pub use trigger::{Event, ForgeKind, PullRequest, RepoRef, Trigger};

/// Timestamps everywhere in Gantry are UTC.
pub type Timestamp = chrono::DateTime<chrono::Utc>;

/// The current time, as Gantry records it.
pub fn now() -> Timestamp {
    chrono::Utc::now()
}
