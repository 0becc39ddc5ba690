//! A merchant's Alipay app in the console: its status, the key pair generated on the server
//! (the public half to paste into Alipay's console), the addresses to register with Alipay, and
//! the app id, Alipay's public key and gateway to store.

use axum::extract::rejection::FormRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::super::AppState;
use super::super::credentials as doors;
use super::super::error::ApiError;
use super::super::extract::Target;
use super::{Look, Signed, form, refused};
use crate::alipay::credentials::{self, CredentialsInput, GatewayKind, KeyMode};
use crate::rbac::Action;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/console/alipay", get(app_page).post(store))
        .route("/console/alipay/keypair", post(keypair))
}

#[derive(Debug, Deserialize)]
struct MerchantQuery {
    /// The merchant whose app to show; the visitor's own by default.
    #[serde(default)]
    merchant_id: Option<String>,
}

/// The merchant the page is about: the one named (inside the visitor's subtree, else 404) or
/// the visitor's own.
fn merchant_of(signed: &Signed, named: Option<String>) -> Result<String, ApiError> {
    named
        .filter(|id| !id.is_empty())
        .or_else(|| signed.ctx.caller.place.merchant_id.clone())
        .ok_or_else(|| ApiError::Validation {
            field: "merchant_id",
            message: "name the merchant whose Alipay app to open".into(),
        })
}

async fn app_page(
    State(state): State<AppState>,
    look: Look,
    signed: Signed,
    Query(query): Query<MerchantQuery>,
) -> Result<Response, ApiError> {
    let merchant = merchant_of(&signed, query.merchant_id)?;
    let data = app_data(&signed, &merchant, None).await?;
    look.render(&state, "console-alipay", data)
}

/// What the page shows: the stored app (never a private key), the addresses Alipay must know,
/// and whether the visitor may change it.
async fn app_data(
    signed: &Signed,
    merchant: &str,
    problem: Option<Value>,
) -> Result<Value, ApiError> {
    let ctx = &signed.ctx;
    let grant = ctx
        .allow(Action::AlipayCredentialsRead, Target::merchant(merchant))
        .await?;
    let place = grant.target();
    let stored = credentials::get(&ctx.state.db.conn, merchant).await?;
    let partner = place.partner_id.as_deref().unwrap_or_default();
    let payments = &ctx.state.payments;
    // A partner without a domain has no address Alipay could reach: the page says so.
    let gateway = payments.notify_url(partner, merchant).await.ok();
    let callback = payments
        .partner_url(partner, "/callbacks/alipay/card-activation")
        .await
        .ok();
    let mut data = signed.frame("alipay").await?;
    data["merchant_id"] = merchant.into();
    data["app"] = json!(stored);
    data["urls"] = json!({ "gateway": gateway, "callback": callback });
    data["may_write"] = crate::rbac::allows(ctx.caller.role, Action::AlipayCredentialsWrite).into();
    data["custom_gateway"] = ctx.state.config.alipay.allow_custom_gateway.into();
    if let Some(problem) = problem {
        data["problem"] = problem;
    }
    Ok(data)
}

#[derive(Debug, Deserialize)]
struct KeypairForm {
    #[serde(default)]
    form_token: String,
    merchant_id: String,
}

/// A new key pair, generated and sealed on the server; the page then shows its public half.
async fn keypair(
    signed: Signed,
    headers: HeaderMap,
    body: Result<Form<KeypairForm>, FormRejection>,
) -> Result<Response, ApiError> {
    let body = form(body)?;
    signed.check_form(&headers, &body.form_token)?;
    doors::keypair(&signed.ctx, &body.merchant_id).await?;
    let back = format!("/console/alipay?merchant_id={}", body.merchant_id);
    Ok(Redirect::to(&back).into_response())
}

#[derive(Debug, Deserialize)]
struct AppForm {
    #[serde(default)]
    form_token: String,
    merchant_id: String,
    app_id: String,
    /// `public_key` (公钥) or `certificate` (公钥证书).
    #[serde(default)]
    key_mode: String,
    #[serde(default)]
    alipay_public_key: String,
    /// Certificate mode: the app's certificate, Alipay's and Alipay's root (PEM).
    #[serde(default)]
    app_cert: String,
    #[serde(default)]
    alipay_cert: String,
    #[serde(default)]
    alipay_root_cert: String,
    /// A private key made elsewhere (Alipay's key tool, whose CSR the app certificate was issued
    /// for); empty keeps the key made on this server.
    #[serde(default)]
    app_private_key: String,
    /// 接口内容加密: the AES key, when the app encrypts its content; empty for none.
    #[serde(default)]
    aes_key: String,
    /// Ticked: the stored AES key is removed.
    #[serde(default)]
    remove_aes_key: String,
    gateway: String,
    #[serde(default)]
    gateway_url: String,
}

/// Stores the app: public-key mode with Alipay's public key, or certificate mode with the three
/// certificates; the private key made on the server unless another is pasted.
async fn store(
    State(state): State<AppState>,
    look: Look,
    signed: Signed,
    headers: HeaderMap,
    body: Result<Form<AppForm>, FormRejection>,
) -> Result<Response, ApiError> {
    let body = form(body)?;
    signed.check_form(&headers, &body.form_token)?;
    let gateway = match body.gateway.as_str() {
        "production" => GatewayKind::Production,
        "sandbox" => GatewayKind::Sandbox,
        "custom" => GatewayKind::Custom,
        _ => {
            return Err(ApiError::Validation {
                field: "gateway",
                message: "one of production, sandbox, custom".into(),
            });
        }
    };
    let given = |text: &str| Some(text.trim().to_owned()).filter(|t| !t.is_empty());
    let certificate = body.key_mode == "certificate";
    let input = CredentialsInput {
        app_id: body.app_id.trim().to_owned(),
        sign_type: None,
        key_mode: if certificate {
            KeyMode::Certificate
        } else {
            KeyMode::PublicKey
        },
        app_private_key: given(&body.app_private_key).map(Into::into),
        alipay_public_key: if certificate {
            None
        } else {
            Some(body.alipay_public_key.trim().to_owned())
        },
        app_cert: given(&body.app_cert).filter(|_| certificate),
        alipay_cert: given(&body.alipay_cert).filter(|_| certificate),
        alipay_root_cert: given(&body.alipay_root_cert).filter(|_| certificate),
        aes_key: if body.remove_aes_key.is_empty() {
            given(&body.aes_key).map(Into::into)
        } else {
            Some(String::new().into())
        },
        gateway,
        gateway_url: (gateway == GatewayKind::Custom).then(|| body.gateway_url.trim().to_owned()),
    };
    match doors::store(&signed.ctx, &body.merchant_id, input).await {
        Ok(_) => {
            let back = format!("/console/alipay?merchant_id={}", body.merchant_id);
            Ok(Redirect::to(&back).into_response())
        }
        Err(error) => {
            // What was typed comes back, keys that are secrets excepted.
            let typed = json!({
                "app_id": body.app_id,
                "key_mode": body.key_mode,
                "alipay_public_key": body.alipay_public_key,
                "app_cert": body.app_cert,
                "alipay_cert": body.alipay_cert,
                "alipay_root_cert": body.alipay_root_cert,
            });
            let Some((status, problem)) = refused(&error, typed) else {
                return Err(error);
            };
            let data = app_data(&signed, &body.merchant_id, Some(problem)).await?;
            look.render_as(&state, "console-alipay", data, status)
        }
    }
}
