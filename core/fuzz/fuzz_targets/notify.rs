//! Notification parsing and verification on arbitrary bodies: never panics, never accepts.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use trellis_core::alipay::PublicKey;
use trellis_core::alipay::notify::{Notification, NotifyRule};

fn key() -> &'static PublicKey {
    static KEY: OnceLock<PublicKey> = OnceLock::new();
    KEY.get_or_init(|| PublicKey::parse(include_str!("../../tests/vectors/keys/alipay_public.pem")).expect("test key"))
}

fuzz_target!(|body: &[u8]| {
    if let Ok(notification) = Notification::parse(body) {
        let _ = notification.signed_content(NotifyRule::V1);
        // Random input never carries a valid signature of the test key.
        assert!(notification.verify(key(), NotifyRule::V1).is_err());
        assert!(notification.verify(key(), NotifyRule::V2).is_err());
    }
});
