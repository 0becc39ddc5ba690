//! Authorization: may this principal perform this action on that node?
//!
//! Invariant: the permission matrix ([`allows`]) is the single source of what each role may do;
//! casbin holds it as tenant-independent role templates plus one grouping edge per account
//! (`subject → role` at the account's node), and a check walks the target's ancestors, so a role
//! acts on its own node and below, never above or beside. Every mutating store function takes
//! the [`Grant`] that only [`Rbac::authorize`] can create, so a forgotten check does not compile.

pub mod audit;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use casbin::{CoreApi, DefaultModel, Enforcer, MemoryAdapter, MgmtApi, RbacApi};
use sea_orm::{ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter};
use tokio::sync::RwLock;

use crate::auth::Principal;
use crate::db::entity::{api_keys, users};
use crate::db::sql;
use crate::tenancy::{self, NodeKind, Place, Role};

/// Every action the admin API authorizes. The strings of each live in [`Action::casbin`] only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    PartnerCreate,
    PartnerRead,
    PartnerUpdate,
    PartnerSuspend,
    AgentCreate,
    AgentRead,
    AgentUpdate,
    AgentSuspend,
    MerchantCreate,
    MerchantRead,
    MerchantUpdate,
    MerchantSuspend,
    StoreCreate,
    StoreRead,
    StoreUpdate,
    StoreSuspend,
    UserCreate,
    UserRead,
    UserUpdate,
    ApiKeyCreate,
    ApiKeyRead,
    ApiKeyRevoke,
    AuditRead,
    AlipayCredentialsRead,
    AlipayCredentialsWrite,
    PluginRead,
    PluginManage,
    PackageRead,
    PackageWrite,
    AssignmentRead,
    AssignmentWrite,
    PluginConfigRead,
    PluginConfigWrite,
    PluginUse,
    PluginView,
    /// Reading the delivery log and the event log.
    DeliveryRead,
    DeliveryRedeliver,
    /// Calling a plugin route whose audience is `staff` (at a store's or a merchant's path).
    PluginRouteStaff,
    /// Calling a plugin route whose audience is `merchant`.
    PluginRouteMerchant,
    /// Calling a plugin route whose audience is `agent`.
    PluginRouteAgent,
    /// Calling a plugin route whose audience is `partner`.
    PluginRoutePartner,
    /// Creating (and closing) a trade at a store: its owner and staff.
    PaymentCreate,
    /// Reading payments, their refunds and the notifications not applied.
    PaymentRead,
    /// Refunding a payment: the merchant's owner.
    PaymentRefund,
}

impl Action {
    pub const ALL: [Action; 44] = [
        Self::PartnerCreate,
        Self::PartnerRead,
        Self::PartnerUpdate,
        Self::PartnerSuspend,
        Self::AgentCreate,
        Self::AgentRead,
        Self::AgentUpdate,
        Self::AgentSuspend,
        Self::MerchantCreate,
        Self::MerchantRead,
        Self::MerchantUpdate,
        Self::MerchantSuspend,
        Self::StoreCreate,
        Self::StoreRead,
        Self::StoreUpdate,
        Self::StoreSuspend,
        Self::UserCreate,
        Self::UserRead,
        Self::UserUpdate,
        Self::ApiKeyCreate,
        Self::ApiKeyRead,
        Self::ApiKeyRevoke,
        Self::AuditRead,
        Self::AlipayCredentialsRead,
        Self::AlipayCredentialsWrite,
        Self::PluginRead,
        Self::PluginManage,
        Self::PackageRead,
        Self::PackageWrite,
        Self::AssignmentRead,
        Self::AssignmentWrite,
        Self::PluginConfigRead,
        Self::PluginConfigWrite,
        Self::PluginUse,
        Self::PluginView,
        Self::DeliveryRead,
        Self::DeliveryRedeliver,
        Self::PluginRouteStaff,
        Self::PluginRouteMerchant,
        Self::PluginRouteAgent,
        Self::PluginRoutePartner,
        Self::PaymentCreate,
        Self::PaymentRead,
        Self::PaymentRefund,
    ];

