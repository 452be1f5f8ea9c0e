//! DAG order, failure propagation, `when: status` jobs and steps, step outcomes and summaries,
//! allow_failure, retries, invalid pipelines.

use std::time::Duration;

use gantry_core::fake::FakeStep;
use gantry_core::{CommitState, State};
use gantry_engine::{SKIP_NOTHING_FAILED, SKIP_UPSTREAM_FAILED};

use crate::support::{Harness, attempts, job, pipeline, push, sha};

#[tokio::test]
async fn jobs_start_only_after_the_jobs_they_need_have_finished() {
    let h = Harness::new().await;
    h.script("build", 0, 0, Duration::from_millis(80));
    let id = h
        .submit(&pipeline(&[
            ("build", &[]),
            ("lint", &[]),
            ("test", &["build"]),
            ("package", &["test", "lint"]),
        ]))
        .await;
    let run = h.wait_final(id).await;
    assert_eq!(run.run.state, State::Success, "{run:#?}");
    let started: Vec<String> = h
        .backend
        .started()
        .iter()
        .map(|r| r.spec.name.clone())
        .collect();
    assert_eq!(started.len(), 4);
    let pos = |n: &str| started.iter().position(|s| s == n).unwrap();
    assert!(
        pos("build") < pos("test") && pos("lint") < pos("package") && pos("test") < pos("package")
    );
    let (build, test, package, lint) = (
        job(&run, "build"),
        job(&run, "test"),
        job(&run, "package"),
        job(&run, "lint"),
    );
    assert!(test.started_at.unwrap() >= build.finished_at.unwrap());
    assert!(package.started_at.unwrap() >= test.finished_at.unwrap());
    assert!(package.started_at.unwrap() >= lint.finished_at.unwrap());
    assert!(
        lint.started_at.unwrap() < build.finished_at.unwrap(),
        "jobs without needs run side by side"
    );
    assert!(run.run.started_at.is_some() && run.run.finished_at.is_some());
    for j in &run.run.jobs {
        assert_eq!(j.steps.len(), 1);
        assert_eq!(j.steps[0].state, State::Success);
        assert_eq!(j.steps[0].exit_code, Some(0));
        assert!(j.steps[0].started_at.is_some() && j.steps[0].finished_at.is_some());
    }

    // Statuses: the run context and one per job, ending in success, each linking to the viewer.
    let statuses = h.settled_statuses().await;
    let last = |ctx: &str| {
        statuses
            .iter()
            .rev()
            .find(|e| e.status.context == ctx)
            .unwrap_or_else(|| panic!("no status for {ctx}"))
    };
    assert_eq!(last("gantry/gantry").status.state, CommitState::Success);
    assert_eq!(
        last("gantry/gantry").status.target_url.as_deref(),
        Some(format!("https://ci.example.invalid/runs/{id}").as_str())
    );
    for name in ["build", "lint", "test", "package"] {
        let s = &last(&format!("gantry/gantry/{name}")).status;
        assert_eq!(s.state, CommitState::Success, "{name}");
        assert!(s.target_url.as_deref().unwrap().contains("/jobs/"));
    }
    let delivered = h.forge.statuses();
    assert!(delivered.iter().any(|(repo, s)| repo == "acme/app"
        && s.context == "gantry/gantry"
        && s.state == CommitState::Success));
    // The log went to the sink, one file per step.
    let log = std::fs::read_to_string(h.logs().path(build.id, 1, 0)).unwrap();
    assert!(log.contains("stdout build step 0"), "{log}");
}

#[tokio::test]
async fn a_failure_skips_dependents_and_runs_failure_and_always_jobs() {
    let h = Harness::new().await;
    h.script("build", 0, 7, Duration::ZERO);
    let yaml = "jobs:
  build:
    steps: [{ run: make }]
  deploy:
    needs: [build]
    steps: [{ run: deploy }]
  notify:
    needs: [build]
    when: { status: failure }
    steps: [{ run: notify }]
  cleanup:
    needs: [deploy]
    when: { status: always }
    steps: [{ run: cleanup }]
  after_cleanup:
    needs: [cleanup]
    steps: [{ run: more }]
  celebrate:
    needs: [lint]
    when: { status: failure }
    steps: [{ run: party }]
  lint:
    steps: [{ run: lint }]
";
    let id = h.submit(yaml).await;
    let run = h.wait_final(id).await;
    let state = |n: &str| (job(&run, n).state, job(&run, n).reason.clone());
    assert_eq!(state("build").0, State::Failure);
    assert_eq!(
        state("deploy"),
        (State::Skipped, Some(SKIP_UPSTREAM_FAILED.into()))
    );
    assert_eq!(state("notify").0, State::Success);
    assert_eq!(
        state("cleanup").0,
        State::Success,
        "always runs after a skipped need"
    );
    assert_eq!(
        state("after_cleanup"),
        (State::Success, None),
        "cleanup succeeded, so what needs it runs"
    );
    assert_eq!(
        state("celebrate"),
        (State::Skipped, Some(SKIP_NOTHING_FAILED.into()))
    );
    assert_eq!(state("lint").0, State::Success);
    assert_eq!(run.run.state, State::Failure);
    assert_eq!(run.reason.as_deref(), Some("failed: build"));
    let deploy = job(&run, "deploy");
    assert_eq!(deploy.steps[0].state, State::Skipped);
    assert!(deploy.started_at.is_none());
    let statuses = h.settled_statuses().await;
    let last_run = statuses
        .iter()
        .rev()
        .find(|e| e.status.context == "gantry/gantry")
        .unwrap();
    assert_eq!(last_run.status.state, CommitState::Failure);
    assert_eq!(last_run.status.description, "failed: build");
}

