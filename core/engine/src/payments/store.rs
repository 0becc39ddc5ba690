//! The ledger's rows: payments, their refunds and the notifications that could not be applied,
//! read and written through the raw-SQL door.
//!
//! Invariant: a payment's status changes only by [`advance`], one conditional update whose
//! `WHERE` lists the statuses it may come from, so concurrent appliers of the same answer move a
//! payment once, and a refund's amount is reserved by one conditional update that never lets the
//! refunded total pass the paid amount.

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DbErr, FromQueryResult};

use super::ledger::Status;
use crate::db::sql::{self, Millis};

pub(super) const COLUMNS: &str = "id, partner_id, agent_id, merchant_id, store_id, device_id, operator_id, app_id, \
     out_trade_no, trade_no, scene, amount_fen, refunded_fen, subject, purpose, plugin_id, qr_code, buyer_id, \
     buyer_open_id, buyer_logon_id, status, expires_at, waiting_at, paid_at, finished_at, closed_at, checked_at, \
     created_at, updated_at";

/// One payment as stored; instants are Unix milliseconds.
#[derive(Debug, Clone, FromQueryResult, serde::Serialize)]
pub struct Payment {
    pub id: String,
    pub partner_id: String,
    pub agent_id: String,
    pub merchant_id: String,
    pub store_id: Option<String>,
    pub device_id: Option<String>,
    pub operator_id: Option<String>,
    pub app_id: String,
    pub out_trade_no: String,
    pub trade_no: Option<String>,
    /// `precreate` (a QR code the buyer scans), `bar_code`, `security_code` (face) or `jsapi`.
    pub scene: String,
    pub amount_fen: i64,
    pub refunded_fen: i64,
    pub subject: String,
    pub purpose: String,
    pub plugin_id: Option<String>,
    pub qr_code: Option<String>,
    pub buyer_id: Option<String>,
    pub buyer_open_id: Option<String>,
    pub buyer_logon_id: Option<String>,
    pub status: String,
    pub expires_at: Option<i64>,
    pub waiting_at: Option<i64>,
    pub paid_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub closed_at: Option<i64>,
    pub checked_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl Payment {
    pub fn status(&self) -> Status {
        Status::parse(&self.status).unwrap_or(Status::Created)
    }

    /// This payment as [`advance`] leaves it when it moves to `to` with `facts` at `now`: what
    /// a batch announces before [`advance_many`] writes it.
    pub(super) fn advanced(&self, to: Status, facts: &Facts, now: DateTime<Utc>) -> Payment {
        let now_ms = now.timestamp_millis();
        let mut next = self.clone();
        next.status = to.as_str().to_owned();
        match to {
            Status::Waiting => next.waiting_at = Some(now_ms),
            Status::Finished => next.finished_at = Some(now_ms),
            Status::Closed => next.closed_at = Some(now_ms),
            Status::Created | Status::Succeeded => {}
        }
        let keep = |old: &mut Option<String>, new: &Option<String>| {
            if old.is_none() {
                old.clone_from(new);
            }
        };
        keep(&mut next.trade_no, &facts.trade_no);
        keep(&mut next.buyer_id, &facts.buyer_id);
        keep(&mut next.buyer_open_id, &facts.buyer_open_id);
        keep(&mut next.buyer_logon_id, &facts.buyer_logon_id);
        if next.paid_at.is_none() && matches!(to, Status::Succeeded | Status::Finished) {
            next.paid_at = Some(facts.paid_at.unwrap_or(now).timestamp_millis());
        }
        next.updated_at = now_ms;
        next
    }
}

/// What a new payment row holds.
pub(super) struct NewPayment<'a> {
    pub id: &'a str,
    pub place: [Option<&'a str>; 4],
    pub device_id: Option<&'a str>,
    pub operator_id: Option<&'a str>,
    pub app_id: &'a str,
    pub out_trade_no: &'a str,
    pub scene: &'a str,
    pub amount_fen: i64,
    pub subject: &'a str,
    pub purpose: &'a str,
    pub plugin_id: Option<&'a str>,
    pub buyer_id: Option<&'a str>,
    pub buyer_open_id: Option<&'a str>,
    pub expires_at: DateTime<Utc>,
    pub now: DateTime<Utc>,
}

pub(super) async fn insert(db: &impl ConnectionTrait, p: &NewPayment<'_>) -> Result<(), DbErr> {
    let [partner, agent, merchant, store] = p.place;
    sql::query(
        "INSERT INTO payments (id, partner_id, agent_id, merchant_id, store_id, device_id, operator_id, app_id, \
         out_trade_no, scene, amount_fen, refunded_fen, subject, purpose, plugin_id, buyer_id, buyer_open_id, \
         status, expires_at, created_at, updated_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?, 'created', ?, ?, ?)",
        [
            p.id.into(),
            partner.map(str::to_owned).into(),
            agent.map(str::to_owned).into(),
            merchant.map(str::to_owned).into(),
            store.map(str::to_owned).into(),
            p.device_id.map(str::to_owned).into(),
            p.operator_id.map(str::to_owned).into(),
            p.app_id.into(),
            p.out_trade_no.into(),
            p.scene.into(),
            p.amount_fen.into(),
            p.subject.into(),
            p.purpose.into(),
            p.plugin_id.map(str::to_owned).into(),
            p.buyer_id.map(str::to_owned).into(),
            p.buyer_open_id.map(str::to_owned).into(),
            Millis(p.expires_at).into(),
            Millis(p.now).into(),
            Millis(p.now).into(),
        ],
    )
    .execute(db)
    .await?;
    Ok(())
}

pub(super) async fn by_id(db: &impl ConnectionTrait, id: &str) -> Result<Option<Payment>, DbErr> {
    sql::query(
        &format!("SELECT {COLUMNS} FROM payments WHERE id = ?"),
        [id.into()],
    )
    .one(db)
    .await
}

/// [`by_id`], locking the row until the caller's transaction ends (PostgreSQL; SQLite's write
/// transaction already excludes every other writer): a transition decides on the status it read.
pub(super) async fn locked(db: &impl ConnectionTrait, id: &str) -> Result<Option<Payment>, DbErr> {
    sql::query(
        &format!(
            "SELECT {COLUMNS} FROM payments WHERE id = ?{}",
            sql::for_update(db, sql::RowLock::Wait)
        ),
        [id.into()],
    )
    .one(db)
    .await
}

/// The payment a notification names: Alipay's key for a trade is the app and `out_trade_no`.
/// Locked as [`locked`] does: a transition decides on the status read here.
pub(super) async fn by_trade(
    db: &impl ConnectionTrait,
    app_id: &str,
    out_trade_no: &str,
) -> Result<Option<Payment>, DbErr> {
    sql::query(
        &format!(
            "SELECT {COLUMNS} FROM payments WHERE app_id = ? AND out_trade_no = ?{}",
            sql::for_update(db, sql::RowLock::Wait)
        ),
        [app_id.into(), out_trade_no.into()],
    )
    .one(db)
    .await
}

/// The payments of app `app_id` named `out_trade_nos`, locked as [`by_trade`] locks one.
pub(super) async fn by_trades(
    db: &impl ConnectionTrait,
    app_id: &str,
    out_trade_nos: &[&str],
) -> Result<Vec<Payment>, DbErr> {
    if out_trade_nos.is_empty() {
        return Ok(Vec::new());
    }
    let mut values: Vec<sea_orm::Value> = vec![app_id.into()];
    values.extend(out_trade_nos.iter().map(|o| (*o).into()));
    // Ordered, so two engines locking overlapping batches take the rows in the same order.
    sql::query(
        &format!(
            "SELECT {COLUMNS} FROM payments WHERE app_id = ? AND out_trade_no IN ({}) \
             ORDER BY out_trade_no{}",
            sql::marks(out_trade_nos.len()),
            sql::for_update(db, sql::RowLock::Wait)
        ),
        values,
    )
    .all(db)
    .await
}

/// What Alipay said about a trade, to be kept with the payment when it moves it.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    pub trade_no: Option<String>,
    pub buyer_id: Option<String>,
    pub buyer_open_id: Option<String>,
    pub buyer_logon_id: Option<String>,
    pub paid_at: Option<DateTime<Utc>>,
    pub qr_code: Option<String>,
}

