//! What every invocation reads and only an administrator changes — the installation and its
//! manifest, the merchant's packages, its configuration, the partner's theme, whether the
//! tenant is suspended — kept for `database.recent_reads_ms` (see `db::recent`) instead of
//! about ten statements per delivery or request.
//!
//! Invariant: a change made through this process is seen by the next invocation (its writer
//! calls [`Catalog::forget_reads`], or holds [`Catalog::forgetting`] across it); one made through
//! another process within the window. An entitlement is kept with its end, which is compared
//! with the clock at every call, and a merchant's kept entitlements are read again once the
//! first assignment behind them ends, so no package (nor its quotas) is honoured past its end.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value as Json;

use super::{Catalog, Error, Installation};
use crate::db::Recent;
use crate::packages::{self, Entitlement};
use crate::tenancy::{self, Place};

/// The kept reads; clones share them.
#[derive(Clone, Debug)]
pub(super) struct Reads {
    /// Installations by id.
    installations: Recent<String, Arc<Installation>>,
    /// Installation ids by (partner, plugin id): an installation keeps its id for life.
    ids: Recent<(String, String), String>,
    /// A merchant's entitlements as read at some moment, with the moment the first assignment
    /// behind them ends (after which they are read again), by merchant.
    entitlements: Recent<String, Arc<KeptEntitlements>>,
    /// A merchant's stored configuration of an installation (none stored is kept too).
    configs: Recent<(String, String), Option<Arc<Json>>>,
    /// A partner's theme, by partner.
    themes: Recent<String, String>,
    /// Whether a node or one above it is suspended, by the node's whole chain of ids (the
    /// answer depends on every one of them).
    blocked: Recent<String, bool>,
}

/// See [`Catalog::forgetting`].
pub struct Forgetting<'a>(&'a Catalog);

impl Drop for Forgetting<'_> {
    fn drop(&mut self) {
        self.0.forget_reads();
    }
}

/// A merchant's entitlements and until when they hold as they are.
#[derive(Debug)]
struct KeptEntitlements {
    all: BTreeMap<String, Entitlement>,
    first_end: Option<chrono::DateTime<chrono::Utc>>,
}

impl Reads {
    /// Entries kept at most, per kind.
    const MAX_ENTRIES: usize = 10_000;

    pub(super) fn new(ttl: Duration) -> Self {
        Self {
            installations: Recent::new(ttl, Self::MAX_ENTRIES),
            ids: Recent::new(ttl, Self::MAX_ENTRIES),
            entitlements: Recent::new(ttl, Self::MAX_ENTRIES),
            configs: Recent::new(ttl, Self::MAX_ENTRIES),
            themes: Recent::new(ttl, Self::MAX_ENTRIES),
            blocked: Recent::new(ttl, Self::MAX_ENTRIES),
        }
    }

    fn forget_all(&self) {
        self.installations.forget_all();
        self.ids.forget_all();
        self.entitlements.forget_all();
        self.configs.forget_all();
        self.themes.forget_all();
        self.blocked.forget_all();
    }
}

impl Catalog {
    /// This catalog keeping what invocations read for up to `ttl` (`database.recent_reads_ms`;
    /// zero keeps nothing).
    #[must_use]
    pub fn keeping_reads(mut self, ttl: Duration) -> Self {
        self.reads = Reads::new(ttl);
        self
    }

    /// After a change to plugins, packages, configuration, themes or tenant status made through
    /// this process: every invocation from now on reads them again. Such changes are rare, so
    /// all is forgotten rather than tracking what depends on what.
    pub fn forget_reads(&self) {
        self.reads.forget_all();
    }

