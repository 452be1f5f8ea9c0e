//! What an engine is configured with.

use std::collections::HashMap;
use std::time::Duration;

use gantry_core::Trigger;

/// Limits, links and timings of an [`crate::Engine`].
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Jobs handed to the backend at once, over all repositories.
    pub max_running_jobs: usize,
    /// Jobs handed to the backend at once for one repository.
    pub max_running_per_repo: usize,
    /// When a new push or pull request update cancels older runs.
    pub supersede: SupersedePolicy,
    /// Which secrets jobs may use, and their values for backends that need them.
    pub secrets: crate::SecretPolicy,
    /// The viewer's public base URL (`https://ci.example.com`): commit statuses link to runs
    /// under it. Without it statuses carry no link.
    pub public_url: Option<String>,
    /// The first part of every commit status context: `<prefix>/<pipeline>[/<job>]`.
    pub status_context_prefix: String,
    /// How often deadlines (job timeouts, unconfirmed cancels) are checked.
    pub tick: Duration,
    /// How long a backend gets to confirm a cancel (or a timeout's cancel) before the engine
    /// ends the attempt itself.
    pub cancel_grace: Duration,
    /// The timeout of jobs whose pipeline sets none, and the most a job or step may ask for.
    pub job_timeouts: crate::JobTimeouts,
    pub reporter: ReporterConfig,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_running_jobs: 8,
            max_running_per_repo: 4,
            supersede: SupersedePolicy::default(),
            secrets: crate::SecretPolicy::default(),
            public_url: None,
            status_context_prefix: "gantry".into(),
            tick: Duration::from_millis(500),
            cancel_grace: Duration::from_secs(60),
            job_timeouts: crate::JobTimeouts::default(),
            reporter: ReporterConfig::default(),
        }
    }
}

/// Cancelling superseded work. A push to a branch cancels that branch's older queued and running
/// runs of the same pipeline; an update of a pull request cancels its older runs.
#[derive(Clone, Debug)]
pub struct SupersedePolicy {
    /// For every repository without an override.
    pub enabled: bool,
    /// Pushes to the repository's default branch too (off by default: every commit on the main
    /// line usually deserves its own result).
    pub default_branch: bool,
    /// Per repository (`full_name`).
    pub repos: HashMap<String, RepoSupersede>,
}

impl Default for SupersedePolicy {
    fn default() -> Self {
        Self {
            enabled: true,
            default_branch: false,
            repos: HashMap::new(),
        }
    }
}

/// A repository's override of [`SupersedePolicy`]; `None` keeps the default.
#[derive(Clone, Debug, Default)]
pub struct RepoSupersede {
    pub enabled: Option<bool>,
    pub default_branch: Option<bool>,
}

impl SupersedePolicy {
    /// Does a run for `trigger` cancel the older runs it supersedes?
    pub fn applies_to(&self, trigger: &Trigger) -> bool {
        let repo = self.repos.get(&trigger.repo.full_name);
        let enabled = repo.and_then(|r| r.enabled).unwrap_or(self.enabled);
        if !enabled {
            return false;
        }
        if trigger.pull_request.is_some() {
            return true;
        }
        let on_default = trigger.branch.is_some()
            && trigger.branch.as_deref() == trigger.repo.default_branch.as_deref();
        !on_default
            || repo
                .and_then(|r| r.default_branch)
                .unwrap_or(self.default_branch)
    }
}

/// How the reporter delivers the status outbox.
#[derive(Clone, Debug)]
pub struct ReporterConfig {
    /// The first retry's delay; each further retry doubles it.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// Tries for errors worth retrying (rate limits, 5xx, network) before a status is dropped.
    pub max_attempts: u32,
    /// Tries for errors that will not go away (4xx) before a status is dropped.
    pub max_attempts_non_retryable: u32,
    /// How often the outbox is looked at when nothing wakes the reporter.
    pub poll: Duration,
}

impl Default for ReporterConfig {
    fn default() -> Self {
        Self {
            backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(300),
            max_attempts: 20,
            max_attempts_non_retryable: 3,
            poll: Duration::from_secs(5),
        }
    }
}

#[cfg(test)]
mod tests {
    use gantry_core::{Event, ForgeKind, PullRequest, RepoRef};

    use super::*;

    fn push(branch: &str) -> Trigger {
        let repo = RepoRef {
            forge: ForgeKind::Github,
            full_name: "acme/app".into(),
            clone_url: String::new(),
            web_url: None,
            default_branch: Some("main".into()),
        };
        Trigger::new(Event::Push, repo, format!("refs/heads/{branch}"), "abc")
    }

    #[test]
    fn the_default_branch_is_exempt_unless_configured() {
        let mut policy = SupersedePolicy::default();
        assert!(policy.applies_to(&push("feature")));
        assert!(!policy.applies_to(&push("main")));
        policy.repos.insert(
            "acme/app".into(),
            RepoSupersede {
                enabled: None,
                default_branch: Some(true),
            },
        );
        assert!(policy.applies_to(&push("main")));
        policy.repos.insert(
            "acme/app".into(),
            RepoSupersede {
                enabled: Some(false),
                default_branch: None,
            },
        );
        assert!(!policy.applies_to(&push("feature")));
    }

    #[test]
    fn pull_request_updates_supersede() {
        let mut t = push("feature");
        t.event = Event::PullRequest;
        t.pull_request = Some(PullRequest {
            number: 3,
            head_ref: "feature".into(),
            base_ref: "main".into(),
            from_fork: false,
            title: None,
        });
        assert!(SupersedePolicy::default().applies_to(&t));
    }
}
