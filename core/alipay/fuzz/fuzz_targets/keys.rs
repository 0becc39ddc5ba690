//! Key and certificate parsing on arbitrary text: never panics, never echoes input in errors.
#![no_main]

use libfuzzer_sys::fuzz_target;
use secrecy::SecretString;
use trellis_alipay::{PrivateKey, PublicKey, cert};

const REASONS: [&str; 7] = [
    "it is empty",
    "it is not base64 (or PEM)",
    "it is neither a PKCS#8 nor a PKCS#1 RSA private key (wrong or truncated?)",
    "Alipay keys are 2048-bit RSA",
    "it cannot be re-encoded",
    "it failed the consistency check",
    "its public half cannot be encoded",
];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(error) = PrivateKey::parse(&SecretString::from(text.to_owned())) {
        // Every message is one of the fixed reasons: nothing of the input can be in it.
        let message = error.to_string();
        let reason = message.strip_prefix("invalid app private key: ").expect("a key error names the key");
        assert!(REASONS.contains(&reason), "an error message that is not a fixed reason: {message}");
    }
    let _ = PublicKey::parse(text);
    let _ = cert::cert_sn(text);
    let _ = cert::root_cert_sn(text);
    let _ = cert::cert_sn_der(data);
    let _ = cert::signature_oid(data);
});
