//! `on` (does a trigger start the pipeline?) and job/step `when` rules.

use crate::support::*;

const STEPS: &str = "jobs:\n  a:\n    steps:\n      - run: make\n";

fn on(on: &str) -> gantry_pipeline::Pipeline {
    parse(&format!("on:\n{on}{STEPS}"))
}

#[test]
fn without_on_any_branch_push_and_manual_runs_start_it() {
    let p = parse(STEPS);
    assert!(p.triggered_by(&push("feature/x")));
    assert!(p.triggered_by(&manual("main")));
    assert!(!p.triggered_by(&pull_request("f", "main", false)));
    assert!(!p.triggered_by(&tag("v1.0.0")));
}

#[test]
fn push_branch_globs() {
    let p = on("  push: { branches: [main, \"release/*\"] }\n");
    assert!(p.triggered_by(&push("main")));
    assert!(p.triggered_by(&push("release/1.x")));
    assert!(
        !p.triggered_by(&push("release/1.x/hotfix")),
        "`*` stops at `/`"
    );
    assert!(!p.triggered_by(&push("feature")));
    assert!(!p.triggered_by(&manual("main")), "manual is not listed");
    let p = on("  push: { branches: [\"**\"] }\n");
    assert!(p.triggered_by(&push("a/b/c")));
}

#[test]
fn push_tags_and_tag_events() {
    let p = on("  push: { tags: [\"v*\"] }\n");
    assert!(p.triggered_by(&tag("v1.2.0")));
    assert!(!p.triggered_by(&tag("nightly")));
    assert!(
        !p.triggered_by(&push("main")),
        "only tags: branch pushes do not match"
    );
    let p = on("  tag: {}\n");
    assert!(p.triggered_by(&tag("anything")));
    let p = on("  tag: { tags: [\"v*\"] }\n");
    assert!(!p.triggered_by(&tag("nightly")));
    // A forge that reports a tag push as a push of refs/tags/…
    let mut t = tag("v2");
    t.event = gantry_core::Event::Push;
    assert!(p.triggered_by(&t));
}

#[test]
fn push_paths_and_paths_ignore() {
    let p = on("  push: { paths: [\"src/**\"], paths_ignore: [\"src/**/*.md\"] }\n");
    assert!(p.triggered_by(&push("main")), "unknown changes match");
    assert!(p.triggered_by(&with_paths(push("main"), &["src/lib.rs"])));
    assert!(!p.triggered_by(&with_paths(push("main"), &["docs/x.md"])));
    assert!(!p.triggered_by(&with_paths(push("main"), &["src/a/README.md"])));
    assert!(p.triggered_by(&with_paths(
        push("main"),
        &["src/a/README.md", "src/a/x.rs"]
    )));
    let p = on("  push: { paths_ignore: [\"docs/**\"] }\n");
    assert!(!p.triggered_by(&with_paths(push("main"), &["docs/a.md"])));
    assert!(p.triggered_by(&with_paths(push("main"), &["docs/a.md", "Cargo.toml"])));
}

#[test]
fn pull_requests_match_their_base_branch() {
    let p = on("  pull_request: { branches: [main] }\n");
    assert!(p.triggered_by(&pull_request("feature", "main", false)));
    assert!(!p.triggered_by(&pull_request("feature", "develop", false)));
    assert!(!p.triggered_by(&push("main")));
    let p = on("  pull_request:\n");
    assert!(
        p.triggered_by(&pull_request("feature", "develop", true)),
        "null means any"
    );
}

#[test]
fn manual_and_empty_on() {
    let p = on("  manual: {}\n");
    assert!(p.triggered_by(&manual("x")));
    assert!(!p.triggered_by(&push("main")));
    let diags = gantry_pipeline::lint("t.yaml", &format!("on: {{}}\n{STEPS}"));
    assert_eq!(diags.len(), 1);
    assert_eq!(diags[0].severity, gantry_pipeline::Level::Warning);
    assert!(diags[0].message.contains("never runs"), "{}", diags[0]);
}

fn job_when(when: &str) -> gantry_pipeline::Pipeline {
    parse(&format!(
        "on: {{ push: {{}}, tag: {{}}, pull_request: {{}}, manual: {{}} }}\njobs:\n  a:\n    steps:\n      - run: make\n  b:\n    needs: [a]\n    when: {when}\n    steps:\n      - run: make\n"
    ))
}

fn skipped(p: &gantry_pipeline::Pipeline, t: &gantry_core::Trigger) -> Option<String> {
    plan_for(p, t).jobs[1].skipped.clone()
}

#[test]
fn job_when_branch_event_tag_paths() {
    let p = job_when("{ branch: main, event: push }");
    assert_eq!(skipped(&p, &push("main")), None);
    let reason = skipped(&p, &push("dev")).unwrap();
    assert!(reason.contains("dev"), "{reason}");
    assert!(skipped(&p, &manual("main")).unwrap().contains("event"));
    let p = job_when("{ event: [push, manual] }");
    assert_eq!(skipped(&p, &manual("x")), None);
    assert!(skipped(&p, &tag("v1")).is_some());
    let p = job_when("{ tag: \"v*\" }");
    assert_eq!(skipped(&p, &tag("v1")), None);
    assert!(skipped(&p, &tag("x1")).is_some());
    assert!(skipped(&p, &push("main")).is_some(), "no tag built");
    let p = job_when("{ paths: [\"deploy/**\"] }");
    assert_eq!(skipped(&p, &push("main")), None, "unknown changes match");
    assert!(skipped(&p, &with_paths(push("main"), &["src/x"])).is_some());
    assert_eq!(
        skipped(&p, &with_paths(push("main"), &["deploy/k.yaml"])),
        None
    );
}

#[test]
fn job_when_status_becomes_run_if() {
    use gantry_core::StatusCondition;
    let p = job_when("{ status: always }");
    let plan = plan_for(&p, &push("main"));
    assert_eq!(plan.jobs[0].run_if, StatusCondition::Success);
    assert_eq!(plan.jobs[1].run_if, StatusCondition::Always);
    assert_eq!(plan.jobs[1].skipped, None);
}

#[test]
fn step_when_filters_steps_and_sets_run_if() {
    use gantry_core::StatusCondition;
    let p = parse(
        "jobs:\n  a:\n    steps:\n      - run: make\n      - run: make deploy\n        when: { branch: main }\n      - run: make logs\n        when: { status: failure }\n      - run: make clean\n        when: { status: always }\n",
    );
    let steps = |t| {
        plan_for(&p, &t).jobs[0]
            .spec
            .steps
            .iter()
            .map(|s| (s.name.clone(), s.run_if))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        steps(push("dev")),
        [
            ("make".to_owned(), StatusCondition::Success),
            ("make logs".to_owned(), StatusCondition::Failure),
            ("make clean".to_owned(), StatusCondition::Always),
        ]
    );
    assert_eq!(steps(push("main")).len(), 4);
}

#[test]
fn when_status_on_a_job_without_needs_is_a_warning() {
    let diags = gantry_pipeline::lint(
        "t.yaml",
        "jobs:\n  a:\n    when: { status: failure }\n    steps:\n      - run: make\n",
    );
    assert_eq!(diags.len(), 1, "{diags:?}");
    assert_eq!(diags[0].severity, gantry_pipeline::Level::Warning);
    assert_eq!((diags[0].line, diags[0].column), (3, 21));
}
