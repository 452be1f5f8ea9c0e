//! The web viewer: runs list, run page (the job graph), job page (steps and their logs).
//!
//! Pages are rendered here; `assets/gantry.js` (plain JavaScript, no build step) loads log
//! pages from the JSON API, follows running steps over SSE, renders ANSI colours, and sends
//! cancel and retry with the token the user signed in with. The log lines a page shows itself
//! (the last lines of a failed step on the run page) are read from the same log store as the
//! API's, masked when they were stored, and escaped here.

mod graph;
mod html;
mod log;

use std::collections::BTreeMap;
use std::fmt::Write as _;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use gantry_core::{Job, JobId, RunId, State as RunState, Step};
use gantry_store::{Page, RunFilter, RunRecord};
use http::{HeaderMap, StatusCode, header};
use serde::Deserialize;

use crate::AppState;
use crate::views::commit_url;
use html::{badge, esc, live_duration, mark, page, q, time};

const CSS: &str = include_str!("assets/gantry.css");
const JS: &str = include_str!("assets/gantry.js");
const PAGE_SIZE: u32 = 25;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/runs") }))
        .route("/runs", get(runs_page))
        .route("/runs/{id}", get(run_page))
        .route("/runs/{id}/jobs/{job}", get(job_page))
        .route(
            "/assets/gantry.css",
            get(|| async { asset("text/css", CSS) }),
        )
        .route(
            "/assets/gantry.js",
            get(|| async { asset("text/javascript", JS) }),
        )
}

/// Pages ask for `/assets/NAME?v=<digest of the file>`: a new Gantry's pages name new URLs, so a
/// browser never runs an old script against a new API, and the files can be cached for good.
fn asset(kind: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, format!("{kind}; charset=utf-8")),
            (
                header::CACHE_CONTROL,
                "public, max-age=31536000, immutable".to_owned(),
            ),
        ],
        body,
    )
        .into_response()
}