#[tokio::test]
async fn failure_and_always_steps_run_after_a_failed_step_and_are_recorded() {
    let h = Harness::new().await;
    h.script("test", 0, 2, Duration::ZERO);
    let yaml = "jobs:
  test:
    steps:
      - { name: unit, run: make test }
      - { name: package, run: make package }
      - { name: diagnostics, run: dmesg, when: { status: failure } }
      - { name: cleanup, run: rm -rf tmp, when: { status: always } }
";
    let id = h.submit(yaml).await;
    let run = h.wait_final(id).await;
    let steps: Vec<_> = job(&run, "test")
        .steps
        .iter()
        .map(|s| (s.name.as_str(), s.state, s.exit_code))
        .collect();
    assert_eq!(
        steps,
        [
            ("unit", State::Failure, Some(2)),
            ("package", State::Skipped, None),
            ("diagnostics", State::Success, Some(0)),
            ("cleanup", State::Success, Some(0)),
        ]
    );
    assert_eq!(run.run.state, State::Failure);
}

/// What a backend says a step produced (a pushed digest, a scan's findings) is stored with the
/// step, for an ended step whatever its state; a step that says nothing has none.
#[tokio::test]
async fn the_summary_a_backend_gives_a_step_is_stored_with_it() {
    let h = Harness::new().await;
    let digest = "pushed digest sha256:0123abcd";
    let findings = "2 vulnerabilities (HIGH: 1, CRITICAL: 1)\nCRITICAL CVE-2099-0001 in openssl";
    h.backend.script(
        "image",
        0,
        FakeStep {
            summary: Some(digest.into()),
            ..FakeStep::default()
        },
    );
    h.backend.script(
        "image",
        1,
        FakeStep {
            exit_code: 1,
            summary: Some(findings.into()),
            ..FakeStep::default()
        },
    );
    let yaml = "jobs:
  image:
    steps:
      - { name: build, run: kaniko }
      - { name: scan, run: trivy }
      - { name: report, run: cat report, when: { status: always } }
";
    let id = h.submit(yaml).await;
    let run = h.wait_final(id).await;
    let steps: Vec<_> = job(&run, "image")
        .steps
        .iter()
        .map(|s| (s.name.as_str(), s.state, s.summary.as_deref()))
        .collect();
    assert_eq!(
        steps,
        [
            ("build", State::Success, Some(digest)),
            ("scan", State::Failure, Some(findings)),
            ("report", State::Success, None),
        ]
    );
    let stored = h
        .store()
        .get_job(job(&run, "image").id, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.steps[0].summary.as_deref(), Some(digest));
}

#[tokio::test]
async fn allow_failure_jobs_never_block_nor_fail_the_run() {
    let h = Harness::new().await;
    h.script("flaky", 0, 1, Duration::ZERO);
    let yaml = "jobs:
  flaky:
    allow_failure: true
    steps: [{ run: maybe }]
  after:
    needs: [flaky]
    steps: [{ run: next }]
";
    let id = h.submit(yaml).await;
    let run = h.wait_final(id).await;
    assert_eq!(job(&run, "flaky").state, State::Failure);
    assert_eq!(job(&run, "after").state, State::Success);
    assert_eq!(run.run.state, State::Success);
}

