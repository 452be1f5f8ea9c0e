//! The backend: creates pods, keeps one watch over all of them, runs one task per attempt that
//! turns its pod's changes into job events, cancels, and re-attaches after a restart.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures::StreamExt;
use gantry_core::{
    Backend, BackendError, EventSender, JobEvent, JobEventKind, JobId, JobRequest, LogLine,
    RepoRef, Resume, RunId, State, StoredLog, Stream,
};
use k8s_openapi::api::core::v1::{Event, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::KubeConfig;
use crate::logs::Follow;
use crate::render::{RenderOptions, origin_of, render};
use crate::tracker::{Action, Ending, ScaleUp, Tracker};
use crate::{Error, api, names};

/// Username and token for cloning a repository: the forges' own type (they lend them).
pub use gantry_core::GitCredentials;

/// Short-lived clone credentials for a repository (a forge's installation token). `None`: the
/// repository is cloned anonymously.
#[async_trait]
pub trait CloneCredentials: Send + Sync + 'static {
    async fn for_repo(&self, repo: &RepoRef) -> Result<Option<GitCredentials>, BackendError>;
}

/// What the store knows, for the sweeper: a labelled pod of an attempt the store does not know
/// is an orphan.
#[async_trait]
pub trait JobRegistry: Send + Sync + 'static {
    async fn knows(&self, run: RunId, job: JobId, attempt: u32) -> bool;
}

pub(crate) enum Update {
    Applied(Arc<Pod>),
    Deleted,
    Cancel,
    /// The cluster autoscaler's word on the pod (an Event on it), at the Event's time.
    Autoscaler(ScaleUp, Option<SystemTime>),
}

pub(crate) struct Inner {
    pub client: Client,
    pub pods: Api<Pod>,
    pub secrets: Api<Secret>,
    pub config: KubeConfig,
    pub credentials: Option<Arc<dyn CloneCredentials>>,
    /// Attempts under way, by pod name.
    pub jobs: Mutex<HashMap<String, mpsc::UnboundedSender<Update>>>,
    /// Pods of attempts under way that are known to exist: their create returned (or they were
    /// re-attached from the watch's cache). Only these can be missing from a listing because
    /// they were deleted; a pod whose create is still in flight may simply be newer than it.
    created: Mutex<HashSet<String>>,
    pub store: Store<Pod>,
    /// The cluster autoscaler's Events on pods in the build namespace (few: one or two per
    /// unschedulable pod), from the one Event watch.
    autoscaler_events: Store<Event>,
    /// Listings the watch started (1 after the start; one more after every 410 Gone).
    lists: AtomicU64,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Inner {
    fn jobs(&self) -> std::sync::MutexGuard<'_, HashMap<String, mpsc::UnboundedSender<Update>>> {
        self.jobs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn created(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.created.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn route(&self, name: &str, update: Update) {
        if let Some(tx) = self.jobs().get(name) {
            let _ = tx.send(update);
        }
    }
}

/// Runs jobs as pods. Cheap to clone. Create it inside a Tokio runtime: it starts its watch.
#[derive(Clone)]
pub struct KubeBackend {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for KubeBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeBackend")
            .field("namespace", &self.inner.config.namespace)
            .field("running", &self.inner.jobs().len())
            .finish_non_exhaustive()
    }
}

impl KubeBackend {
    /// A backend on `client` (from `Client::try_default()` in a cluster or with a kubeconfig)
    /// that starts the one watch over `app.kubernetes.io/managed-by=gantry` pods in the build
    /// namespace.
    pub fn new(
        client: Client,
        config: KubeConfig,
        credentials: Option<Arc<dyn CloneCredentials>>,
    ) -> Self {
        let pods: Api<Pod> = Api::namespaced(client.clone(), &config.namespace);
        let events: Api<Event> = Api::namespaced(client.clone(), &config.namespace);
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &config.namespace);
        let (store, writer) = reflector::store();
        let (autoscaler_events, events_writer) = reflector::store();
        let inner = Arc::new(Inner {
            client,
            pods: pods.clone(),
            secrets,
            config,
            credentials,
            jobs: Mutex::new(HashMap::new()),
            created: Mutex::new(HashSet::new()),
            store,
            autoscaler_events,
            lists: AtomicU64::new(0),
            tasks: Mutex::new(Vec::new()),
        });
        let watch = tokio::spawn(watch_pods(Arc::downgrade(&inner), pods, writer));
        let events = tokio::spawn(watch_autoscaler_events(
            Arc::downgrade(&inner),
            events,
            events_writer,
        ));
        inner
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend([watch, events]);
        Self { inner }
    }

