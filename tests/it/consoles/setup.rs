//! Setting a merchant up: its Alipay app, the packages it holds, the partner's plugins.

use serde_json::json;
use trellis_tests::{Engine, TEST_PASSWORD, databases};

use super::*;

const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../core/alipay/tests/vectors/");

#[tokio::test]
async fn a_merchant_owner_sets_up_the_alipay_app_with_a_key_pair_made_on_the_server() {
    for db in databases().await {
        let engine = Engine::start(&db.url(), &[]);
        let world = World::build(&engine, &db.url()).await;
        let mut owner = signed_in(&engine, "owner@jade.test").await;
        let home = owner.get("/console").await;
        assert!(
            home.text.contains("href=\"/console/alipay\""),
            "{}",
            home.text
        );
        let page = owner.get("/console/alipay").await;
        assert_eq!(page.status, 200, "{page:?}");
        assert!(page.text.contains("尚未设置"), "{}", page.text);
        // The addresses to register are on the partner's domain.
        assert!(
            page.text
                .contains(&format!("value=\"https://{DOMAIN}/alipay/notify/"))
        );
        assert!(page.text.contains(&format!(
            "value=\"https://{DOMAIN}/callbacks/alipay/card-activation\""
        )));
        let token = page.form_token();
        let merchant = {
            let at = page.text.find("name=\"merchant_id\" value=\"").unwrap() + 26;
            page.text[at..at + page.text[at..].find('"').unwrap()].to_owned()
        };
        let made = owner
            .post(
                "/console/alipay/keypair",
                &[("form_token", &token), ("merchant_id", &merchant)],
            )
            .await;
        assert_eq!(made.status, 303, "{made:?}");
        let page = owner.get("/console/alipay").await;
        // The public half is shown to copy; the private half never leaves the server.
        let api = world
            .root
            .get(&format!("/api/v1/merchants/{merchant}/alipay/credentials"))
            .await
            .ok();
        let public = api.body["app_public_key"].as_str().unwrap();
        assert!(page.text.contains(public));
        assert!(!page.text.to_lowercase().contains("private key-----"));
        assert!(page.text.contains("未完成"));

        // A key that is not a key is refused beside the form, what was typed kept.
        let bad = owner
            .post(
                "/console/alipay",
                &[
                    ("form_token", &token),
                    ("merchant_id", &merchant),
                    ("app_id", "2021000000000042"),
                    ("alipay_public_key", "not a key"),
                    ("gateway", "production"),
                ],
            )
            .await;
        assert_eq!(bad.status, 422, "{bad:?}");
        assert!(bad.text.contains("value=\"2021000000000042\""));
        let alipay_key =
            std::fs::read_to_string(format!("{VECTORS}keys/alipay_public.pem")).unwrap();
        let stored = owner
            .post(
                "/console/alipay",
                &[
                    ("form_token", &token),
                    ("merchant_id", &merchant),
                    ("app_id", "2021000000000042"),
                    ("alipay_public_key", &alipay_key),
                    ("gateway", "production"),
                ],
            )
            .await;
        assert_eq!(stored.status, 303, "{stored:?}");
        let api = world
            .root
            .get(&format!("/api/v1/merchants/{merchant}/alipay/credentials"))
            .await
            .ok();
        assert_eq!(api.body["app_id"], "2021000000000042");
        assert_eq!(api.body["complete"], true);
        // The key pair made first is still the one in use.
        assert_eq!(api.body["app_public_key"].as_str().unwrap(), public);
        let page = owner.get("/console/alipay").await;
        assert!(page.text.contains("已就绪"));

        // The cashier has no such page: its merchant's app lies above its store, outside what
        // it may see, so it is not found. Another partner's merchant is not found either.
        let mut cashier = signed_in(&engine, "cashier@jade.test").await;
        let home = cashier.get("/console").await;
        assert!(!home.text.contains("href=\"/console/alipay\""));
        assert_eq!(cashier.get("/console/alipay").await.status, 404);
        let mut boss = signed_in(&engine, "admin@jade.test").await;
        let page = boss
            .get(&format!("/console/alipay?merchant_id={merchant}"))
            .await;
        assert_eq!(
            page.status, 200,
            "the partner opens its merchant's app: {page:?}"
        );
        let other = create_node(
            &world.root,
            "partners",
            None,
            json!({"name": "Other", "domains": ["other.test"]}),
        )
        .await;
        let other_agent =
            create_node(&world.root, "agents", Some(&other), json!({"name": "A"})).await;
        let other_merchant = create_node(
            &world.root,
            "merchants",
            Some(&other_agent),
            json!({"name": "M"}),
        )
        .await;
        let page = boss
            .get(&format!("/console/alipay?merchant_id={other_merchant}"))
            .await;
        assert_eq!(page.status, 404);
        let token = boss.get("/console").await.form_token();
        let forged = boss
            .post(
                "/console/alipay/keypair",
                &[("form_token", &token), ("merchant_id", &other_merchant)],
            )
            .await;
        assert_eq!(forged.status, 404);
        drop(engine);
        db.cleanup().await;
    }
}

