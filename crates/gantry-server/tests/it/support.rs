//! A whole server in process: SQLite engine, a backend the test drives line by line, the log
//! service, the router on a loopback port, and a TCP proxy that can cut every connection.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Body;
use gantry_core::{
    Backend, BackendError, Event, EventSender, ForgeKind, JobEvent, JobEventKind, JobId,
    JobRequest, LogLine, RepoRef, RunId, Secret, State, StepOutcome, Stream, Trigger,
};
use gantry_engine::{Engine, EngineConfig, Logs};
use gantry_server::{App, AppState};
use http::{Request, StatusCode};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tower::ServiceExt;

pub const TOKEN: &str = "t0ken-for-tests";
pub const SECRET: &str = "s3cr3t-Value-42";
pub const MULTI_SECRET: &str = "-----BEGIN KEY-----\nQUJDREVGR0hJSktMTU5PUA\n-----END KEY-----";

pub const PIPELINE: &str = r#"
name: ci
on:
  push: {}
jobs:
  build:
    image: alpine
    steps:
      - name: compile
        run: make
      - name: unit tests
        run: make test
  deploy:
    needs: [build]
    steps:
      - name: ship
        run: ./ship
"#;

/// One attempt the backend was given: the test sends its events.
#[derive(Clone, Debug)]
pub struct Attempt {
    pub job: JobId,
    pub attempt: u32,
    events: EventSender,
}

impl Attempt {
    async fn send(&self, kind: JobEventKind) {
        let _ = self
            .events
            .send(JobEvent {
                job_id: self.job,
                attempt: self.attempt,
                at: gantry_core::now(),
                kind,
            })
            .await;
    }
    pub async fn started(&self) {
        self.send(JobEventKind::Started).await;
    }
    pub async fn step_started(&self, step: usize) {
        self.send(JobEventKind::StepStarted { step }).await;
    }
    pub async fn line(&self, step: usize, text: &str) {
        self.send(JobEventKind::Log(LogLine {
            step,
            number: 0,
            at: gantry_core::now(),
            stream: Stream::Stdout,
            text: text.to_owned(),
        }))
        .await;
    }
    pub async fn step_finished(&self, step: usize, state: State) {
        let outcome = StepOutcome {
            state,
            exit_code: Some(i32::from(state != State::Success)),
            reason: None,
            summary: None,
        };
        self.send(JobEventKind::StepFinished { step, outcome })
            .await;
    }
    /// A step's end as the backend tells it: state, exit code, reason and summary.
    pub async fn step_ended(&self, step: usize, outcome: StepOutcome) {
        self.send(JobEventKind::StepFinished { step, outcome })
            .await;
    }
    pub async fn finished(&self, state: State) {
        self.send(JobEventKind::Finished {
            state,
            reason: None,
        })
        .await;
    }
    /// The job's end with the reason a backend gives.
    pub async fn finished_because(&self, state: State, reason: &str) {
        self.send(JobEventKind::Finished {
            state,
            reason: Some(reason.into()),
        })
        .await;
    }
}

/// A backend whose jobs do exactly what the test says, and whose jobs can see one secret (as
/// the engine's grants would give them).
#[derive(Clone)]
pub struct LiveBackend {
    logs: Logs,
    attempts: Arc<Mutex<HashMap<String, Attempt>>>,
}

#[async_trait]
impl Backend for LiveBackend {
    fn name(&self) -> &'static str {
        "live-test"
    }

    async fn start(&self, job: JobRequest, events: EventSender) -> Result<(), BackendError> {
        let mut secrets: BTreeMap<String, Secret> = job.secret_values.clone();
        secrets.insert("TOKEN".into(), Secret::new(SECRET));
        secrets.insert("KEY".into(), Secret::new(MULTI_SECRET));
        self.logs
            .set_secrets(job.job_id, job.attempt, secrets.values());
        self.attempts.lock().unwrap().insert(
            job.spec.name.clone(),
            Attempt {
                job: job.job_id,
                attempt: job.attempt,
                events,
            },
        );
        Ok(())
    }

    async fn cancel(&self, job_id: JobId, attempt: u32) -> Result<(), BackendError> {
        let found = self
            .attempts
            .lock()
            .unwrap()
            .values()
            .find(|a| a.job == job_id && a.attempt == attempt)
            .cloned();
        if let Some(a) = found {
            tokio::spawn(async move { a.finished(State::Cancelled).await });
        }
        Ok(())
    }
}

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub engine: Engine,
    pub logs: Logs,
    pub backend: LiveBackend,
    pub state: AppState,
}

pub fn repo() -> RepoRef {
    RepoRef {
        forge: ForgeKind::Github,
        full_name: "acme/app".into(),
        clone_url: "https://git.example.com/acme/app.git".into(),
        web_url: Some("https://git.example.com/acme/app".into()),
        default_branch: Some("main".into()),
    }
}

impl Harness {
    pub async fn new(private_reads: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = gantry_store::Store::open(&format!(
            "sqlite://{}",
            dir.path().join("gantry.db").display()
        ))
        .await
        .unwrap();
        let logs = Logs::open(dir.path().join("logs")).unwrap();
        let backend = LiveBackend {
            logs: logs.clone(),
            attempts: Arc::default(),
        };
        let config = EngineConfig {
            tick: Duration::from_millis(100),
            ..EngineConfig::default()
        };
        let engine = Engine::new(
            store,
            Arc::new(backend.clone()),
            Vec::new(),
            Arc::new(logs.clone()),
            config,
        );
        engine.start().await.unwrap();
        let state = AppState(Arc::new(App {
            engine: engine.clone(),
            webhook_secrets: HashMap::new(),
            sources: HashMap::new(),
            forge_reads: Default::default(),
            git: Arc::new(gantry_forge::GitReader::new(dir.path().join("git"))),
            api_token: Some(TOKEN.into()),
            public_url: "http://127.0.0.1".into(),
            logs: logs.clone(),
            private_reads,
        }));
        Self {
            dir,
            engine,
            logs,
            backend,
            state,
        }
    }

