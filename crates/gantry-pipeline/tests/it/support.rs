//! Triggers and helpers shared by the test modules.

use gantry_core::{Event, ForgeKind, PullRequest, RepoRef, RunId, Trigger};
use gantry_pipeline::{Pipeline, Plan, PlanContext};

pub fn repo() -> RepoRef {
    RepoRef {
        forge: ForgeKind::Github,
        full_name: "acme/app".into(),
        clone_url: "https://github.com/acme/app.git".into(),
        web_url: Some("https://github.com/acme/app".into()),
        default_branch: Some("main".into()),
    }
}

pub const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

pub fn push(branch: &str) -> Trigger {
    Trigger::new(Event::Push, repo(), format!("refs/heads/{branch}"), SHA)
}

pub fn tag(tag: &str) -> Trigger {
    Trigger::new(Event::Tag, repo(), format!("refs/tags/{tag}"), SHA)
}

pub fn manual(branch: &str) -> Trigger {
    Trigger::new(Event::Manual, repo(), format!("refs/heads/{branch}"), SHA)
}

pub fn pull_request(head: &str, base: &str, from_fork: bool) -> Trigger {
    let mut t = Trigger::new(Event::PullRequest, repo(), "refs/pull/7/head", SHA);
    t.branch = Some(head.into());
    t.pull_request = Some(PullRequest {
        number: 7,
        head_ref: head.into(),
        base_ref: base.into(),
        from_fork,
        title: None,
    });
    t
}

pub fn with_paths(mut t: Trigger, paths: &[&str]) -> Trigger {
    t.changed_paths = Some(paths.iter().map(|p| (*p).to_owned()).collect());
    t
}

#[track_caller]
pub fn parse(source: &str) -> Pipeline {
    match gantry_pipeline::parse("test.yaml", source) {
        Ok(p) => p,
        Err(e) => panic!("expected a valid pipeline, got:\n{e}"),
    }
}

/// The first error's message.
#[track_caller]
pub fn error(source: &str) -> String {
    let diags = gantry_pipeline::lint("test.yaml", source);
    assert!(
        gantry_pipeline::parse("test.yaml", source).is_err(),
        "expected an error"
    );
    diags
        .iter()
        .find(|d| d.is_error())
        .map(ToString::to_string)
        .expect("an error")
}

pub fn plan_for(pipeline: &Pipeline, trigger: &Trigger) -> Plan {
    gantry_pipeline::plan(
        pipeline,
        &PlanContext {
            trigger,
            run_id: RunId(uuid::Uuid::nil()),
            file: ".gantry.yaml",
            run_url: None,
        },
    )
}
