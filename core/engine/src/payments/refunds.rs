//! Refunds: `alipay.trade.refund`, partial and repeated, and `alipay.trade.fastpay.refund.query`
//! for a refund whose answer was lost — asked by the owner, or by reconciliation for refunds
//! pending a while.
//!
//! Invariant: a refund's amount is reserved against the payment before Alipay is asked, so
//! refunds never pass what was paid; a refund whose outcome is unknown stays pending (its amount
//! reserved) until Alipay says — its answer to the same request again, its notification, or a
//! query — and is failed, releasing the amount, only when Alipay says it never happened. Field
//! sources: alipay-sdk-java-all `AlipayTradeRefundModel`, `AlipayTradeFastpayRefundQueryModel`.

use chrono::{DateTime, Utc};
use sea_orm::FromQueryResult;
use serde_json::json;
use uuid::Uuid;

use super::ledger::{self, Status};
use super::store::{self, NewRefund, Payment, Refund};
use super::{Error, Payments};
use crate::alipay::client::{CallOptions, MerchantApp};
use crate::alipay::response::GatewayErrorKind;
use crate::db::sql::{self, Millis};

impl Payments {
    /// Refunds `amount_fen` of a paid payment (`alipay.trade.refund`). `out_request_no` makes it
    /// idempotent: the same number again returns the same refund; another amount under it is a
    /// conflict. The amount is reserved before Alipay is asked, so concurrent refunds never pass
    /// what was paid.
    pub async fn refund(
        &self,
        payment: &Payment,
        amount_fen: i64,
        out_request_no: Option<String>,
        reason: Option<String>,
        operator_id: Option<&str>,
    ) -> Result<Refund, Error> {
        if amount_fen < 1 {
            return Err(Error::Invalid {
                field: "amount_fen",
                message: "must be at least 1 fen".into(),
            });
        }
        if let Some(reason) = &reason
            && reason.chars().count() > 256
        {
            return Err(Error::Invalid {
                field: "reason",
                message: "must be at most 256 characters".into(),
            });
        }
        let request_no = match out_request_no {
            Some(no) if ledger::is_request_no(&no) => no,
            Some(_) => {
                return Err(Error::Invalid {
                    field: "out_request_no",
                    message: "must be 1 to 64 letters, digits or underscores".into(),
                });
            }
            None => ledger::out_request_no(self.now()),
        };
        if let Some(existing) =
            store::refund_by_request(&self.db.conn, &payment.id, &request_no).await?
        {
            if existing.amount_fen != amount_fen {
                return Err(Error::Conflict(format!(
                    "refund {request_no} was for {} fen",
                    existing.amount_fen
                )));
            }
            // Still pending (its answer was lost): the same request again, which Alipay
            // carries out at most once.
            if existing.status == "pending" {
                let app = self.app(&payment.merchant_id).await?;
                self.send_refund(&app, payment, &existing).await?;
                return store::refund_by_request(&self.db.conn, &payment.id, &request_no)
                    .await?
                    .ok_or(Error::NotFound);
            }
            return Ok(existing);
        }
        if payment.status() != Status::Succeeded {
            return Err(Error::Invalid {
                field: "payment",
                message: format!("a {} payment cannot be refunded", payment.status()),
            });
        }
        let remaining = payment.amount_fen - payment.refunded_fen;
        if amount_fen > remaining {
            return Err(Error::Invalid {
                field: "amount_fen",
                message: format!("at most {remaining} fen remain to refund"),
            });
        }
        let app = self.app(&payment.merchant_id).await?;
        let id = Uuid::now_v7().to_string();
        let now = self.now();
        let txn = self.db.begin_durable().await?;
        if !store::reserve_refund(&txn, &payment.id, amount_fen, now).await? {
            txn.rollback().await?;
            return Err(Error::Invalid {
                field: "amount_fen",
                message: "more than remains to refund".into(),
            });
        }
        store::insert_refund(
            &txn,
            &NewRefund {
                id: &id,
                payment,
                out_request_no: &request_no,
                amount_fen,
                reason: reason.as_deref(),
                operator_id,
                now,
            },
        )
        .await?;
        txn.commit().await?;
        let refund = store::refund_by_id(&self.db.conn, &id)
            .await?
            .ok_or(Error::NotFound)?;
        self.send_refund(&app, payment, &refund).await?;
        store::refund_by_id(&self.db.conn, &id)
            .await?
            .ok_or(Error::NotFound)
    }

