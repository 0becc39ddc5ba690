//! A SQLite write transaction driven by multi-statement batches on a connection held for it:
//! `BEGIN IMMEDIATE` rides with the first batch and `COMMIT` with the last, so a commit that
//! reads, decides and writes costs two hand-offs to SQLite's worker thread instead of one per
//! statement plus `BEGIN` and `COMMIT` (each hand-off is two thread wake-ups; see
//! `docs/benchmarks.md`, the plugin runtime), and one whose writes guard themselves costs one
//! ([`HeldWrite::at_once`]).
//!
//! Invariant: the connection goes back to the pool only outside a transaction. One dropped
//! inside a transaction (a failed `ROLLBACK`, a task torn down halfway) is closed instead, and
//! SQLite rolls back what a closed connection had not committed.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use sea_orm::sqlx::pool::PoolConnection;
use sea_orm::sqlx::{self, Sqlite};
use sea_orm::{DatabaseConnection, DbErr, FromQueryResult, QueryResult, Value};
use sea_query_sqlx::SqlxValues;

use super::sql;

/// A write transaction begun on one of a SQLite pool's connections.
pub struct HeldWrite {
    conn: Option<PoolConnection<Sqlite>>,
    /// Where the connection goes after; `None`: back to the pool.
    kept: Option<Kept>,
    /// Its connection runs without a busy timeout: closed rather than returned to the pool.
    eager: bool,
}

/// The smallest pool a connection is kept out of: a kept connection is checked out for good,
/// and a writer's and a reader's kept ones must leave the rest of the engine some.
const KEEP_FROM: u32 = 4;

/// Whether `db`'s pool is large enough to keep connections out of it.
pub fn keeps(db: &DatabaseConnection) -> bool {
    db.get_sqlite_connection_pool()
        .options()
        .get_max_connections()
        >= KEEP_FROM
}

/// A connection kept between write transactions: the next one takes it without a pool
/// checkout, and the end of the last one costs no round trip (sqlx pings every connection that
/// goes back to its pool). At most one; a second writer meanwhile uses the pool.
#[derive(Clone, Default)]
pub struct Kept(Arc<Mutex<Option<PoolConnection<Sqlite>>>>);

impl Kept {
    fn slot(&self) -> MutexGuard<'_, Option<PoolConnection<Sqlite>>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps `conn` if nothing is kept yet; otherwise gives it back.
    fn put(&self, conn: PoolConnection<Sqlite>) -> Option<PoolConnection<Sqlite>> {
        let mut slot = self.slot();
        match *slot {
            None => {
                *slot = Some(conn);
                None
            }
            Some(_) => Some(conn),
        }
    }
}

/// Rows of a batch, in the order its statements returned them. Rows of different statements
/// have different columns: a batch's statements name themselves in a column of their own
/// (`'u' AS what`) for the reader to tell them apart.
pub type Rows = Vec<QueryResult>;

impl HeldWrite {
    /// Takes a connection of `db`'s pool (a SQLite one) and runs `BEGIN IMMEDIATE` and
    /// `statements` in one hand-off: the statements read under the write lock, which no other
    /// connection, here or in another process, can take until this transaction ends.
    /// The connection is `kept`'s when it has one, and goes back there after.
    pub async fn begin(
        db: &DatabaseConnection,
        kept: &Kept,
        statements: Vec<(String, Vec<Value>)>,
    ) -> Result<(Self, Rows), DbErr> {
        Self::open(db, kept, false, statements).await
    }

    /// Runs `BEGIN IMMEDIATE`, `statements` and `COMMIT` in one hand-off: for writes guarded
    /// by statements that fail the batch when what they were planned on has changed. Rolls back
    /// when a statement fails.
    ///
    /// It does not wait for the write lock: its connection runs with `busy_timeout = 0`, so it
    /// fails at once when another connection holds the lock. Once sent, a batch that ends in
    /// `COMMIT` may commit, so it cannot be given up at a deadline the way a wait for `BEGIN`
    /// can; the caller waits for the lock the other way, bounded by its deadline. The connection
    /// (`eager`'s) never goes back to the pool with that setting: unkept, it is closed.
    pub async fn at_once(
        db: &DatabaseConnection,
        eager: &Kept,
        statements: Vec<(String, Vec<Value>)>,
    ) -> Result<Rows, DbErr> {
        let mut all = statements;
        all.push(("COMMIT".to_owned(), Vec::new()));
        let (mut held, rows) = Self::open(db, eager, true, all).await?;
        held.release();
        Ok(rows)
    }

