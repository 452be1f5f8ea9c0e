//! After a delivery is stored and answered: read the pipeline files at the pushed commit and
//! hand them to the engine. Also re-plans, at start, deliveries a crash left unplanned.

use std::sync::Arc;
use std::time::Duration;

use gantry_core::{Forge, ForgeError, ForgeKind, RepoRef, Trigger};
use gantry_forge::GitReader;
use gantry_store::DeliveryState;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

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

/// The first wait before planning a delivery again after a transient failure; it doubles up to
/// [`RETRY_MAX`] (or follows the forge's `Retry-After`).
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);
/// How long a delivery is retried before it ends `failed` (a repository that is gone, a clone
/// URL that never answers): longer than any forge outage worth waiting out.
const RETRY_FOR: Duration = Duration::from_secs(6 * 3600);

/// Forge reads that planning makes at once, per forge, unless configured otherwise. GitHub's
/// secondary rate limit allows 100 concurrent requests per token; Gantry keeps well under it,
/// leaving room for the statuses.
pub const FORGE_READS: usize = 16;

/// The bound on planning's forge reads: at most `limit` at once per forge (one forge that is slow
/// never holds up another's).
#[derive(Debug)]
pub struct ForgeReads {
    per_forge: [Semaphore; 4],
}

impl ForgeReads {
    /// At most `limit` (at least 1) reads at once per forge.
    pub fn new(limit: usize) -> ForgeReads {
        let limit = limit.max(1);
        ForgeReads {
            per_forge: std::array::from_fn(|_| Semaphore::new(limit)),
        }
    }

    fn of(&self, forge: ForgeKind) -> &Semaphore {
        &self.per_forge[match forge {
            ForgeKind::Github => 0,
            ForgeKind::Gitlab => 1,
            ForgeKind::Gitea => 2,
            ForgeKind::Local => 3,
        }]
    }
}

impl Default for ForgeReads {
    fn default() -> ForgeReads {
        ForgeReads::new(FORGE_READS)
    }
}

