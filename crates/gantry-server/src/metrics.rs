//! What operators watch: `/metrics` (the OpenMetrics text format, which Prometheus scrapes) and
//! `/readyz` (the database, and Kubernetes when configured, answer).
//!
//! [`Metrics`] is one registry, cheap to clone. It is fed from three places:
//!
//! - the engine, through [`gantry_engine::Observer`]: runs and jobs by state, queue wait, job
//!   duration, pod start latency, log lines and bytes, commit statuses by result;
//! - the webhook route, by a middleware that reads each answer: deliveries by forge and result;
//! - the Kubernetes client, by a tower layer ([`Metrics::kube_layer`]): API requests by verb,
//!   resource and HTTP code.
//!
//! The queue depth and the running jobs are read from the store at scrape time, so every
//! replica reports the same (shared) queue.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Extension;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use gantry_core::{ForgeKind, State as JobState};
use http::{StatusCode, header};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::AppState;
use crate::storage::Storage;

/// The content type of the OpenMetrics text format.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How long `/readyz` waits for one dependency.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// A dependency `/readyz` asks (Kubernetes, when it runs the jobs).
#[async_trait::async_trait]
pub trait Probe: Send + Sync + 'static {
    /// What it is, for `/readyz`'s answer: `kubernetes`.
    fn name(&self) -> &'static str;
    /// `Err` with the reason (logged, not shown to the client) when it does not answer.
    async fn check(&self) -> Result<(), String>;
}

/// What the operations routes need besides the [`crate::App`].
#[derive(Clone, Default)]
pub struct Ops {
    pub metrics: Metrics,
    /// Dependencies `/readyz` checks besides the database.
    pub probes: Vec<Arc<dyn Probe>>,
}

