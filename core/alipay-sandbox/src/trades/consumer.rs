//! The simulated buyer: a consumer paying a waiting trade (`POST /consumers/{user}/pay`), which
//! sends the merchant the signed `trade_status_sync` notification; and `/trades`, which shows a
//! stored trade as it is.
//!
//! Invariant: only a `WAIT_BUYER_PAY` trade is paid, only by the buyer it is bound to when it is
//! bound to one, and every payment with a `notify_url` is notified.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde_json::{Value, json};

use trellis_alipay::signing::beijing_timestamp;

use super::{TRADES, bound_to_other, masked_logon_id_of, trade_key};
use crate::consumers::sandbox_user_id;
use crate::{Error, Sandbox};

impl Sandbox {
    /// "User `user` pays trade `out_trade_no`": marks it paid and sends the signed
    /// `trade_status_sync` notification to its `notify_url`, retrying on Alipay's schedule
    /// (divided by the time scale) until the merchant answers exactly `success`. A trade bound
    /// to a buyer — create's, or the holder of the code of a waiting payment, who is the
    /// consumer named by the code — is paid by that buyer only.
    pub async fn pay(&self, user: &str, app_id: &str, out_trade_no: &str) -> Result<Value, Error> {
        self.pay_and_notify(user, app_id, out_trade_no, true).await
    }

    /// [`Self::pay`], with the notification sent or, `notify: false`, lost on its way: the
    /// merchant then learns of the payment only by asking (what reconciliation is for).
    pub async fn pay_and_notify(
        &self,
        user: &str,
        app_id: &str,
        out_trade_no: &str,
        notify: bool,
    ) -> Result<Value, Error> {
        let key = trade_key(app_id, out_trade_no);
        let mut trade = self
            .store()
            .get(TRADES, &key)
            .await?
            .ok_or_else(|| Error::Invalid("no such trade".into()))?;
        if trade["trade_status"] != "WAIT_BUYER_PAY" {
            return Err(Error::Invalid(format!(
                "the trade is {}",
                trade["trade_status"]
            )));
        }
        let user_id = sandbox_user_id(user);
        if bound_to_other(&trade, &user_id) {
            return Err(Error::Invalid(
                "the trade waits for another buyer (for a code payment: the one named by the code)"
                    .into(),
            ));
        }
        trade["trade_status"] = json!("TRADE_SUCCESS");
        if trade["buyer_logon_id"].is_null() {
            trade["buyer_logon_id"] = json!(masked_logon_id_of(&user_id));
        }
        trade["buyer_user_id"] = json!(user_id);
        trade["gmt_payment"] = json!(beijing_timestamp(Utc::now()));
        self.save_trade(&trade).await?;
        if let Some(url) = trade["notify_url"].as_str().map(str::to_owned)
            && notify
        {
            let identity = self
                .identity_of(trade["app_id"].as_str().unwrap_or_default())
                .await;
            let body = self.trade_notification(&trade, identity)?;
            let sandbox = self.clone();
            let notify_id = trade["trade_no"].as_str().unwrap_or_default().to_owned();
            tokio::spawn(async move { sandbox.deliver(&notify_id, &url, body).await });
        }
        Ok(self.query_view(&trade).await)
    }
}

pub(crate) async fn trade_state(
    State(sandbox): State<Sandbox>,
    Path((app, out)): Path<(String, String)>,
) -> Response {
    match sandbox.store().get(TRADES, &trade_key(&app, &out)).await {
        Ok(Some(trade)) => Json(trade).into_response(),
        _ => (
            StatusCode::NOT_FOUND,
            Json(json!({ "code": "not_found", "message": "no such trade" })),
        )
            .into_response(),
    }
}

#[derive(serde::Deserialize)]
pub(crate) struct Pay {
    app_id: String,
    out_trade_no: String,
    /// `false`: the notification is lost (default `true`).
    #[serde(default = "yes")]
    notify: bool,
}

fn yes() -> bool {
    true
}

pub(crate) async fn pay(
    State(sandbox): State<Sandbox>,
    Path(user): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
    body: Option<Json<Pay>>,
) -> Response {
    let (app, out, notify) = match body {
        Some(Json(p)) => (p.app_id, p.out_trade_no, p.notify),
        None => (
            q.get("app_id").cloned().unwrap_or_default(),
            q.get("out_trade_no").cloned().unwrap_or_default(),
            q.get("notify").is_none_or(|n| n != "false"),
        ),
    };
    match sandbox.pay_and_notify(&user, &app, &out, notify).await {
        Ok(trade) => Json(trade).into_response(),
        Err(e) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({ "code": "invalid", "message": e.to_string() })),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use trellis_alipay::notify::NotifyRule;

    use super::super::testing::*;

    #[tokio::test]
    async fn a_consumer_paying_a_trade_notifies_the_merchant_with_a_signed_message() {
        let sandbox = sandbox().await;
        let (url, seen) = merchant().await;
        let params = [("notify_url".to_owned(), url)].into_iter().collect();
        ok(sandbox
            .trade_precreate(UID_APP, &params, &order("T_1", "0.10"))
            .await);
        let paid = sandbox.pay("alice", UID_APP, "T_1").await.unwrap();
        assert_eq!(paid["trade_status"], "TRADE_SUCCESS");
        let n = first_notification(&seen).await;
        assert_eq!(n.get("notify_type"), Some("trade_status_sync"));
        assert_eq!(n.get("trade_status"), Some("TRADE_SUCCESS"));
        assert_eq!(n.get("out_trade_no"), Some("T_1"));
        assert_eq!(n.get("total_amount"), Some("0.10"));
        assert!(n.verify(sandbox.public_key(), NotifyRule::V1).is_ok());
        // Paid once: a second payment is refused.
        assert!(sandbox.pay("alice", UID_APP, "T_1").await.is_err());
    }

    #[tokio::test]
    async fn a_waiting_payment_confirmed_by_its_buyer_is_notified() {
        let sandbox = sandbox().await;
        let (url, seen) = merchant().await;
        let params = [("notify_url".to_owned(), url)].into_iter().collect();
        let biz = bar_code_payment("T_1", "1.00", WAITING_CODE);
        let waiting = ok(sandbox.trade_pay(UID_APP, &params, &biz).await);
        assert_eq!(waiting["code"], "10003");
        sandbox.pay(WAITING_CODE, UID_APP, "T_1").await.unwrap();
        let n = first_notification(&seen).await;
        assert_eq!(n.get("trade_status"), Some("TRADE_SUCCESS"));
        assert_eq!(n.get("buyer_id"), Some(holder(WAITING_CODE).as_str()));
    }
}
