//! The delivery chain's tool steps on the real node, each link on its own: Kaniko builds and
//! pushes to the node's registry (TLS, basic auth, the granted registry Secret), Trivy scans
//! what Kaniko pushed against a vulnerability database the test makes, the gitops helper
//! commits to a configuration repository on the node's git server, and Flux (running beside
//! the cluster, tests/cluster/flux) deploys the bumped overlay onto the real node.
//!
//! Everything comes from what `tests/cluster/up` exports (`GANTRY_TEST_REGISTRY*`,
//! `GANTRY_TEST_IMAGE_KANIKO`/`_TRIVY`/`_GITOPS`, `GANTRY_TEST_TRIVYDB`,
//! `GANTRY_TEST_FLUX_NAMESPACE`); a missing variable fails the test and says so.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use gantry_core::{
    Backend, GitopsStep, JobEventKind, JobRequest, KanikoStep, Severity, State, StatusCondition,
    StepKind, StepOutcome, StepSpec, TrivyStep,
};
use gantry_kube::agents::{FluxSource, GitopsAgent};
use gantry_kube::{KubeBackend, KubeConfig, SecretGrant, SecretGrants};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::{DynamicObject, ListParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use tokio::sync::mpsc;

use super::real_node::{RealNode, backend, finished, git, job, lines, node_config, real_node};
use super::{Cluster, cluster, until_finished};
use crate::backend::shape;

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: the delivery tests need the test cluster's real node with its \
             registry, the Kaniko, Trivy and gitops images and Flux, which tests/cluster/up \
             starts and describes in its env file. Run them through \
             `tests/cluster/with-cluster cargo test -p gantry-kube` or `./dev test`; see \
             docs/testing.md"
        )
    })
}

/// The node's registry and the delivery tools.
pub struct Delivery {
    pub registry: String,
    pub ca: PathBuf,
    pub user: String,
    pub password: String,
    pub kaniko: String,
    pub trivy: String,
    pub gitops: String,
    pub trivydb: PathBuf,
    pub flux_namespace: String,
}

pub fn delivery() -> Delivery {
    Delivery {
        registry: var("GANTRY_TEST_REGISTRY"),
        ca: var("GANTRY_TEST_REGISTRY_CA").into(),
        user: var("GANTRY_TEST_REGISTRY_USER"),
        password: var("GANTRY_TEST_REGISTRY_PASSWORD"),
        kaniko: var("GANTRY_TEST_IMAGE_KANIKO"),
        trivy: var("GANTRY_TEST_IMAGE_TRIVY"),
        gitops: var("GANTRY_TEST_IMAGE_GITOPS"),
        trivydb: var("GANTRY_TEST_TRIVYDB").into(),
        flux_namespace: var("GANTRY_TEST_FLUX_NAMESPACE"),
    }
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// The backend's configuration for delivery jobs: the node's images, the registry and git
/// Secrets granted to every repository.
fn delivery_config(ns: &str, node: &RealNode, d: &Delivery) -> KubeConfig {
    let mut config = node_config(ns, node);
    config.images.kaniko = d.kaniko.clone();
    config.images.trivy = d.trivy.clone();
    config.images.gitops = d.gitops.clone();
    config.grants = SecretGrants(
        ["registry", "bad-registry", "config-token"]
            .into_iter()
            .map(|s| SecretGrant {
                secret: s.into(),
                repos: vec!["*/*".into()],
                ..SecretGrant::default()
            })
            .collect(),
    );
    config
}

/// A `kubernetes.io/dockerconfigjson` Secret for the node's registry.
async fn registry_secret(c: &Cluster, ns: &str, name: &str, d: &Delivery, password: &str) {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{}:{password}", d.user));
    let config = serde_json::json!({ "auths": { d.registry.clone(): { "auth": auth } } });
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/dockerconfigjson".into()),
        string_data: Some(BTreeMap::from([(
            ".dockerconfigjson".into(),
            config.to_string(),
        )])),
        ..Secret::default()
    };
    let api: Api<Secret> = Api::namespaced(c.admin().await, ns);
    api.create(&PostParams::default(), &secret).await.unwrap();
}

