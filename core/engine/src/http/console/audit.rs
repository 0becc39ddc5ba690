//! The audit log of the visitor's subtree.

use axum::Router;
use axum::extract::{Query, State};
use axum::response::Response;
use axum::routing::get;
use serde_json::json;

use super::super::AppState;
use super::super::error::ApiError;
use super::super::extract::Target;
use super::{Look, PageQuery, Signed, pages};
use crate::rbac::Action;
use crate::rbac::audit;

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/console/audit", get(audit_page))
}

async fn audit_page(
    State(state): State<AppState>,
    look: Look,
    signed: Signed,
    Query(query): Query<PageQuery>,
) -> Result<Response, ApiError> {
    let grant = signed
        .ctx
        .allow(Action::AuditRead, Target::NodeOr(None))
        .await?;
    let page = query.page();
    let filter = audit::Filter::default();
    let listed = audit::list(&state.db.conn, grant.target(), &filter, page).await?;
    let mut data = signed.frame("audit").await?;
    data["entries"] = json!(listed.items);
    data["pages"] = pages(listed.total, page);
    look.render(&state, "console-audit", data)
}
