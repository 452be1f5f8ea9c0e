//! GitLab's REST API (v4): raw files and the repository tree at a commit, commit statuses.

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

const FORGE: ForgeKind = ForgeKind::Gitlab;

/// Tree listings are paged; a directory of pipelines never needs more than this.
const MAX_TREE_PAGES: u32 = 20;

/// GitLab stores at most 255 characters of a status description.
const MAX_DESCRIPTION: usize = 255;

/// A GitLab API client implementing [`Forge`]. Projects are addressed by their full path
/// (`group/subgroup/project`, the trigger's `full_name`), URL-encoded as GitLab asks.
#[derive(Clone)]
pub struct GitlabClient {
    http: reqwest::Client,
    base: Url,
    token: Option<Token>,
    timeout: Duration,
}

impl fmt::Debug for GitlabClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GitlabClient")
            .field("base", &self.base.as_str())
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

impl GitlabClient {
    /// `gitlab_url` is the instance, e.g. `https://gitlab.com` (`/api/v4` is added unless it
    /// is already there). Without a token only public projects can be read.
    pub fn new(gitlab_url: &str, token: Option<Token>) -> Result<Self, ConfigError> {
        let base = api::instance_api_base(gitlab_url, ["api", "v4"])?;
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
        let request = request.timeout(self.timeout);
        match &self.token {
            Some(token) => request.header("private-token", token.expose()),
            None => request,
        }
    }

    fn project<'a>(&self, repo: &'a RepoRef, rest: impl IntoIterator<Item = &'a str>) -> Url {
        api::join(
            &self.base,
            ["projects", repo.full_name.trim_matches('/')]
                .into_iter()
                .chain(rest),
        )
    }
}

/// GitLab's statuses: `pending`, `running`, `success`, `failed`, `canceled`. An error (the run
/// could not complete) is `failed`.
pub fn status_state(state: CommitState) -> &'static str {
    match state {
        CommitState::Pending => "pending",
        CommitState::Running => "running",
        CommitState::Success => "success",
        CommitState::Failure | CommitState::Error => "failed",
        CommitState::Cancelled => "canceled",
    }
}

#[derive(Serialize)]
struct StatusRequest<'a> {
    state: &'static str,
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    target_url: Option<&'a str>,
    description: String,
}

#[derive(Deserialize)]
struct TreeEntry {
    name: String,
    #[serde(rename = "type")]
    kind: String,
}

#[async_trait]
impl Forge for GitlabClient {
    fn kind(&self) -> ForgeKind {
        FORGE
    }

    async fn read_file(
        &self,
        repo: &RepoRef,
        sha: &str,
        path: &str,
    ) -> Result<Option<Vec<u8>>, ForgeError> {
        let path = path.trim_matches('/');
        let mut url = self.project(repo, ["repository", "files", path, "raw"]);
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
        let mut names = Vec::new();
        for page in 1..=MAX_TREE_PAGES {
            let mut url = self.project(repo, ["repository", "tree"]);
            url.query_pairs_mut()
                .append_pair("path", dir.trim_matches('/'))
                .append_pair("ref", sha)
                .append_pair("per_page", "100")
                .append_pair("page", &page.to_string());
            let request = self.request(self.http.get(url));
            let Some(response) = api::found(api::send(FORGE, request).await)? else {
                return Ok(names);
            };
            let next = response
                .headers()
                .get("x-next-page")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| !v.trim().is_empty());
            let entries: Vec<TreeEntry> = api::json(FORGE, response).await?;
            names.extend(
                entries
                    .into_iter()
                    .filter(|e| e.kind == "blob")
                    .map(|e| e.name),
            );
            if !next {
                break;
            }
        }
        Ok(names)
    }

    /// GitLab refuses (400, "Cannot transition status via …") a status equal to the current
    /// one; that is treated as delivered, so a retried update is not an error.
    async fn report_status(&self, repo: &RepoRef, status: &CommitStatus) -> Result<(), ForgeError> {
        let url = self.project(repo, ["statuses", status.sha.as_str()]);
        let body = StatusRequest {
            state: status_state(status.state),
            name: &status.context,
            target_url: status.target_url.as_deref(),
            description: api::truncate(&status.description, MAX_DESCRIPTION - 1),
        };
        match api::send(FORGE, self.request(self.http.post(url).json(&body))).await {
            Ok(_) => Ok(()),
            Err(ForgeError::Api {
                status: 400,
                message,
                ..
            }) if message.contains("Cannot transition status") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// GitLab takes a token as the password of the user `oauth2`. Without a token: anonymous.
    async fn clone_credentials(
        &self,
        _repo: &RepoRef,
    ) -> Result<Option<GitCredentials>, ForgeError> {
        Ok(self.token.as_ref().map(|token| GitCredentials {
            username: "oauth2".to_owned(),
            password: Secret::new(token.expose()),
        }))
    }
}
