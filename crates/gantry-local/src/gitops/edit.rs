//! Edits of YAML text that change one value and keep everything else byte for byte: comments,
//! quoting, key order, indentation. The edit works on lines; the result is then parsed (with
//! serde-saphyr) and compared with the same change made to the parsed original, so an edit that
//! went wrong on an unusual layout is refused instead of pushed.

use serde_json::Value;

/// Why a file could not be edited.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum EditError {
    #[error("not valid YAML: {0}")]
    Parse(String),
    #[error("{0:?} not found")]
    NotFound(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("the edit did not give the expected document; the file was left alone")]
    Mismatch,
}

/// Sets `newTag` of the `images` entry named `image` (or whose `newName` is `image`) in a
/// kustomization, adding the entry or the key when missing.
pub(crate) fn set_kustomize_tag(text: &str, image: &str, tag: &str) -> Result<String, EditError> {
    let before = parse(text)?;
    let edited = kustomize_text_edit(text, image, tag)?;
    let mut expected = before;
    kustomize_value_edit(&mut expected, image, tag)?;
    verify(&edited, &expected)?;
    Ok(edited)
}

/// Sets the scalar at a dotted path of mappings (`spec.image.tag`) to the string `value`.
pub(crate) fn set_path(text: &str, path: &str, value: &str) -> Result<String, EditError> {
    let before = parse(text)?;
    let edited = path_text_edit(text, path, value)?;
    let mut expected = before;
    let mut node = &mut expected;
    for key in path.split('.') {
        node = node
            .get_mut(key)
            .ok_or_else(|| EditError::NotFound(path.to_owned()))?;
    }
    *node = Value::String(value.to_owned());
    verify(&edited, &expected)?;
    Ok(edited)
}

fn parse(text: &str) -> Result<Value, EditError> {
    if text.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_saphyr::from_str::<Value>(text).map_err(|e| EditError::Parse(e.to_string()))
}

fn verify(edited: &str, expected: &Value) -> Result<(), EditError> {
    if parse(edited)? == *expected {
        Ok(())
    } else {
        Err(EditError::Mismatch)
    }
}

fn kustomize_value_edit(doc: &mut Value, image: &str, tag: &str) -> Result<(), EditError> {
    if doc.is_null() {
        *doc = Value::Object(serde_json::Map::new());
    }
    let root = doc
        .as_object_mut()
        .ok_or_else(|| EditError::Unsupported("the kustomization is not a mapping".into()))?;
    let images = root.entry("images").or_insert(Value::Array(Vec::new()));
    if images.is_null() {
        *images = Value::Array(Vec::new());
    }
    let images = images
        .as_array_mut()
        .ok_or_else(|| EditError::Unsupported("`images` is not a list".into()))?;
    let named = |entry: &Value, key: &str| entry.get(key).and_then(Value::as_str) == Some(image);
    let found = images
        .iter()
        .position(|e| named(e, "name"))
        .or_else(|| images.iter().position(|e| named(e, "newName")));
    match found {
        Some(i) => {
            let entry = images[i]
                .as_object_mut()
                .ok_or_else(|| EditError::Unsupported("an image entry is not a mapping".into()))?;
            entry.insert("newTag".into(), Value::String(tag.to_owned()));
        }
        None => images.push(serde_json::json!({ "name": image, "newTag": tag })),
    }
    Ok(())
}

/// One line of the text, without its line ending.
#[derive(Debug, Clone, Copy)]
struct Line<'a> {
    /// Byte offset of the line in the text.
    start: usize,
    text: &'a str,
    indent: usize,
}

impl<'a> Line<'a> {
    fn content(&self) -> &'a str {
        &self.text[self.indent..]
    }

    /// Blank lines and comments do not end or start blocks.
    fn is_content(&self) -> bool {
        let c = self.content().trim_end();
        !c.is_empty() && !c.starts_with('#')
    }

    fn end(&self) -> usize {
        self.start + self.text.len()
    }

    /// `- …`: a sequence entry; the column its content starts at.
    fn item(&self) -> Option<usize> {
        let c = self.content();
        let rest = c.strip_prefix('-')?;
        if rest.is_empty() || rest.starts_with([' ', '\t']) {
            let spaces = rest.len() - rest.trim_start_matches([' ', '\t']).len();
            Some(self.indent + 1 + spaces)
        } else {
            None
        }
    }
}

