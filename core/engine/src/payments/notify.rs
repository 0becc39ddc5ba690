//! Alipay's trade notifications applied to the ledger, and the one transition every answer goes
//! through (notification, query, close) with the event it announces.
//!
//! Invariant: a notification moves a payment only when it names a trade of this merchant's app
//! that the engine created, for the amount the ledger holds; anything else is recorded as an
//! anomaly for the merchant (once, with the notification's first delivery) and applied to
//! nothing. A transition and its event commit together, durably, before the caller acknowledges
//! Alipay; the status a transition starts from is read under the row's lock.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sea_orm::ConnectionTrait;
use serde_json::{Value, json};

use super::ledger::{self, Status};
use super::store::{self, Facts, Payment};
use super::trades::beijing;
use super::{Error, Payments, payment_payload};
use crate::alipay::notify::Notification;
use crate::events::{NewEvent, Outbox};
use crate::tenancy::{NodeKind, Place};

/// The events the ledger announces.
pub(super) const KINDS: [&str; 3] = ["payment.succeeded", "payment.closed", "refund.succeeded"];

/// What a notification did to the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The payment moved to this status.
    Moved(Status),
    /// Already known (a duplicate, or older news than the ledger has).
    Unchanged,
    /// Refund `out_request_no` is settled.
    Refunded(String),
    /// Not applied; recorded as an anomaly of this kind.
    Anomaly(&'static str),
    /// Not a trade notification: nothing for the ledger.
    Ignored,
}

