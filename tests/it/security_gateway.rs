//! A merchant's `custom` Alipay gateway, against the real binary: refused unless the platform
//! allows custom gateways; never reached at a loopback address the platform did not name, even
//! through a host name; an oversized answer fails the call cleanly; and nothing the gateway sent
//! reaches the API caller.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use trellis_tests::{
    Api, Engine, client, create_node, create_partner, create_platform_admin, create_user,
};

const PASSWORD: &str = "correct horse battery staple";
const ROOT: &str = "root@platform.test";
const MEMBERSHIP: &str = "com.trellis.membership";
const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../core/alipay/tests/vectors/");
/// Text only the stand-in gateway sends: it must never appear in an API answer.
const MARKER: &str = "internal-only-3f9c";

fn vector_file(name: &str) -> String {
    std::fs::read_to_string(format!("{VECTORS}{name}")).unwrap()
}

fn credentials(gateway_url: &str) -> Value {
    json!({
        "app_id": "2021004100000001",
        "key_mode": "public_key",
        "app_private_key": vector_file("keys/app_private_pkcs1.pem"),
        "alipay_public_key": vector_file("keys/alipay_public.pem"),
        "gateway": "custom",
        "gateway_url": gateway_url,
    })
}

/// A merchant whose owner signs in on the partner's domain, with the membership plugin
/// packaged for it: its card image upload is an Alipay call the engine makes.
struct Merchant {
    owner: Api,
    id: String,
}

impl Merchant {
    async fn new(engine: &Engine, database_url: &str) -> Self {
        create_platform_admin(database_url, ROOT, PASSWORD);
        let root = Api::new(engine, "127.0.0.1").login(ROOT, PASSWORD).await;
        let partner = create_partner(&root, "P1", "p1.test").await;
        let agent = create_node(&root, "agents", Some(&partner), json!({"name": "A1"})).await;
        let id = create_node(&root, "merchants", Some(&agent), json!({"name": "M1"})).await;
        let agent_admin = create_user(engine, &root, &agent, "agent@p1.test", "p1.test").await;
        let partner_admin =
            create_user(engine, &root, &partner, "partner@p1.test", "p1.test").await;
        trellis_tests::install_and_assign(
            &partner_admin,
            &agent_admin,
            &partner,
            (
                "plugins/membership",
                "trellis_plugin_membership",
                MEMBERSHIP,
            ),
            json!({"name": "会员套餐", "validity_days": 365}),
            &[&id],
        )
        .await;
        let owner = create_user(engine, &root, &id, "owner@p1.test", "p1.test").await;
        Self { owner, id }
    }

    async fn set_gateway(&self, gateway_url: &str) -> trellis_tests::Reply {
        self.owner
            .put(
                &format!("/api/v1/merchants/{}/alipay/credentials", self.id),
                credentials(gateway_url),
            )
            .await
    }

    /// Uploads a card image: the plugin calls `alipay.offline.material.image.upload`.
    async fn upload_image(&self) -> trellis_tests::Reply {
        self.owner
            .upload_as(
                &format!(
                    "/api/v1/merchants/{}/plugins/{MEMBERSHIP}/card/images?use=logo&name=logo.png",
                    self.id
                ),
                trellis_tests::png(500, 500),
                "image/png",
            )
            .await
    }
}

/// Whether anything connected to `listener` (it is non-blocking, so a pending connection is
/// there to accept or nothing is).
fn was_connected(listener: &std::net::TcpListener) -> bool {
    match listener.accept() {
        Ok(_) => true,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
        Err(e) => panic!("accept: {e}"),
    }
}

fn loopback_listener() -> std::net::TcpListener {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    listener
}

#[tokio::test]
async fn a_custom_gateway_is_refused_when_the_platform_does_not_allow_custom_gateways() {
    let db = trellis_tests::sqlite();
    let engine = Engine::start(
        &db.url(),
        &[("TRELLIS_ALIPAY__ALLOW_CUSTOM_GATEWAY", "false")],
    );
    let merchant = Merchant::new(&engine, &db.url()).await;
    let listener = loopback_listener();
    let port = listener.local_addr().unwrap().port();

    for url in [
        format!("http://127.0.0.1:{port}/"),
        "https://gateway.example.com/gateway.do".to_owned(),
    ] {
        let refused = merchant.set_gateway(&url).await;
        assert_eq!(refused.status, 422, "{url}: {refused:?}");
        assert_eq!(refused.body["field"], "gateway", "{url}: {refused:?}");
    }
    assert_eq!(
        merchant.upload_image().await.status,
        404,
        "no credentials were stored"
    );
    assert!(!was_connected(&listener));

    // Alipay's own gateways stay available.
    let mut production = credentials("");
    production["gateway"] = json!("production");
    let saved = merchant
        .owner
        .put(
            &format!("/api/v1/merchants/{}/alipay/credentials", merchant.id),
            production,
        )
        .await;
    assert_eq!(saved.status, 200, "{saved:?}");
    drop(engine);
    db.cleanup().await;
}

