//! `gantry serve` on the test cluster's real node (tests/cluster/node/up): a signed push webhook
//! from the fake GitHub, the pipeline read through the (fake) contents API at exactly the pushed
//! commit, the job a Pod that a real kubelet runs with containerd and runc, the clone from an
//! authenticated git server with the forge's token, logs through the real `pods/log`, statuses
//! back to the fake GitHub. Cancel, a restart of Gantry mid-step and the operator's default job
//! timeout act on real containers.
//!
//! Needs the test cluster with its real node (`./dev test` starts it); without it the tests fail
//! and say what is missing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::node::{bare_repo, git, kubectl, namespace, var};
use crate::serve::{run_of, runs_of_delivery};
use crate::server::{FakeGithub, Gantry, client, eventually, get_json, push_payload, send_push};

const ZERO: &str = "0000000000000000000000000000000000000000";
const API_TOKEN: &str = "it-api-token";

/// What these tests need of the real node: its image, and the git server's password (accepted
/// under `x-access-token`, as GitHub takes a token).
struct Node {
    image: String,
    token: String,
}

fn node() -> Node {
    Node {
        image: var("GANTRY_TEST_IMAGE"),
        token: var("GANTRY_TEST_GIT_PASSWORD"),
    }
}

/// A private repository `acme/NAME` on the node's git server with one commit per pipeline
/// text; its clone URL, its name, its bare directory and the commits.
fn private_repo(pipelines: &[String]) -> (String, String, PathBuf, Vec<String>) {
    let name = format!("app-{}", std::process::id() as u64 * 1000 + rand_suffix());
    let (url, bare) = bare_repo(&name);
    let work = tempfile::tempdir().unwrap();
    git(work.path(), &["init", "-q"]);
    let mut shas = Vec::new();
    for (i, pipeline) in pipelines.iter().enumerate() {
        std::fs::write(work.path().join(".gantry.yaml"), pipeline).unwrap();
        std::fs::write(work.path().join("marker.txt"), format!("commit {i}\n")).unwrap();
        git(work.path(), &["add", "-A"]);
        git(work.path(), &["commit", "-q", "-m", &format!("commit {i}")]);
        shas.push(git(work.path(), &["rev-parse", "HEAD"]));
    }
    git(
        work.path(),
        &["push", "-q", bare.to_str().unwrap(), "HEAD:refs/heads/main"],
    );
    (url, name, bare, shas)
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// `gantry serve` on the Kubernetes backend: the namespace `ns`, pods on the real node (its
/// label and taint, as a dedicated CI node pool), Gantry's own images the test image, the
/// pipeline read through the contents API, `token` as the GitHub token (also the clone's).
fn serve(
    node: &Node,
    ns: &str,
    data: &Path,
    github: &FakeGithub,
    token: &str,
    env: &[(&str, &str)],
) -> Gantry {
    let config = format!(
        r#"backend = "kubernetes"
[kubernetes]
namespace = "{ns}"
node_selector = {{ "gantry.dev/real-node" = "true" }}
tolerations = [{{ key = "gantry.dev/real-node", operator = "Equal", value = "true", effect = "NoSchedule" }}]
[kubernetes.images]
clone = "{image}"
default_job = "{image}"
[kubernetes.timings]
stuck_grace = 20
cancel_grace = 2
"#,
        image = node.image
    );
    crate::node::serve(data, github, &config, token, env)
}

/// What `push_one` set up: the fake GitHub serving the repository, `gantry serve` with its data
/// directory, and the run of the push.
struct Pushed {
    github: FakeGithub,
    data: tempfile::TempDir,
    gantry: Gantry,
    run_id: String,
}

/// A private repository whose pipeline runs `steps` in the test image, a fake GitHub serving
/// it, `gantry serve` on the real node (with `env`), and a signed push of its commit.
async fn push_one(node: &Node, ns: &str, steps: &[&str], env: &[(&str, &str)]) -> Pushed {
    let (url, name, bare, shas) = private_repo(&[pipeline(&node.image, steps)]);
    let github =
        FakeGithub::start_with_repos(HashMap::from([(format!("acme/{name}"), bare)])).await;
    let data = tempfile::tempdir().unwrap();
    let gantry = serve(node, ns, data.path(), &github, &node.token, env);
    let delivery = format!("d-{name}");
    let (code, _) = send_push(
        &gantry,
        &delivery,
        &push_payload(&name, &url, ZERO, &shas[0], &[]),
    )
    .await;
    assert_eq!(code, 202);
    let run_id = runs_of_delivery(&gantry, &delivery).await.remove(0);
    Pushed {
        github,
        data,
        gantry,
        run_id,
    }
}

async fn final_run(gantry: &Gantry, id: &str) -> Value {
    crate::serve::final_run_within(gantry, id, Duration::from_secs(120)).await
}

/// The text lines of step `step` of job `job` (an object of a run's `jobs`).
async fn step_lines(gantry: &Gantry, job: &Value, step: usize) -> Vec<String> {
    let url = format!(
        "{}/api/v1/jobs/{}/attempts/{}/steps/{step}/log",
        gantry.url,
        job["id"].as_str().unwrap(),
        job["attempt"]
    );
    let page = get_json(&url).await;
    page["lines"]
        .as_array()
        .unwrap_or_else(|| panic!("{url}: {page:#}"))
        .iter()
        .filter_map(|l| l["text"].as_str().map(str::to_owned))
        .collect()
}

fn pipeline(image: &str, steps: &[&str]) -> String {
    let mut text = format!("name: ci\njobs:\n  test:\n    image: {image}\n    steps:\n");
    for (i, s) in steps.iter().enumerate() {
        text.push_str(&format!(
            "      - name: step{i}\n        run: {}\n",
            serde_json::to_string(s).unwrap()
        ));
    }
    text
}

/// Processes on this machine whose command line contains `marker`.
fn processes_with(marker: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(marker) && !c.contains("cargo"))
        .count()
}

