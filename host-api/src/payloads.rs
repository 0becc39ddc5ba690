use serde::{Deserialize, Serialize};

/// `payment.succeeded` (a trade was paid) and `payment.closed` (it expired or was closed
/// unpaid).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Payment {
    /// The engine's id of the payment.
    pub payment_id: String,
    /// The merchant.
    pub merchant_id: String,
    /// The store it was taken at.
    pub store_id: Option<String>,
    /// The till or device, when one was named.
    pub device_id: Option<String>,
    /// The amount in fen.
    pub amount_fen: i64,
    /// The buyer's Alipay user id (UID-mode apps).
    pub buyer_id: Option<String>,
    /// The buyer's OpenID (OpenID-mode apps).
    pub buyer_open_id: Option<String>,
    /// `sale`, `recharge` or a plugin's own tag.
    pub purpose: String,
    /// The plugin that created the trade, if one did.
    pub plugin_id: Option<String>,
    /// The engine's `out_trade_no`.
    pub out_trade_no: String,
    /// Alipay's `trade_no`.
    pub trade_no: Option<String>,
    /// When it was paid (RFC 3339), for `payment.succeeded`.
    pub paid_at: Option<String>,
}

/// `refund.succeeded`: the payment, and the refund that succeeded.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Refund {
    /// The payment refunded, as it stood.
    #[serde(flatten)]
    pub payment: Payment,
    /// The engine's id of the refund.
    pub refund_id: String,
    /// Its `out_request_no`.
    pub out_request_no: String,
    /// The amount refunded, in fen.
    pub refund_fen: i64,
}
