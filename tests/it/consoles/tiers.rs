//! Signing in, each tier adding the tier below, and passwords.

use serde_json::json;
use trellis_tests::{Engine, TEST_PASSWORD, databases};

use super::*;

#[tokio::test]
async fn a_partner_admin_signs_in_on_the_partner_domain_adds_an_agent_and_signs_out() {
    for db in databases().await {
        let engine = Engine::start(&db.url(), &[]);
        let world = World::build(&engine, &db.url()).await;
        let mut browser = Browser::new(&engine, DOMAIN);

        // Signed out, the console sends the visitor to sign in, on the partner's own brand.
        let page = browser.get("/console").await;
        assert_eq!(page.status, 303);
        assert_eq!(page.location.as_deref(), Some("/console/login"));
        let login = browser.get("/console/login").await;
        assert_eq!(login.status, 200);
        assert!(login.text.contains("翡翠支付"), "{}", login.text);
        assert!(login.text.contains("/static/jade/brand.css"));
        assert!(login.text.contains("<html lang=\"zh-CN\">"));
        assert!(login.text.contains("<label for=\"email\">邮箱</label>"));

        // A wrong password shows the form again with the reason and what was typed.
        let wrong = browser
            .post(
                "/console/login",
                &[("email", "admin@jade.test"), ("password", "not it")],
            )
            .await;
        assert_eq!(wrong.status, 401);
        assert!(wrong.text.contains("邮箱或密码错误"), "{}", wrong.text);
        assert!(wrong.text.contains("value=\"admin@jade.test\""));
        assert!(browser.session.is_none());

        // Another site cannot sign a browser in.
        let forged = browser
            .post_from(
                "https://evil.test",
                "/console/login",
                &[("email", "admin@jade.test"), ("password", TEST_PASSWORD)],
            )
            .await;
        assert_eq!(forged.status, 403);
        assert!(browser.session.is_none());

        let done = browser
            .post(
                "/console/login",
                &[("email", "admin@jade.test"), ("password", TEST_PASSWORD)],
            )
            .await;
        assert_eq!(done.status, 303, "{done:?}");
        assert_eq!(done.location.as_deref(), Some("/console"));
        let home = browser.get("/console").await;
        assert_eq!(home.status, 200, "{home:?}");
        // Names are escaped, not markup.
        assert!(home.text.contains("Jade &lt;Partner&gt;"), "{}", home.text);
        assert!(!home.text.contains("Jade <Partner>"));
        assert!(home.text.contains("North"));
        assert!(home.text.contains("添加代理商"));
        assert_eq!(home.headers["cache-control"], "no-store");
        let policy = home.headers["content-security-policy"].to_str().unwrap();
        assert!(policy.contains("script-src 'self'") && policy.contains("form-action 'self'"));
        let token = home.form_token();

        // A state change without the session's token, or from another site with it, is refused
        // and changes nothing.
        let bare = browser
            .post(
                "/console/nodes",
                &[("kind", "agent"), ("name", "Forged"), ("form_token", "0")],
            )
            .await;
        assert_eq!(bare.status, 403, "{bare:?}");
        let cross = browser
            .post_from(
                "https://evil.test",
                "/console/nodes",
                &[
                    ("kind", "agent"),
                    ("name", "Forged"),
                    ("form_token", &token),
                ],
            )
            .await;
        assert_eq!(cross.status, 403);
        // An empty name is refused beside the field, keeping the page.
        let empty = browser
            .post(
                "/console/nodes",
                &[("kind", "agent"), ("name", "  "), ("form_token", &token)],
            )
            .await;
        assert_eq!(empty.status, 422, "{empty:?}");
        assert!(empty.text.contains("aria-invalid=\"true\""));

        let added = browser
            .post(
                "/console/nodes",
                &[("kind", "agent"), ("name", "South"), ("form_token", &token)],
            )
            .await;
        assert_eq!(added.status, 303, "{added:?}");
        let agents = world
            .root
            .get(&format!("/api/v1/agents?parent_id={}", world.partner))
            .await
            .ok();
        let names: Vec<&str> = agents.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["name"].as_str().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(names.contains(&"South") && !names.contains(&"Forged"));

        // The audit log shows the change, filed under this partner.
        let audit = browser.get("/console/audit").await;
        assert_eq!(audit.status, 200);
        assert!(audit.text.contains("agent.create"), "{}", audit.text);

        // English on request, kept by a cookie.
        let chosen = browser.get("/console/lang?to=en").await;
        assert_eq!(chosen.status, 303);
        let english = browser.get("/console").await;
        assert!(english.text.contains("<html lang=\"en\">"));
        assert!(english.text.contains("Add an agent"));

        // Signing out ends the session: the old page's form no longer acts.
        let out = browser
            .post("/console/logout", &[("form_token", &token)])
            .await;
        assert_eq!(out.status, 303);
        assert!(browser.session.is_none());
        let after = browser.get("/console").await;
        assert_eq!(after.status, 303);
        drop(engine);
        db.cleanup().await;
    }
}

