//! Payments in the console: a cashier takes a QR payment, a consumer pays it at the sandbox, the
//! owner finds it and refunds part of it; a cashier cannot refund.

use secrecy::SecretString;
use serde_json::json;
use trellis_engine::alipay::PrivateKey;
use trellis_tests::{Engine, client, databases, register_sandbox_app};

use super::*;

const APP_ID: &str = "2021000000000099";
const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../core/alipay/tests/vectors/");

/// The world's merchant with its Alipay app at the sandbox.
async fn with_app(engine: &Engine, world: &World) {
    let merchant = &world.merchant;
    let pem = std::fs::read_to_string(format!("{VECTORS}keys/app_private_pkcs8.pem")).unwrap();
    let key = PrivateKey::parse(&SecretString::from(pem.clone())).unwrap();
    let registered = register_sandbox_app(
        engine,
        json!({"app_id": APP_ID, "app_public_key": key.public_key().to_base64()}),
    )
    .await;
    world
        .root
        .put(
            &format!("/api/v1/merchants/{merchant}/alipay/credentials"),
            json!({"app_id": APP_ID, "key_mode": "public_key", "app_private_key": pem,
                "alipay_public_key": registered["alipay_public_key"], "gateway": "custom",
                "gateway_url": registered["gateway_url"]}),
        )
        .await
        .ok();
}

#[tokio::test]
async fn a_cashier_takes_a_qr_payment_and_the_owner_refunds_part_of_it() {
    for db in databases().await {
        let engine = Engine::start(
            &db.url(),
            &[
                ("TRELLIS_SANDBOX__ENABLED", "true"),
                ("TRELLIS_SANDBOX__TIME_SCALE", "100000"),
            ],
        );
        let world = World::build(&engine, &db.url()).await;
        with_app(&engine, &world).await;
        let merchant = &world.merchant;

        let mut cashier = signed_in(&engine, "cashier@jade.test").await;
        let home = cashier.get("/console").await;
        assert!(
            home.text.contains("href=\"/console/payments\""),
            "{}",
            home.text
        );
        let list = cashier.get("/console/payments").await;
        assert_eq!(list.status, 200, "{list:?}");
        let form = cashier.get("/console/payments/new").await;
        assert_eq!(form.status, 200, "{form:?}");
        let token = form.form_token();
        // Money is typed in yuan; anything else is refused beside the form, nothing made.
        let word = cashier
            .post(
                "/console/payments/new",
                &[
                    ("form_token", &token),
                    ("amount", "twelve"),
                    ("subject", "奶茶"),
                ],
            )
            .await;
        assert_eq!(word.status, 422, "{word:?}");
        assert!(
            word.text.contains("value=\"奶茶\""),
            "what was typed is kept"
        );
        let made = cashier
            .post(
                "/console/payments/new",
                &[
                    ("form_token", &token),
                    ("amount", "12.50"),
                    ("subject", "奶茶"),
                ],
            )
            .await;
        assert_eq!(made.status, 303, "{made:?}");
        let at = made.location.clone().unwrap();
        let id = at.rsplit('/').next().unwrap().to_owned();
        let page = cashier.get(&at).await;
        assert!(
            page.text.contains("<svg"),
            "the QR code to scan: {}",
            page.text
        );
        // The page follows the buyer with a script of the console's own, where there is one.
        assert!(
            page.text
                .contains(&format!("data-live-status=\"/api/v1/payments/{id}\""))
                && page.text.contains("/console.js\" defer></script>"),
            "{}",
            page.text
        );
        assert!(
            page.text.contains("¥12.50") && page.text.contains("待付款"),
            "{}",
            page.text
        );
        // A cashier may not refund: no form, and posting one anyway is refused.
        assert!(!page.text.contains("/refund\""), "{}", page.text);

        // The consumer pays at the sandbox; "ask Alipay" brings the answer in.
        let api = world.root.get(&format!("/api/v1/payments/{id}")).await.ok();
        let out_trade_no = api.body["out_trade_no"].as_str().unwrap().to_owned();
        let paid = client()
            .post(engine.url("/sandbox/consumers/alice/pay"))
            .json(&json!({"app_id": APP_ID, "out_trade_no": out_trade_no, "notify": false}))
            .send()
            .await
            .unwrap();
        assert_eq!(paid.status(), 200);
        let asked = cashier
            .post(&format!("{at}/query"), &[("form_token", &token)])
            .await;
        assert_eq!(asked.status, 303, "{asked:?}");
        let page = cashier.get(&at).await;
        assert!(page.text.contains("已付款"), "{}", page.text);
        assert!(!page.text.contains("<svg"), "no code once paid");
        assert!(!page.text.contains("data-live-status"));
        let refused = cashier
            .post(
                &format!("{at}/refund"),
                &[("form_token", &token), ("amount", "1")],
            )
            .await;
        // Refunds are decided at the merchant, which lies outside the cashier's store.
        assert!(
            refused.status == 403 || refused.status == 404,
            "{refused:?}"
        );

        // The owner finds it by store and status, and refunds part of it.
        let mut owner = signed_in(&engine, "owner@jade.test").await;
        let list = owner.get("/console/payments?status=succeeded").await;
        assert!(
            list.text.contains("Front") && list.text.contains("¥12.50"),
            "{}",
            list.text
        );
        assert!(
            list.text
                .contains(&format!("/api/v1/merchants/{merchant}/payments.csv"))
        );
        let none = owner.get("/console/payments?status=closed").await;
        assert!(!none.text.contains("¥12.50"), "{}", none.text);
        let page = owner.get(&at).await;
        assert!(page.text.contains("/refund\""), "{}", page.text);
        let token = page.form_token();
        let too_much = owner
            .post(
                &format!("{at}/refund"),
                &[("form_token", &token), ("amount", "20"), ("reason", "x")],
            )
            .await;
        assert!((400..500).contains(&too_much.status), "{too_much:?}");
        assert!(too_much.text.contains("role=\"alert\""));
        let refunded = owner
            .post(
                &format!("{at}/refund"),
                &[
                    ("form_token", &token),
                    ("amount", "2.5"),
                    ("reason", "少一杯"),
                ],
            )
            .await;
        assert_eq!(refunded.status, 303, "{refunded:?}");
        let page = owner.get(&at).await;
        assert!(
            page.text.contains("少一杯") && page.text.contains("¥2.50"),
            "{}",
            page.text
        );
        let api = world.root.get(&format!("/api/v1/payments/{id}")).await.ok();
        assert_eq!(api.body["refunded_fen"], 250);
        // Audited like the API's.
        let audit = owner.get("/console/audit").await;
        assert!(audit.text.contains("payment.refund"), "{}", audit.text);
        // Not a payment of theirs, or none at all: not found.
        assert_eq!(owner.get("/console/payments/nothing").await.status, 404);
        // The partner's console has no payments page of its own.
        let mut partner = signed_in(&engine, "admin@jade.test").await;
        assert_eq!(partner.get("/console/payments").await.status, 404);
        drop(engine);
        db.cleanup().await;
    }
}
