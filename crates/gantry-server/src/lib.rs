//! Gantry's HTTP side: webhook intake (`POST /hooks/{forge}`), the JSON API under `/api/v1`
//! (with step logs as pages, raw text and a live SSE follow), the web viewer (server-rendered
//! HTML with a little plain JavaScript, no build step), `/metrics`, `/healthz` and `/readyz`.
//!
//! A webhook is verified over its raw body, parsed, stored durably and answered `202` — planning
//! happens after the answer, in [`intake`], so a slow forge or cluster never makes a delivery
//! time out. `fn app(state) -> Router` lets tests drive the whole router in process.

mod api;
mod error;
mod hooks;
pub mod intake;
pub mod listen;
mod logs_api;
pub mod metrics;
pub mod openapi;
mod storage;
mod viewer;
mod views;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, header};
use axum::routing::{get, post};
use gantry_core::ForgeKind;
use gantry_engine::Engine;
use gantry_forge::WebhookSecrets;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

pub use error::ApiError;
/// The log service the server reads from, for binaries that wire it.
pub use gantry_logs;
pub use intake::PipelineSource;
pub use metrics::{Metrics, Ops, Probe};
pub use storage::Storage;
pub use views::{JobView, RunView, StepView};

/// The largest webhook body accepted (GitHub caps payloads at 25 MB); larger ones get 413.
pub const MAX_WEBHOOK_BODY: usize = 25 * 1024 * 1024;

/// Everything the routes share.
pub struct App {
    pub engine: Engine,
    /// Webhook secrets per forge; a forge without any refuses every delivery.
    pub webhook_secrets: HashMap<ForgeKind, WebhookSecrets>,
    /// How pipeline files are read at a commit, per forge.
    pub sources: HashMap<ForgeKind, PipelineSource>,
    /// The bound on planning's reads of pipeline files, per forge.
    pub forge_reads: intake::ForgeReads,
    /// Git access to any repository by clone URL (changed paths, manual triggers).
    pub git: Arc<gantry_forge::GitReader>,
    /// The bearer token that state-changing API calls must carry. None: they are refused.
    pub api_token: Option<String>,
    /// The viewer's base URL, for links in API answers.
    pub public_url: String,
    /// Step logs: pages, search, raw text and the live follow.
    pub logs: gantry_logs::Logs,
    /// Reads (API and viewer) need the API token too; otherwise they are public.
    pub private_reads: bool,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("forges", &self.webhook_secrets.keys().collect::<Vec<_>>())
            .field("public_url", &self.public_url)
            .finish_non_exhaustive()
    }
}

/// The router's state: one shared [`App`].
#[derive(Clone, Debug)]
pub struct AppState(pub Arc<App>);

impl std::ops::Deref for AppState {
    type Target = App;
    fn deref(&self) -> &App {
        &self.0
    }
}

/// What every answer allows a browser to do with it: the viewer's pages load their script,
/// style sheet and log data from Gantry itself and nothing else — no inline script or style (a
/// log line or commit message that slipped past the escaping could not run), no frames around
/// them, forms posting only here.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
    form-action 'self'; frame-ancestors 'none'";

/// Every route, with the middleware, and metrics of its own (see [`app_with`]).
pub fn app(state: AppState) -> Router {
    app_with(state, Ops::default())
}

/// Every route, with the middleware: tracing, panics turned into 500s, a request timeout, the
/// webhook body limit and the delivery counter; `ops` holds the metrics `/metrics` shows (the
/// engine's observer should be the same) and what `/readyz` checks besides the database.
pub fn app_with(state: AppState, ops: Ops) -> Router {
    let hooks = Router::new()
        .route("/hooks/{forge}", post(hooks::receive))
        .route_layer(axum::middleware::from_fn_with_state(
            ops.metrics.clone(),
            metrics::count_delivery,
        ))
        .layer(DefaultBodyLimit::max(MAX_WEBHOOK_BODY));
    let api = Router::new()
        .route("/api/v1/runs", get(api::list_runs))
        .route("/api/v1/runs/{id}", get(api::get_run))
        .route("/api/v1/runs/{id}/cancel", post(api::cancel_run))
        .route("/api/v1/runs/{id}/retry", post(api::retry_run))
        .route("/api/v1/jobs/{id}/cancel", post(api::cancel_job))
        .route("/api/v1/jobs/{id}/retry", post(api::retry_job))
        .route("/api/v1/deliveries/{forge}/{id}", get(api::get_delivery))
        .route("/api/v1/trigger", post(api::trigger));
    let step_log = "/api/v1/jobs/{job}/attempts/{attempt}/steps/{step}/log";
    let logs = Router::new()
        .route("/api/v1/jobs/{id}", get(logs_api::get_job))
        .route(step_log, get(logs_api::page))
        .route(&format!("{step_log}/search"), get(logs_api::search))
        .route("/api/v1/openapi.json", get(openapi::serve));
    // Long-lived: outside the request timeout (they end on shutdown instead).
    let live = Router::new()
        .route(&format!("{step_log}/follow"), get(logs_api::follow))
        .route(&format!("{step_log}/raw"), get(logs_api::raw));
    let health = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(metrics::ready))
        .route("/metrics", get(metrics::serve));
    Router::new()
        .merge(hooks)
        .merge(api)
        .merge(logs)
        .merge(viewer::routes())
        .merge(health)
        .layer(TimeoutLayer::with_status_code(
            http::StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(30),
        ))
        .merge(live)
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ))
        .layer(CatchPanicLayer::custom(error::panic_response))
        .layer(TraceLayer::new_for_http())
        .layer(axum::Extension(ops))
        .with_state(state)
}
