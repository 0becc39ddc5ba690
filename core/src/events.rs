//! The durable event outbox: every domain event is a row, fanned out in the same transaction
//! into one delivery row per subscribing installation, which dispatchers claim, deliver, retry
//! with exponential backoff and finally mark delivered, skipped or dead.
//!
//! Invariant: a delivery row is the only record of whether an installation got an event; it is
//! unique per (event, installation), it moves to `delivered` once (guarded by the claim's lease
//! owner), and a claim whose holder died expires and is claimed again — at least once, never lost.

use chrono::{DateTime, Duration, Utc};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, QueryResult, Value};
use serde::Serialize;
use serde_json::Value as Json;
use uuid::Uuid;

use crate::db::{from_millis, millis, statement};
use crate::tenancy::{NodeKind, Place};

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

/// A delivery as the delivery log shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Delivery {
    pub id: String,
    pub event_id: String,
    pub kind: String,
    pub installation_id: String,
    pub merchant_id: Option<String>,
    /// `pending`, `delivered`, `skipped` (not entitled, expired, over quota, uninstalled) or
    /// `dead` (gave up after the last attempt).
    pub status: String,
    pub attempts: i32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    /// Time from the event's occurrence to its successful delivery.
    pub latency_ms: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
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

fn backend(db: &impl ConnectionTrait) -> DbBackend {
    db.get_database_backend()
}

/// Records an event and one pending delivery per installation in `subscribers`, atomically.
/// Returns the event id.
pub async fn publish(
    db: &DatabaseConnection,
    event: &NewEvent,
    subscribers: &[String],
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
    let txn = crate::db::begin_write(db).await?;
    txn.execute_raw(statement(
        backend(&txn),
        "INSERT INTO events (id, kind, partner_id, agent_id, merchant_id, payload, source, depth, occurred_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        vec![
            id.clone().into(),
            event.kind.clone().into(),
            partner_id.clone().into(),
            event.place.agent_id.clone().into(),
            event.place.merchant_id.clone().into(),
            event.payload.to_string().into(),
            event.source.clone().into(),
            event.depth.into(),
            millis(event.occurred_at).into(),
        ],
    ))
    .await?;
    for installation in subscribers {
        txn.execute_raw(statement(
            backend(&txn),
            "INSERT INTO event_deliveries (id, event_id, installation_id, partner_id, agent_id, merchant_id, kind, \
             status, attempts, next_attempt_at, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', 0, ?, ?, ?)",
            vec![
                Uuid::now_v7().to_string().into(),
                id.clone().into(),
                installation.clone().into(),
                partner_id.clone().into(),
                event.place.agent_id.clone().into(),
                event.place.merchant_id.clone().into(),
                event.kind.clone().into(),
                millis(now).into(),
                millis(now).into(),
                millis(now).into(),
            ],
        ))
        .await?;
    }
    txn.commit().await?;
    Ok(id)
}

/// Claims up to `batch` due deliveries for `owner` until `now + lease`. On PostgreSQL rows
/// locked by another dispatcher are skipped (`FOR UPDATE SKIP LOCKED`); SQLite serialises
/// writers, so its single statement is atomic as it stands.
pub async fn claim(
    db: &impl ConnectionTrait,
    owner: &str,
    batch: u32,
    lease: Duration,
    max_attempts: i32,
    now: DateTime<Utc>,
) -> Result<Vec<Claimed>, Error> {
    // A read first: an idle dispatcher polls often, and must not take SQLite's write lock
    // (or PostgreSQL row locks) when nothing is due.
    let due = db
        .query_one_raw(statement(
            backend(db),
            "SELECT id FROM event_deliveries WHERE status = 'pending' AND next_attempt_at <= ? \
             AND (lease_until IS NULL OR lease_until < ?) LIMIT 1",
            vec![millis(now).into(), millis(now).into()],
        ))
        .await?;
    if due.is_none() {
        return Ok(Vec::new());
    }
    // Deliveries whose every attempt was claimed but never recorded (their dispatchers died
    // each time) are dead rather than retried for ever.
    db.execute_raw(statement(
        backend(db),
        "UPDATE event_deliveries SET status = 'dead', last_error = ?, lease_until = NULL, updated_at = ? \
         WHERE status = 'pending' AND attempts >= ? AND lease_until IS NOT NULL AND lease_until < ?",
        vec![
            format!("no outcome recorded after {max_attempts} attempts (the dispatchers holding it stopped)").into(),
            millis(now).into(),
            max_attempts.into(),
            millis(now).into(),
        ],
    ))
    .await?;
    let lock = if backend(db) == DbBackend::Postgres {
        " FOR UPDATE SKIP LOCKED"
    } else {
        ""
    };
    let sql = format!(
        "UPDATE event_deliveries SET lease_owner = ?, lease_until = ?, attempts = attempts + 1, updated_at = ? \
         WHERE id IN (SELECT id FROM event_deliveries WHERE status = 'pending' AND next_attempt_at <= ? \
         AND attempts < ? AND (lease_until IS NULL OR lease_until < ?) ORDER BY next_attempt_at, id LIMIT ?{lock}) \
         RETURNING id"
    );
    let rows = db
        .query_all_raw(statement(
            backend(db),
            &sql,
            vec![
                owner.into(),
                millis(now + lease).into(),
                millis(now).into(),
                millis(now).into(),
                max_attempts.into(),
                millis(now).into(),
                i64::from(batch).into(),
            ],
        ))
        .await?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<String> = rows
        .iter()
        .map(|r| r.try_get::<String>("", "id"))
        .collect::<Result<_, _>>()?;
    let marks = vec!["?"; ids.len()].join(", ");
    let mut values: Vec<Value> = ids.into_iter().map(Value::from).collect();
    values.push(owner.into());
    let rows = db
        .query_all_raw(statement(
            backend(db),
            &format!(
                "SELECT d.id, d.event_id, d.installation_id, d.attempts, e.kind, e.partner_id, e.agent_id, \
                 e.merchant_id, e.payload, e.source, e.depth, e.occurred_at FROM event_deliveries d \
                 JOIN events e ON e.id = d.event_id WHERE d.id IN ({marks}) AND d.lease_owner = ? \
                 ORDER BY d.next_attempt_at, d.id"
            ),
            values,
        ))
        .await?;
    rows.iter().map(claimed_of).collect()
}

