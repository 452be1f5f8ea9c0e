//! Databases for the tests: a temporary SQLite file, or a fresh PostgreSQL database.

use gantry_store::Store;

/// A store that lives as long as this value.
pub struct TestDb {
    pub store: Store,
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

pub async fn sqlite() -> TestDb {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/data/gantry.db", dir.path().display());
    let store = Store::open(&url).await.unwrap();
    TestDb {
        store,
        url,
        _dir: Some(dir),
    }
}

/// A new, empty database on the test server, so tests never see each other's rows. The
/// PostgreSQL half of the suite must not pass silently without a server: it fails and says how
/// to get one.
pub async fn postgres() -> TestDb {
    let url = gantry_store::testing::fresh_postgres_database().await;
    let store = Store::open(&url).await.unwrap();
    TestDb {
        store,
        url,
        _dir: None,
    }
}
