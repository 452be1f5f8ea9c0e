//! The commit status outbox: statuses written in the same transaction as the state changes that
//! cause them, delivered to the forge later by the reporter.

use gantry_core::{CommitState, CommitStatus, ForgeKind, RepoRef, Timestamp};
use sqlx::any::AnyRow;

use crate::codec::{self, Cols, json, ts};
use crate::{Result, Store, Tx};

/// How an outbox entry was settled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OutboxOutcome {
    /// The forge accepted it.
    Delivered,
    /// A newer status for the same commit and context was written before this one was sent;
    /// the newer one was sent instead.
    Coalesced,
    /// Given up on: the forge refused it for good, or no forge of its kind is configured.
    Dropped,
}

impl OutboxOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            OutboxOutcome::Delivered => "delivered",
            OutboxOutcome::Coalesced => "coalesced",
            OutboxOutcome::Dropped => "dropped",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        match s {
            "delivered" => Ok(Self::Delivered),
            "coalesced" => Ok(Self::Coalesced),
            "dropped" => Ok(Self::Dropped),
            other => Err(codec::corrupt("outbox outcome", other)),
        }
    }
}

/// One status in the outbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxEntry {
    /// Order of writing: per commit and context, a higher id is newer.
    pub id: i64,
    pub repo: RepoRef,
    pub status: CommitStatus,
    pub created_at: Timestamp,
    /// Failed deliveries so far.
    pub attempts: u32,
    /// Not to be sent before this.
    pub next_attempt_at: Timestamp,
    pub delivered_at: Option<Timestamp>,
    /// `None` while pending.
    pub outcome: Option<OutboxOutcome>,
    pub last_error: Option<String>,
}

fn commit_state_str(s: CommitState) -> &'static str {
    match s {
        CommitState::Pending => "pending",
        CommitState::Running => "running",
        CommitState::Success => "success",
        CommitState::Failure => "failure",
        CommitState::Error => "error",
        CommitState::Cancelled => "cancelled",
    }
}

fn parse_commit_state(s: &str) -> Result<CommitState> {
    Ok(match s {
        "pending" => CommitState::Pending,
        "running" => CommitState::Running,
        "success" => CommitState::Success,
        "failure" => CommitState::Failure,
        "error" => CommitState::Error,
        "cancelled" => CommitState::Cancelled,
        other => return Err(codec::corrupt("commit state", other)),
    })
}

const COLS: &str = "id, repo, sha, context, state, description, target_url, created_at, \
                    attempts, next_attempt_at, delivered_at, outcome, last_error";

fn entry_from_row(row: &AnyRow) -> Result<OutboxEntry> {
    let c = Cols(row);
    Ok(OutboxEntry {
        id: c.i64("id")?,
        repo: c.json("repository", "repo")?,
        status: CommitStatus {
            sha: c.str("sha")?,
            context: c.str("context")?,
            state: parse_commit_state(&c.str("state")?)?,
            description: c.str("description")?,
            target_url: c.opt_str("target_url")?,
        },
        created_at: c.ts("created_at")?,
        attempts: c.i64("attempts")? as u32,
        next_attempt_at: c.ts("next_attempt_at")?,
        delivered_at: c.opt_ts("delivered_at")?,
        outcome: c
            .opt_str("outcome")?
            .as_deref()
            .map(OutboxOutcome::parse)
            .transpose()?,
        last_error: c.opt_str("last_error")?,
    })
}

impl Tx {
    /// Writes a status to the outbox; it goes out when the transaction commits.
    pub async fn push_status(
        &mut self,
        repo: &RepoRef,
        status: &CommitStatus,
        at: Timestamp,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO status_outbox (forge, repo, sha, context, state, description, \
             target_url, created_at, attempts, next_attempt_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, $8)",
        )
        .bind(repo.forge.as_str())
        .bind(json(repo))
        .bind(status.sha.clone())
        .bind(status.context.clone())
        .bind(commit_state_str(status.state))
        .bind(status.description.clone())
        .bind(status.target_url.clone())
        .bind(ts(at))
        .execute(self.conn())
        .await?;
        Ok(())
    }
}

impl Store {
    /// Statuses not yet settled, oldest first (at most `limit`).
    pub async fn pending_statuses(&self, limit: u32) -> Result<Vec<OutboxEntry>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLS} FROM status_outbox WHERE outcome IS NULL ORDER BY id LIMIT {}",
            limit.max(1)
        ))
        .fetch_all(&mut *self.conn().await?)
        .await?;
        rows.iter().map(entry_from_row).collect()
    }

    /// Every status of a commit (of every commit when `sha` is `None`), oldest first.
    pub async fn statuses(&self, sha: Option<&str>) -> Result<Vec<OutboxEntry>> {
        let rows = match sha {
            Some(sha) => {
                sqlx::query(&format!(
                    "SELECT {COLS} FROM status_outbox WHERE sha = $1 ORDER BY id"
                ))
                .bind(sha.to_owned())
                .fetch_all(&mut *self.conn().await?)
                .await?
            }
            None => {
                sqlx::query(&format!("SELECT {COLS} FROM status_outbox ORDER BY id"))
                    .fetch_all(&mut *self.conn().await?)
                    .await?
            }
        };
        rows.iter().map(entry_from_row).collect()
    }

    /// Settles entries (still pending) with an outcome.
    pub async fn settle_statuses(
        &self,
        ids: &[i64],
        outcome: OutboxOutcome,
        error: Option<&str>,
        at: Timestamp,
    ) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let list: Vec<String> = ids.iter().map(i64::to_string).collect();
        sqlx::query(&format!(
            "UPDATE status_outbox SET outcome = $1, last_error = COALESCE($2, last_error), \
             delivered_at = CASE WHEN $1 = 'delivered' THEN $3 ELSE NULL END \
             WHERE outcome IS NULL AND id IN ({})",
            list.join(", ")
        ))
        .bind(outcome.as_str())
        .bind(error.map(str::to_owned))
        .bind(ts(at))
        .execute(&mut *self.conn().await?)
        .await?;
        Ok(())
    }

    /// Records a failed delivery and when to try again.
    pub async fn reschedule_status(
        &self,
        id: i64,
        attempts: u32,
        next_attempt_at: Timestamp,
        error: &str,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE status_outbox SET attempts = $1, next_attempt_at = $2, last_error = $3 \
             WHERE id = $4",
        )
        .bind(i64::from(attempts))
        .bind(ts(next_attempt_at))
        .bind(error.to_owned())
        .bind(id)
        .execute(&mut *self.conn().await?)
        .await?;
        Ok(())
    }

    /// How many statuses ended with `outcome`, per forge, since the database was created.
    pub async fn count_statuses(&self, outcome: OutboxOutcome) -> Result<Vec<(ForgeKind, u64)>> {
        let rows = sqlx::query(
            "SELECT forge, COUNT(*) AS n FROM status_outbox WHERE outcome = $1 GROUP BY forge",
        )
        .bind(outcome.as_str())
        .fetch_all(&mut *self.conn().await?)
        .await?;
        let mut out = Vec::new();
        for row in &rows {
            let c = Cols(row);
            let forge: ForgeKind = codec::from_json("forge", &format!("\"{}\"", c.str("forge")?))?;
            out.push((forge, c.i64("n")? as u64));
        }
        Ok(out)
    }
}
