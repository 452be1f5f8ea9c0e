//! The viewer in headless Chromium, driven through chromedriver with fantoccini.
//!
//! Needs Debian's `chromium` and `chromium-driver`:
//! `apt-get update && apt-get install -y chromium chromium-driver`. Without them these tests
//! fail (they do not skip): a viewer nobody has seen working is not tested.

use std::net::TcpListener as StdListener;
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
    fn drop(&mut self) {
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
        &format!("const b = document.querySelector('[data-status-of=\"{run}\"]'); return !!b && b.textContent === 'cancelled';"),
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
