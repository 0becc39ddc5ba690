//! The offline Alipay sandbox: a local stand-in for Alipay's v2 gateway for tests, demos and
//! plugin authors without an Alipay account.
//!
//! Invariant: it rejects what Alipay rejects — every request's signature is verified against
//! the app public key registered with it (a bad one gets Alipay's `40002
//! isv.invalid-signature` shape) — and everything it answers or notifies is signed with its own
//! key, so the engine's verifier is exercised for real. State lives in the engine's database.
//!
//! Each Alipay product has its own module, so a method's rules sit beside Alipay's page for it:
//! `gateway` (the entry every request passes), `apps`, `cards`, `oauth`, `authorize` (web
//! authorisation), `consumers`, `trades`,
//! `notifications` and `certificates`; `faults` makes the next call of a method fail on
//! demand; [`certs`] mints X.509 certificates, `store` keeps state.

mod apps;
mod authorize;
mod cards;
mod certificates;
pub mod certs;
mod consumers;
mod faults;
mod gateway;
mod notifications;
mod oauth;
mod schema;
mod store;
mod trades;

pub use apps::Identity;
pub use consumers::{open_id_for, sandbox_user_id};
pub use faults::Fault;
pub use notifications::RETRY_SCHEDULE_SECS;
pub use trades::WAITING_CODE_LAST_DIGIT;

use store::Store;

use std::sync::Arc;
use std::time::Duration;

use axum::routing::{get, post};
use axum::{Json, Router};
use sea_orm::DatabaseConnection;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use uuid::Uuid;

use trellis_alipay::keys::{PrivateKey, PublicKey};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("sandbox storage failed: {0}")]
    Db(#[from] sea_orm::DbErr),
    #[error("sandbox key: {0}")]
    Key(#[from] trellis_alipay::Error),
    #[error("{0}")]
    Invalid(String),
}

/// The sandbox: its key, its storage, and how fast its clock for retries runs.
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

struct Inner {
    db: DatabaseConnection,
    key: PrivateKey,
    /// The URL this sandbox is reached at (for claim links), e.g. `http://127.0.0.1:8080/sandbox`.
    base_url: String,
    /// Divides the retry schedule: 1 is Alipay's real timing; tests compress it.
    time_scale: u64,
    http: reqwest::Client,
    /// The engine this sandbox is embedded in, if any: see [`Sandbox::target`].
    engine: Option<std::net::SocketAddr>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("base_url", &self.inner.base_url)
            .finish()
    }
}

impl Sandbox {
    /// Opens the sandbox on the engine's database, creating its signing key on first use.
    /// `engine`: the address of the engine this sandbox is embedded in, which receives the
    /// callbacks and notifications addressed to host names (see [`Sandbox::target`]).
    pub async fn open(
        db: DatabaseConnection,
        base_url: &str,
        time_scale: u64,
        engine: Option<std::net::SocketAddr>,
    ) -> Result<Self, Error> {
        let store = Store(&db);
        let key = match store.get("sandbox", "signing_key").await? {
            Some(v) => PrivateKey::parse(&SecretString::from(
                v["pkcs8"].as_str().unwrap_or_default().to_owned(),
            ))?,
            None => {
                // The sandbox's own key plays Alipay's; it protects nothing real.
                let key = PrivateKey::generate()?;
                store
                    .put(
                        "sandbox",
                        "signing_key",
                        &json!({ "pkcs8": key.to_pkcs8_base64().expose_secret() }),
                    )
                    .await?;
                key
            }
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Error::Invalid(e.to_string()))?;
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                key,
                base_url: base_url.trim_end_matches('/').to_owned(),
                time_scale: time_scale.max(1),
                http,
                engine,
            }),
        })
    }

    /// The public key merchants configure as "Alipay public key" when using this sandbox.
    pub fn public_key(&self) -> &PublicKey {
        self.inner.key.public_key()
    }

    /// The gateway URL to put in a merchant's credentials.
    pub fn gateway_url(&self) -> String {
        format!("{}/gateway.do", self.inner.base_url)
    }

    fn store(&self) -> Store<'_> {
        Store(&self.inner.db)
    }

    /// The router: `/gateway.do`, app registration, simulated consumers and inspection.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/gateway.do", post(gateway::gateway))
            .route("/alipay-public-key", get(apps::alipay_public_key))
            .route("/apps", post(apps::register))
            .route("/certificates", get(certificates::certificates))
            .route("/rotate-alipay-cert", post(certificates::rotate_cert))
            .route("/cards/{biz_card_no}", get(cards::card_state))
            .route("/trades/{app_id}/{out_trade_no}", get(trades::trade_state))
            .route("/notifications", get(notifications::notifications))
            .route(
                "/consumers/{user}/open-claim-link",
                post(oauth::open_claim_link),
            )
            .route("/consumers/{user}/pay", post(trades::pay))
            .route("/consumers/{user}/open-page", post(authorize::open_page))
            .route("/consumers/{user}/sign-in", get(authorize::sign_in))
            .route("/oauth2/publicAppAuthorize.htm", get(authorize::page))
            .route("/faults", post(faults::arm))
            .route(
                "/trades/{app_id}/{out_trade_no}/notify",
                post(trades::notify_on_demand),
            )
            // Errors are JSON `{code, message}` here too, a wrong method included.
            .fallback(no_route)
            .method_not_allowed_fallback(wrong_method)
            .with_state(self.clone())
    }
}

async fn no_route(uri: axum::http::Uri) -> (axum::http::StatusCode, Json<Value>) {
    let path: String = uri.path().chars().take(256).collect();
    (
        axum::http::StatusCode::NOT_FOUND,
        Json(json!({ "code": "not_found", "message": format!("no sandbox route {path}") })),
    )
}

async fn wrong_method(method: axum::http::Method) -> (axum::http::StatusCode, Json<Value>) {
    let method: String = method.as_str().chars().take(16).collect();
    (
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        Json(json!({
            "code": "method_not_allowed",
            "message": format!("{method} is not answered for this path (its Allow header lists what is)"),
        })),
    )
}

/// A string field of a request, where Alipay treats an empty one as missing.
fn text<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// Digits for the ids the sandbox hands out (templates, cards, trades): distinct per call,
/// which is all a sandbox needs, not unguessable.
fn fastish_number() -> u64 {
    let id = Uuid::now_v7();
    let bytes = id.as_bytes();
    bytes[8..]
        .iter()
        .fold(u64::from(bytes[6] & 0x0f), |acc, b| {
            acc.wrapping_mul(31).wrapping_add(u64::from(*b))
        })
        % 10_000_000_000_000_000
}
