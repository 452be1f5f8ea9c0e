//! The git fallback reader against a real repository served by `git daemon` on loopback, and
//! from a path.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use gantry_core::{ForgeError, ForgeKind, RepoRef};
use gantry_forge::GitReader;

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A repository with two commits; returns their ids.
fn make_repo(dir: &Path) -> (String, String) {
    std::fs::create_dir_all(dir.join(".gantry/sub")).unwrap();
    git(dir, &["init", "--quiet", "--initial-branch=main"]);
    std::fs::write(dir.join(".gantry.yaml"), "on: push # one\n").unwrap();
    std::fs::write(dir.join(".gantry/a.yaml"), "a\n").unwrap();
    std::fs::write(dir.join(".gantry/b.yaml"), "b\n").unwrap();
    std::fs::write(dir.join(".gantry/sub/c.yaml"), "c\n").unwrap();
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "--quiet", "-m", "one"]);
    let first = git(dir, &["rev-parse", "HEAD"]);
    std::fs::write(dir.join(".gantry.yaml"), "on: push # two\n").unwrap();
    git(dir, &["commit", "--quiet", "-am", "two"]);
    let second = git(dir, &["rev-parse", "HEAD"]);
    // Fetching by commit id, as GitHub, GitLab and Gitea allow.
    git(dir, &["config", "uploadpack.allowAnySHA1InWant", "true"]);
    (first, second)
}

fn repo(clone_url: String) -> RepoRef {
    RepoRef {
        forge: ForgeKind::Gitea,
        full_name: "acme/app".into(),
        clone_url,
        web_url: None,
        default_branch: Some("main".into()),
    }
}

