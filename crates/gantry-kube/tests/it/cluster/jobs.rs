//! A job's life on the real control plane: admission, scheduling, steps through the watch, logs
//! through `pods/log` into the log store, failure, cancel, the per-job Secret's garbage
//! collection, the sweeper, and a restart of Gantry in the middle of a job.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use gantry_core::{Backend, JobEventKind, JobId, Resume, RunId, State, StepResume};
use gantry_engine::{LogSink, Logs, Reattach};
use gantry_kube::{
    CloneCredentials, JobRegistry, KubeBackend, PullRequestOrigin, RenderOptions, names, render,
};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::Api;
use kube::api::PostParams;
use tokio::sync::mpsc;

use super::{
    Cluster, Token, annotate, cluster, config, containers, crash_after_line, eventually, play,
    store, until, until_finished,
};
use crate::backend::{job, shape};

async fn backend(
    c: &Cluster,
    namespace: &str,
    annotations: BTreeMap<String, String>,
    credentials: bool,
) -> KubeBackend {
    let creds: Option<Arc<dyn CloneCredentials>> = credentials.then(|| Arc::new(Token) as _);
    let backend = KubeBackend::new(c.admin().await, config(namespace, annotations), creds);
    assert!(backend.ready().await, "the pod watch listed the namespace");
    backend
}

#[tokio::test]
async fn a_job_is_admitted_scheduled_followed_and_its_logs_stored() {
    let c = cluster();
    let ns = c.namespace("run").await;
    let annotations = play(
        "",
        "*=300",
        &[
            ("step-0", "compiling\ncompiled 3 crates"),
            ("step-1", "running 12 tests"),
        ],
    );
    let backend = backend(&c, &ns, annotations, true).await;
    let job = job(&["build", "test"]);
    let pod = names::pod_name(job.job_id, job.attempt);
    let (tx, mut rx) = mpsc::channel(256);
    backend.start(job.clone(), tx).await.unwrap();
    let events = until_finished(&mut rx).await;
    assert_eq!(
        shape(&events),
        [
            "started",
            "step 0 started",
            "log 0 #1 compiling",
            "log 0 #2 compiled 3 crates",
            "step 0 success exit 0",
            "step 1 started",
            "log 1 #1 running 12 tests",
            "step 1 success exit 0",
            "finished success",
        ]
    );

    // Scheduled by kube-scheduler onto a kwok node; every container played to its end.
    let pods: Api<Pod> = Api::namespaced(c.admin().await, &ns);
    let p = pods.get(&pod).await.unwrap();
    let node = p
        .spec
        .as_ref()
        .unwrap()
        .node_name
        .clone()
        .unwrap_or_default();
    assert!(node.starts_with("kwok-node-"), "scheduled onto {node:?}");
    let scheduled = p
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "PodScheduled"))
        .map(|c| c.status.clone());
    assert_eq!(scheduled.as_deref(), Some("True"));
    assert_eq!(
        containers(&p),
        BTreeMap::from([
            ("clone".to_owned(), "0".to_owned()),
            ("step-0".to_owned(), "0".to_owned()),
            ("step-1".to_owned(), "0".to_owned()),
        ])
    );

    // The lines, read through the real pods/log, land in the log store.
    let dir = std::env::temp_dir().join(format!("gantry-kube-cluster-{}", uuid::Uuid::new_v4()));
    let logs = Logs::open(&dir).unwrap();
    store(&logs, &job, &events).await;
    let step0 = std::fs::read_to_string(logs.store().path(job.job_id, 1, 0)).unwrap();
    let texts: Vec<&str> = step0
        .lines()
        .map(|l| l.split_once(' ').unwrap().1)
        .collect();
    assert_eq!(texts, ["stdout compiling", "stdout compiled 3 crates"]);
    let step1 = std::fs::read_to_string(logs.store().path(job.job_id, 1, 1)).unwrap();
    assert!(step1.ends_with("stdout running 12 tests\n"), "{step1}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn pod_security_admission_refuses_what_breaks_the_baseline() {
    // The pod Gantry renders passes (the test above); the same pod made privileged does not:
    // the namespace really enforces the baseline.
    let c = cluster();
    let ns = c.namespace("psa").await;
    let job = job(&["build"]);
    let mut pod = render(
        &job,
        &config(&ns, BTreeMap::new()),
        &RenderOptions {
            origin: PullRequestOrigin::None,
            clone_credentials: false,
        },
    )
    .unwrap()
    .pod;
    let pods: Api<Pod> = Api::namespaced(c.admin().await, &ns);
    let spec = pod.spec.as_mut().unwrap();
    let context = spec.containers[0].security_context.get_or_insert_default();
    context.privileged = Some(true);
    context.allow_privilege_escalation = None;
    let err = pods
        .create(&PostParams::default(), &pod)
        .await
        .expect_err("a privileged pod is refused");
    let msg = err.to_string();
    assert!(
        msg.contains("violates PodSecurity \"baseline:latest\"") && msg.contains("privileged"),
        "{msg}"
    );
}

