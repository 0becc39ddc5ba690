//! Trades (`alipay.trade.*`), one job per file: `open` checks and opens trades (precreate,
//! create, pay with the buyer's code), `auth_code` tells a payment code its scene accepts from
//! one it refuses, `lifecycle` answers query, close and cancel, `refunds` refunds and answers
//! refund queries (and notifies refunds), `consumer` plays the buyer (`/consumers/{user}/pay`)
//! and serves the `/trades` inspection route, and `on_demand` sends a trade's notification again,
//! late or altered, when a test asks. This file holds what they share: the stored trade record,
//! finding it by `trade_no` or `out_trade_no`, and the buyer fields an answer may carry.
//!
//! Invariant: a trade is stored once, under `{app_id}:{out_trade_no}`, and indexed under
//! `{app_id}:{trade_no}`; an answer names the buyer only the way the app's identity mode allows
//! (`buyer_user_id` for a UID app, `buyer_open_id` for an OpenID app), never both.
//!
//! Payment codes: the buyer behind a code given to `alipay.trade.pay` is the simulated consumer
//! *named by the code itself* ([`crate::sandbox_user_id`] of the code). A code whose last
//! character is `3` ([`auth_code::WAITING_CODE_LAST_DIGIT`]) makes the sandbox answer `10003`
//! (the buyer still has to confirm): the trade stays `WAIT_BUYER_PAY` until that consumer pays
//! it with `POST /consumers/{auth_code}/pay`, which notifies the merchant like any consumer
//! payment.

mod auth_code;
mod consumer;
mod lifecycle;
mod on_demand;
mod open;
mod refunds;
#[cfg(test)]
mod testing;

pub use auth_code::WAITING_CODE_LAST_DIGIT;
pub(crate) use consumer::{pay, trade_state};
pub(crate) use on_demand::notify_on_demand;

use serde_json::{Map, Value, json};

use crate::Sandbox;
use crate::consumers::{consumer_profile, identifiers, open_id_for};
use crate::gateway::{GatewayFailure, busy, fail};
use crate::schema::Fields;

/// Where trades are stored, by `{app_id}:{out_trade_no}`.
const TRADES: &str = "trade";
/// The `trade_no` index: `{app_id}:{trade_no}` → the trade's `out_trade_no`.
const TRADE_NOS: &str = "trade_no";

fn trade_key(app_id: &str, out_trade_no: &str) -> String {
    format!("{app_id}:{out_trade_no}")
}

/// Fen as Alipay writes amounts: yuan with two decimals.
fn yuan(fen: i64) -> String {
    format!("{}.{:02}", fen / 100, fen % 100)
}

/// A fen amount kept in a stored record (absent: 0).
fn fen_in(record: &Value, key: &str) -> i64 {
    record[key].as_i64().unwrap_or(0)
}

fn not_exist() -> GatewayFailure {
    // Alipay's query/close/cancel/refund tables: an unknown trade is ACQ.TRADE_NOT_EXIST.
    fail("40004", "ACQ.TRADE_NOT_EXIST", "交易不存在")
}

fn status_error() -> GatewayFailure {
    fail("40004", "ACQ.TRADE_STATUS_ERROR", "交易状态不合法")
}

/// A logon id as Alipay shows it to merchants: the middle hidden (`138****5678`,
/// `abc***@example.com`), as in the masked `buyer_logon_id` of real trade.pay answers.
fn masked(logon_id: &str) -> String {
    if let Some((local, domain)) = logon_id.split_once('@') {
        let shown: String = local.chars().take(3).collect();
        return format!("{shown}***@{domain}");
    }
    let chars: Vec<char> = logon_id.chars().collect();
    if chars.len() >= 7 {
        let head: String = chars[..3].iter().collect();
        let tail: String = chars[chars.len() - 4..].iter().collect();
        format!("{head}****{tail}")
    } else {
        let head: String = chars.iter().take(1).collect();
        format!("{head}***")
    }
}

/// The masked logon id of a simulated consumer (their made-up mobile number).
fn masked_logon_id_of(user_id: &str) -> String {
    masked(
        consumer_profile(user_id)["mobile"]
            .as_str()
            .unwrap_or_default(),
    )
}

