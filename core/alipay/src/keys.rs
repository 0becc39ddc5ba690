//! RSA keys as Alipay hands them out: app private keys in PKCS#1 or PKCS#8, PEM or the bare
//! base64 Alipay's key tool prints; public keys as SubjectPublicKeyInfo, PEM or bare base64.
//!
//! Signing and verification run on aws-lc-rs (constant time, OpenSSL speed); the `rsa` crate
//! parses and converts key encodings and signs the legacy SHA-1 variant, which aws-lc-rs's
//! ring-style API does not offer.

use std::sync::Arc;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{self as lc, KeyPair as _, ParsedPublicKey, RsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rsa::pkcs1::{DecodeRsaPrivateKey, EncodeRsaPrivateKey};
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use secrecy::{ExposeSecret, SecretBox, SecretString};
use serde::{Deserialize, Serialize};

use super::Error;

/// The signature algorithm, named as Alipay's `sign_type` parameter names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum SignType {
    /// SHA256withRSA, what Alipay recommends.
    #[serde(rename = "RSA2")]
    Rsa2,
    /// SHA1withRSA, legacy apps only.
    #[serde(rename = "RSA")]
    Rsa,
}

impl SignType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rsa2 => "RSA2",
            Self::Rsa => "RSA",
        }
    }

    /// Exactly `RSA2` or `RSA`; anything else (`rsa2`, `SM2`, empty) is refused.
    pub fn parse(text: &str) -> Result<Self, Error> {
        match text {
            "RSA2" => Ok(Self::Rsa2),
            "RSA" => Ok(Self::Rsa),
            other => Err(Error::UnsupportedSignType(other.chars().take(16).collect())),
        }
    }
}

/// The DER inside PEM armour or bare base64 (whitespace ignored). Never echoes the input.
fn der_from_text(text: &str, what: &'static str) -> Result<Vec<u8>, Error> {
    let body: String = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.starts_with("-----"))
        .collect::<Vec<_>>()
        .concat()
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    if body.is_empty() {
        return Err(Error::BadKey {
            what,
            reason: "it is empty",
        });
    }
    STANDARD.decode(body.as_bytes()).map_err(|_| Error::BadKey {
        what,
        reason: "it is not base64 (or PEM)",
    })
}

/// An app private key, ready to sign. Its `Debug` shows only the public fingerprint. Cloning
/// shares the parsed key (parsing validates it, which costs more than signing with it).
#[derive(Clone)]
pub struct PrivateKey {
    inner: Arc<PrivateParts>,
}

struct PrivateParts {
    signer: RsaKeyPair,
    /// PKCS#8 DER, kept for the legacy SHA-1 path and for re-export.
    pkcs8: SecretBox<Vec<u8>>,
    public: PublicKey,
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PrivateKey({})", self.inner.public.fingerprint())
    }
}

impl PrivateKey {
    /// Parses PKCS#8 or PKCS#1, in PEM or bare base64. Errors say what is wrong, never the key.
    pub fn parse(text: &SecretString) -> Result<Self, Error> {
        let der = SecretBox::new(Box::new(der_from_text(
            text.expose_secret(),
            "app private key",
        )?));
        Self::from_der(der.expose_secret())
    }

    /// PKCS#8 or PKCS#1 DER.
    pub fn from_der(der: &[u8]) -> Result<Self, Error> {
        let key = rsa::PrivateKey::from_pkcs8_der(der)
            .or_else(|_| rsa::PrivateKey::from_pkcs1_der(der))
            .map_err(|_| Error::BadKey {
                what: "app private key",
                reason: "it is neither a PKCS#8 nor a PKCS#1 RSA private key (wrong or truncated?)",
            })?;
        let bits = rsa::traits::PublicKeyParts::size(&key) * 8;
        if !(2048..=4096).contains(&bits) {
            return Err(Error::BadKey {
                what: "app private key",
                reason: "Alipay keys are 2048-bit RSA",
            });
        }
        let pkcs8 = key.to_pkcs8_der().map_err(|_| Error::BadKey {
            what: "app private key",
            reason: "it cannot be re-encoded",
        })?;
        let signer = RsaKeyPair::from_pkcs8(pkcs8.as_bytes()).map_err(|_| Error::BadKey {
            what: "app private key",
            reason: "it failed the consistency check",
        })?;
        let spki = key
            .to_public_key()
            .to_public_key_der()
            .map_err(|_| Error::BadKey {
                what: "app private key",
                reason: "its public half cannot be encoded",
            })?;
        let public = PublicKey::from_der(spki.as_bytes())?;
        Ok(Self {
            inner: Arc::new(PrivateParts {
                signer,
                pkcs8: SecretBox::new(Box::new(pkcs8.as_bytes().to_vec())),
                public,
            }),
        })
    }

