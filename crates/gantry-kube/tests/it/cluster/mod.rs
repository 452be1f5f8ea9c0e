//! The backend against the real control plane of `tests/cluster` (docs/testing.md): real API
//! validation, Pod Security admission, RBAC, scheduler, garbage collector, watch and `pods/log`;
//! kwok plays the containers from the pod annotations Gantry is configured to add
//! ([`KubeConfig::pod_annotations`]).
//!
//! These tests read the environment `tests/cluster/up` writes (`GANTRY_TEST_KUBE_API`, …). Without
//! it they fail, they never skip: run them with
//! `tests/cluster/with-cluster cargo test -p gantry-kube --test it cluster::` or `./dev test`.
//! Each test works in a namespace of its own, labelled like the cluster's build namespace
//! (`pod-security.kubernetes.io/enforce: baseline`), so tests running side by side never see each
//! other's pods (the sweeper would take them for orphans).

mod autoscaler;
mod delivery;
mod jobs;
mod quota;
mod rbac;
mod real_node;
mod relist;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use gantry_core::{Backend, BackendError, JobEvent, JobEventKind, JobRequest, RepoRef};
use gantry_engine::{LogSink, Logs};
use gantry_kube::{CloneCredentials, GitCredentials, KubeBackend, KubeConfig, Timings};
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};
use tokio::sync::mpsc;

/// What `tests/cluster/up` exported.
pub struct Cluster {
    pub api: String,
    pub ca: PathBuf,
    pub token: String,
    /// The build namespace `up` created; test namespaces copy its Pod Security labels.
    pub namespace: String,
    pub dir: PathBuf,
    pub etcd: Option<String>,
}

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: the cluster tests need the test control plane. Run them through \
             `tests/cluster/with-cluster cargo test -p gantry-kube` (or `./dev test`), which \
             starts it and exports its environment; see docs/testing.md"
        )
    })
}

pub fn cluster() -> Cluster {
    Cluster {
        api: var("GANTRY_TEST_KUBE_API"),
        ca: var("GANTRY_TEST_KUBE_CA").into(),
        token: var("GANTRY_TEST_KUBE_TOKEN"),
        namespace: var("GANTRY_TEST_KUBE_NAMESPACE"),
        dir: var("GANTRY_TEST_CLUSTER_DIR").into(),
        etcd: std::env::var("GANTRY_TEST_ETCD").ok(),
    }
}

/// The repository root (for `tests/cluster/*` and `charts/`).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

impl Cluster {
    /// A client for `server` (default: the cluster's API server) with a bearer token, built the
    /// way Gantry builds one from a kubeconfig.
    pub async fn client_at(&self, server: &str, token: &str) -> Client {
        let yaml = format!(
            "apiVersion: v1\nkind: Config\n\
             clusters: [{{name: t, cluster: {{server: \"{server}\", certificate-authority: \"{}\"}}}}]\n\
             users: [{{name: u, user: {{token: \"{token}\"}}}}]\n\
             contexts: [{{name: t, context: {{cluster: t, user: u}}}}]\n\
             current-context: t\n",
            self.ca.display()
        );
        let kubeconfig = Kubeconfig::from_yaml(&yaml).expect("kubeconfig");
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .expect("client configuration");
        Client::try_from(config).expect("client")
    }

    pub async fn client(&self, token: &str) -> Client {
        self.client_at(&self.api, token).await
    }

    /// The admin (`system:masters`): for setting up and looking behind Gantry's back.
    pub async fn admin(&self) -> Client {
        self.client(&self.token).await
    }

    /// A new namespace `gt-TAG-xxxxxxxx` with the Pod Security labels of the cluster's build
    /// namespace, once its `default` ServiceAccount exists (pods cannot be created before).
    pub async fn namespace(&self, tag: &str) -> String {
        let admin = self.admin().await;
        let namespaces: Api<Namespace> = Api::all(admin.clone());
        let base = namespaces
            .get(&self.namespace)
            .await
            .expect("the build namespace");
        let labels: BTreeMap<String, String> = base
            .metadata
            .labels
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, _)| k.starts_with("pod-security.kubernetes.io/"))
            .collect();
        assert_eq!(
            labels
                .get("pod-security.kubernetes.io/enforce")
                .map(String::as_str),
            Some("baseline"),
            "the cluster's build namespace enforces the baseline"
        );
        let name = format!(
            "gt-{tag}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(labels),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        namespaces
            .create(&PostParams::default(), &ns)
            .await
            .expect("create the namespace");
        let accounts: Api<ServiceAccount> = Api::namespaced(admin, &name);
        eventually("the namespace's default ServiceAccount", || async {
            accounts.get_opt("default").await.ok().flatten()
        })
        .await;
        name
    }
}

/// Clone credentials for every repository: the backend creates the per-job Secret.
pub struct Token;

#[async_trait::async_trait]
impl CloneCredentials for Token {
    async fn for_repo(&self, _: &RepoRef) -> Result<Option<GitCredentials>, BackendError> {
        Ok(Some(GitCredentials {
            username: "x-access-token".into(),
            password: gantry_core::Secret::new("t0ken"),
        }))
    }
}

