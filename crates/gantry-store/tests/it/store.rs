use std::collections::BTreeMap;
use std::time::Duration;

use gantry_core::{
    CommitState, CommitStatus, Event, ForgeKind, Job, JobId, JobSpec, PullRequest, RepoRef, Run,
    RunId, State, StatusCondition, Step, StepKind, StepSpec, Trigger,
};
use gantry_store::{
    DeliveryState, KeepRuns, NewDelivery, OutboxOutcome, Page, RunFilter, RunRecord,
    SCHEMA_VERSION, SUMMARY_MAX_BYTES, Store, repo_key,
};

use crate::support::{EmptyDb, TestDb};

/// Runs each test against SQLite and against PostgreSQL.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test]
            async fn $name() {
                super::$name(crate::support::sqlite().await).await
            })*
        }
        mod postgres {
            $(#[tokio::test]
            async fn $name() {
                super::$name(crate::support::postgres().await).await
            })*
        }
    };
}

on_both!(
    migrations_apply_once_and_reopen_cleanly,
    a_newer_schema_is_refused_with_a_clear_message,
    runs_jobs_and_steps_round_trip_with_their_timestamps,
    every_attempt_is_kept_and_the_latest_is_found,
    the_queue_is_first_in_first_out_with_positions,
    running_jobs_are_counted_per_repository,
    statuses_are_written_with_the_transition_or_not_at_all,
    the_outbox_settles_and_reschedules_entries,
    deliveries_are_deduplicated_by_forge_and_id,
    runs_are_listed_by_filter_newest_first_in_pages,
    step_summaries_are_stored_kept_and_capped,
    retention_deletes_old_finished_work_and_never_unfinished_work,
);

/// Runs each test against a SQLite file and a PostgreSQL database that nobody opened yet.
macro_rules! on_both_unopened {
    ($($name:ident),* $(,)?) => {
        mod sqlite_unopened {
            $(#[tokio::test]
            async fn $name() {
                super::$name(crate::support::sqlite_empty().await).await
            })*
        }
        mod postgres_unopened {
            $(#[tokio::test]
            async fn $name() {
                super::$name(crate::support::postgres_empty().await).await
            })*
        }
    };
}

on_both_unopened!(
    a_database_at_schema_2_keeps_its_rows_and_gains_step_summaries,
    runs_are_numbered_per_repository_and_an_upgrade_numbers_the_runs_it_finds,
);

fn repo(name: &str) -> RepoRef {
    RepoRef {
        forge: ForgeKind::Github,
        full_name: name.into(),
        clone_url: format!("https://example.invalid/{name}.git"),
        web_url: None,
        default_branch: Some("main".into()),
    }
}

fn trigger(name: &str, branch: &str) -> Trigger {
    Trigger::new(
        Event::Push,
        repo(name),
        format!("refs/heads/{branch}"),
        "0123456789abcdef",
    )
}

fn run(trigger: Trigger) -> RunRecord {
    RunRecord {
        run: Run {
            id: RunId::new(),
            trigger,
            pipeline: ".gantry.yaml".into(),
            state: State::Queued,
            created_at: gantry_core::now(),
            started_at: None,
            finished_at: None,
            jobs: Vec::new(),
        },
        name: "ci".into(),
        reason: None,
        cancel_requested: false,
        number: 0,
    }
}

fn spec(name: &str, steps: &[&str]) -> JobSpec {
    JobSpec {
        name: name.into(),
        steps: steps
            .iter()
            .map(|s| StepSpec {
                name: (*s).into(),
                kind: StepKind::Run {
                    script: format!("echo {s}"),
                },
                timeout: Some(Duration::from_secs(60)),
                env: BTreeMap::from([("A".into(), "1".into())]),
                run_if: StatusCondition::Always,
                allow_failure: true,
            })
            .collect(),
        timeout: Some(Duration::from_millis(1500)),
        ..JobSpec::default()
    }
}

fn job(run: &RunRecord, name: &str, needs: &[&str]) -> Job {
    Job {
        id: JobId::new(),
        run_id: run.run.id,
        name: name.into(),
        attempt: 1,
        needs: needs.iter().map(|s| s.to_string()).collect(),
        spec: spec(name, &["build", "test"]),
        retries_left: 2,
        allow_failure: true,
        run_if: StatusCondition::Failure,
        state: State::Queued,
        reason: None,
        created_at: gantry_core::now(),
        started_at: None,
        finished_at: None,
        steps: Vec::new(),
    }
}

async fn insert(store: &Store, run: &RunRecord, jobs: &[&Job]) {
    let key = repo_key(&run.run.trigger);
    let mut tx = store.begin().await.unwrap();
    tx.insert_run(run).await.unwrap();
    for (i, j) in jobs.iter().enumerate() {
        tx.insert_job(j, i, &key).await.unwrap();
    }
    tx.commit().await.unwrap();
}

