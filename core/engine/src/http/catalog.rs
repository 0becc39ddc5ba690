//! The partner's plugin catalog over HTTP: installing and upgrading `.tplug` archives,
//! activating or rolling back a version, offering a plugin to agents, uninstalling, and the
//! partner's plugin policy. `GET /api/v1/plugins` shows each caller what it may see.
//!
//! Invariant: only a partner (or the platform) changes its catalog, every change is audited,
//! and an archive's bytes are read only after the caller is known (see `middleware::limit_body`).

use axum::body::Bytes;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery, Ctx, Target, paged};
use crate::db::{Page, Paged};
use crate::plugins::catalog::{Installation, Policy};
use crate::rbac::{Action, Grant};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/plugins", get(list_plugins))
        .route(
            "/api/v1/partners/{id}/plugins",
            get(partner_plugins).post(install_plugin),
        )
        .route(
            "/api/v1/partners/{id}/plugins/{plugin}",
            get(get_plugin).delete(uninstall_plugin),
        )
        .route(
            "/api/v1/partners/{id}/plugins/{plugin}/activate",
            post(activate_plugin),
        )
        .route(
            "/api/v1/partners/{id}/plugins/{plugin}/rollback",
            post(rollback_plugin),
        )
        .route(
            "/api/v1/partners/{id}/plugins/{plugin}/offer",
            post(offer_plugin),
        )
        .route(
            "/api/v1/partners/{id}/plugins/{plugin}/breaker/reset",
            post(reset_breaker),
        )
        .route(
            "/api/v1/partners/{id}/plugin-policy",
            get(get_policy).put(put_policy),
        )
}

