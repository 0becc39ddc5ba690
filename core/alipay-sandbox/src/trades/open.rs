//! Opening a trade: `alipay.trade.precreate` (a QR code for the buyer to scan),
//! `alipay.trade.create` (a JSAPI trade for a known buyer) and `alipay.trade.pay` (the merchant
//! scans the buyer's code) — the request checks their models document, the trade stored, and
//! the fields each answer carries.
//!
//! Invariant: a request failing a documented check stores nothing, and a repeated
//! `out_trade_no` never opens a second trade: it answers the stored one, or is refused when its
//! amount differs or the trade is already paid or closed.

use std::collections::BTreeMap;

use chrono::Utc;
use serde_json::{Map, Value, json};

use trellis_alipay::signing::beijing_timestamp;

use super::auth_code::{SCENES, buyer_of, fits, waits};
use super::{bound_to_other, fen_in, masked, masked_logon_id_of, with, yuan};
use crate::apps::Identity;
use crate::gateway::{GatewayFailure, Outcome, busy, fail};
use crate::schema::{Family, Fields, amount_fen};
use crate::{Sandbox, fastish_number};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Opening {
    Precreate,
    Create,
    Pay,
}

impl Opening {
    /// The `product_code` values each method accepts. precreate and pay: `FACE_TO_FACE_PAYMENT`
    /// (SDK models `AlipayTradePrecreateModel`, `AlipayTradePayModel`; pay's pre-auth and
    /// withholding products are not simulated). create: `FACE_TO_FACE_PAYMENT` (SDK model
    /// `AlipayTradeCreateModel`) and `JSAPI_PAY`, which only community integrations of in-app
    /// payments give (unconfirmed).
    fn product_codes(self) -> &'static [&'static str] {
        match self {
            Self::Precreate | Self::Pay => &["FACE_TO_FACE_PAYMENT"],
            Self::Create => &["FACE_TO_FACE_PAYMENT", "JSAPI_PAY"],
        }
    }
}

/// What every opening reads, once checked.
struct Order<'a> {
    out_trade_no: &'a str,
    fen: i64,
    subject: &'a str,
}

/// The checks precreate, create and pay share.
fn order<'a>(f: &Fields<'a>, opening: Opening) -> Result<Order<'a>, GatewayFailure> {
    // out_trade_no: required, at most 64, letters, digits and underscores only (old API pages
    // of precreate and create; SDK model javadoc).
    let out_trade_no = f.text("out_trade_no", 64)?;
    if !out_trade_no
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(f.invalid("out_trade_no", "只能由字母、数字和下划线组成"));
    }
    // total_amount: required, yuan with at most two decimals in [0.01, 100000000]
    // (sigoden/alipay `Price`; SDK model javadoc).
    let amount = f.text("total_amount", 12)?;
    let fen = amount_fen(amount)
        .ok_or_else(|| f.invalid("total_amount", "须为 0.01 至 100000000 元、至多两位小数"))?;
    // subject: required, at most 256 (sigoden/alipay types; old API pages).
    let subject = f.text("subject", 256)?;
    f.optional_one_of("product_code", opening.product_codes())?;
    // timeout_express: at most 6, a whole number of minutes, hours or days, or `1c`
    // (sigoden/alipay String(6); SDK model javadoc).
    if let Some(timeout) = f.optional_text("timeout_express", 6)?
        && !is_timeout(timeout)
    {
        return Err(f.invalid("timeout_express", "须为整数加 m、h、d 之一，或 1c"));
    }
    // time_expire: `yyyy-MM-dd HH:mm:ss` (SDK models).
    f.optional_datetime("time_expire")?;
    // Lengths from the sigoden/alipay types.
    for (key, max) in [
        ("body", 128),
        ("store_id", 32),
        ("terminal_id", 32),
        ("operator_id", 28),
    ] {
        f.optional_text(key, max)?;
    }
    Ok(Order {
        out_trade_no,
        fen,
        subject,
    })
}

/// `^\d+[mhd]$` or `1c`.
fn is_timeout(text: &str) -> bool {
    if text == "1c" {
        return true;
    }
    match text.char_indices().last() {
        Some((at, unit)) => {
            at > 0
                && matches!(unit, 'm' | 'h' | 'd')
                && text[..at].bytes().all(|b| b.is_ascii_digit())
        }
        None => false,
    }
}

