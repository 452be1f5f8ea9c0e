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
