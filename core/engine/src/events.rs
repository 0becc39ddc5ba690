//! The durable event outbox: every domain event is a row, fanned out in the same transaction
//! into one delivery row per subscribing installation, which dispatchers claim, deliver, retry
//! with exponential backoff and finally mark delivered, skipped or dead.
//!
//! Invariant: a delivery row is the only record of whether an installation got an event; it is
//! unique per (event, installation), it moves to `delivered` once (guarded by the claim's lease
//! owner), and a claim whose holder died expires and is claimed again — at least once, never lost.
//!
//! One tenant cannot starve the others: claims take due deliveries in turns across partners and,
//! within a partner, across merchants; deliveries of a suspended partner, agent or merchant are
//! held out of every claim; and what plugins emit is paced per (installation, merchant) and
//! bounded per chain (everything that descended from one originating event).

use chrono::{DateTime, Duration, Utc};
use sea_orm::{ConnectionTrait, DatabaseConnection, Value};
use serde_json::Value as Json;
use uuid::Uuid;

use crate::db::sql::{self, Millis};
use crate::tenancy::Place;

mod budget;
mod claim;
mod log;
mod outbox;
mod settle;

use budget::open_chain;
pub use budget::{EMITTER, Emitter, Limits, Refusal, admit, refund};
pub use claim::{Room, Walk, bury_abandoned, claim};
pub use log::{
    Delivery, DeliveryFilter, EventFilter, MAX_EVENTS_PER_PAGE, Recorded, deliveries,
    deliveries_after, delivery, recorded, redeliver,
};
pub use outbox::Outbox;
pub use settle::{Marked, delivered_many, settle_delivered, still_held};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("delivery {0} not found")]
    NotFound(String),
    #[error(
        "event chain too deep: {kind} would be the {depth}th event caused by plugins in a row (at most {MAX_DEPTH})"
    )]
    TooDeep { kind: String, depth: i32 },
    #[error(
        "fan-out budget spent: the chain started by event {root} may cause at most {limit} {what}"
    )]
    OverBudget {
        root: String,
        what: &'static str,
        limit: u32,
    },
    #[error("database error: {0}")]
    Db(#[from] sea_orm::DbErr),
}

/// A domain event to record.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub kind: String,
    pub place: Place,
    pub payload: Json,
    /// `engine`, `api:<caller>`, or `plugin:<id>` for a plugin's follow-up event.
    pub source: String,
    pub occurred_at: DateTime<Utc>,
    /// Plugin hops that led here: 0 from outside the plugins, the triggering event's depth + 1
    /// for an event a plugin emits while handling another.
    pub depth: i32,
}

/// The longest chain of plugin-emitted events: plugins that emit what other plugins (or they
/// themselves) subscribe to cannot loop for ever.
pub const MAX_DEPTH: i32 = 8;

/// One claimed delivery, with its event.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub delivery_id: String,
    pub event_id: String,
    /// The originating event of its chain (its own id when it started one).
    pub root_id: String,
    pub installation_id: String,
    pub place: Place,
    pub kind: String,
    pub payload: Json,
    pub occurred_at: DateTime<Utc>,
    pub source: String,
    pub depth: i32,
    /// Including this one.
    pub attempts: i32,
}

/// Retry policy of the dispatcher.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
    pub max_attempts: i32,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            first: Duration::seconds(2),
            max: Duration::hours(1),
            max_attempts: 8,
        }
    }
}

impl Backoff {
    /// The wait after the `attempts`-th failed attempt: doubling from `first`, capped at `max`,
    /// with up to a quarter of jitter so retries of a burst spread out.
    pub fn delay(&self, attempts: i32) -> Duration {
        let exponent = u32::try_from(attempts.saturating_sub(1).clamp(0, 30)).unwrap_or(30);
        let base = self
            .first
            .checked_mul(2_i32.saturating_pow(exponent.min(20)))
            .unwrap_or(self.max)
            .min(self.max);
        let jitter_ms = base.num_milliseconds() / 4;
        let jitter = if jitter_ms > 0 {
            fastrand_like(jitter_ms)
        } else {
            0
        };
        base + Duration::milliseconds(jitter)
    }
}

/// A cheap non-cryptographic jitter in `0..bound` from the clock's nanoseconds.
fn fastrand_like(bound: i64) -> i64 {
    let nanos = i64::from(Utc::now().timestamp_subsec_nanos());
    nanos % bound.max(1)
}

/// Event kinds look like `payment.succeeded`: lower-case dotted words.
pub fn is_event_kind(kind: &str) -> bool {
    kind.len() <= 64
        && kind.contains('.')
        && kind.split('.').all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        })
}

