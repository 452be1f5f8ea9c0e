use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use gantry_logs::{Archive, DirArchive, Logs, Retention};

use crate::support::{key, line};

async fn archived_round_trip(archive: Arc<dyn Archive>) {
    let dir = tempfile::tempdir().unwrap();
    let logs = Logs::open(dir.path().join("logs"))
        .unwrap()
        .with_archive(archive.clone());
    let key = key();
    for i in 1..=1000 {
        logs.append(key.job, key.attempt, &line(0, &format!("line {i}")))
            .unwrap();
    }
    logs.close_step(key).unwrap();
    let index = format!("{}/{}/{}.idx", key.job, key.attempt, key.step);
    tokio::time::timeout(Duration::from_secs(10), async {
        while archive.size(&index).await.unwrap().is_none() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the step is archived");

    // Retention deletes the local copy; reads go to the archive.
    let report = logs
        .sweep(Retention {
            max_age: None,
            max_bytes: Some(0),
        })
        .await
        .unwrap();
    assert_eq!(report.attempts_deleted, 1);
    assert!(!logs.store().exists(key));
    let page = logs.read(key, 998, 10).await.unwrap();
    let texts: Vec<_> = page.lines.iter().map(|l| l.text.as_str()).collect();
    assert_eq!(texts, ["line 998", "line 999", "line 1000"]);
    assert_eq!(page.total, 1000);
    assert!(page.complete);
    let raw: Vec<u8> = logs
        .raw(key)
        .await
        .unwrap()
        .unwrap()
        .map(|c| c.unwrap())
        .concat()
        .await;
    let raw = String::from_utf8(raw).unwrap();
    assert_eq!(raw.lines().count(), 1000);
    assert!(raw.starts_with("line 1\nline 2\n"));
}

#[tokio::test]
async fn finished_logs_are_archived_and_read_back_after_retention() {
    let dir = tempfile::tempdir().unwrap();
    archived_round_trip(Arc::new(DirArchive::new(dir.path().join("archive")))).await;
}

#[cfg(feature = "object-store")]
#[tokio::test]
async fn object_storage_archive_round_trips() {
    let store = Arc::new(object_store::memory::InMemory::new());
    archived_round_trip(Arc::new(gantry_logs::ObjectStoreArchive::new(
        store, "logs",
    )))
    .await;
}
