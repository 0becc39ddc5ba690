//! A SQLite write transaction driven by multi-statement batches on a connection held for it:
//! `BEGIN IMMEDIATE` rides with the first batch and `COMMIT` with the last, so a commit that
//! reads, decides and writes costs two hand-offs to SQLite's worker thread instead of one per
//! statement plus `BEGIN` and `COMMIT` (each hand-off is two thread wake-ups; see
//! `docs/benchmarks.md`, the plugin runtime), and one whose writes guard themselves costs one
//! ([`HeldWrite::at_once`]). The connections are kept between uses ([`Kept`]), detached from
//! sqlx's pool.
//!
//! Invariant: a connection is kept, or goes back to the pool, only outside a transaction. One
//! dropped inside a transaction (a failed `ROLLBACK`, a task torn down halfway) is closed
//! instead, and SQLite rolls back what a closed connection had not committed. A connection set
//! not to wait for the write lock never goes back to the pool.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use sea_orm::sqlx::pool::PoolConnection;
use sea_orm::sqlx::sqlite::SqliteConnection;
use sea_orm::sqlx::{self, Sqlite};
use sea_orm::{DatabaseConnection, DbErr, FromQueryResult, QueryResult, Value};
use sea_query_sqlx::SqlxValues;

use super::sql;

/// A connection kept between uses: the next use takes it without a pool checkout, and the end
/// of the last one costs no round trip (sqlx pings every connection that goes back to its
/// pool). It is detached from the pool, so it takes none of the pool's places and closing the
/// pool does not wait for it; it closes when the last clone of its `Kept` is dropped. While it
/// is out, another user takes one of the pool's as usual.
#[derive(Clone, Default)]
pub struct Kept(Arc<Mutex<Slot>>);

#[derive(Default)]
enum Slot {
    /// None yet, or the last one was lost: the next user's connection is detached to be kept.
    #[default]
    Empty,
    /// In use.
    Out,
    Idle(SqliteConnection),
}

impl Kept {
    fn slot(&self) -> MutexGuard<'_, Slot> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A connection in use: the kept one, or one of the pool's.
enum Conn {
    Own(SqliteConnection),
    Pooled(PoolConnection<Sqlite>),
}

/// A connection taken for one use, which goes back where it belongs when [`Lease::done`]
/// says the use ended cleanly, and is closed when dropped before.
struct Lease {
    conn: Option<Conn>,
    kept: Kept,
    /// Set not to wait for the write lock: never back into the pool.
    eager: bool,
}

impl Lease {
    /// Takes `kept`'s connection, or one of the pool's (detached to be kept when none is);
    /// `fresh` is true when the connection is new to this use's settings.
    async fn take(
        db: &DatabaseConnection,
        kept: &Kept,
        eager: bool,
    ) -> Result<(Self, bool), DbErr> {
        let taken = std::mem::replace(&mut *kept.slot(), Slot::Out);
        let (conn, fresh) = match taken {
            Slot::Idle(conn) => (Conn::Own(conn), false),
            empty_or_out => {
                let empty = matches!(empty_or_out, Slot::Empty);
                // Until this use has a connection, the slot it marked as out is its to free.
                let mut reserved = Reserved(empty.then_some(kept));
                let pooled = db
                    .get_sqlite_connection_pool()
                    .acquire()
                    .await
                    .map_err(|e| DbErr::Custom(format!("no SQLite connection: {e}")))?;
                reserved.0 = None;
                // An eager connection is never returned to the pool, so it is always detached.
                if empty || eager {
                    (Conn::Own(pooled.detach()), true)
                } else {
                    (Conn::Pooled(pooled), true)
                }
            }
        };
        let lease = Self {
            conn: Some(conn),
            kept: kept.clone(),
            eager,
        };
        Ok((lease, fresh))
    }

    fn raw(&mut self) -> Result<&mut SqliteConnection, DbErr> {
        match self.conn.as_mut() {
            Some(Conn::Own(conn)) => Ok(conn),
            Some(Conn::Pooled(conn)) => Ok(conn),
            None => Err(DbErr::Custom("the connection has been given back".into())),
        }
    }

