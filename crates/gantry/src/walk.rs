//! Runs a planned pipeline's jobs one after another, in an order that respects `needs`, on one
//! backend: what `gantry run` needs before (and without) the engine's durable scheduler.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use gantry_core::{
    Backend, Checkout, JobEvent, JobEventKind, JobId, JobRequest, RunId, Secret, State,
};
use gantry_pipeline::PlannedJob;
use tokio::sync::{mpsc, watch};

/// How one job ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobResult {
    pub name: String,
    pub state: State,
    pub attempts: u32,
    /// The first failed step that counts (not `allow_failure`), when a step failed the job.
    pub failed_step: Option<FailedStep>,
    pub reason: Option<String>,
    pub duration: Duration,
    pub allow_failure: bool,
}

/// The step that failed a job: its name and how it ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailedStep {
    pub name: String,
    pub outcome: gantry_core::StepOutcome,
}

impl JobResult {
    /// Does this job's end count against the run (and block jobs that need it)?
    pub fn blocks(&self) -> bool {
        !self.allow_failure
            && matches!(self.state, State::Failure | State::Error | State::Cancelled)
    }
}

/// What the walker tells whoever shows progress.
pub trait Observer {
    fn job_started(&mut self, job: &PlannedJob, attempt: u32);
    fn event(&mut self, job: &PlannedJob, event: &JobEvent);
    fn job_finished(&mut self, job: &PlannedJob, result: &JobResult);
}

/// What the walker needs besides the jobs.
pub struct Walk<'a> {
    pub backend: Arc<dyn Backend>,
    pub run_id: RunId,
    pub checkout: Checkout,
    /// Secret values by environment variable name; each job gets the ones it asks for.
    pub secrets: &'a BTreeMap<String, Secret>,
    /// Becomes true when the user asks to stop (Ctrl-C).
    pub cancel: watch::Receiver<bool>,
}

impl Walk<'_> {
    /// Runs `jobs` (in topological order, as the planner gives them) and returns each job's
    /// result in the same order.
    pub async fn run(&mut self, jobs: &[PlannedJob], obs: &mut dyn Observer) -> Vec<JobResult> {
        let mut results: Vec<JobResult> = Vec::with_capacity(jobs.len());
        let mut blocked: HashMap<&str, bool> = HashMap::new();
        for job in jobs {
            let upstream_failed = job
                .needs
                .iter()
                .any(|need| blocked.get(need.as_str()).copied().unwrap_or(false));
            let result = if *self.cancel.borrow() {
                skipped(job, "the run was cancelled", State::Cancelled)
            } else if let Some(reason) = &job.skipped {
                skipped(job, reason, State::Skipped)
            } else if !job.run_if.admits(upstream_failed) {
                let reason = if upstream_failed {
                    "a job it needs failed"
                } else {
                    "it runs only when a job it needs failed"
                };
                skipped(job, reason, State::Skipped)
            } else {
                self.run_job(job, obs).await
            };
            // A job skipped because something upstream failed passes the failure on.
            let blocks = result.blocks() || (upstream_failed && result.state == State::Skipped);
            blocked.insert(job.name.as_str(), blocks);
            obs.job_finished(job, &result);
            results.push(result);
        }
        results
    }

    async fn run_job(&mut self, job: &PlannedJob, obs: &mut dyn Observer) -> JobResult {
        let job_id = JobId::new();
        let started = std::time::Instant::now();
        let secret_values: BTreeMap<String, Secret> = job
            .spec
            .secrets
            .iter()
            .filter_map(|s| self.secrets.get(&s.env).map(|v| (s.env.clone(), v.clone())))
            .collect();
        let mut attempt = 0;
        loop {
            attempt += 1;
            obs.job_started(job, attempt);
            let (state, reason, failed_step) = self
                .run_attempt(job, job_id, attempt, &secret_values, obs)
                .await;
            let retryable = matches!(state, State::Failure | State::Error);
            if retryable && attempt <= job.retry && !*self.cancel.borrow() {
                continue;
            }
            return JobResult {
                name: job.name.clone(),
                state,
                attempts: attempt,
                failed_step,
                reason,
                duration: started.elapsed(),
                allow_failure: job.allow_failure,
            };
        }
    }

    async fn run_attempt(
        &mut self,
        job: &PlannedJob,
        job_id: JobId,
        attempt: u32,
        secret_values: &BTreeMap<String, Secret>,
        obs: &mut dyn Observer,
    ) -> (State, Option<String>, Option<FailedStep>) {
        let (tx, mut rx) = mpsc::channel(256);
        let request = JobRequest {
            run_id: self.run_id,
            job_id,
            attempt,
            checkout: self.checkout.clone(),
            pull_request: None,
            spec: job.spec.clone(),
            secret_values: secret_values.clone(),
        };
        if let Err(err) = self.backend.start(request, tx).await {
            return (State::Error, Some(err.to_string()), None);
        }
        let mut failed_step = None;
        let mut cancel_sent = false;
        loop {
            let event = tokio::select! {
                event = rx.recv() => event,
                _ = self.cancel.wait_for(|c| *c), if !cancel_sent => {
                    cancel_sent = true;
                    if let Err(err) = self.backend.cancel(job_id, attempt).await {
                        tracing::warn!(%err, "cancel failed");
                    }
                    continue;
                }
            };
            let Some(event) = event else {
                return (
                    State::Error,
                    Some("the backend stopped reporting on the job".into()),
                    failed_step,
                );
            };
            obs.event(job, &event);
            match event.kind {
                JobEventKind::StepFinished { step, outcome } => {
                    let counts = !job.spec.steps.get(step).is_some_and(|s| s.allow_failure);
                    if failed_step.is_none() && outcome.state == State::Failure && counts {
                        let name = job
                            .spec
                            .steps
                            .get(step)
                            .map_or_else(|| format!("step {}", step + 1), |s| s.name.clone());
                        failed_step = Some(FailedStep { name, outcome });
                    }
                }
                JobEventKind::Finished { state, reason } => return (state, reason, failed_step),
                _ => {}
            }
        }
    }
}

