//! The HTTP surface: one axum router, the layers every request passes through, and the server
//! loop with graceful shutdown.
//!
//! Invariant: only this module turns errors into responses; every error a client sees is JSON
//! `{code, message}` (or, for a browser, the theme's page for it) and never carries internals.

pub mod error;
pub mod middleware;
/// The shared extractors and the scope → authorize → audit door every handler goes through.
pub mod extract;
/// Sign-in, sign-out, password, `me`.
pub mod session;
/// The tenant tree: partners, agents, merchants, stores.
pub mod nodes;
/// Accounts and API keys.
pub mod accounts;
/// The audit log.
pub mod audit;
/// Merchants' Alipay credentials and key pairs.
pub mod credentials;
/// The partner's plugin catalog and policy.
pub mod catalog;
/// Agents' packages, assignments and merchants' entitlements.
pub mod packages;
/// Per-merchant plugin configuration.
pub mod configs;
/// Publishing events and the delivery log.
pub mod events;
/// The plugins' own routes (admin, store, member pages, the card-activation callback).
pub mod plugin_routes;
/// Payments: trades, the ledger, refunds.
pub mod payments;
/// The consoles: every tier's pages, signed in by the session cookie.
pub mod console;
pub mod openapi;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;
use tower_http::catch_panic::CatchPanicLayer;

use crate::config::Config;
use crate::db::Db;
use crate::plugins::catalog::Catalog;
use crate::rbac::Rbac;
use crate::secrets::Vault;
use crate::themes::{DEFAULT_THEME, Locale, Themes};
use error::ApiError;

/// Handles shared by every request; cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState {
    pub config: Arc<Config>,
    pub db: Db,
    pub themes: Themes,
    pub rbac: Rbac,
    pub vault: Arc<Vault>,
    /// Installed plugins, packages' entitlements and the outbox, with the engine's clock.
    pub catalog: Catalog,
    /// The partner behind each host recently served, by host (`database.recent_reads_ms`).
    pub hosts: crate::db::Recent<String, crate::tenancy::HostPartner>,
    /// The payment ledger and the trades it creates at Alipay.
    pub payments: crate::payments::Payments,
    /// Where sign-ins check passwords, off the async workers.
    pub hasher: crate::auth::Hasher,
    /// Plugin archive uploads being read now (`http.max_concurrent_uploads`).
    pub uploads: Arc<tokio::sync::Semaphore>,
    /// KiB of request bodies that may be held in memory at once (`http.max_buffered_body_bytes`).
    pub body_budget: Arc<tokio::sync::Semaphore>,
    /// What running plugins reach of the engine (payments, other plugins' routes); the plugin
    /// host holds it weakly, so it lives as long as this state.
    pub outside: Arc<crate::doors::outside::Outside>,
}

/// The whole application as a router, with the offline sandbox (when given) nested under
/// `/sandbox` behind the same layers.
pub fn router(state: AppState, sandbox: Option<Router>) -> Router {
    let mut routes = Router::new();
    if let Some(sandbox) = sandbox {
        routes = routes.nest_service("/sandbox", sandbox);
    }
    routes
        .route("/", get(home))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/static/{theme}/{*path}", get(static_asset))
        .route("/api/openapi.json", get(openapi_json))
        .route(
            "/alipay/notify/{merchant_id}",
            axum::routing::post(alipay_notify),
        )
        .merge(session::router())
        .merge(nodes::router())
        .merge(accounts::router())
        .merge(audit::router())
        .merge(credentials::router())
        .merge(catalog::router())
        .merge(packages::router())
        .merge(configs::router())
        .merge(events::router())
        .merge(plugin_routes::router())
        .merge(payments::router())
        .merge(console::router())
        .fallback(not_found)
        // After every route: a known path asked with another method gets a JSON error too
        // (axum adds the route's `Allow` header).
        .method_not_allowed_fallback(method_not_allowed)
        // `limit_body` below is the one body limit: axum's own (2 MB, answered as plain text)
        // would refuse plugin archives the upload limit allows.
        .layer(axum::extract::DefaultBodyLimit::disable())
        // The body is read after the host is known, so an upload's caller can be checked first.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::limit_body,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::resolve_host,
        ))
        .layer(CatchPanicLayer::custom(middleware::panic_response))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::error_pages,
        ))
        // Outside the error pages, so themed errors carry the page policy too.
        .layer(axum::middleware::from_fn(middleware::page_headers))
        .layer(axum::middleware::from_fn(middleware::observe))
        .with_state(state)
}

/// `text` (a URL, a payment code) as an SVG QR code the engine draws itself: what the consoles
/// and payment pages show to scan.
pub(crate) fn qr_svg(text: &str) -> Result<String, ApiError> {
    let qr = qrcode::QrCode::new(text.as_bytes())
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("qr code: {e}")))?;
    Ok(qr
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(200, 200)
        .build())
}

