//! A plugin's configuration for one merchant over HTTP: the JSON object its manifest's schema
//! describes.
//!
//! Invariant: configuration is read or written only for a merchant entitled to the plugin now,
//! and what is stored validates against the plugin's schema.

use axum::extract::Path;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiJson, Ctx, Target};
use crate::rbac::Action;

pub fn router() -> Router<AppState> {
    Router::new().route(
        "/api/v1/merchants/{id}/plugin-configs/{plugin}",
        get(get_config).put(put_config),
    )
}

/// A plugin's configuration for one merchant: the JSON object its manifest's schema describes.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(value_type = Object)]
pub struct PluginConfig(pub Value);

async fn get_config(
    ctx: Ctx,
    Path((id, plugin)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let grant = ctx
        .allow(Action::PluginConfigRead, Target::merchant(&id))
        .await?;
    let merchant = grant.target();
    // Entitled now, like every other way into the plugin.
    ctx.state.catalog.live(merchant, &plugin).await?;
    Ok(Json(ctx.state.catalog.config(merchant, &plugin).await?))
}

async fn put_config(
    ctx: Ctx,
    Path((id, plugin)): Path<(String, String)>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Json<Value>, ApiError> {
    let catalog = &ctx.state.catalog;
    let config = ctx
        .change(
            Action::PluginConfigWrite,
            Target::merchant(&id),
            "plugin_config.update",
            ("plugin", Some(&plugin)),
        )
        .run(async |grant| Ok(catalog.configure(&grant, &plugin, body).await?))
        .await?;
    Ok(Json(config))
}