/// Records an event and one pending delivery per installation in `subscribers`, atomically.
/// An event that continues the chain started by `root_id` charges its deliveries to that
/// chain's budget, and is refused whole when they do not fit. Returns the event id.
pub async fn publish(
    db: &DatabaseConnection,
    event: &NewEvent,
    subscribers: &[String],
    root_id: Option<&str>,
    limits: &Limits,
    now: DateTime<Utc>,
) -> Result<String, Error> {
    let txn = crate::db::begin_write(db).await?;
    match publish_in(&txn, event, subscribers, root_id, limits, now).await {
        Ok(id) => {
            txn.commit().await?;
            Ok(id)
        }
        Err(error) => {
            txn.rollback().await?;
            Err(error)
        }
    }
}

/// [`publish`] inside the caller's write transaction (an invocation's commit). A refused event
/// writes nothing, so the caller may go on with the rest of its transaction.
pub async fn publish_in(
    txn: &impl ConnectionTrait,
    event: &NewEvent,
    subscribers: &[String],
    root_id: Option<&str>,
    limits: &Limits,
    now: DateTime<Utc>,
) -> Result<String, Error> {
    if !is_event_kind(&event.kind) {
        return Err(Error::Invalid {
            field: "kind",
            message: format!(
                "{:?} is not an event kind such as payment.succeeded",
                event.kind
            ),
        });
    }
    if event.depth > MAX_DEPTH {
        return Err(Error::TooDeep {
            kind: event.kind.clone(),
            depth: event.depth,
        });
    }
    let partner_id = event.place.partner_id.clone().ok_or(Error::Invalid {
        field: "place",
        message: "events belong to a partner's tenant".into(),
    })?;
    let id = Uuid::now_v7().to_string();
    if let Some(root) = root_id
        && !subscribers.is_empty()
    {
        open_chain(txn, root, &partner_id, now).await?;
        let fanout = i64::try_from(subscribers.len()).unwrap_or(i64::MAX);
        let charged = sql::query(
            "UPDATE event_chains SET deliveries = deliveries + ? WHERE root_id = ? AND deliveries + ? <= ?",
            [
                fanout.into(),
                root.into(),
                fanout.into(),
                i64::from(limits.chain_deliveries).into(),
            ],
        )
        .execute(txn)
        .await?;
        if charged != 1 {
            return Err(Error::OverBudget {
                root: root.to_owned(),
                what: "deliveries",
                limit: limits.chain_deliveries,
            });
        }
    }
    record(txn, &id, &partner_id, event, subscribers, root_id, now).await?;
    Ok(id)
}

/// Inserts the event row and one pending delivery per subscriber.
async fn record(
    txn: &impl ConnectionTrait,
    id: &str,
    partner_id: &str,
    event: &NewEvent,
    subscribers: &[String],
    root_id: Option<&str>,
    now: DateTime<Utc>,
) -> Result<(), Error> {
    sql::query(
        "INSERT INTO events (id, kind, partner_id, agent_id, merchant_id, payload, source, depth, root_id, occurred_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            id.into(),
            event.kind.clone().into(),
            partner_id.into(),
            event.place.agent_id.clone().into(),
            event.place.merchant_id.clone().into(),
            event.payload.to_string().into(),
            event.source.clone().into(),
            event.depth.into(),
            root_id.map(str::to_owned).into(),
            Millis(event.occurred_at).into(),
        ],
    )
    .execute(txn)
    .await?;
    for installation in subscribers {
        sql::query(
            "INSERT INTO event_deliveries (id, event_id, installation_id, partner_id, agent_id, merchant_id, kind, \
             status, attempts, next_attempt_at, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', 0, ?, ?, ?)",
            [
                Uuid::now_v7().to_string().into(),
                id.into(),
                installation.clone().into(),
                partner_id.into(),
                event.place.agent_id.clone().into(),
                event.place.merchant_id.clone().into(),
                event.kind.clone().into(),
                Millis(now).into(),
                Millis(now).into(),
                Millis(now).into(),
            ],
        )
        .execute(txn)
        .await?;
    }
    Ok(())
}

/// Applies `set` (with its `values`) to a claimed delivery that is still pending and still
/// held by `owner`; false when the claim was lost (its lease expired and another dispatcher
/// holds it now, which then records the outcome).
async fn while_held(
    db: &impl ConnectionTrait,
    claim: &Claimed,
    owner: &str,
    set: &str,
    mut values: Vec<Value>,
) -> Result<bool, Error> {
    values.push(claim.delivery_id.clone().into());
    values.push(owner.into());
    let done = sql::query(
        &format!(
            "UPDATE event_deliveries SET {set} WHERE id = ? AND lease_owner = ? AND status = 'pending'"
        ),
        values,
    )
    .execute(db)
    .await?;
    Ok(done == 1)
}

/// Extends a claim's lease just before its attempt starts (a batch may wait for a free slot);
/// false when the claim was lost meanwhile, and the attempt must not start.
pub async fn renew_lease(
    db: &impl ConnectionTrait,
    claim: &Claimed,
    owner: &str,
    lease: Duration,
    now: DateTime<Utc>,
) -> Result<bool, Error> {
    while_held(
        db,
        claim,
        owner,
        "lease_until = ?",
        vec![Millis(now + lease).into()],
    )
    .await
}

