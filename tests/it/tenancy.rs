//! Tenancy, accounts and RBAC through the HTTP API of the real binary, on SQLite and PostgreSQL.

use std::time::{Duration, Instant};

use serde_json::json;
use trellis_engine::rbac::{Action, allows};
use trellis_engine::tenancy::{NodeKind, Role};
use trellis_tests::{Api, Engine, create_platform_admin, databases};

/// Signing in: throttling, sessions, API keys.
mod accounts;
/// Every cell of the permission matrix.
mod matrix;

const PASSWORD: &str = "correct horse battery staple";
const ROOT_EMAIL: &str = "root@platform.test";
const CONSOLE: &str = "127.0.0.1";

/// Two partners, each with an agent → merchant → store chain, and an account of every role on
/// the first chain, each signed in on its partner's domain.
struct Tree {
    root: Api,
    /// Ids of partner, agent, merchant, store on the first chain; the second chain's too.
    chain: [String; 4],
    other: [String; 4],
    /// A signed-in client per role, on the first chain.
    clients: Vec<(Role, Api)>,
    /// Made on first use by the plugin actions: hello installed and offered by the first
    /// partner, a published package assigned to the first merchant, one delivery to it.
    plugins: tokio::sync::OnceCell<PluginFixture>,
    /// Made on first use by the payment actions: a payment of the first store, paid.
    paid: tokio::sync::OnceCell<String>,
}

struct PluginFixture {
    package: String,
    delivery: String,
}

const HELLO: &str = "com.trellis.hello";
/// A fixture with a route for every admin audience (`/staff`, `/headers`, `/agent`, `/partner`).
const ABUSE: &str = "test.trellis.abuse";

const SANDBOX_APP: &str = "2021004199990099";
const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../core/alipay/tests/vectors/");

impl Tree {
    /// The first merchant's Alipay app, at the engine's sandbox: stored again before each
    /// payment action, because the key-pair actions of the matrix replace its key.
    async fn wire_alipay(&self, engine: &Engine) {
        let pem = std::fs::read_to_string(format!("{VECTORS}keys/app_private_pkcs8.pem")).unwrap();
        let key =
            trellis_engine::alipay::PrivateKey::parse(&secrecy::SecretString::from(pem.clone()))
                .unwrap();
        let registered = trellis_tests::register_sandbox_app(
            engine,
            json!({"app_id": SANDBOX_APP, "app_public_key": key.public_key().to_base64()}),
        )
        .await;
        self.root
            .put(
                &format!("/api/v1/merchants/{}/alipay/credentials", self.chain[2]),
                json!({"app_id": SANDBOX_APP, "key_mode": "public_key", "app_private_key": pem,
                    "alipay_public_key": registered["alipay_public_key"], "gateway": "custom",
                    "gateway_url": registered["gateway_url"]}),
            )
            .await
            .ok();
    }

    /// A payment of the first store that a consumer paid (10,000 fen: room for every
    /// refund cell).
    async fn paid(&self, engine: &Engine) -> &str {
        self.paid
            .get_or_init(|| async {
                let created = self
                    .root
                    .post(
                        &format!("/api/v1/stores/{}/payments", self.chain[3]),
                        json!({"scene": "precreate", "amount_fen": 10_000, "subject": "matrix"}),
                    )
                    .await
                    .ok();
                let id = created.body["id"].as_str().unwrap().to_owned();
                let out_trade_no = created.body["out_trade_no"].as_str().unwrap().to_owned();
                let paid: serde_json::Value = trellis_tests::client()
                    .post(engine.url("/sandbox/consumers/matrix/pay"))
                    .json(&json!({"app_id": SANDBOX_APP, "out_trade_no": out_trade_no}))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                assert_eq!(paid["trade_status"], "TRADE_SUCCESS", "{paid}");
                trellis_tests::eventually(
                    Duration::from_secs(20),
                    "the payment is paid",
                    || async {
                        let now = self.root.get(&format!("/api/v1/payments/{id}")).await.ok();
                        match now.body["status"].as_str() {
                            Some("succeeded") => Ok(()),
                            other => Err(format!("{other:?}")),
                        }
                    },
                )
                .await;
                id
            })
            .await
    }

