use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use gantry_logs::{Archive, DirArchive, Logs, ObjectStoreArchive, Retention, StepKey};
use object_store::ObjectStoreExt;
use object_store::aws::AmazonS3Builder;

use crate::moto::{self, MotoServer};
use crate::support::{key, line};

/// A step of 1,000 lines, ended (so archived), then deleted locally by retention.
async fn archived_step(archive: Arc<dyn Archive>) -> (tempfile::TempDir, Logs, StepKey) {
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

    let report = logs
        .sweep(Retention {
            max_age: None,
            max_bytes: Some(0),
        })
        .await
        .unwrap();
    assert_eq!(report.attempts_deleted, 1);
    assert!(!logs.store().exists(key));
    (dir, logs, key)
}

async fn archived_round_trip(archive: Arc<dyn Archive>) {
    // Retention deleted the local copy; reads go to the archive.
    let (_dir, logs, key) = archived_step(archive).await;
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

#[tokio::test]
async fn object_storage_archive_round_trips() {
    let store = Arc::new(object_store::memory::InMemory::new());
    archived_round_trip(Arc::new(gantry_logs::ObjectStoreArchive::new(
        store, "logs",
    )))
    .await;
}

/// An S3 client of moto's server, with test credentials (not from the environment).
fn s3_client(moto: &MotoServer) -> AmazonS3Builder {
    AmazonS3Builder::new()
        .with_endpoint(moto.endpoint())
        .with_allow_http(true)
        .with_region("eu-west-1")
        .with_access_key_id(moto::ACCESS_KEY_ID)
        .with_secret_access_key(moto::SECRET_ACCESS_KEY)
}

async fn s3_archive(moto: &MotoServer, url: &str) -> gantry_logs::Result<ObjectStoreArchive> {
    ObjectStoreArchive::s3_with(s3_client(moto), url).await
}

#[tokio::test]
async fn s3_archive_on_an_s3_compatible_server_is_read_back_after_retention() {
    let moto = MotoServer::start();
    moto.create_bucket("gantry-logs");
    let archive = s3_archive(&moto, "s3://gantry-logs/ci/logs/")
        .await
        .unwrap();
    assert_eq!(
        archive.location(),
        format!(
            "s3://gantry-logs/ci/logs at {} (region eu-west-1)",
            moto.endpoint()
        )
    );
    archived_round_trip(Arc::new(archive)).await;
    let keys = moto.keys("gantry-logs");
    assert!(
        keys.iter()
            .any(|k| k.starts_with("ci/logs/") && k.ends_with("/0.log")),
        "{keys:?}"
    );
    assert!(
        keys.contains(&"ci/logs/.gantry-archive-check".to_owned()),
        "the start-up check leaves its marker: {keys:?}"
    );
}

#[tokio::test]
async fn a_log_missing_from_the_s3_archive_is_a_clear_error() {
    let moto = MotoServer::start();
    moto.create_bucket("gantry-logs");
    let archive = Arc::new(s3_archive(&moto, "s3://gantry-logs").await.unwrap());

    let err = archive.get_range("no/such.log", 0..10).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "log archive: no/such.log: no such object in the archive"
    );

    // The index is there but the log was removed from the bucket: an error, not an empty log.
    let (_dir, logs, key) = archived_step(archive).await;
    let log = format!("{}/{}/{}.log", key.job, key.attempt, key.step);
    let bucket = s3_client(&moto)
        .with_bucket_name("gantry-logs")
        .build()
        .unwrap();
    bucket.delete(&log.as_str().into()).await.unwrap();
    let err = logs.read(key, 1, 10).await.unwrap_err().to_string();
    assert_eq!(
        err,
        format!("log archive: {log}: no such object in the archive, though its index is there")
    );
    let raw = logs.raw(key).await.unwrap().expect("the index is archived");
    let mut raw = std::pin::pin!(raw);
    let err = raw.next().await.unwrap().unwrap_err().to_string();
    assert!(
        err.contains(&log) && err.contains("no such object"),
        "{err}"
    );
}

#[tokio::test]
async fn an_s3_archive_that_cannot_be_reached_or_has_no_bucket_fails_at_start() {
    let moto = MotoServer::start();
    let err = s3_archive(&moto, "s3://not-created").await.unwrap_err();
    let err = err.to_string();
    assert!(
        err.contains("s3://not-created") && err.contains("cannot write the check object"),
        "{err}"
    );
    assert!(err.contains("NoSuchBucket"), "the server's reason: {err}");

    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = std::time::Instant::now();
    let builder = AmazonS3Builder::new()
        .with_endpoint(format!("http://127.0.0.1:{closed}"))
        .with_allow_http(true)
        .with_access_key_id(moto::ACCESS_KEY_ID)
        .with_secret_access_key(moto::SECRET_ACCESS_KEY);
    let err = ObjectStoreArchive::s3_with(builder, "s3://logs")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("127.0.0.1:{closed}")) && err.contains("cannot write"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "gives up quickly: {:?}",
        started.elapsed()
    );
}

/// An archive that refuses every upload while `down`.
struct Flaky {
    inner: DirArchive,
    down: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl Archive for Flaky {
    async fn put_file(&self, name: &str, path: &std::path::Path) -> gantry_logs::Result<()> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(gantry_logs::Error::Archive(format!(
                "{name}: the archive is down"
            )));
        }
        self.inner.put_file(name, path).await
    }
    async fn size(&self, name: &str) -> gantry_logs::Result<Option<u64>> {
        self.inner.size(name).await
    }
    async fn get_range(
        &self,
        name: &str,
        range: std::ops::Range<u64>,
    ) -> gantry_logs::Result<Vec<u8>> {
        self.inner.get_range(name, range).await
    }
}

#[tokio::test]
async fn retention_keeps_a_log_the_archive_refused_until_a_later_sweep_archives_it() {
    let dir = tempfile::tempdir().unwrap();
    let archive = Arc::new(Flaky {
        inner: DirArchive::new(dir.path().join("archive")),
        down: std::sync::atomic::AtomicBool::new(true),
    });
    let logs = Logs::open(dir.path().join("logs"))
        .unwrap()
        .with_archive(archive.clone());
    let key = key();
    for i in 1..=20 {
        logs.append(key.job, key.attempt, &line(0, &format!("line {i}")))
            .unwrap();
    }
    logs.close_step(key).unwrap();
    let everything = Retention {
        max_age: None,
        max_bytes: Some(0),
    };
    // The upload at the step's end failed, and so does the sweep's: the only copy stays.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let report = logs.sweep(everything.clone()).await.unwrap();
    assert_eq!(
        report.attempts_deleted, 0,
        "the only copy of a log was deleted"
    );
    assert!(logs.store().exists(key));

    // The archive is back: the next sweep uploads the log, then deletes the local copy.
    archive
        .down
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let report = logs.sweep(everything).await.unwrap();
    assert_eq!(report.attempts_deleted, 1);
    assert!(!logs.store().exists(key));
    let page = logs.read(key, 19, 10).await.unwrap();
    let texts: Vec<_> = page.lines.iter().map(|l| l.text.as_str()).collect();
    assert_eq!(texts, ["line 19", "line 20"]);
}
