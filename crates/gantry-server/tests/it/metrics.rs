//! `/metrics` after a run: a signed push webhook goes through intake, the engine and a fake
//! backend; the scrape shows the counters moved. `/readyz` names what is unreachable.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use gantry_core::fake::{FakeBackend, FakeForge};
use gantry_core::{Forge, ForgeKind, State};
use gantry_engine::{Engine, EngineConfig, Logs, RunFilter};
use gantry_server::{App, AppState, Metrics, Ops, PipelineSource, Probe};
use http::{Request, StatusCode};
use serde_json::json;
use tower::ServiceExt;

const SECRET: &str = "metrics-secret";
const SHA: &str = "89abcdef0123456789abcdef0123456789abcdef";
const PIPELINE: &str =
    "on: { push: {} }\njobs:\n  test:\n    steps:\n      - run: echo one\n      - run: echo two\n";

struct Down;

#[async_trait::async_trait]
impl Probe for Down {
    fn name(&self) -> &'static str {
        "kubernetes"
    }
    async fn check(&self) -> Result<(), String> {
        Err("connection refused".into())
    }
}

fn push_body() -> String {
    json!({
        "ref": "refs/heads/main", "before": "0000000000000000000000000000000000000000", "after": SHA,
        "created": false, "deleted": false, "forced": false,
        "commits": [{ "id": SHA, "message": "m", "added": [], "removed": [], "modified": ["a"] }],
        "head_commit": { "id": SHA, "message": "m", "added": [], "removed": [], "modified": ["a"] },
        "repository": { "full_name": "acme/app", "name": "app", "clone_url": "https://git.example/acme/app.git",
                        "html_url": "https://git.example/acme/app", "default_branch": "main", "owner": { "login": "acme" } },
        "pusher": { "name": "dev" }, "sender": { "login": "dev" }
    })
    .to_string()
}

fn delivery(id: &str, body: &str, secret: &str) -> Request<Body> {
    let signature = gantry_forge::hmac_sha256_hex_of(secret.as_bytes(), body.as_bytes());
    Request::post("/hooks/github")
        .header("content-type", "application/json")
        .header("x-github-event", "push")
        .header("x-github-delivery", id)
        .header("x-hub-signature-256", format!("sha256={signature}"))
        .body(Body::from(body.to_owned()))
        .unwrap()
}

async fn call(router: &axum::Router, request: Request<Body>) -> (StatusCode, String, String) {
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (
        status,
        content_type,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// The value of the sample named exactly `series` (with its labels), 0 when absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn a_scrape_after_a_run_shows_the_counters_moved() {
    let dir = tempfile::tempdir().unwrap();
    let store = gantry_store::Store::open(&format!(
        "sqlite://{}",
        dir.path().join("gantry.db").display()
    ))
    .await
    .unwrap();
    let logs = Logs::open(dir.path().join("logs")).unwrap();
    let forge = Arc::new(FakeForge::new(ForgeKind::Github));
    forge.add_file("acme/app", SHA, ".gantry.yaml", PIPELINE);
    let metrics = Metrics::new();
    let config = EngineConfig {
        tick: Duration::from_millis(50),
        public_url: Some("http://127.0.0.1".into()),
        ..EngineConfig::default()
    };
    let engine = Engine::new(
        store,
        Arc::new(FakeBackend::new()),
        vec![forge.clone() as Arc<dyn Forge>],
        Arc::new(logs.clone()),
        config,
    )
    .with_observer(Arc::new(metrics.clone()));
    engine.start().await.unwrap();
    let state = AppState(Arc::new(App {
        engine: engine.clone(),
        webhook_secrets: HashMap::from([(
            ForgeKind::Github,
            gantry_forge::WebhookSecrets::global([SECRET]),
        )]),
        sources: HashMap::from([(ForgeKind::Github, PipelineSource::Api(forge.clone()))]),
        forge_reads: Default::default(),
        git: Arc::new(gantry_forge::GitReader::new(dir.path().join("git"))),
        api_token: None,
        public_url: "http://127.0.0.1".into(),
        logs,
        private_reads: false,
    }));
    let ops = Ops {
        metrics: metrics.clone(),
        probes: Vec::new(),
    };
    let router = gantry_server::app_with(state.clone(), ops);

    let body = push_body();
    let (status, _, _) = call(&router, delivery("d-1", &body, SECRET)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, _, _) = call(&router, delivery("d-1", &body, SECRET)).await;
    assert_eq!(status, StatusCode::OK, "a redelivery");
    let (status, _, _) = call(&router, delivery("d-2", &body, "wrong")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // The run ends and its statuses reach the forge.
    let mut finished = false;
    for _ in 0..200 {
        let runs = engine
            .list_runs(&RunFilter::default(), gantry_store::Page::default())
            .await
            .unwrap();
        if runs.first().is_some_and(|r| r.run.state == State::Success)
            && forge
                .statuses()
                .iter()
                .any(|(_, s)| s.state == gantry_core::CommitState::Success)
        {
            finished = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(finished, "the run succeeded");

    let (status, content_type, text) = call(
        &router,
        Request::get("/metrics").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let deliveries = |result: &str| {
        sample(
            &text,
            &format!(r#"gantry_webhook_deliveries_total{{forge="github",result="{result}"}}"#),
        )
    };
    assert_eq!(deliveries("accepted"), 1.0, "{text}");
    assert_eq!(deliveries("duplicate"), 1.0, "{text}");
    assert_eq!(deliveries("unauthorized"), 1.0, "{text}");
    assert_eq!(sample(&text, "gantry_runs_created_total"), 1.0, "{text}");
    assert_eq!(
        sample(&text, r#"gantry_runs_finished_total{state="success"}"#),
        1.0,
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"gantry_jobs_finished_total{state="success"}"#),
        1.0,
        "{text}"
    );
    assert_eq!(
        sample(&text, "gantry_queue_wait_seconds_count"),
        1.0,
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"gantry_job_duration_seconds_count{state="success"}"#
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        sample(&text, "gantry_pod_start_latency_seconds_count"),
        1.0,
        "{text}"
    );
    // The fake backend writes one line per unscripted step.
    assert_eq!(sample(&text, "gantry_log_lines_total"), 2.0, "{text}");
    assert!(sample(&text, "gantry_log_bytes_total") > 0.0, "{text}");
    assert!(
        sample(
            &text,
            r#"gantry_status_reports_total{forge="github",result="delivered"}"#
        ) >= 2.0,
        "{text}"
    );
    assert_eq!(sample(&text, "gantry_queue_depth"), 0.0, "{text}");
    assert!(text.ends_with("# EOF\n"));

    // Ready while the database answers; a probe that fails is named.
    let (status, _, body) = call(
        &router,
        Request::get("/readyz").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ready\n"));
    let down = gantry_server::app_with(
        state,
        Ops {
            metrics,
            probes: vec![Arc::new(Down)],
        },
    );
    let (status, _, body) = call(&down, Request::get("/readyz").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, "not ready: kubernetes unreachable\n");
    engine.shutdown().await;
}
