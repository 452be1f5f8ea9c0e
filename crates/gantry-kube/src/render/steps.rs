//! The container of each step kind, and of services.

use gantry_core::{GitopsStep, KanikoStep, ServiceSpec, StepKind, StepSpec};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, KeyToPath, SecretVolumeSource, Volume,
};

use super::scripts::{self, Guard};
use super::{Ctx, RenderError, env, mount, secret_env};
use crate::config::SecurityLevel;
use crate::names;

/// Capabilities Kaniko needs to unpack base images and run `RUN` instructions as root (all in
/// the Pod Security baseline allow-list).
const KANIKO_CAPS: [&str; 9] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "SETGID",
    "SETUID",
    "SETFCAP",
];

pub(crate) fn service(ctx: &Ctx<'_>, service: &ServiceSpec) -> Container {
    Container {
        name: names::service_container(&service.name),
        image: Some(service.image.clone()),
        args: (!service.command.is_empty()).then(|| service.command.clone()),
        env: (!service.env.is_empty())
            .then(|| service.env.iter().map(|(k, v)| env(k, v.clone())).collect()),
        ports: (!service.ports.is_empty()).then(|| {
            service
                .ports
                .iter()
                .map(|p| ContainerPort {
                    container_port: i32::from(*p),
                    ..ContainerPort::default()
                })
                .collect()
        }),
        restart_policy: Some("Always".into()),
        security_context: Some(ctx.security_context(&ctx.run_caps())),
        ..Container::default()
    }
}

fn err(index: usize, step: &StepSpec, why: impl Into<String>) -> RenderError {
    RenderError::Step {
        step: index,
        name: step.name.clone(),
        why: why.into(),
    }
}

/// A registry credentials Secret (`.dockerconfigjson`) as a volume with `config.json` in it.
fn docker_config_volume(ctx: &mut Ctx<'_>, index: usize, secret: &str) -> String {
    let name = format!("registry-{index}");
    ctx.volumes.push(Volume {
        name: name.clone(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.to_owned()),
            items: Some(vec![KeyToPath {
                key: ".dockerconfigjson".into(),
                path: "config.json".into(),
                mode: None,
            }]),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    });
    name
}

pub(crate) fn step(
    ctx: &mut Ctx<'_>,
    index: usize,
    step: &StepSpec,
    keep_going: bool,
    job_env: &[EnvVar],
) -> Result<Container, RenderError> {
    let mut env_vars: Vec<EnvVar> = job_env.to_vec();
    for (k, v) in &step.env {
        env_vars.retain(|e| &e.name != k);
        env_vars.push(env(k, v.clone()));
    }
    let mut mounts = vec![mount("workspace", scripts::WORKSPACE, false)];
    let guard = ctx.guarded.then_some(Guard {
        run_if: step.run_if,
        allow_failure: step.allow_failure,
        keep_going,
    });
    if guard.is_some() {
        mounts.push(mount("gantry-state", scripts::STATE_DIR, false));
    }
    // (image, the script a shell runs, or the explicit command of a shell-less image, caps)
    let (image, script, command, caps): (String, Option<String>, Vec<String>, Vec<&str>) =
        match &step.kind {
            StepKind::Run { script } => (
                ctx.job
                    .spec
                    .image
                    .clone()
                    .unwrap_or_else(|| ctx.config.images.default_job.clone()),
                Some(script.clone()),
                Vec::new(),
                ctx.run_caps(),
            ),
            StepKind::Kaniko(k) => {
                if ctx.security == SecurityLevel::Restricted {
                    return Err(err(
                        index,
                        step,
                        "kaniko runs as root, which this repository's `restricted` security level forbids",
                    ));
                }
                if ctx.guarded {
                    return Err(err(
                        index,
                        step,
                        "the kaniko executor has no shell, so it cannot share a job with `allow_failure` or `when: status` steps; move it into a job of its own",
                    ));
                }
                if k.destinations.is_empty() {
                    return Err(err(index, step, "a kaniko step needs a destination"));
                }
                if let Some(secret) = &k.registry_secret
                    && ctx.granted(secret, "registry credentials")
                {
                    let volume = docker_config_volume(ctx, index, secret);
                    mounts.push(mount(&volume, "/kaniko/.docker", true));
                }
                (
                    ctx.config.images.kaniko.clone(),
                    None,
                    kaniko_args(k),
                    KANIKO_CAPS.to_vec(),
                )
            }
            StepKind::Trivy(t) => {
                if let Some(secret) = &t.registry_secret
                    && ctx.granted(secret, "registry credentials")
                {
                    let volume = docker_config_volume(ctx, index, secret);
                    mounts.push(mount(&volume, "/gantry-docker", true));
                    env_vars.push(env("DOCKER_CONFIG", "/gantry-docker"));
                }
                for (name, value) in
                    gantry_core::trivy::env(t, ctx.config.trivy_db_repository.as_deref())
                {
                    env_vars.push(env(name, value));
                }
                // The pod is thrown away: its cache too (and any uid can write /tmp).
                env_vars.push(env("TRIVY_CACHE_DIR", "/tmp/trivy-cache"));
                (
                    ctx.config.images.trivy.clone(),
                    Some(gantry_core::trivy::SCRIPT.to_owned()),
                    Vec::new(),
                    Vec::new(),
                )
            }
            StepKind::Gitops(g) => {
                if let Some(path) = &g.yaml_path
                    && !valid_yaml_path(path)
                {
                    return Err(err(
                        index,
                        step,
                        format!(
                            "yaml_path {path:?} must be dotted keys (letters, digits, `_`, `-`, `[n]`)"
                        ),
                    ));
                }
                env_vars.extend(gitops_env(ctx, g));
                if let Some(secret) = &g.token_secret
                    && ctx.granted(secret, "gitops push token")
                {
                    env_vars.push(secret_env("GITOPS_TOKEN", secret, "token"));
                }
                (
                    ctx.config.images.gitops.clone(),
                    Some(scripts::GITOPS.to_owned()),
                    Vec::new(),
                    Vec::new(),
                )
            }
        };
    let (command, args) = match (guard, script) {
        (Some(g), Some(script)) => (
            vec!["/bin/sh".into(), "-c".into(), scripts::guard(g)],
            Some(vec!["gantry-step".into(), script]),
        ),
        (None, Some(script)) => (
            vec!["/bin/sh".into(), "-e".into(), "-c".into(), script],
            None,
        ),
        (_, _) => (command, None),
    };
    // Under `restricted` the step runs as `restricted_uid`, which images rarely know: its HOME
    // is then `/`, where it cannot write (`go` failed on the real node: "failed to initialize
    // build cache at /.cache/go-build: mkdir /.cache: permission denied"). A `run` step gets
    // HOME=/tmp, as the clone has, unless the job or the step sets HOME.
    if ctx.security == SecurityLevel::Restricted
        && matches!(step.kind, StepKind::Run { .. })
        && !env_vars.iter().any(|e| e.name == "HOME")
    {
        env_vars.push(env("HOME", "/tmp"));
    }
    let (command, args) = if matches!(step.kind, StepKind::Kaniko(_)) {
        // The executor's entrypoint stays; only its arguments are given.
        (None, Some(command))
    } else {
        (Some(command), args)
    };
    Ok(Container {
        name: names::step_container(index),
        image: Some(image),
        command,
        args,
        working_dir: Some(scripts::WORKSPACE.into()),
        env: Some(env_vars),
        volume_mounts: Some(mounts),
        security_context: Some(ctx.security_context(&caps)),
        // A failed executor writes no digest: its last log lines (the registry's refusal)
        // become the message, which the step's reason quotes.
        termination_message_policy: Some(
            if matches!(step.kind, StepKind::Kaniko(_)) {
                "FallbackToLogsOnError"
            } else {
                "File"
            }
            .into(),
        ),
        ..Container::default()
    })
}

