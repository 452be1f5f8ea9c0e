//! A job as the planner hands it to a backend: concrete, with every variable interpolated and
//! every matrix value filled in. Backends render it (a Pod, child processes) and nothing more.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One job, ready to execute.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// The job's name, with matrix values for an expanded matrix job (`test (rust=1.95, os=linux)`).
    pub name: String,
    /// The container image steps run in (ignored by the local backend).
    pub image: Option<String>,
    /// Environment for every step: pipeline `env`, then job `env`, then `GANTRY_*` variables.
    pub env: BTreeMap<String, String>,
    /// Secrets the job asks for. Only those granted to the repository are given to it.
    pub secrets: Vec<SecretRef>,
    /// Long-running containers next to the steps (a database for tests).
    pub services: Vec<ServiceSpec>,
    pub steps: Vec<StepSpec>,
    /// The whole job's deadline.
    pub timeout: Option<Duration>,
    pub resources: Resources,
    pub node_selector: BTreeMap<String, String>,
    pub tolerations: Vec<Toleration>,
}

/// A Kubernetes Secret key exposed to a job as an environment variable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretRef {
    /// The environment variable the steps see.
    pub env: String,
    /// The Secret's name.
    pub secret: String,
    /// The key within the Secret.
    pub key: String,
}

/// A service container (runs beside the steps for the whole job).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    pub name: String,
    pub image: String,
    pub env: BTreeMap<String, String>,
    /// Overrides the image's entrypoint arguments.
    pub command: Vec<String>,
    pub ports: Vec<u16>,
}

/// Requests (and equal limits) for a job, as Kubernetes quantities.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub cpu: Option<String>,
    pub memory: Option<String>,
    /// Size limit of the job's workspace volume.
    pub ephemeral_storage: Option<String>,
}

/// A Kubernetes toleration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Toleration {
    pub key: Option<String>,
    /// `Exists` or `Equal`.
    pub operator: Option<String>,
    pub value: Option<String>,
    /// `NoSchedule`, `PreferNoSchedule` or `NoExecute`.
    pub effect: Option<String>,
}

/// When a step or job runs, given how the work before it went.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StatusCondition {
    /// Only if everything before it succeeded (the default).
    #[default]
    Success,
    /// Only if something before it failed (notifications, diagnostics).
    Failure,
    /// Whatever happened before (cleanup).
    Always,
}

impl StatusCondition {
    /// Should the work run, given whether anything before it failed?
    pub fn admits(self, failed_before: bool) -> bool {
        match self {
            StatusCondition::Success => !failed_before,
            StatusCondition::Failure => failed_before,
            StatusCondition::Always => true,
        }
    }
}

/// One step of a job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepSpec {
    pub name: String,
    pub kind: StepKind,
    pub timeout: Option<Duration>,
    /// Step-level environment, on top of the job's.
    pub env: BTreeMap<String, String>,
    /// Runs only when this admits what happened to the steps before it.
    pub run_if: StatusCondition,
    /// A failure of this step does not fail the job.
    pub allow_failure: bool,
}

/// What a step does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StepKind {
    /// A shell script, run with `/bin/sh -e -c` in the workspace.
    Run {
        script: String,
    },
    Kaniko(KanikoStep),
    Trivy(TrivyStep),
    Gitops(GitopsStep),
}

impl StepKind {
    pub fn type_name(&self) -> &'static str {
        match self {
            StepKind::Run { .. } => "run",
            StepKind::Kaniko(_) => "kaniko",
            StepKind::Trivy(_) => "trivy",
            StepKind::Gitops(_) => "gitops",
        }
    }
}

/// Build an image from a Dockerfile in the workspace and push it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KanikoStep {
    /// Build context, relative to the workspace (default `.`).
    pub context: String,
    /// Dockerfile, relative to the context (default `Dockerfile`).
    pub dockerfile: String,
    /// Image references to push (at least one).
    pub destinations: Vec<String>,
    pub build_args: BTreeMap<String, String>,
    /// Cache layers in a registry repository.
    pub cache: bool,
    /// Where cached layers go (default: the first destination's repository + `/cache`).
    pub cache_repo: Option<String>,
    pub target: Option<String>,
    /// Secret holding a Docker `config.json` for the registry, mounted at `/kaniko/.docker`.
    pub registry_secret: Option<String>,
}