    async fn plugins(&self) -> &PluginFixture {
        self.plugins
            .get_or_init(|| async {
                let [partner, agent, merchant, _] = &self.chain;
                for (dir, lib, id) in [
                    ("plugins/hello", "trellis_plugin_hello", HELLO),
                    ("tests/plugins/abuse", "trellis_fixture_abuse", ABUSE),
                ] {
                    let archive = trellis_tests::plugin_archive_bytes(dir, lib);
                    self.root
                        .upload(&format!("/api/v1/partners/{partner}/plugins"), archive)
                        .await
                        .ok();
                    self.root
                        .post(
                            &format!("/api/v1/partners/{partner}/plugins/{id}/offer"),
                            json!({"offered": true}),
                        )
                        .await
                        .ok();
                }
                let package = self
                    .root
                    .post(
                        "/api/v1/packages",
                        json!({"agent_id": agent, "name": "Matrix", "plugins": [HELLO, ABUSE], "validity_days": 30}),
                    )
                    .await
                    .ok()
                    .id();
                self.root
                    .post(&format!("/api/v1/packages/{package}/publish"), json!({}))
                    .await
                    .ok();
                self.root
                    .post(
                        &format!("/api/v1/packages/{package}/assignments"),
                        json!({"merchant_ids": [merchant]}),
                    )
                    .await
                    .ok();
                self.root
                    .post(
                        &format!("/api/v1/merchants/{merchant}/events"),
                        json!({"kind": "member.activated"}),
                    )
                    .await
                    .ok();
                let deliveries = self.root.get("/api/v1/deliveries").await.ok();
                let delivery = deliveries.body["items"][0]["id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                PluginFixture { package, delivery }
            })
            .await
    }
}

impl Tree {
    async fn build(engine: &Engine, database_url: &str) -> Tree {
        create_platform_admin(database_url, ROOT_EMAIL, PASSWORD);
        let root = Api::new(engine, CONSOLE).login(ROOT_EMAIL, PASSWORD).await;
        let chain = Self::chain(&root, "p1.test", "one").await;
        let other = Self::chain(&root, "p2.test", "two").await;
        root.post(
            &format!("/api/v1/merchants/{}/alipay/keypair", chain[2]),
            json!({}),
        )
        .await
        .ok();
        let mut clients = vec![(Role::PlatformAdmin, root.clone())];
        for (role, node) in [
            Role::PartnerAdmin,
            Role::AgentAdmin,
            Role::MerchantOwner,
            Role::MerchantStaff,
        ]
        .into_iter()
        .zip(&chain)
        {
            let email = format!("{}@one.test", role.as_str());
            root.post(
                "/api/v1/users",
                json!({"node_id": node, "email": email, "password": PASSWORD}),
            )
            .await
            .ok();
            clients.push((
                role,
                Api::new(engine, "p1.test").login(&email, PASSWORD).await,
            ));
        }
        Tree {
            root,
            chain,
            other,
            clients,
            plugins: tokio::sync::OnceCell::new(),
            paid: tokio::sync::OnceCell::new(),
        }
    }

    async fn chain(root: &Api, domain: &str, tag: &str) -> [String; 4] {
        let partner = root
            .post(
                "/api/v1/partners",
                json!({"name": format!("Partner {tag}"), "domains": [domain]}),
            )
            .await
            .ok()
            .id();
        let agent = root
            .post(
                "/api/v1/agents",
                json!({"parent_id": partner, "name": format!("Agent {tag}")}),
            )
            .await
            .ok()
            .id();
        let merchant = root
            .post(
                "/api/v1/merchants",
                json!({"parent_id": agent, "name": format!("Merchant {tag}")}),
            )
            .await
            .ok()
            .id();
        let store = root
            .post(
                "/api/v1/stores",
                json!({"parent_id": merchant, "name": format!("Store {tag}")}),
            )
            .await
            .ok()
            .id();
        [partner, agent, merchant, store]
    }