async fn token_secret(c: &Cluster, ns: &str, name: &str, token: &str) {
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        string_data: Some(BTreeMap::from([("token".into(), token.to_owned())])),
        ..Secret::default()
    };
    let api: Api<Secret> = Api::namespaced(c.admin().await, ns);
    api.create(&PostParams::default(), &secret).await.unwrap();
}

fn step(name: &str, kind: StepKind) -> StepSpec {
    StepSpec {
        name: name.into(),
        kind,
        timeout: None,
        env: BTreeMap::new(),
        run_if: StatusCondition::Success,
        allow_failure: false,
    }
}

fn kaniko(destinations: &[String], cache_repo: &str, secret: &str) -> StepKind {
    StepKind::Kaniko(KanikoStep {
        destinations: destinations.to_vec(),
        cache: true,
        cache_repo: Some(cache_repo.into()),
        registry_secret: Some(secret.into()),
        ..KanikoStep::default()
    })
}

fn trivy(image: &str, severity: &[Severity], ignore_unfixed: bool) -> StepKind {
    StepKind::Trivy(TrivyStep {
        image: image.into(),
        severity: severity.to_vec(),
        ignore_unfixed,
        registry_secret: Some("registry".into()),
    })
}

/// The digest the registry serves for `repo:tag` (its `Docker-Content-Digest`).
pub fn registry_digest(d: &Delivery, repo: &str, tag: &str) -> Option<String> {
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-D", "-", "-I", "--cacert"])
        .arg(&d.ca)
        .args(["-u", &format!("{}:{}", d.user, d.password)])
        .args([
            "-H",
            "Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.index.v1+json",
        ])
        .arg(format!("https://{}/v2/{repo}/manifests/{tag}", d.registry))
        .output()
        .expect("run curl");
    let head = String::from_utf8_lossy(&out.stdout);
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/2 200") {
        return None;
    }
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("docker-content-digest")
            .then(|| v.trim().to_owned())
    })
}

/// A Dockerfile of two stages on the node's base image; `planted` adds dpkg entries for the
/// packages the scan tests' database has advisories for.
pub fn dockerfile(base: &str, planted: bool) -> String {
    let mut text = format!(
        "FROM {base} AS build\n\
         RUN echo \"built by kaniko\" > /artifact.txt\n\
         FROM {base}\n\
         COPY --from=build /artifact.txt /artifact.txt\n"
    );
    if planted {
        for (package, version) in [("gantry-planted", "1.0-1"), ("gantry-unfixed", "2.0-1")] {
            text.push_str(&format!(
                "RUN printf 'Package: {package}\\nStatus: install ok installed\\nPriority: optional\\nSection: misc\\nInstalled-Size: 1\\nMaintainer: Gantry <test@localhost>\\nArchitecture: all\\nVersion: {version}\\nDescription: planted for the scan tests\\n\\n' >> /var/lib/dpkg/status\n"
            ));
        }
    }
    text.push_str("CMD [\"sleep\", \"3600\"]\n");
    text
}

/// The scan tests' vulnerability database (tests/cluster/delivery/trivy-db.yaml):
/// for Debian 12: CVE-2099-1001 HIGH in `gantry-planted`, fixed in
/// 1.0-2; CVE-2099-1002 MEDIUM in `gantry-unfixed`, no fix yet.
pub const FIXTURE: &str = include_str!("../../../../../tests/cluster/delivery/trivy-db.yaml");

