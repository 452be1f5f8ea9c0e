//! A job attempt → one Pod (ARCHITECTURE.md §4). Pure: the same request and configuration give
//! the same Pod, byte for byte, which `gantry render` prints and the golden tests pin.
//!
//! Layout of a pod:
//! - init container `clone`: exactly the commit, depth 1, into the `workspace` `emptyDir`;
//! - services: native sidecars (`restartPolicy: Always` init containers) named `svc-<name>`;
//! - steps `step-0` … in order as init containers, the last one as the pod's only container.
//!   Each container's exit code is its step's result. In a job where some step runs after a
//!   failure (`when: status`, `allow_failure`), shell steps are wrapped in a small guard that
//!   records a failure in the `gantry-state` volume and reports the real exit code in the
//!   termination message, so the pod keeps going (see [`scripts::guard`]).

pub(crate) mod scripts;
mod steps;

use std::collections::BTreeMap;

use gantry_core::{JobRequest, StatusCondition};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource, LocalObjectReference, Pod,
    PodSecurityContext, PodSpec, ResourceRequirements, SeccompProfile, SecretKeySelector,
    SecurityContext, Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::config::{KubeConfig, SecurityLevel};
use crate::names;
use gantry_engine::{PullRequestOrigin, Requester};

pub use gantry_core::cache_repo_for;

/// Why a job cannot become a Pod.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("step {step} ({name:?}): {why}")]
    Step {
        step: usize,
        name: String,
        why: String,
    },
}

/// What is rendered besides the request itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenderOptions {
    /// Where the code comes from (secrets are decided on it).
    pub origin: PullRequestOrigin,
    /// The clone reads `GIT_USERNAME`/`GIT_PASSWORD` from the per-job Secret
    /// ([`names::clone_secret`]), which is created right after the Pod and owned by it.
    pub clone_credentials: bool,
}

/// A rendered job.
#[derive(Clone, Debug)]
pub struct Rendered {
    pub pod: Pod,
    /// Secrets the job asked for that were left out, with why; the job's log says so.
    pub notices: Vec<String>,
}

/// Where the code of a request comes from, as far as the request tells. A request carries no
/// fork flag, so every pull request counts as one from a fork (no secrets) unless the caller
/// knows better and says so in [`RenderOptions::origin`].
pub fn origin_of(job: &JobRequest) -> PullRequestOrigin {
    if job.pull_request.is_some() {
        return PullRequestOrigin::of(job.pull_request.as_ref());
    }
    // Without the pull request's details, a pull request counts as a fork: no secrets.
    let event = job.spec.env.get("GANTRY_EVENT").map(String::as_str);
    let r = &job.checkout.git_ref;
    if event == Some("pull_request")
        || r.starts_with("refs/pull/")
        || r.starts_with("refs/merge-requests/")
    {
        PullRequestOrigin::Fork
    } else {
        PullRequestOrigin::None
    }
}

/// Context shared by the containers of one pod.
pub(crate) struct Ctx<'a> {
    pub job: &'a JobRequest,
    pub config: &'a KubeConfig,
    pub security: SecurityLevel,
    pub requester: Requester<'a>,
    pub notices: Vec<String>,
    pub volumes: Vec<Volume>,
    /// Steps are wrapped in guards (some step runs after a failure).
    pub guarded: bool,
}

impl Ctx<'_> {
    /// May the job read this Secret? Records a notice when not.
    pub fn granted(&mut self, secret: &str, what: &str) -> bool {
        let ok = self.config.grants.allows(secret, &self.requester);
        if !ok {
            let why = match self.requester.pull_request {
                PullRequestOrigin::Fork => "pull requests from forks get no secrets".to_owned(),
                _ => format!(
                    "it is not granted to {}{}",
                    self.requester.repo,
                    self.requester
                        .branch
                        .map(|b| format!(" on branch {b}"))
                        .unwrap_or_default()
                ),
            };
            self.notices
                .push(format!("secret {secret:?} ({what}) left out: {why}"));
        }
        ok
    }

    pub fn security_context(&self, add: &[&str]) -> SecurityContext {
        let add: Vec<String> = match self.security {
            SecurityLevel::Restricted => Vec::new(),
            SecurityLevel::Baseline => add.iter().map(|c| (*c).to_owned()).collect(),
        };
        SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: (!add.is_empty()).then_some(add),
            }),
            ..SecurityContext::default()
        }
    }

    /// Capabilities of `run` steps and services.
    pub fn run_caps(&self) -> Vec<&str> {
        self.config
            .run_capabilities
            .iter()
            .map(String::as_str)
            .collect()
    }
}

pub(crate) fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.into()),
        value_from: None,
    }
}

pub(crate) fn secret_env(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.to_owned(),
                key: key.to_owned(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
    }
}

