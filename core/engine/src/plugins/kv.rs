//! The key-value store behind the `kv` capability, on the engine's database (or, for the
//! local harness, in memory), and the transactions invocations read and write it through.
//!
//! Invariant: every operation is bound to one namespace (installation, scope) fixed by the host
//! for the invocation; nothing is written except by committing a [`Txn`], whose writes, version
//! bumps and quota accounting commit together or not at all, so the usage row always equals
//! what the namespace holds.

/// One invocation's reads and buffered writes, and committing them.
mod txn;
/// Committing the transactions of several invocations together, in a few statements.
pub mod group;
/// What this engine last committed to each namespace, for optimistic runs to start from.
mod recent;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use chrono::Utc;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, FromQueryResult, Value};

use super::manifest::KvQuota;
use crate::db::held::{self, Kept};
use crate::db::sql;

pub use recent::{DEFAULT_NAMESPACES, Recent};
pub use txn::{Learned, Txn};

/// Longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 256;
/// Largest value, in bytes.
pub const MAX_VALUE_BYTES: usize = 64 << 10;
/// Most items one `list` returns.
pub const MAX_LIST: u32 = 256;
/// A `list` page also ends once its values pass this many bytes.
pub const MAX_PAGE_BYTES: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum KvError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Quota(String),
    #[error("the counter at {0} does not hold an integer")]
    NotACounter(String),
    #[error("too much contention on {0}")]
    Contention(String),
    /// What a transaction read changed before it committed; nothing was written.
    #[error("{0} changed while the transaction ran")]
    Changed(String),
    #[error("database error: {0}")]
    Db(#[from] DbErr),
}

/// One namespace of the store.
#[derive(Debug, Clone)]
pub struct Namespace {
    pub installation_id: String,
    pub scope_id: String,
    pub quota: KvQuota,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub value: Vec<u8>,
    pub version: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cas {
    Stored(u64),
    Conflict(Option<Entry>),
}

/// Most keys one `get-many` reads or one `write-many` writes.
pub const MAX_BATCH: usize = 256;

/// What a batched write expects to find at its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    Any,
    Absent,
    Version(u64),
}

/// One write of a batch: the value (`None` deletes the key) and what the key must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchWrite {
    pub key: String,
    pub value: Option<Vec<u8>>,
    pub expected: Expect,
}

/// What a batch of writes did: every write, with each key's new version (0 for a delete), or
/// none, because the write at this index found this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Batch {
    Stored(Vec<u64>),
    Conflict(usize, Option<Entry>),
}

/// An entry as `plugin_kv` holds it.
#[derive(FromQueryResult)]
struct EntryRow {
    value: Vec<u8>,
    version: i64,
}

impl From<EntryRow> for Entry {
    fn from(row: EntryRow) -> Self {
        Self {
            value: row.value,
            version: version_of(row.version),
        }
    }
}

/// An entry of a listing, with its key.
#[derive(FromQueryResult)]
struct KeyedRow {
    key: String,
    #[sea_orm(nested)]
    entry: EntryRow,
}

/// What a namespace holds, as its usage row counts it.
#[derive(FromQueryResult)]
struct UsageRow {
    keys: i64,
    bytes: i64,
    last_version: i64,
}

/// The counter after adding `delta` to what `current` holds (absent counts as 0).
fn next_count(current: Option<&Entry>, key: &str, delta: i64) -> Result<i64, KvError> {
    let old = match current {
        None => 0,
        Some(entry) => std::str::from_utf8(&entry.value)
            .ok()
            .and_then(|t| t.trim().parse::<i64>().ok())
            .ok_or_else(|| KvError::NotACounter(key.to_owned()))?,
    };
    old.checked_add(delta)
        .ok_or_else(|| KvError::Invalid(format!("the counter at {key} would overflow")))
}

