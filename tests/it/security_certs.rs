//! Alipay certificate trust between merchants, over HTTP against the real binary: a merchant's
//! own root (however it is named) never vouches for a certificate used for another merchant, and
//! the production gateway accepts only Alipay's published roots.
//!
//! The attack: merchant A stores a root it made with the sandbox root's name, points its app at
//! a gateway it runs, and makes the engine download, under the SN of Alipay's (the sandbox's)
//! rotated certificate, a forgery with that certificate's issuer and serial. Before the fix the
//! engine cached the forgery by SN for the whole process, and merchant B's next genuine answer
//! under that SN failed verification (an answer signed with A's key would have passed).
//! Certificates are forged with the `openssl` command, since only it can give a certificate a
//! chosen serial here.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use serde_json::{Value, json};
use trellis_engine::alipay::{PrivateKey, SignType, cert, response};
use trellis_tests::{
    Api, Engine, client, create_node as node, create_partner, create_platform_admin,
    create_user as user, eventually, png, register_sandbox_app,
};

const PASSWORD: &str = "correct horse battery staple";
const ROOT: &str = "root@platform.test";
const MEMBERSHIP: &str = "com.trellis.membership";
const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../core/alipay/tests/vectors/");
/// What the engine logs when it trusts a downloaded certificate.
const LEARNT: &str = "learnt a rotated Alipay certificate";
/// The subject of the sandbox's root (`alipay::sandbox::certs`), which the forged root copies.
const SANDBOX_ROOT_SUBJECT: &str =
    "/C=CN/O=Trellis Sandbox/OU=Certification Authority/CN=Trellis Sandbox Root R1";

const ENV: [(&str, &str); 4] = [
    ("TRELLIS_SANDBOX__ENABLED", "true"),
    ("TRELLIS_SANDBOX__TIME_SCALE", "100000"),
    // Both the sandbox and the attacker's gateway listen on loopback.
    ("TRELLIS_ALIPAY__ALLOW_CUSTOM_GATEWAY", "true"),
    ("TRELLIS_ALIPAY__CUSTOM_GATEWAY_NETWORKS", "[\"127.0.0.1\"]"),
];

fn app_private_key_pem() -> String {
    std::fs::read_to_string(format!("{VECTORS}keys/app_private_pkcs8.pem")).unwrap()
}

fn app_public_key() -> String {
    PrivateKey::parse(&SecretString::from(app_private_key_pem()))
        .unwrap()
        .public_key()
        .to_base64()
}

fn openssl(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("this test forges certificates with `openssl`: {e}"));
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file)).unwrap()
}

/// A root with the name and serial (so the root SN) of `genuine_root`, and two certificates
/// under it: the one merchant A stores, and the forgery with the issuer and serial (so the SN)
/// of `genuine_rotated`.
struct Forgery {
    root: String,
    stored: String,
    rotated: String,
    rotated_key: Arc<PrivateKey>,
    /// base64 of `rotated`, as `alipaycert.download` carries it.
    rotated_base64: String,
}

fn forge(genuine_root: &str, genuine_rotated: &str) -> Forgery {
    let work = trellis_tests::tempdir();
    let dir = work.path();
    let serial_of = |pem: &str| {
        std::fs::write(dir.join("genuine.pem"), pem).unwrap();
        let serial = openssl(dir, &["x509", "-in", "genuine.pem", "-noout", "-serial"]);
        format!("0x{}", serial.trim().trim_start_matches("serial="))
    };
    let root_serial = serial_of(genuine_root);
    let serial = serial_of(genuine_rotated);
    for key in ["root.key", "signer.key"] {
        openssl(
            dir,
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
                key,
            ],
        );
    }
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            "root.key",
            "-subj",
            SANDBOX_ROOT_SUBJECT,
            "-set_serial",
            &root_serial,
            "-days",
            "3650",
            "-sha256",
            "-out",
            "root.pem",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-key",
            "signer.key",
            "-subj",
            "/CN=Alipay sandbox RSA2",
            "-out",
            "signer.csr",
        ],
    );
    for (out, serial) in [("stored.pem", "0x01"), ("rotated.pem", serial.as_str())] {
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                "signer.csr",
                "-CA",
                "root.pem",
                "-CAkey",
                "root.key",
                "-set_serial",
                serial,
                "-days",
                "365",
                "-sha256",
                "-out",
                out,
            ],
        );
    }
    let rotated_base64 = openssl(dir, &["base64", "-A", "-in", "rotated.pem"]);
    Forgery {
        root: read(dir, "root.pem"),
        stored: read(dir, "stored.pem"),
        rotated: read(dir, "rotated.pem"),
        rotated_key: Arc::new(
            PrivateKey::parse(&SecretString::from(read(dir, "signer.key"))).unwrap(),
        ),
        rotated_base64: rotated_base64.trim().to_owned(),
    }
}