/// Liveness: the process answers. Says nothing about its dependencies.
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION") }))
}

/// Readiness: the database answers and its schema is the one this binary expects.
async fn readyz(State(state): State<AppState>) -> Response {
    match state.db.check_ready().await {
        Ok(()) => Json(json!({ "status": "ready", "database": state.db.kind.to_string() }))
            .into_response(),
        Err(error) => {
            tracing::warn!(%error, "not ready");
            let reason = match error {
                crate::db::Error::Pending(_) => "migrations_pending",
                _ => "database_unavailable",
            };
            let body = json!({ "status": "unready", "database": state.db.kind.to_string(), "reason": reason });
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
    }
}

async fn home(State(state): State<AppState>, headers: HeaderMap) -> Result<Html<String>, ApiError> {
    let locale = Locale::negotiate(
        headers
            .get(header::ACCEPT_LANGUAGE)
            .and_then(|v| v.to_str().ok()),
    );
    let data = json!({ "version": env!("CARGO_PKG_VERSION") });
    Ok(Html(state.themes.render_page(
        DEFAULT_THEME,
        "home",
        locale,
        data,
    )?))
}

/// Theme files with cache validators: browsers keep them for a day and revalidate cheaply.
async fn static_asset(
    State(state): State<AppState>,
    Path((theme, path)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let asset = state.themes.asset(&theme, &path).await?;
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|t| t.trim() == asset.etag));
    let cache = [
        (header::CACHE_CONTROL, "public, max-age=86400".to_owned()),
        (header::ETAG, asset.etag.clone()),
    ];
    if fresh {
        return Ok((StatusCode::NOT_MODIFIED, cache).into_response());
    }
    Ok((
        cache,
        [(header::CONTENT_TYPE, asset.content_type)],
        asset.bytes,
    )
        .into_response())
}

/// Alipay's asynchronous notifications for one merchant (its `notify_url`). Answers exactly
/// `success` once the notification is verified and durably recorded; anything else makes Alipay
/// retry on its schedule.
async fn alipay_notify(
    State(state): State<AppState>,
    Path(merchant_id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    use crate::alipay::inbound;
    // Verified here, many at once; recorded and applied by the payments' writer together with
    // whatever else arrived meanwhile. Applied whether new or not: a redelivery after a failed
    // application retries it, and a transition already made is not made twice. Alipay hears
    // `success` only once the record, the ledger's change and its events are committed.
    let verified = match state.payments.receiver(&merchant_id).await {
        Ok(Some(receiver)) => inbound::verify(&receiver, &merchant_id, &body),
        Ok(None) => Err(inbound::Error::UnknownMerchant),
        Err(error) => Err(error),
    };
    match verified {
        Ok(verified) => match state.payments.take(verified).await {
            Ok(taken) => {
                tracing::info!(id = %taken.id, new = taken.new, applied = ?taken.applied, "alipay notification taken");
                (
                    [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                    crate::alipay::notify::ACK,
                )
                    .into_response()
            }
            Err(error) => ApiError::Payments(error).into_response(),
        },
        Err(inbound::Error::Db(error)) => ApiError::DbErr(error).into_response(),
        Err(inbound::Error::UnknownMerchant) => {
            ApiError::NotFound(format!("/alipay/notify/{merchant_id}")).into_response()
        }
        Err(error) => {
            tracing::warn!(%error, "alipay notification refused");
            error::error_response(
                StatusCode::BAD_REQUEST,
                "notification_rejected",
                error.to_string(),
                None,
            )
        }
    }
}

async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(openapi::document())
}

async fn not_found(request: Request) -> ApiError {
    ApiError::NotFound(request.uri().path().to_owned())
}

async fn method_not_allowed(method: axum::http::Method) -> ApiError {
    ApiError::MethodNotAllowed(method.as_str().chars().take(16).collect())
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets in-flight requests finish
/// within `http.shutdown_grace_secs`. The router comes from the composition root (`app`).
pub async fn serve(
    config: &Config,
    listener: TcpListener,
    app: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let grace = Duration::from_secs(config.http.shutdown_grace_secs);
    let limits = ConnectionLimits::of(&config.http);
    accept_loop(listener, app, limits.clone(), shutdown).await;
    if tokio::time::timeout(grace, limits.drained()).await.is_err() {
        anyhow::bail!(
            "requests still in flight after the {}s shutdown grace period",
            grace.as_secs()
        );
    }
    tracing::info!("stopped");
    Ok(())
}

/// What bounds the connections of one server: how many at once, and how long a client may take
/// to send a request's headers.
#[derive(Clone)]
struct ConnectionLimits {
    slots: Arc<tokio::sync::Semaphore>,
    max: u32,
    header_read_timeout: Duration,
    write_timeout: Duration,
    per_peer: u32,
    peers: PeerCounts,
    /// Ends once every connection has been told to finish (graceful shutdown).
    closing: tokio::sync::watch::Sender<bool>,
}

impl ConnectionLimits {
    fn of(config: &crate::config::HttpConfig) -> Self {
        Self {
            slots: Arc::new(tokio::sync::Semaphore::new(config.max_connections as usize)),
            max: config.max_connections,
            header_read_timeout: Duration::from_secs(config.header_read_timeout_secs),
            write_timeout: Duration::from_secs(config.write_timeout_secs),
            per_peer: config.max_connections_per_ip,
            peers: Arc::default(),
            closing: tokio::sync::watch::Sender::new(false),
        }
    }

    /// Counts a connection from `peer`, or `None` when that address already holds its share.
    fn admit_peer(&self, peer: std::net::IpAddr) -> Option<PeerSlot> {
        if self.per_peer == 0 {
            return Some(PeerSlot(None));
        }
        let mut peers = self
            .peers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = peers.entry(peer).or_insert(0);
        if *count >= self.per_peer {
            return None;
        }
        *count += 1;
        Some(PeerSlot(Some((Arc::clone(&self.peers), peer))))
    }

    /// Resolves when every connection slot is free again: all connections have closed.
    async fn drained(&self) {
        let _ = self.slots.acquire_many(self.max).await;
    }
}

type PeerCounts = Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, u32>>>;

/// One connection counted against its peer's share; gives it back when dropped.
struct PeerSlot(Option<(PeerCounts, std::net::IpAddr)>);

impl Drop for PeerSlot {
    fn drop(&mut self) {
        if let Some((peers, peer)) = self.0.take() {
            let mut peers = peers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(count) = peers.get_mut(&peer) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    peers.remove(&peer);
                }
            }
        }
    }
}

