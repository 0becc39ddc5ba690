//! The audit log over HTTP: entries at the caller's node and below, newest first.
//!
//! Invariant: a caller reads only entries filed inside its subtree; refusals of ids outside it
//! are filed under the caller, so they never reveal another tenant's entries.

use axum::routing::get;
use axum::{Json, Router};

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiQuery, Ctx, Target};
use crate::db::{Page, Paged};
use crate::rbac::Action;
use crate::rbac::audit;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/v1/audit", get(list_audit))
}

async fn list_audit(
    ctx: Ctx,
    ApiQuery(filter): ApiQuery<audit::Filter>,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<Json<Paged<audit::Record>>, ApiError> {
    let grant = ctx
        .allow(Action::AuditRead, Target::NodeOr(filter.node_id.as_deref()))
        .await?;
    Ok(Json(
        audit::list(&ctx.state.db.conn, grant.target(), &filter, page).await?,
    ))
}