/// Moves payment `id` to `to` when it is in a status that may become `to`; the payment as it
/// now is when it moved. Alipay's facts fill what the row does not know yet (a trade number,
/// the buyer).
pub(super) async fn advance(
    db: &impl ConnectionTrait,
    id: &str,
    to: Status,
    facts: &Facts,
    now: DateTime<Utc>,
) -> Result<Option<Payment>, DbErr> {
    let sources = Status::sources_of(to);
    if sources.is_empty() {
        return Ok(None);
    }
    // The instant of the step; a payment's paid time is set below, once, whatever the step.
    let stamp = match to {
        Status::Waiting => Some("waiting_at"),
        Status::Finished => Some("finished_at"),
        Status::Closed => Some("closed_at"),
        Status::Created | Status::Succeeded => None,
    };
    // A trade found finished before its success was seen was paid too: it gets a paid time.
    let paid = if matches!(to, Status::Succeeded | Status::Finished) {
        Some(Millis(facts.paid_at.unwrap_or(now)))
    } else {
        None
    };
    let mut values: Vec<sea_orm::Value> = vec![to.as_str().into()];
    if stamp.is_some() {
        values.push(Millis(now).into());
    }
    values.extend([
        facts.trade_no.clone().into(),
        facts.buyer_id.clone().into(),
        facts.buyer_open_id.clone().into(),
        facts.buyer_logon_id.clone().into(),
        paid.into(),
        Millis(now).into(),
        id.into(),
    ]);
    values.extend(sources.iter().map(|s| s.as_str().into()));
    let stamp = stamp
        .map(|column| format!("{column} = ?, "))
        .unwrap_or_default();
    // RETURNING (PostgreSQL, SQLite 3.35+) hands back the row the event describes without a
    // second read.
    sql::query(
        &format!(
            "UPDATE payments SET status = ?, {stamp}\
             trade_no = COALESCE(trade_no, ?), buyer_id = COALESCE(buyer_id, ?), \
             buyer_open_id = COALESCE(buyer_open_id, ?), buyer_logon_id = COALESCE(buyer_logon_id, ?), \
             paid_at = COALESCE(paid_at, ?), updated_at = ? \
             WHERE id = ? AND status IN ({}) RETURNING {COLUMNS}",
            sql::marks(sources.len())
        ),
        values,
    )
    .one(db)
    .await
}

