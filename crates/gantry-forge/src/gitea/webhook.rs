//! Gitea and Forgejo webhook deliveries: hex HMAC-SHA256 of the raw body in
//! `X-Forgejo-Signature` or `X-Gitea-Signature`, the event in `X-Forgejo-Event` /
//! `X-Gitea-Event`, the delivery id in `X-Forgejo-Delivery` / `X-Gitea-Delivery`. Forgejo sends
//! both families; its own is preferred. The body is JSON, or a form whose `payload` field is
//! the JSON (the signature covers the JSON either way).

use gantry_core::{ForgeKind, RepoRef};
use http::HeaderMap;
use serde::Deserialize;

use crate::secret::WebhookSecrets;
use crate::verify::{self, VerifyError, header};
use crate::webhook::{
    Delivery, Incoming, ParseError, Parsed, Push, WebhookError, form_payload, json,
};

pub const SIGNATURE_HEADERS: [&str; 2] = ["x-forgejo-signature", "x-gitea-signature"];
pub const EVENT_HEADERS: [&str; 2] = ["x-forgejo-event", "x-gitea-event"];
pub const DELIVERY_HEADERS: [&str; 2] = ["x-forgejo-delivery", "x-gitea-delivery"];

fn first<'h>(headers: &'h HeaderMap, names: [&str; 2]) -> Option<&'h str> {
    names.into_iter().find_map(|name| header(headers, name))
}

pub fn delivery_id(headers: &HeaderMap) -> Option<String> {
    first(headers, DELIVERY_HEADERS).map(str::to_owned)
}

/// Verifies, parses and authorises one Gitea or Forgejo delivery.
pub fn receive(
    headers: &HeaderMap,
    body: &[u8],
    secrets: &WebhookSecrets,
) -> Result<Delivery, WebhookError> {
    verify::require_secrets(secrets)?;
    let signature =
        first(headers, SIGNATURE_HEADERS).ok_or(VerifyError::MissingHeader("X-Gitea-Signature"))?;
    // Gitea and Forgejo sign the JSON payload, also when they send it form-encoded (as the
    // form's `payload` field): the field is taken out first, the signature checked over it.
    let payload = form_payload(headers, body)?;
    let verified = verify::hmac_sha256_hex(signature, &payload, secrets)?;
    let event = first(headers, EVENT_HEADERS)
        .ok_or(ParseError::MissingEventHeader("X-Gitea-Event"))?
        .to_owned();
    let body = verified.body();
    let parsed = match event.as_str() {
        "push" => push(json(body)?),
        "pull_request" => pull_request(json(body)?),
        "create" | "delete" => {
            let about: About = json(body)?;
            Parsed {
                subject: about.subject(),
                incoming: Incoming::ignored(format!(
                    "{event} events start nothing: the push event for the same ref does"
                )),
            }
        }
        other => {
            let about: About = json(body)?;
            Parsed {
                subject: about.subject(),
                incoming: Incoming::ignored(format!("{other} events start nothing")),
            }
        }
    };
    verified.authorize(parsed.subject.as_deref())?;
    Ok(Delivery {
        forge: ForgeKind::Gitea,
        id: delivery_id(headers),
        event,
        incoming: parsed.incoming,
    })
}

#[derive(Deserialize)]
struct Repository {
    full_name: String,
    clone_url: String,
    html_url: Option<String>,
    default_branch: Option<String>,
}

impl Repository {
    fn to_ref(&self) -> RepoRef {
        RepoRef {
            forge: ForgeKind::Gitea,
            full_name: self.full_name.clone(),
            clone_url: self.clone_url.clone(),
            web_url: self.html_url.clone(),
            default_branch: self.default_branch.clone(),
        }
    }
}

#[derive(Deserialize)]
struct Named {
    full_name: String,
}

#[derive(Deserialize)]
struct Login {
    login: Option<String>,
    username: Option<String>,
}

impl Login {
    fn name(self) -> Option<String> {
        self.login.or(self.username).filter(|s| !s.is_empty())
    }
}

#[derive(Deserialize)]
struct About {
    repository: Option<Named>,
    organization: Option<Login>,
}

impl About {
    fn subject(self) -> Option<String> {
        self.repository
            .map(|r| r.full_name)
            .or(self.organization.and_then(Login::name))
    }
}

#[derive(Deserialize)]
struct PushEvent {
    #[serde(rename = "ref")]
    git_ref: String,
    before: String,
    after: String,
    #[serde(default)]
    commits: Vec<Commit>,
    /// How many commits were pushed; `commits` lists a limited number of them.
    total_commits: Option<u64>,
    head_commit: Option<Commit>,
    repository: Repository,
    pusher: Option<Login>,
    sender: Option<Login>,
}

#[derive(Deserialize)]
struct Commit {
    message: Option<String>,
    #[serde(default)]
    added: Option<Vec<String>>,
    #[serde(default)]
    removed: Option<Vec<String>>,
    #[serde(default)]
    modified: Option<Vec<String>>,
}

fn push(p: PushEvent) -> Parsed {
    let empty = Vec::new();
    let paths = crate::webhook::changed_paths(p.commits.iter().flat_map(|c| {
        [&c.added, &c.modified, &c.removed].map(|list| list.as_ref().unwrap_or(&empty))
    }));
    let listed = p.commits.len() as u64;
    let incoming = Push {
        repo: p.repository.to_ref(),
        git_ref: &p.git_ref,
        before: &p.before,
        after: &p.after,
        created: false,
        deleted: false,
        forced: false,
        paths,
        truncated: p.total_commits.is_some_and(|total| total > listed),
        actor: p
            .pusher
            .and_then(Login::name)
            .or(p.sender.and_then(Login::name)),
        message: p.head_commit.and_then(|c| c.message),
    }
    .into_incoming();
    Parsed {
        incoming,
        subject: Some(p.repository.full_name),
    }
}

#[derive(Deserialize)]
struct PullRequestEvent {
    action: String,
    number: u64,
    pull_request: PullRequestBody,
    repository: Repository,
    sender: Option<Login>,
}

#[derive(Deserialize)]
struct PullRequestBody {
    title: Option<String>,
    head: Branch,
    base: Branch,
}

#[derive(Deserialize)]
struct Branch {
    #[serde(rename = "ref")]
    git_ref: String,
    sha: String,
    repo: Option<Named>,
}

fn pull_request(p: PullRequestEvent) -> Parsed {
    let subject = Some(p.repository.full_name.clone());
    let incoming = match p.action.as_str() {
        "opened" | "synchronized" | "reopened" => {
            let base_repo = p
                .pull_request
                .base
                .repo
                .as_ref()
                .map_or(p.repository.full_name.clone(), |r| r.full_name.clone());
            crate::webhook::OpenedPullRequest {
                repo: p.repository.to_ref(),
                number: p.number,
                head_sha: p.pull_request.head.sha,
                head_ref: p.pull_request.head.git_ref,
                base_ref: p.pull_request.base.git_ref,
                head_repo: p.pull_request.head.repo.map(|r| r.full_name),
                base_repo,
                title: p.pull_request.title,
                actor: p.sender.and_then(Login::name),
                before: None,
            }
            .into_incoming()
        }
        "closed" => Incoming::ignored(format!("pull request #{} was closed", p.number)),
        action => Incoming::ignored(format!("pull request action {action} starts nothing")),
    };
    Parsed { incoming, subject }
}
