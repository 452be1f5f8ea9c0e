//! The fault-injection suite: `gantry serve` (local backend) under a load of signed pushes
//! while things fail on purpose — an error at each call site of the store, the log store and
//! the forge client in turn (`GANTRY_FAULTS="SITE#N …"`, see `gantry_core::inject`), then at
//! random with a seed; `kill -9` at random moments; the PostgreSQL server restarted mid-run.
//! After each, what a user would check: every delivery Gantry acknowledged has a run, every run
//! reached a final state, the forge got that final state, and no stored log line is lost
//! without saying so, nor repeated.
//!
//! A failure names the plan and the seed; `GANTRY_TEST_FAULT_SEED=N` repeats a random one.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;

use crate::server::{FakeGithub, Gantry, GitDaemon, client, eventually, push_payload, signed_push};
use crate::support::Repo;

const ZERO: &str = "0000000000000000000000000000000000000000";
/// Lines each step prints, numbered.
const LINES: u64 = 40;

/// Two jobs, three steps; `PAUSE` seconds between lines (so that a kill lands mid-step).
const PIPELINE: &str = r#"
name: ci
jobs:
  build:
    steps:
      - name: count
        run: for i in $(seq 1 40); do echo "line $i"; sleep PAUSE; done
  test:
    needs: [build]
    steps:
      - name: count
        run: for i in $(seq 1 40); do echo "line $i"; sleep PAUSE; done
      - name: again
        run: for i in $(seq 1 40); do echo "line $i"; sleep PAUSE; done
"#;

/// A repository with `pushes` commits of the pipeline, each its own push (so statuses tell
/// them apart), served by a git daemon (clones) and the fake GitHub (pipeline reads, statuses).
struct Load {
    _daemon: GitDaemon,
    repo: Repo,
    url: String,
    shas: Vec<String>,
}

impl Load {
    fn new(pushes: usize, pause: &str) -> Self {
        let daemon = GitDaemon::start();
        let repo = Repo::new();
        let mut shas = Vec::new();
        for i in 0..pushes {
            repo.write(".gantry.yaml", &PIPELINE.replace("PAUSE", pause));
            repo.write("change.txt", &format!("{i}\n"));
            shas.push(repo.commit(&format!("change {i}")));
        }
        let url = daemon.publish(&repo, "app.git");
        Load {
            _daemon: daemon,
            repo,
            url,
            shas,
        }
    }

    async fn github(&self) -> FakeGithub {
        FakeGithub::start_with_repos(HashMap::from([(
            "acme/app".to_owned(),
            self.repo.path().to_owned(),
        )]))
        .await
    }

    fn body(&self, i: usize) -> String {
        push_payload("app", &self.url, ZERO, &self.shas[i], &[".gantry.yaml"])
    }
}

/// The settings every Gantry here runs with: pipelines read through the contents API (so forge
/// faults hit planning too), and `env` on top.
fn start(data: &std::path::Path, github: &FakeGithub, env: &[(&str, &str)]) -> Gantry {
    let mut all = vec![("GANTRY_GITHUB_READ_FILES", "api")];
    all.extend_from_slice(env);
    Gantry::start(data, &github.url, &all)
}

/// How a webhook send ended.
enum Sent {
    /// 202, or 200 for a delivery already stored: acknowledged.
    Acknowledged,
    /// 503 or no answer: the forge shows a failed delivery; sending again is the user's retry.
    Refused(String),
}

async fn send(url: &str, delivery: &str, body: &str) -> Sent {
    let response = signed_push(url, delivery, body)
        .timeout(Duration::from_secs(10))
        .send()
        .await;
    match response {
        Err(e) => Sent::Refused(format!("no answer: {e}")),
        Ok(r) => match r.status().as_u16() {
            200 | 202 => Sent::Acknowledged,
            503 => Sent::Refused(r.text().await.unwrap_or_default()),
            code => panic!(
                "delivery {delivery}: {code} {}",
                r.text().await.unwrap_or_default()
            ),
        },
    }
}