/// Timings for tests: fast retries, a short drain.
pub fn timings() -> Timings {
    Timings {
        stuck_grace: Duration::from_secs(5),
        cancel_grace: Duration::from_secs(1),
        retention: Duration::from_secs(3600),
        sweep_every: Duration::from_secs(3600),
        orphan_min_age: Duration::ZERO,
        backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(1),
        max_attempts: 8,
        request_timeout: Duration::from_secs(20),
        log_drain: Duration::from_secs(2),
    }
}

/// kwok's annotations: exit codes and durations (`name=value,…`, `*=value`), and each
/// container's output.
pub fn play(exit_codes: &str, durations: &str, logs: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut a = BTreeMap::new();
    if !exit_codes.is_empty() {
        a.insert("gantry.dev/exit-codes".to_owned(), exit_codes.to_owned());
    }
    if !durations.is_empty() {
        a.insert("gantry.dev/durations-ms".to_owned(), durations.to_owned());
    }
    if !logs.is_empty() {
        let logs: serde_json::Map<String, serde_json::Value> = logs
            .iter()
            .map(|(c, text)| ((*c).to_owned(), serde_json::Value::from(*text)))
            .collect();
        a.insert(
            "gantry.dev/logs".to_owned(),
            serde_json::Value::Object(logs).to_string(),
        );
    }
    a
}

pub fn config(namespace: &str, annotations: BTreeMap<String, String>) -> KubeConfig {
    KubeConfig {
        namespace: namespace.to_owned(),
        timings: timings(),
        pod_annotations: annotations,
        ..KubeConfig::default()
    }
}

/// Rewrites a pod's annotations (kwok re-plans its next transition at once).
pub async fn annotate(pods: &Api<Pod>, pod: &str, annotations: &[(&str, &str)]) {
    let map: serde_json::Map<String, serde_json::Value> = annotations
        .iter()
        .map(|(k, v)| ((*k).to_owned(), serde_json::Value::from(*v)))
        .collect();
    let patch = serde_json::json!({ "metadata": { "annotations": map } });
    pods.patch(pod, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("annotate the pod");
}

/// Polls `f` every 100 ms until it gives a value; panics after 60 s.
pub async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after 60 s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Receives events until one matches (60 s at most).
pub async fn until(
    rx: &mut mpsc::Receiver<JobEvent>,
    what: &str,
    f: impl Fn(&JobEventKind) -> bool,
) -> Vec<JobEventKind> {
    let mut out = Vec::new();
    loop {
        let event = tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no {what} within 60 s; events so far: {out:#?}"))
            .expect("the channel stays open");
        let done = f(&event.kind);
        out.push(event.kind);
        if done {
            return out;
        }
    }
}

pub async fn until_finished(rx: &mut mpsc::Receiver<JobEvent>) -> Vec<JobEventKind> {
    until(rx, "Finished", |e| {
        matches!(e, JobEventKind::Finished { .. })
    })
    .await
}

/// The status of every container of a pod, `name=running|waiting|<exit code>`.
pub fn containers(pod: &Pod) -> BTreeMap<String, String> {
    let status = pod.status.clone().unwrap_or_default();
    status
        .init_container_statuses
        .into_iter()
        .flatten()
        .chain(status.container_statuses.into_iter().flatten())
        .map(|c| {
            let s = c.state.unwrap_or_default();
            let state = match (s.running, s.terminated) {
                (_, Some(t)) => t.exit_code.to_string(),
                (Some(_), None) => "running".to_owned(),
                (None, None) => "waiting".to_owned(),
            };
            (c.name, state)
        })
        .collect()
}

/// Hands every event's log line to the real log store, as the engine does.
pub async fn store(logs: &Logs, job: &JobRequest, events: &[JobEventKind]) {
    logs.attempt_started(job).await;
    for event in events {
        match event {
            JobEventKind::Log(line) => LogSink::append(logs, job.job_id, job.attempt, line)
                .await
                .unwrap(),
            JobEventKind::StepFinished { step, .. } => {
                logs.step_finished(job.job_id, job.attempt, *step).await;
            }
            JobEventKind::Finished { .. } => logs.attempt_finished(job.job_id, job.attempt).await,
            _ => {}
        }
    }
}

/// A Gantry that dies mid-step: in a runtime of its own (on a thread of its own), the backend
/// `backend` makes starts `job`; once step 0 has printed `line`, the runtime and every task in
/// it are dropped, as in a crash. Returns the events it had seen.
pub fn crash_after_line<F, Fut>(
    job: JobRequest,
    line: &'static str,
    backend: F,
) -> Vec<JobEventKind>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = KubeBackend>,
{
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let backend = backend().await;
            let (tx, mut rx) = mpsc::channel(256);
            backend.start(job, tx).await.unwrap();
            until(
                &mut rx,
                "the step's line before the crash",
                |e| matches!(e, JobEventKind::Log(l) if l.text == line),
            )
            .await
        })
    })
    .join()
    .unwrap()
}
