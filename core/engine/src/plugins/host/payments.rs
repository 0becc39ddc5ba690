//! `payments` (host-api 0.2): trades for the invocation's merchant, made, read and refunded by
//! the engine's ledger (`doors::outside`), which tags each with the plugin.
//!
//! Invariant: each operation needs its right in `[capabilities] payments`, declared and
//! granted (`query` needs any); amounts are checked to fit the ledger before they leave; every
//! operation is counted and ends the invocation's right to run again.

use super::{State, denied};
use crate::plugins::bindings::trellis::plugin::types;
use crate::plugins::bindings::v02::trellis::plugin0_2_0::payments;
use crate::plugins::manifest::PaymentsRight;
use crate::plugins::{PaymentAnswer, PaymentOp, PluginTrade, TradeView};

/// Payments operations one invocation may make; one more traps it.
const MAX_PAYMENT_CALLS: u32 = 20;

/// What a plugin's trade may ask for, as the ledger's integers.
fn fen(amount: u64, what: &str) -> Result<i64, types::Error> {
    i64::try_from(amount)
        .map_err(|_| types::Error::InvalidInput(format!("{what}: the amount is too large")))
}

fn trade_of(trade: payments::NewTrade) -> Result<PluginTrade, types::Error> {
    Ok(PluginTrade {
        amount_fen: fen(trade.amount_fen, "amount-fen")?,
        subject: trade.subject,
        store_id: trade.store_id,
        purpose: trade.purpose.unwrap_or_else(|| "sale".into()),
    })
}

fn unsigned(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn wit_trade(t: TradeView) -> payments::Trade {
    payments::Trade {
        id: t.id,
        out_trade_no: t.out_trade_no,
        trade_no: t.trade_no,
        status: t.status,
        scene: t.scene,
        amount_fen: unsigned(t.amount_fen),
        refunded_fen: unsigned(t.refunded_fen),
        subject: t.subject,
        purpose: t.purpose,
        store_id: t.store_id,
        plugin: t.plugin,
        qr_code: t.qr_code,
        buyer_id: t.buyer_id,
        buyer_open_id: t.buyer_open_id,
        created_at_ms: unsigned(t.created_at_ms),
        paid_at_ms: t.paid_at_ms.map(unsigned),
    }
}

impl State {
    /// Runs one payments operation that needs `right` (any right, when `None`).
    async fn pay(
        &mut self,
        function: &'static str,
        right: Option<PaymentsRight>,
        op: Result<PaymentOp, types::Error>,
    ) -> wasmtime::Result<Result<PaymentAnswer, types::Error>> {
        self.payment_calls += 1;
        if self.payment_calls > MAX_PAYMENT_CALLS {
            return Err(self.broke(format!(
                "more than {MAX_PAYMENT_CALLS} payments operations in one invocation"
            )));
        }
        let declared = &self.invocation.manifest.capabilities.payments;
        let granted = &self.invocation.grant.payments;
        let (declared, granted) = match right {
            Some(right) => (declared.contains(&right), granted.contains(&right)),
            None => (!declared.is_empty(), !granted.is_empty()),
        };
        let named = right.map_or_else(
            || "any payments right".to_owned(),
            |r| format!("payments {}", serde_json::to_string(&r).unwrap_or_default()),
        );
        if !declared {
            return Ok(Err(denied(format!(
                "{named} is not declared in the manifest"
            ))));
        }
        if !granted {
            return Ok(Err(denied(format!(
                "{named} is not granted to this tenant"
            ))));
        }
        let op = match op {
            Ok(op) => op,
            Err(e) => return Ok(Err(e)),
        };
        let Some(outside) = self.services.outside() else {
            return Ok(Err(types::Error::Unsupported(
                "payments are not available here (the plugin harness has no ledger)".into(),
            )));
        };
        self.going_out();
        let invocation = self.invocation.clone();
        let answer = self
            .timed("payments", function, outside.payments(&invocation, op))
            .await?;
        Ok(answer.map_err(types::Error::from))
    }
}

fn unexpected() -> types::Error {
    types::Error::Internal("the ledger answered something unexpected".into())
}

impl payments::Host for State {
    async fn precreate(
        &mut self,
        trade: payments::NewTrade,
    ) -> wasmtime::Result<Result<payments::Trade, types::Error>> {
        let op = trade_of(trade).map(PaymentOp::Precreate);
        Ok(
            match self
                .pay("precreate", Some(PaymentsRight::Precreate), op)
                .await?
            {
                Ok(PaymentAnswer::Trade(t)) => Ok(wit_trade(*t)),
                Ok(_) => Err(unexpected()),
                Err(e) => Err(e),
            },
        )
    }

    async fn create_jsapi(
        &mut self,
        trade: payments::NewTrade,
        buyer: payments::Buyer,
    ) -> wasmtime::Result<Result<payments::Trade, types::Error>> {
        let (user_id, open_id) = match buyer {
            payments::Buyer::UserId(id) => (Some(id), None),
            payments::Buyer::OpenId(id) => (None, Some(id)),
        };
        let op = trade_of(trade).map(|trade| PaymentOp::Jsapi {
            trade,
            user_id,
            open_id,
        });
        Ok(
            match self
                .pay("create-jsapi", Some(PaymentsRight::Jsapi), op)
                .await?
            {
                Ok(PaymentAnswer::Trade(t)) => Ok(wit_trade(*t)),
                Ok(_) => Err(unexpected()),
                Err(e) => Err(e),
            },
        )
    }

    async fn query(
        &mut self,
        id: String,
    ) -> wasmtime::Result<Result<payments::Trade, types::Error>> {
        Ok(
            match self.pay("query", None, Ok(PaymentOp::Query(id))).await? {
                Ok(PaymentAnswer::Trade(t)) => Ok(wit_trade(*t)),
                Ok(_) => Err(unexpected()),
                Err(e) => Err(e),
            },
        )
    }

    async fn list(
        &mut self,
        from_ms: u64,
        to_ms: u64,
        after: Option<String>,
        limit: u32,
    ) -> wasmtime::Result<Result<payments::TradePage, types::Error>> {
        let op = match (i64::try_from(from_ms), i64::try_from(to_ms)) {
            (Ok(from_ms), Ok(to_ms)) => Ok(PaymentOp::List {
                from_ms,
                to_ms,
                after,
                limit,
            }),
            _ => Err(types::Error::InvalidInput(
                "from-ms and to-ms must be instants in milliseconds".into(),
            )),
        };
        Ok(
            match self.pay("list", Some(PaymentsRight::List), op).await? {
                Ok(PaymentAnswer::Page { trades, next }) => Ok(payments::TradePage {
                    trades: trades.into_iter().map(wit_trade).collect(),
                    next,
                }),
                Ok(_) => Err(unexpected()),
                Err(e) => Err(e),
            },
        )
    }

    async fn refund(
        &mut self,
        id: String,
        amount_fen: u64,
        request_no: String,
        reason: Option<String>,
    ) -> wasmtime::Result<Result<payments::RefundReceipt, types::Error>> {
        let op = fen(amount_fen, "amount-fen").map(|amount_fen| PaymentOp::Refund {
            id,
            amount_fen,
            request_no,
            reason,
        });
        Ok(
            match self.pay("refund", Some(PaymentsRight::Refund), op).await? {
                Ok(PaymentAnswer::Refund(r)) => Ok(payments::RefundReceipt {
                    id: r.id,
                    request_no: r.request_no,
                    amount_fen: unsigned(r.amount_fen),
                    status: r.status,
                }),
                Ok(_) => Err(unexpected()),
                Err(e) => Err(e),
            },
        )
    }
}