pub(crate) fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.to_owned(),
        mount_path: path.to_owned(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    }
}

fn quantity(q: &Option<String>) -> Option<Quantity> {
    q.as_ref().map(|q| Quantity(q.clone()))
}

/// Renders one job attempt into its Pod.
pub fn render(
    job: &JobRequest,
    config: &KubeConfig,
    options: &RenderOptions,
) -> Result<Rendered, RenderError> {
    let spec = &job.spec;
    let repo = job.checkout.repo.full_name.as_str();
    let security = config.security_for(repo);
    let guarded = spec
        .steps
        .iter()
        .any(|s| s.allow_failure || s.run_if != StatusCondition::Success);
    let mut ctx = Ctx {
        job,
        config,
        security,
        requester: Requester {
            repo,
            branch: job.checkout.git_ref.strip_prefix("refs/heads/"),
            pull_request: options.origin,
        },
        notices: Vec::new(),
        volumes: Vec::new(),
        guarded,
    };
    let name = names::pod_name(job.job_id, job.attempt);

    // Environment every step sees: the job's (GANTRY_* and pipeline env), then markers, then
    // granted secrets.
    let mut job_env: Vec<EnvVar> = spec.env.iter().map(|(k, v)| env(k, v.clone())).collect();
    for (k, v) in [
        ("CI", "true"),
        ("GANTRY", "true"),
        ("GANTRY_WORKSPACE", scripts::WORKSPACE),
    ]
    .into_iter()
    .chain(SAFE_WORKSPACE)
    {
        job_env.retain(|e| e.name != k);
        job_env.push(env(k, v));
    }
    for s in &spec.secrets {
        if ctx.granted(&s.secret, &format!("for ${}", s.env)) {
            job_env.retain(|e| e.name != s.env);
            job_env.push(secret_env(&s.env, &s.secret, &s.key));
        }
    }

    let size = spec
        .resources
        .ephemeral_storage
        .clone()
        .unwrap_or_else(|| config.workspace_size.clone());
    ctx.volumes.push(Volume {
        name: "workspace".into(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: Some(Quantity(size)),
            medium: None,
        }),
        ..Volume::default()
    });
    if guarded {
        ctx.volumes.push(Volume {
            name: "gantry-state".into(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: Some(Quantity("1Mi".into())),
                medium: Some("Memory".into()),
            }),
            ..Volume::default()
        });
    }

    let mut init = vec![clone_container(&ctx, &name, options.clone_credentials)];
    for service in &spec.services {
        init.push(steps::service(&ctx, service));
    }
    let resources = {
        let mut limits = BTreeMap::new();
        if let Some(cpu) = quantity(&spec.resources.cpu) {
            limits.insert("cpu".to_owned(), cpu);
        }
        if let Some(memory) = quantity(&spec.resources.memory) {
            limits.insert("memory".to_owned(), memory);
        }
        (!limits.is_empty()).then(|| ResourceRequirements {
            requests: Some(limits.clone()),
            limits: Some(limits),
            ..ResourceRequirements::default()
        })
    };
    let mut step_containers = Vec::with_capacity(spec.steps.len());
    for (index, step) in spec.steps.iter().enumerate() {
        let keep_going = spec.steps[index + 1..]
            .iter()
            .any(|later| later.run_if != StatusCondition::Success);
        let mut c = steps::step(&mut ctx, index, step, keep_going, &job_env)?;
        c.resources = resources.clone();
        step_containers.push(c);
    }
    let mut main = step_containers.pop().unwrap_or_else(|| Container {
        name: "step-none".into(),
        image: Some(config.images.clone.clone()),
        command: Some(vec!["/bin/true".into()]),
        security_context: Some(ctx.security_context(&[])),
        ..Container::default()
    });
    init.extend(step_containers);

    let mut node_selector = config.node_selector.clone();
    if let Some(policy) = config.repos.get(repo) {
        node_selector.extend(policy.node_selector.clone());
    }
    node_selector.extend(spec.node_selector.clone());
    // The configuration's first (a dedicated CI node pool), then the job's own.
    let mut tolerations: Vec<Toleration> = Vec::new();
    for t in config.tolerations.iter().chain(&spec.tolerations) {
        let t = Toleration {
            key: t.key.clone(),
            operator: t.operator.clone(),
            value: t.value.clone(),
            effect: t.effect.clone(),
            toleration_seconds: None,
        };
        if !tolerations.contains(&t) {
            tolerations.push(t);
        }
    }
    for c in init.iter_mut().chain(std::iter::once(&mut main)) {
        if let Some(image) = &mut c.image {
            *image = crate::images::rewrite(image, &config.image_mirrors);
        }
    }
    let restricted = security == SecurityLevel::Restricted;
    let uid = config.restricted_uid;
    let pod_security = PodSecurityContext {
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        }),
        run_as_non_root: restricted.then_some(true),
        run_as_user: restricted.then_some(uid),
        run_as_group: restricted.then_some(uid),
        fs_group: restricted.then_some(uid),
        ..PodSecurityContext::default()
    };
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(config.namespace.clone()),
            labels: Some(names::labels(job)),
            annotations: Some(names::annotations(job)),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            restart_policy: Some("Never".into()),
            active_deadline_seconds: spec.timeout.map(|t| t.as_secs().max(1) as i64),
            automount_service_account_token: Some(false),
            service_account_name: config.service_account.clone(),
            enable_service_links: Some(false),
            security_context: Some(pod_security),
            node_selector: (!node_selector.is_empty()).then_some(node_selector),
            tolerations: (!tolerations.is_empty()).then_some(tolerations),
            image_pull_secrets: (!config.image_pull_secrets.is_empty()).then(|| {
                config
                    .image_pull_secrets
                    .iter()
                    .map(|s| LocalObjectReference { name: s.clone() })
                    .collect()
            }),
            init_containers: Some(init),
            containers: vec![main],
            volumes: Some(std::mem::take(&mut ctx.volumes)),
            ..PodSpec::default()
        }),
        status: None,
    };
    Ok(Rendered {
        pod,
        notices: ctx.notices,
    })
}

