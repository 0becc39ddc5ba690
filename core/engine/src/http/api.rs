//! The admin JSON API under `/api/v1`: sign-in, the tenant tree, accounts, API keys and the
//! audit log.
//!
//! Invariant: every handler authenticates the caller, resolves each client-supplied id inside
//! the caller's subtree (404 outside it), authorizes through `Rbac` before acting, and records
//! every state-changing call in the audit log whatever its outcome.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

use super::AppState;
use super::error::ApiError;
use super::middleware::{HostContext, RequestId};
use crate::alipay::credentials::{self, CredentialsInput, CredentialsView};
use crate::auth::{
    self, ApiKey, NewApiKey, NewUser, Principal, PrincipalKind, User, UserFilter, UserPatch,
};
use crate::db::{Page, Paged};
use crate::rbac::audit::{self, Outcome};
use crate::rbac::{Action, SubjectRef};
use crate::tenancy::{
    self, NewNode, Node, NodeFilter, NodeKind, NodePatch, NodeStatus, Place, Role,
};

/// The session cookie; HttpOnly and SameSite=Lax, so page scripts cannot read it and other
/// sites cannot ride it on a POST.
pub const SESSION_COOKIE: &str = "trellis_session";

/// The kinds managed through `/api/v1/<plural>`, with their path segment.
pub const NODE_ROUTES: [(NodeKind, &str); 4] = [
    (NodeKind::Partner, "partners"),
    (NodeKind::Agent, "agents"),
    (NodeKind::Merchant, "merchants"),
    (NodeKind::Store, "stores"),
];

pub fn router() -> Router<AppState> {
    let mut router = super::plugins::router()
        .route("/api/v1/auth/login", post(login))
        .route("/api/v1/auth/logout", post(logout))
        .route("/api/v1/auth/password", post(change_password))
        .route("/api/v1/me", get(me))
        .route("/api/v1/users", get(list_users).post(create_user))
        .route("/api/v1/users/{id}", get(get_user).patch(update_user))
        .route("/api/v1/api-keys", get(list_keys).post(create_key))
        .route("/api/v1/api-keys/{id}", get(get_key).delete(revoke_key))
        .route("/api/v1/audit", get(list_audit))
        .route(
            "/api/v1/merchants/{id}/alipay/credentials",
            get(get_credentials).put(put_credentials),
        )
        .route(
            "/api/v1/merchants/{id}/alipay/keypair",
            post(generate_keypair),
        );
    for (kind, plural) in NODE_ROUTES {
        router = router
            .route(
                &format!("/api/v1/{plural}"),
                get(move |s, c, q, p| list_nodes(kind, s, c, q, p))
                    .post(move |s, c, r, b| create_node(kind, s, c, r, b)),
            )
            .route(
                &format!("/api/v1/{plural}/{{id}}"),
                get(move |s, c, id| get_node(kind, s, c, id))
                    .patch(move |s, c, r, id, b| update_node(kind, s, c, r, id, b)),
            )
            .route(
                &format!("/api/v1/{plural}/{{id}}/suspend"),
                post(move |s, c, r, id| set_node_status(kind, NodeStatus::Suspended, s, c, r, id)),
            )
            .route(
                &format!("/api/v1/{plural}/{{id}}/resume"),
                post(move |s, c, r, id| set_node_status(kind, NodeStatus::Active, s, c, r, id)),
            );
    }
    router
}

/// JSON bodies whose rejections speak our error format: 422 naming what is wrong.
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(
        request: axum::extract::Request,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(Self(value)),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::BadRequest(
                "expected a JSON body with content-type: application/json".into(),
            )),
            Err(JsonRejection::JsonSyntaxError(e)) => Err(ApiError::BadRequest(format!(
                "malformed JSON: {}",
                e.body_text()
            ))),
            Err(rejection) => Err(ApiError::Validation {
                field: "body",
                message: rejection.body_text(),
            }),
        }
    }
}

/// Query strings, with the same error format.
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    Query<T>: FromRequestParts<S, Rejection = QueryRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(value)| Self(value))
            .map_err(|e| ApiError::Validation {
                field: "query",
                message: e.body_text(),
            })
    }
}

/// The authenticated caller: a session token (Bearer or cookie) or an API key (Bearer).
pub struct Caller(pub Principal);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let host = parts
            .extensions
            .get::<HostContext>()
            .cloned()
            .unwrap_or_default();
        Ok(Self(principal_of(state, &parts.headers, &host).await?))
    }
}

