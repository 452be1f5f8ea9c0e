//! `gitops` steps: clone a configuration repository, set an image tag, commit, push — and when
//! someone else pushed first, fetch, redo the edit on top of theirs and push again.

mod edit;

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use gantry_core::{GitopsStep, Stream};
use tempfile::TempDir;

use crate::job::{StepContext, StepResult};
use crate::process::{Capture, Ending};
use crate::workspace;

/// How many times a push rejected because the branch moved is tried again.
const PUSH_RETRIES: usize = 3;

const KUSTOMIZATION_FILES: [&str; 3] = ["kustomization.yaml", "kustomization.yml", "Kustomization"];

pub(crate) async fn bump(ctx: &mut StepContext<'_>, step: &GitopsStep) -> StepResult {
    match try_bump(ctx, step).await {
        Ok(result) | Err(result) => result,
    }
}

/// Fails the step with `reason`, saying it in the log too.
async fn fail(ctx: &mut StepContext<'_>, reason: String) -> StepResult {
    ctx.system(format!("gitops: {reason}")).await;
    StepResult::failure(reason)
}

async fn try_bump(ctx: &mut StepContext<'_>, step: &GitopsStep) -> Result<StepResult, StepResult> {
    for (what, value) in [
        ("repo", &step.repo),
        ("image", &step.image),
        ("tag", &step.tag),
    ] {
        if value.trim().is_empty() {
            return Err(fail(ctx, format!("the step has no {what}")).await);
        }
    }
    let Some(relative) = inside_repo(&step.path) else {
        let reason = format!(
            "path {:?} must be relative and stay inside the repository",
            step.path
        );
        return Err(fail(ctx, reason).await);
    };
    // Beside the workspace, named after it: should Gantry die during the step, the next start
    // removes it with the workspace (see `leftovers`).
    let (root, prefix) = match (ctx.workspace.parent(), ctx.workspace.file_name()) {
        (Some(parent), Some(name)) => (
            parent.to_owned(),
            format!(
                "{}{}",
                name.to_string_lossy(),
                crate::leftovers::SCRATCH_INFIX
            ),
        ),
        _ => (
            ctx.config
                .work_root
                .clone()
                .unwrap_or_else(std::env::temp_dir),
            "gantry-gitops-".to_owned(),
        ),
    };
    let scratch = match tempfile::Builder::new().prefix(&prefix).tempdir_in(&root) {
        Ok(dir) => dir,
        Err(e) => {
            let reason = format!("cannot create a directory in {}: {e}", root.display());
            return Err(fail(ctx, reason).await);
        }
    };
    let result = bump_in(ctx, step, &relative, &scratch).await;
    let _ = tokio::task::spawn_blocking(move || scratch.close()).await;
    result
}

