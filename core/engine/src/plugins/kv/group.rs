//! Committing the transactions of several invocations in one database transaction with a few
//! multi-row statements for all of them, instead of a transaction and five statements each:
//! when every statement is a round trip (to SQLite's worker thread, to PostgreSQL), the count
//! of statements is what bounds throughput.
//!
//! Invariant: each transaction is judged by the rules of a single commit ([`Txn::commit_in`]):
//! one whose reads changed, or whose writes would pass its quota, is left out whole and the
//! others commit. The namespaces of a group are distinct, so no transaction's check depends
//! on another one's writes; the usage rows, which every committer of a namespace locks first,
//! are locked here in one order, so two groups in two processes cannot deadlock.

use std::collections::{BTreeMap, BTreeSet};

use chrono::Utc;
use sea_orm::{DatabaseTransaction, DbBackend, DbErr, FromQueryResult, Value};

use super::{Entry, KvError, Txn, version_of};
use crate::db::held;
use crate::db::sql;

/// Rows per statement: under both engines' limits on bound values (6 values a row), and
/// key lookups per `UNION ALL` under SQLite's 500 terms of a compound select.
const CHUNK: usize = 200;
const _: () = assert!(CHUNK <= 500);

/// A namespace's ids: (installation, scope).
type Ids = (String, String);

/// A namespace's usage row: keys, bytes, last version.
type Usage = (i64, i64, i64);

/// What a transaction that passed its checks writes: its namespace's usage afterwards and how
/// far its handed-out versions move up.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    usage: Usage,
    shift: u64,
}

/// A namespace's usage row: keys, bytes, last version.
#[derive(FromQueryResult)]
struct UsageRow {
    installation_id: String,
    scope_id: String,
    keys: i64,
    bytes: i64,
    last_version: i64,
}

#[derive(FromQueryResult)]
struct VersionRow {
    installation_id: String,
    scope_id: String,
    key: String,
    version: i64,
}

/// `(?, ?, …)` rows of `width` values each, `n` of them.
fn rows(width: usize, n: usize) -> String {
    let row = format!("({})", sql::marks(width));
    vec![row.as_str(); n].join(", ")
}

/// Checks every transaction of a group inside `tx`, a write transaction: locks the namespaces'
/// usage rows, compares what each read with what is committed now, and works out each writer's
/// usage and version shift. Returns, per transaction in order, its plan or why it is left out.
/// A namespace met twice leaves the later transactions out as contended.
pub async fn check(
    tx: &DatabaseTransaction,
    txns: &[&Txn],
) -> Result<Vec<Result<Plan, KvError>>, DbErr> {
    let usage_reads = match sql::backend(tx) {
        DbBackend::Postgres => usage_locks(txns),
        // SQLite's writers take turns on the whole database: nothing to lock row by row.
        _ => usage_reads(txns),
    };
    let mut usage = Vec::new();
    for (statement, values) in usage_reads {
        usage.extend(sql::query(&statement, values).all::<UsageRow>(tx).await?);
    }
    // Only the keys of transactions whose usage row moved since they read are looked up, and
    // those assumed absent without a read.
    let locked = usage_map(&usage);
    let wanted: Vec<(usize, &str)> = txns
        .iter()
        .enumerate()
        .flat_map(|(i, t)| {
            let keys: Box<dyn Iterator<Item = &str>> = if vouched(t, &locked) {
                Box::new(t.guessed())
            } else {
                Box::new(t.read_keys())
            };
            keys.map(move |k| (i, k))
        })
        .collect();
    let mut versions = Vec::new();
    for (statement, values) in version_reads(txns, &wanted) {
        versions.extend(sql::query(&statement, values).all::<VersionRow>(tx).await?);
    }
    let mut plans = judged(txns, usage, versions);
    for (txn, plan) in txns.iter().zip(plans.iter_mut()) {
        if plan.is_ok() {
            match txn.check_ranges_in(tx).await {
                Ok(()) => {}
                Err(KvError::Db(e)) => return Err(e),
                Err(other) => *plan = Err(other),
            }
        }
    }
    Ok(plans)
}

