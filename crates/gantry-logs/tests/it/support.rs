use gantry_core::{JobId, LogLine, Stream};
use gantry_logs::{Logs, StepKey};

pub fn line(step: usize, text: &str) -> LogLine {
    LogLine {
        step,
        number: 0,
        at: gantry_core::now(),
        stream: Stream::Stdout,
        text: text.to_owned(),
    }
}

pub fn logs() -> (tempfile::TempDir, Logs) {
    let dir = tempfile::tempdir().unwrap();
    let logs = Logs::open(dir.path().join("logs")).unwrap();
    (dir, logs)
}

pub fn key() -> StepKey {
    StepKey::new(JobId::new(), 1, 0)
}

/// Everything a step's log holds, as text.
pub async fn all_text(logs: &Logs, key: StepKey) -> Vec<String> {
    let mut out = Vec::new();
    let mut from = 1;
    loop {
        let page = logs.read(key, from, 1000).await.unwrap();
        if page.lines.is_empty() {
            return out;
        }
        for l in &page.lines {
            assert_eq!(l.number, from, "lines are numbered without gaps");
            from += 1;
            out.push(l.text.clone());
        }
    }
}
