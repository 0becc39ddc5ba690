//! Notifications on demand (`POST /trades/{app_id}/{out_trade_no}/notify`), for testing how a
//! merchant's system takes what Alipay really does: the same notification delivered again
//! (`times`), news older than the trade's state (`trade_status`), and — to test a merchant's
//! defences — a notification whose amount or destination is not the trade's (`total_amount`,
//! `notify_url`), signed by the sandbox like any other.
//!
//! Invariant: the stored trade is not changed; each delivery is one attempt, whose answer is
//! returned, and destinations obey the sandbox's rule (host names to its engine, loopback
//! addresses only).

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{TRADES, trade_key};
use crate::{Error, Sandbox};

/// Deliveries of one notification per request at most.
const MAX_TIMES: u32 = 10;

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OnDemand {
    /// How many times the same notification (one `notify_id`) is delivered; default 1.
    times: Option<u32>,
    /// A `trade_status` other than the trade's own, e.g. a late `WAIT_BUYER_PAY`.
    trade_status: Option<String>,
    /// A `total_amount` other than the trade's.
    total_amount: Option<String>,
    /// Another destination than the trade's `notify_url`.
    notify_url: Option<String>,
}

impl Sandbox {
    /// Sends the trade's notification as `wanted` says; the merchant's answer to each delivery.
    pub async fn notify_on_demand(
        &self,
        app_id: &str,
        out_trade_no: &str,
        wanted: &OnDemandRequest,
    ) -> Result<Vec<Value>, Error> {
        let trade = self
            .store()
            .get(TRADES, &trade_key(app_id, out_trade_no))
            .await?
            .ok_or_else(|| Error::Invalid("no such trade".into()))?;
        let url = wanted
            .0
            .notify_url
            .clone()
            .or_else(|| trade["notify_url"].as_str().map(str::to_owned))
            .ok_or_else(|| Error::Invalid("the trade has no notify_url; name one".into()))?;
        let times = wanted.0.times.unwrap_or(1);
        if !(1..=MAX_TIMES).contains(&times) {
            return Err(Error::Invalid(format!("times must be 1 to {MAX_TIMES}")));
        }
        let mut extra = BTreeMap::new();
        for (key, value) in [
            ("trade_status", &wanted.0.trade_status),
            ("total_amount", &wanted.0.total_amount),
        ] {
            if let Some(value) = value {
                if value.is_empty() || value.len() > 32 {
                    return Err(Error::Invalid(format!("{key} must be 1 to 32 characters")));
                }
                extra.insert(key.to_owned(), value.clone());
            }
        }
        let identity = self
            .identity_of(trade["app_id"].as_str().unwrap_or_default())
            .await;
        let body = self.trade_notification_with(&trade, identity, extra)?;
        let mut answers = Vec::new();
        for _ in 0..times {
            let (status, answer) = self.deliver_once(&url, body.clone()).await?;
            answers.push(json!({ "status": status, "answer": answer }));
        }
        Ok(answers)
    }
}

/// The body of an on-demand request, as parsed.
#[derive(Debug, Default)]
pub struct OnDemandRequest(OnDemand);

