//! Global and per-repository limits, FIFO order, queue positions.

use std::time::Duration;

use gantry_core::State;
use gantry_engine::EngineConfig;

use crate::support::{Harness, config, job, pipeline, push, sha, wait_until};

/// The most jobs that ran at the same time, from their recorded start and end.
fn max_overlap(spans: &[(gantry_core::Timestamp, gantry_core::Timestamp)]) -> usize {
    let mut events: Vec<(gantry_core::Timestamp, i32)> = Vec::new();
    for (start, end) in spans {
        events.push((*start, 1));
        events.push((*end, -1));
    }
    // Ends before starts at the same instant.
    events.sort();
    let (mut now, mut max) = (0i32, 0i32);
    for (_, d) in events {
        now += d;
        max = max.max(now);
    }
    max as usize
}

#[tokio::test]
async fn the_global_limit_holds_and_queued_jobs_start_first_in_first_out() {
    let h = Harness::with(EngineConfig {
        max_running_jobs: 2,
        ..config()
    })
    .await;
    h.script("work", 0, 0, Duration::from_millis(150));
    let yaml = pipeline(&[("work", &[])]);
    let mut ids = Vec::new();
    for i in 0..5 {
        // Different repositories: only the global limit applies.
        ids.push(
            h.submit_for(push(&format!("acme/app{i}"), "main", &sha()), &yaml)
                .await,
        );
    }
    wait_until("two jobs to start", || async {
        h.backend.started().len() == 2
    })
    .await;
    // Three wait, in the order they came.
    for (i, id) in ids[2..].iter().enumerate() {
        let run = h.run(*id).await;
        let position = h.engine.queue_position(job(&run, "work").id).await.unwrap();
        assert_eq!(position, Some(i as u64 + 1));
        assert_eq!(run.run.state, State::Queued);
    }
    let running = h.run(ids[0]).await;
    assert_eq!(
        h.engine
            .queue_position(job(&running, "work").id)
            .await
            .unwrap(),
        None
    );

    let mut spans = Vec::new();
    for id in &ids {
        let run = h.wait_final(*id).await;
        assert_eq!(run.run.state, State::Success);
        let j = job(&run, "work");
        spans.push((j.started_at.unwrap(), j.finished_at.unwrap()));
    }
    assert_eq!(max_overlap(&spans), 2);
    let order: Vec<_> = h.backend.started().iter().map(|r| r.run_id).collect();
    assert_eq!(order, ids, "first in, first out");
}

#[tokio::test]
async fn the_per_repository_limit_lets_other_repositories_through() {
    let h = Harness::with(EngineConfig {
        max_running_jobs: 10,
        max_running_per_repo: 1,
        ..config()
    })
    .await;
    h.script("work", 0, 0, Duration::from_millis(120));
    let yaml = pipeline(&[("work", &[])]);
    let mut busy = Vec::new();
    for _ in 0..3 {
        busy.push(h.submit_for(push("acme/busy", "main", &sha()), &yaml).await);
    }
    let other = h
        .submit_for(push("acme/other", "main", &sha()), &yaml)
        .await;
    let other_run = h.wait_final(other).await;
    let mut spans = Vec::new();
    for id in &busy {
        let run = h.wait_final(*id).await;
        let j = job(&run, "work");
        spans.push((j.started_at.unwrap(), j.finished_at.unwrap()));
    }
    assert_eq!(max_overlap(&spans), 1, "one at a time for acme/busy");
    let other_start = job(&other_run, "work").started_at.unwrap();
    assert!(
        other_start < spans[1].0,
        "acme/other did not wait behind acme/busy's queue"
    );
    let order: Vec<_> = h.backend.started().iter().map(|r| r.run_id).collect();
    let busy_order: Vec<_> = order.into_iter().filter(|id| busy.contains(id)).collect();
    assert_eq!(
        busy_order, busy,
        "first in, first out within the repository"
    );
}
