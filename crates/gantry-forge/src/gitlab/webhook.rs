//! GitLab webhook deliveries: signed with a signing token (`whsec_…`; Standard Webhooks:
//! `webhook-signature`, `webhook-id`, `webhook-timestamp`, refused beyond 5 minutes of skew) or
//! carrying the shared secret in `X-Gitlab-Token`; the event in `X-Gitlab-Event` (and
//! `object_kind`), the delivery id in `X-Gitlab-Event-UUID`.

use gantry_core::{Event, ForgeKind, PullRequest, RepoRef, Trigger};
use http::HeaderMap;
use serde::Deserialize;

use crate::secret::WebhookSecrets;
use crate::verify::{self, VerifyError, header};
use crate::webhook::{Delivery, Incoming, ParseError, Parsed, Push, WebhookError, json};

pub const TOKEN_HEADER: &str = "x-gitlab-token";
/// A signing token's signature (Standard Webhooks), with `webhook-id` and `webhook-timestamp`.
pub const SIGNATURE_HEADER: &str = "webhook-signature";
pub const EVENT_HEADER: &str = "x-gitlab-event";
pub const DELIVERY_HEADER: &str = "x-gitlab-event-uuid";

pub fn delivery_id(headers: &HeaderMap) -> Option<String> {
    header(headers, DELIVERY_HEADER).map(str::to_owned)
}

/// Verifies, parses and authorises one GitLab delivery. The kind of event is read from the
/// body's `object_kind`, so project hooks and system hooks (`X-Gitlab-Event: System Hook`) are
/// handled alike.
pub fn receive(
    headers: &HeaderMap,
    body: &[u8],
    secrets: &WebhookSecrets,
) -> Result<Delivery, WebhookError> {
    receive_at(headers, body, secrets, chrono::Utc::now().timestamp())
}

/// [`receive`] as if the time were `now` (Unix seconds), for signed timestamps in tests.
#[doc(hidden)]
pub fn receive_at(
    headers: &HeaderMap,
    body: &[u8],
    secrets: &WebhookSecrets,
    now: i64,
) -> Result<Delivery, WebhookError> {
    verify::require_secrets(secrets)?;
    // A signing token (Standard Webhooks) when the delivery is signed; else the secret token.
    let verified = match header(headers, SIGNATURE_HEADER) {
        Some(signatures) => {
            let signed = verify::StandardSignature {
                id: header(headers, "webhook-id")
                    .ok_or(VerifyError::MissingHeader("webhook-id"))?,
                timestamp: header(headers, "webhook-timestamp")
                    .ok_or(VerifyError::MissingHeader("webhook-timestamp"))?,
                signatures,
            };
            verify::standard_webhooks(&signed, body, secrets, now)?
        }
        None => {
            let token = header(headers, TOKEN_HEADER).ok_or(VerifyError::MissingHeader(
                "X-Gitlab-Token (or webhook-signature)",
            ))?;
            verify::shared_token(token, body, secrets)?
        }
    };
    let kind: Kind = json(verified.body())?;
    let event = header(headers, EVENT_HEADER)
        .map(str::to_owned)
        .or_else(|| kind.object_kind.clone())
        .ok_or(ParseError::MissingEventHeader("X-Gitlab-Event"))?;
    let parsed = match kind.object_kind.as_deref() {
        Some("push") | Some("tag_push") => push(json(verified.body())?),
        Some("merge_request") => merge_request(json(verified.body())?),
        other => Parsed {
            subject: kind.project.map(|p| p.path_with_namespace),
            incoming: Incoming::ignored(format!(
                "{} events start nothing",
                other.unwrap_or(event.as_str())
            )),
        },
    };
    verified.authorize(parsed.subject.as_deref())?;
    Ok(Delivery {
        forge: ForgeKind::Gitlab,
        id: delivery_id(headers),
        event,
        incoming: parsed.incoming,
    })
}

#[derive(Deserialize)]
struct Kind {
    object_kind: Option<String>,
    project: Option<Named>,
}

#[derive(Deserialize)]
struct Named {
    path_with_namespace: String,
}

#[derive(Deserialize)]
struct Project {
    path_with_namespace: String,
    git_http_url: String,
    web_url: Option<String>,
    default_branch: Option<String>,
}

