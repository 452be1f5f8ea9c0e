//! GitHub App authentication: a JWT signed RS256 with the App's private key buys an
//! installation access token, which is cached until shortly before it expires. Jobs get tokens
//! of their own, scoped to one repository and `contents: read`, cached apart.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use gantry_core::{ForgeError, ForgeKind};
use ring::rand::SystemRandom;
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use serde::{Deserialize, Serialize};

use crate::api::{self, ConfigError};
use crate::secret::Token;

/// An installation token is used no later than this many seconds before it expires (GitHub
/// issues them for an hour), so a request never starts with a token about to lapse.
const REFRESH_MARGIN_SECS: i64 = 5 * 60;

/// A clone token is handed out only while it has at least this long left: a job's Secret holds
/// it from the pod's creation until its clone runs, after the image pulls and scheduling.
const CLONE_REFRESH_MARGIN_SECS: i64 = 30 * 60;

/// A GitHub App: its id and private key, and the installation tokens it obtained.
#[derive(Clone)]
pub struct GithubApp {
    app_id: u64,
    key: Arc<RsaKeyPair>,
    rng: SystemRandom,
    cache: Arc<Mutex<Cache>>,
}

#[derive(Default)]
struct Cache {
    /// Repository full name (lower case) → installation id.
    installations: HashMap<String, u64>,
    /// Installation id → token and its expiry (Unix seconds).
    tokens: HashMap<u64, (Token, i64)>,
    /// Repository full name (lower case) → its clone token and expiry (Unix seconds).
    clone_tokens: HashMap<String, (Token, i64)>,
}

/// The body of an access token request that narrows the token (GitHub's REST API, "Create an
/// installation access token for an app").
#[derive(Serialize)]
struct AccessScope<'a> {
    /// Repository names, without the owner.
    repositories: [&'a str; 1],
    permissions: ClonePermissions,
}

#[derive(Serialize)]
struct ClonePermissions {
    contents: &'static str,
}

impl fmt::Debug for GithubApp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GithubApp")
            .field("app_id", &self.app_id)
            .finish_non_exhaustive()
    }
}

impl GithubApp {
    /// From the PEM private key GitHub issues (`BEGIN RSA PRIVATE KEY`, PKCS#1) or its PKCS#8
    /// form (`BEGIN PRIVATE KEY`).
    pub fn new(app_id: u64, private_key_pem: &str) -> Result<Self, ConfigError> {
        let (label, der) = pem(private_key_pem)?;
        let key = match label.as_str() {
            "RSA PRIVATE KEY" => RsaKeyPair::from_der(&der),
            "PRIVATE KEY" => RsaKeyPair::from_pkcs8(&der),
            _ => {
                return Err(ConfigError::PrivateKey(
                    "expected an RSA PRIVATE KEY or PRIVATE KEY PEM block",
                ));
            }
        }
        .map_err(|_| ConfigError::PrivateKey("not a usable RSA key (2048 to 8192 bits)"))?;
        Ok(Self {
            app_id,
            key: Arc::new(key),
            rng: SystemRandom::new(),
            cache: Arc::default(),
        })
    }

