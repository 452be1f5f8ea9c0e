//! The optional TOML configuration file of `gantry serve`. Flags and `GANTRY_*` environment
//! variables override what it says.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use gantry_core::ForgeKind;
use serde::Deserialize;

/// How pipeline files are read at a commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ReadFiles {
    /// The forge's API (needs a token).
    Api,
    /// A shallow git fetch of the commit from the clone URL.
    Git,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub database_url: Option<String>,
    pub public_url: Option<String>,
    pub api_token: Option<String>,
    pub max_running_jobs: Option<usize>,
    pub max_running_per_repo: Option<usize>,
    /// A duration as pipelines write it (`90m`, `1h`).
    pub default_job_timeout: Option<String>,
    pub max_job_timeout: Option<String>,
    pub github: Option<ForgeFile>,
    pub gitlab: Option<ForgeFile>,
    pub gitea: Option<ForgeFile>,
    #[serde(default)]
    pub repositories: Vec<RepositoryFile>,
    /// Where jobs run.
    pub backend: Option<BackendChoice>,
    /// `[kubernetes]`: the Kubernetes backend (namespace, images, security, timings, …).
    pub kubernetes: Option<gantry_kube::KubeConfig>,
    /// `[[grants]]`: which secrets which repositories (and branches) may use. Nothing is granted
    /// unless listed here.
    #[serde(default)]
    pub grants: Vec<gantry_engine::SecretGrant>,
}

/// Where jobs run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum BackendChoice {
    /// Kubernetes when a kubeconfig or in-cluster configuration is found, else local.
    Auto,
    /// Each job an ephemeral Pod.
    Kubernetes,
    /// Each job as child processes on this machine (no isolation).
    Local,
}

/// `[github]`, `[gitlab]`, `[gitea]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForgeFile {
    /// Several are accepted at once, so a secret can be rotated.
    #[serde(
        default,
        alias = "webhook_secret",
        alias = "webhook_token",
        deserialize_with = "one_or_many"
    )]
    pub webhook_secrets: Vec<String>,
    /// The API (GitHub) or instance (GitLab, Gitea) URL.
    pub url: Option<String>,
    pub token: Option<String>,
    pub app_id: Option<u64>,
    pub app_private_key_file: Option<PathBuf>,
    pub read_files: Option<ReadFiles>,
}

/// `[[repositories]]`: per-repository (or per-owner) settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepositoryFile {
    /// `owner/name`, or `owner` for all of an owner's repositories.
    pub name: String,
    pub forge: ForgeKind,
    /// Webhook secrets valid only for this repository or owner.
    #[serde(default, alias = "webhook_secret", deserialize_with = "one_or_many")]
    pub webhook_secrets: Vec<String>,
    /// Cancel a branch's older runs when it is pushed again.
    pub cancel_superseded: Option<bool>,
    /// …also on the default branch.
    pub cancel_superseded_default_branch: Option<bool>,
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

impl FileConfig {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the configuration file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("invalid configuration file {}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Self> {
        Ok(toml::from_str(text)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_file_parses() {
        let config = FileConfig::parse(
            r#"
listen = "127.0.0.1:9000"
max_running_jobs = 3
default_job_timeout = "90m"
max_job_timeout = "12h"
[github]
webhook_secrets = ["old", "new"]
token = "t"
read_files = "git"
[gitlab]
webhook_token = "one"
url = "https://gitlab.example.com"
[[repositories]]
name = "acme/app"
forge = "github"
webhook_secret = "scoped"
cancel_superseded = false
[[grants]]
secret = "deploy-token"
repos = ["acme/app"]
branches = ["main"]
[kubernetes]
namespace = "builds"
"#,
        )
        .unwrap();
        assert_eq!(config.max_running_jobs, Some(3));
        assert_eq!(config.default_job_timeout.as_deref(), Some("90m"));
        assert_eq!(config.max_job_timeout.as_deref(), Some("12h"));
        let github = config.github.unwrap();
        assert_eq!(github.webhook_secrets, ["old", "new"]);
        assert_eq!(github.read_files, Some(ReadFiles::Git));
        assert_eq!(config.gitlab.unwrap().webhook_secrets, ["one"]);
        assert_eq!(config.repositories[0].webhook_secrets, ["scoped"]);
        assert_eq!(config.grants[0].secret, "deploy-token");
        assert_eq!(config.grants[0].branches, ["main"]);
        assert_eq!(config.kubernetes.unwrap().namespace, "builds");
    }

    #[test]
    fn unknown_keys_are_refused_with_their_position() {
        let err = FileConfig::parse("[github]\nwebhok_secret = \"x\"\n").unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("webhok_secret"), "{text}");
        assert!(text.contains("line 2"), "{text}");
    }
}
