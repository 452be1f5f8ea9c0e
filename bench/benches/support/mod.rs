//! What the benches on the test cluster's real node share (`realnode.rs`, `delivery.rs`):
//! repositories on the node's git server, a fake GitHub serving their files through the
//! contents API, the release `gantry serve` started with a configuration of the bench's own,
//! signed push webhooks, and a few small helpers. Included by each of them with
//! `#[path = "support/mod.rs"] mod support;` (a bench's dev-dependencies are not the library's).

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::PostParams;
use kube::{Api, Client};
use serde_json::{Value, json};

/// The webhook secret both sides of every bench use.
pub const SECRET: &str = "bench-webhook-secret";
/// A push's `before` when the branch is new.
pub const ZERO: &str = "0000000000000000000000000000000000000000";

/// A variable `tests/cluster/up` exports (or scripts/bench sets) for bench `part`.
pub fn var(part: &str, name: &str) -> anyhow::Result<String> {
    std::env::var(name).with_context(|| {
        format!(
            "{name} is not set: run this bench through scripts/bench (part `{part}`), which \
             starts the test cluster with its real node"
        )
    })
}

pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Unix seconds.
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// An RFC 3339 time of the API as unix seconds.
pub fn rfc3339(v: &Value) -> Option<f64> {
    let t = chrono::DateTime::parse_from_rfc3339(v.as_str()?).ok()?;
    Some(t.timestamp() as f64 + f64::from(t.timestamp_subsec_nanos()) / 1e9)
}

/// Milliseconds from `a` to `b` (unix seconds).
pub fn ms(a: f64, b: f64) -> f64 {
    (b - a) * 1000.0
}

/// Whether a bench binary was started by `cargo bench` to measure (not by `cargo test
/// --benches` or with a filter, which have nothing to do here).
pub fn measuring() -> bool {
    let args: Vec<String> = std::env::args().collect();
    args.iter().any(|a| a == "--bench") || args.len() <= 1
}

// ------------------------------------------------------------------ the repositories

pub fn git(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=Bench",
            "-c",
            "user.email=bench@example.com",
        ])
        .args([
            "-c",
            "commit.gpgsign=false",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .output()?;
    if !out.status.success() {
        bail!("git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A private repository on the node's git server (its directory under `root`) whose `main`
/// has `commits` commits: the first adds `files`, each one (the first too) writes its number
/// to `n.txt`. Its bare directory and the commits, oldest first.
pub fn repository(
    root: &Path,
    name: &str,
    files: &[(&str, String)],
    commits: usize,
) -> anyhow::Result<(PathBuf, Vec<String>)> {
    let bare = root.join(format!("{name}.git"));
    let _ = std::fs::remove_dir_all(&bare);
    std::fs::create_dir_all(&bare)?;
    git(&bare, &["init", "-q", "--bare"])?;
    git(
        &bare,
        &["config", "uploadpack.allowReachableSHA1InWant", "true"],
    )?;
    let work = tempfile::tempdir()?;
    git(work.path(), &["init", "-q"])?;
    for (path, text) in files {
        let file = work.path().join(path);
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(file, text)?;
    }
    let mut shas = Vec::with_capacity(commits);
    for i in 0..commits {
        std::fs::write(work.path().join("n.txt"), format!("{i}\n"))?;
        git(work.path(), &["add", "-A"])?;
        git(work.path(), &["commit", "-q", "-m", &format!("commit {i}")])?;
        shas.push(git(work.path(), &["rev-parse", "HEAD"])?);
    }
    git(
        work.path(),
        &[
            "push",
            "-q",
            bare.to_str().unwrap_or_default(),
            "HEAD:refs/heads/main",
        ],
    )?;
    Ok((bare, shas))
}

// ------------------------------------------------------------------ a fake GitHub

/// `GET /repos/{owner}/{repo}/contents/{path}?ref=SHA` as GitHub documents it, read with git
/// from the bare repository of `owner/repo`; `POST …/statuses/{sha}` answered 201.
pub async fn fake_github(repos: HashMap<String, PathBuf>) -> anyhow::Result<String> {
    use axum::extract::{Path as UrlPath, Query, State};
    use axum::http::StatusCode;
    type Repos = Arc<HashMap<String, PathBuf>>;
    async fn contents(
        State(repos): State<Repos>,
        UrlPath((owner, repo, path)): UrlPath<(String, String, String)>,
        Query(query): Query<HashMap<String, String>>,
    ) -> (StatusCode, axum::Json<Value>) {
        use base64::Engine as _;
        let missing = (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"message": "Not Found"})),
        );
        let Some(dir) = repos.get(&format!("{owner}/{repo}")) else {
            return missing;
        };
        let sha = query.get("ref").cloned().unwrap_or_else(|| "HEAD".into());
        let path = path.trim_matches('/').to_owned();
        let spec = format!("{sha}:{path}");
        let out = tokio::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["cat-file", "blob", &spec])
            .output()
            .await;
        match out {
            Ok(o) if o.status.success() => (
                StatusCode::OK,
                axum::Json(json!({
                    "type": "file", "encoding": "base64",
                    "name": path.rsplit('/').next().unwrap_or(&path), "path": path,
                    "size": o.stdout.len(),
                    "content": base64::engine::general_purpose::STANDARD.encode(&o.stdout),
                })),
            ),
            _ => missing,
        }
    }
    async fn status() -> (StatusCode, axum::Json<Value>) {
        (StatusCode::CREATED, axum::Json(json!({"id": 1})))
    }
    let app = axum::Router::new()
        .route(
            "/repos/{owner}/{repo}/contents/{*path}",
            axum::routing::get(contents),
        )
        .route(
            "/repos/{owner}/{repo}/statuses/{sha}",
            axum::routing::post(status),
        )
        .with_state(Arc::new(repos));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(url)
}