/// Builds the database from [`FIXTURE`] and pushes it to the node's registry as the OCI
/// artifact Trivy's `--db-repository` pulls; returns that reference.
pub fn push_trivy_db(d: &Delivery) -> String {
    let dir = tempfile::tempdir().unwrap();
    let fixture = dir.path().join("db.yaml");
    std::fs::write(&fixture, FIXTURE).unwrap();
    let reference = format!("{}/{}:2", d.registry, unique("gantry-it/trivy-db"));
    let out = Command::new(&d.trivydb)
        .arg("--push")
        .arg(&reference)
        .arg("--ca")
        .arg(&d.ca)
        .args(["--user", &d.user, "--password", &d.password])
        .arg(&fixture)
        .output()
        .expect("run trivydb");
    assert!(
        out.status.success(),
        "trivydb: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    reference
}

fn outcomes(events: &[JobEventKind]) -> BTreeMap<usize, StepOutcome> {
    events
        .iter()
        .filter_map(|e| match e {
            JobEventKind::StepFinished { step, outcome } => Some((*step, outcome.clone())),
            _ => None,
        })
        .collect()
}

async fn run(backend: &KubeBackend, job: JobRequest) -> Vec<JobEventKind> {
    let (tx, mut rx) = mpsc::channel(1024);
    backend.start(job, tx).await.unwrap();
    until_finished(&mut rx).await
}

/// `path` of branch main of the bare repository at `bare`.
fn show(bare: &Path, path: &str) -> String {
    git(bare, &["show", &format!("main:{path}")])
}

#[tokio::test]
async fn kaniko_builds_a_multi_stage_dockerfile_pushes_both_tags_and_reports_the_digest() {
    let c = cluster();
    let node = real_node();
    let d = delivery();
    let ns = c.namespace("kaniko").await;
    registry_secret(&c, &ns, "registry", &d, &d.password).await;
    let (url, shas) = super::real_node::repository(
        &node,
        &[&[("Dockerfile", dockerfile(&node.image, false).as_str())]],
    );
    let repo = unique("gantry-it/app");
    let destinations = [
        format!("{}/{repo}:{}", d.registry, shas[0]),
        format!("{}/{repo}:main", d.registry),
    ];
    let cache = format!("{}/{repo}-cache", d.registry);
    let backend = backend(&c, delivery_config(&ns, &node, &d), &node, true).await;
    let build = |n: u32| {
        let mut j = job(&node, &url, &shas[0], &[]);
        j.spec.steps = vec![step(
            &format!("build {n}"),
            kaniko(&destinations, &cache, "registry"),
        )];
        j
    };
    let events = run(&backend, build(1)).await;
    let texts = shape(&events);
    assert_eq!(finished(&events).0, State::Success, "{texts:#?}");
    let outcome = &outcomes(&events)[&0];
    let pushed = registry_digest(&d, &repo, &shas[0]).expect("the SHA tag is in the registry");
    assert_eq!(
        outcome.summary.as_deref(),
        Some(format!("pushed digest {pushed}").as_str()),
        "{texts:#?}"
    );
    assert_eq!(
        registry_digest(&d, &repo, "main").as_deref(),
        Some(pushed.as_str()),
        "the branch tag names the same image"
    );
    assert!(
        lines(&events, 0).contains(&format!("pushed digest {pushed}")),
        "the digest is in the step's log too: {texts:#?}"
    );
    // The same Dockerfile again: the RUN layer comes from the cache repository.
    let again = run(&backend, build(2)).await;
    assert_eq!(finished(&again).0, State::Success, "{:#?}", shape(&again));
    let log = lines(&again, 0).join("\n");
    assert!(
        log.contains("Found cached layer") || log.contains("Using caching version"),
        "the second build reuses cached layers:\n{log}"
    );
}

#[tokio::test]
async fn kaniko_fails_the_step_with_the_registrys_refusal() {
    let c = cluster();
    let node = real_node();
    let d = delivery();
    let ns = c.namespace("kaniko-refused").await;
    registry_secret(&c, &ns, "bad-registry", &d, "not-the-password").await;
    let (url, shas) = super::real_node::repository(
        &node,
        &[&[("Dockerfile", dockerfile(&node.image, false).as_str())]],
    );
    let repo = unique("gantry-it/refused");
    let backend = backend(&c, delivery_config(&ns, &node, &d), &node, true).await;
    let mut j = job(&node, &url, &shas[0], &[]);
    j.spec.steps = vec![step(
        "build",
        kaniko(
            &[format!("{}/{repo}:{}", d.registry, shas[0])],
            &format!("{}/{repo}-cache", d.registry),
            "bad-registry",
        ),
    )];
    let events = run(&backend, j).await;
    let texts = shape(&events);
    let (state, reason) = finished(&events);
    assert_eq!(state, State::Failure, "{texts:#?}");
    let outcome = &outcomes(&events)[&0];
    let why = outcome.reason.clone().unwrap_or_default();
    assert!(
        why.contains("UNAUTHORIZED") || why.contains("authentication required"),
        "the step says what the registry said: {why:?}\n{texts:#?}"
    );
    assert!(reason.contains(&why), "{reason}");
    assert_eq!(registry_digest(&d, &repo, &shas[0]), None);
}

#[tokio::test]
async fn trivy_gates_on_severity_honours_ignore_unfixed_and_tells_findings_from_errors() {
    let c = cluster();
    let node = real_node();
    let d = delivery();
    let ns = c.namespace("trivy").await;
    registry_secret(&c, &ns, "registry", &d, &d.password).await;
    let db = push_trivy_db(&d);
    let (url, shas) = super::real_node::repository(
        &node,
        &[&[("Dockerfile", dockerfile(&node.image, true).as_str())]],
    );
    let repo = unique("gantry-it/scanned");
    let image = format!("{}/{repo}:{}", d.registry, shas[0]);
    let mut config = delivery_config(&ns, &node, &d);
    config.trivy_db_repository = Some(db);
    let backend = backend(&c, config, &node, true).await;

    // Build, then four scans of what was built. Each scan may fail without stopping the job
    // (allow_failure), so every verdict is seen; this also runs the scans under the guard.
    let mut j = job(&node, &url, &shas[0], &[]);
    j.spec.steps = vec![step(
        "build",
        kaniko(
            std::slice::from_ref(&image),
            &format!("{}/{repo}-cache", d.registry),
            "registry",
        ),
    )];
    let built = run(&backend, j).await;
    assert_eq!(finished(&built).0, State::Success, "{:#?}", shape(&built));

    let scans = [
        (
            "critical and high",
            vec![Severity::Critical, Severity::High],
            false,
        ),
        ("critical", vec![Severity::Critical], false),
        ("medium", vec![Severity::Medium], false),
        ("medium, fixed only", vec![Severity::Medium], true),
    ];
    let mut j = job(&node, &url, &shas[0], &[]);
    j.spec.steps = scans
        .iter()
        .map(|(name, severity, unfixed)| StepSpec {
            allow_failure: true,
            ..step(name, trivy(&image, severity, *unfixed))
        })
        .collect();
    let events = run(&backend, j).await;
    let texts = shape(&events);
    let got = outcomes(&events);
    let verdict = |i: usize| (got[&i].state, got[&i].exit_code);
    assert_eq!(
        verdict(0),
        (State::Failure, Some(gantry_core::trivy::FINDINGS_EXIT_CODE)),
        "{texts:#?}"
    );
    assert_eq!(
        got[&0].reason.as_deref(),
        Some("vulnerabilities found at CRITICAL, HIGH"),
        "{texts:#?}"
    );
    let summary = got[&0].summary.clone().unwrap_or_default();
    assert!(
        summary.starts_with("1 HIGH, 1 MEDIUM\n")
            && summary.contains("HIGH CVE-2099-1001 in gantry-planted 1.0-1 (fixed in 1.0-2)")
            && summary.contains("MEDIUM CVE-2099-1002 in gantry-unfixed 2.0-1 (no fix yet)"),
        "{summary}"
    );
    assert_eq!(verdict(1), (State::Success, Some(0)), "{texts:#?}");
    assert!(
        got[&1]
            .summary
            .as_deref()
            .is_some_and(|s| s.starts_with("1 HIGH, 1 MEDIUM")),
        "a passing scan still says what it found: {:?}",
        got[&1]
    );
    assert_eq!(
        verdict(2),
        (State::Failure, Some(gantry_core::trivy::FINDINGS_EXIT_CODE)),
        "{texts:#?}"
    );
    assert_eq!(verdict(3), (State::Success, Some(0)), "{texts:#?}");
    assert!(
        got[&3]
            .summary
            .as_deref()
            .is_some_and(|s| s.starts_with("1 HIGH") && !s.contains("CVE-2099-1002")),
        "unfixed findings are left out: {:?}",
        got[&3]
    );
    // The table of the gated findings is in the step's log.
    assert!(
        lines(&events, 0)
            .iter()
            .any(|l| l.contains("CVE-2099-1001")),
        "{texts:#?}"
    );

    // A database that cannot be fetched (an air-gapped cluster without a mirror) is a
    // scanner error, and the step says so instead of "vulnerabilities found".
    let mut config = delivery_config(&ns, &node, &d);
    config.trivy_db_repository = Some(format!("{}/gantry-it/no-such-db:2", d.registry));
    let broken_backend = super::real_node::backend(&c, config, &node, true).await;
    let mut j = job(&node, &url, &shas[0], &[]);
    j.spec.steps = vec![step(
        "scan",
        trivy(&image, &[Severity::Critical, Severity::High], false),
    )];
    let broken = run(&broken_backend, j).await;
    let got = outcomes(&broken);
    assert_eq!(got[&0].state, State::Failure, "{:#?}", shape(&broken));
    assert_ne!(
        got[&0].exit_code,
        Some(gantry_core::trivy::FINDINGS_EXIT_CODE)
    );
    let why = got[&0].reason.clone().unwrap_or_default();
    assert!(
        why.contains("scanner error") && !why.contains("vulnerabilities found"),
        "{why}"
    );
}

/// A configuration repository on the node's git server: a kustomize overlay, a plain
/// manifest and a Helm values file. Returns its URL and the bare repository's path.
fn config_repo(node: &RealNode, image: &str, tag: &str) -> (String, PathBuf) {
    let name = unique("config");
    let bare = node.git_root.join(format!("{name}.git"));
    std::fs::create_dir_all(&bare).unwrap();
    git(&bare, &["init", "-q", "--bare"]);
    let work = tempfile::tempdir().unwrap();
    git(work.path(), &["init", "-q"]);
    let files = [
        (
            "overlays/prod/kustomization.yaml",
            format!(
                "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - deployment.yaml\nimages:\n  - name: {image}\n    newTag: {tag}\n"
            ),
        ),
        ("overlays/prod/deployment.yaml", deployment_yaml(image, tag)),
        (
            "plain/app.yaml",
            format!(
                "# the app's settings\nspec:\n  template:\n    image:\n      repository: {image}\n      tag: {tag}\n"
            ),
        ),
        (
            "charts/app/values.yaml",
            format!("replicaCount: 1\nimage:\n  repository: {image}\n  tag: {tag} # set by CI\n"),
        ),
    ];
    for (path, text) in &files {
        let file = work.path().join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, text).unwrap();
    }
    git(work.path(), &["add", "-A"]);
    git(work.path(), &["commit", "-q", "-m", "initial config"]);
    git(
        work.path(),
        &["push", "-q", bare.to_str().unwrap(), "HEAD:refs/heads/main"],
    );
    (format!("{}/{name}.git", node.git_url), bare)
}

