//! Authentication and accounts: who is calling (a [`Principal`]) and the accounts behind it.
//! Passwords, sessions and API keys each have their own file below; this one keeps accounts.
//!
//! Invariant: a password, session token or API key in clear exists only in the request that
//! carries it (and once, in the response that creates it); what is stored is an Argon2id hash
//! (passwords) or a SHA-256 digest (high-entropy tokens), and nothing here logs either.

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, Set,
};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::db::entity::{login_failures, users};
use crate::db::{Page, Paged, fetch_page};
use crate::rbac::{Action, Grant, SubjectRef};
use crate::tenancy::{self, NodeKind, Place, Role, scope_condition};

mod api_keys;
mod passwords;
mod sessions;
mod throttle;
mod tokens;

pub use api_keys::{
    API_KEY_PREFIX, ApiKey, NewApiKey, create_api_key, find_api_key_in_scope, list_api_keys,
    revoke_api_key,
};
pub use passwords::{
    MAX_PASSWORD_LEN, MIN_PASSWORD_LEN, hash_password, validate_password, verify_password,
};
pub use sessions::{Login, login, logout, revoke_sessions};
use throttle::reserve_attempt;
pub use throttle::{HashSlot, Hasher};

/// Failed sign-ins that lock an account (or an IP, at [`IP_FAILURE_LIMIT`]) for the window.
pub const ACCOUNT_FAILURE_LIMIT: u64 = 5;
pub const IP_FAILURE_LIMIT: u64 = 20;
/// The throttling window, in seconds.
pub const FAILURE_WINDOW_SECS: i64 = 15 * 60;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("password must be at least {MIN_PASSWORD_LEN} characters")]
    PasswordTooShort,
    #[error("password must be at most {MAX_PASSWORD_LEN} characters")]
    PasswordTooLong,
    #[error("password hashing failed")]
    Hash,
    #[error("{0:?} is not a valid email address")]
    InvalidEmail(String),
    #[error("an account with email {0} already exists")]
    EmailTaken(String),
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("email or password is wrong")]
    InvalidCredentials,
    #[error("too many failed sign-ins; try again in {retry_after} seconds")]
    Throttled { retry_after: u64 },
    #[error("too many sign-ins at once; try again shortly")]
    Busy,
    #[error("API keys cannot manage passwords, API keys or sessions; sign in to do this")]
    ApiKeyRefused,
    #[error(
        "only an account of a higher tier may set another account's password or status; change your own password at /api/v1/auth/password"
    )]
    NotAbove,
    #[error("authentication required")]
    Unauthenticated,
    #[error("this account, or a node above it, is suspended")]
    Suspended,
    #[error("user {0} not found")]
    UserNotFound(String),
    #[error("API key {0} not found")]
    KeyNotFound(String),
    #[error(transparent)]
    Tenancy(#[from] tenancy::Error),
    #[error(transparent)]
    Rbac(#[from] Box<crate::rbac::Error>),
    #[error("database error: {0}")]
    Db(#[from] sea_orm::DbErr),
}

fn invalid(field: &'static str, message: impl Into<String>) -> Error {
    Error::Invalid {
        field,
        message: message.into(),
    }
}

/// Lower-cases and checks an email address: one `@`, a non-empty local part, a dotted domain,
/// no whitespace, at most 254 characters.
pub fn normalize_email(raw: &str) -> Result<String, Error> {
    let email = raw.trim().to_lowercase();
    let valid = email.len() <= 254
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && match email.split_once('@') {
            Some((local, domain)) => {
                !local.is_empty()
                    && !domain.contains('@')
                    && domain.contains('.')
                    && !domain.starts_with('.')
                    && !domain.ends_with('.')
            }
            None => false,
        };
    if valid {
        Ok(email)
    } else {
        Err(Error::InvalidEmail(raw.trim().to_owned()))
    }
}

impl Error {
    /// Whether an attempt was refused before any password was checked (throttled, or the
    /// hashing queue full): nothing about the account was learnt or tried.
    pub fn refused_before_check(&self) -> bool {
        matches!(self, Self::Throttled { .. } | Self::Busy)
    }
}

/// Who is calling: an account through its session, or a machine through its API key.
#[derive(Debug, Clone)]
pub struct Principal {
    pub kind: PrincipalKind,
    /// The account's or key's id.
    pub id: String,
    /// The email of an account, the name of a key: what the audit log shows.
    pub label: String,
    pub role: Role,
    /// The node the principal stands on.
    pub place: Place,
    pub session_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrincipalKind {
    User,
    ApiKey,
}

impl Principal {
    pub fn casbin_subject(&self) -> String {
        crate::rbac::casbin_subject(self.subject_ref())
    }

    pub fn subject_ref(&self) -> SubjectRef<'_> {
        match self.kind {
            PrincipalKind::User => SubjectRef::User(&self.id),
            PrincipalKind::ApiKey => SubjectRef::ApiKey(&self.id),
        }
    }
}

/// Credentials (passwords, API keys, sessions) are managed by accounts only (a signed-in
/// session, or the operator at the server's shell): a leaked API key must not be able to mint
/// more keys or take over the account that made it.
pub fn require_session(actor: &Principal) -> Result<(), Error> {
    match actor.kind {
        PrincipalKind::User => Ok(()),
        PrincipalKind::ApiKey => Err(Error::ApiKeyRefused),
    }
}

/// The principal behind a session token or API key, used on a host of `host_partner`.
pub async fn authenticate(
    db: &impl ConnectionTrait,
    token: &str,
    host_partner: Option<&str>,
) -> Result<Principal, Error> {
    if token.starts_with(API_KEY_PREFIX) {
        return api_keys::authenticate_key(db, token).await;
    }
    sessions::authenticate_session(db, token, host_partner).await
}

/// An account as the API shows it (never its hash).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct User {
    pub id: String,
    pub email: String,
    pub role: Role,
    pub node_id: String,
    pub status: String,
    pub created_at: DateTime<Utc>,
}

impl From<users::Model> for User {
    fn from(model: users::Model) -> Self {
        Self {
            role: Role::parse(&model.role).unwrap_or(Role::MerchantStaff),
            id: model.id,
            email: model.email,
            node_id: model.node_id,
            status: model.status,
            created_at: model.created_at,
        }
    }
}

fn place_of_user(model: &users::Model, kind: NodeKind) -> Place {
    Place {
        id: model.node_id.clone(),
        kind,
        partner_id: model.partner_id.clone(),
        agent_id: model.agent_id.clone(),
        merchant_id: model.merchant_id.clone(),
        store_id: model.store_id.clone(),
    }
}

/// Creates a platform administrator: the bootstrap path behind `trellis admin create`, the one
/// account creation that needs no grant because it runs with shell access to the server.
pub async fn create_platform_admin(
    db: &impl ConnectionTrait,
    email: &str,
    password: &SecretString,
) -> Result<users::Model, Error> {
    let email = normalize_email(email)?;
    let hash = hash_password(password)?;
    let platform = tenancy::ensure_platform(db).await?;
    let user = insert_user(db, &platform, &email, hash, Role::PlatformAdmin).await?;
    crate::rbac::bump_policy_version(db)
        .await
        .map_err(Box::new)?;
    Ok(user)
}

async fn insert_user(
    db: &impl ConnectionTrait,
    place: &Place,
    email: &str,
    password_hash: String,
    role: Role,
) -> Result<users::Model, Error> {
    if users::Entity::find()
        .filter(users::Column::Email.eq(email))
        .one(db)
        .await?
        .is_some()
    {
        return Err(Error::EmailTaken(email.to_owned()));
    }
    let now = Utc::now();
    Ok(users::ActiveModel {
        id: Set(Uuid::now_v7().to_string()),
        node_id: Set(place.id.clone()),
        partner_id: Set(place.partner_id.clone()),
        agent_id: Set(place.agent_id.clone()),
        merchant_id: Set(place.merchant_id.clone()),
        store_id: Set(place.store_id.clone()),
        email: Set(email.to_owned()),
        password_hash: Set(password_hash),
        role: Set(role.as_str().to_owned()),
        status: Set("active".to_owned()),
        created_at: Set(now),
        updated_at: Set(now),
    }
    .insert(db)
    .await?)
}

/// Input for a new account.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct NewUser {
    pub email: String,
    #[schema(value_type = String, format = Password)]
    pub password: SecretString,
    /// Defaults to the role of the node's tier; any other role is refused.
    #[serde(default)]
    pub role: Option<Role>,
}

