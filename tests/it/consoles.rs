//! The consoles driven as a browser drives them: form posts, the session cookie, redirects,
//! on a partner's domain and theme, on SQLite and PostgreSQL.

use serde_json::json;
use trellis_tests::{Api, Engine, TEST_PASSWORD, create_node, create_platform_admin, databases};

const ROOT_EMAIL: &str = "root@platform.test";
const CONSOLE: &str = "127.0.0.1";
const DOMAIN: &str = "console.jade.test";

/// What a browser keeps between requests to one site: the host and its cookies.
struct Browser {
    http: reqwest::Client,
    base: String,
    host: String,
    session: Option<String>,
    lang: Option<String>,
}

/// A page as a browser received it.
#[derive(Debug)]
struct Page {
    status: u16,
    location: Option<String>,
    headers: reqwest::header::HeaderMap,
    text: String,
}

impl Page {
    /// The value of the first hidden `form_token` field.
    fn form_token(&self) -> String {
        let at = self
            .text
            .find("name=\"form_token\" value=\"")
            .unwrap_or_else(|| panic!("no form token in {}", self.text));
        let rest = &self.text[at + "name=\"form_token\" value=\"".len()..];
        rest[..rest.find('"').unwrap()].to_owned()
    }
}

impl Browser {
    fn new(engine: &Engine, host: &str) -> Self {
        Self {
            http: trellis_tests::client(),
            base: engine.base_url.clone(),
            host: host.to_owned(),
            session: None,
            lang: None,
        }
    }

    fn cookies(&self) -> String {
        let mut jar = Vec::new();
        if let Some(s) = &self.session {
            jar.push(format!("trellis_session={s}"));
        }
        if let Some(l) = &self.lang {
            jar.push(format!("trellis_lang={l}"));
        }
        jar.join("; ")
    }

    async fn finish(&mut self, request: reqwest::RequestBuilder) -> Page {
        let response = request.send().await.unwrap();
        let headers = response.headers().clone();
        for set in headers.get_all("set-cookie") {
            let set = set.to_str().unwrap();
            let (pair, _) = set.split_once(';').unwrap_or((set, ""));
            let (name, value) = pair.split_once('=').unwrap();
            let value = (!value.is_empty()).then(|| value.to_owned());
            match name {
                "trellis_session" => self.session = value,
                "trellis_lang" => self.lang = value,
                _ => {}
            }
        }
        Page {
            status: response.status().as_u16(),
            location: headers
                .get("location")
                .map(|l| l.to_str().unwrap().to_owned()),
            text: response.text().await.unwrap(),
            headers,
        }
    }

    async fn get(&mut self, path: &str) -> Page {
        let request = self
            .http
            .get(format!("{}{path}", self.base))
            .header("host", &self.host)
            .header("accept", "text/html")
            .header("cookie", self.cookies());
        self.finish(request).await
    }

    /// Posts a form from a page of `origin` (this site's own unless told otherwise), with the
    /// headers a browser adds.
    async fn post_from(&mut self, origin: &str, path: &str, form: &[(&str, &str)]) -> Page {
        let site = if origin == format!("http://{}", self.host) {
            "same-origin"
        } else {
            "cross-site"
        };
        let request = self
            .http
            .post(format!("{}{path}", self.base))
            .header("host", &self.host)
            .header("accept", "text/html")
            .header("origin", origin)
            .header("sec-fetch-site", site)
            .header("cookie", self.cookies())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(
                url::form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(form)
                    .finish(),
            );
        self.finish(request).await
    }

