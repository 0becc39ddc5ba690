//! `plugin.toml`: who a plugin is, what it asks for and what it serves.
//!
//! Invariant: a `Manifest` value has passed [`Manifest::parse`], so every field is within the
//! limits below (its console pages are checked against its routes once the routes its code
//! declares are merged in, and again whenever it is read back); what a plugin may do at run time
//! is what its manifest says, narrowed by the grant of the tenant it runs for.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::Error;

pub mod pages;

/// The newest WIT package version this engine implements.
pub const HOST_API_VERSION: semver::Version = semver::Version::new(0, 2, 0);

/// Every WIT package version this engine implements: a plugin built against any of them runs.
pub static HOST_API_VERSIONS: [semver::Version; 2] =
    [semver::Version::new(0, 1, 0), HOST_API_VERSION];

/// The versions this engine implements, for messages: `0.1.0, 0.2.0`.
pub fn host_api_versions() -> String {
    HOST_API_VERSIONS
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// How many plugin routes one manifest may declare it calls.
pub const MAX_CALLS: usize = 32;

/// Methods a plugin can never call through `alipay.call`: credential and token management stay
/// with the engine.
const FORBIDDEN_ALIPAY_METHODS: &[&str] = &[
    "alipay.open.auth.token.app",
    "alipay.open.auth.token.app.query",
    "alipay.open.app.alipaycert.download",
    "alipay.open.auth.app.aes.get",
    "alipay.open.auth.app.aes.set",
];

/// Event kinds only the engine emits (payments happen in the core, not in plugins).
const RESERVED_EVENT_PREFIXES: &[&str] = &["payment.", "refund.", "trade.", "trellis."];

/// Whether only the engine may send events of this kind (`payment.*` and the like).
pub fn is_reserved_event(kind: &str) -> bool {
    RESERVED_EVENT_PREFIXES.iter().any(|p| kind.starts_with(p))
}

/// The ceilings a manifest may request; the engine clamps nothing silently, it refuses.
pub mod ceilings {
    /// Linear memory of one invocation.
    pub const MEMORY_MIB: u32 = 128;
    /// CPU time of one invocation.
    pub const CPU_MS: u32 = 5_000;
    /// Wall time of one invocation, host calls included.
    pub const WALL_MS: u32 = 30_000;
    /// Size of what an invocation returns (a configuration, an HTTP body).
    pub const OUTPUT_KIB: u32 = 4_096;
    /// Keys per kv namespace.
    pub const KV_KEYS: u64 = 10_000_000;
    /// Bytes per kv namespace.
    pub const KV_BYTES: u64 = 4 << 30;
}

/// Reads a schema file named by `config.schema`.
pub type SchemaReader<'a> = &'a dyn Fn(&str) -> Result<String, Error>;

/// A parsed and validated `plugin.toml`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Reverse-DNS, such as `com.trellis.hello`.
    pub id: String,
    /// The plugin's own version (semver).
    pub version: semver::Version,
    /// The `trellis:plugin` versions the plugin works with, such as `^0.1`.
    pub host_api: semver::VersionReq,
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub publisher: String,
    /// Events delivered to `handle-event`.
    #[serde(default)]
    pub subscribe: BTreeSet<String>,
    #[serde(default)]
    pub capabilities: Capabilities,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub config: ConfigSpec,
    #[serde(default)]
    pub limits: Limits,
    /// Strings by locale (`en`, `zh-CN`), each with the same keys.
    #[serde(default)]
    pub i18n: BTreeMap<String, BTreeMap<String, String>>,
    /// Pages in the consoles, described as data (`docs/consoles.md`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pages: Vec<pages::Page>,
}

/// What a plugin asks to use. A tenant's grant is a subset of it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    /// Key-value storage and its quota per tenant.
    #[serde(default)]
    pub kv: Option<KvQuota>,
    /// Alipay methods, exactly.
    #[serde(default)]
    pub alipay: Option<AlipayCapability>,
    /// Templates shipped in the archive's `templates/` that `render` may use.
    #[serde(default)]
    pub templates: BTreeSet<String>,
    /// Event kinds the plugin may emit.
    #[serde(default)]
    pub emit: BTreeSet<String>,
    /// What the plugin may do with the merchant's payments (host-api 0.2).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub payments: BTreeSet<PaymentsRight>,
    /// Routes of other plugins the plugin may call (host-api 0.2).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub calls: Vec<CallsCapability>,
}