#[tokio::test]
async fn each_tier_adds_only_its_own_children_and_staff_add_none() {
    for db in databases().await {
        let engine = Engine::start(&db.url(), &[]);
        let world = World::build(&engine, &db.url()).await;

        // The merchant owner manages stores, and cannot post a form for another kind.
        let mut owner = signed_in(&engine, "owner@jade.test").await;
        let home = owner.get("/console").await;
        assert!(home.text.contains("添加门店"), "{}", home.text);
        assert!(home.text.contains("Front"));
        let token = home.form_token();
        let agent = owner
            .post(
                "/console/nodes",
                &[("kind", "agent"), ("name", "Rogue"), ("form_token", &token)],
            )
            .await;
        assert_eq!(agent.status, 422, "{agent:?}");

        // A cashier sees the store and no form; posting one anyway is refused.
        let mut cashier = signed_in(&engine, "cashier@jade.test").await;
        let home = cashier.get("/console").await;
        assert_eq!(home.status, 200);
        assert!(home.text.contains("Front"));
        assert!(!home.text.contains("action=\"/console/nodes\""));
        let token = home.form_token();
        let store = cashier
            .post(
                "/console/nodes",
                &[("kind", "store"), ("name", "Rogue"), ("form_token", &token)],
            )
            .await;
        assert_eq!(store.status, 422);
        // The audit log is not the cashier's to read.
        let audit = cashier.get("/console/audit").await;
        assert_eq!(audit.status, 403);

        // A partner account does not sign in on the console host, nor a session from one
        // partner's domain open another's.
        let mut elsewhere = Browser::new(&engine, CONSOLE);
        let page = elsewhere
            .post(
                "/console/login",
                &[("email", "admin@jade.test"), ("password", TEST_PASSWORD)],
            )
            .await;
        assert_eq!(page.status, 401);

        // An API key never opens the console, even sent as the session cookie.
        let key = world
            .root
            .post("/api/v1/api-keys", json!({"name": "robot"}))
            .await
            .ok();
        let mut robot = Browser::new(&engine, CONSOLE);
        robot.session = Some(key.body["key"].as_str().unwrap().to_owned());
        let page = robot.get("/console").await;
        assert_eq!(page.status, 303);
        assert_eq!(page.location.as_deref(), Some("/console/login"));
        let _ = world.agent;
        drop(engine);
        db.cleanup().await;
    }
}

