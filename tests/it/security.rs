//! Attacks on the trusted core, performed over HTTP against the real binary the way an outsider,
//! a rogue partner, merchant or cashier would. Each test names the hole it keeps closed
//! (`docs/security.md` lists them).

use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use trellis_tests::{
    Api, Engine, TEST_PASSWORD, create_node, create_partner, create_platform_admin, create_user,
    databases,
};

const ROOT: &str = "root@platform.test";
const CONSOLE: &str = "127.0.0.1";

/// A platform admin and one partner → agent → merchant → store chain, each tier with an account
/// signed in on the partner's domain `p1.test`.
struct World {
    root: Api,
    partner_id: String,
    agent_id: String,
    merchant_id: String,
    partner: Api,
    agent: Api,
    owner: Api,
    staff: Api,
}

impl World {
    async fn build(engine: &Engine, url: &str) -> World {
        create_platform_admin(url, ROOT, TEST_PASSWORD);
        let root = Api::new(engine, CONSOLE).login(ROOT, TEST_PASSWORD).await;
        let partner_id = create_partner(&root, "Partner one", "p1.test").await;
        let agent_id = create_node(&root, "agents", Some(&partner_id), json!({"name": "A"})).await;
        let merchant_id =
            create_node(&root, "merchants", Some(&agent_id), json!({"name": "M"})).await;
        let store_id = create_node(&root, "stores", Some(&merchant_id), json!({"name": "S"})).await;
        let partner = create_user(engine, &root, &partner_id, "partner@one.test", "p1.test").await;
        let agent = create_user(engine, &root, &agent_id, "agent@one.test", "p1.test").await;
        let owner = create_user(engine, &root, &merchant_id, "owner@one.test", "p1.test").await;
        let staff = create_user(engine, &root, &store_id, "staff@one.test", "p1.test").await;
        World {
            root,
            partner_id,
            agent_id,
            merchant_id,
            partner,
            agent,
            owner,
            staff,
        }
    }
}

