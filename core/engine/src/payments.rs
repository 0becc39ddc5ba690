//! Payments: the trades the engine creates at Alipay for a merchant's store, the ledger that
//! follows them (statuses, refunds), and the payment events plugins receive.
//!
//! Invariant: the ledger changes only through Alipay's verified answers and notifications, each
//! applied by one forward-only transition together with its event in one durable transaction;
//! an amount is fen in an integer, and a refund never takes the refunded total past what was
//! paid.

pub mod buyers;
pub mod codes;
pub mod ingest;
pub mod ledger;
mod notify;
pub mod reconcile;
mod refunds;
pub mod reports;
mod store;
pub mod trades;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use sea_orm::DbErr;
use serde_json::{Value, json};

use crate::alipay::client::{AlipayClient, MerchantApp};
use crate::alipay::inbound::{self, Receiver};
use crate::config::Clock;
use crate::db::{Db, Recent};
use crate::plugins::catalog::Catalog;
use crate::secrets::Vault;
use crate::tenancy::Place;

pub use codes::Scene;
pub use ingest::{GroupCommit, Taken};
pub use ledger::Status;
pub use notify::Applied;
pub use store::{Anomaly, Check, Facts, Payment, Refund};
pub use trades::Buyer;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("no such payment")]
    NotFound,
    #[error("{0}")]
    Conflict(String),
    #[error("this merchant has no Alipay credentials")]
    NoCredentials,
    /// Alipay refused, with its codes.
    #[error(
        "alipay refused: {} {} {}",
        .0.code,
        .0.sub_code.as_deref().unwrap_or_default(),
        .0.sub_msg.as_deref().unwrap_or_default()
    )]
    Refused(crate::alipay::response::GatewayError),
    /// Alipay could not be reached or answered something unverifiable; the outcome is unknown.
    #[error("alipay: {0}")]
    Alipay(crate::alipay::Error),
    #[error("alipay credentials: {0}")]
    Credentials(#[from] crate::alipay::credentials::Error),
    #[error("event outbox: {0}")]
    Events(#[from] crate::events::Error),
    #[error("plugin catalog: {0}")]
    Catalog(String),
    #[error("tenancy: {0}")]
    Tenancy(#[from] crate::tenancy::Error),
    /// The notification writer stopped before answering; nothing was acknowledged.
    #[error("the engine is stopping")]
    Stopping,
    #[error("database error: {0}")]
    Db(#[from] DbErr),
}

impl From<crate::alipay::Error> for Error {
    fn from(error: crate::alipay::Error) -> Self {
        match error {
            crate::alipay::Error::Gateway(g) => Error::Refused(g),
            other => Error::Alipay(other),
        }
    }
}

/// The payment service: the ledger's database, the vault holding merchants' keys, the Alipay
/// client and the outbox's subscribers, with the engine's clock.
#[derive(Clone)]
pub struct Payments {
    db: Db,
    vault: Arc<Vault>,
    alipay: AlipayClient,
    catalog: Catalog,
    clock: Clock,
    /// `http.public_scheme`: the scheme of the partner domain Alipay notifies.
    public_scheme: String,
    /// How long a code payment waits for its buyer, and its polling.
    waiting: codes::Waiting,
    /// The notification writer's queue, once [`Self::group_commit`] started it.
    intake: Option<tokio::sync::mpsc::Sender<ingest::Job>>,
    /// What every notification or new trade of a merchant reads, kept for a moment.
    recent: RecentReads,
}

/// Reads kept for `database.recent_reads_ms` (see `db::recent`): nothing until
/// [`Payments::keeping_reads`] says how long.
#[derive(Clone, Debug)]
struct RecentReads {
    /// A merchant's notification receiver, by merchant.
    receivers: Recent<String, Receiver>,
    /// A merchant's app opened for signing, by merchant.
    apps: Recent<String, Arc<MerchantApp>>,
    /// A partner's first domain, by partner.
    domains: Recent<String, String>,
}

impl RecentReads {
    /// Merchants and partners kept at most, per kind.
    const MAX_ENTRIES: usize = 10_000;

    fn new(ttl: std::time::Duration) -> Self {
        Self {
            receivers: Recent::new(ttl, Self::MAX_ENTRIES),
            apps: Recent::new(ttl, Self::MAX_ENTRIES),
            domains: Recent::new(ttl, Self::MAX_ENTRIES),
        }
    }
}

impl std::fmt::Debug for Payments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Payments").finish_non_exhaustive()
    }
}

/// One notification about a payment, as its detail lists them.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NotificationView {
    pub id: String,
    pub notify_type: String,
    pub trade_status: Option<String>,
    /// Unix milliseconds.
    pub received_at: i64,
}