/// pay's `scene` and `auth_code`, checked: the scene is required and one of [`SCENES`] (the
/// old API page and the sigoden types mark it required; the SDK defaults it), the code is
/// required (SDK javadoc: for face-to-face payment), and a code not shaped for its scene is
/// `ACQ.PAYMENT_AUTH_CODE_INVALID` (pay's error table).
fn payment_code<'a>(f: &Fields<'a>) -> Result<&'a str, GatewayFailure> {
    let scene = f.one_of("scene", &SCENES)?;
    // The SDK types the code as String(32) but describes face tokens as 35 characters long:
    // the sandbox allows 64.
    let code = f.text("auth_code", 64)?;
    if !fits(scene, code) {
        return Err(fail(
            "40004",
            "ACQ.PAYMENT_AUTH_CODE_INVALID",
            format!("{scene} 场景的付款码格式不对"),
        ));
    }
    Ok(code)
}

/// `2088` and twelve digits, an Alipay user id.
fn is_user_id(id: &str) -> bool {
    id.len() == 16 && id.starts_with("2088") && id.bytes().all(|b| b.is_ascii_digit())
}

impl Sandbox {
    pub(crate) async fn trade_precreate(
        &self,
        app_id: &str,
        p: &BTreeMap<String, String>,
        biz: &Value,
    ) -> Outcome {
        self.open_trade(Opening::Precreate, app_id, p, biz).await
    }

    pub(crate) async fn trade_create(
        &self,
        app_id: &str,
        p: &BTreeMap<String, String>,
        biz: &Value,
    ) -> Outcome {
        self.open_trade(Opening::Create, app_id, p, biz).await
    }

    pub(crate) async fn trade_pay(
        &self,
        app_id: &str,
        p: &BTreeMap<String, String>,
        biz: &Value,
    ) -> Outcome {
        self.open_trade(Opening::Pay, app_id, p, biz).await
    }

    async fn open_trade(
        &self,
        opening: Opening,
        app_id: &str,
        p: &BTreeMap<String, String>,
        biz: &Value,
    ) -> Outcome {
        let f = Fields::of(biz, Family::Trade);
        let order = order(&f, opening)?;
        let buyer = match opening {
            Opening::Create => self.create_buyer(app_id, &f).await?,
            Opening::Precreate | Opening::Pay => Map::new(),
        };
        let code = match opening {
            Opening::Pay => Some(payment_code(&f)?),
            Opening::Precreate | Opening::Create => None,
        };
        let mut trade = match self
            .trade_by_out_trade_no(app_id, order.out_trade_no)
            .await?
        {
            Some(existing) => {
                // The tables of precreate, create and pay: the same out_trade_no with other
                // details is ACQ.CONTEXT_INCONSISTENT; a paid or closed one cannot open again.
                if fen_in(&existing, "fen") != order.fen {
                    return Err(fail("40004", "ACQ.CONTEXT_INCONSISTENT", "交易信息被篡改"));
                }
                match existing["trade_status"].as_str() {
                    Some("TRADE_SUCCESS" | "TRADE_FINISHED") => {
                        return Err(fail("40004", "ACQ.TRADE_HAS_SUCCESS", "交易已被支付"));
                    }
                    Some("TRADE_CLOSED") => {
                        return Err(fail("40004", "ACQ.TRADE_HAS_CLOSE", "交易已经关闭"));
                    }
                    _ => {}
                }
                if code.is_none() {
                    // A retry: the same trade, the same answer.
                    return Ok(self.opened(opening, &existing).await);
                }
                existing
            }
            None => {
                let now = beijing_timestamp(Utc::now());
                let trade = json!({
                    "app_id": app_id, "out_trade_no": order.out_trade_no,
                    "trade_no": format!("2026{:024}", fastish_number()),
                    "total_amount": yuan(order.fen), "fen": order.fen, "subject": order.subject,
                    "trade_status": "WAIT_BUYER_PAY", "notify_url": p.get("notify_url"),
                    "gmt_create": now,
                });
                with(trade, buyer)
            }
        };
        if let Some(code) = code {
            let user_id = buyer_of(code);
            if bound_to_other(&trade, &user_id) {
                // pay's table: the code's holder is not the buyer the trade was made for.
                return Err(fail("40004", "ACQ.TRADE_BUYER_NOT_MATCH", "交易买家不匹配"));
            }
            if trade["buyer_logon_id"].is_null() {
                trade["buyer_logon_id"] = json!(masked_logon_id_of(&user_id));
            }
            trade["buyer_user_id"] = json!(user_id);
            if !waits(code) {
                trade["trade_status"] = json!("TRADE_SUCCESS");
                trade["gmt_payment"] = json!(beijing_timestamp(Utc::now()));
            }
        }
        self.save_trade(&trade).await.map_err(busy)?;
        Ok(self.opened(opening, &trade).await)
    }

