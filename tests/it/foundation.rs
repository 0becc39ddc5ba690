//! The engine foundation driven from outside: the real binary, real databases.

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use trellis_tests::{Engine, client, databases, trellis_command};

async fn json(response: reqwest::Response) -> Value {
    response.json().await.expect("a JSON body")
}

#[tokio::test]
async fn serve_migrates_a_fresh_database_and_reports_ready() {
    for db in databases().await {
        let engine = Engine::start(&db.url(), &[]);
        let http = client();
        let health = http.get(engine.url("/healthz")).send().await.unwrap();
        assert_eq!(health.status(), 200, "{}", db.label());
        assert_eq!(json(health).await["status"], "ok");
        let ready = http.get(engine.url("/readyz")).send().await.unwrap();
        assert_eq!(ready.status(), 200, "{}", db.label());
        let body = json(ready).await;
        assert_eq!(body["status"], "ready");
        assert_eq!(body["database"], db.label());
        drop(engine);
        db.cleanup().await;
    }
}

#[tokio::test]
async fn migrations_apply_cleanly_twice_and_roll_back() {
    use sea_orm_migration::MigratorTrait;
    use trellis_migrations::Migrator;
    for db in databases().await {
        let dir = trellis_tests::tempdir();
        let run = |args: &[&str]| {
            let output = trellis_command(dir.path(), &db.url())
                .args(args)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&output.stdout).into_owned();
            (
                output.status.code(),
                text,
                String::from_utf8_lossy(&output.stderr).into_owned(),
            )
        };
        let (code, first, err) = run(&["migrate"]);
        assert_eq!(code, Some(0), "{}: {err}", db.label());
        let total = Migrator::migrations().len();
        assert!(
            first.contains(&format!("applied {total} migration(s)")),
            "{first}"
        );
        let (code, second, err) = run(&["migrate"]);
        assert_eq!(code, Some(0), "{}: {err}", db.label());
        assert!(second.contains("applied 0 migration(s)"), "{second}");
        assert_eq!(run(&["migrate", "--check"]).0, Some(0));

        // Every migration can be undone and redone: the down path is real, not a placeholder.
        let conn = sea_orm::Database::connect(db.url().as_str()).await.unwrap();
        Migrator::down(&conn, None).await.unwrap();
        assert_eq!(
            Migrator::get_pending_migrations(&conn).await.unwrap().len(),
            total
        );
        let (code, pending, _) = run(&["migrate", "--check"]);
        assert_eq!(code, Some(1), "pending migrations make --check fail");
        assert!(
            pending.contains(&format!("{total} migration(s) pending")),
            "{pending}"
        );
        Migrator::up(&conn, None).await.unwrap();
        assert!(
            Migrator::get_pending_migrations(&conn)
                .await
                .unwrap()
                .is_empty()
        );
        conn.close().await.unwrap();
        db.cleanup().await;
    }
}

