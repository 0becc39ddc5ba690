//! What this engine last committed to each namespace, so that an optimistic run there can
//! start from it instead of reading the database ([`Txn::optimistic`]): what it answers from
//! here is checked at the run's commit like any read, and a run whose optimism failed runs
//! again reading everything.
//!
//! Invariant: a namespace's entry holds, for each key it names, exactly what was committed
//! while the namespace's usage row was at the entry's `usage` — a state the row never comes
//! back to once it leaves it (see `group::vouched`) — so a commit that finds the row there
//! vouches for every key answered from the entry. An entry may name any subset of the keys.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use super::{Entry, Txn, locked};

/// Most keys remembered per namespace.
const MAX_KEYS: usize = 16;
/// Larger values are not remembered (they are read again).
const MAX_VALUE: usize = 1 << 10;
/// Most bytes of keys and values remembered per namespace: with [`MAX_KEYS`], what bounds the
/// memory (about 5 KiB a namespace with its overhead).
const MAX_BYTES: usize = 4 << 10;
/// Namespaces remembered when the configuration does not say.
pub const DEFAULT_NAMESPACES: usize = 4_096;

/// A namespace's ids: (installation, scope).
type Ids = (String, String);

/// A namespace's usage row: keys, bytes, last version.
pub(super) type Usage = (i64, i64, i64);

/// What a namespace held while its usage row was at `usage`: each key named, its entry then
/// (`None`: absent).
#[derive(Debug)]
pub struct Known {
    pub(super) usage: Usage,
    pub(super) entries: BTreeMap<String, Option<Entry>>,
}

/// The namespaces this engine committed to last, at most a configured number of them.
#[derive(Debug)]
pub struct Recent {
    capacity: usize,
    spaces: Mutex<HashMap<Ids, Arc<Known>>>,
}

impl Recent {
    /// Remembers up to `capacity` namespaces; 0 remembers none (no run is optimistic).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            spaces: Mutex::new(HashMap::new()),
        }
    }

    /// Whether runs may be optimistic at all.
    pub fn enabled(&self) -> bool {
        self.capacity > 0
    }

    pub(super) fn get(&self, ids: &Ids) -> Option<Arc<Known>> {
        locked(&self.spaces).get(ids).cloned()
    }

    /// Remembers what a commit left known, in place of what was known before. When full, an
    /// arbitrary namespace is forgotten to make room: any of them may be read again.
    pub fn put(&self, ids: Ids, known: Known) {
        if self.capacity == 0 {
            return;
        }
        let mut spaces = locked(&self.spaces);
        if spaces.len() >= self.capacity && !spaces.contains_key(&ids) {
            let evicted = spaces.keys().next().cloned();
            if let Some(evicted) = evicted {
                spaces.remove(&evicted);
            }
        }
        spaces.insert(ids, Arc::new(known));
    }

    /// Forgets a namespace, whose remembered state turned out stale.
    pub fn forget(&self, ids: &Ids) {
        locked(&self.spaces).remove(ids);
    }
}

/// What a transaction leaves known once it commits onto `before` (its namespace's usage row
/// before the commit; `None`: unknown), moving the row to `after`, its handed-out versions up
/// by `shift`: what it read (checked at the commit, so still committed then) and wrote — and,
/// when the row was still at what the transaction started from, what was known then. Within
/// the bounds, first the keys it read (which the next run likely reads again), then what was
/// known before, then keys it only inserted (marks, rarely read again).
pub(super) fn after(txn: &Txn, before: Option<Usage>, after: Usage, shift: u64) -> Known {
    let written: BTreeMap<&String, Option<Entry>> = txn
        .written()
        .map(|(key, w)| {
            let shifted = w.as_ref().map(|e| Entry {
                value: e.value.clone(),
                version: e.version + shift,
            });
            (key, shifted)
        })
        .collect();
    let mut kept = Bounded::default();
    for (key, read) in txn.plain_reads() {
        match written.get(key) {
            Some(now) => kept.offer(key, now),
            None => kept.offer(key, read),
        }
    }
    // What was known while the row was where this commit found it still holds for every key
    // the transaction did not touch: what it started from, else what is remembered now.
    let known = txn
        .adopted()
        .filter(|k| before == Some(k.usage))
        .map(|k| k.entries.clone())
        .or_else(|| {
            txn.remembered()
                .filter(|k| before == Some(k.usage))
                .map(|k| k.entries.clone())
        });
    for (key, entry) in known.iter().flatten() {
        if !txn.touched(key) {
            kept.offer(key, entry);
        }
    }
    for (key, now) in &written {
        if !kept.entries.contains_key(*key) {
            kept.offer(key, now);
        }
    }
    Known {
        usage: after,
        entries: kept.entries,
    }
}