impl Capabilities {
    /// Whether nothing a plugin does can leave its invocation (no Alipay call, payment or call
    /// of another plugin), so that running it again is invisible outside the engine.
    pub fn stay_inside(&self) -> bool {
        self.alipay.is_none() && self.payments.is_empty() && self.calls.is_empty()
    }
}

/// One right of the `payments` capability.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum PaymentsRight {
    /// Create dynamic QR-code trades (`alipay.trade.precreate`).
    Precreate,
    /// Create JSAPI trades for a known buyer (`alipay.trade.create`).
    Jsapi,
    /// List the merchant's trades in a time range.
    List,
    /// Refund paid trades.
    Refund,
}

/// Routes of one other plugin that a plugin calls.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CallsCapability {
    /// The target plugin's id.
    pub plugin: String,
    /// Its routes, as `METHOD /pattern` exactly as the target's manifest declares them, such
    /// as `GET /members/by-buyer/{buyer}`.
    pub routes: BTreeSet<String>,
}

impl Capabilities {
    /// Whether the manifest declares a call to `plugin`'s route `method pattern`.
    pub fn calls_route(&self, plugin: &str, method: &str, pattern: &str) -> bool {
        let wanted = format!("{method} {pattern}");
        self.calls
            .iter()
            .any(|c| c.plugin == plugin && c.routes.contains(&wanted))
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KvQuota {
    pub max_keys: u64,
    pub max_bytes: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AlipayCapability {
    pub methods: BTreeSet<String>,
}

/// Who may reach a route.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum Audience {
    /// A public page for the merchant's members (consumers), on the partner's domain.
    Member,
    /// Views for the merchant's store staff, through the admin API: reached at
    /// `/api/v1/stores/{store}/plugins/…` by staff and the tiers above, and at the merchant's
    /// path by the merchant owner and the tiers above.
    Staff,
    /// The merchant owner, through the admin API.
    Merchant,
    /// The merchant's agent, through the admin API.
    Agent,
    /// The partner, through the admin API.
    Partner,
    /// Other plugins of the partner, through `plugins.call` (host-api 0.2) for one merchant;
    /// no person reaches it.
    Plugin,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub method: String,
    /// Such as `/cards/{id}`: literal segments and `{name}` segments.
    pub path: String,
    pub audience: Audience,
    /// An engine callback this `GET`, `member` route answers, such as
    /// `alipay.card-activation` (the member card's activation callback, which the engine
    /// routes to the merchant by Alipay `app_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback: Option<String>,
    /// A `GET`, `member` route the engine answers only for a consumer it identified: `alipay`
    /// sends the visitor through Alipay's silent authorisation for the merchant's app first
    /// and hands the route the buyer's id (`x-trellis-alipay-user-id` or
    /// `x-trellis-alipay-open-id`, by the app's mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identify: Option<Identify>,
}

/// Who identifies a member page's visitor.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Identify {
    /// Alipay's web authorisation (`auth_base`) for the merchant's app.
    Alipay,
}

/// Callbacks the engine receives on a partner's domain and hands to a plugin's route.
pub const CALLBACKS: [&str; 1] = ["alipay.card-activation"];

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConfigSpec {
    /// A JSON Schema: inline, or (in `plugin.toml` only) the name of a JSON file in the plugin
    /// folder, which packing inlines.
    #[serde(default)]
    pub schema: Option<serde_json::Value>,
}

/// Per-invocation limits the plugin asks for; absent fields take the defaults.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub memory_mib: u32,
    pub cpu_ms: u32,
    pub wall_ms: u32,
    pub output_kib: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_mib: 32,
            cpu_ms: 100,
            wall_ms: 2_000,
            output_kib: 256,
        }
    }
}

fn invalid(message: impl Into<String>) -> Error {
    Error::Manifest(message.into())
}