impl KanikoStep {
    /// The executor's arguments after `--context` and `--dockerfile` (which depend on where
    /// the workspace is): destinations, layer cache, build arguments, target. Both backends use
    /// these, so a step builds the same image wherever it runs.
    pub fn executor_args(&self) -> Vec<String> {
        let mut args: Vec<String> = self
            .destinations
            .iter()
            .map(|d| format!("--destination={d}"))
            .collect();
        if self.cache {
            args.push("--cache=true".into());
            let repo = self
                .cache_repo
                .clone()
                .or_else(|| self.destinations.first().map(|d| cache_repo_for(d)));
            if let Some(repo) = repo {
                args.push(format!("--cache-repo={repo}"));
            }
        }
        args.extend(
            self.build_args
                .iter()
                .map(|(k, v)| format!("--build-arg={k}={v}")),
        );
        if let Some(target) = &self.target {
            args.push(format!("--target={target}"));
        }
        args
    }
}

/// Where a destination's cached layers go by default: its repository plus `/cache`
/// (`registry.example.com/app:1.2` → `registry.example.com/app/cache`).
pub fn cache_repo_for(destination: &str) -> String {
    let without_digest = destination.split('@').next().unwrap_or(destination);
    let name_start = without_digest.rfind('/').map_or(0, |i| i + 1);
    let repo = match without_digest[name_start..].find(':') {
        Some(colon) => &without_digest[..name_start + colon],
        None => without_digest,
    };
    format!("{repo}/cache")
}

/// Vulnerability severities, as Trivy names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Severity {
    Unknown,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Unknown => "UNKNOWN",
            Severity::Low => "LOW",
            Severity::Medium => "MEDIUM",
            Severity::High => "HIGH",
            Severity::Critical => "CRITICAL",
        }
    }
}

/// Scan an image; the step fails when a finding at one of the severities is found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrivyStep {
    pub image: String,
    pub severity: Vec<Severity>,
    pub ignore_unfixed: bool,
    pub registry_secret: Option<String>,
}

/// Bump an image tag in a configuration repository and push the commit.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitopsStep {
    /// The configuration repository's clone URL.
    pub repo: String,
    /// Branch to commit to (default: the repository's default branch).
    pub branch: Option<String>,
    /// Directory of a kustomization (`kustomization.yaml` there gets `images[].newTag`), or a
    /// YAML file when `yaml_path` is given.
    pub path: String,
    /// The image whose tag changes (its name without a tag).
    pub image: String,
    pub tag: String,
    /// A dotted path inside the YAML file at `path` (e.g. `spec.template.image.tag`) instead of a
    /// kustomization.
    pub yaml_path: Option<String>,
    /// Commit message; by default it names the image, tag and the run.
    pub message: Option<String>,
    /// Secret holding the token used to push.
    pub token_secret: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_repositories_default_next_to_the_image() {
        assert_eq!(
            cache_repo_for("registry.example.com:5000/acme/app:abc"),
            "registry.example.com:5000/acme/app/cache"
        );
        assert_eq!(cache_repo_for("app@sha256:1"), "app/cache");
        assert_eq!(cache_repo_for("app"), "app/cache");
    }

    #[test]
    fn kaniko_and_trivy_arguments_follow_the_step() {
        let kaniko = KanikoStep {
            destinations: vec!["r.example/app:1".into()],
            cache: true,
            build_args: BTreeMap::from([("V".into(), "1".into())]),
            target: Some("prod".into()),
            ..KanikoStep::default()
        };
        assert_eq!(
            kaniko.executor_args(),
            [
                "--destination=r.example/app:1",
                "--cache=true",
                "--cache-repo=r.example/app/cache",
                "--build-arg=V=1",
                "--target=prod"
            ]
        );
    }
}
