//! Committing a run that succeeded: its kv transaction and the caller's finishing work (the
//! events it emitted, a delivery's outcome) in one database transaction.
//!
//! Invariant: either everything a run did is committed or nothing is; a run whose reads changed
//! meanwhile commits nothing and says so, for the runtime to run it again or give up.

use std::sync::Arc;

use sea_orm::DatabaseConnection;

use super::super::kv::{KvError, Store, Txn};
use super::super::{Emitted, Finish, FinishError, Services};
use super::committer::Committer;

/// Why a run's work was not committed.
#[derive(Debug)]
pub(super) enum Refused {
    /// kv data it read changed, or concurrent commits filled the quota: running it again sees
    /// the new state.
    Again(String),
    /// The caller's work is no longer its own to finish.
    Lost(String),
    /// The database failed; details are logged.
    Failed(String),
    /// The invocation's deadline passed while it waited to begin its transaction.
    Late,
}

impl From<KvError> for Refused {
    fn from(error: KvError) -> Self {
        match error {
            KvError::Changed(key) | KvError::Contention(key) => Refused::Again(key),
            KvError::Quota(message) => Refused::Again(message),
            other => Refused::Failed(other.to_string()),
        }
    }
}

impl From<FinishError> for Refused {
    fn from(error: FinishError) -> Self {
        match error {
            FinishError::Lost(why) => Refused::Lost(why),
            FinishError::Db(e) => Refused::Failed(e.to_string()),
        }
    }
}

impl From<sea_orm::DbErr> for Refused {
    fn from(error: sea_orm::DbErr) -> Self {
        Refused::Failed(error.to_string())
    }
}

/// Commits what a successful run did, and gives its emitted events back. A run that only read
/// one key and has no finishing work has nothing to commit (a single read is consistent on its
/// own); one that read several keys, or answered from what this engine remembered, has them
/// checked — by its namespace's usage row alone while that stands, else in a transaction that
/// writes nothing — so what it answered was one state, and a current one. Work that writes commits on the database through the
/// runtime's committer, together with the runs that finish meanwhile (unless it emitted events).
pub(super) async fn commit(
    services: &Services,
    committer: &Committer,
    txn: Option<Txn>,
    finish: Option<Arc<dyn Finish>>,
    emitted: Vec<Emitted>,
    deadline: Option<std::time::Instant>,
) -> (Result<(), Refused>, Vec<Emitted>) {
    let finish = finish.filter(|f| f.has_work(&emitted));
    // What an optimistic run answered from what this engine remembered is checked, even alone.
    let mut txn = txn.filter(|t| {
        t.writes() || t.reads() > 1 || t.leaned() || (finish.is_some() && t.reads() > 0)
    });
    let db = match &services.kv {
        Store::Database(db, ..) => db,
        // The harness keeps kv in memory and has no finishing work; were there any, it would
        // commit after the kv writes, not with them.
        Store::Memory(kv) => {
            if let Some(txn) = txn.take()
                && let Err(error) = txn.commit_memory(kv)
            {
                return (Err(error.into()), emitted);
            }
            &services.db
        }
    };
    let writes = finish.is_some() || txn.as_ref().is_some_and(Txn::writes);
    // A reader whose namespace is still as its first read found it needs no transaction.
    if !writes && let Some(reader) = &txn {
        match services.kv.unmoved(reader).await {
            Ok(true) => return (Ok(()), emitted),
            Ok(false) => {}
            Err(error) => return (Err(error.into()), emitted),
        }
    }
    // A run that emitted events commits alone: recording them locks its chain's budget row,
    // which a group would lock in no set order with its other members' chains. So does one
    // whose finishing work is more than a delivery's mark.
    let groups = emitted.is_empty() && finish.as_ref().is_none_or(|f| f.delivery().is_some());
    if writes && groups {
        return committer.commit(db, txn, finish, emitted, deadline).await;
    }
    let result = commit_one(db, txn, finish.as_deref(), &emitted, deadline).await;
    (result, emitted)
}

/// Commits one run's work in a transaction of its own.
///
/// `deadline` bounds the waits before the transaction begins: this process's turn to write and
/// `BEGIN` itself, which waits for the database's write lock (another process may hold it) and
/// runs in a task of its own, so giving up on it is safe (`db::begin_write`). Once begun the
/// transaction runs to its end: abandoning it halfway could report as failed a commit the
/// database went on to make.
pub(super) async fn commit_one(
    db: &DatabaseConnection,
    txn: Option<Txn>,
    finish: Option<&dyn Finish>,
    emitted: &[Emitted],
    deadline: Option<std::time::Instant>,
) -> Result<(), Refused> {
    let writes = finish.is_some() || txn.as_ref().is_some_and(Txn::writes);
    if txn.is_none() && !writes {
        return Ok(());
    }
    let _turn = match (writes, deadline) {
        (false, _) => None,
        (true, None) => crate::db::write_turn(db).await,
        (true, Some(deadline)) => {
            tokio::time::timeout_at(deadline.into(), crate::db::write_turn(db))
                .await
                .map_err(|_| Refused::Late)?
        }
    };
    let begin = async {
        if writes {
            crate::db::begin_write(db).await
        } else {
            crate::db::begin(db).await
        }
    };
    let tx = match deadline {
        Some(deadline) => tokio::time::timeout_at(deadline.into(), begin)
            .await
            .map_err(|_| Refused::Late)??,
        None => begin.await?,
    };
    let written = async {
        if let Some(txn) = txn {
            txn.commit_in(&tx).await?;
        }
        if let Some(finish) = finish {
            finish.write(&tx, emitted).await?;
        }
        Ok::<(), Refused>(())
    }
    .await;
    match written {
        Ok(()) => Ok(tx.commit().await?),
        Err(refused) => {
            // Dropping the transaction would roll back too, but not before the next statement
            // on SQLite's one writer.
            tx.rollback().await?;
            Err(refused)
        }
    }
}
