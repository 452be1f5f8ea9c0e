//! Plans: order, matrix expansion, interpolation, secrets, environment.

use gantry_core::StepKind;

use crate::support::*;

#[test]
fn jobs_come_after_what_they_need() {
    let p = parse(
        "jobs:\n  deploy:\n    needs: [image]\n    steps: [ { run: d } ]\n  image:\n    needs: [test, lint]\n    steps: [ { run: i } ]\n  lint:\n    steps: [ { run: l } ]\n  test:\n    steps: [ { run: t } ]\n",
    );
    let plan = plan_for(&p, &push("main"));
    let names: Vec<&str> = plan.jobs.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(names, ["lint", "test", "image", "deploy"]);
    assert_eq!(plan.jobs[2].needs, ["test", "lint"]);
    assert_eq!(plan.pipeline, "test");
}

#[test]
fn the_pipeline_name_defaults_to_the_file_name() {
    let src = "jobs: { a: { steps: [ { run: x } ] } }";
    assert_eq!(
        gantry_pipeline::parse(".gantry/release.yaml", src)
            .unwrap()
            .name(),
        "release"
    );
    assert_eq!(
        gantry_pipeline::parse(".gantry.yaml", src).unwrap().name(),
        "gantry"
    );
    let named = format!("name: CI\n{src}");
    assert_eq!(
        gantry_pipeline::parse(".gantry.yaml", &named)
            .unwrap()
            .name(),
        "CI"
    );
}

#[test]
fn matrix_include_exclude_and_needs_of_all_expansions() {
    let p = parse(
        "jobs:\n  test:\n    matrix:\n      rust: [\"1.94\", \"1.95\"]\n      os: [linux, macos]\n      exclude:\n        - os: macos\n          rust: \"1.94\"\n      include:\n        - { rust: \"1.95\", os: windows }\n        - { rust: \"1.95\", os: linux }\n    image: rust:${matrix.rust}\n    steps:\n      - name: test ${matrix.os}\n        run: echo ${matrix.rust} on ${matrix.os}, home ${HOME}\n  done:\n    needs: test\n    steps: [ { run: x } ]\n",
    );
    let plan = plan_for(&p, &push("main"));
    let names: Vec<&str> = plan.jobs.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "test (rust=1.94, os=linux)",
            "test (rust=1.95, os=linux)",
            "test (rust=1.95, os=macos)",
            "test (rust=1.95, os=windows)",
            "done",
        ]
    );
    assert_eq!(plan.jobs[4].needs, names[..4]);
    let job = &plan.jobs[2].spec;
    assert_eq!(job.image.as_deref(), Some("rust:1.95"));
    assert_eq!(job.env["GANTRY_MATRIX_RUST"], "1.95");
    assert_eq!(job.env["GANTRY_MATRIX_OS"], "macos");
    assert_eq!(job.env["GANTRY_JOB"], "test (rust=1.95, os=macos)");
    assert_eq!(job.steps[0].name, "test macos");
    assert_eq!(
        job.steps[0].kind,
        StepKind::Run {
            script: "echo 1.95 on macos, home ${HOME}".into()
        }
    );
}

#[test]
fn matrix_limits() {
    assert!(error("jobs:\n  t:\n    matrix: {}\n    steps: [ { run: x } ]\n").contains("empty"));
    let axis: Vec<String> = (0..17).map(|i| i.to_string()).collect();
    let big = format!(
        "jobs:\n  t:\n    matrix:\n      a: [{0}]\n      b: [{0}]\n    steps: [ {{ run: x }} ]\n",
        axis.join(", ")
    );
    assert!(error(&big).contains("expands to 289 jobs; at most 256"));
    let all_out = "jobs:\n  t:\n    matrix:\n      a: [x]\n      exclude: [ { a: x } ]\n    steps: [ { run: x } ]\n";
    assert!(error(all_out).contains("excludes every combination"));
    let include_only = "jobs:\n  t:\n    matrix:\n      include: [ { a: x }, { a: y } ]\n    steps: [ { run: x } ]\n";
    assert_eq!(plan_for(&parse(include_only), &push("m")).jobs.len(), 2);
}

