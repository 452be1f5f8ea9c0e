use std::time::Duration;

use futures::StreamExt;
use gantry_logs::{Logs, StepKey};

use crate::support::{key, line, logs};

/// Collects `n` line numbers from a follower, with a deadline.
async fn take_numbers(logs: &Logs, key: StepKey, from: u64, n: usize) -> Vec<u64> {
    let mut follow = Box::pin(logs.follow(key, from, false));
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), async {
        while got.len() < n {
            let batch = follow.next().await.expect("stream open").unwrap();
            got.extend(batch.iter().map(|l| l.line.number));
        }
    })
    .await
    .expect("lines arrive in time");
    got
}

#[tokio::test]
async fn viewers_see_lines_as_they_are_stored_and_the_stream_ends_with_the_step() {
    let (_dir, logs) = logs();
    let key = key();
    let writer = {
        let logs = logs.clone();
        tokio::spawn(async move {
            for i in 1..=300 {
                logs.append(key.job, key.attempt, &line(0, &format!("{i}")))
                    .unwrap();
                if i % 50 == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            logs.close_step(key).unwrap();
        })
    };
    // A viewer that starts before the step does.
    let mut follow = Box::pin(logs.follow(key, 1, false));
    let mut numbers = Vec::new();
    let mut texts = Vec::new();
    while let Some(batch) = tokio::time::timeout(Duration::from_secs(20), follow.next())
        .await
        .unwrap()
    {
        for l in batch.unwrap() {
            numbers.push(l.line.number);
            texts.push(l.line.text.clone());
        }
    }
    writer.await.unwrap();
    assert_eq!(numbers, (1..=300).collect::<Vec<_>>());
    assert_eq!(texts[299], "300");
}

#[tokio::test]
async fn a_resumed_viewer_gets_no_gap_and_no_duplicate() {
    let (_dir, logs) = logs();
    let key = key();
    for i in 1..=100 {
        logs.append(key.job, key.attempt, &line(0, &format!("{i}")))
            .unwrap();
    }
    let first = take_numbers(&logs, key, 1, 40).await;
    let last_seen = first[39];
    // Reconnect with Last-Event-ID = last_seen while lines keep coming.
    let more = {
        let logs = logs.clone();
        tokio::spawn(async move {
            for i in 101..=200 {
                logs.append(key.job, key.attempt, &line(0, &format!("{i}")))
                    .unwrap();
            }
        })
    };
    let rest = take_numbers(&logs, key, last_seen + 1, 200 - last_seen as usize).await;
    more.await.unwrap();
    let mut all: Vec<u64> = first[..40].to_vec();
    all.extend(rest);
    assert_eq!(all, (1..=200).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_viewer_that_never_reads_does_not_slow_ingestion_and_catches_up_from_the_store() {
    let (_dir, logs) = logs();
    let key = key();
    let stalled = Box::pin(logs.follow(key, 1, false));
    let start = std::time::Instant::now();
    for i in 1..=20_000 {
        logs.append(key.job, key.attempt, &line(0, &format!("line {i}")))
            .unwrap();
    }
    let elapsed = start.elapsed();
    assert!(
        elapsed < Duration::from_secs(20),
        "ingestion took {elapsed:?}"
    );
    logs.close_step(key).unwrap();
    // The ring has long dropped line 1: the viewer reads it from the store.
    let numbers: Vec<u64> = stalled
        .map(|b| b.unwrap().iter().map(|l| l.line.number).collect::<Vec<_>>())
        .concat()
        .await;
    assert_eq!(numbers, (1..=20_000).collect::<Vec<_>>());
}

#[tokio::test]
async fn following_a_finished_step_drains_it_and_ends() {
    let (_dir, logs) = logs();
    let key = key();
    for i in 1..=5 {
        logs.append(key.job, key.attempt, &line(0, &format!("{i}")))
            .unwrap();
    }
    // Not closed (a crashed server never closed it), but the caller knows it ended.
    let reopened = Logs::open(logs.store().root()).unwrap();
    let n: usize = reopened
        .follow(key, 3, true)
        .map(|b| b.unwrap().len())
        .fold(0, |a, b| async move { a + b })
        .await;
    assert_eq!(n, 3);
}

/// Two replicas on one shared data directory: the leader writes a step, a replica that does
/// not lead follows it from the files (its own hub knows nothing of the step), and never
/// repairs what the leader is in the middle of writing.
#[tokio::test]
async fn a_replica_that_does_not_lead_follows_the_leaders_step_and_never_cuts_its_records() {
    let (dir, leader) = logs();
    let reader = Logs::open(dir.path().join("logs")).unwrap();
    reader.set_writer(false);
    let key = key();
    for i in 1..=5 {
        leader
            .append(key.job, key.attempt, &line(0, &format!("{i}")))
            .unwrap();
    }
    // The leader is in the middle of a record: bytes of it are in the file, no newline yet.
    let files = leader.store().files(key);
    let written = std::fs::metadata(&files.log).unwrap().len();
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .open(&files.log)
        .unwrap();
    std::io::Write::write_all(&mut log, b"2026-01-01T00:00:00.000000Z stdout hal").unwrap();
    let len = std::fs::metadata(&files.log).unwrap().len();

    let progress = reader.progress(key).await.unwrap();
    assert_eq!((progress.lines, progress.closed), (5, false));
    assert_eq!(
        std::fs::metadata(&files.log).unwrap().len(),
        len,
        "the reader cut the record the leader is writing"
    );
    // (Put the file back as the leader's writer left it, and let the leader go on.)
    log.set_len(written).unwrap();
    drop(log);
    let follow = tokio::spawn({
        let reader = reader.clone();
        async move { take_numbers(&reader, key, 1, 8).await }
    });
    for i in 6..=8 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        leader
            .append(key.job, key.attempt, &line(0, &format!("{i}")))
            .unwrap();
    }
    assert_eq!(follow.await.unwrap(), [1, 2, 3, 4, 5, 6, 7, 8]);
    let texts: Vec<String> = reader
        .read(key, 1, 100)
        .await
        .unwrap()
        .lines
        .into_iter()
        .map(|l| l.text)
        .collect();
    assert_eq!(texts, ["1", "2", "3", "4", "5", "6", "7", "8"]);
}
