//! The API clients against a scripted loopback server: the requests they send, what they make
//! of the answers, and how failures (429 with Retry-After, rate limits, 500s, timeouts, nobody
//! listening) become `ForgeError`s.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use gantry_core::{CommitState, CommitStatus, Forge, ForgeError, ForgeKind, RepoRef};
use gantry_forge::{GiteaClient, GithubApp, GithubAuth, GithubClient, GitlabClient, Token};
use serde_json::json;

use crate::mock::{MockServer, Reply, Request};
use crate::support::fixture;

const SHA: &str = "6dcb09b5b57875f334f61aebed695e2e4193db5e";

pub(crate) fn repo(forge: ForgeKind, full_name: &str) -> RepoRef {
    RepoRef {
        forge,
        full_name: full_name.into(),
        clone_url: format!("https://example.com/{full_name}.git"),
        web_url: None,
        default_branch: Some("main".into()),
    }
}

fn status(state: CommitState) -> CommitStatus {
    CommitStatus {
        sha: SHA.into(),
        context: "gantry/ci/test".into(),
        state,
        description: "test passed in 42s".into(),
        target_url: Some("https://gantry.example.com/runs/1/jobs/test".into()),
    }
}

fn github(url: &str) -> GithubClient {
    GithubClient::new(url, GithubAuth::Token(Token::new("ghp_SECRET_TOKEN"))).unwrap()
}

#[tokio::test]
async fn github_reads_a_file_at_a_commit_through_the_contents_api() {
    let server = MockServer::start(|r| {
        if r.target.contains("missing") {
            Reply::json(404, json!({"message": "Not Found"}))
        } else {
            Reply::json(
                200,
                json!({"type": "file", "encoding": "base64", "content": "b246IHB1\nc2gK\n"}),
            )
        }
    })
    .await;
    let client = github(&format!("{}/api/v3", server.url));
    let repo = repo(ForgeKind::Github, "acme/app");
    let got = client
        .read_file(&repo, SHA, ".gantry/ci.yaml")
        .await
        .unwrap();
    assert_eq!(got.as_deref(), Some(&b"on: push\n"[..]));
    assert_eq!(
        client.read_file(&repo, SHA, "missing.yaml").await.unwrap(),
        None
    );
    let r = &server.requests()[0];
    assert_eq!(r.method, "GET");
    assert_eq!(
        r.target,
        format!("/api/v3/repos/acme/app/contents/.gantry/ci.yaml?ref={SHA}")
    );
    assert_eq!(r.header("authorization"), Some("Bearer ghp_SECRET_TOKEN"));
    assert!(
        r.header("accept")
            .unwrap()
            .starts_with("application/vnd.github+json")
    );
    assert_eq!(r.header("x-github-api-version"), Some("2022-11-28"));
    assert!(r.header("user-agent").unwrap().starts_with("gantry/"));
}

#[tokio::test]
async fn github_fetches_large_files_raw_and_lists_only_files() {
    let server = MockServer::start(|r| {
        if r.target.contains("big.yaml") {
            if r.header("accept") == Some("application/vnd.github.raw+json") {
                Reply::raw(200, b"big: file\n")
            } else {
                Reply::json(
                    200,
                    json!({"type": "file", "encoding": "none", "content": ""}),
                )
            }
        } else {
            Reply::json(
                200,
                json!([
                    {"type": "file", "name": "a.yaml"},
                    {"type": "dir", "name": "sub"},
                    {"type": "file", "name": "b.yaml"},
                    {"type": "symlink", "name": "link.yaml"}
                ]),
            )
        }
    })
    .await;
    let client = github(&server.url);
    let repo = repo(ForgeKind::Github, "acme/app");
    assert_eq!(
        client
            .read_file(&repo, SHA, "big.yaml")
            .await
            .unwrap()
            .as_deref(),
        Some(&b"big: file\n"[..])
    );
    assert_eq!(
        client.list_dir(&repo, SHA, ".gantry").await.unwrap(),
        ["a.yaml", "b.yaml"]
    );
    assert_eq!(
        client.read_file(&repo, SHA, ".gantry").await.unwrap(),
        None,
        "a directory is not a file"
    );
}

