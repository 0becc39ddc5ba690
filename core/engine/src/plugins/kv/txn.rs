//! One invocation's view of its namespace: reads see the invocation's own writes, writes are
//! buffered, and all of them commit at once — or none does.
//!
//! Invariant: a commit applies the writes only if every key and range the transaction read is
//! still as it read it (optimistic concurrency, checked under the namespace's lock), so the
//! transactions that commit are serializable, and compare-and-swap keeps its meaning across
//! concurrent invocations. Committed versions stay strictly increasing per namespace: a version
//! handed out inside a transaction is committed as is, or — when another commit in the
//! namespace got ahead meanwhile — shifted above it, so no stale `expected` matches it later.

use std::collections::BTreeMap;
use std::sync::Mutex;

use sea_orm::{DatabaseTransaction, FromQueryResult, Value};

use super::{
    Batch, BatchWrite, Cas, Entry, Expect, KvError, MAX_BATCH, MAX_LIST, MAX_VALUE_BYTES, MemoryKv,
    Namespace, Start, Store, check_key, check_prefix, group, locked, lookups, next_count,
    next_version, page, version_of,
};
use crate::db::sql::{self, RowLock};

/// Keys per statement when a commit checks reads or applies writes.
const CHUNK: usize = 200;
const _: () = assert!(CHUNK <= 500);

/// A range a transaction listed: the committed keys (and versions) it saw from `start` through
/// `through` (the end of the prefix when `None`).
#[derive(Debug)]
struct RangeRead {
    prefix: String,
    start: Start,
    through: Option<String>,
    seen: Vec<(String, u64)>,
}

/// One invocation's transaction on one namespace.
#[derive(Debug)]
pub struct Txn {
    ns: Namespace,
    /// Committed entries as first read (`None`: absent).
    reads: BTreeMap<String, Option<Entry>>,
    ranges: Vec<RangeRead>,
    /// Buffered writes (`None`: deleted), each with the version it was handed out under.
    writes: BTreeMap<String, Option<Entry>>,
    /// The namespace's committed usage, read with the first read (or at the first write that
    /// grows it, when that comes first).
    usage: Option<(u64, u64)>,
    /// The namespace's last version as the first read found it, with the usage (database only).
    read_last: Option<i64>,
    /// What the writes add to the committed usage (negative when they free space).
    keys_delta: i64,
    bytes_delta: i64,
    /// The highest version seen or handed out; the next one handed out is above it.
    highest: u64,
}

impl Txn {
    pub fn new(ns: Namespace) -> Self {
        Self {
            ns,
            reads: BTreeMap::new(),
            ranges: Vec::new(),
            writes: BTreeMap::new(),
            usage: None,
            read_last: None,
            keys_delta: 0,
            bytes_delta: 0,
            highest: 0,
        }
    }

    /// True when committing would write something.
    pub fn writes(&self) -> bool {
        !self.writes.is_empty()
    }

    /// How many keys and ranges a commit must check.
    pub fn reads(&self) -> usize {
        self.reads.len() + self.ranges.len()
    }

    /// The entry at `key` as this transaction sees it: its own write, else what it read, else
    /// the committed entry (remembered, to be checked at commit).
    async fn current(&mut self, store: &Store, key: &str) -> Result<Option<Entry>, KvError> {
        if let Some(written) = self.writes.get(key) {
            return Ok(written.clone());
        }
        if let Some(read) = self.reads.get(key) {
            return Ok(read.clone());
        }
        // The first read also learns the usage, which the first write that grows the
        // namespace checks against the quota.
        let entry = if self.usage.is_none() {
            let (entry, usage, last) = store.read_with_usage(&self.ns, key).await?;
            self.usage = Some(usage);
            // The usage row vouches for what was read from it on (`group::as_read`): only when
            // nothing was read before it (a batched read or a listing reads no usage).
            if self.reads.is_empty() && self.ranges.is_empty() {
                self.read_last = last;
            }
            entry
        } else {
            store.read(&self.ns, key).await?
        };
        if let Some(e) = &entry {
            self.highest = self.highest.max(e.version);
        }
        self.reads.insert(key.to_owned(), entry.clone());
        Ok(entry)
    }

    pub async fn get(&mut self, store: &Store, key: &str) -> Result<Option<Entry>, KvError> {
        check_key(key)?;
        self.current(store, key).await
    }