/// Puts a claimed delivery back for later without counting the attempt: the engine, not the
/// plugin, could not run it (no free slot, the installation's breaker is open).
pub async fn postpone(
    db: &impl ConnectionTrait,
    claim: &Claimed,
    owner: &str,
    until: DateTime<Utc>,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<bool, Error> {
    while_held(
        db,
        claim,
        owner,
        "next_attempt_at = ?, attempts = attempts - 1, last_error = ?, lease_until = NULL, updated_at = ?",
        vec![Millis(until).into(), reason.into(), Millis(now).into()],
    )
    .await
}

/// Marks a claimed delivery delivered.
pub async fn delivered(
    db: &impl ConnectionTrait,
    claim: &Claimed,
    owner: &str,
    now: DateTime<Utc>,
) -> Result<bool, Error> {
    let latency = (now - claim.occurred_at).num_milliseconds().max(0);
    while_held(
        db,
        claim,
        owner,
        "status = 'delivered', delivered_at = ?, latency_ms = ?, lease_until = NULL, last_error = NULL, updated_at = ?",
        vec![Millis(now).into(), latency.into(), Millis(now).into()],
    )
    .await
}

/// Marks a claimed delivery skipped (not attempted: `reason` says why).
pub async fn skipped(
    db: &impl ConnectionTrait,
    claim: &Claimed,
    owner: &str,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<bool, Error> {
    while_held(
        db,
        claim,
        owner,
        "status = 'skipped', last_error = ?, lease_until = NULL, updated_at = ?",
        vec![reason.into(), Millis(now).into()],
    )
    .await
}

/// Records a failed attempt: retried after the backoff, or dead after the last attempt.
pub async fn failed(
    db: &impl ConnectionTrait,
    claim: &Claimed,
    owner: &str,
    error: &str,
    backoff: &Backoff,
    now: DateTime<Utc>,
) -> Result<bool, Error> {
    let error: String = error.chars().take(1_000).collect();
    let (status, next) = if claim.attempts >= backoff.max_attempts {
        ("dead", now)
    } else {
        ("pending", now + backoff.delay(claim.attempts))
    };
    while_held(
        db,
        claim,
        owner,
        "status = ?, next_attempt_at = ?, last_error = ?, lease_until = NULL, updated_at = ?",
        vec![
            status.into(),
            Millis(next).into(),
            error.into(),
            Millis(now).into(),
        ],
    )
    .await
}

/// What a quota reservation found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// One of the day's deliveries is held for this attempt.
    Held,
    /// The day's quota is delivered already.
    Exhausted,
    /// What is left of the quota is held by attempts in flight; one may yet fail.
    Busy,
}

/// Holds one of `limit` deliveries of `installation` to `merchant_id` on the day starting at
/// `day` for an attempt. The conditional increment is atomic, so concurrent dispatchers (in any
/// number of processes) never exceed the quota; [`settle_quota`] ends the hold.
pub async fn reserve_quota(
    db: &impl ConnectionTrait,
    installation_id: &str,
    merchant_id: &str,
    day: DateTime<Utc>,
    limit: u64,
) -> Result<Hold, Error> {
    let key = || -> Vec<Value> {
        vec![
            installation_id.into(),
            merchant_id.into(),
            Millis(day).into(),
        ]
    };
    sql::query(
        "INSERT INTO delivery_quota (installation_id, merchant_id, day, used, held) VALUES (?, ?, ?, 0, 0) \
         ON CONFLICT DO NOTHING",
        key(),
    )
    .execute(db)
    .await?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut values = key();
    values.push(limit.into());
    let done = sql::query(
        "UPDATE delivery_quota SET held = held + 1 \
         WHERE installation_id = ? AND merchant_id = ? AND day = ? AND used + held < ?",
        values,
    )
    .execute(db)
    .await?;
    if done == 1 {
        return Ok(Hold::Held);
    }
    let used: i64 = sql::query(
        "SELECT used FROM delivery_quota WHERE installation_id = ? AND merchant_id = ? AND day = ?",
        key(),
    )
    .scalar(db)
    .await?
    .unwrap_or(0);
    Ok(if used >= limit {
        Hold::Exhausted
    } else {
        Hold::Busy
    })
}

/// Ends a hold: counted as used when the attempt delivered, given back otherwise.
pub async fn settle_quota(
    db: &impl ConnectionTrait,
    installation_id: &str,
    merchant_id: &str,
    day: DateTime<Utc>,
    delivered: bool,
) -> Result<(), Error> {
    sql::query(
        "UPDATE delivery_quota SET held = held - 1, used = used + ? \
         WHERE installation_id = ? AND merchant_id = ? AND day = ? AND held > 0",
        [
            i64::from(delivered).into(),
            installation_id.into(),
            merchant_id.into(),
            Millis(day).into(),
        ],
    )
    .execute(db)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests;