/// The id after `prefix` in `page`, up to the next quote.
fn id_after(page: &Page, prefix: &str) -> String {
    let at = page
        .text
        .find(prefix)
        .unwrap_or_else(|| panic!("no {prefix} in {}", page.text))
        + prefix.len();
    let rest = &page.text[at..];
    rest[..rest.find(['"', '/']).unwrap()].to_owned()
}

#[tokio::test]
async fn an_agent_drafts_publishes_and_assigns_a_package_and_the_merchant_sees_what_it_holds() {
    const HELLO: &str = "com.trellis.hello";
    for db in databases().await {
        let engine = Engine::start(&db.url(), &[]);
        let world = World::build(&engine, &db.url()).await;
        let archive = trellis_tests::plugin_archive_bytes("plugins/hello", "trellis_plugin_hello");
        let partner = &world.partner;
        world
            .root
            .upload(&format!("/api/v1/partners/{partner}/plugins"), archive)
            .await
            .ok();
        world
            .root
            .post(
                &format!("/api/v1/partners/{partner}/plugins/{HELLO}/offer"),
                json!({"offered": true}),
            )
            .await
            .ok();
        world
            .root
            .post(
                "/api/v1/users",
                json!({"node_id": world.agent, "email": "agent@jade.test", "password": TEST_PASSWORD}),
            )
            .await
            .ok();

        let mut agent = signed_in(&engine, "agent@jade.test").await;
        let page = agent.get("/console/packages").await;
        assert_eq!(page.status, 200, "{page:?}");
        assert!(
            page.text.contains(&format!("value=\"{HELLO}\"")),
            "{}",
            page.text
        );
        let token = page.form_token();
        // A plugin the partner does not offer is refused, nothing made.
        let refused = agent
            .post(
                "/console/packages",
                &[
                    ("form_token", &token),
                    ("name", "Gold"),
                    ("plugins", "com.example.not-offered"),
                    ("validity_days", "30"),
                ],
            )
            .await;
        assert_eq!(refused.status, 422, "{refused:?}");
        assert!(refused.text.contains("value=\"Gold\""));
        let made = agent
            .post(
                "/console/packages",
                &[
                    ("form_token", &token),
                    ("name", "Gold 金卡"),
                    ("description", "Membership for tea shops"),
                    ("plugins", HELLO),
                    ("validity_days", "30"),
                    ("max_members", "500"),
                    ("events_per_day", ""),
                ],
            )
            .await;
        assert_eq!(made.status, 303, "{made:?}");
        let path = made.location.clone().unwrap();
        let package = path.rsplit('/').next().unwrap().to_owned();
        let page = agent.get(&path).await;
        assert!(page.text.contains("草稿，未发布"), "{}", page.text);
        // Not yet published: nothing to assign.
        assert!(!page.text.contains("/assign\""));
        let published = agent
            .post(&format!("{path}/publish"), &[("form_token", &token)])
            .await;
        assert_eq!(published.status, 303, "{published:?}");
        let page = agent.get(&path).await;
        assert!(page.text.contains("v1"));
        let merchant = id_after(&page, "<option value=\"");
        let assigned = agent
            .post(
                &format!("{path}/assign"),
                &[
                    ("form_token", &token),
                    ("merchant_id", &merchant),
                    ("ends_at", ""),
                ],
            )
            .await;
        assert_eq!(assigned.status, 303, "{assigned:?}");
        let api = world
            .root
            .get(&format!("/api/v1/merchants/{merchant}/entitlements"))
            .await
            .ok();
        assert_eq!(api.body[0]["plugin_id"], HELLO, "{api:?}");
        assert_eq!(api.body[0]["quotas"]["max_members"], 500);

        // The merchant sees what it holds and until when, and cannot change it.
        let mut owner = signed_in(&engine, "owner@jade.test").await;
        let held = owner.get("/console/assignments").await;
        assert_eq!(held.status, 200, "{held:?}");
        assert!(held.text.contains("Gold 金卡 v1"), "{}", held.text);
        assert!(held.text.contains("生效中"));
        assert!(!held.text.contains("/revoke\""));
        assert_eq!(owner.get("/console/packages").await.status, 403);
        let owner_token = held.form_token();
        let assignment = {
            let listed = agent.get("/console/assignments").await;
            id_after(&listed, "/console/assignments/")
        };
        let forged = owner
            .post(
                &format!("/console/assignments/{assignment}/revoke"),
                &[("form_token", &owner_token)],
            )
            .await;
        assert_eq!(forged.status, 403, "{forged:?}");

        // The agent renews to a chosen day, then revokes; the merchant's plugins stop at once.
        let renewed = agent
            .post(
                &format!("/console/assignments/{assignment}/renew"),
                &[("form_token", &token), ("ends_at", "2031-06-30")],
            )
            .await;
        assert_eq!(renewed.status, 303, "{renewed:?}");
        let listed = agent.get("/console/assignments").await;
        assert!(listed.text.contains("2031-06-30"), "{}", listed.text);
        let revoked = agent
            .post(
                &format!("/console/assignments/{assignment}/revoke"),
                &[("form_token", &token)],
            )
            .await;
        assert_eq!(revoked.status, 303, "{revoked:?}");
        let api = world
            .root
            .get(&format!("/api/v1/merchants/{merchant}/entitlements"))
            .await
            .ok();
        assert_eq!(api.body, json!([]), "{api:?}");
        // The draft is the agent's: another agent's package is not found.
        let other = create_node(
            &world.root,
            "agents",
            Some(partner),
            json!({"name": "West"}),
        )
        .await;
        world
            .root
            .post(
                "/api/v1/users",
                json!({"node_id": other, "email": "west@jade.test", "password": TEST_PASSWORD}),
            )
            .await
            .ok();
        let mut west = signed_in(&engine, "west@jade.test").await;
        assert_eq!(west.get(&path).await.status, 404);
        let west_token = west.get("/console").await.form_token();
        let hijack = west
            .post(
                &path,
                &[
                    ("form_token", &west_token),
                    ("name", "Mine"),
                    ("plugins", HELLO),
                    ("validity_days", "1"),
                ],
            )
            .await;
        assert_eq!(hijack.status, 404, "{hijack:?}");
        let _ = package;
        drop(engine);
        db.cleanup().await;
    }
}

