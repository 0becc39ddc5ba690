//! The plugin host: WebAssembly components run in wasmtime with nothing granted but the
//! capabilities their manifest declares and their tenant's grant allows.
//!
//! A plugin is loaded once (checked, compiled ahead of time into the on-disk cache keyed by its
//! content hash and the engine configuration, linked into an `InstancePre`) and then invoked
//! any number of times, each in a fresh store: a pooled instance, a memory cap, a CPU budget
//! metered by epoch ticks, a wall-clock deadline that counts host calls, and an output cap.
//!
//! Invariants: nothing is compiled on the invocation path; a trap fails only its own invocation
//! (and counts towards the circuit breaker of that installation for that tenant); a component whose imports exceed
//! its manifest never loads; host calls are bound to the invocation's tenant, and no secret
//! crosses into the guest.

pub mod archive;
pub mod catalog;
pub mod dispatch;
mod bindings;
pub mod harness;
mod host;
pub mod kv;
pub mod manifest;

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use handlebars::Handlebars;
use sea_orm::DatabaseConnection;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::Semaphore;
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Engine, Store, Trap, UpdateDeadline};

use crate::alipay::client::AlipayClient;
use crate::config::PluginsConfig;
use crate::secrets::Vault;
use crate::tenancy::Place;
use crate::themes::Themes;
use archive::Archive;
use bindings::trellis::plugin::types as wit;
use host::{CpuMeter, Limiter, State};
pub use manifest::{Allowance, HOST_API_VERSION, Manifest};

/// The epoch tick: the granularity of CPU metering and of yielding to other tasks.
pub const TICK: Duration = Duration::from_millis(10);
/// How long an installation that needed more than one tick of CPU starts in the heavy lane.
const HOG_MEMORY: Duration = Duration::from_secs(10);
/// Invocations of one installation running at once; more wait, so one busy installation can
/// hold only a share of the runtime's slots.
pub const PER_INSTALLATION: usize = 32;
/// Largest event payload or HTTP body handed to a plugin.
pub const MAX_INPUT_BYTES: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid manifest: {0}")]
    Manifest(String),
    #[error("the plugin needs host-api {wanted}, this engine provides {provided}")]
    HostApi { wanted: String, provided: String },
    #[error("invalid archive: {0}")]
    Archive(String),
    #[error("the archive's signature does not verify")]
    BadSignature,
    #[error("the component imports {import}, but {reason}")]
    UndeclaredImport { import: String, reason: String },
    #[error("the component imports {import}, which the engine does not provide: {reason}")]
    UnsupportedImport { import: String, reason: String },
    #[error("the component does not compile: {0}")]
    Compile(String),
    #[error("plugin cache: {0}")]
    Cache(String),
    #[error("the plugin engine cannot start: {0}")]
    Engine(String),
    #[error("{0}")]
    BadInput(String),
    #[error("the plugin does not subscribe to {0}")]
    NotSubscribed(String),
    #[error("the plugin has no route {method} {path}")]
    NoRoute { method: String, path: String },
    #[error("the plugin answered an error: {0}")]
    Plugin(PluginError),
    #[error("the plugin was stopped: {message}")]
    Trap {
        reason: TrapReason,
        message: String,
        backtrace: Option<String>,
    },
    #[error("the plugin did not finish within {wall_ms} ms")]
    Timeout { wall_ms: u32 },
    #[error("the plugin's output is {bytes} bytes; the limit is {limit}")]
    OutputTooLarge { bytes: usize, limit: usize },
    #[error("the plugin could not start within {wall_ms} ms: the plugin runtime is busy")]
    Busy { wall_ms: u32 },
    #[error("the installation is suspended until {until} after repeated failures")]
    Suspended { until: DateTime<Utc> },
}

/// Why the host stopped an invocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TrapReason {
    /// The CPU budget (`limits.cpu_ms`) ran out.
    CpuBudget,
    /// Linear memory would have grown past `limits.memory_mib`.
    Memory,
    /// The guest's stack overflowed.
    StackOverflow,
    /// The guest panicked (or hit `unreachable`).
    Panic,
    /// A per-invocation host limit: kv operations, Alipay calls, emitted events.
    HostLimit,
    /// The wall-clock deadline passed inside the guest or a host call.
    WallClock,
    /// Any other trap.
    Fault,
}

impl TrapReason {
    pub fn as_str(self) -> &'static str {
        match self {
            TrapReason::CpuBudget => "cpu_budget",
            TrapReason::Memory => "memory",
            TrapReason::StackOverflow => "stack_overflow",
            TrapReason::Panic => "panic",
            TrapReason::HostLimit => "host_limit",
            TrapReason::WallClock => "wall_clock",
            TrapReason::Fault => "fault",
        }
    }
}

/// An error a plugin returned (the WIT `error` variant), as the engine reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PluginError {
    InvalidInput {
        message: String,
    },
    InvalidField {
        field: String,
        message: String,
    },
    NotFound {
        message: String,
    },
    Denied {
        message: String,
    },
    Conflict {
        message: String,
    },
    QuotaExceeded {
        message: String,
    },
    Upstream {
        code: String,
        sub_code: Option<String>,
        message: String,
    },
    Unsupported {
        message: String,
    },
    Internal {
        message: String,
    },
}

impl std::fmt::Display for PluginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PluginError::InvalidInput { message } => write!(f, "invalid input: {message}"),
            PluginError::InvalidField { field, message } => write!(f, "{field}: {message}"),
            PluginError::NotFound { message } => write!(f, "not found: {message}"),
            PluginError::Denied { message } => write!(f, "denied: {message}"),
            PluginError::Conflict { message } => write!(f, "conflict: {message}"),
            PluginError::QuotaExceeded { message } => write!(f, "quota exceeded: {message}"),
            PluginError::Upstream {
                code,
                sub_code,
                message,
            } => {
                write!(
                    f,
                    "Alipay {code} {}: {message}",
                    sub_code.as_deref().unwrap_or("-")
                )
            }
            PluginError::Unsupported { message } => write!(f, "unsupported: {message}"),
            PluginError::Internal { message } => write!(f, "internal: {message}"),
        }
    }
}

