//! Plugins in the HTTP surface: the partner's catalog, agents' packages and assignments,
//! per-merchant configuration, the delivery log, and the plugins' own routes — admin APIs
//! under `/api/v1/merchants/{id}/plugins/{plugin}/…` and public member pages under
//! `/m/{merchant}/{plugin}/…` on the partner's domain.
//!
//! Invariant: a plugin runs for a merchant only after the caller's RBAC (admin routes) and the
//! merchant's entitlement at this moment are checked, and it never sees the caller's
//! credentials: `Authorization`, `Cookie` and API-key headers are stripped from what it gets,
//! and it cannot set cookies on the partner's domain.

use std::collections::BTreeSet;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Extension, Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::AppState;
use super::api::{ApiJson, ApiQuery, Caller, audited, request_id};
use super::error::ApiError;
use super::middleware::{HostContext, RequestId};
use crate::auth::Principal;
use crate::db::{Page, Paged};
use crate::events::{self, DeliveryFilter, NewEvent};
use crate::packages::{self, Spec};
use crate::plugins::catalog::{Installation, Live, Policy};
use crate::plugins::manifest::Audience;
use crate::plugins::{Call, HttpRequest, HttpResponse};
use crate::rbac::Action;
use crate::tenancy::{self, NodeKind, NodeStatus, Place, Role};
use crate::themes::Locale;

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
            "/api/v1/partners/{id}/plugin-policy",
            get(get_policy).put(put_policy),
        )
        .route("/api/v1/packages", get(list_packages).post(create_package))
        .route(
            "/api/v1/packages/{id}",
            get(get_package).put(update_package),
        )
        .route("/api/v1/packages/{id}/publish", post(publish_package))
        .route("/api/v1/packages/{id}/assignments", post(assign_package))
        .route("/api/v1/assignments", get(list_assignments))
        .route("/api/v1/assignments/{id}/renew", post(renew_assignment))
        .route("/api/v1/assignments/{id}/revoke", post(revoke_assignment))
        .route("/api/v1/merchants/{id}/entitlements", get(entitlements))
        .route(
            "/api/v1/merchants/{id}/plugin-configs/{plugin}",
            get(get_config).put(put_config),
        )
        .route("/api/v1/merchants/{id}/events", post(publish_event))
        .route("/api/v1/deliveries", get(list_deliveries))
        .route("/api/v1/deliveries/{id}/redeliver", post(redeliver))
        .route("/api/v1/merchants/{id}/plugins/{plugin}", any(admin_route))
        .route("/api/v1/merchants/{id}/plugins/{plugin}/", any(admin_route))
        .route(
            "/api/v1/merchants/{id}/plugins/{plugin}/{*rest}",
            any(admin_route),
        )
        .route(
            "/api/v1/stores/{id}/plugins/{plugin}/{*rest}",
            any(admin_route),
        )
        .route(CARD_ACTIVATION_PATH, get(card_activation))
        .route(LEGACY_CARD_ACTIVATION_PATH, get(card_activation))
        .route("/m/{merchant}/{plugin}", any(public_route_root))
        .route("/m/{merchant}/{plugin}/", any(public_route_root))
        .route("/m/{merchant}/{plugin}/{*rest}", any(public_route))
}

fn now(state: &AppState) -> DateTime<Utc> {
    state.catalog.now()
}

async fn partner_in_scope(
    state: &AppState,
    caller: &Principal,
    id: &str,
) -> Result<Place, ApiError> {
    Ok(
        tenancy::find_in_scope(&state.db.conn, &caller.place, Some(NodeKind::Partner), id)
            .await?
            .place(),
    )
}

async fn merchant_in_scope(
    state: &AppState,
    caller: &Principal,
    id: &str,
) -> Result<Place, ApiError> {
    Ok(
        tenancy::find_in_scope(&state.db.conn, &caller.place, Some(NodeKind::Merchant), id)
            .await?
            .place(),
    )
}

// ----- the catalog ---------------------------------------------------------------------------

