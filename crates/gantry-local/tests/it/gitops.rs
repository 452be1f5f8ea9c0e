//! `gitops` steps against real bare repositories.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use gantry_core::{GitopsStep, JobRequest, State, StepKind};
use tempfile::TempDir;

use crate::support::{Repo, any_repo, backend, git, request, run_job, step};

const KUSTOMIZATION: &str = "\
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - ../../base   # shared manifests
images:
  - name: registry.example.com/app
    newTag: \"0.9.0\"   # bumped by CI
  - name: registry.example.com/worker
    newTag: v3
";

const VALUES: &str = "\
# Helm values for prod
spec:
  replicas: 3
  image:
    repository: registry.example.com/app
    tag: v1 # bumped by CI
";

/// A bare configuration repository, seeded with a kustomization and a values file.
struct ConfigRepo {
    dir: TempDir,
}

impl ConfigRepo {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        git(dir.path(), &["init", "-q", "--bare", "config.git"]);
        let seed = Repo::new();
        seed.commit(
            &[
                ("overlays/prod/kustomization.yaml", KUSTOMIZATION),
                ("values.yaml", VALUES),
            ],
            "seed",
        );
        git(
            seed.path(),
            &["push", "-q", &Self::url_of(dir.path()), "HEAD:main"],
        );
        Self { dir }
    }

    fn url_of(dir: &Path) -> String {
        dir.join("config.git").to_str().unwrap().to_owned()
    }

    fn url(&self) -> String {
        Self::url_of(self.dir.path())
    }

    fn bare(&self) -> PathBuf {
        self.dir.path().join("config.git")
    }

    fn show(&self, path: &str) -> String {
        git(&self.bare(), &["show", &format!("main:{path}")])
    }

    fn subjects(&self) -> Vec<String> {
        git(&self.bare(), &["log", "--format=%s", "main"])
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The whole message of the `n`th commit from main's tip.
    fn message(&self, n: usize) -> String {
        git(
            &self.bare(),
            &["log", "-1", "--format=%B", &format!("main~{n}")],
        )
    }
}

fn bump_job(gitops: GitopsStep) -> (JobRequest, Repo) {
    let (app, sha) = any_repo();
    let job = request(
        &app.url(),
        &sha,
        vec![step("deploy", StepKind::Gitops(gitops))],
    );
    (job, app)
}

fn kustomize_bump(config: &ConfigRepo, tag: &str) -> GitopsStep {
    GitopsStep {
        repo: config.url(),
        path: "overlays/prod".into(),
        image: "registry.example.com/app".into(),
        tag: tag.into(),
        ..GitopsStep::default()
    }
}

#[tokio::test]
async fn gitops_bumps_a_kustomization_tag_and_pushes() {
    let config = ConfigRepo::new();
    let (backend, _root) = backend();
    let (job, _app) = bump_job(kustomize_bump(&config, "abc123"));
    let run_id = job.run_id;
    let events = run_job(&backend, job).await;

    assert_eq!(events.finished(), (State::Success, None));
    assert_eq!(
        config.show("overlays/prod/kustomization.yaml"),
        KUSTOMIZATION
            .replace("newTag: \"0.9.0\"", "newTag: \"abc123\"")
            .trim_end()
    );
    assert_eq!(config.subjects()[0], "Set registry.example.com/app:abc123");
    let body = config.message(0);
    assert!(
        body.contains(&format!("(gantry run {run_id})")),
        "the message names the run: {body}"
    );
    assert!(events.says("to main (overlays/prod: registry.example.com/app at abc123)"));
    let summary = events.outcome(0).summary.unwrap_or_default();
    assert!(summary.starts_with("pushed "), "{summary}");

    // The same tag again changes nothing and pushes nothing.
    let (job, _app) = bump_job(kustomize_bump(&config, "abc123"));
    let events = run_job(&backend, job).await;
    assert_eq!(events.finished(), (State::Success, None));
    assert!(events.says("nothing to commit"));
    assert!(
        events
            .outcome(0)
            .summary
            .is_some_and(|s| s.contains("already at abc123"))
    );
    assert_eq!(config.subjects().len(), 2);
}

