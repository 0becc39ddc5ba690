//! The accounts of a node in the visitor's subtree, and adding one.

use axum::extract::rejection::FormRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Form, Router};
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::{Value, json};

use super::super::AppState;
use super::super::accounts;
use super::super::error::ApiError;
use super::super::extract::Target;
use super::{Look, PageQuery, Signed, form, pages, refused};
use crate::auth::{self, NewUser, UserFilter};
use crate::db::Page;
use crate::rbac::Action;
use crate::tenancy;

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/console/accounts", get(accounts_page).post(add_account))
}

#[derive(Debug, Deserialize)]
struct AccountsQuery {
    /// The node whose accounts to show; the visitor's own by default.
    #[serde(default)]
    node_id: Option<String>,
    #[serde(default)]
    page: Option<u64>,
}

async fn accounts_page(
    State(state): State<AppState>,
    look: Look,
    signed: Signed,
    Query(query): Query<AccountsQuery>,
) -> Result<Response, ApiError> {
    let page = PageQuery { page: query.page }.page();
    let data = accounts_data(&signed, query.node_id.as_deref(), page, None).await?;
    look.render(&state, "console-accounts", data)
}

/// The node (inside the visitor's subtree, else 404), one page of its own accounts, and the
/// add form when the visitor's role may add accounts.
async fn accounts_data(
    signed: &Signed,
    node_id: Option<&str>,
    page: Page,
    problem: Option<Value>,
) -> Result<Value, ApiError> {
    let ctx = &signed.ctx;
    let grant = ctx.allow(Action::UserRead, Target::NodeOr(node_id)).await?;
    let place = grant.target();
    let node =
        tenancy::find_in_scope(&ctx.state.db.conn, &ctx.caller.place, None, &place.id).await?;
    let filter = UserFilter {
        node_id: Some(place.id.clone()),
        q: None,
    };
    let listed = auth::list_users(&ctx.state.db.conn, place, &filter, page).await?;
    let mut data = signed.frame("accounts").await?;
    data["target"] = json!(node);
    data["accounts"] = json!(listed.items);
    data["pages"] = pages(listed.total, page);
    // The pager keeps the node it pages through.
    data["pages"]["extra"] = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("node_id", &place.id)
        .finish()
        .into();
    data["may_create"] = crate::rbac::allows(ctx.caller.role, Action::UserCreate).into();
    if let Some(problem) = problem {
        data["problem"] = problem;
    }
    Ok(data)
}

#[derive(Debug, Deserialize)]
struct AccountForm {
    #[serde(default)]
    form_token: String,
    node_id: String,
    email: String,
    password: SecretString,
}

/// Adds an account on a node of the visitor's subtree (with that tier's role), through the
/// API's door.
async fn add_account(
    State(state): State<AppState>,
    look: Look,
    signed: Signed,
    headers: HeaderMap,
    body: Result<Form<AccountForm>, FormRejection>,
) -> Result<Response, ApiError> {
    let body = form(body)?;
    signed.check_form(&headers, &body.form_token)?;
    let request = accounts::CreateUserRequest {
        node_id: Some(body.node_id.clone()),
        user: NewUser {
            email: body.email.clone(),
            password: body.password,
            role: None,
        },
    };
    match accounts::create(&signed.ctx, request).await {
        Ok(_) => {
            let back = format!("/console/accounts?node_id={}", body.node_id);
            Ok(Redirect::to(&back).into_response())
        }
        Err(error) => {
            let Some((status, problem)) = refused(&error, json!({ "email": body.email })) else {
                return Err(error);
            };
            let page = PageQuery { page: None }.page();
            let data = accounts_data(&signed, Some(&body.node_id), page, Some(problem)).await?;
            look.render_as(&state, "console-accounts", data, status)
        }
    }
}
