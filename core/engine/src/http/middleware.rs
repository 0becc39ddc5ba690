//! Layers every request passes through: a request id and a tracing span, the body size limit,
//! panic containment, and themed error pages for browsers.

use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use http_body_util::{BodyExt, Limited};
use serde_json::json;
use tracing::Instrument;
use uuid::Uuid;

use super::AppState;
use super::error::{ApiError, ErrorBody, error_response};
use crate::tenancy::{self, HostPartner};
use crate::themes::{DEFAULT_THEME, Locale};

pub const REQUEST_ID: &str = "x-request-id";

/// The id of the current request, as echoed in `x-request-id`.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// The theme a later layer chose for this request (the partner's); `default` when absent.
#[derive(Debug, Clone)]
pub struct ThemeChoice(pub String);

/// Accepts the caller's `x-request-id` when it is short and printable (so a proxy's id
/// carries through), otherwise mints one; sets it on the response; wraps the request in a span
/// and logs method, path, status and latency when it completes. The query string is left out
/// of logs on purpose: callbacks carry one-time codes in it.
pub async fn observe(mut request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| Uuid::now_v7().to_string(), str::to_owned);
    let header_value =
        HeaderValue::from_str(&id).unwrap_or_else(|_| HeaderValue::from_static("invalid"));
    request
        .headers_mut()
        .insert(REQUEST_ID, header_value.clone());
    request.extensions_mut().insert(RequestId(id.clone()));

    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let span = tracing::info_span!("request", request_id = %id, %method, %path);
    let started = Instant::now();
    let mut response = next.run(request).instrument(span.clone()).await;
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    let status = response.status().as_u16();
    span.in_scope(|| {
        if response.status().is_server_error() {
            tracing::warn!(status, latency_ms, "request completed");
        } else {
            tracing::info!(status, latency_ms, "request completed");
        }
    });
    response.headers_mut().insert(REQUEST_ID, header_value);
    response
}

/// Reads the whole body, up to the configured limit and within `http.body_read_timeout_secs`,
/// before any handler runs: a handler never sees a partial body, an oversized one is refused with
/// 413 and a slow one with 408, whatever the route.
///
/// Plugin archives have a larger ceiling, granted only to a caller who is already signed in
/// with a role that may install plugins (checked from the headers, before a byte of the body is
/// read) and only while fewer than `http.max_concurrent_uploads` others are being read, so the
/// memory uploads can hold is bounded and never open to anonymous callers.
///
/// A request that carries no credentials gets the smaller `http.anonymous_body_limit` (the
/// operator's sandbox aside), and every body in memory holds its share of
/// `http.max_buffered_body_bytes` while its request runs, so slow or stalled senders cannot
/// pin more memory than that between them.
pub async fn limit_body(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let mut limit = state.config.http.body_limit;
    let anonymous = !request.headers().contains_key(header::AUTHORIZATION)
        && !request.headers().contains_key(header::COOKIE);
    let path = request.uri().path();
    if anonymous && !is_sandbox(path) {
        limit = limit.min(state.config.http.anonymous_body_limit);
    }
    let mut upload_slot = None;
    if is_archive_upload(&request) {
        let host = request
            .extensions()
            .get::<HostContext>()
            .cloned()
            .unwrap_or_default();
        let caller = super::extract::principal_of(&state, request.headers(), &host).await;
        match caller {
            Ok(caller) if crate::rbac::allows(caller.role, crate::rbac::Action::PluginManage) => {
                match state.uploads.clone().try_acquire_owned() {
                    Ok(slot) => upload_slot = Some(slot),
                    Err(_) => return ApiError::Busy("uploads").into_response(),
                }
                limit = limit.max(crate::plugins::archive::MAX_TOTAL_BYTES);
            }
            Ok(_) => {}
            Err(error) => return error.into_response(),
        }
    }
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return ApiError::PayloadTooLarge { limit }.into_response();
    }
    // The most this body can take: its declared length, the whole limit when it is sent in
    // chunks, nothing when it has neither.
    let reserve = match declared {
        Some(len) => len,
        None if request.headers().contains_key(header::TRANSFER_ENCODING) => limit as u64,
        None => 0,
    };
    let kib = u32::try_from(reserve.div_ceil(1024)).unwrap_or(u32::MAX);
    let _buffered = if kib == 0 {
        None
    } else {
        match state.body_budget.clone().try_acquire_many_owned(kib) {
            Ok(permit) => Some(permit),
            Err(_) => return ApiError::Busy("requests being received").into_response(),
        }
    };
    let (parts, body) = request.into_parts();
    let timeout = std::time::Duration::from_secs(state.config.http.body_read_timeout_secs);
    let collected = tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await;
    let bytes: Bytes = match collected {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => {
            return ApiError::PayloadTooLarge { limit }.into_response();
        }
        Ok(Err(error)) => {
            tracing::debug!(%error, "reading the request body failed");
            return ApiError::BadBody.into_response();
        }
        Err(_) => {
            let mut response = ApiError::BodyTimeout.into_response();
            // The rest of the body may still be on its way: do not keep the connection.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return response;
        }
    };
    let response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    drop(upload_slot);
    response
}

/// The offline sandbox's routes, nested under `/sandbox`.
fn is_sandbox(path: &str) -> bool {
    path == "/sandbox" || path.starts_with("/sandbox/")
}

/// `POST /api/v1/partners/{id}/plugins` and the console's `POST /console/plugins/upload`: the
/// routes that take a plugin archive.
fn is_archive_upload(request: &Request) -> bool {
    let path = request.uri().path();
    request.method() == axum::http::Method::POST
        && (path == "/console/plugins/upload"
            || path
                .strip_prefix("/api/v1/partners/")
                .and_then(|rest| rest.strip_suffix("/plugins"))
                .is_some_and(|id| !id.is_empty() && !id.contains('/')))
}

