//! The sections of docs/benchmarks.md that come from the load benchmarks' result files (see
//! [`crate::results_dir`]), each a title and its Markdown body.

use std::fmt::Write as _;
use std::path::Path;

use crate::{
    DeliveryResult, IntakeResult, Latency, LoadRun, QueueResult, RealNodeResult, SoakResult,
    StartResult,
};

pub const INTAKE: &str = "Webhook intake under load vs a bare axum endpoint";
pub const START: &str = "Webhook to first step (local backend) vs the same work done directly";
pub const QUEUE: &str = "Runs accepted per second and memory with many queued runs";
pub const REALNODE: &str = "Webhook to first step and gaps between steps on the real node vs the same Pod created directly";
pub const SOAK: &str =
    "Soak: memory, data directory and the runs page after many runs vs after warm-up";
pub const DELIVERY: &str =
    "Delivery chain on the real node: Kaniko's layer cache, and a push to the new Deployment Ready";

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
    if let Some(r) = crate::read::<RealNodeResult>(dir, "realnode")? {
        out.push((REALNODE, realnode(&r)));
    }
    if let Some(r) = crate::read::<DeliveryResult>(dir, "delivery")? {
        out.push((DELIVERY, delivery(&r)));
    }
    if let Some(r) = crate::read::<SoakResult>(dir, "soak")? {
        out.push((SOAK, soak(&r)));
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

fn soak(r: &SoakResult) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Measured {}. {} runs of a one-step pipeline through `gantry serve` on embedded defaults \
         (SQLite, the local backend, the {} build; `tests/it/soak.rs`), {} unfinished at a \
         time, with `--run-retention-max-runs {}` (runs deleted with their logs). Reference: the \
         same server after warm-up, a third of the way in. Every webhook was answered 202 and \
         every run succeeded (the soak fails otherwise): deliveries lost 0, runs stuck 0.\n",
        r.measured, r.runs, r.build, r.in_flight, r.retention_max_runs
    );
    let Some(last) = r.samples.last() else {
        return md;
    };
    let Some(warm) = r.samples.iter().find(|s| s.runs >= r.runs / 3) else {
        return md;
    };
    let _ = writeln!(
        md,
        "| figure | after {} runs | after {} runs (warm-up) | ratio |\n|---|---:|---:|---:|",
        last.runs, warm.runs
    );
    let _ = writeln!(
        md,
        "| resident memory (VmRSS) | {} | {} | {} |",
        mib(last.rss_kib),
        mib(warm.rss_kib),
        ratio(last.rss_kib as f64, warm.rss_kib as f64)
    );
    let _ = writeln!(
        md,
        "| data directory | {} | {} | {} |",
        mib(last.data_bytes / 1024),
        mib(warm.data_bytes / 1024),
        ratio(last.data_bytes as f64, warm.data_bytes as f64)
    );
    let _ = writeln!(
        md,
        "| `GET /api/v1/runs?limit=50` | {} | {} | {} |",
        ms(last.runs_page_ms),
        ms(warm.runs_page_ms),
        ratio(last.runs_page_ms, warm.runs_page_ms)
    );
    let _ = writeln!(
        md,
        "\nEvery sample (runs finished: VmRSS, data directory, runs page):\n"
    );
    for s in &r.samples {
        let _ = writeln!(
            md,
            "- {}: {}, {}, {}",
            s.runs,
            mib(s.rss_kib),
            mib(s.data_bytes / 1024),
            ms(s.runs_page_ms)
        );
    }
    md
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

/// Gantry's added time meets the goal when it is at most 10 % of the reference or 300 ms.
fn start_goal(gantry: f64, reference: f64) -> bool {
    gantry - reference <= (0.1 * reference).max(300.0)
}

/// "Nothing between steps": Gantry's container gap within 10 % or 50 ms of the reference's.
fn gap_goal(gantry: f64, reference: f64) -> bool {
    gantry - reference <= (0.1 * reference).max(50.0)
}

fn signed_ms(n: f64) -> String {
    format!("{}{}", if n >= 0.0 { "+" } else { "−" }, ms(n.abs()))
}

fn latency_row(md: &mut String, what: &str, l: &Latency) {
    let _ = writeln!(
        md,
        "| {what} | {} | {} | {} |",
        ms(l.p50_ms),
        ms(l.p99_ms),
        l.count
    );
}

