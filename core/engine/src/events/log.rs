//! The event and delivery logs: which events were recorded (with their payloads and where they
//! came from) and what became of each delivery, as operators read them and put finished
//! deliveries back in the queue.
//!
//! Invariant: a reader sees only the events and deliveries inside its scope (its partner, agent
//! or merchant), and redelivering never touches a delivery that is still pending.

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, FromQueryResult, Value};
use serde::Serialize;
use serde_json::Value as Json;

use super::Error;
use crate::db::sql::{self, Millis};
use crate::tenancy::{NodeKind, Place};

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

/// The condition on a delivery's status. Pending is written as a literal, which lets both
/// engines read the index of pending deliveries (a partial index: for a bound value, which
/// could be anything, SQLite's planner and PostgreSQL's generic plans may not use it).
fn status_clause(status: &str, values: &mut Vec<Value>) -> String {
    if status == "pending" {
        return " AND status = 'pending'".to_owned();
    }
    values.push(status.into());
    " AND status = ?".to_owned()
}

/// A delivery as [`DELIVERY_COLUMNS`] read it.
#[derive(FromQueryResult)]
struct DeliveryRow {
    id: String,
    event_id: String,
    kind: String,
    installation_id: String,
    merchant_id: Option<String>,
    status: String,
    attempts: i32,
    next_attempt_at: Millis,
    last_error: Option<String>,
    latency_ms: Option<i64>,
    created_at: Millis,
    delivered_at: Option<Millis>,
}

impl From<DeliveryRow> for Delivery {
    fn from(row: DeliveryRow) -> Self {
        Self {
            // The column keeps the last attempt's time once the delivery is settled.
            next_attempt_at: (row.status == "pending").then_some(row.next_attempt_at.0),
            id: row.id,
            event_id: row.event_id,
            kind: row.kind,
            installation_id: row.installation_id,
            merchant_id: row.merchant_id,
            status: row.status,
            attempts: row.attempts,
            last_error: row.last_error,
            latency_ms: row.latency_ms,
            created_at: row.created_at.0,
            delivered_at: row.delivered_at.map(|at| at.0),
        }
    }
}

/// The delivery log inside `scope`, newest first.
/// One page of the delivery log newest first, after `after` (the last row's `created_at` in
/// Unix milliseconds and its id): read in index order, with no count, so a page costs the same
/// wherever it is in the log.
pub async fn deliveries_after(
    db: &impl ConnectionTrait,
    scope: &Place,
    status: Option<&str>,
    after: Option<(i64, &str)>,
    limit: u64,
) -> Result<Vec<Delivery>, Error> {
    let mut values = Vec::new();
    let mut condition = scope_filter(scope, &mut values);
    if let Some(status) = status {
        condition.push_str(&status_clause(status, &mut values));
    }
    if let Some((at, id)) = after {
        // A row value: both engines read it as one range of the (…, created_at, id) index.
        condition.push_str(" AND (created_at, id) < (?, ?)");
        values.push(at.into());
        values.push(id.into());
    }
    values.push(i64::try_from(limit.clamp(1, 200)).unwrap_or(50).into());
    let rows: Vec<DeliveryRow> = sql::query(
        &format!(
            "SELECT {DELIVERY_COLUMNS} FROM event_deliveries WHERE {condition} \
             ORDER BY created_at DESC, id DESC LIMIT ?"
        ),
        values,
    )
    .all(db)
    .await?;
    Ok(rows.into_iter().map(Delivery::from).collect())
}

pub async fn deliveries(
    db: &impl ConnectionTrait,
    scope: &Place,
    filter: &DeliveryFilter,
) -> Result<(Vec<Delivery>, u64), Error> {
    let mut values = Vec::new();
    let mut condition = scope_filter(scope, &mut values);
    if let Some(status) = &filter.status {
        condition.push_str(&status_clause(status, &mut values));
    }
    for (column, value) in [
        ("installation_id", &filter.installation_id),
        ("event_id", &filter.event_id),
    ] {
        if let Some(v) = value {
            condition.push_str(&format!(" AND {column} = ?"));
            values.push(v.clone().into());
        }
    }
    let total = sql::query(
        &format!("SELECT COUNT(*) AS n FROM event_deliveries WHERE {condition}"),
        values.clone(),
    )
    .count(db)
    .await?;
    values.push(
        i64::try_from(filter.limit.clamp(1, 200))
            .unwrap_or(50)
            .into(),
    );
    values.push(i64::try_from(filter.offset).unwrap_or(0).into());
    let rows: Vec<DeliveryRow> = sql::query(
        &format!(
            "SELECT {DELIVERY_COLUMNS} FROM event_deliveries WHERE {condition} \
             ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?"
        ),
        values,
    )
    .all(db)
    .await?;
    let items = rows.into_iter().map(Delivery::from).collect();
    Ok((items, total))
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
    let row: Option<DeliveryRow> = sql::query(
        &format!("SELECT {DELIVERY_COLUMNS} FROM event_deliveries WHERE {condition} AND id = ?"),
        values,
    )
    .one(db)
    .await?;
    row.map(Delivery::from)
        .ok_or_else(|| Error::NotFound(id.to_owned()))
}

