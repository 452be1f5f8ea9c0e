//! The state machine: every change of a run's, job's or step's state, under the engine's lock,
//! each in one transaction with the statuses it causes.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use gantry_core::{
    Checkout, Job, JobEvent, JobEventKind, JobId, JobRequest, Resume, Run, RunId, State,
    StepResume, Trigger,
};
use gantry_store::{EngineAction, Page, QueueEntry, RunFilter, RunRecord, Tx, repo_key};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::engine::Inner;
use crate::status;
use crate::{Error, Result};

/// The reason of a cancel asked for through the API or the viewer.
pub(crate) const BY_HAND: &str = "cancelled by hand";

/// Why a job did not run: a job it needs failed (this passes the failure on).
pub const SKIP_UPSTREAM_FAILED: &str = "a job it needs failed";
/// Why a `when: { status: failure }` job did not run.
pub const SKIP_NOTHING_FAILED: &str = "it runs only when a job it needs failed";
/// Why an attempt that was running when the server stopped ended as `error`.
pub const RESTART_REASON: &str =
    "the server stopped while the job ran; local processes do not survive a restart";

/// What the engine tracks of one attempt handed to the backend.
#[derive(Debug, Default)]
pub(crate) struct Tracking {
    timeout: Option<Duration>,
    deadline: Option<Instant>,
    /// The job timed out: the backend's `cancelled` is recorded as this failure.
    timed_out: Option<String>,
    /// A cancel was asked for, with why.
    cancel: Option<String>,
    cancel_sent_at: Option<Instant>,
    /// When the attempt was handed to the backend and whether a step has started since (for
    /// the pod start latency).
    handed_at: Option<Instant>,
    step_seen: bool,
    /// Some of the attempt's progress could not be recorded (the store refused a write): it is
    /// ended as an error with this reason, once the store can be written again.
    unrecorded: Option<String>,
    /// The backend has reported the attempt's end, but the end could not be recorded yet.
    ended: bool,
}

/// Attempts handed to the backend and not finished, by job and attempt.
pub(crate) type Active = HashMap<(JobId, u32), Tracking>;

fn latest_attempts(run: &Run) -> Vec<&Job> {
    // Jobs come in plan order, attempts ascending: the last row of a job is its latest.
    let mut latest: Vec<&Job> = Vec::new();
    for job in &run.jobs {
        match latest.iter_mut().find(|j| j.id == job.id) {
            Some(slot) => *slot = job,
            None => latest.push(job),
        }
    }
    latest
}

fn position_of(run: &Run, name: &str) -> usize {
    let mut seen: Vec<&str> = Vec::new();
    for job in &run.jobs {
        if !seen.contains(&job.name.as_str()) {
            seen.push(&job.name);
        }
    }
    seen.iter().position(|n| *n == name).unwrap_or(seen.len())
}

/// Does each job's end count against the jobs that need it?
fn blocking(latest: &[&Job]) -> HashMap<String, bool> {
    let mut blocks: HashMap<String, bool> = HashMap::new();
    for job in latest {
        let b = match job.state {
            State::Failure | State::Error | State::Cancelled => !job.allow_failure,
            // A job skipped because a need failed passes the failure on.
            State::Skipped => job
                .needs
                .iter()
                .any(|n| blocks.get(n).copied().unwrap_or(false)),
            _ => false,
        };
        blocks.insert(job.name.clone(), b);
    }
    blocks
}

/// Should a manual retry run this job again?
fn retryable(job: &Job) -> bool {
    match job.state {
        State::Failure | State::Error | State::Cancelled => true,
        State::Skipped => job.reason.as_deref() == Some(SKIP_UPSTREAM_FAILED),
        _ => false,
    }
}

fn final_description(state: State, reason: Option<&str>) -> String {
    match (state, reason) {
        (State::Success, _) => "passed".into(),
        (State::Skipped, Some(r)) => format!("skipped: {r}"),
        (State::Skipped, None) => "skipped".into(),
        (state, Some(r)) => format!("{state}: {r}"),
        (State::Failure, None) => "failed".into(),
        (state, None) => state.to_string(),
    }
}

async fn request(run: &RunRecord, job: &Job, secrets: &crate::SecretPolicy) -> JobRequest {
    let t = &run.run.trigger;
    JobRequest {
        run_id: run.run.id,
        job_id: job.id,
        attempt: job.attempt,
        checkout: Checkout {
            repo: t.repo.clone(),
            git_ref: t.git_ref.clone(),
            sha: t.sha.clone(),
        },
        pull_request: t.pull_request.clone(),
        spec: job.spec.clone(),
        // Only granted secrets, and only where Gantry can read their values: the local backend
        // puts them in the job's environment, the log sink masks them; the Kubernetes backend
        // references the Secrets from the Pod and ignores them.
        secret_values: secrets.values_for(t, &job.spec).await,
    }
}

/// The pipeline name a file gets when it has none (or does not parse): its file name without
/// the extension and leading dots, as the pipeline language defines it.
fn default_name(file: &str) -> String {
    let base = file.rsplit(['/', '\\']).next().unwrap_or(file);
    let stem = base
        .strip_suffix(".yaml")
        .or_else(|| base.strip_suffix(".yml"))
        .unwrap_or(base)
        .trim_start_matches('.');
    if stem.is_empty() {
        "pipeline".into()
    } else {
        stem.into()
    }
}

