use super::Result;
use crate::host::payments as raw;

pub use crate::bindings::trellis::plugin0_2_0::payments::{
    Buyer, NewTrade, RefundReceipt, Trade, TradePage,
};

impl NewTrade {
    /// A trade of `amount_fen` for `subject`, at the current call's store, for a sale.
    pub fn new(amount_fen: u64, subject: impl Into<String>) -> Self {
        NewTrade {
            amount_fen,
            subject: subject.into(),
            store_id: None,
            purpose: None,
        }
    }
}

/// A dynamic QR code: the trade's `qr_code` is what the buyer scans.
pub fn precreate(trade: &NewTrade) -> Result<Trade> {
    raw::precreate(trade)
}

/// A trade the buyer pays inside Alipay (JSAPI); its `trade_no` goes to `my.tradePay`.
pub fn create_jsapi(trade: &NewTrade, buyer: &Buyer) -> Result<Trade> {
    raw::create_jsapi(trade, buyer)
}

/// One of the merchant's trades by its id, as Alipay has it now.
pub fn query(id: &str) -> Result<Trade> {
    raw::query(id)
}

/// The merchant's trades created in `[from_ms, to_ms)`, newest first.
pub fn list(from_ms: u64, to_ms: u64, after: Option<&str>, limit: u32) -> Result<TradePage> {
    raw::list(from_ms, to_ms, after, limit)
}

/// Refunds `amount_fen` of a trade this plugin created; `request_no` makes it idempotent.
pub fn refund(
    id: &str,
    amount_fen: u64,
    request_no: &str,
    reason: Option<&str>,
) -> Result<RefundReceipt> {
    raw::refund(id, amount_fen, request_no, reason)
}
