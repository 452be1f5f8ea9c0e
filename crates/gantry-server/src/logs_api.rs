//! Step logs over HTTP: pages of lines, search, raw download, and the live follow as
//! Server-Sent Events that resume with `Last-Event-ID`.
//!
//! `/api/v1/jobs/{job}/attempts/{attempt}/steps/{step}/log…`. Every line a client sees was
//! masked and stored before it was sent; SSE event ids are line numbers, so a client that
//! reconnects with the last id it saw gets exactly the lines after it.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use gantry_core::{Job, JobId, State as RunState};
use gantry_logs::StepKey;
use http::HeaderMap;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::views::JobView;
use crate::{ApiError, AppState};

/// Lines in one page, at most.
pub const MAX_PAGE: usize = 5000;

#[derive(Debug, Deserialize)]
pub struct StepPath {
    pub job: String,
    pub attempt: u32,
    pub step: usize,
}

async fn find_step(state: &AppState, p: &StepPath) -> Result<(Job, StepKey), ApiError> {
    let job_id: JobId = p
        .job
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("`{}` is not a job id", p.job)))?;
    let job = state
        .engine
        .store()
        .get_job(job_id, Some(p.attempt))
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::NotFound(format!("no attempt {} of job {job_id}", p.attempt)))?;
    if p.step >= job.spec.steps.len().max(job.steps.len()) {
        return Err(ApiError::NotFound(format!(
            "job {job_id} has no step {} (steps are numbered from 0)",
            p.step
        )));
    }
    Ok((job, StepKey::new(job_id, p.attempt, p.step)))
}

fn logs_error(err: gantry_logs::Error) -> ApiError {
    ApiError::internal(err)
}

#[derive(Debug, Default, Deserialize)]
pub struct PageQuery {
    /// First line (1-based).
    pub from: Option<u64>,
    /// The last `tail` lines instead.
    pub tail: Option<u64>,
    pub limit: Option<usize>,
}

/// `GET …/log`: a page of lines.
pub async fn page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(p): Path<StepPath>,
    Query(q): Query<PageQuery>,
) -> Result<Json<Value>, ApiError> {
    crate::api::authorize_read(&state, &headers)?;
    let (_, key) = find_step(&state, &p).await?;
    let limit = q.limit.unwrap_or(1000).clamp(1, MAX_PAGE);
    let from = match (q.tail, q.from) {
        (Some(tail), _) => {
            let total = state.logs.progress(key).await.map_err(logs_error)?.lines;
            total.saturating_sub(tail.min(limit as u64)) + 1
        }
        (None, from) => from.unwrap_or(1).max(1),
    };
    let page = state
        .logs
        .read(key, from, limit)
        .await
        .map_err(logs_error)?;
    let next = page.lines.last().map_or(from, |l| l.number + 1);
    Ok(Json(json!({
        "from": from,
        "next": next,
        "total": page.total,
        "complete": page.complete,
        "lines": page.lines,
    })))
}

#[derive(Debug, Deserialize)]
pub struct SearchQuery {
    pub q: String,
    pub from: Option<u64>,
    pub limit: Option<usize>,
}

/// `GET …/log/search?q=`: lines containing the text (case-insensitive).
pub async fn search(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(p): Path<StepPath>,
    Query(q): Query<SearchQuery>,
) -> Result<Json<Value>, ApiError> {
    crate::api::authorize_read(&state, &headers)?;
    let (_, key) = find_step(&state, &p).await?;
    if q.q.is_empty() {
        return Err(ApiError::BadRequest("`q` must not be empty".into()));
    }
    let limit = q.limit.unwrap_or(200).clamp(1, 1000);
    let found = state
        .logs
        .search(key, &q.q, q.from.unwrap_or(1), limit)
        .await
        .map_err(logs_error)?;
    Ok(Json(json!({ "matches": found })))
}