fn lines(text: &str) -> Vec<Line<'_>> {
    let mut out = Vec::new();
    let mut start = 0;
    for raw in text.split_inclusive('\n') {
        let body = raw.strip_suffix('\n').unwrap_or(raw);
        let body = body.strip_suffix('\r').unwrap_or(body);
        let indent = body.len() - body.trim_start_matches(' ').len();
        out.push(Line {
            start,
            text: body,
            indent,
        });
        start += raw.len();
    }
    out
}

/// The line ending the text uses.
fn newline(text: &str) -> &'static str {
    if text.contains("\r\n") { "\r\n" } else { "\n" }
}

/// A `key: value` at byte `at` of the text: the key, and the byte range of its value (empty
/// when the value is on the following lines), comments excluded.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    key: String,
    value: std::ops::Range<usize>,
}

fn entry_at(text: &str, at: usize, end: usize) -> Option<Entry> {
    let s = &text[at..end];
    let (key, after_key) = if let Some(q @ ('"' | '\'')) = s.chars().next() {
        let close = s[1..].find(q)? + 1;
        (s[1..close].to_owned(), close + 1)
    } else {
        let colon = s
            .match_indices(':')
            .map(|(i, _)| i)
            .find(|&i| s[i + 1..].is_empty() || s[i + 1..].starts_with([' ', '\t']))?;
        let key = s[..colon].trim_end();
        if key.is_empty() || key.starts_with(['#', '[', '{', '&', '*', '!', '|', '>']) {
            return None;
        }
        (key.to_owned(), colon)
    };
    let rest = s[after_key..].trim_start_matches([' ', '\t']);
    let rest = rest.strip_prefix(':')?;
    let value_start = end - rest.trim_start_matches([' ', '\t']).len();
    let value_end = value_start + scalar_len(&text[value_start..end]);
    Some(Entry {
        key,
        value: value_start..value_end,
    })
}

/// The length of the scalar at the start of `s`, without a trailing comment or spaces.
fn scalar_len(s: &str) -> usize {
    match s.chars().next() {
        Some('"') => {
            let mut escaped = false;
            for (i, c) in s.char_indices().skip(1) {
                match c {
                    '\\' if !escaped => escaped = true,
                    '"' if !escaped => return i + 1,
                    _ => escaped = false,
                }
            }
            s.len()
        }
        Some('\'') => {
            let bytes = s.as_bytes();
            let mut i = 1;
            while i < bytes.len() {
                if bytes[i] == b'\'' {
                    if bytes.get(i + 1) == Some(&b'\'') {
                        i += 2;
                        continue;
                    }
                    return i + 1;
                }
                i += 1;
            }
            s.len()
        }
        _ => {
            let comment = s
                .match_indices('#')
                .map(|(i, _)| i)
                .find(|&i| i > 0 && s[..i].ends_with([' ', '\t']));
            s[..comment.unwrap_or(s.len())].trim_end().len()
        }
    }
}