fn status(sha: &str, context: &str, state: CommitState) -> CommitStatus {
    CommitStatus {
        sha: sha.into(),
        context: context.into(),
        state,
        description: format!("{state:?}"),
        target_url: Some("https://ci.example.invalid/runs/1".into()),
    }
}

async fn migrations_apply_once_and_reopen_cleanly(db: TestDb) {
    assert_eq!(db.store.schema_version().await.unwrap(), SCHEMA_VERSION);
    let again = Store::open(&db.url).await.unwrap();
    assert_eq!(again.schema_version().await.unwrap(), SCHEMA_VERSION);
}

async fn a_newer_schema_is_refused_with_a_clear_message(db: TestDb) {
    let newer = SCHEMA_VERSION + 1;
    sqlx::any::install_default_drivers();
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&db.url)
        .await
        .unwrap();
    sqlx::query("INSERT INTO gantry_schema (version, name, applied_at) VALUES ($1, 'future', 'x')")
        .bind(newer)
        .execute(&mut conn)
        .await
        .unwrap();
    let err = Store::open(&db.url).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "database schema version {newer} is newer than this gantry (max {SCHEMA_VERSION}): upgrade gantry"
        )
    );
}

async fn runs_jobs_and_steps_round_trip_with_their_timestamps(db: TestDb) {
    let store = &db.store;
    let mut t = trigger("acme/app", "main");
    t.pull_request = Some(PullRequest {
        number: 7,
        head_ref: "feature".into(),
        base_ref: "main".into(),
        from_fork: false,
        title: Some("Add \"quotes\" and ünïcode".into()),
    });
    let r = run(t);
    let build = job(&r, "build", &[]);
    let test = job(&r, "test", &["build"]);
    insert(store, &r, &[&build, &test]).await;

    let loaded = store.get_run(r.run.id).await.unwrap().unwrap();
    assert_eq!(loaded.run.trigger, r.run.trigger);
    assert_eq!(loaded.name, "ci");
    assert_eq!(loaded.run.state, State::Queued);
    assert_eq!(
        loaded.run.created_at.timestamp_micros(),
        r.run.created_at.timestamp_micros()
    );
    let names: Vec<_> = loaded.run.jobs.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(names, ["build", "test"], "jobs come back in plan order");
    let b = &loaded.run.jobs[0];
    assert_eq!(b.spec, build.spec, "the spec survives JSON");
    assert_eq!(b.needs, Vec::<String>::new());
    assert_eq!(loaded.run.jobs[1].needs, vec!["build".to_string()]);
    assert_eq!(
        (b.retries_left, b.allow_failure, b.run_if),
        (2, true, StatusCondition::Failure)
    );
    assert_eq!(b.steps.len(), 2);
    assert_eq!(b.steps[1].name, "test");
    assert_eq!(b.steps[1].state, State::Queued);

    let t0 = gantry_core::now();
    let t1 = t0 + chrono::Duration::seconds(1);
    let t2 = t0 + chrono::Duration::seconds(2);
    let mut tx = store.begin().await.unwrap();
    tx.set_run_state(r.run.id, State::Running, None, t0)
        .await
        .unwrap();
    tx.set_job_state(build.id, 1, State::Running, None, t0)
        .await
        .unwrap();
    tx.set_step_state(build.id, 1, 0, State::Running, None, None, None, t0)
        .await
        .unwrap();
    tx.set_step_state(
        build.id,
        1,
        0,
        State::Failure,
        Some(3),
        Some("boom"),
        None,
        t1,
    )
    .await
    .unwrap();
    tx.close_open_steps(build.id, 1, State::Error, State::Skipped, t2)
        .await
        .unwrap();
    tx.set_job_state(build.id, 1, State::Failure, Some("step build failed"), t2)
        .await
        .unwrap();
    tx.set_run_state(r.run.id, State::Failure, Some("build failed"), t2)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let loaded = store.get_run(r.run.id).await.unwrap().unwrap();
    let micros = |t: Option<gantry_core::Timestamp>| t.map(|t| t.timestamp_micros());
    assert_eq!(loaded.run.state, State::Failure);
    assert_eq!(loaded.reason.as_deref(), Some("build failed"));
    assert_eq!(micros(loaded.run.started_at), micros(Some(t0)));
    assert_eq!(micros(loaded.run.finished_at), micros(Some(t2)));
    let b = &loaded.run.jobs[0];
    assert_eq!(b.state, State::Failure);
    assert_eq!(b.reason.as_deref(), Some("step build failed"));
    assert_eq!(micros(b.started_at), micros(Some(t0)));
    assert_eq!(micros(b.finished_at), micros(Some(t2)));
    assert_eq!(b.steps[0].state, State::Failure);
    assert_eq!(b.steps[0].exit_code, Some(3));
    assert_eq!(b.steps[0].reason.as_deref(), Some("boom"));
    assert_eq!(b.steps[0].summary, None);
    assert_eq!(micros(b.steps[0].started_at), micros(Some(t0)));
    assert_eq!(micros(b.steps[0].finished_at), micros(Some(t1)));
    assert_eq!(b.steps[1].state, State::Skipped, "never started");
    assert_eq!(micros(b.steps[1].finished_at), micros(Some(t2)));
    assert_eq!(loaded.run.jobs[1].state, State::Queued, "untouched");
}

