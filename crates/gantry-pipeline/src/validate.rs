//! Everything about a pipeline that the shape alone does not say: names, references, globs,
//! durations, quantities, variables, the `needs` graph, matrices. Turns the file model into a
//! [`Pipeline`] that planning can trust.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use gantry_core::{GitopsStep, KanikoStep, Resources, SecretRef, StepKind, Toleration, TrivyStep};

use crate::diagnostic::Diagnostic;
use crate::model::{Env, JobDef, Matrix, Patterns, PipelineFile, SecretDef, StepDef, When};
use crate::rules::{
    Globs, PathFilter, PullRequestRule, PushRule, Triggers, WhenRule, compile_glob,
};
use crate::spanned::{Pos, Sp, SpMap};
use crate::suggest::did_you_mean;
use crate::values;
use crate::vars::{self, Piece};
use crate::yaml::locate_in;

/// A matrix job expands to at most this many jobs.
pub const MAX_MATRIX_JOBS: usize = 256;
/// A pipeline has at most this many jobs (after matrix expansion).
pub const MAX_JOBS: usize = 1024;

/// A parsed, validated pipeline. Built by [`crate::parse`]; turned into work by [`crate::plan`].
#[derive(Clone, Debug)]
pub struct Pipeline {
    pub(crate) name: String,
    pub(crate) triggers: Triggers,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) jobs: Vec<Job>,
}

impl Pipeline {
    /// The pipeline's name: `name` in the file, or the file name without its extension.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Does `on` start this pipeline for the trigger?
    pub fn triggered_by(&self, trigger: &gantry_core::Trigger) -> bool {
        self.triggers.admits(trigger)
    }

    /// Job names as written (before matrix expansion), in file order.
    pub fn job_names(&self) -> impl Iterator<Item = &str> {
        self.jobs.iter().map(|j| j.name.as_str())
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Job {
    pub name: String,
    pub image: Option<String>,
    pub needs: Vec<String>,
    /// One entry per expansion; a job without a matrix has one, empty.
    pub expansions: Vec<Vec<(String, String)>>,
    pub services: Vec<Service>,
    pub env: Vec<(String, String)>,
    pub secrets: Vec<SecretRef>,
    pub resources: Resources,
    pub timeout: Option<Duration>,
    pub retry: u32,
    pub allow_failure: bool,
    pub node_selector: BTreeMap<String, String>,
    pub tolerations: Vec<Toleration>,
    pub when: WhenRule,
    pub steps: Vec<Step>,
}

#[derive(Clone, Debug)]
pub(crate) struct Service {
    pub name: String,
    pub image: String,
    pub env: Vec<(String, String)>,
    pub command: Vec<String>,
    pub ports: Vec<u16>,
}

/// A step with its strings not yet interpolated.
#[derive(Clone, Debug)]
pub(crate) struct Step {
    pub name: Option<String>,
    pub kind: StepKind,
    pub timeout: Option<Duration>,
    pub env: Vec<(String, String)>,
    pub when: WhenRule,
    pub allow_failure: bool,
}

/// Which variables a piece of text may use.
#[derive(Clone, Debug, Default)]
struct Scope {
    names: BTreeSet<String>,
    /// `None`: the job has no matrix.
    matrix: Option<BTreeSet<String>>,
    /// Where `${matrix.*}` is not available at all (pipeline-level env).
    no_matrix_here: bool,
}

struct Checker<'a> {
    file: &'a str,
    source: &'a str,
    diags: Vec<Diagnostic>,
}

impl Checker<'_> {
    fn error(&mut self, pos: Pos, message: impl Into<String>) {
        self.diags
            .push(Diagnostic::error(self.file, pos.line, pos.column, message));
    }

    fn error_at(&mut self, (line, column): (usize, usize), message: impl Into<String>) {
        self.diags
            .push(Diagnostic::error(self.file, line, column, message));
    }

