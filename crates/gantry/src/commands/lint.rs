use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use gantry_pipeline::Level;

use super::{discover_pipelines, is_yaml, show_diagnostic};

#[derive(Debug, Args)]
pub struct LintArgs {
    /// Pipeline files or directories of them. Default: the pipelines of the current repository
    /// (`.gantry.yaml`, `.gantry/*.yaml`).
    pub files: Vec<PathBuf>,
    /// Treat warnings as errors.
    #[arg(long, env = "GANTRY_LINT_DENY_WARNINGS")]
    pub deny_warnings: bool,
}

/// `gantry lint`: every diagnostic of every file; exit 1 when any file has an error.
pub fn lint(args: LintArgs) -> anyhow::Result<ExitCode> {
    let files = expand(args.files)?;
    let mut errors = 0usize;
    let mut warnings = 0usize;
    for file in &files {
        let name = file.display().to_string();
        let source = std::fs::read(file).with_context(|| format!("cannot read {name}"))?;
        let source = String::from_utf8_lossy(&source);
        let diagnostics = gantry_pipeline::lint(&name, &source);
        for d in &diagnostics {
            match d.severity {
                Level::Error => errors += 1,
                Level::Warning => warnings += 1,
            }
            show_diagnostic(d, &source);
        }
        if diagnostics.is_empty() {
            println!("{name}: ok");
        }
    }
    let failed = errors > 0 || (args.deny_warnings && warnings > 0);
    if errors + warnings > 0 {
        eprintln!(
            "{} file(s) checked: {errors} error(s), {warnings} warning(s)",
            files.len()
        );
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn expand(paths: Vec<PathBuf>) -> anyhow::Result<Vec<PathBuf>> {
    if paths.is_empty() {
        let cwd = std::env::current_dir()?;
        let root = crate::git::toplevel(&cwd).unwrap_or(cwd);
        let found = discover_pipelines(&root);
        if found.is_empty() {
            bail!(
                "no pipeline found in {}: expected .gantry.yaml or .gantry/*.yaml; or name files: gantry lint FILE…",
                root.display()
            );
        }
        return Ok(found);
    }
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut in_dir: Vec<PathBuf> = std::fs::read_dir(&path)
                .with_context(|| format!("cannot read directory {}", path.display()))?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_file() && is_yaml(p))
                .collect();
            in_dir.sort();
            files.extend(in_dir);
        } else {
            files.push(path);
        }
    }
    Ok(files)
}
