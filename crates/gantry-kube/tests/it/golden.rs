//! The rendered Pods of every example pipeline, pinned in `tests/golden/<pipeline>.yaml`, and
//! each checked against the Kubernetes 1.36 OpenAPI schema by `kubernetes-validate --strict`.
//!
//! After an intended change: `GANTRY_BLESS=1 cargo test -p gantry-kube --test it golden`.

use std::path::{Path, PathBuf};
use std::process::Command;

use gantry_core::{
    Checkout, Event, ForgeKind, JobId, JobRequest, RepoRef, RunId, Toleration, Trigger,
};
use gantry_kube::{ImageMirror, KubeConfig, Manifest, RenderOptions, SecretGrant, SecretGrants};
use gantry_pipeline::PlanContext;
use uuid::Uuid;

pub const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn examples() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("pipelines"))
        .expect("pipelines/ exists")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

pub fn repo() -> RepoRef {
    RepoRef {
        forge: ForgeKind::Github,
        full_name: "acme/app".into(),
        clone_url: "https://git.example.com/acme/app.git".into(),
        web_url: None,
        default_branch: Some("main".into()),
    }
}

/// The configuration the goldens are rendered with: the grants the examples ask for.
pub fn config() -> KubeConfig {
    let grant = |secret: &str, branches: &[&str]| SecretGrant {
        secret: secret.into(),
        repos: vec!["acme/*".into()],
        branches: branches.iter().map(|b| (*b).to_owned()).collect(),
        pull_requests: false,
    };
    KubeConfig {
        grants: SecretGrants(vec![
            grant("registry-credentials", &[]),
            grant("config-repo-token", &["main"]),
        ]),
        image_pull_secrets: vec!["mirror-pull".into()],
        ..KubeConfig::default()
    }
}

/// Every job of a pipeline as the engine would hand it over, with fixed ids.
pub fn requests(source: &str, file: &str) -> Vec<(String, Result<JobRequest, String>)> {
    let trigger = Trigger::new(Event::Push, repo(), "refs/heads/main", SHA);
    let run_id = RunId(Uuid::from_u128(0x5eed));
    let pipeline = gantry_pipeline::parse(file, source).expect("examples are valid");
    let ctx = PlanContext {
        trigger: &trigger,
        run_id,
        file,
        run_url: Some("https://gantry.example.com/runs/00000000-0000-0000-0000-000000005eed"),
    };
    let plan = gantry_pipeline::plan(&pipeline, &ctx);
    plan.jobs
        .into_iter()
        .enumerate()
        .map(|(i, job)| {
            let mut spec = job.spec;
            // The engine gives a job without a timeout the default at planning.
            spec.timeout
                .get_or_insert(gantry_engine::DEFAULT_JOB_TIMEOUT);
            let request = match job.skipped {
                Some(reason) => Err(reason),
                None => Ok(JobRequest {
                    run_id,
                    job_id: JobId(Uuid::from_u128(0x100 + i as u128)),
                    attempt: 1,
                    checkout: Checkout {
                        repo: trigger.repo.clone(),
                        git_ref: trigger.git_ref.clone(),
                        sha: trigger.sha.clone(),
                    },
                    pull_request: None,
                    spec,
                    secret_values: Default::default(),
                }),
            };
            (job.name, request)
        })
        .collect()
}

fn manifest(path: &Path) -> String {
    manifest_with(path, &config())
}

