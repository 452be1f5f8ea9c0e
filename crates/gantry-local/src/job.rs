//! One job attempt from workspace to `Finished`: checkout, then the steps in order, each honouring
//! its `run_if`, until the end, a cancel or the job's deadline.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use gantry_core::{
    EventSender, JobEvent, JobEventKind, JobId, JobRequest, LogLine, State, StepKind, StepOutcome,
    StepSpec, Stream,
};
use tokio::process::Command;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::leftovers::{AttemptRecord, Owner};
use crate::process::{self, Capture, Ending, Output, Stop, Timeout};
use crate::workspace::{self, Workspace};
use crate::{Error, LocalConfig, gitops, tools};
use gantry_logs::Masker;

/// Sends one attempt's events. Nobody listening is not an error: the attempt stops on its own
/// (see [`Stop`]).
#[derive(Debug)]
pub(crate) struct Events {
    tx: EventSender,
    job_id: JobId,
    attempt: u32,
    /// The last line number used in each step's log.
    numbers: HashMap<usize, u64>,
}

impl Events {
    async fn send(&self, kind: JobEventKind) {
        let event = JobEvent {
            job_id: self.job_id,
            attempt: self.attempt,
            at: gantry_core::now(),
            kind,
        };
        let _ = self.tx.send(event).await;
    }

    pub(crate) async fn log(&mut self, step: usize, stream: Stream, text: String) {
        let number = self.numbers.entry(step).or_default();
        *number += 1;
        let line = LogLine {
            step,
            number: *number,
            at: gantry_core::now(),
            stream,
            text,
        };
        self.send(JobEventKind::Log(line)).await;
    }

    pub(crate) async fn system(&mut self, step: usize, text: impl Into<String>) {
        self.log(step, Stream::System, text.into()).await;
    }
}

/// Why the rest of a job does not run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Halt {
    Cancelled,
    JobTimedOut(Timeout),
}

/// How a step ended, and whether the job stops there.
#[derive(Debug)]
pub(crate) struct StepResult {
    pub outcome: StepOutcome,
    pub halt: Option<Halt>,
    pub timed_out: Option<Timeout>,
}

impl StepResult {
    pub(crate) fn success() -> Self {
        Self::state(State::Success, Some(0), None)
    }

    /// The same, with what the step produced (see [`StepOutcome::summary`]).
    pub(crate) fn with_summary(mut self, summary: impl Into<String>) -> Self {
        self.outcome.summary = Some(summary.into());
        self
    }

    pub(crate) fn failure(reason: impl Into<String>) -> Self {
        Self::state(State::Failure, None, Some(reason.into()))
    }

    fn state(state: State, exit_code: Option<i32>, reason: Option<String>) -> Self {
        Self {
            outcome: StepOutcome {
                state,
                exit_code,
                reason,
                summary: None,
            },
            halt: None,
            timed_out: None,
        }
    }

    /// The result of a step that is one process, ending so.
    pub(crate) fn of(ending: Ending) -> Self {
        match ending {
            Ending::Exited(0) => Self::success(),
            Ending::Exited(code) => Self::state(State::Failure, Some(code), None),
            Ending::Signalled(signal) => Self::failure(format!("killed by signal {signal}")),
            Ending::TimedOut(t) => Self {
                halt: matches!(t, Timeout::Job(_)).then_some(Halt::JobTimedOut(t)),
                timed_out: Some(t),
                ..Self::failure(t.to_string())
            },
            Ending::Cancelled => Self {
                halt: Some(Halt::Cancelled),
                ..Self::state(State::Cancelled, None, Some("cancelled".into()))
            },
            Ending::Failed(why) => Self::state(State::Error, None, Some(why)),
        }
    }
}

/// Everything a running step may use.
#[derive(Debug)]
pub(crate) struct StepContext<'a> {
    pub job: &'a JobRequest,
    pub config: &'a LocalConfig,
    pub index: usize,
    pub workspace: &'a Path,
    /// The step's full environment.
    pub env: BTreeMap<String, String>,
    pub stop: Stop,
    pub events: &'a mut Events,
}

