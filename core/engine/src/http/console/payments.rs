//! Payments in the console: a merchant's or a store's payments (by store and status, paged by
//! cursor), a new QR payment a cashier shows the buyer, and one payment with its QR code, its
//! refunds, and the actions the visitor's role may take (ask Alipay, close, refund).
//!
//! Invariant: every read and change goes through the API's payment doors (`http/payments.rs`),
//! so scope, RBAC and audit are the API's; money is typed in yuan and sent in whole fen.

use std::collections::BTreeMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::super::AppState;
use super::super::error::ApiError;
use super::super::payments::{self as doors, CreatePayment, ListQuery, RefundRequest};
use super::{Fields, Look, Signed, refused};
use crate::db::Page;
use crate::payments::Payment;
use crate::rbac::{Action, allows};
use crate::tenancy::{self, NodeFilter, NodeKind};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/console/payments", get(list))
        .route("/console/payments/new", get(new_form).post(create))
        .route("/console/payments/{id}", get(detail))
        .route("/console/payments/{id}/{action}", post(act))
}

/// Payments a list page shows.
const PER_PAGE: u64 = 50;
/// Stores offered in a merchant's store choices (a filter, a new payment's store).
const STORE_CHOICES: u64 = 200;
/// The largest amount typed in one payment, in yuan: Alipay's own ceiling for a trade.
const MAX_YUAN: i64 = 100_000_000;

/// The node whose payments the visitor sees: its merchant or its store.
fn scope(signed: &Signed) -> Result<(NodeKind, String), ApiError> {
    let place = &signed.ctx.caller.place;
    match place.kind {
        NodeKind::Merchant | NodeKind::Store => Ok((place.kind, place.id.clone())),
        _ => Err(ApiError::NotFound(
            "payments open from a merchant's or a store's console".into(),
        )),
    }
}