/// The app's Deployment, on the real node.
fn deployment_yaml(image: &str, tag: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: app
spec:
  replicas: 1
  selector:
    matchLabels: {{ app: app }}
  template:
    metadata:
      labels: {{ app: app }}
    spec:
      nodeSelector: {{ gantry.dev/real-node: "true" }}
      tolerations:
        - {{ key: gantry.dev/real-node, operator: Equal, value: "true", effect: NoSchedule }}
      imagePullSecrets: [{{ name: registry }}]
      terminationGracePeriodSeconds: 1
      containers:
        - name: app
          image: {image}:{tag}
          command: ["sleep", "3600"]
          securityContext:
            allowPrivilegeEscalation: false
            capabilities: {{ drop: [ALL] }}
"#
    )
}

fn gitops(repo: &str, path: &str, image: &str, tag: &str, yaml_path: Option<&str>) -> StepKind {
    StepKind::Gitops(GitopsStep {
        repo: repo.into(),
        branch: Some("main".into()),
        path: path.into(),
        image: image.into(),
        tag: tag.into(),
        yaml_path: yaml_path.map(str::to_owned),
        message: None,
        token_secret: Some("config-token".into()),
    })
}

#[tokio::test]
async fn gitops_bumps_an_overlay_a_plain_file_and_helm_values_and_two_at_once_both_land() {
    let c = cluster();
    let node = real_node();
    let d = delivery();
    let ns = c.namespace("gitops").await;
    token_secret(&c, &ns, "config-token", &node.git_password).await;
    let image = format!("{}/gantry-it/app", d.registry);
    let (config_url, bare) = config_repo(&node, &image, "old");
    let (url, shas) = super::real_node::repository(&node, &[&[("README", "app\n")]]);
    let backend = backend(&c, delivery_config(&ns, &node, &d), &node, true).await;
    let tag = &shas[0];
    let bump = || {
        let mut j = job(&node, &url, tag, &[]);
        j.spec.env.insert(
            "GANTRY_RUN_URL".into(),
            format!("https://gantry.example.com/runs/{}", j.run_id),
        );
        j.spec.steps = vec![
            step(
                "overlay",
                gitops(&config_url, "overlays/prod", &image, tag, None),
            ),
            step(
                "plain",
                gitops(
                    &config_url,
                    "plain/app.yaml",
                    &image,
                    tag,
                    Some("spec.template.image.tag"),
                ),
            ),
            step(
                "helm",
                gitops(
                    &config_url,
                    "charts/app/values.yaml",
                    &image,
                    tag,
                    Some("image.tag"),
                ),
            ),
        ];
        j
    };
    let first = bump();
    let run_url = first.spec.env["GANTRY_RUN_URL"].clone();
    let events = run(&backend, first).await;
    let texts = shape(&events);
    assert_eq!(finished(&events).0, State::Success, "{texts:#?}");
    assert!(
        show(&bare, "overlays/prod/kustomization.yaml").contains(&format!("newTag: {tag}")),
        "{}",
        show(&bare, "overlays/prod/kustomization.yaml")
    );
    assert!(show(&bare, "plain/app.yaml").contains(&format!("tag: {tag}")));
    let values = show(&bare, "charts/app/values.yaml");
    assert!(values.contains(&format!("tag: {tag}")), "{values}");
    assert!(
        values.contains("replicaCount: 1"),
        "the rest is kept: {values}"
    );
    let log = git(&bare, &["log", "--format=%B%x00", "main"]);
    let newest = log.split('\0').next().unwrap();
    assert!(
        newest.contains("acme/app@") && newest.contains(&tag[..12]) && newest.contains(&run_url),
        "the commit names the app repository, its commit and the run: {newest}"
    );
    let summaries: Vec<String> = outcomes(&events)
        .values()
        .map(|o| o.summary.clone().unwrap_or_default())
        .collect();
    assert!(
        summaries.iter().all(|s| s.starts_with("gitops: pushed ")),
        "{summaries:#?}"
    );
    let commits = git(&bare, &["rev-list", "--count", "main"]);
    assert_eq!(commits, "4");

    // The same tag again: nothing to commit.
    let again = run(&backend, bump()).await;
    assert_eq!(finished(&again).0, State::Success, "{:#?}", shape(&again));
    assert_eq!(git(&bare, &["rev-list", "--count", "main"]), "4");
    assert!(
        outcomes(&again)[&0]
            .summary
            .as_deref()
            .is_some_and(|s| s.contains("already at")),
        "{:#?}",
        outcomes(&again)
    );

    // Two runs bumping the same file at once (two images of one overlay): both land, the
    // second by fetching and redoing its edit on top of the first.
    let racer = |name: &str| {
        let mut j = job(&node, &url, tag, &[]);
        j.spec.steps = vec![step(
            "overlay",
            gitops(
                &config_url,
                "overlays/prod",
                &format!("{}/gantry-it/{name}", d.registry),
                tag,
                None,
            ),
        )];
        j
    };
    let (a, b) = tokio::join!(run(&backend, racer("left")), run(&backend, racer("right")));
    assert_eq!(finished(&a).0, State::Success, "{:#?}", shape(&a));
    assert_eq!(finished(&b).0, State::Success, "{:#?}", shape(&b));
    let overlay = show(&bare, "overlays/prod/kustomization.yaml");
    assert!(
        overlay.contains("gantry-it/left") && overlay.contains("gantry-it/right"),
        "{overlay}"
    );
    assert_eq!(git(&bare, &["rev-list", "--count", "main"]), "6");
}