    async fn open(
        db: &DatabaseConnection,
        kept: &Kept,
        eager: bool,
        statements: Vec<(String, Vec<Value>)>,
    ) -> Result<(Self, Rows), DbErr> {
        let taken = kept.slot().take();
        let mut all = Vec::with_capacity(statements.len() + 2);
        let conn = match taken {
            Some(conn) => conn,
            None => {
                if eager {
                    all.push(("PRAGMA busy_timeout = 0".to_owned(), Vec::new()));
                }
                db.get_sqlite_connection_pool()
                    .acquire()
                    .await
                    .map_err(|e| DbErr::Custom(format!("no SQLite connection: {e}")))?
            }
        };
        let mut held = Self {
            conn: Some(conn),
            kept: keeps(db).then(|| kept.clone()),
            eager,
        };
        all.push(("BEGIN IMMEDIATE".to_owned(), Vec::new()));
        all.extend(statements);
        match held.run(all).await {
            Ok(rows) => Ok((held, rows)),
            Err(error) => {
                held.abandon().await;
                Err(error)
            }
        }
    }

    /// Runs `statements` and `COMMIT` in one hand-off; rolls back when a statement fails.
    pub async fn commit(mut self, statements: Vec<(String, Vec<Value>)>) -> Result<Rows, DbErr> {
        let mut all = statements;
        all.push(("COMMIT".to_owned(), Vec::new()));
        match self.run(all).await {
            Ok(rows) => {
                self.release();
                Ok(rows)
            }
            Err(error) => {
                self.abandon().await;
                Err(error)
            }
        }
    }

    /// Rolls the transaction back.
    pub async fn rollback(mut self) {
        self.abandon().await;
    }

    async fn run(&mut self, statements: Vec<(String, Vec<Value>)>) -> Result<Rows, DbErr> {
        let Some(conn) = self.conn.as_mut() else {
            return Err(DbErr::Custom("the transaction has ended".into()));
        };
        let (text, values) = sql::joined(statements);
        let rows = sqlx::query_with(
            sqlx::AssertSqlSafe(text),
            SqlxValues(sea_orm::sea_query::Values(values)),
        )
        .fetch_all(&mut **conn)
        .await
        .map_err(|e| DbErr::Query(sea_orm::RuntimeErr::SqlxError(e.into())))?;
        Ok(rows.into_iter().map(QueryResult::from).collect())
    }

    /// Ends whatever transaction the connection is in. `ROLLBACK` with none open fails
    /// harmlessly ("no transaction is active": `BEGIN` itself failed); any other failure leaves
    /// the connection's state unknown, so it is closed.
    async fn abandon(&mut self) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        match sqlx::query("ROLLBACK").execute(&mut **conn).await {
            Ok(_) => self.release(),
            Err(error) if error.to_string().contains("no transaction is active") => self.release(),
            Err(error) => tracing::warn!(%error, "could not roll back; closing the connection"),
        }
    }

    /// The transaction has ended: the connection goes back to `kept`, or to the pool.
    fn release(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        let unkept = match &self.kept {
            Some(kept) => kept.put(conn),
            None => Some(conn),
        };
        if let Some(mut conn) = unkept
            && self.eager
        {
            conn.close_on_drop();
        }
    }
}

impl Drop for HeldWrite {
    fn drop(&mut self) {
        if let Some(mut conn) = self.conn.take() {
            conn.close_on_drop();
        }
    }
}

/// Runs one read (outside any transaction) on `kept`'s connection when it has one, else on one
/// of the pool's, and keeps the connection after (when the pool is large enough to spare it).
pub async fn read(
    db: &DatabaseConnection,
    kept: &Kept,
    statement: (String, Vec<Value>),
) -> Result<Rows, DbErr> {
    let taken = kept.slot().take();
    let mut conn = match taken {
        Some(conn) => conn,
        None => db
            .get_sqlite_connection_pool()
            .acquire()
            .await
            .map_err(|e| DbErr::Custom(format!("no SQLite connection: {e}")))?,
    };
    let (text, values) = statement;
    let rows = sqlx::query_with(
        sqlx::AssertSqlSafe(text),
        SqlxValues(sea_orm::sea_query::Values(values)),
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| DbErr::Query(sea_orm::RuntimeErr::SqlxError(e.into())))?;
    if keeps(db) {
        // Another read kept one meanwhile: this one goes back to the pool.
        drop(kept.put(conn));
    }
    Ok(rows.into_iter().map(QueryResult::from).collect())
}

/// Reads one row of a batch as `T`.
pub fn row<T: FromQueryResult>(row: &QueryResult) -> Result<T, DbErr> {
    T::from_query_result(row, "")
}

