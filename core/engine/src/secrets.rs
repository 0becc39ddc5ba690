//! Secrets at rest: merchant private keys and AES keys are sealed with AES-256-GCM under the
//! master key from configuration before they touch the database.
//!
//! Invariant: a sealed value names the key that sealed it (its key id) and is bound to the row
//! and field it belongs to (the AAD), so a ciphertext copied to another merchant's row does not
//! open; plaintext secrets exist only in memory, inside `secrecy` types.

use std::collections::HashMap;

use aws_lc_rs::aead::{AES_256_GCM, Aad, Nonce, RandomizedNonceKey};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use secrecy::{ExposeSecret, SecretBox, SecretString};

use crate::config::{SecretsConfig, decode_master_key};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("secrets.master_key is not configured, so secrets cannot be stored or read")]
    NoMasterKey,
    #[error(
        "the secret was sealed with key {0}, which is not configured (add it to secrets.previous_master_keys)"
    )]
    UnknownKey(String),
    #[error("the secret does not open: wrong key, wrong row, or tampered")]
    Corrupt,
    #[error("invalid master key in {0}")]
    BadKey(&'static str),
}

/// A sealed secret as stored: which key sealed it, and `base64(nonce || ciphertext || tag)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub key_id: String,
    pub blob: String,
}

/// The configured master keys: the current one seals, every one opens.
pub struct Vault {
    current: Option<String>,
    keys: HashMap<String, RandomizedNonceKey>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("current", &self.current)
            .field("keys", &self.keys.len())
            .finish()
    }
}

