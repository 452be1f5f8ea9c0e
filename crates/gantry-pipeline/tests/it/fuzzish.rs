//! Property tests: no input panics or takes long; valid generated pipelines plan in an order
//! that respects `needs`.

use std::time::{Duration, Instant};

use proptest::prelude::*;

use crate::support::*;

fn parse_and_plan(source: &str) {
    let start = Instant::now();
    for d in gantry_pipeline::lint("p.yaml", source) {
        let _ = d.render(source, false);
    }
    if let Ok(p) = gantry_pipeline::parse("p.yaml", source) {
        let _ = plan_for(&p, &push("main"));
    }
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "took {:?}",
        start.elapsed()
    );
}

/// YAML-ish text: keys of the language, indentation, flow and block punctuation, variables.
fn yamlish() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("jobs:".to_owned()),
        Just("steps:".to_owned()),
        Just("- run: x".to_owned()),
        Just("needs: [".to_owned()),
        Just("matrix:".to_owned()),
        Just("include:".to_owned()),
        Just("exclude:".to_owned()),
        Just("when: {".to_owned()),
        Just("on:".to_owned()),
        Just("${GANTRY_COMMIT_SHA}".to_owned()),
        Just("${matrix.a}".to_owned()),
        Just("&a".to_owned()),
        Just("*a".to_owned()),
        Just("<<: *a".to_owned()),
        Just("]".to_owned()),
        Just("}".to_owned()),
        Just("\"".to_owned()),
        Just("\t".to_owned()),
        Just("\n".to_owned()),
        Just("\n  ".to_owned()),
        Just("\n    ".to_owned()),
        Just("---".to_owned()),
        Just(": ".to_owned()),
        Just(", ".to_owned()),
        "[a-z0-9_]{1,6}",
    ];
    prop::collection::vec(token, 0..60).prop_map(|t| t.join(" "))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_strings_never_panic(source in any::<String>()) {
        parse_and_plan(&source);
    }

    #[test]
    fn yamlish_documents_never_panic(source in yamlish()) {
        parse_and_plan(&source);
    }

    #[test]
    fn mutated_examples_never_panic(
        pick in 0usize..7,
        cut in any::<prop::sample::Index>(),
        insert in "[\\[\\]{}:,\\-\"'\t\n #&*$]{0,4}",
    ) {
        let files = crate::examples::example_files();
        let source = std::fs::read_to_string(&files[pick % files.len()]).unwrap();
        let mut at = cut.index(source.len() + 1);
        while !source.is_char_boundary(at) {
            at -= 1;
        }
        let mutated = format!("{}{}{}", &source[..at], insert, &source[at..]);
        parse_and_plan(&mutated);
    }

    #[test]
    fn arbitrary_text_in_interpolated_fields_never_panics(
        script in any::<String>(),
        value in any::<String>(),
        name in any::<String>(),
    ) {
        // JSON strings are YAML double-quoted scalars.
        let q = |s: &str| serde_json::to_string(s).unwrap();
        let source = format!(
            "env:\n  A: {}\njobs:\n  a:\n    image: {}\n    matrix: {{ k: [{}] }}\n    steps:\n      - name: {}\n        run: {}\n",
            q(&value), q(&value), q(&value), q(&name), q(&script)
        );
        parse_and_plan(&source);
        let with_vars = format!("{script}${{matrix.k}}{value}${{GANTRY_BRANCH}}");
        parse_and_plan(&source.replace(&q(&script), &q(&with_vars)));
    }

    #[test]
    fn valid_pipelines_plan_in_topological_order(
        // For each job: which earlier jobs (by index) it needs, and whether it has a matrix.
        spec in prop::collection::vec((prop::collection::vec(any::<prop::sample::Index>(), 0..3), 0usize..3), 1..12),
        order in any::<prop::sample::Index>(),
    ) {
        let n = spec.len();
        let mut yaml = String::from("jobs:\n");
        // Write the jobs in a rotated order so file order is not the dependency order.
        let rot = order.index(n);
        for k in 0..n {
            let i = (k + rot) % n;
            let (needs, matrix) = &spec[i];
            yaml.push_str(&format!("  j{i}:\n"));
            let needs: Vec<String> = if i == 0 {
                Vec::new()
            } else {
                let mut v: Vec<usize> = needs.iter().map(|x| x.index(i)).collect();
                v.sort_unstable();
                v.dedup();
                v.into_iter().map(|d| format!("j{d}")).collect()
            };
            if !needs.is_empty() {
                yaml.push_str(&format!("    needs: [{}]\n", needs.join(", ")));
            }
            if *matrix > 0 {
                let values: Vec<String> = (0..=*matrix).map(|v| format!("v{v}")).collect();
                yaml.push_str(&format!("    matrix:\n      x: [{}]\n", values.join(", ")));
            }
            yaml.push_str("    steps:\n      - run: echo ${GANTRY_JOB}\n");
        }
        let pipeline = gantry_pipeline::parse("p.yaml", &yaml)
            .unwrap_or_else(|e| panic!("{yaml}\n{e}"));
        let plan = plan_for(&pipeline, &push("main"));
        let expected: usize = spec.iter().map(|(_, m)| if *m > 0 { m + 1 } else { 1 }).sum();
        prop_assert_eq!(plan.jobs.len(), expected);
        let mut seen = std::collections::BTreeSet::new();
        for job in &plan.jobs {
            for need in &job.needs {
                prop_assert!(seen.contains(need), "{} runs before {}", job.name, need);
            }
            prop_assert!(seen.insert(job.name.clone()));
        }
    }
}

#[test]
fn deep_nesting_is_refused_quickly() {
    let deep = format!("env: {}{}", "[".repeat(10_000), "]".repeat(10_000));
    parse_and_plan(&deep);
    let deep_block: String = (0..500)
        .map(|i| format!("{}- \n", " ".repeat(i * 2)))
        .collect();
    parse_and_plan(&deep_block);
    let huge = "a".repeat(2 * 1024 * 1024);
    assert!(
        gantry_pipeline::parse("p.yaml", &huge)
            .unwrap_err()
            .to_string()
            .contains("at most")
    );
}
