//! Response extraction and verification on arbitrary bodies: never panics, and what it accepts
//! is a slice of the body (the seeds are real signed answers).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use trellis_alipay::response::{extract_value, verify_response};
use trellis_alipay::{PublicKey, SignType};

fn key() -> &'static PublicKey {
    static KEY: OnceLock<PublicKey> = OnceLock::new();
    KEY.get_or_init(|| PublicKey::parse(include_str!("../../tests/vectors/keys/alipay_public.pem")).expect("test key"))
}

fuzz_target!(|body: &[u8]| {
    let Ok(text) = std::str::from_utf8(body) else { return };
    if let Some(node) = extract_value(text, "alipay_trade_query_response") {
        // What is extracted is always a slice of the input starting with `{` or `"`.
        assert!(node.starts_with('{') || node.starts_with('"'));
        assert!(text.contains(node));
    }
    let _ = extract_value(text, "error_response");
    if let Ok(verified) = verify_response(text, "alipay.trade.query", SignType::Rsa2, key()) {
        assert!(text.contains(&verified.signed_text));
    }
});
