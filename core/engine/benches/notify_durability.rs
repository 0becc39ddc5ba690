//! What it costs to make an acknowledged Alipay notification survive a power cut on SQLite:
//! the notification's insert committed on a `synchronous = NORMAL` connection (the rest of the
//! engine) against the same on the `synchronous = FULL` pool behind `Db::begin_durable` (what
//! `inbound::receive` uses), one at a time and with concurrent writers; then `receive` end to
//! end (parse, RSA2 verify, lookup, durable insert).
//!
//! Run: `cargo bench -p trellis-engine --bench notify_durability` (release). The database lives in
//! a temporary folder (`TMPDIR`), so it measures that disk. Results: `docs/benchmarks.md`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark fails loudly on a broken fixture"
)]

use std::collections::BTreeMap;
use std::time::Instant;

use chrono::Utc;
use sea_orm::{ActiveModelTrait, DatabaseTransaction, DbErr, Set};
use secrecy::SecretString;
use trellis_engine::alipay::inbound;
use trellis_engine::alipay::notify::{Notification, NotifyRule};
use trellis_engine::alipay::{PrivateKey, SignType};
use trellis_engine::config::Config;
use trellis_engine::db::entity::{alipay_credentials, alipay_notifications, nodes};
use trellis_engine::db::{Db, begin_write};

const MERCHANT: &str = "bench-merchant";
const APP_ID: &str = "2021004100000001";

/// (median, p99) in ms.
fn summary(mut samples: Vec<f64>) -> (f64, f64) {
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99))
}