    fn client(&self, role: Role) -> &Api {
        &self
            .clients
            .iter()
            .find(|(r, _)| *r == role)
            .expect("every role has a client")
            .1
    }

    /// The node a role stands on (the platform admin: none of the chain's).
    fn node_of(&self, role: Role) -> Option<&str> {
        match role {
            Role::PlatformAdmin => None,
            other => Some(self.chain[other.kind().depth() - 1].as_str()),
        }
    }
}

#[tokio::test]
async fn a_partner_never_sees_another_partners_nodes_accounts_or_audit() {
    for db in databases().await {
        let engine = Engine::start(&db.url(), &[]);
        let tree = Tree::build(&engine, &db.url()).await;
        let partner = tree.client(Role::PartnerAdmin);
        let [p2, a2, m2, s2] = &tree.other;
        for (plural, id) in [
            ("partners", p2),
            ("agents", a2),
            ("merchants", m2),
            ("stores", s2),
        ] {
            let reply = partner.get(&format!("/api/v1/{plural}/{id}")).await;
            assert_eq!(
                reply.status, 404,
                "{plural} of the other partner: {reply:?}"
            );
            assert_eq!(reply.body["code"], "not_found");
            let reply = partner
                .patch(&format!("/api/v1/{plural}/{id}"), json!({"name": "x"}))
                .await;
            assert_eq!(reply.status, 404);
        }
        // A client-supplied parent outside the subtree is refused as unknown.
        let reply = partner
            .post(
                "/api/v1/merchants",
                json!({"parent_id": a2, "name": "sneaky"}),
            )
            .await;
        assert_eq!(reply.status, 404, "{reply:?}");
        let reply = partner
            .post(
                "/api/v1/users",
                json!({"node_id": m2, "email": "x@two.test", "password": PASSWORD}),
            )
            .await;
        assert_eq!(reply.status, 404, "{reply:?}");
        // Lists hold only the caller's subtree.
        let merchants = partner.get("/api/v1/merchants").await.ok();
        let ids: Vec<&str> = merchants.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, [tree.chain[2].as_str()]);
        let users = partner.get("/api/v1/users").await.ok();
        assert!(
            users.body["items"]
                .as_array()
                .unwrap()
                .iter()
                .all(|u| u["email"].as_str().unwrap().ends_with("@one.test"))
        );
        // Work done on partner two is filed there, out of partner one's sight.
        tree.root
            .patch(
                &format!("/api/v1/merchants/{m2}"),
                json!({"name": "Renamed two"}),
            )
            .await
            .ok();
        let audit = partner.get("/api/v1/audit?per_page=200").await.ok();
        assert!(audit.body["total"].as_u64().unwrap() > 0);
        for entry in audit.body["items"].as_array().unwrap() {
            let filed = entry["node_id"].as_str().unwrap_or_default();
            assert!(!tree.other.iter().any(|id| id == filed), "{entry}");
        }
        // The audit log of the root shows the refused probes, filed under the prober.
        let denied = tree.root.get("/api/v1/audit?outcome=denied").await.ok();
        assert!(
            denied.body["total"].as_u64().unwrap() >= 2,
            "{:?}",
            denied.body
        );
        drop(engine);
        db.cleanup().await;
    }
}