/// Which statement of a batch a row came from: its `what` column.
pub fn what(row: &QueryResult) -> Result<String, DbErr> {
    row.try_get("", "what")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::sql;

    fn usage(scope: &str) -> (String, Vec<Value>) {
        (
            "INSERT INTO plugin_kv_usage (installation_id, scope_id, keys, bytes, last_version) \
             VALUES ('i', ?, 1, 1, 1)"
                .to_owned(),
            vec![scope.into()],
        )
    }

    async fn scopes(db: &DatabaseConnection) -> u64 {
        sql::query("SELECT COUNT(*) FROM plugin_kv_usage", [])
            .count(db)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_batch_that_fails_halfway_keeps_nothing_and_the_connection_serves_again() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::db::test_sqlite(dir.path()).await.conn;
        let kept = Kept::default();
        let (held, _) = HeldWrite::begin(&db, &kept, vec![usage("a")])
            .await
            .unwrap();
        let failed = held
            .commit(vec![
                usage("b"),
                ("INSERT INTO nowhere VALUES (1)".into(), Vec::new()),
            ])
            .await;
        assert!(failed.is_err());
        assert_eq!(scopes(&db).await, 0);
        assert!(kept.slot().is_some(), "rolled back, the connection is kept");
        let (held, _) = HeldWrite::begin(&db, &kept, vec![usage("c")])
            .await
            .unwrap();
        held.commit(Vec::new()).await.unwrap();
        assert_eq!(scopes(&db).await, 1);
    }

    #[tokio::test]
    async fn a_transaction_dropped_halfway_is_rolled_back_and_frees_the_write_lock() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::db::test_sqlite(dir.path()).await.conn;
        let kept = Kept::default();
        let (held, rows) = HeldWrite::begin(
            &db,
            &kept,
            vec![
                usage("a"),
                (
                    "SELECT 'u' AS what, scope_id FROM plugin_kv_usage".into(),
                    Vec::new(),
                ),
            ],
        )
        .await
        .unwrap();
        assert_eq!(what(&rows[0]).unwrap(), "u", "it reads its own write");
        drop(held);
        assert!(
            kept.slot().is_none(),
            "a connection inside a transaction is not kept"
        );
        // Another writer takes the lock well within the busy timeout, and finds nothing.
        let (held, _) = HeldWrite::begin(&db, &kept, vec![usage("b")])
            .await
            .unwrap();
        held.commit(Vec::new()).await.unwrap();
        assert_eq!(scopes(&db).await, 1);
    }

    #[tokio::test]
    async fn a_pool_too_small_to_spare_a_connection_keeps_none() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = crate::config::Config::load(None).unwrap();
        config.database.url =
            secrecy::SecretString::from(format!("sqlite://{}", dir.path().join("t.db").display()));
        config.database.max_connections = 2;
        let db = crate::db::Db::connect(&config).await.unwrap();
        db.migrate().await.unwrap();
        let kept = Kept::default();
        let (held, _) = HeldWrite::begin(&db.conn, &kept, vec![usage("a")])
            .await
            .unwrap();
        held.commit(Vec::new()).await.unwrap();
        read(&db.conn, &kept, ("SELECT 1".into(), Vec::new()))
            .await
            .unwrap();
        assert!(kept.slot().is_none());
        assert_eq!(scopes(&db.conn).await, 1);
    }

    #[tokio::test]
    async fn a_commit_at_once_does_not_wait_for_another_writers_lock() {
        use sea_orm::{ConnectionTrait, TransactionTrait};
        let dir = tempfile::tempdir().unwrap();
        let db = crate::db::test_sqlite(dir.path()).await.conn;
        let eager = Kept::default();
        let blocker = db.begin().await.unwrap();
        blocker
            .execute_unprepared(
                "INSERT INTO plugin_kv_usage (installation_id, scope_id, keys, bytes, last_version) \
                 VALUES ('i', 'blocker', 0, 0, 0)",
            )
            .await
            .unwrap();
        let started = std::time::Instant::now();
        let refused = HeldWrite::at_once(&db, &eager, vec![usage("a")]).await;
        assert!(refused.is_err());
        assert!(
            started.elapsed() < std::time::Duration::from_secs(1),
            "it waited {:?}, as for the busy timeout",
            started.elapsed()
        );
        blocker.rollback().await.unwrap();
        HeldWrite::at_once(&db, &eager, vec![usage("b")])
            .await
            .unwrap();
        assert_eq!(scopes(&db).await, 1);
        // The ordinary connection still waits for the lock (up to the busy timeout).
        let kept = Kept::default();
        let blocker = db.begin().await.unwrap();
        blocker
            .execute_unprepared(
                "INSERT INTO plugin_kv_usage (installation_id, scope_id, keys, bytes, last_version) \
                 VALUES ('i', 'blocker', 0, 0, 0)",
            )
            .await
            .unwrap();
        let waiting = tokio::spawn({
            let (db, kept) = (db.clone(), kept.clone());
            async move {
                let (held, _) = HeldWrite::begin(&db, &kept, vec![usage("c")]).await?;
                held.commit(Vec::new()).await
            }
        });
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        blocker.rollback().await.unwrap();
        waiting.await.unwrap().unwrap();
        assert_eq!(scopes(&db).await, 2);
    }
}
