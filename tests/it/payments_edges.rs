//! Money when Alipay misbehaves, end to end on both databases against the offline sandbox:
//! notifications delivered again, late or forged; refunds and payments whose answers are lost
//! or refused; a payment made while the engine was down.

use std::time::Duration;

use serde_json::{Value, json};
use trellis_tests::storm::Storm;
use trellis_tests::{Api, Engine, client, databases, eventually};

use crate::payments::{APP_ID, ENV, Shop, consumer_pays, count, shop, shop_at, until_paid};

/// A paid QR-code payment of `amount_fen` at the shop's store; its id and `out_trade_no`.
async fn paid(engine: &Engine, s: &Shop, amount_fen: i64, label: &str) -> (String, String) {
    let created = s
        .cashier
        .post(
            &format!("/api/v1/stores/{}/payments", s.store),
            json!({"scene": "precreate", "amount_fen": amount_fen, "subject": "午餐"}),
        )
        .await
        .ok();
    let id = created.body["id"].as_str().unwrap().to_owned();
    let out = created.body["out_trade_no"].as_str().unwrap().to_owned();
    consumer_pays(engine, "alice", &out, true).await;
    until_paid(&s.cashier, &id, label, Duration::from_secs(20)).await;
    (id, out)
}

/// Asks the sandbox to send trade `out`'s notification as `wanted` says; each delivery's answer.
async fn notify_again(engine: &Engine, out: &str, wanted: Value) -> Vec<Value> {
    let reply: Value = client()
        .post(engine.url(&format!("/sandbox/trades/{APP_ID}/{out}/notify")))
        .json(&wanted)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    reply["deliveries"]
        .as_array()
        .unwrap_or_else(|| panic!("{reply}"))
        .clone()
}

