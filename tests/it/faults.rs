//! Faults `gantry serve` must survive without a restart, injected for real: the data directory
//! on a small tmpfs that fills up while a job runs.

use std::time::Duration;

use gantry_core::faults::SmallDisk;
use serde_json::Value;

use crate::serve::{final_run_within, runs_of_delivery};
use crate::server::{FakeGithub, Gantry, GitDaemon, client, eventually, push_payload, send_push};
use crate::support::Repo;

const ZERO: &str = "0000000000000000000000000000000000000000";

/// The job waits for the test to fill the disk (the test then creates MARK), then prints.
const PIPELINE: &str = r#"
name: ci
jobs:
  spew:
    steps:
      - name: print
        run: |
          while [ ! -e "MARK" ]; do sleep 0.1; done
          seq 1 3000 | sed 's/^/line /'
      - name: after
        run: echo after-marker
      - run: echo 2
      - run: echo 3
      - run: echo 4
      - run: echo 5
      - run: echo 6
      - run: echo 7
      - run: echo 8
"#;

async fn readyz(gantry: &Gantry) -> (u16, String) {
    let r = client()
        .get(format!("{}/readyz", gantry.url))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

pub(crate) async fn metrics(gantry: &Gantry) -> String {
    client()
        .get(format!("{}/metrics", gantry.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn counter(text: &str, prefix: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// The data directory fills up while a job runs and is freed again: webhooks are refused with
/// 503 and a reason meanwhile, `/readyz` says not ready and why, a metric counts the failed
/// writes; once space returns the server is ready again without a restart, the job whose
/// progress could not be recorded ends as an error saying so, its step log says it lost lines,
/// and the refused delivery, sent again, runs. (Before: SQLite's failure left a transaction
/// open and every later write failed until a restart; the run stayed `running` forever; a
/// delivery accepted meanwhile never became a run; `/readyz` said ready throughout; the log was
/// cut silently with one WARN per lost line.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_data_directory_is_survived_without_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let mut disk = SmallDisk::mount(data.path(), 8 * 1024 * 1024);
    // The job waits for this file (outside the small disk) before it prints.
    let mark_dir = tempfile::tempdir().unwrap();
    let mark = mark_dir.path().join("full");
    let daemon = GitDaemon::start();
    let repo = Repo::new();
    repo.write(
        ".gantry.yaml",
        &PIPELINE.replace("MARK", mark.to_str().unwrap()),
    );
    let sha = repo.commit("pipeline");
    let url = daemon.publish(&repo, "app.git");
    let github = FakeGithub::start().await;
    let gantry = Gantry::start(data.path(), &github.url, &[]);
    let body = push_payload("app", &url, ZERO, &sha, &[".gantry.yaml"]);

    let (status, answer) = send_push(&gantry, "before-full", &body).await;
    assert_eq!(status, 202, "{answer}");
    let run = runs_of_delivery(&gantry, "before-full").await[0].clone();
    eventually(Duration::from_secs(60), "the first step to run", || async {
        let r = crate::serve::run_of(&gantry, &run).await;
        (r["jobs"][0]["steps"][0]["status"] == "running").then_some(())
    })
    .await;

    disk.fill();
    std::fs::write(&mark, "").unwrap();

    // While full: not ready, and why; a delivery is refused, saying why, not accepted and lost.
    let (code, text) = eventually(
        Duration::from_secs(30),
        "/readyz to say not ready",
        || async {
            let (code, text) = readyz(&gantry).await;
            (code == 503).then_some((code, text))
        },
    )
    .await;
    assert_eq!(code, 503);
    assert!(text.contains("cannot be written"), "{text}");
    let (status, answer) = send_push(&gantry, "during-full", &body).await;
    assert_eq!(status, 503, "{answer}");
    let error = answer["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("cannot store") && error.contains("try again later"),
        "{answer}"
    );
    // The job's output cannot be stored, nor its step's end: it is stopped.
    tokio::time::sleep(Duration::from_secs(3)).await;

    disk.free();
    eventually(
        Duration::from_secs(30),
        "/readyz to say ready again",
        || async { (readyz(&gantry).await.0 == 200).then_some(()) },
    )
    .await;
    let ended = final_run_within(&gantry, &run, Duration::from_secs(60)).await;
    let job = &ended["jobs"][0];
    assert_eq!(ended["status"], "error", "{ended:#}");
    assert_eq!(job["status"], "error", "{ended:#}");
    let reason = job["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("could not record this job's progress"),
        "the job says why it ended: {ended:#}"
    );
    assert!(
        job["steps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["status"] != "running"),
        "no step is left running: {ended:#}"
    );

    // The step log says it is incomplete, in the API and in a notice line at its end.
    let log: Value = client()
        .get(format!(
            "{}/api/v1/jobs/{}/attempts/1/steps/0/log?from=1&limit=5000",
            gantry.url,
            job["id"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let lost = log["lost_lines"].as_u64().unwrap_or(0);
    assert!(
        lost > 0,
        "the page says lines were lost: {}",
        log["lost_lines"]
    );
    let last = log["lines"]
        .as_array()
        .unwrap()
        .last()
        .cloned()
        .unwrap_or_default();
    assert!(
        last["text"]
            .as_str()
            .unwrap_or_default()
            .contains("could not be stored"),
        "the log ends with a notice: {last:#}"
    );

    let text = metrics(&gantry).await;
    assert!(
        counter(&text, "gantry_storage_write_failures_total") > 0,
        "failed writes are counted:\n{text}"
    );
    assert!(
        counter(
            &text,
            "gantry_webhook_deliveries_total{forge=\"github\",result=\"unavailable\"}"
        ) >= 1,
        "refused deliveries are counted:\n{text}"
    );

    // The refused delivery, sent again (the forge's redeliver), becomes a run that succeeds.
    let (status, answer) = send_push(&gantry, "during-full", &body).await;
    assert_eq!(status, 202, "{answer}");
    let again = runs_of_delivery(&gantry, "during-full").await;
    let run = final_run_within(&gantry, &again[0], Duration::from_secs(60)).await;
    assert_eq!(run["status"], "success", "{run:#}");
    gantry.kill_hard();
}

/// The forge answers the pipeline reads with a 502, then a 429 with `Retry-After`, then a 500:
/// the delivery stays `received` and says why meanwhile, and becomes a run once the forge
/// answers. (Before: the first failed read ended the delivery `failed` and it never ran.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forge_that_fails_reads_for_a_while_loses_no_delivery() {
    let daemon = GitDaemon::start();
    let repo = Repo::new();
    repo.write(
        ".gantry.yaml",
        "name: ci\njobs:\n  test:\n    steps:\n      - run: echo read-at-last\n",
    );
    let sha = repo.commit("pipeline");
    let url = daemon.publish(&repo, "flaky.git");
    let github = FakeGithub::start_with_repos(std::collections::HashMap::from([(
        "acme/flaky".to_owned(),
        repo.path().to_owned(),
    )]))
    .await;
    github.fail_contents([(502, None), (429, Some(1)), (500, None)]);
    let data = tempfile::tempdir().unwrap();
    let gantry = Gantry::start(
        data.path(),
        &github.url,
        &[("GANTRY_GITHUB_READ_FILES", "api")],
    );
    let (status, answer) = send_push(
        &gantry,
        "flaky-1",
        &push_payload("flaky", &url, ZERO, &sha, &[".gantry.yaml"]),
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    let retrying = eventually(
        Duration::from_secs(30),
        "the delivery to say it retries",
        || async {
            let d = crate::server::get_json(&format!(
                "{}/api/v1/deliveries/github/flaky-1",
                gantry.url
            ))
            .await;
            let reason = d["reason"].as_str().unwrap_or_default().to_owned();
            (d["state"] == "received" && reason.contains("trying again")).then_some(reason)
        },
    )
    .await;
    assert!(retrying.contains("github API error"), "{retrying}");
    let runs = runs_of_delivery(&gantry, "flaky-1").await;
    assert_eq!(runs.len(), 1);
    let run = final_run_within(&gantry, &runs[0], Duration::from_secs(60)).await;
    assert_eq!(run["status"], "success", "{run:#}");
    let text = metrics(&gantry).await;
    assert_eq!(
        counter(
            &text,
            "gantry_planning_failures_total{outcome=\"retried\",cause=\"forge\"}"
        ),
        3,
        "each failed attempt is counted:\n{text}"
    );
    gantry.kill_hard();
}

/// A slow forge (every contents answer takes 300 ms) and 24 pushes at once: planning never has
/// more than `--forge-reads` (here 3) pipeline reads in flight to it, uses all of them, and
/// every push becomes a run. (Before: the bound was a constant; a small GitHub Enterprise
/// server could not be given a smaller one.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planning_keeps_to_the_configured_number_of_forge_reads_at_once() {
    let daemon = GitDaemon::start();
    let repo = Repo::new();
    repo.write(
        ".gantry.yaml",
        "name: ci\njobs:\n  test:\n    steps:\n      - run: echo read\n",
    );
    let sha = repo.commit("pipeline");
    let url = daemon.publish(&repo, "slow.git");
    let github = FakeGithub::start_with_repos(std::collections::HashMap::from([(
        "acme/slow".to_owned(),
        repo.path().to_owned(),
    )]))
    .await;
    github.slow_contents(Duration::from_millis(300));
    let data = tempfile::tempdir().unwrap();
    let gantry = Gantry::start(
        data.path(),
        &github.url,
        &[
            ("GANTRY_GITHUB_READ_FILES", "api"),
            ("GANTRY_FORGE_READS", "3"),
        ],
    );
    let body = push_payload("slow", &url, ZERO, &sha, &[".gantry.yaml"]);
    let mut pushes = tokio::task::JoinSet::new();
    for i in 0..24 {
        pushes.spawn(crate::server::signed_push(&gantry.url, &format!("slow-{i}"), &body).send());
    }
    while let Some(answer) = pushes.join_next().await {
        let answer = answer.unwrap().expect("webhook delivery");
        assert_eq!(answer.status(), 202, "{:?}", answer.text().await);
    }
    for i in 0..24 {
        let delivery = format!("slow-{i}");
        let runs = runs_of_delivery(&gantry, &delivery).await;
        assert_eq!(runs.len(), 1, "{delivery}: {runs:?}");
    }
    assert_eq!(
        github.contents_peak(),
        3,
        "pipeline reads in flight at once, with --forge-reads 3"
    );
    gantry.kill_hard();
}

/// 300 clients send their request heads a byte a second: `gantry serve` cuts each off after its
/// header timeout, and a webhook and `/healthz` sent meanwhile are answered. (Before: the slow
/// connections stayed open as long as they dripped, and with the process's file limit reached,
/// webhooks timed out.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_and_webhooks_are_still_answered() {
    use tokio::io::AsyncWriteExt;
    let daemon = GitDaemon::start();
    let repo = Repo::new();
    repo.write(
        ".gantry.yaml",
        "name: ci\njobs:\n  test:\n    steps:\n      - run: echo ok\n",
    );
    let sha = repo.commit("pipeline");
    let url = daemon.publish(&repo, "slow.git");
    let github = FakeGithub::start().await;
    let data = tempfile::tempdir().unwrap();
    let gantry = Gantry::start(data.path(), &github.url, &[]);
    let addr = gantry.url.trim_start_matches("http://").to_owned();
    let started = std::time::Instant::now();
    let mut slow = Vec::new();
    for _ in 0..300 {
        let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
        slow.push(tokio::spawn(async move {
            let head = b"POST /hooks/github HTTP/1.1\r\nHost: gantry\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
            for b in head {
                if stream.write_all(&[*b]).await.is_err() {
                    return true;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            false
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    gantry_forge::install_crypto_provider();
    let quick = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let health = quick
        .get(format!("{}/healthz", gantry.url))
        .send()
        .await
        .expect("/healthz answers while slow clients are connected");
    assert_eq!(health.status(), 200);
    let (status, answer) = send_push(
        &gantry,
        "among-slow-clients",
        &push_payload("slow", &url, ZERO, &sha, &[]),
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    // Each slow connection is closed by the server (its writes start failing), long before
    // its head would have been complete (about 80 s).
    let mut cut = 0;
    for task in slow {
        if task.await.unwrap() {
            cut += 1;
        }
    }
    assert_eq!(cut, 300, "every slow client is cut off");
    assert!(
        started.elapsed() < Duration::from_secs(70),
        "cut off after the header timeout, not when done: {:?}",
        started.elapsed()
    );
    let runs = runs_of_delivery(&gantry, "among-slow-clients").await;
    let run = final_run_within(&gantry, &runs[0], Duration::from_secs(60)).await;
    assert_eq!(run["status"], "success", "{run:#}");
    gantry.kill_hard();
}