    fn warn(&mut self, pos: Pos, message: impl Into<String>) {
        self.diags.push(Diagnostic::warning(
            self.file, pos.line, pos.column, message,
        ));
    }

    fn globs(&mut self, patterns: &Option<Patterns>) -> Option<Globs> {
        let patterns = patterns.as_ref()?;
        let mut matchers = Vec::new();
        let items = patterns.items();
        if items.is_empty() {
            self.error(
                patterns.pos,
                "empty list of patterns: give at least one, or leave the key out",
            );
        }
        for item in items {
            match compile_glob(&item.value) {
                Ok(m) => matchers.push(m),
                Err(e) => self.error(item.pos, e),
            }
        }
        Some(Globs { matchers })
    }

    fn duration(&mut self, text: &Option<Sp<String>>) -> Option<Duration> {
        let text = text.as_ref()?;
        match values::parse_duration(&text.value) {
            Ok(d) => Some(d),
            Err(e) => {
                self.error(text.pos, e);
                None
            }
        }
    }

    /// Checks the `${...}` references in a value.
    fn text(&mut self, text: &Sp<String>, scope: &Scope) {
        match vars::scan(&text.value) {
            Err(m) => {
                let needle = &text.value[m.at..];
                let needle: String = needle.chars().take(2).collect();
                let at = locate_in(self.source, text.pos, &needle);
                self.error_at(at, m.message);
            }
            Ok(pieces) => {
                for p in pieces {
                    if let Piece::Var { name, .. } = p {
                        self.reference(text, name, scope);
                    }
                }
            }
        }
    }

    fn script(&mut self, text: &Sp<String>, scope: &Scope) {
        for p in vars::scan_script(&text.value) {
            if let Piece::Var { name, .. } = p {
                self.reference(text, name, scope);
            }
        }
    }

    fn reference(&mut self, text: &Sp<String>, name: &str, scope: &Scope) {
        let at = locate_in(self.source, text.pos, &format!("${{{name}"));
        if let Some(key) = name.strip_prefix("matrix.") {
            if scope.no_matrix_here {
                self.error_at(at, format!("`${{{name}}}` cannot be used in the pipeline's `env` (matrix values belong to a job); use it in the job's `env`"));
                return;
            }
            match &scope.matrix {
                None => self.error_at(
                    at,
                    format!("unknown variable `${{{name}}}`: this job has no matrix"),
                ),
                Some(keys) if !keys.contains(key) => {
                    let hint = did_you_mean(key, keys.iter().map(String::as_str))
                        .map(|s| format!(", did you mean `${{matrix.{s}}}`?"))
                        .unwrap_or_else(|| {
                            let list: Vec<String> = keys.iter().map(|k| format!("`{k}`")).collect();
                            format!("; the matrix has {}", list.join(", "))
                        });
                    self.error_at(
                        at,
                        format!("unknown matrix key `{key}` in `${{{name}}}`{hint}"),
                    );
                }
                Some(_) => {}
            }
            return;
        }
        if vars::is_builtin(name) || scope.names.contains(name) {
            return;
        }
        let candidates = vars::VARIABLES
            .iter()
            .map(|(n, _)| *n)
            .chain(scope.names.iter().map(String::as_str));
        let hint = did_you_mean(name, candidates)
            .map(|s| format!(", did you mean `${{{s}}}`?"))
            .unwrap_or_else(|| {
                "; variables are the built-in `GANTRY_*` ones, `${matrix.KEY}`, and names from `env`"
                    .into()
            });
        self.error_at(at, format!("unknown variable `${{{name}}}`{hint}"));
    }