struct Daemon(std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The `git-daemon` program itself: `git daemon` runs it as a child and a kill of `git` would
/// leave the daemon running (holding its port and every inherited file).
fn git_daemon_program() -> std::path::PathBuf {
    let out = std::process::Command::new("git")
        .arg("--exec-path")
        .output()
        .expect("cannot run `git --exec-path` (Debian package git)");
    std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("git-daemon")
}

async fn serve(base: &Path) -> (Daemon, u16) {
    let port = free_port();
    let child = Command::new(git_daemon_program())
        .args(["--reuseaddr", "--export-all", "--listen=127.0.0.1"])
        .arg(format!("--port={port}"))
        .arg(format!("--base-path={}", base.display()))
        .arg(base)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("git daemon");
    let daemon = Daemon(child);
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return (daemon, port);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("git daemon did not start on port {port}");
}

async fn exercise(reader: &GitReader, repo: &RepoRef, first: &str, second: &str) {
    assert_eq!(
        reader
            .read_file(repo, first, ".gantry.yaml")
            .await
            .unwrap()
            .as_deref(),
        Some(&b"on: push # one\n"[..])
    );
    assert_eq!(
        reader
            .read_file(repo, second, "/.gantry.yaml")
            .await
            .unwrap()
            .as_deref(),
        Some(&b"on: push # two\n"[..])
    );
    assert_eq!(
        reader
            .read_file(repo, second, "missing.yaml")
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        reader.read_file(repo, second, ".gantry").await.unwrap(),
        None,
        "a directory is not a file"
    );
    assert_eq!(
        reader.list_dir(repo, second, ".gantry").await.unwrap(),
        ["a.yaml", "b.yaml"]
    );
    assert_eq!(
        reader.list_dir(repo, second, "").await.unwrap(),
        [".gantry.yaml"]
    );
    assert!(
        reader
            .list_dir(repo, second, "nope")
            .await
            .unwrap()
            .is_empty()
    );

    let absent = "0123456789abcdef0123456789abcdef01234567";
    match reader.read_file(repo, absent, ".gantry.yaml").await {
        Err(ForgeError::Api {
            status: 404,
            message,
            ..
        }) => {
            assert!(message.contains(absent), "{message}")
        }
        other => panic!("a commit the server lacks: {other:?}"),
    }
    assert!(matches!(
        reader.read_file(repo, "main", ".gantry.yaml").await,
        Err(ForgeError::Api { status: 400, .. })
    ));
}

#[tokio::test]
async fn reads_files_at_a_commit_from_git_daemon() {
    let served = tempfile::tempdir().unwrap();
    let (first, second) = make_repo(&served.path().join("app"));
    let (_daemon, port) = serve(served.path()).await;
    let cache = tempfile::tempdir().unwrap();
    let reader = GitReader::new(cache.path()).with_timeout(Duration::from_secs(30));
    let repo = repo(format!("git://127.0.0.1:{port}/app"));
    exercise(&reader, &repo, &first, &second).await;
    assert_eq!(
        std::fs::read_dir(cache.path()).unwrap().count(),
        1,
        "one cache repository per clone URL"
    );
    // Fetched commits stay: with the daemon gone, the cache still answers.
    drop(_daemon);
    assert!(
        reader
            .read_file(&repo, &first, ".gantry.yaml")
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test]
async fn changed_paths_compare_two_commits() {
    let served = tempfile::tempdir().unwrap();
    let (first, second) = make_repo(served.path());
    let cache = tempfile::tempdir().unwrap();
    let reader = GitReader::new(cache.path());
    let repo = repo(format!("file://{}", served.path().display()));
    let paths = reader.changed_paths(&repo, &first, &second).await.unwrap();
    assert_eq!(paths, [".gantry.yaml"]);
    let missing = "0123456789abcdef0123456789abcdef01234567";
    assert!(reader.changed_paths(&repo, missing, &second).await.is_err());
}

#[tokio::test]
async fn resolve_ref_finds_branches_and_full_refs() {
    let served = tempfile::tempdir().unwrap();
    let (_, second) = make_repo(served.path());
    let cache = tempfile::tempdir().unwrap();
    let reader = GitReader::new(cache.path());
    let repo = repo(format!("file://{}", served.path().display()));
    let (full, sha) = reader.resolve_ref(&repo, "main").await.unwrap();
    assert_eq!(
        (full.as_str(), sha.as_str()),
        ("refs/heads/main", second.as_str())
    );
    let (_, sha) = reader.resolve_ref(&repo, "refs/heads/main").await.unwrap();
    assert_eq!(sha, second);
    let err = reader.resolve_ref(&repo, "nope").await.unwrap_err();
    assert!(err.to_string().contains("no ref `nope`"), "{err}");
}

#[tokio::test]
async fn reads_files_at_a_commit_from_a_path() {
    let served = tempfile::tempdir().unwrap();
    let (first, second) = make_repo(served.path());
    let cache = tempfile::tempdir().unwrap();
    let reader = GitReader::new(cache.path());
    let repo = repo(format!("file://{}", served.path().display()));
    exercise(&reader, &repo, &first, &second).await;
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    // Accepts connections and says nothing.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hold = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            open.push(socket);
        }
    });
    let cache = tempfile::tempdir().unwrap();
    let reader = GitReader::new(cache.path()).with_timeout(Duration::from_millis(1500));
    let repo = repo(format!("git://127.0.0.1:{port}/app"));
    let started = std::time::Instant::now();
    let err = reader
        .read_file(&repo, &"a".repeat(40), ".gantry.yaml")
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10));
    match err {
        ForgeError::Unreachable { message, .. } => {
            assert!(message.contains("timed out"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    hold.abort();
}

#[tokio::test]
async fn credentials_in_a_clone_url_never_reach_an_error() {
    let cache = tempfile::tempdir().unwrap();
    let reader = GitReader::new(cache.path()).with_timeout(Duration::from_secs(20));
    let port = free_port();
    let repo = repo(format!(
        "http://x-access-token:ghs_SECRET@127.0.0.1:{port}/acme/app.git"
    ));
    let err = reader
        .read_file(&repo, &"a".repeat(40), ".gantry.yaml")
        .await
        .unwrap_err();
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains("ghs_SECRET"), "{shown}");
}
