//! Plugins in the console: a partner's catalog (upload to install or upgrade, offer to agents,
//! activate a version, roll back, lift a suspension, uninstall); agents see what their partner
//! offers and merchants what they are entitled to, read-only.

use axum::Router;
use axum::extract::{Multipart, Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::super::AppState;
use super::super::catalog::{self as doors, Change};
use super::super::error::ApiError;
use super::super::extract::Target;
use super::{Fields, Look, Signed, refused};
use crate::rbac::Action;
use crate::tenancy::NodeKind;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/console/plugins", get(catalog_page))
        .route("/console/plugins/upload", post(upload))
        .route("/console/plugins/policy", post(policy))
        .route("/console/plugins/{plugin}/{change}", post(change))
}

async fn catalog_page(
    State(state): State<AppState>,
    look: Look,
    signed: Signed,
) -> Result<Response, ApiError> {
    let data = catalog_data(&signed, None).await?;
    look.render(&state, "console-plugins", data)
}

/// The plugins the visitor sees, and whether it manages them (a partner's own catalog).
async fn catalog_data(signed: &Signed, problem: Option<Value>) -> Result<Value, ApiError> {
    let ctx = &signed.ctx;
    let grant = ctx.allow(Action::PluginRead, Target::own()).await?;
    let installed = ctx.state.catalog.list(grant.target()).await?;
    let manages = ctx.caller.place.kind == NodeKind::Partner
        && crate::rbac::allows(ctx.caller.role, Action::PluginManage);
    let mut data = signed.frame("plugins").await?;
    data["plugins"] = json!(installed);
    data["may_manage"] = manages.into();
    if manages {
        let partner = partner_of(signed)?;
        data["policy"] = super::node::policy_view(&doors::policy(ctx, &partner).await?);
    }
    if let Some(problem) = problem {
        data["problem"] = problem;
    }
    Ok(data)
}

/// The partner the visitor manages the catalog of: its own.
fn partner_of(signed: &Signed) -> Result<String, ApiError> {
    signed
        .ctx
        .caller
        .place
        .partner_id
        .clone()
        .filter(|_| signed.ctx.caller.place.kind == NodeKind::Partner)
        .ok_or_else(|| {
            ApiError::Rbac(crate::rbac::Error::Denied {
                action: Action::PluginManage.name(),
            })
        })
}

/// Shows a refused change on the catalog page, or passes the error on.
async fn again(
    state: &AppState,
    look: &Look,
    signed: &Signed,
    error: ApiError,
) -> Result<Response, ApiError> {
    let Some((status, problem)) = refused(&error, json!({})) else {
        return Err(error);
    };
    let data = catalog_data(signed, Some(problem)).await?;
    look.render_as(state, "console-plugins", data, status)
}

/// An archive uploaded from the page (`multipart/form-data`: the form token, the `.tplug` file,
/// whether to move every merchant to it). The engine reads the body only after the caller is
/// known to manage plugins, with the archive size limit (`middleware::limit_body`).
async fn upload(
    State(state): State<AppState>,
    look: Look,
    signed: Signed,
    headers: HeaderMap,
    mut multipart: Multipart,
) -> Result<Response, ApiError> {
    let unreadable = |e: axum::extract::multipart::MultipartError| ApiError::Validation {
        field: "archive",
        message: e.body_text(),
    };
    let (mut token, mut archive, mut activate) = (String::new(), Vec::new(), false);
    while let Some(field) = multipart.next_field().await.map_err(unreadable)? {
        match field.name() {
            Some("form_token") => token = field.text().await.map_err(unreadable)?,
            Some("archive") => archive = field.bytes().await.map_err(unreadable)?.to_vec(),
            Some("activate") => activate = true,
            _ => {}
        }
    }
    signed.check_form(&headers, &token)?;
    let partner = partner_of(&signed)?;
    match doors::install(&signed.ctx, &partner, &archive, activate).await {
        Ok(_) => Ok(Redirect::to("/console/plugins").into_response()),
        Err(error) => again(&state, &look, &signed, error).await,
    }
}

/// The partner's own policy on plugin signatures.
async fn policy(
    State(state): State<AppState>,
    look: Look,
    signed: Signed,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let fields = Fields::parse(&body);
    signed.check_form(&headers, fields.one("form_token"))?;
    let partner = partner_of(&signed)?;
    let policy = super::node::policy_of(&fields);
    match doors::set_policy(&signed.ctx, &partner, policy).await {
        Ok(_) => Ok(Redirect::to("/console/plugins").into_response()),
        Err(error) => again(&state, &look, &signed, error).await,
    }
}

/// One of the buttons beside an installed plugin.
async fn change(
    State(state): State<AppState>,
    look: Look,
    signed: Signed,
    headers: HeaderMap,
    Path((plugin, change)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let fields = Fields::parse(&body);
    signed.check_form(&headers, fields.one("form_token"))?;
    let change = match change.as_str() {
        "offer" => Change::Offer(true),
        "withdraw" => Change::Offer(false),
        "activate" => Change::Activate(fields.one("version").to_owned()),
        "rollback" => Change::Rollback,
        "reset" => Change::ResetBreaker,
        "uninstall" => Change::Uninstall { force: false },
        _ => {
            return Err(ApiError::NotFound(format!(
                "/console/plugins/{plugin}/{change}"
            )));
        }
    };
    let partner = partner_of(&signed)?;
    match doors::change(&signed.ctx, &partner, &plugin, change).await {
        Ok(_) => Ok(Redirect::to("/console/plugins").into_response()),
        Err(error) => again(&state, &look, &signed, error).await,
    }
}