    /// create's buyer: one of `buyer_id` (2088…), `buyer_open_id` or `buyer_logon_id` (old
    /// create page: buyer_id and buyer_logon_id may not both be empty; SDK model
    /// `AlipayTradeCreateModel` adds buyer_open_id for OpenID apps); an id of the kind the app
    /// does not use is refused (the sandbox's reading of the OpenID migration: an app gets one
    /// kind of identifier only).
    async fn create_buyer(
        &self,
        app_id: &str,
        f: &Fields<'_>,
    ) -> Result<Map<String, Value>, GatewayFailure> {
        let identity = self.identity_of(app_id).await;
        let mut buyer = Map::new();
        if let Some(id) = f.optional_text("buyer_id", 28)? {
            if !is_user_id(id) {
                return Err(f.invalid("buyer_id", "须为 2088 开头的 16 位数字"));
            }
            if identity == Identity::OpenId {
                return Err(f.invalid("buyer_id", "此应用按 open_id 识别用户，请传 buyer_open_id"));
            }
            buyer.insert("buyer_user_id".into(), json!(id));
        }
        if let Some(open_id) = f.optional_text("buyer_open_id", 128)? {
            if identity == Identity::Uid {
                return Err(f.invalid("buyer_open_id", "此应用按 user_id 识别用户，请传 buyer_id"));
            }
            buyer.insert("buyer_open_id".into(), json!(open_id));
        }
        if let Some(logon_id) = f.optional_text("buyer_logon_id", 100)? {
            buyer.insert("buyer_logon_id".into(), json!(masked(logon_id)));
        }
        if buyer.is_empty() {
            return Err(f.invalid(
                "buyer_id",
                "buyer_id、buyer_open_id、buyer_logon_id 须至少传一个",
            ));
        }
        Ok(buyer)
    }

