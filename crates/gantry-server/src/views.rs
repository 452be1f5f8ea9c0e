//! The JSON shapes of the API: flat, named for what a user looks for.

use gantry_core::{Job, JobId, RunId, State, Step, Timestamp};
use gantry_store::RunRecord;
use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct RunView {
    pub id: RunId,
    /// The run's number in its repository: 1, 2, … (`#12` in the viewer).
    pub number: u64,
    /// The pipeline's name and file.
    pub pipeline: String,
    pub file: String,
    pub forge: String,
    pub repository: String,
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub branch: Option<String>,
    pub tag: Option<String>,
    pub pull_request: Option<u64>,
    pub commit: String,
    /// The commit on the forge's web pages, when the forge said where they are.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit_url: Option<String>,
    pub message: Option<String>,
    pub author: Option<String>,
    pub event: String,
    pub status: State,
    pub reason: Option<String>,
    pub created_at: Timestamp,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    /// Every attempt of every job, in plan order (empty in lists).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub jobs: Vec<JobView>,
}

#[derive(Clone, Debug, Serialize)]
pub struct JobView {
    pub id: JobId,
    pub name: String,
    pub attempt: u32,
    pub needs: Vec<String>,
    pub status: State,
    pub reason: Option<String>,
    pub allow_failure: bool,
    /// 1-based place in the queue while queued.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<u64>,
    pub created_at: Timestamp,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    pub steps: Vec<StepView>,
}

#[derive(Clone, Debug, Serialize)]
pub struct StepView {
    pub index: usize,
    pub name: String,
    pub status: State,
    pub exit_code: Option<i32>,
    pub reason: Option<String>,
    /// What the step produced, in a line or a few (a pushed digest, a scan's findings).
    pub summary: Option<String>,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
}

impl From<&Step> for StepView {
    fn from(s: &Step) -> Self {
        StepView {
            index: s.index,
            name: s.name.clone(),
            status: s.state,
            exit_code: s.exit_code,
            reason: s.reason.clone(),
            summary: s.summary.clone(),
            started_at: s.started_at,
            finished_at: s.finished_at,
        }
    }
}

impl From<&Job> for JobView {
    fn from(j: &Job) -> Self {
        JobView {
            id: j.id,
            name: j.name.clone(),
            attempt: j.attempt,
            needs: j.needs.clone(),
            status: j.state,
            reason: j.reason.clone(),
            allow_failure: j.allow_failure,
            queue_position: None,
            created_at: j.created_at,
            started_at: j.started_at,
            finished_at: j.finished_at,
            steps: j.steps.iter().map(StepView::from).collect(),
        }
    }
}

impl From<&RunRecord> for RunView {
    fn from(r: &RunRecord) -> Self {
        let t = &r.run.trigger;
        RunView {
            id: r.run.id,
            number: r.number,
            pipeline: r.name.clone(),
            file: r.run.pipeline.clone(),
            forge: t.repo.forge.to_string(),
            repository: t.repo.full_name.clone(),
            git_ref: t.git_ref.clone(),
            branch: t.branch.clone(),
            tag: t.tag.clone(),
            pull_request: t.pull_request.as_ref().map(|pr| pr.number),
            commit: t.sha.clone(),
            commit_url: commit_url(&t.repo, &t.sha),
            message: t.message.clone(),
            author: t.actor.clone(),
            event: t.event.to_string(),
            status: r.run.state,
            reason: r.reason.clone(),
            created_at: r.run.created_at,
            started_at: r.run.started_at,
            finished_at: r.run.finished_at,
            jobs: r.run.jobs.iter().map(JobView::from).collect(),
        }
    }
}

/// The commit's page on its forge: GitLab puts commits under `/-/commit/`, GitHub and Gitea
/// under `/commit/`.
pub fn commit_url(repo: &gantry_core::RepoRef, sha: &str) -> Option<String> {
    let web = repo.web_url.as_deref()?.trim_end_matches('/');
    if !(web.starts_with("https://") || web.starts_with("http://")) {
        return None;
    }
    Some(match repo.forge {
        gantry_core::ForgeKind::Gitlab => format!("{web}/-/commit/{sha}"),
        _ => format!("{web}/commit/{sha}"),
    })
}