/// The statements that read, for [`judge`], what [`check`] reads: the namespaces' usage rows
/// and the versions of every key read, each row named by its `what` column. For a SQLite
/// write transaction, whose write lock keeps them as read until it ends; the transactions must
/// not have listed ranges ([`Txn::listed`]).
pub fn reads(txns: &[&Txn]) -> Vec<(String, Vec<Value>)> {
    let wanted: Vec<(usize, &str)> = txns
        .iter()
        .enumerate()
        .flat_map(|(i, t)| t.read_keys().map(move |k| (i, k)))
        .collect();
    let mut statements = usage_reads(txns);
    statements.extend(version_reads(txns, &wanted));
    statements
}

/// Each transaction's plan or why it is left out, from the rows of [`reads`].
pub fn judge(
    txns: &[&Txn],
    rows: &[sea_orm::QueryResult],
) -> Result<Vec<Result<Plan, KvError>>, DbErr> {
    let (mut usage, mut versions) = (Vec::new(), Vec::new());
    for row in rows {
        match held::what(row)?.as_str() {
            "u" => usage.push(held::row::<UsageRow>(row)?),
            "v" => versions.push(held::row::<VersionRow>(row)?),
            _ => {}
        }
    }
    Ok(judged(txns, usage, versions))
}

/// The statements that commit `txn` alone with no reads before them, for a batch between
/// `BEGIN IMMEDIATE` and `COMMIT` on SQLite: a guard, then its writes as planned on what its
/// first read found. The guard fails the batch (a `NOT NULL` violation) unless the namespace's
/// usage row is still as that read found it — and every commit that changes a key moves the
/// row (a new version raises the last version, a delete lowers the keys), so then nothing the
/// transaction read has changed. `None` when that cannot be known: the first read did not read
/// the usage, a range was listed, nothing is written, or the plan fails its quota.
pub fn as_read(txn: &Txn) -> Option<Vec<(String, Vec<Value>)>> {
    if !txn.writes() || txn.listed() {
        return None;
    }
    let usage @ (keys, bytes, last) = txn.usage_as_read()?;
    let plan = txn.plan(usage).ok()?;
    txn.applying(Some(usage), plan.usage, plan.shift);
    let (installation, scope) = txn.ids();
    let nothing = i64::from(usage == (0, 0, 0));
    let guard = (
        "INSERT INTO plugin_kv_usage (installation_id, scope_id, keys, bytes, last_version) \
         SELECT ?, ?, NULL, 0, 0 WHERE COALESCE((SELECT keys = ? AND bytes = ? AND last_version = ? \
         FROM plugin_kv_usage WHERE installation_id = ? AND scope_id = ?), ?) IS NOT 1"
            .to_owned(),
        vec![
            Value::from(installation.clone()),
            scope.clone().into(),
            keys.into(),
            bytes.into(),
            last.into(),
            installation.into(),
            scope.into(),
            nothing.into(),
        ],
    );
    let mut statements = vec![guard];
    // Keys assumed absent must be: the usage row does not vouch for what was never read.
    let guessed: Vec<&str> = txn.guessed().collect();
    for chunk in guessed.chunks(CHUNK) {
        let (installation, scope) = txn.ids();
        let mut values = vec![
            Value::from(installation.clone()),
            scope.clone().into(),
            installation.into(),
            scope.into(),
        ];
        values.extend(chunk.iter().map(|k| Value::from(*k)));
        statements.push((
            format!(
                "INSERT INTO plugin_kv_usage (installation_id, scope_id, keys, bytes, last_version) \
                 SELECT ?, ?, NULL, 0, 0 WHERE EXISTS (SELECT 1 FROM plugin_kv \
                 WHERE installation_id = ? AND scope_id = ? AND key IN ({}))",
                sql::marks(chunk.len())
            ),
            values,
        ));
    }
    statements.extend(apply(&[(txn, plan)]));
    Some(statements)
}

/// The statements that lock the usage rows of the group's namespaces on PostgreSQL, in key
/// order, and return them: an upsert that creates a missing row (with nothing used, as a
/// missing row reads) and otherwise updates a row to itself, which locks it and returns what
/// is committed once any other holder's transaction has ended. One round trip instead of an
/// insert of the missing rows and a `SELECT … FOR UPDATE`.
fn usage_locks(txns: &[&Txn]) -> Vec<(String, Vec<Value>)> {
    per_namespaces(txns, |rows| {
        format!(
            "INSERT INTO plugin_kv_usage (installation_id, scope_id, keys, bytes, last_version) \
             SELECT i, s, 0, 0, 0 FROM (VALUES {rows}) AS w (i, s) ORDER BY i, s \
             ON CONFLICT (installation_id, scope_id) DO UPDATE SET keys = plugin_kv_usage.keys \
             RETURNING 'u' AS what, installation_id, scope_id, keys, bytes, last_version"
        )
    })
}

