//! Storage: one sea-orm connection pool over the embedded SQLite file or PostgreSQL, and the
//! migrations that own its schema.
//!
//! Invariant: every connection has foreign keys enforced (SQLite: `PRAGMA foreign_keys = ON`,
//! WAL, a busy timeout), and both engines run the same migrations from `trellis-migrations`.
//! A transaction from [`Db::begin_durable`] is on disk when its commit returns, on both engines;
//! other SQLite commits may be lost to a power cut (never corrupted): see `docs/benchmarks.md`.
//! Raw SQL goes through [`sql`] (a SQLite commit in two hand-offs through [`held`]); tables with
//! sea-orm entities through [`entity`].

pub mod entity;
pub mod held;
pub mod recent;
pub mod sql;

pub use recent::Recent;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sea_orm::sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbErr, TransactionTrait,
};
use sea_orm_migration::MigratorTrait;
use secrecy::ExposeSecret;
use trellis_migrations::Migrator;

use crate::config::{Config, DatabaseKind, redact_url};

/// An arbitrary constant naming the PostgreSQL advisory lock that serialises migrations when
/// several engine processes start at once.
const MIGRATION_LOCK_KEY: i64 = 0x0074_7265_6c6c_6973;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open database {url}: {source}")]
    Connect { url: String, source: DbErr },
    #[error("cannot create the database folder {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid SQLite database URL {url}: {message}")]
    BadSqliteUrl { url: String, message: String },
    #[error("migration failed: {0}")]
    Migrate(DbErr),
    #[error("database query failed: {0}")]
    Query(#[from] DbErr),
    #[error("the database file {0} is gone")]
    FileGone(PathBuf),
    #[error("{0} migration(s) not applied; run `trellis migrate`")]
    Pending(usize),
}

/// Connections in the SQLite pool behind [`Db::begin_durable`]. Its writers queue for SQLite's
/// single write lock anyway; two let a reader proceed beside a writer.
const DURABLE_CONNECTIONS: u32 = 2;

/// The engine's database: the pool plus what readiness needs to know about where it lives.
#[derive(Clone, Debug)]
pub struct Db {
    pub conn: DatabaseConnection,
    /// On a SQLite file, a second pool on the same file whose connections run with
    /// `synchronous = FULL`; otherwise the same pool as `conn`.
    durable: DatabaseConnection,
    pub kind: DatabaseKind,
    /// The SQLite file, when the database is one (not for `:memory:`).
    sqlite_file: Option<PathBuf>,
}