fn row(n: usize) -> alipay_notifications::ActiveModel {
    alipay_notifications::ActiveModel {
        id: Set(uuid::Uuid::now_v7().to_string()),
        merchant_id: Set(MERCHANT.into()),
        partner_id: Set(None),
        agent_id: Set(None),
        app_id: Set(APP_ID.into()),
        notify_id: Set(format!("bench-{n:012}-{}", uuid::Uuid::new_v4().simple())),
        notify_type: Set("trade_status_sync".into()),
        out_trade_no: Set(Some(format!("T-{n}"))),
        trade_no: Set(Some(format!("2024052022001{n:08}"))),
        trade_status: Set(Some("TRADE_SUCCESS".into())),
        fields: Set(r#"{"total_amount":"0.10","trade_status":"TRADE_SUCCESS"}"#.into()),
        received_at: Set(Utc::now()),
    }
}

/// One notification's insert in a transaction of its own, as `receive` does it.
async fn record(txn: DatabaseTransaction, n: usize) -> Result<(), DbErr> {
    row(n).insert(&txn).await?;
    txn.commit().await
}

async fn open(dir: &std::path::Path) -> Db {
    let mut config = Config::load(None).unwrap();
    config.data_dir = dir.to_owned();
    config.database.url =
        SecretString::from(format!("sqlite://{}", dir.join("bench.db").display()));
    let db = Db::connect(&config).await.unwrap();
    db.migrate().await.unwrap();
    db
}

async fn merchant(db: &Db, alipay: &PrivateKey) {
    let now = Utc::now();
    nodes::ActiveModel {
        id: Set(MERCHANT.into()),
        kind: Set("merchant".into()),
        parent_id: Set(None),
        partner_id: Set(None),
        agent_id: Set(None),
        merchant_id: Set(Some(MERCHANT.into())),
        store_id: Set(None),
        name: Set("bench".into()),
        theme: Set(None),
        status: Set("active".into()),
        suspended_by_tier: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
    }
    .insert(&db.conn)
    .await
    .unwrap();
    alipay_credentials::ActiveModel {
        merchant_id: Set(MERCHANT.into()),
        app_id: Set(Some(APP_ID.into())),
        key_mode: Set("public_key".into()),
        sign_type: Set("RSA2".into()),
        gateway: Set("custom".into()),
        alipay_public_key: Set(Some(alipay.public_key().to_base64())),
        updated_at: Set(now),
        ..Default::default()
    }
    .insert(&db.conn)
    .await
    .unwrap();
}

fn signed_notification(alipay: &PrivateKey, n: usize) -> Vec<u8> {
    let notify_id = format!("2024052000222103{n:018}");
    let trade_no = format!("2024052022001{n:08}");
    let mut fields: BTreeMap<String, String> = [
        ("notify_type", "trade_status_sync"),
        ("notify_id", notify_id.as_str()),
        ("app_id", APP_ID),
        ("trade_no", trade_no.as_str()),
        ("out_trade_no", "T20240520-0001"),
        ("trade_status", "TRADE_SUCCESS"),
        ("total_amount", "0.10"),
        (
            "fund_bill_list",
            r#"[{"amount":"0.10","fundChannel":"ALIPAYACCOUNT"}]"#,
        ),
        ("gmt_payment", "2024-05-20 10:31:00"),
        ("charset", "utf-8"),
        ("version", "1.0"),
        ("sign_type", "RSA2"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    let unsigned = Notification {
        fields: fields.clone(),
    };
    let sign = alipay
        .sign(SignType::Rsa2, &unsigned.signed_content(NotifyRule::V1))
        .unwrap();
    fields.insert("sign".into(), sign);
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in &fields {
        form.append_pair(k, v);
    }
    form.finish().into_bytes()
}

#[derive(Clone, Copy, PartialEq)]
enum Level {
    Normal,
    Full,
}

async fn begin(db: &Db, level: Level) -> DatabaseTransaction {
    match level {
        Level::Normal => begin_write(&db.conn).await.unwrap(),
        Level::Full => db.begin_durable().await.unwrap(),
    }
}

/// `rounds` records one after another; per-record times in ms.
async fn sequential(db: &Db, level: Level, rounds: usize, offset: usize) -> Vec<f64> {
    let mut samples = Vec::with_capacity(rounds);
    for n in 0..rounds {
        let start = Instant::now();
        record(begin(db, level).await, offset + n).await.unwrap();
        samples.push(start.elapsed().as_secs_f64() * 1e3);
    }
    samples
}

/// `writers` tasks recording `each` at once; records per second over the whole run.
async fn concurrent(db: &Db, level: Level, writers: usize, each: usize, offset: usize) -> f64 {
    let start = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let db = db.clone();
            tokio::spawn(async move {
                for n in 0..each {
                    record(begin(&db, level).await, offset + w * each + n)
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    (writers * each) as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    // `cargo bench` passes `--bench`; a plain `cargo test --benches` passes nothing: keep it short.
    let quick = !std::env::args().any(|a| a == "--bench");
    let (rounds, writers, each) = if quick { (10, 2, 5) } else { (1_000, 8, 100) };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path()).await;
        let alipay = PrivateKey::parse(&SecretString::from(
            std::fs::read_to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../alipay/tests/vectors/keys/alipay_private_pkcs8.pem"
            ))
            .unwrap(),
        ))
        .unwrap();
        merchant(&db, &alipay).await;

        // Warm both pools (and the file) first.
        sequential(&db, Level::Normal, 20, 10_000_000).await;
        sequential(&db, Level::Full, 20, 20_000_000).await;
        // Interleaved halves, so a change in the machine's state hits both levels alike.
        let (mut normal, mut full) = (Vec::new(), Vec::new());
        for half in 0..2 {
            normal.extend(sequential(&db, Level::Normal, rounds / 2, half * rounds).await);
            full.extend(sequential(&db, Level::Full, rounds / 2, (2 + half) * rounds).await);
        }
        let normal_rate = concurrent(&db, Level::Normal, writers, each, 30_000_000).await;
        let full_rate = concurrent(&db, Level::Full, writers, each, 40_000_000).await;

        let bodies: Vec<Vec<u8>> = (0..rounds)
            .map(|n| signed_notification(&alipay, n))
            .collect();
        let mut verify = Vec::with_capacity(rounds);
        for body in &bodies {
            let start = Instant::now();
            let n = Notification::parse(body).unwrap();
            n.verify_auto(alipay.public_key()).unwrap();
            verify.push(start.elapsed().as_secs_f64() * 1e3);
        }
        let mut received = Vec::with_capacity(rounds);
        for body in &bodies {
            let start = Instant::now();
            assert!(inbound::receive(&db, MERCHANT, body).await.unwrap().new);
            received.push(start.elapsed().as_secs_f64() * 1e3);
        }
        let mut replays = Vec::with_capacity(rounds);
        for body in &bodies {
            let start = Instant::now();
            assert!(!inbound::receive(&db, MERCHANT, body).await.unwrap().new);
            replays.push(start.elapsed().as_secs_f64() * 1e3);
        }

        let (normal_med, normal_p99) = summary(normal);
        let (full_med, full_p99) = summary(full);
        let line = |what: &str, (median, p99): (f64, f64)| {
            println!("  {what:<52} {median:>8.3} ms {p99:>8.3} ms");
        };
        println!(
            "SQLite (WAL) in {}, one notification per transaction, {rounds} each",
            dir.path().display()
        );
        println!("  {:<52} {:>11} {:>11}", "", "median", "p99");
        line(
            "record, synchronous = NORMAL (before)",
            (normal_med, normal_p99),
        );
        line(
            "record, synchronous = FULL (begin_durable)",
            (full_med, full_p99),
        );
        println!(
            "  {:<52} {:>8.1} × {:>8.1} ×",
            "ratio FULL / NORMAL",
            full_med / normal_med,
            full_p99 / normal_p99
        );
        line("parse + RSA2 verify alone", summary(verify));
        line(
            "inbound::receive, new (verify + lookup + FULL insert)",
            summary(received),
        );
        line(
            "inbound::receive, replay (verify + lookup)",
            summary(replays),
        );
        println!("{writers} concurrent writers, {each} records each");
        println!("  synchronous = NORMAL {normal_rate:>10.0} records/s");
        println!("  synchronous = FULL   {full_rate:>10.0} records/s");
        println!("  ratio NORMAL / FULL  {:>10.1} ×", normal_rate / full_rate);
        db.close().await;
    });
}
