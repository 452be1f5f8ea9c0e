//! Credentials the forges lend a job to clone a repository: which username and token each
//! forge takes, and a GitHub App's tokens scoped to the one repository with `contents: read`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use gantry_core::{Forge, ForgeKind};
use gantry_forge::{GiteaClient, GithubAuth, GithubClient, GitlabClient, Token};
use serde_json::json;

use crate::clients::{app, check_jwt, repo};
use crate::mock::{MockServer, Reply, Request};

/// A GitHub API for an App whose tokens expire in `expires_in` seconds; each token says which
/// exchange issued it (`ghs_1`, `ghs_2`, …). The first `refusals` exchanges answer 422.
fn app_api(expires_in: i64, refusals: usize) -> impl Fn(&Request) -> Reply {
    let exchanges = Arc::new(AtomicUsize::new(0));
    move |r| match (r.method.as_str(), r.target.split('?').next().unwrap()) {
        ("GET", "/repos/acme/app/installation") => Reply::json(200, json!({"id": 42})),
        ("POST", "/app/installations/42/access_tokens") => {
            let n = exchanges.fetch_add(1, Ordering::SeqCst) + 1;
            if n <= refusals {
                return Reply::json(
                    422,
                    json!({"message": "There is at least one repository that does not exist or is not accessible to the parent installation."}),
                );
            }
            let expires = chrono::Utc::now() + chrono::Duration::seconds(expires_in);
            Reply::json(
                201,
                json!({"token": format!("ghs_{n}"), "expires_at": expires.to_rfc3339()}),
            )
        }
        ("GET", p) if p.starts_with("/repos/acme/app/contents/") => Reply::json(
            200,
            json!({"type": "file", "encoding": "base64", "content": "b246IHB1c2gK"}),
        ),
        _ => Reply::json(404, json!({"message": "Not Found"})),
    }
}

fn exchanges(server: &MockServer) -> Vec<Request> {
    server
        .requests()
        .into_iter()
        .filter(|r| r.target.ends_with("/access_tokens"))
        .collect()
}

#[tokio::test]
async fn a_github_app_clone_token_is_scoped_to_the_repository_with_contents_read() {
    let server = MockServer::start(app_api(3600, 0)).await;
    let client = GithubClient::new(&server.url, GithubAuth::App(app())).unwrap();
    let repo = repo(ForgeKind::Github, "acme/app");

    let creds = client.clone_credentials(&repo).await.unwrap().unwrap();
    assert_eq!(creds.username, "x-access-token");
    assert_eq!(creds.password.expose(), "ghs_1");
    let again = client.clone_credentials(&repo).await.unwrap().unwrap();
    assert_eq!(
        again.password.expose(),
        "ghs_1",
        "cached while it has long left"
    );

    let asked = exchanges(&server);
    assert_eq!(asked.len(), 1);
    check_jwt(asked[0].header("authorization").unwrap());
    assert_eq!(
        asked[0].json(),
        json!({"repositories": ["app"], "permissions": {"contents": "read"}}),
        "exactly this repository, only contents: read"
    );

    // The API gets an installation token of its own; the clone token is never used for it.
    client.read_file(&repo, "abc", "x.yaml").await.unwrap();
    let asked = exchanges(&server);
    assert_eq!(asked.len(), 2, "a separate token for the API");
    assert!(asked[1].body.is_empty(), "the API token is not narrowed");
    let read = server
        .requests()
        .into_iter()
        .find(|r| r.target.contains("/contents/"))
        .unwrap();
    assert_eq!(read.header("authorization"), Some("Bearer ghs_2"));
    let creds = client.clone_credentials(&repo).await.unwrap().unwrap();
    assert_eq!(
        creds.password.expose(),
        "ghs_1",
        "nor the API's for a clone"
    );
    assert!(!format!("{creds:?}").contains("ghs_"), "{creds:?}");
}

#[tokio::test]
async fn a_clone_token_with_less_than_half_an_hour_left_is_not_handed_out() {
    // A job's pod may wait for scheduling and image pulls before it clones.
    let server = MockServer::start(app_api(20 * 60, 0)).await;
    let client = GithubClient::new(&server.url, GithubAuth::App(app())).unwrap();
    let repo = repo(ForgeKind::Github, "acme/app");
    for _ in 0..2 {
        client.clone_credentials(&repo).await.unwrap().unwrap();
    }
    assert_eq!(exchanges(&server).len(), 2);
    let lookups = server
        .requests()
        .iter()
        .filter(|r| r.target.ends_with("/installation"))
        .count();
    assert_eq!(lookups, 1, "the installation id stays cached");
}

#[tokio::test]
async fn a_refused_clone_token_is_an_error_and_the_installation_is_looked_up_again() {
    let server = MockServer::start(app_api(3600, 1)).await;
    let client = GithubClient::new(&server.url, GithubAuth::App(app())).unwrap();
    let repo = repo(ForgeKind::Github, "acme/app");
    let err = client.clone_credentials(&repo).await.unwrap_err();
    assert!(
        matches!(err, gantry_core::ForgeError::Api { status: 422, .. }),
        "{err}"
    );
    let creds = client.clone_credentials(&repo).await.unwrap().unwrap();
    assert_eq!(creds.password.expose(), "ghs_2");
    let lookups = server
        .requests()
        .iter()
        .filter(|r| r.target.ends_with("/installation"))
        .count();
    assert_eq!(lookups, 2, "a refusal may mean a new installation");
}

#[tokio::test]
async fn each_forge_lends_its_token_under_the_username_it_expects() {
    // Nothing is asked of the forge: tokens are handed on as they are.
    let nowhere = "http://127.0.0.1:9";
    let repo = |forge| repo(forge, "acme/app");
    let github = GithubClient::new(nowhere, GithubAuth::Token(Token::new("ghp_SECRET"))).unwrap();
    let gitlab = GitlabClient::new(nowhere, Some(Token::new("glpat-SECRET"))).unwrap();
    let gitea = GiteaClient::new(nowhere, Some(Token::new("gitea_SECRET"))).unwrap();
    let cases: [(&dyn Forge, ForgeKind, &str, &str); 3] = [
        (&github, ForgeKind::Github, "x-access-token", "ghp_SECRET"),
        (&gitlab, ForgeKind::Gitlab, "oauth2", "glpat-SECRET"),
        (&gitea, ForgeKind::Gitea, "gantry", "gitea_SECRET"),
    ];
    for (forge, kind, username, token) in cases {
        let creds = forge.clone_credentials(&repo(kind)).await.unwrap().unwrap();
        assert_eq!(
            (creds.username.as_str(), creds.password.expose()),
            (username, token),
            "{kind}"
        );
        assert!(!format!("{creds:?}").contains("SECRET"), "{creds:?}");
    }

    // Without a token the clone is anonymous.
    let gitlab = GitlabClient::new(nowhere, None).unwrap();
    let gitea = GiteaClient::new(nowhere, None).unwrap();
    assert!(
        gitlab
            .clone_credentials(&repo(ForgeKind::Gitlab))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        gitea
            .clone_credentials(&repo(ForgeKind::Gitea))
            .await
            .unwrap()
            .is_none()
    );
}
