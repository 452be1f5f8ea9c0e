//! The viewer in headless Chromium, driven through chromedriver with fantoccini.
//!
//! Needs Debian's `chromium` and `chromium-driver`:
//! `apt-get update && apt-get install -y chromium chromium-driver`. Without them these tests
//! fail (they do not skip): a viewer nobody has seen working is not tested.

use std::net::TcpListener as StdListener;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use gantry_core::{State, StepOutcome};
use serde_json::json;

use crate::support::{Harness, MULTI_SECRET, Proxy, SECRET, TOKEN};

const INSTALL: &str = "apt-get update && apt-get install -y chromium chromium-driver";

fn find(candidates: &[&str]) -> Option<String> {
    candidates
        .iter()
        .find(|p| Path::new(p).exists())
        .map(|p| (*p).to_owned())
}

struct Driver {
    child: Child,
    port: u16,
    _profile: tempfile::TempDir,
}

impl Drop for Driver {
    // chromedriver and the Chromium it started share a process group of their own: all go, also
    // when a test fails before it closes the session (before, each such test left a Chromium).
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn browser() -> (Driver, Client) {
    let chromium = find(&["/usr/bin/chromium", "/usr/bin/chromium-browser"]).unwrap_or_else(|| {
        panic!("Chromium is missing: the browser tests need it. Install it with `{INSTALL}`")
    });
    let chromedriver = find(&["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"])
        .unwrap_or_else(|| {
            panic!(
                "chromedriver is missing: the browser tests need it. Install it with `{INSTALL}`"
            )
        });
    let port = StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(&chromedriver)
        .arg(format!("--port={port}"))
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {chromedriver}: {e} (install: `{INSTALL}`)"));
    let profile = tempfile::tempdir().unwrap();
    let driver = Driver {
        child,
        port,
        _profile: profile,
    };
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-background-networking",
                "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-component-update", "--disable-sync", "--window-size=1280,900",
                format!("--user-data-dir={}", driver._profile.path().display()),
            ]
        }),
    );
    let url = format!("http://127.0.0.1:{}", driver.port);
    let mut last = None;
    for _ in 0..100 {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(connector)
            .capabilities(caps.clone())
            .connect(&url)
            .await
        {
            Ok(client) => return (driver, client),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("chromedriver did not start a Chromium session: {last:?} (install: `{INSTALL}`)");
}

/// Polls a script until it returns true.
async fn wait_js(c: &Client, script: &str, what: &str) {
    for _ in 0..200 {
        if let Ok(v) = c.execute(script, vec![]).await
            && v == json!(true)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let html = c.source().await.unwrap_or_default();
    panic!(
        "timed out waiting for {what}; page:\n{}",
        &html[..html.len().min(4000)]
    );
}

async fn line_numbers(c: &Client) -> Vec<u64> {
    let v = c
        .execute(
            "return Array.from(document.querySelectorAll('details.step[open] .ln')).map(e => Number(e.dataset.n));",
            vec![],
        )
        .await
        .unwrap();
    serde_json::from_value(v).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_viewer_in_chromium_lists_runs_tails_live_logs_across_a_reconnect_and_cancels() {
    let h = Harness::new(false).await;
    let run = h.push("main", "Add the viewer").await;
    let server = h.serve().await;
    let proxy = Proxy::start(server).await;
    let base = format!("http://{}", proxy.addr);
    let (_driver, c) = browser().await;

    // The runs list.
    c.goto(&format!("{base}/runs")).await.unwrap();
    let row = c.find(Locator::Css("tr.run")).await.unwrap();
    let text = row.text().await.unwrap();
    assert!(
        text.contains("acme/app") && text.contains("Add the viewer"),
        "{text}"
    );
    assert!(text.contains("main") && text.contains("octocat"));

    // Open the running job.
    let a = h.attempt("build").await;
    a.started().await;
    a.step_started(0).await;
    a.line(
        0,
        "\u{1b}[31mred alert\u{1b}[0m and \u{1b}[1;32mbold green\u{1b}[0m",
    )
    .await;
    a.line(0, &format!("token={SECRET}")).await;
    for l in MULTI_SECRET.lines() {
        a.line(0, l).await;
    }
    for i in 6..=20 {
        a.line(0, &format!("line {i}")).await;
    }
    c.find(Locator::Css("a.run-link"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_js(
        &c,
        "return !!document.querySelector('svg.graph a.node');",
        "the job graph",
    )
    .await;
    c.find(Locator::Css(&format!(
        "a[href='/runs/{run}/jobs/{}']",
        a.job
    )))
    .await
    .unwrap()
    .click()
    .await
    .unwrap();
    wait_js(
        &c,
        "return !!document.getElementById('L20');",
        "the first lines",
    )
    .await;

    // Lines arrive live.
    for i in 21..=40 {
        a.line(0, &format!("line {i}")).await;
    }
    wait_js(&c, "return !!document.getElementById('L40');", "live lines").await;

    // The connection drops; lines stored meanwhile arrive after the reconnect, once each.
    proxy.cut();
    for i in 41..=60 {
        a.line(0, &format!("line {i}")).await;
    }
    wait_js(
        &c,
        "return !!document.getElementById('L60');",
        "lines after the reconnect",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(line_numbers(&c).await, (1..=60).collect::<Vec<_>>());

    // ANSI colours render as colours, not as escape codes.
    let red = c
        .execute(
            "const s = document.querySelector('#L1 .txt .ansi-fg-1'); return s ? [s.textContent, getComputedStyle(s).color] : null;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(red, json!(["red alert", "rgb(255, 123, 114)"]));
    let bold = c
        .execute("const s = document.querySelector('#L1 .ansi-bold.ansi-fg-2'); return s && s.textContent;", vec![])
        .await
        .unwrap();
    assert_eq!(bold, json!("bold green"));
    let l1 = c
        .find(Locator::Id("L1"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!l1.contains('\u{1b}') && !l1.contains("[31m"), "{l1}");

    // The secret is masked in what the browser got.
    let page = c.source().await.unwrap();
    assert!(!page.contains(SECRET), "the page shows the secret");
    assert!(page.contains("token=***"));
    for l in MULTI_SECRET.lines() {
        assert!(!page.contains(l));
    }

    // A permalink opens the step at that line.
    let url = c.current_url().await.unwrap();
    let mut link = url.clone();
    link.set_fragment(Some("L30"));
    c.goto(link.as_str()).await.unwrap();
    wait_js(
        &c,
        "const r = document.getElementById('L30'); return !!r && r.classList.contains('target');",
        "the permalinked line",
    )
    .await;

    // Search finds a line.
    let search = c
        .find(Locator::Css("details.step[open] input[type=search]"))
        .await
        .unwrap();
    search.send_keys("line 37").await.unwrap();
    c.find(Locator::Css("details.step[open] form.search button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_js(&c, "return Array.from(document.querySelectorAll('.search-results a')).some(a => a.textContent.startsWith('37:'));", "search results").await;

    // Cancel the run with the button, signed in with the token.
    c.goto(&format!("{base}/runs/{run}")).await.unwrap();
    let hidden = c
        .execute(
            "return document.querySelector('button[data-action$=\"/cancel\"]').hidden;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(hidden, json!(true), "no cancel button without a token");
    c.execute("gantry.setToken(arguments[0]);", vec![json!(TOKEN)])
        .await
        .unwrap();
    c.refresh().await.unwrap();
    let cancel = c
        .find(Locator::Css("button[data-action$='/cancel']"))
        .await
        .unwrap();
    cancel.click().await.unwrap();
    h.wait_run_state(run, State::Cancelled).await;
    wait_js(
        &c,
        &format!("const b = document.querySelector('[data-status-of=\"{run}\"]'); return !!b && b.querySelector('.label').textContent === 'cancelled';"),
        "the cancelled run",
    )
    .await;

    // Readable on a phone: nothing wider than the screen but the log and the graph, which scroll.
    c.set_window_size(390, 844).await.unwrap();
    c.goto(&format!("{base}/runs")).await.unwrap();
    let overflow = c
        .execute(
            "return document.documentElement.scrollWidth <= window.innerWidth + 1;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(overflow, json!(true), "the runs list fits a phone");
    if let Ok(png) = c.screenshot().await {
        let _ = std::fs::write(std::env::temp_dir().join("gantry-viewer-phone.png"), png);
    }
    c.close().await.unwrap();
}

/// A step that ends while its run's page or its job's page is open shows what it produced and
/// how it failed there within a poll, as text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn summaries_and_failures_appear_live_on_the_open_pages() {
    let h = Harness::new(false).await;
    let run = h.push("main", "live summaries").await;
    let base = format!("http://{}", h.serve().await);
    let (_driver, c) = browser().await;
    let a = h.attempt("build").await;
    let job = a.job;
    a.started().await;
    a.step_started(0).await;
    c.goto(&format!("{base}/runs/{run}")).await.unwrap();
    let digest = "pushed digest sha256:0123abcd\n<b>not bold</b>";
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
    let entry = format!(
        "const d = document.querySelector('dl.summaries[data-summaries-of=\"{job}\"] dd[data-summary-of=\"{job}:0\"]'); \
         return !!d && d.textContent === arguments[0] && d.children.length === 0 \
         && !d.closest('dl').hidden && d.previousElementSibling.textContent === 'compile' \
         && d.getBoundingClientRect().height > 0;"
    );
    for _ in 0..200 {
        if c.execute(&entry, vec![json!(digest)]).await.unwrap() == json!(true) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        c.execute(&entry, vec![json!(digest)]).await.unwrap(),
        json!(true),
        "the run page lists the summary, as text: {}",
        c.source().await.unwrap_or_default()
    );

    a.step_started(1).await;
    c.goto(&format!("{base}/runs/{run}/jobs/{job}"))
        .await
        .unwrap();
    let shown = format!(
        "const s = document.querySelector('.step-summary[data-summary-of=\"{job}:0\"]'); \
         return !!s && !s.hidden && s.textContent === arguments[0] && s.children.length === 0 \
         && getComputedStyle(s).whiteSpace === 'pre-wrap';"
    );
    assert_eq!(
        c.execute(&shown, vec![json!(digest)]).await.unwrap(),
        json!(true),
        "the job page shows it beside the step, line break kept"
    );
    a.step_ended(
        1,
        StepOutcome {
            state: State::Failure,
            exit_code: Some(2),
            reason: Some("2 tests <failed>".into()),
            summary: Some("FAIL: parser".into()),
        },
    )
    .await;
    wait_js(
        &c,
        &format!(
            "const o = document.querySelector('[data-outcome-of=\"{job}:1\"]'); \
             const s = document.querySelector('.step-summary[data-summary-of=\"{job}:1\"]'); \
             return !!o && !o.hidden && o.textContent === 'exit code 2 · 2 tests <failed>' \
             && !!s && !s.hidden && s.textContent === 'FAIL: parser';"
        ),
        "the failed step's exit code, reason and summary",
    )
    .await;
    c.close().await.unwrap();
}

/// Where the browser tests keep their screenshots for a person to look at:
/// `target/gantry-screenshots/` (or under `CARGO_TARGET_DIR`).
fn screenshot_dir() -> std::path::PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let dir = target.join("gantry-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn screenshot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("a screenshot");
    let path = screenshot_dir().join(format!("{name}.png"));
    std::fs::write(&path, png).unwrap();
    eprintln!("screenshot: {}", path.display());
}

/// Whether the page is no wider than the window (nothing to scroll sideways but the log and the
/// graph, which scroll inside themselves).
async fn fits(c: &Client) -> bool {
    c.execute(
        "return document.documentElement.scrollWidth <= window.innerWidth + 1;",
        vec![],
    )
    .await
    .unwrap()
        == json!(true)
}

const WHY: &str = r#"
name: ci
jobs:
  test:
    steps:
      - name: unit tests
        run: cargo test
  lint:
    steps:
      - name: clippy
        run: cargo clippy
  package:
    needs: [test]
    steps:
      - name: tar
        run: tar czf app.tgz target
"#;

const QUICK: &str = r#"
name: quick
jobs:
  quick:
    steps:
      - name: prepare
        run: true
      - name: report
        run: echo done
"#;

/// What the issue saw, at a desktop's and a phone's width: a failed job says which step failed
/// with its exit code and its last lines, a skipped job why, a cancelled run whose job failed
/// says so in the list; marks (not pills) on every step with the state for screen readers;
/// sub-second durations, times relative with the absolute one as a tooltip; a successful job
/// opens its last step ("1 line"); a job page lists the run's jobs beside its log, folds the run
/// facts and starts with the log on a phone; no page scrolls sideways at 360, 390 or 414 px.
/// Screenshots of each page at each size are kept (see [`screenshot_dir`]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_viewer_says_why_at_a_glance_on_a_desktop_and_a_phone() {
    let h = Harness::new(false).await;
    let run = h.push_pipeline("main", "break the parser", WHY).await;
    let test = h.attempt("test").await;
    let lint = h.attempt("lint").await;
    test.started().await;
    test.step_started(0).await;
    for l in [
        "running 9 tests",
        "test lexer ... ok",
        "test parser ... \u{1b}[31mFAILED\u{1b}[0m",
        "failures:",
        "    parser: expected `}` at 3:1",
        "test result: FAILED. 8 passed; 1 failed",
        "error: test failed, to rerun pass `--lib`",
    ] {
        test.line(0, l).await;
    }
    h.wait_lines(test.job, 1, 0, 7).await;
    test.step_finished(0, State::Failure).await;
    test.finished_because(
        State::Failure,
        "step \"unit tests\" failed with exit code 1",
    )
    .await;
    // `package` needs `test`: skipped for it before the run is cancelled.
    for _ in 0..500 {
        let r = h.engine.get_run(run).await.unwrap().unwrap();
        if r.run
            .jobs
            .iter()
            .any(|j| j.name == "package" && j.state == State::Skipped)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    lint.started().await;
    lint.step_started(0).await;
    lint.line(0, "checking 40 crates").await;
    let (status, _) = h
        .call(
            http::Request::post(format!("/api/v1/runs/{run}/cancel"))
                .header("authorization", format!("Bearer {TOKEN}"))
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await;
    assert!(status.is_success(), "cancel: {status}");
    lint.step_finished(0, State::Cancelled).await;
    lint.finished(State::Cancelled).await;
    h.wait_run_state(run, State::Cancelled).await;

    let quick_run = h.push_pipeline("main", "a quick one", QUICK).await;
    let quick = h.attempt("quick").await;
    quick.started().await;
    quick.step_started(0).await;
    tokio::time::sleep(Duration::from_millis(120)).await;
    quick.step_finished(0, State::Success).await;
    quick.step_started(1).await;
    quick.line(1, "done").await;
    h.wait_lines(quick.job, 1, 1, 1).await;
    quick.step_finished(1, State::Success).await;
    quick.finished(State::Success).await;
    h.wait_run_state(quick_run, State::Success).await;

    let base = format!("http://{}", h.serve().await);
    let (_driver, c) = browser().await;
    let run_page = format!("{base}/runs/{run}");
    let test_page = format!("{base}/runs/{run}/jobs/{}", test.job);
    let quick_page = format!("{base}/runs/{quick_run}/jobs/{}", quick.job);

    // The runs list: the cancelled run says its job failed.
    c.goto(&format!("{base}/runs")).await.unwrap();
    let row = c
        .find(Locator::Css(&format!("tr.run[data-run='{run}']")))
        .await
        .unwrap();
    let text = row.text().await.unwrap();
    assert!(text.to_lowercase().contains("cancelled"), "{text}");
    assert!(text.contains("1 job failed"), "{text}");
    // Numbered per repository: this repository's first run, and the quick one its second.
    assert!(text.contains("ci #1"), "{text}");
    let quick_row = c
        .find(Locator::Css(&format!("tr.run[data-run='{quick_run}']")))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(quick_row.contains("quick #2"), "{quick_row}");
    let when = c
        .execute(
            "const t = document.querySelector('tr.run time'); return [t.textContent, t.title];",
            vec![],
        )
        .await
        .unwrap();
    assert!(
        when[0].as_str().unwrap().ends_with("ago") || when[0] == "just now",
        "relative: {when}"
    );
    assert!(
        when[1].as_str().unwrap().contains(':'),
        "absolute as the tooltip: {when}"
    );
    screenshot(&c, "runs-desktop").await;

    // The run page: why each job ended as it did.
    c.goto(&run_page).await.unwrap();
    let title = c
        .find(Locator::Css(".run-head h1"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(title, "ci #1");
    let why = |job: gantry_core::JobId| {
        format!(
            "const w = document.querySelector('li.job[data-job=\"{job}\"] .why'); return w ? w.innerText : '';"
        )
    };
    let test_why = c.execute(&why(test.job), vec![]).await.unwrap();
    let test_why = test_why.as_str().unwrap();
    assert!(
        test_why.contains("Step unit tests failed: exit code 1"),
        "{test_why}"
    );
    assert!(
        test_why.contains("test result: FAILED. 8 passed; 1 failed")
            && test_why.contains("error: test failed")
            && test_why.contains("test parser ... FAILED")
            && !test_why.contains("running 9 tests"),
        "the last five lines, colours removed: {test_why}"
    );
    let package = h
        .engine
        .get_run(run)
        .await
        .unwrap()
        .unwrap()
        .run
        .jobs
        .iter()
        .find(|j| j.name == "package")
        .unwrap()
        .id;
    let package_why = c.execute(&why(package), vec![]).await.unwrap();
    assert!(
        package_why
            .as_str()
            .unwrap()
            .contains("a job it needs failed"),
        "{package_why}"
    );
    // Steps carry a mark; the state's name is there for screen readers, not as a pill.
    let marks = c
        .execute(
            "return Array.from(document.querySelectorAll('.steps .badge.mark')).map(b => \
             [b.querySelector('.label').textContent, b.querySelector('.label').getBoundingClientRect().width, b.title]);",
            vec![],
        )
        .await
        .unwrap();
    let marks = marks.as_array().unwrap();
    assert!(!marks.is_empty());
    for m in marks {
        assert!(m[1].as_f64().unwrap() <= 1.0, "label hidden: {m}");
        assert_eq!(m[0], m[2], "tooltip and label: {m}");
    }
    assert!(marks.iter().any(|m| m[0] == "failure"), "{marks:?}");
    screenshot(&c, "run-desktop").await;

    // A successful job opens its last step; sub-second durations; the run's jobs beside it.
    c.goto(&quick_page).await.unwrap();
    wait_js(
        &c,
        "const d = document.querySelector('details.step[open]'); \
         return !!d && d.dataset.step === '1' && d.innerText.includes('End of log (1 line).');",
        "the last step open, its one line counted",
    )
    .await;
    let first = c
        .execute(
            "return document.querySelector('#step-0 .dur').textContent;",
            vec![],
        )
        .await
        .unwrap();
    let first = first.as_str().unwrap();
    assert!(
        first.ends_with("ms") || (first.ends_with('s') && first.contains('.')),
        "under a second shows as such: {first}"
    );
    screenshot(&c, "job-desktop").await;
    c.goto(&test_page).await.unwrap();
    let listed = c
        .execute(
            "return Array.from(document.querySelectorAll('nav.job-list li')).map(li => li.innerText);",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 3, "{listed}");
    let current = c
        .execute(
            "return document.querySelector('nav.job-list a[aria-current]').textContent;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(current, "test");
    assert!(fits(&c).await, "the job page fits a desktop");

    // A phone, at its narrowest and a common width.
    for (w, h_px) in [(360u32, 740u32), (390, 844), (414, 896)] {
        c.set_window_size(w, h_px).await.unwrap();
        for (name, url) in [
            ("runs", format!("{base}/runs")),
            ("run", run_page.clone()),
            ("job", test_page.clone()),
        ] {
            c.goto(&url).await.unwrap();
            if name == "job" {
                wait_js(
                    &c,
                    "return !!document.querySelector('details.step[open] .ln');",
                    "the failed step's log",
                )
                .await;
            }
            assert!(fits(&c).await, "{name} page scrolls sideways at {w} px");
            screenshot(&c, &format!("{name}-phone-{w}")).await;
        }
        // The job page: the log within the first screen, the run facts folded.
        let layout = c
            .execute(
                "return [document.querySelector('details.step[open] .log').getBoundingClientRect().top < window.innerHeight, \
                 document.querySelector('details.facts-box').open];",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(layout, json!([true, false]), "at {w} px");
    }
    c.close().await.unwrap();
}

const SECTIONS: &str = r#"
name: sections
jobs:
  sections:
    steps:
      - name: build
        run: make
"#;

/// A job page carries its open step's last lines itself (it reads without JavaScript, the
/// script then colours them and adds live ones); `::group::`/`::endgroup::` fold into a closed
/// section that a click or a link to a line inside it opens; per-line times show on demand and
/// the choice is remembered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_sections_fold_times_show_on_demand_and_the_page_reads_without_javascript() {
    let h = Harness::new(false).await;
    let run = h.push_pipeline("main", "sections", SECTIONS).await;
    let a = h.attempt("sections").await;
    a.started().await;
    a.step_started(0).await;
    for l in [
        "start",
        "::group::Install <deps>",
        "dep 1",
        "dep 2",
        "::endgroup::",
        "\u{1b}[32mdone\u{1b}[0m",
    ] {
        a.line(0, l).await;
    }
    h.wait_lines(a.job, 1, 0, 6).await;
    a.step_finished(0, State::Success).await;
    a.finished(State::Success).await;
    h.wait_run_state(run, State::Success).await;
    let path = format!("/runs/{run}/jobs/{}", a.job);

    // Without the script: the page itself has the lines, the section folded, the end counted.
    let (status, html) = h.get(&path, None).await;
    assert_eq!(status, 200);
    assert!(html.contains(r#"data-state="success" open>"#), "{html}");
    assert!(
        html.contains(r#"<details class="group"><summary class="ln stdout group-head" id="L2""#),
        "{html}"
    );
    assert!(
        html.contains("Install &lt;deps&gt;</span></summary>"),
        "{html}"
    );
    assert!(html.contains(r#"<span class="txt">dep 2</span>"#), "{html}");
    assert!(html.contains(r#"<span class="txt">done</span>"#), "{html}");
    assert!(html.contains("End of log (6 lines)."), "{html}");

    let base = format!("http://{}", h.serve().await);
    let (_driver, c) = browser().await;
    c.goto(&format!("{base}{path}")).await.unwrap();
    // The script's rows replace the page's: coloured now.
    wait_js(
        &c,
        "return !!document.querySelector('#L6 .ansi-fg-2');",
        "the coloured rows",
    )
    .await;
    let visible =
        "const r = document.getElementById(arguments[0]); return !!r && r.checkVisibility();";
    assert_eq!(
        c.execute(visible, vec![json!("L3")]).await.unwrap(),
        json!(false),
        "folded"
    );
    assert_eq!(
        c.execute(visible, vec![json!("L6")]).await.unwrap(),
        json!(true)
    );
    c.find(Locator::Css("summary#L2"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert_eq!(
        c.execute(visible, vec![json!("L3")]).await.unwrap(),
        json!(true),
        "opened"
    );

    // Times: hidden until asked for, then on every line, and still on after a reload.
    let ts =
        "const t = document.querySelector('#L1 .ts'); return [t.checkVisibility(), t.textContent];";
    assert_eq!(c.execute(ts, vec![]).await.unwrap()[0], json!(false));
    c.find(Locator::Css("details.step[open] .times-toggle"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let shown = c.execute(ts, vec![]).await.unwrap();
    assert_eq!(shown[0], json!(true), "{shown}");
    let clock = shown[1].as_str().unwrap();
    assert!(
        clock.len() == 12 && clock.as_bytes()[2] == b':' && clock.as_bytes()[8] == b'.',
        "HH:MM:SS.mmm: {clock}"
    );
    screenshot(&c, "log-sections-times").await;
    c.refresh().await.unwrap();
    wait_js(
        &c,
        "const t = document.querySelector('#L6 .ansi-fg-2') && document.querySelector('#L1 .ts'); return !!t && t.checkVisibility();",
        "times still on after a reload",
    )
    .await;

    // A link to a line inside a folded section opens the section.
    c.goto(&format!("{base}{path}?step=0#L4")).await.unwrap();
    wait_js(
        &c,
        "const r = document.getElementById('L4'); return !!r && r.classList.contains('target') && r.checkVisibility();",
        "the linked line, its section opened",
    )
    .await;
    c.close().await.unwrap();
}