#[tokio::test]
async fn a_failing_step_fails_the_job_and_skips_the_rest() {
    let c = cluster();
    let ns = c.namespace("fail").await;
    let backend = backend(&c, &ns, play("step-1=3", "", &[]), false).await;
    let job = job(&["build", "test", "deploy"]);
    let (tx, mut rx) = mpsc::channel(256);
    backend.start(job.clone(), tx).await.unwrap();
    let events = until_finished(&mut rx).await;
    assert_eq!(
        shape(&events),
        [
            "started",
            "step 0 started",
            "step 0 success exit 0",
            "step 1 started",
            "step 1 failure exit 3",
            "step 2 skipped",
            "finished failure: step \"test\" failed with exit code 3",
        ]
    );
    let pods: Api<Pod> = Api::namespaced(c.admin().await, &ns);
    let p = pods
        .get(&names::pod_name(job.job_id, job.attempt))
        .await
        .unwrap();
    assert_eq!(p.status.unwrap().phase.as_deref(), Some("Failed"));
}

#[tokio::test]
async fn cancel_deletes_the_pod() {
    let c = cluster();
    let ns = c.namespace("cancel").await;
    let backend = backend(&c, &ns, play("", "step-0=3600000", &[]), false).await;
    let job = job(&["long"]);
    let pod = names::pod_name(job.job_id, job.attempt);
    let (tx, mut rx) = mpsc::channel(256);
    backend.start(job.clone(), tx).await.unwrap();
    until(&mut rx, "step 0 started", |e| {
        matches!(e, JobEventKind::StepStarted { step: 0 })
    })
    .await;
    backend.cancel(job.job_id, job.attempt).await.unwrap();
    let events = shape(&until_finished(&mut rx).await);
    assert_eq!(
        events,
        ["step 0 cancelled", "finished cancelled: cancelled"],
        "{events:?}"
    );
    let pods: Api<Pod> = Api::namespaced(c.admin().await, &ns);
    eventually("the pod to be gone", || async {
        pods.get_opt(&pod).await.unwrap().is_none().then_some(())
    })
    .await;
    assert_eq!(backend.running(), 0);
}

struct Known(Vec<JobId>);

#[async_trait]
impl JobRegistry for Known {
    async fn knows(&self, _: RunId, job: JobId, _: u32) -> bool {
        self.0.contains(&job)
    }
}

