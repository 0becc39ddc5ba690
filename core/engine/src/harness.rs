//! A local harness for plugin authors and tests: one plugin in the real runtime, against a
//! throwaway tenant on a temporary SQLite database whose merchant's Alipay app talks to the
//! offline sandbox on a loopback port.
//!
//! Invariant: nothing outside the temporary folder is touched; dropping the harness removes
//! the database, the cache and the sandbox.

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
        }
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
    // Last: the folder outlives everything that uses it.
    _dir: tempfile::TempDir,
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
        let dir = tempfile::tempdir().map_err(setup)?;
        let mut config = Config::load(None).map_err(setup)?;
        config.data_dir = dir.path().to_owned();
        config.database.url = SecretString::from(format!(
            "sqlite://{}",
            dir.path().join("harness.db").display()
        ));
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).map_err(setup)?;
        config.secrets.master_key = Some(SecretString::from(
            base64::engine::general_purpose::STANDARD.encode(key),
        ));
        config.secrets.previous_master_keys.clear();
        let db = Db::connect(&config).await.map_err(setup)?;
        db.migrate().await.map_err(setup)?;
        let vault = Arc::new(Vault::from_config(&config.secrets).map_err(setup)?);

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(setup)?;
        let address = listener.local_addr().map_err(setup)?;
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
            crate::plugins::kv::Store::Database(db.conn.clone())
        };
        let runtime = crate::app::plugin_runtime(
            RuntimeOptions {
                cache_dir: options
                    .cache_dir
                    .clone()
                    .unwrap_or_else(|| dir.path().join("plugin-cache")),
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
        Ok((
            Self {
                runtime: Arc::new(runtime),
                plugin,
                merchant,
                sandbox,
                db,
                installation_id: format!("harness-{}", uuid::Uuid::now_v7().simple()),
                config: json!({}),
                grant: None,
                locale: "zh-CN".into(),
                server,
                _dir: dir,
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

    /// Runs `configure`; on success the normalised configuration becomes the harness's.
    pub async fn configure(&mut self, config: Value) -> Outcome {
        let outcome = self.call(Call::Configure { config }).await;
        if let Ok(Output::Config(normalised)) = &outcome.result {
            self.config = normalised.clone();
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