async fn bump_in(
    ctx: &mut StepContext<'_>,
    step: &GitopsStep,
    relative: &Path,
    scratch: &TempDir,
) -> Result<StepResult, StepResult> {
    let env = git_env(ctx, step).await;
    let clone = scratch.path().join("repo");
    let clone_str = clone.to_string_lossy().into_owned();
    let mut args = vec!["clone", "-q"];
    if let Some(branch) = &step.branch {
        args.extend(["--branch", branch.as_str()]);
    }
    args.extend(["--", step.repo.as_str(), clone_str.as_str()]);
    git(ctx, scratch.path(), &env, &args).await?;
    let branch = match &step.branch {
        Some(branch) => branch.clone(),
        None => {
            let head = git(
                ctx,
                &clone,
                &env,
                &["symbolic-ref", "-q", "--short", "HEAD"],
            )
            .await?;
            head.text(Stream::Stdout).trim().to_owned()
        }
    };
    let message = step
        .message
        .clone()
        .unwrap_or_else(|| ctx.job.gitops_message(step));
    let target = format!("HEAD:refs/heads/{branch}");
    for attempt in 0..=PUSH_RETRIES {
        let file = match edit_file(&clone, relative, step).await {
            Ok(Some(file)) => file,
            Ok(None) => {
                let said = format!(
                    "{} is already at {} in {} on {branch}: nothing to commit",
                    step.image, step.tag, step.path
                );
                ctx.system(format!("gitops: {said}")).await;
                return Ok(StepResult::success().with_summary(said));
            }
            Err(reason) => return Err(fail(ctx, reason).await),
        };
        git(ctx, &clone, &env, &["add", "--", &file]).await?;
        git(ctx, &clone, &env, &["commit", "-q", "-m", &message]).await?;
        let push = workspace::git(&clone, &env, &["push", "-q", "origin", &target]);
        let (ending, out) = ctx.run_capturing(push).await;
        if ending.succeeded() {
            let head = git(ctx, &clone, &env, &["rev-parse", "--short=12", "HEAD"]).await?;
            let said = format!(
                "pushed {} to {branch} ({}: {} at {})",
                head.text(Stream::Stdout).trim(),
                step.path,
                step.image,
                step.tag
            );
            ctx.system(format!("gitops: {said}")).await;
            return Ok(StepResult::success().with_summary(said));
        }
        let stderr = out.text(Stream::Stderr);
        if !matches!(ending, Ending::Exited(_)) || !branch_moved(&stderr) || attempt == PUSH_RETRIES
        {
            return Err(git_failure(ctx, "git push", ending, &out).await);
        }
        ctx.system(format!(
            "gitops: {branch} moved while we pushed; fetching and trying again ({} of {PUSH_RETRIES})",
            attempt + 1
        ))
        .await;
        git(ctx, &clone, &env, &["fetch", "-q", "origin", &branch]).await?;
        git(ctx, &clone, &env, &["reset", "-q", "--hard", "FETCH_HEAD"]).await?;
    }
    Err(fail(ctx, "push kept being rejected".into()).await)
}

/// Did a push fail because the branch moved on since we fetched it?
fn branch_moved(stderr: &str) -> bool {
    [
        "non-fast-forward",
        "fetch first",
        "cannot lock ref",
        "failed to update ref",
        "stale info",
    ]
    .iter()
    .any(|sign| stderr.contains(sign))
}

/// Runs a git command as part of the step; a failure becomes the step's result.
async fn git(
    ctx: &mut StepContext<'_>,
    dir: &Path,
    env: &BTreeMap<String, String>,
    args: &[&str],
) -> Result<Capture, StepResult> {
    let (ending, out) = ctx.run_capturing(workspace::git(dir, env, args)).await;
    if ending.succeeded() {
        Ok(out)
    } else {
        let command = format!("git {}", args.first().copied().unwrap_or_default());
        Err(git_failure(ctx, &command, ending, &out).await)
    }
}

async fn git_failure(
    ctx: &mut StepContext<'_>,
    command: &str,
    ending: Ending,
    out: &Capture,
) -> StepResult {
    match ending {
        Ending::Exited(code) => {
            let stderr = out.text(Stream::Stderr);
            let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
            let reason = match last {
                Some(line) => format!("`{command}` failed with exit code {code}: {}", line.trim()),
                None => format!("`{command}` failed with exit code {code}"),
            };
            fail(ctx, reason).await
        }
        ending => StepResult::of(ending),
    }
}

/// Makes the edit in the clone. `Some(file)` when the file changed, `None` when it already
/// had the tag.
async fn edit_file(
    clone: &Path,
    relative: &Path,
    step: &GitopsStep,
) -> Result<Option<String>, String> {
    let file = match &step.yaml_path {
        Some(_) => relative.to_path_buf(),
        None => KUSTOMIZATION_FILES
            .iter()
            .map(|name| relative.join(name))
            .find(|f| clone.join(f).is_file())
            .ok_or_else(|| {
                format!(
                    "no kustomization.yaml in {:?} of {}",
                    relative.display().to_string(),
                    step.repo
                )
            })?,
    };
    let shown = file.display().to_string();
    let path = clone.join(&file);
    let text = tokio::fs::read_to_string(&path)
        .await
        .map_err(|e| format!("cannot read {shown}: {e}"))?;
    let edited = match &step.yaml_path {
        Some(yaml_path) => edit::set_path(&text, yaml_path, &step.tag),
        None => edit::set_kustomize_tag(&text, &step.image, &step.tag),
    }
    .map_err(|e| format!("cannot edit {shown}: {e}"))?;
    if edited == text {
        return Ok(None);
    }
    tokio::fs::write(&path, edited)
        .await
        .map_err(|e| format!("cannot write {shown}: {e}"))?;
    Ok(Some(shown))
}

