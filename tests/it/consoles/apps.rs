//! Plugins' pages in the console: membership used through them, and a hostile plugin's.

use serde_json::json;
use trellis_tests::{Engine, client, databases, png, register_sandbox_app};

use super::*;

#[tokio::test]
async fn membership_is_used_from_the_console_through_its_pages_described_as_data() {
    for db in databases().await {
        let engine = Engine::start(&db.url(), &[]);
        let world = World::build(&engine, &db.url()).await;
        let merchant = with_plugins(&world).await;
        world
            .root
            .post(
                &format!("/api/v1/merchants/{merchant}/plugins/{MEMBERSHIP}/members/import"),
                json!({"members": [{"mobile": "13800000001", "name": "张三"}, {"mobile": "13800000002", "name": "李四"}]}),
            )
            .await
            .ok();

        let mut owner = signed_in(&engine, "owner@jade.test").await;
        let home = owner.get("/console").await;
        let members_path = format!("/console/apps/{MEMBERSHIP}/members");
        assert!(
            home.text.contains(&format!("href=\"{members_path}\"")),
            "{}",
            home.text
        );
        assert!(
            home.text.contains(">会员<"),
            "the menu names the page in the visitor's language"
        );
        let list = owner.get(&members_path).await;
        assert_eq!(list.status, 200, "{list:?}");
        assert!(
            list.text.contains("张三") && list.text.contains("李四"),
            "{}",
            list.text
        );
        // The search box asks the plugin's own search.
        let found = owner.get(&format!("{members_path}?q=138000000")).await;
        assert!(found.text.contains("张三"));
        let none = owner.get(&format!("{members_path}?q=nobody")).await;
        assert!(!none.text.contains("张三"), "{}", none.text);
        // Each row opens the member's page, which links to the adjustment form.
        let member_path = link(&list, "/console/apps/com.trellis.membership/member?id=");
        let member = owner.get(&member_path).await;
        assert_eq!(member.status, 200, "{member:?}");
        assert!(member.text.contains("13800000001") || member.text.contains("13800000002"));
        let adjust_path = member_path.replace("/member?", "/adjust?");
        assert_eq!(
            link(&member, "/console/apps/com.trellis.membership/adjust?"),
            adjust_path
        );
        let form = owner.get(&adjust_path).await;
        assert_eq!(form.status, 200);
        assert!(
            form.text.contains("<label for=\"in-points\">积分</label>"),
            "{}",
            form.text
        );
        let token = form.form_token();
        // Typed by the console: a word where a number goes never reaches the plugin.
        let word = owner
            .post(
                &adjust_path,
                &[("form_token", &token), ("points", "ten"), ("reason", "x")],
            )
            .await;
        assert_eq!(word.status, 422, "{word:?}");
        // The plugin's own refusal is shown beside the form: points never go below zero.
        let below = owner
            .post(
                &adjust_path,
                &[("form_token", &token), ("points", "-5"), ("reason", "x")],
            )
            .await;
        assert!((400..500).contains(&below.status), "{below:?}");
        assert!(below.text.contains("role=\"alert\""), "{below:?}");
        let done = owner
            .post(
                &adjust_path,
                &[
                    ("form_token", &token),
                    ("points", "10"),
                    ("reason", "welcome"),
                    ("balance", ""),
                ],
            )
            .await;
        assert_eq!(done.status, 303, "{done:?}");
        assert_eq!(done.location.as_deref(), Some(member_path.as_str()));
        let member = owner.get(&member_path).await;
        assert!(
            member.text.contains("welcome"),
            "the ledger shows the entry: {}",
            member.text
        );
        let id = member_path.rsplit('=').next().unwrap();
        let api = world
            .root
            .get(&format!(
                "/api/v1/merchants/{merchant}/plugins/{MEMBERSHIP}/members/{id}"
            ))
            .await
            .ok();
        assert_eq!(api.body["member"]["points"], 10);
        // The change is audited like the API's.
        let audit = owner.get("/console/audit").await;
        assert!(audit.text.contains("plugin.call"), "{}", audit.text);
        // No claim link yet: the plugin's "not found" shows on the page, with the way to apply.
        let claim = owner
            .get(&format!("/console/apps/{MEMBERSHIP}/claim"))
            .await;
        assert_eq!(claim.status, 404, "{claim:?}");
        link(&claim, &format!("/console/apps/{MEMBERSHIP}/claim-apply"));

        // A cashier reads the members and cannot adjust: the route's audience decides. The
        // member's page offers no adjustment, and the store's door has no such route.
        let mut cashier = signed_in(&engine, "cashier@jade.test").await;
        let list = cashier.get(&members_path).await;
        assert_eq!(list.status, 200, "{list:?}");
        assert!(list.text.contains("张三"));
        let seen = cashier.get(&member_path).await;
        assert_eq!(seen.status, 200, "{seen:?}");
        assert!(!decoded(&seen).contains("/adjust?"), "{}", seen.text);
        let cashier_token = seen.form_token();
        let refused = cashier
            .post(
                &adjust_path,
                &[
                    ("form_token", &cashier_token),
                    ("points", "99"),
                    ("reason", "x"),
                ],
            )
            .await;
        assert_eq!(refused.status, 404, "{refused:?}");
        let api = world
            .root
            .get(&format!(
                "/api/v1/merchants/{merchant}/plugins/{MEMBERSHIP}/members/{id}"
            ))
            .await
            .ok();
        assert_eq!(api.body["member"]["points"], 10);
        // A page the plugin does not declare, or a plugin the merchant does not hold, is not found.
        assert_eq!(
            owner
                .get(&format!("/console/apps/{MEMBERSHIP}/nothing"))
                .await
                .status,
            404
        );
        assert_eq!(
            owner
                .get("/console/apps/com.example.none/members")
                .await
                .status,
            404
        );
        drop(engine);
        db.cleanup().await;
    }
}

