//! Real git repositories in temporary directories, job requests, and reading events.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use gantry_core::{
    Backend, Checkout, ForgeKind, JobEvent, JobEventKind, JobId, JobRequest, JobSpec, LogLine,
    RepoRef, RunId, State, StatusCondition, StepKind, StepOutcome, StepSpec, Stream,
};
use gantry_local::{LocalBackend, LocalConfig};
use tempfile::TempDir;
use tokio::sync::mpsc;

/// Runs git in `dir` with a fixed identity and no user configuration, returning its stdout.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(["-c", "user.name=Test", "-c", "user.email=test@example.com"])
        .args([
            "-c",
            "init.defaultBranch=main",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A repository with a working tree.
pub struct Repo {
    pub dir: TempDir,
}

impl Repo {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        git(dir.path(), &["init", "-q"]);
        Self { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn url(&self) -> String {
        self.path().to_str().unwrap().to_owned()
    }

    /// Writes files and commits them; returns the new commit's sha.
    pub fn commit(&self, files: &[(&str, &str)], message: &str) -> String {
        for (name, contents) in files {
            let path = self.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, contents).unwrap();
        }
        git(self.path(), &["add", "-A"]);
        git(
            self.path(),
            &["commit", "-q", "--allow-empty", "-m", message],
        );
        git(self.path(), &["rev-parse", "HEAD"])
    }
}

/// A repository with one commit, for jobs that do not care what they check out.
pub fn any_repo() -> (Repo, String) {
    let repo = Repo::new();
    let sha = repo.commit(&[("README", "hello\n")], "initial");
    (repo, sha)
}

pub fn run(name: &str, script: &str) -> StepSpec {
    step(
        name,
        StepKind::Run {
            script: script.into(),
        },
    )
}

pub fn step(name: &str, kind: StepKind) -> StepSpec {
    StepSpec {
        name: name.into(),
        kind,
        timeout: None,
        env: BTreeMap::new(),
        run_if: StatusCondition::Success,
        allow_failure: false,
    }
}

pub fn request(url: &str, sha: &str, steps: Vec<StepSpec>) -> JobRequest {
    JobRequest {
        run_id: RunId::new(),
        job_id: JobId::new(),
        attempt: 1,
        checkout: Checkout {
            repo: RepoRef {
                forge: ForgeKind::Local,
                full_name: "test/app".into(),
                clone_url: url.into(),
                web_url: None,
                default_branch: Some("main".into()),
            },
            git_ref: "refs/heads/main".into(),
            sha: sha.into(),
        },
        pull_request: None,
        spec: JobSpec {
            name: "test".into(),
            steps,
            ..JobSpec::default()
        },
        secret_values: BTreeMap::new(),
    }
}

/// A backend whose workspaces go into a directory the test can inspect.
pub fn backend() -> (LocalBackend, TempDir) {
    let root = tempfile::tempdir().unwrap();
    let backend = LocalBackend::new(LocalConfig {
        work_root: Some(root.path().to_path_buf()),
        ..LocalConfig::default()
    });
    (backend, root)
}

const JOB_LIMIT: Duration = Duration::from_secs(30);

/// Starts a job and collects its events up to and including `Finished`.
pub async fn run_job(backend: &LocalBackend, job: JobRequest) -> Events {
    let (tx, rx) = mpsc::channel(16);
    backend.start(job, tx).await.unwrap();
    collect(rx).await
}

pub async fn collect(mut rx: mpsc::Receiver<JobEvent>) -> Events {
    let mut events = Vec::new();
    tokio::time::timeout(JOB_LIMIT, async {
        while let Some(event) = rx.recv().await {
            let last = matches!(event.kind, JobEventKind::Finished { .. });
            events.push(event.kind);
            if last {
                break;
            }
        }
    })
    .await
    .expect("the job finishes");
    Events(events)
}

/// Everything a job attempt reported.
#[derive(Debug)]
pub struct Events(pub Vec<JobEventKind>);

impl Events {
    pub fn finished(&self) -> (State, Option<String>) {
        match self.0.last() {
            Some(JobEventKind::Finished { state, reason }) => (*state, reason.clone()),
            other => panic!("last event is not Finished: {other:?}"),
        }
    }

    pub fn outcome(&self, step: usize) -> StepOutcome {
        self.0
            .iter()
            .find_map(|e| match e {
                JobEventKind::StepFinished { step: s, outcome } if *s == step => {
                    Some(outcome.clone())
                }
                _ => None,
            })
            .unwrap_or_else(|| panic!("step {step} did not finish: {:#?}", self.0))
    }

    pub fn states(&self) -> Vec<State> {
        self.0
            .iter()
            .filter_map(|e| match e {
                JobEventKind::StepFinished { outcome, .. } => Some(outcome.state),
                _ => None,
            })
            .collect()
    }

    pub fn started(&self, step: usize) -> bool {
        self.0.contains(&JobEventKind::StepStarted { step })
    }

    pub fn lines(&self, step: usize) -> Vec<LogLine> {
        self.0
            .iter()
            .filter_map(|e| match e {
                JobEventKind::Log(line) if line.step == step => Some(line.clone()),
                _ => None,
            })
            .collect()
    }

    pub fn texts(&self, step: usize, stream: Stream) -> Vec<String> {
        self.lines(step)
            .into_iter()
            .filter(|l| l.stream == stream)
            .map(|l| l.text)
            .collect()
    }

    /// Does a System line of any step contain `text`?
    pub fn says(&self, text: &str) -> bool {
        self.0.iter().any(|e| {
            matches!(e, JobEventKind::Log(line) if line.stream == Stream::System && line.text.contains(text))
        })
    }
}

/// Is the process gone (or a zombie nobody will run again)?
pub fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// Waits up to `limit` for a process to be gone.
pub async fn wait_gone(pid: i32, limit: Duration) -> bool {
    let end = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < end {
        if process_gone(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    process_gone(pid)
}

/// Reads a pid a step wrote, waiting for it to appear.
pub async fn read_pid(path: &Path) -> i32 {
    for _ in 0..200 {
        if let Ok(text) = std::fs::read_to_string(path)
            && let Ok(pid) = text.trim().parse()
        {
            return pid;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no pid in {}", path.display());
}

/// Entries left in a directory.
pub fn entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}
