//! The one door for raw SQL: statements written once with `?` placeholders, run on whichever
//! engine the connection is, and read into row structs that derive [`FromQueryResult`].
//!
//! The rule going forward:
//! - New raw SQL goes through this module — `sql::query(text, values)` then `.execute(db)`,
//!   `.one(db)`, `.all(db)` or `.scalar(db)` ([`Query`]); nothing else builds a `Statement` from
//!   SQL text or picks a placeholder style, and a row is a `#[derive(FromQueryResult)]` struct
//!   beside its query, never a chain of `try_get` calls. Whatever differs between the engines in
//!   a statement ([`for_update`], [`advisory_lock`]) is decided here too.
//! - New tables store instants as Unix milliseconds in `BIGINT` columns (the migrations'
//!   `columns` helper declares them), bound and read as [`Millis`]. Integers compare the same way
//!   in SQL on SQLite and PostgreSQL, which the outbox's claims rely on; the older sea-orm
//!   entities' `TIMESTAMPTZ` columns stay as they are.
//!
//! Statements without values or rows (session settings, the readiness probe) may still use
//! `execute_unprepared`: there is nothing to bind and nothing to read.

use chrono::{DateTime, Utc};
use sea_orm::sqlx;
use sea_orm::{ConnectionTrait, DbBackend, DbErr, FromQueryResult, Statement, TryGetable, Value};

/// An instant in a Unix-milliseconds `BIGINT` column: bind it as a value, or name it as the
/// type of a row struct's field. sea-orm's own type, so an entity can use it as well.
pub use sea_orm::prelude::ChronoUnixTimestampMillis as Millis;

/// The engine behind a connection or transaction.
pub fn backend(db: &impl ConnectionTrait) -> DbBackend {
    db.get_database_backend()
}

/// A statement from SQL written with `?` placeholders, in the backend's form: what [`query`]
/// runs.
fn statement(backend: DbBackend, sql: &str, values: impl IntoIterator<Item = Value>) -> Statement {
    Statement::from_sql_and_values(backend, placeholders(backend, sql), values)
}

/// A statement written with `?` placeholders, with its values: `query(text, values)`, then
/// run on a connection or transaction with [`Query::execute`], [`Query::one`], [`Query::all`] or
/// [`Query::scalar`].
pub fn query(sql: &str, values: impl IntoIterator<Item = Value>) -> Query<'_> {
    Query {
        sql,
        values: values.into_iter().collect(),
    }
}

/// A statement and its values, not yet bound to an engine's placeholder style.
#[derive(Debug, Clone)]
#[must_use = "a query does nothing until it runs"]
pub struct Query<'a> {
    sql: &'a str,
    values: Vec<Value>,
}

impl Query<'_> {
    fn on(self, db: &impl ConnectionTrait) -> Statement {
        statement(backend(db), self.sql, self.values)
    }

    /// Runs a statement that returns no rows; returns how many rows it changed, which a
    /// conditional update reads as "did the condition hold".
    pub async fn execute(self, db: &impl ConnectionTrait) -> Result<u64, DbErr> {
        Ok(db.execute_raw(self.on(db)).await?.rows_affected())
    }

    /// The first row, if any.
    pub async fn one<T: FromQueryResult>(
        self,
        db: &impl ConnectionTrait,
    ) -> Result<Option<T>, DbErr> {
        T::find_by_statement(self.on(db)).one(db).await
    }

    /// Every row.
    pub async fn all<T: FromQueryResult>(self, db: &impl ConnectionTrait) -> Result<Vec<T>, DbErr> {
        T::find_by_statement(self.on(db)).all(db).await
    }

    /// What a `SELECT COUNT(*) …` counted; 0 when it returns no row.
    pub async fn count(self, db: &impl ConnectionTrait) -> Result<u64, DbErr> {
        let n: Option<i64> = self.scalar(db).await?;
        Ok(n.map_or(0, |n| u64::try_from(n).unwrap_or(0)))
    }

    /// The first column of the first row (a count, one setting), if there is a row.
    pub async fn scalar<T: TryGetable>(
        self,
        db: &impl ConnectionTrait,
    ) -> Result<Option<T>, DbErr> {
        let row = db.query_one_raw(self.on(db)).await?;
        Ok(row.map(|row| T::try_get_by_index(&row, 0)).transpose()?)
    }
}

