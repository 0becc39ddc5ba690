//! The WASI a plugin gets: clocks and randomness from the host (fixed, for tests and the
//! harness's `--frozen`, so runs repeat exactly), stdout and stderr into the plugin's log, and
//! nothing else — no preopened directory, no socket, no name lookup, no environment, and no
//! waiting on a timer. An interpreter's runtime imports the filesystem, sockets and timers
//! whether a plugin uses them or not, so they link; using them finds nothing open, or stops the
//! call.
//!
//! Invariant: a frozen store's wall clock always reads the frozen instant and its monotonic
//! clock never advances, so nothing a plugin computes from time differs between two runs; a
//! plugin's output streams hold at most [`MAX_OUTPUT_BYTES`] each.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::io::AsyncWrite;
use wasmtime::component::Linker;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder};

use crate::plugins::Error;
use crate::plugins::host::{LimitBroken, State};

/// What a plugin's stdout or stderr keeps of one call; more is dropped.
pub(super) const MAX_OUTPUT_BYTES: usize = 16 << 10;

/// The WASI monotonic clock's interface as the engine links it.
const MONOTONIC_CLOCK: &str = "wasi:clocks/monotonic-clock@0.2.12";

/// Why waiting stops a call.
pub(super) const NO_WAITING: &str =
    "plugins may not sleep or wait on timers (wasi:clocks/monotonic-clock subscribe)";

/// Replaces the monotonic clock's timers with functions that stop the call: a waiting plugin
/// would hold its place doing nothing.
pub(super) fn forbid_waiting(linker: &mut Linker<State>) -> Result<(), Error> {
    linker.allow_shadowing(true);
    let mut clock = linker
        .instance(MONOTONIC_CLOCK)
        .map_err(|e| Error::Engine(e.to_string()))?;
    for function in ["subscribe-duration", "subscribe-instant"] {
        clock
            .func_new_async(function, |mut store, _, _, _| {
                store.data_mut().broken = Some(NO_WAITING.to_owned());
                Box::new(async { Err(wasmtime::Error::new(LimitBroken(NO_WAITING.into()))) })
            })
            .map_err(|e| Error::Engine(e.to_string()))?;
    }
    linker.allow_shadowing(false);
    Ok(())
}

/// An output stream that keeps the first [`MAX_OUTPUT_BYTES`] written and drops the rest
/// without failing the write: a chatty plugin loses log lines, not its call.
#[derive(Clone, Default)]
pub(super) struct Capped(Arc<Mutex<Vec<u8>>>);

impl Capped {
    /// What was kept.
    pub(super) fn take(&self) -> Vec<u8> {
        std::mem::take(
            &mut *self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

impl IsTerminal for Capped {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Capped {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl AsyncWrite for Capped {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let mut kept = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let room = MAX_OUTPUT_BYTES.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..buf.len().min(room)]);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// What a store's stdout and stderr wrote, read into the log when the call ends.
#[derive(Clone, Default)]
pub(super) struct Output {
    pub stdout: Capped,
    pub stderr: Capped,
}

/// A fresh context; `frozen` fixes the clocks at that instant and seeds randomness.
pub(super) fn context(frozen: Option<DateTime<Utc>>) -> (WasiCtx, Output) {
    let output = Output::default();
    let mut builder = WasiCtxBuilder::new();
    builder
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .stdout(output.stdout.clone())
        .stderr(output.stderr.clone());
    if let Some(at) = frozen {
        builder
            .wall_clock(FrozenWall(at))
            .monotonic_clock(FrozenMonotonic)
            .secure_random(wasmtime_wasi::Deterministic::new(vec![7, 1, 9, 4]))
            .insecure_random(wasmtime_wasi::Deterministic::new(vec![3, 5, 8]))
            .insecure_random_seed(42);
    }
    (builder.build(), output)
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
