//! Plugins in the live platform, over HTTP against the real binary: a partner installs and
//! offers a plugin, an agent packages and assigns it, merchants configure and use it, events
//! flow through the outbox, and everything stops for a merchant whose package ends.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use trellis_tests::{
    Api, Engine, create_node as node, create_partner, create_platform_admin, create_user as user,
    databases, eventually, plugin_archive_as_version, plugin_archive_bytes,
};

/// Events through the outbox.
mod delivery;
/// Installing plugins.
mod installing;

const PASSWORD: &str = "correct horse battery staple";
const ROOT: &str = "root@platform.test";
const CONSOLE: &str = "127.0.0.1";
const HELLO: &str = "com.trellis.hello";

/// Fast polling and retries so that tests wait for moments, not minutes.
const FAST: [(&str, &str); 3] = [
    ("TRELLIS_EVENTS__POLL_MS", "50"),
    ("TRELLIS_EVENTS__BACKOFF_FIRST_SECS", "1"),
    ("TRELLIS_EVENTS__LEASE_SECS", "5"),
];

struct World {
    root: Api,
    partner: String,
    agent: String,
    /// Merchants of the agent: two that get the package, one that never does.
    m1: String,
    m2: String,
    m_none: String,
    /// A merchant of another partner.
    foreign: String,
    partner_admin: Api,
    agent_admin: Api,
    owner1: Api,
    owner2: Api,
    owner_none: Api,
    foreign_partner_admin: Api,
}

async fn world(engine: &Engine, database_url: &str) -> World {
    create_platform_admin(database_url, ROOT, PASSWORD);
    let root = Api::new(engine, CONSOLE).login(ROOT, PASSWORD).await;
    let partner = create_partner(&root, "P1", "p1.test").await;
    let agent = node(&root, "agents", Some(&partner), json!({"name": "A1"})).await;
    let m1 = node(&root, "merchants", Some(&agent), json!({"name": "M1"})).await;
    let m2 = node(&root, "merchants", Some(&agent), json!({"name": "M2"})).await;
    let m_none = node(&root, "merchants", Some(&agent), json!({"name": "M3"})).await;
    let other = create_partner(&root, "P2", "p2.test").await;
    let other_agent = node(&root, "agents", Some(&other), json!({"name": "A2"})).await;
    let foreign = node(
        &root,
        "merchants",
        Some(&other_agent),
        json!({"name": "F1"}),
    )
    .await;
    World {
        partner_admin: user(engine, &root, &partner, "partner@p1.test", "p1.test").await,
        agent_admin: user(engine, &root, &agent, "agent@p1.test", "p1.test").await,
        owner1: user(engine, &root, &m1, "owner1@p1.test", "p1.test").await,
        owner2: user(engine, &root, &m2, "owner2@p1.test", "p1.test").await,
        owner_none: user(engine, &root, &m_none, "owner3@p1.test", "p1.test").await,
        foreign_partner_admin: user(engine, &root, &other, "partner@p2.test", "p2.test").await,
        root,
        partner,
        agent,
        m1,
        m2,
        m_none,
        foreign,
    }
}

async fn deliveries(api: &Api, merchant: &str, status: &str) -> Vec<Value> {
    let reply = api
        .get(&format!(
            "/api/v1/deliveries?merchant_id={merchant}&status={status}&per_page=200"
        ))
        .await
        .ok();
    reply.body["items"].as_array().cloned().unwrap_or_default()
}

fn stats_path(merchant: &str) -> String {
    format!("/api/v1/merchants/{merchant}/plugins/{HELLO}/stats")
}

