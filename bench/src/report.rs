//! Turns criterion's estimates from the last `cargo bench`, and the result files the other
//! benchmarks leave in the target directory, into docs/benchmarks.md. Each row pairs a measured
//! figure with the reference measured in the same run; the ratio is what to compare across
//! machines, not the times.
//!
//! A section that this run has no results for (`GANTRY_BENCH_ONLY` ran another part) is kept
//! from the existing document, marked as such; so a renamed section must be deleted by hand.
//!
//!     bench-report [CRITERION_DIR] [OUT.md] [MACHINE]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde_json::Value;

/// (benchmark group prefix, section title, measured id, reference id, reference description)
const SECTIONS: &[(&str, &str, &str, &str, &str)] = &[
    (
        "pipeline/",
        "Pipeline parse + plan vs plain YAML deserialisation",
        "parse+plan",
        "yaml-reference",
        "the same file deserialised into `serde_json::Value` with serde-saphyr",
    ),
    (
        "kube/",
        "Pod rendering vs plain JSON serialisation",
        "render",
        "json-reference",
        "`serde_json` serialisation of the same Pods (every job of the Kaniko/Trivy example)",
    ),
    (
        "webhook/",
        "Webhook HMAC verification vs plain SHA-256",
        "verify",
        "sha256-reference",
        "a plain SHA-256 of the same bytes. Measured: `gantry_forge::receive` refusing a \
         delivery whose `X-Hub-Signature-256` is well formed but wrong, i.e. the whole \
         verification (header, hex, HMAC-SHA256, constant-time compare) and nothing after it. \
         Cases: a real branch push from `@octokit/webhooks-examples` and the same push grown to \
         1 MiB with more commits",
    ),
    (
        "webhook/",
        "Webhook verify + parse vs plain SHA-256",
        "verify+parse",
        "sha256-reference",
        "a plain SHA-256 of the same bytes. Measured: `gantry_forge::receive` verifying and \
         parsing the same deliveries into a trigger",
    ),
];

const MARK_KEPT: &str = "_Not measured in the last run: kept from an earlier one._";