/// The principal behind a request's session token (Bearer or cookie) or API key (Bearer).
pub(crate) async fn principal_of(
    state: &AppState,
    headers: &HeaderMap,
    host: &HostContext,
) -> Result<Principal, ApiError> {
    let token = bearer(headers).or_else(|| cookie(headers, SESSION_COOKIE));
    let Some(token) = token else {
        return Err(auth::Error::Unauthenticated.into());
    };
    Ok(auth::authenticate(&state.db.conn, &token, host.partner_id()).await?)
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
        .filter(|t| !t.is_empty())
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_owned())
        .filter(|v| !v.is_empty())
}

pub(crate) fn request_id(id: &Option<Extension<RequestId>>) -> Option<&str> {
    id.as_ref().map(|Extension(RequestId(id))| id.as_str())
}

/// Records the outcome of a state-changing call and passes the result through. Refusals of ids
/// outside the caller's subtree are filed under the caller (see `rbac::audit`).
pub(crate) async fn audited<T>(
    state: &AppState,
    caller: &Principal,
    request: Option<&str>,
    action: &str,
    target: (&str, Option<&str>),
    place: Option<&Place>,
    result: Result<T, ApiError>,
) -> Result<T, ApiError> {
    let (outcome, detail) = match &result {
        Ok(_) => (Outcome::Success, None),
        Err(e) if e.status_and_code().0 == StatusCode::FORBIDDEN || e.is_not_found() => {
            (Outcome::Denied, Some(e.status_and_code().1.to_owned()))
        }
        Err(e) => (Outcome::Failed, Some(e.status_and_code().1.to_owned())),
    };
    let place = if outcome == Outcome::Denied {
        None
    } else {
        place
    };
    let entry = audit::Entry {
        actor: Some(caller),
        place,
        action,
        target_type: target.0,
        target_id: target.1,
        request_id: request,
        outcome,
        detail,
    };
    if let Err(error) = audit::record(&state.db.conn, entry).await {
        // An action that cannot be audited must not be reported as done.
        tracing::error!(%error, action, "audit record failed");
        if result.is_ok() {
            return Err(ApiError::DbErr(error));
        }
    }
    result
}

