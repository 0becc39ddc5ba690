//! Payments over HTTP: a store creating a trade (a QR code the buyer scans), the ledger's
//! payments with their refunds, asking Alipay again, closing, refunding, and the notifications
//! the ledger could not apply.
//!
//! Invariant: a payment is reached only through the store (or merchant) it belongs to, inside
//! the caller's subtree — another tenant's id answers 404 — and refunds are the merchant
//! owner's.

use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery, Ctx, Target};
use crate::payments::{self, Anomaly, NewTrade, Payment, Refund, reports};
use crate::rbac::Action;
use crate::tenancy::NodeKind;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/api/v1/stores/{id}/payments",
            post(create_payment).get(list_store_payments),
        )
        .route(
            "/api/v1/merchants/{id}/payments",
            get(list_merchant_payments),
        )
        .route(
            "/api/v1/merchants/{id}/payments.csv",
            get(export_merchant_payments),
        )
        .route("/api/v1/merchants/{id}/payments/daily", get(daily_merchant))
        .route("/api/v1/stores/{id}/payments/daily", get(daily_store))
        .route(
            "/api/v1/merchants/{id}/payment-anomalies",
            get(list_anomalies),
        )
        .route("/api/v1/payments/{id}", get(get_payment))
        .route("/api/v1/payments/{id}/qr.svg", get(payment_qr_svg))
        .route("/api/v1/payments/{id}/query", post(query_payment))
        .route("/api/v1/payments/{id}/close", post(close_payment))
        .route("/api/v1/payments/{id}/refunds", post(refund_payment))
        .route(
            "/api/v1/payments/{id}/refunds/{refund_id}/query",
            post(query_refund),
        )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreatePayment {
    /// `precreate` (a QR code the buyer scans with Alipay), `bar_code` (the buyer's payment
    /// code, in `auth_code`) or `security_code` (a face-pay token, in `auth_code`).
    pub scene: String,
    #[serde(default)]
    pub auth_code: Option<String>,
    /// `jsapi`: the buyer signed in to the page inside Alipay, by the merchant app's kind of id.
    #[serde(default)]
    pub buyer_id: Option<String>,
    #[serde(default)]
    pub buyer_open_id: Option<String>,
    /// Fen (1 yuan = 100), at least 1.
    pub amount_fen: i64,
    pub subject: String,
    /// `sale` (default), `recharge` or another tag of a-z, 0-9, `_` and `.`.
    #[serde(default)]
    pub purpose: Option<String>,
    #[serde(default)]
    pub device_id: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct PaymentView {
    #[serde(flatten)]
    pub payment: Payment,
    /// Where the QR code is served as SVG (`GET /api/v1/payments/{id}/qr.svg`), for a
    /// precreated payment not yet paid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qr_svg_url: Option<String>,
    pub refunds: Vec<Refund>,
    /// Alipay's notifications about the trade, oldest first.
    pub notifications: Vec<payments::NotificationView>,
    /// What the engine asked Alipay about the trade (query, close, cancel, refund queries) and
    /// what it answered, oldest first.
    pub checks: Vec<payments::Check>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefundRequest {
    pub amount_fen: i64,
    /// Makes the refund idempotent; generated when absent.
    #[serde(default)]
    pub out_request_no: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
}

/// `?store_id=&status=&from=&to=&buyer=&min_fen=&max_fen=&after=&limit=`; `from` and `to` are
/// Unix milliseconds, `after` the `next` of the previous page.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    #[serde(default)]
    pub store_id: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub from: Option<i64>,
    #[serde(default)]
    pub to: Option<i64>,
    #[serde(default)]
    pub buyer: Option<String>,
    #[serde(default)]
    pub min_fen: Option<i64>,
    #[serde(default)]
    pub max_fen: Option<i64>,
    #[serde(default)]
    pub after: Option<String>,
    #[serde(default)]
    pub limit: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct PaymentPage {
    pub items: Vec<Payment>,
    /// Give as `after` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DayQuery {
    pub from: i64,
    pub to: i64,
}

impl ListQuery {
    fn filter(&self) -> Result<(reports::Filter, Option<reports::Cursor>), ApiError> {
        let status = match &self.status {
            Some(s) => Some(payments::Status::parse(s).ok_or(ApiError::Validation {
                field: "status",
                message: "must be created, waiting, succeeded, finished or closed".into(),
            })?),
            None => None,
        };
        let after = match &self.after {
            Some(a) => Some(reports::Cursor::parse(a).ok_or(ApiError::Validation {
                field: "after",
                message: "must be the next of a previous page".into(),
            })?),
            None => None,
        };
        let bounded = |v: Option<String>, field: &'static str| match v {
            Some(v) if v.len() > 128 => Err(ApiError::Validation {
                field,
                message: "must be at most 128 characters".into(),
            }),
            other => Ok(other),
        };
        Ok((
            reports::Filter {
                store_id: bounded(self.store_id.clone(), "store_id")?,
                status,
                from_ms: self.from,
                to_ms: self.to,
                buyer: bounded(self.buyer.clone(), "buyer")?,
                min_fen: self.min_fen,
                max_fen: self.max_fen,
            },
            after,
        ))
    }
}

const MAX_LIST: u64 = 200;
/// How long a code payment's request waits for the buyer before answering 202 (the payment
/// goes on being polled).
const PAY_INLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// Whether `payment` still shows its QR code: precreated, not yet paid or closed.
pub(super) fn shows_qr(payment: &Payment) -> bool {
    payment.qr_code.is_some() && !payment.status().is_final() && payment.paid_at.is_none()
}

fn qr_svg_url(payment: &Payment) -> Option<String> {
    shows_qr(payment).then(|| format!("/api/v1/payments/{}/qr.svg", payment.id))
}

async fn view(ctx: &Ctx, payment: Payment) -> Result<PaymentView, ApiError> {
    let refunds = ctx.state.payments.refunds(&payment.id).await?;
    let notifications = ctx.state.payments.notifications(&payment).await?;
    let checks = ctx.state.payments.checks(&payment.id).await?;
    Ok(PaymentView {
        qr_svg_url: qr_svg_url(&payment),
        payment,
        refunds,
        notifications,
        checks,
    })
}

/// A payment just created has no refunds and no notifications yet: its view needs no reads.
fn new_view(payment: Payment) -> PaymentView {
    PaymentView {
        qr_svg_url: qr_svg_url(&payment),
        payment,
        refunds: Vec::new(),
        notifications: Vec::new(),
        checks: Vec::new(),
    }
}

/// The payment's QR code as SVG, drawn from Alipay's `qr_code` on request (the cashier's screen
/// shows it as an image; creating the trade does not wait for the drawing). Gone once paid
/// or closed.
async fn payment_qr_svg(
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let payment = payment_for(&ctx, Action::PaymentRead, &id).await?;
    let code = payment
        .qr_code
        .as_deref()
        .filter(|_| shows_qr(&payment))
        .ok_or_else(|| ApiError::NotFound(format!("/api/v1/payments/{id}/qr.svg")))?;
    let svg = super::qr_svg(code)?;
    Ok((
        [
            (axum::http::header::CONTENT_TYPE, "image/svg+xml"),
            (axum::http::header::CACHE_CONTROL, "private, max-age=300"),
        ],
        svg,
    )
        .into_response())
}

/// A trade for the store: `precreate` records the payment and returns Alipay's QR code.
async fn create_payment(
    ctx: Ctx,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<CreatePayment>,
) -> Result<(StatusCode, Json<PaymentView>), ApiError> {
    let payment = create(&ctx, &id, &body).await?;
    // A code payment still waiting for its buyer is accepted, not done: the caller polls it.
    let waiting = matches!(
        payment.status(),
        payments::Status::Created | payments::Status::Waiting
    );
    let status = if waiting && (body.scene == "bar_code" || body.scene == "security_code") {
        StatusCode::ACCEPTED
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(new_view(payment))))
}