    /// Checks an env map, growing the scope with each name in order.
    fn env(&mut self, env: &Env, scope: &mut Scope) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (key, value) in env.iter() {
            if !values::is_env_name(&key.value) {
                self.error(key.pos, format!("invalid environment variable name `{}`: use letters, digits and `_`, not starting with a digit", key.value));
            } else if key.value.starts_with("GANTRY_") {
                self.error(
                    key.pos,
                    format!(
                        "`{}`: names starting with `GANTRY_` are reserved for built-in variables",
                        key.value
                    ),
                );
            }
            let text = Sp::new(value.value.0.clone(), value.pos);
            self.text(&text, scope);
            scope.names.insert(key.value.clone());
            out.push((key.value.clone(), value.value.0.clone()));
        }
        out
    }

    fn when(&mut self, when: &Option<Sp<When>>) -> WhenRule {
        let Some(when) = when else {
            return WhenRule::default();
        };
        WhenRule {
            branch: self.globs(&when.branch),
            tag: self.globs(&when.tag),
            events: when.event.as_ref().map(|e| {
                let items = e.items();
                if items.is_empty() {
                    self.error(e.pos, "`event` is an empty list: give at least one event");
                }
                items.into_iter().map(|i| i.value.into()).collect()
            }),
            paths: self.globs(&when.paths),
            status: when
                .status
                .as_ref()
                .map(|s| s.value.into())
                .unwrap_or_default(),
        }
    }
}

fn default_name(file: &str) -> String {
    let base = file.rsplit(['/', '\\']).next().unwrap_or(file);
    let stem = base
        .strip_suffix(".yaml")
        .or_else(|| base.strip_suffix(".yml"))
        .unwrap_or(base);
    let stem = stem.trim_start_matches('.');
    if stem.is_empty() {
        "pipeline".into()
    } else {
        stem.into()
    }
}

/// Validates the file model; `None` when there are errors (all of them are in the diagnostics).
pub(crate) fn validate(
    file: &str,
    source: &str,
    raw: PipelineFile,
) -> (Option<Pipeline>, Vec<Diagnostic>) {
    let mut ck = Checker {
        file,
        source,
        diags: Vec::new(),
    };
    let name = match &raw.name {
        Some(n) if n.value.trim().is_empty() => {
            ck.error(
                n.pos,
                "`name` is empty: give the pipeline a name, or leave `name` out",
            );
            String::new()
        }
        Some(n) => n.value.trim().to_owned(),
        None => default_name(file),
    };
    let triggers = match &raw.on {
        None => Triggers::default(),
        Some(on) => {
            let t = Triggers {
                push: on.push.as_ref().map(|p| PushRule {
                    branches: ck.globs(&p.branches),
                    tags: ck.globs(&p.tags),
                    paths: PathFilter {
                        paths: ck.globs(&p.paths),
                        ignore: ck.globs(&p.paths_ignore),
                    },
                }),
                pull_request: on.pull_request.as_ref().map(|p| PullRequestRule {
                    branches: ck.globs(&p.branches),
                    paths: PathFilter {
                        paths: ck.globs(&p.paths),
                        ignore: ck.globs(&p.paths_ignore),
                    },
                }),
                tag: on.tag.as_ref().map(|t| ck.globs(&t.tags)),
                manual: on.manual.is_some(),
            };
            if t.push.is_none() && t.pull_request.is_none() && t.tag.is_none() && !t.manual {
                ck.warn(on.pos, "`on` lists no events: this pipeline never runs");
            }
            t
        }
    };
    let mut top_scope = Scope {
        no_matrix_here: true,
        ..Scope::default()
    };
    let env = ck.env(&raw.env, &mut top_scope);
    let env_names = top_scope.names.clone();

    let mut jobs = Vec::new();
    let mut need_refs: Vec<(String, Vec<Sp<String>>, Pos)> = Vec::new();
    match &raw.jobs {
        None => ck.error(
            Pos {
                line: 1,
                column: 1,
                offset: None,
            },
            "missing key `jobs`: a pipeline needs at least one job",
        ),
        Some(defs) if defs.is_empty() => ck.error(
            defs.pos,
            "`jobs` is empty: a pipeline needs at least one job",
        ),
        Some(defs) => {
            for (key, def) in defs.iter() {
                if let Err(e) = values::check_job_name(&key.value) {
                    ck.error(key.pos, e);
                }
                let needs = def.needs.as_ref().map(|n| n.items()).unwrap_or_default();
                need_refs.push((key.value.clone(), needs, key.pos));
                jobs.push(job(&mut ck, key, def, &env_names));
            }
        }
    }
    check_needs(&mut ck, &need_refs);
    let expanded: usize = jobs.iter().map(|j| j.expansions.len()).sum();
    if expanded > MAX_JOBS
        && let Some(defs) = &raw.jobs
    {
        ck.error(
            defs.pos,
            format!("the pipeline expands to {expanded} jobs; at most {MAX_JOBS}"),
        );
    }
    let has_errors = ck.diags.iter().any(Diagnostic::is_error);
    let pipeline = (!has_errors).then_some(Pipeline {
        name,
        triggers,
        env,
        jobs,
    });
    (pipeline, ck.diags)
}

