//! The sections of docs/benchmarks.md that come from the load benchmarks' result files (see
//! [`crate::results_dir`]), each a title and its Markdown body.

use std::fmt::Write as _;
use std::path::Path;

use crate::{IntakeResult, LoadRun, QueueResult, StartResult};

pub const INTAKE: &str = "Webhook intake under load vs a bare axum endpoint";
pub const START: &str = "Webhook to first step (local backend) vs the same work done directly";
pub const QUEUE: &str = "Runs accepted per second and memory with many queued runs";

/// Every section whose result file is there, in the order they appear in the document.
pub fn render(dir: &Path) -> anyhow::Result<Vec<(&'static str, String)>> {
    let mut out = Vec::new();
    if let Some(r) = crate::read::<IntakeResult>(dir, "intake")? {
        out.push((INTAKE, intake(&r)));
    }
    if let Some(r) = crate::read::<StartResult>(dir, "start")? {
        out.push((START, start(&r)));
    }
    if let Some(r) = crate::read::<QueueResult>(dir, "queue")? {
        out.push((QUEUE, queue(&r)));
    }
    Ok(out)
}

fn ratio(measured: f64, reference: f64) -> String {
    let r = measured / reference;
    if reference <= 0.0 {
        "–".into()
    } else if r >= 0.1 {
        format!("{r:.2}×")
    } else {
        // Small ratios (a rate against a bare endpoint) keep two significant digits.
        format!("{r:.1e}×")
    }
}

fn per_second(n: f64) -> String {
    if n >= 100.0 {
        format!("{n:.0}/s")
    } else {
        format!("{n:.1}/s")
    }
}

fn ms(n: f64) -> String {
    if n >= 100.0 {
        format!("{n:.0} ms")
    } else {
        format!("{n:.2} ms")
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn mean(runs: &[LoadRun], f: impl Fn(&LoadRun) -> f64) -> f64 {
    runs.iter().map(f).sum::<f64>() / runs.len().max(1) as f64
}

fn intake(r: &IntakeResult) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Measured {}. `{}`, {} connections on 2 threads for {} s on loopback, every request a \
         signed GitHub push (the octokit branch-push fixture, {} bytes) with its own \
         `X-GitHub-Delivery`. Reference: a bare axum endpoint (`bench/src/hello_world.rs`, the \
         same Tokio runtime settings) that reads the body and answers 202, under the same \
         script, run before and after Gantry (the mean of both).\n",
        r.measured, r.tool, r.connections, r.seconds, r.payload_bytes
    );
    let hello_rate = mean(&r.reference, |l| l.per_second);
    let hello_p50 = mean(&r.reference, |l| l.p50_ms);
    let hello_p99 = mean(&r.reference, |l| l.p99_ms);
    let _ = writeln!(
        md,
        "| figure | gantry serve | reference | ratio |\n|---|---:|---:|---:|"
    );
    let _ = writeln!(
        md,
        "| deliveries verified, parsed and stored per second | {} | {} | {} |",
        per_second(r.gantry.per_second),
        per_second(hello_rate),
        ratio(r.gantry.per_second, hello_rate)
    );
    let _ = writeln!(
        md,
        "| p50 latency | {} | {} | {} |",
        ms(r.gantry.p50_ms),
        ms(hello_p50),
        ratio(r.gantry.p50_ms, hello_p50)
    );
    let _ = writeln!(
        md,
        "| p99 latency | {} | {} | {} |",
        ms(r.gantry.p99_ms),
        ms(hello_p99),
        ratio(r.gantry.p99_ms, hello_p99)
    );
    let runs: Vec<String> = r
        .reference
        .iter()
        .map(|l| per_second(l.per_second))
        .collect();
    let _ = writeln!(
        md,
        "\nGantry answered {} deliveries with 202 and {} otherwise; {} of {} accepted delivery ids \
         looked up afterwards through `GET /api/v1/deliveries/github/{{id}}` were stored. A 202 \
         means the delivery was committed to SQLite (WAL, `synchronous = NORMAL`: it survives a \
         crash of the process). The clone URL points at a closed loopback port, so the planning \
         that follows each answer fails at once; it still runs (two `git` processes per \
         delivery) and shares the 2 cores with the intake and with `wrk`. Reference runs: {}.",
        r.gantry.ok,
        r.gantry.errors,
        r.found,
        r.checked,
        runs.join(" before, ") + " after"
    );
    md
}

