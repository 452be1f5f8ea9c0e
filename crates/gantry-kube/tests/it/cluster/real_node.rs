//! The backend on the test cluster's real node (tests/cluster/node/up): a kubelet with containerd
//! and runc, so every container Gantry renders really runs — the clone from an authenticated git
//! server, steps in a Debian image, services, limits, deadlines, cancel, a restart of Gantry.
//! kwok plays nothing here: pods select the real node and tolerate its taint.
//!
//! These tests read what `tests/cluster/up` exports about the node (`GANTRY_TEST_REAL_NODE`,
//! `GANTRY_TEST_IMAGE`, `GANTRY_TEST_GIT_*`, …) and fail when it is missing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use gantry_core::{
    Backend, BackendError, JobEventKind, JobRequest, RepoRef, Resume, ServiceSpec, State,
    StepResume, Toleration,
};
use gantry_engine::{LogSink, Logs, Reattach};
use gantry_kube::{
    CloneCredentials, GitCredentials, KubeBackend, KubeConfig, SecurityLevel, names,
};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Api;
use kube::api::{Patch, PatchParams};
use tokio::sync::mpsc;

use super::{
    Cluster, cluster, containers, crash_after_line, eventually, store, timings, until,
    until_finished,
};
use crate::backend::shape;

/// What `tests/cluster/node/up` exported.
pub struct RealNode {
    pub name: String,
    pub image: String,
    pub git_root: PathBuf,
    pub git_url: String,
    pub git_user: String,
    pub git_password: String,
}

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: the real-node tests need the test cluster's real node, which \
             tests/cluster/up starts (unless GANTRY_CLUSTER_REAL_NODE=0) and describes in its env \
             file. Run them through `tests/cluster/with-cluster cargo test -p gantry-kube` or \
             `./dev test`; see docs/testing.md"
        )
    })
}

pub fn real_node() -> RealNode {
    RealNode {
        name: var("GANTRY_TEST_REAL_NODE"),
        image: var("GANTRY_TEST_IMAGE"),
        git_root: var("GANTRY_TEST_GIT_ROOT").into(),
        git_url: var("GANTRY_TEST_GIT_URL"),
        git_user: var("GANTRY_TEST_GIT_USER"),
        git_password: var("GANTRY_TEST_GIT_PASSWORD"),
    }
}