/// Makes the sandbox answer the next call of `method` as `fault` says.
async fn arm(engine: &Engine, method: &str, fault: Value) {
    let mut body = fault;
    body["app_id"] = json!(APP_ID);
    body["method"] = json!(method);
    let reply = client()
        .post(engine.url("/sandbox/faults"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(
        reply.status().is_success(),
        "{}",
        reply.text().await.unwrap()
    );
}

async fn anomalies(api: &Api, merchant: &str) -> Vec<String> {
    api.get(&format!("/api/v1/merchants/{merchant}/payment-anomalies"))
        .await
        .ok()
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["kind"].as_str().unwrap().to_owned())
        .collect()
}

async fn events(db: &str, kind: &str) -> i64 {
    count(
        db,
        &format!("SELECT COUNT(*) FROM events WHERE kind = '{kind}'"),
    )
    .await
}

#[tokio::test]
async fn duplicate_late_and_forged_notifications_change_nothing_and_forgeries_are_shown() {
    for db in databases().await {
        let label = db.label();
        let engine = Engine::start(&db.url(), &ENV);
        let s = shop(&engine, &db.url()).await;
        let (id, out) = paid(&engine, &s, 880, label).await;

        // The same notification three times more, then news older than the ledger's.
        let again = notify_again(&engine, &out, json!({"times": 3})).await;
        assert!(
            again.iter().all(|d| d["answer"] == "success"),
            "{label}: {again:?}"
        );
        let late = notify_again(&engine, &out, json!({"trade_status": "WAIT_BUYER_PAY"})).await;
        assert_eq!(late[0]["answer"], "success", "{label}: {late:?}");
        let now = s.owner.get(&format!("/api/v1/payments/{id}")).await.ok();
        assert_eq!(now.body["status"], "succeeded", "{label}");
        assert_eq!(events(&db.url(), "payment.succeeded").await, 1, "{label}");
        assert!(anomalies(&s.owner, &s.merchant).await.is_empty(), "{label}");

        // Signed by Alipay's key but for another amount: recorded, not applied, shown.
        let forged = notify_again(&engine, &out, json!({"total_amount": "0.01"})).await;
        assert_eq!(
            forged[0]["answer"], "success",
            "{label}: recorded, so acknowledged"
        );
        assert_eq!(
            anomalies(&s.owner, &s.merchant).await,
            ["amount_mismatch"],
            "{label}"
        );
        let now = s.owner.get(&format!("/api/v1/payments/{id}")).await.ok();
        assert_eq!(now.body["amount_fen"], 880, "{label}");

        // Another merchant of the same app (a service provider's) is sent this merchant's
        // trade: recorded for it as foreign, applied to nothing.
        s.stranger
            .put(
                &format!("/api/v1/merchants/{}/alipay/credentials", s.other),
                json!({"app_id": APP_ID, "key_mode": "public_key", "app_private_key": s.pem,
                    "alipay_public_key": s.alipay_public_key, "gateway": "custom",
                    "gateway_url": s.gateway_url}),
            )
            .await
            .ok();
        let elsewhere = notify_again(
            &engine,
            &out,
            json!({"notify_url": format!("https://p1.test/alipay/notify/{}", s.other)}),
        )
        .await;
        assert_eq!(elsewhere[0]["answer"], "success", "{label}: {elsewhere:?}");
        assert_eq!(
            anomalies(&s.stranger, &s.other).await,
            ["foreign_trade"],
            "{label}"
        );
        // Neither merchant sees the other's anomalies.
        let peek = s
            .stranger
            .get(&format!(
                "/api/v1/merchants/{}/payment-anomalies",
                s.merchant
            ))
            .await;
        assert_eq!(peek.status, 404, "{label}");
        assert_eq!(events(&db.url(), "payment.succeeded").await, 1, "{label}");
        drop(engine);
        db.cleanup().await;
    }
}

#[tokio::test]
async fn a_refund_whose_answer_was_lost_is_settled_once_by_its_notification_or_by_asking() {
    for db in databases().await {
        let label = db.label();
        let engine = Engine::start(&db.url(), &ENV);
        let s = shop(&engine, &db.url()).await;
        let (id, _) = paid(&engine, &s, 1_000, label).await;
        let refunds = format!("/api/v1/payments/{id}/refunds");
        let refund_status = |n: usize| {
            let owner = &s.owner;
            let path = format!("/api/v1/payments/{id}");
            async move {
                let now = owner.get(&path).await.ok();
                now.body["refunds"][n]["status"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            }
        };

        // Alipay refunds but its answer is lost: pending, until its notification settles it.
        arm(
            &engine,
            "alipay.trade.refund",
            json!({"answer": "lose_answer"}),
        )
        .await;
        let lost = s
            .owner
            .post(&refunds, json!({"amount_fen": 100, "out_request_no": "R1"}))
            .await;
        assert_eq!(lost.status, 502, "{label}: {lost:?}");
        assert_eq!(lost.body["code"], "alipay_unavailable", "{label}");
        eventually(Duration::from_secs(20), "the refund settles", || async {
            match refund_status(0).await.as_str() {
                "succeeded" => Ok(()),
                other => Err(format!("{label}: {other}")),
            }
        })
        .await;

        // Lost again; the owner asks Alipay (or the notification was quicker): settled once.
        arm(
            &engine,
            "alipay.trade.refund",
            json!({"answer": "lose_answer"}),
        )
        .await;
        let lost = s
            .owner
            .post(&refunds, json!({"amount_fen": 200, "out_request_no": "R2"}))
            .await;
        assert_eq!(lost.status, 502, "{label}: {lost:?}");
        let now = s.owner.get(&format!("/api/v1/payments/{id}")).await.ok();
        let second = now.body["refunds"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["out_request_no"] == "R2")
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let asked = s
            .owner
            .post(&format!("{refunds}/{second}/query"), json!({}))
            .await;
        assert_eq!(asked.status, 200, "{label}: {asked:?}");
        assert_eq!(asked.body["status"], "succeeded", "{label}");

        // Staff cannot ask (refunds are the owner's).
        let by_cashier = s
            .cashier
            .post(&format!("{refunds}/{second}/query"), json!({}))
            .await;
        assert_eq!(by_cashier.status, 404, "{label}");

        // Lost once more; the owner sends the same request again: Alipay refunds it once.
        arm(
            &engine,
            "alipay.trade.refund",
            json!({"answer": "lose_answer"}),
        )
        .await;
        let body = json!({"amount_fen": 300, "out_request_no": "R3"});
        assert_eq!(s.owner.post(&refunds, body.clone()).await.status, 502);
        let resent = s.owner.post(&refunds, body).await;
        assert_eq!(resent.status, 201, "{label}: {resent:?}");
        assert_eq!(resent.body["status"], "succeeded", "{label}");

        // Refused outright: failed, and the amount is free again.
        arm(
            &engine,
            "alipay.trade.refund",
            json!({"answer": "refuse", "sub_code": "ACQ.SELLER_BALANCE_NOT_ENOUGH"}),
        )
        .await;
        let refused = s
            .owner
            .post(&refunds, json!({"amount_fen": 400, "out_request_no": "R4"}))
            .await;
        assert_eq!(refused.status, 502, "{label}: {refused:?}");
        assert_eq!(refused.body["code"], "alipay_refused", "{label}");

        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = s.owner.get(&format!("/api/v1/payments/{id}")).await.ok();
        assert_eq!(now.body["refunded_fen"], 600, "{label}: {now:?}");
        let sandbox_trade: Value = client()
            .get(engine.url(&format!(
                "/sandbox/trades/{APP_ID}/{}",
                now.body["out_trade_no"].as_str().unwrap()
            )))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(sandbox_trade["refunded_fen"], 600, "{label}: Alipay agrees");
        assert_eq!(events(&db.url(), "refund.succeeded").await, 3, "{label}");
        drop(engine);
        db.cleanup().await;
    }
}

#[tokio::test]
async fn a_code_payment_refused_is_closed_and_one_whose_answer_was_lost_is_asked_about() {
    for db in databases().await {
        let label = db.label();
        let mut env = ENV.to_vec();
        env.push(("TRELLIS_PAYMENTS__PAY_POLL_MS", "200"));
        let engine = Engine::start(&db.url(), &env);
        let s = shop(&engine, &db.url()).await;
        let path = format!("/api/v1/stores/{}/payments", s.store);
        let pay = |code: &str| json!({"scene": "bar_code", "auth_code": code, "amount_fen": 500, "subject": "面条"});

        arm(
            &engine,
            "alipay.trade.pay",
            json!({"answer": "refuse", "sub_code": "ACQ.BUYER_BALANCE_NOT_ENOUGH"}),
        )
        .await;
        let refused = s.cashier.post(&path, pay("280000000000000101")).await;
        assert_eq!(refused.status, 502, "{label}: {refused:?}");
        assert_eq!(refused.body["code"], "alipay_refused", "{label}");
        assert!(
            refused.body["message"]
                .as_str()
                .unwrap()
                .contains("ACQ.BUYER_BALANCE_NOT_ENOUGH"),
            "{label}: the cashier learns why"
        );
        let closed = s.owner.get(&format!("{path}?status=closed")).await.ok();
        assert_eq!(closed.body["items"].as_array().unwrap().len(), 1, "{label}");

        arm(
            &engine,
            "alipay.trade.pay",
            json!({"answer": "lose_answer"}),
        )
        .await;
        let unknown = s.cashier.post(&path, pay("280000000000000202")).await;
        assert!(
            unknown.status == 201 || unknown.status == 202,
            "{label}: {unknown:?}"
        );
        let id = unknown.body["id"].as_str().unwrap().to_owned();
        until_paid(&s.cashier, &id, label, Duration::from_secs(20)).await;
        assert_eq!(events(&db.url(), "payment.succeeded").await, 1, "{label}");
        // The detail shows how the engine found out.
        let detail = s.owner.get(&format!("/api/v1/payments/{id}")).await.ok();
        let asked = detail.body["checks"].as_array().unwrap();
        assert!(
            asked.iter().any(|c| c["method"] == "alipay.trade.query"
                && c["outcome"] == "ok"
                && c["trade_status"] == "TRADE_SUCCESS"),
            "{label}: {asked:?}"
        );
        drop(engine);
        db.cleanup().await;
    }
}

#[tokio::test]
async fn a_payment_made_while_the_engine_was_down_is_applied_once_when_it_is_back() {
    for db in databases().await {
        let label = db.label();
        // Alipay: another engine's sandbox on a database of its own, up all along.
        let alipay_db = trellis_tests::sqlite();
        let alipay = Engine::start(&alipay_db.url(), &ENV);
        let mut env = ENV.to_vec();
        env.push(("TRELLIS_PAYMENTS__RECONCILE_EVERY_SECS", "1"));
        let engine = Engine::start(&db.url(), &env);
        let s = shop_at(&engine, &db.url(), &alipay).await;
        let created = s
            .cashier
            .post(
                &format!("/api/v1/stores/{}/payments", s.store),
                json!({"scene": "precreate", "amount_fen": 4_200, "subject": "晚餐"}),
            )
            .await
            .ok();
        let id = created.body["id"].as_str().unwrap().to_owned();
        let out = created.body["out_trade_no"].as_str().unwrap().to_owned();

        // The engine stops; the buyer pays meanwhile, and Alipay's notification finds nobody.
        drop(engine);
        let paid = consumer_pays(&alipay, "alice", &out, true).await;
        assert_eq!(paid["trade_status"], "TRADE_SUCCESS", "{label}: {paid}");

        // Back up (sessions survive: they live in the database), reconciliation asks Alipay.
        let engine = Engine::start(&db.url(), &env);
        let owner = s.owner.on_engine(&engine);
        until_paid(&owner, &id, label, Duration::from_secs(30)).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(
            events(&db.url(), "payment.succeeded").await,
            1,
            "{label}: applied once, however many rounds looked"
        );
        drop(engine);
        drop(alipay);
        db.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_storm_on_two_engines_applies_each_trade_once_though_one_engine_is_killed() {
    for db in databases().await {
        let label = db.label();
        // The full 100,000 is `benches/storm.rs`; the suite keeps the shape at a tenth (PostgreSQL)
        // and a fiftieth (SQLite, one writer at a time).
        let storm = if label == "postgres" {
            Storm {
                trades: 2_000,
                notifications: 10_000,
                concurrency: 32,
            }
        } else {
            Storm {
                trades: 400,
                notifications: 2_000,
                concurrency: 16,
            }
        };
        let outcome = trellis_tests::storm::run(&db.url(), storm).await;
        let trades = i64::try_from(storm.trades).unwrap();
        assert_eq!(
            outcome.deliveries, storm.notifications,
            "{label}: {outcome:?}"
        );
        assert_eq!(
            outcome.finished, trades,
            "{label}: every trade finished: {outcome:?}"
        );
        assert_eq!(
            outcome.succeeded_events, trades,
            "{label}: one payment.succeeded per trade: {outcome:?}"
        );
        assert_eq!(
            outcome.records,
            i64::try_from(outcome.distinct).unwrap(),
            "{label}: each notification recorded once: {outcome:?}"
        );
        eprintln!("{label}: {outcome:?}");
        db.cleanup().await;
    }
}
