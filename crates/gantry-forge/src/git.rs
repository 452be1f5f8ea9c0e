//! Reading pipeline files through git, for repositories Gantry has no API access to: a shallow
//! fetch of exactly the commit into a bare cache repository, then `git cat-file` / `git
//! ls-tree`. The server must allow fetching a commit by its id (GitHub, GitLab, Gitea and
//! Forgejo do; a plain `git daemon` needs `uploadpack.allowAnySHA1InWant`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use gantry_core::{ForgeError, RepoRef};
use sha2::{Digest, Sha256};
use tokio::process::Command;

/// How long one git command may take unless told otherwise.
pub const DEFAULT_GIT_TIMEOUT: Duration = Duration::from_secs(60);

/// Reads files at a commit with git. One bare repository per clone URL under `cache_dir`
/// keeps fetched commits, so a second read of the same commit does not fetch again.
#[derive(Clone, Debug)]
pub struct GitReader {
    cache_dir: PathBuf,
    timeout: Duration,
    /// One lock per cache repository: git's shallow-file update does not like concurrent
    /// fetches into the same repository.
    locks: Arc<Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>>,
}

enum Failure {
    Timeout,
    Failed(String),
    Spawn(std::io::Error),
}

impl GitReader {
    pub fn new(cache_dir: impl Into<PathBuf>) -> Self {
        Self {
            cache_dir: cache_dir.into(),
            timeout: DEFAULT_GIT_TIMEOUT,
            locks: Arc::default(),
        }
    }

    /// How long one git command (a fetch, a read) may take.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// A file's contents at exactly `sha`, or `None` when it does not exist there. A commit
    /// the server does not have is an error (404), not a missing file.
    pub async fn read_file(
        &self,
        repo: &RepoRef,
        sha: &str,
        path: &str,
    ) -> Result<Option<Vec<u8>>, ForgeError> {
        let dir = self.fetch(repo, sha).await?;
        let path = path.trim_matches('/');
        let object = format!("{sha}:{path}");
        // `-t` first: a missing path and a directory are both "no such file".
        match self.git(&dir, &["cat-file", "-t", &object]).await {
            Ok(kind) if kind.trim_ascii() == b"blob" => {}
            Ok(_) | Err(Failure::Failed(_)) => return Ok(None),
            Err(e) => return Err(self.error(repo, e)),
        }
        self.git(&dir, &["cat-file", "blob", &object])
            .await
            .map(Some)
            .map_err(|e| self.error(repo, e))
    }

    /// The names of the files directly inside `dir` at `sha` (empty when it does not exist).
    pub async fn list_dir(
        &self,
        repo: &RepoRef,
        sha: &str,
        dir: &str,
    ) -> Result<Vec<String>, ForgeError> {
        let repo_dir = self.fetch(repo, sha).await?;
        let dir = dir.trim_matches('/');
        let tree = if dir.is_empty() {
            sha.to_owned()
        } else {
            format!("{sha}:{dir}")
        };
        let listing = match self.git(&repo_dir, &["ls-tree", "-z", &tree]).await {
            Ok(out) => out,
            Err(Failure::Failed(_)) => return Ok(Vec::new()),
            Err(e) => return Err(self.error(repo, e)),
        };
        // Entries are "<mode> <type> <id>\t<name>\0".
        Ok(listing
            .split(|&b| b == 0)
            .filter_map(|entry| {
                let tab = entry.iter().position(|&b| b == b'\t')?;
                let (meta, name) = (&entry[..tab], &entry[tab + 1..]);
                let is_blob = meta.split(|&b| b == b' ').nth(1) == Some(b"blob");
                is_blob.then(|| String::from_utf8_lossy(name).into_owned())
            })
            .collect())
    }