/// Creates a trade at the store `store_id` for the caller, audited: the door the API and the
/// console share.
pub(super) async fn create(
    ctx: &Ctx,
    store_id: &str,
    body: &CreatePayment,
) -> Result<Payment, ApiError> {
    let state = &ctx.state;
    ctx.change(
        Action::PaymentCreate,
        Target::Node(Some(NodeKind::Store), store_id),
        "payment.create",
        ("store", Some(store_id)),
    )
    .run(async |grant| {
        let trade = NewTrade {
            store: grant.target().clone(),
            amount_fen: body.amount_fen,
            subject: body.subject.clone(),
            purpose: body.purpose.clone().unwrap_or_else(|| "sale".into()),
            device_id: body.device_id.clone(),
            operator_id: Some(ctx.caller.id.clone()),
            plugin_id: None,
        };
        if body.scene == "precreate" {
            return Ok(state.payments.precreate(trade).await?);
        }
        if body.scene == "jsapi" {
            let buyer =
                payments::Buyer::of(body.buyer_id.as_deref(), body.buyer_open_id.as_deref())?;
            return Ok(state.payments.create_jsapi(trade, buyer).await?);
        }
        let scene = payments::Scene::parse(&body.scene).ok_or(ApiError::Validation {
            field: "scene",
            message: "must be precreate, bar_code, security_code or jsapi".into(),
        })?;
        let code = body.auth_code.as_deref().ok_or(ApiError::Validation {
            field: "auth_code",
            message: "the buyer's code is required for this scene".into(),
        })?;
        Ok(state.payments.pay(trade, scene, code, PAY_INLINE).await?)
    })
    .await
}

