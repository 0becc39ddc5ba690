//! The capabilities a plugin imports, implemented against the invocation's tenant.
//!
//! Invariant: every function here checks the manifest declaration and the tenant's grant before
//! doing anything, and reaches data only through the namespace and merchant the host bound to
//! this store; a plugin has no way to name another tenant.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::trellis::plugin::{alipay, config, events, kv, log, templates, types};
use super::kv::{Cas, KvError, Namespace};
use super::{Emitted, HostCall, Invocation, LogLine, Services};
use crate::alipay::client::CallOptions;
use crate::alipay::credentials;
use crate::themes::Locale;

/// Per-invocation limits on host calls; breaking one traps the invocation.
pub const MAX_KV_OPS: u32 = 1_000;
pub const MAX_ALIPAY_CALLS: u32 = 20;
pub const MAX_EMITTED: usize = 10;
pub const MAX_EVENT_BYTES: usize = 64 << 10;
pub const MAX_LOG_LINES: usize = 64;
pub const MAX_LOG_BYTES: usize = 16 << 10;
pub const MAX_LOG_LINE: usize = 2 << 10;
pub const MAX_RENDER_INPUT: usize = 256 << 10;
pub const MAX_RENDER_NODES: usize = 2_000;
pub const MAX_RENDERS: u32 = 8;
pub const MAX_RENDER_OUTPUT: usize = 1 << 20;
pub const MAX_LOG_FIELDS: usize = 16;

/// Alipay's common request parameters: a plugin may not set them through `params`.
const COMMON_PARAMS: &[&str] = &[
    "app_id",
    "method",
    "format",
    "return_url",
    "charset",
    "sign_type",
    "sign",
    "timestamp",
    "version",
    "notify_url",
    "app_auth_token",
    "biz_content",
    "app_cert_sn",
    "alipay_root_cert_sn",
    "encrypt_type",
    "auth_token",
];

/// A limit the plugin broke inside a host call; the invocation traps with it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LimitBroken(pub String);

/// How an invocation's CPU is metered between epoch ticks. Time inside host calls is not the
/// plugin's CPU: it is subtracted.
pub struct CpuMeter {
    pub origin: Instant,
    pub budget: Duration,
    pub used: Duration,
    /// Nanoseconds since `origin` at which the guest last resumed; written by the yield future.
    pub resumed_at: Arc<AtomicU64>,
    pub host_since_resume: Duration,
    /// Set when the invocation moved to the heavy lane (it holds a heavy permit).
    pub heavy: Arc<std::sync::Mutex<Option<tokio::sync::OwnedSemaphorePermit>>>,
    pub demoted: bool,
    pub interrupted: bool,
}

impl CpuMeter {
    pub fn new(budget: Duration) -> Self {
        Self {
            origin: Instant::now(),
            budget,
            used: Duration::ZERO,
            resumed_at: Arc::new(AtomicU64::new(0)),
            host_since_resume: Duration::ZERO,
            heavy: Arc::default(),
            demoted: false,
            interrupted: false,
        }
    }

    pub fn mark_resumed(&self) {
        let nanos = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.resumed_at.store(nanos, Ordering::Relaxed);
    }

    /// Adds the guest time since it last resumed; returns the total.
    pub fn settle(&mut self) -> Duration {
        let resumed = Duration::from_nanos(self.resumed_at.load(Ordering::Relaxed));
        let ran = self
            .origin
            .elapsed()
            .saturating_sub(resumed)
            .saturating_sub(self.host_since_resume);
        self.host_since_resume = Duration::ZERO;
        self.used += ran;
        // What was counted is not counted again by the next settle.
        self.mark_resumed();
        self.used
    }
}

/// Caps the linear memory of all of a store's memories together and records the peak.
pub struct Limiter {
    pub max_bytes: usize,
    /// The sum of every memory's current size.
    pub total: usize,
    pub peak: usize,
    pub denied: Option<usize>,
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.total.saturating_sub(current).saturating_add(desired);
        if total > self.max_bytes {
            self.denied = Some(total);
            return Err(wasmtime::Error::new(LimitBroken(format!(
                "memory limit: tried to grow linear memory to {total} bytes, the limit is {}",
                self.max_bytes
            ))));
        }
        self.total = total;
        self.peak = self.peak.max(total);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }

    fn instances(&self) -> usize {
        64
    }

    fn tables(&self) -> usize {
        16
    }

    fn memories(&self) -> usize {
        2
    }
}