fn clip(mut text: String) -> String {
    const MAX: usize = 1024;
    if text.len() > MAX {
        let mut cut = MAX;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text
}

impl From<wit::Error> for PluginError {
    fn from(e: wit::Error) -> Self {
        match e {
            wit::Error::InvalidInput(m) => PluginError::InvalidInput { message: clip(m) },
            wit::Error::InvalidField(f) => PluginError::InvalidField {
                field: clip(f.field),
                message: clip(f.message),
            },
            wit::Error::NotFound(m) => PluginError::NotFound { message: clip(m) },
            wit::Error::Denied(m) => PluginError::Denied { message: clip(m) },
            wit::Error::Conflict(m) => PluginError::Conflict { message: clip(m) },
            wit::Error::QuotaExceeded(m) => PluginError::QuotaExceeded { message: clip(m) },
            wit::Error::Upstream(u) => PluginError::Upstream {
                code: clip(u.code),
                sub_code: u.sub_code.map(clip),
                message: clip(u.message),
            },
            wit::Error::Unsupported(m) => PluginError::Unsupported { message: clip(m) },
            wit::Error::Internal(m) => PluginError::Internal { message: clip(m) },
        }
    }
}

/// The engine services host calls use. The database and vault are the engine's own; a plugin
/// reaches them only through the bound namespace and merchant.
#[derive(Clone)]
pub struct Services {
    pub db: DatabaseConnection,
    /// Where the `kv` capability stores data: the database in the engine.
    pub kv: kv::Store,
    pub vault: Arc<Vault>,
    pub alipay: AlipayClient,
    /// Rendered pages are wrapped in the partner's theme; without themes, bare HTML.
    pub themes: Option<Themes>,
}

/// Who an invocation is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TenantContext {
    pub partner_id: String,
    pub agent_id: Option<String>,
    pub merchant_id: Option<String>,
    pub store_id: Option<String>,
    pub installation_id: String,
    pub locale: String,
}

impl TenantContext {
    /// The context of a node of the tree (a partner, agent, merchant or store).
    pub fn at(place: &Place, installation_id: &str, locale: &str) -> Self {
        Self {
            partner_id: place.partner_id.clone().unwrap_or_default(),
            agent_id: place.agent_id.clone(),
            merchant_id: place.merchant_id.clone(),
            store_id: place.store_id.clone(),
            installation_id: installation_id.to_owned(),
            locale: if locale == "en" {
                "en".into()
            } else {
                "zh-CN".into()
            },
        }
    }

    /// The kv namespace of this tenant: the merchant's (stores share it), else the agent's or
    /// partner's.
    pub fn scope_id(&self) -> &str {
        self.merchant_id
            .as_deref()
            .or(self.agent_id.as_deref())
            .unwrap_or(&self.partner_id)
    }
}

/// A domain event for `handle-event`.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub id: String,
    pub kind: String,
    pub occurred_at: DateTime<Utc>,
    pub payload: Value,
}

/// An HTTP request for one of the plugin's routes; authentication is already stripped.
#[derive(Debug, Clone, Default)]
pub struct HttpRequest {
    pub method: String,
    /// Below the plugin's mount point, starting with `/`.
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    #[serde(skip)]
    pub body: Vec<u8>,
}

/// Which export to call.
#[derive(Debug, Clone)]
pub enum Call {
    Install { previous_version: Option<String> },
    Configure { config: Value },
    Uninstall,
    Event(Event),
    Http(HttpRequest),
}

/// One invocation as the caller asks for it.
#[derive(Debug, Clone)]
pub struct Request {
    pub tenant: TenantContext,
    /// What this tenant is granted; `None`: everything the manifest declares.
    pub grant: Option<Allowance>,
    /// The validated configuration of this installation for this tenant.
    pub config: Value,
    /// The partner's theme, for rendered pages.
    pub theme: String,
    pub call: Call,
}

/// What an invocation produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Done,
    Config(Value),
    Http(HttpResponse),
}

#[derive(Debug, Clone, Serialize)]
pub struct LogLine {
    pub level: &'static str,
    pub message: String,
    pub fields: Vec<(String, String)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HostCall {
    pub interface: &'static str,
    pub function: &'static str,
    pub ok: bool,
    pub micros: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Emitted {
    pub kind: String,
    pub payload: Value,
}

/// The result of one invocation and everything observed while it ran.
#[derive(Debug)]
pub struct Outcome {
    pub invocation_id: String,
    pub result: Result<Output, Error>,
    pub logs: Vec<LogLine>,
    pub logs_dropped: usize,
    pub host_calls: Vec<HostCall>,
    /// Events to publish; only meaningful when `result` is `Ok`.
    pub emitted: Vec<Emitted>,
    pub memory_peak: usize,
    pub cpu: Duration,
    pub wall: Duration,
}

/// What an invocation carries into its store.
pub struct Invocation {
    pub id: String,
    pub manifest: Arc<Manifest>,
    pub templates: Arc<Handlebars<'static>>,
    pub tenant: TenantContext,
    pub grant: Arc<Allowance>,
    pub config: String,
    pub theme: String,
}

/// One interface a component imports, with the functions it uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Import {
    pub name: String,
    pub functions: Vec<String>,
}

impl std::fmt::Display for Import {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} [{}]", self.name, self.functions.join(", "))
    }
}

/// A plugin ready to run.
pub struct Loaded {
    /// The archive's digest (manifest, component, templates): the runtime's key for it.
    pub digest: String,
    pub manifest: Arc<Manifest>,
    /// Everything the manifest declares: the grant when a request names none.
    full_grant: Arc<Allowance>,
    pub component_sha256: String,
    pub imports: Vec<Import>,
    pub precompiled_bytes: u64,
    pre: bindings::PluginPre<State>,
    templates: Arc<Handlebars<'static>>,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded")
            .field("id", &self.manifest.id)
            .field("version", &self.manifest.version.to_string())
            .field("sha256", &self.component_sha256)
            .finish()
    }
}

/// Counters since start-up.
#[derive(Debug, Default)]
pub struct Metrics {
    pub invocations: AtomicU64,
    pub traps: AtomicU64,
    pub timeouts: AtomicU64,
    pub suspended: AtomicU64,
}

/// Trips an installation after too many traps in a window.
struct Breaker {
    traps: u32,
    window: Duration,
    cooldown: Duration,
    recent: Mutex<HashMap<String, VecDeque<Instant>>>,
    open: Mutex<HashMap<String, (Instant, DateTime<Utc>)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Breaker {
    fn open_until(&self, installation: &str) -> Option<DateTime<Utc>> {
        let mut open = lock(&self.open);
        match open.get(installation) {
            Some((until, at)) if *until > Instant::now() => Some(*at),
            Some(_) => {
                open.remove(installation);
                None
            }
            None => None,
        }
    }

    /// Records a trap; true when it tripped the breaker.
    fn record(&self, installation: &str) -> bool {
        let now = Instant::now();
        let mut recent = lock(&self.recent);
        let times = recent.entry(installation.to_owned()).or_default();
        times.push_back(now);
        while times
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.window)
        {
            times.pop_front();
        }
        if times.len() >= self.traps as usize {
            times.clear();
            let until = Utc::now()
                + chrono::Duration::from_std(self.cooldown).unwrap_or(chrono::Duration::zero());
            lock(&self.open).insert(installation.to_owned(), (now + self.cooldown, until));
            return true;
        }
        false
    }

