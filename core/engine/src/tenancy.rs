//! The tenant tree: platform → partner → agent → merchant → store.
//!
//! Invariant: exactly one platform node is the root; every other node carries the ids of its
//! partner, agent, merchant and store ancestors (itself included), so "everything below node N"
//! is one indexed equality on the column of N's kind, and a node outside the caller's subtree
//! is indistinguishable from one that does not exist.

use chrono::Utc;
use sea_orm::sea_query::{Alias, Expr, ExprTrait};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, EntityTrait,
    PaginatorTrait, QueryFilter, QueryOrder, Set,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::db::entity::nodes;
use crate::db::{Page, Paged, fetch_page};
use crate::rbac::{Action, Grant};

mod domains;

pub use domains::{
    HostPartner, first_domain, normalize_domain, parse_host_header, partner_for_host,
};
use domains::{domains_of, normalize_domains, replace_domains};

/// The kinds of node, from the root down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NodeKind {
    Platform,
    Partner,
    Agent,
    Merchant,
    Store,
}

impl NodeKind {
    pub const ALL: [NodeKind; 5] = [
        Self::Platform,
        Self::Partner,
        Self::Agent,
        Self::Merchant,
        Self::Store,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Platform => "platform",
            Self::Partner => "partner",
            Self::Agent => "agent",
            Self::Merchant => "merchant",
            Self::Store => "store",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == text)
    }

    /// The kind a node of this kind hangs under.
    pub fn parent(self) -> Option<Self> {
        match self {
            Self::Platform => None,
            Self::Partner => Some(Self::Platform),
            Self::Agent => Some(Self::Partner),
            Self::Merchant => Some(Self::Agent),
            Self::Store => Some(Self::Merchant),
        }
    }

    pub fn depth(self) -> usize {
        match self {
            Self::Platform => 0,
            Self::Partner => 1,
            Self::Agent => 2,
            Self::Merchant => 3,
            Self::Store => 4,
        }
    }
}

/// The built-in roles, one per tier. A role is held at one node and acts on that node and the
/// nodes below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    PlatformAdmin,
    PartnerAdmin,
    AgentAdmin,
    MerchantOwner,
    /// A store-bound cashier.
    MerchantStaff,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Self::PlatformAdmin,
        Self::PartnerAdmin,
        Self::AgentAdmin,
        Self::MerchantOwner,
        Self::MerchantStaff,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::PlatformAdmin => "platform_admin",
            Self::PartnerAdmin => "partner_admin",
            Self::AgentAdmin => "agent_admin",
            Self::MerchantOwner => "merchant_owner",
            Self::MerchantStaff => "merchant_staff",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == text)
    }

    /// The kind of node this role is held at.
    pub fn kind(self) -> NodeKind {
        match self {
            Self::PlatformAdmin => NodeKind::Platform,
            Self::PartnerAdmin => NodeKind::Partner,
            Self::AgentAdmin => NodeKind::Agent,
            Self::MerchantOwner => NodeKind::Merchant,
            Self::MerchantStaff => NodeKind::Store,
        }
    }

    /// The role held at a node of `kind`: the only one that may be granted there.
    pub fn for_kind(kind: NodeKind) -> Self {
        match kind {
            NodeKind::Platform => Self::PlatformAdmin,
            NodeKind::Partner => Self::PartnerAdmin,
            NodeKind::Agent => Self::AgentAdmin,
            NodeKind::Merchant => Self::MerchantOwner,
            NodeKind::Store => Self::MerchantStaff,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NodeStatus {
    Active,
    Suspended,
}

impl NodeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Suspended => "suspended",
        }
    }
}

/// Where something sits in the tree: a node's id and kind plus its ancestor ids. Every
/// tenant-owned row carries the same four ancestor columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub id: String,
    pub kind: NodeKind,
    pub partner_id: Option<String>,
    pub agent_id: Option<String>,
    pub merchant_id: Option<String>,
    pub store_id: Option<String>,
}

