use gantry_core::{State, StepOutcome};
use serde_json::Value;

use crate::support::Harness;

#[tokio::test]
async fn the_runs_list_shows_runs_filters_and_pages() {
    let h = Harness::new(false).await;
    let mut ids = Vec::new();
    for i in 0..27 {
        ids.push(
            h.push(
                if i % 2 == 0 { "main" } else { "feature/x" },
                &format!("commit {i}"),
            )
            .await,
        );
    }
    let (status, html) = h.get("/runs", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        html.matches(r#"<tr class="run""#).count(),
        25,
        "a page of 25"
    );
    assert!(html.contains("acme/app") && html.contains("commit 26") && html.contains("octocat"));
    assert!(html.contains("https://git.example.com/acme/app/commit/0123456789abcdef"));
    assert!(html.contains(r#"rel="next""#));
    let next = html.split(r#"rel="next" href=""#).nth(1).unwrap();
    let next = next.split('"').next().unwrap().replace("&amp;", "&");
    let (_, older) = h.get(&next, None).await;
    assert_eq!(older.matches(r#"<tr class="run""#).count(), 2);

    let (_, feature) = h.get("/runs?branch=feature%2Fx", None).await;
    assert_eq!(feature.matches(r#"<tr class="run""#).count(), 13);
    let (_, none) = h
        .get("/runs?status=success&repository=acme%2Fapp", None)
        .await;
    assert!(none.contains("No runs match"));
    let (status, _) = h.get("/runs?status=bogus", None).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn the_run_page_draws_the_job_graph_with_steps_attempts_and_queue() {
    let h = Harness::new(false).await;
    let run = h.push("main", "graph").await;
    let a = h.attempt("build").await;
    a.started().await;
    a.step_started(0).await;
    a.step_finished(0, State::Success).await;
    a.step_started(1).await;
    for _ in 0..500 {
        let r = h.engine.get_run(run).await.unwrap().unwrap();
        if r.run.jobs[0]
            .steps
            .get(1)
            .is_some_and(|s| s.state == State::Running)
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (status, html) = h.get(&format!("/runs/{run}"), None).await;
    assert_eq!(status, 200);
    assert!(html.contains(r#"<svg class="graph""#));
    assert_eq!(html.matches(r#"class="node "#).count(), 2, "two jobs");
    assert_eq!(
        html.matches(r#"class="edge""#).count(),
        1,
        "deploy needs build"
    );
    assert!(html.contains("compile") && html.contains("unit tests") && html.contains("ship"));
    assert!(
        html.contains(r#"data-action="/api/v1/runs/"#),
        "a cancel button"
    );
    // Job page: steps collapsible, the running one selected.
    let (status, job) = h.get(&format!("/runs/{run}/jobs/{}", a.job), None).await;
    assert_eq!(status, 200);
    assert_eq!(job.matches(r#"<details class="step""#).count(), 2);
    assert!(job.contains(r#"data-selected="1""#));
    assert!(job.contains("/log/raw"));
    // A failed attempt and its retry both show.
    a.step_finished(1, State::Failure).await;
    a.finished(State::Failure).await;
    h.wait_run_state(run, State::Failure).await;
    h.engine.retry_run(run).await.unwrap();
    let (_, html) = h.get(&format!("/runs/{run}"), None).await;
    assert!(html.contains("Attempts:"), "attempts listed");
    assert!(html.contains("attempt 2"));
    let (status, _) = h
        .get(&format!("/runs/{run}/jobs/{}?attempt=7", a.job), None)
        .await;
    assert_eq!(status, 404);
}

/// Pages link the assets by a digest of their content, so after an upgrade a browser fetches
/// the new script instead of running a cached one against the new API (the live log's SSE
/// format changed once: an old cached script showed no live lines).
#[tokio::test]
async fn assets_are_served_under_urls_that_change_with_their_content() {
    use sha2::Digest;
    let h = Harness::new(false).await;
    let (_, page) = h.get("/runs", None).await;
    for (name, marker) in [("gantry.js", "EventSource"), ("gantry.css", "@media")] {
        let prefix = format!("/assets/{name}?v=");
        let at = page
            .find(&prefix)
            .unwrap_or_else(|| panic!("the page links {prefix}…: {page}"));
        let url = &page[at..];
        let url = &url[..url.find('"').unwrap()];
        let (status, body) = h.get(url, None).await;
        assert_eq!(status, 200);
        assert!(body.contains(marker));
        let digest: String = sha2::Sha256::digest(body.as_bytes())[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(&url[prefix.len()..], digest, "{url} names its content");
    }
}

/// What a step produced shows with it: on the run page under its job (only the steps that said
/// something), on the job page beside the step, and in the API; always as text, never markup.
/// The job page also says how a failed step failed (exit code and reason).
#[tokio::test]
async fn step_summaries_show_on_the_run_and_job_pages_as_text() {
    let h = Harness::new(false).await;
    let run = h.push("main", "summaries").await;
    let a = h.attempt("build").await;
    let digest = "pushed digest sha256:0123abcd\n<script>alert(\"x\")</script> & co";
    a.started().await;
    a.step_started(0).await;
    a.step_ended(
        0,
        StepOutcome {
            state: State::Success,
            exit_code: Some(0),
            reason: None,
            summary: Some(digest.into()),
        },
    )
    .await;
    a.step_started(1).await;
    a.step_ended(
        1,
        StepOutcome {
            state: State::Failure,
            exit_code: Some(3),
            reason: Some("timed out <after> 5m".into()),
            summary: None,
        },
    )
    .await;
    a.finished(State::Failure).await;
    h.wait_run_state(run, State::Failure).await;
    let record = h.engine.get_run(run).await.unwrap().unwrap();
    let deploy = record.run.jobs.iter().find(|j| j.name == "deploy").unwrap();
    let (job, deploy) = (a.job, deploy.id);
    let escaped =
        "pushed digest sha256:0123abcd\n&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; co";

    let (status, html) = h.get(&format!("/runs/{run}"), None).await;
    assert_eq!(status, 200);
    assert!(
        html.contains(&format!(
            r#"<dl class="summaries" data-summaries-of="{job}"><div data-step="0"><dt>compile</dt><dd data-summary-of="{job}:0">{escaped}</dd></div></dl>"#
        )),
        "the build's one summary, escaped, its line break kept: {html}"
    );
    assert!(
        html.contains(&format!(
            r#"<dl class="summaries" data-summaries-of="{deploy}" hidden></dl>"#
        )),
        "a job whose steps said nothing lists nothing"
    );
    assert!(!html.contains("<script>alert"), "a summary is never markup");

    let (status, page) = h.get(&format!("/runs/{run}/jobs/{job}"), None).await;
    assert_eq!(status, 200);
    assert!(
        page.contains(&format!(
            r#"aria-label="what compile produced" data-summary-of="{job}:0">{escaped}</div>"#
        )),
        "beside the step: {page}"
    );
    assert!(
        page.contains(&format!(r#"data-summary-of="{job}:1" hidden></div>"#)),
        "a step without a summary shows none"
    );
    assert!(!page.contains("<script>alert"), "a summary is never markup");
    assert!(
        page.contains(&format!(
            r#"<span class="step-outcome" data-outcome-of="{job}:1">exit code 3 · timed out &lt;after&gt; 5m</span>"#
        )),
        "how the failed step failed"
    );
    assert!(
        page.contains(&format!(
            r#"<span class="step-outcome" data-outcome-of="{job}:0" hidden></span>"#
        )),
        "nothing for a step that succeeded"
    );

    let (status, body) = h.get(&format!("/api/v1/runs/{run}"), None).await;
    assert_eq!(status, 200);
    let api: Value = serde_json::from_str(&body).unwrap();
    let build = api["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["name"] == "build")
        .unwrap();
    assert_eq!(build["steps"][0]["summary"], Value::from(digest));
    assert_eq!(build["steps"][1]["summary"], Value::Null, "present, null");
    assert_eq!(build["steps"][1]["reason"], "timed out <after> 5m");
}
