//! Where step output goes. The engine appends every [`LogLine`] a backend reports to a
//! [`LogSink`]; the default keeps one file per step under the data directory.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use gantry_core::{JobId, LogLine, Stream};
use tokio::io::AsyncWriteExt;

/// Stores log lines as they arrive.
#[async_trait]
pub trait LogSink: Send + Sync + 'static {
    async fn append(&self, job_id: JobId, attempt: u32, line: &LogLine) -> std::io::Result<()>;
}

/// One append-only file per step: `<root>/<job id>/<attempt>/<step>.log`, each line
/// `<RFC 3339 time> <stdout|stderr|system> <text>`. Attempts never share a file, so a retry
/// keeps the failed attempt's log.
#[derive(Clone, Debug)]
pub struct FileLogSink {
    root: PathBuf,
}

impl FileLogSink {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file that holds a step's log.
    pub fn path(&self, job_id: JobId, attempt: u32, step: usize) -> PathBuf {
        self.root
            .join(job_id.to_string())
            .join(attempt.to_string())
            .join(format!("{step}.log"))
    }
}

#[async_trait]
impl LogSink for FileLogSink {
    async fn append(&self, job_id: JobId, attempt: u32, line: &LogLine) -> std::io::Result<()> {
        let path = self.path(job_id, attempt, line.step);
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir).await?;
        }
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .await?;
        let stream = match line.stream {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
            Stream::System => "system",
        };
        let text = format!(
            "{} {stream} {}\n",
            line.at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            line.text
        );
        file.write_all(text.as_bytes()).await
    }
}
