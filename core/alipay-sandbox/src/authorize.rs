//! Web authorisation (网页授权): the page a merchant's H5 page sends a consumer to
//! (`/oauth2/publicAppAuthorize.htm`, alipay-protocol §6.3), which grants an `auth_code` for
//! the signed-in consumer and returns them to `redirect_uri` with it and the `state`.
//!
//! In a browser the consumer is whoever `GET /consumers/{user}/sign-in` signed in (a cookie);
//! `POST /consumers/{user}/open-page` plays a consumer opening a merchant's page inside Alipay,
//! following the detour through this page the way Alipay's client would.
//!
//! Invariant: a code is granted only to a registered app, for a request naming a known scope,
//! an absolute `http(s)` `redirect_uri` and a `state` Alipay would take (≤ 100 characters).

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::consumers::{consumer_profile, sandbox_user_id};
use crate::{Error, Sandbox};

/// The cookie naming the consumer signed in to the sandbox in a browser.
const CONSUMER_COOKIE: &str = "sandbox_consumer";
/// The page's path, under the sandbox.
const PAGE: &str = "/oauth2/publicAppAuthorize.htm";
/// Redirects `open-page` follows at most: the page, Alipay, the page again.
const MAX_HOPS: usize = 4;
/// The most of a page's answer handed back.
const MAX_BODY: usize = 64 * 1024;

impl Sandbox {
    /// Grants `user` a code for the request in `query` and answers where Alipay sends them.
    pub async fn authorize(
        &self,
        user: &str,
        query: &BTreeMap<String, String>,
    ) -> Result<String, Error> {
        let field = |name: &str| query.get(name).map(String::as_str).unwrap_or_default();
        let app_id = field("app_id");
        if app_id.is_empty() || self.store().get("app", app_id).await?.is_none() {
            return Err(Error::Invalid(format!(
                "app_id {app_id:?} is not a registered app"
            )));
        }
        let scopes: Vec<&str> = field("scope").split(',').map(str::trim).collect();
        if !scopes
            .iter()
            .any(|s| matches!(*s, "auth_base" | "auth_user"))
        {
            return Err(Error::Invalid(
                "scope must name auth_base or auth_user".into(),
            ));
        }
        let state = field("state");
        if state.chars().count() > 100 {
            return Err(Error::Invalid("state is at most 100 characters".into()));
        }
        let mut back = url::Url::parse(field("redirect_uri"))
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| Error::Invalid("redirect_uri must be an absolute http(s) URL".into()))?;
        let user_id = sandbox_user_id(user);
        if self.store().get("user", &user_id).await?.is_none() {
            self.store()
                .put("user", &user_id, &consumer_profile(&user_id))
                .await?;
        }
        let code = self.grant_code(app_id, &user_id).await?;
        back.query_pairs_mut()
            .append_pair("app_id", app_id)
            .append_pair("source", "alipay_wallet")
            .append_pair("scope", field("scope"))
            .append_pair("auth_code", &code)
            .append_pair("state", state);
        Ok(back.into())
    }

    /// "User `user` opens `url` inside Alipay": the page is fetched; a redirect to this
    /// sandbox's authorisation page is answered as Alipay would, carrying the cookies the page
    /// set; the page it lands on is answered with its status and body.
    pub async fn open_page(&self, user: &str, url: &str) -> Result<(u16, String), Error> {
        let mut next = url.to_owned();
        let mut cookies: Vec<String> = Vec::new();
        for _ in 0..MAX_HOPS {
            let parsed = url::Url::parse(&next).map_err(|_| Error::Invalid("not a URL".into()))?;
            if parsed.path().ends_with(PAGE) {
                let query = parsed.query_pairs().into_owned().collect();
                next = self.authorize(user, &query).await?;
                continue;
            }
            let (to, host) = self.target(&next)?;
            let mut request = self.inner.http.get(to);
            if let Some(host) = host {
                request = request.header("host", host);
            }
            if !cookies.is_empty() {
                request = request.header("cookie", cookies.join("; "));
            }
            let mut response = request
                .send()
                .await
                .map_err(|e| Error::Invalid(e.without_url().to_string()))?;
            for set in response.headers().get_all(header::SET_COOKIE) {
                if let Some(pair) = set.to_str().ok().and_then(|s| s.split(';').next()) {
                    cookies.push(pair.trim().to_owned());
                }
            }
            let status = response.status();
            if status.is_redirection()
                && let Some(location) = response
                    .headers()
                    .get(header::LOCATION)
                    .and_then(|l| l.to_str().ok())
            {
                next = parsed
                    .join(location)
                    .map_err(|_| Error::Invalid("a bad redirect".into()))?
                    .into();
                continue;
            }
            let mut body = Vec::new();
            while let Ok(Some(chunk)) = response.chunk().await {
                body.extend_from_slice(&chunk);
                if body.len() >= MAX_BODY {
                    body.truncate(MAX_BODY);
                    break;
                }
            }
            return Ok((status.as_u16(), String::from_utf8_lossy(&body).into_owned()));
        }
        Err(Error::Invalid(format!("more than {MAX_HOPS} redirects")))
    }
}

/// The authorisation page in a browser: for the consumer signed in by cookie.
pub(crate) async fn page(
    State(sandbox): State<Sandbox>,
    headers: HeaderMap,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    let consumer = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == CONSUMER_COOKIE)
        .map(|(_, value)| value.to_owned());
    let Some(consumer) = consumer else {
        return invalid(Error::Invalid(
            "no consumer is signed in: GET /sandbox/consumers/{user}/sign-in first".into(),
        ));
    };
    match sandbox.authorize(&consumer, &query).await {
        Ok(back) => (StatusCode::FOUND, [(header::LOCATION, back)]).into_response(),
        Err(e) => invalid(e),
    }
}

/// Signs `user` in to the sandbox in this browser.
pub(crate) async fn sign_in(Path(user): Path<String>) -> Response {
    let safe = !user.is_empty()
        && user.len() <= 32
        && user.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !safe {
        return invalid(Error::Invalid(
            "a consumer is 1 to 32 letters, digits or -".into(),
        ));
    }
    let cookie = format!("{CONSUMER_COOKIE}={user}; Path=/sandbox; HttpOnly; SameSite=Lax");
    (
        [(header::SET_COOKIE, cookie)],
        Json(json!({ "consumer": user, "user_id": sandbox_user_id(&user) })),
    )
        .into_response()
}

#[derive(serde::Deserialize)]
pub(crate) struct OpenPage {
    url: String,
}

pub(crate) async fn open_page(
    State(sandbox): State<Sandbox>,
    Path(user): Path<String>,
    Json(body): Json<OpenPage>,
) -> Response {
    match sandbox.open_page(&user, &body.url).await {
        Ok((status, page)) => Json(json!({ "status": status, "body": page })).into_response(),
        Err(e) => invalid(e),
    }
}

fn invalid(error: Error) -> Response {
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        Json(json!({ "code": "invalid", "message": error.to_string() })),
    )
        .into_response()
}