/// The attacker's gateway: every answer signed with the forged key under the stolen SN, and the
/// forgery handed out by `alipaycert.download`.
async fn evil_gateway(sn: String, forgery: &Forgery) -> String {
    #[derive(Clone)]
    struct Evil {
        sn: String,
        key: Arc<PrivateKey>,
        content: String,
    }
    async fn answer(
        axum::extract::State(evil): axum::extract::State<Evil>,
        uri: axum::http::Uri,
    ) -> String {
        // Common parameters travel in the query, as the SDKs send them.
        let method = url::form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
            .find(|(k, _)| k == "method")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        let node = if method == "alipay.open.app.alipaycert.download" {
            json!({"code": "10000", "msg": "Success", "alipay_cert_content": evil.content})
        } else {
            json!({"code": "10000", "msg": "Success", "template_id": "20269999000000000001"})
        }
        .to_string();
        let sign = evil.key.sign(SignType::Rsa2, &node).unwrap();
        format!(
            "{{\"{}\":{node},\"alipay_cert_sn\":\"{}\",\"sign\":\"{sign}\"}}",
            response::response_key(&method),
            evil.sn
        )
    }
    let state = Evil {
        sn,
        key: Arc::clone(&forgery.rotated_key),
        content: forgery.rotated_base64.clone(),
    };
    let app = axum::Router::new()
        .route("/gateway.do", axum::routing::post(answer))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/gateway.do", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

fn mp(merchant: &str, path: &str) -> String {
    format!("/api/v1/merchants/{merchant}/plugins/{MEMBERSHIP}{path}")
}

fn design() -> Value {
    json!({
        "show_name": "会员卡", "brand_name": "商户", "logo_id": "logo1", "background_id": "bg1",
        "bg_color": "#3770B3", "columns": ["points", "level"],
        "form": {"required": ["mobile"], "optional": []},
        "write_off_type": "qrcode",
    })
}

/// Two merchants of one agent, each with an owner, both offered the membership plugin (whose
/// card sync makes the engine call Alipay for them).
async fn merchants(engine: &Engine, database_url: &str) -> [(String, Api); 2] {
    create_platform_admin(database_url, ROOT, PASSWORD);
    let root = Api::new(engine, "127.0.0.1").login(ROOT, PASSWORD).await;
    let partner = create_partner(&root, "P1", "p1.test").await;
    let agent = node(&root, "agents", Some(&partner), json!({"name": "A1"})).await;
    let a = node(&root, "merchants", Some(&agent), json!({"name": "A"})).await;
    let b = node(&root, "merchants", Some(&agent), json!({"name": "B"})).await;
    let partner_admin = user(engine, &root, &partner, "partner@p1.test", "p1.test").await;
    let agent_admin = user(engine, &root, &agent, "agent@p1.test", "p1.test").await;
    trellis_tests::install_and_assign(
        &partner_admin,
        &agent_admin,
        &partner,
        (
            "plugins/membership",
            "trellis_plugin_membership",
            MEMBERSHIP,
        ),
        json!({"name": "会员", "validity_days": 365, "quotas": {"max_members": 2}}),
        &[&a, &b],
    )
    .await;
    let owner_a = user(engine, &root, &a, "owner@a.test", "p1.test").await;
    let owner_b = user(engine, &root, &b, "owner@b.test", "p1.test").await;
    for (merchant, owner) in [(&a, &owner_a), (&b, &owner_b)] {
        owner
            .put(
                &mp(merchant, "/levels"),
                json!({"levels": [{"name": "普通会员", "kind": "normal", "threshold": 0}]}),
            )
            .await
            .ok();
        owner.put(&mp(merchant, "/card"), design()).await.ok();
    }
    [(a, owner_a), (b, owner_b)]
}

/// Waits until the engine has logged learning a certificate `times` times in all.
async fn learnt(engine: &Engine, times: usize) {
    eventually(Duration::from_secs(10), "certificates learnt", || {
        let seen = engine.log().matches(LEARNT).count();
        async move {
            if seen == times {
                Ok(())
            } else {
                Err(format!("learnt {seen} times, expected {times}"))
            }
        }
    })
    .await;
}

async fn sandbox(engine: &Engine, path: &str) -> Value {
    let request = if path.starts_with("/rotate") {
        client().post(engine.url(&format!("/sandbox{path}")))
    } else {
        client().get(engine.url(&format!("/sandbox{path}")))
    };
    request.send().await.unwrap().json().await.unwrap()
}

#[tokio::test]
async fn a_forged_root_cannot_poison_another_merchants_trust() {
    let db = trellis_tests::sqlite();
    let engine = Engine::spawn(&db.url(), &ENV);
    let [(a, owner_a), (b, owner_b)] = merchants(&engine, &db.url()).await;

    // B: certificate mode against the sandbox, with the sandbox's genuine root.
    let registered = register_sandbox_app(
        &engine,
        json!({"app_id": "2021004199990002", "app_public_key": app_public_key(), "cert_mode": true}),
    )
    .await;
    owner_b
        .put(
            &format!("/api/v1/merchants/{b}/alipay/credentials"),
            json!({"app_id": "2021004199990002", "key_mode": "certificate",
                "app_private_key": app_private_key_pem(), "app_cert": registered["app_cert"],
                "alipay_cert": registered["alipay_cert"], "alipay_root_cert": registered["alipay_root_cert"],
                "gateway": "custom", "gateway_url": registered["gateway_url"]}),
        )
        .await
        .ok();
    // B's card images, uploaded to the sandbox before the rotation, for a design it accepts.
    let mut b_design = design();
    for (field, usage, image) in [
        ("logo_id", "logo", png(500, 500)),
        ("background_id", "background", png(1020, 643)),
    ] {
        let uploaded = owner_b
            .upload_as(
                &mp(&b, &format!("/card/images?use={usage}")),
                image,
                "image/png",
            )
            .await
            .ok();
        b_design[field] = uploaded.body["image_id"].clone();
    }
    owner_b.put(&mp(&b, "/card"), b_design).await.ok();

    // The sandbox rotates its certificate; its SN, issuer and serial are public.
    let rotated_sn = sandbox(&engine, "/rotate-alipay-cert").await["alipay_cert_sn"]
        .as_str()
        .unwrap()
        .to_owned();
    let current = sandbox(&engine, "/certificates").await;
    assert_eq!(current["alipay_cert_sn"], rotated_sn.as_str());
    let forgery = forge(
        current["alipay_root_cert"].as_str().unwrap(),
        current["alipay_cert"].as_str().unwrap(),
    );
    assert_eq!(cert::cert_sn(&forgery.rotated).unwrap(), rotated_sn);
    assert_eq!(
        cert::root_cert_sn(&forgery.root).unwrap(),
        cert::root_cert_sn(registered["alipay_root_cert"].as_str().unwrap()).unwrap(),
        "the forged root passes for the sandbox's by name"
    );

    // A: its own root, its own gateway. Its card sync makes the engine learn the forgery.
    let a_app = register_sandbox_app(
        &engine,
        json!({"app_id": "2021004199990001", "app_public_key": app_public_key(), "cert_mode": true}),
    )
    .await;
    let evil = evil_gateway(rotated_sn.clone(), &forgery).await;
    owner_a
        .put(
            &format!("/api/v1/merchants/{a}/alipay/credentials"),
            json!({"app_id": "2021004199990001", "key_mode": "certificate",
                "app_private_key": app_private_key_pem(), "app_cert": a_app["app_cert"],
                "alipay_cert": forgery.stored, "alipay_root_cert": forgery.root,
                "gateway": "custom", "gateway_url": evil}),
        )
        .await
        .ok();
    let synced = owner_a.post(&mp(&a, "/card/sync"), json!({})).await;
    assert_eq!(synced.status, 200, "{synced:?}");
    assert_eq!(synced.body["sync"]["state"], "synced", "{synced:?}");
    // The engine downloaded the forgery for A.
    learnt(&engine, 1).await;

    // B's first answer under the rotated SN is genuine and must verify.
    let synced = owner_b.post(&mp(&b, "/card/sync"), json!({})).await;
    assert_eq!(synced.status, 200, "{synced:?}");
    assert_eq!(synced.body["sync"]["state"], "synced", "{synced:?}");
    // B learnt the genuine certificate under its own root.
    learnt(&engine, 2).await;
    drop(engine);
    db.cleanup().await;
}

#[tokio::test]
async fn a_self_made_root_is_refused_for_the_production_gateway_but_not_for_the_sandbox() {
    let db = trellis_tests::sqlite();
    let engine = Engine::start(&db.url(), &ENV);
    create_platform_admin(&db.url(), ROOT, PASSWORD);
    let root = Api::new(&engine, "127.0.0.1").login(ROOT, PASSWORD).await;
    let partner = create_partner(&root, "P1", "p1.test").await;
    let agent = node(&root, "agents", Some(&partner), json!({"name": "A1"})).await;
    let merchant = node(&root, "merchants", Some(&agent), json!({"name": "M"})).await;
    let registered = register_sandbox_app(
        &engine,
        json!({"app_id": "2021004199990003", "app_public_key": app_public_key(), "cert_mode": true}),
    )
    .await;
    let own_root = registered["alipay_root_cert"].as_str().unwrap();
    let fingerprint = cert::rsa_root_fingerprints(own_root).unwrap().remove(0);
    let path = format!("/api/v1/merchants/{merchant}/alipay/credentials");
    let body = |gateway: &str| {
        json!({"app_id": "2021004199990003", "key_mode": "certificate",
            "app_private_key": app_private_key_pem(), "app_cert": registered["app_cert"],
            "alipay_cert": registered["alipay_cert"], "alipay_root_cert": own_root,
            "gateway": gateway})
    };
    let refused = root.put(&path, body("production")).await;
    assert_eq!(refused.status, 422, "{refused:?}");
    assert_eq!(refused.body["field"], "alipay_root_cert", "{refused:?}");
    let message = refused.body["message"].as_str().unwrap();
    assert!(message.contains(&fingerprint), "{message}");
    assert!(
        message.contains("alipay.production_root_fingerprints"),
        "{message}"
    );
    let view = root.put(&path, body("sandbox")).await.ok().body;
    assert_eq!(
        view["alipay_root_cert_sn"],
        cert::root_cert_sn(own_root).unwrap()
    );
    drop(engine);
    db.cleanup().await;
}
