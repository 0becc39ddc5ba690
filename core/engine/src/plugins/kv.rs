//! The key-value store behind the `kv` capability, on the engine's database.
//!
//! Invariant: every operation is bound to one namespace (installation, scope) fixed by the host
//! for the invocation; a write and its quota accounting commit together or not at all, so the
//! usage row always equals what the namespace holds.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use chrono::Utc;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbErr, FromQueryResult, Value};

use super::manifest::KvQuota;
use crate::db::sql::{self, RowLock};

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

impl Namespace {
    fn ids(&self) -> Vec<Value> {
        vec![
            self.installation_id.clone().into(),
            self.scope_id.clone().into(),
        ]
    }

    pub async fn get(
        &self,
        db: &impl ConnectionTrait,
        key: &str,
    ) -> Result<Option<Entry>, KvError> {
        check_key(key)?;
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

    /// Writes `value` when the key is at `expected` (`None`: absent), with the quota checked in
    /// the same transaction.
    pub async fn compare_and_swap(
        &self,
        db: &DatabaseConnection,
        key: &str,
        expected: Option<u64>,
        value: &[u8],
    ) -> Result<Cas, KvError> {
        check_key(key)?;
        if value.len() > MAX_VALUE_BYTES {
            return Err(KvError::Invalid(format!(
                "a value may be at most {MAX_VALUE_BYTES} bytes"
            )));
        }
        let txn = crate::db::begin_write(db).await?;
        let (current, last) = self.lock_and_read(&txn, key).await?;
        let outcome = match (&current, expected) {
            (None, None) => {
                let version = next_version(Some(last));
                self.charge(&txn, 1, (key.len() + value.len()) as i64, version)
                    .await?;
                self.insert(&txn, key, value, version).await?;
                Cas::Stored(version)
            }
            (Some(entry), Some(v)) if entry.version == v => {
                let version = next_version(Some(last.max(v)));
                self.charge(
                    &txn,
                    0,
                    value.len() as i64 - entry.value.len() as i64,
                    version,
                )
                .await?;
                self.overwrite(&txn, key, value, version).await?;
                Cas::Stored(version)
            }
            _ => Cas::Conflict(current.clone()),
        };
        txn.commit().await?;
        Ok(outcome)
    }

    /// Deletes a key (only at `expected`, when given); true when a row went away.
    pub async fn delete(
        &self,
        db: &DatabaseConnection,
        key: &str,
        expected: Option<u64>,
    ) -> Result<bool, KvError> {
        check_key(key)?;
        let txn = crate::db::begin_write(db).await?;
        let (current, last) = self.lock_and_read(&txn, key).await?;
        let deleted = match current {
            Some(entry) if expected.is_none_or(|v| v == entry.version) => {
                let mut values = self.ids();
                values.push(key.into());
                sql::query(
                    "DELETE FROM plugin_kv WHERE installation_id = ? AND scope_id = ? AND key = ?",
                    values,
                )
                .execute(&txn)
                .await?;
                self.charge(&txn, -1, -((key.len() + entry.value.len()) as i64), last)
                    .await?;
                true
            }
            _ => false,
        };
        txn.commit().await?;
        Ok(deleted)
    }

    /// Adds `delta` to a decimal counter (absent counts as 0) and returns the new value.
    pub async fn increment(
        &self,
        db: &DatabaseConnection,
        key: &str,
        delta: i64,
    ) -> Result<i64, KvError> {
        check_key(key)?;
        let txn = crate::db::begin_write(db).await?;
        let (current, last) = self.lock_and_read(&txn, key).await?;
        let version = next_version(Some(last.max(current.as_ref().map_or(0, |e| e.version))));
        let new = next_count(current.as_ref(), key, delta)?;
        let text = new.to_string();
        match current {
            None => {
                self.charge(&txn, 1, (key.len() + text.len()) as i64, version)
                    .await?;
                self.insert(&txn, key, text.as_bytes(), version).await?;
            }
            Some(entry) => {
                self.charge(
                    &txn,
                    0,
                    text.len() as i64 - entry.value.len() as i64,
                    version,
                )
                .await?;
                self.overwrite(&txn, key, text.as_bytes(), version).await?;
            }
        }
        txn.commit().await?;
        Ok(new)
    }

    /// Keys starting with `prefix` after `after`, in bytewise key order.
    pub async fn list(
        &self,
        db: &impl ConnectionTrait,
        prefix: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<(Vec<(String, Entry)>, Option<String>), KvError> {
        if prefix.len() > MAX_KEY_BYTES {
            return Err(KvError::Invalid(format!(
                "a prefix may be at most {MAX_KEY_BYTES} bytes"
            )));
        }
        let limit = limit.clamp(1, MAX_LIST);
        let mut values = self.ids();
        let mut text = String::from(
            "SELECT key, value, version FROM plugin_kv WHERE installation_id = ? AND scope_id = ?",
        );
        // A range on the primary key, not LIKE: the prefix may contain % and _.
        match after {
            // Resuming a listing: strictly after the last key returned.
            Some(a) if a >= prefix => {
                text.push_str(" AND key > ?");
                values.push(a.into());
            }
            _ if !prefix.is_empty() => {
                text.push_str(" AND key >= ?");
                values.push(prefix.into());
            }
            _ => {}
        }
        if !prefix.is_empty() {
            text.push_str(" AND key < ?");
            values.push(format!("{prefix}\u{10FFFF}").into());
        }
        text.push_str(" ORDER BY key LIMIT ?");
        values.push(i64::from(limit + 1).into());
        let rows: Vec<KeyedRow> = sql::query(&text, values).all(db).await?;
        let items = rows
            .into_iter()
            .map(|row| (row.key, Entry::from(row.entry)))
            .collect();
        Ok(page(items, limit as usize))
    }

    /// Keys and bytes held now.
    pub async fn usage(&self, db: &impl ConnectionTrait) -> Result<(u64, u64), KvError> {
        let row: Option<UsageRow> = sql::query(
            "SELECT keys, bytes FROM plugin_kv_usage WHERE installation_id = ? AND scope_id = ?",
            self.ids(),
        )
        .one(db)
        .await?;
        Ok(row.map_or((0, 0), |r| (version_of(r.keys), version_of(r.bytes))))
    }

    /// Takes the namespace's write lock (its usage row) and reads the key. The first statement
    /// writes, so SQLite takes its write lock up front instead of upgrading a read lock, which
    /// `busy_timeout` cannot wait for.
    async fn lock_and_read(
        &self,
        txn: &impl ConnectionTrait,
        key: &str,
    ) -> Result<(Option<Entry>, u64), KvError> {
        sql::query(
            "INSERT INTO plugin_kv_usage (installation_id, scope_id, keys, bytes, last_version) \
             VALUES (?, ?, 0, 0, 0) ON CONFLICT (installation_id, scope_id) DO NOTHING",
            self.ids(),
        )
        .execute(txn)
        .await?;
        let lock = sql::for_update(txn, RowLock::Wait);
        let last: Option<i64> = sql::query(
            &format!(
                "SELECT last_version FROM plugin_kv_usage WHERE installation_id = ? AND scope_id = ?{lock}"
            ),
            self.ids(),
        )
        .scalar(txn)
        .await?;
        Ok((self.get(txn, key).await?, last.map_or(0, version_of)))
    }

    /// Charges a write to the quota and records the version it used (`last` when it made none).
    async fn charge(
        &self,
        txn: &impl ConnectionTrait,
        keys: i64,
        bytes: i64,
        version: u64,
    ) -> Result<(), KvError> {
        let max_keys = i64::try_from(self.quota.max_keys).unwrap_or(i64::MAX);
        let max_bytes = i64::try_from(self.quota.max_bytes).unwrap_or(i64::MAX);
        let version = i64::try_from(version).unwrap_or(i64::MAX);
        let mut values: Vec<Value> = vec![keys.into(), bytes.into(), version.into()];
        values.extend(self.ids());
        values.extend([
            keys.into(),
            keys.into(),
            max_keys.into(),
            bytes.into(),
            bytes.into(),
            max_bytes.into(),
        ]);
        // Shrinking writes always pass, so a namespace over a lowered quota can still clean up.
        let charged = sql::query(
            "UPDATE plugin_kv_usage SET keys = keys + ?, bytes = bytes + ?, last_version = ? \
             WHERE installation_id = ? AND scope_id = ? \
             AND (? <= 0 OR keys + ? <= ?) AND (? <= 0 OR bytes + ? <= ?)",
            values,
        )
        .execute(txn)
        .await?;
        if charged == 0 {
            let (used_keys, used_bytes) = self.usage(txn).await?;
            return Err(KvError::Quota(
                if keys > 0 && used_keys + 1 > self.quota.max_keys {
                    format!("kv quota: {} keys at most", self.quota.max_keys)
                } else {
                    format!(
                        "kv quota: {} bytes at most ({used_bytes} used)",
                        self.quota.max_bytes
                    )
                },
            ));
        }
        Ok(())
    }

    async fn insert(
        &self,
        txn: &impl ConnectionTrait,
        key: &str,
        value: &[u8],
        version: u64,
    ) -> Result<(), KvError> {
        let mut values = self.ids();
        values.extend([
            key.into(),
            value.to_vec().into(),
            i64::try_from(version).unwrap_or(i64::MAX).into(),
            Utc::now().into(),
        ]);
        sql::query(
            "INSERT INTO plugin_kv (installation_id, scope_id, key, value, version, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
            values,
        )
        .execute(txn)
        .await?;
        Ok(())
    }

    async fn overwrite(
        &self,
        txn: &impl ConnectionTrait,
        key: &str,
        value: &[u8],
        version: u64,
    ) -> Result<(), KvError> {
        let mut values: Vec<Value> = vec![
            value.to_vec().into(),
            i64::try_from(version).unwrap_or(i64::MAX).into(),
            Utc::now().into(),
        ];
        values.extend(self.ids());
        values.push(key.into());
        sql::query(
            "UPDATE plugin_kv SET value = ?, version = ?, updated_at = ? WHERE installation_id = ? AND scope_id = ? AND key = ?",
            values,
        )
        .execute(txn)
        .await?;
        Ok(())
    }
}

/// Where kv data lives: the engine's database (always, in the engine), or process memory (an
/// option of the local harness for plugin authors' fast tests and the runtime benchmark, so a
/// measurement can leave the database out).
#[derive(Clone)]
pub enum Store {
    Database(DatabaseConnection),
    Memory(Arc<Mutex<MemoryKv>>),
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Store::Database(_) => "Store::Database",
            Store::Memory(_) => "Store::Memory",
        })
    }
}

