//! What merchants read of the ledger: payments filtered by store, status, time, buyer and
//! amount, a page at a time; daily totals per store; and the CSV export, read in pages as it is
//! written so a year of a busy merchant never sits in memory.
//!
//! Invariant: every read is bounded (a page, a day range) and keyed by the merchant or store the
//! caller was authorised for; pages follow `(created_at, id)`, so a payment added meanwhile
//! neither repeats nor skips a row.

use sea_orm::FromQueryResult;

use super::ledger::{self, Status};
use super::store::{COLUMNS, Payment};
use super::{Error, Payments};
use crate::db::sql;
use crate::tenancy::NodeKind;

/// The longest page, and the longest day range of the totals.
pub const MAX_PAGE: u64 = 200;
pub const MAX_DAYS: i64 = 366;
/// Rows the export reads at a time.
const EXPORT_PAGE: u64 = 500;
/// Beijing time, where a merchant's day starts.
const BEIJING_MS: i64 = 8 * 3_600_000;
const DAY_MS: i64 = 86_400_000;

/// Which payments: all of a merchant's or a store's, narrowed by what is set.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Within a merchant: one of its stores.
    pub store_id: Option<String>,
    pub status: Option<Status>,
    /// Created at or after, before (Unix milliseconds).
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    /// The buyer's user id or open id.
    pub buyer: Option<String>,
    pub min_fen: Option<i64>,
    pub max_fen: Option<i64>,
}

/// A page's cursor: the `(created_at, id)` of the last row seen; the next page starts before it.
#[derive(Debug, Clone)]
pub struct Cursor {
    pub created_at: i64,
    pub id: String,
}

impl Cursor {
    pub fn parse(text: &str) -> Option<Self> {
        let (at, id) = text.split_once('_')?;
        Some(Self {
            created_at: at.parse().ok()?,
            id: id.to_owned(),
        })
    }

    pub fn of(p: &Payment) -> String {
        format!("{}_{}", p.created_at, p.id)
    }
}

/// One store's day: how many payments were paid, for how much, and how much of it went back.
#[derive(Debug, Clone, FromQueryResult, serde::Serialize)]
pub struct Day {
    /// Days since 1970-01-01 in Beijing time.
    pub day: i64,
    pub store_id: Option<String>,
    pub paid: i64,
    pub amount_fen: i64,
    pub refunded_fen: i64,
}

impl Payments {
    /// The newest payments of merchant or store `id` matching `filter`, before `after`.
    pub async fn search(
        &self,
        at: NodeKind,
        id: &str,
        filter: &Filter,
        after: Option<&Cursor>,
        limit: u64,
    ) -> Result<Vec<Payment>, Error> {
        let (sql_text, values) = select(at, id, filter, after, limit.clamp(1, MAX_PAGE));
        Ok(sql::query(&sql_text, values).all(&self.db.conn).await?)
    }

    /// Paid payments per store and Beijing day, between two instants (at most [`MAX_DAYS`]).
    pub async fn daily(
        &self,
        at: NodeKind,
        id: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<Day>, Error> {
        if to_ms <= from_ms || (to_ms - from_ms) / DAY_MS > MAX_DAYS {
            return Err(Error::Invalid {
                field: "to",
                message: format!("must be after from, at most {MAX_DAYS} days later"),
            });
        }
        let column = scope_column(at);
        Ok(sql::query(
            &format!(
                // PostgreSQL sums BIGINTs as NUMERIC: cast back, as SQLite's are integers. The
                // day is grouped by its alias: PostgreSQL would not see two bound copies of its
                // expression as one.
                "SELECT (paid_at + {BEIJING_MS}) / {DAY_MS} AS day, store_id, COUNT(*) AS paid, \
                 CAST(SUM(amount_fen) AS BIGINT) AS amount_fen, \
                 CAST(SUM(refunded_fen) AS BIGINT) AS refunded_fen \
                 FROM payments WHERE {column} = ? AND paid_at IS NOT NULL AND paid_at >= ? AND paid_at < ? \
                 GROUP BY day, store_id ORDER BY day, store_id"
            ),
            [id.into(), from_ms.into(), to_ms.into()],
        )
        .all(&self.db.conn)
        .await?)
    }

    /// One page of the export, after `after`: the caller writes it and asks for the next.
    pub async fn export_page(
        &self,
        at: NodeKind,
        id: &str,
        filter: &Filter,
        after: Option<&Cursor>,
    ) -> Result<Vec<Payment>, Error> {
        let (sql_text, values) = select(at, id, filter, after, EXPORT_PAGE);
        Ok(sql::query(&sql_text, values).all(&self.db.conn).await?)
    }
}

fn scope_column(at: NodeKind) -> &'static str {
    if at == NodeKind::Store {
        "store_id"
    } else {
        "merchant_id"
    }
}

