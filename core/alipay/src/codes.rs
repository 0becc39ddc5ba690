//! The buyer's codes `alipay.trade.pay` takes, by `scene`: what the engine checks before it asks
//! and what the sandbox refuses, from one rule.
//!
//! Invariant: a code is accepted only in the shape Alipay documents for its scene
//! (alipay-sdk-java-all `AlipayTradePayModel.auth_code`: a payment code is 16 to 24 digits
//! starting with 25 to 30; a face-pay token starts with `fp`).

/// The scenes of `alipay.trade.pay`: the buyer's payment code, and a face-pay token.
pub const SCENES: [&str; 2] = ["bar_code", "security_code"];

/// Whether `code` has the shape `scene` documents.
pub fn fits(scene: &str, code: &str) -> bool {
    match scene {
        "bar_code" => {
            (16..=24).contains(&code.len())
                && code.bytes().all(|b| b.is_ascii_digit())
                && code
                    .get(..2)
                    .and_then(|p| p.parse::<u8>().ok())
                    .is_some_and(|p| (25..=30).contains(&p))
        }
        "security_code" => {
            code.len() > 2
                && code.len() <= 64
                && code.starts_with("fp")
                && code.bytes().all(|b| b.is_ascii_alphanumeric())
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_have_the_shape_their_scene_documents() {
        assert!(fits("bar_code", "280000000000000001"));
        assert!(!fits("bar_code", "180000000000000001"), "prefix 18");
        assert!(!fits("bar_code", "28000000000"), "too short");
        assert!(!fits("bar_code", "fp123"));
        assert!(fits("security_code", "fp0123456789abcdef"));
        assert!(!fits("security_code", "280000000000000001"));
        assert!(!fits("wave_code", "280000000000000001"));
    }
}