/// Cuts fetched items (up to `limit + 1`) into a page: at most `limit` items and about
/// [`MAX_PAGE_BYTES`] of values, with the key to continue after when more remain.
fn page(mut items: Vec<(String, Entry)>, limit: usize) -> (Vec<(String, Entry)>, Option<String>) {
    let mut bytes = 0;
    let mut keep = items.len().min(limit);
    for (i, (_, entry)) in items.iter().enumerate().take(keep) {
        bytes += entry.value.len();
        if bytes > MAX_PAGE_BYTES && i > 0 {
            keep = i;
            break;
        }
    }
    if items.len() > keep {
        items.truncate(keep);
        let next = items.last().map(|(k, _)| k.clone());
        (items, next)
    } else {
        (items, None)
    }
}

/// Checks a key: non-empty UTF-8 without control characters, at most [`MAX_KEY_BYTES`].
pub fn check_key(key: &str) -> Result<(), KvError> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(KvError::Invalid(format!(
            "a key must be 1 to {MAX_KEY_BYTES} bytes"
        )));
    }
    // U+10FFFF closes prefix ranges, so it may not appear in keys.
    if key.chars().any(|c| c.is_control() || c == '\u{10FFFF}') {
        return Err(KvError::Invalid(
            "a key may not contain control characters".into(),
        ));
    }
    Ok(())
}

fn version_of(value: i64) -> u64 {
    u64::try_from(value).unwrap_or_default()
}

/// Versions are time-ordered and, per namespace, strictly increasing across every write and
/// delete (the usage row keeps the last one), so a stale `expected` never matches a later value.
fn next_version(previous: Option<u64>) -> u64 {
    let now = u64::try_from(Utc::now().timestamp_micros()).unwrap_or_default();
    now.max(previous.map_or(0, |p| p + 1))
}

/// Where a listing starts: at its prefix, or strictly after a key a previous page ended on.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Start {
    At(String),
    After(String),
}

impl Start {
    fn of(prefix: &str, after: Option<&str>) -> Self {
        match after {
            // Resuming a listing: strictly after the last key returned.
            Some(a) if a >= prefix => Start::After(a.to_owned()),
            _ => Start::At(prefix.to_owned()),
        }
    }

    fn admits(&self, key: &str) -> bool {
        match self {
            Start::At(s) => key >= s.as_str(),
            Start::After(s) => key > s.as_str(),
        }
    }
}

/// The end of a prefix's key range: every key starting with `prefix` sorts below it.
fn prefix_end(prefix: &str) -> Option<String> {
    (!prefix.is_empty()).then(|| format!("{prefix}\u{10FFFF}"))
}

fn check_prefix(prefix: &str) -> Result<(), KvError> {
    if prefix.len() > MAX_KEY_BYTES {
        return Err(KvError::Invalid(format!(
            "a prefix may be at most {MAX_KEY_BYTES} bytes"
        )));
    }
    Ok(())
}

/// One statement that looks `n` keys up by the primary key, one lookup per key joined by
/// `UNION ALL`, each bound to (installation, scope, key). Not `key IN (…)` nor a join with a
/// list of keys: their plans follow the table's statistics, and PostgreSQL's lag behind a
/// namespace that grows quickly (a `seen/` key per event), which made it read every key of
/// the namespace to find two. `n` stays under SQLite's 500 terms of a compound select.
pub(super) fn lookups(columns: &str, n: usize) -> String {
    let lookup = format!(
        "SELECT {columns} FROM plugin_kv WHERE installation_id = ? AND scope_id = ? AND key = ?"
    );
    vec![lookup.as_str(); n].join(" UNION ALL ")
}

const _: () = assert!(MAX_BATCH <= 500);

impl Namespace {
    fn ids(&self) -> Vec<Value> {
        vec![
            self.installation_id.clone().into(),
            self.scope_id.clone().into(),
        ]
    }

