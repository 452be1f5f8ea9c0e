//! Gantry's durable state: webhook deliveries, runs, job attempts, steps, the job queue and the
//! commit status outbox, in SQLite (the default, one file in the data directory) or PostgreSQL.
//!
//! Every change of state goes through a [`Tx`]: the engine records a transition and the commit
//! statuses it causes in one transaction, so a crash can never lose a status that a state change
//! promised, nor report one for a change that did not happen.
//!
//! Queries run through sqlx's `Any` driver with portable SQL: timestamps are fixed-width RFC 3339
//! text (they sort as text), JSON is text, flags are 0/1 integers. The schema is embedded and
//! migrated at [`Store::open`]; a database migrated by a newer Gantry is refused.

mod codec;
mod deliveries;
mod migrate;
mod outbox;
mod queue;
mod requests;
mod retention;
mod runs;
#[cfg(feature = "test-util")]
pub mod testing;

use std::borrow::Cow;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor};

pub use deliveries::{Delivery, DeliveryState, NewDelivery};
pub use migrate::SCHEMA_VERSION;
pub use outbox::{OutboxEntry, OutboxOutcome};
pub use queue::QueueEntry;
pub use requests::{EngineAction, EngineRequest};
pub use retention::{KeepRuns, Pruned};
pub use runs::{Page, RunFilter, RunRecord, SUMMARY_MAX_BYTES, repo_key};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unsupported database URL {0:?}: use sqlite://PATH or postgres://USER@HOST/DB")]
    UnsupportedUrl(String),
    #[error("cannot open database {url}: {source}")]
    Open {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error(
        "database schema version {found} is newer than this gantry (max {known}): upgrade gantry"
    )]
    SchemaTooNew { found: i64, known: i64 },
    #[error("database migration {version} ({name}) failed: {source}")]
    Migration {
        version: i64,
        name: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("unreadable {what} in the database: {message}")]
    Corrupt { what: &'static str, message: String },
}

impl Error {
    /// The database cannot be written right now, though nothing is wrong with the request: a
    /// full disk or an I/O error (SQLite `SQLITE_FULL`, `SQLITE_IOERR`, `SQLITE_BUSY`;
    /// PostgreSQL classes 53 "insufficient resources", 57 "operator intervention", 58 "system
    /// error" and 08 "connection exception"), or no connection. Worth retrying later.
    pub fn is_unavailable(&self) -> bool {
        let Error::Db(err) = self else { return false };
        match err {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => true,
            sqlx::Error::Database(db) => db.code().is_some_and(|code| {
                // SQLite reports (extended) result codes as numbers: the primary code is the
                // low byte.
                match code.parse::<u32>() {
                    Ok(n) => matches!(n & 0xff, 5 | 10 | 13),
                    Err(_) => ["53", "57", "58", "08"].iter().any(|c| code.starts_with(c)),
                }
            }),
            _ => false,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How long Gantry waits, at start, for a store that cannot be reached or written.
pub const START_PATIENCE: Duration = Duration::from_secs(120);

/// Runs `attempt` until it succeeds, or fails in a way `unavailable` does not call the store
/// being unavailable for now (a PostgreSQL server still starting, an I/O error), or
/// [`START_PATIENCE`] has passed: waits between tries, 200 ms doubling to 5 s, and logs each
/// wait as "cannot WHAT yet".
pub async fn patiently<T, E, Fut>(
    what: &str,
    mut attempt: impl FnMut() -> Fut,
    unavailable: impl Fn(&E) -> bool,
) -> std::result::Result<T, E>
where
    E: std::fmt::Display,
    Fut: std::future::Future<Output = std::result::Result<T, E>>,
{
    let since = std::time::Instant::now();
    let mut delay = Duration::from_millis(200);
    loop {
        match attempt().await {
            Err(err) if unavailable(&err) && since.elapsed() < START_PATIENCE => {
                tracing::warn!(error = %err, retry_in = ?delay, "cannot {what} yet; trying again");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            result => return result,
        }
    }
}

/// Which database a [`Store`] talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DbKind {
    Sqlite,
    Postgres,
}

/// How long a query waits for a connection. A connection closed after a failed write is opened
/// again on the next acquire, and that fails for as long as the disk is full (SQLite) or the
/// server is down (PostgreSQL: connecting is retried until this passes). Seconds, not sqlx's
/// default 30 s: a webhook is then refused with 503 well within GitHub's 10 s delivery timeout
/// (a timed-out delivery is shown as failed too, but without Gantry's reason), and callers
/// retry sooner.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// A handle on the database. Cheap to clone: it is a connection pool.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    kind: DbKind,
}

impl Store {
    /// Opens (creating a SQLite file on first start) and migrates the database at `url`:
    /// `sqlite://PATH` (relative or absolute; `sqlite:///abs/path` works too) or
    /// `postgres://…` / `postgresql://…`.
    pub async fn open(url: &str) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let (kind, url) = normalize_url(url)?;
        let options: AnyConnectOptions = url.parse().map_err(|source| Error::Open {
            url: redact(&url),
            source,
        })?;
        let pool = match kind {
            DbKind::Sqlite => {
                AnyPoolOptions::new()
                    // SQLite has one writer; a few readers next to it are plenty.
                    .max_connections(4)
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    .after_release(release_check)
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            // WAL: readers never block the writer. The busy timeout makes a
                            // second process (or connection) wait for the lock, not fail.
                            conn.execute("PRAGMA journal_mode = WAL").await?;
                            conn.execute("PRAGMA busy_timeout = 10000").await?;
                            conn.execute("PRAGMA synchronous = NORMAL").await?;
                            conn.execute("PRAGMA foreign_keys = ON").await?;
                            Ok(())
                        })
                    })
                    .connect_with(options)
                    .await
            }
            DbKind::Postgres => {
                AnyPoolOptions::new()
                    .max_connections(8)
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    .after_release(release_check)
                    .connect_with(options)
                    .await
            }
        }
        .map_err(|source| Error::Open {
            url: redact(&url),
            source,
        })?;
        let store = Self { pool, kind };
        migrate::run(&store).await?;
        Ok(store)
    }

    pub fn kind(&self) -> DbKind {
        self.kind
    }

    /// The schema version the database is at.
    pub async fn schema_version(&self) -> Result<i64> {
        migrate::current_version(&mut *self.pool.acquire().await?).await
    }

    /// Starts a write transaction. SQLite takes the write lock at once (`BEGIN IMMEDIATE`), so
    /// two writers wait for each other instead of failing when one upgrades a read lock.
    pub async fn begin(&self) -> Result<Tx> {
        let begin: Cow<'static, str> = match self.kind {
            DbKind::Sqlite => "BEGIN IMMEDIATE".into(),
            DbKind::Postgres => "BEGIN".into(),
        };
        if let Some(fault) = gantry_core::inject::fault("store.begin") {
            return Err(injected(fault, "disk I/O error"));
        }
        Ok(Tx {
            tx: self.pool.begin_with(begin).await?,
        })
    }

    /// Waits for open connections to finish and closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    pub(crate) async fn conn(&self) -> Result<sqlx::pool::PoolConnection<sqlx::Any>> {
        if let Some(fault) = gantry_core::inject::fault("store.read") {
            return Err(injected(fault, "no database connection in time"));
        }
        Ok(self.pool.acquire().await?)
    }
}

