//! `wrk` (Debian package) driving signed webhooks: a Lua script gives every request its own
//! `X-GitHub-Delivery` (`bench-<thread>-<n>`) over one fixed, signed body.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};
use gantry_bench::LoadRun;
use serde::Deserialize;

const SCRIPT: &str = r#"-- Written by bench-serve: one signed body, a new delivery id per request.
local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

function init(args)
  n = 0
  local f = assert(io.open("@BODY@", "rb"))
  body = f:read("*a")
  f:close()
  wrk.method = "POST"
  wrk.path = "/hooks/github"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["X-GitHub-Event"] = "push"
  wrk.headers["X-Hub-Signature-256"] = "@SIGNATURE@"
end

function request()
  n = n + 1
  wrk.headers["X-GitHub-Delivery"] = "bench-" .. tid .. "-" .. n
  return wrk.format(nil, nil, nil, body)
end

function done(summary, latency, requests)
  local issued = {}
  for i, t in ipairs(threads) do issued[i] = t:get("n") end
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,"p50_us":%d,"p99_us":%d,"issued":[%s]}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    math.floor(latency:percentile(50)), math.floor(latency:percentile(99)),
    table.concat(issued, ",")))
end
"#;

#[derive(Debug, Deserialize)]
struct Summary {
    requests: u64,
    duration_us: u64,
    connect: u64,
    read: u64,
    write: u64,
    status: u64,
    timeout: u64,
    p50_us: u64,
    p99_us: u64,
    issued: Vec<u64>,
}

/// What one `wrk` run measured, and how many requests each of its threads issued.
#[derive(Debug)]
pub struct Outcome {
    pub run: LoadRun,
    pub issued: Vec<u64>,
}

pub fn version() -> String {
    // `wrk -v` prints its version and usage, and exits 1.
    Command::new("wrk")
        .arg("-v")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(|l| l.split(" [").next().unwrap_or(l).to_owned())
        })
        .unwrap_or_else(|| "wrk".into())
}

/// Writes the Lua script for `body` (kept in `dir`) and its signature.
pub fn script(dir: &Path, body: &str, signature: &str) -> anyhow::Result<std::path::PathBuf> {
    let body_path = dir.join("body.json");
    std::fs::write(&body_path, body)?;
    let lua = SCRIPT
        .replace("@BODY@", &body_path.display().to_string())
        .replace("@SIGNATURE@", signature);
    let path = dir.join("deliveries.lua");
    std::fs::write(&path, lua)?;
    Ok(path)
}

/// `wrk` with `connections` connections on 2 threads for `seconds` against `url`.
pub fn run(script: &Path, url: &str, connections: u32, seconds: u32) -> anyhow::Result<Outcome> {
    let out = Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "--timeout",
            "10s",
            "-s",
        ])
        .arg(script)
        .arg(url)
        .output()
        .context("cannot run wrk (Debian package wrk)")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "wrk failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .with_context(|| format!("wrk printed no result: {stdout}"))?;
    let s: Summary = serde_json::from_str(line)?;
    let seconds = s.duration_us as f64 / 1e6;
    let ok = s.requests.saturating_sub(s.status);
    Ok(Outcome {
        run: LoadRun {
            ok,
            errors: s.status + s.connect + s.read + s.write + s.timeout,
            seconds,
            per_second: ok as f64 / seconds,
            p50_ms: s.p50_us as f64 / 1000.0,
            p99_ms: s.p99_us as f64 / 1000.0,
        },
        issued: s.issued,
    })
}
