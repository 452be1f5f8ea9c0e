//! `kaniko` and `trivy` steps: the real tool when on PATH, a clear failure when not.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use gantry_core::{KanikoStep, Severity, State, StatusCondition, StepKind, Stream, TrivyStep};

use crate::support::{any_repo, backend, request, run_job, step};

fn kaniko() -> StepKind {
    StepKind::Kaniko(KanikoStep {
        destinations: vec!["registry.example.com/app:abc".into()],
        cache: true,
        build_args: BTreeMap::from([("V".into(), "1".into())]),
        ..KanikoStep::default()
    })
}

fn trivy() -> StepKind {
    StepKind::Trivy(TrivyStep {
        image: "registry.example.com/app:abc".into(),
        severity: vec![Severity::Critical, Severity::High],
        ..TrivyStep::default()
    })
}

fn tool(dir: &Path, name: &str, script: &str) {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[tokio::test]
async fn missing_tools_fail_their_steps_with_a_clear_message() {
    let (repo, sha) = any_repo();
    let (backend, _root) = backend();
    let empty = tempfile::tempdir().unwrap();
    let mut scan = step("scan", trivy());
    scan.run_if = StatusCondition::Always;
    let mut job = request(&repo.url(), &sha, vec![step("build", kaniko()), scan]);
    job.spec.env = BTreeMap::from([("PATH".into(), empty.path().to_str().unwrap().into())]);
    let events = run_job(&backend, job).await;

    let kaniko = events.outcome(0);
    assert_eq!(kaniko.state, State::Failure);
    let message = "kaniko steps need the Kubernetes backend or the `executor` binary on PATH";
    assert_eq!(kaniko.reason.as_deref(), Some(message));
    assert!(events.says(message));
    let trivy = events.outcome(1);
    assert_eq!(trivy.state, State::Failure);
    let message = "trivy steps need the Kubernetes backend or the `trivy` binary on PATH";
    assert_eq!(trivy.reason.as_deref(), Some(message));
    assert!(events.says(message));
    assert_eq!(events.finished().0, State::Failure);
}

#[tokio::test]
async fn tools_on_path_run_with_arguments_from_the_step() {
    let (repo, sha) = any_repo();
    let (backend, _root) = backend();
    let bin = tempfile::tempdir().unwrap();
    tool(bin.path(), "executor", r#"echo "executor $*""#);
    tool(bin.path(), "trivy", r#"echo "trivy $*"; exit 1"#);
    let mut job = request(
        &repo.url(),
        &sha,
        vec![step("build", kaniko()), step("scan", trivy())],
    );
    let path = format!("{}:/usr/bin:/bin", bin.path().display());
    job.spec.env = BTreeMap::from([("PATH".into(), path)]);
    let events = run_job(&backend, job).await;

    let build = events.texts(0, Stream::Stdout);
    assert_eq!(build.len(), 1);
    assert!(build[0].starts_with("executor --context=/"), "{build:?}");
    assert!(
        build[0].contains(
            " --destination=registry.example.com/app:abc --cache=true \
             --cache-repo=registry.example.com/app/cache --build-arg=V=1"
        ),
        "{build:?}"
    );
    assert_eq!(events.outcome(0).state, State::Success);
    assert_eq!(
        events.texts(1, Stream::Stdout),
        ["trivy image --exit-code 1 --severity CRITICAL,HIGH registry.example.com/app:abc"]
    );
    assert_eq!(events.outcome(1).state, State::Failure);
    assert_eq!(events.outcome(1).exit_code, Some(1));
}