/// Who receives each payment event, per partner: read before a write transaction opens, so the
/// transaction holds the write lock only for writing.
#[derive(Debug, Clone, Default)]
pub(super) struct Audience(HashMap<(String, &'static str), Vec<String>>);

impl Audience {
    /// The subscribers of `partners` to every payment event.
    pub(super) async fn load<'a>(
        payments: &Payments,
        partners: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, Error> {
        let mut audience = Self::default();
        for partner in partners {
            audience.fill(payments, partner).await?;
        }
        Ok(audience)
    }

    async fn fill(&mut self, payments: &Payments, partner: &str) -> Result<(), Error> {
        if self.0.contains_key(&(partner.to_owned(), KINDS[0])) {
            return Ok(());
        }
        let subscriptions = payments.subscriptions(partner).await?;
        for kind in KINDS {
            let subscribers = subscriptions
                .iter()
                .filter(|(_, kinds)| kinds.iter().any(|k| k == kind))
                .map(|(id, _)| id.clone())
                .collect();
            self.0.insert((partner.to_owned(), kind), subscribers);
        }
        Ok(())
    }

    /// `partner`'s subscribers to `kind`, read now if [`Self::load`] did not (a payment of a
    /// partner the notification's merchant did not name).
    async fn of(
        &mut self,
        payments: &Payments,
        partner: &str,
        kind: &'static str,
    ) -> Result<Vec<String>, Error> {
        self.fill(payments, partner).await?;
        Ok(self
            .0
            .get(&(partner.to_owned(), kind))
            .cloned()
            .unwrap_or_default())
    }
}

/// What one write transaction of the ledger carries to its commit: who hears of each event,
/// the events (written together just before the commit), the payments it has read (under their
/// locks) by Alipay's key, and its instant.
#[derive(Debug)]
pub(super) struct Changes {
    pub audience: Audience,
    pub outbox: Outbox,
    trades: HashMap<(String, String), Option<Payment>>,
    pub now: DateTime<Utc>,
    /// Deferred steps (a batch): written by [`Self::flush`], one statement per target status.
    steps: Option<Vec<(Status, String, Facts)>>,
}

impl Changes {
    pub(super) fn new(audience: Audience, now: DateTime<Utc>) -> Self {
        Self {
            audience,
            outbox: Outbox::default(),
            trades: HashMap::new(),
            now,
            steps: None,
        }
    }

    /// Defers every step to [`Self::flush`]: a batch of notifications moves its payments in
    /// a few statements instead of one each. Only for payments read into this transaction
    /// under their locks ([`Self::preload`]), whose next state is then known without asking.
    pub(super) fn deferring(mut self) -> Self {
        self.steps = Some(Vec::new());
        self
    }

    /// Writes the deferred steps. Each payment moved must move: one that did not means the
    /// rows were not as read, and the whole transaction must be rolled back.
    pub(super) async fn flush(&mut self, txn: &impl ConnectionTrait) -> Result<(), Error> {
        let Some(steps) = self.steps.as_mut() else {
            return Ok(());
        };
        let pending = std::mem::take(steps);
        for to in Status::ALL {
            let group: Vec<(&str, &Facts)> = pending
                .iter()
                .filter(|(status, _, _)| *status == to)
                .map(|(_, id, facts)| (id.as_str(), facts))
                .collect();
            for chunk in group.chunks(200) {
                let moved = store::advance_many(txn, to, chunk, self.now).await?;
                if moved != chunk.len() as u64 {
                    return Err(Error::Db(sea_orm::DbErr::Custom(format!(
                        "a batch moved {moved} of {} payments to {to}: the rows changed under it",
                        chunk.len()
                    ))));
                }
            }
        }
        Ok(())
    }

    /// Reads (and locks) the payments of app `app_id` named `out_trade_nos` in one statement,
    /// so a batch of notifications finds its trades without a read each.
    pub(super) async fn preload(
        &mut self,
        txn: &impl ConnectionTrait,
        app_id: &str,
        out_trade_nos: &[&str],
    ) -> Result<(), Error> {
        for chunk in out_trade_nos.chunks(500) {
            for out in chunk {
                self.trades
                    .insert((app_id.to_owned(), (*out).to_owned()), None);
            }
            for payment in store::by_trades(txn, app_id, chunk).await? {
                let key = (payment.app_id.clone(), payment.out_trade_no.clone());
                self.trades.insert(key, Some(payment));
            }
        }
        Ok(())
    }

    /// The payment of `app_id` named `out_trade_no`, as this transaction last saw it.
    async fn trade(
        &mut self,
        txn: &impl ConnectionTrait,
        app_id: &str,
        out_trade_no: &str,
    ) -> Result<Option<Payment>, Error> {
        let key = (app_id.to_owned(), out_trade_no.to_owned());
        if let Some(known) = self.trades.get(&key) {
            return Ok(known.clone());
        }
        let found = store::by_trade(txn, app_id, out_trade_no).await?;
        self.trades.insert(key, found.clone());
        Ok(found)
    }

    fn saw(&mut self, payment: &Payment) {
        let key = (payment.app_id.clone(), payment.out_trade_no.clone());
        self.trades.insert(key, Some(payment.clone()));
    }
}

/// Where a verified notification came from: the merchant whose URL received it, the record
/// that keeps it, and whether this delivery made that record.
#[derive(Debug, Clone)]
pub(super) struct Source<'a> {
    pub merchant_id: &'a str,
    pub partner_id: Option<&'a str>,
    pub agent_id: Option<&'a str>,
    pub notification_id: &'a str,
    pub new: bool,
}

impl Payments {
    /// The partner's installations subscribed to `kind`.
    pub(super) async fn subscriptions(
        &self,
        partner_id: &str,
    ) -> Result<Vec<(String, Vec<String>)>, Error> {
        self.catalog
            .subscriptions(partner_id)
            .await
            .map_err(|e| Error::Catalog(e.to_string()))
    }

    /// Adds `kind` about `payment` to the transaction's outbox.
    async fn announce(
        &self,
        changes: &mut Changes,
        payment: &Payment,
        kind: &'static str,
        payload: Value,
    ) -> Result<(), Error> {
        let place = Place {
            id: payment
                .store_id
                .clone()
                .unwrap_or_else(|| payment.merchant_id.clone()),
            kind: if payment.store_id.is_some() {
                NodeKind::Store
            } else {
                NodeKind::Merchant
            },
            partner_id: Some(payment.partner_id.clone()),
            agent_id: Some(payment.agent_id.clone()),
            merchant_id: Some(payment.merchant_id.clone()),
            store_id: payment.store_id.clone(),
        };
        let event = NewEvent {
            kind: kind.to_owned(),
            place,
            payload,
            source: "engine".into(),
            occurred_at: changes.now,
            depth: 0,
        };
        let subscribers = changes.audience.of(self, &payment.partner_id, kind).await?;
        changes.outbox.push(&event, &subscribers, changes.now)?;
        Ok(())
    }

    /// Moves `payment` to `to` if that is a step forward, with its event: `payment.succeeded`
    /// when it becomes paid (whether Alipay said success or already finished), `payment.closed`
    /// when it closes unpaid. One durable transaction; true when it moved.
    pub(super) async fn transition(
        &self,
        payment: &Payment,
        to: Status,
        facts: &Facts,
    ) -> Result<bool, Error> {
        if !payment.status().may_become(to) {
            return Ok(false);
        }
        let audience = Audience::load(self, [payment.partner_id.as_str()]).await?;
        let mut changes = Changes::new(audience, self.now());
        let txn = self.db.begin_durable().await?;
        let Some(current) = store::locked(&txn, &payment.id).await? else {
            return Err(Error::NotFound);
        };
        let moved = self
            .transition_in(&txn, &current, to, facts, &mut changes)
            .await?;
        changes.outbox.write(&txn).await?;
        txn.commit().await?;
        Ok(moved)
    }

    /// [`Self::transition`] inside the caller's transaction, from `payment` as read in it under
    /// the row's lock (a stale copy could announce a payment twice).
    pub(super) async fn transition_in(
        &self,
        txn: &impl ConnectionTrait,
        payment: &Payment,
        to: Status,
        facts: &Facts,
        changes: &mut Changes,
    ) -> Result<bool, Error> {
        let from = payment.status();
        if !from.may_become(to) {
            return Ok(false);
        }
        let was_paid = matches!(from, Status::Succeeded | Status::Finished);
        let kind = match to {
            Status::Succeeded | Status::Finished if !was_paid => Some("payment.succeeded"),
            Status::Closed => Some("payment.closed"),
            _ => None,
        };
        let current = if changes.steps.is_some() {
            // A second step of one payment in a batch follows the first, written before it.
            if changes
                .steps
                .as_ref()
                .is_some_and(|steps| steps.iter().any(|(_, id, _)| *id == payment.id))
            {
                changes.flush(txn).await?;
            }
            let next = payment.advanced(to, facts, changes.now);
            if let Some(steps) = changes.steps.as_mut() {
                steps.push((to, payment.id.clone(), facts.clone()));
            }
            next
        } else {
            let Some(moved) = store::advance(txn, &payment.id, to, facts, changes.now).await?
            else {
                return Ok(false);
            };
            moved
        };
        changes.saw(&current);
        if let Some(kind) = kind {
            self.announce(changes, &current, kind, payment_payload(&current))
                .await?;
        }
        Ok(true)
    }

    /// Settles refund `refund_id` of `payment` as succeeded and announces `refund.succeeded`,
    /// once: a refund already settled is left as it is. One durable transaction.
    pub(super) async fn refund_succeeded(
        &self,
        payment: &Payment,
        refund_id: &str,
    ) -> Result<(), Error> {
        let audience = Audience::load(self, [payment.partner_id.as_str()]).await?;
        let mut changes = Changes::new(audience, self.now());
        let txn = self.db.begin_durable().await?;
        self.refund_succeeded_in(&txn, payment, refund_id, &mut changes)
            .await?;
        changes.outbox.write(&txn).await?;
        txn.commit().await?;
        Ok(())
    }

    async fn refund_succeeded_in(
        &self,
        txn: &impl ConnectionTrait,
        payment: &Payment,
        refund_id: &str,
        changes: &mut Changes,
    ) -> Result<bool, Error> {
        if !store::settle_refund(txn, refund_id, true, changes.now).await? {
            return Ok(false);
        }
        let refund = store::refund_by_id(txn, refund_id)
            .await?
            .ok_or(Error::NotFound)?;
        let mut payload = payment_payload(payment);
        payload["refund_id"] = json!(refund.id);
        payload["out_request_no"] = json!(refund.out_request_no);
        payload["refund_fen"] = json!(refund.amount_fen);
        self.announce(changes, payment, "refund.succeeded", payload)
            .await?;
        Ok(true)
    }

    /// Applies a verified notification inside the caller's (durable) transaction: the ledger
    /// change and its event (in `changes`' outbox, which the caller writes before committing),
    /// or the anomaly. An error means the database failed; the caller must then roll back and
    /// not acknowledge Alipay, which will deliver again.
    pub(super) async fn apply_in(
        &self,
        txn: &impl ConnectionTrait,
        source: &Source<'_>,
        n: &Notification,
        changes: &mut Changes,
    ) -> Result<Applied, Error> {
        if n.get("notify_type") != Some("trade_status_sync") {
            return Ok(Applied::Ignored);
        }
        let out_trade_no = n.get("out_trade_no").unwrap_or_default();
        let mut payment = None;
        for app in [n.get("auth_app_id"), n.get("app_id")]
            .into_iter()
            .flatten()
        {
            if let Some(found) = changes.trade(txn, app, out_trade_no).await? {
                payment = Some(found);
                break;
            }
        }
        let now = changes.now;
        let Some(payment) = payment else {
            return anomaly(
                txn,
                source,
                None,
                "unknown_trade",
                format!("no trade {out_trade_no} was created here for this app"),
                now,
            )
            .await;
        };
        if payment.merchant_id != source.merchant_id {
            return anomaly(
                txn,
                source,
                None,
                "foreign_trade",
                format!("trade {out_trade_no} belongs to another merchant"),
                now,
            )
            .await;
        }
        let amount = n.get("total_amount").and_then(ledger::fen);
        if amount != Some(payment.amount_fen) {
            tracing::warn!(
                payment = %payment.id,
                expected = payment.amount_fen,
                notified = n.get("total_amount").unwrap_or_default(),
                "alipay notification amount does not match the ledger; not applied"
            );
            return anomaly(
                txn,
                source,
                Some(&payment.id),
                "amount_mismatch",
                format!(
                    "notified {} yuan, the ledger holds {} yuan",
                    n.get("total_amount").unwrap_or_default(),
                    ledger::yuan(payment.amount_fen)
                ),
                now,
            )
            .await;
        }
        // A refund's notification names the refund (out_biz_no is its out_request_no).
        if let (Some(request_no), Some(_)) = (n.get("out_biz_no"), n.get("refund_fee"))
            && let Some(refund) = store::refund_by_request(txn, &payment.id, request_no).await?
        {
            if refund.status == "pending" {
                self.refund_succeeded_in(txn, &payment, &refund.id, changes)
                    .await?;
            }
            return Ok(Applied::Refunded(request_no.to_owned()));
        }
        let Some(status) = n.get("trade_status").and_then(Status::of_trade_status) else {
            return Ok(Applied::Unchanged);
        };
        let facts = Facts {
            trade_no: n.get("trade_no").map(str::to_owned),
            buyer_id: n.get("buyer_id").map(str::to_owned),
            buyer_open_id: n.get("buyer_open_id").map(str::to_owned),
            buyer_logon_id: n.get("buyer_logon_id").map(str::to_owned),
            paid_at: n.get("gmt_payment").and_then(beijing),
            qr_code: None,
        };
        Ok(
            if self
                .transition_in(txn, &payment, status, &facts, changes)
                .await?
            {
                Applied::Moved(status)
            } else {
                Applied::Unchanged
            },
        )
    }
}

/// Records what a notification could not do, for the merchant to see: on its first delivery
/// only, so Alipay's retries of it do not repeat the record.
async fn anomaly(
    txn: &impl ConnectionTrait,
    source: &Source<'_>,
    payment_id: Option<&str>,
    kind: &'static str,
    detail: String,
    now: DateTime<Utc>,
) -> Result<Applied, Error> {
    if source.new {
        tracing::warn!(merchant = %source.merchant_id, notification = %source.notification_id, kind, %detail, "alipay notification not applied");
        store::record_anomaly(
            txn,
            [
                source.partner_id,
                source.agent_id,
                Some(source.merchant_id),
                None,
            ],
            source.notification_id,
            payment_id,
            kind,
            &detail,
            now,
        )
        .await?;
    }
    Ok(Applied::Anomaly(kind))
}