fn manifest_with(path: &Path, config: &KubeConfig) -> String {
    let source = std::fs::read_to_string(path).unwrap();
    let file = path.file_name().unwrap().to_string_lossy().into_owned();
    let options = RenderOptions {
        origin: gantry_kube::PullRequestOrigin::None,
        clone_credentials: true,
    };
    let mut manifest = Manifest::new();
    for (name, request) in requests(&source, &file) {
        match request {
            Ok(job) => {
                let rendered = gantry_kube::render(&job, config, &options)
                    .unwrap_or_else(|e| panic!("{file}: job {name}: {e}"));
                manifest.job(&name, &rendered);
            }
            Err(reason) => manifest.skipped(&name, &reason),
        }
    }
    manifest.into_string()
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

#[test]
fn rendered_pods_match_the_goldens() {
    let bless = std::env::var_os("GANTRY_BLESS").is_some();
    let mut stale = Vec::new();
    for example in examples() {
        let golden = golden_dir().join(example.file_name().unwrap());
        let text = manifest(&example);
        if bless {
            std::fs::write(&golden, &text).unwrap();
        } else if std::fs::read_to_string(&golden).ok().as_deref() != Some(text.as_str()) {
            stale.push(golden.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "rendered pods differ from the goldens {stale:?}; if the change is intended, bless them:\n    GANTRY_BLESS=1 cargo test -p gantry-kube --test it golden\nand review the diff"
    );
}

/// The configuration of an air-gapped cluster with a dedicated, tainted CI node pool: every
/// image from a mirror, every pod on the pool.
pub fn air_gapped() -> KubeConfig {
    let mirror = |from: &str, to: &str| ImageMirror {
        from: from.into(),
        to: to.into(),
    };
    KubeConfig {
        image_mirrors: vec![
            mirror("docker.io/library/", "registry.internal/hub/library/"),
            mirror("docker.io/", "registry.internal/hub/"),
            mirror("ghcr.io/", "registry.internal/ghcr/"),
        ],
        node_selector: [("gantry.dev/ci-pool".to_owned(), "true".to_owned())].into(),
        tolerations: vec![Toleration {
            key: Some("gantry.dev/ci-pool".into()),
            operator: Some("Equal".into()),
            value: Some("true".into()),
            effect: Some("NoSchedule".into()),
        }],
        ..config()
    }
}

/// A pipeline with a service, a job image, Kaniko and the gitops helper, rendered for
/// [`air_gapped`]: pinned in `tests/golden/air-gapped.yaml` (validated with the others), and
/// every container's image comes from the mirror.
#[test]
fn an_air_gapped_configuration_mirrors_every_image_and_tolerates_the_pool() {
    let example = root().join("pipelines/gitops-kustomize.yaml");
    let text = manifest_with(&example, &air_gapped());
    let golden = golden_dir().join("air-gapped.yaml");
    if std::env::var_os("GANTRY_BLESS").is_some() {
        std::fs::write(&golden, &text).unwrap();
    }
    assert!(
        std::fs::read_to_string(&golden).ok().as_deref() == Some(text.as_str()),
        "{} is stale; if the change is intended, bless it:\n    GANTRY_BLESS=1 cargo test -p gantry-kube --test it golden\nand review the diff",
        golden.display()
    );
    let images: Vec<&str> = text
        .lines()
        .map(|l| l.trim_start().trim_start_matches("- "))
        .filter_map(|l| l.strip_prefix("image: "))
        .collect();
    assert!(images.len() >= 6, "{images:?}");
    for image in &images {
        assert!(image.starts_with("registry.internal/"), "{image}");
    }
    for expected in [
        "registry.internal/hub/library/rust:1.95",
        "registry.internal/hub/library/postgres:16",
        "registry.internal/hub/alpine/git:2.49.1",
        "registry.internal/ghcr/osscontainertools/kaniko:v1.26.0",
        "registry.internal/ghcr/gantry-ci/gitops-helper:0.1.0",
    ] {
        assert!(images.contains(&expected), "{expected} not in {images:?}");
    }
    // Every pod tolerates the pool's taint once, before any toleration of the job's own.
    let pods = text.matches("\nkind: Pod").count();
    assert_eq!(text.matches("key: gantry.dev/ci-pool").count(), pods);
}

/// The command CI runs to install the validator.
const INSTALL: &str = "pip install 'kubernetes-validate==1.*'";

#[test]
fn goldens_are_valid_kubernetes_1_36_pods() {
    let probe = Command::new("kubernetes-validate")
        .arg("--version")
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        panic!(
            "kubernetes-validate is not installed; the golden Pods must be validated against the Kubernetes 1.36 schema. Install it with:\n    {INSTALL}"
        );
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(golden_dir())
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no goldens in {}",
        golden_dir().display()
    );
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "--kubernetes-version", "1.36.0"])
        .args(&files)
        .output()
        .expect("kubernetes-validate runs");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "kubernetes-validate failed:\n{report}"
    );
    assert!(
        !report.contains("ERROR") && !report.contains("WARN"),
        "kubernetes-validate reported problems:\n{report}"
    );
}

/// Under `restricted` a step runs as `restricted_uid`, unknown to the image, so its HOME would be
/// `/` (not writable): `go test` of pipelines/go-test.yaml failed on the real node ("failed to
/// initialize build cache at /.cache/go-build"). Each `run` step gets HOME=/tmp, unless the
/// pipeline sets HOME; under `baseline` the image's own HOME stays.
#[test]
fn restricted_run_steps_get_a_writable_home_unless_the_pipeline_sets_one() {
    let homes = |source: &str, security: gantry_kube::SecurityLevel| -> Vec<Option<String>> {
        let config = KubeConfig {
            security,
            ..config()
        };
        let options = RenderOptions {
            origin: gantry_kube::PullRequestOrigin::None,
            clone_credentials: true,
        };
        let mut homes = Vec::new();
        for (name, request) in requests(source, "ci.yaml") {
            let job = request.unwrap_or_else(|e| panic!("{name}: {e}"));
            let rendered = gantry_kube::render(&job, &config, &options).unwrap();
            let spec = rendered.pod.spec.unwrap();
            for c in spec
                .init_containers
                .unwrap_or_default()
                .into_iter()
                .chain(spec.containers)
            {
                if c.name.starts_with("step-") {
                    homes.push(
                        c.env
                            .unwrap_or_default()
                            .into_iter()
                            .find(|e| e.name == "HOME")
                            .and_then(|e| e.value),
                    );
                }
            }
        }
        homes
    };
    let go = std::fs::read_to_string(root().join("pipelines/go-test.yaml")).unwrap();
    let tmp = Some("/tmp".to_owned());
    assert_eq!(
        homes(&go, gantry_kube::SecurityLevel::Restricted),
        [tmp.clone(), tmp]
    );
    assert_eq!(
        homes(&go, gantry_kube::SecurityLevel::Baseline),
        [None, None]
    );
    let own = "jobs:\n  a:\n    image: golang:1.24\n    env: { HOME: /cache }\n    steps:\n      - run: go test ./...\n      - run: go vet ./...\n        env: { HOME: /elsewhere }\n";
    assert_eq!(
        homes(own, gantry_kube::SecurityLevel::Restricted),
        [Some("/cache".to_owned()), Some("/elsewhere".to_owned())]
    );
}
