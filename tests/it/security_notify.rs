//! Alipay notifications posted, really signed, to the real binary's `/alipay/notify/{merchant}`:
//! recorded per merchant and app, so two merchants that share an app id — one addressed by
//! `app_id`, one by `auth_app_id` under a service provider's app — each keep a notification
//! with the same notify id, while a genuine replay to the same merchant is not recorded twice.

use sea_orm::{ConnectionTrait, Statement};
use secrecy::SecretString;
use serde_json::{Value, json};
use trellis_engine::alipay::notify::{Notification, NotifyRule};
use trellis_engine::alipay::{PrivateKey, SignType};
use trellis_tests::{
    Api, Engine, TEST_PASSWORD, client, create_node, create_partner, create_platform_admin,
    databases,
};

const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../core/alipay/tests/vectors/");
const MERCHANT_APP: &str = "2021004100000001";
const ISV_APP: &str = "2021004100000999";
const NOTIFY_ID: &str = "2024052000222103000012345678901234";

fn vector_file(name: &str) -> String {
    std::fs::read_to_string(format!("{VECTORS}{name}")).unwrap()
}

/// Alipay's side of the test key pairs: it signs the notifications.
fn alipay_key() -> PrivateKey {
    PrivateKey::parse(&SecretString::from(vector_file(
        "keys/alipay_private_pkcs8.pem",
    )))
    .unwrap()
}

fn credentials() -> Value {
    json!({
        "app_id": MERCHANT_APP,
        "key_mode": "public_key",
        "app_private_key": vector_file("keys/app_private_pkcs1.pem"),
        "alipay_public_key": vector_file("keys/alipay_public.pem"),
        "aes_key": "aoMq5bkLjvVvtI5CPhxUIg==",
        "gateway": "custom",
        "gateway_url": "http://127.0.0.1:9/gateway.do",
    })
}

/// A trade notification as Alipay posts it (form-encoded, RSA2 under rule V1).
fn notification(key: &PrivateKey, ids: &[(&str, &str)], trade_no: &str) -> String {
    let mut fields: std::collections::BTreeMap<String, String> = [
        ("notify_type", "trade_status_sync"),
        ("notify_id", NOTIFY_ID),
        ("notify_time", "2024-05-20 10:31:01"),
        ("trade_no", trade_no),
        ("out_trade_no", "T-1"),
        ("trade_status", "TRADE_SUCCESS"),
        ("total_amount", "0.10"),
        ("charset", "utf-8"),
        ("version", "1.0"),
        ("sign_type", "RSA2"),
    ]
    .iter()
    .chain(ids)
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    let unsigned = Notification {
        fields: fields.clone(),
    };
    let sign = key
        .sign(SignType::Rsa2, &unsigned.signed_content(NotifyRule::V1))
        .unwrap();
    fields.insert("sign".into(), sign);
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in &fields {
        form.append_pair(k, v);
    }
    form.finish()
}