#[tokio::test]
async fn the_sweeper_deletes_finished_pods_and_the_garbage_collector_their_secrets() {
    let c = cluster();
    let ns = c.namespace("gc").await;
    let mut cfg = config(&ns, BTreeMap::new());
    cfg.timings.retention = Duration::ZERO;
    let backend = KubeBackend::new(c.admin().await, cfg, Some(Arc::new(Token)));
    let job = job(&["build"]);
    let pod = names::pod_name(job.job_id, job.attempt);
    let (tx, mut rx) = mpsc::channel(256);
    backend.start(job.clone(), tx).await.unwrap();
    let events = shape(&until_finished(&mut rx).await);
    assert_eq!(events.last().unwrap(), "finished success");

    let admin = c.admin().await;
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(admin, &ns);
    let uid = pods.get(&pod).await.unwrap().metadata.uid.unwrap();
    let secret = secrets.get(&names::clone_secret(&pod)).await.unwrap();
    let owner = &secret.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str()),
        ("Pod", uid.as_str())
    );

    // The watch's cache has the finished pod; the sweep deletes it (retention 0) ...
    let swept = eventually("the sweep to delete the finished pod", || async {
        let swept = backend.sweep(&Known(vec![job.job_id])).await;
        (!swept.is_empty()).then_some(swept)
    })
    .await;
    assert_eq!(swept, std::slice::from_ref(&pod));
    eventually("the pod to be gone", || async {
        pods.get_opt(&pod).await.unwrap().is_none().then_some(())
    })
    .await;
    // ... and kube-controller-manager's garbage collector deletes the Secret it owned.
    eventually("the garbage collector to delete the Secret", || async {
        secrets
            .get_opt(&names::clone_secret(&pod))
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_sweeper_removes_an_orphan_and_keeps_known_pods() {
    let c = cluster();
    let ns = c.namespace("orphan").await;
    let cfg = config(&ns, play("", "*=3600000", &[]));
    let pods: Api<Pod> = Api::namespaced(c.admin().await, &ns);
    // Two labelled pods created behind the backend's back (as a crashed Gantry would leave
    // them): one of an attempt the store knows, one it does not.
    let orphan = job(&["a"]);
    let known = job(&["b"]);
    for j in [&orphan, &known] {
        let mut pod = render(
            j,
            &cfg,
            &RenderOptions {
                origin: PullRequestOrigin::None,
                clone_credentials: false,
            },
        )
        .unwrap()
        .pod;
        pod.metadata.annotations = Some(cfg.pod_annotations.clone());
        pods.create(&PostParams::default(), &pod).await.unwrap();
    }
    let backend = KubeBackend::new(c.admin().await, cfg, None);
    assert!(backend.ready().await);
    let swept = backend.sweep(&Known(vec![known.job_id])).await;
    assert_eq!(swept, [names::pod_name(orphan.job_id, 1)]);
    eventually("the orphan to be gone", || async {
        pods.get_opt(&names::pod_name(orphan.job_id, 1))
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    assert!(
        pods.get_opt(&names::pod_name(known.job_id, 1))
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test]
async fn a_job_survives_a_restart_of_gantry_losing_and_repeating_nothing() {
    let c = cluster();
    let ns = c.namespace("restart").await;
    let annotations = play(
        "",
        "step-0=3600000,step-1=3600000,*=200",
        &[("step-0", "one\ntwo\nthree"), ("step-1", "after it")],
    );
    let job = job(&["first", "second"]);
    let pod = names::pod_name(job.job_id, job.attempt);
    let dir = std::env::temp_dir().join(format!("gantry-kube-cluster-{}", uuid::Uuid::new_v4()));
    let logs = Logs::open(&dir).unwrap();

    // The first Gantry, in a runtime of its own: it starts the job and sees step 0 run and
    // print, then the process "dies" (its runtime and every task in it are dropped) after
    // storing the step's first two lines, not the third.
    let first = {
        let (ns2, annotations2) = (ns.clone(), annotations.clone());
        crash_after_line(job.clone(), "two", move || async move {
            backend(&cluster(), &ns2, annotations2, false).await
        })
    };
    assert_eq!(
        shape(&first),
        ["started", "step 0 started", "log 0 #1 one", "log 0 #2 two"]
    );
    store(&logs, &job, &first).await;

    // While Gantry is down, step 0 ends and step 1 starts and prints.
    let pods: Api<Pod> = Api::namespaced(c.admin().await, &ns);
    annotate(
        &pods,
        &pod,
        &[("gantry.dev/durations-ms", "step-1=3600000,*=200")],
    )
    .await;
    eventually("step 0 to end and step 1 to run", || async {
        let states = containers(&pods.get(&pod).await.unwrap());
        (states.get("step-0").map(String::as_str) == Some("0")
            && states.get("step-1").map(String::as_str) == Some("running"))
        .then_some(())
    })
    .await;

    // The new Gantry: a new client and backend find the pod in their first listing, and are
    // told what the store holds (as the engine tells them: step logs counted by the LogSink).
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
    assert_eq!(resume.steps[0].log.output_lines, 2);
    let backend = backend(&c, &ns, annotations, false).await;
    let (tx, mut rx) = mpsc::channel(256);
    assert!(
        backend
            .reattach(job.clone(), resume, tx.clone())
            .await
            .unwrap()
    );
    assert!(
        !backend
            .reattach(crate::backend::job(&["gone"]), Resume::default(), tx)
            .await
            .unwrap(),
        "an attempt whose pod is gone is not picked up"
    );
    let mut events = until(
        &mut rx,
        "step 1's output",
        |e| matches!(e, JobEventKind::Log(l) if l.text == "after it"),
    )
    .await;
    // End the held step now.
    annotate(&pods, &pod, &[("gantry.dev/durations-ms", "*=200")]).await;
    events.extend(until_finished(&mut rx).await);
    // Exactly what the store lacked, in order: the rest of step 0's log, its end with its exit
    // code, step 1's start while Gantry was down, and everything after.
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

    // In the log store, step 0's log is complete and holds each line once.
    store(&logs, &job, &events).await;
    let path = logs.store().path(job.job_id, 1, 0);
    assert!(
        path.with_extension("end").exists(),
        "step 0's log is closed"
    );
    let step0 = std::fs::read_to_string(path).unwrap();
    let texts: Vec<&str> = step0
        .lines()
        .map(|l| l.split_once(' ').unwrap().1)
        .collect();
    assert_eq!(texts, ["stdout one", "stdout two", "stdout three"]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Found here: jobs started while the watch was still listing (right after `KubeBackend::new`,
/// as `gantry serve` does when the queue is not empty) were ended as "the pod was deleted while
/// the job ran", because their pods, newer than the listing, were missing from it.
#[tokio::test]
async fn jobs_started_while_the_watch_lists_are_not_taken_for_deleted() {
    let c = cluster();
    let ns = c.namespace("early").await;
    let backend = KubeBackend::new(c.admin().await, config(&ns, BTreeMap::new()), None);
    let mut receivers = Vec::new();
    for _ in 0..5 {
        let (tx, rx) = mpsc::channel(256);
        backend.start(job(&["a"]), tx).await.unwrap();
        receivers.push(rx);
    }
    for rx in &mut receivers {
        let events = shape(&until_finished(rx).await);
        assert_eq!(events.last().unwrap(), "finished success", "{events:?}");
    }
}