fn realnode(r: &RealNodeResult) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Measured {} on {}; the test cluster's real node (`tests/cluster/node`: {}, runc; the \
         Debian test image already on the node, no pull). Both sides in the same run, sample by \
         sample alternated (Gantry first on even samples, the reference first on odd ones), one \
         pod at a time, each pod deleted before the next sample; one warm-up sample per side \
         and scenario is not counted.\n",
        r.measured, r.machine, r.node
    );
    let _ = writeln!(
        md,
        "**Gantry:** the release `gantry serve` on the Kubernetes backend (SQLite; every pod \
         on the real node through `[kubernetes]` `node_selector` and `tolerations`), a signed \
         push webhook per sample for a new commit of a private repository on the node's git \
         server, the pipeline read through a fake GitHub's contents API at that commit, the \
         clone with the forge token from the per-job Secret. **Reference:** the Pod \
         `gantry render` makes for the same job (`gantry_kube::render`: the same `clone` init \
         container cloning the same commit with the same credentials, the same image, the same \
         steps), created with kube-rs, then its clone Secret as Gantry creates it. **Clock:** \
         both ends come from containerd itself: `ctr events` on the node's containerd, a \
         container's `/tasks/start` (the task started) and `/tasks/exit` (`exited_at`), in \
         nanoseconds; a Pod status' `startedAt`/`finishedAt` has whole seconds only (shown \
         below for comparison). Start of the measure: the moment the webhook is sent (Gantry), \
         the moment the create is sent (reference).\n"
    );
    let (g, rf) = (&r.gantry_start, &r.reference_start);
    let _ = writeln!(
        md,
        "### Push webhook → first step running (a one-step job, `true`)\n\n\
         | figure | p50 | p99 | samples |\n|---|---:|---:|---:|"
    );
    latency_row(&mut md, "Gantry: webhook sent → step container started", g);
    latency_row(
        &mut md,
        "reference: Pod create sent → step container started",
        rf,
    );
    let _ = writeln!(
        md,
        "| ratio | {} | {} | |\n| Gantry adds | {} | {} | |",
        ratio(g.p50_ms, rf.p50_ms),
        ratio(g.p99_ms, rf.p99_ms),
        signed_ms(g.p50_ms - rf.p50_ms),
        signed_ms(g.p99_ms - rf.p99_ms)
    );
    latency_row(
        &mut md,
        "what Gantry records: delivery `received_at` → step `started_at` (API)",
        &r.gantry_recorded_start,
    );
    let _ = writeln!(
        md,
        "\nWhere the time goes (medians): Gantry's webhook → its pod first seen by the bench's \
         own watch {} (intake, the contents API read, planning, queueing, the pod create), then \
         {} to the step's start on the node; the reference's create → pod seen {}, then {}.\n",
        ms(r.gantry_to_pod_p50_ms),
        ms(r.gantry_pod_to_step_p50_ms),
        ms(r.reference_to_pod_p50_ms),
        ms(r.reference_pod_to_step_p50_ms)
    );
    let _ = writeln!(
        md,
        "### Gaps between consecutive containers (a five-step job, five steps of `true`)\n\n\
         From a container's exit to the next one's task start. `step-0` … `step-3` are init \
         containers, `step-4` (the last step) the pod's main container, as Gantry renders a job.\n\n\
         | transition | Gantry p50 | reference p50 | Gantry p99 | reference p99 | Gantry mean | reference mean | samples |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|"
    );
    for row in &r.gaps {
        let _ = writeln!(
            md,
            "| `{}` → `{}` | {} | {} | {} | {} | {} | {} | {} / {} |",
            row.from,
            row.to,
            ms(row.gantry.p50_ms),
            ms(row.reference.p50_ms),
            ms(row.gantry.p99_ms),
            ms(row.reference.p99_ms),
            ms(row.gantry_mean_ms),
            ms(row.reference_mean_ms),
            row.gantry.count,
            row.reference.count
        );
    }
    let _ = writeln!(
        md,
        "\nThe same step → step gaps from the Pod status (`finishedAt` → `startedAt`, whole \
         seconds): Gantry p50 {} / p99 {}, reference p50 {} / p99 {}. What Gantry records \
         between steps (the API's step `finished_at` → the next step's `started_at`, both when \
         Gantry's watch saw them): p50 {}, p99 {} over {} transitions.\n",
        ms(r.gantry_status_gap.p50_ms),
        ms(r.gantry_status_gap.p99_ms),
        ms(r.reference_status_gap.p50_ms),
        ms(r.reference_status_gap.p99_ms),
        ms(r.gantry_recorded_gap.p50_ms),
        ms(r.gantry_recorded_gap.p99_ms),
        r.gantry_recorded_gap.count
    );
    let start_ok = start_goal(g.p50_ms, rf.p50_ms) && start_goal(g.p99_ms, rf.p99_ms);
    let steps: Vec<&crate::GapRow> = r.gaps.iter().filter(|g| g.from != "clone").collect();
    let gaps_ok = !steps.is_empty()
        && steps
            .iter()
            .all(|row| gap_goal(row.gantry_mean_ms, row.reference_mean_ms));
    let _ = writeln!(
        md,
        "**Anchors.** Tekton adds about 4 s per simple Task (TEP-0142) and about 12 s on a \
         20-step Task (tektoncd/pipeline#1570); Kubernetes' pod startup SLO is p99 ≤ 5 s. \
         **Goal:** Gantry adds at most 10 % (or 300 ms) over the raw Pod, and nothing between \
         steps (here: each step → step mean gap within 10 % or 50 ms of the reference's). \
         **Result:** first step: {} (Gantry adds {} at p50, {} at p99, over a reference of {} / \
         {}); between steps: {}.",
        if start_ok {
            "meets the goal"
        } else {
            "does not meet the goal"
        },
        signed_ms(g.p50_ms - rf.p50_ms),
        signed_ms(g.p99_ms - rf.p99_ms),
        ms(rf.p50_ms),
        ms(rf.p99_ms),
        if gaps_ok {
            "meets the goal (Gantry's pod has the same gaps as the Pod created directly). The \
             gaps are the kubelet's own: it starts the next container on a later pass over the \
             pod, about a second after the last one ended, for the directly created Pod as much \
             as for Gantry's; Gantry adds no container of its own between steps"
        } else {
            "does not meet the goal"
        }
    );
    if r.missing > 0 || r.stopped_early || g.count < r.runs {
        let _ = writeln!(
            md,
            "\n{} of {} one-step and {} of {} five-step samples per side measured{}; {} samples \
             lost (a pod that did not start or end in time, or an event not seen).",
            g.count.min(rf.count),
            r.runs,
            r.gaps
                .first()
                .map_or(0, |g| g.gantry.count.min(g.reference.count)),
            r.step_runs,
            if r.stopped_early {
                format!(" (the time limit of {} s stopped the sampling)", r.limit_s)
            } else {
                String::new()
            },
            r.missing
        );
    }
    md
}

