//! One invocation's view of its namespace: reads see the invocation's own writes, writes are
//! buffered, and all of them commit at once — or none does.
//!
//! Invariant: a commit applies the writes only if every key and range the transaction read is
//! still as it read it (optimistic concurrency, checked under the namespace's lock), so the
//! transactions that commit are serializable, and compare-and-swap keeps its meaning across
//! concurrent invocations. Committed versions stay strictly increasing per namespace: a version
//! handed out inside a transaction is committed as is, or — when another commit in the
//! namespace got ahead meanwhile — shifted above it, so no stale `expected` matches it later.

/// Committing one transaction on its own.
mod commit;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use super::{
    Batch, BatchWrite, Cas, Entry, Expect, KvError, MAX_BATCH, MAX_LIST, MAX_VALUE_BYTES,
    Namespace, Start, Store, check_key, check_prefix, locked, next_count, next_version, page,
    recent, version_of,
};

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
    /// Whether this transaction may answer from what this engine last committed and assume
    /// that keys it inserts are absent, leaving both to its commit to check.
    optimistic: bool,
    /// What this engine remembers, when optimistic.
    recent: Option<Arc<recent::Recent>>,
    /// What this engine knew of the namespace when the first access adopted it.
    adopted: Option<Arc<recent::Known>>,
    /// Keys assumed absent without reading them (also in `reads`, as absent).
    guessed: BTreeSet<String>,
    /// Filled by a commit that applies this transaction: what it leaves known.
    learned: Learned,
}

/// What a transaction's commit leaves known of its namespace ([`recent::Known`]), once it is
/// planned; kept by the runtime, which remembers it when the commit succeeds.
#[derive(Debug, Clone, Default)]
pub struct Learned(Arc<Mutex<Option<recent::Known>>>);