fn job(
    ck: &mut Checker<'_>,
    key: &Sp<String>,
    def: &Sp<JobDef>,
    pipeline_env: &BTreeSet<String>,
) -> Job {
    let (expansions, matrix_keys) = match &def.matrix {
        Some(m) => {
            let (e, keys) = expand_matrix(ck, &key.value, m);
            (e, Some(keys))
        }
        None => (vec![Vec::new()], None),
    };
    let mut scope = Scope {
        names: pipeline_env.clone(),
        matrix: matrix_keys,
        no_matrix_here: false,
    };
    let env = ck.env(&def.env, &mut scope);
    if let Some(image) = &def.image {
        ck.text(image, &scope);
    }
    let services = def
        .services
        .iter()
        .map(|(name, svc)| {
            if !values::check_dns_label(&name.value) {
                ck.error(name.pos, format!("invalid service name `{}`: use lower-case letters, digits and `-` (it becomes a host name)", name.value));
            }
            let image = match &svc.image {
                Some(i) => {
                    ck.text(i, &scope);
                    i.value.clone()
                }
                None => {
                    ck.error(svc.pos, format!("service `{}` needs an `image`", name.value));
                    String::new()
                }
            };
            let mut svc_scope = scope.clone();
            Service {
                name: name.value.clone(),
                image,
                env: ck.env(&svc.env, &mut svc_scope),
                command: svc.command.iter().map(|c| c.0.clone()).collect(),
                ports: svc.ports.iter().map(|p| p.value).collect(),
            }
        })
        .collect();
    let secrets = secrets(ck, &def.secrets);
    let resources = match &def.resources {
        None => Resources::default(),
        Some(r) => {
            let mut q = |v: &Option<Sp<crate::spanned::Scalar>>| {
                v.as_ref().map(|v| {
                    if let Err(e) = values::check_quantity(&v.value.0) {
                        ck.error(v.pos, e);
                    }
                    v.value.0.clone()
                })
            };
            Resources {
                cpu: q(&r.cpu),
                memory: q(&r.memory),
                ephemeral_storage: q(&r.ephemeral_storage),
            }
        }
    };
    let timeout = ck.duration(&def.timeout);
    let retry = match &def.retry {
        Some(r) if r.value > 10 => {
            ck.error(
                r.pos,
                format!("`retry` is {}; it must be between 0 and 10", r.value),
            );
            0
        }
        Some(r) => r.value,
        None => 0,
    };
    let tolerations = def
        .tolerations
        .iter()
        .map(|t| {
            if matches!(
                t.operator.as_ref().map(|o| o.value),
                Some(crate::model::TolerationOperator::Exists)
            ) && t.value.value.is_some()
            {
                ck.error(
                    t.pos,
                    "a toleration with `operator: Exists` takes no `value`",
                );
            }
            Toleration {
                key: t.key.clone(),
                operator: t.operator.as_ref().map(|o| format!("{:?}", o.value)),
                value: t.value.value.clone(),
                effect: t.effect.as_ref().map(|e| format!("{:?}", e.value)),
            }
        })
        .collect();
    let when = ck.when(&def.when);
    if let Some(w) = &def.when
        && let Some(status) = &w.status
        && def.needs.is_none()
    {
        ck.warn(
            status.pos,
            "`when.status` on a job without `needs` has nothing to look at: it always sees success",
        );
    }
    let steps = match &def.steps {
        None => {
            ck.error(
                key.pos,
                format!("job `{}` has no `steps`: add at least one step", key.value),
            );
            Vec::new()
        }
        Some(s) if s.is_empty() => {
            ck.error(
                s.pos,
                format!(
                    "job `{}` has an empty `steps` list: add at least one step",
                    key.value
                ),
            );
            Vec::new()
        }
        Some(s) => s.iter().filter_map(|st| step(ck, st, &scope)).collect(),
    };
    Job {
        name: key.value.clone(),
        image: def.image.as_ref().map(|i| i.value.clone()),
        needs: def
            .needs
            .as_ref()
            .map(|n| n.items().into_iter().map(|i| i.value).collect())
            .unwrap_or_default(),
        expansions,
        services,
        env,
        secrets,
        resources,
        timeout,
        retry,
        allow_failure: def.allow_failure,
        node_selector: def
            .node_selector
            .iter()
            .map(|(k, v)| (k.value.clone(), v.value.0.clone()))
            .collect(),
        tolerations,
        when,
        steps,
    }
}