/// An injected fault as the I/O error it stands for (see `gantry_core::inject`).
fn injected(fault: gantry_core::inject::Fault, what: &str) -> Error {
    Error::Db(sqlx::Error::Io(std::io::Error::other(fault.describe(what))))
}

/// Run on every connection handed back to the pool: one still inside a transaction is closed,
/// not reused. A write that fails (SQLite: "database or disk is full", an I/O error) may end the
/// transaction inside the database while sqlx still counts it open; its rollback then fails too,
/// and the next `BEGIN` on that connection would be refused ("attempted to call begin_with at
/// non-zero transaction depth") for as long as the process lives. The ping first lets the
/// rollback that dropping a [`Tx`] queues run before the check.
fn release_check(
    conn: &mut sqlx::AnyConnection,
    _: sqlx::pool::PoolConnectionMetadata,
) -> std::pin::Pin<Box<dyn Future<Output = Result<bool, sqlx::Error>> + Send + '_>> {
    Box::pin(async move {
        use sqlx::Connection as _;
        conn.ping().await?;
        if conn.is_in_transaction() {
            tracing::warn!("a database connection was left inside a failed transaction: closed");
            return Ok(false);
        }
        Ok(true)
    })
}

/// One write transaction. Dropped without [`Tx::commit`], it rolls back.
#[derive(Debug)]
pub struct Tx {
    tx: sqlx::Transaction<'static, sqlx::Any>,
}

impl Tx {
    pub async fn commit(self) -> Result<()> {
        if let Some(fault) = gantry_core::inject::fault("store.commit") {
            // As a commit the disk refused: nothing of the transaction is kept.
            self.tx.rollback().await?;
            return Err(injected(fault, "disk I/O error while committing"));
        }
        Ok(self.tx.commit().await?)
    }

    pub(crate) fn conn(&mut self) -> &mut sqlx::AnyConnection {
        &mut self.tx
    }
}

fn normalize_url(url: &str) -> Result<(DbKind, String)> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok((DbKind::Postgres, url.to_owned()));
    }
    let Some(rest) = url.strip_prefix("sqlite:") else {
        return Err(Error::UnsupportedUrl(redact(url)));
    };
    if rest == ":memory:" || rest.starts_with(":memory:?") {
        return Ok((DbKind::Sqlite, url.to_owned()));
    }
    let path = rest.strip_prefix("//").unwrap_or(rest);
    let (file, query) = path.split_once('?').unwrap_or((path, ""));
    if let Some(parent) = std::path::Path::new(file).parent()
        && !parent.as_os_str().is_empty()
    {
        // A missing data directory is created like the file; failing here is reported by the
        // connect that follows, with the database URL.
        let _ = std::fs::create_dir_all(parent);
    }
    // Create the file on first start.
    let query = if query.split('&').any(|kv| kv.starts_with("mode=")) {
        query.to_owned()
    } else if query.is_empty() {
        "mode=rwc".to_owned()
    } else {
        format!("{query}&mode=rwc")
    };
    Ok((DbKind::Sqlite, format!("sqlite://{file}?{query}")))
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls_create_the_file_and_keep_their_options() {
        assert_eq!(
            normalize_url("sqlite:///tmp/x/gantry.db").unwrap(),
            (DbKind::Sqlite, "sqlite:///tmp/x/gantry.db?mode=rwc".into())
        );
        assert_eq!(
            normalize_url("sqlite://data/gantry.db?mode=ro").unwrap().1,
            "sqlite://data/gantry.db?mode=ro"
        );
        assert!(normalize_url("mysql://x").is_err());
    }

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redact("postgres://gantry:hunter2@db:5432/gantry"),
            "postgres://gantry:***@db:5432/gantry"
        );
        assert_eq!(redact("sqlite://a.db"), "sqlite://a.db");
    }
}
