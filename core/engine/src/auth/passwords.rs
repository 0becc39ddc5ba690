//! Password rules and hashing: what a password must be, and the Argon2id hash stored for it.
//!
//! Invariant: nothing looks at a password's content but the length rules and Argon2id; what is
//! stored is the PHC string under a fresh salt, never the password.

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use secrecy::{ExposeSecret, SecretString};

use super::Error;

/// Shortest password accepted for an account.
pub const MIN_PASSWORD_LEN: usize = 10;
/// Longest password accepted: Argon2 would take any length, but a megabyte "password" is abuse.
pub const MAX_PASSWORD_LEN: usize = 256;

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
pub(super) fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| {
        hash_password(&SecretString::from("decoy-password-never-matches")).unwrap_or_default()
    })
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