impl Db {
    /// Opens the database the configuration names, creating the SQLite file (and its folder) on
    /// first use. Does not migrate.
    pub async fn connect(config: &Config) -> Result<Self, Error> {
        let url = config.database.url.expose_secret().to_owned();
        let kind = config.database_kind();
        let max = config.database.max_connections;
        if kind != DatabaseKind::Sqlite {
            let conn = open(&url, max, None).await?;
            return Ok(Self {
                durable: conn.clone(),
                conn,
                kind,
                sqlite_file: None,
            });
        }
        let parsed = SqliteConnectOptions::from_str(&url).map_err(|e| Error::BadSqliteUrl {
            url: redact_url(&url),
            message: e.to_string(),
        })?;
        let file = parsed.get_filename().to_owned();
        let busy = Duration::from_millis(config.database.busy_timeout_ms);
        if is_memory(&file) {
            let conn = open(&url, max, Some((busy, SqliteSynchronous::Normal))).await?;
            return Ok(Self {
                durable: conn.clone(),
                conn,
                kind,
                sqlite_file: None,
            });
        }
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| Error::CreateDir {
                path: dir.to_owned(),
                source,
            })?;
        }
        // In WAL mode NORMAL commits without an fsync: a power cut can drop the last commits
        // (never corrupt the file). FULL fsyncs the WAL at every commit while holding SQLite's
        // single write lock — 1.5× a NORMAL commit on the development machine, as much more as
        // the disk's flush takes elsewhere — so only commits acknowledged to someone who will
        // not deliver again pay it (`docs/benchmarks.md`).
        let conn = open(&url, max, Some((busy, SqliteSynchronous::Normal))).await?;
        let durable = open(
            &url,
            DURABLE_CONNECTIONS.min(max),
            Some((busy, SqliteSynchronous::Full)),
        )
        .await?;
        Ok(Self {
            conn,
            durable,
            kind,
            sqlite_file: Some(file),
        })
    }

    /// Begins a transaction whose commit is on disk before `commit` returns, whatever the
    /// engine's or the server's defaults: on SQLite it runs on a `synchronous = FULL` connection
    /// and takes the write lock at `BEGIN` (as [`begin_write`]); on PostgreSQL it sets
    /// `synchronous_commit` on for itself, since a server may run with it off. For what is
    /// acknowledged to a party that will not deliver it again, such as Alipay's notifications.
    pub async fn begin_durable(&self) -> Result<sea_orm::DatabaseTransaction, DbErr> {
        match self.kind {
            DatabaseKind::Sqlite => begin_write(&self.durable).await,
            DatabaseKind::Postgres => {
                let txn = begin(&self.durable).await?;
                txn.execute_unprepared("SET LOCAL synchronous_commit TO on")
                    .await?;
                Ok(txn)
            }
        }
    }

    /// Applies every pending migration; returns how many ran. Safe to call from several
    /// processes at once: PostgreSQL serialises them under an advisory lock in one transaction.
    pub async fn migrate(&self) -> Result<usize, Error> {
        let pending = Migrator::get_pending_migrations(&self.conn)
            .await
            .map_err(Error::Migrate)?;
        if pending.is_empty() {
            return Ok(0);
        }
        match self.kind {
            DatabaseKind::Postgres => {
                let txn = self.conn.begin().await.map_err(Error::Migrate)?;
                sql::query(
                    "SELECT pg_advisory_xact_lock(?)",
                    [MIGRATION_LOCK_KEY.into()],
                )
                .execute(&txn)
                .await
                .map_err(Error::Migrate)?;
                let still_pending = Migrator::get_pending_migrations(&txn)
                    .await
                    .map_err(Error::Migrate)?
                    .len();
                Migrator::up(&txn, None).await.map_err(Error::Migrate)?;
                txn.commit().await.map_err(Error::Migrate)?;
                Ok(still_pending)
            }
            DatabaseKind::Sqlite => {
                Migrator::up(&self.conn, None)
                    .await
                    .map_err(Error::Migrate)?;
                Ok(pending.len())
            }
        }
    }

    /// How many migrations this binary knows that the database has not applied.
    pub async fn pending_migrations(&self) -> Result<usize, Error> {
        Ok(Migrator::get_pending_migrations_read_only(&self.conn)
            .await?
            .len())
    }

    /// Ready means: the database answers, it is the one we opened, and its schema is current.
    pub async fn check_ready(&self) -> Result<(), Error> {
        if let Some(file) = &self.sqlite_file {
            // An open SQLite handle keeps answering after its file is deleted, while every
            // write would be lost at restart; that is not a database we can serve from.
            if !file.exists() {
                return Err(Error::FileGone(file.clone()));
            }
        }
        self.conn.execute_unprepared("SELECT 1").await?;
        match self.pending_migrations().await? {
            0 => Ok(()),
            n => Err(Error::Pending(n)),
        }
    }

    pub async fn close(self) {
        for pool in [self.durable, self.conn] {
            if let Err(error) = pool.close().await {
                tracing::warn!(%error, "closing the database pool failed");
            }
        }
    }
}

/// One pool on `url`; `sqlite` is the busy timeout and synchronous level of a SQLite database.
async fn open(
    url: &str,
    max_connections: u32,
    sqlite: Option<(Duration, SqliteSynchronous)>,
) -> Result<DatabaseConnection, Error> {
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .max_connections(max_connections)
        .connect_timeout(Duration::from_secs(10))
        .acquire_timeout(Duration::from_secs(10))
        // A ping on every checkout doubles the round trips of a busy engine; a connection that
        // sat idle long enough for a server, proxy or firewall to drop it is still checked.
        .test_before_acquire_if_idle_for(Duration::from_secs(30))
        .sqlx_logging(true)
        .sqlx_logging_level(tracing::log::LevelFilter::Debug);
    if let Some((busy, synchronous)) = sqlite {
        options.map_sqlx_sqlite_opts(move |o| {
            o.create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(synchronous)
                .foreign_keys(true)
                .busy_timeout(busy)
        });
    }
    Database::connect(options)
        .await
        .map_err(|source| Error::Connect {
            url: redact_url(url),
            source,
        })
}

fn is_memory(file: &Path) -> bool {
    file.as_os_str().is_empty() || file.to_string_lossy().contains(":memory:")
}

/// Which page of a list a caller asked for: 1-based, at most [`Page::MAX_PER_PAGE`] items.
/// From a query string it is validated, not clamped: a page past [`Page::MAX_PAGE`] or a size
/// outside 1 to [`Page::MAX_PER_PAGE`] is refused (422), so no caller can push an offset that
/// overflows the database's integer types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, utoipa::IntoParams)]
#[serde(try_from = "PageQuery")]
pub struct Page {
    /// 1-based page number.
    pub page: u64,
    /// Items per page, 1 to 200.
    pub per_page: u64,
}