    /// A fresh 2048-bit key pair (aws-lc-rs: fast enough to run inside a request).
    pub fn generate() -> Result<Self, Error> {
        let pair = aws_lc_rs::rsa::KeyPair::generate(KeySize::Rsa2048)
            .map_err(|_| Error::KeyGeneration)?;
        let der = pair.as_der().map_err(|_| Error::KeyGeneration)?;
        Self::from_der(der.as_ref())
    }

    pub fn public_key(&self) -> &PublicKey {
        &self.inner.public
    }

    /// `sign` of Alipay: PKCS#1 v1.5 over `content`'s UTF-8 bytes, standard base64.
    pub fn sign(&self, sign_type: SignType, content: &str) -> Result<String, Error> {
        let signature = match sign_type {
            SignType::Rsa2 => {
                let mut out = vec![0u8; self.inner.signer.public_modulus_len()];
                self.inner
                    .signer
                    .sign(
                        &lc::RSA_PKCS1_SHA256,
                        &SystemRandom::new(),
                        content.as_bytes(),
                        &mut out,
                    )
                    .map_err(|_| Error::Signing)?;
                out
            }
            SignType::Rsa => {
                // DigestInfo for SHA-1 (RFC 8017 §9.2 note 1), then a raw PKCS#1 v1.5 signature.
                const SHA1_PREFIX: [u8; 15] = [
                    0x30, 0x21, 0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a, 0x05, 0x00,
                    0x04, 0x14,
                ];
                let digest = aws_lc_rs::digest::digest(
                    &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
                    content.as_bytes(),
                );
                let mut info = SHA1_PREFIX.to_vec();
                info.extend_from_slice(digest.as_ref());
                let key = rsa::PrivateKey::from_pkcs8_der(self.inner.pkcs8.expose_secret())
                    .map_err(|_| Error::Signing)?;
                key.sign(rsa::Pkcs1v15Sign::new_unprefixed(), &info)
                    .map_err(|_| Error::Signing)?
            }
        };
        Ok(STANDARD.encode(signature))
    }

    /// PKCS#8 DER as bare base64 (what Java integrations and Alipay's key tool call "PKCS8").
    pub fn to_pkcs8_base64(&self) -> SecretString {
        SecretString::from(STANDARD.encode(self.inner.pkcs8.expose_secret()))
    }

    /// PKCS#1 DER as bare base64 ("PKCS1", what the Python and older Node SDKs want).
    pub fn to_pkcs1_base64(&self) -> Result<SecretString, Error> {
        let key = rsa::PrivateKey::from_pkcs8_der(self.inner.pkcs8.expose_secret())
            .map_err(|_| Error::Signing)?;
        let der = key.to_pkcs1_der().map_err(|_| Error::Signing)?;
        Ok(SecretString::from(STANDARD.encode(der.as_bytes())))
    }
}

/// An RSA public key (SubjectPublicKeyInfo), parsed once for verification. Cloning shares the
/// parsed key.
#[derive(Clone)]
pub struct PublicKey {
    inner: Arc<PublicParts>,
}

struct PublicParts {
    spki: Vec<u8>,
    sha256: ParsedPublicKey,
    sha1: ParsedPublicKey,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.fingerprint())
    }
}

impl PublicKey {
    /// SPKI in PEM or bare base64 (Alipay's 支付宝公钥 / 应用公钥 format).
    pub fn parse(text: &str) -> Result<Self, Error> {
        Self::from_der(&der_from_text(text, "public key")?)
    }

    /// SPKI DER (PKCS#1 `RSAPublicKey` DER is accepted too).
    pub fn from_der(der: &[u8]) -> Result<Self, Error> {
        let bad = || Error::BadKey {
            what: "public key",
            reason: "it is not an RSA public key (wrong or truncated?)",
        };
        let spki = match rsa::PublicKey::from_public_key_der(der) {
            Ok(key) => key
                .to_public_key_der()
                .map_err(|_| bad())?
                .as_bytes()
                .to_vec(),
            Err(_) => {
                use rsa::pkcs1::DecodeRsaPublicKey;
                let key = rsa::PublicKey::from_pkcs1_der(der).map_err(|_| bad())?;
                key.to_public_key_der()
                    .map_err(|_| bad())?
                    .as_bytes()
                    .to_vec()
            }
        };
        let sha256 =
            ParsedPublicKey::new(&lc::RSA_PKCS1_2048_8192_SHA256, &spki).map_err(|_| bad())?;
        let sha1 = ParsedPublicKey::new(&lc::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY, &spki)
            .map_err(|_| bad())?;
        Ok(Self {
            inner: Arc::new(PublicParts { spki, sha256, sha1 }),
        })
    }

