//! Signing in and out of the consoles, changing one's password, choosing the language.

use std::net::SocketAddr;

use axum::extract::rejection::FormRejection;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Form, Router};
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::json;

use super::super::AppState;
use super::super::error::ApiError;
use super::super::middleware::{HostContext, RequestId};
use super::super::session;
use super::{LANG_COOKIE, Look, Signed, form, locale_of, problem_text, same_origin};

/// Sign-in, sign-out, password, language.
pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/console/login", get(login_page).post(login))
        .route("/console/logout", post(logout))
        .route("/console/password", get(password_page).post(password))
        .route("/console/lang", get(choose_language))
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    email: String,
    password: SecretString,
}

async fn login_page(
    State(state): State<AppState>,
    look: Look,
    signed: Result<Signed, Response>,
) -> Result<Response, ApiError> {
    if signed.is_ok() {
        return Ok(Redirect::to("/console").into_response());
    }
    look.render(&state, "console-login", json!({}))
}

async fn login(
    State(state): State<AppState>,
    Extension(host): Extension<HostContext>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    id: Option<Extension<RequestId>>,
    look: Look,
    headers: HeaderMap,
    body: Result<Form<LoginForm>, FormRejection>,
) -> Result<Response, ApiError> {
    // No session yet, so no form token: the origin check keeps another site from signing a
    // browser into an account of its choosing.
    if !same_origin(&headers) {
        return Err(ApiError::FormRefused("sign in from this site's own page"));
    }
    let body = form(body)?;
    let ip = session::client_ip(connect);
    let request_id = id.as_ref().map(|Extension(RequestId(id))| id.as_str());
    match session::sign_in(
        &state,
        &host,
        &ip,
        request_id,
        (&body.email, &body.password),
    )
    .await
    {
        Ok((_, cookie)) => {
            let mut response = Redirect::to("/console").into_response();
            response.headers_mut().insert(header::SET_COOKIE, cookie);
            Ok(response)
        }
        // A refused sign-in shows the form again with the reason, keeping what was typed.
        Err(error) => {
            let (status, code) = error.status_and_code();
            if status.is_server_error() {
                return Err(error);
            }
            let data = json!({ "email": body.email, "problem": { "code": code } });
            look.render_as(&state, "console-login", data, status)
        }
    }
}

#[derive(Debug, Deserialize)]
struct TokenForm {
    #[serde(default)]
    form_token: String,
}

async fn logout(
    State(state): State<AppState>,
    signed: Signed,
    headers: HeaderMap,
    body: Result<Form<TokenForm>, FormRejection>,
) -> Result<Response, ApiError> {
    signed.check_form(&headers, &form(body)?.form_token)?;
    let clear = session::sign_out(&state, &signed.ctx.caller).await?;
    let mut response = Redirect::to("/console/login").into_response();
    response.headers_mut().insert(header::SET_COOKIE, clear);
    Ok(response)
}

async fn password_page(
    State(state): State<AppState>,
    look: Look,
    signed: Signed,
) -> Result<Response, ApiError> {
    let data = signed.frame("password").await?;
    look.render(&state, "console-password", data)
}

#[derive(Debug, Deserialize)]
struct PasswordForm {
    #[serde(default)]
    form_token: String,
    current_password: SecretString,
    new_password: SecretString,
}

async fn password(
    State(state): State<AppState>,
    look: Look,
    signed: Signed,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Result<Form<PasswordForm>, FormRejection>,
) -> Result<Response, ApiError> {
    let body = form(body)?;
    signed.check_form(&headers, &body.form_token)?;
    let change = session::PasswordChange {
        current_password: body.current_password,
        new_password: body.new_password,
    };
    let ip = session::client_ip(connect);
    let mut data = signed.frame("password").await?;
    let status = match session::new_password(&signed.ctx, &ip, &change).await {
        Ok(()) => {
            data["done"] = true.into();
            StatusCode::OK
        }
        Err(error) => {
            let (status, code) = error.status_and_code();
            if status.is_server_error() {
                return Err(error);
            }
            data["problem"] = json!({ "code": code, "message": problem_text(&error) });
            status
        }
    };
    look.render_as(&state, "console-password", data, status)
}

#[derive(Debug, Deserialize)]
struct LanguageQuery {
    to: String,
}

/// Keeps the visitor's language for a year; a preference, not a change of any record.
async fn choose_language(Query(query): Query<LanguageQuery>) -> Result<Response, ApiError> {
    let locale = locale_of(&query.to).ok_or_else(|| ApiError::Validation {
        field: "to",
        message: "one of zh-CN, en".into(),
    })?;
    let mut response = Redirect::to("/console").into_response();
    let value = format!(
        "{LANG_COOKIE}={}; Path=/; SameSite=Lax; Max-Age=31536000",
        locale.tag()
    );
    if let Ok(value) = HeaderValue::from_str(&value) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    Ok(response)
}
