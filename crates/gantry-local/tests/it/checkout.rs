//! The workspace holds exactly the commit asked for, and goes away afterwards.

use gantry_core::{JobEventKind, State, Stream};
use gantry_local::{LocalBackend, LocalConfig};

use crate::support::{Repo, any_repo, backend, entries, request, run, run_job};

#[tokio::test]
async fn checkout_is_exactly_the_sha_even_after_the_branch_moved_on() {
    let repo = Repo::new();
    let first = repo.commit(&[("version", "1\n")], "first");
    let second = repo.commit(&[("version", "2\n")], "second");
    assert_ne!(first, second);
    let (backend, _root) = backend();

    let job = request(
        &repo.url(),
        &first,
        vec![run(
            "show",
            "cat version; git rev-parse HEAD; git symbolic-ref -q HEAD || echo detached",
        )],
    );
    let events = run_job(&backend, job).await;

    assert_eq!(events.finished(), (State::Success, None));
    assert_eq!(
        events.texts(0, Stream::Stdout),
        vec!["1".to_owned(), first, "detached".to_owned()]
    );
}

#[tokio::test]
async fn a_bad_clone_url_ends_the_job_as_an_error_with_gits_words() {
    let missing = tempfile::tempdir().unwrap().path().join("no-such-repo");
    let (backend, root) = backend();
    let job = request(
        missing.to_str().unwrap(),
        "0123456789abcdef0123456789abcdef01234567",
        vec![run("never", "echo never")],
    );
    let events = run_job(&backend, job).await;

    let (state, reason) = events.finished();
    assert_eq!(state, State::Error);
    let reason = reason.unwrap();
    assert!(reason.contains("checkout failed"), "{reason}");
    assert!(reason.contains("git fetch"), "{reason}");
    assert!(
        reason.contains("does not appear to be a git repository"),
        "{reason}"
    );
    assert!(events.says("does not appear to be a git repository"));
    assert!(!events.0.contains(&JobEventKind::Started));
    assert!(!events.started(0));
    assert!(entries(root.path()).is_empty(), "workspace left behind");
}

#[tokio::test]
async fn a_sha_the_repository_does_not_have_is_an_error() {
    let (repo, _) = any_repo();
    let (backend, _root) = backend();
    let job = request(
        &repo.url(),
        "0123456789abcdef0123456789abcdef01234567",
        vec![run("never", "echo never")],
    );
    let events = run_job(&backend, job).await;
    let (state, reason) = events.finished();
    assert_eq!(state, State::Error);
    assert!(reason.unwrap().contains("git checkout"));
}

#[tokio::test]
async fn a_ref_name_is_not_accepted_as_a_sha() {
    let (repo, _) = any_repo();
    let (backend, _root) = backend();
    let events = run_job(&backend, request(&repo.url(), "main", vec![])).await;
    let (state, reason) = events.finished();
    assert_eq!(state, State::Error);
    assert!(reason.unwrap().contains("not a commit sha"));
}

#[tokio::test]
async fn workspaces_are_removed_unless_kept() {
    let (repo, sha) = any_repo();
    let (backend, root) = backend();
    let events = run_job(&backend, request(&repo.url(), &sha, vec![run("a", "true")])).await;
    assert_eq!(events.finished().0, State::Success);
    assert!(entries(root.path()).is_empty());

    let keep = tempfile::tempdir().unwrap();
    let backend = LocalBackend::new(LocalConfig {
        work_root: Some(keep.path().to_path_buf()),
        keep_workspaces: true,
        ..LocalConfig::default()
    });
    let events = run_job(&backend, request(&repo.url(), &sha, vec![run("a", "true")])).await;
    assert_eq!(events.finished().0, State::Success);
    let kept = entries(keep.path());
    assert_eq!(kept.len(), 1);
    assert!(kept[0].join("README").is_file());
    assert!(events.says(&kept[0].display().to_string()));
}
