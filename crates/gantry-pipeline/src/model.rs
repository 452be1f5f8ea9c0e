//! The pipeline file as written: serde types that mirror the YAML one to one. Their doc comments
//! are the descriptions in the JSON Schema, so they are written for pipeline authors.
//!
//! Only the shape is checked here (unknown keys, types, enum values); everything that needs more
//! than one value at a time is checked in `validate`.

use std::fmt;

use schemars::JsonSchema;
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

use crate::spanned::{OneOrMany, Scalar, Sp, SpMap, null_as_default};

/// Glob patterns: one, or a list.
pub(crate) type Patterns = Sp<OneOrMany<String>>;
/// Environment variables: names to values. Values may use `${VARIABLES}`.
pub(crate) type Env = SpMap<Sp<Scalar>>;

/// A Gantry pipeline: which events start it (`on`), and the jobs it runs (`jobs`).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, expecting = "a pipeline (a mapping with `jobs`)")]
#[schemars(title = "Gantry pipeline")]
#[schemars(rename = "Pipeline")]
pub(crate) struct PipelineFile {
    /// The pipeline's name, shown in the web viewer and in commit statuses. Default: the file
    /// name without its extension (`.gantry/release.yaml` is `release`).
    pub name: Option<Sp<String>>,
    /// Which events start the pipeline. Without `on`, a push to any branch and a manual run do.
    pub on: Option<Sp<On>>,
    /// Environment variables for every step of every job. Values may use `${VARIABLES}`.
    #[serde(default)]
    pub env: Env,
    /// The jobs, by name. Jobs run in parallel unless `needs` orders them.
    pub jobs: Option<Sp<SpMap<Sp<JobDef>>>>,
}

/// Events that start the pipeline. An event not listed does not start it.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping of events (`push`, `pull_request`, `tag`, `manual`)"
)]
pub(crate) struct On {
    /// A push to a branch (and, with `tags`, a pushed tag).
    #[serde(default, deserialize_with = "null_as_default")]
    pub push: Option<PushOn>,
    /// A pull request opened or updated.
    #[serde(default, deserialize_with = "null_as_default")]
    pub pull_request: Option<PullRequestOn>,
    /// A pushed tag.
    #[serde(default, deserialize_with = "null_as_default")]
    pub tag: Option<TagOn>,
    /// A run started by hand (web viewer, API, `gantry run`).
    #[serde(default, deserialize_with = "null_as_default")]
    pub manual: Option<ManualOn>,
}

/// Push filters. Without `branches` and `tags`, a push to any branch matches.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "push filters (`branches`, `tags`, `paths`, `paths_ignore`)"
)]
#[schemars(rename = "PushFilters")]
pub(crate) struct PushOn {
    /// Branch globs (`main`, `release/*`). `*` stops at `/`, `**` does not.
    pub branches: Option<Patterns>,
    /// Tag globs (`v*`): a pushed tag that matches starts the pipeline too. With `tags` and
    /// without `branches`, branch pushes do not match.
    pub tags: Option<Patterns>,
    /// Path globs: a push matches only if it changed a file that matches one.
    pub paths: Option<Patterns>,
    /// Path globs: a push matches only if it changed a file that matches none of them.
    pub paths_ignore: Option<Patterns>,
}

/// Pull request filters.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "pull request filters (`branches`, `paths`, `paths_ignore`)"
)]
#[schemars(rename = "PullRequestFilters")]
pub(crate) struct PullRequestOn {
    /// Globs of the branch the pull request targets (its base).
    pub branches: Option<Patterns>,
    /// Path globs: the pull request must change a file that matches one.
    pub paths: Option<Patterns>,
    /// Path globs: the pull request must change a file that matches none of them.
    pub paths_ignore: Option<Patterns>,
}

/// Tag filters. Without `tags`, any pushed tag matches.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, expecting = "tag filters (`tags`)")]
#[schemars(rename = "TagFilters")]
pub(crate) struct TagOn {
    /// Tag globs (`v*`).
    pub tags: Option<Patterns>,
}

/// Manual runs have no filters: write `manual: {}`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, expecting = "`{}` (manual runs take no options)")]
#[schemars(rename = "Manual")]
pub(crate) struct ManualOn {}

