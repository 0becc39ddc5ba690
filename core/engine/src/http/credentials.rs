//! A merchant's Alipay app over HTTP: reading what is stored (never a private key), storing
//! keys or certificates, and generating a key pair whose public half the merchant uploads to
//! Alipay.
//!
//! Invariant: keys are sealed before they are stored, a gateway outside the platform's
//! `[alipay]` rules is refused, and production roots must be Alipay's pinned ones.

use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiJson, Ctx, Target};
use crate::alipay::credentials::{self, CredentialsInput, CredentialsView};
use crate::rbac::Action;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/api/v1/merchants/{id}/alipay/credentials",
            get(get_credentials).put(put_credentials),
        )
        .route(
            "/api/v1/merchants/{id}/alipay/keypair",
            post(generate_keypair),
        )
}

async fn get_credentials(
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<Json<CredentialsView>, ApiError> {
    ctx.allow(Action::AlipayCredentialsRead, Target::merchant(&id))
        .await?;
    let view = credentials::get(&ctx.state.db.conn, &id)
        .await?
        .ok_or(credentials::Error::NotConfigured)?;
    Ok(Json(view))
}

async fn put_credentials(
    ctx: Ctx,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<CredentialsInput>,
) -> Result<Json<CredentialsView>, ApiError> {
    Ok(Json(store(&ctx, &id, body).await?))
}

/// The one door to storing a merchant's Alipay app, for the API and the consoles: the
/// platform's gateway rules, production roots, sealed keys, audited.
pub(super) async fn store(
    ctx: &Ctx,
    id: &str,
    body: CredentialsInput,
) -> Result<CredentialsView, ApiError> {
    let state = &ctx.state;
    ctx.change(
        Action::AlipayCredentialsWrite,
        Target::merchant(id),
        "alipay_credentials.write",
        ("merchant", Some(id)),
    )
    .run(async |grant| {
        credentials::check_gateway(&body, &state.config.alipay.gateway_policy())?;
        let roots =
            credentials::ProductionRoots::new(&state.config.alipay.production_root_fingerprints);
        let view =
            credentials::put_with_roots(&state.db.conn, &state.vault, &grant, body, &roots).await?;
        // The next notification and trade use the new keys.
        state.payments.forget_merchant(id);
        Ok(view)
    })
    .await
}

async fn generate_keypair(
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<CredentialsView>), ApiError> {
    Ok((StatusCode::CREATED, Json(keypair(&ctx, &id).await?)))
}

/// The one door to a new key pair for a merchant's app, generated and sealed on the server.
pub(super) async fn keypair(ctx: &Ctx, id: &str) -> Result<CredentialsView, ApiError> {
    let state = &ctx.state;
    ctx.change(
        Action::AlipayCredentialsWrite,
        Target::merchant(id),
        "alipay_credentials.keypair",
        ("merchant", Some(id)),
    )
    .run(async |grant| {
        let view = credentials::generate_keypair(&state.db.conn, &state.vault, &grant).await?;
        state.payments.forget_merchant(id);
        Ok(view)
    })
    .await
}
