//! Every file in `tests/broken/` is a pipeline with one mistake. Its first line says where the
//! first error must be and what it must say: `# expect: LINE:COLUMN: MESSAGE` (a substring of
//! the message); a second line `# help: HINT` says what its hint must say.

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
        let help = source
            .lines()
            .nth(1)
            .and_then(|l| l.strip_prefix("# help: "));
        if let Some(help) = help
            && !first.help.as_deref().is_some_and(|h| h.contains(help))
        {
            failures.push(format!(
                "{name}: expected the hint {help:?}\n    got {:?}",
                first.help
            ));
        }
        let shown = first.to_string();
        assert!(shown.starts_with(&format!("{name}:{}:{}: error: ", first.line, first.column)));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Mistakes in different places (the triggers, two steps of one job, two other jobs, a
/// duplicate) are all reported in one pass, each once, with nothing they do not cause.
#[test]
fn every_independent_error_is_reported_in_one_pass() {
    let source = "\
on:
  pussh: {}
jobs:
  build:
    stepz:
      - run: make
  test:
    steps:
      - run: make test
        needs: [build]
      - run: make more
      - runs: make docs
  lint:
    steps:
      - run: make lint
    run: cargo clippy
  lint:
    steps:
      - run: make lint
";
    let found: Vec<String> = gantry_pipeline::lint("multi.yaml", source)
        .iter()
        .map(|d| format!("{}:{} {}", d.line, d.column, d.message))
        .collect();
    let expected = [
        "2:3 unknown key `pussh` in `on`",
        "5:5 unknown key `stepz` in job `build`",
        "10:9 unknown key `needs` in step 1 of job `test`",
        "12:9 unknown key `runs` in step 3 of job `test`",
        "16:5 unknown key `run` in job `lint`",
        "17:3 duplicate job name `lint`",
    ];
    assert_eq!(found.len(), expected.len(), "{found:#?}");
    for (f, e) in found.iter().zip(expected) {
        assert!(f.starts_with(e), "expected {e:?}, got {f:?} in {found:#?}");
    }
}

/// What `gantry lint` prints: the message, where, the line itself with the place underlined,
/// and the hint; a position past the end still renders.
#[test]
fn a_diagnostic_shows_its_line_with_a_caret_under_the_column_and_its_hint() {
    let source = "jobs:\n  build:\n    steps:\n      - run: make\n    run: make test\n";
    let d = gantry_pipeline::lint("ci.yaml", source);
    assert_eq!(d.len(), 1, "{d:?}");
    let shown = d[0].render(source, false);
    let lines: Vec<&str> = shown.lines().collect();
    assert!(
        lines[0].starts_with("error: unknown key `run` in job `build`"),
        "{shown}"
    );
    assert_eq!(lines[1].trim(), "--> ci.yaml:5:5", "{shown}");
    let code = lines
        .iter()
        .position(|l| l.ends_with("run: make test"))
        .unwrap();
    assert!(lines[code].starts_with("5 |"), "{shown}");
    // The caret line puts `^^^` under `run`, column 5 of the source line.
    let caret = lines[code + 1];
    let gutter = lines[code].find("    run").unwrap();
    assert_eq!(&caret[gutter + 4..].trim_end(), &"^^^", "{shown}");
    assert!(
        shown.contains("= help: `run` is a key of a step, not of a job"),
        "{shown}"
    );
    assert!(!shown.contains('\u{1b}'), "plain has no colours: {shown:?}");
    assert!(d[0].render(source, true).contains('\u{1b}'));
    let mut past = d[0].clone();
    past.line = 99;
    assert_eq!(past.render(source, false), past.to_string());
}
