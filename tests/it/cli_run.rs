//! `gantry run`: pipelines of a real repository run as local processes.

use std::time::Duration;

use crate::support::{Repo, gantry, pos, run};

const ORDERED: &str = r#"
jobs:
  build:
    steps:
      - name: compile
        run: |
          echo compiling
          echo a warning >&2
          echo compiled
      - name: package
        run: echo packaged
  test:
    needs: [build]
    steps:
      - name: unit
        run: echo unit-ok
"#;

#[test]
fn runs_jobs_in_dependency_order_with_output_per_step() {
    let repo = Repo::new();
    repo.write(".gantry.yaml", ORDERED).commit("pipeline");
    let ran = run(gantry(repo.path(), &["run"]));
    assert_eq!(ran.code, Some(0), "{}", ran.all());
    let out = &ran.stdout;
    let order = [
        "━━ job build",
        "▶ compile",
        "│ compiling",
        "│ compiled",
        "✔ compile",
        "▶ package",
        "│ packaged",
        "✔ package",
        "━━ job test",
        "▶ unit",
        "│ unit-ok",
        "✔ unit",
        "run succeeded",
    ];
    let positions: Vec<usize> = order.iter().map(|n| pos(out, n)).collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "output out of order:\n{out}"
    );
    assert!(out.contains("│ a warning"), "stderr is shown too:\n{out}");
}

#[test]
fn a_failing_step_fails_the_run_with_its_exit_code() {
    let repo = Repo::new();
    repo.write(
        ".gantry.yaml",
        r#"
jobs:
  test:
    steps:
      - name: before
        run: echo before
      - name: broken
        run: |
          echo about to fail
          exit 3
      - name: after
        run: echo should-not-run
      - name: report
        when: { status: failure }
        run: echo reporting-failure
  deploy:
    needs: [test]
    steps:
      - run: echo should-not-deploy
"#,
    )
    .commit("pipeline");
    let ran = run(gantry(repo.path(), &["run"]));
    assert_eq!(ran.code, Some(3), "{}", ran.all());
    let out = &ran.stdout;
    assert!(out.contains("✘ broken — exit code 3"), "{out}");
    assert!(!out.contains("│ should-not-run"), "{out}");
    assert!(out.contains("│ reporting-failure"), "{out}");
    assert!(!out.contains("│ should-not-deploy"), "{out}");
    assert!(out.contains("step `broken` exited with 3"), "{out}");
    assert!(out.contains("run failed"), "{out}");
    // The closing table says each fact once (it said the step and its code twice).
    let line = summary_line(out, "test");
    assert_eq!(line.matches("broken").count(), 1, "{line:?} in {out}");
    assert_eq!(line.matches('3').count(), 1, "{line:?} in {out}");
}

/// The closing table's line for `job`.
fn summary_line<'a>(out: &'a str, job: &str) -> &'a str {
    let table = out.rsplit("\n\n").next().unwrap_or(out);
    table
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(job))
        .unwrap_or_else(|| panic!("no line for job {job} in the summary: {out}"))
}

#[test]
fn a_hanging_step_is_killed_at_its_timeout() {
    let repo = Repo::new();
    repo.write(
        ".gantry.yaml",
        r#"
jobs:
  hang:
    steps:
      - name: forever
        timeout: 2s
        run: |
          echo going to sleep
          sleep 300 &
          sleep 300
  slow:
    timeout: 1s
    steps:
      - run: sleep 300
"#,
    )
    .commit("pipeline");
    let ran = run(gantry(repo.path(), &["run"]));
    assert_ne!(ran.code, Some(0), "{}", ran.all());
    assert!(ran.took < Duration::from_secs(30), "took {:?}", ran.took);
    assert!(ran.stdout.contains("timed out after 2s"), "{}", ran.all());
    assert!(ran.stdout.contains("│ going to sleep"), "{}", ran.all());
    // Each fact once in the closing table: the step and the timeout, for a step's timeout and
    // for the job's.
    for (job, step, timeout) in [("hang", "forever", "2s"), ("slow", "sleep 300", "1s")] {
        let line = summary_line(&ran.stdout, job);
        assert_eq!(line.matches(step).count(), 1, "{line:?}");
        assert_eq!(
            line.matches(&format!("timed out after {timeout}")).count(),
            1,
            "{line:?}"
        );
    }
}