/// Puts a finished delivery (delivered, skipped or dead) back in the queue now. A pending one
/// is left alone: it is already on its way.
pub async fn redeliver(
    db: &impl ConnectionTrait,
    delivery: &Delivery,
    now: DateTime<Utc>,
) -> Result<(), Error> {
    sql::query(
        "UPDATE event_deliveries SET status = 'pending', next_attempt_at = ?, attempts = 0, lease_until = NULL, \
         lease_owner = NULL, delivered_at = NULL, updated_at = ? WHERE id = ? AND status <> 'pending'",
        [Millis(now).into(), Millis(now).into(), delivery.id.clone().into()],
    )
    .execute(db)
    .await?;
    Ok(())
}

/// An event as the event log shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Recorded {
    pub id: String,
    pub kind: String,
    pub agent_id: Option<String>,
    pub merchant_id: Option<String>,
    /// `engine`, `api:<caller>`, or `plugin:<id>` for what a plugin emitted.
    pub source: String,
    /// Plugin hops that led to it: 0 from outside the plugins.
    pub depth: i32,
    /// The event that started its chain, when a plugin emitted it while handling another.
    pub root_id: Option<String>,
    #[schema(value_type = Object)]
    pub payload: Json,
    pub occurred_at: DateTime<Utc>,
}

/// Filters of the event log.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub kind: Option<String>,
    pub source: Option<String>,
    pub root_id: Option<String>,
    pub limit: u64,
    pub offset: u64,
}

/// Most events one page of the log holds: each carries its payload (up to 1 MiB).
pub const MAX_EVENTS_PER_PAGE: u64 = 50;

#[derive(FromQueryResult)]
struct RecordedRow {
    id: String,
    kind: String,
    agent_id: Option<String>,
    merchant_id: Option<String>,
    source: String,
    depth: i32,
    root_id: Option<String>,
    payload: String,
    occurred_at: Millis,
}

/// The event log inside `scope`, newest first.
pub async fn recorded(
    db: &impl ConnectionTrait,
    scope: &Place,
    filter: &EventFilter,
) -> Result<(Vec<Recorded>, u64), Error> {
    let mut values = Vec::new();
    let mut condition = scope_filter(scope, &mut values);
    for (column, value) in [
        ("kind", &filter.kind),
        ("source", &filter.source),
        ("root_id", &filter.root_id),
    ] {
        if let Some(v) = value {
            condition.push_str(&format!(" AND {column} = ?"));
            values.push(v.clone().into());
        }
    }
    let total = sql::query(
        &format!("SELECT COUNT(*) AS n FROM events WHERE {condition}"),
        values.clone(),
    )
    .count(db)
    .await?;
    let limit = filter.limit.clamp(1, MAX_EVENTS_PER_PAGE);
    values.push(i64::try_from(limit).unwrap_or(50).into());
    values.push(i64::try_from(filter.offset).unwrap_or(0).into());
    let rows: Vec<RecordedRow> = sql::query(
        &format!(
            "SELECT id, kind, agent_id, merchant_id, source, depth, root_id, payload, occurred_at \
             FROM events WHERE {condition} ORDER BY occurred_at DESC, id DESC LIMIT ? OFFSET ?"
        ),
        values,
    )
    .all(db)
    .await?;
    let items = rows
        .into_iter()
        .map(|row| Recorded {
            id: row.id,
            kind: row.kind,
            agent_id: row.agent_id,
            merchant_id: row.merchant_id,
            source: row.source,
            depth: row.depth,
            root_id: row.root_id,
            payload: serde_json::from_str(&row.payload).unwrap_or(Json::Null),
            occurred_at: row.occurred_at.0,
        })
        .collect();
    Ok((items, total))
}
