//! `gantry serve`: webhooks in, runs through the engine, statuses out.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Args;
use gantry_core::{Backend, Forge, ForgeKind};
use gantry_engine::{Engine, EngineConfig, Logs, RepoSupersede};
use gantry_forge::{
    GitReader, GiteaClient, GithubApp, GithubAuth, GithubClient, GitlabClient, Token,
    WebhookSecrets,
};
use gantry_local::{LocalBackend, LocalConfig};
use gantry_server::intake::ForgeReads;
use gantry_server::{App, AppState, PipelineSource};

use super::serve_config::{BackendChoice, FileConfig, ForgeFile, ReadFiles};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "GANTRY_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Where Gantry keeps its database (SQLite), logs and caches. Created on first start.
    #[arg(long, env = "GANTRY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// `postgres://…` to use PostgreSQL instead of SQLite in the data directory.
    #[arg(long, env = "GANTRY_DATABASE_URL")]
    pub database_url: Option<String>,
    /// A TOML configuration file (forges, repositories, limits); flags and environment
    /// variables override it.
    #[arg(long, env = "GANTRY_CONFIG")]
    pub config: Option<PathBuf>,
    /// The URL users reach Gantry at; commit statuses link there. Default: http://LISTEN.
    #[arg(long, env = "GANTRY_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Bearer token required by state-changing API calls (cancel, retry). Unset: they are off.
    #[arg(long, env = "GANTRY_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// At most this many jobs run at once.
    #[arg(long, env = "GANTRY_MAX_RUNNING_JOBS")]
    pub max_running_jobs: Option<usize>,
    /// At most this many jobs of one repository run at once.
    #[arg(long, env = "GANTRY_MAX_RUNNING_PER_REPO")]
    pub max_running_per_repo: Option<usize>,
    /// The timeout of a job whose pipeline sets none (`90m`, `1h`, `1h30m`). Default: 1h.
    #[arg(long, env = "GANTRY_DEFAULT_JOB_TIMEOUT", value_parser = gantry_pipeline::parse_duration)]
    pub default_job_timeout: Option<std::time::Duration>,
    /// The most a job or step may ask for: a pipeline asking for more is refused. Default: 24h.
    #[arg(long, env = "GANTRY_MAX_JOB_TIMEOUT", value_parser = gantry_pipeline::parse_duration)]
    pub max_job_timeout: Option<std::time::Duration>,
    /// Pipeline-file reads that planning makes at once, per forge (a slow forge then queues
    /// deliveries rather than being sent more). Default: 16, well under GitHub's 100 concurrent
    /// requests per token.
    #[arg(long, env = "GANTRY_FORGE_READS", value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub forge_reads: Option<u64>,
    /// Reads (the API and the web viewer) need the API token too. Default: public.
    #[arg(long, env = "GANTRY_PRIVATE_READS")]
    pub private_reads: bool,
    /// Delete step logs last written more than this many days ago.
    #[arg(long, env = "GANTRY_LOG_RETENTION_DAYS")]
    pub log_retention_days: Option<u64>,
    /// Then delete the oldest step logs until all fit in this many bytes.
    #[arg(long, env = "GANTRY_LOG_MAX_BYTES")]
    pub log_max_bytes: Option<u64>,
    /// Delete runs (with their jobs, steps, webhook deliveries and commit statuses) that
    /// finished more than this many days ago. Unfinished work is never deleted. Default: keep.
    #[arg(long, env = "GANTRY_RUN_RETENTION_DAYS")]
    pub run_retention_days: Option<u64>,
    /// Keep at most this many finished runs: older ones are deleted as above.
    #[arg(long, env = "GANTRY_RUN_RETENTION_MAX_RUNS", value_parser = clap::value_parser!(u64).range(1..))]
    pub run_retention_max_runs: Option<u64>,
    /// Copy every finished step's log to this directory (e.g. a mounted network volume), and
    /// read from it what retention has deleted locally.
    #[arg(long, env = "GANTRY_LOG_ARCHIVE_DIR")]
    pub log_archive_dir: Option<PathBuf>,
    #[command(flatten)]
    pub log_archive_s3: LogArchiveS3Args,
    /// Where jobs run: `kubernetes` (a Pod per job), `local` (child processes here, no
    /// isolation), or `auto`: Kubernetes when a kubeconfig or in-cluster configuration is found.
    #[arg(long, env = "GANTRY_BACKEND", value_enum)]
    pub backend: Option<BackendChoice>,
    #[command(flatten)]
    pub election: ElectionArgs,
    #[command(flatten)]
    pub github: GithubArgs,
    #[command(flatten)]
    pub gitlab: GitlabArgs,
    #[command(flatten)]
    pub gitea: GiteaArgs,

    /// For Gantry's own tests only: fail on purpose where it says (see docs/testing.md).
    #[arg(long, env = "GANTRY_FAULTS", hide = true)]
    pub faults: Option<String>,
}

