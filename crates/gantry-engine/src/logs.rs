//! Where step output goes. The engine hands every [`LogLine`] a backend reports to a
//! [`LogSink`], and tells it when attempts start (with the secrets to mask) and when steps and
//! attempts end. The sink Gantry uses is [`gantry_logs::Logs`]: masking, the indexed store
//! under the data directory and the live hub.

use async_trait::async_trait;
use gantry_core::{JobId, JobRequest, LogLine};
use gantry_logs::{Logs, StepKey};

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
}