/// A trade to create: the store it is for, what for, and how much.
#[derive(Debug, Clone)]
pub struct NewTrade {
    pub store: Place,
    pub amount_fen: i64,
    pub subject: String,
    /// `sale`, `recharge` or a plugin's own tag.
    pub purpose: String,
    pub device_id: Option<String>,
    pub operator_id: Option<String>,
    pub plugin_id: Option<String>,
}

/// How long a new trade may wait for its buyer (Alipay's `timeout_express`): after it,
/// reconciliation closes it.
pub const TRADE_TIMEOUT_MINUTES: i64 = 15;
/// The longest subject Alipay takes (`AlipayTradePrecreateModel.subject`).
pub const MAX_SUBJECT_CHARS: usize = 256;

impl Payments {
    pub fn new(
        db: Db,
        vault: Arc<Vault>,
        alipay: AlipayClient,
        catalog: Catalog,
        public_scheme: &str,
        waiting: codes::Waiting,
    ) -> Self {
        let clock = catalog.clock.clone();
        Self {
            db,
            vault,
            alipay,
            catalog,
            clock,
            public_scheme: public_scheme.to_owned(),
            waiting,
            intake: None,
            recent: RecentReads::new(std::time::Duration::ZERO),
        }
    }

    /// These payments, keeping a merchant's credentials and a partner's first domain for up to
    /// `ttl` after reading them (`database.recent_reads_ms`).
    pub fn keeping_reads(mut self, ttl: std::time::Duration) -> Self {
        self.recent = RecentReads::new(ttl);
        self
    }

    /// After a change to `merchant_id`'s Alipay credentials in this process: the next
    /// notification and trade read them again.
    pub fn forget_merchant(&self, merchant_id: &str) {
        let key = merchant_id.to_owned();
        self.recent.receivers.forget(&key);
        self.recent.apps.forget(&key);
    }

    /// After a change to `partner_id`'s domains in this process: the next trade's `notify_url`
    /// is built from them.
    pub fn forget_partner(&self, partner_id: &str) {
        self.recent.domains.forget(&partner_id.to_owned());
    }

    /// What `merchant_id`'s notifications are verified against, if it has credentials.
    pub async fn receiver(&self, merchant_id: &str) -> Result<Option<Receiver>, inbound::Error> {
        self.recent
            .receivers
            .get_or_load(
                &merchant_id.to_owned(),
                inbound::receiver(&self.db, merchant_id),
            )
            .await
    }

    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// A payment by id, whoever's: callers check the place it returns against their grant.
    pub async fn get(&self, id: &str) -> Result<Payment, Error> {
        store::by_id(&self.db.conn, id)
            .await?
            .ok_or(Error::NotFound)
    }

    /// The notifications Alipay sent about `payment`'s trade, oldest first: what the merchant
    /// checks when a payment looks wrong (at most 100; each holds a few fields).
    pub async fn notifications(&self, payment: &Payment) -> Result<Vec<NotificationView>, Error> {
        use crate::db::entity::alipay_notifications as n;
        use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
        let rows = n::Entity::find()
            .filter(n::Column::MerchantId.eq(payment.merchant_id.as_str()))
            .filter(n::Column::AppId.eq(payment.app_id.as_str()))
            .filter(n::Column::OutTradeNo.eq(payment.out_trade_no.as_str()))
            .order_by_asc(n::Column::ReceivedAt)
            .limit(100)
            .all(&self.db.conn)
            .await?;
        Ok(rows
            .into_iter()
            .map(|row| NotificationView {
                id: row.id,
                notify_type: row.notify_type,
                trade_status: row.trade_status,
                received_at: row.received_at.timestamp_millis(),
            })
            .collect())
    }

    /// What the engine asked Alipay about the payment and heard, oldest first (the newest 100).
    pub async fn checks(&self, payment_id: &str) -> Result<Vec<Check>, Error> {
        Ok(store::checks_of(&self.db.conn, payment_id, 100).await?)
    }