/// One job: a container (`image`) in which `steps` run in order. Each job runs in its own Pod.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "a job (a mapping with `steps` and keys like `image`)"
)]
#[schemars(rename = "Job")]
pub(crate) struct JobDef {
    /// The container image the steps run in (`rust:1.95`). May use `${VARIABLES}`.
    pub image: Option<Sp<String>>,
    /// Jobs that must finish before this one starts: a name or a list of names. Needing a matrix
    /// job means needing all of its expansions.
    pub needs: Option<Sp<OneOrMany<String>>>,
    /// Run the job once per combination of values: axes are lists; `include` adds combinations,
    /// `exclude` removes them.
    pub matrix: Option<Sp<Matrix>>,
    /// Containers that run beside the steps for the whole job (a database), by name. Steps reach
    /// them on `localhost`.
    #[serde(default)]
    pub services: SpMap<Sp<ServiceDef>>,
    /// Environment variables for every step of this job, on top of the pipeline's `env`.
    #[serde(default)]
    pub env: Env,
    /// Kubernetes Secrets exposed as environment variables. A name (`config-repo-token`: env
    /// `CONFIG_REPO_TOKEN`, key `value`) or `{secret, key, env}`.
    #[serde(default)]
    pub secrets: Vec<Sp<SecretDef>>,
    /// CPU, memory and workspace size, as Kubernetes quantities.
    pub resources: Option<Sp<ResourcesDef>>,
    /// The whole job's deadline: `90s`, `20m`, `1h30m`.
    pub timeout: Option<Sp<String>>,
    /// How often to retry a failed job (0 to 10). Default 0.
    pub retry: Option<Sp<u32>>,
    /// A failure of this job does not fail the run.
    #[serde(default)]
    pub allow_failure: bool,
    /// Kubernetes node labels the job's Pod must run on.
    #[serde(default)]
    pub node_selector: SpMap<Sp<Scalar>>,
    /// Kubernetes tolerations for the job's Pod.
    #[serde(default)]
    pub tolerations: Vec<Sp<TolerationDef>>,
    /// Conditions for running the job. `branch`, `tag`, `event` and `paths` decide whether it
    /// runs at all; `status` decides given how the jobs it needs went.
    pub when: Option<Sp<When>>,
    /// What the job does, in order. At least one.
    pub steps: Option<Sp<Vec<Sp<StepDef>>>>,
}

/// The values of one matrix axis.
pub(crate) type Axis = Sp<Vec<Sp<Scalar>>>;

/// A matrix: axes (`rust: ["1.94", "1.95"]`) plus optional `include` and `exclude` lists.
#[derive(Clone, Debug, Default)]
pub(crate) struct Matrix {
    pub axes: Vec<(Sp<String>, Axis)>,
    pub include: Vec<Sp<SpMap<Sp<Scalar>>>>,
    pub exclude: Vec<Sp<SpMap<Sp<Scalar>>>>,
}

impl<'de> Deserialize<'de> for Matrix {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Matrix;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a matrix (axes mapped to lists of values, `include`, `exclude`)")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Matrix, A::Error> {
                let mut m = Matrix::default();
                while let Some(key) = map.next_key::<Sp<String>>()? {
                    match key.value.as_str() {
                        "include" => m.include = map.next_value()?,
                        "exclude" => m.exclude = map.next_value()?,
                        _ => {
                            let values = map.next_value()?;
                            m.axes.push((key, values));
                        }
                    }
                }
                Ok(m)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Matrix, E> {
                Ok(Matrix::default())
            }
        }
        d.deserialize_map(V)
    }
}

impl JsonSchema for Matrix {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Matrix".into()
    }
    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let scalar = generator.subschema_for::<Scalar>();
        schemars::json_schema!({
            "description": "A matrix: every other key is an axis, a list of values; the job runs once per combination. `${matrix.KEY}` reads a value.",
            "type": "object",
            "properties": {
                "include": {
                    "description": "Extra combinations, each a mapping of keys to values (keys may be new).",
                    "type": "array",
                    "items": { "type": "object", "additionalProperties": scalar }
                },
                "exclude": {
                    "description": "Combinations to leave out: each removes every combination that has all of its values.",
                    "type": "array",
                    "items": { "type": "object", "additionalProperties": scalar }
                }
            },
            "additionalProperties": { "type": "array", "items": scalar }
        })
    }
}

/// A service container.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, expecting = "a service (a mapping with `image`)")]
#[schemars(rename = "Service")]
pub(crate) struct ServiceDef {
    /// The service's image (`postgres:16`). May use `${VARIABLES}`.
    pub image: Option<Sp<String>>,
    /// Its environment. Values may use `${VARIABLES}`.
    #[serde(default)]
    pub env: Env,
    /// Arguments that replace the image's command.
    #[serde(default)]
    pub command: Vec<Scalar>,
    /// Ports the service listens on (informational; steps reach it on `localhost`).
    #[serde(default)]
    pub ports: Vec<Sp<u16>>,
}

/// A Secret for a job: a secret name (shorthand) or a mapping.
#[derive(Clone, Debug)]
pub(crate) enum SecretDef {
    /// `config-repo-token`: env `CONFIG_REPO_TOKEN`, secret `config-repo-token`, key `value`.
    Name(String),
    Full(SecretFull),
}