/// The statements that read the usage rows of the group's namespaces (SQLite).
fn usage_reads(txns: &[&Txn]) -> Vec<(String, Vec<Value>)> {
    per_namespaces(txns, |rows| {
        format!(
            "SELECT 'u' AS what, installation_id, scope_id, keys, bytes, last_version \
             FROM plugin_kv_usage WHERE (installation_id, scope_id) IN \
             (WITH w (i, s) AS (VALUES {rows}) SELECT i, s FROM w) \
             ORDER BY installation_id, scope_id"
        )
    })
}

/// One statement per chunk of the group's namespaces, in key order: `text` given the chunk's
/// `(?, ?)` rows, bound to their (installation, scope) pairs.
fn per_namespaces(txns: &[&Txn], text: impl Fn(&str) -> String) -> Vec<(String, Vec<Value>)> {
    let spaces: BTreeSet<Ids> = txns.iter().map(|t| t.ids()).collect();
    let spaces: Vec<&Ids> = spaces.iter().collect();
    spaces
        .chunks(CHUNK)
        .map(|chunk| {
            let values = chunk
                .iter()
                .flat_map(|(i, s)| [Value::from(i.clone()), s.clone().into()])
                .collect();
            (text(&rows(2, chunk.len())), values)
        })
        .collect()
}

/// The statements that read the committed versions of the keys `wanted`: (index of the
/// transaction in `txns`, key).
fn version_reads(txns: &[&Txn], wanted: &[(usize, &str)]) -> Vec<(String, Vec<Value>)> {
    wanted
        .chunks(CHUNK)
        .map(|chunk| {
            let mut values = Vec::with_capacity(chunk.len() * 3);
            for (i, key) in chunk {
                let (installation, scope) = txns[*i].ids();
                values.extend([installation.into(), scope.into(), Value::from(*key)]);
            }
            let statement = super::lookups(
                "'v' AS what, installation_id, scope_id, key, version",
                chunk.len(),
            );
            (statement, values)
        })
        .collect()
}

/// The namespaces' usage rows: (keys, bytes, last version); a missing row is all zeros.
fn usage_map(rows: &[UsageRow]) -> BTreeMap<Ids, Usage> {
    rows.iter()
        .map(|r| {
            (
                (r.installation_id.clone(), r.scope_id.clone()),
                (r.keys, r.bytes, r.last_version),
            )
        })
        .collect()
}

/// Whether `txn`'s namespace is as its first read found it, so that no key it read since has
/// changed: every commit that changes a key moves the usage row ([`as_read`]), and the first
/// read read the row with its key, at one moment. This holds because a usage row is never
/// deleted and its last version never goes down, so the row never comes back to a state it
/// left; whatever comes to delete namespaces must keep it so.
fn vouched(txn: &Txn, usage: &BTreeMap<Ids, Usage>) -> bool {
    txn.usage_as_read()
        .is_some_and(|read| usage.get(&txn.ids()).copied().unwrap_or_default() == read)
}

/// Each transaction's plan from the usage rows and committed versions read: left out when its
/// namespace came earlier in the group, when a key it read changed, or when its writes would
/// pass its quota. Ranges are checked by the caller.
fn judged(
    txns: &[&Txn],
    usage: Vec<UsageRow>,
    versions: Vec<VersionRow>,
) -> Vec<Result<Plan, KvError>> {
    let usage = usage_map(&usage);
    let now: BTreeMap<(Ids, String), u64> = versions
        .into_iter()
        .map(|r| {
            (
                ((r.installation_id, r.scope_id), r.key),
                version_of(r.version),
            )
        })
        .collect();
    let mut spaces: BTreeSet<Ids> = BTreeSet::new();
    txns.iter()
        .map(|txn| {
            let ids = txn.ids();
            if !spaces.insert(ids.clone()) {
                return Err(KvError::Contention(
                    "a namespace committed twice in one group".into(),
                ));
            }
            // A namespace as read vouches for every key read, not for keys assumed absent.
            let checked: Box<dyn Iterator<Item = &str>> = if vouched(txn, &usage) {
                Box::new(txn.guessed())
            } else {
                Box::new(txn.read_keys())
            };
            for key in checked {
                let committed = now.get(&(ids.clone(), key.to_owned())).copied();
                if committed != txn.read_version(key) {
                    return Err(KvError::Changed(key.to_owned()));
                }
            }
            let locked = usage.get(&ids).copied().unwrap_or_default();
            let plan = txn.plan(locked)?;
            txn.applying(Some(locked), plan.usage, plan.shift);
            Ok(plan)
        })
        .collect()
}