#[tokio::test]
async fn a_plugin_cannot_put_markup_or_script_into_the_console() {
    for db in databases().await {
        let engine = Engine::start(&db.url(), &[]);
        let world = World::build(&engine, &db.url()).await;
        with_plugins(&world).await;
        let mut owner = signed_in(&engine, "owner@jade.test").await;
        let home = owner.get("/console").await;
        // Even its title, in the menu, is text.
        assert!(
            home.text.contains("&lt;script&gt;alert(&#x27;title&#x27;)"),
            "{}",
            home.text
        );
        let page = owner.get(&format!("/console/apps/{ABUSE}/hostile")).await;
        assert_eq!(page.status, 200, "{page:?}");
        for hostile in ["<script>alert(", "<img src=x", "<b>name</b>", "\"><script>"] {
            assert!(
                !page.text.contains(hostile),
                "{hostile} reached the page: {}",
                page.text
            );
        }
        assert!(
            page.text
                .contains("&lt;script&gt;alert(&#x27;name&#x27;)&lt;/script&gt;")
        );
        assert!(
            page.text
                .contains("&lt;img src&#x3D;x onerror&#x3D;alert(&#x27;html&#x27;)&gt;")
        );
        // The console's own policy, not the plugin's; no cookie of the plugin's.
        let policy = page.headers["content-security-policy"].to_str().unwrap();
        assert!(policy.contains("script-src 'self'") && !policy.contains("sandbox"));
        assert!(page.headers.get("set-cookie").is_none());
        // The row's link carries its value encoded; the QR page draws a code and shows the URL
        // as text, never as a link.
        let row = link(&page, &format!("/console/apps/{ABUSE}/hostile-qr?id="));
        assert!(
            !row.contains('<') && !row.contains('>') && !row.contains('"'),
            "{row}"
        );
        let qr = owner
            .get(&format!("/console/apps/{ABUSE}/hostile-qr?id=x"))
            .await;
        assert_eq!(qr.status, 200, "{qr:?}");
        assert!(qr.text.contains("<svg"));
        assert!(!qr.text.contains("href=\"javascript:"));
        assert!(
            qr.text
                .contains("value=\"javascript:alert(&#x27;qr&#x27;)\"")
        );
        drop(engine);
        db.cleanup().await;
    }
}

