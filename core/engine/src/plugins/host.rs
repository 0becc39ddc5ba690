//! The store each invocation runs in — its `State`, memory limiter and CPU meter — and the
//! path every host call shares; the capabilities themselves are one module each below.
//!
//! Invariant: every capability checks the manifest's declaration and the tenant's grant before
//! doing anything, and reaches data only through the namespace and merchant the host bound to
//! this store; a plugin has no way to name another tenant. Time spent waiting in a host call
//! is not charged as the plugin's CPU, and no host call outlives the invocation's deadline.

/// `kv`: the installation's key-value store in the tenant's namespace.
mod kv;
/// `alipay`: Alipay Open Platform calls for the tenant's merchant, answers scrubbed.
mod alipay;
/// `templates`: rendering the plugin's templates into the partner's theme.
mod templates;
/// `log`: bounded, cleaned log lines kept in the outcome and the engine log.
mod log;
/// `config`: the installation's configuration for this tenant.
mod config;
/// `events`: emitting declared, granted events, paced by the outbox.
mod events;
/// `tenant` (0.2): the call's tenant and engine facts as typed values.
mod tenant;
/// `plugins` (0.2): routes of the partner's other plugins for the same merchant.
mod calls;
/// `payments` (0.2): the merchant's trades through the engine's ledger.
mod payments;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::admission::Turn;
use super::bindings::trellis::plugin::log::Level;
use super::bindings::trellis::plugin::types;
use super::kv::Txn;
use super::{Emitted, HostCall, Invocation, LogLine, Services};

/// A limit the plugin broke inside a host call; the invocation traps with it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LimitBroken(pub String);

/// How an invocation's CPU is metered: on the CPU clock of the thread that runs it, in
/// segments cut at every passage between the guest's code and the host (a call into the guest,
/// its return, a host call, that call's return). A segment of the guest's code is charged; so
/// is one of host work that did not wait (reading a call's arguments, rendering, logging, WASI
/// randomness), since the guest asked for it. A segment that waited (the future driving the
/// guest was polled again: the database, Alipay, another plugin, a tick's yield) is not: while
/// it waited its thread ran other work, and the wait is not the guest's. Time a thread waits
/// for a core is on no thread's clock, so a busy machine charges a guest only what it ran.
/// A segment that did not wait ran on one thread, so its two readings are of one clock.
pub struct CpuMeter {
    pub budget: Duration,
    pub used: Duration,
    /// Polls of the future driving the guest, counted by that future.
    pub polls: Arc<AtomicU64>,
    /// Where the current segment began: the thread's CPU clock (ns) and the polls then; `None`
    /// before the guest first runs and after it ended.
    segment: Option<(u64, u64)>,
    /// Set when the invocation moved to the heavy lane (it holds a heavy permit).
    pub heavy: Arc<std::sync::Mutex<Option<tokio::sync::OwnedSemaphorePermit>>>,
    pub demoted: bool,
    pub interrupted: bool,
}

/// The CPU time the calling thread has used, in nanoseconds.
#[cfg(unix)]
pub fn thread_cpu_nanos() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    u64::try_from(t.tv_sec)
        .unwrap_or_default()
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(t.tv_nsec).unwrap_or_default())
}

/// Without a per-thread clock, wall time since the process began (descheduled time counts).
#[cfg(not(unix))]
pub fn thread_cpu_nanos() -> u64 {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    u64::try_from(ORIGIN.get_or_init(Instant::now).elapsed().as_nanos()).unwrap_or(u64::MAX)
}

impl CpuMeter {
    pub fn new(budget: Duration) -> Self {
        Self {
            budget,
            used: Duration::ZERO,
            polls: Arc::new(AtomicU64::new(0)),
            segment: None,
            heavy: Arc::default(),
            demoted: false,
            interrupted: false,
        }
    }

    /// A passage between the guest's code and the host: the segment so far is settled and the
    /// next one begins.
    pub fn pass(&mut self) {
        self.settle();
        if self.segment.is_none() {
            self.segment = Some((thread_cpu_nanos(), self.polls.load(Ordering::Relaxed)));
        }
    }

    /// Charges the current segment so far, unless it waited, and begins it again; returns the
    /// total.
    pub fn settle(&mut self) -> Duration {
        if let Some((cpu, polls)) = &mut self.segment {
            let now = thread_cpu_nanos();
            let polled = self.polls.load(Ordering::Relaxed);
            if *polls == polled {
                self.used += Duration::from_nanos(now.saturating_sub(*cpu));
            }
            *cpu = now;
            *polls = polled;
        }
        self.used
    }