fn start(r: &StartResult) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Measured {}. {} signed push webhooks, {:.0} per second, each for a new commit of a \
         repository served by `git daemon` on loopback whose pipeline is one job with one step \
         (`true`). Gantry's figure is the API's delivery `received_at` → the run's first step \
         `started_at`: storing and answering the delivery, reading the pipeline at the commit \
         through git, planning, queueing, and the local backend's checkout. Reference: the same \
         commits fetched directly from the same daemon, started at the same rate — a fresh \
         directory, `git init`, `git fetch --depth 1`, `git checkout --detach`, `sh -c true`.\n",
        r.measured, r.runs, r.rate
    );
    let _ = writeln!(md, "| figure | p50 | p99 |\n|---|---:|---:|");
    let _ = writeln!(
        md,
        "| gantry serve: webhook accepted → first step started | {} | {} |",
        ms(r.gantry.p50_ms),
        ms(r.gantry.p99_ms)
    );
    let _ = writeln!(
        md,
        "| reference: fetch + checkout + `sh -c true` | {} | {} |",
        ms(r.reference.p50_ms),
        ms(r.reference.p99_ms)
    );
    let _ = writeln!(
        md,
        "| ratio | {} | {} |",
        ratio(r.gantry.p50_ms, r.reference.p50_ms),
        ratio(r.gantry.p99_ms, r.reference.p99_ms)
    );
    let _ = writeln!(
        md,
        "\n{} runs measured, {} did not start within the time limit, {} deliveries failed \
         planning.",
        r.gantry.count, r.missing, r.failed
    );
    if let Some(reason) = &r.failure {
        let _ = writeln!(md, "\nFirst planning failure: `{reason}`.");
    }
    if r.runs < 1000 {
        let _ = writeln!(
            md,
            "\nThis run used {} webhooks instead of the default 1,000 (`GANTRY_BENCH_RUNS`).",
            r.runs
        );
    }
    md
}

fn queue(r: &QueueResult) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Measured {}. {} signed push webhooks over {} concurrent connections, as fast as they \
         are answered, for a pipeline whose one job sleeps, with `GANTRY_MAX_RUNNING_JOBS=1`: \
         the first run starts and every other stays queued. A run counts as accepted when it \
         is planned and queued; the rate is the number of runs over the time from the first \
         webhook sent to the last run's `created_at`. Reference for the rate: the hello-world \
         endpoint, the same sender, the same number of requests. Reference for memory: the same \
         `gantry serve` idle, one second after it started.\n",
        r.measured, r.webhooks, r.connections
    );
    let _ = writeln!(
        md,
        "| figure | gantry serve | reference | ratio |\n|---|---:|---:|---:|"
    );
    let _ = writeln!(
        md,
        "| runs accepted per second | {} | {} | {} |",
        per_second(r.accepted_per_second),
        per_second(r.reference_per_second),
        ratio(r.accepted_per_second, r.reference_per_second)
    );
    let _ = writeln!(
        md,
        "| … over the first tenth of the runs | {} | {} | {} |",
        per_second(r.accepted_per_second_first_tenth),
        per_second(r.reference_per_second),
        ratio(r.accepted_per_second_first_tenth, r.reference_per_second)
    );
    let _ = writeln!(
        md,
        "| … over the last tenth | {} | {} | {} |",
        per_second(r.accepted_per_second_last_tenth),
        per_second(r.reference_per_second),
        ratio(r.accepted_per_second_last_tenth, r.reference_per_second)
    );
    let _ = writeln!(
        md,
        "| resident memory (VmRSS) with {} runs queued | {} | {} idle | {} |",
        r.queued,
        mib(r.queued_rss_kib),
        mib(r.idle_rss_kib),
        ratio(r.queued_rss_kib as f64, r.idle_rss_kib as f64)
    );
    let _ = writeln!(
        md,
        "| peak resident memory (VmHWM) | {} | {} idle | {} |",
        mib(r.peak_rss_kib),
        mib(r.idle_rss_kib),
        ratio(r.peak_rss_kib as f64, r.idle_rss_kib as f64)
    );
    let _ = writeln!(
        md,
        "\nFor orientation: one page of `GET /api/v1/runs?limit=500` took {} with the runs stored.",
        ms(r.list_page_ms)
    );
    if r.webhooks < 10_000 {
        let _ = writeln!(
            md,
            "\nThis run used {} webhooks instead of the default 10,000 (`GANTRY_BENCH_QUEUED`).",
            r.webhooks
        );
    }
    md
}
