//! The engine's handle, its lifecycle (start with recovery, shutdown) and the API the server
//! calls.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use gantry_core::{
    Backend, BackendError, Event, EventSender, Forge, ForgeKind, JobEvent, JobId, JobRequest,
    Resume, RunId, Trigger,
};
use gantry_store::{EngineAction, Page, RunFilter, RunRecord, Store};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::machine::Active;
use crate::{EngineConfig, Error, LogSink, Result};

/// A backend that can pick up attempts it started before Gantry restarted (Kubernetes: the
/// pods are still there). Backends without it (local processes die with the server) have their
/// unfinished attempts end as `error` at start.
#[async_trait]
pub trait Reattach: Send + Sync + 'static {
    /// `Ok(true)` when the attempt is still known: its further events, ending with `Finished`,
    /// will be sent on `events`. `Ok(false)` when it is gone.
    ///
    /// `resume` is what the store holds of the attempt: the backend sends what is missing from
    /// it (transitions that happened while Gantry was down, the rest of each step's log), in
    /// order, and nothing that is already there. The engine takes a transition it already has
    /// as a no-op, but a log line sent again would be stored twice.
    async fn reattach(
        &self,
        job: JobRequest,
        resume: Resume,
        events: EventSender,
    ) -> Result<bool, BackendError>;
}

pub(crate) struct Inner {
    pub store: Store,
    pub backend: Arc<dyn Backend>,
    pub forges: HashMap<ForgeKind, Arc<dyn Forge>>,
    pub logs: Arc<dyn LogSink>,
    pub reattach: Option<Arc<dyn Reattach>>,
    pub observer: Arc<dyn crate::Observer>,
    pub config: EngineConfig,
    /// The one lock every state change takes; it guards what the engine tracks of attempts
    /// handed to the backend (deadlines, cancels asked for).
    pub active: tokio::sync::Mutex<Active>,
    /// Wakes the scheduler: work was queued or a slot freed.
    pub wake: Notify,
    /// Wakes the reporter: statuses were written.
    pub report_wake: Notify,
    pub events_tx: mpsc::Sender<JobEvent>,
    events_rx: Mutex<Option<mpsc::Receiver<JobEvent>>>,
    pub token: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    pub dropped_statuses: AtomicU64,
}

impl Inner {
    /// Whether the scheduler runs in this process (its event receiver was taken by `start`).
    pub(crate) fn is_started(&self) -> bool {
        self.events_rx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_none()
    }
}

