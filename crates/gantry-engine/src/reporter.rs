//! Delivers the status outbox to the forges: per commit and context in order, only the newest
//! pending status (older ones are coalesced: the forge would overwrite them anyway, and GitHub
//! keeps at most 1000 per context), retrying with exponential backoff, pausing a forge for as
//! long as its `Retry-After` says, dropping a status after a few refusals that will not change.
//! Everything it knows lives in the outbox table, so a restart resumes where it stopped.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use gantry_core::{ForgeKind, Timestamp};
use gantry_store::{OutboxEntry, OutboxOutcome};

use crate::Result;
use crate::engine::Inner;

/// How many outbox rows one pass reads.
const BATCH: u32 = 1000;

struct Reporter {
    inner: Arc<Inner>,
    /// Forges that asked to be left alone, until when.
    paused: HashMap<ForgeKind, Timestamp>,
}

pub(crate) async fn run(inner: Arc<Inner>) {
    let mut reporter = Reporter {
        inner,
        paused: HashMap::new(),
    };
    loop {
        let wait = match reporter.pass().await {
            Ok(next) => next,
            Err(err) => {
                tracing::error!(%err, "cannot deliver commit statuses");
                None
            }
        };
        let poll = reporter.inner.config.reporter.poll;
        let wait = wait.map_or(poll, |w| w.min(poll));
        let inner = reporter.inner.clone();
        tokio::select! {
            () = inner.token.cancelled() => break,
            () = inner.report_wake.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
    tracing::debug!("reporter stopped");
}

fn to_std(d: chrono::Duration) -> Duration {
    d.to_std().unwrap_or(Duration::ZERO)
}

impl Reporter {
    /// Delivers what is due; returns how long until the next entry is.
    async fn pass(&mut self) -> Result<Option<Duration>> {
        let inner = self.inner.clone();
        let store = &inner.store;
        let pending = store.pending_statuses(BATCH).await?;
        // Group by commit and context, keeping the order of writing.
        let mut groups: Vec<Vec<OutboxEntry>> = Vec::new();
        let mut index: HashMap<(ForgeKind, String, String, String), usize> = HashMap::new();
        for entry in pending {
            let key = (
                entry.repo.forge,
                entry.repo.full_name.clone(),
                entry.status.sha.clone(),
                entry.status.context.clone(),
            );
            match index.get(&key) {
                Some(&i) => groups[i].push(entry),
                None => {
                    index.insert(key, groups.len());
                    groups.push(vec![entry]);
                }
            }
        }
        let mut next_due: Option<Duration> = None;
        for mut group in groups {
            if self.inner.token.is_cancelled() {
                break;
            }
            let Some(newest) = group.pop() else { continue };
            // The newest inherits the older ones' wait, so coalescing never skips a backoff.
            let due_at = group
                .iter()
                .map(|e| e.next_attempt_at)
                .chain([newest.next_attempt_at])
                .max()
                .unwrap_or(newest.next_attempt_at);
            let attempts = group
                .iter()
                .map(|e| e.attempts)
                .chain([newest.attempts])
                .max()
                .unwrap_or(0);
            let older: Vec<i64> = group.iter().map(|e| e.id).collect();
            let now = gantry_core::now();
            store
                .settle_statuses(&older, OutboxOutcome::Coalesced, None, now)
                .await?;
            let due_at = match self.paused.get(&newest.repo.forge) {
                Some(until) if *until > due_at => *until,
                _ => due_at,
            };
            if due_at > now {
                let wait = to_std(due_at - now);
                next_due = Some(next_due.map_or(wait, |n| n.min(wait)));
                continue;
            }
            if let Some(wait) = self.deliver(&newest, attempts).await? {
                next_due = Some(next_due.map_or(wait, |n| n.min(wait)));
            }
        }
        Ok(next_due)
    }

    /// Sends one status; returns when to try again when it failed.
    async fn deliver(&mut self, entry: &OutboxEntry, attempts: u32) -> Result<Option<Duration>> {
        let inner = self.inner.clone();
        let store = &inner.store;
        let config = &inner.config.reporter;
        let Some(forge) = self.inner.forges.get(&entry.repo.forge) else {
            let why = format!("no {} forge is configured", entry.repo.forge);
            store
                .settle_statuses(
                    &[entry.id],
                    OutboxOutcome::Dropped,
                    Some(&why),
                    gantry_core::now(),
                )
                .await?;
            tracing::debug!(context = %entry.status.context, "{why}; status dropped");
            return Ok(None);
        };
        match forge.report_status(&entry.repo, &entry.status).await {
            Ok(()) => {
                store
                    .settle_statuses(
                        &[entry.id],
                        OutboxOutcome::Delivered,
                        None,
                        gantry_core::now(),
                    )
                    .await?;
                self.inner
                    .observer
                    .status_reported(entry.repo.forge, "delivered");
                Ok(None)
            }
            Err(err) => {
                let attempts = attempts + 1;
                let limit = if err.is_retryable() {
                    config.max_attempts
                } else {
                    config.max_attempts_non_retryable
                };
                let message = err.to_string();
                if attempts >= limit {
                    store
                        .settle_statuses(
                            &[entry.id],
                            OutboxOutcome::Dropped,
                            Some(&message),
                            gantry_core::now(),
                        )
                        .await?;
                    self.inner.dropped_statuses.fetch_add(1, Ordering::Relaxed);
                    self.inner
                        .observer
                        .status_reported(entry.repo.forge, "dropped");
                    tracing::warn!(
                        repo = %entry.repo.full_name,
                        sha = %entry.status.sha,
                        context = %entry.status.context,
                        attempts,
                        error = %message,
                        "commit status dropped"
                    );
                    return Ok(None);
                }
                let exp = config
                    .backoff
                    .saturating_mul(1 << (attempts - 1).min(20))
                    .min(config.max_backoff);
                let retry_after = match &err {
                    gantry_core::ForgeError::Api {
                        retry_after: Some(secs),
                        ..
                    } => Some(Duration::from_secs(*secs)),
                    _ => None,
                };
                let wait = retry_after.map_or(exp, |r| r.max(exp));
                let next = gantry_core::now()
                    + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX);
                if retry_after.is_some() {
                    // A rate limit is the forge's, not this status's.
                    self.paused.insert(entry.repo.forge, next);
                }
                store
                    .reschedule_status(entry.id, attempts, next, &message)
                    .await?;
                self.inner
                    .observer
                    .status_reported(entry.repo.forge, "retried");
                tracing::info!(context = %entry.status.context, attempts, error = %message, ?wait, "commit status will be retried");
                Ok(Some(wait))
            }
        }
    }
}