/// One fact of a step, as bound: (facts, now, whether the step pays).
type FactOf = fn(&Facts, DateTime<Utc>, bool) -> sea_orm::Value;

/// [`advance`] for many payments moving to the same `to`, each with its facts, in one
/// statement; how many moved.
pub(super) async fn advance_many(
    db: &impl ConnectionTrait,
    to: Status,
    steps: &[(&str, &Facts)],
    now: DateTime<Utc>,
) -> Result<u64, DbErr> {
    let sources = Status::sources_of(to);
    if sources.is_empty() || steps.is_empty() {
        return Ok(0);
    }
    let stamp = match to {
        Status::Waiting => "waiting_at = ?, ",
        Status::Finished => "finished_at = ?, ",
        Status::Closed => "closed_at = ?, ",
        Status::Created | Status::Succeeded => "",
    };
    let mut values: Vec<sea_orm::Value> = vec![to.as_str().into()];
    if !stamp.is_empty() {
        values.push(Millis(now).into());
    }
    values.push(Millis(now).into());
    // One CASE per column, naming each payment's own fact; a payment's paid time is set once,
    // whatever the step (as `advance` does).
    let paid = matches!(to, Status::Succeeded | Status::Finished);
    let mut sets = Vec::new();
    let columns: [(&str, FactOf); 5] = [
        ("trade_no", |f, _, _| f.trade_no.clone().into()),
        ("buyer_id", |f, _, _| f.buyer_id.clone().into()),
        ("buyer_open_id", |f, _, _| f.buyer_open_id.clone().into()),
        ("buyer_logon_id", |f, _, _| f.buyer_logon_id.clone().into()),
        ("paid_at", |f, now, paid| {
            paid.then(|| f.paid_at.unwrap_or(now).timestamp_millis())
                .into()
        }),
    ];
    for (column, value) in columns {
        let cast = if column == "paid_at" {
            "BIGINT"
        } else {
            "TEXT"
        };
        let whens = vec![format!("WHEN ? THEN CAST(? AS {cast})"); steps.len()].join(" ");
        sets.push(format!(
            "{column} = COALESCE({column}, CASE id {whens} END)"
        ));
        for (id, facts) in steps {
            values.push((*id).into());
            values.push(value(facts, now, paid));
        }
    }
    values.extend(steps.iter().map(|(id, _)| (*id).into()));
    values.extend(sources.iter().map(|s| s.as_str().into()));
    // `COALESCE(status, '')`: the guard must not steer the planner to the status index (every
    // open payment) when the ids name the rows.
    let statement = format!(
        "UPDATE payments SET status = ?, {stamp}updated_at = ?, {} WHERE id IN ({}) \
         AND COALESCE(status, '') IN ({})",
        sets.join(", "),
        sql::marks(steps.len()),
        sql::marks(sources.len())
    );
    sql::query(&statement, values).execute(db).await
}