/// Everything one store holds.
pub struct State {
    pub wasi: WasiCtx,
    pub table: ResourceTable,
    pub limiter: Limiter,
    pub cpu: CpuMeter,
    pub invocation: Arc<Invocation>,
    pub services: Arc<Services>,
    pub namespace: Option<Namespace>,
    pub logs: Vec<LogLine>,
    pub log_bytes: usize,
    pub logs_dropped: usize,
    pub host_calls: Vec<HostCall>,
    pub emitted: Vec<Emitted>,
    pub kv_ops: u32,
    pub alipay_calls: u32,
    pub renders: u32,
    /// Set when a host call broke a limit, so the trap is reported by its cause.
    pub broken: Option<String>,
    /// The invocation's wall-clock deadline; host calls are cut off at it too.
    pub deadline: Instant,
    pub timed_out: bool,
    pub min_log_level: log::Level,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

fn level_rank(level: log::Level) -> u8 {
    match level {
        log::Level::Trace => 0,
        log::Level::Debug => 1,
        log::Level::Info => 2,
        log::Level::Warn => 3,
        log::Level::Error => 4,
    }
}

pub fn level_name(level: log::Level) -> &'static str {
    match level {
        log::Level::Trace => "trace",
        log::Level::Debug => "debug",
        log::Level::Info => "info",
        log::Level::Warn => "warn",
        log::Level::Error => "error",
    }
}

fn denied(what: String) -> types::Error {
    types::Error::Denied(what)
}

impl State {
    fn record(
        &mut self,
        interface: &'static str,
        function: &'static str,
        started: Instant,
        ok: bool,
    ) {
        let elapsed = started.elapsed();
        // Waiting on the database or Alipay is not the plugin's CPU; rendering is (see render).
        if interface != "templates" {
            self.cpu.host_since_resume += elapsed;
        }
        self.host_calls.push(HostCall {
            interface,
            function,
            ok,
            micros: u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
        });
    }

    fn deadline_passed(&mut self) -> wasmtime::Error {
        self.timed_out = true;
        wasmtime::Error::msg("the wall-clock deadline passed during a host call")
    }

    fn broke(&mut self, message: String) -> wasmtime::Error {
        self.broken = Some(message.clone());
        wasmtime::Error::new(LimitBroken(message))
    }

    /// The kv namespace, or the reason the plugin may not use kv here.
    fn kv(&mut self) -> wasmtime::Result<Result<Namespace, types::Error>> {
        self.kv_ops += 1;
        if self.kv_ops > MAX_KV_OPS {
            return Err(self.broke(format!(
                "more than {MAX_KV_OPS} kv operations in one invocation"
            )));
        }
        Ok(self.namespace.clone().ok_or_else(|| {
            denied(if self.invocation.manifest.capabilities.kv.is_none() {
                "kv is not declared in the manifest".into()
            } else {
                "kv is not granted to this tenant".into()
            })
        }))
    }

    fn host_fault(&self, what: &str, error: &dyn std::fmt::Display) -> types::Error {
        host_fault(&self.invocation, what, error)
    }

    fn kv_error(&self, error: KvError) -> types::Error {
        match error {
            KvError::Invalid(m) => types::Error::InvalidInput(m),
            KvError::Quota(m) => types::Error::QuotaExceeded(m),
            KvError::NotACounter(k) => {
                types::Error::InvalidInput(format!("the value at {k} is not an integer counter"))
            }
            KvError::Contention(k) => types::Error::Conflict(k),
            KvError::Db(e) => self.host_fault("kv", &e),
        }
    }
}

/// Runs a host call until the invocation's deadline; `None` when the deadline passed first.
async fn bounded<T>(deadline: Instant, call: impl std::future::Future<Output = T>) -> Option<T> {
    tokio::time::timeout_at(tokio::time::Instant::from_std(deadline), call)
        .await
        .ok()
}