/// The scheduler. Cheap to clone: clones share one engine.
#[derive(Clone)]
pub struct Engine(pub(crate) Arc<Inner>);

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("backend", &self.0.backend.name())
            .field("forges", &self.0.forges.keys().collect::<Vec<_>>())
            .field("config", &self.0.config)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// An engine on `store` that runs jobs on `backend` and reports statuses to `forges` (one
    /// per kind; statuses for a kind without one are dropped). Nothing happens before
    /// [`Engine::start`].
    pub fn new(
        store: Store,
        backend: Arc<dyn Backend>,
        forges: Vec<Arc<dyn Forge>>,
        logs: Arc<dyn LogSink>,
        config: EngineConfig,
    ) -> Self {
        let (events_tx, events_rx) = mpsc::channel(1024);
        Self(Arc::new(Inner {
            store,
            backend,
            forges: forges.into_iter().map(|f| (f.kind(), f)).collect(),
            logs,
            reattach: None,
            observer: Arc::new(crate::NoObserver),
            config,
            active: tokio::sync::Mutex::new(Active::default()),
            wake: Notify::new(),
            report_wake: Notify::new(),
            events_tx,
            events_rx: Mutex::new(Some(events_rx)),
            token: CancellationToken::new(),
            tasks: Mutex::new(Vec::new()),
            dropped_statuses: AtomicU64::new(0),
        }))
    }

    /// Lets the engine re-attach to attempts that were running when it last stopped. Call
    /// before [`Engine::start`], on the only handle.
    pub fn with_reattach(self, reattach: Arc<dyn Reattach>) -> Self {
        let mut inner = Arc::try_unwrap(self.0)
            .unwrap_or_else(|_| panic!("with_reattach must be called before the engine is shared"));
        inner.reattach = Some(reattach);
        Self(Arc::new(inner))
    }

    /// Reports what happens to `observer` (metrics). Call before [`Engine::start`], on the only
    /// handle.
    pub fn with_observer(self, observer: Arc<dyn crate::Observer>) -> Self {
        let mut inner = Arc::try_unwrap(self.0)
            .unwrap_or_else(|_| panic!("with_observer must be called before the engine is shared"));
        inner.observer = observer;
        Self(Arc::new(inner))
    }

    /// Whether [`Engine::start`] has run: only a started engine schedules jobs (with leader
    /// election, only the leader's).
    pub fn is_started(&self) -> bool {
        self.0.is_started()
    }

    /// Recovers what the last process left (attempts that were running end as `error` unless
    /// the backend re-attaches, and are retried when they have retries left; runs move on), then
    /// starts the scheduler and the reporter.
    ///
    /// A store that cannot be reached or written right now (a database restarting, an I/O
    /// error) is waited for, trying again with backoff for up to [`START_PATIENCE`], rather
    /// than failing the start: recovery is what a crash would leave anyway, so it can be run
    /// again from the top.
    pub async fn start(&self) -> Result<()> {
        let events = || {
            self.0
                .events_rx
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
        };
        if events().is_none() {
            return Err(Error::AlreadyStarted);
        }
        gantry_store::patiently(
            "recover",
            || self.0.recover(),
            |err| {
                matches!(err, Error::Store(e) if e.is_unavailable()) && !self.0.token.is_cancelled()
            },
        )
        .await?;
        let rx = events().take().ok_or(Error::AlreadyStarted)?;
        let scheduler = tokio::spawn(crate::machine::run_loop(self.0.clone(), rx));
        let reporter = tokio::spawn(crate::reporter::run(self.0.clone()));
        self.0
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend([scheduler, reporter]);
        self.0.wake.notify_one();
        self.0.report_wake.notify_one();
        Ok(())
    }

    /// The token that stops the engine; the server can share it.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.0.token.clone()
    }

    /// Stops accepting work and waits for the scheduler and reporter to finish what they are
    /// writing. Attempts on the backend keep running (Kubernetes pods are picked up at the next
    /// start).
    pub async fn shutdown(&self) {
        self.0.token.cancel();
        let tasks =
            std::mem::take(&mut *self.0.tasks.lock().unwrap_or_else(PoisonError::into_inner));
        for task in tasks {
            let _ = task.await;
        }
    }

    /// Stops the engine's tasks at once, wherever they are, as a crash would. For tests of
    /// recovery.
    #[doc(hidden)]
    pub fn abort(&self) {
        self.0.token.cancel();
        for task in self
            .0
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            task.abort();
        }
    }

    pub fn store(&self) -> &Store {
        &self.0.store
    }

    /// What watches this engine: the server reports what happens around it (planning) there too.
    pub fn observer(&self) -> &dyn crate::Observer {
        &*self.0.observer
    }

    /// Statuses the reporter gave up on since this engine started.
    pub fn dropped_statuses(&self) -> u64 {
        self.0.dropped_statuses.load(Ordering::Relaxed)
    }

    /// Plans a trigger's pipeline files (`(path, contents)`) into runs, one per file whose `on:`
    /// matches, and queues their first jobs. A file that does not parse becomes a run in state
    /// `error` with the diagnostics as its reason (and an error status). Older runs the new ones
    /// supersede are cancelled. Returns the new runs' ids.
    pub async fn submit(
        &self,
        trigger: Trigger,
        files: Vec<(String, String)>,
    ) -> Result<Vec<RunId>> {
        self.0.submit(trigger, files).await
    }

    /// A run started by hand for a repository ref: [`Engine::submit`] with the event `manual`.
    pub async fn trigger_manual(
        &self,
        mut trigger: Trigger,
        files: Vec<(String, String)>,
    ) -> Result<Vec<RunId>> {
        trigger.event = Event::Manual;
        self.0.submit(trigger, files).await
    }

    /// Cancels a run: queued jobs at once, running ones through the backend. `false` when it
    /// had already finished.
    ///
    /// On an engine that is not started (a replica that does not lead), this and the other
    /// cancels and retries are checked and left in the store for the engine that runs, which
    /// applies them within one tick ([`EngineConfig::tick`]).
    pub async fn cancel_run(&self, id: RunId) -> Result<bool> {
        if !self.is_started() {
            return self.0.request(EngineAction::CancelRun, id.0).await;
        }
        self.0.cancel_run(id, crate::machine::BY_HAND).await
    }

    /// Cancels one job's latest attempt; jobs that need it are skipped. `false` when it had
    /// already finished.
    pub async fn cancel_job(&self, id: JobId) -> Result<bool> {
        if !self.is_started() {
            return self.0.request(EngineAction::CancelJob, id.0).await;
        }
        self.0.cancel_job(id).await
    }

    /// Runs the failed, errored and cancelled jobs of a finished run again (new attempts), and
    /// the jobs skipped because of them. `false` when nothing failed.
    pub async fn retry_run(&self, id: RunId) -> Result<bool> {
        if !self.is_started() {
            return self.0.request(EngineAction::RetryRun, id.0).await;
        }
        self.0.retry_run(id).await
    }

    /// Runs one finished job again (a new attempt), and the jobs skipped because of it.
    pub async fn retry_job(&self, id: JobId) -> Result<()> {
        if !self.is_started() {
            return self.0.request(EngineAction::RetryJob, id.0).await.map(drop);
        }
        self.0.retry_job(id).await
    }

    /// A run with every attempt of every job and their steps.
    pub async fn get_run(&self, id: RunId) -> Result<Option<RunRecord>> {
        Ok(self.0.store.get_run(id).await?)
    }

    /// Runs matching `filter`, newest first, without their jobs.
    pub async fn list_runs(&self, filter: &RunFilter, page: Page) -> Result<Vec<RunRecord>> {
        Ok(self.0.store.list_runs(filter, page).await?)
    }

    /// The 1-based place in the queue of a job's latest attempt; `None` when it is not in the
    /// queue (waiting for its needs, running, or finished).
    pub async fn queue_position(&self, job: JobId) -> Result<Option<u64>> {
        Ok(self.0.store.queue_position(job).await?)
    }
}