async fn every_attempt_is_kept_and_the_latest_is_found(db: TestDb) {
    let store = &db.store;
    let r = run(trigger("acme/app", "main"));
    let first = job(&r, "flaky", &[]);
    insert(store, &r, &[&first]).await;
    let mut tx = store.begin().await.unwrap();
    tx.set_job_state(
        first.id,
        1,
        State::Failure,
        Some("exit 1"),
        gantry_core::now(),
    )
    .await
    .unwrap();
    let second = Job {
        attempt: 2,
        retries_left: 1,
        created_at: gantry_core::now(),
        ..first.clone()
    };
    tx.insert_job(&second, 0, &repo_key(&r.run.trigger))
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let latest = store.get_job(first.id, None).await.unwrap().unwrap();
    assert_eq!((latest.attempt, latest.state), (2, State::Queued));
    let old = store.get_job(first.id, Some(1)).await.unwrap().unwrap();
    assert_eq!(
        (old.state, old.reason.as_deref()),
        (State::Failure, Some("exit 1"))
    );
    let loaded = store.get_run(r.run.id).await.unwrap().unwrap();
    let attempts: Vec<_> = loaded
        .run
        .jobs
        .iter()
        .map(|j| (j.attempt, j.state, j.steps.len()))
        .collect();
    assert_eq!(attempts, [(1, State::Failure, 2), (2, State::Queued, 2)]);
    assert!(store.get_job(JobId::new(), None).await.unwrap().is_none());
}