/// Sends until acknowledged, as a user redelivers a failed delivery (at most 30 tries).
async fn deliver(url: &str, delivery: &str, body: &str) {
    let mut last = String::new();
    for _ in 0..30 {
        match send(url, delivery, body).await {
            Sent::Acknowledged => return,
            Sent::Refused(why) => last = why,
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    panic!("delivery {delivery} was never acknowledged: {last}");
}

/// A GET of the API: `None` unless it answered 200 with JSON (an injected read fault answers
/// 503; the caller asks again).
async fn api(url: &str, path: &str) -> Option<Value> {
    let r = client().get(format!("{url}{path}")).send().await.ok()?;
    if r.status() != 200 {
        return None;
    }
    r.json().await.ok()
}

/// The commit status a run's final state is reported as.
fn status_for(run_status: &str) -> &'static str {
    match run_status {
        "success" => "success",
        "failure" => "failure",
        // Cancelled and error both report `error` on GitHub.
        _ => "error",
    }
}

/// What a user checks after the faults: for every acknowledged push, one run in a final state
/// whose final status reached GitHub, and step logs that are whole, or say what they lost.
async fn check_outcome(url: &str, github: &FakeGithub, load: &Load, pushes: &[usize], ctx: &str) {
    let long = Duration::from_secs(180);
    let mut ended: Vec<String> = Vec::new();
    for &i in pushes {
        let delivery = format!("push-{i}");
        let runs: Vec<String> =
            eventually(long, &format!("[{ctx}] {delivery} planned"), || async {
                let d = api(url, &format!("/api/v1/deliveries/github/{delivery}")).await?;
                match d["state"].as_str()? {
                    "received" => None,
                    "planned" => Some(
                        d["runs"]
                            .as_array()?
                            .iter()
                            .filter_map(|r| r.as_str().map(str::to_owned))
                            .collect(),
                    ),
                    other => {
                        panic!("[{ctx}] acknowledged delivery {delivery} ended {other}: {d:#}")
                    }
                }
            })
            .await;
        assert_eq!(runs.len(), 1, "[{ctx}] {delivery}: {runs:?}");
        let run = eventually(
            long,
            &format!("[{ctx}] the run of {delivery} to end"),
            || async {
                let run = api(url, &format!("/api/v1/runs/{}", runs[0])).await?;
                ["success", "failure", "cancelled", "error"]
                    .contains(&run["status"].as_str()?)
                    .then_some(run)
            },
        )
        .await;
        let status = run["status"].as_str().unwrap();
        ended.push(status.to_owned());
        assert_ne!(
            status, "failure",
            "[{ctx}] no step fails by itself: {run:#}"
        );
        for job in run["jobs"].as_array().unwrap() {
            assert!(
                ["success", "error", "skipped", "cancelled"]
                    .contains(&job["status"].as_str().unwrap()),
                "[{ctx}] {run:#}"
            );
            if job["status"] == "error" {
                assert!(
                    job["reason"].as_str().is_some_and(|r| !r.is_empty()),
                    "[{ctx}] a job that ended in error says why: {run:#}"
                );
            }
            for step in job["steps"].as_array().unwrap() {
                check_step_log(url, job, step, ctx).await;
            }
        }
        let sha = &load.shas[i];
        let want = status_for(status);
        eventually(long, &format!("[{ctx}] {want} status of {sha}"), || async {
            let got: Vec<String> = github
                .statuses()
                .into_iter()
                .filter(|s| &s.sha == sha && s.context == "gantry/ci")
                .map(|s| s.state)
                .collect();
            let finals: Vec<&String> = got.iter().filter(|s| *s != "pending").collect();
            assert!(
                finals.iter().all(|s| *s == want),
                "[{ctx}] {sha} got a final status other than {want}: {got:?}"
            );
            (got.last().is_some_and(|s| s == want)).then_some(())
        })
        .await;
    }
    eprintln!("[{ctx}] runs ended: {ended:?}");
}

/// A step's stored log holds `line 1`…`line 40` in order, none twice; when it is short, the
/// log says how many lines it lost (for a step that succeeded, exactly the missing ones).
async fn check_step_log(url: &str, job: &Value, step: &Value, ctx: &str) {
    let path = format!(
        "/api/v1/jobs/{}/attempts/{}/steps/{}/log?from=1&limit=5000",
        job["id"].as_str().unwrap(),
        job["attempt"],
        step["index"]
    );
    let Some(page) = eventually(
        Duration::from_secs(30),
        &format!("[{ctx}] {path}"),
        || async {
            match api(url, &path).await {
                Some(page) => Some(Some(page)),
                // A step that never started has no log.
                None if step["started_at"].is_null() => Some(None),
                None => None,
            }
        },
    )
    .await
    else {
        return;
    };
    let numbers: Vec<u64> = page["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["stream"] != "system")
        .filter_map(|l| l["text"].as_str()?.strip_prefix("line ")?.parse().ok())
        .collect();
    assert!(
        numbers.windows(2).all(|w| w[0] < w[1]),
        "[{ctx}] lines repeated or out of order in {path}: {numbers:?}"
    );
    let lost = page["lost_lines"].as_u64().unwrap_or(0);
    if step["status"] == "success" {
        assert_eq!(
            LINES - numbers.len() as u64,
            lost,
            "[{ctx}] a succeeded step's log is whole or says what it lost: {path}: {numbers:?}"
        );
    }
}

/// Injected faults by site, from `/metrics`.
async fn injected(url: &str) -> HashMap<String, u64> {
    let text = eventually(Duration::from_secs(30), "/metrics", || async {
        let r = client().get(format!("{url}/metrics")).send().await.ok()?;
        (r.status() == 200).then_some(())?;
        r.text().await.ok()
    })
    .await;
    text.lines()
        .filter_map(|l| l.strip_prefix("gantry_faults_injected{site=\""))
        .filter_map(|l| {
            let (site, n) = l.split_once("\"} ")?;
            Some((site.to_owned(), n.trim().parse().ok()?))
        })
        .collect()
}

pub(crate) fn seed() -> u64 {
    std::env::var("GANTRY_TEST_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                % 1_000_000
        })
}

/// Each call site in turn, then all at random: four pushes each, faults falling on some of
/// the writes, reads and requests they cause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_injected_at_each_call_site_lose_no_acknowledged_work() {
    let seed = seed();
    let random = format!("seed={seed} rate=0.03 sites=store,logs,forge");
    let plans = [
        // At start: opening the database and recovery wait for the store (before: the first
        // failed read ended `gantry serve` with "cannot start the engine").
        "store.read#1 store.read#2 store.read#5 store.begin#1",
        "store.begin#2 store.begin#9 store.begin#23 store.begin#40",
        "store.commit#3 store.commit#11 store.commit#25 store.commit#41",
        "store.read#4 store.read#15 store.read#30",
        "logs.append#5 logs.append#60 logs.append#130 logs.append#250",
        "logs.sync#1 logs.sync#4 logs.sync#9",
        "forge.request#1 forge.request#3 forge.request#6 forge.request#8",
        random.as_str(),
    ];
    let load = Load::new(4, "0");
    for plan in plans {
        let ctx = format!("GANTRY_FAULTS={plan:?}");
        let github = load.github().await;
        let data = tempfile::tempdir().unwrap();
        let gantry = start(data.path(), &github, &[("GANTRY_FAULTS", plan)]);
        let pushes: Vec<usize> = (0..load.shas.len()).collect();
        for &i in &pushes {
            deliver(&gantry.url, &format!("push-{i}"), &load.body(i)).await;
        }
        check_outcome(&gantry.url, &github, &load, &pushes, &ctx).await;
        let faults = injected(&gantry.url).await;
        assert!(
            faults.values().sum::<u64>() > 0,
            "[{ctx}] no fault was injected: the plan missed every call"
        );
        if !plan.starts_with("seed=") {
            let site = plan.split('#').next().unwrap();
            assert!(
                faults.get(site).copied().unwrap_or(0) > 0,
                "[{ctx}] nothing injected at {site}: {faults:?}"
            );
        }
        gantry.kill_hard();
    }
}

