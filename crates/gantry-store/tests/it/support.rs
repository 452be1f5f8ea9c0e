//! Databases for the tests: a temporary SQLite file, or a fresh PostgreSQL database.

use gantry_store::Store;

/// A store that lives as long as this value.
pub struct TestDb {
    pub store: Store,
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

/// A database nobody has opened yet (for tests that build an older schema first): its URL, and
/// the directory a SQLite file lives in, kept as long as this value.
pub struct EmptyDb {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

impl EmptyDb {
    pub async fn open(self) -> TestDb {
        let store = Store::open(&self.url).await.unwrap();
        TestDb {
            store,
            url: self.url,
            _dir: self._dir,
        }
    }
}

pub async fn sqlite_empty() -> EmptyDb {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/data/gantry.db", dir.path().display());
    EmptyDb {
        url,
        _dir: Some(dir),
    }
}

/// A new, empty database on the test server, so tests never see each other's rows. The
/// PostgreSQL half of the suite must not pass silently without a server: it fails and says how
/// to get one.
pub async fn postgres_empty() -> EmptyDb {
    let url = gantry_store::testing::fresh_postgres_database().await;
    EmptyDb { url, _dir: None }
}

pub async fn sqlite() -> TestDb {
    sqlite_empty().await.open().await
}

pub async fn postgres() -> TestDb {
    postgres_empty().await.open().await
}
