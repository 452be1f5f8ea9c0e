//! `gantry render`: the exact Pods the Kubernetes backend would create for a pipeline file, one
//! YAML document per job, with no cluster.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use gantry_core::{Checkout, Event, ForgeKind, JobId, JobRequest, RepoRef, RunId, Trigger};
use gantry_kube::{KubeConfig, Manifest, PullRequestOrigin, RenderOptions};
use gantry_pipeline::PlanContext;

#[derive(Debug, Args)]
pub struct RenderArgs {
    /// The pipeline file.
    pub file: PathBuf,
    /// The event to render for; decides `when` rules and which secrets are granted.
    #[arg(long, value_enum, default_value_t = RenderEvent::Push, env = "GANTRY_RENDER_EVENT")]
    pub event: RenderEvent,
    /// The full ref (`refs/heads/main`, `refs/tags/v1.0`, `refs/pull/7/head`).
    #[arg(
        long = "ref",
        default_value = "refs/heads/main",
        env = "GANTRY_RENDER_REF"
    )]
    pub git_ref: String,
    /// The commit.
    #[arg(
        long,
        default_value = "0000000000000000000000000000000000000000",
        env = "GANTRY_RENDER_SHA"
    )]
    pub sha: String,
    /// The repository, `owner/name` (grants are matched against it).
    #[arg(long, default_value = "example/app", env = "GANTRY_RENDER_REPO")]
    pub repo: String,
    /// The clone URL. Default: `https://example.com/<repo>.git`.
    #[arg(long, env = "GANTRY_RENDER_CLONE_URL")]
    pub clone_url: Option<String>,
    /// The Kubernetes backend's configuration (TOML: namespace, images, grants, security, …).
    /// Default: the built-in defaults, which grant no secrets.
    #[arg(long, env = "GANTRY_RENDER_KUBE_CONFIG")]
    pub kube_config: Option<PathBuf>,
    /// A pull request from a branch of the same repository (by default every pull request is
    /// treated as one from a fork: no secrets).
    #[arg(long, env = "GANTRY_RENDER_SAME_REPO_PR")]
    pub same_repo_pr: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RenderEvent {
    Push,
    PullRequest,
    Tag,
    Manual,
}

/// Prints the manifests. Ids are fixed (the run `00000000-…-0001`, jobs numbered from
/// `…-0100` in plan order) so that the output is reproducible.
pub fn render(args: RenderArgs) -> anyhow::Result<ExitCode> {
    let name = args.file.display().to_string();
    let source =
        std::fs::read_to_string(&args.file).with_context(|| format!("cannot read {name}"))?;
    let pipeline = match gantry_pipeline::parse(&name, &source) {
        Ok(p) => p,
        Err(diagnostics) => {
            for d in &diagnostics.0 {
                super::show_diagnostic(d, &source);
            }
            return Ok(ExitCode::FAILURE);
        }
    };
    let config: KubeConfig = match &args.kube_config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            toml::from_str(&text).with_context(|| format!("in {}", path.display()))?
        }
        None => KubeConfig::default(),
    };
    let event = match args.event {
        RenderEvent::Push => Event::Push,
        RenderEvent::PullRequest => Event::PullRequest,
        RenderEvent::Tag => Event::Tag,
        RenderEvent::Manual => Event::Manual,
    };
    if args.sha.len() != 40 || !args.sha.chars().all(|c| c.is_ascii_hexdigit()) {
        bail!("--sha must be a full 40-character commit id");
    }
    let repo = RepoRef {
        forge: ForgeKind::Github,
        full_name: args.repo.clone(),
        clone_url: args
            .clone_url
            .clone()
            .unwrap_or_else(|| format!("https://example.com/{}.git", args.repo)),
        web_url: None,
        default_branch: Some("main".into()),
    };
    let trigger = Trigger::new(event, repo, args.git_ref.clone(), args.sha.clone());
    let run_id = RunId(uuid_from(1));
    let ctx = PlanContext {
        trigger: &trigger,
        run_id,
        file: &name,
        run_url: None,
    };
    let plan = gantry_pipeline::plan(&pipeline, &ctx);
    let origin = if event == Event::PullRequest || trigger.git_ref.starts_with("refs/pull/") {
        if args.same_repo_pr {
            PullRequestOrigin::SameRepo
        } else {
            PullRequestOrigin::Fork
        }
    } else {
        PullRequestOrigin::None
    };
    let options = RenderOptions {
        origin,
        clone_credentials: true,
    };
    let mut manifest = Manifest::new();
    for (i, job) in plan.jobs.into_iter().enumerate() {
        if let Some(reason) = &job.skipped {
            manifest.skipped(&job.name, reason);
            continue;
        }
        let mut spec = job.spec;
        // The default `gantry serve` gives a job without a timeout (unless configured otherwise).
        spec.timeout
            .get_or_insert(gantry_engine::DEFAULT_JOB_TIMEOUT);
        let request = JobRequest {
            run_id,
            job_id: JobId(uuid_from(0x100 + i as u128)),
            attempt: 1,
            checkout: Checkout {
                repo: trigger.repo.clone(),
                git_ref: trigger.git_ref.clone(),
                sha: trigger.sha.clone(),
            },
            pull_request: None,
            spec,
            secret_values: Default::default(),
        };
        let rendered = gantry_kube::render(&request, &config, &options)
            .with_context(|| format!("job {:?}", job.name))?;
        manifest.job(&job.name, &rendered);
    }
    print!("{}", manifest.into_string());
    Ok(ExitCode::SUCCESS)
}

fn uuid_from(n: u128) -> uuid::Uuid {
    uuid::Uuid::from_u128(n)
}
