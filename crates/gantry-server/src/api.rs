//! `/api/v1`: runs, jobs, deliveries; cancel and retry with a bearer token.

use axum::Json;
use axum::extract::{Path, Query, State};
use gantry_core::{Event, ForgeKind, JobId, RunId, State as RunState};
use gantry_store::{Page, RunFilter};
use http::HeaderMap;
use serde::Deserialize;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use crate::views::RunView;
use crate::{ApiError, AppState};

#[derive(Debug, Default, Deserialize)]
pub struct RunsQuery {
    pub repository: Option<String>,
    pub branch: Option<String>,
    /// Comma-separated states.
    pub status: Option<String>,
    pub event: Option<String>,
    pub pipeline: Option<String>,
    pub limit: Option<u32>,
    /// The last run id of the previous page.
    pub before: Option<RunId>,
}

fn parse_states(list: &str) -> Result<Vec<RunState>, ApiError> {
    list.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.trim()
                .parse()
                .map_err(|e: gantry_core::UnknownState| ApiError::BadRequest(e.to_string()))
        })
        .collect()
}

fn parse_event(name: &str) -> Result<Event, ApiError> {
    Event::ALL
        .into_iter()
        .find(|e| e.as_str() == name)
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "unknown event `{name}`: expected push, pull_request, tag or manual"
            ))
        })
}

pub async fn list_runs(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<RunsQuery>,
) -> Result<Json<Value>, ApiError> {
    authorize_read(&state, &headers)?;
    let filter = RunFilter {
        repo: q.repository,
        branch: q.branch,
        pipeline: q.pipeline,
        states: q
            .status
            .as_deref()
            .map(parse_states)
            .transpose()?
            .unwrap_or_default(),
        event: q.event.as_deref().map(parse_event).transpose()?,
        ..RunFilter::default()
    };
    let page = Page {
        limit: q.limit.unwrap_or(50).clamp(1, 500),
        before: q.before,
    };
    let runs = state.engine.list_runs(&filter, page).await?;
    let views: Vec<RunView> = runs.iter().map(RunView::from).collect();
    let next = (views.len() as u32 == page.limit)
        .then(|| views.last().map(|r| r.id))
        .flatten();
    Ok(Json(json!({ "runs": views, "next_before": next })))
}

pub async fn get_run(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<RunView>, ApiError> {
    authorize_read(&state, &headers)?;
    let id: RunId = id
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("`{id}` is not a run id")))?;
    let record = state
        .engine
        .get_run(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no run {id}")))?;
    let mut view = RunView::from(&record);
    for job in &mut view.jobs {
        if job.status == RunState::Queued {
            job.queue_position = state.engine.queue_position(job.id).await?;
        }
    }
    Ok(Json(view))
}

pub(crate) fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = state.api_token.as_deref() else {
        return Err(ApiError::Unauthorized(
            "this server has no API token configured (GANTRY_API_TOKEN): changes through the API are off".into(),
        ));
    };
    let given = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| ApiError::Unauthorized("missing `Authorization: Bearer <token>`".into()))?;
    if bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized("wrong token".into()))
    }
}