async fn post(engine: &Engine, merchant: &str, body: &str) -> (u16, String) {
    let response = client()
        .post(engine.url(&format!("/alipay/notify/{merchant}")))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// (merchant id, app id) of every record of [`NOTIFY_ID`], in merchant order.
async fn records(url: &str) -> Vec<(String, String)> {
    let conn = sea_orm::Database::connect(url).await.unwrap();
    let rows = conn
        .query_all_raw(Statement::from_string(
            conn.get_database_backend(),
            format!(
                "SELECT merchant_id, app_id FROM alipay_notifications \
                 WHERE notify_id = '{NOTIFY_ID}' ORDER BY merchant_id"
            ),
        ))
        .await
        .unwrap();
    conn.close().await.unwrap();
    rows.iter()
        .map(|r| {
            (
                r.try_get::<String>("", "merchant_id").unwrap(),
                r.try_get::<String>("", "app_id").unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn one_notify_id_for_two_merchants_of_one_app_is_recorded_for_each_and_a_replay_is_not() {
    for db in databases().await {
        let leg = db.label();
        let engine = Engine::start(&db.url(), &[]);
        create_platform_admin(&db.url(), "root@platform.test", TEST_PASSWORD);
        let root = Api::new(&engine, "127.0.0.1")
            .login("root@platform.test", TEST_PASSWORD)
            .await;
        let partner = create_partner(&root, "isv", "isv.test").await;
        let agent = create_node(&root, "agents", Some(&partner), json!({"name": "a"})).await;
        let mut merchants = Vec::new();
        for name in ["direct", "authorised"] {
            let merchant =
                create_node(&root, "merchants", Some(&agent), json!({"name": name})).await;
            root.put(
                &format!("/api/v1/merchants/{merchant}/alipay/credentials"),
                credentials(),
            )
            .await
            .ok();
            merchants.push(merchant);
        }
        let alipay = alipay_key();
        // The first merchant's own app sends; the second's reaches it through the ISV's app.
        let direct = notification(&alipay, &[("app_id", MERCHANT_APP)], "1");
        let authorised = notification(
            &alipay,
            &[("app_id", ISV_APP), ("auth_app_id", MERCHANT_APP)],
            "2",
        );

        for (merchant, body) in merchants.iter().zip([&direct, &authorised]) {
            assert_eq!(
                post(&engine, merchant, body).await,
                (200, "success".to_owned()),
                "{leg}"
            );
        }
        let mut expected: Vec<(String, String)> = merchants
            .iter()
            .map(|m| (m.clone(), MERCHANT_APP.to_owned()))
            .collect();
        expected.sort();
        assert_eq!(records(&db.url()).await, expected, "{leg}");

        // Alipay's retries: acknowledged again, recorded once.
        for (merchant, body) in merchants.iter().zip([&direct, &authorised]) {
            assert_eq!(
                post(&engine, merchant, body).await,
                (200, "success".to_owned()),
                "{leg}"
            );
        }
        assert_eq!(records(&db.url()).await, expected, "{leg}");

        drop(engine);
        db.cleanup().await;
    }
}

/// The engine keeps a merchant's Alipay key in memory for a moment (`database.recent_reads_ms`),
/// but a change made through it applies to the very next notification: a key the merchant
/// replaced (say, after it leaked) verifies nothing more, and credentials saved after a refusal
/// are used at once.
#[tokio::test]
async fn a_replaced_alipay_key_verifies_nothing_from_the_next_notification_on() {
    let db = databases().await.remove(0);
    let engine = Engine::start(&db.url(), &[("TRELLIS_DATABASE__RECENT_READS_MS", "60000")]);
    create_platform_admin(&db.url(), "root@platform.test", TEST_PASSWORD);
    let root = Api::new(&engine, "127.0.0.1")
        .login("root@platform.test", TEST_PASSWORD)
        .await;
    let partner = create_partner(&root, "keys", "keys.test").await;
    let agent = create_node(&root, "agents", Some(&partner), json!({"name": "a"})).await;
    let merchant = create_node(&root, "merchants", Some(&agent), json!({"name": "m"})).await;
    let old = alipay_key();
    let first = notification(&old, &[("app_id", MERCHANT_APP)], "1");
    assert_eq!(
        post(&engine, &merchant, &first).await.0,
        404,
        "no credentials yet"
    );

    let path = format!("/api/v1/merchants/{merchant}/alipay/credentials");
    root.put(&path, credentials()).await.ok();
    assert_eq!(
        post(&engine, &merchant, &first).await,
        (200, "success".to_owned()),
        "credentials saved after a refusal apply at once"
    );

    let new = PrivateKey::generate().unwrap();
    let mut replaced = credentials();
    replaced["alipay_public_key"] = json!(new.public_key().to_base64());
    root.put(&path, replaced).await.ok();
    let second = |key: &PrivateKey| {
        notification(
            key,
            &[("app_id", MERCHANT_APP), ("notify_id", "after-the-new-key")],
            "2",
        )
    };
    let (status, body) = post(&engine, &merchant, &second(&old)).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("notification_rejected"), "{body}");
    assert_eq!(
        post(&engine, &merchant, &second(&new)).await,
        (200, "success".to_owned())
    );
    drop(engine);
    db.cleanup().await;
}
