//! The engine's Alipay client against the offline sandbox served by the real binary: every
//! request's signature is checked by the sandbox, every answer and notification by the engine.
//! A full card activation and a payment with its notification run end to end.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::routing::{get, post};
use secrecy::SecretString;
use serde_json::{Value, json};
use trellis_engine::alipay::aes::AesKey;
use trellis_engine::alipay::client::MerchantApp;
use trellis_engine::alipay::client::{AlipayClient, CallOptions};
use trellis_engine::alipay::gateway::GatewayPolicy;
use trellis_engine::alipay::notify::{Notification, NotifyRule};
use trellis_engine::alipay::{Error, PrivateKey, PublicKey, SignType};
use trellis_tests::{Engine, client, databases, png, register_sandbox_app};

const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../core/alipay/tests/vectors/");
const APP_ID: &str = "2021004199990001";
const AES: &str = "aoMq5bkLjvVvtI5CPhxUIg==";

/// Certificate mode and its rotation.
mod certificates;

fn app_key() -> PrivateKey {
    PrivateKey::parse(&SecretString::from(
        std::fs::read_to_string(format!("{VECTORS}keys/app_private_pkcs8.pem")).unwrap(),
    ))
    .unwrap()
}

/// Registers the test app with the sandbox and returns it as the engine would load it.
async fn app(engine: &Engine) -> MerchantApp {
    let key = app_key();
    let registered = register_sandbox_app(
        engine,
        json!({"app_id": APP_ID, "app_public_key": key.public_key().to_base64(), "aes_key": AES}),
    )
    .await;
    MerchantApp {
        merchant_id: "m".into(),
        app_id: APP_ID.into(),
        sign_type: SignType::Rsa2,
        private_key: key,
        alipay_public_key: PublicKey::parse(registered["alipay_public_key"].as_str().unwrap())
            .unwrap(),
        aes: Some(AesKey::parse(&SecretString::from(AES)).unwrap()),
        gateway_url: registered["gateway_url"].as_str().unwrap().to_owned(),
        cert_sns: None,
        alipay_cert_sn: None,
        alipay_root_cert: None,
    }
}

fn sandbox_engine(url: &str) -> Engine {
    Engine::start(
        url,
        &[
            ("TRELLIS_SANDBOX__ENABLED", "true"),
            ("TRELLIS_SANDBOX__TIME_SCALE", "100000"),
        ],
    )
}

fn alipay() -> AlipayClient {
    // The sandbox is the engine under test, on loopback.
    AlipayClient::with_policy(
        GatewayPolicy::local_sandbox(),
        Duration::from_secs(5),
        Duration::from_secs(20),
    )
    .unwrap()
}

#[tokio::test]
async fn the_sandbox_rejects_a_wrong_key_and_accepts_the_right_one() {
    let db = trellis_tests::sqlite();
    let engine = sandbox_engine(&db.url());
    let good = app(&engine).await;
    let query = json!({"out_trade_no": "nope-1"});
    // Right key: a verified business answer (the trade does not exist).
    match alipay()
        .call(
            &good,
            "alipay.trade.query",
            Some(&query),
            &CallOptions::default(),
        )
        .await
    {
        Err(Error::Gateway(g)) => assert_eq!(g.sub_code.as_deref(), Some("ACQ.TRADE_NOT_EXIST")),
        other => panic!("{other:?}"),
    }
    // Wrong key: Alipay's unsigned 40002 isv.invalid-signature, which changes nothing.
    let bad = MerchantApp {
        private_key: PrivateKey::generate().unwrap(),
        ..app(&engine).await
    };
    match alipay()
        .call(
            &bad,
            "alipay.trade.query",
            Some(&query),
            &CallOptions::default(),
        )
        .await
    {
        Err(Error::UnsignedError { code, sub_code, .. }) => {
            assert_eq!(code, "40002");
            assert_eq!(sub_code.as_deref(), Some("isv.invalid-signature"));
        }
        other => panic!("{other:?}"),
    }
    // A forged Alipay key on our side: the sandbox's genuine answer does not verify.
    let wrong_alipay = MerchantApp {
        alipay_public_key: app_key().public_key().clone(),
        ..app(&engine).await
    };
    let result = alipay()
        .call(
            &wrong_alipay,
            "alipay.trade.query",
            Some(&query),
            &CallOptions::default(),
        )
        .await;
    assert!(matches!(result, Err(Error::InvalidSignature)), "{result:?}");
}

