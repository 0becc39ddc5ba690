//! The partner's plugin catalog and the plugins' life in the platform: installing and
//! upgrading archives, offering them to agents, per-merchant configuration, entitlement-checked
//! invocations, and emitting events into the outbox.
//!
//! Invariant: an installation is one (partner, plugin id) pair with a stable id — its kv data
//! and breaker survive upgrades — and runs exactly its `active_version`; every archive it ever
//! ran is stored (content-addressed) in the database, so any engine process can load it, and
//! nothing reaches a plugin on a merchant's behalf unless the merchant is entitled at that moment.

use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, QueryResult, Value};
use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};
use uuid::Uuid;

use super::archive::{Archive, SignatureStatus};
use super::{Call, Event, Loaded, Outcome, Output, Request, Runtime, TenantContext};
use crate::config::Clock;
use crate::db::entity::nodes;
use crate::db::{from_millis, millis, statement};
use crate::events::{self, NewEvent};
use crate::packages;
use crate::rbac::Grant;
use crate::tenancy::{NodeKind, Place};

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

/// A partner's rule for archives: whether they must be signed, and by whom.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default)]
    pub require_signature: bool,
    /// Publisher keys (`ed25519:<base64>`) whose signatures the partner accepts.
    #[serde(default)]
    pub trusted_keys: Vec<String>,
}

/// Everything needed to run one installation for one merchant now.
pub struct Live {
    pub installation: Installation,
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
}

