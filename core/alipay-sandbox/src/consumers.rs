//! Simulated consumers: the stable Alipay-style user id a consumer's name maps to, the
//! profile the sandbox makes up for them, and alipay.user.info.share, which reveals it.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::Sandbox;
use crate::gateway::Outcome;

impl Sandbox {
    pub(crate) async fn user_info(&self, app_id: &str, p: &BTreeMap<String, String>) -> Outcome {
        let user = self.user_of_token(app_id, p).await?;
        Ok(
            json!({ "user_id": user["user_id"], "open_id": user["open_id"], "nick_name": user["name"], "mobile": user["mobile"], "gender": user["gender"], "city": "杭州市" }),
        )
    }
}

/// A stable 2088… user id for a simulated consumer's name.
pub fn sandbox_user_id(name: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, name.as_bytes());
    let n = digest.as_ref()[..8]
        .iter()
        .fold(0u64, |acc, b| acc << 8 | u64::from(*b))
        % 1_000_000_000_000;
    format!("2088{n:012}")
}

pub(crate) fn consumer_profile(user_id: &str) -> Value {
    let tail = &user_id[user_id.len().saturating_sub(8)..];
    json!({
        "user_id": user_id, "open_id": format!("074a{tail}sandbox"), "name": format!("沙箱用户{}", &tail[4..]),
        "mobile": format!("138{tail}"), "gender": "m", "birthday": "1990-05-20",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_users_have_stable_alipay_style_ids() {
        assert_eq!(sandbox_user_id("alice"), sandbox_user_id("alice"));
        assert_ne!(sandbox_user_id("alice"), sandbox_user_id("bob"));
        assert!(
            sandbox_user_id("alice").starts_with("2088") && sandbox_user_id("alice").len() == 16
        );
    }
}
