//! The plugins' own routes over HTTP: admin paths under `/api/v1/merchants/{id}/plugins/…` and
//! `/api/v1/stores/{id}/plugins/…`, member pages under `/m/{merchant}/{plugin}/…` on the
//! partner's domain, and Alipay's member-card activation redirect. Each handler turns the HTTP
//! request into domain inputs and goes through `doors`, the one door for plugin calls.
//!
//! Invariant: what a plugin answers is filtered here — it cannot set cookies on the partner's
//! domain, redirect off the site, or keep an authenticated answer in a shared cache — and its
//! pages run in an opaque origin.

use std::collections::{BTreeMap, HashMap};

use axum::body::Bytes;
use axum::extract::{MatchedPath, Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Extension, Router};

use super::AppState;
use super::error::ApiError;
use super::extract::Ctx;
use super::middleware::HostContext;
use crate::doors::{self, Arrival, Door, Doors};
use crate::plugins::HttpResponse;
use crate::themes::Locale;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/merchants/{id}/plugins/{plugin}", any(admin_route))
        .route("/api/v1/merchants/{id}/plugins/{plugin}/", any(admin_route))
        .route(
            "/api/v1/merchants/{id}/plugins/{plugin}/{*rest}",
            any(admin_route),
        )
        .route(
            "/api/v1/stores/{id}/plugins/{plugin}/{*rest}",
            any(admin_route),
        )
        .route(CARD_ACTIVATION_PATH, get(card_activation))
        .route(LEGACY_CARD_ACTIVATION_PATH, get(card_activation))
        .route("/m/{merchant}/{plugin}", any(public_route))
        .route("/m/{merchant}/{plugin}/", any(public_route))
        .route("/m/{merchant}/{plugin}/{*rest}", any(public_route))
}

/// The member card's activation callback, clean path.
pub const CARD_ACTIVATION_PATH: &str = "/callbacks/alipay/card-activation";
/// The same callback at the path the seed system registered with Alipay, so partners moving
/// from it keep the 授权回调地址 Alipay already approved.
pub const LEGACY_CARD_ACTIVATION_PATH: &str = "/index.php/wxapi/Al/auth/membercode/notify";

/// What arrives with every plugin route: the method, the URI, the headers and the body.
struct Incoming {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
}

impl<S: Send + Sync> axum::extract::FromRequest<S> for Incoming {
    type Rejection = ApiError;

    async fn from_request(request: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let (parts, body) = request.into_parts();
        let body = Bytes::from_request(
            axum::extract::Request::from_parts(parts.clone(), body),
            state,
        )
        .await
        .map_err(|_| ApiError::BadBody)?;
        Ok(Self {
            method: parts.method,
            uri: parts.uri,
            headers: parts.headers,
            body,
        })
    }
}

impl Incoming {
    /// The domain request for the part of the path after the plugin's prefix.
    fn request(self, rest: &str) -> doors::Request {
        let headers = self
            .headers
            .iter()
            .filter_map(|(name, value)| {
                value
                    .to_str()
                    .ok()
                    .map(|v| (name.as_str().to_owned(), v.to_owned()))
            })
            .collect();
        doors::Request {
            method: self.method.as_str().to_owned(),
            path: rest.to_owned(),
            query: self.uri.query().unwrap_or_default().to_owned(),
            locale: locale_of(&self.headers),
            headers,
            body: self.body.to_vec(),
        }
    }
}

pub(super) fn doors(state: &AppState) -> Doors<'_> {
    Doors {
        payments: &state.payments,
        db: &state.db.conn,
        rbac: &state.rbac,
        catalog: &state.catalog,
        public_scheme: &state.config.http.public_scheme,
    }
}

/// Where the request arrived. On the partner's own domain the scheme is the one the request
/// came with (as a proxy in front reports it), so callbacks return the way the caller came.
pub(super) fn arrival(state: &AppState, host: &HostContext, headers: &HeaderMap) -> Arrival {
    let scheme = match headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
    {
        Some("http") => "http",
        Some("https") => "https",
        _ => state.config.http.public_scheme.as_str(),
    };
    Arrival {
        partner_id: host.partner_id().map(str::to_owned),
        origin: host.partner_origin(scheme),
    }
}

/// A door's error as an HTTP one: an unknown route is an unknown path.
pub(super) fn door_error(error: doors::Error, uri: &Uri) -> ApiError {
    match error {
        doors::Error::NoRoute => ApiError::NotFound(uri.path().to_owned()),
        other => other.into(),
    }
}

/// Every admin path of a plugin's routes, merchant and store, with or without a rest: the
/// matched pattern says which door it is. Calls that may change something are audited.
async fn admin_route(
    ctx: Ctx,
    Extension(host): Extension<HostContext>,
    matched: MatchedPath,
    Path(params): Path<HashMap<String, String>>,
    incoming: Incoming,
) -> Result<Response, ApiError> {
    let param = |name: &str| params.get(name).map(String::as_str).unwrap_or_default();
    let (id, plugin, rest) = (param("id"), param("plugin"), param("rest"));
    let door = if matched.as_str().starts_with("/api/v1/stores/") {
        Door::Store {
            caller: &ctx.caller,
            store_id: id,
        }
    } else {
        Door::Merchant {
            caller: &ctx.caller,
            merchant_id: id,
        }
    };
    let mutating = incoming.method != Method::GET && incoming.method != Method::HEAD;
    let uri = incoming.uri.clone();
    let arrival = arrival(&ctx.state, &host, &incoming.headers);
    let answer = doors(&ctx.state)
        .call(door, plugin, &arrival, incoming.request(rest))
        .await;
    let result = answer
        .result
        .map(|response| plugin_response(response, true))
        .map_err(|e| door_error(e, &uri));
    if mutating {
        let about = ("plugin", Some(plugin));
        ctx.audited("plugin.call", about, answer.place.as_ref(), result)
            .await
    } else {
        result
    }
}

