//! A local harness for plugin authors and tests: one plugin in the real runtime, against a
//! throwaway tenant on a temporary SQLite database whose merchant's Alipay app talks to the
//! offline sandbox on a loopback port — or, with a state folder, the same tenant, kv data and
//! configuration from one run to the next.
//!
//! Invariant: nothing outside its folder is touched; without a state folder, dropping the
//! harness removes the database, the cache and the sandbox. A configuration goes through the
//! schema (defaults filled in, then validated) as on the server before the plugin sees it.

use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::alipay::gateway::GatewayPolicy;
use crate::alipay::sandbox::Sandbox;
use crate::config::Config;
use crate::db::Db;
use crate::db::entity::nodes;
use crate::plugins::archive::Archive;
use crate::plugins::catalog::configuration::{check_schema, with_defaults};
use crate::plugins::{
    Allowance, Call, Event, HttpRequest, Loaded, Outcome, Output, Request, Runtime, RuntimeOptions,
    TenantContext,
};
use crate::secrets::Vault;
use crate::tenancy::{self, Place};
use crate::themes::Themes;

#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("{0}")]
    Setup(String),
    #[error(transparent)]
    Plugin(#[from] crate::plugins::Error),
}

fn setup(e: impl std::fmt::Display) -> HarnessError {
    HarnessError::Setup(e.to_string())
}

/// How the harness runs.
#[derive(Debug, Clone)]
pub struct HarnessOptions {
    /// Freeze WASI clocks and randomness at this instant.
    pub frozen_clock: Option<DateTime<Utc>>,
    /// Themes to wrap rendered pages in; `None`: bare HTML.
    pub themes_dir: Option<PathBuf>,
    /// Use the pooling allocator (as production does).
    pub pooling: bool,
    /// Concurrent invocations allowed.
    pub max_concurrency: u32,
    /// Lowest plugin log level kept.
    pub min_log_level: &'static str,
    /// Traps within a minute that suspend an installation.
    pub breaker_traps: u32,
    /// Keep kv in process memory instead of the SQLite database (fast tests, benchmarks).
    pub kv_in_memory: bool,
    /// Where compiled components are cached; `None`: a fresh folder of the harness's own.
    /// Compiling is most of a harness's start, so suites share one cache (it is keyed by the
    /// component's content and the engine's configuration).
    pub cache_dir: Option<PathBuf>,
    /// Keep the tenant, its kv data, the sandbox and the configuration in this folder between
    /// runs; `None`: a throwaway folder.
    pub state_dir: Option<PathBuf>,
}

impl Default for HarnessOptions {
    fn default() -> Self {
        Self {
            frozen_clock: None,
            themes_dir: None,
            pooling: true,
            max_concurrency: 64,
            min_log_level: "trace",
            breaker_traps: 1_000,
            kv_in_memory: false,
            cache_dir: None,
            state_dir: None,
        }
    }
}

/// Files of a state folder.
const STATE_KEY: &str = "master-key";
const STATE_PORT: &str = "sandbox-port";
const STATE_CONFIG: &str = "config.json";

/// Reads a state file, or makes it with `make` when it does not exist yet (private to the
/// user: the master key is one).
fn state_file(
    dir: &std::path::Path,
    name: &str,
    make: impl FnOnce() -> Result<String, HarnessError>,
) -> Result<String, HarnessError> {
    let path = dir.join(name);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(text.trim().to_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let text = make()?;
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options
                .open(&path)
                .map_err(|e| setup(format!("{}: {e}", path.display())))?;
            std::io::Write::write_all(&mut file, text.as_bytes())
                .map_err(|e| setup(format!("{}: {e}", path.display())))?;
            Ok(text)
        }
        Err(e) => Err(setup(format!("{}: {e}", path.display()))),
    }
}

