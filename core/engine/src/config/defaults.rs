//! The built-in defaults: the lowest configuration layer, under `trellis.toml` and the environment.
//!
//! Invariant: every key of `Config` outside `secrets` has a default here, and
//! `config/example.toml` documents exactly these values (a CLI test compares the two).

use serde::Serialize;

use super::LogFormat;

/// Built-in defaults, serialised into the lowest figment layer. Kept as a plain struct so that
/// `config show` and the example file can be checked against it.
#[derive(Serialize)]
pub(super) struct Defaults {
    data_dir: &'static str,
    http: DefaultHttp,
    database: DefaultDatabase,
    log: DefaultLog,
    secrets: DefaultSecrets,
    themes: DefaultThemes,
    auth: DefaultAuth,
    sandbox: DefaultSandbox,
    plugins: DefaultPlugins,
    events: DefaultEvents,
    payments: DefaultPayments,
    audit: DefaultAudit,
    alipay: DefaultAlipay,
}

#[derive(Serialize)]
struct DefaultPayments {
    pay_wait_secs: u64,
    pay_poll_ms: u64,
    reconcile: bool,
    reconcile_every_secs: u64,
    reconcile_batch: u32,
    ingest_batch: u32,
    ingest_queue: u32,
}

#[derive(Serialize)]
struct DefaultAlipay {
    allow_custom_gateway: bool,
    custom_gateway_networks: &'static [&'static str],
    max_response_bytes: usize,
    production_root_fingerprints: &'static [&'static str],
}

#[derive(Serialize)]
struct DefaultAudit {
    retention_days: u32,
}

#[derive(Serialize)]
struct DefaultEvents {
    dispatcher: bool,
    batch: u32,
    concurrency: u32,
    lease_secs: u64,
    poll_ms: u64,
    max_attempts: u32,
    backoff_first_secs: u64,
    backoff_max_secs: u64,
    chain_max_events: u32,
    chain_max_deliveries: u32,
    emit_per_minute: u32,
    emit_burst: u32,
}

#[derive(Serialize)]
struct DefaultPlugins {
    cache_dir: &'static str,
    max_concurrency: u32,
    pooling: bool,
    breaker_traps: u32,
    breaker_window_secs: u64,
    breaker_cooldown_secs: u64,
    conflict_retries: u32,
    kv_recent_namespaces: u32,
}

#[derive(Serialize)]
struct DefaultSandbox {
    enabled: bool,
    time_scale: u64,
}

#[derive(Serialize)]
struct DefaultAuth {
    session_ttl_hours: u32,
    cookie_secure: bool,
    hash_threads: u32,
    hash_queue: u32,
}

#[derive(Serialize)]
struct DefaultHttp {
    listen: &'static str,
    body_limit: usize,
    shutdown_grace_secs: u64,
    public_scheme: &'static str,
    console_hosts: &'static [&'static str],
    max_connections: u32,
    header_read_timeout_secs: u64,
    body_read_timeout_secs: u64,
    max_concurrent_uploads: u32,
    max_connections_per_ip: u32,
    write_timeout_secs: u64,
    max_buffered_body_bytes: u64,
    anonymous_body_limit: usize,
}

#[derive(Serialize)]
struct DefaultDatabase {
    url: &'static str,
    auto_migrate: bool,
    max_connections: u32,
    busy_timeout_ms: u64,
    recent_reads_ms: u64,
}

#[derive(Serialize)]
struct DefaultLog {
    level: &'static str,
    format: LogFormat,
}

#[derive(Serialize)]
struct DefaultSecrets {}

#[derive(Serialize)]
struct DefaultThemes {
    dir: &'static str,
    reload: bool,
}

pub(super) const DEFAULTS: Defaults = Defaults {
    data_dir: "./data",
    http: DefaultHttp {
        listen: "127.0.0.1:8080",
        body_limit: 1024 * 1024,
        shutdown_grace_secs: 30,
        public_scheme: "https",
        console_hosts: &["127.0.0.1", "::1"],
        max_connections: 4_096,
        header_read_timeout_secs: 10,
        body_read_timeout_secs: 30,
        max_concurrent_uploads: 4,
        max_connections_per_ip: 256,
        write_timeout_secs: 30,
        max_buffered_body_bytes: 256 * 1024 * 1024,
        anonymous_body_limit: 64 * 1024,
    },
    database: DefaultDatabase {
        url: "",
        auto_migrate: true,
        max_connections: 8,
        busy_timeout_ms: 5_000,
        recent_reads_ms: 1_000,
    },
    log: DefaultLog {
        level: "info",
        format: LogFormat::Pretty,
    },
    secrets: DefaultSecrets {},
    themes: DefaultThemes {
        dir: "./themes",
        reload: false,
    },
    auth: DefaultAuth {
        session_ttl_hours: 12,
        cookie_secure: false,
        hash_threads: 0,
        hash_queue: 32,
    },
    sandbox: DefaultSandbox {
        enabled: false,
        time_scale: 1,
    },
    plugins: DefaultPlugins {
        cache_dir: "",
        max_concurrency: 1_000,
        pooling: true,
        breaker_traps: 5,
        breaker_window_secs: 300,
        breaker_cooldown_secs: 900,
        conflict_retries: 3,
        kv_recent_namespaces: 4_096,
    },
    events: DefaultEvents {
        dispatcher: true,
        batch: 64,
        concurrency: 16,
        lease_secs: 60,
        poll_ms: 250,
        max_attempts: 8,
        backoff_first_secs: 2,
        backoff_max_secs: 3_600,
        chain_max_events: 100,
        chain_max_deliveries: 500,
        emit_per_minute: 600,
        emit_burst: 100,
    },
    payments: DefaultPayments {
        pay_wait_secs: 60,
        pay_poll_ms: 3_000,
        reconcile: true,
        reconcile_every_secs: 60,
        reconcile_batch: 50,
        ingest_batch: 256,
        ingest_queue: 4_096,
    },
    audit: DefaultAudit {
        retention_days: 365,
    },
    alipay: DefaultAlipay {
        allow_custom_gateway: false,
        custom_gateway_networks: &[],
        max_response_bytes: trellis_alipay::gateway::DEFAULT_MAX_RESPONSE_BYTES,
        production_root_fingerprints: &trellis_alipay::cert::ALIPAY_PRODUCTION_ROOT_FINGERPRINTS,
    },
};
