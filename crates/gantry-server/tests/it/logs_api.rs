use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use gantry_core::State;
use serde_json::Value;

use crate::support::{Harness, MULTI_SECRET, SECRET, SseClient, SseEvent};

/// The lines of a `lines` event, checking that its id is the number of its last line.
fn lines_of(ev: &SseEvent) -> Vec<Value> {
    assert_eq!(ev.event, "lines", "{ev:?}");
    let lines: Vec<Value> = serde_json::from_str(&ev.data).unwrap();
    assert!(!lines.is_empty(), "an empty event: {ev:?}");
    let last = lines.last().unwrap()["number"].to_string();
    assert_eq!(ev.id.as_deref(), Some(last.as_str()), "{ev:?}");
    lines
}

fn numbers(lines: &[Value]) -> Vec<u64> {
    lines
        .iter()
        .map(|l| l["number"].as_u64().unwrap())
        .collect()
}

/// Reads events until `n` lines have come; returns the lines and how many events held them.
async fn take_lines(sse: &mut SseClient, n: usize) -> (Vec<Value>, usize) {
    let mut lines = Vec::new();
    let mut events = 0;
    while lines.len() < n {
        let ev = tokio::time::timeout(std::time::Duration::from_secs(20), sse.next())
            .await
            .expect("lines arrive in time")
            .expect("the stream is open");
        lines.extend(lines_of(&ev));
        events += 1;
    }
    (lines, events)
}

fn assert_no_secret(what: &str, text: &str) {
    assert!(!text.contains(SECRET), "{what} shows the secret: {text}");
    // As a terminal or the viewer's colour renderer shows it: without the escape sequences.
    let shown = text.replace("\x1b[0m", "").replace("\\u001b[0m", "");
    assert!(
        !shown.contains(SECRET),
        "{what} shows the secret once its escape sequences are rendered: {text}"
    );
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
    let (lines, _) = take_lines(&mut first, 10).await;
    let mut seen = numbers(&lines);
    // Live: a line stored now arrives on the open stream.
    a.line(0, "live 11").await;
    let (lines, _) = take_lines(&mut first, 1).await;
    assert_eq!(lines[0]["text"], "live 11");
    seen.extend(numbers(&lines));
    // The connection drops; lines keep coming; the client resumes with Last-Event-ID.
    drop(first);
    for i in 12..=40 {
        a.line(0, &format!("while away {i}")).await;
    }
    let mut second = SseClient::connect(addr, &format!("{path}?from=1"), Some(11)).await;
    let (lines, _) = take_lines(&mut second, 29).await;
    seen.extend(numbers(&lines));
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
        events.push(ev);
    }
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(numbers(&lines_of(&events[0])), [4, 5]);
    assert_eq!(events[1].event, "end");
    assert_eq!(events[1].id, None);
    assert_eq!(events[1].data, r#"{"last":5}"#);
}

