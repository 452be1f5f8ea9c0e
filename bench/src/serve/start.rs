//! Issue 4: time from webhook accepted to first step started (local backend), p50/p99 over N
//! runs sent at a modest, fixed rate, each for a new commit. The reference is the same work done
//! directly at the same rate: `git init`, a depth-1 fetch of the same commit from the same git
//! daemon, `git checkout`, and `sh -c true`.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use gantry_bench::{Latency, StartResult};
use tokio::process::Command;

use crate::{Settings, hooks, procs};

const PIPELINE: &str =
    "name: bench\njobs:\n  start:\n    steps:\n      - name: first\n        run: \"true\"\n";

pub async fn run(settings: &Settings) -> anyhow::Result<StartResult> {
    let tmp = tempfile::tempdir()?;
    let daemon = procs::GitDaemon::start(&tmp.path().join("git"))?;
    let n = settings.runs;
    let (url, shas) = daemon.repository("app", PIPELINE, n)?;
    let period = Duration::from_secs_f64(1.0 / settings.rate);

    let reference = reference(tmp.path(), &url, &shas, period).await?;
    eprintln!(
        "start: reference (fetch + checkout + sh): p50 {:.1} ms, p99 {:.1} ms",
        reference.p50_ms, reference.p99_ms
    );

    let data = tmp.path().join("gantry");
    std::fs::create_dir_all(&data)?;
    let gantry = procs::Server::gantry(&settings.gantry, &data, &[])?;
    let client = hooks::client()?;
    let start = Instant::now();
    let mut sends = Vec::with_capacity(n);
    for (i, sha) in shas.iter().enumerate() {
        tokio::time::sleep_until((start + period * i as u32).into()).await;
        let before = if i == 0 {
            "0".repeat(40)
        } else {
            shas[i - 1].clone()
        };
        let body = hooks::push("app", &url, &before, sha);
        let (client, base) = (client.clone(), gantry.url.clone());
        sends.push(tokio::spawn(async move {
            let status = hooks::send(
                &client,
                &base,
                &format!("start-{i}"),
                &body,
                &hooks::signature(&body),
            )
            .await?;
            anyhow::ensure!(status == 202, "webhook {i} answered {status}");
            Ok(())
        }));
    }
    for send in sends {
        send.await??;
    }
    eprintln!(
        "start: {n} webhooks sent in {:.1} s",
        start.elapsed().as_secs_f64()
    );

    // Every run should have started its first step by now or soon: follow each up.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut samples = Vec::with_capacity(n);
    let (mut missing, mut failed, mut failure) = (0, 0, None);
    for i in 0..n {
        match first_step(&client, &gantry.url, &format!("start-{i}"), deadline).await? {
            Started::After(ms) => samples.push(ms),
            Started::NotYet => missing += 1,
            Started::Failed(reason) => {
                failed += 1;
                failure.get_or_insert(reason);
            }
        }
    }
    drop(gantry);
    if samples.is_empty() {
        bail!(
            "no run started its first step; see {}",
            data.join("gantry.log").display()
        );
    }
    let gantry = Latency::of(samples);
    eprintln!(
        "start: gantry (webhook → first step): p50 {:.1} ms, p99 {:.1} ms, {missing} missing, \
         {failed} failed ({failure:?})",
        gantry.p50_ms, gantry.p99_ms
    );
    Ok(StartResult {
        measured: settings.measured.clone(),
        runs: n,
        rate: settings.rate,
        gantry,
        reference,
        missing,
        failed,
        failure,
    })
}

enum Started {
    After(f64),
    NotYet,
    /// Planning failed: the delivery's reason.
    Failed(String),
}

/// Delivery `received_at` → the first step's `started_at`, in ms, once both are known.
async fn first_step(
    client: &reqwest::Client,
    base: &str,
    delivery: &str,
    deadline: Instant,
) -> anyhow::Result<Started> {
    let mut run_id = None;
    while Instant::now() < deadline {
        if run_id.is_none() {
            let url = format!("{base}/api/v1/deliveries/github/{delivery}");
            let d = hooks::get_json(client, &url)
                .await?
                .context("delivery not stored")?;
            match d["state"].as_str() {
                Some("planned") => {
                    let id = d["runs"][0].as_str().context("planned without a run")?;
                    let received = hooks::timestamp(&d["received_at"]).context("received_at")?;
                    run_id = Some((id.to_owned(), received));
                }
                Some("failed") => {
                    return Ok(Started::Failed(
                        d["reason"].as_str().unwrap_or("?").to_owned(),
                    ));
                }
                _ => {}
            }
        }
        if let Some((id, received)) = &run_id {
            let run = hooks::get_json(client, &format!("{base}/api/v1/runs/{id}"))
                .await?
                .context("run not found")?;
            if let Some(started) = hooks::timestamp(&run["jobs"][0]["steps"][0]["started_at"]) {
                return Ok(Started::After(hooks::millis(*received, started)));
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(Started::NotYet)
}

/// The same work without Gantry, started at the same rate: each sample is a fresh directory,
/// `git init`, `git fetch --depth 1` of the commit, `git checkout --detach`, `sh -c true`.
async fn reference(
    tmp: &Path,
    url: &str,
    shas: &[String],
    period: Duration,
) -> anyhow::Result<Latency> {
    let root = Arc::new(tmp.join("reference"));
    std::fs::create_dir_all(&*root)?;
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(shas.len());
    for (i, sha) in shas.iter().enumerate() {
        tokio::time::sleep_until((start + period * i as u32).into()).await;
        let (root, url, sha) = (root.clone(), url.to_owned(), sha.clone());
        tasks.push(tokio::spawn(async move {
            let dir = root.join(i.to_string());
            let began = Instant::now();
            tokio::fs::create_dir_all(&dir).await?;
            git(&dir, &["init", "-q"]).await?;
            git(&dir, &["fetch", "-q", "--depth", "1", "--", &url, &sha]).await?;
            git(&dir, &["checkout", "-q", "--detach", &sha]).await?;
            let ok = Command::new("sh")
                .args(["-c", "true"])
                .current_dir(&dir)
                .status()
                .await?
                .success();
            anyhow::ensure!(ok, "sh -c true failed");
            let ms = began.elapsed().as_secs_f64() * 1000.0;
            let _ = tokio::fs::remove_dir_all(&dir).await;
            Ok(ms)
        }));
    }
    let mut samples = Vec::with_capacity(tasks.len());
    for task in tasks {
        samples.push(task.await??);
    }
    Ok(Latency::of(samples))
}

async fn git(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("LC_ALL", "C")
        .output()
        .await?;
    anyhow::ensure!(
        out.status.success(),
        "git {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