fn mean_ns(dir: &Path) -> anyhow::Result<f64> {
    let path = dir.join("new/estimates.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("no criterion estimates at {}", path.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text)?;
    json["mean"]["point_estimate"]
        .as_f64()
        .with_context(|| format!("no mean in {}", path.display()))
}

fn human(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.1} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let criterion = PathBuf::from(args.next().unwrap_or_else(|| "target/criterion".into()));
    let out = PathBuf::from(args.next().unwrap_or_else(|| "docs/benchmarks.md".into()));
    let machine = args.next().unwrap_or_default();

    let mut md = String::from("# Benchmarks\n\n");
    md.push_str(
        "Written by `./dev bench`. Timings on shared 2-core machines are noisy, so every figure \
         is a ratio against a reference measured in the same run; the absolute times are for \
         orientation only and are never a pass/fail test.\n\n",
    );
    if !machine.is_empty() {
        let _ = writeln!(md, "Last run: {machine}\n");
    }
    // No criterion results at all is fine when only other parts ran.
    let mut groups: Vec<String> = std::fs::read_dir(&criterion)
        .map(|dir| {
            dir.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    groups.sort();
    let mut rows = 0;
    for (prefix, title, measured, reference, reference_text) in SECTIONS {
        let mut section = format!("## {title}\n\nReference: {reference_text}.\n\n");
        let _ = writeln!(
            section,
            "| case | {measured} | reference | ratio |\n|---|---:|---:|---:|"
        );
        let mut section_rows = 0;
        // Criterion flattens `pipeline/x` into the directory `pipeline_x`.
        let dir_prefix = prefix.replace('/', "_");
        for group in groups.iter().filter(|g| g.starts_with(&dir_prefix)) {
            let base = criterion.join(group);
            let measured_ns = mean_ns(&base.join(measured))
                .or_else(|_| mean_ns(&base.join(measured.replace('+', "_"))));
            let (Ok(m), Ok(r)) = (measured_ns, mean_ns(&base.join(reference))) else {
                continue;
            };
            let case = &group[dir_prefix.len()..];
            let _ = writeln!(
                section,
                "| {case} | {} | {} | {:.2}× |",
                human(m),
                human(r),
                m / r
            );
            section_rows += 1;
        }
        if section_rows > 0 {
            md.push_str(&section);
            md.push('\n');
            rows += section_rows;
        }
    }
    rows += logs_section(&criterion, &mut md)?;
    let results = gantry_bench::results_dir(criterion.parent().unwrap_or(Path::new(".")));
    if let Some(section) = cluster_section(&results)? {
        md.push_str(&section);
        rows += 1;
    }
    for (title, body) in gantry_bench::sections::render(&results)? {
        let _ = writeln!(md, "## {title}\n\n{body}");
        rows += 1;
    }
    if rows == 0 {
        bail!(
            "no benchmark results found under {} or {}",
            criterion.display(),
            results.display()
        );
    }
    let previous = std::fs::read_to_string(&out).unwrap_or_default();
    let md = keep_unmeasured(&previous, &md);
    std::fs::write(&out, md).with_context(|| format!("cannot write {}", out.display()))?;
    println!("wrote {} ({rows} rows)", out.display());
    Ok(())
}

/// The step-log bench (`benches/logs.rs`) writes `bench-logs.json` beside criterion's results:
/// lines per second to 1, 10 and 100 SSE viewers against `BufReader::lines` on the same child.
fn logs_section(criterion: &Path, md: &mut String) -> anyhow::Result<usize> {
    let path = criterion.with_file_name("bench-logs.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(0);
    };
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("cannot parse {}", path.display()))?;
    let _ = writeln!(
        md,
        "## Step logs: child process → masking → store → SSE viewers\n\n\
         Lines from a child process (`yes | head`) split, masked (one secret), stored and \
         followed over SSE on loopback through the real router, until every viewer has every \
         line. Reference: the same child's output read with `BufReader::lines`. Latency: from \
         the line's timestamp at ingestion to its arrival at a viewer.\n"
    );
    let _ = writeln!(
        md,
        "| viewers | lines | lines/s | reference lines/s | ratio | p99 latency | lines lost |\n|---:|---:|---:|---:|---:|---:|---:|"
    );
    let mut rows = 0;
    for case in json["cases"].as_array().into_iter().flatten() {
        let rate = case["lines_per_s"].as_f64().unwrap_or(0.0);
        let reference = case["reference_lines_per_s"].as_f64().unwrap_or(1.0);
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} | {:.0} | {:.3}× | {:.1} ms | {} |",
            case["viewers"],
            case["lines"],
            rate,
            reference,
            rate / reference,
            case["p99_latency_ms"].as_f64().unwrap_or(0.0),
            case["lines_lost"]
        );
        rows += 1;
    }
    let _ = writeln!(
        md,
        "\nPeak resident memory of the whole process (server, store, 100 viewers' clients): \
         {:.1} MiB (before the cases: {:.1} MiB).\n",
        json["peak_rss_mib_with_100_viewers"]
            .as_f64()
            .unwrap_or(0.0),
        json["rss_mib_before"].as_f64().unwrap_or(0.0)
    );
    Ok(rows)
}

const CLUSTER: &str = "Kubernetes backend on a test cluster vs a minimal kube-rs program";

/// The cluster bench (`benches/cluster.rs`) writes `gantry-bench/cluster.json`: Gantry's
/// Kubernetes backend and a minimal kube-rs program against the same test cluster in the same
/// run, for each number of concurrent jobs. `None` when there is no such file (then the section
/// of the existing document is kept).
fn cluster_section(results: &Path) -> anyhow::Result<Option<String>> {
    let path = results.join("cluster.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(None);
    };
    let json: Value =
        serde_json::from_str(&text).with_context(|| format!("cannot parse {}", path.display()))?;
    Ok(Some(cluster(&json)))
}

