//! A harness: an engine on a temporary SQLite store with a fake backend and a fake GitHub.

use std::sync::Arc;
use std::time::Duration;

use gantry_core::fake::{FakeBackend, FakeForge, FakeStep};
use gantry_core::{Event, ForgeKind, Job, PullRequest, RepoRef, RunId, State, Trigger};
use gantry_engine::{Engine, EngineConfig, Logs, ReporterConfig, RunRecord};
use gantry_logs::LogStore;
use gantry_store::{OutboxEntry, Store};

pub const LONG: Duration = Duration::from_secs(3600);

/// Short timings so tests are fast.
pub fn config() -> EngineConfig {
    EngineConfig {
        max_running_jobs: 10,
        max_running_per_repo: 10,
        public_url: Some("https://ci.example.invalid".into()),
        tick: Duration::from_millis(10),
        cancel_grace: Duration::from_secs(2),
        reporter: ReporterConfig {
            backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(500),
            max_attempts: 5,
            max_attempts_non_retryable: 3,
            poll: Duration::from_millis(50),
        },
        ..EngineConfig::default()
    }
}

pub struct Harness {
    pub engine: Engine,
    pub backend: FakeBackend,
    pub forge: FakeForge,
    pub dir: Arc<tempfile::TempDir>,
    pub url: String,
}

impl Harness {
    pub async fn new() -> Self {
        Self::with(config()).await
    }

    pub async fn with(config: EngineConfig) -> Self {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let url = format!("sqlite://{}/gantry.db", dir.path().display());
        let h = Self::open(dir, url, FakeForge::new(ForgeKind::Github), config, None).await;
        h.engine.start().await.unwrap();
        h
    }

    /// An engine on `url`, not started.
    pub async fn open(
        dir: Arc<tempfile::TempDir>,
        url: String,
        forge: FakeForge,
        config: EngineConfig,
        reattach: Option<Arc<dyn gantry_engine::Reattach>>,
    ) -> Self {
        let store = Store::open(&url).await.unwrap();
        let backend = FakeBackend::new();
        let logs = Logs::open(dir.path().join("logs")).unwrap();
        let mut engine = Engine::new(
            store,
            Arc::new(backend.clone()),
            vec![Arc::new(forge.clone())],
            Arc::new(logs),
            config,
        );
        if let Some(r) = reattach {
            engine = engine.with_reattach(r);
        }
        Self {
            engine,
            backend,
            forge,
            dir,
            url,
        }
    }

    pub fn logs(&self) -> LogStore {
        LogStore::new(self.dir.path().join("logs"))
    }

    pub fn store(&self) -> &Store {
        self.engine.store()
    }

    pub fn script(&self, job: &str, step: usize, exit_code: i32, duration: Duration) {
        self.backend.script(
            job,
            step,
            FakeStep {
                exit_code,
                lines: vec![format!("{job} step {step}")],
                duration,
                summary: None,
            },
        );
    }

    /// Submits one pipeline as `.gantry.yaml` for a push to `main`; returns the run.
    pub async fn submit(&self, yaml: &str) -> RunId {
        self.submit_for(push("acme/app", "main", &sha()), yaml)
            .await
    }

    pub async fn submit_for(&self, trigger: Trigger, yaml: &str) -> RunId {
        let ids = self
            .engine
            .submit(trigger, vec![(".gantry.yaml".into(), yaml.into())])
            .await
            .unwrap();
        assert_eq!(ids.len(), 1, "one run per pipeline file");
        ids[0]
    }

    pub async fn run(&self, id: RunId) -> RunRecord {
        self.engine.get_run(id).await.unwrap().unwrap()
    }

    /// Waits until `pred` holds for the run.
    pub async fn wait_run(
        &self,
        id: RunId,
        what: &str,
        pred: impl Fn(&RunRecord) -> bool,
    ) -> RunRecord {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let run = self.run(id).await;
            if pred(&run) {
                return run;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("timed out waiting for {what}: {run:#?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn wait_final(&self, id: RunId) -> RunRecord {
        self.wait_run(id, "the run to end", |r| r.run.state.is_final())
            .await
    }

    pub async fn wait_job_state(&self, id: RunId, job: &str, state: State) -> RunRecord {
        self.wait_run(id, &format!("{job} to be {state}"), |r| {
            r.run
                .jobs
                .iter()
                .rev()
                .find(|j| j.name == job)
                .is_some_and(|j| j.state == state)
        })
        .await
    }

    /// Waits until the outbox has nothing pending and returns every entry.
    pub async fn settled_statuses(&self) -> Vec<OutboxEntry> {
        wait_until("the outbox to settle", || async {
            self.store().pending_statuses(10).await.unwrap().is_empty()
        })
        .await;
        self.store().statuses(None).await.unwrap()
    }
}

pub async fn wait_until<F, Fut>(what: &str, cond: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !cond().await {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The latest attempt of the job named `name`.
pub fn job<'a>(run: &'a RunRecord, name: &str) -> &'a Job {
    run.run
        .jobs
        .iter()
        .rev()
        .find(|j| j.name == name)
        .unwrap_or_else(|| panic!("no job {name} in {run:#?}"))
}

pub fn attempts<'a>(run: &'a RunRecord, name: &str) -> Vec<&'a Job> {
    run.run.jobs.iter().filter(|j| j.name == name).collect()
}

pub fn sha() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

pub fn repo(name: &str) -> RepoRef {
    RepoRef {
        forge: ForgeKind::Github,
        full_name: name.into(),
        clone_url: format!("https://example.invalid/{name}.git"),
        web_url: None,
        default_branch: Some("main".into()),
    }
}

pub fn push(repo_name: &str, branch: &str, sha: &str) -> Trigger {
    Trigger::new(
        Event::Push,
        repo(repo_name),
        format!("refs/heads/{branch}"),
        sha,
    )
}

pub fn pull_request(number: u64, sha: &str) -> Trigger {
    let mut t = Trigger::new(
        Event::PullRequest,
        repo("acme/app"),
        format!("refs/pull/{number}/head"),
        sha,
    );
    t.branch = Some(format!("feature-{number}"));
    t.pull_request = Some(PullRequest {
        number,
        head_ref: format!("feature-{number}"),
        base_ref: "main".into(),
        from_fork: false,
        title: None,
    });
    t
}

/// A pipeline of single-step jobs: `(name, needs)`.
pub fn pipeline(jobs: &[(&str, &[&str])]) -> String {
    let mut out = String::from("on: { push: {}, pull_request: {}, manual: {} }\njobs:\n");
    for (name, needs) in jobs {
        out.push_str(&format!("  {name}:\n"));
        if !needs.is_empty() {
            out.push_str(&format!("    needs: [{}]\n", needs.join(", ")));
        }
        out.push_str("    steps:\n      - run: echo hi\n");
    }
    out
}

/// A new, empty database on the test PostgreSQL server (`GANTRY_TEST_DATABASE_URL`; `./dev test`
/// starts one). Fails, never skips, without one.
pub async fn postgres_url() -> String {
    gantry_store::testing::fresh_postgres_database().await
}