/// The in-memory store: the same semantics as the database one (versions, quotas, bytewise
/// order), without durability.
#[derive(Debug, Default)]
pub struct MemoryKv {
    entries: BTreeMap<(String, String, String), Entry>,
    usage: HashMap<(String, String), (u64, u64)>,
    last_version: u64,
}

fn locked(m: &Mutex<MemoryKv>) -> std::sync::MutexGuard<'_, MemoryKv> {
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

    fn next_version(&mut self) -> u64 {
        self.last_version = next_version(Some(self.last_version));
        self.last_version
    }

    fn charge(&mut self, ns: &Namespace, keys: i64, bytes: i64) -> Result<(), KvError> {
        let usage = self
            .usage
            .entry((ns.installation_id.clone(), ns.scope_id.clone()))
            .or_default();
        let new_keys = usage.0.saturating_add_signed(keys);
        let new_bytes = usage.1.saturating_add_signed(bytes);
        if keys > 0 && new_keys > ns.quota.max_keys {
            return Err(KvError::Quota(format!(
                "kv quota: {} keys at most",
                ns.quota.max_keys
            )));
        }
        if bytes > 0 && new_bytes > ns.quota.max_bytes {
            return Err(KvError::Quota(format!(
                "kv quota: {} bytes at most ({} used)",
                ns.quota.max_bytes, usage.1
            )));
        }
        *usage = (new_keys, new_bytes);
        Ok(())
    }

    fn put(
        &mut self,
        ns: &Namespace,
        key: &str,
        value: &[u8],
        current: Option<&Entry>,
    ) -> Result<u64, KvError> {
        match current {
            None => self.charge(ns, 1, (key.len() + value.len()) as i64)?,
            Some(old) => self.charge(ns, 0, value.len() as i64 - old.value.len() as i64)?,
        }
        let version = self.next_version();
        self.entries.insert(
            Self::key(ns, key),
            Entry {
                value: value.to_vec(),
                version,
            },
        );
        Ok(version)
    }
}

