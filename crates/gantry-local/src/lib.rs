//! The local backend: a job's steps as child processes on this machine, in a temporary
//! workspace holding exactly the job's commit (ARCHITECTURE.md §5).
//!
//! Each `run` step is `sh -e -c <script>` in its own process group; timeouts and cancels stop the
//! whole group (SIGTERM, then SIGKILL after a grace). Steps are not isolated from each other or
//! from the machine, the job's `image` is ignored and service containers are not started: the
//! job's log says so. `kaniko` and `trivy` steps run the real tools when they are on `PATH`
//! (`executor`, `trivy`) and fail clearly otherwise; `gitops` steps use `git` for real.
//!
//! An attempt whose event receiver is dropped is treated as cancelled: nobody can learn what it
//! does, so its processes are stopped and its workspace removed.

mod gitops;
mod job;
mod process;
mod tools;
mod workspace;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use gantry_core::{Backend, BackendError, EventSender, JobId, JobRequest};
use tokio::sync::watch;

/// How the local backend runs jobs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalConfig {
    /// Where temporary workspaces are made (default: the system's temporary directory).
    pub work_root: Option<PathBuf>,
    /// Keep each workspace after its job ends (its path is logged), for debugging.
    pub keep_workspaces: bool,
    /// The shell `run` scripts are given to, as `<shell> -e -c <script>`.
    pub shell: String,
}

impl Default for LocalConfig {
    fn default() -> Self {
        Self {
            work_root: None,
            keep_workspaces: false,
            shell: "/bin/sh".into(),
        }
    }
}

type Attempts = Arc<Mutex<HashMap<(JobId, u32), watch::Sender<bool>>>>;

/// Runs jobs as child processes on this machine.
#[derive(Clone, Debug)]
pub struct LocalBackend {
    config: Arc<LocalConfig>,
    /// Attempts under way, with the switch that cancels each.
    running: Attempts,
}

impl LocalBackend {
    pub fn new(config: LocalConfig) -> Self {
        Self {
            config: Arc::new(config),
            running: Arc::default(),
        }
    }

    pub fn config(&self) -> &LocalConfig {
        &self.config
    }

    /// How many attempts are under way.
    pub fn running(&self) -> usize {
        lock(&self.running).len()
    }
}

impl Default for LocalBackend {
    fn default() -> Self {
        Self::new(LocalConfig::default())
    }
}

fn lock(
    running: &Attempts,
) -> std::sync::MutexGuard<'_, HashMap<(JobId, u32), watch::Sender<bool>>> {
    running.lock().unwrap_or_else(PoisonError::into_inner)
}

#[async_trait]
impl Backend for LocalBackend {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn start(&self, job: JobRequest, events: EventSender) -> Result<(), BackendError> {
        let key = (job.job_id, job.attempt);
        let (cancel_tx, cancel_rx) = watch::channel(false);
        {
            let mut running = lock(&self.running);
            if running.contains_key(&key) {
                return Err(BackendError::Start(format!(
                    "attempt {} of job {} is already running",
                    job.attempt, job.job_id
                )));
            }
            running.insert(key, cancel_tx);
        }
        let config = Arc::clone(&self.config);
        let running = Arc::clone(&self.running);
        tokio::spawn(async move {
            // Unregisters the attempt however the task ends.
            let _registered = Registered { running, key };
            job::run(job, &config, events, cancel_rx).await;
        });
        Ok(())
    }

    async fn cancel(&self, job_id: JobId, attempt: u32) -> Result<(), BackendError> {
        if let Some(cancel) = lock(&self.running).get(&(job_id, attempt)) {
            cancel.send_replace(true);
        }
        Ok(())
    }
}

struct Registered {
    running: Attempts,
    key: (JobId, u32),
}

impl Drop for Registered {
    fn drop(&mut self) {
        lock(&self.running).remove(&self.key);
    }
}

/// What goes wrong inside the backend. It reaches the engine as an event's reason.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("cannot create a workspace in {}: {source}", root.display())]
    Workspace {
        root: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0:?} is not a commit sha")]
    BadSha(String),
    #[error("`{command}` failed ({ending}){}", if stderr.is_empty() { String::new() } else { format!(": {stderr}") })]
    Git {
        command: String,
        ending: String,
        stderr: String,
    },
    #[error("{0}")]
    TimedOut(process::Timeout),
    #[error("cancelled")]
    Cancelled,
}