#[tokio::test]
async fn a_partner_installs_an_agent_assigns_merchants_use_and_an_ended_package_stops_one_merchant_only()
 {
    for db in databases().await {
        let engine = Engine::start(&db.url(), &FAST);
        let w = world(&engine, &db.url()).await;
        let label = db.label();

        // --- the partner installs hello and offers it ---------------------------------------
        let archive = plugin_archive_bytes("plugins/hello", "trellis_plugin_hello");
        let reply = w
            .agent_admin
            .upload(
                &format!("/api/v1/partners/{}/plugins", w.partner),
                archive.clone(),
            )
            .await;
        assert_eq!(
            reply.status, 404,
            "{label}: an agent cannot reach the partner's catalog: {reply:?}"
        );
        let reply = w
            .foreign_partner_admin
            .upload(
                &format!("/api/v1/partners/{}/plugins", w.partner),
                archive.clone(),
            )
            .await;
        assert_eq!(
            reply.status, 404,
            "{label}: another partner cannot install here"
        );
        let installed = w
            .partner_admin
            .upload(
                &format!("/api/v1/partners/{}/plugins", w.partner),
                archive.clone(),
            )
            .await;
        assert_eq!(installed.status, 201, "{label}: {installed:?}");
        assert_eq!(installed.body["plugin_id"], HELLO);
        assert_eq!(installed.body["active_version"], "0.1.0");
        assert_eq!(installed.body["offered"], false);
        let garbage = w
            .partner_admin
            .upload(
                &format!("/api/v1/partners/{}/plugins", w.partner),
                b"not an archive".to_vec(),
            )
            .await;
        assert_eq!(garbage.status, 422, "{label}: {garbage:?}");
        assert_eq!(garbage.body["code"], "invalid_plugin");
        // An archive of several MiB (an interpreter's) is read up to the upload limit, not
        // refused at a smaller one: this one is read whole and refused for what it is.
        let big = w
            .partner_admin
            .upload(
                &format!("/api/v1/partners/{}/plugins", w.partner),
                vec![0x1f_u8; 6 << 20],
            )
            .await;
        assert_eq!(big.status, 422, "{label}: {big:?}");
        assert_eq!(big.body["code"], "invalid_plugin");

        // Not offered yet: agents see nothing and cannot package it.
        let seen = w.agent_admin.get("/api/v1/plugins").await.ok();
        assert_eq!(seen.body["total"], 0, "{label}");
        let spec = json!({
            "name": "Membership basic 会员基础版",
            "plugins": [HELLO],
            "validity_days": 30,
            "quotas": {"events_per_day": 1000},
            "list_price": {"amount": 9900, "currency": "CNY"}
        });
        let refused = w.agent_admin.post("/api/v1/packages", spec.clone()).await;
        assert_eq!(refused.status, 422, "{label}: {refused:?}");
        assert_eq!(refused.body["field"], "plugins");
        w.partner_admin
            .post(
                &format!("/api/v1/partners/{}/plugins/{HELLO}/offer", w.partner),
                json!({"offered": true}),
            )
            .await
            .ok();
        let seen = w.agent_admin.get("/api/v1/plugins").await.ok();
        assert_eq!(seen.body["items"][0]["plugin_id"], HELLO, "{label}");

        // --- the agent builds, publishes and assigns a package ------------------------------
        let package = w.agent_admin.post("/api/v1/packages", spec.clone()).await;
        assert_eq!(package.status, 201, "{label}: {package:?}");
        let package = package.id();
        let assign = format!("/api/v1/packages/{package}/assignments");
        let early = w
            .agent_admin
            .post(&assign, json!({"merchant_ids": [w.m1]}))
            .await;
        assert_eq!(early.status, 409, "{label}: unpublished: {early:?}");
        assert_eq!(early.body["code"], "package_unpublished");
        let published = w
            .agent_admin
            .post(&format!("/api/v1/packages/{package}/publish"), json!({}))
            .await
            .ok();
        assert_eq!(published.body["version"], 1);
        let foreign = w
            .agent_admin
            .post(&assign, json!({"merchant_ids": [w.foreign]}))
            .await;
        assert_eq!(
            foreign.status, 404,
            "{label}: another partner's merchant: {foreign:?}"
        );
        let merchant_self = w
            .owner_none
            .post(&assign, json!({"merchant_ids": [w.m_none]}))
            .await;
        assert_eq!(
            merchant_self.status, 403,
            "{label}: a merchant cannot assign packages to itself"
        );
        let assigned = w
            .agent_admin
            .post(&assign, json!({"merchant_ids": [w.m1, w.m2]}))
            .await;
        assert_eq!(assigned.status, 201, "{label}: {assigned:?}");
        let a1 = assigned.body[0]["id"].as_str().unwrap().to_owned();
        let a2 = assigned.body[1]["id"].as_str().unwrap().to_owned();
        assert_eq!(assigned.body[0]["state"], "active");

        // Editing the package does not change what merchants hold until it is republished.
        let mut edited = spec.clone();
        edited["name"] = json!("Membership plus");
        let draft = w
            .agent_admin
            .put(&format!("/api/v1/packages/{package}"), edited)
            .await
            .ok();
        assert_eq!(draft.body["unpublished_changes"], true);
        let held = w.owner1.get("/api/v1/assignments").await.ok();
        assert_eq!(
            held.body["items"].as_array().map(Vec::len),
            Some(1),
            "{label}: a merchant sees its own only"
        );
        assert_eq!(
            held.body["items"][0]["package_name"],
            "Membership basic 会员基础版"
        );

        // Partners see every assignment below them.
        let all = w.partner_admin.get("/api/v1/assignments").await.ok();
        assert_eq!(
            all.body["items"].as_array().map(Vec::len),
            Some(2),
            "{label}"
        );
        let none = w
            .foreign_partner_admin
            .get("/api/v1/assignments")
            .await
            .ok();
        assert_eq!(
            none.body["items"].as_array().map(Vec::len),
            Some(0),
            "{label}"
        );

        // --- the merchant configures it -----------------------------------------------------
        let config = format!("/api/v1/merchants/{}/plugin-configs/{HELLO}", w.m1);
        let bad = w.owner1.put(&config, json!({"greeting": 5})).await;
        assert_eq!(bad.status, 422, "{label}: {bad:?}");
        assert_eq!(bad.body["code"], "validation_failed");
        assert_eq!(bad.body["field"], "greeting");
        let blank = w.owner1.put(&config, json!({"greeting": "   "})).await;
        assert_eq!(blank.status, 422, "{label}: {blank:?}");
        assert_eq!(blank.body["code"], "config_rejected");
        assert_eq!(blank.body["field"], "greeting");
        let saved = w
            .owner1
            .put(
                &config,
                json!({"greeting": "  Welcome 欢迎 ", "milestone": 2}),
            )
            .await
            .ok();
        assert_eq!(saved.body["greeting"], "Welcome 欢迎");
        let not_entitled = w
            .owner_none
            .put(
                &format!("/api/v1/merchants/{}/plugin-configs/{HELLO}", w.m_none),
                json!({"greeting": "hi"}),
            )
            .await;
        assert_eq!(not_entitled.status, 403, "{label}: {not_entitled:?}");
        assert_eq!(not_entitled.body["code"], "not_entitled");
        let other_merchant = w
            .owner1
            .put(
                &format!("/api/v1/merchants/{}/plugin-configs/{HELLO}", w.m2),
                json!({"greeting": "hi"}),
            )
            .await;
        assert_eq!(
            other_merchant.status, 404,
            "{label}: another merchant is out of reach"
        );

        // --- the plugin's routes --------------------------------------------------------------
        let member = Api::new(&engine, "p1.test");
        let page = member.page(&format!("/m/{}/{HELLO}/", w.m1)).await;
        assert_eq!(page.status, 200, "{label}: {page:?}");
        assert!(
            page.body
                .as_str()
                .unwrap_or_default()
                .contains("Welcome 欢迎"),
            "{label}: {page:?}"
        );
        assert!(
            page.headers["content-security-policy"]
                .to_str()
                .unwrap()
                .contains("sandbox"),
            "{label}: plugin pages run sandboxed"
        );
        let console = Api::new(&engine, CONSOLE)
            .page(&format!("/m/{}/{HELLO}/", w.m1))
            .await;
        assert_eq!(
            console.status, 404,
            "{label}: member pages live on the partner's domain only"
        );
        let elsewhere = Api::new(&engine, "p2.test")
            .page(&format!("/m/{}/{HELLO}/", w.m1))
            .await;
        assert_eq!(elsewhere.status, 404, "{label}: another partner's domain");
        let unentitled_page = member.page(&format!("/m/{}/{HELLO}/", w.m_none)).await;
        assert_eq!(unentitled_page.status, 403, "{label}");
        assert!(
            unentitled_page.headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html"),
            "{label}: members get a themed page"
        );
        let stats = w.owner1.get(&stats_path(&w.m1)).await;
        assert_eq!(stats.status, 200, "{label}: {stats:?}");
        assert_eq!(stats.body["total"], 0);
        let not_a_route = w
            .owner1
            .get(&format!("/api/v1/merchants/{}/plugins/{HELLO}/", w.m1))
            .await;
        assert_eq!(
            not_a_route.status, 404,
            "{label}: a member page is not an admin route"
        );
        assert_eq!(
            w.owner_none.get(&stats_path(&w.m_none)).await.body["code"],
            "not_entitled"
        );
        assert_eq!(w.owner1.get(&stats_path(&w.foreign)).await.status, 404);

        // --- events flow ------------------------------------------------------------------------
        for merchant in [&w.m1, &w.m1, &w.m2, &w.m_none] {
            let sent = w
                .partner_admin
                .post(
                    &format!("/api/v1/merchants/{merchant}/events"),
                    json!({"kind": "member.activated", "payload": {"member": "m-1"}}),
                )
                .await;
            assert_eq!(sent.status, 202, "{label}: {sent:?}");
        }
        let refused = w
            .agent_admin
            .post(
                &format!("/api/v1/merchants/{}/events", w.m1),
                json!({"kind": "member.activated"}),
            )
            .await;
        assert_eq!(refused.status, 403, "{label}: agents do not inject events");
        let forged = w
            .partner_admin
            .post(
                &format!("/api/v1/merchants/{}/events", w.m1),
                json!({"kind": "payment.succeeded"}),
            )
            .await;
        assert_eq!(
            forged.status, 422,
            "{label}: only the engine sends payment events: {forged:?}"
        );
        assert_eq!(forged.body["field"], "kind");
        eventually(Duration::from_secs(30), "two deliveries to m1", || async {
            let done = deliveries(&w.owner1, &w.m1, "delivered").await;
            (done.len() == 2).then_some(()).ok_or(format!("{done:?}"))
        })
        .await;
        eventually(
            Duration::from_secs(30),
            "the unentitled merchant's skip",
            || async {
                let skipped = deliveries(&w.owner_none, &w.m_none, "skipped").await;
                match skipped.first() {
                    Some(d) if d["last_error"] == "not_entitled" => Ok(()),
                    _ => Err(format!("{skipped:?}")),
                }
            },
        )
        .await;
        assert_eq!(
            w.owner1.get(&stats_path(&w.m1)).await.body["total"],
            2,
            "{label}"
        );
        let delivered = deliveries(&w.owner1, &w.m1, "delivered").await;
        assert!(
            delivered[0]["latency_ms"].as_i64().is_some(),
            "{label}: {delivered:?}"
        );
        assert_eq!(delivered[0]["attempts"], 1);
        // A merchant sees its own log only.
        let reply = w
            .owner1
            .get(&format!("/api/v1/deliveries?merchant_id={}", w.m2))
            .await;
        assert_eq!(reply.status, 404, "{label}");
        let mine = w.owner1.get("/api/v1/deliveries?per_page=200").await.ok();
        assert!(
            mine.body["items"]
                .as_array()
                .unwrap()
                .iter()
                .all(|d| d["merchant_id"] == w.m1.as_str()),
            "{label}: {mine:?}"
        );

        // Manual redelivery: hello counts it again (documented: its tally is not idempotent).
        let id = delivered[0]["id"].as_str().unwrap();
        let again = w
            .owner1
            .post(&format!("/api/v1/deliveries/{id}/redeliver"), json!({}))
            .await
            .ok();
        assert_eq!(again.body["status"], "pending");
        eventually(Duration::from_secs(30), "the redelivery", || async {
            let total = w.owner1.get(&stats_path(&w.m1)).await.body["total"].clone();
            (total == 3).then_some(()).ok_or(format!("total {total}"))
        })
        .await;

        // --- versions: upgrade without moving merchants, activate, roll back -------------------
        let v2 = plugin_archive_as_version("plugins/hello", "trellis_plugin_hello", "0.2.0");
        let upgraded = w
            .partner_admin
            .upload(&format!("/api/v1/partners/{}/plugins", w.partner), v2)
            .await;
        assert_eq!(upgraded.status, 201, "{label}: {upgraded:?}");
        assert_eq!(
            upgraded.body["active_version"], "0.1.0",
            "{label}: merchants stay until moved"
        );
        assert_eq!(upgraded.body["versions"].as_array().map(Vec::len), Some(2));
        let moved = w
            .partner_admin
            .post(
                &format!("/api/v1/partners/{}/plugins/{HELLO}/activate", w.partner),
                json!({"version": "0.2.0"}),
            )
            .await
            .ok();
        assert_eq!(moved.body["active_version"], "0.2.0");
        // The kv data survives the upgrade: the installation is the same.
        assert_eq!(
            w.owner1.get(&stats_path(&w.m1)).await.body["total"],
            3,
            "{label}"
        );
        let back = w
            .partner_admin
            .post(
                &format!("/api/v1/partners/{}/plugins/{HELLO}/rollback", w.partner),
                json!({}),
            )
            .await
            .ok();
        assert_eq!(back.body["active_version"], "0.1.0");
        let same = plugin_archive_as_version("plugins/hello", "trellis_plugin_hello", "0.2.0");
        let reinstall = w
            .partner_admin
            .upload(&format!("/api/v1/partners/{}/plugins", w.partner), same)
            .await;
        assert_eq!(
            reinstall.status, 201,
            "{label}: the same archive again is idempotent: {reinstall:?}"
        );
        assert_eq!(reinstall.body["versions"].as_array().map(Vec::len), Some(2));

        // --- republishing: merchants keep their version until renewed -------------------------
        let v2 = w
            .agent_admin
            .post(&format!("/api/v1/packages/{package}/publish"), json!({}))
            .await
            .ok();
        assert_eq!(v2.body["version"], 2);
        let held = w.owner1.get("/api/v1/assignments").await.ok();
        assert_eq!(held.body["items"][0]["package_version"], 1, "{label}");
        assert_eq!(
            held.body["items"][0]["package_name"],
            "Membership basic 会员基础版"
        );

        // --- the package ends for m1 only -----------------------------------------------------
        let soon = (chrono::Utc::now() + chrono::Duration::seconds(1)).to_rfc3339();
        let renewed = w
            .agent_admin
            .post(
                &format!("/api/v1/assignments/{a1}/renew"),
                json!({"ends_at": soon}),
            )
            .await
            .ok();
        assert_eq!(
            renewed.body["package_version"], 2,
            "{label}: renewal moves to the latest version"
        );
        assert_eq!(renewed.body["package_name"], "Membership plus");
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let expired = w.owner1.get(&stats_path(&w.m1)).await;
        assert_eq!(expired.status, 403, "{label}: {expired:?}");
        assert_eq!(expired.body["code"], "package_expired");
        assert_eq!(w.owner1.get(&config).await.body["code"], "package_expired");
        let page = member.page(&format!("/m/{}/{HELLO}/", w.m1)).await;
        assert_eq!(page.status, 403, "{label}");
        assert!(
            page.body.as_str().unwrap_or_default().contains("<html"),
            "{label}: a themed page"
        );
        assert_eq!(
            w.owner2.get(&stats_path(&w.m2)).await.status,
            200,
            "{label}: m2 keeps it"
        );
        for merchant in [&w.m1, &w.m2] {
            w.partner_admin
                .post(
                    &format!("/api/v1/merchants/{merchant}/events"),
                    json!({"kind": "member.activated"}),
                )
                .await
                .ok();
        }
        eventually(
            Duration::from_secs(30),
            "m1's skip after expiry",
            || async {
                let skipped = deliveries(&w.owner1, &w.m1, "skipped").await;
                match skipped.first() {
                    Some(d) if d["last_error"] == "package_expired" => Ok(()),
                    _ => Err(format!("{skipped:?}")),
                }
            },
        )
        .await;
        eventually(Duration::from_secs(30), "m2's second delivery", || async {
            let done = deliveries(&w.owner2, &w.m2, "delivered").await;
            (done.len() == 2).then_some(()).ok_or(format!("{done:?}"))
        })
        .await;

        // Renewal restores it; revocation ends m2's.
        w.agent_admin
            .post(&format!("/api/v1/assignments/{a1}/renew"), json!({}))
            .await
            .ok();
        assert_eq!(
            w.owner1.get(&stats_path(&w.m1)).await.status,
            200,
            "{label}"
        );
        let revoked = w
            .agent_admin
            .post(&format!("/api/v1/assignments/{a2}/revoke"), json!({}))
            .await
            .ok();
        assert_eq!(revoked.body["state"], "revoked");
        assert_eq!(
            w.owner2.get(&stats_path(&w.m2)).await.body["code"],
            "package_expired"
        );

        // --- uninstall is refused while in use, unless forced ---------------------------------
        let uninstall = format!("/api/v1/partners/{}/plugins/{HELLO}", w.partner);
        let busy = w.partner_admin.delete(&uninstall).await;
        assert_eq!(busy.status, 409, "{label}: {busy:?}");
        assert_eq!(busy.body["code"], "plugin_in_use");
        let gone = w
            .partner_admin
            .delete(&format!("{uninstall}?force=true"))
            .await
            .ok();
        assert_eq!(gone.body["status"], "uninstalled");
        assert_eq!(
            w.owner1.get(&stats_path(&w.m1)).await.status,
            404,
            "{label}"
        );

        // --- everything above is audited ------------------------------------------------------
        let audit = w.partner_admin.get("/api/v1/audit?per_page=200").await.ok();
        let actions: Vec<&str> = audit.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["action"].as_str())
            .collect();
        for expected in [
            "plugin.install",
            "plugin.upgrade",
            "plugin.offer",
            "plugin.activate",
            "plugin.rollback",
            "plugin.uninstall",
            "package.create",
            "package.update",
            "package.publish",
            "assignment.create",
            "assignment.renew",
            "assignment.revoke",
            "plugin_config.update",
            "delivery.redeliver",
        ] {
            assert!(
                actions.contains(&expected),
                "{label}: {expected} missing from {actions:?}"
            );
        }
        let _ = (&w.root, &w.agent);
        drop(engine);
        db.cleanup().await;
    }
}

