//! Simulated consumers: the stable Alipay-style user id a consumer's name maps to, the
//! profile the sandbox makes up for them, and alipay.user.info.share, which reveals it.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::Sandbox;
use crate::apps::Identity;
use crate::gateway::Outcome;

impl Sandbox {
    pub(crate) async fn user_info(&self, app_id: &str, p: &BTreeMap<String, String>) -> Outcome {
        let user = self.user_of_token(app_id, p, false).await?;
        let identity = self.identity_of(app_id).await;
        let mut answer = identifiers(
            identity,
            app_id,
            user["user_id"].as_str().unwrap_or_default(),
        );
        // alipay-sdk-python `AlipayUserInfoShareResponse`: gender `F` (女) or `M` (男).
        let gender = if user["gender"] == "f" { "F" } else { "M" };
        answer["nick_name"] = user["name"].clone();
        answer["gender"] = json!(gender);
        answer["city"] = json!("杭州市");
        answer["province"] = json!("浙江省");
        Ok(answer)
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

/// The consumer's `open_id` as `app_id` sees it: Alipay's OpenIDs are per app, so two apps
/// never see the same one for one consumer.
pub fn open_id_for(app_id: &str, user_id: &str) -> String {
    let digest = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        format!("{app_id}\n{user_id}").as_bytes(),
    );
    let hex: String = digest.as_ref()[..20]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("074{hex}")
}

/// The identifiers an app receives for a consumer, by its mode: `user_id` or `open_id`.
pub(crate) fn identifiers(identity: Identity, app_id: &str, user_id: &str) -> Value {
    match identity {
        Identity::Uid => json!({ "user_id": user_id }),
        Identity::OpenId => json!({ "open_id": open_id_for(app_id, user_id) }),
    }
}

pub(crate) fn consumer_profile(user_id: &str) -> Value {
    let tail = &user_id[user_id.len().saturating_sub(8)..];
    json!({
        "user_id": user_id, "name": format!("沙箱用户{}", &tail[4..]),
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