/// A Secret key exposed as an environment variable.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, expecting = "a secret (`{secret, key, env}`)")]
#[schemars(rename = "SecretMapping")]
pub(crate) struct SecretFull {
    /// The Kubernetes Secret's name.
    pub secret: Sp<String>,
    /// The key inside the Secret. Default `value`.
    pub key: Option<Sp<String>>,
    /// The environment variable. Default: the secret's name in upper case with `-` and `.` as `_`.
    pub env: Option<Sp<String>>,
}

impl<'de> Deserialize<'de> for SecretDef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = SecretDef;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a secret name or a mapping `{secret, key, env}`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<SecretDef, E> {
                Ok(SecretDef::Name(v.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<SecretDef, A::Error> {
                SecretFull::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(SecretDef::Full)
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for SecretDef {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Secret".into()
    }
    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let full = generator.subschema_for::<SecretFull>();
        schemars::json_schema!({
            "description": "A secret name (`config-repo-token` gives env `CONFIG_REPO_TOKEN` from key `value`), or `{secret, key, env}`.",
            "anyOf": [ { "type": "string" }, full ]
        })
    }
}

/// Requests (and equal limits) as Kubernetes quantities.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "resources (`cpu`, `memory`, `ephemeral_storage`)"
)]
#[schemars(rename = "Resources")]
pub(crate) struct ResourcesDef {
    /// CPU: `2`, `500m`.
    pub cpu: Option<Sp<Scalar>>,
    /// Memory: `4Gi`, `512Mi`.
    pub memory: Option<Sp<Scalar>>,
    /// Size limit of the workspace volume: `10Gi`.
    pub ephemeral_storage: Option<Sp<Scalar>>,
}

/// A Kubernetes toleration.
#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "a toleration (`key`, `operator`, `value`, `effect`)"
)]
#[schemars(rename = "Toleration")]
pub(crate) struct TolerationDef {
    pub key: Option<String>,
    pub operator: Option<Sp<TolerationOperator>>,
    pub value: Option<String>,
    pub effect: Option<Sp<TolerationEffect>>,
}

#[derive(Clone, Copy, Debug, Deserialize, JsonSchema)]
pub(crate) enum TolerationOperator {
    Exists,
    Equal,
}

#[derive(Clone, Copy, Debug, Deserialize, JsonSchema)]
pub(crate) enum TolerationEffect {
    NoSchedule,
    PreferNoSchedule,
    NoExecute,
}

/// Conditions. Every condition given must hold.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "conditions (`branch`, `tag`, `event`, `paths`, `status`)"
)]
pub(crate) struct When {
    /// Branch globs: the branch built must match one (for a pull request, its head branch).
    pub branch: Option<Patterns>,
    /// Tag globs: the tag built must match one.
    pub tag: Option<Patterns>,
    /// Events: `push`, `pull_request`, `tag`, `manual`, or a list of them.
    pub event: Option<Sp<OneOrMany<EventName>>>,
    /// Path globs: the event must have changed a matching file (always true when unknown).
    pub paths: Option<Patterns>,
    /// Given how the work before went: `success` (default), `failure` or `always`.
    pub status: Option<Sp<StatusName>>,
}

/// An event that can start a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[schemars(rename = "Event")]
pub(crate) enum EventName {
    Push,
    PullRequest,
    Tag,
    Manual,
}

impl From<EventName> for gantry_core::Event {
    fn from(e: EventName) -> Self {
        match e {
            EventName::Push => gantry_core::Event::Push,
            EventName::PullRequest => gantry_core::Event::PullRequest,
            EventName::Tag => gantry_core::Event::Tag,
            EventName::Manual => gantry_core::Event::Manual,
        }
    }
}

/// `success`: only if everything before succeeded; `failure`: only if something failed;
/// `always`: whatever happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[schemars(rename = "Status")]
pub(crate) enum StatusName {
    Success,
    Failure,
    Always,
}

impl From<StatusName> for gantry_core::StatusCondition {
    fn from(s: StatusName) -> Self {
        match s {
            StatusName::Success => gantry_core::StatusCondition::Success,
            StatusName::Failure => gantry_core::StatusCondition::Failure,
            StatusName::Always => gantry_core::StatusCondition::Always,
        }
    }
}