    pub fn config(&self) -> &KubeConfig {
        &self.inner.config
    }

    /// How many times the pod watch has listed the build namespace: 1 once it started, one more
    /// after every re-list (a `410 Gone` on the watch). For tests and diagnostics.
    #[doc(hidden)]
    pub fn pod_lists(&self) -> u64 {
        self.inner.lists.load(Ordering::Relaxed)
    }

    /// Attempts under way.
    pub fn running(&self) -> usize {
        self.inner.jobs().len()
    }

    /// Starts the sweeper: every `sweep_every` it looks at the watch's cache (no request) and
    /// deletes finished pods older than `retention` and orphans older than `orphan_min_age`.
    pub fn spawn_sweeper(&self, registry: Arc<dyn JobRegistry>) -> JoinHandle<()> {
        let inner = Arc::downgrade(&self.inner);
        tokio::spawn(crate::sweeper::run(inner, registry))
    }

    /// One sweep now; returns the pods deleted.
    pub async fn sweep(&self, registry: &dyn JobRegistry) -> Vec<String> {
        crate::sweeper::sweep(&self.inner, registry).await
    }

    /// Waits until the watch has listed the pods once.
    pub async fn ready(&self) -> bool {
        tokio::time::timeout(
            self.inner.config.timings.request_timeout,
            self.inner.store.wait_until_ready(),
        )
        .await
        .is_ok_and(|r| r.is_ok())
    }

    async fn launch(&self, job: JobRequest, events: EventSender) -> Result<(), Error> {
        let inner = &self.inner;
        let credentials = match &inner.credentials {
            Some(c) => c
                .for_repo(&job.checkout.repo)
                .await
                .map_err(|e| Error::Credentials(e.to_string()))?,
            None => None,
        };
        let options = RenderOptions {
            origin: origin_of(&job),
            clone_credentials: credentials.is_some(),
        };
        let mut rendered = render(&job, &inner.config, &options)?;
        if !inner.config.pod_annotations.is_empty() {
            let annotations = rendered.pod.metadata.annotations.get_or_insert_default();
            for (k, v) in &inner.config.pod_annotations {
                annotations.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        let name = names::pod_name(job.job_id, job.attempt);
        let (tx, rx) = mpsc::unbounded_channel();
        {
            let mut jobs = inner.jobs();
            if jobs.contains_key(&name) {
                return Err(Error::AlreadyRunning(name));
            }
            jobs.insert(name.clone(), tx.clone());
        }
        let launched = Instant::now();
        let pending = match api::create_pod(&inner.pods, &rendered.pod, &inner.config.timings).await
        {
            Ok(created) => {
                if let Err(e) = admitted(inner, &created, credentials).await {
                    inner.jobs().remove(&name);
                    return Err(e);
                }
                let _ = tx.send(Update::Applied(Arc::new(created)));
                None
            }
            // A ResourceQuota refused it: the attempt's own task waits and tries again, so
            // that this returns now and holds up nothing (the engine starts jobs one by one).
            Err(Error::Quota(refused)) => Some(Pending {
                pod: rendered.pod,
                credentials,
                refused,
            }),
            Err(e) => {
                inner.jobs().remove(&name);
                return Err(e);
            }
        };
        let tracker = Tracker::new(&job);
        let mut runner = Runner::new(
            Arc::clone(inner),
            job,
            events,
            name,
            tracker,
            rendered.notices,
            Vec::new(),
        );
        runner.launched = launched;
        runner.pending = pending;
        tokio::spawn(runner.run(rx));
        Ok(())
    }
}

/// A pod created: it is known to exist from now on, and its clone credentials go into the
/// per-job Secret (when that cannot be created, the pod is deleted again).
async fn admitted(
    inner: &Inner,
    created: &Pod,
    credentials: Option<GitCredentials>,
) -> Result<(), Error> {
    let name = created.metadata.name.clone().unwrap_or_default();
    inner.created().insert(name.clone());
    if let Some(creds) = credentials
        && let Err(e) = api::create_secret(
            &inner.secrets,
            &clone_secret(created, creds),
            &inner.config.timings,
        )
        .await
    {
        tracing::warn!(pod = %name, error = %e, "cannot create the clone credentials; deleting the pod");
        let _ = api::delete_pod(&inner.pods, &name, Duration::ZERO, &inner.config.timings).await;
        inner.created().remove(&name);
        return Err(e);
    }
    Ok(())
}

/// A pod a ResourceQuota refused, to be created once the quota admits it.
struct Pending {
    pod: Pod,
    credentials: Option<GitCredentials>,
    /// The API server's message.
    refused: String,
}

/// The per-job Secret, owned by the pod so that it goes when the pod goes.
fn clone_secret(pod: &Pod, creds: GitCredentials) -> Secret {
    let name = pod.metadata.name.clone().unwrap_or_default();
    Secret {
        metadata: ObjectMeta {
            name: Some(names::clone_secret(&name)),
            namespace: pod.metadata.namespace.clone(),
            labels: pod.metadata.labels.clone(),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Pod".into(),
                name,
                uid: pod.metadata.uid.clone().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(false),
            }]),
            ..ObjectMeta::default()
        },
        string_data: Some(BTreeMap::from([
            ("username".to_owned(), creds.username),
            ("password".to_owned(), creds.password.expose().to_owned()),
        ])),
        type_: Some("Opaque".into()),
        ..Secret::default()
    }
}