#[tokio::test]
async fn github_posts_commit_statuses_in_its_vocabulary() {
    let server = MockServer::start(|_| Reply::json(201, json!({"id": 1}))).await;
    let client = github(&server.url);
    let repo = repo(ForgeKind::Github, "acme/app");
    let states = [
        (CommitState::Pending, "pending"),
        (CommitState::Running, "pending"),
        (CommitState::Success, "success"),
        (CommitState::Failure, "failure"),
        (CommitState::Error, "error"),
        (CommitState::Cancelled, "error"),
    ];
    for (state, _) in states {
        client.report_status(&repo, &status(state)).await.unwrap();
    }
    let requests = server.requests();
    assert_eq!(
        requests.len(),
        states.len(),
        "a token reports no check runs"
    );
    for (r, (_, expected)) in requests.iter().zip(states) {
        assert_eq!(r.method, "POST");
        assert_eq!(r.target, format!("/repos/acme/app/statuses/{SHA}"));
        let body = r.json();
        assert_eq!(body["state"], expected);
        assert_eq!(body["context"], "gantry/ci/test");
        assert_eq!(body["description"], "test passed in 42s");
        assert_eq!(
            body["target_url"],
            "https://gantry.example.com/runs/1/jobs/test"
        );
    }
    let mut long = status(CommitState::Success);
    long.description = "é".repeat(500);
    client.report_status(&repo, &long).await.unwrap();
    let body = server.requests().last().unwrap().json();
    assert!(body["description"].as_str().unwrap().chars().count() <= 140);
}

async fn failure(reply: Reply, timeout: Duration) -> ForgeError {
    let server = MockServer::start(move |_| reply.clone()).await;
    let client = github(&server.url).with_timeout(timeout);
    client
        .report_status(
            &repo(ForgeKind::Github, "acme/app"),
            &status(CommitState::Success),
        )
        .await
        .unwrap_err()
}