#[tokio::test]
async fn the_platform_adds_a_partner_on_its_domain_and_its_admin_then_the_partner_staffs_an_agent()
{
    for db in databases().await {
        let engine = Engine::start(&db.url(), &[]);
        let world = World::build(&engine, &db.url()).await;
        let mut root = Browser::new(&engine, CONSOLE);
        let page = root
            .post(
                "/console/login",
                &[("email", ROOT_EMAIL), ("password", TEST_PASSWORD)],
            )
            .await;
        assert_eq!(page.status, 303, "{page:?}");
        let home = root.get("/console").await;
        // The platform's form asks for the partner's domain and offers the themes.
        assert!(home.text.contains("name=\"domain\""), "{}", home.text);
        assert!(home.text.contains("<option value=\"jade\">jade</option>"));
        let token = home.form_token();
        // A domain another partner holds is refused beside the form, nothing created.
        let taken = root
            .post(
                "/console/nodes",
                &[
                    ("form_token", &token),
                    ("kind", "partner"),
                    ("name", "Copycat"),
                    ("domain", DOMAIN),
                    ("theme", "default"),
                ],
            )
            .await;
        assert_eq!(taken.status, 409, "{taken:?}");
        assert!(taken.text.contains("value=\"Copycat\""));
        let added = root
            .post(
                "/console/nodes",
                &[
                    ("form_token", &token),
                    ("kind", "partner"),
                    ("name", "Bamboo"),
                    ("domain", "pay.bamboo.test"),
                    ("theme", "jade"),
                ],
            )
            .await;
        assert_eq!(added.status, 303, "{added:?}");
        let home = root.get("/console").await;
        let at = home.text.find("Bamboo").unwrap();
        let link = &home.text[at..];
        let start = link.find("/console/accounts?node_id=").unwrap();
        let accounts_path = link[start..start + link[start..].find('"').unwrap()].to_owned();
        let partner = accounts_path.rsplit('=').next().unwrap().to_owned();

        // Its first account, added from the partner's accounts page.
        let accounts = root.get(&accounts_path).await;
        assert_eq!(accounts.status, 200, "{accounts:?}");
        assert!(accounts.text.contains("Bamboo"));
        let short = root
            .post(
                "/console/accounts",
                &[
                    ("form_token", &token),
                    ("node_id", &partner),
                    ("email", "boss@bamboo.test"),
                    ("password", "short"),
                ],
            )
            .await;
        assert_eq!(short.status, 422, "{short:?}");
        assert!(short.text.contains("value=\"boss@bamboo.test\""));
        let made = root
            .post(
                "/console/accounts",
                &[
                    ("form_token", &token),
                    ("node_id", &partner),
                    ("email", "boss@bamboo.test"),
                    ("password", TEST_PASSWORD),
                ],
            )
            .await;
        assert_eq!(made.status, 303, "{made:?}");
        let listed = root.get(&accounts_path).await;
        assert!(listed.text.contains("boss@bamboo.test"));
        assert!(listed.text.contains("服务商管理员"));

        // The new partner's admin signs in on its domain, in its theme, and adds an agent
        // with an account of its own.
        let mut boss = Browser::new(&engine, "pay.bamboo.test");
        let page = boss
            .post(
                "/console/login",
                &[("email", "boss@bamboo.test"), ("password", TEST_PASSWORD)],
            )
            .await;
        assert_eq!(page.status, 303, "{page:?}");
        let home = boss.get("/console").await;
        assert!(home.text.contains("翡翠支付"));
        let token = home.form_token();
        boss.post(
            "/console/nodes",
            &[("form_token", &token), ("kind", "agent"), ("name", "East")],
        )
        .await;
        let home = boss.get("/console").await;
        let at = home.text.find("East").unwrap();
        let link = &home.text[at..];
        let start = link.find("node_id=").unwrap() + "node_id=".len();
        let agent = link[start..start + link[start..].find('"').unwrap()].to_owned();
        let made = boss
            .post(
                "/console/accounts",
                &[
                    ("form_token", &token),
                    ("node_id", &agent),
                    ("email", "east@bamboo.test"),
                    ("password", TEST_PASSWORD),
                ],
            )
            .await;
        assert_eq!(made.status, 303, "{made:?}");
        // Another partner's node is not found from here, and nothing is added there.
        let outside = boss
            .post(
                "/console/accounts",
                &[
                    ("form_token", &token),
                    ("node_id", &world.partner),
                    ("email", "spy@bamboo.test"),
                    ("password", TEST_PASSWORD),
                ],
            )
            .await;
        assert_eq!(outside.status, 404, "{outside:?}");
        let page = boss
            .get(&format!("/console/accounts?node_id={}", world.partner))
            .await;
        assert_eq!(page.status, 404);
        let mut east = Browser::new(&engine, "pay.bamboo.test");
        let page = east
            .post(
                "/console/login",
                &[("email", "east@bamboo.test"), ("password", TEST_PASSWORD)],
            )
            .await;
        assert_eq!(page.status, 303);
        let home = east.get("/console").await;
        assert!(home.text.contains("添加商户"), "{}", home.text);
        drop(engine);
        db.cleanup().await;
    }
}

