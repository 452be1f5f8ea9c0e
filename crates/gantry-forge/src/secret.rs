//! Secrets Gantry holds for forges: webhook secrets (with their scope) and API tokens. Neither
//! ever shows in `Debug` output, logs or error messages.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::Deserialize;

/// One webhook secret: the HMAC key of GitHub and Gitea/Forgejo, or GitLab's shared token.
#[derive(Clone, Deserialize)]
#[serde(from = "String")]
pub struct WebhookSecret(Arc<str>);

impl WebhookSecret {
    pub fn new(secret: impl Into<String>) -> Self {
        Self(Arc::from(secret.into()))
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl From<String> for WebhookSecret {
    fn from(secret: String) -> Self {
        Self::new(secret)
    }
}

impl From<&str> for WebhookSecret {
    fn from(secret: &str) -> Self {
        Self::new(secret)
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

/// The webhook secrets of one forge: some for every repository, some only for a repository
/// (`"owner/name"`) or for everything under an owner (`"owner"`; on GitLab any group path
/// prefix, e.g. `"group/subgroup"`). Several secrets in one place are all accepted, so a secret
/// can be rotated without dropping deliveries.
///
/// Which repository a delivery is about is only known after its body is parsed, and a body is
/// never parsed before it is verified. So a delivery is verified against every configured
/// secret, global and scoped, and once the verified body is parsed, the repository it names must
/// be within the scope of a secret that matched. This is safe: the signature covers the whole
/// body, repository name included, so a sender who knows only a secret scoped to repository A
/// cannot produce a body naming repository B that verifies; and nothing from the body is acted
/// upon before both checks pass.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookSecrets {
    /// Accepted for every repository.
    pub global: Vec<WebhookSecret>,
    /// Accepted only for the repository `"owner/name"` or the repositories of `"owner"`.
    pub by_repo: BTreeMap<String, Vec<WebhookSecret>>,
}

impl WebhookSecrets {
    /// Secrets accepted for every repository.
    pub fn global(secrets: impl IntoIterator<Item = impl Into<WebhookSecret>>) -> Self {
        Self {
            global: secrets.into_iter().map(Into::into).collect(),
            by_repo: BTreeMap::new(),
        }
    }

    /// Adds a secret accepted only for `scope` (`"owner/name"` or `"owner"`).
    pub fn with_scoped(
        mut self,
        scope: impl Into<String>,
        secret: impl Into<WebhookSecret>,
    ) -> Self {
        self.by_repo
            .entry(scope.into())
            .or_default()
            .push(secret.into());
        self
    }

    pub fn is_empty(&self) -> bool {
        self.global.is_empty() && self.by_repo.values().all(Vec::is_empty)
    }

    /// Every secret with the scope it is valid for.
    pub(crate) fn candidates(&self) -> impl Iterator<Item = (Scope<'_>, &WebhookSecret)> {
        let global = self.global.iter().map(|s| (Scope::Global, s));
        let scoped = self
            .by_repo
            .iter()
            .flat_map(|(key, secrets)| secrets.iter().map(move |s| (Scope::Only(key), s)));
        global.chain(scoped)
    }
}

/// Where a webhook secret is valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scope<'a> {
    Global,
    /// `"owner/name"` or an owner (group path) prefix.
    Only(&'a str),
}

impl Scope<'_> {
    /// Whether a secret of this scope may authenticate a delivery about `name`: a repository's
    /// full name, or an owner's name for deliveries about an owner (an organisation's ping).
    /// Names compare without regard to ASCII case, as GitHub's and Gitea's do.
    pub(crate) fn covers(self, name: &str) -> bool {
        match self {
            Scope::Global => true,
            Scope::Only(key) => {
                let key = key.trim_matches('/').as_bytes();
                let name = name.as_bytes();
                !key.is_empty()
                    && name.len() >= key.len()
                    && name[..key.len()].eq_ignore_ascii_case(key)
                    && (name.len() == key.len() || name[key.len()] == b'/')
            }
        }
    }
}

/// An API token (GitHub, GitLab or Gitea personal/bot token, or a GitHub App installation
/// token). Its `Debug` output is redacted.
#[derive(Clone, Deserialize)]
#[serde(from = "String")]
pub struct Token(Arc<str>);

impl Token {
    pub fn new(token: impl Into<String>) -> Self {
        Self(Arc::from(token.into()))
    }

    /// The token itself, for an `Authorization` header or a clone credential. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Token {
    fn from(token: String) -> Self {
        Self::new(token)
    }
}

impl From<&str> for Token {
    fn from(token: &str) -> Self {
        Self::new(token)
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_cover_their_repositories_and_owners_only() {
        let owner = Scope::Only("acme");
        assert!(owner.covers("acme/app"));
        assert!(owner.covers("ACME/App"));
        assert!(owner.covers("acme"));
        assert!(!owner.covers("acme-evil/app"));
        assert!(!owner.covers("other/app"));
        let repo = Scope::Only("acme/app");
        assert!(repo.covers("acme/app"));
        assert!(!repo.covers("acme/app2"));
        assert!(
            !repo.covers("acme"),
            "a repository's secret does not cover its owner"
        );
        assert!(Scope::Only("group/sub").covers("group/sub/project"));
        assert!(!Scope::Only("").covers("acme/app"));
        assert!(Scope::Global.covers("anything"));
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let secrets = WebhookSecrets::global(["hunter2"]).with_scoped("acme", "s3cr3t");
        let shown = format!("{secrets:?} {:?}", Token::new("ghp_abc"));
        assert!(
            !shown.contains("hunter2") && !shown.contains("s3cr3t") && !shown.contains("ghp_abc")
        );
    }

    #[test]
    fn secrets_deserialize_from_config() {
        let s: WebhookSecrets = serde_json::from_str(
            r#"{"global":["a","b"],"by_repo":{"acme/app":["c"],"acme":["d"]}}"#,
        )
        .unwrap();
        assert_eq!(s.candidates().count(), 4);
        assert!(!s.is_empty());
        assert!(WebhookSecrets::default().is_empty());
    }
}