fn to_entry(entry: super::kv::Entry) -> kv::Entry {
    kv::Entry {
        value: entry.value,
        version: entry.version,
    }
}

impl types::Host for State {}

impl kv::Host for State {
    async fn get(
        &mut self,
        key: String,
    ) -> wasmtime::Result<Result<Option<kv::Entry>, types::Error>> {
        let ns = match self.kv()? {
            Ok(ns) => ns,
            Err(e) => return Ok(Err(e)),
        };
        let started = Instant::now();
        let Some(result) = bounded(self.deadline, self.services.kv.get(&ns, &key)).await else {
            return Err(self.deadline_passed());
        };
        self.record("kv", "get", started, result.is_ok());
        Ok(result
            .map(|e| e.map(to_entry))
            .map_err(|e| self.kv_error(e)))
    }

    async fn compare_and_swap(
        &mut self,
        key: String,
        expected: Option<u64>,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<kv::CasOutcome, types::Error>> {
        let ns = match self.kv()? {
            Ok(ns) => ns,
            Err(e) => return Ok(Err(e)),
        };
        let started = Instant::now();
        let Some(result) = bounded(
            self.deadline,
            self.services
                .kv
                .compare_and_swap(&ns, &key, expected, &value),
        )
        .await
        else {
            return Err(self.deadline_passed());
        };
        self.record("kv", "compare-and-swap", started, result.is_ok());
        Ok(result
            .map(|outcome| match outcome {
                Cas::Stored(v) => kv::CasOutcome::Stored(v),
                Cas::Conflict(e) => kv::CasOutcome::Conflict(e.map(to_entry)),
            })
            .map_err(|e| self.kv_error(e)))
    }

    async fn delete(
        &mut self,
        key: String,
        expected: Option<u64>,
    ) -> wasmtime::Result<Result<bool, types::Error>> {
        let ns = match self.kv()? {
            Ok(ns) => ns,
            Err(e) => return Ok(Err(e)),
        };
        let started = Instant::now();
        let Some(result) =
            bounded(self.deadline, self.services.kv.delete(&ns, &key, expected)).await
        else {
            return Err(self.deadline_passed());
        };
        self.record("kv", "delete", started, result.is_ok());
        Ok(result.map_err(|e| self.kv_error(e)))
    }

    async fn list(
        &mut self,
        prefix: String,
        after: Option<String>,
        limit: u32,
    ) -> wasmtime::Result<Result<kv::Page, types::Error>> {
        let ns = match self.kv()? {
            Ok(ns) => ns,
            Err(e) => return Ok(Err(e)),
        };
        let started = Instant::now();
        let Some(result) = bounded(
            self.deadline,
            self.services.kv.list(&ns, &prefix, after.as_deref(), limit),
        )
        .await
        else {
            return Err(self.deadline_passed());
        };
        self.record("kv", "list", started, result.is_ok());
        Ok(result
            .map(|(items, next)| kv::Page {
                items: items
                    .into_iter()
                    .map(|(key, entry)| kv::Item {
                        key,
                        entry: to_entry(entry),
                    })
                    .collect(),
                next,
            })
            .map_err(|e| self.kv_error(e)))
    }

    async fn increment(
        &mut self,
        key: String,
        delta: i64,
    ) -> wasmtime::Result<Result<i64, types::Error>> {
        let ns = match self.kv()? {
            Ok(ns) => ns,
            Err(e) => return Ok(Err(e)),
        };
        let started = Instant::now();
        let Some(result) =
            bounded(self.deadline, self.services.kv.increment(&ns, &key, delta)).await
        else {
            return Err(self.deadline_passed());
        };
        self.record("kv", "increment", started, result.is_ok());
        Ok(result.map_err(|e| self.kv_error(e)))
    }
}

impl State {
    /// Checks an Alipay method against the manifest and the grant, and counts the call.
    fn alipay_allowed(&mut self, method: &str) -> wasmtime::Result<Result<String, types::Error>> {
        self.alipay_calls += 1;
        if self.alipay_calls > MAX_ALIPAY_CALLS {
            return Err(self.broke(format!(
                "more than {MAX_ALIPAY_CALLS} Alipay calls in one invocation"
            )));
        }
        let declared = self
            .invocation
            .manifest
            .capabilities
            .alipay
            .as_ref()
            .is_some_and(|a| a.methods.contains(method));
        if !declared {
            return Ok(Err(denied(format!(
                "Alipay method {method} is not declared in the manifest"
            ))));
        }
        if !self.invocation.grant.alipay_methods.contains(method) {
            return Ok(Err(denied(format!(
                "Alipay method {method} is not granted to this tenant"
            ))));
        }
        match &self.invocation.tenant.merchant_id {
            Some(m) => Ok(Ok(m.clone())),
            None => Ok(Err(denied("Alipay calls need a merchant".into()))),
        }
    }
}

/// Logs a host-side failure with the invocation's identity; the plugin gets a generic error.
fn host_fault(inv: &Invocation, what: &str, error: &dyn std::fmt::Display) -> types::Error {
    tracing::error!(
        plugin = %inv.manifest.id,
        installation = %inv.tenant.installation_id,
        invocation = %inv.id,
        "{what}: {error}"
    );
    types::Error::Internal(format!("{what} failed; see the engine log"))
}

/// What the plugin learns of a failed Alipay call. Only a verified answer's text passes: anything
/// else may come from whatever the gateway URL reached (and a plugin hands errors on to its API
/// callers), so it goes to the log and the plugin gets a fixed message naming the kind.
fn alipay_error(inv: &Invocation, error: crate::alipay::Error) -> types::Error {
    use crate::alipay::Error as A;
    let upstream = |code: &str, sub_code: Option<String>, message: &str| {
        types::Error::Upstream(types::UpstreamError {
            code: code.to_owned(),
            sub_code,
            message: message.to_owned(),
        })
    };
    let logged = |error: &A| {
        tracing::warn!(
            plugin = %inv.manifest.id,
            installation = %inv.tenant.installation_id,
            invocation = %inv.id,
            "alipay call failed: {error}"
        );
    };
    match error {
        A::Gateway(g) => types::Error::Upstream(types::UpstreamError {
            message: g.sub_msg.clone().unwrap_or_else(|| g.msg.clone()),
            code: g.code,
            sub_code: g.sub_code,
        }),
        A::UnsignedError {
            ref code,
            ref sub_code,
            ref msg,
        } => {
            tracing::warn!(
                plugin = %inv.manifest.id,
                invocation = %inv.id,
                code = %code,
                sub_code = sub_code.as_deref().unwrap_or(""),
                msg = %msg,
                "the gateway refused an alipay call without signing its answer"
            );
            // Alipay's codes are what plugins branch on; anything else shaped like them is
            // dropped rather than passed on.
            let code = Some(code.clone())
                .filter(|c| looks_like_a_code(c))
                .unwrap_or_else(|| "unsigned_error".to_owned());
            upstream(
                &code,
                sub_code.clone().filter(|c| looks_like_a_code(c)),
                "the gateway refused the call without a signed answer",
            )
        }
        A::Transport(_) => {
            logged(&error);
            upstream("network", None, "the Alipay gateway could not be reached")
        }
        A::DeadlineExceeded => {
            logged(&error);
            upstream(
                "network",
                None,
                "the Alipay gateway did not answer before the deadline",
            )
        }
        A::GatewayRefused(_) => {
            logged(&error);
            upstream(
                "gateway_not_allowed",
                None,
                "the merchant's Alipay gateway is not allowed on this platform",
            )
        }
        A::ResponseTooLarge { .. } => {
            logged(&error);
            upstream(
                "invalid_response",
                None,
                "the Alipay gateway's answer was larger than the platform accepts",
            )
        }
        A::InvalidSignature
        | A::MalformedResponse(_)
        | A::UntrustedCertificate(_)
        | A::BadCertificate(_) => {
            logged(&error);
            // These texts are the engine's own, never the gateway's.
            upstream("invalid_response", None, &error.to_string())
        }
        A::BadRequest(m) => types::Error::InvalidInput(m),
        other => host_fault(inv, "alipay", &other),
    }
}

/// Alipay's `code` and `sub_code` values: `40004`, `isv.invalid-app-id`, `ACQ.TRADE_NOT_EXIST`.
fn looks_like_a_code(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 64
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// Removes tokens that belong to the merchant's authorisation from a response before the
/// plugin sees it.
fn scrub(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.remove("app_auth_token");
            map.remove("app_refresh_token");
            map.remove("aes_key");
            map.values_mut().for_each(scrub);
        }
        Value::Array(items) => items.iter_mut().for_each(scrub),
        _ => {}
    }
}

