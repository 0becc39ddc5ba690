//! The life of an installation: installing an archive (a new plugin or a new version),
//! activating a version, rolling back, offering it to agents, and uninstalling.
//!
//! Invariant: nothing is stored until the archive passed every check and its `install` hook
//! succeeded; a version becomes active only once it loads; and only an assignment in force
//! (unless forced) stops an uninstall — a failing `uninstall` hook is logged, not fatal — which
//! keeps data and archives, so reinstalling restores the plugin.

use std::sync::Arc;

use chrono::Utc;

use sea_orm::Value;
use serde_json::json;
use uuid::Uuid;

use super::{Catalog, Error, Installation, invalid, partner_of, semver_of};
use crate::db::sql::{self, Millis};
use crate::packages;
use crate::plugins::archive::{Archive, SignatureStatus};
use crate::plugins::{self, Call, Request, TenantContext};
use crate::rbac::Grant;
use crate::tenancy::Place;

impl Catalog {
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
            .map_err(|e| plugins::Error::Engine(format!("reading task failed: {e}")))??;
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
            .map_err(|e| plugins::Error::Engine(format!("loading task failed: {e}")))??;
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
                    finish: None,
                    facts: Default::default(),
                    inside: None,
                },
            )
            .await;
        if let Err(source) = outcome.result {
            return Err(Error::Hook {
                hook: "install",
                source,
            });
        }
        let now = Millis(self.now());
        let by = grant.actor().label.clone();
        let txn = crate::db::begin_write(&self.db).await?;
        let stored: Option<String> = sql::query(
            "SELECT digest FROM plugin_archives WHERE digest = ?",
            [archive.digest.clone().into()],
        )
        .scalar(&txn)
        .await?;
        if stored.is_none() {
            sql::query(
                "INSERT INTO plugin_archives (digest, plugin_id, version, bytes, size, uploaded_at) VALUES (?, ?, ?, ?, ?, ?)",
                [
                    archive.digest.clone().into(),
                    plugin_id.clone().into(),
                    version.clone().into(),
                    bytes.to_vec().into(),
                    i64::try_from(bytes.len()).unwrap_or(i64::MAX).into(),
                    now.into(),
                ],
            )
            .execute(&txn)
            .await?;
        }
        match &existing {
            None => {
                sql::query(
                    "INSERT INTO plugin_installations (id, partner_id, plugin_id, active_version, offered, status, installed_at, updated_at) \
                     VALUES (?, ?, ?, ?, ?, 'installed', ?, ?)",
                    [
                        installation_id.clone().into(),
                        partner_id.clone().into(),
                        plugin_id.clone().into(),
                        version.clone().into(),
                        false.into(),
                        now.into(),
                        now.into(),
                    ],
                )
                .execute(&txn)
                .await?;
            }
            Some(row) => {
                let active = if activate {
                    version.clone()
                } else {
                    row.active_version.clone()
                };
                sql::query(
                    "UPDATE plugin_installations SET active_version = ?, status = 'installed', updated_at = ? WHERE id = ?",
                    [active.into(), now.into(), row.id.clone().into()],
                )
                .execute(&txn)
                .await?;
            }
        }
        sql::query(
            "INSERT INTO plugin_versions (installation_id, version, digest, manifest, installed_at, installed_by) VALUES (?, ?, ?, ?, ?, ?)",
            [
                installation_id.clone().into(),
                version.into(),
                archive.digest.clone().into(),
                manifest_json.into(),
                now.into(),
                by.into(),
            ],
        )
        .execute(&txn)
        .await?;
        txn.commit().await?;
        self.forget_reads();
        let row = self
            .row_by_id(&installation_id)
            .await?
            .ok_or_else(|| Error::NotInstalled(plugin_id))?;
        self.view(row).await
    }

    /// Sets one column of an installation (a name from this module, never from input).
    async fn set_column(&self, id: &str, column: &'static str, value: Value) -> Result<(), Error> {
        sql::query(
            &format!("UPDATE plugin_installations SET {column} = ?, updated_at = ? WHERE id = ?"),
            [value, Millis(self.now()).into(), id.into()],
        )
        .execute(&self.db)
        .await?;
        self.forget_reads();
        Ok(())
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

    /// Lifts the installation's suspensions after repeated failures (an operator's decision
    /// once the cause is fixed), for every merchant and in every engine process: this one at
    /// once, the others within `database.recent_reads_ms`.
    pub async fn reset_breaker(
        &self,
        grant: &Grant,
        plugin_id: &str,
    ) -> Result<Installation, Error> {
        let partner_id = partner_of(grant)?;
        let row = self.installed_row(&partner_id, plugin_id).await?;
        // Breakers trip on the real clock of each process, so the reset is stamped with it too
        // (not the catalog's, which tests may move).
        self.set_column(&row.id, "breaker_reset_at", Millis(Utc::now()).into())
            .await?;
        self.runtime.reset_breaker(&row.id);
        let row = self.installed_row(&partner_id, plugin_id).await?;
        self.view(row).await
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
                    finish: None,
                    facts: Default::default(),
                    inside: None,
                },
            )
            .await;
        if let Err(error) = &outcome.result {
            tracing::warn!(plugin = %installation.plugin_id, %error, "uninstall hook failed; uninstalling anyway");
        }
    }
}
