//! Events recorded inside a caller's transaction and written together at its end: one
//! multi-row insert for the events and one for their deliveries, however many there are. The
//! payment ledger announces its changes this way, in the same commit as the changes.
//!
//! Invariant: nothing is written until [`Outbox::write`], which the caller runs in the
//! transaction that holds what the events announce; no chain budget applies (these events
//! start no plugin chain).

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, Value};
use uuid::Uuid;

use super::{Error, NewEvent, is_event_kind};
use crate::db::sql::{self, Millis};

/// Rows per insert statement: well under SQLite's limit on bound values.
const ROWS_PER_INSERT: usize = 200;

/// Events and deliveries waiting for their transaction's end.
#[derive(Debug, Default)]
pub struct Outbox {
    events: Vec<[Value; 10]>,
    deliveries: Vec<[Value; 10]>,
}

impl Outbox {
    /// Adds `event` with one pending delivery per subscriber; returns the event id.
    pub fn push(
        &mut self,
        event: &NewEvent,
        subscribers: &[String],
        now: DateTime<Utc>,
    ) -> Result<String, Error> {
        if !is_event_kind(&event.kind) {
            return Err(Error::Invalid {
                field: "kind",
                message: format!("{:?} is not an event kind", event.kind),
            });
        }
        let partner_id = event.place.partner_id.clone().ok_or(Error::Invalid {
            field: "place",
            message: "events belong to a partner's tenant".into(),
        })?;
        let id = Uuid::now_v7().to_string();
        self.events.push([
            id.clone().into(),
            event.kind.clone().into(),
            partner_id.clone().into(),
            event.place.agent_id.clone().into(),
            event.place.merchant_id.clone().into(),
            event.payload.to_string().into(),
            event.source.clone().into(),
            event.depth.into(),
            Option::<String>::None.into(),
            Millis(event.occurred_at).into(),
        ]);
        for installation in subscribers {
            self.deliveries.push([
                Uuid::now_v7().to_string().into(),
                id.clone().into(),
                installation.clone().into(),
                partner_id.clone().into(),
                event.place.agent_id.clone().into(),
                event.place.merchant_id.clone().into(),
                event.kind.clone().into(),
                Millis(now).into(),
                Millis(now).into(),
                Millis(now).into(),
            ]);
        }
        Ok(id)
    }

    /// Writes everything pushed so far inside `txn`, and empties the outbox.
    pub async fn write(&mut self, txn: &impl ConnectionTrait) -> Result<(), Error> {
        insert(
            txn,
            "INSERT INTO events (id, kind, partner_id, agent_id, merchant_id, payload, source, depth, \
             root_id, occurred_at) VALUES ",
            "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            std::mem::take(&mut self.events),
        )
        .await?;
        insert(
            txn,
            "INSERT INTO event_deliveries (id, event_id, installation_id, partner_id, agent_id, \
             merchant_id, kind, status, attempts, next_attempt_at, created_at, updated_at) VALUES ",
            "(?, ?, ?, ?, ?, ?, ?, 'pending', 0, ?, ?, ?)",
            std::mem::take(&mut self.deliveries),
        )
        .await
    }
}

async fn insert(
    txn: &impl ConnectionTrait,
    head: &str,
    row: &str,
    rows: Vec<[Value; 10]>,
) -> Result<(), Error> {
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let chunk: Vec<[Value; 10]> = rows.by_ref().take(ROWS_PER_INSERT).collect();
        let statement = format!("{head}{}", vec![row; chunk.len()].join(", "));
        sql::query(&statement, chunk.into_iter().flatten())
            .execute(txn)
            .await?;
    }
    Ok(())
}
