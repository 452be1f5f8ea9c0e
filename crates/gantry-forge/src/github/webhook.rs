//! GitHub webhook deliveries: `X-Hub-Signature-256: sha256=<hex>` over the raw body (JSON or
//! `application/x-www-form-urlencoded` with a `payload` field), `X-GitHub-Event`,
//! `X-GitHub-Delivery`.

use gantry_core::{ForgeKind, RepoRef};
use http::HeaderMap;
use serde::Deserialize;

use crate::secret::WebhookSecrets;
use crate::verify::{self, Verified, VerifyError, header};
use crate::webhook::{
    Delivery, Incoming, ParseError, Parsed, Push, WebhookError, form_payload, json,
};

pub const SIGNATURE_HEADER: &str = "x-hub-signature-256";
pub const EVENT_HEADER: &str = "x-github-event";
pub const DELIVERY_HEADER: &str = "x-github-delivery";

/// GitHub delivers at most this many commits in a push webhook (20 is the limit of the Events
/// API, not of webhooks). The payload has no total, so a list this long may be truncated.
const MAX_WEBHOOK_COMMITS: usize = 2048;

pub fn delivery_id(headers: &HeaderMap) -> Option<String> {
    header(headers, DELIVERY_HEADER).map(str::to_owned)
}

/// Verifies, parses and authorises one GitHub delivery.
pub fn receive(
    headers: &HeaderMap,
    body: &[u8],
    secrets: &WebhookSecrets,
) -> Result<Delivery, WebhookError> {
    let verified = verify(headers, body, secrets)?;
    let event = header(headers, EVENT_HEADER)
        .ok_or(ParseError::MissingEventHeader("X-GitHub-Event"))?
        .to_owned();
    let parsed = parse(headers, &event, &verified)?;
    verified.authorize(parsed.subject.as_deref())?;
    Ok(Delivery {
        forge: ForgeKind::Github,
        id: delivery_id(headers),
        event,
        incoming: parsed.incoming,
    })
}

fn verify<'a>(
    headers: &HeaderMap,
    body: &'a [u8],
    secrets: &'a WebhookSecrets,
) -> Result<Verified<'a>, VerifyError> {
    verify::require_secrets(secrets)?;
    let signature = header(headers, SIGNATURE_HEADER)
        .ok_or(VerifyError::MissingHeader("X-Hub-Signature-256"))?;
    let hex = signature
        .strip_prefix("sha256=")
        .ok_or(VerifyError::MalformedSignature("expected sha256=<hex>"))?;
    verify::hmac_sha256_hex(hex, body, secrets)
}

fn parse(headers: &HeaderMap, event: &str, verified: &Verified<'_>) -> Result<Parsed, ParseError> {
    // GitHub signs the body as sent: the form when form-encoded.
    let body = form_payload(headers, verified.body())?;
    let body = body.as_ref();
    match event {
        "ping" => {
            let p: About = json(body)?;
            Ok(Parsed {
                subject: p.subject(),
                incoming: Incoming::Ping,
            })
        }
        "push" => push(json(body)?),
        "pull_request" => pull_request(json(body)?),
        "create" | "delete" => {
            let p: About = json(body)?;
            Ok(Parsed {
                subject: p.subject(),
                incoming: Incoming::ignored(format!(
                    "{event} events start nothing: the push event for the same ref does"
                )),
            })
        }
        other => {
            let p: About = json(body)?;
            Ok(Parsed {
                subject: p.subject(),
                incoming: Incoming::ignored(format!("{other} events start nothing")),
            })
        }
    }
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
            forge: ForgeKind::Github,
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
    login: String,
}

/// Any event: what it is about, for authorisation.
#[derive(Deserialize)]
struct About {
    repository: Option<Named>,
    organization: Option<Login>,
}

impl About {
    fn subject(self) -> Option<String> {
        self.repository
            .map(|r| r.full_name)
            .or(self.organization.map(|o| o.login))
    }
}

#[derive(Deserialize)]
struct PushEvent {
    #[serde(rename = "ref")]
    git_ref: String,
    before: String,
    after: String,
    #[serde(default)]
    created: bool,
    #[serde(default)]
    deleted: bool,
    #[serde(default)]
    forced: bool,
    #[serde(default)]
    commits: Vec<Commit>,
    head_commit: Option<Commit>,
    repository: Repository,
    sender: Option<Login>,
    pusher: Option<Pusher>,
}

#[derive(Deserialize)]
struct Pusher {
    name: Option<String>,
}

#[derive(Deserialize)]
struct Commit {
    message: Option<String>,
    #[serde(default)]
    added: Vec<String>,
    #[serde(default)]
    removed: Vec<String>,
    #[serde(default)]
    modified: Vec<String>,
}

fn push(p: PushEvent) -> Result<Parsed, ParseError> {
    let paths = crate::webhook::changed_paths(
        p.commits
            .iter()
            .flat_map(|c| [&c.added, &c.modified, &c.removed]),
    );
    let incoming = Push {
        repo: p.repository.to_ref(),
        git_ref: &p.git_ref,
        before: &p.before,
        after: &p.after,
        created: p.created,
        deleted: p.deleted,
        forced: p.forced,
        paths,
        truncated: p.commits.len() >= MAX_WEBHOOK_COMMITS,
        actor: p.sender.map(|s| s.login).or(p.pusher.and_then(|p| p.name)),
        message: p.head_commit.and_then(|c| c.message),
    }
    .into_incoming();
    Ok(Parsed {
        incoming,
        subject: Some(p.repository.full_name),
    })
}

#[derive(Deserialize)]
struct PullRequestEvent {
    action: String,
    number: u64,
    pull_request: PullRequestBody,
    repository: Repository,
    sender: Option<Login>,
    /// Set on `synchronize`: the head before the push.
    before: Option<String>,
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
    /// `null` when the fork was deleted.
    repo: Option<Named>,
}

fn pull_request(p: PullRequestEvent) -> Result<Parsed, ParseError> {
    let subject = Some(p.repository.full_name.clone());
    let incoming = match p.action.as_str() {
        "opened" | "synchronize" | "reopened" => {
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
                actor: p.sender.map(|s| s.login),
                before: p.before.as_deref().and_then(crate::webhook::non_zero),
            }
            .into_incoming()
        }
        "closed" => Incoming::ignored(format!("pull request #{} was closed", p.number)),
        action => Incoming::ignored(format!("pull request action {action} starts nothing")),
    };
    Ok(Parsed { incoming, subject })
}
