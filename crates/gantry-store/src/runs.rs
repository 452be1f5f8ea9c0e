//! Runs, job attempts and steps.

use std::collections::HashMap;

use gantry_core::{
    Event, ForgeKind, Job, JobId, Run, RunId, State, StatusCondition, Step, Timestamp, Trigger,
};
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row as _};

use crate::codec::{self, Cols, flag, json, opt_ts, ts};
use crate::{Result, Store, Tx};

/// A run as stored: the domain [`Run`] (with every attempt of every job, in plan order, when
/// loaded by id) plus what the store keeps beside it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    #[serde(flatten)]
    pub run: Run,
    /// The pipeline's name: commit status contexts are `gantry/<name>`.
    pub name: String,
    /// Why the run ended as it did, when its state alone does not say (the diagnostics of a
    /// pipeline that does not parse, "superseded by …", "cancelled by …").
    pub reason: Option<String>,
    /// A cancel was asked for: jobs still to start will not.
    pub cancel_requested: bool,
    /// The run's number in its repository (1, 2, …), given when it is recorded; 0 before.
    #[serde(default)]
    pub number: u64,
}

/// Which runs [`Store::list_runs`] returns. Empty fields match everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunFilter {
    pub forge: Option<ForgeKind>,
    /// The repository's `full_name`.
    pub repo: Option<String>,
    pub branch: Option<String>,
    /// The pipeline file.
    pub pipeline: Option<String>,
    pub event: Option<Event>,
    pub pr_number: Option<u64>,
    /// Any of these states (all when empty).
    pub states: Vec<State>,
}

/// A page of runs, newest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Page {
    pub limit: u32,
    /// Only runs older than this one (the last id of the previous page).
    pub before: Option<RunId>,
}

impl Default for Page {
    fn default() -> Self {
        Self {
            limit: 50,
            before: None,
        }
    }
}

enum Bind {
    S(String),
    I(i64),
}

fn run_if_str(c: StatusCondition) -> &'static str {
    match c {
        StatusCondition::Success => "success",
        StatusCondition::Failure => "failure",
        StatusCondition::Always => "always",
    }
}

fn parse_run_if(s: &str) -> Result<StatusCondition> {
    match s {
        "success" => Ok(StatusCondition::Success),
        "failure" => Ok(StatusCondition::Failure),
        "always" => Ok(StatusCondition::Always),
        other => Err(codec::corrupt("run_if", other)),
    }
}

const RUN_COLS: &str = "id, trigger_json, pipeline, name, state, reason, cancel_requested, \
                        created_at, started_at, finished_at, number";
const JOB_COLS: &str = "id, attempt, run_id, name, needs, spec, retries_left, allow_failure, \
                        run_if, state, reason, created_at, started_at, finished_at";
const STEP_COLS: &str =
    "job_id, attempt, idx, name, state, exit_code, reason, summary, started_at, finished_at";

/// The most of a step's summary the store keeps, in bytes: a summary is a line or a few (a
/// digest, a scan's counts, a commit), and a backend that sends a whole report must not bloat
/// every read of the run.
pub const SUMMARY_MAX_BYTES: usize = 4096;

/// What ends a summary cut to [`SUMMARY_MAX_BYTES`].
const SUMMARY_CUT: &str = "\n… (cut: a summary keeps 4 KiB)";

/// A summary as stored: `None` when there is nothing to show (absent, or only white space),
/// NUL characters (which PostgreSQL's text refuses) replaced, cut at a character boundary with
/// a marker when longer than [`SUMMARY_MAX_BYTES`].
fn stored_summary(summary: Option<&str>) -> Option<String> {
    let s = summary.filter(|s| !s.trim().is_empty())?;
    let s = s.replace('\0', "\u{fffd}");
    if s.len() <= SUMMARY_MAX_BYTES {
        return Some(s);
    }
    let end = s.floor_char_boundary(SUMMARY_MAX_BYTES - SUMMARY_CUT.len());
    Some(format!("{}{SUMMARY_CUT}", &s[..end]))
}

