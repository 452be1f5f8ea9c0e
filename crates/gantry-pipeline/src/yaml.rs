//! From text to the typed file model, with every YAML or shape error turned into a diagnostic
//! that names the place and says what was expected.
//!
//! Two passes over the text: a generic tree first (it sees duplicate keys with both positions
//! and tells later messages where in the document a position is), then the typed model.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::options::{AliasLimits, DuplicateKeyPolicy};
use serde_saphyr::{Error as YamlError, Options};

use crate::diagnostic::Diagnostic;
use crate::model::PipelineFile;
use crate::spanned::{Pos, Sp};
use crate::suggest::did_you_mean;

/// Larger pipeline files are refused before parsing.
pub(crate) const MAX_FILE_BYTES: usize = 1024 * 1024;

fn options(duplicates: DuplicateKeyPolicy) -> Options {
    let mut alias_limits = AliasLimits::default();
    alias_limits.max_total_replayed_events = 100_000;
    alias_limits.max_alias_expansions_per_anchor = 1_000;
    alias_limits.max_replay_stack_depth = 16;
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_events: 200_000,
            max_aliases: 1_000,
            max_anchors: 1_000,
            max_depth: 48,
            max_documents: 1,
            max_nodes: 100_000,
            max_total_scalar_bytes: 4 * 1024 * 1024,
            max_merge_keys: 1_000,
        },
        alias_limits: alias_limits,
        duplicate_keys: duplicates,
        with_snippet: false,
        crop_radius: 0,
    }
}

/// A YAML document, generically: enough to find duplicates and to name a position's path.
#[derive(Clone, Debug)]
pub(crate) enum Node {
    Map(Vec<(Sp<String>, Sp<Node>)>),
    Seq(Vec<Sp<Node>>),
    Scalar(String),
    Null,
}

impl Node {
    fn kind(&self) -> &'static str {
        match self {
            Node::Map(_) => "a mapping",
            Node::Seq(_) => "a list",
            Node::Scalar(_) => "a scalar",
            Node::Null => "nothing (null)",
        }
    }
}

struct Key(String);

