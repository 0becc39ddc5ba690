//! Process configuration: built-in defaults, then `trellis.toml`, then `TRELLIS_*` environment
//! variables (`__` separates nested keys), extracted once into a typed [`Config`].
//!
//! Invariant: this is the only module that reads the environment, and no secret it holds
//! (`database.url` passwords, `secrets.master_key`) can reach `Debug`, a log line or an error.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

/// Environment variables with the `TRELLIS_` prefix that are not configuration keys.
const NON_KEY_VARIABLES: &[&str] = &["CONFIG", "TEST_DATABASE_URL", "TEST_LOG", "BLESS"];

/// Why configuration could not be loaded. The message always names the offending key or file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("configuration file {0} does not exist")]
    MissingFile(PathBuf),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The effective configuration of one `trellis` process.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where runtime files live: the default SQLite database, the plugin cache.
    pub data_dir: PathBuf,
    pub http: HttpConfig,
    pub database: DatabaseConfig,
    pub log: LogConfig,
    pub secrets: SecretsConfig,
    pub themes: ThemesConfig,
    pub auth: AuthConfig,
    pub sandbox: SandboxConfig,
    pub plugins: PluginsConfig,
    pub events: EventsConfig,
    pub audit: AuditConfig,
    pub alipay: AlipayConfig,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AlipayConfig {
    /// Let merchants point their app at a gateway URL of their own (`custom`): a platform
    /// decision, since the engine posts signed requests wherever that URL leads.
    pub allow_custom_gateway: bool,
    /// Networks (CIDRs or single addresses) a gateway may be at although they are not public:
    /// loopback, private, link-local and other special ranges are refused unless named here.
    pub custom_gateway_networks: Vec<trellis_alipay::gateway::Network>,
    /// Largest answer read from a gateway, in bytes; a longer one fails the call.
    pub max_response_bytes: usize,
    /// SHA-256 fingerprints (hex, `:` optional) of the root certificates a merchant may store
    /// for the `production` gateway in certificate mode. Alipay's root vouches for every key the
    /// engine takes as Alipay's, so only Alipay's own may be stored; list a new one here when
    /// Alipay publishes it.
    pub production_root_fingerprints: Vec<String>,
}