/// Entries within [`MAX_KEYS`] and [`MAX_BYTES`], values within [`MAX_VALUE`].
#[derive(Default)]
struct Bounded {
    entries: BTreeMap<String, Option<Entry>>,
    bytes: usize,
}

impl Bounded {
    /// Keeps `entry` at `key` if it fits; leaving one out only means reading it again.
    fn offer(&mut self, key: &str, entry: &Option<Entry>) {
        let value = entry.as_ref().map_or(0, |e| e.value.len());
        let size = key.len() + value;
        if value > MAX_VALUE
            || self.entries.len() >= MAX_KEYS
            || self.bytes + size > MAX_BYTES
            || self.entries.contains_key(key)
        {
            return;
        }
        self.bytes += size;
        self.entries.insert(key.to_owned(), entry.clone());
    }
}

#[cfg(test)]
mod tests {
    use sea_orm::DatabaseConnection;

    use super::super::{BatchWrite, Cas, Expect, KvError, Namespace, Store};
    use super::*;
    use crate::plugins::manifest::KvQuota;

    fn ns() -> Namespace {
        Namespace {
            installation_id: "i".into(),
            scope_id: "m".into(),
            quota: KvQuota {
                max_keys: 100,
                max_bytes: 100_000,
            },
        }
    }

    /// Commits `txn` on its own and remembers what it leaves known, as the runtime does.
    async fn commit(store: &Store, txn: Txn) -> Result<(), KvError> {
        let (ids, learned) = (txn.ids(), txn.learned());
        store.commit(txn).await?;
        if let (Some(recent), Some(known)) = (store.recent(), learned.take()) {
            recent.put(ids, known);
        }
        Ok(())
    }

    #[tokio::test]
    async fn an_optimistic_run_starts_from_what_this_engine_committed_and_its_commit_checks_it() {
        crate::db::on_both(starts_from_what_was_committed).await;
    }

