//! `${VARIABLES}`: the built-ins, how text refers to them, and how it is checked and expanded.

use std::collections::BTreeMap;

/// Built-in variables and what they hold. Every job's environment has all of them.
pub const VARIABLES: &[(&str, &str)] = &[
    (
        "GANTRY_COMMIT_SHA",
        "The full SHA of the commit being built.",
    ),
    (
        "GANTRY_COMMIT_SHORT_SHA",
        "The first 8 characters of GANTRY_COMMIT_SHA.",
    ),
    (
        "GANTRY_REF",
        "The full git ref: `refs/heads/main`, `refs/tags/v1.2.0`, `refs/pull/7/head`.",
    ),
    (
        "GANTRY_BRANCH",
        "The branch built (for a pull request, its head branch); empty for a tag.",
    ),
    (
        "GANTRY_TAG",
        "The tag built; empty unless the run is for a tag.",
    ),
    (
        "GANTRY_EVENT",
        "What started the run: `push`, `pull_request`, `tag` or `manual`.",
    ),
    ("GANTRY_REPO", "The repository as `owner/name`."),
    ("GANTRY_REPO_URL", "The repository's clone URL."),
    ("GANTRY_RUN_ID", "The run's id (a UUID)."),
    (
        "GANTRY_RUN_URL",
        "The run's page in Gantry's viewer (`PUBLIC_URL/runs/RUN_ID`); empty where there is no viewer (`gantry run`).",
    ),
    (
        "GANTRY_JOB",
        "The job's name, with matrix values for a matrix job: `test (rust=1.95)`.",
    ),
    ("GANTRY_PIPELINE", "The pipeline's name."),
    (
        "GANTRY_PR_NUMBER",
        "The pull request's number; empty unless the run is for a pull request.",
    ),
];

pub(crate) fn is_builtin(name: &str) -> bool {
    VARIABLES.iter().any(|(n, _)| *n == name)
}

/// The values of the built-ins for one job.
pub(crate) fn builtins(
    ctx: &crate::PlanContext<'_>,
    pipeline: &str,
    job: &str,
) -> BTreeMap<String, String> {
    let trigger = ctx.trigger;
    let short: String = trigger.sha.chars().take(8).collect();
    let values = [
        ("GANTRY_COMMIT_SHA", trigger.sha.clone()),
        ("GANTRY_COMMIT_SHORT_SHA", short),
        ("GANTRY_REF", trigger.git_ref.clone()),
        ("GANTRY_BRANCH", trigger.branch.clone().unwrap_or_default()),
        ("GANTRY_TAG", trigger.tag.clone().unwrap_or_default()),
        ("GANTRY_EVENT", trigger.event.as_str().to_owned()),
        ("GANTRY_REPO", trigger.repo.full_name.clone()),
        ("GANTRY_REPO_URL", trigger.repo.clone_url.clone()),
        ("GANTRY_RUN_ID", ctx.run_id.to_string()),
        ("GANTRY_RUN_URL", ctx.run_url.unwrap_or_default().to_owned()),
        ("GANTRY_JOB", job.to_owned()),
        ("GANTRY_PIPELINE", pipeline.to_owned()),
        (
            "GANTRY_PR_NUMBER",
            trigger
                .pull_request
                .as_ref()
                .map(|pr| pr.number.to_string())
                .unwrap_or_default(),
        ),
    ];
    values.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

/// A piece of text with variables.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Piece<'a> {
    Text(&'a str),
    /// `${name}`; `at` is the byte index of its `$`.
    Var {
        name: &'a str,
        at: usize,
    },
}

/// A malformed reference: byte index and message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Malformed {
    pub at: usize,
    pub message: String,
}

fn valid_name(name: &str) -> bool {
    let plain = |n: &str| {
        n.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    match name.strip_prefix("matrix.") {
        Some(key) => crate::values::is_matrix_key(key),
        None => plain(name),
    }
}

/// Bytes up to the next character (text is walked byte-wise, but only sliced at characters).
fn next_char_len(text: &str, i: usize) -> usize {
    text[i..].chars().next().map_or(1, char::len_utf8)
}

/// Splits text into literal pieces and `${NAME}` references; `$${` is a literal `${`.
pub(crate) fn scan(text: &str) -> Result<Vec<Piece<'_>>, Malformed> {
    let mut pieces = Vec::new();
    let mut lit_start = 0;
    let mut i = 0;
    let bytes = text.as_bytes();
    while i < bytes.len() {
        if text[i..].starts_with("$${") {
            pieces.push(Piece::Text(&text[lit_start..i + 1]));
            i += 3;
            lit_start = i - 1; // keep the `{`: `$${` → `${`
            continue;
        }
        if text[i..].starts_with("${") {
            let Some(len) = text[i + 2..].find('}') else {
                return Err(Malformed {
                    at: i,
                    message:
                        "unterminated `${`: close it with `}` (write `$${` for a literal `${`)"
                            .into(),
                });
            };
            let name = &text[i + 2..i + 2 + len];
            if !valid_name(name) {
                return Err(Malformed {
                    at: i,
                    message: format!(
                        "invalid variable reference `${{{name}}}`: expected `${{NAME}}` or `${{matrix.KEY}}`"
                    ),
                });
            }
            if lit_start < i {
                pieces.push(Piece::Text(&text[lit_start..i]));
            }
            pieces.push(Piece::Var { name, at: i });
            i += 3 + len;
            lit_start = i;
            continue;
        }
        i += next_char_len(text, i);
    }
    if lit_start < text.len() {
        pieces.push(Piece::Text(&text[lit_start..]));
    }
    Ok(pieces)
}