impl Default for Page {
    fn default() -> Self {
        Self {
            page: 1,
            per_page: 50,
        }
    }
}

/// The raw query form of [`Page`], before its bounds are checked.
#[derive(serde::Deserialize)]
#[serde(default)]
struct PageQuery {
    page: u64,
    per_page: u64,
}

impl Default for PageQuery {
    fn default() -> Self {
        let page = Page::default();
        Self {
            page: page.page,
            per_page: page.per_page,
        }
    }
}

impl TryFrom<PageQuery> for Page {
    type Error = String;

    fn try_from(query: PageQuery) -> Result<Self, Self::Error> {
        if !(1..=Page::MAX_PAGE).contains(&query.page) {
            return Err(format!("page must be 1 to {}", Page::MAX_PAGE));
        }
        if !(1..=Page::MAX_PER_PAGE).contains(&query.per_page) {
            return Err(format!("per_page must be 1 to {}", Page::MAX_PER_PAGE));
        }
        Ok(Self {
            page: query.page,
            per_page: query.per_page,
        })
    }
}

impl Page {
    pub const MAX_PER_PAGE: u64 = 200;
    /// The last page a caller may ask for: 200 million rows in, far past any list we keep.
    pub const MAX_PAGE: u64 = 1_000_000;

    /// The page with out-of-range values clamped rather than refused: page 0 is page 1 and an
    /// oversized page is the largest one allowed.
    pub fn clamped(self) -> Self {
        Self {
            page: self.page.clamp(1, Self::MAX_PAGE),
            per_page: self.per_page.clamp(1, Self::MAX_PER_PAGE),
        }
    }

    pub fn offset(self) -> u64 {
        let page = self.clamped();
        (page.page - 1).saturating_mul(page.per_page)
    }

    pub fn limit(self) -> u64 {
        self.clamped().per_page
    }

    pub fn wrap<T>(self, items: Vec<T>, total: u64) -> Paged<T> {
        let page = self.clamped();
        Paged {
            items,
            page: page.page,
            per_page: page.per_page,
            total,
        }
    }
}

/// Runs an ordered query for one page: the total over all pages, then that page's rows.
pub async fn fetch_page<E>(
    db: &impl ConnectionTrait,
    query: sea_orm::Select<E>,
    page: Page,
) -> Result<(Vec<E::Model>, u64), DbErr>
where
    E: sea_orm::EntityTrait,
    E::Model: Sync,
{
    use sea_orm::{PaginatorTrait, QuerySelect};
    let total = query.clone().count(db).await?;
    let rows = query
        .offset(page.offset())
        .limit(page.limit())
        .all(db)
        .await?;
    Ok((rows, total))
}

/// One page of a list, with the total across all pages.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Paged<T> {
    pub items: Vec<T>,
    pub page: u64,
    pub per_page: u64,
    pub total: u64,
}

/// SQLite has one writer at a time, and a connection waiting for the write lock sleeps in
/// SQLite's busy handler (1, 2, 5, 10… ms at a time): busy writers of one process would spend
/// more time asleep than writing. The hottest writers (plugin commits, claims) take turns here
/// instead, woken the moment the turn is free. Per process: every database of a process shares
/// it, which only the tests' in-process engines notice.
static SQLITE_WRITER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// This process's turn to write to `db`, when it is SQLite; hold it across the transaction.
/// `None` on PostgreSQL, whose writers do not exclude each other.
pub async fn write_turn(
    db: &impl sea_orm::ConnectionTrait,
) -> Option<tokio::sync::MutexGuard<'static, ()>> {
    match db.get_database_backend() {
        sea_orm::DbBackend::Sqlite => Some(SQLITE_WRITER.lock().await),
        _ => None,
    }
}

/// Begins a transaction that will write. On SQLite it takes the write lock at `BEGIN`
/// (`BEGIN IMMEDIATE`), waiting up to the busy timeout for other writers: a deferred transaction
/// that reads and then writes fails at once (`SQLITE_BUSY`) when another connection — such as an
/// event dispatcher — committed in between. PostgreSQL begins as usual.
pub async fn begin_write(
    db: &sea_orm::DatabaseConnection,
) -> Result<sea_orm::DatabaseTransaction, sea_orm::DbErr> {
    begin_with(
        db,
        sea_orm::TransactionOptions {
            sqlite_transaction_mode: Some(sea_orm::SqliteTransactionMode::Immediate),
            ..Default::default()
        },
    )
    .await
}

