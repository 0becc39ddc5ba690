//! Refunds: `alipay.trade.refund` (money back to the buyer, in one or several requests) and
//! `alipay.trade.fastpay.refund.query` (did a given request go through).
//!
//! Invariant: a refund request is identified by app, trade and `out_request_no` (the
//! `out_trade_no` when a full refund sends none) and moves money at most once; the refunds of a
//! trade never exceed what was paid, and a trade refunded in full is `TRADE_CLOSED`.

use chrono::Utc;
use serde_json::{Value, json};

use trellis_alipay::signing::beijing_timestamp;

use super::{fen_in, status_error, with, yuan};
use crate::Sandbox;
use crate::gateway::{GatewayFailure, Outcome, busy, fail};
use crate::schema::{Family, Fields, amount_fen};

/// Where refund requests are stored, by `{app_id}:{trade_no}:{out_request_no}`.
const REFUNDS: &str = "trade_refund";

fn refund_key(trade: &Value, out_request_no: &str) -> String {
    format!(
        "{}:{}:{out_request_no}",
        trade["app_id"].as_str().unwrap_or_default(),
        trade["trade_no"].as_str().unwrap_or_default()
    )
}

impl Sandbox {
    async fn refund_of(
        &self,
        trade: &Value,
        out_request_no: &str,
    ) -> Result<Option<Value>, GatewayFailure> {
        self.store()
            .get(REFUNDS, &refund_key(trade, out_request_no))
            .await
            .map_err(busy)
    }

