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
    // Trivy as the step drives it: a scan into a JSON report, then `convert` for the gate
    // (exit 3: findings) and for the summary (written where `--output` says).
    tool(bin.path(), "trivy", FAKE_TRIVY);
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
    let calls = events.texts(1, Stream::Stdout);
    // (The third call's template has line breaks: it prints on several lines.)
    assert!(
        calls.len() >= 3 && calls[2].starts_with("trivy convert --format template --template "),
        "{calls:?}"
    );
    assert!(
        calls[0].starts_with("trivy image --format json --output /")
            && calls[0].ends_with(" --scanners vuln --no-progress registry.example.com/app:abc"),
        "{calls:?}"
    );
    assert!(
        calls[1]
            .starts_with("trivy convert --format table --exit-code 3 --severity CRITICAL,HIGH /"),
        "{calls:?}"
    );
    let scan = events.outcome(1);
    assert_eq!(scan.state, State::Failure);
    assert_eq!(scan.exit_code, Some(gantry_core::trivy::FINDINGS_EXIT_CODE));
    assert_eq!(
        scan.reason.as_deref(),
        Some("vulnerabilities found at CRITICAL, HIGH")
    );
    assert_eq!(
        scan.summary.as_deref(),
        Some("1 HIGH\nHIGH CVE-2099-1 in zlib 1.2 (fixed in 1.3)")
    );
}

/// `trivy` as the step calls it: `image … --output FILE` writes an (empty) report and exits
/// `$FAKE_SCAN_EXIT` (0), `convert --format table` exits 3 (findings), `convert --format
/// template … --output FILE` writes a summary with one HIGH finding.
const FAKE_TRIVY: &str = r#"echo "trivy $*"
out= prev=
for a in "$@"; do [ "$prev" = --output ] && out=$a; prev=$a; done
case "$1 $*" in
  image*) echo '{}' > "$out"; exit "${FAKE_SCAN_EXIT:-0}" ;;
  *"--format table"*) exit 3 ;;
  *"--format template"*) printf 'gantry:trivy CRITICAL=0 HIGH=1 MEDIUM=0 LOW=0 UNKNOWN=0\nHIGH\tCVE-2099-1\tzlib\t1.2\t1.3\n' > "$out" ;;
esac"#;

#[tokio::test]
async fn a_scanner_error_is_not_reported_as_findings() {
    let (repo, sha) = any_repo();
    let (backend, _root) = backend();
    let bin = tempfile::tempdir().unwrap();
    tool(bin.path(), "trivy", FAKE_TRIVY);
    let mut job = request(&repo.url(), &sha, vec![step("scan", trivy())]);
    let path = format!("{}:/usr/bin:/bin", bin.path().display());
    job.spec.env = BTreeMap::from([("PATH".into(), path), ("FAKE_SCAN_EXIT".into(), "1".into())]);
    let events = run_job(&backend, job).await;
    let scan = events.outcome(0);
    assert_eq!(scan.state, State::Failure);
    assert_eq!(scan.exit_code, Some(1));
    let why = scan.reason.unwrap_or_default();
    assert!(why.contains("scanner error"), "{why}");
    assert_eq!(scan.summary, None);
}
