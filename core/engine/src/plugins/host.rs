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

/// How an invocation's CPU is metered: on the CPU clock of the thread that polls the future
/// driving it, during each poll. Inside a poll the thread does this invocation's work only — the
/// guest's code and the engine's work for it (reading its arguments, rendering, logging,
/// preparing a query and reading its rows) — so all of that is charged; between polls the
/// invocation waits (the database, Alipay, a tick's yield) and its thread runs others' work,
/// none of it charged. Time a thread waits for a core is on no thread's clock, so a busy
/// machine charges an invocation only what it ran. Another invocation run inside a poll (a
/// `plugins.call`) is charged to itself, not to its caller.
pub struct CpuMeter {
    pub budget: Duration,
    /// What was charged as of the last [`Self::settle`].
    pub used: Duration,
    pub polled: Arc<PolledCpu>,
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

thread_local! {
    /// CPU spent in metered polls on this thread, so far: a poll run inside another (an
    /// invocation inside a host call) is left out of the outer one's charge.
    static METERED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// CPU charged to one invocation by the polls of the future driving it; shared between that
/// future and the store (whose tick reads it mid-poll, on the polling thread).
#[derive(Debug, Default)]
pub struct PolledCpu {
    /// Charged by polls that ended, in nanoseconds.
    charged: AtomicU64,
    /// The running poll's start: the thread's CPU clock and [`METERED`] then.
    started: AtomicU64,
    metered_then: AtomicU64,
    polling: std::sync::atomic::AtomicBool,
}

impl PolledCpu {
    /// Polls `future` once, charging what the poll ran on this thread.
    pub fn poll<F: Future>(
        &self,
        future: std::pin::Pin<&mut F>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let metered = METERED.get();
        let started = thread_cpu_nanos();
        self.started.store(started, Ordering::Relaxed);
        self.metered_then.store(metered, Ordering::Relaxed);
        self.polling.store(true, Ordering::Relaxed);
        let polled = future.poll(cx);
        self.polling.store(false, Ordering::Relaxed);
        let ran = thread_cpu_nanos().saturating_sub(started);
        let inner = METERED.get().saturating_sub(metered);
        self.charged
            .fetch_add(ran.saturating_sub(inner), Ordering::Relaxed);
        METERED.set(metered.saturating_add(ran));
        polled
    }

    /// What was charged so far, the running poll included when called from inside it.
    pub fn so_far(&self) -> Duration {
        let mut nanos = self.charged.load(Ordering::Relaxed);
        if self.polling.load(Ordering::Relaxed) {
            let ran = thread_cpu_nanos().saturating_sub(self.started.load(Ordering::Relaxed));
            let inner = METERED
                .get()
                .saturating_sub(self.metered_then.load(Ordering::Relaxed));
            nanos = nanos.saturating_add(ran.saturating_sub(inner));
        }
        Duration::from_nanos(nanos)
    }
}

impl CpuMeter {
    pub fn new(budget: Duration) -> Self {
        Self {
            budget,
            used: Duration::ZERO,
            polled: Arc::default(),
            heavy: Arc::default(),
            demoted: false,
            interrupted: false,
        }
    }

    /// What was charged so far (from inside a poll: up to now); kept in `used`.
    pub fn settle(&mut self) -> Duration {
        self.used = self.polled.so_far();
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

    /// Runs for `cpu` of this thread's CPU time (longer on a busy machine, as the suite is).
    fn spin(cpu: Duration) {
        let until = thread_cpu_nanos() + u64::try_from(cpu.as_nanos()).unwrap_or(u64::MAX);
        let mut x: u64 = 1;
        while thread_cpu_nanos() < until {
            for _ in 0..1_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
        }
    }

    /// Polls `future` to its end on this thread, metered by `meter`; between polls the thread
    /// runs `others` (what it does for other tasks while the invocation waits).
    fn metered<F: Future>(meter: &PolledCpu, future: F, mut others: impl FnMut()) -> F::Output {
        let mut future = std::pin::pin!(future);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        loop {
            if let std::task::Poll::Ready(out) = meter.poll(future.as_mut(), &mut cx) {
                return out;
            }
            others();
        }
    }

    #[test]
    #[allow(
        clippy::disallowed_methods,
        reason = "a plain thread: the sleep stands for the scheduler running another thread"
    )]
    fn an_invocation_is_charged_what_its_polls_ran_and_nothing_between_them() {
        let meter = PolledCpu::default();
        metered(
            &meter,
            async {
                spin(Duration::from_millis(30));
                // Descheduled (here: asleep): on no clock.
                std::thread::sleep(Duration::from_millis(100));
            },
            || {},
        );
        let ran = meter.so_far();
        assert!(
            ran >= Duration::from_millis(25) && ran < Duration::from_millis(90),
            "{ran:?}"
        );
        // Waiting: the thread runs others' work between polls, none of it charged.
        let before = meter.so_far();
        metered(
            &meter,
            async {
                spin(Duration::from_millis(10));
                Pending::default().await;
                spin(Duration::from_millis(10));
            },
            || spin(Duration::from_millis(60)),
        );
        let charged = meter.so_far() - before;
        assert!(
            charged >= Duration::from_millis(15) && charged < Duration::from_millis(50),
            "{charged:?}"
        );
    }

    #[test]
    fn an_invocation_inside_another_is_charged_to_itself_not_to_the_outer_one() {
        let outer = PolledCpu::default();
        let inner = PolledCpu::default();
        metered(
            &outer,
            async {
                spin(Duration::from_millis(10));
                metered(&inner, async { spin(Duration::from_millis(40)) }, || {});
                spin(Duration::from_millis(10));
            },
            || {},
        );
        let (outer, inner) = (outer.so_far(), inner.so_far());
        assert!(inner >= Duration::from_millis(35), "{inner:?}");
        assert!(
            outer >= Duration::from_millis(15) && outer < Duration::from_millis(35),
            "{outer:?}"
        );
    }

    /// Pending once.
    #[derive(Default)]
    struct Pending(bool);

    impl Future for Pending {
        type Output = ();
        fn poll(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<()> {
            if self.0 {
                return std::task::Poll::Ready(());
            }
            self.0 = true;
            std::task::Poll::Pending
        }
    }
}