fn secrets(ck: &mut Checker<'_>, defs: &[Sp<SecretDef>]) -> Vec<SecretRef> {
    let mut out: Vec<SecretRef> = Vec::new();
    let mut seen: BTreeMap<String, Pos> = BTreeMap::new();
    for def in defs {
        let (secret, key, env, pos) = match &def.value {
            SecretDef::Name(name) => (
                name.clone(),
                "value".to_owned(),
                values::env_name_for_secret(name),
                def.pos,
            ),
            SecretDef::Full(f) => {
                if let Some(k) = &f.key
                    && !values::check_secret_key(&k.value)
                {
                    ck.error(
                        k.pos,
                        format!(
                            "invalid secret key `{}`: use letters, digits, `-`, `_` and `.`",
                            k.value
                        ),
                    );
                }
                if let Some(e) = &f.env {
                    if !values::is_env_name(&e.value) {
                        ck.error(e.pos, format!("invalid environment variable name `{}`: use letters, digits and `_`, not starting with a digit", e.value));
                    } else if e.value.starts_with("GANTRY_") {
                        ck.error(e.pos, format!("`{}`: names starting with `GANTRY_` are reserved for built-in variables", e.value));
                    }
                }
                (
                    f.secret.value.clone(),
                    f.key.as_ref().map_or("value".into(), |k| k.value.clone()),
                    f.env.as_ref().map_or_else(
                        || values::env_name_for_secret(&f.secret.value),
                        |e| e.value.clone(),
                    ),
                    f.secret.pos,
                )
            }
        };
        if let Err(e) = values::check_secret_name(&secret) {
            ck.error(pos, e);
            continue;
        }
        if let Some(first) = seen.get(&env) {
            ck.error(
                def.pos,
                format!(
                    "two secrets set `{env}` (the first at {}:{})",
                    first.line, first.column
                ),
            );
            continue;
        }
        seen.insert(env.clone(), def.pos);
        out.push(SecretRef { env, secret, key });
    }
    out
}

