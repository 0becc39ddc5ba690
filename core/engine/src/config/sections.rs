//! The typed shape of each configuration section, with what its values mean: field docs are the
//! reference for every key, and `deny_unknown_fields` turns a typo into an error.
//!
//! Invariant: every secret field serialises through `redact`, so `config show` never prints one.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::redact::{serialize_redacted, serialize_redacted_list, serialize_redacted_url};

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
pub struct PaymentsConfig {
    /// How long a payment with the buyer's code or face waits for the buyer to confirm before it
    /// is cancelled.
    pub pay_wait_secs: u64,
    /// The pause between queries while it waits, in milliseconds.
    pub pay_poll_ms: u64,
    /// Run reconciliation in this process (every `trellis serve` may; each payment is claimed by
    /// one of them per round).
    pub reconcile: bool,
    /// How long an open payment goes without a word from Alipay before it is asked about, and the
    /// pause between rounds.
    pub reconcile_every_secs: u64,
    /// Payments asked about per round.
    pub reconcile_batch: u32,
    /// Alipay notifications recorded and applied per durable transaction at most (group
    /// commit: one flush to disk for every notification waiting at that moment).
    pub ingest_batch: u32,
    /// Verified notifications waiting for that transaction at most; beyond it requests wait.
    pub ingest_queue: u32,
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
    /// How many more times an invocation runs when kv data it read changed before it could
    /// commit (never one that called Alipay); then it fails as a conflict.
    pub conflict_retries: u32,
    /// Namespaces whose last committed kv state this process remembers, for optimistic runs of
    /// plugins that cannot leave their invocation to start from (0: none; no run is optimistic).
    pub kv_recent_namespaces: u32,
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
    /// How long rows that nearly every request of a kind reads (the partner behind a host, a
    /// merchant's Alipay credentials, a partner's first domain) may be served from memory, in
    /// milliseconds; 0 reads them every time. A change made through this engine is seen at
    /// once; one made through another engine process, within this window.
    pub recent_reads_ms: u64,
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

/// The 32-byte master key, or `None` when it is not base64 of exactly 32 bytes.
pub fn decode_master_key(key: &SecretString) -> Option<[u8; 32]> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(key.expose_secret().trim())
        .ok()?;
    bytes.try_into().ok()
}