/// The one watch: every pod change goes to the task of its attempt.
async fn watch_pods(
    inner: std::sync::Weak<Inner>,
    pods: Api<Pod>,
    writer: reflector::store::Writer<Pod>,
) {
    let config = watcher::Config::default().labels(names::SELECTOR);
    // Managed fields are half of a Pod's size and Gantry never reads them: not kept in the
    // cache (the memory per running job halved in the cluster bench).
    let stream = watcher(pods, config)
        .default_backoff()
        .modify(|pod| pod.metadata.managed_fields = None)
        .reflect(writer);
    futures::pin_mut!(stream);
    let mut listed: Vec<String> = Vec::new();
    // Pods known to exist when the listing started: only they can be gone from it.
    let mut existing: HashSet<String> = HashSet::new();
    while let Some(event) = stream.next().await {
        let Some(inner) = inner.upgrade() else { return };
        match event {
            Ok(watcher::Event::Apply(pod)) => {
                let name = pod.metadata.name.clone().unwrap_or_default();
                inner.route(&name, Update::Applied(Arc::new(pod)));
            }
            Ok(watcher::Event::InitApply(pod)) => {
                let name = pod.metadata.name.clone().unwrap_or_default();
                listed.push(name.clone());
                inner.route(&name, Update::Applied(Arc::new(pod)));
            }
            Ok(watcher::Event::Delete(pod)) => {
                let name = pod.metadata.name.clone().unwrap_or_default();
                inner.route(&name, Update::Deleted);
            }
            Ok(watcher::Event::Init) => {
                // Sent before the list request: a pod whose create returned by now is in the
                // listing (a list without resourceVersion is a consistent read) unless deleted.
                inner.lists.fetch_add(1, Ordering::Relaxed);
                listed.clear();
                existing = inner.created().clone();
            }
            Ok(watcher::Event::InitDone) => {
                // A re-list (after 410 Gone or a restart of the watch): pods of running
                // attempts missing from it were deleted while we were not watching. Not those
                // created while it was listed: they are newer than the listing.
                let gone: Vec<String> = inner
                    .jobs()
                    .keys()
                    .filter(|n| existing.contains(*n) && !listed.contains(n))
                    .cloned()
                    .collect();
                for name in gone {
                    inner.route(&name, Update::Deleted);
                }
            }
            Err(e) => tracing::warn!(error = %e, "pod watch error; retrying with backoff"),
        }
    }
}

/// The source component the cluster autoscaler records its Events under (its event recorder's
/// `EventSource`, kubernetes/autoscaler `cluster-autoscaler/utils/kubernetes/factory.go`).
const AUTOSCALER: &str = "cluster-autoscaler";