/// The log archive in S3 or an S3-compatible object store. Credentials are never flags: they
/// come from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or the platform's: web identity, ECS,
/// EC2), like every other `AWS_*` setting these flags leave unset.
#[derive(Debug, Args)]
pub struct LogArchiveS3Args {
    /// Copy every finished step's log to `s3://BUCKET[/PREFIX]`, and read from it what
    /// retention has deleted locally. Checked at start (an object `PREFIX/.gantry-archive-check`
    /// is written and read back).
    #[arg(
        long,
        env = "GANTRY_LOG_ARCHIVE_URL",
        conflicts_with = "log_archive_dir"
    )]
    pub log_archive_url: Option<String>,
    /// The S3-compatible server (MinIO, Ceph, Garage …), e.g. `https://s3.example.net:9000`.
    /// Default: AWS_ENDPOINT, else AWS.
    #[arg(
        long,
        env = "GANTRY_LOG_ARCHIVE_S3_ENDPOINT",
        requires = "log_archive_url"
    )]
    pub log_archive_s3_endpoint: Option<String>,
    /// The bucket's region. Default: AWS_REGION, else us-east-1.
    #[arg(
        long,
        env = "GANTRY_LOG_ARCHIVE_S3_REGION",
        requires = "log_archive_url"
    )]
    pub log_archive_s3_region: Option<String>,
    /// Allow a plain `http://` endpoint: requests are still signed, but logs travel unencrypted.
    #[arg(long, env = "GANTRY_LOG_ARCHIVE_S3_ALLOW_HTTP")]
    pub log_archive_s3_allow_http: bool,
}

/// Several replicas on one PostgreSQL database: all serve, one runs the engine.
#[derive(Debug, Args)]
pub struct ElectionArgs {
    /// Run the engine only while this replica holds a Kubernetes Lease; every replica serves
    /// webhooks, the API and the viewer. For several replicas on one PostgreSQL database.
    #[arg(long, env = "GANTRY_LEADER_ELECTION")]
    pub leader_election: bool,
    /// The Lease's name.
    #[arg(long, env = "GANTRY_LEADER_ELECTION_LEASE", default_value = "gantry")]
    pub leader_election_lease: String,
    /// The Lease's namespace. Default: the namespace Gantry runs in.
    #[arg(long, env = "GANTRY_LEADER_ELECTION_NAMESPACE")]
    pub leader_election_namespace: Option<String>,
    /// This replica's name in the Lease. Default: the host name (in a pod, the pod's name).
    #[arg(long, env = "GANTRY_LEADER_ELECTION_IDENTITY")]
    pub leader_election_identity: Option<String>,
    /// Seconds a Lease holds without renewal: after the leader stops renewing, another replica
    /// takes over within about this long (renewal and retries scale with it, as in client-go).
    #[arg(
        long,
        env = "GANTRY_LEADER_ELECTION_LEASE_SECONDS",
        default_value_t = 15,
        value_parser = clap::value_parser!(u64).range(2..=3600)
    )]
    pub leader_election_lease_seconds: u64,
}

#[derive(Debug, Args)]
pub struct GithubArgs {
    /// Secret GitHub signs webhooks with (X-Hub-Signature-256).
    #[arg(long, env = "GANTRY_GITHUB_WEBHOOK_SECRET", hide_env_values = true)]
    pub github_webhook_secret: Option<String>,
    /// GitHub's REST API.
    #[arg(long, env = "GANTRY_GITHUB_API_URL")]
    pub github_api_url: Option<String>,
    /// Token for reading pipeline files and reporting commit statuses.
    #[arg(long, env = "GANTRY_GITHUB_TOKEN", hide_env_values = true)]
    pub github_token: Option<String>,
    /// GitHub App id (with --github-app-private-key-file: statuses and check runs as the App).
    #[arg(long, env = "GANTRY_GITHUB_APP_ID")]
    pub github_app_id: Option<u64>,
    /// The GitHub App's private key (PEM).
    #[arg(long, env = "GANTRY_GITHUB_APP_PRIVATE_KEY_FILE")]
    pub github_app_private_key_file: Option<PathBuf>,
    /// How pipeline files are read: through the API (needs a token or App) or git.
    #[arg(long, env = "GANTRY_GITHUB_READ_FILES", value_enum)]
    pub github_read_files: Option<ReadFiles>,
}

