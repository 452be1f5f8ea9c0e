//! What the benchmarks that measure outside criterion (a load generator against a running
//! `gantry serve`) leave behind for the report: one small JSON file per part under
//! `target/gantry-bench/`. Each figure comes with the reference measured in the same run, so the
//! report can print ratios; absolute numbers are for orientation only.

pub mod sections;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The directory the result files go to: `gantry-bench/` beside criterion's in the target dir.
pub fn results_dir(target: &Path) -> PathBuf {
    target.join("gantry-bench")
}

/// One load-generator run against one server.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LoadRun {
    /// Responses with a 2xx status.
    pub ok: u64,
    /// Everything else: non-2xx answers, connect/read/write errors, timeouts.
    pub errors: u64,
    pub seconds: f64,
    pub per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// Issue 3: webhook intake under load (`wrk`, loopback), against a bare axum endpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IntakeResult {
    pub measured: String,
    pub tool: String,
    pub connections: u32,
    pub seconds: u32,
    pub payload_bytes: usize,
    pub gantry: LoadRun,
    /// The hello-world endpoint, run before and after Gantry (drift shows as a difference).
    pub reference: Vec<LoadRun>,
    /// Delivery ids looked up through the API after the run, and how many were found stored.
    pub checked: u32,
    pub found: u32,
}

/// A latency distribution in milliseconds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Latency {
    pub count: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    /// Nearest-rank percentiles of `samples` (milliseconds).
    pub fn of(mut samples: Vec<f64>) -> Latency {
        samples.sort_by(f64::total_cmp);
        let rank = |p: f64| {
            if samples.is_empty() {
                return 0.0;
            }
            let i = ((p / 100.0) * samples.len() as f64).ceil() as usize;
            samples[i.clamp(1, samples.len()) - 1]
        };
        Latency {
            count: samples.len(),
            p50_ms: rank(50.0),
            p99_ms: rank(99.0),
            max_ms: samples.last().copied().unwrap_or(0.0),
        }
    }
}

/// Issue 4: webhook accepted → first step started, against the same work done directly.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StartResult {
    pub measured: String,
    /// Webhooks sent, one new commit each, at `rate` per second.
    pub runs: usize,
    pub rate: f64,
    /// Delivery `received_at` → first step `started_at`, from the API.
    pub gantry: Latency,
    /// `git init` + `git fetch --depth 1` of the same commit from the same git daemon +
    /// `git checkout` + `sh -c true`, started at the same rate.
    pub reference: Latency,
    /// Runs that did not start within the time limit (not in the percentiles).
    pub missing: usize,
    /// Deliveries whose planning failed (not in the percentiles), and the first reason.
    #[serde(default)]
    pub failed: usize,
    #[serde(default)]
    pub failure: Option<String>,
}

/// Issue 4: planning throughput and resident memory with many queued runs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct QueueResult {
    pub measured: String,
    pub connections: u32,
    /// Webhooks sent (and runs queued, one job each, behind one running job).
    pub webhooks: usize,
    /// Runs found queued through the API at the end.
    pub queued: usize,
    /// Runs planned and queued per second: webhooks sent / (first send → last run created).
    pub accepted_per_second: f64,
    /// The same, over the first and the last tenth of the runs (a growing cost shows here).
    pub accepted_per_second_first_tenth: f64,
    pub accepted_per_second_last_tenth: f64,
    /// The hello-world endpoint with the same sender, the same number of requests.
    pub reference_per_second: f64,
    /// VmRSS of `gantry serve` right after start, with the runs queued, and VmHWM (peak).
    pub idle_rss_kib: u64,
    pub queued_rss_kib: u64,
    pub peak_rss_kib: u64,
    /// One `GET /api/v1/runs?limit=500` page with that many runs stored.
    pub list_page_ms: f64,
}

/// Issue 19, item 5: `gantry serve` on the test cluster's real node against the same Pods
/// created directly with kube-rs, in the same run, alternated sample by sample.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RealNodeResult {
    pub measured: String,
    /// Cores, CPU model, load average at the start.
    pub machine: String,
    /// kubelet and containerd versions of the real node.
    pub node: String,
    /// Samples per side asked for (one-step jobs, five-step jobs) and the time limit.
    pub runs: usize,
    pub step_runs: usize,
    pub limit_s: u64,
    /// Webhook sent → the step container's task started (containerd's `/tasks/start`).
    pub gantry_start: Latency,
    /// Pod create sent → the same.
    pub reference_start: Latency,
    /// Where Gantry's time goes (medians): webhook sent → pod first seen by the bench's watch,
    /// and the pod first seen → step started; the same for the reference (create sent → seen).
    pub gantry_to_pod_p50_ms: f64,
    pub gantry_pod_to_step_p50_ms: f64,
    pub reference_to_pod_p50_ms: f64,
    pub reference_pod_to_step_p50_ms: f64,
    /// What Gantry records: the delivery's `received_at` → the step's `started_at` (API).
    pub gantry_recorded_start: Latency,
    /// Step gaps of the five-step job: one row per transition ("clone → step-0", …), from a
    /// container's exit to the next one's task start, both from containerd's events.
    pub gaps: Vec<GapRow>,
    /// What Gantry records between steps: step i `finished_at` → step i+1 `started_at` (API).
    pub gantry_recorded_gap: Latency,
    /// The same from the pod status (`finishedAt` → `startedAt`, whole seconds), both sides.
    pub gantry_status_gap: Latency,
    pub reference_status_gap: Latency,
    /// Samples lost (a pod that did not start or finish in time, an event not seen).
    pub missing: usize,
    /// The time limit stopped the sampling early.
    pub stopped_early: bool,
}

/// One transition between consecutive containers of the five-step job, both sides.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct GapRow {
    pub from: String,
    pub to: String,
    pub gantry: Latency,
    pub reference: Latency,
    /// Means (the percentiles of a few samples hide small shifts).
    pub gantry_mean_ms: f64,
    pub reference_mean_ms: f64,
}

/// Cores, CPU model and load, like scripts/bench's machine line (the benches that run outside
/// criterion head their results with it).
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpu
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_owned())
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load = load.split_whitespace().next().unwrap_or("?");
    format!("{cores} cores, {model}, load average {load} at the start")
}

/// Reads a result file; `None` when the part did not run.
pub fn read<T: for<'de> Deserialize<'de>>(dir: &Path, name: &str) -> anyhow::Result<Option<T>> {
    let path = dir.join(format!("{name}.json"));
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            Ok(Some(serde_json::from_str(&text).map_err(|e| {
                anyhow::anyhow!("cannot read {}: {e}", path.display())
            })?))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
    }
}

/// Writes a result file.
pub fn write<T: Serialize>(dir: &Path, name: &str, value: &T) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(value)? + "\n")?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let l = Latency::of((1..=100).map(f64::from).collect());
        assert_eq!(
            (l.p50_ms, l.p99_ms, l.max_ms, l.count),
            (50.0, 99.0, 100.0, 100)
        );
        let one = Latency::of(vec![7.0]);
        assert_eq!((one.p50_ms, one.p99_ms), (7.0, 7.0));
        assert_eq!(Latency::of(Vec::new()).count, 0);
    }
}