/// The autoscaler's verdict in an Event, with the Event's time.
fn scale_up(event: &Event) -> Option<(String, ScaleUp, Option<SystemTime>)> {
    let verdict = ScaleUp::from_event(
        event.reason.as_deref().unwrap_or_default(),
        event.message.as_deref().unwrap_or_default(),
    )?;
    let at = event
        .last_timestamp
        .as_ref()
        .map(|t| t.0)
        .or_else(|| event.event_time.as_ref().map(|t| t.0))
        .or_else(|| event.first_timestamp.as_ref().map(|t| t.0))
        .or_else(|| event.metadata.creation_timestamp.as_ref().map(|t| t.0))
        .map(SystemTime::from);
    let pod = event.involved_object.name.clone()?;
    Some((pod, verdict, at))
}

/// The one Event watch: the cluster autoscaler's Events on pods of the build namespace
/// (`involvedObject.kind=Pod,source=cluster-autoscaler`, so the watch carries only those, not
/// the kubelet's and the scheduler's), each handed to the task of its pod's attempt. The
/// autoscaler emits `TriggeredScaleUp` / `NotTriggerScaleUp` on pods it looked at
/// (kubernetes/autoscaler `cluster-autoscaler/processors/status/eventing_scale_up_processor.go`);
/// the tracker acts on them only while its pod cannot be scheduled. Needs `list` and `watch` on
/// `events` in the build namespace (the chart's Role); without them Gantry works as if there
/// were no autoscaler.
async fn watch_autoscaler_events(
    inner: std::sync::Weak<Inner>,
    events: Api<Event>,
    writer: reflector::store::Writer<Event>,
) {
    let config =
        watcher::Config::default().fields(&format!("involvedObject.kind=Pod,source={AUTOSCALER}"));
    let stream = watcher(events, config)
        .default_backoff()
        .modify(|e| e.metadata.managed_fields = None)
        .reflect(writer);
    futures::pin_mut!(stream);
    let mut warned = false;
    while let Some(event) = stream.next().await {
        let Some(inner) = inner.upgrade() else { return };
        match event {
            Ok(watcher::Event::Apply(e) | watcher::Event::InitApply(e)) => {
                if let Some((pod, verdict, at)) = scale_up(&e) {
                    inner.route(&pod, Update::Autoscaler(verdict, at));
                }
            }
            Ok(_) => {}
            Err(e) if !warned && forbidden(&e) => {
                warned = true;
                tracing::warn!(error = %e, "cannot watch the cluster autoscaler's events (RBAC: list and watch events in the build namespace); unschedulable pods end after the grace; retrying with backoff");
            }
            Err(e) => tracing::debug!(error = %e, "event watch error; retrying with backoff"),
        }
    }
}

/// Was a watch refused for want of permission (403), rather than failing for a while?
fn forbidden(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(err)
        | watcher::Error::WatchStartFailed(err)
        | watcher::Error::WatchFailed(err) => crate::api::code(err) == Some(403),
        watcher::Error::WatchError(status) => status.code == 403,
        watcher::Error::NoResourceVersion => false,
    }
}

/// A step's log task.
struct LogTask {
    ended: watch::Sender<bool>,
    task: JoinHandle<u32>,
    /// Lines it delivered so far.
    delivered: Arc<AtomicU64>,
}

/// Follows one attempt from its pod's changes to `Finished`.
struct Runner {
    inner: Arc<Inner>,
    job: JobRequest,
    events: EventSender,
    pod: String,
    tracker: Tracker,
    notices: Vec<String>,
    logs: HashMap<usize, LogTask>,
    /// What the store holds of each step's log (a re-attached attempt), by step: those lines
    /// are not sent again.
    stored: Vec<StoredLog>,
    stuck_until: Option<(Instant, String)>,
    step_deadline: Option<(Instant, usize)>,
    numbers: HashMap<usize, u64>,
    /// When the backend was handed the attempt: the job's timeout counts from then, also while
    /// its pod waits for a quota or a node.
    launched: Instant,
    /// The pod, when a ResourceQuota refused it and it is still to be created.
    pending: Option<Pending>,
    /// The newest `resourceVersion` of the pod observed, to drop older snapshots.
    seen: Option<u64>,
}