#[test]
fn interpolation_of_env_image_services_and_step_fields() {
    let p = parse(
        r#"env:
  REGISTRY: registry.example.com
  IMAGE: ${REGISTRY}/${GANTRY_REPO}
jobs:
  build:
    image: ${REGISTRY}/builder:${GANTRY_COMMIT_SHORT_SHA}
    env:
      TAG: ${GANTRY_BRANCH}-${GANTRY_COMMIT_SHORT_SHA}
      LITERAL: "$${NOT_A_VARIABLE}"
    services:
      db:
        image: ${REGISTRY}/postgres:16
        env: { WHO: "${GANTRY_PIPELINE}" }
    steps:
      - kaniko:
          destination: ["${IMAGE}:${TAG}", "${IMAGE}:latest"]
          build_args: { SHA: "${GANTRY_COMMIT_SHA}" }
      - env: { EXTRA: "${TAG}-x" }
        trivy: { image: "${IMAGE}:${EXTRA}" }
      - gitops: { repo: "https://git.example.com/c.git", path: overlays/prod, image: "${IMAGE}" }
"#,
    );
    let plan = plan_for(&p, &push("main"));
    let job = &plan.jobs[0].spec;
    assert_eq!(
        job.image.as_deref(),
        Some("registry.example.com/builder:01234567")
    );
    assert_eq!(job.env["IMAGE"], "registry.example.com/acme/app");
    assert_eq!(job.env["TAG"], "main-01234567");
    assert_eq!(job.env["LITERAL"], "${NOT_A_VARIABLE}");
    assert_eq!(job.services[0].image, "registry.example.com/postgres:16");
    assert_eq!(job.services[0].env["WHO"], "test");
    let StepKind::Kaniko(k) = &job.steps[0].kind else {
        panic!()
    };
    assert_eq!(
        k.destinations,
        [
            "registry.example.com/acme/app:main-01234567",
            "registry.example.com/acme/app:latest"
        ]
    );
    assert_eq!(k.build_args["SHA"], SHA);
    assert_eq!(
        (k.context.as_str(), k.dockerfile.as_str()),
        (".", "Dockerfile")
    );
    assert_eq!(
        job.steps[0].name,
        "build registry.example.com/acme/app:main-01234567"
    );
    let StepKind::Trivy(t) = &job.steps[1].kind else {
        panic!()
    };
    assert_eq!(t.image, "registry.example.com/acme/app:main-01234567-x");
    assert_eq!(
        t.severity,
        [gantry_core::Severity::Critical, gantry_core::Severity::High]
    );
    assert_eq!(job.steps[1].env["EXTRA"], "main-01234567-x");
    let StepKind::Gitops(g) = &job.steps[2].kind else {
        panic!()
    };
    assert_eq!(g.tag, SHA, "the tag defaults to the commit");
}

#[test]
fn unknown_variables_are_errors_at_their_position() {
    let e = error("jobs:\n  a:\n    image: \"x:${NOPE}\"\n    steps: [ { run: x } ]\n");
    assert!(
        e.starts_with("test.yaml:3:15: error: unknown variable `${NOPE}`"),
        "{e}"
    );
    let e = error(
        "jobs:\n  a:\n    steps:\n      - run: |\n          echo ok\n          echo ${GANTRY_SHAA}\n",
    );
    assert!(
        e.starts_with("test.yaml:6:16: error: unknown variable `${GANTRY_SHAA}`"),
        "{e}"
    );
    // Other `${X}` in scripts belong to the shell.
    parse("jobs:\n  a:\n    steps:\n      - run: echo ${HOME} ${X:-y}\n");
    // A job env name is known in the job, not in another job.
    let e = error(
        "jobs:\n  a:\n    env: { A: x }\n    steps: [ { run: x } ]\n  b:\n    image: ${A}\n    steps: [ { run: x } ]\n",
    );
    assert!(e.contains("unknown variable `${A}`"), "{e}");
}

#[test]
fn plan_env_has_every_builtin() {
    let p = parse(
        "env: { A: \"1\" }\njobs:\n  a:\n    env: { B: \"${A}2\" }\n    steps: [ { run: x } ]\n",
    );
    let mut t = pull_request("feature", "main", false);
    t.git_ref = "refs/pull/7/head".into();
    let plan = plan_for(&p, &t);
    let env = &plan.jobs[0].spec.env;
    for (name, _) in gantry_pipeline::VARIABLES {
        assert!(env.contains_key(*name), "{name} missing");
    }
    assert_eq!(env["GANTRY_COMMIT_SHA"], SHA);
    assert_eq!(env["GANTRY_COMMIT_SHORT_SHA"], "01234567");
    assert_eq!(env["GANTRY_REF"], "refs/pull/7/head");
    assert_eq!(env["GANTRY_BRANCH"], "feature");
    assert_eq!(env["GANTRY_TAG"], "");
    assert_eq!(env["GANTRY_EVENT"], "pull_request");
    assert_eq!(env["GANTRY_REPO"], "acme/app");
    assert_eq!(env["GANTRY_REPO_URL"], "https://github.com/acme/app.git");
    assert_eq!(env["GANTRY_RUN_ID"], uuid::Uuid::nil().to_string());
    assert_eq!(env["GANTRY_JOB"], "a");
    assert_eq!(env["GANTRY_PIPELINE"], "test");
    assert_eq!(env["GANTRY_PR_NUMBER"], "7");
    assert_eq!(env["A"], "1");
    assert_eq!(env["B"], "12");
}