    async fn run(&mut self, statements: Vec<(String, Vec<Value>)>) -> Result<Rows, DbErr> {
        let (text, values) = sql::joined(statements);
        let rows = sqlx::query_with(
            sqlx::AssertSqlSafe(text),
            SqlxValues(sea_orm::sea_query::Values(values)),
        )
        .fetch_all(self.raw()?)
        .await
        .map_err(|e| DbErr::Query(sea_orm::RuntimeErr::SqlxError(e.into())))?;
        Ok(rows.into_iter().map(QueryResult::from).collect())
    }

    /// The use ended outside any transaction: the connection goes back where it belongs.
    fn done(&mut self) {
        match self.conn.take() {
            Some(Conn::Own(conn)) => {
                let mut slot = self.kept.slot();
                match *slot {
                    // Ours was the one out (or the last one was lost meanwhile): keep it.
                    Slot::Out | Slot::Empty => *slot = Slot::Idle(conn),
                    // Another use kept one meanwhile; this one closes as it drops.
                    Slot::Idle(_) => {}
                }
            }
            // Back to the pool, unless it was set for this use alone.
            Some(Conn::Pooled(mut conn)) if self.eager => conn.close_on_drop(),
            Some(Conn::Pooled(_)) | None => {}
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        match self.conn.take() {
            Some(Conn::Own(_)) => {
                // Closed as it drops; the next use detaches another.
                let mut slot = self.kept.slot();
                if matches!(*slot, Slot::Out) {
                    *slot = Slot::Empty;
                }
            }
            Some(Conn::Pooled(mut conn)) => conn.close_on_drop(),
            None => {}
        }
    }
}

/// A slot marked as out by a use still waiting for a pool connection: freed again if that use
/// fails or is dropped before it has one.
struct Reserved<'a>(Option<&'a Kept>);

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        if let Some(kept) = self.0 {
            let mut slot = kept.slot();
            if matches!(*slot, Slot::Out) {
                *slot = Slot::Empty;
            }
        }
    }
}

/// A write transaction begun on a kept connection (or one of the pool's).
pub struct HeldWrite {
    lease: Lease,
}

/// Rows of a batch, in the order its statements returned them. Rows of different statements
/// have different columns: a batch's statements name themselves in a column of their own
/// (`'u' AS what`) for the reader to tell them apart.
pub type Rows = Vec<QueryResult>;

impl HeldWrite {
    /// Takes `kept`'s connection (or one of `db`'s pool, a SQLite one) and runs
    /// `BEGIN IMMEDIATE` and `statements` in one hand-off: the statements read under the write
    /// lock, which no other connection, here or in another process, can take until this
    /// transaction ends.
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
    /// It does not wait for the write lock: its connection (`eager`'s) runs with
    /// `busy_timeout = 0`, so it fails at once when another connection holds the lock. Once
    /// sent, a batch that ends in `COMMIT` may commit, so it cannot be given up at a deadline
    /// the way a wait for `BEGIN` can; the caller waits for the lock the other way, bounded by
    /// its deadline.
    pub async fn at_once(
        db: &DatabaseConnection,
        eager: &Kept,
        statements: Vec<(String, Vec<Value>)>,
    ) -> Result<Rows, DbErr> {
        let mut all = statements;
        all.push(("COMMIT".to_owned(), Vec::new()));
        let (mut held, rows) = Self::open(db, eager, true, all).await?;
        held.lease.done();
        Ok(rows)
    }

