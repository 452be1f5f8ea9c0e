//! Deletes finished pods after the retention and orphans (labelled pods of attempts the store
//! does not know). It reads the watch's cache: no list requests, only the deletes it makes.

use std::sync::{Arc, Weak};

use gantry_core::{JobId, RunId};
use k8s_openapi::api::core::v1::Pod;

use crate::backend::{Inner, JobRegistry};
use crate::logs::from_jiff;
use crate::{api, names};

pub(crate) async fn run(inner: Weak<Inner>, registry: Arc<dyn JobRegistry>) {
    loop {
        let every = match inner.upgrade() {
            Some(i) => i.config.timings.sweep_every,
            None => return,
        };
        tokio::time::sleep(every).await;
        let Some(inner) = inner.upgrade() else { return };
        sweep(&inner, registry.as_ref()).await;
    }
}

fn finished_at(pod: &Pod) -> Option<chrono::DateTime<chrono::Utc>> {
    let status = pod.status.as_ref()?;
    if !matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    let ends = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
        .map(|t| from_jiff(t.0))
        .max();
    ends.or_else(|| status.start_time.as_ref().map(|t| from_jiff(t.0)))
        .or_else(|| {
            pod.metadata
                .creation_timestamp
                .as_ref()
                .map(|t| from_jiff(t.0))
        })
}

fn attempt_of(pod: &Pod) -> Option<(RunId, JobId, u32)> {
    let labels = pod.metadata.labels.as_ref()?;
    Some((
        labels.get(names::RUN)?.parse().ok()?,
        labels.get(names::JOB)?.parse().ok()?,
        labels.get(names::ATTEMPT)?.parse().ok()?,
    ))
}

pub(crate) async fn sweep(inner: &Inner, registry: &dyn JobRegistry) -> Vec<String> {
    let t = &inner.config.timings;
    let now = chrono::Utc::now();
    let retention = chrono::Duration::from_std(t.retention).unwrap_or_default();
    let min_age = chrono::Duration::from_std(t.orphan_min_age).unwrap_or_default();
    let mut deleted = Vec::new();
    for pod in inner.store.state() {
        let name = pod.metadata.name.clone().unwrap_or_default();
        if pod.metadata.deletion_timestamp.is_some()
            || inner.jobs.lock().is_ok_and(|j| j.contains_key(&name))
        {
            continue;
        }
        let delete = if let Some(ended) = finished_at(&pod) {
            now - ended >= retention
        } else {
            let old = pod
                .metadata
                .creation_timestamp
                .as_ref()
                .is_none_or(|c| now - from_jiff(c.0) >= min_age);
            let known = match attempt_of(&pod) {
                Some((run, job, attempt)) => registry.knows(run, job, attempt).await,
                None => false,
            };
            old && !known
        };
        if delete {
            match api::delete_pod(&inner.pods, &name, t.cancel_grace, t).await {
                Ok(()) => deleted.push(name),
                Err(e) => tracing::warn!(pod = %name, error = %e, "sweeper cannot delete pod"),
            }
        }
    }
    deleted
}