impl Place {
    /// A partner's own place.
    pub fn of_partner(partner_id: &str) -> Self {
        Self {
            id: partner_id.to_owned(),
            kind: NodeKind::Partner,
            partner_id: Some(partner_id.to_owned()),
            agent_id: None,
            merchant_id: None,
            store_id: None,
        }
    }

    /// The whole tree: a scope that restricts nothing (the platform's).
    pub fn platform_scope() -> Self {
        Self {
            id: String::new(),
            kind: NodeKind::Platform,
            partner_id: None,
            agent_id: None,
            merchant_id: None,
            store_id: None,
        }
    }

    /// The id this place has for an ancestor kind (itself for its own kind).
    pub fn ancestor(&self, kind: NodeKind) -> Option<&str> {
        match kind {
            NodeKind::Platform => None,
            NodeKind::Partner => self.partner_id.as_deref(),
            NodeKind::Agent => self.agent_id.as_deref(),
            NodeKind::Merchant => self.merchant_id.as_deref(),
            NodeKind::Store => self.store_id.as_deref(),
        }
    }

    /// Ancestor ids from the partner down to this node (the platform root is implicit).
    pub fn lineage(&self) -> impl Iterator<Item = &str> {
        [
            &self.partner_id,
            &self.agent_id,
            &self.merchant_id,
            &self.store_id,
        ]
        .into_iter()
        .filter_map(|id| id.as_deref())
    }

    /// Whether `other` is this node or below it.
    pub fn contains(&self, other: &Place) -> bool {
        match self.kind {
            NodeKind::Platform => true,
            kind => other.ancestor(kind) == Some(self.id.as_str()),
        }
    }

    /// The column that selects this node's subtree in any tenant-owned table, with its value;
    /// `None` for the platform, whose subtree is everything.
    pub fn scope(&self) -> Option<(ScopeColumn, &str)> {
        let column = match self.kind {
            NodeKind::Platform => return None,
            NodeKind::Partner => ScopeColumn::Partner,
            NodeKind::Agent => ScopeColumn::Agent,
            NodeKind::Merchant => ScopeColumn::Merchant,
            NodeKind::Store => ScopeColumn::Store,
        };
        Some((column, self.id.as_str()))
    }

    /// The place of a new child of `kind` with id `id` under this node.
    pub fn child(&self, kind: NodeKind, id: &str) -> Place {
        let mut place = Place {
            id: id.to_owned(),
            kind,
            partner_id: self.partner_id.clone(),
            agent_id: self.agent_id.clone(),
            merchant_id: self.merchant_id.clone(),
            store_id: self.store_id.clone(),
        };
        match kind {
            NodeKind::Platform => {}
            NodeKind::Partner => place.partner_id = Some(id.to_owned()),
            NodeKind::Agent => place.agent_id = Some(id.to_owned()),
            NodeKind::Merchant => place.merchant_id = Some(id.to_owned()),
            NodeKind::Store => place.store_id = Some(id.to_owned()),
        }
        place
    }
}

/// The ancestor column a subtree filter uses; each tenant-owned table has all four.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScopeColumn {
    Partner,
    Agent,
    Merchant,
    Store,
}

impl ScopeColumn {
    pub fn name(self) -> &'static str {
        match self {
            Self::Partner => "partner_id",
            Self::Agent => "agent_id",
            Self::Merchant => "merchant_id",
            Self::Store => "store_id",
        }
    }
}

/// A subtree filter for any entity whose table has the four ancestor columns.
pub fn scope_condition(scope: &Place) -> Condition {
    match scope.scope() {
        None => Condition::all(),
        Some((column, id)) => {
            Condition::all().add(Expr::col(Alias::new(column.name())).eq(id.to_owned()))
        }
    }
}