/// A short public name for a master key: the first 12 hex digits of its SHA-256.
pub fn key_id(key: &[u8; 32]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key);
    digest.as_ref()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Vault {
    pub fn from_config(config: &SecretsConfig) -> Result<Self, Error> {
        let mut keys = HashMap::new();
        let mut current = None;
        if let Some(master) = &config.master_key {
            let bytes = decode_master_key(master).ok_or(Error::BadKey("secrets.master_key"))?;
            let id = key_id(&bytes);
            keys.insert(
                id.clone(),
                RandomizedNonceKey::new(&AES_256_GCM, &bytes)
                    .map_err(|_| Error::BadKey("secrets.master_key"))?,
            );
            current = Some(id);
        }
        for previous in &config.previous_master_keys {
            let bytes =
                decode_master_key(previous).ok_or(Error::BadKey("secrets.previous_master_keys"))?;
            let key = RandomizedNonceKey::new(&AES_256_GCM, &bytes)
                .map_err(|_| Error::BadKey("secrets.previous_master_keys"))?;
            keys.entry(key_id(&bytes)).or_insert(key);
        }
        Ok(Self { current, keys })
    }

    pub fn current_key_id(&self) -> Option<&str> {
        self.current.as_deref()
    }

    pub fn is_configured(&self) -> bool {
        self.current.is_some()
    }

    /// Seals `plaintext` for the field named by `aad` (e.g. `alipay:<merchant>:app_private_key`).
    pub fn seal(&self, plaintext: &[u8], aad: &str) -> Result<Sealed, Error> {
        let id = self.current.as_ref().ok_or(Error::NoMasterKey)?;
        let key = self.keys.get(id).ok_or(Error::NoMasterKey)?;
        let mut data = plaintext.to_vec();
        let nonce = key
            .seal_in_place_append_tag(Aad::from(aad.as_bytes()), &mut data)
            .map_err(|_| Error::Corrupt)?;
        let mut blob = nonce.as_ref().to_vec();
        blob.extend_from_slice(&data);
        Ok(Sealed {
            key_id: id.clone(),
            blob: STANDARD.encode(blob),
        })
    }

    pub fn seal_str(&self, secret: &SecretString, aad: &str) -> Result<Sealed, Error> {
        self.seal(secret.expose_secret().as_bytes(), aad)
    }

    /// Opens a sealed value for the same `aad` it was sealed for.
    pub fn open(&self, sealed: &Sealed, aad: &str) -> Result<SecretBox<Vec<u8>>, Error> {
        let key = self
            .keys
            .get(&sealed.key_id)
            .ok_or_else(|| Error::UnknownKey(sealed.key_id.clone()))?;
        let blob = STANDARD
            .decode(sealed.blob.as_bytes())
            .map_err(|_| Error::Corrupt)?;
        if blob.len() < 12 + 16 {
            return Err(Error::Corrupt);
        }
        let (nonce, rest) = blob.split_at(12);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| Error::Corrupt)?;
        let mut data = rest.to_vec();
        let plain = key
            .open_in_place(nonce, Aad::from(aad.as_bytes()), &mut data)
            .map_err(|_| Error::Corrupt)?;
        Ok(SecretBox::new(Box::new(plain.to_vec())))
    }

    pub fn open_str(&self, sealed: &Sealed, aad: &str) -> Result<SecretString, Error> {
        let bytes = self.open(sealed, aad)?;
        String::from_utf8(bytes.expose_secret().clone())
            .map(SecretString::from)
            .map_err(|_| Error::Corrupt)
    }

    /// Re-seals under the current key if another key sealed it; `None` when already current.
    pub fn reseal(&self, sealed: &Sealed, aad: &str) -> Result<Option<Sealed>, Error> {
        if Some(&sealed.key_id) == self.current.as_ref() {
            return Ok(None);
        }
        let plain = self.open(sealed, aad)?;
        self.seal(plain.expose_secret(), aad).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(current: Option<&str>, previous: &[&str]) -> SecretsConfig {
        SecretsConfig {
            master_key: current.map(|k| SecretString::from(k.to_owned())),
            previous_master_keys: previous
                .iter()
                .map(|k| SecretString::from((*k).to_owned()))
                .collect(),
        }
    }

    const A: &str = "rxdDeQt/WK1uQUgQy7DkCIKU/VZNEnlqiyU+e660LzQ=";
    const B: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    #[test]
    fn sealing_is_randomised_bound_to_its_row_and_opens_only_there() {
        let vault = Vault::from_config(&config(Some(A), &[])).unwrap();
        let one = vault
            .seal(b"private key", "alipay:m1:app_private_key")
            .unwrap();
        let two = vault
            .seal(b"private key", "alipay:m1:app_private_key")
            .unwrap();
        assert_ne!(one.blob, two.blob, "a fresh nonce each time");
        assert!(!one.blob.contains("private"));
        assert_eq!(
            vault
                .open(&one, "alipay:m1:app_private_key")
                .unwrap()
                .expose_secret(),
            b"private key"
        );
        assert!(matches!(
            vault.open(&one, "alipay:m2:app_private_key"),
            Err(Error::Corrupt)
        ));
        let mut tampered = one.clone();
        tampered
            .blob
            .replace_range(20..21, if &one.blob[20..21] == "A" { "B" } else { "A" });
        assert!(vault.open(&tampered, "alipay:m1:app_private_key").is_err());
    }

    #[test]
    fn rotation_opens_old_values_and_reseals_them_under_the_new_key() {
        let old = Vault::from_config(&config(Some(A), &[])).unwrap();
        let sealed = old.seal(b"s", "x").unwrap();
        let rotated = Vault::from_config(&config(Some(B), &[A])).unwrap();
        assert_eq!(rotated.open(&sealed, "x").unwrap().expose_secret(), b"s");
        let resealed = rotated.reseal(&sealed, "x").unwrap().unwrap();
        assert_eq!(resealed.key_id, rotated.current_key_id().unwrap());
        assert!(rotated.reseal(&resealed, "x").unwrap().is_none());
        let new_only = Vault::from_config(&config(Some(B), &[])).unwrap();
        assert!(matches!(
            new_only.open(&sealed, "x"),
            Err(Error::UnknownKey(_))
        ));
    }

    #[test]
    fn without_a_master_key_nothing_is_sealed() {
        let vault = Vault::from_config(&config(None, &[])).unwrap();
        assert!(matches!(vault.seal(b"s", "x"), Err(Error::NoMasterKey)));
    }
}