/// Runs `statements` (SQL with `?` placeholders, and its values) on `db` as one round trip
/// where it can; returns the rows they return. The statements must not depend on each other's
/// effects, and those that return rows (with `RETURNING`, all of one shape) must be writes.
///
/// On SQLite they go in order as one multi-statement string: one hand-off to the connection's
/// worker thread instead of one each (sqlx binds the values statement by statement, in order).
/// On PostgreSQL, whose extended protocol takes one statement per round trip, they become one
/// statement of data-modifying `WITH` queries, which share a snapshot and run to completion
/// whether read or not, and whose `RETURNING` rows are the statement's.
pub async fn batch<T: FromQueryResult>(
    db: &impl ConnectionTrait,
    statements: Vec<(String, Vec<Value>)>,
) -> Result<Vec<T>, DbErr> {
    if statements.is_empty() {
        return Ok(Vec::new());
    }
    if backend(db) == DbBackend::Sqlite {
        let (sql, values) = joined(statements);
        return query(&sql, values).all(db).await;
    }
    let mut rows = Vec::new();
    for (sql, values) in as_one(statements) {
        rows.extend(query(&sql, values).all::<T>(db).await?);
    }
    Ok(rows)
}

/// Most values bound to one PostgreSQL statement built by [`as_one`], well under the
/// protocol's 65,535.
const MAX_VALUES_AS_ONE: usize = 30_000;

/// Writes as few PostgreSQL statements as the bound values allow: each a `WITH` of
/// data-modifying queries whose main query returns the rows of those with `RETURNING`.
fn as_one(statements: Vec<(String, Vec<Value>)>) -> Vec<(String, Vec<Value>)> {
    let mut packs: Vec<Vec<(String, Vec<Value>)>> = Vec::new();
    let mut count = 0;
    for statement in statements {
        let n = statement.1.len();
        match packs.last_mut() {
            Some(pack) if count + n <= MAX_VALUES_AS_ONE => {
                count += n;
                pack.push(statement);
            }
            _ => {
                count = n;
                packs.push(vec![statement]);
            }
        }
    }
    packs
        .into_iter()
        .map(|mut pack| {
            if pack.len() == 1 {
                return pack.remove(0);
            }
            let mut parts = Vec::with_capacity(pack.len());
            let mut returning = Vec::new();
            let mut values = Vec::new();
            for (i, (sql, v)) in pack.into_iter().enumerate() {
                // Rows are taken from the statements written `… RETURNING …`; one written
                // otherwise would return none and fail its caller's count.
                debug_assert!(
                    !sql.to_ascii_uppercase().contains("RETURNING") || sql.contains(" RETURNING "),
                    "a batched statement returns rows but not as ` RETURNING `: {sql}"
                );
                if sql.contains(" RETURNING ") {
                    returning.push(format!("SELECT * FROM w{i}"));
                }
                parts.push(format!("w{i} AS ({sql})"));
                values.extend(v);
            }
            let main = if returning.is_empty() {
                "SELECT 1 WHERE FALSE".to_owned()
            } else {
                returning.join(" UNION ALL ")
            };
            (format!("WITH {} {main}", parts.join(", ")), values)
        })
        .collect()
}

/// PostgreSQL: `statements` as one statement that makes all of their writes or none, run on
/// its own (its own transaction): it fails — a division by zero, which the caller takes as
/// "not as expected" — unless, for each `(statements, rows)` of `expected`, those statements
/// (indices into `statements`) returned that many rows in all. The statements named in
/// `expected` are read (so run) first, in the order named, and the others run after them.
/// `None` when the values are too many for one statement.
pub fn all_or_none(
    statements: Vec<(String, Vec<Value>)>,
    expected: &[(std::ops::Range<usize>, usize)],
) -> Option<(String, Vec<Value>)> {
    if statements.iter().map(|s| s.1.len()).sum::<usize>() > MAX_VALUES_AS_ONE {
        return None;
    }
    let mut parts = Vec::with_capacity(statements.len());
    let mut values = Vec::new();
    for (i, (sql, v)) in statements.into_iter().enumerate() {
        parts.push(format!("w{i} AS ({sql})"));
        values.extend(v);
    }
    // Data-modifying queries that the main query reads run as it reads them; the others run
    // once it has ended — not at all when it fails.
    let checks: Vec<String> = expected
        .iter()
        .map(|(range, rows)| {
            let counts: Vec<String> = range
                .clone()
                .map(|i| format!("(SELECT COUNT(*) FROM w{i})"))
                .collect();
            if counts.is_empty() {
                format!("0 = {rows}")
            } else {
                format!("{} = {rows}", counts.join(" + "))
            }
        })
        .collect();
    let main = if checks.is_empty() {
        "SELECT 1 AS ok".to_owned()
    } else {
        format!(
            "SELECT 1 / (CASE WHEN {} THEN 1 ELSE 0 END) AS ok",
            checks.join(" AND ")
        )
    };
    Some((format!("WITH {} {main}", parts.join(", ")), values))
}

