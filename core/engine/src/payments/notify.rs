//! Alipay's trade notifications applied to the ledger, and the one transition every answer goes
//! through (notification, query, close) with the event it announces.
//!
//! Invariant: a notification moves a payment only when it names a trade of this merchant's app
//! that the engine created, for the amount the ledger holds; anything else is recorded as an
//! anomaly for the merchant and applied to nothing. A transition and its event commit together,
//! durably, before the caller acknowledges Alipay.

use chrono::{DateTime, Utc};
use sea_orm::ConnectionTrait;
use serde_json::Value;

use super::ledger::{self, Status};
use super::store::{self, Facts, Payment};
use super::trades::beijing;
use super::{Error, Payments, payment_payload};
use crate::alipay::notify::Notification;
use crate::events::{self, NewEvent};
use crate::tenancy::{NodeKind, Place};

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

impl Payments {
    /// The partner's installations subscribed to `kind`.
    pub(super) async fn subscribers(
        &self,
        partner_id: &str,
        kind: &str,
    ) -> Result<Vec<String>, Error> {
        self.catalog
            .subscribers(partner_id, kind)
            .await
            .map_err(|e| Error::Catalog(e.to_string()))
    }

    /// Records `kind` about `payment` in the outbox, inside the caller's transaction.
    pub(super) async fn announce(
        &self,
        txn: &impl ConnectionTrait,
        payment: &Payment,
        kind: &str,
        payload: Value,
        subscribers: &[String],
        now: DateTime<Utc>,
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
            occurred_at: now,
            depth: 0,
        };
        events::publish_in(txn, &event, subscribers, now).await?;
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
        let was_paid = matches!(payment.status(), Status::Succeeded | Status::Finished);
        let kind = match to {
            Status::Succeeded | Status::Finished if !was_paid => Some("payment.succeeded"),
            Status::Closed => Some("payment.closed"),
            _ => None,
        };
        let subscribers = match kind {
            Some(kind) => self.subscribers(&payment.partner_id, kind).await?,
            None => Vec::new(),
        };
        let now = self.now();
        let txn = self.db.begin_durable().await?;
        let moved = store::advance(&txn, &payment.id, to, facts, now).await?;
        if moved && let Some(kind) = kind {
            let current = store::by_id(&txn, &payment.id)
                .await?
                .ok_or(Error::NotFound)?;
            self.announce(
                &txn,
                &current,
                kind,
                payment_payload(&current),
                &subscribers,
                now,
            )
            .await?;
        }
        txn.commit().await?;
        Ok(moved)
    }

    /// Applies a verified notification that `merchant_id` received (recorded as
    /// `notification_id`). Returns what it did; an error only when the database failed, and
    /// then the caller must not acknowledge Alipay (it will deliver again).
    pub async fn apply_notification(
        &self,
        merchant_id: &str,
        notification_id: &str,
        n: &Notification,
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
            if let Some(found) = store::by_trade(&self.db.conn, app, out_trade_no).await? {
                payment = Some(found);
                break;
            }
        }
        let Some(payment) = payment else {
            return self
                .anomaly(
                    merchant_id,
                    notification_id,
                    None,
                    "unknown_trade",
                    format!("no trade {out_trade_no} was created here for this app"),
                )
                .await;
        };
        if payment.merchant_id != merchant_id {
            return self
                .anomaly(
                    merchant_id,
                    notification_id,
                    None,
                    "foreign_trade",
                    format!("trade {out_trade_no} belongs to another merchant"),
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
            return self
                .anomaly(
                    merchant_id,
                    notification_id,
                    Some(&payment.id),
                    "amount_mismatch",
                    format!(
                        "notified {} yuan, the ledger holds {} yuan",
                        n.get("total_amount").unwrap_or_default(),
                        ledger::yuan(payment.amount_fen)
                    ),
                )
                .await;
        }
        // A refund's notification names the refund (out_biz_no is its out_request_no).
        if let (Some(request_no), Some(_)) = (n.get("out_biz_no"), n.get("refund_fee"))
            && let Some(refund) =
                store::refund_by_request(&self.db.conn, &payment.id, request_no).await?
        {
            if refund.status == "pending" {
                self.refund_succeeded(&payment, &refund.id).await?;
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
        Ok(if self.transition(&payment, status, &facts).await? {
            Applied::Moved(status)
        } else {
            Applied::Unchanged
        })
    }

    async fn anomaly(
        &self,
        merchant_id: &str,
        notification_id: &str,
        payment_id: Option<&str>,
        kind: &'static str,
        detail: String,
    ) -> Result<Applied, Error> {
        let merchant = crate::tenancy::place(&self.db.conn, merchant_id)
            .await?
            .ok_or(Error::NotFound)?;
        tracing::warn!(merchant = %merchant_id, notification = %notification_id, kind, %detail, "alipay notification not applied");
        store::record_anomaly(
            &self.db.conn,
            [
                merchant.partner_id.as_deref(),
                merchant.agent_id.as_deref(),
                Some(merchant_id),
                None,
            ],
            notification_id,
            payment_id,
            kind,
            &detail,
            self.now(),
        )
        .await?;
        Ok(Applied::Anomaly(kind))
    }
}