#[derive(Debug, Args)]
pub struct GitlabArgs {
    /// The webhook's secret token (sent as X-Gitlab-Token), or its signing token (`whsec_…`:
    /// deliveries signed with webhook-signature, refused beyond 5 minutes of clock skew).
    #[arg(long, env = "GANTRY_GITLAB_WEBHOOK_TOKEN", hide_env_values = true)]
    pub gitlab_webhook_token: Option<String>,
    /// The GitLab instance.
    #[arg(long, env = "GANTRY_GITLAB_URL")]
    pub gitlab_url: Option<String>,
    /// API token for reading pipeline files and reporting statuses.
    #[arg(long, env = "GANTRY_GITLAB_TOKEN", hide_env_values = true)]
    pub gitlab_token: Option<String>,
    /// How pipeline files are read: through the API or git.
    #[arg(long, env = "GANTRY_GITLAB_READ_FILES", value_enum)]
    pub gitlab_read_files: Option<ReadFiles>,
}

#[derive(Debug, Args)]
pub struct GiteaArgs {
    /// Secret Gitea/Forgejo sign webhooks with.
    #[arg(long, env = "GANTRY_GITEA_WEBHOOK_SECRET", hide_env_values = true)]
    pub gitea_webhook_secret: Option<String>,
    /// The Gitea or Forgejo instance.
    #[arg(long, env = "GANTRY_GITEA_URL")]
    pub gitea_url: Option<String>,
    /// API token for reading pipeline files and reporting statuses.
    #[arg(long, env = "GANTRY_GITEA_TOKEN", hide_env_values = true)]
    pub gitea_token: Option<String>,
    /// How pipeline files are read: through the API or git.
    #[arg(long, env = "GANTRY_GITEA_READ_FILES", value_enum)]
    pub gitea_read_files: Option<ReadFiles>,
}

const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
const DEFAULT_GITHUB_API: &str = "https://api.github.com";

/// The forge settings after flags, environment and file are merged.
struct ForgeSettings {
    webhook_secrets: WebhookSecrets,
    url: Option<String>,
    token: Option<String>,
    read_files: Option<ReadFiles>,
}

fn merge_forge(
    file: Option<&ForgeFile>,
    secret: Option<String>,
    url: Option<String>,
    token: Option<String>,
    read_files: Option<ReadFiles>,
) -> ForgeSettings {
    let mut secrets: Vec<String> = Vec::new();
    if let Some(s) = secret {
        secrets.push(s);
    }
    if let Some(f) = file {
        secrets.extend(f.webhook_secrets.iter().cloned());
    }
    ForgeSettings {
        webhook_secrets: WebhookSecrets::global(secrets),
        url: url.or_else(|| file.and_then(|f| f.url.clone())),
        token: token.or_else(|| file.and_then(|f| f.token.clone())),
        read_files: read_files.or_else(|| file.and_then(|f| f.read_files)),
    }
}

