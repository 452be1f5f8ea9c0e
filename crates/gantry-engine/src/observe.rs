//! Hooks for metrics: the engine says what happened, an [`Observer`] counts it. The engine
//! knows nothing of Prometheus; the server's metrics implement this trait.

use std::time::Duration;

use gantry_core::{ForgeKind, State};

/// What the engine reports as it works. Every method has a default that does nothing, and each
/// is called outside any await point that matters: implementations must be quick (an atomic
/// increment), never block.
pub trait Observer: Send + Sync + 'static {
    /// A run was created (queued) from a trigger.
    fn run_created(&self) {}
    /// A run ended in `state`.
    fn run_finished(&self, _state: State) {}
    /// An attempt left the queue for the backend after waiting `waited`.
    fn job_started(&self, _waited: Duration) {}
    /// An attempt ended in `state`; `duration` from when it started running, when it did.
    fn job_finished(&self, _state: State, _duration: Option<Duration>) {}
    /// The first step of an attempt started running, `latency` after the attempt was handed to
    /// the backend (for Kubernetes: pod created → first step running).
    fn first_step_started(&self, _latency: Duration) {}
    /// A log line of `bytes` bytes was stored.
    fn log_line(&self, _bytes: usize) {}
    /// A state change could not be written to the store (`error` says why: a full disk, an
    /// I/O error, the database gone).
    fn store_write_failed(&self, _error: &str) {}
    /// A step log line could not be stored.
    fn log_line_lost(&self, _error: &str) {}
    /// Planning a delivery failed: `outcome` is `retried` (a transient failure: the forge timed
    /// out or answered 5xx/429, the store could not write) or `failed` (a permanent one: the
    /// delivery ends); `cause` is `forge`, `store` or `config`.
    fn planning_failed(&self, _outcome: &'static str, _cause: &'static str) {}
    /// A commit status was sent to a forge: `delivered`, `retried` or `dropped`.
    fn status_reported(&self, _forge: ForgeKind, _result: &'static str) {}
}

/// The observer of an engine nobody watches.
#[derive(Debug, Default)]
pub struct NoObserver;

impl Observer for NoObserver {}

pub(crate) fn since(at: gantry_core::Timestamp) -> Duration {
    (gantry_core::now() - at).to_std().unwrap_or_default()
}
