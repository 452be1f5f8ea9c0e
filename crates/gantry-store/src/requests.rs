//! Requests for the engine written by a replica that does not run it: with leader election,
//! every replica serves the API, and a cancel or retry sent to a follower reaches the leader's
//! engine through this table (ARCHITECTURE: the database is the only channel between replicas).

use gantry_core::Timestamp;

use crate::codec::{Cols, corrupt, ts};
use crate::{Result, Store, Tx};

/// What a request asks of the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineAction {
    CancelRun,
    CancelJob,
    RetryRun,
    RetryJob,
}

impl EngineAction {
    fn as_str(self) -> &'static str {
        match self {
            Self::CancelRun => "cancel_run",
            Self::CancelJob => "cancel_job",
            Self::RetryRun => "retry_run",
            Self::RetryJob => "retry_job",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "cancel_run" => Self::CancelRun,
            "cancel_job" => Self::CancelJob,
            "retry_run" => Self::RetryRun,
            "retry_job" => Self::RetryJob,
            other => return Err(corrupt("engine request action", other)),
        })
    }
}

/// One request waiting for the engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineRequest {
    /// Its place in line: requests are applied in the order they were made.
    pub seq: i64,
    pub action: EngineAction,
    /// The run's or the job's id (by `action`).
    pub target: uuid::Uuid,
    /// Why, for a cancel.
    pub reason: Option<String>,
    pub requested_at: Timestamp,
}

impl Store {
    /// Records a request for the engine (of whichever replica runs it).
    pub async fn request(
        &self,
        action: EngineAction,
        target: uuid::Uuid,
        reason: Option<&str>,
        at: Timestamp,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO engine_requests (action, target, reason, requested_at) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(action.as_str())
        .bind(target.to_string())
        .bind(reason)
        .bind(ts(at))
        .execute(&mut *self.conn().await?)
        .await?;
        Ok(())
    }

    /// The requests waiting, oldest first.
    pub async fn requests(&self) -> Result<Vec<EngineRequest>> {
        let rows = sqlx::query(
            "SELECT seq, action, target, reason, requested_at FROM engine_requests ORDER BY seq",
        )
        .fetch_all(&mut *self.conn().await?)
        .await?;
        rows.iter()
            .map(|row| {
                let c = Cols(row);
                Ok(EngineRequest {
                    seq: c.i64("seq")?,
                    action: EngineAction::parse(&c.str("action")?)?,
                    target: c.uuid("target")?,
                    reason: c.opt_str("reason")?,
                    requested_at: c.ts("requested_at")?,
                })
            })
            .collect()
    }
}

impl Tx {
    /// Removes a request once it has been applied.
    pub async fn delete_request(&mut self, seq: i64) -> Result<()> {
        sqlx::query("DELETE FROM engine_requests WHERE seq = $1")
            .bind(seq)
            .execute(self.conn())
            .await?;
        Ok(())
    }
}
