//! A validated pipeline plus a trigger → the concrete jobs of one run.

use std::collections::{BTreeMap, BTreeSet};

use gantry_core::{
    GitopsStep, JobSpec, KanikoStep, RunId, ServiceSpec, StatusCondition, StepKind, StepSpec,
    Trigger, TrivyStep,
};

use crate::validate::{Job, Pipeline, Step};
use crate::vars;

/// What a plan is made for.
#[derive(Clone, Debug)]
pub struct PlanContext<'a> {
    pub trigger: &'a Trigger,
    pub run_id: RunId,
    /// The pipeline file's path in the repository.
    pub file: &'a str,
    /// The run's page in Gantry's viewer (`GANTRY_RUN_URL`), when Gantry has a public URL.
    pub run_url: Option<&'a str>,
}

/// The jobs of one run, in an order where every job comes after the jobs it needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub pipeline: String,
    pub jobs: Vec<PlannedJob>,
}

/// One concrete job (one matrix expansion).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedJob {
    /// `build`, or `test (rust=1.95, os=linux)` for a matrix expansion.
    pub name: String,
    /// Names of the planned jobs this one waits for (all expansions of a needed matrix job).
    pub needs: Vec<String>,
    pub spec: JobSpec,
    pub retry: u32,
    pub allow_failure: bool,
    /// Given how the jobs it needs went, does it run?
    pub run_if: StatusCondition,
    /// `Some(reason)` when the job's `when` leaves it out of this run.
    pub skipped: Option<String>,
}

/// The name of one expansion of a job.
pub(crate) fn expansion_name(job: &str, values: &[(String, String)]) -> String {
    if values.is_empty() {
        return job.to_owned();
    }
    let parts: Vec<String> = values.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{job} ({})", parts.join(", "))
}

/// Jobs in file order, moved after what they need (Kahn's algorithm, stable).
fn topological(jobs: &[Job]) -> Vec<&Job> {
    let mut done: BTreeSet<&str> = BTreeSet::new();
    let mut order = Vec::with_capacity(jobs.len());
    while order.len() < jobs.len() {
        let before = order.len();
        for job in jobs {
            if !done.contains(job.name.as_str())
                && job.needs.iter().all(|n| done.contains(n.as_str()))
            {
                done.insert(job.name.as_str());
                order.push(job);
            }
        }
        if order.len() == before {
            // Only reachable with a cycle, which validation rejects; keep the rest in file order.
            order.extend(jobs.iter().filter(|j| !done.contains(j.name.as_str())));
            break;
        }
    }
    order
}

/// Expands variables in order: later `env` entries see earlier ones.
fn expand_env(
    entries: &[(String, String)],
    base: &BTreeMap<String, String>,
    matrix: &[(String, String)],
) -> BTreeMap<String, String> {
    let mut env = base.clone();
    for (k, v) in entries {
        let value = vars::expand(v, &|name| lookup(name, &env, matrix));
        env.insert(k.clone(), value);
    }
    env
}

fn lookup(
    name: &str,
    env: &BTreeMap<String, String>,
    matrix: &[(String, String)],
) -> Option<String> {
    match name.strip_prefix("matrix.") {
        Some(key) => matrix
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone()),
        None => env.get(name).cloned(),
    }
}

/// Plans the run: every job expanded, every variable interpolated, `when` applied.
pub fn plan(pipeline: &Pipeline, ctx: &PlanContext<'_>) -> Plan {
    let mut jobs = Vec::new();
    let names: BTreeMap<&str, Vec<String>> = pipeline
        .jobs
        .iter()
        .map(|j| {
            let names = j
                .expansions
                .iter()
                .map(|e| expansion_name(&j.name, e))
                .collect();
            (j.name.as_str(), names)
        })
        .collect();
    for job in topological(&pipeline.jobs) {
        let skipped = job.when.excludes(ctx.trigger);
        let needs: Vec<String> = job
            .needs
            .iter()
            .flat_map(|n| names.get(n.as_str()).cloned().unwrap_or_default())
            .collect();
        for values in &job.expansions {
            let name = expansion_name(&job.name, values);
            let spec = job_spec(pipeline, ctx, job, &name, values);
            jobs.push(PlannedJob {
                name,
                needs: needs.clone(),
                spec,
                retry: job.retry,
                allow_failure: job.allow_failure,
                run_if: job.when.status,
                skipped: skipped.clone(),
            });
        }
    }
    Plan {
        pipeline: pipeline.name.clone(),
        jobs,
    }
}

