//! Arbitrary bytes → `parse` (and `lint`, each diagnostic rendered over the source) → `plan`
//! with a fixed trigger. Nothing may panic, hang or blow the memory limit.
#![no_main]

use gantry_core::{Event, ForgeKind, RepoRef, RunId, Trigger};
use gantry_pipeline::PlanContext;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let source = String::from_utf8_lossy(data);
    for d in gantry_pipeline::lint("fuzz.yaml", &source) {
        let _ = d.render(&source, true);
    }
    if let Ok(pipeline) = gantry_pipeline::parse("fuzz.yaml", &source) {
        let repo = RepoRef {
            forge: ForgeKind::Github,
            full_name: "acme/app".into(),
            clone_url: "https://github.com/acme/app.git".into(),
            web_url: None,
            default_branch: Some("main".into()),
        };
        let mut trigger = Trigger::new(Event::Push, repo, "refs/heads/main", "0123456789abcdef");
        trigger.changed_paths = Some(vec!["src/main.rs".into(), "docs/index.md".into()]);
        let _ = pipeline.triggered_by(&trigger);
        let plan = gantry_pipeline::plan(
            &pipeline,
            &PlanContext {
                trigger: &trigger,
                run_id: RunId(Default::default()),
                file: "fuzz.yaml",
                run_url: Some("https://gantry.example.com/runs/0"),
            },
        );
        assert!(!plan.jobs.is_empty());
    }
});