impl Store {
    /// Keys and bytes a namespace holds.
    pub async fn usage(&self, ns: &Namespace) -> Result<(u64, u64), KvError> {
        match self {
            Store::Database(db) => ns.usage(db).await,
            Store::Memory(m) => Ok(locked(m)
                .usage
                .get(&(ns.installation_id.clone(), ns.scope_id.clone()))
                .copied()
                .unwrap_or_default()),
        }
    }

    pub async fn get(&self, ns: &Namespace, key: &str) -> Result<Option<Entry>, KvError> {
        match self {
            Store::Database(db) => ns.get(db, key).await,
            Store::Memory(m) => {
                check_key(key)?;
                Ok(locked(m).entries.get(&MemoryKv::key(ns, key)).cloned())
            }
        }
    }

    pub async fn compare_and_swap(
        &self,
        ns: &Namespace,
        key: &str,
        expected: Option<u64>,
        value: &[u8],
    ) -> Result<Cas, KvError> {
        match self {
            Store::Database(db) => ns.compare_and_swap(db, key, expected, value).await,
            Store::Memory(m) => {
                check_key(key)?;
                if value.len() > MAX_VALUE_BYTES {
                    return Err(KvError::Invalid(format!(
                        "a value may be at most {MAX_VALUE_BYTES} bytes"
                    )));
                }
                let mut kv = locked(m);
                let current = kv.entries.get(&MemoryKv::key(ns, key)).cloned();
                match (&current, expected) {
                    (None, None) => Ok(Cas::Stored(kv.put(ns, key, value, None)?)),
                    (Some(entry), Some(v)) if entry.version == v => {
                        Ok(Cas::Stored(kv.put(ns, key, value, Some(entry))?))
                    }
                    _ => Ok(Cas::Conflict(current)),
                }
            }
        }
    }

