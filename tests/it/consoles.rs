//! The consoles driven as a browser drives them: form posts, the session cookie, redirects,
//! on a partner's domain and theme, on SQLite and PostgreSQL.

use serde_json::json;
use trellis_tests::{Api, Engine, TEST_PASSWORD, create_node, create_platform_admin};

mod apps;
mod payments;
mod setup;
mod tiers;

const ROOT_EMAIL: &str = "root@platform.test";
const CONSOLE: &str = "127.0.0.1";
const DOMAIN: &str = "console.jade.test";

/// What a browser keeps between requests to one site: the host and its cookies.
pub(super) struct Browser {
    http: reqwest::Client,
    base: String,
    host: String,
    session: Option<String>,
    lang: Option<String>,
}

/// A page as a browser received it.
#[derive(Debug)]
pub(super) struct Page {
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
        let (name, bytes) = file;
        self.upload_files(path, fields, &[(name, "application/octet-stream", bytes)])
            .await
    }

    /// Posts a file form with several files, each `(field, content type, bytes)`.
    async fn upload_files(
        &mut self,
        path: &str,
        fields: &[(&str, &str)],
        files: &[(&str, &str, &[u8])],
    ) -> Page {
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
        for (name, content_type, bytes) in files {
            body.extend_from_slice(
                format!(
                    "--{boundary}\r\ncontent-disposition: form-data; name=\"{name}\"; filename=\"upload.bin\"\r\ncontent-type: {content_type}\r\n\r\n"
                )
                .as_bytes(),
            );
            body.extend_from_slice(bytes);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
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
pub(super) struct World {
    root: Api,
    partner: String,
    agent: String,
    merchant: String,
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
            merchant,
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
    let merchant = world.merchant.clone();
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