    /// Asks Alipay for `refund` (the same request every time: Alipay refunds one
    /// `out_request_no` once) and settles it by the answer: succeeded; failed and released
    /// when refused; pending when the outcome is unknown (the error says so).
    async fn send_refund(
        &self,
        app: &MerchantApp,
        payment: &Payment,
        refund: &Refund,
    ) -> Result<(), Error> {
        let mut biz = json!({
            "out_trade_no": payment.out_trade_no,
            "refund_amount": ledger::yuan(refund.amount_fen),
            "out_request_no": refund.out_request_no,
        });
        if let Some(reason) = &refund.reason {
            biz["refund_reason"] = json!(reason);
        }
        match self
            .alipay
            .call(
                app,
                "alipay.trade.refund",
                Some(&biz),
                &CallOptions::default(),
            )
            .await
        {
            Ok(_) => self.refund_succeeded(payment, &refund.id).await,
            // 20000: Alipay may have refunded; only its later word tells.
            Err(crate::alipay::Error::Gateway(g))
                if g.kind == GatewayErrorKind::ServiceUnavailable =>
            {
                Err(Error::Alipay(crate::alipay::Error::Gateway(g)))
            }
            Err(crate::alipay::Error::Gateway(refusal)) => {
                self.refund_failed(payment, refund).await?;
                Err(Error::Refused(refusal))
            }
            // Unknown: the refund stays pending (and its amount reserved) until Alipay says.
            Err(other) => Err(Error::Alipay(other)),
        }
    }

    /// Marks a pending refund failed and frees its amount, once.
    async fn refund_failed(&self, payment: &Payment, refund: &Refund) -> Result<(), Error> {
        let now = self.now();
        let txn = self.db.begin_durable().await?;
        if store::settle_refund(&txn, &refund.id, false, now).await? {
            store::release_refund(&txn, &payment.id, refund.amount_fen, now).await?;
        }
        txn.commit().await?;
        Ok(())
    }

    /// `alipay.trade.fastpay.refund.query` for a pending refund: `REFUND_SUCCESS` settles it;
    /// an answer without `refund_status` means Alipay never received it or refused it (the
    /// method's page), which fails it — but only once it has been pending longer than
    /// `settled_after`, so a request still on its way is not failed on a guess. Returns the
    /// refund as it now stands.
    pub async fn query_refund(
        &self,
        payment: &Payment,
        refund: &Refund,
        settled_after: chrono::Duration,
    ) -> Result<Refund, Error> {
        if refund.status == "pending" {
            let app = self.app(&payment.merchant_id).await?;
            let biz = json!({
                "out_trade_no": payment.out_trade_no,
                "out_request_no": refund.out_request_no,
            });
            let method = "alipay.trade.fastpay.refund.query";
            let answer = self
                .alipay
                .call(&app, method, Some(&biz), &CallOptions::default())
                .await;
            self.checked(payment, method, &answer).await?;
            let answer = answer?;
            let age = self.now() - sql::from_millis(refund.created_at);
            match answer.get("refund_status").and_then(|s| s.as_str()) {
                Some("REFUND_SUCCESS") => self.refund_succeeded(payment, &refund.id).await?,
                None if age >= settled_after => self.refund_failed(payment, refund).await?,
                _ => {}
            }
        }
        store::refund_by_id(&self.db.conn, &refund.id)
            .await?
            .ok_or(Error::NotFound)
    }

    /// A payment's refund by id, whoever's: callers check the payment's place.
    pub async fn refund_of(&self, payment_id: &str, refund_id: &str) -> Result<Refund, Error> {
        store::refund_by_id(&self.db.conn, refund_id)
            .await?
            .filter(|r| r.payment_id == payment_id)
            .ok_or(Error::NotFound)
    }

    /// Reconciliation's share of refunds: up to `batch` refunds pending longer than `quiet`,
    /// each claimed by one process and queried. Returns how many were asked.
    pub(super) async fn reconcile_refunds(
        &self,
        quiet: chrono::Duration,
        batch: u32,
    ) -> Result<usize, Error> {
        #[derive(FromQueryResult)]
        struct Due {
            id: String,
            payment_id: String,
            updated_at: i64,
        }
        let now = self.now();
        let due: Vec<Due> = sql::query(
            "SELECT id, payment_id, updated_at FROM payment_refunds WHERE status = 'pending' \
             AND updated_at <= ? ORDER BY updated_at, id LIMIT ?",
            [Millis(now - quiet).into(), i64::from(batch).into()],
        )
        .all(&self.db.conn)
        .await?;
        let mut asked = 0;
        for refund in due {
            if !claim_refund(self, &refund.id, refund.updated_at, now).await? {
                continue;
            }
            asked += 1;
            let settled = async {
                let payment = self.get(&refund.payment_id).await?;
                let pending = self.refund_of(&payment.id, &refund.id).await?;
                self.query_refund(&payment, &pending, quiet).await
            };
            if let Err(error) = settled.await {
                tracing::warn!(refund = %refund.id, %error, "reconciliation could not settle a refund; it is asked again next round");
            }
        }
        Ok(asked)
    }
}

/// Takes refund `id` for this round unless another process did since it was read.
async fn claim_refund(
    payments: &Payments,
    id: &str,
    seen: i64,
    now: DateTime<Utc>,
) -> Result<bool, Error> {
    let changed = sql::query(
        "UPDATE payment_refunds SET updated_at = ? WHERE id = ? AND status = 'pending' AND updated_at = ?",
        [Millis(now).into(), id.into(), seen.into()],
    )
    .execute(&payments.db.conn)
    .await?;
    Ok(changed == 1)
}