async fn user_id(api: &Api) -> String {
    api.get("/api/v1/me").await.ok().body["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

// ----- 1. host takeover ----------------------------------------------------------------------

#[tokio::test]
async fn a_partner_cannot_take_the_console_host_or_change_its_own_node() {
    for db in databases().await {
        let engine = Engine::start(&db.url(), &[]);
        let w = World::build(&engine, &db.url()).await;
        let own = format!("/api/v1/partners/{}", w.partner_id);

        // The attack: the partner admin adds the console's host to its own domains.
        for body in [
            json!({"domains": ["p1.test", "127.0.0.1"]}),
            json!({"domains": ["p1.test", "unclaimed.example"]}),
            json!({"theme": "default"}),
            json!({"name": "Renamed by itself"}),
        ] {
            let reply = w.partner.patch(&own, body.clone()).await;
            assert_eq!(reply.status, 403, "{body}: {reply:?}");
        }
        let reply = w.partner.post(&format!("{own}/suspend"), json!({})).await;
        assert_eq!(reply.status, 403, "{reply:?}");
        // Nobody changes the node they stand on: the merchant owner neither.
        let reply = w
            .owner
            .patch(
                &format!("/api/v1/merchants/{}", w.merchant_id),
                json!({"name": "x"}),
            )
            .await;
        assert_eq!(reply.status, 403, "{reply:?}");

        // Even the tier above cannot hand out a console host, an IP literal, a port, user-info
        // or a wildcard.
        for bad in [
            "127.0.0.1",
            "::1",
            "[::1]",
            "10.0.0.1",
            "127.1",
            "p1.test:8080",
            "root@p1.test",
            "*.p1.test",
        ] {
            let reply = w.root.patch(&own, json!({"domains": [bad]})).await;
            assert_eq!(reply.status, 422, "{bad}: {reply:?}");
            assert_eq!(reply.body["field"], "domains", "{bad}");
        }
        // Names are normalised (case, trailing dot, IDNA) and unique across partners.
        let reply = w
            .root
            .patch(&own, json!({"domains": ["P1.Test.", "BÜCHER.example"]}))
            .await
            .ok();
        assert_eq!(
            reply.body["domains"],
            json!(["p1.test", "xn--bcher-kva.example"])
        );
        let reply = w
            .root
            .post(
                "/api/v1/partners",
                json!({"name": "Copycat", "domains": ["bücher.EXAMPLE"]}),
            )
            .await;
        assert_eq!(reply.status, 409, "{reply:?}");
        assert_eq!(reply.body["code"], "domain_taken");

        // The console is still the console: the platform admin signs in there as before, and
        // a partner's account does not.
        let console = Api::new(&engine, CONSOLE);
        console.login(ROOT, TEST_PASSWORD).await;
        let reply = console
            .post(
                "/api/v1/auth/login",
                json!({"email": "partner@one.test", "password": TEST_PASSWORD}),
            )
            .await;
        assert_eq!(reply.status, 401, "{reply:?}");
        assert_eq!(
            console
                .with_token(w.root.token().unwrap())
                .get("/api/v1/me")
                .await
                .status,
            200
        );
        drop(engine);
        db.cleanup().await;
    }
}

#[tokio::test]
async fn a_host_nobody_set_up_reaches_nothing_and_a_malformed_host_is_refused() {
    let db = trellis_tests::sqlite();
    let engine = Engine::start(&db.url(), &[]);
    create_platform_admin(&db.url(), ROOT, TEST_PASSWORD);
    let stranger = Api::new(&engine, "unclaimed.example");
    let reply = stranger
        .post(
            "/api/v1/auth/login",
            json!({"email": ROOT, "password": TEST_PASSWORD}),
        )
        .await;
    assert_eq!(reply.status, 404, "{reply:?}");
    assert_eq!(reply.body["code"], "unknown_host");
    // Probes answer on any host, for load balancers.
    assert_eq!(stranger.get("/healthz").await.status, 200);
    for host in [
        "[localhost]@evil.example",
        "localhost@evil.example",
        "127.0.0.1:80:80",
        "127.0.0.1 evil",
    ] {
        let reply = Api::new(&engine, host).get("/api/v1/me").await;
        assert_eq!(reply.status, 400, "{host}: {reply:?}");
    }
    // Two hosts in one request: a second Host header, or an absolute-form target naming
    // another host than Host.
    for request in [
        "GET /api/v1/me HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: p1.test\r\nConnection: close\r\n\r\n",
        "GET http://p1.test/api/v1/me HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    ] {
        let answer = raw_exchange(&engine, request.as_bytes(), Duration::from_secs(5)).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{request:?}: {answer}");
    }
    // The offline sandbox is the operator's: never on a partner's domain, and it calls back
    // nothing but host names (through this engine) and loopback addresses.
    let sandboxed = Engine::start(&db.url(), &[("TRELLIS_SANDBOX__ENABLED", "true")]);
    let root = Api::new(&sandboxed, CONSOLE)
        .login(ROOT, TEST_PASSWORD)
        .await;
    create_partner(&root, "Partner", "p1.test").await;
    let reply = Api::new(&sandboxed, "p1.test")
        .get("/sandbox/alipay-public-key")
        .await;
    assert_eq!(reply.status, 404, "{reply:?}");
    let reply = Api::new(&sandboxed, CONSOLE)
        .post(
            "/sandbox/consumers/alice/open-claim-link",
            json!({"url": "https://x/?app_id=1&template_id=1&callback=http%3A%2F%2F10.1.2.3%2Fmeta-data"}),
        )
        .await;
    assert!(reply.status >= 400, "{reply:?}");
    drop(sandboxed);
    drop(engine);
    db.cleanup().await;
}

// ----- 2. sign-in throttling under concurrency -----------------------------------------------

async fn guess_concurrently(api: &Api, email: &str, guesses: usize) -> Vec<(u16, String)> {
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..guesses {
        let api = api.clone();
        let email = email.to_owned();
        tasks.spawn(async move {
            let reply = api
                .post(
                    "/api/v1/auth/login",
                    json!({"email": email, "password": format!("wrong guess {n:04}")}),
                )
                .await;
            (
                reply.status,
                reply.body["code"].as_str().unwrap_or("").to_owned(),
            )
        });
    }
    tasks.join_all().await
}

#[tokio::test]
async fn concurrent_guesses_are_counted_before_any_password_is_checked() {
    for db in databases().await {
        // Two engines on one database: the limit holds across processes.
        let first = Engine::start(&db.url(), &[]);
        let second = Engine::start(&db.url(), &[]);
        create_platform_admin(&db.url(), ROOT, TEST_PASSWORD);
        let (on_first, on_second) = (Api::new(&first, CONSOLE), Api::new(&second, CONSOLE));
        let (a, b) = tokio::join!(
            guess_concurrently(&on_first, ROOT, 30),
            guess_concurrently(&on_second, ROOT, 30),
        );
        let answers: Vec<_> = a.into_iter().chain(b).collect();
        let checked = answers.iter().filter(|(status, _)| *status == 401).count();
        assert!(checked <= 5, "{checked} guesses were checked: {answers:?}");
        assert!(
            answers
                .iter()
                .all(|(status, code)| *status == 401 || (*status == 429 && !code.is_empty())),
            "{answers:?}"
        );
        // The account is locked now, even for the right password.
        let reply = Api::new(&second, CONSOLE)
            .post(
                "/api/v1/auth/login",
                json!({"email": ROOT, "password": TEST_PASSWORD}),
            )
            .await;
        assert_eq!(reply.status, 429, "{reply:?}");
        drop((first, second));
        db.cleanup().await;
    }
}

#[tokio::test]
async fn a_burst_of_sign_ins_is_refused_at_once_and_the_server_keeps_answering() {
    let db = trellis_tests::sqlite();
    // One hashing thread and a short queue, so the burst overflows it.
    let engine = Engine::start(
        &db.url(),
        &[
            ("TRELLIS_AUTH__HASH_THREADS", "1"),
            ("TRELLIS_AUTH__HASH_QUEUE", "2"),
        ],
    );
    create_platform_admin(&db.url(), ROOT, TEST_PASSWORD);
    let console = Api::new(&engine, CONSOLE);
    let mut burst = tokio::task::JoinSet::new();
    for n in 0..200 {
        let console = console.clone();
        burst.spawn(async move {
            let reply = console
                .post(
                    "/api/v1/auth/login",
                    json!({"email": format!("guess{n}@nowhere.test"), "password": "wrong password"}),
                )
                .await;
            (reply.status, reply.body["code"].as_str().unwrap_or("").to_owned())
        });
    }
    // Liveness, not speed: every probe during the burst is answered (the old engine ran Argon2 on
    // the async workers and stalled them for seconds).
    let probes = async {
        let client = trellis_tests::client();
        for _ in 0..20 {
            let probe = client
                .get(engine.url("/healthz"))
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            assert!(
                probe.is_ok_and(|r| r.status() == 200),
                "/healthz did not answer during the burst"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let (answers, ()) = tokio::join!(burst.join_all(), probes);
    assert!(
        answers.iter().any(|(s, code)| *s == 429 && code == "busy"),
        "no sign-in was refused for a full queue: {answers:?}"
    );
    assert!(
        answers.iter().all(|(s, _)| *s == 401 || *s == 429),
        "{answers:?}"
    );
    drop(engine);
    db.cleanup().await;
}

// ----- 6. bodies before authentication, slow clients -----------------------------------------

/// Sends raw bytes on a fresh connection and returns what came back before the server closed
/// it or `wait` passed.
async fn raw_exchange(engine: &Engine, request: &[u8], wait: Duration) -> String {
    let address = engine.base_url.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(wait, stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn large_bodies_need_a_signed_in_caller_and_slow_clients_lose_their_connection() {
    let db = trellis_tests::sqlite();
    let engine = Engine::start(
        &db.url(),
        &[
            ("TRELLIS_HTTP__HEADER_READ_TIMEOUT_SECS", "1"),
            ("TRELLIS_HTTP__BODY_READ_TIMEOUT_SECS", "1"),
        ],
    );
    create_platform_admin(&db.url(), ROOT, TEST_PASSWORD);
    // An anonymous "upload" of 30 MB is refused from its headers alone: no body is sent.
    let answer = raw_exchange(
        &engine,
        b"POST /api/v1/partners/x/plugins HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 30000000\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");

    // Headers that never finish: the connection is closed after the header timeout.
    let started = std::time::Instant::now();
    let answer = raw_exchange(
        &engine,
        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n",
        Duration::from_secs(10),
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "a half-sent request kept its connection: {answer:?}"
    );
    // A body that stops coming: 408 and the connection closes.
    let answer = raw_exchange(
        &engine,
        b"POST /api/v1/auth/login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"email\":",
        Duration::from_secs(10),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");

    drop(engine);

    // A signed-in platform admin may upload, one at a time: a second upload while the first
    // is still being read is refused at once.
    let engine = Engine::start(&db.url(), &[("TRELLIS_HTTP__MAX_CONCURRENT_UPLOADS", "1")]);
    let root = Api::new(&engine, CONSOLE).login(ROOT, TEST_PASSWORD).await;
    let token = root.token().unwrap().to_owned();
    let address = engine.base_url.trim_start_matches("http://").to_owned();
    let mut slow = tokio::net::TcpStream::connect(&address).await.unwrap();
    slow.write_all(
        format!(
            "POST /api/v1/partners/x/plugins HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nContent-Type: application/octet-stream\r\nContent-Length: 5000000\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    slow.write_all(&[0_u8; 1024]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reply = root
        .upload("/api/v1/partners/x/plugins", vec![0_u8; 2048])
        .await;
    assert_eq!(reply.status, 429, "{reply:?}");
    assert_eq!(reply.body["code"], "busy");
    drop(slow);
    drop(engine);
    db.cleanup().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_loses_its_connection_and_anonymous_bodies_stay_small() {
    let db = trellis_tests::sqlite();
    // One connection in all: a client that never reads its answers would otherwise hold it.
    let engine = Engine::start(
        &db.url(),
        &[
            ("TRELLIS_HTTP__MAX_CONNECTIONS", "1"),
            ("TRELLIS_HTTP__WRITE_TIMEOUT_SECS", "1"),
        ],
    );
    let address: std::net::SocketAddr = engine
        .base_url
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket.connect(address).await.unwrap();
    let mut pipelined = Vec::new();
    for _ in 0..200 {
        pipelined.extend_from_slice(b"GET /api/openapi.json HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    }
    stalled.write_all(&pipelined).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The only slot is freed once the engine's writes have been blocked for a second.
    let probe = trellis_tests::client()
        .get(engine.url("/healthz"))
        .timeout(Duration::from_secs(10))
        .send()
        .await;
    assert!(
        probe.is_ok_and(|r| r.status() == 200),
        "a client that stopped reading kept the only connection"
    );
    drop(stalled);
    drop(engine);

    // Without credentials, a body is small: 64 KiB by default.
    let engine = Engine::start(&db.url(), &[]);
    let reply = trellis_tests::client()
        .post(engine.url("/api/v1/auth/login"))
        .header("content-type", "application/json")
        .body(vec![b' '; 100 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 413);
    drop(engine);
    db.cleanup().await;
}

// ----- 7. password takeover -----------------------------------------------------------------

#[tokio::test]
async fn passwords_and_keys_are_managed_only_by_accounts_of_a_higher_tier() {
    for db in databases().await {
        let engine = Engine::start(&db.url(), &[]);
        let w = World::build(&engine, &db.url()).await;
        let owner_id = user_id(&w.owner).await;
        let new_password = json!({"password": "a brand new password"});

        // The owner's own API key cannot take over the owner's account, mint keys or revoke them.
        let key = w
            .owner
            .post("/api/v1/api-keys", json!({"name": "till"}))
            .await
            .ok();
        let secret = key.body["key"].as_str().unwrap().to_owned();
        let key_id = key.body["api_key"]["id"].as_str().unwrap().to_owned();
        let machine = Api::new(&engine, "p1.test").with_token(&secret);
        let reply = machine
            .patch(&format!("/api/v1/users/{owner_id}"), new_password.clone())
            .await;
        assert_eq!(reply.status, 403, "{reply:?}");
        let reply = machine
            .post("/api/v1/api-keys", json!({"name": "another"}))
            .await;
        assert_eq!(reply.status, 403, "{reply:?}");
        assert_eq!(reply.body["code"], "session_required");
        let reply = machine.delete(&format!("/api/v1/api-keys/{key_id}")).await;
        assert_eq!(reply.status, 403, "{reply:?}");
        // Nor create an account with a password of its choosing, nor change an account's status.
        let reply = machine
            .post(
                "/api/v1/users",
                json!({"email": "shadow@evil.test", "password": "a shadow password"}),
            )
            .await;
        assert_eq!(reply.status, 403, "{reply:?}");
        let staff_id = user_id(&w.staff).await;
        let reply = machine
            .patch(
                &format!("/api/v1/users/{staff_id}"),
                json!({"status": "disabled"}),
            )
            .await;
        assert_eq!(reply.status, 403, "{reply:?}");

        // One's own password changes only with the current one.
        let reply = w
            .owner
            .patch(&format!("/api/v1/users/{owner_id}"), new_password.clone())
            .await;
        assert_eq!(reply.status, 403, "{reply:?}");
        // A peer on the same merchant cannot reset it either.
        let peer = create_user(&engine, &w.root, &w.merchant_id, "peer@one.test", "p1.test").await;
        let reply = peer
            .patch(&format!("/api/v1/users/{owner_id}"), new_password.clone())
            .await;
        assert_eq!(reply.status, 403, "{reply:?}");
        // Nor undo the tier above's decision about an account's status.
        let peer_id = user_id(&peer).await;
        w.agent
            .patch(
                &format!("/api/v1/users/{peer_id}"),
                json!({"status": "disabled"}),
            )
            .await
            .ok();
        let reply = w
            .owner
            .patch(
                &format!("/api/v1/users/{peer_id}"),
                json!({"status": "active"}),
            )
            .await;
        assert_eq!(reply.status, 403, "{reply:?}");
        // Still the old password.
        Api::new(&engine, "p1.test")
            .login("owner@one.test", TEST_PASSWORD)
            .await;

        // The agent above resets it from a session; the owner's sessions end.
        w.agent
            .patch(&format!("/api/v1/users/{owner_id}"), new_password)
            .await
            .ok();
        assert_eq!(w.owner.get("/api/v1/me").await.status, 401);
        // Disabling the owner revokes the keys it made.
        assert_eq!(machine.get("/api/v1/me").await.status, 200);
        w.agent
            .patch(
                &format!("/api/v1/users/{owner_id}"),
                json!({"status": "disabled"}),
            )
            .await
            .ok();
        assert_eq!(machine.get("/api/v1/me").await.status, 401);
        w.agent
            .patch(
                &format!("/api/v1/users/{owner_id}"),
                json!({"status": "active"}),
            )
            .await
            .ok();
        Api::new(&engine, "p1.test")
            .login("owner@one.test", "a brand new password")
            .await;
        drop(engine);
        db.cleanup().await;
    }
}

#[tokio::test]
async fn a_lower_tier_cannot_lift_a_suspension_decided_above_it() {
    for db in databases().await {
        let engine = Engine::start(&db.url(), &[]);
        let w = World::build(&engine, &db.url()).await;
        let merchant = format!("/api/v1/merchants/{}", w.merchant_id);
        w.partner
            .post(&format!("{merchant}/suspend"), json!({}))
            .await
            .ok();
        assert_eq!(w.owner.get("/api/v1/me").await.status, 403);
        for attempt in ["resume", "suspend"] {
            let reply = w
                .agent
                .post(&format!("{merchant}/{attempt}"), json!({}))
                .await;
            assert_eq!(reply.status, 403, "{attempt}: {reply:?}");
            assert_eq!(reply.body["code"], "suspended_above");
        }
        assert_eq!(w.owner.get("/api/v1/me").await.status, 403);
        w.partner
            .post(&format!("{merchant}/resume"), json!({}))
            .await
            .ok();
        assert_eq!(w.owner.get("/api/v1/me").await.status, 200);
        // What the agent suspends, the agent (or a tier above) resumes.
        w.agent
            .post(&format!("{merchant}/suspend"), json!({}))
            .await
            .ok();
        w.agent
            .post(&format!("{merchant}/resume"), json!({}))
            .await
            .ok();
        drop(engine);
        db.cleanup().await;
    }
}

// ----- 8. paging bounds ----------------------------------------------------------------------

#[tokio::test]
async fn out_of_range_paging_is_refused_not_a_panic() {
    let db = trellis_tests::sqlite();
    let engine = Engine::start(&db.url(), &[]);
    let w = World::build(&engine, &db.url()).await;
    for path in [
        "/api/v1/users",
        "/api/v1/agents",
        "/api/v1/audit",
        "/api/v1/deliveries",
    ] {
        for query in [
            "page=18446744073709551615",
            "page=0",
            "page=1000001",
            "per_page=0",
            "per_page=201",
            "page=-1",
            "per_page=99999999999999999999999",
        ] {
            let reply = w.root.get(&format!("{path}?{query}")).await;
            assert_eq!(reply.status, 422, "{path}?{query}: {reply:?}");
            assert_eq!(reply.body["code"], "validation_failed");
        }
        assert_eq!(
            w.root
                .get(&format!("{path}?page=1000000&per_page=200"))
                .await
                .status,
            200
        );
    }
    drop(engine);
    db.cleanup().await;
}

// ----- 9. no password oracle on suspended accounts -------------------------------------------

#[tokio::test]
async fn a_suspended_account_answers_a_right_password_as_a_wrong_one() {
    let db = trellis_tests::sqlite();
    let engine = Engine::start(&db.url(), &[]);
    let w = World::build(&engine, &db.url()).await;
    w.root
        .post(&format!("/api/v1/agents/{}/suspend", w.agent_id), json!({}))
        .await
        .ok();
    let site = Api::new(&engine, "p1.test");
    let mut answers = Vec::new();
    for password in [TEST_PASSWORD, "a wrong password"] {
        let reply = site
            .post(
                "/api/v1/auth/login",
                json!({"email": "owner@one.test", "password": password}),
            )
            .await;
        answers.push((reply.status, reply.body.clone()));
    }
    assert_eq!(answers[0], answers[1]);
    assert_eq!(answers[0].0, 401);
    let _ = &w.staff;
    drop(engine);
    db.cleanup().await;
}

// ----- 11. anonymous callers cannot grow the audit log ----------------------------------------

#[tokio::test]
async fn throttled_sign_ins_leave_no_audit_rows_and_old_entries_expire() {
    for db in databases().await {
        let engine = Engine::start(&db.url(), &[]);
        create_platform_admin(&db.url(), ROOT, TEST_PASSWORD);
        let root = Api::new(&engine, CONSOLE).login(ROOT, TEST_PASSWORD).await;
        let count = || async {
            root.get("/api/v1/audit?action=auth.login").await.ok().body["total"]
                .as_u64()
                .unwrap()
        };
        let before = count().await;
        let console = Api::new(&engine, CONSOLE);
        for _ in 0..40 {
            console
                .post(
                    "/api/v1/auth/login",
                    json!({"email": "victim@nowhere.test", "password": "wrong password"}),
                )
                .await;
        }
        // Five checked failures are audited; the thirty-five refused at the door are not.
        assert_eq!(count().await - before, 5);
        drop(engine);

        // An entry past the retention period is deleted when the engine starts.
        let conn = sea_orm::Database::connect(db.url()).await.unwrap();
        use sea_orm::ConnectionTrait as _;
        let old = (chrono::Utc::now() - chrono::Duration::days(40)).to_rfc3339();
        conn.execute_unprepared(&format!(
            "UPDATE audit_log SET at = '{old}' WHERE action = 'auth.login'"
        ))
        .await
        .unwrap();
        conn.close().await.unwrap();
        let engine = Engine::start(&db.url(), &[("TRELLIS_AUDIT__RETENTION_DAYS", "30")]);
        let root = Api::new(&engine, CONSOLE).login(ROOT, TEST_PASSWORD).await;
        trellis_tests::eventually(Duration::from_secs(10), "old audit entries pruned", || {
            let root = root.clone();
            async move {
                let total = root.get("/api/v1/audit?action=auth.login").await.ok().body["total"]
                    .as_u64()
                    .unwrap();
                // Only the sign-in just made remains.
                if total == 1 {
                    Ok(())
                } else {
                    Err(format!("{total} entries"))
                }
            }
        })
        .await;
        drop(engine);
        db.cleanup().await;
    }
}