// ------------------------------------------------------------------ gantry serve

/// A running `gantry serve`, stopped when dropped.
pub struct Gantry {
    pub url: String,
    child: Child,
}

impl Drop for Gantry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where and how `gantry serve` runs: the Kubernetes backend with `config` (TOML) as its
/// configuration file, the pipeline read through the fake GitHub at `github` with `token`
/// (which the clone credentials are made of), its own git trusting `ca`. Data and
/// `gantry.log` in `data`.
pub struct Serve<'a> {
    pub bin: &'a Path,
    pub data: &'a Path,
    pub config: &'a str,
    pub github: &'a str,
    pub token: &'a str,
    pub kubeconfig: &'a str,
    pub ca: &'a str,
}

impl Serve<'_> {
    pub fn start(&self) -> anyhow::Result<Gantry> {
        std::fs::create_dir_all(self.data)?;
        let config = self.data.join("gantry.toml");
        std::fs::write(&config, self.config)?;
        let mut cmd = Command::new(self.bin);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("GANTRY_") {
                cmd.env_remove(key);
            }
        }
        let log = std::fs::File::create(self.data.join("gantry.log"))?;
        cmd.arg("serve")
            .env("GANTRY_BACKEND", "kubernetes")
            .env("GANTRY_CONFIG", &config)
            .env("KUBECONFIG", self.kubeconfig)
            .env("GANTRY_LISTEN", "127.0.0.1:0")
            .env("GANTRY_DATA_DIR", self.data)
            .env("GANTRY_GITHUB_WEBHOOK_SECRET", SECRET)
            .env("GANTRY_GITHUB_API_URL", self.github)
            .env("GANTRY_GITHUB_TOKEN", self.token)
            .env("GANTRY_GITHUB_READ_FILES", "api")
            .env("GANTRY_LOG", "warn")
            .env("GIT_SSL_CAINFO", self.ca)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", self.bin.display()))?;
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("Gantry is listening on ") {
                    let _ = tx.send(url.trim().to_owned());
                }
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(60))
            .context("gantry serve did not say where it listens")?;
        Ok(Gantry { url, child })
    }
}

/// A GitHub push of `sha` (after `before`) to `main` of `acme/{name}`.
pub fn push(name: &str, clone_url: &str, before: &str, sha: &str) -> String {
    json!({
        "ref": "refs/heads/main", "before": before, "after": sha,
        "created": false, "deleted": false, "forced": false,
        "commits": [{"id": sha, "message": "change", "added": [], "removed": [], "modified": ["n.txt"]}],
        "head_commit": {"id": sha, "message": "change", "added": [], "removed": [], "modified": ["n.txt"]},
        "repository": {
            "full_name": format!("acme/{name}"), "name": name, "clone_url": clone_url,
            "html_url": format!("https://github.example/acme/{name}"),
            "default_branch": "main", "owner": {"login": "acme"}
        },
        "pusher": {"name": "bench"}, "sender": {"login": "bench"}
    })
    .to_string()
}

/// Sends `body` to `gantry` as the signed push `delivery`; an error unless answered 202.
pub async fn send_push(
    http: &reqwest::Client,
    gantry: &Gantry,
    delivery: &str,
    body: String,
) -> anyhow::Result<()> {
    let signature = format!(
        "sha256={}",
        gantry_forge::hmac_sha256_hex_of(SECRET.as_bytes(), body.as_bytes())
    );
    let answer = http
        .post(format!("{}/hooks/github", gantry.url))
        .header("content-type", "application/json")
        .header("x-github-event", "push")
        .header("x-github-delivery", delivery)
        .header("x-hub-signature-256", signature)
        .body(body)
        .send()
        .await?;
    anyhow::ensure!(
        answer.status().as_u16() == 202,
        "webhook answered {}",
        answer.status()
    );
    Ok(())
}

pub async fn get_json(http: &reqwest::Client, url: &str) -> Option<Value> {
    let r = http.get(url).send().await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.json().await.ok()
}

// ------------------------------------------------------------------ the cluster

/// "kubelet v1.36.3, containerd://2.2.0" of node `node`.
pub async fn node_versions(client: &Client, node: &str) -> String {
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    match nodes.get(node).await {
        Ok(n) => {
            let info = n.status.and_then(|s| s.node_info);
            info.map_or_else(
                || "?".into(),
                |i| {
                    format!(
                        "kubelet {}, {}",
                        i.kubelet_version, i.container_runtime_version
                    )
                },
            )
        }
        Err(_) => "?".into(),
    }
}

/// A namespace of the bench's own (Pod Security `baseline`), once its default ServiceAccount
/// is there.
pub async fn namespace(client: &Client, ns: &str) -> anyhow::Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(ns.to_owned()),
                    labels: Some(BTreeMap::from([(
                        "pod-security.kubernetes.io/enforce".into(),
                        "baseline".into(),
                    )])),
                    ..ObjectMeta::default()
                },
                ..Namespace::default()
            },
        )
        .await?;
    let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(client.clone(), ns);
    for _ in 0..300 {
        if accounts.get_opt("default").await?.is_some() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("namespace {ns} got no default ServiceAccount")
}

/// Where the results go: `gantry-bench/` in the target directory.
pub fn results_dir() -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../target")
            .display()
            .to_string()
    });
    gantry_bench::results_dir(Path::new(&target))
}