#[tokio::test]
async fn a_partner_installs_and_offers_a_plugin_from_the_console_and_its_agent_sees_it() {
    const HELLO: &str = "com.trellis.hello";
    for db in databases().await {
        let engine = Engine::start(&db.url(), &[]);
        let world = World::build(&engine, &db.url()).await;
        let mut admin = signed_in(&engine, "admin@jade.test").await;
        let page = admin.get("/console/plugins").await;
        assert_eq!(page.status, 200, "{page:?}");
        assert!(page.text.contains("enctype=\"multipart/form-data\""));
        let token = page.form_token();
        // Not an archive: refused on the page, nothing installed.
        let junk = admin
            .upload(
                "/console/plugins/upload",
                &[("form_token", &token)],
                ("archive", b"not a tplug"),
            )
            .await;
        assert!((400..500).contains(&junk.status), "{junk:?}");
        assert!(junk.text.contains("role=\"alert\""), "{}", junk.text);
        // Without the page's token, even a real archive is refused.
        let archive = trellis_tests::plugin_archive_bytes("plugins/hello", "trellis_plugin_hello");
        let forged = admin
            .upload(
                "/console/plugins/upload",
                &[("form_token", "0")],
                ("archive", &archive),
            )
            .await;
        assert_eq!(forged.status, 403);
        let installed = admin
            .upload(
                "/console/plugins/upload",
                &[("form_token", &token)],
                ("archive", &archive),
            )
            .await;
        assert_eq!(installed.status, 303, "{installed:?}");
        let page = admin.get("/console/plugins").await;
        assert!(page.text.contains(HELLO), "{}", page.text);
        let offered = admin
            .post(
                &format!("/console/plugins/{HELLO}/offer"),
                &[("form_token", &token)],
            )
            .await;
        assert_eq!(offered.status, 303, "{offered:?}");
        let api = world
            .root
            .get(&format!(
                "/api/v1/partners/{}/plugins/{HELLO}",
                world.partner
            ))
            .await
            .ok();
        assert_eq!(api.body["offered"], true);
        let audit = admin.get("/console/audit").await;
        assert!(audit.text.contains("plugin.install") && audit.text.contains("plugin.offer"));

        // The agent sees what is offered, without the partner's buttons; it cannot post them.
        world
            .root
            .post(
                "/api/v1/users",
                json!({"node_id": world.agent, "email": "agent@jade.test", "password": TEST_PASSWORD}),
            )
            .await
            .ok();
        let mut agent = signed_in(&engine, "agent@jade.test").await;
        let page = agent.get("/console/plugins").await;
        assert_eq!(page.status, 200);
        assert!(page.text.contains(HELLO));
        assert!(!page.text.contains("/withdraw\""));
        let agent_token = page.form_token();
        let forged = agent
            .post(
                &format!("/console/plugins/{HELLO}/withdraw"),
                &[("form_token", &agent_token)],
            )
            .await;
        assert_eq!(forged.status, 403, "{forged:?}");
        let upload = agent
            .upload(
                "/console/plugins/upload",
                &[("form_token", &agent_token)],
                ("archive", &archive),
            )
            .await;
        assert!(upload.status == 403 || upload.status == 413, "{upload:?}");
        drop(engine);
        db.cleanup().await;
    }
}