impl Runner {
    fn new(
        inner: Arc<Inner>,
        job: JobRequest,
        events: EventSender,
        pod: String,
        tracker: Tracker,
        notices: Vec<String>,
        stored: Vec<StoredLog>,
    ) -> Self {
        let numbers = stored
            .iter()
            .enumerate()
            .map(|(i, s)| (i, s.output_lines + s.system_lines))
            .collect();
        Self {
            inner,
            job,
            events,
            pod,
            tracker,
            notices,
            logs: HashMap::new(),
            stored,
            stuck_until: None,
            step_deadline: None,
            numbers,
            launched: Instant::now(),
            pending: None,
            seen: None,
        }
    }

    /// Is `pod` at least as new as every snapshot observed so far? The create's own answer can
    /// reach the runner after the watch delivered newer versions of the pod (found on the test
    /// cluster: an unschedulable pod was taken as schedulable again, and the autoscaler's
    /// scale-up was then ignored). resourceVersions are etcd revisions here; one that is not a
    /// number is taken as new.
    fn fresh(&mut self, pod: &Pod) -> bool {
        let Some(rv) = pod
            .metadata
            .resource_version
            .as_deref()
            .and_then(|v| v.parse::<u64>().ok())
        else {
            return true;
        };
        if self.seen.is_some_and(|seen| rv < seen) {
            return false;
        }
        self.seen = Some(rv);
        true
    }

    /// When the job's timeout passes, if it has one.
    fn deadline(&self) -> Option<Instant> {
        self.job.spec.timeout.map(|t| self.launched + t)
    }

    async fn send(&self, kind: JobEventKind) {
        let event = JobEvent {
            job_id: self.job.job_id,
            attempt: self.job.attempt,
            at: gantry_core::now(),
            kind,
        };
        let _ = self.events.send(event).await;
    }

    /// After a `gitops` step succeeded: the agents deploying from its repository reconcile now.
    async fn tell_agents(&mut self, step: usize, repo: &str) {
        let agents: Vec<_> = crate::agents::for_repo(&self.inner.config.gitops_agents, repo)
            .into_iter()
            .cloned()
            .collect();
        for agent in agents {
            let said = crate::agents::notify(
                self.inner.client.clone(),
                &self.inner.config.timings,
                &agent,
            )
            .await;
            let line = said.unwrap_or_else(|e| {
                tracing::warn!(job = %self.job.job_id, "{e}");
                e
            });
            self.system(step, line).await;
        }
    }

    /// A line from Gantry into a step's log. Numbered apart from the container's own lines
    /// (which the log task numbers) only when the step has no stream yet.
    async fn system(&mut self, step: usize, text: String) {
        let number = self.numbers.entry(step).or_default();
        *number += 1;
        let line = LogLine {
            step,
            number: *number,
            at: gantry_core::now(),
            stream: Stream::System,
            text,
        };
        self.send(JobEventKind::Log(line)).await;
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Update>) {
        if let Some(pending) = self.pending.take() {
            self.admit(pending, &mut rx).await;
        }
        while !self.tracker.is_finished() {
            let stuck_at = self.stuck_until.as_ref().map(|s| s.0);
            let step_at = self.step_deadline.map(|s| s.0);
            let actions = tokio::select! {
                update = rx.recv() => match update {
                    Some(Update::Applied(pod)) if self.fresh(&pod) => self.tracker.observe(&pod),
                    Some(Update::Applied(_)) => Vec::new(),
                    Some(Update::Deleted) => self.tracker.vanished(),
                    Some(Update::Autoscaler(verdict, at)) => self.tracker.autoscaler(verdict, at),
                    Some(Update::Cancel) => {
                        self.tracker.end(Ending::Cancelled);
                        self.delete(self.inner.config.timings.cancel_grace).await;
                        Vec::new()
                    }
                    None => break,
                },
                _ = sleep_until(stuck_at) => {
                    let why = self.stuck_until.take().map(|s| s.1).unwrap_or_default();
                    self.tracker.end(Ending::Stuck(why));
                    self.delete(Duration::ZERO).await;
                    Vec::new()
                }
                _ = sleep_until(step_at) => {
                    if let Some((_, step)) = self.step_deadline.take() {
                        let limit = self.job.spec.steps[step].timeout.unwrap_or_default();
                        let why = format!("timed out after {}s", limit.as_secs());
                        self.system(step, format!("{why}; deleting the pod")).await;
                        self.tracker.end(Ending::StepTimedOut(step, why));
                        self.delete(Duration::ZERO).await;
                    }
                    Vec::new()
                }
            };
            self.act_all(actions).await;
        }
        self.inner.created().remove(&self.pod);
        self.inner.jobs().remove(&self.pod);
    }

