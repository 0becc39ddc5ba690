//! The partner's plugin catalog: which plugins a partner installed, at which versions, what it
//! offers its agents, and — for now — finding a merchant's live installation, invoking it and
//! committing what the invocation emitted with what it wrote.
//!
//! Invariant: an installation is one (partner, plugin id) pair with a stable id — its kv data
//! and breaker survive upgrades — and runs exactly its `active_version`; every archive it ever
//! ran is stored (content-addressed) in the database, so any engine process can load it, and
//! nothing reaches a plugin on a merchant's behalf unless the merchant is entitled at that moment
//! (a package's end exactly; an assignment changed through another process within
//! `database.recent_reads_ms`, see `reads`).

/// A partner's rule on archive signatures.
mod policy;
/// Installing, upgrading, rolling back, offering and uninstalling plugins.
mod lifecycle;
/// Merchants' configuration of a plugin, checked by its schema and its `configure` hook.
pub mod configuration;
/// What an invocation commits with its kv writes: its events, a delivery's outcome.
mod finishing;
/// What every invocation reads and only an administrator changes, kept for a moment.
mod reads;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use sea_orm::{DatabaseConnection, EntityTrait, FromQueryResult, Value};
use serde::Serialize;
use serde_json::{Value as Json, json};

use super::archive::Archive;
use super::{Call, Facts, Finishing, Inside, Loaded, Outcome, Request, Runtime, TenantContext};
use crate::config::Clock;
use crate::db::entity::nodes;
use crate::db::sql::{self, Millis};
use crate::events::{self, NewEvent};
use crate::packages;
use crate::rbac::Grant;
use crate::tenancy::{NodeKind, Place};