#[tokio::test]
async fn a_password_changed_in_the_console_signs_in_and_the_old_one_does_not() {
    for db in databases().await {
        let engine = Engine::start(&db.url(), &[]);
        let _world = World::build(&engine, &db.url()).await;
        let mut browser = signed_in(&engine, "owner@jade.test").await;
        let page = browser.get("/console/password").await;
        let token = page.form_token();
        let wrong = browser
            .post(
                "/console/password",
                &[
                    ("form_token", &token),
                    ("current_password", "not it"),
                    ("new_password", "a new long passphrase"),
                ],
            )
            .await;
        assert_eq!(wrong.status, 422, "{wrong:?}");
        assert!(wrong.text.contains("role=\"alert\""));
        let changed = browser
            .post(
                "/console/password",
                &[
                    ("form_token", &token),
                    ("current_password", TEST_PASSWORD),
                    ("new_password", "a new long passphrase"),
                ],
            )
            .await;
        assert_eq!(changed.status, 200, "{changed:?}");
        assert!(changed.text.contains("密码已修改"));
        let mut again = Browser::new(&engine, DOMAIN);
        let old = again
            .post(
                "/console/login",
                &[("email", "owner@jade.test"), ("password", TEST_PASSWORD)],
            )
            .await;
        assert_eq!(old.status, 401);
        let new = again
            .post(
                "/console/login",
                &[
                    ("email", "owner@jade.test"),
                    ("password", "a new long passphrase"),
                ],
            )
            .await;
        assert_eq!(new.status, 303);
        drop(engine);
        db.cleanup().await;
    }
}

#[tokio::test]
async fn an_owner_makes_an_api_key_that_works_until_revoked_and_a_cashier_makes_none() {
    for db in databases().await {
        let engine = Engine::start(&db.url(), &[]);
        let world = World::build(&engine, &db.url()).await;
        let mut owner = signed_in(&engine, "owner@jade.test").await;
        let page = owner.get("/console/keys").await;
        assert_eq!(page.status, 200, "{page:?}");
        let token = page.form_token();
        let made = owner
            .post(
                "/console/keys",
                &[("form_token", &token), ("name", "收银机")],
            )
            .await;
        assert_eq!(made.status, 201, "{made:?}");
        assert_eq!(made.headers["cache-control"], "no-store");
        let marker = "id=\"made-secret\" readonly value=\"";
        let at = made.text.find(marker).expect("the secret is shown") + marker.len();
        let secret = made.text[at..at + made.text[at..].find('"').unwrap()].to_owned();
        // The key works for the merchant's place, as a program sends it.
        let merchant = world.merchant.clone();
        let call = |key: String| {
            let url = engine.url(&format!("/api/v1/merchants/{merchant}"));
            async move {
                trellis_tests::client()
                    .get(url)
                    .header("host", CONSOLE)
                    .bearer_auth(key)
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            }
        };
        assert_eq!(call(secret.clone()).await, 200);
        // Shown once: the list has its name and prefix, never the secret.
        let list = owner.get("/console/keys").await;
        assert!(list.text.contains("收银机") && !list.text.contains(&secret));
        let revoke = {
            let marker = "action=\"/console/keys/";
            let at = list.text.find(marker).unwrap() + marker.len();
            list.text[at..at + list.text[at..].find('/').unwrap()].to_owned()
        };
        let revoked = owner
            .post(
                &format!("/console/keys/{revoke}/revoke"),
                &[("form_token", &token)],
            )
            .await;
        assert_eq!(revoked.status, 303, "{revoked:?}");
        assert_eq!(call(secret).await, 401);
        let audit = owner.get("/console/audit").await;
        assert!(audit.text.contains("api_key.revoke"));
        // A cashier has no keys page and cannot post one.
        let mut cashier = signed_in(&engine, "cashier@jade.test").await;
        let home = cashier.get("/console").await;
        assert!(!home.text.contains("href=\"/console/keys\""));
        let token = home.form_token();
        let refused = cashier
            .post("/console/keys", &[("form_token", &token), ("name", "x")])
            .await;
        assert!(
            refused.status == 403 || refused.status == 404,
            "{refused:?}"
        );
        drop(engine);
        db.cleanup().await;
    }
}