    /// Waits until a ResourceQuota admits the pod, creating it again with backoff (`backoff`
    /// doubling to `max_backoff`), until it is created, the attempt is cancelled or the job's
    /// timeout passes. The log says once that it waits, with the API server's message. A cancel
    /// that comes while a create is under way is seen once it returned, so a pod created then
    /// is deleted: none is left behind.
    async fn admit(&mut self, pending: Pending, rx: &mut mpsc::UnboundedReceiver<Update>) {
        let Pending {
            mut pod,
            credentials,
            refused,
        } = pending;
        tracing::info!(pod = %self.pod, message = %refused, "waiting for a resource quota");
        self.system(
            0,
            format!("waiting for the namespace's resource quota to admit the pod: {refused}"),
        )
        .await;
        let timings = self.inner.config.timings.clone();
        let deadline = self.deadline();
        let mut attempt = 0;
        loop {
            let wake = Instant::now() + api::delay(&timings, attempt, None);
            attempt += 1;
            loop {
                tokio::select! {
                    update = rx.recv() => match update {
                        Some(Update::Cancel) | None => {
                            self.tracker.end(Ending::Cancelled);
                            let actions = self.tracker.vanished();
                            return self.act_all(actions).await;
                        }
                        // Nothing of this pod exists yet.
                        Some(Update::Applied(_) | Update::Deleted | Update::Autoscaler(..)) => {
                            continue;
                        }
                    },
                    _ = tokio::time::sleep_until(wake) => break,
                    _ = sleep_until(deadline) => {
                        let limit = self.job.spec.timeout.unwrap_or_default();
                        let why = format!(
                            "timed out after {}s waiting for the resource quota: {refused}",
                            limit.as_secs()
                        );
                        let actions = self.tracker.abandon(State::Failure, why);
                        return self.act_all(actions).await;
                    }
                }
            }
            // The job's timeout counts from its launch: the pod gets what is left of it.
            if let (Some(deadline), Some(spec)) = (deadline, pod.spec.as_mut()) {
                let left = deadline.saturating_duration_since(Instant::now());
                spec.active_deadline_seconds = Some(left.as_secs().max(1) as i64);
            }
            match api::create_pod(&self.inner.pods, &pod, &timings).await {
                Ok(created) => {
                    let credentials = self.fresh_credentials(credentials).await;
                    if let Err(e) = admitted(&self.inner, &created, credentials).await {
                        let actions = self.tracker.abandon(State::Error, e.to_string());
                        return self.act_all(actions).await;
                    }
                    let waited = self.launched.elapsed().as_secs();
                    self.system(
                        0,
                        format!("the resource quota admitted the pod after {waited}s"),
                    )
                    .await;
                    self.fresh(&created);
                    let actions = self.tracker.observe(&created);
                    return self.act_all(actions).await;
                }
                Err(Error::Quota(_)) => {}
                Err(e) => {
                    let actions = self.tracker.abandon(State::Error, e.to_string());
                    return self.act_all(actions).await;
                }
            }
        }
    }

    /// Clone credentials fetched again after a wait (an installation token lives an hour); the
    /// ones from the launch when that fails.
    async fn fresh_credentials(&self, old: Option<GitCredentials>) -> Option<GitCredentials> {
        let (Some(old), Some(source)) = (old, &self.inner.credentials) else {
            return None;
        };
        match source.for_repo(&self.job.checkout.repo).await {
            Ok(Some(fresh)) => Some(fresh),
            Ok(None) => Some(old),
            Err(e) => {
                tracing::warn!(pod = %self.pod, error = %e, "cannot renew the clone credentials; using the earlier ones");
                Some(old)
            }
        }
    }

    async fn act_all(&mut self, actions: Vec<Action>) {
        for action in actions {
            self.act(action).await;
        }
    }

