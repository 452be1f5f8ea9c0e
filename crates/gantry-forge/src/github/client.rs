//! GitHub's REST API: file contents at a commit, commit statuses, and (as a GitHub App) check
//! runs. Works against github.com and GitHub Enterprise Server (`https://HOST/api/v3`).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use gantry_core::{
    CommitState, CommitStatus, Forge, ForgeError, ForgeKind, GitCredentials, RepoRef, Secret,
};
use reqwest::RequestBuilder;
use serde::{Deserialize, Serialize};
use url::Url;

use super::app::GithubApp;
use crate::api::{self, ConfigError};
use crate::secret::Token;

pub const DEFAULT_API_URL: &str = "https://api.github.com";

const FORGE: ForgeKind = ForgeKind::Github;

/// GitHub refuses longer commit status descriptions.
const MAX_DESCRIPTION: usize = 140;

/// (repository in lower case, sha, name) of a check run.
type CheckRunKey = (String, String, String);

/// How Gantry authenticates to GitHub.
#[derive(Clone, Debug)]
pub enum GithubAuth {
    /// A personal access token or any token with `repo:status` and contents read access.
    Token(Token),
    /// A GitHub App: installation tokens, and check runs as well as statuses.
    App(GithubApp),
}

/// A GitHub API client implementing [`Forge`].
#[derive(Clone)]
pub struct GithubClient {
    http: reqwest::Client,
    base: Url,
    auth: GithubAuth,
    timeout: Duration,
    statuses: bool,
    check_runs: bool,
    /// Check runs begun, so that updates patch the run they began.
    runs: Arc<Mutex<HashMap<CheckRunKey, u64>>>,
}

impl fmt::Debug for GithubClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GithubClient")
            .field("base", &self.base.as_str())
            .field("auth", &self.auth)
            .field("statuses", &self.statuses)
            .field("check_runs", &self.check_runs)
            .finish_non_exhaustive()
    }
}

impl GithubClient {
    /// `api_url` is [`DEFAULT_API_URL`] or an Enterprise Server's `https://HOST/api/v3`. With a
    /// GitHub App, statuses are reported both as commit statuses and as check runs.
    pub fn new(api_url: &str, auth: GithubAuth) -> Result<Self, ConfigError> {
        let check_runs = matches!(auth, GithubAuth::App(_));
        Ok(Self {
            http: api::http_client()?,
            base: api::parse_base(api_url)?,
            auth,
            timeout: api::DEFAULT_TIMEOUT,
            statuses: true,
            check_runs,
            runs: Arc::default(),
        })
    }

    /// How long one request may take before it counts as unreachable.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Whether to post commit statuses (default: yes).
    pub fn with_commit_statuses(mut self, enabled: bool) -> Self {
        self.statuses = enabled;
        self
    }

    /// Whether to create and update check runs; only a GitHub App may (default: yes for an
    /// App, and always no for a token).
    pub fn with_check_runs(mut self, enabled: bool) -> Self {
        self.check_runs = enabled && matches!(self.auth, GithubAuth::App(_));
        self
    }