/// The workspace `emptyDir` belongs to root while steps (and the clone, under `restricted`)
/// may run as another user; git then refuses the checkout ("detected dubious ownership in
/// repository at '/workspace'", found on the real node). Marked safe through git's
/// environment configuration, which counts as command-line scope (the only scopes git reads
/// `safe.directory` from besides the system and global files).
const SAFE_WORKSPACE: [(&str, &str); 3] = [
    ("GIT_CONFIG_COUNT", "1"),
    ("GIT_CONFIG_KEY_0", "safe.directory"),
    ("GIT_CONFIG_VALUE_0", scripts::WORKSPACE),
];

fn clone_container(ctx: &Ctx<'_>, pod: &str, credentials: bool) -> Container {
    let job = ctx.job;
    let mut env_vars = vec![
        env("GANTRY_REPO_URL", job.checkout.repo.clone_url.clone()),
        env("GANTRY_COMMIT_SHA", job.checkout.sha.clone()),
        env("GIT_TERMINAL_PROMPT", "0"),
        env("HOME", "/tmp"),
    ];
    env_vars.extend(SAFE_WORKSPACE.iter().map(|(k, v)| env(k, *v)));
    if credentials {
        let secret = names::clone_secret(pod);
        env_vars.push(secret_env("GIT_USERNAME", &secret, "username"));
        env_vars.push(secret_env("GIT_PASSWORD", &secret, "password"));
    }
    Container {
        name: names::CLONE.into(),
        image: Some(ctx.config.images.clone.clone()),
        command: Some(vec!["/bin/sh".into(), "-c".into(), scripts::CLONE.into()]),
        env: Some(env_vars),
        volume_mounts: Some(vec![mount("workspace", scripts::WORKSPACE, false)]),
        security_context: Some(ctx.security_context(&[])),
        // A failed clone's last lines (git's own reason: authentication, no such commit)
        // become its termination message, which the job's error and log carry.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Container::default()
    }
}

/// The YAML of a Pod, as `gantry render` prints it (via JSON: the Kubernetes types serialise
/// with their API field names and omit what is unset).
pub fn to_yaml(pod: &Pod) -> String {
    let value = serde_json::to_value(pod).expect("a Pod always serialises");
    serde_saphyr::to_string(&value).expect("JSON values always serialise as YAML")
}

/// The text `gantry render` prints: one YAML document per job that would get a Pod, each
/// headed by comments naming the job and what was left out; skipped jobs as comments only.
#[derive(Debug, Default)]
pub struct Manifest {
    text: String,
}

impl Manifest {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the Pod of a job.
    pub fn job(&mut self, name: &str, rendered: &Rendered) {
        self.text.push_str("---\n");
        self.text.push_str(&format!("# job: {name}\n"));
        for notice in &rendered.notices {
            self.text.push_str(&format!("# note: {notice}\n"));
        }
        self.text.push_str(&to_yaml(&rendered.pod));
        if !self.text.ends_with('\n') {
            self.text.push('\n');
        }
    }

    /// Notes a job that gets no Pod in this run.
    pub fn skipped(&mut self, name: &str, reason: &str) {
        self.text
            .push_str(&format!("# job {name:?} is skipped: {reason}\n"));
    }

    pub fn into_string(self) -> String {
        self.text
    }
}