    async fn starts_from_what_was_committed(db: DatabaseConnection) {
        let store = Store::database(db.clone());
        // Another engine on the same database, with a memory of its own.
        let elsewhere = Store::database(db);
        let optimistic = || Txn::new(ns()).optimistic(&store);

        let mut first = optimistic();
        assert_eq!(first.increment(&store, "n", 1).await.unwrap(), 1);
        assert!(!first.leaned(), "nothing remembered yet: it read");
        commit(&store, first).await.unwrap();

        let mut second = optimistic();
        assert_eq!(second.increment(&store, "n", 1).await.unwrap(), 2);
        assert!(second.leaned(), "answered from what the first left");
        commit(&store, second).await.unwrap();
        assert_eq!(store.get(&ns(), "n").await.unwrap().unwrap().value, b"2");

        // A read-only run is answered from memory too, and its commit vouches for it.
        let mut reader = optimistic();
        assert_eq!(reader.get(&store, "n").await.unwrap().unwrap().value, b"2");
        assert!(reader.leaned());
        commit(&store, reader).await.unwrap();
        // One whose first key is not remembered reads, and the usage row alone answers it;
        // what it read joins what is remembered (`n`), which still holds.
        let mut reader = optimistic();
        assert_eq!(reader.get(&store, "cfg").await.unwrap(), None);
        assert!(!reader.leaned());
        assert_eq!(reader.get(&store, "other").await.unwrap(), None);
        let (ids, learned) = (reader.ids(), reader.learned());
        assert!(store.unmoved(&reader).await.unwrap());
        store
            .recent()
            .unwrap()
            .put(ids.clone(), learned.take().unwrap());
        let known = store.recent().unwrap().get(&ids).unwrap();
        assert_eq!(
            known.entries.keys().collect::<Vec<_>>(),
            ["cfg", "n", "other"],
            "{known:?}"
        );

        // Another engine moves the key on: what is remembered here is stale, and every commit
        // that relied on it says so.
        elsewhere.increment(&ns(), "n", 10).await.unwrap();
        let mut stale = optimistic();
        assert_eq!(
            stale.increment(&store, "n", 1).await.unwrap(),
            3,
            "answered from memory"
        );
        assert!(matches!(commit(&store, stale).await, Err(KvError::Changed(k)) if k == "n"));
        let mut reader = optimistic();
        assert_eq!(reader.get(&store, "n").await.unwrap().unwrap().value, b"2");
        assert!(matches!(commit(&store, reader).await, Err(KvError::Changed(k)) if k == "n"));
        // Not optimistic, a run reads what is committed.
        let mut careful = Txn::new(ns());
        assert_eq!(careful.increment(&store, "n", 1).await.unwrap(), 13);
        assert_eq!(store.get(&ns(), "n").await.unwrap().unwrap().value, b"12");
    }

    #[tokio::test]
    async fn a_key_an_optimistic_run_assumed_absent_is_checked_when_it_commits() {
        crate::db::on_both(assumed_absent).await;
    }

    async fn assumed_absent(db: DatabaseConnection) {
        let store = Store::database(db.clone());
        let elsewhere = Store::database(db);
        elsewhere
            .compare_and_swap(&ns(), "seen/1", None, b"theirs")
            .await
            .unwrap();
        let mut guess = Txn::new(ns()).optimistic(&store);
        let swapped = guess
            .compare_and_swap(&store, "seen/1", None, b"mine")
            .await
            .unwrap();
        assert!(
            matches!(swapped, Cas::Stored(_)),
            "assumed absent: {swapped:?}"
        );
        assert!(guess.leaned());
        assert!(matches!(commit(&store, guess).await, Err(KvError::Changed(k)) if k == "seen/1"));
        let mut batch = Txn::new(ns()).optimistic(&store);
        let insert = |key: &str| BatchWrite {
            key: key.into(),
            value: Some(b"mine".to_vec()),
            expected: Expect::Absent,
        };
        batch
            .write_many(&store, &[insert("seen/2"), insert("seen/1")])
            .await
            .unwrap();
        assert!(matches!(commit(&store, batch).await, Err(KvError::Changed(k)) if k == "seen/1"));
        assert_eq!(
            store.get(&ns(), "seen/1").await.unwrap().unwrap().value,
            b"theirs"
        );
        assert_eq!(store.get(&ns(), "seen/2").await.unwrap(), None);
        // Not optimistic, the same insert reads and finds it.
        let mut careful = Txn::new(ns());
        let swapped = careful
            .compare_and_swap(&store, "seen/1", None, b"mine")
            .await
            .unwrap();
        assert!(matches!(swapped, Cas::Conflict(Some(_))), "{swapped:?}");
    }