/// The first 16 hex digits of the SHA-256 of `body`, computed once per asset.
fn version(cell: &'static std::sync::OnceLock<String>, body: &str) -> &'static str {
    cell.get_or_init(|| {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(body.as_bytes());
        digest[..8].iter().map(|b| format!("{b:02x}")).collect()
    })
}

/// `/assets/gantry.css?v=…` and `/assets/gantry.js?v=…`, as pages link them.
pub(crate) fn asset_urls() -> (String, String) {
    static CSS_V: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    static JS_V: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    (
        format!("/assets/gantry.css?v={}", version(&CSS_V, CSS)),
        format!("/assets/gantry.js?v={}", version(&JS_V, JS)),
    )
}

/// A page, or the sign-in page when reads need the token and none came with the request.
fn guard(state: &AppState, headers: &HeaderMap) -> Option<Response> {
    if !state.private_reads || crate::api::has_read_token(state, headers) {
        return None;
    }
    let body = r#"<section class="card"><h1>Sign in</h1>
<p>This Gantry keeps its runs private: sign in with the API token (the button above) to see them.</p></section>"#;
    Some((StatusCode::UNAUTHORIZED, page("Sign in", body)).into_response())
}

fn error_page(status: StatusCode, message: &str) -> Response {
    let body = format!(
        r#"<section class="card"><h1>{}</h1><p>{}</p></section>"#,
        status,
        esc(message)
    );
    (status, page(status.as_str(), &body)).into_response()
}

fn internal(err: impl std::fmt::Display) -> Response {
    tracing::error!(error = %err, "a viewer page failed");
    error_page(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Something went wrong; the server log says what.",
    )
}

#[derive(Debug, Default, Deserialize)]
pub struct RunsQuery {
    pub repository: Option<String>,
    pub branch: Option<String>,
    pub status: Option<String>,
    pub before: Option<String>,
}

fn non_empty(s: &Option<String>) -> Option<String> {
    s.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// Where a run was built: branch, tag or pull request.
fn what(r: &RunRecord) -> String {
    let t = &r.run.trigger;
    if let Some(pr) = &t.pull_request {
        format!("PR #{}", pr.number)
    } else if let Some(b) = &t.branch {
        b.clone()
    } else if let Some(tag) = &t.tag {
        format!("tag {tag}")
    } else {
        t.git_ref.clone()
    }
}

fn commit_html(r: &RunRecord, with_message: bool) -> String {
    let t = &r.run.trigger;
    let short: String = t.sha.chars().take(8).collect();
    let sha = match commit_url(&t.repo, &t.sha) {
        Some(url) => format!(
            r#"<a class="sha" href="{}" rel="noopener" title="the commit on the forge">{}</a>"#,
            esc(&url),
            esc(&short)
        ),
        None => format!(r#"<code class="sha">{}</code>"#, esc(&short)),
    };
    let message = t
        .message
        .as_deref()
        .and_then(|m| m.lines().next())
        .filter(|_| with_message)
        .map(|m| format!(r#" <span class="msg">{}</span>"#, esc(m)))
        .unwrap_or_default();
    format!("{sha}{message}")
}

async fn runs_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(qs): Query<RunsQuery>,
) -> Response {
    if let Some(r) = guard(&state, &headers) {
        return r;
    }
    let status = non_empty(&qs.status);
    let states = match status.as_deref().map(str::parse::<RunState>).transpose() {
        Ok(s) => s.into_iter().collect(),
        Err(e) => return error_page(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let before = match non_empty(&qs.before)
        .map(|b| b.parse::<RunId>())
        .transpose()
    {
        Ok(b) => b,
        Err(_) => return error_page(StatusCode::BAD_REQUEST, "`before` is not a run id"),
    };
    let filter = RunFilter {
        repo: non_empty(&qs.repository),
        branch: non_empty(&qs.branch),
        states,
        ..RunFilter::default()
    };
    let runs = match state
        .engine
        .list_runs(
            &filter,
            Page {
                limit: PAGE_SIZE,
                before,
            },
        )
        .await
    {
        Ok(r) => r,
        Err(e) => return internal(e),
    };
    let mut body = String::new();
    let repo_v = esc(filter.repo.as_deref().unwrap_or(""));
    let branch_v = esc(filter.branch.as_deref().unwrap_or(""));
    let _ = write!(
        body,
        r#"<h1>Runs</h1>
<form class="filters" method="get" action="/runs">
<label>Repository <input name="repository" value="{repo_v}" placeholder="owner/name"></label>
<label>Branch <input name="branch" value="{branch_v}" placeholder="main"></label>
<label>Status <select name="status"><option value="">any</option>"#
    );
    for s in RunState::ALL {
        let sel = if status.as_deref() == Some(s.as_str()) {
            " selected"
        } else {
            ""
        };
        let _ = write!(body, r#"<option{sel}>{}</option>"#, s.as_str());
    }
    body.push_str(r#"</select></label><button type="submit">Filter</button></form>"#);
    if runs.is_empty() {
        body.push_str(r#"<p class="empty">No runs match.</p>"#);
    } else {
        body.push_str(
            r#"<table class="runs"><thead><tr><th>Status</th><th>Run</th><th>Branch / PR</th><th>Commit</th><th>Author</th><th>Event</th><th>Duration</th><th>Created</th></tr></thead><tbody>"#,
        );
        for r in &runs {
            let id = r.run.id.to_string();
            let t = &r.run.trigger;
            let worst = worst_of_cancelled(&state, r).await;
            let _ = write!(
                body,
                r#"<tr class="run" data-run="{id}"><td data-label="Status">{badge}{worst}</td><td data-label="Run"><a class="run-link" href="/runs/{id}">{name} <span class="num">#{number}</span></a><div class="sub">{repo}</div></td><td data-label="Branch">{what}</td><td data-label="Commit" class="commit">{commit}</td><td data-label="Author">{author}</td><td data-label="Event">{event}</td><td data-label="Duration">{dur}</td><td data-label="Created">{created}</td></tr>"#,
                badge = badge(r.run.state, &id),
                name = esc(&r.name),
                number = r.number,
                repo = esc(&t.repo.full_name),
                what = esc(&what(r)),
                commit = commit_html(r, true),
                author = esc(t.actor.as_deref().unwrap_or("")),
                event = t.event,
                dur = live_duration(r.run.started_at, r.run.finished_at, &id),
                created = time(r.run.created_at),
            );
        }
        body.push_str("</tbody></table>");
    }
    let mut keep = String::new();
    for (k, v) in [
        ("repository", &filter.repo),
        ("branch", &filter.branch),
        ("status", &status),
    ] {
        if let Some(v) = v {
            let _ = write!(keep, "&{k}={}", q(v));
        }
    }
    body.push_str(r#"<nav class="pager">"#);
    if before.is_some() {
        let _ = write!(
            body,
            r#"<a href="/runs?{}">← Newest</a>"#,
            keep.trim_start_matches('&')
        );
    }
    if runs.len() as u32 == PAGE_SIZE
        && let Some(last) = runs.last()
    {
        let _ = write!(
            body,
            r#"<a rel="next" href="/runs?before={}{keep}">Older →</a>"#,
            last.run.id
        );
    }
    body.push_str("</nav>");
    page("Runs", &body).into_response()
}

/// The latest attempt of each job, in plan order, with every attempt by name.
fn latest_attempts(r: &RunRecord) -> (Vec<&Job>, BTreeMap<&str, Vec<&Job>>) {
    let mut by_name: BTreeMap<&str, Vec<&Job>> = BTreeMap::new();
    let mut order: Vec<&str> = Vec::new();
    for j in &r.run.jobs {
        if !by_name.contains_key(j.name.as_str()) {
            order.push(&j.name);
        }
        by_name.entry(&j.name).or_default().push(j);
    }
    for attempts in by_name.values_mut() {
        attempts.sort_by_key(|j| j.attempt);
    }
    let latest = order
        .iter()
        .filter_map(|n| by_name.get(n).and_then(|a| a.last().copied()))
        .collect();
    (latest, by_name)
}

/// The run's title and facts. On a job page the facts are folded (`facts_open` false) so the
/// job's log comes first on a small screen.
fn run_header(r: &RunRecord, extra: &str, facts_open: bool) -> String {
    let t = &r.run.trigger;
    let id = r.run.id.to_string();
    let mut out = String::new();
    let short: String = t.sha.chars().take(8).collect();
    let _ = write!(
        out,
        r#"<section class="card run-head" data-run="{id}" data-final="{fin}">
<div class="title">{badge}<h1><a href="/runs/{id}">{name} <span class="num">#{number}</span></a></h1></div>
<details class="facts-box"{open}><summary>{repo} · {what} · <code>{short}</code></summary>
<dl class="facts">
<div><dt>Repository</dt><dd>{repo}</dd></div>
<div><dt>Branch / PR</dt><dd>{what}</dd></div>
<div><dt>Commit</dt><dd class="commit">{commit}</dd></div>
<div><dt>Author</dt><dd>{author}</dd></div>
<div><dt>Event</dt><dd>{event}</dd></div>
<div><dt>Duration</dt><dd>{dur}</dd></div>
<div><dt>Created</dt><dd>{created}</dd></div>
</dl></details>"#,
        open = if facts_open { " open" } else { "" },
        number = r.number,
        short = esc(&short),
        fin = r.run.state.is_final(),
        badge = badge(r.run.state, &id),
        name = esc(&r.name),
        repo = esc(&t.repo.full_name),
        what = esc(&what(r)),
        commit = commit_html(r, true),
        author = esc(t.actor.as_deref().unwrap_or("—")),
        event = t.event,
        dur = live_duration(r.run.started_at, r.run.finished_at, &id),
        created = time(r.run.created_at),
    );
    if let Some(reason) = &r.reason {
        let _ = write!(out, r#"<p class="reason">{}</p>"#, esc(reason));
    }
    out.push_str(extra);
    out.push_str("</section>");
    out
}

fn action(url: &str, label: &str, class: &str) -> String {
    format!(
        r#"<button type="button" class="action auth-only {class}" data-action="{url}" hidden>{label}</button>"#,
        url = esc(url),
    )
}

async fn load_run(state: &AppState, id: &str) -> Result<RunRecord, Box<Response>> {
    let id: RunId = id
        .parse()
        .map_err(|_| Box::new(error_page(StatusCode::NOT_FOUND, "No such run.")))?;
    match state.engine.get_run(id).await {
        Ok(Some(r)) => Ok(r),
        Ok(None) => Err(Box::new(error_page(StatusCode::NOT_FOUND, "No such run."))),
        Err(e) => Err(Box::new(internal(e))),
    }
}

async fn run_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Some(r) = guard(&state, &headers) {
        return r;
    }
    let r = match load_run(&state, &id).await {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    let run_id = r.run.id.to_string();
    let mut actions = String::from(r#"<div class="actions">"#);
    if !r.run.state.is_final() {
        actions.push_str(&action(
            &format!("/api/v1/runs/{run_id}/cancel"),
            "Cancel run",
            "danger",
        ));
    } else if !r.run.state.is_success() {
        actions.push_str(&action(
            &format!("/api/v1/runs/{run_id}/retry"),
            "Retry run",
            "",
        ));
    }
    actions.push_str("</div>");
    let (latest, attempts) = latest_attempts(&r);
    let mut body = run_header(&r, &actions, true);
    let _ = write!(
        body,
        r#"<section class="card"><h2>Jobs</h2><div class="graph-wrap">{}</div></section>"#,
        graph::svg(&run_id, &latest)
    );
    body.push_str(r#"<section class="card"><h2>Steps</h2><ul class="jobs">"#);
    for job in &latest {
        let jid = job.id.to_string();
        let queue = match (job.state, state.engine.queue_position(job.id).await) {
            (RunState::Queued, Ok(Some(p))) => {
                format!(r#" <span class="queue">#{p} in queue</span>"#)
            }
            _ => String::new(),
        };
        let _ = write!(
            body,
            r#"<li class="job" data-job="{jid}"><div class="job-head">{badge}<a href="/runs/{run_id}/jobs/{jid}">{name}</a>{queue} {dur}</div>"#,
            badge = badge(job.state, &jid),
            name = esc(&job.name),
            dur = live_duration(job.started_at, job.finished_at, &jid),
        );
        body.push_str(&why(&state, job).await);
        if let Some(all) = attempts.get(job.name.as_str())
            && all.len() > 1
        {
            body.push_str(r#"<div class="attempts">Attempts: "#);
            for a in all {
                let _ = write!(
                    body,
                    r#"<a href="/runs/{run_id}/jobs/{jid}?attempt={n}" class="s-{s}">{n} ({s})</a> "#,
                    n = a.attempt,
                    s = a.state.as_str()
                );
            }
            body.push_str("</div>");
        }
        body.push_str(r#"<ol class="steps">"#);
        for s in &job.steps {
            let of = format!("{jid}:{}", s.index);
            let _ = write!(
                body,
                r#"<li>{mark}<a href="/runs/{run_id}/jobs/{jid}?step={i}">{name}</a> {dur}</li>"#,
                mark = mark(s.state, &of),
                i = s.index,
                name = esc(&s.name),
                dur = live_duration(s.started_at, s.finished_at, &of),
            );
        }
        body.push_str("</ol>");
        body.push_str(&summaries(&jid, &job.steps));
        body.push_str("</li>");
    }
    body.push_str("</ul></section>");
    page(
        &format!(
            "{} #{} · {}",
            r.name, r.number, r.run.trigger.repo.full_name
        ),
        &body,
    )
    .into_response()
}

/// How many lines of a failed step the run page shows.
const WHY_LINES: usize = 5;

/// Why a job ended as it did, under its name on the run page: the step that failed it with its
/// exit code and its last lines, or the job's reason (why it was skipped or cancelled, a
/// timeout). Empty for a job that succeeded or has not ended.
async fn why(state: &AppState, job: &Job) -> String {
    if !job.state.is_final() || job.state == RunState::Success {
        return String::new();
    }
    let failed = job
        .steps
        .iter()
        .find(|s| matches!(s.state, RunState::Failure | RunState::Error));
    let mut out = String::from(r#"<div class="why">"#);
    if let Some(s) = failed {
        let _ = write!(
            out,
            r#"<p class="why-step">Step <b>{name}</b> failed: {outcome}</p>"#,
            name = esc(&s.name),
            outcome = esc(&outcome_text(s)),
        );
        let lines = last_lines(state, job, s.index, WHY_LINES).await;
        if !lines.is_empty() {
            let _ = write!(
                out,
                r#"<pre class="log-tail" aria-label="the last lines of {name}">{lines}</pre>"#,
                name = esc(&s.name),
                lines = esc(&lines.join("\n")),
            );
        }
    }
    if let Some(reason) = job.reason.as_deref().filter(|r| !r.is_empty())
        && failed.is_none_or(|s| s.reason.as_deref() != Some(reason) && !reason.contains(&s.name))
    {
        let _ = write!(out, r#"<p class="why-reason">{}</p>"#, esc(reason));
    }
    out.push_str("</div>");
    if out == r#"<div class="why"></div>"# {
        return String::new();
    }
    out
}

/// The last `n` lines of a step's log as plain text (colours and other escapes removed);
/// empty when the log cannot be read (the page says what it can without it).
async fn last_lines(state: &AppState, job: &Job, step: usize, n: usize) -> Vec<String> {
    let key = gantry_logs::StepKey::new(job.id, job.attempt, step);
    let Ok(progress) = state.logs.progress(key).await else {
        return Vec::new();
    };
    let from = progress.lines.saturating_sub(n as u64) + 1;
    match state.logs.read(key, from, n).await {
        Ok(page) => page
            .lines
            .iter()
            .map(|l| anstream::adapter::strip_str(&l.text).to_string())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// For a cancelled run whose jobs did worse before it was cancelled: "✘ 1 job failed".
async fn worst_of_cancelled(state: &AppState, r: &RunRecord) -> String {
    if r.run.state != RunState::Cancelled {
        return String::new();
    }
    let Ok(Some(full)) = state.engine.get_run(r.run.id).await else {
        return String::new();
    };
    let (latest, _) = latest_attempts(&full);
    let failed = latest
        .iter()
        .filter(|j| matches!(j.state, RunState::Failure | RunState::Error))
        .count();
    if failed == 0 {
        return String::new();
    }
    format!(
        r#"<div class="worst s-failure">{icon} {failed} job{s} failed</div>"#,
        icon = html::icon(RunState::Failure),
        s = if failed == 1 { "" } else { "s" },
    )
}

/// The steps of a job that said what they produced, as `<dl class="summaries">` (step name,
/// then its summary, line breaks kept by the style sheet). Empty and hidden when none did: the
/// page script adds a step's entry when it ends with a summary while the page is open.
fn summaries(jid: &str, steps: &[Step]) -> String {
    let mut out = String::new();
    let mut any = false;
    for s in steps {
        let Some(summary) = s.summary.as_deref().filter(|t| !t.is_empty()) else {
            continue;
        };
        any = true;
        let _ = write!(
            out,
            r#"<div data-step="{i}"><dt>{name}</dt><dd data-summary-of="{jid}:{i}">{text}</dd></div>"#,
            i = s.index,
            name = esc(&s.name),
            text = esc(summary),
        );
    }
    format!(
        r#"<dl class="summaries" data-summaries-of="{jid}"{hidden}>{out}</dl>"#,
        hidden = if any { "" } else { " hidden" },
    )
}

/// How a failed step failed, for its row on the job page: "exit code 3 · timed out after 5m".
/// Empty (and hidden) for a step that did not fail; the page script fills it when one does.
fn outcome(s: &Step, of: &str) -> String {
    let text = outcome_text(s);
    format!(
        r#" <span class="step-outcome" data-outcome-of="{of}"{hidden}>{text}</span>"#,
        of = esc(of),
        hidden = if text.is_empty() { " hidden" } else { "" },
        text = esc(&text),
    )
}

/// Kept the same as `outcomeText` in gantry.js, which updates it live.
fn outcome_text(s: &Step) -> String {
    if !matches!(s.state, RunState::Failure | RunState::Error) {
        return String::new();
    }
    let mut parts = Vec::new();
    if let Some(code) = s.exit_code {
        parts.push(format!("exit code {code}"));
    }
    if let Some(reason) = s.reason.as_deref().filter(|r| !r.is_empty()) {
        parts.push(reason.to_owned());
    }
    parts.join(" · ")
}

/// The last [`log::FIRST_PAGE`] lines of a step as rows, with a line that says where the log
/// ends or that more is coming.
async fn first_page(state: &AppState, job: &Job, step: usize, log: &str) -> String {
    let key = gantry_logs::StepKey::new(job.id, job.attempt, step);
    let Ok(progress) = state.logs.progress(key).await else {
        return String::new();
    };
    let from = progress.lines.saturating_sub(log::FIRST_PAGE as u64) + 1;
    let Ok(page) = state.logs.read(key, from, log::FIRST_PAGE).await else {
        return String::new();
    };
    let mut out = String::new();
    if from > 1 {
        let _ = write!(
            out,
            r#"<div class="status-line">Lines {from}–{total} of {total}; <a href="{raw}/raw">the whole log</a></div>"#,
            total = progress.lines,
            raw = esc(log),
        );
    }
    out.push_str(&log::rows(&page.lines, step, job.attempt));
    let end = match (progress.closed, progress.lines) {
        (false, _) => "More lines are coming (the page adds them as they arrive).".to_owned(),
        (true, 0) => "No output.".to_owned(),
        (true, 1) => "End of log (1 line).".to_owned(),
        (true, n) => format!("End of log ({n} lines)."),
    };
    let _ = write!(
        out,
        r#"<div class="tail"><div class="status-line">{end}</div></div>"#
    );
    out
}

/// The run's jobs beside a job's log (below it on a phone), this one marked as the page's.
fn job_list(r: &RunRecord, current: &Job) -> String {
    let run_id = r.run.id.to_string();
    let (latest, _) = latest_attempts(r);
    let mut out =
        String::from(r#"<nav class="card job-list" aria-label="the run's jobs"><h2>Jobs</h2><ul>"#);
    for j in latest {
        let jid = j.id.to_string();
        let here = if j.id == current.id {
            r#" aria-current="page""#
        } else {
            ""
        };
        let _ = write!(
            out,
            r#"<li>{mark}<a href="/runs/{run_id}/jobs/{jid}"{here}>{name}</a> {dur}</li>"#,
            mark = mark(j.state, &jid),
            name = esc(&j.name),
            dur = live_duration(j.started_at, j.finished_at, &jid),
        );
    }
    out.push_str("</ul></nav>");
    out
}

#[derive(Debug, Default, Deserialize)]
pub struct JobQuery {
    pub attempt: Option<u32>,
    pub step: Option<usize>,
}

async fn job_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((id, job)): Path<(String, String)>,
    Query(qs): Query<JobQuery>,
) -> Response {
    if let Some(r) = guard(&state, &headers) {
        return r;
    }
    let r = match load_run(&state, &id).await {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    let Ok(job_id) = job.parse::<JobId>() else {
        return error_page(StatusCode::NOT_FOUND, "No such job.");
    };
    let attempts: Vec<&Job> = {
        let mut a: Vec<&Job> = r.run.jobs.iter().filter(|j| j.id == job_id).collect();
        a.sort_by_key(|j| j.attempt);
        a
    };
    let job = match qs.attempt {
        Some(n) => attempts.iter().find(|j| j.attempt == n).copied(),
        None => attempts.last().copied(),
    };
    let Some(job) = job else {
        return error_page(StatusCode::NOT_FOUND, "No such job attempt in this run.");
    };
    let run_id = r.run.id.to_string();
    let jid = job.id.to_string();
    let mut extra = String::new();
    let queue = match (job.state, state.engine.queue_position(job.id).await) {
        (RunState::Queued, Ok(Some(p))) => format!(r#" <span class="queue">#{p} in queue</span>"#),
        _ => String::new(),
    };
    let _ = write!(
        extra,
        r#"<div class="job-title">{badge}<h2>{name}</h2>{queue} {dur}</div>"#,
        badge = badge(job.state, &jid),
        name = esc(&job.name),
        dur = live_duration(job.started_at, job.finished_at, &jid),
    );
    if let Some(reason) = &job.reason {
        let _ = write!(extra, r#"<p class="reason">{}</p>"#, esc(reason));
    }
    if attempts.len() > 1 {
        extra.push_str(r#"<nav class="attempts">Attempts: "#);
        for a in &attempts {
            let current = if a.attempt == job.attempt {
                r#" aria-current="page""#
            } else {
                ""
            };
            let _ = write!(
                extra,
                r#"<a href="/runs/{run_id}/jobs/{jid}?attempt={n}" class="s-{s}"{current}>{n} ({s})</a> "#,
                n = a.attempt,
                s = a.state.as_str()
            );
        }
        extra.push_str("</nav>");
    }
    extra.push_str(r#"<div class="actions">"#);
    let latest = attempts.last().is_some_and(|l| l.attempt == job.attempt);
    if !job.state.is_final() {
        extra.push_str(&action(
            &format!("/api/v1/jobs/{jid}/cancel"),
            "Cancel job",
            "danger",
        ));
    } else if latest && !job.state.is_success() {
        extra.push_str(&action(
            &format!("/api/v1/jobs/{jid}/retry"),
            "Retry job",
            "",
        ));
    }
    extra.push_str("</div>");
    let mut body = run_header(&r, &extra, false);
    body.push_str(r#"<div class="job-layout">"#);
    let selected = qs.step.or_else(|| {
        job.steps
            .iter()
            .find(|s| s.state == RunState::Running)
            .or_else(|| {
                job.steps
                    .iter()
                    .find(|s| matches!(s.state, RunState::Failure | RunState::Error))
            })
            .or_else(|| {
                // A job that ended well opens its last step that ran: where its output ends.
                job.steps
                    .iter()
                    .rev()
                    .find(|s| s.state.is_final() && s.started_at.is_some())
                    .filter(|_| job.state.is_final())
            })
            .map(|s| s.index)
    });
    let _ = write!(
        body,
        r#"<section class="card steps-card" id="steps" data-job="{jid}" data-attempt="{a}" data-run="{run_id}" data-selected="{sel}"><h2>Steps</h2>"#,
        a = job.attempt,
        sel = selected.map(|s| s.to_string()).unwrap_or_default(),
    );
    for s in &job.steps {
        let of = format!("{jid}:{}", s.index);
        let log = format!(
            "/api/v1/jobs/{jid}/attempts/{}/steps/{}/log",
            job.attempt, s.index
        );
        // The open step's last lines are in the page: it reads without the script.
        let (open, first_page) = if selected == Some(s.index) {
            (" open", first_page(&state, job, s.index, &log).await)
        } else {
            ("", String::new())
        };
        let _ = write!(
            body,
            r#"<details class="step" id="step-{i}" data-step="{i}" data-log="{log}" data-state="{st}"{open}>
<summary>{mark}<span class="step-name">{name}</span> {dur}{outcome}</summary>
<div class="log-tools">
<label class="follow"><input type="checkbox" class="follow-toggle" checked> Follow</label>
<label class="times"><input type="checkbox" class="times-toggle"> Times</label>
<form class="search" role="search"><input type="search" name="q" placeholder="Search this log" aria-label="Search this log"><button type="submit">Search</button></form>
<a class="raw" href="{log}/raw" target="_blank" rel="noopener">Raw</a>
</div>
<div class="search-results" hidden></div>
<div class="log" role="log" aria-live="off">{first_page}</div>
</details>"#,
            i = s.index,
            st = s.state.as_str(),
            mark = mark(s.state, &of),
            name = esc(&s.name),
            dur = live_duration(s.started_at, s.finished_at, &of),
            outcome = outcome(s, &of),
        );
        // After the step's box, not in its <summary>: shown while the step is closed, and
        // selectable (a digest to copy) without a click that toggles the step.
        let summary = s.summary.as_deref().unwrap_or("");
        let _ = write!(
            body,
            r#"<div class="step-summary" role="note" aria-label="what {name} produced" data-summary-of="{of}"{hidden}>{text}</div>"#,
            of = esc(&of),
            name = esc(&s.name),
            hidden = if summary.is_empty() { " hidden" } else { "" },
            text = esc(summary),
        );
    }
    body.push_str("</section>");
    body.push_str(&job_list(&r, job));
    body.push_str("</div>");
    page(&format!("{} · {}", job.name, r.name), &body).into_response()
}
