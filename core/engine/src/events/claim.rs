//! Claiming due deliveries fairly: in turns across partners and, within a partner, across
//! merchants, holding back suspended tenants and partners that have no room left.
//!
//! Invariant: a delivery is leased to one dispatcher at a time; a suspended tenant's deliveries
//! are never claimed.

use chrono::{DateTime, Duration, Utc};
use sea_orm::{ConnectionTrait, FromQueryResult, Value};
use serde_json::Value as Json;

use super::{Claimed, Error};
use crate::db::sql::{self, Millis, RowLock};
use crate::tenancy::{NodeKind, Place};

/// Deliveries of a suspended partner, agent or merchant: held out of every claim until the node
/// is active again. The suspended nodes are few, so each list is read once per statement.
const NOT_SUSPENDED: &str = "partner_id NOT IN (SELECT id FROM nodes WHERE status = 'suspended') \
     AND (agent_id IS NULL OR agent_id NOT IN (SELECT id FROM nodes WHERE status = 'suspended')) \
     AND (merchant_id IS NULL OR merchant_id NOT IN (SELECT id FROM nodes WHERE status = 'suspended'))";

/// How many deliveries of each partner the claiming process may still start: one partner may
/// hold at most `per_partner` of its slots, so the rest stay free for the others however slow
/// that partner's plugins are.
#[derive(Debug, Clone, Copy)]
pub struct Room<'a> {
    /// This process's deliveries in flight, by partner.
    pub in_flight: &'a std::collections::HashMap<String, usize>,
    pub per_partner: usize,
    /// A partner with less room than this is left out of the claim: giving it one slot at a
    /// time would rank every due delivery for each one.
    pub least: usize,
}

impl Room<'_> {
    fn of(&self, partner_id: &str) -> usize {
        self.per_partner
            .saturating_sub(self.in_flight.get(partner_id).copied().unwrap_or(0))
    }

    fn held_back(&self) -> Vec<String> {
        self.in_flight
            .keys()
            .filter(|p| self.of(p) < self.least.max(1))
            .cloned()
            .collect()
    }
}

/// Claims up to `batch` due deliveries for `owner` until `now + lease`, in turns: the oldest due
/// delivery of every partner comes before the second of any, and within a partner the oldest of
/// every merchant before the second of any, so one tenant's backlog delays another's deliveries
/// by at most a round rather than by the whole backlog. Deliveries of suspended tenants are held,
/// and no partner gets more than its `room`.
///
/// The turns are ranked by a read (no locks; it reads every due delivery), then the first
/// `batch` still claimable are leased by a short write; rows another dispatcher leased meanwhile
/// are passed over (on PostgreSQL rows it is leasing are skipped, `FOR UPDATE SKIP LOCKED`;
/// SQLite serialises writers, so each write is atomic as it stands).
pub async fn claim(
    db: &impl ConnectionTrait,
    owner: &str,
    batch: u32,
    room: Room<'_>,
    lease: Duration,
    max_attempts: i32,
    now: DateTime<Utc>,
) -> Result<Vec<Claimed>, Error> {
    // A read first: an idle dispatcher polls often, and must not take SQLite's write lock
    // (or PostgreSQL row locks) when nothing is due.
    let due: Option<String> = sql::query(
        &format!(
            "SELECT id FROM event_deliveries WHERE status = 'pending' AND next_attempt_at <= ? \
             AND (lease_until IS NULL OR lease_until < ?) AND {NOT_SUSPENDED} LIMIT 1"
        ),
        [Millis(now).into(), Millis(now).into()],
    )
    .scalar(db)
    .await?;
    if due.is_none() {
        return Ok(Vec::new());
    }
    // Twice the batch: another dispatcher ranking at the same moment takes the same first turns.
    let candidates = fair_turns(
        db,
        batch.saturating_mul(2),
        &room.held_back(),
        max_attempts,
        now,
    )
    .await?;
    let mut taken: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    let candidates: Vec<String> = candidates
        .iter()
        .filter(|(_, partner)| {
            let count = taken.entry(partner.as_str()).or_default();
            *count += 1;
            *count <= room.of(partner)
        })
        .map(|(id, _)| id.clone())
        .collect();
    let mut claimed: Vec<String> = Vec::new();
    let mut rest = candidates.as_slice();
    let wanted = usize::try_from(batch).unwrap_or(usize::MAX);
    while claimed.len() < wanted && !rest.is_empty() {
        let (chunk, after) = rest.split_at((wanted - claimed.len()).min(rest.len()));
        rest = after;
        let _turn = crate::db::write_turn(db).await;
        claimed.extend(lease_rows(db, owner, chunk, lease, max_attempts, now).await?);
    }
    if claimed.is_empty() {
        return Ok(Vec::new());
    }
    let marks = sql::marks(claimed.len());
    let mut values: Vec<Value> = claimed.into_iter().map(Value::from).collect();
    values.push(owner.into());
    let rows: Vec<ClaimedRow> = sql::query(
        &format!(
            "SELECT d.id, d.event_id, d.installation_id, d.attempts, e.kind, e.partner_id, e.agent_id, \
             e.merchant_id, e.payload, e.source, e.depth, e.root_id, e.occurred_at FROM event_deliveries d \
             JOIN events e ON e.id = d.event_id WHERE d.id IN ({marks}) AND d.lease_owner = ? \
             ORDER BY d.next_attempt_at, d.id"
        ),
        values,
    )
    .all(db)
    .await?;
    Ok(rows.into_iter().map(Claimed::from).collect())
}

