//! Alipay's notifications taken in by group commit: each request verifies its own notification
//! (the signature, against its merchant's key kept for a moment — no database round trip, many
//! at once), then hands it to one writer, which records and applies every notification waiting
//! at that moment in one durable transaction — telling redeliveries apart by their records — and
//! answers them all after its commit: one flush to disk for the lot.
//!
//! Invariant: a notification is acknowledged only after the commit that holds its record, its
//! ledger change and its events. A batch that fails is retried one notification per
//! transaction, so one bad notification cannot fail the others; with no writer running (unit
//! tests, a writer stopping) the caller's own task does the same work alone.

use std::collections::{BTreeMap, BTreeSet};

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::notify::{Audience, Changes, Source};
use super::{Applied, Error, Payments};
use crate::alipay::inbound::{self, Verified};

/// What taking in a notification did.
#[derive(Debug, Clone)]
pub struct Taken {
    /// The notification's record.
    pub id: String,
    /// False when an earlier delivery had recorded it.
    pub new: bool,
    pub applied: Applied,
}

/// A notification waiting for the writer, and where its answer goes.
pub(super) struct Job {
    verified: Verified,
    reply: oneshot::Sender<Result<Taken, Error>>,
}

/// How the writer batches.
#[derive(Debug, Clone, Copy)]
pub struct GroupCommit {
    /// Notifications per transaction at most.
    pub max_batch: usize,
    /// Notifications waiting for the writer at most; further requests wait for room.
    pub queue: usize,
}

impl Payments {
    /// Records and applies a verified notification; returns once that is durable. A
    /// redelivery is told apart by the writer (its record exists) and answered as it was.
    pub async fn take(&self, verified: Verified) -> Result<Taken, Error> {
        let verified = match &self.intake {
            Some(intake) => {
                let (reply, answer) = oneshot::channel();
                match intake.send(Job { verified, reply }).await {
                    // A writer that dropped the job without answering has stopped mid-way:
                    // nothing was acknowledged, and Alipay will deliver again.
                    Ok(()) => return answer.await.unwrap_or(Err(Error::Stopping)),
                    Err(mpsc::error::SendError(job)) => job.verified,
                }
            }
            None => verified,
        };
        let audience = Audience::load(self, verified.partner_id.as_deref()).await?;
        self.commit_batch(std::slice::from_ref(&verified), &audience)
            .await?
            .pop()
            .ok_or(Error::Stopping)
    }

    /// Starts the writer: returns these payments handing notifications to it, and its task,
    /// which ends once `stop` is set and what was queued is answered.
    pub fn group_commit(
        mut self,
        options: GroupCommit,
        stop: watch::Receiver<bool>,
    ) -> (Self, JoinHandle<()>) {
        let (intake, jobs) = mpsc::channel(options.queue.max(1));
        // The writer's own copy has no intake: its work never queues behind itself.
        let writer = tokio::spawn(write(self.clone(), jobs, options.max_batch.max(1), stop));
        self.intake = Some(intake);
        (self, writer)
    }

    /// Records and applies `batch` in one durable transaction; one result per notification,
    /// in order.
    async fn commit_batch(
        &self,
        batch: &[Verified],
        audience: &Audience,
    ) -> Result<Vec<Taken>, Error> {
        let mut changes = Changes::new(audience.clone(), self.now()).deferring();
        let txn = self.db.begin_durable().await?;
        let recorded = inbound::record_all(&txn, batch).await?;
        // The batch's trades in one read per app (in ISV mode a notification may name its
        // trade under either app id).
        let mut wanted: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for (verified, (_, new)) in batch.iter().zip(&recorded) {
            let n = &verified.notification;
            if let (true, Some(out)) = (*new, n.get("out_trade_no")) {
                for app in [n.get("auth_app_id"), n.get("app_id")]
                    .into_iter()
                    .flatten()
                {
                    wanted.entry(app).or_default().insert(out);
                }
            }
        }
        for (app, outs) in wanted {
            let outs: Vec<&str> = outs.into_iter().collect();
            changes.preload(&txn, app, &outs).await?;
        }
        let mut taken = Vec::with_capacity(batch.len());
        for (verified, (id, new)) in batch.iter().zip(recorded) {
            // Recorded before means applied before: the record and its application commit
            // together.
            let applied = if new {
                let source = Source {
                    merchant_id: &verified.merchant_id,
                    partner_id: verified.partner_id.as_deref(),
                    agent_id: verified.agent_id.as_deref(),
                    notification_id: &id,
                    new,
                };
                self.apply_in(&txn, &source, &verified.notification, &mut changes)
                    .await?
            } else {
                Applied::Unchanged
            };
            taken.push(Taken { id, new, applied });
        }
        changes.flush(&txn).await?;
        changes.outbox.write(&txn).await?;
        txn.commit().await?;
        Ok(taken)
    }

    /// One batch from the writer: all together, or on failure one by one.
    async fn commit_jobs(&self, mut jobs: Vec<Job>) {
        // The same order in every process, so two engines' batches lock shared rows in turn
        // instead of deadlocking.
        jobs.sort_by(|a, b| trade_key(&a.verified).cmp(&trade_key(&b.verified)));
        let partners: BTreeSet<&str> = jobs
            .iter()
            .filter_map(|j| j.verified.partner_id.as_deref())
            .collect();
        let audience = match Audience::load(self, partners).await {
            Ok(audience) => audience,
            Err(error) => {
                tracing::warn!(%error, "payment event subscribers unavailable");
                for job in jobs {
                    let _ = job.reply.send(Err(Error::Catalog(error.to_string())));
                }
                return;
            }
        };
        let batch: Vec<Verified> = jobs.iter().map(|j| j.verified.clone()).collect();
        match self.commit_batch(&batch, &audience).await {
            Ok(taken) => {
                for (job, taken) in jobs.into_iter().zip(taken) {
                    let _ = job.reply.send(Ok(taken));
                }
            }
            Err(error) if jobs.len() == 1 => {
                if let Some(job) = jobs.pop() {
                    let _ = job.reply.send(Err(error));
                }
            }
            Err(error) => {
                tracing::warn!(%error, size = jobs.len(), "notification batch failed; retrying one by one");
                for job in jobs {
                    let one = self
                        .commit_batch(std::slice::from_ref(&job.verified), &audience)
                        .await
                        .and_then(|mut t| t.pop().ok_or(Error::Stopping));
                    let _ = job.reply.send(one);
                }
            }
        }
    }
}

fn trade_key(v: &Verified) -> (&str, &str, &str) {
    (
        v.app_id.as_str(),
        v.notification.get("out_trade_no").unwrap_or_default(),
        v.notify_id.as_str(),
    )
}

/// The writer: takes whatever is queued (up to `max_batch`) as one batch, commits it, answers.
async fn write(
    payments: Payments,
    mut jobs: mpsc::Receiver<Job>,
    max_batch: usize,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let first = tokio::select! {
            job = jobs.recv() => job,
            _ = stop.wait_for(|stopped| *stopped) => None,
        };
        let Some(first) = first else { break };
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        payments.commit_jobs(batch).await;
    }
    // Stopping: refuse new work (senders fall back to their own task) and answer what queued.
    jobs.close();
    while let Some(job) = jobs.recv().await {
        payments.commit_jobs(vec![job]).await;
    }
}