    pub async fn delete(
        &self,
        ns: &Namespace,
        key: &str,
        expected: Option<u64>,
    ) -> Result<bool, KvError> {
        match self {
            Store::Database(db) => ns.delete(db, key, expected).await,
            Store::Memory(m) => {
                check_key(key)?;
                let mut kv = locked(m);
                let k = MemoryKv::key(ns, key);
                match kv.entries.get(&k).cloned() {
                    Some(entry) if expected.is_none_or(|v| v == entry.version) => {
                        kv.entries.remove(&k);
                        kv.charge(ns, -1, -((key.len() + entry.value.len()) as i64))?;
                        Ok(true)
                    }
                    _ => Ok(false),
                }
            }
        }
    }

    pub async fn increment(&self, ns: &Namespace, key: &str, delta: i64) -> Result<i64, KvError> {
        match self {
            Store::Database(db) => ns.increment(db, key, delta).await,
            Store::Memory(m) => {
                check_key(key)?;
                let mut kv = locked(m);
                let current = kv.entries.get(&MemoryKv::key(ns, key)).cloned();
                let new = next_count(current.as_ref(), key, delta)?;
                kv.put(ns, key, new.to_string().as_bytes(), current.as_ref())?;
                Ok(new)
            }
        }
    }

    pub async fn list(
        &self,
        ns: &Namespace,
        prefix: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<(Vec<(String, Entry)>, Option<String>), KvError> {
        match self {
            Store::Database(db) => ns.list(db, prefix, after, limit).await,
            Store::Memory(m) => {
                let limit = limit.clamp(1, MAX_LIST) as usize;
                let kv = locked(m);
                let start = MemoryKv::key(ns, after.filter(|a| *a > prefix).unwrap_or(prefix));
                let items: Vec<(String, Entry)> = kv
                    .entries
                    .range(start..)
                    .take_while(|((i, s, _), _)| *i == ns.installation_id && *s == ns.scope_id)
                    .filter(|((_, _, k), _)| after.is_none_or(|a| k.as_str() > a))
                    .take_while(|((_, _, k), _)| k.starts_with(prefix))
                    .take(limit + 1)
                    .map(|((_, _, k), e)| (k.clone(), e.clone()))
                    .collect();
                let (items, next) = page(items, limit);
                Ok((items, next))
            }
        }
    }
}