fn run_from_row(row: &AnyRow) -> Result<RunRecord> {
    let c = Cols(row);
    Ok(RunRecord {
        run: Run {
            id: c.uuid("id")?,
            trigger: c.json("trigger", "trigger_json")?,
            pipeline: c.str("pipeline")?,
            state: c.state("state")?,
            created_at: c.ts("created_at")?,
            started_at: c.opt_ts("started_at")?,
            finished_at: c.opt_ts("finished_at")?,
            jobs: Vec::new(),
        },
        name: c.str("name")?,
        reason: c.opt_str("reason")?,
        cancel_requested: c.flag("cancel_requested")?,
        number: c.i64("number")?.max(0) as u64,
    })
}

fn job_from_row(row: &AnyRow) -> Result<Job> {
    let c = Cols(row);
    Ok(Job {
        id: c.uuid("id")?,
        run_id: c.uuid("run_id")?,
        name: c.str("name")?,
        attempt: c.i64("attempt")? as u32,
        needs: c.json("needs", "needs")?,
        spec: c.json("job spec", "spec")?,
        retries_left: c.i64("retries_left")? as u32,
        allow_failure: c.flag("allow_failure")?,
        run_if: parse_run_if(&c.str("run_if")?)?,
        state: c.state("state")?,
        reason: c.opt_str("reason")?,
        created_at: c.ts("created_at")?,
        started_at: c.opt_ts("started_at")?,
        finished_at: c.opt_ts("finished_at")?,
        steps: Vec::new(),
    })
}

fn step_from_row(row: &AnyRow) -> Result<((JobId, u32), Step)> {
    let c = Cols(row);
    let key = (c.uuid("job_id")?, c.i64("attempt")? as u32);
    Ok((
        key,
        Step {
            index: c.i64("idx")? as usize,
            name: c.str("name")?,
            state: c.state("state")?,
            exit_code: c.opt_i64("exit_code")?.map(|x| x as i32),
            reason: c.opt_str("reason")?,
            summary: c.opt_str("summary")?,
            started_at: c.opt_ts("started_at")?,
            finished_at: c.opt_ts("finished_at")?,
        },
    ))
}

/// Attaches the steps to their attempts.
fn attach_steps(jobs: &mut [Job], steps: Vec<((JobId, u32), Step)>) {
    let mut by_key: HashMap<(JobId, u32), Vec<Step>> = HashMap::new();
    for (key, step) in steps {
        by_key.entry(key).or_default().push(step);
    }
    for job in jobs {
        if let Some(mut steps) = by_key.remove(&(job.id, job.attempt)) {
            steps.sort_by_key(|s| s.index);
            job.steps = steps;
        }
    }
}

pub(crate) async fn load_run(conn: &mut AnyConnection, id: RunId) -> Result<Option<RunRecord>> {
    let row = sqlx::query(&format!("SELECT {RUN_COLS} FROM runs WHERE id = $1"))
        .bind(id.to_string())
        .fetch_optional(&mut *conn)
        .await?;
    let Some(row) = row else { return Ok(None) };
    let mut record = run_from_row(&row)?;
    let rows = sqlx::query(&format!(
        "SELECT {JOB_COLS} FROM jobs WHERE run_id = $1 ORDER BY position, attempt"
    ))
    .bind(id.to_string())
    .fetch_all(&mut *conn)
    .await?;
    let mut jobs = rows.iter().map(job_from_row).collect::<Result<Vec<_>>>()?;
    let rows = sqlx::query(&format!("SELECT {STEP_COLS} FROM steps WHERE run_id = $1"))
        .bind(id.to_string())
        .fetch_all(&mut *conn)
        .await?;
    let steps = rows.iter().map(step_from_row).collect::<Result<Vec<_>>>()?;
    attach_steps(&mut jobs, steps);
    record.run.jobs = jobs;
    Ok(Some(record))
}