fn backend(db: &impl ConnectionTrait) -> DbBackend {
    db.get_database_backend()
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

struct Row {
    id: String,
    partner_id: String,
    plugin_id: String,
    active_version: String,
    offered: bool,
    status: String,
    installed_at: i64,
    updated_at: i64,
}

fn row_of(r: &QueryResult) -> Result<Row, sea_orm::DbErr> {
    Ok(Row {
        id: r.try_get("", "id")?,
        partner_id: r.try_get("", "partner_id")?,
        plugin_id: r.try_get("", "plugin_id")?,
        active_version: r.try_get("", "active_version")?,
        offered: r.try_get("", "offered")?,
        status: r.try_get("", "status")?,
        installed_at: r.try_get("", "installed_at")?,
        updated_at: r.try_get("", "updated_at")?,
    })
}

const COLUMNS: &str =
    "id, partner_id, plugin_id, active_version, offered, status, installed_at, updated_at";

impl Catalog {
    pub fn new(db: DatabaseConnection, runtime: Arc<Runtime>, clock: Clock) -> Self {
        Self {
            db,
            runtime,
            clock,
            event_limits: events::Limits::default(),
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
        let row = self
            .db
            .query_one_raw(statement(
                backend(&self.db),
                &format!("SELECT {COLUMNS} FROM plugin_installations WHERE partner_id = ? AND plugin_id = ?"),
                vec![partner_id.into(), plugin_id.into()],
            ))
            .await?;
        Ok(row.as_ref().map(row_of).transpose()?)
    }

    async fn row_by_id(&self, id: &str) -> Result<Option<Row>, Error> {
        let row = self
            .db
            .query_one_raw(statement(
                backend(&self.db),
                &format!("SELECT {COLUMNS} FROM plugin_installations WHERE id = ?"),
                vec![id.into()],
            ))
            .await?;
        Ok(row.as_ref().map(row_of).transpose()?)
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
        let rows = self
            .db
            .query_all_raw(statement(
                backend(&self.db),
                "SELECT version, digest, manifest, installed_at, installed_by FROM plugin_versions WHERE installation_id = ?",
                vec![installation_id.into()],
            ))
            .await?;
        let mut out = rows
            .iter()
            .map(|r| {
                Ok((
                    VersionView {
                        version: r.try_get("", "version")?,
                        digest: r.try_get("", "digest")?,
                        installed_at: from_millis(r.try_get("", "installed_at")?),
                        installed_by: Some(r.try_get("", "installed_by")?),
                    },
                    r.try_get::<String>("", "manifest")?,
                ))
            })
            .collect::<Result<Vec<_>, sea_orm::DbErr>>()?;
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
            installed_at: from_millis(row.installed_at),
            updated_at: from_millis(row.updated_at),
        })
    }

    /// The partner's policy on signatures.
    pub async fn policy(&self, partner_id: &str) -> Result<Policy, Error> {
        let row = self
            .db
            .query_one_raw(statement(
                backend(&self.db),
                "SELECT require_signature, trusted_keys FROM plugin_policies WHERE partner_id = ?",
                vec![partner_id.into()],
            ))
            .await?;
        let Some(row) = row else {
            return Ok(Policy::default());
        };
        let keys: String = row.try_get("", "trusted_keys")?;
        Ok(Policy {
            require_signature: row.try_get("", "require_signature")?,
            trusted_keys: serde_json::from_str(&keys).unwrap_or_default(),
        })
    }

    pub async fn set_policy(&self, grant: &Grant, mut policy: Policy) -> Result<Policy, Error> {
        let partner_id = partner_of(grant)?;
        for key in &mut policy.trusted_keys {
            *key = key.trim().to_owned();
            super::archive::parse_public_key(key)
                .map_err(|e| invalid("trusted_keys", e.to_string()))?;
        }
        policy.trusted_keys.sort();
        policy.trusted_keys.dedup();
        if policy.require_signature && policy.trusted_keys.is_empty() {
            return Err(invalid(
                "trusted_keys",
                "requiring signatures needs at least one trusted publisher key",
            ));
        }
        let keys = serde_json::to_string(&policy.trusted_keys).unwrap_or_else(|_| "[]".into());
        let now = millis(self.now());
        self.db
            .execute_raw(statement(
                backend(&self.db),
                "INSERT INTO plugin_policies (partner_id, require_signature, trusted_keys, updated_at) VALUES (?, ?, ?, ?) \
                 ON CONFLICT (partner_id) DO UPDATE SET require_signature = excluded.require_signature, \
                 trusted_keys = excluded.trusted_keys, updated_at = excluded.updated_at",
                vec![partner_id.into(), policy.require_signature.into(), keys.into(), now.into()],
            ))
            .await?;
        Ok(policy)
    }

    /// Installs an archive for the grant's partner: a new plugin, or a new version of one it
    /// has. The archive is checked (contents, signature policy, host-api, imports against the
    /// manifest), compiled into the cache, and its `install` hook run with the previous version
    /// before anything is stored. A new version becomes active only when `activate` is true
    /// (the first version always is).
    pub async fn install(
        &self,
        grant: &Grant,
        bytes: &[u8],
        activate: bool,
    ) -> Result<Installation, Error> {
        let partner_id = partner_of(grant)?;
        let bytes_owned = bytes.to_vec();
        let archive = tokio::task::spawn_blocking(move || Archive::read(&bytes_owned))
            .await
            .map_err(|e| super::Error::Engine(format!("reading task failed: {e}")))??;
        let policy = self.policy(&partner_id).await?;
        if policy.require_signature {
            match &archive.signature {
                SignatureStatus::Valid { public_key }
                    if policy.trusted_keys.iter().any(|k| k == public_key) => {}
                SignatureStatus::Valid { public_key } => {
                    return Err(Error::Untrusted(format!(
                        "the archive is signed by {public_key}, which this partner does not trust"
                    )));
                }
                SignatureStatus::Unsigned => {
                    return Err(Error::Untrusted(
                        "this partner only installs signed plugins; sign the archive with `trellis plugin sign`".into(),
                    ));
                }
            }
        }
        let runtime = self.runtime.clone();
        let archive = Arc::new(archive);
        let for_load = archive.clone();
        let loaded = tokio::task::spawn_blocking(move || runtime.load(&for_load))
            .await
            .map_err(|e| super::Error::Engine(format!("loading task failed: {e}")))??;
        let plugin_id = archive.manifest.id.clone();
        let version = archive.manifest.version.to_string();
        if version.len() > 64 {
            return Err(invalid(
                "version",
                "a plugin version is at most 64 characters",
            ));
        }
        let manifest_json = serde_json::to_string(&archive.manifest)
            .map_err(|e| invalid("manifest", e.to_string()))?;
        let existing = self.row(&partner_id, &plugin_id).await?;
        let mut previous = None;
        if let Some(row) = &existing {
            let versions = self.versions(&row.id).await?;
            if let Some(same) = versions.iter().find(|v| v.version == version) {
                if same.digest != archive.digest {
                    return Err(Error::VersionExists {
                        plugin: plugin_id,
                        version,
                    });
                }
                // The same archive again: installing is idempotent (it may revive an
                // uninstalled plugin).
                if row.status != "installed" {
                    self.set_column(&row.id, "status", "installed".into())
                        .await?;
                }
                let row = self
                    .row_by_id(&row.id)
                    .await?
                    .ok_or_else(|| Error::NotInstalled(plugin_id.clone()))?;
                return self.view(row).await;
            }
            previous = Some(row.active_version.clone());
        }
        let installation_id = existing
            .as_ref()
            .map_or_else(|| Uuid::now_v7().to_string(), |r| r.id.clone());
        let partner_place = Place::of_partner(&partner_id);
        let theme = self.theme_of(&partner_id).await?;
        let outcome = self
            .runtime
            .invoke(
                &loaded,
                Request {
                    tenant: TenantContext::at(&partner_place, &installation_id, "zh-CN"),
                    grant: None,
                    config: json!({}),
                    theme,
                    call: Call::Install {
                        previous_version: previous.clone(),
                    },
                },
            )
            .await;
        if let Err(source) = outcome.result {
            return Err(Error::Hook {
                hook: "install",
                source,
            });
        }
        let now = millis(self.now());
        let by = grant.actor().label.clone();
        let txn = crate::db::begin_write(&self.db).await?;
        let stored = txn
            .query_one_raw(statement(
                backend(&txn),
                "SELECT digest FROM plugin_archives WHERE digest = ?",
                vec![archive.digest.clone().into()],
            ))
            .await?;
        if stored.is_none() {
            txn.execute_raw(statement(
                backend(&txn),
                "INSERT INTO plugin_archives (digest, plugin_id, version, bytes, size, uploaded_at) VALUES (?, ?, ?, ?, ?, ?)",
                vec![
                    archive.digest.clone().into(),
                    plugin_id.clone().into(),
                    version.clone().into(),
                    bytes.to_vec().into(),
                    i64::try_from(bytes.len()).unwrap_or(i64::MAX).into(),
                    now.into(),
                ],
            ))
            .await?;
        }
        match &existing {
            None => {
                txn.execute_raw(statement(
                    backend(&txn),
                    "INSERT INTO plugin_installations (id, partner_id, plugin_id, active_version, offered, status, installed_at, updated_at) \
                     VALUES (?, ?, ?, ?, ?, 'installed', ?, ?)",
                    vec![
                        installation_id.clone().into(),
                        partner_id.clone().into(),
                        plugin_id.clone().into(),
                        version.clone().into(),
                        false.into(),
                        now.into(),
                        now.into(),
                    ],
                ))
                .await?;
            }
            Some(row) => {
                let active = if activate {
                    version.clone()
                } else {
                    row.active_version.clone()
                };
                txn.execute_raw(statement(
                    backend(&txn),
                    "UPDATE plugin_installations SET active_version = ?, status = 'installed', updated_at = ? WHERE id = ?",
                    vec![active.into(), now.into(), row.id.clone().into()],
                ))
                .await?;
            }
        }
        txn.execute_raw(statement(
            backend(&txn),
            "INSERT INTO plugin_versions (installation_id, version, digest, manifest, installed_at, installed_by) VALUES (?, ?, ?, ?, ?, ?)",
            vec![
                installation_id.clone().into(),
                version.into(),
                archive.digest.clone().into(),
                manifest_json.into(),
                now.into(),
                by.into(),
            ],
        ))
        .await?;
        txn.commit().await?;
        let row = self
            .row_by_id(&installation_id)
            .await?
            .ok_or_else(|| Error::NotInstalled(plugin_id))?;
        self.view(row).await
    }

    /// Sets one column of an installation (a name from this module, never from input).
    async fn set_column(&self, id: &str, column: &'static str, value: Value) -> Result<(), Error> {
        self.db
            .execute_raw(statement(
                backend(&self.db),
                &format!(
                    "UPDATE plugin_installations SET {column} = ?, updated_at = ? WHERE id = ?"
                ),
                vec![value, millis(self.now()).into(), id.into()],
            ))
            .await?;
        Ok(())
    }

    async fn installed_row(&self, partner_id: &str, plugin_id: &str) -> Result<Row, Error> {
        self.row(partner_id, plugin_id)
            .await?
            .ok_or_else(|| Error::NotInstalled(plugin_id.to_owned()))
    }

    /// Moves every merchant of the partner to `version` (an upgrade when newer, a rollback when
    /// older).
    pub async fn activate(
        &self,
        grant: &Grant,
        plugin_id: &str,
        version: &str,
    ) -> Result<Installation, Error> {
        let partner_id = partner_of(grant)?;
        let row = self.installed_row(&partner_id, plugin_id).await?;
        let versions = self.versions(&row.id).await?;
        let target = versions
            .iter()
            .find(|v| v.version == version)
            .ok_or_else(|| Error::NoSuchVersion {
                plugin: plugin_id.to_owned(),
                version: version.to_owned(),
            })?;
        // Loadable before anyone is moved onto it.
        self.load_digest(&target.digest).await?;
        self.set_column(&row.id, "active_version", version.into())
            .await?;
        let row = self.installed_row(&partner_id, plugin_id).await?;
        self.view(row).await
    }

    /// Activates the newest installed version older than the active one.
    pub async fn rollback(&self, grant: &Grant, plugin_id: &str) -> Result<Installation, Error> {
        let partner_id = partner_of(grant)?;
        let row = self.installed_row(&partner_id, plugin_id).await?;
        let active = semver_of(&row.active_version);
        let versions = self.versions(&row.id).await?;
        let earlier = versions
            .iter()
            .rev()
            .find(|v| semver_of(&v.version) < active)
            .ok_or_else(|| Error::NoEarlierVersion(plugin_id.to_owned()))?;
        let version = earlier.version.clone();
        self.activate(grant, plugin_id, &version).await
    }

    /// Whether the partner's agents may put the plugin in packages.
    pub async fn offer(
        &self,
        grant: &Grant,
        plugin_id: &str,
        offered: bool,
    ) -> Result<Installation, Error> {
        let partner_id = partner_of(grant)?;
        let row = self.installed_row(&partner_id, plugin_id).await?;
        if offered && row.status != "installed" {
            return Err(Error::NotInstalled(plugin_id.to_owned()));
        }
        self.set_column(&row.id, "offered", offered.into()).await?;
        let row = self.installed_row(&partner_id, plugin_id).await?;
        self.view(row).await
    }

    /// Uninstalls: refused while an active assignment includes the plugin, unless `force`.
    /// The `uninstall` hook runs (its failure is logged, not fatal); the plugin's data and
    /// archives are kept so reinstalling restores it.
    pub async fn uninstall(
        &self,
        grant: &Grant,
        plugin_id: &str,
        force: bool,
    ) -> Result<Installation, Error> {
        let partner_id = partner_of(grant)?;
        let row = self.installed_row(&partner_id, plugin_id).await?;
        if !force
            && let Some(reason) =
                packages::plugin_in_use(&self.db, &partner_id, plugin_id, self.now()).await?
        {
            return Err(Error::InUse {
                plugin: plugin_id.to_owned(),
                reason,
            });
        }

        let installation = self.view(row).await?;
        self.uninstall_hook(&installation, &partner_id).await;
        self.set_column(&installation.id, "offered", false.into())
            .await?;
        self.set_column(&installation.id, "status", "uninstalled".into())
            .await?;
        let row = self.installed_row(&partner_id, plugin_id).await?;
        self.view(row).await
    }

    /// Runs the `uninstall` hook; its failure (or a plugin that no longer loads) is logged, not
    /// fatal: the partner must always be able to remove a plugin.
    async fn uninstall_hook(&self, installation: &Installation, partner_id: &str) {
        let loaded = match self.loaded_of(installation).await {
            Ok(l) => l,
            Err(error) => {
                tracing::warn!(plugin = %installation.plugin_id, %error, "cannot load the plugin for its uninstall hook; uninstalling anyway");
                return;
            }
        };
        let partner_place = Place::of_partner(partner_id);
        let theme = self.theme_of(partner_id).await.unwrap_or_default();
        let outcome = self
            .runtime
            .invoke(
                &loaded,
                Request {
                    tenant: TenantContext::at(&partner_place, &installation.id, "zh-CN"),
                    grant: None,
                    config: json!({}),
                    theme,
                    call: Call::Uninstall,
                },
            )
            .await;
        if let Err(error) = &outcome.result {
            tracing::warn!(plugin = %installation.plugin_id, %error, "uninstall hook failed; uninstalling anyway");
        }
    }

    async fn loaded_of(&self, installation: &Installation) -> Result<Arc<Loaded>, Error> {
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
        let mut sql = format!("SELECT {COLUMNS} FROM plugin_installations WHERE 1 = 1");
        let mut values: Vec<Value> = Vec::new();
        if let Some(partner) = &scope.partner_id {
            sql.push_str(" AND partner_id = ?");
            values.push(partner.clone().into());
        }
        if scope.agent_id.is_some() && scope.merchant_id.is_none() {
            sql.push_str(" AND offered = ? AND status = 'installed'");
            values.push(true.into());
        } else if scope.merchant_id.is_some() {
            sql.push_str(" AND status = 'installed'");
        }
        sql.push_str(" ORDER BY plugin_id");
        let rows = self
            .db
            .query_all_raw(statement(backend(&self.db), &sql, values))
            .await?;
        let entitled = match &scope.merchant_id {
            Some(merchant) => Some(packages::entitlements(&self.db, merchant, self.now()).await?),
            None => None,
        };
        let mut out = Vec::new();
        for row in rows {
            let row = row_of(&row)?;
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
        let rows = self
            .db
            .query_all_raw(statement(
                backend(&self.db),
                "SELECT plugin_id FROM plugin_installations WHERE partner_id = ? AND offered = ? AND status = 'installed'",
                vec![partner_id.into(), true.into()],
            ))
            .await?;
        rows.iter()
            .map(|r| r.try_get::<String>("", "plugin_id").map_err(Error::from))
            .collect()
    }

    pub async fn theme_of(&self, partner_id: &str) -> Result<String, Error> {
        Ok(nodes::Entity::find_by_id(partner_id)
            .one(&self.db)
            .await?
            .and_then(|n| n.theme)
            .unwrap_or_else(|| crate::themes::DEFAULT_THEME.to_owned()))
    }

    async fn stored_config(
        &self,
        installation_id: &str,
        merchant_id: &str,
    ) -> Result<Option<Json>, Error> {
        let row = self
            .db
            .query_one_raw(statement(
                backend(&self.db),
                "SELECT config FROM plugin_configs WHERE installation_id = ? AND merchant_id = ?",
                vec![installation_id.into(), merchant_id.into()],
            ))
            .await?;
        Ok(match row {
            Some(row) => Some(
                serde_json::from_str(&row.try_get::<String>("", "config")?).unwrap_or(Json::Null),
            ),
            None => None,
        })
    }

    /// The installation of `plugin_id` for the merchant at `merchant` — entitled now — with its
    /// loaded component, configuration and theme.
    pub async fn live(&self, merchant: &Place, plugin_id: &str) -> Result<Live, Error> {
        let (Some(partner_id), Some(merchant_id)) = (&merchant.partner_id, &merchant.merchant_id)
        else {
            return Err(Error::NotInstalled(plugin_id.to_owned()));
        };
        let row = self.installed_row(partner_id, plugin_id).await?;
        if row.status != "installed" {
            return Err(Error::NotInstalled(plugin_id.to_owned()));
        }
        // Entitled now, or the caller learns why not.
        let entitlement =
            packages::entitlement(&self.db, merchant_id, plugin_id, self.now()).await?;
        let installation = self.view(row).await?;
        let loaded = self.loaded_of(&installation).await?;
        let config = self
            .stored_config(&installation.id, merchant_id)
            .await?
            .unwrap_or_else(|| json!({}));
        let theme = self.theme_of(partner_id).await?;
        Ok(Live {
            installation,
            loaded,
            config,
            theme,
            quotas: entitlement.quotas,
        })
    }

    /// Runs one call of a live installation for a merchant, then records the events it
    /// emitted in the outbox, one plugin hop deeper than `depth` (the triggering event's).
    /// Each event it emits starts a chain of its own (an HTTP route handles no event).
    pub async fn invoke(
        &self,
        live: &Live,
        place: &Place,
        locale: &str,
        call: Call,
        depth: i32,
    ) -> Outcome {
        self.invoke_in_chain(live, place, locale, call, depth, None)
            .await
            .0
    }

    /// [`invoke`](Self::invoke) continuing the chain started by `root_id`: what the call emits
    /// is paced and charged to that chain's budget as it emits (a refused emission answers the
    /// plugin `quota-exceeded`), and given back if the call fails. Also returns the last refusal.
    async fn invoke_in_chain(
        &self,
        live: &Live,
        place: &Place,
        locale: &str,
        call: Call,
        depth: i32,
        root_id: Option<&str>,
    ) -> (Outcome, Option<events::Refusal>) {
        let emitter = events::Emitter::new(
            &live.installation.id,
            place,
            root_id,
            depth + 1,
            self.event_limits,
            self.clock.clone(),
        );
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
                    },
                ),
            )
            .await;
        if outcome.result.is_ok() {
            for emitted in &outcome.emitted {
                let event = NewEvent {
                    kind: emitted.kind.clone(),
                    place: place.clone(),
                    payload: emitted.payload.clone(),
                    source: format!("plugin:{}", live.installation.plugin_id),
                    occurred_at: self.now(),
                    depth: depth + 1,
                };
                match self.emit_in_chain(&event, root_id).await {
                    Ok(_) => {}
                    Err(error @ Error::Events(events::Error::OverBudget { .. })) => {
                        tracing::warn!(%error, kind = %event.kind, installation = %live.installation.id, "an emitted event was not recorded");
                    }
                    Err(error) => {
                        tracing::error!(%error, kind = %event.kind, installation = %live.installation.id, "could not record an emitted event");
                    }
                }
            }
        } else if let Err(error) = events::refund(&self.db, &emitter).await {
            tracing::warn!(%error, installation = %live.installation.id, "could not give back what a failed call's emissions were charged");
        }
        (outcome, emitter.refusal())
    }

    /// The merchant's configuration of a plugin (`{}` until set).
    pub async fn config(&self, merchant: &Place, plugin_id: &str) -> Result<Json, Error> {
        let (Some(partner_id), Some(merchant_id)) = (&merchant.partner_id, &merchant.merchant_id)
        else {
            return Err(Error::NotInstalled(plugin_id.to_owned()));
        };
        let row = self.installed_row(partner_id, plugin_id).await?;
        Ok(self
            .stored_config(&row.id, merchant_id)
            .await?
            .unwrap_or_else(|| json!({})))
    }

    /// Validates a merchant's configuration against the manifest's JSON Schema, then the
    /// plugin's `configure` hook, and stores what the hook returns. The grant targets the
    /// merchant; it must be entitled to the plugin.
    pub async fn configure(
        &self,
        grant: &Grant,
        plugin_id: &str,
        config: Json,
    ) -> Result<Json, Error> {
        let merchant = grant.target().clone();
        let live = self.live(&merchant, plugin_id).await?;
        if let Some(schema) = &live.loaded.manifest.config.schema {
            check_schema(schema, &config)?;
        }
        let outcome = self
            .runtime
            .invoke(
                &live.loaded,
                Request {
                    tenant: TenantContext::at(&merchant, &live.installation.id, "zh-CN"),
                    grant: None,
                    config: live.config.clone(),
                    theme: live.theme.clone(),
                    call: Call::Configure { config },
                },
            )
            .await;
        let normalised = match outcome.result {
            Ok(Output::Config(value)) => value,
            Ok(other) => {
                return Err(Error::Hook {
                    hook: "configure",
                    source: super::Error::BadInput(format!("configure answered {other:?}")),
                });
            }
            Err(super::Error::Plugin(super::PluginError::InvalidField { field, message })) => {
                // Plugins name fields as JSON pointers (`/greeting`); the API as paths.
                let field = field.trim_start_matches('/').replace('/', ".");
                return Err(Error::ConfigRefused { field, message });
            }
            Err(source) => {
                return Err(Error::Hook {
                    hook: "configure",
                    source,
                });
            }
        };
        let merchant_id = merchant.merchant_id.clone().unwrap_or_default();
        let now = millis(self.now());
        self.db
            .execute_raw(statement(
                backend(&self.db),
                "INSERT INTO plugin_configs (installation_id, merchant_id, config, updated_at) VALUES (?, ?, ?, ?) \
                 ON CONFLICT (installation_id, merchant_id) DO UPDATE SET config = excluded.config, \
                 updated_at = excluded.updated_at",
                vec![
                    live.installation.id.clone().into(),
                    merchant_id.into(),
                    normalised.to_string().into(),
                    now.into(),
                ],
            ))
            .await?;
        Ok(normalised)
    }

    /// Records an event in the outbox with a delivery for every installed plugin of the
    /// partner whose active version subscribes to its kind. Entitlement is checked when each
    /// delivery is attempted (a skip is visible in the delivery log).
    pub async fn emit(&self, event: &NewEvent) -> Result<String, Error> {
        self.emit_in_chain(event, None).await
    }

    /// [`emit`](Self::emit) for an event that continues the chain started by `root_id`: its
    /// deliveries are charged to that chain's budget.
    async fn emit_in_chain(
        &self,
        event: &NewEvent,
        root_id: Option<&str>,
    ) -> Result<String, Error> {
        let partner_id = event
            .place
            .partner_id
            .clone()
            .ok_or_else(|| invalid("place", "events belong to a partner's tenant"))?;
        let rows = self
            .db
            .query_all_raw(statement(
                backend(&self.db),
                &format!("SELECT {COLUMNS} FROM plugin_installations WHERE partner_id = ? AND status = 'installed'"),
                vec![partner_id.into()],
            ))
            .await?;
        let mut subscribers = Vec::new();
        for row in rows {
            let row = row_of(&row)?;
            let id = row.id.clone();
            let installation = self.view(row).await?;
            if installation.subscribe.contains(&event.kind) {
                subscribers.push(id);
            }
        }
        Ok(events::publish(
            &self.db,
            event,
            &subscribers,
            root_id,
            &self.event_limits,
            self.now(),
        )
        .await?)
    }

    /// The installation by id (the dispatcher's view), whatever its status.
    pub async fn installation(&self, id: &str) -> Result<Installation, Error> {
        let row = self
            .row_by_id(id)
            .await?
            .ok_or_else(|| Error::NotInstalled(id.to_owned()))?;
        self.view(row).await
    }

    /// The stored archive bytes of a plugin version.
    async fn archive_bytes(&self, digest: &str) -> Result<Vec<u8>, Error> {
        let row = self
            .db
            .query_one_raw(statement(
                backend(&self.db),
                "SELECT bytes FROM plugin_archives WHERE digest = ?",
                vec![digest.into()],
            ))
            .await?
            .ok_or_else(|| Error::MissingArchive(digest.to_owned()))?;
        Ok(row.try_get("", "bytes")?)
    }

    /// Delivers one claimed event; the dispatcher records the outcome.
    pub async fn deliver(&self, claim: &events::Claimed) -> Delivery {
        let installation = match self.installation(&claim.installation_id).await {
            Ok(i) => i,
            Err(Error::NotInstalled(_)) => return Delivery::Skip("uninstalled".into()),
            Err(e) => return Delivery::Retry(e.to_string()),
        };
        if installation.status != "installed" {
            return Delivery::Skip("uninstalled".into());
        }
        // Claims hold a suspended tenant's deliveries back; this one was claimed just before the
        // suspension, so it waits with them for the tenant to be active again.
        match crate::tenancy::is_blocked(&self.db, &claim.place).await {
            Ok(true) => {
                return Delivery::Later(
                    self.now() + chrono::Duration::minutes(1),
                    "held: the tenant is suspended".into(),
                );
            }
            Ok(false) => {}
            Err(e) => return Delivery::Retry(e.to_string()),
        }
        let now = self.now();
        let mut config = json!({});
        let mut reserved = None;
        if let Some(merchant_id) = &claim.place.merchant_id {
            let entitlement =
                match packages::entitlement(&self.db, merchant_id, &installation.plugin_id, now)
                    .await
                {
                    Ok(e) => e,
                    Err(packages::Error::Expired(_)) => {
                        return Delivery::Skip("package_expired".into());
                    }
                    Err(packages::Error::NotEntitled(_)) => {
                        return Delivery::Skip("not_entitled".into());
                    }
                    Err(e) => return Delivery::Retry(e.to_string()),
                };
            match self.stored_config(&installation.id, merchant_id).await {
                Ok(Some(c)) => config = c,
                Ok(None) => {}
                Err(e) => return Delivery::Retry(e.to_string()),
            }
            // The quota is held last: nothing may return between holding and settling it.
            if let Some(per_day) = entitlement.quotas.events_per_day {
                let day = china_day_start(now);
                match events::reserve_quota(&self.db, &installation.id, merchant_id, day, per_day)
                    .await
                {
                    Ok(events::Hold::Held) => reserved = Some((merchant_id.clone(), day)),
                    Ok(events::Hold::Exhausted) => {
                        return Delivery::Skip(format!("quota_exceeded: {per_day} events per day"));
                    }
                    Ok(events::Hold::Busy) => {
                        return Delivery::Later(
                            now + chrono::Duration::seconds(2),
                            "postponed: deliveries in flight hold the rest of today's quota".into(),
                        );
                    }
                    Err(e) => return Delivery::Retry(e.to_string()),
                }
            }
        }
        let outcome = self.attempt(installation, config, claim).await;
        if let Some((merchant_id, day)) = reserved
            && let Err(error) = events::settle_quota(
                &self.db,
                &claim.installation_id,
                &merchant_id,
                day,
                outcome == Delivery::Done,
            )
            .await
        {
            tracing::warn!(%error, "could not settle a quota hold");
        }
        outcome
    }

    async fn attempt(
        &self,
        installation: Installation,
        config: Json,
        claim: &events::Claimed,
    ) -> Delivery {
        if !installation.subscribe.contains(&claim.kind) {
            return Delivery::Skip("not_subscribed".into());
        }
        let loaded = match self.loaded_of(&installation).await {
            Ok(l) => l,
            Err(e) => return Delivery::Retry(e.to_string()),
        };
        let theme = self
            .theme_of(&installation.partner_id)
            .await
            .unwrap_or_default();
        let live = Live {
            installation,
            loaded,
            config,
            theme,
            quotas: packages::Quotas::default(),
        };
        let (outcome, refusal) = self
            .invoke_in_chain(
                &live,
                &claim.place,
                "zh-CN",
                Call::Event(Event {
                    id: claim.event_id.clone(),
                    kind: claim.kind.clone(),
                    occurred_at: claim.occurred_at,
                    payload: claim.payload.clone(),
                }),
                claim.depth,
                Some(&claim.root_id),
            )
            .await;
        match (outcome.result, refusal) {
            (Ok(_), _) => Delivery::Done,
            // The plugin gave up on an emission the engine refused: a spent chain stays spent,
            // while the pace allows the emission again later (without counting an attempt).
            (Err(super::Error::Plugin(_)), Some(events::Refusal::Chain(reason))) => {
                Delivery::Skip(format!("over_budget: {reason}"))
            }
            (Err(super::Error::Plugin(_)), Some(events::Refusal::Pace { message, retry_at })) => {
                Delivery::Later(retry_at, format!("postponed: {message}"))
            }
            (Err(super::Error::NotSubscribed(_)), _) => Delivery::Skip("not_subscribed".into()),
            (Err(super::Error::Plugin(super::PluginError::Unsupported { .. })), _) => {
                Delivery::Skip("not_handled: the plugin has no event handler".into())
            }
            // The engine, not the plugin, could not run it: try again later without counting
            // an attempt.
            (Err(super::Error::Busy { .. }), _) => Delivery::Later(
                self.now() + chrono::Duration::seconds(2),
                "postponed: the plugin runtime was busy".into(),
            ),
            (Err(super::Error::Suspended { until }), _) => Delivery::Later(
                until,
                format!("postponed: the installation is suspended until {until}"),
            ),
            (Err(e), _) => Delivery::Retry(e.to_string()),
        }
    }
}

