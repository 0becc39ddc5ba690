//! Alipay: signing every request the engine sends, verifying everything that comes back, the
//! certificate mode, AES content encryption, and (in `sandbox`) an offline stand-in for the
//! gateway.
//!
//! Invariant: key material never leaves this module's types — no error, `Debug` output or log
//! line carries a private key, an AES key, or a token; a response or notification is acted on
//! only after its signature verified with the key the tenant registered.

pub mod aes;
pub mod cert;
pub mod client;
pub mod credentials;
pub mod gateway;
pub mod inbound;
pub mod keys;
pub mod notify;
pub mod response;
pub mod sandbox;
pub mod signing;

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

/// Alipay's real signed samples and certificates from the shared reference, for tests that
/// skip (saying so) when it is absent; never copied into the repository.
#[cfg(test)]
pub(crate) fn real_samples() -> Option<serde_json::Value> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/alipay/real-samples.json"
    );
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text).ok(),
        Err(_) => {
            eprintln!("skipped: {path} is absent");
            None
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
        let Some(samples) = crate::alipay::real_samples() else {
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