fn is_reverse_dns(id: &str) -> bool {
    let parts: Vec<&str> = id.split('.').collect();
    id.len() <= 100
        && parts.len() >= 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.len() <= 63
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !p.starts_with('-')
                && !p.ends_with('-')
        })
}

pub use crate::events::is_event_kind;

fn is_alipay_method(method: &str) -> bool {
    method.starts_with("alipay.")
        && method.len() <= 100
        && method.split('.').all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
}

/// A template name: a relative path of plain segments, ending in `.hbs`.
pub fn is_template_name(name: &str) -> bool {
    name.ends_with(".hbs") && is_safe_path(&format!("templates/{name}"))
}

impl Manifest {
    /// Parses `plugin.toml` text. `read_schema` resolves `config.schema = "file.json"`; inside an
    /// archive the schema is already inline and no file may be named.
    pub fn parse(text: &str, read_schema: Option<SchemaReader<'_>>) -> Result<Self, Error> {
        let mut raw: toml::Table =
            toml::from_str(text).map_err(|e| invalid(format!("plugin.toml: {}", e.message())))?;
        // A schema named by file is read here and kept as JSON (TOML has no null).
        let mut schema_file = None;
        if let Some(toml::Value::Table(config)) = raw.get_mut("config")
            && let Some(toml::Value::String(_)) = config.get("schema")
            && let Some(toml::Value::String(file)) = config.remove("schema")
        {
            schema_file = Some(file);
        }
        let mut manifest: Manifest = toml::Value::Table(raw)
            .try_into()
            .map_err(|e: toml::de::Error| invalid(format!("plugin.toml: {}", e.message())))?;
        if let Some(file) = schema_file {
            let Some(read) = read_schema else {
                return Err(invalid("config.schema must be inline in a packed manifest"));
            };
            let json: serde_json::Value =
                serde_json::from_str(&read(&file)?).map_err(|e| invalid(format!("{file}: {e}")))?;
            manifest.config.schema = Some(json);
        }
        manifest.validate_own()?;
        Ok(manifest)
    }

