//! Every file in `tests/broken/` is a pipeline with one mistake. Its first line says where the
//! first error must be and what it must say: `# expect: LINE:COLUMN: MESSAGE` (a substring of
//! the message).

use std::path::{Path, PathBuf};

fn corpus() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/broken");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/broken exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

fn expectation(source: &str) -> Option<(usize, usize, String)> {
    let rest = source.lines().next()?.strip_prefix("# expect: ")?;
    let mut parts = rest.splitn(3, ':');
    let l = parts.next()?.trim().parse().ok()?;
    let c = parts.next()?.trim().parse().ok()?;
    let m = parts.next()?.trim().to_owned();
    (!m.is_empty()).then_some((l, c, m))
}

#[test]
fn the_corpus_is_large_enough() {
    assert!(corpus().len() >= 35, "{} broken pipelines", corpus().len());
}

#[test]
fn every_broken_pipeline_reports_its_expected_diagnostic() {
    let mut failures = Vec::new();
    for path in corpus() {
        let source = std::fs::read_to_string(&path).expect("readable");
        let name = format!(
            "tests/broken/{}",
            path.file_name().unwrap().to_string_lossy()
        );
        let diagnostics = gantry_pipeline::lint(&name, &source);
        let parsed = gantry_pipeline::parse(&name, &source);
        let first = diagnostics.iter().find(|d| d.is_error());
        let rendered: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
        if std::env::var_os("GANTRY_SHOW").is_some() {
            println!("{}", rendered.join("\n"));
        }
        let Some(first) = first else {
            failures.push(format!("{name}: no error (got {rendered:?})"));
            continue;
        };
        if parsed.is_ok() {
            failures.push(format!("{name}: lint has errors but parse succeeded"));
        }
        let Some((line, column, message)) = expectation(&source) else {
            failures.push(format!(
                "{name}: first line must be `# expect: LINE:COLUMN: MESSAGE`"
            ));
            continue;
        };
        let ok = first.file == name
            && first.line == line
            && first.column == column
            && first.message.contains(&message);
        if !ok {
            failures.push(format!(
                "{name}: expected {line}:{column}: {message}\n    got {first}"
            ));
        }
        let shown = first.to_string();
        assert!(shown.starts_with(&format!("{name}:{}:{}: error: ", first.line, first.column)));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