#[tokio::test]
async fn signatures_are_required_from_the_console_deliveries_are_read_there_and_a_plugin_uninstalled()
 {
    const HELLO: &str = "com.trellis.hello";
    for db in databases().await {
        let engine = Engine::start(&db.url(), &[]);
        let world = World::build(&engine, &db.url()).await;
        let archive = trellis_tests::plugin_archive_bytes("plugins/hello", "trellis_plugin_hello");

        // The platform requires signed archives of the partner, from the partner's page.
        let mut root = Browser::new(&engine, CONSOLE);
        let signed = root
            .post(
                "/console/login",
                &[("email", ROOT_EMAIL), ("password", TEST_PASSWORD)],
            )
            .await;
        assert_eq!(signed.status, 303, "{signed:?}");
        let at = format!("/console/nodes/{}", world.partner);
        let page = root.get(&at).await;
        assert_eq!(page.status, 200, "{page:?}");
        assert!(
            page.text.contains(&format!("action=\"{at}/policy\"")),
            "{}",
            page.text
        );
        let token = page.form_token();
        // Requiring signatures without a key to trust is refused beside the form.
        let keyless = root
            .post(
                &format!("{at}/policy"),
                &[
                    ("form_token", &token),
                    ("require_signature", "1"),
                    ("trusted_keys", ""),
                ],
            )
            .await;
        assert_eq!(keyless.status, 422, "{keyless:?}");
        let (_, trusted) = trellis_engine::plugins::archive::keygen().unwrap();
        let required = root
            .post(
                &format!("{at}/policy"),
                &[
                    ("form_token", &token),
                    ("require_signature", "1"),
                    ("trusted_keys", &trusted),
                ],
            )
            .await;
        assert_eq!(required.status, 303, "{required:?}");
        let mut admin = signed_in(&engine, "admin@jade.test").await;
        let page = admin.get("/console/plugins").await;
        assert!(
            page.text
                .contains("name=\"require_signature\" value=\"1\" checked"),
            "{}",
            page.text
        );
        let token = page.form_token();
        let unsigned = admin
            .upload(
                "/console/plugins/upload",
                &[("form_token", &token)],
                ("archive", &archive),
            )
            .await;
        assert!((400..500).contains(&unsigned.status), "{unsigned:?}");
        assert!(unsigned.text.contains("role=\"alert\""));
        // The partner lifts it again itself, and installs.
        let lifted = admin
            .post(
                "/console/plugins/policy",
                &[("form_token", &token), ("trusted_keys", "")],
            )
            .await;
        assert_eq!(lifted.status, 303, "{lifted:?}");
        let installed = admin
            .upload(
                "/console/plugins/upload",
                &[("form_token", &token)],
                ("archive", &archive),
            )
            .await;
        assert_eq!(installed.status, 303, "{installed:?}");
        let audit = admin.get("/console/audit").await;
        assert!(audit.text.contains("plugin.policy"), "{}", audit.text);

        // An event for a merchant reaches the plugins that subscribe: the log shows it.
        let merchant = with_plugins(&world).await;
        world
            .root
            .post(
                &format!("/api/v1/merchants/{merchant}/events"),
                json!({"kind": "member.adjust", "payload": {"nothing": true}}),
            )
            .await
            .ok();
        let log = admin.get("/console/deliveries").await;
        assert_eq!(log.status, 200, "{log:?}");
        assert!(
            log.text.contains("member.adjust") && log.text.contains("com.trellis.membership"),
            "{}",
            log.text
        );
        assert!(
            log.text.contains(">Tea<"),
            "the merchant by name: {}",
            log.text
        );

        // Hello, held by no package, is uninstalled from the page.
        let gone = admin
            .post(
                &format!("/console/plugins/{HELLO}/uninstall"),
                &[("form_token", &token)],
            )
            .await;
        assert_eq!(gone.status, 303, "{gone:?}");
        let api = world
            .root
            .get(&format!(
                "/api/v1/partners/{}/plugins/{HELLO}",
                world.partner
            ))
            .await;
        assert!(
            api.status == 404 || api.body["status"] == "uninstalled",
            "{api:?}"
        );
        // A cashier has no policy to set.
        let mut cashier = signed_in(&engine, "cashier@jade.test").await;
        let token = cashier.get("/console").await.form_token();
        let refused = cashier
            .post(
                "/console/plugins/policy",
                &[("form_token", &token), ("require_signature", "1")],
            )
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
async fn a_merchant_sets_up_certificate_mode_in_the_console_and_a_pasted_key_is_never_shown() {
    let db = trellis_tests::sqlite();
    let engine = Engine::start(&db.url(), &[]);
    let world = World::build(&engine, &db.url()).await;
    let file = |name: &str| std::fs::read_to_string(format!("{VECTORS}{name}")).unwrap();
    let certs: serde_json::Value = serde_json::from_str(&file("certs.json")).unwrap();
    let mut owner = signed_in(&engine, "owner@jade.test").await;
    let page = owner.get("/console/alipay").await;
    let token = page.form_token();
    let merchant = {
        let at = page.text.find("name=\"merchant_id\" value=\"").unwrap() + 26;
        page.text[at..at + page.text[at..].find('"').unwrap()].to_owned()
    };
    let (private, app_cert, alipay_cert, root) = (
        file("keys/app_private_pkcs8.pem"),
        file("certs/app_cert.pem"),
        file("certs/alipay_cert.pem"),
        file("certs/root_bundle.pem"),
    );
    let form = |app_cert: &str| {
        vec![
            ("form_token", token.clone()),
            ("merchant_id", merchant.clone()),
            ("app_id", "2021004100000001".to_owned()),
            ("key_mode", "certificate".to_owned()),
            ("app_cert", app_cert.to_owned()),
            ("alipay_cert", alipay_cert.clone()),
            ("alipay_root_cert", root.clone()),
            ("app_private_key", private.clone()),
            ("gateway", "sandbox".to_owned()),
        ]
    };
    // An app certificate that is not the key's is refused beside the form; the pasted private
    // key is not sent back.
    let wrong: Vec<(&str, String)> = form(&alipay_cert);
    let pairs: Vec<(&str, &str)> = wrong.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let refused = owner.post("/console/alipay", &pairs).await;
    assert_eq!(refused.status, 422, "{refused:?}");
    assert!(refused.text.contains("app_cert"), "{}", refused.text);
    assert!(!refused.text.contains("PRIVATE KEY"), "{}", refused.text);
    let right = form(&app_cert);
    let pairs: Vec<(&str, &str)> = right.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let stored = owner.post("/console/alipay", &pairs).await;
    assert_eq!(stored.status, 303, "{stored:?}");
    let page = owner.get("/console/alipay").await;
    assert!(
        page.text.contains(certs["app_cert_sn"].as_str().unwrap()),
        "{}",
        page.text
    );
    assert!(page.text.contains("已就绪") && !page.text.contains("PRIVATE KEY"));
    let api = world
        .root
        .get(&format!("/api/v1/merchants/{merchant}/alipay/credentials"))
        .await
        .ok();
    assert_eq!(api.body["key_mode"], "certificate");
    assert_eq!(api.body["alipay_root_cert_sn"], certs["root_cert_sn"]);
    drop(engine);
    db.cleanup().await;
}