    /// Lifts every suspension of an installation (whichever tenants it was for).
    fn reset(&self, installation: &str) {
        let prefix = format!("{installation}/");
        lock(&self.open).retain(|key, _| !key.starts_with(&prefix));
        lock(&self.recent).retain(|key, _| !key.starts_with(&prefix));
    }
}

/// Options of a runtime beyond the configuration file.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    pub cache_dir: PathBuf,
    pub max_concurrency: u32,
    pub pooling: bool,
    pub breaker_traps: u32,
    pub breaker_window: Duration,
    pub breaker_cooldown: Duration,
    /// Freeze WASI clocks and randomness (tests, the harness's `--frozen`).
    pub frozen_clock: Option<DateTime<Utc>>,
    /// The lowest plugin log level kept.
    pub min_log_level: &'static str,
}

impl RuntimeOptions {
    pub fn from_config(config: &PluginsConfig) -> Self {
        Self {
            cache_dir: config.cache_dir.clone(),
            max_concurrency: config.max_concurrency,
            pooling: config.pooling,
            breaker_traps: config.breaker_traps,
            breaker_window: Duration::from_secs(config.breaker_window_secs),
            breaker_cooldown: Duration::from_secs(config.breaker_cooldown_secs),
            frozen_clock: None,
            min_log_level: "info",
        }
    }
}

/// The plugin runtime of one process.
pub struct Runtime {
    engine: Engine,
    linker: Linker<State>,
    engine_hash: String,
    allocation: &'static str,
    options: RuntimeOptions,
    services: Arc<Services>,
    loaded: RwLock<HashMap<String, Arc<Loaded>>>,
    slots: Arc<Semaphore>,
    shares: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Invocations past their first tick of CPU share these permits, so busy plugins cannot
    /// occupy every worker thread and starve quick ones.
    heavy: Arc<Semaphore>,
    hogs: Arc<Mutex<HashMap<String, Instant>>>,
    breaker: Breaker,
    metrics: Metrics,
    stop_ticker: Arc<AtomicBool>,
    id_prefix: String,
    invocation_counter: AtomicU64,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("allocation", &self.allocation)
            .field("engine_hash", &self.engine_hash)
            .finish()
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

/// Per-component maximums: a Rust component has one memory, a few tables and a handful of core
/// instances (its module and the shims `wit-component` adds).
const MAX_MEMORIES: u32 = 2;
const MAX_TABLES: u32 = 8;
const MAX_CORE_INSTANCES: u32 = 16;

fn engine_config(pool: Option<u32>) -> wasmtime::Config {
    let mut cfg = wasmtime::Config::new();
    cfg.epoch_interruption(true);
    cfg.max_wasm_stack(512 << 10);
    cfg.async_stack_size(2 << 20);
    // No component-model async (WASIp3) yet: it costs about 1 µs per call when enabled.
    cfg.concurrency_support(false);
    cfg.wasm_backtrace_details(wasmtime::WasmBacktraceDetails::Disable);
    if let Some(n) = pool {
        let n = n.max(1);
        let mut pooling = wasmtime::PoolingAllocationConfig::default();
        // Totals are n times the per-component maximums, so n invocations of any plugins always
        // fit and no plugin can exhaust the pool for the others.
        pooling
            .total_component_instances(n)
            .total_core_instances(n.saturating_mul(MAX_CORE_INSTANCES))
            .total_memories(n.saturating_mul(MAX_MEMORIES))
            .total_tables(n.saturating_mul(MAX_TABLES))
            .total_stacks(n)
            .max_memory_size((manifest::ceilings::MEMORY_MIB as usize) << 20)
            .max_memories_per_component(MAX_MEMORIES)
            .max_tables_per_component(MAX_TABLES)
            .max_core_instances_per_component(MAX_CORE_INSTANCES)
            .table_elements(20_000)
            .linear_memory_keep_resident(256 << 10)
            .table_keep_resident(8 << 10)
            // Return a slot on drop, so the plugin's next invocation reuses the slot it just
            // left while it is still in cache (batching cycled through 64 slots: slower).
            .decommit_batch_size(1);
        cfg.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pooling));
    }
    cfg
}

#[allow(
    clippy::disallowed_methods,
    reason = "the epoch ticker is a plain thread that must tick even when tokio is busy"
)]
fn spawn_ticker(engine: Engine, stop: Arc<AtomicBool>) {
    let spawned = std::thread::Builder::new()
        .name("trellis-epoch".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(TICK);
                engine.increment_epoch();
            }
        });
    if let Err(e) = spawned {
        tracing::error!("cannot start the plugin epoch ticker: {e}");
    }
}

fn interface_of(import: &str) -> (&str, &str) {
    // "trellis:plugin/kv@0.1.0" → ("trellis:plugin/kv", "0.1.0")
    import.split_once('@').unwrap_or((import, ""))
}

