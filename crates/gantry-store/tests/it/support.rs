//! Databases for the tests: a temporary SQLite file, or a fresh PostgreSQL database.

use gantry_store::Store;
use sqlx::Executor;

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

/// The PostgreSQL server's URL. The PostgreSQL half of the suite must not pass silently without
/// a server: it fails and says how to get one.
pub fn pg_server_url() -> String {
    match std::env::var("GANTRY_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "GANTRY_TEST_DATABASE_URL is not set: the PostgreSQL tests need a server. Run the \
             tests through `./dev test`, or start one with `scripts/pg-test-server start /tmp/pg` \
             and `export GANTRY_TEST_DATABASE_URL=$(scripts/pg-test-server url /tmp/pg)`"
        ),
    }
}

/// A new, empty database on the test server, so tests never see each other's rows.
pub async fn postgres() -> TestDb {
    let server = pg_server_url();
    let name = format!("gantry_t_{}", uuid::Uuid::new_v4().simple());
    sqlx::any::install_default_drivers();
    let mut admin = <sqlx::AnyConnection as sqlx::Connection>::connect(&server)
        .await
        .unwrap_or_else(|e| panic!("cannot reach the test PostgreSQL at {server}: {e}"));
    admin
        .execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .unwrap();
    let base = server.rsplit_once('/').map_or(server.as_str(), |(b, _)| b);
    let url = format!("{base}/{name}");
    let store = Store::open(&url).await.unwrap();
    TestDb {
        store,
        url,
        _dir: None,
    }
}