impl<'de> Deserialize<'de> for Key {
    // As a string: `on` is the key `on`, not YAML 1.1's `true`.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Key)
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Node;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any YAML value")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
                Ok(Node::Scalar(v.to_owned()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Node, E> {
                Ok(Node::Scalar(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node, E> {
                Ok(Node::Scalar(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
                Ok(Node::Scalar(v.to_string()))
            }
            fn visit_i128<E: de::Error>(self, v: i128) -> Result<Node, E> {
                Ok(Node::Scalar(v.to_string()))
            }
            fn visit_u128<E: de::Error>(self, v: u128) -> Result<Node, E> {
                Ok(Node::Scalar(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
                Ok(Node::Scalar(v.to_string()))
            }
            fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Node, E> {
                Ok(Node::Scalar(String::new()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
                Ok(Node::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Node, E> {
                Ok(Node::Null)
            }
            fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Node, D2::Error> {
                Node::deserialize(d)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Sp<Node>>()? {
                    items.push(item);
                }
                Ok(Node::Seq(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<Sp<Key>>()? {
                    let value = map.next_value::<Sp<Node>>()?;
                    entries.push((Sp::new(key.value.0, key.pos), value));
                }
                Ok(Node::Map(entries))
            }
        }
        d.deserialize_any(V)
    }
}

/// One step of a path into the document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

/// Where a position is in the document.
#[derive(Clone, Debug, Default)]
struct Found {
    path: Vec<Seg>,
    node: Option<&'static str>,
    scalar: Option<String>,
}

/// The path of the mapping entry whose key is at `at` (`key = true`) or of the value at `at`.
fn find(root: &Sp<Node>, at: (usize, usize), key: bool) -> Option<Found> {
    fn walk(node: &Sp<Node>, at: (usize, usize), key: bool, path: &mut Vec<Seg>) -> Option<Found> {
        let here = (node.pos.line, node.pos.column) == at;
        if here && !key {
            return Some(Found {
                path: path.clone(),
                node: Some(node.value.kind()),
                scalar: match &node.value {
                    Node::Scalar(s) => Some(s.clone()),
                    _ => None,
                },
            });
        }
        match &node.value {
            Node::Map(entries) => {
                for (k, v) in entries {
                    path.push(Seg::Key(k.value.clone()));
                    if key && (k.pos.line, k.pos.column) == at {
                        return Some(Found {
                            path: path.clone(),
                            node: None,
                            scalar: None,
                        });
                    }
                    if let Some(f) = walk(v, at, key, path) {
                        return Some(f);
                    }
                    path.pop();
                }
            }
            Node::Seq(items) => {
                for (i, v) in items.iter().enumerate() {
                    path.push(Seg::Index(i));
                    if let Some(f) = walk(v, at, key, path) {
                        return Some(f);
                    }
                    path.pop();
                }
            }
            _ => {}
        }
        None
    }
    walk(root, at, key, &mut Vec::new())
}

/// `jobs.build.steps[0].run`
pub(crate) fn path_text(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// How a user would name the thing at `path` (a mapping): "job `build`", "step 1 of job `build`".
pub(crate) fn context(path: &[Seg]) -> String {
    use Seg::{Index, Key};
    let k = |s: &Seg, name: &str| matches!(s, Key(k) if k == name);
    match path {
        [] => "the pipeline".into(),
        [on] if k(on, "on") => "`on`".into(),
        [jobs, Key(job)] if k(jobs, "jobs") => format!("job `{job}`"),
        [jobs, Key(job), steps, Index(i)] if k(jobs, "jobs") && k(steps, "steps") => {
            format!("step {} of job `{job}`", i + 1)
        }
        [jobs, Key(job), steps, Index(i), Key(what), ..]
            if k(jobs, "jobs") && k(steps, "steps") =>
        {
            let rest = path_text(&path[4..]);
            let _ = what;
            format!("`{rest}` of step {} of job `{job}`", i + 1)
        }
        [jobs, Key(job), services, Key(svc)] if k(jobs, "jobs") && k(services, "services") => {
            format!("service `{svc}` of job `{job}`")
        }
        [jobs, Key(job), ..] if k(jobs, "jobs") => {
            format!("`{}` of job `{job}`", path_text(&path[2..]))
        }
        _ => format!("`{}`", path_text(path)),
    }
}

fn last_key(path: &[Seg]) -> Option<&str> {
    path.iter().rev().find_map(|s| match s {
        Seg::Key(k) => Some(k.as_str()),
        Seg::Index(_) => None,
    })
}

fn line_col(source: &str, byte: usize) -> (usize, usize) {
    let byte = byte.min(source.len());
    let mut cut = byte;
    while !source.is_char_boundary(cut) {
        cut -= 1;
    }
    let before = &source[..cut];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// The first tab in a line's indentation, as (line, column).
fn tab_in_indentation(source: &str, up_to_line: usize) -> Option<(usize, usize)> {
    for (i, line) in source.lines().enumerate().take(up_to_line.max(1)) {
        let indent: String = line
            .chars()
            .take_while(|c| *c == ' ' || *c == '\t')
            .collect();
        if let Some(col) = indent.chars().position(|c| c == '\t') {
            let rest = &line[indent.len()..];
            if !rest.is_empty() && !rest.starts_with('#') {
                return Some((i + 1, col + 1));
            }
        }
    }
    None
}

fn strip_location(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

fn unwrap_error(err: &YamlError) -> (&YamlError, Option<(usize, usize)>) {
    let loc = err
        .location()
        .filter(|l| l.line() > 0)
        .map(|l| (l.line() as usize, l.column() as usize));
    let mut inner = err;
    loop {
        match inner {
            YamlError::WithSnippet { error, .. } => inner = error,
            YamlError::AliasError { error, .. } => inner = error,
            _ => break,
        }
    }
    (inner, loc)
}

/// A YAML syntax error (the generic pass failed).
fn syntax_error(file: &str, source: &str, err: &YamlError) -> Diagnostic {
    let (inner, loc) = unwrap_error(err);
    let (line, column) = loc.unwrap_or((1, 1));
    let raw = strip_location(&inner.to_string());
    if let Some((tl, tc)) = tab_in_indentation(source, line) {
        return Diagnostic::error(
            file,
            tl,
            tc,
            "tabs are not allowed for indentation; use spaces",
        );
    }
    let message = match inner {
        YamlError::Budget { breach, .. } if format!("{breach:?}").starts_with("Documents") => {
            "a pipeline file holds one YAML document; remove the extra `---`".into()
        }
        YamlError::Budget { breach, .. } => {
            format!("the document is too large or too deeply nested ({breach:?}); simplify it")
        }
        YamlError::AliasReplayLimitExceeded { .. }
        | YamlError::AliasExpansionLimitExceeded { .. }
        | YamlError::AliasReplayStackDepthExceeded { .. }
        | YamlError::AliasReplayCounterOverflow { .. } => {
            "aliases expand to too much data (an alias bomb?); use fewer `*alias` references".into()
        }
        YamlError::MultipleDocuments { .. } => {
            "a pipeline file holds one YAML document; remove the extra `---`".into()
        }
        YamlError::UnknownAnchor { .. } => {
            "this alias (`*name`) refers to no anchor (`&name`)".into()
        }
        _ if raw.contains("did not find expected key") => format!(
            "bad indentation: expected a key at this level (line up keys of the same mapping, indent values more than their key) ({raw})"
        ),
        _ if raw.contains("mapping values are not allowed") => format!(
            "bad indentation or a `: ` inside a plain value (quote the value, or fix the indentation) ({raw})"
        ),
        _ if raw.contains("did not find expected '-'") => {
            format!("bad indentation in a list: items must line up ({raw})")
        }
        _ if raw.contains("unclosed quote")
            || raw.contains("unexpected end of stream while scanning a quoted") =>
        {
            "unclosed quote: this string never ends".into()
        }
        _ => format!("invalid YAML: {raw}"),
    };
    Diagnostic::error(file, line, column, message)
}

fn find_duplicates(file: &str, node: &Sp<Node>, path: &mut Vec<Seg>, out: &mut Vec<Diagnostic>) {
    match &node.value {
        Node::Map(entries) => {
            for (i, (k, _)) in entries.iter().enumerate() {
                if let Some((first, _)) = entries[..i].iter().find(|(f, _)| f.value == k.value) {
                    let what = if path.len() == 1 && path[0] == Seg::Key("jobs".into()) {
                        format!("duplicate job name `{}`", k.value)
                    } else {
                        format!("duplicate key `{}` in {}", k.value, context(path))
                    };
                    out.push(Diagnostic::error(
                        file,
                        k.pos.line,
                        k.pos.column,
                        format!(
                            "{what}; it is first defined at {}:{}",
                            first.pos.line, first.pos.column
                        ),
                    ));
                }
            }
            for (k, v) in entries {
                path.push(Seg::Key(k.value.clone()));
                find_duplicates(file, v, path, out);
                path.pop();
            }
        }
        Node::Seq(items) => {
            for (i, v) in items.iter().enumerate() {
                path.push(Seg::Index(i));
                find_duplicates(file, v, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

fn humane_type(ty: &str) -> String {
    match ty {
        "u8" | "u16" | "u32" | "u64" | "usize" => "a whole number (0 or more)".into(),
        "i8" | "i16" | "i32" | "i64" | "isize" => "a whole number".into(),
        "bool" => "`true` or `false`".into(),
        "f32" | "f64" => "a number".into(),
        other => format!("a {other}"),
    }
}

fn humane_expected(expected: &str) -> String {
    match expected {
        "a sequence" => "a list".into(),
        "a map" => "a mapping".into(),
        "mapping start" => "a mapping (`key: value` lines)".into(),
        "sequence start" => "a list (`- item` lines or `[a, b]`)".into(),
        e => e.into(),
    }
}

fn humane_found(unexpected: &str) -> String {
    match unexpected {
        "sequence" => "a list".into(),
        "map" => "a mapping".into(),
        "unit value" => "nothing (null)".into(),
        u => u.into(),
    }
}

/// A typed-pass error, explained with where in the document it is.
fn shape_error(file: &str, root: &Sp<Node>, err: &YamlError) -> Diagnostic {
    let (inner, loc) = unwrap_error(err);
    let (line, column) = loc.unwrap_or((1, 1));
    let at_value = find(root, (line, column), false)
        .or_else(|| find(root, (line, column), true))
        .unwrap_or_default();
    let what = |f: &Found| match last_key(&f.path) {
        Some(key) if f.path.len() > 1 => {
            let parent_len = f
                .path
                .iter()
                .rposition(|s| matches!(s, Seg::Key(_)))
                .unwrap_or(0);
            format!("`{key}` in {}", context(&f.path[..parent_len]))
        }
        Some(key) => format!("`{key}`"),
        None => "the pipeline".into(),
    };
    let message = match inner {
        YamlError::SerdeUnknownField {
            field, expected, ..
        } => {
            let at_key = find(root, (line, column), true).unwrap_or_default();
            let parent = &at_key.path[..at_key.path.len().saturating_sub(1)];
            let ctx = if at_key.path.is_empty() {
                "the pipeline".into()
            } else {
                context(parent)
            };
            match did_you_mean(field, expected.iter().copied()) {
                Some(s) => format!("unknown key `{field}` in {ctx}, did you mean `{s}`?"),
                None => format!(
                    "unknown key `{field}` in {ctx}; expected one of {}",
                    list(expected)
                ),
            }
        }
        YamlError::SerdeUnknownVariant {
            variant, expected, ..
        } => {
            // A single value in a "one or a list" field is reported at its key.
            let at = find(root, (line, column), true).unwrap_or(at_value);
            let noun = last_key(&at.path)
                .filter(|k| ["event", "status", "severity", "operator", "effect"].contains(k))
                .unwrap_or("value");
            let hint = did_you_mean(variant, expected.iter().copied())
                .map(|s| format!(", did you mean `{s}`?"))
                .unwrap_or_default();
            format!(
                "unknown {noun} `{variant}`; expected one of {}{hint}",
                list(expected)
            )
        }
        YamlError::SerdeMissingField { field, .. } => {
            format!("missing key `{field}` in {}", context(&at_value.path))
        }
        YamlError::SerdeInvalidType {
            unexpected,
            expected,
            ..
        }
        | YamlError::SerdeInvalidValue {
            unexpected,
            expected,
            ..
        } => format!(
            "wrong type for {}: expected {}, found {}",
            what(&at_value),
            humane_expected(expected),
            humane_found(unexpected)
        ),
        YamlError::InvalidScalar { ty, .. } => format!(
            "wrong type for {}: expected {}, found `{}`",
            what(&at_value),
            humane_type(ty),
            at_value.scalar.clone().unwrap_or_default()
        ),
        YamlError::Unexpected { expected, .. } => format!(
            "wrong type for {}: expected {}, found {}",
            what(&at_value),
            humane_expected(expected),
            match &at_value.scalar {
                Some(text) => format!("`{text}`"),
                None => at_value.node.unwrap_or("something else").to_owned(),
            }
        ),
        YamlError::NullIntoString { .. } => format!(
            "{} is empty: expected a value (write `\"\"` for an empty string)",
            what(&at_value)
        ),
        other => strip_location(&other.to_string()),
    };
    Diagnostic::error(file, line, column, message)
}

fn list(items: &[&str]) -> String {
    items
        .iter()
        .map(|i| format!("`{i}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Text → typed model, or the diagnostics that explain why not.
pub(crate) fn load(file: &str, source: &str) -> Result<PipelineFile, Vec<Diagnostic>> {
    if source.len() > MAX_FILE_BYTES {
        return Err(vec![Diagnostic::error(
            file,
            1,
            1,
            format!(
                "the file is {} bytes; pipeline files may be at most {MAX_FILE_BYTES} bytes",
                source.len()
            ),
        )]);
    }
    let tree: Sp<Node> =
        match serde_saphyr::from_str_with_options(source, options(DuplicateKeyPolicy::PassThrough))
        {
            Ok(tree) => tree,
            Err(err) => return Err(vec![syntax_error(file, source, &err)]),
        };
    match &tree.value {
        Node::Null => {
            return Err(vec![Diagnostic::error(
                file,
                1,
                1,
                "the file is empty: a pipeline needs at least `jobs`",
            )]);
        }
        Node::Map(_) => {}
        other => {
            return Err(vec![Diagnostic::error(
                file,
                tree.pos.line,
                tree.pos.column,
                format!(
                    "expected a mapping at the top level (keys like `on`, `env`, `jobs`), found {}",
                    other.kind()
                ),
            )]);
        }
    }
    let mut dups = Vec::new();
    find_duplicates(file, &tree, &mut Vec::new(), &mut dups);
    if !dups.is_empty() {
        return Err(dups);
    }
    serde_saphyr::from_str_with_options::<PipelineFile>(source, options(DuplicateKeyPolicy::Error))
        .map_err(|err| vec![shape_error(file, &tree, &err)])
}

/// Position (line, column) of the first `needle` at or after a value's text, for messages
/// about a part of a string (a `${VARIABLE}` inside it).
pub(crate) fn locate_in(source: &str, pos: Pos, needle: &str) -> (usize, usize) {
    if let Some(start) = pos
        .offset
        .filter(|o| *o <= source.len() && source.is_char_boundary(*o))
        && let Some(i) = source[start..].find(needle)
    {
        return line_col(source, start + i);
    }
    (pos.line, pos.column)
}