fn flux_resource(kind: &str, plural: &str, group: &str, version: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

/// A Flux GitRepository for `url` (with the node git server's login and CA) and a
/// Kustomization applying `path` of it into `target`; the GitRepository polls only every
/// hour, so a deploy within the test's time is Gantry's doing.
pub async fn flux_follow(
    c: &Cluster,
    d: &Delivery,
    node: &RealNode,
    url: &str,
    path: &str,
    target: &str,
) -> String {
    let client = c.admin().await;
    let ns = &d.flux_namespace;
    let name = unique("config");
    let ca = std::fs::read_to_string(&d.ca).unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    secrets
        .create(
            &PostParams::default(),
            &Secret {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    ..ObjectMeta::default()
                },
                string_data: Some(BTreeMap::from([
                    ("username".into(), node.git_user.clone()),
                    ("password".into(), node.git_password.clone()),
                    ("ca.crt".into(), ca),
                ])),
                ..Secret::default()
            },
        )
        .await
        .unwrap();
    let repos: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        ns,
        &flux_resource(
            "GitRepository",
            "gitrepositories",
            "source.toolkit.fluxcd.io",
            "v1",
        ),
    );
    let repo: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "source.toolkit.fluxcd.io/v1",
        "kind": "GitRepository",
        "metadata": { "name": name },
        "spec": {
            "url": url,
            "interval": "1h",
            "ref": { "branch": "main" },
            "secretRef": { "name": name },
        }
    }))
    .unwrap();
    repos.create(&PostParams::default(), &repo).await.unwrap();
    let kustomizations: Api<DynamicObject> = Api::namespaced_with(
        client,
        ns,
        &flux_resource(
            "Kustomization",
            "kustomizations",
            "kustomize.toolkit.fluxcd.io",
            "v1",
        ),
    );
    let k: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "kustomize.toolkit.fluxcd.io/v1",
        "kind": "Kustomization",
        "metadata": { "name": name },
        "spec": {
            "interval": "1h",
            "retryInterval": "5s",
            "path": format!("./{path}"),
            "prune": true,
            "targetNamespace": target,
            "sourceRef": { "kind": "GitRepository", "name": name },
        }
    }))
    .unwrap();
    kustomizations
        .create(&PostParams::default(), &k)
        .await
        .unwrap();
    name
}