/// The token a request carries: `Authorization: Bearer …`, or (for pages and the browser's
/// EventSource, which cannot set headers) the viewer's `gantry_token` cookie.
fn presented_token(headers: &HeaderMap, cookie_too: bool) -> Option<String> {
    if let Some(t) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        return Some(t.to_owned());
    }
    if !cookie_too {
        return None;
    }
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix("gantry_token="))
        .map(|t| {
            form_urlencoded::parse(format!("t={t}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        })
}

/// Does this request carry the API token? (Header or cookie: for showing things, never for
/// changing them — a cookie would let other sites act for the user.)
pub(crate) fn has_read_token(state: &AppState, headers: &HeaderMap) -> bool {
    match (state.api_token.as_deref(), presented_token(headers, true)) {
        (Some(expected), Some(given)) => bool::from(given.as_bytes().ct_eq(expected.as_bytes())),
        _ => false,
    }
}

/// Reads are public unless the server is configured to keep them behind the token.
pub(crate) fn authorize_read(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    if !state.private_reads || has_read_token(state, headers) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized(
            "reading needs the API token (`Authorization: Bearer <token>`)".into(),
        ))
    }
}

fn run_id(id: &str) -> Result<RunId, ApiError> {
    id.parse()
        .map_err(|_| ApiError::BadRequest(format!("`{id}` is not a run id")))
}

fn job_id(id: &str) -> Result<JobId, ApiError> {
    id.parse()
        .map_err(|_| ApiError::BadRequest(format!("`{id}` is not a job id")))
}

pub async fn cancel_run(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    authorize(&state, &headers)?;
    let cancelled = state.engine.cancel_run(run_id(&id)?).await?;
    Ok(Json(json!({ "cancelled": cancelled })))
}

pub async fn retry_run(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    authorize(&state, &headers)?;
    let retried = state.engine.retry_run(run_id(&id)?).await?;
    Ok(Json(json!({ "retried": retried })))
}

pub async fn cancel_job(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    authorize(&state, &headers)?;
    let cancelled = state.engine.cancel_job(job_id(&id)?).await?;
    Ok(Json(json!({ "cancelled": cancelled })))
}

pub async fn retry_job(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    authorize(&state, &headers)?;
    state.engine.retry_job(job_id(&id)?).await?;
    Ok(Json(json!({ "retried": true })))
}

pub async fn get_delivery(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((forge, id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    authorize_read(&state, &headers)?;
    let kind = forge_kind(&forge)?;
    let delivery = state
        .engine
        .store()
        .get_delivery(kind, &id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no {forge} delivery `{id}`")))?;
    Ok(Json(json!({
        "forge": forge,
        "delivery": delivery.delivery_id,
        "event": delivery.event,
        "received_at": delivery.received_at,
        "state": delivery.state.as_str(),
        "reason": delivery.reason,
        "runs": delivery.run_ids,
    })))
}

/// Ready when the database answers.
pub async fn ready(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    state.engine.store().schema_version().await?;
    Ok("ready\n")
}

/// `POST /api/v1/trigger`: a run started by hand for a repository ref.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerRequest {
    /// `github`, `gitlab` or `gitea`.
    pub forge: String,
    /// `owner/name`.
    pub repository: String,
    pub clone_url: String,
    /// A branch, a tag, or a full ref (`refs/heads/main`).
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// The commit to run; default: what the ref points at now.
    pub sha: Option<String>,
}

pub async fn trigger(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(req): Json<TriggerRequest>,
) -> Result<(http::StatusCode, Json<Value>), ApiError> {
    authorize(&state, &headers)?;
    let forge = forge_kind(&req.forge)?;
    // Checked before git is asked anything about it.
    let bad = |e: gantry_forge::ParseError| ApiError::BadRequest(e.to_string());
    gantry_forge::admit::repo_name(&req.repository).map_err(bad)?;
    gantry_forge::admit::clone_url(&req.clone_url).map_err(bad)?;
    let repo = gantry_core::RepoRef {
        forge,
        full_name: req.repository.clone(),
        clone_url: req.clone_url.clone(),
        web_url: None,
        default_branch: None,
    };
    let (git_ref, sha) = match &req.sha {
        Some(sha) => {
            let full = if req.git_ref.starts_with("refs/") {
                req.git_ref.clone()
            } else {
                format!("refs/heads/{}", req.git_ref)
            };
            (full, sha.clone())
        }
        None => state
            .git
            .resolve_ref(&repo, &req.git_ref)
            .await
            .map_err(|e| ApiError::BadRequest(e.to_string()))?,
    };
    let mut trigger = gantry_core::Trigger::new(Event::Manual, repo, git_ref, sha);
    gantry_forge::admit::trigger(&mut trigger).map_err(bad)?;
    let sha = trigger.sha.clone();
    let source = state.sources.get(&forge).ok_or_else(|| {
        ApiError::BadRequest(format!("no way to read {forge} repositories is configured"))
    })?;
    let files = source.pipelines(&trigger.repo, &sha).await.map_err(|e| {
        ApiError::BadRequest(format!("cannot read the pipeline files at {sha}: {e}"))
    })?;
    if files.is_empty() {
        return Err(ApiError::BadRequest(format!(
            "no pipeline at {sha}: expected .gantry.yaml or .gantry/*.yaml"
        )));
    }
    let runs = state.engine.trigger_manual(trigger, files).await?;
    Ok((http::StatusCode::CREATED, Json(json!({ "runs": runs }))))
}

fn forge_kind(name: &str) -> Result<ForgeKind, ApiError> {
    match name {
        "github" => Ok(ForgeKind::Github),
        "gitlab" => Ok(ForgeKind::Gitlab),
        "gitea" | "forgejo" => Ok(ForgeKind::Gitea),
        _ => Err(ApiError::NotFound(format!(
            "no forge `{name}`: expected github, gitlab or gitea"
        ))),
    }
}
