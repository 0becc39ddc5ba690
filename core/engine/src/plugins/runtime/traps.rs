//! Naming why an invocation trapped, from what its store observed on the way.
//!
//! Invariant: the store's own observations (CPU budget, deadline, a broken host limit, a
//! denied memory growth) outrank wasmtime's trap code, and a full instance pool is reported as
//! the runtime being busy, never as the plugin's fault.

use wasmtime::Trap;

use crate::plugins::host::State;
use crate::plugins::manifest::Manifest;
use crate::plugins::{Error, TrapReason};

/// Names the cause of a trap from what the store observed, falling back to wasmtime's code.
pub(super) fn classify(state: &State, trap: &wasmtime::Error, manifest: &Manifest) -> Error {
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