impl AlipayConfig {
    /// The gateways merchants' apps may call under these settings.
    pub fn gateway_policy(&self) -> trellis_alipay::gateway::GatewayPolicy {
        trellis_alipay::gateway::GatewayPolicy::new(
            self.allow_custom_gateway,
            self.custom_gateway_networks.clone(),
            self.max_response_bytes,
        )
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Days an audit entry is kept; older ones are deleted hourly. 0 keeps them forever.
    pub retention_days: u32,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EventsConfig {
    /// Run the event dispatcher in this process (every `trellis serve` may; they share the work).
    pub dispatcher: bool,
    /// Deliveries claimed per round.
    pub batch: u32,
    /// Deliveries in flight at once in this process.
    pub concurrency: u32,
    /// How long a claim lasts: a delivery whose dispatcher died is retried after this.
    pub lease_secs: u64,
    /// Pause between rounds that found nothing due, in milliseconds.
    pub poll_ms: u64,
    /// Attempts before a delivery is dead.
    pub max_attempts: u32,
    /// The first retry's delay; each later one doubles, up to `backoff_max_secs`.
    pub backoff_first_secs: u64,
    pub backoff_max_secs: u64,
    /// Events plugins may emit, at any depth, in the chain that one originating event starts.
    pub chain_max_events: u32,
    /// Deliveries those events may fan out to, together.
    pub chain_max_deliveries: u32,
    /// Sustained emissions per minute of one installation for one merchant (or partner).
    pub emit_per_minute: u32,
    /// Emissions one installation may make for one merchant at once before that pace applies.
    pub emit_burst: u32,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PluginsConfig {
    /// Compiled components, by (content hash, engine configuration). Empty: `<data_dir>/plugin-cache`.
    pub cache_dir: PathBuf,
    /// Plugin invocations running at once in this process; more wait for a slot.
    pub max_concurrency: u32,
    /// Use wasmtime's pooling allocator (falls back to on-demand when the address space
    /// cannot be reserved).
    pub pooling: bool,
    /// Traps of one installation within `breaker_window_secs` that suspend it.
    pub breaker_traps: u32,
    pub breaker_window_secs: u64,
    /// How long a tripped installation stays suspended.
    pub breaker_cooldown_secs: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxConfig {
    /// Serve the offline Alipay sandbox under `/sandbox` (what `make run` does).
    pub enabled: bool,
    /// Divides Alipay's notification retry schedule (1 = real timing).
    pub time_scale: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// How long a sign-in session lasts, in hours.
    pub session_ttl_hours: u32,
    /// Mark the session cookie `Secure` (serve over HTTPS, or behind a TLS-terminating proxy).
    pub cookie_secure: bool,
    /// Password hashes computed at once, on blocking threads; 0 means half the cores (at least 1).
    pub hash_threads: u32,
    /// Sign-ins waiting for a hashing thread; one more is refused at once with 429.
    pub hash_queue: u32,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// Largest request body accepted on any route, in bytes.
    pub body_limit: usize,
    /// How long shutdown waits for in-flight requests before giving up, in seconds.
    pub shutdown_grace_secs: u64,
    /// `https` or `http`: the scheme of URLs on partners' domains handed to Alipay (callbacks)
    /// when the request did not arrive on that domain.
    pub public_scheme: String,
    /// Host names (or IP literals) that serve the platform console. No partner can claim them;
    /// a host that is neither one of these nor a partner's domain is answered 404.
    pub console_hosts: Vec<String>,
    /// Connections served at once; further ones wait in the listen backlog.
    pub max_connections: u32,
    /// How long a client may take to send a request's headers (and, on a kept-alive
    /// connection, to start the next request), in seconds.
    pub header_read_timeout_secs: u64,
    /// How long a client may take to send a request's body, in seconds.
    pub body_read_timeout_secs: u64,
    /// Plugin archive uploads read at once (each up to the archive ceiling); more get 429.
    pub max_concurrent_uploads: u32,
    /// Connections one client address may hold at once (0: no per-address cap, for a server
    /// behind a proxy whose address every client shares).
    pub max_connections_per_ip: u32,
    /// How long a write to a client may stay blocked (a client that stops reading), in seconds.
    pub write_timeout_secs: u64,
    /// Request bytes held in memory across all requests being read; past it, 503 at once.
    pub max_buffered_body_bytes: u64,
    /// Largest body of a request that carries no credentials (sign-in, callbacks, member pages).
    pub anonymous_body_limit: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://…` or `postgres://…`; empty means `sqlite://<data_dir>/trellis.db`.
    #[serde(serialize_with = "serialize_redacted_url")]
    pub url: SecretString,
    /// Apply pending migrations when `serve` starts.
    pub auto_migrate: bool,
    pub max_connections: u32,
    /// How long SQLite waits on a locked database before failing, in milliseconds.
    pub busy_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter such as `info` or `info,trellis_engine=debug`.
    pub level: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Multi-line, coloured when the output is a terminal.
    Pretty,
    /// One line per event, no colour.
    Compact,
    /// One JSON object per line, for log shippers.
    Json,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsConfig {
    /// Base64 of 32 random bytes; encrypts merchant keys at rest. Unset: secrets cannot be stored.
    #[serde(serialize_with = "serialize_redacted")]
    pub master_key: Option<SecretString>,
    /// Earlier master keys: still open what they sealed until `trellis secrets rotate` re-seals it.
    #[serde(default, serialize_with = "serialize_redacted_list")]
    pub previous_master_keys: Vec<SecretString>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ThemesConfig {
    /// The folder holding one sub-folder per theme (`default` must exist).
    pub dir: PathBuf,
    /// Re-read templates on every render, for theme development.
    pub reload: bool,
}

/// Built-in defaults, serialised into the lowest figment layer. Kept as a plain struct so that
/// `config show` and the example file can be checked against it.
#[derive(Serialize)]
struct Defaults {
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
    audit: DefaultAudit,
    alipay: DefaultAlipay,
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

const DEFAULTS: Defaults = Defaults {
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

/// The configuration file named by `TRELLIS_CONFIG`, if any. `--config` wins over it.
#[allow(
    clippy::disallowed_methods,
    reason = "this module is the one that reads the environment"
)]
pub fn config_file_from_env() -> Option<PathBuf> {
    std::env::var_os("TRELLIS_CONFIG")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The PostgreSQL URL the test-suite runs its second database leg against, if any.
#[allow(
    clippy::disallowed_methods,
    reason = "this module is the one that reads the environment"
)]
pub fn test_database_url_from_env() -> Option<String> {
    std::env::var("TRELLIS_TEST_DATABASE_URL")
        .ok()
        .filter(|v| !v.is_empty())
}

/// Whether the test-suite should print the engine's logs.
#[allow(
    clippy::disallowed_methods,
    reason = "this module is the one that reads the environment"
)]
pub fn test_log_from_env() -> bool {
    std::env::var_os("TRELLIS_TEST_LOG").is_some()
}

/// Whether tests that compare generated files should rewrite them instead of failing.
#[allow(
    clippy::disallowed_methods,
    reason = "this module is the one that reads the environment"
)]
pub fn bless_from_env() -> bool {
    std::env::var_os("TRELLIS_BLESS").is_some()
}

impl Config {
    /// Loads the layers in order: defaults, `file` (which must exist when named), environment.
    pub fn load(file: Option<&Path>) -> Result<Self, Error> {
        let env = Env::prefixed("TRELLIS_")
            .ignore(NON_KEY_VARIABLES)
            .split("__");
        Self::load_from(file, env)
    }

