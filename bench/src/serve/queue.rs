//! Issue 4: runs accepted (planned and queued) per second, and resident memory with many runs
//! queued. One job may run at a time (`GANTRY_MAX_RUNNING_JOBS=1`) and every job sleeps, so
//! after the first every run stays queued. Webhooks go out over 50 connections, as fast as the
//! server answers; the rate is taken from the API's `created_at` of the runs. The reference for
//! the rate is the hello-world endpoint under the same sender and the same number of requests;
//! for memory, the same server right after it started.

use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail, ensure};
use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use gantry_bench::QueueResult;

use crate::{Settings, hooks, procs};

const PIPELINE: &str =
    "name: queued\njobs:\n  wait:\n    steps:\n      - name: sleep\n        run: sleep 900\n";

pub async fn run(settings: &Settings) -> anyhow::Result<QueueResult> {
    let tmp = tempfile::tempdir()?;
    let daemon = procs::GitDaemon::start(&tmp.path().join("git"))?;
    let (url, shas) = daemon.repository("queued", PIPELINE, 1)?;
    let body = hooks::push("queued", &url, &"0".repeat(40), &shas[0]);
    let signature = hooks::signature(&body);
    let n = settings.queued;
    let client = hooks::client()?;

    let hello = procs::Server::hello(&settings.hello)?;
    let began = Instant::now();
    send_all(
        &client,
        &hello.url,
        n,
        settings.connections,
        &body,
        &signature,
    )
    .await?;
    let reference_per_second = n as f64 / began.elapsed().as_secs_f64();
    drop(hello);
    eprintln!("queue: hello-world: {reference_per_second:.0}/s");

    let data = tmp.path().join("gantry");
    std::fs::create_dir_all(&data)?;
    let gantry =
        procs::Server::gantry(&settings.gantry, &data, &[("GANTRY_MAX_RUNNING_JOBS", "1")])?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (idle_rss_kib, _) = gantry.memory_kib()?;

    let t0: DateTime<Utc> = SystemTime::now().into();
    send_all(
        &client,
        &gantry.url,
        n,
        settings.connections,
        &body,
        &signature,
    )
    .await?;
    eprintln!(
        "queue: {n} webhooks answered after {:.1} s",
        seconds_since(t0)
    );

    // Wait for the last delivery to be planned, then check that every run is there.
    let deadline = Instant::now() + Duration::from_secs(settings.queue_limit_s);
    let last = format!("{}/api/v1/deliveries/github/queue-{}", gantry.url, n - 1);
    loop {
        let d = hooks::get_json(&client, &last)
            .await?
            .context("delivery not stored")?;
        match d["state"].as_str() {
            Some("planned") => break,
            Some("failed") => bail!("delivery failed: {}", d["reason"]),
            _ if Instant::now() > deadline => bail!(
                "not every delivery planned within {} s (GANTRY_BENCH_QUEUE_LIMIT_S)",
                settings.queue_limit_s
            ),
            _ => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
    let (created, queued, list_page_ms) = loop {
        let listed = list_runs(&client, &gantry.url).await?;
        if listed.0.len() >= n || Instant::now() > deadline {
            break listed;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    eprintln!(
        "queue: {} runs ({queued} queued) after {:.1} s",
        created.len(),
        seconds_since(t0)
    );
    ensure!(
        created.len() == n,
        "{} of {n} runs were created",
        created.len()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (queued_rss_kib, peak_rss_kib) = gantry.memory_kib()?;
    drop(gantry);

    let tenth = (n / 10).max(1);
    let rate = |count: usize, from: DateTime<Utc>, to: DateTime<Utc>| {
        count as f64 / (hooks::millis(from, to) / 1000.0).max(1e-9)
    };
    Ok(QueueResult {
        measured: settings.measured.clone(),
        connections: settings.connections,
        webhooks: n,
        queued,
        accepted_per_second: rate(n, t0, created[n - 1]),
        accepted_per_second_first_tenth: rate(tenth, t0, created[tenth - 1]),
        accepted_per_second_last_tenth: rate(tenth, created[n - tenth - 1], created[n - 1]),
        reference_per_second,
        idle_rss_kib,
        queued_rss_kib,
        peak_rss_kib,
        list_page_ms,
    })
}

fn seconds_since(t0: DateTime<Utc>) -> f64 {
    hooks::millis(t0, Utc::now()) / 1000.0
}

/// `n` signed webhooks (`queue-0` … ) over `connections` concurrent requests; fails on any
/// answer but 202.
async fn send_all(
    client: &reqwest::Client,
    base: &str,
    n: usize,
    connections: u32,
    body: &str,
    signature: &str,
) -> anyhow::Result<()> {
    let mut answers = futures::stream::iter(0..n)
        .map(|i| async move {
            let status = hooks::send(client, base, &format!("queue-{i}"), body, signature).await?;
            ensure!(status == 202, "webhook {i} answered {status}");
            Ok(())
        })
        .buffer_unordered(connections as usize);
    while let Some(answer) = answers.next().await {
        answer?;
    }
    Ok(())
}

/// Every run's `created_at`, sorted, how many are queued, and how long the first page of 500
/// took to list.
async fn list_runs(
    client: &reqwest::Client,
    base: &str,
) -> anyhow::Result<(Vec<DateTime<Utc>>, usize, f64)> {
    let mut created = Vec::new();
    let mut queued = 0;
    let mut before: Option<String> = None;
    let mut first_page_ms = None;
    loop {
        let mut url = format!("{base}/api/v1/runs?limit=500");
        if let Some(b) = &before {
            url.push_str(&format!("&before={b}"));
        }
        let began = Instant::now();
        let page = hooks::get_json(client, &url)
            .await?
            .context("no run list")?;
        first_page_ms.get_or_insert(began.elapsed().as_secs_f64() * 1000.0);
        let runs = page["runs"].as_array().context("runs")?;
        for run in runs {
            created.push(hooks::timestamp(&run["created_at"]).context("created_at")?);
            queued += usize::from(run["status"] == "queued");
        }
        match page["next_before"].as_str() {
            Some(next) if !runs.is_empty() => before = Some(next.to_owned()),
            _ => break,
        }
    }
    created.sort();
    Ok((created, queued, first_page_ms.unwrap_or_default()))
}