/// What the caller may see: a partner every plugin it installed, an agent what its partner
/// offers, a merchant what it is entitled to now.
async fn list_plugins(
    State(state): State<AppState>,
    Caller(caller): Caller,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<Json<Paged<Installation>>, ApiError> {
    state
        .rbac
        .authorize(&caller, Action::PluginRead, &caller.place)
        .await?;
    Ok(Json(paged(state.catalog.list(&caller.place).await?, page)))
}

/// A page of a short list that is read whole (a partner's plugins).
fn paged<T>(all: Vec<T>, page: Page) -> Paged<T> {
    let total = u64::try_from(all.len()).unwrap_or(u64::MAX);
    let skip = usize::try_from(page.offset()).unwrap_or(usize::MAX);
    let take = usize::try_from(page.limit()).unwrap_or(usize::MAX);
    page.wrap(all.into_iter().skip(skip).take(take).collect(), total)
}

async fn partner_plugins(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<Json<Paged<Installation>>, ApiError> {
    let partner = partner_in_scope(&state, &caller, &id).await?;
    state
        .rbac
        .authorize(&caller, Action::PluginRead, &partner)
        .await?;
    Ok(Json(paged(state.catalog.list(&partner).await?, page)))
}

async fn get_plugin(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path((id, plugin)): Path<(String, String)>,
) -> Result<Json<Installation>, ApiError> {
    let partner = partner_in_scope(&state, &caller, &id).await?;
    state
        .rbac
        .authorize(&caller, Action::PluginRead, &partner)
        .await?;
    Ok(Json(state.catalog.get(&partner, &id, &plugin).await?))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct InstallQuery {
    /// Move every merchant to the new version at once (default: only a first install is active).
    #[serde(default)]
    pub activate: bool,
}

/// Uploads a `.tplug` (the request body, `application/octet-stream`).
async fn install_plugin(
    State(state): State<AppState>,
    Caller(caller): Caller,
    rid: Option<Extension<RequestId>>,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<InstallQuery>,
    body: Bytes,
) -> Result<(StatusCode, Json<Installation>), ApiError> {
    let mut place = None;
    let mut target = None;
    let result = async {
        let partner = partner_in_scope(&state, &caller, &id).await?;
        place = Some(partner.clone());
        let grant = state
            .rbac
            .authorize(&caller, Action::PluginManage, &partner)
            .await?;
        if body.is_empty() {
            return Err(ApiError::Validation {
                field: "body",
                message: "send the .tplug archive as the request body".into(),
            });
        }
        let installed = state.catalog.install(&grant, &body, query.activate).await?;
        target = Some(installed.plugin_id.clone());
        Ok(installed)
    }
    .await;
    let action = match &result {
        Ok(i) if i.versions.len() > 1 => "plugin.upgrade",
        _ => "plugin.install",
    };
    let installed = audited(
        &state,
        &caller,
        request_id(&rid),
        action,
        ("plugin", target.as_deref()),
        place.as_ref(),
        result,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(installed)))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct ActivateRequest {
    pub version: String,
}

async fn manage<T>(
    state: &AppState,
    caller: &Principal,
    rid: &Option<Extension<RequestId>>,
    id: &str,
    plugin: &str,
    action: &str,
    run: impl AsyncFnOnce(crate::rbac::Grant) -> Result<T, ApiError>,
) -> Result<T, ApiError> {
    let mut place = None;
    let result = async {
        let partner = partner_in_scope(state, caller, id).await?;
        place = Some(partner.clone());
        let grant = state
            .rbac
            .authorize(caller, Action::PluginManage, &partner)
            .await?;
        run(grant).await
    }
    .await;
    audited(
        state,
        caller,
        request_id(rid),
        action,
        ("plugin", Some(plugin)),
        place.as_ref(),
        result,
    )
    .await
}

async fn activate_plugin(
    State(state): State<AppState>,
    Caller(caller): Caller,
    rid: Option<Extension<RequestId>>,
    Path((id, plugin)): Path<(String, String)>,
    ApiJson(body): ApiJson<ActivateRequest>,
) -> Result<Json<Installation>, ApiError> {
    let catalog = state.catalog.clone();
    let result = manage(
        &state,
        &caller,
        &rid,
        &id,
        &plugin,
        "plugin.activate",
        async |grant| Ok(catalog.activate(&grant, &plugin, &body.version).await?),
    )
    .await?;
    Ok(Json(result))
}

async fn rollback_plugin(
    State(state): State<AppState>,
    Caller(caller): Caller,
    rid: Option<Extension<RequestId>>,
    Path((id, plugin)): Path<(String, String)>,
) -> Result<Json<Installation>, ApiError> {
    let catalog = state.catalog.clone();
    let result = manage(
        &state,
        &caller,
        &rid,
        &id,
        &plugin,
        "plugin.rollback",
        async |grant| Ok(catalog.rollback(&grant, &plugin).await?),
    )
    .await?;
    Ok(Json(result))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct OfferRequest {
    pub offered: bool,
}

async fn offer_plugin(
    State(state): State<AppState>,
    Caller(caller): Caller,
    rid: Option<Extension<RequestId>>,
    Path((id, plugin)): Path<(String, String)>,
    ApiJson(body): ApiJson<OfferRequest>,
) -> Result<Json<Installation>, ApiError> {
    let catalog = state.catalog.clone();
    let result = manage(
        &state,
        &caller,
        &rid,
        &id,
        &plugin,
        "plugin.offer",
        async |grant| Ok(catalog.offer(&grant, &plugin, body.offered).await?),
    )
    .await?;
    Ok(Json(result))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct UninstallQuery {
    #[serde(default)]
    pub force: bool,
}

async fn uninstall_plugin(
    State(state): State<AppState>,
    Caller(caller): Caller,
    rid: Option<Extension<RequestId>>,
    Path((id, plugin)): Path<(String, String)>,
    ApiQuery(query): ApiQuery<UninstallQuery>,
) -> Result<Json<Installation>, ApiError> {
    let catalog = state.catalog.clone();
    let result = manage(
        &state,
        &caller,
        &rid,
        &id,
        &plugin,
        "plugin.uninstall",
        async |grant| Ok(catalog.uninstall(&grant, &plugin, query.force).await?),
    )
    .await?;
    Ok(Json(result))
}

async fn get_policy(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<Policy>, ApiError> {
    let partner = partner_in_scope(&state, &caller, &id).await?;
    state
        .rbac
        .authorize(&caller, Action::PluginRead, &partner)
        .await?;
    Ok(Json(state.catalog.policy(&id).await?))
}

async fn put_policy(
    State(state): State<AppState>,
    Caller(caller): Caller,
    rid: Option<Extension<RequestId>>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<Policy>,
) -> Result<Json<Policy>, ApiError> {
    let catalog = state.catalog.clone();
    let result = manage(
        &state,
        &caller,
        &rid,
        &id,
        "*",
        "plugin.policy",
        async |grant| Ok(catalog.set_policy(&grant, body).await?),
    )
    .await?;
    Ok(Json(result))
}

// ----- packages and assignments --------------------------------------------------------------

async fn list_packages(
    State(state): State<AppState>,
    Caller(caller): Caller,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<Json<Paged<packages::Package>>, ApiError> {
    state
        .rbac
        .authorize(&caller, Action::PackageRead, &caller.place)
        .await?;
    Ok(Json(
        packages::list(&state.db.conn, &caller.place, page).await?,
    ))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CreatePackageRequest {
    /// The agent that owns the package; defaults to the caller's own agent.
    #[serde(default)]
    pub agent_id: Option<String>,
    #[serde(flatten)]
    pub spec: Spec,
}

async fn offered_for(state: &AppState, place: &Place) -> Result<BTreeSet<String>, ApiError> {
    let partner = place.partner_id.clone().unwrap_or_default();
    Ok(state.catalog.offered(&partner).await?)
}

async fn create_package(
    State(state): State<AppState>,
    Caller(caller): Caller,
    rid: Option<Extension<RequestId>>,
    ApiJson(body): ApiJson<CreatePackageRequest>,
) -> Result<(StatusCode, Json<packages::Package>), ApiError> {
    let mut place = None;
    let mut target = None;
    let result = async {
        let agent_id = body
            .agent_id
            .clone()
            .or_else(|| caller.place.agent_id.clone())
            .ok_or(ApiError::Validation {
                field: "agent_id",
                message: "name the agent that owns the package".into(),
            })?;
        let agent = tenancy::find_in_scope(
            &state.db.conn,
            &caller.place,
            Some(NodeKind::Agent),
            &agent_id,
        )
        .await?
        .place();
        place = Some(agent.clone());
        let grant = state
            .rbac
            .authorize(&caller, Action::PackageWrite, &agent)
            .await?;
        let offered = offered_for(&state, &agent).await?;
        let package =
            packages::create(&state.db.conn, &grant, body.spec, &offered, now(&state)).await?;
        target = Some(package.id.clone());
        Ok(package)
    }
    .await;
    let package = audited(
        &state,
        &caller,
        request_id(&rid),
        "package.create",
        ("package", target.as_deref()),
        place.as_ref(),
        result,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(package)))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PackageDetail {
    #[serde(flatten)]
    pub package: packages::Package,
    pub versions: Vec<packages::PackageVersion>,
}

async fn get_package(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<PackageDetail>, ApiError> {
    state
        .rbac
        .authorize(&caller, Action::PackageRead, &caller.place)
        .await?;
    let package = packages::get(&state.db.conn, &caller.place, &id).await?;
    let versions = packages::versions(&state.db.conn, &id).await?;
    Ok(Json(PackageDetail { package, versions }))
}

async fn package_place(
    state: &AppState,
    caller: &Principal,
    id: &str,
) -> Result<(packages::Package, Place), ApiError> {
    let package = packages::get(&state.db.conn, &caller.place, id).await?;
    let agent = tenancy::find_in_scope(
        &state.db.conn,
        &caller.place,
        Some(NodeKind::Agent),
        &package.agent_id,
    )
    .await?
    .place();
    Ok((package, agent))
}

async fn update_package(
    State(state): State<AppState>,
    Caller(caller): Caller,
    rid: Option<Extension<RequestId>>,
    Path(id): Path<String>,
    ApiJson(spec): ApiJson<Spec>,
) -> Result<Json<packages::Package>, ApiError> {
    let mut place = None;
    let result = async {
        let (_, agent) = package_place(&state, &caller, &id).await?;
        place = Some(agent.clone());
        let grant = state
            .rbac
            .authorize(&caller, Action::PackageWrite, &agent)
            .await?;
        let offered = offered_for(&state, &agent).await?;
        Ok(
            packages::update_draft(&state.db.conn, &grant, &id, spec, &offered, now(&state))
                .await?,
        )
    }
    .await;
    let package = audited(
        &state,
        &caller,
        request_id(&rid),
        "package.update",
        ("package", Some(&id)),
        place.as_ref(),
        result,
    )
    .await?;
    Ok(Json(package))
}

async fn publish_package(
    State(state): State<AppState>,
    Caller(caller): Caller,
    rid: Option<Extension<RequestId>>,
    Path(id): Path<String>,
) -> Result<Json<packages::PackageVersion>, ApiError> {
    let mut place = None;
    let result = async {
        let (_, agent) = package_place(&state, &caller, &id).await?;
        place = Some(agent.clone());
        let grant = state
            .rbac
            .authorize(&caller, Action::PackageWrite, &agent)
            .await?;
        let offered = offered_for(&state, &agent).await?;
        Ok(packages::publish(&state.db.conn, &grant, &id, &offered, now(&state)).await?)
    }
    .await;
    let version = audited(
        &state,
        &caller,
        request_id(&rid),
        "package.publish",
        ("package", Some(&id)),
        place.as_ref(),
        result,
    )
    .await?;
    Ok(Json(version))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct AssignRequest {
    pub merchant_ids: Vec<String>,
    /// A date (China business day) or an RFC 3339 instant; default now.
    #[serde(default)]
    pub starts_at: Option<String>,
    /// Default: the start plus the package's validity.
    #[serde(default)]
    pub ends_at: Option<String>,
}

async fn assign_package(
    State(state): State<AppState>,
    Caller(caller): Caller,
    rid: Option<Extension<RequestId>>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<AssignRequest>,
) -> Result<(StatusCode, Json<Vec<packages::Assignment>>), ApiError> {
    let mut place = None;
    let result = async {
        if body.merchant_ids.is_empty() || body.merchant_ids.len() > 500 {
            return Err(ApiError::Validation {
                field: "merchant_ids",
                message: "name 1 to 500 merchants".into(),
            });
        }
        // The merchants first: a caller who may not assign learns nothing about packages.
        let mut grants = Vec::new();
        for merchant_id in &body.merchant_ids {
            let merchant = merchant_in_scope(&state, &caller, merchant_id).await?;
            grants.push(
                state
                    .rbac
                    .authorize(&caller, Action::AssignmentWrite, &merchant)
                    .await?,
            );
        }
        let (package, agent) = package_place(&state, &caller, &id).await?;
        place = Some(agent.clone());
        let now = now(&state);
        let starts_at = match &body.starts_at {
            Some(text) => packages::parse_instant("starts_at", text, false)?,
            None => now,
        };
        let ends_at = body
            .ends_at
            .as_deref()
            .map(|t| packages::parse_instant("ends_at", t, true))
            .transpose()?;
        Ok(packages::assign(&state.db.conn, &grants, &package, starts_at, ends_at, now).await?)
    }
    .await;
    let assigned = audited(
        &state,
        &caller,
        request_id(&rid),
        "assignment.create",
        ("package", Some(&id)),
        place.as_ref(),
        result,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(assigned)))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct AssignmentQuery {
    #[serde(default)]
    pub merchant_id: Option<String>,
}

async fn list_assignments(
    State(state): State<AppState>,
    Caller(caller): Caller,
    ApiQuery(query): ApiQuery<AssignmentQuery>,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<Json<Paged<packages::Assignment>>, ApiError> {
    let scope = match &query.merchant_id {
        Some(id) => merchant_in_scope(&state, &caller, id).await?,
        None => caller.place.clone(),
    };
    state
        .rbac
        .authorize(&caller, Action::AssignmentRead, &scope)
        .await?;
    Ok(Json(
        packages::list_assignments(
            &state.db.conn,
            &scope,
            query.merchant_id.as_deref(),
            now(&state),
            page,
        )
        .await?,
    ))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
pub struct RenewRequest {
    #[serde(default)]
    pub ends_at: Option<String>,
}

async fn change_assignment(
    state: &AppState,
    caller: &Principal,
    rid: &Option<Extension<RequestId>>,
    id: &str,
    renew: Option<RenewRequest>,
) -> Result<packages::Assignment, ApiError> {
    let mut place = None;
    let action = if renew.is_some() {
        "assignment.renew"
    } else {
        "assignment.revoke"
    };
    let result = async {
        let now = now(state);
        let assignment = packages::get_assignment(&state.db.conn, &caller.place, id, now).await?;
        let merchant = merchant_in_scope(state, caller, &assignment.merchant_id).await?;
        place = Some(merchant.clone());
        let grant = state
            .rbac
            .authorize(caller, Action::AssignmentWrite, &merchant)
            .await?;
        Ok(match renew {
            Some(body) => {
                let ends_at = body
                    .ends_at
                    .as_deref()
                    .map(|t| packages::parse_instant("ends_at", t, true))
                    .transpose()?;
                packages::renew(&state.db.conn, &grant, &assignment, ends_at, now).await?
            }
            None => packages::revoke(&state.db.conn, &grant, &assignment, now).await?,
        })
    }
    .await;
    audited(
        state,
        caller,
        request_id(rid),
        action,
        ("assignment", Some(id)),
        place.as_ref(),
        result,
    )
    .await
}

async fn renew_assignment(
    State(state): State<AppState>,
    Caller(caller): Caller,
    rid: Option<Extension<RequestId>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<packages::Assignment>, ApiError> {
    // The body is optional: empty renews by the package's validity.
    let body: RenewRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RenewRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::Validation {
            field: "body",
            message: e.to_string(),
        })?
    };
    Ok(Json(
        change_assignment(&state, &caller, &rid, &id, Some(body)).await?,
    ))
}

async fn revoke_assignment(
    State(state): State<AppState>,
    Caller(caller): Caller,
    rid: Option<Extension<RequestId>>,
    Path(id): Path<String>,
) -> Result<Json<packages::Assignment>, ApiError> {
    Ok(Json(
        change_assignment(&state, &caller, &rid, &id, None).await?,
    ))
}

async fn entitlements(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<Vec<packages::Entitlement>>, ApiError> {
    let merchant = merchant_in_scope(&state, &caller, &id).await?;
    state
        .rbac
        .authorize(&caller, Action::AssignmentRead, &merchant)
        .await?;
    let held = packages::entitlements(&state.db.conn, &id, now(&state)).await?;
    Ok(Json(held.into_values().collect()))
}

// ----- configuration ---------------------------------------------------------------------------

/// A plugin's configuration for one merchant: the JSON object its manifest's schema describes.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(value_type = Object)]
pub struct PluginConfig(pub Value);

async fn get_config(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path((id, plugin)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let merchant = merchant_in_scope(&state, &caller, &id).await?;
    state
        .rbac
        .authorize(&caller, Action::PluginConfigRead, &merchant)
        .await?;
    // Entitled now, like every other way into the plugin.
    state.catalog.live(&merchant, &plugin).await?;
    Ok(Json(state.catalog.config(&merchant, &plugin).await?))
}

async fn put_config(
    State(state): State<AppState>,
    Caller(caller): Caller,
    rid: Option<Extension<RequestId>>,
    Path((id, plugin)): Path<(String, String)>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Json<Value>, ApiError> {
    let mut place = None;
    let result = async {
        let merchant = merchant_in_scope(&state, &caller, &id).await?;
        place = Some(merchant.clone());
        let grant = state
            .rbac
            .authorize(&caller, Action::PluginConfigWrite, &merchant)
            .await?;
        Ok(state.catalog.configure(&grant, &plugin, body).await?)
    }
    .await;
    let config = audited(
        &state,
        &caller,
        request_id(&rid),
        "plugin_config.update",
        ("plugin", Some(&plugin)),
        place.as_ref(),
        result,
    )
    .await?;
    Ok(Json(config))
}

// ----- events and deliveries -----------------------------------------------------------------

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct PublishEventRequest {
    pub kind: String,
    #[serde(default)]
    pub payload: Value,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Published {
    pub event_id: String,
}

/// A partner (or the platform) sends an event for one of its merchants — a test event, or one
/// from a system outside Trellis — to every subscribing plugin.
async fn publish_event(
    State(state): State<AppState>,
    Caller(caller): Caller,
    rid: Option<Extension<RequestId>>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<PublishEventRequest>,
) -> Result<(StatusCode, Json<Published>), ApiError> {
    let mut place = None;
    let result = async {
        let merchant = merchant_in_scope(&state, &caller, &id).await?;
        place = Some(merchant.clone());
        let partner = Place::of_partner(merchant.partner_id.as_deref().unwrap_or_default());
        state
            .rbac
            .authorize(&caller, Action::PluginManage, &partner)
            .await?;
        if crate::plugins::manifest::is_reserved_event(&body.kind) {
            return Err(ApiError::Validation {
                field: "kind",
                message: format!("{} is an engine event; only the engine sends it", body.kind),
            });
        }
        if body.payload.to_string().len() > crate::plugins::MAX_INPUT_BYTES {
            return Err(ApiError::Validation {
                field: "payload",
                message: "the payload is larger than 1 MiB".into(),
            });
        }
        let event = NewEvent {
            kind: body.kind,
            place: merchant,
            payload: body.payload,
            source: format!("api:{}", caller.id),
            occurred_at: now(&state),
            depth: 0,
        };
        Ok(state.catalog.emit(&event).await?)
    }
    .await;
    let event_id = audited(
        &state,
        &caller,
        request_id(&rid),
        "event.publish",
        ("merchant", Some(&id)),
        place.as_ref(),
        result,
    )
    .await?;
    Ok((StatusCode::ACCEPTED, Json(Published { event_id })))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct DeliveryQuery {
    #[serde(default)]
    pub merchant_id: Option<String>,
    #[serde(default)]
    pub installation_id: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub event_id: Option<String>,
}

/// The delivery log: a merchant sees its own, the tiers above everything below them.
async fn list_deliveries(
    State(state): State<AppState>,
    Caller(caller): Caller,
    ApiQuery(query): ApiQuery<DeliveryQuery>,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<Json<Paged<events::Delivery>>, ApiError> {
    let scope = match &query.merchant_id {
        Some(id) => merchant_in_scope(&state, &caller, id).await?,
        None => caller.place.clone(),
    };
    state
        .rbac
        .authorize(&caller, Action::DeliveryRead, &scope)
        .await?;
    if let Some(status) = &query.status
        && !matches!(
            status.as_str(),
            "pending" | "delivered" | "skipped" | "dead"
        )
    {
        return Err(ApiError::Validation {
            field: "status",
            message: "one of pending, delivered, skipped, dead".into(),
        });
    }
    let filter = DeliveryFilter {
        installation_id: query.installation_id,
        status: query.status,
        event_id: query.event_id,
        limit: page.limit(),
        offset: page.offset(),
    };
    let (items, total) = events::deliveries(&state.db.conn, &scope, &filter).await?;
    Ok(Json(page.wrap(items, total)))
}

async fn redeliver(
    State(state): State<AppState>,
    Caller(caller): Caller,
    rid: Option<Extension<RequestId>>,
    Path(id): Path<String>,
) -> Result<Json<events::Delivery>, ApiError> {
    let place = caller.place.clone();
    let result = async {
        let delivery = events::delivery(&state.db.conn, &caller.place, &id).await?;
        state
            .rbac
            .authorize(&caller, Action::DeliveryRedeliver, &caller.place)
            .await?;
        events::redeliver(&state.db.conn, &delivery, now(&state)).await?;
        Ok(events::delivery(&state.db.conn, &caller.place, &id).await?)
    }
    .await;
    let delivery = audited(
        &state,
        &caller,
        request_id(&rid),
        "delivery.redeliver",
        ("delivery", Some(&id)),
        Some(&place),
        result,
    )
    .await?;
    Ok(Json(delivery))
}

// ----- the plugins' own routes ---------------------------------------------------------------

/// Headers a plugin never sees: the caller's credentials and hop-by-hop fields.
const STRIPPED: [&str; 7] = [
    "authorization",
    "cookie",
    "proxy-authorization",
    "x-api-key",
    "connection",
    "transfer-encoding",
    "host",
];

/// Response headers a plugin may set; everything else (notably `Set-Cookie`) is dropped.
const ALLOWED_RESPONSE: [&str; 9] = [
    "content-type",
    "cache-control",
    "location",
    "etag",
    "last-modified",
    "content-language",
    "content-disposition",
    "vary",
    "expires",
];

/// The header carrying the origin of the merchant's partner domain, such as
/// `https://pay.partner.example`: where member pages and Alipay callbacks live.
pub const ORIGIN_HEADER: &str = "x-trellis-origin";

/// The header carrying the merchant's member quota from its packages, when one is set.
pub const MAX_MEMBERS_HEADER: &str = "x-trellis-max-members";

/// What the engine tells a plugin beside the request: the partner domain's origin and the
/// merchant's package quotas.
fn engine_headers(origin: Option<String>, live: &Live) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(origin) = origin {
        out.push((ORIGIN_HEADER.to_owned(), origin));
    }
    if let Some(max) = live.quotas.max_members {
        out.push((MAX_MEMBERS_HEADER.to_owned(), max.to_string()));
    }
    out
}

fn plugin_request(
    method: &Method,
    rest: &str,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
    engine: Vec<(String, String)>,
) -> HttpRequest {
    let mut forwarded: Vec<(String, String)> = headers
        .iter()
        // `x-trellis-*` is the engine's to set: a client cannot forge it.
        .filter(|(name, _)| {
            !STRIPPED.contains(&name.as_str()) && !name.as_str().starts_with("x-trellis-")
        })
        .filter_map(|(name, value)| {
            value
                .to_str()
                .ok()
                .map(|v| (name.as_str().to_owned(), v.to_owned()))
        })
        .collect();
    forwarded.extend(engine);
    HttpRequest {
        method: method.as_str().to_owned(),
        path: format!("/{}", rest.trim_start_matches('/')),
        query: uri.query().unwrap_or_default().to_owned(),
        headers: forwarded,
        body: body.to_vec(),
    }
}

/// The origin of the partner's domain for a request about one of its merchants: the domain the
/// request arrived on when it is that partner's, else the partner's first domain. Either way the
/// name is a stored domain, never the raw `Host` header.
async fn partner_origin(
    state: &AppState,
    host: &HostContext,
    headers: &HeaderMap,
    partner_id: Option<&str>,
) -> Result<Option<String>, ApiError> {
    let Some(partner_id) = partner_id else {
        return Ok(None);
    };
    let configured = state.config.http.public_scheme.as_str();
    if host.partner_id() == Some(partner_id) {
        let scheme = match headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
        {
            Some("http") => "http",
            Some("https") => "https",
            _ => configured,
        };
        return Ok(host.partner_origin(scheme));
    }
    Ok(tenancy::first_domain(&state.db.conn, partner_id)
        .await?
        .map(|domain| format!("{configured}://{domain}")))
}

/// Whether a plugin's `Location` stays on this site: a path, not another origin.
fn is_local_location(value: &str) -> bool {
    value.starts_with('/') && !value.starts_with("//") && !value.starts_with("/\\")
}

/// The plugin's answer as an HTTP response. `admin`: an authenticated API answer, which no
/// shared cache may keep.
fn plugin_response(response: HttpResponse, admin: bool) -> Response {
    let status = StatusCode::from_u16(response.status)
        .ok()
        .filter(|s| !s.is_informational())
        .unwrap_or(StatusCode::BAD_GATEWAY);
    let mut out = (status, response.body).into_response();
    let headers = out.headers_mut();
    for (name, value) in response.headers {
        let lower = name.to_ascii_lowercase();
        if !ALLOWED_RESPONSE.contains(&lower.as_str())
            || (lower == "location" && !is_local_location(&value))
            || (admin && lower == "cache-control")
        {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            header::HeaderName::from_bytes(lower.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            // The body's default `application/octet-stream` gives way to the plugin's type.
            if name == header::CONTENT_TYPE {
                headers.insert(name, value);
            } else {
                headers.append(name, value);
            }
        }
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if admin {
        headers.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("private, no-store"),
        );
    }
    // The page runs in an opaque origin: its scripts cannot read or ride the partner domain's
    // session (it is served on the same host as the admin console).
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "sandbox allow-scripts allow-forms allow-popups allow-top-navigation-by-user-activation",
        ),
    );
    out
}

fn locale_of(headers: &HeaderMap) -> &'static str {
    Locale::negotiate(
        headers
            .get(header::ACCEPT_LANGUAGE)
            .and_then(|v| v.to_str().ok()),
    )
    .tag()
}

/// The tiers a route's audience admits at a merchant's admin path; a store's path admits
/// `staff` routes only, for everyone who may view the store's plugins.
fn admits(audience: Audience, role: Role) -> bool {
    match audience {
        Audience::Member => false,
        Audience::Staff | Audience::Merchant => matches!(
            role,
            Role::MerchantOwner | Role::AgentAdmin | Role::PartnerAdmin | Role::PlatformAdmin
        ),
        Audience::Agent => matches!(
            role,
            Role::AgentAdmin | Role::PartnerAdmin | Role::PlatformAdmin
        ),
        Audience::Partner => matches!(role, Role::PartnerAdmin | Role::PlatformAdmin),
    }
}

/// The node an admin plugin path names.
#[derive(Clone, Copy, PartialEq, Eq)]
enum AdminPath {
    /// `/api/v1/merchants/{id}/plugins/…`: `merchant` routes (and `staff` views above staff).
    Merchant,
    /// `/api/v1/stores/{id}/plugins/…`: `staff` views, for the store's staff and above.
    Store,
}

/// Every admin path of a plugin's routes, merchant and store, with or without a rest: the
/// matched pattern says which node the path names.
#[allow(
    clippy::too_many_arguments,
    reason = "an axum handler takes its extractors as arguments"
)]
async fn admin_route(
    State(state): State<AppState>,
    Caller(caller): Caller,
    rid: Option<Extension<RequestId>>,
    Extension(host): Extension<HostContext>,
    matched: axum::extract::MatchedPath,
    Path(params): Path<std::collections::HashMap<String, String>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let path = if matched.as_str().starts_with("/api/v1/stores/") {
        AdminPath::Store
    } else {
        AdminPath::Merchant
    };
    let param = |name: &str| params.get(name).cloned().unwrap_or_default();
    let call = AdminCall {
        caller,
        rid,
        host,
        id: param("id"),
        plugin: param("plugin"),
        rest: param("rest"),
        method,
        uri,
        headers,
        body,
    };
    admin_call(state, path, call).await
}

/// One admin call to a plugin's route.
struct AdminCall {
    caller: Principal,
    rid: Option<Extension<RequestId>>,
    host: HostContext,
    id: String,
    plugin: String,
    rest: String,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
}

/// Checks, in order: the node is in the caller's subtree, RBAC (`plugin.use` on a merchant,
/// `plugin.view` on a store), the route's audience, and the merchant's entitlement now.
async fn admin_call(
    state: AppState,
    path: AdminPath,
    call: AdminCall,
) -> Result<Response, ApiError> {
    let AdminCall {
        caller,
        rid,
        host,
        id,
        plugin,
        rest,
        method,
        uri,
        headers,
        body,
    } = call;
    let mutating = method != Method::GET && method != Method::HEAD;
    let mut place = None;
    let result = async {
        let (node, action) = match path {
            AdminPath::Merchant => (NodeKind::Merchant, Action::PluginUse),
            AdminPath::Store => (NodeKind::Store, Action::PluginView),
        };
        let target = tenancy::find_in_scope(&state.db.conn, &caller.place, Some(node), &id)
            .await?
            .place();
        place = Some(target.clone());
        state.rbac.authorize(&caller, action, &target).await?;
        let live = state.catalog.live(&target, &plugin).await?;
        let origin = partner_origin(&state, &host, &headers, target.partner_id.as_deref()).await?;
        let engine = engine_headers(origin, &live);
        let request = plugin_request(&method, &rest, &uri, &headers, body, engine);
        let manifest = &live.loaded.manifest;
        // The route the runtime will dispatch to (the first that matches) is the one whose
        // audience counts: a later route of a wider audience must not admit the call.
        let admitted = manifest
            .match_route(&request.method, &request.path)
            .is_some_and(|(r, _)| match path {
                AdminPath::Merchant => admits(r.audience, caller.role),
                AdminPath::Store => r.audience == Audience::Staff,
            });
        if !admitted {
            return Err(ApiError::NotFound(uri.path().to_owned()));
        }
        run_route(&state, &live, &target, &headers, request, true).await
    }
    .await;
    if mutating {
        audited(
            &state,
            &caller,
            request_id(&rid),
            "plugin.call",
            ("plugin", Some(&plugin)),
            place.as_ref(),
            result,
        )
        .await
    } else {
        result
    }
}

/// The member card's activation callback, clean path.
pub const CARD_ACTIVATION_PATH: &str = "/callbacks/alipay/card-activation";
/// The same callback at the path the seed system registered with Alipay, so partners moving
/// from it keep the 授权回调地址 Alipay already approved.
pub const LEGACY_CARD_ACTIVATION_PATH: &str = "/index.php/wxapi/Al/auth/membercode/notify";

/// Alipay's redirect after a consumer confirms the card form (`auth_code`, `app_id`,
/// `template_id`, `request_id`, `out_string`), on the partner's domain. The merchant is the
/// partner's merchant whose Alipay app is `app_id` (when several share the app, the one named
/// by `out_string`); the plugin is the merchant's entitled plugin that answers the
/// `alipay.card-activation` callback, which gets the query as it came.
async fn card_activation(
    State(state): State<AppState>,
    Extension(host): Extension<HostContext>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let not_found = || ApiError::NotFound(uri.path().to_owned());
    let partner_id = host.partner_id().ok_or_else(not_found)?;
    let query: std::collections::BTreeMap<String, String> =
        url::form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let app_id = query
        .get("app_id")
        .filter(|a| !a.is_empty() && a.len() <= 32 && a.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| ApiError::Validation {
            field: "app_id",
            message: "the callback names no Alipay app".into(),
        })?;
    let candidates =
        crate::alipay::credentials::merchants_for_app(&state.db.conn, partner_id, app_id).await?;
    let merchant_id = match candidates.as_slice() {
        [only] => only.clone(),
        many => query
            .get("out_string")
            .filter(|named| many.contains(named))
            .cloned()
            .ok_or_else(not_found)?,
    };
    let node = tenancy::find_in_scope(
        &state.db.conn,
        &Place::of_partner(partner_id),
        Some(NodeKind::Merchant),
        &merchant_id,
    )
    .await
    .map_err(|_| not_found())?;
    let merchant = node.place();
    if node.status != NodeStatus::Active || tenancy::is_blocked(&state.db.conn, &merchant).await? {
        return Err(packages::Error::NotEntitled("alipay.card-activation".into()).into());
    }
    let entitled = packages::entitlements(&state.db.conn, &merchant_id, now(&state)).await?;
    for plugin in entitled.keys() {
        let Ok(live) = state.catalog.live(&merchant, plugin).await else {
            continue;
        };
        let Some(route) = live
            .loaded
            .manifest
            .routes
            .iter()
            .find(|r| r.callback.as_deref() == Some("alipay.card-activation"))
            .cloned()
        else {
            continue;
        };
        let origin = partner_origin(&state, &host, &headers, Some(partner_id)).await?;
        let engine = engine_headers(origin, &live);
        let request = plugin_request(&method, &route.path, &uri, &headers, Bytes::new(), engine);
        return run_route(&state, &live, &merchant, &headers, request, false).await;
    }
    Err(packages::Error::NotEntitled("alipay.card-activation".into()).into())
}

async fn public_route_root(
    state: State<AppState>,
    host: Extension<HostContext>,
    Path((merchant, plugin)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    public_route(
        state,
        host,
        Path((merchant, plugin, String::new())),
        method,
        uri,
        headers,
        body,
    )
    .await
}

/// A member page: no sign-in, on the partner's own domain (404 on another partner's), for an
/// active merchant entitled to the plugin now.
async fn public_route(
    State(state): State<AppState>,
    Extension(host): Extension<HostContext>,
    Path((merchant_id, plugin, rest)): Path<(String, String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let not_found = || ApiError::NotFound(uri.path().to_owned());
    let node = tenancy::find_in_scope(
        &state.db.conn,
        &Place::platform_scope(),
        Some(NodeKind::Merchant),
        &merchant_id,
    )
    .await
    .map_err(|_| not_found())?;
    // Member pages live on their partner's own domain only: not on the console, another
    // partner's domain or a bare address.
    if host.partner_id().is_none() || node.partner_id.as_deref() != host.partner_id() {
        return Err(not_found());
    }
    let merchant = node.place();
    if node.status != NodeStatus::Active || tenancy::is_blocked(&state.db.conn, &merchant).await? {
        return Err(packages::Error::NotEntitled(plugin).into());
    }
    let live = state.catalog.live(&merchant, &plugin).await?;
    let origin = partner_origin(&state, &host, &headers, merchant.partner_id.as_deref()).await?;
    let engine = engine_headers(origin, &live);
    let request = plugin_request(&method, &rest, &uri, &headers, body, engine);
    let admitted = live
        .loaded
        .manifest
        .match_route(&request.method, &request.path)
        .is_some_and(|(r, _)| r.audience == Audience::Member);
    if !admitted {
        return Err(not_found());
    }
    run_route(&state, &live, &merchant, &headers, request, false).await
}

/// Runs one of a live plugin's routes for `place` and answers with what it returned.
/// `admin`: an authenticated API answer, which no shared cache may keep.
async fn run_route(
    state: &AppState,
    live: &Live,
    place: &Place,
    headers: &HeaderMap,
    request: HttpRequest,
    admin: bool,
) -> Result<Response, ApiError> {
    let outcome = state
        .catalog
        .invoke(live, place, locale_of(headers), Call::Http(request), 0)
        .await;
    match outcome.result? {
        crate::plugins::Output::Http(response) => Ok(plugin_response(response, admin)),
        other => Err(ApiError::Internal(anyhow::anyhow!(
            "route answered {other:?}"
        ))),
    }
}
