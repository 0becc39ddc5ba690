//! The tenant tree over HTTP: `/api/v1/{partners,agents,merchants,stores}` — create, list,
//! read, update, suspend and resume.
//!
//! Invariant: a node is created only under a parent inside the caller's subtree, and nobody
//! changes or suspends the node they stand on (`Rbac::authorize` refuses it).

use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery, Ctx, Target};
use crate::auth::Principal;
use crate::db::{Page, Paged};
use crate::rbac::Action;
use crate::tenancy::{self, NewNode, Node, NodeFilter, NodeKind, NodePatch, NodeStatus, Place};

/// The kinds managed through `/api/v1/<plural>`, with their path segment.
pub const NODE_ROUTES: [(NodeKind, &str); 4] = [
    (NodeKind::Partner, "partners"),
    (NodeKind::Agent, "agents"),
    (NodeKind::Merchant, "merchants"),
    (NodeKind::Store, "stores"),
];

pub fn router() -> Router<AppState> {
    let mut router = Router::new();
    for (kind, plural) in NODE_ROUTES {
        router = router
            .route(
                &format!("/api/v1/{plural}"),
                get(move |c, q, p| list_nodes(kind, c, q, p))
                    .post(move |c, b| create_node(kind, c, b)),
            )
            .route(
                &format!("/api/v1/{plural}/{{id}}"),
                get(move |c, id| get_node(kind, c, id))
                    .patch(move |c, id, b| update_node(kind, c, id, b)),
            )
            .route(
                &format!("/api/v1/{plural}/{{id}}/suspend"),
                post(move |c, id| set_node_status(kind, NodeStatus::Suspended, c, id)),
            )
            .route(
                &format!("/api/v1/{plural}/{{id}}/resume"),
                post(move |c, id| set_node_status(kind, NodeStatus::Active, c, id)),
            );
    }
    router
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CreateNodeRequest {
    /// The parent node; defaults to the caller's own node when that is of the parent's kind.
    /// Ignored for partners, whose parent is the platform.
    #[serde(default)]
    pub parent_id: Option<String>,
    #[serde(flatten)]
    pub node: NewNode,
}

/// The parent a new node of `kind` goes under, resolved inside the caller's subtree.
async fn parent_for(
    state: &AppState,
    caller: &Principal,
    kind: NodeKind,
    parent_id: Option<&str>,
) -> Result<Place, ApiError> {
    let parent_kind = kind.parent().unwrap_or(NodeKind::Platform);
    if parent_kind == NodeKind::Platform {
        // Everyone may name the platform; authorization decides who may create under it.
        return tenancy::place(&state.db.conn, state.rbac.platform_id())
            .await?
            .ok_or(ApiError::Tenancy(tenancy::Error::NoPlatform));
    }
    match parent_id {
        Some(id) => {
            Ok(
                tenancy::find_in_scope(&state.db.conn, &caller.place, Some(parent_kind), id)
                    .await?
                    .place(),
            )
        }
        None if caller.place.kind == parent_kind => Ok(caller.place.clone()),
        None => Err(ApiError::Validation {
            field: "parent_id",
            message: format!(
                "required: the {} this {} belongs to",
                parent_kind.as_str(),
                kind.as_str()
            ),
        }),
    }
}

async fn create_node(
    kind: NodeKind,
    ctx: Ctx,
    ApiJson(body): ApiJson<CreateNodeRequest>,
) -> Result<(StatusCode, Json<Node>), ApiError> {
    Ok((StatusCode::CREATED, Json(create(&ctx, kind, body).await?)))
}

/// The one door to creating a node, for the API and the consoles: the parent inside the
/// caller's subtree, authorization there, the node, and the audit entry whatever the outcome.
pub(super) async fn create(
    ctx: &Ctx,
    kind: NodeKind,
    body: CreateNodeRequest,
) -> Result<Node, ApiError> {
    let state = &ctx.state;
    let action = Action::create_node(kind);
    let result = async {
        let parent = parent_for(state, &ctx.caller, kind, body.parent_id.as_deref()).await?;
        let grant = state.rbac.authorize(&ctx.caller, action, &parent).await?;
        let hosts = &state.config.http.console_hosts;
        Ok::<_, ApiError>(tenancy::create(&state.db.conn, &grant, kind, body.node, hosts).await?)
    }
    .await;
    // Filed at the new node, so the tier that made it sees the entry beside the node.
    let place = result.as_ref().ok().map(Node::place);
    let id = result.as_ref().ok().map(|n| n.id.clone());
    ctx.audited(
        &action.name(),
        (kind.as_str(), id.as_deref()),
        place.as_ref(),
        result,
    )
    .await
}

async fn list_nodes(
    kind: NodeKind,
    ctx: Ctx,
    ApiQuery(filter): ApiQuery<NodeFilter>,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<Json<Paged<Node>>, ApiError> {
    let grant = ctx.allow(Action::read_node(kind), Target::own()).await?;
    let scope = grant.target();
    Ok(Json(
        tenancy::list(&ctx.state.db.conn, scope, kind, &filter, page).await?,
    ))
}

async fn get_node(
    kind: NodeKind,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<Json<Node>, ApiError> {
    let node =
        tenancy::find_in_scope(&ctx.state.db.conn, &ctx.caller.place, Some(kind), &id).await?;
    ctx.allow(Action::read_node(kind), Target::Place(node.place()))
        .await?;
    Ok(Json(node))
}

async fn update_node(
    kind: NodeKind,
    ctx: Ctx,
    Path(id): Path<String>,
    ApiJson(patch): ApiJson<NodePatch>,
) -> Result<Json<Node>, ApiError> {
    Ok(Json(update(&ctx, kind, &id, patch).await?))
}

/// Renames a node of the caller's subtree (a partner: also its theme and domains), audited:
/// the door the API and the console share.
pub(super) async fn update(
    ctx: &Ctx,
    kind: NodeKind,
    id: &str,
    patch: NodePatch,
) -> Result<Node, ApiError> {
    let action = Action::update_node(kind);
    let state = &ctx.state;
    ctx.change(
        action,
        Target::Node(Some(kind), id),
        action.name(),
        (kind.as_str(), Some(id)),
    )
    .run(async |grant| {
        let hosts = &state.config.http.console_hosts;
        // Its domains or theme may change: requests, trades and plugins see them at once,
        // even if reading the node back fails after the change was saved.
        let _forget = state.catalog.forgetting();
        let node = tenancy::update(&state.db.conn, &grant, patch, hosts).await;
        state.hosts.forget_all();
        state.payments.forget_partner(id);
        Ok(node?)
    })
    .await
}

async fn set_node_status(
    kind: NodeKind,
    status: NodeStatus,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<Json<Node>, ApiError> {
    Ok(Json(set_status(&ctx, kind, status, &id).await?))
}

/// Suspends or resumes a node below the caller, audited: the shared door.
pub(super) async fn set_status(
    ctx: &Ctx,
    kind: NodeKind,
    status: NodeStatus,
    id: &str,
) -> Result<Node, ApiError> {
    let verb = if status == NodeStatus::Suspended {
        "suspend"
    } else {
        "resume"
    };
    let audit_as = format!("{}.{verb}", kind.as_str());
    let conn = &ctx.state.db.conn;
    ctx.change(
        Action::suspend_node(kind),
        Target::Node(Some(kind), id),
        audit_as,
        (kind.as_str(), Some(id)),
    )
    .run(async |grant| {
        // Its plugins stop running for it (or run again) from the next invocation on, and a
        // suspended partner's hosts are refused from the next request on, even if reading
        // the node back fails after the change was saved.
        let _forget = ctx.state.catalog.forgetting();
        let node = tenancy::set_status(conn, &grant, status).await;
        ctx.state.hosts.forget_all();
        Ok(node?)
    })
    .await
}