/// One step: exactly one of `run`, `kaniko`, `trivy`, `gitops`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "a step (a mapping with one of `run`, `kaniko`, `trivy`, `gitops`)"
)]
#[schemars(extend("oneOf" = [
    { "required": ["run"] },
    { "required": ["kaniko"] },
    { "required": ["trivy"] },
    { "required": ["gitops"] }
]))]
#[schemars(rename = "Step")]
pub(crate) struct StepDef {
    /// The step's name in logs and the viewer. Default: derived from what it does. May use
    /// `${VARIABLES}`.
    pub name: Option<Sp<String>>,
    /// A shell script, run with `/bin/sh -e`. Only `${matrix.KEY}` is replaced here; other
    /// `${...}` are the shell's (all `GANTRY_*` variables are in the environment).
    pub run: Option<Sp<String>>,
    /// Build an image with Kaniko and push it.
    pub kaniko: Option<Sp<KanikoDef>>,
    /// Scan an image with Trivy; the step fails on findings of the given severities.
    pub trivy: Option<Sp<TrivyDef>>,
    /// Commit a new image tag to a configuration repository (kustomize overlay or YAML file).
    pub gitops: Option<Sp<GitopsDef>>,
    /// The step's deadline: `90s`, `20m`, `1h30m`.
    pub timeout: Option<Sp<String>>,
    /// Environment for this step, on top of the job's. Values may use `${VARIABLES}`.
    #[serde(default)]
    pub env: Env,
    /// Conditions for this step. `status` says when it runs given the steps before it
    /// (`always` for cleanup, `failure` for diagnostics).
    pub when: Option<Sp<When>>,
    /// A failure of this step does not fail the job.
    #[serde(default)]
    pub allow_failure: bool,
}

/// Kaniko build and push.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "kaniko options (a mapping with `destination`)"
)]
#[schemars(rename = "Kaniko")]
pub(crate) struct KanikoDef {
    /// Build context, relative to the workspace. Default `.`.
    pub context: Option<Sp<String>>,
    /// Dockerfile, relative to the context. Default `Dockerfile`.
    pub dockerfile: Option<Sp<String>>,
    /// Image reference(s) to push: one or a list.
    pub destination: Option<Sp<OneOrMany<String>>>,
    /// `--build-arg` values. May use `${VARIABLES}`.
    #[serde(default)]
    pub build_args: Env,
    /// Cache layers in a registry repository.
    #[serde(default)]
    pub cache: bool,
    /// Where cached layers go. Default: the first destination's repository + `/cache`.
    pub cache_repo: Option<Sp<String>>,
    /// The Dockerfile stage to build.
    pub target: Option<Sp<String>>,
    /// Secret with a Docker `config.json` for the registry.
    pub registry_secret: Option<Sp<String>>,
}

/// Trivy image scan.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "trivy options (a mapping with `image`)"
)]
#[schemars(rename = "Trivy")]
pub(crate) struct TrivyDef {
    /// The image to scan.
    pub image: Option<Sp<String>>,
    /// Severities that fail the step. Default `[CRITICAL, HIGH]`.
    pub severity: Option<Sp<Vec<Sp<SeverityName>>>>,
    /// Ignore findings that have no fix yet.
    #[serde(default)]
    pub ignore_unfixed: bool,
    /// Secret with a Docker `config.json` for a private registry.
    pub registry_secret: Option<Sp<String>>,
}

/// A vulnerability severity, as Trivy names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[schemars(rename = "Severity")]
pub(crate) enum SeverityName {
    Unknown,
    Low,
    Medium,
    High,
    Critical,
}

impl From<SeverityName> for gantry_core::Severity {
    fn from(s: SeverityName) -> Self {
        match s {
            SeverityName::Unknown => gantry_core::Severity::Unknown,
            SeverityName::Low => gantry_core::Severity::Low,
            SeverityName::Medium => gantry_core::Severity::Medium,
            SeverityName::High => gantry_core::Severity::High,
            SeverityName::Critical => gantry_core::Severity::Critical,
        }
    }
}

/// GitOps image-tag bump.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "gitops options (a mapping with `repo`, `path`, `image`)"
)]
#[schemars(rename = "Gitops")]
pub(crate) struct GitopsDef {
    /// The configuration repository's clone URL.
    pub repo: Option<Sp<String>>,
    /// Branch to commit to. Default: the repository's default branch.
    pub branch: Option<Sp<String>>,
    /// A kustomization directory (its `kustomization.yaml` gets `images[].newTag`), or a YAML
    /// file when `yaml_path` is given.
    pub path: Option<Sp<String>>,
    /// The image whose tag changes, without a tag (`registry.example.com/app`).
    pub image: Option<Sp<String>>,
    /// The new tag. Default `${GANTRY_COMMIT_SHA}`.
    pub tag: Option<Sp<String>>,
    /// A dotted path in the YAML file at `path` (`spec.image.tag`) instead of a kustomization.
    pub yaml_path: Option<Sp<String>>,
    /// Commit message. Default: names the image, the tag and the run.
    pub message: Option<Sp<String>>,
    /// Secret holding the token used to push (key `value`).
    pub token_secret: Option<Sp<String>>,
}
