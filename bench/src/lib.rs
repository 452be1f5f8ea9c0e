//! What the benchmarks that measure outside criterion (a load generator against a running
//! `gantry serve`) leave behind for the report: one small JSON file per part under
//! `target/gantry-bench/`. Each figure comes with the reference measured in the same run, so the
//! report can print ratios; absolute numbers are for orientation only.

pub mod sections;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The directory the result files go to: `gantry-bench/` beside criterion's in the target dir.
pub fn results_dir(target: &Path) -> PathBuf {
    target.join("gantry-bench")
}

/// What `tests/it/soak.rs` measured (`GANTRY_SOAK_OUT`): samples every tenth of the runs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SoakResult {
    pub measured: String,
    pub runs: u64,
    pub in_flight: u64,
    pub retention_max_runs: u64,
    /// Which `gantry` ran: `release` (`scripts/bench soak`) or `debug` (the test command's).
    #[serde(default = "debug_build")]
    pub build: String,
    pub samples: Vec<SoakSample>,
}

fn debug_build() -> String {
    "debug".into()
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SoakSample {
    /// Runs finished when the sample was taken.
    pub runs: u64,
    pub rss_kib: u64,
    pub data_bytes: u64,
    pub runs_page_ms: f64,
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

/// Issue 18, item 8: the delivery chain on the test cluster's real node, through the release
/// `gantry serve`: Kaniko's layer cache (the second build of an unchanged app against the first,
/// cold one), and a push webhook → the new Deployment Ready, link by link, with Gantry telling
/// Flux against the same chain left to Flux's poll.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DeliveryResult {
    pub measured: String,
    /// Cores, CPU model, load average at the start.
    pub machine: String,
    /// kubelet and containerd versions of the real node.
    pub node: String,
    /// Samples asked for: cache samples (two builds each), chain samples per side; the time
    /// limit of the sampling; the GitRepositories' `interval`.
    pub cache_runs: usize,
    pub chain_runs: usize,
    pub limit_s: u64,
    pub flux_interval_s: u64,
    /// The Dockerfile of the cache samples (the chain's adds its commit's `n.txt`).
    pub dockerfile: String,
    pub builds: Vec<CacheSample>,
    /// The links of the chain, in order (each sample has one figure per link).
    pub links: Vec<String>,
    /// Gantry tells Flux (`[[kubernetes.gitops_agents]]`), and not.
    pub told: Vec<ChainSample>,
    pub untold: Vec<ChainSample>,
    /// The chain's builds used a layer cache already filled by the first cache sample.
    pub chain_cache_warm: bool,
    /// Samples lost (a run that failed or did not end in time, a Deployment not rolled out),
    /// and the first reason.
    pub missing: usize,
    pub failure: Option<String>,
    /// The time limit stopped the sampling early.
    pub stopped_early: bool,
}

/// One cache sample: a fresh image repository and cache repository, two builds of the same
/// Dockerfile one after the other; each the Kaniko step's `started_at` → `finished_at` (API).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CacheSample {
    pub first_ms: f64,
    pub second_ms: f64,
    /// The second build's log says it used a cached layer ("Found cached layer", "Using
    /// caching version").
    pub second_cached: bool,
    /// The first build's log says so too (it should not: its cache repository is new).
    pub first_cached: bool,
    /// Where each build's time went by its own log ([`kaniko_phases`]), in seconds.
    #[serde(default)]
    pub first_phases: BTreeMap<String, f64>,
    #[serde(default)]
    pub second_phases: BTreeMap<String, f64>,
}

/// The phases [`kaniko_phases`] tells apart, in the order a build goes through them.
pub const KANIKO_PHASES: [&str; 7] = [
    "unpacking a stage's base image",
    "the `RUN` itself",
    "snapshots",
    "cache lookups and the cached layer",
    "pushing (image and cache)",
    "deleting a stage's filesystem",
    "the rest",
];