/// The statements that apply the transactions that passed [`check`], with their plans: one
/// upsert of the usage rows, one delete of the deleted keys and one upsert of the written ones,
/// for all of them (more only past [`CHUNK`] rows). The caller runs them, with work of its own,
/// through [`sql::batch`].
pub fn apply(kept: &[(&Txn, Plan)]) -> Vec<(String, Vec<Value>)> {
    let mut usage = Vec::new();
    for (txn, plan) in kept {
        if txn.writes() {
            usage.push((txn.ids(), plan.usage));
        }
    }
    let mut statements = Vec::new();
    for chunk in usage.chunks(CHUNK) {
        let mut values = Vec::with_capacity(chunk.len() * 5);
        for ((installation, scope), (keys, bytes, last)) in chunk {
            values.extend([
                Value::from(installation.clone()),
                scope.clone().into(),
                (*keys).into(),
                (*bytes).into(),
                (*last).into(),
            ]);
        }
        statements.push((
            format!(
                "INSERT INTO plugin_kv_usage (installation_id, scope_id, keys, bytes, last_version) VALUES {} \
                 ON CONFLICT (installation_id, scope_id) DO UPDATE SET \
                 keys = excluded.keys, bytes = excluded.bytes, last_version = excluded.last_version",
                rows(5, chunk.len())
            ),
            values,
        ));
    }
    statements.extend(key_writes(kept));
    statements
}

/// The statements that delete and write the keys of the transactions that passed, with their
/// plans' version shifts: [`apply`] without the usage rows.
fn key_writes(kept: &[(&Txn, Plan)]) -> Vec<(String, Vec<Value>)> {
    let mut deleted: Vec<(Ids, String)> = Vec::new();
    let mut written: Vec<(Ids, String, Entry)> = Vec::new();
    for (txn, plan) in kept {
        let ids = txn.ids();
        for (key, write) in txn.written() {
            match write {
                Some(entry) => written.push((
                    ids.clone(),
                    key.clone(),
                    Entry {
                        value: entry.value.clone(),
                        version: entry.version + plan.shift,
                    },
                )),
                None => deleted.push((ids.clone(), key.clone())),
            }
        }
    }
    let mut statements = delete(&deleted);
    statements.extend(upsert(&written));
    statements
}

/// A group's writes judged by its namespaces' usage rows alone, for PostgreSQL's commit in one
/// statement ([`guarded`]).
pub struct Guarded {
    /// Moves each namespace's usage row to its plan where the row is still as the
    /// transaction's first read found it, locking the rows in key order; returns a row per
    /// namespace moved. `None` when there are no transactions.
    pub usage: Option<(String, Vec<Value>)>,
    /// How many rows `usage` returns when every namespace is as read.
    pub namespaces: usize,
    /// Return a row for each key assumed absent that is not: none when all are.
    pub absent: Vec<(String, Vec<Value>)>,
    /// The keys' deletes and writes.
    pub keys: Vec<(String, Vec<Value>)>,
}

