//! The plugin host: WebAssembly components run in wasmtime with nothing granted but the
//! capabilities their manifest declares and their tenant's grant allows.
//!
//! A plugin is loaded once (checked, compiled ahead of time into the on-disk cache keyed by its
//! content hash and the engine configuration, linked into an `InstancePre`) and then invoked
//! any number of times, each in a fresh store: a pooled instance, a memory cap, a CPU budget
//! metered by epoch ticks, a wall-clock deadline that counts host calls, and an output cap.
//!
//! Invariants: nothing is compiled on the invocation path; a trap fails only its own invocation
//! (and counts towards the circuit breaker of that installation for that tenant); a component
//! whose imports exceed its manifest never loads; host calls are bound to the invocation's
//! tenant, and no secret crosses into the guest.
//!
//! Modules are listed in dependency order: each uses only those above it, except that
//! `manifest` checks template paths by `archive`'s rule.

/// The wasmtime bindings of the `trellis:plugin` world, generated from the frozen WIT.
mod bindings;
/// The host's errors, why a trap stopped an invocation, and what a plugin's error becomes.
mod error;
/// `plugin.toml`: identity, limits, capabilities, routes, and what a tenant may be granted.
pub mod manifest;
/// The wasmtime engine's configuration and the epoch ticker that meters CPU.
mod engine;
/// A component's imports, checked against its manifest and what the engine provides.
mod imports;
/// Routes a component declares in code (the SDK's `routes!`), merged into its manifest at pack.
pub mod declared;
/// `.tplug` archives: packing, reading, verifying contents and signatures.
pub mod archive;
/// The storage behind the `kv` capability: namespaced, versioned keys under quotas.
pub mod kv;
/// The data crossing the runtime's boundary: who a call is for, what it asks, what it produced.
mod types;
/// Each invocation's store and the capabilities plugins import, one module per interface.
mod host;
/// Who may run now: per-installation shares, slots, the heavy lane, the circuit breaker.
mod admission;
/// The runtime of one process: loading plugins and running invocations.
mod runtime;
/// The partner's catalog: installing, upgrading, offering and configuring plugins.
pub mod catalog;
/// Delivering one claimed event to its installation, entitlement and quota checked then.
pub mod delivery;
/// The event dispatcher: claims due deliveries from the outbox and records their outcomes.
pub mod dispatch;

pub use admission::PER_INSTALLATION;
pub use engine::TICK;
pub use error::{Error, PluginError, TrapReason};
pub use imports::{Import, check_imports, inspect_component};
pub use manifest::{Allowance, HOST_API_VERSION, HOST_API_VERSIONS, Manifest, host_api_versions};
pub use runtime::{Loaded, MAX_INPUT_BYTES, Metrics, Runtime, RuntimeOptions};
pub use types::{
    BoxFuture, Call, Delivered, Emitted, Event, Facts, Finish, FinishError, Finishing, HostCall,
    HttpRequest, HttpResponse, Inside, Invocation, LogLine, Outcome, Output, Outside,
    PaymentAnswer, PaymentOp, PluginTrade, RefundView, Request, Services, TenantContext, TradeView,
};