// ----- sign-in -------------------------------------------------------------------------------

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct LoginRequest {
    pub email: String,
    #[schema(value_type = String, format = Password)]
    pub password: SecretString,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LoginResponse {
    /// Use as `Authorization: Bearer <token>`; also set as the `trellis_session` cookie.
    pub token: String,
    pub expires_at: DateTime<Utc>,
    pub user: User,
}

async fn login(
    State(state): State<AppState>,
    Extension(host): Extension<HostContext>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    id: Option<Extension<RequestId>>,
    ApiJson(body): ApiJson<LoginRequest>,
) -> Result<Response, ApiError> {
    let ip = client_ip(connect);
    let ttl = chrono::Duration::hours(i64::from(state.config.auth.session_ttl_hours));
    let result = auth::login(
        &state.db.conn,
        &state.hasher,
        &body.email,
        &body.password,
        &ip,
        host.partner_id(),
        ttl,
    )
    .await;
    let (outcome, actor_id) = match &result {
        Ok(login) => (Outcome::Success, Some(login.user.id.clone())),
        // Refused before any password was checked: anonymous callers could grow the audit log
        // without bound with these, so they go to the log only. Checked failures are bounded by
        // the throttle (per account and per address) and are audited.
        Err(error) if error.refused_before_check() => {
            tracing::info!(%ip, %error, "sign-in refused before the password check");
            return Err(clone_auth(error).into());
        }
        Err(_) => (Outcome::Failed, None),
    };
    let entry = audit::Entry {
        actor: None,
        place: None,
        action: "auth.login",
        target_type: "user",
        target_id: actor_id.as_deref(),
        request_id: request_id(&id),
        outcome,
        detail: result.as_ref().err().map(|e| {
            ApiError::status_and_code(&ApiError::Auth(clone_auth(e)))
                .1
                .to_owned()
        }),
    };
    if let Err(error) = audit::record(&state.db.conn, entry).await {
        tracing::error!(%error, "audit record failed");
    }
    let login = result?;
    let token = login.token.expose_secret().to_owned();
    let max_age = i64::from(state.config.auth.session_ttl_hours) * 3600;
    let secure = if state.config.auth.cookie_secure {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{SESSION_COOKIE}={token}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}"
    );
    let body = LoginResponse {
        token,
        expires_at: login.expires_at,
        user: login.user,
    };
    let mut response = Json(body).into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// The peer's address, which sign-in limits count per: an IPv6 address by its /64, since one
/// subscriber usually holds a whole /64 and could otherwise rotate through it.
fn client_ip(connect: Option<Extension<ConnectInfo<SocketAddr>>>) -> String {
    match connect.map(|Extension(ConnectInfo(addr))| addr.ip().to_canonical()) {
        Some(std::net::IpAddr::V6(v6)) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        Some(v4) => v4.to_string(),
        None => "unknown".to_owned(),
    }
}

/// Only the variant matters for the audit detail; auth errors carry no secrets.
fn clone_auth(error: &auth::Error) -> auth::Error {
    match error {
        auth::Error::Throttled { retry_after } => auth::Error::Throttled {
            retry_after: *retry_after,
        },
        auth::Error::Suspended => auth::Error::Suspended,
        auth::Error::Busy => auth::Error::Busy,
        _ => auth::Error::InvalidCredentials,
    }
}

async fn logout(
    State(state): State<AppState>,
    Caller(caller): Caller,
) -> Result<Response, ApiError> {
    if let Some(session) = &caller.session_id {
        auth::logout(&state.db.conn, session).await?;
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    let clear = format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0");
    if let Ok(value) = HeaderValue::from_str(&clear) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    Ok(response)
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct PasswordChange {
    #[schema(value_type = String, format = Password)]
    pub current_password: SecretString,
    #[schema(value_type = String, format = Password)]
    pub new_password: SecretString,
}

async fn change_password(
    State(state): State<AppState>,
    Caller(caller): Caller,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    id: Option<Extension<RequestId>>,
    ApiJson(body): ApiJson<PasswordChange>,
) -> Result<StatusCode, ApiError> {
    let ip = client_ip(connect);
    let result = auth::change_password(
        &state.db.conn,
        &state.hasher,
        &caller,
        &ip,
        &body.current_password,
        &body.new_password,
    )
    .await;
    // As at sign-in: attempts refused before the check are not audited, so a session cannot
    // grow the log by hammering this.
    if let Err(error) = &result
        && error.refused_before_check()
    {
        tracing::info!(%ip, %error, "password change refused before the password check");
        return Err(clone_auth(error).into());
    }
    let result = result.map_err(ApiError::from);
    let place = caller.place.clone();
    audited(
        &state,
        &caller,
        request_id(&id),
        "user.password",
        ("user", Some(&caller.id)),
        Some(&place),
        result,
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Me {
    /// `user` or `api_key`.
    pub kind: String,
    pub id: String,
    /// The email of an account, the name of a key.
    pub label: String,
    pub role: Role,
    pub node: Node,
    /// The actions this caller's role allows on its node and below.
    pub permissions: Vec<String>,
}

async fn me(State(state): State<AppState>, Caller(caller): Caller) -> Result<Json<Me>, ApiError> {
    let node =
        tenancy::find_in_scope(&state.db.conn, &caller.place, None, &caller.place.id).await?;
    let permissions = Action::ALL
        .into_iter()
        .filter(|a| crate::rbac::allows(caller.role, *a))
        .map(Action::name)
        .collect();
    Ok(Json(Me {
        kind: match caller.kind {
            PrincipalKind::User => "user".into(),
            PrincipalKind::ApiKey => "api_key".into(),
        },
        id: caller.id,
        label: caller.label,
        role: caller.role,
        node,
        permissions,
    }))
}

// ----- the tenant tree -----------------------------------------------------------------------

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
    State(state): State<AppState>,
    Caller(caller): Caller,
    id: Option<Extension<RequestId>>,
    ApiJson(body): ApiJson<CreateNodeRequest>,
) -> Result<(StatusCode, Json<Node>), ApiError> {
    let action = Action::create_node(kind);
    let result = async {
        let parent = parent_for(&state, &caller, kind, body.parent_id.as_deref()).await?;
        let grant = state.rbac.authorize(&caller, action, &parent).await?;
        Ok::<_, ApiError>(
            tenancy::create(
                &state.db.conn,
                &grant,
                kind,
                body.node,
                &state.config.http.console_hosts,
            )
            .await?,
        )
    }
    .await;
    let place = result.as_ref().ok().map(Node::place);
    let target_id = result.as_ref().ok().map(|n| n.id.clone());
    let node = audited(
        &state,
        &caller,
        request_id(&id),
        &action.name(),
        (kind.as_str(), target_id.as_deref()),
        place.as_ref(),
        result,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(node)))
}

async fn list_nodes(
    kind: NodeKind,
    State(state): State<AppState>,
    Caller(caller): Caller,
    ApiQuery(filter): ApiQuery<NodeFilter>,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<Json<Paged<Node>>, ApiError> {
    state
        .rbac
        .authorize(&caller, Action::read_node(kind), &caller.place)
        .await?;
    Ok(Json(
        tenancy::list(&state.db.conn, &caller.place, kind, &filter, page).await?,
    ))
}

async fn get_node(
    kind: NodeKind,
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<Node>, ApiError> {
    let node = tenancy::find_in_scope(&state.db.conn, &caller.place, Some(kind), &id).await?;
    state
        .rbac
        .authorize(&caller, Action::read_node(kind), &node.place())
        .await?;
    Ok(Json(node))
}

async fn update_node(
    kind: NodeKind,
    State(state): State<AppState>,
    Caller(caller): Caller,
    rid: Option<Extension<RequestId>>,
    Path(id): Path<String>,
    ApiJson(patch): ApiJson<NodePatch>,
) -> Result<Json<Node>, ApiError> {
    let action = Action::update_node(kind);
    let mut place = None;
    let result = async {
        let node = tenancy::find_in_scope(&state.db.conn, &caller.place, Some(kind), &id).await?;
        place = Some(node.place());
        let grant = state.rbac.authorize(&caller, action, &node.place()).await?;
        Ok::<_, ApiError>(
            tenancy::update(
                &state.db.conn,
                &grant,
                patch,
                &state.config.http.console_hosts,
            )
            .await?,
        )
    }
    .await;
    let node = audited(
        &state,
        &caller,
        request_id(&rid),
        &action.name(),
        (kind.as_str(), Some(&id)),
        place.as_ref(),
        result,
    )
    .await?;
    Ok(Json(node))
}

async fn set_node_status(
    kind: NodeKind,
    status: NodeStatus,
    State(state): State<AppState>,
    Caller(caller): Caller,
    rid: Option<Extension<RequestId>>,
    Path(id): Path<String>,
) -> Result<Json<Node>, ApiError> {
    let action = Action::suspend_node(kind);
    let audit_action = format!(
        "{}.{}",
        kind.as_str(),
        if status == NodeStatus::Suspended {
            "suspend"
        } else {
            "resume"
        }
    );
    let mut place = None;
    let result = async {
        let node = tenancy::find_in_scope(&state.db.conn, &caller.place, Some(kind), &id).await?;
        place = Some(node.place());
        let grant = state.rbac.authorize(&caller, action, &node.place()).await?;
        Ok::<_, ApiError>(tenancy::set_status(&state.db.conn, &grant, status).await?)
    }
    .await;
    let node = audited(
        &state,
        &caller,
        request_id(&rid),
        &audit_action,
        (kind.as_str(), Some(&id)),
        place.as_ref(),
        result,
    )
    .await?;
    Ok(Json(node))
}

// ----- accounts ------------------------------------------------------------------------------

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CreateUserRequest {
    /// The node the account stands on; defaults to the caller's.
    #[serde(default)]
    pub node_id: Option<String>,
    #[serde(flatten)]
    pub user: NewUser,
}

/// Node `id` (or the caller's own) as a place inside the caller's subtree.
async fn node_in_scope(
    state: &AppState,
    caller: &Principal,
    id: Option<&str>,
) -> Result<Place, ApiError> {
    match id {
        Some(id) => Ok(
            tenancy::find_in_scope(&state.db.conn, &caller.place, None, id)
                .await?
                .place(),
        ),
        None => Ok(caller.place.clone()),
    }
}

async fn create_user(
    State(state): State<AppState>,
    Caller(caller): Caller,
    rid: Option<Extension<RequestId>>,
    ApiJson(body): ApiJson<CreateUserRequest>,
) -> Result<(StatusCode, Json<User>), ApiError> {
    let mut place = None;
    let result = async {
        let node = node_in_scope(&state, &caller, body.node_id.as_deref()).await?;
        place = Some(node.clone());
        let grant = state
            .rbac
            .authorize(&caller, Action::UserCreate, &node)
            .await?;
        let user = auth::create_user(&state.db.conn, &state.hasher, &grant, body.user).await?;
        state
            .rbac
            .subject_changed(SubjectRef::User(&user.id))
            .await?;
        Ok::<_, ApiError>(user)
    }
    .await;
    let target = result.as_ref().ok().map(|u| u.id.clone());
    let user = audited(
        &state,
        &caller,
        request_id(&rid),
        "user.create",
        ("user", target.as_deref()),
        place.as_ref(),
        result,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(user)))
}

async fn list_users(
    State(state): State<AppState>,
    Caller(caller): Caller,
    ApiQuery(filter): ApiQuery<UserFilter>,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<Json<Paged<User>>, ApiError> {
    let scope = node_in_scope(&state, &caller, filter.node_id.as_deref()).await?;
    state
        .rbac
        .authorize(&caller, Action::UserRead, &scope)
        .await?;
    let filter = UserFilter {
        node_id: None,
        ..filter
    };
    Ok(Json(
        auth::list_users(&state.db.conn, &scope, &filter, page).await?,
    ))
}

async fn get_user(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<User>, ApiError> {
    let (user, place) = auth::find_user_in_scope(&state.db.conn, &caller.place, &id).await?;
    state
        .rbac
        .authorize(&caller, Action::UserRead, &place)
        .await?;
    Ok(Json(user))
}

async fn update_user(
    State(state): State<AppState>,
    Caller(caller): Caller,
    rid: Option<Extension<RequestId>>,
    Path(id): Path<String>,
    ApiJson(patch): ApiJson<UserPatch>,
) -> Result<Json<User>, ApiError> {
    let mut place = None;
    let result = async {
        let (_, user_place) = auth::find_user_in_scope(&state.db.conn, &caller.place, &id).await?;
        place = Some(user_place.clone());
        let grant = state
            .rbac
            .authorize(&caller, Action::UserUpdate, &user_place)
            .await?;
        let user = auth::update_user(&state.db.conn, &state.hasher, &grant, &id, patch).await?;
        state
            .rbac
            .subject_changed(SubjectRef::User(&user.id))
            .await?;
        Ok::<_, ApiError>(user)
    }
    .await;
    let user = audited(
        &state,
        &caller,
        request_id(&rid),
        "user.update",
        ("user", Some(&id)),
        place.as_ref(),
        result,
    )
    .await?;
    Ok(Json(user))
}

// ----- API keys ------------------------------------------------------------------------------

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
    State(state): State<AppState>,
    Caller(caller): Caller,
    rid: Option<Extension<RequestId>>,
    ApiJson(body): ApiJson<CreateKeyRequest>,
) -> Result<Response, ApiError> {
    let mut place = None;
    let result = async {
        let node = node_in_scope(&state, &caller, body.node_id.as_deref()).await?;
        place = Some(node.clone());
        let grant = state
            .rbac
            .authorize(&caller, Action::ApiKeyCreate, &node)
            .await?;
        let (secret, key) = auth::create_api_key(&state.db.conn, &grant, body.key).await?;
        state
            .rbac
            .subject_changed(SubjectRef::ApiKey(&key.id))
            .await?;
        Ok::<_, ApiError>((secret, key))
    }
    .await;
    let target = result.as_ref().ok().map(|(_, k)| k.id.clone());
    let (secret, key) = audited(
        &state,
        &caller,
        request_id(&rid),
        "api_key.create",
        ("api_key", target.as_deref()),
        place.as_ref(),
        result,
    )
    .await?;
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

async fn list_keys(
    State(state): State<AppState>,
    Caller(caller): Caller,
    ApiQuery(query): ApiQuery<NodeQuery>,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<Json<Paged<ApiKey>>, ApiError> {
    let scope = node_in_scope(&state, &caller, query.node_id.as_deref()).await?;
    state
        .rbac
        .authorize(&caller, Action::ApiKeyRead, &scope)
        .await?;
    Ok(Json(
        auth::list_api_keys(&state.db.conn, &scope, None, page).await?,
    ))
}

async fn get_key(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<ApiKey>, ApiError> {
    let (key, place) = auth::find_api_key_in_scope(&state.db.conn, &caller.place, &id).await?;
    state
        .rbac
        .authorize(&caller, Action::ApiKeyRead, &place)
        .await?;
    Ok(Json(key))
}

async fn revoke_key(
    State(state): State<AppState>,
    Caller(caller): Caller,
    rid: Option<Extension<RequestId>>,
    Path(id): Path<String>,
) -> Result<Json<ApiKey>, ApiError> {
    let mut place = None;
    let result = async {
        let (_, key_place) =
            auth::find_api_key_in_scope(&state.db.conn, &caller.place, &id).await?;
        place = Some(key_place.clone());
        let grant = state
            .rbac
            .authorize(&caller, Action::ApiKeyRevoke, &key_place)
            .await?;
        let key = auth::revoke_api_key(&state.db.conn, &grant, &id).await?;
        state
            .rbac
            .subject_changed(SubjectRef::ApiKey(&key.id))
            .await?;
        Ok::<_, ApiError>(key)
    }
    .await;
    let key = audited(
        &state,
        &caller,
        request_id(&rid),
        "api_key.revoke",
        ("api_key", Some(&id)),
        place.as_ref(),
        result,
    )
    .await?;
    Ok(Json(key))
}

// ----- audit ---------------------------------------------------------------------------------

async fn list_audit(
    State(state): State<AppState>,
    Caller(caller): Caller,
    ApiQuery(filter): ApiQuery<audit::Filter>,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<Json<Paged<audit::Record>>, ApiError> {
    let scope = node_in_scope(&state, &caller, filter.node_id.as_deref()).await?;
    state
        .rbac
        .authorize(&caller, Action::AuditRead, &scope)
        .await?;
    Ok(Json(
        audit::list(&state.db.conn, &scope, &filter, page).await?,
    ))
}

// ----- Alipay credentials --------------------------------------------------------------------

async fn get_credentials(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<CredentialsView>, ApiError> {
    let merchant =
        tenancy::find_in_scope(&state.db.conn, &caller.place, Some(NodeKind::Merchant), &id)
            .await?;
    state
        .rbac
        .authorize(&caller, Action::AlipayCredentialsRead, &merchant.place())
        .await?;
    let view = credentials::get(&state.db.conn, &id)
        .await?
        .ok_or(credentials::Error::NotConfigured)?;
    Ok(Json(view))
}

async fn put_credentials(
    State(state): State<AppState>,
    Caller(caller): Caller,
    rid: Option<Extension<RequestId>>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<CredentialsInput>,
) -> Result<Json<CredentialsView>, ApiError> {
    let mut place = None;
    let result = async {
        let merchant =
            tenancy::find_in_scope(&state.db.conn, &caller.place, Some(NodeKind::Merchant), &id)
                .await?;
        place = Some(merchant.place());
        let grant = state
            .rbac
            .authorize(&caller, Action::AlipayCredentialsWrite, &merchant.place())
            .await?;
        let gateways = state.config.alipay.gateway_policy();
        credentials::check_gateway(&body, &gateways)?;
        let roots =
            credentials::ProductionRoots::new(&state.config.alipay.production_root_fingerprints);
        Ok::<_, ApiError>(
            credentials::put_with_roots(&state.db.conn, &state.vault, &grant, body, &roots).await?,
        )
    }
    .await;
    let view = audited(
        &state,
        &caller,
        request_id(&rid),
        "alipay_credentials.write",
        ("merchant", Some(&id)),
        place.as_ref(),
        result,
    )
    .await?;
    Ok(Json(view))
}

async fn generate_keypair(
    State(state): State<AppState>,
    Caller(caller): Caller,
    rid: Option<Extension<RequestId>>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<CredentialsView>), ApiError> {
    let mut place = None;
    let result = async {
        let merchant =
            tenancy::find_in_scope(&state.db.conn, &caller.place, Some(NodeKind::Merchant), &id)
                .await?;
        place = Some(merchant.place());
        let grant = state
            .rbac
            .authorize(&caller, Action::AlipayCredentialsWrite, &merchant.place())
            .await?;
        Ok::<_, ApiError>(
            credentials::generate_keypair(&state.db.conn, &state.vault, &grant).await?,
        )
    }
    .await;
    let view = audited(
        &state,
        &caller,
        request_id(&rid),
        "alipay_credentials.keypair",
        ("merchant", Some(&id)),
        place.as_ref(),
        result,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(view)))
}
