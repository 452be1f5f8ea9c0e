//! Gitea's and Forgejo's REST API (v1): raw files and directory contents at a commit, commit
//! statuses.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use gantry_core::{
    CommitState, CommitStatus, Forge, ForgeError, ForgeKind, GitCredentials, RepoRef, Secret,
};
use reqwest::RequestBuilder;
use serde::{Deserialize, Serialize};
use url::Url;

use crate::api::{self, ConfigError};
use crate::secret::Token;

const FORGE: ForgeKind = ForgeKind::Gitea;

/// A Gitea or Forgejo API client implementing [`Forge`].
#[derive(Clone)]
pub struct GiteaClient {
    http: reqwest::Client,
    base: Url,
    token: Option<Token>,
    timeout: Duration,
}

impl fmt::Debug for GiteaClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GiteaClient")
            .field("base", &self.base.as_str())
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

impl GiteaClient {
    /// `gitea_url` is the instance, e.g. `https://codeberg.org` (`/api/v1` is added unless it
    /// is already there).
    pub fn new(gitea_url: &str, token: Option<Token>) -> Result<Self, ConfigError> {
        let base = api::instance_api_base(gitea_url, ["api", "v1"])?;
        Ok(Self {
            http: api::http_client()?,
            base,
            token,
            timeout: api::DEFAULT_TIMEOUT,
        })
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn request(&self, request: RequestBuilder) -> RequestBuilder {
        let request = request
            .timeout(self.timeout)
            .header(reqwest::header::ACCEPT, "application/json");
        match &self.token {
            Some(token) => request.header(
                reqwest::header::AUTHORIZATION,
                format!("token {}", token.expose()),
            ),
            None => request,
        }
    }

    fn repo_url<'a>(
        &self,
        repo: &'a RepoRef,
        rest: impl IntoIterator<Item = &'a str>,
    ) -> Result<Url, ForgeError> {
        let (owner, name) = api::owner_name(FORGE, &repo.full_name)?;
        Ok(api::join(
            &self.base,
            ["repos", owner, name].into_iter().chain(rest),
        ))
    }
}

/// Gitea's statuses: `pending`, `success`, `error`, `failure`, `warning`. Running is `pending`;
/// cancelled is `error` (the run did not complete).
pub fn status_state(state: CommitState) -> &'static str {
    match state {
        CommitState::Pending | CommitState::Running => "pending",
        CommitState::Success => "success",
        CommitState::Failure => "failure",
        CommitState::Error | CommitState::Cancelled => "error",
    }
}

#[derive(Serialize)]
struct StatusRequest<'a> {
    state: &'static str,
    context: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    target_url: Option<&'a str>,
    description: &'a str,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Contents {
    Dir(Vec<Entry>),
    File(serde::de::IgnoredAny),
}

#[derive(Deserialize)]
struct Entry {
    name: String,
    #[serde(rename = "type")]
    kind: String,
}

#[async_trait]
impl Forge for GiteaClient {
    fn kind(&self) -> ForgeKind {
        FORGE
    }

    async fn read_file(
        &self,
        repo: &RepoRef,
        sha: &str,
        path: &str,
    ) -> Result<Option<Vec<u8>>, ForgeError> {
        let mut url = self.repo_url(repo, ["raw"].into_iter().chain(api::path_segments(path)))?;
        url.query_pairs_mut().append_pair("ref", sha);
        match api::found(api::send(FORGE, self.request(self.http.get(url))).await)? {
            Some(response) => api::bytes(FORGE, response).await.map(Some),
            None => Ok(None),
        }
    }

    async fn list_dir(
        &self,
        repo: &RepoRef,
        sha: &str,
        dir: &str,
    ) -> Result<Vec<String>, ForgeError> {
        let mut url = self.repo_url(
            repo,
            ["contents"].into_iter().chain(api::path_segments(dir)),
        )?;
        url.query_pairs_mut().append_pair("ref", sha);
        let Some(response) = api::found(api::send(FORGE, self.request(self.http.get(url))).await)?
        else {
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

    async fn report_status(&self, repo: &RepoRef, status: &CommitStatus) -> Result<(), ForgeError> {
        let url = self.repo_url(repo, ["statuses", status.sha.as_str()])?;
        let body = StatusRequest {
            state: status_state(status.state),
            context: &status.context,
            target_url: status.target_url.as_deref(),
            description: &status.description,
        };
        api::send(FORGE, self.request(self.http.post(url).json(&body)))
            .await
            .map(drop)
    }

    /// Gitea and Forgejo take a token as the password of any username. Without a token:
    /// anonymous.
    async fn clone_credentials(
        &self,
        _repo: &RepoRef,
    ) -> Result<Option<GitCredentials>, ForgeError> {
        Ok(self.token.as_ref().map(|token| GitCredentials {
            username: "gantry".to_owned(),
            password: Secret::new(token.expose()),
        }))
    }
}