async fn the_queue_is_first_in_first_out_with_positions(db: TestDb) {
    let store = &db.store;
    let r = run(trigger("acme/app", "main"));
    let jobs: Vec<Job> = (0..3).map(|i| job(&r, &format!("j{i}"), &[])).collect();
    insert(store, &r, &jobs.iter().collect::<Vec<_>>()).await;
    let key = repo_key(&r.run.trigger);
    // Enqueue in the order 2, 0, 1: the queue keeps that order, not the ids'.
    for i in [2, 0, 1] {
        let mut tx = store.begin().await.unwrap();
        tx.enqueue(jobs[i].id, 1, r.run.id, &key, gantry_core::now())
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    let order: Vec<_> = store
        .queue()
        .await
        .unwrap()
        .iter()
        .map(|e| e.job_id)
        .collect();
    assert_eq!(order, [jobs[2].id, jobs[0].id, jobs[1].id]);
    assert_eq!(store.queue_position(jobs[1].id).await.unwrap(), Some(3));
    let mut tx = store.begin().await.unwrap();
    assert!(tx.dequeue(jobs[2].id, 1).await.unwrap());
    assert!(!tx.dequeue(jobs[2].id, 1).await.unwrap());
    tx.commit().await.unwrap();
    assert_eq!(store.queue_position(jobs[0].id).await.unwrap(), Some(1));
    assert_eq!(store.queue_position(jobs[1].id).await.unwrap(), Some(2));
    assert_eq!(store.queue_position(jobs[2].id).await.unwrap(), None);
    let entry = &store.queue().await.unwrap()[0];
    assert_eq!(
        (entry.run_id, entry.repo_key.as_str()),
        (r.run.id, key.as_str())
    );
    let j0 = store.get_job(jobs[0].id, None).await.unwrap().unwrap();
    assert_eq!(j0.state, State::Queued);
}

async fn running_jobs_are_counted_per_repository(db: TestDb) {
    let store = &db.store;
    let a = run(trigger("acme/app", "main"));
    let b = run(trigger("acme/lib", "main"));
    let (a1, a2, a3) = (job(&a, "1", &[]), job(&a, "2", &[]), job(&a, "3", &[]));
    let b1 = job(&b, "1", &[]);
    insert(store, &a, &[&a1, &a2, &a3]).await;
    insert(store, &b, &[&b1]).await;
    let mut tx = store.begin().await.unwrap();
    let now = gantry_core::now();
    tx.set_job_state(a1.id, 1, State::Pending, None, now)
        .await
        .unwrap();
    tx.set_job_state(a2.id, 1, State::Running, None, now)
        .await
        .unwrap();
    tx.set_job_state(a3.id, 1, State::Success, None, now)
        .await
        .unwrap();
    tx.set_job_state(b1.id, 1, State::Running, None, now)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let (total, by_repo) = store.running_counts().await.unwrap();
    assert_eq!(total, 3);
    assert_eq!(by_repo.get("github:acme/app"), Some(&2));
    assert_eq!(by_repo.get("github:acme/lib"), Some(&1));
    let active = store
        .jobs_in_states(&[State::Pending, State::Running])
        .await
        .unwrap();
    assert_eq!(active.len(), 3);
}

async fn statuses_are_written_with_the_transition_or_not_at_all(db: TestDb) {
    let store = &db.store;
    let r = run(trigger("acme/app", "main"));
    insert(store, &r, &[]).await;
    let repo = r.run.trigger.repo.clone();

    let mut tx = store.begin().await.unwrap();
    tx.set_run_state(r.run.id, State::Running, None, gantry_core::now())
        .await
        .unwrap();
    tx.push_status(
        &repo,
        &status("abc", "gantry/ci", CommitState::Running),
        gantry_core::now(),
    )
    .await
    .unwrap();
    drop(tx); // rolled back: neither the state nor its status happened
    assert_eq!(
        store.get_run(r.run.id).await.unwrap().unwrap().run.state,
        State::Queued
    );
    assert!(store.statuses(None).await.unwrap().is_empty());

    let mut tx = store.begin().await.unwrap();
    tx.set_run_state(r.run.id, State::Running, None, gantry_core::now())
        .await
        .unwrap();
    tx.push_status(
        &repo,
        &status("abc", "gantry/ci", CommitState::Running),
        gantry_core::now(),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        store.get_run(r.run.id).await.unwrap().unwrap().run.state,
        State::Running
    );
    let statuses = store.statuses(Some("abc")).await.unwrap();
    assert_eq!(statuses.len(), 1);
    assert_eq!(statuses[0].repo, repo);
    assert_eq!(
        statuses[0].status,
        status("abc", "gantry/ci", CommitState::Running)
    );
    assert_eq!(statuses[0].outcome, None);
}

async fn the_outbox_settles_and_reschedules_entries(db: TestDb) {
    let store = &db.store;
    let repo = repo("acme/app");
    let mut tx = store.begin().await.unwrap();
    for state in [
        CommitState::Pending,
        CommitState::Running,
        CommitState::Success,
    ] {
        tx.push_status(
            &repo,
            &status("abc", "gantry/ci", state),
            gantry_core::now(),
        )
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
    let pending = store.pending_statuses(100).await.unwrap();
    assert_eq!(pending.len(), 3);
    assert!(
        pending.windows(2).all(|w| w[0].id < w[1].id),
        "oldest first"
    );
    let later = gantry_core::now() + chrono::Duration::seconds(30);
    store
        .reschedule_status(pending[2].id, 1, later, "502 bad gateway")
        .await
        .unwrap();
    store
        .settle_statuses(
            &[pending[0].id, pending[1].id],
            OutboxOutcome::Coalesced,
            None,
            gantry_core::now(),
        )
        .await
        .unwrap();
    let pending = store.pending_statuses(100).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].attempts, 1);
    assert_eq!(pending[0].last_error.as_deref(), Some("502 bad gateway"));
    assert_eq!(
        pending[0].next_attempt_at.timestamp_micros(),
        later.timestamp_micros()
    );
    store
        .settle_statuses(
            &[pending[0].id],
            OutboxOutcome::Delivered,
            None,
            gantry_core::now(),
        )
        .await
        .unwrap();
    let all = store.statuses(Some("abc")).await.unwrap();
    let outcomes: Vec<_> = all.iter().map(|e| e.outcome).collect();
    assert_eq!(
        outcomes,
        [
            Some(OutboxOutcome::Coalesced),
            Some(OutboxOutcome::Coalesced),
            Some(OutboxOutcome::Delivered)
        ]
    );
    assert!(all[2].delivered_at.is_some());
    assert!(all[0].delivered_at.is_none());
    assert_eq!(
        store
            .count_statuses(OutboxOutcome::Coalesced)
            .await
            .unwrap(),
        [(ForgeKind::Github, 2)]
    );
}

async fn deliveries_are_deduplicated_by_forge_and_id(db: TestDb) {
    let store = &db.store;
    let d = NewDelivery {
        forge: ForgeKind::Github,
        delivery_id: "72d3162e-cc78-11e3-81ab-4c9367dc0958".into(),
        event: "push".into(),
        received_at: gantry_core::now(),
        payload: r#"{"ref":"refs/heads/main"}"#.into(),
    };
    assert!(store.insert_delivery(&d).await.unwrap());
    assert!(
        !store.insert_delivery(&d).await.unwrap(),
        "a redelivery is recognised"
    );
    let gitea = NewDelivery {
        forge: ForgeKind::Gitea,
        ..d.clone()
    };
    assert!(
        store.insert_delivery(&gitea).await.unwrap(),
        "ids are per forge"
    );
    assert_eq!(store.unplanned_deliveries().await.unwrap().len(), 2);
    let runs = [RunId::new(), RunId::new()];
    store
        .set_delivery_outcome(
            ForgeKind::Github,
            &d.delivery_id,
            DeliveryState::Planned,
            None,
            &runs,
        )
        .await
        .unwrap();
    let got = store
        .get_delivery(ForgeKind::Github, &d.delivery_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.state, DeliveryState::Planned);
    assert_eq!(got.run_ids, runs);
    assert_eq!(got.payload, d.payload);
    assert_eq!(store.unplanned_deliveries().await.unwrap().len(), 1);
}

