//! After a delivery is stored and answered: read the pipeline files at the pushed commit and
//! hand them to the engine. Also re-plans, at start, deliveries a crash left unplanned.

use std::sync::Arc;

use gantry_core::{Forge, ForgeError, ForgeKind, RepoRef, Trigger};
use gantry_forge::GitReader;
use gantry_store::DeliveryState;
use serde::{Deserialize, Serialize};

use crate::AppState;

/// How Gantry reads a repository's files at a commit.
#[derive(Clone)]
pub enum PipelineSource {
    /// Through the forge's API, with a token.
    Api(Arc<dyn Forge>),
    /// Through git: a shallow fetch of exactly that commit from the clone URL.
    Git(Arc<GitReader>),
}

impl std::fmt::Debug for PipelineSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PipelineSource::Api(forge) => write!(f, "Api({})", forge.kind()),
            PipelineSource::Git(_) => f.write_str("Git"),
        }
    }
}

impl PipelineSource {
    async fn read_file(
        &self,
        repo: &RepoRef,
        sha: &str,
        path: &str,
    ) -> Result<Option<Vec<u8>>, ForgeError> {
        match self {
            PipelineSource::Api(forge) => forge.read_file(repo, sha, path).await,
            PipelineSource::Git(git) => git.read_file(repo, sha, path).await,
        }
    }

    async fn list_dir(
        &self,
        repo: &RepoRef,
        sha: &str,
        dir: &str,
    ) -> Result<Vec<String>, ForgeError> {
        match self {
            PipelineSource::Api(forge) => forge.list_dir(repo, sha, dir).await,
            PipelineSource::Git(git) => git.list_dir(repo, sha, dir).await,
        }
    }

    /// The pipeline files at `sha`: `.gantry.yaml` (or `.yml`) and `.gantry/*.yaml` (or
    /// `.yml`), as `(path, contents)`, sorted by path.
    pub async fn pipelines(
        &self,
        repo: &RepoRef,
        sha: &str,
    ) -> Result<Vec<(String, String)>, ForgeError> {
        let mut paths: Vec<String> = Vec::new();
        for top in [".gantry.yaml", ".gantry.yml"] {
            paths.push(top.to_owned());
        }
        let mut in_dir: Vec<String> = self
            .list_dir(repo, sha, ".gantry")
            .await?
            .into_iter()
            .filter(|name| name.ends_with(".yaml") || name.ends_with(".yml"))
            .map(|name| format!(".gantry/{name}"))
            .collect();
        in_dir.sort();
        paths.extend(in_dir);
        let mut files = Vec::new();
        for path in paths {
            if let Some(bytes) = self.read_file(repo, sha, &path).await? {
                files.push((path, String::from_utf8_lossy(&bytes).into_owned()));
            }
        }
        Ok(files)
    }
}

/// What is stored for a delivery: the verified event as Gantry understood it, enough to plan it
/// again after a crash.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StoredTrigger {
    pub trigger: Trigger,
    /// `before..after` when the payload did not list every changed path.
    pub compare: Option<(String, String)>,
}

/// Reads the pipelines at the trigger's commit and submits them; records the outcome on the
/// delivery so it is visible through the API. Never panics, never loses the delivery: a failure
/// is recorded with its reason.
pub async fn plan_delivery(
    state: &AppState,
    forge: ForgeKind,
    delivery_id: &str,
    stored: StoredTrigger,
) {
    let store = state.engine.store();
    let mut trigger = stored.trigger;
    if let (Some((before, after)), None) = (&stored.compare, &trigger.changed_paths) {
        // The payload did not list every changed path: ask git rather than guess. When that
        // fails too, the paths stay unknown and `paths` filters match (run rather than miss).
        match state.git.changed_paths(&trigger.repo, before, after).await {
            Ok(paths) => trigger.changed_paths = Some(paths),
            Err(err) => {
                tracing::info!(delivery = delivery_id, error = %err, "changed paths unknown")
            }
        }
    }
    let outcome = match state.sources.get(&forge) {
        None => Err(format!("no way to read {forge} repositories is configured")),
        Some(source) => source
            .pipelines(&trigger.repo, &trigger.sha)
            .await
            .map_err(|e| format!("cannot read the pipeline files at {}: {e}", trigger.sha)),
    };
    let result = match outcome {
        Err(reason) => {
            tracing::warn!(delivery = delivery_id, %reason, "planning failed");
            store
                .set_delivery_outcome(
                    forge,
                    delivery_id,
                    DeliveryState::Failed,
                    Some(&reason),
                    &[],
                )
                .await
        }
        Ok(files) if files.is_empty() => {
            let reason = format!(
                "no pipeline at {}: expected .gantry.yaml or .gantry/*.yaml",
                trigger.sha
            );
            tracing::info!(delivery = delivery_id, %reason, "nothing to run");
            store
                .set_delivery_outcome(
                    forge,
                    delivery_id,
                    DeliveryState::Planned,
                    Some(&reason),
                    &[],
                )
                .await
        }
        Ok(files) => match state.engine.submit(trigger, files).await {
            Ok(runs) => {
                let reason = runs
                    .is_empty()
                    .then_some("no pipeline's `on:` matches this event");
                tracing::info!(delivery = delivery_id, runs = runs.len(), "planned");
                store
                    .set_delivery_outcome(forge, delivery_id, DeliveryState::Planned, reason, &runs)
                    .await
            }
            Err(err) => {
                // Left `received`: the next start plans it again.
                tracing::error!(delivery = delivery_id, error = %err, "submitting the runs failed");
                return;
            }
        },
    };
    if let Err(err) = result {
        tracing::error!(delivery = delivery_id, error = %err, "recording the delivery's outcome failed");
    }
}

/// Plans every delivery that was stored but not planned (the server stopped in between).
pub async fn recover(state: &AppState) {
    let pending = match state.engine.store().unplanned_deliveries().await {
        Ok(pending) => pending,
        Err(err) => {
            tracing::error!(error = %err, "cannot list unplanned deliveries");
            return;
        }
    };
    for delivery in pending {
        match serde_json::from_str::<StoredTrigger>(&delivery.payload) {
            Ok(stored) => plan_delivery(state, delivery.forge, &delivery.delivery_id, stored).await,
            Err(err) => {
                let reason = format!("stored delivery cannot be read: {err}");
                let _ = state
                    .engine
                    .store()
                    .set_delivery_outcome(
                        delivery.forge,
                        &delivery.delivery_id,
                        DeliveryState::Failed,
                        Some(&reason),
                        &[],
                    )
                    .await;
            }
        }
    }
}
