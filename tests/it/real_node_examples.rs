//! The example pipelines of pipelines/ that need no internet, each run by `gantry serve` on the
//! test cluster's real node (a real kubelet, containerd and runc) after a signed push webhook,
//! on the small repository it is written for (the same ones as tests/it/examples.rs), in a
//! namespace enforcing Pod Security `baseline`; those whose pods work under `restricted` run
//! once more with Gantry's `security = "restricted"` in a namespace enforcing `restricted`.
//!
//! The examples name public images (`rust:1.95`, `golang:1.24`, `postgres:16`, …) and Gantry
//! keeps its own defaults (`alpine/git` for the clone, `alpine` for jobs without an image). As
//! an air-gapped user would, the test gives Gantry one `image_mirrors` rule, `docker.io/` →
//! `REGISTRY/mirror/`, and `image_pull_secrets` with a `kubernetes.io/dockerconfigjson`
//! Secret; the mirror holds the test images (tests/cluster/node/images) under the mirrored
//! names, copied there with skopeo (see `MIRRORED`), so every container is pulled from the
//! node's registry over TLS with basic auth.
//!
//! Left out: `kaniko-trivy.yaml`, `gitops-kustomize.yaml` and `gitops-full.yaml` need Kaniko,
//! Trivy and (the gitops ones) a configuration repository and the gitops helper image; none of
//! those images is built here yet (another issue).
//!
//! `postgres-service.yaml` runs under `restricted` too: its service keeps its data in a
//! `PGDATA` directory of its own, as the official image documents for a user other than root
//! (the image's own data directory belongs to `postgres`, and `initdb` must own its directory).
//!
//! Needs the test cluster with its real node (`./dev test` starts it); without it the tests
//! fail and say what is missing.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;

use crate::examples::{example, make_executable, tiny_crate, tiny_module};
use crate::node::{bare_repo, git, kubectl, serve, var};
use crate::serve::{run_of, runs_of_delivery};
use crate::server::{FakeGithub, eventually, get_json, push_payload, send_push};
use crate::support::Repo;

const ZERO: &str = "0000000000000000000000000000000000000000";
const PULL_SECRET: &str = "mirror-pull";

/// What the mirror holds: each test image (by its `GANTRY_TEST_IMAGE*` variable) under the
/// Docker Hub names the examples and Gantry's default images use, mirrored under `mirror/`.
const MIRRORED: &[(&str, &str)] = &[
    ("GANTRY_TEST_IMAGE_RUST", "library/rust:1.95"),
    ("GANTRY_TEST_IMAGE_RUST", "library/rust:1.94"),
    ("GANTRY_TEST_IMAGE_RUST", "library/rust:nightly"),
    ("GANTRY_TEST_IMAGE_GO", "library/golang:1.24"),
    ("GANTRY_TEST_IMAGE_POSTGRES", "library/postgres:16"),
    ("GANTRY_TEST_IMAGE", "library/debian:bookworm-slim"),
    // Gantry's defaults: `images.default_job` and `images.clone`.
    ("GANTRY_TEST_IMAGE", "library/alpine:3.22"),
    ("GANTRY_TEST_IMAGE", "alpine/git:2.49.1"),
];

