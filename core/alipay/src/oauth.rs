//! 网页授权 (web authorisation): where a page opened inside Alipay sends the consumer to learn who
//! they are, silently (`auth_base`), and what comes back. The `auth_code` it returns is
//! exchanged with `alipay.system.oauth.token` through [`crate::client::AlipayClient::call`].
//!
//! Invariant: the authorisation host follows the app's gateway — Alipay's production host for
//! the production gateway, its sandbox host for the sandbox gateway, and for any other gateway
//! the same place with `oauth2/publicAppAuthorize.htm` in place of `gateway.do` (the offline
//! sandbox serves it there) — so a consumer is never sent to a host the app does not use.

use crate::gateway::{PRODUCTION_GATEWAY, SANDBOX_GATEWAY};

/// Alipay's authorisation page (alipay-protocol §6.3).
pub const PRODUCTION_AUTHORIZE: &str = "https://openauth.alipay.com/oauth2/publicAppAuthorize.htm";
/// Alipay's sandbox authorisation page.
pub const SANDBOX_AUTHORIZE: &str =
    "https://openauth-sandbox.dl.alipaydev.com/oauth2/publicAppAuthorize.htm";
/// The longest `state` Alipay takes (alipay-protocol §6.3: at most 100 characters).
pub const MAX_STATE: usize = 100;

/// The authorisation page for an app calling `gateway_url`.
pub fn authorize_page(gateway_url: &str) -> String {
    match gateway_url {
        PRODUCTION_GATEWAY => PRODUCTION_AUTHORIZE.to_owned(),
        SANDBOX_GATEWAY => SANDBOX_AUTHORIZE.to_owned(),
        other => {
            let base = other.split(['?', '#']).next().unwrap_or_default();
            let dir = base.rsplit_once('/').map_or(base, |(dir, _)| dir);
            format!("{dir}/oauth2/publicAppAuthorize.htm")
        }
    }
}

/// The URL that sends a consumer through silent authorisation (`scope=auth_base`) back to
/// `redirect_uri` with an `auth_code` and `state`.
pub fn authorize_url(gateway_url: &str, app_id: &str, redirect_uri: &str, state: &str) -> String {
    let query = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("app_id", app_id)
        .append_pair("scope", "auth_base")
        .append_pair("redirect_uri", redirect_uri)
        .append_pair("state", state)
        .finish();
    format!("{}?{query}", authorize_page(gateway_url))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_authorisation_host_follows_the_gateway() {
        assert_eq!(authorize_page(PRODUCTION_GATEWAY), PRODUCTION_AUTHORIZE);
        assert_eq!(authorize_page(SANDBOX_GATEWAY), SANDBOX_AUTHORIZE);
        assert_eq!(
            authorize_page("http://127.0.0.1:8080/sandbox/gateway.do?charset=utf-8"),
            "http://127.0.0.1:8080/sandbox/oauth2/publicAppAuthorize.htm"
        );
    }

    #[test]
    fn the_redirect_and_state_are_encoded_into_the_query() {
        let url = authorize_url(
            PRODUCTION_GATEWAY,
            "2021000000000001",
            "https://pay.example/m/1/p/me?x=1&y=2",
            "abc",
        );
        let parsed = url::Url::parse(&url).unwrap();
        let pairs: Vec<(String, String)> = parsed.query_pairs().into_owned().collect();
        assert_eq!(
            pairs,
            [
                ("app_id".into(), "2021000000000001".into()),
                ("scope".into(), "auth_base".into()),
                (
                    "redirect_uri".into(),
                    "https://pay.example/m/1/p/me?x=1&y=2".into()
                ),
                ("state".into(), "abc".into()),
            ]
        );
    }
}
