//! A ResourceQuota of the build namespace, enforced by the API server's real quota admission
//! with usage computed by kube-controller-manager: a job whose pod it refuses waits, queued in
//! its own task, and runs once a pod ends; a waiting job is cancelled cleanly.

use std::collections::BTreeMap;
use std::time::Duration;

use gantry_core::{Backend, JobEventKind, State};
use gantry_kube::{KubeBackend, names};
use k8s_openapi::api::core::v1::{Pod, ResourceQuota, ResourceQuotaSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::PostParams;
use tokio::sync::mpsc;

use super::{annotate, cluster, config, eventually, play, until, until_finished};
use crate::backend::{job, shape};

const WAITING: &str = "waiting for the namespace's resource quota to admit the pod";

fn said(events: &[JobEventKind], prefix: &str) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            JobEventKind::Log(l) if l.text.starts_with(prefix) => Some(l.text.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_pod_refused_by_the_quota_waits_for_the_running_one_and_a_waiting_job_cancels_cleanly() {
    let c = cluster();
    let ns = c.namespace("quota").await;
    let admin = c.admin().await;
    let quotas: Api<ResourceQuota> = Api::namespaced(admin.clone(), &ns);
    let quota = ResourceQuota {
        metadata: ObjectMeta {
            name: Some("builds".into()),
            ..ObjectMeta::default()
        },
        spec: Some(ResourceQuotaSpec {
            hard: Some(BTreeMap::from([("pods".to_owned(), Quantity("1".into()))])),
            ..ResourceQuotaSpec::default()
        }),
        status: None,
    };
    quotas
        .create(&PostParams::default(), &quota)
        .await
        .expect("create the quota");
    // Until the controller-manager has computed its usage, the quota refuses every pod.
    eventually("the quota's usage to be computed", || async {
        let q = quotas.get("builds").await.ok()?;
        let used = q.status?.used?;
        (used.get("pods")?.0 == "0").then_some(())
    })
    .await;

    // Every pod holds its step until the test lets it end.
    let backend = KubeBackend::new(
        admin.clone(),
        config(&ns, play("", "step-0=3600000", &[])),
        None,
    );
    assert!(backend.ready().await);
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns);

    let first = job(&["hold"]);
    let first_pod = names::pod_name(first.job_id, first.attempt);
    let (tx1, mut rx1) = mpsc::channel(256);
    backend.start(first.clone(), tx1).await.unwrap();
    until(&mut rx1, "the first job's step 0 started", |e| {
        matches!(e, JobEventKind::StepStarted { step: 0 })
    })
    .await;

    // The second is refused by the quota: its start returns at once, and it waits.
    let second = job(&["after"]);
    let second_pod = names::pod_name(second.job_id, second.attempt);
    let (tx2, mut rx2) = mpsc::channel(256);
    let started = tokio::time::Instant::now();
    backend.start(second.clone(), tx2).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "start returns without waiting for the quota"
    );
    let mut seen = until(
        &mut rx2,
        "the waiting notice",
        |e| matches!(e, JobEventKind::Log(l) if l.text.starts_with(WAITING)),
    )
    .await;
    let notice = said(&seen, WAITING).remove(0);
    assert!(
        notice.contains("exceeded quota: builds") && notice.contains("limited: pods=1"),
        "the API server's message: {notice}"
    );
    // Several retries later: still waiting, still queued (not started), no pod, said once.
    tokio::time::sleep(Duration::from_secs(3)).await;
    while let Ok(e) = rx2.try_recv() {
        seen.push(e.kind);
    }
    assert!(
        !seen
            .iter()
            .any(|e| matches!(e, JobEventKind::Started | JobEventKind::Finished { .. })),
        "{seen:?}"
    );
    assert_eq!(said(&seen, WAITING).len(), 1, "said once: {seen:?}");
    assert!(pods.get_opt(&second_pod).await.unwrap().is_none());

    // The first ends; the quota counts only pods not yet finished, so the second gets in.
    annotate(&pods, &first_pod, &[("gantry.dev/durations-ms", "*=100")]).await;
    let events = shape(&until_finished(&mut rx1).await);
    assert_eq!(events.last().map(String::as_str), Some("finished success"));
    let admitted = until(&mut rx2, "the second job's step 0 started", |e| {
        matches!(e, JobEventKind::StepStarted { step: 0 })
    })
    .await;
    assert_eq!(
        said(&admitted, "the resource quota admitted the pod").len(),
        1,
        "{admitted:?}"
    );

    // A third waits while the second runs; cancelled, it ends at once and leaves no pod.
    let third = job(&["never"]);
    let third_pod = names::pod_name(third.job_id, third.attempt);
    let (tx3, mut rx3) = mpsc::channel(256);
    backend.start(third.clone(), tx3).await.unwrap();
    until(
        &mut rx3,
        "the third job's waiting notice",
        |e| matches!(e, JobEventKind::Log(l) if l.text.starts_with(WAITING)),
    )
    .await;
    backend.cancel(third.job_id, third.attempt).await.unwrap();
    let events = until_finished(&mut rx3).await;
    assert_eq!(
        shape(&events),
        ["step 0 skipped", "finished cancelled: cancelled"]
    );
    assert!(matches!(
        events.last(),
        Some(JobEventKind::Finished {
            state: State::Cancelled,
            ..
        })
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        pods.get_opt(&third_pod).await.unwrap().is_none(),
        "no pod is left behind"
    );

    // The second finishes normally.
    annotate(&pods, &second_pod, &[("gantry.dev/durations-ms", "*=100")]).await;
    let events = shape(&until_finished(&mut rx2).await);
    assert_eq!(events.last().map(String::as_str), Some("finished success"));
    eventually("no attempt under way", || async {
        (backend.running() == 0).then_some(())
    })
    .await;
}