fn unique_sleep() -> String {
    format!(
        "{}",
        900_000 + std::process::id() as u64 * 10 + rand_suffix()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_on_the_real_node_clones_the_pushed_commit_of_a_private_repository_and_runs_its_steps()
 {
    let node = node();
    let ns = namespace("e2e-clone", "baseline");
    // Two commits; the push is of the first, which is no longer the branch's tip.
    let steps = [
        "cat marker.txt; git rev-parse HEAD",
        "echo failing now; exit 3",
        "echo never printed",
    ];
    let (url, name, bare, shas) = private_repo(&[
        pipeline(&node.image, &steps),
        pipeline(&node.image, &["echo tip"]),
    ]);
    let github =
        FakeGithub::start_with_repos(HashMap::from([(format!("acme/{name}"), bare)])).await;
    let data = tempfile::tempdir().unwrap();
    let gantry = serve(&node, &ns, data.path(), &github, &node.token, &[]);
    let (code, _) = send_push(
        &gantry,
        "d-clone",
        &push_payload(&name, &url, ZERO, &shas[0], &[]),
    )
    .await;
    assert_eq!(code, 202);
    let run_id = runs_of_delivery(&gantry, "d-clone").await.remove(0);
    let run = final_run(&gantry, &run_id).await;
    assert_eq!(run["status"], "failure", "{run:#}");
    let job = &run["jobs"][0];
    let step_states: Vec<&str> = job["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["status"].as_str().unwrap())
        .collect();
    assert_eq!(step_states, ["success", "failure", "skipped"], "{run:#}");
    assert_eq!(job["steps"][1]["exit_code"], 3, "{run:#}");
    assert_eq!(
        step_lines(&gantry, job, 0).await,
        ["commit 0", shas[0].as_str()]
    );
    assert_eq!(step_lines(&gantry, job, 1).await, ["failing now"]);
    assert!(step_lines(&gantry, job, 2).await.is_empty());
    eventually(Duration::from_secs(30), "the failure status", || async {
        github
            .states("gantry/ci")
            .last()
            .map(|s| s == "failure")
            .unwrap_or(false)
            .then_some(())
    })
    .await;
    let statuses = github.statuses();
    assert!(statuses.iter().all(|s| s.sha == shas[0]), "{statuses:?}");
    // The token went to the pod in a Secret owned by the Pod, never into the Pod spec.
    let pods = kubectl(&["-n", &ns, "get", "pods", "-o", "yaml"]);
    assert!(pods.contains("secretKeyRef"), "{pods}");
    assert!(!pods.contains(&node.token), "the token is in a Pod spec");
    drop(gantry);

    // The same push to a Gantry whose token the git server refuses: the clone fails and says so.
    let data = tempfile::tempdir().unwrap();
    let gantry = serve(&node, &ns, data.path(), &github, "not-the-token", &[]);
    send_push(
        &gantry,
        "d-refused",
        &push_payload(&name, &url, ZERO, &shas[0], &[]),
    )
    .await;
    let run_id = runs_of_delivery(&gantry, "d-refused").await.remove(0);
    let run = final_run(&gantry, &run_id).await;
    assert_eq!(run["status"], "error", "{run:#}");
    let text = run.to_string();
    assert!(text.contains("checkout failed"), "{run:#}");
    assert!(
        text.contains("Authentication failed") || text.contains("401"),
        "git's reason reaches the user: {run:#}"
    );
    let lines = step_lines(&gantry, &run["jobs"][0], 0).await;
    assert!(
        lines.iter().any(|l| l.contains("checkout failed")),
        "{lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_on_the_real_node_cancel_deletes_the_pod_and_ends_the_step_process() {
    let node = node();
    let ns = namespace("e2e-cancel", "baseline");
    let marker = unique_sleep();
    // (`pushed` keeps the data directory and the fake GitHub alive.)
    let pushed = push_one(
        &node,
        &ns,
        &[&format!("echo started; exec sleep {marker}")],
        &[],
    )
    .await;
    let (gantry, run_id) = (&pushed.gantry, &pushed.run_id);
    eventually(Duration::from_secs(60), "the step to print", || async {
        let run = run_of(gantry, run_id).await;
        if run["jobs"][0]["steps"][0]["status"] != "running" {
            return None;
        }
        (step_lines(gantry, &run["jobs"][0], 0).await == ["started"]).then_some(())
    })
    .await;
    assert_eq!(processes_with(&format!("sleep {marker}")), 1);
    let cancelled = client()
        .post(format!("{}/api/v1/runs/{run_id}/cancel", gantry.url))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status().as_u16(), 200);
    let run = final_run(gantry, run_id).await;
    assert_eq!(run["status"], "cancelled", "{run:#}");
    eventually(
        Duration::from_secs(30),
        "the pod and its process to be gone",
        || async {
            let pods = kubectl(&["-n", &ns, "get", "pods", "-o", "name"]);
            (pods.trim().is_empty() && processes_with(&format!("sleep {marker}")) == 0)
                .then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_on_the_real_node_a_restart_mid_step_loses_and_repeats_no_line() {
    let node = node();
    let ns = namespace("e2e-restart", "baseline");
    let Pushed {
        github,
        data,
        gantry,
        run_id,
    } = push_one(
        &node,
        &ns,
        &[
            "for i in 1 2 3 4 5 6 7 8 9 10; do echo line $i; sleep 0.5; done",
            "echo after the restart",
        ],
        &[],
    )
    .await;
    eventually(
        Duration::from_secs(60),
        "the step's second line",
        || async {
            let run = run_of(&gantry, &run_id).await;
            (step_lines(&gantry, &run["jobs"][0], 0).await.len() >= 2).then_some(())
        },
    )
    .await;
    gantry.kill_hard();
    let gantry = serve(&node, &ns, data.path(), &github, &node.token, &[]);
    let run = final_run(&gantry, &run_id).await;
    assert_eq!(run["status"], "success", "{run:#}");
    let expected: Vec<String> = (1..=10).map(|i| format!("line {i}")).collect();
    assert_eq!(step_lines(&gantry, &run["jobs"][0], 0).await, expected);
    assert_eq!(
        step_lines(&gantry, &run["jobs"][0], 1).await,
        ["after the restart"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_on_the_real_node_a_job_without_a_timeout_gets_the_operators_default() {
    let node = node();
    let ns = namespace("e2e-deadline", "baseline");
    let marker = unique_sleep();
    // (`pushed` keeps the data directory and the fake GitHub alive.)
    let pushed = push_one(
        &node,
        &ns,
        &[&format!("echo started; exec sleep {marker}")],
        &[("GANTRY_DEFAULT_JOB_TIMEOUT", "6s")],
    )
    .await;
    let (gantry, run_id) = (&pushed.gantry, &pushed.run_id);
    let run = final_run(gantry, run_id).await;
    assert_ne!(run["status"], "success", "{run:#}");
    let pod = kubectl(&[
        "-n",
        &ns,
        "get",
        "pods",
        "-o",
        "jsonpath={.items[0].spec.activeDeadlineSeconds} {.items[0].status.reason}",
    ]);
    assert_eq!(pod.trim(), "6 DeadlineExceeded", "{run:#}");
    eventually(
        Duration::from_secs(30),
        "the step's process to be gone",
        || async { (processes_with(&format!("sleep {marker}")) == 0).then_some(()) },
    )
    .await;
}

/// The Kubernetes API fails on purpose while a job runs on the real node — a tenth of Gantry's
/// requests answered 500 or 429 (with `Retry-After`) or timed out, watches closed at once
/// (`GANTRY_FAULTS`, site `kube.request`; the seed is printed on failure,
/// `GANTRY_TEST_FAULT_SEED` repeats it): the job still runs to its end, its log is whole with no
/// line twice, and GitHub gets the final status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_on_the_real_node_rides_out_a_failing_kubernetes_api() {
    let node = node();
    let ns = namespace("e2e-kube-faults", "baseline");
    let seed = crate::injected::seed();
    // The run makes only about ten requests: besides a seeded share, the 2nd, 5th and 7th fail
    // for sure (a share of 0.1 alone missed every one of them in CI).
    let plan =
        format!("seed={seed} rate=0.15 sites=kube kube.request#2 kube.request#5 kube.request#7");
    let pushed = push_one(
        &node,
        &ns,
        &[
            "for i in $(seq 1 30); do echo line $i; sleep 0.1; done",
            "echo second step",
        ],
        &[("GANTRY_FAULTS", &plan)],
    )
    .await;
    let (gantry, run_id) = (&pushed.gantry, &pushed.run_id);
    let run = crate::serve::final_run_within(gantry, run_id, Duration::from_secs(240)).await;
    assert_eq!(run["status"], "success", "[GANTRY_FAULTS={plan:?}] {run:#}");
    let expected: Vec<String> = (1..=30).map(|i| format!("line {i}")).collect();
    assert_eq!(
        step_lines(gantry, &run["jobs"][0], 0).await,
        expected,
        "[GANTRY_FAULTS={plan:?}]"
    );
    assert_eq!(
        step_lines(gantry, &run["jobs"][0], 1).await,
        ["second step"],
        "[GANTRY_FAULTS={plan:?}]"
    );
    eventually(Duration::from_secs(60), "the success status", || async {
        (pushed.github.states("gantry/ci").last().map(String::as_str) == Some("success"))
            .then_some(())
    })
    .await;
    let metrics = crate::faults::metrics(gantry).await;
    assert!(
        metrics.lines().any(
            |l| l.starts_with("gantry_faults_injected{site=\"kube.request\"}")
                && !l.ends_with(" 0")
        ),
        "[GANTRY_FAULTS={plan:?}] no Kubernetes API request failed on purpose:\n{metrics}"
    );
}
