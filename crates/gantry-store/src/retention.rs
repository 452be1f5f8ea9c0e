//! Retention of finished work: runs (with their jobs and steps), settled webhook deliveries and
//! settled commit statuses older than a cutoff are deleted, a batch per transaction, so the
//! database stays the size of what is kept however long Gantry runs. Nothing unfinished is ever
//! deleted: a run still queued or running, a delivery not yet planned, a status not yet sent.

use gantry_core::{JobId, Timestamp};
use sqlx::Row;

use crate::codec::ts;
use crate::{Result, Store};

/// What to keep. Both limits may be set: the stricter one wins.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeepRuns {
    /// Runs that finished before this are deleted.
    pub finished_after: Option<Timestamp>,
    /// At most this many finished runs are kept: older ones are deleted.
    pub newest: Option<u64>,
}

/// What one [`Store::prune`] deleted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    pub runs: u64,
    pub deliveries: u64,
    pub statuses: u64,
    /// The jobs of the deleted runs: their step logs can go too.
    pub jobs: Vec<JobId>,
}

/// Rows deleted per transaction: a writer never holds SQLite's lock for long.
const BATCH: i64 = 500;

impl Store {
    /// Deletes what `keep` does not keep. Deliveries and statuses go with the runs: a settled
    /// delivery or status older than the oldest finished run kept is deleted.
    pub async fn prune(&self, keep: KeepRuns) -> Result<Pruned> {
        let Some(cutoff) = self.cutoff(keep).await? else {
            return Ok(Pruned::default());
        };
        let cutoff = ts(cutoff);
        let mut pruned = Pruned::default();
        loop {
            let mut tx = self.begin().await?;
            let ids: Vec<String> = sqlx::query(
                "SELECT id FROM runs WHERE finished_at IS NOT NULL AND finished_at < $1 \
                 AND state IN ('success', 'failure', 'cancelled', 'error', 'skipped') \
                 ORDER BY finished_at LIMIT $2",
            )
            .bind(cutoff.clone())
            .bind(BATCH)
            .fetch_all(tx.conn())
            .await?
            .iter()
            .map(|r| r.try_get::<String, _>("id"))
            .collect::<Result<_, _>>()?;
            if ids.is_empty() {
                break;
            }
            for id in &ids {
                let jobs = sqlx::query("SELECT DISTINCT id FROM jobs WHERE run_id = $1")
                    .bind(id.clone())
                    .fetch_all(tx.conn())
                    .await?;
                for row in jobs {
                    let job = row.try_get::<String, _>("id")?;
                    pruned.jobs.push(
                        job.parse()
                            .map_err(|_| crate::codec::corrupt("job id", job.clone()))?,
                    );
                }
                for table in ["steps", "jobs", "queue"] {
                    sqlx::query(&format!("DELETE FROM {table} WHERE run_id = $1"))
                        .bind(id.clone())
                        .execute(tx.conn())
                        .await?;
                }
                sqlx::query("DELETE FROM runs WHERE id = $1")
                    .bind(id.clone())
                    .execute(tx.conn())
                    .await?;
            }
            tx.commit().await?;
            pruned.runs += ids.len() as u64;
        }
        pruned.deliveries = self
            .delete_batched(
                "DELETE FROM deliveries WHERE (forge, delivery_id) IN (SELECT forge, delivery_id \
                 FROM deliveries WHERE state <> 'received' AND received_at < $1 LIMIT $2)",
                &cutoff,
            )
            .await?;
        pruned.statuses = self
            .delete_batched(
                "DELETE FROM status_outbox WHERE id IN (SELECT id FROM status_outbox \
                 WHERE outcome IS NOT NULL AND created_at < $1 LIMIT $2)",
                &cutoff,
            )
            .await?;
        Ok(pruned)
    }

    /// The time before which finished work goes: the later of the age limit and the end of the
    /// newest finished run beyond the count limit.
    async fn cutoff(&self, keep: KeepRuns) -> Result<Option<Timestamp>> {
        let by_count = match keep.newest {
            None => None,
            Some(n) => {
                let row = sqlx::query(
                    "SELECT finished_at FROM runs WHERE finished_at IS NOT NULL \
                     ORDER BY finished_at DESC LIMIT 1 OFFSET $1",
                )
                .bind(i64::try_from(n.saturating_sub(1)).unwrap_or(i64::MAX))
                .fetch_optional(&mut *self.conn().await?)
                .await?;
                match row {
                    Some(row) => Some(crate::codec::parse_ts(
                        &row.try_get::<String, _>("finished_at")?,
                    )?),
                    None => None,
                }
            }
        };
        Ok(match (keep.finished_after, by_count) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        })
    }

    async fn delete_batched(&self, sql: &str, cutoff: &str) -> Result<u64> {
        let mut total = 0;
        loop {
            let mut tx = self.begin().await?;
            let done = sqlx::query(sql)
                .bind(cutoff.to_owned())
                .bind(BATCH)
                .execute(tx.conn())
                .await?
                .rows_affected();
            tx.commit().await?;
            total += done;
            if done < BATCH as u64 {
                return Ok(total);
            }
        }
    }
}
