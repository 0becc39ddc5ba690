//! The end-to-end harness: fresh databases (SQLite always, PostgreSQL when
//! `TRELLIS_TEST_DATABASE_URL` is set) and engines on a free port — built in this process by the
//! composition root (`Engine::start`), or the real `trellis` binary (`Engine::spawn`) where a
//! test needs a process: signals, kill -9, its log, the command line.
#![forbid(unsafe_code)]

mod engine;
pub mod fixtures;
pub mod storm;

pub use engine::{Engine, trellis_command};

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Once;
use std::time::Duration;

use sea_orm::{ConnectionTrait, Database};

pub use trellis_engine;

/// The master key every test engine seals secrets with. A TEST KEY: it protects nothing real.
pub const TEST_MASTER_KEY: &str = "dGVzdC1vbmx5LW1hc3Rlci1rZXktMzItYnl0ZXMhISE=";

/// One database leg of the suite.
#[derive(Debug)]
pub enum TestDb {
    Sqlite {
        dir: tempfile::TempDir,
    },
    Postgres {
        admin_url: String,
        name: String,
        url: String,
    },
}

impl TestDb {
    pub fn url(&self) -> String {
        match self {
            Self::Sqlite { dir } => format!("sqlite://{}", dir.path().join("trellis.db").display()),
            Self::Postgres { url, .. } => url.clone(),
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            Self::Sqlite { .. } => "sqlite",
            Self::Postgres { .. } => "postgres",
        }
    }

    /// The SQLite file, for tests that need to remove it.
    pub fn sqlite_file(&self) -> Option<PathBuf> {
        match self {
            Self::Sqlite { dir } => Some(dir.path().join("trellis.db")),
            Self::Postgres { .. } => None,
        }
    }

    /// Removes the database out from under whoever uses it: the SQLite file, or the
    /// PostgreSQL database (its sessions terminated).
    pub async fn destroy(&self) -> anyhow::Result<()> {
        match self {
            Self::Sqlite { dir } => {
                for suffix in ["", "-wal", "-shm"] {
                    let file = dir.path().join(format!("trellis.db{suffix}"));
                    if file.exists() {
                        std::fs::remove_file(file)?;
                    }
                }
                Ok(())
            }
            Self::Postgres {
                admin_url, name, ..
            } => {
                let admin = Database::connect(admin_url.as_str()).await?;
                let drop = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                // FORCE may not terminate an autovacuum worker that happens to be visiting the
                // fresh database (it runs as the bootstrap superuser); it finishes within moments.
                let mut attempt = 0;
                loop {
                    match admin.execute_unprepared(&drop).await {
                        Ok(_) => break,
                        Err(e) if attempt < 20 && e.to_string().contains("pg_signal_backend") => {
                            attempt += 1;
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                admin.close().await?;
                Ok(())
            }
        }
    }

    /// Drops a PostgreSQL test database; SQLite's folder goes with the value.
    pub async fn cleanup(self) {
        if let Self::Postgres { .. } = &self
            && let Err(error) = self.destroy().await
        {
            eprintln!("warning: could not drop the test database: {error}");
        }
    }
}

/// A fresh, empty database for every leg this run covers: SQLite always, PostgreSQL when
/// `TRELLIS_TEST_DATABASE_URL` names a server (each call gets a database of its own there).
pub async fn databases() -> Vec<TestDb> {
    let mut legs = vec![TestDb::Sqlite { dir: tempdir() }];
    match trellis_engine::config::test_database_url_from_env() {
        Some(admin_url) => legs.push(fresh_postgres(&admin_url).await),
        None => {
            static SKIPPED: Once = Once::new();
            SKIPPED.call_once(|| {
                eprintln!("PostgreSQL leg skipped: TRELLIS_TEST_DATABASE_URL is not set");
            });
        }
    }
    legs
}

/// Only the SQLite leg, for tests about the HTTP layer rather than storage.
pub fn sqlite() -> TestDb {
    TestDb::Sqlite { dir: tempdir() }
}

/// A new, empty PostgreSQL database on the server `admin_url` names.
pub async fn fresh_postgres(admin_url: &str) -> TestDb {
    let name = format!("trellis_t_{}", uuid::Uuid::new_v4().simple());
    let admin = Database::connect(admin_url)
        .await
        .unwrap_or_else(|e| panic!("TRELLIS_TEST_DATABASE_URL is set but unreachable: {e}"));
    admin
        .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
        .await
        .unwrap_or_else(|e| panic!("cannot create test database {name}: {e}"));
    let _ = admin.close().await;
    let mut url =
        url::Url::parse(admin_url).unwrap_or_else(|e| panic!("bad TRELLIS_TEST_DATABASE_URL: {e}"));
    url.set_path(&format!("/{name}"));
    TestDb::Postgres {
        admin_url: admin_url.to_owned(),
        name,
        url: url.to_string(),
    }
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap_or_else(|e| panic!("cannot create a temporary folder: {e}"))
}

/// A PNG's signature and header of the given size: all that Alipay's image rules (and the
/// sandbox, and the membership plugin's upload check) read of an image.
pub fn png(width: u32, height: u32) -> Vec<u8> {
    let mut bytes = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
    bytes.extend_from_slice(&width.to_be_bytes());
    bytes.extend_from_slice(&height.to_be_bytes());
    bytes.extend_from_slice(&[8, 6, 0, 0, 0, 0, 0, 0, 0]);
    bytes
}

/// The repository root, where `themes/` lives.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The `trellis` binary cargo built beside this test binary (`target/<profile>/trellis`).
pub fn trellis_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
    // target/<profile>/deps/it-<hash> → target/<profile>/trellis
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| Path::new("."));
    let bin = profile_dir.join(format!("trellis{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "{} is missing: build it first (`cargo build --bin trellis`; `cargo test --workspace` does)",
        bin.display()
    );
    bin
}

/// An HTTP client that never follows redirects and never uses a proxy. Like any well-behaved
/// client it drops a kept-alive connection before the engine's idle limit
/// (`http.header_read_timeout_secs`, 10 s) closes it: a test that blocks its runtime (running the
/// CLI, say) would otherwise write its next request into a connection already closed.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .pool_idle_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap_or_else(|e| panic!("cannot build the HTTP client: {e}"))
}

/// A JSON client for the admin API bound to one host name and, once signed in, one token.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    host: String,
    token: Option<String>,
}