fn cluster(json: &Value) -> String {
    let mut md = format!("## {CLUSTER}\n\n");
    let _ = writeln!(
        md,
        "Measured {} on {}; {} (`tests/cluster`: a real kube-apiserver, etcd, scheduler and \
         controller-manager, the kubelets played by kwok).\n",
        json["measured"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map_or_else(
                || "?".into(),
                |t| t.format("%Y-%m-%d %H:%M UTC").to_string()
            ),
        json["machine"].as_str().unwrap_or("?"),
        json["cluster"].as_str().unwrap_or("?"),
    );
    let _ = writeln!(
        md,
        "Gantry: one `KubeBackend` (release build), in a process of its own, starts N jobs \
         through `Backend::start`, 32 at a time, and follows each through its events (the one \
         pod watch, the step's log through `pods/log`) until every job's step runs; then it \
         cancels them all at once, as when a run of that many jobs is cancelled (API Priority \
         and Fairness may answer some of those deletes 429, and Gantry retries them), and waits \
         until every job has ended. Reference, right after against \
         the same cluster: a minimal kube-rs program, in a process of its own, that creates the \
         same rendered Pods 32 at a time, watches them with one `watcher` on the same label \
         selector, and deletes them 32 at a time. A pod is a `clone` init container of 100 ms \
         and one step held running, which writes nothing. API requests are counted from the \
         API server's audit log by user: each side runs as a ServiceAccount of its own, so \
         kwok's, the scheduler's and the controllers' requests are not counted; the list and \
         the watches serve every job at once. Starts per second: jobs whose step was seen \
         running, over the time from the first create to the last step seen running. Memory \
         per running job: VmRSS once every step runs minus VmRSS after the watch's first \
         listing, divided by N (both sides make their jobs after that baseline). Answers \
         `cancelled`: the request was still open when the client hung up — a followed log that \
         had sent nothing yet when its job ended.\n"
    );
    let sizes = json["sizes"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let largest = sizes.iter().filter_map(|s| s["jobs"].as_u64()).max();
    if let (Some(limit), Some(largest)) = (json["inotify_max_user_instances"].as_u64(), largest)
        && largest > limit
    {
        let _ = writeln!(
            md,
            "**Log streams beyond {limit}:** kwok follows a log with one inotify instance per \
             stream, and its nodes are one process: with `fs.inotify.max_user_instances` at \
             {limit} on this machine, opening a step's log beyond about that many at once is \
             answered 400 (`too many open files`), and Gantry retries it with backoff. Those \
             retries are in Gantry's `get pods/log` below; a real node (at most 110 pods by \
             default) stays under the limit.\n"
        );
    }
    for size in sizes {
        cluster_size(&mut md, size);
    }
    md
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn ratio(measured: f64, reference: f64) -> String {
    if reference > 0.0 && measured.is_finite() {
        format!("{:.2}×", measured / reference)
    } else {
        "–".into()
    }
}

/// Requests per job: two decimals, three below 0.1 (a watch shared by 1,000 jobs).
fn per_job(n: f64) -> String {
    if n == 0.0 {
        "0".into()
    } else if n < 0.1 {
        format!("{n:.3}")
    } else {
        format!("{n:.2}")
    }
}

/// One table: the figures of both sides for one number of concurrent jobs.
fn cluster_size(md: &mut String, size: &Value) {
    let n = size["jobs"].as_u64().unwrap_or(0);
    let (g, r) = (&size["gantry"], &size["reference"]);
    let f = |side: &Value, key: &str| side[key].as_f64().unwrap_or(0.0);
    let _ = writeln!(
        md,
        "### {} concurrent jobs\n\n| figure | Gantry | reference | ratio |\n|---|---:|---:|---:|",
        thousands(n)
    );
    let (gs, rs) = (f(g, "starts_per_second"), f(r, "starts_per_second"));
    let _ = writeln!(
        md,
        "| job starts per second | {gs:.1}/s | {rs:.1}/s | {} |",
        ratio(gs, rs)
    );
    let (gr, rr) = (f(g, "requests_per_job"), f(r, "requests_per_job"));
    let _ = writeln!(
        md,
        "| API requests per job | {} | {} | {} |",
        per_job(gr),
        per_job(rr),
        ratio(gr, rr)
    );
    let mut verbs: Vec<&String> = [g, r]
        .iter()
        .filter_map(|s| s["requests"].as_object())
        .flat_map(|m| m.keys())
        .collect();
    verbs.sort();
    verbs.dedup();
    let per =
        |side: &Value, verb: &str| side["requests"][verb].as_f64().unwrap_or(0.0) / n.max(1) as f64;
    for verb in verbs {
        let (gv, rv) = (per(g, verb), per(r, verb));
        let _ = writeln!(
            md,
            "| … {verb} | {} | {} | {} |",
            per_job(gv),
            per_job(rv),
            ratio(gv, rv)
        );
    }
    let (gk, rk) = (f(g, "kib_per_job"), f(r, "kib_per_job"));
    let _ = writeln!(
        md,
        "| resident memory per running job | {gk:.0} KiB | {rk:.0} KiB | {} |",
        ratio(gk, rk)
    );
    let count = |side: &Value, key: &str| side[key].as_u64().unwrap_or(0);
    let _ = writeln!(
        md,
        "\nJobs started / ended: Gantry {} / {}, reference {} / {}, of {}. Answers other than \
         success: Gantry {}; reference {}.\n",
        count(g, "started"),
        count(g, "completed"),
        count(r, "started"),
        count(r, "completed"),
        thousands(n),
        failures(g),
        failures(r)
    );
}

/// "`get pods/log` 400 ×4821, 404 ×686; `delete pods` 429 ×806", or "none".
fn failures(side: &Value) -> String {
    let mut out = Vec::new();
    for (verb, answers) in side["responses"].as_object().into_iter().flatten() {
        let bad: Vec<String> = answers
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(answer, _)| !answer.starts_with('2'))
            .map(|(answer, count)| format!("{answer} ×{count}"))
            .collect();
        if !bad.is_empty() {
            out.push(format!("`{verb}` {}", bad.join(", ")));
        }
    }
    if out.is_empty() {
        "none".into()
    } else {
        out.join("; ")
    }
}

/// `(heading, text)` of each `## ` section of a Markdown document, and what comes before the
/// first one.
fn split_sections(md: &str) -> (&str, Vec<(&str, &str)>) {
    let mut starts: Vec<usize> = md.match_indices("\n## ").map(|(i, _)| i + 1).collect();
    if md.starts_with("## ") {
        starts.insert(0, 0);
    }
    let head = &md[..starts.first().copied().unwrap_or(md.len())];
    let sections = starts
        .iter()
        .enumerate()
        .map(|(k, &start)| {
            let end = starts.get(k + 1).copied().unwrap_or(md.len());
            let text = &md[start..end];
            let heading = text.lines().next().unwrap_or_default();
            (heading, text)
        })
        .collect();
    (head, sections)
}

/// The fresh document, with every section of the previous one that this run did not measure
/// kept (and marked), in the previous document's order; new sections go at the end.
fn keep_unmeasured(previous: &str, fresh: &str) -> String {
    let (head, fresh_sections) = split_sections(fresh);
    let (_, old_sections) = split_sections(previous);
    let mut out = head.to_owned();
    let mut used = vec![false; fresh_sections.len()];
    for (heading, old_text) in &old_sections {
        match fresh_sections.iter().position(|(h, _)| h == heading) {
            Some(i) => {
                out.push_str(fresh_sections[i].1);
                used[i] = true;
            }
            None => {
                let text = old_text.trim_end();
                out.push_str(text);
                if !text.ends_with(MARK_KEPT) {
                    out.push_str("\n\n");
                    out.push_str(MARK_KEPT);
                }
                out.push_str("\n\n");
            }
        }
    }
    for (i, (_, text)) in fresh_sections.iter().enumerate() {
        if !used[i] {
            out.push_str(text);
        }
    }
    out.trim_end().to_owned() + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster_sample() -> Value {
        let side =
            |started: u64, rate: f64, requests: Value, responses: Value, per: f64, kib: f64| {
                serde_json::json!({
                    "jobs": 1000, "started": started, "completed": 1000,
                    "starts_per_second": rate, "requests": requests, "responses": responses,
                    "requests_per_job": per, "kib_per_job": kib,
                })
            };
        serde_json::json!({
            "measured": "2026-11-26T07:00:00Z",
            "machine": "2 cores, AMD EPYC, load average 1.00 at the start",
            "cluster": "kube-apiserver v1.36.3, 3 kwok 0.8.0 nodes",
            "inotify_max_user_instances": 128,
            "sizes": [{
                "jobs": 1000,
                "gantry": side(
                    1000,
                    20.0,
                    serde_json::json!({"create pods": 1000, "get pods/log": 5641, "watch pods": 1}),
                    serde_json::json!({
                        "create pods": {"201": 1000},
                        "get pods/log": {"400": 4821, "404": 686, "cancelled": 134},
                        "watch pods": {"200": 1},
                    }),
                    6.642,
                    135.0,
                ),
                "reference": side(
                    999,
                    19.3,
                    serde_json::json!({"create pods": 1000, "watch pods": 1}),
                    serde_json::json!({"create pods": {"201": 1000}, "watch pods": {"200": 1}}),
                    1.001,
                    43.0,
                ),
            }],
        })
    }

    #[test]
    fn the_cluster_section_pairs_both_sides_per_size() {
        let md = cluster(&cluster_sample());
        assert!(md.starts_with(&format!(
            "## {CLUSTER}\n\nMeasured 2026-11-26 07:00 UTC on 2 cores"
        )));
        assert!(md.contains("kube-apiserver v1.36.3, 3 kwok 0.8.0 nodes"));
        assert!(
            md.contains("### 1,000 concurrent jobs\n\n| figure | Gantry | reference | ratio |")
        );
        assert!(
            md.contains("| job starts per second | 20.0/s | 19.3/s | 1.04× |"),
            "{md}"
        );
        assert!(
            md.contains("| API requests per job | 6.64 | 1.00 | 6.64× |"),
            "{md}"
        );
        assert!(
            md.contains("| … create pods | 1.00 | 1.00 | 1.00× |"),
            "{md}"
        );
        assert!(md.contains("| … get pods/log | 5.64 | 0 | – |"), "{md}");
        assert!(
            md.contains("| … watch pods | 0.001 | 0.001 | 1.00× |"),
            "{md}"
        );
        assert!(
            md.contains("| resident memory per running job | 135 KiB | 43 KiB | 3.14× |"),
            "{md}"
        );
        assert!(
            md.contains("Gantry 1000 / 1000, reference 999 / 1000, of 1,000."),
            "{md}"
        );
        assert!(
            md.contains(
                "Gantry `get pods/log` 400 ×4821, 404 ×686, cancelled ×134; reference none."
            ),
            "{md}"
        );
        // 1,000 jobs over an inotify limit of 128: the refused log opens are explained.
        assert!(md.contains("**Log streams beyond 128:**"), "{md}");

        let mut roomy = cluster_sample();
        roomy["inotify_max_user_instances"] = 8192.into();
        assert!(!cluster(&roomy).contains("Log streams beyond"));
    }

    #[test]
    fn the_cluster_section_is_kept_when_only_other_parts_ran() {
        let dir = tempfile::tempdir().unwrap();
        assert!(cluster_section(dir.path()).unwrap().is_none());
        let previous = format!(
            "# Benchmarks\n\n## Step logs\n\nold logs\n\n{}",
            cluster(&cluster_sample())
        );
        let fresh = "# Benchmarks\n\n## Step logs\n\nnew logs\n";
        let merged = keep_unmeasured(&previous, fresh);
        assert!(merged.contains("new logs") && !merged.contains("old logs"));
        assert!(merged.contains(&format!("## {CLUSTER}")));
        assert!(merged.contains("| job starts per second | 20.0/s | 19.3/s | 1.04× |"));
        assert!(merged.trim_end().ends_with(MARK_KEPT));

        // With the result file there, it is rendered from it.
        std::fs::write(
            dir.path().join("cluster.json"),
            cluster_sample().to_string(),
        )
        .unwrap();
        let section = cluster_section(dir.path()).unwrap().unwrap();
        assert!(section.starts_with(&format!("## {CLUSTER}\n")));
    }

    #[test]
    fn sections_not_measured_are_kept_in_place_and_marked() {
        let previous = "# B\n\nold head\n\n## A\n\nold a\n\n## B\n\nold b\n";
        let fresh = "# B\n\nnew head\n\n## B\n\nnew b\n\n## C\n\nnew c\n";
        let merged = keep_unmeasured(previous, fresh);
        assert_eq!(
            merged,
            format!(
                "# B\n\nnew head\n\n## A\n\nold a\n\n{MARK_KEPT}\n\n## B\n\nnew b\n\n## C\n\nnew c\n"
            )
        );
        // Kept twice: marked once.
        let again = keep_unmeasured(&merged, "# B\n\n## C\n\nnewer c\n");
        assert_eq!(again.matches(MARK_KEPT).count(), 2);
        assert!(again.contains("newer c"));
    }
}
