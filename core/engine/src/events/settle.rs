//! Marking many claimed deliveries delivered at once, for a commit of several invocations.
//!
//! Invariant: the same guard as one mark ([`super::delivered`]): a delivery moves to
//! `delivered` only while still pending and leased to the dispatcher that ran it; the ones
//! that were not come back as not held, and their invocations must commit nothing.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, FromQueryResult, Value};

use super::{Claimed, Error};
use crate::db::sql::{self, Millis};

/// Deliveries per statement (seven values each).
const CHUNK: usize = 200;

/// Marks each `(claim, owner, at)` delivered at its moment; returns, in order, whether its
/// claim was still held (and so is marked now).
pub async fn delivered_many(
    db: &impl ConnectionTrait,
    claims: &[(&Claimed, &str, DateTime<Utc>)],
) -> Result<Vec<bool>, Error> {
    #[derive(FromQueryResult)]
    struct Marked {
        id: String,
    }
    let mut by_owner: BTreeMap<&str, Vec<(&Claimed, DateTime<Utc>)>> = BTreeMap::new();
    for (claim, owner, at) in claims {
        by_owner.entry(owner).or_default().push((claim, *at));
    }
    // `COALESCE(status, '')`: the guard must not steer SQLite's planner to the status index
    // (every pending delivery) when the ids name the rows.
    let mut held = HashSet::new();
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
            let marked: Vec<Marked> = sql::query(
                &format!(
                    "UPDATE event_deliveries SET status = 'delivered', delivered_at = CASE id {cases} END, \
                     latency_ms = CASE id {cases} ELSE 0 END, lease_until = NULL, last_error = NULL, \
                     updated_at = CASE id {cases} END \
                     WHERE id IN ({}) AND lease_owner = ? AND COALESCE(status, '') = 'pending' RETURNING id",
                    sql::marks(chunk.len())
                ),
                values,
            )
            .all(db)
            .await?;
            held.extend(marked.into_iter().map(|m| m.id));
        }
    }
    Ok(claims
        .iter()
        .map(|(claim, _, _)| held.contains(&claim.delivery_id))
        .collect())
}

/// Settles `n` quota holds of (installation, merchant, day) as used: what [`super::settle_quota`]
/// does `n` times, in one statement.
pub async fn settle_delivered(
    db: &impl ConnectionTrait,
    installation_id: &str,
    merchant_id: &str,
    day: DateTime<Utc>,
    n: i64,
) -> Result<(), Error> {
    // Each settlement takes one hold when there is one left: n of them take min(n, held).
    sql::query(
        "UPDATE delivery_quota SET used = used + CASE WHEN held < ? THEN held ELSE ? END, \
         held = CASE WHEN held < ? THEN 0 ELSE held - ? END \
         WHERE installation_id = ? AND merchant_id = ? AND day = ? AND held > 0",
        [
            n.into(),
            n.into(),
            n.into(),
            n.into(),
            installation_id.into(),
            merchant_id.into(),
            Millis(day).into(),
        ],
    )
    .execute(db)
    .await?;
    Ok(())
}
