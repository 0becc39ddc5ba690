//! Money through the core, end to end on both databases against the offline sandbox: a store's
//! cashier creates a trade (a QR code), a consumer pays it, Alipay's notification moves the
//! ledger to `succeeded` and `payment.succeeded` reaches a subscribed plugin once; the owner
//! refunds part, `refund.succeeded` is recorded, and a refund beyond what remains is refused.

use std::time::Duration;

use sea_orm::{ConnectionTrait, Statement};
use secrecy::SecretString;
use serde_json::{Value, json};
use trellis_engine::alipay::PrivateKey;
use trellis_tests::{
    Api, Engine, client, create_node as node, create_partner, create_platform_admin,
    create_user as user, databases, eventually, register_sandbox_app,
};

const PASSWORD: &str = "correct horse battery staple";
const ROOT: &str = "root@platform.test";
const CONSOLE: &str = "127.0.0.1";
pub(crate) const HELLO: &str = "com.trellis.hello";
pub(crate) const APP_ID: &str = "2021004199990088";
const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../core/alipay/tests/vectors/");

pub(crate) const ENV: [(&str, &str); 4] = [
    ("TRELLIS_SANDBOX__ENABLED", "true"),
    ("TRELLIS_SANDBOX__TIME_SCALE", "100000"),
    ("TRELLIS_EVENTS__POLL_MS", "50"),
    ("TRELLIS_EVENTS__BACKOFF_FIRST_SECS", "1"),
];

pub(crate) struct Shop {
    /// The platform administrator, on the console.
    pub(crate) root: Api,
    pub(crate) partner: String,
    pub(crate) agent: String,
    /// The merchant's app as the engine signs with it: the test plays a second system on it.
    pub(crate) pem: String,
    pub(crate) alipay_public_key: String,
    pub(crate) gateway_url: String,
    pub(crate) owner: Api,
    pub(crate) cashier: Api,
    pub(crate) stranger: Api,
    pub(crate) merchant: String,
    pub(crate) store: String,
    /// The stranger's merchant.
    pub(crate) other: String,
}

/// A partner with hello installed for its merchant, whose Alipay app is registered at the
/// sandbox; the merchant's owner, a cashier of its store, and another merchant's owner.
pub(crate) async fn shop(engine: &Engine, database_url: &str) -> Shop {
    shop_at(engine, database_url, engine).await
}

/// [`shop`], with the merchant's app registered at the sandbox of `alipay` (another engine
/// playing Alipay, which stays up when `engine` stops).
pub(crate) async fn shop_at(engine: &Engine, database_url: &str, alipay: &Engine) -> Shop {
    create_platform_admin(database_url, ROOT, PASSWORD);
    let root = Api::new(engine, CONSOLE).login(ROOT, PASSWORD).await;
    let partner = create_partner(&root, "P1", "p1.test").await;
    let agent = node(&root, "agents", Some(&partner), json!({"name": "A1"})).await;
    let merchant = node(&root, "merchants", Some(&agent), json!({"name": "M1"})).await;
    let other = node(&root, "merchants", Some(&agent), json!({"name": "M2"})).await;
    let store = node(&root, "stores", Some(&merchant), json!({"name": "S1"})).await;
    let partner_admin = user(engine, &root, &partner, "partner@p1.test", "p1.test").await;
    let agent_admin = user(engine, &root, &agent, "agent@p1.test", "p1.test").await;
    trellis_tests::install_and_assign(
        &partner_admin,
        &agent_admin,
        &partner,
        ("plugins/hello", "trellis_plugin_hello", HELLO),
        json!({"name": "Hello", "validity_days": 30}),
        &[&merchant],
    )
    .await;
    let pem = std::fs::read_to_string(format!("{VECTORS}keys/app_private_pkcs8.pem")).unwrap();
    let key = PrivateKey::parse(&SecretString::from(pem.clone())).unwrap();
    let registered = register_sandbox_app(
        alipay,
        json!({"app_id": APP_ID, "app_public_key": key.public_key().to_base64()}),
    )
    .await;
    let owner = user(engine, &root, &merchant, "owner@m1.test", "p1.test").await;
    owner
        .put(
            &format!("/api/v1/merchants/{merchant}/alipay/credentials"),
            json!({"app_id": APP_ID, "key_mode": "public_key", "app_private_key": pem,
                "alipay_public_key": registered["alipay_public_key"], "gateway": "custom",
                "gateway_url": registered["gateway_url"]}),
        )
        .await
        .ok();
    Shop {
        pem,
        alipay_public_key: registered["alipay_public_key"].as_str().unwrap().to_owned(),
        gateway_url: registered["gateway_url"].as_str().unwrap().to_owned(),
        cashier: user(engine, &root, &store, "cashier@m1.test", "p1.test").await,
        stranger: user(engine, &root, &other, "owner@m2.test", "p1.test").await,
        owner,
        merchant,
        store,
        other,
        root,
        partner,
        agent,
    }
}

