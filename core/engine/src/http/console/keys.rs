//! The API keys of the visitor's node: the list, making one (its secret shown once, on the
//! page that made it) and revoking one.
//!
//! Invariant: a key's secret is shown only in the answer to the post that made it, never
//! stored in clear and never shown again; every change is the API's door, audited.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use secrecy::ExposeSecret;
use serde_json::{Value, json};

use super::super::AppState;
use super::super::accounts::{self as doors, CreateKeyRequest};
use super::super::error::ApiError;
use super::{Fields, Look, PageQuery, Signed, pages, refused};
use crate::auth::NewApiKey;
use crate::rbac::{Action, allows};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/console/keys", get(keys_page).post(create))
        .route("/console/keys/{id}/revoke", post(revoke))
}

async fn keys_data(
    signed: &Signed,
    page: crate::db::Page,
    extra: Option<(&str, Value)>,
) -> Result<Value, ApiError> {
    let ctx = &signed.ctx;
    let listed = doors::keys(ctx, None, page).await?;
    let mut data = signed.frame("keys").await?;
    data["keys"] = json!(listed.items);
    data["pages"] = pages(listed.total, page);
    data["may_create"] = allows(ctx.caller.role, Action::ApiKeyCreate).into();
    data["may_revoke"] = allows(ctx.caller.role, Action::ApiKeyRevoke).into();
    if let Some((name, value)) = extra {
        data[name] = value;
    }
    Ok(data)
}

async fn keys_page(
    State(state): State<AppState>,
    look: Look,
    signed: Signed,
    Query(query): Query<PageQuery>,
) -> Result<Response, ApiError> {
    let data = keys_data(&signed, query.page(), None).await?;
    look.render(&state, "console-keys", data)
}

/// Makes a key for the visitor's node and shows its secret this once.
async fn create(
    State(state): State<AppState>,
    look: Look,
    signed: Signed,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let fields = Fields::parse(&body);
    signed.check_form(&headers, fields.one("form_token"))?;
    let request = CreateKeyRequest {
        node_id: None,
        key: NewApiKey {
            name: fields.one("name").trim().to_owned(),
            role: None,
        },
    };
    let first = PageQuery { page: None }.page();
    match doors::new_key(&signed.ctx, request).await {
        Ok((secret, key)) => {
            let made = json!({ "secret": secret.expose_secret(), "name": key.name });
            let data = keys_data(&signed, first, Some(("made", made))).await?;
            let mut response = look.render(&state, "console-keys", data)?;
            *response.status_mut() = StatusCode::CREATED;
            Ok(response)
        }
        Err(error) => {
            let Some((status, problem)) = refused(&error, fields.typed()) else {
                return Err(error);
            };
            let data = keys_data(&signed, first, Some(("problem", problem))).await?;
            look.render_as(&state, "console-keys", data, status)
        }
    }
}

async fn revoke(
    State(state): State<AppState>,
    look: Look,
    signed: Signed,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let fields = Fields::parse(&body);
    signed.check_form(&headers, fields.one("form_token"))?;
    match doors::revoke(&signed.ctx, &id).await {
        Ok(_) => Ok(Redirect::to("/console/keys").into_response()),
        Err(error) => {
            let Some((status, problem)) = refused(&error, json!({})) else {
                return Err(error);
            };
            let first = PageQuery { page: None }.page();
            let data = keys_data(&signed, first, Some(("problem", problem))).await?;
            look.render_as(&state, "console-keys", data, status)
        }
    }
}