async fn runs_are_listed_by_filter_newest_first_in_pages(db: TestDb) {
    let store = &db.store;
    let mut ids = Vec::new();
    for (name, branch) in [
        ("acme/app", "main"),
        ("acme/app", "dev"),
        ("acme/lib", "main"),
        ("acme/app", "main"),
    ] {
        let r = run(trigger(name, branch));
        ids.push(r.run.id);
        insert(store, &r, &[]).await;
    }
    let mut tx = store.begin().await.unwrap();
    tx.set_run_state(ids[0], State::Success, None, gantry_core::now())
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let list = |f: RunFilter, p: Page| async move {
        store
            .list_runs(&f, p)
            .await
            .unwrap()
            .iter()
            .map(|r| r.run.id)
            .collect::<Vec<_>>()
    };
    let all = list(RunFilter::default(), Page::default()).await;
    assert_eq!(all, [ids[3], ids[2], ids[1], ids[0]]);
    let app_main = RunFilter {
        repo: Some("acme/app".into()),
        branch: Some("main".into()),
        ..RunFilter::default()
    };
    assert_eq!(
        list(app_main.clone(), Page::default()).await,
        [ids[3], ids[0]]
    );
    let active = RunFilter {
        states: vec![State::Queued, State::Running],
        ..app_main
    };
    assert_eq!(list(active, Page::default()).await, [ids[3]]);
    let first = list(
        RunFilter::default(),
        Page {
            limit: 2,
            before: None,
        },
    )
    .await;
    assert_eq!(first, [ids[3], ids[2]]);
    let second = list(
        RunFilter::default(),
        Page {
            limit: 2,
            before: Some(ids[2]),
        },
    )
    .await;
    assert_eq!(second, [ids[1], ids[0]]);
    assert!(
        store
            .list_runs(&RunFilter::default(), Page::default())
            .await
            .unwrap()
            .iter()
            .all(|r| r.run.jobs.is_empty())
    );
}

#[tokio::test]
async fn sqlite_creates_its_file_and_directory_and_uses_wal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new/dir/gantry.db");
    let store = Store::open(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    assert!(path.exists());
    let mut tx = store.begin().await.unwrap();
    tx.push_status(
        &repo("acme/app"),
        &status("abc", "gantry/ci", CommitState::Pending),
        gantry_core::now(),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert!(dir.path().join("new/dir/gantry.db-wal").exists());
}

#[tokio::test]
async fn unknown_database_urls_are_refused() {
    let err = Store::open("mysql://localhost/gantry").await.unwrap_err();
    assert!(err.to_string().contains("use sqlite://PATH or postgres://"));
}

#[test]
fn the_postgres_half_needs_a_server_url_and_says_how_to_get_one() {
    // Only meaningful when it is unset; otherwise the URL is returned.
    if std::env::var("GANTRY_TEST_DATABASE_URL").is_err() {
        let err = std::panic::catch_unwind(gantry_store::testing::postgres_server_url).unwrap_err();
        let message = err
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| err.downcast_ref::<&str>().copied())
            .unwrap();
        assert!(message.contains("./dev test"), "{message}");
    }
}