    /// Reads the key from a file (`GANTRY_GITHUB_APP_PRIVATE_KEY_FILE`).
    pub fn from_key_file(
        app_id: u64,
        path: impl AsRef<std::path::Path>,
    ) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let pem = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::new(app_id, &pem)
    }

    pub fn app_id(&self) -> u64 {
        self.app_id
    }

    /// The App's JWT at Unix time `now`: issued a minute in the past against clock drift, valid
    /// for nine minutes (GitHub allows ten).
    pub fn jwt(&self, now: i64) -> Result<String, ForgeError> {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
        let claims = URL_SAFE_NO_PAD.encode(format!(
            r#"{{"iat":{},"exp":{},"iss":"{}"}}"#,
            now - 60,
            now + 9 * 60,
            self.app_id
        ));
        let message = format!("{header}.{claims}");
        let mut signature = vec![0; self.key.public().modulus_len()];
        self.key
            .sign(
                &RSA_PKCS1_SHA256,
                &self.rng,
                message.as_bytes(),
                &mut signature,
            )
            .map_err(|_| ForgeError::Api {
                forge: ForgeKind::Github,
                status: 500,
                message: "cannot sign the GitHub App JWT".to_owned(),
                retry_after: None,
            })?;
        Ok(format!("{message}.{}", URL_SAFE_NO_PAD.encode(signature)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The id of the App's installation on `owner/name`, from the cache once looked up.
    async fn installation(
        &self,
        http: &reqwest::Client,
        base: &url::Url,
        timeout: std::time::Duration,
        owner: &str,
        name: &str,
    ) -> Result<u64, ForgeError> {
        let forge = ForgeKind::Github;
        let repo_key = format!("{owner}/{name}").to_ascii_lowercase();
        if let Some(id) = self.lock().installations.get(&repo_key).copied() {
            return Ok(id);
        }
        #[derive(Deserialize)]
        struct Installation {
            id: u64,
        }
        let now = chrono::Utc::now().timestamp();
        let url = api::join(base, ["repos", owner, name, "installation"]);
        let request = super::client::headers(http.get(url), &self.jwt(now)?).timeout(timeout);
        let found: Installation = api::json(forge, api::send(forge, request).await?).await?;
        self.lock().installations.insert(repo_key, found.id);
        Ok(found.id)
    }

    /// Exchanges the App's JWT for an installation access token; `scope` is the request body
    /// that narrows it (none: everything the installation may do). The token and its expiry.
    async fn issue(
        &self,
        http: &reqwest::Client,
        base: &url::Url,
        timeout: std::time::Duration,
        installation: u64,
        scope: Option<&AccessScope<'_>>,
    ) -> Result<(Token, i64), ForgeError> {
        let forge = ForgeKind::Github;
        #[derive(Deserialize)]
        struct AccessToken {
            token: String,
            expires_at: chrono::DateTime<chrono::Utc>,
        }
        let url = api::join(
            base,
            [
                "app",
                "installations",
                &installation.to_string(),
                "access_tokens",
            ],
        );
        let now = chrono::Utc::now().timestamp();
        let mut request = super::client::headers(http.post(url), &self.jwt(now)?).timeout(timeout);
        if let Some(scope) = scope {
            request = request.json(scope);
        }
        let issued: AccessToken = api::json(forge, api::send(forge, request).await?).await?;
        Ok((Token::new(issued.token), issued.expires_at.timestamp()))
    }

    /// An installation token for `owner/name`, from the cache while it is fresh.
    pub(crate) async fn token_for(
        &self,
        http: &reqwest::Client,
        base: &url::Url,
        timeout: std::time::Duration,
        owner: &str,
        name: &str,
    ) -> Result<Token, ForgeError> {
        let now = chrono::Utc::now().timestamp();
        let installation = self.installation(http, base, timeout, owner, name).await?;
        if let Some((token, expires)) = self.lock().tokens.get(&installation)
            && *expires - REFRESH_MARGIN_SECS > now
        {
            return Ok(token.clone());
        }
        let (token, expires) = self.issue(http, base, timeout, installation, None).await?;
        self.lock()
            .tokens
            .insert(installation, (token.clone(), expires));
        Ok(token)
    }

    /// A token for a job to clone `owner/name` with: scoped to that one repository with only
    /// `contents: read`, so a job holding it can read nothing else and write nothing. Kept apart
    /// from the API tokens ([`Self::token_for`], installation-wide), cached per repository.
    pub(crate) async fn clone_token_for(
        &self,
        http: &reqwest::Client,
        base: &url::Url,
        timeout: std::time::Duration,
        owner: &str,
        name: &str,
    ) -> Result<Token, ForgeError> {
        let now = chrono::Utc::now().timestamp();
        let repo_key = format!("{owner}/{name}").to_ascii_lowercase();
        if let Some((token, expires)) = self.lock().clone_tokens.get(&repo_key)
            && *expires - CLONE_REFRESH_MARGIN_SECS > now
        {
            return Ok(token.clone());
        }
        let installation = self.installation(http, base, timeout, owner, name).await?;
        let scope = AccessScope {
            repositories: [name],
            permissions: ClonePermissions { contents: "read" },
        };
        match self
            .issue(http, base, timeout, installation, Some(&scope))
            .await
        {
            Ok((token, expires)) => {
                self.lock()
                    .clone_tokens
                    .insert(repo_key, (token.clone(), expires));
                Ok(token)
            }
            Err(err) => {
                // The App may have been reinstalled (a new installation id) or the repository
                // removed from it: look the installation up again next time.
                if matches!(err, ForgeError::Api { status, .. } if (400..500).contains(&status)) {
                    self.lock().installations.remove(&repo_key);
                }
                Err(err)
            }
        }
    }

    /// Forgets what is cached for `owner/name` after GitHub refused its token (revoked, or the
    /// App was reinstalled).
    pub(crate) fn forget(&self, owner: &str, name: &str) {
        let mut cache = self.lock();
        let key = format!("{owner}/{name}").to_ascii_lowercase();
        if let Some(id) = cache.installations.remove(&key) {
            cache.tokens.remove(&id);
        }
        cache.clone_tokens.remove(&key);
    }
}

/// The label and bytes of the first PEM block.
fn pem(text: &str) -> Result<(String, Vec<u8>), ConfigError> {
    let begin = text
        .find("-----BEGIN ")
        .ok_or(ConfigError::PrivateKey("no PEM block"))?;
    let rest = &text[begin + "-----BEGIN ".len()..];
    let label_end = rest
        .find("-----")
        .ok_or(ConfigError::PrivateKey("malformed PEM header"))?;
    let label = rest[..label_end].to_owned();
    let body = &rest[label_end + 5..];
    let end = body
        .find(&format!("-----END {label}-----"))
        .ok_or(ConfigError::PrivateKey("unterminated PEM block"))?;
    let b64: String = body[..end].chars().filter(|c| !c.is_whitespace()).collect();
    let der = STANDARD
        .decode(b64)
        .map_err(|_| ConfigError::PrivateKey("PEM body is not base64"))?;
    Ok((label, der))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_keys_are_refused_with_a_reason() {
        assert!(matches!(
            GithubApp::new(1, "nope"),
            Err(ConfigError::PrivateKey("no PEM block"))
        ));
        let not_b64 = "-----BEGIN RSA PRIVATE KEY-----\n!!!\n-----END RSA PRIVATE KEY-----\n";
        assert!(GithubApp::new(1, not_b64).is_err());
        let not_rsa = "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n";
        assert!(matches!(
            GithubApp::new(1, not_rsa),
            Err(ConfigError::PrivateKey(_))
        ));
        let other = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(GithubApp::new(1, other).is_err());
    }
}