fn step(ck: &mut Checker<'_>, def: &Sp<StepDef>, job_scope: &Scope) -> Option<Step> {
    let mut scope = job_scope.clone();
    let env = ck.env(&def.env, &mut scope);
    if let Some(name) = &def.name {
        ck.text(name, &scope);
    }
    let kinds: Vec<&str> = [
        def.run.as_ref().map(|_| "run"),
        def.kaniko.as_ref().map(|_| "kaniko"),
        def.trivy.as_ref().map(|_| "trivy"),
        def.gitops.as_ref().map(|_| "gitops"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if kinds.len() > 1 {
        let list: Vec<String> = kinds.iter().map(|k| format!("`{k}`")).collect();
        ck.error(
            def.pos,
            format!(
                "a step does one thing, this one has {}: split it into separate steps",
                list.join(" and ")
            ),
        );
        return None;
    }
    let timeout = ck.duration(&def.timeout);
    let when = ck.when(&def.when);
    let text = |ck: &mut Checker<'_>, v: &Option<Sp<String>>| {
        v.as_ref().map(|v| {
            ck.text(v, &scope);
            v.value.clone()
        })
    };
    let kind = if let Some(run) = &def.run {
        ck.script(run, &scope);
        StepKind::Run {
            script: run.value.clone(),
        }
    } else if let Some(k) = &def.kaniko {
        let destinations: Vec<String> = match &k.destination {
            None => {
                ck.error(
                    k.pos,
                    "a `kaniko` step needs a `destination` (the image to push)",
                );
                Vec::new()
            }
            Some(d) => {
                let items = d.items();
                if items.is_empty() {
                    ck.error(
                        d.pos,
                        "`destination` is an empty list: give at least one image",
                    );
                }
                items
                    .iter()
                    .map(|i| {
                        ck.text(i, &scope);
                        i.value.clone()
                    })
                    .collect()
            }
        };
        if k.cache_repo.is_some() && !k.cache {
            ck.warn(k.pos, "`cache_repo` has no effect without `cache: true`");
        }
        let mut args_scope = scope.clone();
        let build_args = ck.env(&k.build_args, &mut args_scope);
        StepKind::Kaniko(KanikoStep {
            context: text(ck, &k.context).unwrap_or_else(|| ".".into()),
            dockerfile: text(ck, &k.dockerfile).unwrap_or_else(|| "Dockerfile".into()),
            destinations,
            build_args: build_args.into_iter().collect(),
            cache: k.cache,
            cache_repo: text(ck, &k.cache_repo),
            target: text(ck, &k.target),
            registry_secret: secret_name(ck, &k.registry_secret),
        })
    } else if let Some(t) = &def.trivy {
        let image = text(ck, &t.image).unwrap_or_else(|| {
            ck.error(t.pos, "a `trivy` step needs an `image` to scan");
            String::new()
        });
        let severity = match &t.severity {
            Some(s) if s.is_empty() => {
                ck.error(s.pos, "`severity` is an empty list: give at least one severity, or leave it out for [CRITICAL, HIGH]");
                Vec::new()
            }
            Some(s) => s.iter().map(|v| v.value.into()).collect(),
            None => vec![gantry_core::Severity::Critical, gantry_core::Severity::High],
        };
        StepKind::Trivy(TrivyStep {
            image,
            severity,
            ignore_unfixed: t.ignore_unfixed,
            registry_secret: secret_name(ck, &t.registry_secret),
        })
    } else if let Some(g) = &def.gitops {
        let required = |ck: &mut Checker<'_>, v: &Option<Sp<String>>, key: &str, what: &str| {
            text(ck, v).unwrap_or_else(|| {
                ck.error(g.pos, format!("a `gitops` step needs `{key}` ({what})"));
                String::new()
            })
        };
        let repo = required(
            ck,
            &g.repo,
            "repo",
            "the configuration repository's clone URL",
        );
        let path = required(
            ck,
            &g.path,
            "path",
            "a kustomization directory or a YAML file",
        );
        let image = required(ck, &g.image, "image", "the image whose tag changes");
        StepKind::Gitops(GitopsStep {
            repo,
            branch: text(ck, &g.branch),
            path,
            image,
            tag: text(ck, &g.tag).unwrap_or_else(|| "${GANTRY_COMMIT_SHA}".into()),
            yaml_path: text(ck, &g.yaml_path),
            message: text(ck, &g.message),
            token_secret: secret_name(ck, &g.token_secret),
        })
    } else {
        ck.error(
            def.pos,
            "a step needs something to do: add one of `run`, `kaniko`, `trivy` or `gitops`",
        );
        return None;
    };
    Some(Step {
        name: def.name.as_ref().map(|n| n.value.clone()),
        kind,
        timeout,
        env,
        when,
        allow_failure: def.allow_failure,
    })
}

