//! The load benchmarks: a real `gantry serve` (release build, SQLite in a temporary directory,
//! local backend) on loopback, each figure beside a reference measured in the same run. Run by
//! `scripts/bench` (`./dev bench`), never by CI. Bounded in count and time; loopback only.
//!
//!     bench-serve PART --gantry BIN --hello BIN --out DIR
//!
//! PART is `intake` (issue 3: deliveries per second and p99 under `wrk`), `start` (issue 4:
//! webhook → first step p50/p99) or `queue` (issue 4: runs accepted per second, memory with
//! many runs queued). Each writes `DIR/PART.json` for `bench-report`. Sizes come from the
//! environment: `GANTRY_BENCH_RUNS` (1000), `GANTRY_BENCH_RATE` (webhooks per second, 5),
//! `GANTRY_BENCH_QUEUED` (10000), `GANTRY_BENCH_SECONDS` (wrk duration, 10).

mod hooks;
mod intake;
mod procs;
mod queue;
mod start;
mod wrk;

use std::path::PathBuf;

use anyhow::{Context, bail};

/// What every part needs to know.
#[derive(Debug)]
pub struct Settings {
    pub gantry: PathBuf,
    pub hello: PathBuf,
    /// When, for the report.
    pub measured: String,
    pub connections: u32,
    pub seconds: u32,
    pub runs: usize,
    pub rate: f64,
    pub queued: usize,
    /// How long the queue part may wait for planning to finish.
    pub queue_limit_s: u64,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .ok()
            .with_context(|| format!("{name}={v} is not a valid number")),
        Err(_) => Ok(default),
    }
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let part = args
        .next()
        .context("usage: bench-serve intake|start|queue --gantry BIN --hello BIN --out DIR")?;
    let (mut gantry, mut hello, mut out) = (None, None, None);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--gantry" => gantry = Some(PathBuf::from(value)),
            "--hello" => hello = Some(PathBuf::from(value)),
            "--out" => out = Some(PathBuf::from(value)),
            _ => bail!("unknown flag {flag}"),
        }
    }
    let settings = Settings {
        gantry: gantry.context("--gantry BIN is required")?,
        hello: hello.context("--hello BIN is required")?,
        measured: chrono::Utc::now().format("%Y-%m-%d").to_string(),
        connections: 50,
        seconds: env_or("GANTRY_BENCH_SECONDS", 10)?,
        runs: env_or("GANTRY_BENCH_RUNS", 1000)?.max(1),
        rate: env_or("GANTRY_BENCH_RATE", 5.0_f64)?.max(0.1),
        queued: env_or("GANTRY_BENCH_QUEUED", 10_000)?.max(10),
        queue_limit_s: env_or("GANTRY_BENCH_QUEUE_LIMIT_S", 900)?,
    };
    let out = out.context("--out DIR is required")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let path = match part.as_str() {
        "intake" => {
            gantry_bench::write(&out, "intake", &runtime.block_on(intake::run(&settings))?)?
        }
        "start" => gantry_bench::write(&out, "start", &runtime.block_on(start::run(&settings))?)?,
        "queue" => gantry_bench::write(&out, "queue", &runtime.block_on(queue::run(&settings))?)?,
        _ => bail!("unknown part `{part}`: intake, start or queue"),
    };
    eprintln!("wrote {}", path.display());
    Ok(())
}
