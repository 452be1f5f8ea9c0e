//! The whole delivery chain from one signed push webhook, through `gantry serve` on the test
//! cluster's real node: a test job, a Kaniko build pushed to the node's registry, a Trivy gate
//! against a vulnerability database made here, a gitops commit to a configuration repository on
//! the node's git server, and Flux (running beside the cluster) deploying it: the Deployment
//! becomes Ready with exactly the digest Kaniko reported, and the commit statuses at the fake
//! GitHub say so with links to the run. A second push whose image has a HIGH finding stops at
//! the scan: no config commit, a failure status, the Deployment keeps the old image.
//!
//! Needs the test cluster with its real node, registry, delivery images and Flux
//! (`./dev test` starts them); without them the test fails and says what is missing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::node::{bare_repo, git, kubectl, namespace, var};
use crate::serve::runs_of_delivery;
use crate::server::{FakeGithub, Gantry, eventually, push_payload, send_push};

const ZERO: &str = "0000000000000000000000000000000000000000";

/// A name part no other test (or earlier run on the same cluster) uses.
fn suffix() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{:x}{nanos:x}{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A repository on the node's git server with one commit per entry of `commits` (files and
/// their text, on top of the previous commit); its URL, bare directory and the commits.
fn repository(name: &str, commits: &[Vec<(&str, String)>]) -> (String, PathBuf, Vec<String>) {
    let (url, bare) = bare_repo(name);
    let work = tempfile::tempdir().unwrap();
    git(work.path(), &["init", "-q"]);
    let mut shas = Vec::new();
    for (i, files) in commits.iter().enumerate() {
        for (path, text) in files {
            let file = work.path().join(path);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(file, text).unwrap();
        }
        git(work.path(), &["add", "-A"]);
        git(work.path(), &["commit", "-q", "-m", &format!("commit {i}")]);
        shas.push(git(work.path(), &["rev-parse", "HEAD"]));
    }
    git(
        work.path(),
        &["push", "-q", bare.to_str().unwrap(), "HEAD:refs/heads/main"],
    );
    (url, bare, shas)
}

/// The app: two stages on the node's base image; `planted` appends a dpkg entry for the
/// package the database has a HIGH advisory for (tests/cluster/delivery/trivy-db.yaml).
fn dockerfile(base: &str, planted: bool) -> String {
    let mut text = format!(
        "FROM {base} AS build\nRUN echo app > /app.txt\nFROM {base}\nCOPY --from=build /app.txt /app.txt\n"
    );
    if planted {
        text.push_str(
            "RUN printf 'Package: gantry-planted\\nStatus: install ok installed\\nMaintainer: Gantry <test@localhost>\\nArchitecture: all\\nVersion: 1.0-1\\nDescription: planted\\n\\n' >> /var/lib/dpkg/status\n",
        );
    }
    text
}

fn pipeline(base: &str, image: &str, config_url: &str) -> String {
    format!(
        r#"name: delivery
on:
  push: {{ branches: [main] }}
env:
  IMAGE: {image}
jobs:
  test:
    image: {base}
    steps:
      - name: unit tests
        run: grep -q FROM Dockerfile && echo "tests pass"
  image:
    needs: [test]
    steps:
      - name: build and push
        kaniko:
          destination: ["${{IMAGE}}:${{GANTRY_COMMIT_SHA}}", "${{IMAGE}}:${{GANTRY_BRANCH}}"]
          cache: true
          registry_secret: registry
  scan:
    needs: [image]
    steps:
      - name: scan
        trivy:
          image: "${{IMAGE}}:${{GANTRY_COMMIT_SHA}}"
          severity: [CRITICAL, HIGH]
          ignore_unfixed: true
          registry_secret: registry
  deploy:
    needs: [scan]
    steps:
      - name: bump prod
        gitops:
          repo: {config_url}
          branch: main
          path: overlays/prod
          image: ${{IMAGE}}
          tag: ${{GANTRY_COMMIT_SHA}}
          token_secret: config-token
"#
    )
}

fn config_files(image: &str) -> Vec<(&'static str, String)> {
    vec![
        (
            "overlays/prod/kustomization.yaml",
            format!(
                "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [deployment.yaml]\nimages:\n  - name: {image}\n    newTag: not-built-yet\n"
            ),
        ),
        (
            "overlays/prod/deployment.yaml",
            format!(
                r#"apiVersion: apps/v1
kind: Deployment
metadata: {{ name: app }}
spec:
  replicas: 1
  selector: {{ matchLabels: {{ app: app }} }}
  template:
    metadata: {{ labels: {{ app: app }} }}
    spec:
      nodeSelector: {{ gantry.dev/real-node: "true" }}
      tolerations: [{{ key: gantry.dev/real-node, operator: Equal, value: "true", effect: NoSchedule }}]
      imagePullSecrets: [{{ name: registry }}]
      terminationGracePeriodSeconds: 1
      containers:
        - name: app
          image: {image}:not-built-yet
          command: [sleep, "3600"]
"#
            ),
        ),
    ]
}

/// Builds the test database and pushes it to the registry; its reference.
fn trivy_db(registry: &str) -> String {
    let reference = format!("{registry}/gantry-it/chain-trivy-db-{}:2", suffix());
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("cluster/delivery/trivy-db.yaml");
    let out = Command::new(var("GANTRY_TEST_TRIVYDB"))
        .arg("--push")
        .arg(&reference)
        .arg("--ca")
        .arg(var("GANTRY_TEST_REGISTRY_CA"))
        .args(["--user", &var("GANTRY_TEST_REGISTRY_USER")])
        .args(["--password", &var("GANTRY_TEST_REGISTRY_PASSWORD")])
        .arg(&fixture)
        .output()
        .expect("run trivydb");
    assert!(
        out.status.success(),
        "trivydb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    reference
}

fn apply(yaml: &str) {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), yaml).unwrap();
    kubectl(&[
        "apply",
        "--server-side",
        "-f",
        file.path().to_str().unwrap(),
    ]);
}

