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
    if let Some((col, help)) = flow_value(source, line, column) {
        return Diagnostic::error(
            file,
            line,
            col,
            format!("invalid YAML in a value that starts a flow collection ({raw})"),
        )
        .with_help(Some(help));
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
        "string scalar" => "a string".into(),
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
fn shape_error(file: &str, source: &str, root: &Sp<Node>, err: &YamlError) -> Diagnostic {
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
            let at = find(root, (line, column), true).unwrap_or_else(|| at_value.clone());
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
    let flow = || {
        (message.contains("found a mapping") || message.contains("found a list"))
            .then(|| flow_value(source, line, column).map(|(_, help)| help))
            .flatten()
    };
    let empty = || {
        message
            .contains("found nothing (null)")
            .then(|| nothing_under(source, line))
            .flatten()
    };
    let job_key_as_job = || match at_value.path.as_slice() {
        [Seg::Key(jobs), Seg::Key(key)] if jobs == "jobs" && JOB_KEYS.contains(&key.as_str()) => {
            Some(format!(
                "`{key}` is read as the name of a job here; as a key of a job, indent it under \
                 the job's name"
            ))
        }
        _ => None,
    };
    let help = match inner {
        YamlError::SerdeUnknownField { field, .. } => {
            let at_key = find(root, (line, column), true).unwrap_or_default();
            misplaced_key(field, &at_key.path, root)
        }
        _ => None,
    }
    .or_else(flow)
    .or_else(empty)
    .or_else(job_key_as_job);
    Diagnostic::error(file, line, column, message).with_help(help)
}

/// Keys only a step has (what a step does).
const STEP_KEYS: &[&str] = &["run", "kaniko", "trivy", "gitops"];
/// Keys only a job has.
const JOB_KEYS: &[&str] = &[
    "steps",
    "needs",
    "image",
    "services",
    "matrix",
    "secrets",
    "resources",
    "retry",
    "node_selector",
    "tolerations",
];

/// A hint for an unknown key that is a known key one level up or down: usually a line indented
/// too little or too much.
fn misplaced_key(field: &str, path: &[Seg], root: &Sp<Node>) -> Option<String> {
    use Seg::{Index, Key};
    let parent = &path[..path.len().saturating_sub(1)];
    let is = |s: &Seg, name: &str| matches!(s, Key(k) if k == name);
    match parent {
        [jobs, Key(job)] if is(jobs, "jobs") && STEP_KEYS.contains(&field) => Some(format!(
            "`{field}` is a key of a step, not of a job: steps are list items under `steps:` \
             (`- {field}: …`); indent it there, under job `{job}`"
        )),
        [jobs, Key(_), steps, Index(_)]
            if is(jobs, "jobs") && is(steps, "steps") && JOB_KEYS.contains(&field) =>
        {
            Some(format!(
                "`{field}` is a key of the job, not of a step: line it up with `steps:`"
            ))
        }
        [] if JOB_KEYS.contains(&field) || STEP_KEYS.contains(&field) => Some(format!(
            "`{field}` belongs to a job: indent it under the job's name, inside `jobs:`"
        )),
        [] => {
            let Node::Map(top) = &root.value else {
                return None;
            };
            let (_, value) = top.iter().find(|(k, _)| k.value == field)?;
            let Node::Map(fields) = &value.value else {
                return None;
            };
            fields.iter().any(|(k, _)| k.value == "steps").then(|| {
                format!("`{field}` looks like a job: jobs go inside `jobs:`, indented under it")
            })
        }
        _ => None,
    }
}

/// Where a value that starts a flow collection (`{` or `[`) begins on `line`, at or before
/// `column`, with a hint to quote it: `{{ name }}` and `[skip ci]` are text to their author but
/// YAML to the parser.
fn flow_value(source: &str, line: usize, column: usize) -> Option<(usize, String)> {
    let text = source.lines().nth(line.checked_sub(1)?)?;
    let chars: Vec<char> = text.chars().collect();
    let start = (0..chars.len().min(column)).find(|&i| {
        if chars[i] != '{' && chars[i] != '[' {
            return false;
        }
        let before: String = chars[..i].iter().collect();
        let before = before.trim_end();
        before.is_empty() || before.ends_with(':') || before.ends_with('-')
    })?;
    let open = chars[start];
    let head: String = chars[..start].iter().collect();
    let value: String = chars[start..].iter().collect();
    let value = value.trim_end();
    let quoted = if value.contains('\'') {
        format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
    } else {
        format!("'{value}'")
    };
    let what = if open == '{' {
        "mapping (`{key: value}`)"
    } else {
        "list (`[a, b]`)"
    };
    Some((
        start + 1,
        format!(
            "a value that starts with `{open}` is a YAML flow {what}; if it is text (a \
             template such as `{{{{ name }}}}`, a `[tag]`), quote the whole value: `{}{quoted}`",
            head.trim_start()
        ),
    ))
}

/// A hint when the value at `line` is empty because the lines below are not indented under it.
fn nothing_under(source: &str, line: usize) -> Option<String> {
    let indent = |l: &str| l.len() - l.trim_start_matches(' ').len();
    let here = source.lines().nth(line.checked_sub(1)?)?;
    let key = here
        .trim()
        .trim_start_matches("- ")
        .split(':')
        .next()?
        .trim();
    let next = source
        .lines()
        .skip(line)
        .find(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))?;
    (indent(next) <= indent(here)).then(|| {
        format!(
            "nothing is indented under `{key}:`; the lines that belong to it must be indented \
             more than `{key}`"
        )
    })
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
    let mut diags = Vec::new();
    find_duplicates(file, &tree, &mut Vec::new(), &mut diags);
    // With duplicates reported, the typed pass takes the first of each and looks for the rest.
    let policy = if diags.is_empty() {
        DuplicateKeyPolicy::Error
    } else {
        DuplicateKeyPolicy::FirstWins
    };
    // The typed pass stops at its first error. To report every independent error in one go,
    // the part of the file that holds it (a step, a job, a top-level key) is set aside — its
    // text blanked, lines kept, so every position stays what it is in the file — and the pass
    // runs again on the rest.
    let mut text = source.to_owned();
    let mut aside = Vec::new();
    for _ in 0..MAX_SHAPE_ERRORS {
        let err = match serde_saphyr::from_str_with_options::<PipelineFile>(&text, options(policy))
        {
            Ok(parsed) if diags.is_empty() => return Ok(parsed),
            Ok(_) => break,
            Err(err) => err,
        };
        if !diags.is_empty() && !is_shape(unwrap_error(&err).0) {
            // Blanking a part broke something else (an anchor it held): not the user's error.
            break;
        }
        let d = shape_error(file, source, &tree, &err);
        let at = offset_of(source, d.line, d.column);
        diags.push(d);
        match set_aside(&tree, source, at, &aside) {
            Some(range) => {
                blank(&mut text, range.clone());
                aside.push(range);
            }
            None => break,
        }
    }
    Err(diags)
}

