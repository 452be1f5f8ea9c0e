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

/// The mark of a state, beside its name (kept the same as `ICONS` in gantry.js).
pub fn icon(state: State) -> &'static str {
    match state {
        State::Success => "✔",
        State::Failure => "✘",
        State::Error => "⚠",
        State::Cancelled => "⊘",
        State::Skipped => "○",
        State::Running => "●",
        State::Queued | State::Pending => "◷",
    }
}

/// A status badge: the state's mark and its name; `data-status-of` lets the page script update
/// it as states change.
pub fn badge(state: State, of: &str) -> String {
    status(state, of, "badge")
}

/// A status mark alone, for rows that repeat it (steps, jobs): the name is there for screen
/// readers and as a tooltip, not as a pill on every line.
pub fn mark(state: State, of: &str) -> String {
    status(state, of, "badge mark")
}

fn status(state: State, of: &str, class: &str) -> String {
    format!(
        r#"<span class="{class} s-{s}" data-status-of="{of}" title="{s}"><span class="icon" aria-hidden="true">{icon}</span><span class="label">{s}</span></span>"#,
        s = state.as_str(),
        icon = icon(state),
        of = esc(of)
    )
}

/// "350ms", "3.2s", "45s", "3m 4s", "1h 2m"; empty when it has not started.
pub fn duration(started: Option<Timestamp>, finished: Option<Timestamp>) -> String {
    let Some(start) = started else {
        return String::new();
    };
    let end = finished.unwrap_or_else(gantry_core::now);
    human_ms((end - start).num_milliseconds().max(0))
}

/// A duration in milliseconds as people read one (kept the same as `human` in gantry.js).
pub fn human_ms(ms: i64) -> String {
    let secs = ms / 1000;
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {s}s")
    } else if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 10_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        format!("{s}s")
    }
}

/// How long ago `t` was, from `now` (kept the same as `ago` in gantry.js, which keeps it
/// current): "just now", "12s ago", "5 min ago", "3 h ago", "2 days ago".
pub fn ago(t: Timestamp, now: Timestamp) -> String {
    let secs = (now - t).num_seconds();
    match secs {
        ..5 => "just now".into(),
        5..60 => format!("{secs}s ago"),
        60..3600 => format!("{} min ago", secs / 60),
        3600..86_400 => format!("{} h ago", secs / 3600),
        86_400..172_800 => "1 day ago".into(),
        _ => format!("{} days ago", secs / 86_400),
    }
}

/// A `<time>`: how long ago, with the absolute time as its tooltip (the script shows that in
/// the reader's time zone and keeps the relative one current).
pub fn time(t: Timestamp) -> String {
    format!(
        r#"<time datetime="{}" title="{}">{}</time>"#,
        t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        t.format("%Y-%m-%d %H:%M:%S UTC"),
        ago(t, gantry_core::now()),
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
