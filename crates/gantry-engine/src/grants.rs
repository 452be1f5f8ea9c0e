//! Which secrets a job may read. The operator grants secrets to repositories (and optionally
//! branches) in Gantry's configuration; a pipeline only *asks*. Everything not granted is left
//! out of the job (the Pod, or the local process's environment), and said so in the job's log.
//!
//! The same grants serve both backends: the engine hands the local backend the values of the
//! granted secrets, and the Kubernetes backend renders `secretKeyRef`s only for granted ones.

use std::collections::BTreeMap;
use std::sync::Arc;

use gantry_core::{JobSpec, PullRequest, Secret, Trigger};
use globset::{Glob, GlobMatcher};
use serde::{Deserialize, Serialize};

/// The operator's grants.
///
/// ```toml
/// [[grants]]
/// secret = "registry-credentials"
/// repos = ["acme/*"]
///
/// [[grants]]
/// secret = "config-repo-token"
/// repos = ["acme/app"]
/// branches = ["main", "release/*"]
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretGrants(pub Vec<SecretGrant>);

/// One Secret (every key in it) granted to matching repositories.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecretGrant {
    /// The Secret's name in the build namespace.
    pub secret: String,
    /// `owner/name` globs (`acme/*`).
    pub repos: Vec<String>,
    /// Branch globs; empty: every branch and tag. A branch-scoped grant never matches a pull
    /// request (its head branch name is chosen by whoever opened it).
    pub branches: Vec<String>,
    /// Also for pull requests from branches of the same repository. Pull requests from forks
    /// never get secrets, whatever this says.
    pub pull_requests: bool,
}

/// What a grant is decided on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requester<'a> {
    /// `owner/name`.
    pub repo: &'a str,
    /// The branch built; `None` for tags and pull requests.
    pub branch: Option<&'a str>,
    pub pull_request: PullRequestOrigin,
}

/// Where the code of a run comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PullRequestOrigin {
    /// Not a pull request.
    None,
    /// A pull request from a branch of the same repository.
    SameRepo,
    /// From a fork, or not known to be from the same repository: no secrets.
    Fork,
}

fn matches(pattern: &str, text: &str) -> bool {
    let glob: Option<GlobMatcher> = Glob::new(pattern).ok().map(|g| g.compile_matcher());
    glob.is_some_and(|g| g.is_match(text))
}

impl SecretGrants {
    /// May `who` read the Secret named `secret`?
    pub fn allows(&self, secret: &str, who: &Requester<'_>) -> bool {
        if who.pull_request == PullRequestOrigin::Fork {
            return false;
        }
        self.0.iter().any(|g| {
            g.secret == secret
                && g.repos.iter().any(|r| matches(r, who.repo))
                && match who.pull_request {
                    PullRequestOrigin::SameRepo => g.pull_requests && g.branches.is_empty(),
                    _ => {
                        g.branches.is_empty()
                            || who
                                .branch
                                .is_some_and(|b| g.branches.iter().any(|p| matches(p, b)))
                    }
                }
        })
    }
}

impl PullRequestOrigin {
    /// The origin of a run's code, from its pull request (if any).
    pub fn of(pull_request: Option<&PullRequest>) -> Self {
        match pull_request {
            None => PullRequestOrigin::None,
            Some(pr) if pr.from_fork => PullRequestOrigin::Fork,
            Some(_) => PullRequestOrigin::SameRepo,
        }
    }
}

impl<'a> Requester<'a> {
    /// Who asks, for a trigger.
    pub fn of(trigger: &'a Trigger) -> Self {
        let pull_request = PullRequestOrigin::of(trigger.pull_request.as_ref());
        Requester {
            repo: &trigger.repo.full_name,
            branch: match pull_request {
                PullRequestOrigin::None => trigger.branch.as_deref(),
                _ => None,
            },
            pull_request,
        }
    }
}

/// Where the values of granted secrets come from: the local backend hands them to the job's
/// environment, and the log masker hides them in every backend's output (the Kubernetes
/// backend itself only references Secrets from the Pod, and ignores the values).
#[async_trait::async_trait]
pub trait SecretValues: Send + Sync + 'static {
    /// The value of `key` in the secret `secret`, if Gantry has it.
    async fn value(&self, secret: &str, key: &str) -> Option<Secret>;
}

