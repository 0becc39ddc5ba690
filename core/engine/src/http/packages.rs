//! Agents' packages (套餐) and their assignment to merchants over HTTP, and what a merchant is
//! entitled to now.
//!
//! Invariant: a package names only plugins its partner offers, an assignment is made only to
//! merchants inside the caller's subtree (each authorized before the package is even looked
//! up), and every change is audited.

use std::collections::BTreeSet;

use axum::body::Bytes;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery, Ctx, Target};
use crate::db::{Page, Paged};
use crate::packages::{self, Spec};
use crate::rbac::Action;
use crate::tenancy::{self, NodeKind, Place};

pub fn router() -> Router<AppState> {
    Router::new()
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
}

fn now(ctx: &Ctx) -> DateTime<Utc> {
    ctx.state.catalog.now()
}

async fn list_packages(
    ctx: Ctx,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<Json<Paged<packages::Package>>, ApiError> {
    let grant = ctx.allow(Action::PackageRead, Target::own()).await?;
    Ok(Json(
        packages::list(&ctx.state.db.conn, grant.target(), page).await?,
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

/// The plugins agent `place`'s partner offers, which its packages may name.
async fn offered_for(ctx: &Ctx, place: &Place) -> Result<BTreeSet<String>, ApiError> {
    let partner = place.partner_id.clone().unwrap_or_default();
    Ok(ctx.state.catalog.offered(&partner).await?)
}

async fn create_package(
    ctx: Ctx,
    ApiJson(body): ApiJson<CreatePackageRequest>,
) -> Result<(StatusCode, Json<packages::Package>), ApiError> {
    Ok((StatusCode::CREATED, Json(create(&ctx, body).await?)))
}

/// The one door to a new package, for the API and the consoles: at its agent, naming only
/// plugins the partner offers, audited.
pub(super) async fn create(
    ctx: &Ctx,
    body: CreatePackageRequest,
) -> Result<packages::Package, ApiError> {
    let agent_id = body
        .agent_id
        .clone()
        .or_else(|| ctx.caller.place.agent_id.clone());
    let Some(agent_id) = agent_id else {
        let error = ApiError::Validation {
            field: "agent_id",
            message: "name the agent that owns the package".into(),
        };
        return ctx
            .audited("package.create", ("package", None), None, Err(error))
            .await;
    };
    let conn = &ctx.state.db.conn;
    ctx.change(
        Action::PackageWrite,
        Target::Node(Some(NodeKind::Agent), &agent_id),
        "package.create",
        ("package", None),
    )
    .run_new(
        async |grant| {
            let offered = offered_for(ctx, grant.target()).await?;
            Ok(packages::create(conn, &grant, body.spec, &offered, now(ctx)).await?)
        },
        |package| Some(package.id.clone()),
    )
    .await
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PackageDetail {
    #[serde(flatten)]
    pub package: packages::Package,
    pub versions: Vec<packages::PackageVersion>,
}

async fn get_package(ctx: Ctx, Path(id): Path<String>) -> Result<Json<PackageDetail>, ApiError> {
    Ok(Json(detail(&ctx, &id).await?))
}

/// A package inside the caller's subtree with its published versions.
pub(super) async fn detail(ctx: &Ctx, id: &str) -> Result<PackageDetail, ApiError> {
    let grant = ctx.allow(Action::PackageRead, Target::own()).await?;
    let package = packages::get(&ctx.state.db.conn, grant.target(), id).await?;
    let versions = packages::versions(&ctx.state.db.conn, id).await?;
    Ok(PackageDetail { package, versions })
}

/// The agent that owns package `id`, inside the caller's subtree.
async fn package_place(ctx: &Ctx, id: &str) -> Result<(packages::Package, Place), ApiError> {
    let conn = &ctx.state.db.conn;
    let package = packages::get(conn, &ctx.caller.place, id).await?;
    let agent = tenancy::find_in_scope(
        conn,
        &ctx.caller.place,
        Some(NodeKind::Agent),
        &package.agent_id,
    )
    .await?
    .place();
    Ok((package, agent))
}

/// A change to draft or publish package `id`, authorized at its agent and audited as `audit_as`.
async fn change_package<T>(
    ctx: &Ctx,
    id: &str,
    audit_as: &str,
    work: impl AsyncFnOnce(crate::rbac::Grant, BTreeSet<String>) -> Result<T, ApiError>,
) -> Result<T, ApiError> {
    let agent = match package_place(ctx, id).await {
        Ok((_, agent)) => agent,
        Err(error) => {
            return ctx
                .audited(audit_as, ("package", Some(id)), None, Err(error))
                .await;
        }
    };
    ctx.change(
        Action::PackageWrite,
        Target::Place(agent),
        audit_as,
        ("package", Some(id)),
    )
    .run(async |grant| {
        let offered = offered_for(ctx, grant.target()).await?;
        work(grant, offered).await
    })
    .await
}

async fn update_package(
    ctx: Ctx,
    Path(id): Path<String>,
    ApiJson(spec): ApiJson<Spec>,
) -> Result<Json<packages::Package>, ApiError> {
    Ok(Json(update(&ctx, &id, spec).await?))
}

/// The one door to changing a package's draft.
pub(super) async fn update(ctx: &Ctx, id: &str, spec: Spec) -> Result<packages::Package, ApiError> {
    let conn = &ctx.state.db.conn;
    let now = now(ctx);
    change_package(ctx, id, "package.update", async |grant, offered| {
        Ok(packages::update_draft(conn, &grant, id, spec, &offered, now).await?)
    })
    .await
}

async fn publish_package(
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<Json<packages::PackageVersion>, ApiError> {
    Ok(Json(publish(&ctx, &id).await?))
}

/// The one door to publishing a package's draft as its next version.
pub(super) async fn publish(ctx: &Ctx, id: &str) -> Result<packages::PackageVersion, ApiError> {
    let conn = &ctx.state.db.conn;
    let now = now(ctx);
    change_package(ctx, id, "package.publish", async |grant, offered| {
        Ok(packages::publish(conn, &grant, id, &offered, now).await?)
    })
    .await
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
    ctx: Ctx,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<AssignRequest>,
) -> Result<(StatusCode, Json<Vec<packages::Assignment>>), ApiError> {
    Ok((StatusCode::CREATED, Json(assign(&ctx, &id, body).await?)))
}

/// The one door to assigning a package to merchants, each authorized before the package is
/// looked up.
pub(super) async fn assign(
    ctx: &Ctx,
    id: &str,
    body: AssignRequest,
) -> Result<Vec<packages::Assignment>, ApiError> {
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
            let target = Target::merchant(merchant_id);
            grants.push(ctx.allow(Action::AssignmentWrite, target).await?);
        }
        let (package, agent) = package_place(ctx, id).await?;
        place = Some(agent);
        let now = now(ctx);
        let starts_at = match &body.starts_at {
            Some(text) => packages::parse_instant("starts_at", text, false)?,
            None => now,
        };
        let ends_at = body
            .ends_at
            .as_deref()
            .map(|t| packages::parse_instant("ends_at", t, true))
            .transpose()?;
        let conn = &ctx.state.db.conn;
        // The merchants' plugins run for them from the next invocation on.
        let _forget = ctx.state.catalog.forgetting();
        Ok(packages::assign(conn, &grants, &package, starts_at, ends_at, now).await?)
    }
    .await;
    ctx.audited(
        "assignment.create",
        ("package", Some(id)),
        place.as_ref(),
        result,
    )
    .await
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct AssignmentQuery {
    #[serde(default)]
    pub merchant_id: Option<String>,
}

async fn list_assignments(
    ctx: Ctx,
    ApiQuery(query): ApiQuery<AssignmentQuery>,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<Json<Paged<packages::Assignment>>, ApiError> {
    let scope = match &query.merchant_id {
        Some(id) => Target::merchant(id),
        None => Target::own(),
    };
    let grant = ctx.allow(Action::AssignmentRead, scope).await?;
    Ok(Json(
        packages::list_assignments(
            &ctx.state.db.conn,
            grant.target(),
            query.merchant_id.as_deref(),
            now(&ctx),
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

/// The one door to renewing (with a body) or revoking an assignment, authorized at its
/// merchant.
pub(super) async fn change_assignment(
    ctx: &Ctx,
    id: &str,
    renew: Option<RenewRequest>,
) -> Result<packages::Assignment, ApiError> {
    let audit_as = if renew.is_some() {
        "assignment.renew"
    } else {
        "assignment.revoke"
    };
    let conn = &ctx.state.db.conn;
    let now = now(ctx);
    let assignment = match packages::get_assignment(conn, &ctx.caller.place, id, now).await {
        Ok(assignment) => assignment,
        Err(error) => {
            let about = ("assignment", Some(id));
            return ctx.audited(audit_as, about, None, Err(error.into())).await;
        }
    };
    ctx.change(
        Action::AssignmentWrite,
        Target::merchant(&assignment.merchant_id),
        audit_as,
        ("assignment", Some(id)),
    )
    .run(async |grant| {
        // Seen by the next invocation, even if reading the assignment back fails after the
        // change was saved.
        let _forget = ctx.state.catalog.forgetting();
        Ok(match renew {
            Some(body) => {
                let ends_at = body
                    .ends_at
                    .as_deref()
                    .map(|t| packages::parse_instant("ends_at", t, true))
                    .transpose()?;
                packages::renew(conn, &grant, &assignment, ends_at, now).await?
            }
            None => packages::revoke(conn, &grant, &assignment, now).await?,
        })
    })
    .await
}

async fn renew_assignment(
    ctx: Ctx,
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
    Ok(Json(change_assignment(&ctx, &id, Some(body)).await?))
}

async fn revoke_assignment(
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<Json<packages::Assignment>, ApiError> {
    Ok(Json(change_assignment(&ctx, &id, None).await?))
}

async fn entitlements(
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<Json<Vec<packages::Entitlement>>, ApiError> {
    ctx.allow(Action::AssignmentRead, Target::merchant(&id))
        .await?;
    let held = packages::entitlements(&ctx.state.db.conn, &id, now(&ctx)).await?;
    Ok(Json(held.into_values().collect()))
}