#[tokio::test]
async fn failed_jobs_are_retried_and_every_attempt_and_its_log_is_kept() {
    let h = Harness::new().await;
    h.script("flaky", 0, 1, Duration::ZERO);
    let yaml = "jobs:
  flaky:
    retry: 2
    steps: [{ run: maybe }]
";
    let id = h.submit(yaml).await;
    let run = h.wait_final(id).await;
    let tries = attempts(&run, "flaky");
    let summary: Vec<_> = tries
        .iter()
        .map(|j| (j.attempt, j.state, j.retries_left))
        .collect();
    assert_eq!(
        summary,
        [
            (1, State::Failure, 2),
            (2, State::Failure, 1),
            (3, State::Failure, 0)
        ]
    );
    assert!(
        tries.iter().all(|j| j.id == tries[0].id),
        "attempts share the job id"
    );
    assert_eq!(run.run.state, State::Failure);
    for attempt in 1..=3 {
        let log = std::fs::read_to_string(h.logs().path(tries[0].id, attempt, 0)).unwrap();
        assert!(log.contains("flaky step 0"));
    }
    let statuses = h.settled_statuses().await;
    assert!(
        statuses
            .iter()
            .any(|e| e.status.context == "gantry/gantry/flaky"
                && e.status.description.starts_with("retrying (attempt 2)"))
    );
}

#[tokio::test]
async fn a_pipeline_that_does_not_parse_becomes_an_error_run_with_an_error_status() {
    let h = Harness::new().await;
    let files = vec![
        (
            ".gantry/broken.yaml".to_string(),
            "jobs:\n  build:\n    stepz: []\n".to_string(),
        ),
        (".gantry/ok.yaml".to_string(), pipeline(&[("build", &[])])),
    ];
    let ids = h
        .engine
        .submit(push("acme/app", "main", &sha()), files)
        .await
        .unwrap();
    assert_eq!(ids.len(), 2);
    let broken = h.run(ids[0]).await;
    assert_eq!(broken.run.state, State::Error);
    assert_eq!(broken.name, "broken");
    assert!(broken.run.jobs.is_empty());
    let reason = broken.reason.clone().unwrap();
    assert!(
        reason.starts_with(".gantry/broken.yaml:3:5: error:"),
        "{reason}"
    );
    assert!(broken.run.finished_at.is_some());
    let ok = h.wait_final(ids[1]).await;
    assert_eq!(ok.run.state, State::Success);
    let statuses = h.settled_statuses().await;
    let error = statuses
        .iter()
        .find(|e| e.status.context == "gantry/broken")
        .expect("an error status for the broken pipeline");
    assert_eq!(error.status.state, CommitState::Error);
    assert!(
        error
            .status
            .description
            .starts_with("invalid pipeline .gantry/broken.yaml: ")
    );
    assert!(
        h.forge
            .statuses()
            .iter()
            .any(|(_, s)| s.context == "gantry/broken")
    );
}

#[tokio::test]
async fn pipelines_whose_on_does_not_match_start_nothing() {
    let h = Harness::new().await;
    let yaml = "on: { pull_request: {} }\njobs:\n  build:\n    steps: [{ run: make }]\n";
    let ids = h
        .engine
        .submit(
            push("acme/app", "main", &sha()),
            vec![(".gantry.yaml".into(), yaml.into())],
        )
        .await
        .unwrap();
    assert!(ids.is_empty());
    assert!(h.backend.started().is_empty());
}

#[tokio::test]
async fn manual_triggers_run_pipelines_that_accept_them() {
    let h = Harness::new().await;
    let yaml = "on: { manual: {} }\njobs:\n  build:\n    steps: [{ run: make }]\n";
    let ids = h
        .engine
        .trigger_manual(
            push("acme/app", "main", &sha()),
            vec![(".gantry.yaml".into(), yaml.into())],
        )
        .await
        .unwrap();
    let run = h.wait_final(ids[0]).await;
    assert_eq!(run.run.state, State::Success);
    assert_eq!(run.run.trigger.event, gantry_core::Event::Manual);
}

#[tokio::test]
async fn the_engine_runs_on_postgresql_too() {
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let url = crate::support::postgres_url().await;
    let forge = gantry_core::fake::FakeForge::new(gantry_core::ForgeKind::Github);
    let h = Harness::open(dir, url, forge, crate::support::config(), None).await;
    h.engine.start().await.unwrap();
    h.script("build", 0, 3, Duration::ZERO);
    let yaml = "jobs:
  build:
    retry: 1
    steps: [{ run: make }]
  deploy:
    needs: [build]
    steps: [{ run: deploy }]
  notify:
    needs: [build]
    when: { status: failure }
    steps: [{ run: notify }]
";
    let id = h.submit(yaml).await;
    let run = h.wait_final(id).await;
    assert_eq!(attempts(&run, "build").len(), 2);
    assert_eq!(job(&run, "deploy").state, State::Skipped);
    assert_eq!(job(&run, "notify").state, State::Success);
    assert_eq!(run.run.state, State::Failure);
    let statuses = h.settled_statuses().await;
    assert!(statuses.iter().all(|e| e.outcome.is_some()));
    h.script("build", 0, 0, Duration::ZERO);
    assert!(h.engine.retry_run(id).await.unwrap());
    assert_eq!(h.wait_final(id).await.run.state, State::Success);
}