#[tokio::test]
async fn the_sandbox_refuses_malformed_trades_with_alipays_codes() {
    let db = trellis_tests::sqlite();
    let engine = sandbox_engine(&db.url());
    let app = app(&engine).await;
    let none = CallOptions::default();
    let refusal = |result: Result<Value, Error>| match result {
        Err(Error::Gateway(g)) => (g.code, g.sub_code.unwrap_or_default()),
        other => panic!("{other:?}"),
    };
    let order =
        |out: &str| json!({"out_trade_no": out, "total_amount": "1.00", "subject": "会员充值"});
    let invalid = ("40004".to_owned(), "ACQ.INVALID_PARAMETER".to_owned());
    // A `-` in out_trade_no, a missing subject, a third decimal: malformed fields.
    let mut bad = vec![order("T-1")];
    bad.push(json!({"out_trade_no": "T_1", "total_amount": "1.00"}));
    bad.push(json!({"out_trade_no": "T_1", "total_amount": "1.001", "subject": "s"}));
    for biz in bad {
        let result = alipay()
            .call(&app, "alipay.trade.precreate", Some(&biz), &none)
            .await;
        assert_eq!(refusal(result), invalid, "{biz}");
    }
    // create in a UID-mode app with an OpenID buyer.
    let mut create = order("T_2");
    create["buyer_open_id"] = json!("074abc");
    let result = alipay()
        .call(&app, "alipay.trade.create", Some(&create), &none)
        .await;
    assert_eq!(refusal(result), invalid);
    // A payment code that is not one.
    let mut pay = order("T_3");
    pay["scene"] = json!("bar_code");
    pay["auth_code"] = json!("1234");
    let result = alipay()
        .call(&app, "alipay.trade.pay", Some(&pay), &none)
        .await;
    assert_eq!(
        refusal(result),
        ("40004".into(), "ACQ.PAYMENT_AUTH_CODE_INVALID".into())
    );
    // Refunding an unpaid trade; cancelling one that does not exist.
    alipay()
        .call(&app, "alipay.trade.precreate", Some(&order("T_4")), &none)
        .await
        .unwrap();
    let refund = json!({"out_trade_no": "T_4", "refund_amount": "1.00"});
    let result = alipay()
        .call(&app, "alipay.trade.refund", Some(&refund), &none)
        .await;
    assert_eq!(
        refusal(result),
        ("40004".into(), "ACQ.TRADE_STATUS_ERROR".into())
    );
    let result = alipay()
        .call(
            &app,
            "alipay.trade.cancel",
            Some(&json!({"out_trade_no": "T_9"})),
            &none,
        )
        .await;
    assert_eq!(
        refusal(result),
        ("40004".into(), "ACQ.TRADE_NOT_EXIST".into())
    );
    // A code ending in 3 waits for its buyer (10003), who then pays through the consumer route.
    let waiting_code = "2812345678901233";
    pay["out_trade_no"] = json!("T_5");
    pay["auth_code"] = json!(waiting_code);
    let result = alipay()
        .call(&app, "alipay.trade.pay", Some(&pay), &none)
        .await;
    assert!(
        matches!(&result, Err(Error::Gateway(g)) if g.code == "10003" && g.sub_code.is_none()),
        "{result:?}"
    );
    let paid = client()
        .post(engine.url(&format!("/sandbox/consumers/{waiting_code}/pay")))
        .json(&json!({"app_id": APP_ID, "out_trade_no": "T_5"}))
        .send()
        .await
        .unwrap();
    assert_eq!(paid.status(), 200);
    let queried = alipay()
        .call(
            &app,
            "alipay.trade.query",
            Some(&json!({"out_trade_no": "T_5"})),
            &none,
        )
        .await
        .unwrap();
    assert_eq!(queried["trade_status"], "TRADE_SUCCESS");
    drop(engine);
    db.cleanup().await;
}

