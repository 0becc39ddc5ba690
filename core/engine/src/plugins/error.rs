//! How the plugin host reports failure: the host's [`Error`], why a trap stopped an invocation,
//! and what a plugin's own error becomes on its way out of the guest.
//!
//! Invariant: every text a plugin supplies in an error is clipped before the engine carries it
//! anywhere, so a guest cannot flood the log or an API answer through its errors.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::bindings::trellis::plugin::types as wit;

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
    #[error(
        "the plugin's data changed while it ran ({what}), {runs} times in a row; nothing it did was kept"
    )]
    Conflict { what: String, runs: u32 },
    #[error("what the plugin did could not be committed: {0}")]
    Commit(String),
    #[error("{0}")]
    Abandoned(String),
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