    async fn get(&self, db: &impl ConnectionTrait, key: &str) -> Result<Option<Entry>, KvError> {
        let mut values = self.ids();
        values.push(key.into());
        let row: Option<EntryRow> = sql::query(
            "SELECT value, version FROM plugin_kv WHERE installation_id = ? AND scope_id = ? AND key = ?",
            values,
        )
        .one(db)
        .await?;
        Ok(row.map(Entry::from))
    }

    /// The committed entries of `keys` (at most [`MAX_BATCH`]) in one statement; keys
    /// without one are left out.
    async fn get_many(
        &self,
        db: &impl ConnectionTrait,
        keys: &[&str],
    ) -> Result<Vec<(String, Entry)>, KvError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut values = Vec::with_capacity(keys.len() * 3);
        for key in keys {
            values.extend(self.ids());
            values.push(Value::from(*key));
        }
        let rows: Vec<KeyedRow> = sql::query(&lookups("key, value, version", keys.len()), values)
            .all(db)
            .await?;
        Ok(rows
            .into_iter()
            .map(|row| (row.key, Entry::from(row.entry)))
            .collect())
    }

    /// At most `n` keys starting with `prefix` from `start` (up to `through`, when given), in
    /// bytewise key order. A range on the primary key, not LIKE: a prefix may hold % and _.
    async fn range(
        &self,
        db: &impl ConnectionTrait,
        prefix: &str,
        start: &Start,
        through: Option<&str>,
        n: usize,
    ) -> Result<Vec<(String, Entry)>, KvError> {
        let mut values = self.ids();
        let mut text = String::from(
            "SELECT key, value, version FROM plugin_kv WHERE installation_id = ? AND scope_id = ?",
        );
        match start {
            Start::After(a) => {
                text.push_str(" AND key > ?");
                values.push(a.clone().into());
            }
            Start::At(p) if !p.is_empty() => {
                text.push_str(" AND key >= ?");
                values.push(p.clone().into());
            }
            Start::At(_) => {}
        }
        if let Some(end) = prefix_end(prefix) {
            text.push_str(" AND key < ?");
            values.push(end.into());
        }
        if let Some(last) = through {
            text.push_str(" AND key <= ?");
            values.push(last.into());
        }
        text.push_str(" ORDER BY key LIMIT ?");
        values.push(i64::try_from(n).unwrap_or(i64::MAX).into());
        let rows: Vec<KeyedRow> = sql::query(&text, values).all(db).await?;
        Ok(rows
            .into_iter()
            .map(|row| (row.key, Entry::from(row.entry)))
            .collect())
    }

    /// The committed entry at `key` and the keys and bytes the namespace holds, in one
    /// statement: a transaction's first read, so that its first write need not ask for the
    /// usage on its own.
    ///
    /// On SQLite it runs on `kept`'s connection when free: every invocation that touches kv
    /// makes this read, and a connection back into sqlx's pool costs a round trip (a ping).
    async fn get_with_usage(
        &self,
        db: &DatabaseConnection,
        kept: &Kept,
        key: &str,
    ) -> Result<(Option<Entry>, (u64, u64), Option<i64>), KvError> {
        #[derive(FromQueryResult)]
        struct Both {
            keys: Option<i64>,
            bytes: Option<i64>,
            last_version: Option<i64>,
            value: Option<Vec<u8>>,
            version: Option<i64>,
        }
        let mut values = self.ids();
        values.extend(self.ids());
        values.push(key.into());
        let statement = "SELECT u.keys, u.bytes, u.last_version, k.value, k.version FROM (SELECT 1 AS one) o \
             LEFT JOIN plugin_kv_usage u ON u.installation_id = ? AND u.scope_id = ? \
             LEFT JOIN plugin_kv k ON k.installation_id = ? AND k.scope_id = ? AND k.key = ?";
        let row: Option<Both> = if sql::backend(db) == DbBackend::Sqlite {
            let rows = held::read(db, kept, (statement.to_owned(), values)).await?;
            rows.first().map(held::row).transpose()?
        } else {
            sql::query(statement, values).one(db).await?
        };
        let Some(row) = row else {
            return Ok((None, (0, 0), Some(0)));
        };
        let entry = match (row.value, row.version) {
            (Some(value), Some(version)) => Some(Entry {
                value,
                version: version_of(version),
            }),
            _ => None,
        };
        let usage = (
            row.keys.map_or(0, version_of),
            row.bytes.map_or(0, version_of),
        );
        Ok((entry, usage, Some(row.last_version.unwrap_or(0))))
    }

    /// Keys and bytes held now.
    async fn usage(&self, db: &impl ConnectionTrait) -> Result<(u64, u64), KvError> {
        let (keys, bytes, _) = self.usage_row(db).await?;
        Ok((version_of(keys), version_of(bytes)))
    }

    /// The usage row: keys, bytes, last version (all 0 when there is none).
    async fn usage_row(&self, db: &impl ConnectionTrait) -> Result<(i64, i64, i64), KvError> {
        let row: Option<UsageRow> = sql::query(
            "SELECT keys, bytes, last_version FROM plugin_kv_usage \
             WHERE installation_id = ? AND scope_id = ?",
            self.ids(),
        )
        .one(db)
        .await?;
        Ok(row.map_or((0, 0, 0), |r| (r.keys, r.bytes, r.last_version)))
    }
}

