//! Signing in and out, changing one's password, and `me`: who the caller is and what their
//! role allows.
//!
//! Invariant: a sign-in or password check that was actually attempted is audited; attempts
//! refused before any check (throttled, busy) go to the log only, so anonymous callers cannot
//! grow the audit log.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiJson, Caller, Ctx, SESSION_COOKIE, request_id};
use super::middleware::{HostContext, RequestId};
use crate::auth::{self, PrincipalKind, User};
use crate::rbac::Action;
use crate::rbac::audit::{self, Outcome};
use crate::tenancy::{self, Node, Role};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/auth/login", post(login))
        .route("/api/v1/auth/logout", post(logout))
        .route("/api/v1/auth/password", post(change_password))
        .route("/api/v1/me", get(me))
}

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
    let (login, cookie) = sign_in(
        &state,
        &host,
        &client_ip(connect),
        request_id(&id),
        (&body.email, &body.password),
    )
    .await?;
    let body = LoginResponse {
        token: login.token.expose_secret().to_owned(),
        expires_at: login.expires_at,
        user: login.user,
    };
    let mut response = Json(body).into_response();
    response.headers_mut().insert(header::SET_COOKIE, cookie);
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// The one door to signing in, for the API and the consoles: checks the password (on the
/// partner's domain, only that partner's accounts), audits an attempt that was checked, and
/// returns the session with the cookie that carries it.
pub(super) async fn sign_in(
    state: &AppState,
    host: &HostContext,
    ip: &str,
    request_id: Option<&str>,
    (email, password): (&str, &SecretString),
) -> Result<(auth::Login, HeaderValue), ApiError> {
    let ttl = chrono::Duration::hours(i64::from(state.config.auth.session_ttl_hours));
    let result = auth::login(
        &state.db.conn,
        &state.hasher,
        email,
        password,
        ip,
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
        request_id,
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
    let max_age = i64::from(state.config.auth.session_ttl_hours) * 3600;
    let secure = if state.config.auth.cookie_secure {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{SESSION_COOKIE}={}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}",
        login.token.expose_secret()
    );
    let cookie = HeaderValue::from_str(&cookie)
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("session cookie: {e}")))?;
    Ok((login, cookie))
}

/// The peer's address, which sign-in limits count per: an IPv6 address by its /64, since one
/// subscriber usually holds a whole /64 and could otherwise rotate through it.
pub(super) fn client_ip(connect: Option<Extension<ConnectInfo<SocketAddr>>>) -> String {
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
    let mut response = StatusCode::NO_CONTENT.into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, sign_out(&state, &caller).await?);
    Ok(response)
}

/// Ends the caller's session (an API key has none); returns the cookie that clears it.
pub(super) async fn sign_out(
    state: &AppState,
    caller: &auth::Principal,
) -> Result<HeaderValue, ApiError> {
    if let Some(session) = &caller.session_id {
        auth::logout(&state.db.conn, session).await?;
    }
    Ok(HeaderValue::from_static(
        "trellis_session=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0",
    ))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct PasswordChange {
    #[schema(value_type = String, format = Password)]
    pub current_password: SecretString,
    #[schema(value_type = String, format = Password)]
    pub new_password: SecretString,
}

async fn change_password(
    ctx: Ctx,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    ApiJson(body): ApiJson<PasswordChange>,
) -> Result<StatusCode, ApiError> {
    new_password(&ctx, &client_ip(connect), &body).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The one door to changing one's own password, audited as at sign-in: attempts refused
/// before the check are not, so a session cannot grow the log by hammering this.
pub(super) async fn new_password(
    ctx: &Ctx,
    ip: &str,
    change: &PasswordChange,
) -> Result<(), ApiError> {
    let caller = &ctx.caller;
    let result = auth::change_password(
        &ctx.state.db.conn,
        &ctx.state.hasher,
        caller,
        ip,
        &change.current_password,
        &change.new_password,
    )
    .await;
    if let Err(error) = &result
        && error.refused_before_check()
    {
        tracing::info!(%ip, %error, "password change refused before the password check");
        return Err(clone_auth(error).into());
    }
    let result = result.map_err(ApiError::from);
    ctx.audited(
        "user.password",
        ("user", Some(&caller.id)),
        Some(&caller.place),
        result,
    )
    .await
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

async fn me(ctx: Ctx) -> Result<Json<Me>, ApiError> {
    let own = ctx.caller.place.id.clone();
    let node = tenancy::find_in_scope(&ctx.state.db.conn, &ctx.caller.place, None, &own).await?;
    let caller = ctx.caller;
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