/// Yuan as typed (`12`, `12.5`, `¥12.50`) in fen; `None` for anything else.
fn fen_of(text: &str) -> Option<i64> {
    let text = text.trim().trim_start_matches(['¥', '￥']).trim();
    let (whole, part) = text.split_once('.').unwrap_or((text, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || whole.len() > 9 || part.len() > 2 || !digits(whole) || !digits(part) {
        return None;
    }
    let yuan: i64 = whole.parse().ok()?;
    let cents: i64 = format!("{part:0<2}").parse().ok()?;
    (yuan <= MAX_YUAN).then_some(yuan * 100 + cents)
}

/// Fen as yuan with two decimals.
fn yuan(fen: i64) -> String {
    let sign = if fen < 0 { "-" } else { "" };
    format!("{sign}{}.{:02}", fen.abs() / 100, fen.abs() % 100)
}

/// Unix milliseconds as RFC 3339, for the `china_time` helper.
fn instant(ms: Option<i64>) -> Option<String> {
    ms.and_then(chrono::DateTime::from_timestamp_millis)
        .map(|at| at.to_rfc3339())
}

/// The merchant's stores, for its choices; a store's visitor has only its own.
async fn stores(signed: &Signed) -> Result<Vec<Value>, ApiError> {
    let ctx = &signed.ctx;
    let place = &ctx.caller.place;
    if place.kind != NodeKind::Merchant {
        return Ok(Vec::new());
    }
    let filter = NodeFilter {
        parent_id: Some(place.id.clone()),
        ..NodeFilter::default()
    };
    let page = Page {
        page: 1,
        per_page: STORE_CHOICES,
    };
    let listed = tenancy::list(&ctx.state.db.conn, place, NodeKind::Store, &filter, page).await?;
    Ok(listed
        .items
        .iter()
        .map(|s| json!({ "id": s.id, "name": s.name }))
        .collect())
}

/// A payment as a row or a detail shows it.
fn shown(payment: &Payment, stores: &std::collections::HashMap<String, String>) -> Value {
    json!({
        "id": payment.id,
        "at": instant(Some(payment.created_at)),
        "paid_at": instant(payment.paid_at),
        "store": payment.store_id.as_ref().map(|s| stores.get(s).cloned().unwrap_or_else(|| s.clone())),
        "subject": payment.subject,
        "amount": yuan(payment.amount_fen),
        "refunded": (payment.refunded_fen > 0).then(|| yuan(payment.refunded_fen)),
        "status": payment.status,
        "scene": payment.scene,
        "out_trade_no": payment.out_trade_no,
        "trade_no": payment.trade_no,
        "buyer": payment.buyer_logon_id.as_ref().or(payment.buyer_id.as_ref()).or(payment.buyer_open_id.as_ref()),
        "plugin": payment.plugin_id,
    })
}

async fn list(
    State(state): State<AppState>,
    look: Look,
    signed: Signed,
    Query(params): Query<BTreeMap<String, String>>,
) -> Result<Response, ApiError> {
    let (kind, id) = scope(&signed)?;
    let pick = |name: &str| params.get(name).filter(|v| !v.is_empty()).cloned();
    let query = ListQuery {
        store_id: pick("store_id"),
        status: pick("status"),
        from: None,
        to: None,
        buyer: None,
        min_fen: None,
        max_fen: None,
        after: pick("after"),
        limit: Some(PER_PAGE),
    };
    let ctx = &signed.ctx;
    let page = doors::list(ctx, kind, &id, &query).await?;
    let store_ids: Vec<&str> = page
        .items
        .iter()
        .filter_map(|p| p.store_id.as_deref())
        .collect();
    // One query for every store name on the page, however many rows.
    let names = tenancy::names(&ctx.state.db.conn, &ctx.caller.place, &store_ids).await?;
    let mut data = signed.frame("payments").await?;
    data["payments"] = json!(
        page.items
            .iter()
            .map(|p| shown(p, &names))
            .collect::<Vec<_>>()
    );
    data["stores"] = json!(stores(&signed).await?);
    data["filter"] = json!({ "store_id": query.store_id, "status": query.status });
    data["statuses"] = json!(["created", "waiting", "succeeded", "finished", "closed"]);
    if let Some(next) = &page.next {
        let mut keep = url::form_urlencoded::Serializer::new(String::new());
        for (name, value) in [("store_id", &query.store_id), ("status", &query.status)] {
            if let Some(value) = value {
                keep.append_pair(name, value);
            }
        }
        keep.append_pair("after", next);
        data["next"] = format!("/console/payments?{}", keep.finish()).into();
    }
    data["may_create"] = allows(ctx.caller.role, Action::PaymentCreate).into();
    if kind == NodeKind::Merchant {
        data["csv"] = format!("/api/v1/merchants/{id}/payments.csv").into();
    }
    look.render(&state, "console-payments", data)
}

/// The new-payment form, with what was typed and why it was refused when it was.
async fn form_data(
    signed: &Signed,
    typed: Value,
    problem: Option<Value>,
) -> Result<Value, ApiError> {
    let mut data = signed.frame("payments").await?;
    data["stores"] = json!(stores(signed).await?);
    data["typed"] = typed;
    if let Some(problem) = problem {
        data["problem"] = problem;
    }
    Ok(data)
}

async fn new_form(
    State(state): State<AppState>,
    look: Look,
    signed: Signed,
) -> Result<Response, ApiError> {
    scope(&signed)?;
    if !allows(signed.ctx.caller.role, Action::PaymentCreate) {
        return Err(ApiError::NotFound("/console/payments/new".into()));
    }
    let data = form_data(&signed, json!({}), None).await?;
    look.render(&state, "console-payment-new", data)
}

/// A QR payment (`precreate`) at the visitor's store, or the store the merchant chose.
async fn create(
    State(state): State<AppState>,
    look: Look,
    signed: Signed,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let fields = Fields::parse(&body);
    signed.check_form(&headers, fields.one("form_token"))?;
    let (kind, own) = scope(&signed)?;
    let store = match kind {
        NodeKind::Store => own,
        _ => fields.one("store_id").to_owned(),
    };
    let typed = fields.typed();
    let outcome = match fen_of(fields.one("amount")) {
        None => Err(ApiError::Validation {
            field: "amount",
            message: format!("type yuan, such as 12.50 (at most {MAX_YUAN})"),
        }),
        Some(amount_fen) => {
            let request = CreatePayment {
                scene: "precreate".into(),
                auth_code: None,
                buyer_id: None,
                buyer_open_id: None,
                amount_fen,
                subject: fields.one("subject").trim().to_owned(),
                purpose: None,
                device_id: None,
            };
            doors::create(&signed.ctx, &store, &request).await
        }
    };
    match outcome {
        Ok(payment) => {
            Ok(Redirect::to(&format!("/console/payments/{}", payment.id)).into_response())
        }
        Err(error) => {
            let Some((status, problem)) = refused(&error, json!({})) else {
                return Err(error);
            };
            let data = form_data(&signed, typed, Some(problem)).await?;
            look.render_as(&state, "console-payment-new", data, status)
        }
    }
}

/// One payment: its fields, its QR code while it waits, its refunds and the actions the
/// visitor's role may take.
async fn detail_data(signed: &Signed, id: &str, problem: Option<Value>) -> Result<Value, ApiError> {
    scope(signed)?;
    let ctx = &signed.ctx;
    let view = doors::detail(ctx, id).await?;
    let payment = &view.payment;
    let store_ids: Vec<&str> = payment.store_id.as_deref().into_iter().collect();
    let names = tenancy::names(&ctx.state.db.conn, &ctx.caller.place, &store_ids).await?;
    let mut data = signed.frame("payments").await?;
    data["payment"] = shown(payment, &names);
    if let Some(code) = payment
        .qr_code
        .as_deref()
        .filter(|_| doors::shows_qr(payment))
    {
        data["qr"] = json!({ "url": code, "svg": super::super::qr_svg(code)? });
        // Where the page's script (progressive) asks whether Alipay moved the payment on.
        data["live_status"] = format!("/api/v1/payments/{}", payment.id).into();
    }
    data["refunds"] = json!(
        view.refunds
            .iter()
            .map(|r| json!({
                "at": instant(Some(r.created_at)),
                "amount": yuan(r.amount_fen),
                "reason": r.reason,
                "status": r.status,
            }))
            .collect::<Vec<_>>()
    );
    let role = ctx.caller.role;
    let status = payment.status();
    let refundable = payment.amount_fen - payment.refunded_fen;
    data["may"] = json!({
        "query": true,
        "close": allows(role, Action::PaymentCreate) && !status.is_final() && payment.paid_at.is_none(),
        "refund": allows(role, Action::PaymentRefund)
            && status == crate::payments::Status::Succeeded
            && refundable > 0,
    });
    data["refundable"] = yuan(refundable).into();
    if let Some(problem) = problem {
        data["problem"] = problem;
    }
    Ok(data)
}

async fn detail(
    State(state): State<AppState>,
    look: Look,
    signed: Signed,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let data = detail_data(&signed, &id, None).await?;
    look.render(&state, "console-payment", data)
}

/// One of the payment's buttons: ask Alipay, close, or refund (an amount in yuan, a reason).
async fn act(
    State(state): State<AppState>,
    look: Look,
    signed: Signed,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let fields = Fields::parse(&body);
    signed.check_form(&headers, fields.one("form_token"))?;
    scope(&signed)?;
    let ctx = &signed.ctx;
    let outcome = match action.as_str() {
        "query" => doors::query(ctx, &id).await.map(drop),
        "close" => doors::close(ctx, &id).await.map(drop),
        "refund" => match fen_of(fields.one("amount")) {
            None => Err(ApiError::Validation {
                field: "amount",
                message: "type yuan, such as 12.50".into(),
            }),
            Some(amount_fen) => {
                let reason = fields.one("reason").trim();
                let request = RefundRequest {
                    amount_fen,
                    out_request_no: None,
                    reason: (!reason.is_empty()).then(|| reason.to_owned()),
                };
                doors::refund(ctx, &id, &request).await.map(drop)
            }
        },
        _ => {
            return Err(ApiError::NotFound(format!(
                "/console/payments/{id}/{action}"
            )));
        }
    };
    match outcome {
        Ok(()) => Ok(Redirect::to(&format!("/console/payments/{id}")).into_response()),
        Err(error) => {
            let Some((status, problem)) = refused(&error, fields.typed()) else {
                return Err(error);
            };
            let data = detail_data(&signed, &id, Some(problem)).await?;
            look.render_as(&state, "console-payment", data, status)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yuan_are_typed_as_people_write_them_and_nothing_else() {
        assert_eq!(fen_of("12"), Some(1200));
        assert_eq!(fen_of(" 12.5 "), Some(1250));
        assert_eq!(fen_of("¥0.01"), Some(1));
        assert_eq!(fen_of("100000000.00"), Some(10_000_000_000));
        assert_eq!(fen_of("1."), Some(100));
        for bad in [
            "",
            "-1",
            "1.234",
            "1e3",
            "12,50",
            "abc",
            "100000001",
            ".5",
            "1.-2",
        ] {
            assert_eq!(fen_of(bad), None, "{bad:?}");
        }
        assert_eq!(yuan(1250), "12.50");
        assert_eq!(yuan(-5), "-0.05");
    }
}