/// `GET …/log/raw`: the whole log as plain text, streamed.
pub async fn raw(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(p): Path<StepPath>,
) -> Result<Response, ApiError> {
    crate::api::authorize_read(&state, &headers)?;
    let (job, key) = find_step(&state, &p).await?;
    let filename = format!("{}-{}-step{}.log", job.name, p.attempt, p.step).replace(
        |c: char| !c.is_ascii_alphanumeric() && c != '-' && c != '.',
        "_",
    );
    let body = match state.logs.raw(key).await.map_err(logs_error)? {
        Some(chunks) => Body::from_stream(chunks),
        None => Body::empty(),
    };
    Ok((
        [
            (
                http::header::CONTENT_TYPE,
                "text/plain; charset=utf-8".to_owned(),
            ),
            (
                http::header::CONTENT_DISPOSITION,
                format!("inline; filename=\"{filename}\""),
            ),
        ],
        body,
    )
        .into_response())
}

#[derive(Debug, Default, Deserialize)]
pub struct FollowQuery {
    /// First line wanted; `Last-Event-ID` overrides it.
    pub from: Option<u64>,
}

/// `GET …/log/follow`: every line from `from` (or after `Last-Event-ID`) as it is stored,
/// as `event: line` with `id: <number>`; `event: end` once the step has ended.
pub async fn follow(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(p): Path<StepPath>,
    Query(q): Query<FollowQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    crate::api::authorize_read(&state, &headers)?;
    let (job, key) = find_step(&state, &p).await?;
    let last_seen = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let from = match last_seen {
        Some(n) => n + 1,
        None => q.from.unwrap_or(1).max(1),
    };
    let step_over = |job: &Job| {
        job.state.is_final()
            || job
                .steps
                .iter()
                .find(|s| s.index == key.step)
                .is_some_and(|s| s.state.is_final())
    };
    let until_idle = step_over(&job);
    let lines = state.logs.follow(key, from, until_idle);
    let stop = state.engine.shutdown_token();
    let total = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(from - 1));
    let seen = total.clone();
    let events = lines
        .take_until(stop.cancelled_owned())
        .flat_map(move |batch| {
            let events: Vec<Result<Event, Infallible>> = match batch {
                Ok(lines) => lines
                    .iter()
                    .map(|l| {
                        seen.store(l.line.number, std::sync::atomic::Ordering::Relaxed);
                        Ok(Event::default()
                            .id(l.line.number.to_string())
                            .event("line")
                            .data(l.json()))
                    })
                    .collect(),
                Err(err) => {
                    tracing::error!(%err, "cannot read a step log for a viewer");
                    vec![Ok(Event::default()
                        .event("error")
                        .data("cannot read the log"))]
                }
            };
            futures::stream::iter(events)
        });
    let end = futures::stream::once(async move {
        let n = total.load(std::sync::atomic::Ordering::Relaxed);
        Ok(Event::default()
            .event("end")
            .data(json!({ "last": n }).to_string()))
    });
    Ok(Sse::new(events.chain(end)).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

#[derive(Debug, Default, Deserialize)]
pub struct JobQuery {
    pub attempt: Option<u32>,
}

/// `GET /api/v1/jobs/{id}`: one attempt of a job (the latest by default), with its steps.
pub async fn get_job(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<JobQuery>,
) -> Result<Json<Value>, ApiError> {
    crate::api::authorize_read(&state, &headers)?;
    let job_id: JobId = id
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("`{id}` is not a job id")))?;
    let job = state
        .engine
        .store()
        .get_job(job_id, q.attempt)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::NotFound(format!("no job {job_id}")))?;
    let mut view = JobView::from(&job);
    if view.status == RunState::Queued {
        view.queue_position = state.engine.queue_position(job.id).await?;
    }
    let mut value = serde_json::to_value(&view).map_err(ApiError::internal)?;
    value["run_id"] = json!(job.run_id);
    Ok(Json(value))
}
