//! Delivering one claimed event to its installation: whether it may be delivered now
//! (installed, tenant active, merchant entitled, within its daily quota) and what became of the
//! attempt. A successful attempt is marked delivered in the commit of what the plugin did; the
//! dispatcher records every other outcome.
//!
//! Invariant: entitlement and quota are checked at the moment of delivery, not when the event
//! was recorded (what only administrators change is kept for `database.recent_reads_ms`); a
//! quota hold taken for an attempt is always settled, and only a successful delivery uses it up.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{Value as Json, json};

use super::catalog::{self, Catalog, Installation, Live};
use super::{Call, Error, Event, PluginError};
use crate::events;
use crate::packages;

/// How long a delivery found held by a suspension waits before its next claim.
const HELD_PAUSE_SECS: i64 = 5;

/// What became of one delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Delivered, and already recorded so with what the plugin did.
    Done,
    Skip(String),
    Retry(String),
    /// Not attempted; due again at this instant (the attempt is not counted).
    Later(DateTime<Utc>, String),
}

/// Delivers one claimed event, held by `owner`; the dispatcher records the outcome unless it is
/// [`Delivery::Done`].
pub async fn deliver(catalog: &Catalog, claim: &events::Claimed, owner: &str) -> Delivery {
    let installation = match catalog.installation_kept(&claim.installation_id).await {
        Ok(i) => i,
        Err(catalog::Error::NotInstalled(_)) => return Delivery::Skip("uninstalled".into()),
        Err(e) => return Delivery::Retry(e.to_string()),
    };
    if installation.status != "installed" {
        return Delivery::Skip("uninstalled".into());
    }
    // Claims hold a suspended tenant's deliveries back; this one was claimed just before the
    // suspension, so it waits with them for the tenant to be active again. Claims skip it while
    // the suspension lasts, so a short pause suffices and a resume releases it within seconds.
    match catalog.is_blocked(&claim.place).await {
        Ok(true) => {
            return Delivery::Later(
                catalog.now() + chrono::Duration::seconds(HELD_PAUSE_SECS),
                "held: the tenant is suspended".into(),
            );
        }
        Ok(false) => {}
        Err(e) => return Delivery::Retry(e.to_string()),
    }
    let now = catalog.now();
    let mut config = json!({});
    let mut quotas = packages::Quotas::default();
    let mut reserved = None;
    if let Some(merchant_id) = &claim.place.merchant_id {
        let entitlement = match catalog
            .entitlement(merchant_id, &installation.plugin_id)
            .await
        {
            Ok(e) => e,
            Err(packages::Error::Expired(_)) => {
                return Delivery::Skip("package_expired".into());
            }
            Err(packages::Error::NotEntitled(_)) => {
                return Delivery::Skip("not_entitled".into());
            }
            Err(e) => return Delivery::Retry(e.to_string()),
        };
        quotas = entitlement.quotas.clone();
        match catalog.config_kept(&installation.id, merchant_id).await {
            Ok(Some(c)) => config = c,
            Ok(None) => {}
            Err(e) => return Delivery::Retry(e.to_string()),
        }
        // The quota is held last: nothing may return between holding and settling it.
        if let Some(per_day) = entitlement.quotas.events_per_day {
            let day = china_day_start(now);
            match events::reserve_quota(&catalog.db, &installation.id, merchant_id, day, per_day)
                .await
            {
                Ok(events::Hold::Held) => reserved = Some((merchant_id.clone(), day)),
                Ok(events::Hold::Exhausted) => {
                    return Delivery::Skip(format!("quota_exceeded: {per_day} events per day"));
                }
                Ok(events::Hold::Busy) => {
                    return Delivery::Later(
                        now + chrono::Duration::seconds(2),
                        "postponed: deliveries in flight hold the rest of today's quota".into(),
                    );
                }
                Err(e) => return Delivery::Retry(e.to_string()),
            }
        }
    }
    let held = catalog::Claim {
        claim: claim.clone(),
        owner: owner.to_owned(),
        quota: reserved.clone(),
    };
    let outcome = attempt(catalog, installation, (config, quotas), held).await;
    // A delivered attempt used its hold up in its commit; any other gives it back.
    if outcome != Delivery::Done
        && let Some((merchant_id, day)) = reserved
        && let Err(error) = events::settle_quota(
            &catalog.db,
            &claim.installation_id,
            &merchant_id,
            day,
            false,
        )
        .await
    {
        tracing::warn!(%error, "could not settle a quota hold");
    }
    outcome
}

