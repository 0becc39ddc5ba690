//! Key and certificate parsing on arbitrary text: never panics, never echoes input in errors.
#![no_main]

use libfuzzer_sys::fuzz_target;
use secrecy::SecretString;
use trellis_core::alipay::{PrivateKey, PublicKey, cert};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(error) = PrivateKey::parse(&SecretString::from(text.to_owned())) {
        let message = error.to_string();
        assert!(text.len() < 24 || !message.contains(text), "an error echoed its input");
    }
    let _ = PublicKey::parse(text);
    let _ = cert::cert_sn(text);
    let _ = cert::root_cert_sn(text);
    let _ = cert::cert_sn_der(data);
    let _ = cert::signature_oid(data);
});
