//! Step logs end to end: lines from a child process through the splitter, the secret masker
//! and the store, to 1, 10 and 100 viewers following over SSE on loopback through the real
//! router. Reported as lines per second against reading the same child's output with
//! `BufReader::lines` in the same run, with p99 line latency (stored → received by a viewer),
//! lines lost (must be 0) and the process's peak resident memory.
//!
//! Writes `<target>/bench-logs.json` for `bench-report`. `GANTRY_BENCH_LINES` sets the number
//! of lines (default 50 000).

use std::collections::HashMap;
use std::io::BufRead;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use gantry_core::{
    Backend, BackendError, Event, EventSender, ForgeKind, JobId, JobRequest, RepoRef, Secret,
    Stream, Trigger,
};
use gantry_engine::{Engine, EngineConfig, Logs};
use gantry_logs::{LineSplitter, StepKey};
use gantry_server::{App, AppState};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const LINE: &str =
    "compiling gantry-logs v0.1.0 (/work/crates/gantry-logs) with a secret-free line";
const SECRET: &str = "bench-s3cr3t-token";

/// A backend that starts jobs and never finishes them: the bench writes their logs itself.
struct Idle;

#[async_trait]
impl Backend for Idle {
    fn name(&self) -> &'static str {
        "idle"
    }
    async fn start(&self, _job: JobRequest, _events: EventSender) -> Result<(), BackendError> {
        Ok(())
    }
    async fn cancel(&self, _job: JobId, _attempt: u32) -> Result<(), BackendError> {
        Ok(())
    }
}

fn child(lines: usize) -> std::process::Command {
    let mut c = std::process::Command::new("sh");
    c.args(["-c", &format!("yes '{LINE}' | head -n {lines}")]);
    c.stdout(Stdio::piped());
    c
}

/// The reference: the same child's output read with `BufReader::lines`.
fn reference(lines: usize) -> f64 {
    let start = Instant::now();
    let mut proc = child(lines).spawn().unwrap();
    let out = std::io::BufReader::new(proc.stdout.take().unwrap());
    let n = out.lines().map_while(Result::ok).count();
    proc.wait().unwrap();
    assert_eq!(n, lines);
    n as f64 / start.elapsed().as_secs_f64()
}

struct Viewer {
    received: u64,
    events: u64,
    in_order: bool,
    latencies_us: Vec<u64>,
}

/// What a viewer reads of a line: its number and when it was stored (the text is skipped).
#[derive(serde::Deserialize)]
struct LineRef<'a> {
    number: u64,
    at: &'a str,
}

/// Follows the step over SSE (`event: lines`, a JSON array per event); checks every line's
/// number and samples the latency of every 16th line.
async fn view(addr: SocketAddr, path: String) -> Viewer {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut reader = BufReader::with_capacity(256 * 1024, stream);
    let mut line = String::new();
    loop {
        line.clear();
        reader.read_line(&mut line).await.unwrap();
        if line == "\r\n" {
            break;
        }
    }
    let mut v = Viewer {
        received: 0,
        events: 0,
        in_order: true,
        latencies_us: Vec::new(),
    };
    let mut pending = String::new();
    let mut chunk = Vec::new();
    loop {
        let mut size = String::new();
        if reader.read_line(&mut size).await.unwrap_or(0) == 0 {
            return v;
        }
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            return v;
        }
        chunk.resize(n + 2, 0);
        reader.read_exact(&mut chunk).await.unwrap();
        let text = std::str::from_utf8(&chunk[..n]).unwrap();
        // An HTTP chunk is usually one whole event: read it in place.
        let taken = if pending.is_empty() {
            let taken = v.take_events(text);
            if let Some(t) = taken {
                pending.push_str(&text[t..]);
            }
            taken
        } else {
            pending.push_str(text);
            let taken = v.take_events(&pending);
            if let Some(t) = taken {
                pending.drain(..t);
            }
            taken
        };
        if taken.is_none() {
            return v;
        }
    }
}

impl Viewer {
    /// Takes the complete events at the start of `text`: the bytes taken, `None` at
    /// `event: end`. One pass over the text, line by line.
    fn take_events(&mut self, text: &str) -> Option<usize> {
        let (mut taken, mut at) = (0, 0);
        let (mut event, mut id, mut data) = ("", None, None);
        while let Some(nl) = text[at..].find('\n') {
            let field = &text[at..at + nl];
            at += nl + 1;
            if let Some(v) = field.strip_prefix("event: ") {
                event = v;
            } else if let Some(v) = field.strip_prefix("id: ") {
                id = v.parse::<u64>().ok();
            } else if let Some(v) = field.strip_prefix("data: ") {
                data = Some(v);
            } else if field.is_empty() {
                match (event, data) {
                    ("end", _) => return None,
                    ("lines", Some(data)) => self.lines(id, data),
                    _ => {}
                }
                (event, id, data) = ("", None, None);
                taken = at;
            }
        }
        Some(taken)
    }