/// PostgreSQL: runs `statement` on its own (its own transaction) on a connection of `db`'s
/// pool, waiting for one until `deadline` at most: `None` when none came by then, and nothing
/// ran. Once sent, the statement runs to its end.
pub async fn alone_within(
    db: &sea_orm::DatabaseConnection,
    (sql, values): (String, Vec<Value>),
    deadline: Option<std::time::Instant>,
) -> Option<Result<(), DbErr>> {
    let acquire = db.get_postgres_connection_pool().acquire();
    let acquired = match deadline {
        Some(at) => tokio::time::timeout_at(at.into(), acquire).await.ok()?,
        None => acquire.await,
    };
    let mut conn = match acquired {
        Ok(conn) => conn,
        Err(e) => return Some(Err(DbErr::Conn(sea_orm::RuntimeErr::SqlxError(e.into())))),
    };
    let ran = sqlx::query_with(
        sqlx::AssertSqlSafe(placeholders(DbBackend::Postgres, &sql)),
        sea_query_sqlx::SqlxValues(sea_orm::sea_query::Values(values)),
    )
    .execute(&mut *conn)
    .await;
    Some(
        ran.map(|_| ())
            .map_err(|e| DbErr::Exec(sea_orm::RuntimeErr::SqlxError(e.into()))),
    )
}

/// Whether a statement that failed with `error` surely wrote nothing: no connection was had,
/// or the server answered with an error (a statement of its own is then rolled back). Any
/// other failure — the connection lost on the way — leaves unknown whether it committed.
pub fn nothing_written(error: &DbErr) -> bool {
    match error {
        DbErr::Conn(_) => true,
        DbErr::Exec(sea_orm::RuntimeErr::SqlxError(e))
        | DbErr::Query(sea_orm::RuntimeErr::SqlxError(e)) => {
            matches!(**e, sqlx::Error::Database(_))
        }
        _ => false,
    }
}

/// Statements as one multi-statement text for SQLite, with their values in order.
pub fn joined(statements: Vec<(String, Vec<Value>)>) -> (String, Vec<Value>) {
    // sqlx-sqlite binds each statement's values from where the previous one stopped and does
    // not compare counts: one value too many or too few would shift every later statement's.
    debug_assert!(
        statements
            .iter()
            .all(
                |(sql, values)| placeholders(DbBackend::Postgres, sql).matches('$').count()
                    == values.len()
            ),
        "a batched statement's values do not match its placeholders"
    );
    let sql: Vec<&str> = statements.iter().map(|(sql, _)| sql.as_str()).collect();
    let sql = sql.join(";\n");
    let values = statements
        .into_iter()
        .flat_map(|(_, values)| values)
        .collect();
    (sql, values)
}

/// `n` placeholders separated by commas, for an `IN (…)` list of `n` values.
pub fn marks(n: usize) -> String {
    vec!["?"; n].join(", ")
}

/// What a `SELECT … FOR UPDATE` does with rows another transaction holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowLock {
    /// Waits for them.
    Wait,
    /// Passes over them, so concurrent claimers take different rows.
    SkipLocked,
    /// Waits for them, and holds off writers without holding off other readers.
    Share,
}

/// The clause, with its leading space, that locks the rows a `SELECT` reads until its
/// transaction ends. PostgreSQL: `FOR UPDATE`; SQLite has no row locks and needs none, since its
/// writers take turns on the whole database (see [`super::begin_write`]).
pub fn for_update(db: &impl ConnectionTrait, lock: RowLock) -> &'static str {
    match (backend(db), lock) {
        (DbBackend::Postgres, RowLock::Wait) => " FOR UPDATE",
        (DbBackend::Postgres, RowLock::SkipLocked) => " FOR UPDATE SKIP LOCKED",
        (DbBackend::Postgres, RowLock::Share) => " FOR SHARE",
        _ => "",
    }
}

