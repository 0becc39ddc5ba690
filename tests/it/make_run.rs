//! `make run`'s own configuration, end to end: the settings its `run` target exports (read from
//! the Makefile, so these tests follow it), `trellis demo seed`, then `trellis serve` — the real
//! binary, as `make run` starts it — and what someone trying the demo does next: the demo
//! merchant's owner sets up the membership card and a sandbox consumer claims it, and the hello
//! plugin's public page is opened on the demo partner's domain. Every plugin page is rendered
//! inside the plugin's host call and wrapped in the theme, with `themes.reload` as `make run` sets
//! it.
//!
//! SQLite only: that is what `make run` serves (`./data/trellis.db`); here a fresh file in a
//! temporary folder.
//!
//! Two settings cannot be `make run`'s own: the master key (it makes one in `data/`; these tests
//! use the test key) and the listening address (`make run` takes the default 127.0.0.1:8080;
//! these tests take a free loopback port, given to `demo seed` as well, since the seed wires the
//! demo merchant's Alipay app to the sandbox at that address).

use serde_json::{Value, json};
use trellis_engine::demo::DEMO_DOMAIN;
use trellis_tests::{
    Api, Engine, TEST_MASTER_KEY, client, png, sqlite, tempdir, trellis_command, workspace_root,
};

const OWNER: &str = "merchant-owner@demo.trellis.test";
const HELLO: &str = "com.trellis.hello";
const MEMBERSHIP: &str = "com.trellis.membership";

/// The `TRELLIS_*` variables `make run` exports, with the defaults it gives them (a variable
/// already set in the caller's environment wins there; these tests run on the defaults).
fn make_run_settings() -> Vec<(String, String)> {
    let makefile = std::fs::read_to_string(workspace_root().join("Makefile")).unwrap();
    // The `run` target's recipe: the tab-indented lines after `run:`, continuations joined.
    let recipe = makefile
        .lines()
        .skip_while(|line| !line.starts_with("run:"))
        .skip(1)
        .take_while(|line| line.starts_with('\t') || line.trim().is_empty())
        .collect::<Vec<_>>()
        .join("\n")
        .replace("\\\n", " ");
    let export = recipe
        .lines()
        .find_map(|line| line.trim().strip_prefix("export "))
        .unwrap_or_else(|| panic!("no `export` in the Makefile's run recipe:\n{recipe}"));
    let settings: Vec<(String, String)> = shell_assignments(export)
        .into_iter()
        .map(|(name, value)| {
            // `"$${NAME:-default}"` in make is `${NAME:-default}` in the shell.
            let value = value.replace("$$", "$");
            let default = value
                .strip_prefix(&format!("${{{name}:-"))
                .and_then(|v| v.strip_suffix('}'))
                .map_or(value.as_str(), |d| d)
                .to_owned();
            if !default.contains('$') {
                return (name, default);
            }
            // Computed by the shell: only the master key is, made once beside the database.
            assert_eq!(
                name, "TRELLIS_SECRETS__MASTER_KEY",
                "make run computes {name} as {default}: teach this test to follow it"
            );
            (name, TEST_MASTER_KEY.to_owned())
        })
        .collect();
    assert_eq!(
        settings.len(),
        export.matches("=\"").count(),
        "every assignment of `{export}` is read: {settings:?}"
    );
    for expected in ["TRELLIS_SECRETS__MASTER_KEY", "TRELLIS_SANDBOX__ENABLED"] {
        assert!(
            settings.iter().any(|(name, _)| name == expected),
            "make run no longer exports {expected}: {settings:?}"
        );
    }
    settings
}

/// The `NAME="value"` words of a shell `export` up to its `;`, with the double quotes' escapes
/// (`\"`, `\\`) undone.
fn shell_assignments(export: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = export.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let name: String =
            std::iter::from_fn(|| chars.next_if(|c| *c != '=' && *c != ';')).collect();
        if name.is_empty() || chars.next() != Some('=') {
            return out;
        }
        assert_eq!(chars.next(), Some('"'), "{name} is not double-quoted");
        let mut value = String::new();
        loop {
            match chars.next() {
                Some('"') => break,
                Some('\\') => value.extend(chars.next()),
                Some(c) => value.push(c),
                None => panic!("{name}: unterminated quote in {export}"),
            }
        }
        out.push((name.trim().to_owned(), value));
    }
}

/// A free loopback address: the seed and the server must agree on it before the server binds.
fn free_loopback_address() -> String {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap().to_string()
}

/// The demo, as `make run` leaves it: seeded and served with `make run`'s settings.
struct Demo {
    engine: Engine,
    /// What `trellis demo seed` printed: the generated passwords among it.
    seeded: String,
    _db: trellis_tests::TestDb,
}