    /// Posts a file form (`multipart/form-data`) from this site's own page: `fields` and one file.
    async fn upload(&mut self, path: &str, fields: &[(&str, &str)], file: (&str, &[u8])) -> Page {
        let boundary = "----trellis-test-boundary-7d3f";
        let mut body = Vec::new();
        for (name, value) in fields {
            body.extend_from_slice(
                format!(
                    "--{boundary}\r\ncontent-disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
                )
                .as_bytes(),
            );
        }
        let (name, bytes) = file;
        body.extend_from_slice(
            format!(
                "--{boundary}\r\ncontent-disposition: form-data; name=\"{name}\"; filename=\"plugin.tplug\"\r\ncontent-type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let request = self
            .http
            .post(format!("{}{path}", self.base))
            .header("host", &self.host)
            .header("accept", "text/html")
            .header("origin", format!("http://{}", self.host))
            .header("sec-fetch-site", "same-origin")
            .header("cookie", self.cookies())
            .header(
                "content-type",
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(body);
        self.finish(request).await
    }

    async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        let origin = format!("http://{}", self.host);
        self.post_from(&origin, path, form).await
    }
}

/// A platform administrator, a partner on its own domain and theme with an administrator, and
/// a merchant of an agent with its owner and a store with its cashier.
struct World {
    root: Api,
    partner: String,
    agent: String,
}

impl World {
    async fn build(engine: &Engine, url: &str) -> Self {
        create_platform_admin(url, ROOT_EMAIL, TEST_PASSWORD);
        let root = Api::new(engine, CONSOLE)
            .login(ROOT_EMAIL, TEST_PASSWORD)
            .await;
        let partner = create_node(
            &root,
            "partners",
            None,
            json!({"name": "Jade <Partner>", "theme": "jade", "domains": [DOMAIN]}),
        )
        .await;
        let agent = create_node(&root, "agents", Some(&partner), json!({"name": "North"})).await;
        let merchant = create_node(&root, "merchants", Some(&agent), json!({"name": "Tea"})).await;
        let store = create_node(&root, "stores", Some(&merchant), json!({"name": "Front"})).await;
        for (node, email) in [
            (&partner, "admin@jade.test"),
            (&merchant, "owner@jade.test"),
            (&store, "cashier@jade.test"),
        ] {
            root.post(
                "/api/v1/users",
                json!({"node_id": node, "email": email, "password": TEST_PASSWORD}),
            )
            .await
            .ok();
        }
        Self {
            root,
            partner,
            agent,
        }
    }
}

async fn signed_in(engine: &Engine, email: &str) -> Browser {
    let mut browser = Browser::new(engine, DOMAIN);
    let page = browser
        .post(
            "/console/login",
            &[("email", email), ("password", TEST_PASSWORD)],
        )
        .await;
    assert_eq!(page.status, 303, "{page:?}");
    assert!(browser.session.is_some());
    browser
}

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

/// The page's text with the entities the templates write in attributes decoded, as a browser
/// reads them.
fn decoded(page: &Page) -> String {
    page.text
        .replace("&#x3D;", "=")
        .replace("&#x27;", "'")
        .replace("&quot;", "\"")
        .replace("&amp;", "&")
}

/// The first link starting with `prefix`, as a browser would follow it.
fn link(page: &Page, prefix: &str) -> String {
    let text = decoded(page);
    let at = text
        .find(prefix)
        .unwrap_or_else(|| panic!("no link {prefix} in {text}"));
    let rest = &text[at..];
    rest[..rest.find('"').unwrap()].to_owned()
}

const MEMBERSHIP: &str = "com.trellis.membership";
const ABUSE: &str = "test.trellis.abuse";

/// Membership and the abuse fixture installed, offered, packaged and assigned to the merchant;
/// returns the merchant's id.
async fn with_plugins(world: &World) -> String {
    let partner = &world.partner;
    for (dir, lib, id) in [
        (
            "plugins/membership",
            "trellis_plugin_membership",
            MEMBERSHIP,
        ),
        ("tests/plugins/abuse", "trellis_fixture_abuse", ABUSE),
    ] {
        let archive = trellis_tests::plugin_archive_bytes(dir, lib);
        world
            .root
            .upload(&format!("/api/v1/partners/{partner}/plugins"), archive)
            .await
            .ok();
        world
            .root
            .post(
                &format!("/api/v1/partners/{partner}/plugins/{id}/offer"),
                json!({"offered": true}),
            )
            .await
            .ok();
    }
    let package = world
        .root
        .post(
            "/api/v1/packages",
            json!({"agent_id": world.agent, "name": "All", "plugins": [MEMBERSHIP, ABUSE], "validity_days": 30}),
        )
        .await
        .ok()
        .id();
    world
        .root
        .post(&format!("/api/v1/packages/{package}/publish"), json!({}))
        .await
        .ok();
    let merchants = world
        .root
        .get(&format!("/api/v1/merchants?parent_id={}", world.agent))
        .await
        .ok();
    let merchant = merchants.body["items"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    world
        .root
        .post(
            &format!("/api/v1/packages/{package}/assignments"),
            json!({"merchant_ids": [merchant]}),
        )
        .await
        .ok();
    merchant
}

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
        let merchants = world
            .root
            .get(&format!("/api/v1/merchants?parent_id={}", world.agent))
            .await
            .ok();
        let merchant = merchants.body["items"][0]["id"]
            .as_str()
            .unwrap()
            .to_owned();
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