    /// Parses the JSON form stored inside an archive and in the database.
    pub fn from_json(text: &str) -> Result<Self, Error> {
        let manifest: Manifest =
            serde_json::from_str(text).map_err(|e| invalid(format!("manifest: {e}")))?;
        manifest.validate()?;
        Ok(manifest)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Every rule the engine holds a manifest to.
    pub fn validate(&self) -> Result<(), Error> {
        self.validate_own()?;
        pages::validate(self)
    }

    /// Every rule but the pages' checks against the routes, which wait until the routes the
    /// code declares are merged in (`declared::merged`).
    fn validate_own(&self) -> Result<(), Error> {
        if !is_reverse_dns(&self.id) {
            return Err(invalid(format!(
                "id {:?} must be reverse-DNS such as com.example.loyalty (lower-case letters, digits, dashes)",
                self.id
            )));
        }
        for (field, value, max) in [
            ("name", &self.name, 80),
            ("publisher", &self.publisher, 80),
            ("description", &self.description, 2_000),
        ] {
            if (field != "description" && value.trim().is_empty()) || value.chars().count() > max {
                return Err(invalid(format!("{field} must be 1 to {max} characters")));
            }
        }
        self.check_host_api()?;
        for kind in self.subscribe.iter().chain(&self.capabilities.emit) {
            if !is_event_kind(kind) {
                return Err(invalid(format!(
                    "event kind {kind:?} must be dotted lower-case words such as payment.succeeded"
                )));
            }
        }
        if let Some(kind) = self
            .capabilities
            .emit
            .iter()
            .find(|k| RESERVED_EVENT_PREFIXES.iter().any(|p| k.starts_with(p)))
        {
            return Err(invalid(format!(
                "{kind} is an engine event; plugins cannot emit it"
            )));
        }
        if let Some(kv) = self.capabilities.kv {
            if kv.max_keys == 0 || kv.max_keys > ceilings::KV_KEYS {
                return Err(invalid(format!(
                    "capabilities.kv.max_keys must be 1 to {}",
                    ceilings::KV_KEYS
                )));
            }
            if kv.max_bytes == 0 || kv.max_bytes > ceilings::KV_BYTES {
                return Err(invalid(format!(
                    "capabilities.kv.max_bytes must be 1 to {}",
                    ceilings::KV_BYTES
                )));
            }
        }
        if let Some(alipay) = &self.capabilities.alipay {
            for method in &alipay.methods {
                if !is_alipay_method(method) {
                    return Err(invalid(format!("{method:?} is not an Alipay method name")));
                }
                if FORBIDDEN_ALIPAY_METHODS.contains(&method.as_str()) {
                    return Err(invalid(format!(
                        "{method} manages credentials and is reserved to the engine"
                    )));
                }
            }
        }
        for name in &self.capabilities.templates {
            if !is_template_name(name) {
                return Err(invalid(format!(
                    "template {name:?} must be a relative .hbs path under templates/"
                )));
            }
        }
        self.validate_calls()?;
        let mut seen = BTreeSet::new();
        let mut callbacks = BTreeSet::new();
        for route in &self.routes {
            if !matches!(
                route.method.as_str(),
                "GET" | "POST" | "PUT" | "PATCH" | "DELETE"
            ) {
                return Err(invalid(format!(
                    "route method {:?} must be GET, POST, PUT, PATCH or DELETE",
                    route.method
                )));
            }
            let shape = route_shape(&route.path).ok_or_else(|| {
                invalid(format!(
                    "route path {:?} must look like /cards/{{id}}",
                    route.path
                ))
            })?;
            if let Some(callback) = &route.callback {
                if !CALLBACKS.contains(&callback.as_str()) {
                    return Err(invalid(format!(
                        "route callback {callback:?} must be one of {}",
                        CALLBACKS.join(", ")
                    )));
                }
                if route.method != "GET" || route.audience != Audience::Member {
                    return Err(invalid(format!(
                        "the {callback} callback must be a GET route for the member audience"
                    )));
                }
                if !callbacks.insert(callback.clone()) {
                    return Err(invalid(format!("callback {callback} is declared twice")));
                }
            }
            if route.identify.is_some()
                && (route.method != "GET" || route.audience != Audience::Member)
            {
                return Err(invalid(format!(
                    "route {} {}: only a GET route for the member audience identifies its visitor",
                    route.method, route.path
                )));
            }
            if !seen.insert((route.method.clone(), shape, route.audience)) {
                return Err(invalid(format!(
                    "route {} {} is declared twice",
                    route.method, route.path
                )));
            }
        }
        if let Some(schema) = &self.config.schema
            && !schema.is_object()
        {
            return Err(invalid("config.schema must be a JSON Schema object"));
        }
        let l = self.limits;
        for (field, value, max) in [
            ("limits.memory_mib", l.memory_mib, ceilings::MEMORY_MIB),
            ("limits.cpu_ms", l.cpu_ms, ceilings::CPU_MS),
            ("limits.wall_ms", l.wall_ms, ceilings::WALL_MS),
            ("limits.output_kib", l.output_kib, ceilings::OUTPUT_KIB),
        ] {
            if value == 0 || value > max {
                return Err(invalid(format!("{field} must be 1 to {max}")));
            }
        }
        if l.wall_ms < l.cpu_ms {
            return Err(invalid("limits.wall_ms must be at least limits.cpu_ms"));
        }
        if !self.i18n.is_empty() {
            for locale in ["en", "zh-CN"] {
                if !self.i18n.contains_key(locale) {
                    return Err(invalid(format!(
                        "i18n must have both en and zh-CN (missing {locale})"
                    )));
                }
            }
            if let Some(other) = self
                .i18n
                .keys()
                .find(|k| !matches!(k.as_str(), "en" | "zh-CN"))
            {
                return Err(invalid(format!(
                    "i18n locale {other:?} is not supported (en, zh-CN)"
                )));
            }
            let en: BTreeSet<_> = self.i18n["en"].keys().collect();
            let zh: BTreeSet<_> = self.i18n["zh-CN"].keys().collect();
            if let Some(key) = en.symmetric_difference(&zh).next() {
                return Err(invalid(format!(
                    "i18n key {key:?} must exist in both en and zh-CN"
                )));
            }
        }
        Ok(())
    }

    /// Refuses a plugin built against a host-api this engine does not provide.
    pub fn check_host_api(&self) -> Result<(), Error> {
        if HOST_API_VERSIONS.iter().any(|v| self.host_api.matches(v)) {
            Ok(())
        } else {
            Err(Error::HostApi {
                wanted: self.host_api.to_string(),
                provided: host_api_versions(),
            })
        }
    }

    fn validate_calls(&self) -> Result<(), Error> {
        let calls = &self.capabilities.calls;
        let routes: usize = calls.iter().map(|c| c.routes.len()).sum();
        if routes > MAX_CALLS {
            return Err(invalid(format!(
                "capabilities.calls may name at most {MAX_CALLS} routes"
            )));
        }
        let mut targets = BTreeSet::new();
        for call in calls {
            if !is_reverse_dns(&call.plugin) {
                return Err(invalid(format!(
                    "capabilities.calls plugin {:?} must be a plugin id such as com.example.loyalty",
                    call.plugin
                )));
            }
            if call.plugin == self.id {
                return Err(invalid("capabilities.calls cannot name the plugin itself"));
            }
            if !targets.insert(&call.plugin) {
                return Err(invalid(format!(
                    "capabilities.calls names {} twice",
                    call.plugin
                )));
            }
            if call.routes.is_empty() {
                return Err(invalid(format!(
                    "capabilities.calls for {} must name its routes",
                    call.plugin
                )));
            }
            for route in &call.routes {
                let well_formed = route.split_once(' ').is_some_and(|(method, path)| {
                    matches!(method, "GET" | "POST" | "PUT" | "PATCH" | "DELETE")
                        && route_shape(path).is_some()
                });
                if !well_formed {
                    return Err(invalid(format!(
                        "capabilities.calls route {route:?} must look like \"GET /members/{{id}}\""
                    )));
                }
            }
        }
        Ok(())
    }

    /// The route matching `method` and `path`, with its parameters.
    pub fn match_route(&self, method: &str, path: &str) -> Option<(&Route, Vec<(String, String)>)> {
        self.routes
            .iter()
            .filter(|r| r.method == method)
            .find_map(|r| match_path(&r.path, path).map(|params| (r, params)))
    }
}

/// The pattern with parameter names erased, for duplicate detection; `None` when malformed.
fn route_shape(pattern: &str) -> Option<String> {
    if !pattern.starts_with('/') || pattern.len() > 200 {
        return None;
    }
    let mut shape = String::new();
    let mut names = BTreeSet::new();
    for segment in pattern.split('/').skip(1) {
        shape.push('/');
        if segment.is_empty() && pattern == "/" {
            break;
        }
        if let Some(name) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            if name.is_empty()
                || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                || !names.insert(name)
            {
                return None;
            }
            shape.push('*');
        } else if !segment.is_empty()
            && segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b))
        {
            shape.push_str(segment);
        } else {
            return None;
        }
    }
    Some(shape)
}