#[tokio::test]
async fn a_gateway_on_loopback_is_never_reached_when_the_platform_names_no_such_network() {
    let db = trellis_tests::sqlite();
    // Custom gateways on, but no network named: an empty value removes the harness's loopback.
    let engine = Engine::spawn(
        &db.url(),
        &[
            ("TRELLIS_ALIPAY__ALLOW_CUSTOM_GATEWAY", "true"),
            ("TRELLIS_ALIPAY__CUSTOM_GATEWAY_NETWORKS", ""),
        ],
    );
    let merchant = Merchant::new(&engine, &db.url()).await;
    let listener = loopback_listener();
    let port = listener.local_addr().unwrap().port();
    // `localhost` may resolve to ::1 as well; listen there too when this machine has IPv6.
    let listener_v6 = std::net::TcpListener::bind(("::1", port)).ok();
    if let Some(l) = &listener_v6 {
        l.set_nonblocking(true).unwrap();
    }

    // An address literal is refused when saved.
    for url in [
        format!("http://127.0.0.1:{port}/gateway.do"),
        format!("http://[::1]:{port}/gateway.do"),
        format!("http://[::ffff:127.0.0.1]:{port}/gateway.do"),
        format!("http://2130706433:{port}/gateway.do"),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://10.0.0.1/gateway.do".to_owned(),
    ] {
        let refused = merchant.set_gateway(&url).await;
        assert_eq!(refused.status, 422, "{url}: {refused:?}");
        assert_eq!(refused.body["field"], "gateway_url", "{url}: {refused:?}");
    }

    // A name is not resolved when saved, but the call checks where it resolves to.
    let saved = merchant
        .set_gateway(&format!("http://localhost:{port}/gateway.do"))
        .await;
    assert_eq!(saved.status, 200, "{saved:?}");
    let failed = merchant.upload_image().await;
    assert_eq!(failed.status, 502, "{failed:?}");
    let message = failed.body["message"].as_str().unwrap_or_default();
    assert!(message.contains("not allowed"), "{failed:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !was_connected(&listener),
        "the engine connected to a loopback listener"
    );
    if let Some(l) = &listener_v6 {
        assert!(!was_connected(l), "the engine connected to [::1]");
    }
    assert!(
        engine
            .log()
            .contains("refused to connect to an Alipay gateway"),
        "the refusal is logged"
    );
    drop(engine);
    db.cleanup().await;
}

/// What the stand-in gateway answers, in turn.
enum Answer {
    /// `200 OK` with this many bytes of JSON-looking filler and no `Content-Length`.
    Huge(usize),
    /// An unsigned Alipay-shaped error whose texts carry [`MARKER`].
    UnsignedError,
}

/// A gateway on loopback answering each request with the next of `answers`; the URL and the
/// number of requests it received.
async fn stand_in_gateway(answers: Vec<Answer>) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/gateway.do", listener.local_addr().unwrap());
    let served = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&served);
    tokio::spawn(async move {
        for answer in answers {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            read_request(&mut stream).await;
            count.fetch_add(1, Ordering::SeqCst);
            match answer {
                Answer::Huge(size) => {
                    let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json;charset=utf-8\r\nconnection: close\r\n\r\n";
                    let _ = stream.write_all(head.as_bytes()).await;
                    let _ = stream
                        .write_all(br#"{"alipay_offline_material_image_upload_response":{"code":"10000","msg":""#)
                        .await;
                    let filler = vec![b'A'; 64 * 1024];
                    let mut sent = 0;
                    while sent < size {
                        if stream.write_all(&filler).await.is_err() {
                            break;
                        }
                        sent += filler.len();
                    }
                }
                Answer::UnsignedError => {
                    let body = json!({"error_response": {
                        "code": "40002",
                        "msg": format!("Invalid Arguments {MARKER}"),
                        "sub_code": "isv.invalid-app-id",
                        "sub_msg": format!("{MARKER} at 10.0.0.7:5432"),
                    }})
                    .to_string();
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json;charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(answer.as_bytes()).await;
                }
            }
            let _ = stream.shutdown().await;
        }
    });
    (url, served)
}

/// Reads one request (headers, then a body by `Content-Length` or chunked), so that the answer
/// is not cut off by a reset.
async fn read_request(stream: &mut tokio::net::TcpStream) {
    let mut seen = Vec::new();
    let mut buffer = vec![0; 64 * 1024];
    let head_end = loop {
        let Ok(n) = stream.read(&mut buffer).await else {
            return;
        };
        if n == 0 {
            return;
        }
        seen.extend_from_slice(&buffer[..n]);
        if let Some(at) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&seen[..head_end]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    let complete = |seen: &[u8]| match length {
        Some(length) => seen.len() >= head_end + length,
        None if head.contains("transfer-encoding: chunked") => seen.ends_with(b"0\r\n\r\n"),
        None => true,
    };
    while !complete(&seen) {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => seen.extend_from_slice(&buffer[..n]),
        }
    }
}

#[tokio::test]
async fn an_oversized_answer_fails_cleanly_and_no_gateway_text_reaches_the_caller() {
    let db = trellis_tests::sqlite();
    // The harness names loopback, so the stand-in gateway is reachable.
    let engine = Engine::spawn(&db.url(), &[]);
    let merchant = Merchant::new(&engine, &db.url()).await;
    let (url, served) =
        stand_in_gateway(vec![Answer::Huge(5 * 1024 * 1024), Answer::UnsignedError]).await;
    assert_eq!(merchant.set_gateway(&url).await.status, 200);

    let started = std::time::Instant::now();
    let failed = merchant.upload_image().await;
    assert_eq!(failed.status, 502, "{failed:?}");
    let text = failed.body.to_string();
    assert!(text.len() < 2_048, "a bounded error: {text}");
    assert!(!text.contains("AAAA"), "{text}");
    assert!(text.contains("larger than"), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    let health = client().get(engine.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200, "the engine stays healthy");

    // An unsigned error: its codes pass, its texts only reach the log.
    let refused = merchant.upload_image().await;
    assert_eq!(refused.status, 502, "{refused:?}");
    let text = refused.body.to_string();
    assert!(!text.contains(MARKER), "{text}");
    assert!(!text.contains("10.0.0.7"), "{text}");
    assert!(text.contains("isv.invalid-app-id"), "{text}");
    assert_eq!(served.load(Ordering::SeqCst), 2);
    assert!(engine.log().contains(MARKER), "the details are logged");
    drop(engine);
    db.cleanup().await;
}
