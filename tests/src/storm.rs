//! A replay storm of Alipay trade notifications against two `trellis serve` processes on one
//! PostgreSQL database, one of them killed (SIGKILL) in the middle — what Alipay does after an
//! outage: every trade's notifications (waiting, paid, finished, a second paid one under another
//! notify id), a share of them delivered again, all shuffled, each retried on another engine
//! until one answers `success`. The end-to-end suite runs it small; `benches/storm.rs` at full
//! size.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sea_orm::{ConnectionTrait, Database, DatabaseConnection, Statement};
use serde_json::json;
use trellis_engine::alipay::signing::sign_content;
use trellis_engine::alipay::{PrivateKey, SignType};

use crate::fixtures::{branch, vector_key, vector_pem, waiting_trades};
use crate::{Engine, create_user};

const APP_ID: &str = "2021004199990077";

/// How big a storm.
#[derive(Debug, Clone, Copy)]
pub struct Storm {
    pub trades: usize,
    /// Deliveries in all, duplicates included; at least 3.5 per trade (the distinct ones).
    pub notifications: usize,
    /// Senders at once.
    pub concurrency: usize,
}

/// What the storm left.
#[derive(Debug)]
pub struct Outcome {
    pub elapsed: Duration,
    pub deliveries: usize,
    /// Deliveries that failed (the killed engine's) and were sent again.
    pub retried: usize,
    pub finished: i64,
    pub succeeded_events: i64,
    pub records: i64,
    pub distinct: usize,
}

async fn scalar(db: &DatabaseConnection, sql: &str) -> i64 {
    db.query_one_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .map_or(0, |row| row.try_get_by_index::<i64>(0).unwrap_or(0))
}

