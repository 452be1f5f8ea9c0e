//! `./dev`, the newcomer's entry point, as a stock Debian machine runs it: with only the system
//! Python, Rust and git on PATH — no `just`, no pip of another Python.

use std::process::Command;

use crate::support::workspace;

/// `./dev` installs `just` itself with cargo (before: with `python3 -m pip`, which Debian's
/// Python refuses, PEP 668 "externally-managed-environment") and lists every recipe with one
/// clean line each (before: the last line of a wrapped comment, "127.0.0.1:8080) receives…", and
/// a `default` recipe).
#[test]
fn dev_bootstraps_without_pip_and_lists_each_recipe_in_one_clean_line() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let cargo_dir = which(&cargo).parent().unwrap().to_owned();
    // Only what a stock Debian has, and Rust.
    let path = format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", cargo_dir.display());
    let out = Command::new(workspace().join("dev"))
        .current_dir(workspace())
        .env("PATH", &path)
        .output()
        .expect("run ./dev");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "./dev failed:\n{stdout}\n{stderr}");
    assert!(!stderr.contains("pip"), "{stderr}");
    let recipes: Vec<&str> = stdout.lines().skip(1).collect();
    assert!(recipes.len() >= 10, "{stdout}");
    let names: Vec<&str> = recipes
        .iter()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for wanted in ["demo", "test"] {
        assert!(names.contains(&wanted), "no {wanted} recipe: {stdout}");
    }
    assert!(!names.contains(&"default"), "{stdout}");
    for line in &recipes {
        let (_, doc) = line
            .split_once(" # ")
            .unwrap_or_else(|| panic!("a recipe without a description: {line:?}"));
        assert!(
            doc.starts_with(|c: char| c.is_ascii_uppercase()),
            "a description that is not a whole line: {line:?}"
        );
    }
}

fn which(program: &str) -> std::path::PathBuf {
    if program.contains('/') {
        return program.into();
    }
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{program} is not on PATH"))
}
