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
use crate::payments::{self, Anomaly, NewTrade, Payment, Refund};
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
            "/api/v1/merchants/{id}/payment-anomalies",
            get(list_anomalies),
        )
        .route("/api/v1/payments/{id}", get(get_payment))
        .route("/api/v1/payments/{id}/query", post(query_payment))
        .route("/api/v1/payments/{id}/close", post(close_payment))
        .route("/api/v1/payments/{id}/refunds", post(refund_payment))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreatePayment {
    /// `precreate` (a QR code the buyer scans with Alipay), `bar_code` (the buyer's payment
    /// code, in `auth_code`) or `security_code` (a face-pay token, in `auth_code`).
    pub scene: String,
    #[serde(default)]
    pub auth_code: Option<String>,
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
    /// The QR code as SVG, for a precreated payment not yet paid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qr_svg: Option<String>,
    pub refunds: Vec<Refund>,
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

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    pub limit: Option<u64>,
}

const MAX_LIST: u64 = 200;
/// How long a code payment's request waits for the buyer before answering 202 (the payment
/// goes on being polled).
const PAY_INLINE: std::time::Duration = std::time::Duration::from_secs(10);

fn qr_svg(payment: &Payment) -> Option<String> {
    let code = payment.qr_code.as_deref()?;
    if payment.status().is_final() || payment.paid_at.is_some() {
        return None;
    }
    let qr = qrcode::QrCode::new(code.as_bytes()).ok()?;
    Some(
        qr.render::<qrcode::render::svg::Color<'_>>()
            .min_dimensions(200, 200)
            .build(),
    )
}

async fn view(ctx: &Ctx, payment: Payment) -> Result<PaymentView, ApiError> {
    let refunds = ctx.state.payments.refunds(&payment.id).await?;
    Ok(PaymentView {
        qr_svg: qr_svg(&payment),
        payment,
        refunds,
    })
}

/// A trade for the store: `precreate` records the payment and returns Alipay's QR code.
async fn create_payment(
    ctx: Ctx,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<CreatePayment>,
) -> Result<(StatusCode, Json<PaymentView>), ApiError> {
    let state = &ctx.state;
    let payment = ctx
        .change(
            Action::PaymentCreate,
            Target::Node(Some(NodeKind::Store), &id),
            "payment.create",
            ("store", Some(&id)),
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
            let scene = payments::Scene::parse(&body.scene).ok_or(ApiError::Validation {
                field: "scene",
                message: "must be precreate, bar_code or security_code".into(),
            })?;
            let code = body.auth_code.as_deref().ok_or(ApiError::Validation {
                field: "auth_code",
                message: "the buyer's code is required for this scene".into(),
            })?;
            Ok(state.payments.pay(trade, scene, code, PAY_INLINE).await?)
        })
        .await?;
    // A code payment still waiting for its buyer is accepted, not done: the caller polls it.
    let waiting = matches!(
        payment.status(),
        payments::Status::Created | payments::Status::Waiting
    );
    let status = if waiting && body.scene != "precreate" {
        StatusCode::ACCEPTED
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(view(&ctx, payment).await?)))
}

async fn list(
    ctx: &Ctx,
    kind: NodeKind,
    id: &str,
    limit: Option<u64>,
) -> Result<Json<Vec<Payment>>, ApiError> {
    ctx.allow(Action::PaymentRead, Target::Node(Some(kind), id))
        .await?;
    let limit = limit.unwrap_or(50).clamp(1, MAX_LIST);
    Ok(Json(ctx.state.payments.list(kind, id, limit).await?))
}

async fn list_store_payments(
    ctx: Ctx,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Vec<Payment>>, ApiError> {
    list(&ctx, NodeKind::Store, &id, q.limit).await
}

async fn list_merchant_payments(
    ctx: Ctx,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Vec<Payment>>, ApiError> {
    list(&ctx, NodeKind::Merchant, &id, q.limit).await
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
    let payment = payment_for(&ctx, Action::PaymentRead, &id).await?;
    Ok(Json(view(&ctx, payment).await?))
}

/// Asks Alipay where the trade stands and applies the answer.
async fn query_payment(ctx: Ctx, Path(id): Path<String>) -> Result<Json<PaymentView>, ApiError> {
    let payment = payment_for(&ctx, Action::PaymentRead, &id).await?;
    let payment = ctx.state.payments.query(&payment).await?;
    Ok(Json(view(&ctx, payment).await?))
}

async fn close_payment(ctx: Ctx, Path(id): Path<String>) -> Result<Json<PaymentView>, ApiError> {
    let payment = payment_for(&ctx, Action::PaymentCreate, &id).await?;
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
            ("payment", Some(&id)),
        )
        .run(async |_| Ok(state.payments.close(&payment).await?))
        .await?;
    Ok(Json(view(&ctx, closed).await?))
}

async fn refund_payment(
    ctx: Ctx,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<RefundRequest>,
) -> Result<(StatusCode, Json<Refund>), ApiError> {
    let payment = payment_for(&ctx, Action::PaymentRefund, &id).await?;
    let state = &ctx.state;
    let refund = ctx
        .change(
            Action::PaymentRefund,
            Target::merchant(&payment.merchant_id),
            "payment.refund",
            ("payment", Some(&id)),
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
        .await?;
    Ok((StatusCode::CREATED, Json(refund)))
}