/// A node as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Node {
    pub id: String,
    pub kind: NodeKind,
    pub parent_id: Option<String>,
    pub partner_id: Option<String>,
    pub agent_id: Option<String>,
    pub merchant_id: Option<String>,
    pub name: String,
    pub status: NodeStatus,
    /// Partners only: the theme their pages use.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub theme: Option<String>,
    /// Partners only: the host names that select this partner.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domains: Option<Vec<String>>,
    pub created_at: chrono::DateTime<Utc>,
    pub updated_at: chrono::DateTime<Utc>,
}

impl Node {
    pub fn place(&self) -> Place {
        Place {
            id: self.id.clone(),
            kind: self.kind,
            partner_id: self.partner_id.clone(),
            agent_id: self.agent_id.clone(),
            merchant_id: self.merchant_id.clone(),
            store_id: (self.kind == NodeKind::Store).then(|| self.id.clone()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{kind} {id} not found")]
    NotFound { kind: &'static str, id: String },
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("domain {0} already belongs to a partner")]
    DomainTaken(String),
    #[error("a tier above yours suspended this node; only it can resume it")]
    SuspendedAbove,
    #[error("the platform node is missing; run `trellis migrate` and `trellis admin create`")]
    NoPlatform,
    #[error("database error: {0}")]
    Db(#[from] sea_orm::DbErr),
}

fn invalid(field: &'static str, message: impl Into<String>) -> Error {
    Error::Invalid {
        field,
        message: message.into(),
    }
}

/// Input for a new node; `theme` and `domains` apply to partners only.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
pub struct NewNode {
    pub name: String,
    #[serde(default)]
    pub theme: Option<String>,
    #[serde(default)]
    pub domains: Option<Vec<String>>,
}

/// A partial update; absent fields stay as they are.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
pub struct NodePatch {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub theme: Option<String>,
    #[serde(default)]
    pub domains: Option<Vec<String>>,
}

/// Filters for node lists.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
pub struct NodeFilter {
    /// Substring of the name.
    pub q: Option<String>,
    pub status: Option<NodeStatus>,
    /// Only direct children of this node.
    pub parent_id: Option<String>,
}

fn validate_name(name: &str) -> Result<String, Error> {
    let name = name.trim();
    if name.is_empty() {
        return Err(invalid("name", "must not be empty"));
    }
    if name.chars().count() > 200 {
        return Err(invalid("name", "must be at most 200 characters"));
    }
    if name.chars().any(char::is_control) {
        return Err(invalid("name", "must not contain control characters"));
    }
    Ok(name.to_owned())
}

fn validate_theme(theme: &str) -> Result<String, Error> {
    let valid = !theme.is_empty()
        && theme.len() <= 64
        && theme
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if valid {
        Ok(theme.to_owned())
    } else {
        Err(invalid(
            "theme",
            "must be 1-64 characters of a-z, 0-9, '-' or '_'",
        ))
    }
}

fn from_model(model: nodes::Model, domains: Option<Vec<String>>) -> Node {
    Node {
        kind: NodeKind::parse(&model.kind).unwrap_or(NodeKind::Store),
        status: if model.status == "suspended" {
            NodeStatus::Suspended
        } else {
            NodeStatus::Active
        },
        id: model.id,
        parent_id: model.parent_id,
        partner_id: model.partner_id,
        agent_id: model.agent_id,
        merchant_id: model.merchant_id,
        name: model.name,
        theme: model.theme,
        domains,
        created_at: model.created_at,
        updated_at: model.updated_at,
    }
}

fn place_of(model: &nodes::Model) -> Option<Place> {
    Some(Place {
        id: model.id.clone(),
        kind: NodeKind::parse(&model.kind)?,
        partner_id: model.partner_id.clone(),
        agent_id: model.agent_id.clone(),
        merchant_id: model.merchant_id.clone(),
        store_id: model.store_id.clone(),
    })
}

async fn with_domains(db: &impl ConnectionTrait, model: nodes::Model) -> Result<Node, Error> {
    let domains = if model.kind == NodeKind::Partner.as_str() {
        Some(domains_of(db, &model.id).await?)
    } else {
        None
    };
    Ok(from_model(model, domains))
}

/// The platform node, created on first use.
pub async fn ensure_platform(db: &impl ConnectionTrait) -> Result<Place, Error> {
    if let Some(place) = platform(db).await? {
        return Ok(place);
    }
    let now = Utc::now();
    // One fixed id: two processes creating the root at once collide on the primary key
    // instead of making two roots.
    let inserted = nodes::ActiveModel {
        id: Set(PLATFORM_ID.to_owned()),
        kind: Set(NodeKind::Platform.as_str().to_owned()),
        parent_id: Set(None),
        partner_id: Set(None),
        agent_id: Set(None),
        merchant_id: Set(None),
        store_id: Set(None),
        name: Set("Platform".to_owned()),
        theme: Set(None),
        status: Set(NodeStatus::Active.as_str().to_owned()),
        suspended_by_tier: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
    }
    .insert(db)
    .await;
    match inserted {
        Ok(node) => place_of(&node).ok_or(Error::NoPlatform),
        Err(error) => platform(db).await?.ok_or(Error::Db(error)),
    }
}

/// The id of the single platform node.
pub const PLATFORM_ID: &str = "00000000-0000-7000-8000-000000000001";

pub async fn platform(db: &impl ConnectionTrait) -> Result<Option<Place>, Error> {
    Ok(nodes::Entity::find()
        .filter(nodes::Column::Kind.eq(NodeKind::Platform.as_str()))
        .one(db)
        .await?
        .and_then(|m| place_of(&m)))
}

/// Where node `id` sits, without any scope check: for the engine's own lookups.
pub async fn place(db: &impl ConnectionTrait, id: &str) -> Result<Option<Place>, Error> {
    Ok(nodes::Entity::find_by_id(id)
        .one(db)
        .await?
        .as_ref()
        .and_then(place_of))
}

/// Node `id` of `kind`, if it is inside `scope`; otherwise `NotFound`, exactly as if it did not
/// exist, so ids from clients reveal nothing about other tenants.
pub async fn find_in_scope(
    db: &impl ConnectionTrait,
    scope: &Place,
    kind: Option<NodeKind>,
    id: &str,
) -> Result<Node, Error> {
    let not_found = || Error::NotFound {
        kind: kind.map_or("node", NodeKind::as_str),
        id: id.to_owned(),
    };
    let mut query = nodes::Entity::find_by_id(id).filter(scope_condition(scope));
    if let Some(kind) = kind {
        query = query.filter(nodes::Column::Kind.eq(kind.as_str()));
    }
    let model = query.one(db).await?.ok_or_else(not_found)?;
    with_domains(db, model).await
}

/// The names of the nodes `ids` inside `scope`, in one query: what a page listing rows that
/// name nodes (assignments, accounts) shows beside them. Ids outside the scope are left out.
pub async fn names(
    db: &impl ConnectionTrait,
    scope: &Place,
    ids: &[&str],
) -> Result<std::collections::HashMap<String, String>, Error> {
    if ids.is_empty() {
        return Ok(Default::default());
    }
    let rows = nodes::Entity::find()
        .filter(nodes::Column::Id.is_in(ids.iter().copied()))
        .filter(scope_condition(scope))
        .all(db)
        .await?;
    Ok(rows.into_iter().map(|n| (n.id, n.name)).collect())
}

/// Nodes of `kind` inside `scope`, newest first.
pub async fn list(
    db: &impl ConnectionTrait,
    scope: &Place,
    kind: NodeKind,
    filter: &NodeFilter,
    page: Page,
) -> Result<Paged<Node>, Error> {
    let mut query = nodes::Entity::find()
        .filter(nodes::Column::Kind.eq(kind.as_str()))
        .filter(scope_condition(scope));
    if let Some(q) = filter.q.as_deref().map(str::trim).filter(|q| !q.is_empty()) {
        query = query.filter(nodes::Column::Name.contains(q));
    }
    if let Some(status) = filter.status {
        query = query.filter(nodes::Column::Status.eq(status.as_str()));
    }
    if let Some(parent) = &filter.parent_id {
        query = query.filter(nodes::Column::ParentId.eq(parent.as_str()));
    }
    let ordered = query
        .order_by_desc(nodes::Column::CreatedAt)
        .order_by_desc(nodes::Column::Id);
    let (models, total) = fetch_page(db, ordered, page).await?;
    let mut items = Vec::with_capacity(models.len());
    for model in models {
        items.push(with_domains(db, model).await?);
    }
    Ok(page.wrap(items, total))
}

/// Creates a child of the grant's target. The grant must be the create action for `kind`.
/// `reserved` lists the console hosts (`http.console_hosts`), which no partner may claim.
pub async fn create(
    db: &DatabaseConnection,
    grant: &Grant,
    kind: NodeKind,
    input: NewNode,
    reserved: &[String],
) -> Result<Node, Error> {
    let parent = grant.target();
    if Some(parent.kind) != kind.parent() || grant.action() != Action::create_node(kind) {
        return Err(invalid(
            "parent_id",
            format!("a {} cannot be created here", kind.as_str()),
        ));
    }
    let name = validate_name(&input.name)?;
    let theme = match (&input.theme, kind) {
        (Some(theme), NodeKind::Partner) => Some(validate_theme(theme)?),
        (None, _) => None,
        (Some(_), _) => return Err(invalid("theme", "only partners have a theme")),
    };
    let domains = match (&input.domains, kind) {
        (Some(domains), NodeKind::Partner) => normalize_domains(domains, reserved)?,
        (None, _) => Vec::new(),
        (Some(_), _) => return Err(invalid("domains", "only partners have domains")),
    };
    let id = Uuid::now_v7().to_string();
    let place = parent.child(kind, &id);
    let now = Utc::now();
    let txn = crate::db::begin_write(db).await?;
    let model = nodes::ActiveModel {
        id: Set(id.clone()),
        kind: Set(kind.as_str().to_owned()),
        parent_id: Set(Some(parent.id.clone())),
        partner_id: Set(place.partner_id.clone()),
        agent_id: Set(place.agent_id.clone()),
        merchant_id: Set(place.merchant_id.clone()),
        store_id: Set(place.store_id.clone()),
        name: Set(name),
        theme: Set(theme),
        status: Set(NodeStatus::Active.as_str().to_owned()),
        suspended_by_tier: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
    }
    .insert(&txn)
    .await?;
    replace_domains(&txn, &id, &domains).await?;
    txn.commit().await?;
    let domains = (kind == NodeKind::Partner).then_some(domains);
    Ok(from_model(model, domains))
}

/// Applies `patch` to the grant's target node; `reserved` as for [`create`].
pub async fn update(
    db: &DatabaseConnection,
    grant: &Grant,
    patch: NodePatch,
    reserved: &[String],
) -> Result<Node, Error> {
    let target = grant.target();
    if grant.action() != Action::update_node(target.kind) {
        return Err(invalid("id", "this grant does not allow updating the node"));
    }
    let txn = crate::db::begin_write(db).await?;
    let model = nodes::Entity::find_by_id(target.id.as_str())
        .one(&txn)
        .await?
        .ok_or_else(|| Error::NotFound {
            kind: target.kind.as_str(),
            id: target.id.clone(),
        })?;
    let is_partner = target.kind == NodeKind::Partner;
    let mut active: nodes::ActiveModel = model.into();
    if let Some(name) = &patch.name {
        active.name = Set(validate_name(name)?);
    }
    if let Some(theme) = &patch.theme {
        if !is_partner {
            return Err(invalid("theme", "only partners have a theme"));
        }
        active.theme = Set(Some(validate_theme(theme)?));
    }
    if let Some(domains) = &patch.domains {
        if !is_partner {
            return Err(invalid("domains", "only partners have domains"));
        }
        replace_domains(&txn, &target.id, &normalize_domains(domains, reserved)?).await?;
    }
    active.updated_at = Set(Utc::now());
    let model = active.update(&txn).await?;
    let node = with_domains(&txn, model).await?;
    txn.commit().await?;
    Ok(node)
}

/// Suspends or reactivates the grant's target; sign-in and API use below a suspended node stop.
pub async fn set_status(
    db: &impl ConnectionTrait,
    grant: &Grant,
    status: NodeStatus,
) -> Result<Node, Error> {
    let target = grant.target();
    if grant.action() != Action::suspend_node(target.kind) {
        return Err(invalid(
            "id",
            "this grant does not allow changing the node's status",
        ));
    }
    let model = nodes::Entity::find_by_id(target.id.as_str())
        .one(db)
        .await?
        .ok_or_else(|| Error::NotFound {
            kind: target.kind.as_str(),
            id: target.id.clone(),
        })?;
    // Whoever suspends a node sets the bar for resuming it: a lower tier cannot lift what a
    // tier above it decided (nor re-suspend it to take the decision over).
    let tier = i32::try_from(grant.actor().place.kind.depth()).unwrap_or(i32::MAX);
    if model.status == NodeStatus::Suspended.as_str()
        && let Some(by) = model.suspended_by_tier
        && tier > by
    {
        return Err(Error::SuspendedAbove);
    }
    let mut active: nodes::ActiveModel = model.into();
    active.status = Set(status.as_str().to_owned());
    active.suspended_by_tier = Set((status == NodeStatus::Suspended).then_some(tier));
    active.updated_at = Set(Utc::now());
    with_domains(db, active.update(db).await?).await
}

/// Whether `place` or any node above it is suspended.
pub async fn is_blocked(db: &impl ConnectionTrait, place: &Place) -> Result<bool, Error> {
    let ids: Vec<&str> = place
        .lineage()
        .chain(std::iter::once(place.id.as_str()))
        .collect();
    let suspended = nodes::Entity::find()
        .filter(nodes::Column::Id.is_in(ids))
        .filter(nodes::Column::Status.eq(NodeStatus::Suspended.as_str()))
        .count(db)
        .await?;
    Ok(suspended > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place(kind: NodeKind, ids: [Option<&str>; 4], id: &str) -> Place {
        Place {
            id: id.to_owned(),
            kind,
            partner_id: ids[0].map(str::to_owned),
            agent_id: ids[1].map(str::to_owned),
            merchant_id: ids[2].map(str::to_owned),
            store_id: ids[3].map(str::to_owned),
        }
    }

    #[test]
    fn a_node_contains_its_subtree_and_nothing_beside_or_above_it() {
        let agent = place(NodeKind::Agent, [Some("p1"), Some("a1"), None, None], "a1");
        let merchant = agent.child(NodeKind::Merchant, "m1");
        let store = merchant.child(NodeKind::Store, "s1");
        let other_agent = place(NodeKind::Agent, [Some("p1"), Some("a2"), None, None], "a2");
        let partner = place(NodeKind::Partner, [Some("p1"), None, None, None], "p1");
        assert!(agent.contains(&agent));
        assert!(agent.contains(&merchant));
        assert!(agent.contains(&store));
        assert!(!agent.contains(&other_agent));
        assert!(!agent.contains(&partner));
        assert!(!store.contains(&merchant));
        assert_eq!(
            store.lineage().collect::<Vec<_>>(),
            ["p1", "a1", "m1", "s1"]
        );
    }

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(validate_name("  Acme  ").unwrap(), "Acme");
        assert!(validate_name("   ").is_err());
        assert!(validate_name(&"x".repeat(201)).is_err());
        assert!(validate_name("a\u{0}b").is_err());
    }
}
