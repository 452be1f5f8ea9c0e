//! The Kubernetes backend (ARCHITECTURE.md §4): each job attempt an ephemeral Pod in a build
//! namespace.
//!
//! - [`render`] turns a [`JobRequest`](gantry_core::JobRequest) into its Pod, purely (`gantry
//!   render` prints it);
//! - [`KubeBackend`] creates pods, keeps ONE watch over all of Gantry's labelled pods, derives
//!   step transitions from container statuses, follows one log stream per step, cancels by
//!   deleting, sweeps finished and orphaned pods and re-attaches after a restart
//!   ([`gantry_engine::Reattach`]);
//! - [`lease`] elects the one replica that runs the engine, with a Lease.

pub mod agents;
mod api;
mod backend;
mod config;
pub mod images;
pub mod inject;
pub mod lease;
mod logs;

pub mod names;
pub mod render;
mod secrets;
mod sweeper;
mod tracker;

pub use backend::{CloneCredentials, GitCredentials, JobRegistry, KubeBackend};
pub use config::{ImageMirror, Images, KubeConfig, RepoPolicy, SecurityLevel, Timings};
pub use gantry_engine::{PullRequestOrigin, Requester, SecretGrant, SecretGrants};
pub use lease::{LeaderElector, Leadership, LeaseConfig};
pub use render::{Manifest, RenderError, RenderOptions, Rendered, origin_of, render, to_yaml};
pub use secrets::KubeSecretValues;

/// What goes wrong in the backend.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Render(#[from] RenderError),
    #[error("Kubernetes API: {0}")]
    Api(#[source] kube::Error),
    /// A ResourceQuota of the build namespace refused the pod (the API server's message).
    #[error("refused by a resource quota: {0}")]
    Quota(String),
    #[error("pod {0} exists but belongs to another job attempt")]
    NameTaken(String),
    #[error("pod {0} is already followed")]
    AlreadyRunning(String),
    #[error("no clone credentials: {0}")]
    Credentials(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