    async fn delete(&self, grace: Duration) {
        if let Err(e) = api::delete_pod(
            &self.inner.pods,
            &self.pod,
            grace,
            &self.inner.config.timings,
        )
        .await
        {
            tracing::warn!(pod = %self.pod, error = %e, "cannot delete pod");
        }
    }

    /// Waits for a step's log task to deliver what its container wrote: as long as lines keep
    /// coming (the rest of a long log read after a re-attach), and `log_drain` past the last.
    async fn drain(&self, log: LogTask) {
        let LogTask {
            ended,
            mut task,
            delivered,
        } = log;
        ended.send_replace(true);
        let drain = self.inner.config.timings.log_drain;
        let mut seen = delivered.load(Ordering::Relaxed);
        loop {
            if tokio::time::timeout(drain, &mut task).await.is_ok() {
                return;
            }
            let now = delivered.load(Ordering::Relaxed);
            if now == seen {
                task.abort();
                return;
            }
            seen = now;
        }
    }

    async fn act(&mut self, action: Action) {
        match action {
            Action::Started => {
                for notice in std::mem::take(&mut self.notices) {
                    self.system(0, notice).await;
                }
                self.send(JobEventKind::Started).await;
            }
            Action::StepStarted(i) => {
                self.send(JobEventKind::StepStarted { step: i }).await;
            }
            Action::StepRunning(i, since) => {
                if let Some(limit) = self.job.spec.steps[i].timeout {
                    self.step_deadline = Some((step_deadline(limit, since), i));
                }
            }
            Action::OpenLog { step: i, ended } => {
                let (ended_tx, ended) = watch::channel(ended);
                let stored = self.stored.get_mut(i).map(std::mem::take);
                let delivered = Arc::new(AtomicU64::new(0));
                let t = &self.inner.config.timings;
                let follow = Follow {
                    api: self.inner.pods.clone(),
                    pod: self.pod.clone(),
                    container: names::step_container(i),
                    step: i,
                    job_id: self.job.job_id,
                    attempt: self.job.attempt,
                    events: self.events.clone(),
                    ended,
                    settle: t.log_drain,
                    backoff: t.backoff,
                    max_backoff: t.max_backoff,
                    stored: stored.unwrap_or_default(),
                    delivered: Arc::clone(&delivered),
                };
                let task = LogTask {
                    ended: ended_tx,
                    task: tokio::spawn(follow.run()),
                    delivered,
                };
                self.logs.insert(i, task);
            }
            Action::StepFinished(i, outcome) => {
                if self.step_deadline.is_some_and(|d| d.1 == i) {
                    self.step_deadline = None;
                }
                if let Some(log) = self.logs.remove(&i) {
                    self.drain(log).await;
                }
                if outcome.state == State::Success
                    && let gantry_core::StepKind::Gitops(g) = &self.job.spec.steps[i].kind
                {
                    let repo = g.repo.clone();
                    self.tell_agents(i, &repo).await;
                }
                self.send(JobEventKind::StepFinished { step: i, outcome })
                    .await;
            }
            Action::System(step, text) => self.system(step, text).await,
            Action::Stuck(why) => {
                let grace = self.inner.config.timings.stuck_grace;
                self.stuck_until = Some((Instant::now() + grace, why));
            }
            Action::ScalingUp { why, autoscaler } => {
                self.system(
                    0,
                    format!("the cluster autoscaler is adding a node for the pod: {autoscaler}"),
                )
                .await;
                // Beyond the grace, as long as the job may run.
                self.stuck_until = self.deadline().map(|at| (at, why));
            }
            Action::GiveUp(why) => {
                self.stuck_until = None;
                self.system(0, why.clone()).await;
                self.tracker.end(Ending::Stuck(why));
                self.delete(Duration::ZERO).await;
            }
            Action::Unstuck => self.stuck_until = None,
            Action::Finished(state, reason) => {
                for (_, log) in self.logs.drain() {
                    log.ended.send_replace(true);
                    log.task.abort();
                }
                self.send(JobEventKind::Finished { state, reason }).await;
            }
        }
    }
}

