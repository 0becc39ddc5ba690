//! Creating and steering trades at Alipay: `precreate` (a QR code the buyer scans), JSAPI
//! `create`, `query` and `close`, each recorded in the ledger before Alipay is asked and settled
//! by its verified answer.
//!
//! Invariant: a request that may have reached Alipay is never forgotten — the payment or refund
//! row exists before the call, and an unknown outcome leaves it open for a query, never marked
//! failed on a guess. Field sources: alipay-sdk-java-all `AlipayTradePrecreateModel`,
//! `AlipayTradeQueryModel`, `AlipayTradeCloseModel`, `AlipayTradeRefundModel`.

use std::sync::Arc;

use serde_json::{Value, json};
use uuid::Uuid;

use super::ledger::{self, Status};
use super::store::{self, Facts, NewPayment, Payment};
use super::{Error, NewTrade, Payments, TRADE_TIMEOUT_MINUTES, check};
use crate::alipay::client::{CallOptions, MerchantApp};
use crate::alipay::credentials;
use crate::tenancy;

impl Payments {
    pub(super) async fn app(&self, merchant_id: &str) -> Result<Arc<MerchantApp>, Error> {
        let load = async {
            match credentials::load_app(&self.db.conn, &self.vault, merchant_id).await {
                Ok(app) => Ok(Some(Arc::new(app))),
                Err(credentials::Error::NotConfigured) => Ok(None),
                Err(e) => Err(Error::from(e)),
            }
        };
        self.recent
            .apps
            .get_or_load(&merchant_id.to_owned(), load)
            .await?
            .ok_or(Error::NoCredentials)
    }

    /// The partner's first domain (where its merchants' pages and notifications live), kept
    /// for `database.recent_reads_ms`.
    pub async fn first_domain(&self, partner_id: &str) -> Result<Option<String>, Error> {
        let load = async { tenancy::first_domain(&self.db.conn, partner_id).await };
        Ok(self
            .recent
            .domains
            .get_or_load(&partner_id.to_owned(), load)
            .await?)
    }

    /// Where Alipay notifies this merchant's trades: the engine's notify path on the partner's
    /// first domain. What the merchant registers as its app's gateway (应用网关) too.
    pub async fn notify_url(&self, partner_id: &str, merchant_id: &str) -> Result<String, Error> {
        self.partner_url(partner_id, &format!("/alipay/notify/{merchant_id}"))
            .await
    }

    /// `path` on the partner's first domain, with `http.public_scheme`: an address Alipay
    /// reaches.
    pub async fn partner_url(&self, partner_id: &str, path: &str) -> Result<String, Error> {
        let domain = self.first_domain(partner_id).await?.ok_or_else(|| {
            Error::Conflict("the partner has no domain for Alipay to reach".into())
        })?;
        Ok(format!("{}://{domain}{path}", self.public_scheme))
    }

    /// Records a new trade before Alipay is asked about it: checks it, loads the merchant's app,
    /// makes its `out_trade_no` and `notify_url`, and inserts the payment (`created`), expiring
    /// after `expires_in`. What every way of creating a trade starts with.
    pub(super) async fn open_trade(
        &self,
        trade: &NewTrade,
        scene: &str,
        expires_in: chrono::Duration,
    ) -> Result<Opened, Error> {
        check(trade)?;
        let place = &trade.store;
        let (Some(partner), Some(merchant)) = (&place.partner_id, &place.merchant_id) else {
            return Err(Error::Invalid {
                field: "store",
                message: "a payment belongs to a merchant's store".into(),
            });
        };
        let app = self.app(merchant).await?;
        let notify_url = self.notify_url(partner, merchant).await?;
        let now = self.now();
        let id = Uuid::now_v7().to_string();
        let out_trade_no = ledger::out_trade_no(now);
        store::insert(
            &self.db.conn,
            &NewPayment {
                id: &id,
                place: [
                    place.partner_id.as_deref(),
                    place.agent_id.as_deref(),
                    place.merchant_id.as_deref(),
                    place.store_id.as_deref(),
                ],
                device_id: trade.device_id.as_deref(),
                operator_id: trade.operator_id.as_deref(),
                app_id: &app.app_id,
                out_trade_no: &out_trade_no,
                scene,
                amount_fen: trade.amount_fen,
                subject: trade.subject.trim(),
                purpose: &trade.purpose,
                plugin_id: trade.plugin_id.as_deref(),
                buyer_id: None,
                buyer_open_id: None,
                expires_at: now + expires_in,
                now,
            },
        )
        .await?;
        let mut biz = json!({
            "out_trade_no": out_trade_no,
            "total_amount": ledger::yuan(trade.amount_fen),
            "subject": trade.subject.trim(),
            "product_code": "FACE_TO_FACE_PAYMENT",
        });
        if let Some(device) = &trade.device_id {
            biz["terminal_id"] = json!(device);
        }
        let options = CallOptions {
            notify_url: Some(notify_url),
            ..CallOptions::default()
        };
        Ok(Opened {
            id,
            app,
            biz,
            options,
        })
    }