/// Begins a transaction; on SQLite a deferred one, for reads (see [`begin_write`]).
pub async fn begin(
    db: &sea_orm::DatabaseConnection,
) -> Result<sea_orm::DatabaseTransaction, sea_orm::DbErr> {
    begin_with(db, sea_orm::TransactionOptions::default()).await
}

/// The one door to `BEGIN`: it runs in a task of its own, so a caller dropped while waiting
/// (a deadline, a client that hung up) cannot leave a connection inside a transaction nobody
/// owns, and a caller may safely give up waiting for it. sqlx's PostgreSQL driver queues no rollback for a `BEGIN` it sent but had not seen
/// answered; that connection went back to the pool mid-transaction, and every later statement
/// on it — autocommit ones too — stayed uncommitted, holding its row locks, until some other
/// transaction on it happened to commit. Here the task finishes the `BEGIN`, and a transaction
/// nobody waits for any more is dropped, which rolls it back.
async fn begin_with(
    db: &sea_orm::DatabaseConnection,
    options: sea_orm::TransactionOptions,
) -> Result<sea_orm::DatabaseTransaction, sea_orm::DbErr> {
    let db = db.clone();
    tokio::spawn(async move { db.begin_with_options(options).await })
        .await
        .map_err(|e| sea_orm::DbErr::Custom(format!("beginning a transaction failed: {e}")))?
}

/// A migrated SQLite database in `dir`, for the engine's unit tests.
#[cfg(test)]
pub(crate) async fn test_sqlite(dir: &Path) -> Db {
    let db = tests::sqlite_file_db(dir).await;
    db.migrate().await.unwrap();
    db
}

/// A fresh, migrated PostgreSQL database on the server `TRELLIS_TEST_DATABASE_URL` names, for
/// the engine's unit tests; `None` (the leg skipped) when it names none.
#[cfg(test)]
pub(crate) async fn test_postgres() -> Option<TestPostgres> {
    let Some(admin_url) = crate::config::test_database_url_from_env() else {
        eprintln!("PostgreSQL leg skipped: TRELLIS_TEST_DATABASE_URL is not set");
        return None;
    };
    let name = format!("trellis_u_{}", uuid::Uuid::new_v4().simple());
    let admin = sea_orm::Database::connect(&admin_url).await.unwrap();
    admin
        .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
        .await
        .unwrap();
    admin.close().await.unwrap();
    let mut url = url::Url::parse(&admin_url).unwrap();
    url.set_path(&format!("/{name}"));
    let mut config = Config::load(None).unwrap();
    config.database.url = secrecy::SecretString::from(url.to_string());
    let db = Db::connect(&config).await.unwrap();
    db.migrate().await.unwrap();
    Some(TestPostgres {
        db,
        admin_url,
        name,
    })
}

/// Runs `body` on a migrated SQLite database and, when `TRELLIS_TEST_DATABASE_URL` names a
/// server, on a fresh PostgreSQL one, for the engine's unit tests.
#[cfg(test)]
pub(crate) async fn on_both<F: std::future::Future<Output = ()>>(
    body: impl Fn(sea_orm::DatabaseConnection) -> F,
) {
    let dir = tempfile::tempdir().unwrap();
    body(test_sqlite(dir.path()).await.conn).await;
    if let Some(postgres) = test_postgres().await {
        body(postgres.db.conn.clone()).await;
        postgres.drop().await;
    }
}

/// A unit test's PostgreSQL database; [`TestPostgres::drop`] removes it.
#[cfg(test)]
pub(crate) struct TestPostgres {
    pub db: Db,
    admin_url: String,
    name: String,
}

