//! The event dispatcher: claims due deliveries from the outbox, delivers each to its
//! installation (entitlement and quota checked at that moment) and records the outcome.
//!
//! Invariant: a delivery's outcome is written only by the dispatcher holding its claim; any
//! number of processes may run dispatchers against one database.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;

use super::catalog::Catalog;
use super::delivery::{self, Delivery};
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

/// The deliveries this process has running, counted by partner.
#[derive(Default)]
struct Running {
    tasks: JoinSet<()>,
    partners: HashMap<tokio::task::Id, String>,
    by_partner: HashMap<String, usize>,
}

impl Running {
    fn len(&self) -> usize {
        self.tasks.len()
    }

    fn start(&mut self, partner: String, delivery: impl Future<Output = ()> + Send + 'static) {
        let id = self.tasks.spawn(delivery).id();
        *self.by_partner.entry(partner.clone()).or_default() += 1;
        self.partners.insert(id, partner);
    }

    fn ended(&mut self, result: Result<(tokio::task::Id, ()), tokio::task::JoinError>) {
        let id = match result {
            Ok((id, ())) => id,
            // A panicked delivery frees its slot too; its lease expires and it is retried.
            Err(error) => error.id(),
        };
        if let Some(partner) = self.partners.remove(&id)
            && let Some(count) = self.by_partner.get_mut(&partner)
        {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.by_partner.remove(&partner);
            }
        }
    }

    /// Counts the deliveries that ended, without waiting.
    fn reap(&mut self) {
        while let Some(result) = self.tasks.try_join_next_with_id() {
            self.ended(result);
        }
    }

    /// Waits for one delivery to end; at once when none runs.
    async fn next(&mut self) {
        if let Some(result) = self.tasks.join_next_with_id().await {
            self.ended(result);
        }
    }
}

impl Dispatcher {
    pub fn new(catalog: Catalog, options: DispatcherOptions) -> Self {
        Self {
            catalog,
            owner: format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple()),
            options,
        }
    }

    /// Attempts one claimed delivery and records its outcome.
    fn deliver(&self, claim: events::Claimed) -> impl Future<Output = ()> + Send + 'static {
        let catalog = self.catalog.clone();
        let owner = self.owner.clone();
        let backoff = self.options.backoff;
        let lease = self.options.lease;
        async move {
            // Renewed as the attempt starts; a claim lost meanwhile is not attempted.
            match events::renew_lease(&catalog.db, &claim, &owner, lease, catalog.now()).await {
                Ok(true) => {}
                Ok(false) => return,
                Err(error) => {
                    tracing::warn!(delivery = %claim.delivery_id, %error, "could not renew a claim; leaving it");
                    return;
                }
            }
            let outcome = delivery::deliver(&catalog, &claim, &owner).await;
            let now = catalog.now();
            let recorded = match &outcome {
                // Marked delivered in the commit of what the plugin did.
                Delivery::Done => Ok(true),
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
        }
    }

    /// Delivers until `stop` turns true, keeping up to `concurrency` deliveries in flight. Free
    /// slots are claimed again while the others still run, so a slow delivery holds one slot
    /// rather than a whole round; and one partner holds at most three quarters of the slots, so
    /// another partner's next turn never waits for that partner's slow plugins.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        tracing::info!(owner = %self.owner, "event dispatcher started");
        let longest = i64::from(super::manifest::ceilings::WALL_MS) / 1_000 + 1;
        if self.options.lease.num_seconds() <= longest {
            tracing::warn!(
                lease_secs = self.options.lease.num_seconds(),
                "events.lease_secs is shorter than the longest plugin wall time ({longest} s): a slow delivery may be attempted twice"
            );
        }
        let concurrency = self.options.concurrency.max(1);
        let batch = usize::try_from(self.options.batch).unwrap_or(usize::MAX);
        // Each claim ranks every due delivery, so it waits for a quarter of the slots to free
        // up rather than claiming for each one.
        let refill = (concurrency / 4).max(1);
        let per_partner = concurrency - concurrency / 4;
        let mut running = Running::default();
        loop {
            if *stop.borrow() {
                break;
            }
            running.reap();
            let free = concurrency.saturating_sub(running.len());
            if free < refill {
                tokio::select! {
                    () = running.next() => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
            let room = events::Room {
                in_flight: &running.by_partner,
                per_partner,
                least: refill,
            };
            // No more than can run at once: a claim waiting for a free slot would burn its lease.
            let claimed = events::claim(
                &self.catalog.db,
                &self.owner,
                u32::try_from(free.min(batch)).unwrap_or(u32::MAX),
                room,
                self.options.lease,
                self.options.backoff.max_attempts,
                self.catalog.now(),
            )
            .await;
            let pause = match claimed {
                Ok(claimed) if claimed.is_empty() => self.options.poll,
                Ok(claimed) => {
                    for claim in claimed {
                        let partner = claim.place.partner_id.clone().unwrap_or_default();
                        running.start(partner, self.deliver(claim));
                    }
                    continue;
                }
                Err(error) => {
                    tracing::warn!(%error, "event dispatcher round failed");
                    self.options.poll.max(Duration::from_secs(1))
                }
            };
            // Nothing to start now: wait for the poll, or until enough deliveries ended that a
            // partner held back has room again (what they emitted may be due too).
            let pause = tokio::time::sleep(pause);
            tokio::pin!(pause);
            let mut ended = 0;
            while ended < refill {
                tokio::select! {
                    () = &mut pause => break,
                    _ = stop.changed() => break,
                    () = running.next(), if running.len() > 0 => ended += 1,
                }
            }
        }
        // In-flight deliveries finish (or their leases expire and another process retries them).
        while running.len() > 0 {
            running.next().await;
        }
        tracing::info!(owner = %self.owner, "event dispatcher stopped");
    }
}
