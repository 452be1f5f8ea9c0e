use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use gantry_core::{JobId, Stream};
use gantry_logs::{LogStore, MAX_LINE_BYTES, Retention, StepKey};

use crate::support::{all_text, key, line, logs};

#[tokio::test]
async fn ranges_are_read_by_line_number() {
    let (_dir, logs) = logs();
    let key = key();
    for i in 1..=2500 {
        logs.append(key.job, key.attempt, &line(0, &format!("line {i}")))
            .unwrap();
    }
    let page = logs.read(key, 1200, 3).await.unwrap();
    let texts: Vec<_> = page
        .lines
        .iter()
        .map(|l| (l.number, l.text.as_str()))
        .collect();
    assert_eq!(
        texts,
        vec![
            (1200, "line 1200"),
            (1201, "line 1201"),
            (1202, "line 1202")
        ]
    );
    assert_eq!(page.total, 2500);
    assert!(!page.complete);
    assert!(logs.read(key, 2501, 10).await.unwrap().lines.is_empty());
    assert_eq!(logs.read(key, 2499, 10).await.unwrap().lines.len(), 2);
    logs.close_step(key).unwrap();
    assert!(logs.read(key, 1, 1).await.unwrap().complete);
}

#[tokio::test]
async fn streams_times_and_odd_bytes_survive_the_round_trip() {
    let (_dir, logs) = logs();
    let key = key();
    let mut l = line(0, "\u{1b}[31mred\u{1b}[0m\tand a\rcarriage return \u{fffd}");
    l.stream = Stream::Stderr;
    logs.append(key.job, key.attempt, &l).unwrap();
    let page = logs.read(key, 1, 10).await.unwrap();
    assert_eq!(page.lines[0].text, l.text);
    assert_eq!(page.lines[0].stream, Stream::Stderr);
    assert_eq!(page.lines[0].at, l.at.with_nanosecond_micros());
}

trait Micros {
    fn with_nanosecond_micros(self) -> Self;
}
impl Micros for gantry_core::Timestamp {
    fn with_nanosecond_micros(self) -> Self {
        use chrono::Timelike;
        self.with_nanosecond(self.nanosecond() / 1000 * 1000)
            .unwrap()
    }
}

#[tokio::test]
async fn long_lines_and_embedded_newlines_become_several_lines() {
    let (_dir, logs) = logs();
    let key = key();
    let long = "é".repeat(MAX_LINE_BYTES); // 2 bytes each: two full pieces
    let stored = logs.append(key.job, key.attempt, &line(0, &long)).unwrap();
    assert_eq!(stored.len(), 2);
    assert!(stored.iter().all(|l| l.text.len() <= MAX_LINE_BYTES));
    logs.append(key.job, key.attempt, &line(0, "one\ntwo"))
        .unwrap();
    let text = all_text(&logs, key).await;
    assert_eq!(text.len(), 4);
    assert_eq!(format!("{}{}", text[0], text[1]), long);
    assert_eq!(&text[2..], ["one", "two"]);
}

#[tokio::test]
async fn raw_download_is_the_plain_text() {
    let (_dir, logs) = logs();
    let key = key();
    for t in ["a", "b b", ""] {
        logs.append(key.job, key.attempt, &line(0, t)).unwrap();
    }
    let raw: Vec<u8> = logs
        .store()
        .raw(key, 2)
        .unwrap()
        .flat_map(|c| c.unwrap())
        .collect();
    assert_eq!(String::from_utf8(raw).unwrap(), "a\nb b\n\n");
}

#[tokio::test]
async fn search_finds_lines_case_insensitively() {
    let (_dir, logs) = logs();
    let key = key();
    for i in 1..=100 {
        let t = if i % 25 == 0 {
            format!("ERROR at {i}")
        } else {
            format!("ok {i}")
        };
        logs.append(key.job, key.attempt, &line(0, &t)).unwrap();
    }
    let found = logs.search(key, "error", 1, 10).await.unwrap();
    let numbers: Vec<u64> = found.iter().map(|l| l.number).collect();
    assert_eq!(numbers, vec![25, 50, 75, 100]);
    let found = logs.search(key, "error", 51, 1).await.unwrap();
    assert_eq!(found[0].number, 75);
}