impl fmt::Debug for Ops {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ops")
            .field(
                "probes",
                &self.probes.iter().map(|p| p.name()).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabels {
    forge: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    forge: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KubeLabels {
    verb: String,
    resource: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PlanningLabels {
    outcome: String,
    cause: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SiteLabels {
    site: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabels {
    target: String,
}

struct Inner {
    registry: Registry,
    deliveries: Family<DeliveryLabels, Counter>,
    runs_created: Counter,
    runs_finished: Family<StateLabels, Counter>,
    jobs_finished: Family<StateLabels, Counter>,
    job_duration: Family<StateLabels, Histogram>,
    queue_wait: Histogram,
    queue_depth: Gauge,
    jobs_running: Gauge,
    pod_start: Histogram,
    log_lines: Counter,
    log_bytes: Counter,
    status_reports: Family<StatusLabels, Counter>,
    kube_requests: Family<KubeLabels, Counter>,
    engine_active: Gauge,
    storage_failures: Family<TargetLabels, Counter>,
    planning_failures: Family<PlanningLabels, Counter>,
    faults_injected: Family<SiteLabels, Gauge>,
    storage: Storage,
}

/// Gantry's metrics. Clones share one registry.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Seconds, from 0.1 s to about 3.6 hours: queue waits and job durations.
fn long_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.1, 2.0, 18))
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("gantry");
        let deliveries = Family::<DeliveryLabels, Counter>::default();
        registry.register(
            "webhook_deliveries",
            "Webhook deliveries by forge and result (accepted, ignored, duplicate, pong, unauthorized, invalid, too_large, unavailable, error)",
            deliveries.clone(),
        );
        let runs_created = Counter::default();
        registry.register(
            "runs_created",
            "Runs created from triggers",
            runs_created.clone(),
        );
        let runs_finished = Family::<StateLabels, Counter>::default();
        registry.register(
            "runs_finished",
            "Runs ended, by final state",
            runs_finished.clone(),
        );
        let jobs_finished = Family::<StateLabels, Counter>::default();
        registry.register(
            "jobs_finished",
            "Job attempts ended, by final state",
            jobs_finished.clone(),
        );
        let job_duration =
            Family::<StateLabels, Histogram>::new_with_constructor(long_buckets as fn() -> _);
        registry.register(
            "job_duration_seconds",
            "How long job attempts ran, from running to their end, by final state",
            job_duration.clone(),
        );
        let queue_wait = long_buckets();
        registry.register(
            "queue_wait_seconds",
            "How long job attempts waited in the queue before they were handed to the backend",
            queue_wait.clone(),
        );
        let queue_depth = Gauge::default();
        registry.register(
            "queue_depth",
            "Job attempts waiting in the queue (read from the store at scrape time)",
            queue_depth.clone(),
        );
        let jobs_running = Gauge::default();
        registry.register(
            "jobs_running",
            "Job attempts handed to the backend and not finished (read from the store at scrape time)",
            jobs_running.clone(),
        );
        let pod_start = Histogram::new(exponential_buckets(0.05, 2.0, 14));
        registry.register(
            "pod_start_latency_seconds",
            "From an attempt handed to the backend (pod created) to its first step running",
            pod_start.clone(),
        );
        let log_lines = Counter::default();
        registry.register("log_lines", "Step log lines stored", log_lines.clone());
        let log_bytes = Counter::default();
        registry.register(
            "log_bytes",
            "Bytes of step log lines stored",
            log_bytes.clone(),
        );
        let status_reports = Family::<StatusLabels, Counter>::default();
        registry.register(
            "status_reports",
            "Commit statuses sent to forges, by result (delivered, retried, dropped)",
            status_reports.clone(),
        );
        let kube_requests = Family::<KubeLabels, Counter>::default();
        registry.register(
            "kubernetes_requests",
            "Kubernetes API requests by verb, resource and HTTP code (`error`: no answer)",
            kube_requests.clone(),
        );
        let engine_active = Gauge::default();
        registry.register(
            "engine_active",
            "1 when this replica runs the engine (the leader, or leader election is off)",
            engine_active.clone(),
        );
        let storage_failures = Family::<TargetLabels, Counter>::default();
        registry.register(
            "storage_write_failures",
            "Writes Gantry could not make, by target: database (a state change or a delivery), logs (a step log line), data_directory (the readiness probe)",
            storage_failures.clone(),
        );
        let planning_failures = Family::<PlanningLabels, Counter>::default();
        registry.register(
            "planning_failures",
            "Failed attempts to plan a delivery, by outcome (retried, failed: the delivery ended) and cause (forge, store, config)",
            planning_failures.clone(),
        );
        let faults_injected = Family::<SiteLabels, Gauge>::default();
        registry.register(
            "faults_injected",
            "Faults injected on purpose (GANTRY_FAULTS, for tests only), by site",
            faults_injected.clone(),
        );
        Self(Arc::new(Inner {
            registry,
            deliveries,
            runs_created,
            runs_finished,
            jobs_finished,
            job_duration,
            queue_wait,
            queue_depth,
            jobs_running,
            pod_start,
            log_lines,
            log_bytes,
            status_reports,
            kube_requests,
            engine_active,
            storage_failures,
            planning_failures,
            faults_injected,
            storage: Storage::default(),
        }))
    }

    /// Whether this replica runs the engine.
    pub fn set_engine_active(&self, active: bool) {
        self.0.engine_active.set(i64::from(active));
    }

    /// Counts one webhook delivery.
    pub fn delivery(&self, forge: &str, result: &str) {
        self.0
            .deliveries
            .get_or_create(&DeliveryLabels {
                forge: forge.to_owned(),
                result: result.to_owned(),
            })
            .inc();
    }

    /// A tower layer for the Kubernetes client's service stack that counts its requests.
    pub fn kube_layer(&self) -> KubeApiLayer {
        KubeApiLayer(self.clone())
    }

    /// The registry in the OpenMetrics text format, after reading the gauges that come from
    /// the store.
    pub async fn render(&self, store: &gantry_store::Store) -> String {
        match store.queue().await {
            Ok(queue) => {
                self.0
                    .queue_depth
                    .set(i64::try_from(queue.len()).unwrap_or(i64::MAX));
            }
            Err(err) => tracing::warn!(error = %err, "metrics: cannot read the queue"),
        }
        match store.running_counts().await {
            Ok((running, _)) => {
                self.0
                    .jobs_running
                    .set(i64::try_from(running).unwrap_or(i64::MAX));
            }
            Err(err) => tracing::warn!(error = %err, "metrics: cannot count running jobs"),
        }
        for (site, n) in gantry_core::inject::injected() {
            self.0
                .faults_injected
                .get_or_create(&SiteLabels {
                    site: site.to_owned(),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.0.registry);
        text
    }
}

fn state_labels(state: JobState) -> StateLabels {
    StateLabels {
        state: state.as_str().to_owned(),
    }
}

impl Metrics {
    /// Whether the data directory and the database can be written (see [`Storage`]).
    pub fn storage(&self) -> &Storage {
        &self.0.storage
    }

    /// A write to `target` failed: counted, and the storage is not writable until a probe
    /// succeeds again.
    pub fn storage_failed(&self, target: &'static str, reason: impl Into<String>) {
        self.0
            .storage_failures
            .get_or_create(&TargetLabels {
                target: target.to_owned(),
            })
            .inc();
        self.0.storage.write_failed(reason);
    }
}

impl gantry_engine::Observer for Metrics {
    fn store_write_failed(&self, error: &str) {
        self.storage_failed(
            "database",
            format!("the database cannot be written: {error}"),
        );
    }

    fn planning_failed(&self, outcome: &'static str, cause: &'static str) {
        self.0
            .planning_failures
            .get_or_create(&PlanningLabels {
                outcome: outcome.to_owned(),
                cause: cause.to_owned(),
            })
            .inc();
    }

    fn log_line_lost(&self, error: &str) {
        self.storage_failed("logs", format!("step logs cannot be written: {error}"));
    }

    fn run_created(&self) {
        self.0.runs_created.inc();
    }

    fn run_finished(&self, state: JobState) {
        self.0
            .runs_finished
            .get_or_create(&state_labels(state))
            .inc();
    }

    fn job_started(&self, waited: Duration) {
        self.0.queue_wait.observe(waited.as_secs_f64());
    }

    fn job_finished(&self, state: JobState, duration: Option<Duration>) {
        let labels = state_labels(state);
        self.0.jobs_finished.get_or_create(&labels).inc();
        if let Some(d) = duration {
            self.0
                .job_duration
                .get_or_create(&labels)
                .observe(d.as_secs_f64());
        }
    }

    fn first_step_started(&self, latency: Duration) {
        self.0.pod_start.observe(latency.as_secs_f64());
    }

    fn log_line(&self, bytes: usize) {
        self.0.log_lines.inc();
        self.0.log_bytes.inc_by(bytes as u64);
    }

    fn status_reported(&self, forge: ForgeKind, result: &'static str) {
        self.0
            .status_reports
            .get_or_create(&StatusLabels {
                forge: forge.as_str().to_owned(),
                result: result.to_owned(),
            })
            .inc();
    }
}

// ---- routes ----

/// `GET /metrics`.
pub(crate) async fn serve(
    State(state): State<AppState>,
    Extension(ops): Extension<Ops>,
) -> Response {
    let text = ops.metrics.render(state.engine.store()).await;
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response()
}

/// `GET /readyz`: 200 when the database (and every probe) answers, 503 naming what did not.
pub(crate) async fn ready(
    State(state): State<AppState>,
    Extension(ops): Extension<Ops>,
) -> Response {
    let mut down: Vec<&'static str> = Vec::new();
    match tokio::time::timeout(PROBE_TIMEOUT, crate::api::ready(State(state))).await {
        Ok(Ok(_)) => {}
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "readyz: the database does not answer");
            down.push("database");
        }
        Err(_) => {
            tracing::warn!("readyz: the database did not answer in time");
            down.push("database");
        }
    }
    let unwritable = ops.metrics.storage().check().await.err();
    if let Some(reason) = &unwritable {
        tracing::warn!(%reason, "readyz: storage cannot be written");
    }
    for probe in &ops.probes {
        match tokio::time::timeout(PROBE_TIMEOUT, probe.check()).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                tracing::warn!(probe = probe.name(), error = %err, "readyz: not reachable");
                down.push(probe.name());
            }
            Err(_) => {
                tracing::warn!(probe = probe.name(), "readyz: did not answer in time");
                down.push(probe.name());
            }
        }
    }
    if down.is_empty() && unwritable.is_none() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        let mut parts = Vec::new();
        if !down.is_empty() {
            parts.push(format!("{} unreachable", down.join(", ")));
        }
        parts.extend(unwritable);
        let text = format!("not ready: {}\n", parts.join("; "));
        (StatusCode::SERVICE_UNAVAILABLE, text).into_response()
    }
}

