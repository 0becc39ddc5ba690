//! Certificate mode: the engine follows a rotated Alipay certificate only through the stored root.

use super::*;

#[tokio::test]
async fn certificate_mode_follows_a_rotated_alipay_certificate_only_through_the_stored_root() {
    use trellis_engine::alipay::credentials;
    use trellis_engine::secrets::Vault;
    use trellis_tests::{Api, create_platform_admin};
    for db in databases().await {
        let engine = sandbox_engine(&db.url());
        let key = app_key();
        let registered: Value = client()
            .post(engine.url("/sandbox/apps"))
            .json(&json!({"app_id": APP_ID, "app_public_key": key.public_key().to_base64(), "cert_mode": true}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
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
        let view = root
            .send(
                reqwest::Method::PUT,
                &format!("/api/v1/merchants/{merchant}/alipay/credentials"),
                Some(json!({"app_id": APP_ID, "key_mode": "certificate",
                    "app_private_key": std::fs::read_to_string(format!("{VECTORS}keys/app_private_pkcs8.pem")).unwrap(),
                    "app_cert": registered["app_cert"], "alipay_cert": registered["alipay_cert"], "alipay_root_cert": registered["alipay_root_cert"],
                    "gateway": "custom", "gateway_url": registered["gateway_url"]})),
            )
            .await
            .ok()
            .body;
        assert_eq!(view["complete"], true, "{view}");

        // The engine's own stored credentials, opened from the vault as any call would.
        let conn = sea_orm::Database::connect(db.url().as_str()).await.unwrap();
        let config = trellis_engine::config::SecretsConfig {
            master_key: Some(SecretString::from(trellis_tests::TEST_MASTER_KEY)),
            previous_master_keys: Vec::new(),
        };
        let vault = Vault::from_config(&config).unwrap();
        let app = credentials::load_app(&conn, &vault, &merchant)
            .await
            .unwrap();
        assert!(app.cert_sns.is_some());
        let query = json!({"out_trade_no": "none"});
        let not_found = |r: Result<Value, Error>| {
            let ok = matches!(&r, Err(Error::Gateway(g)) if g.sub_code.as_deref() == Some("ACQ.TRADE_NOT_EXIST"));
            if !ok {
                eprintln!("unexpected: {r:?}");
            }
            ok
        };
        let client = alipay();
        assert!(not_found(
            client
                .call(
                    &app,
                    "alipay.trade.query",
                    Some(&query),
                    &CallOptions::default()
                )
                .await
        ));

        // Alipay rotates its certificate: the next answer names a new SN; the engine downloads
        // it, checks it chains to the stored root, and verifies with it.
        let rotated: Value = trellis_tests::client()
            .post(engine.url("/sandbox/rotate-alipay-cert"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_ne!(
            rotated["alipay_cert_sn"].as_str(),
            app.alipay_cert_sn.as_deref()
        );
        assert!(not_found(
            client
                .call(
                    &app,
                    "alipay.trade.query",
                    Some(&query),
                    &CallOptions::default()
                )
                .await
        ));

        // With a different root on file, the downloaded certificate is not trusted.
        let other_root =
            std::fs::read_to_string(format!("{VECTORS}certs/root_bundle.pem")).unwrap();
        let suspicious = trellis_engine::alipay::client::MerchantApp {
            alipay_root_cert: Some(other_root),
            ..credentials::load_app(&conn, &vault, &merchant)
                .await
                .unwrap()
        };
        let result = alipay()
            .call(
                &suspicious,
                "alipay.trade.query",
                Some(&query),
                &CallOptions::default(),
            )
            .await;
        assert!(
            matches!(result, Err(Error::UntrustedCertificate(_))),
            "{result:?}"
        );
        conn.close().await.unwrap();
        drop(engine);
        db.cleanup().await;
    }
}