#[tokio::test]
async fn readyz_goes_unready_when_the_database_is_gone() {
    for db in databases().await {
        let engine = Engine::start(&db.url(), &[]);
        let http = client();
        assert_eq!(
            http.get(engine.url("/readyz"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
        db.destroy().await.unwrap();
        let ready = http.get(engine.url("/readyz")).send().await.unwrap();
        assert_eq!(ready.status(), 503, "{}", db.label());
        let body = json(ready).await;
        assert_eq!(body["status"], "unready");
        assert_eq!(body["reason"], "database_unavailable");
        // Liveness is about the process, not its dependencies.
        assert_eq!(
            http.get(engine.url("/healthz"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
        drop(engine);
        db.cleanup().await;
    }
}

#[tokio::test]
async fn an_oversized_body_is_refused_with_413_json_on_any_route() {
    let db = trellis_tests::sqlite();
    let engine = Engine::start(&db.url(), &[("TRELLIS_HTTP__BODY_LIMIT", "1024")]);
    let http = client();
    for path in ["/healthz", "/no/such/route", "/api/v1/anything"] {
        let response = http
            .post(engine.url(path))
            .body(vec![b'x'; 1025])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 413, "{path}");
        let body = json(response).await;
        assert_eq!(body["code"], "payload_too_large", "{path}");
    }
    // A body of exactly the limit passes the limit (and meets the router's own answer).
    let response = http
        .post(engine.url("/no/such/route"))
        .body(vec![b'x'; 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);

    // Chunked transfer announces no length; the limit still holds.
    let address = engine.base_url.trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&address).await.unwrap();
    let chunk = "y".repeat(600);
    let request = format!(
        "POST /healthz HTTP/1.1\r\nhost: {address}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n\
         {len:x}\r\n{chunk}\r\n{len:x}\r\n{chunk}\r\n0\r\n\r\n",
        len = chunk.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).await.unwrap();
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(reply.contains("\"code\":\"payload_too_large\""), "{reply}");
}

#[tokio::test]
async fn graceful_shutdown_completes_an_in_flight_request_and_exits_zero() {
    let db = trellis_tests::sqlite();
    let mut engine = Engine::spawn(&db.url(), &[]);
    let address = engine.base_url.trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&address).await.unwrap();
    // Headers and half the body: the request is in flight when the signal arrives.
    let head = format!(
        "POST /no/such/route HTTP/1.1\r\nhost: {address}\r\ncontent-length: 10\r\n\r\nhello"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pid = engine.pid();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    stream.write_all(b"world").await.unwrap();
    let mut reply = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut reply))
        .await
        .unwrap()
        .unwrap();
    let reply = String::from_utf8_lossy(&reply[..n]).into_owned();
    assert!(
        reply.starts_with("HTTP/1.1 404"),
        "the in-flight request was answered: {reply}"
    );
    let status = engine.wait(Duration::from_secs(15));
    assert_eq!(status.code(), Some(0), "log:\n{}", engine.log());
    assert!(engine.log().contains("shutdown requested"));
}

#[tokio::test]
async fn request_ids_are_echoed_or_minted() {
    let db = trellis_tests::sqlite();
    let engine = Engine::spawn(&db.url(), &[]);
    let http = client();
    let minted = http.get(engine.url("/healthz")).send().await.unwrap();
    let id = minted.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(id.len(), 36, "a UUID: {id}");
    let echoed = http
        .get(engine.url("/healthz"))
        .header("x-request-id", "lb-1234")
        .send()
        .await
        .unwrap();
    assert_eq!(echoed.headers()["x-request-id"], "lb-1234");
    // An unprintable or oversized id is replaced rather than logged.
    let long = "z".repeat(200);
    let replaced = http
        .get(engine.url("/healthz"))
        .header("x-request-id", &long)
        .send()
        .await
        .unwrap();
    assert_ne!(replaced.headers()["x-request-id"], long.as_str());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let log = engine.log();
    let line = log
        .lines()
        .find(|l| l.contains("lb-1234"))
        .expect("the request was logged with its id");
    let entry: Value = serde_json::from_str(line).expect("JSON log lines");
    assert_eq!(entry["status"], 200);
    assert_eq!(entry["span"]["method"], "GET");
    assert_eq!(entry["span"]["path"], "/healthz");
    assert!(entry["latency_ms"].is_number());
}

#[tokio::test]
async fn browsers_get_themed_error_pages_and_api_clients_get_json() {
    let db = trellis_tests::sqlite();
    let engine = Engine::start(&db.url(), &[]);
    let http = client();
    let page = http
        .get(engine.url("/nowhere"))
        .header("accept", "text/html,application/xhtml+xml")
        .header("accept-language", "zh-CN,zh;q=0.9")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 404);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    // The engine's own pages load only what the engine serves, run no inline script and
    // cannot be framed.
    let policy = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    for rule in [
        "default-src 'self'",
        "script-src 'self'",
        "object-src 'none'",
        "frame-ancestors 'none'",
    ] {
        assert!(policy.contains(rule), "{rule} in {policy}");
    }
    assert!(!policy.contains("unsafe-inline"), "{policy}");
    assert_eq!(page.headers()["x-frame-options"], "DENY");
    assert_eq!(page.headers()["x-content-type-options"], "nosniff");
    let html = page.text().await.unwrap();
    assert!(html.contains("页面不存在"), "{html}");
    assert!(html.contains("/static/default/theme.css"));
    assert!(
        !html.contains("<script") && !html.contains("style="),
        "nothing inline for the policy to block: {html}"
    );
    let home = http.get(engine.url("/")).send().await.unwrap();
    assert_eq!(
        home.headers()["content-security-policy"].to_str().unwrap(),
        policy,
        "the home page carries the same policy"
    );

    let english = http
        .get(engine.url("/nowhere"))
        .header("accept", "text/html")
        .header("accept-language", "en-GB")
        .send()
        .await
        .unwrap();
    assert!(english.text().await.unwrap().contains("Page not found"));

    let api = http
        .get(engine.url("/api/v1/nowhere"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 404);
    assert_eq!(
        json(api).await["code"],
        "not_found",
        "API paths always answer JSON"
    );

    let css = http
        .get(engine.url("/static/default/theme.css"))
        .send()
        .await
        .unwrap();
    assert_eq!(css.status(), 200);
    assert_eq!(css.headers()["cache-control"], "public, max-age=86400");
    let etag = css.headers()["etag"].to_str().unwrap().to_owned();
    let again = http
        .get(engine.url("/static/default/theme.css"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    let escape = http
        .get(engine.url("/static/default/..%2F..%2FCargo.toml"))
        .send()
        .await
        .unwrap();
    assert_eq!(escape.status(), 404);
}

/// Every error is JSON for an API client (a themed page for a browser), a known path asked with
/// a method it does not answer included: the engine's routes, Alipay's notify path and the
/// offline sandbox alike, with the `Allow` header.
#[tokio::test]
async fn a_known_path_asked_with_another_method_answers_json_405_naming_what_is_allowed() {
    let db = trellis_tests::sqlite();
    let engine = Engine::start(&db.url(), &[("TRELLIS_SANDBOX__ENABLED", "true")]);
    let http = client();
    for (method, path, allowed) in [
        (
            reqwest::Method::DELETE,
            "/api/v1/merchants/m-1/events",
            "POST",
        ),
        (reqwest::Method::DELETE, "/healthz", "GET"),
        (reqwest::Method::GET, "/alipay/notify/m-1", "POST"),
        (reqwest::Method::PATCH, "/api/v1/auth/login", "POST"),
        (reqwest::Method::GET, "/sandbox/gateway.do", "POST"),
    ] {
        let reply = http
            .request(method.clone(), engine.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 405, "{method} {path}");
        let allow = reply.headers()["allow"].to_str().unwrap().to_owned();
        assert!(allow.contains(allowed), "{method} {path}: Allow {allow}");
        let body = json(reply).await;
        assert_eq!(
            body["code"], "method_not_allowed",
            "{method} {path}: {body}"
        );
        assert!(body["message"].as_str().unwrap().contains(method.as_str()));
    }
    // A browser gets the themed page, with the same status.
    let page = http
        .delete(engine.url("/healthz"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 405);
    assert!(
        page.text()
            .await
            .unwrap()
            .contains("DELETE is not answered")
    );
    let unknown = http
        .get(engine.url("/sandbox/nowhere"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    assert_eq!(json(unknown).await["code"], "not_found");
}

#[tokio::test]
async fn admin_create_stores_only_a_hash_and_refuses_duplicates() {
    use sea_orm::{ConnectionTrait, Statement};
    for db in databases().await {
        let dir = trellis_tests::tempdir();
        let create = |email: &str, password: &str| {
            let mut child = trellis_command(dir.path(), &db.url())
                .args(["admin", "create", "--email", email, "--password-stdin"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(format!("{password}\n").as_bytes())
                .unwrap();
            let output = child.wait_with_output().unwrap();
            let all = format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            (output.status.code(), all)
        };
        let password = "a sturdy passphrase 42";
        let (code, out) = create("Root@Example.com", password);
        assert_eq!(code, Some(0), "{}: {out}", db.label());
        assert!(out.contains("root@example.com"), "{out}");
        assert!(!out.contains(password));

        let (code, out) = create("root@example.com", password);
        assert_eq!(code, Some(1), "a duplicate is a runtime failure: {out}");
        assert!(out.contains("already exists"), "{out}");
        let (code, out) = create("not-an-email", password);
        assert_eq!(code, Some(2), "bad input is a usage error: {out}");
        let (code, out) = create("short@example.com", "short");
        assert_eq!(code, Some(2), "{out}");
        assert!(out.contains("at least"), "{out}");

        let conn = sea_orm::Database::connect(db.url().as_str()).await.unwrap();
        let row = conn
            .query_one_raw(Statement::from_string(
                conn.get_database_backend(),
                "SELECT email, password_hash, role FROM users",
            ))
            .await
            .unwrap()
            .unwrap();
        let hash: String = row.try_get("", "password_hash").unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(!hash.contains(password));
        assert_eq!(row.try_get::<String>("", "role").unwrap(), "platform_admin");
        conn.close().await.unwrap();
        db.cleanup().await;
    }
}

#[tokio::test]
async fn no_secret_reaches_config_show_or_the_log() {
    let dir = trellis_tests::tempdir();
    let master = "VGhpcyBpcyBhIHRlc3Qga2V5IG9mIDMyIGJ5dGVzISE=";
    let db_password = "pg-Secret-Pw-77";
    // An unreachable PostgreSQL: the failure line must not carry the password either.
    let url = format!("postgres://trellis:{db_password}@127.0.0.1:9/trellis");
    let show = trellis_command(dir.path(), &url)
        .env("TRELLIS_SECRETS__MASTER_KEY", master)
        .args(["config", "show"])
        .output()
        .unwrap();
    assert_eq!(show.status.code(), Some(0));
    let shown = String::from_utf8_lossy(&show.stdout);
    assert!(shown.contains("master_key = \"<redacted>\""), "{shown}");
    assert!(shown.contains("127.0.0.1:9"), "{shown}");
    let serve = trellis_command(dir.path(), &url)
        .env("TRELLIS_SECRETS__MASTER_KEY", master)
        .env("TRELLIS_LOG__LEVEL", "trace")
        .arg("serve")
        .output()
        .unwrap();
    assert_eq!(
        serve.status.code(),
        Some(1),
        "an unreachable database is a runtime failure"
    );
    let all = format!(
        "{shown}{}{}",
        String::from_utf8_lossy(&serve.stdout),
        String::from_utf8_lossy(&serve.stderr)
    );
    assert!(!all.contains(db_password), "{all}");
    assert!(!all.contains(master), "{all}");
}