#[tokio::test]
async fn another_site_cannot_ride_the_console_session_into_the_api() {
    for db in databases().await {
        let engine = Engine::start(&db.url(), &[]);
        let world = World::build(&engine, &db.url()).await;
        let owner = signed_in(&engine, "owner@jade.test").await;
        let session = owner.session.clone().unwrap();
        let merchant = world.merchant.clone();
        let keypair = format!(
            "{}/api/v1/merchants/{merchant}/alipay/keypair",
            engine.base_url
        );
        let http = trellis_tests::client();
        // A body-less POST needs no preflight: only the origin check stops it.
        let forged = http
            .post(&keypair)
            .header("host", DOMAIN)
            .header("cookie", format!("trellis_session={session}"))
            .header("origin", "https://evil.test")
            .header("sec-fetch-site", "cross-site")
            .send()
            .await
            .unwrap();
        assert_eq!(forged.status(), 403);
        let body: serde_json::Value = forged.json().await.unwrap();
        assert_eq!(body["code"], "form_refused");
        let stored = world
            .root
            .get(&format!("/api/v1/merchants/{merchant}/alipay/credentials"))
            .await;
        assert_eq!(stored.status, 404, "nothing was made: {stored:?}");
        // The same request from the site's own page goes through.
        let own = http
            .post(&keypair)
            .header("host", DOMAIN)
            .header("cookie", format!("trellis_session={session}"))
            .header("origin", format!("http://{DOMAIN}"))
            .header("sec-fetch-site", "same-origin")
            .send()
            .await
            .unwrap();
        assert_eq!(own.status(), 201);
        drop(engine);
        db.cleanup().await;
    }
}

#[tokio::test]
async fn a_plugins_pages_open_only_for_a_merchant_that_holds_it() {
    for db in databases().await {
        let engine = Engine::start(&db.url(), &[]);
        let world = World::build(&engine, &db.url()).await;
        let merchant = with_plugins(&world).await;
        let mut owner = signed_in(&engine, "owner@jade.test").await;
        let path = format!("/console/apps/{MEMBERSHIP}/adjust?id=1");
        assert_eq!(owner.get(&path).await.status, 200);
        // Revoked: not even the form's labels.
        let assignments = world
            .root
            .get(&format!("/api/v1/assignments?merchant_id={merchant}"))
            .await
            .ok();
        for assignment in assignments.body["items"].as_array().unwrap() {
            let id = assignment["id"].as_str().unwrap();
            world
                .root
                .post(&format!("/api/v1/assignments/{id}/revoke"), json!({}))
                .await
                .ok();
        }
        assert_eq!(owner.get(&path).await.status, 404);
        let home = owner.get("/console").await;
        assert!(!home.text.contains("/console/apps/"), "{}", home.text);
        drop(engine);
        db.cleanup().await;
    }
}

/// The value of the read-only field `id` on `page`, as a browser shows it.
fn field_value(page: &Page, id: &str) -> String {
    let text = decoded(page);
    let marker = format!("id=\"{id}\" readonly value=\"");
    let at = text
        .find(&marker)
        .unwrap_or_else(|| panic!("no {id} in {text}"))
        + marker.len();
    text[at..at + text[at..].find('"').unwrap()].to_owned()
}

