//! Small HTML helpers: escaping, the page frame, badges and durations.

use std::fmt::Write as _;

use axum::response::Html;
use gantry_core::{State, Timestamp};

/// Escapes text for HTML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A query-string component.
pub fn q(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The page frame: header with the token sign-in, content, script.
pub fn page(title: &str, body: &str) -> Html<String> {
    let (css, js) = super::asset_urls();
    let mut html = String::with_capacity(body.len() + 2048);
    let _ = write!(
        html,
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · Gantry</title>
<link rel="stylesheet" href="{css}">
<script src="{js}" defer></script>
</head>
<body>
<header class="top">
  <a class="brand" href="/runs">Gantry</a>
  <span class="spacer"></span>
  <button type="button" class="link" id="sign-in">Sign in with token</button>
  <button type="button" class="link" id="sign-out" hidden>Sign out</button>
</header>
<div id="notice" role="status" hidden></div>
<main>
{body}
</main>
</body>
</html>
"#,
        title = esc(title),
    );
    Html(html)
}

/// A status badge; `data-status-of` lets the page script update it as states change.
pub fn badge(state: State, of: &str) -> String {
    format!(
        r#"<span class="badge s-{s}" data-status-of="{of}">{s}</span>"#,
        s = state.as_str(),
        of = esc(of)
    )
}

/// "1h 2m", "3m 4s", "5s"; empty when it has not started.
pub fn duration(started: Option<Timestamp>, finished: Option<Timestamp>) -> String {
    let Some(start) = started else {
        return String::new();
    };
    let end = finished.unwrap_or_else(gantry_core::now);
    human((end - start).num_seconds().max(0))
}

pub fn human(secs: i64) -> String {
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {s}s")
    } else {
        format!("{s}s")
    }
}

/// A `<time>` that the script shows in the reader's time zone.
pub fn time(t: Timestamp) -> String {
    format!(
        r#"<time datetime="{}">{}</time>"#,
        t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        t.format("%Y-%m-%d %H:%M UTC")
    )
}

/// A live duration: the script keeps it ticking while `finished` is unknown.
pub fn live_duration(started: Option<Timestamp>, finished: Option<Timestamp>, of: &str) -> String {
    let start = started
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default();
    let end = finished
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default();
    format!(
        r#"<span class="dur" data-duration-of="{of}" data-started="{start}" data-finished="{end}">{}</span>"#,
        duration(started, finished),
        of = esc(of)
    )
}