pub(crate) async fn notify_on_demand(
    State(sandbox): State<Sandbox>,
    Path((app, out)): Path<(String, String)>,
    body: Option<Json<OnDemand>>,
) -> Response {
    let wanted = OnDemandRequest(body.map(|Json(b)| b).unwrap_or_default());
    match sandbox.notify_on_demand(&app, &out, &wanted).await {
        Ok(answers) => Json(json!({ "deliveries": answers })).into_response(),
        Err(Error::Invalid(message)) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({ "code": "invalid", "message": message })),
        )
            .into_response(),
        Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use trellis_alipay::notify::NotifyRule;

    use super::super::testing::*;
    use super::*;
    use crate::Fault;

    fn wanted(body: Value) -> OnDemandRequest {
        OnDemandRequest(serde_json::from_value(body).unwrap())
    }

    #[tokio::test]
    async fn a_notification_is_sent_again_late_or_with_another_amount_on_demand() {
        let sandbox = sandbox().await;
        let (url, seen) = merchant().await;
        let params = [("notify_url".to_owned(), url)].into_iter().collect();
        ok(sandbox
            .trade_precreate(UID_APP, &params, &order("T_1", "5.00"))
            .await);
        sandbox
            .pay_and_notify("alice", UID_APP, "T_1", false)
            .await
            .unwrap();

        let twice = sandbox
            .notify_on_demand(UID_APP, "T_1", &wanted(json!({"times": 2})))
            .await
            .unwrap();
        assert_eq!(twice.len(), 2);
        assert!(twice.iter().all(|a| a["answer"] == "success"));
        let (a, b) = (
            nth_notification(&seen, 0).await,
            nth_notification(&seen, 1).await,
        );
        assert_eq!(
            a.get("notify_id"),
            b.get("notify_id"),
            "the same notification"
        );
        assert_eq!(a.get("trade_status"), Some("TRADE_SUCCESS"));

        sandbox
            .notify_on_demand(
                UID_APP,
                "T_1",
                &wanted(json!({"trade_status": "WAIT_BUYER_PAY", "total_amount": "0.01"})),
            )
            .await
            .unwrap();
        let late = nth_notification(&seen, 2).await;
        assert_eq!(late.get("trade_status"), Some("WAIT_BUYER_PAY"));
        assert_eq!(late.get("total_amount"), Some("0.01"));
        assert!(late.verify(sandbox.public_key(), NotifyRule::V1).is_ok());
        // The trade itself did not change.
        let stored = sandbox
            .store()
            .get(TRADES, &trade_key(UID_APP, "T_1"))
            .await;
        assert_eq!(stored.unwrap().unwrap()["trade_status"], "TRADE_SUCCESS");

        for bad in [
            json!({"times": 0}),
            json!({"times": 11}),
            json!({"total_amount": ""}),
        ] {
            assert!(
                sandbox
                    .notify_on_demand(UID_APP, "T_1", &wanted(bad.clone()))
                    .await
                    .is_err(),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn a_refund_notifies_the_merchant_with_the_refund_named() {
        let sandbox = sandbox().await;
        let (url, seen) = merchant().await;
        let params = [("notify_url".to_owned(), url)].into_iter().collect();
        ok(sandbox
            .trade_pay(UID_APP, &params, &bar_code_payment("T_1", "10.00", CODE))
            .await);
        let refund =
            json!({"out_trade_no": "T_1", "refund_amount": "4.00", "out_request_no": "R1"});
        ok(sandbox.trade_refund(UID_APP, &refund).await);
        let n = first_notification(&seen).await;
        assert_eq!(n.get("out_biz_no"), Some("R1"));
        assert_eq!(n.get("refund_fee"), Some("4.00"));
        assert_eq!(n.get("trade_status"), Some("TRADE_SUCCESS"));
        assert!(n.get("gmt_refund").is_some());
        let rest = json!({"out_trade_no": "T_1", "refund_amount": "6.00", "out_request_no": "R2"});
        ok(sandbox.trade_refund(UID_APP, &rest).await);
        let n = nth_notification(&seen, 1).await;
        assert_eq!(n.get("refund_fee"), Some("10.00"));
        assert_eq!(n.get("trade_status"), Some("TRADE_CLOSED"));
    }

    #[tokio::test]
    async fn an_armed_fault_refuses_or_loses_the_answer_of_the_next_call_only() {
        let sandbox = sandbox().await;
        let pay = |out: &str| bar_code_payment(out, "1.00", CODE);
        sandbox
            .arm_fault(
                UID_APP,
                "alipay.trade.pay",
                &Fault::Refuse("ACQ.BUYER_BALANCE_NOT_ENOUGH".into()),
            )
            .await
            .unwrap();
        let refused_call = sandbox
            .with_fault(
                UID_APP,
                "alipay.trade.pay",
                sandbox.trade_pay(UID_APP, &no_params(), &pay("T_1")),
            )
            .await;
        assert_eq!(
            refused(refused_call),
            ("40004", "ACQ.BUYER_BALANCE_NOT_ENOUGH".into())
        );
        let stored = sandbox
            .store()
            .get(TRADES, &trade_key(UID_APP, "T_1"))
            .await;
        assert!(stored.unwrap().is_none(), "a refusal changes nothing");

        sandbox
            .arm_fault(UID_APP, "alipay.trade.pay", &Fault::LoseAnswer)
            .await
            .unwrap();
        let lost = sandbox
            .with_fault(
                UID_APP,
                "alipay.trade.pay",
                sandbox.trade_pay(UID_APP, &no_params(), &pay("T_2")),
            )
            .await;
        assert_eq!(refused(lost), ("20000", "isp.unknow-error".into()));
        let stored = sandbox
            .store()
            .get(TRADES, &trade_key(UID_APP, "T_2"))
            .await;
        assert_eq!(
            stored.unwrap().unwrap()["trade_status"],
            "TRADE_SUCCESS",
            "done, unanswered"
        );

        // Consumed: the next call is answered as usual.
        ok(sandbox
            .with_fault(
                UID_APP,
                "alipay.trade.pay",
                sandbox.trade_pay(UID_APP, &no_params(), &pay("T_3")),
            )
            .await);
    }
}
