//! The event dispatcher: claims due deliveries from the outbox, delivers each to its
//! installation (entitlement and quota checked at that moment) and records the outcome.
//!
//! Invariant: a delivery's outcome is written only by the dispatcher holding its claim; any
//! number of processes may run dispatchers against one database.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

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

/// The deliveries this process has claimed: running, or waiting for a free slot; counted by
/// partner.
#[derive(Default)]
struct Running {
    tasks: JoinSet<()>,
    partners: HashMap<tokio::task::Id, String>,
    /// Claimed (running or waiting), by partner.
    by_partner: HashMap<String, usize>,
    /// Running, by partner.
    running_by_partner: HashMap<String, usize>,
    /// Claimed, in the claim's fair order, with the moment of their claim.
    waiting: VecDeque<(Instant, events::Claimed)>,
}

impl Running {
    fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Keeps a claimed delivery until a slot is free; it counts against its partner's room.
    fn wait(&mut self, claim: events::Claimed) {
        let partner = claim.place.partner_id.clone().unwrap_or_default();
        *self.by_partner.entry(partner).or_default() += 1;
        self.waiting.push_back((Instant::now(), claim));
    }

    /// Starts waiting deliveries, in the order they were claimed, until `concurrency` run;
    /// a partner with `per_partner` running waits for one of them to end.
    fn start_waiting<F>(
        &mut self,
        concurrency: usize,
        per_partner: usize,
        deliver: impl Fn(Instant, events::Claimed) -> F,
    ) where
        F: Future<Output = ()> + Send + 'static,
    {
        let mut at = 0;
        while self.tasks.len() < concurrency && at < self.waiting.len() {
            let partner = self.waiting[at]
                .1
                .place
                .partner_id
                .clone()
                .unwrap_or_default();
            let running = self.running_by_partner.entry(partner.clone()).or_default();
            if *running >= per_partner {
                at += 1;
                continue;
            }
            *running += 1;
            let Some((claimed_at, claim)) = self.waiting.remove(at) else {
                break;
            };
            let id = self.tasks.spawn(deliver(claimed_at, claim)).id();
            self.partners.insert(id, partner);
        }
    }

    fn ended(&mut self, result: Result<(tokio::task::Id, ()), tokio::task::JoinError>) {
        let id = match result {
            Ok((id, ())) => id,
            // A panicked delivery frees its slot too; its lease expires and it is retried.
            Err(error) => error.id(),
        };
        if let Some(partner) = self.partners.remove(&id) {
            for counts in [&mut self.by_partner, &mut self.running_by_partner] {
                if let Some(count) = counts.get_mut(&partner) {
                    *count = count.saturating_sub(1);
                    if *count == 0 {
                        counts.remove(&partner);
                    }
                }
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
    fn deliver(
        &self,
        claimed_at: Instant,
        claim: events::Claimed,
    ) -> impl Future<Output = ()> + Send + 'static {
        let catalog = self.catalog.clone();
        let owner = self.owner.clone();
        let backoff = self.options.backoff;
        let lease = self.options.lease;
        async move {
            // A claim that waited for a slot for half its lease is renewed as the attempt starts
            // (a claim lost meanwhile is not attempted); a fresh one needs no extra write. Either
            // way only the claim's holder can record the outcome.
            let waited = chrono::Duration::from_std(claimed_at.elapsed()).unwrap_or(lease);
            if waited * 2 >= lease {
                match events::renew_lease(&catalog.db, &claim, &owner, lease, catalog.now()).await {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(error) => {
                        tracing::warn!(delivery = %claim.delivery_id, %error, "could not renew a claim; leaving it");
                        return;
                    }
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
        let batch = usize::try_from(self.options.batch)
            .unwrap_or(usize::MAX)
            .max(1);
        // A claim waits for a quarter of the slots to free up rather than claiming for each one.
        let refill = (concurrency / 4).max(1);
        // One partner runs at most three quarters of the slots, and may have a batch more
        // claimed, waiting: a busy partner is claimed for about once per half batch, and
        // another partner's delivery is claimed by the next claim.
        let per_partner = concurrency - concurrency / 4;
        let claim_cap = per_partner + batch;
        // After a claim that found nothing for anyone with room, the next waits for the poll,
        // unless the queue runs lower than it was then and below half a batch.
        let mut quiet: Option<(Instant, usize)> = None;
        let mut running = Running::default();
        // Abandoned deliveries are looked for a few times per lease, not at every claim.
        let sweep_every = (self
            .options
            .lease
            .to_std()
            .unwrap_or(Duration::from_secs(60))
            / 2)
        .clamp(Duration::from_secs(1), Duration::from_secs(30));
        let mut swept = Instant::now();
        let mut walk = events::Walk::every(self.options.poll);
        loop {
            if *stop.borrow() {
                break;
            }
            if swept.elapsed() >= sweep_every {
                swept = Instant::now();
                let max = self.options.backoff.max_attempts;
                if let Err(error) =
                    events::bury_abandoned(&self.catalog.db, max, self.catalog.now()).await
                {
                    tracing::warn!(%error, "could not look for abandoned deliveries");
                }
            }
            running.reap();
            running.start_waiting(concurrency, per_partner, |at, claim| {
                self.deliver(at, claim)
            });
            let free = concurrency.saturating_sub(running.len());
            let quiet_until = quiet
                .filter(|(until, queued)| {
                    Instant::now() < *until && running.waiting.len() >= (*queued).min(batch / 2)
                })
                .map(|(until, _)| until);
            if free < refill || quiet_until.is_some() {
                let until = quiet_until.unwrap_or_else(|| Instant::now() + self.options.poll);
                tokio::select! {
                    () = running.next(), if running.len() > 0 => {}
                    () = tokio::time::sleep_until(until.into()) => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
            let room = events::Room {
                in_flight: &running.by_partner,
                per_partner: claim_cap,
                least: refill,
            };
            // A whole batch at a time, which waits here for free slots (each claim is renewed
            // if it waited half its lease).
            let claimed = events::claim(
                &self.catalog.db,
                &self.owner,
                u32::try_from(batch).unwrap_or(u32::MAX),
                room,
                &mut walk,
                self.options.lease,
                self.options.backoff.max_attempts,
                self.catalog.now(),
            )
            .await;
            let pause = match claimed {
                Ok(claimed) if claimed.is_empty() => {
                    if !running.waiting.is_empty() {
                        // Those with room have nothing due; the queue keeps the slots busy.
                        quiet = Some((Instant::now() + self.options.poll, running.waiting.len()));
                        continue;
                    }
                    self.options.poll
                }
                Ok(claimed) => {
                    // A claim short of a batch took all that was due for those with room: the
                    // next one waits as after a claim that found nothing.
                    quiet = (claimed.len() < batch).then(|| {
                        (
                            Instant::now() + self.options.poll,
                            running.waiting.len() + claimed.len(),
                        )
                    });
                    for claim in claimed {
                        running.wait(claim);
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
        // Claims still waiting are given back at once (their attempt not counted), so another
        // process need not wait for their leases; in-flight deliveries finish.
        for (_, claim) in std::mem::take(&mut running.waiting) {
            let now = self.catalog.now();
            if let Err(error) = events::postpone(
                &self.catalog.db,
                &claim,
                &self.owner,
                now,
                "released: the dispatcher stopped",
                now,
            )
            .await
            {
                tracing::warn!(delivery = %claim.delivery_id, %error, "could not give a claim back; it is claimed again once its lease ends");
            }
        }
        while running.len() > 0 {
            running.next().await;
        }
        tracing::info!(owner = %self.owner, "event dispatcher stopped");
    }
}
