//! Merchant Alipay credentials through the HTTP API of the real binary: validated, sealed at
//! rest, never returned, scoped by the tenant tree; rotation through `trellis secrets rotate`.

use serde_json::{Value, json};
use trellis_tests::{Api, Engine, create_platform_admin, databases, trellis_command};

const PASSWORD: &str = "correct horse battery staple";
const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../core/alipay/tests/vectors/");

fn vector_file(name: &str) -> String {
    std::fs::read_to_string(format!("{VECTORS}{name}")).unwrap()
}

/// A slice of the private key's base64 from its private half (the modulus at its start is
/// public, and rightly appears in the app public key).
fn secret_part(body: &str) -> &str {
    &body[body.len() - 300..body.len() - 250]
}

/// Root on the console, one partner → agent → merchant (+ store with a cashier), one foreign merchant.
async fn setup(engine: &Engine, url: &str) -> (Api, String, String, Api, Api) {
    create_platform_admin(url, "root@platform.test", PASSWORD);
    let root = Api::new(engine, "127.0.0.1")
        .login("root@platform.test", PASSWORD)
        .await;
    let mut merchants = Vec::new();
    for (domain, tag) in [("p1.test", "one"), ("p2.test", "two")] {
        let partner = root
            .post(
                "/api/v1/partners",
                json!({"name": tag, "domains": [domain]}),
            )
            .await
            .ok()
            .id();
        let agent = root
            .post("/api/v1/agents", json!({"parent_id": partner, "name": tag}))
            .await
            .ok()
            .id();
        merchants.push(
            root.post(
                "/api/v1/merchants",
                json!({"parent_id": agent, "name": tag}),
            )
            .await
            .ok()
            .id(),
        );
    }
    let store = root
        .post(
            "/api/v1/stores",
            json!({"parent_id": merchants[0], "name": "till"}),
        )
        .await
        .ok()
        .id();
    root.post(
        "/api/v1/users",
        json!({"node_id": merchants[0], "email": "owner@one.test", "password": PASSWORD}),
    )
    .await
    .ok();
    root.post(
        "/api/v1/users",
        json!({"node_id": store, "email": "cashier@one.test", "password": PASSWORD}),
    )
    .await
    .ok();
    let owner = Api::new(engine, "p1.test")
        .login("owner@one.test", PASSWORD)
        .await;
    let cashier = Api::new(engine, "p1.test")
        .login("cashier@one.test", PASSWORD)
        .await;
    (
        root,
        merchants[0].clone(),
        merchants[1].clone(),
        owner,
        cashier,
    )
}

fn public_key_mode() -> Value {
    json!({
        "app_id": "2021004100000001",
        "key_mode": "public_key",
        "app_private_key": vector_file("keys/app_private_pkcs1.pem"),
        "alipay_public_key": vector_file("keys/alipay_public.pem"),
        "aes_key": "aoMq5bkLjvVvtI5CPhxUIg==",
        "gateway": "custom",
        "gateway_url": "http://127.0.0.1:9/gateway.do",
    })
}

