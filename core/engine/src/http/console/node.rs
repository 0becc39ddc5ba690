//! One node below the visitor: its facts, renaming it (a partner: also its theme and domains,
//! and its policy on plugin signatures), suspending or resuming it, and the links to its
//! accounts and, for a merchant, its Alipay app.
//!
//! Invariant: the node is found inside the visitor's subtree or not at all, the visitor's own
//! node is not offered here (nobody suspends the node they stand on), and every change is the
//! API's node door with its RBAC and audit.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::super::AppState;
use super::super::error::ApiError;
use super::super::{catalog, nodes};
use super::{Fields, Look, Signed, refused};
use crate::plugins::catalog::Policy;
use crate::rbac::{Action, allows};
use crate::tenancy::{self, NodePatch, NodeStatus};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/console/nodes/{id}", get(node_page).post(rename))
        .route("/console/nodes/{id}/{change}", post(change))
}

/// At most this many domains a partner's form takes.
const MAX_DOMAINS: usize = 20;

async fn node_data(signed: &Signed, id: &str, problem: Option<Value>) -> Result<Value, ApiError> {
    let ctx = &signed.ctx;
    let caller = &ctx.caller;
    let node = tenancy::find_in_scope(&ctx.state.db.conn, &caller.place, None, id).await?;
    if node.id == caller.place.id {
        return Err(ApiError::NotFound(format!("/console/nodes/{id}")));
    }
    let kind = node.kind;
    let mut data = signed.frame("home").await?;
    data["target"] = json!(node);
    data["domains_text"] = node.domains.clone().unwrap_or_default().join("\n").into();
    data["may"] = json!({
        "rename": allows(caller.role, Action::update_node(kind)),
        "suspend": allows(caller.role, Action::suspend_node(kind)),
        "accounts": allows(caller.role, Action::UserRead),
        "alipay": kind == tenancy::NodeKind::Merchant
            && allows(caller.role, Action::AlipayCredentialsRead),
    });
    // The tier below it, as the home page lists the visitor's own: an agent sees a merchant's
    // stores here.
    if let Some(below) = super::child_kind(kind) {
        let filter = tenancy::NodeFilter {
            parent_id: Some(node.id.clone()),
            ..tenancy::NodeFilter::default()
        };
        let page = super::PageQuery { page: None }.page();
        let listed = tenancy::list(&ctx.state.db.conn, &caller.place, below, &filter, page).await?;
        data["children"] = json!({
            "kind": below.as_str(),
            "items": listed.items,
            "total": listed.total,
        });
    }
    if kind == tenancy::NodeKind::Merchant {
        data["merchant_apps"] = json!(super::apps::pages_for(signed, &node).await?);
    }
    if kind == tenancy::NodeKind::Partner {
        data["themes"] = json!(ctx.state.themes.names());
        if allows(caller.role, Action::PluginManage) {
            data["policy"] = policy_view(&catalog::policy(ctx, &node.id).await?);
            data["policy_action"] = format!("/console/nodes/{}/policy", node.id).into();
        }
    }
    if let Some(problem) = problem {
        data["problem"] = problem;
    }
    Ok(data)
}

async fn node_page(
    State(state): State<AppState>,
    look: Look,
    signed: Signed,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let data = node_data(&signed, &id, None).await?;
    look.render(&state, "console-node", data)
}

/// The refused change shown again on the node's page, or the error page.
async fn again(
    state: &AppState,
    look: &Look,
    signed: &Signed,
    id: &str,
    error: ApiError,
    typed: Value,
) -> Result<Response, ApiError> {
    let Some((status, problem)) = refused(&error, typed) else {
        return Err(error);
    };
    let data = node_data(signed, id, Some(problem)).await?;
    look.render_as(state, "console-node", data, status)
}

async fn rename(
    State(state): State<AppState>,
    look: Look,
    signed: Signed,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let fields = Fields::parse(&body);
    signed.check_form(&headers, fields.one("form_token"))?;
    let ctx = &signed.ctx;
    let node = tenancy::find_in_scope(&ctx.state.db.conn, &ctx.caller.place, None, &id).await?;
    let partner = node.kind == tenancy::NodeKind::Partner;
    let domains: Vec<String> = fields
        .one("domains")
        .lines()
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .take(MAX_DOMAINS + 1)
        .map(str::to_owned)
        .collect();
    let patch = NodePatch {
        name: Some(fields.one("name").to_owned()),
        theme: partner
            .then(|| fields.one("theme").to_owned())
            .filter(|t| !t.is_empty()),
        domains: partner.then_some(domains),
    };
    match nodes::update(ctx, node.kind, &id, patch).await {
        Ok(_) => Ok(Redirect::to(&format!("/console/nodes/{id}")).into_response()),
        Err(error) => again(&state, &look, &signed, &id, error, fields.typed()).await,
    }
}

/// Suspending, resuming, or (a partner) its policy on plugin signatures.
async fn change(
    State(state): State<AppState>,
    look: Look,
    signed: Signed,
    headers: HeaderMap,
    Path((id, change)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let fields = Fields::parse(&body);
    signed.check_form(&headers, fields.one("form_token"))?;
    let ctx = &signed.ctx;
    let node = tenancy::find_in_scope(&ctx.state.db.conn, &ctx.caller.place, None, &id).await?;
    let outcome = match change.as_str() {
        "suspend" => nodes::set_status(ctx, node.kind, NodeStatus::Suspended, &id)
            .await
            .map(drop),
        "resume" => nodes::set_status(ctx, node.kind, NodeStatus::Active, &id)
            .await
            .map(drop),
        "policy" if node.kind == tenancy::NodeKind::Partner => {
            catalog::set_policy(ctx, &id, policy_of(&fields))
                .await
                .map(drop)
        }
        _ => return Err(ApiError::NotFound(format!("/console/nodes/{id}/{change}"))),
    };
    match outcome {
        Ok(()) => Ok(Redirect::to(&format!("/console/nodes/{id}")).into_response()),
        Err(error) => again(&state, &look, &signed, &id, error, fields.typed()).await,
    }
}

/// A plugin policy as its form posts it: the box, and one publisher key a line.
pub(super) fn policy_of(fields: &Fields) -> Policy {
    Policy {
        require_signature: !fields.one("require_signature").is_empty(),
        trusted_keys: fields
            .one("trusted_keys")
            .lines()
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(str::to_owned)
            .collect(),
    }
}

/// A plugin policy as its form shows it.
pub(super) fn policy_view(policy: &Policy) -> Value {
    json!({
        "require_signature": policy.require_signature,
        "trusted_keys": policy.trusted_keys.join("\n"),
    })
}
