//! The buyer who opens a page inside Alipay, identified for the merchant's own app: sent through
//! silent authorisation (`auth_base`) and known by the `auth_code` Alipay returns. Member pages
//! that declare `identify = "alipay"` use it, and so can a page that pays with JSAPI.
//!
//! Invariant: an identity comes only from `alipay.system.oauth.token` answered for the
//! merchant's own app and verified by its signature.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{Error, Payments};
use crate::alipay::client::CallOptions;
use crate::alipay::oauth;

/// How long exchanging a code may take: a person is waiting on the page.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// Who Alipay says the consumer is, in the app's identity mode: a `user_id` (2088…) or an
/// `open_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Buyer {
    pub user_id: Option<String>,
    pub open_id: Option<String>,
}

impl Payments {
    /// The authorisation URL that brings the consumer back to `redirect_uri` with a code.
    pub async fn authorize_url(
        &self,
        merchant_id: &str,
        redirect_uri: &str,
        state: &str,
    ) -> Result<String, Error> {
        let app = self.app(merchant_id).await?;
        Ok(oauth::authorize_url(
            &app.gateway_url,
            &app.app_id,
            redirect_uri,
            state,
        ))
    }

    /// The consumer an `auth_code` names, for the merchant's app.
    pub async fn buyer_of_code(&self, merchant_id: &str, code: &str) -> Result<Buyer, Error> {
        let app = self.app(merchant_id).await?;
        let extra = BTreeMap::from([
            ("grant_type".to_owned(), "authorization_code".to_owned()),
            ("code".to_owned(), code.to_owned()),
        ]);
        let options = CallOptions {
            extra,
            deadline: Some(std::time::Instant::now() + EXCHANGE_TIMEOUT),
            ..CallOptions::default()
        };
        let answer = self
            .alipay
            .call(&app, "alipay.system.oauth.token", None, &options)
            .await?;
        let text = |name: &str| {
            answer
                .get(name)
                .and_then(|v| v.as_str())
                .filter(|v| !v.is_empty() && v.len() <= 128)
                .map(str::to_owned)
        };
        let buyer = Buyer {
            user_id: text("user_id"),
            open_id: text("open_id"),
        };
        if buyer.user_id.is_none() && buyer.open_id.is_none() {
            return Err(Error::Alipay(crate::alipay::Error::MalformedResponse(
                "alipay.system.oauth.token answered neither user_id nor open_id",
            )));
        }
        Ok(buyer)
    }
}
