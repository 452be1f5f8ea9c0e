//! `gantry serve` end to end: a real git server on loopback, signed GitHub webhooks, the local
//! backend, the store, and commit statuses arriving at a (fake) GitHub API.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

use crate::server::{
    FakeGithub, Gantry, GitDaemon, client, eventually, files_containing, get_json, push_payload,
    send_push,
};
use crate::support::{Repo, gantry};

// moto's S3-compatible server, the same helper as gantry-logs' own archive tests.
#[path = "../../crates/gantry-logs/tests/it/moto.rs"]
mod moto;
use moto::MotoServer;

const ZERO: &str = "0000000000000000000000000000000000000000";

const TWO_JOBS: &str = r#"
name: ci
jobs:
  build:
    steps:
      - name: compile
        run: echo building-marker
  test:
    needs: [build]
    steps:
      - name: unit
        run: echo testing-marker
"#;

fn repo_with(pipeline: &str) -> (Repo, String) {
    let repo = Repo::new();
    repo.write(".gantry.yaml", pipeline);
    repo.write("README.md", "app\n");
    let sha = repo.commit("pipeline");
    (repo, sha)
}

pub(crate) async fn run_of(gantry: &Gantry, id: &str) -> Value {
    get_json(&format!("{}/api/v1/runs/{id}", gantry.url)).await
}