impl Demo {
    fn start() -> Self {
        let mut env = make_run_settings();
        env.push(("TRELLIS_HTTP__LISTEN".into(), free_loopback_address()));
        let db = sqlite();
        let seed_dir = tempdir();
        // `make run` runs the seed from the repository root, where it finds the plugins and
        // their built components (`make plugins`).
        let seed = trellis_command(seed_dir.path(), &db.url())
            .current_dir(workspace_root())
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env(
                "TRELLIS_PLUGINS__CACHE_DIR",
                workspace_root().join("target/test-plugin-cache"),
            )
            .args(["demo", "seed"])
            .output()
            .unwrap();
        let seeded = String::from_utf8_lossy(&seed.stdout).into_owned();
        assert!(
            seed.status.success(),
            "demo seed failed:\n{seeded}\n{}",
            String::from_utf8_lossy(&seed.stderr)
        );
        for plugin in [HELLO, MEMBERSHIP] {
            assert!(
                seeded.contains(&format!("plugin {plugin} ")),
                "the seed installs {plugin}:\n{seeded}"
            );
        }
        let listen = env
            .iter()
            .find(|(k, _)| k == "TRELLIS_HTTP__LISTEN")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let port = listen.rsplit(':').next().unwrap_or_default();
        assert!(
            seeded.contains(&format!("sign in at http://{DEMO_DOMAIN}:{port}/console)")),
            "sign-in lines name the port the engine listens on:\n{seeded}"
        );
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let engine = Engine::spawn(&db.url(), &env);
        Self {
            engine,
            seeded,
            _db: db,
        }
    }

    /// The password the seed printed for `email`.
    fn password_of(&self, email: &str) -> String {
        self.seeded
            .lines()
            .find_map(|line| {
                let mut words = line.split_whitespace().skip(1);
                (words.next() == Some(email))
                    .then(|| words.next())
                    .flatten()
            })
            .unwrap_or_else(|| panic!("no password for {email} in:\n{}", self.seeded))
            .to_owned()
    }

    /// The demo merchant's owner, signed in on the demo partner's domain with the password the
    /// seed printed, and the merchant's id.
    async fn owner(&self) -> (Api, String) {
        let password = self.password_of(OWNER);
        let owner = Api::new(&self.engine, DEMO_DOMAIN)
            .login(OWNER, &password)
            .await;
        let me = owner.get("/api/v1/me").await.ok();
        let merchant = me.body["node"]["merchant_id"].as_str().unwrap().to_owned();
        (owner, merchant)
    }
}

/// The default theme's frame around a page, as `themes/default` draws it.
fn assert_themed(page: &str, what: &str) {
    for markup in [
        "<!doctype html>",
        r#"<link rel="stylesheet" href="/static/default/theme.css">"#,
        r#"<header class="bar">"#,
        r#"<main class="page">"#,
        r#"<div class="plugin">"#,
        r#"<footer class="foot">"#,
    ] {
        assert!(page.contains(markup), "{what}: no {markup} in\n{page}");
    }
}

