//! Each example pipeline in pipelines/ that can run without containers, run for real by
//! `gantry run` on a small repository of the kind it is written for.
//!
//! Not run here, and why: `postgres-service.yaml` and `gitops-kustomize.yaml` need service
//! containers, a registry and a remote config repository (the Kubernetes backend's tests cover
//! how they render); `kaniko-trivy.yaml` is run to show it fails clearly without the tools.

use std::path::Path;

use crate::support::{Repo, gantry, pos, run, workspace};

pub(crate) fn example(name: &str) -> String {
    std::fs::read_to_string(workspace().join("pipelines").join(name)).unwrap()
}

/// A Go module with one function and its test, for go-test.yaml.
pub(crate) fn tiny_module(repo: &Repo) {
    repo.write("go.mod", "module example.com/tiny\n\ngo 1.22\n");
    repo.write(
        "tiny.go",
        "package tiny\n\n// Add adds.\nfunc Add(a, b int) int { return a + b }\n",
    );
    repo.write(
        "tiny_test.go",
        "package tiny\n\nimport \"testing\"\n\nfunc TestAdd(t *testing.T) {\n\tif Add(2, 2) != 4 {\n\t\tt.Fatal(\"bad sum\")\n\t}\n}\n",
    );
}

pub(crate) fn tiny_crate(repo: &Repo) {
    repo.write(
        "Cargo.toml",
        "[package]\nname = \"tiny\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[workspace]\n",
    );
    repo.write(
        "src/lib.rs",
        "/// Adds two numbers.\npub fn add(a: i32, b: i32) -> i32 {\n    a + b\n}\n\n#[cfg(test)]\nmod tests {\n    #[test]\n    fn adds() {\n        assert_eq!(super::add(2, 2), 4);\n    }\n}\n",
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(cargo)
        .args(["generate-lockfile", "--offline"])
        .current_dir(repo.path())
        .status()
        .unwrap();
    assert!(status.success());
}

fn run_pipeline(repo: &Repo, args: &[&str]) -> crate::support::Ran {
    let mut all = vec!["run", ".gantry.yaml"];
    all.extend_from_slice(args);
    run(gantry(repo.path(), &all))
}

fn in_order(out: &str, needles: &[&str]) {
    let positions: Vec<usize> = needles.iter().map(|n| pos(out, n)).collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "out of order:\n{out}"
    );
}

#[test]
fn rust_example_formats_lints_and_tests_a_crate() {
    let repo = Repo::new();
    tiny_crate(&repo);
    repo.write(".gantry.yaml", &example("rust-test.yaml"))
        .commit("crate");
    let ran = run_pipeline(&repo, &[]);
    assert_eq!(ran.code, Some(0), "{}", ran.all());
    in_order(
        &ran.stdout,
        &[
            "✔ check formatting",
            "✔ lints",
            "▶ unit tests",
            "test result: ok. 1 passed",
            "✔ unit tests",
            "run succeeded",
        ],
    );
}

#[test]
fn rust_example_fails_on_a_failing_test() {
    let repo = Repo::new();
    tiny_crate(&repo);
    let lib = std::fs::read_to_string(repo.path().join("src/lib.rs")).unwrap();
    repo.write("src/lib.rs", &lib.replace("a + b", "a - b"));
    repo.write(".gantry.yaml", &example("rust-test.yaml"))
        .commit("broken crate");
    let ran = run_pipeline(&repo, &["--job", "test"]);
    assert_eq!(ran.code, Some(101), "cargo test's exit code: {}", ran.all());
    assert!(
        ran.stdout.contains("step `unit tests` exited with 101"),
        "{}",
        ran.all()
    );
}

#[test]
fn go_example_vets_and_tests_a_module() {
    let repo = Repo::new();
    tiny_module(&repo);
    repo.write(".gantry.yaml", &example("go-test.yaml"))
        .commit("module");
    let ran = run_pipeline(&repo, &[]);
    assert_eq!(ran.code, Some(0), "{}", ran.all());
    in_order(
        &ran.stdout,
        &[
            "✔ vet",
            "▶ test",
            "ok  \texample.com/tiny",
            "✔ test",
            "run succeeded",
        ],
    );
}

#[test]
fn matrix_example_runs_every_combination_then_the_report() {
    let repo = Repo::new();
    tiny_crate(&repo);
    repo.write(".gantry.yaml", &example("matrix.yaml"))
        .commit("crate");
    let ran = run_pipeline(&repo, &[]);
    assert_eq!(ran.code, Some(0), "{}", ran.all());
    let out = &ran.stdout;
    for combo in [
        "1.94 on linux",
        "1.95 on linux",
        "1.95 on alpine",
        "nightly on linux",
    ] {
        assert!(
            out.contains(&format!("│ testing with rust {combo}")),
            "{combo}:\n{out}"
        );
    }
    assert!(
        !out.contains("1.94 on alpine"),
        "excluded combination ran:\n{out}"
    );
    in_order(
        out,
        &[
            "nightly on linux",
            "│ all matrix jobs finished",
            "run succeeded",
        ],
    );
}

#[test]
fn cleanup_example_collects_logs_on_failure_and_always_tears_down() {
    let repo = Repo::new();
    let script = |name: &str, body: &str| {
        repo.write(&format!("scripts/{name}"), &format!("#!/bin/sh\n{body}\n"));
        let path = repo.path().join("scripts").join(name);
        make_executable(&path);
    };
    script("e2e-up", "echo environment up");
    script("e2e-test", "echo running e2e; exit 4");
    script("e2e-logs", "echo collected");
    script("e2e-down", "echo environment down");
    repo.write(".gantry.yaml", &example("cleanup.yaml"))
        .commit("scripts");
    let ran = run_pipeline(&repo, &[]);
    assert_eq!(ran.code, Some(4), "{}", ran.all());
    in_order(
        &ran.stdout,
        &[
            "│ environment up",
            "│ running e2e",
            "✘ end-to-end tests — exit code 4",
            "✔ collect logs",
            "│ environment down",
            "run failed",
        ],
    );
}

#[test]
fn kaniko_example_fails_clearly_without_the_tools() {
    let repo = Repo::new();
    repo.write("Dockerfile", "FROM scratch\n");
    repo.write(".gantry.yaml", &example("kaniko-trivy.yaml"))
        .commit("image");
    let mut cmd = gantry(repo.path(), &["run", ".gantry.yaml"]);
    cmd.env("PATH", "/usr/bin:/bin");
    let ran = run(cmd);
    assert_ne!(ran.code, Some(0), "{}", ran.all());
    assert!(ran.stdout.contains("Kubernetes backend"), "{}", ran.all());
    assert!(!ran.stdout.contains("run succeeded"), "{}", ran.all());
}

pub(crate) fn make_executable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut perms = std::fs::metadata(path).unwrap().permissions();
    perms.set_mode(0o755);
    std::fs::set_permissions(path, perms).unwrap();
}