pub(super) fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=Gantry Test",
            "-c",
            "user.email=test@localhost",
        ])
        .args([
            "-c",
            "commit.gpgsign=false",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?} in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A repository on the node's git server, with one commit per entry of `commits` (each a list
/// of files); returns its clone URL (what a forge's webhook would carry) and the commits' SHAs.
pub fn repository(node: &RealNode, commits: &[&[(&str, &str)]]) -> (String, Vec<String>) {
    let name = format!("app-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let bare = node.git_root.join(format!("{name}.git"));
    std::fs::create_dir_all(&bare).unwrap();
    git(&bare, &["init", "-q", "--bare"]);
    // Forges let a clone fetch any commit of the repository by its SHA (not only branch tips).
    git(
        &bare,
        &["config", "uploadpack.allowReachableSHA1InWant", "true"],
    );
    let work = tempfile::tempdir().unwrap();
    git(work.path(), &["init", "-q"]);
    let mut shas = Vec::new();
    for files in commits {
        for (path, text) in *files {
            let file = work.path().join(path);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(file, text).unwrap();
        }
        git(work.path(), &["add", "-A"]);
        git(work.path(), &["commit", "-q", "-m", "change"]);
        shas.push(git(work.path(), &["rev-parse", "HEAD"]));
    }
    git(
        work.path(),
        &["push", "-q", bare.to_str().unwrap(), "HEAD:refs/heads/main"],
    );
    (format!("{}/{name}.git", node.git_url), shas)
}

/// The git server's own login, as a forge's token would be handed out.
struct GitLogin {
    username: String,
    password: String,
}

#[async_trait]
impl CloneCredentials for GitLogin {
    async fn for_repo(&self, _: &RepoRef) -> Result<Option<GitCredentials>, BackendError> {
        Ok(Some(GitCredentials {
            username: self.username.clone(),
            password: gantry_core::Secret::new(self.password.clone()),
        }))
    }
}

/// The backend's configuration for the real node: Gantry's own images are the test image.
pub fn node_config(namespace: &str, node: &RealNode) -> KubeConfig {
    let mut config = KubeConfig {
        namespace: namespace.to_owned(),
        timings: timings(),
        ..KubeConfig::default()
    };
    config.images.clone = node.image.clone();
    config.images.default_job = node.image.clone();
    config
}

pub(super) async fn backend(
    c: &Cluster,
    config: KubeConfig,
    node: &RealNode,
    login: bool,
) -> KubeBackend {
    let creds: Option<Arc<dyn CloneCredentials>> = login.then(|| {
        Arc::new(GitLogin {
            username: node.git_user.clone(),
            password: node.git_password.clone(),
        }) as _
    });
    let backend = KubeBackend::new(c.admin().await, config, creds);
    assert!(backend.ready().await, "the pod watch listed the namespace");
    backend
}

/// A job of `steps` (shell scripts) at `sha` of `url`, on the real node, in the test image.
pub fn job(node: &RealNode, url: &str, sha: &str, steps: &[&str]) -> JobRequest {
    let mut job = crate::backend::job(&[]);
    job.checkout.repo.clone_url = url.to_owned();
    job.checkout.sha = sha.to_owned();
    job.spec.image = Some(node.image.clone());
    job.spec.steps = steps
        .iter()
        .enumerate()
        .map(|(i, script)| gantry_core::StepSpec {
            name: format!("step {i}"),
            kind: gantry_core::StepKind::Run {
                script: (*script).to_owned(),
            },
            timeout: None,
            env: BTreeMap::new(),
            run_if: gantry_core::StatusCondition::Success,
            allow_failure: false,
        })
        .collect();
    job.spec.node_selector = BTreeMap::from([("gantry.dev/real-node".into(), "true".into())]);
    job.spec.tolerations = vec![Toleration {
        key: Some("gantry.dev/real-node".into()),
        operator: Some("Equal".into()),
        value: Some("true".into()),
        effect: Some("NoSchedule".into()),
    }];
    job
}

/// Log lines of step `step`, in order.
pub(super) fn lines(events: &[JobEventKind], step: usize) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            JobEventKind::Log(l) if l.step == step => Some(l.text.clone()),
            _ => None,
        })
        .collect()
}

pub(super) fn finished(events: &[JobEventKind]) -> (State, String) {
    match events.last() {
        Some(JobEventKind::Finished { state, reason }) => {
            (*state, reason.clone().unwrap_or_default())
        }
        other => panic!("the last event is not Finished: {other:?}"),
    }
}

async fn pod(c: &Cluster, ns: &str, job: &JobRequest) -> Pod {
    let pods: Api<Pod> = Api::namespaced(c.admin().await, ns);
    pods.get(&names::pod_name(job.job_id, job.attempt))
        .await
        .unwrap()
}

/// Processes on this machine whose command line contains `marker` (a container's processes are
/// ordinary processes of the machine, seen through /proc).
fn processes_with(marker: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if text.contains(marker) && !text.contains("cargo") {
                found.push(pid);
            }
        }
    }
    found
}

#[tokio::test]
async fn real_node_clones_a_private_repository_at_the_pushed_commit_and_runs_steps_in_order() {
    let c = cluster();
    let node = real_node();
    let ns = c.namespace("real-clone").await;
    // Two commits: the job is for the first, which is no longer the branch's tip.
    let (url, shas) = repository(
        &node,
        &[
            &[("marker.txt", "first commit\n")],
            &[("marker.txt", "second commit\n")],
        ],
    );
    let backend = backend(&c, node_config(&ns, &node), &node, true).await;
    let job = job(
        &node,
        &url,
        &shas[0],
        &[
            "cat marker.txt; git rev-parse HEAD; echo \"uid=$(id -u) shell=$0\"",
            "echo to stderr >&2; echo about to fail; exit 3",
            "echo this must not run",
        ],
    );
    let (tx, mut rx) = mpsc::channel(256);
    backend.start(job.clone(), tx).await.unwrap();
    let events = until_finished(&mut rx).await;
    let texts = shape(&events);
    assert_eq!(
        lines(&events, 0),
        ["first commit", shas[0].as_str(), "uid=0 shell=/bin/sh"],
        "{texts:#?}"
    );
    let mut step1 = lines(&events, 1);
    step1.sort();
    assert_eq!(step1, ["about to fail", "to stderr"], "{texts:#?}");
    assert!(
        texts.contains(&"step 0 success exit 0".to_owned()),
        "{texts:#?}"
    );
    assert!(
        texts.contains(&"step 1 failure exit 3".to_owned()),
        "{texts:#?}"
    );
    assert!(texts.contains(&"step 2 skipped".to_owned()), "{texts:#?}");
    assert!(lines(&events, 2).is_empty(), "{texts:#?}");
    assert_eq!(
        finished(&events),
        (
            State::Failure,
            "step \"step 1\" failed with exit code 3".into()
        )
    );
    // It really ran on the real node, from the real kubelet's pods/log.
    let p = pod(&c, &ns, &job).await;
    assert_eq!(
        p.spec.as_ref().unwrap().node_name.as_deref(),
        Some(node.name.as_str())
    );
    let states = containers(&p);
    assert_eq!(states.get("clone").map(String::as_str), Some("0"));
    assert_eq!(states.get("step-1").map(String::as_str), Some("3"));
}

