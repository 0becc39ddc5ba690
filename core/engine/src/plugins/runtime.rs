//! The plugin runtime of one process: the engine and linker, the plugins loaded into it, and
//! invocations, each run in a fresh store with a memory cap, a CPU budget metered by epoch
//! ticks, a wall-clock deadline that counts host calls, and an output cap.
//!
//! Invariant: nothing is compiled on the invocation path, and `invoke` never panics: every
//! failure, a trap included, comes back in the outcome of that invocation alone (and counts
//! towards the breaker of that installation for that tenant).

/// Loading: checking, compiling into the on-disk cache, linking; the loaded plugins.
mod load;
/// The WASI context of a store: no network, and frozen clocks and randomness when asked.
mod wasi;
/// Calling a component's exports: the request checks before, the output cap after.
mod exports;
/// Naming the cause of a trap from what the store observed.
mod traps;
/// Committing a run that succeeded: its kv writes with the caller's finishing work.
mod commit;
/// Group commit: runs that finish together commit in one transaction.
mod committer;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{Engine, Store, UpdateDeadline};

pub use exports::MAX_INPUT_BYTES;
pub use load::Loaded;

use super::admission::{Admission, Breaker, Gates, Permits, Turn, lock};
use super::bindings::trellis::plugin::log::Level;
use super::engine::{TICK, engine_config, spawn_ticker};
use super::host::{self, CpuMeter, Limiter, State};
use super::manifest::Manifest;
use super::{
    Call, Error, Invocation, Outcome, Output, PluginError, Request, Services, bindings, kv,
};
use crate::config::PluginsConfig;
use commit::Refused;

/// Counters since start-up.
#[derive(Debug, Default)]
pub struct Metrics {
    pub invocations: AtomicU64,
    pub traps: AtomicU64,
    pub timeouts: AtomicU64,
    pub suspended: AtomicU64,
    /// Runs whose work was thrown away because kv data they read changed before they committed.
    pub conflicts: AtomicU64,
}

