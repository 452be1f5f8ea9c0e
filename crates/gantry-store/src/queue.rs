//! The job queue: attempts whose needs are met, waiting for a slot, first in first out.

use gantry_core::{JobId, RunId, Timestamp};
use sqlx::AnyConnection;

use crate::codec::{Cols, ts};
use crate::{Result, Store, Tx};

/// One attempt waiting for a slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueEntry {
    /// Its place in line: lower goes first.
    pub seq: i64,
    pub job_id: JobId,
    pub attempt: u32,
    pub run_id: RunId,
    /// See [`crate::repo_key`].
    pub repo_key: String,
    pub enqueued_at: Timestamp,
}

async fn entries(conn: &mut AnyConnection) -> Result<Vec<QueueEntry>> {
    let rows = sqlx::query(
        "SELECT seq, job_id, attempt, run_id, repo_key, enqueued_at FROM queue ORDER BY seq",
    )
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|row| {
            let c = Cols(row);
            Ok(QueueEntry {
                seq: c.i64("seq")?,
                job_id: c.uuid("job_id")?,
                attempt: c.i64("attempt")? as u32,
                run_id: c.uuid("run_id")?,
                repo_key: c.str("repo_key")?,
                enqueued_at: c.ts("enqueued_at")?,
            })
        })
        .collect()
}

impl Store {
    /// The whole queue, first in line first.
    pub async fn queue(&self) -> Result<Vec<QueueEntry>> {
        entries(&mut *self.conn().await?).await
    }

    /// The 1-based place in line of a job's latest attempt, or `None` when it is not queued.
    pub async fn queue_position(&self, job_id: JobId) -> Result<Option<u64>> {
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM queue AS ahead WHERE ahead.seq <= q.seq) AS position \
             FROM queue AS q WHERE q.job_id = $1",
        )
        .bind(job_id.to_string())
        .fetch_optional(&mut *self.conn().await?)
        .await?;
        row.map(|row| Cols(&row).i64("position").map(|n| n as u64))
            .transpose()
    }
}

impl Tx {
    pub async fn queue(&mut self) -> Result<Vec<QueueEntry>> {
        entries(self.conn()).await
    }

    /// Puts an attempt at the end of the line and records when.
    pub async fn enqueue(
        &mut self,
        job_id: JobId,
        attempt: u32,
        run_id: RunId,
        repo_key: &str,
        at: Timestamp,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO queue (job_id, attempt, run_id, repo_key, enqueued_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(job_id.to_string())
        .bind(i64::from(attempt))
        .bind(run_id.to_string())
        .bind(repo_key.to_owned())
        .bind(ts(at))
        .execute(self.conn())
        .await?;
        sqlx::query("UPDATE jobs SET queued_at = $1 WHERE id = $2 AND attempt = $3")
            .bind(ts(at))
            .bind(job_id.to_string())
            .bind(i64::from(attempt))
            .execute(self.conn())
            .await?;
        Ok(())
    }

    /// Takes an attempt out of the line; false when it was not in it.
    pub async fn dequeue(&mut self, job_id: JobId, attempt: u32) -> Result<bool> {
        let done = sqlx::query("DELETE FROM queue WHERE job_id = $1 AND attempt = $2")
            .bind(job_id.to_string())
            .bind(i64::from(attempt))
            .execute(self.conn())
            .await?;
        Ok(done.rows_affected() > 0)
    }
}
