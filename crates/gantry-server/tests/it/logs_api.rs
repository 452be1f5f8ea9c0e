use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use gantry_core::State;
use serde_json::Value;

use crate::support::{Harness, MULTI_SECRET, SECRET, SseClient};

fn assert_no_secret(what: &str, text: &str) {
    assert!(!text.contains(SECRET), "{what} shows the secret: {text}");
    assert!(
        !text.contains(&STANDARD.encode(SECRET)[..12]),
        "{what} shows base64 of the secret"
    );
    for l in MULTI_SECRET.lines() {
        assert!(
            !text.contains(l),
            "{what} shows a line of the multi-line secret"
        );
    }
}

#[tokio::test]
async fn pages_tail_search_and_raw_read_the_stored_log() {
    let h = Harness::new(false).await;
    h.push("main", "first").await;
    let a = h.attempt("build").await;
    a.started().await;
    a.step_started(0).await;
    for i in 1..=3000 {
        a.line(0, &format!("line {i}")).await;
    }
    h.wait_lines(a.job, 1, 0, 3000).await;
    let base = format!("/api/v1/jobs/{}/attempts/1/steps/0/log", a.job);

    let (status, body) = h.get(&format!("{base}?from=1500&limit=2"), None).await;
    assert_eq!(status, 200, "{body}");
    let page: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["lines"][0]["number"], 1500);
    assert_eq!(page["lines"][1]["text"], "line 1501");
    assert_eq!(page["next"], 1502);
    assert_eq!(page["total"], 3000);
    assert_eq!(page["complete"], false);

    let (_, body) = h.get(&format!("{base}?tail=2"), None).await;
    let page: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["from"], 2999);
    assert_eq!(page["lines"][1]["text"], "line 3000");

    let (_, body) = h.get(&format!("{base}/search?q=LINE%202999"), None).await;
    let found: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(found["matches"][0]["number"], 2999);

    a.step_finished(0, State::Success).await;
    let (status, raw) = h.get(&format!("{base}/raw"), None).await;
    assert_eq!(status, 200);
    assert_eq!(raw.lines().count(), 3000);
    assert!(raw.starts_with("line 1\nline 2\n"));

    for bad in [
        format!("/api/v1/jobs/{}/attempts/2/steps/0/log", a.job),
        format!("/api/v1/jobs/{}/attempts/1/steps/9/log", a.job),
        "/api/v1/jobs/not-an-id/attempts/1/steps/0/log".to_owned(),
    ] {
        let (status, body) = h.get(&bad, None).await;
        assert!(status == 404 || status == 400, "{bad}: {status} {body}");
    }
}

#[tokio::test]
async fn sse_follows_live_and_resumes_after_last_event_id_without_gap_or_duplicate() {
    let h = Harness::new(false).await;
    h.push("main", "live").await;
    let a = h.attempt("build").await;
    a.started().await;
    a.step_started(0).await;
    for i in 1..=10 {
        a.line(0, &format!("early {i}")).await;
    }
    let addr = h.serve().await;
    let path = format!("/api/v1/jobs/{}/attempts/1/steps/0/log/follow", a.job);

    let mut first = SseClient::connect(addr, &path, None).await;
    assert_eq!(first.status, 200);
    let mut seen = Vec::new();
    while seen.len() < 10 {
        let ev = first.next().await.unwrap();
        assert_eq!(ev.event, "line");
        let line: Value = serde_json::from_str(&ev.data).unwrap();
        assert_eq!(ev.id.as_deref(), Some(line["number"].to_string().as_str()));
        seen.push(line["number"].as_u64().unwrap());
    }
    // Live: a line stored now arrives on the open stream.
    a.line(0, "live 11").await;
    let ev = first.next().await.unwrap();
    assert!(ev.data.contains("live 11"));
    seen.push(11);
    // The connection drops; lines keep coming; the client resumes with Last-Event-ID.
    drop(first);
    for i in 12..=40 {
        a.line(0, &format!("while away {i}")).await;
    }
    let mut second = SseClient::connect(addr, &format!("{path}?from=1"), Some(11)).await;
    for _ in 12..=40 {
        let ev = second.next().await.unwrap();
        let line: Value = serde_json::from_str(&ev.data).unwrap();
        seen.push(line["number"].as_u64().unwrap());
    }
    a.step_finished(0, State::Success).await;
    let end = second.next().await.unwrap();
    assert_eq!(end.event, "end");
    assert!(
        second.next().await.is_none(),
        "the stream ends with the step"
    );
    assert_eq!(seen, (1..=40).collect::<Vec<_>>());
}