impl alipay::Host for State {
    async fn call(
        &mut self,
        method: String,
        biz_content: String,
        options: alipay::CallOptions,
    ) -> wasmtime::Result<Result<String, types::Error>> {
        let merchant = match self.alipay_allowed(&method)? {
            Ok(m) => m,
            Err(e) => return Ok(Err(e)),
        };
        let started = Instant::now();
        let call = alipay_call(
            self.services.clone(),
            self.invocation.clone(),
            merchant,
            method,
            biz_content,
            options,
            self.deadline,
        );
        let Some(result) = bounded(self.deadline, call).await else {
            return Err(self.deadline_passed());
        };
        self.record("alipay", "call", started, result.is_ok());
        Ok(result)
    }

    async fn upload_image(
        &mut self,
        name: String,
        image_type: String,
        content: Vec<u8>,
    ) -> wasmtime::Result<Result<String, types::Error>> {
        let method = "alipay.offline.material.image.upload";
        let merchant = match self.alipay_allowed(method)? {
            Ok(m) => m,
            Err(e) => return Ok(Err(e)),
        };
        let started = Instant::now();
        let services = self.services.clone();
        let inv = self.invocation.clone();
        let deadline = self.deadline;
        let upload = async move {
            match credentials::load_app(&services.db, &services.vault, &merchant).await {
                Err(credentials::Error::NotConfigured) => Err(types::Error::NotFound(
                    "this merchant has no Alipay credentials".into(),
                )),
                Err(e) => Err(host_fault(&inv, "alipay credentials", &e)),
                Ok(app) => {
                    match services
                        .alipay
                        .upload_image_until(&app, &image_type, &name, content, Some(deadline))
                        .await
                    {
                        Ok(mut v) => {
                            scrub(&mut v);
                            Ok(v.to_string())
                        }
                        Err(e) => Err(alipay_error(&inv, e)),
                    }
                }
            }
        };
        let Some(result) = bounded(self.deadline, upload).await else {
            return Err(self.deadline_passed());
        };
        self.record("alipay", "upload-image", started, result.is_ok());
        Ok(result)
    }
}