async fn attempt(
    catalog: &Catalog,
    installation: Arc<Installation>,
    (config, quotas): (Json, packages::Quotas),
    held: catalog::Claim,
) -> Delivery {
    let claim = &held.claim;
    if !installation.subscribe.contains(&claim.kind) {
        return Delivery::Skip("not_subscribed".into());
    }
    let loaded = match catalog.loaded_of(&installation).await {
        Ok(l) => l,
        Err(e) => return Delivery::Retry(e.to_string()),
    };
    let theme = catalog
        .theme_kept(&installation.partner_id)
        .await
        .unwrap_or_default();
    let config =
        catalog::configuration::with_defaults(loaded.manifest.config.schema.as_ref(), config);
    let live = Live {
        installation,
        loaded,
        config,
        theme,
        quotas,
    };
    let call = Call::Event(Event {
        id: claim.event_id.clone(),
        kind: claim.kind.clone(),
        occurred_at: claim.occurred_at,
        payload: claim.payload.clone(),
    });
    let place = claim.place.clone();
    let cause = catalog::Cause {
        depth: claim.depth,
        root_id: Some(claim.root_id.clone()),
        claim: Some(held),
        via: catalog::Via::default(),
    };
    let (outcome, refusal) = catalog
        .invoke_in_chain(&live, &place, "zh-CN", call, cause)
        .await;
    match (outcome.result, refusal) {
        (Ok(_), _) => Delivery::Done,
        // The plugin gave up on an emission the engine refused: a spent chain stays spent,
        // while the pace allows the emission again later (without counting an attempt).
        (Err(Error::Plugin(_)), Some(events::Refusal::Chain(reason))) => {
            Delivery::Skip(format!("over_budget: {reason}"))
        }
        (Err(Error::Plugin(_)), Some(events::Refusal::Pace { message, retry_at })) => {
            Delivery::Later(retry_at, format!("postponed: {message}"))
        }
        (Err(Error::NotSubscribed(_)), _) => Delivery::Skip("not_subscribed".into()),
        (Err(Error::Plugin(PluginError::Unsupported { .. })), _) => {
            Delivery::Skip("not_handled: the plugin has no event handler".into())
        }
        // The engine, not the plugin, could not run it: try again later without counting
        // an attempt.
        (Err(Error::Busy { .. }), _) => Delivery::Later(
            catalog.now() + chrono::Duration::seconds(2),
            "postponed: the plugin runtime was busy".into(),
        ),
        (Err(Error::Suspended { until }), _) => Delivery::Later(
            until,
            format!("postponed: the installation is suspended until {until}"),
        ),
        (Err(e), _) => Delivery::Retry(e.to_string()),
    }
}

/// Midnight China time of the day `now` falls in: the platform's business day.
pub fn china_day_start(now: DateTime<Utc>) -> DateTime<Utc> {
    let shifted = now + chrono::Duration::hours(8);
    let midnight = shifted
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .unwrap_or_default()
        .and_utc();
    midnight - chrono::Duration::hours(8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_business_day_starts_at_midnight_in_china() {
        let at = DateTime::parse_from_rfc3339("2026-11-26T17:30:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            china_day_start(at).to_rfc3339(),
            "2026-11-26T16:00:00+00:00"
        );
        let at = DateTime::parse_from_rfc3339("2026-11-26T15:59:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            china_day_start(at).to_rfc3339(),
            "2026-11-25T16:00:00+00:00"
        );
    }
}