impl Sandbox {
    /// Stores a trade and indexes its `trade_no`.
    async fn save_trade(&self, trade: &Value) -> Result<(), sea_orm::DbErr> {
        let app_id = trade["app_id"].as_str().unwrap_or_default();
        let out_trade_no = trade["out_trade_no"].as_str().unwrap_or_default();
        let trade_no = trade["trade_no"].as_str().unwrap_or_default();
        self.store()
            .put(TRADES, &trade_key(app_id, out_trade_no), trade)
            .await?;
        self.store()
            .put(
                TRADE_NOS,
                &trade_key(app_id, trade_no),
                &json!({ "out_trade_no": out_trade_no }),
            )
            .await
    }

    async fn trade_by_out_trade_no(
        &self,
        app_id: &str,
        out_trade_no: &str,
    ) -> Result<Option<Value>, GatewayFailure> {
        self.store()
            .get(TRADES, &trade_key(app_id, out_trade_no))
            .await
            .map_err(busy)
    }

    /// The trade a query, close, cancel or refund names: by `trade_no` or `out_trade_no`, one of
    /// them required, `trade_no` first when both are sent (SDK models, e.g.
    /// `AlipayTradeQueryModel`; sigoden/alipay types: both optional, "at least one").
    async fn find_trade(&self, app_id: &str, f: &Fields<'_>) -> Result<Value, GatewayFailure> {
        let trade_no = f.optional_text("trade_no", 64)?;
        let out_trade_no = f.optional_text("out_trade_no", 64)?;
        let out_trade_no = match (trade_no, out_trade_no) {
            (Some(trade_no), _) => {
                let index = self
                    .store()
                    .get(TRADE_NOS, &trade_key(app_id, trade_no))
                    .await
                    .map_err(busy)?
                    .ok_or_else(not_exist)?;
                index["out_trade_no"]
                    .as_str()
                    .map(str::to_owned)
                    .ok_or_else(not_exist)?
            }
            (None, Some(out_trade_no)) => out_trade_no.to_owned(),
            (None, None) => {
                return Err(f.invalid("out_trade_no", "out_trade_no 与 trade_no 须至少传一个"));
            }
        };
        self.trade_by_out_trade_no(app_id, &out_trade_no)
            .await?
            .ok_or_else(not_exist)
    }

    /// The buyer fields a trade answer carries, once the buyer is known: the masked
    /// `buyer_logon_id`, and `buyer_user_id` (UID app) or `buyer_open_id` (OpenID app) — the
    /// identifier kinds of the pay/query/refund response models.
    async fn buyer_fields(&self, trade: &Value) -> Map<String, Value> {
        let mut fields = Map::new();
        if let Some(logon) = trade["buyer_logon_id"].as_str() {
            fields.insert("buyer_logon_id".into(), json!(logon));
        }
        let app_id = trade["app_id"].as_str().unwrap_or_default();
        let identity = self.identity_of(app_id).await;
        if let Some(user_id) = trade["buyer_user_id"].as_str() {
            if let Value::Object(ids) = identifiers(identity, app_id, user_id) {
                for (key, value) in ids {
                    fields.insert(format!("buyer_{key}"), value);
                }
            }
        } else if let Some(open_id) = trade["buyer_open_id"].as_str() {
            // Bound at create time by an OpenID app; the consumer is not known yet.
            fields.insert("buyer_open_id".into(), json!(open_id));
        }
        fields
    }
}

/// Whether a trade is bound to a buyer other than `user_id`: the buyer `alipay.trade.create`
/// named, or the holder of the code a waiting payment was made with.
fn bound_to_other(trade: &Value, user_id: &str) -> bool {
    let app_id = trade["app_id"].as_str().unwrap_or_default();
    trade["buyer_user_id"]
        .as_str()
        .is_some_and(|bound| bound != user_id)
        || trade["buyer_open_id"]
            .as_str()
            .is_some_and(|bound| bound != open_id_for(app_id, user_id))
}

/// An object from fixed fields plus extra ones.
fn with(mut base: Value, extra: Map<String, Value>) -> Value {
    if let Value::Object(map) = &mut base {
        map.extend(extra);
    }
    base
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logon_ids_are_shown_with_their_middle_hidden() {
        assert_eq!(masked("13812345678"), "138****5678");
        assert_eq!(masked("buyer@example.com"), "buy***@example.com");
        assert_eq!(masked("abc"), "a***");
        assert!(masked_logon_id_of("2088000000001234").ends_with("1234"));
    }

    #[test]
    fn fen_are_written_as_yuan_with_two_decimals() {
        assert_eq!(yuan(1), "0.01");
        assert_eq!(yuan(1230), "12.30");
        assert_eq!(yuan(10_000_000_000), "100000000.00");
    }
}
