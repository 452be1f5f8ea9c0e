//! `gantry lint` and `gantry schema` as a user runs them.

use crate::support::{Repo, gantry, run, workspace};

#[test]
fn every_example_pipeline_lints_clean() {
    let ran = run(gantry(&workspace(), &["lint", "pipelines"]));
    assert_eq!(ran.code, Some(0), "{}", ran.all());
    let count = std::fs::read_dir(workspace().join("pipelines"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "yaml")
        })
        .count();
    assert!(count >= 5, "expected the example pipelines in pipelines/");
    assert_eq!(ran.stdout.matches(": ok").count(), count, "{}", ran.all());
}

#[test]
fn lint_reports_each_error_with_file_line_and_column_and_fails() {
    let repo = Repo::new();
    repo.write(
        "bad.yaml",
        "jobs:\n  a:\n    needs: [b]\n    steps:\n      - run: echo a\n  b:\n    needs: [a]\n    steps:\n      - run: echo b\n",
    );
    repo.write(
        "good.yaml",
        "jobs:\n  a:\n    steps:\n      - run: echo a\n",
    );
    let ran = run(gantry(repo.path(), &["lint", "good.yaml", "bad.yaml"]));
    assert_eq!(ran.code, Some(1), "{}", ran.all());
    assert!(ran.stdout.contains("good.yaml: ok"), "{}", ran.all());
    assert!(ran.stderr.contains("bad.yaml:"), "{}", ran.all());
    assert!(ran.stderr.contains("cycle"), "{}", ran.all());
}

/// As rustc shows an error: the message, `--> file:line:column`, the line with a caret under
/// the place, a hint for a likely slip (here a `{{ … }}` template that YAML reads as a flow
/// mapping); and every independent error of a file at once, not one per try.
#[test]
fn lint_shows_each_error_under_its_line_with_a_caret_and_every_one_at_once() {
    let repo = Repo::new();
    repo.write(
        "flow.yaml",
        "jobs:\n  build:\n    image: {{ registry }}/app\n    steps:\n      - run: make\n",
    );
    repo.write(
        "many.yaml",
        "jobs:\n  a:\n    stepz:\n      - run: a\n  b:\n    steps:\n      - run: b\n        needs: [a]\n",
    );
    let ran = run(gantry(repo.path(), &["lint", "flow.yaml", "many.yaml"]));
    assert_eq!(ran.code, Some(1), "{}", ran.all());
    let err = &ran.stderr;
    assert!(err.contains("--> flow.yaml:3:12"), "{}", ran.all());
    assert!(
        err.contains("3 |     image: {{ registry }}/app\n"),
        "{}",
        ran.all()
    );
    assert!(err.contains("  |            ^\n"), "{}", ran.all());
    assert!(
        err.contains("quote the whole value: `image: '{{ registry }}/app'`"),
        "{}",
        ran.all()
    );
    assert!(err.contains("--> many.yaml:3:5"), "{}", ran.all());
    assert!(err.contains("  |     ^^^^^\n"), "{}", ran.all());
    assert!(err.contains("--> many.yaml:8:9"), "{}", ran.all());
    assert!(
        err.contains("help: `needs` is a key of the job, not of a step"),
        "{}",
        ran.all()
    );
    assert!(
        err.contains("2 file(s) checked: 3 error(s), 0 warning(s)"),
        "{}",
        ran.all()
    );
    assert!(!err.contains('\u{1b}'), "no colours when not a terminal");
}

#[test]
fn the_committed_schema_is_what_gantry_prints() {
    let ran = run(gantry(&workspace(), &["schema"]));
    assert_eq!(ran.code, Some(0), "{}", ran.all());
    let committed = std::fs::read_to_string(workspace().join("docs/pipeline.schema.json"))
        .expect("docs/pipeline.schema.json is committed");
    let printed: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    let committed: serde_json::Value = serde_json::from_str(&committed).unwrap();
    assert!(
        printed == committed,
        "docs/pipeline.schema.json is stale: regenerate it with `just schema`"
    );
}