    /// As [`Config::load`], with the `TRELLIS_*` variables given instead of read from the
    /// process: an application built in-process (the test harness) gets exactly the settings a
    /// `trellis` process started with those variables would.
    pub fn load_with_variables<'a>(
        file: Option<&Path>,
        variables: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, Error> {
        let mut given = Figment::new();
        for (name, value) in variables {
            let Some(key) = name.strip_prefix("TRELLIS_") else {
                continue;
            };
            if NON_KEY_VARIABLES.contains(&key) {
                continue;
            }
            // Parsed as the environment provider parses values: `true`, numbers, `[…]` lists.
            let value: figment::value::Value = match value.parse() {
                Ok(value) => value,
                Err(never) => match never {},
            };
            given = given.merge((key.to_ascii_lowercase().replace("__", "."), value));
        }
        Self::load_from(file, given)
    }

    fn load_from(file: Option<&Path>, variables: impl figment::Provider) -> Result<Self, Error> {
        let mut figment = Figment::from(Serialized::defaults(&DEFAULTS));
        if let Some(file) = file {
            if !file.is_file() {
                return Err(Error::MissingFile(file.to_owned()));
            }
            figment = figment.merge(Toml::file_exact(file));
        }
        figment = figment.merge(variables);
        let mut config: Config = figment.extract().map_err(|e| Error::Invalid(describe(e)))?;
        config.validate()?;
        if config.database.url.expose_secret().trim().is_empty() {
            let path = config.data_dir.join("trellis.db");
            config.database.url = SecretString::from(format!("sqlite://{}", path.display()));
        }
        // Compared with request hosts as `tenancy::parse_host_header` gives them.
        config.http.console_hosts = config
            .http
            .console_hosts
            .iter()
            .filter_map(|h| console_host_name(h))
            .collect();
        if config.plugins.cache_dir.as_os_str().is_empty() {
            config.plugins.cache_dir = config.data_dir.join("plugin-cache");
        }
        Ok(config)
    }

