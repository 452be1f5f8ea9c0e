//! In-memory fakes of [`Backend`] and [`Forge`] for tests of the crates above this one.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

use crate::{
    Backend, BackendError, CommitStatus, EventSender, Forge, ForgeError, ForgeKind, JobEvent,
    JobEventKind, JobId, JobRequest, LogLine, RepoRef, State, StepOutcome, Stream,
};

/// How one step behaves in a [`FakeBackend`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeStep {
    pub exit_code: i32,
    pub lines: Vec<String>,
    /// How long the step "runs".
    pub duration: Duration,
    /// The summary its outcome carries when it ends by itself (not when it times out or is
    /// cancelled).
    pub summary: Option<String>,
}

impl Default for FakeStep {
    fn default() -> Self {
        Self {
            exit_code: 0,
            lines: Vec::new(),
            duration: Duration::ZERO,
            summary: None,
        }
    }
}

#[derive(Default)]
struct FakeBackendState {
    scripts: HashMap<(String, usize), FakeStep>,
    started: Vec<JobRequest>,
    cancelled: Vec<(JobId, u32)>,
    running: HashMap<(JobId, u32), watch::Sender<bool>>,
    refuse: Option<String>,
}

/// A backend that "runs" steps by emitting the events a real one would, as scripted.
/// Unscripted steps succeed at once with one log line naming the step.
#[derive(Clone, Default)]
pub struct FakeBackend {
    state: Arc<Mutex<FakeBackendState>>,
}

impl std::fmt::Debug for FakeBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeBackend").finish_non_exhaustive()
    }
}

impl FakeBackend {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FakeBackendState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Scripts step `step` (0-based) of every attempt of the job named `job`.
    pub fn script(&self, job: &str, step: usize, behaviour: FakeStep) -> &Self {
        self.lock()
            .scripts
            .insert((job.to_owned(), step), behaviour);
        self
    }

    /// Makes every later `start` fail with this message.
    pub fn refuse_starts(&self, message: &str) {
        self.lock().refuse = Some(message.to_owned());
    }

    /// Every request `start` accepted, in order.
    pub fn started(&self) -> Vec<JobRequest> {
        self.lock().started.clone()
    }

    /// Every attempt `cancel` was called for, in order.
    pub fn cancelled(&self) -> Vec<(JobId, u32)> {
        self.lock().cancelled.clone()
    }

    /// Attempts started and not yet finished.
    pub fn running(&self) -> usize {
        self.lock().running.len()
    }
}

#[async_trait]
impl Backend for FakeBackend {
    fn name(&self) -> &'static str {
        "fake"
    }

    async fn start(&self, job: JobRequest, events: EventSender) -> Result<(), BackendError> {
        let (cancel_tx, cancel_rx) = watch::channel(false);
        let scripts = {
            let mut state = self.lock();
            if let Some(message) = &state.refuse {
                return Err(BackendError::Start(message.clone()));
            }
            state.started.push(job.clone());
            state.running.insert((job.job_id, job.attempt), cancel_tx);
            (0..job.spec.steps.len())
                .map(|i| {
                    state
                        .scripts
                        .get(&(job.spec.name.clone(), i))
                        .cloned()
                        .unwrap_or_else(|| FakeStep {
                            lines: vec![format!("ran {}", job.spec.steps[i].name)],
                            ..FakeStep::default()
                        })
                })
                .collect::<Vec<_>>()
        };
        let this = self.clone();
        tokio::spawn(async move {
            let key = (job.job_id, job.attempt);
            let state = run_fake_job(&job, &scripts, &events, cancel_rx).await;
            this.lock().running.remove(&key);
            send(
                &events,
                &job,
                JobEventKind::Finished {
                    state,
                    reason: None,
                },
            )
            .await;
        });
        Ok(())
    }

    async fn cancel(&self, job_id: JobId, attempt: u32) -> Result<(), BackendError> {
        let mut state = self.lock();
        state.cancelled.push((job_id, attempt));
        if let Some(tx) = state.running.get(&(job_id, attempt)) {
            let _ = tx.send(true);
        }
        Ok(())
    }
}

async fn send(events: &EventSender, job: &JobRequest, kind: JobEventKind) {
    let _ = events
        .send(JobEvent {
            job_id: job.job_id,
            attempt: job.attempt,
            at: crate::now(),
            kind,
        })
        .await;
}

