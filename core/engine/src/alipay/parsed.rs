//! Merchants' Alipay keys, parsed once: parsing an RSA key validates it, which costs more than
//! signing or verifying with it, and every notification and every trade would otherwise parse
//! its merchant's keys again.
//!
//! Invariant: an entry is keyed by what was parsed — a public key's text, a private key's
//! sealed blob (its ciphertext, so no secret is a key here) with the merchant it is sealed
//! for — so a changed key is another entry and a hit is never a stale key. The cache starts
//! over past `MAX_ENTRIES` distinct keys.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use super::{PrivateKey, PublicKey};

/// Distinct keys kept at most, per kind.
const MAX_ENTRIES: usize = 4_096;

static PUBLIC: LazyLock<Mutex<HashMap<String, PublicKey>>> = LazyLock::new(Default::default);
static PRIVATE: LazyLock<Mutex<HashMap<String, PrivateKey>>> = LazyLock::new(Default::default);

fn cached<K: Clone, E>(
    cache: &Mutex<HashMap<String, K>>,
    key: &str,
    parse: impl FnOnce() -> Result<K, E>,
) -> Result<K, E> {
    if let Some(hit) = cache.lock().ok().and_then(|c| c.get(key).cloned()) {
        return Ok(hit);
    }
    let parsed = parse()?;
    if let Ok(mut entries) = cache.lock() {
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(key.to_owned(), parsed.clone());
    }
    Ok(parsed)
}

/// The public key `text` names (PEM or bare base64), parsed once.
pub fn public_key(text: &str) -> Result<PublicKey, super::Error> {
    cached(&PUBLIC, text, || PublicKey::parse(text))
}

/// The private key sealed as `sealed` for `merchant_id`; `open` unseals and parses it on a
/// miss.
pub fn private_key<E>(
    merchant_id: &str,
    sealed: &str,
    open: impl FnOnce() -> Result<PrivateKey, E>,
) -> Result<PrivateKey, E> {
    cached(&PRIVATE, &format!("{merchant_id}\n{sealed}"), open)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_key_is_parsed_anew_and_an_unchanged_one_is_not() {
        let first = PrivateKey::generate().unwrap();
        let second = PrivateKey::generate().unwrap();
        let mut opened = 0;
        let mut open = |key: &PrivateKey| {
            opened += 1;
            Ok::<_, ()>(key.clone())
        };
        let a = private_key("m-cache", "blob-1", || open(&first)).unwrap();
        let again = private_key("m-cache", "blob-1", || open(&second)).unwrap();
        let b = private_key("m-cache", "blob-2", || open(&second)).unwrap();
        assert_eq!(opened, 2);
        assert_eq!(
            a.public_key().fingerprint(),
            first.public_key().fingerprint()
        );
        assert_eq!(
            again.public_key().fingerprint(),
            first.public_key().fingerprint()
        );
        assert_eq!(
            b.public_key().fingerprint(),
            second.public_key().fingerprint()
        );
        let text = first.public_key().to_base64();
        assert_eq!(
            public_key(&text).unwrap().fingerprint(),
            first.public_key().fingerprint()
        );
        assert!(public_key("not a key").is_err());
    }
}