#[tokio::test]
async fn following_a_finished_step_sends_what_is_left_then_ends() {
    let h = Harness::new(false).await;
    h.push("main", "done").await;
    let a = h.attempt("build").await;
    a.started().await;
    a.step_started(0).await;
    for i in 1..=5 {
        a.line(0, &format!("{i}")).await;
    }
    a.step_finished(0, State::Success).await;
    h.wait_lines(a.job, 1, 0, 5).await;
    let addr = h.serve().await;
    let path = format!(
        "/api/v1/jobs/{}/attempts/1/steps/0/log/follow?from=4",
        a.job
    );
    let mut c = SseClient::connect(addr, &path, None).await;
    let mut events = Vec::new();
    while let Some(ev) = tokio::time::timeout(std::time::Duration::from_secs(10), c.next())
        .await
        .unwrap()
    {
        events.push((ev.event, ev.id));
    }
    assert_eq!(
        events,
        vec![
            ("line".into(), Some("4".into())),
            ("line".into(), Some("5".into())),
            ("end".into(), None)
        ]
    );
}

#[tokio::test]
async fn a_secret_never_appears_in_the_api_the_stream_the_pages_or_the_store() {
    let h = Harness::new(false).await;
    let run = h.push("main", "secrets").await;
    let a = h.attempt("build").await;
    a.started().await;
    a.step_started(0).await;
    let addr = h.serve().await;
    let follow = format!("/api/v1/jobs/{}/attempts/1/steps/0/log/follow", a.job);
    let mut sse = SseClient::connect(addr, &follow, None).await;

    let printed = vec![
        format!("export TOKEN={SECRET}"),
        format!("auth: {}", STANDARD.encode(format!("ci:{SECRET}"))),
        STANDARD.encode(SECRET),
    ];
    for p in &printed {
        a.line(0, p).await;
    }
    // A multi-line secret, one line of it per log line.
    for l in MULTI_SECRET.lines() {
        a.line(0, l).await;
    }
    let n = (printed.len() + MULTI_SECRET.lines().count()) as u64;
    h.wait_lines(a.job, 1, 0, n).await;

    let mut streamed = String::new();
    for _ in 0..n {
        streamed.push_str(&sse.next().await.unwrap().data);
        streamed.push('\n');
    }
    assert_no_secret("the SSE stream", &streamed);
    assert_eq!(streamed.matches("***").count() as u64, n, "{streamed}");

    let base = format!("/api/v1/jobs/{}/attempts/1/steps/0/log", a.job);
    for path in [
        base.clone(),
        format!("{base}/raw"),
        format!("{base}/search?q=export"),
        format!("/api/v1/runs/{run}"),
        format!("/runs/{run}"),
        format!("/runs/{run}/jobs/{}", a.job),
        "/runs".into(),
    ] {
        let (status, body) = h.get(&path, None).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_no_secret(&path, &body);
    }
    let (_, raw) = h.get(&format!("{base}/raw"), None).await;
    assert!(raw.starts_with("export TOKEN=***\n"), "{raw}");
    // Searching for the secret finds nothing.
    let (_, found) = h.get(&format!("{base}/search?q={SECRET}"), None).await;
    assert_eq!(
        serde_json::from_str::<Value>(&found).unwrap()["matches"],
        serde_json::json!([])
    );

    // And every byte on disk.
    a.step_finished(0, State::Success).await;
    let mut stack = vec![h.dir.path().join("logs")];
    let mut files = 0;
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                files += 1;
                let bytes = std::fs::read(e.path()).unwrap();
                assert_no_secret("the stored log", &String::from_utf8_lossy(&bytes));
            }
        }
    }
    assert!(files >= 2);
}

#[tokio::test]
async fn private_reads_need_the_token_by_header_or_cookie() {
    let h = Harness::new(true).await;
    let run = h.push("main", "private").await;
    let (status, _) = h.get("/api/v1/runs", None).await;
    assert_eq!(status, 401);
    let (status, _) = h.get("/api/v1/runs", Some(crate::support::TOKEN)).await;
    assert_eq!(status, 200);
    let (status, body) = h.get(&format!("/runs/{run}"), None).await;
    assert_eq!(status, 401);
    assert!(body.contains("Sign in"));
    let req = http::Request::get(format!("/runs/{run}"))
        .header(
            "cookie",
            format!("theme=dark; gantry_token={}", crate::support::TOKEN),
        )
        .body(axum::body::Body::empty())
        .unwrap();
    let (status, _) = h.call(req).await;
    assert_eq!(status, 200);
    // A cookie never authorises a change.
    let req = http::Request::post(format!("/api/v1/runs/{run}/cancel"))
        .header("cookie", format!("gantry_token={}", crate::support::TOKEN))
        .body(axum::body::Body::empty())
        .unwrap();
    let (status, _) = h.call(req).await;
    assert_eq!(status, 401);
}