    /// The (object, verb) pair casbin stores.
    pub fn casbin(self) -> (&'static str, &'static str) {
        match self {
            Self::PartnerCreate => ("partner", "create"),
            Self::PartnerRead => ("partner", "read"),
            Self::PartnerUpdate => ("partner", "update"),
            Self::PartnerSuspend => ("partner", "suspend"),
            Self::AgentCreate => ("agent", "create"),
            Self::AgentRead => ("agent", "read"),
            Self::AgentUpdate => ("agent", "update"),
            Self::AgentSuspend => ("agent", "suspend"),
            Self::MerchantCreate => ("merchant", "create"),
            Self::MerchantRead => ("merchant", "read"),
            Self::MerchantUpdate => ("merchant", "update"),
            Self::MerchantSuspend => ("merchant", "suspend"),
            Self::StoreCreate => ("store", "create"),
            Self::StoreRead => ("store", "read"),
            Self::StoreUpdate => ("store", "update"),
            Self::StoreSuspend => ("store", "suspend"),
            Self::UserCreate => ("user", "create"),
            Self::UserRead => ("user", "read"),
            Self::UserUpdate => ("user", "update"),
            Self::ApiKeyCreate => ("api_key", "create"),
            Self::ApiKeyRead => ("api_key", "read"),
            Self::ApiKeyRevoke => ("api_key", "revoke"),
            Self::AuditRead => ("audit", "read"),
            Self::AlipayCredentialsRead => ("alipay_credentials", "read"),
            Self::AlipayCredentialsWrite => ("alipay_credentials", "write"),
            Self::PluginRead => ("plugin", "read"),
            Self::PluginManage => ("plugin", "manage"),
            Self::PackageRead => ("package", "read"),
            Self::PackageWrite => ("package", "write"),
            Self::AssignmentRead => ("assignment", "read"),
            Self::AssignmentWrite => ("assignment", "write"),
            Self::PluginConfigRead => ("plugin_config", "read"),
            Self::PluginConfigWrite => ("plugin_config", "write"),
            Self::PluginUse => ("plugin", "use"),
            Self::PluginView => ("plugin", "view"),
            Self::DeliveryRead => ("delivery", "read"),
            Self::DeliveryRedeliver => ("delivery", "redeliver"),
            Self::PluginRouteStaff => ("plugin.route", "staff"),
            Self::PluginRouteMerchant => ("plugin.route", "merchant"),
            Self::PluginRouteAgent => ("plugin.route", "agent"),
            Self::PluginRoutePartner => ("plugin.route", "partner"),
            Self::PaymentCreate => ("payment", "create"),
            Self::PaymentRead => ("payment", "read"),
            Self::PaymentRefund => ("payment", "refund"),
        }
    }

    /// `object.verb`, as the audit log and the docs name it.
    pub fn name(self) -> String {
        let (object, verb) = self.casbin();
        format!("{object}.{verb}")
    }

    /// The kind of node the check is made against: the parent for a create, the node itself
    /// for the other node actions; `None` where any node may be the target (users, keys, audit).
    pub fn target_kind(self) -> Option<NodeKind> {
        Some(match self {
            Self::PartnerCreate => NodeKind::Platform,
            Self::PartnerRead | Self::PartnerUpdate | Self::PartnerSuspend | Self::AgentCreate => {
                NodeKind::Partner
            }
            Self::AgentRead | Self::AgentUpdate | Self::AgentSuspend | Self::MerchantCreate => {
                NodeKind::Agent
            }
            Self::MerchantRead
            | Self::MerchantUpdate
            | Self::MerchantSuspend
            | Self::StoreCreate
            | Self::AlipayCredentialsRead
            | Self::AlipayCredentialsWrite
            | Self::AssignmentWrite
            | Self::PluginConfigRead
            | Self::PluginConfigWrite
            | Self::PluginUse
            | Self::PluginRouteMerchant
            | Self::PluginRouteAgent
            | Self::PluginRoutePartner
            | Self::PaymentRefund => NodeKind::Merchant,
            Self::PluginManage => NodeKind::Partner,
            Self::PackageWrite => NodeKind::Agent,
            Self::StoreRead
            | Self::StoreUpdate
            | Self::StoreSuspend
            | Self::PluginView
            | Self::PluginRouteStaff
            | Self::PaymentCreate
            | Self::PaymentRead => NodeKind::Store,
            Self::UserCreate
            | Self::UserRead
            | Self::UserUpdate
            | Self::ApiKeyCreate
            | Self::ApiKeyRead
            | Self::ApiKeyRevoke
            | Self::AuditRead
            | Self::PluginRead
            | Self::PackageRead
            | Self::AssignmentRead
            | Self::DeliveryRead
            | Self::DeliveryRedeliver => return None,
        })
    }