    fn lines(&mut self, id: Option<u64>, data: &str) {
        let lines: Vec<LineRef<'_>> = serde_json::from_str(data).unwrap();
        self.events += 1;
        self.in_order &= id == lines.last().map(|l| l.number);
        let now = chrono::Utc::now();
        for l in lines {
            self.received += 1;
            self.in_order &= l.number == self.received;
            if l.number % 16 == 0 {
                let at = chrono::DateTime::parse_from_rfc3339(l.at).unwrap();
                let us = (now - at.with_timezone(&chrono::Utc))
                    .num_microseconds()
                    .unwrap_or(0)
                    .max(0);
                self.latencies_us.push(us as u64);
            }
        }
    }
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

async fn gantry(
    state: &AppState,
    logs: &Logs,
    addr: SocketAddr,
    job: JobId,
    attempt: u32,
    lines: usize,
    viewers: usize,
) -> (f64, u64, u64, bool, f64) {
    let key = StepKey::new(job, attempt, 0);
    logs.set_secrets(job, attempt, &[Secret::new(SECRET)]);
    let path = format!("/api/v1/jobs/{job}/attempts/{attempt}/steps/0/log/follow");
    let mut tasks = Vec::new();
    for _ in 0..viewers {
        tasks.push(tokio::spawn(view(addr, path.clone())));
    }
    // Let every viewer subscribe before the first line.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let start = Instant::now();
    let mut proc = tokio::process::Command::from(child(lines)).spawn().unwrap();
    let mut out = proc.stdout.take().unwrap();
    let masker = logs.masker(job, attempt);
    let mut splitter = LineSplitter::new(64 * 1024);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = out.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        splitter.push(&buf[..n], &masker, &mut |text| {
            logs.append_text(key, gantry_core::now(), Stream::Stdout, &text)
                .unwrap();
        });
    }
    splitter.finish(&mut |text| {
        logs.append_text(key, gantry_core::now(), Stream::Stdout, &text)
            .unwrap();
    });
    proc.wait().await.unwrap();
    logs.close_step(key).unwrap();
    let mut lost = 0;
    let mut in_order = true;
    let mut latencies = Vec::new();
    let mut events = 0;
    for t in tasks {
        let v = t.await.unwrap();
        lost += lines as u64 - v.received.min(lines as u64);
        in_order &= v.in_order;
        events += v.events;
        latencies.extend(v.latencies_us);
    }
    let lines_per_event = (lines * viewers) as f64 / events.max(1) as f64;
    let rate = lines as f64 / start.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let p99 = latencies
        .get((latencies.len() as f64 * 0.99) as usize)
        .copied()
        .unwrap_or(0);
    let _ = state;
    (rate, p99, lost, in_order, lines_per_event)
}

#[tokio::main]
async fn main() {
    let lines: usize = std::env::var("GANTRY_BENCH_LINES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let dir = tempfile::tempdir().unwrap();
    let store = gantry_store::Store::open(&format!(
        "sqlite://{}",
        dir.path().join("gantry.db").display()
    ))
    .await
    .unwrap();
    let logs = Logs::open(dir.path().join("logs")).unwrap();
    let engine = Engine::new(
        store,
        Arc::new(Idle),
        Vec::new(),
        Arc::new(logs.clone()),
        EngineConfig::default(),
    );
    engine.start().await.unwrap();
    let state = AppState(Arc::new(App {
        engine: engine.clone(),
        webhook_secrets: HashMap::new(),
        sources: HashMap::new(),
        forge_reads: Default::default(),
        git: Arc::new(gantry_forge::GitReader::new(dir.path().join("git"))),
        api_token: None,
        public_url: "http://127.0.0.1".into(),
        logs: logs.clone(),
        private_reads: false,
    }));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = gantry_server::app(state.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let repo = RepoRef {
        forge: ForgeKind::Github,
        full_name: "acme/bench".into(),
        clone_url: "https://git.example.com/acme/bench.git".into(),
        web_url: None,
        default_branch: Some("main".into()),
    };
    let pipeline =
        "on:\n  push: {}\njobs:\n  build:\n    steps:\n      - name: make\n        run: make\n";
    let mut results = Vec::new();
    let rss_before = peak_rss_kib();
    for viewers in [1usize, 10, 100] {
        let trigger = Trigger::new(
            Event::Push,
            repo.clone(),
            "refs/heads/main",
            format!("{viewers:040}"),
        );
        let run = engine
            .submit(trigger, vec![(".gantry.yaml".into(), pipeline.into())])
            .await
            .unwrap()[0];
        let job = engine.get_run(run).await.unwrap().unwrap().run.jobs[0].id;
        let reference_rate = reference(lines);
        let (rate, p99, lost, in_order, per_event) =
            gantry(&state, &logs, addr, job, 1, lines, viewers).await;
        println!(
            "logs/{viewers} viewers: {rate:.0} lines/s vs BufReader::lines {reference_rate:.0} lines/s ({:.3}×), p99 {:.1} ms, lost {lost}, in order {in_order}, {per_event:.1} lines an SSE event",
            rate / reference_rate,
            p99 as f64 / 1000.0
        );
        assert_eq!(lost, 0, "a viewer lost lines");
        assert!(in_order, "a viewer got lines out of order or twice");
        results.push(json!({
            "viewers": viewers,
            "lines": lines,
            "lines_per_s": rate,
            "reference_lines_per_s": reference_rate,
            "p99_latency_ms": p99 as f64 / 1000.0,
            "lines_lost": lost,
            "lines_per_event": per_event,
        }));
    }
    let rss_peak = peak_rss_kib();
    let target = std::env::var("CARGO_TARGET_DIR")
        .unwrap_or_else(|_| format!("{}/../target", env!("CARGO_MANIFEST_DIR")));
    let out = json!({
        "cases": results,
        "peak_rss_mib_with_100_viewers": rss_peak as f64 / 1024.0,
        "rss_mib_before": rss_before as f64 / 1024.0,
    });
    std::fs::write(
        format!("{target}/bench-logs.json"),
        serde_json::to_string_pretty(&out).unwrap(),
    )
    .unwrap();
    println!(
        "peak RSS {:.1} MiB (before the cases: {:.1} MiB)",
        rss_peak as f64 / 1024.0,
        rss_before as f64 / 1024.0
    );
    engine.shutdown().await;
}