#[tokio::test]
async fn credentials_are_validated_sealed_and_never_returned() {
    for db in databases().await {
        let engine = Engine::start(&db.url(), &[]);
        let (_root, merchant, foreign, owner, cashier) = setup(&engine, &db.url()).await;
        let path = format!("/api/v1/merchants/{merchant}/alipay/credentials");
        assert_eq!(owner.get(&path).await.body["code"], "not_configured");

        let saved = owner
            .send(reqwest::Method::PUT, &path, Some(public_key_mode()))
            .await
            .ok();
        let view = &saved.body;
        assert_eq!(view["complete"], true, "{view}");
        assert_eq!(view["has_aes_key"], true);
        let app_public = vector_file("keys/app_public.pem");
        let bare: String = app_public
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        assert_eq!(
            view["app_public_key"],
            bare.as_str(),
            "derived from the private key"
        );
        let private_body: String = vector_file("keys/app_private_pkcs1.pem")
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        for text in [
            saved.body.to_string(),
            owner.get(&path).await.ok().body.to_string(),
        ] {
            assert!(
                !text.contains(secret_part(&private_body)),
                "no private key in any answer"
            );
            assert!(
                !text.contains("aoMq5bkLjvVvtI5CPhxUIg=="),
                "no AES key in any answer"
            );
        }

        // Sealed at rest: the database holds neither the key nor the AES key in clear.
        use sea_orm::{ConnectionTrait, Statement};
        let conn = sea_orm::Database::connect(db.url().as_str()).await.unwrap();
        let row = conn
            .query_one_raw(Statement::from_string(
                conn.get_database_backend(),
                "SELECT app_private_key, aes_key FROM alipay_credentials",
            ))
            .await
            .unwrap()
            .unwrap();
        let sealed_key: String = row.try_get("", "app_private_key").unwrap();
        let sealed_aes: String = row.try_get("", "aes_key").unwrap();
        assert!(
            !sealed_key.contains(secret_part(&private_body))
                && !sealed_aes.contains("aoMq5bkLjvVvtI5CPhxUIg==")
        );
        conn.close().await.unwrap();

        // Validation names the field and never echoes key material.
        let mut bad = public_key_mode();
        bad["app_private_key"] = json!(&private_body[..500]);
        let reply = owner.send(reqwest::Method::PUT, &path, Some(bad)).await;
        assert_eq!(reply.status, 422);
        assert_eq!(reply.body["field"], "app_private_key");
        assert!(!reply.body.to_string().contains(secret_part(&private_body)));
        let mut bad = public_key_mode();
        bad["app_id"] = json!("not-an-app");
        assert_eq!(
            owner
                .send(reqwest::Method::PUT, &path, Some(bad))
                .await
                .body["field"],
            "app_id"
        );
        let mut bad = public_key_mode();
        bad["aes_key"] = json!("c2hvcnQ=");
        assert_eq!(
            owner
                .send(reqwest::Method::PUT, &path, Some(bad))
                .await
                .body["field"],
            "aes_key"
        );

        // The tree bounds it: a cashier may not, another partner's merchant does not exist.
        assert_eq!(
            cashier.get(&path).await.status,
            404,
            "the merchant is above the cashier's store"
        );
        let foreign_path = format!("/api/v1/merchants/{foreign}/alipay/credentials");
        assert_eq!(
            owner
                .send(reqwest::Method::PUT, &foreign_path, Some(public_key_mode()))
                .await
                .status,
            404
        );
        drop(engine);
        db.cleanup().await;
    }
}

#[tokio::test]
async fn certificate_mode_checks_the_chain_and_that_the_app_certificate_matches_the_key() {
    let db = trellis_tests::sqlite();
    let engine = Engine::start(&db.url(), &[]);
    let (_root, merchant, _, owner, _) = setup(&engine, &db.url()).await;
    let path = format!("/api/v1/merchants/{merchant}/alipay/credentials");
    let certs: Value = serde_json::from_str(&vector_file("certs.json")).unwrap();
    let body = json!({
        "app_id": "2021004100000001",
        "key_mode": "certificate",
        "app_private_key": vector_file("keys/app_private_pkcs8.pem"),
        "app_cert": vector_file("certs/app_cert.pem"),
        "alipay_cert": vector_file("certs/alipay_cert.pem"),
        "alipay_root_cert": vector_file("certs/root_bundle.pem"),
        "gateway": "sandbox",
    });
    let view = owner
        .send(reqwest::Method::PUT, &path, Some(body.clone()))
        .await
        .ok()
        .body;
    assert_eq!(view["app_cert_sn"], certs["app_cert_sn"]);
    assert_eq!(view["alipay_cert_sn"], certs["alipay_cert_sn"]);
    assert_eq!(view["alipay_root_cert_sn"], certs["root_cert_sn"]);
    assert_eq!(
        view["gateway_url"],
        "https://openapi-sandbox.dl.alipaydev.com/gateway.do"
    );

    let mut forged = body.clone();
    forged["alipay_cert"] = json!(vector_file("certs/forged_alipay_cert.pem"));
    let reply = owner.send(reqwest::Method::PUT, &path, Some(forged)).await;
    assert_eq!(
        (reply.status, reply.body["field"].as_str()),
        (422, Some("alipay_cert")),
        "{:?}",
        reply.body
    );
    let mut mismatched = body;
    mismatched["app_cert"] = json!(vector_file("certs/alipay_cert.pem"));
    let reply = owner
        .send(reqwest::Method::PUT, &path, Some(mismatched))
        .await;
    assert_eq!(
        (reply.status, reply.body["field"].as_str()),
        (422, Some("app_cert"))
    );
}