/// Why planning one delivery stopped short.
enum Failure {
    /// It can never succeed (no such commit, no access): the delivery ends `failed`.
    Permanent { reason: String, cause: &'static str },
    /// The forge or the store failed in a way that may pass: try again.
    Transient {
        reason: String,
        cause: &'static str,
        retry_after: Option<Duration>,
    },
    /// The engine is stopping: the delivery stays `received` for the next start.
    Stopping,
}

/// Reads the pipelines at the trigger's commit and submits them; records the outcome on the
/// delivery so it is visible through the API. Never panics, never loses the delivery: a
/// transient failure (the forge timing out, answering 5xx or 429, the store unable to write) is
/// retried with backoff until it passes or the server stops (the next start plans the delivery
/// again); only a permanent one ends it, with its reason.
pub async fn plan_delivery(
    state: &AppState,
    forge: ForgeKind,
    delivery_id: &str,
    stored: StoredTrigger,
) {
    let store = state.engine.store();
    let token = state.engine.shutdown_token();
    let mut wait = RETRY_FIRST;
    let mut attempt = 1u32;
    let since = std::time::Instant::now();
    let outcome = loop {
        match plan_once(state, forge, delivery_id, &stored).await {
            Ok(outcome) => break outcome,
            Err(Failure::Permanent { reason, cause }) => {
                state.engine.observer().planning_failed("failed", cause);
                tracing::warn!(delivery = delivery_id, %reason, "planning failed");
                break (DeliveryState::Failed, Some(reason), Vec::new());
            }
            Err(Failure::Stopping) => return,
            Err(Failure::Transient { reason, cause, .. }) if since.elapsed() >= RETRY_FOR => {
                state.engine.observer().planning_failed("failed", cause);
                let reason = format!("gave up after {attempt} attempts in 6 hours: {reason}");
                tracing::warn!(delivery = delivery_id, %reason, "planning failed");
                break (DeliveryState::Failed, Some(reason), Vec::new());
            }
            Err(Failure::Transient {
                reason,
                cause,
                retry_after,
            }) => {
                state.engine.observer().planning_failed("retried", cause);
                let pause = retry_after.unwrap_or(wait).min(RETRY_MAX);
                tracing::warn!(
                    delivery = delivery_id,
                    attempt,
                    %reason,
                    retry_in = ?pause,
                    "planning failed; trying again"
                );
                // Visible through the API meanwhile (when the store can be written).
                let note = format!("planning attempt {attempt} failed, trying again: {reason}");
                let _ = store
                    .set_delivery_outcome(
                        forge,
                        delivery_id,
                        DeliveryState::Received,
                        Some(&note),
                        &[],
                    )
                    .await;
                tokio::select! {
                    () = token.cancelled() => return,
                    () = tokio::time::sleep(pause) => {}
                }
                wait = (wait * 2).min(RETRY_MAX);
                attempt += 1;
            }
        }
    };
    // The runs exist now: only the record of the outcome is left, and it must not plan again.
    let (delivery_state, reason, runs) = outcome;
    let mut wait = RETRY_FIRST;
    loop {
        match store
            .set_delivery_outcome(forge, delivery_id, delivery_state, reason.as_deref(), &runs)
            .await
        {
            Ok(()) => return,
            Err(err) if err.is_unavailable() && !token.is_cancelled() => {
                tracing::warn!(delivery = delivery_id, error = %err, "cannot record the delivery's outcome yet");
                tokio::select! {
                    () = token.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(RETRY_MAX);
            }
            Err(err) => {
                tracing::error!(delivery = delivery_id, error = %err, "recording the delivery's outcome failed");
                return;
            }
        }
    }
}

/// One try at planning: the delivery's final state, reason and runs.
async fn plan_once(
    state: &AppState,
    forge: ForgeKind,
    delivery_id: &str,
    stored: &StoredTrigger,
) -> Result<(DeliveryState, Option<String>, Vec<gantry_core::RunId>), Failure> {
    let mut trigger = stored.trigger.clone();
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
    let Some(source) = state.sources.get(&forge) else {
        return Err(Failure::Permanent {
            reason: format!("no way to read {forge} repositories is configured"),
            cause: "config",
        });
    };
    let files = {
        let _permit = state
            .forge_reads
            .of(forge)
            .acquire()
            .await
            .map_err(|_| Failure::Stopping)?;
        source.pipelines(&trigger.repo, &trigger.sha).await
    };
    let files = files.map_err(|e| {
        let reason = format!("cannot read the pipeline files at {}: {e}", trigger.sha);
        if is_transient(&e) {
            Failure::Transient {
                reason,
                cause: "forge",
                retry_after: retry_after(&e),
            }
        } else {
            Failure::Permanent {
                reason,
                cause: "forge",
            }
        }
    })?;
    if files.is_empty() {
        let reason = format!(
            "no pipeline at {}: expected .gantry.yaml or .gantry/*.yaml",
            trigger.sha
        );
        tracing::info!(delivery = delivery_id, %reason, "nothing to run");
        return Ok((DeliveryState::Planned, Some(reason), Vec::new()));
    }
    match state.engine.submit(trigger, files).await {
        Ok(runs) => {
            let reason = runs
                .is_empty()
                .then(|| "no pipeline's `on:` matches this event".to_owned());
            tracing::info!(delivery = delivery_id, runs = runs.len(), "planned");
            Ok((DeliveryState::Planned, reason, runs))
        }
        Err(gantry_engine::Error::ShuttingDown) => Err(Failure::Stopping),
        Err(gantry_engine::Error::Store(err)) if err.is_unavailable() => Err(Failure::Transient {
            reason: format!("the runs cannot be stored: {err}"),
            cause: "store",
            retry_after: None,
        }),
        Err(err) => {
            // Left `received`: the next start plans it again.
            tracing::error!(delivery = delivery_id, error = %err, "submitting the runs failed");
            Err(Failure::Stopping)
        }
    }
}

/// A forge answer worth waiting out: timeouts and no answer, 5xx, 429, and a 403 that carries
/// a rate limit's `Retry-After` (GitHub's secondary limit answers 403).
fn is_transient(err: &ForgeError) -> bool {
    err.is_retryable()
        || matches!(
            err,
            ForgeError::Api {
                status: 403,
                retry_after: Some(_),
                ..
            }
        )
}

fn retry_after(err: &ForgeError) -> Option<Duration> {
    match err {
        ForgeError::Api {
            retry_after: Some(secs),
            ..
        } => Some(Duration::from_secs(*secs)),
        _ => None,
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
