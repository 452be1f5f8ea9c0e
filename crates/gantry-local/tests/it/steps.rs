//! Steps run in order, honour `run_if` and `allow_failure`, and see the job's environment.

use std::collections::BTreeMap;

use gantry_core::{JobEventKind, Secret, ServiceSpec, State, StatusCondition, Stream};
use gantry_local::{LocalBackend, LocalConfig};

use crate::support::{any_repo, backend, request, run, run_job};

#[tokio::test]
async fn steps_run_in_order_and_their_output_is_captured_per_step() {
    let (repo, sha) = any_repo();
    let (backend, _root) = backend();
    let job = request(
        &repo.url(),
        &sha,
        vec![
            run("first", "echo one; echo two >&2; echo three"),
            run("second", "echo four"),
        ],
    );
    let events = run_job(&backend, job).await;

    // Event order: Started, then each step's start, lines, finish; then Finished.
    let shape: Vec<String> = events
        .0
        .iter()
        .map(|e| match e {
            JobEventKind::Started => "started".to_owned(),
            JobEventKind::StepStarted { step } => format!("start {step}"),
            JobEventKind::Log(line) => format!("log {}", line.step),
            JobEventKind::StepFinished { step, .. } => format!("finish {step}"),
            JobEventKind::Finished { .. } => "finished".to_owned(),
        })
        .collect();
    assert_eq!(
        shape,
        [
            "started", "start 0", "log 0", "log 0", "log 0", "finish 0", "start 1", "log 1",
            "finish 1", "finished"
        ]
    );
    assert_eq!(events.texts(0, Stream::Stdout), ["one", "three"]);
    assert_eq!(events.texts(0, Stream::Stderr), ["two"]);
    assert_eq!(events.texts(1, Stream::Stdout), ["four"]);
    let numbers: Vec<u64> = events.lines(0).iter().map(|l| l.number).collect();
    assert_eq!(numbers, [1, 2, 3], "one numbering across both streams");
    assert_eq!(events.lines(1)[0].number, 1, "each step numbers from 1");
    assert_eq!(events.outcome(0).exit_code, Some(0));
    assert_eq!(events.finished(), (State::Success, None));
}

#[tokio::test]
async fn a_failing_step_fails_the_job_and_only_failure_and_always_steps_follow() {
    let (repo, sha) = any_repo();
    let (backend, _root) = backend();
    let mut always = run("cleanup", "echo cleaning");
    always.run_if = StatusCondition::Always;
    let mut on_failure = run("report", "echo reporting");
    on_failure.run_if = StatusCondition::Failure;
    let job = request(
        &repo.url(),
        &sha,
        vec![
            run("build", "echo building; exit 3"),
            run("test", "echo never"),
            always,
            on_failure,
        ],
    );
    let events = run_job(&backend, job).await;

    assert_eq!(
        events.states(),
        [
            State::Failure,
            State::Skipped,
            State::Success,
            State::Success
        ]
    );
    assert_eq!(events.outcome(0).exit_code, Some(3));
    assert!(!events.started(1), "skipped steps are never started");
    assert_eq!(events.texts(2, Stream::Stdout), ["cleaning"]);
    assert_eq!(events.texts(3, Stream::Stdout), ["reporting"]);
    let (state, reason) = events.finished();
    assert_eq!(state, State::Failure);
    assert_eq!(
        reason.as_deref(),
        Some("step \"build\" failed with exit code 3")
    );
}

#[tokio::test]
async fn sh_runs_with_errexit() {
    let (repo, sha) = any_repo();
    let (backend, _root) = backend();
    let job = request(&repo.url(), &sha, vec![run("e", "false\necho after")]);
    let events = run_job(&backend, job).await;
    assert_eq!(events.outcome(0).exit_code, Some(1));
    assert!(events.texts(0, Stream::Stdout).is_empty());
}

#[tokio::test]
async fn an_allowed_failure_does_not_fail_the_job() {
    let (repo, sha) = any_repo();
    let (backend, _root) = backend();
    let mut flaky = run("flaky", "exit 1");
    flaky.allow_failure = true;
    let mut on_failure = run("report", "echo reporting");
    on_failure.run_if = StatusCondition::Failure;
    let job = request(
        &repo.url(),
        &sha,
        vec![flaky, run("next", "echo next"), on_failure],
    );
    let events = run_job(&backend, job).await;
    assert_eq!(
        events.states(),
        [State::Failure, State::Success, State::Skipped]
    );
    assert_eq!(events.finished(), (State::Success, None));
}

#[tokio::test]
async fn steps_see_the_job_env_step_env_secrets_and_gantry_variables_only() {
    let (repo, sha) = any_repo();
    let (backend, _root) = backend();
    let mut step = run(
        "env",
        r#"echo "$JOB_VAR $STEP_VAR $SHARED $API_TOKEN $CI $GANTRY"
[ "$(cd "$GANTRY_WORKSPACE" && pwd -P)" = "$(pwd -P)" ] && echo "runs in the workspace"
echo "${CARGO_MANIFEST_DIR:-unset}"
read line || echo "stdin is empty""#,
    );
    step.env = BTreeMap::from([
        ("STEP_VAR".into(), "step".into()),
        ("SHARED".into(), "from-step".into()),
    ]);
    let mut job = request(&repo.url(), &sha, vec![step]);
    job.spec.env = BTreeMap::from([
        ("JOB_VAR".into(), "job".into()),
        ("SHARED".into(), "from-job".into()),
    ]);
    job.secret_values = BTreeMap::from([("API_TOKEN".into(), Secret::new("s3cret"))]);
    let events = run_job(&backend, job).await;

    assert_eq!(events.finished(), (State::Success, None));
    let out = events.texts(0, Stream::Stdout);
    assert_eq!(out[0], "job step from-step s3cret true true");
    assert_eq!(out[1], "runs in the workspace");
    // Cargo sets this for the test process; a step must not inherit it.
    assert_eq!(out[2], "unset");
    assert_eq!(out[3], "stdin is empty");
}