/// At most this many typed-pass errors are reported for one file.
const MAX_SHAPE_ERRORS: usize = 20;

/// Errors of the typed pass about the file's shape (not its YAML syntax).
fn is_shape(err: &YamlError) -> bool {
    !matches!(
        err,
        YamlError::UnknownAnchor { .. }
            | YamlError::Budget { .. }
            | YamlError::MultipleDocuments { .. }
    )
}

/// Byte offset of a 1-based line and (character) column.
fn offset_of(source: &str, line: usize, column: usize) -> usize {
    let mut start = 0;
    for _ in 1..line {
        match source[start..].find('\n') {
            Some(i) => start += i + 1,
            None => return source.len(),
        }
    }
    let rest = &source[start..];
    start
        + rest
            .char_indices()
            .nth(column.saturating_sub(1))
            .map_or(rest.len(), |(i, _)| i)
}

/// Replaces every character in `range` but line breaks with spaces, one for each of its bytes,
/// so that every byte offset stays what it is in the file.
fn blank(text: &mut String, range: std::ops::Range<usize>) {
    let blanked: String = text[range.clone()]
        .chars()
        .flat_map(|c| {
            let keep = c == '\n' || c == '\r';
            std::iter::repeat_n(
                if keep { c } else { ' ' },
                if keep { 1 } else { c.len_utf8() },
            )
        })
        .collect();
    text.replace_range(range, &blanked);
}