/// Notes that Alipay was asked about the payment now (reconciliation asks the longest-unasked
/// first).
pub(super) async fn checked(
    db: &impl ConnectionTrait,
    id: &str,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    sql::query(
        "UPDATE payments SET checked_at = ? WHERE id = ?",
        [Millis(now).into(), id.into()],
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Keeps what Alipay answered at creation (the QR code, the trade number) on a new payment.
pub(super) async fn created(
    db: &impl ConnectionTrait,
    id: &str,
    facts: &Facts,
    now: DateTime<Utc>,
) -> Result<Option<Payment>, DbErr> {
    sql::query(
        &format!(
            "UPDATE payments SET qr_code = COALESCE(?, qr_code), trade_no = COALESCE(trade_no, ?), \
             updated_at = ? WHERE id = ? RETURNING {COLUMNS}"
        ),
        [
            facts.qr_code.clone().into(),
            facts.trade_no.clone().into(),
            Millis(now).into(),
            id.into(),
        ],
    )
    .one(db)
    .await
}

/// One refund as stored.
#[derive(Debug, Clone, FromQueryResult, serde::Serialize)]
pub struct Refund {
    pub id: String,
    pub payment_id: String,
    pub out_request_no: String,
    pub amount_fen: i64,
    pub reason: Option<String>,
    /// `pending` (asked of Alipay), `succeeded` or `failed` (Alipay refused; the amount is free
    /// again).
    pub status: String,
    pub operator_id: Option<String>,
    pub refunded_at: Option<i64>,
    pub created_at: i64,
}

const REFUND_COLUMNS: &str = "id, payment_id, out_request_no, amount_fen, reason, status, operator_id, refunded_at, created_at";

pub(super) async fn refund_by_request(
    db: &impl ConnectionTrait,
    payment_id: &str,
    out_request_no: &str,
) -> Result<Option<Refund>, DbErr> {
    sql::query(
        &format!(
            "SELECT {REFUND_COLUMNS} FROM payment_refunds WHERE payment_id = ? AND out_request_no = ?"
        ),
        [payment_id.into(), out_request_no.into()],
    )
    .one(db)
    .await
}

pub(super) async fn refund_by_id(
    db: &impl ConnectionTrait,
    id: &str,
) -> Result<Option<Refund>, DbErr> {
    sql::query(
        &format!("SELECT {REFUND_COLUMNS} FROM payment_refunds WHERE id = ?"),
        [id.into()],
    )
    .one(db)
    .await
}

pub(super) async fn refunds_of(
    db: &impl ConnectionTrait,
    payment_id: &str,
) -> Result<Vec<Refund>, DbErr> {
    sql::query(
        &format!(
            "SELECT {REFUND_COLUMNS} FROM payment_refunds WHERE payment_id = ? ORDER BY created_at, id"
        ),
        [payment_id.into()],
    )
    .all(db)
    .await
}

/// Reserves `amount` of what remains refundable on a paid payment; false when it does not fit
/// (or the payment is not paid). The refunded total never passes the paid amount, however many
/// refunds race.
pub(super) async fn reserve_refund(
    db: &impl ConnectionTrait,
    payment_id: &str,
    amount: i64,
    now: DateTime<Utc>,
) -> Result<bool, DbErr> {
    let changed = sql::query(
        "UPDATE payments SET refunded_fen = refunded_fen + ?, updated_at = ? \
         WHERE id = ? AND status = 'succeeded' AND refunded_fen + ? <= amount_fen",
        [
            amount.into(),
            Millis(now).into(),
            payment_id.into(),
            amount.into(),
        ],
    )
    .execute(db)
    .await?;
    Ok(changed == 1)
}

/// Gives a refused refund's amount back to what remains refundable.
pub(super) async fn release_refund(
    db: &impl ConnectionTrait,
    payment_id: &str,
    amount: i64,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    sql::query(
        "UPDATE payments SET refunded_fen = refunded_fen - ?, updated_at = ? WHERE id = ? AND refunded_fen >= ?",
        [
            amount.into(),
            Millis(now).into(),
            payment_id.into(),
            amount.into(),
        ],
    )
    .execute(db)
    .await?;
    Ok(())
}

pub(super) struct NewRefund<'a> {
    pub id: &'a str,
    pub payment: &'a Payment,
    pub out_request_no: &'a str,
    pub amount_fen: i64,
    pub reason: Option<&'a str>,
    pub operator_id: Option<&'a str>,
    pub now: DateTime<Utc>,
}

pub(super) async fn insert_refund(
    db: &impl ConnectionTrait,
    r: &NewRefund<'_>,
) -> Result<(), DbErr> {
    sql::query(
        "INSERT INTO payment_refunds (id, payment_id, partner_id, agent_id, merchant_id, store_id, operator_id, \
         out_request_no, amount_fen, reason, status, created_at, updated_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?)",
        [
            r.id.into(),
            r.payment.id.clone().into(),
            r.payment.partner_id.clone().into(),
            r.payment.agent_id.clone().into(),
            r.payment.merchant_id.clone().into(),
            r.payment.store_id.clone().into(),
            r.operator_id.map(str::to_owned).into(),
            r.out_request_no.into(),
            r.amount_fen.into(),
            r.reason.map(str::to_owned).into(),
            Millis(r.now).into(),
            Millis(r.now).into(),
        ],
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Settles a pending refund as `succeeded` or `failed`; true when this call settled it.
pub(super) async fn settle_refund(
    db: &impl ConnectionTrait,
    id: &str,
    succeeded: bool,
    now: DateTime<Utc>,
) -> Result<bool, DbErr> {
    let changed = sql::query(
        "UPDATE payment_refunds SET status = ?, refunded_at = ?, updated_at = ? WHERE id = ? AND status = 'pending'",
        [
            if succeeded { "succeeded" } else { "failed" }.into(),
            if succeeded { Some(Millis(now)) } else { None }.into(),
            Millis(now).into(),
            id.into(),
        ],
    )
    .execute(db)
    .await?;
    Ok(changed == 1)
}

/// Records that the engine asked Alipay `method` about `payment` and what it heard.
pub(super) async fn record_check(
    db: &impl ConnectionTrait,
    payment: &Payment,
    method: &str,
    outcome: &str,
    trade_status: Option<&str>,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    sql::query(
        "INSERT INTO payment_checks (id, payment_id, partner_id, agent_id, merchant_id, store_id, \
         method, outcome, trade_status, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            uuid::Uuid::now_v7().to_string().into(),
            payment.id.clone().into(),
            payment.partner_id.clone().into(),
            payment.agent_id.clone().into(),
            payment.merchant_id.clone().into(),
            payment.store_id.clone().into(),
            method.chars().take(64).collect::<String>().into(),
            outcome.chars().take(64).collect::<String>().into(),
            trade_status
                .map(|s| s.chars().take(32).collect::<String>())
                .into(),
            Millis(now).into(),
            Millis(now).into(),
        ],
    )
    .execute(db)
    .await?;
    Ok(())
}

/// One question the engine asked Alipay about a payment.
#[derive(Debug, Clone, FromQueryResult, serde::Serialize)]
pub struct Check {
    pub method: String,
    /// `ok`, Alipay's sub-code of a refusal, or `unreachable`.
    pub outcome: String,
    pub trade_status: Option<String>,
    /// Unix milliseconds.
    pub created_at: i64,
}

/// The newest `limit` questions about `payment_id`, oldest first.
pub(super) async fn checks_of(
    db: &impl ConnectionTrait,
    payment_id: &str,
    limit: u64,
) -> Result<Vec<Check>, DbErr> {
    let mut checks: Vec<Check> = sql::query(
        "SELECT method, outcome, trade_status, created_at FROM payment_checks WHERE payment_id = ? \
         ORDER BY created_at DESC, id DESC LIMIT ?",
        [
            payment_id.into(),
            i64::try_from(limit).unwrap_or(i64::MAX).into(),
        ],
    )
    .all(db)
    .await?;
    checks.reverse();
    Ok(checks)
}

/// A notification the ledger could not apply, kept for the merchant to see.
pub(super) async fn record_anomaly(
    db: &impl ConnectionTrait,
    place: [Option<&str>; 4],
    notification_id: &str,
    payment_id: Option<&str>,
    kind: &str,
    detail: &str,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    let [partner, agent, merchant, store] = place;
    sql::query(
        "INSERT INTO payment_anomalies (id, partner_id, agent_id, merchant_id, store_id, notification_id, payment_id, \
         kind, detail, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            uuid::Uuid::now_v7().to_string().into(),
            partner.map(str::to_owned).into(),
            agent.map(str::to_owned).into(),
            merchant.map(str::to_owned).into(),
            store.map(str::to_owned).into(),
            notification_id.into(),
            payment_id.map(str::to_owned).into(),
            kind.into(),
            detail.chars().take(512).collect::<String>().into(),
            Millis(now).into(),
            Millis(now).into(),
        ],
    )
    .execute(db)
    .await?;
    Ok(())
}

/// One recorded anomaly.
#[derive(Debug, Clone, FromQueryResult, serde::Serialize)]
pub struct Anomaly {
    pub id: String,
    pub notification_id: String,
    pub payment_id: Option<String>,
    pub kind: String,
    pub detail: String,
    pub created_at: i64,
}

pub(super) async fn anomalies_of(
    db: &impl ConnectionTrait,
    merchant_id: &str,
    limit: u64,
) -> Result<Vec<Anomaly>, DbErr> {
    sql::query(
        "SELECT id, notification_id, payment_id, kind, detail, created_at FROM payment_anomalies \
         WHERE merchant_id = ? ORDER BY created_at DESC, id DESC LIMIT ?",
        [
            merchant_id.into(),
            i64::try_from(limit).unwrap_or(100).into(),
        ],
    )
    .all(db)
    .await
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::db::Db;

    async fn database(dir: &std::path::Path) -> Db {
        crate::db::test_sqlite(dir).await
    }

    async fn payment(db: &Db, id: &str, status: &str, trade_no: Option<&str>) -> Payment {
        let now = Utc::now() - chrono::Duration::seconds(5);
        sql::query(
            "INSERT INTO payments (id, partner_id, agent_id, merchant_id, store_id, app_id, \
             out_trade_no, trade_no, scene, amount_fen, refunded_fen, subject, purpose, status, \
             created_at, updated_at) VALUES (?, 'p', 'a', 'm', 's', 'app', ?, ?, 'precreate', 100, \
             0, 'x', 'sale', ?, ?, ?)",
            [
                id.into(),
                format!("T{id}").into(),
                trade_no.map(str::to_owned).into(),
                status.into(),
                Millis(now).into(),
                Millis(now).into(),
            ],
        )
        .execute(&db.conn)
        .await
        .unwrap();
        by_id(&db.conn, id).await.unwrap().unwrap()
    }

    #[tokio::test]
    async fn a_batched_step_leaves_each_row_as_announced_and_as_one_step_would() {
        let dir = tempfile::tempdir().unwrap();
        let db = database(dir.path()).await;
        let now = Utc::now();
        let paid_at = now - chrono::Duration::seconds(2);
        let facts = |n: &str| Facts {
            trade_no: Some(format!("2026{n}")),
            buyer_id: Some(format!("2088{n}")),
            buyer_open_id: None,
            buyer_logon_id: Some("159****0000".into()),
            paid_at: Some(paid_at),
            qr_code: None,
        };
        for to in [
            Status::Succeeded,
            Status::Finished,
            Status::Waiting,
            Status::Closed,
        ] {
            let (one_fact, two_fact) = (facts("1"), facts("2"));
            let batched_a = payment(&db, &format!("{to}-a"), "waiting", None).await;
            let batched_b = payment(&db, &format!("{to}-b"), "created", Some("kept")).await;
            let single = payment(&db, &format!("{to}-s"), "waiting", None).await;
            let expected_a = batched_a.advanced(to, &one_fact, now);
            let expected_b = batched_b.advanced(to, &two_fact, now);
            let moved = advance_many(
                &db.conn,
                to,
                &[
                    (batched_a.id.as_str(), &one_fact),
                    (batched_b.id.as_str(), &two_fact),
                ],
                now,
            )
            .await
            .unwrap();
            let read = |id: String| {
                let conn = db.conn.clone();
                async move { by_id(&conn, &id).await.unwrap().unwrap() }
            };
            let (a, b) = (
                read(batched_a.id.clone()).await,
                read(batched_b.id.clone()).await,
            );
            let expected = [(&a, &expected_a), (&b, &expected_b)];
            if to == Status::Waiting {
                // Only a created payment waits: the waiting one is not moved again.
                assert_eq!(moved, 1, "{to}");
                assert_eq!(
                    serde_json::to_value(&b).unwrap(),
                    serde_json::to_value(&expected_b).unwrap()
                );
                continue;
            }
            assert_eq!(moved, 2, "{to}");
            let stepped = advance(&db.conn, &single.id, to, &one_fact, now)
                .await
                .unwrap()
                .unwrap();
            for (row, announced) in expected {
                assert_eq!(
                    serde_json::to_value(row).unwrap(),
                    serde_json::to_value(announced).unwrap(),
                    "{to}"
                );
            }
            assert_eq!(
                b.trade_no.as_deref(),
                Some("kept"),
                "{to}: known facts stay"
            );
            let mut single_as_a = stepped.clone();
            single_as_a.id.clone_from(&a.id);
            single_as_a.out_trade_no.clone_from(&a.out_trade_no);
            single_as_a.created_at = a.created_at;
            assert_eq!(
                serde_json::to_value(&single_as_a).unwrap(),
                serde_json::to_value(&a).unwrap(),
                "{to}: one step and a batch leave the same row"
            );
        }
        db.close().await;
    }
}
