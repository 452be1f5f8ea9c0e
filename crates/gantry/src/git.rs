//! The few questions `gantry run` asks of the repository it runs in, answered by the `git` CLI.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

fn git(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .context("cannot run `git`: is it installed and on PATH?")?;
    if !out.status.success() {
        bail!(
            "`git {}` failed in {}: {}",
            args.join(" "),
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The top directory of the repository that holds `dir`.
pub fn toplevel(dir: &Path) -> anyhow::Result<PathBuf> {
    git(dir, &["rev-parse", "--show-toplevel"])
        .map(PathBuf::from)
        .with_context(|| format!("{} is not inside a git repository", dir.display()))
}

/// The full commit id a revision names.
pub fn resolve(dir: &Path, rev: &str) -> anyhow::Result<String> {
    git(
        dir,
        &[
            "rev-parse",
            "--verify",
            "--quiet",
            &format!("{rev}^{{commit}}"),
        ],
    )
    .with_context(|| format!("`{rev}` does not name a commit"))
}

/// The branch checked out, if any (None when HEAD is detached).
pub fn current_branch(dir: &Path) -> Option<String> {
    git(dir, &["symbolic-ref", "--quiet", "--short", "HEAD"]).ok()
}

/// Whether tracked files differ from HEAD.
pub fn has_uncommitted_changes(dir: &Path) -> bool {
    git(dir, &["status", "--porcelain", "--untracked-files=no"]).is_ok_and(|s| !s.is_empty())
}

/// A commit of the working tree's tracked changes on top of HEAD, without touching the index,
/// the working tree or the stash list. None when there is nothing to snapshot.
pub fn snapshot_worktree(dir: &Path) -> anyhow::Result<Option<String>> {
    let sha = git(dir, &["stash", "create", "gantry run --worktree"])?;
    Ok((!sha.is_empty()).then_some(sha))
}
