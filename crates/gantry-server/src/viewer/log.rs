//! A page of a step's log as HTML: the rows `gantry.js` builds (`lineNode`), so a job page reads
//! without JavaScript and the script only adds live lines. Lines between `::group::NAME` and
//! `::endgroup::` (the markers GitHub Actions uses; docs/pipeline.md) fold into a section.
//!
//! Colours are left to the script: here escapes are removed and the text escaped.

use std::fmt::Write as _;

use gantry_core::Stream;
use gantry_logs::StoredLine;

use super::html::esc;

/// Lines a job page shows of its open step: the last ones, as many as the script's first page.
pub const FIRST_PAGE: usize = 1000;

fn stream(s: Stream) -> &'static str {
    match s {
        Stream::Stdout => "stdout",
        Stream::Stderr => "stderr",
        Stream::System => "system",
    }
}

/// What a line opens or closes (kept the same as `marker` in gantry.js).
enum Marker<'a> {
    Group(&'a str),
    EndGroup,
    None,
}

fn marker(text: &str) -> Marker<'_> {
    let text = text.trim();
    if let Some(name) = text.strip_prefix("::group::") {
        Marker::Group(name.trim())
    } else if text == "::endgroup::" {
        Marker::EndGroup
    } else {
        Marker::None
    }
}

/// One row: `tag` is `div`, or `summary` for a section's first line.
fn row(out: &mut String, tag: &str, l: &StoredLine, text: &str, step: usize, attempt: u32) {
    let class = if tag == "summary" { " group-head" } else { "" };
    let _ = write!(
        out,
        r#"<{tag} class="ln {s}{class}" id="L{n}" data-n="{n}"><a class="num" href="?step={step}&amp;attempt={attempt}#L{n}">{n}</a><span class="ts">{ts}</span><span class="txt">{text}</span></{tag}>"#,
        s = stream(l.stream),
        n = l.number,
        ts = l.at.format("%H:%M:%S%.3f"),
        text = esc(text),
    );
}

/// The rows of `lines`, folded where the step marked sections; sections start closed.
pub fn rows(lines: &[StoredLine], step: usize, attempt: u32) -> String {
    let mut out = String::new();
    let mut in_group = false;
    for l in lines {
        let text = anstream::adapter::strip_str(&l.text).to_string();
        match marker(&text) {
            Marker::Group(name) => {
                if in_group {
                    out.push_str("</div></details>");
                }
                out.push_str(r#"<details class="group">"#);
                row(&mut out, "summary", l, name, step, attempt);
                out.push_str(r#"<div class="group-body">"#);
                in_group = true;
            }
            Marker::EndGroup if in_group => {
                row(&mut out, "div", l, &text, step, attempt);
                out.push_str("</div></details>");
                in_group = false;
            }
            _ => row(&mut out, "div", l, &text, step, attempt),
        }
    }
    if in_group {
        out.push_str("</div></details>");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(number: u64, text: &str) -> StoredLine {
        StoredLine {
            number,
            at: gantry_core::now(),
            stream: Stream::Stdout,
            text: text.into(),
        }
    }

    #[test]
    fn sections_fold_and_text_is_escaped_without_colours() {
        let lines = [
            line(1, "before"),
            line(2, "::group::Install <deps>"),
            line(3, "\u{1b}[32minstalled\u{1b}[0m"),
            line(4, "::endgroup::"),
            line(5, "::group::unclosed"),
            line(6, "inside"),
        ];
        let html = rows(&lines, 0, 1);
        assert_eq!(html.matches("<details class=\"group\">").count(), 2);
        assert_eq!(html.matches("</details>").count(), 2);
        assert!(html.contains(r#"<span class="txt">Install &lt;deps&gt;</span></summary>"#));
        assert!(html.contains(r#"<span class="txt">installed</span>"#));
        assert!(!html.contains('\u{1b}'));
        assert!(html.contains(r#"id="L6""#));
        assert_eq!(html.matches("class=\"ln ").count(), 6, "every line a row");
    }
}
