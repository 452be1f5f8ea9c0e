//! Crash recovery: a new engine on the same database finishes what the old one left.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use gantry_core::fake::{FakeForge, FakeStep};
use gantry_core::{
    BackendError, CommitState, EventSender, ForgeKind, JobEvent, JobEventKind, JobRequest, Resume,
    State,
};
use gantry_engine::{EngineConfig, RESTART_REASON, Reattach};
use gantry_store::OutboxOutcome;

use crate::support::{Harness, LONG, attempts, config, job, pipeline, push, sha};

#[tokio::test]
async fn after_a_crash_every_run_reaches_a_true_final_state_and_no_status_is_lost() {
    let limited = EngineConfig {
        max_running_jobs: 2,
        ..config()
    };
    let h = Harness::with(limited.clone()).await;
    h.script("stuck", 0, 0, LONG);
    h.script("flaky", 0, 0, LONG);
    h.script("build", 0, 0, LONG);
    let stuck = h.submit(&pipeline(&[("stuck", &[])])).await;
    let flaky = h
        .submit("jobs:\n  flaky:\n    retry: 1\n    steps: [{ run: x }]\n")
        .await;
    // Queued behind the limit when the crash comes.
    let waiting = h
        .submit_for(
            push("acme/lib", "main", &sha()),
            &pipeline(&[("build", &[]), ("test", &["build"])]),
        )
        .await;
    h.wait_job_state(stuck, "stuck", State::Running).await;
    h.wait_job_state(flaky, "flaky", State::Running).await;
    assert_eq!(h.run(waiting).await.run.state, State::Queued);

    h.engine.abort();

    // The new process: its backend knows nothing of the old jobs and runs everything at once.
    let forge = FakeForge::new(ForgeKind::Github);
    let after = Harness::open(h.dir.clone(), h.url.clone(), forge, limited, None).await;
    after.engine.start().await.unwrap();

    let stuck_run = after.wait_final(stuck).await;
    assert_eq!(stuck_run.run.state, State::Error);
    assert_eq!(
        job(&stuck_run, "stuck").reason.as_deref(),
        Some(RESTART_REASON)
    );

    let flaky_run = after.wait_final(flaky).await;
    let tries: Vec<_> = attempts(&flaky_run, "flaky")
        .iter()
        .map(|j| (j.attempt, j.state))
        .collect();
    assert_eq!(
        tries,
        [(1, State::Error), (2, State::Success)],
        "retried after the restart"
    );
    assert_eq!(flaky_run.run.state, State::Success);

    let waiting_run = after.wait_final(waiting).await;
    assert_eq!(waiting_run.run.state, State::Success);
    assert_eq!(job(&waiting_run, "test").state, State::Success);

    // Every status written was settled: delivered, or coalesced into a newer one that was.
    let entries = after.settled_statuses().await;
    assert!(
        entries.iter().all(|e| matches!(
            e.outcome,
            Some(OutboxOutcome::Delivered | OutboxOutcome::Coalesced)
        )),
        "{entries:#?}"
    );
    // And the last word on every context is the final state, delivered.
    let mut sent = h.forge.statuses();
    sent.extend(after.forge.statuses());
    for (run, want) in [
        (&stuck_run, CommitState::Error),
        (&flaky_run, CommitState::Success),
        (&waiting_run, CommitState::Success),
    ] {
        let last = sent
            .iter()
            .rev()
            .find(|(_, s)| s.sha == run.run.trigger.sha && s.context == "gantry/gantry")
            .unwrap();
        assert_eq!(last.1.state, want);
    }
}

/// Sends `kinds` as the events of `job`'s attempt, in order (a receiver gone is ignored).
async fn send_all(
    events: &EventSender,
    job: &JobRequest,
    kinds: impl IntoIterator<Item = JobEventKind>,
) {
    for kind in kinds {
        let _ = events
            .send(JobEvent {
                job_id: job.job_id,
                attempt: job.attempt,
                at: gantry_core::now(),
                kind,
            })
            .await;
    }
}

/// A backend that finds every attempt still there and lets it succeed.
struct StillThere;

#[async_trait]
impl Reattach for StillThere {
    async fn reattach(
        &self,
        job: JobRequest,
        _: Resume,
        events: EventSender,
    ) -> Result<bool, BackendError> {
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let kinds = [
                JobEventKind::StepFinished {
                    step: 0,
                    outcome: gantry_core::StepOutcome {
                        state: State::Success,
                        exit_code: Some(0),
                        reason: None,
                        summary: None,
                    },
                },
                JobEventKind::Finished {
                    state: State::Success,
                    reason: None,
                },
            ];
            send_all(&events, &job, kinds).await;
        });
        Ok(true)
    }
}

#[tokio::test]
async fn a_backend_that_can_reattach_keeps_its_jobs_across_a_restart() {
    let h = Harness::new().await;
    h.script("build", 0, 0, LONG);
    let id = h.submit(&pipeline(&[("build", &[])])).await;
    h.wait_job_state(id, "build", State::Running).await;
    h.engine.shutdown().await;

    let after = Harness::open(
        h.dir.clone(),
        h.url.clone(),
        FakeForge::new(ForgeKind::Github),
        config(),
        Some(Arc::new(StillThere)),
    )
    .await;
    after.engine.start().await.unwrap();
    let run = after.wait_final(id).await;
    assert_eq!(run.run.state, State::Success);
    assert_eq!(attempts(&run, "build").len(), 1, "no error, no new attempt");
    assert_eq!(job(&run, "build").steps[0].state, State::Success);
    assert!(after.backend.started().is_empty());
}

