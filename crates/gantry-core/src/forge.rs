//! The seam between Gantry and the forges that host repositories.

use async_trait::async_trait;

use crate::{CommitStatus, ForgeKind, RepoRef, Secret};

#[derive(Debug, thiserror::Error)]
pub enum ForgeError {
    #[error("{forge} API error {status}: {message}")]
    Api {
        forge: ForgeKind,
        status: u16,
        message: String,
        /// Seconds to wait before trying again, from `Retry-After` or rate-limit headers.
        retry_after: Option<u64>,
    },
    #[error("{forge} unreachable: {message}")]
    Unreachable { forge: ForgeKind, message: String },
}

impl ForgeError {
    /// Worth trying again later (rate limits, server errors, network), as opposed to a request
    /// that can never succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            ForgeError::Api { status, .. } => *status == 429 || *status >= 500,
            ForgeError::Unreachable { .. } => true,
        }
    }
}

/// A username and token with which git clones one repository over HTTPS. The token never
/// prints: `Debug` shows the username only.
#[derive(Clone)]
pub struct GitCredentials {
    pub username: String,
    pub password: Secret,
}

impl std::fmt::Debug for GitCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitCredentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// A forge: reads pipeline files at a commit, receives commit statuses, and may lend a job
/// credentials to clone the repository.
#[async_trait]
pub trait Forge: Send + Sync + 'static {
    fn kind(&self) -> ForgeKind;

    /// A file's contents at exactly `sha`, or `None` when it does not exist there.
    async fn read_file(
        &self,
        repo: &RepoRef,
        sha: &str,
        path: &str,
    ) -> Result<Option<Vec<u8>>, ForgeError>;

    /// The names of the files directly inside `dir` at `sha` (empty when it does not exist).
    async fn list_dir(
        &self,
        repo: &RepoRef,
        sha: &str,
        dir: &str,
    ) -> Result<Vec<String>, ForgeError>;

    async fn report_status(&self, repo: &RepoRef, status: &CommitStatus) -> Result<(), ForgeError>;

    /// Credentials a job clones `repo` with, as narrow and short-lived as the forge can make
    /// them; `None` (the default, and a forge without a token) clones anonymously.
    async fn clone_credentials(
        &self,
        _repo: &RepoRef,
    ) -> Result<Option<GitCredentials>, ForgeError> {
        Ok(None)
    }
}
