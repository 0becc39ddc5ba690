//! Member pages that know their visitor (`identify = "alipay"` on a route): the visitor is sent
//! through Alipay's silent authorisation for the merchant's app, comes back with an `auth_code`
//! and the `state` the engine gave it, and the route runs with the buyer Alipay named.
//!
//! Invariant: the buyer headers a route receives come only from a code exchanged for the
//! merchant's own app, on a return whose `state` matches the nonce the same browser was given
//! (a cookie scoped to the plugin's member path), so a link carrying someone else's code cannot
//! show a visitor another person's page. Clients cannot send the headers themselves: every
//! `x-trellis-*` header is stripped first.

use super::{Error, PluginRequest};
use crate::payments::Payments;
use crate::tenancy::Place;

/// The cookie holding the nonce a visitor was sent to Alipay with.
pub const STATE_COOKIE: &str = "trellis_member_state";
/// The buyer's `user_id` (uid-mode apps).
pub const USER_ID_HEADER: &str = "x-trellis-alipay-user-id";
/// The buyer's `open_id` (openid-mode apps).
pub const OPEN_ID_HEADER: &str = "x-trellis-alipay-open-id";
/// Query parameters Alipay adds on the way back, which the route does not see.
const RETURNED: [&str; 4] = ["auth_code", "state", "scope", "source"];

/// Where a visitor not yet identified must go first, and the nonce to keep for their return.
#[derive(Debug)]
pub struct ToAlipay {
    pub url: String,
    pub state: String,
    /// The path the nonce's cookie is scoped to: the plugin's member pages of this merchant.
    pub cookie_path: String,
}

/// A fresh nonce: 128 random bits, hex.
fn nonce() -> Result<String, Error> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|_| Error::Identify("no randomness".into()))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Compares in time that does not depend on where the two differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The request with the buyer's headers, or where to send the visitor first.
pub(super) async fn identified(
    payments: &Payments,
    merchant: &Place,
    plugin: &str,
    state_cookie: Option<&str>,
    mut request: PluginRequest,
) -> Result<PluginRequest, Error> {
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(request.http.query.as_bytes())
        .into_owned()
        .collect();
    let value = |name: &str| {
        pairs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let (code, state) = (value("auth_code"), value("state"));
    let rest = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(
            pairs
                .iter()
                .filter(|(n, _)| !RETURNED.contains(&n.as_str())),
        )
        .finish();
    match (code, state) {
        (Some(code), Some(state)) => {
            // Back from Alipay: only in the browser that was sent there.
            if !state_cookie.is_some_and(|kept| same(kept, &state)) {
                return Err(Error::Identify(
                    "this sign-in link was not started in this browser: open the page again".into(),
                ));
            }
            let buyer = payments
                .buyer_of_code(&merchant.id, &code)
                .await
                .map_err(Error::Buyer)?;
            request.http.query = rest;
            let headers = &mut request.http.headers;
            if let Some(user_id) = buyer.user_id {
                headers.push((USER_ID_HEADER.to_owned(), user_id));
            }
            if let Some(open_id) = buyer.open_id {
                headers.push((OPEN_ID_HEADER.to_owned(), open_id));
            }
            Ok(request)
        }
        _ => {
            let origin = request.origin.as_deref().ok_or(Error::NoRoute)?;
            let base = format!("/m/{}/{plugin}", merchant.id);
            let mut back = format!("{origin}{base}{}", request.http.path);
            if !rest.is_empty() {
                back = format!("{back}?{rest}");
            }
            let state = nonce()?;
            let url = payments
                .authorize_url(&merchant.id, &back, &state)
                .await
                .map_err(Error::Buyer)?;
            Err(Error::ToAlipay(ToAlipay {
                url,
                state,
                cookie_path: base,
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonces_are_fresh_and_compared_whole() {
        let (a, b) = (nonce().unwrap(), nonce().unwrap());
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        assert!(same(&a, &a.clone()));
        assert!(!same(&a, &b));
        assert!(!same(&a, &a[..31]));
    }
}