    /// Whether the action changes a node itself (its fields or its status), which nobody may do
    /// to the node they stand on.
    pub fn changes_node(self) -> bool {
        NodeKind::ALL
            .into_iter()
            .any(|kind| self == Self::update_node(kind) || self == Self::suspend_node(kind))
    }

    pub fn create_node(kind: NodeKind) -> Action {
        match kind {
            NodeKind::Platform | NodeKind::Partner => Self::PartnerCreate,
            NodeKind::Agent => Self::AgentCreate,
            NodeKind::Merchant => Self::MerchantCreate,
            NodeKind::Store => Self::StoreCreate,
        }
    }

    pub fn read_node(kind: NodeKind) -> Action {
        match kind {
            NodeKind::Platform | NodeKind::Partner => Self::PartnerRead,
            NodeKind::Agent => Self::AgentRead,
            NodeKind::Merchant => Self::MerchantRead,
            NodeKind::Store => Self::StoreRead,
        }
    }

    pub fn update_node(kind: NodeKind) -> Action {
        match kind {
            NodeKind::Platform | NodeKind::Partner => Self::PartnerUpdate,
            NodeKind::Agent => Self::AgentUpdate,
            NodeKind::Merchant => Self::MerchantUpdate,
            NodeKind::Store => Self::StoreUpdate,
        }
    }

    pub fn suspend_node(kind: NodeKind) -> Action {
        match kind {
            NodeKind::Platform | NodeKind::Partner => Self::PartnerSuspend,
            NodeKind::Agent => Self::AgentSuspend,
            NodeKind::Merchant => Self::MerchantSuspend,
            NodeKind::Store => Self::StoreSuspend,
        }
    }
}

/// The permission matrix: whether `role` may perform `action` on its own node or below.
/// A tier manages the tiers below it and reads (never changes or suspends) its own node;
/// nobody creates, changes or suspends the node they stand on.
pub fn allows(role: Role, action: Action) -> bool {
    use Action as A;
    match role {
        Role::PlatformAdmin => true,
        // A partner's domains, theme and status are set from the tier above: a partner that
        // could set its own domains could claim any host, the console's among them.
        // Money moves at the merchant: the tiers above read payments but neither take nor
        // refund them.
        Role::PartnerAdmin => !matches!(
            action,
            A::PartnerCreate
                | A::PartnerUpdate
                | A::PartnerSuspend
                | A::PaymentCreate
                | A::PaymentRefund
        ),
        Role::AgentAdmin => !matches!(
            action,
            A::PartnerCreate
                | A::PartnerRead
                | A::PartnerUpdate
                | A::PartnerSuspend
                | A::AgentCreate
                | A::AgentUpdate
                | A::AgentSuspend
                | A::PluginManage
                | A::PluginRoutePartner
                | A::PaymentCreate
                | A::PaymentRefund
        ),
        Role::MerchantOwner => matches!(
            action,
            A::MerchantRead
                | A::StoreCreate
                | A::StoreRead
                | A::StoreUpdate
                | A::StoreSuspend
                | A::UserCreate
                | A::UserRead
                | A::UserUpdate
                | A::ApiKeyCreate
                | A::ApiKeyRead
                | A::ApiKeyRevoke
                | A::AuditRead
                | A::AlipayCredentialsRead
                | A::AlipayCredentialsWrite
                | A::PluginRead
                | A::AssignmentRead
                | A::PluginConfigRead
                | A::PluginConfigWrite
                | A::PluginUse
                | A::PluginView
                | A::DeliveryRead
                | A::DeliveryRedeliver
                | A::PluginRouteStaff
                | A::PluginRouteMerchant
                | A::PaymentCreate
                | A::PaymentRead
                | A::PaymentRefund
        ),
        Role::MerchantStaff => matches!(
            action,
            A::StoreRead | A::PluginView | A::PluginRouteStaff | A::PaymentCreate | A::PaymentRead
        ),
    }
}