    fn url<'a>(&self, segments: impl IntoIterator<Item = &'a str>) -> Url {
        api::join(&self.base, segments)
    }

    async fn token(&self, owner: &str, name: &str) -> Result<Token, ForgeError> {
        match &self.auth {
            GithubAuth::Token(token) => Ok(token.clone()),
            GithubAuth::App(app) => {
                app.token_for(&self.http, &self.base, self.timeout, owner, name)
                    .await
            }
        }
    }

    /// Sends an authenticated request for `owner/name`; a 401 makes an App forget its token so
    /// that the next attempt gets a fresh one.
    async fn send(
        &self,
        owner: &str,
        name: &str,
        build: impl FnOnce(&reqwest::Client) -> RequestBuilder,
        accept: &str,
    ) -> Result<reqwest::Response, ForgeError> {
        let token = self.token(owner, name).await?;
        let request = headers(build(&self.http), token.expose())
            .header(reqwest::header::ACCEPT, accept)
            .timeout(self.timeout);
        let result = api::send(FORGE, request).await;
        if let (Err(ForgeError::Api { status: 401, .. }), GithubAuth::App(app)) =
            (&result, &self.auth)
        {
            app.forget(owner, name);
        }
        result
    }

    async fn contents(
        &self,
        repo: &RepoRef,
        sha: &str,
        path: &str,
        accept: &str,
    ) -> Result<Option<reqwest::Response>, ForgeError> {
        let (owner, name) = api::owner_name(FORGE, &repo.full_name)?;
        let mut url = self.url(
            ["repos", owner, name, "contents"]
                .into_iter()
                .chain(api::path_segments(path)),
        );
        url.query_pairs_mut().append_pair("ref", sha);
        api::found(self.send(owner, name, |http| http.get(url), accept).await)
    }

    async fn post_status(&self, repo: &RepoRef, status: &CommitStatus) -> Result<(), ForgeError> {
        let (owner, name) = api::owner_name(FORGE, &repo.full_name)?;
        let url = self.url(["repos", owner, name, "statuses", &status.sha]);
        let body = StatusRequest {
            state: status_state(status.state),
            target_url: status.target_url.as_deref(),
            description: api::truncate(&status.description, MAX_DESCRIPTION - 1),
            context: &status.context,
        };
        self.send(owner, name, |http| http.post(url).json(&body), JSON)
            .await
            .map(drop)
    }

    /// This App's latest check run named like the status on its commit, if any (a run an
    /// earlier Gantry process began, so that a restart updates it instead of adding another).
    async fn find_check_run(
        &self,
        owner: &str,
        name: &str,
        status: &CommitStatus,
    ) -> Result<Option<u64>, ForgeError> {
        let GithubAuth::App(app) = &self.auth else {
            return Ok(None);
        };
        let mut url = self.url(["repos", owner, name, "commits", &status.sha, "check-runs"]);
        url.query_pairs_mut()
            .append_pair("check_name", &status.context)
            .append_pair("app_id", &app.app_id().to_string())
            .append_pair("filter", "latest");
        #[derive(Deserialize)]
        struct Found {
            id: u64,
        }
        #[derive(Deserialize)]
        struct Listed {
            check_runs: Vec<Found>,
        }
        let response = self.send(owner, name, |http| http.get(url), JSON).await;
        let Some(response) = api::found(response)? else {
            return Ok(None);
        };
        let listed: Listed = api::json(FORGE, response).await?;
        Ok(listed.check_runs.first().map(|r| r.id))
    }

    async fn put_check_run(&self, repo: &RepoRef, status: &CommitStatus) -> Result<(), ForgeError> {
        let (owner, name) = api::owner_name(FORGE, &repo.full_name)?;
        let key = (
            repo.full_name.to_ascii_lowercase(),
            status.sha.clone(),
            status.context.clone(),
        );
        let (run_status, conclusion) = check_run_state(status.state);
        let title = api::truncate(&status.description, 200);
        let body = CheckRunRequest {
            name: &status.context,
            head_sha: &status.sha,
            status: run_status,
            conclusion,
            details_url: status.target_url.as_deref(),
            output: CheckRunOutput {
                title: &title,
                summary: &status.description,
            },
        };
        let cached = self
            .runs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            .copied();
        // Not reported by this process yet: after a restart the run may exist already.
        let known = match cached {
            Some(id) => Some(id),
            None => self.find_check_run(owner, name, status).await?,
        };
        if let Some(id) = known {
            let url = self.url(["repos", owner, name, "check-runs", &id.to_string()]);
            let patched = self
                .send(owner, name, |http| http.patch(url).json(&body), JSON)
                .await;
            // A run deleted meanwhile (404) is begun anew below.
            if api::found(patched)?.is_some() {
                self.runs
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(key, id);
                return Ok(());
            }
        }
        let url = self.url(["repos", owner, name, "check-runs"]);
        #[derive(Deserialize)]
        struct Created {
            id: u64,
        }
        let response = self
            .send(owner, name, |http| http.post(url).json(&body), JSON)
            .await?;
        let created: Created = api::json(FORGE, response).await?;
        self.runs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, created.id);
        Ok(())
    }
}

/// GitHub's media type, with plain JSON as a fallback some proxies and mocks need.
const JSON: &str = "application/vnd.github+json, application/json";

/// The headers of every GitHub API request.
pub(crate) fn headers(request: RequestBuilder, bearer: &str) -> RequestBuilder {
    request
        .bearer_auth(bearer)
        .header(reqwest::header::ACCEPT, JSON)
        .header("x-github-api-version", "2022-11-28")
}

/// GitHub's commit statuses know `pending`, `success`, `failure` and `error`. Running is
/// `pending` (the run has not finished); cancelled is `error` (it did not complete, which is
/// not the same as the code failing its checks).
pub fn status_state(state: CommitState) -> &'static str {
    match state {
        CommitState::Pending | CommitState::Running => "pending",
        CommitState::Success => "success",
        CommitState::Failure => "failure",
        CommitState::Error | CommitState::Cancelled => "error",
    }
}