    fn validate(&self) -> Result<(), Error> {
        let invalid = |key: &str, why: &str| Err(Error::Invalid(format!("{key}: {why}")));
        if self.http.body_limit == 0 {
            return invalid("http.body_limit", "must be greater than zero");
        }
        if self.http.public_scheme != "https" && self.http.public_scheme != "http" {
            return invalid("http.public_scheme", "must be https or http");
        }
        if self.http.console_hosts.is_empty() {
            return invalid("http.console_hosts", "name at least one console host");
        }
        for host in &self.http.console_hosts {
            if console_host_name(host).is_none() {
                return invalid(
                    "http.console_hosts",
                    &format!("{host:?} is not a host name or IP address (no port)"),
                );
            }
        }
        if self.http.max_connections == 0 || self.http.max_connections > 1_000_000 {
            return invalid("http.max_connections", "must be 1 to 1000000");
        }
        if self.http.header_read_timeout_secs == 0 || self.http.header_read_timeout_secs > 600 {
            return invalid("http.header_read_timeout_secs", "must be 1 to 600");
        }
        if self.http.body_read_timeout_secs == 0 || self.http.body_read_timeout_secs > 3_600 {
            return invalid("http.body_read_timeout_secs", "must be 1 to 3600");
        }
        if self.http.max_concurrent_uploads == 0 || self.http.max_concurrent_uploads > 1_000 {
            return invalid("http.max_concurrent_uploads", "must be 1 to 1000");
        }
        if self.http.max_connections_per_ip > 1_000_000 {
            return invalid(
                "http.max_connections_per_ip",
                "must be 0 (no cap) to 1000000",
            );
        }
        if self.http.write_timeout_secs == 0 || self.http.write_timeout_secs > 3_600 {
            return invalid("http.write_timeout_secs", "must be 1 to 3600");
        }
        if self.http.max_buffered_body_bytes < 64 * 1024 * 1024
            || self.http.max_buffered_body_bytes > 1 << 40
        {
            return invalid(
                "http.max_buffered_body_bytes",
                "must be 67108864 (64 MiB, two archive uploads) to 1099511627776",
            );
        }
        // Above `body_limit` it changes nothing: the smaller of the two applies.
        if self.http.anonymous_body_limit == 0 || self.http.anonymous_body_limit > 1 << 30 {
            return invalid("http.anonymous_body_limit", "must be 1 to 1073741824");
        }
        if self.auth.hash_threads > 1_024 {
            return invalid("auth.hash_threads", "must be 0 (half the cores) to 1024");
        }
        if self.auth.hash_queue > 100_000 {
            return invalid("auth.hash_queue", "must be 0 to 100000");
        }
        if self.audit.retention_days > 36_500 {
            return invalid("audit.retention_days", "must be 0 (forever) to 36500");
        }
        if !(4 * 1024..=64 * 1024 * 1024).contains(&self.alipay.max_response_bytes) {
            return invalid(
                "alipay.max_response_bytes",
                "must be 4096 (4 KiB) to 67108864 (64 MiB)",
            );
        }
        if self.alipay.custom_gateway_networks.len() > 64 {
            return invalid("alipay.custom_gateway_networks", "name at most 64 networks");
        }
        // Empty would refuse every production merchant in certificate mode: a typo, not a policy.
        if self.alipay.production_root_fingerprints.is_empty() {
            return invalid(
                "alipay.production_root_fingerprints",
                "name at least one root (leave the key out for Alipay's published roots)",
            );
        }
        for fingerprint in &self.alipay.production_root_fingerprints {
            if trellis_alipay::cert::normalize_fingerprint(fingerprint).is_none() {
                return invalid(
                    "alipay.production_root_fingerprints",
                    &format!("{fingerprint:?} is not a SHA-256 fingerprint (64 hex digits)"),
                );
            }
        }
        if self.auth.session_ttl_hours == 0 || self.auth.session_ttl_hours > 24 * 30 {
            return invalid("auth.session_ttl_hours", "must be between 1 and 720");
        }
        if self.plugins.max_concurrency == 0 || self.plugins.max_concurrency > 10_000 {
            return invalid("plugins.max_concurrency", "must be between 1 and 10000");
        }
        if self.events.batch == 0 || self.events.batch > 1_000 {
            return invalid("events.batch", "must be 1 to 1000");
        }
        if self.events.concurrency == 0 {
            return invalid("events.concurrency", "must be greater than zero");
        }
        if self.events.lease_secs == 0 || self.events.lease_secs > 86_400 {
            return invalid("events.lease_secs", "must be 1 to 86400");
        }
        if self.events.max_attempts == 0 || self.events.max_attempts > 100 {
            return invalid("events.max_attempts", "must be 1 to 100");
        }
        if self.events.chain_max_events == 0 || self.events.chain_max_events > 10_000 {
            return invalid("events.chain_max_events", "must be 1 to 10000");
        }
        if self.events.chain_max_deliveries == 0 || self.events.chain_max_deliveries > 100_000 {
            return invalid("events.chain_max_deliveries", "must be 1 to 100000");
        }
        if self.events.emit_per_minute == 0 || self.events.emit_per_minute > 60_000 {
            return invalid("events.emit_per_minute", "must be 1 to 60000");
        }
        // One call may emit up to 10 events (a host limit); a smaller burst would refuse a
        // well-behaved call's emissions however long it waited.
        if self.events.emit_burst < 10 || self.events.emit_burst > 10_000 {
            return invalid("events.emit_burst", "must be 10 to 10000");
        }
        if self.events.backoff_first_secs == 0
            || self.events.backoff_max_secs < self.events.backoff_first_secs
            || self.events.backoff_max_secs > 7 * 86_400
        {
            return invalid(
                "events.backoff_max_secs",
                "backoff_first_secs must be at least 1 and at most backoff_max_secs, itself at most a week",
            );
        }
        if self.plugins.breaker_traps == 0 {
            return invalid("plugins.breaker_traps", "must be greater than zero");
        }
        if self.database.max_connections == 0 {
            return invalid("database.max_connections", "must be greater than zero");
        }
        let url = self.database.url.expose_secret().trim();
        if !url.is_empty() && DatabaseKind::of(url).is_none() {
            // The URL may carry a password, so only its scheme is echoed.
            let scheme = url.split_once(':').map_or("", |(scheme, _)| scheme);
            return invalid(
                "database.url",
                &format!("unsupported scheme {scheme:?}; use sqlite:// or postgres://"),
            );
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return invalid("log.level", &e.to_string());
        }
        if let Some(key) = &self.secrets.master_key
            && decode_master_key(key).is_none()
        {
            return invalid(
                "secrets.master_key",
                "must be the base64 of exactly 32 bytes",
            );
        }
        Ok(())
    }