/// `path` as a relative path that cannot leave the repository.
fn inside_repo(path: &str) -> Option<PathBuf> {
    let path = Path::new(path);
    path.components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        .then(|| path.to_path_buf())
}

/// The step's environment, plus a committer identity and, when the step names a token secret
/// that the job was given, an `Authorization` header for HTTP(S) remotes. The header goes
/// through `GIT_CONFIG_*` variables, so the token is in no URL, argument or file.
async fn git_env(ctx: &mut StepContext<'_>, step: &GitopsStep) -> BTreeMap<String, String> {
    let mut env = ctx.env.clone();
    for (key, value) in [
        ("GIT_AUTHOR_NAME", "Gantry"),
        ("GIT_AUTHOR_EMAIL", "gantry@localhost"),
        ("GIT_COMMITTER_NAME", "Gantry"),
        ("GIT_COMMITTER_EMAIL", "gantry@localhost"),
    ] {
        env.entry(key.to_owned())
            .or_insert_with(|| value.to_owned());
    }
    let Some(secret) = &step.token_secret else {
        return env;
    };
    let job = ctx.job;
    let token = job
        .spec
        .secrets
        .iter()
        .filter(|s| s.secret == *secret)
        .find_map(|s| job.secret_values.get(&s.env))
        .or_else(|| job.secret_values.get(secret));
    match token {
        Some(token) if step.repo.starts_with("https://") || step.repo.starts_with("http://") => {
            let header = format!(
                "Authorization: Basic {}",
                base64(format!("x-access-token:{}", token.expose()).as_bytes())
            );
            add_git_config(&mut env, "http.extraHeader", &header);
        }
        Some(_) => {}
        None => {
            ctx.system(format!(
                "gitops: token secret {secret:?} was not given to this job; pushing without it"
            ))
            .await;
        }
    }
    env
}

fn add_git_config(env: &mut BTreeMap<String, String>, key: &str, value: &str) {
    let n: usize = env
        .get("GIT_CONFIG_COUNT")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    env.insert(format!("GIT_CONFIG_KEY_{n}"), key.to_owned());
    env.insert(format!("GIT_CONFIG_VALUE_{n}"), value.to_owned());
    env.insert("GIT_CONFIG_COUNT".into(), (n + 1).to_string());
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard_alphabet() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"x-access-token:t0k"), "eC1hY2Nlc3MtdG9rZW46dDBr");
    }

    #[test]
    fn git_config_entries_are_appended() {
        let mut env = BTreeMap::from([("GIT_CONFIG_COUNT".to_owned(), "1".to_owned())]);
        add_git_config(&mut env, "http.extraHeader", "X: y");
        assert_eq!(env["GIT_CONFIG_COUNT"], "2");
        assert_eq!(env["GIT_CONFIG_KEY_1"], "http.extraHeader");
        assert_eq!(env["GIT_CONFIG_VALUE_1"], "X: y");
    }

    #[test]
    fn paths_must_stay_inside_the_repository() {
        assert!(inside_repo("overlays/prod").is_some());
        assert!(inside_repo("").is_some());
        assert!(inside_repo("./values.yaml").is_some());
        assert!(inside_repo("../other").is_none());
        assert!(inside_repo("/etc/passwd").is_none());
        assert!(inside_repo("a/../../b").is_none());
    }

    #[test]
    fn moved_branches_are_recognised() {
        assert!(branch_moved(
            " ! [rejected]        HEAD -> main (fetch first)"
        ));
        assert!(branch_moved(
            " ! [rejected] HEAD -> main (non-fast-forward)"
        ));
        assert!(branch_moved(
            " ! [remote rejected] HEAD -> main (failed to update ref)"
        ));
        assert!(!branch_moved(
            " ! [remote rejected] HEAD -> main (pre-receive hook declined)"
        ));
    }
}
