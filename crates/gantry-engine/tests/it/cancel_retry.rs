//! Cancel and retry by hand, timeouts, a backend that refuses.

use std::time::Duration;

use gantry_core::State;
use gantry_engine::{Error, SKIP_UPSTREAM_FAILED};

use crate::support::{Harness, LONG, attempts, job, pipeline, push, sha};

#[tokio::test]
async fn cancelling_a_run_stops_running_jobs_and_starts_nothing_more() {
    let h = Harness::new().await;
    h.script("build", 0, 0, LONG);
    let id = h
        .submit(&pipeline(&[("build", &[]), ("test", &["build"])]))
        .await;
    let run = h.wait_job_state(id, "build", State::Running).await;
    let build = job(&run, "build").clone();
    assert!(h.engine.cancel_run(id).await.unwrap());
    let run = h.wait_final(id).await;
    assert_eq!(run.run.state, State::Cancelled);
    assert_eq!(run.reason.as_deref(), Some("cancelled by hand"));
    assert_eq!(job(&run, "build").state, State::Cancelled);
    assert_eq!(job(&run, "build").steps[0].state, State::Cancelled);
    assert_eq!(job(&run, "test").state, State::Cancelled);
    assert_eq!(h.backend.cancelled(), [(build.id, 1)]);
    assert_eq!(h.backend.started().len(), 1);
    assert!(!h.engine.cancel_run(id).await.unwrap(), "already finished");
}

#[tokio::test]
async fn cancelling_one_job_skips_what_needs_it() {
    let h = Harness::new().await;
    h.script("build", 0, 0, LONG);
    let id = h
        .submit(&pipeline(&[
            ("build", &[]),
            ("test", &["build"]),
            ("lint", &[]),
        ]))
        .await;
    let run = h.wait_job_state(id, "build", State::Running).await;
    assert!(h.engine.cancel_job(job(&run, "build").id).await.unwrap());
    let run = h.wait_final(id).await;
    assert_eq!(job(&run, "build").state, State::Cancelled);
    assert_eq!(job(&run, "test").state, State::Skipped);
    assert_eq!(
        job(&run, "test").reason.as_deref(),
        Some(SKIP_UPSTREAM_FAILED)
    );
    assert_eq!(job(&run, "lint").state, State::Success);
    assert_eq!(run.run.state, State::Cancelled);
}

#[tokio::test]
async fn retrying_a_finished_run_reruns_failed_jobs_and_what_they_skipped() {
    let h = Harness::new().await;
    h.script("build", 0, 1, Duration::ZERO);
    let id = h
        .submit(&pipeline(&[
            ("build", &[]),
            ("deploy", &["build"]),
            ("lint", &[]),
        ]))
        .await;
    let run = h.wait_final(id).await;
    assert_eq!(run.run.state, State::Failure);
    assert!(matches!(
        h.engine.retry_job(job(&run, "lint").id).await,
        Ok(())
    ));
    // That made the run run again; wait for it, then retry the whole run with a fixed build.
    let run = h.wait_final(id).await;
    assert_eq!(attempts(&run, "lint").len(), 2);
    assert_eq!(run.run.state, State::Failure, "build still failed");

    h.script("build", 0, 0, Duration::ZERO);
    assert!(h.engine.retry_run(id).await.unwrap());
    let run = h.wait_final(id).await;
    assert_eq!(run.run.state, State::Success, "{run:#?}");
    let summary = |n: &str| -> Vec<(u32, State)> {
        attempts(&run, n)
            .iter()
            .map(|j| (j.attempt, j.state))
            .collect()
    };
    assert_eq!(summary("build"), [(1, State::Failure), (2, State::Success)]);
    assert_eq!(
        summary("deploy"),
        [(1, State::Skipped), (2, State::Success)]
    );
    assert_eq!(
        summary("lint"),
        [(1, State::Success), (2, State::Success)],
        "not rerun by retry_run"
    );
    assert!(
        !h.engine.retry_run(id).await.unwrap(),
        "nothing left to retry"
    );
}

#[tokio::test]
async fn retrying_what_has_not_finished_is_refused() {
    let h = Harness::new().await;
    h.script("build", 0, 0, LONG);
    let id = h.submit(&pipeline(&[("build", &[])])).await;
    let run = h.wait_job_state(id, "build", State::Running).await;
    assert!(matches!(
        h.engine.retry_run(id).await,
        Err(Error::RunNotFinished(_))
    ));
    assert!(matches!(
        h.engine.retry_job(job(&run, "build").id).await,
        Err(Error::JobNotFinished(_))
    ));
    assert!(matches!(
        h.engine.retry_run(gantry_core::RunId::new()).await,
        Err(Error::NoSuchRun(_))
    ));
    h.engine.cancel_run(id).await.unwrap();
}