async fn alipay_call(
    services: Arc<Services>,
    inv: Arc<Invocation>,
    merchant: String,
    method: String,
    biz_content: String,
    options: alipay::CallOptions,
    deadline: Instant,
) -> Result<String, types::Error> {
    {
        let biz: Option<Value> =
            if biz_content.trim().is_empty() {
                None
            } else {
                Some(serde_json::from_str(&biz_content).map_err(|e| {
                    types::Error::InvalidInput(format!("biz_content is not JSON: {e}"))
                })?)
            };
        let mut extra = std::collections::BTreeMap::new();
        for (k, v) in options.params {
            if COMMON_PARAMS.contains(&k.as_str()) {
                return Err(types::Error::InvalidInput(format!(
                    "{k} is a common parameter set by the host"
                )));
            }
            extra.insert(k, v);
        }
        let app = match credentials::load_app(&services.db, &services.vault, &merchant).await {
            Ok(app) => app,
            Err(credentials::Error::NotConfigured) => {
                return Err(types::Error::NotFound(
                    "this merchant has no Alipay credentials".into(),
                ));
            }
            Err(e) => return Err(host_fault(&inv, "alipay credentials", &e)),
        };
        let call_options = CallOptions {
            notify_url: options.notify_url,
            return_url: options.return_url,
            auth_token: options.auth_token,
            extra,
            deadline: Some(deadline),
            ..CallOptions::default()
        };
        match services
            .alipay
            .call(&app, &method, biz.as_ref(), &call_options)
            .await
        {
            Ok(mut value) => {
                scrub(&mut value);
                Ok(value.to_string())
            }
            Err(e) => Err(alipay_error(&inv, e)),
        }
    }
}

