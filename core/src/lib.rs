//! The Trellis engine. Modules are listed in dependency order: each uses only those above it.
#![forbid(unsafe_code)]

/// Process configuration: defaults, `trellis.toml`, `TRELLIS_*` environment.
pub mod config;
/// The database pool (SQLite or PostgreSQL), entities and migrations.
pub mod db;
/// The tenant tree: platform, partners, agents, merchants, stores, and their accounts.
pub mod tenancy;
/// Who is calling: accounts and their credentials.
pub mod auth;
/// Handlebars themes with per-partner choice and `default` fallback.
pub mod themes;
/// The axum router, its layers and the server loop.
pub mod http;
/// The `trellis` command line.
pub mod cli;