#[tokio::test]
async fn make_runs_own_settings_let_a_consumer_claim_the_demo_card_and_see_it() {
    let demo = Demo::start();
    let engine = &demo.engine;
    let (owner, merchant) = demo.owner().await;
    let mp = |path: &str| format!("/api/v1/merchants/{merchant}/plugins/{MEMBERSHIP}{path}");

    // The owner sets up the card: a level, the images, the design, the sync to Alipay (the
    // sandbox the seed wired the demo merchant's app to).
    owner
        .put(
            &mp("/levels"),
            json!({"levels": [{"name": "普通会员", "kind": "normal", "threshold": 0}]}),
        )
        .await
        .ok();
    let mut images = Vec::new();
    for (place, image) in [("logo", png(600, 600)), ("background", png(1020, 643))] {
        let uploaded = owner
            .upload_as(
                &mp(&format!("/card/images?use={place}&name={place}.png")),
                image,
                "image/png",
            )
            .await;
        assert_eq!(
            uploaded.status,
            200,
            "{place}: {uploaded:?}\n{}",
            engine.log()
        );
        images.push(uploaded.body["image_id"].as_str().unwrap().to_owned());
    }
    owner
        .put(
            &mp("/card"),
            json!({
                "show_name": "演示会员卡", "brand_name": "演示商户",
                "logo_id": images[0], "background_id": images[1], "bg_color": "#3770B3",
                "columns": ["points", "balance", "level"],
                "form": {"required": ["mobile"], "optional": ["name"]},
                "write_off_type": "qrcode", "card_no_prefix": "DEMO",
            }),
        )
        .await
        .ok();
    let synced = owner.post(&mp("/card/sync"), json!({})).await;
    assert_eq!(
        synced.body["sync"]["state"],
        "synced",
        "{synced:?}\n{}",
        engine.log()
    );
    let claim = owner
        .post(&mp("/claim-link"), json!({"callback": "clean"}))
        .await
        .ok();
    assert_eq!(
        claim.body["claim"]["callback"],
        format!("http://{DEMO_DOMAIN}/callbacks/alipay/card-activation"),
        "on the demo partner's domain, over make run's public scheme: {claim:?}"
    );
    let link = claim.body["claim"]["url"].as_str().unwrap();

    // A consumer opens the link in the sandbox's Alipay; Alipay lands on the callback.
    let opened: Value = client()
        .post(engine.url("/sandbox/consumers/alice/open-claim-link"))
        .json(&json!({"url": link}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let page = opened["callback_body"].as_str().unwrap_or_default();
    assert_eq!(
        opened["callback_status"],
        200,
        "{opened}\nthe engine's log:\n{}",
        engine.log()
    );
    assert_themed(page, "the activation page");
    assert!(page.contains("开卡成功"), "the page says so: {page}");
    assert!(
        page.contains(r#"<section class="membership-card">"#),
        "the page shows the card: {page}"
    );
    for shown in ["<h1>演示会员卡</h1>", "演示商户", "普通会员", "No. DEMO"] {
        assert!(page.contains(shown), "the card shows {shown}: {page}");
    }
    let members = owner.get(&mp("/members")).await.ok();
    assert_eq!(members.body["total"], 1, "{members:?}");

    // Later she opens her card's page from the wallet: make run's engine sends her through
    // the sandbox's authorisation and back to the demo partner's domain.
    let home = format!("http://{DEMO_DOMAIN}/m/{merchant}/{MEMBERSHIP}/me");
    let opened: Value = client()
        .post(engine.url("/sandbox/consumers/alice/open-page"))
        .json(&json!({"url": home}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        opened["status"],
        200,
        "{opened}\nthe engine's log:\n{}",
        engine.log()
    );
    let page = opened["body"].as_str().unwrap_or_default();
    assert_themed(page, "the member's page");
    for shown in ["<h1>演示会员卡</h1>", "普通会员", "No. DEMO", "积分"] {
        assert!(page.contains(shown), "her page shows {shown}: {page}");
    }
}

#[tokio::test]
async fn make_runs_own_settings_serve_hellos_public_page_on_the_demo_partners_domain() {
    let demo = Demo::start();
    let (_, merchant) = demo.owner().await;
    // A member's page: anyone on the partner's domain, signed in or not.
    let visitor = Api::new(&demo.engine, DEMO_DOMAIN);
    let page = visitor.page(&format!("/m/{merchant}/{HELLO}/")).await;
    let html = page.body.as_str().unwrap_or_default();
    assert_eq!(
        page.status,
        200,
        "{html}\nthe engine's log:\n{}",
        demo.engine.log()
    );
    assert_themed(html, "hello's page");
    assert!(html.contains("<title>Hello · "), "{html}");
    assert!(html.contains(r#"<section class="hello">"#), "{html}");
    assert!(
        html.contains("<h1>你好</h1>") && html.contains("本店已处理 0 个事件。"),
        "the demo tenant is greeted in Chinese: {html}"
    );
}

#[tokio::test]
async fn make_runs_demo_owner_signs_into_the_console_and_opens_membership_s_pages() {
    let demo = Demo::start();
    let password = demo.password_of(OWNER);
    let http = trellis_tests::client();
    let base = &demo.engine.base_url;
    let form = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs([("email", OWNER), ("password", password.as_str())])
        .finish();
    let signed = http
        .post(format!("{base}/console/login"))
        .header("host", DEMO_DOMAIN)
        .header("origin", format!("http://{DEMO_DOMAIN}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(signed.status(), 303, "{}", demo.engine.log());
    let cookie = signed.headers()["set-cookie"].to_str().unwrap();
    let cookie = cookie.split(';').next().unwrap().to_owned();
    let page = |path: &str| {
        http.get(format!("{base}{path}"))
            .header("host", DEMO_DOMAIN)
            .header("accept", "text/html")
            .header("cookie", &cookie)
            .send()
    };
    let home = page("/console").await.unwrap().text().await.unwrap();
    // The demo merchant holds membership: its pages are in the menu.
    let members = format!("/console/apps/{MEMBERSHIP}/members");
    assert!(home.contains(&format!("href=\"{members}\"")), "{home}");
    let answer = page(&members).await.unwrap();
    assert_eq!(answer.status(), 200);
    let html = answer.text().await.unwrap();
    assert!(html.contains("<h1>会员</h1>"), "{html}");
    let card = page(&format!("/console/apps/{MEMBERSHIP}/card"))
        .await
        .unwrap();
    assert_eq!(card.status(), 200);
}

/// `trellis demo seed` run outside the repository seeds the tenants, says why no plugin was
/// installed instead of installing nothing silently, and names the port it was configured with.
#[test]
fn demo_seed_outside_the_repository_says_why_no_plugin_was_installed() {
    let db = sqlite();
    let dir = tempdir();
    let out = trellis_command(dir.path(), &db.url())
        .env("TRELLIS_HTTP__LISTEN", "127.0.0.1:9123")
        .args(["demo", "seed"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("sign in at http://127.0.0.1:9123/console)"),
        "{text}"
    );
    assert!(
        text.contains(&format!("sign in at http://{DEMO_DOMAIN}:9123/console)")),
        "{text}"
    );
    assert!(!text.contains(":8080"), "{text}");
    assert!(text.contains("no first-party plugins installed"), "{text}");
}