/// What became of one delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    Done,
    Skip(String),
    Retry(String),
    /// Not attempted; due again at this instant (the attempt is not counted).
    Later(DateTime<Utc>, String),
}

/// Midnight China time of the day `now` falls in: the platform's business day.
pub fn china_day_start(now: DateTime<Utc>) -> DateTime<Utc> {
    let shifted = now + chrono::Duration::hours(8);
    let midnight = shifted
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .unwrap_or_default()
        .and_utc();
    midnight - chrono::Duration::hours(8)
}

fn semver_of(version: &str) -> semver::Version {
    semver::Version::parse(version).unwrap_or(semver::Version::new(0, 0, 0))
}

/// Validates `config` against a manifest's JSON Schema, naming the first failing field.
pub fn check_schema(schema: &Json, config: &Json) -> Result<(), Error> {
    let validator = jsonschema::validator_for(schema).map_err(|e| {
        invalid(
            "schema",
            format!("the plugin's config schema is invalid: {e}"),
        )
    })?;
    if let Some(error) = validator.iter_errors(config).next() {
        let pointer = error.instance_path().to_string();
        let field = pointer.trim_start_matches('/').replace('/', ".");
        let field = if field.is_empty() {
            "config".to_owned()
        } else {
            field
        };
        return Err(Error::Invalid {
            field,
            message: error.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configuration_outside_the_schema_names_the_field() {
        let schema = json!({
            "type": "object",
            "properties": { "greeting": { "type": "string", "maxLength": 5 } },
            "additionalProperties": false
        });
        check_schema(&schema, &json!({ "greeting": "hi" })).unwrap();
        match check_schema(&schema, &json!({ "greeting": "far too long" })) {
            Err(Error::Invalid { field, .. }) => assert_eq!(field, "greeting"),
            other => panic!("{other:?}"),
        }
        assert!(check_schema(&schema, &json!({ "other": 1 })).is_err());
    }

    #[test]
    fn the_business_day_starts_at_midnight_in_china() {
        let at = DateTime::parse_from_rfc3339("2026-11-26T17:30:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            china_day_start(at).to_rfc3339(),
            "2026-11-26T16:00:00+00:00"
        );
        let at = DateTime::parse_from_rfc3339("2026-11-26T15:59:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            china_day_start(at).to_rfc3339(),
            "2026-11-25T16:00:00+00:00"
        );
    }
}