fn skipped(job: &PlannedJob, reason: &str, state: State) -> JobResult {
    JobResult {
        name: job.name.clone(),
        state,
        attempts: 0,
        failed_step: None,
        reason: Some(reason.to_owned()),
        duration: Duration::ZERO,
        allow_failure: job.allow_failure,
    }
}

/// The process exit code for a run: 0 when every job that counts succeeded; the first failed
/// step's exit code (1–255) when a job failed; 130 when cancelled; 1 otherwise.
pub fn exit_code(results: &[JobResult]) -> u8 {
    if results.iter().any(|r| r.state == State::Cancelled) {
        return 130;
    }
    match results.iter().find(|r| r.blocks()) {
        None => 0,
        Some(result) => match result
            .failed_step
            .as_ref()
            .and_then(|s| s.outcome.exit_code)
        {
            Some(code) if (1..=255).contains(&code) => code as u8,
            _ => 1,
        },
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use gantry_core::fake::{FakeBackend, FakeStep};
    use gantry_core::{
        Event, ForgeKind, JobSpec, RepoRef, StatusCondition, StepKind, StepSpec, Trigger,
    };

    use super::*;

    #[derive(Default)]
    struct Recorder {
        started: Vec<(String, u32)>,
        finished: Vec<(String, State)>,
    }

    impl Observer for Recorder {
        fn job_started(&mut self, job: &PlannedJob, attempt: u32) {
            self.started.push((job.name.clone(), attempt));
        }
        fn event(&mut self, _: &PlannedJob, _: &JobEvent) {}
        fn job_finished(&mut self, job: &PlannedJob, result: &JobResult) {
            self.finished.push((job.name.clone(), result.state));
        }
    }

    fn job(name: &str, needs: &[&str]) -> PlannedJob {
        PlannedJob {
            name: name.into(),
            needs: needs.iter().map(|s| s.to_string()).collect(),
            spec: JobSpec {
                name: name.into(),
                steps: vec![StepSpec {
                    name: "only".into(),
                    kind: StepKind::Run {
                        script: "true".into(),
                    },
                    timeout: None,
                    env: BTreeMap::new(),
                    run_if: StatusCondition::Success,
                    allow_failure: false,
                }],
                ..JobSpec::default()
            },
            retry: 0,
            allow_failure: false,
            run_if: StatusCondition::Success,
            skipped: None,
        }
    }

    fn walk<'a>(
        backend: &FakeBackend,
        cancel: watch::Receiver<bool>,
        secrets: &'a BTreeMap<String, Secret>,
    ) -> Walk<'a> {
        let repo = RepoRef {
            forge: ForgeKind::Local,
            full_name: "local/app".into(),
            clone_url: "/nonexistent".into(),
            web_url: None,
            default_branch: None,
        };
        let trigger = Trigger::new(Event::Push, repo, "refs/heads/main", "abc");
        Walk {
            backend: Arc::new(backend.clone()),
            run_id: RunId::new(),
            checkout: Checkout {
                repo: trigger.repo,
                git_ref: trigger.git_ref,
                sha: trigger.sha,
            },
            secrets,
            cancel,
        }
    }

    #[tokio::test]
    async fn a_failure_skips_dependents_and_runs_failure_handlers() {
        let backend = FakeBackend::new();
        backend.script(
            "build",
            0,
            FakeStep {
                exit_code: 7,
                ..FakeStep::default()
            },
        );
        let mut notify = job("notify", &["build"]);
        notify.run_if = StatusCondition::Failure;
        let mut cleanup = job("cleanup", &["deploy"]);
        cleanup.run_if = StatusCondition::Always;
        let jobs = vec![
            job("build", &[]),
            job("deploy", &["build"]),
            notify,
            cleanup,
            job("lint", &[]),
        ];
        let (_tx, rx) = watch::channel(false);
        let secrets = BTreeMap::new();
        let mut rec = Recorder::default();
        let results = walk(&backend, rx, &secrets).run(&jobs, &mut rec).await;
        let states: Vec<_> = results.iter().map(|r| (r.name.as_str(), r.state)).collect();
        assert_eq!(
            states,
            vec![
                ("build", State::Failure),
                ("deploy", State::Skipped),
                ("notify", State::Success),
                ("cleanup", State::Success),
                ("lint", State::Success),
            ]
        );
        assert_eq!(exit_code(&results), 7);
        let failed = results[0].failed_step.as_ref().unwrap();
        assert_eq!(
            (failed.name.as_str(), failed.outcome.exit_code),
            ("only", Some(7))
        );
    }

    #[tokio::test]
    async fn retries_until_the_limit_and_allow_failure_does_not_fail_the_run() {
        let backend = FakeBackend::new();
        backend.script(
            "flaky",
            0,
            FakeStep {
                exit_code: 1,
                ..FakeStep::default()
            },
        );
        let mut flaky = job("flaky", &[]);
        flaky.retry = 2;
        flaky.allow_failure = true;
        let after = job("after", &["flaky"]);
        let (_tx, rx) = watch::channel(false);
        let secrets = BTreeMap::new();
        let mut rec = Recorder::default();
        let results = walk(&backend, rx, &secrets)
            .run(&[flaky, after], &mut rec)
            .await;
        assert_eq!(results[0].attempts, 3);
        assert_eq!(
            rec.started[..3],
            [
                ("flaky".into(), 1),
                ("flaky".into(), 2),
                ("flaky".into(), 3)
            ]
        );
        assert_eq!(
            results[1].state,
            State::Success,
            "allow_failure does not block needs"
        );
        assert_eq!(exit_code(&results), 0);
    }

    #[tokio::test]
    async fn cancel_stops_the_running_job_and_the_rest() {
        let backend = FakeBackend::new();
        backend.script(
            "slow",
            0,
            FakeStep {
                duration: Duration::from_secs(3600),
                ..FakeStep::default()
            },
        );
        let (tx, rx) = watch::channel(false);
        let secrets = BTreeMap::new();
        let jobs = [job("slow", &[]), job("next", &[])];
        let mut rec = Recorder::default();
        let mut w = walk(&backend, rx, &secrets);
        let canceller = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            tx.send(true).unwrap();
        };
        let (results, ()) = tokio::join!(w.run(&jobs, &mut rec), canceller);
        assert_eq!(results[0].state, State::Cancelled);
        assert_eq!(results[1].state, State::Cancelled);
        assert_eq!(exit_code(&results), 130);
        assert_eq!(backend.cancelled().len(), 1);
    }

    #[tokio::test]
    async fn jobs_get_only_the_secrets_they_ask_for() {
        let backend = FakeBackend::new();
        let mut deploy = job("deploy", &[]);
        deploy.spec.secrets.push(gantry_core::SecretRef {
            env: "TOKEN".into(),
            secret: "token".into(),
            key: "value".into(),
        });
        let (_tx, rx) = watch::channel(false);
        let secrets = BTreeMap::from([
            ("TOKEN".to_string(), Secret::new("t0ps3cret")),
            ("OTHER".to_string(), Secret::new("nope")),
        ]);
        let mut rec = Recorder::default();
        walk(&backend, rx, &secrets)
            .run(&[deploy, job("test", &[])], &mut rec)
            .await;
        let started = backend.started();
        assert_eq!(
            started[0].secret_values.keys().collect::<Vec<_>>(),
            ["TOKEN"]
        );
        assert!(started[1].secret_values.is_empty());
    }
}
