//! Webhook authentication over the raw body, in constant time, before anything parses it.

use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::secret::{Scope, WebhookSecrets};

/// Why a delivery was not authenticated. Every variant is answered 401; [`VerifyError::reason`]
/// is a short label for logs and metrics.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("missing {0} header")]
    MissingHeader(&'static str),
    #[error("malformed signature: {0}")]
    MalformedSignature(&'static str),
    #[error("signature does not match")]
    Mismatch,
    #[error("no webhook secret configured")]
    NoSecretConfigured,
    /// A signed timestamp too far from now: a replayed (or badly delayed) delivery.
    #[error("webhook-timestamp is {0} s away from now (at most {max} s allowed)", max = TIMESTAMP_TOLERANCE_SECS)]
    StaleTimestamp(i64),
    /// The body verified with a secret scoped to other repositories than the one it names.
    #[error("the matching secret is not configured for {0}")]
    SecretNotForRepository(String),
}

impl VerifyError {
    /// A short, stable label: `missing_header`, `malformed_signature`, `mismatch`,
    /// `no_secret`, `wrong_scope`.
    pub fn reason(&self) -> &'static str {
        match self {
            VerifyError::MissingHeader(_) => "missing_header",
            VerifyError::MalformedSignature(_) => "malformed_signature",
            VerifyError::Mismatch => "mismatch",
            VerifyError::NoSecretConfigured => "no_secret",
            VerifyError::StaleTimestamp(_) => "stale",
            VerifyError::SecretNotForRepository(_) => "wrong_scope",
        }
    }
}

/// A body whose signature (or token) matched at least one configured secret. Only this type
/// can be parsed, so an unverified body cannot be.
#[derive(Debug)]
pub struct Verified<'a> {
    body: &'a [u8],
    /// The scopes of every secret that matched (the same secret may be configured twice).
    matched: Vec<Scope<'a>>,
}

impl<'a> Verified<'a> {
    pub fn body(&self) -> &'a [u8] {
        self.body
    }

    /// Checks, after parsing, that a matching secret is valid for what the body is about:
    /// `subject` is the repository's full name, or the owner's name when the delivery concerns
    /// an owner only. A delivery that names neither is accepted only with a global secret.
    pub(crate) fn authorize(&self, subject: Option<&str>) -> Result<(), VerifyError> {
        let allowed = self.matched.iter().any(|scope| match subject {
            Some(name) => scope.covers(name),
            None => *scope == Scope::Global,
        });
        if allowed {
            Ok(())
        } else {
            Err(VerifyError::SecretNotForRepository(
                subject
                    .unwrap_or("a delivery that names no repository")
                    .to_owned(),
            ))
        }
    }
}

pub(crate) fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// Verifies a hex HMAC-SHA256 signature of `body` (GitHub without its `sha256=` prefix, Gitea
/// and Forgejo as is) against every configured secret.
pub(crate) fn hmac_sha256_hex<'a>(
    signature_hex: &str,
    body: &'a [u8],
    secrets: &'a WebhookSecrets,
) -> Result<Verified<'a>, VerifyError> {
    let expected = decode_hex_32(signature_hex)?;
    // Every secret is tried, without stopping at the first match, so that the time taken does
    // not depend on which one matched.
    let matched = secrets
        .candidates()
        .filter(|(_, secret)| {
            let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
                return false;
            };
            mac.update(body);
            mac.verify_slice(&expected).is_ok()
        })
        .map(|(scope, _)| scope)
        .collect();
    verified(body, matched)
}

/// Verifies a shared token (GitLab's `X-Gitlab-Token`). Both sides are hashed first so the
/// comparison takes the same time whatever the lengths.
pub(crate) fn shared_token<'a>(
    token: &str,
    body: &'a [u8],
    secrets: &'a WebhookSecrets,
) -> Result<Verified<'a>, VerifyError> {
    let given = Sha256::digest(token.as_bytes());
    let matched = secrets
        .candidates()
        .filter(|(_, secret)| bool::from(Sha256::digest(secret.as_bytes()).ct_eq(&given)))
        .map(|(scope, _)| scope)
        .collect();
    verified(body, matched)
}

/// How far a signed timestamp may be from now (Standard Webhooks' recommendation).
pub const TIMESTAMP_TOLERANCE_SECS: i64 = 5 * 60;

/// What a Standard Webhooks delivery carries besides its body: `webhook-id`,
/// `webhook-timestamp` (Unix seconds) and `webhook-signature` (space-separated `v1,<base64>`).
pub(crate) struct StandardSignature<'h> {
    pub id: &'h str,
    pub timestamp: &'h str,
    pub signatures: &'h str,
}