#[tokio::test]
async fn a_merchant_sets_up_levels_and_the_card_in_the_console_and_a_consumer_claims_it() {
    for db in databases().await {
        let engine = Engine::start(&db.url(), &[("TRELLIS_SANDBOX__ENABLED", "true")]);
        let world = World::build(&engine, &db.url()).await;
        let merchant = with_plugins(&world).await;
        let mut owner = signed_in(&engine, "owner@jade.test").await;

        // The Alipay app: a key pair made on the server, registered at the sandbox as the
        // owner would in Alipay's console, and Alipay's key entered back.
        let token = owner.get("/console/alipay").await.form_token();
        let made = owner
            .post(
                "/console/alipay/keypair",
                &[("form_token", &token), ("merchant_id", &merchant)],
            )
            .await;
        assert_eq!(made.status, 303, "{made:?}");
        let public = world
            .root
            .get(&format!("/api/v1/merchants/{merchant}/alipay/credentials"))
            .await
            .ok()
            .body["app_public_key"]
            .as_str()
            .unwrap()
            .to_owned();
        let registered = register_sandbox_app(
            &engine,
            json!({"app_id": "2021000000000077", "app_public_key": public, "identity": "uid"}),
        )
        .await;
        assert!(registered["gateway_url"].is_string(), "{registered}");
        let stored = owner
            .post(
                "/console/alipay",
                &[
                    ("form_token", &token),
                    ("merchant_id", &merchant),
                    ("app_id", "2021000000000077"),
                    (
                        "alipay_public_key",
                        registered["alipay_public_key"].as_str().unwrap(),
                    ),
                    ("gateway", "custom"),
                    ("gateway_url", registered["gateway_url"].as_str().unwrap()),
                ],
            )
            .await;
        assert_eq!(stored.status, 303, "{stored:?}");

        // Levels: a repeated form, two blank rows to start with.
        let app = |page: &str| format!("/console/apps/{MEMBERSHIP}/{page}");
        let levels = owner.get(&app("levels")).await;
        assert_eq!(
            link(&levels, &app("levels-edit")),
            app("levels-edit"),
            "{}",
            levels.text
        );
        let form = owner.get(&app("levels-edit")).await;
        assert_eq!(form.status, 200, "{form:?}");
        assert!(form.text.contains("第 2 行") && !form.text.contains("第 3 行"));
        let token = form.form_token();
        // A word where a number goes is named with its row, before the plugin sees it.
        let word = owner
            .post(
                &app("levels-edit"),
                &[
                    ("form_token", &token),
                    ("name.0", "普通会员"),
                    ("kind.0", "normal"),
                    ("threshold.0", "0"),
                    ("name.1", "金卡"),
                    ("kind.1", "normal"),
                    ("threshold.1", "lots"),
                ],
            )
            .await;
        assert_eq!(word.status, 422, "{word:?}");
        assert!(word.text.contains("成长值门槛 (2)"), "{}", word.text);
        assert!(
            word.text.contains("value=\"金卡\""),
            "what was typed is kept"
        );
        // The plugin's own rules answer beside the form: a discount is 1 to 100.
        let refused = owner
            .post(
                &app("levels-edit"),
                &[
                    ("form_token", &token),
                    ("name.0", "普通会员"),
                    ("kind.0", "normal"),
                    ("threshold.0", "0"),
                    ("discount.0", "250"),
                ],
            )
            .await;
        assert_eq!(refused.status, 422, "{refused:?}");
        assert!(refused.text.contains("discount"), "{}", refused.text);
        let saved = owner
            .post(
                &app("levels-edit"),
                &[
                    ("form_token", &token),
                    ("name.0", "普通会员"),
                    ("kind.0", "normal"),
                    ("threshold.0", "0"),
                    ("benefits.0", "积分"),
                    ("name.1", "金卡"),
                    ("kind.1", "normal"),
                    ("threshold.1", "500"),
                    ("discount.1", "95"),
                    // The blank row posts its select: it is left out all the same.
                    ("kind.2", "normal"),
                ],
            )
            .await;
        assert_eq!(saved.status, 303, "{saved:?}");
        assert_eq!(saved.location.as_deref(), Some(app("levels").as_str()));
        let api = format!("/api/v1/merchants/{merchant}/plugins/{MEMBERSHIP}");
        let stored = world.root.get(&format!("{api}/levels")).await.ok().body;
        assert_eq!(stored["levels"].as_array().unwrap().len(), 2, "{stored}");
        assert_eq!(stored["levels"][1]["discount"], 95);
        // Shown again, the form holds what is stored (ids carried along) and two blank rows.
        let form = owner.get(&app("levels-edit")).await;
        let gold_id = stored["levels"][1]["id"].as_str().unwrap();
        assert!(
            form.text
                .contains(&format!("name=\"id.1\" value=\"{gold_id}\"")),
            "{}",
            form.text
        );
        assert!(form.text.contains("value=\"金卡\"") && form.text.contains("第 4 行"));

        // The card designer: a file form; images go to Alipay first, under Alipay's rules.
        let card = owner.get(&app("card")).await;
        assert_eq!(link(&card, &app("card-edit")), app("card-edit"));
        let form = owner.get(&app("card-edit")).await;
        assert_eq!(form.status, 200, "{form:?}");
        assert!(form.text.contains("enctype=\"multipart/form-data\""));
        let token = form.form_token();
        let design = [
            ("form_token", token.as_str()),
            ("show_name", "演示会员卡"),
            ("brand_name", "演示商户"),
            ("logo_id", ""),
            ("background_id", ""),
            ("bg_color", "#3770B3"),
            ("columns", "points"),
            ("columns", "level"),
            ("form_required", "mobile"),
            ("form_optional", "name"),
            ("validity_days", ""),
            ("write_off_type", "qrcode"),
            ("card_no_prefix", "VIP"),
        ];
        let (small, logo, background) = (png(100, 100), png(600, 600), png(1100, 700));
        let too_small = owner
            .upload_files(
                &app("card-edit"),
                &design,
                &[
                    ("logo_id:file", "image/png", &small),
                    ("background_id:file", "image/png", &background),
                ],
            )
            .await;
        assert!((400..500).contains(&too_small.status), "{too_small:?}");
        assert!(too_small.text.contains("500×500"), "{}", too_small.text);
        assert!(too_small.text.contains("value=\"演示会员卡\""));
        let designed = owner
            .upload_files(
                &app("card-edit"),
                &design,
                &[
                    ("logo_id:file", "image/png", &logo),
                    ("background_id:file", "image/png", &background),
                    // A file for what is not an image input goes nowhere.
                    ("show_name:file", "image/png", &logo),
                ],
            )
            .await;
        assert_eq!(designed.status, 303, "{designed:?}");
        let stored = world.root.get(&format!("{api}/card")).await.ok().body;
        let design = &stored["design"];
        assert_eq!(design["show_name"], "演示会员卡", "{stored}");
        assert_eq!(design["columns"], json!(["points", "level"]));
        assert_eq!(
            design["form"],
            json!({"required": ["mobile"], "optional": ["name"]})
        );
        let logo_id = design["logo_id"].as_str().unwrap().to_owned();
        assert!(!logo_id.is_empty());
        // Edited again without choosing files, the images stay.
        let form = owner.get(&app("card-edit")).await;
        assert!(
            form.text.contains(&format!("value=\"{logo_id}\"")),
            "{}",
            form.text
        );
        let renamed = owner
            .upload_files(
                &app("card-edit"),
                &[
                    ("form_token", token.as_str()),
                    ("show_name", "茶会员卡"),
                    ("brand_name", "演示商户"),
                    ("logo_id", &logo_id),
                    ("background_id", design["background_id"].as_str().unwrap()),
                    ("bg_color", "#3770B3"),
                    ("columns", "points"),
                    ("columns", "level"),
                    ("form_required", "mobile"),
                    ("write_off_type", "qrcode"),
                    ("card_no_prefix", "VIP"),
                ],
                &[],
            )
            .await;
        assert_eq!(renamed.status, 303, "{renamed:?}");
        let stored = world.root.get(&format!("{api}/card")).await.ok().body;
        assert_eq!(stored["design"]["show_name"], "茶会员卡");
        assert_eq!(stored["design"]["logo_id"], logo_id.as_str());

        // Synced against the sandbox, which checks every field Alipay checks.
        let token = owner.get(&app("card-sync")).await.form_token();
        let synced = owner
            .post(&app("card-sync"), &[("form_token", &token)])
            .await;
        assert_eq!(synced.status, 303, "{synced:?}");
        let card = owner.get(&app("card")).await;
        assert!(card.text.contains("synced"), "{}", card.text);

        // The claim link, as a QR code to scan with Alipay.
        let token = owner.get(&app("claim-apply")).await.form_token();
        let applied = owner
            .post(
                &app("claim-apply"),
                &[("form_token", &token), ("callback", "clean")],
            )
            .await;
        assert_eq!(applied.status, 303, "{applied:?}");
        let claim = owner.get(&app("claim")).await;
        assert!(claim.text.contains("<svg"), "{}", claim.text);
        let url = field_value(&claim, "qr-url");
        let opened = client()
            .post(engine.url("/sandbox/consumers/alice/open-claim-link"))
            .json(&json!({"url": url}))
            .send()
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap();
        assert_eq!(opened["callback_status"], 200, "{opened}");

        // She is in the merchant's list, and the cashier sees her but cannot adjust.
        let members = world.root.get(&format!("{api}/members")).await.ok().body;
        let alice = &members["items"][0];
        let mobile = alice["mobile"].as_str().unwrap();
        let list = owner.get(&app("members")).await;
        assert!(list.text.contains(mobile), "{}", list.text);
        let mut cashier = signed_in(&engine, "cashier@jade.test").await;
        let list = cashier.get(&app("members")).await;
        assert!(list.text.contains(mobile), "{}", list.text);
        let seen = cashier
            .get(&link(&list, &format!("{}?id=", app("member"))))
            .await;
        assert_eq!(seen.status, 200, "{seen:?}");
        assert!(!decoded(&seen).contains("/adjust?"));
        // Nor design the card or edit levels: those routes are the owner's.
        assert_eq!(cashier.get(&app("card-edit")).await.status, 404);
        assert_eq!(cashier.get(&app("levels-edit")).await.status, 404);
        drop(engine);
        db.cleanup().await;
    }
}