pub fn match_path(pattern: &str, path: &str) -> Option<Vec<(String, String)>> {
    let pattern_segments: Vec<&str> = pattern.trim_end_matches('/').split('/').collect();
    let path_segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    if pattern_segments.len() != path_segments.len() {
        return None;
    }
    let mut params = Vec::new();
    for (p, s) in pattern_segments.iter().zip(&path_segments) {
        if let Some(name) = p.strip_prefix('{').and_then(|x| x.strip_suffix('}')) {
            if s.is_empty() {
                return None;
            }
            params.push((name.to_owned(), (*s).to_owned()));
        } else if p != s {
            return None;
        }
    }
    Some(params)
}

/// What a tenant is allowed of a manifest's capabilities (its package's allowance; not to be
/// confused with `rbac::Grant`, the proof of an authorization); the host
/// checks every capability call against both.
#[derive(Debug, Clone, PartialEq)]
pub struct Allowance {
    pub kv: Option<KvQuota>,
    pub alipay_methods: BTreeSet<String>,
    pub templates: bool,
    pub emit: BTreeSet<String>,
    pub payments: BTreeSet<PaymentsRight>,
    /// Whether `plugins.call` may be used at all (each route is checked against the manifest).
    pub calls: bool,
}

impl Allowance {
    /// Everything the manifest asks for.
    pub fn all(manifest: &Manifest) -> Self {
        let caps = &manifest.capabilities;
        Self {
            kv: caps.kv,
            alipay_methods: caps
                .alipay
                .as_ref()
                .map(|a| a.methods.clone())
                .unwrap_or_default(),
            templates: !caps.templates.is_empty(),
            emit: caps.emit.clone(),
            payments: caps.payments.clone(),
            calls: !caps.calls.is_empty(),
        }
    }