async fn run_fake_job(
    job: &JobRequest,
    scripts: &[FakeStep],
    events: &EventSender,
    mut cancel: watch::Receiver<bool>,
) -> State {
    send(events, job, JobEventKind::Started).await;
    let mut failed = false;
    for (index, (step, script)) in job.spec.steps.iter().zip(scripts).enumerate() {
        if !step.run_if.admits(failed) {
            let outcome = StepOutcome {
                state: State::Skipped,
                exit_code: None,
                reason: None,
                summary: None,
            };
            send(
                events,
                job,
                JobEventKind::StepFinished {
                    step: index,
                    outcome,
                },
            )
            .await;
            continue;
        }
        send(events, job, JobEventKind::StepStarted { step: index }).await;
        for (n, text) in script.lines.iter().enumerate() {
            let line = LogLine {
                step: index,
                number: n as u64 + 1,
                at: crate::now(),
                stream: Stream::Stdout,
                text: text.clone(),
            };
            send(events, job, JobEventKind::Log(line)).await;
        }
        let limit = step.timeout.unwrap_or(Duration::MAX);
        let timed_out = script.duration > limit;
        let wait = script.duration.min(limit);
        let cancelled = tokio::select! {
            _ = tokio::time::sleep(wait) => false,
            _ = cancel.wait_for(|c| *c) => true,
        };
        if cancelled {
            let outcome = StepOutcome {
                state: State::Cancelled,
                exit_code: None,
                reason: Some("cancelled".into()),
                summary: None,
            };
            send(
                events,
                job,
                JobEventKind::StepFinished {
                    step: index,
                    outcome,
                },
            )
            .await;
            return State::Cancelled;
        }
        let outcome = if timed_out {
            StepOutcome {
                state: State::Failure,
                exit_code: None,
                reason: Some(format!("timed out after {limit:?}")),
                summary: None,
            }
        } else if script.exit_code == 0 {
            StepOutcome {
                state: State::Success,
                exit_code: Some(0),
                reason: None,
                summary: script.summary.clone(),
            }
        } else {
            StepOutcome {
                state: State::Failure,
                exit_code: Some(script.exit_code),
                reason: None,
                summary: script.summary.clone(),
            }
        };
        if outcome.state == State::Failure && !step.allow_failure {
            failed = true;
        }
        send(
            events,
            job,
            JobEventKind::StepFinished {
                step: index,
                outcome,
            },
        )
        .await;
    }
    if failed {
        State::Failure
    } else {
        State::Success
    }
}

#[derive(Default)]
struct FakeForgeState {
    files: BTreeMap<(String, String, String), Vec<u8>>,
    statuses: Vec<(String, CommitStatus)>,
    failures: Vec<ForgeError>,
}

/// A forge whose files live in memory and whose statuses are recorded.
#[derive(Clone)]
pub struct FakeForge {
    kind: ForgeKind,
    state: Arc<Mutex<FakeForgeState>>,
}

