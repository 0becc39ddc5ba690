//! Trades (alipay.trade.*): creating (precreate, create, pay by code), querying, closing and
//! refunding; a simulated consumer paying one (`/consumers/{user}/pay`), which notifies the
//! merchant; and the `/trades` inspection route.
//!
//! Invariant: a repeated `out_trade_no` answers the existing trade unless its amount differs,
//! and refunds never exceed what was paid.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde_json::{Value, json};

use trellis_alipay::signing::beijing_timestamp;

use crate::consumers::sandbox_user_id;
use crate::gateway::{GatewayFailure, Outcome, busy, fail, missing};
use crate::{Error, Sandbox, fastish_number, text};

impl Sandbox {
    pub(crate) async fn trade_new(
        &self,
        method: &str,
        app_id: &str,
        p: &BTreeMap<String, String>,
        biz: &Value,
    ) -> Outcome {
        let out_trade_no = text(biz, "out_trade_no").ok_or_else(|| missing("out_trade_no"))?;
        if out_trade_no.len() > 64
            || !out_trade_no
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(fail(
                "40004",
                "ACQ.INVALID_PARAMETER",
                "out_trade_no 格式错误",
            ));
        }
        let amount = text(biz, "total_amount").ok_or_else(|| missing("total_amount"))?;
        let cents = parse_amount(amount)
            .ok_or_else(|| fail("40004", "ACQ.INVALID_PARAMETER", "total_amount 格式错误"))?;
        text(biz, "subject").ok_or_else(|| missing("subject"))?;
        let key = format!("{app_id}:{out_trade_no}");
        if let Some(existing) = self.store().get("trade", &key).await.map_err(busy)? {
            if existing["total_amount"] != json!(amount) {
                return Err(fail("40004", "ACQ.CONTEXT_INCONSISTENT", "交易信息被篡改"));
            }
            return Ok(trade_view(&existing));
        }
        let trade_no = format!("2026{:024}", fastish_number());
        let mut trade = json!({
            "app_id": app_id, "out_trade_no": out_trade_no, "trade_no": trade_no, "total_amount": amount, "cents": cents,
            "subject": biz["subject"], "trade_status": "WAIT_BUYER_PAY", "notify_url": p.get("notify_url"),
            "buyer_user_id": biz.get("buyer_id").cloned().unwrap_or(Value::Null), "gmt_create": beijing_timestamp(Utc::now()),
        });
        if method == "alipay.trade.pay" {
            let code = text(biz, "auth_code").ok_or_else(|| missing("auth_code"))?;
            // A consumer's payment code in the sandbox is "28" + a user id suffix.
            let user = format!("2088{}", code.trim_start_matches("28"));
            trade["buyer_user_id"] = json!(user);
            trade["trade_status"] = json!("TRADE_SUCCESS");
            trade["gmt_payment"] = json!(beijing_timestamp(Utc::now()));
        }
        self.store()
            .put("trade", &key, &trade)
            .await
            .map_err(busy)?;
        let mut view = trade_view(&trade);
        if method == "alipay.trade.precreate" {
            view["qr_code"] = json!(format!(
                "{}/qr/{app_id}/{out_trade_no}",
                self.inner.base_url
            ));
        }
        Ok(view)
    }

    async fn trade_of(&self, app_id: &str, biz: &Value) -> Result<(String, Value), GatewayFailure> {
        let out = text(biz, "out_trade_no").ok_or_else(|| missing("out_trade_no"))?;
        let key = format!("{app_id}:{out}");
        match self.store().get("trade", &key).await.map_err(busy)? {
            Some(t) => Ok((key, t)),
            None => Err(fail("40004", "ACQ.TRADE_NOT_EXIST", "交易不存在")),
        }
    }

    pub(crate) async fn trade_query(&self, app_id: &str, biz: &Value) -> Outcome {
        Ok(trade_view(&self.trade_of(app_id, biz).await?.1))
    }

    pub(crate) async fn trade_close(&self, app_id: &str, biz: &Value) -> Outcome {
        let (key, mut trade) = self.trade_of(app_id, biz).await?;
        if trade["trade_status"] != "WAIT_BUYER_PAY" {
            return Err(fail("40004", "ACQ.TRADE_STATUS_ERROR", "交易状态不合法"));
        }
        trade["trade_status"] = json!("TRADE_CLOSED");
        self.store()
            .put("trade", &key, &trade)
            .await
            .map_err(busy)?;
        Ok(trade_view(&trade))
    }

    pub(crate) async fn trade_refund(&self, app_id: &str, biz: &Value) -> Outcome {
        let (key, mut trade) = self.trade_of(app_id, biz).await?;
        if trade["trade_status"] != "TRADE_SUCCESS" {
            return Err(fail("40004", "ACQ.TRADE_STATUS_ERROR", "交易状态不合法"));
        }
        let amount = text(biz, "refund_amount").ok_or_else(|| missing("refund_amount"))?;
        let cents = parse_amount(amount)
            .ok_or_else(|| fail("40004", "ACQ.INVALID_PARAMETER", "refund_amount 格式错误"))?;
        let refunded = trade["refunded_cents"].as_u64().unwrap_or(0) + cents;
        if refunded > trade["cents"].as_u64().unwrap_or(0) {
            return Err(fail(
                "40004",
                "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL",
                "退款金额超限",
            ));
        }
        trade["refunded_cents"] = json!(refunded);
        if refunded == trade["cents"].as_u64().unwrap_or(0) {
            trade["trade_status"] = json!("TRADE_CLOSED");
        }
        self.store()
            .put("trade", &key, &trade)
            .await
            .map_err(busy)?;
        let mut view = trade_view(&trade);
        view["refund_fee"] = json!(format!("{}.{:02}", refunded / 100, refunded % 100));
        view["fund_change"] = json!("Y");
        Ok(view)
    }

    /// "User `user` pays trade `out_trade_no`": marks it paid and sends the signed
    /// `trade_status_sync` notification to its `notify_url`, retrying on Alipay's schedule
    /// (divided by the time scale) until the merchant answers exactly `success`.
    pub async fn pay(&self, user: &str, app_id: &str, out_trade_no: &str) -> Result<Value, Error> {
        let key = format!("{app_id}:{out_trade_no}");
        let mut trade = self
            .store()
            .get("trade", &key)
            .await?
            .ok_or_else(|| Error::Invalid("no such trade".into()))?;
        if trade["trade_status"] != "WAIT_BUYER_PAY" {
            return Err(Error::Invalid(format!(
                "the trade is {}",
                trade["trade_status"]
            )));
        }
        let user_id = sandbox_user_id(user);
        trade["trade_status"] = json!("TRADE_SUCCESS");
        trade["buyer_user_id"] = json!(user_id);
        trade["gmt_payment"] = json!(beijing_timestamp(Utc::now()));
        self.store().put("trade", &key, &trade).await?;
        if let Some(url) = trade["notify_url"].as_str().map(str::to_owned) {
            let body = self.trade_notification(&trade)?;
            let sandbox = self.clone();
            let notify_id = trade["trade_no"].as_str().unwrap_or_default().to_owned();
            tokio::spawn(async move { sandbox.deliver(&notify_id, &url, body).await });
        }
        Ok(trade_view(&trade))
    }
}