impl templates::Host for State {
    async fn render(
        &mut self,
        template: String,
        data: String,
    ) -> wasmtime::Result<Result<String, types::Error>> {
        let manifest = &self.invocation.manifest;
        if !manifest.capabilities.templates.contains(&template) {
            return Ok(Err(denied(format!(
                "template {template} is not declared in the manifest"
            ))));
        }
        if !self.invocation.grant.templates {
            return Ok(Err(denied(
                "templates are not granted to this tenant".into(),
            )));
        }
        if data.len() > MAX_RENDER_INPUT {
            return Ok(Err(types::Error::InvalidInput(format!(
                "render data may be at most {MAX_RENDER_INPUT} bytes"
            ))));
        }
        self.renders += 1;
        if self.renders > MAX_RENDERS {
            return Err(self.broke(format!("more than {MAX_RENDERS} renders in one invocation")));
        }
        let started = Instant::now();
        let result = self.render_page(&template, &data);
        self.record("templates", "render", started, result.is_ok());
        Ok(result)
    }
}

impl State {
    fn render_page(&self, template: &str, data: &str) -> Result<String, types::Error> {
        let data: Value = serde_json::from_str(data)
            .map_err(|e| types::Error::InvalidInput(format!("render data is not JSON: {e}")))?;
        // Templates have no includes and at most two nested loops (checked at load), so with
        // this many values a render does at most a few million steps.
        if count_nodes(&data) > MAX_RENDER_NODES {
            return Err(types::Error::InvalidInput(format!(
                "render data may hold at most {MAX_RENDER_NODES} values"
            )));
        }
        let mut out = CappedWriter {
            bytes: Vec::new(),
            cap: MAX_RENDER_OUTPUT,
        };
        self.invocation
            .templates
            .render_to_write(template, &data, &mut out)
            .map_err(|e| types::Error::InvalidInput(format!("template {template}: {e}")))?;
        let body = String::from_utf8(out.bytes)
            .map_err(|_| types::Error::Internal("the rendered page is not UTF-8".into()))?;
        let Some(themes) = &self.services.themes else {
            return Ok(body);
        };
        let locale = if self.invocation.tenant.locale == "en" {
            Locale::En
        } else {
            Locale::ZhCn
        };
        let title = data["title"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| self.invocation.manifest.name.clone());
        themes
            .render_page(
                &self.invocation.theme,
                "plugin",
                locale,
                serde_json::json!({ "title": title, "plugin_body": body }),
            )
            .map_err(|e| self.host_fault("theme", &e))
    }
}

fn count_nodes(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(count_nodes).sum::<usize>(),
        Value::Object(map) => 1 + map.values().map(count_nodes).sum::<usize>(),
        _ => 1,
    }
}

/// Stops a render once its output passes the cap.
struct CappedWriter {
    bytes: Vec<u8>,
    cap: usize,
}