impl Project {
    fn to_ref(&self) -> RepoRef {
        RepoRef {
            forge: ForgeKind::Gitlab,
            full_name: self.path_with_namespace.clone(),
            clone_url: self.git_http_url.clone(),
            web_url: self.web_url.clone(),
            default_branch: self.default_branch.clone(),
        }
    }
}

#[derive(Deserialize)]
struct PushEvent {
    #[serde(rename = "ref")]
    git_ref: String,
    before: String,
    after: String,
    user_username: Option<String>,
    project: Project,
    #[serde(default)]
    commits: Vec<Commit>,
    /// GitLab lists at most 20 commits; this is how many were pushed.
    total_commits_count: Option<u64>,
}

#[derive(Deserialize)]
struct Commit {
    id: Option<String>,
    message: Option<String>,
    #[serde(default)]
    added: Vec<String>,
    #[serde(default)]
    modified: Vec<String>,
    #[serde(default)]
    removed: Vec<String>,
}

/// GitLab does not say whether a push was forced; a forced push's changed paths are those of
/// the commits it lists.
fn push(p: PushEvent) -> Parsed {
    let paths = crate::webhook::changed_paths(
        p.commits
            .iter()
            .flat_map(|c| [&c.added, &c.modified, &c.removed]),
    );
    let listed = p.commits.len() as u64;
    let message = p
        .commits
        .iter()
        .find(|c| c.id.as_deref() == Some(p.after.as_str()))
        .and_then(|c| c.message.clone());
    let incoming = Push {
        repo: p.project.to_ref(),
        git_ref: &p.git_ref,
        before: &p.before,
        after: &p.after,
        created: false,
        deleted: false,
        forced: false,
        paths,
        truncated: p.total_commits_count.is_some_and(|total| total > listed),
        actor: p.user_username,
        message,
    }
    .into_incoming();
    Parsed {
        incoming,
        subject: Some(p.project.path_with_namespace),
    }
}

#[derive(Deserialize)]
struct MergeRequestEvent {
    user: Option<User>,
    project: Project,
    object_attributes: MergeRequest,
}

#[derive(Deserialize)]
struct User {
    username: Option<String>,
}

#[derive(Deserialize)]
struct MergeRequest {
    iid: u64,
    title: Option<String>,
    source_branch: String,
    target_branch: String,
    source_project_id: Option<u64>,
    target_project_id: Option<u64>,
    action: Option<String>,
    /// Present on `update` when new commits were pushed: the previous head.
    oldrev: Option<String>,
    last_commit: LastCommit,
}

#[derive(Deserialize)]
struct LastCommit {
    id: String,
}

fn merge_request(e: MergeRequestEvent) -> Parsed {
    let mr = e.object_attributes;
    let subject = Some(e.project.path_with_namespace.clone());
    let new_commits = mr.oldrev.as_deref().is_some_and(|rev| !rev.is_empty());
    let incoming = match mr.action.as_deref() {
        Some("open") | Some("reopen") => None,
        Some("update") if new_commits => None,
        Some("update") => Some("merge request updated without new commits".to_owned()),
        Some("close") => Some(format!("merge request !{} was closed", mr.iid)),
        Some("merge") => Some(format!("merge request !{} was merged", mr.iid)),
        Some(action) => Some(format!("merge request action {action} starts nothing")),
        None => Some("merge request event without an action".to_owned()),
    }
    .map(Incoming::ignored)
    .unwrap_or_else(|| {
        let mut trigger = Trigger::new(
            Event::PullRequest,
            e.project.to_ref(),
            format!("refs/merge-requests/{}/head", mr.iid),
            mr.last_commit.id,
        );
        trigger.branch = Some(mr.source_branch.clone());
        trigger.before = mr.oldrev.as_deref().and_then(crate::webhook::non_zero);
        trigger.actor = e.user.and_then(|u| u.username);
        trigger.pull_request = Some(PullRequest {
            number: mr.iid,
            head_ref: mr.source_branch,
            base_ref: mr.target_branch,
            from_fork: mr.source_project_id != mr.target_project_id,
            title: mr.title,
        });
        Incoming::Trigger {
            trigger: Box::new(trigger),
            compare: None,
        }
    });
    Parsed { incoming, subject }
}