impl Learned {
    pub fn take(&self) -> Option<recent::Known> {
        locked(&self.0).take()
    }
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
            optimistic: false,
            recent: None,
            adopted: None,
            guessed: BTreeSet::new(),
            learned: Learned::default(),
        }
    }

    /// Makes this transaction optimistic when `store` remembers namespaces: it starts from
    /// what this engine last committed to its namespace rather than reading it, and assumes
    /// that a key it inserts (compare-and-swap from absent) is absent. Its commit checks both;
    /// when either was wrong it fails as changed, and the caller runs it again, not
    /// optimistic. Only for runs that may run again: nothing they do leaves the invocation.
    pub fn optimistic(mut self, store: &Store) -> Self {
        self.recent = store.recent().filter(|r| r.enabled()).cloned();
        self.optimistic = self.recent.is_some();
        self
    }

    /// What this engine remembers of the namespace now.
    pub(super) fn remembered(&self) -> Option<Arc<recent::Known>> {
        self.recent.as_ref()?.get(&self.ids())
    }

    /// Whether this transaction answered from what was remembered or assumed a key absent:
    /// when its commit fails as changed, optimism may be why.
    pub fn leaned(&self) -> bool {
        self.adopted.is_some() || !self.guessed.is_empty()
    }

    /// Where the commit that applies this transaction leaves what it knows.
    pub fn learned(&self) -> Learned {
        self.learned.clone()
    }

    /// On the first access of an optimistic transaction: starts from what this engine last
    /// committed to the namespace, when it remembers it — its usage row stands as read, so a
    /// commit that finds the row unmoved vouches for what was answered from it.
    /// Only when what is remembered is `useful` (it knows a key asked for): otherwise the
    /// first read reads the usage row with its key, which costs the same and leaves a reader of
    /// one key nothing to check. Keys assumed absent before it are checked whatever the row says.
    fn adopt(&mut self, useful: impl Fn(&recent::Known) -> bool) {
        if !self.optimistic
            || self.usage.is_some()
            || self.plain_reads().next().is_some()
            || !self.ranges.is_empty()
        {
            return;
        }
        let Some(known) = self.remembered().filter(|k| useful(k)) else {
            return;
        };
        let (keys, bytes, last) = known.usage;
        self.usage = Some((version_of(keys), version_of(bytes)));
        self.read_last = Some(last);
        self.adopted = Some(known);
    }

    /// What was remembered at `key` when this transaction started from it, recorded as read.
    fn recalled(&mut self, key: &str) -> Option<Option<Entry>> {
        let entry = self.adopted.as_ref()?.entries.get(key)?.clone();
        if let Some(e) = &entry {
            self.highest = self.highest.max(e.version);
        }
        self.reads.insert(key.to_owned(), entry.clone());
        Some(entry)
    }

    /// The entry at `key` for a write that expects it absent: in an optimistic transaction,
    /// assumed absent unless known otherwise, for the commit to check.
    async fn expecting_absent(
        &mut self,
        store: &Store,
        key: &str,
    ) -> Result<Option<Entry>, KvError> {
        if !self.optimistic || self.writes.contains_key(key) || self.reads.contains_key(key) {
            return self.current(store, key).await;
        }
        self.adopt(|k| k.entries.contains_key(key));
        if let Some(entry) = self.recalled(key) {
            return Ok(entry);
        }
        self.reads.insert(key.to_owned(), None);
        self.guessed.insert(key.to_owned());
        Ok(None)
    }

    /// The commit that applies this transaction found its namespace's usage row at `before`
    /// (`None`: unknown) and moves it to `after`, shifting handed-out versions by `shift`.
    pub(super) fn applying(&self, before: Option<recent::Usage>, after: recent::Usage, shift: u64) {
        if self.optimistic {
            *locked(&self.learned.0) = Some(recent::after(self, before, after, shift));
        }
    }

    /// This transaction with its writes dropped: what a failed run read, to be checked.
    pub fn reads_only(mut self) -> Self {
        self.writes.clear();
        self.keys_delta = 0;
        self.bytes_delta = 0;
        self
    }

    /// Whether the usage row at `now` alone vouches for everything this transaction read: it
    /// is as the first read found it, and nothing was assumed absent or listed.
    pub(super) fn vouched_by(&self, now: recent::Usage) -> bool {
        self.guessed.is_empty() && self.ranges.is_empty() && self.usage_as_read() == Some(now)
    }

    /// What was adopted from what this engine remembered.
    pub(super) fn adopted(&self) -> Option<&recent::Known> {
        self.adopted.as_deref()
    }

    /// Keys assumed absent without reading them.
    pub(super) fn guessed(&self) -> impl Iterator<Item = &str> {
        self.guessed.iter().map(String::as_str)
    }

    /// What was read from the committed state, keys assumed absent left out.
    pub(super) fn plain_reads(&self) -> impl Iterator<Item = (&String, &Option<Entry>)> {
        self.reads
            .iter()
            .filter(|(k, _)| !self.guessed.contains(k.as_str()))
    }

    /// Whether this transaction read or wrote `key`.
    pub(super) fn touched(&self, key: &str) -> bool {
        self.reads.contains_key(key) || self.writes.contains_key(key)
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
        self.adopt(|k| k.entries.contains_key(key));
        if let Some(entry) = self.recalled(key) {
            return Ok(entry);
        }
        // The first read also learns the usage, which the first write that grows the
        // namespace checks against the quota.
        let entry = if self.usage.is_none() {
            let (entry, usage, last) = store.read_with_usage(&self.ns, key).await?;
            self.usage = Some(usage);
            // The usage row vouches for what was read from it on (`group::as_read`): only when
            // nothing was read before it (a batched read or a listing reads no usage; keys
            // assumed absent are checked whatever the row says).
            if self.plain_reads().next().is_none() && self.ranges.is_empty() {
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

    /// Why adding `keys` and `bytes` to this transaction's changes on top of `used` would pass
    /// the quota, if it would.
    fn refusal(
        &self,
        (used_keys, used_bytes): (u64, u64),
        keys: i64,
        bytes: i64,
    ) -> Option<KvError> {
        let quota = &self.ns.quota;
        if keys > 0 && used_keys.saturating_add_signed(self.keys_delta + keys) > quota.max_keys {
            return Some(KvError::Quota(format!(
                "kv quota: {} keys at most",
                quota.max_keys
            )));
        }
        let after = used_bytes.saturating_add_signed(self.bytes_delta + bytes);
        (bytes > 0 && after > quota.max_bytes).then(|| {
            KvError::Quota(format!(
                "kv quota: {} bytes at most ({} used)",
                quota.max_bytes,
                used_bytes.saturating_add_signed(self.bytes_delta)
            ))
        })
    }

    /// Checks a change of usage against the quota (shrinking always passes, so a namespace
    /// over a lowered quota can still clean up) and counts it. The commit checks again against
    /// what concurrent commits added.
    async fn charge(&mut self, store: &Store, keys: i64, bytes: i64) -> Result<(), KvError> {
        if keys > 0 || bytes > 0 {
            self.adopt(|_| true);
            let (mut used_keys, mut used_bytes) = match self.usage {
                Some(u) => u,
                None => {
                    let (u, last) = store.usage_with_last(&self.ns).await?;
                    self.usage = Some(u);
                    // The row vouches for what is read from here on (keys assumed absent
                    // are checked whatever the row says).
                    if self.plain_reads().next().is_none() && self.ranges.is_empty() {
                        self.read_last = last;
                    }
                    u
                }
            };
            // A refusal is never made on remembered usage, which may be stale: the usage is
            // read, and the remembered row no longer vouches for anything (its keys and bytes
            // are replaced, so it is checked key by key at commit).
            if self.adopted.is_some()
                && self.read_last.is_some()
                && self.refusal((used_keys, used_bytes), keys, bytes).is_some()
            {
                let ((keys, bytes), _) = store.usage_with_last(&self.ns).await?;
                (used_keys, used_bytes) = (keys, bytes);
                self.usage = Some((keys, bytes));
                self.read_last = None;
            }
            if let Some(refused) = self.refusal((used_keys, used_bytes), keys, bytes) {
                return Err(refused);
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
        let current = match expected {
            None => self.expecting_absent(store, key).await?,
            Some(_) => self.current(store, key).await?,
        };
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
        self.adopt(|k| keys.iter().any(|key| k.entries.contains_key(key)));
        for key in keys {
            if !self.touched(key) {
                self.recalled(key);
            }
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
            let current = match write.expected {
                Expect::Absent => self.expecting_absent(store, &write.key).await?,
                _ => self.current(store, &write.key).await?,
            };
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

    /// The versions this transaction handed out, lowest and highest.
    pub(super) fn handed_out(&self) -> Option<(u64, u64)> {
        let versions = self.writes.values().flatten().map(|e| e.version);
        let low = versions.clone().min()?;
        Some((low, versions.max().unwrap_or(low)))
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
}

#[cfg(test)]
mod tests;