#[tokio::test]
async fn gitops_sets_a_value_at_a_yaml_path_with_a_custom_message() {
    let config = ConfigRepo::new();
    let (backend, _root) = backend();
    let gitops = GitopsStep {
        repo: config.url(),
        branch: Some("main".into()),
        path: "values.yaml".into(),
        image: "registry.example.com/app".into(),
        tag: "v2.0.0".into(),
        yaml_path: Some("spec.image.tag".into()),
        message: Some("deploy v2.0.0".into()),
        ..GitopsStep::default()
    };
    let (job, _app) = bump_job(gitops);
    let events = run_job(&backend, job).await;

    assert_eq!(events.finished(), (State::Success, None));
    assert_eq!(
        config.show("values.yaml"),
        VALUES.replace("tag: v1 #", "tag: v2.0.0 #").trim_end()
    );
    assert_eq!(config.subjects()[0], "deploy v2.0.0");
}

#[tokio::test]
async fn gitops_retries_when_someone_pushed_first() {
    let config = ConfigRepo::new();
    let (backend, _root) = backend();
    // Someone else's clone, and a server hook that makes them push first, while our push is
    // being received: a real race, lost once.
    let other = tempfile::tempdir().unwrap();
    git(other.path(), &["clone", "-q", &config.url(), "other"]);
    let marker = other.path().join("raced");
    let hook = config.bare().join("hooks/pre-receive");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\n\
             cat >/dev/null\n\
             if [ ! -e '{marker}' ]; then\n\
               touch '{marker}'\n\
               unset GIT_DIR GIT_QUARANTINE_PATH GIT_OBJECT_DIRECTORY GIT_ALTERNATE_OBJECT_DIRECTORIES\n\
               cd '{other}' && echo theirs > theirs.txt && git add theirs.txt &&\n\
               git -c user.name=Other -c user.email=o@example.com commit -q -m theirs &&\n\
               git push -q origin HEAD:main >&2\n\
             fi\n",
            marker = marker.display(),
            other = other.path().join("other").display(),
        ),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();

    let (job, _app) = bump_job(kustomize_bump(&config, "def456"));
    let events = run_job(&backend, job).await;

    assert_eq!(events.finished(), (State::Success, None), "{:#?}", events.0);
    assert!(marker.exists(), "the race happened");
    assert!(events.says("moved while we pushed"));
    assert_eq!(config.show("theirs.txt"), "theirs");
    assert!(
        config
            .show("overlays/prod/kustomization.yaml")
            .contains("newTag: \"def456\"")
    );
    let subjects = config.subjects();
    assert!(
        subjects[0].starts_with("Set registry.example.com/app:"),
        "{subjects:?}"
    );
    assert_eq!(subjects[1], "theirs");
}

#[tokio::test]
async fn gitops_fails_clearly_without_a_kustomization_or_repository() {
    let config = ConfigRepo::new();
    let (backend, _root) = backend();
    let mut gitops = kustomize_bump(&config, "x1");
    gitops.path = "overlays/staging".into();
    let (job, _app) = bump_job(gitops);
    let events = run_job(&backend, job).await;
    let reason = events.outcome(0).reason.unwrap();
    assert!(reason.contains("no kustomization.yaml"), "{reason}");
    assert_eq!(events.finished().0, State::Failure);

    let mut gitops = kustomize_bump(&config, "x1");
    gitops.repo = config.dir.path().join("missing.git").display().to_string();
    let (job, _app) = bump_job(gitops);
    let events = run_job(&backend, job).await;
    let reason = events.outcome(0).reason.unwrap();
    assert!(reason.contains("`git clone` failed"), "{reason}");
    assert_eq!(config.subjects().len(), 1);
}