/// `--context`, `--dockerfile`, destinations, cache, build args, target; the pushed digest goes
/// to the termination message, which the watcher reports.
pub(crate) fn kaniko_args(k: &KanikoStep) -> Vec<String> {
    let context = match k.context.trim_matches('/') {
        "" | "." => scripts::WORKSPACE.to_owned(),
        c => format!("{}/{c}", scripts::WORKSPACE),
    };
    let dockerfile = if k.dockerfile.is_empty() {
        "Dockerfile"
    } else {
        &k.dockerfile
    };
    let mut args = vec![
        format!("--context=dir://{context}"),
        format!("--dockerfile={context}/{dockerfile}"),
    ];
    args.extend(k.executor_args());
    args.push("--digest-file=/dev/termination-log".into());
    args
}

fn gitops_env(ctx: &Ctx<'_>, g: &GitopsStep) -> Vec<EnvVar> {
    let message = g
        .message
        .clone()
        .unwrap_or_else(|| ctx.job.gitops_message(g));
    let mut vars = vec![
        env("GITOPS_REPO", g.repo.clone()),
        env("GITOPS_BRANCH", g.branch.clone().unwrap_or_default()),
        env("GITOPS_PATH", g.path.clone()),
        env("GITOPS_IMAGE", g.image.clone()),
        env("GITOPS_TAG", g.tag.clone()),
        env("GITOPS_MESSAGE", message),
    ];
    if let Some(path) = &g.yaml_path {
        vars.push(env("GITOPS_YAML_PATH", path.clone()));
    }
    vars
}

/// A yq path Gantry is willing to paste into a yq expression.
fn valid_yaml_path(path: &str) -> bool {
    !path.is_empty()
        && path.split('.').all(|part| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-[]".contains(c))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_paths_are_plain_dotted_keys() {
        assert!(valid_yaml_path("spec.template.image.tag"));
        assert!(valid_yaml_path("images[0].tag"));
        assert!(!valid_yaml_path("a) | .b"));
        assert!(!valid_yaml_path("a..b"));
    }

    #[test]
    fn kaniko_arguments_are_absolute_and_report_the_digest() {
        let k = KanikoStep {
            context: "app".into(),
            destinations: vec!["r/app:1".into()],
            cache: true,
            ..KanikoStep::default()
        };
        assert_eq!(
            kaniko_args(&k),
            [
                "--context=dir:///workspace/app",
                "--dockerfile=/workspace/app/Dockerfile",
                "--destination=r/app:1",
                "--cache=true",
                "--cache-repo=r/app/cache",
                "--digest-file=/dev/termination-log",
            ]
        );
    }
}
