//! Test fixtures for the trade modules: a sandbox on an in-memory SQLite database with one
//! UID-mode and one OpenID-mode app, and short ways to call a trade method and read its
//! success or refusal.
//!
//! Invariant: every fixture sandbox is fresh (its own database), so tests never share trades.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sea_orm::ConnectionTrait;
use serde_json::{Value, json};
use trellis_alipay::notify::Notification;

use crate::apps::Identity;
use crate::gateway::Outcome;
use crate::store::Store;
use crate::{Sandbox, sandbox_user_id};

pub(super) const UID_APP: &str = "2021000000000001";
pub(super) const OPENID_APP: &str = "2021000000000002";
/// A bar code that pays at once, and one that waits for its buyer (it ends in 3).
pub(super) const CODE: &str = "2812345678901234";
pub(super) const WAITING_CODE: &str = "2812345678901233";

const APP_PUBLIC_KEY: &str = include_str!("../../../alipay/tests/vectors/keys/app_public.pem");
const ALIPAY_PRIVATE_KEY: &str =
    include_str!("../../../alipay/tests/vectors/keys/alipay_private_pkcs8.pem");

pub(super) async fn sandbox() -> Sandbox {
    let db = sea_orm::Database::connect("sqlite::memory:").await.unwrap();
    db.execute_unprepared(
        "CREATE TABLE sandbox_state (namespace VARCHAR(32) NOT NULL, \"key\" VARCHAR(200) NOT NULL, \
         value TEXT NOT NULL, updated_at TEXT NOT NULL, PRIMARY KEY (namespace, \"key\"))",
    )
    .await
    .unwrap();
    // The test vectors' key plays Alipay's: quicker than generating one per test.
    Store(&db)
        .put(
            "sandbox",
            "signing_key",
            &json!({ "pkcs8": ALIPAY_PRIVATE_KEY }),
        )
        .await
        .unwrap();
    let sandbox = Sandbox::open(db, "http://sandbox.test", 100_000, None)
        .await
        .unwrap();
    for (app, identity) in [(UID_APP, Identity::Uid), (OPENID_APP, Identity::OpenId)] {
        sandbox
            .register_app_as(app, APP_PUBLIC_KEY, None, false, identity)
            .await
            .unwrap();
    }
    sandbox
}

/// The answer of a call that must succeed.
pub(super) fn ok(outcome: Outcome) -> Value {
    match outcome {
        Ok(node) => node,
        Err(f) => panic!("refused: {} {} {}", f.code, f.sub_code, f.sub_msg),
    }
}

/// The `(code, sub_code)` of a call that must be refused.
pub(super) fn refused(outcome: Outcome) -> (&'static str, String) {
    match outcome {
        Ok(node) => panic!("accepted: {node}"),
        Err(f) => (f.code, f.sub_code),
    }
}

/// The keys of an answer, sorted.
pub(super) fn keys(node: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = node
        .as_object()
        .map(|m| m.keys().map(String::as_str).collect())
        .unwrap_or_default();
    keys.sort_unstable();
    keys
}

pub(super) fn no_params() -> BTreeMap<String, String> {
    BTreeMap::new()
}

/// A valid order for `out_trade_no`.
pub(super) fn order(out_trade_no: &str, amount: &str) -> Value {
    json!({ "out_trade_no": out_trade_no, "total_amount": amount, "subject": "会员充值" })
}

/// A valid bar-code payment request.
pub(super) fn bar_code_payment(out_trade_no: &str, amount: &str, code: &str) -> Value {
    let mut biz = order(out_trade_no, amount);
    biz["scene"] = json!("bar_code");
    biz["auth_code"] = json!(code);
    biz
}

/// A trade of `amount` on `app`, paid at once by the holder of [`CODE`].
pub(super) async fn paid_trade(sandbox: &Sandbox, app: &str, out: &str, amount: &str) -> Value {
    ok(sandbox
        .trade_pay(app, &no_params(), &bar_code_payment(out, amount, CODE))
        .await)
}

/// The user id of the consumer holding a payment code.
pub(super) fn holder(code: &str) -> String {
    sandbox_user_id(code)
}

/// A merchant's notify URL on loopback that records every body and acknowledges it.
pub(super) async fn merchant() -> (String, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let router = axum::Router::new().route(
        "/notify",
        axum::routing::post(move |body: String| async move {
            record.lock().unwrap().push(body);
            "success"
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/notify", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    (url, seen)
}

/// The `n`th notification the merchant received (from 0), once it has arrived.
pub(super) async fn nth_notification(seen: &Arc<Mutex<Vec<String>>>, n: usize) -> Notification {
    for _ in 0..200 {
        if let Some(body) = seen.lock().unwrap().get(n) {
            return Notification::parse(body.as_bytes()).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("notification {n} did not arrive");
}

/// The first notification the merchant received.
pub(super) async fn first_notification(seen: &Arc<Mutex<Vec<String>>>) -> Notification {
    nth_notification(seen, 0).await
}
