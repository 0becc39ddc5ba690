//! The WASI context of one store: no sockets or name lookups, and — for tests and the
//! harness's `--frozen` — clocks and randomness fixed so that runs repeat exactly.
//!
//! Invariant: a frozen store's wall clock always reads the frozen instant and its monotonic
//! clock never advances, so nothing a plugin computes from time differs between two runs.

use std::time::Duration;

use chrono::{DateTime, Utc};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder};

/// A fresh context; `frozen` fixes the clocks at that instant and seeds randomness.
pub(super) fn context(frozen: Option<DateTime<Utc>>) -> WasiCtx {
    let mut builder = WasiCtxBuilder::new();
    builder
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
    if let Some(at) = frozen {
        builder
            .wall_clock(FrozenWall(at))
            .monotonic_clock(FrozenMonotonic)
            .secure_random(wasmtime_wasi::Deterministic::new(vec![7, 1, 9, 4]))
            .insecure_random(wasmtime_wasi::Deterministic::new(vec![3, 5, 8]))
            .insecure_random_seed(42);
    }
    builder.build()
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