#[derive(Default)]
struct Merchant {
    notifications: Vec<String>,
    callbacks: Vec<std::collections::BTreeMap<String, String>>,
    answered: usize,
}

/// A stand-in for the merchant's side: the card callback and the notify URL.
async fn merchant_site(alipay_key: PublicKey) -> (String, Arc<Mutex<Merchant>>) {
    let state = Arc::new(Mutex::new(Merchant::default()));
    type Shared = (Arc<Mutex<Merchant>>, Arc<PublicKey>);
    async fn notify(State((state, key)): State<Shared>, body: String) -> &'static str {
        let verified = Notification::parse(body.as_bytes())
            .map(|n| n.verify(&key, NotifyRule::V1).is_ok())
            .unwrap_or(false);
        let mut s = state.lock().unwrap();
        s.notifications.push(body);
        s.answered += 1;
        // Fail twice so the sandbox has to retry, then acknowledge (only what verified).
        if s.answered < 3 || !verified {
            "fail"
        } else {
            "success"
        }
    }
    async fn callback(
        State((state, _)): State<Shared>,
        Query(q): Query<std::collections::BTreeMap<String, String>>,
    ) -> &'static str {
        state.lock().unwrap().callbacks.push(q);
        "ok"
    }
    let router = axum::Router::new()
        .route("/notify", post(notify))
        .route("/card/callback", get(callback))
        .with_state((state.clone(), Arc::new(alipay_key)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    (base, state)
}

#[tokio::test]
async fn a_card_activation_and_a_paid_trade_run_end_to_end() {
    for db in databases().await {
        let engine = sandbox_engine(&db.url());
        let app = app(&engine).await;
        let (site, merchant) = merchant_site(app.alipay_public_key.clone()).await;
        let alipay = alipay();
        let none = CallOptions::default();

        // Design and sync the card: its images first.
        let mut images = Vec::new();
        for image in [png(500, 500), png(1020, 643)] {
            let uploaded = alipay
                .upload_image(&app, "png", "card", image)
                .await
                .unwrap();
            images.push(uploaded["image_id"].clone());
        }
        let template = json!({
            "request_id": "req1", "card_type": "OUT_MEMBER_CARD", "write_off_type": "qrcode",
            "biz_no_prefix": "VIP", "biz_no_suffix_len": "10",
            "template_style_info": {"card_show_name": "会员卡", "logo_id": images[0], "background_id": images[1], "bg_color": "rgb(55,112,179)"},
            "column_info_list": [{"code": "POINT", "title": "积分"}, {"code": "LEVEL", "title": "等级"}],
            "field_rule_list": [
                {"field_name": "Point", "rule_name": "ASSIGN_FROM_REQUEST", "rule_value": "Point"},
                {"field_name": "Level", "rule_name": "ASSIGN_FROM_REQUEST", "rule_value": "Level"},
            ],
            "card_level_conf": [{"level": "普通会员", "level_show_name": "普通会员"}, {"level": "金卡", "level_show_name": "金卡"}],
        });
        let created = alipay
            .call(
                &app,
                "alipay.marketing.card.template.create",
                Some(&template),
                &none,
            )
            .await
            .unwrap();
        let template_id = created["template_id"].as_str().unwrap().to_owned();
        let again = alipay
            .call(
                &app,
                "alipay.marketing.card.template.create",
                Some(&template),
                &none,
            )
            .await
            .unwrap();
        assert_eq!(
            again["template_id"],
            template_id.as_str(),
            "idempotent on request_id"
        );
        let form = json!({"template_id": template_id, "fields": {
            "required": r#"{"common_fields":["OPEN_FORM_FIELD_MOBILE"]}"#,
            "optional": r#"{"common_fields":["OPEN_FORM_FIELD_NAME","OPEN_FORM_FIELD_BIRTHDAY_WITH_YEAR"]}"#,
        }});
        alipay
            .call(
                &app,
                "alipay.marketing.card.formtemplate.set",
                Some(&form),
                &none,
            )
            .await
            .unwrap();
        let bad_form = json!({"template_id": template_id, "fields": {"required": {"common_fields": ["OPEN_FORM_FIELD_MOBILE"]}}});
        assert!(
            alipay
                .call(
                    &app,
                    "alipay.marketing.card.formtemplate.set",
                    Some(&bad_form),
                    &none
                )
                .await
                .is_err(),
            "fields are JSON strings"
        );

        // Claim link → a simulated consumer opens it → the callback gets an auth_code.
        let apply = json!({"template_id": template_id, "callback": format!("{site}/card/callback"), "out_string": "m9"});
        let link = alipay
            .call(
                &app,
                "alipay.marketing.card.activateurl.apply",
                Some(&apply),
                &none,
            )
            .await
            .unwrap();
        let encoded = link["apply_card_url"].as_str().unwrap();
        assert!(!encoded.contains("://"), "the link comes URL-encoded");
        let opened: Value = client()
            .post(engine.url("/sandbox/consumers/alice/open-claim-link"))
            .json(&json!({"url": encoded}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(opened["callback_status"], 200, "{opened}");
        let callback = merchant
            .lock()
            .unwrap()
            .callbacks
            .pop()
            .expect("the callback was called");
        assert_eq!(callback["template_id"], template_id);
        assert_eq!(callback["out_string"], "m9");

        // The activation calls: oauth.token → activateform.query → card.open (AES-encrypted, too).
        let token_options = CallOptions {
            extra: [
                ("grant_type".into(), "authorization_code".into()),
                ("code".into(), callback["auth_code"].clone()),
            ]
            .into(),
            ..CallOptions::default()
        };
        let token = alipay
            .call(&app, "alipay.system.oauth.token", None, &token_options)
            .await
            .unwrap();
        let user_id = token["user_id"].as_str().unwrap().to_owned();
        let reused = alipay
            .call(&app, "alipay.system.oauth.token", None, &token_options)
            .await;
        assert!(reused.is_err(), "an auth_code works once");
        let with_user = CallOptions {
            auth_token: token["access_token"].as_str().map(str::to_owned),
            encrypt: true,
            ..CallOptions::default()
        };
        let form = alipay
            .call(&app, "alipay.marketing.card.activateform.query", Some(&json!({"biz_type": "MEMBER_CARD", "template_id": template_id, "request_id": callback["request_id"]})), &with_user)
            .await
            .unwrap();
        let infos: Value = serde_json::from_str(form["infos"].as_str().unwrap()).unwrap();
        assert!(
            infos
                .as_array()
                .unwrap()
                .iter()
                .any(|i| i.get("OPEN_FORM_FIELD_MOBILE").is_some())
        );
        let open = json!({"out_serial_no": "open-1", "card_template_id": template_id,
            "card_user_info": {"user_uni_id": user_id, "user_uni_id_type": "UID"},
            "card_ext_info": {"external_card_no": "E0001", "level": "普通会员", "point": "0", "balance": "0.00"}});
        let opened = alipay
            .call(&app, "alipay.marketing.card.open", Some(&open), &with_user)
            .await
            .unwrap();
        let card_no = opened["card_info"]["biz_card_no"]
            .as_str()
            .unwrap()
            .to_owned();
        let second = json!({"out_serial_no": "open-2", "card_template_id": template_id,
            "card_user_info": {"user_uni_id": user_id, "user_uni_id_type": "UID"}, "card_ext_info": {"external_card_no": "E0002"}});
        match alipay
            .call(
                &app,
                "alipay.marketing.card.open",
                Some(&second),
                &with_user,
            )
            .await
        {
            Err(Error::Gateway(g)) => assert_eq!(g.sub_code.as_deref(), Some("CARD_ALREADY_EXIST")),
            other => panic!("one card per user per template: {other:?}"),
        }
        let update = json!({"target_card_no": card_no, "target_card_no_type": "BIZ_CARD", "occur_time": "2026-11-25 12:00:00",
            "card_info": {"level": "金卡", "point": "120"}});
        alipay
            .call(&app, "alipay.marketing.card.update", Some(&update), &none)
            .await
            .unwrap();
        let card: Value = client()
            .get(engine.url(&format!("/sandbox/cards/{card_no}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(card["level"], "金卡");
        assert_eq!(card["point"], "120");
        assert_eq!(card["updates"].as_array().unwrap().len(), 1);

        // A trade, paid by a simulated consumer; the notification is retried until acknowledged.
        let trade =
            json!({"out_trade_no": "T_0001", "total_amount": "0.10", "subject": "会员充值"});
        let options = CallOptions {
            notify_url: Some(format!("{site}/notify")),
            ..CallOptions::default()
        };
        let created = alipay
            .call(&app, "alipay.trade.precreate", Some(&trade), &options)
            .await
            .unwrap();
        assert!(created["qr_code"].as_str().is_some());
        let paid = client()
            .post(engine.url("/sandbox/consumers/alice/pay"))
            .json(&json!({"app_id": APP_ID, "out_trade_no": "T_0001"}))
            .send()
            .await
            .unwrap();
        assert_eq!(paid.status(), 200);
        let mut acknowledged = false;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if merchant.lock().unwrap().answered >= 3 {
                acknowledged = true;
                break;
            }
        }
        assert!(
            acknowledged,
            "the sandbox retried until the merchant answered success"
        );
        let notifications = merchant.lock().unwrap().notifications.clone();
        let n = Notification::parse(notifications[0].as_bytes()).unwrap();
        assert_eq!(n.get("trade_status"), Some("TRADE_SUCCESS"));
        assert_eq!(n.get("out_trade_no"), Some("T_0001"));
        assert!(n.verify(&app.alipay_public_key, NotifyRule::V1).is_ok());
        let queried = alipay
            .call(
                &app,
                "alipay.trade.query",
                Some(&json!({"out_trade_no": "T_0001"})),
                &none,
            )
            .await
            .unwrap();
        assert_eq!(queried["trade_status"], "TRADE_SUCCESS");
        drop(engine);
        db.cleanup().await;
    }
}

#[tokio::test]
async fn notifications_are_verified_recorded_once_and_acknowledged_and_no_key_is_logged() {
    use trellis_tests::{Api, create_platform_admin};
    for db in databases().await {
        let engine = Engine::spawn(
            &db.url(),
            &[
                ("TRELLIS_SANDBOX__ENABLED", "true"),
                ("TRELLIS_SANDBOX__TIME_SCALE", "100000"),
                ("TRELLIS_LOG__LEVEL", "debug"),
            ],
        );
        let app = app(&engine).await;
        create_platform_admin(
            &db.url(),
            "root@platform.test",
            "correct horse battery staple",
        );
        let root = Api::new(&engine, "127.0.0.1")
            .login("root@platform.test", "correct horse battery staple")
            .await;
        let partner = root
            .post("/api/v1/partners", json!({"name": "p"}))
            .await
            .ok()
            .id();
        let agent = root
            .post("/api/v1/agents", json!({"parent_id": partner, "name": "a"}))
            .await
            .ok()
            .id();
        let merchant = root
            .post(
                "/api/v1/merchants",
                json!({"parent_id": agent, "name": "m"}),
            )
            .await
            .ok()
            .id();
        let private_pem =
            std::fs::read_to_string(format!("{VECTORS}keys/app_private_pkcs8.pem")).unwrap();
        root.send(
            reqwest::Method::PUT,
            &format!("/api/v1/merchants/{merchant}/alipay/credentials"),
            Some(json!({"app_id": APP_ID, "key_mode": "public_key", "app_private_key": private_pem,
                "alipay_public_key": app.alipay_public_key.to_base64(), "aes_key": AES, "gateway": "custom", "gateway_url": app.gateway_url})),
        )
        .await
        .ok();

        let notify_url = engine.url(&format!("/alipay/notify/{merchant}"));
        let options = CallOptions {
            notify_url: Some(notify_url.clone()),
            ..CallOptions::default()
        };
        let trade = json!({"out_trade_no": "T_9", "total_amount": "12.30", "subject": "会员充值"});
        alipay()
            .call(&app, "alipay.trade.precreate", Some(&trade), &options)
            .await
            .unwrap();
        client()
            .post(engine.url("/sandbox/consumers/bob/pay"))
            .json(&json!({"app_id": APP_ID, "out_trade_no": "T_9"}))
            .send()
            .await
            .unwrap();

        // The sandbox's delivery is acknowledged by the engine with exactly `success`.
        let mut delivery = Value::Null;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let all: Value = client()
                .get(engine.url("/sandbox/notifications"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if let Some(d) = all
                .as_array()
                .and_then(|a| a.iter().find(|d| d["delivery"]["acknowledged"] == true))
            {
                delivery = d.clone();
                break;
            }
        }
        assert_eq!(
            delivery["delivery"]["attempts"].as_array().map(Vec::len),
            Some(1),
            "{delivery}"
        );

        use sea_orm::{ConnectionTrait, Statement};
        let conn = sea_orm::Database::connect(db.url().as_str()).await.unwrap();
        let count = |conn: sea_orm::DatabaseConnection| async move {
            let row = conn
                .query_one_raw(Statement::from_string(
                    conn.get_database_backend(),
                    "SELECT COUNT(*) AS n FROM alipay_notifications",
                ))
                .await
                .unwrap()
                .unwrap();
            row.try_get::<i64>("", "n").unwrap()
        };
        assert_eq!(count(conn.clone()).await, 1);
        let row = conn
            .query_one_raw(Statement::from_string(
                conn.get_database_backend(),
                "SELECT fields, trade_status FROM alipay_notifications",
            ))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            row.try_get::<String>("", "trade_status").unwrap(),
            "TRADE_SUCCESS"
        );
        let fields: std::collections::BTreeMap<String, String> =
            serde_json::from_str(&row.try_get::<String>("", "fields").unwrap()).unwrap();

        // A retry of the same notification is acknowledged and not recorded twice.
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in &fields {
            form.append_pair(k, v);
        }
        let body = form.finish();
        let again = client()
            .post(&notify_url)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(again.text().await.unwrap(), "success");
        assert_eq!(count(conn.clone()).await, 1);
        // A forged one is refused, and so is one sent to another merchant's address.
        let forged = client()
            .post(&notify_url)
            .body(body.replace("12.30", "0.01"))
            .send()
            .await
            .unwrap();
        assert_eq!(forged.status(), 400);
        let elsewhere = client()
            .post(engine.url("/alipay/notify/00000000-0000-0000-0000-000000000000"))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(elsewhere.status(), 404);
        conn.close().await.unwrap();

        // Nothing secret reached the log, at debug level, through all of the above.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let log = engine.log();
        let private_body: String = private_pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        for secret in [
            &private_body[private_body.len() - 300..private_body.len() - 250],
            AES,
            trellis_tests::TEST_MASTER_KEY,
        ] {
            assert!(!log.contains(secret), "key material in the log");
        }
        drop(engine);
        db.cleanup().await;
    }
}

#[tokio::test]
async fn trellis_sandbox_runs_the_gateway_on_its_own() {
    use std::io::{BufRead, BufReader};
    let db = trellis_tests::sqlite();
    let dir = trellis_tests::tempdir();
    let mut child = trellis_tests::trellis_command(dir.path(), &db.url())
        .args(["sandbox", "--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
    let line = lines.find(|l| l.contains("listening on")).unwrap();
    // Keep draining stdout, as a terminal would.
    std::thread::spawn(move || lines.for_each(drop));
    let gateway = line.rsplit(' ').next().unwrap().to_owned();
    let base = gateway.trim_end_matches("/gateway.do");
    let key: Value = client()
        .get(format!("{base}/alipay-public-key"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        key["alipay_public_key"]
            .as_str()
            .unwrap()
            .starts_with("MIIB")
    );
    // An unregistered app is refused the Alipay way.
    let refused = client().post(&gateway).body("app_id=1&method=alipay.trade.query&charset=utf-8&sign_type=RSA2&sign=x&timestamp=2026-01-01%2000:00:00&version=1.0").send().await.unwrap();
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error_response"]["sub_code"], "isv.invalid-app-id");
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test]
async fn images_upload_as_unsigned_multipart_files() {
    let db = trellis_tests::sqlite();
    let engine = sandbox_engine(&db.url());
    let app = app(&engine).await;
    let image = png(500, 500);
    let uploaded = alipay()
        .upload_image(&app, "png", "logo", image.clone())
        .await
        .unwrap();
    assert!(uploaded["image_id"].as_str().unwrap().starts_with("sbx"));
    assert!(uploaded["image_url"].as_str().unwrap().contains("/images/"));
    match alipay().upload_image(&app, "tiff", "logo", image).await {
        Err(Error::Gateway(g)) => {
            assert_eq!(g.sub_code.as_deref(), Some("isv.invalid-parameter"));
        }
        other => panic!("{other:?}"),
    }
    // Bytes that are no image, named as one.
    match alipay()
        .upload_image(&app, "png", "logo", b"\x89PNG\r\n\x1a\n".to_vec())
        .await
    {
        Err(Error::Gateway(g)) => {
            assert_eq!(g.sub_code.as_deref(), Some("isv.invalid-file-extension"));
        }
        other => panic!("{other:?}"),
    }
    let stranger = MerchantApp {
        private_key: PrivateKey::generate().unwrap(),
        ..app
    };
    assert!(matches!(
        alipay()
            .upload_image(&stranger, "png", "logo", vec![1])
            .await,
        Err(Error::UnsignedError { .. })
    ));
}

#[tokio::test]
async fn web_authorisation_grants_a_code_to_the_signed_in_consumer_and_refuses_bad_requests() {
    let db = trellis_tests::sqlite();
    let engine = sandbox_engine(&db.url());
    let app = app(&engine).await;
    let http = client();
    let page = |query: &[(&str, &str)], consumer: Option<&str>| {
        let query = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(query)
            .finish();
        let mut request =
            http.get(engine.url(&format!("/sandbox/oauth2/publicAppAuthorize.htm?{query}")));
        if let Some(consumer) = consumer {
            request = request.header("cookie", format!("sandbox_consumer={consumer}"));
        }
        request.send()
    };
    let good = [
        ("app_id", APP_ID),
        ("scope", "auth_base"),
        ("redirect_uri", "https://pay.example/m/1/p/me?x=1"),
        ("state", "s1"),
    ];
    // Nobody signed in: the sandbox says how to sign a consumer in.
    let anonymous = page(&good, None).await.unwrap();
    assert_eq!(anonymous.status(), 422);
    let signed = http
        .get(engine.url("/sandbox/consumers/alice/sign-in"))
        .send()
        .await
        .unwrap();
    assert!(
        signed.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .starts_with("sandbox_consumer=alice;")
    );
    let granted = page(&good, Some("alice")).await.unwrap();
    assert_eq!(granted.status(), 302);
    let back = url::Url::parse(granted.headers()["location"].to_str().unwrap()).unwrap();
    assert_eq!(back.host_str(), Some("pay.example"));
    let pairs: std::collections::BTreeMap<String, String> =
        back.query_pairs().into_owned().collect();
    assert_eq!(pairs["x"], "1", "the page's own query is kept");
    assert_eq!(pairs["state"], "s1");
    assert_eq!(pairs["app_id"], APP_ID);
    // The code names alice to this app, once.
    let token = |code: String| {
        let app = &app;
        async move {
            let options = CallOptions {
                extra: [
                    ("grant_type".to_owned(), "authorization_code".to_owned()),
                    ("code".to_owned(), code),
                ]
                .into(),
                ..CallOptions::default()
            };
            alipay()
                .call(app, "alipay.system.oauth.token", None, &options)
                .await
        }
    };
    let answer = token(pairs["auth_code"].clone()).await.unwrap();
    assert!(answer["user_id"].as_str().unwrap().starts_with("2088"));
    assert!(token(pairs["auth_code"].clone()).await.is_err());
    // What Alipay refuses, the sandbox refuses.
    for (field, value) in [
        ("app_id", "2021000000000000"),
        ("scope", "auth_zhima"),
        ("redirect_uri", "javascript:alert(1)"),
        ("state", &"s".repeat(101)),
    ] {
        let query: Vec<(&str, &str)> = good
            .iter()
            .map(|(k, v)| if *k == field { (*k, value) } else { (*k, *v) })
            .collect();
        let refused = page(&query, Some("alice")).await.unwrap();
        assert_eq!(refused.status(), 422, "{field} = {value}");
    }
    drop(engine);
    db.cleanup().await;
}