    /// The commit a ref names on the server (`git ls-remote`), for a run started by hand. A
    /// short name is tried as a branch, then as a tag.
    pub async fn resolve_ref(
        &self,
        repo: &RepoRef,
        git_ref: &str,
    ) -> Result<(String, String), ForgeError> {
        if repo.clone_url.starts_with('-') || git_ref.starts_with('-') {
            return Err(api_error(repo, 400, "invalid clone URL or ref".to_owned()));
        }
        let candidates: Vec<String> = if git_ref.starts_with("refs/") {
            vec![git_ref.to_owned()]
        } else {
            vec![
                format!("refs/heads/{git_ref}"),
                format!("refs/tags/{git_ref}"),
            ]
        };
        let mut args = vec!["ls-remote", "--", repo.clone_url.as_str()];
        args.extend(candidates.iter().map(String::as_str));
        let cwd = std::env::temp_dir();
        let out = self
            .git(&cwd, &args)
            .await
            .map_err(|e| self.error(repo, e))?;
        let text = String::from_utf8_lossy(&out);
        for wanted in &candidates {
            // Annotated tags list the tag object, then `^{}` with the commit it points at.
            let peeled = format!("{wanted}^{{}}");
            let line = text.lines().find(|l| l.ends_with(&peeled)).or_else(|| {
                text.lines()
                    .find(|l| l.split('\t').nth(1) == Some(wanted.as_str()))
            });
            if let Some(sha) = line.and_then(|l| l.split('\t').next()) {
                return Ok((wanted.clone(), sha.to_owned()));
            }
        }
        Err(api_error(
            repo,
            404,
            format!("no ref `{git_ref}` in {}", redact(&repo.clone_url)),
        ))
    }

    /// The paths that differ between two commits (`git diff --name-only before after`), for a
    /// push whose payload did not list every changed path (a forced push, a truncated commit
    /// list). Comparing two trees needs no history, so both commits are fetched at depth 1. A
    /// `before` the server no longer has (force-pushed away) is an error: the caller then knows
    /// the paths are unknown.
    pub async fn changed_paths(
        &self,
        repo: &RepoRef,
        before: &str,
        after: &str,
    ) -> Result<Vec<String>, ForgeError> {
        let dir = self.fetch(repo, before).await?;
        self.fetch(repo, after).await?;
        let out = self
            .git(
                &dir,
                &["diff", "--name-only", "-z", "--no-renames", before, after],
            )
            .await
            .map_err(|e| self.error(repo, e))?;
        let mut paths: Vec<String> = out
            .split(|&b| b == 0)
            .filter(|p| !p.is_empty())
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect();
        paths.sort();
        Ok(paths)
    }

    /// it does not.
    async fn fetch(&self, repo: &RepoRef, sha: &str) -> Result<PathBuf, ForgeError> {
        if !is_object_id(sha) {
            return Err(api_error(
                repo,
                400,
                format!("{sha:?} is not a full commit id"),
            ));
        }
        if repo.clone_url.starts_with('-') {
            return Err(api_error(repo, 400, "invalid clone URL".to_owned()));
        }
        let dir = self
            .cache_dir
            .join(format!("{}.git", cache_key(&repo.clone_url)));
        let lock = self
            .locks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(dir.clone())
            .or_default()
            .clone();
        let _guard = lock.lock().await;
        if !dir.join("HEAD").exists() {
            tokio::fs::create_dir_all(&dir)
                .await
                .map_err(|e| self.error(repo, Failure::Spawn(e)))?;
            self.git(&dir, &["init", "--bare", "--quiet"])
                .await
                .map_err(|e| self.error(repo, e))?;
        }
        let commit = format!("{sha}^{{commit}}");
        if self.git(&dir, &["cat-file", "-e", &commit]).await.is_ok() {
            return Ok(dir);
        }
        let fetched = self
            .git(
                &dir,
                &[
                    "fetch",
                    "--quiet",
                    "--depth=1",
                    "--no-tags",
                    "--no-write-fetch-head",
                    "--",
                    &repo.clone_url,
                    sha,
                ],
            )
            .await;
        match fetched {
            Ok(_) => Ok(dir),
            Err(Failure::Failed(stderr)) if is_missing_commit(&stderr) => Err(api_error(
                repo,
                404,
                format!("commit {sha} not found in {}", redact(&repo.clone_url)),
            )),
            Err(e) => Err(self.error(repo, e)),
        }
    }