/// One notification for trade `out`, signed as Alipay signs (V1), form-encoded.
fn notification(alipay: &PrivateKey, out: &str, notify_id: &str, status: &str) -> Vec<u8> {
    let mut fields: BTreeMap<String, String> = [
        ("notify_type", "trade_status_sync"),
        ("notify_id", notify_id),
        ("notify_time", "2026-12-05 14:00:00"),
        ("charset", "utf-8"),
        ("version", "1.0"),
        ("app_id", APP_ID),
        ("auth_app_id", APP_ID),
        ("trade_no", &format!("2026120522001{out}")),
        ("out_trade_no", out),
        ("trade_status", status),
        ("total_amount", "2.00"),
        ("buyer_id", "2088102177846880"),
        ("gmt_payment", "2026-12-05 13:59:59"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let sign = alipay
        .sign(SignType::Rsa2, &sign_content(&fields))
        .unwrap_or_else(|e| panic!("sign: {e}"));
    fields.insert("sign_type".into(), "RSA2".into());
    fields.insert("sign".into(), sign);
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in &fields {
        form.append_pair(k, v);
    }
    form.finish().into_bytes()
}

/// Runs `storm` against two engines on `database_url` (PostgreSQL), killing the first once
/// 40% of the deliveries are answered. Panics if any delivery is never acknowledged.
pub async fn run(database_url: &str, storm: Storm) -> Outcome {
    let env = [
        ("TRELLIS_EVENTS__DISPATCHER", "false"),
        ("TRELLIS_PAYMENTS__RECONCILE", "false"),
        ("TRELLIS_LOG__LEVEL", "warn"),
        ("TRELLIS_HTTP__MAX_CONNECTIONS_PER_IP", "0"),
    ];
    let mut first = Engine::spawn(database_url, &env);
    let second = Engine::spawn(database_url, &env);
    let branch = branch(&second, database_url, "storm.test").await;
    let merchant = branch.merchant.clone();
    let owner = create_user(
        &second,
        &branch.root,
        &merchant,
        "owner@storm.test",
        "storm.test",
    )
    .await;
    // The test vectors' Alipay key stands in for Alipay's.
    owner
        .put(
            &format!("/api/v1/merchants/{merchant}/alipay/credentials"),
            json!({"app_id": APP_ID, "key_mode": "public_key",
                "app_private_key": vector_pem("app_private_pkcs8.pem"),
                "alipay_public_key": vector_key("alipay_private_pkcs8.pem").public_key().to_base64(),
                "gateway": "custom", "gateway_url": "http://127.0.0.1:9/gateway.do"}),
        )
        .await
        .ok();
    let outs = waiting_trades(database_url, &branch, APP_ID, "S", storm.trades, 200).await;

    // Every trade: waiting, paid, finished; every other trade paid twice (two notify ids).
    let alipay = vector_key("alipay_private_pkcs8.pem");
    let mut bodies: Vec<Vec<u8>> = Vec::new();
    for (i, out) in outs.iter().enumerate() {
        for (n, status) in ["WAIT_BUYER_PAY", "TRADE_SUCCESS", "TRADE_FINISHED"]
            .iter()
            .enumerate()
        {
            bodies.push(notification(&alipay, out, &format!("{out}-{n}"), status));
        }
        if i % 2 == 0 {
            bodies.push(notification(
                &alipay,
                out,
                &format!("{out}-3"),
                "TRADE_SUCCESS",
            ));
        }
    }
    let distinct = bodies.len();
    assert!(
        storm.notifications >= distinct,
        "{storm:?}: too few deliveries"
    );
    let mut rng = fastrand::Rng::with_seed(20_261_205);
    for _ in distinct..storm.notifications {
        let again = bodies[rng.usize(..distinct)].clone();
        bodies.push(again);
    }
    rng.shuffle(&mut bodies);

    let urls = Arc::new([
        first.url(&format!("/alipay/notify/{merchant}")),
        second.url(&format!("/alipay/notify/{merchant}")),
    ]);
    let queue = Arc::new(std::sync::Mutex::new(bodies));
    let answered = Arc::new(AtomicUsize::new(0));
    let retried = Arc::new(AtomicUsize::new(0));
    let first_down = Arc::new(AtomicBool::new(false));
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let started = Instant::now();
    let mut senders = Vec::new();
    for sender in 0..storm.concurrency {
        let (http, urls, queue) = (http.clone(), urls.clone(), queue.clone());
        let (answered, retried, first_down) =
            (answered.clone(), retried.clone(), first_down.clone());
        senders.push(tokio::spawn(async move {
            let mut turn = sender;
            loop {
                let Some(body) = queue.lock().ok().and_then(|mut q| q.pop()) else {
                    return;
                };
                // Like Alipay: the same notification again until someone says success.
                for attempt in 0.. {
                    turn += 1;
                    let to = if first_down.load(Ordering::SeqCst) {
                        1
                    } else {
                        turn % 2
                    };
                    let sent = http
                        .post(&urls[to])
                        .header("host", "storm.test")
                        .header(
                            "content-type",
                            "application/x-www-form-urlencoded; charset=utf-8",
                        )
                        .body(body.clone())
                        .send()
                        .await;
                    let ok = match sent {
                        Ok(reply) => reply.text().await.is_ok_and(|t| t == "success"),
                        Err(_) => false,
                    };
                    if ok {
                        answered.fetch_add(1, Ordering::SeqCst);
                        break;
                    }
                    assert!(attempt < 50, "a notification was never acknowledged");
                    retried.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }));
    }
    // Kill the first engine once 40% are answered, mid-flight.
    let total = storm.notifications;
    while answered.load(Ordering::SeqCst) < total * 2 / 5 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.signal_and_wait("KILL", Duration::from_secs(10));
    first_down.store(true, Ordering::SeqCst);
    for sender in senders {
        sender.await.unwrap_or_else(|e| panic!("sender: {e}"));
    }
    let elapsed = started.elapsed();
    let db = Database::connect(database_url)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let merchant_filter = format!("merchant_id = '{merchant}'");
    let outcome = Outcome {
        elapsed,
        deliveries: answered.load(Ordering::SeqCst),
        retried: retried.load(Ordering::SeqCst),
        finished: scalar(
            &db,
            &format!(
                "SELECT COUNT(*) FROM payments WHERE {merchant_filter} AND status = 'finished'"
            ),
        )
        .await,
        succeeded_events: scalar(
            &db,
            &format!(
                "SELECT COUNT(*) FROM events WHERE {merchant_filter} AND kind = 'payment.succeeded'"
            ),
        )
        .await,
        records: scalar(
            &db,
            &format!("SELECT COUNT(*) FROM alipay_notifications WHERE {merchant_filter}"),
        )
        .await,
        distinct,
    };
    db.close().await.ok();
    drop(second);
    outcome
}
