//! Clone credentials for Kubernetes jobs: each repository's from the client of its forge.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use gantry_core::{BackendError, Forge, ForgeKind, RepoRef};

/// The forge clients `gantry serve` has tokens for, by kind. A repository of a forge without
/// one is cloned anonymously.
pub struct ForgeCloneCredentials(HashMap<ForgeKind, Arc<dyn Forge>>);

impl ForgeCloneCredentials {
    pub fn new<'a>(forges: impl IntoIterator<Item = &'a Arc<dyn Forge>>) -> Self {
        Self(forges.into_iter().map(|f| (f.kind(), f.clone())).collect())
    }
}

#[async_trait]
impl gantry_kube::CloneCredentials for ForgeCloneCredentials {
    async fn for_repo(
        &self,
        repo: &RepoRef,
    ) -> Result<Option<gantry_kube::GitCredentials>, BackendError> {
        let Some(forge) = self.0.get(&repo.forge) else {
            return Ok(None);
        };
        // The forge's error names the forge and its answer, never the token.
        let creds = forge.clone_credentials(repo).await.map_err(|e| {
            BackendError::Start(format!(
                "{} gave no token to clone {}: {e}",
                repo.forge, repo.full_name
            ))
        })?;
        Ok(creds)
    }
}

#[cfg(test)]
mod tests {
    use gantry_core::{CommitStatus, ForgeError, GitCredentials, Secret};
    use gantry_kube::CloneCredentials;

    use super::*;

    /// A forge that lends `<kind>-token`, or refuses.
    struct Lender {
        kind: ForgeKind,
        refuse: bool,
    }

    #[async_trait]
    impl Forge for Lender {
        fn kind(&self) -> ForgeKind {
            self.kind
        }
        async fn read_file(
            &self,
            _: &RepoRef,
            _: &str,
            _: &str,
        ) -> Result<Option<Vec<u8>>, ForgeError> {
            Ok(None)
        }
        async fn list_dir(&self, _: &RepoRef, _: &str, _: &str) -> Result<Vec<String>, ForgeError> {
            Ok(Vec::new())
        }
        async fn report_status(&self, _: &RepoRef, _: &CommitStatus) -> Result<(), ForgeError> {
            Ok(())
        }
        async fn clone_credentials(
            &self,
            _: &RepoRef,
        ) -> Result<Option<GitCredentials>, ForgeError> {
            if self.refuse {
                return Err(ForgeError::Api {
                    forge: self.kind,
                    status: 404,
                    message: "Not Found".into(),
                    retry_after: None,
                });
            }
            Ok(Some(GitCredentials {
                username: format!("{}-user", self.kind),
                password: Secret::new(format!("{}-token", self.kind)),
            }))
        }
    }

    fn repo(forge: ForgeKind) -> RepoRef {
        RepoRef {
            forge,
            full_name: "acme/app".into(),
            clone_url: "https://git.example.com/acme/app.git".into(),
            web_url: None,
            default_branch: None,
        }
    }

    fn forge(kind: ForgeKind, refuse: bool) -> Arc<dyn Forge> {
        Arc::new(Lender { kind, refuse })
    }

    #[tokio::test]
    async fn each_repository_gets_the_credentials_of_its_own_forge() {
        let forges = [
            forge(ForgeKind::Github, false),
            forge(ForgeKind::Gitlab, false),
        ];
        let creds = ForgeCloneCredentials::new(&forges);
        for kind in [ForgeKind::Github, ForgeKind::Gitlab] {
            let got = creds.for_repo(&repo(kind)).await.unwrap().unwrap();
            assert_eq!(got.username, format!("{kind}-user"));
            assert_eq!(got.password.expose(), format!("{kind}-token"));
        }
        // No client (no token) for Gitea: anonymous.
        assert!(
            creds
                .for_repo(&repo(ForgeKind::Gitea))
                .await
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn a_forge_that_refuses_fails_the_job_start_with_a_reason() {
        let forges = [forge(ForgeKind::Github, true)];
        let creds = ForgeCloneCredentials::new(&forges);
        let err = creds.for_repo(&repo(ForgeKind::Github)).await.unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("github gave no token to clone acme/app")
                && text.contains("API error 404: Not Found"),
            "{text}"
        );
    }
}