/// `value` as a YAML scalar that reads back as the same string, in the style of `old`.
fn render(value: &str, old: &str) -> String {
    if old.starts_with('\'') && !value.contains(['\n', '\r']) {
        return format!("'{}'", value.replace('\'', "''"));
    }
    if !old.starts_with('"') && plain_is_string(value) {
        return value.to_owned();
    }
    let mut out = String::from("\"");
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Would `value`, written plain, read back as this string (not a number, bool or null)?
fn plain_is_string(value: &str) -> bool {
    let ok_chars = value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/' | '+'));
    let starts_ok = value
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    let lower = value.to_ascii_lowercase();
    let keyword = matches!(
        lower.as_str(),
        "true" | "false" | "yes" | "no" | "on" | "off" | "y" | "n" | "null"
    );
    let numeric = value.parse::<f64>().is_ok()
        || lower.starts_with("0x")
        || lower.starts_with("0o")
        || !value.chars().any(|c| c.is_ascii_alphabetic());
    ok_chars && starts_ok && !keyword && !numeric
}

fn replace(text: &str, range: std::ops::Range<usize>, with: &str) -> String {
    let mut out = String::with_capacity(text.len() + with.len());
    out.push_str(&text[..range.start]);
    out.push_str(with);
    out.push_str(&text[range.end..]);
    out
}

/// The lines of the block under a line indented `parent`: up to the next content line indented
/// no deeper.
fn block_end(lines: &[Line<'_>], from: usize, parent: usize) -> usize {
    lines[from..]
        .iter()
        .position(|l| {
            l.is_content() && l.indent <= parent && l.item().is_none_or(|_| l.indent < parent)
        })
        .map_or(lines.len(), |i| from + i)
}

fn path_text_edit(text: &str, path: &str, value: &str) -> Result<String, EditError> {
    let lines = lines(text);
    let mut scope = 0..lines.len();
    let mut parent: Option<usize> = None;
    let keys: Vec<&str> = path.split('.').collect();
    for (depth, key) in keys.iter().enumerate() {
        let first = lines[scope.clone()]
            .iter()
            .find(|l| l.is_content() && !l.text.starts_with("---"))
            .ok_or_else(|| EditError::NotFound(path.to_owned()))?;
        if first.item().is_some() {
            return Err(EditError::Unsupported(format!(
                "{path:?} goes through a list; only mappings are supported"
            )));
        }
        if parent.is_some_and(|p| first.indent <= p) {
            return Err(EditError::NotFound(keys[..=depth].join(".")));
        }
        let indent = first.indent;
        let (i, entry) = scope
            .clone()
            .filter(|&i| lines[i].is_content() && lines[i].indent == indent)
            .find_map(|i| {
                let l = lines[i];
                entry_at(text, l.start + l.indent, l.end())
                    .filter(|e| e.key == *key)
                    .map(|e| (i, e))
            })
            .ok_or_else(|| EditError::NotFound(keys[..=depth].join(".")))?;
        if depth + 1 == keys.len() {
            let old = &text[entry.value.clone()];
            if old.is_empty() || old.starts_with(['|', '>', '[', '{', '&', '*', '!']) {
                return Err(EditError::Unsupported(format!(
                    "{path:?} is not a plain value on one line"
                )));
            }
            return Ok(replace(text, entry.value, &render(value, old)));
        }
        scope = i + 1..block_end(&lines, i + 1, indent);
        parent = Some(indent);
    }
    Err(EditError::NotFound(path.to_owned()))
}

fn kustomize_text_edit(text: &str, image: &str, tag: &str) -> Result<String, EditError> {
    let nl = newline(text);
    let lines = lines(text);
    let images = lines.iter().position(|l| {
        l.indent == 0 && entry_at(text, l.start, l.end()).is_some_and(|e| e.key == "images")
    });
    let new_entry = |indent: usize| {
        let pad = " ".repeat(indent);
        format!(
            "{pad}- name: {}{nl}{pad}  newTag: {}{nl}",
            render(image, ""),
            render(tag, "")
        )
    };
    let Some(at) = images else {
        let mut out = text.to_owned();
        if !out.is_empty() && !out.ends_with('\n') {
            out.push_str(nl);
        }
        out.push_str("images:");
        out.push_str(nl);
        out.push_str(&new_entry(0));
        return Ok(out);
    };
    let head = entry_at(text, lines[at].start, lines[at].end())
        .ok_or_else(|| EditError::Unsupported("cannot read the `images` line".into()))?;
    if !head.value.is_empty() {
        return Err(EditError::Unsupported(
            "`images` is not a block list (flow style is not edited)".into(),
        ));
    }
    let end = block_end(&lines, at + 1, 0);
    let block = at + 1..end;
    let items: Vec<usize> = block
        .clone()
        .filter(|&i| lines[i].is_content() && lines[i].item().is_some())
        .collect();
    let Some(&first_item) = items.first() else {
        let insert_at = next_line_start(text, lines[at].end());
        let prefix = if insert_at == text.len() && !text.ends_with('\n') {
            nl
        } else {
            ""
        };
        return Ok(replace(
            text,
            insert_at..insert_at,
            &format!("{prefix}{}", new_entry(0)),
        ));
    };
    let item_indent = lines[first_item].indent;
    let starts: Vec<usize> = items
        .iter()
        .copied()
        .filter(|&i| lines[i].indent == item_indent)
        .collect();
    // Each entry: its keys (the first on the `- ` line, the rest at the same column).
    let mut entries = Vec::new();
    for (n, &start) in starts.iter().enumerate() {
        let stop = starts.get(n + 1).copied().unwrap_or(end);
        let Some(column) = lines[start].item() else {
            continue;
        };
        let keys: Vec<(usize, Entry)> = (start..stop)
            .filter_map(|i| {
                let l = lines[i];
                let at = if i == start {
                    l.start + column
                } else if l.is_content() && l.indent == column {
                    l.start + l.indent
                } else {
                    return None;
                };
                entry_at(text, at, l.end()).map(|e| (i, e))
            })
            .collect();
        entries.push((column, keys));
    }
    let unquote = |range: &std::ops::Range<usize>| {
        let v = &text[range.clone()];
        v.trim_matches(|c| c == '"' || c == '\'').to_owned()
    };
    let find = |key: &str| {
        entries.iter().find(|(_, keys)| {
            keys.iter()
                .any(|(_, e)| e.key == key && unquote(&e.value) == image)
        })
    };
    let Some((column, keys)) = find("name").or_else(|| find("newName")) else {
        let last = block
            .clone()
            .rev()
            .find(|&i| lines[i].is_content())
            .unwrap_or(at);
        let insert_at = next_line_start(text, lines[last].end());
        let prefix = if insert_at == text.len() && !text.ends_with('\n') {
            nl
        } else {
            ""
        };
        return Ok(replace(
            text,
            insert_at..insert_at,
            &format!("{prefix}{}", new_entry(item_indent)),
        ));
    };
    if let Some((_, tag_entry)) = keys.iter().find(|(_, e)| e.key == "newTag") {
        let old = &text[tag_entry.value.clone()];
        if old.is_empty() {
            return Err(EditError::Unsupported(
                "`newTag` has no value on its line".into(),
            ));
        }
        return Ok(replace(text, tag_entry.value.clone(), &render(tag, old)));
    }
    let (last_line, _) = keys.last().ok_or(EditError::Mismatch)?;
    let insert_at = next_line_start(text, lines[*last_line].end());
    let prefix = if insert_at == text.len() && !text.ends_with('\n') {
        nl
    } else {
        ""
    };
    let line = format!(
        "{prefix}{}newTag: {}{nl}",
        " ".repeat(*column),
        render(tag, "")
    );
    Ok(replace(text, insert_at..insert_at, &line))
}

/// The start of the line after the one ending at byte `end` (or the end of the text).
fn next_line_start(text: &str, end: usize) -> usize {
    text[end..].find('\n').map_or(text.len(), |i| end + i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUSTOMIZATION: &str = "\
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
# the app
resources:
  - ../../base
images:
  - name: registry.example.com/app   # built by CI
    newTag: \"0.9.0\"
  - name: registry.example.com/worker
    newName: registry.example.com/worker-v2
    newTag: old
namePrefix: prod-
";

    #[test]
    fn kustomize_tag_changes_only_the_value() {
        let out = set_kustomize_tag(KUSTOMIZATION, "registry.example.com/app", "abc123").unwrap();
        assert_eq!(
            out,
            KUSTOMIZATION.replace("newTag: \"0.9.0\"", "newTag: \"abc123\"")
        );
    }

    #[test]
    fn kustomize_matches_new_name_and_quotes_numbers() {
        let out =
            set_kustomize_tag(KUSTOMIZATION, "registry.example.com/worker-v2", "1234567").unwrap();
        assert_eq!(
            out,
            KUSTOMIZATION.replace("newTag: old", "newTag: \"1234567\"")
        );
    }

    #[test]
    fn kustomize_adds_a_missing_key_entry_or_list() {
        let text = "images:\n- name: app\n  digest: sha256:abc\nresources: [a.yaml]\n";
        assert_eq!(
            set_kustomize_tag(text, "app", "v2").unwrap(),
            "images:\n- name: app\n  digest: sha256:abc\n  newTag: v2\nresources: [a.yaml]\n"
        );
        assert_eq!(
            set_kustomize_tag(text, "other", "v2").unwrap(),
            "images:\n- name: app\n  digest: sha256:abc\n- name: other\n  newTag: v2\nresources: [a.yaml]\n"
        );
        assert_eq!(
            set_kustomize_tag("resources:\n- a.yaml", "app", "v2").unwrap(),
            "resources:\n- a.yaml\nimages:\n- name: app\n  newTag: v2\n"
        );
        assert_eq!(
            set_kustomize_tag("images:\nresources: []\n", "app", "v2").unwrap(),
            "images:\n- name: app\n  newTag: v2\nresources: []\n"
        );
    }

    #[test]
    fn kustomize_refuses_flow_lists() {
        let err = set_kustomize_tag("images: [{name: app, newTag: v1}]\n", "app", "v2");
        assert!(matches!(err, Err(EditError::Unsupported(_))), "{err:?}");
    }

    const VALUES: &str = "\
# Helm values
image:
  repository: registry.example.com/app
  tag: 'v1'  # bumped by gantry
spec:
  template:
    image:
      tag: v1
    replicas: 2
tag: top
";

    #[test]
    fn dotted_path_changes_only_that_value() {
        assert_eq!(
            set_path(VALUES, "image.tag", "abc").unwrap(),
            VALUES.replace("tag: 'v1'", "tag: 'abc'")
        );
        assert_eq!(
            set_path(VALUES, "spec.template.image.tag", "v2.0.1").unwrap(),
            VALUES.replace("      tag: v1", "      tag: v2.0.1")
        );
        assert_eq!(
            set_path(VALUES, "tag", "true").unwrap(),
            VALUES.replace("tag: top", "tag: \"true\"")
        );
    }

    #[test]
    fn dotted_path_reports_what_is_missing_or_unsupported() {
        assert_eq!(
            set_path(VALUES, "spec.template.missing", "x"),
            Err(EditError::NotFound("spec.template.missing".into()))
        );
        assert!(matches!(
            set_path(VALUES, "spec.template", "x"),
            Err(EditError::Unsupported(_))
        ));
        assert!(matches!(
            set_path("a:\n  - b: 1\n", "a.b", "x"),
            Err(EditError::Unsupported(_))
        ));
        assert!(matches!(
            set_path("a: [", "a", "x"),
            Err(EditError::Parse(_))
        ));
    }

    #[test]
    fn plain_scalars_are_used_only_when_they_stay_strings() {
        for s in ["abc123", "v1.2.3", "main-4f2a9c1", "sha-deadbeef"] {
            assert_eq!(render(s, ""), s);
        }
        for s in [
            "123", "1.2", "1e5", "true", "NO", "null", "0x1f", "a b", "-x", "",
        ] {
            assert!(render(s, "").starts_with('"'), "{s}");
        }
        assert_eq!(render("it's", "'x'"), "'it''s'");
    }

    #[test]
    fn crlf_files_keep_their_line_endings() {
        let text = "images:\r\n- name: app\r\n";
        assert_eq!(
            set_kustomize_tag(text, "app", "v2").unwrap(),
            "images:\r\n- name: app\r\n  newTag: v2\r\n"
        );
    }
}
