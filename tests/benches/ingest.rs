//! Alipay trade notifications taken in end to end over HTTP on SQLite: an engine built by the
//! composition root (in this process, on a runtime of its own with two workers) and a load
//! generator on the same two cores. Each `success` means the notification's record, the ledger
//! change, the `payment.succeeded` event and its delivery row to the subscribed `hello` plugin
//! are committed with `synchronous = FULL` (the event dispatcher is off, so deliveries are not
//! run during the measurement).
//!
//! Measured in one run: the verify-only ceiling (form parsing and RSA2 verification on both
//! cores, the anchor), a burst of fresh notifications as fast as 64 connections can send them,
//! then fresh notifications at a fixed 2,500/s (open loop: latency counts from each one's due
//! time), and replays of the burst.
//!
//! Run: `make plugins && CARGO_TARGET_DIR=target/bench cargo bench -p trellis-tests --bench ingest`
//! (`target/bench` needs the plugin components too: the bench reads them from the default
//! `target/`). Results: `docs/benchmarks.md`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark fails loudly on a broken fixture"
)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sea_orm::{ConnectionTrait, Database, DatabaseConnection, Statement};
use serde_json::json;
use trellis_engine::alipay::notify::Notification;
use trellis_engine::alipay::signing::sign_content;
use trellis_engine::alipay::{PrivateKey, PublicKey, SignType};
use trellis_tests::fixtures::{Branch, branch, vector_key, vector_pem, waiting_trades};
use trellis_tests::{Engine, create_user, register_sandbox_app};

/// The engine runs on the allocator its binary uses.
#[global_allocator]
static ALLOCATOR: trellis_engine::Allocator = trellis_engine::Allocator;

const APP_ID: &str = "2021004199990088";
const BURST: usize = 20_000;
const PACED_RATE: u64 = 2_500;
const PACED: usize = 10_000;
const CONNECTIONS: usize = 64;

/// A branch whose merchant's hello is subscribed to `payment.succeeded` and whose Alipay
/// credentials trust the test vectors' Alipay key: this bench signs what Alipay would.
async fn shop(engine: &Engine, url: &str) -> Branch {
    let branch = branch(engine, url, "p1.test").await;
    let root = &branch.root;
    let partner_admin =
        create_user(engine, root, &branch.partner, "partner@p1.test", "p1.test").await;
    let agent_admin = create_user(engine, root, &branch.agent, "agent@p1.test", "p1.test").await;
    trellis_tests::install_and_assign(
        &partner_admin,
        &agent_admin,
        &branch.partner,
        ("plugins/hello", "trellis_plugin_hello", "com.trellis.hello"),
        json!({"name": "Hello", "validity_days": 30}),
        &[&branch.merchant],
    )
    .await;
    let registered = register_sandbox_app(
        engine,
        json!({"app_id": APP_ID,
            "app_public_key": vector_key("app_private_pkcs8.pem").public_key().to_base64()}),
    )
    .await;
    let owner = create_user(engine, root, &branch.merchant, "owner@m1.test", "p1.test").await;
    owner
        .put(
            &format!("/api/v1/merchants/{}/alipay/credentials", branch.merchant),
            json!({"app_id": APP_ID, "key_mode": "public_key",
                "app_private_key": vector_pem("app_private_pkcs8.pem"),
                "alipay_public_key": vector_key("alipay_private_pkcs8.pem").public_key().to_base64(),
                "gateway": "custom", "gateway_url": registered["gateway_url"]}),
        )
        .await
        .ok();
    branch
}