impl std::fmt::Debug for FakeForge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeForge")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl FakeForge {
    pub fn new(kind: ForgeKind) -> Self {
        Self {
            kind,
            state: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FakeForgeState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Puts a file into `repo` (its `full_name`) at commit `sha`.
    pub fn add_file(&self, repo: &str, sha: &str, path: &str, contents: impl Into<Vec<u8>>) {
        self.lock().files.insert(
            (repo.to_owned(), sha.to_owned(), path.to_owned()),
            contents.into(),
        );
    }

    /// Makes the next `report_status` calls fail with these errors, in order.
    pub fn fail_next_reports(&self, errors: impl IntoIterator<Item = ForgeError>) {
        self.lock().failures.extend(errors);
    }

    /// Every status reported, with its repository's `full_name`, in order.
    pub fn statuses(&self) -> Vec<(String, CommitStatus)> {
        self.lock().statuses.clone()
    }
}

#[async_trait]
impl Forge for FakeForge {
    fn kind(&self) -> ForgeKind {
        self.kind
    }

    async fn read_file(
        &self,
        repo: &RepoRef,
        sha: &str,
        path: &str,
    ) -> Result<Option<Vec<u8>>, ForgeError> {
        let key = (repo.full_name.clone(), sha.to_owned(), path.to_owned());
        Ok(self.lock().files.get(&key).cloned())
    }

    async fn list_dir(
        &self,
        repo: &RepoRef,
        sha: &str,
        dir: &str,
    ) -> Result<Vec<String>, ForgeError> {
        let prefix = format!("{}/", dir.trim_end_matches('/'));
        Ok(self
            .lock()
            .files
            .keys()
            .filter(|(r, s, _)| *r == repo.full_name && s == sha)
            .filter_map(|(_, _, path)| path.strip_prefix(&prefix))
            .filter(|rest| !rest.contains('/'))
            .map(str::to_owned)
            .collect())
    }

    async fn report_status(&self, repo: &RepoRef, status: &CommitStatus) -> Result<(), ForgeError> {
        let mut state = self.lock();
        if !state.failures.is_empty() {
            return Err(state.failures.remove(0));
        }
        state
            .statuses
            .push((repo.full_name.clone(), status.clone()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::mpsc;

    use super::*;
    use crate::{Checkout, Event, JobSpec, RunId, StatusCondition, StepKind, StepSpec, Trigger};

    fn repo() -> RepoRef {
        RepoRef {
            forge: ForgeKind::Github,
            full_name: "acme/app".into(),
            clone_url: "https://example.invalid/acme/app.git".into(),
            web_url: None,
            default_branch: None,
        }
    }

    fn step(name: &str, run_if: StatusCondition) -> StepSpec {
        StepSpec {
            name: name.into(),
            kind: StepKind::Run {
                script: "true".into(),
            },
            timeout: None,
            env: BTreeMap::new(),
            run_if,
            allow_failure: false,
        }
    }

    fn request(steps: Vec<StepSpec>) -> JobRequest {
        let trigger = Trigger::new(Event::Push, repo(), "refs/heads/main", "abc");
        JobRequest {
            run_id: RunId::new(),
            job_id: JobId::new(),
            attempt: 1,
            checkout: Checkout {
                repo: trigger.repo,
                git_ref: trigger.git_ref,
                sha: trigger.sha,
            },
            pull_request: None,
            spec: JobSpec {
                name: "test".into(),
                steps,
                ..JobSpec::default()
            },
            secret_values: BTreeMap::new(),
        }
    }

    async fn collect(mut rx: mpsc::Receiver<JobEvent>) -> Vec<JobEventKind> {
        let mut out = Vec::new();
        while let Some(event) = rx.recv().await {
            let last = matches!(event.kind, JobEventKind::Finished { .. });
            out.push(event.kind);
            if last {
                break;
            }
        }
        out
    }

    #[tokio::test]
    async fn fake_backend_follows_its_script_and_failure_conditions() {
        let backend = FakeBackend::new();
        backend.script(
            "test",
            0,
            FakeStep {
                exit_code: 3,
                ..FakeStep::default()
            },
        );
        let (tx, rx) = mpsc::channel(64);
        let req = request(vec![
            step("build", StatusCondition::Success),
            step("unit", StatusCondition::Success),
            step("report", StatusCondition::Failure),
        ]);
        backend.start(req, tx).await.unwrap();
        let events = collect(rx).await;
        let finished: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                JobEventKind::StepFinished { step, outcome } => Some((*step, outcome.state)),
                _ => None,
            })
            .collect();
        assert_eq!(
            finished,
            vec![
                (0, State::Failure),
                (1, State::Skipped),
                (2, State::Success)
            ]
        );
        assert_eq!(
            events.last(),
            Some(&JobEventKind::Finished {
                state: State::Failure,
                reason: None
            })
        );
    }

    #[tokio::test]
    async fn fake_backend_cancels_a_running_step() {
        let backend = FakeBackend::new();
        backend.script(
            "test",
            0,
            FakeStep {
                duration: Duration::from_secs(3600),
                ..FakeStep::default()
            },
        );
        let (tx, rx) = mpsc::channel(64);
        let req = request(vec![step("sleep", StatusCondition::Success)]);
        let (job_id, attempt) = (req.job_id, req.attempt);
        backend.start(req, tx).await.unwrap();
        backend.cancel(job_id, attempt).await.unwrap();
        let events = collect(rx).await;
        assert_eq!(
            events.last(),
            Some(&JobEventKind::Finished {
                state: State::Cancelled,
                reason: None
            })
        );
        assert_eq!(backend.running(), 0);
    }

    #[tokio::test]
    async fn fake_forge_serves_files_and_records_statuses() {
        let forge = FakeForge::new(ForgeKind::Github);
        forge.add_file("acme/app", "abc", ".gantry/ci.yaml", "jobs: {}");
        forge.add_file("acme/app", "abc", ".gantry/sub/x.yaml", "jobs: {}");
        assert_eq!(
            forge.list_dir(&repo(), "abc", ".gantry").await.unwrap(),
            vec!["ci.yaml"]
        );
        assert!(
            forge
                .read_file(&repo(), "def", ".gantry/ci.yaml")
                .await
                .unwrap()
                .is_none()
        );
        forge.fail_next_reports([ForgeError::Api {
            forge: ForgeKind::Github,
            status: 502,
            message: "bad gateway".into(),
            retry_after: None,
        }]);
        let status = CommitStatus {
            sha: "abc".into(),
            context: "gantry/ci".into(),
            state: crate::CommitState::Pending,
            description: "queued".into(),
            target_url: None,
        };
        let err = forge.report_status(&repo(), &status).await.unwrap_err();
        assert!(err.is_retryable());
        forge.report_status(&repo(), &status).await.unwrap();
        assert_eq!(forge.statuses().len(), 1);
    }
}
