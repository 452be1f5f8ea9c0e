//! Issue 3: webhook deliveries verified, parsed and durably stored per second, and their p99
//! latency, with 50 connections from `wrk` on loopback; the reference is the hello-world
//! endpoint under the same script, before and after Gantry.
//!
//! The body is a real octokit push whose clone URL points at a closed loopback port, so the
//! planning that follows each answer fails fast (one `git fetch` that is refused) instead of
//! piling up.

use anyhow::ensure;
use gantry_bench::IntakeResult;

use crate::{Settings, hooks, procs, wrk};

pub async fn run(settings: &Settings) -> anyhow::Result<IntakeResult> {
    let tmp = tempfile::tempdir()?;
    let closed = procs::free_port()?;
    let body = hooks::octokit_push(&format!("git://127.0.0.1:{closed}/nothing-here"))?;
    let script = wrk::script(tmp.path(), &body, &hooks::signature(&body))?;
    let (connections, seconds) = (settings.connections, settings.seconds);

    let mut reference = Vec::new();
    let hello = |label: &str| -> anyhow::Result<gantry_bench::LoadRun> {
        let server = procs::Server::hello(&settings.hello)?;
        let outcome = wrk::run(&script, &server.url, connections, seconds)?;
        eprintln!(
            "intake: hello-world ({label}): {:.0}/s, p99 {:.2} ms",
            outcome.run.per_second, outcome.run.p99_ms
        );
        Ok(outcome.run)
    };
    reference.push(hello("before")?);

    let data = tmp.path().join("gantry");
    std::fs::create_dir_all(&data)?;
    let gantry = procs::Server::gantry(&settings.gantry, &data, &[])?;
    let outcome = wrk::run(&script, &gantry.url, connections, seconds)?;
    eprintln!(
        "intake: gantry: {:.0}/s, p99 {:.2} ms, {} errors",
        outcome.run.per_second, outcome.run.p99_ms, outcome.run.errors
    );
    // Every 202 means stored: look some of them up. The last `connections` ids of each thread
    // may have been cut off by the end of the run, so they are left out.
    let client = hooks::client()?;
    let (mut checked, mut found) = (0, 0);
    for (thread, &issued) in outcome.issued.iter().enumerate() {
        let answered = issued.saturating_sub(u64::from(connections));
        for k in 1..=10u64 {
            let n = (answered * k / 10).max(1);
            if n > answered {
                continue;
            }
            let url = format!(
                "{}/api/v1/deliveries/github/bench-{}-{n}",
                gantry.url,
                thread + 1
            );
            checked += 1;
            if hooks::get_json(&client, &url).await?.is_some() {
                found += 1;
            }
        }
    }
    drop(gantry);
    ensure!(
        checked > 0 && found == checked,
        "only {found} of {checked} accepted deliveries were found stored"
    );
    reference.push(hello("after")?);

    Ok(IntakeResult {
        measured: settings.measured.clone(),
        tool: wrk::version(),
        connections,
        seconds,
        payload_bytes: body.len(),
        gantry: outcome.run,
        reference,
        checked,
        found,
    })
}