    /// A push run of [`PIPELINE`] on `branch`.
    pub async fn push(&self, branch: &str, message: &str) -> RunId {
        self.push_pipeline(branch, message, PIPELINE).await
    }

    /// A push run of `pipeline` on `branch`.
    pub async fn push_pipeline(&self, branch: &str, message: &str, pipeline: &str) -> RunId {
        let mut trigger = Trigger::new(
            Event::Push,
            repo(),
            format!("refs/heads/{branch}"),
            "0123456789abcdef0123456789abcdef01234567",
        );
        trigger.message = Some(message.into());
        trigger.actor = Some("octocat".into());
        let runs = self
            .engine
            .submit(trigger, vec![(".gantry.yaml".into(), pipeline.into())])
            .await
            .unwrap();
        runs[0]
    }

    /// The attempt of the job named `name`, once the backend has it.
    pub async fn attempt(&self, name: &str) -> Attempt {
        for _ in 0..500 {
            if let Some(a) = self.backend.attempts.lock().unwrap().get(name).cloned() {
                return a;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("job {name} never started");
    }

    /// `GET path` through the router, in process.
    pub async fn get(&self, path: &str, token: Option<&str>) -> (StatusCode, String) {
        let mut req = Request::get(path);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        self.call(req.body(Body::empty()).unwrap()).await
    }

    /// The status and headers of `GET path`, without a token.
    pub async fn headers(&self, path: &str) -> (StatusCode, http::HeaderMap) {
        let resp = gantry_server::app(self.state.clone())
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        (resp.status(), resp.headers().clone())
    }

    pub async fn call(&self, req: Request<Body>) -> (StatusCode, String) {
        let resp = gantry_server::app(self.state.clone())
            .oneshot(req)
            .await
            .unwrap();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 64 * 1024 * 1024)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// Waits until the store has `n` lines for a step.
    pub async fn wait_lines(&self, job: JobId, attempt: u32, step: usize, n: u64) {
        let key = gantry_logs::StepKey::new(job, attempt, step);
        for _ in 0..500 {
            if self.logs.progress(key).await.unwrap().lines >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("step {step} never reached {n} lines");
    }

    pub async fn wait_run_state(&self, run: RunId, state: State) {
        for _ in 0..500 {
            if self.engine.get_run(run).await.unwrap().unwrap().run.state == state {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("run never became {state}");
    }

    /// The router on a loopback port.
    pub async fn serve(&self) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = gantry_server::app(self.state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }
}

/// A TCP proxy in front of the server; `cut` drops every open connection at once, as a
/// network failure would.
pub struct Proxy {
    pub addr: SocketAddr,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let list = conns.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                list.lock().unwrap().push(task);
            }
        });
        Self { addr, conns }
    }

    pub fn cut(&self) {
        for task in self.conns.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

/// One Server-Sent Event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: String,
    pub data: String,
}

/// A minimal SSE client over HTTP/1.1 (chunked), enough to see exactly what a browser gets.
pub struct SseClient {
    reader: BufReader<TcpStream>,
    pending: String,
    pub status: u16,
}

impl SseClient {
    pub async fn connect(addr: SocketAddr, path: &str, last_event_id: Option<u64>) -> Self {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let mut req =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
        if let Some(id) = last_event_id {
            req.push_str(&format!("Last-Event-ID: {id}\r\n"));
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).await.unwrap();
        let status = line.split(' ').nth(1).unwrap().parse().unwrap();
        loop {
            line.clear();
            reader.read_line(&mut line).await.unwrap();
            if line == "\r\n" || line.is_empty() {
                break;
            }
        }
        Self {
            reader,
            pending: String::new(),
            status,
        }
    }

    /// The next event, `None` when the stream ended.
    pub async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.pending.find("\n\n") {
                let block: String = self.pending.drain(..end + 2).collect();
                let mut ev = SseEvent::default();
                let mut data = Vec::new();
                for l in block.lines() {
                    if let Some(v) = l.strip_prefix("id:") {
                        ev.id = Some(v.trim().to_owned());
                    } else if let Some(v) = l.strip_prefix("event:") {
                        ev.event = v.trim().to_owned();
                    } else if let Some(v) = l.strip_prefix("data:") {
                        data.push(v.strip_prefix(' ').unwrap_or(v).to_owned());
                    }
                }
                if ev.event.is_empty() && data.is_empty() {
                    continue; // a comment (keep-alive)
                }
                ev.data = data.join("\n");
                return Some(ev);
            }
            // One chunk of the chunked body.
            let mut size = String::new();
            if self.reader.read_line(&mut size).await.ok()? == 0 {
                return None;
            }
            let n = usize::from_str_radix(size.trim(), 16).ok()?;
            if n == 0 {
                return None;
            }
            let mut chunk = vec![0u8; n + 2];
            self.reader.read_exact(&mut chunk).await.ok()?;
            self.pending.push_str(&String::from_utf8_lossy(&chunk[..n]));
        }
    }
}
