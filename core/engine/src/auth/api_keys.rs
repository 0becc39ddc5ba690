//! API keys: machine credentials standing on one node with that node's tier role.
//!
//! Invariant: a key in clear is returned once, at creation; afterwards only its public prefix
//! (which finds the row) and the digest of the whole key (which proves it) exist.

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, Set,
};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::tokens::{constant_time_eq, digest, random_token};
use super::{Error, Principal, PrincipalKind, invalid, require_session, tier_role};
use crate::db::entity::api_keys;
use crate::db::{Page, Paged, fetch_page};
use crate::rbac::{Action, Grant};
use crate::tenancy::{self, NodeKind, Place, Role, scope_condition};

/// API keys start with this, so they are told from session tokens (and found by secret scanners).
pub const API_KEY_PREFIX: &str = "trk_";

/// An API key as the API shows it: never the secret, only its public prefix.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ApiKey {
    pub id: String,
    pub name: String,
    pub prefix: String,
    pub node_id: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl From<api_keys::Model> for ApiKey {
    fn from(model: api_keys::Model) -> Self {
        Self {
            role: Role::parse(&model.role).unwrap_or(Role::MerchantStaff),
            id: model.id,
            name: model.name,
            prefix: model.prefix,
            node_id: model.node_id,
            created_at: model.created_at,
            last_used_at: model.last_used_at,
            revoked_at: model.revoked_at,
        }
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct NewApiKey {
    pub name: String,
    /// Defaults to the role of the node's tier; any other role is refused.
    #[serde(default)]
    pub role: Option<Role>,
}

/// Creates a key on the grant's target node. Returns the key in clear, this once.
pub async fn create_api_key(
    db: &impl ConnectionTrait,
    grant: &Grant,
    input: NewApiKey,
) -> Result<(SecretString, ApiKey), Error> {
    if grant.action() != Action::ApiKeyCreate {
        return Err(invalid(
            "node_id",
            "this grant does not allow creating API keys",
        ));
    }
    require_session(grant.actor())?;
    let name = input.name.trim();
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(invalid("name", "must be 1-100 printable characters"));
    }
    let place = grant.target();
    let role = tier_role(place, input.role)?;
    let prefix = random_token(9)?.replace(['-', '_'], "x");
    let secret = format!("{API_KEY_PREFIX}{prefix}_{}", random_token(32)?);
    let model = api_keys::ActiveModel {
        id: Set(Uuid::now_v7().to_string()),
        node_id: Set(place.id.clone()),
        partner_id: Set(place.partner_id.clone()),
        agent_id: Set(place.agent_id.clone()),
        merchant_id: Set(place.merchant_id.clone()),
        store_id: Set(place.store_id.clone()),
        name: Set(name.to_owned()),
        prefix: Set(prefix),
        key_hash: Set(digest(&secret)),
        role: Set(role.as_str().to_owned()),
        created_by: Set(Some(grant.actor().id.clone())),
        created_at: Set(Utc::now()),
        last_used_at: Set(None),
        revoked_at: Set(None),
    }
    .insert(db)
    .await?;
    Ok((SecretString::from(secret), model.into()))
}

pub async fn list_api_keys(
    db: &impl ConnectionTrait,
    scope: &Place,
    node_id: Option<&str>,
    page: Page,
) -> Result<Paged<ApiKey>, Error> {
    let mut query = api_keys::Entity::find().filter(scope_condition(scope));
    if let Some(node) = node_id {
        query = query.filter(api_keys::Column::NodeId.eq(node));
    }
    let (rows, total) =
        fetch_page(db, query.order_by_desc(api_keys::Column::CreatedAt), page).await?;
    Ok(page.wrap(rows.into_iter().map(ApiKey::from).collect(), total))
}

/// Key `id` and where it sits, if it is inside `scope`.
pub async fn find_api_key_in_scope(
    db: &impl ConnectionTrait,
    scope: &Place,
    id: &str,
) -> Result<(ApiKey, Place), Error> {
    let model = api_keys::Entity::find_by_id(id)
        .filter(scope_condition(scope))
        .one(db)
        .await?
        .ok_or_else(|| Error::KeyNotFound(id.to_owned()))?;
    let kind = Role::parse(&model.role).map_or(NodeKind::Store, Role::kind);
    let place = Place {
        id: model.node_id.clone(),
        kind,
        partner_id: model.partner_id.clone(),
        agent_id: model.agent_id.clone(),
        merchant_id: model.merchant_id.clone(),
        store_id: model.store_id.clone(),
    };
    Ok((model.into(), place))
}

/// Revokes key `id`, which must stand on the grant's target node.
pub async fn revoke_api_key(
    db: &impl ConnectionTrait,
    grant: &Grant,
    id: &str,
) -> Result<ApiKey, Error> {
    if grant.action() != Action::ApiKeyRevoke {
        return Err(invalid("id", "this grant does not allow revoking API keys"));
    }
    require_session(grant.actor())?;
    let model = api_keys::Entity::find_by_id(id)
        .filter(api_keys::Column::NodeId.eq(grant.target().id.as_str()))
        .one(db)
        .await?
        .ok_or_else(|| Error::KeyNotFound(id.to_owned()))?;
    let mut active: api_keys::ActiveModel = model.into();
    active.revoked_at = Set(Some(Utc::now()));
    Ok(active.update(db).await?.into())
}

/// Revokes every unrevoked key that account `user_id` created.
pub(super) async fn revoke_keys_created_by(
    db: &impl ConnectionTrait,
    user_id: &str,
) -> Result<(), Error> {
    api_keys::Entity::update_many()
        .col_expr(
            api_keys::Column::RevokedAt,
            sea_orm::sea_query::Expr::value(Utc::now()),
        )
        .filter(api_keys::Column::CreatedBy.eq(user_id))
        .filter(api_keys::Column::RevokedAt.is_null())
        .exec(db)
        .await?;
    Ok(())
}

pub(super) async fn authenticate_key(
    db: &impl ConnectionTrait,
    token: &str,
) -> Result<Principal, Error> {
    // trk_<prefix>_<secret>: the prefix finds the row, the digest of the whole key proves it.
    let prefix = token
        .strip_prefix(API_KEY_PREFIX)
        .and_then(|rest| rest.split_once('_'))
        .map(|(p, _)| p);
    let Some(prefix) = prefix else {
        return Err(Error::Unauthenticated);
    };
    let key = api_keys::Entity::find()
        .filter(api_keys::Column::Prefix.eq(prefix))
        .one(db)
        .await?
        .ok_or(Error::Unauthenticated)?;
    let presented = digest(token);
    if key.revoked_at.is_some() || !constant_time_eq(presented.as_bytes(), key.key_hash.as_bytes())
    {
        return Err(Error::Unauthenticated);
    }
    let role = Role::parse(&key.role).ok_or(Error::Unauthenticated)?;
    let place = Place {
        id: key.node_id.clone(),
        kind: role.kind(),
        partner_id: key.partner_id.clone(),
        agent_id: key.agent_id.clone(),
        merchant_id: key.merchant_id.clone(),
        store_id: key.store_id.clone(),
    };
    if tenancy::is_blocked(db, &place).await? {
        return Err(Error::Suspended);
    }
    let mut active: api_keys::ActiveModel = key.clone().into();
    active.last_used_at = Set(Some(Utc::now()));
    active.update(db).await?;
    Ok(Principal {
        kind: PrincipalKind::ApiKey,
        id: key.id,
        label: key.name,
        role,
        place,
        session_id: None,
    })
}