fn secret_name(ck: &mut Checker<'_>, v: &Option<Sp<String>>) -> Option<String> {
    let v = v.as_ref()?;
    if let Err(e) = values::check_secret_name(&v.value) {
        ck.error(v.pos, e);
    }
    Some(v.value.clone())
}

/// The matrix's combinations (each: key → value, in order) and all of its keys.
fn expand_matrix(
    ck: &mut Checker<'_>,
    job: &str,
    m: &Sp<Matrix>,
) -> (Vec<Vec<(String, String)>>, BTreeSet<String>) {
    let mut keys = BTreeSet::new();
    let fail = |keys| (vec![Vec::new()], keys);
    if m.axes.is_empty() && m.include.is_empty() {
        ck.error(m.pos, format!("the matrix of job `{job}` is empty: give at least one axis, like `rust: [\"1.95\"]`"));
        return fail(keys);
    }
    let mut ok = true;
    for (axis, vals) in &m.axes {
        if !values::is_matrix_key(&axis.value) {
            ck.error(
                axis.pos,
                format!(
                    "invalid matrix key `{}`: use letters, digits, `_` and `-`",
                    axis.value
                ),
            );
            ok = false;
        }
        if vals.is_empty() {
            ck.error(
                vals.pos,
                format!("matrix axis `{}` has no values", axis.value),
            );
            ok = false;
        }
        keys.insert(axis.value.clone());
    }
    let axis_names: Vec<&str> = m.axes.iter().map(|(a, _)| a.value.as_str()).collect();
    let count = m
        .axes
        .iter()
        .fold(1usize, |n, (_, v)| n.saturating_mul(v.len().max(1)))
        .saturating_add(m.include.len());
    if count > MAX_MATRIX_JOBS {
        ck.error(
            m.pos,
            format!("the matrix of job `{job}` expands to {count} jobs; at most {MAX_MATRIX_JOBS}"),
        );
        return fail(keys);
    }
    for row in &m.exclude {
        if row.is_empty() {
            ck.error(
                row.pos,
                "an empty `exclude` entry would exclude everything; give axis values",
            );
            ok = false;
        }
        for (k, _) in row.iter() {
            if !axis_names.contains(&k.value.as_str()) {
                let hint = did_you_mean(&k.value, axis_names.iter().copied())
                    .map(|s| format!(", did you mean `{s}`?"))
                    .unwrap_or_else(|| {
                        format!(
                            "; the axes are {}",
                            axis_names
                                .iter()
                                .map(|a| format!("`{a}`"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    });
                ck.error(
                    k.pos,
                    format!(
                        "`exclude` names `{}`, which is not a matrix axis{hint}",
                        k.value
                    ),
                );
                ok = false;
            }
        }
    }
    for row in &m.include {
        if row.is_empty() {
            ck.error(
                row.pos,
                "an empty `include` entry adds nothing; give keys and values",
            );
            ok = false;
        }
        for (k, _) in row.iter() {
            if !values::is_matrix_key(&k.value) {
                ck.error(
                    k.pos,
                    format!(
                        "invalid matrix key `{}`: use letters, digits, `_` and `-`",
                        k.value
                    ),
                );
                ok = false;
            }
            keys.insert(k.value.clone());
        }
    }
    if !ok {
        return fail(keys);
    }
    let mut combos: Vec<Vec<(String, String)>> = if m.axes.is_empty() {
        Vec::new()
    } else {
        vec![Vec::new()]
    };
    for (axis, vals) in &m.axes {
        combos = combos
            .into_iter()
            .flat_map(|c| {
                vals.iter().map(move |v| {
                    let mut c = c.clone();
                    c.push((axis.value.clone(), v.value.0.clone()));
                    c
                })
            })
            .collect();
    }
    let matches = |combo: &[(String, String)], row: &SpMap<Sp<crate::spanned::Scalar>>| {
        row.iter().all(|(k, v)| {
            combo
                .iter()
                .any(|(ck, cv)| *ck == k.value && *cv == v.value.0)
        })
    };
    combos.retain(|c| !m.exclude.iter().any(|row| matches(c, row)));
    for row in &m.include {
        let combo: Vec<(String, String)> = row
            .iter()
            .map(|(k, v)| (k.value.clone(), v.value.0.clone()))
            .collect();
        if !combos.contains(&combo) {
            combos.push(combo);
        }
    }
    if combos.is_empty() {
        ck.error(
            m.pos,
            format!("the matrix of job `{job}` excludes every combination"),
        );
        return fail(keys);
    }
    (combos, keys)
}

/// Unknown names, self-references and cycles in `needs`.
fn check_needs(ck: &mut Checker<'_>, jobs: &[(String, Vec<Sp<String>>, Pos)]) {
    let names: Vec<&str> = jobs.iter().map(|(n, _, _)| n.as_str()).collect();
    let mut graph: BTreeMap<&str, Vec<(&str, Pos)>> = BTreeMap::new();
    for (job, needs, _) in jobs {
        let mut seen = BTreeSet::new();
        for need in needs {
            if need.value == *job {
                ck.error(need.pos, format!("job `{job}` needs itself"));
                continue;
            }
            if !names.contains(&need.value.as_str()) {
                let hint = did_you_mean(&need.value, names.iter().copied().filter(|n| n != job))
                    .map(|s| format!(", did you mean `{s}`?"))
                    .unwrap_or_default();
                ck.error(
                    need.pos,
                    format!(
                        "job `{job}` needs `{}`, which is not a job in this pipeline{hint}",
                        need.value
                    ),
                );
                continue;
            }
            if !seen.insert(need.value.as_str()) {
                ck.warn(
                    need.pos,
                    format!("job `{job}` lists `{}` in `needs` twice", need.value),
                );
                continue;
            }
            graph
                .entry(job.as_str())
                .or_default()
                .push((need.value.as_str(), need.pos));
        }
    }
    // Depth-first search; each cycle is reported once, at the edge that closes it.
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    let mut marks: BTreeMap<&str, Mark> = names.iter().map(|n| (*n, Mark::New)).collect();
    for start in &names {
        if marks[start] != Mark::New {
            continue;
        }
        // Iterative DFS: (node, next edge index); `path` holds the open nodes.
        let mut stack: Vec<(&str, usize)> = vec![(start, 0)];
        marks.insert(start, Mark::Open);
        while let Some((node, idx)) = stack.pop() {
            let edges = graph.get(node).map(Vec::as_slice).unwrap_or(&[]);
            if idx < edges.len() {
                stack.push((node, idx + 1));
                let (next, pos) = edges[idx];
                match marks[next] {
                    Mark::New => {
                        marks.insert(next, Mark::Open);
                        stack.push((next, 0));
                    }
                    Mark::Open => {
                        let from = stack.iter().position(|(n, _)| *n == next).unwrap_or(0);
                        let mut cycle: Vec<&str> = stack[from..].iter().map(|(n, _)| *n).collect();
                        cycle.push(next);
                        ck.error(pos, format!("`needs` forms a cycle: {}", cycle.join(" → ")));
                    }
                    Mark::Done => {}
                }
            } else {
                marks.insert(node, Mark::Done);
            }
        }
    }
}
