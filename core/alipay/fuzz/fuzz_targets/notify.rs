//! Notification parsing and verification on arbitrary bodies: never panics, and whatever it
//! accepts verifies again from its own signed content (the seeds are real signed notifications).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use trellis_alipay::PublicKey;
use trellis_alipay::notify::{Notification, NotifyRule};

fn key() -> &'static PublicKey {
    static KEY: OnceLock<PublicKey> = OnceLock::new();
    KEY.get_or_init(|| PublicKey::parse(include_str!("../../tests/vectors/keys/alipay_public.pem")).expect("test key"))
}

fuzz_target!(|body: &[u8]| {
    if let Ok(notification) = Notification::parse(body) {
        for rule in [NotifyRule::V1, NotifyRule::V2] {
            let content = notification.signed_content(rule);
            if notification.verify(key(), rule).is_ok() {
                let sign_type = notification.sign_type().expect("a verified notification names its sign_type");
                let sign = notification.get("sign").unwrap_or_default();
                let direct = key().verify(sign_type, content.as_bytes(), sign)
                    || key().verify(sign_type, content.replace("&quot;", "\"").as_bytes(), sign);
                assert!(direct, "accepted without a signature over its own content");
            }
        }
    }
});