pub(crate) async fn load_job(
    conn: &mut AnyConnection,
    id: JobId,
    attempt: Option<u32>,
) -> Result<Option<Job>> {
    let row = match attempt {
        Some(attempt) => {
            sqlx::query(&format!(
                "SELECT {JOB_COLS} FROM jobs WHERE id = $1 AND attempt = $2"
            ))
            .bind(id.to_string())
            .bind(i64::from(attempt))
            .fetch_optional(&mut *conn)
            .await?
        }
        None => {
            sqlx::query(&format!(
                "SELECT {JOB_COLS} FROM jobs WHERE id = $1 AND is_latest = 1"
            ))
            .bind(id.to_string())
            .fetch_optional(&mut *conn)
            .await?
        }
    };
    let Some(row) = row else { return Ok(None) };
    let mut job = job_from_row(&row)?;
    let rows = sqlx::query(&format!(
        "SELECT {STEP_COLS} FROM steps WHERE job_id = $1 AND attempt = $2"
    ))
    .bind(id.to_string())
    .bind(i64::from(job.attempt))
    .fetch_all(&mut *conn)
    .await?;
    let steps = rows.iter().map(step_from_row).collect::<Result<Vec<_>>>()?;
    attach_steps(std::slice::from_mut(&mut job), steps);
    Ok(Some(job))
}

pub(crate) async fn list_runs(
    conn: &mut AnyConnection,
    filter: &RunFilter,
    page: Page,
) -> Result<Vec<RunRecord>> {
    let mut sql = format!("SELECT {RUN_COLS} FROM runs WHERE 1 = 1");
    let mut binds = Vec::new();
    let mut cond = |sql: &mut String, column: &str, value: Bind| {
        binds.push(value);
        sql.push_str(&format!(" AND {column} = ${}", binds.len()));
    };
    if let Some(forge) = filter.forge {
        cond(&mut sql, "forge", Bind::S(forge.as_str().to_owned()));
    }
    if let Some(repo) = &filter.repo {
        cond(&mut sql, "repo", Bind::S(repo.clone()));
    }
    if let Some(branch) = &filter.branch {
        cond(&mut sql, "branch", Bind::S(branch.clone()));
    }
    if let Some(pipeline) = &filter.pipeline {
        cond(&mut sql, "pipeline", Bind::S(pipeline.clone()));
    }
    if let Some(event) = filter.event {
        cond(&mut sql, "event", Bind::S(event.as_str().to_owned()));
    }
    if let Some(pr) = filter.pr_number {
        cond(&mut sql, "pr_number", Bind::I(pr as i64));
    }
    if !filter.states.is_empty() {
        let list: Vec<String> = filter
            .states
            .iter()
            .map(|s| format!("'{}'", s.as_str()))
            .collect();
        sql.push_str(&format!(" AND state IN ({})", list.join(", ")));
    }
    if let Some(before) = page.before {
        binds.push(Bind::S(before.to_string()));
        sql.push_str(&format!(" AND id < ${}", binds.len()));
    }
    sql.push_str(&format!(" ORDER BY id DESC LIMIT {}", page.limit.max(1)));
    let mut query = sqlx::query(&sql);
    for bind in binds {
        query = match bind {
            Bind::S(s) => query.bind(s),
            Bind::I(i) => query.bind(i),
        };
    }
    let rows = query.fetch_all(&mut *conn).await?;
    rows.iter().map(run_from_row).collect()
}

pub(crate) async fn jobs_in_states(conn: &mut AnyConnection, states: &[State]) -> Result<Vec<Job>> {
    let list: Vec<String> = states.iter().map(|s| format!("'{}'", s.as_str())).collect();
    let rows = sqlx::query(&format!(
        "SELECT {JOB_COLS} FROM jobs WHERE state IN ({}) ORDER BY id, attempt",
        list.join(", ")
    ))
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(job_from_row).collect()
}

