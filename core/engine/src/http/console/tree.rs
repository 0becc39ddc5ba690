//! The console's home: the visitor's node and the tier below it, and adding to that tier.

use axum::extract::rejection::FormRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::super::AppState;
use super::super::error::ApiError;
use super::super::extract::Target;
use super::super::nodes;
use super::{Look, PageQuery, Signed, child_kind, form, pages, refused};
use crate::db::Page;
use crate::rbac::Action;
use crate::tenancy::{self, NewNode, NodeFilter, NodeKind};

/// The home page and adding a node.
pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/console", get(home))
        .route("/console/nodes", post(create_node))
}

async fn home(
    State(state): State<AppState>,
    look: Look,
    signed: Signed,
    Query(query): Query<PageQuery>,
) -> Result<Response, ApiError> {
    let data = home_data(&signed, query.page(), None).await?;
    look.render(&state, "console-home", data)
}

/// The home page: the visitor's node and the nodes of the tier below it, with the form that
/// adds one when the visitor's role may. `problem` is a refused form to show.
async fn home_data(signed: &Signed, page: Page, problem: Option<Value>) -> Result<Value, ApiError> {
    let mut data = signed.frame("home").await?;
    let caller = &signed.ctx.caller;
    if let Some(kind) = child_kind(caller.place.kind) {
        let grant = signed
            .ctx
            .allow(Action::read_node(kind), Target::own())
            .await?;
        let filter = NodeFilter {
            parent_id: Some(caller.place.id.clone()),
            ..NodeFilter::default()
        };
        let listed = tenancy::list(
            &signed.ctx.state.db.conn,
            grant.target(),
            kind,
            &filter,
            page,
        )
        .await?;
        data["children"] = json!({
            "kind": kind.as_str(),
            "items": listed.items,
            "pages": pages(listed.total, page),
            "may_create": crate::rbac::allows(caller.role, Action::create_node(kind)),
            "may_see_accounts": crate::rbac::allows(caller.role, Action::UserRead),
        });
        // A partner is reached on its own domain, in its own theme: both are the platform's
        // to set, so its form asks for them.
        if kind == NodeKind::Partner {
            data["children"]["themes"] = json!(signed.ctx.state.themes.names());
        }
    }
    if let Some(problem) = problem {
        data["problem"] = problem;
    }
    Ok(data)
}

#[derive(Debug, Deserialize)]
struct NodeForm {
    #[serde(default)]
    form_token: String,
    kind: String,
    name: String,
    /// A partner's domain and theme; ignored for the other kinds.
    #[serde(default)]
    domain: String,
    #[serde(default)]
    theme: String,
}

/// Adds a node of the tier below the visitor's, through the API's door.
async fn create_node(
    State(state): State<AppState>,
    look: Look,
    signed: Signed,
    headers: HeaderMap,
    body: Result<Form<NodeForm>, FormRejection>,
) -> Result<Response, ApiError> {
    let body = form(body)?;
    signed.check_form(&headers, &body.form_token)?;
    let kind = NodeKind::parse(&body.kind)
        .filter(|k| Some(*k) == child_kind(signed.ctx.caller.place.kind))
        .ok_or_else(|| ApiError::Validation {
            field: "kind",
            message: "not a kind of node this console adds".into(),
        })?;
    let partner = kind == NodeKind::Partner;
    let given = |text: &str| (partner && !text.trim().is_empty()).then(|| text.trim().to_owned());
    let request = nodes::CreateNodeRequest {
        parent_id: None,
        node: NewNode {
            name: body.name.clone(),
            theme: given(&body.theme),
            domains: given(&body.domain).map(|d| vec![d]),
        },
    };
    match nodes::create(&signed.ctx, kind, request).await {
        Ok(_) => Ok(Redirect::to("/console").into_response()),
        Err(error) => {
            let typed = json!({ "name": body.name, "domain": body.domain });
            let Some((status, problem)) = refused(&error, typed) else {
                return Err(error);
            };
            let data = home_data(&signed, PageQuery { page: None }.page(), Some(problem)).await?;
            look.render_as(&state, "console-home", data, status)
        }
    }
}