/// Alipay's `TRADE_SUCCESS` notification for `out_trade_no`, signed (V1) and form-encoded.
fn notification(alipay: &PrivateKey, out_trade_no: &str, n: usize) -> Vec<u8> {
    let trade_no = format!("20261205220014{n:014}");
    let mut fields: BTreeMap<String, String> = [
        ("notify_type", "trade_status_sync".to_owned()),
        ("notify_id", format!("bench{n:024}")),
        ("notify_time", "2026-12-05 14:00:00".to_owned()),
        ("charset", "utf-8".to_owned()),
        ("version", "1.0".to_owned()),
        ("app_id", APP_ID.to_owned()),
        ("auth_app_id", APP_ID.to_owned()),
        ("trade_no", trade_no),
        ("out_trade_no", out_trade_no.to_owned()),
        ("trade_status", "TRADE_SUCCESS".to_owned()),
        ("total_amount", "1.00".to_owned()),
        ("receipt_amount", "1.00".to_owned()),
        ("buyer_pay_amount", "1.00".to_owned()),
        ("buyer_id", "2088102177846880".to_owned()),
        ("buyer_logon_id", "159****5620".to_owned()),
        ("subject", "bench".to_owned()),
        ("gmt_create", "2026-12-05 13:59:58".to_owned()),
        ("gmt_payment", "2026-12-05 14:00:00".to_owned()),
        (
            "fund_bill_list",
            r#"[{"amount":"1.00","fundChannel":"ALIPAYACCOUNT"}]"#.to_owned(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let sign = alipay.sign(SignType::Rsa2, &sign_content(&fields)).unwrap();
    fields.insert("sign_type".into(), "RSA2".into());
    fields.insert("sign".into(), sign);
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in &fields {
        form.append_pair(k, v);
    }
    form.finish().into_bytes()
}

/// Signs one notification per trade on both cores.
fn sign_all(outs: &[String], first: usize) -> Vec<Vec<u8>> {
    let half = outs.len() / 2;
    let (a, b) = outs.split_at(half);
    std::thread::scope(|s| {
        let left = s.spawn(|| {
            let alipay = vector_key("alipay_private_pkcs8.pem");
            a.iter()
                .enumerate()
                .map(|(i, out)| notification(&alipay, out, first + i))
                .collect::<Vec<_>>()
        });
        let right = s.spawn(|| {
            let alipay = vector_key("alipay_private_pkcs8.pem");
            b.iter()
                .enumerate()
                .map(|(i, out)| notification(&alipay, out, first + half + i))
                .collect::<Vec<_>>()
        });
        let mut all = left.join().unwrap();
        all.extend(right.join().unwrap());
        all
    })
}

/// Parses and verifies every body on both cores; notifications per second.
fn verify_ceiling(bodies: &[Vec<u8>]) -> f64 {
    let public = PublicKey::parse(
        &vector_key("alipay_private_pkcs8.pem")
            .public_key()
            .to_base64(),
    )
    .unwrap();
    let started = Instant::now();
    let (a, b) = bodies.split_at(bodies.len() / 2);
    std::thread::scope(|s| {
        for part in [a, b] {
            let public = &public;
            s.spawn(move || {
                for body in part {
                    let n = Notification::parse(body).unwrap();
                    n.verify_auto(public).unwrap();
                }
            });
        }
    });
    bodies.len() as f64 / started.elapsed().as_secs_f64()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1_000.0
}

async fn post(client: &reqwest::Client, url: &str, body: Vec<u8>) {
    // Alipay calls the notify_url the engine set: on the partner's domain.
    let reply = client
        .post(url)
        .header("host", "p1.test")
        .header(
            "content-type",
            "application/x-www-form-urlencoded; charset=utf-8",
        )
        .body(body)
        .send()
        .await
        .unwrap();
    let status = reply.status();
    let text = reply.text().await.unwrap();
    assert!(status.is_success() && text == "success", "{status}: {text}");
}

/// Sends every body over `CONNECTIONS` concurrent senders as fast as they are answered; the
/// rate and each one's latency.
async fn burst(client: &reqwest::Client, url: &str, bodies: Vec<Vec<u8>>) -> (f64, Vec<Duration>) {
    let queue = Arc::new(std::sync::Mutex::new(bodies));
    let started = Instant::now();
    let mut senders = Vec::new();
    for _ in 0..CONNECTIONS {
        let (client, url, queue) = (client.clone(), url.to_owned(), queue.clone());
        senders.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let Some(body) = queue.lock().unwrap().pop() else {
                    break;
                };
                let sent = Instant::now();
                post(&client, &url, body).await;
                latencies.push(sent.elapsed());
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for sender in senders {
        latencies.extend(sender.await.unwrap());
    }
    let rate = latencies.len() as f64 / started.elapsed().as_secs_f64();
    latencies.sort();
    (rate, latencies)
}

/// Sends the bodies at `rate` per second whatever the answers; each latency runs from the
/// body's due time, so a stall counts against every request it delays.
async fn paced(
    client: &reqwest::Client,
    url: &str,
    bodies: Vec<Vec<u8>>,
    rate: u64,
) -> Vec<Duration> {
    let started = tokio::time::Instant::now();
    let interval = Duration::from_nanos(1_000_000_000 / rate);
    let mut sent = Vec::new();
    for (i, body) in bodies.into_iter().enumerate() {
        let due = started + interval * u32::try_from(i).unwrap();
        tokio::time::sleep_until(due).await;
        let (client, url) = (client.clone(), url.to_owned());
        sent.push(tokio::spawn(async move {
            post(&client, &url, body).await;
            due.elapsed()
        }));
    }
    let mut latencies = Vec::new();
    for one in sent {
        latencies.push(one.await.unwrap());
    }
    latencies.sort();
    latencies
}

async fn scalar(db: &DatabaseConnection, sql: &str) -> i64 {
    let row = db
        .query_one_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .unwrap()
        .unwrap();
    row.try_get_by_index(0).unwrap()
}

fn report(label: &str, rate: Option<f64>, latencies: &[Duration]) {
    let rate = rate.map_or_else(String::new, |r| format!("{r:>8.0}/s  "));
    println!(
        "{label:<44} {rate}median {:>6.2} ms  p99 {:>6.2} ms  max {:>7.2} ms",
        ms(percentile(latencies, 0.5)),
        ms(percentile(latencies, 0.99)),
        ms(*latencies.last().unwrap()),
    );
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("ingest.db").display()
    );
    let engine = Engine::start(
        &url,
        &[
            ("TRELLIS_SANDBOX__ENABLED", "true"),
            ("TRELLIS_EVENTS__DISPATCHER", "false"),
            ("TRELLIS_PAYMENTS__RECONCILE", "false"),
            ("TRELLIS_LOG__LEVEL", "warn"),
            // Alipay notifies from many addresses; the load generator is one.
            ("TRELLIS_HTTP__MAX_CONNECTIONS_PER_IP", "0"),
        ],
    );
    let shop = shop(&engine, &url).await;
    let db = Database::connect(&url).await.unwrap();
    let burst_outs = waiting_trades(&url, &shop, APP_ID, "B", BURST, 100).await;
    let paced_outs = waiting_trades(&url, &shop, APP_ID, "P", PACED, 100).await;
    let signing = Instant::now();
    let burst_bodies = sign_all(&burst_outs, 0);
    let paced_bodies = sign_all(&paced_outs, BURST);
    eprintln!(
        "signed {} notifications in {:.1} s",
        BURST + PACED,
        signing.elapsed().as_secs_f64()
    );
    let ceiling = verify_ceiling(&burst_bodies);
    let notify_url = engine.url(&format!("/alipay/notify/{}", shop.merchant));
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(CONNECTIONS)
        .build()
        .unwrap();
    // Warm the connections and the engine's caches on a few replays-to-be.
    for body in burst_bodies.iter().take(CONNECTIONS) {
        post(&client, &notify_url, body.clone()).await;
    }
    let (rate, burst_latencies) = burst(&client, &notify_url, burst_bodies.clone()).await;
    let paced_latencies = paced(&client, &notify_url, paced_bodies, PACED_RATE).await;
    let (replay_rate, replay_latencies) = burst(&client, &notify_url, burst_bodies).await;

    let paid = scalar(
        &db,
        "SELECT COUNT(*) FROM payments WHERE status = 'succeeded'",
    )
    .await;
    let records = scalar(&db, "SELECT COUNT(*) FROM alipay_notifications").await;
    let events = scalar(
        &db,
        "SELECT COUNT(*) FROM events WHERE kind = 'payment.succeeded'",
    )
    .await;
    let deliveries = scalar(&db, "SELECT COUNT(*) FROM event_deliveries").await;
    let expected = i64::try_from(BURST + PACED).unwrap();
    assert_eq!(paid, expected, "every trade paid once");
    assert_eq!(records, expected, "one record per notification");
    assert_eq!(events, expected, "one payment.succeeded per trade");
    assert!(
        deliveries >= expected,
        "a delivery row per event: {deliveries}"
    );

    println!("verify-only ceiling (parse + RSA2 verify, 2 threads) {ceiling:>8.0}/s");
    report(
        "burst: new notifications, 64 connections",
        Some(rate),
        &burst_latencies,
    );
    report(
        &format!("paced: new notifications at {PACED_RATE}/s (open loop)"),
        None,
        &paced_latencies,
    );
    report(
        "replays of the burst, 64 connections",
        Some(replay_rate),
        &replay_latencies,
    );
    println!(
        "ratio burst / verify-only ceiling: {:.2}; ledger: {paid} paid, {events} events, {deliveries} deliveries",
        rate / ceiling
    );
}