    /// Each opening's answer, with only the fields its response model has (sigoden/alipay
    /// types, SDK response models): precreate `out_trade_no` and `qr_code` (no `trade_no`);
    /// create `out_trade_no` and `trade_no`; pay the payment, or — waiting for the buyer — the
    /// `10003` shape of a real answer (no `trade_status`, no `gmt_payment`, amounts `0.00`
    /// but the total).
    async fn opened(&self, opening: Opening, trade: &Value) -> Value {
        match opening {
            Opening::Precreate => json!({
                "out_trade_no": trade["out_trade_no"],
                "qr_code": format!(
                    "{}/qr/{}/{}",
                    self.inner.base_url,
                    trade["app_id"].as_str().unwrap_or_default(),
                    trade["out_trade_no"].as_str().unwrap_or_default()
                ),
            }),
            Opening::Create => json!({
                "out_trade_no": trade["out_trade_no"], "trade_no": trade["trade_no"],
            }),
            Opening::Pay if trade["trade_status"] == "TRADE_SUCCESS" => {
                let total = &trade["total_amount"];
                let paid = json!({
                    "trade_no": trade["trade_no"], "out_trade_no": trade["out_trade_no"],
                    "total_amount": total, "receipt_amount": total, "buyer_pay_amount": total,
                    "gmt_payment": trade["gmt_payment"],
                    "fund_bill_list": [{ "fund_channel": "ALIPAYACCOUNT", "amount": total }],
                });
                with(paid, self.buyer_fields(trade).await)
            }
            Opening::Pay => {
                let waiting = json!({
                    "code": "10003", "msg": " order success pay inprocess",
                    "trade_no": trade["trade_no"], "out_trade_no": trade["out_trade_no"],
                    "total_amount": trade["total_amount"], "receipt_amount": "0.00",
                    "buyer_pay_amount": "0.00", "point_amount": "0.00", "invoice_amount": "0.00",
                });
                with(waiting, self.buyer_fields(trade).await)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::testing::*;
    use crate::open_id_for;

    #[tokio::test]
    async fn an_out_trade_no_with_a_dash_or_beyond_64_characters_is_refused() {
        let sandbox = sandbox().await;
        for bad in [
            json!("T-0001"),
            json!("x".repeat(65)),
            json!("订单1"),
            json!(1),
        ] {
            let mut biz = order("T_1", "1.00");
            biz["out_trade_no"] = bad.clone();
            let answer = sandbox.trade_precreate(UID_APP, &no_params(), &biz).await;
            assert_eq!(
                refused(answer),
                ("40004", "ACQ.INVALID_PARAMETER".into()),
                "{bad}"
            );
        }
        let missing = json!({"total_amount": "1.00", "subject": "s"});
        let answer = sandbox.trade_create(UID_APP, &no_params(), &missing).await;
        assert_eq!(refused(answer).1, "ACQ.INVALID_PARAMETER");
        ok(sandbox
            .trade_precreate(UID_APP, &no_params(), &order(&"A_9".repeat(21), "1.00"))
            .await);
    }

    #[tokio::test]
    async fn amounts_subjects_and_optional_fields_are_checked_as_documented() {
        let sandbox = sandbox().await;
        let bad: [(&str, serde_json::Value); 13] = [
            ("total_amount", json!("0.00")),
            ("total_amount", json!("1.001")),
            ("total_amount", json!(1)),
            ("subject", json!("")),
            ("subject", json!("字".repeat(257))),
            ("product_code", json!("QUICK_WAP_WAY")),
            ("timeout_express", json!("90s")),
            ("timeout_express", json!("1234567m")),
            ("time_expire", json!("2026-01-01T10:00:00")),
            ("body", json!("b".repeat(129))),
            ("store_id", json!("s".repeat(33))),
            ("terminal_id", json!("t".repeat(33))),
            ("operator_id", json!("o".repeat(29))),
        ];
        for (field, value) in bad {
            let mut biz = order("T_1", "1.00");
            biz[field] = value.clone();
            let answer = sandbox.trade_precreate(UID_APP, &no_params(), &biz).await;
            let (code, sub_code) = refused(answer);
            assert_eq!(
                (code, sub_code.as_str()),
                ("40004", "ACQ.INVALID_PARAMETER"),
                "{field}={value}"
            );
        }
        let mut good = order("T_2", "100000000");
        for (field, value) in [
            ("product_code", "FACE_TO_FACE_PAYMENT"),
            ("timeout_express", "15d"),
            ("time_expire", "2026-01-01 10:00:00"),
            ("body", "会员充值"),
            ("store_id", "S01"),
            ("terminal_id", "T01"),
            ("operator_id", "op"),
        ] {
            good[field] = json!(value);
        }
        ok(sandbox.trade_precreate(UID_APP, &no_params(), &good).await);
        let mut one_c = order("T_3", "0.01");
        one_c["timeout_express"] = json!("1c");
        ok(sandbox.trade_precreate(UID_APP, &no_params(), &one_c).await);
    }

    #[tokio::test]
    async fn create_accepts_jsapi_pay_where_precreate_and_pay_do_not() {
        let sandbox = sandbox().await;
        let mut create = order("T_1", "1.00");
        create["product_code"] = json!("JSAPI_PAY");
        create["buyer_id"] = json!("2088000000000001");
        ok(sandbox.trade_create(UID_APP, &no_params(), &create).await);
        let mut precreate = order("T_2", "1.00");
        precreate["product_code"] = json!("JSAPI_PAY");
        let answer = sandbox
            .trade_precreate(UID_APP, &no_params(), &precreate)
            .await;
        assert_eq!(refused(answer).1, "ACQ.INVALID_PARAMETER");
        let mut pay = bar_code_payment("T_3", "1.00", CODE);
        pay["product_code"] = json!("JSAPI_PAY");
        let answer = sandbox.trade_pay(UID_APP, &no_params(), &pay).await;
        assert_eq!(refused(answer).1, "ACQ.INVALID_PARAMETER");
    }

    #[tokio::test]
    async fn a_payment_needs_a_scene_and_a_code_shaped_for_it() {
        let sandbox = sandbox().await;
        let mut no_scene = bar_code_payment("T_1", "1.00", CODE);
        no_scene.as_object_mut().unwrap().remove("scene");
        let answer = sandbox.trade_pay(UID_APP, &no_params(), &no_scene).await;
        assert_eq!(refused(answer).1, "ACQ.INVALID_PARAMETER");
        let mut wave = bar_code_payment("T_1", "1.00", CODE);
        wave["scene"] = json!("wave_code");
        let answer = sandbox.trade_pay(UID_APP, &no_params(), &wave).await;
        assert_eq!(refused(answer).1, "ACQ.INVALID_PARAMETER");
        let mut no_code = bar_code_payment("T_1", "1.00", CODE);
        no_code.as_object_mut().unwrap().remove("auth_code");
        let answer = sandbox.trade_pay(UID_APP, &no_params(), &no_code).await;
        assert_eq!(refused(answer).1, "ACQ.INVALID_PARAMETER");
        for bad in ["1234567890123456", "28123", "fp0a1b2c3d4e5f"] {
            let answer = sandbox
                .trade_pay(UID_APP, &no_params(), &bar_code_payment("T_1", "1.00", bad))
                .await;
            assert_eq!(
                refused(answer),
                ("40004", "ACQ.PAYMENT_AUTH_CODE_INVALID".into()),
                "{bad}"
            );
        }
        let mut face = bar_code_payment("T_1", "1.00", CODE);
        face["scene"] = json!("security_code");
        let answer = sandbox.trade_pay(UID_APP, &no_params(), &face).await;
        assert_eq!(refused(answer).1, "ACQ.PAYMENT_AUTH_CODE_INVALID");
        face["auth_code"] = json!("fp0a1b2c3d4e5f6a7b8c9d");
        let paid = ok(sandbox.trade_pay(UID_APP, &no_params(), &face).await);
        assert_eq!(paid["buyer_user_id"], holder("fp0a1b2c3d4e5f6a7b8c9d"));
    }

    #[tokio::test]
    async fn create_needs_a_buyer_of_the_kind_the_app_identifies_consumers_by() {
        let sandbox = sandbox().await;
        let answer = sandbox
            .trade_create(UID_APP, &no_params(), &order("T_1", "1.00"))
            .await;
        assert_eq!(refused(answer).1, "ACQ.INVALID_PARAMETER");
        let with_buyer = |key: &str, value: &str| {
            let mut biz = order("T_1", "1.00");
            biz[key] = json!(value);
            biz
        };
        let refusals = [
            (UID_APP, with_buyer("buyer_open_id", "074abc")),
            (UID_APP, with_buyer("buyer_id", "2088123")),
            (UID_APP, with_buyer("buyer_id", "1088000000000001")),
            (OPENID_APP, with_buyer("buyer_id", "2088000000000001")),
        ];
        for (app, biz) in refusals {
            let answer = sandbox.trade_create(app, &no_params(), &biz).await;
            assert_eq!(
                refused(answer),
                ("40004", "ACQ.INVALID_PARAMETER".into()),
                "{app} {biz}"
            );
        }
        ok(sandbox
            .trade_create(
                UID_APP,
                &no_params(),
                &with_buyer("buyer_id", "2088000000000001"),
            )
            .await);
        ok(sandbox
            .trade_create(
                OPENID_APP,
                &no_params(),
                &with_buyer("buyer_open_id", "074abc"),
            )
            .await);
        ok(sandbox
            .trade_create(
                UID_APP,
                &no_params(),
                &with_buyer("buyer_logon_id", "13812345678"),
            )
            .await);
    }

    #[tokio::test]
    async fn each_opening_answers_only_the_fields_alipay_returns() {
        let sandbox = sandbox().await;
        let precreated = ok(sandbox
            .trade_precreate(UID_APP, &no_params(), &order("T_1", "1"))
            .await);
        assert_eq!(keys(&precreated), ["out_trade_no", "qr_code"]);
        let mut create = order("T_2", "1");
        create["buyer_id"] = json!("2088000000000001");
        let created = ok(sandbox.trade_create(UID_APP, &no_params(), &create).await);
        assert_eq!(keys(&created), ["out_trade_no", "trade_no"]);
        let paid = paid_trade(&sandbox, UID_APP, "T_3", "12.3").await;
        assert_eq!(
            keys(&paid),
            [
                "buyer_logon_id",
                "buyer_pay_amount",
                "buyer_user_id",
                "fund_bill_list",
                "gmt_payment",
                "out_trade_no",
                "receipt_amount",
                "total_amount",
                "trade_no"
            ]
        );
        assert_eq!(paid["total_amount"], "12.30");
        assert_eq!(paid["buyer_user_id"], holder(CODE));
        assert!(paid["buyer_logon_id"].as_str().unwrap().contains("****"));
        assert_eq!(paid["fund_bill_list"][0]["amount"], "12.30");
        let paid = paid_trade(&sandbox, OPENID_APP, "T_3", "12.30").await;
        assert!(paid.get("buyer_user_id").is_none(), "{paid}");
        assert_eq!(
            paid["buyer_open_id"],
            open_id_for(OPENID_APP, &holder(CODE))
        );
    }

    #[tokio::test]
    async fn a_code_ending_in_3_leaves_the_payment_waiting_for_the_buyer() {
        let sandbox = sandbox().await;
        let biz = bar_code_payment("T_1", "26.50", WAITING_CODE);
        let waiting = ok(sandbox.trade_pay(UID_APP, &no_params(), &biz).await);
        assert_eq!(waiting["code"], "10003");
        assert_eq!(waiting["msg"], " order success pay inprocess");
        assert!(waiting.get("trade_status").is_none() && waiting.get("gmt_payment").is_none());
        assert_eq!(waiting["total_amount"], "26.50");
        assert_eq!(waiting["receipt_amount"], "0.00");
        assert_eq!(waiting["buyer_pay_amount"], "0.00");
        assert_eq!(waiting["buyer_user_id"], holder(WAITING_CODE));
        let query = json!({"out_trade_no": "T_1"});
        let state = ok(sandbox.trade_query(UID_APP, &query).await);
        assert_eq!(state["trade_status"], "WAIT_BUYER_PAY");
        // Only the code's holder confirms it.
        assert!(sandbox.pay("alice", UID_APP, "T_1").await.is_err());
        let paid = sandbox.pay(WAITING_CODE, UID_APP, "T_1").await.unwrap();
        assert_eq!(paid["trade_status"], "TRADE_SUCCESS");
        let state = ok(sandbox.trade_query(UID_APP, &query).await);
        assert_eq!(state["buyer_pay_amount"], "26.50");
        assert_eq!(super::super::auth_code::WAITING_CODE_LAST_DIGIT, '3');
    }

    #[tokio::test]
    async fn a_repeated_out_trade_no_answers_the_same_trade_unless_it_differs_or_is_done() {
        let sandbox = sandbox().await;
        let mut create = order("T_1", "5.00");
        create["buyer_id"] = json!("2088000000000001");
        let first = ok(sandbox.trade_create(UID_APP, &no_params(), &create).await);
        let again = ok(sandbox.trade_create(UID_APP, &no_params(), &create).await);
        assert_eq!(first, again);
        create["total_amount"] = json!("5.01");
        let answer = sandbox.trade_create(UID_APP, &no_params(), &create).await;
        assert_eq!(refused(answer).1, "ACQ.CONTEXT_INCONSISTENT");
        // Another consumer's code cannot pay a trade made for a given buyer.
        let answer = sandbox
            .trade_pay(UID_APP, &no_params(), &bar_code_payment("T_1", "5", CODE))
            .await;
        assert_eq!(refused(answer).1, "ACQ.TRADE_BUYER_NOT_MATCH");
        paid_trade(&sandbox, UID_APP, "T_2", "5").await;
        let answer = sandbox
            .trade_precreate(UID_APP, &no_params(), &order("T_2", "5"))
            .await;
        assert_eq!(refused(answer).1, "ACQ.TRADE_HAS_SUCCESS");
    }
}
