//! The ledger's rules, free of storage: a payment's status and the only ways it may move, what an
//! Alipay `trade_status` means for it, amounts in fen and the trade numbers the engine makes.
//!
//! Invariant: a status moves only forward (`created → waiting → succeeded → finished`, or to
//! `closed` before any payment), so applying Alipay's answers in any order, any number of times,
//! ends in the same place.

use std::fmt;

/// Where a payment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Recorded; Alipay has not confirmed the trade yet.
    Created,
    /// Alipay holds the trade; the buyer has not paid.
    Waiting,
    /// Paid. Refunds may follow.
    Succeeded,
    /// Paid and settled for good: Alipay takes no more refunds (`TRADE_FINISHED`).
    Finished,
    /// Closed before any payment (timeout, cancel or close).
    Closed,
}

impl Status {
    pub const ALL: [Status; 5] = [
        Status::Created,
        Status::Waiting,
        Status::Succeeded,
        Status::Finished,
        Status::Closed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Waiting => "waiting",
            Status::Succeeded => "succeeded",
            Status::Finished => "finished",
            Status::Closed => "closed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Whether `to` is a step forward from here. A paid payment is never closed: Alipay closes a
    /// fully refunded trade (`TRADE_CLOSED`), but the ledger keeps it paid, with its refunds.
    pub fn may_become(self, to: Status) -> bool {
        use Status::*;
        matches!(
            (self, to),
            (Created, Waiting | Succeeded | Finished | Closed)
                | (Waiting, Succeeded | Finished | Closed)
                | (Succeeded, Finished)
        )
    }

    /// The statuses a payment may be in for it to become `to`: the `WHERE` of the one update
    /// that moves it, so two engines applying the same answer move it once.
    pub fn sources_of(to: Status) -> Vec<Status> {
        Self::ALL
            .into_iter()
            .filter(|from| from.may_become(to))
            .collect()
    }

    /// Final: nothing Alipay says changes it any more.
    pub fn is_final(self) -> bool {
        matches!(self, Status::Finished | Status::Closed)
    }

    /// What Alipay's `trade_status` means here (`WAIT_BUYER_PAY`, `TRADE_SUCCESS`,
    /// `TRADE_FINISHED`, `TRADE_CLOSED`; alipay-sdk-java-all `AlipayTradeQueryResponse`).
    pub fn of_trade_status(trade_status: &str) -> Option<Self> {
        match trade_status {
            "WAIT_BUYER_PAY" => Some(Status::Waiting),
            "TRADE_SUCCESS" => Some(Status::Succeeded),
            "TRADE_FINISHED" => Some(Status::Finished),
            "TRADE_CLOSED" => Some(Status::Closed),
            _ => None,
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The most one trade may be: Alipay's ceiling, 100,000,000 yuan, in fen.
pub const MAX_FEN: i64 = 10_000_000_000;

/// An amount in fen as Alipay writes it in yuan: `"12.30"`.
pub fn yuan(fen: i64) -> String {
    format!("{}.{:02}", fen / 100, fen % 100)
}

/// Alipay's yuan text (`"12.3"`, `"12.30"`, `"12"`) in fen; `None` for anything else, a
/// negative amount or more than [`MAX_FEN`].
pub fn fen(yuan: &str) -> Option<i64> {
    let (whole, frac) = yuan.split_once('.').unwrap_or((yuan, ""));
    if whole.is_empty()
        || whole.len() > 9
        || frac.len() > 2
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let whole: i64 = whole.parse().ok()?;
    let frac: i64 = format!("{frac:0<2}").parse().ok()?;
    let fen = whole.checked_mul(100)?.checked_add(frac)?;
    (fen <= MAX_FEN).then_some(fen)
}

/// A new `out_trade_no`: `T`, the creation time (UTC, to the millisecond) and 12 random hex
/// digits — 30 characters of letters and digits, unique per merchant app without a lookup and
/// sortable by time. Alipay allows letters, digits and underscores, at most 64
/// (`AlipayTradePrecreateModel`).
pub fn out_trade_no(now: chrono::DateTime<chrono::Utc>) -> String {
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("T{}{}", now.format("%Y%m%d%H%M%S%3f"), &random[..12])
}

/// A new `out_request_no` for a refund: `R` and the same shape.
pub fn out_request_no(now: chrono::DateTime<chrono::Utc>) -> String {
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("R{}{}", now.format("%Y%m%d%H%M%S%3f"), &random[..12])
}

/// Whether a caller's `out_request_no` is one Alipay takes: 1–64 letters, digits or underscores.
pub fn is_request_no(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 64
        && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_move_only_forward_and_a_paid_payment_is_never_closed() {
        use Status::*;
        assert!(Created.may_become(Waiting) && Waiting.may_become(Succeeded));
        assert!(Succeeded.may_become(Finished));
        assert!(!Succeeded.may_become(Waiting), "a late WAIT_BUYER_PAY");
        assert!(!Succeeded.may_become(Closed), "a refunded trade stays paid");
        assert!(!Closed.may_become(Succeeded) && !Finished.may_become(Succeeded));
        for s in Status::ALL {
            assert!(!s.may_become(s), "{s} to itself is no move");
            assert_eq!(Status::parse(s.as_str()), Some(s));
        }
        assert_eq!(Status::sources_of(Succeeded), [Created, Waiting]);
        assert_eq!(Status::sources_of(Closed), [Created, Waiting]);
    }

    #[test]
    fn any_order_of_the_same_answers_ends_in_the_same_status() {
        use Status::*;
        let answers = [Waiting, Succeeded, Finished, Closed];
        let apply = |order: &[Status]| {
            order.iter().fold(
                Created,
                |now, next| if now.may_become(*next) { *next } else { now },
            )
        };
        // Every permutation of the paid trade's answers (no close: it was paid).
        let paid = [Waiting, Succeeded, Finished];
        for a in paid {
            for b in paid {
                for c in paid {
                    if a != b && b != c && a != c {
                        assert_eq!(apply(&[a, b, c]), Finished, "{a} {b} {c}");
                    }
                }
            }
        }
        assert_eq!(apply(&answers[..2]), Succeeded);
        assert_eq!(apply(&[Waiting, Closed, Succeeded]), Closed);
    }

    #[test]
    fn amounts_are_fen_written_as_yuan() {
        assert_eq!(yuan(1230), "12.30");
        assert_eq!(yuan(5), "0.05");
        assert_eq!(fen("12.3"), Some(1230));
        assert_eq!(fen("0.01"), Some(1));
        assert_eq!(fen("100000000"), Some(MAX_FEN));
        for bad in ["", "-1", "1.234", "1e3", "100000000.01", "12,30"] {
            assert_eq!(fen(bad), None, "{bad}");
        }
    }

    #[test]
    fn trade_numbers_are_safe_for_alipay_and_distinct() {
        let now = chrono::Utc::now();
        let a = out_trade_no(now);
        assert_ne!(a, out_trade_no(now));
        assert!(a.len() <= 64 && is_request_no(&a), "{a}");
        assert!(is_request_no(&out_request_no(now)));
        assert!(!is_request_no("R-1") && !is_request_no(&"9".repeat(65)));
    }
}