/// The group's writes as planned on what each transaction's first read found, when that read
/// also read the namespace's usage row: a row that has not moved since vouches for every key
/// read after it (see [`as_read`]), so the usage statement's guard stands for every key check.
/// `None` when some transaction cannot be judged that way — it listed a range, its first read
/// did not read the usage row, or its plan fails its quota — or there are too many: the group
/// then takes the checked way ([`check`]), which says precisely who fails and why.
pub fn guarded(txns: &[&Txn]) -> Option<Guarded> {
    if txns.len() > CHUNK {
        return None;
    }
    let mut kept = Vec::with_capacity(txns.len());
    // Each namespace: its usage row as read, and as planned.
    let mut moves: Vec<(Ids, Usage, Usage)> = Vec::new();
    for txn in txns {
        if txn.listed() {
            return None;
        }
        let read = txn.usage_as_read()?;
        let plan = txn.plan(read).ok()?;
        txn.applying(Some(read), plan.usage, plan.shift);
        moves.push((txn.ids(), read, plan.usage));
        kept.push((*txn, plan));
    }
    moves.sort_by(|a, b| a.0.cmp(&b.0));
    let usage = (!moves.is_empty()).then(|| {
        let mut values = Vec::with_capacity(moves.len() * 11);
        for ((installation, scope), read, (keys, bytes, last)) in &moves {
            values.extend([
                Value::from(installation.clone()),
                scope.clone().into(),
                (*keys).into(),
                (*bytes).into(),
                (*last).into(),
                (*read == (0, 0, 0)).into(),
            ]);
        }
        for ((installation, scope), (keys, bytes, last), _) in &moves {
            values.extend([
                Value::from(installation.clone()),
                scope.clone().into(),
                (*keys).into(),
                (*bytes).into(),
                (*last).into(),
            ]);
        }
        // A row read as missing (all zeros) may still be missing, and is then inserted; one
        // read as present must still be there, or the namespace moved.
        let text = format!(
            "INSERT INTO plugin_kv_usage (installation_id, scope_id, keys, bytes, last_version) \
             SELECT i, s, k, b, l FROM (VALUES {}) AS w (i, s, k, b, l, z) \
             WHERE z OR EXISTS (SELECT 1 FROM plugin_kv_usage u WHERE u.installation_id = w.i AND u.scope_id = w.s) \
             ORDER BY i, s \
             ON CONFLICT (installation_id, scope_id) DO UPDATE SET \
             keys = excluded.keys, bytes = excluded.bytes, last_version = excluded.last_version \
             WHERE (plugin_kv_usage.installation_id, plugin_kv_usage.scope_id, plugin_kv_usage.keys, \
             plugin_kv_usage.bytes, plugin_kv_usage.last_version) IN (VALUES {}) \
             RETURNING installation_id",
            rows(6, moves.len()),
            rows(5, moves.len())
        );
        (text, values)
    });
    let namespaces = moves.len();
    // Keys assumed absent must be: the usage row does not vouch for what was never read.
    let guessed: Vec<(usize, &str)> = txns
        .iter()
        .enumerate()
        .flat_map(|(i, t)| t.guessed().map(move |k| (i, k)))
        .collect();
    Some(Guarded {
        usage,
        namespaces,
        absent: version_reads(txns, &guessed),
        keys: key_writes(&kept),
    })
}

/// The statements that delete the keys `(namespace, key)`.
pub(super) fn delete(keys: &[(Ids, String)]) -> Vec<(String, Vec<Value>)> {
    let mut statements = Vec::new();
    for chunk in keys.chunks(CHUNK) {
        let mut values = Vec::with_capacity(chunk.len() * 3);
        for ((installation, scope), key) in chunk {
            values.extend([
                Value::from(installation.clone()),
                scope.clone().into(),
                key.clone().into(),
            ]);
        }
        statements.push((
            format!(
                "DELETE FROM plugin_kv WHERE (installation_id, scope_id, key) IN \
                 (WITH w (i, s, k) AS (VALUES {}) SELECT i, s, k FROM w)",
                rows(3, chunk.len())
            ),
            values,
        ));
    }
    statements
}

/// The statements that write the entries `(namespace, key, entry)` at their versions.
pub(super) fn upsert(entries: &[(Ids, String, Entry)]) -> Vec<(String, Vec<Value>)> {
    let now = Utc::now();
    let mut statements = Vec::new();
    for chunk in entries.chunks(CHUNK) {
        let mut values = Vec::with_capacity(chunk.len() * 6);
        for ((installation, scope), key, entry) in chunk {
            values.extend([
                Value::from(installation.clone()),
                scope.clone().into(),
                key.clone().into(),
                entry.value.clone().into(),
                i64::try_from(entry.version).unwrap_or(i64::MAX).into(),
                now.into(),
            ]);
        }
        statements.push((
            format!(
                "INSERT INTO plugin_kv (installation_id, scope_id, key, value, version, updated_at) VALUES {} \
                 ON CONFLICT (installation_id, scope_id, key) DO UPDATE SET \
                 value = excluded.value, version = excluded.version, updated_at = excluded.updated_at",
                rows(6, chunk.len())
            ),
            values,
        ));
    }
    statements
}