/// Marks dead the deliveries whose every attempt was claimed but never recorded (their
/// dispatchers died each time), rather than claiming them for ever. It reads every pending
/// delivery, so dispatchers run it now and then, not with every claim.
pub async fn bury_abandoned(
    db: &impl ConnectionTrait,
    max_attempts: i32,
    now: DateTime<Utc>,
) -> Result<u64, Error> {
    Ok(sql::query(
        "UPDATE event_deliveries SET status = 'dead', last_error = ?, lease_until = NULL, updated_at = ? \
         WHERE status = 'pending' AND attempts >= ? AND lease_until IS NOT NULL AND lease_until < ?",
        [
            format!("no outcome recorded after {max_attempts} attempts (the dispatchers holding it stopped)").into(),
            Millis(now).into(),
            max_attempts.into(),
            Millis(now).into(),
        ],
    )
    .execute(db)
    .await?)
}

/// Up to `limit` due deliveries (id, partner) in fair order: by turn within their partner (each
/// merchant's oldest first, then each one's second, …), oldest first within a turn. The
/// `held_back` partners are left out.
async fn fair_turns(
    db: &impl ConnectionTrait,
    limit: u32,
    held_back: &[String],
    max_attempts: i32,
    now: DateTime<Utc>,
) -> Result<Vec<(String, String)>, Error> {
    let limit = i64::from(limit);
    let mut values: Vec<Value> = Vec::new();
    let held_back = if held_back.is_empty() {
        String::new()
    } else {
        values.extend(held_back.iter().cloned().map(Value::from));
        format!(" AND partner_id NOT IN ({})", sql::marks(held_back.len()))
    };
    let due = "status = 'pending' AND partner_id = g.partner_id AND next_attempt_at <= ? \
               AND attempts < ? AND (lease_until IS NULL OR lease_until < ?)";
    let first = |values: &mut Vec<Value>| {
        values.extend([
            Millis(now).into(),
            max_attempts.into(),
            Millis(now).into(),
            limit.into(),
        ]);
    };
    // No merchant or partner can have more than `limit` deliveries among the first `limit`, so
    // only the first `limit` due deliveries of each (partner, merchant) are ranked: each is an
    // index range, and the ranking costs as much however long the backlog behind them is.
    let firsts = match sql::backend(db) {
        // A lateral join runs each range once per (partner, merchant); an equality keeps it on
        // the index, so deliveries without a merchant are a range of their own.
        sea_orm::DbBackend::Postgres => {
            first(&mut values);
            first(&mut values);
            format!(
                "CROSS JOIN LATERAL (\
                   (SELECT id, next_attempt_at FROM event_deliveries WHERE {due} \
                    AND merchant_id = g.merchant_id AND {NOT_SUSPENDED} ORDER BY next_attempt_at, id LIMIT ?) \
                   UNION ALL \
                   (SELECT id, next_attempt_at FROM event_deliveries WHERE {due} \
                    AND g.merchant_id IS NULL AND merchant_id IS NULL AND {NOT_SUSPENDED} \
                    ORDER BY next_attempt_at, id LIMIT ?)\
                 ) d"
            )
        }
        // SQLite has no lateral joins; `IS` compares NULLs and keeps to the index.
        _ => {
            first(&mut values);
            format!(
                "JOIN event_deliveries d ON d.id IN (\
                   SELECT id FROM event_deliveries WHERE {due} AND merchant_id IS g.merchant_id \
                   AND {NOT_SUSPENDED} ORDER BY next_attempt_at, id LIMIT ?)"
            )
        }
    };
    values.extend([limit.into(), limit.into()]);
    let turns: Vec<Turn> = sql::query(
        &format!(
            "SELECT id, partner_id FROM (\
               SELECT id, partner_id, next_attempt_at, \
               ROW_NUMBER() OVER (PARTITION BY partner_id ORDER BY merchant_turn, next_attempt_at, id) AS turn \
               FROM (\
                 SELECT d.id, g.partner_id, d.next_attempt_at, \
                 ROW_NUMBER() OVER (PARTITION BY g.partner_id, g.merchant_id ORDER BY d.next_attempt_at, d.id) AS merchant_turn \
                 FROM (SELECT DISTINCT partner_id, merchant_id FROM event_deliveries \
                       WHERE status = 'pending'{held_back}) g {firsts}\
               ) per_merchant\
             ) per_partner WHERE turn <= ? ORDER BY turn, next_attempt_at, id LIMIT ?"
        ),
        values,
    )
    .all(db)
    .await?;
    Ok(turns.into_iter().map(|t| (t.id, t.partner_id)).collect())
}

