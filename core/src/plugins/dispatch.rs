//! The event dispatcher: claims due deliveries from the outbox, delivers each to its
//! installation (entitlement and quota checked at that moment) and records the outcome.
//!
//! Invariant: a delivery's outcome is written only by the dispatcher holding its claim; any
//! number of processes may run dispatchers against one database.

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;

use super::catalog::{Catalog, Delivery};
use crate::config::EventsConfig;
use crate::events::{self, Backoff};

#[derive(Debug, Clone)]
pub struct DispatcherOptions {
    pub batch: u32,
    pub concurrency: usize,
    pub lease: chrono::Duration,
    pub poll: Duration,
    pub backoff: Backoff,
}

impl DispatcherOptions {
    pub fn from_config(config: &EventsConfig) -> Self {
        let secs = |s: u64| chrono::Duration::seconds(i64::try_from(s).unwrap_or(i64::MAX / 1_000));
        Self {
            batch: config.batch,
            concurrency: usize::try_from(config.concurrency).unwrap_or(16),
            lease: secs(config.lease_secs),
            poll: Duration::from_millis(config.poll_ms),
            backoff: Backoff {
                first: secs(config.backoff_first_secs),
                max: secs(config.backoff_max_secs),
                max_attempts: i32::try_from(config.max_attempts).unwrap_or(i32::MAX),
            },
        }
    }
}

pub struct Dispatcher {
    catalog: Catalog,
    owner: String,
    options: DispatcherOptions,
}

impl Dispatcher {
    pub fn new(catalog: Catalog, options: DispatcherOptions) -> Self {
        Self {
            catalog,
            owner: format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple()),
            options,
        }
    }

    /// One round: claims a batch and delivers it, at most `concurrency` at a time. Returns how
    /// many deliveries were claimed.
    pub async fn run_once(&self) -> Result<usize, events::Error> {
        let now = self.catalog.now();
        // No more than can run at once: a claim waiting for a free slot would burn its lease.
        let batch = self
            .options
            .batch
            .min(u32::try_from(self.options.concurrency).unwrap_or(u32::MAX));
        let claimed = events::claim(
            &self.catalog.db,
            &self.owner,
            batch,
            self.options.lease,
            self.options.backoff.max_attempts,
            now,
        )
        .await?;
        let count = claimed.len();
        let mut tasks = JoinSet::new();
        for claim in claimed {
            while tasks.len() >= self.options.concurrency {
                tasks.join_next().await;
            }
            let catalog = self.catalog.clone();
            let owner = self.owner.clone();
            let backoff = self.options.backoff;
            let lease = self.options.lease;
            tasks.spawn(async move {
                // Renewed as the attempt starts; a claim lost meanwhile is not attempted.
                match events::renew_lease(&catalog.db, &claim, &owner, lease, catalog.now()).await {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(error) => {
                        tracing::warn!(delivery = %claim.delivery_id, %error, "could not renew a claim; leaving it");
                        return;
                    }
                }
                let outcome = catalog.deliver(&claim).await;
                let now = catalog.now();
                let recorded = match &outcome {
                    Delivery::Done => events::delivered(&catalog.db, &claim, &owner, now).await,
                    Delivery::Skip(reason) => {
                        events::skipped(&catalog.db, &claim, &owner, reason, now).await
                    }
                    Delivery::Later(until, reason) => {
                        events::postpone(&catalog.db, &claim, &owner, *until, reason, now).await
                    }
                    Delivery::Retry(error) => {
                        tracing::warn!(delivery = %claim.delivery_id, kind = %claim.kind, attempt = claim.attempts, %error, "event delivery failed");
                        events::failed(&catalog.db, &claim, &owner, error, &backoff, now).await
                    }
                };
                match recorded {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(delivery = %claim.delivery_id, "claim lost before the outcome was recorded; the new holder records it");
                    }
                    Err(error) => {
                        tracing::error!(delivery = %claim.delivery_id, %error, "could not record a delivery outcome; it will be retried after its lease");
                    }
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        Ok(count)
    }

    /// Runs rounds until `stop` turns true; pauses `poll` after a round that found nothing.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        tracing::info!(owner = %self.owner, "event dispatcher started");
        let longest = i64::from(super::manifest::ceilings::WALL_MS) / 1_000 + 1;
        if self.options.lease.num_seconds() <= longest {
            tracing::warn!(
                lease_secs = self.options.lease.num_seconds(),
                "events.lease_secs is shorter than the longest plugin wall time ({longest} s): a slow delivery may be attempted twice"
            );
        }
        loop {
            if *stop.borrow() {
                break;
            }
            let pause = match self.run_once().await {
                Ok(0) => self.options.poll,
                Ok(_) => Duration::ZERO,
                Err(error) => {
                    tracing::warn!(%error, "event dispatcher round failed");
                    self.options.poll.max(Duration::from_secs(1))
                }
            };
            if !pause.is_zero() {
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    _ = stop.changed() => {}
                }
            }
        }
        tracing::info!(owner = %self.owner, "event dispatcher stopped");
    }
}