#[test]
fn repair_indexes_records_the_index_missed_and_drops_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::new(dir.path());
    let key = StepKey::new(JobId::new(), 1, 0);
    {
        let mut w = store.open_writer(key).unwrap();
        for i in 1..=10 {
            w.append(gantry_core::now(), Stream::Stdout, &format!("l{i}"))
                .unwrap();
        }
    }
    let files = store.files(key);
    // A crash after writing records 11 and 12 but before their index entries, in the middle
    // of record 13.
    let mut log = std::fs::read(&files.log).unwrap();
    log.extend_from_slice(b"2026-01-01T00:00:00.000000Z stdout l11\n");
    log.extend_from_slice(b"2026-01-01T00:00:00.000000Z stdout l12\n");
    log.extend_from_slice(b"2026-01-01T00:00:00.000000Z std");
    std::fs::write(&files.log, &log).unwrap();
    // And a torn index entry.
    let mut idx = std::fs::read(&files.index).unwrap();
    idx.extend_from_slice(&[1, 2, 3]);
    std::fs::write(&files.index, &idx).unwrap();

    assert_eq!(store.repair(key).unwrap(), 12);
    let lines = store.read(key, 9, 100, u64::MAX).unwrap();
    let texts: Vec<_> = lines.iter().map(|l| l.text.as_str()).collect();
    assert_eq!(texts, ["l9", "l10", "l11", "l12"]);
    // And appends go on from there.
    let mut w = store.open_writer(key).unwrap();
    let stored = w.append(gantry_core::now(), Stream::Stdout, "l13").unwrap();
    assert_eq!(stored[0].number, 13);
    assert_eq!(store.read(key, 13, 1, u64::MAX).unwrap()[0].text, "l13");
}

#[test]
fn a_page_stays_within_its_byte_budget() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::new(dir.path());
    let key = StepKey::new(JobId::new(), 1, 0);
    let mut w = store.open_writer(key).unwrap();
    for _ in 0..100 {
        w.append(gantry_core::now(), Stream::Stdout, &"x".repeat(1000))
            .unwrap();
    }
    let lines = store.read(key, 1, 100, 10_000).unwrap();
    assert!((8..=10).contains(&lines.len()), "{}", lines.len());
    // At least one line, whatever the budget.
    assert_eq!(store.read(key, 1, 100, 1).unwrap().len(), 1);
}

fn write_attempt(store: &LogStore, job: JobId, bytes: usize) {
    let mut w = store.open_writer(StepKey::new(job, 1, 0)).unwrap();
    w.append(gantry_core::now(), Stream::Stdout, &"x".repeat(bytes))
        .unwrap();
}

#[test]
fn retention_deletes_by_age_then_oldest_first_by_size_but_never_live_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::new(dir.path());
    let jobs: Vec<JobId> = (0..4).map(|_| JobId::new()).collect();
    for job in &jobs {
        write_attempt(&store, *job, 10_000);
        std::thread::sleep(Duration::from_millis(20));
    }
    let live: HashSet<_> = [(jobs[1], 1)].into();
    // Age: "now" is an hour later; everything is old, but the live attempt stays.
    let later = SystemTime::now() + Duration::from_secs(3600);
    let r = store
        .sweep(
            &Retention {
                max_age: Some(Duration::from_secs(3000)),
                max_bytes: None,
            },
            later,
            &live,
        )
        .unwrap();
    assert_eq!(r.attempts_deleted, 3);
    assert!(store.exists(StepKey::new(jobs[1], 1, 0)));

    for _ in 0..3 {
        write_attempt(&store, JobId::new(), 10_000);
        std::thread::sleep(Duration::from_millis(20));
    }
    let newest = JobId::new();
    write_attempt(&store, newest, 10_000);
    let r = store
        .sweep(
            &Retention {
                max_age: None,
                max_bytes: Some(25_000),
            },
            SystemTime::now(),
            &HashSet::new(),
        )
        .unwrap();
    assert!(r.bytes_kept <= 25_000, "{r:?}");
    assert!(
        store.exists(StepKey::new(newest, 1, 0)),
        "the newest is kept"
    );
    assert!(
        !store.exists(StepKey::new(jobs[1], 1, 0)),
        "the oldest went first"
    );
}