    pub(crate) async fn trade_refund(&self, app_id: &str, biz: &Value) -> Outcome {
        let f = Fields::of(biz, Family::Trade);
        // refund_amount: required, yuan with at most two decimals (sigoden/alipay `Price`).
        let amount = f.text("refund_amount", 12)?;
        let fen = amount_fen(amount)
            .ok_or_else(|| f.invalid("refund_amount", "须为 0.01 至 100000000 元、至多两位小数"))?;
        // Lengths from the sigoden/alipay refund request type.
        let out_request_no = f.optional_text("out_request_no", 64)?;
        for (key, max) in [
            ("refund_reason", 256),
            ("operator_id", 30),
            ("store_id", 32),
            ("terminal_id", 32),
        ] {
            f.optional_text(key, max)?;
        }
        let mut trade = self.find_trade(app_id, &f).await?;
        let out_trade_no = trade["out_trade_no"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let request_no = out_request_no.unwrap_or(&out_trade_no);
        if let Some(earlier) = self.refund_of(&trade, request_no).await? {
            // The same request again (refund's table: ACQ.DISCORDANT_REPEAT_REQUEST when its
            // amount differs); the sigoden type's `fund_change` says no money moved this time.
            if fen_in(&earlier, "fen") != fen {
                return Err(fail(
                    "40004",
                    "ACQ.DISCORDANT_REPEAT_REQUEST",
                    "同一退款请求号的退款金额不一致",
                ));
            }
            return Ok(self.refunded(&trade, &earlier, "N").await);
        }
        // refund's table: only a paid trade refunds (ACQ.TRADE_STATUS_ERROR).
        if trade["trade_status"] != "TRADE_SUCCESS" {
            return Err(status_error());
        }
        let total = fen_in(&trade, "fen");
        // out_request_no: required for a partial refund (sigoden/alipay refund request type).
        if out_request_no.is_none() && fen != total {
            return Err(f.missing("out_request_no"));
        }
        let refunded = fen_in(&trade, "refunded_fen") + fen;
        if refunded > total {
            // refund's table: more than what remains.
            return Err(fail(
                "40004",
                "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL",
                "退款金额超过可退金额",
            ));
        }
        trade["refunded_fen"] = json!(refunded);
        if refunded == total {
            trade["trade_status"] = json!("TRADE_CLOSED");
        }
        let refund = json!({
            "out_request_no": request_no, "fen": fen, "refund_amount": yuan(fen),
            "refund_reason": f.raw("refund_reason"), "gmt_refund_pay": beijing_timestamp(Utc::now()),
        });
        self.store()
            .put(REFUNDS, &refund_key(&trade, request_no), &refund)
            .await
            .map_err(busy)?;
        self.save_trade(&trade).await.map_err(busy)?;
        self.notify_refund(&trade, &refund).await;
        Ok(self.refunded(&trade, &refund, "Y").await)
    }

    /// A refund's `trade_status_sync` to the trade's `notify_url`: the trade's fields with
    /// `out_biz_no` (the refund's `out_request_no`), `refund_fee` (refunded so far) and
    /// `gmt_refund`, its status `TRADE_SUCCESS` after a partial refund and `TRADE_CLOSED` after
    /// a full one (the notification page's field list, as `alipay-protocol.md` §8 records it).
    async fn notify_refund(&self, trade: &Value, refund: &Value) {
        let Some(url) = trade["notify_url"].as_str().map(str::to_owned) else {
            return;
        };
        let identity = self
            .identity_of(trade["app_id"].as_str().unwrap_or_default())
            .await;
        let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        let extra = [
            ("out_biz_no", text(&refund["out_request_no"])),
            ("refund_fee", yuan(fen_in(trade, "refunded_fen"))),
            ("gmt_refund", text(&refund["gmt_refund_pay"])),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        match self.trade_notification_with(trade, identity, extra) {
            Ok(body) => {
                let sandbox = self.clone();
                let id = format!(
                    "{}-{}",
                    text(&trade["trade_no"]),
                    text(&refund["out_request_no"])
                );
                tokio::spawn(async move { sandbox.deliver(&id, &url, body).await });
            }
            Err(error) => tracing::warn!(%error, "sandbox could not sign a refund notification"),
        }
    }

    /// refund's answer (sigoden/alipay refund response type): the ids, the buyer, whether money
    /// moved in this call, the trade's refunded total so far and when the refund was paid.
    async fn refunded(&self, trade: &Value, refund: &Value, fund_change: &str) -> Value {
        let view = json!({
            "trade_no": trade["trade_no"], "out_trade_no": trade["out_trade_no"],
            "fund_change": fund_change, "refund_fee": yuan(fen_in(trade, "refunded_fen")),
            "gmt_refund_pay": refund["gmt_refund_pay"],
        });
        with(view, self.buyer_fields(trade).await)
    }

    /// fastpay.refund.query (sigoden/alipay types; copies of the field text): `out_request_no`
    /// required — for a full refund sent without one, the `out_trade_no`. A refund that is not
    /// known is a success without `refund_status` or amounts: that absence is how Alipay says
    /// "not received".
    pub(crate) async fn trade_refund_query(&self, app_id: &str, biz: &Value) -> Outcome {
        let f = Fields::of(biz, Family::Trade);
        let out_request_no = f.text("out_request_no", 64)?;
        let trade = self.find_trade(app_id, &f).await?;
        Ok(match self.refund_of(&trade, out_request_no).await? {
            Some(refund) => json!({
                "trade_no": trade["trade_no"], "out_trade_no": trade["out_trade_no"],
                "out_request_no": out_request_no, "total_amount": trade["total_amount"],
                "refund_amount": refund["refund_amount"], "refund_status": "REFUND_SUCCESS",
            }),
            None => json!({}),
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::testing::*;
    use crate::open_id_for;

    fn refund(out: &str, amount: &str, request: Option<&str>) -> serde_json::Value {
        let mut biz = json!({"out_trade_no": out, "refund_amount": amount});
        if let Some(request) = request {
            biz["out_request_no"] = json!(request);
        }
        biz
    }

    #[tokio::test]
    async fn a_refund_beyond_what_remains_is_refused() {
        let sandbox = sandbox().await;
        paid_trade(&sandbox, UID_APP, "T_1", "10.00").await;
        let answer = sandbox
            .trade_refund(UID_APP, &refund("T_1", "10.01", Some("R0")))
            .await;
        assert_eq!(
            refused(answer),
            ("40004", "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL".into())
        );
        ok(sandbox
            .trade_refund(UID_APP, &refund("T_1", "6.00", Some("R1")))
            .await);
        let answer = sandbox
            .trade_refund(UID_APP, &refund("T_1", "4.01", Some("R2")))
            .await;
        assert_eq!(
            refused(answer),
            ("40004", "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL".into())
        );
        for bad in [json!("0"), json!("1.234"), json!(null)] {
            let mut biz = refund("T_1", "1", Some("R3"));
            biz["refund_amount"] = bad.clone();
            let answer = sandbox.trade_refund(UID_APP, &biz).await;
            assert_eq!(
                refused(answer),
                ("40004", "ACQ.INVALID_PARAMETER".into()),
                "{bad}"
            );
        }
        let long = "r".repeat(65);
        let answer = sandbox
            .trade_refund(UID_APP, &refund("T_1", "1", Some(&long)))
            .await;
        assert_eq!(refused(answer).1, "ACQ.INVALID_PARAMETER");
    }

    #[tokio::test]
    async fn a_partial_refund_needs_an_out_request_no_but_a_full_one_does_not() {
        let sandbox = sandbox().await;
        paid_trade(&sandbox, UID_APP, "T_1", "10.00").await;
        let answer = sandbox
            .trade_refund(UID_APP, &refund("T_1", "3", None))
            .await;
        assert_eq!(refused(answer), ("40004", "ACQ.INVALID_PARAMETER".into()));
        let full = ok(sandbox
            .trade_refund(UID_APP, &refund("T_1", "10", None))
            .await);
        assert_eq!(full["refund_fee"], "10.00");
    }

    #[tokio::test]
    async fn a_repeated_out_request_no_moves_no_money_twice() {
        let sandbox = sandbox().await;
        paid_trade(&sandbox, UID_APP, "T_1", "10.00").await;
        let first = ok(sandbox
            .trade_refund(UID_APP, &refund("T_1", "4", Some("R1")))
            .await);
        assert_eq!(first["fund_change"], "Y");
        let again = ok(sandbox
            .trade_refund(UID_APP, &refund("T_1", "4.00", Some("R1")))
            .await);
        assert_eq!(again["fund_change"], "N");
        assert_eq!(again["refund_fee"], "4.00", "no second refund");
        assert_eq!(again["gmt_refund_pay"], first["gmt_refund_pay"]);
        let answer = sandbox
            .trade_refund(UID_APP, &refund("T_1", "5", Some("R1")))
            .await;
        assert_eq!(
            refused(answer),
            ("40004", "ACQ.DISCORDANT_REPEAT_REQUEST".into())
        );
        // The rest, then the same full refund again once the trade is closed.
        let rest = ok(sandbox
            .trade_refund(UID_APP, &refund("T_1", "6", Some("R2")))
            .await);
        assert_eq!(rest["refund_fee"], "10.00");
        let repeat = ok(sandbox
            .trade_refund(UID_APP, &refund("T_1", "6", Some("R2")))
            .await);
        assert_eq!(repeat["fund_change"], "N");
    }

    #[tokio::test]
    async fn an_unpaid_trade_cannot_be_refunded_and_a_fully_refunded_one_is_closed() {
        let sandbox = sandbox().await;
        ok(sandbox
            .trade_precreate(UID_APP, &no_params(), &order("T_1", "3"))
            .await);
        let answer = sandbox
            .trade_refund(UID_APP, &refund("T_1", "3", None))
            .await;
        assert_eq!(refused(answer), ("40004", "ACQ.TRADE_STATUS_ERROR".into()));
        paid_trade(&sandbox, UID_APP, "T_2", "3").await;
        ok(sandbox
            .trade_refund(UID_APP, &refund("T_2", "1", Some("R1")))
            .await);
        let query = json!({"out_trade_no": "T_2"});
        assert_eq!(
            ok(sandbox.trade_query(UID_APP, &query).await)["trade_status"],
            "TRADE_SUCCESS"
        );
        ok(sandbox
            .trade_refund(UID_APP, &refund("T_2", "2", Some("R2")))
            .await);
        assert_eq!(
            ok(sandbox.trade_query(UID_APP, &query).await)["trade_status"],
            "TRADE_CLOSED"
        );
        let answer = sandbox
            .trade_refund(UID_APP, &refund("T_2", "0.01", Some("R3")))
            .await;
        assert_eq!(refused(answer), ("40004", "ACQ.TRADE_STATUS_ERROR".into()));
    }

    #[tokio::test]
    async fn refunds_answer_the_documented_fields_by_the_app_s_identity_mode() {
        let sandbox = sandbox().await;
        paid_trade(&sandbox, UID_APP, "T_1", "10.00").await;
        ok(sandbox
            .trade_refund(UID_APP, &refund("T_1", "1.5", Some("R1")))
            .await);
        let second = ok(sandbox
            .trade_refund(UID_APP, &refund("T_1", "2", Some("R2")))
            .await);
        assert_eq!(
            keys(&second),
            [
                "buyer_logon_id",
                "buyer_user_id",
                "fund_change",
                "gmt_refund_pay",
                "out_trade_no",
                "refund_fee",
                "trade_no"
            ]
        );
        assert_eq!(second["refund_fee"], "3.50", "the total refunded so far");
        assert_eq!(second["buyer_user_id"], holder(CODE));
        paid_trade(&sandbox, OPENID_APP, "T_1", "10.00").await;
        let open = ok(sandbox
            .trade_refund(OPENID_APP, &refund("T_1", "10", None))
            .await);
        assert!(open.get("buyer_user_id").is_none(), "{open}");
        assert_eq!(
            open["buyer_open_id"],
            open_id_for(OPENID_APP, &holder(CODE))
        );
    }

    #[tokio::test]
    async fn a_refund_query_finds_recorded_refunds_and_answers_nothing_for_unknown_ones() {
        let sandbox = sandbox().await;
        let paid = paid_trade(&sandbox, UID_APP, "T_1", "10.00").await;
        ok(sandbox
            .trade_refund(UID_APP, &refund("T_1", "4", Some("R1")))
            .await);
        let found = ok(sandbox
            .trade_refund_query(
                UID_APP,
                &json!({"trade_no": paid["trade_no"], "out_request_no": "R1"}),
            )
            .await);
        assert_eq!(
            keys(&found),
            [
                "out_request_no",
                "out_trade_no",
                "refund_amount",
                "refund_status",
                "total_amount",
                "trade_no"
            ]
        );
        assert_eq!(found["refund_status"], "REFUND_SUCCESS");
        assert_eq!(
            (&found["refund_amount"], &found["total_amount"]),
            (&json!("4.00"), &json!("10.00"))
        );
        let unknown = ok(sandbox
            .trade_refund_query(
                UID_APP,
                &json!({"out_trade_no": "T_1", "out_request_no": "R9"}),
            )
            .await);
        assert_eq!(unknown, json!({}), "no refund_status, no amounts");
        let answer = sandbox
            .trade_refund_query(UID_APP, &json!({"out_trade_no": "T_1"}))
            .await;
        assert_eq!(refused(answer), ("40004", "ACQ.INVALID_PARAMETER".into()));
        // A full refund sent without out_request_no is found by the out_trade_no.
        paid_trade(&sandbox, UID_APP, "T_2", "5").await;
        ok(sandbox
            .trade_refund(UID_APP, &refund("T_2", "5", None))
            .await);
        let full = ok(sandbox
            .trade_refund_query(
                UID_APP,
                &json!({"out_trade_no": "T_2", "out_request_no": "T_2"}),
            )
            .await);
        assert_eq!(full["refund_amount"], "5.00");
    }
}