/// Flux follows the configuration repository (polling only hourly: a deploy within the test
/// is Gantry telling it) and applies overlays/prod into `target`. The GitRepository's name.
fn flux_follow(config_url: &str, target: &str) -> String {
    let flux = var("GANTRY_TEST_FLUX_NAMESPACE");
    let name = format!("chain-{}", suffix());
    kubectl(&[
        "-n",
        &flux,
        "create",
        "secret",
        "generic",
        &name,
        &format!("--from-literal=username={}", var("GANTRY_TEST_GIT_USER")),
        &format!(
            "--from-literal=password={}",
            var("GANTRY_TEST_GIT_PASSWORD")
        ),
        &format!("--from-file=ca.crt={}", var("GANTRY_TEST_GIT_CA")),
    ]);
    apply(&format!(
        r#"apiVersion: source.toolkit.fluxcd.io/v1
kind: GitRepository
metadata: {{ name: {name}, namespace: {flux} }}
spec:
  url: {config_url}
  interval: 1h
  ref: {{ branch: main }}
  secretRef: {{ name: {name} }}
---
apiVersion: kustomize.toolkit.fluxcd.io/v1
kind: Kustomization
metadata: {{ name: {name}, namespace: {flux} }}
spec:
  interval: 1h
  retryInterval: 5s
  path: ./overlays/prod
  prune: true
  targetNamespace: {target}
  sourceRef: {{ kind: GitRepository, name: {name} }}
"#
    ));
    name
}

