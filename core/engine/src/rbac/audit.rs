//! The audit log: every state-changing admin call, allowed or not, with who made it, where,
//! on what, and how it ended.
//!
//! Invariant: an entry is filed under the target's place when the target is inside the caller's
//! subtree, else under the caller's own node, so a refused probe at another tenant is visible to
//! the caller's admins and never to the tenant probed.

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, Set,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::auth::{Principal, PrincipalKind};
use crate::db::entity::audit_log;
use crate::db::{Page, Paged, fetch_page};
use crate::tenancy::{Place, scope_condition};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Success,
    Denied,
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Denied => "denied",
            Self::Failed => "failed",
        }
    }
}

/// What one call did, as the HTTP layer reports it.
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    pub actor: Option<&'a Principal>,
    /// Where the entry is filed (see the module invariant).
    pub place: Option<&'a Place>,
    pub action: &'a str,
    pub target_type: &'a str,
    pub target_id: Option<&'a str>,
    pub request_id: Option<&'a str>,
    pub outcome: Outcome,
    pub detail: Option<String>,
}

/// An entry as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Record {
    pub id: String,
    pub at: DateTime<Utc>,
    pub actor_kind: String,
    pub actor_id: Option<String>,
    pub actor: String,
    pub actor_node_id: Option<String>,
    pub node_id: Option<String>,
    pub action: String,
    pub target_type: String,
    pub target_id: Option<String>,
    pub request_id: Option<String>,
    pub outcome: String,
    pub detail: Option<String>,
}

impl From<audit_log::Model> for Record {
    fn from(m: audit_log::Model) -> Self {
        Self {
            id: m.id,
            at: m.at,
            actor_kind: m.actor_kind,
            actor_id: m.actor_id,
            actor: m.actor_label,
            actor_node_id: m.actor_node_id,
            node_id: m.node_id,
            action: m.action,
            target_type: m.target_type,
            target_id: m.target_id,
            request_id: m.request_id,
            outcome: m.outcome,
            detail: m.detail,
        }
    }
}

pub async fn record(db: &impl ConnectionTrait, entry: Entry<'_>) -> Result<(), sea_orm::DbErr> {
    let place = entry.place.or(entry.actor.map(|a| &a.place));
    let (actor_kind, actor_id, actor_label, actor_node) = match entry.actor {
        Some(actor) => (
            match actor.kind {
                PrincipalKind::User => "user",
                PrincipalKind::ApiKey => "api_key",
            },
            Some(actor.id.clone()),
            actor.label.clone(),
            Some(actor.place.id.clone()),
        ),
        None => ("anonymous", None, "anonymous".to_owned(), None),
    };
    audit_log::ActiveModel {
        id: Set(Uuid::now_v7().to_string()),
        at: Set(Utc::now()),
        actor_kind: Set(actor_kind.to_owned()),
        actor_id: Set(actor_id),
        actor_label: Set(actor_label.chars().take(254).collect()),
        actor_node_id: Set(actor_node),
        partner_id: Set(place.and_then(|p| p.partner_id.clone())),
        agent_id: Set(place.and_then(|p| p.agent_id.clone())),
        merchant_id: Set(place.and_then(|p| p.merchant_id.clone())),
        store_id: Set(place.and_then(|p| p.store_id.clone())),
        node_id: Set(place.map(|p| p.id.clone())),
        action: Set(entry.action.to_owned()),
        target_type: Set(entry.target_type.to_owned()),
        target_id: Set(entry.target_id.map(|t| t.chars().take(64).collect())),
        request_id: Set(entry.request_id.map(str::to_owned)),
        outcome: Set(entry.outcome.as_str().to_owned()),
        detail: Set(entry.detail),
    }
    .insert(db)
    .await?;
    Ok(())
}

/// Filters for the audit list.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
pub struct Filter {
    /// Entries filed at this node or below (default: the caller's node).
    pub node_id: Option<String>,
    /// `object.verb`, e.g. `merchant.create`.
    pub action: Option<String>,
    pub actor_id: Option<String>,
    pub outcome: Option<Outcome>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

/// Entries filed inside `scope`, newest first.
pub async fn list(
    db: &impl ConnectionTrait,
    scope: &Place,
    filter: &Filter,
    page: Page,
) -> Result<Paged<Record>, sea_orm::DbErr> {
    let mut query = audit_log::Entity::find().filter(scope_condition(scope));
    if let Some(action) = &filter.action {
        query = query.filter(audit_log::Column::Action.eq(action.as_str()));
    }
    if let Some(actor) = &filter.actor_id {
        query = query.filter(audit_log::Column::ActorId.eq(actor.as_str()));
    }
    if let Some(outcome) = filter.outcome {
        query = query.filter(audit_log::Column::Outcome.eq(outcome.as_str()));
    }
    if let Some(since) = filter.since {
        query = query.filter(audit_log::Column::At.gte(since));
    }
    if let Some(until) = filter.until {
        query = query.filter(audit_log::Column::At.lt(until));
    }
    let ordered = query
        .order_by_desc(audit_log::Column::At)
        .order_by_desc(audit_log::Column::Id);
    let (rows, total) = fetch_page(db, ordered, page).await?;
    Ok(page.wrap(rows.into_iter().map(Record::from).collect(), total))
}

/// Deletes entries older than `retention_days` (0 keeps everything); returns how many went.
pub async fn prune(db: &impl ConnectionTrait, retention_days: u32) -> Result<u64, sea_orm::DbErr> {
    if retention_days == 0 {
        return Ok(0);
    }
    let cutoff = Utc::now() - chrono::Duration::days(i64::from(retention_days));
    let result = audit_log::Entity::delete_many()
        .filter(audit_log::Column::At.lt(cutoff))
        .exec(db)
        .await?;
    Ok(result.rows_affected)
}

/// Prunes hourly (and once at start) until `stop` turns true.
pub async fn prune_periodically(
    db: sea_orm::DatabaseConnection,
    retention_days: u32,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(3_600));
    loop {
        tokio::select! {
            _ = every.tick() => match prune(&db, retention_days).await {
                Ok(0) => {}
                Ok(pruned) => tracing::info!(pruned, retention_days, "old audit entries deleted"),
                Err(error) => tracing::warn!(%error, "pruning the audit log failed"),
            },
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    break;
                }
            }
        }
    }
}
