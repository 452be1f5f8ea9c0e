//! Where step output goes. The engine hands every [`LogLine`] a backend reports to a
//! [`LogSink`], and tells it when attempts start (with the secrets to mask) and when steps and
//! attempts end. The sink Gantry uses is [`gantry_logs::Logs`]: masking, the indexed store
//! under the data directory and the live hub.

use async_trait::async_trait;
use gantry_core::{JobId, JobRequest, LogLine, StoredLog, Stream};
use gantry_logs::{FOLLOW_BATCH, Logs, MAX_LINE_BYTES, PAGE_BYTES, StepKey};

/// Stores log lines as they arrive.
#[async_trait]
pub trait LogSink: Send + Sync + 'static {
    async fn append(&self, job_id: JobId, attempt: u32, line: &LogLine) -> std::io::Result<()>;

    /// An attempt is about to start: no line of it has arrived yet.
    async fn attempt_started(&self, _job: &JobRequest) {}

    /// A step ended: every line of it has been appended.
    async fn step_finished(&self, _job_id: JobId, _attempt: u32, _step: usize) {}

    /// An attempt ended: no more lines will come.
    async fn attempt_finished(&self, _job_id: JobId, _attempt: u32) {}

    /// What is stored of a step's log, for a backend re-attaching to the attempt after a
    /// restart: it sends only the lines past these. The default, nothing, fits a sink that
    /// keeps nothing (the backend then sends the whole log).
    async fn stored(&self, _job_id: JobId, _attempt: u32, _step: usize) -> StoredLog {
        StoredLog::default()
    }
}

#[async_trait]
impl LogSink for Logs {
    async fn append(&self, job_id: JobId, attempt: u32, line: &LogLine) -> std::io::Result<()> {
        Logs::append(self, job_id, attempt, line)
            .map(drop)
            .map_err(std::io::Error::other)
    }

    async fn attempt_started(&self, job: &JobRequest) {
        self.set_secrets(job.job_id, job.attempt, job.secret_values.values());
    }

    async fn step_finished(&self, job_id: JobId, attempt: u32, step: usize) {
        if let Err(err) = self.close_step(StepKey::new(job_id, attempt, step)) {
            tracing::warn!(job = %job_id, step, %err, "cannot close a step log");
        }
    }

    async fn attempt_finished(&self, job_id: JobId, attempt: u32) {
        if let Err(err) = self.close_attempt(job_id, attempt) {
            tracing::warn!(job = %job_id, %err, "cannot close an attempt's logs");
        }
    }

    async fn stored(&self, job_id: JobId, attempt: u32, step: usize) -> StoredLog {
        let key = StepKey::new(job_id, attempt, step);
        match stored_log(self, key).await {
            Ok(stored) => stored,
            Err(err) => {
                // Nothing lost: the backend sends the whole log, and lines may be stored twice.
                tracing::warn!(job = %job_id, step, %err, "cannot read a step log to resume it");
                StoredLog::default()
            }
        }
    }
}

/// Counts a step's stored records back into the lines the backend sent. A line longer than
/// [`MAX_LINE_BYTES`] was stored as several records: the ones after the first have the time and
/// stream of the record before, which was cut at the limit (at most 3 bytes short of it: a cut
/// never splits a character). Reads the whole log once (at a restart, for the steps that were
/// running).
async fn stored_log(logs: &Logs, key: StepKey) -> gantry_logs::Result<StoredLog> {
    // Repairs a log torn by the crash, and says how many records it holds.
    let total = logs.progress(key).await?.lines;
    let store = logs.store().clone();
    let count = tokio::task::spawn_blocking(move || -> std::io::Result<StoredLog> {
        let mut stored = StoredLog::default();
        // (stream, time, text length) of the record before.
        let mut previous = None;
        let mut from = 1;
        while from <= total {
            let page = store.read(key, from, FOLLOW_BATCH, PAGE_BYTES)?;
            if page.is_empty() {
                break;
            }
            from += page.len() as u64;
            for line in page {
                if line.stream == Stream::System {
                    stored.system_lines += 1;
                } else {
                    let continued = previous.is_some_and(|(stream, at, len)| {
                        stream == line.stream && at == line.at && len + 3 >= MAX_LINE_BYTES
                    });
                    if !continued {
                        stored.output_lines += 1;
                    }
                    stored.last_output_at = Some(line.at);
                }
                previous = Some((line.stream, line.at, line.text.len()));
            }
        }
        Ok(stored)
    });
    count
        .await
        .map_err(|e| gantry_logs::Error::Io(std::io::Error::other(e)))?
        .map_err(gantry_logs::Error::Io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(at: &str, stream: Stream, text: String) -> LogLine {
        LogLine {
            step: 0,
            number: 0,
            at: chrono::DateTime::parse_from_rfc3339(at).unwrap().to_utc(),
            stream,
            text,
        }
    }

    #[tokio::test]
    async fn stored_lines_are_counted_as_the_backend_sent_them() {
        let dir = tempfile::tempdir().unwrap();
        let logs = Logs::open(dir.path()).unwrap();
        let job = JobId::new();
        let long = "x".repeat(2 * MAX_LINE_BYTES + 10);
        for l in [
            line("2026-01-01T00:00:01Z", Stream::Stdout, "one".into()),
            line("2026-01-01T00:00:02Z", Stream::System, "a notice".into()),
            // Stored as three records.
            line("2026-01-01T00:00:03.123456789Z", Stream::Stdout, long),
            // At the same instant, after a short record: a line of its own.
            line(
                "2026-01-01T00:00:03.123456789Z",
                Stream::Stdout,
                "two".into(),
            ),
        ] {
            LogSink::append(&logs, job, 1, &l).await.unwrap();
        }
        assert_eq!(
            logs.progress(StepKey::new(job, 1, 0)).await.unwrap().lines,
            6
        );
        let stored = LogSink::stored(&logs, job, 1, 0).await;
        assert_eq!((stored.output_lines, stored.system_lines), (3, 1));
        // The store keeps microseconds.
        assert_eq!(
            stored.last_output_at.unwrap().to_rfc3339(),
            "2026-01-01T00:00:03.123456+00:00"
        );
        assert_eq!(
            LogSink::stored(&logs, job, 1, 1).await,
            StoredLog::default(),
            "a step with no log"
        );
    }
}
