use std::fmt;

use serde::{Deserialize, Serialize};

/// Which forge a repository lives on. `Local` is a repository on this machine (`gantry run`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForgeKind {
    Github,
    Gitlab,
    Gitea,
    Local,
}

impl ForgeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ForgeKind::Github => "github",
            ForgeKind::Gitlab => "gitlab",
            ForgeKind::Gitea => "gitea",
            ForgeKind::Local => "local",
        }
    }
}

impl fmt::Display for ForgeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A repository on a forge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoRef {
    pub forge: ForgeKind,
    /// `owner/name` (GitLab: the full namespace path).
    pub full_name: String,
    /// Where a clone fetches from: an https URL, or a local path for `ForgeKind::Local`.
    pub clone_url: String,
    /// The repository's page on the forge, for links from the viewer.
    pub web_url: Option<String>,
    pub default_branch: Option<String>,
}

/// What kind of event started a run. Pipelines match on it in `on:` and `when: event`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    Push,
    PullRequest,
    Tag,
    Manual,
}

impl Event {
    pub const ALL: [Event; 4] = [Event::Push, Event::PullRequest, Event::Tag, Event::Manual];

    pub fn as_str(self) -> &'static str {
        match self {
            Event::Push => "push",
            Event::PullRequest => "pull_request",
            Event::Tag => "tag",
            Event::Manual => "manual",
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A pull (GitLab: merge) request a run was started for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullRequest {
    pub number: u64,
    /// The branch the changes come from.
    pub head_ref: String,
    /// The branch they are to be merged into.
    pub base_ref: String,
    /// From a fork: such runs get no secrets.
    pub from_fork: bool,
    pub title: Option<String>,
}

/// Everything about the event that started a run that planning and execution need.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trigger {
    pub event: Event,
    pub repo: RepoRef,
    /// The full ref, e.g. `refs/heads/main`, `refs/tags/v1.2.0`, `refs/pull/7/head`.
    pub git_ref: String,
    /// The commit to build, exactly.
    pub sha: String,
    /// For a push: the commit the ref pointed at before.
    pub before: Option<String>,
    /// The branch built (for a pull request: its head branch).
    pub branch: Option<String>,
    pub tag: Option<String>,
    pub pull_request: Option<PullRequest>,
    /// Files changed by the event. `None` when unknown: then `paths` filters match.
    pub changed_paths: Option<Vec<String>>,
    pub actor: Option<String>,
    pub message: Option<String>,
}

impl Trigger {
    /// A trigger for a ref of a repository, with the branch or tag derived from the ref.
    pub fn new(
        event: Event,
        repo: RepoRef,
        git_ref: impl Into<String>,
        sha: impl Into<String>,
    ) -> Self {
        let git_ref = git_ref.into();
        let branch = git_ref.strip_prefix("refs/heads/").map(str::to_owned);
        let tag = git_ref.strip_prefix("refs/tags/").map(str::to_owned);
        Self {
            event,
            repo,
            git_ref,
            sha: sha.into(),
            before: None,
            branch,
            tag,
            pull_request: None,
            changed_paths: None,
            actor: None,
            message: None,
        }
    }

    /// Runs for pull requests from forks never see secrets.
    pub fn secrets_allowed(&self) -> bool {
        !self.pull_request.as_ref().is_some_and(|pr| pr.from_fork)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo() -> RepoRef {
        RepoRef {
            forge: ForgeKind::Github,
            full_name: "acme/app".into(),
            clone_url: "https://github.com/acme/app.git".into(),
            web_url: None,
            default_branch: Some("main".into()),
        }
    }

    #[test]
    fn branch_and_tag_come_from_the_ref() {
        let t = Trigger::new(Event::Push, repo(), "refs/heads/release/1.x", "abc");
        assert_eq!(t.branch.as_deref(), Some("release/1.x"));
        assert_eq!(t.tag, None);
        let t = Trigger::new(Event::Tag, repo(), "refs/tags/v1.0.0", "abc");
        assert_eq!(t.tag.as_deref(), Some("v1.0.0"));
        assert_eq!(t.branch, None);
    }

    #[test]
    fn fork_pull_requests_get_no_secrets() {
        let mut t = Trigger::new(Event::PullRequest, repo(), "refs/pull/7/head", "abc");
        assert!(t.secrets_allowed());
        t.pull_request = Some(PullRequest {
            number: 7,
            head_ref: "feature".into(),
            base_ref: "main".into(),
            from_fork: true,
            title: None,
        });
        assert!(!t.secrets_allowed());
    }
}