/// One plugin, loaded, with a throwaway tenant.
pub struct Harness {
    pub runtime: Arc<Runtime>,
    pub plugin: Arc<Loaded>,
    pub merchant: Place,
    pub sandbox: Sandbox,
    pub db: Db,
    pub installation_id: String,
    pub config: Value,
    pub grant: Option<Allowance>,
    pub locale: String,
    server: tokio::task::JoinHandle<()>,
    state_dir: Option<PathBuf>,
    // Last: the folder outlives everything that uses it.
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Harness {
    /// Sets up the tenant and sandbox and loads the plugin (compiling it into the harness's
    /// own cache).
    pub async fn start(archive: &Archive, options: HarnessOptions) -> Result<Self, HarnessError> {
        Self::start_with(&[archive], options).await.map(|(h, _)| h)
    }

    /// Like [`start`](Self::start) with further plugins loaded into the same runtime (for
    /// tests of several plugins side by side); returns them in order after the first.
    pub async fn start_with(
        archives: &[&Archive],
        options: HarnessOptions,
    ) -> Result<(Self, Vec<Arc<Loaded>>), HarnessError> {
        let Some(first) = archives.first() else {
            return Err(setup("no plugin to run"));
        };
        let (temporary, root) = match &options.state_dir {
            Some(state) => {
                std::fs::create_dir_all(state)
                    .map_err(|e| setup(format!("{}: {e}", state.display())))?;
                (None, state.clone())
            }
            None => {
                let dir = tempfile::tempdir().map_err(setup)?;
                let root = dir.path().to_owned();
                (Some(dir), root)
            }
        };
        let mut config = Config::load(None).map_err(setup)?;
        config.data_dir = root.clone();
        config.database.url =
            SecretString::from(format!("sqlite://{}", root.join("harness.db").display()));
        let new_key = || {
            let mut key = [0u8; 32];
            getrandom::fill(&mut key).map_err(setup)?;
            Ok(base64::engine::general_purpose::STANDARD.encode(key))
        };
        let key = match &options.state_dir {
            Some(state) => state_file(state, STATE_KEY, new_key)?,
            None => new_key()?,
        };
        config.secrets.master_key = Some(SecretString::from(key));
        config.secrets.previous_master_keys.clear();
        let db = Db::connect(&config).await.map_err(setup)?;
        db.migrate().await.map_err(setup)?;
        let vault = Arc::new(Vault::from_config(&config.secrets).map_err(setup)?);

        // A state's merchant keeps its gateway URL, so its sandbox keeps its port.
        let port: u16 = match &options.state_dir {
            Some(state) => std::fs::read_to_string(state.join(STATE_PORT))
                .ok()
                .and_then(|p| p.trim().parse().ok())
                .unwrap_or(0),
            None => 0,
        };
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .map_err(|e| {
                setup(format!(
                    "the sandbox cannot listen on port {port} ({e}); it is the state's: free it or start from an empty state folder"
                ))
            })?;
        let address = listener.local_addr().map_err(setup)?;
        if let Some(state) = &options.state_dir {
            state_file(state, STATE_PORT, || Ok(address.port().to_string()))?;
        }
        let base = format!("http://{address}/sandbox");
        let sandbox = Sandbox::open(db.conn.clone(), &base, 1_000, None)
            .await
            .map_err(setup)?;
        let app = axum::Router::new().nest_service("/sandbox", sandbox.router());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        crate::demo::seed(&db.conn, &vault, Some(&base), address.port())
            .await
            .map_err(setup)?;
        let merchant_id = nodes::Entity::find()
            .filter(nodes::Column::Kind.eq("merchant"))
            .one(&db.conn)
            .await
            .map_err(setup)?
            .ok_or_else(|| setup("the demo merchant is missing"))?
            .id;
        let merchant = tenancy::place(&db.conn, &merchant_id)
            .await
            .map_err(setup)?
            .ok_or_else(|| setup("the demo merchant is missing"))?;

        let themes = match &options.themes_dir {
            Some(dir) => Some(Themes::load(dir, false).map_err(setup)?),
            None => None,
        };
        let kv = if options.kv_in_memory {
            crate::plugins::kv::Store::Memory(Arc::default())
        } else {
            crate::plugins::kv::Store::database(db.conn.clone())
        };
        let runtime = crate::app::plugin_runtime(
            RuntimeOptions {
                cache_dir: options
                    .cache_dir
                    .clone()
                    .unwrap_or_else(|| root.join("plugin-cache")),
                max_concurrency: options.max_concurrency,
                pooling: options.pooling,
                breaker_traps: options.breaker_traps,
                breaker_window: std::time::Duration::from_secs(60),
                breaker_cooldown: std::time::Duration::from_secs(60),
                conflict_retries: 3,
                frozen_clock: options.frozen_clock,
                min_log_level: options.min_log_level,
            },
            &db,
            kv,
            vault,
            // The harness's own sandbox listens on loopback.
            GatewayPolicy::local_sandbox(),
            themes,
        )
        .map_err(setup)?;
        let plugin = runtime.load(first)?;
        let mut others = Vec::new();
        for archive in &archives[1..] {
            others.push(runtime.load(archive)?);
        }
        // A state keeps one installation per plugin, so its kv namespace outlives the run.
        let (installation_id, stored) = match &options.state_dir {
            Some(state) => (
                format!("harness-{}", first.manifest.id),
                std::fs::read_to_string(state.join(STATE_CONFIG))
                    .ok()
                    .and_then(|text| serde_json::from_str(&text).ok()),
            ),
            None => (format!("harness-{}", uuid::Uuid::now_v7().simple()), None),
        };
        let schema = plugin.manifest.config.schema.clone();
        Ok((
            Self {
                runtime: Arc::new(runtime),
                plugin,
                merchant,
                sandbox,
                db,
                installation_id,
                config: with_defaults(schema.as_ref(), stored.unwrap_or_else(|| json!({}))),
                grant: None,
                locale: "zh-CN".into(),
                server,
                state_dir: options.state_dir.clone(),
                _dir: temporary,
            },
            others,
        ))
    }

    /// The request for `call` as the harness's merchant.
    pub fn request(&self, call: Call) -> Request {
        Request {
            tenant: TenantContext::at(&self.merchant, &self.installation_id, &self.locale),
            grant: self.grant.clone(),
            config: self.config.clone(),
            theme: "default".into(),
            call,
            finish: None,
            facts: Default::default(),
            inside: None,
        }
    }

    pub async fn call(&self, call: Call) -> Outcome {
        self.runtime.invoke(&self.plugin, self.request(call)).await
    }

    /// Delivers an event with a fresh id.
    pub async fn event(&self, kind: &str, payload: Value) -> Outcome {
        self.call(Call::Event(Event {
            id: uuid::Uuid::now_v7().to_string(),
            kind: kind.to_owned(),
            occurred_at: Utc::now(),
            payload,
        }))
        .await
    }

    /// Sends a request to one of the plugin's routes; `target` may carry a query string.
    pub async fn http(&self, method: &str, target: &str, body: Vec<u8>) -> Outcome {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        self.call(Call::Http(HttpRequest {
            method: method.to_ascii_uppercase(),
            path: path.to_owned(),
            query: query.to_owned(),
            headers: vec![("accept-language".into(), self.locale.clone())],
            body,
        }))
        .await
    }

    /// Fills in the schema's defaults, checks the schema and runs `configure`, as the server
    /// does; on success the normalised configuration becomes the harness's (and the state's).
    /// A configuration the schema refuses fails as the plugin's field error, without a call.
    pub async fn configure(&mut self, config: Value) -> Outcome {
        let schema = self.plugin.manifest.config.schema.clone();
        let config = with_defaults(schema.as_ref(), config);
        if let Some(schema) = &schema
            && let Err(refusal) = check_schema(schema, &config)
        {
            let (field, message) = match refusal {
                crate::plugins::catalog::Error::Invalid { field, message } => (field, message),
                other => ("config".to_owned(), other.to_string()),
            };
            return Outcome::failed(crate::plugins::Error::Plugin(
                crate::plugins::PluginError::InvalidField { field, message },
            ));
        }
        let outcome = self.call(Call::Configure { config }).await;
        if let Ok(Output::Config(normalised)) = &outcome.result {
            self.config = with_defaults(schema.as_ref(), normalised.clone());
            if let Some(state) = &self.state_dir
                && let Err(error) = std::fs::write(state.join(STATE_CONFIG), normalised.to_string())
            {
                tracing::warn!(%error, "could not keep the configuration in the state folder");
            }
        }
        outcome
    }

    pub async fn install(&self) -> Outcome {
        self.call(Call::Install {
            previous_version: None,
        })
        .await
    }
}

/// The outcome as a human report: result, logs, host calls, memory and time.
pub fn report(outcome: &Outcome) -> String {
    let mut out = String::new();
    match &outcome.result {
        Ok(Output::Done) => out.push_str("result: ok\n"),
        Ok(Output::Config(v)) => {
            out.push_str(&format!(
                "result: configuration {}\n",
                serde_json::to_string_pretty(v).unwrap_or_default()
            ));
        }
        Ok(Output::Http(r)) => {
            out.push_str(&format!("result: HTTP {}\n", r.status));
            for (k, v) in &r.headers {
                out.push_str(&format!("  {k}: {v}\n"));
            }
            out.push_str(&format!("\n{}\n\n", String::from_utf8_lossy(&r.body)));
        }
        Err(e) => {
            out.push_str(&format!("result: error: {e}\n"));
            if let crate::plugins::Error::Trap {
                reason, backtrace, ..
            } = e
            {
                out.push_str(&format!("  reason: {}\n", reason.as_str()));
                if let Some(bt) = backtrace {
                    out.push_str(&format!("  backtrace:\n{bt}\n"));
                }
            }
        }
    }
    out.push_str(&format!(
        "logs ({}{}):\n",
        outcome.logs.len(),
        if outcome.logs_dropped > 0 {
            format!(", {} dropped", outcome.logs_dropped)
        } else {
            String::new()
        }
    ));
    for line in &outcome.logs {
        let fields: String = line
            .fields
            .iter()
            .map(|(k, v)| format!(" {k}={v}"))
            .collect();
        out.push_str(&format!("  {:<5} {}{fields}\n", line.level, line.message));
    }
    out.push_str(&format!("host calls ({}):\n", outcome.host_calls.len()));
    for call in &outcome.host_calls {
        out.push_str(&format!(
            "  {}.{} {} {} µs\n",
            call.interface,
            call.function,
            if call.ok { "ok" } else { "failed" },
            call.micros
        ));
    }
    if !outcome.emitted.is_empty() {
        out.push_str(&format!("emitted ({}):\n", outcome.emitted.len()));
        for e in &outcome.emitted {
            out.push_str(&format!("  {} {}\n", e.kind, e.payload));
        }
    }
    out.push_str(&format!(
        "memory peak: {} KiB\ncpu: {:.3} ms\nwall: {:.3} ms\n",
        outcome.memory_peak / 1024,
        outcome.cpu.as_secs_f64() * 1e3,
        outcome.wall.as_secs_f64() * 1e3
    ));
    out
}