/// Where kv data lives: the engine's database (always, in the engine), or process memory (an
/// option of the local harness for plugin authors' fast tests and the runtime benchmark, so a
/// measurement can leave the database out).
#[derive(Clone)]
pub enum Store {
    /// The database, the SQLite connection that transactions' first reads take in turns, and
    /// what this engine last committed to each namespace.
    Database(DatabaseConnection, Kept, Arc<Recent>),
    Memory(Arc<Mutex<MemoryKv>>),
}

impl Store {
    /// kv in the database `db`.
    pub fn database(db: DatabaseConnection) -> Self {
        Store::Database(
            db,
            Kept::default(),
            Arc::new(Recent::new(DEFAULT_NAMESPACES)),
        )
    }

    /// This store, remembering what this engine committed to at most `namespaces` namespaces
    /// (0: none, and no run is optimistic).
    pub fn remembering(self, namespaces: usize) -> Self {
        match self {
            Store::Database(db, kept, _) => {
                Store::Database(db, kept, Arc::new(Recent::new(namespaces)))
            }
            memory => memory,
        }
    }

    /// What this engine last committed to each namespace (none in memory, where reads cost
    /// nothing).
    pub fn recent(&self) -> Option<&Arc<Recent>> {
        match self {
            Store::Database(_, _, recent) => Some(recent),
            Store::Memory(_) => None,
        }
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Store::Database(..) => "Store::Database",
            Store::Memory(_) => "Store::Memory",
        })
    }
}

/// The in-memory store: the same semantics as the database one (versions, quotas, bytewise
/// order, commits that check what their transaction read), without durability.
#[derive(Debug, Default)]
pub struct MemoryKv {
    entries: BTreeMap<(String, String, String), Entry>,
    usage: HashMap<(String, String), (u64, u64)>,
    last_version: HashMap<(String, String), u64>,
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl MemoryKv {
    fn key(ns: &Namespace, key: &str) -> (String, String, String) {
        (
            ns.installation_id.clone(),
            ns.scope_id.clone(),
            key.to_owned(),
        )
    }

    fn namespace(ns: &Namespace) -> (String, String) {
        (ns.installation_id.clone(), ns.scope_id.clone())
    }

    fn range(
        &self,
        ns: &Namespace,
        prefix: &str,
        start: &Start,
        through: Option<&str>,
        n: usize,
    ) -> Vec<(String, Entry)> {
        let from = match start {
            Start::At(s) | Start::After(s) => MemoryKv::key(ns, s),
        };
        self.entries
            .range(from..)
            .take_while(|((i, s, _), _)| *i == ns.installation_id && *s == ns.scope_id)
            .filter(|((_, _, k), _)| start.admits(k))
            .take_while(|((_, _, k), _)| {
                k.starts_with(prefix) && through.is_none_or(|t| k.as_str() <= t)
            })
            .take(n)
            .map(|((_, _, k), e)| (k.clone(), e.clone()))
            .collect()
    }
}

/// A write made on its own, outside an invocation.
trait Single {
    type Out;
    async fn run(&self, txn: &mut Txn, store: &Store) -> Result<Self::Out, KvError>;
}

struct CasOp<'a>(&'a str, Option<u64>, &'a [u8]);
struct DeleteOp<'a>(&'a str, Option<u64>);
struct IncrementOp<'a>(&'a str, i64);