/// `kill -9` twice, at moments drawn from the seed, while pushes arrive every 150 ms and steps
/// print: after the last restart every acknowledged push has a run in a final state, and so on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_under_load_loses_no_acknowledged_work() {
    let seed = seed();
    let ctx = format!("kill -9, GANTRY_TEST_FAULT_SEED={seed}");
    let load = Load::new(24, "0.02");
    let github = load.github().await;
    let data = tempfile::tempdir().unwrap();
    let mut gantry = start(data.path(), &github, &[]);
    let (url_tx, url_rx) = tokio::sync::watch::channel(gantry.url.clone());
    let bodies: Vec<String> = (0..load.shas.len()).map(|i| load.body(i)).collect();
    let sender = tokio::spawn(async move {
        for (i, body) in bodies.iter().enumerate() {
            let delivery = format!("push-{i}");
            loop {
                let url = url_rx.borrow().clone();
                if let Sent::Acknowledged = send(&url, &delivery, body).await {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    });
    for k in 0..2u64 {
        // 0.5–2.5 s into the load, different for each seed.
        let wait = 500 + (seed.wrapping_mul(2_654_435_761).wrapping_add(k * 977) % 2000);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        gantry.kill_hard();
        gantry = start(data.path(), &github, &[]);
        // The sender may be done already: the runs are still going.
        let _ = url_tx.send(gantry.url.clone());
    }
    sender.await.unwrap();
    let pushes: Vec<usize> = (0..load.shas.len()).collect();
    check_outcome(&gantry.url, &github, &load, &pushes, &ctx).await;
    gantry.kill_hard();
}

/// A PostgreSQL server of the test's own (`scripts/pg-test-server`), stopped when dropped.
struct Postgres {
    dir: tempfile::TempDir,
    url: String,
}

impl Postgres {
    fn script(&self, cmd: &str) -> String {
        pg_script(cmd, self.dir.path())
    }

    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = pg_script("start", dir.path());
        Postgres { dir, url }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.script("stop");
    }
}

fn pg_script(cmd: &str, dir: &std::path::Path) -> String {
    let out =
        std::process::Command::new(crate::support::workspace().join("scripts/pg-test-server"))
            .arg(cmd)
            .arg(dir)
            .output()
            .expect("run scripts/pg-test-server");
    assert!(
        out.status.success(),
        "scripts/pg-test-server {cmd} (PostgreSQL's server binaries are needed: the test \
         command installs them): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// The PostgreSQL server stops (a fast shutdown: every connection is cut) while runs are in
/// flight, stays down for a few seconds and comes back on the same port: a webhook sent
/// meanwhile is refused with 503 (not acknowledged and lost), and afterwards every acknowledged
/// push has a run in a final state and so on — without restarting Gantry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgresql_restart_mid_run_loses_no_acknowledged_work() {
    let pg = Postgres::start();
    let ctx = "PostgreSQL restarted";
    let load = Load::new(7, "0.05");
    let github = load.github().await;
    let data = tempfile::tempdir().unwrap();
    let gantry = start(
        data.path(),
        &github,
        &[("GANTRY_DATABASE_URL", pg.url.as_str())],
    );
    for i in 0..5 {
        deliver(&gantry.url, &format!("push-{i}"), &load.body(i)).await;
    }
    eventually(
        Duration::from_secs(60),
        &format!("[{ctx}] a step to run"),
        || async {
            let runs = api(&gantry.url, "/api/v1/runs").await?;
            runs["runs"]
                .as_array()?
                .iter()
                .any(|r| r["status"] == "running")
                .then_some(())
        },
    )
    .await;
    pg.script("stop");
    let refused = eventually(
        Duration::from_secs(30),
        &format!("[{ctx}] a delivery refused while the database is down"),
        || async {
            match send(&gantry.url, "push-5", &load.body(5)).await {
                Sent::Refused(why) => Some(why),
                // Accepted before the pool noticed: it must become a run like the others.
                Sent::Acknowledged => None,
            }
        },
    )
    .await;
    assert!(refused.contains("try again later"), "{refused}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    pg.script("start");
    deliver(&gantry.url, "push-5", &load.body(5)).await;
    deliver(&gantry.url, "push-6", &load.body(6)).await;
    let pushes: Vec<usize> = (0..7).collect();
    check_outcome(&gantry.url, &github, &load, &pushes, ctx).await;
    gantry.kill_hard();
}