fn job_spec(
    pipeline: &Pipeline,
    ctx: &PlanContext<'_>,
    job: &Job,
    name: &str,
    matrix: &[(String, String)],
) -> JobSpec {
    let builtins = vars::builtins(ctx, &pipeline.name, name);
    // Variables visible to the job: built-ins, then pipeline env, then job env.
    let pipeline_env = expand_env(&pipeline.env, &builtins, matrix);
    let scope = expand_env(&job.env, &pipeline_env, matrix);
    let x = |text: &str| vars::expand(text, &|n| lookup(n, &scope, matrix));

    let mut env: BTreeMap<String, String> = scope.clone();
    for (k, v) in matrix {
        let key: String = k
            .chars()
            .map(|c| {
                if c == '-' {
                    '_'
                } else {
                    c.to_ascii_uppercase()
                }
            })
            .collect();
        env.insert(format!("GANTRY_MATRIX_{key}"), v.clone());
    }
    let secrets = if ctx.trigger.secrets_allowed() {
        job.secrets.clone()
    } else {
        Vec::new()
    };
    let services = job
        .services
        .iter()
        .map(|s| ServiceSpec {
            name: s.name.clone(),
            image: x(&s.image),
            env: expand_env(&s.env, &scope, matrix)
                .into_iter()
                .filter(|(k, _)| s.env.iter().any(|(sk, _)| sk == k))
                .collect(),
            command: s.command.clone(),
            ports: s.ports.clone(),
        })
        .collect();
    let steps = job
        .steps
        .iter()
        .filter(|s| s.when.excludes(ctx.trigger).is_none())
        .map(|s| step_spec(s, &scope, matrix, ctx.trigger.secrets_allowed()))
        .collect();
    JobSpec {
        name: name.to_owned(),
        image: job.image.as_deref().map(x),
        env,
        secrets,
        services,
        steps,
        timeout: job.timeout,
        resources: job.resources.clone(),
        node_selector: job.node_selector.clone(),
        tolerations: job.tolerations.clone(),
    }
}

/// `secrets_allowed`: false for a pull request from a fork, whose steps then name no Secret
/// (registry credentials, push tokens) either.
fn step_spec(
    step: &Step,
    job_scope: &BTreeMap<String, String>,
    matrix: &[(String, String)],
    secrets_allowed: bool,
) -> StepSpec {
    let secret = |name: &Option<String>| name.clone().filter(|_| secrets_allowed);
    let scope = expand_env(&step.env, job_scope, matrix);
    let x = |text: &str| vars::expand(text, &|n| lookup(n, &scope, matrix));
    let xo = |text: &Option<String>| text.as_deref().map(x);
    let kind = match &step.kind {
        StepKind::Run { script } => StepKind::Run {
            script: vars::expand_script(script, &|n| lookup(n, &scope, matrix)),
        },
        StepKind::Kaniko(k) => StepKind::Kaniko(KanikoStep {
            context: x(&k.context),
            dockerfile: x(&k.dockerfile),
            destinations: k.destinations.iter().map(|d| x(d)).collect(),
            build_args: k
                .build_args
                .iter()
                .map(|(a, v)| (a.clone(), x(v)))
                .collect(),
            cache: k.cache,
            cache_repo: xo(&k.cache_repo),
            target: xo(&k.target),
            registry_secret: secret(&k.registry_secret),
        }),
        StepKind::Trivy(t) => StepKind::Trivy(TrivyStep {
            image: x(&t.image),
            severity: t.severity.clone(),
            ignore_unfixed: t.ignore_unfixed,
            registry_secret: secret(&t.registry_secret),
        }),
        StepKind::Gitops(g) => StepKind::Gitops(GitopsStep {
            repo: x(&g.repo),
            branch: xo(&g.branch),
            path: x(&g.path),
            image: x(&g.image),
            tag: x(&g.tag),
            yaml_path: xo(&g.yaml_path),
            message: xo(&g.message),
            token_secret: secret(&g.token_secret),
        }),
    };
    let name = match &step.name {
        Some(n) => x(n),
        None => default_step_name(&kind),
    };
    StepSpec {
        name,
        kind,
        timeout: step.timeout,
        env: step
            .env
            .iter()
            .filter_map(|(k, _)| scope.get(k).map(|v| (k.clone(), v.clone())))
            .collect(),
        run_if: step.when.status,
        allow_failure: step.allow_failure,
    }
}

/// `cargo test --locked`, `build registry.example.com/app:abc`, …
fn default_step_name(kind: &StepKind) -> String {
    let name = match kind {
        StepKind::Run { script } => script
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .unwrap_or("run")
            .to_owned(),
        StepKind::Kaniko(k) => format!(
            "build {}",
            k.destinations
                .first()
                .map(String::as_str)
                .unwrap_or("image")
        ),
        StepKind::Trivy(t) => format!("scan {}", t.image),
        StepKind::Gitops(g) => format!("bump {} in {}", g.image, g.path),
    };
    if name.chars().count() > 60 {
        let mut short: String = name.chars().take(59).collect();
        short.push('…');
        short
    } else {
        name
    }
}