/// The largest webhook answer the middleware reads to learn the result (they are a few bytes).
const MAX_ANSWER: usize = 64 * 1024;

/// Middleware of `POST /hooks/{forge}`: counts each delivery by forge and by how it was
/// answered. A 2xx answer says what happened in its `status` field.
pub(crate) async fn count_delivery(
    State(metrics): State<Metrics>,
    request: Request,
    next: Next,
) -> Response {
    let forge = match request.uri().path().rsplit('/').next() {
        Some("github") => "github",
        Some("gitlab") => "gitlab",
        Some("gitea" | "forgejo") => "gitea",
        // Not a forge: a 404, not a delivery.
        _ => return next.run(request).await,
    };
    let response = next.run(request).await;
    let status = response.status();
    let (result, response) = if status.is_success() {
        let (parts, body) = response.into_parts();
        match axum::body::to_bytes(body, MAX_ANSWER).await {
            Ok(bytes) => {
                let result = serde_json::from_slice::<serde_json::Value>(&bytes)
                    .ok()
                    .and_then(|v| v.get("status")?.as_str().map(str::to_owned))
                    .unwrap_or_else(|| "accepted".to_owned());
                (result, Response::from_parts(parts, Body::from(bytes)))
            }
            Err(_) => (
                "error".to_owned(),
                StatusCode::INTERNAL_SERVER_ERROR.into_response(),
            ),
        }
    } else {
        let result = match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => "unauthorized",
            StatusCode::PAYLOAD_TOO_LARGE => "too_large",
            StatusCode::SERVICE_UNAVAILABLE => "unavailable",
            s if s.is_client_error() => "invalid",
            _ => "error",
        };
        (result.to_owned(), response)
    };
    metrics.delivery(forge, &result);
    response
}