/// A connection whose writes must make progress: a client that stops reading its answers
/// (so that the engine's writes stay pending) loses the connection after `timeout`, instead of
/// holding its slot for ever.
struct WriteDeadline<S> {
    inner: S,
    timeout: Duration,
    stalled: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<S> WriteDeadline<S> {
    fn new(inner: S, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            stalled: None,
        }
    }

    /// Passes a ready poll through; on a pending one, fails once the write has been pending for
    /// the whole timeout.
    fn guard<T>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        polled: std::task::Poll<std::io::Result<T>>,
    ) -> std::task::Poll<std::io::Result<T>> {
        use std::task::Poll;
        match polled {
            Poll::Ready(result) => {
                self.stalled = None;
                Poll::Ready(result)
            }
            Poll::Pending => {
                let timeout = self.timeout;
                let stalled = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match stalled.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the client stopped reading",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for WriteDeadline<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        self.guard(cx, polled)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.guard(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_flush(cx);
        self.guard(cx, polled)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_shutdown(cx);
        self.guard(cx, polled)
    }
}

/// Accepts connections until `shutdown` resolves, each holding one of `limits`' slots (a client
/// past the cap waits in the listen backlog), served as HTTP/1 with a header read timeout so a
/// client that trickles its headers, or never sends any, loses its connection. On shutdown, each
/// connection finishes its in-flight request and closes.
async fn accept_loop(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: impl std::future::Future<Output = ()>,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = limits.slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (stream, remote) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Past its share, a peer's connection is closed at once (it still holds no slot of ours
        // beyond this moment), so one client cannot take every connection.
        let Some(peer_slot) = limits.admit_peer(remote.ip().to_canonical()) else {
            drop(stream);
            continue;
        };
        let app = app.clone();
        let service = hyper::service::service_fn(
            move |mut request: hyper::Request<hyper::body::Incoming>| {
                request
                    .extensions_mut()
                    .insert(axum::extract::ConnectInfo(remote));
                tower::ServiceExt::oneshot(app.clone(), request.map(axum::body::Body::new))
            },
        );
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout);
        let mut closing = limits.closing.subscribe();
        let limits_write_timeout = limits.write_timeout;
        tokio::spawn(async move {
            let stream = WriteDeadline::new(stream, limits_write_timeout);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            let mut connection = std::pin::pin!(connection);
            loop {
                tokio::select! {
                    result = connection.as_mut() => {
                        if let Err(error) = result {
                            tracing::debug!(%error, "connection ended with an error");
                        }
                        break;
                    }
                    changed = closing.changed() => {
                        if changed.is_err() || *closing.borrow() {
                            connection.as_mut().graceful_shutdown();
                        }
                    }
                }
            }
            drop(peer_slot);
            drop(permit);
        });
    }
    let _ = limits.closing.send(true);
}

/// A line on stdout for whoever started the server; a closed stdout must not stop the server.
pub fn announce(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

pub async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {},
        () = terminate => {},
    }
}