#[tokio::test]
async fn a_429_carries_its_retry_after() {
    let err = failure(
        Reply::json(429, json!({"message": "slow down"})).header("retry-after", "7"),
        Duration::from_secs(5),
    )
    .await;
    assert!(err.is_retryable());
    match err {
        ForgeError::Api {
            status,
            message,
            retry_after,
            forge,
        } => {
            assert_eq!(
                (forge, status, retry_after),
                (ForgeKind::Github, 429, Some(7))
            );
            assert_eq!(message, "slow down");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn an_exhausted_rate_limit_waits_until_its_reset() {
    let reset = chrono::Utc::now().timestamp() + 30;
    let err = failure(
        Reply::json(
            403,
            json!({"message": "API rate limit exceeded for installation ID 1."}),
        )
        .header("x-ratelimit-remaining", "0")
        .header("x-ratelimit-reset", &reset.to_string()),
        Duration::from_secs(5),
    )
    .await;
    assert!(
        err.is_retryable(),
        "a rate-limit 403 is worth retrying: {err}"
    );
    let ForgeError::Api {
        status,
        retry_after,
        ..
    } = err
    else {
        panic!("{err:?}")
    };
    assert_eq!(status, 429);
    assert!((28..=31).contains(&retry_after.unwrap()), "{retry_after:?}");

    // A secondary rate limit: 403 with Retry-After.
    let err = failure(
        Reply::json(
            403,
            json!({"message": "You have exceeded a secondary rate limit."}),
        )
        .header("retry-after", "60"),
        Duration::from_secs(5),
    )
    .await;
    assert!(matches!(
        err,
        ForgeError::Api {
            status: 429,
            retry_after: Some(60),
            ..
        }
    ));

    // A plain 403 is a refusal.
    let err = failure(
        Reply::json(
            403,
            json!({"message": "Resource not accessible by integration"}),
        ),
        Duration::from_secs(5),
    )
    .await;
    assert!(matches!(
        err,
        ForgeError::Api {
            status: 403,
            retry_after: None,
            ..
        }
    ));
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn server_errors_are_retryable_and_client_errors_are_not() {
    let err = failure(
        Reply::raw(502, b"<html>Bad Gateway</html>"),
        Duration::from_secs(5),
    )
    .await;
    assert!(err.is_retryable());
    assert!(err.to_string().contains("502"), "{err}");
    let err = failure(
        Reply::json(422, json!({"message": "Validation Failed"})),
        Duration::from_secs(5),
    )
    .await;
    assert!(!err.is_retryable());
    assert_eq!(err.to_string(), "github API error 422: Validation Failed");
}

#[tokio::test]
async fn a_forge_that_does_not_answer_in_time_is_unreachable() {
    let err = failure(
        Reply::json(201, json!({})).after(Duration::from_secs(5)),
        Duration::from_millis(300),
    )
    .await;
    match &err {
        ForgeError::Unreachable { forge, message } => {
            assert_eq!(*forge, ForgeKind::Github);
            assert_eq!(message, "timed out");
        }
        other => panic!("{other:?}"),
    }
    assert!(err.is_retryable());
}

#[tokio::test]
async fn nobody_listening_is_unreachable() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let client = github(&format!("http://127.0.0.1:{port}"));
    let err = client
        .read_file(&repo(ForgeKind::Github, "acme/app"), SHA, "x")
        .await
        .unwrap_err();
    assert!(matches!(err, ForgeError::Unreachable { .. }), "{err:?}");
}

#[tokio::test]
async fn tokens_appear_in_no_debug_output_or_error() {
    let server = MockServer::start(|_| Reply::json(500, json!({"message": "oops"}))).await;
    let client = github(&server.url);
    let err = client
        .report_status(
            &repo(ForgeKind::Github, "acme/app"),
            &status(CommitState::Success),
        )
        .await
        .unwrap_err();
    let gitlab = GitlabClient::new(&server.url, Some(Token::new("glpat-SECRET_TOKEN"))).unwrap();
    let gitea = GiteaClient::new(&server.url, Some(Token::new("gitea_SECRET_TOKEN"))).unwrap();
    let shown = format!("{client:?} {gitlab:?} {gitea:?} {err} {err:?}");
    assert!(!shown.contains("SECRET_TOKEN"), "{shown}");
}

/// A GitHub API for an App: installation lookup, token exchange, statuses, check runs (none
/// yet on the commit).
fn app_api(expires_in: i64, counter: Arc<AtomicUsize>) -> impl Fn(&Request) -> Reply {
    app_api_with_runs(expires_in, counter, &[])
}

/// [`app_api`] where the commit already has check runs with `existing` ids (an earlier Gantry
/// process began them).
fn app_api_with_runs(
    expires_in: i64,
    counter: Arc<AtomicUsize>,
    existing: &[u64],
) -> impl Fn(&Request) -> Reply {
    let listed = json!({
        "total_count": existing.len(),
        "check_runs": existing.iter().map(|id| json!({"id": id})).collect::<Vec<_>>(),
    });
    move |r| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        let path = r.target.split('?').next().unwrap_or_default();
        if r.method == "GET" && path == format!("/repos/acme/app/commits/{SHA}/check-runs") {
            return Reply::json(200, listed.clone());
        }
        match (r.method.as_str(), r.target.as_str()) {
            ("GET", "/repos/acme/app/installation") => Reply::json(200, json!({"id": 42})),
            ("POST", "/app/installations/42/access_tokens") => {
                let expires = chrono::Utc::now() + chrono::Duration::seconds(expires_in);
                Reply::json(
                    201,
                    json!({"token": format!("ghs_installation_{n}"), "expires_at": expires.to_rfc3339()}),
                )
            }
            ("POST", "/repos/acme/app/check-runs") => Reply::json(201, json!({"id": 7})),
            ("PATCH", "/repos/acme/app/check-runs/7") => Reply::json(200, json!({"id": 7})),
            ("POST", t) if t.starts_with("/repos/acme/app/statuses/") => {
                Reply::json(201, json!({"id": 1}))
            }
            _ => Reply::json(404, json!({"message": "Not Found"})),
        }
    }
}

pub(crate) fn app() -> GithubApp {
    let pem = String::from_utf8(fixture("github", "test-app-key.pem")).unwrap();
    GithubApp::new(12345, &pem).unwrap()
}

pub(crate) fn check_jwt(authorization: &str) {
    let jwt = authorization.strip_prefix("Bearer ").unwrap();
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3, "{jwt}");
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header: serde_json::Value = serde_json::from_slice(&b64.decode(parts[0]).unwrap()).unwrap();
    assert_eq!(header["alg"], "RS256");
    let claims: serde_json::Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
    assert_eq!(claims["iss"], "12345");
    let now = chrono::Utc::now().timestamp();
    let (iat, exp) = (
        claims["iat"].as_i64().unwrap(),
        claims["exp"].as_i64().unwrap(),
    );
    assert!(iat <= now && exp > now && exp - iat <= 600, "{claims}");
    let public = fixture("github", "test-app-key.pub.der");
    ring::signature::UnparsedPublicKey::new(&ring::signature::RSA_PKCS1_2048_8192_SHA256, public)
        .verify(
            format!("{}.{}", parts[0], parts[1]).as_bytes(),
            &b64.decode(parts[2]).unwrap(),
        )
        .expect("the JWT is signed with the App's key");
}

#[tokio::test]
async fn a_github_app_exchanges_a_jwt_for_a_cached_installation_token_and_reports_check_runs() {
    let server = MockServer::start(app_api(3600, Arc::default())).await;
    let client = GithubClient::new(&server.url, GithubAuth::App(app())).unwrap();
    let repo = repo(ForgeKind::Github, "acme/app");
    client
        .report_status(&repo, &status(CommitState::Running))
        .await
        .unwrap();
    client
        .report_status(&repo, &status(CommitState::Success))
        .await
        .unwrap();
    let requests = server.requests();
    let calls: Vec<String> = requests
        .iter()
        .map(|r| format!("{} {}", r.method, r.target.split('?').next().unwrap()))
        .collect();
    assert_eq!(
        calls,
        [
            "GET /repos/acme/app/installation",
            "POST /app/installations/42/access_tokens",
            &format!("POST /repos/acme/app/statuses/{SHA}"),
            &format!("GET /repos/acme/app/commits/{SHA}/check-runs"),
            "POST /repos/acme/app/check-runs",
            &format!("POST /repos/acme/app/statuses/{SHA}"),
            "PATCH /repos/acme/app/check-runs/7",
        ]
    );
    let lookup = &requests[3].target;
    assert!(
        lookup.contains("check_name=gantry%2Fci%2Ftest")
            && lookup.contains("app_id=12345")
            && lookup.contains("filter=latest"),
        "{lookup}"
    );
    check_jwt(requests[0].header("authorization").unwrap());
    check_jwt(requests[1].header("authorization").unwrap());
    assert_eq!(
        requests[2].header("authorization"),
        Some("Bearer ghs_installation_1")
    );
    assert_eq!(
        requests[6].header("authorization"),
        Some("Bearer ghs_installation_1")
    );
    let created = requests[4].json();
    assert_eq!(created["name"], "gantry/ci/test");
    assert_eq!(created["head_sha"], SHA);
    assert_eq!(created["status"], "in_progress");
    assert!(created.get("conclusion").is_none());
    assert_eq!(
        created["details_url"],
        "https://gantry.example.com/runs/1/jobs/test"
    );
    let patched = requests[6].json();
    assert_eq!(
        (patched["status"].as_str(), patched["conclusion"].as_str()),
        (Some("completed"), Some("success"))
    );
}

/// After a restart the client knows no check run: it finds the one an earlier process began
/// on the commit and updates it, instead of adding a second one to the pull request.
#[tokio::test]
async fn a_restarted_github_app_client_updates_the_check_run_it_began_before() {
    let server = MockServer::start(app_api_with_runs(3600, Arc::default(), &[7])).await;
    let client = GithubClient::new(&server.url, GithubAuth::App(app())).unwrap();
    let repo = repo(ForgeKind::Github, "acme/app");
    client
        .report_status(&repo, &status(CommitState::Success))
        .await
        .unwrap();
    client
        .report_status(&repo, &status(CommitState::Success))
        .await
        .unwrap();
    let calls: Vec<String> = server
        .requests()
        .iter()
        .filter(|r| r.target.contains("check-runs"))
        .map(|r| format!("{} {}", r.method, r.target.split('?').next().unwrap()))
        .collect();
    assert_eq!(
        calls,
        [
            format!("GET /repos/acme/app/commits/{SHA}/check-runs"),
            "PATCH /repos/acme/app/check-runs/7".to_owned(),
            "PATCH /repos/acme/app/check-runs/7".to_owned(),
        ],
        "one lookup, then the known run is updated; never a second run"
    );
}

#[tokio::test]
async fn an_installation_token_about_to_expire_is_not_reused() {
    // Two minutes left is inside the refresh margin: every use fetches a new one.
    let server = MockServer::start(app_api(120, Arc::default())).await;
    let client = GithubClient::new(&server.url, GithubAuth::App(app()))
        .unwrap()
        .with_check_runs(false);
    let repo = repo(ForgeKind::Github, "acme/app");
    for _ in 0..2 {
        client.read_file(&repo, SHA, "x").await.unwrap();
    }
    let exchanges = server
        .requests()
        .iter()
        .filter(|r| r.target.ends_with("/access_tokens"))
        .count();
    assert_eq!(exchanges, 2);
    let lookups = server
        .requests()
        .iter()
        .filter(|r| r.target.ends_with("/installation"))
        .count();
    assert_eq!(lookups, 1, "the installation id stays cached");
}

#[tokio::test]
async fn a_refused_installation_token_is_forgotten() {
    let served = Arc::new(AtomicUsize::new(0));
    let inner = app_api(3600, served.clone());
    let statuses = Arc::new(AtomicUsize::new(0));
    let server = MockServer::start(move |r| {
        if r.target.contains("/statuses/") && statuses.fetch_add(1, Ordering::SeqCst) == 0 {
            return Reply::json(401, json!({"message": "Bad credentials"}));
        }
        inner(r)
    })
    .await;
    let client = GithubClient::new(&server.url, GithubAuth::App(app()))
        .unwrap()
        .with_check_runs(false);
    let repo = repo(ForgeKind::Github, "acme/app");
    let err = client
        .report_status(&repo, &status(CommitState::Success))
        .await
        .unwrap_err();
    assert!(matches!(err, ForgeError::Api { status: 401, .. }));
    client
        .report_status(&repo, &status(CommitState::Success))
        .await
        .unwrap();
    let exchanges = server
        .requests()
        .iter()
        .filter(|r| r.target.ends_with("/access_tokens"))
        .count();
    assert_eq!(exchanges, 2, "a new token after the 401");
}

#[tokio::test]
async fn gitlab_reads_raw_files_pages_trees_and_posts_statuses() {
    let server = MockServer::start(|r| {
        let t = r.target.as_str();
        if t.contains("/repository/files/") {
            if t.contains("missing") {
                Reply::json(404, json!({"message": "404 File Not Found"}))
            } else {
                Reply::raw(200, b"on: push\n")
            }
        } else if t.contains("/repository/tree")
            && t.contains("page=1")
            && !t.contains("page=1&")
            && t.ends_with("page=1")
        {
            Reply::json(
                200,
                json!([{"name": "a.yaml", "type": "blob"}, {"name": "sub", "type": "tree"}]),
            )
            .header("x-next-page", "2")
        } else if t.contains("/repository/tree") {
            Reply::json(200, json!([{"name": "b.yaml", "type": "blob"}])).header("x-next-page", "")
        } else if t.contains("/statuses/") {
            if r.json()["state"] == "success" {
                Reply::json(
                    400,
                    json!({"message": "Cannot transition status via :success from :success"}),
                )
            } else {
                Reply::json(201, json!({"id": 1}))
            }
        } else {
            Reply::json(404, json!({"message": "404 Not Found"}))
        }
    })
    .await;
    let client = GitlabClient::new(&server.url, Some(Token::new("glpat-x"))).unwrap();
    let repo = repo(ForgeKind::Gitlab, "group/sub/app");
    assert_eq!(
        client
            .read_file(&repo, SHA, ".gantry/ci.yaml")
            .await
            .unwrap()
            .as_deref(),
        Some(&b"on: push\n"[..])
    );
    assert_eq!(
        client.read_file(&repo, SHA, "missing.yaml").await.unwrap(),
        None
    );
    assert_eq!(
        client.list_dir(&repo, SHA, ".gantry").await.unwrap(),
        ["a.yaml", "b.yaml"]
    );
    for state in [
        CommitState::Running,
        CommitState::Cancelled,
        CommitState::Error,
        CommitState::Success,
    ] {
        client.report_status(&repo, &status(state)).await.unwrap();
    }
    let requests = server.requests();
    assert_eq!(
        requests[0].target,
        format!(
            "/api/v4/projects/group%2Fsub%2Fapp/repository/files/.gantry%2Fci.yaml/raw?ref={SHA}"
        )
    );
    assert_eq!(requests[0].header("private-token"), Some("glpat-x"));
    assert!(
        requests[2]
            .target
            .starts_with("/api/v4/projects/group%2Fsub%2Fapp/repository/tree?path=.gantry&ref=")
    );
    let posted: Vec<_> = requests
        .iter()
        .filter(|r| r.method == "POST")
        .map(|r| {
            assert_eq!(
                r.target,
                format!("/api/v4/projects/group%2Fsub%2Fapp/statuses/{SHA}")
            );
            let body = r.json();
            assert_eq!(body["name"], "gantry/ci/test");
            body["state"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(posted, ["running", "canceled", "failed", "success"]);
}

#[tokio::test]
async fn gitea_reads_raw_files_lists_contents_and_posts_statuses() {
    let server = MockServer::start(|r| {
        let t = r.target.as_str();
        if t.contains("/raw/") {
            Reply::raw(200, b"on: push\n")
        } else if t.contains("/contents/") {
            Reply::json(
                200,
                json!([{"name": "a.yaml", "type": "file"}, {"name": "d", "type": "dir"}]),
            )
        } else if t.contains("/statuses/") {
            Reply::json(201, json!({"id": 1}))
        } else {
            Reply::json(404, json!({"message": "not found"}))
        }
    })
    .await;
    let client = GiteaClient::new(&format!("{}/", server.url), Some(Token::new("gt"))).unwrap();
    let repo = repo(ForgeKind::Gitea, "gitea/webhooks");
    assert_eq!(
        client
            .read_file(&repo, SHA, ".gantry/ci.yaml")
            .await
            .unwrap()
            .as_deref(),
        Some(&b"on: push\n"[..])
    );
    assert_eq!(
        client.list_dir(&repo, SHA, ".gantry").await.unwrap(),
        ["a.yaml"]
    );
    assert_eq!(
        client.list_dir(&repo, SHA, "").await.unwrap(),
        Vec::<String>::new()
    );
    for state in [
        CommitState::Running,
        CommitState::Failure,
        CommitState::Cancelled,
    ] {
        client.report_status(&repo, &status(state)).await.unwrap();
    }
    let requests = server.requests();
    assert_eq!(
        requests[0].target,
        format!("/api/v1/repos/gitea/webhooks/raw/.gantry/ci.yaml?ref={SHA}")
    );
    assert_eq!(requests[0].header("authorization"), Some("token gt"));
    assert_eq!(
        requests[1].target,
        format!("/api/v1/repos/gitea/webhooks/contents/.gantry?ref={SHA}")
    );
    let states: Vec<_> = requests
        .iter()
        .filter(|r| r.method == "POST")
        .map(|r| {
            assert_eq!(
                r.target,
                format!("/api/v1/repos/gitea/webhooks/statuses/{SHA}")
            );
            r.json()["state"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(states, ["pending", "failure", "error"]);
}
