//! Unschedulable pods and the Cluster Autoscaler. The test cluster has no autoscaler, so the
//! test posts the Events one would: core/v1 Events on the pod from source `cluster-autoscaler`
//! with reason `TriggeredScaleUp` or `NotTriggerScaleUp` and messages in its words
//! (kubernetes/autoscaler `cluster-autoscaler/processors/status/eventing_scale_up_processor.go`).
//! The pods really are unschedulable: their nodeSelector matches no node, and kube-scheduler
//! says so in their `PodScheduled` condition.

use std::collections::BTreeMap;
use std::time::Duration;

use gantry_core::{Backend, JobEventKind, State};
use gantry_kube::{KubeBackend, names};
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::Api;
use kube::api::PostParams;
use tokio::sync::mpsc;

use super::{cluster, config, eventually, play, until, until_finished};
use crate::backend::job;

const UP: &str = "pod triggered scale-up: [{ci-pool 0->1 (max: 3)}]";
const NOT: &str =
    "pod didn't trigger scale-up: 1 node(s) didn't match Pod's node affinity/selector";

/// Posts an Event on `pod` exactly as the cluster autoscaler's event recorder would.
async fn autoscaler_event(events: &Api<Event>, pod: &Pod, reason: &str, message: &str) {
    let name = pod.metadata.name.clone().unwrap();
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let event = Event {
        metadata: ObjectMeta {
            name: Some(format!("{name}.{}", uuid::Uuid::new_v4().simple())),
            namespace: pod.metadata.namespace.clone(),
            ..ObjectMeta::default()
        },
        involved_object: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(name),
            namespace: pod.metadata.namespace.clone(),
            uid: pod.metadata.uid.clone(),
            resource_version: pod.metadata.resource_version.clone(),
            ..ObjectReference::default()
        },
        reason: Some(reason.into()),
        message: Some(message.into()),
        source: Some(EventSource {
            component: Some("cluster-autoscaler".into()),
            host: None,
        }),
        type_: Some("Normal".into()),
        count: Some(1),
        first_timestamp: Some(now.clone()),
        last_timestamp: Some(now),
        ..Event::default()
    };
    events
        .create(&PostParams::default(), &event)
        .await
        .expect("post the autoscaler's Event");
}

/// Waits until kube-scheduler has marked the pod unschedulable; returns it.
async fn unschedulable(pods: &Api<Pod>, name: &str) -> Pod {
    eventually("the pod to be unschedulable", || async {
        let pod = pods.get_opt(name).await.ok()??;
        let unschedulable = pod
            .status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .any(|c| c.type_ == "PodScheduled" && c.reason.as_deref() == Some("Unschedulable"));
        unschedulable.then_some(pod)
    })
    .await
}

fn finished(events: &[JobEventKind]) -> (State, String) {
    match events.last() {
        Some(JobEventKind::Finished { state, reason }) => {
            (*state, reason.clone().unwrap_or_default())
        }
        other => panic!("not finished: {other:?}"),
    }
}

#[tokio::test]
async fn an_unschedulable_pod_waits_while_the_autoscaler_scales_up_and_fails_when_it_will_not() {
    let c = cluster();
    let ns = c.namespace("autoscale").await;
    let admin = c.admin().await;
    let grace = Duration::from_secs(3);
    let mut cfg = config(&ns, play("", "*=100", &[]));
    cfg.timings.stuck_grace = grace;
    let backend = KubeBackend::new(admin.clone(), cfg, None);
    assert!(backend.ready().await);
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns);
    let events: Api<Event> = Api::namespaced(admin.clone(), &ns);
    let nowhere = BTreeMap::from([("gantry.dev/pool".to_owned(), "none".to_owned())]);

    // Scaling up: waits past the grace; no scale-up after all: fails with the autoscaler's
    // message.
    let mut scaled = job(&["build"]);
    scaled.spec.node_selector = nowhere.clone();
    scaled.spec.timeout = Some(Duration::from_secs(300));
    let scaled_pod = names::pod_name(scaled.job_id, scaled.attempt);
    // No autoscaler event at all: fails after the grace with the scheduler's message, as
    // without an autoscaler.
    let mut plain = job(&["build"]);
    plain.spec.node_selector = nowhere;
    let plain_pod = names::pod_name(plain.job_id, plain.attempt);

    let (tx1, mut rx1) = mpsc::channel(256);
    backend.start(scaled.clone(), tx1).await.unwrap();
    let (tx2, mut rx2) = mpsc::channel(256);
    backend.start(plain.clone(), tx2).await.unwrap();

    let pod = unschedulable(&pods, &scaled_pod).await;
    autoscaler_event(&events, &pod, "TriggeredScaleUp", UP).await;
    let seen = until(
        &mut rx1,
        "the scale-up notice",
        |e| matches!(e, JobEventKind::Log(l) if l.text.contains("autoscaler is adding a node")),
    )
    .await;
    let notice = match seen.last() {
        Some(JobEventKind::Log(l)) => l.text.clone(),
        _ => unreachable!(),
    };
    assert!(notice.ends_with(UP), "{notice}");

    // The job without autoscaler events ends after the grace, with kube-scheduler's words.
    let plain_events = until_finished(&mut rx2).await;
    let (state, reason) = finished(&plain_events);
    assert_eq!(state, State::Error);
    assert!(
        reason.starts_with("the pod cannot be scheduled: 0/")
            && reason.contains("didn't match Pod's node affinity/selector"),
        "{reason}"
    );
    eventually("the unschedulable pod to be deleted", || async {
        pods.get_opt(&plain_pod)
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;

    // Well past the grace, the scaling job still waits, its pod still there.
    tokio::time::sleep(grace * 2).await;
    let mut more = Vec::new();
    while let Ok(e) = rx1.try_recv() {
        more.push(e.kind);
    }
    assert!(
        !more
            .iter()
            .any(|e| matches!(e, JobEventKind::Finished { .. })),
        "{more:?}"
    );
    assert!(pods.get_opt(&scaled_pod).await.unwrap().is_some());

    // The autoscaler gives up on the pod: the job fails at once with its message.
    let pod = pods.get(&scaled_pod).await.unwrap();
    autoscaler_event(&events, &pod, "NotTriggerScaleUp", NOT).await;
    let events1 = until_finished(&mut rx1).await;
    let (state, reason) = finished(&events1);
    assert_eq!(state, State::Error);
    assert!(reason.ends_with(NOT), "{reason}");
    assert!(
        reason.contains("the cluster autoscaler will not add a node"),
        "{reason}"
    );
    eventually("the pod to be deleted", || async {
        pods.get_opt(&scaled_pod)
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    assert_eq!(backend.running(), 0);
}