#[tokio::test]
async fn real_node_refuses_the_clone_without_credentials_and_says_why() {
    let c = cluster();
    let node = real_node();
    let ns = c.namespace("real-noauth").await;
    let (url, shas) = repository(&node, &[&[("README", "private\n")]]);
    let backend = backend(&c, node_config(&ns, &node), &node, false).await;
    let job = job(&node, &url, &shas[0], &["echo must not run"]);
    let (tx, mut rx) = mpsc::channel(256);
    backend.start(job.clone(), tx).await.unwrap();
    let events = until_finished(&mut rx).await;
    let (state, reason) = finished(&events);
    assert_eq!(state, State::Error, "{:#?}", shape(&events));
    // git's own words reach the user: the server asked for a login and none was given.
    assert!(
        reason.starts_with("checkout failed: exit code 128") && reason.contains("Username"),
        "{reason}"
    );
    let logged: Vec<String> = lines(&events, 0);
    assert!(
        logged.iter().any(|l| l.contains("checkout failed")),
        "{logged:?}"
    );
    assert!(lines(&events, 0).iter().all(|l| l != "must not run"));
}

#[tokio::test]
async fn real_node_step_and_job_timeouts_and_cancel_end_real_containers() {
    let c = cluster();
    let node = real_node();
    let ns = c.namespace("real-time").await;
    let (url, shas) = repository(&node, &[&[("README", "x\n")]]);
    let backend = backend(&c, node_config(&ns, &node), &node, true).await;

    // A step's timeout.
    let marker = format!("9{}", &uuid::Uuid::new_v4().as_u128().to_string()[..8]);
    let mut step_job = job(
        &node,
        &url,
        &shas[0],
        &[&format!("echo started; exec sleep {marker}")],
    );
    step_job.spec.steps[0].timeout = Some(Duration::from_secs(3));
    let (tx, mut rx) = mpsc::channel(256);
    let t0 = Instant::now();
    backend.start(step_job.clone(), tx).await.unwrap();
    let events = until_finished(&mut rx).await;
    let (state, reason) = finished(&events);
    assert_eq!(state, State::Failure, "{:#?}", shape(&events));
    assert!(reason.contains("timed out"), "{reason}");
    assert!(t0.elapsed() < Duration::from_secs(40), "{:?}", t0.elapsed());
    eventually("the timed-out step's process to be gone", || async {
        processes_with(&format!("sleep {marker}"))
            .is_empty()
            .then_some(())
    })
    .await;

    // The job's timeout (activeDeadlineSeconds): the kubelet ends the pod.
    let marker = format!("8{}", &uuid::Uuid::new_v4().as_u128().to_string()[..8]);
    let mut deadline_job = job(
        &node,
        &url,
        &shas[0],
        &[&format!("echo started; exec sleep {marker}")],
    );
    deadline_job.spec.timeout = Some(Duration::from_secs(4));
    let (tx, mut rx) = mpsc::channel(256);
    backend.start(deadline_job.clone(), tx).await.unwrap();
    let events = until_finished(&mut rx).await;
    let (state, reason) = finished(&events);
    assert_ne!(state, State::Success, "{:#?}", shape(&events));
    assert!(
        reason.contains("deadline") || reason.contains("timed out"),
        "{reason}"
    );
    let p = pod(&c, &ns, &deadline_job).await;
    assert_eq!(
        p.status.as_ref().and_then(|s| s.reason.as_deref()),
        Some("DeadlineExceeded")
    );
    eventually("the deadline-ended step's process to be gone", || async {
        processes_with(&format!("sleep {marker}"))
            .is_empty()
            .then_some(())
    })
    .await;

    // Cancel: the pod is deleted and the step's process ends.
    let marker = format!("7{}", &uuid::Uuid::new_v4().as_u128().to_string()[..8]);
    let cancel_job = job(
        &node,
        &url,
        &shas[0],
        &[&format!("echo started; exec sleep {marker}")],
    );
    let (tx, mut rx) = mpsc::channel(256);
    backend.start(cancel_job.clone(), tx).await.unwrap();
    until(
        &mut rx,
        "the step's first line",
        |e| matches!(e, JobEventKind::Log(l) if l.text == "started"),
    )
    .await;
    assert_eq!(processes_with(&format!("sleep {marker}")).len(), 1);
    backend
        .cancel(cancel_job.job_id, cancel_job.attempt)
        .await
        .unwrap();
    let events = until_finished(&mut rx).await;
    assert_eq!(
        finished(&events).0,
        State::Cancelled,
        "{:#?}",
        shape(&events)
    );
    let pods: Api<Pod> = Api::namespaced(c.admin().await, &ns);
    let name = names::pod_name(cancel_job.job_id, cancel_job.attempt);
    eventually("the cancelled pod to be gone", || async {
        pods.get_opt(&name).await.unwrap().is_none().then_some(())
    })
    .await;
    eventually("the cancelled step's process to be gone", || async {
        processes_with(&format!("sleep {marker}"))
            .is_empty()
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn real_node_a_service_is_reachable_from_the_steps_and_ends_with_them() {
    let c = cluster();
    let node = real_node();
    let ns = c.namespace("real-svc").await;
    let (url, shas) = repository(&node, &[&[("README", "x\n")]]);
    let backend = backend(&c, node_config(&ns, &node), &node, true).await;
    let mut job = job(
        &node,
        &url,
        &shas[0],
        &[
            // The service may take a moment to listen.
            "for i in $(seq 50); do busybox wget -q -O - http://127.0.0.1:8080/greeting && exit 0; sleep 0.2; done; exit 1",
            "busybox wget -q -O - http://127.0.0.1:8080/greeting | tr a-z A-Z",
        ],
    );
    job.spec.services = vec![ServiceSpec {
        name: "web".into(),
        image: node.image.clone(),
        env: BTreeMap::new(),
        command: vec![
            "/bin/sh".into(),
            "-c".into(),
            "mkdir -p /srv && echo hello from the service > /srv/greeting && exec busybox httpd -f -p 8080 -h /srv".into(),
        ],
        ports: vec![8080],
    }];
    let (tx, mut rx) = mpsc::channel(256);
    backend.start(job.clone(), tx).await.unwrap();
    let events = until_finished(&mut rx).await;
    assert_eq!(finished(&events).0, State::Success, "{:#?}", shape(&events));
    assert_eq!(lines(&events, 0), ["hello from the service"]);
    assert_eq!(lines(&events, 1), ["HELLO FROM THE SERVICE"]);
    // The pod ended when its steps did: the sidecar was stopped, the pod succeeded.
    let pods: Api<Pod> = Api::namespaced(c.admin().await, &ns);
    let name = names::pod_name(job.job_id, job.attempt);
    eventually("the pod to end", || async {
        let p = pods.get(&name).await.unwrap();
        (p.status.and_then(|s| s.phase).as_deref() == Some("Succeeded")).then_some(())
    })
    .await;
}

#[tokio::test]
async fn real_node_reports_oom_kills_and_images_that_do_not_exist() {
    let c = cluster();
    let node = real_node();
    let ns = c.namespace("real-oom").await;
    let (url, shas) = repository(&node, &[&[("README", "x\n")]]);
    let backend = backend(&c, node_config(&ns, &node), &node, true).await;

    // `tail -n 1` keeps the whole last line in memory: 200 MiB without a newline, under a
    // 32 MiB limit.
    let mut oom = job(
        &node,
        &url,
        &shas[0],
        &["echo allocating; head -c 200m /dev/zero | tail -n 1 > /dev/null"],
    );
    oom.spec.resources.memory = Some("32Mi".into());
    let (tx, mut rx) = mpsc::channel(256);
    backend.start(oom.clone(), tx).await.unwrap();
    let events = until_finished(&mut rx).await;
    let (state, reason) = finished(&events);
    assert_eq!(state, State::Failure, "{:#?}", shape(&events));
    assert!(
        reason.contains("OOMKilled") || reason.contains("memory"),
        "{reason}"
    );

    // An image the registry does not have.
    let mut missing = job(&node, &url, &shas[0], &["echo must not run"]);
    let registry = node.image.split('/').next().unwrap().to_owned();
    missing.spec.image = Some(format!("{registry}/gantry-test/no-such-image:1"));
    let (tx, mut rx) = mpsc::channel(256);
    backend.start(missing.clone(), tx).await.unwrap();
    let events = until_finished(&mut rx).await;
    let (state, reason) = finished(&events);
    assert_eq!(state, State::Error, "{:#?}", shape(&events));
    assert!(
        reason.contains("no-such-image")
            && (reason.contains("ErrImagePull") || reason.contains("ImagePullBackOff")),
        "{reason}"
    );
}

#[tokio::test]
async fn real_node_a_job_survives_a_restart_of_gantry_losing_and_repeating_nothing() {
    let c = cluster();
    let node = real_node();
    let ns = c.namespace("real-restart").await;
    let (url, shas) = repository(&node, &[&[("README", "x\n")]]);
    let job = job(
        &node,
        &url,
        &shas[0],
        &["echo one; echo two; sleep 4; echo three", "echo after it"],
    );
    let dir = tempfile::tempdir().unwrap();
    let logs = Logs::open(dir.path()).unwrap();

    // The first Gantry sees step 0 print two lines, then "dies" (its runtime is dropped).
    let first = {
        let ns2 = ns.clone();
        crash_after_line(job.clone(), "two", move || async move {
            let (c2, node2) = (cluster(), real_node());
            backend(&c2, node_config(&ns2, &node2), &node2, true).await
        })
    };
    assert_eq!(
        shape(&first),
        ["started", "step 0 started", "log 0 #1 one", "log 0 #2 two"]
    );
    store(&logs, &job, &first).await;

    let resume = Resume {
        started: true,
        steps: vec![
            StepResume {
                state: State::Running,
                log: LogSink::stored(&logs, job.job_id, job.attempt, 0).await,
                ..StepResume::queued()
            },
            StepResume::queued(),
        ],
    };
    let backend = backend(&c, node_config(&ns, &node), &node, true).await;
    let (tx, mut rx) = mpsc::channel(256);
    assert!(backend.reattach(job.clone(), resume, tx).await.unwrap());
    let events = until_finished(&mut rx).await;
    assert_eq!(
        shape(&events),
        [
            "log 0 #3 three",
            "step 0 success exit 0",
            "step 1 started",
            "log 1 #1 after it",
            "step 1 success exit 0",
            "finished success",
        ]
    );
}

#[tokio::test]
async fn real_node_runs_restricted_pods_as_non_root_clone_included() {
    let c = cluster();
    let node = real_node();
    let ns = c.namespace("real-restricted").await;
    let namespaces: Api<Namespace> = Api::all(c.admin().await);
    let patch = serde_json::json!({"metadata": {"labels": {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
    }}});
    namespaces
        .patch(&ns, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let (url, shas) = repository(&node, &[&[("marker.txt", "restricted\n")]]);
    let mut config = node_config(&ns, &node);
    config.security = SecurityLevel::Restricted;
    let backend = backend(&c, config, &node, true).await;
    let job = job(
        &node,
        &url,
        &shas[0],
        &[
            "cat marker.txt; id -u; touch built && ls -n built | awk '{print $3}'",
            "stat -c %u .git/HEAD",
        ],
    );
    let (tx, mut rx) = mpsc::channel(256);
    backend.start(job.clone(), tx).await.unwrap();
    let events = until_finished(&mut rx).await;
    assert_eq!(finished(&events).0, State::Success, "{:#?}", shape(&events));
    assert_eq!(lines(&events, 0), ["restricted", "1000", "1000"]);
    // The clone ran as the same non-root user: its files are that user's.
    assert_eq!(lines(&events, 1), ["1000"]);
}
