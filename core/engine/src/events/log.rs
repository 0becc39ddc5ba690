//! The delivery log: what became of each delivery, as operators read it and put finished ones
//! back in the queue.
//!
//! Invariant: a reader sees only the deliveries inside its scope (its partner, agent or
//! merchant), and redelivering never touches a delivery that is still pending.

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, FromQueryResult, Value};
use serde::Serialize;

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