#[test]
fn runs_exactly_the_committed_commit() {
    let repo = Repo::new();
    repo.write("version.txt", "committed\n");
    repo.write(
        ".gantry.yaml",
        "jobs:\n  show:\n    steps:\n      - run: cat version.txt\n",
    );
    repo.commit("first");
    repo.write("version.txt", "edited but not committed\n");
    let ran = run(gantry(repo.path(), &["run"]));
    assert_eq!(ran.code, Some(0), "{}", ran.all());
    assert!(ran.stdout.contains("│ committed"), "{}", ran.all());
    assert!(
        ran.stderr
            .contains("uncommitted changes are not part of this run"),
        "{}",
        ran.all()
    );
    let ran = run(gantry(repo.path(), &["run", "--worktree"]));
    assert!(
        ran.stdout.contains("│ edited but not committed"),
        "{}",
        ran.all()
    );
}

#[test]
fn job_filter_runs_only_the_named_jobs() {
    let repo = Repo::new();
    repo.write(".gantry.yaml", ORDERED).commit("pipeline");
    let ran = run(gantry(repo.path(), &["run", "--job", "test"]));
    assert_eq!(ran.code, Some(0), "{}", ran.all());
    assert!(ran.stdout.contains("│ unit-ok"));
    assert!(!ran.stdout.contains("│ compiling"));
    let ran = run(gantry(repo.path(), &["run", "--job", "tset"]));
    assert_eq!(ran.code, Some(2));
    assert!(ran.stderr.contains("no job named `tset`"), "{}", ran.all());
    assert!(ran.stderr.contains("build, test"), "{}", ran.all());
}

#[test]
fn an_invalid_pipeline_is_reported_with_its_position_and_nothing_runs() {
    let repo = Repo::new();
    repo.write(
        ".gantry.yaml",
        "jobs:\n  test:\n    imgae: alpine\n    steps:\n      - run: echo ran\n",
    )
    .commit("pipeline");
    let ran = run(gantry(repo.path(), &["run"]));
    assert_eq!(ran.code, Some(2), "{}", ran.all());
    assert!(ran.stderr.contains(".gantry.yaml:3:5"), "{}", ran.all());
    assert!(ran.stderr.contains("image"), "{}", ran.all());
    assert!(!ran.stdout.contains("│ ran"));
}

#[test]
fn secrets_come_from_flags_or_the_environment_and_missing_ones_stop_the_run() {
    let repo = Repo::new();
    repo.write(
        ".gantry.yaml",
        r#"
jobs:
  deploy:
    secrets: [deploy-token]
    steps:
      - run: test "$DEPLOY_TOKEN" = s3cr3t && echo token-ok
"#,
    )
    .commit("pipeline");
    let ran = run(gantry(repo.path(), &["run"]));
    assert_eq!(ran.code, Some(2), "{}", ran.all());
    assert!(
        ran.stderr.contains("GANTRY_SECRET_DEPLOY_TOKEN"),
        "{}",
        ran.all()
    );
    let ran = run(gantry(
        repo.path(),
        &["run", "--secret", "deploy-token=s3cr3t"],
    ));
    assert_eq!(ran.code, Some(0), "{}", ran.all());
    assert!(ran.stdout.contains("│ token-ok"));
    let mut cmd = gantry(repo.path(), &["run"]);
    cmd.env("GANTRY_SECRET_DEPLOY_TOKEN", "s3cr3t");
    let ran = run(cmd);
    assert_eq!(ran.code, Some(0), "{}", ran.all());
}

#[test]
fn no_pipeline_says_where_it_looked() {
    let repo = Repo::new();
    repo.write("README", "nothing here\n").commit("empty");
    let ran = run(gantry(repo.path(), &["run"]));
    assert_eq!(ran.code, Some(2));
    assert!(ran.stderr.contains(".gantry.yaml"), "{}", ran.all());
}