/// Creates an account on the grant's target node, with the role of that node's tier.
/// Only accounts create accounts: an API key that could create one with a password of its
/// choosing could sign in as it and manage credentials after all.
pub async fn create_user(
    db: &impl ConnectionTrait,
    hasher: &Hasher,
    grant: &Grant,
    input: NewUser,
) -> Result<User, Error> {
    if grant.action() != Action::UserCreate {
        return Err(invalid(
            "node_id",
            "this grant does not allow creating accounts",
        ));
    }
    require_session(grant.actor())?;
    let place = grant.target();
    let role = tier_role(place, input.role)?;
    let email = normalize_email(&input.email)?;
    validate_password(&input.password)?;
    // A taken email costs no hash.
    if users::Entity::find()
        .filter(users::Column::Email.eq(email.as_str()))
        .one(db)
        .await?
        .is_some()
    {
        return Err(Error::EmailTaken(email));
    }
    let hash = hasher.hash(&input.password).await?;
    Ok(insert_user(db, place, &email, hash, role).await?.into())
}

fn tier_role(place: &Place, requested: Option<Role>) -> Result<Role, Error> {
    let role = Role::for_kind(place.kind);
    match requested {
        Some(requested) if requested != role => Err(invalid(
            "role",
            format!(
                "a {} node takes the {} role only",
                place.kind.as_str(),
                role.as_str()
            ),
        )),
        _ => Ok(role),
    }
}