#[tokio::test]
async fn services_and_the_image_are_ignored_with_a_notice() {
    let (repo, sha) = any_repo();
    let (backend, _root) = backend();
    let mut job = request(&repo.url(), &sha, vec![run("a", "true")]);
    job.spec.image = Some("rust:1.95".into());
    job.spec.services = vec![ServiceSpec {
        name: "postgres".into(),
        image: "postgres:16".into(),
        ..ServiceSpec::default()
    }];
    let events = run_job(&backend, job).await;
    assert_eq!(events.finished(), (State::Success, None));
    assert!(events.says("services are ignored locally"));
    assert!(events.says("postgres:16"));
    assert!(events.says("rust:1.95 is ignored"));
}

#[tokio::test]
async fn a_missing_shell_is_an_error_not_a_failure_of_the_work() {
    let (repo, sha) = any_repo();
    let root = tempfile::tempdir().unwrap();
    let backend = LocalBackend::new(LocalConfig {
        work_root: Some(root.path().to_path_buf()),
        shell: "/nonexistent/sh".into(),
        ..LocalConfig::default()
    });
    let events = run_job(&backend, request(&repo.url(), &sha, vec![run("a", "true")])).await;
    assert_eq!(events.outcome(0).state, State::Error);
    assert!(
        events
            .outcome(0)
            .reason
            .unwrap()
            .contains("cannot start /nonexistent/sh")
    );
    assert_eq!(events.finished().0, State::Error);
}

#[tokio::test]
async fn a_step_killed_by_a_signal_fails_naming_it() {
    let (repo, sha) = any_repo();
    let (backend, _root) = backend();
    let events = run_job(
        &backend,
        request(&repo.url(), &sha, vec![run("die", "kill -KILL $$")]),
    )
    .await;
    let outcome = events.outcome(0);
    assert_eq!(outcome.state, State::Failure);
    assert_eq!(outcome.exit_code, None);
    assert_eq!(outcome.reason.as_deref(), Some("killed by signal SIGKILL"));
}

/// Engine tests run against the fake backend; the local one must tell the same story.
#[tokio::test]
async fn the_local_backend_reports_like_the_fake_one() {
    use gantry_core::Backend;
    use gantry_core::fake::{FakeBackend, FakeStep};

    let (repo, sha) = any_repo();
    let (local, _root) = backend();
    let mut report = run("report", "true");
    report.run_if = StatusCondition::Failure;
    let mut cleanup = run("cleanup", "true");
    cleanup.run_if = StatusCondition::Always;
    let job = request(
        &repo.url(),
        &sha,
        vec![run("build", "exit 3"), run("test", "true"), report, cleanup],
    );
    let fake = FakeBackend::new();
    fake.script(
        &job.spec.name,
        0,
        FakeStep {
            exit_code: 3,
            ..FakeStep::default()
        },
    );
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    fake.start(job.clone(), tx).await.unwrap();
    let expected = crate::support::collect(rx).await;
    let actual = run_job(&local, job).await;

    let shape = |events: &crate::support::Events| -> Vec<String> {
        events
            .0
            .iter()
            .filter_map(|e| match e {
                JobEventKind::Started => Some("started".to_owned()),
                JobEventKind::StepStarted { step } => Some(format!("start {step}")),
                JobEventKind::StepFinished { step, outcome } => Some(format!(
                    "finish {step} {} {:?}",
                    outcome.state, outcome.exit_code
                )),
                JobEventKind::Finished { state, .. } => Some(format!("finished {state}")),
                JobEventKind::Log(_) => None,
            })
            .collect()
    };
    assert_eq!(shape(&actual), shape(&expected));
}

/// A run-on line longer than the backend's line limit is cut, but never inside a secret's
/// value: the log masker sees one piece at a time, so a secret cut in two would reach the log
/// unmasked.
#[tokio::test]
async fn a_run_on_line_is_never_cut_inside_a_secret() {
    let (repo, sha) = any_repo();
    let (backend, _root) = backend();
    let secret = "S3CRET-VALUE-THAT-STRADDLES";
    // The secret starts 10 bytes before the 64 KiB cut.
    let before = 64 * 1024 - 10;
    let step = run(
        "long",
        &format!("head -c {before} /dev/zero | tr '\\0' x; printf '%s' \"$API_TOKEN\"; echo tail"),
    );
    let mut job = request(&repo.url(), &sha, vec![step]);
    job.secret_values = BTreeMap::from([("API_TOKEN".into(), Secret::new(secret))]);
    let events = run_job(&backend, job).await;
    assert_eq!(events.finished(), (State::Success, None));
    let out = events.texts(0, Stream::Stdout);
    assert!(out.len() >= 2, "the line was cut: {} pieces", out.len());
    assert_eq!(out.concat().len(), before + secret.len() + "tail".len());
    assert!(
        out.iter().any(|piece| piece.contains(secret)),
        "the secret was cut in two: {:?}",
        out.iter()
            .map(|p| &p[p.len().saturating_sub(30)..])
            .collect::<Vec<_>>()
    );
}
