//! The Trellis engine. Modules are listed in dependency order: each uses only those above it,
//! except that mutating functions of `tenancy` and `auth` take `rbac::Grant` as their proof
//! (the one deliberate cycle). The Alipay protocol (`trellis-alipay`) and the
//! offline sandbox (`trellis-alipay-sandbox`) are crates below the engine.
#![deny(unsafe_code)]

/// Process configuration: defaults, `trellis.toml`, `TRELLIS_*` environment.
pub mod config;
/// The database pool (SQLite or PostgreSQL), entities and migrations.
pub mod db;
/// The tenant tree: platform, partners, agents, merchants, stores.
pub mod tenancy;
/// Who is calling: accounts, sessions, API keys, sign-in throttling.
pub mod auth;
/// May they: the permission matrix, casbin, the `Grant` proof, the audit log.
pub mod rbac;
/// Secrets at rest: AES-256-GCM under the configured master key, with rotation.
pub mod secrets;
/// Merchants' sealed Alipay credentials and the intake of Alipay's notifications; the protocol
/// itself is `trellis-alipay`, re-exported here.
pub mod alipay;
/// The durable event outbox and its deliveries.
pub mod events;
/// Agents' packages, their assignment to merchants, and what a merchant is entitled to.
pub mod packages;
/// Handlebars themes with per-partner choice and `default` fallback.
pub mod themes;
/// The plugin host: manifests, archives, the wasmtime runtime and its capabilities.
pub mod plugins;
/// Payments: trades created at Alipay, the ledger that follows them, refunds and payment events.
pub mod payments;
/// One door for plugin calls: runs a plugin route for any door (admin, store staff, member
/// page, engine callback) from domain inputs.
pub mod doors;
/// The axum router, its layers and the server loop.
pub mod http;
/// The composition root: builds the application from its configuration and owns its clock.
pub mod app;
/// Demo data for `make run`.
pub mod demo;
/// The plugin harness: one plugin on a throwaway tenant and sandbox, for authors and tests.
pub mod harness;
/// The `trellis` command line.
pub mod cli;

/// The allocator the `trellis` binary runs on, for programs that embed the engine (its
/// benchmarks) to run on the same.
pub use mimalloc::MiMalloc as Allocator;