    /// Nothing at all: calls are denied, lifecycle hooks still run.
    pub fn none() -> Self {
        Self {
            kv: None,
            alipay_methods: BTreeSet::new(),
            templates: false,
            emit: BTreeSet::new(),
            payments: BTreeSet::new(),
            calls: false,
        }
    }

    /// This grant narrowed to what the manifest asks for.
    pub fn within(mut self, manifest: &Manifest) -> Self {
        let all = Self::all(manifest);
        self.kv = match (self.kv, all.kv) {
            (Some(a), Some(b)) => Some(KvQuota {
                max_keys: a.max_keys.min(b.max_keys),
                max_bytes: a.max_bytes.min(b.max_bytes),
            }),
            _ => None,
        };
        self.alipay_methods = self
            .alipay_methods
            .intersection(&all.alipay_methods)
            .cloned()
            .collect();
        self.templates &= all.templates;
        self.emit = self.emit.intersection(&all.emit).cloned().collect();
        self.payments = self.payments.intersection(&all.payments).copied().collect();
        self.calls &= all.calls;
        self
    }
}

/// A relative path of plain segments (inside an archive, or a template's name under
/// `templates/`): no `..`, no leading `/`, no backslashes or control
/// characters, at most 200 bytes.
pub fn is_safe_path(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= 200
        && !path.starts_with('/')
        && path.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .chars()
                    .all(|c| !c.is_control() && c != '\\' && c != ':')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELLO: &str = r#"
id = "com.example.hello"
version = "1.2.3"
host_api = "^0.1"
name = "Hello"
publisher = "Example"
subscribe = ["payment.succeeded"]
[capabilities]
kv = { max_keys = 10, max_bytes = 1000 }
alipay = { methods = ["alipay.marketing.card.open"] }
templates = ["page.hbs"]
emit = ["hello.counted"]
[[routes]]
method = "GET"
path = "/cards/{id}"
audience = "member"
[config]
schema = { type = "object" }
"#;

    #[test]
    fn a_complete_manifest_parses() {
        let m = Manifest::parse(HELLO, None).unwrap();
        assert_eq!(m.id, "com.example.hello");
        assert_eq!(m.limits, Limits::default());
        let (route, params) = m.match_route("GET", "/cards/42").unwrap();
        assert_eq!(route.audience, Audience::Member);
        assert_eq!(params, vec![("id".to_owned(), "42".to_owned())]);
        assert!(m.match_route("GET", "/cards").is_none());
        assert!(m.match_route("POST", "/cards/42").is_none());
        let again = Manifest::from_json(&m.to_json()).unwrap();
        assert_eq!(again, m);
        let identifies = HELLO.replace(
            "audience = \"member\"",
            "audience = \"member\"\nidentify = \"alipay\"",
        );
        let m = Manifest::parse(&identifies, None).unwrap();
        assert_eq!(m.routes[0].identify, Some(Identify::Alipay));
        assert_eq!(Manifest::from_json(&m.to_json()).unwrap(), m);
    }

    #[test]
    fn manifests_breaking_a_rule_are_refused_with_the_rule() {
        for (from, to, needle) in [
            ("com.example.hello", "Hello", "reverse-DNS"),
            ("^0.1", "^0.3", "host-api"),
            ("payment.succeeded", "Payment", "event kind"),
            (
                "alipay.marketing.card.open",
                "alipay.open.auth.token.app",
                "reserved",
            ),
            ("page.hbs", "../x.hbs", "template"),
            ("/cards/{id}", "cards", "route path"),
            ("\"GET\"", "\"TRACE\"", "route method"),
            ("max_keys = 10", "max_keys = 0", "max_keys"),
            (
                "audience = \"member\"",
                "audience = \"staff\"\nidentify = \"alipay\"",
                "only a GET route for the member audience identifies",
            ),
            (
                "audience = \"member\"",
                "audience = \"member\"\nidentify = \"wechat\"",
                "unknown variant",
            ),
            (
                "publisher = \"Example\"",
                "publisher = \"Example\"\nsurprise = 1",
                "unknown field",
            ),
        ] {
            let text = HELLO.replacen(from, to, 1);
            let err = Manifest::parse(&text, None).unwrap_err().to_string();
            assert!(err.contains(needle), "{from} → {to}: {err}");
        }
    }

    #[test]
    fn declared_calls_name_other_plugins_routes_exactly() {
        let with = |calls: &str| {
            Manifest::parse(
                &HELLO.replace("[[routes]]", &format!("{calls}\n[[routes]]")),
                None,
            )
        };
        let m = with(
            "payments = [\"precreate\", \"refund\"]\n[[capabilities.calls]]\nplugin = \"com.example.members\"\nroutes = [\"GET /members/{id}\"]",
        )
        .unwrap();
        assert!(
            m.capabilities
                .calls_route("com.example.members", "GET", "/members/{id}")
        );
        assert!(
            !m.capabilities
                .calls_route("com.example.members", "POST", "/members/{id}")
        );
        assert!(m.capabilities.payments.contains(&PaymentsRight::Refund));
        for (calls, needle) in [
            (
                "[[capabilities.calls]]\nplugin = \"com.example.hello\"\nroutes = [\"GET /\"]",
                "itself",
            ),
            (
                "[[capabilities.calls]]\nplugin = \"Members\"\nroutes = [\"GET /\"]",
                "plugin id",
            ),
            (
                "[[capabilities.calls]]\nplugin = \"com.example.members\"\nroutes = [\"/members\"]",
                "must look like",
            ),
            (
                "[[capabilities.calls]]\nplugin = \"com.example.members\"\nroutes = []",
                "must name its routes",
            ),
            ("payments = [\"transfer\"]", "unknown variant"),
        ] {
            let err = with(calls).unwrap_err().to_string();
            assert!(err.contains(needle), "{calls}: {err}");
        }
    }

    #[test]
    fn a_schema_file_is_inlined_only_outside_an_archive() {
        let text = HELLO.replace(
            "schema = { type = \"object\" }",
            "schema = \"config.schema.json\"",
        );
        assert!(Manifest::parse(&text, None).is_err());
        let read = |name: &str| -> Result<String, Error> {
            assert_eq!(name, "config.schema.json");
            Ok(r#"{"type": "object", "properties": {"a": {"type": "integer"}}}"#.into())
        };
        let m = Manifest::parse(&text, Some(&read)).unwrap();
        assert_eq!(
            m.config.schema.unwrap()["properties"]["a"]["type"],
            "integer"
        );
    }

    #[test]
    fn a_grant_never_exceeds_the_manifest() {
        let m = Manifest::parse(HELLO, None).unwrap();
        let wide = Allowance {
            kv: Some(KvQuota {
                max_keys: 1_000_000,
                max_bytes: 1,
            }),
            alipay_methods: [
                "alipay.marketing.card.open".into(),
                "alipay.trade.refund".into(),
            ]
            .into(),
            templates: true,
            emit: ["other.kind".into()].into(),
            payments: [PaymentsRight::Refund].into(),
            calls: true,
        }
        .within(&m);
        assert!(wide.payments.is_empty() && !wide.calls);
        assert_eq!(
            wide.kv,
            Some(KvQuota {
                max_keys: 10,
                max_bytes: 1
            })
        );
        assert_eq!(wide.alipay_methods.len(), 1);
        assert!(wide.emit.is_empty());
    }
}