/// Ranges from each start to the next, the last to `end`; `None` unless the starts rise.
fn ranges_from(starts: Vec<usize>, end: usize) -> Option<Vec<std::ops::Range<usize>>> {
    if starts.windows(2).any(|w| w[0] >= w[1]) || starts.last().is_some_and(|s| *s >= end) {
        return None;
    }
    Some(
        starts
            .iter()
            .enumerate()
            .map(|(i, s)| *s..starts.get(i + 1).copied().unwrap_or(end))
            .collect(),
    )
}

/// Whether only spaces (and, for a list item, its `- `) come before `offset` on its line.
fn starts_line(source: &str, offset: usize) -> bool {
    let line_start = source[..offset].rfind('\n').map_or(0, |i| i + 1);
    source[line_start..offset].chars().all(|c| c == ' ')
}

/// The byte ranges of a block mapping's entries: from each key to the next key, the last to
/// `end`. `None` when the mapping is not written in block style.
fn entry_ranges(
    entries: &[(Sp<String>, Sp<Node>)],
    source: &str,
    end: usize,
) -> Option<Vec<std::ops::Range<usize>>> {
    let starts: Vec<usize> = entries
        .iter()
        .map(|(k, _)| {
            k.pos
                .offset
                .filter(|o| *o < end && source.is_char_boundary(*o) && starts_line(source, *o))
        })
        .collect::<Option<_>>()?;
    ranges_from(starts, end)
}

/// The byte ranges of a block list's items: from each `-` to the next, the last to `end`.
fn item_ranges(
    items: &[Sp<Node>],
    source: &str,
    end: usize,
) -> Option<Vec<std::ops::Range<usize>>> {
    let starts: Vec<usize> = items
        .iter()
        .map(|item| {
            let at = item
                .pos
                .offset
                .filter(|o| *o < end && source.is_char_boundary(*o))?;
            let dash = source[..at].trim_end_matches(' ').strip_suffix('-')?.len();
            starts_line(source, dash).then_some(dash)
        })
        .collect::<Option<_>>()?;
    ranges_from(starts, end)
}

/// The part of the file to set aside after an error at byte `at`: the step that holds it, or
/// its job, or the top-level entry (never `jobs` itself, and never a part whose list or mapping
/// would be left empty, which would be an error of its own). `None` when there is no such part.
fn set_aside(
    root: &Sp<Node>,
    source: &str,
    at: usize,
    aside: &[std::ops::Range<usize>],
) -> Option<std::ops::Range<usize>> {
    let Node::Map(top) = &root.value else {
        return None;
    };
    let holding = |ranges: &[std::ops::Range<usize>]| ranges.iter().position(|r| r.contains(&at));
    let left = |ranges: &[std::ops::Range<usize>]| {
        ranges
            .iter()
            .filter(|r| !aside.iter().any(|a| a.start <= r.start && r.end <= a.end))
            .count()
    };
    let tops = entry_ranges(top, source, source.len())?;
    let t = holding(&tops)?;
    let (key, value) = &top[t];
    if key.value != "jobs" {
        return Some(tops[t].clone());
    }
    let Node::Map(jobs) = &value.value else {
        return None;
    };
    let job_ranges = entry_ranges(jobs, source, tops[t].end)?;
    let j = holding(&job_ranges)?;
    let job = job_ranges[j].clone();
    let step = match &jobs[j].1.value {
        Node::Map(fields) => entry_ranges(fields, source, job.end).and_then(|field_ranges| {
            let f = holding(&field_ranges)?;
            let (name, steps) = &fields[f];
            let Node::Seq(items) = &steps.value else {
                return None;
            };
            if name.value != "steps" {
                return None;
            }
            let items = item_ranges(items, source, field_ranges[f].end)?;
            let s = holding(&items)?;
            (left(&items) > 1).then(|| items[s].clone())
        }),
        _ => None,
    };
    step.or_else(|| (left(&job_ranges) > 1).then_some(job))
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
