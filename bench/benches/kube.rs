//! Rendered pods per second: `gantry_kube::render` of every job of the Kaniko/Trivy example
//! (the largest pods), against `serde_json` serialisation of the same Pods (the least any tool
//! that writes a Pod must do). API requests per job are counted at the mock API server by
//! `cargo test -p gantry-kube --test it requests_per_job_stay_within_the_budget -- --nocapture`
//! (5 jobs × 3 steps: 5 pod creates, 5 secret creates, 5 deletes, 15 log streams, 1 list and 1
//! watch in all).

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use gantry_core::{Checkout, Event, ForgeKind, JobId, JobRequest, RepoRef, RunId, Trigger};
use gantry_kube::{KubeConfig, PullRequestOrigin, RenderOptions};
use gantry_pipeline::PlanContext;

fn jobs() -> Vec<JobRequest> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipelines/kaniko-trivy.yaml");
    let source = std::fs::read_to_string(path).expect("example exists");
    let repo = RepoRef {
        forge: ForgeKind::Github,
        full_name: "acme/app".into(),
        clone_url: "https://git.example.com/acme/app.git".into(),
        web_url: None,
        default_branch: Some("main".into()),
    };
    let sha = "0123456789abcdef0123456789abcdef01234567";
    let trigger = Trigger::new(Event::Push, repo, "refs/heads/main", sha);
    let run_id = RunId::new();
    let pipeline = gantry_pipeline::parse("bench.yaml", &source).expect("valid");
    let ctx = PlanContext {
        trigger: &trigger,
        run_id,
        file: "bench.yaml",
        run_url: None,
    };
    gantry_pipeline::plan(&pipeline, &ctx)
        .jobs
        .into_iter()
        .map(|job| JobRequest {
            run_id,
            job_id: JobId::new(),
            attempt: 1,
            checkout: Checkout {
                repo: trigger.repo.clone(),
                git_ref: trigger.git_ref.clone(),
                sha: trigger.sha.clone(),
            },
            pull_request: None,
            spec: job.spec,
            secret_values: Default::default(),
        })
        .collect()
}

fn kube(c: &mut Criterion) {
    let jobs = jobs();
    let config = KubeConfig::default();
    let options = RenderOptions {
        origin: PullRequestOrigin::None,
        clone_credentials: true,
    };
    let pods: Vec<_> = jobs
        .iter()
        .map(|j| {
            gantry_kube::render(j, &config, &options)
                .expect("renders")
                .pod
        })
        .collect();
    let mut group = c.benchmark_group("kube/render");
    group.bench_function("render", |b| {
        b.iter(|| {
            for job in &jobs {
                black_box(gantry_kube::render(black_box(job), &config, &options).unwrap());
            }
        })
    });
    group.bench_function("json-reference", |b| {
        b.iter(|| {
            for pod in &pods {
                black_box(serde_json::to_vec(black_box(pod)).unwrap());
            }
        })
    });
    group.finish();
}

criterion_group!(benches, kube);
criterion_main!(benches);
