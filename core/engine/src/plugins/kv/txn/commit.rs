//! Committing one transaction on its own: inside a database transaction the caller commits,
//! or into the harness's memory.
//!
//! Invariant: the namespace's usage row is locked (charged, or held for share) before any read
//! is checked, so the checks and the writes see one state.

use std::collections::BTreeMap;
use std::sync::Mutex;

use sea_orm::{DatabaseTransaction, FromQueryResult, Value};

use super::super::{KvError, MemoryKv, group, locked, lookups, version_of};
use super::{CHUNK, RangeRead, Txn};
use crate::db::sql::{self, RowLock};

impl Txn {
    /// Checks the reads and applies the writes inside `tx`, a transaction the caller commits
    /// (with work of its own); a write transaction when there is something to write. [`KvError::Changed`]: something read changed; the
    /// caller rolls back and may run the whole thing again. [`KvError::Quota`]: concurrent
    /// commits filled the quota meanwhile.
    pub async fn commit_in(self, tx: &DatabaseTransaction) -> Result<(), KvError> {
        if self.writes.is_empty() && self.reads() == 0 {
            return Ok(());
        }
        if self.writes.is_empty() {
            return self.check_only_in(tx).await;
        }
        let shift = self.charge_in(tx).await?;
        self.check_in(tx).await?;
        self.apply_in(tx, shift).await
    }

    /// Checks the reads of a transaction that writes nothing, holding off the namespace's
    /// committers meanwhile so the checks see one state (on SQLite, a transaction reads one
    /// snapshot anyway).
    async fn check_only_in(&self, tx: &DatabaseTransaction) -> Result<(), KvError> {
        #[derive(FromQueryResult)]
        struct Held {
            keys: i64,
            bytes: i64,
            last_version: i64,
        }
        let lock = sql::for_update(tx, RowLock::Share);
        let held: Option<Held> = sql::query(
            &format!(
                "SELECT keys, bytes, last_version FROM plugin_kv_usage \
                 WHERE installation_id = ? AND scope_id = ?{lock}"
            ),
            self.ns.ids(),
        )
        .one(tx)
        .await?;
        let now = held.map_or((0, 0, 0), |h| (h.keys, h.bytes, h.last_version));
        // A namespace still as first read vouches for every key read since (`group`).
        if !self.vouched_by(now) {
            self.check_in(tx).await?;
        }
        // What it read is what the namespace holds now: worth remembering.
        self.applying(Some(now), now, 0);
        Ok(())
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
        let shift = version_of(charged.last_version).saturating_sub(high);
        self.applying(
            None,
            (charged.keys, charged.bytes, charged.last_version),
            shift,
        );
        Ok(shift)
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

    /// Fails with [`KvError::Changed`] unless every range listed holds the keys it held.
    pub(in crate::plugins::kv) async fn check_ranges_in(
        &self,
        tx: &DatabaseTransaction,
    ) -> Result<(), KvError> {
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