/// Checks a component's imports against its manifest: every import must be an interface the
/// engine provides and, for capabilities, one the manifest declares.
pub fn check_imports(manifest: &Manifest, imports: &[Import]) -> Result<(), Error> {
    let caps = &manifest.capabilities;
    for import in imports {
        let (interface, version) = interface_of(&import.name);
        let shown = import.to_string();
        if let Some(name) = interface.strip_prefix("trellis:plugin/") {
            let version =
                semver::Version::parse(version).map_err(|_| Error::UnsupportedImport {
                    import: shown.clone(),
                    reason: "trellis:plugin imports must carry a version".into(),
                })?;
            let compatible = semver::VersionReq::parse(&format!("^{HOST_API_VERSION}"))
                .is_ok_and(|r| r.matches(&version))
                && version <= HOST_API_VERSION;
            if !compatible {
                return Err(Error::HostApi {
                    wanted: format!("{version} (imported as {})", import.name),
                    provided: HOST_API_VERSION.to_string(),
                });
            }
            let undeclared = |reason: &str| Error::UndeclaredImport {
                import: shown.clone(),
                reason: reason.to_owned(),
            };
            match name {
                "types" | "log" | "config" => {}
                "kv" if caps.kv.is_none() => {
                    return Err(undeclared("plugin.toml declares no [capabilities] kv"));
                }
                "alipay" => {
                    let methods = caps.alipay.as_ref().map(|a| &a.methods);
                    if methods.is_none_or(|m| m.is_empty()) {
                        return Err(undeclared(
                            "plugin.toml declares no [capabilities] alipay methods",
                        ));
                    }
                    if import.functions.iter().any(|f| f == "upload-image")
                        && !methods
                            .is_some_and(|m| m.contains("alipay.offline.material.image.upload"))
                    {
                        return Err(undeclared(
                            "upload-image needs alipay.offline.material.image.upload in [capabilities] alipay methods",
                        ));
                    }
                }
                "templates" if caps.templates.is_empty() => {
                    return Err(undeclared(
                        "plugin.toml declares no [capabilities] templates",
                    ));
                }
                "events" if caps.emit.is_empty() => {
                    return Err(undeclared("plugin.toml declares no [capabilities] emit"));
                }
                "kv" | "templates" | "events" => {}
                _ => {
                    return Err(Error::UnsupportedImport {
                        import: shown,
                        reason: "not an interface of trellis:plugin".into(),
                    });
                }
            }
        } else if let Some(rest) = interface.strip_prefix("wasi:") {
            let allowed = rest.starts_with("io/")
                || rest.starts_with("clocks/")
                || rest.starts_with("random/")
                || matches!(
                    rest,
                    "cli/environment"
                        | "cli/exit"
                        | "cli/stdin"
                        | "cli/stdout"
                        | "cli/stderr"
                        | "cli/terminal-input"
                        | "cli/terminal-output"
                        | "cli/terminal-stdin"
                        | "cli/terminal-stdout"
                        | "cli/terminal-stderr"
                );
            // Plugins cannot sleep: a waiting plugin would hold its slot while doing nothing.
            if rest == "clocks/monotonic-clock"
                && import.functions.iter().any(|f| f.starts_with("subscribe"))
            {
                return Err(Error::UnsupportedImport {
                    import: shown,
                    reason: "plugins may not sleep or wait on timers".into(),
                });
            }
            if !allowed || !version.starts_with("0.2.") {
                return Err(Error::UnsupportedImport {
                    import: shown,
                    reason: "plugins get no files, sockets or network; only wasi io, clocks, random and stdio 0.2".into(),
                });
            }
        } else {
            return Err(Error::UnsupportedImport {
                import: shown,
                reason: "only trellis:plugin and basic wasi interfaces are provided".into(),
            });
        }
    }
    Ok(())
}