fn claimed_of(row: &QueryResult) -> Result<Claimed, Error> {
    let partner_id: String = row.try_get("", "partner_id")?;
    let agent_id: Option<String> = row.try_get("", "agent_id")?;
    let merchant_id: Option<String> = row.try_get("", "merchant_id")?;
    let (id, kind) = if let Some(m) = &merchant_id {
        (m.clone(), NodeKind::Merchant)
    } else if let Some(a) = &agent_id {
        (a.clone(), NodeKind::Agent)
    } else {
        (partner_id.clone(), NodeKind::Partner)
    };
    let payload: String = row.try_get("", "payload")?;
    Ok(Claimed {
        delivery_id: row.try_get("", "id")?,
        event_id: row.try_get("", "event_id")?,
        installation_id: row.try_get("", "installation_id")?,
        place: Place {
            id,
            kind,
            partner_id: Some(partner_id),
            agent_id,
            merchant_id,
            store_id: None,
        },
        kind: row.try_get("", "kind")?,
        payload: serde_json::from_str(&payload).unwrap_or(Json::Null),
        occurred_at: from_millis(row.try_get("", "occurred_at")?),
        source: row.try_get("", "source")?,
        depth: row.try_get("", "depth")?,
        attempts: row.try_get("", "attempts")?,
    })
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
    let done = db
        .execute_raw(statement(
            backend(db),
            &format!(
                "UPDATE event_deliveries SET {set} WHERE id = ? AND lease_owner = ? AND status = 'pending'"
            ),
            values,
        ))
        .await?;
    Ok(done.rows_affected() == 1)
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
        vec![millis(now + lease).into()],
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
        vec![millis(until).into(), reason.into(), millis(now).into()],
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
        vec![millis(now).into(), latency.into(), millis(now).into()],
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
        vec![reason.into(), millis(now).into()],
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
            millis(next).into(),
            error.into(),
            millis(now).into(),
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
            millis(day).into(),
        ]
    };
    db.execute_raw(statement(
        backend(db),
        "INSERT INTO delivery_quota (installation_id, merchant_id, day, used, held) VALUES (?, ?, ?, 0, 0) \
         ON CONFLICT DO NOTHING",
        key(),
    ))
    .await?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut values = key();
    values.push(limit.into());
    let done = db
        .execute_raw(statement(
            backend(db),
            "UPDATE delivery_quota SET held = held + 1 \
             WHERE installation_id = ? AND merchant_id = ? AND day = ? AND used + held < ?",
            values,
        ))
        .await?;
    if done.rows_affected() == 1 {
        return Ok(Hold::Held);
    }
    let used: i64 = db
        .query_one_raw(statement(
            backend(db),
            "SELECT used FROM delivery_quota WHERE installation_id = ? AND merchant_id = ? AND day = ?",
            key(),
        ))
        .await?
        .map(|row| row.try_get("", "used"))
        .transpose()?
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
    db.execute_raw(statement(
        backend(db),
        "UPDATE delivery_quota SET held = held - 1, used = used + ? \
         WHERE installation_id = ? AND merchant_id = ? AND day = ? AND held > 0",
        vec![
            i64::from(delivered).into(),
            installation_id.into(),
            merchant_id.into(),
            millis(day).into(),
        ],
    ))
    .await?;
    Ok(())
}

/// Filters of the delivery log.
#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    pub installation_id: Option<String>,
    pub status: Option<String>,
    pub event_id: Option<String>,
    pub limit: u64,
    pub offset: u64,
}