    #[tokio::test]
    async fn a_quota_is_never_refused_on_remembered_usage() {
        crate::db::on_both(|db| async move {
            let store = Store::database(db.clone());
            let elsewhere = Store::database(db);
            let small = Namespace {
                quota: KvQuota {
                    max_keys: 3,
                    max_bytes: 1_000,
                },
                ..ns()
            };
            let mut full = Txn::new(small.clone()).optimistic(&store);
            for key in ["a", "b", "c"] {
                full.increment(&store, key, 1).await.unwrap();
            }
            commit(&store, full).await.unwrap();
            // Remembered: three keys of three. Another engine frees one.
            let a = elsewhere.get(&small, "a").await.unwrap().unwrap();
            assert!(
                elsewhere
                    .delete(&small, "a", Some(a.version))
                    .await
                    .unwrap()
            );
            let mut txn = Txn::new(small.clone()).optimistic(&store);
            assert_eq!(
                txn.increment(&store, "b", 1).await.unwrap(),
                2,
                "remembered"
            );
            let swapped = txn.compare_and_swap(&store, "d", None, b"1").await;
            assert!(matches!(swapped, Ok(Cas::Stored(_))), "{swapped:?}");
            commit(&store, txn).await.unwrap();
            assert_eq!(store.usage(&small).await.unwrap().0, 3);
            // Full for real: refused.
            let mut txn = Txn::new(small.clone()).optimistic(&store);
            let swapped = txn.compare_and_swap(&store, "e", None, b"1").await;
            assert!(matches!(swapped, Err(KvError::Quota(_))), "{swapped:?}");
        })
        .await;
    }

    #[tokio::test]
    async fn what_a_commit_leaves_known_is_bounded_and_large_values_are_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::database(crate::db::test_sqlite(dir.path()).await.conn);
        let mut txn = Txn::new(ns()).optimistic(&store);
        txn.compare_and_swap(&store, "big", None, &[b'x'; MAX_VALUE + 1])
            .await
            .unwrap();
        for i in 0..MAX_KEYS + 4 {
            txn.increment(&store, &format!("k{i:02}"), 1).await.unwrap();
        }
        let learned = txn.learned();
        store.commit(txn).await.unwrap();
        let known = learned.take().unwrap();
        assert_eq!(known.entries.len(), MAX_KEYS);
        assert!(!known.entries.contains_key("big"));
        // Within the bytes too, keys the run read first: five values of 1,000 bytes.
        let mut txn = Txn::new(ns()).optimistic(&store);
        assert_eq!(txn.increment(&store, "k00", 0).await.unwrap(), 1);
        for i in 0..5 {
            txn.compare_and_swap(&store, &format!("v{i}"), None, &[b'v'; 1_000])
                .await
                .unwrap();
        }
        let learned = txn.learned();
        store.commit(txn).await.unwrap();
        let known = learned.take().unwrap();
        let bytes: usize = known
            .entries
            .iter()
            .map(|(k, e)| k.len() + e.as_ref().map_or(0, |e| e.value.len()))
            .sum();
        assert!(bytes <= MAX_BYTES, "{bytes}");
        assert!(
            known.entries.contains_key("k00"),
            "the key it read comes first"
        );
        assert_eq!(known.entries.len(), 5, "k00 and four values: {known:?}");
        assert_eq!(
            known.usage,
            {
                let (keys, bytes) = store.usage(&ns()).await.unwrap();
                (keys as i64, bytes as i64, known.usage.2)
            },
            "the usage row the commit left"
        );
    }

    #[test]
    fn the_memory_forgets_a_namespace_when_full_and_remembers_none_when_off() {
        let recent = Recent::new(2);
        for scope in ["a", "b", "c"] {
            recent.put(
                ("i".into(), scope.into()),
                Known {
                    usage: (1, 1, 1),
                    entries: BTreeMap::new(),
                },
            );
        }
        assert_eq!(locked(&recent.spaces).len(), 2);
        assert!(recent.get(&("i".into(), "c".into())).is_some());
        let none = Recent::new(0);
        assert!(!none.enabled());
        none.put(
            ("i".into(), "a".into()),
            Known {
                usage: (1, 1, 1),
                entries: BTreeMap::new(),
            },
        );
        assert!(none.get(&("i".into(), "a".into())).is_none());
    }
}