/// Filters for account lists.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
pub struct UserFilter {
    /// Only accounts on this node.
    pub node_id: Option<String>,
    /// Substring of the email.
    pub q: Option<String>,
}

pub async fn list_users(
    db: &impl ConnectionTrait,
    scope: &Place,
    filter: &UserFilter,
    page: Page,
) -> Result<Paged<User>, Error> {
    let mut query = users::Entity::find().filter(scope_condition(scope));
    if let Some(node) = &filter.node_id {
        query = query.filter(users::Column::NodeId.eq(node.as_str()));
    }
    if let Some(q) = filter.q.as_deref().map(str::trim).filter(|q| !q.is_empty()) {
        query = query.filter(users::Column::Email.contains(q.to_lowercase()));
    }
    let (rows, total) = fetch_page(db, query.order_by_asc(users::Column::Email), page).await?;
    Ok(page.wrap(rows.into_iter().map(User::from).collect(), total))
}

/// Account `id` and where it sits, if it is inside `scope`; `UserNotFound` otherwise.
pub async fn find_user_in_scope(
    db: &impl ConnectionTrait,
    scope: &Place,
    id: &str,
) -> Result<(User, Place), Error> {
    let model = users::Entity::find_by_id(id)
        .filter(scope_condition(scope))
        .one(db)
        .await?
        .ok_or_else(|| Error::UserNotFound(id.to_owned()))?;
    let kind = Role::parse(&model.role).map_or(NodeKind::Store, Role::kind);
    let place = place_of_user(&model, kind);
    Ok((model.into(), place))
}

/// A change to an account; absent fields stay.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
pub struct UserPatch {
    /// `active` or `disabled`; disabling revokes every session.
    #[serde(default)]
    pub status: Option<String>,
    /// Sets a new password and revokes every session.
    #[serde(default)]
    #[schema(value_type = Option<String>, format = Password)]
    pub password: Option<SecretString>,
}