/// What every page the engine renders itself (its home, its themed error pages) may load: its
/// own styles, images and scripts, nothing inline and nothing from another origin; it may not be
/// framed. A plugin's pages carry their own, stricter policy (an opaque origin), which is kept.
const PAGE_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Adds the engine's page policy and its companions to HTML answers that do not set their own.
pub async fn page_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let is_html = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("text/html"));
    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if is_html && !headers.contains_key(header::CONTENT_SECURITY_POLICY) {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(PAGE_POLICY),
        );
        headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("same-origin"),
        );
    }
    response
}

/// For a browser (it asks for HTML and is not calling `/api/…`), replaces our JSON error bodies
/// with the theme's error page in the visitor's language; API clients keep the JSON.
pub async fn error_pages(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let wants_html = wants_html(&request);
    let locale = Locale::negotiate(
        request
            .headers()
            .get(header::ACCEPT_LANGUAGE)
            .and_then(|v| v.to_str().ok()),
    );
    let response = next.run(request).await;
    if !wants_html {
        return response;
    }
    let Some(error) = response.extensions().get::<ErrorBody>().cloned() else {
        return response;
    };
    let status = response.status();
    let theme = response
        .extensions()
        .get::<ThemeChoice>()
        .map_or(DEFAULT_THEME.to_owned(), |t| t.0.clone());
    let page = match status {
        StatusCode::NOT_FOUND => "404",
        s if s.is_server_error() => "500",
        _ => "error",
    };
    let data = json!({ "status": status.as_u16(), "code": error.code, "message": error.message });
    match state.themes.render_page(&theme, page, locale, data) {
        Ok(html) => {
            let mut themed = (status, Html(html)).into_response();
            // The request id and any other headers set by inner layers stay on the page.
            for (name, value) in response.headers() {
                if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
                    themed.headers_mut().insert(name.clone(), value.clone());
                }
            }
            themed
        }
        Err(render_error) => {
            tracing::error!(error = %render_error, "error page could not be rendered");
            response
        }
    }
}

fn wants_html(request: &Request) -> bool {
    if request.uri().path().starts_with("/api/") {
        return false;
    }
    request
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"))
}

/// Where the request's `Host` points: a partner's domain (white label), or the platform console
/// (`partner` is `None`). Resolved once per request, before any handler runs.
#[derive(Debug, Clone, Default)]
pub struct HostContext {
    pub partner: Option<HostPartner>,
    /// The port the `Host` header named, if any: origins keep it (`http://localhost:8080`).
    pub port: Option<u16>,
}

impl HostContext {
    pub fn partner_id(&self) -> Option<&str> {
        self.partner.as_ref().map(|p| p.partner_id.as_str())
    }

    /// The origin of the partner domain the request came through, built from the stored domain
    /// (never from the raw header) and the header's port.
    pub fn partner_origin(&self, scheme: &str) -> Option<String> {
        let partner = self.partner.as_ref()?;
        Some(match self.port {
            Some(port) => format!("{scheme}://{}:{port}", partner.domain),
            None => format!("{scheme}://{}", partner.domain),
        })
    }
}

/// Resolves the host for everything but the probes and static files: a console host
/// (`http.console_hosts`), else the partner that claims it, else 404 — a host nobody set up
/// reaches nothing. A `Host` that does not parse strictly is 400. Records the partner's theme on
/// the response so error pages wear it.
pub async fn resolve_host(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    if path == "/healthz" || path == "/readyz" || path.starts_with("/static/") {
        return next.run(request).await;
    }
    let mut headers = request.headers().get_all(header::HOST).iter();
    let (header_host, repeated) = (headers.next(), headers.next().is_some());
    let parsed_header = header_host
        .and_then(|v| v.to_str().ok())
        .and_then(tenancy::parse_host_header);
    let parsed_target = request
        .uri()
        .authority()
        .and_then(|a| tenancy::parse_host_header(a.as_str()));
    // One host per request: a second `Host`, or an absolute-form target naming another host
    // than `Host`, is where a proxy in front and this engine could disagree about the tenant.
    let consistent = !repeated
        && (header_host.is_none() || parsed_header.is_some())
        && (parsed_target.is_none() || parsed_header.is_none() || parsed_target == parsed_header);
    let Some((name, port)) = parsed_header.or(parsed_target).filter(|_| consistent) else {
        return ApiError::BadRequest("the Host header is missing or malformed".into())
            .into_response();
    };
    let partner = if state.config.http.console_hosts.contains(&name) {
        None
    } else {
        let read = tenancy::partner_for_host(&state.db.conn, &name);
        match state.hosts.get_or_load(&name, read).await {
            Ok(Some(partner)) => Some(partner),
            Ok(None) => return ApiError::UnknownHost.into_response(),
            Err(error) => return ApiError::from(error).into_response(),
        }
    };
    // The offline sandbox is a development tool of the operator's: never on a partner's domain.
    if partner.is_some() && is_sandbox(path) {
        return ApiError::NotFound(path.to_owned()).into_response();
    }
    let theme = partner.as_ref().and_then(|p| p.theme.clone());
    request
        .extensions_mut()
        .insert(HostContext { partner, port });
    let mut response = next.run(request).await;
    if let Some(theme) = theme {
        response.extensions_mut().insert(ThemeChoice(theme));
    }
    response
}

/// Turns a panic inside a handler into a 500 JSON error, logged, without the panic text.
pub fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let detail = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("non-string panic");
    tracing::error!(panic = detail, "handler panicked");
    error_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "internal error".to_owned(),
        None,
    )
}