fn imports_of(engine: &Engine, component: &Component) -> Vec<Import> {
    let ty = component.component_type();
    let mut out: Vec<Import> = ty
        .imports(engine)
        .map(|(name, item)| {
            let functions = match item.ty {
                ComponentItem::ComponentInstance(instance) => {
                    let mut f: Vec<String> = instance
                        .exports(engine)
                        .filter(|(_, item)| matches!(item.ty, ComponentItem::ComponentFunc(_)))
                        .map(|(n, _)| n.to_owned())
                        .collect();
                    f.sort();
                    f
                }
                _ => Vec::new(),
            };
            Import {
                name: name.to_owned(),
                functions,
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Reads a component's imports with a throwaway engine (packing and inspecting run without a
/// database or runtime).
pub fn inspect_component(wasm: &[u8]) -> Result<Vec<Import>, Error> {
    let engine = Engine::new(&engine_config(None)).map_err(|e| Error::Engine(e.to_string()))?;
    let component = Component::new(&engine, wasm).map_err(|e| Error::Compile(format!("{e:#}")))?;
    Ok(imports_of(&engine, &component))
}

/// Plugin templates may not include other templates (a cycle would recurse without end in the
/// host) and may nest `each` at most twice (so a render's work is bounded by its data).
fn check_template(path: &str, text: &str) -> Result<(), Error> {
    let mut depth = 0usize;
    let mut rest = text;
    while let Some(at) = rest.find("{{") {
        let tag = rest[at + 2..].trim_start_matches(['{', '~', ' ']);
        let body = tag.trim_start_matches('#').trim_start();
        if tag.starts_with('>') || body.starts_with('>') {
            return Err(Error::Archive(format!(
                "{path}: templates may not include other templates ({{{{> …}}}})"
            )));
        }
        if tag.starts_with('#') && body.starts_with("each") {
            depth += 1;
            if depth > 2 {
                return Err(Error::Archive(format!(
                    "{path}: at most two nested {{{{#each}}}} blocks"
                )));
            }
        } else if tag.starts_with("/each") || tag.starts_with("/ each") {
            depth = depth.saturating_sub(1);
        }
        rest = &rest[at + 2..];
    }
    Ok(())
}

fn template_registry(archive: &Archive) -> Result<Handlebars<'static>, Error> {
    let mut registry = Handlebars::new();
    registry.set_prevent_indent(true);
    for (path, bytes) in &archive.files {
        let Some(name) = path.strip_prefix("templates/") else {
            continue;
        };
        let text = std::str::from_utf8(bytes)
            .map_err(|_| Error::Archive(format!("{path} is not UTF-8")))?;
        check_template(path, text)?;
        registry
            .register_template_string(name, text)
            .map_err(|e| Error::Archive(format!("{path}: {e}")))?;
    }
    Ok(registry)
}

impl Runtime {
    /// Starts the engine: pooling when the address space allows, else on-demand.
    pub fn new(options: RuntimeOptions, services: Services) -> Result<Self, Error> {
        let (engine, allocation) = if options.pooling {
            match Engine::new(&engine_config(Some(options.max_concurrency))) {
                Ok(engine) => (engine, "pooling"),
                Err(e) => {
                    tracing::warn!(
                        "the pooling allocator is unavailable ({e}); using on-demand allocation"
                    );
                    let engine = Engine::new(&engine_config(None))
                        .map_err(|e| Error::Engine(e.to_string()))?;
                    (engine, "on-demand")
                }
            }
        } else {
            let engine =
                Engine::new(&engine_config(None)).map_err(|e| Error::Engine(e.to_string()))?;
            (engine, "on-demand")
        };
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let engine_hash = format!("{:016x}", hasher.finish());

        let mut linker: Linker<State> = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| Error::Engine(e.to_string()))?;
        bindings::Plugin::add_to_linker::<State, wasmtime::component::HasSelf<State>>(
            &mut linker,
            |s| s,
        )
        .map_err(|e| Error::Engine(e.to_string()))?;

        let stop_ticker = Arc::new(AtomicBool::new(false));
        spawn_ticker(engine.clone(), stop_ticker.clone());
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
        tracing::info!(allocation, engine = %engine_hash, "plugin engine ready");
        Ok(Self {
            linker,
            engine_hash,
            allocation,
            slots: Arc::new(Semaphore::new(options.max_concurrency as usize)),
            shares: Mutex::default(),
            heavy: Arc::new(Semaphore::new(workers.saturating_sub(1).max(1))),
            hogs: Arc::default(),
            breaker: Breaker {
                traps: options.breaker_traps,
                window: options.breaker_window,
                cooldown: options.breaker_cooldown,
                recent: Mutex::default(),
                open: Mutex::default(),
            },
            metrics: Metrics::default(),
            id_prefix: uuid::Uuid::new_v4().simple().to_string()[..12].to_owned(),
            invocation_counter: AtomicU64::new(0),
            loaded: RwLock::default(),
            stop_ticker,
            engine,
            options,
            services: Arc::new(services),
        })
    }

    /// "pooling" or "on-demand".
    pub fn allocation(&self) -> &'static str {
        self.allocation
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn services(&self) -> &Services {
        &self.services
    }

    /// Compiles a component just to read its imports (packing and inspecting; never used to
    /// run anything).
    pub fn inspect_component(&self, wasm: &[u8]) -> Result<Vec<Import>, Error> {
        let component =
            Component::new(&self.engine, wasm).map_err(|e| Error::Compile(format!("{e:#}")))?;
        Ok(imports_of(&self.engine, &component))
    }

    fn artifact_path(&self, sha256: &str) -> PathBuf {
        self.options
            .cache_dir
            .join(format!("{sha256}-{}.cwasm", self.engine_hash))
    }

    /// Makes sure the compiled artifact of a component is in the cache; true when it had to
    /// be compiled.
    pub fn precompile(&self, wasm: &[u8], sha256: &str) -> Result<bool, Error> {
        let path = self.artifact_path(sha256);
        if path.is_file() {
            return Ok(false);
        }
        let artifact = self
            .engine
            .precompile_component(wasm)
            .map_err(|e| Error::Compile(format!("{e:#}")))?;
        std::fs::create_dir_all(&self.options.cache_dir)
            .map_err(|e| Error::Cache(format!("{}: {e}", self.options.cache_dir.display())))?;
        archive::write_atomically(&path, &artifact)
            .map_err(|e| Error::Cache(format!("{}: {e}", path.display())))?;
        Ok(true)
    }

    #[allow(
        unsafe_code,
        reason = "deserialising our own precompiled artifact; see below"
    )]
    fn deserialize(&self, path: &Path) -> Result<Component, Error> {
        // SAFETY: `deserialize_file` trusts its input. Only `precompile` writes this cache, from
        // a component that passed validation, under a name carrying the engine's compatibility
        // hash; the archive's author never supplies compiled code.
        unsafe { Component::deserialize_file(&self.engine, path) }
            .map_err(|e| Error::Cache(format!("{}: {e:#}", path.display())))
    }

    /// Loads an archive: checks it, compiles it into the cache if needed, links it. Done at
    /// install and start-up, never per request.
    pub fn load(&self, archive: &Archive) -> Result<Arc<Loaded>, Error> {
        if let Some(loaded) = self.get(&archive.digest) {
            return Ok(loaded);
        }
        archive.manifest.check_host_api()?;
        self.precompile(&archive.component, &archive.component_sha256)?;
        let path = self.artifact_path(&archive.component_sha256);
        let component = match self.deserialize(&path) {
            Ok(c) => c,
            Err(e) => {
                // A damaged cache entry is rebuilt once rather than failing the plugin.
                tracing::warn!("recompiling {}: {e}", archive.manifest.id);
                let _ = std::fs::remove_file(&path);
                self.precompile(&archive.component, &archive.component_sha256)?;
                self.deserialize(&path)?
            }
        };
        let imports = imports_of(&self.engine, &component);
        check_imports(&archive.manifest, &imports)?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| Error::Compile(format!("{e:#}")))?;
        let pre = bindings::PluginPre::new(pre).map_err(|e| Error::Compile(format!("{e:#}")))?;
        let loaded = Arc::new(Loaded {
            digest: archive.digest.clone(),
            full_grant: Arc::new(Allowance::all(&archive.manifest)),
            manifest: Arc::new(archive.manifest.clone()),
            component_sha256: archive.component_sha256.clone(),
            imports,
            precompiled_bytes: std::fs::metadata(&path)
                .map(|m| m.len())
                .unwrap_or_default(),
            pre,
            templates: Arc::new(template_registry(archive)?),
        });
        self.loaded
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(archive.digest.clone(), loaded.clone());
        Ok(loaded)
    }

    /// A loaded plugin by archive digest.
    pub fn get(&self, digest: &str) -> Option<Arc<Loaded>> {
        self.loaded
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(digest)
            .cloned()
    }

    /// Forgets a loaded plugin (after an upgrade or uninstall); its compiled artifact stays in
    /// the cache, so loading it again is cheap.
    pub fn evict(&self, digest: &str) -> Option<Arc<Loaded>> {
        self.loaded
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(digest)
    }

    /// Lifts a suspension (an operator's decision after fixing the cause).
    pub fn reset_breaker(&self, installation_id: &str) {
        self.breaker.reset(installation_id);
    }

    /// Waits for a place to run, always in the same order — the installation's share, a slot,
    /// then (for an installation known to be heavy) a heavy-lane permit — so no two waiters can
    /// hold what the other needs. `None` when the runtime is shutting down.
    async fn admit(&self, installation: &str) -> Option<Permits> {
        let share = {
            let mut shares = lock(&self.shares);
            match shares.get(installation) {
                Some(share) => share.clone(),
                None => shares
                    .entry(installation.to_owned())
                    .or_insert_with(|| Arc::new(Semaphore::new(PER_INSTALLATION)))
                    .clone(),
            }
        };
        let _installation = share.acquire_owned().await.ok()?;
        let _slot = self.slots.clone().acquire_owned().await.ok()?;
        let heavy = if self.is_hog(installation) {
            Some(self.heavy.clone().acquire_owned().await.ok()?)
        } else {
            None
        };
        Some(Permits {
            _installation,
            _slot,
            heavy,
        })
    }

    /// Unique per process and, through the random prefix, across processes; no system call.
    fn next_invocation_id(&self) -> String {
        let n = self.invocation_counter.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n:010x}", self.id_prefix)
    }

    fn is_hog(&self, installation: &str) -> bool {
        let mut hogs = lock(&self.hogs);
        match hogs.get(installation) {
            Some(at) if at.elapsed() < HOG_MEMORY => true,
            Some(_) => {
                hogs.remove(installation);
                false
            }
            None => false,
        }
    }

    fn wasi(&self) -> wasmtime_wasi::WasiCtx {
        let mut builder = wasmtime_wasi::WasiCtxBuilder::new();
        builder
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        if let Some(at) = self.options.frozen_clock {
            builder
                .wall_clock(FrozenWall(at))
                .monotonic_clock(FrozenMonotonic)
                .secure_random(wasmtime_wasi::Deterministic::new(vec![7, 1, 9, 4]))
                .insecure_random(wasmtime_wasi::Deterministic::new(vec![3, 5, 8]))
                .insecure_random_seed(42);
        }
        builder.build()
    }

    /// Runs one invocation. Never panics and never compiles; failures come back in the outcome.
    pub async fn invoke(&self, loaded: &Arc<Loaded>, request: Request) -> Outcome {
        let started = Instant::now();
        let id = self.next_invocation_id();
        self.metrics.invocations.fetch_add(1, Ordering::Relaxed);
        let empty = |id: String, result: Result<Output, Error>| Outcome {
            invocation_id: id,
            result,
            logs: Vec::new(),
            logs_dropped: 0,
            host_calls: Vec::new(),
            emitted: Vec::new(),
            memory_peak: 0,
            cpu: Duration::ZERO,
            wall: started.elapsed(),
        };
        let installation = request.tenant.installation_id.clone();
        // Per installation and tenant: one merchant's failing calls (or anonymous visitors to its
        // public pages) must not suspend the plugin for the partner's other merchants.
        let breaker_key = format!("{installation}/{}", request.tenant.scope_id());
        if let Some(until) = self.breaker.open_until(&breaker_key) {
            self.metrics.suspended.fetch_add(1, Ordering::Relaxed);
            return empty(id, Err(Error::Suspended { until }));
        }
        let payload = match check_request(&loaded.manifest, &request.call) {
            Ok(payload) => payload,
            Err(e) => return empty(id, Err(e)),
        };
        let manifest = loaded.manifest.clone();
        let grant = match request.grant.clone() {
            None => loaded.full_grant.clone(),
            Some(g) => Arc::new(g.within(&manifest)),
        };
        let invocation = Arc::new(Invocation {
            id: id.clone(),
            manifest: manifest.clone(),
            templates: loaded.templates.clone(),
            tenant: request.tenant.clone(),
            config: request.config.to_string(),
            theme: request.theme.clone(),
            grant,
        });
        let wall = Duration::from_millis(u64::from(manifest.limits.wall_ms));
        let wall_ms = manifest.limits.wall_ms;
        // Admission: waiting for a place to run is bounded by the wall time too, but it is not
        // the plugin's fault and does not count against its deadline or its breaker.
        let permits = match tokio::time::timeout(wall, self.admit(&installation)).await {
            Ok(Some(permits)) => permits,
            Ok(None) | Err(_) => return empty(id, Err(Error::Busy { wall_ms })),
        };
        // The deadline is enforced inside (epoch callback and host calls) so the journal
        // survives; this outer bound only catches what cannot be interrupted.
        // Boxed: the future holds the whole store state and would otherwise be moved by value.
        let run = Box::pin(self.run(
            loaded,
            invocation,
            (request.call, payload),
            Instant::now() + wall,
            permits,
        ));
        let mut outcome = match tokio::time::timeout(wall + Duration::from_millis(500), run).await {
            Ok(outcome) => outcome,
            Err(_) => empty(id, Err(Error::Timeout { wall_ms })),
        };
        outcome.wall = started.elapsed();
        let counts = match &outcome.result {
            Err(Error::Trap {
                reason,
                message,
                backtrace,
            }) => {
                tracing::warn!(
                    plugin = %manifest.id,
                    installation = %installation,
                    invocation = %outcome.invocation_id,
                    reason = reason.as_str(),
                    backtrace = backtrace.as_deref().unwrap_or(""),
                    "plugin trapped: {message}"
                );
                true
            }
            Err(Error::Timeout { .. }) => {
                self.metrics.timeouts.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(plugin = %manifest.id, installation = %installation, "plugin timed out");
                true
            }
            Err(Error::OutputTooLarge { .. }) => true,
            _ => false,
        };
        if counts {
            self.metrics.traps.fetch_add(1, Ordering::Relaxed);
            if self.breaker.record(&breaker_key) {
                tracing::error!(
                    plugin = %manifest.id,
                    installation = %installation,
                    tenant = %breaker_key,
                    "installation suspended for this tenant after {} failures in {:?}",
                    self.breaker.traps,
                    self.breaker.window
                );
            }
        }
        outcome
    }

    async fn run(
        &self,
        loaded: &Arc<Loaded>,
        invocation: Arc<Invocation>,
        (call, payload): (Call, Option<String>),
        deadline: Instant,
        permits: Permits,
    ) -> Outcome {
        let id = invocation.id.clone();
        let manifest = invocation.manifest.clone();
        let installation = invocation.tenant.installation_id.clone();
        let namespace = invocation.grant.kv.map(|quota| kv::Namespace {
            installation_id: installation.clone(),
            scope_id: invocation.tenant.scope_id().to_owned(),
            quota,
        });
        let state = State {
            wasi: self.wasi(),
            table: ResourceTable::new(),
            limiter: Limiter {
                max_bytes: (manifest.limits.memory_mib as usize) << 20,
                total: 0,
                peak: 0,
                denied: None,
            },
            cpu: CpuMeter::new(Duration::from_millis(u64::from(manifest.limits.cpu_ms))),
            invocation: invocation.clone(),
            services: self.services.clone(),
            namespace,
            logs: Vec::new(),
            log_bytes: 0,
            logs_dropped: 0,
            host_calls: Vec::new(),
            emitted: Vec::new(),
            kv_ops: 0,
            alipay_calls: 0,
            renders: 0,
            broken: None,
            deadline,
            timed_out: false,
            min_log_level: match self.options.min_log_level {
                "trace" => bindings::trellis::plugin::log::Level::Trace,
                "debug" => bindings::trellis::plugin::log::Level::Debug,
                _ => bindings::trellis::plugin::log::Level::Info,
            },
        };
        let Permits {
            _installation,
            _slot,
            heavy: heavy_permit,
        } = permits;
        if let Some(permit) = heavy_permit {
            *lock(&state.cpu.heavy) = Some(permit);
        }
        let mut store = Store::new(&self.engine, state);
        let demoted = lock(&store.data().cpu.heavy).is_some();
        store.data_mut().cpu.demoted = demoted;
        store.limiter(|s| &mut s.limiter);
        store.set_epoch_deadline(1);
        let heavy = self.heavy.clone();
        let hog_flag = HogFlag {
            hogs: self.hogs.clone(),
            installation: installation.clone(),
        };
        store.epoch_deadline_callback(move |mut cx| {
            let state = cx.data_mut();
            let used = state.cpu.settle();
            if used >= state.cpu.budget {
                state.cpu.interrupted = true;
                return Ok(UpdateDeadline::Interrupt);
            }
            if Instant::now() >= state.deadline {
                state.timed_out = true;
                return Ok(UpdateDeadline::Interrupt);
            }
            let resumed = state.cpu.resumed_at.clone();
            let origin = state.cpu.origin;
            // A tick of CPU makes an invocation heavy; so does another invocation of the same
            // installation having been found heavy meanwhile.
            let demote = !state.cpu.demoted && (used >= TICK || hog_flag.is_set());
            let slot = state.cpu.heavy.clone();
            if demote {
                state.cpu.demoted = true;
                hog_flag.mark();
            }
            let heavy = heavy.clone();
            Ok(UpdateDeadline::YieldCustom(
                1,
                Box::pin(async move {
                    if demote {
                        if let Ok(permit) = heavy.acquire_owned().await {
                            *lock(&slot) = Some(permit);
                        }
                    } else {
                        tokio::task::yield_now().await;
                    }
                    let nanos = u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
                    resumed.store(nanos, Ordering::Relaxed);
                }),
            ))
        });

        store.data().cpu.mark_resumed();
        let result = match loaded.pre.instantiate_async(&mut store).await {
            Err(e) => Err(e),
            Ok(plugin) => {
                let tenant = host::tenant_record(&invocation);
                call_export(&plugin, &mut store, &tenant, call, payload).await
            }
        };
        store.data_mut().cpu.settle();
        let limit = (manifest.limits.output_kib as usize) << 10;
        let result = match result {
            Ok(Ok(output)) => {
                let bytes = output_size(&output);
                if bytes > limit {
                    Err(Error::OutputTooLarge { bytes, limit })
                } else {
                    Ok(output)
                }
            }
            Ok(Err(guest)) => Err(Error::Plugin(PluginError::from(guest))),
            Err(trap) => Err(classify(store.data(), &trap, &manifest)),
        };
        let state = store.data_mut();
        Outcome {
            invocation_id: id,
            result,
            logs: std::mem::take(&mut state.logs),
            logs_dropped: state.logs_dropped,
            host_calls: std::mem::take(&mut state.host_calls),
            emitted: std::mem::take(&mut state.emitted),
            memory_peak: state.limiter.peak,
            cpu: state.cpu.used,
            wall: Duration::ZERO,
        }
    }
}