pub async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    gantry_forge::install_crypto_provider();
    if let Some(text) = &args.faults {
        let plan = gantry_core::inject::Plan::parse(text)
            .map_err(|e| anyhow::anyhow!("GANTRY_FAULTS: {e}"))?;
        tracing::warn!(
            plan = %text,
            "fault injection is on: this server fails on purpose (GANTRY_FAULTS, for tests only)"
        );
        gantry_core::inject::init(plan).map_err(|e| anyhow::anyhow!(e))?;
    }
    let file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let job_timeouts = job_timeouts(&args, &file)?;
    let listen: SocketAddr = match args.listen.or(file.listen) {
        Some(addr) => addr,
        None => DEFAULT_LISTEN.parse()?,
    };
    let data_dir = args
        .data_dir
        .clone()
        .or_else(|| file.data_dir.clone())
        .unwrap_or_else(|| PathBuf::from("gantry-data"));
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
    let data_dir = data_dir.canonicalize()?;
    let database_url = args
        .database_url
        .clone()
        .or_else(|| file.database_url.clone())
        .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("gantry.db").display()));
    // Bound first, so that with port 0 the links in statuses name the real port.
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let local = listener.local_addr()?;
    let public_url = args
        .public_url
        .clone()
        .or_else(|| file.public_url.clone())
        .unwrap_or_else(|| format!("http://{local}"))
        .trim_end_matches('/')
        .to_owned();

    let store = open_store(&database_url)
        .await
        .with_context(|| format!("cannot open the database {}", redact_url(&database_url)))?;

    let github = merge_forge(
        file.github.as_ref(),
        args.github.github_webhook_secret.clone(),
        args.github.github_api_url.clone(),
        args.github.github_token.clone(),
        args.github.github_read_files,
    );
    let gitlab = merge_forge(
        file.gitlab.as_ref(),
        args.gitlab.gitlab_webhook_token.clone(),
        args.gitlab.gitlab_url.clone(),
        args.gitlab.gitlab_token.clone(),
        args.gitlab.gitlab_read_files,
    );
    let gitea = merge_forge(
        file.gitea.as_ref(),
        args.gitea.gitea_webhook_secret.clone(),
        args.gitea.gitea_url.clone(),
        args.gitea.gitea_token.clone(),
        args.gitea.gitea_read_files,
    );

    // This replica's name in the Lease.
    let identity = args
        .election
        .leader_election_identity
        .clone()
        .unwrap_or_else(host_name);
    // Replicas share the data directory (a ReadWriteMany claim) and plan webhooks at the same
    // time: each keeps a git cache of its own, as git's locks only guard one process's fetches
    // against another's by failing them.
    let git_cache = if args.election.leader_election {
        data_dir.join("git-cache").join(&identity)
    } else {
        data_dir.join("git-cache")
    };
    let git_reader = Arc::new(GitReader::new(git_cache));
    let mut forges: Vec<Arc<dyn Forge>> = Vec::new();
    let mut sources: HashMap<ForgeKind, PipelineSource> = HashMap::new();
    let mut webhook_secrets: HashMap<ForgeKind, WebhookSecrets> = HashMap::new();
    let mut notes: Vec<String> = Vec::new();

    // GitHub: a token, or an App, or neither (then: webhooks and git only, no statuses).
    let app_id = args
        .github
        .github_app_id
        .or(file.github.as_ref().and_then(|g| g.app_id));
    let key_file = args.github.github_app_private_key_file.clone().or_else(|| {
        file.github
            .as_ref()
            .and_then(|g| g.app_private_key_file.clone())
    });
    let github_api = github
        .url
        .clone()
        .unwrap_or_else(|| DEFAULT_GITHUB_API.into());
    let github_auth = match (app_id, key_file, &github.token) {
        (Some(id), Some(key), _) => {
            let pem = std::fs::read_to_string(&key)
                .with_context(|| format!("cannot read the GitHub App key {}", key.display()))?;
            Some(GithubAuth::App(GithubApp::new(id, &pem)?))
        }
        (Some(_), None, _) | (None, Some(_), _) => {
            bail!(
                "a GitHub App needs both GANTRY_GITHUB_APP_ID and GANTRY_GITHUB_APP_PRIVATE_KEY_FILE"
            )
        }
        (None, None, Some(token)) => Some(GithubAuth::Token(Token::new(token.clone()))),
        (None, None, None) => None,
    };
    let github_client: Option<Arc<dyn Forge>> = match github_auth {
        Some(auth) => {
            let is_app = matches!(auth, GithubAuth::App(_));
            let client = GithubClient::new(&github_api, auth)?.with_check_runs(is_app);
            Some(Arc::new(client))
        }
        None => None,
    };
    configure(
        ForgeKind::Github,
        github,
        github_client,
        &git_reader,
        &mut forges,
        &mut sources,
        &mut webhook_secrets,
        &mut notes,
    );
    let gitlab_client: Option<Arc<dyn Forge>> = match (&gitlab.url, &gitlab.token) {
        (Some(url), token) => Some(Arc::new(GitlabClient::new(
            url,
            token.clone().map(Token::new),
        )?)),
        (None, Some(_)) => bail!("GANTRY_GITLAB_TOKEN is set but GANTRY_GITLAB_URL is not"),
        (None, None) => None,
    };
    configure(
        ForgeKind::Gitlab,
        gitlab,
        gitlab_client,
        &git_reader,
        &mut forges,
        &mut sources,
        &mut webhook_secrets,
        &mut notes,
    );
    let gitea_client: Option<Arc<dyn Forge>> = match (&gitea.url, &gitea.token) {
        (Some(url), token) => Some(Arc::new(GiteaClient::new(
            url,
            token.clone().map(Token::new),
        )?)),
        (None, Some(_)) => bail!("GANTRY_GITEA_TOKEN is set but GANTRY_GITEA_URL is not"),
        (None, None) => None,
    };
    configure(
        ForgeKind::Gitea,
        gitea,
        gitea_client,
        &git_reader,
        &mut forges,
        &mut sources,
        &mut webhook_secrets,
        &mut notes,
    );
    for repo in &file.repositories {
        let secrets = webhook_secrets.entry(repo.forge).or_default();
        for secret in &repo.webhook_secrets {
            *secrets = std::mem::take(secrets).with_scoped(repo.name.clone(), secret.clone());
        }
    }

    let mut config = EngineConfig {
        public_url: Some(public_url.clone()),
        ..EngineConfig::default()
    };
    if let Some(n) = args.max_running_jobs.or(file.max_running_jobs) {
        config.max_running_jobs = n.max(1);
    }
    if let Some(n) = args.max_running_per_repo.or(file.max_running_per_repo) {
        config.max_running_per_repo = n.max(1);
    }
    config.job_timeouts = job_timeouts;
    for repo in &file.repositories {
        if repo.cancel_superseded.is_some() || repo.cancel_superseded_default_branch.is_some() {
            config.supersede.repos.insert(
                repo.name.clone(),
                RepoSupersede {
                    enabled: repo.cancel_superseded,
                    default_branch: repo.cancel_superseded_default_branch,
                },
            );
        }
    }

    config.secrets = gantry_engine::SecretPolicy {
        grants: gantry_engine::SecretGrants(file.grants.clone()),
        values: None,
    };
    let choice = args.backend.or(file.backend).unwrap_or(BackendChoice::Auto);
    let metrics = gantry_server::Metrics::new();
    // `/readyz` and the webhook route ask whether the data directory can be written.
    metrics.storage().watch(&data_dir);
    let cluster =
        match choice {
            BackendChoice::Local => None,
            BackendChoice::Kubernetes => Some(kube_client(&metrics).await.context(
                "--backend kubernetes: no usable kubeconfig or in-cluster configuration",
            )?),
            BackendChoice::Auto => kube_client(&metrics).await.ok(),
        };
    let mut probes: Vec<Arc<dyn gantry_server::Probe>> = Vec::new();
    let election = if args.election.leader_election {
        let client = match &cluster {
            Some((client, _)) => client.clone(),
            // Leases need a cluster even when jobs run elsewhere.
            None => {
                kube_client(&metrics)
                    .await
                    .context("--leader-election: no usable kubeconfig or in-cluster configuration")?
                    .0
            }
        };
        if database_url.starts_with("sqlite:") {
            notes.push(
                "leader election with SQLite: only one replica can use the data directory; use PostgreSQL for several"
                    .to_owned(),
            );
        }
        let namespace = args
            .election
            .leader_election_namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_owned());
        let lease = gantry_kube::LeaseConfig::new(
            args.election.leader_election_lease.clone(),
            namespace,
            identity,
        )
        .with_duration(std::time::Duration::from_secs(
            args.election.leader_election_lease_seconds,
        ));
        Some(gantry_kube::LeaderElector::new(client, lease))
    } else {
        None
    };
    let mut kube_backend = None;
    let (backend, backend_text): (Arc<dyn Backend>, String) = match cluster {
        Some((client, context)) => {
            probes.push(Arc::new(KubeProbe(client.clone())));
            let mut kube_config = file.kubernetes.clone().unwrap_or_default();
            kube_config.grants = gantry_engine::SecretGrants(file.grants.clone());
            let namespace = kube_config.namespace.clone();
            // The masker hides granted Secrets' values in job logs (the Pod gets them itself).
            config.secrets.values = Some(Arc::new(gantry_kube::KubeSecretValues::new(
                client.clone(),
                &namespace,
            )));
            // Each job clones with a short-lived token from its repository's forge, put in a
            // Secret of its own.
            let credentials = super::serve_credentials::ForgeCloneCredentials::new(&forges);
            let kb =
                gantry_kube::KubeBackend::new(client, kube_config, Some(Arc::new(credentials)));
            kube_backend = Some(kb.clone());
            (
                Arc::new(kb),
                format!("Kubernetes ({context}), a Pod per job in namespace {namespace}"),
            )
        }
        None => {
            std::fs::create_dir_all(data_dir.join("work"))?;
            // Local jobs get granted secrets' values from Gantry's environment.
            config.secrets.values = Some(Arc::new(gantry_engine::EnvSecretValues));
            let local = LocalBackend::new(LocalConfig {
                work_root: Some(data_dir.join("work")),
                ..LocalConfig::default()
            });
            (
                Arc::new(local),
                "local processes on this machine (no isolation; no Kubernetes cluster configured)"
                    .to_owned(),
            )
        }
    };
    let mut logs = Logs::open(data_dir.join("logs")).context("cannot open the log store")?;
    // With leader election the data directory is shared: only the leader writes (and
    // repairs, and applies retention to) step logs; the others read what it writes.
    logs.set_writer(!args.election.leader_election);
    let archive_text = match log_archive(&args).await? {
        Some((archive, text)) => {
            logs = logs.with_archive(archive);
            Some(text)
        }
        None => None,
    };
    if args.run_retention_days.is_some() || args.run_retention_max_runs.is_some() {
        let days = args.run_retention_days;
        let newest = args.run_retention_max_runs;
        tokio::spawn(prune_runs(store.clone(), logs.clone(), days, newest));
    }
    let mut engine = Engine::new(store, backend, forges, Arc::new(logs.clone()), config)
        .with_observer(Arc::new(metrics.clone()));
    if let Some(kb) = &kube_backend {
        engine = engine.with_reattach(Arc::new(kb.clone()));
    }

    let state = AppState(Arc::new(App {
        engine: engine.clone(),
        webhook_secrets,
        sources,
        forge_reads: args
            .forge_reads
            .map_or_else(Default::default, |n| ForgeReads::new(n as usize)),
        git: git_reader.clone(),
        api_token: args.api_token.clone().or_else(|| file.api_token.clone()),
        public_url: public_url.clone(),
        logs: logs.clone(),
        private_reads: args.private_reads,
    }));
    if args.log_retention_days.is_some() || args.log_max_bytes.is_some() {
        let retention = gantry_server::gantry_logs::Retention {
            max_age: args
                .log_retention_days
                .map(|d| std::time::Duration::from_secs(d * 86_400)),
            max_bytes: args.log_max_bytes,
        };
        let stop = engine.shutdown_token();
        let logs = logs.clone();
        tokio::spawn(async move {
            logs.retain(
                retention,
                std::time::Duration::from_secs(600),
                stop.cancelled_owned(),
            )
            .await
        });
    }
    let shutdown = engine.shutdown_token();
    // Set when this replica stopped leading: it exits non-zero so that it restarts as a
    // follower (an engine is never restarted in the same process).
    let lost_lease = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let leadership = match election {
        None => {
            start_engine(&engine, kube_backend.as_ref(), &state).await?;
            metrics.set_engine_active(true);
            None
        }
        Some(elector) => {
            let lease = elector.config().clone();
            notes.push(format!(
                "leader election: the engine runs while {} holds lease {}/{}",
                lease.identity, lease.namespace, lease.name
            ));
            let leadership = elector.spawn();
            let mut changes = leadership.subscribe();
            let (engine, kb, state, metrics, lost, logs) = (
                engine.clone(),
                kube_backend.clone(),
                state.clone(),
                metrics.clone(),
                lost_lease.clone(),
                logs.clone(),
            );
            tokio::spawn(async move {
                if changes.wait_for(|leading| *leading).await.is_err() {
                    return;
                }
                tracing::info!("leading: starting the engine");
                logs.set_writer(true);
                if let Err(err) = start_engine(&engine, kb.as_ref(), &state).await {
                    tracing::error!(error = %format!("{err:#}"), "cannot start the engine");
                    lost.store(true, std::sync::atomic::Ordering::SeqCst);
                    engine.shutdown_token().cancel();
                    return;
                }
                metrics.set_engine_active(true);
                if changes.wait_for(|leading| !*leading).await.is_ok()
                    && !engine.shutdown_token().is_cancelled()
                {
                    tracing::error!("lost the lease: stopping so that another replica leads");
                    metrics.set_engine_active(false);
                    lost.store(true, std::sync::atomic::Ordering::SeqCst);
                    engine.shutdown_token().cancel();
                }
            });
            // Followers serve at once; the scheduler starts when the lease is ours.
            Some(leadership)
        }
    };

    println!("Gantry is listening on http://{local}");
    println!("  webhooks:  {public_url}/hooks/github · /hooks/gitlab · /hooks/gitea");
    println!("  viewer:    {public_url}/runs");
    println!("  API:       {public_url}/api/v1/runs");
    println!(
        "  data:      {} ({})",
        data_dir.display(),
        redact_url(&database_url)
    );
    println!("  backend:   {backend_text}");
    if let Some(archive) = &archive_text {
        println!("  archive:   {archive}");
    }
    for note in &notes {
        println!("  note:      {note}");
    }

    let ops = gantry_server::Ops {
        metrics: metrics.clone(),
        probes,
    };
    let stop = {
        let shutdown = shutdown.clone();
        async move {
            tokio::select! {
                _ = shutdown_signal() => {}
                _ = shutdown.cancelled() => {}
            }
        }
    };
    gantry_server::listen::serve(
        listener,
        gantry_server::app_with(state, ops),
        gantry_server::listen::Limits::default(),
        stop,
    )
    .await
    .context("the HTTP server failed")?;
    eprintln!("gantry: shutting down: finishing writes");
    engine.shutdown().await;
    if let Some(leadership) = leadership {
        // After the engine stopped: only then may another replica start one.
        leadership.stop().await;
    }
    if lost_lease.load(std::sync::atomic::Ordering::SeqCst) {
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// The default and maximum job timeouts from flags, else the file, else the built-in ones.
fn job_timeouts(args: &ServeArgs, file: &FileConfig) -> anyhow::Result<gantry_engine::JobTimeouts> {
    let from_file = |key: &str, value: &Option<String>| -> anyhow::Result<_> {
        value
            .as_deref()
            .map(gantry_pipeline::parse_duration)
            .transpose()
            .map_err(|e| anyhow::anyhow!("{key} in the configuration file: {e}"))
    };
    let default = match args.default_job_timeout {
        Some(d) => d,
        None => from_file("default_job_timeout", &file.default_job_timeout)?
            .unwrap_or(gantry_engine::DEFAULT_JOB_TIMEOUT),
    };
    let max = match args.max_job_timeout {
        Some(d) => d,
        None => from_file("max_job_timeout", &file.max_job_timeout)?
            .unwrap_or(gantry_engine::DEFAULT_MAX_JOB_TIMEOUT),
    };
    gantry_engine::JobTimeouts::new(default, max)
        .map_err(|e| anyhow::anyhow!("{e}: lower --default-job-timeout or raise --max-job-timeout"))
}

/// The log archive the flags ask for, checked, and where it is (for people: no credentials).
async fn log_archive(
    args: &ServeArgs,
) -> anyhow::Result<Option<(Arc<dyn gantry_logs::Archive>, String)>> {
    if let Some(dir) = &args.log_archive_dir {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the log archive {}", dir.display()))?;
        let archive = Arc::new(gantry_logs::DirArchive::new(dir));
        return Ok(Some((archive, dir.display().to_string())));
    }
    let s3 = &args.log_archive_s3;
    let Some(url) = &s3.log_archive_url else {
        return Ok(None);
    };
    if let Some(endpoint) = &s3.log_archive_s3_endpoint
        && endpoint.starts_with("http://")
        && !s3.log_archive_s3_allow_http
    {
        bail!(
            "--log-archive-s3-endpoint {endpoint} is plain http: add --log-archive-s3-allow-http \
             (GANTRY_LOG_ARCHIVE_S3_ALLOW_HTTP=true) to use it; logs then travel unencrypted"
        );
    }
    let archive = gantry_logs::ObjectStoreArchive::s3(
        url,
        s3.log_archive_s3_endpoint.as_deref(),
        s3.log_archive_s3_region.as_deref(),
        s3.log_archive_s3_allow_http,
    )
    .await
    .context("--log-archive-url: the log archive cannot be used")?;
    let text = archive.location().to_owned();
    Ok(Some((Arc::new(archive), text)))
}

/// Opens (and migrates) the store. A database that cannot be reached or written yet (a
/// PostgreSQL server still starting beside Gantry, an I/O error) is waited for with backoff for
/// up to [`gantry_store::START_PATIENCE`], saying so; any other error (a wrong password, a newer
/// schema) fails at once.
async fn open_store(url: &str) -> Result<gantry_store::Store, gantry_store::Error> {
    gantry_store::patiently(
        "open the database",
        || gantry_store::Store::open(url),
        gantry_store::Error::is_unavailable,
    )
    .await
}

/// Starts the scheduler (after recovery), the pod sweeper, and the planning of deliveries a
/// crash left unplanned.
async fn start_engine(
    engine: &Engine,
    kube_backend: Option<&gantry_kube::KubeBackend>,
    state: &AppState,
) -> anyhow::Result<()> {
    engine.start().await.context("cannot start the engine")?;
    if let Some(kb) = kube_backend {
        kb.spawn_sweeper(Arc::new(StoreRegistry(engine.store().clone())));
    }
    let recover = state.clone();
    tokio::spawn(async move { gantry_server::intake::recover(&recover).await });
    Ok(())
}

/// This machine's name (in a pod: the pod's name), or a name of this process.
fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| format!("gantry-{}", uuid::Uuid::new_v4()))
}