#[tokio::test]
async fn a_job_past_its_timeout_is_cancelled_and_fails_then_retries() {
    let h = Harness::new().await;
    // The fake backend enforces no job timeout: the engine's backstop must.
    h.script("slow", 0, 0, LONG);
    let yaml = "jobs:
  slow:
    timeout: 1s
    retry: 1
    steps: [{ run: sleep 3600 }]
";
    let id = h.submit(yaml).await;
    let run = h.wait_final(id).await;
    let tries = attempts(&run, "slow");
    assert_eq!(tries.len(), 2);
    for j in &tries {
        assert_eq!(j.state, State::Failure);
        assert_eq!(j.reason.as_deref(), Some("timed out after 1s"));
        let took = j.finished_at.unwrap() - j.started_at.unwrap();
        assert!(took >= chrono::Duration::milliseconds(900), "{took}");
        assert!(took < chrono::Duration::seconds(3), "{took}");
    }
    assert_eq!(h.backend.cancelled().len(), 2);
    assert_eq!(run.run.state, State::Failure);
}

#[tokio::test]
async fn a_backend_that_refuses_a_job_errors_it() {
    let h = Harness::new().await;
    h.backend.refuse_starts("no nodes");
    let id = h
        .submit(&pipeline(&[("build", &[]), ("test", &["build"])]))
        .await;
    let run = h.wait_final(id).await;
    assert_eq!(job(&run, "build").state, State::Error);
    assert_eq!(
        job(&run, "build").reason.as_deref(),
        Some("cannot start job: no nodes")
    );
    assert_eq!(job(&run, "test").state, State::Skipped);
    assert_eq!(run.run.state, State::Error);
}

/// Two replicas on one database: the leader's engine runs, the follower's is never started
/// (leader election). Cancels and retries sent to the follower reach the leader's engine
/// through the store; the follower's backend is never asked to do anything.
#[tokio::test]
async fn cancel_and_retry_sent_to_a_replica_that_does_not_lead_reach_the_leader() {
    let leader = Harness::new().await;
    let follower = Harness::open(
        leader.dir.clone(),
        leader.url.clone(),
        gantry_core::fake::FakeForge::new(gantry_core::ForgeKind::Github),
        crate::support::config(),
        None,
    )
    .await;
    assert!(!follower.engine.is_started());
    leader.script("build", 0, 0, LONG);
    let id = leader
        .submit(&pipeline(&[("build", &[]), ("test", &["build"])]))
        .await;
    let run = leader.wait_job_state(id, "build", State::Running).await;
    let build = job(&run, "build").clone();

    // Answers as the leader would, checked against the store.
    assert!(matches!(
        follower.engine.retry_run(id).await,
        Err(Error::RunNotFinished(_))
    ));
    assert!(matches!(
        follower.engine.cancel_run(gantry_core::RunId::new()).await,
        Err(Error::NoSuchRun(_))
    ));
    assert!(follower.engine.cancel_run(id).await.unwrap());
    let run = leader.wait_final(id).await;
    assert_eq!(run.run.state, State::Cancelled, "{run:#?}");
    assert_eq!(run.reason.as_deref(), Some("cancelled by hand"));
    assert_eq!(job(&run, "build").state, State::Cancelled);
    assert_eq!(job(&run, "test").state, State::Cancelled);
    assert_eq!(leader.backend.cancelled(), [(build.id, 1)]);
    assert!(follower.backend.cancelled().is_empty());
    assert!(
        !follower.engine.cancel_run(id).await.unwrap(),
        "already finished"
    );
    assert!(
        leader.store().requests().await.unwrap().is_empty(),
        "applied requests are deleted"
    );

    // A retry through the follower runs on the leader's backend.
    leader.script("build", 0, 0, Duration::ZERO);
    assert!(follower.engine.retry_run(id).await.unwrap());
    leader
        .wait_run(id, "the retry to succeed on the leader", |r| {
            r.run.state == State::Success && attempts(r, "build").len() == 2
        })
        .await;
    assert!(follower.backend.started().is_empty());

    // One job: cancel the running attempt through the follower.
    leader.script("build", 0, 0, LONG);
    let id = leader.submit(&pipeline(&[("build", &[])])).await;
    let run = leader.wait_job_state(id, "build", State::Running).await;
    assert!(
        follower
            .engine
            .cancel_job(job(&run, "build").id)
            .await
            .unwrap()
    );
    let run = leader.wait_final(id).await;
    assert_eq!(job(&run, "build").state, State::Cancelled, "{run:#?}");

    // A webhook taken by the follower supersedes the branch's older run on the leader.
    let older = leader
        .submit_for(
            push("acme/app", "feature", &sha()),
            &pipeline(&[("build", &[])]),
        )
        .await;
    let run = leader.wait_job_state(older, "build", State::Running).await;
    let newer = follower
        .submit_for(
            push("acme/app", "feature", &sha()),
            &pipeline(&[("build", &[])]),
        )
        .await;
    let old = leader.wait_final(older).await;
    assert_eq!(old.run.state, State::Cancelled, "{old:#?}");
    assert_eq!(old.reason, Some(format!("superseded by run {newer}")));
    assert!(
        leader
            .backend
            .cancelled()
            .contains(&(job(&run, "build").id, 1))
    );
    assert!(follower.backend.cancelled().is_empty());
    assert!(follower.backend.started().is_empty());
    leader.engine.cancel_run(newer).await.unwrap();
}
