//! Accounts and API keys: who may sign in at a node, and the keys that act for it.
//!
//! Invariant: an account or key is created, changed or revoked only inside the caller's subtree,
//! casbin learns of the change before the call answers, and a key's secret is shown once.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery, Ctx, Target};
use crate::auth::{self, ApiKey, NewApiKey, NewUser, User, UserFilter, UserPatch};
use crate::db::{Page, Paged};
use crate::rbac::{Action, SubjectRef};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/users", get(list_users).post(create_user))
        .route("/api/v1/users/{id}", get(get_user).patch(update_user))
        .route("/api/v1/api-keys", get(list_keys).post(create_key))
        .route("/api/v1/api-keys/{id}", get(get_key).delete(revoke_key))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CreateUserRequest {
    /// The node the account stands on; defaults to the caller's.
    #[serde(default)]
    pub node_id: Option<String>,
    #[serde(flatten)]
    pub user: NewUser,
}

async fn create_user(
    ctx: Ctx,
    ApiJson(body): ApiJson<CreateUserRequest>,
) -> Result<(StatusCode, Json<User>), ApiError> {
    Ok((StatusCode::CREATED, Json(create(&ctx, body).await?)))
}

/// The one door to creating an account, for the API and the consoles: authorized on the
/// node it stands on, audited whatever the outcome.
pub(super) async fn create(ctx: &Ctx, body: CreateUserRequest) -> Result<User, ApiError> {
    let state = &ctx.state;
    ctx.change(
        Action::UserCreate,
        Target::NodeOr(body.node_id.as_deref()),
        "user.create",
        ("user", None),
    )
    .run_new(
        async |grant| {
            let user = auth::create_user(&state.db.conn, &state.hasher, &grant, body.user).await?;
            state
                .rbac
                .subject_changed(SubjectRef::User(&user.id))
                .await?;
            Ok(user)
        },
        |user| Some(user.id.clone()),
    )
    .await
}

async fn list_users(
    ctx: Ctx,
    ApiQuery(filter): ApiQuery<UserFilter>,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<Json<Paged<User>>, ApiError> {
    let grant = ctx
        .allow(Action::UserRead, Target::NodeOr(filter.node_id.as_deref()))
        .await?;
    let filter = UserFilter {
        node_id: None,
        ..filter
    };
    Ok(Json(
        auth::list_users(&ctx.state.db.conn, grant.target(), &filter, page).await?,
    ))
}

async fn get_user(ctx: Ctx, Path(id): Path<String>) -> Result<Json<User>, ApiError> {
    let (user, place) =
        auth::find_user_in_scope(&ctx.state.db.conn, &ctx.caller.place, &id).await?;
    ctx.allow(Action::UserRead, Target::Place(place)).await?;
    Ok(Json(user))
}

async fn update_user(
    ctx: Ctx,
    Path(id): Path<String>,
    ApiJson(patch): ApiJson<UserPatch>,
) -> Result<Json<User>, ApiError> {
    let state = &ctx.state;
    let user = ctx
        .change(
            Action::UserUpdate,
            Target::Account(&id),
            "user.update",
            ("user", Some(&id)),
        )
        .run(async |grant| {
            let user = auth::update_user(&state.db.conn, &state.hasher, &grant, &id, patch).await?;
            state
                .rbac
                .subject_changed(SubjectRef::User(&user.id))
                .await?;
            Ok(user)
        })
        .await?;
    Ok(Json(user))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CreateKeyRequest {
    /// The node the key acts for; defaults to the caller's.
    #[serde(default)]
    pub node_id: Option<String>,
    #[serde(flatten)]
    pub key: NewApiKey,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedKey {
    /// The key, shown this once: send it as `Authorization: Bearer <key>`.
    pub key: String,
    pub api_key: ApiKey,
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
pub struct NodeQuery {
    pub node_id: Option<String>,
}

async fn create_key(
    ctx: Ctx,
    ApiJson(body): ApiJson<CreateKeyRequest>,
) -> Result<Response, ApiError> {
    let (secret, key) = new_key(&ctx, body).await?;
    let body = CreatedKey {
        key: secret.expose_secret().to_owned(),
        api_key: key,
    };
    let mut response = (StatusCode::CREATED, Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// Creates an API key on a node of the caller's subtree, audited; the key in clear comes back
/// this once. The door the API and the console share.
pub(super) async fn new_key(
    ctx: &Ctx,
    body: CreateKeyRequest,
) -> Result<(secrecy::SecretString, ApiKey), ApiError> {
    let state = &ctx.state;
    ctx.change(
        Action::ApiKeyCreate,
        Target::NodeOr(body.node_id.as_deref()),
        "api_key.create",
        ("api_key", None),
    )
    .run_new(
        async |grant| {
            let (secret, key) = auth::create_api_key(&state.db.conn, &grant, body.key).await?;
            state
                .rbac
                .subject_changed(SubjectRef::ApiKey(&key.id))
                .await?;
            Ok((secret, key))
        },
        |(_, key)| Some(key.id.clone()),
    )
    .await
}

async fn list_keys(
    ctx: Ctx,
    ApiQuery(query): ApiQuery<NodeQuery>,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<Json<Paged<ApiKey>>, ApiError> {
    Ok(Json(keys(&ctx, query.node_id.as_deref(), page).await?))
}

/// The API keys of a node of the caller's subtree (its own by default), one page.
pub(super) async fn keys(
    ctx: &Ctx,
    node_id: Option<&str>,
    page: Page,
) -> Result<Paged<ApiKey>, ApiError> {
    let grant = ctx
        .allow(Action::ApiKeyRead, Target::NodeOr(node_id))
        .await?;
    Ok(auth::list_api_keys(&ctx.state.db.conn, grant.target(), None, page).await?)
}

async fn get_key(ctx: Ctx, Path(id): Path<String>) -> Result<Json<ApiKey>, ApiError> {
    let (key, place) =
        auth::find_api_key_in_scope(&ctx.state.db.conn, &ctx.caller.place, &id).await?;
    ctx.allow(Action::ApiKeyRead, Target::Place(place)).await?;
    Ok(Json(key))
}

async fn revoke_key(ctx: Ctx, Path(id): Path<String>) -> Result<Json<ApiKey>, ApiError> {
    Ok(Json(revoke(&ctx, &id).await?))
}

/// Revokes an API key of the caller's subtree, audited: the shared door.
pub(super) async fn revoke(ctx: &Ctx, id: &str) -> Result<ApiKey, ApiError> {
    let state = &ctx.state;
    ctx.change(
        Action::ApiKeyRevoke,
        Target::ApiKey(id),
        "api_key.revoke",
        ("api_key", Some(id)),
    )
    .run(async |grant| {
        let key = auth::revoke_api_key(&state.db.conn, &grant, id).await?;
        state
            .rbac
            .subject_changed(SubjectRef::ApiKey(&key.id))
            .await?;
        Ok(key)
    })
    .await
}