impl Single for CasOp<'_> {
    type Out = Cas;
    async fn run(&self, txn: &mut Txn, store: &Store) -> Result<Cas, KvError> {
        txn.compare_and_swap(store, self.0, self.1, self.2).await
    }
}

impl Single for DeleteOp<'_> {
    type Out = bool;
    async fn run(&self, txn: &mut Txn, store: &Store) -> Result<bool, KvError> {
        txn.delete(store, self.0, self.1).await
    }
}

impl Single for IncrementOp<'_> {
    type Out = i64;
    async fn run(&self, txn: &mut Txn, store: &Store) -> Result<i64, KvError> {
        txn.increment(store, self.0, self.1).await
    }
}

/// How many times a single-operation call of [`Store`] is tried when another writer changed its
/// key between its read and its commit.
const SINGLE_OP_ATTEMPTS: u32 = 50;

impl Store {
    /// Keys and bytes a namespace holds.
    pub async fn usage(&self, ns: &Namespace) -> Result<(u64, u64), KvError> {
        match self {
            Store::Database(db, ..) => ns.usage(db).await,
            Store::Memory(m) => Ok(locked(m)
                .usage
                .get(&MemoryKv::namespace(ns))
                .copied()
                .unwrap_or_default()),
        }
    }

    /// The namespace's usage (keys, bytes) and, in the database, its last version.
    async fn usage_with_last(&self, ns: &Namespace) -> Result<((u64, u64), Option<i64>), KvError> {
        match self {
            Store::Database(db, ..) => {
                let (keys, bytes, last) = ns.usage_row(db).await?;
                Ok(((version_of(keys), version_of(bytes)), Some(last)))
            }
            Store::Memory(_) => Ok((self.usage(ns).await?, None)),
        }
    }

    /// Whether `txn`, which wrote nothing, is answered by its namespace's usage row alone: the
    /// row is still as the transaction's first read found it, so every key it read is still
    /// as read — one statement, no transaction. False when that cannot be known (keys assumed
    /// absent, a listing, a first read without the row) or the row moved.
    pub async fn unmoved(&self, txn: &Txn) -> Result<bool, KvError> {
        let Store::Database(db, ..) = self else {
            return Ok(false);
        };
        let Some(read) = txn.usage_as_read() else {
            return Ok(false);
        };
        if txn.writes() || !txn.vouched_by(read) {
            return Ok(false);
        }
        if txn.namespace().usage_row(db).await? != read {
            return Ok(false);
        }
        // What it read is what the namespace holds: worth remembering.
        txn.applying(Some(read), read, 0);
        Ok(true)
    }

    /// The committed entry at `key` with the namespace's usage (keys, bytes) and, in the
    /// database, its last version (0 for a namespace without a usage row).
    async fn read_with_usage(
        &self,
        ns: &Namespace,
        key: &str,
    ) -> Result<(Option<Entry>, (u64, u64), Option<i64>), KvError> {
        match self {
            Store::Database(db, kept, _) => ns.get_with_usage(db, kept, key).await,
            Store::Memory(m) => {
                let kv = locked(m);
                let entry = kv.entries.get(&MemoryKv::key(ns, key)).cloned();
                let usage = kv
                    .usage
                    .get(&MemoryKv::namespace(ns))
                    .copied()
                    .unwrap_or_default();
                Ok((entry, usage, None))
            }
        }
    }