/// A statement's row, for statements that return none.
#[derive(FromQueryResult)]
pub struct NoRow {}

impl Txn {
    /// The usage and version shift of this transaction's writes on top of `usage` (keys,
    /// bytes, last version, as locked), by the rules of [`Txn::commit_in`].
    fn plan(&self, usage: Usage) -> Result<Plan, KvError> {
        let (keys, bytes, last) = usage;
        let (keys_delta, bytes_delta) = self.deltas();
        let keys = keys.saturating_add(keys_delta);
        let bytes = bytes.saturating_add(bytes_delta);
        let quota = &self.namespace().quota;
        if keys_delta > 0 && version_of(keys) > quota.max_keys {
            return Err(KvError::Quota(format!(
                "kv quota: {} keys at most",
                quota.max_keys
            )));
        }
        if bytes_delta > 0 && version_of(bytes) > quota.max_bytes {
            return Err(KvError::Quota(format!(
                "kv quota: {} bytes at most",
                quota.max_bytes
            )));
        }
        let last = version_of(last);
        let (last, shift) = match self.handed_out() {
            None => (last, 0),
            Some((low, high)) if last < low => (high, 0),
            Some((low, high)) => {
                let moved = last.saturating_add(high - low + 1);
                (moved, moved.saturating_sub(high))
            }
        };
        Ok(Plan {
            usage: (keys, bytes, i64::try_from(last).unwrap_or(i64::MAX)),
            shift,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Cas, Namespace, Store};
    use super::*;
    use crate::plugins::manifest::KvQuota;

    fn ns(scope: &str, max_keys: u64) -> Namespace {
        Namespace {
            installation_id: "inst".into(),
            scope_id: scope.into(),
            quota: KvQuota {
                max_keys,
                max_bytes: 10_000,
            },
        }
    }

    /// Commits `txns` as one group; returns what each was told.
    async fn group(store: &Store, txns: &[&Txn]) -> Vec<Result<(), String>> {
        let Store::Database(db, ..) = store else {
            panic!("a database store");
        };
        let tx = crate::db::begin_write(db).await.unwrap();
        let plans = check(&tx, txns).await.unwrap();
        let kept: Vec<(&Txn, Plan)> = txns
            .iter()
            .zip(&plans)
            .filter_map(|(t, p)| p.as_ref().ok().map(|p| (*t, *p)))
            .collect();
        sql::batch::<NoRow>(&tx, apply(&kept)).await.unwrap();
        tx.commit().await.unwrap();
        plans
            .into_iter()
            .map(|p| p.map(|_| ()).map_err(|e| e.to_string()))
            .collect()
    }

    /// Every namespace's usage row against what it holds.
    async fn usage_matches_contents(store: &Store) {
        let Store::Database(db, ..) = store else {
            panic!("a database store");
        };
        #[derive(FromQueryResult, Debug, PartialEq)]
        struct Counted {
            scope_id: String,
            keys: i64,
            bytes: i64,
        }
        let counted: Vec<Counted> = sql::query(
            "SELECT scope_id, COUNT(*) AS keys, SUM(LENGTH(key) + LENGTH(value)) AS bytes \
             FROM plugin_kv GROUP BY scope_id ORDER BY scope_id",
            [],
        )
        .all(db)
        .await
        .unwrap();
        let rows: Vec<Counted> = sql::query(
            "SELECT scope_id, keys, bytes FROM plugin_kv_usage WHERE keys > 0 ORDER BY scope_id",
            [],
        )
        .all(db)
        .await
        .unwrap();
        assert_eq!(rows, counted);
    }

    #[tokio::test]
    async fn a_group_commits_those_that_hold_and_leaves_out_whole_those_that_do_not() {
        crate::db::on_both(|db| commits_those_that_hold(Store::database(db))).await;
    }

    async fn commits_those_that_hold(store: Store) {
        let (a, b, c) = (ns("a", 10), ns("b", 10), ns("c", 3));
        store.increment(&a, "n", 1).await.unwrap();

        // a: what it read changes before the group commits.
        let mut stale = Txn::new(a.clone());
        stale.increment(&store, "n", 10).await.unwrap();
        stale
            .compare_and_swap(&store, "also", None, b"x")
            .await
            .unwrap();
        store.increment(&a, "n", 1).await.unwrap();

        // b: holds, though a later commit in its namespace got ahead of its versions.
        let mut fine = Txn::new(b.clone());
        let Cas::Stored(handed) = fine
            .compare_and_swap(&store, "seen/1", None, b"1")
            .await
            .unwrap()
        else {
            panic!("stored");
        };
        fine.increment(&store, "count", 1).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        let Cas::Stored(ahead) = store
            .compare_and_swap(&b, "other", None, b"o")
            .await
            .unwrap()
        else {
            panic!("stored");
        };

        // c: fitted its quota when it wrote, not once others filled it.
        let mut over = Txn::new(c.clone());
        over.compare_and_swap(&store, "k1", None, b"1")
            .await
            .unwrap();
        over.compare_and_swap(&store, "k2", None, b"2")
            .await
            .unwrap();
        store.compare_and_swap(&c, "x", None, b"x").await.unwrap();
        store.compare_and_swap(&c, "y", None, b"y").await.unwrap();

        // d: nothing moved its namespace since its first read, which then vouches for its
        // second (no key is looked up again).
        let d = ns("d", 10);
        store.increment(&d, "n", 5).await.unwrap();
        let mut untouched = Txn::new(d.clone());
        untouched.increment(&store, "n", 1).await.unwrap();
        untouched
            .compare_and_swap(&store, "seen/1", None, b"1")
            .await
            .unwrap();

        let told = group(&store, &[&stale, &fine, &over, &untouched]).await;
        assert!(
            matches!(&told[0], Err(e) if e.contains("n changed")),
            "{told:?}"
        );
        assert_eq!(told[1], Ok(()));
        assert!(
            matches!(&told[2], Err(e) if e.contains("quota")),
            "{told:?}"
        );
        assert_eq!(told[3], Ok(()));
        assert_eq!(store.get(&d, "n").await.unwrap().unwrap().value, b"6");

        assert_eq!(store.get(&a, "n").await.unwrap().unwrap().value, b"2");
        assert_eq!(store.get(&a, "also").await.unwrap(), None);
        let seen = store.get(&b, "seen/1").await.unwrap().unwrap();
        assert!(
            seen.version > ahead && ahead > handed,
            "{seen:?} {ahead} {handed}"
        );
        assert_eq!(store.get(&b, "count").await.unwrap().unwrap().value, b"1");
        assert!(matches!(
            store
                .compare_and_swap(&b, "seen/1", Some(handed), b"again")
                .await
                .unwrap(),
            Cas::Conflict(_)
        ));
        assert_eq!(store.get(&c, "k1").await.unwrap(), None);
        usage_matches_contents(&store).await;
    }

    #[tokio::test]
    async fn a_namespace_met_twice_in_a_group_commits_once() {
        crate::db::on_both(|db| commits_a_namespace_once(Store::database(db))).await;
    }

    async fn commits_a_namespace_once(store: Store) {
        let a = ns("a", 10);
        let mut first = Txn::new(a.clone());
        first.increment(&store, "n", 1).await.unwrap();
        let mut second = Txn::new(a.clone());
        second.increment(&store, "n", 1).await.unwrap();
        let mut deleting = Txn::new(ns("d", 10));
        store
            .compare_and_swap(&ns("d", 10), "gone", None, b"v")
            .await
            .unwrap();
        assert!(deleting.delete(&store, "gone", None).await.unwrap());
        let told = group(&store, &[&first, &second, &deleting]).await;
        assert_eq!(told[0], Ok(()));
        assert!(told[1].is_err(), "{told:?}");
        assert_eq!(told[2], Ok(()));
        assert_eq!(store.get(&a, "n").await.unwrap().unwrap().value, b"1");
        assert_eq!(store.get(&ns("d", 10), "gone").await.unwrap(), None);
        usage_matches_contents(&store).await;
    }
}
