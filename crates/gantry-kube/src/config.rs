//! What the Kubernetes backend is configured with. Every field has a default that works in a
//! namespace labelled `pod-security.kubernetes.io/enforce: baseline`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use gantry_core::Toleration;
use gantry_engine::SecretGrants;

/// Container images Gantry itself puts into pods. All configurable: pin them to digests in
/// production, or point them at a mirror.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Images {
    /// Runs `git` (with `/bin/sh`) for the `clone` init container.
    pub clone: String,
    /// The Kaniko executor. Kaniko is archived upstream (GoogleContainerTools/kaniko, 2025);
    /// the default is the community-maintained fork `osscontainertools/kaniko`.
    pub kaniko: String,
    /// Trivy (its image has `/bin/sh`, which `allow_failure`/`when: status` steps need).
    pub trivy: String,
    /// The gitops helper: `/bin/sh`, `git` and `yq` (mikefarah). `gitops/Dockerfile` in this
    /// crate builds it; any image with those three tools works.
    pub gitops: String,
    /// For jobs that name no `image`.
    pub default_job: String,
}

impl Default for Images {
    fn default() -> Self {
        Self {
            clone: "docker.io/alpine/git:2.49.1".into(),
            kaniko: "ghcr.io/osscontainertools/kaniko:v1.26.0".into(),
            trivy: "docker.io/aquasec/trivy:0.63.0".into(),
            gitops: "ghcr.io/gantry-ci/gitops-helper:0.1.0".into(),
            default_job: "docker.io/library/alpine:3.22".into(),
        }
    }
}

/// One rewriting rule of [`KubeConfig::image_mirrors`]: a reference whose normalised form
/// (`docker.io/library/alpine:3.22` for `alpine:3.22`) starts with `from` gets `to` instead of
/// that prefix. End both with `/` to match whole path components.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageMirror {
    pub from: String,
    pub to: String,
}

/// How strictly a repository's pods are confined, as the Pod Security Standards name it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityLevel {
    /// Passes `baseline`: no privilege escalation, seccomp `RuntimeDefault`, every capability
    /// dropped except the few a step kind needs (all of them in the baseline allow-list).
    #[default]
    Baseline,
    /// Passes `restricted`: also non-root (`runAsNonRoot`, uid/gid below), `ALL` dropped with
    /// nothing added. Kaniko needs root, so `kaniko` steps are refused in such repositories.
    Restricted,
}

/// Per-repository overrides, by `full_name`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RepoPolicy {
    pub security: Option<SecurityLevel>,
    /// Node selector entries added to the job's own.
    pub node_selector: BTreeMap<String, String>,
}

/// Timings of the watcher, the sweeper and the API retries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Timings {
    /// How long an image pull error, a container config error (a missing Secret) or an
    /// unschedulable pod may last before the job ends as `error`. Kubernetes retries these
    /// itself; many clear up (a Secret created a moment later, a node scaling up). An
    /// unschedulable pod the cluster autoscaler is scaling up for (`TriggeredScaleUp`) waits
    /// beyond it, until the job's timeout; one it will not scale up for (`NotTriggerScaleUp`)
    /// ends at once.
    #[serde(with = "secs")]
    pub stuck_grace: Duration,
    /// `gracePeriodSeconds` when a cancel deletes a pod.
    #[serde(with = "secs")]
    pub cancel_grace: Duration,
    /// How long finished pods are kept (for `kubectl describe`) before the sweeper deletes them.
    #[serde(with = "secs")]
    pub retention: Duration,
    /// How often the sweeper looks at the watcher's cache (no API request unless it deletes).
    #[serde(with = "secs")]
    pub sweep_every: Duration,
    /// An orphan (a labelled pod the store does not know) must be at least this old before it
    /// is deleted, so a pod created a moment before its job was recorded is never swept.
    #[serde(with = "secs")]
    pub orphan_min_age: Duration,
    /// First retry delay of a failed API request; doubles up to `max_backoff`.
    #[serde(with = "secs")]
    pub backoff: Duration,
    #[serde(with = "secs")]
    pub max_backoff: Duration,
    /// Tries of one API request before the error is reported.
    pub max_attempts: u32,
    /// How long one API request may take before it counts as timed out (a create that timed
    /// out is looked up by name before it is tried again).
    #[serde(with = "secs")]
    pub request_timeout: Duration,
    /// How long a step's log may keep arriving after its container ended.
    #[serde(with = "secs")]
    pub log_drain: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Self {
            stuck_grace: Duration::from_secs(120),
            cancel_grace: Duration::from_secs(10),
            retention: Duration::from_secs(3600),
            sweep_every: Duration::from_secs(60),
            orphan_min_age: Duration::from_secs(600),
            backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            max_attempts: 8,
            request_timeout: Duration::from_secs(30),
            log_drain: Duration::from_secs(10),
        }
    }
}

mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom)
    }
}

/// The Kubernetes backend's configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KubeConfig {
    /// The build namespace: pods and per-job Secrets are created here, and nowhere else.
    pub namespace: String,
    pub images: Images,
    /// `sizeLimit` of the workspace `emptyDir` when the job sets no `ephemeral_storage`.
    pub workspace_size: String,
    /// Image pull secrets for every pod (names of Secrets in the build namespace).
    pub image_pull_secrets: Vec<String>,
    /// The service account pods run as (its token is never mounted). `None`: the namespace's
    /// `default`.
    pub service_account: Option<String>,
    /// Node selector entries for every pod, under the job's own.
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations for every pod, before the job's own (a dedicated, tainted CI node pool).
    pub tolerations: Vec<Toleration>,
    /// Image references rewritten for a mirror (an air-gapped cluster), in every container of
    /// every pod: the first rule whose `from` is a prefix of the normalised reference wins
    /// (see [`crate::images`]).
    pub image_mirrors: Vec<ImageMirror>,
    /// Where `trivy` steps fetch the vulnerability database from: an OCI repository such as
    /// `registry.internal/aquasec/trivy-db:2`, for a cluster that cannot reach Trivy's default
    /// (`mirror.gcr.io/aquasec/trivy-db`). Mirror it with `oras copy` or `skopeo copy`.
    pub trivy_db_repository: Option<String>,
    /// The GitOps agents that deploy from configuration repositories: after a `gitops` step
    /// pushes to one of them, Gantry tells its agent at once (see [`crate::agents`]).
    pub gitops_agents: Vec<crate::agents::GitopsAgent>,
    pub security: SecurityLevel,
    /// uid and gid of every container under [`SecurityLevel::Restricted`].
    pub restricted_uid: i64,
    pub repos: BTreeMap<String, RepoPolicy>,
    /// Which Secrets each repository (and branch) may read.
    pub grants: SecretGrants,
    /// Capabilities `run` steps and services keep (all in the Pod Security baseline allow-list):
    /// enough for `apt-get`, `chown` and dropping to another user inside common images.
    pub run_capabilities: Vec<String>,
    pub timings: Timings,
    /// Annotations put on every pod (Gantry's own `gantry.dev/job-name`, `repo`, `ref` and
    /// `sha` win over them). Not read from the configuration file: for code that embeds the
    /// backend. The cluster tests set kwok's `gantry.dev/exit-codes`, `durations-ms` and `logs`
    /// here to play each container (docs/testing.md).
    #[serde(skip)]
    pub pod_annotations: BTreeMap<String, String>,
}

impl Default for KubeConfig {
    fn default() -> Self {
        Self {
            namespace: "gantry-builds".into(),
            images: Images::default(),
            workspace_size: "10Gi".into(),
            image_pull_secrets: Vec::new(),
            service_account: None,
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            image_mirrors: Vec::new(),
            trivy_db_repository: None,
            gitops_agents: Vec::new(),
            security: SecurityLevel::Baseline,
            restricted_uid: 1000,
            repos: BTreeMap::new(),
            grants: SecretGrants::default(),
            run_capabilities: [
                "CHOWN",
                "DAC_OVERRIDE",
                "FOWNER",
                "FSETID",
                "SETGID",
                "SETUID",
            ]
            .map(String::from)
            .to_vec(),
            timings: Timings::default(),
            pod_annotations: BTreeMap::new(),
        }
    }
}

impl KubeConfig {
    /// The security level of a repository's pods.
    pub fn security_for(&self, repo: &str) -> SecurityLevel {
        self.repos
            .get(repo)
            .and_then(|p| p.security)
            .unwrap_or(self.security)
    }
}