impl Shop {
    fn merchant_app(&self) -> trellis_engine::alipay::client::MerchantApp {
        trellis_engine::alipay::client::MerchantApp {
            merchant_id: self.merchant.clone(),
            app_id: APP_ID.into(),
            sign_type: trellis_engine::alipay::SignType::Rsa2,
            private_key: PrivateKey::parse(&SecretString::from(self.pem.clone())).unwrap(),
            alipay_public_key: trellis_engine::alipay::PublicKey::parse(&self.alipay_public_key)
                .unwrap(),
            aes: None,
            gateway_url: self.gateway_url.clone(),
            cert_sns: None,
            alipay_cert_sn: None,
            alipay_root_cert: None,
        }
    }
}

/// Sandbox consumer `user` pays trade `out_trade_no` of the shop's app; with `notify: false` the
/// notification is lost. Returns the sandbox's view of the trade.
pub(crate) async fn consumer_pays(
    engine: &Engine,
    user: &str,
    out_trade_no: &str,
    notify: bool,
) -> Value {
    client()
        .post(engine.url(&format!("/sandbox/consumers/{user}/pay")))
        .json(&json!({"app_id": APP_ID, "out_trade_no": out_trade_no, "notify": notify}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Waits until payment `id`, read by `api`, is `succeeded`.
pub(crate) async fn until_paid(api: &Api, id: &str, label: &str, within: Duration) {
    eventually(within, "the payment succeeds", || async {
        let now = api.get(&format!("/api/v1/payments/{id}")).await.ok();
        match now.body["status"].as_str() {
            Some("succeeded") => Ok(()),
            other => Err(format!("{label}: {other:?}")),
        }
    })
    .await;
}

pub(crate) async fn count(database_url: &str, sql: &str) -> i64 {
    let conn = sea_orm::Database::connect(database_url).await.unwrap();
    let n = conn
        .query_one_raw(Statement::from_string(conn.get_database_backend(), sql))
        .await
        .unwrap()
        .map_or(0, |row| row.try_get_by_index::<i64>(0).unwrap_or(0));
    conn.close().await.ok();
    n
}

#[tokio::test]
async fn a_cashiers_qr_code_is_paid_notified_announced_once_and_partly_refunded() {
    for db in databases().await {
        let label = db.label();
        let engine = Engine::start(&db.url(), &ENV);
        let s = shop(&engine, &db.url()).await;
        let store_path = format!("/api/v1/stores/{}/payments", s.store);

        // Bad input changes nothing.
        for (body, field) in [
            (
                json!({"scene": "precreate", "amount_fen": 0, "subject": "咖啡"}),
                "amount_fen",
            ),
            (
                json!({"scene": "precreate", "amount_fen": -5, "subject": "咖啡"}),
                "amount_fen",
            ),
            (
                json!({"scene": "precreate", "amount_fen": 10_000_000_001_i64, "subject": "咖啡"}),
                "amount_fen",
            ),
            (
                json!({"scene": "precreate", "amount_fen": 100, "subject": "a=b"}),
                "subject",
            ),
        ] {
            let refused = s.cashier.post(&store_path, body).await;
            assert_eq!(refused.status, 422, "{label}: {refused:?}");
            assert_eq!(refused.body["field"], field, "{label}");
        }
        assert_eq!(
            count(&db.url(), "SELECT COUNT(*) FROM payments").await,
            0,
            "{label}: nothing recorded for refused input"
        );
        // Another merchant's owner cannot sell at this store.
        let foreign = s
            .stranger
            .post(
                &store_path,
                json!({"scene": "precreate", "amount_fen": 100, "subject": "咖啡"}),
            )
            .await;
        assert_eq!(foreign.status, 404, "{label}: {foreign:?}");

        // The cashier's QR code.
        let created = s
            .cashier
            .post(
                &store_path,
                json!({"scene": "precreate", "amount_fen": 1230, "subject": "咖啡两杯"}),
            )
            .await;
        assert_eq!(created.status, 201, "{label}: {created:?}");
        let payment = created.body.clone();
        let id = payment["id"].as_str().unwrap().to_owned();
        assert_eq!(payment["status"], "created", "{label}");
        assert_eq!(payment["amount_fen"], 1230, "{label}");
        assert!(
            payment["qr_code"].as_str().unwrap().starts_with("http"),
            "{label}: {payment}"
        );
        let svg_url = payment["qr_svg_url"].as_str().unwrap().to_owned();
        let svg = s.cashier.get(&svg_url).await;
        assert_eq!(svg.status, 200, "{label}: {svg:?}");
        assert_eq!(svg.headers["content-type"], "image/svg+xml", "{label}");
        assert!(
            svg.body.as_str().unwrap_or_default().contains("<svg"),
            "{label}"
        );
        let foreign_svg = s.stranger.get(&svg_url).await;
        assert_eq!(foreign_svg.status, 404, "{label}: another merchant's code");
        let out_trade_no = payment["out_trade_no"].as_str().unwrap().to_owned();
        assert!(
            out_trade_no.len() <= 64 && out_trade_no.bytes().all(|b| b.is_ascii_alphanumeric())
        );
        // The stranger cannot read it either.
        let hidden = s.stranger.get(&format!("/api/v1/payments/{id}")).await;
        assert_eq!(hidden.status, 404, "{label}");

        // A consumer pays; the sandbox notifies the partner's domain.
        let paid = consumer_pays(&engine, "alice", &out_trade_no, true).await;
        assert_eq!(paid["trade_status"], "TRADE_SUCCESS", "{label}: {paid}");
        // The ledger hears of it.
        until_paid(&s.cashier, &id, label, Duration::from_secs(20)).await;
        let now = s.owner.get(&format!("/api/v1/payments/{id}")).await.ok();
        assert!(now.body["trade_no"].as_str().is_some(), "{label}: {now:?}");
        assert_eq!(
            now.body["notifications"][0]["trade_status"], "TRADE_SUCCESS",
            "{label}: the detail shows what Alipay said"
        );
        assert!(now.body["paid_at"].as_i64().is_some(), "{label}");
        assert!(
            now.body.get("qr_svg_url").is_none(),
            "{label}: paid: no code"
        );
        assert_eq!(
            s.cashier.get(&svg_url).await.status,
            404,
            "{label}: paid: no code"
        );

        // payment.succeeded reaches hello once (it counts what it is given).
        eventually(
            Duration::from_secs(20),
            "hello counted the payment",
            || async {
                let stats = s
                    .cashier
                    .get(&format!("/api/v1/stores/{}/plugins/{HELLO}/stats", s.store))
                    .await;
                match stats.body["by_kind"]["payment.succeeded"].as_i64() {
                    Some(1) => Ok(()),
                    other => Err(format!("{label}: {other:?} in {:?}", stats.body)),
                }
            },
        )
        .await;
        assert_eq!(
            count(
                &db.url(),
                "SELECT COUNT(*) FROM events WHERE kind = 'payment.succeeded'"
            )
            .await,
            1,
            "{label}: one event for one payment"
        );

        // Refunds are the owner's.
        let refund_path = format!("/api/v1/payments/{id}/refunds");
        let by_cashier = s
            .cashier
            .post(&refund_path, json!({"amount_fen": 100}))
            .await;
        // The refund is decided at the merchant, above the cashier's store: not even visible.
        assert_eq!(by_cashier.status, 404, "{label}: {by_cashier:?}");
        let refund = s
            .owner
            .post(
                &refund_path,
                json!({"amount_fen": 1000, "out_request_no": "R1", "reason": "少一杯"}),
            )
            .await;
        assert_eq!(refund.status, 201, "{label}: {refund:?}");
        assert_eq!(refund.body["status"], "succeeded", "{label}");
        // The same request again is the same refund, not a second one.
        let again = s
            .owner
            .post(
                &refund_path,
                json!({"amount_fen": 1000, "out_request_no": "R1"}),
            )
            .await;
        assert_eq!(again.body["id"], refund.body["id"], "{label}: {again:?}");
        // Beyond what remains (230 fen): refused, and nothing changes.
        let beyond = s
            .owner
            .post(
                &refund_path,
                json!({"amount_fen": 231, "out_request_no": "R2"}),
            )
            .await;
        assert_eq!(beyond.status, 422, "{label}: {beyond:?}");
        let after = s.owner.get(&format!("/api/v1/payments/{id}")).await.ok();
        assert_eq!(after.body["refunded_fen"], 1000, "{label}");
        assert_eq!(
            after.body["refunds"].as_array().unwrap().len(),
            1,
            "{label}"
        );
        assert_eq!(
            count(
                &db.url(),
                "SELECT COUNT(*) FROM events WHERE kind = 'refund.succeeded'"
            )
            .await,
            1,
            "{label}"
        );

        // A trade this engine never created, paid and notified to the merchant's notify URL:
        // recorded and shown to the merchant, applied to nothing.
        let stray = s.merchant_app();
        let alipay = trellis_engine::alipay::client::AlipayClient::with_policy(
            trellis_engine::alipay::gateway::GatewayPolicy::local_sandbox(),
            Duration::from_secs(5),
            Duration::from_secs(20),
        )
        .unwrap();
        alipay
            .call(
                &stray,
                "alipay.trade.precreate",
                Some(&json!({"out_trade_no": "X0001", "total_amount": "1.00", "subject": "stray"})),
                &trellis_engine::alipay::client::CallOptions {
                    notify_url: Some(format!("https://p1.test/alipay/notify/{}", s.merchant)),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        client()
            .post(engine.url("/sandbox/consumers/bob/pay"))
            .json(&json!({"app_id": APP_ID, "out_trade_no": "X0001"}))
            .send()
            .await
            .unwrap();
        eventually(Duration::from_secs(20), "the stray is reported", || async {
            let anomalies = s
                .owner
                .get(&format!(
                    "/api/v1/merchants/{}/payment-anomalies",
                    s.merchant
                ))
                .await
                .ok();
            match anomalies.body[0]["kind"].as_str() {
                Some("unknown_trade") => Ok(()),
                other => Err(format!("{label}: {other:?}")),
            }
        })
        .await;
        assert_eq!(
            count(&db.url(), "SELECT COUNT(*) FROM payments").await,
            1,
            "{label}: the stray trade is in no ledger"
        );

        // The merchant's views: filtered lists, daily totals, the export.
        let merchant_path = format!("/api/v1/merchants/{}/payments", s.merchant);
        let list = s.owner.get(&merchant_path).await.ok();
        assert_eq!(list.body["items"].as_array().unwrap().len(), 1, "{label}");
        for (query, expected) in [
            ("?status=succeeded", 1),
            ("?status=closed", 0),
            ("?min_fen=1231", 0),
            ("?max_fen=1230", 1),
            (&format!("?store_id={}", s.store) as &str, 1),
            ("?buyer=nobody", 0),
        ] {
            let page = s.owner.get(&format!("{merchant_path}{query}")).await.ok();
            assert_eq!(
                page.body["items"].as_array().unwrap().len(),
                expected,
                "{label}: {query}"
            );
        }
        let bad = s.owner.get(&format!("{merchant_path}?status=paid")).await;
        assert_eq!(bad.status, 422, "{label}: {bad:?}");
        let unknown = s.owner.get(&format!("{merchant_path}?colour=red")).await;
        assert_eq!(unknown.status, 422, "{label}: {unknown:?}");
        let now_ms = chrono::Utc::now().timestamp_millis();
        let day = 86_400_000;
        let totals = s
            .owner
            .get(&format!(
                "{merchant_path}/daily?from={}&to={}",
                now_ms - day,
                now_ms + day
            ))
            .await
            .ok();
        assert_eq!(totals.body[0]["paid"], 1, "{label}: {totals:?}");
        assert_eq!(totals.body[0]["amount_fen"], 1230, "{label}");
        assert_eq!(totals.body[0]["refunded_fen"], 1000, "{label}");
        let too_long = s
            .owner
            .get(&format!("{merchant_path}/daily?from=0&to={now_ms}"))
            .await;
        assert_eq!(too_long.status, 422, "{label}: a range is at most a year");
        let csv = s.owner.get(&format!("{merchant_path}.csv")).await;
        assert_eq!(csv.status, 200, "{label}");
        assert_eq!(csv.headers["content-type"], "text/csv; charset=utf-8");
        let text = csv.body.as_str().unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{label}: {text:?}");
        assert!(lines[0].starts_with("id,created_at"), "{label}");
        assert!(lines[1].contains(&id) && lines[1].contains("12.30") && lines[1].contains("10.00"));
        // Staff read their store's payments, not the merchant's export.
        let staff_csv = s.cashier.get(&format!("{merchant_path}.csv")).await;
        assert_eq!(staff_csv.status, 404, "{label}");
        drop(engine);
        db.cleanup().await;
    }
}

/// A payment whose notification was lost (and one made while the engine heard nothing) is found
/// by reconciliation, applied once, and announced once, however many rounds look at it.
#[tokio::test]
async fn a_payment_whose_notification_was_lost_is_found_by_reconciliation_and_applied_once() {
    for db in databases().await {
        let label = db.label();
        let mut env = ENV.to_vec();
        env.push(("TRELLIS_PAYMENTS__RECONCILE_EVERY_SECS", "1"));
        let engine = Engine::start(&db.url(), &env);
        let s = shop(&engine, &db.url()).await;
        let created = s
            .cashier
            .post(
                &format!("/api/v1/stores/{}/payments", s.store),
                json!({"scene": "precreate", "amount_fen": 500, "subject": "lost"}),
            )
            .await
            .ok();
        let id = created.body["id"].as_str().unwrap().to_owned();
        let out_trade_no = created.body["out_trade_no"].as_str().unwrap().to_owned();
        let paid = consumer_pays(&engine, "carol", &out_trade_no, false).await;
        assert_eq!(paid["trade_status"], "TRADE_SUCCESS", "{label}: {paid}");
        // Reconciliation finds it.
        until_paid(&s.cashier, &id, label, Duration::from_secs(30)).await;
        // Later rounds change nothing more.
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(
            count(
                &db.url(),
                "SELECT COUNT(*) FROM events WHERE kind = 'payment.succeeded'"
            )
            .await,
            1,
            "{label}: one event"
        );
        drop(engine);
        db.cleanup().await;
    }
}

/// At the counter: a buyer's payment code or face pays at once; a code the buyer must still
/// confirm (`10003`) waits and is polled until the buyer pays; one never confirmed is cancelled at
/// its deadline. Each paid payment is announced once, the cancelled one closed.
#[tokio::test]
async fn a_buyers_code_or_face_pays_at_once_or_after_confirming_and_an_unconfirmed_one_is_cancelled()
 {
    for db in databases().await {
        let label = db.label();
        let mut env = ENV.to_vec();
        env.push(("TRELLIS_PAYMENTS__PAY_WAIT_SECS", "4"));
        env.push(("TRELLIS_PAYMENTS__PAY_POLL_MS", "200"));
        let engine = Engine::start(&db.url(), &env);
        let s = shop(&engine, &db.url()).await;
        let path = format!("/api/v1/stores/{}/payments", s.store);
        let pay = |scene: &str, code: &str| json!({"scene": scene, "auth_code": code, "amount_fen": 300, "subject": "面包"});

        let refused = s.cashier.post(&path, pay("bar_code", "12345")).await;
        assert_eq!(refused.status, 422, "{label}: {refused:?}");
        assert_eq!(refused.body["field"], "auth_code", "{label}");

        let at_once = s
            .cashier
            .post(&path, pay("bar_code", "280000000000000001"))
            .await;
        assert_eq!(at_once.status, 201, "{label}: {at_once:?}");
        assert_eq!(at_once.body["status"], "succeeded", "{label}");
        assert!(
            at_once.body["buyer_id"]
                .as_str()
                .unwrap()
                .starts_with("2088")
        );
        let face = s
            .cashier
            .post(
                &path,
                pay("security_code", "fp0123456789abcdef0123456789abcdef1"),
            )
            .await;
        assert_eq!(face.body["status"], "succeeded", "{label}: {face:?}");

        // The buyer confirms a second after the cashier scanned the code.
        let waiting_code = "280000000000000013";
        let confirm = {
            let url = engine.url(&format!("/sandbox/consumers/{waiting_code}/pay"));
            let db_url = db.url();
            tokio::spawn(async move {
                for _ in 0..40 {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    let conn = sea_orm::Database::connect(&db_url).await.unwrap();
                    let row = conn
                        .query_one_raw(Statement::from_string(
                            conn.get_database_backend(),
                            "SELECT out_trade_no FROM payments WHERE status = 'waiting'",
                        ))
                        .await
                        .unwrap();
                    conn.close().await.ok();
                    if let Some(row) = row {
                        let out: String = row.try_get_by_index(0).unwrap();
                        let answer = client()
                            .post(&url)
                            .json(&json!({"app_id": APP_ID, "out_trade_no": out}))
                            .send()
                            .await
                            .unwrap();
                        return answer.status().as_u16();
                    }
                }
                0
            })
        };
        let confirmed = s.cashier.post(&path, pay("bar_code", waiting_code)).await;
        assert_eq!(confirm.await.unwrap(), 200, "{label}: the buyer confirmed");
        assert_eq!(confirmed.status, 201, "{label}: {confirmed:?}");
        assert_eq!(confirmed.body["status"], "succeeded", "{label}");

        // Never confirmed: cancelled at the deadline.
        let unconfirmed = s
            .cashier
            .post(&path, pay("bar_code", "280000000000000023"))
            .await;
        assert_eq!(
            unconfirmed.body["status"], "closed",
            "{label}: {unconfirmed:?}"
        );

        eventually(Duration::from_secs(20), "the events", || async {
            let paid = count(
                &db.url(),
                "SELECT COUNT(*) FROM events WHERE kind = 'payment.succeeded'",
            )
            .await;
            let closed = count(
                &db.url(),
                "SELECT COUNT(*) FROM events WHERE kind = 'payment.closed'",
            )
            .await;
            match (paid, closed) {
                (3, 1) => Ok(()),
                other => Err(format!("{label}: {other:?}")),
            }
        })
        .await;
        drop(engine);
        db.cleanup().await;
    }
}

/// A page inside Alipay: the trade is created for the signed-in buyer, who pays it in Alipay;
/// the notification moves it like any other. A malformed buyer id changes nothing.
#[tokio::test]
async fn a_trade_for_a_buyer_signed_in_inside_alipay_is_created_for_them_and_paid() {
    for db in databases().await {
        let label = db.label();
        let engine = Engine::start(&db.url(), &ENV);
        let s = shop(&engine, &db.url()).await;
        let path = format!("/api/v1/stores/{}/payments", s.store);
        let bad = s
            .cashier
            .post(
                &path,
                json!({"scene": "jsapi", "buyer_id": "1234", "amount_fen": 800, "subject": "会员充值"}),
            )
            .await;
        assert_eq!(bad.status, 422, "{label}: {bad:?}");
        assert_eq!(bad.body["field"], "buyer_id", "{label}");
        let buyer = trellis_engine::alipay::sandbox::sandbox_user_id("dave");
        let created = s
            .cashier
            .post(
                &path,
                json!({"scene": "jsapi", "buyer_id": buyer, "amount_fen": 800,
                    "subject": "会员充值", "purpose": "recharge"}),
            )
            .await;
        assert_eq!(created.status, 201, "{label}: {created:?}");
        assert_eq!(created.body["status"], "waiting", "{label}");
        assert!(
            created.body["trade_no"].as_str().is_some(),
            "{label}: my.tradePay needs it"
        );
        let id = created.body["id"].as_str().unwrap().to_owned();
        let out_trade_no = created.body["out_trade_no"].as_str().unwrap().to_owned();
        let paid = consumer_pays(&engine, "dave", &out_trade_no, true).await;
        assert_eq!(paid["trade_status"], "TRADE_SUCCESS", "{label}: {paid}");
        eventually(Duration::from_secs(20), "the payment succeeds", || async {
            let now = s.cashier.get(&format!("/api/v1/payments/{id}")).await.ok();
            match (now.body["status"].as_str(), now.body["purpose"].as_str()) {
                (Some("succeeded"), Some("recharge")) => Ok(()),
                other => Err(format!("{label}: {other:?}")),
            }
        })
        .await;

        // Two owners' refunds race for more than the 800 fen paid: one wins, the other is
        // refused, and the refunded total never passes what was paid.
        let refund_path = format!("/api/v1/payments/{id}/refunds");
        let (first, second) = tokio::join!(
            s.owner.post(
                &refund_path,
                json!({"amount_fen": 500, "out_request_no": "RA"})
            ),
            s.owner.post(
                &refund_path,
                json!({"amount_fen": 500, "out_request_no": "RB"})
            ),
        );
        let mut statuses = [first.status, second.status];
        statuses.sort_unstable();
        assert_eq!(statuses, [201, 422], "{label}: {first:?} {second:?}");
        let after = s.owner.get(&format!("/api/v1/payments/{id}")).await.ok();
        assert_eq!(after.body["refunded_fen"], 500, "{label}: {after:?}");
        drop(engine);
        db.cleanup().await;
    }
}