/// The `SELECT` of a page: newest first, keyed by the scope and narrowed by the filter.
fn select(
    at: NodeKind,
    id: &str,
    filter: &Filter,
    after: Option<&Cursor>,
    limit: u64,
) -> (String, Vec<sea_orm::Value>) {
    let mut clauses = vec![format!("{} = ?", scope_column(at))];
    let mut values: Vec<sea_orm::Value> = vec![id.into()];
    let mut add = |clause: &str, value: sea_orm::Value| {
        clauses.push(clause.to_owned());
        values.push(value);
    };
    if let Some(store) = &filter.store_id {
        add("store_id = ?", store.clone().into());
    }
    if let Some(status) = filter.status {
        add("status = ?", status.as_str().into());
    }
    if let Some(from) = filter.from_ms {
        add("created_at >= ?", from.into());
    }
    if let Some(to) = filter.to_ms {
        add("created_at < ?", to.into());
    }
    if let Some(min) = filter.min_fen {
        add("amount_fen >= ?", min.into());
    }
    if let Some(max) = filter.max_fen {
        add("amount_fen <= ?", max.into());
    }
    if let Some(buyer) = &filter.buyer {
        clauses.push("(buyer_id = ? OR buyer_open_id = ?)".into());
        values.push(buyer.clone().into());
        values.push(buyer.clone().into());
    }
    if let Some(cursor) = after {
        // A row value: both engines read it as one range of the (…, created_at, id) index.
        clauses.push("(created_at, id) < (?, ?)".into());
        values.push(cursor.created_at.into());
        values.push(cursor.id.clone().into());
    }
    values.push(i64::try_from(limit).unwrap_or(50).into());
    (
        format!(
            "SELECT {COLUMNS} FROM payments WHERE {} ORDER BY created_at DESC, id DESC LIMIT ?",
            clauses.join(" AND ")
        ),
        values,
    )
}

/// The export's header line.
pub const CSV_HEADER: &str = "id,created_at,paid_at,store_id,device_id,out_trade_no,trade_no,status,amount_yuan,refunded_yuan,subject,purpose,buyer_id,buyer_open_id\n";

/// One payment as a CSV line (RFC 4180 quoting; times in RFC 3339, UTC). A text cell that a
/// spreadsheet would run as a formula is prefixed with `'`.
pub fn csv_line(p: &Payment) -> String {
    let time = |ms: Option<i64>| {
        ms.map(|ms| sql::from_millis(ms).to_rfc3339())
            .unwrap_or_default()
    };
    let cells = [
        p.id.clone(),
        time(Some(p.created_at)),
        time(p.paid_at),
        p.store_id.clone().unwrap_or_default(),
        p.device_id.clone().unwrap_or_default(),
        p.out_trade_no.clone(),
        p.trade_no.clone().unwrap_or_default(),
        p.status.clone(),
        ledger::yuan(p.amount_fen),
        ledger::yuan(p.refunded_fen),
        p.subject.clone(),
        p.purpose.clone(),
        p.buyer_id.clone().unwrap_or_default(),
        p.buyer_open_id.clone().unwrap_or_default(),
    ];
    let mut line = cells.iter().map(|c| cell(c)).collect::<Vec<_>>().join(",");
    line.push('\n');
    line
}

fn cell(text: &str) -> String {
    let text = if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{text}")
    } else {
        text.to_owned()
    };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_are_quoted_and_formulas_defused() {
        assert_eq!(cell("咖啡"), "咖啡");
        assert_eq!(cell("a,b"), "\"a,b\"");
        assert_eq!(cell("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(cell("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(cell("-1"), "'-1");
    }

    #[test]
    fn a_cursor_reads_back_what_it_wrote() {
        let c = Cursor::parse("1700000000000_0193-abc").unwrap();
        assert_eq!(
            (c.created_at, c.id.as_str()),
            (1_700_000_000_000, "0193-abc")
        );
        assert!(Cursor::parse("nope").is_none());
    }

    #[test]
    fn a_filter_narrows_the_scope_and_the_cursor_pages_back() {
        let filter = Filter {
            status: Some(Status::Succeeded),
            buyer: Some("2088".into()),
            ..Filter::default()
        };
        let cursor = Cursor {
            created_at: 5,
            id: "x".into(),
        };
        let (text, values) = select(NodeKind::Merchant, "m", &filter, Some(&cursor), 10);
        assert!(text.starts_with("SELECT"));
        assert!(text.contains("merchant_id = ? AND status = ?"), "{text}");
        assert!(text.contains("(buyer_id = ? OR buyer_open_id = ?)"));
        assert!(text.contains("(created_at, id) < (?, ?)"));
        assert_eq!(values.len(), 2 + 2 + 2 + 1);
    }
}
