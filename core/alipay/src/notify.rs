//! Asynchronous notifications (`notify_url`): decode the form once, rebuild the signed string,
//! verify.
//!
//! Rules (protocol reference §3): V1 (trade notifications) drops `sign` and `sign_type`; V2
//! (gateway messages) drops only `sign`; empty values are dropped; values are the once-decoded
//! text, never decoded again. If verification fails and a value holds `&quot;` (the HTML-escaped
//! `fund_bill_list` some proxies deliver), it is retried once with `"`.

use std::collections::BTreeMap;

use super::Error;
use super::keys::{PublicKey, SignType};
use super::signing::sign_content;

/// Which fields the signature covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifyRule {
    /// Drop `sign` and `sign_type` (`trade_status_sync` and other trade notifications).
    V1,
    /// Drop only `sign` (application-gateway messages).
    V2,
}

/// A form-decoded notification. Duplicate keys keep the last value, as Alipay never repeats one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub fields: BTreeMap<String, String>,
}

impl Notification {
    /// Decodes an `application/x-www-form-urlencoded` body exactly once.
    pub fn parse(body: &[u8]) -> Result<Self, Error> {
        if body.is_empty() {
            return Err(Error::MalformedNotification("the body is empty"));
        }
        let fields: BTreeMap<String, String> = url::form_urlencoded::parse(body)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        if !fields.contains_key("sign") {
            return Err(Error::MalformedNotification("there is no sign field"));
        }
        // The engine always asks for UTF-8; a notification in another charset would be decoded
        // wrongly here, so it is refused rather than mis-verified.
        if let Some(charset) = fields.get("charset")
            && !charset.eq_ignore_ascii_case("utf-8")
            && !charset.eq_ignore_ascii_case("utf8")
        {
            return Err(Error::MalformedNotification(
                "only charset=utf-8 notifications are accepted",
            ));
        }
        Ok(Self { fields })
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }

    pub fn sign_type(&self) -> Result<SignType, Error> {
        SignType::parse(self.get("sign_type").unwrap_or("RSA2"))
    }

    /// The string the signature covers under `rule`.
    pub fn signed_content(&self, rule: NotifyRule) -> String {
        let mut fields = self.fields.clone();
        if rule == NotifyRule::V1 {
            fields.remove("sign_type");
        }
        sign_content(&fields)
    }

    /// Verifies under `rule` with `key`, with the `&quot;` retry.
    pub fn verify(&self, key: &PublicKey, rule: NotifyRule) -> Result<(), Error> {
        let sign_type = self.sign_type()?;
        let sign = self.get("sign").unwrap_or_default();
        let content = self.signed_content(rule);
        if key.verify(sign_type, content.as_bytes(), sign) {
            return Ok(());
        }
        if content.contains("&quot;") {
            let unescaped = content.replace("&quot;", "\"");
            if key.verify(sign_type, unescaped.as_bytes(), sign) {
                return Ok(());
            }
        }
        Err(Error::InvalidSignature)
    }

    /// V1 for trade notifications, V2 for everything else (gateway messages).
    pub fn verify_auto(&self, key: &PublicKey) -> Result<NotifyRule, Error> {
        let rule = if self.get("notify_type") == Some("trade_status_sync")
            || self.get("trade_no").is_some()
        {
            NotifyRule::V1
        } else {
            NotifyRule::V2
        };
        self.verify(key, rule).map(|()| rule)
    }
}

/// What the engine answers Alipay once a notification is durably recorded; anything else makes
/// Alipay retry.
pub const ACK: &str = "success";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::PrivateKey;

    fn signed(key: &PrivateKey, fields: &[(&str, &str)], rule: NotifyRule) -> Vec<u8> {
        let mut map: BTreeMap<String, String> = fields
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        map.insert("sign_type".into(), "RSA2".into());
        let n = Notification {
            fields: map.clone(),
        };
        let sign = key.sign(SignType::Rsa2, &n.signed_content(rule)).unwrap();
        map.insert("sign".into(), sign);
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in &map {
            form.append_pair(k, v);
        }
        form.finish().into_bytes()
    }

    #[test]
    fn v1_drops_sign_type_and_v2_keeps_it() {
        let key = PrivateKey::generate().unwrap();
        let fields = [
            ("notify_type", "trade_status_sync"),
            ("trade_no", "2024"),
            ("total_amount", "0.10"),
            ("empty", ""),
        ];
        let v1 = Notification::parse(&signed(&key, &fields, NotifyRule::V1)).unwrap();
        assert!(v1.verify(key.public_key(), NotifyRule::V1).is_ok());
        assert!(v1.verify(key.public_key(), NotifyRule::V2).is_err());
        assert_eq!(v1.verify_auto(key.public_key()).unwrap(), NotifyRule::V1);
        let v2 = Notification::parse(&signed(
            &key,
            &[("notify_type", "servicemarket_order_notify")],
            NotifyRule::V2,
        ))
        .unwrap();
        assert!(v2.verify(key.public_key(), NotifyRule::V2).is_ok());
        assert!(v2.verify(key.public_key(), NotifyRule::V1).is_err());
    }

    #[test]
    fn values_are_decoded_exactly_once() {
        let key = PrivateKey::generate().unwrap();
        // A merchant's passback_params is itself URL-encoded; it must stay that way.
        let body = signed(
            &key,
            &[
                ("trade_no", "1"),
                ("passback_params", "tenant%3Dt1%26m%3D9"),
                ("odd", "100%"),
            ],
            NotifyRule::V1,
        );
        let n = Notification::parse(&body).unwrap();
        assert_eq!(n.get("passback_params"), Some("tenant%3Dt1%26m%3D9"));
        assert!(n.verify(key.public_key(), NotifyRule::V1).is_ok());
    }

    #[test]
    fn an_html_escaped_fund_bill_list_is_retried_unescaped() {
        let key = PrivateKey::generate().unwrap();
        let plain = r#"[{"amount":"0.10","fundChannel":"ALIPAYACCOUNT"}]"#;
        let body = String::from_utf8(signed(
            &key,
            &[("trade_no", "1"), ("fund_bill_list", plain)],
            NotifyRule::V1,
        ))
        .unwrap();
        let escaped_value =
            url::form_urlencoded::byte_serialize(plain.replace('"', "&quot;").as_bytes())
                .collect::<String>();
        let plain_value =
            url::form_urlencoded::byte_serialize(plain.as_bytes()).collect::<String>();
        let escaped = body.replace(&plain_value, &escaped_value);
        assert_ne!(escaped, body);
        let n = Notification::parse(escaped.as_bytes()).unwrap();
        assert!(n.get("fund_bill_list").unwrap().contains("&quot;"));
        assert!(n.verify(key.public_key(), NotifyRule::V1).is_ok());
        // A forged field still fails.
        let forged = body.replace("trade_no=1", "trade_no=2");
        assert!(
            Notification::parse(forged.as_bytes())
                .unwrap()
                .verify(key.public_key(), NotifyRule::V1)
                .is_err()
        );
    }

    #[test]
    fn malformed_bodies_are_refused() {
        assert!(Notification::parse(b"").is_err());
        assert!(Notification::parse(b"a=1&b=2").is_err());
    }

    #[test]
    fn only_utf8_notifications_are_accepted() {
        assert!(Notification::parse(b"charset=UTF-8&sign=x").is_ok());
        assert!(Notification::parse(b"charset=gbk&sign=x&subject=%C4%E3%BA%C3").is_err());
    }
}