/// The mirror's prefix, `REGISTRY/mirror/`, once every name of `MIRRORED` is in it.
fn mirror() -> &'static str {
    static MIRROR: OnceLock<String> = OnceLock::new();
    MIRROR.get_or_init(|| {
        let registry = var("GANTRY_TEST_REGISTRY");
        let creds = format!(
            "{}:{}",
            var("GANTRY_TEST_REGISTRY_USER"),
            var("GANTRY_TEST_REGISTRY_PASSWORD")
        );
        let certs = tempfile::tempdir().unwrap();
        std::fs::copy(var("GANTRY_TEST_REGISTRY_CA"), certs.path().join("ca.crt")).unwrap();
        for (source, name) in MIRRORED {
            let out = Command::new("skopeo")
                .args([
                    "copy",
                    "--quiet",
                    "--src-creds",
                    &creds,
                    "--dest-creds",
                    &creds,
                ])
                .arg("--src-cert-dir")
                .arg(certs.path())
                .arg("--dest-cert-dir")
                .arg(certs.path())
                .arg(format!("docker://{}", var(source)))
                .arg(format!("docker://{registry}/mirror/{name}"))
                .output()
                .expect("run skopeo");
            assert!(
                out.status.success(),
                "skopeo copy {source} to mirror/{name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        format!("{registry}/mirror/")
    })
}

/// A namespace of its own enforcing the Pod Security `level`, with the mirror's pull Secret.
fn namespace(tag: &str, level: &str) -> String {
    let ns = crate::node::namespace(&format!("ex-{tag}"), level);
    kubectl(&[
        "-n",
        &ns,
        "create",
        "secret",
        "docker-registry",
        PULL_SECRET,
        &format!("--docker-server={}", var("GANTRY_TEST_REGISTRY")),
        &format!("--docker-username={}", var("GANTRY_TEST_REGISTRY_USER")),
        &format!("--docker-password={}", var("GANTRY_TEST_REGISTRY_PASSWORD")),
    ]);
    ns
}

/// `repo`'s commit pushed to a private repository `acme/NAME` on the node's git server: its
/// name, clone URL and bare directory.
fn publish(repo: &Repo, tag: &str) -> (String, String, PathBuf) {
    let name = format!("ex-{tag}-{}", std::process::id());
    let (url, bare) = bare_repo(&name);
    git(
        repo.path(),
        &["push", "-q", bare.to_str().unwrap(), "HEAD:refs/heads/main"],
    );
    (name, url, bare)
}

/// The Gantry configuration an air-gapped cluster with a dedicated CI node would have.
fn config(ns: &str, level: &str) -> String {
    format!(
        r#"backend = "kubernetes"
[kubernetes]
namespace = "{ns}"
security = "{level}"
image_pull_secrets = ["{PULL_SECRET}"]
node_selector = {{ "gantry.dev/real-node" = "true" }}
tolerations = [{{ key = "gantry.dev/real-node", operator = "Equal", value = "true", effect = "NoSchedule" }}]
image_mirrors = [{{ from = "docker.io/", to = "{mirror}" }}]
[kubernetes.timings]
stuck_grace = 60
cancel_grace = 2
log_drain = 5
"#,
        mirror = mirror()
    )
}

/// A finished run as a user sees it: the run, its jobs by name, their steps' lines.
struct Finished {
    run: Value,
    jobs: HashMap<String, Value>,
    lines: HashMap<(String, usize), Vec<String>>,
    github: FakeGithub,
    sha: String,
}

impl Finished {
    fn job(&self, name: &str) -> &Value {
        self.jobs
            .get(name)
            .unwrap_or_else(|| panic!("no job {name}: {:#}", self.run))
    }

    fn steps(&self, job: &str) -> Vec<&str> {
        self.job(job)["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["status"].as_str().unwrap())
            .collect()
    }

    fn log(&self, job: &str, step: usize) -> String {
        self.lines
            .get(&(job.to_owned(), step))
            .map(|l| l.join("\n"))
            .unwrap_or_default()
    }

    fn assert_log(&self, job: &str, step: usize, needle: &str) {
        let log = self.log(job, step);
        assert!(
            log.contains(needle),
            "{needle:?} not in step {step} of {job}:\n{log}\n{:#}",
            self.run
        );
    }

    /// The last commit status of each context, all on the pushed commit.
    async fn statuses(&self, contexts: &[&str]) -> HashMap<String, String> {
        let contexts: Vec<String> = contexts.iter().map(|c| (*c).to_owned()).collect();
        eventually(
            Duration::from_secs(30),
            "the final commit statuses",
            || async {
                let mut last = HashMap::new();
                for s in self.github.statuses() {
                    assert_eq!(s.sha, self.sha, "a status on another commit");
                    last.insert(s.context.clone(), s.state.clone());
                }
                contexts
                    .iter()
                    .all(|c| last.get(c).is_some_and(|s| s != "pending"))
                    .then_some(last)
            },
        )
        .await
    }
}

/// Without colours (`CARGO_TERM_COLOR: always`): the text a user reads.
fn plain(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Pushes `repo` (its pipeline an example) to the git server, sends the signed push webhook
/// (with `paths` changed) to a `gantry serve` on the real node under `level`, and waits for the
/// run to finish.
async fn run_example(repo: &Repo, tag: &str, level: &str, paths: &[&str]) -> Finished {
    let ns = namespace(tag, level);
    let (name, url, bare) = publish(repo, tag);
    let sha = repo.git(&["rev-parse", "HEAD"]);
    let github =
        FakeGithub::start_with_repos(HashMap::from([(format!("acme/{name}"), bare)])).await;
    let data = tempfile::tempdir().unwrap();
    let gantry = serve(
        data.path(),
        &github,
        &config(&ns, level),
        &var("GANTRY_TEST_GIT_PASSWORD"),
        &[],
    );
    let delivery = format!("d-{tag}");
    let (code, answer) = send_push(
        &gantry,
        &delivery,
        &push_payload(&name, &url, ZERO, &sha, paths),
    )
    .await;
    assert_eq!(code, 202, "{answer:#}");
    let runs = runs_of_delivery(&gantry, &delivery).await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    let run = eventually(Duration::from_secs(600), "the run to finish", || async {
        let run = run_of(&gantry, &runs[0]).await;
        ["success", "failure", "cancelled", "error"]
            .contains(&run["status"].as_str().unwrap_or(""))
            .then_some(run)
    })
    .await;
    let mut jobs = HashMap::new();
    let mut lines = HashMap::new();
    for job in run["jobs"].as_array().unwrap() {
        let job_name = job["name"].as_str().unwrap().to_owned();
        for step in 0..job["steps"].as_array().unwrap().len() {
            let url = format!(
                "{}/api/v1/jobs/{}/attempts/{}/steps/{step}/log",
                gantry.url,
                job["id"].as_str().unwrap(),
                job["attempt"]
            );
            let page = get_json(&url).await;
            let text: Vec<String> = page["lines"]
                .as_array()
                .unwrap_or_else(|| panic!("{url}: {page:#}"))
                .iter()
                .filter_map(|l| l["text"].as_str().map(plain))
                .collect();
            lines.insert((job_name.clone(), step), text);
        }
        jobs.insert(job_name, job.clone());
    }
    // Every pod ran on the real node, from the mirror.
    let pods = kubectl(&[
        "-n",
        &ns,
        "get",
        "pods",
        "-o",
        "jsonpath={range .items[*]}{.spec.nodeName} {.spec.initContainers[*].image} {.spec.containers[*].image}{\"\\n\"}{end}",
    ]);
    for pod in pods.lines().filter(|l| !l.trim().is_empty()) {
        let mut words = pod.split_whitespace();
        assert_eq!(
            words.next(),
            Some(var("GANTRY_TEST_REAL_NODE").as_str()),
            "{pod}"
        );
        assert!(words.all(|image| image.starts_with(mirror())), "{pod}");
    }
    drop(gantry);
    Finished {
        run,
        jobs,
        lines,
        github,
        sha,
    }
}

fn rust_repo() -> Repo {
    let repo = Repo::new();
    tiny_crate(&repo);
    repo
}

async fn rust_test_example(level: &str) {
    let repo = rust_repo();
    repo.write(".gantry.yaml", &example("rust-test.yaml"))
        .commit("crate");
    let done = run_example(&repo, &format!("rust-{level}"), level, &["src/lib.rs"]).await;
    assert_eq!(done.run["status"], "success", "{:#}", done.run);
    for job in ["fmt", "clippy", "test"] {
        assert_eq!(done.steps(job), ["success"], "{job}: {:#}", done.run);
    }
    done.assert_log("clippy", 0, "Checking tiny v0.1.0");
    done.assert_log("test", 0, "test tests::adds ... ok");
    done.assert_log("test", 0, "test result: ok. 1 passed");
    let statuses = done
        .statuses(&[
            "gantry/rust",
            "gantry/rust/fmt",
            "gantry/rust/clippy",
            "gantry/rust/test",
        ])
        .await;
    for (context, state) in &statuses {
        assert_eq!(state, "success", "{context}: {statuses:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_example_on_the_real_node_formats_lints_and_tests_the_crate_under_baseline() {
    rust_test_example("baseline").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_example_on_the_real_node_formats_lints_and_tests_the_crate_under_restricted() {
    rust_test_example("restricted").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_example_on_the_real_node_tests_every_combination_then_reports_under_baseline() {
    matrix_example("baseline").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_example_on_the_real_node_tests_every_combination_then_reports_under_restricted() {
    matrix_example("restricted").await;
}

async fn matrix_example(level: &str) {
    let repo = rust_repo();
    repo.write(".gantry.yaml", &example("matrix.yaml"))
        .commit("crate");
    let done = run_example(&repo, &format!("matrix-{level}"), level, &["src/lib.rs"]).await;
    assert_eq!(done.run["status"], "success", "{:#}", done.run);
    let tests: Vec<&String> = done
        .jobs
        .keys()
        .filter(|name| name.starts_with("test"))
        .collect();
    assert_eq!(tests.len(), 4, "{tests:?}");
    let mut seen = Vec::new();
    for job in &tests {
        assert_eq!(done.steps(job), ["success"], "{job}: {:#}", done.run);
        done.assert_log(job, 0, "test result: ok. 1 passed");
        let log = done.log(job, 0);
        let line = log
            .lines()
            .find(|l| l.starts_with("testing with rust "))
            .unwrap_or_else(|| panic!("{job}: {log}"));
        seen.push(line.to_owned());
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            "testing with rust 1.94 on linux",
            "testing with rust 1.95 on alpine",
            "testing with rust 1.95 on linux",
            "testing with rust nightly on linux",
        ]
    );
    assert_eq!(done.steps("report"), ["success"]);
    done.assert_log("report", 0, "all matrix jobs finished");
    let statuses = done
        .statuses(&["gantry/matrix", "gantry/matrix/report"])
        .await;
    assert_eq!(
        statuses.len(),
        6,
        "the run, 4 variants, the report: {statuses:?}"
    );
    for (context, state) in &statuses {
        assert_eq!(state, "success", "{context}: {statuses:?}");
    }
}

async fn go_example(level: &str) {
    let repo = Repo::new();
    tiny_module(&repo);
    repo.write(".gantry.yaml", &example("go-test.yaml"))
        .commit("module");
    let done = run_example(&repo, &format!("go-{level}"), level, &["tiny.go"]).await;
    assert_eq!(done.run["status"], "success", "{:#}", done.run);
    assert_eq!(done.steps("test"), ["success", "success"], "{:#}", done.run);
    done.assert_log("test", 1, "ok  \texample.com/tiny");
    let statuses = done.statuses(&["gantry/go", "gantry/go/test"]).await;
    for (context, state) in &statuses {
        assert_eq!(state, "success", "{context}: {statuses:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_example_on_the_real_node_vets_and_tests_the_module_under_baseline() {
    go_example("baseline").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_example_on_the_real_node_vets_and_tests_the_module_under_restricted() {
    go_example("restricted").await;
}

/// An integration test with no dependencies: the PostgreSQL wire protocol's startup message as
/// `DATABASE_URL`'s user for its database, over TCP; the server must ask for a SCRAM-SHA-256
/// password, as the official image's `scram-sha-256` host rule does.
const INTEGRATION_TEST: &str = r#"use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

#[test]
fn postgres_asks_the_database_url_user_for_a_scram_password() {
    let url = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let rest = url.strip_prefix("postgres://").expect("a postgres:// URL");
    let (auth, rest) = rest.split_once('@').expect("user@host");
    let user = auth.split(':').next().unwrap();
    let (addr, database) = rest.split_once('/').expect("host/database");
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut body = 196608u32.to_be_bytes().to_vec();
    for (key, value) in [("user", user), ("database", database)] {
        body.extend_from_slice(key.as_bytes());
        body.push(0);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut message = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    message.extend_from_slice(&body);
    stream.write_all(&message).unwrap();
    let mut head = [0u8; 5];
    stream.read_exact(&mut head).unwrap();
    let len = u32::from_be_bytes(head[1..5].try_into().unwrap()) as usize - 4;
    let mut rest = vec![0; len];
    stream.read_exact(&mut rest).unwrap();
    assert_eq!(head[0], b'R', "{}", String::from_utf8_lossy(&rest));
    assert_eq!(u32::from_be_bytes(rest[..4].try_into().unwrap()), 10, "SASL");
    assert!(String::from_utf8_lossy(&rest[4..]).contains("SCRAM-SHA-256"));
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_example_on_the_real_node_tests_against_the_service_under_baseline() {
    postgres_example("baseline").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_example_on_the_real_node_tests_against_the_service_under_restricted() {
    postgres_example("restricted").await;
}

async fn postgres_example(level: &str) {
    let repo = rust_repo();
    repo.write("tests/integration.rs", INTEGRATION_TEST);
    repo.write(".gantry.yaml", &example("postgres-service.yaml"))
        .commit("integration test");
    let done = run_example(
        &repo,
        &format!("postgres-{level}"),
        level,
        &["src/lib.rs", "tests/integration.rs"],
    )
    .await;
    assert_eq!(done.run["status"], "success", "{:#}", done.run);
    assert_eq!(
        done.steps("integration"),
        ["success", "success"],
        "{:#}",
        done.run
    );
    done.assert_log("integration", 0, "postgres is up");
    done.assert_log(
        "integration",
        1,
        "test postgres_asks_the_database_url_user_for_a_scram_password ... ok",
    );
    done.assert_log("integration", 1, "test result: ok. 1 passed");
    let statuses = done
        .statuses(&["gantry/integration", "gantry/integration/integration"])
        .await;
    for (context, state) in &statuses {
        assert_eq!(state, "success", "{context}: {statuses:?}");
    }
}

async fn cleanup_example(level: &str) {
    let repo = Repo::new();
    for (name, body) in [
        ("e2e-up", "echo environment up"),
        ("e2e-test", "echo running e2e; exit 4"),
        ("e2e-logs", "echo collected"),
        ("e2e-down", "cat e2e-logs.txt; echo environment down"),
    ] {
        repo.write(&format!("scripts/{name}"), &format!("#!/bin/sh\n{body}\n"));
        make_executable(&repo.path().join("scripts").join(name));
    }
    repo.write(".gantry.yaml", &example("cleanup.yaml"))
        .commit("scripts");
    let done = run_example(
        &repo,
        &format!("cleanup-{level}"),
        level,
        &["scripts/e2e-up"],
    )
    .await;
    assert_eq!(done.run["status"], "failure", "{:#}", done.run);
    assert_eq!(done.job("e2e")["status"], "failure", "{:#}", done.run);
    assert_eq!(
        done.steps("e2e"),
        ["success", "failure", "success", "success"],
        "{:#}",
        done.run
    );
    assert_eq!(
        done.job("e2e")["steps"][1]["exit_code"],
        4,
        "{:#}",
        done.run
    );
    done.assert_log("e2e", 0, "environment up");
    done.assert_log("e2e", 1, "running e2e");
    // The logs step wrote its file into the workspace; the tear down read it.
    done.assert_log("e2e", 3, "collected\nenvironment down");
    let statuses = done
        .statuses(&["gantry/cleanup", "gantry/cleanup/e2e"])
        .await;
    for (context, state) in &statuses {
        assert_eq!(state, "failure", "{context}: {statuses:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_example_on_the_real_node_collects_logs_and_tears_down_under_baseline() {
    cleanup_example("baseline").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_example_on_the_real_node_collects_logs_and_tears_down_under_restricted() {
    cleanup_example("restricted").await;
}