    /// Whether `signature` (standard base64) is `sign_type`'s signature of `content`.
    pub fn verify(&self, sign_type: SignType, content: &[u8], signature: &str) -> bool {
        let Ok(raw) = STANDARD.decode(signature.trim().as_bytes()) else {
            return false;
        };
        let key = match sign_type {
            SignType::Rsa2 => &self.inner.sha256,
            SignType::Rsa => &self.inner.sha1,
        };
        key.verify_sig(content, &raw).is_ok()
    }

    /// SPKI DER as bare base64: what a merchant pastes into Alipay's console as 应用公钥.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(&self.inner.spki)
    }

    pub fn to_pem(&self) -> String {
        let body = self.to_base64();
        let lines: Vec<&str> = body
            .as_bytes()
            .chunks(64)
            .filter_map(|c| std::str::from_utf8(c).ok())
            .collect();
        format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            lines.join("\n")
        )
    }

    /// `SHA256:` and the hex SHA-256 of the SPKI DER: safe to show and log.
    pub fn fingerprint(&self) -> String {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &self.inner.spki);
        let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        format!("SHA256:{hex}")
    }

    pub fn spki_der(&self) -> &[u8] {
        &self.inner.spki
    }
}

/// For tests that build keys from the public half of a key pair they own.
impl From<&PrivateKey> for PublicKey {
    fn from(key: &PrivateKey) -> Self {
        key.inner.public.clone()
    }
}

/// The aws-lc-rs public key of a signer, for callers that need it raw.
pub fn public_key_bytes(key: &PrivateKey) -> Vec<u8> {
    key.inner.signer.public_key().as_ref().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_key() -> PrivateKey {
        PrivateKey::generate().unwrap()
    }

    #[test]
    fn pkcs1_and_pkcs8_pem_or_bare_give_the_same_signatures() {
        let key = test_key();
        let pkcs8 = key.to_pkcs8_base64();
        let pkcs1 = key.to_pkcs1_base64().unwrap();
        let pem = format!(
            "-----BEGIN RSA PRIVATE KEY-----\n{}\n-----END RSA PRIVATE KEY-----\n",
            pkcs1
                .expose_secret()
                .as_bytes()
                .chunks(64)
                .map(|c| std::str::from_utf8(c).unwrap())
                .collect::<Vec<_>>()
                .join("\n")
        );
        let a = PrivateKey::parse(&pkcs8).unwrap();
        let b = PrivateKey::parse(&pkcs1).unwrap();
        let c = PrivateKey::parse(&SecretString::from(pem)).unwrap();
        for sign_type in [SignType::Rsa2, SignType::Rsa] {
            let sig = a.sign(sign_type, "a=1&b=二").unwrap();
            assert_eq!(sig, b.sign(sign_type, "a=1&b=二").unwrap());
            assert_eq!(sig, c.sign(sign_type, "a=1&b=二").unwrap());
            assert_eq!(sig.len(), 344);
            assert!(
                a.public_key()
                    .verify(sign_type, "a=1&b=二".as_bytes(), &sig)
            );
            assert!(
                !a.public_key()
                    .verify(sign_type, "a=1&b=三".as_bytes(), &sig)
            );
        }
    }

    #[test]
    fn the_hash_is_the_one_sign_type_names_never_guessed() {
        let key = test_key();
        let rsa2 = key.sign(SignType::Rsa2, "x").unwrap();
        let rsa1 = key.sign(SignType::Rsa, "x").unwrap();
        assert!(!key.public_key().verify(SignType::Rsa, b"x", &rsa2));
        assert!(!key.public_key().verify(SignType::Rsa2, b"x", &rsa1));
        assert!(SignType::parse("rsa2").is_err());
        assert!(SignType::parse("SM2").is_err());
    }

    #[test]
    fn public_keys_parse_from_pem_or_bare_base64() {
        let key = test_key();
        let bare = key.public_key().to_base64();
        assert!(bare.starts_with("MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"));
        let from_bare = PublicKey::parse(&bare).unwrap();
        let from_pem = PublicKey::parse(&key.public_key().to_pem()).unwrap();
        assert_eq!(from_bare.fingerprint(), from_pem.fingerprint());
    }

    #[test]
    fn bad_keys_get_clear_errors_that_never_echo_the_material() {
        let key = test_key();
        let full = key.to_pkcs8_base64();
        let truncated = SecretString::from(full.expose_secret()[..600].to_owned());
        for text in [
            truncated,
            SecretString::from("not base64 at all!"),
            SecretString::from(""),
            SecretString::from(key.public_key().to_base64()),
        ] {
            let error = PrivateKey::parse(&text).unwrap_err().to_string();
            assert!(error.starts_with("invalid app private key"), "{error}");
            if !text.expose_secret().is_empty() {
                assert!(
                    !error.contains(&text.expose_secret()[..20.min(text.expose_secret().len())]),
                    "{error}"
                );
            }
        }
        assert!(PublicKey::parse("MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA").is_err());
        assert!(!format!("{key:?}").contains(&full.expose_secret()[40..80]));
    }
}