/// A backend that re-attaches as the Kubernetes one does after a restart during step 1: it
/// reports again what the store holds (step 0's start and end, from the resume and so without
/// step 0's summary, step 1's start) and then what it lacks (step 1's next line and end, the
/// attempt's end). Keeps the resume it was given.
#[derive(Default)]
struct Repeats(Mutex<Vec<Resume>>);

#[async_trait]
impl Reattach for Repeats {
    async fn reattach(
        &self,
        job: JobRequest,
        resume: Resume,
        events: EventSender,
    ) -> Result<bool, BackendError> {
        let again = gantry_core::StepOutcome {
            state: resume.steps[0].state,
            exit_code: resume.steps[0].exit_code,
            reason: resume.steps[0].reason.clone(),
            summary: None,
        };
        self.0.lock().unwrap().push(resume);
        let line = gantry_core::LogLine {
            step: 1,
            number: 2,
            at: gantry_core::now(),
            stream: gantry_core::Stream::Stdout,
            text: "after the restart".into(),
        };
        let success = gantry_core::StepOutcome {
            state: State::Success,
            exit_code: Some(0),
            reason: None,
            summary: None,
        };
        tokio::spawn(async move {
            let kinds = [
                JobEventKind::Started,
                JobEventKind::StepStarted { step: 0 },
                JobEventKind::StepFinished {
                    step: 0,
                    outcome: again,
                },
                JobEventKind::StepStarted { step: 1 },
                JobEventKind::Log(line),
                JobEventKind::StepFinished {
                    step: 1,
                    outcome: success,
                },
                JobEventKind::Finished {
                    state: State::Success,
                    reason: None,
                },
            ];
            send_all(&events, &job, kinds).await;
        });
        Ok(true)
    }
}

#[tokio::test]
async fn a_re_attached_attempt_keeps_the_steps_that_ended_and_their_logs() {
    let h = Harness::new().await;
    h.backend.script(
        "build",
        0,
        FakeStep {
            exit_code: 7,
            lines: vec!["build step 0".into()],
            summary: Some("3 findings".into()),
            ..FakeStep::default()
        },
    );
    h.script("build", 1, 0, LONG);
    let id = h
        .submit(
            "jobs:\n  build:\n    steps:\n      - { run: a, allow_failure: true }\n      - run: b\n",
        )
        .await;
    // Running, and its first line stored: the step's start is recorded before its output
    // arrives, and a shutdown in between would leave no line to count.
    let before = h
        .wait_run(id, "step 1 to run and its line to be stored", |r| {
            let build = job(r, "build");
            build
                .steps
                .get(1)
                .is_some_and(|s| s.state == State::Running)
                && h.logs()
                    .read(gantry_logs::StepKey::new(build.id, 1, 1), 1, 1, u64::MAX)
                    .is_ok_and(|lines| lines.len() == 1)
        })
        .await;
    let step0 = job(&before, "build").steps[0].clone();
    assert_eq!((step0.state, step0.exit_code), (State::Failure, Some(7)));
    assert_eq!(step0.summary.as_deref(), Some("3 findings"));
    h.engine.shutdown().await;

    let repeats = Arc::new(Repeats::default());
    let after = Harness::open(
        h.dir.clone(),
        h.url.clone(),
        FakeForge::new(ForgeKind::Github),
        config(),
        Some(repeats.clone()),
    )
    .await;
    after.engine.start().await.unwrap();
    let run = after.wait_final(id).await;
    assert_eq!(run.run.state, State::Success, "{run:#?}");
    let build = job(&run, "build");

    // The backend was told what the store holds: the start, step 0's end, step 1 running with
    // its one line.
    let resume = repeats.0.lock().unwrap().clone();
    assert_eq!(resume.len(), 1);
    let resume = &resume[0];
    assert!(resume.started);
    assert_eq!(
        (resume.steps[0].state, resume.steps[0].exit_code),
        (State::Failure, Some(7))
    );
    assert_eq!(resume.steps[1].state, State::Running);
    let stored = resume.steps[1].log;
    assert_eq!((stored.output_lines, stored.system_lines), (1, 0));
    assert!(stored.last_output_at.is_some());
    // A start or an end reported again does not reopen a step that ended: it keeps its exit
    // code, its summary and its end.
    assert_eq!(build.steps[0], step0);
    assert_eq!(build.steps[1].state, State::Success);
    assert_eq!(
        build.steps[1].started_at,
        job(&before, "build").steps[1].started_at,
        "a start reported again changes nothing"
    );
    let key = gantry_logs::StepKey::new(build.id, 1, 1);
    let lines: Vec<String> = after
        .logs()
        .read(key, 1, 100, u64::MAX)
        .unwrap()
        .into_iter()
        .map(|l| l.text)
        .collect();
    assert_eq!(lines, ["build step 1", "after the restart"]);
}

#[tokio::test]
async fn a_stopped_engine_accepts_no_work() {
    let h = Harness::new().await;
    h.engine.shutdown().await;
    let err = h
        .engine
        .submit(
            push("acme/app", "main", &sha()),
            vec![(".gantry.yaml".into(), pipeline(&[("a", &[])]))],
        )
        .await
        .unwrap_err();
    assert!(matches!(err, gantry_engine::Error::ShuttingDown));
}
