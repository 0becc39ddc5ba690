//! Marking many claimed deliveries delivered at once, for a commit of several invocations: the
//! statements, which the commit runs with its other writes.
//!
//! Invariant: the same guard as one mark ([`super::delivered`]): a delivery moves to
//! `delivered` only while still pending and leased to the dispatcher that ran it; the ids the
//! statements return are those it moved, and a commit that expected more must not keep them.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sea_orm::{FromQueryResult, Value};

use super::Claimed;
use crate::db::sql::{self, Millis};

/// Deliveries per statement (seven values each).
const CHUNK: usize = 200;

/// The guard of a mark: the delivery is still pending and leased to `?`, the owner.
/// `COALESCE(status, '')`: the guard must not steer SQLite's planner to the index of pending
/// deliveries (every one of them) when the ids name the rows.
const STILL_HELD: &str = "lease_owner = ? AND COALESCE(status, '') = 'pending'";

/// A delivery a mark moved to `delivered`, or one still held (see [`still_held`]).
#[derive(Debug, FromQueryResult)]
pub struct Marked {
    pub id: String,
}

/// The statements that mark each `(claim, owner, at)` delivered at its moment; they return the
/// ids of the deliveries whose claim was still held (as [`Marked`] rows).
pub fn delivered_many(claims: &[(&Claimed, &str, DateTime<Utc>)]) -> Vec<(String, Vec<Value>)> {
    let mut by_owner: BTreeMap<&str, Vec<(&Claimed, DateTime<Utc>)>> = BTreeMap::new();
    for (claim, owner, at) in claims {
        by_owner.entry(owner).or_default().push((claim, *at));
    }
    let mut statements = Vec::new();
    for (owner, claims) in by_owner {
        for chunk in claims.chunks(CHUNK) {
            let cases = vec!["WHEN ? THEN ?"; chunk.len()].join(" ");
            let mut values: Vec<Value> = Vec::with_capacity(chunk.len() * 7 + 1);
            for (claim, at) in chunk {
                values.extend([claim.delivery_id.clone().into(), Millis(*at).into()]);
            }
            for (claim, at) in chunk {
                let latency = (*at - claim.occurred_at).num_milliseconds().max(0);
                values.extend([claim.delivery_id.clone().into(), latency.into()]);
            }
            for (claim, at) in chunk {
                values.extend([claim.delivery_id.clone().into(), Millis(*at).into()]);
            }
            values.extend(
                chunk
                    .iter()
                    .map(|(c, _)| Value::from(c.delivery_id.clone())),
            );
            values.push(owner.into());
            statements.push((
                format!(
                    "UPDATE event_deliveries SET status = 'delivered', delivered_at = CASE id {cases} END, \
                     latency_ms = CASE id {cases} ELSE 0 END, lease_until = NULL, last_error = NULL, \
                     updated_at = CASE id {cases} END \
                     WHERE id IN ({}) AND {STILL_HELD} RETURNING id",
                    sql::marks(chunk.len())
                ),
                values,
            ));
        }
    }
    statements
}

/// The statements that read which of the `(claim, owner)` pairs are still held, by the guard of
/// [`delivered_many`]: rows `'c' AS what, id`. Under SQLite's write lock, what they find is what
/// the marks will move.
pub fn still_held(claims: &[(&Claimed, &str)]) -> Vec<(String, Vec<Value>)> {
    let mut by_owner: BTreeMap<&str, Vec<&Claimed>> = BTreeMap::new();
    for (claim, owner) in claims {
        by_owner.entry(owner).or_default().push(claim);
    }
    let mut statements = Vec::new();
    for (owner, claims) in by_owner {
        for chunk in claims.chunks(CHUNK) {
            let mut values: Vec<Value> = chunk
                .iter()
                .map(|c| Value::from(c.delivery_id.clone()))
                .collect();
            values.push(owner.into());
            statements.push((
                format!(
                    "SELECT 'c' AS what, id FROM event_deliveries WHERE id IN ({}) AND {STILL_HELD}",
                    sql::marks(chunk.len())
                ),
                values,
            ));
        }
    }
    statements
}

/// The statement that settles `n` quota holds of (installation, merchant, day) as used: what
/// [`super::settle_quota`] does `n` times.
pub fn settle_delivered(
    installation_id: &str,
    merchant_id: &str,
    day: DateTime<Utc>,
    n: i64,
) -> (String, Vec<Value>) {
    // Each settlement takes one hold when there is one left: n of them take min(n, held).
    (
        "UPDATE delivery_quota SET used = used + CASE WHEN held < ? THEN held ELSE ? END, \
         held = CASE WHEN held < ? THEN 0 ELSE held - ? END \
         WHERE installation_id = ? AND merchant_id = ? AND day = ? AND held > 0"
            .to_owned(),
        vec![
            n.into(),
            n.into(),
            n.into(),
            n.into(),
            installation_id.into(),
            merchant_id.into(),
            Millis(day).into(),
        ],
    )
}