/// The registry's digest of `repo:tag`.
fn registry_digest(registry: &str, repo: &str, tag: &str) -> String {
    let out = Command::new("curl")
        .args(["-sSf", "-o", "/dev/null", "-D", "-", "-I", "--cacert"])
        .arg(var("GANTRY_TEST_REGISTRY_CA"))
        .args([
            "-u",
            &format!(
                "{}:{}",
                var("GANTRY_TEST_REGISTRY_USER"),
                var("GANTRY_TEST_REGISTRY_PASSWORD")
            ),
        ])
        .args(["-H", "Accept: application/vnd.oci.image.manifest.v1+json"])
        .args([
            "-H",
            "Accept: application/vnd.docker.distribution.manifest.v2+json",
        ])
        .arg(format!("https://{registry}/v2/{repo}/manifests/{tag}"))
        .output()
        .expect("run curl");
    let head = String::from_utf8_lossy(&out.stdout).into_owned();
    head.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("docker-content-digest")
                .then(|| v.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no digest for {repo}:{tag}: {head}"))
}

/// The image digest the app's ready pod runs, once the Deployment is rolled out with `image`.
async fn deployed_digest(ns: &str, image: &str) -> String {
    eventually(Duration::from_secs(180), "the Deployment to run the image", || async {
        let out = kubectl(&[
            "-n",
            ns,
            "get",
            "pods",
            "-l",
            "app=app",
            "-o",
            "jsonpath={range .items[*].status.containerStatuses[*]}{.image}|{.imageID}|{.ready}{\"\\n\"}{end}",
        ]);
        out.lines().find_map(|l| {
            let mut parts = l.split('|');
            let (running, id, ready) = (parts.next()?, parts.next()?, parts.next()?);
            (running == image && ready == "true")
                .then(|| id.rsplit('@').next().unwrap_or_default().to_owned())
        })
    })
    .await
}

async fn final_run(gantry: &Gantry, id: &str) -> Value {
    crate::serve::final_run_within(gantry, id, Duration::from_secs(300)).await
}

fn job<'a>(run: &'a Value, name: &str) -> &'a Value {
    run["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .rfind(|j| j["name"] == name)
        .unwrap_or_else(|| panic!("no job {name}: {run:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_push_is_tested_built_scanned_committed_and_deployed_and_a_vulnerable_one_stops_at_the_scan()
 {
    let base = var("GANTRY_TEST_IMAGE");
    let registry = var("GANTRY_TEST_REGISTRY");
    let ns = namespace("chain", "baseline");
    let id = suffix();
    let repo = format!("gantry-it/chain-{id}");
    let image = format!("{registry}/{repo}");

    let (config_url, config_bare, _) = repository(&format!("config-{id}"), &[config_files(&image)]);
    let app = format!("app-chain-{id}");
    let (url, bare, shas) = repository(
        &app,
        &[
            vec![
                (".gantry.yaml", pipeline(&base, &image, &config_url)),
                ("Dockerfile", dockerfile(&base, false)),
            ],
            vec![("Dockerfile", dockerfile(&base, true))],
        ],
    );
    kubectl(&[
        "-n",
        &ns,
        "create",
        "secret",
        "docker-registry",
        "registry",
        &format!("--docker-server={registry}"),
        &format!("--docker-username={}", var("GANTRY_TEST_REGISTRY_USER")),
        &format!("--docker-password={}", var("GANTRY_TEST_REGISTRY_PASSWORD")),
    ]);
    kubectl(&[
        "-n",
        &ns,
        "create",
        "secret",
        "generic",
        "config-token",
        &format!("--from-literal=token={}", var("GANTRY_TEST_GIT_PASSWORD")),
    ]);
    let source = flux_follow(&config_url, &ns);
    let flux = var("GANTRY_TEST_FLUX_NAMESPACE");

    let github = FakeGithub::start_with_repos(HashMap::from([(format!("acme/{app}"), bare)])).await;
    let data = tempfile::tempdir().unwrap();
    let config = format!(
        r#"backend = "kubernetes"
[kubernetes]
namespace = "{ns}"
node_selector = {{ "gantry.dev/real-node" = "true" }}
tolerations = [{{ key = "gantry.dev/real-node", operator = "Equal", value = "true", effect = "NoSchedule" }}]
trivy_db_repository = "{db}"
[[kubernetes.gitops_agents]]
repo = "{config_url}"
flux = {{ namespace = "{flux}", name = "{source}" }}
[kubernetes.images]
clone = "{base}"
default_job = "{base}"
kaniko = "{kaniko}"
trivy = "{trivy}"
gitops = "{gitops}"
[[grants]]
secret = "registry"
repos = ["acme/*"]
[[grants]]
secret = "config-token"
repos = ["acme/*"]
branches = ["main"]
"#,
        db = trivy_db(&registry),
        kaniko = var("GANTRY_TEST_IMAGE_KANIKO"),
        trivy = var("GANTRY_TEST_IMAGE_TRIVY"),
        gitops = var("GANTRY_TEST_IMAGE_GITOPS"),
    );
    let token = var("GANTRY_TEST_GIT_PASSWORD");
    let gantry = crate::node::serve(data.path(), &github, &config, &token, &[]);

    // The first push: every link, and the deploy.
    let pushed = Instant::now();
    let (code, _) = send_push(
        &gantry,
        "d-chain-1",
        &push_payload(&app, &url, ZERO, &shas[0], &[]),
    )
    .await;
    assert_eq!(code, 202);
    let run_id = runs_of_delivery(&gantry, "d-chain-1").await.remove(0);
    let run = final_run(&gantry, &run_id).await;
    assert_eq!(run["status"], "success", "{run:#}");
    let digest = registry_digest(&registry, &repo, &shas[0]);
    assert_eq!(
        job(&run, "image")["steps"][0]["summary"],
        format!("pushed digest {digest}").as_str(),
        "the build step reports what the registry holds: {run:#}"
    );
    assert_eq!(registry_digest(&registry, &repo, "main"), digest);
    let scan = job(&run, "scan")["steps"][0]["summary"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(scan, "no vulnerabilities", "{run:#}");
    let config_commit = git(&config_bare, &["log", "-1", "--format=%B", "main"]);
    assert!(
        config_commit.contains(&format!("acme/{app}@{}", &shas[0][..12]))
            && config_commit.contains(&format!("/runs/{run_id}")),
        "the config commit names the app, its commit and the run: {config_commit}"
    );
    let deployed = deployed_digest(&ns, &format!("{image}:{}", shas[0])).await;
    assert_eq!(deployed, digest, "the Pod runs exactly what Kaniko pushed");
    eprintln!(
        "push → Deployment Ready with the new image: {:?}",
        pushed.elapsed()
    );
    let statuses: Vec<_> = eventually(Duration::from_secs(30), "the statuses", || async {
        let s: Vec<_> = github
            .statuses()
            .into_iter()
            .filter(|s| s.sha == shas[0] && s.state != "pending")
            .collect();
        (!s.is_empty()).then_some(s)
    })
    .await;
    assert!(
        statuses.iter().all(|s| s.state == "success"
            && s.target_url
                .as_deref()
                .is_some_and(|u| u.contains(&format!("/runs/{run_id}")))),
        "{statuses:#?}"
    );

    // The second push: its image has a HIGH finding. The scan stops it.
    let commits_before = git(&config_bare, &["rev-list", "--count", "main"]);
    let (code, _) = send_push(
        &gantry,
        "d-chain-2",
        &push_payload(&app, &url, &shas[0], &shas[1], &["Dockerfile"]),
    )
    .await;
    assert_eq!(code, 202);
    let run_id = runs_of_delivery(&gantry, "d-chain-2").await.remove(0);
    let run = final_run(&gantry, &run_id).await;
    assert_eq!(run["status"], "failure", "{run:#}");
    let scan = &job(&run, "scan")["steps"][0];
    assert_eq!(scan["status"], "failure", "{run:#}");
    assert_eq!(
        scan["exit_code"],
        gantry_core::trivy::FINDINGS_EXIT_CODE,
        "{run:#}"
    );
    assert!(
        scan["summary"]
            .as_str()
            .is_some_and(|s| s.contains("CVE-2099-1001")),
        "{run:#}"
    );
    assert_eq!(job(&run, "deploy")["status"], "skipped", "{run:#}");
    assert_eq!(
        git(&config_bare, &["rev-list", "--count", "main"]),
        commits_before,
        "no config commit for an image that failed its scan"
    );
    eventually(Duration::from_secs(30), "the failure status", || async {
        github
            .statuses()
            .iter()
            .any(|s| s.sha == shas[1] && s.state == "failure")
            .then_some(())
    })
    .await;
    assert_eq!(
        deployed_digest(&ns, &format!("{image}:{}", shas[0])).await,
        digest,
        "the Deployment keeps the image that passed"
    );
}
