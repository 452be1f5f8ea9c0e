//! A process appending lines is killed (SIGKILL) mid-stream; the log on disk then holds every
//! line whose append had returned, numbered without a gap, each one whole.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use gantry_core::JobId;
use gantry_logs::{Logs, StepKey};

use crate::support::line;

const CHILD_ENV: &str = "GANTRY_LOGS_CRASH_CHILD";

/// The child: appends numbered lines forever, printing each number once its append returned.
/// Does nothing unless started by the test below.
#[test]
fn crash_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (root, job) = spec.split_once('|').unwrap();
    let logs = Logs::open(root).unwrap();
    let job: JobId = job.parse().unwrap();
    let mut out = std::io::stdout().lock();
    for i in 1u64.. {
        let text = format!("line {i} {}", "x".repeat((i % 97) as usize));
        logs.append(job, 1, &line(0, &text)).unwrap();
        use std::io::Write;
        writeln!(out, "acked {i}").unwrap();
        out.flush().unwrap();
    }
}

#[tokio::test]
async fn the_stored_log_is_complete_up_to_the_crash() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("logs");
    let job = JobId::new();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash::crash_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, format!("{}|{job}", root.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut acked = 0u64;
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for l in lines.by_ref() {
        let l = l.unwrap();
        if let Some(n) = l.strip_prefix("acked ") {
            acked = n.parse().unwrap();
            if acked >= 30_000 {
                break;
            }
        }
    }
    // SIGKILL: no destructor, no flush, wherever the child is.
    child.kill().unwrap();
    child.wait().unwrap();
    // The child went on appending while we read: its last acknowledgements are still in the
    // pipe. The bound is the last one it printed before it died.
    for l in lines.map_while(Result::ok) {
        if let Some(n) = l.strip_prefix("acked ").and_then(|n| n.parse().ok()) {
            acked = n;
        }
    }
    assert!(acked >= 30_000, "the child only acknowledged {acked} lines");

    let logs = Logs::open(&root).unwrap();
    let key = StepKey::new(job, 1, 0);
    let mut next = 1u64;
    loop {
        let page = logs.read(key, next, 5000).await.unwrap();
        if page.lines.is_empty() {
            break;
        }
        for l in page.lines {
            let expected = format!("line {next} {}", "x".repeat((next % 97) as usize));
            assert_eq!(l.number, next);
            assert_eq!(l.text, expected, "line {next} is whole");
            next += 1;
        }
    }
    let stored = next - 1;
    assert!(stored >= acked, "{acked} acknowledged, {stored} stored");
    // At most the one line in flight beyond the last acknowledgement.
    assert!(stored <= acked + 1, "{acked} acknowledged, {stored} stored");
}