/// What a run leaves behind for its commit.
#[derive(Default)]
struct Ran {
    txn: Option<kv::Txn>,
    /// False once it called Alipay: running it again would call Alipay again.
    repeatable: bool,
    /// The run's wall-clock deadline, which its commit keeps too.
    deadline: Option<Instant>,
    /// Its namespace's turn, held until the commit ends.
    turn: Turn,
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
    /// How many more times an invocation runs when what it read changed before it committed.
    pub conflict_retries: u32,
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
            conflict_retries: config.conflict_retries,
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
    admission: Admission,
    gates: Gates,
    committer: committer::Committer,
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

impl Runtime {
    /// Starts the engine: pooling when the address space allows, else on-demand.
    pub fn new(options: RuntimeOptions, services: Services) -> Result<Self, Error> {
        let (engine, allocation) = if options.pooling {
            // Room for twice the admitted invocations: each may hold one callee of a
            // `plugins.call`, which takes no admission place of its own.
            match Engine::new(&engine_config(Some(
                options.max_concurrency.saturating_mul(2),
            ))) {
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
        wasi::forbid_waiting(&mut linker)?;
        bindings::Plugin::add_to_linker::<State, wasmtime::component::HasSelf<State>>(
            &mut linker,
            |s| s,
        )
        .map_err(|e| Error::Engine(e.to_string()))?;
        // The interfaces 0.2 adds; its 0.1 interfaces are the ones just linked.
        {
            use bindings::v02::trellis::plugin0_2_0::{kv_batch, payments, plugins, tenant};
            type Own = wasmtime::component::HasSelf<State>;
            fn own(s: &mut State) -> &mut State {
                s
            }
            tenant::add_to_linker::<State, Own>(&mut linker, own)
                .and_then(|()| kv_batch::add_to_linker::<State, Own>(&mut linker, own))
                .and_then(|()| plugins::add_to_linker::<State, Own>(&mut linker, own))
                .and_then(|()| payments::add_to_linker::<State, Own>(&mut linker, own))
                .map_err(|e| Error::Engine(e.to_string()))?;
        }

        let stop_ticker = Arc::new(AtomicBool::new(false));
        spawn_ticker(engine.clone(), stop_ticker.clone());
        tracing::info!(allocation, engine = %engine_hash, "plugin engine ready");
        Ok(Self {
            linker,
            engine_hash,
            allocation,
            admission: Admission::new(
                options.max_concurrency,
                Breaker::new(
                    options.breaker_traps,
                    options.breaker_window,
                    options.breaker_cooldown,
                ),
            ),
            gates: Gates::default(),
            committer: committer::Committer::default(),
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

    /// Lifts a suspension (an operator's decision after fixing the cause).
    pub fn reset_breaker(&self, installation_id: &str) {
        self.admission.breaker.reset(installation_id);
    }

    /// Lifts the suspensions of an installation that tripped before `at`: a reset recorded by
    /// another process.
    pub fn lift_suspensions_before(&self, installation_id: &str, at: DateTime<Utc>) {
        self.admission.breaker.reset_before(installation_id, at);
    }

    /// Unique per process and, through the random prefix, across processes; no system call.
    fn next_invocation_id(&self) -> String {
        let n = self.invocation_counter.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n:010x}", self.id_prefix)
    }

    /// Runs one invocation and commits what it did (its kv writes, with the request's finishing
    /// work) when it succeeds; nothing of a failed one is kept. When kv data it read changed
    /// before it could commit, it runs again (up to `conflict_retries` more times, and never
    /// after calling Alipay). A plugin that cannot leave its invocation runs optimistically
    /// ([`kv::Txn::optimistic`]); a run whose optimism failed — at its commit, or behind its
    /// failure — runs once more, reading. Never panics and never compiles; failures come back
    /// in the outcome.
    pub async fn invoke(&self, loaded: &Arc<Loaded>, request: Request) -> Outcome {
        let started = Instant::now();
        let finish = request.finish.as_ref().map(|f| f.0.clone());
        let (mut runs, mut conflicts) = (0, 0);
        // A plugin that cannot leave the invocation may run again at no cost to anyone, so
        // its kv transaction is optimistic (`kv::Txn::optimistic`) until optimism fails once.
        let mut optimistic = loaded.manifest.capabilities.stay_inside();
        let mut outcome = loop {
            runs += 1;
            let (mut outcome, ran) = self.attempt(loaded, &request, started, optimistic).await;
            let _turn = ran.turn;
            outcome.runs = runs;
            if outcome.result.is_err() {
                // A failure decided on what was remembered or assumed stands only if that held:
                // its reads are checked, and when one did not hold it runs again, reading.
                if let Some(txn) = ran.txn.filter(|t| t.leaned() && ran.repeatable) {
                    let ids = txn.ids();
                    // A bound of its own (the run's deadline may be what it failed on), within
                    // its caller's when it runs inside another invocation.
                    let bound = Duration::from_millis(u64::from(loaded.manifest.limits.wall_ms));
                    let until = request
                        .inside
                        .map_or(Instant::now() + bound, |i| i.deadline);
                    let (checked, _) = commit::commit(
                        &self.services,
                        &self.committer,
                        Some(txn.reads_only()),
                        None,
                        Vec::new(),
                        Some(until),
                    )
                    .await;
                    if let Err(refused) = checked {
                        if let Some(recent) = self.services.kv.recent() {
                            recent.forget(&ids);
                        }
                        if matches!(refused, Refused::Again(_)) {
                            optimistic = false;
                            if let Some(finish) = &finish {
                                finish.discard().await;
                            }
                            continue;
                        }
                    }
                }
                break outcome;
            }
            let leaned = ran.txn.as_ref().filter(|t| t.leaned()).map(kv::Txn::ids);
            let learned = ran.txn.as_ref().map(|t| (t.ids(), t.learned()));
            // Waiting for the database's write turn is the invocation's wall time too.
            let (committed, emitted) = commit::commit(
                &self.services,
                &self.committer,
                ran.txn,
                finish.clone(),
                std::mem::take(&mut outcome.emitted),
                ran.deadline,
            )
            .await;
            outcome.emitted = emitted;
            // Remembered before the namespace's turn passes on, for the next run there.
            if let Some(recent) = self.services.kv.recent() {
                match (&committed, learned) {
                    (Ok(()), Some((ids, learned))) => {
                        if let Some(known) = learned.take() {
                            recent.put(ids, known);
                        }
                    }
                    (Err(_), Some((ids, _))) => recent.forget(&ids),
                    _ => {}
                }
            }
            outcome.result = match committed {
                Ok(()) => break outcome,
                // What it was told may have been what this engine remembered or assumed:
                // it runs again reading everything, which does not count as a conflict.
                Err(Refused::Again(_)) if leaned.is_some() && ran.repeatable => {
                    optimistic = false;
                    if let Some(finish) = &finish {
                        finish.discard().await;
                    }
                    continue;
                }
                Err(Refused::Late) => Err(Error::Trap {
                    reason: super::TrapReason::WallClock,
                    message: format!(
                        "the wall-clock deadline ({} ms) passed while waiting to commit what the plugin did",
                        loaded.manifest.limits.wall_ms
                    ),
                    backtrace: None,
                }),
                Err(Refused::Again(_))
                    if ran.repeatable && conflicts < self.options.conflict_retries =>
                {
                    conflicts += 1;
                    self.metrics.conflicts.fetch_add(1, Ordering::Relaxed);
                    if let Some(finish) = &finish {
                        finish.discard().await;
                    }
                    continue;
                }
                Err(Refused::Again(what)) => {
                    self.metrics.conflicts.fetch_add(1, Ordering::Relaxed);
                    Err(Error::Conflict { what, runs })
                }
                Err(Refused::Lost(why)) => Err(Error::Abandoned(why)),
                Err(Refused::Failed(error)) => {
                    tracing::error!(
                        plugin = %loaded.manifest.id,
                        installation = %request.tenant.installation_id,
                        invocation = %outcome.invocation_id,
                        %error,
                        "could not commit what a plugin did"
                    );
                    Err(Error::Commit(
                        "the database failed; see the engine log".into(),
                    ))
                }
            };
            break outcome;
        };
        if outcome.result.is_err()
            && let Some(finish) = &finish
        {
            finish.discard().await;
        }
        outcome.wall = started.elapsed();
        // A callee's failure inside a `plugins.call` is not counted against it: its caller set
        // its deadline and its input, so a caller could otherwise suspend it for the merchant.
        if request.inside.is_none() {
            self.count_failure(&loaded.manifest, &request, &outcome);
        }
        outcome
    }

    /// Runs an invocation once, in a fresh store.
    async fn attempt(
        &self,
        loaded: &Arc<Loaded>,
        request: &Request,
        started: Instant,
        optimistic: bool,
    ) -> (Outcome, Ran) {
        let id = self.next_invocation_id();
        self.metrics.invocations.fetch_add(1, Ordering::Relaxed);
        let empty = |id: String, result: Result<Output, Error>| {
            let outcome = Outcome {
                invocation_id: id,
                result,
                logs: Vec::new(),
                logs_dropped: 0,
                host_calls: Vec::new(),
                emitted: Vec::new(),
                runs: 1,
                memory_peak: 0,
                cpu: Duration::ZERO,
                wall: started.elapsed(),
            };
            (outcome, Ran::default())
        };
        let installation = request.tenant.installation_id.clone();
        let breaker_key = format!("{installation}/{}", request.tenant.scope_id());
        if let Some(until) = self.admission.breaker.open_until(&breaker_key) {
            self.metrics.suspended.fetch_add(1, Ordering::Relaxed);
            return empty(id, Err(Error::Suspended { until }));
        }
        let payload = match exports::check_request(&loaded.manifest, &request.call) {
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
            facts: request.facts.clone(),
            inside: request.inside.is_some(),
        });
        let mut wall = Duration::from_millis(u64::from(manifest.limits.wall_ms));
        let wall_ms = manifest.limits.wall_ms;
        let permits = match request.inside {
            // Its caller holds a place and waits for it: taking another could wait on itself
            // when the places are few. It ends by its caller's deadline.
            Some(inside) => {
                wall = wall.min(inside.deadline.saturating_duration_since(Instant::now()));
                Permits::inside()
            }
            // Admission: waiting for a place to run is bounded by the wall time too, but it is
            // not the plugin's fault and does not count against its deadline or its breaker.
            None => match tokio::time::timeout(wall, self.admission.admit(&installation)).await {
                Ok(Some(permits)) => permits,
                Ok(None) | Err(_) => return empty(id, Err(Error::Busy { wall_ms })),
            },
        };
        // The deadline is enforced inside (epoch callback and host calls) so the journal
        // survives; this outer bound only catches what cannot be interrupted.
        // Boxed: the future holds the whole store state and would otherwise be moved by value.
        let run = Box::pin(self.run(
            loaded,
            invocation,
            (request.call.clone(), payload),
            Instant::now() + wall,
            permits,
            optimistic,
        ));
        match tokio::time::timeout(wall + Duration::from_millis(500), run).await {
            Ok(ran) => ran,
            Err(_) => empty(id, Err(Error::Timeout { wall_ms })),
        }
    }

    /// Counts a failure that is the plugin's fault towards its breaker, per installation and
    /// tenant: one merchant's failing calls (or anonymous visitors to its public pages) must not
    /// suspend the plugin for the partner's other merchants.
    fn count_failure(&self, manifest: &Manifest, request: &Request, outcome: &Outcome) {
        let installation = &request.tenant.installation_id;
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
            let breaker_key = format!("{installation}/{}", request.tenant.scope_id());
            if self.admission.breaker.record(&breaker_key) {
                tracing::error!(
                    plugin = %manifest.id,
                    installation = %installation,
                    tenant = %breaker_key,
                    "installation suspended for this tenant after {} failures in {:?}",
                    self.admission.breaker.traps,
                    self.admission.breaker.window
                );
            }
        }
    }

    async fn run(
        &self,
        loaded: &Arc<Loaded>,
        invocation: Arc<Invocation>,
        (call, payload): (Call, Option<String>),
        deadline: Instant,
        mut permits: Permits,
        optimistic: bool,
    ) -> (Outcome, Ran) {
        let id = invocation.id.clone();
        let manifest = invocation.manifest.clone();
        let installation = invocation.tenant.installation_id.clone();
        let txn = invocation.grant.kv.map(|quota| {
            let txn = kv::Txn::new(kv::Namespace {
                installation_id: installation.clone(),
                scope_id: invocation.tenant.scope_id().to_owned(),
                quota,
            });
            if optimistic {
                txn.optimistic(&self.services.kv)
            } else {
                txn
            }
        });
        let (wasi_ctx, output) = wasi::context(self.options.frozen_clock);
        let state = State {
            wasi: wasi_ctx,
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
            turn: if txn.is_some() {
                Turn::Waiting(
                    self.gates
                        .gate(&format!("{installation}/{}", invocation.tenant.scope_id())),
                )
            } else {
                Turn::None
            },
            txn,
            logs: Vec::new(),
            log_bytes: 0,
            logs_dropped: 0,
            host_calls: Vec::new(),
            emitted: Vec::new(),
            kv_ops: 0,
            alipay_calls: 0,
            plugin_calls: 0,
            payment_calls: 0,
            went_out: false,
            origin: None,
            renders: 0,
            broken: None,
            deadline,
            timed_out: false,
            min_log_level: match self.options.min_log_level {
                "trace" => Level::Trace,
                "debug" => Level::Debug,
                _ => Level::Info,
            },
        };
        // The share and the slot stay held (in `permits`) until the store is gone.
        if let Some(permit) = permits.take_heavy() {
            *lock(&state.cpu.heavy) = Some(permit);
        }
        let mut store = Store::new(&self.engine, state);
        // An invocation inside another never waits for the heavy lane: its caller may hold the
        // lane's last place while it waits for this one.
        let demoted = lock(&store.data().cpu.heavy).is_some() || invocation.inside;
        store.data_mut().cpu.demoted = demoted;
        store.limiter(|s| &mut s.limiter);
        store.set_epoch_deadline(1);
        let heavy = self.admission.heavy_lane();
        let hog_flag = self.admission.hog_flag(installation);
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
            // A tick of CPU makes an invocation heavy; so does another invocation of the same
            // installation having been found heavy meanwhile.
            let demote = !state.cpu.demoted && (used >= TICK || hog_flag.is_set());
            let slot = state.cpu.heavy.clone();
            if demote {
                state.cpu.demoted = true;
                hog_flag.mark();
            }
            // One holding its namespace's turn runs on without waiting for the lane: the lane's
            // place may be held by another invocation of the installation that waits for this
            // very turn, and neither would move until the wall clock stopped both.
            let wait = demote && !matches!(state.turn, Turn::Held { .. });
            let heavy = heavy.clone();
            Ok(UpdateDeadline::YieldCustom(
                1,
                Box::pin(async move {
                    if wait {
                        if let Ok(permit) = heavy.acquire_owned().await {
                            *lock(&slot) = Some(permit);
                        }
                    } else {
                        tokio::task::yield_now().await;
                    }
                }),
            ))
        });

        // The future driving the guest is metered poll by poll (see `CpuMeter`).
        let polled = store.data().cpu.polled.clone();
        let result = {
            let mut run = std::pin::pin!(async {
                match loaded.pre.instantiate_async(&mut store).await {
                    Err(e) => Err(e),
                    Ok(plugin) => {
                        let tenant = host::tenant_record(&invocation);
                        exports::call_export(&plugin, &mut store, &tenant, call, payload).await
                    }
                }
            });
            std::future::poll_fn(|cx| polled.poll(run.as_mut(), cx)).await
        };
        store.data_mut().cpu.settle();
        let limit = (manifest.limits.output_kib as usize) << 10;
        let result = match result {
            Ok(Ok(output)) => {
                let bytes = exports::output_size(&output);
                if bytes > limit {
                    Err(Error::OutputTooLarge { bytes, limit })
                } else {
                    Ok(output)
                }
            }
            Ok(Err(guest)) => Err(Error::Plugin(PluginError::from(guest))),
            Err(trap) => Err(traps::classify(store.data(), &trap, &manifest)),
        };
        let state = store.data_mut();
        // What the plugin printed joins its log, line by line, under the log's bounds: an
        // interpreter's tracebacks go to stderr.
        for (stream, level, kept) in [
            ("stdout", Level::Info, output.stdout.take()),
            ("stderr", Level::Warn, output.stderr.take()),
        ] {
            for line in String::from_utf8_lossy(&kept).lines() {
                if !line.trim().is_empty() {
                    let _ = <State as bindings::trellis::plugin::log::Host>::log(
                        state,
                        level,
                        line.to_owned(),
                        vec![("stream".to_owned(), stream.to_owned())],
                    );
                }
            }
        }
        let outcome = Outcome {
            invocation_id: id,
            result,
            logs: std::mem::take(&mut state.logs),
            logs_dropped: state.logs_dropped,
            host_calls: std::mem::take(&mut state.host_calls),
            emitted: std::mem::take(&mut state.emitted),
            runs: 1,
            memory_peak: state.limiter.peak,
            cpu: state.cpu.used,
            wall: Duration::ZERO,
        };
        let ran = Ran {
            turn: std::mem::take(&mut state.turn),
            txn: state.txn.take(),
            repeatable: state.alipay_calls == 0 && !state.went_out,
            deadline: Some(state.deadline),
        };
        (outcome, ran)
    }
}
