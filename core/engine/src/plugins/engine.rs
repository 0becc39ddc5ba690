//! The wasmtime engine's configuration and the epoch ticker that meters CPU.
//!
//! Invariant: compiling and running use the same configuration (a cached artifact's name
//! carries its compatibility hash), and the pool's totals are whole multiples of one
//! component's maximums, so `n` invocations of any plugins always fit (the runtime asks for
//! twice its admitted invocations: each may hold a callee of a `plugins.call`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasmtime::Engine;

use super::manifest;

/// The epoch tick: the granularity of CPU metering and of yielding to other tasks.
pub const TICK: Duration = Duration::from_millis(10);

/// Per-component maximums: a Rust component has one memory, a few tables and a handful of core
/// instances (its module and the shims `wit-component` adds).
const MAX_MEMORIES: u32 = 2;
const MAX_TABLES: u32 = 8;
const MAX_CORE_INSTANCES: u32 = 16;

pub(super) fn engine_config(pool: Option<u32>) -> wasmtime::Config {
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
pub(super) fn spawn_ticker(engine: Engine, stop: Arc<AtomicBool>) {
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
