//! `kaniko` and `trivy` steps: the real tools when they are installed, a clear failure when not.
//! Never a silent success.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use gantry_core::{KanikoStep, TrivyStep};

use crate::job::{StepContext, StepResult};

/// Builds and pushes an image with Kaniko's `executor`.
pub(crate) async fn kaniko(ctx: &mut StepContext<'_>, step: &KanikoStep) -> StepResult {
    if step.destinations.is_empty() {
        let reason = "kaniko step has no destination to push to";
        ctx.system(reason).await;
        return StepResult::failure(reason);
    }
    let Some(executor) = find_on_path("executor", ctx.env.get("PATH").map(String::as_str)) else {
        let reason = "kaniko steps need the Kubernetes backend or the `executor` binary on PATH";
        ctx.system(reason).await;
        return StepResult::failure(reason);
    };
    if let Some(secret) = &step.registry_secret {
        let note = format!(
            "registry secret {secret:?} is not mounted locally; executor uses its own Docker config"
        );
        ctx.system(note).await;
    }
    let mut command = ctx.command(&executor);
    command.args(kaniko_args(step, ctx.workspace));
    StepResult::of(ctx.run(command).await)
}

/// Scans an image with `trivy`; findings at the chosen severities fail the step.
pub(crate) async fn trivy(ctx: &mut StepContext<'_>, step: &TrivyStep) -> StepResult {
    let Some(trivy) = find_on_path("trivy", ctx.env.get("PATH").map(String::as_str)) else {
        let reason = "trivy steps need the Kubernetes backend or the `trivy` binary on PATH";
        ctx.system(reason).await;
        return StepResult::failure(reason);
    };
    if let Some(secret) = &step.registry_secret {
        let note = format!(
            "registry secret {secret:?} is not mounted locally; trivy uses its own registry credentials"
        );
        ctx.system(note).await;
    }
    // The same script as on Kubernetes (gantry_core::trivy): one scan into a JSON report,
    // the gate and the table from it, and the summary into a file of our own.
    let scratch = match tempfile::Builder::new().prefix("gantry-trivy-").tempdir() {
        Ok(dir) => dir,
        Err(e) => {
            let reason = format!("cannot make a scratch directory for trivy's report: {e}");
            ctx.system(&reason).await;
            return StepResult::failure(reason);
        }
    };
    let summary_file = scratch.path().join("summary");
    let mut command = ctx.command("/bin/sh");
    command
        .arg("-e")
        .arg("-c")
        .arg(gantry_core::trivy::SCRIPT)
        .envs(gantry_core::trivy::env(step, None))
        .env("GANTRY_TRIVY_REPORT", scratch.path().join("report.json"))
        .env("GANTRY_TRIVY_SUMMARY", &summary_file);
    // The script calls `trivy` by name: the one found above comes first.
    if let Some(dir) = trivy.parent() {
        let path = ctx
            .env
            .get("PATH")
            .map_or(String::new(), |p| format!(":{p}"));
        command.env("PATH", format!("{}{path}", dir.display()));
    }
    let mut result = StepResult::of(ctx.run(command).await);
    let written = std::fs::read_to_string(&summary_file).unwrap_or_default();
    if result.outcome.exit_code.is_some() {
        gantry_core::trivy::report(step, &written, &mut result.outcome);
    }
    result
}

/// `executor` arguments for a step, with the context and Dockerfile made absolute.
pub(crate) fn kaniko_args(step: &KanikoStep, workspace: &Path) -> Vec<String> {
    let context = workspace.join(or_default(&step.context, "."));
    let dockerfile = context.join(or_default(&step.dockerfile, "Dockerfile"));
    let mut args = vec![
        format!("--context={}", context.display()),
        format!("--dockerfile={}", dockerfile.display()),
    ];
    args.extend(step.executor_args());
    args
}

fn or_default<'a>(value: &'a str, default: &'a str) -> &'a str {
    if value.is_empty() { default } else { value }
}

/// The first executable file called `name` in a `PATH`-like list of directories.
pub(crate) fn find_on_path(name: &str, path: Option<&str>) -> Option<PathBuf> {
    path?
        .split(':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(dir).join(name))
        .find(|candidate| {
            candidate
                .metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn kaniko_arguments_follow_the_step() {
        let step = KanikoStep {
            context: "app".into(),
            dockerfile: String::new(),
            destinations: vec![
                "reg.example/app:abc".into(),
                "reg.example/app:latest".into(),
            ],
            build_args: BTreeMap::from([("VERSION".into(), "1.0".into())]),
            cache: true,
            cache_repo: None,
            target: Some("runtime".into()),
            registry_secret: None,
        };
        assert_eq!(
            kaniko_args(&step, Path::new("/ws")),
            vec![
                "--context=/ws/app",
                "--dockerfile=/ws/app/Dockerfile",
                "--destination=reg.example/app:abc",
                "--destination=reg.example/app:latest",
                "--cache=true",
                "--cache-repo=reg.example/app/cache",
                "--build-arg=VERSION=1.0",
                "--target=runtime",
            ]
        );
    }

    #[test]
    fn tools_are_found_only_when_executable() {
        let dir = tempfile::tempdir().unwrap();
        let tool = dir.path().join("trivy");
        std::fs::write(&tool, "#!/bin/sh\n").unwrap();
        let path = dir.path().to_str().unwrap().to_owned();
        assert_eq!(find_on_path("trivy", Some(&path)), None);
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(find_on_path("trivy", Some(&path)), Some(tool));
        assert_eq!(find_on_path("executor", Some(&path)), None);
        assert_eq!(find_on_path("trivy", None), None);
    }
}
