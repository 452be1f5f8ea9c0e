//! Step logs over HTTP: pages of lines, search, raw download, and the live follow as
//! Server-Sent Events that resume with `Last-Event-ID`.
//!
//! `/api/v1/jobs/{job}/attempts/{attempt}/steps/{step}/log…`. Every line a client sees was
//! masked and stored before it was sent; an SSE event carries a run of lines and its id is the
//! number of the last one, so a client that reconnects with the last id it saw gets exactly
//! the lines after it.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use gantry_core::{Job, JobId, State as RunState};
use gantry_logs::{SharedLine, StepKey};
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
        "lost_lines": page.lost_lines,
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

/// Lines in one `lines` event, at most.
pub const EVENT_LINES: usize = 1000;
/// JSON bytes in one `lines` event, at most (past its first line).
pub const EVENT_BYTES: usize = 256 * 1024;

/// Splits a batch into the runs of lines that each make one event: at most [`EVENT_LINES`]
/// lines and, past the first, [`EVENT_BYTES`] of JSON.
fn event_runs(lines: &[Arc<SharedLine>]) -> impl Iterator<Item = &[Arc<SharedLine>]> {
    let mut rest = lines;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut bytes = 0;
        let mut n = 0;
        for l in rest.iter().take(EVENT_LINES) {
            bytes += l.json().len() + 1;
            if n > 0 && bytes > EVENT_BYTES {
                break;
            }
            n += 1;
        }
        let (run, tail) = rest.split_at(n);
        rest = tail;
        Some(run)
    })
}

/// `event: lines`, `id: <number of the last line>`, data the lines as a JSON array. Each line's
/// JSON is made once for every viewer ([`SharedLine::json`]); this only copies it.
fn lines_event(run: &[Arc<SharedLine>]) -> Event {
    let last = run.last().map_or(0, |l| l.line.number);
    let mut data = String::with_capacity(run.iter().map(|l| l.json().len() + 1).sum::<usize>() + 1);
    for l in run {
        data.push(if data.is_empty() { '[' } else { ',' });
        data.push_str(l.json());
    }
    data.push(']');
    Event::default()
        .event("lines")
        .id(last.to_string())
        .data(data)
}

/// `GET …/log/follow`: every line from `from` (or after `Last-Event-ID`) as it is stored, in
/// `event: lines` events of one or more lines with `id: <number of the last one>`;
/// `event: end` once the step has ended.
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
    let total = Arc::new(AtomicU64::new(from - 1));
    let seen = total.clone();
    let events = lines
        .take_until(stop.cancelled_owned())
        .flat_map(move |batch| {
            let events: Vec<Result<Event, Infallible>> = match batch {
                Ok(lines) => {
                    if let Some(last) = lines.last() {
                        seen.store(last.line.number, Ordering::Relaxed);
                    }
                    event_runs(&lines).map(|run| Ok(lines_event(run))).collect()
                }
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
        let n = total.load(Ordering::Relaxed);
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

#[cfg(test)]
mod tests {
    use gantry_core::Stream;
    use gantry_logs::StoredLine;

    use super::*;

    fn lines(texts: impl IntoIterator<Item = String>) -> Vec<Arc<SharedLine>> {
        texts
            .into_iter()
            .enumerate()
            .map(|(i, text)| {
                SharedLine::new(StoredLine {
                    number: i as u64 + 1,
                    at: gantry_core::now(),
                    stream: Stream::Stdout,
                    text,
                })
            })
            .collect()
    }

    fn sizes(batch: &[Arc<SharedLine>]) -> Vec<usize> {
        event_runs(batch).map(<[_]>::len).collect()
    }

    #[test]
    fn a_batch_becomes_events_of_at_most_event_lines_lines() {
        let batch = lines((1..=2500).map(|i| format!("line {i}")));
        assert_eq!(sizes(&batch), [1000, 1000, 500]);
        assert_eq!(sizes(&batch[..1]), [1]);
        assert!(sizes(&[]).is_empty());
    }

    #[test]
    fn an_event_holds_at_most_event_bytes_of_json_but_always_one_line() {
        // 60 KiB lines: four fit in 256 KiB; a line longer than the cap still goes alone.
        let batch = lines((0..10).map(|_| "x".repeat(60 * 1024)));
        assert_eq!(sizes(&batch), [4, 4, 2]);
        let huge = lines([
            "y".repeat(EVENT_BYTES + 1),
            "z".into(),
            "w".repeat(EVENT_BYTES),
        ]);
        assert_eq!(sizes(&huge), [1, 1, 1]);
    }

    #[tokio::test]
    async fn a_lines_event_is_a_json_array_of_the_lines_with_the_last_number_as_id() {
        let batch = lines(["a".into(), "b\nc".into()]);
        let events = futures::stream::iter([Ok::<_, Infallible>(lines_event(&batch))]);
        let body = Sse::new(events).into_response().into_body();
        let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
        let text = std::str::from_utf8(&bytes).unwrap();
        assert!(text.contains("event: lines\n"), "{text}");
        assert!(text.contains("id: 2\n"), "{text}");
        let data = text.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
        let value: Value = serde_json::from_str(data).unwrap();
        assert_eq!(value[0]["text"], "a");
        assert_eq!(value[1]["number"], 2);
        assert_eq!(value[1]["text"], "b\nc");
        assert_eq!(text.lines().filter(|l| l.starts_with("data:")).count(), 1);
    }
}