#[tokio::test]
async fn a_partner_renames_and_suspends_a_merchant_below_it_but_not_itself_or_another_partners() {
    for db in databases().await {
        let engine = Engine::start(&db.url(), &[]);
        let world = World::build(&engine, &db.url()).await;
        let merchant = world.merchant.clone();
        let mut partner = signed_in(&engine, "admin@jade.test").await;
        let home = partner.get("/console").await;
        assert!(
            home.text
                .contains(&format!("href=\"/console/nodes/{}\"", world.agent)),
            "{}",
            home.text
        );
        let at = format!("/console/nodes/{merchant}");
        let page = partner.get(&at).await;
        assert_eq!(page.status, 200, "{page:?}");
        assert!(page.text.contains("href=\"/console/alipay?merchant_id="));
        // The tier below it: the merchant's stores.
        assert!(page.text.contains(">Front</a>"), "{}", page.text);
        let token = page.form_token();
        let blank = partner
            .post(&at, &[("form_token", &token), ("name", "  ")])
            .await;
        assert_eq!(blank.status, 422, "{blank:?}");
        let renamed = partner
            .post(&at, &[("form_token", &token), ("name", "Tea House")])
            .await;
        assert_eq!(renamed.status, 303, "{renamed:?}");
        let suspended = partner
            .post(&format!("{at}/suspend"), &[("form_token", &token)])
            .await;
        assert_eq!(suspended.status, 303, "{suspended:?}");
        let api = world
            .root
            .get(&format!("/api/v1/merchants/{merchant}"))
            .await
            .ok();
        assert_eq!(api.body["name"], "Tea House");
        assert_eq!(api.body["status"], "suspended");
        let page = partner.get(&at).await;
        assert!(page.text.contains("已停用") && page.text.contains("/resume\""));
        let resumed = partner
            .post(&format!("{at}/resume"), &[("form_token", &token)])
            .await;
        assert_eq!(resumed.status, 303, "{resumed:?}");
        // Not its own node, not another partner's.
        assert_eq!(
            partner
                .get(&format!("/console/nodes/{}", world.partner))
                .await
                .status,
            404
        );
        let other = create_node(
            &world.root,
            "partners",
            None,
            json!({"name": "Other", "domains": ["other.test"]}),
        )
        .await;
        assert_eq!(
            partner.get(&format!("/console/nodes/{other}")).await.status,
            404
        );
        let forged = partner
            .post(
                &format!("/console/nodes/{other}/suspend"),
                &[("form_token", &token)],
            )
            .await;
        assert_eq!(forged.status, 404, "{forged:?}");
        // The cashier reaches no node's page above or beside its store.
        let mut cashier = signed_in(&engine, "cashier@jade.test").await;
        assert_eq!(cashier.get(&at).await.status, 404);
        drop(engine);
        db.cleanup().await;
    }
}