    pub fn database_kind(&self) -> DatabaseKind {
        DatabaseKind::of(self.database.url.expose_secret()).unwrap_or(DatabaseKind::Sqlite)
    }

    /// The effective configuration as TOML, with every secret replaced by `<redacted>`.
    pub fn redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

/// A console host in the form request hosts are compared in: an IP address as `IpAddr` prints
/// it (IPv6 without brackets), a name lower-cased without a trailing dot. `None` when it is
/// neither (a port, user-info or any other character).
fn console_host_name(raw: &str) -> Option<String> {
    let raw = raw.trim();
    if let Ok(address) = raw.parse::<std::net::IpAddr>() {
        return Some(address.to_string());
    }
    host_name(raw)
}

/// A host name as hosts are compared: letters, digits, `-` and `.` in non-empty labels, at most
/// 253 characters, lower-cased and without a trailing dot. `None` for anything else. Console
/// hosts and request hosts (`tenancy::parse_host_header`) share this one syntax.
pub fn host_name(raw: &str) -> Option<String> {
    let name = raw.strip_suffix('.').unwrap_or(raw);
    let valid = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !name.split('.').any(str::is_empty);
    valid.then(|| name.to_ascii_lowercase())
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pretty => "pretty",
            Self::Compact => "compact",
            Self::Json => "json",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatabaseKind {
    Sqlite,
    Postgres,
}

impl DatabaseKind {
    pub fn of(url: &str) -> Option<Self> {
        let scheme = url.split_once(':')?.0;
        match scheme {
            "sqlite" => Some(Self::Sqlite),
            "postgres" | "postgresql" => Some(Self::Postgres),
            _ => None,
        }
    }
}

impl fmt::Display for DatabaseKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        })
    }
}

fn serialize_redacted_url<S: serde::Serializer>(
    url: &SecretString,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_str(&redact_url(url.expose_secret()))
}

