//! What creating a trade through the engine adds to Alipay's own latency: a cashier's
//! `POST /api/v1/stores/{id}/payments` (precreate: session, permission, the ledger row, the
//! signed call, the verified answer, the QR code's SVG) against the same `alipay.trade.precreate`
//! sent straight to the offline sandbox by a client signing with the same key — the anchor,
//! which is Alipay's (the sandbox's) latency plus the signing both pay. Interleaved, one at a
//! time, in the same run; the engine (in this process, two workers) on SQLite.
//!
//! Run: `make plugins && CARGO_TARGET_DIR=target/bench cargo bench -p trellis-tests --bench
//! create_trade`. Results: `docs/benchmarks.md`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark fails loudly on a broken fixture"
)]

use std::time::{Duration, Instant};

use serde_json::json;
use trellis_engine::alipay::client::{AlipayClient, CallOptions, MerchantApp};
use trellis_engine::alipay::gateway::GatewayPolicy;
use trellis_engine::alipay::{PublicKey, SignType};
use trellis_tests::fixtures::{branch, vector_key, vector_pem};
use trellis_tests::{Engine, create_user, register_sandbox_app};

/// The engine runs on the allocator its binary uses.
#[global_allocator]
static ALLOCATOR: trellis_engine::Allocator = trellis_engine::Allocator;

const APP_ID: &str = "2021004199990066";
const ROUNDS: usize = 400;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1_000.0
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("trades.db").display()
    );
    let engine = Engine::start(
        &url,
        &[
            ("TRELLIS_SANDBOX__ENABLED", "true"),
            ("TRELLIS_EVENTS__DISPATCHER", "false"),
            ("TRELLIS_PAYMENTS__RECONCILE", "false"),
            ("TRELLIS_LOG__LEVEL", "warn"),
        ],
    );
    let branch = branch(&engine, &url, "p1.test").await;
    let (root, merchant, store) = (&branch.root, &branch.merchant, &branch.store);
    let pem = vector_pem("app_private_pkcs8.pem");
    let key = vector_key("app_private_pkcs8.pem");
    let registered = register_sandbox_app(
        &engine,
        json!({"app_id": APP_ID, "app_public_key": key.public_key().to_base64()}),
    )
    .await;
    let owner = create_user(&engine, root, merchant, "owner@m1.test", "p1.test").await;
    owner
        .put(
            &format!("/api/v1/merchants/{merchant}/alipay/credentials"),
            json!({"app_id": APP_ID, "key_mode": "public_key", "app_private_key": pem,
                "alipay_public_key": registered["alipay_public_key"], "gateway": "custom",
                "gateway_url": registered["gateway_url"]}),
        )
        .await
        .ok();
    let cashier = create_user(&engine, root, store, "cashier@m1.test", "p1.test").await;

    // The anchor: the same method, signed with the same key, straight at the sandbox.
    let app = MerchantApp {
        merchant_id: merchant.to_owned(),
        app_id: APP_ID.into(),
        sign_type: SignType::Rsa2,
        private_key: key,
        alipay_public_key: PublicKey::parse(registered["alipay_public_key"].as_str().unwrap())
            .unwrap(),
        aes: None,
        gateway_url: registered["gateway_url"].as_str().unwrap().to_owned(),
        cert_sns: None,
        alipay_cert_sn: None,
        alipay_root_cert: None,
    };
    let direct = AlipayClient::with_policy(
        GatewayPolicy::local_sandbox(),
        Duration::from_secs(5),
        Duration::from_secs(20),
    )
    .unwrap();
    let options = CallOptions {
        notify_url: Some(format!("https://p1.test/alipay/notify/{merchant}")),
        ..Default::default()
    };
    let path = format!("/api/v1/stores/{store}/payments");
    let (mut anchor, mut through) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS + 20 {
        let biz = json!({"out_trade_no": format!("D{round:08}"), "total_amount": "1.00",
            "subject": "bench", "product_code": "FACE_TO_FACE_PAYMENT"});
        let started = Instant::now();
        direct
            .call(&app, "alipay.trade.precreate", Some(&biz), &options)
            .await
            .unwrap();
        let a = started.elapsed();
        let started = Instant::now();
        cashier
            .post(
                &path,
                json!({"scene": "precreate", "amount_fen": 100, "subject": "bench"}),
            )
            .await
            .ok();
        let b = started.elapsed();
        // The first rounds warm connections and caches.
        if round >= 20 {
            anchor.push(a);
            through.push(b);
        }
    }
    anchor.sort();
    through.sort();
    let (a50, b50) = (percentile(&anchor, 0.5), percentile(&through, 0.5));
    println!(
        "precreate straight at the sandbox (anchor)  median {:>6.2} ms  p99 {:>6.2} ms",
        ms(a50),
        ms(percentile(&anchor, 0.99))
    );
    println!(
        "precreate through the engine's API          median {:>6.2} ms  p99 {:>6.2} ms",
        ms(b50),
        ms(percentile(&through, 0.99))
    );
    println!(
        "added by the engine (median difference): {:.2} ms; ratio {:.2}",
        ms(b50) - ms(a50),
        b50.as_secs_f64() / a50.as_secs_f64()
    );
}