/// The matrix as Markdown; `docs/permissions.md` is this text, checked by a test.
pub fn permissions_markdown() -> String {
    let mut out = String::from(
        "# Permissions\n\n\
         Generated from `core/engine/src/rbac.rs` (`rbac::allows`); a test fails when this file is stale.\n\n\
         A role is held at one node and acts on that node and the nodes below it — never above or\n\
         beside. A target outside the caller's subtree answers 404, as if it did not exist; an action\n\
         the matrix denies inside the subtree answers 403. Nobody changes or suspends the node they\n\
         stand on: a partner's name, domains and theme, like its status, are set from the tier above.\n\n\
         A plugin's routes are reached through doors (`doors`). At `/api/v1/merchants/{id}/plugins/…` a\n\
         call needs `plugin.use` on the merchant and the `plugin.route.*` action of the route's audience;\n\
         at `/api/v1/stores/{id}/plugins/…` it needs `plugin.view` on the store and `plugin.route.staff`,\n\
         and only `staff` routes are served there. `member` routes are the partner's public pages at\n\
         `/m/{merchant}/{plugin}/…`: no sign-in and no action, and no admin path serves them.\n\n",
    );
    out.push_str("| action |");
    for role in Role::ALL {
        out.push_str(&format!(" {} |", role.as_str()));
    }
    out.push_str("\n| --- |");
    for _ in Role::ALL {
        out.push_str(" :---: |");
    }
    out.push('\n');
    for action in Action::ALL {
        out.push_str(&format!("| `{}` |", action.name()));
        for role in Role::ALL {
            out.push_str(if allows(role, action) {
                " allow |"
            } else {
                " deny |"
            });
        }
        out.push('\n');
    }
    out.push_str(
        "\nRoles are bound to tiers: `platform_admin` at the platform, `partner_admin` at a partner,\n\
         `agent_admin` at an agent, `merchant_owner` at a merchant and `merchant_staff` (a cashier) at a\n\
         store. An account or API key may only be given the role of the node it is placed on.\n",
    );
    out
}

const MODEL: &str = r#"
[request_definition]
r = sub, dom, obj, act

[policy_definition]
p = sub, dom, obj, act

[role_definition]
g = _, _, _

[policy_effect]
e = some(where (p.eft == allow))

[matchers]
m = r.obj == p.obj && r.act == p.act && g(r.sub, p.sub, r.dom)
"#;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{action} is not allowed here")]
    Denied { action: String },
    #[error("authorization engine failed: {0}")]
    Casbin(#[from] casbin::Error),
    #[error("database error: {0}")]
    Db(#[from] sea_orm::DbErr),
    #[error(transparent)]
    Tenancy(#[from] tenancy::Error),
}

/// Proof that a principal was authorized for one action on one node. Only
/// [`Rbac::authorize`] makes one; mutating store functions take it and act on its target.
#[derive(Debug)]
pub struct Grant {
    action: Action,
    target: Place,
    actor: Principal,
}

impl Grant {
    pub fn action(&self) -> Action {
        self.action
    }

    pub fn target(&self) -> &Place {
        &self.target
    }

    pub fn actor(&self) -> &Principal {
        &self.actor
    }
}

/// The casbin enforcer of this process, kept in step with the database.
#[derive(Clone)]
pub struct Rbac {
    inner: Arc<Inner>,
}

struct Inner {
    db: DatabaseConnection,
    enforcer: RwLock<Enforcer>,
    /// The `policy_version` this process last loaded.
    version: AtomicI64,
    platform_id: String,
}

impl std::fmt::Debug for Rbac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rbac")
            .field("version", &self.inner.version.load(Ordering::Relaxed))
            .finish()
    }
}