fn serialize_redacted_list<S: serde::Serializer>(
    secrets: &[SecretString],
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    let mut seq = s.serialize_seq(Some(secrets.len()))?;
    for _ in secrets {
        seq.serialize_element("<redacted>")?;
    }
    seq.end()
}

fn serialize_redacted<S: serde::Serializer>(
    secret: &Option<SecretString>,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_str(if secret.is_some() {
        "<redacted>"
    } else {
        "<unset>"
    })
}

/// A database URL safe to print: the password (and any query string, which may hold one) hidden.
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("<redacted>"));
            }
            if parsed.query().is_some_and(|q| q.contains("password")) {
                parsed.set_query(Some("<redacted>"));
            }
            parsed.to_string()
        }
        // Unparseable: show only the scheme rather than risk printing a credential.
        Err(_) => match raw.split_once("://") {
            Some((scheme, _)) => format!("{scheme}://<redacted>"),
            None => "<redacted>".to_owned(),
        },
    }
}

/// The 32-byte master key, or `None` when it is not base64 of exactly 32 bytes.
pub fn decode_master_key(key: &SecretString) -> Option<[u8; 32]> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(key.expose_secret().trim())
        .ok()?;
    bytes.try_into().ok()
}

/// Figment's own message names the key path; keep that and drop any echoed value, which for a
/// secret key could be the secret itself.
fn describe(error: figment::Error) -> String {
    error
        .into_iter()
        .map(|e| {
            let key = if e.path.is_empty() {
                None
            } else {
                Some(e.path.join("."))
            };
            let what = match &e.kind {
                figment::error::Kind::InvalidType(actual, expected) => {
                    format!("expected {expected}, found {}", actual_kind(actual))
                }
                figment::error::Kind::InvalidValue(actual, expected) => {
                    format!("expected {expected}, found {}", actual_kind(actual))
                }
                figment::error::Kind::UnknownField(field, _) => {
                    let key = match &key {
                        Some(parent) => format!("{parent}.{field}"),
                        None => field.clone(),
                    };
                    return format!("{key}: unknown key");
                }
                figment::error::Kind::UnknownVariant(variant, expected) => {
                    format!(
                        "unknown value {variant:?}, expected one of {}",
                        expected.join(", ")
                    )
                }
                figment::error::Kind::MissingField(field) => {
                    let key = match &key {
                        Some(parent) => format!("{parent}.{field}"),
                        None => field.to_string(),
                    };
                    return format!("{key}: missing");
                }
                figment::error::Kind::Message(message) => message.clone(),
                other => other.to_string(),
            };
            let source = e
                .metadata
                .as_ref()
                .map(|m| format!(" (from {})", m.name))
                .unwrap_or_default();
            match key {
                Some(key) => format!("{key}: {what}{source}"),
                None => format!("{what}{source}"),
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn actual_kind(actual: &figment::error::Actual) -> &'static str {
    use figment::error::Actual;
    match actual {
        Actual::Bool(_) => "a boolean",
        Actual::Unsigned(_) | Actual::Signed(_) => "an integer",
        Actual::Float(_) => "a float",
        Actual::Char(_) | Actual::Str(_) => "a string",
        Actual::Bytes(_) => "bytes",
        Actual::Unit => "nothing",
        Actual::Option => "an option",
        Actual::NewtypeStruct => "a newtype",
        Actual::Seq => "a list",
        Actual::Map => "a table",
        Actual::Enum | Actual::UnitVariant | Actual::NewtypeVariant => "an enum",
        Actual::TupleVariant | Actual::StructVariant => "an enum",
        Actual::Other(_) => "another type",
    }
}

#[cfg(test)]
#[allow(
    clippy::result_large_err,
    reason = "figment::Jail's closures return figment's own error type"
)]
mod tests {
    use super::*;

    fn with_jail(f: impl FnOnce(&mut figment::Jail) -> figment::error::Result<()>) {
        figment::Jail::expect_with(f);
    }

    #[test]
    fn defaults_listen_on_loopback_with_sqlite_in_the_data_dir() {
        with_jail(|_| {
            let config = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(config.http.listen.to_string(), "127.0.0.1:8080");
            assert_eq!(config.http.body_limit, 1024 * 1024);
            assert_eq!(
                config.database.url.expose_secret(),
                "sqlite://./data/trellis.db"
            );
            assert_eq!(config.database_kind(), DatabaseKind::Sqlite);
            assert_eq!(config.log.format, LogFormat::Pretty);
            Ok(())
        });
    }

    #[test]
    fn file_beats_default_and_env_beats_file() {
        with_jail(|jail| {
            jail.create_file(
                "trellis.toml",
                r#"
                    data_dir = "/var/lib/trellis"
                    [http]
                    listen = "0.0.0.0:9000"
                    body_limit = 2048
                    [log]
                    format = "json"
                "#,
            )?;
            jail.set_env("TRELLIS_HTTP__LISTEN", "127.0.0.1:9100");
            let config =
                Config::load(Some(Path::new("trellis.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(config.http.listen.port(), 9100, "env beats file");
            assert_eq!(config.http.body_limit, 2048, "file beats default");
            assert_eq!(config.log.format, LogFormat::Json);
            assert_eq!(
                config.database.url.expose_secret(),
                "sqlite:///var/lib/trellis/trellis.db",
                "the default database follows data_dir"
            );
            Ok(())
        });
    }

    #[test]
    fn secrets_never_reach_debug_or_config_show() {
        with_jail(|jail| {
            jail.create_file(
                "trellis.toml",
                r#"
                    [database]
                    url = "postgres://app:file-password@db.internal:5432/trellis"
                "#,
            )?;
            let key = "rxdDeQt/WK1uQUgQy7DkCIKU/VZNEnlqiyU+e660LzQ=";
            jail.set_env("TRELLIS_SECRETS__MASTER_KEY", key);
            let config =
                Config::load(Some(Path::new("trellis.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(config.database_kind(), DatabaseKind::Postgres);
            let debug = format!("{config:?}");
            let shown = config.redacted_toml();
            for text in [&debug, &shown] {
                assert!(!text.contains("file-password"), "{text}");
                assert!(!text.contains(key), "{text}");
            }
            assert!(
                shown.contains("postgres://app:%3Credacted%3E@db.internal:5432/trellis"),
                "{shown}"
            );
            Ok(())
        });
    }

    #[test]
    fn a_bad_value_fails_naming_the_key() {
        with_jail(|jail| {
            jail.set_env("TRELLIS_HTTP__LISTEN", "not-an-address");
            let error = Config::load(None)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(error.contains("http.listen"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn an_unknown_key_is_an_error_not_a_silent_typo() {
        with_jail(|jail| {
            jail.create_file("trellis.toml", "[http]\nlisen = \"127.0.0.1:1\"\n")?;
            let error = Config::load(Some(Path::new("trellis.toml")))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(error.contains("http.lisen"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn a_master_key_of_the_wrong_length_is_refused_without_echoing_it() {
        with_jail(|jail| {
            jail.set_env("TRELLIS_SECRETS__MASTER_KEY", "dG9vLXNob3J0");
            let error = Config::load(None)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(error.contains("secrets.master_key"), "{error}");
            assert!(!error.contains("dG9vLXNob3J0"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn an_unsupported_database_scheme_is_refused_without_echoing_the_url() {
        with_jail(|jail| {
            jail.set_env("TRELLIS_DATABASE__URL", "mysql://root:hunter2@localhost/db");
            let error = Config::load(None)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(error.contains("database.url"), "{error}");
            assert!(!error.contains("hunter2"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn a_named_config_file_that_does_not_exist_is_an_error() {
        with_jail(|_| {
            let error = Config::load(Some(Path::new("missing.toml"))).err();
            assert!(matches!(error, Some(Error::MissingFile(_))));
            Ok(())
        });
    }

    #[test]
    fn custom_alipay_gateways_are_off_by_default_and_answers_capped_at_one_mebibyte() {
        with_jail(|_| {
            let config = Config::load(None).map_err(|e| e.to_string())?;
            assert!(!config.alipay.allow_custom_gateway);
            assert!(config.alipay.custom_gateway_networks.is_empty());
            assert_eq!(config.alipay.max_response_bytes, 1024 * 1024);
            Ok(())
        });
    }

    #[test]
    fn gateway_networks_load_from_the_environment_as_a_list() {
        with_jail(|jail| {
            jail.set_env("TRELLIS_ALIPAY__ALLOW_CUSTOM_GATEWAY", "true");
            jail.set_env(
                "TRELLIS_ALIPAY__CUSTOM_GATEWAY_NETWORKS",
                r#"["127.0.0.0/8", "::1"]"#,
            );
            let config = Config::load(None).map_err(|e| e.to_string())?;
            assert!(config.alipay.allow_custom_gateway);
            let networks: Vec<String> = config
                .alipay
                .custom_gateway_networks
                .iter()
                .map(ToString::to_string)
                .collect();
            assert_eq!(networks, ["127.0.0.0/8", "::1/128"]);
            Ok(())
        });
    }

    #[test]
    fn a_bad_gateway_network_or_response_cap_fails_naming_the_key() {
        for (key, value, named) in [
            (
                "TRELLIS_ALIPAY__CUSTOM_GATEWAY_NETWORKS",
                r#"["10.0.0.0/33"]"#,
                "alipay.custom_gateway_networks",
            ),
            (
                "TRELLIS_ALIPAY__CUSTOM_GATEWAY_NETWORKS",
                r#"["intranet"]"#,
                "alipay.custom_gateway_networks",
            ),
            (
                "TRELLIS_ALIPAY__MAX_RESPONSE_BYTES",
                "0",
                "alipay.max_response_bytes",
            ),
            (
                "TRELLIS_ALIPAY__MAX_RESPONSE_BYTES",
                "1073741824",
                "alipay.max_response_bytes",
            ),
        ] {
            with_jail(|jail| {
                jail.set_env(key, value);
                let error = Config::load(None)
                    .err()
                    .map(|e| e.to_string())
                    .unwrap_or_default();
                assert!(error.contains(named), "{value}: {error}");
                Ok(())
            });
        }
    }

    #[test]
    fn production_alipay_roots_default_to_alipays_published_ones_and_can_be_replaced() {
        with_jail(|jail| {
            let config = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(
                config.alipay.production_root_fingerprints,
                trellis_alipay::cert::ALIPAY_PRODUCTION_ROOT_FINGERPRINTS
            );
            let colons = "84:58:68:02:29:31:57:41:D3:A9:AB:29:9A:D3:57:85:3E:A7:B8:AC:44:24:8D:65:BC:EC:C7:88:69:BE:BD:A7";
            jail.create_file(
                "trellis.toml",
                &format!("[alipay]\nproduction_root_fingerprints = [\"{colons}\"]\n"),
            )?;
            let config =
                Config::load(Some(Path::new("trellis.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(config.alipay.production_root_fingerprints, [colons]);
            Ok(())
        });
    }

    #[test]
    fn a_production_root_fingerprint_that_is_not_one_fails_naming_the_key() {
        for list in ["[\"8458680229\"]", "[]"] {
            with_jail(|jail| {
                jail.create_file(
                    "trellis.toml",
                    &format!("[alipay]\nproduction_root_fingerprints = {list}\n"),
                )?;
                let error = Config::load(Some(Path::new("trellis.toml")))
                    .err()
                    .map(|e| e.to_string())
                    .unwrap_or_default();
                assert!(
                    error.contains("alipay.production_root_fingerprints"),
                    "{list}: {error}"
                );
                Ok(())
            });
        }
    }
}

/// The engine's idea of now. Production reads the system clock; tests inject their own so that
/// expiry and backoff are testable without waiting.
#[derive(Clone)]
pub struct Clock(std::sync::Arc<dyn Fn() -> chrono::DateTime<chrono::Utc> + Send + Sync>);

impl Clock {
    pub fn system() -> Self {
        Self(std::sync::Arc::new(chrono::Utc::now))
    }

    pub fn from_fn(
        now: impl Fn() -> chrono::DateTime<chrono::Utc> + Send + Sync + 'static,
    ) -> Self {
        Self(std::sync::Arc::new(now))
    }

    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        (self.0)()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Clock({})", self.now())
    }
}