const DELIVERY_COLUMNS: &str = "id, event_id, kind, installation_id, merchant_id, status, attempts, \
     next_attempt_at, last_error, latency_ms, created_at, delivered_at";

fn scope_filter(scope: &Place, values: &mut Vec<Value>) -> String {
    let mut clauses = vec!["1 = 1".to_owned()];
    for (kind, column) in [
        (NodeKind::Partner, "partner_id"),
        (NodeKind::Agent, "agent_id"),
        (NodeKind::Merchant, "merchant_id"),
    ] {
        if let Some(id) = scope.ancestor(kind) {
            clauses.push(format!("{column} = ?"));
            values.push(id.into());
        }
    }
    clauses.join(" AND ")
}

fn delivery_of(row: &QueryResult) -> Result<Delivery, Error> {
    let status: String = row.try_get("", "status")?;
    let next: i64 = row.try_get("", "next_attempt_at")?;
    Ok(Delivery {
        id: row.try_get("", "id")?,
        event_id: row.try_get("", "event_id")?,
        kind: row.try_get("", "kind")?,
        installation_id: row.try_get("", "installation_id")?,
        merchant_id: row.try_get("", "merchant_id")?,
        next_attempt_at: (status == "pending").then(|| from_millis(next)),
        status,
        attempts: row.try_get("", "attempts")?,
        last_error: row.try_get("", "last_error")?,
        latency_ms: row.try_get("", "latency_ms")?,
        created_at: from_millis(row.try_get("", "created_at")?),
        delivered_at: row
            .try_get::<Option<i64>>("", "delivered_at")?
            .map(from_millis),
    })
}

/// The delivery log inside `scope`, newest first.
pub async fn deliveries(
    db: &impl ConnectionTrait,
    scope: &Place,
    filter: &DeliveryFilter,
) -> Result<(Vec<Delivery>, u64), Error> {
    let mut values = Vec::new();
    let mut condition = scope_filter(scope, &mut values);
    for (column, value) in [
        ("installation_id", &filter.installation_id),
        ("status", &filter.status),
        ("event_id", &filter.event_id),
    ] {
        if let Some(v) = value {
            condition.push_str(&format!(" AND {column} = ?"));
            values.push(v.clone().into());
        }
    }
    let total = db
        .query_one_raw(statement(
            backend(db),
            &format!("SELECT COUNT(*) AS n FROM event_deliveries WHERE {condition}"),
            values.clone(),
        ))
        .await?
        .map(|r| r.try_get::<i64>("", "n"))
        .transpose()?
        .unwrap_or(0);
    values.push(
        i64::try_from(filter.limit.clamp(1, 200))
            .unwrap_or(50)
            .into(),
    );
    values.push(i64::try_from(filter.offset).unwrap_or(0).into());
    let rows = db
        .query_all_raw(statement(
            backend(db),
            &format!(
                "SELECT {DELIVERY_COLUMNS} FROM event_deliveries WHERE {condition} \
                 ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?"
            ),
            values,
        ))
        .await?;
    let items = rows.iter().map(delivery_of).collect::<Result<_, _>>()?;
    Ok((items, u64::try_from(total).unwrap_or(0)))
}

/// One delivery inside `scope`.
pub async fn delivery(
    db: &impl ConnectionTrait,
    scope: &Place,
    id: &str,
) -> Result<Delivery, Error> {
    let mut values = Vec::new();
    let condition = scope_filter(scope, &mut values);
    values.push(id.into());
    let row = db
        .query_one_raw(statement(
            backend(db),
            &format!(
                "SELECT {DELIVERY_COLUMNS} FROM event_deliveries WHERE {condition} AND id = ?"
            ),
            values,
        ))
        .await?
        .ok_or_else(|| Error::NotFound(id.to_owned()))?;
    delivery_of(&row)
}

/// Puts a finished delivery (delivered, skipped or dead) back in the queue now. A pending one
/// is left alone: it is already on its way.
pub async fn redeliver(
    db: &impl ConnectionTrait,
    delivery: &Delivery,
    now: DateTime<Utc>,
) -> Result<(), Error> {
    db.execute_raw(statement(
        backend(db),
        "UPDATE event_deliveries SET status = 'pending', next_attempt_at = ?, attempts = 0, lease_until = NULL, \
         lease_owner = NULL, delivered_at = NULL, updated_at = ? WHERE id = ? AND status <> 'pending'",
        vec![millis(now).into(), millis(now).into(), delivery.id.clone().into()],
    ))
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let backoff = Backoff {
            first: Duration::seconds(2),
            max: Duration::seconds(60),
            max_attempts: 8,
        };
        let first = backoff.delay(1);
        assert!(first >= Duration::seconds(2) && first <= Duration::milliseconds(2_500));
        let third = backoff.delay(3);
        assert!(third >= Duration::seconds(8) && third <= Duration::seconds(10));
        let late = backoff.delay(30);
        assert!(late >= Duration::seconds(60) && late <= Duration::seconds(75));
    }
}
