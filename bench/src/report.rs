//! Turns criterion's estimates from the last `cargo bench` into the table in
//! docs/benchmarks.md. Each row pairs a measured figure with the reference measured in the same
//! run; the ratio is what to compare across machines, not the times.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// (benchmark group prefix, section title, measured id, reference id, reference description)
const SECTIONS: &[(&str, &str, &str, &str, &str)] = &[(
    "pipeline/",
    "Pipeline parse + plan vs plain YAML deserialisation",
    "parse+plan",
    "yaml-reference",
    "the same file deserialised into `serde_json::Value` with serde-saphyr",
)];

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
    let mut groups: Vec<String> = std::fs::read_dir(&criterion)
        .with_context(|| format!("no criterion results in {}", criterion.display()))?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    groups.sort();
    let mut rows = 0;
    for (prefix, title, measured, reference, reference_text) in SECTIONS {
        let _ = writeln!(md, "## {title}\n\nReference: {reference_text}.\n");
        let _ = writeln!(
            md,
            "| case | {measured} | reference | ratio |\n|---|---:|---:|---:|"
        );
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
                md,
                "| {case} | {} | {} | {:.2}× |",
                human(m),
                human(r),
                m / r
            );
            rows += 1;
        }
        md.push('\n');
    }
    rows += logs_section(&criterion, &mut md)?;
    if rows == 0 {
        bail!("no benchmark results found under {}", criterion.display());
    }
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
    let json: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("cannot parse {}", path.display()))?;
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
        json["peak_rss_mib_with_100_viewers"].as_f64().unwrap_or(0.0),
        json["rss_mib_before"].as_f64().unwrap_or(0.0)
    );
    Ok(rows)
}