/// Secret values from Gantry's own environment: `GANTRY_SECRET_<NAME>` for the key `value`,
/// `GANTRY_SECRET_<NAME>_<KEY>` for other keys (upper case, `-` and `.` as `_`).
#[derive(Clone, Copy, Debug, Default)]
pub struct EnvSecretValues;

impl EnvSecretValues {
    pub fn variable(secret: &str, key: &str) -> String {
        let clean = |s: &str| s.to_uppercase().replace(['-', '.'], "_");
        if key == "value" {
            format!("GANTRY_SECRET_{}", clean(secret))
        } else {
            format!("GANTRY_SECRET_{}_{}", clean(secret), clean(key))
        }
    }
}

#[async_trait::async_trait]
impl SecretValues for EnvSecretValues {
    async fn value(&self, secret: &str, key: &str) -> Option<Secret> {
        std::env::var(Self::variable(secret, key))
            .ok()
            .map(Secret::new)
    }
}

/// The grants and, where the backend needs them, the values: what the engine consults when it
/// starts a job. The default grants nothing: secure until the operator says otherwise.
#[derive(Clone, Default)]
pub struct SecretPolicy {
    pub grants: SecretGrants,
    pub values: Option<Arc<dyn SecretValues>>,
}

impl std::fmt::Debug for SecretPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretPolicy")
            .field("grants", &self.grants)
            .field("values", &self.values.is_some())
            .finish()
    }
}

impl SecretPolicy {
    /// Values, by environment variable, of the secrets `spec` asks for that `trigger` is
    /// granted and that have a value.
    pub async fn values_for(&self, trigger: &Trigger, spec: &JobSpec) -> BTreeMap<String, Secret> {
        let mut out = BTreeMap::new();
        let Some(values) = &self.values else {
            return out;
        };
        let who = Requester::of(trigger);
        for s in spec
            .secrets
            .iter()
            .filter(|s| self.grants.allows(&s.secret, &who))
        {
            if let Some(v) = values.value(&s.secret, &s.key).await {
                out.insert(s.env.clone(), v);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grants() -> SecretGrants {
        SecretGrants(vec![
            SecretGrant {
                secret: "registry".into(),
                repos: vec!["acme/*".into()],
                ..SecretGrant::default()
            },
            SecretGrant {
                secret: "deploy".into(),
                repos: vec!["acme/app".into()],
                branches: vec!["main".into(), "release/*".into()],
                pull_requests: true,
            },
            SecretGrant {
                secret: "pr-token".into(),
                repos: vec!["acme/app".into()],
                pull_requests: true,
                ..SecretGrant::default()
            },
        ])
    }

    fn push(repo: &str, branch: &str) -> Requester<'static> {
        Requester {
            repo: repo.to_owned().leak(),
            branch: Some(branch.to_owned().leak()),
            pull_request: PullRequestOrigin::None,
        }
    }

    #[test]
    fn grants_match_repository_and_branch_globs() {
        let g = grants();
        assert!(g.allows("registry", &push("acme/app", "feature")));
        assert!(!g.allows("registry", &push("other/app", "main")));
        assert!(g.allows("deploy", &push("acme/app", "release/1.2")));
        assert!(!g.allows("deploy", &push("acme/app", "feature")));
        assert!(!g.allows("deploy", &push("acme/lib", "main")));
        assert!(!g.allows("unknown", &push("acme/app", "main")));
    }

    #[test]
    fn pull_requests_get_only_unscoped_grants_meant_for_them_and_forks_get_none() {
        let g = grants();
        let mut pr = push("acme/app", "main");
        pr.pull_request = PullRequestOrigin::SameRepo;
        assert!(g.allows("pr-token", &pr));
        // A branch-scoped grant never matches a pull request, even one whose head is "main".
        assert!(!g.allows("deploy", &pr));
        assert!(!g.allows("registry", &pr));
        pr.pull_request = PullRequestOrigin::Fork;
        assert!(!g.allows("pr-token", &pr));
    }
}
