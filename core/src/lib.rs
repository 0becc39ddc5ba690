//! The Trellis engine. Modules are listed in dependency order: each uses only those above it.
#![forbid(unsafe_code)]

/// Who is calling: accounts and their credentials.
pub mod auth;
/// The `trellis` command line.
pub mod cli;
/// Process configuration: defaults, `trellis.toml`, `TRELLIS_*` environment.
pub mod config;
/// The database pool (SQLite or PostgreSQL), entities and migrations.
pub mod db;
/// The axum router, its layers and the server loop.
pub mod http;
/// The tenant tree: platform, partners, agents, merchants, stores, and their accounts.
pub mod tenancy;
/// Handlebars themes with per-partner choice and `default` fallback.
pub mod themes;