pub(crate) fn humanize(d: Duration) -> String {
    let s = d.as_secs();
    if d.subsec_millis() != 0 || s == 0 {
        format!("{}ms", d.as_millis())
    } else if s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

impl Inner {
    fn check_open(&self) -> Result<()> {
        if self.token.is_cancelled() {
            Err(Error::ShuttingDown)
        } else {
            Ok(())
        }
    }

    // ---- submit ----

    pub(crate) async fn submit(
        &self,
        trigger: Trigger,
        files: Vec<(String, String)>,
    ) -> Result<Vec<RunId>> {
        self.check_open()?;
        let mut active = self.active.lock().await;
        let mut ids = Vec::new();
        for (file, source) in files {
            let pipeline = match gantry_pipeline::parse(&file, &source) {
                Ok(pipeline) => pipeline,
                Err(diagnostics) => {
                    ids.push(self.record_invalid(&trigger, &file, &diagnostics).await?);
                    continue;
                }
            };
            if !pipeline.triggered_by(&trigger) {
                continue;
            }
            let run_id = RunId::new();
            let run_url = self
                .config
                .public_url
                .as_deref()
                .map(|u| format!("{}/runs/{run_id}", u.trim_end_matches('/')));
            let mut plan = gantry_pipeline::plan(
                &pipeline,
                &gantry_pipeline::PlanContext {
                    trigger: &trigger,
                    run_id,
                    file: &file,
                    run_url: run_url.as_deref(),
                },
            );
            // Every job gets a deadline; one asking for more than the operator allows is
            // refused before anything runs (and before it supersedes anything).
            let timeouts = &self.config.job_timeouts;
            if let Err(refused) = plan
                .jobs
                .iter_mut()
                .try_for_each(|job| timeouts.apply(&job.name, &mut job.spec))
            {
                let name = pipeline.name().to_owned();
                ids.push(self.record_refused(&trigger, &file, name, &refused).await?);
                continue;
            }
            self.supersede(&mut active, &trigger, &file, run_id).await?;
            let now = gantry_core::now();
            let mut record = RunRecord {
                run: Run {
                    id: run_id,
                    trigger: trigger.clone(),
                    pipeline: file.clone(),
                    state: State::Queued,
                    created_at: now,
                    started_at: None,
                    finished_at: None,
                    jobs: Vec::new(),
                },
                name: pipeline.name().to_owned(),
                reason: None,
                cancel_requested: false,
                number: 0,
            };
            let key = repo_key(&trigger);
            let mut tx = self.store.begin().await?;
            record.number = tx.insert_run(&record).await?;
            status::push_run(&mut tx, &self.config, &record, State::Queued, "queued").await?;
            for (position, planned) in plan.jobs.into_iter().enumerate() {
                let state = if planned.skipped.is_some() {
                    State::Skipped
                } else {
                    State::Queued
                };
                let job = Job {
                    id: JobId::new(),
                    run_id,
                    name: planned.name,
                    attempt: 1,
                    needs: planned.needs,
                    spec: planned.spec,
                    retries_left: planned.retry,
                    allow_failure: planned.allow_failure,
                    run_if: planned.run_if,
                    state,
                    reason: planned.skipped.clone(),
                    created_at: now,
                    started_at: None,
                    finished_at: state.is_final().then_some(now),
                    steps: Vec::new(),
                };
                tx.insert_job(&job, position, &key).await?;
                let text = match &planned.skipped {
                    Some(reason) => format!("skipped: {reason}"),
                    None if job.needs.is_empty() => "queued".into(),
                    None => format!("waiting for {}", job.needs.join(", ")),
                };
                status::push_job(&mut tx, &self.config, &record, &job, state, &text).await?;
            }
            self.progress_run(&mut tx, run_id).await?;
            tx.commit().await?;
            tracing::info!(run = %run_id, pipeline = %file, repo = %trigger.repo.full_name, sha = %trigger.sha, "run queued");
            self.observer.run_created();
            ids.push(run_id);
        }
        drop(active);
        self.wake.notify_one();
        self.report_wake.notify_one();
        Ok(ids)
    }

    async fn record_invalid(
        &self,
        trigger: &Trigger,
        file: &str,
        diagnostics: &gantry_pipeline::Diagnostics,
    ) -> Result<RunId> {
        let errors: Vec<String> = diagnostics.errors().map(|d| d.to_string()).collect();
        let first = diagnostics
            .errors()
            .next()
            .map_or_else(|| "invalid pipeline".to_owned(), |d| d.message.clone());
        let text = format!("invalid pipeline {file}: {first}");
        let id = self
            .record_error(trigger, file, default_name(file), errors.join("\n"), &text)
            .await?;
        tracing::warn!(run = %id, pipeline = %file, "pipeline does not parse");
        Ok(id)
    }

    /// A pipeline that parses but that this server will not run (a timeout above the maximum).
    async fn record_refused(
        &self,
        trigger: &Trigger,
        file: &str,
        name: String,
        refused: &crate::TimeoutTooLong,
    ) -> Result<RunId> {
        let reason = format!("{file}: {refused}");
        let text = format!("refused pipeline {reason}");
        let id = self
            .record_error(trigger, file, name, reason, &text)
            .await?;
        tracing::warn!(run = %id, pipeline = %file, reason = %refused, "pipeline refused");
        Ok(id)
    }

    /// A run that ends in `error` as it is created, with `reason`, and its error status.
    async fn record_error(
        &self,
        trigger: &Trigger,
        file: &str,
        name: String,
        reason: String,
        status_text: &str,
    ) -> Result<RunId> {
        let now = gantry_core::now();
        let mut record = RunRecord {
            run: Run {
                id: RunId::new(),
                trigger: trigger.clone(),
                pipeline: file.to_owned(),
                state: State::Error,
                created_at: now,
                started_at: None,
                finished_at: Some(now),
                jobs: Vec::new(),
            },
            name,
            reason: Some(reason),
            cancel_requested: false,
            number: 0,
        };
        let mut tx = self.store.begin().await?;
        record.number = tx.insert_run(&record).await?;
        status::push_run(&mut tx, &self.config, &record, State::Error, status_text).await?;
        tx.commit().await?;
        Ok(record.run.id)
    }

    /// Cancels the runs a new run for `trigger` and `file` supersedes.
    async fn supersede(
        &self,
        active: &mut Active,
        trigger: &Trigger,
        file: &str,
        new_run: RunId,
    ) -> Result<()> {
        if !self.config.supersede.applies_to(trigger) {
            return Ok(());
        }
        let mut filter = RunFilter {
            forge: Some(trigger.repo.forge),
            repo: Some(trigger.repo.full_name.clone()),
            pipeline: Some(file.to_owned()),
            event: Some(trigger.event),
            states: vec![State::Queued, State::Pending, State::Running],
            ..RunFilter::default()
        };
        match (&trigger.pull_request, &trigger.branch) {
            (Some(pr), _) => filter.pr_number = Some(pr.number),
            (None, Some(branch)) if trigger.event == gantry_core::Event::Push => {
                filter.branch = Some(branch.clone());
            }
            _ => return Ok(()),
        }
        let page = Page {
            limit: 1000,
            before: None,
        };
        let older = self.store.list_runs(&filter, page).await?;
        for run in older {
            let reason = format!("superseded by run {new_run}");
            if self.is_started() {
                self.cancel_run_locked(active, run.run.id, &reason).await?;
            } else {
                // A replica that does not lead: the leader's engine cancels it.
                let at = gantry_core::now();
                self.store
                    .request(EngineAction::CancelRun, run.run.id.0, Some(&reason), at)
                    .await?;
            }
        }
        Ok(())
    }

    // ---- DAG progression ----

    /// Moves a run along: queues the jobs whose needs have ended (or skips them when their
    /// `when: status` does not admit how the needs went), cancels what has not started in a
    /// cancelled run, and ends the run when every job has.
    pub(crate) async fn progress_run(&self, tx: &mut Tx, run_id: RunId) -> Result<()> {
        loop {
            let Some(run) = tx.get_run(run_id).await? else {
                return Ok(());
            };
            if run.run.state.is_final() {
                return Ok(());
            }
            let latest = latest_attempts(&run.run);
            let queued: HashSet<(JobId, u32)> = tx
                .queue()
                .await?
                .into_iter()
                .filter(|e| e.run_id == run_id)
                .map(|e| (e.job_id, e.attempt))
                .collect();
            let by_name: HashMap<&str, &Job> =
                latest.iter().map(|j| (j.name.as_str(), *j)).collect();
            let blocks = blocking(&latest);
            let now = gantry_core::now();
            let mut changed = false;
            for job in &latest {
                if job.state != State::Queued || queued.contains(&(job.id, job.attempt)) {
                    continue;
                }
                if run.cancel_requested {
                    let reason = run.reason.as_deref().unwrap_or("the run was cancelled");
                    self.end_unstarted(tx, &run, job, State::Cancelled, reason)
                        .await?;
                    changed = true;
                    continue;
                }
                let needs_done = job
                    .needs
                    .iter()
                    .all(|n| by_name.get(n.as_str()).is_none_or(|j| j.state.is_final()));
                if !needs_done {
                    continue;
                }
                let upstream_failed = job
                    .needs
                    .iter()
                    .any(|n| blocks.get(n).copied().unwrap_or(false));
                if job.run_if.admits(upstream_failed) {
                    tx.enqueue(
                        job.id,
                        job.attempt,
                        run_id,
                        &repo_key(&run.run.trigger),
                        now,
                    )
                    .await?;
                    status::push_job(tx, &self.config, &run, job, State::Queued, "queued").await?;
                } else {
                    let reason = if upstream_failed {
                        SKIP_UPSTREAM_FAILED
                    } else {
                        SKIP_NOTHING_FAILED
                    };
                    self.end_unstarted(tx, &run, job, State::Skipped, reason)
                        .await?;
                    changed = true;
                }
            }
            if changed {
                continue;
            }
            if latest.iter().all(|j| j.state.is_final()) {
                self.finish_run(tx, &run, &latest).await?;
            }
            return Ok(());
        }
    }

    /// Ends a job attempt that never started.
    async fn end_unstarted(
        &self,
        tx: &mut Tx,
        run: &RunRecord,
        job: &Job,
        state: State,
        reason: &str,
    ) -> Result<()> {
        let now = gantry_core::now();
        tx.dequeue(job.id, job.attempt).await?;
        tx.set_job_state(job.id, job.attempt, state, Some(reason), now)
            .await?;
        tx.close_open_steps(job.id, job.attempt, state, state, now)
            .await?;
        let text = final_description(state, Some(reason));
        status::push_job(tx, &self.config, run, job, state, &text).await
    }

    async fn finish_run(&self, tx: &mut Tx, run: &RunRecord, latest: &[&Job]) -> Result<()> {
        let counting: Vec<&&Job> = latest.iter().filter(|j| !j.allow_failure).collect();
        let with = |state: State| -> Vec<&str> {
            counting
                .iter()
                .filter(|j| j.state == state)
                .map(|j| j.name.as_str())
                .collect()
        };
        let (failed, errored, cancelled) = (
            with(State::Failure),
            with(State::Error),
            with(State::Cancelled),
        );
        let (state, reason) = if run.cancel_requested {
            (State::Cancelled, None)
        } else if !failed.is_empty() {
            (
                State::Failure,
                Some(format!("failed: {}", failed.join(", "))),
            )
        } else if !errored.is_empty() {
            (
                State::Error,
                Some(format!("error in {}", errored.join(", "))),
            )
        } else if !cancelled.is_empty() {
            (
                State::Cancelled,
                Some(format!("cancelled: {}", cancelled.join(", "))),
            )
        } else {
            (State::Success, None)
        };
        tx.set_run_state(run.run.id, state, reason.as_deref(), gantry_core::now())
            .await?;
        let text = match (state, reason.as_deref().or(run.reason.as_deref())) {
            (State::Success, _) => "passed".to_owned(),
            (_, Some(r)) => r.to_owned(),
            (state, None) => state.to_string(),
        };
        status::push_run(tx, &self.config, run, state, &text).await?;
        tracing::info!(run = %run.run.id, %state, "run finished");
        self.observer.run_finished(state);
        Ok(())
    }

    // ---- starting and finishing attempts ----

    /// Starts queued attempts, first in first out, while the limits allow.
    pub(crate) async fn schedule(&self, active: &mut Active) -> Result<()> {
        // Every slot taken (the usual case with a backlog): the queue, which grows with the
        // backlog, is not read at all.
        let (mut total, mut by_repo) = self.store.running_counts().await?;
        if total >= self.config.max_running_jobs as u64 {
            return Ok(());
        }
        let queue = self.store.queue().await?;
        for entry in queue {
            if self.token.is_cancelled() || total >= self.config.max_running_jobs as u64 {
                break;
            }
            let running = by_repo.entry(entry.repo_key.clone()).or_default();
            if *running >= self.config.max_running_per_repo as u64 {
                continue;
            }
            if self.start_attempt(active, &entry).await? {
                total += 1;
                *running += 1;
            }
        }
        Ok(())
    }

    async fn start_attempt(&self, active: &mut Active, entry: &QueueEntry) -> Result<bool> {
        let (job, run) = {
            let mut tx = self.store.begin().await?;
            let job = tx.get_job(entry.job_id, Some(entry.attempt)).await?;
            let run = tx.get_run(entry.run_id).await?;
            let (Some(job), Some(run)) = (job, run) else {
                tx.dequeue(entry.job_id, entry.attempt).await?;
                tx.commit().await?;
                return Ok(false);
            };
            if !tx.dequeue(job.id, job.attempt).await? || job.state != State::Queued {
                tx.commit().await?;
                return Ok(false);
            }
            let now = gantry_core::now();
            tx.set_job_state(job.id, job.attempt, State::Pending, None, now)
                .await?;
            if run.run.state == State::Queued {
                tx.set_run_state(run.run.id, State::Running, None, now)
                    .await?;
                status::push_run(&mut tx, &self.config, &run, State::Running, "running").await?;
            }
            tx.commit().await?;
            (job, run)
        };
        self.observer
            .job_started(crate::observe::since(entry.enqueued_at));
        active.insert(
            (job.id, job.attempt),
            Tracking {
                timeout: job.spec.timeout,
                deadline: job.spec.timeout.map(|t| Instant::now() + t),
                handed_at: Some(Instant::now()),
                ..Tracking::default()
            },
        );
        tracing::debug!(run = %run.run.id, job = %job.id, attempt = job.attempt, name = %job.name, "starting job");
        let job_request = request(&run, &job, &self.config.secrets).await;
        // Before the backend can send a line: the log sink learns the secrets to mask.
        self.logs.attempt_started(&job_request).await;
        if let Err(err) = self
            .backend
            .start(job_request, self.events_tx.clone())
            .await
        {
            tracing::warn!(job = %job.id, %err, "backend refused the job");
            self.finish_attempt(
                active,
                job.id,
                job.attempt,
                State::Error,
                Some(err.to_string()),
            )
            .await?;
        }
        Ok(true)
    }

    /// Ends an attempt as the backend (or a deadline) says, retries it when it failed and has
    /// retries left, and moves its run along.
    pub(crate) async fn finish_attempt(
        &self,
        active: &mut Active,
        job_id: JobId,
        attempt: u32,
        state: State,
        reason: Option<String>,
    ) -> Result<()> {
        let key = (job_id, attempt);
        let tracking = active.remove(&key).unwrap_or_default();
        let (state, reason) = match &tracking.unrecorded {
            Some(why) => (State::Error, Some(why.clone())),
            None => (state, reason),
        };
        match self
            .record_finish(&tracking, job_id, attempt, state, reason)
            .await
        {
            Ok(()) => {
                if tracking.unrecorded.is_some() {
                    // The store takes writes again: the step logs can get what the full disk
                    // kept out (the notice of lost lines, the end markers).
                    self.logs.attempt_finished(job_id, attempt).await;
                }
                Ok(())
            }
            Err(err) => {
                // Not recorded: keep tracking the attempt, so that the next tick records its
                // end once the store can be written (the backend will not say it again).
                let mut tracking = tracking;
                tracking.ended = true;
                tracking
                    .unrecorded
                    .get_or_insert_with(|| unrecorded_reason(&err));
                active.insert(key, tracking);
                Err(err)
            }
        }
    }

    /// Records an attempt's end (see [`Inner::finish_attempt`]).
    async fn record_finish(
        &self,
        tracking: &Tracking,
        job_id: JobId,
        attempt: u32,
        state: State,
        reason: Option<String>,
    ) -> Result<()> {
        let (state, reason) = match (&tracking.timed_out, &tracking.cancel, state) {
            (Some(why), _, State::Cancelled | State::Failure) => {
                (State::Failure, Some(why.clone()))
            }
            (None, Some(why), State::Cancelled) => (State::Cancelled, Some(why.clone())),
            _ => (state, reason),
        };
        let mut tx = self.store.begin().await?;
        let Some(job) = tx.get_job(job_id, Some(attempt)).await? else {
            return Ok(());
        };
        if job.state.is_final() {
            // Already ended (a late event after the engine gave up waiting).
            return Ok(());
        }
        let Some(run) = tx.get_run(job.run_id).await? else {
            return Ok(());
        };
        let now = gantry_core::now();
        let unstarted = if state == State::Cancelled {
            State::Cancelled
        } else {
            State::Skipped
        };
        let started = if state == State::Success {
            State::Skipped
        } else {
            state
        };
        tx.close_open_steps(job_id, attempt, started, unstarted, now)
            .await?;
        tx.set_job_state(job_id, attempt, state, reason.as_deref(), now)
            .await?;
        self.observer
            .job_finished(state, job.started_at.map(crate::observe::since));
        let retry = matches!(state, State::Failure | State::Error)
            && job.retries_left > 0
            && !run.cancel_requested;
        if retry {
            let next = Job {
                attempt: attempt + 1,
                retries_left: job.retries_left - 1,
                state: State::Queued,
                reason: None,
                created_at: now,
                started_at: None,
                finished_at: None,
                steps: Vec::new(),
                ..job.clone()
            };
            let key = repo_key(&run.run.trigger);
            tx.insert_job(&next, position_of(&run.run, &job.name), &key)
                .await?;
            tx.enqueue(next.id, next.attempt, run.run.id, &key, now)
                .await?;
            let why = reason.as_deref().unwrap_or(state.as_str());
            let text = format!("retrying (attempt {}): {why}", next.attempt);
            status::push_job(&mut tx, &self.config, &run, &next, State::Queued, &text).await?;
        } else {
            let text = final_description(state, reason.as_deref());
            status::push_job(&mut tx, &self.config, &run, &job, state, &text).await?;
        }
        self.progress_run(&mut tx, run.run.id).await?;
        tx.commit().await?;
        tracing::info!(job = %job_id, attempt, name = %job.name, %state, retry, "job attempt finished");
        self.wake.notify_one();
        self.report_wake.notify_one();
        Ok(())
    }

    // ---- backend events ----

    /// Handles one event; `true` when a slot may have freed.
    pub(crate) async fn on_event(&self, event: JobEvent) -> Result<bool> {
        let (job_id, attempt) = (event.job_id, event.attempt);
        if let JobEventKind::Log(line) = &event.kind {
            self.observer.log_line(line.text.len());
            if let Err(err) = self.logs.append(job_id, attempt, line).await {
                // The log store says so once per step, and marks the step's log incomplete.
                self.observer.log_line_lost(&err.to_string());
            }
            return Ok(false);
        }
        match &event.kind {
            JobEventKind::StepFinished { step, .. } => {
                self.logs.step_finished(job_id, attempt, *step).await;
            }
            JobEventKind::Finished { .. } => self.logs.attempt_finished(job_id, attempt).await,
            _ => {}
        }
        let mut active = self.active.lock().await;
        if let JobEventKind::Finished { state, reason } = event.kind {
            self.finish_attempt(&mut active, job_id, attempt, state, reason)
                .await?;
            return Ok(true);
        }
        let mut tx = self.store.begin().await?;
        let Some(job) = tx.get_job(job_id, Some(attempt)).await? else {
            return Ok(false);
        };
        if job.state.is_final() {
            return Ok(false);
        }
        // A step's end is recorded once: a start or an end reported again for a step that
        // ended (a backend re-attached after a restart may repeat what the store holds) must
        // not reopen it nor change how it ended.
        if let JobEventKind::StepStarted { step } | JobEventKind::StepFinished { step, .. } =
            &event.kind
            && job
                .steps
                .iter()
                .any(|s| s.index == *step && s.state.is_final())
        {
            return Ok(false);
        }
        match event.kind {
            JobEventKind::Started => {
                if job.state != State::Running {
                    tx.set_job_state(job_id, attempt, State::Running, None, event.at)
                        .await?;
                    if let Some(run) = tx.get_run(job.run_id).await? {
                        status::push_job(
                            &mut tx,
                            &self.config,
                            &run,
                            &job,
                            State::Running,
                            "running",
                        )
                        .await?;
                    }
                }
            }
            JobEventKind::StepStarted { step } => {
                if let Some(t) = active.get_mut(&(job_id, attempt))
                    && !std::mem::replace(&mut t.step_seen, true)
                    && let Some(at) = t.handed_at
                {
                    self.observer.first_step_started(at.elapsed());
                }
                tx.set_step_state(
                    job_id,
                    attempt,
                    step,
                    State::Running,
                    None,
                    None,
                    None,
                    event.at,
                )
                .await?;
            }
            JobEventKind::StepFinished { step, outcome } => {
                tx.set_step_state(
                    job_id,
                    attempt,
                    step,
                    outcome.state,
                    outcome.exit_code,
                    outcome.reason.as_deref(),
                    outcome.summary.as_deref(),
                    event.at,
                )
                .await?;
            }
            JobEventKind::Log(_) | JobEventKind::Finished { .. } => {}
        }
        tx.commit().await?;
        drop(active);
        self.report_wake.notify_one();
        Ok(false)
    }

    /// Cancels attempts past their job's timeout, and ends those whose cancel the backend has
    /// not confirmed within the grace period.
    pub(crate) async fn check_deadlines(&self, active: &mut Active) -> Result<()> {
        let now = Instant::now();
        let grace = self.config.cancel_grace;
        let mut to_cancel = Vec::new();
        let mut to_end = Vec::new();
        for (key, t) in active.iter_mut() {
            if t.unrecorded.is_some() {
                // Its progress could not be recorded: stop it, and record its end as an error
                // (finish_attempt) once the store can be written again.
                if t.ended || t.cancel_sent_at.is_some_and(|sent| now >= sent + grace) {
                    to_end.push(*key);
                } else if t.cancel_sent_at.is_none() {
                    t.cancel_sent_at = Some(now);
                    to_cancel.push(*key);
                }
                continue;
            }
            match (t.cancel_sent_at, t.deadline) {
                (None, Some(deadline)) if now >= deadline => {
                    let limit = t.timeout.map_or_else(String::new, humanize);
                    t.timed_out = Some(format!("timed out after {limit}"));
                    t.cancel_sent_at = Some(now);
                    to_cancel.push(*key);
                }
                (Some(sent), _) if now >= sent + grace => to_end.push(*key),
                _ => {}
            }
        }
        for (job_id, attempt) in to_cancel {
            tracing::info!(job = %job_id, attempt, "job timed out; cancelling it");
            if let Err(err) = self.backend.cancel(job_id, attempt).await {
                tracing::warn!(job = %job_id, %err, "cannot cancel a timed out job");
            }
        }
        let mut result = Ok(());
        for (job_id, attempt) in to_end {
            let reason = "the backend did not confirm the cancel".to_owned();
            // Each one, even when one cannot be recorded (it stays tracked for the next tick).
            if let Err(err) = self
                .finish_attempt(active, job_id, attempt, State::Cancelled, Some(reason))
                .await
            {
                result = Err(err);
            }
        }
        result
    }

    /// An event of an attempt could not be recorded: the attempt is stopped, and ended as an
    /// error once the store can be written (see [`Inner::check_deadlines`]).
    async fn progress_lost(&self, key: (JobId, u32), err: &Error) {
        let mut active = self.active.lock().await;
        if let Some(t) = active.get_mut(&key) {
            t.unrecorded.get_or_insert_with(|| unrecorded_reason(err));
        }
    }

    // ---- cancel and retry ----

    pub(crate) async fn cancel_run(&self, id: RunId, reason: &str) -> Result<bool> {
        self.check_open()?;
        let mut active = self.active.lock().await;
        let done = self.cancel_run_locked(&mut active, id, reason).await?;
        drop(active);
        self.wake.notify_one();
        self.report_wake.notify_one();
        Ok(done)
    }

    async fn cancel_run_locked(
        &self,
        active: &mut Active,
        id: RunId,
        reason: &str,
    ) -> Result<bool> {
        let mut tx = self.store.begin().await?;
        let run = tx.get_run(id).await?.ok_or(Error::NoSuchRun(id))?;
        if run.run.state.is_final() {
            return Ok(false);
        }
        if run.cancel_requested {
            // Already on its way out; the first reason stands.
            return Ok(true);
        }
        tx.request_run_cancel(id, reason).await?;
        let mut to_cancel = Vec::new();
        for job in latest_attempts(&run.run) {
            if matches!(job.state, State::Pending | State::Running) {
                to_cancel.push((job.id, job.attempt));
            }
        }
        // Queued jobs are cancelled here: a cancelled run starts nothing more.
        for &key in &to_cancel {
            let t = active.entry(key).or_default();
            t.cancel = Some(reason.to_owned());
            t.cancel_sent_at = Some(Instant::now());
        }
        let queued: Vec<Job> = latest_attempts(&run.run)
            .into_iter()
            .filter(|j| j.state == State::Queued)
            .cloned()
            .collect();
        for job in &queued {
            self.end_unstarted(&mut tx, &run, job, State::Cancelled, reason)
                .await?;
        }
        self.progress_run(&mut tx, id).await?;
        tx.commit().await?;
        tracing::info!(run = %id, reason, "run cancelled");
        for (job_id, attempt) in to_cancel {
            if let Err(err) = self.backend.cancel(job_id, attempt).await {
                tracing::warn!(job = %job_id, %err, "cannot cancel a job");
            }
        }
        Ok(true)
    }

    pub(crate) async fn cancel_job(&self, id: JobId) -> Result<bool> {
        self.check_open()?;
        let mut active = self.active.lock().await;
        let mut tx = self.store.begin().await?;
        let job = tx.get_job(id, None).await?.ok_or(Error::NoSuchJob(id))?;
        if job.state.is_final() {
            return Ok(false);
        }
        let reason = BY_HAND;
        if job.state == State::Queued {
            let run = tx
                .get_run(job.run_id)
                .await?
                .ok_or(Error::NoSuchRun(job.run_id))?;
            self.end_unstarted(&mut tx, &run, &job, State::Cancelled, reason)
                .await?;
            self.progress_run(&mut tx, job.run_id).await?;
            tx.commit().await?;
        } else {
            drop(tx);
            let t = active.entry((job.id, job.attempt)).or_default();
            t.cancel = Some(reason.to_owned());
            t.cancel_sent_at = Some(Instant::now());
            if let Err(err) = self.backend.cancel(job.id, job.attempt).await {
                tracing::warn!(job = %job.id, %err, "cannot cancel a job");
            }
        }
        drop(active);
        self.wake.notify_one();
        self.report_wake.notify_one();
        Ok(true)
    }

    // ---- requests from replicas that do not run the engine ----

    /// On a replica whose engine is not started (a follower under leader election): checks
    /// the request as the engine would answer it, then leaves it in the store for the engine
    /// that runs (the leader's applies it at its next tick). The answer is the same as the
    /// leader's: `Ok(false)` when there is nothing to do, an error for what cannot be done.
    pub(crate) async fn request(&self, action: EngineAction, target: uuid::Uuid) -> Result<bool> {
        self.check_open()?;
        let store = &self.store;
        let wanted = match action {
            EngineAction::CancelRun => {
                let id = RunId(target);
                let run = store.get_run(id).await?.ok_or(Error::NoSuchRun(id))?;
                !run.run.state.is_final()
            }
            EngineAction::CancelJob => {
                let id = JobId(target);
                let job = store.get_job(id, None).await?.ok_or(Error::NoSuchJob(id))?;
                !job.state.is_final()
            }
            EngineAction::RetryRun => {
                let id = RunId(target);
                let run = store.get_run(id).await?.ok_or(Error::NoSuchRun(id))?;
                if !run.run.state.is_final() {
                    return Err(Error::RunNotFinished(id));
                }
                latest_attempts(&run.run).into_iter().any(retryable)
            }
            EngineAction::RetryJob => {
                let id = JobId(target);
                let job = store.get_job(id, None).await?.ok_or(Error::NoSuchJob(id))?;
                if !job.state.is_final() {
                    return Err(Error::JobNotFinished(id));
                }
                true
            }
        };
        if wanted {
            let reason = matches!(action, EngineAction::CancelRun | EngineAction::CancelJob)
                .then_some(BY_HAND);
            store
                .request(action, target, reason, gantry_core::now())
                .await?;
            tracing::info!(?action, %target, "request left for the engine of the leading replica");
        }
        Ok(wanted)
    }

    /// Applies the requests other replicas left (see [`Inner::request`]), oldest first, and
    /// deletes each once applied: a crash in between applies it twice, which changes nothing
    /// (a second cancel finds the run cancelling or over, a second retry finds it running).
    pub(crate) async fn apply_requests(&self) -> Result<()> {
        for request in self.store.requests().await? {
            let target = request.target;
            let applied = match request.action {
                EngineAction::CancelRun => self
                    .cancel_run(RunId(target), request.reason.as_deref().unwrap_or(BY_HAND))
                    .await
                    .map(drop),
                EngineAction::CancelJob => self.cancel_job(JobId(target)).await.map(drop),
                EngineAction::RetryRun => self.retry_run(RunId(target)).await.map(drop),
                EngineAction::RetryJob => self.retry_job(JobId(target)).await,
            };
            match applied {
                Ok(()) => {
                    tracing::info!(action = ?request.action, %target, "applied a request from another replica")
                }
                // The store failed: keep the request for the next tick.
                Err(Error::Store(err)) => return Err(Error::Store(err)),
                // Nothing left to do (the run ended meanwhile, a retry already ran, …).
                Err(err) => {
                    tracing::info!(action = ?request.action, %target, %err, "a request from another replica no longer applies")
                }
            }
            let mut tx = self.store.begin().await?;
            tx.delete_request(request.seq).await?;
            tx.commit().await?;
        }
        Ok(())
    }

    pub(crate) async fn retry_run(&self, id: RunId) -> Result<bool> {
        self.check_open()?;
        let _active = self.active.lock().await;
        let mut tx = self.store.begin().await?;
        let run = tx.get_run(id).await?.ok_or(Error::NoSuchRun(id))?;
        if !run.run.state.is_final() {
            return Err(Error::RunNotFinished(id));
        }
        let again: Vec<Job> = latest_attempts(&run.run)
            .into_iter()
            .filter(|j| retryable(j))
            .cloned()
            .collect();
        if again.is_empty() {
            return Ok(false);
        }
        self.retry_jobs(&mut tx, &run, &again).await?;
        tx.commit().await?;
        drop(_active);
        self.wake.notify_one();
        self.report_wake.notify_one();
        Ok(true)
    }

    pub(crate) async fn retry_job(&self, id: JobId) -> Result<()> {
        self.check_open()?;
        let _active = self.active.lock().await;
        let mut tx = self.store.begin().await?;
        let job = tx.get_job(id, None).await?.ok_or(Error::NoSuchJob(id))?;
        if !job.state.is_final() {
            return Err(Error::JobNotFinished(id));
        }
        let run = tx
            .get_run(job.run_id)
            .await?
            .ok_or(Error::NoSuchRun(job.run_id))?;
        // The job, and what was skipped or cancelled downstream of it.
        let mut names: HashSet<String> = HashSet::from([job.name.clone()]);
        let mut again = vec![job];
        for j in latest_attempts(&run.run) {
            if !names.contains(&j.name) && j.needs.iter().any(|n| names.contains(n)) && retryable(j)
            {
                names.insert(j.name.clone());
                again.push(j.clone());
            }
        }
        self.retry_jobs(&mut tx, &run, &again).await?;
        tx.commit().await?;
        drop(_active);
        self.wake.notify_one();
        self.report_wake.notify_one();
        Ok(())
    }

    /// New attempts for `jobs` (with the retry budget of their first attempt), the run
    /// reopened when it had ended.
    async fn retry_jobs(&self, tx: &mut Tx, run: &RunRecord, jobs: &[Job]) -> Result<()> {
        let now = gantry_core::now();
        if run.run.state.is_final() {
            tx.reopen_run(run.run.id, now).await?;
            status::push_run(tx, &self.config, run, State::Running, "retrying").await?;
        }
        let key = repo_key(&run.run.trigger);
        for job in jobs {
            let budget = run
                .run
                .jobs
                .iter()
                .find(|j| j.id == job.id && j.attempt == 1)
                .map_or(job.retries_left, |j| j.retries_left);
            let next = Job {
                attempt: job.attempt + 1,
                retries_left: budget,
                state: State::Queued,
                reason: None,
                created_at: now,
                started_at: None,
                finished_at: None,
                steps: Vec::new(),
                ..job.clone()
            };
            tx.insert_job(&next, position_of(&run.run, &job.name), &key)
                .await?;
            let text = format!("waiting to retry (attempt {})", next.attempt);
            status::push_job(tx, &self.config, run, &next, State::Queued, &text).await?;
        }
        tracing::info!(run = %run.run.id, jobs = jobs.len(), "retrying");
        self.progress_run(tx, run.run.id).await
    }

    // ---- recovery ----

    /// What a start finds: attempts that were handed to the backend (re-attached where the
    /// backend can, ended as `error` otherwise, then retried if they may be), and runs to move
    /// along (a crash between two transitions leaves nothing half done, but a run may wait for
    /// a progression that the crash prevented).
    pub(crate) async fn recover(&self) -> Result<()> {
        let mut active = self.active.lock().await;
        let unfinished = self
            .store
            .jobs_in_states(&[State::Pending, State::Running])
            .await?;
        for job in unfinished {
            // Re-attached by an earlier try of this recovery (`Engine::start` tries again when
            // the store failed half way): attaching twice would follow its log twice.
            if active.contains_key(&(job.id, job.attempt)) {
                continue;
            }
            if let Some(reattach) = &self.reattach
                && let Some(run) = self.store.get_run(job.run_id).await?
            {
                let job_request = request(&run, &job, &self.config.secrets).await;
                self.logs.attempt_started(&job_request).await;
                let resume = self.resume(&job).await?;
                match reattach
                    .reattach(job_request, resume, self.events_tx.clone())
                    .await
                {
                    Ok(true) => {
                        active.insert(
                            (job.id, job.attempt),
                            Tracking {
                                timeout: job.spec.timeout,
                                deadline: job.spec.timeout.map(|t| Instant::now() + t),
                                ..Tracking::default()
                            },
                        );
                        tracing::info!(job = %job.id, attempt = job.attempt, "re-attached");
                        continue;
                    }
                    Ok(false) => {}
                    Err(err) => tracing::warn!(job = %job.id, %err, "cannot re-attach"),
                }
            }
            tracing::warn!(job = %job.id, attempt = job.attempt, "job was running when the server stopped");
            self.finish_attempt(
                &mut active,
                job.id,
                job.attempt,
                State::Error,
                Some(RESTART_REASON.to_owned()),
            )
            .await?;
        }
        let open = RunFilter {
            states: vec![State::Queued, State::Pending, State::Running],
            ..RunFilter::default()
        };
        let mut before = None;
        loop {
            let page = Page { limit: 500, before };
            let runs = self.store.list_runs(&open, page).await?;
            let Some(last) = runs.last() else { break };
            before = Some(last.run.id);
            for run in &runs {
                let mut tx = self.store.begin().await?;
                self.progress_run(&mut tx, run.run.id).await?;
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// What the store holds of an attempt being re-attached: its start, each step's state and
    /// how much of the log of each step not ended is stored.
    async fn resume(&self, job: &Job) -> Result<Resume> {
        let stored = self.store.get_job(job.id, Some(job.attempt)).await?;
        let stored = stored.as_ref().unwrap_or(job);
        let mut steps = vec![StepResume::queued(); job.spec.steps.len()];
        for step in &stored.steps {
            let Some(resume) = steps.get_mut(step.index) else {
                continue;
            };
            resume.state = step.state;
            resume.exit_code = step.exit_code;
            resume.reason = step.reason.clone();
            if !step.state.is_final() {
                resume.log = self.logs.stored(job.id, job.attempt, step.index).await;
            }
        }
        Ok(Resume {
            started: stored.state == State::Running,
            steps,
        })
    }
}

/// Why an attempt whose progress could not be recorded ends as an error.
fn unrecorded_reason(err: &Error) -> String {
    format!(
        "Gantry could not record this job's progress ({err}); it was stopped and ended once \
         the store could be written again"
    )
}

/// The scheduler task: backend events, wake-ups and deadline ticks, one at a time.
pub(crate) async fn run_loop(inner: Arc<Inner>, mut events: mpsc::Receiver<JobEvent>) {
    let mut tick = tokio::time::interval(inner.config.tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let schedule = tokio::select! {
            biased;
            () = inner.token.cancelled() => break,
            event = events.recv() => match event {
                Some(event) => {
                    let key = (event.job_id, event.attempt);
                    match inner.on_event(event).await {
                        Ok(freed) => freed,
                        Err(err) => {
                            tracing::error!(job = %key.0, attempt = key.1, %err, "cannot record a job event");
                            inner.observer.store_write_failed(&err.to_string());
                            inner.progress_lost(key, &err).await;
                            false
                        }
                    }
                }
                None => break,
            },
            () = inner.wake.notified() => true,
            _ = tick.tick() => {
                if let Err(err) = inner.apply_requests().await {
                    tracing::error!(%err, "cannot apply the requests of other replicas");
                }
                let mut active = inner.active.lock().await;
                if let Err(err) = inner.check_deadlines(&mut active).await {
                    tracing::error!(%err, "cannot check deadlines");
                    inner.observer.store_write_failed(&err.to_string());
                }
                true
            }
        };
        if schedule && !inner.token.is_cancelled() {
            let mut active = inner.active.lock().await;
            if let Err(err) = inner.schedule(&mut active).await {
                tracing::error!(%err, "cannot start queued jobs");
            }
        }
    }
    tracing::debug!("scheduler stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names_follow_the_pipeline_language() {
        assert_eq!(default_name(".gantry.yaml"), "gantry");
        assert_eq!(default_name(".gantry/release.yml"), "release");
        assert_eq!(default_name(".yaml"), "pipeline");
    }

    #[test]
    fn durations_read_like_the_pipeline_wrote_them() {
        assert_eq!(humanize(Duration::from_secs(90)), "90s");
        assert_eq!(humanize(Duration::from_secs(1200)), "20m");
        assert_eq!(humanize(Duration::from_millis(250)), "250ms");
    }
}