    /// The guest is done: the last segment is settled and none begins.
    pub fn end(&mut self) -> Duration {
        self.settle();
        self.segment = None;
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
    /// The invocation's kv transaction, when kv is declared and granted; committed by the
    /// runtime when the invocation succeeds.
    pub txn: Option<Txn>,
    /// The invocation's turn on its kv namespace in this process.
    pub turn: Turn,
    pub logs: Vec<LogLine>,
    pub log_bytes: usize,
    pub logs_dropped: usize,
    pub host_calls: Vec<HostCall>,
    pub emitted: Vec<Emitted>,
    pub kv_ops: u32,
    pub alipay_calls: u32,
    pub plugin_calls: u32,
    pub payment_calls: u32,
    /// Set once the invocation made a call it may not make twice (another plugin, a payment).
    pub went_out: bool,
    /// The partner origin `tenant.current` found, looked up at most once per invocation.
    pub origin: Option<Option<String>>,
    pub renders: u32,
    /// Set when a host call broke a limit, so the trap is reported by its cause.
    pub broken: Option<String>,
    /// The invocation's wall-clock deadline; host calls are cut off at it too.
    pub deadline: Instant,
    pub timed_out: bool,
    pub min_log_level: Level,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
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

    fn host_fault(&self, what: &str, error: &dyn std::fmt::Display) -> types::Error {
        host_fault(&self.invocation, what, error)
    }

    /// Runs a host call's work until the invocation's deadline and records it in the journal;
    /// a passed deadline traps the invocation instead.
    async fn timed<T, E>(
        &mut self,
        interface: &'static str,
        function: &'static str,
        work: impl Future<Output = Result<T, E>>,
    ) -> wasmtime::Result<Result<T, E>> {
        let started = Instant::now();
        let Some(result) = bounded(self.deadline, work).await else {
            return Err(self.deadline_passed());
        };
        self.record(interface, function, started, result.is_ok());
        Ok(result)
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

/// Runs a host call until the invocation's deadline; `None` when the deadline passed first.
async fn bounded<T>(deadline: Instant, call: impl std::future::Future<Output = T>) -> Option<T> {
    tokio::time::timeout_at(tokio::time::Instant::from_std(deadline), call)
        .await
        .ok()
}

impl types::Host for State {}

impl From<super::PluginError> for types::Error {
    fn from(e: super::PluginError) -> Self {
        use super::PluginError as P;
        match e {
            P::InvalidInput { message } => types::Error::InvalidInput(message),
            P::InvalidField { field, message } => {
                types::Error::InvalidField(types::FieldError { field, message })
            }
            P::NotFound { message } => types::Error::NotFound(message),
            P::Denied { message } => types::Error::Denied(message),
            P::Conflict { message } => types::Error::Conflict(message),
            P::QuotaExceeded { message } => types::Error::QuotaExceeded(message),
            P::Upstream {
                code,
                sub_code,
                message,
            } => types::Error::Upstream(types::UpstreamError {
                code,
                sub_code,
                message,
            }),
            P::Unsupported { message } => types::Error::Unsupported(message),
            P::Internal { message } => types::Error::Internal(message),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn spin(for_at_least: Duration) {
        let started = Instant::now();
        let mut x: u64 = 1;
        while started.elapsed() < for_at_least {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
    }

    #[test]
    #[allow(
        clippy::disallowed_methods,
        reason = "a plain thread: the sleep stands for the scheduler running another thread"
    )]
    fn the_meter_charges_what_the_thread_ran_unless_the_segment_waited() {
        let mut meter = CpuMeter::new(Duration::from_secs(1));
        meter.pass();
        spin(Duration::from_millis(30));
        // Descheduled (here: asleep): on no clock.
        std::thread::sleep(Duration::from_millis(100));
        let ran = meter.settle();
        assert!(
            ran >= Duration::from_millis(25) && ran < Duration::from_millis(90),
            "{ran:?}"
        );
        // A segment that waited (the driving future was polled again): while it waited the
        // thread ran others' work, none of it charged.
        meter.pass();
        spin(Duration::from_millis(30));
        meter.polls.fetch_add(1, Ordering::Relaxed);
        let ran = meter.settle();
        assert!(ran < Duration::from_millis(90), "{ran:?}");
        // Host work that did not wait is the guest's.
        meter.pass();
        spin(Duration::from_millis(10));
        assert!(meter.end() >= ran + Duration::from_millis(8));
        // Ended: nothing more is charged.
        let total = meter.used;
        spin(Duration::from_millis(10));
        assert_eq!(meter.settle(), total);
    }
}