/// What a Kaniko build spent its time on, from its log: Kaniko starts each line with the whole
/// seconds since it started (`INFO[0006] Unpacking rootfs …`), and each interval between two
/// lines goes to what the earlier one began. Whole seconds, so for orientation.
pub fn kaniko_phases(log: &str) -> BTreeMap<String, f64> {
    let phase = |message: &str| -> &'static str {
        let starts = |p: &[&str]| p.iter().any(|p| message.starts_with(p));
        if starts(&["Unpacking rootfs"]) {
            KANIKO_PHASES[0]
        } else if starts(&["Running: "]) {
            KANIKO_PHASES[1]
        } else if starts(&["Taking snapshot"]) {
            KANIKO_PHASES[2]
        } else if starts(&[
            "Checking for cached layer",
            "Using caching version",
            "Found cached layer",
        ]) {
            KANIKO_PHASES[3]
        } else if starts(&["Pushing"]) {
            KANIKO_PHASES[4]
        } else if starts(&["Deleting filesystem"]) {
            KANIKO_PHASES[5]
        } else {
            KANIKO_PHASES[6]
        }
    };
    // (seconds since the start, phase) of every line that has them.
    let lines: Vec<(u64, &'static str)> = log
        .lines()
        .filter_map(|line| {
            // Past the colour codes: the first `[digits]`.
            line.match_indices('[').find_map(|(i, _)| {
                let rest = &line[i + 1..];
                let close = rest.find(']')?;
                let seconds = &rest[..close];
                if seconds.is_empty() || !seconds.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                Some((seconds.parse().ok()?, phase(rest[close + 1..].trim())))
            })
        })
        .collect();
    let mut out: BTreeMap<String, f64> = BTreeMap::new();
    for w in lines.windows(2) {
        *out.entry(w[0].1.to_owned()).or_default() += w[1].0.saturating_sub(w[0].0) as f64;
    }
    out
}

impl CacheSample {
    pub fn ratio(&self) -> f64 {
        self.second_ms / self.first_ms
    }
}

/// One push through the whole chain: milliseconds per link ([`DeliveryResult::links`]).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ChainSample {
    pub links_ms: Vec<f64>,
    /// The `gitops` step's log says Gantry told Flux to reconcile.
    pub told_flux: bool,
    /// The Kaniko step's log says it used a cached layer.
    pub build_cached: bool,
}

impl ChainSample {
    pub fn total_ms(&self) -> f64 {
        self.links_ms.iter().sum()
    }
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
    fn kaniko_phases_come_from_the_seconds_on_its_lines() {
        let log = "\u{1b}[36mINFO\u{1b}[0m[0000] Checking for cached layer x...\n\
                   \u{1b}[36mINFO\u{1b}[0m[0000] No cached layer found for cmd RUN x\n\
                   \u{1b}[36mINFO\u{1b}[0m[0000] Unpacking rootfs as cmd RUN x requires it.\n\
                   \u{1b}[36mINFO\u{1b}[0m[0006] RUN x\n\
                   \u{1b}[36mINFO\u{1b}[0m[0006] Taking snapshot of full filesystem...\n\
                   \u{1b}[36mINFO\u{1b}[0m[0008] Running: [/bin/sh -c x]\n\
                   \u{1b}[36mINFO\u{1b}[0m[0014] Taking snapshot of full filesystem...\n\
                   \u{1b}[36mINFO\u{1b}[0m[0015] Deleting filesystem...\n\
                   \u{1b}[36mINFO\u{1b}[0m[0017] Pushing image to r/app:1\n\
                   \u{1b}[36mINFO\u{1b}[0m[0018] Pushed r/app@sha256:00\n\
                   pushed digest sha256:00\n";
        let p = kaniko_phases(log);
        assert_eq!(p[KANIKO_PHASES[0]], 6.0);
        assert_eq!(p[KANIKO_PHASES[1]], 6.0);
        assert_eq!(p[KANIKO_PHASES[2]], 3.0);
        assert_eq!(p[KANIKO_PHASES[3]], 0.0);
        assert_eq!(p[KANIKO_PHASES[4]], 1.0);
        assert_eq!(p[KANIKO_PHASES[5]], 2.0);
        assert_eq!(p.values().sum::<f64>(), 18.0);
    }

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
