//! Real servers on loopback for the system tests: `git daemon` serving repositories, a fake
//! GitHub API that records commit statuses, and `gantry serve` itself.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path as UrlPath, State};
use serde_json::{Value, json};

use crate::support::{Repo, gantry_bin};

/// A free loopback port (there is a small race between finding and using it; fine for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The `git-daemon` program itself: `git daemon` runs it as a child and a kill of `git` would
/// leave the daemon running (holding its port and every inherited file).
fn git_daemon_program() -> std::path::PathBuf {
    let out = Command::new("git")
        .arg("--exec-path")
        .output()
        .expect("cannot run `git --exec-path` (Debian package git)");
    std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("git-daemon")
}

/// `git daemon` serving bare repositories from a temporary directory over git://.
pub struct GitDaemon {
    pub root: tempfile::TempDir,
    pub port: u16,
    child: Child,
}

impl GitDaemon {
    pub fn start() -> Self {
        let root = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = Command::new(git_daemon_program())
            .args([
                "--reuseaddr",
                "--export-all",
                "--listen=127.0.0.1",
                &format!("--port={port}"),
                &format!("--base-path={}", root.path().display()),
                &root.path().display().to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start `git daemon` (Debian package git)");
        let daemon = GitDaemon { root, port, child };
        wait_for_port(port, "git daemon");
        daemon
    }

    /// Pushes `repo`'s `main` to a bare repository `name` and returns its git:// URL.
    pub fn publish(&self, repo: &Repo, name: &str) -> String {
        let bare = self.root.path().join(name);
        if !bare.exists() {
            let ok = Command::new("git")
                .args(["init", "-q", "--bare"])
                .arg(&bare)
                .status()
                .unwrap()
                .success();
            assert!(ok);
        }
        repo.git(&["push", "-q", "--force", &bare.display().to_string(), "main"]);
        format!("git://127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not start listening on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One commit status as the fake GitHub received it.
#[derive(Clone, Debug)]
pub struct ReceivedStatus {
    pub repo: String,
    pub sha: String,
    pub context: String,
    pub state: String,
    pub target_url: Option<String>,
}

/// A fake GitHub REST API: records `POST /repos/{owner}/{repo}/statuses/{sha}`, and (when
/// started with repositories) answers the contents API from their git repositories.
pub struct FakeGithub {
    pub url: String,
    pub statuses: Arc<Mutex<Vec<ReceivedStatus>>>,
    contents: Arc<Contents>,
    _server: tokio::task::JoinHandle<()>,
}

/// What the contents API serves: repositories by `owner/name`, and errors to answer first.
struct Contents {
    repos: std::collections::HashMap<String, PathBuf>,
    /// The next requests get these answers (status, `Retry-After` seconds) instead, in order.
    failures: Mutex<std::collections::VecDeque<(u16, Option<u64>)>>,
    /// Each answer waits this long first (a slow forge).
    delay: Mutex<Duration>,
    /// Requests being answered now, and the most there ever were at once.
    in_flight: std::sync::atomic::AtomicUsize,
    peak: std::sync::atomic::AtomicUsize,
}

/// Counts a contents request as in flight until it is dropped (answered or abandoned).
struct InFlight<'a>(&'a Contents);

impl<'a> InFlight<'a> {
    fn enter(contents: &'a Contents) -> Self {
        use std::sync::atomic::Ordering::SeqCst;
        let now = contents.in_flight.fetch_add(1, SeqCst) + 1;
        contents.peak.fetch_max(now, SeqCst);
        InFlight(contents)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// `GET /repos/{owner}/{repo}/contents/{path}?ref=SHA` as GitHub documents it
/// (docs.github.com/en/rest/repos/contents, "Get repository content"): a file as
/// `{"type": "file", "encoding": "base64", "content": …}`, a directory as an array of
/// `{"type", "name", "path"}`, 404 when the path is not there at that commit. Read with git from
/// the repository registered for `owner/repo`.
async fn contents(
    State(served): State<Arc<Contents>>,
    UrlPath((owner, repo, path)): UrlPath<(String, String, String)>,
    axum::extract::Query(query): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let _counted = InFlight::enter(&served);
    let delay = *served.delay.lock().unwrap();
    tokio::time::sleep(delay).await;
    let failure = served.failures.lock().unwrap().pop_front();
    if let Some((status, retry_after)) = failure {
        // GitHub's error body is `{"message": …, "documentation_url": …}`; a rate limit
        // carries `Retry-After` (docs.github.com, "Rate limits for the REST API").
        let status = axum::http::StatusCode::from_u16(status).unwrap();
        let body = Json(json!({ "message": status.canonical_reason().unwrap_or("error") }));
        let mut response = (status, body).into_response();
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert("retry-after", secs.to_string().parse().unwrap());
        }
        return response;
    }
    contents_of(&served.repos, &owner, &repo, &path, &query).into_response()
}

fn contents_of(
    repos: &std::collections::HashMap<String, PathBuf>,
    owner: &str,
    repo: &str,
    path: &str,
    query: &std::collections::HashMap<String, String>,
) -> (axum::http::StatusCode, Json<Value>) {
    use base64::Engine as _;
    let not_found = (
        axum::http::StatusCode::NOT_FOUND,
        Json(json!({ "message": "Not Found" })),
    );
    let Some(dir) = repos.get(&format!("{owner}/{repo}")) else {
        return not_found;
    };
    let sha = query.get("ref").cloned().unwrap_or_else(|| "HEAD".into());
    let path = path.trim_matches('/');
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| o.stdout)
    };
    let Some(kind) = git(&["cat-file", "-t", &format!("{sha}:{path}")]) else {
        return not_found;
    };
    match String::from_utf8_lossy(&kind).trim() {
        "blob" => {
            let bytes = git(&["cat-file", "blob", &format!("{sha}:{path}")]).unwrap_or_default();
            let name = path.rsplit('/').next().unwrap_or(path);
            (
                axum::http::StatusCode::OK,
                Json(json!({
                    "type": "file", "encoding": "base64", "name": name, "path": path,
                    "size": bytes.len(),
                    "content": base64::engine::general_purpose::STANDARD.encode(&bytes),
                })),
            )
        }
        "tree" => {
            let listing = git(&["ls-tree", &format!("{sha}:{path}")]).unwrap_or_default();
            let entries: Vec<Value> = String::from_utf8_lossy(&listing)
                .lines()
                .filter_map(|l| {
                    let (meta, name) = l.split_once('\t')?;
                    let kind = match meta.split(' ').nth(1)? {
                        "blob" => "file",
                        "tree" => "dir",
                        _ => "submodule",
                    };
                    let full = if path.is_empty() {
                        name.to_owned()
                    } else {
                        format!("{path}/{name}")
                    };
                    Some(json!({ "type": kind, "name": name, "path": full }))
                })
                .collect();
            (axum::http::StatusCode::OK, Json(Value::Array(entries)))
        }
        _ => not_found,
    }
}

async fn record_status(
    State(statuses): State<Arc<Mutex<Vec<ReceivedStatus>>>>,
    UrlPath((owner, repo, sha)): UrlPath<(String, String, String)>,
    Json(body): Json<Value>,
) -> (axum::http::StatusCode, Json<Value>) {
    statuses.lock().unwrap().push(ReceivedStatus {
        repo: format!("{owner}/{repo}"),
        sha,
        context: body["context"].as_str().unwrap_or_default().to_owned(),
        state: body["state"].as_str().unwrap_or_default().to_owned(),
        target_url: body["target_url"].as_str().map(str::to_owned),
    });
    (axum::http::StatusCode::CREATED, Json(json!({ "id": 1 })))
}

impl FakeGithub {
    pub async fn start() -> Self {
        Self::start_with_repos(std::collections::HashMap::new()).await
    }

    /// Also serves the contents API for each `owner/name` from its git repository (bare or not).
    pub async fn start_with_repos(repos: std::collections::HashMap<String, PathBuf>) -> Self {
        let statuses: Arc<Mutex<Vec<ReceivedStatus>>> = Arc::default();
        let contents_state = Arc::new(Contents {
            repos,
            failures: Mutex::default(),
            delay: Mutex::default(),
            in_flight: Default::default(),
            peak: Default::default(),
        });
        let app = axum::Router::new()
            .route(
                "/repos/{owner}/{repo}/statuses/{sha}",
                axum::routing::post(record_status),
            )
            .with_state(statuses.clone())
            .merge(
                axum::Router::new()
                    .route(
                        "/repos/{owner}/{repo}/contents/{*path}",
                        axum::routing::get(contents),
                    )
                    .with_state(contents_state.clone()),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeGithub {
            url,
            statuses,
            contents: contents_state,
            _server: server,
        }
    }

    /// The next contents API requests are answered with these errors (HTTP status and
    /// `Retry-After` seconds), one each, in order.
    pub fn fail_contents(&self, answers: impl IntoIterator<Item = (u16, Option<u64>)>) {
        self.contents.failures.lock().unwrap().extend(answers);
    }

    /// From now on every contents API answer waits `delay` first.
    pub fn slow_contents(&self, delay: Duration) {
        *self.contents.delay.lock().unwrap() = delay;
    }

    /// The most contents API requests that were in flight at once.
    pub fn contents_peak(&self) -> usize {
        self.contents.peak.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn statuses(&self) -> Vec<ReceivedStatus> {
        self.statuses.lock().unwrap().clone()
    }

    /// The states a context went through, in the order they arrived.
    pub fn states(&self, context: &str) -> Vec<String> {
        self.statuses()
            .into_iter()
            .filter(|s| s.context == context)
            .map(|s| s.state)
            .collect()
    }
}

pub const WEBHOOK_SECRET: &str = "it-webhook-secret";

/// A running `gantry serve`, killed when dropped.
pub struct Gantry {
    pub url: String,
    child: Child,
}

impl Gantry {
    /// Starts `gantry serve` on a free port with its data in `data_dir`, reporting statuses to
    /// `github_api` and reading pipelines through git.
    pub fn start(data_dir: &Path, github_api: &str, extra_env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(gantry_bin());
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("GANTRY_") {
                cmd.env_remove(key);
            }
        }
        cmd.arg("serve")
            // These tests are about the local backend: a kubeconfig in the environment (the
            // test command runs everything inside a test cluster) must not switch it.
            .env("GANTRY_BACKEND", "local")
            .env("GANTRY_LISTEN", "127.0.0.1:0")
            .env("GANTRY_DATA_DIR", data_dir)
            .env("GANTRY_GITHUB_WEBHOOK_SECRET", WEBHOOK_SECRET)
            .env("GANTRY_GITHUB_API_URL", github_api)
            .env("GANTRY_GITHUB_TOKEN", "it-token")
            .env("GANTRY_GITHUB_READ_FILES", "git")
            .env("GANTRY_API_TOKEN", "it-api-token")
            .env("GANTRY_LOG", "warn")
            .envs(extra_env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("cannot start gantry serve");
        let stdout = child.stdout.take().unwrap();
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
            .expect("gantry serve did not say where it listens");
        Gantry { url, child }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill_hard(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits up to `limit` for the process to exit; its exit code.
    pub fn terminate(mut self, limit: Duration) -> Option<i32> {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "cannot send SIGTERM");
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "gantry serve did not exit within {limit:?} of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Gantry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A GitHub push webhook body for `sha` on `main` of `acme/<name>` cloned from `clone_url`.
pub fn push_payload(
    name: &str,
    clone_url: &str,
    before: &str,
    sha: &str,
    paths: &[&str],
) -> String {
    json!({
        "ref": "refs/heads/main",
        "before": before,
        "after": sha,
        "created": false,
        "deleted": false,
        "forced": false,
        "commits": [{ "id": sha, "message": "change things", "added": [], "removed": [], "modified": paths }],
        "head_commit": { "id": sha, "message": "change things", "added": [], "removed": [], "modified": paths },
        "repository": {
            "full_name": format!("acme/{name}"),
            "name": name,
            "clone_url": clone_url,
            "html_url": format!("https://github.example/acme/{name}"),
            "default_branch": "main",
            "owner": { "login": "acme" }
        },
        "pusher": { "name": "dev" },
        "sender": { "login": "dev" }
    })
    .to_string()
}

/// A signed GitHub push webhook to the Gantry at `url`, ready to send.
pub fn signed_push(url: &str, delivery: &str, body: &str) -> reqwest::RequestBuilder {
    let signature = gantry_forge::hmac_sha256_hex_of(WEBHOOK_SECRET.as_bytes(), body.as_bytes());
    client()
        .post(format!("{url}/hooks/github"))
        .header("content-type", "application/json")
        .header("x-github-event", "push")
        .header("x-github-delivery", delivery)
        .header("x-hub-signature-256", format!("sha256={signature}"))
        .body(body.to_owned())
}

/// Sends a signed GitHub push webhook; returns the HTTP status and JSON answer.
pub async fn send_push(gantry: &Gantry, delivery: &str, body: &str) -> (u16, Value) {
    let response = signed_push(&gantry.url, delivery, body)
        .send()
        .await
        .expect("webhook delivery");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

pub fn client() -> reqwest::Client {
    gantry_forge::install_crypto_provider();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

pub async fn get_json(url: &str) -> Value {
    client()
        .get(url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Polls `check` every 100 ms until it returns Some, or fails after `limit` with `what`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every file under `dir` whose contents include `needle`.
pub fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if std::fs::read(&path)
                .map(|b| String::from_utf8_lossy(&b).contains(needle))
                .unwrap_or(false)
            {
                found.push(path);
            }
        }
    }
    found
}
