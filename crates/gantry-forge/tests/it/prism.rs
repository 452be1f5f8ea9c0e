//! The GitHub requests Gantry sends, validated against GitHub's own OpenAPI description
//! (`@octokit/openapi`) by Prism running as a validating mock (`--errors`: a request that does
//! not match the description is answered 4xx instead of a mocked 2xx).
//!
//! Needs the Node tools: `crates/gantry-forge/tests/node/install`. Without them this test
//! fails, saying so; it never skips.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use gantry_core::{CommitState, CommitStatus, Forge, ForgeError, ForgeKind, RepoRef};
use gantry_forge::{GithubApp, GithubAuth, GithubClient, Token};

use crate::support::fixture;

fn node_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/node")
}

struct Prism {
    child: tokio::process::Child,
    url: String,
}

async fn start_prism() -> Prism {
    let dir = node_dir();
    let prism = dir.join("node_modules/.bin/prism");
    let spec = dir.join("node_modules/@octokit/openapi/generated/api.github.com.json");
    assert!(
        prism.exists() && spec.exists(),
        "Prism and GitHub's OpenAPI description are not installed: run {}",
        dir.join("install").display()
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = tokio::process::Command::new(prism)
        .args([
            "mock",
            "--errors",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .arg(spec)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start prism");
    let url = format!("http://127.0.0.1:{port}");
    gantry_forge::install_crypto_provider();
    // Loading GitHub's description takes Prism a while.
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if reqwest::get(format!("{url}/zen")).await.is_ok() {
            return Prism { child, url };
        }
        assert!(Instant::now() < deadline, "prism did not start within 180s");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn repo() -> RepoRef {
    RepoRef {
        forge: ForgeKind::Github,
        full_name: "acme/app".into(),
        clone_url: "https://github.com/acme/app.git".into(),
        web_url: None,
        default_branch: Some("main".into()),
    }
}

fn status(state: CommitState) -> CommitStatus {
    CommitStatus {
        sha: "6dcb09b5b57875f334f61aebed695e2e4193db5e".into(),
        context: "gantry/ci/test".into(),
        state,
        description: format!("test {state:?} after 1m 12s"),
        target_url: Some("https://gantry.example.com/runs/0190a1b2/jobs/test".into()),
    }
}

const STATES: [CommitState; 6] = [
    CommitState::Pending,
    CommitState::Running,
    CommitState::Success,
    CommitState::Failure,
    CommitState::Error,
    CommitState::Cancelled,
];

#[tokio::test]
async fn github_requests_match_github_s_openapi_description() {
    let mut prism = start_prism().await;
    let url = prism.url.clone();

    // Prism does reject what the description does not allow.
    let invalid = reqwest::Client::new()
        .post(format!(
            "{url}/repos/acme/app/statuses/6dcb09b5b57875f334f61aebed695e2e4193db5e"
        ))
        .json(&serde_json::json!({"state": "running"}))
        .send()
        .await
        .unwrap();
    assert_eq!(invalid.status().as_u16(), 422, "prism validates requests");

    // Commit statuses with a token, in every state.
    let client = GithubClient::new(&url, GithubAuth::Token(Token::new("ghp_test"))).unwrap();
    for state in STATES {
        client
            .report_status(&repo(), &status(state))
            .await
            .unwrap_or_else(|e| panic!("status {state:?}: {e}"));
    }
    let mut bare = status(CommitState::Success);
    bare.target_url = None;
    client.report_status(&repo(), &bare).await.unwrap();

    // Reading files: the contents API requests are valid. (Prism matches `{path}` as one
    // segment only, so these paths have no slash; GitHub itself takes nested paths as is.)
    let sha = status(CommitState::Success).sha;
    match client.read_file(&repo(), &sha, ".gantry.yaml").await {
        Ok(Some(_)) => {}
        // The description's example file content is not valid base64 ("\\n" inside): the
        // request was accepted all the same.
        Err(ForgeError::Api {
            status: 200,
            message,
            ..
        }) if message.contains("undecodable") => {}
        other => panic!("contents request refused: {other:?}"),
    }
    client
        .list_dir(&repo(), &sha, ".gantry")
        .await
        .expect("contents listing accepted");

    // As a GitHub App: installation lookup, token exchange, statuses and check runs (created,
    // then updated) in every state.
    let pem = String::from_utf8(fixture("github", "test-app-key.pem")).unwrap();
    let app = GithubApp::new(12345, &pem).unwrap();
    let client = GithubClient::new(&url, GithubAuth::App(app)).unwrap();
    for state in STATES {
        client
            .report_status(&repo(), &status(state))
            .await
            .unwrap_or_else(|e| panic!("status and check run {state:?}: {e}"));
    }

    prism.child.kill().await.unwrap();
}