/// Alipay's redirect after a consumer confirms the card form (`auth_code`, `app_id`,
/// `template_id`, `request_id`, `out_string`), on the partner's domain.
async fn card_activation(
    State(state): State<AppState>,
    Extension(host): Extension<HostContext>,
    incoming: Incoming,
) -> Result<Response, ApiError> {
    let uri = incoming.uri.clone();
    let query: BTreeMap<String, String> =
        url::form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let arrival = arrival(&state, &host, &incoming.headers);
    let door = Door::CardActivation { query: &query };
    let answer = doors(&state)
        .call(door, "", &arrival, incoming.request(""))
        .await;
    answer
        .result
        .map(|response| plugin_response(response, false))
        .map_err(|e| door_error(e, &uri))
}

/// A member page: no sign-in, on the partner's own domain (404 on another partner's), for an
/// active merchant entitled to the plugin now.
async fn public_route(
    State(state): State<AppState>,
    Extension(host): Extension<HostContext>,
    Path(params): Path<HashMap<String, String>>,
    incoming: Incoming,
) -> Result<Response, ApiError> {
    let param = |name: &str| params.get(name).map(String::as_str).unwrap_or_default();
    let uri = incoming.uri.clone();
    let arrival = arrival(&state, &host, &incoming.headers);
    let door = Door::Member {
        merchant_id: param("merchant"),
    };
    let secure = arrival
        .origin
        .as_deref()
        .is_some_and(|o| o.starts_with("https://"));
    let answer = doors(&state)
        .call(
            door,
            param("plugin"),
            &arrival,
            incoming.request(param("rest")),
        )
        .await;
    match answer.result {
        Ok(response) => Ok(plugin_response(response, false)),
        Err(doors::Error::ToAlipay(to)) => Ok(to_alipay(&to, secure)),
        Err(error) => Err(door_error(error, &uri)),
    }
}

/// The detour of a member page that identifies its visitor: to Alipay's authorisation, with
/// the nonce kept in a cookie only this plugin's member pages of this merchant receive, for ten
/// minutes. `Lax`, so it comes back on Alipay's top-level redirect.
fn to_alipay(to: &doors::identify::ToAlipay, secure: bool) -> Response {
    let cookie = format!(
        "{}={}; Path={}; Max-Age=600; HttpOnly; SameSite=Lax{}",
        doors::identify::STATE_COOKIE,
        to.state,
        to.cookie_path,
        if secure { "; Secure" } else { "" }
    );
    let mut response = StatusCode::FOUND.into_response();
    let headers = response.headers_mut();
    if let (Ok(location), Ok(cookie)) = (
        axum::http::HeaderValue::from_str(&to.url),
        axum::http::HeaderValue::from_str(&cookie),
    ) {
        headers.insert(axum::http::header::LOCATION, location);
        headers.insert(axum::http::header::SET_COOKIE, cookie);
        headers.insert(
            axum::http::header::CACHE_CONTROL,
            axum::http::HeaderValue::from_static("no-store"),
        );
        response
    } else {
        ApiError::Internal(anyhow::anyhow!("an unwritable authorisation redirect")).into_response()
    }
}

/// Response headers a plugin may set; everything else (notably `Set-Cookie`) is dropped.
const ALLOWED_RESPONSE: [&str; 9] = [
    "content-type",
    "cache-control",
    "location",
    "etag",
    "last-modified",
    "content-language",
    "content-disposition",
    "vary",
    "expires",
];

/// Whether a plugin's `Location` stays on this site: a path, not another origin.
fn is_local_location(value: &str) -> bool {
    value.starts_with('/') && !value.starts_with("//") && !value.starts_with("/\\")
}

/// The plugin's answer as an HTTP response. `admin`: an authenticated API answer, which no
/// shared cache may keep.
fn plugin_response(response: HttpResponse, admin: bool) -> Response {
    let status = StatusCode::from_u16(response.status)
        .ok()
        .filter(|s| !s.is_informational())
        .unwrap_or(StatusCode::BAD_GATEWAY);
    let mut out = (status, response.body).into_response();
    let headers = out.headers_mut();
    for (name, value) in response.headers {
        let lower = name.to_ascii_lowercase();
        if !ALLOWED_RESPONSE.contains(&lower.as_str())
            || (lower == "location" && !is_local_location(&value))
            || (admin && lower == "cache-control")
        {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            header::HeaderName::from_bytes(lower.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            // The body's default `application/octet-stream` gives way to the plugin's type.
            if name == header::CONTENT_TYPE {
                headers.insert(name, value);
            } else {
                headers.append(name, value);
            }
        }
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if admin {
        headers.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("private, no-store"),
        );
    }
    // The page runs in an opaque origin: its scripts cannot read or ride the partner domain's
    // session (it is served on the same host as the admin console).
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "sandbox allow-scripts allow-forms allow-popups allow-top-navigation-by-user-activation",
        ),
    );
    out
}

fn locale_of(headers: &HeaderMap) -> &'static str {
    Locale::negotiate(
        headers
            .get(header::ACCEPT_LANGUAGE)
            .and_then(|v| v.to_str().ok()),
    )
    .tag()
}
