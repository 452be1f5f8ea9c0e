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
    if rows == 0 {
        bail!("no benchmark results found under {}", criterion.display());
    }
    std::fs::write(&out, md).with_context(|| format!("cannot write {}", out.display()))?;
    println!("wrote {} ({rows} rows)", out.display());
    Ok(())
}