    /// [`Self::open_trade`] for a trade that waits for its buyer: it expires after
    /// [`TRADE_TIMEOUT_MINUTES`], and Alipay is told so (`timeout_express`).
    async fn open_timed_trade(&self, trade: &NewTrade, scene: &str) -> Result<Opened, Error> {
        let mut opened = self
            .open_trade(
                trade,
                scene,
                chrono::Duration::minutes(TRADE_TIMEOUT_MINUTES),
            )
            .await?;
        opened.biz["timeout_express"] = json!(format!("{TRADE_TIMEOUT_MINUTES}m"));
        Ok(opened)
    }

    /// A dynamic QR code for `trade`: the payment is recorded, then `alipay.trade.precreate`
    /// returns the code the buyer scans. Alipay creates the trade when it is scanned, so the
    /// payment stays `created` until Alipay tells us more.
    pub async fn precreate(&self, trade: NewTrade) -> Result<Payment, Error> {
        let Opened {
            id,
            app,
            biz,
            options,
        } = self.open_timed_trade(&trade, "precreate").await?;
        match self
            .alipay
            .call(&app, "alipay.trade.precreate", Some(&biz), &options)
            .await
        {
            Ok(answer) => {
                let facts = Facts {
                    qr_code: text(&answer, "qr_code"),
                    ..Facts::default()
                };
                store::created(&self.db.conn, &id, &facts, self.now())
                    .await?
                    .ok_or(Error::NotFound)
            }
            Err(crate::alipay::Error::Gateway(refusal)) => Err(self.refused(&id, refusal).await),
            // The outcome is unknown: the payment stays open for a query.
            Err(other) => Err(Error::Alipay(other)),
        }
    }

    /// Alipay refused to create payment `id`'s trade: it holds none, so the payment closes with
    /// nothing to announce. The error for the caller: the refusal, or the database's failure.
    pub(super) async fn refused(
        &self,
        id: &str,
        refusal: crate::alipay::response::GatewayError,
    ) -> Error {
        match store::advance(
            &self.db.conn,
            id,
            Status::Closed,
            &Facts::default(),
            self.now(),
        )
        .await
        {
            Ok(_) => Error::Refused(refusal),
            Err(e) => e.into(),
        }
    }

    /// Calls `method` about `payment`'s trade, named by its `out_trade_no`: Alipay's answer, or
    /// its refusal, as the caller decides what each means.
    pub(super) async fn ask(
        &self,
        payment: &Payment,
        method: &str,
    ) -> Result<Result<Value, crate::alipay::Error>, Error> {
        let app = self.app(&payment.merchant_id).await?;
        let biz = json!({"out_trade_no": payment.out_trade_no});
        let answer = self
            .alipay
            .call(&app, method, Some(&biz), &CallOptions::default())
            .await;
        self.checked(payment, method, &answer).await?;
        Ok(answer)
    }

    /// Keeps what Alipay answered `method` about `payment`, for the payment's history.
    pub(super) async fn checked(
        &self,
        payment: &Payment,
        method: &str,
        answer: &Result<Value, crate::alipay::Error>,
    ) -> Result<(), Error> {
        let (outcome, trade_status) = match answer {
            Ok(answer) => ("ok".to_owned(), answer["trade_status"].as_str()),
            Err(crate::alipay::Error::Gateway(g)) => {
                (g.sub_code.clone().unwrap_or_else(|| g.code.clone()), None)
            }
            Err(_) => ("unreachable".to_owned(), None),
        };
        store::record_check(
            &self.db.conn,
            payment,
            method,
            &outcome,
            trade_status,
            self.now(),
        )
        .await?;
        Ok(())
    }

    /// A trade for a page inside Alipay (a mini program or an H5 page in the Alipay app):
    /// `alipay.trade.create` for the signed-in buyer, whose Alipay `trade_no` the page hands to
    /// `my.tradePay`. The payment waits for the buyer from then on.
    pub async fn create_jsapi(&self, trade: NewTrade, buyer: Buyer) -> Result<Payment, Error> {
        let Opened {
            id,
            app,
            mut biz,
            options,
        } = self.open_timed_trade(&trade, "jsapi").await?;
        // JSAPI_PAY: the product code community integrations of in-app payments send; the SDK
        // model lists only the default FACE_TO_FACE_PAYMENT (docs/alipay.md marks it unconfirmed).
        biz["product_code"] = json!("JSAPI_PAY");
        let (buyer_id, buyer_open_id) = match &buyer {
            Buyer::UserId(uid) => {
                biz["buyer_id"] = json!(uid);
                (Some(uid.clone()), None)
            }
            Buyer::OpenId(open_id) => {
                biz["buyer_open_id"] = json!(open_id);
                (None, Some(open_id.clone()))
            }
        };
        match self
            .alipay
            .call(&app, "alipay.trade.create", Some(&biz), &options)
            .await
        {
            Ok(answer) => {
                let payment = self.get(&id).await?;
                let facts = Facts {
                    trade_no: text(&answer, "trade_no"),
                    buyer_id,
                    buyer_open_id,
                    ..Facts::default()
                };
                self.transition(&payment, Status::Waiting, &facts).await?;
                self.get(&id).await
            }
            Err(crate::alipay::Error::Gateway(refusal)) => Err(self.refused(&id, refusal).await),
            Err(other) => Err(Error::Alipay(other)),
        }
    }

