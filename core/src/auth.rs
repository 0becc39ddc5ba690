//! Authentication and accounts: who is calling. Passwords are hashed with Argon2id and a
//! per-user random salt.
//!
//! Invariant: a password or token in clear exists only in the request that carries it; what is
//! stored, logged or returned is a hash or nothing.

use argon2::Argon2;
use chrono::Utc;
use sea_orm::{ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, Set};
use uuid::Uuid;

use crate::db::entity::users;
use crate::tenancy;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use secrecy::{ExposeSecret, SecretString};

/// Shortest password accepted for an account.
pub const MIN_PASSWORD_LEN: usize = 10;
/// Longest password accepted: Argon2 would take any length, but a megabyte "password" is abuse.
pub const MAX_PASSWORD_LEN: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("password must be at least {MIN_PASSWORD_LEN} characters")]
    PasswordTooShort,
    #[error("password must be at most {MAX_PASSWORD_LEN} characters")]
    PasswordTooLong,
    #[error("password hashing failed")]
    Hash,
    #[error("an account with email {0} already exists")]
    EmailTaken(String),
    #[error(transparent)]
    Tenancy(#[from] tenancy::Error),
    #[error("database error: {0}")]
    Db(#[from] sea_orm::DbErr),
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

/// Creates a platform administrator; the bootstrap path behind `trellis admin create`.
pub async fn create_platform_admin(
    db: &impl ConnectionTrait,
    email: &str,
    password: &SecretString,
) -> Result<users::Model, Error> {
    let email = tenancy::normalize_email(email)?;
    let hash = hash_password(password)?;
    let platform = tenancy::ensure_platform(db).await?;
    if users::Entity::find()
        .filter(users::Column::Email.eq(&email))
        .one(db)
        .await?
        .is_some()
    {
        return Err(Error::EmailTaken(email));
    }
    let now = Utc::now();
    let user = users::ActiveModel {
        id: Set(Uuid::now_v7().to_string()),
        node_id: Set(platform.id),
        partner_id: Set(None),
        agent_id: Set(None),
        merchant_id: Set(None),
        email: Set(email),
        password_hash: Set(hash),
        role: Set("platform_admin".to_owned()),
        status: Set("active".to_owned()),
        created_at: Set(now),
        updated_at: Set(now),
    };
    Ok(user.insert(db).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