/// In scripts only `${matrix.KEY}` is replaced; `${GANTRY_*}` references are checked (the shell
/// reads them from the environment); everything else belongs to the shell. `$${` is `${`.
pub(crate) fn scan_script(text: &str) -> Vec<Piece<'_>> {
    let mut pieces = Vec::new();
    let mut lit_start = 0;
    let mut i = 0;
    while i < text.len() {
        if text[i..].starts_with("$${") {
            pieces.push(Piece::Text(&text[lit_start..i + 1]));
            i += 3;
            lit_start = i - 1;
            continue;
        }
        if text[i..].starts_with("${") {
            let rest = &text[i + 2..];
            let len = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-'))
                .unwrap_or(rest.len());
            let name = &rest[..len];
            let closed = rest[len..].starts_with('}');
            if name.starts_with("matrix.") && closed {
                if lit_start < i {
                    pieces.push(Piece::Text(&text[lit_start..i]));
                }
                pieces.push(Piece::Var { name, at: i });
                i += 3 + len;
                lit_start = i;
                continue;
            }
            if name.starts_with("GANTRY_") && !is_builtin(name) {
                // Reported by the checker; kept as text.
                if lit_start < i {
                    pieces.push(Piece::Text(&text[lit_start..i]));
                }
                pieces.push(Piece::Var { name, at: i });
                lit_start = i;
                i += 2;
                continue;
            }
        }
        i += next_char_len(text, i);
    }
    if lit_start < text.len() {
        pieces.push(Piece::Text(&text[lit_start..]));
    }
    pieces
}

/// Replaces references with values; a name without a value expands to nothing.
pub(crate) fn expand(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    match scan(text) {
        Ok(pieces) => join(&pieces, lookup, false),
        Err(_) => text.to_owned(),
    }
}

pub(crate) fn expand_script(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    join(&scan_script(text), lookup, true)
}

fn join(pieces: &[Piece<'_>], lookup: &dyn Fn(&str) -> Option<String>, script: bool) -> String {
    let mut out = String::new();
    for p in pieces {
        match p {
            Piece::Text(t) => out.push_str(t),
            Piece::Var { name, .. } if script && !name.starts_with("matrix.") => {}
            Piece::Var { name, .. } => out.push_str(&lookup(name).unwrap_or_default()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(name: &str) -> Option<String> {
        match name {
            "A" => Some("1".into()),
            "matrix.os" => Some("linux".into()),
            _ => None,
        }
    }

    #[test]
    fn expands_references_and_escapes() {
        assert_eq!(expand("x-${A}-${matrix.os}", &lookup), "x-1-linux");
        assert_eq!(expand("$${A} ${A}", &lookup), "${A} 1");
        assert_eq!(expand("cost: $5 {x}", &lookup), "cost: $5 {x}");
        assert_eq!(expand("${A}${A}", &lookup), "11");
    }

    #[test]
    fn finds_malformed_references() {
        assert_eq!(scan("ab ${A").unwrap_err().at, 3);
        assert!(scan("${a b}").is_err());
        assert!(scan("${matrix.}").is_err());
        assert!(scan("${}").is_err());
    }

    #[test]
    fn non_ascii_text_is_walked_by_characters() {
        // Found by the fuzzer: slicing inside a multi-byte character panicked.
        assert_eq!(expand("ma\u{fffd}ke ${A} ü", &lookup), "ma\u{fffd}ke 1 ü");
        assert_eq!(expand_script("é${matrix.os}ß", &lookup), "élinuxß");
    }

    #[test]
    fn scripts_replace_only_matrix_values() {
        assert_eq!(
            expand_script("echo ${matrix.os} ${HOME} ${A:-x} $${matrix.os}", &lookup),
            "echo linux ${HOME} ${A:-x} ${matrix.os}"
        );
        let pieces = scan_script("echo ${GANTRY_NOPE} ${GANTRY_COMMIT_SHA}");
        assert!(pieces.contains(&Piece::Var {
            name: "GANTRY_NOPE",
            at: 5
        }));
        assert_eq!(
            expand_script("echo ${GANTRY_NOPE} ${GANTRY_COMMIT_SHA}", &lookup),
            "echo ${GANTRY_NOPE} ${GANTRY_COMMIT_SHA}"
        );
    }
}
