//! A trade after it is opened: `alipay.trade.query` (its state), `alipay.trade.close` (an
//! unpaid trade given up) and `alipay.trade.cancel` (undo, whatever happened: close it if
//! unpaid, refund it in full if paid).
//!
//! Invariant: only `WAIT_BUYER_PAY` closes; a cancel leaves the trade `TRADE_CLOSED` with
//! everything paid refunded, and cancelling again moves nothing.

use chrono::Utc;
use serde_json::{Value, json};

use trellis_alipay::signing::beijing_timestamp;

use super::{fen_in, status_error, with};
use crate::Sandbox;
use crate::gateway::{Outcome, busy};
use crate::schema::{Family, Fields};

impl Sandbox {
    pub(crate) async fn trade_query(&self, app_id: &str, biz: &Value) -> Outcome {
        let f = Fields::of(biz, Family::Trade);
        let trade = self.find_trade(app_id, &f).await?;
        Ok(self.query_view(&trade).await)
    }

    /// query's answer (sigoden/alipay query response type; SDK `AlipayTradeQueryResponse`):
    /// the ids, `trade_status`, the amounts — received ones `0.00` until paid — `send_pay_date`
    /// once paid, and the buyer once known.
    pub(super) async fn query_view(&self, trade: &Value) -> Value {
        let paid_at = trade["gmt_payment"].as_str();
        let received = match paid_at {
            Some(_) => trade["total_amount"].clone(),
            None => json!("0.00"),
        };
        let mut view = json!({
            "trade_no": trade["trade_no"], "out_trade_no": trade["out_trade_no"],
            "trade_status": trade["trade_status"], "total_amount": trade["total_amount"],
            "receipt_amount": received, "buyer_pay_amount": received,
        });
        if let Some(at) = paid_at {
            view["send_pay_date"] = json!(at);
        }
        with(view, self.buyer_fields(trade).await)
    }

    pub(crate) async fn trade_close(&self, app_id: &str, biz: &Value) -> Outcome {
        let f = Fields::of(biz, Family::Trade);
        // operator_id: at most 28 (sigoden/alipay close request type).
        f.optional_text("operator_id", 28)?;
        let mut trade = self.find_trade(app_id, &f).await?;
        // close's table: a trade that is not waiting for payment is ACQ.TRADE_STATUS_ERROR.
        if trade["trade_status"] != "WAIT_BUYER_PAY" {
            return Err(status_error());
        }
        trade["trade_status"] = json!("TRADE_CLOSED");
        trade["gmt_close"] = json!(beijing_timestamp(Utc::now()));
        self.save_trade(&trade).await.map_err(busy)?;
        // close's response type: the two ids only.
        Ok(json!({ "trade_no": trade["trade_no"], "out_trade_no": trade["out_trade_no"] }))
    }