    /// Buffers `value` at `key` in place of `current`, within the quota; returns its version.
    async fn put(
        &mut self,
        store: &Store,
        key: &str,
        value: &[u8],
        current: Option<&Entry>,
    ) -> Result<u64, KvError> {
        let (keys, bytes) = match current {
            None => (1, (key.len() + value.len()) as i64),
            Some(old) => (0, value.len() as i64 - old.value.len() as i64),
        };
        self.charge(store, keys, bytes).await?;
        self.highest = next_version(Some(self.highest));
        self.writes.insert(
            key.to_owned(),
            Some(Entry {
                value: value.to_vec(),
                version: self.highest,
            }),
        );
        Ok(self.highest)
    }

    /// Checks a change of usage against the quota (shrinking always passes, so a namespace
    /// over a lowered quota can still clean up) and counts it. The commit checks again against
    /// what concurrent commits added.
    async fn charge(&mut self, store: &Store, keys: i64, bytes: i64) -> Result<(), KvError> {
        if keys > 0 || bytes > 0 {
            let (used_keys, used_bytes) = match self.usage {
                Some(u) => u,
                None => {
                    let u = store.usage(&self.ns).await?;
                    self.usage = Some(u);
                    u
                }
            };
            let quota = &self.ns.quota;
            if keys > 0 && used_keys.saturating_add_signed(self.keys_delta + keys) > quota.max_keys
            {
                return Err(KvError::Quota(format!(
                    "kv quota: {} keys at most",
                    quota.max_keys
                )));
            }
            let after = used_bytes.saturating_add_signed(self.bytes_delta + bytes);
            if bytes > 0 && after > quota.max_bytes {
                return Err(KvError::Quota(format!(
                    "kv quota: {} bytes at most ({} used)",
                    quota.max_bytes,
                    used_bytes.saturating_add_signed(self.bytes_delta)
                )));
            }
        }
        self.keys_delta += keys;
        self.bytes_delta += bytes;
        Ok(())
    }

    /// Writes `value` when the key is at `expected` (`None`: absent).
    pub async fn compare_and_swap(
        &mut self,
        store: &Store,
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
        let current = self.current(store, key).await?;
        match (&current, expected) {
            (None, None) => Ok(Cas::Stored(self.put(store, key, value, None).await?)),
            (Some(entry), Some(v)) if entry.version == v => {
                Ok(Cas::Stored(self.put(store, key, value, Some(entry)).await?))
            }
            _ => Ok(Cas::Conflict(current)),
        }
    }

