//! Pipeline parse + plan time for each example pipeline, against plain YAML deserialisation of
//! the same file into `serde_json::Value` (the least any YAML-reading tool must do).

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use gantry_core::{Event, ForgeKind, RepoRef, RunId, Trigger};
use gantry_pipeline::PlanContext;

fn examples() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipelines");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("pipelines/ exists")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect()
}

fn trigger() -> Trigger {
    let repo = RepoRef {
        forge: ForgeKind::Github,
        full_name: "acme/app".into(),
        clone_url: "https://git.example.com/acme/app.git".into(),
        web_url: None,
        default_branch: Some("main".into()),
    };
    Trigger::new(
        Event::Push,
        repo,
        "refs/heads/main",
        "0123456789abcdef0123456789abcdef01234567",
    )
}

fn pipeline(c: &mut Criterion) {
    let trigger = trigger();
    let run_id = RunId::new();
    for (name, source) in examples() {
        let mut group = c.benchmark_group(format!("pipeline/{name}"));
        group.bench_function("parse+plan", |b| {
            b.iter(|| {
                let pipeline = gantry_pipeline::parse("bench.yaml", black_box(&source))
                    .expect("example pipelines are valid");
                let ctx = PlanContext {
                    trigger: &trigger,
                    run_id,
                    file: "bench.yaml",
                    run_url: None,
                };
                black_box(gantry_pipeline::plan(&pipeline, &ctx))
            })
        });
        group.bench_function("yaml-reference", |b| {
            b.iter(|| {
                let value: serde_json::Value =
                    serde_saphyr::from_str(black_box(&source)).expect("valid YAML");
                black_box(value)
            })
        });
        group.finish();
    }
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
