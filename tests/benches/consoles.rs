//! How long console pages take at scale: an agent with 10,000 merchants and a merchant with
//! 100,000 members (membership), 100,000 payments and 100,000 event deliveries, on SQLite, the
//! engine in this process. Each page is asked for
//! as a signed-in browser asks (session cookie, `Accept: text/html`) over loopback; the anchor is
//! `GET /healthz` in the same run, so the ratio shows what the page itself costs.
//!
//! Run: `make plugins && CARGO_TARGET_DIR=target/bench cargo bench -p trellis-tests --bench
//! consoles`. Results: `docs/benchmarks.md` (target: every page under 100 ms).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark fails loudly on a broken fixture"
)]

use std::time::{Duration, Instant};

use sea_orm::Database;
use serde_json::json;
use trellis_tests::fixtures::{branch, entitle, queue_events, waiting_trades};
use trellis_tests::{Engine, TEST_PASSWORD, create_node};

/// The engine runs on the allocator its binary uses.
#[global_allocator]
static ALLOCATOR: trellis_engine::Allocator = trellis_engine::Allocator;

const MERCHANTS: usize = 10_000;
const MEMBERS: usize = 100_000;
const PAYMENTS: usize = 100_000;
const DELIVERIES: usize = 100_000;
const ROUNDS: usize = 60;
const DOMAIN: &str = "p1.test";

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Signs `email` in through the console's form and returns its session cookie.
async fn session(http: &reqwest::Client, base: &str, email: &str) -> String {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs([("email", email), ("password", TEST_PASSWORD)])
        .finish();
    let answer = http
        .post(format!("{base}/console/login"))
        .header("host", DOMAIN)
        .header("origin", format!("http://{DOMAIN}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 303, "sign-in of {email}");
    let cookie = answer.headers()["set-cookie"].to_str().unwrap();
    cookie.split(';').next().unwrap().to_owned()
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("consoles.db").display()
    );
    let engine = Engine::start(
        &url,
        &[
            ("TRELLIS_EVENTS__DISPATCHER", "false"),
            ("TRELLIS_PAYMENTS__RECONCILE", "false"),
            ("TRELLIS_LOG__LEVEL", "warn"),
        ],
    );
    let branch = branch(&engine, &url, DOMAIN).await;
    let root = &branch.root;
    let seeding = Instant::now();
    let installation = entitle(
        root,
        (&branch.partner, &branch.agent),
        &[branch.merchant.as_str()],
        (
            "plugins/membership",
            "trellis_plugin_membership",
            "com.trellis.membership",
        ),
    )
    .await;
    for (node, email) in [
        (&branch.partner, "partner@p1.test"),
        (&branch.agent, "agent@p1.test"),
        (&branch.merchant, "owner@p1.test"),
    ] {
        root.post(
            "/api/v1/users",
            json!({"node_id": node, "email": email, "password": TEST_PASSWORD}),
        )
        .await
        .ok();
    }
    for n in 1..MERCHANTS {
        create_node(
            root,
            "merchants",
            Some(&branch.agent),
            json!({"name": format!("Merchant {n:05}")}),
        )
        .await;
    }
    let import = format!(
        "/api/v1/merchants/{}/plugins/com.trellis.membership/members/import",
        branch.merchant
    );
    for batch in 0..MEMBERS / 50 {
        let members: Vec<_> = (0..50)
            .map(|i| {
                let n = batch * 50 + i;
                json!({"mobile": format!("139{n:08}"), "name": format!("会员{n}")})
            })
            .collect();
        root.post(&import, json!({ "members": members })).await.ok();
    }
    let trades = waiting_trades(&url, &branch, "2021000000000001", "B", PAYMENTS, 1250).await;
    let conn = Database::connect(&url).await.unwrap();
    let places = (
        branch.partner.as_str(),
        branch.agent.as_str(),
        branch.merchant.as_str(),
    );
    let due = chrono::Utc::now().timestamp_millis();
    queue_events(
        &conn,
        places,
        (&installation, "member.adjust"),
        DELIVERIES,
        due,
    )
    .await;
    conn.close().await.ok();
    println!(
        "seeded {MERCHANTS} merchants, {MEMBERS} members, {PAYMENTS} payments and {DELIVERIES} \
         deliveries in {:.0} s",
        seeding.elapsed().as_secs_f64()
    );

    let http = trellis_tests::client();
    let base = engine.base_url.clone();
    let partner = session(&http, &base, "partner@p1.test").await;
    let agent = session(&http, &base, "agent@p1.test").await;
    let owner = session(&http, &base, "owner@p1.test").await;
    let members = "/console/apps/com.trellis.membership/members";
    let listed: serde_json::Value = root
        .get(&format!(
            "/api/v1/merchants/{}/plugins/com.trellis.membership/members?limit=1",
            branch.merchant
        ))
        .await
        .ok()
        .body;
    let member_id = listed["items"][0]["id"].as_str().unwrap().to_owned();
    let member = format!("/console/apps/com.trellis.membership/member?id={member_id}");
    let payment = root
        .get(&format!(
            "/api/v1/merchants/{}/payments?limit=1",
            branch.merchant
        ))
        .await
        .ok()
        .body["items"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(!trades.is_empty());
    // A cursor halfway down the delivery log, as following "older" 1,000 times would reach.
    let middle = root
        .get(&format!(
            "/api/v1/deliveries?page={}&per_page=1",
            DELIVERIES / 2
        ))
        .await
        .ok()
        .body["items"][0]
        .clone();
    let at = chrono::DateTime::parse_from_rfc3339(middle["created_at"].as_str().unwrap())
        .unwrap()
        .timestamp_millis();
    let halfway = format!("{at}.{}", middle["id"].as_str().unwrap());
    let pages: Vec<(&str, Option<&str>, String)> = vec![
        ("anchor: GET /healthz", None, "/healthz".into()),
        (
            "agent: home (10,000 merchants)",
            Some(&agent),
            "/console".into(),
        ),
        (
            "agent: home, last page",
            Some(&agent),
            "/console?page=500".into(),
        ),
        (
            "agent: assignments",
            Some(&agent),
            "/console/assignments".into(),
        ),
        ("agent: packages", Some(&agent), "/console/packages".into()),
        ("agent: accounts", Some(&agent), "/console/accounts".into()),
        ("agent: audit log", Some(&agent), "/console/audit".into()),
        ("merchant: home", Some(&owner), "/console".into()),
        ("merchant: members (100,000)", Some(&owner), members.into()),
        (
            "merchant: members, search",
            Some(&owner),
            format!("{members}?q=1390000"),
        ),
        ("merchant: a member", Some(&owner), member),
        (
            "merchant: Alipay app",
            Some(&owner),
            "/console/alipay".into(),
        ),
        ("merchant: plugins", Some(&owner), "/console/plugins".into()),
        (
            "merchant: payments (100,000)",
            Some(&owner),
            "/console/payments".into(),
        ),
        (
            "merchant: payments, by status",
            Some(&owner),
            "/console/payments?status=waiting".into(),
        ),
        (
            "merchant: payments, a status none has",
            Some(&owner),
            "/console/payments?status=closed".into(),
        ),
        (
            "merchant: a payment",
            Some(&owner),
            format!("/console/payments/{payment}"),
        ),
        ("merchant: API keys", Some(&owner), "/console/keys".into()),
        (
            "merchant: levels editor",
            Some(&owner),
            "/console/apps/com.trellis.membership/levels-edit".into(),
        ),
        (
            "merchant: card designer",
            Some(&owner),
            "/console/apps/com.trellis.membership/card-edit".into(),
        ),
        (
            "agent: a merchant's page",
            Some(&agent),
            format!("/console/nodes/{}", branch.merchant),
        ),
        (
            "partner: deliveries (100,000)",
            Some(&partner),
            "/console/deliveries".into(),
        ),
        (
            "partner: deliveries, halfway down",
            Some(&partner),
            format!("/console/deliveries?after={halfway}"),
        ),
        (
            "partner: deliveries, by status",
            Some(&partner),
            "/console/deliveries?status=pending".into(),
        ),
    ];
    let time = async |cookie: Option<&str>, path: &str| {
        let mut request = http
            .get(format!("{base}{path}"))
            .header("host", DOMAIN)
            .header("accept", "text/html");
        if let Some(cookie) = cookie {
            request = request.header("cookie", cookie);
        }
        let started = Instant::now();
        let answer = request.send().await.unwrap();
        let status = answer.status();
        answer.bytes().await.unwrap();
        assert!(status.is_success(), "{path}: {status}");
        started.elapsed()
    };
    for (_, cookie, path) in &pages {
        for _ in 0..5 {
            time(*cookie, path).await;
        }
    }
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); pages.len()];
    // Interleaved, so drift touches every page alike.
    for _ in 0..ROUNDS {
        for (i, (_, cookie, path)) in pages.iter().enumerate() {
            samples[i].push(time(*cookie, path).await);
        }
    }
    for s in &mut samples {
        s.sort();
    }
    let anchor = millis(percentile(&samples[0], 0.5));
    println!("| page | median ms | p99 ms | × anchor |");
    println!("| --- | --- | --- | --- |");
    for ((name, _, _), s) in pages.iter().zip(&samples) {
        let median = millis(percentile(s, 0.5));
        println!(
            "| {name} | {median:.2} | {:.2} | {:.1} |",
            millis(percentile(s, 0.99)),
            median / anchor
        );
    }
}