fn seconds(ms: f64) -> String {
    if ms >= 10_000.0 {
        format!("{:.1} s", ms / 1000.0)
    } else {
        format!("{:.2} s", ms / 1000.0)
    }
}

fn percent(part: f64, whole: f64) -> String {
    if whole > 0.0 {
        format!("{:.0} %", 100.0 * part / whole)
    } else {
        "–".into()
    }
}

/// The median: the middle value, or the mean of the two middle ones (these benches take few
/// samples, where a nearest-rank p50 would be the lower of two).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// A ratio with three decimals when small (a deploy link against a poll).
fn times(r: f64) -> String {
    if !r.is_finite() {
        "–".into()
    } else if r < 0.1 {
        format!("{r:.3}×")
    } else {
        format!("{r:.2}×")
    }
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn delivery(r: &DeliveryResult) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Measured {} on {}; the test cluster's real node (`tests/cluster/node`: {}, its registry \
         and git server over TLS with logins) and Flux's source-controller and \
         kustomize-controller beside the cluster (`tests/cluster/flux`). Gantry: the release \
         `gantry serve` on the Kubernetes backend, every pod on the real node, the pipeline read \
         through a fake GitHub's contents API, one signed push webhook per sample. Cache samples \
         and chain samples take turns (cache, told, untold, cache, untold, told, …).\n",
        r.measured, r.machine, r.node
    );

    // Kaniko's layer cache.
    let _ = writeln!(
        md,
        "### Kaniko's layer cache: the second build of an unchanged app vs the first\n\n\
         Per sample, a new commit whose pipeline builds the same Dockerfile twice, job `second` \
         after job `first`, into an image repository and a cache repository named after the \
         commit, so both are new (empty) in the registry; `cache: true`, the cache repository \
         given. Each build is its Kaniko step, `started_at` → `finished_at` as the API records \
         it: for each stage, the base image pulled and unpacked, then the `RUN` and a snapshot \
         of the filesystem (or the cached layer, extracted), the `COPY`, the push. Reference: the first build, in the same run. The Dockerfile (`BASE` is the \
         node's Debian test image, in the same registry):\n\n```dockerfile\n{}```\n",
        r.dockerfile
    );
    let _ = writeln!(
        md,
        "| sample | first build (cold cache) | second build | second ÷ first | cached layer used (second / first) |\n\
         |---|---:|---:|---:|---|"
    );
    for (i, b) in r.builds.iter().enumerate() {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} / {} |",
            i + 1,
            seconds(b.first_ms),
            seconds(b.second_ms),
            ratio(b.second_ms, b.first_ms),
            yes(b.second_cached),
            yes(b.first_cached)
        );
    }
    if r.builds.is_empty() {
        let _ = writeln!(md, "\nNo cache sample was measured.\n");
    } else {
        let first = median(r.builds.iter().map(|b| b.first_ms).collect());
        let second = median(r.builds.iter().map(|b| b.second_ms).collect());
        // The ratio's median over the samples (each pair measured back to back).
        let ratio_p50 = median(r.builds.iter().map(|b| b.ratio()).collect());
        let _ = writeln!(
            md,
            "| median | {} | {} | {ratio_p50:.2}× | |",
            seconds(first),
            seconds(second),
        );
        let cached = r.builds.iter().filter(|b| b.second_cached).count();
        let halved = ratio_p50 <= 0.5;
        let _ = writeln!(
            md,
            "\n**Result:** the second build took {:.2}× the first (median of the per-sample \
             ratios): a saving of {:.0} %. The design's \"often over 50 %\" {} here: the cache \
             {} the build. The second build's log named a cached layer (\"Found cached layer\" \
             or \"Using caching version\") in {cached} of {} samples.\n",
            ratio_p50,
            100.0 * (1.0 - ratio_p50),
            if halved { "holds" } else { "does not hold" },
            if halved {
                "at least halved"
            } else {
                "did not halve"
            },
            r.builds.len()
        );
        let logged = r
            .builds
            .iter()
            .any(|b| !b.first_phases.is_empty() || !b.second_phases.is_empty());
        if logged {
            let mean = |phase: &str, second: bool| {
                let sum: f64 = r
                    .builds
                    .iter()
                    .map(|b| {
                        if second {
                            &b.second_phases
                        } else {
                            &b.first_phases
                        }
                    })
                    .map(|m| m.get(phase).copied().unwrap_or(0.0))
                    .sum();
                sum / r.builds.len() as f64
            };
            let _ = writeln!(
                md,
                "Where a build's time goes, by Kaniko's own log (each line starts with the whole \
                 seconds since Kaniko started; an interval counts for what its first line \
                 began; means over the samples; the step's time also holds the container's \
                 start and end):\n\n| phase | first build | second build |\n|---|---:|---:|"
            );
            for phase in crate::KANIKO_PHASES {
                let _ = writeln!(
                    md,
                    "| {phase} | {:.1} s | {:.1} s |",
                    mean(phase, false),
                    mean(phase, true)
                );
            }
            let total = |second: bool| -> f64 {
                crate::KANIKO_PHASES.iter().map(|p| mean(p, second)).sum()
            };
            let _ = writeln!(
                md,
                "\nThe cache saves the `RUN` and its snapshots ({:.1} s of the first build's \
                 {:.1} s by Kaniko's clock); it cannot save unpacking each stage's base image, \
                 {:.1} s of the second build's {:.1} s. Kaniko prints no line while it fetches \
                 and extracts a cached layer, so that time counts for the line before (\
                 \"Using caching version\").",
                mean(crate::KANIKO_PHASES[1], false) + mean(crate::KANIKO_PHASES[2], false),
                total(false),
                mean(crate::KANIKO_PHASES[0], true),
                total(true)
            );
        }
        md.push('\n');
    }

    // The chain.
    let _ = writeln!(
        md,
        "### Push webhook → new Deployment Ready, link by link\n\n\
         One push of a new commit of the app; its pipeline: `test` (one `run` step) → `image` \
         (Kaniko build and push, the layer cache {}) → `scan` (Trivy, `CRITICAL`/`HIGH`, against \
         a database the trivydb tool pushed, `kubernetes.trivy_db_repository`) → `deploy` (a \
         `gitops` bump of `images[].newTag` in a kustomize overlay of a configuration repository \
         on the node's git server) → Flux applies the overlay and the Deployment (one replica, \
         on the real node) rolls out the new image. **Told:** Gantry tells Flux \
         (`[[kubernetes.gitops_agents]]`: it sets `reconcile.fluxcd.io/requestedAt` on the \
         GitRepository right after the push). **Untold (reference):** the same chain, another \
         app and configuration repository, with no `gitops_agents` entry: Flux finds the commit \
         at its next poll. Both GitRepositories poll every {} s. Moments: webhook sent (the \
         bench's clock), the run's `created_at`, each job's `started_at` (its workspace \
         cloned) and `finished_at` (API), the configuration branch seen moving on the git \
         server's disk and the Deployment seen rolled out with the new image (`kubectl rollout \
         status`'s test: every replica updated and available, no old one left), both polled \
         every 100 ms.\n",
        if r.chain_cache_warm {
            "filled by the first cache sample, whose first stage is the same"
        } else {
            "new: the first chain build was cold"
        },
        r.flux_interval_s
    );
    let (told, untold) = (&r.told, &r.untold);
    let column = |v: &[crate::ChainSample], k: usize| -> Vec<f64> {
        v.iter()
            .filter_map(|s| s.links_ms.get(k).copied())
            .collect()
    };
    let mean_of = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let told_total = mean_of(&told.iter().map(|s| s.total_ms()).collect::<Vec<_>>());
    let untold_total = mean_of(&untold.iter().map(|s| s.total_ms()).collect::<Vec<_>>());
    let _ = writeln!(
        md,
        "| link | told (median) | untold (median) | told ÷ untold | share of the total, told | share, untold |\n\
         |---|---:|---:|---:|---:|---:|"
    );
    for (k, link) in r.links.iter().enumerate() {
        let (t, u) = (column(told, k), column(untold, k));
        let (tp, up) = (median(t.clone()), median(u.clone()));
        let _ = writeln!(
            md,
            "| {link} | {} | {} | {} | {} | {} |",
            seconds(tp),
            seconds(up),
            times(tp / up),
            percent(mean_of(&t), told_total),
            percent(mean_of(&u), untold_total)
        );
    }
    let tt = median(told.iter().map(|s| s.total_ms()).collect());
    let ut = median(untold.iter().map(|s| s.total_ms()).collect());
    let _ = writeln!(
        md,
        "| **webhook sent → Deployment Ready** | **{}** | **{}** | **{}** | 100 % | 100 % |",
        seconds(tt),
        seconds(ut),
        times(tt / ut)
    );
    let deploy = r.links.len().saturating_sub(1);
    let (td, ud) = (median(column(told, deploy)), median(column(untold, deploy)));
    let _ = writeln!(
        md,
        "\nSamples: {} told, {} untold, of {} per side. The medians of the links do not add up \
         to the median of the total; the shares are of the means (which do). Every other link \
         is the same on both sides by construction, so its ratio shows the noise between \
         samples.\n",
        told.len(),
        untold.len(),
        r.chain_runs
    );
    if !told.is_empty() && !untold.is_empty() {
        let _ = writeln!(
            md,
            "**Result:** with Gantry telling Flux, config pushed → Deployment Ready took {} \
             against {} when Flux was left to its poll ({}); over the whole chain, {} against \
             {} ({}). Left to a poll every {} s, Flux finds a commit on average {:.0} s after \
             it lands. Gantry's gitops step said it told Flux in {} of {} told samples (and in \
             {} of {} untold ones). The chain's Kaniko build named a cached layer in {} of {} \
             samples.",
            seconds(td),
            seconds(ud),
            times(td / ud),
            seconds(tt),
            seconds(ut),
            times(tt / ut),
            r.flux_interval_s,
            r.flux_interval_s as f64 / 2.0,
            told.iter().filter(|s| s.told_flux).count(),
            told.len(),
            untold.iter().filter(|s| s.told_flux).count(),
            untold.len(),
            told.iter().chain(untold).filter(|s| s.build_cached).count(),
            told.len() + untold.len()
        );
    } else {
        let _ = writeln!(md, "No chain sample was measured on one side or both.");
    }
    if r.missing > 0 || r.stopped_early {
        let _ = writeln!(
            md,
            "\n{} samples lost{}{}.",
            r.missing,
            if r.stopped_early {
                format!("; the time limit of {} s stopped the sampling", r.limit_s)
            } else {
                String::new()
            },
            r.failure
                .as_deref()
                .map(|f| format!("; the first: `{}`", f.replace('`', "'").replace('\n', " ")))
                .unwrap_or_default()
        );
    }
    if r.cache_runs < 2 || r.chain_runs < 3 {
        let _ = writeln!(
            md,
            "\nThis run used {} cache samples and {} chain samples per side instead of the \
             defaults 2 and 3 (`GANTRY_BENCH_DELIVERY_CACHE_RUNS`, `GANTRY_BENCH_DELIVERY_RUNS`).",
            r.cache_runs, r.chain_runs
        );
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CacheSample, ChainSample};

    fn sample() -> DeliveryResult {
        let chain = |deploy: f64, told_flux: bool| ChainSample {
            links_ms: vec![
                200.0, 1500.0, 1000.0, 2000.0, 30_000.0, 2000.0, 10_000.0, 2000.0, 3000.0, deploy,
            ],
            told_flux,
            build_cached: true,
        };
        DeliveryResult {
            measured: "2026-12-02 06:00 UTC".into(),
            machine: "2 cores, AMD EPYC, load average 1.00 at the start".into(),
            node: "kubelet v1.36.3, containerd://2.2.0".into(),
            cache_runs: 3,
            chain_runs: 2,
            limit_s: 900,
            flux_interval_s: 30,
            dockerfile: "FROM BASE AS build\nRUN true\n".into(),
            builds: vec![
                CacheSample {
                    first_ms: 40_000.0,
                    second_ms: 16_000.0,
                    second_cached: true,
                    first_cached: false,
                    first_phases: [(crate::KANIKO_PHASES[1].to_owned(), 6.0)].into(),
                    ..CacheSample::default()
                },
                CacheSample {
                    first_ms: 44_000.0,
                    second_ms: 22_000.0,
                    second_cached: true,
                    first_cached: false,
                    ..CacheSample::default()
                },
                CacheSample {
                    first_ms: 50_000.0,
                    second_ms: 30_000.0,
                    second_cached: true,
                    first_cached: false,
                    ..CacheSample::default()
                },
            ],
            links: [
                "webhook sent → run created",
                "b",
                "c",
                "d",
                "e",
                "f",
                "g",
                "h",
                "i",
                "config pushed → Deployment Ready",
            ]
            .map(str::to_owned)
            .to_vec(),
            told: vec![chain(4000.0, true), chain(6000.0, true)],
            untold: vec![chain(20_000.0, false), chain(16_000.0, false)],
            chain_cache_warm: true,
            ..DeliveryResult::default()
        }
    }

    #[test]
    fn the_delivery_section_reports_the_cache_ratio_and_the_told_vs_untold_deploy() {
        let md = delivery(&sample());
        assert!(
            md.contains("| 1 | 40.0 s | 16.0 s | 0.40× | yes / no |"),
            "{md}"
        );
        // Median of 0.40, 0.50, 0.60.
        assert!(
            md.contains("| median | 44.0 s | 22.0 s | 0.50× | |"),
            "{md}"
        );
        assert!(md.contains("| the `RUN` itself | 2.0 s | 0.0 s |"), "{md}");
        assert!(md.contains("\"often over 50 %\" holds here"), "{md}");
        assert!(md.contains("in 3 of 3 samples"), "{md}");
        // The median of two samples is their mean.
        assert!(
            md.contains("| config pushed → Deployment Ready | 5.00 s | 18.0 s | 0.28× |"),
            "{md}"
        );
        assert!(
            md.contains("told Flux in 2 of 2 told samples (and in 0 of 2"),
            "{md}"
        );
        assert!(
            md.contains("| **webhook sent → Deployment Ready** |"),
            "{md}"
        );
        assert!(!md.contains("samples lost"), "{md}");

        let mut slow = sample();
        for b in &mut slow.builds {
            b.second_ms = b.first_ms * 0.8;
        }
        slow.missing = 1;
        slow.failure = Some("cache sample 2: run failure".into());
        let md = delivery(&slow);
        assert!(
            md.contains("does not hold here: the cache did not halve"),
            "{md}"
        );
        assert!(md.contains("1 samples lost; the first: `cache sample 2: run failure`"));
    }
}