/// Issue 7: one event per line made 100 viewers crawl. A viewer behind by thousands of lines
/// gets them in a few events, each line once and in order.
#[tokio::test]
async fn a_viewer_behind_by_thousands_of_lines_gets_them_in_few_events() {
    let h = Harness::new(false).await;
    h.push("main", "long").await;
    let a = h.attempt("build").await;
    a.started().await;
    a.step_started(0).await;
    for i in 1..=5000 {
        a.line(0, &format!("line {i}")).await;
    }
    h.wait_lines(a.job, 1, 0, 5000).await;
    let addr = h.serve().await;
    let path = format!("/api/v1/jobs/{}/attempts/1/steps/0/log/follow", a.job);
    let mut sse = SseClient::connect(addr, &path, None).await;
    let (lines, events) = take_lines(&mut sse, 5000).await;
    assert_eq!(numbers(&lines), (1..=5000).collect::<Vec<_>>());
    assert_eq!(lines[4999]["text"], "line 5000");
    assert!(events <= 50, "5000 lines came in {events} events");
    // Then live, and the end says where the log stopped.
    a.line(0, "line 5001").await;
    let (lines, _) = take_lines(&mut sse, 1).await;
    assert_eq!(numbers(&lines), [5001]);
    a.step_finished(0, State::Success).await;
    let end = sse.next().await.unwrap();
    assert_eq!(
        (end.event.as_str(), end.data.as_str()),
        ("end", r#"{"last":5001}"#)
    );
    assert!(sse.next().await.is_none());
}

/// The id of a `lines` event is its last line: resuming after it starts at the next line, and
/// resuming from a line inside an event (a client that kept only part of it) starts right after
/// that line.
#[tokio::test]
async fn resuming_after_a_multi_line_event_gets_the_next_line_exactly() {
    let h = Harness::new(false).await;
    h.push("main", "resume").await;
    let a = h.attempt("build").await;
    a.started().await;
    a.step_started(0).await;
    for i in 1..=3000 {
        a.line(0, &format!("line {i}")).await;
    }
    h.wait_lines(a.job, 1, 0, 3000).await;
    let addr = h.serve().await;
    let path = format!("/api/v1/jobs/{}/attempts/1/steps/0/log/follow", a.job);

    let mut first = SseClient::connect(addr, &path, None).await;
    let ev = first.next().await.unwrap();
    let got = numbers(&lines_of(&ev));
    assert!(got.len() > 1, "a single-line first event: {got:?}");
    let last: u64 = ev.id.as_deref().unwrap().parse().unwrap();
    drop(first);

    let mut after = SseClient::connect(addr, &path, Some(last)).await;
    let (lines, _) = take_lines(&mut after, 3000 - last as usize).await;
    assert_eq!(numbers(&lines), (last + 1..=3000).collect::<Vec<_>>());
    drop(after);

    let middle = got[got.len() / 2];
    let mut inside = SseClient::connect(addr, &path, Some(middle)).await;
    let (lines, _) = take_lines(&mut inside, 3000 - middle as usize).await;
    assert_eq!(numbers(&lines), (middle + 1..=3000).collect::<Vec<_>>());

    a.step_finished(0, State::Success).await;
    let end = inside.next().await.unwrap();
    assert_eq!(
        (end.event.as_str(), end.data.as_str()),
        ("end", r#"{"last":3000}"#)
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
        // printf 'split: s3cr3t\033[0m-Value-42' (before: shown joined by the viewer).
        format!("split: {}\x1b[0m{}", &SECRET[..6], &SECRET[6..]),
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
    for line in take_lines(&mut sse, n as usize).await.0 {
        streamed.push_str(&line.to_string());
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
    // Every read, the deliveries too (before: a delivery answered without the token).
    for path in [
        format!("/api/v1/runs/{run}"),
        "/api/v1/deliveries/github/some-delivery".to_owned(),
    ] {
        let (status, body) = h.get(&path, None).await;
        assert_eq!(status, 401, "{path}: {body}");
        assert!(
            body.contains("reading needs the API token"),
            "{path}: {body}"
        );
        let (status, body) = h.get(&path, Some(crate::support::TOKEN)).await;
        assert_ne!(status, 401, "{path} with the token: {body}");
    }
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

/// A log line that is HTML (`<script>…`) is served by `/raw` as text the browser must not sniff
/// into a page, and every page, asset and API answer carries `nosniff` and a Content-Security-
/// Policy that runs no inline script. (Before: no answer had either header.)
#[tokio::test]
async fn every_answer_forbids_sniffing_and_inline_script() {
    let h = Harness::new(false).await;
    let run = h.push("main", "html in the log").await;
    let a = h.attempt("build").await;
    a.started().await;
    a.step_started(0).await;
    a.line(0, "<html><script>alert(document.cookie)</script>")
        .await;
    h.wait_lines(a.job, 1, 0, 1).await;
    a.step_finished(0, State::Success).await;
    let raw = format!("/api/v1/jobs/{}/attempts/1/steps/0/log/raw", a.job);
    let (status, body) = h.get(&raw, None).await;
    assert_eq!(status, 200);
    assert!(body.contains("<script>"), "{body}");
    for path in [
        raw.as_str(),
        "/runs",
        &format!("/runs/{run}"),
        &format!("/runs/{run}/jobs/{}", a.job),
        "/assets/gantry.js",
        "/api/v1/runs",
        "/api/v1/runs/not-a-run",
        "/no/such/page",
    ] {
        let (status, headers) = h.headers(path).await;
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        assert_eq!(
            header("x-content-type-options"),
            "nosniff",
            "{path} ({status})"
        );
        let csp = header("content-security-policy");
        assert!(
            csp.contains("default-src 'none'")
                && csp.contains("script-src 'self'")
                && !csp.contains("unsafe-inline")
                && csp.contains("frame-ancestors 'none'"),
            "{path} ({status}): {csp:?}"
        );
    }
    let (_, headers) = h.headers(&raw).await;
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain"),
        "{headers:?}"
    );
}