fn subject_user(id: &str) -> String {
    format!("u:{id}")
}

fn subject_key(id: &str) -> String {
    format!("k:{id}")
}

fn role_subject(role: Role) -> String {
    format!("role:{}", role.as_str())
}

impl Rbac {
    /// Builds the enforcer from the matrix and every account and key in the database.
    pub async fn load(db: DatabaseConnection) -> Result<Self, Error> {
        let platform = tenancy::ensure_platform(&db).await?;
        let version = read_version(&db).await?;
        let enforcer = build_enforcer(&db).await?;
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                enforcer: RwLock::new(enforcer),
                version: AtomicI64::new(version),
                platform_id: platform.id,
            }),
        })
    }

    /// Authorizes `principal` for `action` on `target`. The walk goes from the platform down the
    /// target's ancestors; at the (at most one) node where the principal holds a role, casbin
    /// decides. Nowhere else can a role apply, which is the subtree rule.
    pub async fn authorize(
        &self,
        principal: &Principal,
        action: Action,
        target: &Place,
    ) -> Result<Grant, Error> {
        // The matrix already denies it; this holds even if a future matrix edit did not.
        if action.changes_node()
            && action.target_kind() == Some(target.kind)
            && target.id == principal.place.id
        {
            return Err(Error::Denied {
                action: action.name(),
            });
        }
        let mut allowed = self.check(principal, action, target).await?;
        // A denial may come from a policy another process changed since our last poll: confirm
        // it against the current version, then against the caller's own row, before refusing
        // (allows stay on the fast path). The second check runs even when this `sync` found
        // nothing new: the poller may have swapped in the newer policy between our first check
        // and the version read, and only a fresh look at the enforcer sees it.
        if !allowed {
            self.sync().await?;
            allowed = self.check(principal, action, target).await?;
        }
        // A caller with no edge at all here may be one created a moment ago elsewhere: read its row.
        if !allowed
            && !self.has_edge(principal).await
            && self.refresh_subject(principal.subject_ref()).await?
        {
            allowed = self.check(principal, action, target).await?;
        }
        if allowed {
            Ok(Grant {
                action,
                target: target.clone(),
                actor: principal.clone(),
            })
        } else {
            Err(Error::Denied {
                action: action.name(),
            })
        }
    }

    /// The decision alone, from this process's enforcer.
    pub async fn check(
        &self,
        principal: &Principal,
        action: Action,
        target: &Place,
    ) -> Result<bool, Error> {
        let subject = principal.casbin_subject();
        let (object, verb) = action.casbin();
        let enforcer = self.inner.enforcer.read().await;
        let nodes = std::iter::once(self.inner.platform_id.as_str()).chain(target.lineage());
        for node in nodes {
            if enforcer.get_roles_for_user(&subject, Some(node)).is_empty() {
                continue;
            }
            if enforcer.enforce((subject.as_str(), node, object, verb))? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Call after an account's or key's role, node or status changed in the database: this
    /// process applies it at once, and the version bump tells every other process to reload.
    pub async fn subject_changed(&self, subject: SubjectRef<'_>) -> Result<(), Error> {
        let db = &self.inner.db;
        let (name, edge) = self.edge_of(subject).await?;
        let version = bump_version(db).await?;
        {
            let mut enforcer = self.inner.enforcer.write().await;
            enforcer
                .remove_filtered_grouping_policy(0, vec![name.clone()])
                .await?;
            if let Some((role, node)) = edge {
                enforcer
                    .add_grouping_policy(vec![name, role_subject(role), node])
                    .await?;
            }
        }
        // Our own change is already applied; only a newer one from elsewhere needs a reload.
        self.inner.version.fetch_max(version, Ordering::SeqCst);
        Ok(())
    }

    /// Whether this process knows the caller's role at its own node (a hash lookup: filtering
    /// the grouping policy instead would scan every account).
    async fn has_edge(&self, principal: &Principal) -> bool {
        let name = principal.casbin_subject();
        !self
            .inner
            .enforcer
            .read()
            .await
            .get_roles_for_user(&name, Some(&principal.place.id))
            .is_empty()
    }

    /// Adds `subject`'s edge when its row in the database has one this process lacks; true when
    /// it did. (Removals and moves arrive through the version poll.)
    async fn refresh_subject(&self, subject: SubjectRef<'_>) -> Result<bool, Error> {
        let (name, edge) = self.edge_of(subject).await?;
        let Some((role, node)) = edge else {
            return Ok(false);
        };
        let role = role_subject(role);
        // Hash lookups only, under the read lock: repeated denials must neither scan every
        // account nor serialize the checks of everyone else.
        if self
            .inner
            .enforcer
            .read()
            .await
            .get_roles_for_user(&name, Some(&node))
            .contains(&role)
        {
            return Ok(false);
        }
        self.inner
            .enforcer
            .write()
            .await
            .add_grouping_policy(vec![name, role, node])
            .await?;
        Ok(true)
    }

    /// The casbin name of `subject` and the (role, node) edge its row gives it, if active.
    async fn edge_of(
        &self,
        subject: SubjectRef<'_>,
    ) -> Result<(String, Option<(Role, String)>), Error> {
        let db = &self.inner.db;
        Ok(match subject {
            SubjectRef::User(id) => (
                subject_user(id),
                users::Entity::find_by_id(id)
                    .filter(users::Column::Status.eq("active"))
                    .one(db)
                    .await?
                    .and_then(|u| Role::parse(&u.role).map(|r| (r, u.node_id))),
            ),
            SubjectRef::ApiKey(id) => (
                subject_key(id),
                api_keys::Entity::find_by_id(id)
                    .filter(api_keys::Column::RevokedAt.is_null())
                    .one(db)
                    .await?
                    .and_then(|k| Role::parse(&k.role).map(|r| (r, k.node_id))),
            ),
        })
    }

    /// Reloads everything when another process changed the policy since the last load.
    pub async fn sync(&self) -> Result<bool, Error> {
        let version = read_version(&self.inner.db).await?;
        if version == self.inner.version.load(Ordering::SeqCst) {
            return Ok(false);
        }
        // Build off-lock, swap under it: checks wait only for the swap.
        let fresh = build_enforcer(&self.inner.db).await?;
        *self.inner.enforcer.write().await = fresh;
        self.inner.version.store(version, Ordering::SeqCst);
        Ok(true)
    }

    /// Polls the policy version every `interval` (half a second keeps every process within a
    /// second of a change made anywhere).
    pub fn spawn_sync(&self, interval: Duration) -> tokio::task::JoinHandle<()> {
        let rbac = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match rbac.sync().await {
                    Ok(true) => tracing::info!("authorization policy reloaded"),
                    Ok(false) => {}
                    Err(error) => tracing::warn!(%error, "authorization policy sync failed"),
                }
            }
        })
    }

    pub fn platform_id(&self) -> &str {
        &self.inner.platform_id
    }
}