#[test]
fn secrets_shorthand_and_full_form() {
    let p = parse(
        "jobs:\n  a:\n    secrets:\n      - config-repo-token\n      - { secret: registry, key: config.json, env: DOCKER_CONFIG_JSON }\n      - { secret: slack.webhook }\n    steps: [ { run: x } ]\n",
    );
    let plan = plan_for(&p, &push("main"));
    let s: Vec<(String, String, String)> = plan.jobs[0]
        .spec
        .secrets
        .iter()
        .map(|s| (s.env.clone(), s.secret.clone(), s.key.clone()))
        .collect();
    let own = |a: &str, b: &str, c: &str| (a.to_owned(), b.to_owned(), c.to_owned());
    assert_eq!(
        s,
        [
            own("CONFIG_REPO_TOKEN", "config-repo-token", "value"),
            own("DOCKER_CONFIG_JSON", "registry", "config.json"),
            own("SLACK_WEBHOOK", "slack.webhook", "value"),
        ]
    );
    // Pull requests from forks get no secrets.
    let fork = plan_for(&p, &pull_request("f", "main", true));
    assert!(fork.jobs[0].spec.secrets.is_empty());
    let same_repo = plan_for(&p, &pull_request("f", "main", false));
    assert_eq!(same_repo.jobs[0].spec.secrets.len(), 3);
    assert!(
        error("jobs:\n  a:\n    secrets: [a, a]\n    steps: [ { run: x } ]\n")
            .contains("two secrets set `A`")
    );
    assert!(
        error("jobs:\n  a:\n    secrets: [{ secret: a, bad: 1 }]\n    steps: [ { run: x } ]\n")
            .contains("unknown key `bad`")
    );
}

#[test]
fn job_settings_reach_the_spec() {
    let p = parse(
        "jobs:\n  a:\n    image: alpine\n    timeout: 1h30m\n    retry: 2\n    allow_failure: true\n    resources: { cpu: 500m, memory: 1Gi, ephemeral_storage: 10Gi }\n    node_selector: { kubernetes.io/arch: amd64 }\n    tolerations:\n      - { key: ci, operator: Equal, value: \"true\", effect: NoSchedule }\n    steps:\n      - run: make\n        timeout: 90s\n        allow_failure: true\n",
    );
    let job = &plan_for(&p, &push("main")).jobs[0];
    assert_eq!((job.retry, job.allow_failure), (2, true));
    assert_eq!(job.spec.timeout, Some(std::time::Duration::from_secs(5400)));
    assert_eq!(job.spec.resources.cpu.as_deref(), Some("500m"));
    assert_eq!(
        job.spec.resources.ephemeral_storage.as_deref(),
        Some("10Gi")
    );
    assert_eq!(job.spec.node_selector["kubernetes.io/arch"], "amd64");
    assert_eq!(
        job.spec.tolerations[0].effect.as_deref(),
        Some("NoSchedule")
    );
    assert_eq!(
        job.spec.steps[0].timeout,
        Some(std::time::Duration::from_secs(90))
    );
    assert!(job.spec.steps[0].allow_failure);
}

#[test]
fn errors_are_all_reported_with_positions() {
    let diags = gantry_pipeline::lint(
        "t.yaml",
        "jobs:\n  a:\n    timeout: soon\n    retry: 11\n    needs: [zzz]\n    steps: [ { run: x } ]\n",
    );
    let at: Vec<(usize, usize)> = diags.iter().map(|d| (d.line, d.column)).collect();
    assert_eq!(at, [(3, 14), (4, 12), (5, 13)], "{diags:?}");
    let err = gantry_pipeline::parse(
        "t.yaml",
        "jobs:\n  a:\n    timeout: soon\n    retry: 11\n    steps: [ { run: x } ]\n",
    )
    .unwrap_err();
    let text = err.to_string();
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(text.lines().all(|l| l.starts_with("t.yaml:")));
}

/// Steps name Secrets too (registry credentials, a push token): a pull request from a fork gets
/// none of them either, while a branch of the repository keeps them.
#[test]
fn fork_pull_requests_get_no_step_secrets_either() {
    let p = parse(
        "jobs:\n  release:\n    steps:\n\
         \x20     - kaniko: { destination: \"r.example/app:1\", registry_secret: registry-push }\n\
         \x20     - trivy: { image: \"r.example/app:1\", registry_secret: registry-pull }\n\
         \x20     - gitops: { repo: \"https://git.example/config.git\", path: apps/app, image: r.example/app, tag: \"1\", token_secret: config-token }\n",
    );
    let names = |plan: &gantry_pipeline::Plan| -> Vec<Option<String>> {
        plan.jobs[0]
            .spec
            .steps
            .iter()
            .map(|s| match &s.kind {
                gantry_core::StepKind::Kaniko(k) => k.registry_secret.clone(),
                gantry_core::StepKind::Trivy(t) => t.registry_secret.clone(),
                gantry_core::StepKind::Gitops(g) => g.token_secret.clone(),
                gantry_core::StepKind::Run { .. } => None,
            })
            .collect()
    };
    let own = plan_for(&p, &pull_request("f", "main", false));
    assert_eq!(
        names(&own),
        [
            Some("registry-push".to_owned()),
            Some("registry-pull".to_owned()),
            Some("config-token".to_owned())
        ]
    );
    let fork = plan_for(&p, &pull_request("f", "main", true));
    assert_eq!(names(&fork), [None, None, None]);
}
