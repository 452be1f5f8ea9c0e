//! What the three API clients share: one HTTP client, URL building, and turning failures into
//! [`ForgeError`]s that say when to try again, without ever carrying a secret.

use std::time::Duration;

use gantry_core::{ForgeError, ForgeKind};
use reqwest::header::HeaderMap;
use reqwest::{RequestBuilder, Response, StatusCode};
use url::Url;

/// How long one API request may take, unless a client is told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest error body kept for a message.
const MAX_MESSAGE: usize = 300;

/// Why a client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid API URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("invalid GitHub App private key: {0}")]
    PrivateKey(&'static str),
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot build the HTTP client: {0}")]
    Http(#[source] reqwest::Error),
}

/// Makes ring the process's TLS crypto provider unless one is installed already. The
/// workspace builds reqwest without a bundled provider (`rustls-no-provider`: no aws-lc C
/// build), so any reqwest client — not only this crate's, which call this themselves — must be
/// built after this ran, or reqwest panics.
pub fn install_crypto_provider() {
    // Fails harmlessly when a provider is already installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub(crate) fn http_client() -> Result<reqwest::Client, ConfigError> {
    install_crypto_provider();
    reqwest::Client::builder()
        .user_agent(concat!("gantry/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(5))
        .build()
        .map_err(ConfigError::Http)
}

pub(crate) fn parse_base(url: &str) -> Result<Url, ConfigError> {
    let bad = |reason: &str| ConfigError::Url {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let parsed = Url::parse(url).map_err(|e| bad(&e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.cannot_be_a_base() {
        return Err(bad("expected an http(s) URL"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(bad("credentials belong in the token, not the URL"));
    }
    Ok(parsed)
}

/// `base` with `segments` appended, each percent-encoded (a `/` inside a segment becomes
/// `%2F`).
pub(crate) fn join<'a>(base: &Url, segments: impl IntoIterator<Item = &'a str>) -> Url {
    let mut url = base.clone();
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty().extend(segments);
    }
    url
}

/// An instance URL (`https://gitlab.example.com`) with its API path (`api/v4`) appended,
/// unless the URL already ends with it.
pub(crate) fn instance_api_base(instance: &str, api_path: [&str; 2]) -> Result<Url, ConfigError> {
    let base = parse_base(instance)?;
    let suffix = format!("/{}", api_path.join("/"));
    Ok(if base.path().trim_end_matches('/').ends_with(&suffix) {
        base
    } else {
        join(&base, api_path)
    })
}

/// The segments of a repository path, without empty ones (`"/a//b/"` → `a`, `b`).
pub(crate) fn path_segments(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|s| !s.is_empty() && *s != ".")
}

/// `owner/name` split in two.
pub(crate) fn owner_name(forge: ForgeKind, full_name: &str) -> Result<(&str, &str), ForgeError> {
    full_name
        .split_once('/')
        .filter(|(o, n)| !o.is_empty() && !n.is_empty() && !n.contains('/'))
        .ok_or_else(|| ForgeError::Api {
            forge,
            status: 400,
            message: format!("repository {full_name:?} is not owner/name"),
            retry_after: None,
        })
}

/// Sends a request; a non-success status becomes [`ForgeError::Api`], a failure to get an
/// answer [`ForgeError::Unreachable`].
pub(crate) async fn send(
    forge: ForgeKind,
    request: RequestBuilder,
) -> Result<Response, ForgeError> {
    if let Some(fault) = gantry_core::inject::fault("forge.request") {
        return Err(injected(forge, fault));
    }
    let response = request.send().await.map_err(|e| unreachable(forge, e))?;
    if response.status().is_success() {
        Ok(response)
    } else {
        Err(api_error(forge, response).await)
    }
}

/// An injected fault (see `gantry_core::inject`) as the forge's answer it stands for; the
/// request is never sent.
fn injected(forge: ForgeKind, fault: gantry_core::inject::Fault) -> ForgeError {
    let api = |status: u16, message: &str, retry_after: Option<u64>| ForgeError::Api {
        forge,
        status,
        message: fault.describe(message),
        retry_after,
    };
    match fault.choose(&[0, 1, 500, 502, 429]) {
        0 => ForgeError::Unreachable {
            forge,
            message: fault.describe("timed out"),
        },
        1 => ForgeError::Unreachable {
            forge,
            message: fault.describe("connection reset by peer"),
        },
        429 => api(429, "API rate limit exceeded", Some(1)),
        status => api(*status, "Server Error", None),
    }
}

/// A 404 as `None`: what does not exist at a commit is an answer, not an error.
pub(crate) fn found(result: Result<Response, ForgeError>) -> Result<Option<Response>, ForgeError> {
    match result {
        Ok(response) => Ok(Some(response)),
        Err(ForgeError::Api { status: 404, .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

pub(crate) async fn bytes(forge: ForgeKind, response: Response) -> Result<Vec<u8>, ForgeError> {
    Ok(response
        .bytes()
        .await
        .map_err(|e| unreachable(forge, e))?
        .to_vec())
}

pub(crate) async fn json<T: serde::de::DeserializeOwned>(
    forge: ForgeKind,
    response: Response,
) -> Result<T, ForgeError> {
    let status = response.status().as_u16();
    let body = bytes(forge, response).await?;
    serde_json::from_slice(&body).map_err(|e| ForgeError::Api {
        forge,
        status,
        message: format!("unexpected response: {e}"),
        retry_after: None,
    })
}

/// A request that got no answer. The URL is left out: it may name private repositories, and
/// nothing secret is ever in it, but an error message needs none of it.
pub(crate) fn unreachable(forge: ForgeKind, error: reqwest::Error) -> ForgeError {
    let message = if error.is_timeout() {
        "timed out".to_owned()
    } else if error.is_connect() {
        format!("cannot connect: {}", root_cause(&error))
    } else {
        root_cause(&error.without_url())
    };
    ForgeError::Unreachable { forge, message }
}

fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        message = format!("{message}: {e}");
        source = e.source();
    }
    message
}

async fn api_error(forge: ForgeKind, response: Response) -> ForgeError {
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.bytes().await.unwrap_or_default();
    let message = error_message(&body, status);
    let mut retry_after = retry_after(&headers, chrono::Utc::now().timestamp());
    let mut status = status.as_u16();
    // GitHub answers a primary or secondary rate limit with 403 (and sometimes 429). It is a
    // "try later", not a refusal, so it is reported as 429, which callers retry.
    if forge == ForgeKind::Github
        && status == 403
        && (retry_after.is_some() || message.to_ascii_lowercase().contains("rate limit"))
    {
        status = 429;
        retry_after = retry_after.or(Some(60));
    }
    ForgeError::Api {
        forge,
        status,
        message,
        retry_after,
    }
}

/// The forge's own words: `message` (GitHub, Gitea, GitLab) or `error` (GitLab) from a JSON
/// body, else the start of the body, else the status's reason.
fn error_message(body: &[u8], status: StatusCode) -> String {
    let from_json = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            ["message", "error"].into_iter().find_map(|k| match &v[k] {
                serde_json::Value::Null => None,
                serde_json::Value::String(s) => Some(s.clone()),
                other => Some(other.to_string()),
            })
        });
    let text = from_json.unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_owned());
    let text = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_owned()
    } else {
        text
    };
    truncate(&text, MAX_MESSAGE)
}

/// Seconds to wait, from `Retry-After` (seconds or an HTTP date) or, when GitHub says no
/// requests remain, from `x-ratelimit-reset` (a Unix time).
pub(crate) fn retry_after(headers: &HeaderMap, now: i64) -> Option<u64> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(value) = header("retry-after") {
        if let Ok(seconds) = value.parse::<u64>() {
            return Some(seconds);
        }
        if let Ok(date) = chrono::DateTime::parse_from_rfc2822(value) {
            return Some(date.timestamp().saturating_sub(now).max(0) as u64);
        }
    }
    if header("x-ratelimit-remaining") == Some("0")
        && let Some(reset) = header("x-ratelimit-reset").and_then(|v| v.parse::<i64>().ok())
    {
        return Some(reset.saturating_sub(now).max(1) as u64);
    }
    None
}

/// At most `max` characters, cut on a character boundary.
pub(crate) fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn instance_urls_get_their_api_path_once() {
        let base = |u: &str| instance_api_base(u, ["api", "v4"]).unwrap().to_string();
        assert_eq!(
            base("https://gitlab.example.com"),
            "https://gitlab.example.com/api/v4"
        );
        assert_eq!(
            base("https://gitlab.example.com/"),
            "https://gitlab.example.com/api/v4"
        );
        assert_eq!(
            base("https://x.example/gitlab/api/v4"),
            "https://x.example/gitlab/api/v4"
        );
        assert_eq!(
            base("https://x.example/gitlab"),
            "https://x.example/gitlab/api/v4"
        );
    }

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    reqwest::header::HeaderName::from_static(k),
                    v.parse().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn retry_after_comes_from_the_header_or_the_rate_limit_reset() {
        assert_eq!(retry_after(&headers(&[("retry-after", "30")]), 0), Some(30));
        let date = "Wed, 21 Oct 2015 07:28:00 GMT";
        let at = chrono::DateTime::parse_from_rfc2822(date)
            .unwrap()
            .timestamp();
        assert_eq!(
            retry_after(&headers(&[("retry-after", date)]), at - 12),
            Some(12)
        );
        let limited = headers(&[
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "1000"),
        ]);
        assert_eq!(retry_after(&limited, 900), Some(100));
        assert_eq!(retry_after(&limited, 2000), Some(1));
        let fine = headers(&[
            ("x-ratelimit-remaining", "12"),
            ("x-ratelimit-reset", "1000"),
        ]);
        assert_eq!(retry_after(&fine, 900), None);
    }

    #[test]
    fn messages_come_from_the_body_and_are_bounded() {
        let s = StatusCode::NOT_FOUND;
        assert_eq!(error_message(br#"{"message":"Not Found"}"#, s), "Not Found");
        assert_eq!(
            error_message(br#"{"error":"insufficient_scope"}"#, s),
            "insufficient_scope"
        );
        assert_eq!(error_message(b"", s), "Not Found");
        assert_eq!(
            error_message("é".repeat(400).as_bytes(), s).chars().count(),
            MAX_MESSAGE + 1
        );
    }

    #[test]
    fn urls_encode_each_segment() {
        let base = parse_base("https://gitlab.example.com/api/v4/").unwrap();
        let url = join(
            &base,
            [
                "projects",
                "group/sub/app",
                "repository",
                "files",
                ".gantry/ci.yaml",
                "raw",
            ],
        );
        assert_eq!(
            url.as_str(),
            "https://gitlab.example.com/api/v4/projects/group%2Fsub%2Fapp/repository/files/.gantry%2Fci.yaml/raw"
        );
        assert!(parse_base("ftp://x").is_err());
        assert!(parse_base("https://user:pw@x").is_err());
    }
}