#[cfg(test)]
impl TestPostgres {
    pub async fn drop(self) {
        self.db.close().await;
        let admin = sea_orm::Database::connect(&self.admin_url).await.unwrap();
        let drop = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        // FORCE does not end an autovacuum worker visiting the database (it runs as the
        // bootstrap superuser); the worker is done within moments.
        for attempt in 0.. {
            match admin.execute_unprepared(&drop).await {
                Ok(_) => break,
                Err(e) if attempt < 20 && e.to_string().contains("pg_signal_backend") => {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => panic!("could not drop {}: {e}", self.name),
            }
        }
        admin.close().await.unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) async fn sqlite_file_db(dir: &Path) -> Db {
        let mut config = Config::load(None).unwrap();
        config.data_dir = dir.to_owned();
        config.database.url =
            secrecy::SecretString::from(format!("sqlite://{}", dir.join("t.db").display()));
        Db::connect(&config).await.unwrap()
    }

    /// `PRAGMA synchronous` of the connection `db` runs on: 1 is NORMAL, 2 is FULL.
    async fn synchronous(db: &impl ConnectionTrait) -> i32 {
        sql::query("PRAGMA synchronous", [])
            .scalar(db)
            .await
            .unwrap()
            .unwrap()
    }

    #[tokio::test]
    async fn durable_transactions_on_sqlite_run_with_synchronous_full() {
        let dir = tempfile::tempdir().unwrap();
        let db = sqlite_file_db(dir.path()).await;
        // Every connection of the pool at once, so each is seen and none twice.
        let mut held = Vec::new();
        for _ in 0..DURABLE_CONNECTIONS {
            held.push(db.durable.begin().await.unwrap());
        }
        for txn in &held {
            assert_eq!(synchronous(txn).await, 2);
        }
        for txn in held {
            txn.rollback().await.unwrap();
        }
        for _ in 0..3 {
            let txn = db.begin_durable().await.unwrap();
            assert_eq!(synchronous(&txn).await, 2);
            txn.commit().await.unwrap();
        }
        // The rest of the engine keeps NORMAL; the choice is measured in docs/benchmarks.md.
        assert_eq!(synchronous(&db.conn).await, 1);
        db.close().await;
    }

    async fn synchronous_commit(db: &impl ConnectionTrait) -> String {
        sql::query("SHOW synchronous_commit", [])
            .scalar(db)
            .await
            .unwrap()
            .unwrap()
    }

    #[tokio::test]
    async fn durable_transactions_on_postgres_commit_synchronously_even_when_the_server_does_not() {
        let Some(admin_url) = crate::config::test_database_url_from_env() else {
            eprintln!("PostgreSQL leg skipped: TRELLIS_TEST_DATABASE_URL is not set");
            return;
        };
        let mut url = url::Url::parse(&admin_url).unwrap();
        url.query_pairs_mut()
            .append_pair("options", "-c synchronous_commit=off");
        let mut config = Config::load(None).unwrap();
        config.database.url = secrecy::SecretString::from(url.to_string());
        let db = Db::connect(&config).await.unwrap();
        let plain = db.conn.begin().await.unwrap();
        assert_eq!(synchronous_commit(&plain).await, "off");
        plain.rollback().await.unwrap();
        let durable = db.begin_durable().await.unwrap();
        assert_eq!(synchronous_commit(&durable).await, "on");
        durable.commit().await.unwrap();
        db.close().await;
    }

    /// Whether the connection `db` runs on is inside a transaction that began over a
    /// millisecond ago: there `now()` is that transaction's start.
    async fn inside_an_old_transaction(db: &impl ConnectionTrait) -> bool {
        sql::query(
            "SELECT clock_timestamp() - now() > interval '1 millisecond'",
            [],
        )
        .scalar(db)
        .await
        .unwrap()
        .unwrap()
    }

    #[tokio::test]
    async fn a_begin_abandoned_halfway_leaves_no_transaction_open_on_postgres() {
        use std::future::Future;
        let Some(url) = crate::config::test_database_url_from_env() else {
            eprintln!("PostgreSQL leg skipped: TRELLIS_TEST_DATABASE_URL is not set");
            return;
        };
        let mut config = Config::load(None).unwrap();
        config.database.url = secrecy::SecretString::from(url);
        // One connection, so the check below runs on the one the abandoned BEGIN used.
        config.database.max_connections = 1;
        let db = Db::connect(&config).await.unwrap();
        // Dropped after its first, second… wait: one of them is the wait for BEGIN's answer.
        for polls in 1..=12 {
            for _ in 0..5 {
                let mut begun = Box::pin(begin_write(&db.conn));
                let mut seen = 0;
                let finished = std::future::poll_fn(|cx| match begun.as_mut().poll(cx) {
                    std::task::Poll::Ready(txn) => std::task::Poll::Ready(Some(txn)),
                    std::task::Poll::Pending => {
                        seen += 1;
                        if seen >= polls {
                            std::task::Poll::Ready(None)
                        } else {
                            std::task::Poll::Pending
                        }
                    }
                })
                .await;
                drop(begun);
                if let Some(txn) = finished {
                    txn.unwrap().rollback().await.unwrap();
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
                assert!(
                    !inside_an_old_transaction(&db.conn).await,
                    "a BEGIN dropped after {polls} polls left its transaction open"
                );
            }
        }
        db.close().await;
    }
}
