//! What the catalog commits with an invocation's kv writes: the events it emitted (in the outbox,
//! charged to their chain) and, for an event delivery, that it was delivered.
//!
//! Invariant: an invocation's kv writes, its emitted events and its delivery's `delivered` mark
//! are one transaction: a failed or refused invocation leaves no write and no event behind, and
//! a delivery whose claim passed to another dispatcher commits nothing (the new holder runs it).

use chrono::{DateTime, Utc};
use sea_orm::DatabaseTransaction;

use super::{Catalog, Error};
use crate::events::{self, NewEvent};
use crate::plugins::{BoxFuture, Delivered, Emitted, Finish, FinishError};
use crate::tenancy::Place;

/// A claimed delivery the invocation handles, marked delivered in its commit.
pub(in crate::plugins) struct Claim {
    pub claim: events::Claimed,
    /// The dispatcher holding the claim.
    pub owner: String,
    /// The merchant and business day of the quota hold taken for this attempt, used up when it
    /// is delivered.
    pub quota: Option<(String, DateTime<Utc>)>,
}

/// The catalog's finishing work for one invocation.
pub(super) struct Recorder {
    pub catalog: Catalog,
    pub place: Place,
    pub plugin_id: String,
    pub installation_id: String,
    /// The depth of the events it emits.
    pub depth: i32,
    pub root_id: Option<String>,
    pub emitter: events::Emitter,
    pub claim: Option<Claim>,
}

/// A database failure as the commit reports it; anything else becomes its message.
fn failure(error: impl Into<Error>) -> FinishError {
    match error.into() {
        Error::Db(e) | Error::Events(events::Error::Db(e)) => FinishError::Db(e),
        other => FinishError::Db(sea_orm::DbErr::Custom(other.to_string())),
    }
}

impl Recorder {
    async fn record(
        &self,
        tx: &DatabaseTransaction,
        emitted: &[Emitted],
    ) -> Result<(), FinishError> {
        let Some(partner_id) = &self.place.partner_id else {
            return Ok(());
        };
        let now = self.catalog.now();
        if !emitted.is_empty() {
            let subscriptions = super::subscriptions_on(tx, partner_id)
                .await
                .map_err(failure)?;
            for emitted in emitted {
                let subscribers: Vec<String> = subscriptions
                    .iter()
                    .filter(|(_, kinds)| kinds.contains(&emitted.kind))
                    .map(|(id, _)| id.clone())
                    .collect();
                let event = NewEvent {
                    kind: emitted.kind.clone(),
                    place: self.place.clone(),
                    payload: emitted.payload.clone(),
                    source: format!("plugin:{}", self.plugin_id),
                    occurred_at: now,
                    depth: self.depth,
                };
                match events::publish_in(
                    tx,
                    &event,
                    &subscribers,
                    self.root_id.as_deref(),
                    &self.catalog.event_limits,
                    now,
                )
                .await
                {
                    Ok(_) => {}
                    // The chain's fan-out is spent: this event is dropped, the rest is kept.
                    Err(error @ events::Error::OverBudget { .. }) => {
                        tracing::warn!(%error, kind = %event.kind, installation = %self.installation_id, "an emitted event was not recorded");
                    }
                    Err(error) => return Err(failure(error)),
                }
            }
        }
        Ok(())
    }
}

impl Finish for Recorder {
    fn has_work(&self, emitted: &[Emitted]) -> bool {
        self.claim.is_some() || !emitted.is_empty()
    }

    fn delivery(&self) -> Option<Delivered<'_>> {
        let claim = self.claim.as_ref()?;
        Some(Delivered {
            claim: &claim.claim,
            owner: &claim.owner,
            quota: claim
                .quota
                .as_ref()
                .map(|(merchant, day)| (self.installation_id.as_str(), merchant.as_str(), *day)),
            now: self.catalog.now(),
        })
    }

    fn write<'a>(
        &'a self,
        tx: &'a DatabaseTransaction,
        emitted: &'a [Emitted],
    ) -> BoxFuture<'a, Result<(), FinishError>> {
        Box::pin(async move {
            self.record(tx, emitted).await?;
            let Some(claim) = &self.claim else {
                return Ok(());
            };
            let now = self.catalog.now();
            let held = events::delivered(tx, &claim.claim, &claim.owner, now)
                .await
                .map_err(failure)?;
            if !held {
                return Err(FinishError::Lost(
                    "the delivery's claim passed to another dispatcher, which delivers it".into(),
                ));
            }
            if let Some((merchant_id, day)) = &claim.quota {
                events::settle_quota(tx, &self.installation_id, merchant_id, *day, true)
                    .await
                    .map_err(failure)?;
            }
            Ok(())
        })
    }

    fn discard(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Err(error) = events::refund(&self.catalog.db, &self.emitter).await {
                tracing::warn!(%error, installation = %self.installation_id, "could not give back what a failed call's emissions were charged");
            }
        })
    }
}
