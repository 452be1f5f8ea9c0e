//! The operator's job timeouts at planning: the default every job without a `timeout` gets,
//! and the maximum above which a pipeline is refused.

use std::time::Duration;

use gantry_core::{CommitState, State};
use gantry_engine::{EngineConfig, JobTimeouts};

use crate::support::{Harness, LONG, config, job, push, sha};

const MIN: Duration = Duration::from_secs(60);

fn with_timeouts(default: Duration, max: Duration) -> EngineConfig {
    EngineConfig {
        job_timeouts: JobTimeouts::new(default, max).unwrap(),
        ..config()
    }
}

#[tokio::test]
async fn every_job_gets_a_timeout_at_planning_its_own_or_the_default() {
    let h = Harness::with(with_timeouts(90 * MIN, 120 * MIN)).await;
    let yaml = "jobs:
  build:
    steps: [{ run: make }]
  test:
    timeout: 20m
    steps: [{ run: make test }]
";
    let id = h.submit(yaml).await;
    let run = h.wait_final(id).await;
    assert_eq!(run.run.state, State::Success, "{run:#?}");
    assert_eq!(job(&run, "build").spec.timeout, Some(90 * MIN));
    assert_eq!(job(&run, "test").spec.timeout, Some(20 * MIN));
    let handed: Vec<Option<Duration>> =
        h.backend.started().iter().map(|r| r.spec.timeout).collect();
    assert!(
        handed.contains(&Some(90 * MIN)) && handed.contains(&Some(20 * MIN)),
        "the backend gets the deadline: {handed:?}"
    );
}

#[tokio::test]
async fn a_job_without_a_timeout_ends_at_the_default() {
    let h = Harness::with(with_timeouts(Duration::from_secs(1), 60 * MIN)).await;
    // The fake backend enforces no deadline: the engine's backstop does, with the default.
    h.script("hung", 0, 0, LONG);
    let id = h
        .submit("jobs:\n  hung:\n    steps: [{ run: sleep 3600 }]\n")
        .await;
    let run = h.wait_final(id).await;
    assert_eq!(job(&run, "hung").state, State::Failure);
    assert_eq!(
        job(&run, "hung").reason.as_deref(),
        Some("timed out after 1s")
    );
}

#[tokio::test]
async fn a_pipeline_asking_for_more_than_the_maximum_is_refused_with_the_reason() {
    let h = Harness::with(with_timeouts(60 * MIN, 120 * MIN)).await;
    let job_too_long = "name: ci
jobs:
  build:
    timeout: 3h
    steps: [{ run: make }]
";
    let step_too_long = "name: nightly
jobs:
  soak:
    steps: [{ name: soak test, run: ./soak, timeout: 2h30m }]
";
    let fine = "name: lint\njobs:\n  lint:\n    steps: [{ run: make lint }]\n";
    let ids = h
        .engine
        .submit(
            push("acme/app", "main", &sha()),
            vec![
                (".gantry/ci.yaml".into(), job_too_long.into()),
                (".gantry/nightly.yaml".into(), step_too_long.into()),
                (".gantry/lint.yaml".into(), fine.into()),
            ],
        )
        .await
        .unwrap();
    assert_eq!(ids.len(), 3);

    let ci = h.run(ids[0]).await;
    assert_eq!(ci.run.state, State::Error);
    assert_eq!(ci.name, "ci");
    assert!(ci.run.jobs.is_empty(), "nothing of it runs");
    assert!(ci.run.finished_at.is_some());
    assert_eq!(
        ci.reason.as_deref(),
        Some(
            ".gantry/ci.yaml: job build asks for a timeout of 3h, more than this server's maximum of 2h"
        )
    );
    let nightly = h.run(ids[1]).await;
    assert_eq!(nightly.run.state, State::Error);
    assert_eq!(
        nightly.reason.as_deref(),
        Some(
            ".gantry/nightly.yaml: step \"soak test\" of job soak asks for a timeout of 150m, more than this server's maximum of 2h"
        )
    );
    assert_eq!(h.wait_final(ids[2]).await.run.state, State::Success);
    assert!(
        h.backend.started().iter().all(|r| r.spec.name == "lint"),
        "only the pipeline within the maximum runs"
    );

    let statuses = h.settled_statuses().await;
    let error = statuses
        .iter()
        .find(|e| e.status.context == "gantry/ci")
        .expect("an error status for the refused pipeline");
    assert_eq!(error.status.state, CommitState::Error);
    assert_eq!(
        error.status.description,
        "refused pipeline .gantry/ci.yaml: job build asks for a timeout of 3h, more than this server's maximum of 2h"
    );
}