    /// cancel (sigoden/alipay cancel types): unpaid → closed, `action: close`; paid → what
    /// remains refunded and closed, `action: refund`; a cancelled trade answers its action
    /// again. `retry_flag` is always `N`: the sandbox never fails half-way.
    pub(crate) async fn trade_cancel(&self, app_id: &str, biz: &Value) -> Outcome {
        let f = Fields::of(biz, Family::Trade);
        let mut trade = self.find_trade(app_id, &f).await?;
        let now = beijing_timestamp(Utc::now());
        let action = match trade["trade_status"].as_str() {
            Some("WAIT_BUYER_PAY") => {
                trade["trade_status"] = json!("TRADE_CLOSED");
                trade["gmt_close"] = json!(now);
                "close"
            }
            Some("TRADE_SUCCESS") => {
                trade["refunded_fen"] = json!(fen_in(&trade, "fen"));
                trade["trade_status"] = json!("TRADE_CLOSED");
                trade["gmt_close"] = json!(now);
                "refund"
            }
            Some("TRADE_CLOSED") => match trade["cancel_action"].as_str() {
                Some("refund") => "refund",
                _ => "close",
            },
            _ => return Err(status_error()),
        };
        if trade["cancel_action"].is_null() {
            trade["cancel_action"] = json!(action);
            self.save_trade(&trade).await.map_err(busy)?;
        }
        Ok(json!({
            "trade_no": trade["trade_no"], "out_trade_no": trade["out_trade_no"],
            "retry_flag": "N", "action": action,
        }))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::testing::*;
    use crate::open_id_for;

    #[tokio::test]
    async fn a_trade_is_found_by_trade_no_which_wins_over_out_trade_no() {
        let sandbox = sandbox().await;
        let paid = paid_trade(&sandbox, UID_APP, "T_1", "1.00").await;
        paid_trade(&sandbox, UID_APP, "T_2", "2.00").await;
        let trade_no = paid["trade_no"].as_str().unwrap();
        let by_no = ok(sandbox
            .trade_query(
                UID_APP,
                &json!({"trade_no": trade_no, "out_trade_no": "T_2"}),
            )
            .await);
        assert_eq!(by_no["out_trade_no"], "T_1");
        let by_out = ok(sandbox
            .trade_query(UID_APP, &json!({"out_trade_no": "T_2"}))
            .await);
        assert_eq!(by_out["total_amount"], "2.00");
        let neither = sandbox.trade_query(UID_APP, &json!({})).await;
        assert_eq!(refused(neither), ("40004", "ACQ.INVALID_PARAMETER".into()));
        for (app, unknown) in [
            (UID_APP, json!({"out_trade_no": "T_9"})),
            (UID_APP, json!({"trade_no": "2026000"})),
            // Another app's trade is not this app's.
            (OPENID_APP, json!({"trade_no": trade_no})),
        ] {
            let answer = sandbox.trade_query(app, &unknown).await;
            assert_eq!(
                refused(answer),
                ("40004", "ACQ.TRADE_NOT_EXIST".into()),
                "{unknown}"
            );
        }
        // close, cancel and refund find it the same way.
        let by_no = json!({"trade_no": trade_no, "refund_amount": "1.00"});
        assert_eq!(
            ok(sandbox.trade_refund(UID_APP, &by_no).await)["out_trade_no"],
            "T_1"
        );
        let cancelled = ok(sandbox
            .trade_cancel(UID_APP, &json!({"trade_no": trade_no}))
            .await);
        assert_eq!(cancelled["out_trade_no"], "T_1");
        let answer = sandbox
            .trade_close(UID_APP, &json!({"trade_no": "nope"}))
            .await;
        assert_eq!(refused(answer).1, "ACQ.TRADE_NOT_EXIST");
    }

    #[tokio::test]
    async fn a_query_answers_the_documented_fields_by_the_app_s_identity_mode() {
        let sandbox = sandbox().await;
        ok(sandbox
            .trade_precreate(UID_APP, &no_params(), &order("T_1", "3"))
            .await);
        let waiting = ok(sandbox
            .trade_query(UID_APP, &json!({"out_trade_no": "T_1"}))
            .await);
        assert_eq!(
            keys(&waiting),
            [
                "buyer_pay_amount",
                "out_trade_no",
                "receipt_amount",
                "total_amount",
                "trade_no",
                "trade_status"
            ]
        );
        assert_eq!(waiting["receipt_amount"], "0.00");
        paid_trade(&sandbox, UID_APP, "T_2", "3").await;
        let paid = ok(sandbox
            .trade_query(UID_APP, &json!({"out_trade_no": "T_2"}))
            .await);
        assert_eq!(
            keys(&paid),
            [
                "buyer_logon_id",
                "buyer_pay_amount",
                "buyer_user_id",
                "out_trade_no",
                "receipt_amount",
                "send_pay_date",
                "total_amount",
                "trade_no",
                "trade_status"
            ]
        );
        assert_eq!(paid["trade_status"], "TRADE_SUCCESS");
        assert_eq!(paid["receipt_amount"], "3.00");
        paid_trade(&sandbox, OPENID_APP, "T_2", "3").await;
        let paid = ok(sandbox
            .trade_query(OPENID_APP, &json!({"out_trade_no": "T_2"}))
            .await);
        assert!(paid.get("buyer_user_id").is_none(), "{paid}");
        assert_eq!(
            paid["buyer_open_id"],
            open_id_for(OPENID_APP, &holder(CODE))
        );
    }

    #[tokio::test]
    async fn only_an_unpaid_trade_can_be_closed() {
        let sandbox = sandbox().await;
        ok(sandbox
            .trade_precreate(UID_APP, &no_params(), &order("T_1", "3"))
            .await);
        let closed = ok(sandbox
            .trade_close(UID_APP, &json!({"out_trade_no": "T_1"}))
            .await);
        assert_eq!(keys(&closed), ["out_trade_no", "trade_no"]);
        let state = ok(sandbox
            .trade_query(UID_APP, &json!({"out_trade_no": "T_1"}))
            .await);
        assert_eq!(state["trade_status"], "TRADE_CLOSED");
        for out in ["T_1", "T_2"] {
            if out == "T_2" {
                paid_trade(&sandbox, UID_APP, out, "3").await;
            }
            let answer = sandbox
                .trade_close(UID_APP, &json!({"out_trade_no": out}))
                .await;
            assert_eq!(
                refused(answer),
                ("40004", "ACQ.TRADE_STATUS_ERROR".into()),
                "{out}"
            );
        }
        // A closed trade is not paid afterwards.
        assert!(sandbox.pay("alice", UID_APP, "T_1").await.is_err());
    }

    #[tokio::test]
    async fn cancelling_closes_an_unpaid_trade_and_refunds_a_paid_one() {
        let sandbox = sandbox().await;
        ok(sandbox
            .trade_precreate(UID_APP, &no_params(), &order("T_1", "3"))
            .await);
        let closed = ok(sandbox
            .trade_cancel(UID_APP, &json!({"out_trade_no": "T_1"}))
            .await);
        assert_eq!(
            keys(&closed),
            ["action", "out_trade_no", "retry_flag", "trade_no"]
        );
        assert_eq!(
            (&closed["action"], &closed["retry_flag"]),
            (&json!("close"), &json!("N"))
        );
        let paid = paid_trade(&sandbox, UID_APP, "T_2", "3").await;
        ok(sandbox
            .trade_refund(
                UID_APP,
                &json!({"out_trade_no": "T_2", "refund_amount": "1", "out_request_no": "R1"}),
            )
            .await);
        let refunded = ok(sandbox
            .trade_cancel(UID_APP, &json!({"trade_no": paid["trade_no"]}))
            .await);
        assert_eq!(refunded["action"], "refund");
        let trade = sandbox
            .store()
            .get("trade", &format!("{UID_APP}:T_2"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(trade["trade_status"], "TRADE_CLOSED");
        assert_eq!(trade["refunded_fen"], 300, "what remained was refunded");
        // Cancelling again moves nothing and answers the same.
        let again = ok(sandbox
            .trade_cancel(UID_APP, &json!({"out_trade_no": "T_2"}))
            .await);
        assert_eq!(again, refunded);
        let answer = sandbox
            .trade_cancel(UID_APP, &json!({"out_trade_no": "T_9"}))
            .await;
        assert_eq!(refused(answer), ("40004", "ACQ.TRADE_NOT_EXIST".into()));
    }
}