/// One page of the payments of a merchant or a store: the door the API and the console share.
pub(super) async fn list(
    ctx: &Ctx,
    kind: NodeKind,
    id: &str,
    q: &ListQuery,
) -> Result<PaymentPage, ApiError> {
    ctx.allow(Action::PaymentRead, Target::Node(Some(kind), id))
        .await?;
    let (filter, after) = q.filter()?;
    let limit = q.limit.unwrap_or(50).clamp(1, MAX_LIST);
    let items = ctx
        .state
        .payments
        .search(kind, id, &filter, after.as_ref(), limit)
        .await?;
    let next = (items.len() as u64 == limit)
        .then(|| items.last().map(reports::Cursor::of))
        .flatten();
    Ok(PaymentPage { items, next })
}

async fn list_store_payments(
    ctx: Ctx,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<PaymentPage>, ApiError> {
    Ok(Json(list(&ctx, NodeKind::Store, &id, &q).await?))
}

async fn list_merchant_payments(
    ctx: Ctx,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<PaymentPage>, ApiError> {
    Ok(Json(list(&ctx, NodeKind::Merchant, &id, &q).await?))
}

async fn daily(
    ctx: &Ctx,
    kind: NodeKind,
    id: &str,
    q: &DayQuery,
) -> Result<Json<Vec<reports::Day>>, ApiError> {
    ctx.allow(Action::PaymentRead, Target::Node(Some(kind), id))
        .await?;
    Ok(Json(
        ctx.state.payments.daily(kind, id, q.from, q.to).await?,
    ))
}

/// Paid payments per store and Beijing day between `from` and `to` (Unix milliseconds).
async fn daily_merchant(
    ctx: Ctx,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<DayQuery>,
) -> Result<Json<Vec<reports::Day>>, ApiError> {
    daily(&ctx, NodeKind::Merchant, &id, &q).await
}

async fn daily_store(
    ctx: Ctx,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<DayQuery>,
) -> Result<Json<Vec<reports::Day>>, ApiError> {
    daily(&ctx, NodeKind::Store, &id, &q).await
}

/// The merchant's payments matching the filter as CSV, newest first, written while it is read
/// a page at a time: a year of a busy merchant never sits in memory.
async fn export_merchant_payments(
    ctx: Ctx,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    ctx.allow(Action::PaymentRead, Target::merchant(&id))
        .await?;
    let (filter, after) = q.filter()?;
    let payments = ctx.state.payments.clone();
    // State: the cursor of the next page, and whether the header was written; `None` when done.
    let start: Option<(Option<reports::Cursor>, bool)> = Some((after, false));
    let stream = futures_util::stream::unfold(start, move |state| {
        let payments = payments.clone();
        let filter = filter.clone();
        let id = id.clone();
        async move {
            let (cursor, started) = state?;
            if !started {
                return Some((
                    Ok::<_, std::io::Error>(reports::CSV_HEADER.to_owned()),
                    Some((cursor, true)),
                ));
            }
            match payments
                .export_page(NodeKind::Merchant, &id, &filter, cursor.as_ref())
                .await
            {
                Ok(page) if page.is_empty() => None,
                Ok(page) => {
                    let next = page.last().map(|p| reports::Cursor {
                        created_at: p.created_at,
                        id: p.id.clone(),
                    });
                    let text: String = page.iter().map(reports::csv_line).collect();
                    Some((Ok(text), Some((next, true))))
                }
                Err(error) => {
                    // Headers are sent: the broken body is the client's sign; the log has why.
                    tracing::error!(%error, "the payments export stopped");
                    Some((Err(std::io::Error::other("export failed")), None))
                }
            }
        }
    });
    Ok((
        [
            (axum::http::header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                axum::http::header::CONTENT_DISPOSITION,
                "attachment; filename=\"payments.csv\"",
            ),
        ],
        axum::body::Body::from_stream(stream),
    )
        .into_response())
}

async fn list_anomalies(
    ctx: Ctx,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Vec<Anomaly>>, ApiError> {
    ctx.allow(Action::PaymentRead, Target::merchant(&id))
        .await?;
    let limit = q.limit.unwrap_or(50).clamp(1, MAX_LIST);
    Ok(Json(ctx.state.payments.anomalies(&id, limit).await?))
}

/// The payment, if the caller may take `action` on where it belongs; 404 otherwise, whether or
/// not it exists elsewhere.
async fn payment_for(ctx: &Ctx, action: Action, id: &str) -> Result<Payment, ApiError> {
    let payment = match ctx.state.payments.get(id).await {
        Ok(p) => p,
        Err(payments::Error::NotFound) => return Err(ApiError::NotFound(String::new())),
        Err(e) => return Err(e.into()),
    };
    let node = payment.store_id.as_deref().unwrap_or(&payment.merchant_id);
    match action {
        // Refunds are decided at the merchant, whatever store sold.
        Action::PaymentRefund => {
            ctx.allow(action, Target::merchant(&payment.merchant_id))
                .await?
        }
        _ => ctx.allow(action, Target::Node(None, node)).await?,
    };
    Ok(payment)
}

async fn get_payment(ctx: Ctx, Path(id): Path<String>) -> Result<Json<PaymentView>, ApiError> {
    Ok(Json(detail(&ctx, &id).await?))
}

/// The payment with its refunds, notifications and checks, if the caller may read it.
pub(super) async fn detail(ctx: &Ctx, id: &str) -> Result<PaymentView, ApiError> {
    let payment = payment_for(ctx, Action::PaymentRead, id).await?;
    view(ctx, payment).await
}

/// Asks Alipay where the trade stands and applies the answer.
async fn query_payment(ctx: Ctx, Path(id): Path<String>) -> Result<Json<PaymentView>, ApiError> {
    Ok(Json(query(&ctx, &id).await?))
}

/// Asks Alipay where the trade stands and applies the answer: the shared door.
pub(super) async fn query(ctx: &Ctx, id: &str) -> Result<PaymentView, ApiError> {
    let payment = payment_for(ctx, Action::PaymentRead, id).await?;
    let payment = ctx.state.payments.query(&payment).await?;
    view(ctx, payment).await
}

async fn close_payment(ctx: Ctx, Path(id): Path<String>) -> Result<Json<PaymentView>, ApiError> {
    Ok(Json(close(&ctx, &id).await?))
}

/// Closes a trade nobody paid, audited: the shared door.
pub(super) async fn close(ctx: &Ctx, id: &str) -> Result<PaymentView, ApiError> {
    let payment = payment_for(ctx, Action::PaymentCreate, id).await?;
    let state = &ctx.state;
    let node = payment
        .store_id
        .clone()
        .unwrap_or_else(|| payment.merchant_id.clone());
    let closed = ctx
        .change(
            Action::PaymentCreate,
            Target::Node(None, &node),
            "payment.close",
            ("payment", Some(id)),
        )
        .run(async |_| Ok(state.payments.close(&payment).await?))
        .await?;
    view(ctx, closed).await
}

async fn refund_payment(
    ctx: Ctx,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<RefundRequest>,
) -> Result<(StatusCode, Json<Refund>), ApiError> {
    Ok((StatusCode::CREATED, Json(refund(&ctx, &id, &body).await?)))
}

/// Refunds part or all of a payment, decided at the merchant, audited: the shared door.
pub(super) async fn refund(ctx: &Ctx, id: &str, body: &RefundRequest) -> Result<Refund, ApiError> {
    let payment = payment_for(ctx, Action::PaymentRefund, id).await?;
    let state = &ctx.state;
    ctx.change(
        Action::PaymentRefund,
        Target::merchant(&payment.merchant_id),
        "payment.refund",
        ("payment", Some(id)),
    )
    .run(async |_| {
        Ok(state
            .payments
            .refund(
                &payment,
                body.amount_fen,
                body.out_request_no.clone(),
                body.reason.clone(),
                Some(ctx.caller.id.as_str()),
            )
            .await?)
    })
    .await
}

/// Asks Alipay about a refund whose answer was lost (`alipay.trade.fastpay.refund.query`) and
/// settles it by what Alipay says; owners only, like refunding.
async fn query_refund(
    ctx: Ctx,
    Path((id, refund_id)): Path<(String, String)>,
) -> Result<Json<Refund>, ApiError> {
    let payment = payment_for(&ctx, Action::PaymentRefund, &id).await?;
    let state = &ctx.state;
    let refund = state.payments.refund_of(&payment.id, &refund_id).await?;
    // A refund younger than a reconciliation interval may still be on its way to Alipay.
    let settled_after = i64::try_from(state.config.payments.reconcile_every_secs)
        .ok()
        .and_then(chrono::Duration::try_seconds)
        .unwrap_or(chrono::Duration::MAX);
    let refund = ctx
        .change(
            Action::PaymentRefund,
            Target::merchant(&payment.merchant_id),
            "payment.refund_query",
            ("refund", Some(&refund_id)),
        )
        .run(async |_| {
            Ok(state
                .payments
                .query_refund(&payment, &refund, settled_after)
                .await?)
        })
        .await?;
    Ok(Json(refund))
}