#[tokio::test]
async fn an_agent_and_a_partner_open_their_plugin_pages_for_a_merchant_below_them() {
    for db in databases().await {
        let engine = Engine::start(&db.url(), &[]);
        let world = World::build(&engine, &db.url()).await;
        let merchant = with_plugins(&world).await;
        world
            .root
            .post(
                "/api/v1/users",
                json!({"node_id": world.agent, "email": "agent@jade.test", "password": trellis_tests::TEST_PASSWORD}),
            )
            .await
            .ok();
        let app = |page: &str| format!("/console/apps/{ABUSE}/{page}?merchant_id={merchant}");

        // The partner finds both views on the merchant's page, and each opens.
        let mut partner = signed_in(&engine, "admin@jade.test").await;
        let node = partner.get(&format!("/console/nodes/{merchant}")).await;
        assert_eq!(node.status, 200, "{node:?}");
        let text = decoded(&node);
        assert!(
            text.contains(&app("partner-view")) && text.contains(&app("agent-view")),
            "{text}"
        );
        let view = partner.get(&app("partner-view")).await;
        assert_eq!(view.status, 200, "{view:?}");
        assert!(view.text.contains("<dd>partner</dd>"), "{}", view.text);

        // The agent gets its own view, not the partner's.
        let mut agent = signed_in(&engine, "agent@jade.test").await;
        let node = agent.get(&format!("/console/nodes/{merchant}")).await;
        let text = decoded(&node);
        assert!(text.contains(&app("agent-view")), "{text}");
        assert!(!text.contains(&app("partner-view")), "{text}");
        let view = agent.get(&app("agent-view")).await;
        assert!(view.text.contains("<dd>agent</dd>"), "{}", view.text);
        assert_eq!(agent.get(&app("partner-view")).await.status, 404);
        // Not for a merchant outside its subtree, nor without one.
        let other = create_node(
            &world.root,
            "partners",
            None,
            json!({"name": "Other", "domains": ["other.test"]}),
        )
        .await;
        let other_agent =
            create_node(&world.root, "agents", Some(&other), json!({"name": "A"})).await;
        let stranger = create_node(
            &world.root,
            "merchants",
            Some(&other_agent),
            json!({"name": "M"}),
        )
        .await;
        let foreign = format!("/console/apps/{ABUSE}/agent-view?merchant_id={stranger}");
        assert_eq!(agent.get(&foreign).await.status, 404);
        assert_eq!(
            agent
                .get(&format!("/console/apps/{ABUSE}/agent-view"))
                .await
                .status,
            404
        );
        // The merchant's own console offers neither.
        let mut owner = signed_in(&engine, "owner@jade.test").await;
        let home = owner.get("/console").await;
        assert!(!home.text.contains("agent-view") && !home.text.contains("partner-view"));
        assert_eq!(
            owner
                .get(&format!("/console/apps/{ABUSE}/agent-view"))
                .await
                .status,
            404
        );
        drop(engine);
        db.cleanup().await;
    }
}
