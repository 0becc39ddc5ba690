//! Authentication and accounts: who is calling.
//!
//! Invariant: a password, session token or API key in clear exists only in the request that
//! carries it (and once, in the response that creates it); what is stored is an Argon2id hash
//! (passwords) or a SHA-256 digest (high-entropy tokens), and nothing here logs either.

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Duration, Utc};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, Set,
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::db::entity::{api_keys, login_failures, sessions, users};
use crate::db::{Page, Paged, fetch_page};
use crate::rbac::{Action, Grant, SubjectRef};
use crate::tenancy::{self, NodeKind, Place, Role, scope_condition};

mod throttle;

use throttle::reserve_attempt;
pub use throttle::{HashSlot, Hasher};

/// Shortest password accepted for an account.
pub const MIN_PASSWORD_LEN: usize = 10;
/// Longest password accepted: Argon2 would take any length, but a megabyte "password" is abuse.
pub const MAX_PASSWORD_LEN: usize = 256;
/// API keys start with this, so they are told from session tokens (and found by secret scanners).
pub const API_KEY_PREFIX: &str = "trk_";
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

/// Checks the length rules without looking at the content beyond counting characters.
pub fn validate_password(password: &SecretString) -> Result<(), Error> {
    let len = password.expose_secret().chars().count();
    if len < MIN_PASSWORD_LEN {
        return Err(Error::PasswordTooShort);
    }
    if len > MAX_PASSWORD_LEN {
        return Err(Error::PasswordTooLong);
    }
    Ok(())
}

/// The PHC string (`$argon2id$v=19$…`) of `password` under a fresh random salt.
pub fn hash_password(password: &SecretString) -> Result<String, Error> {
    validate_password(password)?;
    Argon2::default()
        .hash_password(password.expose_secret().as_bytes())
        .map(|hash| hash.to_string())
        .map_err(|_| Error::Hash)
}

/// Whether `password` matches the stored PHC string. A malformed stored hash never matches.
pub fn verify_password(password: &SecretString, stored: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(stored) else {
        return false;
    };
    Argon2::default()
        .verify_password(password.expose_secret().as_bytes(), &parsed)
        .is_ok()
}

/// A hash to verify against when the account does not exist, so a wrong email costs the same
/// time as a wrong password and response timing does not reveal which accounts exist.
fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| {
        hash_password(&SecretString::from("decoy-password-never-matches")).unwrap_or_default()
    })
}

fn digest(token: &str) -> String {
    let hash = Sha256::digest(token.as_bytes());
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

fn random_token(bytes: usize) -> Result<String, Error> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|_| Error::Hash)?;
    Ok(URL_SAFE_NO_PAD.encode(buf))
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
        api_keys::Entity::update_many()
            .col_expr(
                api_keys::Column::RevokedAt,
                sea_orm::sea_query::Expr::value(Utc::now()),
            )
            .filter(api_keys::Column::CreatedBy.eq(user_id))
            .filter(api_keys::Column::RevokedAt.is_null())
            .exec(db)
            .await?;
    }
    Ok(model.into())
}

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

/// The principal behind a session token or API key, used on a host of `host_partner`.
pub async fn authenticate(
    db: &impl ConnectionTrait,
    token: &str,
    host_partner: Option<&str>,
) -> Result<Principal, Error> {
    if token.starts_with(API_KEY_PREFIX) {
        return authenticate_key(db, token).await;
    }
    let session = sessions::Entity::find()
        .filter(sessions::Column::TokenHash.eq(digest(token)))
        .one(db)
        .await?
        .ok_or(Error::Unauthenticated)?;
    if session.revoked_at.is_some()
        || session.expires_at <= Utc::now()
        || session.partner_scope.as_deref() != host_partner
    {
        return Err(Error::Unauthenticated);
    }
    let user = users::Entity::find_by_id(session.user_id.as_str())
        .one(db)
        .await?
        .ok_or(Error::Unauthenticated)?;
    if user.status != "active" {
        return Err(Error::Unauthenticated);
    }
    let role = Role::parse(&user.role).ok_or(Error::Unauthenticated)?;
    let place = place_of_user(&user, role.kind());
    if tenancy::is_blocked(db, &place).await? {
        return Err(Error::Suspended);
    }
    Ok(Principal {
        kind: PrincipalKind::User,
        id: user.id,
        label: user.email,
        role,
        place,
        session_id: Some(session.id),
    })
}

async fn authenticate_key(db: &impl ConnectionTrait, token: &str) -> Result<Principal, Error> {
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

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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

impl Error {
    /// Whether an attempt was refused before any password was checked (throttled, or the
    /// hashing queue full): nothing about the account was learnt or tried.
    pub fn refused_before_check(&self) -> bool {
        matches!(self, Self::Throttled { .. } | Self::Busy)
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

    #[test]
    fn a_hash_is_argon2id_salted_and_verifies_only_the_same_password() {
        let password = SecretString::from("correct horse battery");
        let first = hash_password(&password).unwrap();
        let second = hash_password(&password).unwrap();
        assert!(first.starts_with("$argon2id$"), "{first}");
        assert_ne!(first, second, "each hash has its own salt");
        assert!(!first.contains("correct horse"));
        assert!(verify_password(&password, &first));
        assert!(!verify_password(
            &SecretString::from("correct horse battery!"),
            &first
        ));
        assert!(!verify_password(&password, "not a phc string"));
    }

    #[test]
    fn short_and_huge_passwords_are_refused() {
        assert!(matches!(
            hash_password(&SecretString::from("short")),
            Err(Error::PasswordTooShort)
        ));
        assert!(matches!(
            hash_password(&SecretString::from("x".repeat(MAX_PASSWORD_LEN + 1))),
            Err(Error::PasswordTooLong)
        ));
    }

    #[test]
    fn tokens_are_random_and_stored_as_digests() {
        let a = random_token(32).unwrap();
        let b = random_token(32).unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert_eq!(digest(&a).len(), 64);
        assert_ne!(digest(&a), a);
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