/// `/readyz` asks the API server for its version.
struct KubeProbe(kube::Client);

#[async_trait::async_trait]
impl gantry_server::Probe for KubeProbe {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    async fn check(&self) -> Result<(), String> {
        self.0
            .apiserver_version()
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

#[allow(clippy::too_many_arguments)]
fn configure(
    kind: ForgeKind,
    settings: ForgeSettings,
    client: Option<Arc<dyn Forge>>,
    git_reader: &Arc<GitReader>,
    forges: &mut Vec<Arc<dyn Forge>>,
    sources: &mut HashMap<ForgeKind, PipelineSource>,
    webhook_secrets: &mut HashMap<ForgeKind, WebhookSecrets>,
    notes: &mut Vec<String>,
) {
    let has_token = settings.token.is_some() || kind == ForgeKind::Github && client.is_some();
    let read_api = match settings.read_files {
        Some(ReadFiles::Api) => true,
        Some(ReadFiles::Git) => false,
        None => has_token,
    };
    let source = match (&client, read_api) {
        (Some(client), true) => PipelineSource::Api(client.clone()),
        _ => PipelineSource::Git(git_reader.clone()),
    };
    if settings.webhook_secrets.is_empty() {
        notes.push(format!(
            "{kind}: no webhook secret configured: /hooks/{kind} refuses deliveries"
        ));
    }
    match &client {
        Some(client) if has_token => forges.push(client.clone()),
        _ => notes.push(format!(
            "{kind}: no API token: commit statuses are not reported"
        )),
    }
    sources.insert(kind, source);
    webhook_secrets.insert(kind, settings.webhook_secrets);
}

/// The URL without its password, for messages.
fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler cannot fail at start");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Run retention: every 10 s, finished runs older than `days` days, or beyond the
/// `newest` finished ones, are deleted (see `gantry_store::Store::prune`). An error is logged
/// and the next round tries again.
async fn prune_runs(
    store: gantry_store::Store,
    logs: gantry_server::gantry_logs::Logs,
    days: Option<u64>,
    newest: Option<u64>,
) {
    // Often, so that a busy server deletes a few hundred rows at a time, not a day's worth: a
    // round with nothing to delete is one indexed query.
    let mut every = tokio::time::interval(std::time::Duration::from_secs(10));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let keep = gantry_store::KeepRuns {
            finished_after: days.map(|d| {
                // At most a century: a larger number means "keep" and must not overflow.
                gantry_core::now() - std::time::Duration::from_secs(d.min(36_500) * 86_400)
            }),
            newest,
        };
        match store.prune(keep).await {
            Ok(p) => {
                // A job's logs go with its run: no page can reach them any more.
                for job in &p.jobs {
                    if let Err(err) = logs.store().remove_job(*job) {
                        tracing::warn!(%job, %err, "run retention: cannot delete a deleted run's step logs");
                    }
                }
                if p.runs + p.deliveries + p.statuses > 0 {
                    tracing::info!(
                        runs = p.runs,
                        deliveries = p.deliveries,
                        statuses = p.statuses,
                        "run retention: deleted finished work"
                    );
                }
            }
            Err(err) => {
                tracing::warn!(%err, "run retention: cannot delete finished runs; trying again in 10 s")
            }
        }
    }
}

/// A kube client from the in-cluster configuration or the kubeconfig, with a description of
/// where it points.
async fn kube_client(metrics: &gantry_server::Metrics) -> anyhow::Result<(kube::Client, String)> {
    let config = kube::Config::infer().await?;
    let where_ = config.cluster_url.to_string();
    let client = kube::client::ClientBuilder::try_from(config)?
        // Inside the metrics: an injected answer is counted like a real one.
        .with_layer(&gantry_kube::inject::FaultLayer)
        .with_layer(&metrics.kube_layer())
        .build();
    Ok((client, where_))
}

/// The sweeper asks whether a labelled pod belongs to an attempt the store knows.
struct StoreRegistry(gantry_store::Store);

#[async_trait::async_trait]
impl gantry_kube::JobRegistry for StoreRegistry {
    async fn knows(&self, _run: gantry_core::RunId, job: gantry_core::JobId, attempt: u32) -> bool {
        // When the store cannot answer, keep the pod: deleting a live job is worse.
        self.0
            .get_job(job, Some(attempt))
            .await
            .map(|j| j.is_some())
            .unwrap_or(true)
    }
}