#[tokio::test]
async fn a_token_from_one_partner_is_rejected_on_another_partners_domain() {
    let db = trellis_tests::sqlite();
    let engine = Engine::start(&db.url(), &[]);
    let tree = Tree::build(&engine, &db.url()).await;
    let owner = tree.client(Role::MerchantOwner);
    assert_eq!(owner.get("/api/v1/me").await.status, 200);
    assert_eq!(owner.on_host("p2.test").get("/api/v1/me").await.status, 401);
    assert_eq!(owner.on_host(CONSOLE).get("/api/v1/me").await.status, 401);
    // And an account of partner one cannot sign in on partner two's domain at all.
    let reply = Api::new(&engine, "p2.test")
        .post(
            "/api/v1/auth/login",
            json!({"email": "merchant_owner@one.test", "password": PASSWORD}),
        )
        .await;
    assert_eq!(reply.status, 401);
    // The root's console token does not work on a partner domain either.
    assert_eq!(
        tree.root.on_host("p1.test").get("/api/v1/me").await.status,
        401
    );
}

#[tokio::test]
async fn suspending_a_node_blocks_sign_in_and_api_use_below_it() {
    let db = trellis_tests::sqlite();
    let engine = Engine::start(&db.url(), &[]);
    let tree = Tree::build(&engine, &db.url()).await;
    let agent_id = &tree.chain[1];
    let staff = tree.client(Role::MerchantStaff);
    let partner = tree.client(Role::PartnerAdmin);
    assert_eq!(staff.get("/api/v1/me").await.status, 200);
    partner
        .post(&format!("/api/v1/agents/{agent_id}/suspend"), json!({}))
        .await
        .ok();
    let reply = staff.get("/api/v1/me").await;
    assert_eq!(reply.status, 403);
    assert_eq!(reply.body["code"], "suspended");
    // Sign-in below it fails as a wrong password would: the answer reveals nothing.
    let reply = Api::new(&engine, "p1.test")
        .post(
            "/api/v1/auth/login",
            json!({"email": "merchant_owner@one.test", "password": PASSWORD}),
        )
        .await;
    assert_eq!(reply.status, 401, "{reply:?}");
    assert_eq!(reply.body["code"], "invalid_credentials");
    // Above and beside the suspended node, work goes on.
    assert_eq!(partner.get("/api/v1/me").await.status, 200);
    partner
        .post(&format!("/api/v1/agents/{agent_id}/resume"), json!({}))
        .await
        .ok();
    assert_eq!(staff.get("/api/v1/me").await.status, 200);
}

#[tokio::test]
async fn validation_errors_are_422_naming_the_field_and_lists_page() {
    let db = trellis_tests::sqlite();
    let engine = Engine::start(&db.url(), &[]);
    let tree = Tree::build(&engine, &db.url()).await;
    let root = &tree.root;
    for (path, body, field) in [
        ("/api/v1/partners", json!({"name": "  "}), "name"),
        (
            "/api/v1/partners",
            json!({"name": "ok", "domains": ["not a domain"]}),
            "domains",
        ),
        (
            "/api/v1/partners",
            json!({"name": "ok", "theme": "Bad Theme!"}),
            "theme",
        ),
        (
            "/api/v1/merchants",
            json!({"name": "no parent"}),
            "parent_id",
        ),
        (
            "/api/v1/users",
            json!({"email": "nope", "password": PASSWORD}),
            "email",
        ),
        (
            "/api/v1/users",
            json!({"email": "short@x.test", "password": "short"}),
            "password",
        ),
        (
            "/api/v1/users",
            json!({"node_id": tree.chain[0], "email": "r@x.test", "password": PASSWORD, "role": "merchant_owner"}),
            "role",
        ),
        (
            "/api/v1/agents",
            json!({"parent_id": tree.chain[0], "name": "x", "theme": "t"}),
            "theme",
        ),
    ] {
        let reply = root.post(path, body.clone()).await;
        assert_eq!(reply.status, 422, "{path} {body}: {reply:?}");
        assert_eq!(reply.body["code"], "validation_failed");
        assert_eq!(reply.body["field"], field, "{path} {body}");
    }
    let reply = root
        .post("/api/v1/partners", json!({"nom": "missing name"}))
        .await;
    assert_eq!(reply.status, 422);
    let reply = root
        .send(reqwest::Method::POST, "/api/v1/partners", None)
        .await;
    assert_eq!(reply.status, 400);
    let reply = root
        .post(
            "/api/v1/partners",
            json!({"name": "dup", "domains": ["p1.test"]}),
        )
        .await;
    assert_eq!(reply.status, 409);
    assert_eq!(reply.body["code"], "domain_taken");
    let reply = root
        .post(
            "/api/v1/users",
            json!({"email": ROOT_EMAIL, "password": PASSWORD}),
        )
        .await;
    assert_eq!(reply.status, 409);

    for n in 0..5 {
        root.post(
            "/api/v1/stores",
            json!({"parent_id": tree.chain[2], "name": format!("Branch {n}")}),
        )
        .await
        .ok();
    }
    let page = root
        .get(&format!(
            "/api/v1/stores?parent_id={}&per_page=2&page=2",
            tree.chain[2]
        ))
        .await
        .ok();
    assert_eq!(page.body["total"], 6);
    assert_eq!(page.body["per_page"], 2);
    assert_eq!(page.body["items"].as_array().unwrap().len(), 2);
    let found = root.get("/api/v1/stores?q=Branch%203").await.ok();
    assert_eq!(found.body["total"], 1);
    assert_eq!(root.get("/api/v1/stores?per_page=abc").await.status, 422);
}