/// Yuan with at most two decimals, within Alipay's range, as cents.
fn parse_amount(text: &str) -> Option<u64> {
    let (yuan, fen) = text.split_once('.').unwrap_or((text, ""));
    if yuan.is_empty()
        || fen.len() > 2
        || !yuan.bytes().chain(fen.bytes()).all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let cents = yuan.parse::<u64>().ok()? * 100 + format!("{fen:0<2}").parse::<u64>().ok()?;
    (1..=10_000_000_000).contains(&cents).then_some(cents)
}

fn trade_view(trade: &Value) -> Value {
    json!({
        "trade_no": trade["trade_no"], "out_trade_no": trade["out_trade_no"], "trade_status": trade["trade_status"],
        "total_amount": trade["total_amount"], "buyer_user_id": trade["buyer_user_id"],
    })
}

pub(crate) async fn trade_state(
    State(sandbox): State<Sandbox>,
    Path((app, out)): Path<(String, String)>,
) -> Response {
    match sandbox.store().get("trade", &format!("{app}:{out}")).await {
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
}

pub(crate) async fn pay(
    State(sandbox): State<Sandbox>,
    Path(user): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
    body: Option<Json<Pay>>,
) -> Response {
    let (app, out) = match body {
        Some(Json(p)) => (p.app_id, p.out_trade_no),
        None => (
            q.get("app_id").cloned().unwrap_or_default(),
            q.get("out_trade_no").cloned().unwrap_or_default(),
        ),
    };
    match sandbox.pay(&user, &app, &out).await {
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
    use super::*;

    #[test]
    fn amounts_are_yuan_with_two_decimals() {
        assert_eq!(parse_amount("0.10"), Some(10));
        assert_eq!(parse_amount("12"), Some(1200));
        assert_eq!(parse_amount("1.5"), Some(150));
        for bad in ["0", "0.001", "-1", "1e3", "", ".5", "100000001"] {
            assert_eq!(parse_amount(bad), None, "{bad}");
        }
    }
}
