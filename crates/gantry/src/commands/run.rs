use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use gantry_core::{Checkout, Event, ForgeKind, RepoRef, RunId, Secret, Trigger};
use gantry_local::{LocalBackend, LocalConfig};
use gantry_pipeline::{PlanContext, PlannedJob};
use owo_colors::OwoColorize;
use tokio::sync::watch;

use super::{discover_pipelines, display_path};
use crate::git;
use crate::output::{Console, summary};
use crate::walk::{Walk, exit_code};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The pipeline file. Default: the repository's only pipeline (`.gantry.yaml` or
    /// `.gantry/*.yaml`).
    pub file: Option<PathBuf>,
    /// Run only these jobs (a matrix job's name selects all its variants). Repeatable.
    #[arg(
        long = "job",
        value_name = "NAME",
        env = "GANTRY_RUN_JOBS",
        value_delimiter = ','
    )]
    pub jobs: Vec<String>,
    /// The event to run as; decides `when: event` rules.
    #[arg(long, value_enum, default_value_t = EventArg::Push, env = "GANTRY_RUN_EVENT")]
    pub event: EventArg,
    /// The branch to run as. Default: the checked-out branch.
    #[arg(long, env = "GANTRY_RUN_BRANCH", conflicts_with = "tag")]
    pub branch: Option<String>,
    /// Run as a push of this tag.
    #[arg(long, env = "GANTRY_RUN_TAG")]
    pub tag: Option<String>,
    /// The commit to run.
    #[arg(long, default_value = "HEAD", env = "GANTRY_RUN_REV")]
    pub rev: String,
    /// Include uncommitted changes to tracked files (runs a snapshot commit of the working tree).
    #[arg(long, env = "GANTRY_RUN_WORKTREE", conflicts_with = "rev")]
    pub worktree: bool,
    /// The repository. Default: the one holding the current directory.
    #[arg(long, env = "GANTRY_RUN_REPO")]
    pub repo: Option<PathBuf>,
    /// A secret for jobs that ask for it: `NAME=VALUE`, or `NAME` to read it from the environment
    /// variable GANTRY_SECRET_<NAME> (upper case, `-` as `_`). Secrets a job asks for that are not
    /// given here are also looked up there. Repeatable.
    #[arg(
        long = "secret",
        value_name = "NAME[=VALUE]",
        env = "GANTRY_RUN_SECRETS",
        value_delimiter = ','
    )]
    pub secrets: Vec<String>,
    /// Where job workspaces are made. Default: the system's temporary directory.
    #[arg(long, env = "GANTRY_RUN_WORK_DIR")]
    pub work_dir: Option<PathBuf>,
    /// Keep each job's workspace after the run (its path is printed).
    #[arg(long, env = "GANTRY_RUN_KEEP_WORKSPACE")]
    pub keep_workspace: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EventArg {
    Push,
    PullRequest,
    Tag,
    Manual,
}

impl From<EventArg> for Event {
    fn from(e: EventArg) -> Self {
        match e {
            EventArg::Push => Event::Push,
            EventArg::PullRequest => Event::PullRequest,
            EventArg::Tag => Event::Tag,
            EventArg::Manual => Event::Manual,
        }
    }
}

/// `gantry run`: plan the pipeline for this commit and run its jobs as local processes.
pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let cwd = std::env::current_dir()?;
    let root = git::toplevel(args.repo.as_deref().unwrap_or(&cwd))?;
    let file = match &args.file {
        Some(file) => file.clone(),
        None => only_pipeline(&root)?,
    };
    let shown = display_path(&file, &root);
    let source = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
    let source = String::from_utf8_lossy(&source);
    let pipeline = match gantry_pipeline::parse(&shown, &source) {
        Ok(pipeline) => pipeline,
        Err(diagnostics) => {
            for d in &diagnostics.0 {
                super::show_diagnostic(d, &source);
            }
            bail!("{shown} is not a valid pipeline (see above)");
        }
    };

    let sha = if args.worktree {
        match git::snapshot_worktree(&root)? {
            Some(sha) => sha,
            None => git::resolve(&root, "HEAD")?,
        }
    } else {
        git::resolve(&root, &args.rev)?
    };
    if !args.worktree && git::has_uncommitted_changes(&root) {
        eprintln!(
            "note: uncommitted changes are not part of this run (it runs commit {}); use --worktree to include them",
            &sha[..12.min(sha.len())]
        );
    }
    let trigger = trigger(&args, &root, &sha);
    let run_id = RunId::new();
    let mut plan = gantry_pipeline::plan(
        &pipeline,
        &PlanContext {
            trigger: &trigger,
            run_id,
            file: &shown,
            run_url: None,
        },
    );
    // As `gantry serve` plans them with its default: a hung job ends.
    for job in &mut plan.jobs {
        job.spec
            .timeout
            .get_or_insert(gantry_engine::DEFAULT_JOB_TIMEOUT);
    }
    let jobs = select_jobs(plan.jobs, &args.jobs)?;
    let secrets = collect_secrets(&jobs, &args.secrets)?;

    println!(
        "{}",
        format!(
            "gantry run: {shown} at {} ({}), event {}, {} job(s), local backend",
            &sha[..12.min(sha.len())],
            trigger
                .tag
                .as_deref()
                .or(trigger.branch.as_deref())
                .unwrap_or("detached"),
            trigger.event,
            jobs.len()
        )
        .if_supports_color(owo_colors::Stream::Stdout, |s| s.bold())
    );
    if jobs
        .iter()
        .any(|j| j.spec.image.is_some() || !j.spec.services.is_empty())
    {
        println!(
            "note: local runs ignore `image` and `services`: steps run on this machine, without isolation"
        );
    }

    let backend = LocalBackend::new(LocalConfig {
        work_root: args.work_dir.clone(),
        keep_workspaces: args.keep_workspace,
        ..LocalConfig::default()
    });
    let (cancel_tx, cancel_rx) = watch::channel(false);
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\ncancelling… (Ctrl-C again to quit at once)");
            let _ = cancel_tx.send(true);
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        }
    });
    let started = Instant::now();
    let mut walk = Walk {
        backend: Arc::new(backend),
        run_id,
        checkout: Checkout {
            repo: trigger.repo.clone(),
            git_ref: trigger.git_ref.clone(),
            sha: trigger.sha.clone(),
        },
        secrets: &secrets,
        cancel: cancel_rx,
    };
    let results = walk.run(&jobs, &mut Console::new()).await;
    print!("{}", summary(&results, started.elapsed()));
    Ok(ExitCode::from(exit_code(&results)))
}

