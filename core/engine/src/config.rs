//! Process configuration: built-in defaults, then `trellis.toml`, then `TRELLIS_*` environment
//! variables (`__` separates nested keys), extracted once into a typed [`Config`].
//!
//! Invariant: this is the only module that reads the environment, and no secret it holds
//! (`database.url` passwords, `secrets.master_key`) can reach `Debug`, a log line or an error.

use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

mod clock;
mod defaults;
mod figment_errors;
mod hosts;
mod redact;
mod sections;

pub use clock::Clock;
use defaults::DEFAULTS;
use figment_errors::describe;
use hosts::console_host_name;
pub use hosts::host_name;
pub use redact::redact_url;
pub use sections::{
    AlipayConfig, AuditConfig, AuthConfig, DatabaseConfig, DatabaseKind, EventsConfig, HttpConfig,
    LogConfig, LogFormat, PaymentsConfig, PluginsConfig, SandboxConfig, SecretsConfig,
    ThemesConfig, decode_master_key,
};

/// Environment variables with the `TRELLIS_` prefix that are not configuration keys.
const NON_KEY_VARIABLES: &[&str] = &[
    "CONFIG",
    "TEST_DATABASE_URL",
    "TEST_LOG",
    "TEST_EVENTS",
    "TEST_REQUIRE_PYTHON",
    "TEST_REQUIRE_BROWSER",
    "TEST_SCREENSHOTS",
    "BLESS",
];

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
    pub payments: PaymentsConfig,
    pub audit: AuditConfig,
    pub alipay: AlipayConfig,
}

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

/// Whether the test suite must run its Python plugin test (`TRELLIS_TEST_REQUIRE_PYTHON`, set by
/// CI) instead of skipping it where componentize-py is missing.
#[allow(
    clippy::disallowed_methods,
    reason = "this module is the one that reads the environment"
)]
pub fn test_requires_python() -> bool {
    std::env::var_os("TRELLIS_TEST_REQUIRE_PYTHON").is_some_and(|v| !v.is_empty())
}

/// Whether the test suite must run its browser test (`TRELLIS_TEST_REQUIRE_BROWSER`, set by
/// CI) rather than skip it on a machine without Chromium or Playwright.
#[allow(
    clippy::disallowed_methods,
    reason = "this module is the one that reads the environment"
)]
pub fn test_requires_browser() -> bool {
    std::env::var_os("TRELLIS_TEST_REQUIRE_BROWSER").is_some_and(|v| !v.is_empty())
}

/// Where the browser test keeps its screenshots (`TRELLIS_TEST_SCREENSHOTS`): set it to
/// `docs/screenshots` to refresh the committed ones.
#[allow(
    clippy::disallowed_methods,
    reason = "this module is the one that reads the environment"
)]
pub fn test_screenshots_dir() -> Option<std::path::PathBuf> {
    std::env::var_os("TRELLIS_TEST_SCREENSHOTS")
        .filter(|v| !v.is_empty())
        .map(std::path::PathBuf::from)
}

/// How many events the test-suite's two-engine delivery test queues (`TRELLIS_TEST_EVENTS`), if
/// set to a number: its full scale is run by hand.
#[allow(
    clippy::disallowed_methods,
    reason = "this module is the one that reads the environment"
)]
pub fn test_events_from_env() -> Option<usize> {
    std::env::var("TRELLIS_TEST_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
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
        if !(1..=4_096).contains(&self.payments.ingest_batch) {
            return invalid("payments.ingest_batch", "must be 1 to 4096");
        }
        if !(1..=1_000_000).contains(&self.payments.ingest_queue) {
            return invalid("payments.ingest_queue", "must be 1 to 1000000");
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
        if self.plugins.conflict_retries > 20 {
            return invalid("plugins.conflict_retries", "must be 0 to 20");
        }
        if self.plugins.kv_recent_namespaces > 100_000 {
            return invalid("plugins.kv_recent_namespaces", "must be 0 to 100000");
        }
        if self.database.recent_reads_ms > 60_000 {
            return invalid("database.recent_reads_ms", "must be 0 to 60000");
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