pub use configuration::check_schema;
pub(super) use finishing::Claim;
pub use policy::Policy;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("plugin {0} is not installed here")]
    NotInstalled(String),
    #[error("the stored archive {0} is missing")]
    MissingArchive(String),
    #[error("version {version} of {plugin} is not installed")]
    NoSuchVersion { plugin: String, version: String },
    #[error("version {version} of {plugin} is already installed with different contents")]
    VersionExists { plugin: String, version: String },
    #[error("{0}")]
    Untrusted(String),
    #[error("{plugin} is in use ({reason}); uninstall with force=true to remove it anyway")]
    InUse { plugin: String, reason: String },
    #[error("there is no earlier version of {0} to roll back to")]
    NoEarlierVersion(String),
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("the plugin refused the configuration: {field}: {message}")]
    ConfigRefused { field: String, message: String },
    #[error("the {hook} hook failed: {source}")]
    Hook {
        hook: &'static str,
        #[source]
        source: super::Error,
    },
    #[error(transparent)]
    Plugin(#[from] super::Error),
    #[error(transparent)]
    Packages(#[from] packages::Error),
    #[error(transparent)]
    Events(#[from] events::Error),
    #[error("database error: {0}")]
    Db(#[from] sea_orm::DbErr),
}

/// A plugin installed by a partner, as the catalog shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Installation {
    pub id: String,
    pub partner_id: String,
    pub plugin_id: String,
    /// The version merchants run.
    pub active_version: String,
    /// Whether the partner's agents may put it in packages.
    pub offered: bool,
    /// `installed` or `uninstalled`.
    pub status: String,
    pub name: String,
    pub description: String,
    pub publisher: String,
    pub subscribe: Vec<String>,
    pub routes: Vec<RouteView>,
    pub versions: Vec<VersionView>,
    pub installed_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// When an operator last lifted the installation's suspensions after repeated failures.
    pub breaker_reset_at: Option<DateTime<Utc>>,
    /// The console pages of the active version (`docs/consoles.md`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pages: Vec<super::manifest::pages::Page>,
    /// The active version's strings by locale, which its pages' titles and labels name.
    #[serde(skip)]
    pub strings: BTreeMap<String, BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RouteView {
    pub method: String,
    pub path: String,
    pub audience: String,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct VersionView {
    pub version: String,
    /// SHA-256 of the archive's `SHA256SUMS`.
    pub digest: String,
    pub installed_at: DateTime<Utc>,
    /// Who installed it; shown to the partner and the platform only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub installed_by: Option<String>,
}

/// What an invocation continues: the depth of the event it handles (0 for none), the chain it
/// belongs to, and the delivery it makes.
pub(super) struct Cause {
    pub depth: i32,
    pub root_id: Option<String>,
    pub claim: Option<Claim>,
    pub via: Via,
}

/// How a call reached the plugin beyond its place: the partner origin it arrived on, the plugin
/// that calls it (a `plugins.call`), the invocation it runs inside, and the event chain it
/// continues (its caller's), so a call cannot start a chain afresh to escape the chain's limits.
#[derive(Debug, Clone, Default)]
pub struct Via {
    pub origin: Option<String>,
    pub caller: Option<String>,
    pub inside: Option<Inside>,
    pub root_id: Option<String>,
}

/// Everything needed to run one installation for one merchant now.
pub struct Live {
    pub installation: Arc<Installation>,
    pub loaded: Arc<Loaded>,
    pub config: Json,
    pub theme: String,
    /// The merchant's package quotas for this plugin (the most generous of its packages).
    pub quotas: packages::Quotas,
}

/// The catalog of this process: the database, the runtime, the clock.
#[derive(Clone, Debug)]
pub struct Catalog {
    pub db: DatabaseConnection,
    pub runtime: Arc<Runtime>,
    pub clock: Clock,
    /// What plugins' emissions may add to the outbox.
    pub event_limits: events::Limits,
    /// Reads kept for `database.recent_reads_ms`; none until [`Self::keeping_reads`].
    reads: reads::Reads,
}

fn invalid(field: &str, message: impl Into<String>) -> Error {
    Error::Invalid {
        field: field.to_owned(),
        message: message.into(),
    }
}

fn partner_of(grant: &Grant) -> Result<String, Error> {
    let target = grant.target();
    match (target.kind, &target.partner_id) {
        (NodeKind::Partner, Some(id)) => Ok(id.clone()),
        _ => Err(invalid("partner_id", "plugins are installed by a partner")),
    }
}

/// An installation as [`COLUMNS`] read it.
#[derive(FromQueryResult)]
struct Row {
    id: String,
    partner_id: String,
    plugin_id: String,
    active_version: String,
    offered: bool,
    status: String,
    installed_at: Millis,
    updated_at: Millis,
    breaker_reset_at: Option<Millis>,
}

const COLUMNS: &str = "id, partner_id, plugin_id, active_version, offered, status, installed_at, updated_at, breaker_reset_at";

/// A version of an installation, with its stored manifest (JSON).
#[derive(FromQueryResult)]
struct VersionRow {
    version: String,
    digest: String,
    manifest: String,
    installed_at: Millis,
    installed_by: String,
}

/// A plugin the partner offers its agents.
#[derive(FromQueryResult)]
struct OfferedRow {
    plugin_id: String,
}

impl Catalog {
    pub fn new(db: DatabaseConnection, runtime: Arc<Runtime>, clock: Clock) -> Self {
        Self {
            db,
            runtime,
            clock,
            event_limits: events::Limits::default(),
            reads: reads::Reads::new(std::time::Duration::ZERO),
        }
    }

    /// The same catalog with the `[events]` bounds on plugins' emissions.
    #[must_use]
    pub fn with_event_limits(mut self, limits: events::Limits) -> Self {
        self.event_limits = limits;
        self
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    async fn row(&self, partner_id: &str, plugin_id: &str) -> Result<Option<Row>, Error> {
        Ok(sql::query(
            &format!(
                "SELECT {COLUMNS} FROM plugin_installations WHERE partner_id = ? AND plugin_id = ?"
            ),
            [partner_id.into(), plugin_id.into()],
        )
        .one(&self.db)
        .await?)
    }

    async fn row_by_id(&self, id: &str) -> Result<Option<Row>, Error> {
        Ok(sql::query(
            &format!("SELECT {COLUMNS} FROM plugin_installations WHERE id = ?"),
            [id.into()],
        )
        .one(&self.db)
        .await?)
    }

    async fn versions(&self, installation_id: &str) -> Result<Vec<VersionView>, Error> {
        Ok(self
            .versions_with_manifests(installation_id)
            .await?
            .into_iter()
            .map(|(v, _)| v)
            .collect())
    }

    /// Every version with its stored manifest (JSON), oldest first.
    async fn versions_with_manifests(
        &self,
        installation_id: &str,
    ) -> Result<Vec<(VersionView, String)>, Error> {
        let rows: Vec<VersionRow> = sql::query(
            "SELECT version, digest, manifest, installed_at, installed_by FROM plugin_versions WHERE installation_id = ?",
            [installation_id.into()],
        )
        .all(&self.db)
        .await?;
        let mut out: Vec<(VersionView, String)> = rows
            .into_iter()
            .map(|r| {
                (
                    VersionView {
                        version: r.version,
                        digest: r.digest,
                        installed_at: r.installed_at.0,
                        installed_by: Some(r.installed_by),
                    },
                    r.manifest,
                )
            })
            .collect();
        out.sort_by_key(|(v, _)| semver_of(&v.version));
        Ok(out)
    }

    /// The loaded plugin for a digest: from this process's runtime, else from the stored
    /// archive (another process may have installed it).
    pub async fn load_digest(&self, digest: &str) -> Result<Arc<Loaded>, Error> {
        if let Some(loaded) = self.runtime.get(digest) {
            return Ok(loaded);
        }
        let bytes = self.archive_bytes(digest).await?;
        let runtime = self.runtime.clone();
        // Reading and linking a stored archive may compile it (first use on this node): keep
        // that off the async workers.
        let loaded = tokio::task::spawn_blocking(move || {
            let archive = Archive::read(&bytes)?;
            runtime.load(&archive)
        })
        .await
        .map_err(|e| super::Error::Engine(format!("loading task failed: {e}")))??;
        Ok(loaded)
    }

    /// The catalog's view of an installation, from the database alone: the active version's
    /// stored manifest says what it is, so a plugin that no longer loads still lists (and can
    /// be uninstalled).
    async fn view(&self, row: Row) -> Result<Installation, Error> {
        let versions = self.versions_with_manifests(&row.id).await?;
        let manifest: Option<super::Manifest> = versions
            .iter()
            .find(|(v, _)| v.version == row.active_version)
            .and_then(|(_, text)| serde_json::from_str(text).ok());
        let versions: Vec<VersionView> = versions.into_iter().map(|(v, _)| v).collect();
        let Some(manifest) = manifest else {
            return Err(Error::MissingArchive(format!(
                "{} {}",
                row.plugin_id, row.active_version
            )));
        };
        Ok(Installation {
            id: row.id,
            partner_id: row.partner_id,
            plugin_id: row.plugin_id,
            active_version: row.active_version,
            offered: row.offered,
            status: row.status,
            name: manifest.name.clone(),
            description: manifest.description.clone(),
            publisher: manifest.publisher.clone(),
            subscribe: manifest.subscribe.iter().cloned().collect(),
            routes: manifest
                .routes
                .iter()
                .map(|r| RouteView {
                    method: r.method.clone(),
                    path: r.path.clone(),
                    audience: serde_json::to_value(r.audience)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default(),
                })
                .collect(),
            versions,
            installed_at: row.installed_at.0,
            updated_at: row.updated_at.0,
            breaker_reset_at: row.breaker_reset_at.map(|at| at.0),
            pages: manifest.pages.clone(),
            strings: manifest.i18n.clone(),
        })
    }

    async fn installed_row(&self, partner_id: &str, plugin_id: &str) -> Result<Row, Error> {
        self.row(partner_id, plugin_id)
            .await?
            .ok_or_else(|| Error::NotInstalled(plugin_id.to_owned()))
    }

    pub(super) async fn loaded_of(
        &self,
        installation: &Installation,
    ) -> Result<Arc<Loaded>, Error> {
        let digest = installation
            .versions
            .iter()
            .find(|v| v.version == installation.active_version)
            .map(|v| v.digest.clone())
            .ok_or_else(|| Error::NotInstalled(installation.plugin_id.clone()))?;
        self.load_digest(&digest).await
    }

    /// What `scope` may see of the catalog: a partner (or the platform) every installation of
    /// its partner(s); an agent what its partner offers; a merchant what it is entitled to now.
    pub async fn list(&self, scope: &Place) -> Result<Vec<Installation>, Error> {
        let mut text = format!("SELECT {COLUMNS} FROM plugin_installations WHERE 1 = 1");
        let mut values: Vec<Value> = Vec::new();
        if let Some(partner) = &scope.partner_id {
            text.push_str(" AND partner_id = ?");
            values.push(partner.clone().into());
        }
        if scope.agent_id.is_some() && scope.merchant_id.is_none() {
            text.push_str(" AND offered = ? AND status = 'installed'");
            values.push(true.into());
        } else if scope.merchant_id.is_some() {
            text.push_str(" AND status = 'installed'");
        }
        text.push_str(" ORDER BY plugin_id");
        let rows: Vec<Row> = sql::query(&text, values).all(&self.db).await?;
        let entitled = match &scope.merchant_id {
            Some(merchant) => Some(packages::entitlements(&self.db, merchant, self.now()).await?),
            None => None,
        };
        let mut out = Vec::new();
        for row in rows {
            if let Some(entitled) = &entitled
                && !entitled.contains_key(&row.plugin_id)
            {
                continue;
            }
            let mut view = self.view(row).await?;
            if scope.agent_id.is_some() {
                for version in &mut view.versions {
                    version.installed_by = None;
                }
            }
            out.push(view);
        }
        Ok(out)
    }

    /// One installation of `partner_id`, visible from `scope` by the rules of [`list`].
    pub async fn get(
        &self,
        scope: &Place,
        partner_id: &str,
        plugin_id: &str,
    ) -> Result<Installation, Error> {
        let list = self
            .list(&Place {
                partner_id: Some(partner_id.to_owned()),
                ..scope.clone()
            })
            .await?;
        list.into_iter()
            .find(|i| i.plugin_id == plugin_id)
            .ok_or_else(|| Error::NotInstalled(plugin_id.to_owned()))
    }

    /// The plugin ids the partner offers to its agents (what packages may include).
    pub async fn offered(&self, partner_id: &str) -> Result<BTreeSet<String>, Error> {
        let rows: Vec<OfferedRow> = sql::query(
            "SELECT plugin_id FROM plugin_installations WHERE partner_id = ? AND offered = ? AND status = 'installed'",
            [partner_id.into(), true.into()],
        )
        .all(&self.db)
        .await?;
        Ok(rows.into_iter().map(|r| r.plugin_id).collect())
    }

    pub async fn theme_of(&self, partner_id: &str) -> Result<String, Error> {
        Ok(nodes::Entity::find_by_id(partner_id)
            .one(&self.db)
            .await?
            .and_then(|n| n.theme)
            .unwrap_or_else(|| crate::themes::DEFAULT_THEME.to_owned()))
    }

    pub(super) async fn stored_config(
        &self,
        installation_id: &str,
        merchant_id: &str,
    ) -> Result<Option<Json>, Error> {
        let config: Option<String> = sql::query(
            "SELECT config FROM plugin_configs WHERE installation_id = ? AND merchant_id = ?",
            [installation_id.into(), merchant_id.into()],
        )
        .scalar(&self.db)
        .await?;
        Ok(config.map(|text| serde_json::from_str(&text).unwrap_or(Json::Null)))
    }

    /// The installation of `plugin_id` for the merchant at `merchant` — entitled now — with its
    /// loaded component, configuration and theme.
    pub async fn live(&self, merchant: &Place, plugin_id: &str) -> Result<Live, Error> {
        let (Some(partner_id), Some(merchant_id)) = (&merchant.partner_id, &merchant.merchant_id)
        else {
            return Err(Error::NotInstalled(plugin_id.to_owned()));
        };
        let installation = self.installation_of(partner_id, plugin_id).await?;
        if installation.status != "installed" {
            return Err(Error::NotInstalled(plugin_id.to_owned()));
        }
        // Entitled now, or the caller learns why not.
        let entitlement = self.entitlement(merchant_id, plugin_id).await?;
        let loaded = self.loaded_of(&installation).await?;
        let config = configuration::with_defaults(
            loaded.manifest.config.schema.as_ref(),
            self.config_kept(&installation.id, merchant_id)
                .await?
                .unwrap_or_else(|| json!({})),
        );
        let theme = self.theme_kept(partner_id).await?;
        Ok(Live {
            installation,
            loaded,
            config,
            theme,
            quotas: entitlement.quotas,
        })
    }

    /// Runs one call of a live installation for a merchant and commits what it wrote with the
    /// events it emitted, one plugin hop deeper than `depth` (the triggering event's). Each
    /// event it emits starts a chain of its own (an HTTP route handles no event).
    pub async fn invoke(
        &self,
        live: &Live,
        place: &Place,
        locale: &str,
        call: Call,
        (depth, via): (i32, Via),
    ) -> Outcome {
        let cause = Cause {
            depth,
            root_id: via.root_id.clone(),
            claim: None,
            via,
        };
        self.invoke_in_chain(live, place, locale, call, cause)
            .await
            .0
    }

    /// [`invoke`](Self::invoke) for what `cause` says: continuing the chain started by its
    /// `root_id`, what the call emits is paced and charged to that chain's budget as it emits (a
    /// refused emission answers the plugin `quota-exceeded`), and given back if the call fails;
    /// a delivery's `claim` is marked delivered in the same commit. Also returns the last
    /// refusal.
    pub(super) async fn invoke_in_chain(
        &self,
        live: &Live,
        place: &Place,
        locale: &str,
        call: Call,
        cause: Cause,
    ) -> (Outcome, Option<events::Refusal>) {
        let Cause {
            depth,
            root_id,
            claim,
            via,
        } = cause;
        let root_id = root_id.as_deref();
        let emitter = events::Emitter::new(
            &live.installation.id,
            place,
            root_id,
            depth + 1,
            self.event_limits,
            self.clock.clone(),
        );
        let recorder = finishing::Recorder {
            catalog: self.clone(),
            place: place.clone(),
            plugin_id: live.installation.plugin_id.clone(),
            installation_id: live.installation.id.clone(),
            depth: depth + 1,
            root_id: root_id.map(str::to_owned),
            emitter: emitter.clone(),
            claim,
        };
        // A reset made through another process reaches this one here, on the next call.
        if let Some(at) = live.installation.breaker_reset_at {
            self.runtime
                .lift_suspensions_before(&live.installation.id, at);
        }
        let outcome = events::EMITTER
            .scope(
                emitter.clone(),
                self.runtime.invoke(
                    &live.loaded,
                    Request {
                        tenant: TenantContext::at(place, &live.installation.id, locale),
                        grant: None,
                        config: live.config.clone(),
                        theme: live.theme.clone(),
                        call,
                        finish: Some(Finishing(Arc::new(recorder))),
                        facts: Facts {
                            origin: via.origin,
                            max_members: live.quotas.max_members,
                            events_per_day: live.quotas.events_per_day,
                            caller: via.caller,
                        },
                        inside: via.inside,
                    },
                ),
            )
            .await;
        (outcome, emitter.refusal())
    }

    /// Records an event in the outbox with a delivery for every installed plugin of the
    /// partner whose active version subscribes to its kind. Entitlement is checked when each
    /// delivery is attempted (a skip is visible in the delivery log).
    pub async fn emit(&self, event: &NewEvent) -> Result<String, Error> {
        let partner_id = event
            .place
            .partner_id
            .clone()
            .ok_or_else(|| invalid("place", "events belong to a partner's tenant"))?;
        let subscribers = self.subscribers(&partner_id, &event.kind).await?;
        Ok(events::publish(
            &self.db,
            event,
            &subscribers,
            None,
            &self.event_limits,
            self.now(),
        )
        .await?)
    }

    /// The partner's installations subscribed to events of `kind` (entitlement is checked when
    /// each delivery is attempted).
    pub async fn subscribers(&self, partner_id: &str, kind: &str) -> Result<Vec<String>, Error> {
        Ok(self
            .subscriptions(partner_id)
            .await?
            .into_iter()
            .filter(|(_, kinds)| kinds.iter().any(|k| k == kind))
            .map(|(id, _)| id)
            .collect())
    }

    /// The partner's installed plugins with the event kinds their active versions subscribe
    /// to, in one read.
    pub async fn subscriptions(
        &self,
        partner_id: &str,
    ) -> Result<Vec<(String, Vec<String>)>, Error> {
        subscriptions_on(&self.db, partner_id).await
    }

    /// The stored archive bytes of a plugin version.
    async fn archive_bytes(&self, digest: &str) -> Result<Vec<u8>, Error> {
        sql::query(
            "SELECT bytes FROM plugin_archives WHERE digest = ?",
            [digest.into()],
        )
        .scalar(&self.db)
        .await?
        .ok_or_else(|| Error::MissingArchive(digest.to_owned()))
    }
}

/// [`Catalog::subscriptions`] on a given connection: inside a transaction that holds SQLite's
/// one writer, a read on another pooled connection could wait for a connection held by a
/// writer waiting for this one.
pub(super) async fn subscriptions_on(
    db: &impl sea_orm::ConnectionTrait,
    partner_id: &str,
) -> Result<Vec<(String, Vec<String>)>, Error> {
    #[derive(FromQueryResult)]
    struct Active {
        id: String,
        manifest: String,
    }
    /// The one field of a stored manifest wanted here.
    #[derive(serde::Deserialize)]
    struct Subscribes {
        #[serde(default)]
        subscribe: Vec<String>,
    }
    let rows: Vec<Active> = sql::query(
        "SELECT i.id, v.manifest FROM plugin_installations i JOIN plugin_versions v \
         ON v.installation_id = i.id AND v.version = i.active_version \
         WHERE i.partner_id = ? AND i.status = 'installed' ORDER BY i.id",
        [partner_id.into()],
    )
    .all(db)
    .await?;
    rows.into_iter()
        .map(|row| {
            let manifest: Subscribes = serde_json::from_str(&row.manifest)
                .map_err(|_| Error::MissingArchive(row.id.clone()))?;
            Ok((row.id, manifest.subscribe))
        })
        .collect()
}

fn semver_of(version: &str) -> semver::Version {
    semver::Version::parse(version).unwrap_or(semver::Version::new(0, 0, 0))
}