    /// Deletes a key (only at `expected`, when given); true when there was one to delete.
    pub async fn delete(
        &mut self,
        store: &Store,
        key: &str,
        expected: Option<u64>,
    ) -> Result<bool, KvError> {
        check_key(key)?;
        match self.current(store, key).await? {
            Some(entry) if expected.is_none_or(|v| v == entry.version) => {
                self.charge(store, -1, -((key.len() + entry.value.len()) as i64))
                    .await?;
                self.writes.insert(key.to_owned(), None);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Reads up to [`MAX_BATCH`] keys, in order.
    pub async fn get_many(
        &mut self,
        store: &Store,
        keys: &[String],
    ) -> Result<Vec<Option<Entry>>, KvError> {
        if keys.len() > MAX_BATCH {
            return Err(KvError::Invalid(format!(
                "a batch reads at most {MAX_BATCH} keys"
            )));
        }
        for key in keys {
            check_key(key)?;
        }
        // What this transaction has not seen yet is read in one statement; the rest answers
        // from its own reads and writes, as a single `get` would.
        let unseen: std::collections::BTreeSet<&str> = keys
            .iter()
            .map(String::as_str)
            .filter(|k| !self.writes.contains_key(*k) && !self.reads.contains_key(*k))
            .collect();
        if !unseen.is_empty() {
            let unseen: Vec<&str> = unseen.into_iter().collect();
            let mut found: BTreeMap<String, Entry> = store
                .read_many(&self.ns, &unseen)
                .await?
                .into_iter()
                .collect();
            for key in unseen {
                let entry = found.remove(key);
                if let Some(e) = &entry {
                    self.highest = self.highest.max(e.version);
                }
                self.reads.insert(key.to_owned(), entry);
            }
        }
        let mut entries = Vec::with_capacity(keys.len());
        for key in keys {
            entries.push(self.current(store, key).await?);
        }
        Ok(entries)
    }

    /// Makes up to [`MAX_BATCH`] writes, all or none: every expectation is checked, then the
    /// whole batch is charged to the quota at once, and only then is anything buffered, so a
    /// refusal at any step leaves this transaction as it was.
    pub async fn write_many(
        &mut self,
        store: &Store,
        writes: &[BatchWrite],
    ) -> Result<Batch, KvError> {
        if writes.len() > MAX_BATCH {
            return Err(KvError::Invalid(format!(
                "a batch writes at most {MAX_BATCH} keys"
            )));
        }
        let mut keys = std::collections::BTreeSet::new();
        for write in writes {
            check_key(&write.key)?;
            if write
                .value
                .as_ref()
                .is_some_and(|v| v.len() > MAX_VALUE_BYTES)
            {
                return Err(KvError::Invalid(format!(
                    "a value may be at most {MAX_VALUE_BYTES} bytes"
                )));
            }
            // A key twice would make its second expectation depend on the first write.
            if !keys.insert(write.key.as_str()) {
                return Err(KvError::Invalid(format!(
                    "{} is written twice in one batch",
                    write.key
                )));
            }
        }
        let mut currents = Vec::with_capacity(writes.len());
        for (index, write) in writes.iter().enumerate() {
            let current = self.current(store, &write.key).await?;
            let holds = match (write.expected, &current) {
                (Expect::Any, _) | (Expect::Absent, None) => true,
                (Expect::Version(v), Some(entry)) => entry.version == v,
                _ => false,
            };
            if !holds {
                return Ok(Batch::Conflict(index, current));
            }
            currents.push(current);
        }
        let (mut keys_delta, mut bytes_delta) = (0_i64, 0_i64);
        for (write, current) in writes.iter().zip(&currents) {
            let key = write.key.len() as i64;
            match (&write.value, current) {
                (Some(value), None) => {
                    keys_delta += 1;
                    bytes_delta += key + value.len() as i64;
                }
                (Some(value), Some(old)) => {
                    bytes_delta += value.len() as i64 - old.value.len() as i64
                }
                (None, Some(old)) => {
                    keys_delta -= 1;
                    bytes_delta -= key + old.value.len() as i64;
                }
                (None, None) => {}
            }
        }
        self.charge(store, keys_delta, bytes_delta).await?;
        let mut versions = Vec::with_capacity(writes.len());
        for (write, current) in writes.iter().zip(currents) {
            match &write.value {
                Some(value) => {
                    self.highest = next_version(Some(self.highest));
                    self.writes.insert(
                        write.key.clone(),
                        Some(Entry {
                            value: value.clone(),
                            version: self.highest,
                        }),
                    );
                    versions.push(self.highest);
                }
                None => {
                    if current.is_some() {
                        self.writes.insert(write.key.clone(), None);
                    }
                    versions.push(0);
                }
            }
        }
        Ok(Batch::Stored(versions))
    }

    /// Adds `delta` to a decimal counter (absent counts as 0) and returns the new value.
    pub async fn increment(
        &mut self,
        store: &Store,
        key: &str,
        delta: i64,
    ) -> Result<i64, KvError> {
        check_key(key)?;
        let current = self.current(store, key).await?;
        let new = next_count(current.as_ref(), key, delta)?;
        // Adding nothing is how plugins read a counter: a read, guarded at commit like any
        // other, rather than a write that would make every reader a writer (and conflict with
        // every other reader).
        if delta == 0 {
            return Ok(new);
        }
        self.put(store, key, new.to_string().as_bytes(), current.as_ref())
            .await?;
        Ok(new)
    }

    /// Keys starting with `prefix` after `after`, in bytewise key order, this transaction's own
    /// writes included: at most `limit` items and about a MiB of values.
    pub async fn list(
        &mut self,
        store: &Store,
        prefix: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<(Vec<(String, Entry)>, Option<String>), KvError> {
        check_prefix(prefix)?;
        let limit = limit.clamp(1, MAX_LIST) as usize;
        let start = Start::of(prefix, after);
        let mine = |key: &str| key.starts_with(prefix) && start.admits(key);
        // Keys this transaction deleted hide committed ones: fetch enough to fill the page.
        let hidden = self
            .writes
            .iter()
            .filter(|(k, w)| w.is_none() && mine(k))
            .count();
        let want = limit + 1 + hidden;
        let committed = store
            .read_range(&self.ns, prefix, &start, None, want)
            .await?;
        // Past the last committed key fetched, this listing saw nothing: it ends there.
        let through = (committed.len() >= want).then(|| committed[committed.len() - 1].0.clone());
        for (_, entry) in &committed {
            self.highest = self.highest.max(entry.version);
        }
        let mut merged: BTreeMap<String, Entry> = committed
            .iter()
            .filter(|(k, _)| !self.writes.contains_key(k))
            .cloned()
            .collect();
        for (key, written) in &self.writes {
            if let Some(entry) = written
                && mine(key)
                && through.as_ref().is_none_or(|t| key <= t)
            {
                merged.insert(key.clone(), entry.clone());
            }
        }
        self.ranges.push(RangeRead {
            prefix: prefix.to_owned(),
            start,
            through,
            seen: committed.into_iter().map(|(k, e)| (k, e.version)).collect(),
        });
        Ok(page(merged.into_iter().collect(), limit))
    }

    /// Checks the reads and applies the writes inside `tx`, a transaction the caller commits
    /// (with work of its own); a write transaction when there is something to write. [`KvError::Changed`]: something read changed; the
    /// caller rolls back and may run the whole thing again. [`KvError::Quota`]: concurrent
    /// commits filled the quota meanwhile.
    pub async fn commit_in(self, tx: &DatabaseTransaction) -> Result<(), KvError> {
        if self.writes.is_empty() && self.reads() == 0 {
            return Ok(());
        }
        let shift = if self.writes.is_empty() {
            // Nothing to write: hold off the namespace's committers while checking, so the
            // checks see one state (on SQLite, a transaction reads one snapshot anyway).
            let lock = sql::for_update(tx, RowLock::Share);
            sql::query(
                &format!(
                    "SELECT keys FROM plugin_kv_usage WHERE installation_id = ? AND scope_id = ?{lock}"
                ),
                self.ns.ids(),
            )
            .execute(tx)
            .await?;
            0
        } else {
            self.charge_in(tx).await?
        };
        self.check_in(tx).await?;
        self.apply_in(tx, shift).await
    }

    /// The versions this transaction handed out, lowest and highest.
    pub(super) fn handed_out(&self) -> Option<(u64, u64)> {
        let versions = self.writes.values().flatten().map(|e| e.version);
        let low = versions.clone().min()?;
        Some((low, versions.max().unwrap_or(low)))
    }

    /// Takes the namespace's lock (its usage row) by charging the usage and moving its last
    /// version past this transaction's: one statement. Returns how far the handed-out versions
    /// must move up to stay above every version the namespace committed before.
    async fn charge_in(&self, tx: &DatabaseTransaction) -> Result<u64, KvError> {
        #[derive(FromQueryResult)]
        struct Charged {
            keys: i64,
            bytes: i64,
            last_version: i64,
        }
        let (low, high) = self.handed_out().unwrap_or((0, 0));
        let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        // No version handed out (deletes only): the last version stays.
        let step = if high == 0 { 0 } else { as_i64(high - low) + 1 };
        let mut values = self.ns.ids();
        values.extend([
            self.keys_delta.into(),
            self.bytes_delta.into(),
            as_i64(high).into(),
            as_i64(low).into(),
            as_i64(high).into(),
            step.into(),
        ]);
        let charged: Option<Charged> = sql::query(
            "INSERT INTO plugin_kv_usage (installation_id, scope_id, keys, bytes, last_version) \
             VALUES (?, ?, ?, ?, ?) ON CONFLICT (installation_id, scope_id) DO UPDATE SET \
             keys = plugin_kv_usage.keys + excluded.keys, bytes = plugin_kv_usage.bytes + excluded.bytes, \
             last_version = CASE WHEN plugin_kv_usage.last_version < ? THEN ? \
             ELSE plugin_kv_usage.last_version + ? END \
             RETURNING keys, bytes, last_version",
            values,
        )
        .one(tx)
        .await?;
        let Some(charged) = charged else {
            return Err(KvError::Db(sea_orm::DbErr::RecordNotFound(
                "plugin_kv_usage".into(),
            )));
        };
        let quota = &self.ns.quota;
        if self.keys_delta > 0 && version_of(charged.keys) > quota.max_keys {
            return Err(KvError::Quota(format!(
                "kv quota: {} keys at most",
                quota.max_keys
            )));
        }
        if self.bytes_delta > 0 && version_of(charged.bytes) > quota.max_bytes {
            return Err(KvError::Quota(format!(
                "kv quota: {} bytes at most",
                quota.max_bytes
            )));
        }
        // The new last version is `high` shifted by as much as every handed-out version is.
        Ok(version_of(charged.last_version).saturating_sub(high))
    }

    /// Fails with [`KvError::Changed`] unless every key and range read is as it was read.
    async fn check_in(&self, tx: &DatabaseTransaction) -> Result<(), KvError> {
        #[derive(FromQueryResult)]
        struct Version {
            key: String,
            version: i64,
        }
        let keys: Vec<&String> = self.reads.keys().collect();
        for chunk in keys.chunks(CHUNK) {
            let mut values = Vec::with_capacity(chunk.len() * 3);
            for key in chunk {
                values.extend(self.ns.ids());
                values.push(Value::from((*key).clone()));
            }
            let now: Vec<Version> = sql::query(&lookups("key, version", chunk.len()), values)
                .all(tx)
                .await?;
            let now: BTreeMap<String, u64> = now
                .into_iter()
                .map(|v| (v.key, version_of(v.version)))
                .collect();
            for key in chunk {
                let read = self.reads[*key].as_ref().map(|e| e.version);
                if now.get(*key).copied() != read {
                    return Err(KvError::Changed((*key).clone()));
                }
            }
        }
        self.check_ranges_in(tx).await
    }

    async fn apply_in(self, tx: &DatabaseTransaction, shift: u64) -> Result<(), KvError> {
        let ids = self.ids();
        let mut deleted = Vec::new();
        let mut written = Vec::new();
        for (key, write) in self.writes {
            match write {
                Some(mut entry) => {
                    entry.version += shift;
                    written.push((ids.clone(), key, entry));
                }
                None => deleted.push((ids.clone(), key)),
            }
        }
        let mut statements = group::delete(&deleted);
        statements.extend(group::upsert(&written));
        sql::batch::<group::NoRow>(tx, statements).await?;
        Ok(())
    }

    /// The namespace's ids: (installation, scope).
    pub fn ids(&self) -> (String, String) {
        (self.ns.installation_id.clone(), self.ns.scope_id.clone())
    }

    pub(super) fn namespace(&self) -> &Namespace {
        &self.ns
    }

    /// The namespace's usage row (keys, bytes, last version) as the first read found it, when
    /// it was read that way.
    pub(super) fn usage_as_read(&self) -> Option<(i64, i64, i64)> {
        let (keys, bytes) = self.usage?;
        let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        Some((as_i64(keys), as_i64(bytes), self.read_last?))
    }

    /// Whether this transaction listed a range (whose check [`group::reads`] leaves out).
    pub fn listed(&self) -> bool {
        !self.ranges.is_empty()
    }

    /// The keys this transaction read from the committed state.
    pub(super) fn read_keys(&self) -> impl Iterator<Item = &str> {
        self.reads.keys().map(String::as_str)
    }

    /// The version `key` had when read (`None`: absent, or not read).
    pub(super) fn read_version(&self, key: &str) -> Option<u64> {
        self.reads
            .get(key)
            .and_then(|r| r.as_ref().map(|e| e.version))
    }

    /// What the writes add to the namespace's keys and bytes.
    pub(super) fn deltas(&self) -> (i64, i64) {
        (self.keys_delta, self.bytes_delta)
    }

    /// The buffered writes, `None` for a delete.
    pub(super) fn written(&self) -> impl Iterator<Item = (&String, &Option<Entry>)> {
        self.writes.iter()
    }

    /// Fails with [`KvError::Changed`] unless every range listed holds the keys it held.
    pub(super) async fn check_ranges_in(&self, tx: &DatabaseTransaction) -> Result<(), KvError> {
        for range in &self.ranges {
            let now = self
                .ns
                .range(
                    tx,
                    &range.prefix,
                    &range.start,
                    range.through.as_deref(),
                    range.seen.len() + 1,
                )
                .await?;
            range.compare(now.iter().map(|(k, e)| (k.as_str(), e.version)))?;
        }
        Ok(())
    }

    /// Commits into the harness's in-memory store, by the same rules as the database's.
    pub fn commit_memory(self, kv: &Mutex<MemoryKv>) -> Result<(), KvError> {
        let mut kv = locked(kv);
        for (key, read) in &self.reads {
            let now = kv.entries.get(&MemoryKv::key(&self.ns, key));
            if now.map(|e| e.version) != read.as_ref().map(|e| e.version) {
                return Err(KvError::Changed(key.clone()));
            }
        }
        for range in &self.ranges {
            let now = kv.range(
                &self.ns,
                &range.prefix,
                &range.start,
                range.through.as_deref(),
                range.seen.len() + 1,
            );
            range.compare(now.iter().map(|(k, e)| (k.as_str(), e.version)))?;
        }
        if self.writes.is_empty() {
            return Ok(());
        }
        let space = MemoryKv::namespace(&self.ns);
        let (used_keys, used_bytes) = kv.usage.get(&space).copied().unwrap_or_default();
        let keys = used_keys.saturating_add_signed(self.keys_delta);
        let bytes = used_bytes.saturating_add_signed(self.bytes_delta);
        let quota = &self.ns.quota;
        if self.keys_delta > 0 && keys > quota.max_keys {
            return Err(KvError::Quota(format!(
                "kv quota: {} keys at most",
                quota.max_keys
            )));
        }
        if self.bytes_delta > 0 && bytes > quota.max_bytes {
            return Err(KvError::Quota(format!(
                "kv quota: {} bytes at most",
                quota.max_bytes
            )));
        }
        let last = kv.last_version.get(&space).copied().unwrap_or(0);
        let shift = match self.handed_out() {
            Some((low, high)) => {
                let shift = (last + 1).saturating_sub(low);
                kv.last_version.insert(space.clone(), high + shift);
                shift
            }
            None => 0,
        };
        kv.usage.insert(space, (keys, bytes));
        for (key, written) in self.writes {
            let at = MemoryKv::key(&self.ns, &key);
            match written {
                Some(mut entry) => {
                    entry.version += shift;
                    kv.entries.insert(at, entry);
                }
                None => {
                    kv.entries.remove(&at);
                }
            }
        }
        Ok(())
    }
}

impl RangeRead {
    /// Fails unless the committed keys of the range (and their versions) are those seen.
    fn compare<'a>(&self, now: impl Iterator<Item = (&'a str, u64)>) -> Result<(), KvError> {
        let mut seen = self.seen.iter();
        for (key, version) in now {
            match seen.next() {
                Some((k, v)) if k == key && *v == version => {}
                _ => return Err(KvError::Changed(key.to_owned())),
            }
        }
        match seen.next() {
            Some((k, _)) => Err(KvError::Changed(k.clone())),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::manifest::KvQuota;
    use std::sync::Arc;

    fn ns() -> Namespace {
        Namespace {
            installation_id: "i".into(),
            scope_id: "m".into(),
            quota: KvQuota {
                max_keys: 10,
                max_bytes: 10_000,
            },
        }
    }

    fn memory() -> (Store, Arc<Mutex<MemoryKv>>) {
        let kv = Arc::new(Mutex::new(MemoryKv::default()));
        (Store::Memory(kv.clone()), kv)
    }

    fn put(key: &str, value: &[u8], expected: Expect) -> BatchWrite {
        BatchWrite {
            key: key.into(),
            value: Some(value.to_vec()),
            expected,
        }
    }

    #[tokio::test]
    async fn a_batch_of_writes_is_made_whole_or_not_at_all() {
        let (store, kv) = memory();
        let mut txn = Txn::new(ns());
        let Batch::Stored(first) = txn
            .write_many(
                &store,
                &[put("a", b"1", Expect::Absent), put("b", b"2", Expect::Any)],
            )
            .await
            .unwrap()
        else {
            panic!("stored");
        };
        assert!(first[0] > 0 && first[1] > first[0]);
        // The second write's expectation fails: the first is not made either.
        let refused = txn
            .write_many(
                &store,
                &[
                    put("c", b"3", Expect::Absent),
                    put("a", b"x", Expect::Version(first[0] + 100)),
                ],
            )
            .await
            .unwrap();
        let Batch::Conflict(1, Some(found)) = refused else {
            panic!("a conflict at index 1: {refused:?}");
        };
        assert_eq!(found.value, b"1");
        assert_eq!(txn.get(&store, "c").await.unwrap(), None);
        // A batch over the quota writes nothing (ten keys at most; two are used).
        let many: Vec<BatchWrite> = (0..9)
            .map(|i| put(&format!("k{i}"), b"v", Expect::Any))
            .collect();
        assert!(matches!(
            txn.write_many(&store, &many).await,
            Err(KvError::Quota(_))
        ));
        assert_eq!(txn.get(&store, "k0").await.unwrap(), None);
        // Duplicates are refused; a delete and a conditional write pass together.
        assert!(matches!(
            txn.write_many(
                &store,
                &[put("d", b"1", Expect::Any), put("d", b"2", Expect::Any)]
            )
            .await,
            Err(KvError::Invalid(_))
        ));
        let deleted = txn
            .write_many(
                &store,
                &[
                    BatchWrite {
                        key: "b".into(),
                        value: None,
                        expected: Expect::Version(first[1]),
                    },
                    put("a", b"one", Expect::Version(first[0])),
                ],
            )
            .await
            .unwrap();
        assert!(matches!(&deleted, Batch::Stored(v) if v[0] == 0 && v[1] > first[1]));
        let got = txn
            .get_many(&store, &["a".into(), "b".into(), "c".into()])
            .await
            .unwrap();
        assert_eq!(got[0].as_ref().unwrap().value, b"one");
        assert!(got[1].is_none() && got[2].is_none());
        txn.commit_memory(&kv).unwrap();
        assert_eq!(store.get(&ns(), "a").await.unwrap().unwrap().value, b"one");
        assert_eq!(store.get(&ns(), "b").await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_transaction_reads_its_own_writes_and_nobody_else_does_until_it_commits() {
        let (store, kv) = memory();
        let mut txn = Txn::new(ns());
        let Cas::Stored(v) = txn
            .compare_and_swap(&store, "seen/1", None, b"x")
            .await
            .unwrap()
        else {
            panic!("stored");
        };
        assert_eq!(txn.get(&store, "seen/1").await.unwrap().unwrap().version, v);
        assert_eq!(txn.increment(&store, "n", 2).await.unwrap(), 2);
        assert_eq!(txn.increment(&store, "n", 3).await.unwrap(), 5);
        let (listed, _) = txn.list(&store, "", None, 10).await.unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!(store.get(&ns(), "seen/1").await.unwrap(), None);
        txn.commit_memory(&kv).unwrap();
        assert_eq!(
            store.get(&ns(), "seen/1").await.unwrap().unwrap().version,
            v
        );
        assert_eq!(store.usage(&ns()).await.unwrap(), (2, 9));
    }

    #[tokio::test]
    async fn a_batched_read_answers_in_order_and_guards_the_commit_like_single_reads() {
        let (store, kv) = memory();
        store
            .compare_and_swap(&ns(), "a", None, b"1")
            .await
            .unwrap();
        store
            .compare_and_swap(&ns(), "b", None, b"2")
            .await
            .unwrap();
        let mut txn = Txn::new(ns());
        txn.compare_and_swap(&store, "mine", None, b"w")
            .await
            .unwrap();
        let keys: Vec<String> = ["b", "missing", "mine", "a", "b"]
            .iter()
            .map(|k| (*k).to_owned())
            .collect();
        let got = txn.get_many(&store, &keys).await.unwrap();
        let values: Vec<Option<&[u8]>> = got
            .iter()
            .map(|e| e.as_ref().map(|e| e.value.as_slice()))
            .collect();
        assert_eq!(
            values,
            [
                Some(&b"2"[..]),
                None,
                Some(&b"w"[..]),
                Some(&b"1"[..]),
                Some(&b"2"[..])
            ]
        );
        assert!(matches!(
            txn.get_many(&store, &["bad\u{0}key".into()]).await,
            Err(KvError::Invalid(_))
        ));
        // A key the batch found absent is guarded too: another writer creating it meanwhile
        // fails this commit.
        store
            .compare_and_swap(&ns(), "missing", None, b"x")
            .await
            .unwrap();
        assert!(matches!(
            txn.commit_memory(&kv),
            Err(KvError::Changed(k)) if k == "missing"
        ));
        assert_eq!(store.get(&ns(), "mine").await.unwrap(), None);
    }

    #[tokio::test]
    async fn adding_nothing_to_a_counter_reads_it_without_writing() {
        let (store, kv) = memory();
        store.increment(&ns(), "n", 4).await.unwrap();
        let mut reader = Txn::new(ns());
        assert_eq!(reader.increment(&store, "n", 0).await.unwrap(), 4);
        assert_eq!(reader.increment(&store, "absent", 0).await.unwrap(), 0);
        assert!(!reader.writes());
        // Still guarded: a change meanwhile fails the reader's commit.
        store.increment(&ns(), "n", 1).await.unwrap();
        assert!(matches!(
            reader.commit_memory(&kv),
            Err(KvError::Changed(k)) if k == "n"
        ));
        assert_eq!(store.get(&ns(), "absent").await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_transaction_whose_read_changed_commits_nothing() {
        let (store, kv) = memory();
        let mut first = Txn::new(ns());
        let mut second = Txn::new(ns());
        first.increment(&store, "n", 1).await.unwrap();
        second.increment(&store, "n", 1).await.unwrap();
        second
            .compare_and_swap(&store, "other", None, b"y")
            .await
            .unwrap();
        first.commit_memory(&kv).unwrap();
        assert!(matches!(
            second.commit_memory(&kv),
            Err(KvError::Changed(k)) if k == "n"
        ));
        assert_eq!(store.get(&ns(), "other").await.unwrap(), None);
        assert_eq!(store.usage(&ns()).await.unwrap(), (1, 2));
    }

    #[tokio::test]
    async fn a_key_added_inside_a_listed_range_fails_the_commit() {
        let (store, kv) = memory();
        store
            .compare_and_swap(&ns(), "m/a", None, b"1")
            .await
            .unwrap();
        let mut lister = Txn::new(ns());
        let (items, next) = lister.list(&store, "m/", None, 10).await.unwrap();
        assert_eq!((items.len(), next), (1, None));
        lister
            .compare_and_swap(&store, "count", None, b"1")
            .await
            .unwrap();
        store
            .compare_and_swap(&ns(), "m/b", None, b"2")
            .await
            .unwrap();
        assert!(matches!(lister.commit_memory(&kv), Err(KvError::Changed(k)) if k == "m/b"));
        // Outside the range, a new key changes nothing the listing saw.
        let mut lister = Txn::new(ns());
        lister.list(&store, "m/", None, 10).await.unwrap();
        lister
            .compare_and_swap(&store, "count", None, b"1")
            .await
            .unwrap();
        store
            .compare_and_swap(&ns(), "z", None, b"3")
            .await
            .unwrap();
        lister.commit_memory(&kv).unwrap();
    }

    #[tokio::test]
    async fn versions_handed_out_behind_a_later_commit_are_moved_above_it() {
        let (store, kv) = memory();
        let mut early = Txn::new(ns());
        let Cas::Stored(handed) = early
            .compare_and_swap(&store, "a", None, b"1")
            .await
            .unwrap()
        else {
            panic!("stored");
        };
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        let Cas::Stored(later) = store
            .compare_and_swap(&ns(), "b", None, b"2")
            .await
            .unwrap()
        else {
            panic!("stored");
        };
        assert!(later > handed);
        early.commit_memory(&kv).unwrap();
        let committed = store.get(&ns(), "a").await.unwrap().unwrap().version;
        assert!(committed > later, "{committed} > {later}");
        // The version handed out matches nothing: a swap with it conflicts.
        assert!(matches!(
            store
                .compare_and_swap(&ns(), "a", Some(handed), b"x")
                .await
                .unwrap(),
            Cas::Conflict(_)
        ));
    }

    #[tokio::test]
    async fn a_listing_hides_deleted_keys_and_shows_new_ones_in_order() {
        let (store, _) = memory();
        for key in ["p/1", "p/2", "p/3", "p/4"] {
            store
                .compare_and_swap(&ns(), key, None, b"v")
                .await
                .unwrap();
        }
        let mut txn = Txn::new(ns());
        assert!(txn.delete(&store, "p/1", None).await.unwrap());
        assert!(txn.delete(&store, "p/2", None).await.unwrap());
        txn.compare_and_swap(&store, "p/25", None, b"w")
            .await
            .unwrap();
        let (items, next) = txn.list(&store, "p/", None, 2).await.unwrap();
        let keys: Vec<&str> = items.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["p/25", "p/3"]);
        assert_eq!(next.as_deref(), Some("p/3"));
        let (items, next) = txn.list(&store, "p/", next.as_deref(), 2).await.unwrap();
        let keys: Vec<&str> = items.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!((keys, next), (vec!["p/4"], None));
    }
}