// ---- the Kubernetes client's layer ----

/// Counts Kubernetes API requests ([`Metrics::kube_layer`]).
#[derive(Clone, Debug)]
pub struct KubeApiLayer(Metrics);

impl<S> tower::Layer<S> for KubeApiLayer {
    type Service = KubeApiService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        KubeApiService {
            inner,
            metrics: self.0.clone(),
        }
    }
}

/// The service [`KubeApiLayer`] wraps around the client's stack.
#[derive(Clone, Debug)]
pub struct KubeApiService<S> {
    inner: S,
    metrics: Metrics,
}

impl<S, B, RB> tower::Service<http::Request<B>> for KubeApiService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let (verb, resource) = classify(request.method(), request.uri());
        let metrics = self.metrics.clone();
        let future = self.inner.call(request);
        Box::pin(async move {
            let result = future.await;
            let code = match &result {
                Ok(response) => response.status().as_u16().to_string(),
                Err(_) => "error".to_owned(),
            };
            metrics
                .0
                .kube_requests
                .get_or_create(&KubeLabels {
                    verb: verb.to_owned(),
                    resource,
                    code,
                })
                .inc();
            result
        })
    }
}

/// The Kubernetes verb and resource of a request, from its method and path:
/// `/api/v1/namespaces/ns/pods/p/log` is `get pods/log`, `GET …/pods?watch=true` is `watch`.
fn classify(method: &http::Method, uri: &http::Uri) -> (&'static str, String) {
    let segments: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
    // After `/api/v1` or `/apis/{group}/{version}`.
    let rest: &[&str] = match segments.as_slice() {
        ["api", _version, rest @ ..] => rest,
        ["apis", _group, _version, rest @ ..] => rest,
        _ => &[],
    };
    let rest = match rest {
        ["namespaces", _ns, inner @ ..] if !inner.is_empty() => inner,
        other => other,
    };
    let (resource, item) = match rest {
        [] => ("other".to_owned(), false),
        [kind] => ((*kind).to_owned(), false),
        [kind, _name] => ((*kind).to_owned(), true),
        [kind, _name, sub, ..] => (format!("{kind}/{sub}"), true),
    };
    let watch = uri
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"));
    let verb = match (method.as_str(), item) {
        _ if watch => "watch",
        ("GET", true) => "get",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => "other",
    };
    (verb, resource)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verb(method: &str, uri: &str) -> (&'static str, String) {
        classify(&method.parse().unwrap(), &uri.parse().unwrap())
    }

    #[test]
    fn kubernetes_requests_are_named_by_verb_and_resource() {
        assert_eq!(
            verb(
                "GET",
                "/api/v1/namespaces/b/pods?labelSelector=x&watch=true"
            ),
            ("watch", "pods".into())
        );
        assert_eq!(
            verb("GET", "/api/v1/namespaces/b/pods"),
            ("list", "pods".into())
        );
        assert_eq!(
            verb("GET", "/api/v1/namespaces/b/pods/p/log?container=c"),
            ("get", "pods/log".into())
        );
        assert_eq!(
            verb("POST", "/api/v1/namespaces/b/secrets"),
            ("create", "secrets".into())
        );
        assert_eq!(
            verb(
                "PUT",
                "/apis/coordination.k8s.io/v1/namespaces/g/leases/gantry"
            ),
            ("update", "leases".into())
        );
        assert_eq!(
            verb("DELETE", "/api/v1/namespaces/b/pods/p"),
            ("delete", "pods".into())
        );
        assert_eq!(verb("GET", "/version"), ("list", "other".into()));
    }

    #[tokio::test]
    async fn the_registry_renders_in_openmetrics_text() {
        let metrics = Metrics::new();
        metrics.delivery("github", "accepted");
        gantry_engine::Observer::log_line(&metrics, 12);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &metrics.0.registry).unwrap();
        assert!(
            text.contains(r#"gantry_webhook_deliveries_total{forge="github",result="accepted"} 1"#),
            "{text}"
        );
        assert!(text.contains("gantry_log_bytes_total 12"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