impl StepContext<'_> {
    pub(crate) async fn system(&mut self, text: impl Into<String>) {
        self.events.system(self.index, text).await;
    }

    /// Runs a process as part of this step, its output into the step's log.
    pub(crate) async fn run(&mut self, command: Command) -> Ending {
        let mut log = StepLog {
            events: &mut *self.events,
            step: self.index,
            capture: None,
        };
        process::run(command, &mut log, &self.stop).await
    }

    /// Like [`run`](Self::run), also keeping the output.
    pub(crate) async fn run_capturing(&mut self, command: Command) -> (Ending, Capture) {
        let mut log = StepLog {
            events: &mut *self.events,
            step: self.index,
            capture: Some(Capture::default()),
        };
        let ending = process::run(command, &mut log, &self.stop).await;
        (ending, log.capture.unwrap_or_default())
    }

    /// A command for a tool, in the workspace with the step's environment.
    pub(crate) fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new(program);
        command
            .current_dir(self.workspace)
            .env_clear()
            .envs(&self.env);
        command
    }
}

struct StepLog<'a> {
    events: &'a mut Events,
    step: usize,
    capture: Option<Capture>,
}

impl Output for StepLog<'_> {
    async fn line(&mut self, stream: Stream, text: String) {
        if let Some(capture) = &mut self.capture {
            capture.line(stream, text.clone()).await;
        }
        self.events.log(self.step, stream, text).await;
    }
}

/// Runs the attempt to its end. With an `owner`, its running processes are recorded beside its
/// workspace (see [`crate::leftovers`]).
pub(crate) async fn run(
    job: JobRequest,
    config: &LocalConfig,
    owner: Option<&Owner>,
    tx: EventSender,
    cancel: watch::Receiver<bool>,
) {
    let started = Instant::now();
    let mut events = Events {
        tx: tx.clone(),
        job_id: job.job_id,
        attempt: job.attempt,
        numbers: HashMap::new(),
    };
    let workspace = match Workspace::create(config.work_root.as_deref(), config.keep_workspaces) {
        Ok(workspace) => workspace,
        Err(e) => {
            finish_before_start(&mut events, e).await;
            return;
        }
    };
    let record = owner.and_then(|owner| {
        let keep = config.keep_workspaces;
        AttemptRecord::create(owner, workspace.path(), job.job_id, job.attempt, keep)
            .inspect_err(|e| {
                tracing::warn!(
                    job = %job.job_id,
                    attempt = job.attempt,
                    error = %e,
                    "cannot record the attempt's processes: should Gantry die, they will not be stopped"
                );
            })
            .ok()
            .map(Arc::new)
    });
    let stop = Stop {
        deadline: job
            .spec
            .timeout
            .map(|limit| (started + limit, Timeout::Job(limit))),
        cancel,
        events: tx,
        record,
        secrets: Arc::new(Masker::new(job.secret_values.values())),
    };
    let (state, reason) = match workspace::check_out(workspace.path(), &job.checkout, &stop).await {
        Ok(()) => {
            notices(&job, &mut events).await;
            events.send(JobEventKind::Started).await;
            run_steps(&job, config, workspace.path(), &stop, &mut events).await
        }
        Err(e) => end_of_checkout(e, &mut events).await,
    };
    if let Some(kept) = workspace.finish().await {
        events
            .system(0, format!("workspace kept at {}", kept.display()))
            .await;
    }
    // The last holder of the record: nothing of the attempt is left to stop or remove.
    drop(stop);
    events.send(JobEventKind::Finished { state, reason }).await;
}

async fn finish_before_start(events: &mut Events, e: Error) {
    let reason = e.to_string();
    events.system(0, reason.clone()).await;
    events
        .send(JobEventKind::Finished {
            state: State::Error,
            reason: Some(reason),
        })
        .await;
}

async fn end_of_checkout(e: Error, events: &mut Events) -> (State, Option<String>) {
    let (state, reason) = match e {
        Error::Cancelled => (State::Cancelled, "cancelled during checkout".to_owned()),
        Error::TimedOut(t) => (State::Failure, format!("{t} during checkout")),
        e => (State::Error, format!("checkout failed: {e}")),
    };
    for line in reason.lines() {
        events.system(0, line.to_owned()).await;
    }
    (state, Some(reason))
}