fn only_pipeline(root: &std::path::Path) -> anyhow::Result<PathBuf> {
    let found = discover_pipelines(root);
    match found.as_slice() {
        [] => bail!(
            "no pipeline in {}: add .gantry.yaml (see docs/pipeline.md) or name a file: gantry run FILE",
            root.display()
        ),
        [one] => Ok(one.clone()),
        many => bail!(
            "this repository has {} pipelines; name one: {}",
            many.len(),
            many.iter()
                .map(|p| format!("gantry run {}", display_path(p, root)))
                .collect::<Vec<_>>()
                .join(" | ")
        ),
    }
}

fn trigger(args: &RunArgs, root: &std::path::Path, sha: &str) -> Trigger {
    let name = root
        .file_name()
        .map_or_else(|| "repo".to_owned(), |n| n.to_string_lossy().into_owned());
    let repo = RepoRef {
        forge: ForgeKind::Local,
        full_name: format!("local/{name}"),
        clone_url: root.display().to_string(),
        web_url: None,
        default_branch: None,
    };
    let (event, git_ref) = match &args.tag {
        Some(tag) => (Event::Tag, format!("refs/tags/{tag}")),
        None => {
            let branch = args
                .branch
                .clone()
                .or_else(|| git::current_branch(root))
                .unwrap_or_else(|| "main".to_owned());
            (Event::from(args.event), format!("refs/heads/{branch}"))
        }
    };
    Trigger::new(event, repo, git_ref, sha)
}

/// The jobs to run: all of them, or those `--job` names (a matrix job's base name selects every
/// variant). Needs outside the selection are dropped: the user asked for just these.
fn select_jobs(jobs: Vec<PlannedJob>, wanted: &[String]) -> anyhow::Result<Vec<PlannedJob>> {
    if wanted.is_empty() {
        return Ok(jobs);
    }
    let base = |name: &str| name.split(" (").next().unwrap_or(name).to_owned();
    let unknown: Vec<&String> = wanted
        .iter()
        .filter(|w| !jobs.iter().any(|j| &j.name == *w || base(&j.name) == **w))
        .collect();
    if !unknown.is_empty() {
        let mut names: Vec<String> = jobs.iter().map(|j| base(&j.name)).collect();
        names.dedup();
        bail!(
            "no job named {}; the pipeline's jobs are: {}",
            unknown
                .iter()
                .map(|u| format!("`{u}`"))
                .collect::<Vec<_>>()
                .join(", "),
            names.join(", ")
        );
    }
    let mut selected: Vec<PlannedJob> = jobs
        .into_iter()
        .filter(|j| wanted.iter().any(|w| *w == j.name || *w == base(&j.name)))
        .collect();
    let names: Vec<String> = selected.iter().map(|j| j.name.clone()).collect();
    for job in &mut selected {
        job.needs.retain(|n| names.contains(n));
    }
    Ok(selected)
}

/// Values for every secret the selected, runnable jobs ask for, by environment variable.
fn collect_secrets(
    jobs: &[PlannedJob],
    given: &[String],
) -> anyhow::Result<BTreeMap<String, Secret>> {
    let env_name = |secret: &str| {
        format!(
            "GANTRY_SECRET_{}",
            secret.to_uppercase().replace(['-', '.'], "_")
        )
    };
    let mut explicit: BTreeMap<String, String> = BTreeMap::new();
    for item in given {
        match item.split_once('=') {
            Some((name, value)) => explicit.insert(name.to_owned(), value.to_owned()),
            None => {
                let var = env_name(item);
                let value = std::env::var(&var).with_context(|| {
                    format!("--secret {item}: the environment variable {var} is not set")
                })?;
                explicit.insert(item.clone(), value)
            }
        };
    }
    let mut values = BTreeMap::new();
    let mut missing = Vec::new();
    for job in jobs.iter().filter(|j| j.skipped.is_none()) {
        for s in &job.spec.secrets {
            let value = explicit
                .get(&s.secret)
                .cloned()
                .or_else(|| std::env::var(env_name(&s.secret)).ok());
            match value {
                Some(v) => {
                    values.insert(s.env.clone(), Secret::new(v));
                }
                None => missing.push(format!(
                    "job `{}` needs secret `{}`: pass --secret {}=… or set {}",
                    job.name,
                    s.secret,
                    s.secret,
                    env_name(&s.secret)
                )),
            }
        }
    }
    if !missing.is_empty() {
        missing.dedup();
        bail!("{}", missing.join("\n"));
    }
    Ok(values)
}
