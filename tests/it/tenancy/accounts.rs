//! Signing in: throttled failures, sessions and their cookies, API keys.

use super::*;

#[tokio::test]
async fn failed_sign_ins_are_throttled_per_account_with_retry_after() {
    let db = trellis_tests::sqlite();
    let engine = Engine::start(&db.url(), &[]);
    create_platform_admin(&db.url(), ROOT_EMAIL, PASSWORD);
    let api = Api::new(&engine, CONSOLE);
    for _ in 0..5 {
        let reply = api
            .post(
                "/api/v1/auth/login",
                json!({"email": ROOT_EMAIL, "password": "wrong password!"}),
            )
            .await;
        assert_eq!(reply.status, 401);
        assert_eq!(reply.body["code"], "invalid_credentials");
    }
    // Locked now, even with the right password.
    let reply = api
        .post(
            "/api/v1/auth/login",
            json!({"email": ROOT_EMAIL, "password": PASSWORD}),
        )
        .await;
    assert_eq!(reply.status, 429, "{reply:?}");
    assert_eq!(reply.body["code"], "too_many_attempts");
    let retry: u64 = reply.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry > 0 && retry <= 15 * 60);
    // An unknown account and a wrong password answer alike.
    let reply = api
        .post(
            "/api/v1/auth/login",
            json!({"email": "nobody@x.test", "password": PASSWORD}),
        )
        .await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.body["code"], "invalid_credentials");
}

#[tokio::test]
async fn sessions_end_on_logout_and_password_change_and_cookies_work() {
    let db = trellis_tests::sqlite();
    let engine = Engine::start(&db.url(), &[]);
    create_platform_admin(&db.url(), ROOT_EMAIL, PASSWORD);
    let console = Api::new(&engine, CONSOLE);
    let first = console.login(ROOT_EMAIL, PASSWORD).await;
    let second = console.login(ROOT_EMAIL, PASSWORD).await;

    // The cookie carries the same session as the bearer token.
    let login = console
        .post(
            "/api/v1/auth/login",
            json!({"email": ROOT_EMAIL, "password": PASSWORD}),
        )
        .await
        .ok();
    let cookie = login.headers["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap().to_owned();
    let reply = trellis_tests::client()
        .get(engine.url("/api/v1/me"))
        .header("host", CONSOLE)
        .header("cookie", &pair)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);

    assert_eq!(
        first.post("/api/v1/auth/logout", json!({})).await.status,
        204
    );
    assert_eq!(first.get("/api/v1/me").await.status, 401);
    assert_eq!(second.get("/api/v1/me").await.status, 200);

    let new_password = "a brand new passphrase";
    let reply = second
        .post(
            "/api/v1/auth/password",
            json!({"current_password": "not it at all", "new_password": new_password}),
        )
        .await;
    assert_eq!(reply.status, 422);
    assert_eq!(reply.body["field"], "current_password");
    let reply = second
        .post(
            "/api/v1/auth/password",
            json!({"current_password": PASSWORD, "new_password": new_password}),
        )
        .await;
    assert_eq!(reply.status, 204, "{reply:?}");
    assert_eq!(
        second.get("/api/v1/me").await.status,
        200,
        "the changing session stays"
    );
    let by_cookie = trellis_tests::client()
        .get(engine.url("/api/v1/me"))
        .header("host", CONSOLE)
        .header("cookie", &pair)
        .send()
        .await
        .unwrap();
    assert_eq!(by_cookie.status(), 401, "other sessions end");
    console.login(ROOT_EMAIL, new_password).await;
}

#[tokio::test]
async fn api_keys_act_for_their_node_until_revoked_and_are_shown_once() {
    let db = trellis_tests::sqlite();
    let engine = Engine::start(&db.url(), &[]);
    let tree = Tree::build(&engine, &db.url()).await;
    let owner = tree.client(Role::MerchantOwner);
    let created = owner
        .post("/api/v1/api-keys", json!({"name": "till sync"}))
        .await
        .ok();
    let key = created.body["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("trk_"));
    let id = created.body["api_key"]["id"].as_str().unwrap().to_owned();
    let listed = owner.get(&format!("/api/v1/api-keys/{id}")).await.ok();
    assert!(
        !listed.body.to_string().contains(&key),
        "the secret is never shown again"
    );

    // Keys are not bound to a host: machines call from anywhere.
    let machine = Api::new(&engine, CONSOLE).with_token(&key);
    let me = machine.get("/api/v1/me").await.ok();
    assert_eq!(me.body["kind"], "api_key");
    assert_eq!(me.body["role"], "merchant_owner");
    assert_eq!(
        machine
            .get(&format!("/api/v1/stores/{}", tree.chain[3]))
            .await
            .status,
        200
    );
    assert_eq!(
        machine
            .get(&format!("/api/v1/stores/{}", tree.other[3]))
            .await
            .status,
        404
    );
    assert_eq!(
        machine
            .get(&format!("/api/v1/agents/{}", tree.chain[1]))
            .await
            .status,
        404
    );

    owner.delete(&format!("/api/v1/api-keys/{id}")).await.ok();
    assert_eq!(machine.get("/api/v1/me").await.status, 401);
    let tampered = format!("{}x", &key[..key.len() - 1]);
    assert_eq!(
        Api::new(&engine, CONSOLE)
            .with_token(&tampered)
            .get("/api/v1/me")
            .await
            .status,
        401
    );
}