/// An account or API key whose authorization edge may have changed.
#[derive(Debug, Clone, Copy)]
pub enum SubjectRef<'a> {
    User(&'a str),
    ApiKey(&'a str),
}

async fn read_version(db: &impl ConnectionTrait) -> Result<i64, Error> {
    let version = sql::query("SELECT version FROM policy_version WHERE id = 1", [])
        .scalar(db)
        .await?
        .unwrap_or(0);
    Ok(version)
}

/// Tells every engine process that accounts or keys changed, for writers outside `Rbac` (the
/// bootstrap commands).
pub async fn bump_policy_version(db: &impl ConnectionTrait) -> Result<i64, Error> {
    bump_version(db).await
}

async fn bump_version(db: &impl ConnectionTrait) -> Result<i64, Error> {
    // The version our own bump made, not whatever a second read finds: another process may bump
    // in between, and taking its version as ours would skip reloading its change.
    let version = sql::query(
        "UPDATE policy_version SET version = version + 1 WHERE id = 1 RETURNING version",
        [],
    )
    .scalar(db)
    .await?
    .unwrap_or(0);
    Ok(version)
}

async fn build_enforcer(db: &impl ConnectionTrait) -> Result<Enforcer, Error> {
    let model = DefaultModel::from_str(MODEL).await?;
    let mut enforcer = Enforcer::new(model, MemoryAdapter::default()).await?;
    let mut templates = Vec::new();
    for role in Role::ALL {
        for action in Action::ALL {
            if allows(role, action) {
                let (object, verb) = action.casbin();
                templates.push(vec![
                    role_subject(role),
                    "*".to_owned(),
                    object.to_owned(),
                    verb.to_owned(),
                ]);
            }
        }
    }
    enforcer.add_policies(templates).await?;
    let mut edges = Vec::new();
    for user in users::Entity::find()
        .filter(users::Column::Status.eq("active"))
        .all(db)
        .await?
    {
        if let Some(role) = Role::parse(&user.role) {
            edges.push(vec![
                subject_user(&user.id),
                role_subject(role),
                user.node_id,
            ]);
        }
    }
    for key in api_keys::Entity::find()
        .filter(api_keys::Column::RevokedAt.is_null())
        .all(db)
        .await?
    {
        if let Some(role) = Role::parse(&key.role) {
            edges.push(vec![subject_key(&key.id), role_subject(role), key.node_id]);
        }
    }
    if !edges.is_empty() {
        enforcer.add_grouping_policies(edges).await?;
    }
    Ok(enforcer)
}

/// The casbin subject naming an account or key.
pub fn casbin_subject(subject: SubjectRef<'_>) -> String {
    match subject {
        SubjectRef::User(id) => subject_user(id),
        SubjectRef::ApiKey(id) => subject_key(id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_platform_admin_may_do_everything_and_staff_only_read_their_store_and_sell() {
        for action in Action::ALL {
            assert!(allows(Role::PlatformAdmin, action));
            assert_eq!(
                allows(Role::MerchantStaff, action),
                action == Action::StoreRead
                    || action == Action::PluginView
                    || action == Action::PluginRouteStaff
                    || action == Action::PaymentCreate
                    || action == Action::PaymentRead
            );
        }
    }

    #[test]
    fn money_moves_at_the_merchant_the_tiers_above_only_read_it() {
        for role in [Role::PartnerAdmin, Role::AgentAdmin] {
            assert!(allows(role, Action::PaymentRead));
            assert!(!allows(role, Action::PaymentCreate));
            assert!(!allows(role, Action::PaymentRefund));
        }
        assert!(allows(Role::MerchantOwner, Action::PaymentRefund));
        assert!(!allows(Role::MerchantStaff, Action::PaymentRefund));
    }

    #[test]
    fn nobody_creates_changes_or_suspends_the_node_they_stand_on() {
        for role in Role::ALL {
            if role == Role::PlatformAdmin {
                continue;
            }
            let kind = role.kind();
            // Update covers every field of a node: its name, and a partner's domains and theme.
            assert!(!allows(role, Action::create_node(kind)), "{role:?}");
            for action in [Action::update_node(kind), Action::suspend_node(kind)] {
                assert!(!allows(role, action), "{role:?} may {}", action.name());
                assert!(action.changes_node(), "{}", action.name());
            }
        }
    }

    #[test]
    fn only_node_changes_are_refused_on_the_callers_own_node() {
        let changes: Vec<Action> = Action::ALL
            .into_iter()
            .filter(|a| a.changes_node())
            .collect();
        assert_eq!(changes.len(), 8, "{changes:?}");
        assert!(!Action::MerchantRead.changes_node());
        assert!(!Action::AlipayCredentialsWrite.changes_node());
    }

    #[test]
    fn docs_permissions_md_matches_the_matrix() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/permissions.md");
        let expected = permissions_markdown();
        let actual = std::fs::read_to_string(path).unwrap_or_default();
        if actual != expected {
            if crate::config::bless_from_env() {
                std::fs::write(path, &expected).unwrap();
            } else {
                panic!(
                    "docs/permissions.md is stale; run `TRELLIS_BLESS=1 cargo test -p trellis-engine docs_permissions` to regenerate it"
                );
            }
        }
    }
}