/// Jobs handed to the backend and not finished: in total, and by repository key.
pub(crate) async fn running_counts(
    conn: &mut AnyConnection,
) -> Result<(u64, HashMap<String, u64>)> {
    let rows = sqlx::query(
        "SELECT repo_key, COUNT(*) AS n FROM jobs WHERE state IN ('pending', 'running') \
         GROUP BY repo_key",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut total = 0;
    let mut by_repo = HashMap::new();
    for row in &rows {
        let c = Cols(row);
        let n = c.i64("n")? as u64;
        total += n;
        by_repo.insert(c.str("repo_key")?, n);
    }
    Ok((total, by_repo))
}

impl Store {
    /// A run with every attempt of every job and their steps.
    pub async fn get_run(&self, id: RunId) -> Result<Option<RunRecord>> {
        load_run(&mut *self.conn().await?, id).await
    }

    /// Runs matching `filter`, newest first, without their jobs.
    pub async fn list_runs(&self, filter: &RunFilter, page: Page) -> Result<Vec<RunRecord>> {
        list_runs(&mut *self.conn().await?, filter, page).await
    }

    /// One attempt of a job (the latest when `attempt` is `None`), with its steps.
    pub async fn get_job(&self, id: JobId, attempt: Option<u32>) -> Result<Option<Job>> {
        load_job(&mut *self.conn().await?, id, attempt).await
    }

    /// Every job attempt in one of `states` (without steps).
    pub async fn jobs_in_states(&self, states: &[State]) -> Result<Vec<Job>> {
        jobs_in_states(&mut *self.conn().await?, states).await
    }

    /// Attempts handed to a backend and not finished (pending or running): in total and by
    /// repository key (see [`repo_key`]).
    pub async fn running_counts(&self) -> Result<(u64, HashMap<String, u64>)> {
        running_counts(&mut *self.conn().await?).await
    }
}

/// The key that groups runs and jobs by repository for limits: `forge:owner/name`.
pub fn repo_key(trigger: &Trigger) -> String {
    format!("{}:{}", trigger.repo.forge, trigger.repo.full_name)
}

impl Tx {
    pub async fn get_run(&mut self, id: RunId) -> Result<Option<RunRecord>> {
        load_run(self.conn(), id).await
    }

    pub async fn get_job(&mut self, id: JobId, attempt: Option<u32>) -> Result<Option<Job>> {
        load_job(self.conn(), id, attempt).await
    }

    pub async fn list_runs(&mut self, filter: &RunFilter, page: Page) -> Result<Vec<RunRecord>> {
        list_runs(self.conn(), filter, page).await
    }

    pub async fn running_counts(&mut self) -> Result<(u64, HashMap<String, u64>)> {
        running_counts(self.conn()).await
    }

    /// Records a new run (its `jobs` are inserted separately with [`Tx::insert_job`]) and
    /// returns the number it got in its repository.
    pub async fn insert_run(&mut self, record: &RunRecord) -> Result<u64> {
        let run = &record.run;
        let t = &run.trigger;
        let number: i64 = sqlx::query(
            "INSERT INTO run_numbers (forge, repo, last) VALUES ($1, $2, 1) \
             ON CONFLICT (forge, repo) DO UPDATE SET last = run_numbers.last + 1 \
             RETURNING last",
        )
        .bind(t.repo.forge.as_str())
        .bind(t.repo.full_name.clone())
        .fetch_one(self.conn())
        .await?
        .try_get("last")?;
        sqlx::query(
            "INSERT INTO runs (id, forge, repo, pipeline, name, event, git_ref, branch, sha, \
             pr_number, trigger_json, state, reason, cancel_requested, created_at, started_at, \
             finished_at, updated_at, number) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)",
        )
        .bind(run.id.to_string())
        .bind(t.repo.forge.as_str())
        .bind(t.repo.full_name.clone())
        .bind(run.pipeline.clone())
        .bind(record.name.clone())
        .bind(t.event.as_str())
        .bind(t.git_ref.clone())
        .bind(t.branch.clone())
        .bind(t.sha.clone())
        .bind(t.pull_request.as_ref().map(|pr| pr.number as i64))
        .bind(json(t))
        .bind(run.state.as_str())
        .bind(record.reason.clone())
        .bind(flag(record.cancel_requested))
        .bind(ts(run.created_at))
        .bind(opt_ts(run.started_at))
        .bind(opt_ts(run.finished_at))
        .bind(ts(run.created_at))
        .bind(number)
        .execute(self.conn())
        .await?;
        Ok(number.max(0) as u64)
    }

    /// Records a job attempt and its steps (as the attempt's `steps`, or, when it has none,
    /// one per step of its spec, in the job's state). A later attempt becomes the job's latest.
    pub async fn insert_job(&mut self, job: &Job, position: usize, repo_key: &str) -> Result<()> {
        sqlx::query("UPDATE jobs SET is_latest = 0 WHERE id = $1")
            .bind(job.id.to_string())
            .execute(self.conn())
            .await?;
        sqlx::query(
            "INSERT INTO jobs (id, attempt, run_id, repo_key, name, position, is_latest, needs, \
             spec, retries_left, allow_failure, run_if, state, reason, created_at, queued_at, \
             started_at, finished_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, 1, $7, $8, $9, $10, $11, $12, $13, $14, NULL, $15, $16, $17)",
        )
        .bind(job.id.to_string())
        .bind(i64::from(job.attempt))
        .bind(job.run_id.to_string())
        .bind(repo_key.to_owned())
        .bind(job.name.clone())
        .bind(position as i64)
        .bind(json(&job.needs))
        .bind(json(&job.spec))
        .bind(i64::from(job.retries_left))
        .bind(flag(job.allow_failure))
        .bind(run_if_str(job.run_if))
        .bind(job.state.as_str())
        .bind(job.reason.clone())
        .bind(ts(job.created_at))
        .bind(opt_ts(job.started_at))
        .bind(opt_ts(job.finished_at))
        .bind(ts(job.created_at))
        .execute(self.conn())
        .await?;
        let steps: Vec<Step> = if job.steps.is_empty() {
            job.spec
                .steps
                .iter()
                .enumerate()
                .map(|(index, s)| Step {
                    index,
                    name: s.name.clone(),
                    state: job.state,
                    exit_code: None,
                    reason: None,
                    summary: None,
                    started_at: None,
                    finished_at: job.finished_at,
                })
                .collect()
        } else {
            job.steps.clone()
        };
        for step in steps {
            sqlx::query(
                "INSERT INTO steps (job_id, attempt, idx, run_id, name, state, exit_code, reason, \
                 summary, started_at, finished_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            )
            .bind(job.id.to_string())
            .bind(i64::from(job.attempt))
            .bind(step.index as i64)
            .bind(job.run_id.to_string())
            .bind(step.name)
            .bind(step.state.as_str())
            .bind(step.exit_code.map(i64::from))
            .bind(step.reason)
            .bind(stored_summary(step.summary.as_deref()))
            .bind(opt_ts(step.started_at))
            .bind(opt_ts(step.finished_at))
            .execute(self.conn())
            .await?;
        }
        Ok(())
    }

    /// Moves a run to `state` at `at`: `running` sets its start (once), a final state its end.
    /// `reason` replaces the stored one when given.
    pub async fn set_run_state(
        &mut self,
        id: RunId,
        state: State,
        reason: Option<&str>,
        at: Timestamp,
    ) -> Result<()> {
        let at = ts(at);
        sqlx::query(
            "UPDATE runs SET state = $1, reason = COALESCE($2, reason), updated_at = $3, \
             started_at = CASE WHEN $4 = 1 AND started_at IS NULL THEN $3 ELSE started_at END, \
             finished_at = CASE WHEN $5 = 1 THEN $3 ELSE NULL END \
             WHERE id = $6",
        )
        .bind(state.as_str())
        .bind(reason.map(str::to_owned))
        .bind(at)
        .bind(flag(state == State::Running))
        .bind(flag(state.is_final()))
        .bind(id.to_string())
        .execute(self.conn())
        .await?;
        Ok(())
    }

    /// Marks a run as asked to cancel, with why.
    pub async fn request_run_cancel(&mut self, id: RunId, reason: &str) -> Result<()> {
        sqlx::query("UPDATE runs SET cancel_requested = 1, reason = $1 WHERE id = $2")
            .bind(reason.to_owned())
            .bind(id.to_string())
            .execute(self.conn())
            .await?;
        Ok(())
    }

    /// Opens a finished run again (for a retry): running, no end, no cancel, no reason.
    pub async fn reopen_run(&mut self, id: RunId, at: Timestamp) -> Result<()> {
        sqlx::query(
            "UPDATE runs SET state = 'running', finished_at = NULL, reason = NULL, \
             cancel_requested = 0, updated_at = $1 WHERE id = $2",
        )
        .bind(ts(at))
        .bind(id.to_string())
        .execute(self.conn())
        .await?;
        Ok(())
    }

    /// Moves a job attempt to `state` at `at`: `running` sets its start (once), a final state
    /// its end. `reason` replaces the stored one when given.
    pub async fn set_job_state(
        &mut self,
        id: JobId,
        attempt: u32,
        state: State,
        reason: Option<&str>,
        at: Timestamp,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE jobs SET state = $1, reason = COALESCE($2, reason), updated_at = $3, \
             started_at = CASE WHEN $4 = 1 AND started_at IS NULL THEN $3 ELSE started_at END, \
             finished_at = CASE WHEN $5 = 1 THEN $3 ELSE NULL END \
             WHERE id = $6 AND attempt = $7",
        )
        .bind(state.as_str())
        .bind(reason.map(str::to_owned))
        .bind(ts(at))
        .bind(flag(state == State::Running))
        .bind(flag(state.is_final()))
        .bind(id.to_string())
        .bind(i64::from(attempt))
        .execute(self.conn())
        .await?;
        Ok(())
    }

    /// Moves a step to `state` at `at` (see [`Tx::set_job_state`]); `exit_code`, `reason` and
    /// `summary` are recorded when given (the summary capped at [`SUMMARY_MAX_BYTES`]), and
    /// the stored ones kept when not.
    #[allow(clippy::too_many_arguments)]
    pub async fn set_step_state(
        &mut self,
        id: JobId,
        attempt: u32,
        index: usize,
        state: State,
        exit_code: Option<i32>,
        reason: Option<&str>,
        summary: Option<&str>,
        at: Timestamp,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE steps SET state = $1, exit_code = COALESCE($2, exit_code), \
             reason = COALESCE($3, reason), summary = COALESCE($10, summary), \
             started_at = CASE WHEN $4 = 1 AND started_at IS NULL THEN $5 ELSE started_at END, \
             finished_at = CASE WHEN $6 = 1 THEN $5 ELSE NULL END \
             WHERE job_id = $7 AND attempt = $8 AND idx = $9",
        )
        .bind(state.as_str())
        .bind(exit_code.map(i64::from))
        .bind(reason.map(str::to_owned))
        .bind(flag(state == State::Running))
        .bind(ts(at))
        .bind(flag(state.is_final()))
        .bind(id.to_string())
        .bind(i64::from(attempt))
        .bind(index as i64)
        .bind(stored_summary(summary))
        .execute(self.conn())
        .await?;
        Ok(())
    }

    /// Ends the steps of an attempt that had not ended: those that had started become
    /// `started_to`, those that had not become `unstarted_to`.
    pub async fn close_open_steps(
        &mut self,
        id: JobId,
        attempt: u32,
        started_to: State,
        unstarted_to: State,
        at: Timestamp,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE steps SET finished_at = $1, \
             state = CASE WHEN state IN ('pending', 'running') THEN $2 ELSE $3 END \
             WHERE job_id = $4 AND attempt = $5 AND state IN ('queued', 'pending', 'running')",
        )
        .bind(ts(at))
        .bind(started_to.as_str())
        .bind(unstarted_to.as_str())
        .bind(id.to_string())
        .bind(i64::from(attempt))
        .execute(self.conn())
        .await?;
        Ok(())
    }
}