/// The image digest of the running pod of Deployment `app` in `ns`, once it runs `image`.
pub async fn running_digest(c: &Cluster, ns: &str, image: &str) -> String {
    let client = c.admin().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let deployments: Api<Deployment> = Api::namespaced(client, ns);
    let until = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let ready = deployments
            .get_opt("app")
            .await
            .ok()
            .flatten()
            .and_then(|d| d.status)
            .is_some_and(|s| s.ready_replicas == Some(1) && s.updated_replicas == Some(1));
        if ready {
            let list = pods
                .list(&ListParams::default().labels("app=app"))
                .await
                .unwrap();
            for p in list.items {
                let Some(status) = p.status.and_then(|s| s.container_statuses) else {
                    continue;
                };
                let running = status.iter().find(|s| {
                    s.image == image
                        || s.image
                            .ends_with(image.split('/').next_back().unwrap_or(image))
                });
                if let Some(s) = running
                    && s.ready
                {
                    // imageID: REGISTRY/REPO@sha256:…
                    return s.image_id.rsplit('@').next().unwrap_or_default().to_owned();
                }
            }
        }
        assert!(
            tokio::time::Instant::now() < until,
            "Deployment app in {ns} did not become Ready with {image} within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn flux_deploys_the_bumped_overlay_at_once_when_gantry_tells_it() {
    let c = cluster();
    let node = real_node();
    let d = delivery();
    let ns = c.namespace("flux").await;
    registry_secret(&c, &ns, "registry", &d, &d.password).await;
    token_secret(&c, &ns, "config-token", &node.git_password).await;
    // Two builds of the app: the overlay starts at the first, the gitops step sets the second.
    let (url, shas) = super::real_node::repository(
        &node,
        &[
            &[("Dockerfile", dockerfile(&node.image, false).as_str())],
            &[(
                "Dockerfile",
                format!("{}RUN echo two > /two\n", dockerfile(&node.image, false)).as_str(),
            )],
        ],
    );
    let repo = unique("gantry-it/deployed");
    let image = format!("{}/{repo}", d.registry);
    let backend0 = backend(&c, delivery_config(&ns, &node, &d), &node, true).await;
    let mut digests = Vec::new();
    for sha in &shas {
        let mut j = job(&node, &url, sha, &[]);
        j.spec.steps = vec![step(
            "build",
            kaniko(
                &[format!("{image}:{sha}")],
                &format!("{image}-cache"),
                "registry",
            ),
        )];
        let events = run(&backend0, j).await;
        assert_eq!(finished(&events).0, State::Success, "{:#?}", shape(&events));
        digests.push(registry_digest(&d, &repo, sha).unwrap());
    }
    let (config_url, _bare) = config_repo(&node, &image, &shas[0]);
    flux_follow(&c, &d, &node, &config_url, "overlays/prod", &ns).await;
    assert_eq!(
        running_digest(&c, &ns, &format!("{image}:{}", shas[0])).await,
        digests[0]
    );

    // The gitops step pushes the second tag; Gantry tells Flux, which deploys it long before
    // its hourly poll.
    let name = {
        let repos: Api<DynamicObject> = Api::namespaced_with(
            c.admin().await,
            &d.flux_namespace,
            &flux_resource(
                "GitRepository",
                "gitrepositories",
                "source.toolkit.fluxcd.io",
                "v1",
            ),
        );
        let list = repos.list(&ListParams::default()).await.unwrap();
        list.items
            .into_iter()
            .find(|r| r.data["spec"]["url"] == config_url.as_str())
            .and_then(|r| r.metadata.name)
            .unwrap()
    };
    let mut config = delivery_config(&ns, &node, &d);
    config.gitops_agents = vec![GitopsAgent {
        repo: config_url.clone(),
        flux: FluxSource {
            namespace: d.flux_namespace.clone(),
            name: name.clone(),
        },
    }];
    let backend = backend(&c, config, &node, true).await;
    let mut j = job(&node, &url, &shas[1], &[]);
    j.spec.steps = vec![step(
        "deploy",
        gitops(&config_url, "overlays/prod", &image, &shas[1], None),
    )];
    let told = tokio::time::Instant::now();
    let events = run(&backend, j).await;
    assert_eq!(finished(&events).0, State::Success, "{:#?}", shape(&events));
    assert!(
        lines(&events, 0).iter().any(|l| l.contains(&format!(
            "told Flux to reconcile GitRepository {}/{name}",
            d.flux_namespace
        ))),
        "{:#?}",
        shape(&events)
    );
    let deployed = running_digest(&c, &ns, &format!("{image}:{}", shas[1])).await;
    assert_eq!(
        deployed, digests[1],
        "the Pod runs exactly what Kaniko pushed"
    );
    assert!(
        told.elapsed() < Duration::from_secs(100),
        "deployed {:?} after the push, not at the hourly poll",
        told.elapsed()
    );
}