#[tokio::test]
async fn state_changes_are_audited_with_actor_target_and_request_id() {
    let db = trellis_tests::sqlite();
    let engine = Engine::start(&db.url(), &[]);
    let tree = Tree::build(&engine, &db.url()).await;
    let agent = tree.client(Role::AgentAdmin);
    let created = agent
        .send(
            reqwest::Method::POST,
            "/api/v1/merchants",
            Some(json!({"name": "Audited"})),
        )
        .await
        .ok();
    let request_id = created.headers["x-request-id"].to_str().unwrap().to_owned();
    let merchant = created.id();
    let denied = agent
        .post(
            &format!("/api/v1/agents/{}/suspend", tree.chain[1]),
            json!({}),
        )
        .await;
    assert_eq!(denied.status, 403);

    let log = agent.get("/api/v1/audit?action=merchant.create").await.ok();
    let entry = log.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["target_id"] == merchant.as_str())
        .expect("audited");
    assert_eq!(entry["actor"], "agent_admin@one.test");
    assert_eq!(entry["outcome"], "success");
    assert_eq!(entry["request_id"], request_id.as_str());
    let refused = agent.get("/api/v1/audit?outcome=denied").await.ok();
    assert!(
        refused.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "agent.suspend")
    );
    // Those above see it; those below and beside do not.
    let partner_view = tree
        .client(Role::PartnerAdmin)
        .get("/api/v1/audit?action=merchant.create")
        .await
        .ok();
    assert!(
        partner_view.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["target_id"] == merchant.as_str())
    );
    let owner_view = tree
        .client(Role::MerchantOwner)
        .get("/api/v1/audit?action=merchant.create")
        .await
        .ok();
    assert!(
        !owner_view.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["target_id"] == merchant.as_str())
    );
}

