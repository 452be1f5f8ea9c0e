//! `gantry render` with a Kubernetes configuration file: image mirrors and tolerations apply to
//! what it prints, as to the pods `gantry serve` creates.

use std::path::PathBuf;
use std::process::Command;

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gantry-render-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn render_applies_image_mirrors_and_tolerations_from_the_kube_config() {
    let dir = scratch("mirrors");
    let pipeline = dir.join("pipeline.yaml");
    std::fs::write(
        &pipeline,
        "jobs:\n  test:\n    image: rust:1.95\n    services:\n      db:\n        image: postgres:16\n    steps:\n      - run: cargo test\n",
    )
    .unwrap();
    let config = dir.join("kube.toml");
    std::fs::write(
        &config,
        r#"
[[tolerations]]
key = "gantry.dev/ci-pool"
operator = "Exists"
effect = "NoSchedule"

[[image_mirrors]]
from = "docker.io/library/"
to = "registry.internal/hub/library/"

[[image_mirrors]]
from = "docker.io/"
to = "registry.internal/other/"
"#,
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .arg("render")
        .arg(&pipeline)
        .arg("--kube-config")
        .arg(&config)
        .output()
        .expect("gantry runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut images: Vec<&str> = text
        .lines()
        .map(|l| l.trim_start().trim_start_matches("- "))
        .filter_map(|l| l.strip_prefix("image: "))
        .collect();
    images.sort_unstable();
    assert_eq!(
        images,
        [
            "registry.internal/hub/library/postgres:16", // the service
            "registry.internal/hub/library/rust:1.95",   // the step
            "registry.internal/other/alpine/git:2.49.1", // the clone (Gantry's `images.clone`)
        ],
        "{text}"
    );
    assert!(
        text.contains("tolerations:\n  - effect: NoSchedule\n    key: gantry.dev/ci-pool\n    operator: Exists\n"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// What `gantry render` shows matches what `gantry serve` creates with its default job timeout.
#[test]
fn render_gives_a_job_without_a_timeout_the_default_deadline() {
    let dir = scratch("timeout");
    let pipeline = dir.join("pipeline.yaml");
    std::fs::write(
        &pipeline,
        "jobs:\n  plain:\n    steps: [{ run: make }]\n  own:\n    timeout: 20m\n    steps: [{ run: make }]\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .arg("render")
        .arg(&pipeline)
        .output()
        .expect("gantry runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let deadlines: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("  activeDeadlineSeconds: "))
        .collect();
    assert_eq!(deadlines, ["3600", "1200"], "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}