/// What an admitted invocation holds while it runs.
struct Permits {
    _installation: tokio::sync::OwnedSemaphorePermit,
    _slot: tokio::sync::OwnedSemaphorePermit,
    heavy: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// Remembers that an installation needed more than a tick of CPU.
struct HogFlag {
    hogs: Arc<Mutex<HashMap<String, Instant>>>,
    installation: String,
}

impl HogFlag {
    fn is_set(&self) -> bool {
        lock(&self.hogs)
            .get(&self.installation)
            .is_some_and(|at| at.elapsed() < HOG_MEMORY)
    }

    fn mark(&self) {
        lock(&self.hogs).insert(self.installation.clone(), Instant::now());
    }
}

struct FrozenWall(DateTime<Utc>);

impl wasmtime_wasi::HostWallClock for FrozenWall {
    fn resolution(&self) -> Duration {
        Duration::from_millis(1)
    }
    fn now(&self) -> Duration {
        Duration::from_millis(u64::try_from(self.0.timestamp_millis()).unwrap_or_default())
    }
}

struct FrozenMonotonic;

impl wasmtime_wasi::HostMonotonicClock for FrozenMonotonic {
    fn resolution(&self) -> u64 {
        1
    }
    fn now(&self) -> u64 {
        0
    }
}

/// Refuses input the plugin must never see: unsubscribed events, undeclared routes, oversized
/// payloads.
/// Returns the event payload as text, serialised once for the check and the call.
fn check_request(manifest: &Manifest, call: &Call) -> Result<Option<String>, Error> {
    match call {
        Call::Event(event) => {
            if !manifest.subscribe.contains(&event.kind) {
                return Err(Error::NotSubscribed(event.kind.clone()));
            }
            let text = event.payload.to_string();
            if text.len() > MAX_INPUT_BYTES {
                return Err(Error::BadInput(format!(
                    "the event payload is {} bytes; the limit is {MAX_INPUT_BYTES}",
                    text.len()
                )));
            }
            return Ok(Some(text));
        }
        Call::Http(request) => {
            if manifest
                .match_route(&request.method, &request.path)
                .is_none()
            {
                return Err(Error::NoRoute {
                    method: request.method.clone(),
                    path: request.path.clone(),
                });
            }
            if request.body.len() > MAX_INPUT_BYTES {
                return Err(Error::BadInput(format!(
                    "the request body is {} bytes; the limit is {MAX_INPUT_BYTES}",
                    request.body.len()
                )));
            }
        }
        Call::Configure { config } if config.to_string().len() > MAX_INPUT_BYTES => {
            return Err(Error::BadInput("the configuration is too large".into()));
        }
        _ => {}
    }
    Ok(None)
}

async fn call_export(
    plugin: &bindings::Plugin,
    store: &mut Store<State>,
    tenant: &wit::Tenant,
    call: Call,
    payload: Option<String>,
) -> wasmtime::Result<Result<Output, wit::Error>> {
    Ok(match call {
        Call::Install { previous_version } => plugin
            .trellis_plugin_lifecycle()
            .call_install(&mut *store, tenant, previous_version.as_deref())
            .await?
            .map(|()| Output::Done),
        Call::Configure { config } => {
            let text = config.to_string();
            match plugin
                .trellis_plugin_lifecycle()
                .call_configure(&mut *store, tenant, &text)
                .await?
            {
                Ok(normalised) => match serde_json::from_str(&normalised) {
                    Ok(value) => Ok(Output::Config(value)),
                    Err(e) => Err(wit::Error::Internal(format!(
                        "configure returned invalid JSON: {e}"
                    ))),
                },
                Err(e) => Err(e),
            }
        }
        Call::Uninstall => plugin
            .trellis_plugin_lifecycle()
            .call_uninstall(&mut *store, tenant)
            .await?
            .map(|()| Output::Done),
        Call::Event(event) => {
            let record = wit::Event {
                id: event.id,
                kind: event.kind,
                occurred_at_ms: u64::try_from(event.occurred_at.timestamp_millis())
                    .unwrap_or_default(),
                payload: payload.unwrap_or_else(|| event.payload.to_string()),
            };
            plugin
                .trellis_plugin_event_handler()
                .call_handle_event(&mut *store, tenant, &record)
                .await?
                .map(|()| Output::Done)
        }
        Call::Http(request) => {
            let manifest = store.data().invocation.manifest.clone();
            let Some((route, params)) = manifest.match_route(&request.method, &request.path) else {
                return Ok(Err(wit::Error::NotFound(request.path)));
            };
            let record = wit::HttpRequest {
                method: request.method,
                path: request.path,
                route: route.path.clone(),
                params,
                query: request.query,
                headers: request
                    .headers
                    .into_iter()
                    .map(|(name, value)| wit::Header { name, value })
                    .collect(),
                body: request.body,
            };
            plugin
                .trellis_plugin_http_handler()
                .call_handle_http(&mut *store, tenant, &record)
                .await?
                .map(|r| {
                    Output::Http(HttpResponse {
                        status: r.status,
                        headers: r.headers.into_iter().map(|h| (h.name, h.value)).collect(),
                        body: r.body,
                    })
                })
        }
    })
}

fn output_size(output: &Output) -> usize {
    match output {
        Output::Done => 0,
        Output::Config(value) => value.to_string().len(),
        Output::Http(r) => {
            r.body.len()
                + r.headers
                    .iter()
                    .map(|(k, v)| k.len() + v.len())
                    .sum::<usize>()
        }
    }
}

/// Names the cause of a trap from what the store observed, falling back to wasmtime's code.
fn classify(state: &State, trap: &wasmtime::Error, manifest: &Manifest) -> Error {
    if trap
        .downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
        .is_some()
    {
        // The pool is full: the runtime's capacity, not the plugin's fault.
        return Error::Busy {
            wall_ms: manifest.limits.wall_ms,
        };
    }
    let backtrace = trap
        .downcast_ref::<wasmtime::WasmBacktrace>()
        .map(|b| b.to_string());
    let (reason, message) = if state.cpu.interrupted {
        (
            TrapReason::CpuBudget,
            format!("used its CPU budget of {} ms", manifest.limits.cpu_ms),
        )
    } else if state.timed_out {
        (
            TrapReason::WallClock,
            format!(
                "ran past its wall-clock limit of {} ms",
                manifest.limits.wall_ms
            ),
        )
    } else if let Some(broken) = &state.broken {
        (TrapReason::HostLimit, broken.clone())
    } else if let Some(bytes) = state.limiter.denied {
        (
            TrapReason::Memory,
            format!(
                "tried to grow its memory to {bytes} bytes; the limit is {} MiB",
                manifest.limits.memory_mib
            ),
        )
    } else {
        match trap.downcast_ref::<Trap>() {
            Some(Trap::StackOverflow) => {
                (TrapReason::StackOverflow, "overflowed its stack".to_owned())
            }
            Some(Trap::UnreachableCodeReached) => {
                let panic = state
                    .logs
                    .iter()
                    .rev()
                    .find(|l| l.message.starts_with("plugin panicked"))
                    .map(|l| l.message.clone());
                (
                    TrapReason::Panic,
                    panic.unwrap_or_else(|| "panicked (unreachable code reached)".to_owned()),
                )
            }
            Some(Trap::Interrupt) => (
                TrapReason::CpuBudget,
                format!("used its CPU budget of {} ms", manifest.limits.cpu_ms),
            ),
            Some(other) => (TrapReason::Fault, other.to_string()),
            None => (TrapReason::Fault, format!("{trap:#}")),
        }
    };
    Error::Trap {
        reason,
        message,
        backtrace,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_may_not_include_others_or_nest_loops_deeply() {
        assert!(
            check_template(
                "t.hbs",
                "<p>{{x}}</p>{{#each a}}{{#each b}}{{this}}{{/each}}{{/each}}"
            )
            .is_ok()
        );
        for bad in [
            "{{> other.hbs}}",
            "{{#> layout}}x{{/layout}}",
            "{{~> x}}",
            "{{#*inline \"p\"}}{{> p}}{{/inline}}",
        ] {
            let err = check_template("t.hbs", bad).unwrap_err().to_string();
            assert!(err.contains("may not include"), "{bad}: {err}");
        }
        let deep = "{{#each a}}{{#each b}}{{#each c}}x{{/each}}{{/each}}{{/each}}";
        assert!(
            check_template("t.hbs", deep)
                .unwrap_err()
                .to_string()
                .contains("nested")
        );
        // Sequential loops are fine.
        let flat =
            "{{#each a}}x{{/each}}{{#each b}}{{#each c}}y{{/each}}{{/each}}{{#each d}}z{{/each}}";
        assert!(check_template("t.hbs", flat).is_ok());
    }

    fn import(name: &str, functions: &[&str]) -> Import {
        Import {
            name: name.into(),
            functions: functions.iter().map(|f| (*f).to_owned()).collect(),
        }
    }

    #[test]
    fn imports_are_checked_against_the_manifest_and_the_host() {
        let manifest = Manifest::parse(
            "id = \"com.example.a\"\nversion = \"1.0.0\"\nhost_api = \"^0.1\"\nname = \"A\"\npublisher = \"E\"\n[capabilities]\nkv = { max_keys = 1, max_bytes = 1 }\n",
            None,
        )
        .unwrap();
        let ok = [
            import("trellis:plugin/kv@0.1.0", &["get"]),
            import("trellis:plugin/log@0.1.0", &["log"]),
            import("wasi:io/streams@0.2.6", &[]),
            import("wasi:clocks/monotonic-clock@0.2.6", &["now"]),
        ];
        assert!(check_imports(&manifest, &ok).is_ok());
        for (bad, needle) in [
            (
                import("trellis:plugin/alipay@0.1.0", &["call"]),
                "declares no [capabilities] alipay",
            ),
            (
                import("trellis:plugin/events@0.1.0", &["emit"]),
                "declares no [capabilities] emit",
            ),
            (import("trellis:plugin/kv@0.2.0", &["get"]), "host-api"),
            (import("wasi:filesystem/types@0.2.6", &[]), "no files"),
            (import("wasi:sockets/tcp@0.2.6", &[]), "no files, sockets"),
            (
                import("wasi:clocks/monotonic-clock@0.2.6", &["subscribe-duration"]),
                "may not sleep",
            ),
            (import("acme:evil/x@1.0.0", &[]), "only trellis:plugin"),
        ] {
            let err = check_imports(&manifest, std::slice::from_ref(&bad))
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{bad}: {err}");
            assert!(
                err.contains(bad.name.as_str()),
                "the message names the import: {err}"
            );
        }
    }
}
