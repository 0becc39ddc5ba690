//! Reconciliation: asks Alipay about payments it has said nothing of for a while — a lost
//! notification, a payment made while no engine was up, a QR code never scanned — and applies
//! the answer through the same transition as a notification; a trade still unpaid after its
//! deadline is closed; refunds pending as long are queried (`refunds`).
//!
//! Invariant: each payment is claimed for a round by one conditional update (`checked_at`
//! moved forward from what this process read), so any number of processes reconcile without
//! asking Alipay twice about one payment in one round, and what they apply moves it once.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::FromQueryResult;
use tokio::sync::watch;

use super::ledger::Status;
use super::{Error, Payments};
use crate::config::PaymentsConfig;
use crate::db::sql::{self, Millis};

/// How often, and how much, reconciliation looks.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub every: Duration,
    pub batch: u32,
}

impl Options {
    pub fn from_config(config: &PaymentsConfig) -> Self {
        Self {
            every: Duration::from_secs(config.reconcile_every_secs.max(1)),
            batch: config.reconcile_batch.max(1),
        }
    }
}

#[derive(FromQueryResult)]
struct Due {
    id: String,
    seen: i64,
}

impl Payments {
    /// One round: claims up to `batch` open payments not heard of for `every`, oldest first, and
    /// asks Alipay about each; then as many refunds pending as long. Returns how many were asked.
    pub async fn reconcile_round(&self, options: Options) -> Result<usize, Error> {
        let now = self.now();
        let quiet = chrono::Duration::from_std(options.every).unwrap_or(chrono::Duration::MAX);
        let before = now - quiet;
        let due: Vec<Due> = sql::query(
            "SELECT id, COALESCE(checked_at, created_at) AS seen FROM payments \
             WHERE status IN ('created', 'waiting') AND COALESCE(checked_at, created_at) <= ? \
             ORDER BY COALESCE(checked_at, created_at), id LIMIT ?",
            [Millis(before).into(), i64::from(options.batch).into()],
        )
        .all(&self.db.conn)
        .await?;
        let mut asked = 0;
        for payment in due {
            if !self.claim(&payment, now).await? {
                continue;
            }
            asked += 1;
            if let Err(error) = self.reconcile_one(&payment.id, now).await {
                tracing::warn!(payment = %payment.id, %error, "reconciliation could not settle a payment; it is asked again next round");
            }
        }
        Ok(asked + self.reconcile_refunds(quiet, options.batch).await?)
    }

    /// Takes `payment` for this round, unless another process took it since it was read.
    async fn claim(&self, payment: &Due, now: DateTime<Utc>) -> Result<bool, Error> {
        let changed = sql::query(
            "UPDATE payments SET checked_at = ? WHERE id = ? AND COALESCE(checked_at, created_at) = ?",
            [
                Millis(now).into(),
                payment.id.clone().into(),
                payment.seen.into(),
            ],
        )
        .execute(&self.db.conn)
        .await?;
        Ok(changed == 1)
    }

    async fn reconcile_one(&self, id: &str, now: DateTime<Utc>) -> Result<(), Error> {
        let payment = self.get(id).await?;
        let payment = self.query(&payment).await?;
        let expired = payment
            .expires_at
            .is_some_and(|at| sql::from_millis(at) <= now);
        if expired && payment.status().may_become(Status::Closed) {
            // Unpaid at its deadline: closed at Alipay (or, never scanned, in the ledger alone).
            if let Err(error) = self.close(&payment).await {
                tracing::info!(payment = %payment.id, %error, "an expired payment was not closed");
            }
        }
        Ok(())
    }
}

/// Runs reconciliation rounds until `stop` turns true.
pub async fn run(payments: Payments, options: Options, mut stop: watch::Receiver<bool>) {
    loop {
        match payments.reconcile_round(options).await {
            Ok(0) => {}
            Ok(asked) => tracing::info!(asked, "payments reconciled"),
            Err(error) => tracing::warn!(%error, "a reconciliation round failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(options.every) => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            return;
        }
    }
}
