//! Timeouts, cancels and a vanished listener stop the whole process group, and nothing more runs.

use std::time::{Duration, Instant};

use gantry_core::{Backend, JobEventKind, JobId, State, StatusCondition};
use tokio::sync::mpsc;

use crate::support::{
    any_repo, backend, collect, entries, read_pid, request, run, run_job, wait_gone,
};

#[tokio::test]
async fn a_step_timeout_kills_the_whole_process_group() {
    let (repo, sha) = any_repo();
    let (backend, _root) = backend();
    let pids = tempfile::tempdir().unwrap();
    let pid_file = pids.path().join("pid");
    let mut slow = run(
        "slow",
        &format!(
            "sleep 100 & echo $! > {}; sleep 100 | cat",
            pid_file.display()
        ),
    );
    slow.timeout = Some(Duration::from_secs(1));
    let mut cleanup = run("cleanup", "echo cleanup");
    cleanup.run_if = StatusCondition::Always;
    let job = request(&repo.url(), &sha, vec![slow, run("next", "true"), cleanup]);

    let begun = Instant::now();
    let events = run_job(&backend, job).await;
    let took = begun.elapsed();
    let grandchild = read_pid(&pid_file).await;

    let outcome = events.outcome(0);
    assert_eq!(outcome.state, State::Failure);
    assert_eq!(outcome.exit_code, None);
    assert_eq!(outcome.reason.as_deref(), Some("timed out after 1s"));
    assert!(events.says("timed out after 1s"));
    assert_eq!(
        events.states(),
        [State::Failure, State::Skipped, State::Success],
        "a step timeout is a failure: later cleanup still runs"
    );
    assert_eq!(events.finished().0, State::Failure);
    assert!(took < Duration::from_secs(4), "took {took:?}");
    assert!(
        wait_gone(grandchild, Duration::from_secs(1)).await,
        "background grandchild {grandchild} survived"
    );
}

#[tokio::test]
async fn processes_that_ignore_sigterm_get_sigkill_after_the_grace() {
    let (repo, sha) = any_repo();
    let (backend, _root) = backend();
    let pids = tempfile::tempdir().unwrap();
    let pid_file = pids.path().join("pid");
    let mut stubborn = run(
        "stubborn",
        &format!(
            "trap '' TERM; sleep 100 & echo $! > {}; wait",
            pid_file.display()
        ),
    );
    stubborn.timeout = Some(Duration::from_secs(1));
    let job = request(&repo.url(), &sha, vec![stubborn]);

    let begun = Instant::now();
    let events = run_job(&backend, job).await;
    let took = begun.elapsed();
    let grandchild = read_pid(&pid_file).await;

    assert_eq!(
        events.outcome(0).reason.as_deref(),
        Some("timed out after 1s")
    );
    assert!(took >= Duration::from_millis(2500), "took {took:?}");
    assert!(took < Duration::from_secs(6), "took {took:?}");
    assert!(wait_gone(grandchild, Duration::from_secs(1)).await);
}

#[tokio::test]
async fn a_job_timeout_fails_the_job_and_runs_nothing_more() {
    let (repo, sha) = any_repo();
    let (backend, _root) = backend();
    let mut cleanup = run("cleanup", "echo cleanup");
    cleanup.run_if = StatusCondition::Always;
    let mut job = request(
        &repo.url(),
        &sha,
        vec![run("quick", "true"), run("slow", "sleep 100"), cleanup],
    );
    job.spec.timeout = Some(Duration::from_secs(1));

    let begun = Instant::now();
    let events = run_job(&backend, job).await;
    assert!(begun.elapsed() < Duration::from_secs(4));

    assert_eq!(
        events.states(),
        [State::Success, State::Failure, State::Skipped]
    );
    assert_eq!(
        events.outcome(1).reason.as_deref(),
        Some("job timed out after 1s")
    );
    assert!(events.says("job timed out after 1s"));
    assert_eq!(
        events.finished(),
        (State::Failure, Some("job timed out after 1s".into()))
    );
}