    async fn open(
        db: &DatabaseConnection,
        kept: &Kept,
        eager: bool,
        statements: Vec<(String, Vec<Value>)>,
    ) -> Result<(Self, Rows), DbErr> {
        let (lease, fresh) = Lease::take(db, kept, eager).await?;
        let mut held = Self { lease };
        let mut all = Vec::with_capacity(statements.len() + 2);
        let pragma = eager && fresh;
        if pragma {
            all.push(("PRAGMA busy_timeout = 0".to_owned(), Vec::new()));
        }
        all.push(("BEGIN IMMEDIATE".to_owned(), Vec::new()));
        all.extend(statements);
        match held.lease.run(all).await {
            Ok(mut rows) => {
                // The pragma answers with the setting, a row that is not the caller's.
                if pragma
                    && rows
                        .first()
                        .is_some_and(|r| r.try_get::<i64>("", "timeout").is_ok())
                {
                    rows.remove(0);
                }
                Ok((held, rows))
            }
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
        match self.lease.run(all).await {
            Ok(rows) => {
                self.lease.done();
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

    /// Ends whatever transaction the connection is in. `ROLLBACK` with none open fails
    /// harmlessly ("no transaction is active": `BEGIN` itself failed); any other failure leaves
    /// the connection's state unknown, so it is closed (as the lease drops).
    async fn abandon(&mut self) {
        let Ok(conn) = self.lease.raw() else {
            return;
        };
        match sqlx::query("ROLLBACK").execute(conn).await {
            Ok(_) => self.lease.done(),
            Err(error) if error.to_string().contains("no transaction is active") => {
                self.lease.done();
            }
            Err(error) => tracing::warn!(%error, "could not roll back; closing the connection"),
        }
    }
}

/// Runs one read (outside any transaction) on `kept`'s connection when it is free, else on one
/// of the pool's.
pub async fn read(
    db: &DatabaseConnection,
    kept: &Kept,
    statement: (String, Vec<Value>),
) -> Result<Rows, DbErr> {
    let (mut lease, _) = Lease::take(db, kept, false).await?;
    let rows = lease.run(vec![statement]).await?;
    lease.done();
    Ok(rows)
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

    /// A SQLite database in `dir` whose pool has a single connection.
    async fn one_connection_pool(dir: &std::path::Path) -> crate::db::Db {
        let mut config = crate::config::Config::load(None).unwrap();
        config.database.url =
            secrecy::SecretString::from(format!("sqlite://{}", dir.join("t.db").display()));
        config.database.max_connections = 1;
        crate::db::Db::connect(&config).await.unwrap()
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
        assert!(
            matches!(*kept.slot(), Slot::Idle(_)),
            "rolled back, the connection is kept"
        );
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
            matches!(*kept.slot(), Slot::Empty),
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
    async fn kept_connections_take_no_place_in_the_pool_and_do_not_hold_up_its_closing() {
        let dir = tempfile::tempdir().unwrap();
        let db = one_connection_pool(dir.path()).await;
        db.migrate().await.unwrap();
        let (kept, eager, reader) = (Kept::default(), Kept::default(), Kept::default());
        let (held, _) = HeldWrite::begin(&db.conn, &kept, vec![usage("a")])
            .await
            .unwrap();
        held.commit(Vec::new()).await.unwrap();
        HeldWrite::at_once(&db.conn, &eager, vec![usage("b")])
            .await
            .unwrap();
        read(&db.conn, &reader, ("SELECT 1".into(), Vec::new()))
            .await
            .unwrap();
        assert!(matches!(*kept.slot(), Slot::Idle(_)));
        assert!(matches!(*eager.slot(), Slot::Idle(_)));
        // The pool's one place is free for everyone else.
        assert_eq!(scopes(&db.conn).await, 2);
        tokio::time::timeout(std::time::Duration::from_secs(5), db.close())
            .await
            .expect("closing the pool waits for no kept connection");
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

    #[tokio::test]
    async fn a_use_dropped_while_waiting_for_a_pool_connection_frees_the_slot() {
        let dir = tempfile::tempdir().unwrap();
        let db = one_connection_pool(dir.path()).await;
        let only = db
            .conn
            .get_sqlite_connection_pool()
            .acquire()
            .await
            .unwrap();
        let kept = Kept::default();
        let gave_up = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            read(&db.conn, &kept, ("SELECT 1".into(), Vec::new())),
        )
        .await;
        assert!(gave_up.is_err(), "the pool's one connection is taken");
        assert!(matches!(*kept.slot(), Slot::Empty));
        drop(only);
        read(&db.conn, &kept, ("SELECT 1".into(), Vec::new()))
            .await
            .unwrap();
        assert!(matches!(*kept.slot(), Slot::Idle(_)), "kept after all");
    }
}