/// Waits for the delivery to be planned and returns its runs.
pub(crate) async fn runs_of_delivery(gantry: &Gantry, delivery: &str) -> Vec<String> {
    eventually(
        Duration::from_secs(60),
        "the delivery to be planned",
        || async {
            let d = get_json(&format!(
                "{}/api/v1/deliveries/github/{delivery}",
                gantry.url
            ))
            .await;
            (d["state"] != "received" && !d["state"].is_null()).then(|| {
                d["runs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r.as_str().unwrap().to_owned())
                    .collect()
            })
        },
    )
    .await
}

async fn final_run(gantry: &Gantry, id: &str) -> Value {
    final_run_within(gantry, id, Duration::from_secs(90)).await
}

/// The run once it has ended, waiting up to `limit`.
pub(crate) async fn final_run_within(gantry: &Gantry, id: &str, limit: Duration) -> Value {
    eventually(limit, "the run to finish", || async {
        let run = run_of(gantry, id).await;
        let done = ["success", "failure", "cancelled", "error"]
            .contains(&run["status"].as_str().unwrap_or(""));
        done.then_some(run)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_push_runs_the_pipeline_stores_logs_and_reports_statuses() {
    let daemon = GitDaemon::start();
    let (repo, sha) = repo_with(TWO_JOBS);
    let url = daemon.publish(&repo, "app.git");
    let github = FakeGithub::start().await;
    let data = tempfile::tempdir().unwrap();
    let gantry = Gantry::start(data.path(), &github.url, &[]);

    let body = push_payload("app", &url, ZERO, &sha, &[".gantry.yaml"]);
    let (status, answer) = send_push(&gantry, "delivery-1", &body).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["status"], "accepted");

    let runs = runs_of_delivery(&gantry, "delivery-1").await;
    assert_eq!(runs.len(), 1, "one pipeline, one run");
    let run = final_run(&gantry, &runs[0]).await;
    assert_eq!(run["status"], "success", "{run:#}");
    assert_eq!(run["repository"], "acme/app");
    assert_eq!(run["commit"], sha.as_str());
    assert_eq!(run["ref"], "refs/heads/main");
    assert_eq!(run["event"], "push");
    let jobs = run["jobs"].as_array().unwrap();
    let job = |name: &str| jobs.iter().find(|j| j["name"] == name).unwrap().clone();
    let (build, test) = (job("build"), job("test"));
    assert_eq!(build["status"], "success");
    assert_eq!(test["status"], "success");
    assert_eq!(build["steps"][0]["name"], "compile");
    assert_eq!(build["steps"][0]["status"], "success");
    assert!(
        test["started_at"].as_str().unwrap() >= build["finished_at"].as_str().unwrap(),
        "test needs build: it starts after build ends\n{run:#}"
    );

    // The logs are stored.
    assert!(
        !files_containing(data.path(), "building-marker").is_empty(),
        "build's log is stored"
    );
    assert!(
        !files_containing(data.path(), "testing-marker").is_empty(),
        "test's log is stored"
    );

    // Statuses: pending first, success last, for the run and for each job, linking to Gantry.
    eventually(Duration::from_secs(30), "the final statuses", || async {
        let ok = ["gantry/ci", "gantry/ci/build", "gantry/ci/test"]
            .iter()
            .all(|c| {
                let states = github.states(c);
                states.first().map(String::as_str) == Some("pending")
                    && states.last().map(String::as_str) == Some("success")
            });
        ok.then_some(())
    })
    .await;
    let statuses = github.statuses();
    assert!(
        statuses
            .iter()
            .all(|s| s.sha == sha && s.repo == "acme/app")
    );
    assert!(
        statuses.iter().all(|s| s
            .target_url
            .as_deref()
            .is_some_and(|u| u.starts_with(&gantry.url))),
        "{statuses:?}"
    );

    // A redelivery starts nothing new and answers with the run.
    let (status, answer) = send_push(&gantry, "delivery-1", &body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "duplicate");
    assert_eq!(answer["runs"][0], runs[0].as_str());
    let all = get_json(&format!("{}/api/v1/runs", gantry.url)).await;
    assert_eq!(all["runs"].as_array().unwrap().len(), 1, "{all:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_pipeline_ends_in_failure_and_says_so_to_the_forge() {
    let daemon = GitDaemon::start();
    let (repo, sha) = repo_with(
        "name: ci\njobs:\n  test:\n    steps:\n      - name: broken\n        run: echo about-to-fail; exit 3\n",
    );
    let url = daemon.publish(&repo, "app.git");
    let github = FakeGithub::start().await;
    let data = tempfile::tempdir().unwrap();
    let gantry = Gantry::start(data.path(), &github.url, &[]);
    let (status, _) = send_push(
        &gantry,
        "d-fail",
        &push_payload("app", &url, ZERO, &sha, &[]),
    )
    .await;
    assert_eq!(status, 202);
    let runs = runs_of_delivery(&gantry, "d-fail").await;
    let run = final_run(&gantry, &runs[0]).await;
    assert_eq!(run["status"], "failure", "{run:#}");
    assert_eq!(run["jobs"][0]["steps"][0]["exit_code"], 3);
    eventually(Duration::from_secs(30), "the failure status", || async {
        (github.states("gantry/ci").last().map(String::as_str) == Some("failure")).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_asking_for_more_than_the_maximum_timeout_is_refused_and_says_why() {
    let daemon = GitDaemon::start();
    let (repo, sha) = repo_with(
        "name: ci\njobs:\n  soak:\n    timeout: 3h\n    steps:\n      - run: echo never-runs\n",
    );
    let url = daemon.publish(&repo, "app.git");
    let github = FakeGithub::start().await;
    let data = tempfile::tempdir().unwrap();
    let gantry = Gantry::start(
        data.path(),
        &github.url,
        &[("GANTRY_MAX_JOB_TIMEOUT", "2h")],
    );
    let (status, _) = send_push(
        &gantry,
        "d-long",
        &push_payload("app", &url, ZERO, &sha, &[]),
    )
    .await;
    assert_eq!(status, 202);
    let runs = runs_of_delivery(&gantry, "d-long").await;
    let run = final_run(&gantry, &runs[0]).await;
    assert_eq!(run["status"], "error", "{run:#}");
    assert_eq!(
        run["reason"],
        ".gantry.yaml: job soak asks for a timeout of 3h, more than this server's maximum of 2h",
        "{run:#}"
    );
    assert!(
        run["jobs"].as_array().is_none_or(Vec::is_empty),
        "nothing of it runs: {run:#}"
    );
    eventually(Duration::from_secs(30), "the error status", || async {
        (github.states("gantry/ci").last().map(String::as_str) == Some("error")).then_some(())
    })
    .await;
    assert!(files_containing(data.path(), "never-runs").is_empty());
}

#[test]
fn job_timeouts_that_make_no_sense_stop_gantry_serve_at_start() {
    let stderr = serve_refuses_to_start(&[
        ("GANTRY_DEFAULT_JOB_TIMEOUT", "2h"),
        ("GANTRY_MAX_JOB_TIMEOUT", "90m"),
    ]);
    assert!(
        stderr.contains(
            "the default job timeout (2h) is longer than the maximum job timeout (90m): lower --default-job-timeout or raise --max-job-timeout"
        ),
        "{stderr}"
    );
    let stderr = serve_refuses_to_start(&[("GANTRY_MAX_JOB_TIMEOUT", "1 day")]);
    assert!(
        stderr.contains("--max-job-timeout") && stderr.contains("invalid duration `1 day`"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_without_a_pipeline_starts_nothing_and_the_api_says_why() {
    let daemon = GitDaemon::start();
    let repo = Repo::new();
    repo.write("README.md", "no pipeline here\n");
    let sha = repo.commit("plain");
    let url = daemon.publish(&repo, "plain.git");
    let github = FakeGithub::start().await;
    let data = tempfile::tempdir().unwrap();
    let gantry = Gantry::start(data.path(), &github.url, &[]);
    let (status, _) = send_push(
        &gantry,
        "d-none",
        &push_payload("plain", &url, ZERO, &sha, &[]),
    )
    .await;
    assert_eq!(status, 202);
    let runs = runs_of_delivery(&gantry, "d-none").await;
    assert!(runs.is_empty());
    let d = get_json(&format!("{}/api/v1/deliveries/github/d-none", gantry.url)).await;
    assert!(
        d["reason"].as_str().unwrap().contains("no pipeline"),
        "{d:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_malformed_webhooks_are_refused_without_a_run() {
    let github = FakeGithub::start().await;
    let data = tempfile::tempdir().unwrap();
    let gantry = Gantry::start(data.path(), &github.url, &[]);
    let body = push_payload(
        "app",
        "git://127.0.0.1:1/app.git",
        ZERO,
        &"a".repeat(40),
        &[],
    );
    let response = client()
        .post(format!("{}/hooks/github", gantry.url))
        .header("x-github-event", "push")
        .header("x-github-delivery", "forged")
        .header("x-hub-signature-256", format!("sha256={}", "0".repeat(64)))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    let signature =
        gantry_forge::hmac_sha256_hex_of(crate::server::WEBHOOK_SECRET.as_bytes(), b"{not json");
    let response = client()
        .post(format!("{}/hooks/github", gantry.url))
        .header("x-github-event", "push")
        .header("x-github-delivery", "malformed")
        .header("x-hub-signature-256", format!("sha256={signature}"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let big = vec![b' '; 26 * 1024 * 1024];
    let response = client()
        .post(format!("{}/hooks/github", gantry.url))
        .header("x-github-event", "push")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 413);
    let all = get_json(&format!("{}/api/v1/runs", gantry.url)).await;
    assert!(all["runs"].as_array().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_run_reaches_a_true_final_state_after_a_hard_kill() {
    let daemon = GitDaemon::start();
    // The step's processes outlive the killed server; the restarted one must stop them. A
    // sleep of a length no other test uses tells them apart in /proc.
    let marker = unique_sleep();
    let (slow_repo, slow_sha) = repo_with(&format!(
        "name: ci\njobs:\n  slow:\n    steps:\n      - name: sleep\n        run: echo started-sleeping; sleep {marker}\n",
    ));
    let slow_url = daemon.publish(&slow_repo, "slow.git");
    let (quick_repo, quick_sha) = repo_with(TWO_JOBS);
    let quick_url = daemon.publish(&quick_repo, "quick.git");
    let github = FakeGithub::start().await;
    let data = tempfile::tempdir().unwrap();
    // One job at a time: the second run waits in the queue while the first one runs.
    let limits = [("GANTRY_MAX_RUNNING_JOBS", "1")];
    let gantry = Gantry::start(data.path(), &github.url, &limits);
    send_push(
        &gantry,
        "d-slow",
        &push_payload("slow", &slow_url, ZERO, &slow_sha, &[]),
    )
    .await;
    let slow_run = runs_of_delivery(&gantry, "d-slow").await.remove(0);
    eventually(Duration::from_secs(60), "the slow job to run", || async {
        let run = run_of(&gantry, &slow_run).await;
        (run["jobs"][0]["status"] == "running").then_some(())
    })
    .await;
    send_push(
        &gantry,
        "d-quick",
        &push_payload("quick", &quick_url, ZERO, &quick_sha, &[]),
    )
    .await;
    let quick_run = runs_of_delivery(&gantry, "d-quick").await.remove(0);
    let queued = run_of(&gantry, &quick_run).await;
    assert_eq!(queued["jobs"][0]["status"], "queued", "{queued:#}");
    assert_eq!(queued["jobs"][0]["queue_position"], 1, "{queued:#}");

    eventually(Duration::from_secs(10), "the slow step to run", || async {
        (!processes_with(&marker).is_empty()).then_some(())
    })
    .await;
    gantry.kill_hard();
    let gantry = Gantry::start(data.path(), &github.url, &limits);

    eventually(
        Duration::from_secs(5),
        "the killed server's step processes to be stopped",
        || async { processes_with(&marker).is_empty().then_some(()) },
    )
    .await;
    let slow = final_run(&gantry, &slow_run).await;
    assert_eq!(
        slow["status"], "error",
        "the local process died with the server: {slow:#}"
    );
    assert!(
        slow["jobs"][0]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("server stopped"),
        "{slow:#}"
    );
    let quick = final_run(&gantry, &quick_run).await;
    assert_eq!(quick["status"], "success", "{quick:#}");
    // No status lost: the last one each context got is its final state.
    eventually(
        Duration::from_secs(30),
        "the final statuses after the restart",
        || async {
            let slow_last = github
                .statuses()
                .into_iter()
                .rev()
                .find(|s| s.sha == slow_sha && s.context == "gantry/ci");
            let quick_last = github
                .statuses()
                .into_iter()
                .rev()
                .find(|s| s.sha == quick_sha && s.context == "gantry/ci");
            let ok = slow_last.is_some_and(|s| s.state == "error")
                && quick_last.is_some_and(|s| s.state == "success");
            ok.then_some(())
        },
    )
    .await;
    // Both workspaces are gone: the quick job's when it ended, the slow one's at the restart.
    let work = data.path().join("work");
    eventually(
        Duration::from_secs(10),
        "an empty work directory",
        || async {
            let left: Vec<_> = std::fs::read_dir(&work)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            left.is_empty().then_some(())
        },
    )
    .await;
}

/// `30.` and six digits from the clock: a `sleep` argument to find a step's processes by.
fn unique_sleep() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("30.{:06}", nanos / 1000)
}

/// The live processes (not zombies) whose command line contains `needle`, as `pid: cmdline`.
fn processes_with(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        // A zombie's command line reads as empty, so it is never found.
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push(format!("{pid}: {cmdline}"));
        }
    }
    found
}

fn auth(req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    req.header("authorization", "Bearer it-api-token")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_trigger_and_cancel_through_the_api_need_the_token() {
    let daemon = GitDaemon::start();
    let (repo, sha) =
        repo_with("name: ci\njobs:\n  slow:\n    steps:\n      - run: echo started; sleep 30\n");
    let url = daemon.publish(&repo, "app.git");
    let github = FakeGithub::start().await;
    let data = tempfile::tempdir().unwrap();
    let gantry = Gantry::start(data.path(), &github.url, &[]);
    let body = serde_json::json!({
        "forge": "github", "repository": "acme/app", "clone_url": url, "ref": "main"
    });
    let trigger_url = format!("{}/api/v1/trigger", gantry.url);
    let refused = client()
        .post(&trigger_url)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 401);
    let created = auth(client().post(&trigger_url))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status().as_u16(), 201);
    let created: Value = created.json().await.unwrap();
    let run_id = created["runs"][0].as_str().unwrap().to_owned();
    eventually(
        Duration::from_secs(60),
        "the manual run to start",
        || async {
            let run = run_of(&gantry, &run_id).await;
            (run["jobs"][0]["status"] == "running").then_some(())
        },
    )
    .await;
    let run = run_of(&gantry, &run_id).await;
    assert_eq!(run["event"], "manual");
    assert_eq!(run["commit"], sha.as_str());

    let cancel_url = format!("{}/api/v1/runs/{run_id}/cancel", gantry.url);
    let refused = client().post(&cancel_url).send().await.unwrap();
    assert_eq!(refused.status().as_u16(), 401);
    let wrong = client()
        .post(&cancel_url)
        .header("authorization", "Bearer nope")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
    let cancelled = auth(client().post(&cancel_url)).send().await.unwrap();
    assert_eq!(cancelled.status().as_u16(), 200);
    let run = final_run(&gantry, &run_id).await;
    assert_eq!(run["status"], "cancelled", "{run:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_push_compares_commits_with_git_for_paths_filters() {
    let daemon = GitDaemon::start();
    let repo = Repo::new();
    repo.write(
        ".gantry.yaml",
        "name: ci\non:\n  push: { paths: [\"src/**\"] }\njobs:\n  test:\n    steps:\n      - run: echo src-changed\n",
    );
    repo.write("README.md", "v1\n");
    let first = repo.commit("first");
    repo.write("README.md", "v2\n");
    let docs_only = repo.commit("docs");
    repo.write("src/lib.rs", "// code\n");
    let code = repo.commit("code");
    let url = daemon.publish(&repo, "app.git");
    let github = FakeGithub::start().await;
    let data = tempfile::tempdir().unwrap();
    let gantry = Gantry::start(data.path(), &github.url, &[]);
    // Forced pushes whose payloads list no commits: only git can tell what changed.
    let forced = |before: &str, after: &str| {
        let mut body: Value =
            serde_json::from_str(&push_payload("app", &url, before, after, &[])).unwrap();
        body["forced"] = Value::Bool(true);
        body["commits"] = Value::Array(vec![]);
        body.to_string()
    };
    send_push(&gantry, "d-docs", &forced(&first, &docs_only)).await;
    assert!(
        runs_of_delivery(&gantry, "d-docs").await.is_empty(),
        "only README.md changed"
    );
    send_push(&gantry, "d-code", &forced(&docs_only, &code)).await;
    let runs = runs_of_delivery(&gantry, "d-code").await;
    assert_eq!(runs.len(), 1, "src/lib.rs changed");
    assert_eq!(final_run(&gantry, &runs[0]).await["status"], "success");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_granted_secrets_reach_a_job_and_their_values_never_reach_the_logs() {
    let daemon = GitDaemon::start();
    let pipeline = r#"
name: ci
jobs:
  deploy:
    secrets: [deploy-token]
    steps:
      - name: use the token
        run: |
          if [ -n "${DEPLOY_TOKEN:-}" ]; then echo "token is $DEPLOY_TOKEN"; else echo "no token"; fi
"#;
    let (app, app_sha) = repo_with(pipeline);
    let app_url = daemon.publish(&app, "app.git");
    let (other, other_sha) = repo_with(pipeline);
    let other_url = daemon.publish(&other, "other.git");
    let github = FakeGithub::start().await;
    let data = tempfile::tempdir().unwrap();
    let config = data.path().join("gantry.toml");
    std::fs::write(
        &config,
        "[[grants]]\nsecret = \"deploy-token\"\nrepos = [\"acme/app\"]\nbranches = [\"main\"]\n",
    )
    .unwrap();
    let config = config.display().to_string();
    let env = [
        ("GANTRY_CONFIG", config.as_str()),
        ("GANTRY_SECRET_DEPLOY_TOKEN", "pa55w0rd-very-secret"),
    ];
    let gantry = Gantry::start(data.path(), &github.url, &env);
    send_push(
        &gantry,
        "d-app",
        &push_payload("app", &app_url, ZERO, &app_sha, &[]),
    )
    .await;
    send_push(
        &gantry,
        "d-other",
        &push_payload("other", &other_url, ZERO, &other_sha, &[]),
    )
    .await;
    let app_run = runs_of_delivery(&gantry, "d-app").await.remove(0);
    let other_run = runs_of_delivery(&gantry, "d-other").await.remove(0);
    assert_eq!(final_run(&gantry, &app_run).await["status"], "success");
    assert_eq!(final_run(&gantry, &other_run).await["status"], "success");
    // acme/app is granted the secret: it gets it, and its log shows it masked.
    assert!(
        !files_containing(data.path(), "token is ***").is_empty(),
        "the granted job saw the token, masked"
    );
    // acme/other is not: no value, and a note saying why.
    assert!(!files_containing(data.path(), "no token").is_empty());
    assert!(!files_containing(data.path(), "is not granted").is_empty());
    assert!(
        files_containing(data.path(), "pa55w0rd-very-secret").is_empty(),
        "the secret's value is in a file under the data directory"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_cleanly_and_the_next_start_finishes_the_story() {
    let daemon = GitDaemon::start();
    let (repo, sha) =
        repo_with("name: ci\njobs:\n  slow:\n    steps:\n      - run: echo started; sleep 30\n");
    let url = daemon.publish(&repo, "app.git");
    let github = FakeGithub::start().await;
    let data = tempfile::tempdir().unwrap();
    let gantry = Gantry::start(data.path(), &github.url, &[]);
    send_push(
        &gantry,
        "d-term",
        &push_payload("app", &url, ZERO, &sha, &[]),
    )
    .await;
    let run_id = runs_of_delivery(&gantry, "d-term").await.remove(0);
    eventually(Duration::from_secs(60), "the job to run", || async {
        (run_of(&gantry, &run_id).await["jobs"][0]["status"] == "running").then_some(())
    })
    .await;
    assert_eq!(
        gantry.terminate(Duration::from_secs(20)),
        Some(0),
        "a clean exit"
    );
    let gantry = Gantry::start(data.path(), &github.url, &[]);
    let run = final_run(&gantry, &run_id).await;
    assert_eq!(run["status"], "error", "{run:#}");
    eventually(Duration::from_secs(30), "the error status", || async {
        (github.states("gantry/ci").last().map(String::as_str) == Some("error")).then_some(())
    })
    .await;
}

/// A pipeline's step logs go to the archive that `archive_env` configures (`archived` says
/// when both are there); after a restart whose retention deletes every local log, the API still
/// serves them, from the archive.
async fn step_logs_survive_retention_through_the_archive(
    archive_env: &[(&str, &str)],
    archived: impl Fn() -> bool,
) {
    let daemon = GitDaemon::start();
    let (repo, sha) = repo_with(TWO_JOBS);
    let url = daemon.publish(&repo, "app.git");
    let github = FakeGithub::start().await;
    let data = tempfile::tempdir().unwrap();
    let local_logs = data.path().join("logs");
    let gantry = Gantry::start(data.path(), &github.url, archive_env);
    send_push(
        &gantry,
        "d-archive",
        &push_payload("app", &url, ZERO, &sha, &[]),
    )
    .await;
    let run_id = runs_of_delivery(&gantry, "d-archive").await.remove(0);
    let run = final_run(&gantry, &run_id).await;
    assert_eq!(run["status"], "success", "{run:#}");
    eventually(Duration::from_secs(30), "the archived logs", || async {
        archived().then_some(())
    })
    .await;
    assert!(!files_containing(&local_logs, "building-marker").is_empty());
    assert_eq!(gantry.terminate(Duration::from_secs(20)), Some(0));

    // Retention sweeps at start: with a budget of 0 bytes no log stays local.
    let mut env = archive_env.to_vec();
    env.push(("GANTRY_LOG_MAX_BYTES", "0"));
    let gantry = Gantry::start(data.path(), &github.url, &env);
    eventually(
        Duration::from_secs(30),
        "retention to delete the local logs",
        || async {
            files_containing(&local_logs, "building-marker")
                .is_empty()
                .then_some(())
        },
    )
    .await;
    for (name, marker) in [("build", "building-marker"), ("test", "testing-marker")] {
        let jobs = run["jobs"].as_array().unwrap();
        let job = jobs.iter().find(|j| j["name"] == name).unwrap();
        let log = format!(
            "{}/api/v1/jobs/{}/attempts/{}/steps/{}/log",
            gantry.url,
            job["id"].as_str().unwrap(),
            job["attempt"],
            job["steps"][0]["index"]
        );
        let page = get_json(&log).await;
        assert_eq!(page["complete"], true, "{page:#}");
        let texts: Vec<&str> = page["lines"]
            .as_array()
            .unwrap_or_else(|| panic!("{log}: {page:#}"))
            .iter()
            .filter_map(|l| l["text"].as_str())
            .collect();
        assert!(texts.contains(&marker), "{log}: {page:#}");
        let raw = client().get(format!("{log}/raw")).send().await.unwrap();
        assert_eq!(raw.status().as_u16(), 200);
        let raw = raw.text().await.unwrap();
        assert!(raw.contains(marker), "{log}/raw: {raw}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_logs_archived_to_a_directory_are_served_after_retention() {
    let archive = tempfile::tempdir().unwrap();
    let archive_dir = archive.path().display().to_string();
    step_logs_survive_retention_through_the_archive(
        &[("GANTRY_LOG_ARCHIVE_DIR", archive_dir.as_str())],
        || {
            !files_containing(archive.path(), "building-marker").is_empty()
                && !files_containing(archive.path(), "testing-marker").is_empty()
        },
    )
    .await;
}

/// The S3 archive's settings for `gantry serve`, against moto's server.
fn s3_archive_env(moto: &MotoServer, url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("GANTRY_LOG_ARCHIVE_URL", url.to_owned()),
        ("GANTRY_LOG_ARCHIVE_S3_ENDPOINT", moto.endpoint()),
        ("GANTRY_LOG_ARCHIVE_S3_REGION", "eu-west-1".to_owned()),
        ("GANTRY_LOG_ARCHIVE_S3_ALLOW_HTTP", "true".to_owned()),
        ("AWS_ACCESS_KEY_ID", moto::ACCESS_KEY_ID.to_owned()),
        ("AWS_SECRET_ACCESS_KEY", moto::SECRET_ACCESS_KEY.to_owned()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_logs_archived_to_s3_are_served_after_retention() {
    let moto = MotoServer::start();
    moto.create_bucket("gantry-logs");
    let env = s3_archive_env(&moto, "s3://gantry-logs/ci");
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();

    // The start-up notes say where the archive is, and nothing of the credentials.
    let data = tempfile::tempdir().unwrap();
    let mut serve = gantry(data.path(), &["serve"])
        .env("GANTRY_BACKEND", "local")
        .env("GANTRY_LISTEN", "127.0.0.1:0")
        .env("GANTRY_DATA_DIR", data.path())
        .env("GANTRY_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut printed = Vec::new();
    for line in BufReader::new(serve.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
    {
        let last = line.starts_with("  archive:");
        printed.push(line);
        if last {
            break;
        }
    }
    let _ = serve.kill();
    let _ = serve.wait();
    let expected = format!(
        "  archive:   s3://gantry-logs/ci at {} (region eu-west-1)",
        moto.endpoint()
    );
    assert_eq!(printed.last(), Some(&expected), "{printed:#?}");
    let printed = printed.join("\n");
    assert!(
        !printed.contains(moto::ACCESS_KEY_ID) && !printed.contains(moto::SECRET_ACCESS_KEY),
        "{printed}"
    );

    step_logs_survive_retention_through_the_archive(&env, || {
        let keys = moto.keys("gantry-logs");
        keys.iter()
            .filter(|k| k.starts_with("ci/") && k.ends_with(".idx"))
            .count()
            == 2
    })
    .await;
}

/// `gantry serve` with `env`, which must stop at start, non-zero: what it said on stderr.
fn serve_refuses_to_start(env: &[(&str, &str)]) -> String {
    let data = tempfile::tempdir().unwrap();
    let mut serve = gantry(data.path(), &["serve"])
        .env("GANTRY_BACKEND", "local")
        .env("GANTRY_LISTEN", "127.0.0.1:0")
        .env("GANTRY_DATA_DIR", data.path())
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = String::new();
    // Ends when gantry exits (or, were it to keep running, never: the test's timeout says so).
    std::io::Read::read_to_string(&mut serve.stderr.take().unwrap(), &mut stderr).unwrap();
    let status = serve.wait().unwrap();
    assert!(
        !status.success(),
        "gantry serve started with {env:?}: {stderr}"
    );
    stderr
}

#[test]
fn a_log_archive_that_cannot_be_used_stops_gantry_serve_at_start() {
    let closed = crate::server::free_port();
    let endpoint = format!("http://127.0.0.1:{closed}");
    let s3 = |url: &'static str, endpoint: &str, allow_http: &'static str| {
        [
            ("GANTRY_LOG_ARCHIVE_URL", url.to_owned()),
            ("GANTRY_LOG_ARCHIVE_S3_ENDPOINT", endpoint.to_owned()),
            ("GANTRY_LOG_ARCHIVE_S3_ALLOW_HTTP", allow_http.to_owned()),
            ("AWS_ACCESS_KEY_ID", moto::ACCESS_KEY_ID.to_owned()),
            ("AWS_SECRET_ACCESS_KEY", moto::SECRET_ACCESS_KEY.to_owned()),
        ]
    };
    let refused = |env: &[(&str, String)]| {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let stderr = serve_refuses_to_start(&env);
        assert!(!stderr.contains(moto::SECRET_ACCESS_KEY), "{stderr}");
        stderr
    };

    // Nothing answers at the endpoint.
    let stderr = refused(&s3("s3://gantry-logs/ci", &endpoint, "true"));
    for said in [
        "--log-archive-url: the log archive cannot be used",
        &format!("s3://gantry-logs/ci at {endpoint}"),
        "cannot write the check object ci/.gantry-archive-check",
        "Connection refused",
    ] {
        assert!(stderr.contains(said), "{said:?} in:\n{stderr}");
    }

    let stderr = refused(&s3("https://gantry-logs/ci", &endpoint, "true"));
    assert!(
        stderr.contains("https://gantry-logs/ci is not an s3://BUCKET[/PREFIX] URL"),
        "{stderr}"
    );

    let stderr = refused(&s3("s3://gantry-logs", &endpoint, "false"));
    assert!(
        stderr.contains("is plain http: add --log-archive-s3-allow-http"),
        "{stderr}"
    );

    let mut both = s3("s3://gantry-logs", &endpoint, "true").to_vec();
    both.push(("GANTRY_LOG_ARCHIVE_DIR", "/tmp/gantry-archive".to_owned()));
    let stderr = refused(&both);
    assert!(stderr.contains("cannot be used with"), "{stderr}");
}

/// The tests' git server stops when dropped: `git daemon` runs `git-daemon` as a child, and
/// killing `git` left the daemon listening (and holding every file the test had open), one
/// more per test run.
#[test]
fn a_dropped_git_daemon_leaves_nothing_listening() {
    let daemon = GitDaemon::start();
    let port = daemon.port;
    drop(daemon);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "git daemon still listens on {port} after it was dropped"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Found when Gantry was attacked with validly signed deliveries: a `file://` clone URL of a
/// repository on Gantry's own disk ran; refs with a newline, a NUL or a megabyte were accepted;
/// a 70 KiB delivery id was stored and run and then answered 500; a 2 MB commit message was
/// stored and served whole. Now each bad field is refused with a 400 that names it, before
/// anything is stored, and the message is kept to its first 4 KiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_fields_are_refused_at_the_door_and_free_text_is_capped() {
    let daemon = GitDaemon::start();
    let (repo, sha) = repo_with(TWO_JOBS);
    let url = daemon.publish(&repo, "door.git");
    let github = FakeGithub::start().await;
    let data = tempfile::tempdir().unwrap();
    let gantry = Gantry::start(data.path(), &github.url, &[]);
    let good = push_payload("door", &url, ZERO, &sha, &[".gantry.yaml"]);
    let with = |edit: &dyn Fn(&mut Value)| {
        let mut v: Value = serde_json::from_str(&good).unwrap();
        edit(&mut v);
        v.to_string()
    };
    let local = format!("file://{}", repo.path().display());
    let long_ref = format!("refs/heads/{}", "a".repeat(1 << 20));
    let long_id = "d".repeat(70 * 1024);
    let cases: Vec<(&str, String, String, &str)> = vec![
        (
            "file-url",
            with(&|v| v["repository"]["clone_url"] = local.clone().into()),
            "clone URL".into(),
            "scheme file://",
        ),
        (
            "ext-url",
            with(&|v| v["repository"]["clone_url"] = "ext::sh%20-c%20id".into()),
            "clone URL".into(),
            "remote helper",
        ),
        (
            "newline-ref",
            with(&|v| v["ref"] = "refs/heads/main\nevil".into()),
            "ref".into(),
            "invalid byte",
        ),
        (
            "nul-ref",
            with(&|v| v["ref"] = "refs/heads/ma\u{0}in".into()),
            "ref".into(),
            "invalid byte",
        ),
        (
            "long-ref",
            with(&|v| v["ref"] = long_ref.clone().into()),
            "ref".into(),
            "at most 1024",
        ),
        (
            "bad-sha",
            with(&|v| v["after"] = "HEAD".into()),
            "sha".into(),
            "not a commit id",
        ),
        (&long_id, good.clone(), "delivery id".into(), "at most 128"),
    ];
    for (delivery, body, field, why) in &cases {
        let shown = &delivery[..delivery.len().min(20)];
        let (status, answer) = send_push(&gantry, delivery, body).await;
        assert_eq!(status, 400, "{shown}: {answer}");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(&format!("{field}: ")) && error.to_lowercase().contains(why),
            "{shown}: {error}"
        );
        if delivery.len() < 100 {
            let (status, _) = status_of(&format!(
                "{}/api/v1/deliveries/github/{delivery}",
                gantry.url
            ))
            .await;
            assert_eq!(status, 404, "{shown}: a refused delivery is not stored");
        }
    }
    let message = format!("subject\n\n{}", "x".repeat(2 << 20));
    let capped = with(&|v| v["head_commit"]["message"] = message.clone().into());
    let (status, answer) = send_push(&gantry, "long-message", &capped).await;
    assert_eq!(status, 202, "{answer}");
    let runs = crate::serve::runs_of_delivery(&gantry, "long-message").await;
    let run = run_of(&gantry, &runs[0]).await;
    let kept = run["message"].as_str().unwrap_or_default();
    assert!(
        kept.starts_with("subject\n\nxxx") && kept.len() < 4200 && kept.contains("[cut: "),
        "{} bytes kept: {}",
        kept.len(),
        &kept[kept.len().saturating_sub(40)..]
    );
    let all = get_json(&format!("{}/api/v1/runs", gantry.url)).await;
    assert_eq!(
        all["runs"].as_array().map(Vec::len),
        Some(1),
        "only the good delivery ran: {all:#}"
    );
    gantry.kill_hard();
}

async fn status_of(url: &str) -> (u16, String) {
    let r = client().get(url).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}