/// What the local backend leaves out, said once in the log.
async fn notices(job: &JobRequest, events: &mut Events) {
    if let Some(image) = &job.spec.image {
        let text = format!(
            "local backend: steps run directly on this machine; the image {image} is ignored"
        );
        events.system(0, text).await;
    }
    if !job.spec.services.is_empty() {
        let names: Vec<&str> = job.spec.services.iter().map(|s| s.name.as_str()).collect();
        let images: Vec<&str> = job.spec.services.iter().map(|s| s.image.as_str()).collect();
        let text = format!(
            "local backend: services are ignored locally ({}: {}); start them yourself if the steps need them",
            names.join(", "),
            images.join(", ")
        );
        events.system(0, text).await;
    }
    for secret in &job.spec.secrets {
        if !job.secret_values.contains_key(&secret.env) {
            let text = format!(
                "secret `{}` is not granted to this repository and ref (or has no value here): ${} is not set",
                secret.secret, secret.env
            );
            events.system(0, text).await;
        }
    }
}

async fn run_steps(
    job: &JobRequest,
    config: &LocalConfig,
    dir: &Path,
    stop: &Stop,
    events: &mut Events,
) -> (State, Option<String>) {
    let mut failed: Option<(State, String)> = None;
    let mut halt: Option<Halt> = None;
    for (index, step) in job.spec.steps.iter().enumerate() {
        if halt.is_none() {
            if stop.is_cancelled() {
                halt = Some(Halt::Cancelled);
            } else if let Some(t) = stop.expired() {
                events
                    .system(index, format!("{t}; the rest of the job is not run"))
                    .await;
                halt = Some(Halt::JobTimedOut(t));
            }
        }
        if halt.is_some() || !step.run_if.admits(failed.is_some()) {
            let outcome = StepOutcome {
                state: State::Skipped,
                exit_code: None,
                reason: None,
                summary: None,
            };
            events
                .send(JobEventKind::StepFinished {
                    step: index,
                    outcome,
                })
                .await;
            continue;
        }
        events.send(JobEventKind::StepStarted { step: index }).await;
        let mut ctx = StepContext {
            job,
            config,
            index,
            workspace: dir,
            env: step_env(job, step, dir),
            stop: stop.with_step_timeout(step.timeout),
            events: &mut *events,
        };
        let result = run_step(&mut ctx, step).await;
        if let Some(t) = result.timed_out {
            ctx.system(format!("{t}; stopped the step's processes"))
                .await;
        } else if result.halt == Some(Halt::Cancelled) {
            ctx.system("cancelled; stopped the step's processes").await;
        }
        let outcome = result.outcome;
        halt = halt.or(result.halt);
        if matches!(outcome.state, State::Failure | State::Error)
            && !step.allow_failure
            && failed.is_none()
        {
            failed = Some((outcome.state, outcome.failure_reason(&step.name)));
        }
        events
            .send(JobEventKind::StepFinished {
                step: index,
                outcome,
            })
            .await;
    }
    match (halt, failed) {
        (Some(Halt::Cancelled), _) => (State::Cancelled, Some("cancelled".into())),
        (Some(Halt::JobTimedOut(t)), _) => (State::Failure, Some(t.to_string())),
        (None, Some((state, reason))) => (state, Some(reason)),
        (None, None) => (State::Success, None),
    }
}

/// The base environment, then the job's, the step's, the secrets, then Gantry's own markers.
fn step_env(job: &JobRequest, step: &StepSpec, dir: &Path) -> BTreeMap<String, String> {
    let mut env = workspace::base_env();
    env.extend(job.spec.env.clone());
    env.extend(step.env.clone());
    env.extend(
        job.secret_values
            .iter()
            .map(|(k, v)| (k.clone(), v.expose().to_owned())),
    );
    env.insert("CI".into(), "true".into());
    env.insert("GANTRY".into(), "true".into());
    env.insert(
        "GANTRY_WORKSPACE".into(),
        dir.to_string_lossy().into_owned(),
    );
    env
}

async fn run_step(ctx: &mut StepContext<'_>, step: &StepSpec) -> StepResult {
    match &step.kind {
        StepKind::Run { script } => {
            let mut command = ctx.command(&ctx.config.shell);
            command.arg("-e").arg("-c").arg(script);
            StepResult::of(ctx.run(command).await)
        }
        StepKind::Kaniko(kaniko) => tools::kaniko(ctx, kaniko).await,
        StepKind::Trivy(trivy) => tools::trivy(ctx, trivy).await,
        StepKind::Gitops(gitops) => gitops::bump(ctx, gitops).await,
    }
}