async fn count(conn: &sea_orm::DatabaseConnection, sql: &str) -> i64 {
    use sea_orm::ConnectionTrait;
    let row = conn
        .query_one_raw(sea_orm::Statement::from_string(
            conn.get_database_backend(),
            sql,
        ))
        .await
        .unwrap()
        .unwrap();
    row.try_get_by_index::<i64>(0).unwrap()
}

/// Over a random tree of two partners, two agents each and two merchants per agent, with
/// random assignments (current, ended, revoked or none), every merchant owner reaches a
/// plugin's admin route, its configuration, its public page and its events exactly when the
/// merchant is its own and entitled now — and never another merchant's.
#[tokio::test]
async fn no_merchant_reaches_configures_or_receives_a_plugin_it_is_not_entitled_to() {
    for db in databases().await {
        let seed = fastrand::u64(..);
        let mut rng = fastrand::Rng::with_seed(seed);
        let label = format!("{} (seed {seed})", db.label());
        let engine = Engine::start(&db.url(), &FAST);
        create_platform_admin(&db.url(), ROOT, PASSWORD);
        let root = Api::new(&engine, CONSOLE).login(ROOT, PASSWORD).await;
        let archive = plugin_archive_bytes("plugins/hello", "trellis_plugin_hello");
        // (merchant id, partner index, entitled, owner client)
        let mut merchants: Vec<(String, usize, bool, Api)> = Vec::new();
        let mut partners = Vec::new();
        for p in 0..2 {
            let domain = format!("p{p}.test");
            let partner = node(
                &root,
                "partners",
                None,
                json!({"name": format!("P{p}"), "domains": [domain]}),
            )
            .await;
            root.upload(
                &format!("/api/v1/partners/{partner}/plugins"),
                archive.clone(),
            )
            .await
            .ok();
            root.post(
                &format!("/api/v1/partners/{partner}/plugins/{HELLO}/offer"),
                json!({"offered": true}),
            )
            .await
            .ok();
            for a in 0..2 {
                let agent = node(
                    &root,
                    "agents",
                    Some(&partner),
                    json!({"name": format!("A{p}{a}")}),
                )
                .await;
                let package = root
                    .post(
                        "/api/v1/packages",
                        json!({"agent_id": agent, "name": "Pkg", "plugins": [HELLO], "validity_days": 30}),
                    )
                    .await
                    .ok()
                    .id();
                root.post(&format!("/api/v1/packages/{package}/publish"), json!({}))
                    .await
                    .ok();
                for m in 0..2 {
                    let merchant = node(
                        &root,
                        "merchants",
                        Some(&agent),
                        json!({"name": format!("M{p}{a}{m}")}),
                    )
                    .await;
                    let now = chrono::Utc::now();
                    let entitled = match rng.u8(0..4) {
                        0 => false,
                        1 => {
                            // Ended yesterday.
                            let start = (now - chrono::Duration::days(10)).to_rfc3339();
                            let end = (now - chrono::Duration::days(1)).to_rfc3339();
                            root.post(
                                &format!("/api/v1/packages/{package}/assignments"),
                                json!({"merchant_ids": [merchant], "starts_at": start, "ends_at": end}),
                            )
                            .await
                            .ok();
                            false
                        }
                        2 => {
                            let made = root
                                .post(
                                    &format!("/api/v1/packages/{package}/assignments"),
                                    json!({"merchant_ids": [merchant]}),
                                )
                                .await
                                .ok();
                            let id = made.body[0]["id"].as_str().unwrap().to_owned();
                            root.post(&format!("/api/v1/assignments/{id}/revoke"), json!({}))
                                .await
                                .ok();
                            false
                        }
                        _ => {
                            root.post(
                                &format!("/api/v1/packages/{package}/assignments"),
                                json!({"merchant_ids": [merchant]}),
                            )
                            .await
                            .ok();
                            true
                        }
                    };
                    let email = format!("owner-{p}{a}{m}@test.test");
                    let owner = user(&engine, &root, &merchant, &email, &domain).await;
                    merchants.push((merchant, p, entitled, owner));
                }
            }
            partners.push(partner);
        }

        for (mine, my_partner, _, owner) in &merchants {
            for (target, partner, entitled, _) in &merchants {
                let status = owner.get(&stats_path(target)).await.status;
                let config = owner
                    .put(
                        &format!("/api/v1/merchants/{target}/plugin-configs/{HELLO}"),
                        json!({"greeting": "hi"}),
                    )
                    .await
                    .status;
                let page = Api::new(&engine, &format!("p{my_partner}.test"))
                    .get(&format!("/m/{target}/{HELLO}/"))
                    .await
                    .status;
                let expected_admin = match (mine == target, *entitled) {
                    (false, _) => 404,
                    (true, true) => 200,
                    (true, false) => 403,
                };
                assert_eq!(
                    status, expected_admin,
                    "{label}: route of {target} as owner of {mine}"
                );
                assert_eq!(
                    config, expected_admin,
                    "{label}: config of {target} as owner of {mine}"
                );
                let expected_page = match (partner == my_partner, *entitled) {
                    (false, _) => 404,
                    (true, true) => 200,
                    (true, false) => 403,
                };
                assert_eq!(
                    page, expected_page,
                    "{label}: page of {target} on p{my_partner}.test"
                );
            }
        }

        // One event for every merchant: delivered exactly to the entitled ones, skipped for the
        // rest, and each owner's log holds its own merchant's delivery only.
        for (merchant, _, _, _) in &merchants {
            root.post(
                &format!("/api/v1/merchants/{merchant}/events"),
                json!({"kind": "member.activated"}),
            )
            .await
            .ok();
        }
        for (merchant, _, entitled, owner) in &merchants {
            let want = if *entitled { "delivered" } else { "skipped" };
            eventually(
                Duration::from_secs(30),
                "the merchant's delivery",
                || async {
                    let log = owner.get("/api/v1/deliveries").await.ok();
                    let items = log.body["items"].as_array().cloned().unwrap_or_default();
                    match items.as_slice() {
                        [only]
                            if only["status"] == want
                                && only["merchant_id"] == merchant.as_str() =>
                        {
                            Ok(())
                        }
                        other => Err(format!("{label}: {other:?}")),
                    }
                },
            )
            .await;
            let total = owner.get(&stats_path(merchant)).await;
            if *entitled {
                assert_eq!(total.body["total"], 1, "{label}");
            }
        }
        let _ = partners;
        drop(engine);
        db.cleanup().await;
    }
}
