//! Sign-in limits: attempts are counted before a password is checked, and password checks run
//! on a bounded pool of blocking threads.
//!
//! Invariant: no password is checked for an attempt that was not first counted against its
//! account and address, and Argon2 never runs on an async worker for an anonymous caller.

use chrono::{Duration, Utc};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, Set,
};
use secrecy::SecretString;

use super::passwords::{decoy_hash, hash_password, verify_password};
use super::{ACCOUNT_FAILURE_LIMIT, Error, FAILURE_WINDOW_SECS, IP_FAILURE_LIMIT};
use crate::db::entity::login_failures;
use crate::db::sql;

/// Runs Argon2 off the async workers, on at most `threads` blocking threads at once, with at most
/// `queue` more callers waiting: a burst of sign-ins costs a bounded share of the machine and
/// the rest of the server (probes, pages, API) keeps answering. Callers past the queue are
/// refused at once ([`Error::Busy`]) rather than piling up.
#[derive(Debug, Clone)]
pub struct Hasher {
    running: std::sync::Arc<tokio::sync::Semaphore>,
    admitted: std::sync::Arc<tokio::sync::Semaphore>,
}

/// A place among the hasher's callers, taken before any other work is done for a sign-in.
#[derive(Debug)]
pub struct HashSlot(
    #[allow(dead_code, reason = "held for its drop")] tokio::sync::OwnedSemaphorePermit,
);

impl Hasher {
    /// `threads` 0 means half the cores, at least one.
    pub fn new(threads: u32, queue: u32) -> Self {
        let threads = match threads {
            0 => std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)),
            n => n as usize,
        };
        Self {
            running: std::sync::Arc::new(tokio::sync::Semaphore::new(threads)),
            admitted: std::sync::Arc::new(tokio::sync::Semaphore::new(threads + queue as usize)),
        }
    }

    /// A slot, or [`Error::Busy`] at once when every thread is busy and the queue is full.
    pub fn admit(&self) -> Result<HashSlot, Error> {
        self.admitted
            .clone()
            .try_acquire_owned()
            .map(HashSlot)
            .map_err(|_| Error::Busy)
    }

    /// The Argon2 hash of a new password, on a hashing thread; [`Error::Busy`] at once when
    /// the queue is full.
    pub async fn hash(&self, password: &SecretString) -> Result<String, Error> {
        let slot = self.admit()?;
        let password = password.clone();
        self.run(slot, move || hash_password(&password)).await?
    }

    /// Whether `password` matches `stored` (the decoy when `None`), on a hashing thread.
    pub async fn verify(
        &self,
        slot: HashSlot,
        password: &SecretString,
        stored: Option<String>,
    ) -> Result<bool, Error> {
        let password = password.clone();
        self.run(slot, move || {
            verify_password(&password, stored.as_deref().unwrap_or_else(|| decoy_hash()))
        })
        .await
    }

    /// Runs `work` on a blocking thread once one of the hashing threads is free; `_slot` holds
    /// the caller's place until then.
    async fn run<T: Send + 'static>(
        &self,
        _slot: HashSlot,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Error> {
        let _running = self
            .running
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::Busy)?;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|_| Error::Hash)
    }
}

/// Counts one sign-in attempt for `account` and for `ip` before the password is checked, or
/// refuses it ([`Error::Throttled`]) when either is at its limit within the window. The count
/// and the insert are one atomic step across every engine process: SQLite's write transaction
/// takes the database lock at `BEGIN`, and on PostgreSQL transaction-scoped advisory locks on
/// the account and then the address serialise attempts for the same ones. Returns the row's
/// id, which a successful sign-in deletes.
pub(super) async fn reserve_attempt(
    db: &sea_orm::DatabaseConnection,
    account: &str,
    ip: &str,
) -> Result<i64, Error> {
    let account: String = account.chars().take(254).collect();
    let ip: String = ip.chars().take(64).collect();
    let txn = crate::db::begin_write(db).await?;
    // Accounts before addresses, in two key spaces, so two attempts never wait on each other in
    // opposite orders.
    for (space, key) in [(1_i32, account.as_str()), (2_i32, ip.as_str())] {
        sql::advisory_lock(&txn, space, key).await?;
    }
    let now = Utc::now();
    let since = now - Duration::seconds(FAILURE_WINDOW_SECS);
    let recent = |column: login_failures::Column, value: &str| {
        login_failures::Entity::find()
            .filter(column.eq(value.to_owned()))
            .filter(login_failures::Column::At.gt(since))
    };
    let by_account = recent(login_failures::Column::Account, &account);
    let by_ip = recent(login_failures::Column::Ip, &ip);
    let limited = if by_account.clone().count(&txn).await? >= ACCOUNT_FAILURE_LIMIT {
        Some(by_account)
    } else if by_ip.clone().count(&txn).await? >= IP_FAILURE_LIMIT {
        Some(by_ip)
    } else {
        None
    };
    if let Some(query) = limited {
        // Locked until the oldest attempt still counted leaves the window.
        let oldest = query
            .order_by_asc(login_failures::Column::At)
            .one(&txn)
            .await?;
        txn.commit().await?;
        let retry_after = oldest.map_or(FAILURE_WINDOW_SECS, |f| {
            (f.at + Duration::seconds(FAILURE_WINDOW_SECS) - now)
                .num_seconds()
                .max(1)
        });
        return Err(Error::Throttled {
            retry_after: retry_after.unsigned_abs(),
        });
    }
    let row = login_failures::ActiveModel {
        id: sea_orm::NotSet,
        account: Set(account),
        ip: Set(ip),
        at: Set(now),
    }
    .insert(&txn)
    .await?;
    // Old rows are worthless; drop them as we go rather than in a separate job.
    login_failures::Entity::delete_many()
        .filter(login_failures::Column::At.lt(now - Duration::seconds(FAILURE_WINDOW_SECS * 2)))
        .exec(&txn)
        .await?;
    txn.commit().await?;
    Ok(row.id)
}