/// Verifies a Standard Webhooks signature (GitLab's signing tokens): HMAC-SHA256 of
/// `{id}.{timestamp}.{body}` keyed with the bytes inside a `whsec_<base64>` secret, within
/// [`TIMESTAMP_TOLERANCE_SECS`] of `now`. Secrets without the `whsec_` prefix never match.
pub(crate) fn standard_webhooks<'a>(
    signed: &StandardSignature<'_>,
    body: &'a [u8],
    secrets: &'a WebhookSecrets,
    now: i64,
) -> Result<Verified<'a>, VerifyError> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let timestamp: i64 = signed
        .timestamp
        .parse()
        .map_err(|_| VerifyError::MalformedSignature("webhook-timestamp is not Unix seconds"))?;
    let given: Vec<Vec<u8>> = signed
        .signatures
        .split_ascii_whitespace()
        .filter_map(|s| s.strip_prefix("v1,"))
        .filter_map(|s| b64.decode(s).ok())
        .filter(|tag| tag.len() == 32)
        .collect();
    if given.is_empty() {
        return Err(VerifyError::MalformedSignature(
            "no v1,<base64 of 32 bytes> in webhook-signature",
        ));
    }
    let skew = now - timestamp;
    if skew.abs() > TIMESTAMP_TOLERANCE_SECS {
        return Err(VerifyError::StaleTimestamp(skew));
    }
    let matched = secrets
        .candidates()
        .filter(|(_, secret)| {
            let Some(key) = std::str::from_utf8(secret.as_bytes())
                .ok()
                .and_then(|s| s.strip_prefix("whsec_"))
                .and_then(|k| b64.decode(k).ok())
            else {
                return false;
            };
            let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&key) else {
                return false;
            };
            mac.update(signed.id.as_bytes());
            mac.update(b".");
            mac.update(signed.timestamp.as_bytes());
            mac.update(b".");
            mac.update(body);
            let tag = mac.finalize().into_bytes();
            // Every given signature is compared, in constant time each.
            given.iter().fold(false, |any, g| {
                any | bool::from(tag.as_slice().ct_eq(g.as_slice()))
            })
        })
        .map(|(scope, _)| scope)
        .collect();
    verified(body, matched)
}

fn verified<'a>(body: &'a [u8], matched: Vec<Scope<'a>>) -> Result<Verified<'a>, VerifyError> {
    if matched.is_empty() {
        Err(VerifyError::Mismatch)
    } else {
        Ok(Verified { body, matched })
    }
}

/// Fails early, before any header is looked at, when nothing could ever verify.
pub(crate) fn require_secrets(secrets: &WebhookSecrets) -> Result<(), VerifyError> {
    if secrets.is_empty() {
        Err(VerifyError::NoSecretConfigured)
    } else {
        Ok(())
    }
}

fn decode_hex_32(hex: &str) -> Result<[u8; 32], VerifyError> {
    let bytes = hex.as_bytes();
    if !bytes.iter().all(u8::is_ascii_hexdigit) {
        return Err(VerifyError::MalformedSignature("not hex"));
    }
    match bytes.len() {
        64 => {}
        0 => return Err(VerifyError::MalformedSignature("empty")),
        n if n < 64 => return Err(VerifyError::MalformedSignature("truncated")),
        _ => return Err(VerifyError::MalformedSignature("too long")),
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *byte = (nibble(pair[0]) << 4) | nibble(pair[1]);
    }
    Ok(out)
}

fn nibble(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        b'A'..=b'F' => c - b'A' + 10,
        _ => 0, // callers check for hex digits first
    }
}

/// Lower-case hex, for tests and for signing test deliveries.
pub fn hmac_sha256_hex_of(secret: &[u8], body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret).expect("HMAC-SHA256 accepts keys of any length");
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_decoding_reports_why_it_fails() {
        let good = hmac_sha256_hex_of(b"k", b"body");
        assert!(decode_hex_32(&good).is_ok());
        assert!(decode_hex_32(&good.to_uppercase()).is_ok());
        assert_eq!(
            decode_hex_32(&good[..63]),
            Err(VerifyError::MalformedSignature("truncated"))
        );
        assert_eq!(
            decode_hex_32(&format!("{good}00")),
            Err(VerifyError::MalformedSignature("too long"))
        );
        assert_eq!(
            decode_hex_32(&good.replace(&good[..1], "z")),
            Err(VerifyError::MalformedSignature("not hex"))
        );
        assert_eq!(
            decode_hex_32(""),
            Err(VerifyError::MalformedSignature("empty"))
        );
    }

    #[test]
    fn any_of_several_secrets_verifies_and_records_its_scope() {
        let secrets = WebhookSecrets::global(["old", "new"]).with_scoped("acme", "team");
        for key in ["old", "new", "team"] {
            let sig = hmac_sha256_hex_of(key.as_bytes(), b"{}");
            assert!(hmac_sha256_hex(&sig, b"{}", &secrets).is_ok(), "{key}");
        }
        let sig = hmac_sha256_hex_of(b"team", b"{}");
        let v = hmac_sha256_hex(&sig, b"{}", &secrets).unwrap();
        assert!(v.authorize(Some("acme/app")).is_ok());
        assert!(matches!(
            v.authorize(Some("other/app")),
            Err(VerifyError::SecretNotForRepository(_))
        ));
        assert!(v.authorize(None).is_err());
        let sig = hmac_sha256_hex_of(b"nope", b"{}");
        assert_eq!(
            hmac_sha256_hex(&sig, b"{}", &secrets).unwrap_err(),
            VerifyError::Mismatch
        );
    }

    #[test]
    fn tokens_compare_whatever_their_length() {
        let secrets = WebhookSecrets::global(["tok"]);
        assert!(shared_token("tok", b"", &secrets).is_ok());
        assert_eq!(
            shared_token("to", b"", &secrets).unwrap_err(),
            VerifyError::Mismatch
        );
        assert_eq!(
            shared_token("tokk", b"", &secrets).unwrap_err(),
            VerifyError::Mismatch
        );
    }
}
