//! The commit statuses the engine writes: one for each run (`gantry/<pipeline>`) and one for
//! each job (`gantry/<pipeline>/<job>`), linking to the viewer.

use gantry_core::{CommitState, CommitStatus, Job, State};
use gantry_store::{RunRecord, Tx};

use crate::{EngineConfig, Result};

/// GitHub refuses longer descriptions.
const MAX_DESCRIPTION: usize = 140;

pub(crate) fn description(text: &str) -> String {
    let first_line = text.lines().next().unwrap_or("");
    if first_line.chars().count() <= MAX_DESCRIPTION {
        return first_line.to_owned();
    }
    let mut out: String = first_line.chars().take(MAX_DESCRIPTION - 1).collect();
    out.push('…');
    out
}

pub(crate) fn run_context(config: &EngineConfig, run: &RunRecord) -> String {
    format!("{}/{}", config.status_context_prefix, run.name)
}

fn run_url(config: &EngineConfig, run: &RunRecord) -> Option<String> {
    config
        .public_url
        .as_ref()
        .map(|base| format!("{}/runs/{}", base.trim_end_matches('/'), run.run.id))
}

/// Writes the run's status, in the transaction that changes its state.
pub(crate) async fn push_run(
    tx: &mut Tx,
    config: &EngineConfig,
    run: &RunRecord,
    state: State,
    text: &str,
) -> Result<()> {
    let status = CommitStatus {
        sha: run.run.trigger.sha.clone(),
        context: run_context(config, run),
        state: CommitState::from(state),
        description: description(text),
        target_url: run_url(config, run),
    };
    tx.push_status(&run.run.trigger.repo, &status, gantry_core::now())
        .await?;
    Ok(())
}

/// Writes a job's status, in the transaction that changes its state.
pub(crate) async fn push_job(
    tx: &mut Tx,
    config: &EngineConfig,
    run: &RunRecord,
    job: &Job,
    state: State,
    text: &str,
) -> Result<()> {
    let status = CommitStatus {
        sha: run.run.trigger.sha.clone(),
        context: format!("{}/{}", run_context(config, run), job.name),
        state: CommitState::from(state),
        description: description(text),
        target_url: run_url(config, run).map(|url| format!("{url}/jobs/{}", job.id)),
    };
    tx.push_status(&run.run.trigger.repo, &status, gantry_core::now())
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_are_one_short_line() {
        assert_eq!(description("a\nb"), "a");
        let long = "x".repeat(300);
        let d = description(&long);
        assert_eq!(d.chars().count(), MAX_DESCRIPTION);
        assert!(d.ends_with('…'));
    }
}