/// A response reduced to what tests look at.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: serde_json::Value,
    pub headers: reqwest::header::HeaderMap,
}

impl Reply {
    pub fn id(&self) -> String {
        self.body["id"]
            .as_str()
            .unwrap_or_else(|| panic!("no id in {self:?}"))
            .to_owned()
    }

    pub fn ok(self) -> Self {
        assert!(
            (200..300).contains(&self.status),
            "expected success, got {self:?}"
        );
        self
    }
}

impl Api {
    /// A client for `engine`, sending `host` as the Host header (a partner's domain, or e.g.
    /// `127.0.0.1` for the platform console).
    pub fn new(engine: &Engine, host: &str) -> Self {
        Self {
            http: client(),
            base: engine.base_url.clone(),
            host: host.to_owned(),
            token: None,
        }
    }

    pub fn with_token(&self, token: &str) -> Self {
        Self {
            token: Some(token.to_owned()),
            ..self.clone()
        }
    }

    pub fn on_host(&self, host: &str) -> Self {
        Self {
            host: host.to_owned(),
            ..self.clone()
        }
    }

    /// The same caller (host and token) on another engine, e.g. the same database's engine
    /// after a restart.
    pub fn on_engine(&self, engine: &Engine) -> Self {
        Self {
            http: client(),
            base: engine.base_url.clone(),
            ..self.clone()
        }
    }

    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Reply {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("host", &self.host);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap_or_default();
        let body = if text.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
        };
        Reply {
            status,
            body,
            headers,
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: serde_json::Value) -> Reply {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn patch(&self, path: &str, body: serde_json::Value) -> Reply {
        self.send(reqwest::Method::PATCH, path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: serde_json::Value) -> Reply {
        self.send(reqwest::Method::PUT, path, Some(body)).await
    }

    /// POSTs raw bytes (`application/octet-stream`), e.g. a plugin archive.
    pub async fn upload(&self, path: &str, bytes: Vec<u8>) -> Reply {
        self.upload_as(path, bytes, "application/octet-stream")
            .await
    }

    /// POSTs raw bytes with a content type.
    pub async fn upload_as(&self, path: &str, bytes: Vec<u8>, content_type: &str) -> Reply {
        let mut request = self
            .http
            .post(format!("{}{path}", self.base))
            .header("host", &self.host)
            .header("content-type", content_type)
            // Installing compiles the component: an interpreter's takes tens of seconds in a
            // debug engine on a busy machine.
            .timeout(Duration::from_secs(300))
            .body(bytes);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        Reply {
            status,
            body,
            headers,
        }
    }

    /// GETs a page as a browser would (asking for HTML); the body is the text.
    pub async fn page(&self, path: &str) -> Reply {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .header("host", &self.host)
            .header("accept", "text/html")
            .send()
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap_or_default();
        Reply {
            status,
            body: serde_json::Value::String(text),
            headers,
        }
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.send(reqwest::Method::DELETE, path, None).await
    }

    /// Signs in and returns a client carrying the session token.
    pub async fn login(&self, email: &str, password: &str) -> Self {
        let reply = self
            .post(
                "/api/v1/auth/login",
                serde_json::json!({"email": email, "password": password}),
            )
            .await;
        assert_eq!(
            reply.status, 200,
            "login {email} on {}: {reply:?}",
            self.host
        );
        let token = reply.body["token"].as_str().unwrap_or_default().to_owned();
        self.with_token(&token)
    }
}

/// Creates a platform administrator with `trellis admin create` against `database_url`.
pub fn create_platform_admin(database_url: &str, email: &str, password: &str) {
    use std::io::Write as _;
    let dir = tempdir();
    let mut child = trellis_command(dir.path(), database_url)
        .args(["admin", "create", "--email", email, "--password-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("admin create: {e}"));
    if let Some(mut stdin) = child.stdin.take() {
        let _ = writeln!(stdin, "{password}");
    }
    let output = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("admin create: {e}"));
    assert!(
        output.status.success(),
        "admin create failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A component built by `make plugins` (target/wasm32-wasip2/plugin/NAME.wasm), or a
/// committed one named by its path in the workspace (ending in `.wasm`).
pub fn plugin_wasm(name: &str) -> PathBuf {
    let path = if name.ends_with(".wasm") {
        workspace_root().join(name)
    } else {
        workspace_root()
            .join("target/wasm32-wasip2/plugin")
            .join(format!("{name}.wasm"))
    };
    assert!(
        path.is_file(),
        "{} is missing: run `make plugins` (or `make test`) first",
        path.display()
    );
    path
}

/// Packs a plugin folder of the workspace (such as `plugins/hello`) with its built component,
/// through the same checks as `trellis plugin pack`.
pub fn pack_plugin(dir: &str, component: &str) -> trellis_engine::plugins::archive::Archive {
    packed(dir, component, None).0
}

/// The `.tplug` bytes of a workspace plugin folder with its built component.
pub fn plugin_archive_bytes(dir: &str, component: &str) -> Vec<u8> {
    packed(dir, component, None).1
}

/// A plugin folder packed once per test process (as `version`, when given): packing checks the
/// component's imports, which compiles it, and the suite installs the same few plugins
/// hundreds of times.
fn packed(
    dir: &str,
    component: &str,
    version: Option<&str>,
) -> (trellis_engine::plugins::archive::Archive, Vec<u8>) {
    type Packed = (trellis_engine::plugins::archive::Archive, Vec<u8>);
    type Key = (String, String, Option<String>);
    static PACKED: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<Key, Packed>>> =
        std::sync::OnceLock::new();
    let key = (
        dir.to_owned(),
        component.to_owned(),
        version.map(str::to_owned),
    );
    let cache = PACKED.get_or_init(Default::default);
    if let Some(hit) = cache.lock().ok().and_then(|c| c.get(&key).cloned()) {
        return hit;
    }
    let result = match version {
        None => trellis_engine::plugins::archive::pack_dir(
            &workspace_root().join(dir),
            &plugin_wasm(component),
        )
        .unwrap_or_else(|e| panic!("packing {dir}: {e}")),
        Some(version) => pack_as_version(dir, component, version),
    };
    if let Ok(mut c) = cache.lock() {
        c.insert(key, result.clone());
    }
    result
}

/// The same plugin packed as another version (its folder copied with `version` changed), for
/// upgrade and rollback tests.
pub fn plugin_archive_as_version(dir: &str, component: &str, version: &str) -> Vec<u8> {
    packed(dir, component, Some(version)).1
}

fn pack_as_version(
    dir: &str,
    component: &str,
    version: &str,
) -> (trellis_engine::plugins::archive::Archive, Vec<u8>) {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("{}: {e}", to.display()));
        for entry in std::fs::read_dir(from).unwrap_or_else(|e| panic!("{}: {e}", from.display())) {
            let entry = entry.unwrap_or_else(|e| panic!("{e}"));
            let path = entry.path();
            let target = to.join(entry.file_name());
            if path.is_dir() {
                if entry.file_name() != "src" && entry.file_name() != "target" {
                    copy(&path, &target);
                }
            } else {
                std::fs::copy(&path, &target).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            }
        }
    }
    let dir_copy = tempdir();
    copy(&workspace_root().join(dir), dir_copy.path());
    let manifest = dir_copy.path().join("plugin.toml");
    let text = std::fs::read_to_string(&manifest).unwrap_or_default();
    let text = text
        .lines()
        .map(|line| {
            if line.starts_with("version = ") {
                format!("version = \"{version}\"")
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&manifest, text).unwrap_or_else(|e| panic!("{e}"));
    trellis_engine::plugins::archive::pack_dir(dir_copy.path(), &plugin_wasm(component))
        .unwrap_or_else(|e| panic!("packing {dir} as {version}: {e}"))
}

/// The password the end-to-end tests give every account they create.
pub const TEST_PASSWORD: &str = "correct horse battery staple";

/// Creates a node through the admin API as `root` and returns its id.
pub async fn create_node(
    root: &Api,
    plural: &str,
    parent: Option<&str>,
    mut body: serde_json::Value,
) -> String {
    if let Some(parent) = parent {
        body["parent_id"] = serde_json::json!(parent);
    }
    root.post(&format!("/api/v1/{plural}"), body)
        .await
        .ok()
        .id()
}

/// Registers an app with the engine's offline sandbox (`POST /sandbox/apps`); returns the
/// sandbox's answer (its Alipay public key, the gateway URL, certificates in cert mode).
pub async fn register_sandbox_app(engine: &Engine, app: serde_json::Value) -> serde_json::Value {
    client()
        .post(engine.url("/sandbox/apps"))
        .json(&app)
        .send()
        .await
        .unwrap_or_else(|e| panic!("/sandbox/apps: {e}"))
        .json()
        .await
        .unwrap_or_else(|e| panic!("/sandbox/apps: {e}"))
}

/// Creates a partner with one domain and returns its id.
pub async fn create_partner(root: &Api, name: &str, domain: &str) -> String {
    create_node(
        root,
        "partners",
        None,
        serde_json::json!({"name": name, "domains": [domain]}),
    )
    .await
}

/// Creates an account at `node` (password [`TEST_PASSWORD`]) and signs it in on `host`.
pub async fn create_user(engine: &Engine, root: &Api, node: &str, email: &str, host: &str) -> Api {
    root.post(
        "/api/v1/users",
        serde_json::json!({"node_id": node, "email": email, "password": TEST_PASSWORD}),
    )
    .await
    .ok();
    Api::new(engine, host).login(email, TEST_PASSWORD).await
}

/// The way a plugin reaches merchants: `partner_admin` installs the archive built from
/// `plugin_dir` (its component `component`) and offers plugin `plugin_id`; `agent_admin`
/// packages it (`package` is the package's JSON, whose `plugins` is set here), publishes the
/// package and assigns it to `merchants`. Returns the package's id.
pub async fn install_and_assign(
    partner_admin: &Api,
    agent_admin: &Api,
    partner: &str,
    (plugin_dir, component, plugin_id): (&str, &str, &str),
    mut package: serde_json::Value,
    merchants: &[&str],
) -> String {
    let archive = plugin_archive_bytes(plugin_dir, component);
    let installed = partner_admin
        .upload(&format!("/api/v1/partners/{partner}/plugins"), archive)
        .await;
    assert_eq!(installed.status, 201, "{installed:?}");
    partner_admin
        .post(
            &format!("/api/v1/partners/{partner}/plugins/{plugin_id}/offer"),
            serde_json::json!({"offered": true}),
        )
        .await
        .ok();
    package["plugins"] = serde_json::json!([plugin_id]);
    let package = agent_admin
        .post("/api/v1/packages", package)
        .await
        .ok()
        .id();
    agent_admin
        .post(
            &format!("/api/v1/packages/{package}/publish"),
            serde_json::json!({}),
        )
        .await
        .ok();
    agent_admin
        .post(
            &format!("/api/v1/packages/{package}/assignments"),
            serde_json::json!({"merchant_ids": merchants}),
        )
        .await
        .ok();
    package
}

/// Polls `check` until it holds, or panics with `what` and the last failure after `within`.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let started = std::time::Instant::now();
    loop {
        match check().await {
            Ok(()) => return,
            Err(last) if started.elapsed() > within => panic!("{what}: {last}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
