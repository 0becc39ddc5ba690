//! Sign-in sessions: signing in with a password, the session token it issues, and ending sessions.
//!
//! Invariant: a session is valid only unrevoked, unexpired, on the partner's hosts it was issued
//! on (or the console's), for an active account on an unsuspended node.

use chrono::{DateTime, Duration, Utc};
use sea_orm::{ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, Set};
use secrecy::SecretString;
use uuid::Uuid;

use super::throttle::reserve_attempt;
use super::tokens::{digest, random_token};
use super::{Error, Hasher, Principal, PrincipalKind, User, place_of_user};
use crate::db::entity::{login_failures, sessions, users};
use crate::tenancy::{self, NodeKind, Role};

/// What a successful sign-in returns. The token is shown this once.
#[derive(Debug)]
pub struct Login {
    pub token: SecretString,
    pub expires_at: DateTime<Utc>,
    pub user: User,
}

/// Signs in with email and password on a host that belongs to `host_partner` (or to the platform
/// console when `None`). Accounts of a partner sign in only on that partner's domains, so a token
/// issued on one partner is never valid on another's.
///
/// Every attempt is counted before the password is checked (see [`reserve_attempt`]), so
/// concurrent guesses cannot outrun the limit; a success gives its count back. A wrong password,
/// an unknown or disabled account, a foreign host and a suspended node all answer the same
/// [`Error::InvalidCredentials`], so no answer tells a right password from a wrong one.
pub async fn login(
    db: &sea_orm::DatabaseConnection,
    hasher: &Hasher,
    email: &str,
    password: &SecretString,
    ip: &str,
    host_partner: Option<&str>,
    ttl: Duration,
) -> Result<Login, Error> {
    let slot = hasher.admit()?;
    let account = email.trim().to_lowercase();
    let attempt = reserve_attempt(db, &account, ip).await?;
    let user = users::Entity::find()
        .filter(users::Column::Email.eq(account.as_str()))
        .one(db)
        .await?;
    let stored = user.as_ref().map(|u| u.password_hash.clone());
    let password_ok = hasher.verify(slot, password, stored).await?;
    let user = match user {
        Some(user)
            if password_ok && user.status == "active" && partner_matches(&user, host_partner) =>
        {
            user
        }
        _ => return Err(Error::InvalidCredentials),
    };
    let kind = Role::parse(&user.role).map_or(NodeKind::Store, Role::kind);
    if tenancy::is_blocked(db, &place_of_user(&user, kind)).await? {
        return Err(Error::InvalidCredentials);
    }
    // The attempt succeeded: it no longer counts against the account or the address.
    login_failures::Entity::delete_by_id(attempt)
        .exec(db)
        .await?;
    let token = random_token(32)?;
    let now = Utc::now();
    let expires_at = now + ttl;
    sessions::ActiveModel {
        id: Set(Uuid::now_v7().to_string()),
        token_hash: Set(digest(&token)),
        user_id: Set(user.id.clone()),
        partner_scope: Set(host_partner.map(str::to_owned)),
        created_at: Set(now),
        expires_at: Set(expires_at),
        revoked_at: Set(None),
    }
    .insert(db)
    .await?;
    Ok(Login {
        token: SecretString::from(token),
        expires_at,
        user: user.into(),
    })
}

fn partner_matches(user: &users::Model, host_partner: Option<&str>) -> bool {
    match host_partner {
        // A partner's domain serves that partner's accounts only.
        Some(partner) => user.partner_id.as_deref() == Some(partner),
        // The platform console serves the platform's own accounts only.
        None => user.partner_id.is_none(),
    }
}

/// The account behind a session token, used on a host of `host_partner`. One read — the
/// session, its account and whether any node from the account's up to the partner is
/// suspended — as every signed-in request asks it.
pub(super) async fn authenticate_session(
    db: &impl ConnectionTrait,
    token: &str,
    host_partner: Option<&str>,
) -> Result<Principal, Error> {
    #[derive(sea_orm::FromQueryResult)]
    struct Row {
        session_id: String,
        revoked_at: Option<DateTime<Utc>>,
        expires_at: DateTime<Utc>,
        partner_scope: Option<String>,
        user_id: String,
        email: String,
        role: String,
        status: String,
        node_id: String,
        partner_id: Option<String>,
        agent_id: Option<String>,
        merchant_id: Option<String>,
        store_id: Option<String>,
        suspended: i64,
    }
    let row: Row = crate::db::sql::query(
        "SELECT s.id AS session_id, s.revoked_at, s.expires_at, s.partner_scope, \
         u.id AS user_id, u.email, u.role, u.status, u.node_id, u.partner_id, u.agent_id, \
         u.merchant_id, u.store_id, \
         (SELECT COUNT(*) FROM nodes n WHERE n.status = ? AND n.id IN \
          (u.node_id, u.partner_id, u.agent_id, u.merchant_id, u.store_id)) AS suspended \
         FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.token_hash = ?",
        [
            tenancy::NodeStatus::Suspended.as_str().into(),
            digest(token).into(),
        ],
    )
    .one(db)
    .await?
    .ok_or(Error::Unauthenticated)?;
    if row.revoked_at.is_some()
        || row.expires_at <= Utc::now()
        || row.partner_scope.as_deref() != host_partner
        || row.status != "active"
    {
        return Err(Error::Unauthenticated);
    }
    let role = Role::parse(&row.role).ok_or(Error::Unauthenticated)?;
    if row.suspended > 0 {
        return Err(Error::Suspended);
    }
    Ok(Principal {
        kind: PrincipalKind::User,
        id: row.user_id,
        label: row.email,
        role,
        place: tenancy::Place {
            id: row.node_id,
            kind: role.kind(),
            partner_id: row.partner_id,
            agent_id: row.agent_id,
            merchant_id: row.merchant_id,
            store_id: row.store_id,
        },
        session_id: Some(row.session_id),
    })
}

/// Ends one session.
pub async fn logout(db: &impl ConnectionTrait, session_id: &str) -> Result<(), Error> {
    sessions::Entity::update_many()
        .col_expr(
            sessions::Column::RevokedAt,
            sea_orm::sea_query::Expr::value(Utc::now()),
        )
        .filter(sessions::Column::Id.eq(session_id))
        .exec(db)
        .await?;
    Ok(())
}

/// Revokes every session of `user_id` except `keep`.
pub async fn revoke_sessions(
    db: &impl ConnectionTrait,
    user_id: &str,
    keep: Option<&str>,
) -> Result<(), Error> {
    let mut query = sessions::Entity::update_many()
        .col_expr(
            sessions::Column::RevokedAt,
            sea_orm::sea_query::Expr::value(Utc::now()),
        )
        .filter(sessions::Column::UserId.eq(user_id))
        .filter(sessions::Column::RevokedAt.is_null());
    if let Some(keep) = keep {
        query = query.filter(sessions::Column::Id.ne(keep));
    }
    query.exec(db).await?;
    Ok(())
}