    /// Asks Alipay where the trade stands and applies the answer; the payment as it is now.
    pub async fn query(&self, payment: &Payment) -> Result<Payment, Error> {
        match self.ask(payment, "alipay.trade.query").await? {
            Ok(answer) => {
                let status = answer["trade_status"]
                    .as_str()
                    .and_then(Status::of_trade_status);
                if let Some(status) = status {
                    self.transition(payment, status, &facts_of_answer(&answer))
                        .await?;
                }
            }
            // Not scanned yet (precreate) or never reached Alipay.
            Err(crate::alipay::Error::Gateway(g))
                if g.sub_code.as_deref() == Some("ACQ.TRADE_NOT_EXIST") => {}
            Err(other) => return Err(other.into()),
        }
        store::checked(&self.db.conn, &payment.id, self.now()).await?;
        self.get(&payment.id).await
    }

    /// Closes an unpaid trade (`alipay.trade.close`); a trade Alipay never created (a QR code
    /// not scanned) closes in the ledger alone.
    pub async fn close(&self, payment: &Payment) -> Result<Payment, Error> {
        if !payment.status().may_become(Status::Closed) {
            return Err(Error::Conflict(format!(
                "a {} payment cannot be closed",
                payment.status()
            )));
        }
        match self.ask(payment, "alipay.trade.close").await? {
            Ok(_) => {}
            Err(crate::alipay::Error::Gateway(g))
                if g.sub_code.as_deref() == Some("ACQ.TRADE_NOT_EXIST") => {}
            Err(crate::alipay::Error::Gateway(g))
                if g.sub_code.as_deref() == Some("ACQ.TRADE_STATUS_ERROR") =>
            {
                // Paid meanwhile: learn how it stands instead.
                let now = self.query(payment).await?;
                return Err(Error::Conflict(format!(
                    "Alipay would not close it: the payment is {}",
                    now.status
                )));
            }
            Err(other) => return Err(other.into()),
        }
        self.transition(payment, Status::Closed, &Facts::default())
            .await?;
        self.get(&payment.id).await
    }
}

/// The buyer of an in-app trade, as the merchant's app knows them.
#[derive(Debug, Clone)]
pub enum Buyer {
    /// A UID-mode app's `user_id` (2088 and 12 digits).
    UserId(String),
    /// An OpenID-mode app's `open_id`.
    OpenId(String),
}

impl Buyer {
    /// The buyer named by a request's `buyer_id` or `buyer_open_id` (exactly one).
    pub fn of(buyer_id: Option<&str>, buyer_open_id: Option<&str>) -> Result<Self, Error> {
        match (buyer_id, buyer_open_id) {
            (Some(uid), None)
                if uid.len() == 16
                    && uid.starts_with("2088")
                    && uid.bytes().all(|b| b.is_ascii_digit()) =>
            {
                Ok(Buyer::UserId(uid.to_owned()))
            }
            (Some(_), None) => Err(Error::Invalid {
                field: "buyer_id",
                message: "must be an Alipay user id: 2088 and 12 digits".into(),
            }),
            (None, Some(open_id))
                if !open_id.is_empty()
                    && open_id.len() <= 128
                    && open_id.bytes().all(|b| b.is_ascii_alphanumeric()) =>
            {
                Ok(Buyer::OpenId(open_id.to_owned()))
            }
            (None, Some(_)) => Err(Error::Invalid {
                field: "buyer_open_id",
                message: "must be an Alipay open id: 1 to 128 letters and digits".into(),
            }),
            _ => Err(Error::Invalid {
                field: "buyer_id",
                message: "give exactly one of buyer_id and buyer_open_id".into(),
            }),
        }
    }
}

/// A trade recorded and ready to send: its payment id, the merchant's app, the business
/// content common to every creation, and the call options carrying its `notify_url`.
pub(super) struct Opened {
    pub id: String,
    pub app: Arc<MerchantApp>,
    pub biz: Value,
    pub options: CallOptions,
}

pub(super) fn text(answer: &Value, key: &str) -> Option<String> {
    answer[key]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// What a `trade.query` answer tells about the trade.
pub(super) fn facts_of_answer(answer: &Value) -> Facts {
    Facts {
        trade_no: text(answer, "trade_no"),
        buyer_id: text(answer, "buyer_user_id"),
        buyer_open_id: text(answer, "buyer_open_id"),
        buyer_logon_id: text(answer, "buyer_logon_id"),
        paid_at: text(answer, "send_pay_date").and_then(|t| beijing(&t)),
        qr_code: None,
    }
}

/// An Alipay time (`yyyy-MM-dd HH:mm:ss`, Beijing time) as an instant.
pub(super) fn beijing(text: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    let local = chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S").ok()?;
    Some((local - chrono::Duration::hours(8)).and_utc())
}