    /// The committed entry at `key`.
    async fn read(&self, ns: &Namespace, key: &str) -> Result<Option<Entry>, KvError> {
        match self {
            Store::Database(db, ..) => ns.get(db, key).await,
            Store::Memory(m) => Ok(locked(m).entries.get(&MemoryKv::key(ns, key)).cloned()),
        }
    }

    /// The committed entries of several keys at once; keys without one are left out.
    async fn read_many(
        &self,
        ns: &Namespace,
        keys: &[&str],
    ) -> Result<Vec<(String, Entry)>, KvError> {
        match self {
            Store::Database(db, ..) => ns.get_many(db, keys).await,
            Store::Memory(m) => {
                let kv = locked(m);
                Ok(keys
                    .iter()
                    .filter_map(|k| {
                        kv.entries
                            .get(&MemoryKv::key(ns, k))
                            .map(|e| ((*k).to_owned(), e.clone()))
                    })
                    .collect())
            }
        }
    }

    /// Committed entries of a key range; see [`Namespace::range`].
    async fn read_range(
        &self,
        ns: &Namespace,
        prefix: &str,
        start: &Start,
        through: Option<&str>,
        n: usize,
    ) -> Result<Vec<(String, Entry)>, KvError> {
        match self {
            Store::Database(db, ..) => ns.range(db, prefix, start, through, n).await,
            Store::Memory(m) => Ok(locked(m).range(ns, prefix, start, through, n)),
        }
    }

    /// Runs `op` in a transaction of its own and commits it, again from the start when another
    /// writer changed what it read meanwhile: one operation, atomic on its own.
    async fn single<O: Single>(&self, ns: &Namespace, op: O) -> Result<O::Out, KvError> {
        let mut changed = String::new();
        for _ in 0..SINGLE_OP_ATTEMPTS {
            let mut txn = Txn::new(ns.clone());
            let out = op.run(&mut txn, self).await?;
            match self.commit(txn).await {
                Ok(()) => return Ok(out),
                Err(KvError::Changed(key)) => changed = key,
                Err(e) => return Err(e),
            }
            tokio::task::yield_now().await;
        }
        Err(KvError::Contention(changed))
    }

    /// Commits a transaction in a database transaction of its own (or under the memory lock).
    pub async fn commit(&self, txn: Txn) -> Result<(), KvError> {
        match self {
            Store::Database(db, ..) => {
                let tx = crate::db::begin_write(db).await?;
                txn.commit_in(&tx).await?;
                tx.commit().await?;
                Ok(())
            }
            Store::Memory(m) => txn.commit_memory(m),
        }
    }

    pub async fn get(&self, ns: &Namespace, key: &str) -> Result<Option<Entry>, KvError> {
        let mut txn = Txn::new(ns.clone());
        txn.get(self, key).await
    }

    pub async fn compare_and_swap(
        &self,
        ns: &Namespace,
        key: &str,
        expected: Option<u64>,
        value: &[u8],
    ) -> Result<Cas, KvError> {
        self.single(ns, CasOp(key, expected, value)).await
    }

    pub async fn delete(
        &self,
        ns: &Namespace,
        key: &str,
        expected: Option<u64>,
    ) -> Result<bool, KvError> {
        self.single(ns, DeleteOp(key, expected)).await
    }

    pub async fn increment(&self, ns: &Namespace, key: &str, delta: i64) -> Result<i64, KvError> {
        self.single(ns, IncrementOp(key, delta)).await
    }

    pub async fn list(
        &self,
        ns: &Namespace,
        prefix: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<(Vec<(String, Entry)>, Option<String>), KvError> {
        let mut txn = Txn::new(ns.clone());
        txn.list(self, prefix, after, limit).await
    }
}
