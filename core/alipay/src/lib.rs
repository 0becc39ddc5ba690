//! The Alipay open-platform protocol: keys, request signing, response and notification
//! verification, the certificate mode, AES content encryption and the HTTP client that calls
//! the gateway. Nothing here knows the engine, its database or its plugins: a merchant's app
//! arrives as a [`client::MerchantApp`] value and leaves as a verified answer.
//!
//! Invariant: key material never leaves this crate's types — no error, `Debug` output or log
//! line carries a private key, an AES key, or a token; a response or notification is accepted
//! only after its signature verified with the key it was given.
#![deny(unsafe_code)]

/// AES-128-CBC content encryption (`encrypt_type=AES`).
pub mod aes;
/// Certificate mode: app and root certificate SNs, chain checks, pinned roots.
pub mod cert;
/// The buyer's codes `alipay.trade.pay` takes (payment codes, face-pay tokens), by scene.
pub mod codes;
/// Which gateways may be called: the built-in ones, custom URLs and the networks they may resolve to.
pub mod gateway;
/// RSA keys (PKCS#1 and PKCS#8) and the `sign_type` they sign under.
pub mod keys;
/// Asynchronous notifications: parsing and the V1/V2 verification rules.
pub mod notify;
/// Web authorisation: where a consumer is sent to be identified silently.
pub mod oauth;
/// Gateway answers: finding the signed slice and verifying it.
pub mod response;
/// Request signing: the canonical string, timestamps and the signed form.
pub mod signing;
/// The HTTP client that signs, sends and verifies one call to the gateway.
pub mod client;

pub use keys::{PrivateKey, PublicKey, SignType};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid {what}: {reason}")]
    BadKey {
        what: &'static str,
        reason: &'static str,
    },
    #[error("unsupported sign_type {0:?}: use RSA2 (or legacy RSA)")]
    UnsupportedSignType(String),
    #[error("key generation failed")]
    KeyGeneration,
    #[error("signing failed")]
    Signing,
    #[error("invalid request: {0}")]
    BadRequest(String),
    #[error("the signature does not verify")]
    InvalidSignature,
    #[error("malformed response: {0}")]
    MalformedResponse(&'static str),
    #[error("malformed notification: {0}")]
    MalformedNotification(&'static str),
    #[error("unsigned error from the gateway: {code} {}", sub_code.as_deref().unwrap_or(""))]
    UnsignedError {
        code: String,
        sub_code: Option<String>,
        msg: String,
    },
    #[error("Alipay answered {} ({}): {}", .0.code, .0.sub_code.as_deref().unwrap_or("-"), .0.sub_msg.as_deref().unwrap_or(&.0.msg))]
    Gateway(response::GatewayError),
    #[error("cannot reach the Alipay gateway: {0}")]
    Transport(String),
    #[error("the Alipay gateway is not allowed: {0}")]
    GatewayRefused(&'static str),
    #[error("the Alipay gateway's answer is larger than {limit} bytes")]
    ResponseTooLarge { limit: usize },
    #[error("the Alipay gateway did not answer before the caller's deadline")]
    DeadlineExceeded,
    #[error("AES encryption or decryption failed")]
    Aes,
    #[error("invalid certificate: {0}")]
    BadCertificate(&'static str),
    #[error("untrusted certificate: {0}")]
    UntrustedCertificate(&'static str),
}

/// Fixtures for tests of this crate and of the engine: the golden vectors and Alipay's real
/// signed samples from the shared reference (read where they lie, never copied).
#[cfg(any(test, feature = "test-support"))]
pub mod test_support {
    /// The golden vectors folder (`tests/vectors/` of this crate), with its trailing slash.
    pub const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/");

    /// Alipay's real signed samples and certificates, or `None` (saying so) when the shared
    /// reference is absent, so that tests using them skip.
    pub fn real_samples() -> Option<serde_json::Value> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../shared/alipay/real-samples.json"
        );
        match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text).ok(),
            Err(_) => {
                eprintln!("skipped: {path} is absent");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::notify::{Notification, NotifyRule};
    use super::*;

    /// Real notifications signed by Alipay (from the shared reference, when present) verify
    /// under the rule they were signed with, and the forged ones do not.
    #[test]
    fn real_alipay_notifications_verify_under_their_rule() {
        let Some(samples) = crate::test_support::real_samples() else {
            return;
        };
        for sample in samples["notifications"].as_array().unwrap() {
            let name = sample["name"].as_str().unwrap();
            let key = PublicKey::parse(sample["public_key_base64"].as_str().unwrap()).unwrap();
            let fields = sample["form_params"].as_object().unwrap();
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            for (k, v) in fields {
                form.append_pair(k, v.as_str().unwrap());
            }
            let notification = Notification::parse(form.finish().as_bytes()).unwrap();
            let rule = if sample["rule"].as_str().unwrap().starts_with("V1") {
                NotifyRule::V1
            } else {
                NotifyRule::V2
            };
            assert_eq!(
                notification.signed_content(rule),
                sample["sign_content"].as_str().unwrap(),
                "{name}"
            );
            let valid = notification.verify(&key, rule).is_ok();
            assert_eq!(valid, sample["expected_valid"].as_bool().unwrap(), "{name}");
            if let Some(other) = sample["verifies_if_sign_type_is_also_dropped"].as_bool() {
                let other_rule = if rule == NotifyRule::V1 {
                    NotifyRule::V2
                } else {
                    NotifyRule::V1
                };
                assert_eq!(
                    notification.verify(&key, other_rule).is_ok(),
                    other,
                    "{name}"
                );
            }
        }
    }
}