async fn step_summaries_are_stored_kept_and_capped(db: TestDb) {
    let store = &db.store;
    let r = run(trigger("acme/app", "main"));
    let image = job(&r, "image", &[]);
    let scan = job(&r, "scan", &[]);
    // A job recorded with its steps (not one per spec step) keeps their summaries too.
    let mut given = job(&r, "given", &[]);
    given.steps = vec![Step {
        index: 0,
        name: "build".into(),
        state: State::Success,
        exit_code: Some(0),
        reason: None,
        summary: Some("pushed digest sha256:1234".into()),
        started_at: None,
        finished_at: None,
    }];
    insert(store, &r, &[&image, &scan, &given]).await;

    let digest = "pushed digest sha256:0123abcd\nto registry.example/app:<main> & \"latest\"";
    let long = "é".repeat(SUMMARY_MAX_BYTES); // twice the cap in bytes, two bytes a character
    let at = gantry_core::now();
    let mut tx = store.begin().await.unwrap();
    tx.set_step_state(image.id, 1, 0, State::Running, None, None, None, at)
        .await
        .unwrap();
    tx.set_step_state(
        image.id,
        1,
        0,
        State::Success,
        Some(0),
        None,
        Some(digest),
        at,
    )
    .await
    .unwrap();
    // Told again without a summary (a backend reporting the end once more after a restart):
    // the stored one stays, like the reason.
    tx.set_step_state(image.id, 1, 0, State::Success, Some(0), None, None, at)
        .await
        .unwrap();
    tx.set_step_state(
        image.id,
        1,
        1,
        State::Success,
        Some(0),
        None,
        Some(&long),
        at,
    )
    .await
    .unwrap();
    tx.set_step_state(
        scan.id,
        1,
        0,
        State::Failure,
        Some(1),
        None,
        Some("a\0b"),
        at,
    )
    .await
    .unwrap();
    tx.set_step_state(
        scan.id,
        1,
        1,
        State::Success,
        Some(0),
        None,
        Some(" \n "),
        at,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let loaded = store.get_run(r.run.id).await.unwrap().unwrap();
    let steps = |name: &str| {
        loaded
            .run
            .jobs
            .iter()
            .find(|j| j.name == name)
            .unwrap()
            .steps
            .clone()
    };
    let image_steps = steps("image");
    assert_eq!(image_steps[0].summary.as_deref(), Some(digest));
    let cut = image_steps[1].summary.as_deref().unwrap();
    assert!(cut.len() <= SUMMARY_MAX_BYTES, "{} bytes kept", cut.len());
    assert!(
        cut.len() > SUMMARY_MAX_BYTES - 100,
        "{} bytes kept",
        cut.len()
    );
    assert!(cut.ends_with("(cut: a summary keeps 4 KiB)"), "{cut}");
    let kept = cut.split('\n').next().unwrap();
    assert!(
        !kept.is_empty() && kept.chars().all(|c| c == 'é'),
        "cut between characters"
    );
    let scan_steps = steps("scan");
    assert_eq!(
        scan_steps[0].summary.as_deref(),
        Some("a\u{fffd}b"),
        "PostgreSQL's text cannot hold NUL"
    );
    assert_eq!(scan_steps[1].summary, None, "nothing to show");
    assert_eq!(
        steps("given")[0].summary.as_deref(),
        Some("pushed digest sha256:1234")
    );
    let one = store.get_job(image.id, None).await.unwrap().unwrap();
    assert_eq!(one.steps[0].summary.as_deref(), Some(digest), "get_job too");
}

/// A run row as an older Gantry wrote it (schemas 1 to 4 have these columns), at time `at`.
async fn insert_old_run(
    conn: &mut sqlx::AnyConnection,
    r: &RunRecord,
    state: &str,
    reason: Option<&str>,
    at: &str,
) {
    let t = &r.run.trigger;
    sqlx::query(
        "INSERT INTO runs (id, forge, repo, pipeline, name, event, git_ref, branch, sha, \
         pr_number, trigger_json, state, reason, cancel_requested, created_at, started_at, \
         finished_at, updated_at) VALUES ($1, 'github', $2, '.gantry.yaml', 'ci', 'push', \
         $3, 'main', $4, NULL, $5, $6, $7, 0, $8, $8, $8, $8)",
    )
    .bind(r.run.id.to_string())
    .bind(t.repo.full_name.clone())
    .bind(t.git_ref.clone())
    .bind(t.sha.clone())
    .bind(serde_json::to_string(t).unwrap())
    .bind(state.to_owned())
    .bind(reason.map(str::to_owned))
    .bind(at.to_owned())
    .execute(conn)
    .await
    .unwrap();
}

/// A database an older Gantry (schema 2) filled: opening it adds the summary column and keeps
/// every row; its steps have no summary until one is recorded.
async fn a_database_at_schema_2_keeps_its_rows_and_gains_step_summaries(db: EmptyDb) {
    gantry_store::testing::migrate_to(&db.url, 2).await.unwrap();
    let r = run(trigger("acme/app", "main"));
    let old = job(&r, "build", &[]);
    let at = "2026-01-02T03:04:05.000000Z";
    {
        sqlx::any::install_default_drivers();
        let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&db.url)
            .await
            .unwrap();
        let version: i64 = sqlx::Row::get(
            &sqlx::query("SELECT MAX(version) AS v FROM gantry_schema")
                .fetch_one(&mut conn)
                .await
                .unwrap(),
            "v",
        );
        assert_eq!(version, 2);
        insert_old_run(&mut conn, &r, "failure", Some("build failed"), at).await;
        sqlx::query(
            "INSERT INTO jobs (id, attempt, run_id, repo_key, name, position, is_latest, needs, \
             spec, retries_left, allow_failure, run_if, state, reason, created_at, queued_at, \
             started_at, finished_at, updated_at) VALUES ($1, 1, $2, 'github:acme/app', \
             'build', 0, 1, '[]', $3, 0, 0, 'success', 'failure', 'step test failed', $4, $4, \
             $4, $4, $4)",
        )
        .bind(old.id.to_string())
        .bind(r.run.id.to_string())
        .bind(serde_json::to_string(&old.spec).unwrap())
        .bind(at)
        .execute(&mut conn)
        .await
        .unwrap();
        for (idx, name, state, exit_code, reason) in [
            (0, "build", "success", Some(0), None),
            (1, "test", "failure", Some(2), Some("2 tests failed")),
        ] {
            sqlx::query(
                "INSERT INTO steps (job_id, attempt, idx, run_id, name, state, exit_code, \
                 reason, started_at, finished_at) VALUES ($1, 1, $2, $3, $4, $5, $6, $7, $8, $8)",
            )
            .bind(old.id.to_string())
            .bind(idx as i64)
            .bind(r.run.id.to_string())
            .bind(name)
            .bind(state)
            .bind(exit_code.map(i64::from))
            .bind(reason)
            .bind(at)
            .execute(&mut conn)
            .await
            .unwrap();
        }
        <sqlx::AnyConnection as sqlx::Connection>::close(conn)
            .await
            .unwrap();
    }

    let db = db.open().await;
    let store = &db.store;
    assert_eq!(store.schema_version().await.unwrap(), SCHEMA_VERSION);
    let loaded = store.get_run(r.run.id).await.unwrap().unwrap();
    assert_eq!(loaded.run.trigger, r.run.trigger);
    assert_eq!(
        (loaded.run.state, loaded.reason.as_deref()),
        (State::Failure, Some("build failed"))
    );
    let j = &loaded.run.jobs[0];
    assert_eq!(
        (j.id, j.name.as_str(), j.state),
        (old.id, "build", State::Failure)
    );
    assert_eq!(j.spec, old.spec);
    let steps: Vec<_> = j
        .steps
        .iter()
        .map(|s| {
            (
                s.name.as_str(),
                s.state,
                s.exit_code,
                s.reason.as_deref(),
                s.summary.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        steps,
        [
            ("build", State::Success, Some(0), None, None),
            (
                "test",
                State::Failure,
                Some(2),
                Some("2 tests failed"),
                None
            ),
        ]
    );
    assert_eq!(
        j.steps[1].finished_at.map(|t| t.to_rfc3339()),
        Some("2026-01-02T03:04:05+00:00".into())
    );

    // The new column takes summaries for the old rows.
    let mut tx = store.begin().await.unwrap();
    tx.set_step_state(
        old.id,
        1,
        0,
        State::Success,
        None,
        None,
        Some("pushed digest sha256:feed"),
        gantry_core::now(),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let j = store.get_job(old.id, None).await.unwrap().unwrap();
    assert_eq!(
        j.steps[0].summary.as_deref(),
        Some("pushed digest sha256:feed")
    );
    assert_eq!(j.steps[1].reason.as_deref(), Some("2 tests failed"));
}

async fn try_insert(store: &Store, run: &RunRecord, jobs: &[&Job]) -> gantry_store::Result<()> {
    let key = repo_key(&run.run.trigger);
    let mut tx = store.begin().await?;
    tx.insert_run(run).await?;
    for (i, j) in jobs.iter().enumerate() {
        tx.insert_job(j, i, &key).await?;
    }
    tx.commit().await
}

/// A full disk fails writes, and only while it is full: once space returns every connection of
/// the pool writes again, without a restart. (Before, a write that failed on a full disk left
/// its connection counted inside a transaction, and every later write on it failed with
/// "attempted to call begin_with at non-zero transaction depth".)
#[tokio::test]
async fn a_full_disk_fails_writes_only_while_it_is_full() {
    let dir = tempfile::tempdir().unwrap();
    let mut disk = gantry_core::faults::SmallDisk::mount(dir.path(), 4 * 1024 * 1024);
    let url = format!("sqlite://{}/gantry.db", dir.path().display());
    let store = Store::open(&url).await.unwrap();
    let big = "x".repeat(64 * 1024);
    let stuffed = |i: usize| {
        let mut r = run(trigger(&format!("acme/full-{i}"), "main"));
        r.reason = Some(big.clone());
        r
    };
    disk.fill();
    let mut refused = Vec::new();
    for i in 0..40 {
        let r = stuffed(i);
        let j = job(&r, "build", &[]);
        if let Err(err) = try_insert(&store, &r, &[&j]).await {
            refused.push(err);
        }
        if refused.len() == 6 {
            break;
        }
    }
    assert_eq!(refused.len(), 6, "a full disk refuses writes");
    // SQLite's "database or disk is full", or no connection (one closed after a failed write
    // cannot be opened again while the disk is full): never a transaction left open.
    assert!(
        refused
            .iter()
            .all(|e| e.is_unavailable() && !e.to_string().contains("transaction depth")),
        "each failure says the store is unavailable: {:#?}",
        refused.iter().map(ToString::to_string).collect::<Vec<_>>()
    );
    disk.free();
    // More writes than the pool has connections: each connection is used again.
    for i in 100..120 {
        let r = stuffed(i);
        let j = job(&r, "build", &[]);
        try_insert(&store, &r, &[&j])
            .await
            .unwrap_or_else(|e| panic!("write {i} after space returned: {e}"));
        assert!(store.get_run(r.run.id).await.unwrap().is_some());
    }
}

async fn retention_deletes_old_finished_work_and_never_unfinished_work(db: TestDb) {
    let store = &db.store;
    let base = gantry_core::now() - chrono::Duration::hours(1);
    let at = |s: i64| base + chrono::Duration::seconds(s);
    let mut runs = Vec::new();
    for i in 0..5 {
        let r = run(trigger("acme/app", "main"));
        let j = job(&r, "test", &[]);
        insert(store, &r, &[&j]).await;
        let mut tx = store.begin().await.unwrap();
        // Four finish, one a second after the other; the last one is still running.
        let state = if i < 4 {
            State::Success
        } else {
            State::Running
        };
        tx.set_job_state(j.id, 1, state, None, at(i)).await.unwrap();
        tx.set_run_state(r.run.id, state, None, at(i))
            .await
            .unwrap();
        tx.commit().await.unwrap();
        runs.push((r.run.id, j.id));
    }
    let delivery = |id: &str| NewDelivery {
        forge: ForgeKind::Github,
        delivery_id: id.into(),
        event: "push".into(),
        received_at: at(-60),
        payload: "{}".into(),
    };
    for id in ["planned-long-ago", "never-planned"] {
        assert!(store.insert_delivery(&delivery(id)).await.unwrap());
    }
    store
        .set_delivery_outcome(
            ForgeKind::Github,
            "planned-long-ago",
            DeliveryState::Planned,
            None,
            &[runs[0].0],
        )
        .await
        .unwrap();

    // Keep the newest two finished runs: the two oldest go, with their jobs.
    let pruned = store
        .prune(KeepRuns {
            newest: Some(2),
            ..KeepRuns::default()
        })
        .await
        .unwrap();
    assert_eq!(pruned.runs, 2, "{pruned:?}");
    assert_eq!(
        pruned.deliveries, 1,
        "the settled delivery goes: {pruned:?}"
    );
    let mut gone = pruned.jobs.clone();
    gone.sort();
    let mut want = vec![runs[0].1, runs[1].1];
    want.sort();
    assert_eq!(
        gone, want,
        "the deleted runs' jobs are named, for their logs"
    );
    for (i, (run_id, job_id)) in runs.iter().enumerate() {
        let kept = store.get_run(*run_id).await.unwrap().is_some();
        assert_eq!(kept, i >= 2, "run {i}");
        assert_eq!(
            store.get_job(*job_id, None).await.unwrap().is_some(),
            i >= 2
        );
    }
    assert!(
        store
            .get_delivery(ForgeKind::Github, "never-planned")
            .await
            .unwrap()
            .is_some(),
        "a delivery not yet planned is never deleted"
    );
    // An age limit after every finished run: all of them go, the running one stays.
    let pruned = store
        .prune(KeepRuns {
            finished_after: Some(at(10)),
            ..KeepRuns::default()
        })
        .await
        .unwrap();
    assert_eq!(pruned.runs, 2, "{pruned:?}");
    assert!(store.get_run(runs[4].0).await.unwrap().is_some());
    assert_eq!(
        store.prune(KeepRuns::default()).await.unwrap(),
        Default::default(),
        "no limit, nothing deleted"
    );
}

/// Runs are numbered 1, 2, … in each repository, independently of the others; a database an
/// older Gantry (schema 4) filled gets its runs numbered in the order they were created, and new
/// runs go on from there.
async fn runs_are_numbered_per_repository_and_an_upgrade_numbers_the_runs_it_finds(db: EmptyDb) {
    gantry_store::testing::migrate_to(&db.url, 4).await.unwrap();
    let old: Vec<RunRecord> = ["acme/app", "acme/lib", "acme/app"]
        .iter()
        .map(|name| run(trigger(name, "main")))
        .collect();
    {
        sqlx::any::install_default_drivers();
        let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&db.url)
            .await
            .unwrap();
        for r in &old {
            insert_old_run(&mut conn, r, "success", None, "2026-01-02T03:04:05.000000Z").await;
        }
        <sqlx::AnyConnection as sqlx::Connection>::close(conn)
            .await
            .unwrap();
    }
    let db = db.open().await;
    let store = &db.store;
    let number = |id| async move { store.get_run(id).await.unwrap().unwrap().number };
    assert_eq!(number(old[0].run.id).await, 1);
    assert_eq!(number(old[1].run.id).await, 1);
    assert_eq!(number(old[2].run.id).await, 2);
    let mut new = Vec::new();
    for name in ["acme/app", "acme/lib", "acme/other", "acme/app"] {
        let r = run(trigger(name, "main"));
        insert(store, &r, &[]).await;
        new.push(r.run.id);
    }
    let numbers = [
        number(new[0]).await,
        number(new[1]).await,
        number(new[2]).await,
        number(new[3]).await,
    ];
    assert_eq!(numbers, [3, 2, 1, 4]);
    let listed = store
        .list_runs(
            &RunFilter {
                repo: Some("acme/app".into()),
                ..RunFilter::default()
            },
            Page {
                limit: 10,
                before: None,
            },
        )
        .await
        .unwrap();
    let listed: Vec<u64> = listed.iter().map(|r| r.number).collect();
    assert_eq!(listed, [4, 3, 2, 1], "newest first, each with its number");
}