#[tokio::test]
async fn cancel_stops_the_running_step_and_skips_the_rest() {
    let (repo, sha) = any_repo();
    let (backend, root) = backend();
    let pids = tempfile::tempdir().unwrap();
    let pid_file = pids.path().join("pid");
    let mut cleanup = run("cleanup", "echo cleanup");
    cleanup.run_if = StatusCondition::Always;
    let job = request(
        &repo.url(),
        &sha,
        vec![
            run(
                "long",
                &format!(
                    "sleep 100 & echo $! > {}; echo started; wait",
                    pid_file.display()
                ),
            ),
            cleanup,
        ],
    );
    let (job_id, attempt) = (job.job_id, job.attempt);
    let (tx, mut rx) = mpsc::channel(16);
    backend.start(job, tx).await.unwrap();
    assert_eq!(backend.running(), 1);

    // Wait for the step's first line, then cancel.
    let mut seen = Vec::new();
    while let Some(event) = rx.recv().await {
        let started = matches!(&event.kind, JobEventKind::Log(l) if l.text == "started");
        seen.push(event.kind);
        if started {
            break;
        }
    }
    let begun = Instant::now();
    backend.cancel(job_id, attempt).await.unwrap();
    let mut events = collect(rx).await;
    assert!(begun.elapsed() < Duration::from_secs(3));
    seen.append(&mut events.0);
    events.0 = seen;

    let outcome = events.outcome(0);
    assert_eq!(outcome.state, State::Cancelled);
    assert_eq!(events.outcome(1).state, State::Skipped);
    assert!(!events.started(1));
    assert_eq!(events.finished().0, State::Cancelled);
    assert!(events.says("cancelled"));
    let grandchild = read_pid(&pid_file).await;
    assert!(wait_gone(grandchild, Duration::from_secs(1)).await);
    assert!(entries(root.path()).is_empty());
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(backend.running(), 0);

    // Cancelling it again, or something never started, is fine.
    backend.cancel(job_id, attempt).await.unwrap();
    backend.cancel(JobId::new(), 1).await.unwrap();
}

#[tokio::test]
async fn a_dropped_listener_stops_the_job_and_cleans_up() {
    let (repo, sha) = any_repo();
    let (backend, root) = backend();
    let pids = tempfile::tempdir().unwrap();
    let pid_file = pids.path().join("pid");
    let job = request(
        &repo.url(),
        &sha,
        vec![run(
            "long",
            &format!(
                "sleep 100 & echo $! > {}; while true; do echo tick; sleep 0.1; done",
                pid_file.display()
            ),
        )],
    );
    let (tx, mut rx) = mpsc::channel(1);
    backend.start(job, tx).await.unwrap();
    while let Some(event) = rx.recv().await {
        if matches!(&event.kind, JobEventKind::Log(l) if l.text == "tick") {
            break;
        }
    }
    let grandchild = read_pid(&pid_file).await;
    // Nobody reads any more; the job is blocked sending its next line.
    drop(rx);

    assert!(
        wait_gone(grandchild, Duration::from_secs(4)).await,
        "grandchild survived a dropped listener"
    );
    for _ in 0..100 {
        if backend.running() == 0 && entries(root.path()).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(backend.running(), 0);
    assert!(entries(root.path()).is_empty(), "workspace left behind");
}

#[tokio::test]
async fn the_same_attempt_cannot_start_twice() {
    let (repo, sha) = any_repo();
    let (backend, _root) = backend();
    let job = request(&repo.url(), &sha, vec![run("slow", "sleep 5")]);
    let (job_id, attempt) = (job.job_id, job.attempt);
    let (tx, rx) = mpsc::channel(16);
    backend.start(job.clone(), tx.clone()).await.unwrap();
    assert!(backend.start(job, tx).await.is_err());
    backend.cancel(job_id, attempt).await.unwrap();
    let events = collect(rx).await;
    assert_eq!(events.finished().0, State::Cancelled);
}