/// A due delivery in the fair order, and whose it is.
#[derive(FromQueryResult)]
struct Turn {
    id: String,
    partner_id: String,
}

/// Leases those of `ids` that are still claimable to `owner`; returns the ids it leased.
async fn lease_rows(
    db: &impl ConnectionTrait,
    owner: &str,
    ids: &[String],
    lease: Duration,
    max_attempts: i32,
    now: DateTime<Utc>,
) -> Result<Vec<String>, Error> {
    let marks = sql::marks(ids.len());
    let mut values: Vec<Value> = vec![owner.into(), Millis(now + lease).into(), Millis(now).into()];
    values.extend(ids.iter().cloned().map(Value::from));
    values.extend([max_attempts.into(), Millis(now).into()]);
    let claimable =
        "status = 'pending' AND attempts < ? AND (lease_until IS NULL OR lease_until < ?)";
    // PostgreSQL passes over rows another dispatcher is leasing; SQLite's writers take turns,
    // and there the ids are looked up by their key directly.
    let which = match sql::backend(db) {
        sea_orm::DbBackend::Postgres => {
            let lock = sql::for_update(db, RowLock::SkipLocked);
            format!(
                "id IN (SELECT id FROM event_deliveries WHERE id IN ({marks}) AND {claimable}{lock})"
            )
        }
        _ => format!("id IN ({marks}) AND {claimable}"),
    };
    let leased: Vec<Leased> = sql::query(
        &format!(
            "UPDATE event_deliveries SET lease_owner = ?, lease_until = ?, attempts = attempts + 1, updated_at = ? \
             WHERE {which} RETURNING id"
        ),
        values,
    )
    .all(db)
    .await?;
    Ok(leased.into_iter().map(|l| l.id).collect())
}

/// A delivery the lease took.
#[derive(FromQueryResult)]
struct Leased {
    id: String,
}

/// A leased delivery joined with its event, as [`claim`] reads it.
#[derive(FromQueryResult)]
struct ClaimedRow {
    id: String,
    event_id: String,
    installation_id: String,
    attempts: i32,
    kind: String,
    partner_id: String,
    agent_id: Option<String>,
    merchant_id: Option<String>,
    payload: String,
    source: String,
    depth: i32,
    root_id: Option<String>,
    occurred_at: Millis,
}

impl From<ClaimedRow> for Claimed {
    fn from(row: ClaimedRow) -> Self {
        let (id, kind) = if let Some(m) = &row.merchant_id {
            (m.clone(), NodeKind::Merchant)
        } else if let Some(a) = &row.agent_id {
            (a.clone(), NodeKind::Agent)
        } else {
            (row.partner_id.clone(), NodeKind::Partner)
        };
        Self {
            delivery_id: row.id,
            root_id: row.root_id.unwrap_or_else(|| row.event_id.clone()),
            event_id: row.event_id,
            installation_id: row.installation_id,
            place: Place {
                id,
                kind,
                partner_id: Some(row.partner_id),
                agent_id: row.agent_id,
                merchant_id: row.merchant_id,
                store_id: None,
            },
            kind: row.kind,
            payload: serde_json::from_str(&row.payload).unwrap_or(Json::Null),
            occurred_at: row.occurred_at.0,
            source: row.source,
            depth: row.depth,
            attempts: row.attempts,
        }
    }
}