/// Serialises the transaction `txn` with every other one that locks the same (`space`, `key`),
/// until it ends. PostgreSQL: a transaction-scoped advisory lock on the key's hash; SQLite: nothing
/// more, as a write transaction from [`super::begin_write`] already holds the database's only
/// write lock — so on SQLite call it in one of those.
pub async fn advisory_lock(txn: &impl ConnectionTrait, space: i32, key: &str) -> Result<(), DbErr> {
    if backend(txn) == DbBackend::Postgres {
        query(
            "SELECT pg_advisory_xact_lock(?, hashtext(?))",
            [space.into(), key.into()],
        )
        .execute(txn)
        .await?;
    }
    Ok(())
}

/// Unix milliseconds of an instant, for arithmetic on millisecond columns in code.
pub fn millis(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis()
}

/// The instant of a count of Unix milliseconds; the epoch for one outside chrono's range.
pub fn from_millis(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// SQL written with `?` placeholders, as the backend wants them: `$1`, `$2`… on PostgreSQL.
/// A `?` inside a quoted literal or identifier is text, not a placeholder.
pub fn placeholders(backend: DbBackend, sql: &str) -> String {
    if backend != DbBackend::Postgres {
        return sql.to_owned();
    }
    let mut out = String::with_capacity(sql.len() + 8);
    let mut n = 0;
    let mut quote = None;
    for c in sql.chars() {
        match (quote, c) {
            (None, '?') => {
                n += 1;
                out.push('$');
                out.push_str(&n.to_string());
                continue;
            }
            (None, '\'' | '"') => quote = Some(c),
            // A doubled quote inside a literal closes and reopens it: still inside.
            (Some(q), c) if c == q => quote = None,
            _ => {}
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use sea_orm::{Database, DatabaseTransaction, TransactionTrait};

    use super::*;

    #[test]
    fn postgres_placeholders_are_numbered() {
        assert_eq!(
            placeholders(DbBackend::Postgres, "a = ? AND b = ?"),
            "a = $1 AND b = $2"
        );
        assert_eq!(placeholders(DbBackend::Sqlite, "a = ?"), "a = ?");
    }

    #[test]
    fn a_question_mark_inside_quotes_is_not_a_placeholder() {
        assert_eq!(
            placeholders(
                DbBackend::Postgres,
                "a = '?' AND \"b?\" = ? AND c = 'it''s ?' AND d = ?"
            ),
            "a = '?' AND \"b?\" = $1 AND c = 'it''s ?' AND d = $2"
        );
    }

    #[test]
    fn marks_list_one_placeholder_per_value() {
        assert_eq!(marks(3), "?, ?, ?");
        assert_eq!(marks(1), "?");
    }

    #[test]
    fn millis_out_of_range_read_as_the_epoch() {
        let at = from_millis(1_700_000_000_123);
        assert_eq!(millis(at), 1_700_000_000_123);
        assert_eq!(from_millis(i64::MAX), DateTime::<Utc>::default());
    }

    #[derive(Debug, PartialEq, FromQueryResult)]
    struct Row {
        name: String,
        at: Millis,
        until: Option<Millis>,
    }

    /// Runs the same statements on `txn`'s engine: writes, rows, scalars and the locking clauses.
    async fn round_trip(txn: &DatabaseTransaction) -> Result<(), DbErr> {
        let at = from_millis(1_764_000_000_123);
        query(
            "CREATE TEMPORARY TABLE sql_door (name TEXT NOT NULL, at BIGINT NOT NULL, until BIGINT)",
            [],
        )
        .execute(txn)
        .await?;
        let inserted = query(
            "INSERT INTO sql_door (name, at, until) VALUES (?, ?, ?), (?, ?, ?)",
            [
                "a".into(),
                Millis(at).into(),
                Some(Millis(at)).into(),
                "b?".into(),
                Millis(at).into(),
                None::<Millis>.into(),
            ],
        )
        .execute(txn)
        .await?;
        assert_eq!(inserted, 2);
        let rows: Vec<Row> = query("SELECT name, at, until FROM sql_door ORDER BY name", [])
            .all(txn)
            .await?;
        assert_eq!(
            rows,
            [
                Row {
                    name: "a".into(),
                    at: Millis(at),
                    until: Some(Millis(at)),
                },
                Row {
                    name: "b?".into(),
                    at: Millis(at),
                    until: None,
                },
            ]
        );
        let lock = for_update(txn, RowLock::SkipLocked);
        let row: Option<Row> = query(
            &format!("SELECT name, at, until FROM sql_door WHERE name = ? AND at = ?{lock}"),
            ["b?".into(), Millis(at).into()],
        )
        .one(txn)
        .await?;
        assert_eq!(row.map(|r| r.name).as_deref(), Some("b?"));
        let count = query(
            &format!(
                "SELECT COUNT(*) AS n FROM sql_door WHERE name IN ({}) AND at <= ?",
                marks(2)
            ),
            ["a".into(), "b?".into(), Millis(at).into()],
        )
        .count(txn)
        .await?;
        assert_eq!(count, 2);
        let missing = query("SELECT at FROM sql_door WHERE name = 'c'", []);
        assert_eq!(missing.scalar::<i64>(txn).await?, None);
        batched(txn).await?;
        advisory_lock(txn, 1, "sql door").await
    }

    #[derive(Debug, PartialEq, FromQueryResult)]
    struct Named {
        name: String,
    }

    /// A batch's writes all land, and the rows of every statement with `RETURNING` come back.
    async fn batched(txn: &DatabaseTransaction) -> Result<(), DbErr> {
        let statements = vec![
            (
                "INSERT INTO sql_door (name, at) VALUES (?, ?)".to_owned(),
                vec!["c".into(), 3.into()],
            ),
            (
                "UPDATE sql_door SET at = ? WHERE name = ? RETURNING name".to_owned(),
                vec![7.into(), "a".into()],
            ),
            (
                "INSERT INTO sql_door (name, at) VALUES (?, ?) RETURNING name".to_owned(),
                vec!["d".into(), 4.into()],
            ),
            (
                "DELETE FROM sql_door WHERE name = ?".to_owned(),
                vec!["b?".into()],
            ),
        ];
        let mut returned: Vec<Named> = batch(txn, statements).await?;
        returned.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(
            returned,
            [Named { name: "a".into() }, Named { name: "d".into() }]
        );
        let rows: Vec<(String, i64)> =
            query("SELECT name, at, until FROM sql_door ORDER BY name", [])
                .all::<Row>(txn)
                .await?
                .into_iter()
                .map(|r| (r.name, millis(r.at.0)))
                .collect();
        assert_eq!(rows, [("a".into(), 7), ("c".into(), 3), ("d".into(), 4)]);
        Ok(())
    }

    #[test]
    fn a_postgres_batch_is_as_few_statements_as_its_values_allow() {
        let statement = |n: usize| {
            (
                format!("INSERT INTO t (v) VALUES {}", vec!["(?)"; n].join(", ")),
                vec![Value::from(1); n],
            )
        };
        let one = as_one(vec![statement(2), statement(3)]);
        assert_eq!(one.len(), 1);
        assert_eq!(
            placeholders(DbBackend::Postgres, &one[0].0),
            "WITH w0 AS (INSERT INTO t (v) VALUES ($1), ($2)), \
             w1 AS (INSERT INTO t (v) VALUES ($3), ($4), ($5)) SELECT 1 WHERE FALSE"
        );
        assert_eq!(one[0].1.len(), 5);
        let split = as_one(vec![
            statement(MAX_VALUES_AS_ONE - 1),
            statement(2),
            statement(3),
        ]);
        let sizes: Vec<usize> = split.iter().map(|(_, v)| v.len()).collect();
        assert_eq!(sizes, [MAX_VALUES_AS_ONE - 1, 5]);
        assert!(split[0].0.starts_with("INSERT"));
    }

    #[tokio::test]
    async fn rows_and_millis_round_trip_on_sqlite() {
        let db = Database::connect("sqlite::memory:").await.unwrap();
        // One transaction keeps every statement on one connection of the in-memory pool.
        let txn = db.begin().await.unwrap();
        assert_eq!(for_update(&txn, RowLock::Wait), "");
        round_trip(&txn).await.unwrap();
        txn.rollback().await.unwrap();
    }

    #[tokio::test]
    async fn rows_and_millis_round_trip_on_postgres() {
        let Some(url) = crate::config::test_database_url_from_env() else {
            eprintln!("PostgreSQL leg skipped: TRELLIS_TEST_DATABASE_URL is not set");
            return;
        };
        let db = Database::connect(url).await.unwrap();
        let txn = db.begin().await.unwrap();
        assert_eq!(for_update(&txn, RowLock::Wait), " FOR UPDATE");
        round_trip(&txn).await.unwrap();
        txn.rollback().await.unwrap();
    }
}