/// What the caller may see: a partner every plugin it installed, an agent what its partner
/// offers, a merchant what it is entitled to now.
async fn list_plugins(
    ctx: Ctx,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<Json<Paged<Installation>>, ApiError> {
    let grant = ctx.allow(Action::PluginRead, Target::own()).await?;
    Ok(Json(paged(
        ctx.state.catalog.list(grant.target()).await?,
        page,
    )))
}

async fn partner_plugins(
    ctx: Ctx,
    Path(id): Path<String>,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<Json<Paged<Installation>>, ApiError> {
    let grant = ctx.allow(Action::PluginRead, Target::partner(&id)).await?;
    Ok(Json(paged(
        ctx.state.catalog.list(grant.target()).await?,
        page,
    )))
}

async fn get_plugin(
    ctx: Ctx,
    Path((id, plugin)): Path<(String, String)>,
) -> Result<Json<Installation>, ApiError> {
    let grant = ctx.allow(Action::PluginRead, Target::partner(&id)).await?;
    Ok(Json(
        ctx.state.catalog.get(grant.target(), &id, &plugin).await?,
    ))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct InstallQuery {
    /// Move every merchant to the new version at once (default: only a first install is active).
    #[serde(default)]
    pub activate: bool,
}

/// Uploads a `.tplug` (the request body, `application/octet-stream`).
async fn install_plugin(
    ctx: Ctx,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<InstallQuery>,
    body: Bytes,
) -> Result<(StatusCode, Json<Installation>), ApiError> {
    let installed = install(&ctx, &id, &body, query.activate).await?;
    Ok((StatusCode::CREATED, Json(installed)))
}

/// The one door to installing or upgrading a plugin from its archive, for the API and the
/// consoles; audited as an install or an upgrade, as the archive turns out to be.
pub(super) async fn install(
    ctx: &Ctx,
    partner_id: &str,
    archive: &[u8],
    activate: bool,
) -> Result<Installation, ApiError> {
    let mut place = None;
    let result = async {
        let grant = ctx
            .allow(Action::PluginManage, Target::partner(partner_id))
            .await;
        place = grant.as_ref().ok().map(|g| g.target().clone());
        let grant = grant?;
        if archive.is_empty() {
            return Err(ApiError::Validation {
                field: "body",
                message: "send the .tplug archive as the request body".into(),
            });
        }
        Ok(ctx.state.catalog.install(&grant, archive, activate).await?)
    }
    .await;
    // Which it was, and of what, only the archive says.
    let action = match &result {
        Ok(i) if i.versions.len() > 1 => "plugin.upgrade",
        _ => "plugin.install",
    };
    let target = result.as_ref().ok().map(|i| i.plugin_id.clone());
    ctx.audited(
        action,
        ("plugin", target.as_deref()),
        place.as_ref(),
        result,
    )
    .await
}

/// A change to an installed plugin, as the consoles and the API ask for it.
#[derive(Debug, Clone)]
pub(super) enum Change {
    Activate(String),
    Rollback,
    ResetBreaker,
    Offer(bool),
    Uninstall { force: bool },
}

/// The one door to changing partner `id`'s installation of `plugin`, audited per kind.
pub(super) async fn change(
    ctx: &Ctx,
    id: &str,
    plugin: &str,
    change: Change,
) -> Result<Installation, ApiError> {
    let catalog = &ctx.state.catalog;
    let audit_as = match &change {
        Change::Activate(_) => "plugin.activate",
        Change::Rollback => "plugin.rollback",
        Change::ResetBreaker => "plugin.breaker_reset",
        Change::Offer(_) => "plugin.offer",
        Change::Uninstall { .. } => "plugin.uninstall",
    };
    let run = async |grant: Grant| {
        Ok(match change {
            Change::Activate(version) => catalog.activate(&grant, plugin, &version).await?,
            Change::Rollback => catalog.rollback(&grant, plugin).await?,
            Change::ResetBreaker => catalog.reset_breaker(&grant, plugin).await?,
            Change::Offer(offered) => catalog.offer(&grant, plugin, offered).await?,
            Change::Uninstall { force } => catalog.uninstall(&grant, plugin, force).await?,
        })
    };
    manage(ctx, id, plugin, audit_as, run).await
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct ActivateRequest {
    pub version: String,
}

/// A change to partner `id`'s catalog about `plugin`, audited as `audit_as`.
async fn manage<T>(
    ctx: &Ctx,
    id: &str,
    plugin: &str,
    audit_as: &str,
    run: impl AsyncFnOnce(Grant) -> Result<T, ApiError>,
) -> Result<T, ApiError> {
    ctx.change(
        Action::PluginManage,
        Target::partner(id),
        audit_as,
        ("plugin", Some(plugin)),
    )
    .run(run)
    .await
}

async fn activate_plugin(
    ctx: Ctx,
    Path((id, plugin)): Path<(String, String)>,
    ApiJson(body): ApiJson<ActivateRequest>,
) -> Result<Json<Installation>, ApiError> {
    let change = Change::Activate(body.version);
    Ok(Json(self::change(&ctx, &id, &plugin, change).await?))
}

async fn rollback_plugin(
    ctx: Ctx,
    Path((id, plugin)): Path<(String, String)>,
) -> Result<Json<Installation>, ApiError> {
    Ok(Json(change(&ctx, &id, &plugin, Change::Rollback).await?))
}

/// Lifts the plugin's suspensions after repeated failures, for every merchant and process.
async fn reset_breaker(
    ctx: Ctx,
    Path((id, plugin)): Path<(String, String)>,
) -> Result<Json<Installation>, ApiError> {
    Ok(Json(
        change(&ctx, &id, &plugin, Change::ResetBreaker).await?,
    ))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct OfferRequest {
    pub offered: bool,
}

async fn offer_plugin(
    ctx: Ctx,
    Path((id, plugin)): Path<(String, String)>,
    ApiJson(body): ApiJson<OfferRequest>,
) -> Result<Json<Installation>, ApiError> {
    let change = Change::Offer(body.offered);
    Ok(Json(self::change(&ctx, &id, &plugin, change).await?))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct UninstallQuery {
    #[serde(default)]
    pub force: bool,
}

async fn uninstall_plugin(
    ctx: Ctx,
    Path((id, plugin)): Path<(String, String)>,
    ApiQuery(query): ApiQuery<UninstallQuery>,
) -> Result<Json<Installation>, ApiError> {
    let change = Change::Uninstall { force: query.force };
    Ok(Json(self::change(&ctx, &id, &plugin, change).await?))
}

async fn get_policy(ctx: Ctx, Path(id): Path<String>) -> Result<Json<Policy>, ApiError> {
    Ok(Json(policy(&ctx, &id).await?))
}

/// A partner's policy on plugin signatures, if the caller may read its plugins.
pub(super) async fn policy(ctx: &Ctx, partner_id: &str) -> Result<Policy, ApiError> {
    ctx.allow(Action::PluginRead, Target::partner(partner_id))
        .await?;
    Ok(ctx.state.catalog.policy(partner_id).await?)
}

async fn put_policy(
    ctx: Ctx,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<Policy>,
) -> Result<Json<Policy>, ApiError> {
    Ok(Json(set_policy(&ctx, &id, body).await?))
}

/// Sets a partner's policy on plugin signatures, audited: the door the API and the console
/// share.
pub(super) async fn set_policy(
    ctx: &Ctx,
    partner_id: &str,
    body: Policy,
) -> Result<Policy, ApiError> {
    let catalog = &ctx.state.catalog;
    let run = async |grant: Grant| Ok(catalog.set_policy(&grant, body).await?);
    manage(ctx, partner_id, "*", "plugin.policy", run).await
}
