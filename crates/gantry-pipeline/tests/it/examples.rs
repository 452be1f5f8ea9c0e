//! The example pipelines in `pipelines/` are clean: no error, no warning.

use std::path::{Path, PathBuf};

pub fn example_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../pipelines");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("pipelines/ exists")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_example_pipeline_lints_clean() {
    let files = example_files();
    for name in [
        "rust-test.yaml",
        "go-test.yaml",
        "kaniko-trivy.yaml",
        "gitops-kustomize.yaml",
        "matrix.yaml",
        "postgres-service.yaml",
        "cleanup.yaml",
    ] {
        assert!(
            files.iter().any(|f| f.ends_with(name)),
            "pipelines/{name} is missing"
        );
    }
    for file in files {
        let source = std::fs::read_to_string(&file).expect("readable");
        let shown = file.file_name().unwrap().to_string_lossy().into_owned();
        let diagnostics = gantry_pipeline::lint(&shown, &source);
        assert!(
            diagnostics.is_empty(),
            "{shown}:\n{}",
            diagnostics
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        );
        assert!(
            source.starts_with("# yaml-language-server: $schema=../docs/pipeline.schema.json\n"),
            "{shown} has no schema modeline"
        );
        gantry_pipeline::parse(&shown, &source).expect("parses");
    }
}

#[test]
fn the_matrix_example_expands_as_documented() {
    let source = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../pipelines/matrix.yaml"),
    )
    .unwrap();
    let pipeline = gantry_pipeline::parse("matrix.yaml", &source).unwrap();
    let plan = crate::support::plan_for(&pipeline, &crate::support::push("main"));
    let names: Vec<&str> = plan.jobs.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "test (rust=1.94, os=linux)",
            "test (rust=1.95, os=linux)",
            "test (rust=1.95, os=alpine)",
            "test (rust=nightly, os=linux, experimental=true)",
            "report",
        ]
    );
    assert_eq!(plan.jobs[4].needs.len(), 4);
    assert_eq!(plan.jobs[2].spec.image.as_deref(), Some("rust:1.95"));
}

/// The repository's own pipeline (`.gantry.yaml` at the root: Gantry's release) is clean too,
/// and runs for `v*` tags and pushes to main, not for other branches or pull requests.
#[test]
fn the_repositorys_own_release_pipeline_lints_clean() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.gantry.yaml");
    let source = std::fs::read_to_string(&path).expect(".gantry.yaml at the repository root");
    let diagnostics = gantry_pipeline::lint(".gantry.yaml", &source);
    assert!(
        diagnostics.is_empty(),
        "{}",
        diagnostics
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
    let pipeline = gantry_pipeline::parse(".gantry.yaml", &source).expect("parses");
    use crate::support::{pull_request, push, tag};
    assert!(pipeline.triggered_by(&tag("v1.2.0")));
    assert!(pipeline.triggered_by(&push("main")));
    assert!(!pipeline.triggered_by(&push("feature/x")));
    assert!(!pipeline.triggered_by(&pull_request("feature/x", "main", false)));
    let plan = crate::support::plan_for(&pipeline, &tag("v1.2.0"));
    let names: Vec<&str> = plan.jobs.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(names, ["server-image", "helper-image", "publish"]);
    assert!(plan.jobs.iter().all(|j| j.skipped.is_none()));
}
