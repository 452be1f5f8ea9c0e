//! A job's workspace: a temporary directory holding exactly the commit the job is for.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use gantry_core::{Checkout, Stream};
use tempfile::TempDir;
use tokio::process::Command;

use crate::Error;
use crate::process::{self, Capture, Ending, Stop};

/// A temporary directory, removed when the job is done unless asked to keep it.
#[derive(Debug)]
pub(crate) struct Workspace {
    dir: TempDir,
    keep: bool,
}

impl Workspace {
    pub(crate) fn create(root: Option<&Path>, keep: bool) -> Result<Self, Error> {
        let root = root.map_or_else(std::env::temp_dir, Path::to_path_buf);
        let dir = tempfile::Builder::new()
            .prefix("gantry-job-")
            .tempdir_in(&root)
            .map_err(|source| Error::Workspace { root, source })?;
        Ok(Self { dir, keep })
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Removes the directory (off the async threads: it may be large), or keeps it and says
    /// where it is.
    pub(crate) async fn finish(self) -> Option<PathBuf> {
        if self.keep {
            return Some(self.dir.keep());
        }
        let dir = self.dir;
        let path = dir.path().to_path_buf();
        let removed = tokio::task::spawn_blocking(move || dir.close()).await;
        if let Ok(Err(e)) = removed {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove workspace");
        }
        None
    }
}

/// The environment every process Gantry starts inherits from Gantry's own: enough for tools to
/// find themselves and a home, nothing else.
pub(crate) fn base_env() -> BTreeMap<String, String> {
    ["PATH", "HOME", "USER", "LANG", "TERM", "TMPDIR"]
        .into_iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_owned(), v)))
        .collect()
}

/// A `git` command in `dir` that never prompts and speaks English (its messages are matched).
pub(crate) fn git(dir: &Path, env: &BTreeMap<String, String>, args: &[&str]) -> Command {
    let mut command = Command::new("git");
    command
        .args(args)
        .current_dir(dir)
        .env_clear()
        .envs(env)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("LC_ALL", "C");
    command
}

/// Runs a git command to its end, keeping its output for an error message.
pub(crate) async fn run_git(
    dir: &Path,
    env: &BTreeMap<String, String>,
    args: &[&str],
    stop: &Stop,
) -> Result<Capture, Error> {
    let mut out = Capture::default();
    let ending = process::run(git(dir, env, args), &mut out, stop).await;
    match ending {
        Ending::Exited(0) => Ok(out),
        Ending::TimedOut(t) => Err(Error::TimedOut(t)),
        Ending::Cancelled => Err(Error::Cancelled),
        ending => Err(Error::Git {
            command: format!("git {}", args.join(" ")),
            ending: describe(&ending),
            stderr: out.text(Stream::Stderr),
        }),
    }
}

fn describe(ending: &Ending) -> String {
    match ending {
        Ending::Exited(code) => format!("exit code {code}"),
        Ending::Signalled(signal) => format!("killed by {signal}"),
        Ending::Failed(why) => why.clone(),
        Ending::TimedOut(t) => t.to_string(),
        Ending::Cancelled => "cancelled".into(),
    }
}

/// Checks out exactly `checkout.sha` of `checkout.repo.clone_url` into `dir`, without a branch.
pub(crate) async fn check_out(dir: &Path, checkout: &Checkout, stop: &Stop) -> Result<(), Error> {
    let sha = checkout.sha.as_str();
    if !(4..=64).contains(&sha.len()) || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::BadSha(sha.to_owned()));
    }
    let url = checkout.repo.clone_url.as_str();
    let env = base_env();
    run_git(dir, &env, &["init", "-q"], stop).await?;
    let shallow = run_git(
        dir,
        &env,
        &["fetch", "-q", "--depth", "1", "--", url, sha],
        stop,
    )
    .await;
    match shallow {
        Ok(_) => {}
        Err(e @ (Error::Cancelled | Error::TimedOut(_))) => return Err(e),
        // Servers may refuse a fetch by sha (no `allowReachableSHA1InWant`): fetch the branches
        // and tags, and the ref the commit came by, then pick the commit out.
        Err(_) => {
            let mut refspecs = vec![
                "+refs/heads/*:refs/remotes/origin/*".to_owned(),
                "+refs/tags/*:refs/tags/*".to_owned(),
            ];
            let git_ref = checkout.git_ref.as_str();
            if git_ref.starts_with("refs/")
                && !git_ref.starts_with("refs/heads/")
                && !git_ref.starts_with("refs/tags/")
            {
                refspecs.push(format!("+{git_ref}:refs/gantry/trigger"));
            }
            let mut args = vec!["fetch", "-q", "--", url];
            args.extend(refspecs.iter().map(String::as_str));
            run_git(dir, &env, &args, stop).await?;
        }
    }
    run_git(dir, &env, &["checkout", "-q", "--detach", sha], stop).await?;
    Ok(())
}
