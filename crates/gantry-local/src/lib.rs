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
//!
//! A Gantry process that is killed (SIGKILL, a crash) cannot stop its steps' process groups.
//! So each attempt keeps a record beside its workspace, `<work root>/gantry-job-XXXX.running`,
//! naming this Gantry process and the process groups it has running (pgid and start time, so a
//! recycled pid is never mistaken for them). A new backend on the same work root
//! ([`LocalBackend::new`]) looks for records whose Gantry process is gone, stops their groups
//! (SIGTERM, a grace, SIGKILL) if they are still the recorded processes, and removes the records
//! and the workspaces; each is logged as a warning. Records of a Gantry that still runs (another
//! replica on the same data directory, a concurrent `gantry run`), of another machine, pid
//! namespace or user are left alone. Linux only: without `/proc` nothing is recorded.

mod gitops;
mod job;
mod leftovers;
mod process;
mod procfs;
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

/// How far the clean-up of what a dead Gantry process left in the work root has come.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Cleanup {
    Running,
    /// Its processes are stopped; workspaces may still be being removed.
    Stopped,
    Done,
}

/// Runs jobs as child processes on this machine.
#[derive(Clone, Debug)]
pub struct LocalBackend {
    config: Arc<LocalConfig>,
    /// This process, as the records of running attempts name it.
    owner: Option<Arc<leftovers::Owner>>,
    /// Attempts under way, with the switch that cancels each.
    running: Attempts,
    cleanup: watch::Receiver<Cleanup>,
}

impl LocalBackend {
    /// A backend whose workspaces go under `config.work_root`. It starts (on a thread of its
    /// own) stopping the processes and removing the workspaces that a Gantry process that died
    /// left there; jobs it is given meanwhile wait until those processes are gone.
    pub fn new(config: LocalConfig) -> Self {
        let owner = leftovers::Owner::current().map(Arc::new);
        let (progress, cleanup) = watch::channel(Cleanup::Running);
        match &owner {
            None => {
                tracing::debug!("no /proc: processes are not recorded, leftovers not cleaned");
                progress.send_replace(Cleanup::Done);
            }
            Some(owner) => {
                let root = config.work_root.clone().unwrap_or_else(std::env::temp_dir);
                let owner = Arc::clone(owner);
                // A failure to spawn drops `progress`, which waiters take as done.
                let _ = std::thread::Builder::new()
                    .name("gantry-leftovers".into())
                    .spawn(move || {
                        leftovers::clean_up(&root, &owner, || {
                            progress.send_replace(Cleanup::Stopped);
                        });
                        progress.send_replace(Cleanup::Done);
                    });
            }
        }
        Self {
            config: Arc::new(config),
            owner,
            running: Arc::default(),
            cleanup,
        }
    }

    /// Waits until what Gantry processes that died left in the work root is cleaned up: their
    /// processes stopped, their workspaces removed (see the crate docs).
    pub async fn leftovers_cleaned(&self) {
        wait_for(self.cleanup.clone(), Cleanup::Done).await;
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

async fn wait_for(mut cleanup: watch::Receiver<Cleanup>, stage: Cleanup) {
    // An error means the clean-up is over (its thread ended or never started).
    let _ = cleanup.wait_for(|now| *now >= stage).await;
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
        let owner = self.owner.clone();
        let running = Arc::clone(&self.running);
        let cleanup = self.cleanup.clone();
        tokio::spawn(async move {
            // Unregisters the attempt however the task ends.
            let _registered = Registered { running, key };
            // A dead Gantry's processes may hold what this job needs (a port, a lock).
            wait_for(cleanup, Cleanup::Stopped).await;
            job::run(job, &config, owner.as_deref(), events, cancel_rx).await;
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