    /// Forgets the kept reads when dropped: held across a change, so that a change saved by a
    /// handler that then fails (or is dropped when its client goes away) is forgotten too.
    pub fn forgetting(&self) -> Forgetting<'_> {
        Forgetting(self)
    }

    /// The installation by id (the dispatcher's view), whatever its status, kept for a moment.
    pub(in crate::plugins) async fn installation_kept(
        &self,
        id: &str,
    ) -> Result<Arc<Installation>, Error> {
        self.reads
            .installations
            .get_or_load(&id.to_owned(), async {
                match self.row_by_id(id).await? {
                    Some(row) => Ok::<_, Error>(Some(Arc::new(self.view(row).await?))),
                    None => Ok(None),
                }
            })
            .await?
            .ok_or_else(|| Error::NotInstalled(id.to_owned()))
    }

    /// The partner's installation of `plugin_id`, kept for a moment.
    pub(in crate::plugins) async fn installation_of(
        &self,
        partner_id: &str,
        plugin_id: &str,
    ) -> Result<Arc<Installation>, Error> {
        let id = self
            .reads
            .ids
            .get_or_load(&(partner_id.to_owned(), plugin_id.to_owned()), async {
                Ok::<_, Error>(self.row(partner_id, plugin_id).await?.map(|row| row.id))
            })
            .await?
            .ok_or_else(|| Error::NotInstalled(plugin_id.to_owned()))?;
        self.installation_kept(&id).await
    }

    /// The merchant's entitlement to `plugin_id` now. The kept entitlements answer when they
    /// hold it and it has not ended; any other answer is read afresh, so a refusal always says
    /// why and a package assigned in another process is not refused for the window's length.
    pub async fn entitlement(
        &self,
        merchant_id: &str,
        plugin_id: &str,
    ) -> Result<Entitlement, packages::Error> {
        let now = self.now();
        let kept = self.kept_entitlements(merchant_id, now).await?;
        // Once one of the assignments behind them ended, the union (its quotas too) is no
        // longer what it was: asked afresh below.
        if let Some(held) = kept
            .as_ref()
            .filter(|k| k.first_end.is_none_or(|end| end > now))
            .and_then(|k| k.all.get(plugin_id))
            && held.ends_at > now
        {
            return Ok(held.clone());
        }
        packages::entitlement(&self.db, merchant_id, plugin_id, now).await
    }

    /// The merchant's entitlements as kept for a moment.
    async fn kept_entitlements(
        &self,
        merchant_id: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<Arc<KeptEntitlements>>, packages::Error> {
        self.reads
            .entitlements
            .get_or_load(&merchant_id.to_owned(), async {
                let (all, first_end) =
                    packages::entitlements_until(&self.db, merchant_id, now).await?;
                Ok::<_, packages::Error>(Some(Arc::new(KeptEntitlements { all, first_end })))
            })
            .await
    }

    /// The plugins the merchant holds now, from the kept entitlements (read afresh once the
    /// first assignment behind them ended): what the consoles list for it.
    pub async fn entitled(&self, merchant_id: &str) -> Result<Vec<String>, packages::Error> {
        let now = self.now();
        let kept = self.kept_entitlements(merchant_id, now).await?;
        let held = match kept.filter(|k| k.first_end.is_none_or(|end| end > now)) {
            Some(kept) => kept.all.clone(),
            None => packages::entitlements(&self.db, merchant_id, now).await?,
        };
        Ok(held
            .into_iter()
            .filter(|(_, e)| e.ends_at > now)
            .map(|(plugin, _)| plugin)
            .collect())
    }

    /// The partner's installation of `plugin_id` as the catalog shows it (its console pages
    /// among it), kept for a moment.
    pub async fn installation_for(
        &self,
        partner_id: &str,
        plugin_id: &str,
    ) -> Result<Arc<Installation>, Error> {
        self.installation_of(partner_id, plugin_id).await
    }

    /// The merchant's stored configuration of an installation, kept for a moment.
    pub(in crate::plugins) async fn config_kept(
        &self,
        installation_id: &str,
        merchant_id: &str,
    ) -> Result<Option<Json>, Error> {
        let kept = self
            .reads
            .configs
            .get_or_load(
                &(installation_id.to_owned(), merchant_id.to_owned()),
                async {
                    Ok::<_, Error>(Some(
                        self.stored_config(installation_id, merchant_id)
                            .await?
                            .map(Arc::new),
                    ))
                },
            )
            .await?;
        Ok(kept.flatten().map(|config| (*config).clone()))
    }

    /// The partner's theme, kept for a moment.
    pub(in crate::plugins) async fn theme_kept(&self, partner_id: &str) -> Result<String, Error> {
        Ok(self
            .reads
            .themes
            .get_or_load(&partner_id.to_owned(), async {
                Ok::<_, Error>(Some(self.theme_of(partner_id).await?))
            })
            .await?
            .unwrap_or_else(|| crate::themes::DEFAULT_THEME.to_owned()))
    }

    /// Whether `place` or a node above it is suspended, kept for a moment.
    pub async fn is_blocked(&self, place: &Place) -> Result<bool, tenancy::Error> {
        Ok(self
            .reads
            .blocked
            .get_or_load(&chain_of(place), async {
                Ok::<_, tenancy::Error>(Some(tenancy::is_blocked(&self.db, place).await?))
            })
            .await?
            .unwrap_or(false))
    }
}

/// A place's ids from the partner down to itself: what decides whether it is blocked.
fn chain_of(place: &Place) -> String {
    let mut chain: Vec<&str> = place.lineage().collect();
    chain.push(&place.id);
    chain.join("/")
}