    pub async fn refunds(&self, payment_id: &str) -> Result<Vec<Refund>, Error> {
        Ok(store::refunds_of(&self.db.conn, payment_id).await?)
    }

    pub async fn anomalies(&self, merchant_id: &str, limit: u64) -> Result<Vec<Anomaly>, Error> {
        Ok(store::anomalies_of(&self.db.conn, merchant_id, limit).await?)
    }
}

/// Checks a new trade's own fields: the amount, the subject and the purpose.
fn check(trade: &NewTrade) -> Result<(), Error> {
    if !(1..=ledger::MAX_FEN).contains(&trade.amount_fen) {
        return Err(Error::Invalid {
            field: "amount_fen",
            message: format!("must be 1 to {} fen", ledger::MAX_FEN),
        });
    }
    let subject = trade.subject.trim();
    if subject.is_empty() || subject.chars().count() > MAX_SUBJECT_CHARS {
        return Err(Error::Invalid {
            field: "subject",
            message: format!("must be 1 to {MAX_SUBJECT_CHARS} characters"),
        });
    }
    // Alipay's subject refuses `/`, `=` and `&` (alipay-sdk-java-all `AlipayTradePrecreateModel`).
    if subject.contains(['/', '=', '&']) {
        return Err(Error::Invalid {
            field: "subject",
            message: "must not contain /, = or &".into(),
        });
    }
    if trade.purpose.is_empty()
        || trade.purpose.len() > 64
        || !trade
            .purpose
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.')
    {
        return Err(Error::Invalid {
            field: "purpose",
            message: "must be 1 to 64 of a-z, 0-9, _ and . (sale, recharge or a plugin's tag)"
                .into(),
        });
    }
    if let Some(device) = &trade.device_id
        && (device.is_empty() || device.len() > 32 || !device.bytes().all(|b| b.is_ascii_graphic()))
    {
        return Err(Error::Invalid {
            field: "device_id",
            message: "must be 1 to 32 printable characters".into(),
        });
    }
    Ok(())
}

/// What a payment event carries (`payment.succeeded`, `payment.closed`): the payment as plugins
/// need it, amounts in fen.
fn payment_payload(p: &Payment) -> Value {
    json!({
        "payment_id": p.id,
        "merchant_id": p.merchant_id,
        "store_id": p.store_id,
        "device_id": p.device_id,
        "amount_fen": p.amount_fen,
        "buyer_id": p.buyer_id,
        "buyer_open_id": p.buyer_open_id,
        "purpose": p.purpose,
        "plugin_id": p.plugin_id,
        "out_trade_no": p.out_trade_no,
        "trade_no": p.trade_no,
        "paid_at": p.paid_at.map(|ms| crate::db::sql::from_millis(ms).to_rfc3339()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trade() -> NewTrade {
        NewTrade {
            store: Place {
                id: "s".into(),
                kind: crate::tenancy::NodeKind::Store,
                partner_id: Some("p".into()),
                agent_id: Some("a".into()),
                merchant_id: Some("m".into()),
                store_id: Some("s".into()),
            },
            amount_fen: 1230,
            subject: "咖啡".into(),
            purpose: "sale".into(),
            device_id: None,
            operator_id: None,
            plugin_id: None,
        }
    }

    #[test]
    fn a_trade_needs_a_bounded_amount_a_plain_subject_and_a_tag() {
        assert!(check(&trade()).is_ok());
        for amount in [0, -1, ledger::MAX_FEN + 1] {
            let t = NewTrade {
                amount_fen: amount,
                ..trade()
            };
            assert!(
                matches!(
                    check(&t),
                    Err(Error::Invalid {
                        field: "amount_fen",
                        ..
                    })
                ),
                "{amount}"
            );
        }
        for subject in ["", "a=b", &"字".repeat(257)] {
            let t = NewTrade {
                subject: subject.to_owned(),
                ..trade()
            };
            assert!(matches!(
                check(&t),
                Err(Error::Invalid {
                    field: "subject",
                    ..
                })
            ));
        }
        let t = NewTrade {
            purpose: "Sale!".into(),
            ..trade()
        };
        assert!(matches!(
            check(&t),
            Err(Error::Invalid {
                field: "purpose",
                ..
            })
        ));
    }
}