/// Updates account `user_id`, which must stand on the grant's target node.
///
/// An account's status and password are changed only by an account (never an API key) of a
/// strictly higher tier: a peer or the account itself cannot undo what the tier above decided,
/// and one's own password changes at `/auth/password` with the current one. Disabling an
/// account ends its sessions and revokes the API keys it created.
pub async fn update_user(
    db: &impl ConnectionTrait,
    hasher: &Hasher,
    grant: &Grant,
    user_id: &str,
    patch: UserPatch,
) -> Result<User, Error> {
    if grant.action() != Action::UserUpdate {
        return Err(invalid("id", "this grant does not allow changing accounts"));
    }
    if patch.status.is_some() || patch.password.is_some() {
        require_session(grant.actor())?;
        if grant.actor().place.kind.depth() >= grant.target().kind.depth() {
            return Err(Error::NotAbove);
        }
    }
    let model = users::Entity::find_by_id(user_id)
        .filter(users::Column::NodeId.eq(grant.target().id.as_str()))
        .one(db)
        .await?
        .ok_or_else(|| Error::UserNotFound(user_id.to_owned()))?;
    let mut revoke = false;
    let mut active: users::ActiveModel = model.into();
    if let Some(status) = &patch.status {
        if status != "active" && status != "disabled" {
            return Err(invalid("status", "must be \"active\" or \"disabled\""));
        }
        revoke |= status == "disabled";
        active.status = Set(status.clone());
    }
    if let Some(password) = &patch.password {
        active.password_hash = Set(hasher.hash(password).await?);
        revoke = true;
    }
    active.updated_at = Set(Utc::now());
    let model = active.update(db).await?;
    if revoke {
        revoke_sessions(db, user_id, None).await?;
    }
    if patch.status.as_deref() == Some("disabled") {
        api_keys::revoke_keys_created_by(db, user_id).await?;
    }
    Ok(model.into())
}

/// Changes the caller's own password after checking the current one; other sessions end.
/// The current password is checked like a sign-in (counted first, against the same limits, on
/// the hasher's threads), so a stolen session cannot use this to guess it.
pub async fn change_password(
    db: &sea_orm::DatabaseConnection,
    hasher: &Hasher,
    principal: &Principal,
    ip: &str,
    current: &SecretString,
    new: &SecretString,
) -> Result<(), Error> {
    if principal.kind != PrincipalKind::User {
        return Err(invalid("current_password", "API keys have no password"));
    }
    validate_password(new).map_err(|e| invalid("new_password", e.to_string()))?;
    let user = users::Entity::find_by_id(principal.id.as_str())
        .one(db)
        .await?
        .ok_or(Error::Unauthenticated)?;
    let slot = hasher.admit()?;
    let attempt = reserve_attempt(db, &user.email, ip).await?;
    if !hasher
        .verify(slot, current, Some(user.password_hash.clone()))
        .await?
    {
        return Err(invalid("current_password", "is wrong"));
    }
    login_failures::Entity::delete_by_id(attempt)
        .exec(db)
        .await?;
    let new = new.clone();
    let hash = tokio::task::spawn_blocking(move || hash_password(&new))
        .await
        .map_err(|_| Error::Hash)?
        .map_err(|e| invalid("new_password", e.to_string()))?;
    let mut active: users::ActiveModel = user.into();
    active.password_hash = Set(hash);
    active.updated_at = Set(Utc::now());
    active.update(db).await?;
    revoke_sessions(db, &principal.id, principal.session_id.as_deref()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_email_lowercases_and_checks() {
        assert_eq!(
            normalize_email("  Ops@Example.COM ").unwrap(),
            "ops@example.com"
        );
        for bad in [
            "",
            "no-at.example.com",
            "@example.com",
            "a@b",
            "a@@b.com",
            "a b@c.com",
            "a@.com",
        ] {
            assert!(normalize_email(bad).is_err(), "{bad}");
        }
    }
}