#[tokio::test]
async fn a_server_side_key_pair_replaces_the_desktop_key_tool() {
    let db = trellis_tests::sqlite();
    let engine = Engine::start(&db.url(), &[]);
    let (_root, merchant, _, owner, _) = setup(&engine, &db.url()).await;
    let generated = owner
        .post(
            &format!("/api/v1/merchants/{merchant}/alipay/keypair"),
            json!({}),
        )
        .await
        .ok()
        .body;
    let public = generated["app_public_key"].as_str().unwrap().to_owned();
    assert!(public.starts_with("MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"));
    assert_eq!(generated["complete"], false, "no app id or Alipay key yet");
    // Completing the credentials keeps the generated private key when none is sent.
    let mut body = public_key_mode();
    body.as_object_mut().unwrap().remove("app_private_key");
    let view = owner
        .send(
            reqwest::Method::PUT,
            &format!("/api/v1/merchants/{merchant}/alipay/credentials"),
            Some(body),
        )
        .await
        .ok()
        .body;
    assert_eq!(view["app_public_key"], public.as_str());
    assert_eq!(view["complete"], true);
}

#[tokio::test]
async fn without_a_master_key_secrets_are_refused_with_503_and_rotation_reseals_them() {
    let db = trellis_tests::sqlite();
    {
        let keyless = Engine::start(&db.url(), &[("TRELLIS_SECRETS__MASTER_KEY", "")]);
        let (_root, merchant, _, owner, _) = setup(&keyless, &db.url()).await;
        let reply = owner
            .send(
                reqwest::Method::PUT,
                &format!("/api/v1/merchants/{merchant}/alipay/credentials"),
                Some(public_key_mode()),
            )
            .await;
        assert_eq!(reply.status, 503);
        assert_eq!(reply.body["code"], "secrets_unavailable");
        // Seal with the test key now.
        drop(keyless);
        let engine = Engine::start(&db.url(), &[]);
        let owner = Api::new(&engine, "p1.test")
            .login("owner@one.test", PASSWORD)
            .await;
        let path = format!("/api/v1/merchants/{merchant}/alipay/credentials");
        owner
            .send(reqwest::Method::PUT, &path, Some(public_key_mode()))
            .await
            .ok();
        drop(engine);

        // Rotate to a new key, keeping the old one as previous.
        let new_key = "bmV3LXRlc3Qtb25seS1tYXN0ZXIta2V5LTMyIGJ5dGU=";
        let dir = trellis_tests::tempdir();
        let out = trellis_command(dir.path(), &db.url())
            .env("TRELLIS_SECRETS__MASTER_KEY", new_key)
            .env(
                "TRELLIS_SECRETS__PREVIOUS_MASTER_KEYS",
                format!("[\"{}\"]", trellis_tests::TEST_MASTER_KEY),
            )
            .args(["secrets", "rotate"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("re-sealed 2 secret(s)"),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );

        // Only the new key is needed from now on: updating without resending the private key
        // opens the stored one.
        let rotated = Engine::start(&db.url(), &[("TRELLIS_SECRETS__MASTER_KEY", new_key)]);
        let owner = Api::new(&rotated, "p1.test")
            .login("owner@one.test", PASSWORD)
            .await;
        let mut body = public_key_mode();
        body.as_object_mut().unwrap().remove("app_private_key");
        owner
            .send(reqwest::Method::PUT, &path, Some(body))
            .await
            .ok();
    }
}