impl std::io::Write for CappedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > self.cap {
            return Err(std::io::Error::other(format!(
                "the page would exceed {} bytes",
                self.cap
            )));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Truncates to at most `max` bytes and escapes control characters, so one log line stays one
/// line and bounded.
fn clean(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max));
    for c in text.chars() {
        if out.len() >= max {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

impl log::Host for State {
    fn enabled(&mut self, level: log::Level) -> wasmtime::Result<bool> {
        Ok(level_rank(level) >= level_rank(self.min_log_level))
    }

    fn log(
        &mut self,
        level: log::Level,
        message: String,
        fields: Vec<(String, String)>,
    ) -> wasmtime::Result<()> {
        if level_rank(level) < level_rank(self.min_log_level) {
            return Ok(());
        }
        if self.logs.len() >= MAX_LOG_LINES || self.log_bytes >= MAX_LOG_BYTES {
            self.logs_dropped += 1;
            return Ok(());
        }
        let message = clean(&message, MAX_LOG_LINE);
        let mut fields: Vec<(String, String)> = fields
            .iter()
            .take(MAX_LOG_FIELDS)
            .map(|(k, v)| (clean(k, 64), clean(v, 256)))
            .collect();
        fields.shrink_to_fit();
        let size = message.len() + fields.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
        if self.log_bytes + size > MAX_LOG_BYTES {
            self.logs_dropped += 1;
            return Ok(());
        }
        self.log_bytes += size;
        let inv = &self.invocation;
        let rendered: String = fields.iter().map(|(k, v)| format!(" {k}={v}")).collect();
        match level {
            log::Level::Error => {
                tracing::error!(plugin = %inv.manifest.id, installation = %inv.tenant.installation_id, invocation = %inv.id, "{message}{rendered}")
            }
            log::Level::Warn => {
                tracing::warn!(plugin = %inv.manifest.id, installation = %inv.tenant.installation_id, invocation = %inv.id, "{message}{rendered}")
            }
            log::Level::Info => {
                tracing::info!(plugin = %inv.manifest.id, installation = %inv.tenant.installation_id, invocation = %inv.id, "{message}{rendered}")
            }
            log::Level::Debug | log::Level::Trace => {
                tracing::debug!(plugin = %inv.manifest.id, installation = %inv.tenant.installation_id, invocation = %inv.id, "{message}{rendered}")
            }
        }
        self.logs.push(LogLine {
            level: level_name(level),
            message,
            fields,
        });
        Ok(())
    }
}

impl config::Host for State {
    fn get(&mut self) -> wasmtime::Result<String> {
        Ok(self.invocation.config.clone())
    }
}

impl events::Host for State {
    async fn emit(
        &mut self,
        kind: String,
        payload: String,
    ) -> wasmtime::Result<Result<(), types::Error>> {
        if !self.invocation.manifest.capabilities.emit.contains(&kind) {
            return Ok(Err(denied(format!(
                "event {kind} is not declared in the manifest"
            ))));
        }
        if !self.invocation.grant.emit.contains(&kind) {
            return Ok(Err(denied(format!(
                "event {kind} is not granted to this tenant"
            ))));
        }
        if self.emitted.len() >= MAX_EMITTED {
            return Err(self.broke(format!(
                "more than {MAX_EMITTED} events emitted in one invocation"
            )));
        }
        if payload.len() > MAX_EVENT_BYTES {
            return Ok(Err(types::Error::InvalidInput(format!(
                "an event payload may be at most {MAX_EVENT_BYTES} bytes"
            ))));
        }
        let payload: Value = match serde_json::from_str(&payload) {
            Ok(v) => v,
            Err(e) => {
                return Ok(Err(types::Error::InvalidInput(format!(
                    "event payload is not JSON: {e}"
                ))));
            }
        };
        // Only what the catalog will record is paced and charged to a chain; without an
        // emitter (a lifecycle hook, `trellis plugin run`) emissions are just collected.
        if let Ok(emitter) = crate::events::EMITTER.try_with(Clone::clone) {
            let started = Instant::now();
            let Some(admitted) = bounded(
                self.deadline,
                crate::events::admit(&self.services.db, &emitter),
            )
            .await
            else {
                return Err(self.deadline_passed());
            };
            self.record("events", "emit", started, matches!(admitted, Ok(Ok(()))));
            match admitted {
                Ok(Ok(())) => {}
                Ok(Err(refusal)) => {
                    return Ok(Err(types::Error::QuotaExceeded(
                        refusal.message().to_owned(),
                    )));
                }
                Err(error) => return Ok(Err(self.host_fault("events", &error))),
            }
        }
        self.emitted.push(Emitted { kind, payload });
        Ok(Ok(()))
    }
}

/// The tenant record handed to every export.
pub fn tenant_record(invocation: &Invocation) -> types::Tenant {
    let t = &invocation.tenant;
    types::Tenant {
        partner_id: t.partner_id.clone(),
        agent_id: t.agent_id.clone(),
        merchant_id: t.merchant_id.clone(),
        store_id: t.store_id.clone(),
        installation_id: t.installation_id.clone(),
        invocation_id: invocation.id.clone(),
        locale: t.locale.clone(),
    }
}
