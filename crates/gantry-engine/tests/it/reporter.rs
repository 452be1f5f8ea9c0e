//! The reporter: order, coalescing, Retry-After, non-retryable drops, resume after restart.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gantry_core::fake::FakeForge;
use gantry_core::{CommitState, CommitStatus, ForgeError, ForgeKind};
use gantry_store::OutboxOutcome;

use crate::support::{Harness, config, pipeline, repo, wait_until};

async fn unstarted() -> Harness {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let url = format!("sqlite://{}/gantry.db", dir.path().display());
    Harness::open(dir, url, FakeForge::new(ForgeKind::Github), config(), None).await
}

async fn write(h: &Harness, statuses: &[(&str, CommitState)]) {
    let mut tx = h.store().begin().await.unwrap();
    for (context, state) in statuses {
        let status = CommitStatus {
            sha: "abc".into(),
            context: (*context).into(),
            state: *state,
            description: format!("{state:?}"),
            target_url: None,
        };
        tx.push_status(&repo("acme/app"), &status, gantry_core::now())
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
}

fn api_error(status: u16, retry_after: Option<u64>) -> ForgeError {
    ForgeError::Api {
        forge: ForgeKind::Github,
        status,
        message: "nope".into(),
        retry_after,
    }
}

#[tokio::test]
async fn only_the_newest_pending_status_per_context_is_sent() {
    let h = unstarted().await;
    write(
        &h,
        &[
            ("gantry/ci", CommitState::Pending),
            ("gantry/ci/build", CommitState::Pending),
            ("gantry/ci", CommitState::Running),
            ("gantry/ci/build", CommitState::Success),
            ("gantry/ci", CommitState::Success),
        ],
    )
    .await;
    h.engine.start().await.unwrap();
    let entries = h.settled_statuses().await;
    let outcomes: Vec<_> = entries.iter().map(|e| e.outcome.unwrap()).collect();
    use OutboxOutcome::{Coalesced, Delivered};
    assert_eq!(
        outcomes,
        [Coalesced, Coalesced, Coalesced, Delivered, Delivered]
    );
    let sent: Vec<_> = h
        .forge
        .statuses()
        .into_iter()
        .map(|(_, s)| (s.context, s.state))
        .collect();
    // Contexts go in the order their oldest pending status was written.
    assert_eq!(
        sent,
        [
            ("gantry/ci".to_string(), CommitState::Success),
            ("gantry/ci/build".to_string(), CommitState::Success)
        ]
    );
}

#[tokio::test]
async fn statuses_of_a_run_arrive_in_the_order_of_its_states() {
    let h = Harness::new().await;
    h.script("build", 0, 0, Duration::from_millis(100));
    let id = h.submit(&pipeline(&[("build", &[])])).await;
    h.wait_final(id).await;
    h.settled_statuses().await;
    let rank = |s: CommitState| match s {
        CommitState::Pending => 0,
        CommitState::Running => 1,
        _ => 2,
    };
    for context in ["gantry/gantry", "gantry/gantry/build"] {
        let states: Vec<_> = h
            .forge
            .statuses()
            .into_iter()
            .filter(|(_, s)| s.context == context)
            .map(|(_, s)| s.state)
            .collect();
        assert!(
            states.windows(2).all(|w| rank(w[0]) <= rank(w[1])),
            "{context}: {states:?}"
        );
        assert_eq!(states.last(), Some(&CommitState::Success), "{context}");
    }
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let h = unstarted().await;
    h.forge.fail_next_reports([api_error(429, Some(1))]);
    write(&h, &[("gantry/ci", CommitState::Pending)]).await;
    let started = Instant::now();
    h.engine.start().await.unwrap();
    // While the forge asked for quiet, a newer status waits too.
    tokio::time::sleep(Duration::from_millis(200)).await;
    write(&h, &[("gantry/ci/build", CommitState::Pending)]).await;
    wait_until("both statuses delivered", || async {
        h.forge.statuses().len() == 2
    })
    .await;
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let entries = h.settled_statuses().await;
    assert_eq!(entries[0].attempts, 1);
    assert_eq!(entries[0].outcome, Some(OutboxOutcome::Delivered));
}

#[tokio::test]
async fn retryable_errors_back_off_then_deliver() {
    let h = unstarted().await;
    h.forge.fail_next_reports([
        api_error(502, None),
        ForgeError::Unreachable {
            forge: ForgeKind::Github,
            message: "connection reset".into(),
        },
    ]);
    write(&h, &[("gantry/ci", CommitState::Success)]).await;
    h.engine.start().await.unwrap();
    let entries = h.settled_statuses().await;
    assert_eq!(entries[0].outcome, Some(OutboxOutcome::Delivered));
    assert_eq!(entries[0].attempts, 2);
    assert_eq!(h.forge.statuses().len(), 1);
    assert_eq!(h.engine.dropped_statuses(), 0);
}

#[tokio::test]
async fn a_status_the_forge_keeps_refusing_is_dropped_and_counted() {
    let h = unstarted().await;
    h.forge.fail_next_reports([
        api_error(422, None),
        api_error(422, None),
        api_error(422, None),
    ]);
    write(&h, &[("gantry/ci", CommitState::Success)]).await;
    h.engine.start().await.unwrap();
    let entries = h.settled_statuses().await;
    assert_eq!(entries[0].outcome, Some(OutboxOutcome::Dropped));
    assert_eq!(
        entries[0].attempts, 2,
        "the third failure is not rescheduled"
    );
    assert!(entries[0].last_error.as_deref().unwrap().contains("422"));
    assert_eq!(h.engine.dropped_statuses(), 1);
    // The reporter goes on with the next one.
    write(&h, &[("gantry/ci/build", CommitState::Success)]).await;
    wait_until("the next status", || async {
        h.forge.statuses().len() == 1
    })
    .await;
}

#[tokio::test]
async fn statuses_for_a_forge_without_a_client_are_dropped() {
    let h = unstarted().await;
    let mut tx = h.store().begin().await.unwrap();
    let mut local = repo("me/app");
    local.forge = ForgeKind::Local;
    let status = CommitStatus {
        sha: "abc".into(),
        context: "gantry/ci".into(),
        state: CommitState::Success,
        description: String::new(),
        target_url: None,
    };
    tx.push_status(&local, &status, gantry_core::now())
        .await
        .unwrap();
    tx.commit().await.unwrap();
    h.engine.start().await.unwrap();
    let entries = h.settled_statuses().await;
    assert_eq!(entries[0].outcome, Some(OutboxOutcome::Dropped));
    assert_eq!(
        entries[0].last_error.as_deref(),
        Some("no local forge is configured")
    );
}

#[tokio::test]
async fn the_outbox_resumes_after_a_restart() {
    let h = unstarted().await;
    h.forge.fail_next_reports([api_error(503, None)]);
    write(&h, &[("gantry/ci", CommitState::Running)]).await;
    h.engine.start().await.unwrap();
    wait_until("a failed delivery", || async {
        h.store().statuses(None).await.unwrap()[0].attempts == 1
    })
    .await;
    h.engine.shutdown().await;
    assert!(h.forge.statuses().is_empty());
    assert_eq!(h.store().pending_statuses(10).await.unwrap().len(), 1);

    let again = Harness::open(
        h.dir.clone(),
        h.url.clone(),
        FakeForge::new(ForgeKind::Github),
        config(),
        None,
    )
    .await;
    again.engine.start().await.unwrap();
    let entries = again.settled_statuses().await;
    assert_eq!(entries[0].outcome, Some(OutboxOutcome::Delivered));
    assert_eq!(again.forge.statuses().len(), 1);
    assert_eq!(again.forge.statuses()[0].1.state, CommitState::Running);
}