#[tokio::test]
async fn the_openapi_document_describes_every_route_and_each_is_served() {
    let db = trellis_tests::sqlite();
    let engine = Engine::start(&db.url(), &[]);
    let api = Api::new(&engine, CONSOLE);
    let doc = api.get("/api/openapi.json").await.ok().body;
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 20);
    for (path, item) in paths {
        for method in item.as_object().unwrap().keys() {
            let concrete = path.replace("{id}", "00000000-0000-0000-0000-000000000000");
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let body = (method != reqwest::Method::GET && method != reqwest::Method::DELETE)
                .then(|| json!({}));
            let reply = api.send(method.clone(), &concrete, body).await;
            let expected = if path.ends_with("/login") { 422 } else { 401 };
            assert_eq!(
                reply.status, expected,
                "{method} {path} is documented but answers {:?}",
                reply.body
            );
        }
    }
    assert!(doc["components"]["schemas"]["Node"].is_object());
    // Every reference resolves to a schema of the document.
    fn refs(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, item) in map {
                    match (key.as_str(), item.as_str()) {
                        ("$ref", Some(target)) => out.push(target.to_owned()),
                        _ => refs(item, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|i| refs(i, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    refs(&doc, &mut all);
    for target in all {
        let name = target.trim_start_matches("#/components/schemas/");
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "{target} does not resolve"
        );
    }
}

#[tokio::test]
async fn a_role_change_made_through_one_engine_is_enforced_by_another_within_a_second() {
    for db in databases().await {
        let first = Engine::start(&db.url(), &[]);
        let second = Engine::start(&db.url(), &[]);
        let tree = Tree::build(&first, &db.url()).await;
        let partner_on_second = Api::new(&second, "p1.test")
            .login("partner_admin@one.test", PASSWORD)
            .await;
        let store_path = format!("/api/v1/stores/{}", tree.chain[3]);
        assert_eq!(partner_on_second.get(&store_path).await.status, 200);

        // A new account created through the first engine works on the second at once or within a second.
        let email = "late@one.test";
        tree.root
            .post(
                "/api/v1/users",
                json!({"node_id": tree.chain[2], "email": email, "password": PASSWORD}),
            )
            .await
            .ok();
        let newcomer = Api::new(&second, "p1.test").login(email, PASSWORD).await;
        let started = Instant::now();
        loop {
            let status = newcomer.get(&store_path).await.status;
            if status == 200 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_millis(1500),
                "second engine still answers {status}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // Disabling through the first engine stops the account on the second.
        let user = tree.root.get("/api/v1/users?q=late").await.ok().body["items"][0]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        tree.root
            .patch(
                &format!("/api/v1/users/{user}"),
                json!({"status": "disabled"}),
            )
            .await
            .ok();
        assert_eq!(newcomer.get(&store_path).await.status, 401);
        drop((first, second));
        db.cleanup().await;
    }
}

#[tokio::test]
async fn no_password_token_or_key_is_stored_or_logged_in_clear() {
    use sea_orm::{ConnectionTrait, Statement};
    for db in databases().await {
        let engine = Engine::spawn(&db.url(), &[("TRELLIS_LOG__LEVEL", "debug")]);
        let tree = Tree::build(&engine, &db.url()).await;
        let key = tree
            .client(Role::AgentAdmin)
            .post("/api/v1/api-keys", json!({"name": "k"}))
            .await
            .ok()
            .body["key"]
            .as_str()
            .unwrap()
            .to_owned();
        let mut secrets = vec![PASSWORD.to_owned(), key];
        secrets.extend(
            tree.clients
                .iter()
                .filter_map(|(_, c)| c.token().map(str::to_owned)),
        );
        let conn = sea_orm::Database::connect(db.url().as_str()).await.unwrap();
        let backend = conn.get_database_backend();
        let mut dump = String::new();
        for (table, columns) in [
            ("users", &["email", "password_hash"][..]),
            ("sessions", &["token_hash", "user_id"]),
            ("api_keys", &["name", "prefix", "key_hash"]),
            (
                "audit_log",
                &["actor_label", "action", "target_id", "detail"],
            ),
        ] {
            let sql = format!("SELECT {} FROM {table}", columns.join(", "));
            for row in conn
                .query_all_raw(Statement::from_string(backend, sql))
                .await
                .unwrap()
            {
                for column in columns {
                    let value: Option<String> = row.try_get("", column).unwrap();
                    dump.push_str(value.as_deref().unwrap_or(""));
                    dump.push('\n');
                }
            }
        }
        conn.close().await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let log = engine.log();
        for secret in &secrets {
            assert!(
                !dump.contains(secret.as_str()),
                "{} found in the database",
                &secret[..6]
            );
            assert!(
                !log.contains(secret.as_str()),
                "{} found in the log",
                &secret[..6]
            );
        }
        assert!(dump.contains("$argon2id$"));
        drop(engine);
        db.cleanup().await;
    }
}

#[tokio::test]
async fn a_partners_domain_wears_its_theme_and_an_unknown_theme_falls_back_to_default() {
    let db = trellis_tests::sqlite();
    let engine = Engine::start(&db.url(), &[]);
    create_platform_admin(&db.url(), ROOT_EMAIL, PASSWORD);
    let root = Api::new(&engine, CONSOLE).login(ROOT_EMAIL, PASSWORD).await;
    root.post(
        "/api/v1/partners",
        json!({"name": "Jade", "theme": "jade", "domains": ["pay.jade.test"]}),
    )
    .await
    .ok();
    root.post(
        "/api/v1/partners",
        json!({"name": "Gone", "theme": "removed", "domains": ["gone.test"]}),
    )
    .await
    .ok();
    let page = |host: &'static str| {
        let url = engine.url("/nowhere");
        async move {
            let reply = trellis_tests::client()
                .get(url)
                .header("host", host)
                .header("accept", "text/html")
                .header("accept-language", "zh-CN")
                .send()
                .await
                .unwrap();
            assert_eq!(reply.status(), 404);
            reply.text().await.unwrap()
        }
    };
    let jade = page("pay.jade.test").await;
    assert!(jade.contains("/static/jade/brand.css"), "{jade}");
    assert!(jade.contains("翡翠支付"), "the theme's strings win");
    assert!(
        jade.contains("页面不存在"),
        "strings it leaves out come from default"
    );
    let gone = page("gone.test").await;
    assert!(
        gone.contains("/static/default/theme.css") && !gone.contains("brand.css"),
        "{gone}"
    );
    let console = page(CONSOLE).await;
    assert!(console.contains("Trellis"));
    let css = trellis_tests::client()
        .get(engine.url("/static/jade/theme.css"))
        .send()
        .await
        .unwrap();
    assert_eq!(css.status(), 200, "assets a theme lacks come from default");
}

/// The partner behind a host is kept in memory for a moment (`database.recent_reads_ms`, here
/// a minute), yet a domain the partner gave up reaches nothing from the next request on, and
/// its new one works at once.
#[tokio::test]
async fn a_partners_given_up_domain_reaches_nothing_from_the_next_request_on() {
    let db = trellis_tests::sqlite();
    let engine = Engine::start(&db.url(), &[("TRELLIS_DATABASE__RECENT_READS_MS", "60000")]);
    create_platform_admin(&db.url(), ROOT_EMAIL, PASSWORD);
    let root = Api::new(&engine, CONSOLE).login(ROOT_EMAIL, PASSWORD).await;
    let partner = root
        .post(
            "/api/v1/partners",
            json!({"name": "Moving", "domains": ["old.moving.test"]}),
        )
        .await
        .ok();
    let id = partner.body["id"].as_str().unwrap().to_owned();
    let code = |host: &'static str| {
        let api = Api::new(&engine, host);
        async move { api.get("/api/v1/nowhere").await.body["code"].clone() }
    };
    assert_eq!(code("old.moving.test").await, "not_found");
    assert_eq!(code("new.moving.test").await, "unknown_host");
    root.patch(
        &format!("/api/v1/partners/{id}"),
        json!({"domains": ["new.moving.test"]}),
    )
    .await
    .ok();
    assert_eq!(code("old.moving.test").await, "unknown_host");
    assert_eq!(code("new.moving.test").await, "not_found");
}