/// When a step that may run for `limit` has to end: `limit` after its container started, per
/// its status (which also holds for a step that started while Gantry was down; a deadline
/// already past is now), or after now when the status does not say.
fn step_deadline(limit: Duration, since: Option<SystemTime>) -> Instant {
    let ran = since
        .and_then(|s| SystemTime::now().duration_since(s).ok())
        .unwrap_or_default();
    Instant::now() + limit.saturating_sub(ran)
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn unavailable(e: Error) -> BackendError {
    match e {
        Error::Render(e) => BackendError::Start(e.to_string()),
        Error::AlreadyRunning(name) => {
            BackendError::Start(format!("pod {name} is already running"))
        }
        e => BackendError::Unavailable {
            message: e.to_string(),
            source: Some(Box::new(e)),
        },
    }
}

#[async_trait]
impl Backend for KubeBackend {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    async fn start(&self, job: JobRequest, events: EventSender) -> Result<(), BackendError> {
        self.launch(job, events).await.map_err(unavailable)
    }

    async fn cancel(&self, job_id: JobId, attempt: u32) -> Result<(), BackendError> {
        self.inner
            .route(&names::pod_name(job_id, attempt), Update::Cancel);
        Ok(())
    }
}

#[async_trait]
impl gantry_engine::Reattach for KubeBackend {
    /// Finds the attempt's pod in the watch's first listing; when it is there, its task starts
    /// again from what the store holds: the first look at the pod reports, in order, what
    /// happened while Gantry was down (the start, steps started and ended with their exit
    /// codes, the end), and each step's log goes on after the lines stored (counted off the
    /// container's log, see `logs::Skip`).
    async fn reattach(
        &self,
        job: JobRequest,
        resume: Resume,
        events: EventSender,
    ) -> Result<bool, BackendError> {
        if !self.ready().await {
            return Err(BackendError::Unavailable {
                message: "the pod watch has not listed the build namespace yet".into(),
                source: None,
            });
        }
        let name = names::pod_name(job.job_id, job.attempt);
        let key = reflector::ObjectRef::new(&name).within(&self.inner.config.namespace);
        let Some(pod) = self.inner.store.get(&key) else {
            return Ok(false);
        };
        let (tx, rx) = mpsc::unbounded_channel();
        {
            let mut jobs = self.inner.jobs();
            if jobs.contains_key(&name) {
                return Ok(true);
            }
            jobs.insert(name.clone(), tx.clone());
        }
        self.inner.created().insert(name.clone());
        let _ = tx.send(Update::Applied(pod));
        // What the autoscaler said while Gantry was down (newer Events come from the watch).
        for event in self.inner.autoscaler_events.state() {
            if let Some((pod, verdict, at)) = scale_up(&event)
                && pod == name
            {
                let _ = tx.send(Update::Autoscaler(verdict, at));
            }
        }
        // The notices go with the attempt's start: when the store has neither, they are said
        // (rendered again: the same job and configuration give the same notices).
        let notices =
            if resume.started || resume.steps.first().is_some_and(|s| s.log.system_lines > 0) {
                Vec::new()
            } else {
                let options = RenderOptions {
                    origin: origin_of(&job),
                    clone_credentials: false,
                };
                render(&job, &self.inner.config, &options)
                    .map(|r| r.notices)
                    .unwrap_or_default()
            };
        let tracker = Tracker::resumed(&job, &resume);
        let stored = resume.steps.iter().map(|s| s.log).collect();
        let runner = Runner::new(
            Arc::clone(&self.inner),
            job,
            events,
            name,
            tracker,
            notices,
            stored,
        );
        tokio::spawn(runner.run(rx));
        Ok(true)
    }
}

#[cfg(test)]
mod forbidden_tests {
    use kube::core::Status;
    use kube::runtime::watcher;

    fn api(code: u16) -> kube::Error {
        kube::Error::Api(Box::new(Status::failure("x", "y").with_code(code)))
    }

    #[test]
    fn only_a_403_is_blamed_on_rbac() {
        assert!(super::forbidden(&watcher::Error::InitialListFailed(api(
            403
        ))));
        assert!(super::forbidden(&watcher::Error::WatchError(Box::new(
            Status::failure("x", "Forbidden").with_code(403)
        ))));
        // An API server that is overloaded or failing for a while is not a permission problem.
        assert!(!super::forbidden(&watcher::Error::InitialListFailed(api(
            429
        ))));
        assert!(!super::forbidden(&watcher::Error::WatchFailed(api(500))));
        assert!(!super::forbidden(&watcher::Error::NoResourceVersion));
    }
}
