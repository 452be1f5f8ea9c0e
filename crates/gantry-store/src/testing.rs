//! For tests that need PostgreSQL (feature `test-util`): a new, empty database on the test
//! server that the test command starts (`GANTRY_TEST_DATABASE_URL`, see `scripts/pg-test-server`).
//! Without the variable a test fails and says how to get a server: it never skips. Also a
//! database left at an older schema ([`migrate_to`]), for tests of migrations.

use sqlx::{Connection, Executor};

/// The test server's URL, or a panic that says how to start one.
pub fn postgres_server_url() -> String {
    match std::env::var("GANTRY_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "GANTRY_TEST_DATABASE_URL is not set: the PostgreSQL tests need a server. Run the \
             tests through `./dev test`, or start one with `scripts/pg-test-server start /tmp/pg` \
             and `export GANTRY_TEST_DATABASE_URL=$(scripts/pg-test-server url /tmp/pg)`"
        ),
    }
}

/// The URL of a new, empty database on the test server, so tests never see each other's rows.
pub async fn fresh_postgres_database() -> String {
    let server = postgres_server_url();
    sqlx::any::install_default_drivers();
    let name = format!("gantry_t_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::AnyConnection::connect(&server)
        .await
        .unwrap_or_else(|e| panic!("cannot reach the test PostgreSQL at {server}: {e}"));
    admin
        .execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .unwrap_or_else(|e| panic!("cannot create a database on {server}: {e}"));
    let base = server.rsplit_once('/').map_or(server.as_str(), |(b, _)| b);
    format!("{base}/{name}")
}

/// Creates the schema at `url` up to migration `version` only, as an older Gantry left it, so a
/// test can fill it and check what a later migration does to it ([`crate::Store::open`] then
/// applies the rest).
pub async fn migrate_to(url: &str, version: i64) -> crate::Result<()> {
    sqlx::any::install_default_drivers();
    let (kind, url) = crate::normalize_url(url)?;
    let mut conn =
        sqlx::AnyConnection::connect(&url)
            .await
            .map_err(|source| crate::Error::Open {
                url: crate::redact(&url),
                source,
            })?;
    crate::migrate::migrate(kind, &mut conn, version).await?;
    conn.close().await?;
    Ok(())
}
