//! Cancelling superseded runs: branch pushes, pull request updates, the default branch.

use gantry_core::State;
use gantry_engine::{EngineConfig, SupersedePolicy};

use crate::support::{Harness, LONG, config, job, pipeline, pull_request, push, sha};

async fn long_running(h: &Harness) -> String {
    h.script("build", 0, 0, LONG);
    pipeline(&[("build", &[]), ("test", &["build"])])
}

#[tokio::test]
async fn a_push_cancels_the_branch_older_runs_and_no_other() {
    let h = Harness::with(EngineConfig {
        max_running_jobs: 1,
        ..config()
    })
    .await;
    let yaml = long_running(&h).await;
    let first = h
        .submit_for(push("acme/app", "feature", &sha()), &yaml)
        .await;
    h.wait_job_state(first, "build", State::Running).await;
    // Queued behind the limit.
    let second = h
        .submit_for(push("acme/app", "feature", &sha()), &yaml)
        .await;
    let elsewhere = h.submit_for(push("acme/app", "other", &sha()), &yaml).await;
    let third = h
        .submit_for(push("acme/app", "feature", &sha()), &yaml)
        .await;

    let first_run = h.wait_final(first).await;
    assert_eq!(first_run.run.state, State::Cancelled);
    assert_eq!(
        first_run.reason,
        Some(format!("superseded by run {second}"))
    );
    assert_eq!(job(&first_run, "build").state, State::Cancelled);
    assert_eq!(job(&first_run, "test").state, State::Cancelled);
    let build = job(&first_run, "build");
    assert!(h.backend.cancelled().contains(&(build.id, 1)));

    let second_run = h.wait_final(second).await;
    assert_eq!(second_run.run.state, State::Cancelled);
    assert_eq!(
        second_run.reason,
        Some(format!("superseded by run {third}"))
    );
    assert!(
        job(&second_run, "build").started_at.is_none(),
        "never started"
    );

    assert!(
        !h.run(elsewhere).await.run.state.is_final(),
        "another branch is not touched"
    );
    assert!(!h.run(third).await.run.state.is_final());
    h.engine.cancel_run(elsewhere).await.unwrap();
    h.engine.cancel_run(third).await.unwrap();
    h.wait_final(third).await;
}

#[tokio::test]
async fn the_default_branch_is_exempt_unless_configured() {
    let h = Harness::new().await;
    let yaml = long_running(&h).await;
    let first = h.submit_for(push("acme/app", "main", &sha()), &yaml).await;
    let second = h.submit_for(push("acme/app", "main", &sha()), &yaml).await;
    h.wait_job_state(second, "build", State::Running).await;
    assert_eq!(h.run(first).await.run.state, State::Running);

    let h = Harness::with(EngineConfig {
        supersede: SupersedePolicy {
            default_branch: true,
            ..SupersedePolicy::default()
        },
        ..config()
    })
    .await;
    let yaml = long_running(&h).await;
    let first = h.submit_for(push("acme/app", "main", &sha()), &yaml).await;
    let second = h.submit_for(push("acme/app", "main", &sha()), &yaml).await;
    assert_eq!(h.wait_final(first).await.run.state, State::Cancelled);
    h.engine.cancel_run(second).await.unwrap();
}

#[tokio::test]
async fn a_pull_request_update_cancels_its_older_runs() {
    let h = Harness::new().await;
    let yaml = long_running(&h).await;
    let pr5 = h.submit_for(pull_request(5, &sha()), &yaml).await;
    let pr6 = h.submit_for(pull_request(6, &sha()), &yaml).await;
    h.wait_job_state(pr5, "build", State::Running).await;
    let pr5_again = h.submit_for(pull_request(5, &sha()), &yaml).await;
    let old = h.wait_final(pr5).await;
    assert_eq!(old.run.state, State::Cancelled);
    assert_eq!(old.reason, Some(format!("superseded by run {pr5_again}")));
    assert!(
        !h.run(pr6).await.run.state.is_final(),
        "another pull request is not touched"
    );
    assert!(!h.run(pr5_again).await.run.state.is_final());
}

#[tokio::test]
async fn superseding_can_be_turned_off() {
    let h = Harness::with(EngineConfig {
        supersede: SupersedePolicy {
            enabled: false,
            ..SupersedePolicy::default()
        },
        ..config()
    })
    .await;
    let yaml = long_running(&h).await;
    let first = h
        .submit_for(push("acme/app", "feature", &sha()), &yaml)
        .await;
    let _second = h
        .submit_for(push("acme/app", "feature", &sha()), &yaml)
        .await;
    h.wait_job_state(first, "build", State::Running).await;
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert_eq!(h.run(first).await.run.state, State::Running);
}
