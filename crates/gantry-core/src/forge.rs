//! The seam between Gantry and the forges that host repositories.

use async_trait::async_trait;

use crate::{CommitStatus, ForgeKind, RepoRef};

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

/// A forge: reads pipeline files at a commit and receives commit statuses.
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
}
