//! What a verified webhook delivery means to Gantry, whichever forge sent it.

use std::borrow::Cow;
use std::collections::BTreeSet;

use gantry_core::{ForgeKind, Trigger};
use http::HeaderMap;

use crate::secret::WebhookSecrets;
use crate::verify::{VerifyError, header};

/// A verified, parsed and authorised webhook delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub forge: ForgeKind,
    /// The forge's id for this delivery (`X-GitHub-Delivery`, `X-Gitlab-Event-UUID`,
    /// `X-Gitea-Delivery` / `X-Forgejo-Delivery`): a redelivery carries the same one.
    pub id: Option<String>,
    /// The event type as the forge named it, e.g. `push` or `Merge Request Hook`.
    pub event: String,
    pub incoming: Incoming,
}

/// What a delivery asks of Gantry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Incoming {
    /// The forge checking the hook works (GitHub's `ping`); answer 200.
    Ping,
    /// Something to build.
    Trigger {
        trigger: Box<Trigger>,
        /// Set when the payload does not tell every path changed between `before` and `after`
        /// (then `trigger.changed_paths` is `None`): the caller computes them with git, e.g.
        /// `git diff --name-only before after`, rather than guessing.
        compare: Option<Compare>,
    },
    /// A well-formed delivery that starts nothing (a deleted branch, a closed pull request, an
    /// event type Gantry does not build); answer 2xx with the reason, never an error.
    Ignored { reason: String },
}

impl Incoming {
    pub(crate) fn ignored(reason: impl Into<String>) -> Self {
        Incoming::Ignored {
            reason: reason.into(),
        }
    }
}

/// The commits between which changed paths must be computed from git.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compare {
    pub before: String,
    pub after: String,
    pub reason: CompareReason,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareReason {
    /// The forge listed fewer commits than were pushed.
    Truncated,
    /// A forced push: the listed commits do not describe `before..after`.
    Forced,
}

