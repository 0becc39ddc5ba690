//! Payment codes given to `alipay.trade.pay`: which shape each `scene` accepts, which simulated
//! consumer a code belongs to, and which codes leave the payment waiting for the buyer.
//!
//! Invariant: a code is accepted only in the shape documented for its scene, and the same code
//! always names the same buyer.

use crate::consumers::sandbox_user_id;

/// A payment code ending in this digit makes the sandbox answer `alipay.trade.pay` with
/// `10003` (the buyer still has to confirm, e.g. enter a password): the trade stays
/// `WAIT_BUYER_PAY` until the consumer named by the code pays it through
/// `POST /consumers/{auth_code}/pay`.
pub const WAITING_CODE_LAST_DIGIT: char = '3';

/// The `scene` values of `alipay.trade.pay` (SDK model `AlipayTradePayModel.scene`; the older
/// `wave_code` is no longer listed there).
pub(super) const SCENES: [&str; 2] = trellis_alipay::codes::SCENES;

/// Whether `code` has the shape `scene` documents: the protocol crate's rule, which the engine
/// checks too.
pub(super) fn fits(scene: &str, code: &str) -> bool {
    trellis_alipay::codes::fits(scene, code)
}

/// Whether paying with `code` waits for the buyer (a `10003` answer).
pub(super) fn waits(code: &str) -> bool {
    code.ends_with(WAITING_CODE_LAST_DIGIT)
}

/// The simulated consumer a code belongs to: the one named by the code.
pub(super) fn buyer_of(code: &str) -> String {
    sandbox_user_id(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payment_codes_have_the_shape_their_scene_documents() {
        for good in [
            "2812345678901234",
            "250000000000000000000000",
            "300000000000000001",
        ] {
            assert!(fits("bar_code", good), "{good}");
        }
        for bad in [
            "281234567890123",           // 15 digits
            "2812345678901234567890123", // 25 digits
            "2412345678901234",          // prefix below 25
            "3112345678901234",          // prefix above 30
            "28123456789O1234",          // a letter
            "fp1234567890123456",
        ] {
            assert!(!fits("bar_code", bad), "{bad}");
        }
        assert!(fits("security_code", "fp0a1b2c3d4e5f6a7b8c9d"));
        for bad in ["fp", "2812345678901234", "fp-123", "FP123"] {
            assert!(!fits("security_code", bad), "{bad}");
        }
        assert!(!fits("wave_code", "2812345678901234"));
    }

    #[test]
    fn a_code_ending_in_3_waits_and_names_a_stable_buyer() {
        assert!(waits("2812345678901233"));
        assert!(!waits("2812345678901234"));
        assert_eq!(buyer_of("2812345678901233"), buyer_of("2812345678901233"));
        assert_ne!(buyer_of("2812345678901233"), buyer_of("2812345678901234"));
    }
}