    /// Runs git in `dir`, bounded by the timeout; its output, or why it failed.
    async fn git(&self, dir: &Path, args: &[&str]) -> Result<Vec<u8>, Failure> {
        let mut command = Command::new("git");
        command
            .arg("-C")
            .arg(dir)
            .args(args)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_ASKPASS", "true")
            .env("SSH_ASKPASS", "true")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            // No automatic gc or maintenance in the cache: a background gc started by one fetch
            // rewrites the `shallow` file under the next fetch ("shallow file has changed since
            // we read it"), and many depth-1 fetches of new commits trigger one quickly.
            .env("GIT_CONFIG_COUNT", "2")
            .env("GIT_CONFIG_KEY_0", "gc.auto")
            .env("GIT_CONFIG_VALUE_0", "0")
            .env("GIT_CONFIG_KEY_1", "maintenance.auto")
            .env("GIT_CONFIG_VALUE_1", "false")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child = command.spawn().map_err(Failure::Spawn)?;
        let output = tokio::time::timeout(self.timeout, child.wait_with_output())
            .await
            .map_err(|_| Failure::Timeout)?
            .map_err(Failure::Spawn)?;
        if output.status.success() {
            Ok(output.stdout)
        } else {
            Err(Failure::Failed(
                String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            ))
        }
    }

    fn error(&self, repo: &RepoRef, failure: Failure) -> ForgeError {
        let message = match failure {
            Failure::Timeout => format!(
                "git timed out after {}s for {}",
                self.timeout.as_secs_f32(),
                redact(&repo.clone_url)
            ),
            Failure::Failed(stderr) => format!("git failed: {}", redact(&stderr)),
            Failure::Spawn(e) => format!("cannot run git: {e}"),
        };
        ForgeError::Unreachable {
            forge: repo.forge,
            message,
        }
    }
}

fn api_error(repo: &RepoRef, status: u16, message: String) -> ForgeError {
    ForgeError::Api {
        forge: repo.forge,
        status,
        message,
        retry_after: None,
    }
}

/// What git says when the server does not have the commit asked for.
fn is_missing_commit(stderr: &str) -> bool {
    [
        "not our ref",
        "couldn't find remote ref",
        "no such remote ref",
        "unadvertised object",
        "bad object",
        "not a valid object",
    ]
    .iter()
    .any(|needle| stderr.contains(needle))
}

/// A full SHA-1 or SHA-256 object id: anything else could be mistaken for an option or a ref.
fn is_object_id(sha: &str) -> bool {
    matches!(sha.len(), 40 | 64) && sha.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The cache directory's name for a clone URL, without its credentials.
fn cache_key(clone_url: &str) -> String {
    let digest = Sha256::digest(redact(clone_url).as_bytes());
    digest[..12].iter().map(|b| format!("{b:02x}")).collect()
}

/// Any `user:password@` in URLs within `text` replaced, so tokens in clone URLs never reach a
/// message.
pub(crate) fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        let authority_end = tail
            .find(|c: char| c == '/' || c.is_whitespace() || c == '\'' || c == '"')
            .unwrap_or(tail.len());
        match tail[..authority_end].rfind('@') {
            Some(userinfo_end) => {
                out.push_str("***@");
                rest = &tail[userinfo_end + 1..];
            }
            None => rest = tail,
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_reach_messages() {
        assert_eq!(
            redact(
                "fatal: unable to access 'https://x-access-token:ghs_SECRET@github.com/a/b.git/': 403"
            ),
            "fatal: unable to access 'https://***@github.com/a/b.git/': 403"
        );
        assert_eq!(
            redact("https://github.com/a/b.git"),
            "https://github.com/a/b.git"
        );
        assert_eq!(redact("no url here"), "no url here");
        assert_eq!(
            cache_key("https://tok@h/a.git"),
            cache_key("https://other@h/a.git")
        );
    }

    #[test]
    fn only_full_object_ids_are_fetched() {
        assert!(is_object_id(&"a".repeat(40)));
        assert!(is_object_id(&"0".repeat(64)));
        assert!(!is_object_id("--upload-pack=evil"));
        assert!(!is_object_id("main"));
        assert!(!is_object_id(&"g".repeat(40)));
    }
}