/// Why a delivery was refused: 401 for [`WebhookError::Unauthorized`], 400 for
/// [`WebhookError::BadPayload`] (see [`WebhookError::http_status`]).
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("unauthorized: {0}")]
    Unauthorized(#[from] VerifyError),
    #[error("bad payload: {0}")]
    BadPayload(#[from] ParseError),
}

impl WebhookError {
    pub fn http_status(&self) -> u16 {
        match self {
            WebhookError::Unauthorized(_) => 401,
            WebhookError::BadPayload(_) => 400,
        }
    }
}

/// A verified body that Gantry cannot read.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("missing {0} header")]
    MissingEventHeader(&'static str),
    #[error("form-encoded body without a payload field")]
    FormWithoutPayload,
    /// serde's message, with line and column.
    #[error("malformed JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A field Gantry would act on, refused (see `admit`).
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

/// A parsed delivery and what it is about, before authorisation.
pub(crate) struct Parsed {
    pub incoming: Incoming,
    /// The repository's full name, or an owner's name, or nothing (see `Verified::authorize`).
    pub subject: Option<String>,
}

/// Verifies, parses and authorises a delivery to `/hooks/{forge}`. `Local` has no webhooks
/// and is refused as unauthorised.
pub fn receive(
    forge: ForgeKind,
    headers: &HeaderMap,
    body: &[u8],
    secrets: &WebhookSecrets,
) -> Result<Delivery, WebhookError> {
    let mut delivery = match forge {
        ForgeKind::Github => crate::github::receive(headers, body, secrets),
        ForgeKind::Gitlab => crate::gitlab::receive(headers, body, secrets),
        ForgeKind::Gitea => crate::gitea::receive(headers, body, secrets),
        ForgeKind::Local => Err(VerifyError::NoSecretConfigured.into()),
    }?;
    crate::admit::delivery(&mut delivery)?;
    Ok(delivery)
}

/// The delivery id from the headers alone, for logging refused deliveries too.
pub fn delivery_id(forge: ForgeKind, headers: &HeaderMap) -> Option<String> {
    match forge {
        ForgeKind::Github => crate::github::delivery_id(headers),
        ForgeKind::Gitlab => crate::gitlab::delivery_id(headers),
        ForgeKind::Gitea => crate::gitea::delivery_id(headers),
        ForgeKind::Local => None,
    }
}

/// A git object id of only zeros: the "before" of a created ref or the "after" of a deleted one
/// (40 digits for SHA-1 repositories, 64 for SHA-256).
pub(crate) fn is_zero_sha(sha: &str) -> bool {
    !sha.is_empty() && sha.bytes().all(|b| b == b'0')
}

pub(crate) fn non_zero(sha: &str) -> Option<String> {
    (!is_zero_sha(sha) && !sha.is_empty()).then(|| sha.to_owned())
}

/// The paths touched by a list of commits, each once, sorted.
pub(crate) fn changed_paths<'a>(lists: impl IntoIterator<Item = &'a Vec<String>>) -> Vec<String> {
    lists
        .into_iter()
        .flatten()
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// `refs/heads/x` → a branch, `refs/tags/x` → a tag.
pub(crate) enum RefKind<'a> {
    Branch(&'a str),
    Tag(&'a str),
    Other,
}

pub(crate) fn ref_kind(git_ref: &str) -> RefKind<'_> {
    if let Some(branch) = git_ref.strip_prefix("refs/heads/") {
        RefKind::Branch(branch)
    } else if let Some(tag) = git_ref.strip_prefix("refs/tags/") {
        RefKind::Tag(tag)
    } else {
        RefKind::Other
    }
}

/// The JSON of a delivery: the body itself, or its `payload` field when the forge was set to
/// send `application/x-www-form-urlencoded` (GitHub, Gitea and Forgejo can).
pub(crate) fn form_payload<'a>(
    headers: &HeaderMap,
    body: &'a [u8],
) -> Result<Cow<'a, [u8]>, ParseError> {
    let form = header(headers, http::header::CONTENT_TYPE.as_str()).is_some_and(|ct| {
        ct.split(';').next().is_some_and(|mime| {
            mime.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
    });
    if !form {
        return Ok(Cow::Borrowed(body));
    }
    form_urlencoded::parse(body)
        .find(|(key, _)| key == "payload")
        .map(|(_, value)| Cow::Owned(value.into_owned().into_bytes()))
        .ok_or(ParseError::FormWithoutPayload)
}

pub(crate) fn json<'de, T: serde::Deserialize<'de>>(body: &'de [u8]) -> Result<T, ParseError> {
    Ok(serde_json::from_slice(body)?)
}

/// What GitHub's and Gitea's pull request payloads tell when one is opened, updated or
/// reopened, in Gantry's terms.
pub(crate) struct OpenedPullRequest {
    pub repo: gantry_core::RepoRef,
    pub number: u64,
    pub head_sha: String,
    pub head_ref: String,
    pub base_ref: String,
    /// The full names of the repositories the head and base branches live in; a head without
    /// one (a deleted fork) counts as a fork.
    pub head_repo: Option<String>,
    pub base_repo: String,
    pub title: Option<String>,
    pub actor: Option<String>,
    pub before: Option<String>,
}

impl OpenedPullRequest {
    /// A pull request run of the head commit, marked as from a fork unless both branches live
    /// in the same repository (forks never get secrets).
    pub fn into_incoming(self) -> Incoming {
        let from_fork = self
            .head_repo
            .as_deref()
            .is_none_or(|head| !head.eq_ignore_ascii_case(&self.base_repo));
        let mut trigger = gantry_core::Trigger::new(
            gantry_core::Event::PullRequest,
            self.repo,
            format!("refs/pull/{}/head", self.number),
            self.head_sha,
        );
        trigger.branch = Some(self.head_ref.clone());
        trigger.before = self.before;
        trigger.actor = self.actor;
        trigger.pull_request = Some(gantry_core::PullRequest {
            number: self.number,
            head_ref: self.head_ref,
            base_ref: self.base_ref,
            from_fork,
            title: self.title,
        });
        Incoming::Trigger {
            trigger: Box::new(trigger),
            compare: None,
        }
    }
}

/// What every forge's push payload tells, in Gantry's terms.
pub(crate) struct Push<'a> {
    pub repo: gantry_core::RepoRef,
    pub git_ref: &'a str,
    pub before: &'a str,
    pub after: &'a str,
    /// The forge said the ref was created (also inferred from a zero `before`).
    pub created: bool,
    /// The forge said the ref was deleted (also inferred from a zero `after`).
    pub deleted: bool,
    pub forced: bool,
    /// Paths added, modified or removed by the listed commits.
    pub paths: Vec<String>,
    /// The forge listed fewer commits than were pushed.
    pub truncated: bool,
    pub actor: Option<String>,
    pub message: Option<String>,
}

impl Push<'_> {
    /// A push to a branch starts a push run and to a tag a tag run; deletions start nothing.
    ///
    /// Changed paths: a created branch has no "before" to compare with, so they are unknown
    /// (`None`, which `paths` filters match). A forced push or a truncated commit list gives
    /// `None` plus a [`Compare`] so the caller can ask git.
    pub(crate) fn into_incoming(self) -> Incoming {
        use gantry_core::Event;
        let deleted = self.deleted || self.after.is_empty() || is_zero_sha(self.after);
        let event = match ref_kind(self.git_ref) {
            RefKind::Other => {
                return Incoming::ignored(format!(
                    "{} is neither a branch nor a tag",
                    self.git_ref
                ));
            }
            RefKind::Branch(branch) if deleted => {
                return Incoming::ignored(format!("branch {branch} was deleted"));
            }
            RefKind::Tag(tag) if deleted => {
                return Incoming::ignored(format!("tag {tag} was deleted"));
            }
            RefKind::Branch(_) => Event::Push,
            RefKind::Tag(_) => Event::Tag,
        };
        let mut trigger = Trigger::new(event, self.repo, self.git_ref, self.after);
        trigger.actor = self.actor;
        trigger.message = self.message;
        let mut compare = None;
        if event == Event::Push {
            trigger.before = non_zero(self.before);
            let created = self.created || trigger.before.is_none();
            let reason = if created {
                None
            } else if self.forced {
                Some(CompareReason::Forced)
            } else if self.truncated {
                Some(CompareReason::Truncated)
            } else {
                trigger.changed_paths = Some(self.paths);
                None
            };
            compare = reason.map(|reason| Compare {
                before: self.before.to_owned(),
                after: self.after.to_owned(),
                reason,
            });
        }
        Incoming::Trigger {
            trigger: Box::new(trigger),
            compare,
        }
    }
}