/// A check run's status and conclusion: pending is `queued`, running `in_progress`; an error
/// concludes as `failure` (checks have no `error`), cancelled as `cancelled`.
pub fn check_run_state(state: CommitState) -> (&'static str, Option<&'static str>) {
    match state {
        CommitState::Pending => ("queued", None),
        CommitState::Running => ("in_progress", None),
        CommitState::Success => ("completed", Some("success")),
        CommitState::Failure | CommitState::Error => ("completed", Some("failure")),
        CommitState::Cancelled => ("completed", Some("cancelled")),
    }
}

#[derive(Serialize)]
struct StatusRequest<'a> {
    state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    target_url: Option<&'a str>,
    description: String,
    context: &'a str,
}

#[derive(Serialize)]
struct CheckRunRequest<'a> {
    name: &'a str,
    head_sha: &'a str,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    conclusion: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    details_url: Option<&'a str>,
    output: CheckRunOutput<'a>,
}

#[derive(Serialize)]
struct CheckRunOutput<'a> {
    title: &'a str,
    summary: &'a str,
}

#[derive(Deserialize)]
struct Content {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    content: String,
    #[serde(default)]
    encoding: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Contents {
    Dir(Vec<Entry>),
    File(Content),
}

#[derive(Deserialize)]
struct Entry {
    name: String,
    #[serde(rename = "type")]
    kind: String,
}

#[async_trait]
impl Forge for GithubClient {
    fn kind(&self) -> ForgeKind {
        FORGE
    }

    /// The contents API, base64-decoded; files over 1 MB (which it does not inline) are
    /// fetched again as raw. Directories, symlinks and submodules are not files: `None`.
    async fn read_file(
        &self,
        repo: &RepoRef,
        sha: &str,
        path: &str,
    ) -> Result<Option<Vec<u8>>, ForgeError> {
        let Some(response) = self.contents(repo, sha, path, JSON).await? else {
            return Ok(None);
        };
        let file = match api::json::<Contents>(FORGE, response).await? {
            Contents::File(file) if file.kind == "file" => file,
            _ => return Ok(None),
        };
        match file.encoding.as_str() {
            "base64" => {
                let compact: String = file.content.split_whitespace().collect();
                base64::engine::general_purpose::STANDARD
                    .decode(compact)
                    .map(Some)
                    .map_err(|e| ForgeError::Api {
                        forge: FORGE,
                        status: 200,
                        message: format!("undecodable file content: {e}"),
                        retry_after: None,
                    })
            }
            _ => match self
                .contents(repo, sha, path, "application/vnd.github.raw+json")
                .await?
            {
                Some(raw) => api::bytes(FORGE, raw).await.map(Some),
                None => Ok(None),
            },
        }
    }

    async fn list_dir(
        &self,
        repo: &RepoRef,
        sha: &str,
        dir: &str,
    ) -> Result<Vec<String>, ForgeError> {
        let Some(response) = self.contents(repo, sha, dir, JSON).await? else {
            return Ok(Vec::new());
        };
        Ok(match api::json::<Contents>(FORGE, response).await? {
            Contents::Dir(entries) => entries
                .into_iter()
                .filter(|e| e.kind == "file")
                .map(|e| e.name)
                .collect(),
            Contents::File(_) => Vec::new(),
        })
    }

    /// A commit status (unless disabled) and, as a GitHub App, a check run of the same name.
    async fn report_status(&self, repo: &RepoRef, status: &CommitStatus) -> Result<(), ForgeError> {
        if self.statuses {
            self.post_status(repo, status).await?;
        }
        if self.check_runs {
            self.put_check_run(repo, status).await?;
        }
        Ok(())
    }

    /// As `x-access-token` (what GitHub documents for App tokens; it takes any username with
    /// a personal token): the token, or as an App an installation token for this repository
    /// alone with `contents: read`.
    async fn clone_credentials(
        &self,
        repo: &RepoRef,
    ) -> Result<Option<GitCredentials>, ForgeError> {
        let token = match &self.auth {
            GithubAuth::Token(token) => token.clone(),
            GithubAuth::App(app) => {
                let (owner, name) = api::owner_name(FORGE, &repo.full_name)?;
                app.clone_token_for(&self.http, &self.base, self.timeout, owner, name)
                    .await?
            }
        };
        Ok(Some(GitCredentials {
            username: "x-access-token".to_owned(),
            password: Secret::new(token.expose()),
        }))
    }
}
